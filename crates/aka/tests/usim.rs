//! AUTN/AUTS (TS 33.102 §6.3.2, §6.3.3, §6.3.5) and the USIM SEQ array (TS 33.102 Annex C.2).

#![allow(clippy::unwrap_used)]

use capillary_aka::vector::{
    build_auts, check_amf_separation, generate_vector, join_autn, split_autn, split_auts,
    verify_auts, AuthVector, Usim, UsimConfig, UsimOutcome,
};
use capillary_aka::{AkaError, Milenage};
use capillary_secrets::{Amf, Autn, Auts, Opc, Rand, Secret, Sqn, K};
use proptest::prelude::*;
use subtle::ConstantTimeEq;

const K_HEX: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OPC_HEX: &str = "cd63cb71954a9f4e48a5994e37a02baf";
const AMF: Amf = Amf([0x80, 0x00]);

fn keys() -> (K, Opc) {
    (K::from_hex(K_HEX).unwrap(), Opc::from_hex(OPC_HEX).unwrap())
}

fn hn() -> Milenage {
    let (k, opc) = keys();
    Milenage::new(&k, &opc)
}

fn usim(cfg: UsimConfig) -> Usim {
    let (k, opc) = keys();
    Usim::new(&k, &opc, cfg)
}

fn rand_n(n: u8) -> Rand {
    Rand([n; 16])
}

fn vector(seq: u64, ind: u32, n: u8) -> AuthVector {
    let sqn = Sqn::from_seq_ind(seq, ind, 5).unwrap();
    generate_vector(&hn(), &rand_n(n), &sqn, &AMF)
}

/// Runs the USIM on a vector and reports success (checking RES/CK/IK) or the AUTS.
fn run(u: &mut Usim, v: &AuthVector) -> Result<Option<Auts>, AkaError> {
    match u.authenticate(&v.rand, &v.autn)? {
        UsimOutcome::Success { res, ck, ik } => {
            assert!(bool::from(res.ct_eq(&v.xres)));
            assert!(ck.ct_eq_secret(&v.ck));
            assert!(ik.ct_eq_secret(&v.ik));
            Ok(None)
        }
        UsimOutcome::SyncFailure { auts } => Ok(Some(auts)),
    }
}

#[test]
fn autn_round_trip() {
    let m = hn();
    let rand = rand_n(1);
    let sqn = Sqn::new(0x0000_1234_5678).unwrap();
    let v = generate_vector(&m, &rand, &sqn, &AMF);
    let parts = split_autn(&v.autn);
    let (_, _, _, ak) = m.f2345(&rand);
    let mut recovered = parts.sqn_xor_ak;
    for (b, a) in recovered.iter_mut().zip(ak) {
        *b ^= a;
    }
    assert_eq!(Sqn::from_bytes(recovered), sqn);
    assert_eq!(parts.amf, AMF);
    assert_eq!(parts.mac, m.f1(&rand, &sqn, &AMF));
    assert_eq!(join_autn(&parts), v.autn);
    assert_eq!(v.rand, rand);
    assert_eq!(v.xres.len(), 8);
}

#[test]
fn auts_round_trip_and_tamper() {
    let m = hn();
    let rand = rand_n(2);
    let sqn_ms = Sqn::new(0xabcd_ef01_2345).unwrap();
    let auts = build_auts(&m, &rand, &sqn_ms);
    assert_eq!(verify_auts(&m, &rand, &auts), Ok(sqn_ms));
    // MAC-S uses AMF = 0x0000 (TS 33.102 §6.3.3).
    let (conc, mac_s) = split_auts(&auts);
    assert_eq!(mac_s, m.f1_star(&rand, &sqn_ms, &Amf([0, 0])));
    let ak_star = m.f5_star(&rand);
    let plain: Vec<u8> = conc.iter().zip(ak_star).map(|(c, a)| c ^ a).collect();
    assert_eq!(plain, sqn_ms.to_bytes());
    for i in 0..14 {
        let mut bad = auts;
        bad.0[i] ^= 0x01;
        assert_eq!(
            verify_auts(&m, &rand, &bad),
            Err(AkaError::MacFailure),
            "byte {i}"
        );
    }
    assert_eq!(
        verify_auts(&m, &rand_n(3), &auts),
        Err(AkaError::MacFailure)
    );
    // Another subscriber's keys do not verify it.
    let other = Milenage::new(&K::from_bytes([9; 16]), &Opc::from_bytes([8; 16]));
    assert_eq!(verify_auts(&other, &rand, &auts), Err(AkaError::MacFailure));
}

