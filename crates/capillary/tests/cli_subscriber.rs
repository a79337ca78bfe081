//! `capillary subscriber` end to end: the real binary on a fresh data directory.
//! Gateway bindings, `show`, CSV import with a `gateways` column, the audit log and the error
//! paths (docs/PROTOCOL.md §6).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use capillary_secrets::Imsi;
use capillary_store::{AuditEvent, AuditRecord, SqliteStore, SubscriberStore};

const BIN: &str = env!("CARGO_BIN_EXE_capillary");
const K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OPC: &str = "cd63cb71954a9f4e48a5994e37a02baf";
const DEV: &str = "001010000000001";
const DEV2: &str = "001010000000002";
const GW: &str = "001010000000099";
const GW2: &str = "001010000000098";

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn cap(dir: &Path, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(BIN)
        .arg("subscriber")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("CAPILLARY_DATA_DIR")
        .env("CAPILLARY_LOG", "warn")
        .output()
        .expect("running capillary");
    Run {
        ok: status.success(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

/// Runs and requires success.
fn ok(dir: &Path, args: &[&str]) -> String {
    let r = cap(dir, args);
    assert!(r.ok, "{args:?} failed:\n{}\n{}", r.stdout, r.stderr);
    r.stdout
}

/// Runs and requires failure with `needle` in the error.
fn fails(dir: &Path, args: &[&str], needle: &str) {
    let r = cap(dir, args);
    assert!(!r.ok, "{args:?} succeeded:\n{}", r.stdout);
    assert!(
        r.stderr.contains(needle),
        "{args:?}: {needle:?} not in stderr:\n{}",
        r.stderr
    );
}

fn add(dir: &Path, imsi: &str, kind: &str) {
    ok(
        dir,
        &[
            "add", "--imsi", imsi, "--k", K, "--opc", OPC, "--kind", kind,
        ],
    );
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"))
}

#[test]
fn bind_show_unbind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    add(d, DEV, "device");
    add(d, GW, "gateway");
    add(d, GW2, "gateway");

    assert_eq!(
        line(&ok(d, &["show", "--imsi", DEV]), "gateways:"),
        "gateways: (none)"
    );
    assert_eq!(
        line(&ok(d, &["show", "--imsi", GW]), "devices:"),
        "devices:  0"
    );

    let out = ok(d, &["bind", "--imsi", DEV, "--gateway", GW]);
    assert!(out.contains(DEV) && out.contains(GW), "{out}");
    ok(d, &["bind", "--imsi", DEV, "--gateway", GW]); // idempotent
    ok(d, &["bind", "--imsi", DEV, "--gateway", GW2]);

    let show = ok(d, &["show", "--imsi", DEV]);
    assert_eq!(line(&show, "kind:"), "kind:     device");
    assert_eq!(line(&show, "gateways:"), format!("gateways: {GW2}, {GW}"));
    assert!(!show.contains("devices:"));
    let show = ok(d, &["show", "--imsi", GW]);
    assert_eq!(line(&show, "devices:"), "devices:  1");
    assert!(!show.contains("gateways:"));
    // No secret is printed.
    assert!(!show.contains(K) && !show.contains(OPC));

    ok(d, &["unbind", "--imsi", DEV, "--gateway", GW2]);
    assert_eq!(
        line(&ok(d, &["show", "--imsi", DEV]), "gateways:"),
        format!("gateways: {GW}")
    );
    fails(
        d,
        &["unbind", "--imsi", DEV, "--gateway", GW2],
        "is not bound to",
    );

    // Removing the gateway removes the binding.
    ok(d, &["remove", "--imsi", GW]);
    assert_eq!(
        line(&ok(d, &["show", "--imsi", DEV]), "gateways:"),
        "gateways: (none)"
    );
}

#[test]
fn bind_errors_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    add(d, DEV, "device");
    add(d, DEV2, "device");
    add(d, GW, "gateway");
    let unknown = "001010000000077";
    fails(
        d,
        &["bind", "--imsi", DEV, "--gateway", unknown],
        &format!("no subscriber {unknown}"),
    );
    fails(
        d,
        &["bind", "--imsi", unknown, "--gateway", GW],
        &format!("no subscriber {unknown}"),
    );
    fails(
        d,
        &["bind", "--imsi", DEV, "--gateway", DEV2],
        &format!("{DEV2} is a device, not a gateway"),
    );
    fails(
        d,
        &["bind", "--imsi", GW, "--gateway", GW],
        "only devices are bound to gateways",
    );
    fails(d, &["bind", "--imsi", "12x", "--gateway", GW], "imsi");
    fails(d, &["bind", "--imsi", DEV], "--gateway");
    // Nothing was bound.
    assert_eq!(
        line(&ok(d, &["show", "--imsi", DEV]), "gateways:"),
        "gateways: (none)"
    );
    assert_eq!(
        line(&ok(d, &["show", "--imsi", GW]), "devices:"),
        "devices:  0"
    );
}

#[test]
fn import_with_gateways_column() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    add(d, GW, "gateway"); // already stored
    let csv = d.join("subs.csv");
    std::fs::write(
        &csv,
        format!(
            "imsi,k,opc,kind,gateways\n\
             {DEV},{K},{OPC},device,{GW};{GW2}\n\
             {DEV2},{K},{OPC},device, {GW2} \n\
             001010000000003,{K},{OPC},,\n\
             {GW2},{K},{OPC},gateway,\n"
        ),
    )
    .unwrap();
    let out = ok(d, &["import", csv.to_str().unwrap()]);
    assert!(
        out.contains("imported 4 subscribers, 3 gateway bindings"),
        "{out}"
    );
    assert_eq!(
        line(&ok(d, &["show", "--imsi", DEV]), "gateways:"),
        format!("gateways: {GW2}, {GW}")
    );
    assert_eq!(
        line(&ok(d, &["show", "--imsi", GW2]), "devices:"),
        "devices:  2"
    );
    assert_eq!(
        line(&ok(d, &["show", "--imsi", GW]), "devices:"),
        "devices:  1"
    );
    assert_eq!(
        line(&ok(d, &["show", "--imsi", "001010000000003"]), "gateways:"),
        "gateways: (none)"
    );

    // A gateway that is neither in the file nor in the store: nothing is imported.
    std::fs::write(
        &csv,
        format!(
            "imsi,k,opc,gateways\n\
             001010000000004,{K},{OPC},\n\
             001010000000005,{K},{OPC},001010000000066\n"
        ),
    )
    .unwrap();
    fails(
        d,
        &["import", csv.to_str().unwrap()],
        "line 3: gateway 001010000000066 is neither in the file nor in the store",
    );
    // A device named as a gateway: nothing is imported.
    std::fs::write(
        &csv,
        format!("imsi,k,opc,gateways\n001010000000004,{K},{OPC},{DEV}\n"),
    )
    .unwrap();
    fails(
        d,
        &["import", csv.to_str().unwrap()],
        &format!("line 2: {DEV} is a device, not a gateway"),
    );
    let list = ok(d, &["list"]);
    assert!(!list.contains("001010000000004") && !list.contains("001010000000005"));
    assert_eq!(list.lines().count(), 1 + 5, "{list}");
}

