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
    fast_reauthentication_rounds_with("");
}

/// The same with pseudonyms and re-authentication contexts in the core's memory only.
#[test]
fn fast_reauthentication_rounds_with_memory_identities() {
    fast_reauthentication_rounds_with("[eap]\nidentity_store = \"memory\"\n");
}

fn fast_reauthentication_rounds_with(config: &str) {
    require("eapol_test", "eapoltest");
    let core = Core::start(config);
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

#[test]
fn zero_configuration_core_serves_loopback() {
    require("eapol_test", "eapoltest");
    // No file: loopback clients with the secret generated into <data-dir>/radius-secret.
    let core = Core::start_zero_config();
    assert_eq!(core.secret.len(), 48, "generated secret");
    add(&core, "001010000000008", K1, OPC1, &[]);
    let state = core.dir.path().join("usim8");
    let sim = Sim {
        imsi: "001010000000008",
        k: K1,
        opc: OPC1,
        sqn: 0,
    };
    let run = eapol_test(&core, &sim, &state, 0);
    assert!(
        run.succeeded(),
        "eapol_test failed:\n{}\ncore:\n{}",
        run.stdout,
        core.log_text()
    );
    assert_eq!(run.mppe_ok(), Some(1));
}

#[test]
fn protected_result_indication() {
    require("eapol_test", "eapoltest");
    // AT_RESULT_IND on both sides (RFC 4187 §6.2): success goes through a protected
    // Notification round, for the full authentication and the fast re-authentication.
    let core = Core::start("[eap]\nresult_indication = true\n");
    add(&core, "001010000000009", K1, OPC1, &[]);
    let state = core.dir.path().join("usim9");
    let sim = Sim {
        imsi: "001010000000009",
        k: K1,
        opc: OPC1,
        sqn: 0,
    };
    let run = eapol_test_with(&core, &sim, &state, 1, "  phase1=\"result_ind=1\"");
    assert!(
        run.succeeded(),
        "eapol_test failed:\n{}\ncore:\n{}",
        run.stdout,
        core.log_text()
    );
    assert_eq!(run.mppe_ok(), Some(2));
    assert!(
        run.stdout.contains("AT_RESULT_IND"),
        "peer saw no AT_RESULT_IND:\n{}",
        run.stdout
    );
    let log = core.log_text();
    assert_eq!(log.matches("method=full").count(), 1, "core log:\n{log}");
    assert_eq!(
        log.matches("method=fast-reauth").count(),
        1,
        "core log:\n{log}"
    );
}

#[test]
fn sqn_state_survives_restart_of_the_network_side() {
    require("eapol_test", "eapoltest");
    // The same USIM authenticates against two successive core processes on one store: the
    // second must continue the SQN sequence (no stale SQN, so no resynchronisation).
    let first = Core::start("[eap]\nfast_reauth = false\npseudonyms = false\n");
    add(&first, "001010000000010", K1, OPC1, &[]);
    let state = first.dir.path().join("usim10");
    let sim = Sim {
        imsi: "001010000000010",
        k: K1,
        opc: OPC1,
        sqn: 0,
    };
    let run = eapol_test(&first, &sim, &state, 2);
    assert!(run.succeeded(), "{}", run.stdout);
    assert_eq!(
        first.log_text().matches("method=full").count(),
        3,
        "{}",
        first.log_text()
    );
    // kill -9, as a crash would.
    let dir = first.stop();
    let second = Core::start_in(dir, "[eap]\nfast_reauth = false\npseudonyms = false\n");
    let run = eapol_test(&second, &sim, &state, 0);
    assert!(
        run.succeeded(),
        "after restart:\n{}\ncore:\n{}",
        run.stdout,
        second.log_text()
    );
    assert!(
        !second.log_text().contains("resynchronised"),
        "needless resync:\n{}",
        second.log_text()
    );
}