#[test]
fn fresh_accepted_replay_rejected_with_valid_auts() {
    let mut u = usim(UsimConfig::default());
    assert_eq!(u.sqn_ms(), Sqn::default());
    let v = vector(1, 3, 1);
    assert_eq!(run(&mut u, &v), Ok(None));
    let sqn = Sqn::from_seq_ind(1, 3, 5).unwrap();
    assert_eq!(u.sqn_ms(), sqn);
    assert_eq!(u.seq_array()[3], 1);

    // Same SQN again (replay): synchronisation failure, AUTS carries SQN_MS.
    let auts = run(&mut u, &v).unwrap().expect("replay must fail");
    assert_eq!(verify_auts(&hn(), &v.rand, &auts), Ok(u.sqn_ms()));
    assert_eq!(verify_auts(&hn(), &v.rand, &auts), Ok(sqn));

    // The network resynchronises: next SEQ after SEQ_MS is accepted.
    let sqn_ms = verify_auts(&hn(), &v.rand, &auts).unwrap();
    let v2 = vector(sqn_ms.seq(5) + 1, 3, 4);
    assert_eq!(run(&mut u, &v2), Ok(None));
}

#[test]
fn delta_limit() {
    let cfg = UsimConfig {
        delta: 10,
        ..UsimConfig::default()
    };
    let mut u = usim(cfg);
    // SEQ − SEQ_MS = 11 > Δ.
    assert!(run(&mut u, &vector(11, 0, 1)).unwrap().is_some());
    assert_eq!(u.seq_array()[0], 0);
    // SEQ − SEQ_MS = 10 = Δ is accepted.
    assert_eq!(run(&mut u, &vector(10, 0, 2)), Ok(None));
    // Now relative to the new SEQ_MS = 10, in any lane.
    assert!(run(&mut u, &vector(21, 7, 3)).unwrap().is_some());
    assert_eq!(run(&mut u, &vector(20, 7, 4)), Ok(None));
    // Default Δ is 2^28.
    let mut d = usim(UsimConfig::default());
    assert!(run(&mut d, &vector((1 << 28) + 1, 0, 5)).unwrap().is_some());
    assert_eq!(run(&mut d, &vector(1 << 28, 0, 6)), Ok(None));
}

#[test]
fn mac_checked_before_sqn() {
    let mut u = usim(UsimConfig::default());
    let v = vector(5, 1, 1);
    assert_eq!(run(&mut u, &v), Ok(None));
    let before = u.seq_array().to_vec();

    // A replayed (stale) AUTN with a broken MAC is a MAC failure, not a sync failure.
    let mut stale = v.autn;
    stale.0[15] ^= 0x80;
    assert!(matches!(
        u.authenticate(&v.rand, &stale),
        Err(AkaError::MacFailure)
    ));

    // A fresh AUTN with a broken MAC (or AMF, or SQN) fails and leaves the state unchanged.
    let fresh = vector(6, 1, 2);
    for byte in [0usize, 5, 6, 7, 8, 15] {
        let mut bad = fresh.autn;
        bad.0[byte] ^= 0x01;
        assert!(
            matches!(u.authenticate(&fresh.rand, &bad), Err(AkaError::MacFailure)),
            "byte {byte}"
        );
    }
    assert!(matches!(
        u.authenticate(&rand_n(9), &fresh.autn),
        Err(AkaError::MacFailure)
    ));
    assert_eq!(u.seq_array(), &before[..]);
    assert_eq!(run(&mut u, &fresh), Ok(None));
}