#[test]
fn audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A fresh store has an empty log.
    let out = ok(d, &["audit"]);
    assert_eq!(out.trim(), "no audit records");

    // The network side writes records; here the store is written directly.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = SqliteStore::open(&d.join("subscribers.db")).unwrap();
        let rec = |t, event, subject: &str, gw: Option<&str>, detail: &str| AuditRecord {
            unix_time: t,
            event,
            subject: Imsi::new(subject).unwrap(),
            gateway: gw.map(|g| Imsi::new(g).unwrap()),
            detail: detail.to_owned(),
        };
        for r in [
            rec(
                1_700_000_000,
                AuditEvent::AuthSucceeded,
                DEV,
                Some(GW),
                "attach",
            ),
            rec(
                1_700_000_060,
                AuditEvent::NotBoundToGateway,
                DEV2,
                Some(GW),
                "two\nlines",
            ),
            rec(1_709_251_199, AuditEvent::DeviceBarred, DEV, None, ""),
        ] {
            s.audit(r).await.unwrap();
        }
    });

    let out = ok(d, &["audit"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let cols: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        cols,
        ["ID", "TIME", "EVENT", "SUBJECT", "GATEWAY", "DETAIL"]
    );
    let row = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        row(lines[1]),
        [
            "1",
            "2023-11-14T22:13:20Z",
            "auth_succeeded",
            DEV,
            GW,
            "attach"
        ]
    );
    assert_eq!(
        row(lines[2]),
        [
            "2",
            "2023-11-14T22:14:20Z",
            "not_bound_to_gateway",
            DEV2,
            GW,
            "two\\nlines"
        ]
    );
    assert_eq!(
        row(lines[3]),
        ["3", "2024-02-29T23:59:59Z", "device_barred", DEV, "-"]
    );

    // Filter by subject, the most recent N, paging after an id.
    let out = ok(d, &["audit", "--imsi", DEV]);
    assert_eq!(out.lines().count(), 3);
    assert!(!out.contains("not_bound_to_gateway"));
    let out = ok(d, &["audit", "--limit", "1"]);
    assert_eq!(out.lines().count(), 2);
    assert!(out.contains("device_barred"), "{out}");
    let out = ok(d, &["audit", "--after", "1", "--limit", "1"]);
    assert_eq!(out.lines().count(), 2);
    assert!(out.contains("not_bound_to_gateway"), "{out}");
    assert_eq!(ok(d, &["audit", "--imsi", GW]).trim(), "no audit records");
    fails(d, &["audit", "--imsi", "nope"], "imsi");
}
