//! Cross-check against Osmocom's `osmo-auc-gen` (Debian package libosmocore-utils).
//!
//! The tool is required: if it is missing these tests fail and say how to install it.

#![allow(clippy::unwrap_used)]

use capillary_aka::vector::{build_auts, generate_vector, verify_auts};
use capillary_aka::Milenage;
use capillary_secrets::{Amf, Opc, Rand, Secret, Sqn, K};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::process::Command;

fn tool() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("osmo-auc-gen"));
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "osmo-auc-gen not found: install it with `apt-get install -y libosmocore-utils` \
         (Debian/Ubuntu package libosmocore-utils); this cross-check must not be skipped"
    );
}

struct Out {
    ok: bool,
    text: String,
}

fn run(args: &[String]) -> Out {
    let out = Command::new(tool())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run osmo-auc-gen: {e}"));
    Out {
        ok: out.status.success(),
        text: String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr),
    }
}

/// The hex after `NAME:\t` on its own line.
fn field(text: &str, name: &str) -> String {
    let prefix = format!("{name}:\t");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in osmo-auc-gen output:\n{text}"))
        .trim()
        .to_lowercase()
}

/// SQN_MS recovered by osmo-auc-gen from AUTS. libosmocore 1.7 prints `SQN.MS:\t<n>`; other
/// versions print `AUTS success: SQN.MS = <n>`. Both are accepted.
fn reported_sqn_ms(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("SQN.MS:")
            .or_else(|| l.strip_prefix("AUTS success: SQN.MS ="))
            .and_then(|n| n.trim().parse().ok())
    })
}

fn base_args(k: &[u8; 16], opc: &[u8; 16], rand: &[u8; 16]) -> Vec<String> {
    vec![
        "-3".into(),
        "-a".into(),
        "milenage".into(),
        "-k".into(),
        hex::encode(k),
        "-o".into(),
        hex::encode(opc),
        "-r".into(),
        hex::encode(rand),
    ]
}

#[test]
fn vectors_match_osmo_auc_gen() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0a1c);
    for i in 0..32 {
        let k: [u8; 16] = rng.gen();
        let opc: [u8; 16] = rng.gen();
        let rand: [u8; 16] = rng.gen();
        let sqn = Sqn::new(rng.gen_range(0..=Sqn::MAX)).unwrap();
        let amf: [u8; 2] = rng.gen();

        let mut args = base_args(&k, &opc, &rand);
        args.extend([
            "-s".into(),
            sqn.value().to_string(),
            "-f".into(),
            hex::encode(amf),
        ]);
        let out = run(&args);
        assert!(out.ok, "case {i}: osmo-auc-gen failed:\n{}", out.text);

        let m = Milenage::new(&K::from_bytes(k), &Opc::from_bytes(opc));
        let v = generate_vector(&m, &Rand(rand), &sqn, &Amf(amf));
        assert_eq!(
            field(&out.text, "SQN"),
            sqn.value().to_string(),
            "case {i}: SQN used as given"
        );
        assert_eq!(field(&out.text, "RAND"), hex::encode(rand), "case {i}");
        assert_eq!(field(&out.text, "AUTN"), v.autn.to_hex(), "case {i}: AUTN");
        assert_eq!(
            field(&out.text, "IK"),
            hex::encode(v.ik.expose()),
            "case {i}: IK"
        );
        assert_eq!(
            field(&out.text, "CK"),
            hex::encode(v.ck.expose()),
            "case {i}: CK"
        );
        assert_eq!(
            field(&out.text, "RES"),
            hex::encode(v.xres.expose()),
            "case {i}: RES"
        );
    }
}

#[test]
fn auts_matches_osmo_auc_gen() {
    let mut rng = StdRng::seed_from_u64(0xa075);
    for i in 0..8 {
        let k: [u8; 16] = rng.gen();
        let opc: [u8; 16] = rng.gen();
        let rand: [u8; 16] = rng.gen();
        // Leave room for the tool's SQN.MS + 1 computation.
        let sqn_ms = Sqn::new(rng.gen_range(0..Sqn::MAX >> 1)).unwrap();
        let m = Milenage::new(&K::from_bytes(k), &Opc::from_bytes(opc));
        let auts = build_auts(&m, &Rand(rand), &sqn_ms);
        assert_eq!(verify_auts(&m, &Rand(rand), &auts), Ok(sqn_ms));

        let mut args = base_args(&k, &opc, &rand);
        args.extend(["-A".into(), auts.to_hex()]);
        let out = run(&args);
        assert!(
            out.ok,
            "case {i}: osmo-auc-gen rejected our AUTS:\n{}",
            out.text
        );
        assert_eq!(
            reported_sqn_ms(&out.text),
            Some(sqn_ms.value()),
            "case {i}: SQN_MS from osmo-auc-gen:\n{}",
            out.text
        );

        // A corrupted AUTS is rejected by both.
        let mut bad = auts;
        bad.0[13] ^= 0x01;
        assert!(verify_auts(&m, &Rand(rand), &bad).is_err());
        let mut args = base_args(&k, &opc, &rand);
        args.extend(["-A".into(), bad.to_hex()]);
        let out = run(&args);
        assert!(
            !out.ok && reported_sqn_ms(&out.text).is_none(),
            "case {i}: osmo-auc-gen accepted a corrupted AUTS:\n{}",
            out.text
        );
    }
}
