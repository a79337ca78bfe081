//! `capillary bench radius` end to end, real processes: `capillary core` on a free loopback
//! port, a 50-subscriber population written with `--emit-csv` and provisioned with
//! `capillary subscriber import`, then the load generator against it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::process::Command;

const SUBSCRIBERS: &str = "50";
const IMSI_START: &str = "001010000000101";

/// A core holding the bench population.
fn provisioned_core() -> Core {
    let core = Core::start("");
    let csv = core.dir.path().join("population.csv");
    let out = Command::new(BIN)
        .args(["bench", "radius", "--imsi-start", IMSI_START])
        .args(["--subscribers", SUBSCRIBERS, "--emit-csv"])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("imsi,k,opc\n"), "{text}");
    assert_eq!(text.lines().count(), 51, "header + 50 rows");
    let out = core.subscriber(&["import", csv.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 50 subscribers"));
    core
}

struct Bench {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn bench(core: &Core, secret: &str, extra: &[&str]) -> Bench {
    let out = Command::new(BIN)
        .args(["bench", "radius", "--server"])
        .arg(format!("127.0.0.1:{}", core.port))
        .args(["--secret", secret, "--imsi-start", IMSI_START])
        .args(["--subscribers", SUBSCRIBERS, "--json"])
        .args(extra)
        .output()
        .unwrap();
    Bench {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// The first (top-level) numeric value of `key` in the report.
fn num(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} not in {json}"))
        + pat.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].parse().unwrap()
}

/// The report is one JSON object on one line, braces and quotes balanced.
fn check_shape(json: &str) {
    let json = json.trim();
    assert_eq!(json.lines().count(), 1, "{json}");
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    let (mut depth, mut in_str, mut esc) = (0i32, false, false);
    for c in json.chars() {
        match (in_str, esc, c) {
            (true, true, _) => esc = false,
            (true, false, '\\') => esc = true,
            (true, false, '"') => in_str = false,
            (false, _, '"') => in_str = true,
            (false, _, '{') => depth += 1,
            (false, _, '}') => depth -= 1,
            _ => {}
        }
        assert!(depth >= 0, "{json}");
    }
    assert_eq!((depth, in_str), (0, false), "{json}");
}

#[test]
fn full_authentications_all_succeed() {
    let core = provisioned_core();
    let r = bench(
        &core,
        &core.secret,
        &["--count", "200", "--concurrency", "16"],
    );
    assert!(
        r.ok,
        "{}\n{}\ncore:\n{}",
        r.stdout,
        r.stderr,
        core.log_text()
    );
    check_shape(&r.stdout);
    assert_eq!(num(&r.stdout, "attempted"), 200.0);
    assert_eq!(num(&r.stdout, "succeeded"), 200.0);
    assert_eq!(num(&r.stdout, "failed"), 0.0);
    assert!(num(&r.stdout, "auths_per_s") > 0.0);
    assert!(r.stdout.contains("\"failures\":{}"), "{}", r.stdout);
    assert!(r.stdout.contains("\"mode\":\"full\""));
    // Identity → Challenge, Challenge response → Accept.
    assert_eq!(num(&r.stdout, "round_trips_per_auth"), 2.0);
    // Every Accept carried MPPE keys (trusted client) and they matched the peer's MSK.
    assert_eq!(num(&r.stdout, "mppe_checked"), 200.0);
    assert_eq!(num(&r.stdout, "full_auths"), 200.0);
    let p50 = num(&r.stdout, "p50");
    let p99 = num(&r.stdout, "p99");
    let max = num(&r.stdout, "max");
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{}", r.stdout);
}

#[test]
fn fast_reauthentication_succeeds() {
    let core = provisioned_core();
    let r = bench(
        &core,
        &core.secret,
        &["--count", "200", "--concurrency", "16", "--mode", "reauth"],
    );
    assert!(
        r.ok,
        "{}\n{}\ncore:\n{}",
        r.stdout,
        r.stderr,
        core.log_text()
    );
    check_shape(&r.stdout);
    assert!(r.stdout.contains("\"mode\":\"reauth\""));
    assert_eq!(num(&r.stdout, "succeeded"), 200.0);
    assert_eq!(num(&r.stdout, "failed"), 0.0);
    assert!(num(&r.stdout, "auths_per_s") > 0.0);
    // All measured ones were fast re-authentications: no AKA run on the USIM.
    assert_eq!(num(&r.stdout, "fast_reauths"), 200.0);
    assert_eq!(num(&r.stdout, "mppe_checked"), 200.0);
    // Priming: one full authentication per subscriber.
    let priming = &r.stdout[r.stdout.find("\"priming\":").unwrap()..];
    assert_eq!(num(priming, "succeeded"), 50.0);
    assert_eq!(num(priming, "full_auths"), 50.0);
}

#[test]
fn wrong_secret_times_out_and_fails() {
    let core = provisioned_core();
    let r = bench(
        &core,
        "not-the-secret",
        &[
            "--count",
            "32",
            "--concurrency",
            "16",
            "--timeout-ms",
            "200",
            "--retries",
            "1",
        ],
    );
    assert!(!r.ok, "exit status must be non-zero: {}", r.stdout);
    check_shape(&r.stdout);
    assert_eq!(num(&r.stdout, "succeeded"), 0.0);
    assert_eq!(num(&r.stdout, "failed"), 32.0);
    assert!(
        r.stdout.contains("\"failures\":{\"timeout\":32}"),
        "{}",
        r.stdout
    );
    // Each request was sent twice (one retransmission) before giving up.
    assert_eq!(num(&r.stdout, "retransmissions"), 32.0);
    assert!(
        r.stderr.contains("32 of 32 authentications failed"),
        "{}",
        r.stderr
    );
}

#[test]
fn text_report_and_argument_errors() {
    let core = provisioned_core();
    let out = Command::new(BIN)
        .args(["bench", "radius", "--server"])
        .arg(format!("127.0.0.1:{}", core.port))
        .args(["--secret-file"])
        .arg({
            let p = core.dir.path().join("secret");
            std::fs::write(&p, format!("{}\n", core.secret)).unwrap();
            p
        })
        .args(["--imsi-start", IMSI_START, "--subscribers", "8"])
        .args(["--count", "20", "--concurrency", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for needle in [
        "auths/s",
        "p50",
        "p99",
        "round trips",
        "failures:        none",
        "summary:",
    ] {
        assert!(stdout.contains(needle), "{needle:?} not in {stdout}");
    }
    // No secret at all.
    let out = Command::new(BIN)
        .args(["bench", "radius", "--count", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret"));
}