#[test]
fn ind_lanes_independent() {
    // Annex C.2.2: accept iff SEQ > SEQ_MS(IND).
    let mut u = usim(UsimConfig::default());
    assert_eq!(run(&mut u, &vector(5, 3, 1)), Ok(None));
    // Lower SEQ in another lane is still fresh there.
    assert_eq!(run(&mut u, &vector(2, 4, 2)), Ok(None));
    assert_eq!(u.sqn_ms(), Sqn::from_seq_ind(5, 3, 5).unwrap());
    // Out-of-order delivery inside the window: lanes 0..31 each take SEQ 3.
    for ind in (0..32).filter(|i| *i != 3 && *i != 4) {
        assert_eq!(
            run(&mut u, &vector(3, ind, 10 + ind as u8)),
            Ok(None),
            "lane {ind}"
        );
    }
    // Equal SEQ in a lane is a replay.
    assert!(run(&mut u, &vector(2, 4, 3)).unwrap().is_some());
    assert!(run(&mut u, &vector(5, 3, 4)).unwrap().is_some());
    assert!(run(&mut u, &vector(1, 4, 5)).unwrap().is_some());
    // Higher SEQ in a lane is fresh.
    assert_eq!(run(&mut u, &vector(6, 3, 6)), Ok(None));
    assert_eq!(u.seq_array()[3], 6);
    assert_eq!(u.seq_array()[4], 2);
    // AUTS always reports the highest accepted SQN, whatever lane failed.
    let v = vector(1, 4, 7);
    let auts = run(&mut u, &v).unwrap().unwrap();
    assert_eq!(
        verify_auts(&hn(), &v.rand, &auts),
        Ok(Sqn::from_seq_ind(6, 3, 5).unwrap())
    );
}

#[test]
fn age_limit_l() {
    let cfg = UsimConfig {
        l: 3,
        ..UsimConfig::default()
    };
    let mut u = usim(cfg);
    assert_eq!(run(&mut u, &vector(10, 0, 1)), Ok(None));
    // SEQ_MS − SEQ = 4 ≥ L: too old even though fresh in its lane.
    assert!(run(&mut u, &vector(6, 1, 2)).unwrap().is_some());
    assert!(run(&mut u, &vector(7, 1, 3)).unwrap().is_some());
    // SEQ_MS − SEQ = 2 < L.
    assert_eq!(run(&mut u, &vector(8, 1, 4)), Ok(None));
}

#[test]
fn restore_and_config_errors() {
    let (k, opc) = keys();
    let mut u = usim(UsimConfig::default());
    assert_eq!(run(&mut u, &vector(7, 2, 1)), Ok(None));
    assert_eq!(run(&mut u, &vector(4, 9, 2)), Ok(None));
    let saved = u.seq_array().to_vec();
    assert_eq!(saved.len(), 32);

    let mut r = Usim::restore(&k, &opc, UsimConfig::default(), &saved).unwrap();
    assert_eq!(r.seq_array(), &saved[..]);
    assert_eq!(r.sqn_ms(), u.sqn_ms());
    assert!(run(&mut r, &vector(7, 2, 3)).unwrap().is_some());
    assert_eq!(run(&mut r, &vector(5, 9, 4)), Ok(None));

    assert_eq!(
        Usim::restore(&k, &opc, UsimConfig::default(), &saved[..31]).err(),
        Some(AkaError::SeqArrayLength {
            expected: 32,
            got: 31
        })
    );
    let mut too_big = saved.clone();
    too_big[0] = 1 << 43; // SEQ has 48 − 5 = 43 bits.
    assert_eq!(
        Usim::restore(&k, &opc, UsimConfig::default(), &too_big).err(),
        Some(AkaError::SqnOutOfRange)
    );
    let bad = UsimConfig {
        ind_len: 17,
        ..UsimConfig::default()
    };
    assert_eq!(
        Usim::try_new(&k, &opc, bad.clone()).err(),
        Some(AkaError::InvalidIndLen { ind_len: 17 })
    );
    assert_eq!(
        Usim::restore(&k, &opc, bad, &[]).err(),
        Some(AkaError::InvalidIndLen { ind_len: 17 })
    );

    // ind_len = 0: a single lane, plain SEQ > SEQ_MS.
    let cfg0 = UsimConfig {
        ind_len: 0,
        ..UsimConfig::default()
    };
    let mut one = Usim::new(&k, &opc, cfg0);
    assert_eq!(one.seq_array().len(), 1);
    let v = generate_vector(&hn(), &rand_n(5), &Sqn::new(3).unwrap(), &AMF);
    assert!(matches!(
        one.authenticate(&v.rand, &v.autn),
        Ok(UsimOutcome::Success { .. })
    ));
    assert!(matches!(
        one.authenticate(&v.rand, &v.autn),
        Ok(UsimOutcome::SyncFailure { .. })
    ));
}

