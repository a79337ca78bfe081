//! Interop with a real third-party EAP-AKA' peer: Debian's `eapol_test` (wpa_supplicant) over
//! RADIUS against `capillary core`, with `capillary usim-agent` as its external USIM.
//! A missing `eapol_test` fails these tests; `scripts/test` installs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

// TS 35.208 test set 1 credentials, used as an ordinary subscriber here.
const K1: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OPC1: &str = "cd63cb71954a9f4e48a5994e37a02baf";

fn add(core: &Core, imsi: &str, k: &str, opc: &str, extra: &[&str]) {
    let mut args = vec!["add", "--imsi", imsi, "--k", k, "--opc", opc];
    args.extend_from_slice(extra);
    let out = core.subscriber(&args);
    assert!(
        out.status.success(),
        "subscriber add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn full_authentication_with_matching_msk() {
    require("eapol_test", "eapoltest");
    let core = Core::start("");
    add(&core, "001010000000001", K1, OPC1, &[]);
    let state = core.dir.path().join("usim1");
    let run = eapol_test(
        &core,
        &Sim {
            imsi: "001010000000001",
            k: K1,
            opc: OPC1,
            sqn: 0,
        },
        &state,
        0,
    );
    assert!(
        run.succeeded(),
        "eapol_test failed:\n{}\ncore:\n{}",
        run.stdout,
        core.log_text()
    );
    assert_eq!(run.mppe_ok(), Some(1), "MPPE keys:\n{}", run.stdout);
}

#[test]
fn resynchronisation_when_usim_is_ahead() {
    require("eapol_test", "eapoltest");
    let core = Core::start("");
    add(&core, "001010000000002", K1, OPC1, &[]);
    let state = core.dir.path().join("usim2");
    // The USIM has already accepted SEQ 5000 in every lane: the network's first SQN is stale.
    let sim = Sim {
        imsi: "001010000000002",
        k: K1,
        opc: OPC1,
        sqn: 5000 << 5,
    };
    let run = eapol_test(&core, &sim, &state, 0);
    assert!(
        run.succeeded(),
        "eapol_test failed:\n{}\ncore:\n{}",
        run.stdout,
        core.log_text()
    );
    assert!(
        core.log_text().contains("resynchronised"),
        "no resync in core log:\n{}",
        core.log_text()
    );
    assert_eq!(run.mppe_ok(), Some(1));
}

#[test]
fn fast_reauthentication_rounds() {
    require("eapol_test", "eapoltest");
    let core = Core::start("");
    add(&core, "001010000000003", K1, OPC1, &[]);
    let state = core.dir.path().join("usim3");
    let run = eapol_test(
        &core,
        &Sim {
            imsi: "001010000000003",
            k: K1,
            opc: OPC1,
            sqn: 0,
        },
        &state,
        3,
    );
    assert!(
        run.succeeded(),
        "eapol_test failed:\n{}\ncore:\n{}",
        run.stdout,
        core.log_text()
    );
    assert_eq!(run.mppe_ok(), Some(4), "MPPE keys:\n{}", run.stdout);
    let log = core.log_text();
    assert_eq!(
        log.matches("method=fast-reauth").count(),
        3,
        "core log:\n{log}"
    );
    assert_eq!(log.matches("method=full").count(), 1, "core log:\n{log}");
}

#[test]
fn pseudonym_used_on_next_round() {
    require("eapol_test", "eapoltest");
    // Without fast re-authentication the peer's second round must use the pseudonym it was given.
    let core = Core::start("[eap]\nfast_reauth = false\n");
    add(&core, "001010000000004", K1, OPC1, &[]);
    let state = core.dir.path().join("usim4");
    let run = eapol_test(
        &core,
        &Sim {
            imsi: "001010000000004",
            k: K1,
            opc: OPC1,
            sqn: 0,
        },
        &state,
        1,
    );
    assert!(
        run.succeeded(),
        "eapol_test failed:\n{}\ncore:\n{}",
        run.stdout,
        core.log_text()
    );
    assert_eq!(run.mppe_ok(), Some(2));
    let log = core.log_text();
    assert!(log.contains("identity=pseudonym"), "core log:\n{log}");
    assert_eq!(log.matches("method=full").count(), 2, "core log:\n{log}");
}

#[test]
fn wrong_k_is_rejected() {
    require("eapol_test", "eapoltest");
    let core = Core::start("");
    add(&core, "001010000000005", K1, OPC1, &[]);
    let state = core.dir.path().join("usim5");
    let wrong_k = "000102030405060708090a0b0c0d0e0f";
    let run = eapol_test(
        &core,
        &Sim {
            imsi: "001010000000005",
            k: wrong_k,
            opc: OPC1,
            sqn: 0,
        },
        &state,
        0,
    );
    assert!(!run.succeeded(), "wrong K accepted:\n{}", run.stdout);
    assert!(
        core.log_text().contains("authentication-reject"),
        "core log:\n{}",
        core.log_text()
    );
}

#[test]
fn unknown_imsi_is_rejected() {
    require("eapol_test", "eapoltest");
    let core = Core::start("");
    let state = core.dir.path().join("usim6");
    let run = eapol_test(
        &core,
        &Sim {
            imsi: "001010000000099",
            k: K1,
            opc: OPC1,
            sqn: 0,
        },
        &state,
        0,
    );
    assert!(!run.succeeded(), "unknown IMSI accepted:\n{}", run.stdout);
    assert!(
        run.stdout.contains("Access-Reject") || run.stdout.contains("FAILURE"),
        "{}",
        run.stdout
    );
    assert!(
        core.log_text().contains("unknown subscriber"),
        "core log:\n{}",
        core.log_text()
    );
}

#[test]
fn barred_subscriber_is_rejected() {
    require("eapol_test", "eapoltest");
    let core = Core::start("");
    add(&core, "001010000000007", K1, OPC1, &[]);
    let out = core.subscriber(&["bar", "--imsi", "001010000000007"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = core.dir.path().join("usim7");
    let run = eapol_test(
        &core,
        &Sim {
            imsi: "001010000000007",
            k: K1,
            opc: OPC1,
            sqn: 0,
        },
        &state,
        0,
    );
    assert!(
        !run.succeeded(),
        "barred subscriber accepted:\n{}",
        run.stdout
    );
    assert!(
        core.log_text().contains("barred"),
        "core log:\n{}",
        core.log_text()
    );
}
