//! EAP-AKA' key chain (RFC 9048 §3.3, §3.4; TS 33.402 Annex A.2; TS 33.220 Annex B.2).

#![allow(clippy::unwrap_used)]

mod common;

use capillary_aka::prime::{
    at_mac, checkcode, ck_ik_prime, full_auth_keys, kdf, prf_prime, reauth_keys, verify_at_mac,
    PRF_PRIME_MAX,
};
use capillary_aka::vector::generate_vector;
use capillary_aka::Milenage;
use capillary_secrets::{Amf, Ck, CkPrime, Ik, IkPrime, KAut, KRe, Opc, Rand, Secret, Sqn, K};
use common::{arr, bytes, load};
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Case {
    source: String,
    identity: String,
    network_name: String,
    rand: String,
    autn: String,
    ik: String,
    ck: String,
    res: String,
    ck_prime: String,
    ik_prime: String,
    k_encr: String,
    k_aut: String,
    k_re: String,
    msk: String,
    emsk: String,
}

#[derive(Deserialize)]
struct File {
    case: Vec<Case>,
}

fn check_case(c: &Case) {
    let ck = Ck::from_hex(&c.ck).unwrap();
    let ik = Ik::from_hex(&c.ik).unwrap();
    let autn: [u8; 16] = arr(&c.autn);
    let sqn_xor_ak: [u8; 6] = autn[..6].try_into().unwrap();
    let (ckp, ikp) = ck_ik_prime(&ck, &ik, c.network_name.as_bytes(), &sqn_xor_ak);
    assert_eq!(hex::encode(ckp.expose()), c.ck_prime, "{}: CK'", c.source);
    assert_eq!(hex::encode(ikp.expose()), c.ik_prime, "{}: IK'", c.source);

    let keys = full_auth_keys(c.identity.as_bytes(), &ckp, &ikp);
    assert_eq!(
        hex::encode(keys.k_encr.expose()),
        c.k_encr,
        "{}: K_encr",
        c.source
    );
    assert_eq!(
        hex::encode(keys.k_aut.expose()),
        c.k_aut,
        "{}: K_aut",
        c.source
    );
    assert_eq!(
        hex::encode(keys.k_re.expose()),
        c.k_re,
        "{}: K_re",
        c.source
    );
    assert_eq!(hex::encode(keys.msk.expose()), c.msk, "{}: MSK", c.source);
    assert_eq!(
        hex::encode(keys.emsk.expose()),
        c.emsk,
        "{}: EMSK",
        c.source
    );
    // Debug output of the key bundle reveals nothing.
    let dbg = format!("{keys:?}");
    assert!(
        !dbg.contains(&c.k_aut[..8]) && dbg.contains("KAut(..)"),
        "{dbg}"
    );
}

#[test]
fn rfc9048_appendix_d_all_four_cases() {
    let file: File = load("rfc9048_appendix_d.toml");
    assert_eq!(file.case.len(), 4);
    let nets: Vec<&str> = file.case.iter().map(|c| c.network_name.as_str()).collect();
    assert_eq!(nets, ["WLAN", "HRPD", "WLAN", "HRPD"]);
    for c in &file.case {
        check_case(c);
    }
}

#[test]
fn shared_vectors() {
    let file: File = load("shared_eap_aka_prime.toml");
    for c in &file.case {
        check_case(c);
    }
}

