//! The pinned OSCORE derivation of `tests/data/coap-eap-oscore.toml` (RFC 9820 §6.2 reading).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use capillary_coap_eap::keys::{cs_input, derive_master};
use capillary_coap_eap::CipherSuite;
use capillary_secrets::{Msk, Secret};

/// Reads `key = "hex"` lines of one TOML table (the file is flat and simple).
fn table(name: &str) -> Vec<(String, String)> {
    let text = include_str!("data/coap-eap-oscore.toml");
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == format!("[{name}]");
            continue;
        }
        if !inside || line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').expect("key = value");
        out.push((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()));
    }
    out
}

fn get(t: &[(String, String)], k: &str) -> Vec<u8> {
    hex::decode(&t.iter().find(|(n, _)| n == k).expect(k).1).expect("hex")
}

#[test]
fn default_suite_vector() {
    let t = table("default_suite");
    let msk = Msk::from_slice(&get(&t, "msk")).unwrap();
    let cs = cs_input(None, None);
    assert_eq!(cs, get(&t, "cs"));
    let (secret, salt) = derive_master(&msk, CipherSuite::DEFAULT, &cs).unwrap();
    assert_eq!(secret.expose(), &get(&t, "master_secret")[..]);
    assert_eq!(salt.expose(), &get(&t, "master_salt")[..]);
    // Explicitly sending the default arrays gives the same CS (RFC 9820 §6.2).
    assert_eq!(
        cs_input(Some(&[CipherSuite::DEFAULT]), Some(&[CipherSuite::DEFAULT])),
        cs
    );
}

/// Wire bytes of the trigger (RFC 9820 §3.2 step 0), kept as a regression fixture:
/// NON POST, MID 0x1000, no token, Uri-Path ".well-known"/"coap-eap", Content-Format 269,
/// No-Response 26, payload "/a/100".
#[test]
fn trigger_wire_bytes() {
    use capillary_coap_eap::trigger::{build_trigger, ResourcePath};
    let t = build_trigger(
        0x1000,
        vec![],
        &ResourcePath(vec!["a".into(), "100".into()]),
    );
    let bytes = t.encode().unwrap();
    let expected = concat!(
        "50021000",                 // ver 1, NON, TKL 0, POST, MID
        "bb2e77656c6c2d6b6e6f776e", // Uri-Path (11) ".well-known"
        "08636f61702d656170",       // Uri-Path "coap-eap"
        "12010d",                   // Content-Format (12) 269
        "d1e91a",                   // No-Response (258 = 12 + 13 + 233) 26
        "ff2f612f313030",           // payload "/a/100"
    );
    assert_eq!(hex::encode(&bytes), expected);
}
