//! Debian's hostapd as the EAP-AKA' server, with Capillary as its HLR/AuC over the hlr_auc_gw
//! interface (`eap_sim_db=unix:`), and eapol_test + `capillary usim-agent` as the peer: two
//! third-party EAP implementations authenticate each other with vectors from Capillary's store.
//! hostapd binds 0.0.0.0, so it and eapol_test run in a private network namespace
//! (`unshare -n`, loopback only); the Unix sockets to Capillary cross it by path.
//! A missing hostapd, eapol_test or unshare fails these tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};

const K1: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OPC1: &str = "cd63cb71954a9f4e48a5994e37a02baf";

struct HostapdRun {
    ok: bool,
    eapol: String,
    hostapd: String,
}

/// Runs hostapd and eapol_test (`-r reauths`) in one private network namespace.
fn run(core: &Core, imsi: &str, sim_sqn: u64, state: &Path, reauths: u32) -> HostapdRun {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let hlr = core.dir.path().join("hlr.sock");
    std::fs::write(
        w.join("eap_user"),
        "\"6\"*\tAKA'\n\"7\"*\tAKA'\n\"8\"*\tAKA'\n",
    )
    .unwrap();
    std::fs::write(w.join("clients"), "127.0.0.1/32 hostapd-secret\n").unwrap();
    std::fs::write(
        w.join("hostapd.conf"),
        format!(
            "driver=none\ninterface=capillary-as\nlogger_stdout=-1\nlogger_stdout_level=1\n\
             eap_server=1\neap_user_file={}\neap_sim_db=unix:{}\n\
             radius_server_clients={}\nradius_server_auth_port=1812\n",
            w.join("eap_user").display(),
            hlr.display(),
            w.join("clients").display(),
        ),
    )
    .unwrap();
    let ctrl = w.join("ctrl");
    std::fs::write(
        w.join("eapol.conf"),
        format!(
            "ctrl_interface={}\nexternal_sim=1\nnetwork={{\n  key_mgmt=IEEE8021X\n  eap=AKA'\n  \
             identity=\"6{imsi}@wlan.mnc001.mcc001.3gppnetwork.org\"\n}}\n",
            ctrl.display()
        ),
    )
    .unwrap();
    // hostapd's log is the readiness signal: eapol_test starts once hostapd is up.
    let script = format!(
        "set -u\nip link set lo up || exit 90\n\
         hostapd {conf} > {hlog} 2>&1 &\nHP=$!\n\
         for i in $(seq 100); do grep -q 'ENABLED' {hlog} 2>/dev/null && break; sleep 0.05; done\n\
         eapol_test -c{econf} -a127.0.0.1 -p1812 -shostapd-secret -r{reauths} -W -t10 > {elog} 2>&1\n\
         RC=$?\nkill $HP\nwait $HP\nexit $RC\n",
        conf = w.join("hostapd.conf").display(),
        hlog = w.join("hostapd.log").display(),
        econf = w.join("eapol.conf").display(),
        elog = w.join("eapol.log").display(),
    );
    let mut ns = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare runs");
    let agent = Command::new(BIN)
        .arg("usim-agent")
        .arg("--ctrl")
        .arg(ctrl.join("test"))
        .args([
            "--key",
            K1,
            "--opc",
            OPC1,
            "--sqn",
            &sim_sqn.to_string(),
            "--wait",
            "15",
        ])
        .arg("--state")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("usim-agent runs");
    let status = ns.wait().unwrap();
    let _ = agent.wait_with_output();
    let eapol = std::fs::read_to_string(w.join("eapol.log")).unwrap_or_default();
    let hostapd = std::fs::read_to_string(w.join("hostapd.log")).unwrap_or_default();
    assert_ne!(
        status.code(),
        Some(90),
        "could not bring up loopback in the namespace"
    );
    let ok = status.success() && eapol.lines().any(|l| l.trim() == "SUCCESS");
    HostapdRun { ok, eapol, hostapd }
}

fn mppe_ok(text: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let (ok, mismatch) = l.strip_prefix("MPPE keys OK: ")?.split_once("mismatch: ")?;
        (mismatch.trim() == "0")
            .then(|| ok.trim().parse().ok())
            .flatten()
    })
}

fn start_core() -> Core {
    require("hostapd", "hostapd");
    require("eapol_test", "eapoltest");
    require("unshare", "util-linux");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("hlr.sock");
    Core::start_in(
        dir,
        &format!("[hlr_auc_gw]\nsocket = {:?}\n", sock.display().to_string()),
    )
}

fn add(core: &Core, imsi: &str) {
    let out = core.subscriber(&["add", "--imsi", imsi, "--k", K1, "--opc", OPC1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hostapd_authenticates_with_capillary_vectors() {
    let core = start_core();
    add(&core, "001010000000021");
    let state = core.dir.path().join("usim21");
    let r = run(&core, "001010000000021", 0, &state, 1);
    assert!(
        r.ok,
        "eapol_test:\n{}\nhostapd:\n{}\ncore:\n{}",
        r.eapol,
        r.hostapd,
        core.log_text()
    );
    assert_eq!(mppe_ok(&r.eapol), Some(2), "{}", r.eapol);
    // The vector came from Capillary's store: SEQ_HE moved.
    let show = core.subscriber(&["show", "--imsi", "001010000000021"]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(!text.contains("seq_he:   0\n"), "{text}");
}

#[test]
fn hostapd_resynchronises_through_capillary() {
    let core = start_core();
    add(&core, "001010000000022");
    let state = core.dir.path().join("usim22");
    let r = run(&core, "001010000000022", 7000 << 5, &state, 0);
    assert!(
        r.ok,
        "eapol_test:\n{}\nhostapd:\n{}\ncore:\n{}",
        r.eapol,
        r.hostapd,
        core.log_text()
    );
    assert!(
        core.log_text().contains("resynchronised"),
        "core:\n{}",
        core.log_text()
    );
}

#[test]
fn hostapd_rejects_unknown_subscriber() {
    let core = start_core();
    let state = core.dir.path().join("usim23");
    let r = run(&core, "001010000000023", 0, &state, 0);
    assert!(!r.ok, "unknown subscriber accepted:\n{}", r.eapol);
    assert!(
        core.log_text().contains("unknown subscriber"),
        "core:\n{}",
        core.log_text()
    );
}