/// Cases 1 and 2 start from TS 35.208 test set 19: our Milenage and AUTN construction produce
/// exactly the RAND/AUTN/RES/CK/IK the RFC lists, so the whole chain K → MSK is tested.
#[test]
fn rfc9048_cases_1_2_from_test_set_19() {
    let file: File = load("rfc9048_appendix_d.toml");
    let m = Milenage::new(
        &K::from_hex("5122250214c33e723a5dd523fc145fc0").unwrap(),
        &Opc::from_hex("981d464c7c52eb6e5036234984ad0bcf").unwrap(),
    );
    let sqn = Sqn::from_bytes(arr("16f3b3f70fc2"));
    let amf = Amf(arr("c3ab"));
    assert!(amf.separation_bit());
    for c in &file.case[..2] {
        let v = generate_vector(&m, &Rand::from_hex(&c.rand).unwrap(), &sqn, &amf);
        assert_eq!(v.autn.to_hex(), c.autn);
        assert_eq!(hex::encode(v.xres.expose()), c.res);
        assert_eq!(hex::encode(v.ck.expose()), c.ck);
        assert_eq!(hex::encode(v.ik.expose()), c.ik);
        let sqn_xor_ak: [u8; 6] = v.autn.0[..6].try_into().unwrap();
        let (ckp, ikp) = ck_ik_prime(&v.ck, &v.ik, c.network_name.as_bytes(), &sqn_xor_ak);
        let keys = full_auth_keys(c.identity.as_bytes(), &ckp, &ikp);
        assert_eq!(hex::encode(keys.msk.expose()), c.msk, "{}", c.source);
    }
}

fn hmac256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Straight-line PRF' from the RFC 9048 §3.4 text, for comparison.
fn reference_prf(key: &[u8], seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut t: Vec<u8> = Vec::new();
    let mut n = 1u8;
    while out.len() < len {
        t = hmac256(key, &[&t, seed, &[n]]).to_vec();
        out.extend_from_slice(&t);
        n += 1;
    }
    out.truncate(len);
    out
}

#[test]
fn kdf_encoding_is_fc_p_l() {
    // TS 33.220 Annex B.2: S = FC || P0 || L0 || P1 || L1, Li two octets big-endian.
    let key = [0x0b; 32];
    let got = kdf(&key, 0x20, &[b"WLAN", &[1, 2, 3, 4, 5, 6]]);
    let want = hmac256(
        &key,
        &[&[0x20], b"WLAN", &[0, 4], &[1, 2, 3, 4, 5, 6], &[0, 6]],
    );
    assert_eq!(got, want);
    // No parameters: just FC.
    assert_eq!(kdf(&key, 0x6c, &[]), hmac256(&key, &[&[0x6c]]));
}

#[test]
fn prf_prime_matches_reference_and_is_prefix_stable() {
    let key = [7u8; 32];
    let seed = b"EAP-AKA'0555444333222111";
    for len in [0, 1, 31, 32, 33, 64, 208, 1000] {
        assert_eq!(
            &prf_prime(&key, seed, len)[..],
            &reference_prf(&key, seed, len)[..],
            "{len}"
        );
    }
    let long = prf_prime(&key, seed, PRF_PRIME_MAX);
    assert_eq!(long.len(), PRF_PRIME_MAX);
    assert_eq!(&long[..208], &prf_prime(&key, seed, 208)[..]);
}

#[test]
#[should_panic(expected = "255 blocks")]
fn prf_prime_rejects_too_long_output() {
    let _ = prf_prime(&[0; 32], b"", PRF_PRIME_MAX + 1);
}

#[test]
fn full_auth_keys_are_slices_of_mk() {
    let ckp = CkPrime::from_bytes([1; 16]);
    let ikp = IkPrime::from_bytes([2; 16]);
    let keys = full_auth_keys(b"id@realm", &ckp, &ikp);
    let mut key = [2u8; 32];
    key[16..].fill(1); // IK' || CK'
    let mk = reference_prf(&key, b"EAP-AKA'id@realm", 208);
    assert_eq!(keys.k_encr.expose(), &mk[0..16]);
    assert_eq!(keys.k_aut.expose(), &mk[16..48]);
    assert_eq!(keys.k_re.expose(), &mk[48..80]);
    assert_eq!(keys.msk.expose(), &mk[80..144]);
    assert_eq!(keys.emsk.expose(), &mk[144..208]);
}