#[test]
fn amf_separation_bit() {
    let u = usim(UsimConfig::default());
    assert_eq!(check_amf_separation(&vector(1, 0, 1).autn), Ok(()));
    let v = generate_vector(
        &hn(),
        &rand_n(1),
        &Sqn::new(32).unwrap(),
        &Amf([0x7f, 0xff]),
    );
    assert_eq!(
        u.check_amf_separation(&v.autn),
        Err(AkaError::AmfSeparationBit)
    );
}

#[test]
fn debug_redacts() {
    let u = usim(UsimConfig::default());
    let s = format!("{u:?}");
    assert_eq!(s, "Usim { ind_len: 5, .. }");
    let v = vector(1, 0, 1);
    let s = format!("{v:?}");
    assert!(
        s.contains("Res(..)") && s.contains("Ck(..)") && s.contains("Ik(..)"),
        "{s}"
    );
}

proptest! {
    /// Any AUTN bytes: no panic, and a forged AUTN is rejected by MAC (2^-64 chance otherwise).
    #[test]
    fn arbitrary_autn_is_rejected(rand in any::<[u8; 16]>(), autn in any::<[u8; 16]>()) {
        let mut u = usim(UsimConfig::default());
        let before = u.seq_array().to_vec();
        prop_assert!(matches!(u.authenticate(&Rand(rand), &Autn(autn)), Err(AkaError::MacFailure)));
        prop_assert_eq!(u.seq_array(), &before[..]);
    }

    /// Any saved SEQ array: typed error or a USIM, never a panic.
    #[test]
    fn arbitrary_restore(arr in proptest::collection::vec(prop_oneof![0u64..100, any::<u64>()], 0..40)) {
        let (k, opc) = keys();
        let r = Usim::restore(&k, &opc, UsimConfig::default(), &arr);
        if arr.len() != 32 {
            prop_assert_eq!(r.err(), Some(AkaError::SeqArrayLength { expected: 32, got: arr.len() }));
        } else if arr.iter().any(|&s| s >= 1 << 43) {
            prop_assert_eq!(r.err(), Some(AkaError::SqnOutOfRange));
        } else {
            let u = r.unwrap();
            let max = arr.iter().copied().max().unwrap_or(0);
            prop_assert_eq!(u.sqn_ms().seq(5), max);
            prop_assert_eq!(u.seq_array(), &arr[..]);
        }
    }

    /// Any AUTS bytes: no panic, MAC failure.
    #[test]
    fn arbitrary_auts_is_rejected(rand in any::<[u8; 16]>(), auts in any::<[u8; 14]>()) {
        prop_assert_eq!(verify_auts(&hn(), &Rand(rand), &Auts(auts)), Err(AkaError::MacFailure));
    }

    /// Network vector → USIM: accepted with matching RES/CK/IK; AUTS round-trips any SQN.
    #[test]
    fn vector_usim_round_trip(k in any::<[u8; 16]>(), opc in any::<[u8; 16]>(), rand in any::<[u8; 16]>(),
                              sqn in 32u64..=Sqn::MAX, amf in any::<[u8; 2]>()) {
        let (k, opc) = (K::from_bytes(k), Opc::from_bytes(opc));
        let m = Milenage::new(&k, &opc);
        let sqn = Sqn::new(sqn).unwrap();
        let v = generate_vector(&m, &Rand(rand), &sqn, &Amf(amf));
        let mut u = Usim::new(&k, &opc, UsimConfig { delta: u64::MAX, ..UsimConfig::default() });
        match u.authenticate(&v.rand, &v.autn).unwrap() {
            UsimOutcome::Success { res, ck, ik } => {
                prop_assert_eq!(res.expose(), v.xres.expose());
                prop_assert_eq!(ck.expose(), v.ck.expose());
                prop_assert_eq!(ik.expose(), v.ik.expose());
            }
            UsimOutcome::SyncFailure { .. } => prop_assert!(false, "fresh SQN rejected"),
        }
        prop_assert_eq!(u.sqn_ms(), sqn);
        let auts = build_auts(&m, &Rand(rand), &sqn);
        prop_assert_eq!(verify_auts(&m, &Rand(rand), &auts), Ok(sqn));
    }
}
