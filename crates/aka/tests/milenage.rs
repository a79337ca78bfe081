//! Milenage (TS 35.206 §4.1) against TS 35.208 §4.3 test sets and against the `milenage` crate.

#![allow(clippy::unwrap_used)]

mod common;

use capillary_aka::{opc_from_op, Milenage};
use capillary_secrets::{Amf, Op, Opc, Rand, Secret, Sqn, K};
use common::{arr, load};
use proptest::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Set {
    source: String,
    k: String,
    rand: String,
    sqn: String,
    amf: String,
    op: String,
    opc: String,
    f1: String,
    f1_star: String,
    f2: String,
    f3: String,
    f4: String,
    f5: String,
    f5_star: String,
}

#[derive(Deserialize)]
struct File {
    set: Vec<Set>,
}

/// Every output of our Milenage and of the oracle crate, as hex strings in set order.
fn check_set(s: &Set) {
    let k = K::from_hex(&s.k).unwrap();
    let op = Op::from_hex(&s.op).unwrap();
    let rand = Rand::from_hex(&s.rand).unwrap();
    let sqn = Sqn::from_bytes(arr(&s.sqn));
    let amf = Amf(arr(&s.amf));

    let opc = opc_from_op(&k, &op);
    assert_eq!(hex::encode(opc.expose()), s.opc, "{}: OPc", s.source);

    // Both constructors agree.
    for m in [
        Milenage::with_op(&k, &op),
        Milenage::new(&k, &Opc::from_hex(&s.opc).unwrap()),
    ] {
        assert_eq!(
            hex::encode(m.f1(&rand, &sqn, &amf)),
            s.f1,
            "{}: f1",
            s.source
        );
        assert_eq!(
            hex::encode(m.f1_star(&rand, &sqn, &amf)),
            s.f1_star,
            "{}: f1*",
            s.source
        );
        let (res, ck, ik, ak) = m.f2345(&rand);
        assert_eq!(hex::encode(res.expose()), s.f2, "{}: f2", s.source);
        assert_eq!(hex::encode(ck.expose()), s.f3, "{}: f3", s.source);
        assert_eq!(hex::encode(ik.expose()), s.f4, "{}: f4", s.source);
        assert_eq!(hex::encode(ak), s.f5, "{}: f5", s.source);
        assert_eq!(
            hex::encode(m.f5_star(&rand)),
            s.f5_star,
            "{}: f5*",
            s.source
        );
    }

    // The copied values also agree with the independent oracle crate.
    let mut o = milenage::Milenage::new_with_op(arr(&s.k), arr(&s.op)).unwrap();
    assert_eq!(hex::encode(o.opc()), s.opc, "{}: oracle OPc", s.source);
    let (sqn_b, amf_b, rand_b) = (arr::<6>(&s.sqn), arr::<2>(&s.amf), arr::<16>(&s.rand));
    assert_eq!(
        hex::encode(o.f1(&rand_b, &sqn_b, &amf_b)),
        s.f1,
        "{}: oracle f1",
        s.source
    );
    assert_eq!(
        hex::encode(o.f1star(&rand_b, &sqn_b, &amf_b)),
        s.f1_star,
        "{}: oracle f1*",
        s.source
    );
    let (res, ck, ik, ak) = o.f2345(&rand_b);
    assert_eq!(
        [
            hex::encode(res),
            hex::encode(ck),
            hex::encode(ik),
            hex::encode(ak)
        ],
        [s.f2.clone(), s.f3.clone(), s.f4.clone(), s.f5.clone()],
        "{}: oracle f2..f5",
        s.source
    );
    assert_eq!(
        hex::encode(o.f5star(&rand_b)),
        s.f5_star,
        "{}: oracle f5*",
        s.source
    );
}

#[test]
fn ts35208_test_sets_1_to_6() {
    let file: File = load("ts35208.toml");
    let names: Vec<&str> = file.set.iter().map(|s| s.source.as_str()).collect();
    for n in 1..=6 {
        assert!(
            names.iter().any(|s| s.ends_with(&format!("test set {n}"))),
            "test set {n} missing"
        );
    }
    for s in &file.set {
        check_set(s);
    }
}

#[test]
fn shared_vectors() {
    // /work/shared/vectors/milenage.toml: TS 35.208 test sets 1 and 19.
    let file: File = load("shared_milenage.toml");
    assert_eq!(file.set.len(), 2);
    for s in &file.set {
        check_set(s);
    }
}

#[test]
fn debug_is_redacted() {
    let m = Milenage::new(&K::from_bytes([0x5a; 16]), &Opc::from_bytes([0xa5; 16]));
    assert_eq!(format!("{m:?}"), "Milenage { .. }");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// f1, f1*, f2, f3, f4, f5, f5* and OPc agree with the `milenage` crate on random inputs.
    #[test]
    fn agrees_with_oracle(
        k in any::<[u8; 16]>(),
        op in any::<[u8; 16]>(),
        rand in any::<[u8; 16]>(),
        sqn in any::<[u8; 6]>(),
        amf in any::<[u8; 2]>(),
    ) {
        let ours = Milenage::with_op(&K::from_bytes(k), &Op::from_bytes(op));
        let mut oracle = milenage::Milenage::new_with_op(k, op).unwrap();
        let our_opc = opc_from_op(&K::from_bytes(k), &Op::from_bytes(op));
        prop_assert_eq!(our_opc.expose(), &oracle.opc()[..]);

        let (r, s, a) = (Rand(rand), Sqn::from_bytes(sqn), Amf(amf));
        prop_assert_eq!(ours.f1(&r, &s, &a), oracle.f1(&rand, &sqn, &amf));
        prop_assert_eq!(ours.f1_star(&r, &s, &a), oracle.f1star(&rand, &sqn, &amf));
        let (res, ck, ik, ak) = ours.f2345(&r);
        let (ores, ock, oik, oak) = oracle.f2345(&rand);
        prop_assert_eq!(res.expose(), &ores[..]);
        prop_assert_eq!(ck.expose(), &ock[..]);
        prop_assert_eq!(ik.expose(), &oik[..]);
        prop_assert_eq!(ak, oak);
        prop_assert_eq!(ours.f5_star(&r), oracle.f5star(&rand));
    }
}