#[test]
fn reauth_keys_follow_rfc9048_3_4() {
    // MK = PRF'(K_re, "EAP-AKA' re-auth" | Identity | counter | NONCE_S); MSK = MK[0..64], EMSK = MK[64..128].
    let k_re_bytes: [u8; 32] =
        arr("cf83aa8bc7e0aced892acc98e76a9b2095b558c7795c7094715cb3393aa7d17a");
    let k_re = KRe::from_bytes(k_re_bytes);
    let nonce = [0x42u8; 16];
    let keys = reauth_keys(&k_re, b"reauth-id", 0x0102, &nonce);
    let mk = reference_prf(
        &k_re_bytes,
        &[&b"EAP-AKA' re-auth"[..], b"reauth-id", &[1, 2], &nonce].concat(),
        128,
    );
    assert_eq!(keys.msk.expose(), &mk[..64]);
    assert_eq!(keys.emsk.expose(), &mk[64..]);
    let other = reauth_keys(&k_re, b"reauth-id", 0x0103, &nonce);
    assert!(!other.msk.ct_eq_secret(&keys.msk));
}

#[test]
fn at_mac_is_hmac_sha256_128() {
    let k_aut = KAut::from_bytes(arr(
        "0842ea722ff6835bfa2032499fc3ec23c2f0e388b4f07543ffc677f1696d71ea",
    ));
    let packet = bytes("01020028320100000b05000000000000000000000000000000000000");
    let extra = [9u8; 16];
    let mac = at_mac(&k_aut, &packet, &extra);
    assert_eq!(mac[..], hmac256(k_aut.expose(), &[&packet, &extra])[..16]);
    assert!(verify_at_mac(&k_aut, &packet, &extra, &mac));
    assert!(verify_at_mac(
        &k_aut,
        &packet,
        &[],
        &at_mac(&k_aut, &packet, &[])
    ));
    let mut bad = mac;
    bad[15] ^= 1;
    assert!(!verify_at_mac(&k_aut, &packet, &extra, &bad));
    assert!(!verify_at_mac(&k_aut, &packet, &extra, &mac[..15]));
    assert!(!verify_at_mac(&k_aut, &packet, &extra, &[]));
    assert!(!verify_at_mac(&k_aut, &packet, &[], &mac));
}

#[test]
fn checkcode_is_sha256_of_concatenation() {
    let a = b"\x01\x05\x00\x0c\x32\x05\x00\x00\x0d\x01\x00\x00".as_slice();
    let b = b"\x02\x05\x00\x08\x32\x05\x00\x00".as_slice();
    let want: [u8; 32] = Sha256::digest([a, b].concat()).into();
    assert_eq!(checkcode(&[a, b]), want);
    assert_eq!(
        hex::encode(checkcode(&[])),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

proptest! {
    /// AT_MAC verification accepts exactly the computed MAC, for any packet and any candidate.
    #[test]
    fn verify_at_mac_arbitrary(key in any::<[u8; 32]>(), packet in proptest::collection::vec(any::<u8>(), 0..300), cand in proptest::collection::vec(any::<u8>(), 0..40)) {
        let k = KAut::from_bytes(key);
        let mac = at_mac(&k, &packet, &[]);
        prop_assert!(verify_at_mac(&k, &packet, &[], &mac));
        prop_assert_eq!(verify_at_mac(&k, &packet, &[], &cand), cand == mac);
    }

    /// CK'/IK' depend on the network name (cases 1 vs 2 of Appendix D, generalised).
    #[test]
    fn ck_ik_prime_binds_network_name(a in "[A-Za-z0-9:.]{1,40}", b in "[A-Za-z0-9:.]{1,40}") {
        prop_assume!(a != b);
        let ck = Ck::from_bytes([3; 16]);
        let ik = Ik::from_bytes([4; 16]);
        let (ca, _) = ck_ik_prime(&ck, &ik, a.as_bytes(), &[0; 6]);
        let (cb, _) = ck_ik_prime(&ck, &ik, b.as_bytes(), &[0; 6]);
        prop_assert!(!ca.ct_eq_secret(&cb));
    }
}
