//! System tests of the gateway system (docs/PROTOCOL.md): real `capillary core`,
//! `capillary gateway` and `capillary device` processes over loopback, provisioned with the
//! `capillary subscriber` CLI.
//!
//! Every test starts its own core on free ports with a fresh store. The heavy ones (many
//! devices, timing-sensitive) take [`HEAVY`] so that they do not compete for the CPU.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{run_devices, spawn_devices, wait_devices, Core, GatewayProc, BIN};

/// Serialises the tests that run many devices or depend on timing.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

const GW: &str = "001019000000001";
const GW_K: &str = "5122250214c33e723a5dd523fc145fc0";
const GW_OPC: &str = "981d464c7c52eb6e5036234984ad0bcf";
const K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OPC: &str = "cd63cb71954a9f4e48a5994e37a02baf";
const OTHER_K: &str = "fec86ba6eb707ed08905757b1bb44b8f";

/// A core with its gateway link, the gateway subscriber provisioned.
fn core_with_gateway_subscriber() -> Core {
    let core = Core::start_with_link("");
    core.add(GW, "gateway", GW_K, GW_OPC);
    core
}

/// Starts the gateway (towards `network`, default the core's link) and waits until it is
/// authenticated.
fn gateway(core: &Core, network: Option<SocketAddr>, listen: &str) -> GatewayProc {
    let g = GatewayProc::start(
        network.unwrap_or_else(|| core.link.unwrap()),
        listen,
        GW,
        GW_K,
        GW_OPC,
    );
    assert!(
        g.wait_authenticated(Duration::from_secs(10)),
        "gateway not authenticated; gateway log:\n{}\ncore log:\n{}",
        g.log_text(),
        core.log_text()
    );
    g
}

fn imsi(n: u64) -> String {
    format!("{n:015}")
}

/// Distinct devices and total lines in the core's `uplink device=...` debug log.
fn uplinks_logged(core: &Core) -> (usize, usize) {
    let lines = core.log_lines(&["link_driver", "uplink device="]);
    let devices: HashSet<String> = lines
        .iter()
        .filter_map(|l| l.split("device=").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .map(str::to_string)
        .collect();
    (devices.len(), lines.len())
}

/// Test 1: End to end: core + gateway + 20 devices, every device authenticated and its uplink
/// delivered northbound (counted in the core's log).
#[test]
fn end_to_end_twenty_devices() {
    let _g = heavy();
    let t0 = Instant::now();
    let core = core_with_gateway_subscriber();
    core.add_devices(1_010_000_000_001, 20, K, OPC, Some(GW));
    let gw = gateway(&core, None, "127.0.0.1:0");
    let run = run_devices(
        gw.listen,
        &imsi(1_010_000_000_001),
        20,
        K,
        OPC,
        &["--timeout", "15", "--seed", "1"],
    );
    assert!(run.status.success(), "{}", run.describe());
    assert_eq!(run.get("authenticated"), 20, "{}", run.describe());
    assert_eq!(run.get("failed"), 0);
    assert_eq!(run.get("uplinks_acked"), 20);
    assert_eq!(run.get("uplinks_failed"), 0);
    // The network delivered each device's uplink northbound (one line per delivery).
    assert!(
        core.wait_log(Duration::from_secs(2), |_| uplinks_logged(&core).0 == 20),
        "uplinks in the core's log: {:?}\n{}",
        uplinks_logged(&core),
        core.log_text()
    );
    eprintln!(
        "end to end, 20 devices: {:?} (devices {:?})",
        t0.elapsed(),
        run.elapsed
    );
}

/// Test 1b: `capillary demo -n 30 --json`: everything ok, and none of the device secrets the
/// devices and the network hold appears in the bytes the gateway saw (R3).
#[test]
fn demo_json_key_isolation() {
    let _g = heavy();
    let t0 = Instant::now();
    let out = std::process::Command::new(BIN)
        .args(["demo", "-n", "30", "--json", "--timeout", "15"])
        .env("CAPILLARY_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout.lines().last().unwrap();
    let number = |key: &str| -> u64 {
        let at = json
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key} in {json}"));
        json[at + key.len() + 3..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    assert!(json.starts_with("{\"ok\":true,"), "{json}");
    assert_eq!(number("authenticated"), 30, "{json}");
    assert_eq!(number("data_delivered"), 30, "{json}");
    assert_eq!(number("secrets_found_at_gateway"), 0, "{json}");
    // 30 devices × 7 secrets, plus the network's copies.
    assert!(number("secrets_checked") >= 30 * 7, "{json}");
    assert!(number("gateway_bytes_recorded") > 0, "{json}");
    eprintln!("demo -n 30: {:?}", t0.elapsed());
}

/// Test 2: A device whose K differs from the network's fails; the others of the same run
/// succeed. With retries it keeps failing (counted once); without, it fails at once.
#[test]
fn wrong_k_fails_alone() {
    let t0 = Instant::now();
    let core = core_with_gateway_subscriber();
    let first = 1_010_000_000_101;
    core.add_devices(first, 2, K, OPC, Some(GW));
    // The third device's subscription holds another K than the device population's.
    core.add_devices(first + 2, 1, OTHER_K, OPC, Some(GW));
    core.add_devices(first + 3, 2, K, OPC, Some(GW));
    let gw = gateway(&core, None, "127.0.0.1:0");

    let run = run_devices(
        gw.listen,
        &imsi(first),
        5,
        K,
        OPC,
        &["--no-retry", "--timeout", "10"],
    );
    assert!(!run.status.success(), "{}", run.describe());
    assert_eq!(run.get("authenticated"), 4, "{}", run.describe());
    assert_eq!(run.get("failed"), 1, "{}", run.describe());
    assert_eq!(run.get("uplinks_acked"), 4);
    assert_eq!(run.get("attempts"), 5, "no retry: one attempt each");
    assert!(
        run.stderr.contains(&imsi(first + 2)) && run.stderr.contains("authentication failed"),
        "{}",
        run.describe()
    );
    let (devs, _) = uplinks_logged(&core);
    assert_eq!(devs, 4);

    // With retries (default) the wrong-K device retries with backoff until the timeout and
    // still ends failed, counted once.
    let run = run_devices(gw.listen, &imsi(first), 5, K, OPC, &["--timeout", "4"]);
    assert!(!run.status.success(), "{}", run.describe());
    assert_eq!(run.get("authenticated"), 4, "{}", run.describe());
    assert_eq!(run.get("failed"), 1, "{}", run.describe());
    assert!(run.get("attempts") >= 7, "retried: {}", run.describe());
    // Two retries at least 0.75 s + 1.5 s apart (backoff minus jitter).
    assert!(run.elapsed >= Duration::from_secs(2), "{:?}", run.elapsed);
    eprintln!("wrong K: {:?}", t0.elapsed());
}

/// Test 3: A device not bound to the gateway is refused, and the audit log says why.
#[test]
fn device_not_bound_is_refused_and_audited() {
    let t0 = Instant::now();
    let core = core_with_gateway_subscriber();
    let bound = 1_010_000_000_201;
    let unbound = bound + 1;
    core.add_devices(bound, 1, K, OPC, Some(GW));
    core.add_devices(unbound, 1, K, OPC, None);
    let gw = gateway(&core, None, "127.0.0.1:0");
    let run = run_devices(
        gw.listen,
        &imsi(bound),
        2,
        K,
        OPC,
        &["--no-retry", "--timeout", "10"],
    );
    assert!(!run.status.success(), "{}", run.describe());
    assert_eq!(run.get("authenticated"), 1, "{}", run.describe());
    assert_eq!(run.get("failed"), 1, "{}", run.describe());
    let audit = core.audit(&imsi(unbound));
    assert!(
        audit
            .lines()
            .any(|l| l.contains("not_bound_to_gateway") && l.contains(GW)),
        "{audit}"
    );
    let audit = core.audit(&imsi(bound));
    assert!(!audit.contains("not_bound_to_gateway"), "{audit}");

    // Bound now: it attaches.
    core.subscriber_ok(&["bind", "--imsi", &imsi(unbound), "--gateway", GW]);
    let run = run_devices(gw.listen, &imsi(unbound), 1, K, OPC, &["--timeout", "10"]);
    assert!(run.status.success(), "{}", run.describe());
    eprintln!("not bound: {:?}", t0.elapsed());
}

/// Test 4: A barred device is refused (audit `device_barred`); unbarred, the next run succeeds.
#[test]
fn barred_device_refused_then_unbarred() {
    let t0 = Instant::now();
    let core = core_with_gateway_subscriber();
    let dev = 1_010_000_000_301;
    core.add_devices(dev, 1, K, OPC, Some(GW));
    core.subscriber_ok(&["bar", "--imsi", &imsi(dev)]);
    let gw = gateway(&core, None, "127.0.0.1:0");
    let run = run_devices(
        gw.listen,
        &imsi(dev),
        1,
        K,
        OPC,
        &["--no-retry", "--timeout", "10"],
    );
    assert!(!run.status.success(), "{}", run.describe());
    assert_eq!(run.get("authenticated"), 0, "{}", run.describe());
    assert_eq!(run.get("failed"), 1, "{}", run.describe());
    let audit = core.audit(&imsi(dev));
    assert!(audit.contains("device_barred"), "{audit}");

    core.subscriber_ok(&["unbar", "--imsi", &imsi(dev)]);
    let run = run_devices(
        gw.listen,
        &imsi(dev),
        1,
        K,
        OPC,
        &["--no-retry", "--timeout", "10"],
    );
    assert!(run.status.success(), "{}", run.describe());
    assert_eq!(run.get("authenticated"), 1);
    assert_eq!(run.get("uplinks_acked"), 1);
    eprintln!("barred: {:?}", t0.elapsed());
}

/// Test 5: Revoking the gateway (barring its subscriber) refuses the devices behind it at their
/// next attach (audit `gateway_revoked`).
#[test]
fn revoked_gateway_refuses_its_devices() {
    let t0 = Instant::now();
    let core = core_with_gateway_subscriber();
    let first = 1_010_000_000_401;
    core.add_devices(first, 3, K, OPC, Some(GW));
    let gw = gateway(&core, None, "127.0.0.1:0");
    let run = run_devices(
        gw.listen,
        &imsi(first),
        3,
        K,
        OPC,
        &["--no-retry", "--timeout", "10"],
    );
    assert!(
        run.status.success(),
        "before revocation: {}",
        run.describe()
    );
    for i in 0..3 {
        assert!(!core.audit(&imsi(first + i)).contains("gateway_revoked"));
    }

    core.subscriber_ok(&["bar", "--imsi", GW]);
    let run = run_devices(
        gw.listen,
        &imsi(first),
        3,
        K,
        OPC,
        &["--no-retry", "--timeout", "10"],
    );
    assert!(!run.status.success(), "{}", run.describe());
    assert_eq!(run.get("authenticated"), 0, "{}", run.describe());
    assert_eq!(run.get("failed"), 3, "{}", run.describe());
    for i in 0..3 {
        let audit = core.audit(&imsi(first + i));
        assert!(
            audit
                .lines()
                .any(|l| l.contains("gateway_revoked") && l.contains(GW)),
            "{}: {audit}",
            imsi(first + i)
        );
    }
    eprintln!("revoked gateway: {:?}", t0.elapsed());
}

/// Test 6: 10 % loss on the capillary link (each datagram a device sends or receives): all 30
/// devices still attach and deliver, thanks to CoAP retransmission and the retries.
#[test]
fn ten_percent_loss_all_attach() {
    let _g = heavy();
    let t0 = Instant::now();
    let core = core_with_gateway_subscriber();
    let first = 1_010_000_000_501;
    core.add_devices(first, 30, K, OPC, Some(GW));
    let gw = gateway(&core, None, "127.0.0.1:0");
    let run = run_devices(
        gw.listen,
        &imsi(first),
        30,
        K,
        OPC,
        &["--loss", "0.1", "--seed", "7", "--timeout", "18"],
    );
    assert!(run.status.success(), "{}", run.describe());
    assert_eq!(run.get("authenticated"), 30, "{}", run.describe());
    assert_eq!(run.get("uplinks_acked"), 30);
    // The loss emulation did drop datagrams (about 10 % of roughly 300).
    let dropped = run.get("dropped");
    assert!(
        dropped >= 10,
        "only {dropped} datagrams dropped: {}",
        run.describe()
    );
    assert!(
        core.wait_log(Duration::from_secs(2), |_| uplinks_logged(&core).0 == 30),
        "{:?}",
        uplinks_logged(&core)
    );
    eprintln!(
        "10 % loss, 30 devices: {:?}; {}",
        t0.elapsed(),
        run.stdout.lines().last().unwrap()
    );
}

/// Test 7: The gateway killed mid-storm and restarted on the same capillary port: every device
/// retries and ends authenticated with its uplink delivered.
#[test]
fn gateway_restart_mid_storm() {
    let _g = heavy();
    let t0 = Instant::now();
    let core = core_with_gateway_subscriber();
    let first = 1_010_000_001_001;
    core.add_devices(first, 100, K, OPC, Some(GW));
    let mut gw = gateway(&core, None, "127.0.0.1:0");
    let port = gw.listen.port();
    let (child, started) = spawn_devices(
        gw.listen,
        &imsi(first),
        100,
        K,
        OPC,
        // 10% loss on the capillary link spreads the storm: about 40% of the devices
        // lose none of their 9 datagrams and attach in the first round trips, the others
        // wait for CoAP retransmissions (2 s and more), so the kill below lands mid-storm
        // however fast the machine (without loss the batched attach of all 100 ends within
        // a few milliseconds of the first one).
        &["--seed", "11", "--timeout", "60", "--loss", "0.1"],
    );
    // Kill the gateway as soon as the first devices are authenticated.
    let authenticated = || {
        core.log_lines(&["kind=device", "authenticated over the gateway link"])
            .len()
    };
    let until = Instant::now() + Duration::from_millis(500);
    while authenticated() < 5 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(2));
    }
    gw.kill();
    let killed_at = started.elapsed();
    let before = authenticated();
    let gw2 = gateway(&core, None, &format!("127.0.0.1:{port}"));
    assert_eq!(gw2.listen.port(), port);
    let run = wait_devices(child, started);
    assert!(
        run.status.success(),
        "{}\ngateway 2:\n{}",
        run.describe(),
        gw2.log_text()
    );
    assert_eq!(run.get("authenticated"), 100, "{}", run.describe());
    assert_eq!(run.get("uplinks_acked"), 100, "{}", run.describe());
    // The kill did hit the storm: some devices needed more than one attempt.
    assert!(before < 100, "all devices were done before the kill");
    assert!(
        run.get("attempts") > 100,
        "no device retried: {}",
        run.describe()
    );
    assert!(
        core.wait_log(Duration::from_secs(2), |_| uplinks_logged(&core).0 == 100),
        "{:?}",
        uplinks_logged(&core)
    );
    eprintln!(
        "gateway restart, 100 devices: {:?} (devices {:?}; killed after {:?} with {} \
         authenticated); {}",
        t0.elapsed(),
        run.elapsed,
        killed_at,
        before,
        run.stdout.lines().last().unwrap()
    );
}

/// What the man-in-the-middle does to gateway → core datagrams.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mitm {
    /// Send every datagram twice (replay).
    Duplicate,
    /// Flip the last byte (in the OSCORE tag) of every 2nd datagram once the gateway is
    /// authenticated, at most [`MAX_TAMPERED`] times.
    Tamper,
}

/// How many datagrams [`Mitm::Tamper`] spoils at most. How many gateway→core datagrams a run
/// has depends on batching, so the test asserts at least two were spoiled.
const MAX_TAMPERED: u64 = 3;

/// Counters of the proxy.
#[derive(Default, Debug)]
struct ProxyStats {
    up: AtomicU64,
    replayed: AtomicU64,
    tampered: AtomicU64,
    down: AtomicU64,
    /// Core → gateway responses of class 4 (unprotected OSCORE errors, RFC 8613 §8.2).
    down_errors: AtomicU64,
    /// The last such code byte (0x80 = 4.00, 0x81 = 4.01).
    last_error_code: AtomicU64,
}

/// A UDP proxy between the gateway and the core's link. Returns the address the gateway
/// must use.
fn mitm(
    core_link: SocketAddr,
    mode: Mitm,
    armed: Arc<AtomicBool>,
    stats: Arc<ProxyStats>,
    stop: Arc<AtomicBool>,
) -> SocketAddr {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    front
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    back.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = front.local_addr().unwrap();
    let gw_addr: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    // SYSTEM_FULL_LOG: one line per datagram.
    let trace = std::env::var_os("SYSTEM_FULL_LOG").is_some();
    let t0 = Instant::now();
    let (f2, b2, g2, s2, st2) = (
        front.try_clone().unwrap(),
        back.try_clone().unwrap(),
        gw_addr.clone(),
        stats.clone(),
        stop.clone(),
    );
    // gateway → core
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        let mut armed_count = 0u64;
        while !st2.load(Ordering::Relaxed) {
            let Ok((n, from)) = f2.recv_from(&mut buf) else {
                continue;
            };
            *g2.lock().unwrap() = Some(from);
            s2.up.fetch_add(1, Ordering::Relaxed);
            let mut d = buf[..n].to_vec();
            match mode {
                Mitm::Duplicate => {
                    let _ = b2.send_to(&d, core_link);
                    s2.replayed.fetch_add(1, Ordering::Relaxed);
                }
                Mitm::Tamper if armed.load(Ordering::Relaxed) => {
                    armed_count += 1;
                    if armed_count.is_multiple_of(2) && armed_count <= 2 * MAX_TAMPERED {
                        if let Some(last) = d.last_mut() {
                            *last ^= 0x01;
                        }
                        s2.tampered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Mitm::Tamper => {}
            }
            if trace {
                eprintln!(
                    "{:?} up {} bytes{}",
                    t0.elapsed(),
                    d.len(),
                    if d != buf[..n] { " TAMPERED" } else { "" }
                );
            }
            let _ = b2.send_to(&d, core_link);
        }
    });
    // core → gateway
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, _)) = back.recv_from(&mut buf) else {
                continue;
            };
            stats.down.fetch_add(1, Ordering::Relaxed);
            if trace {
                eprintln!("{:?} down {n} bytes code {:#04x}", t0.elapsed(), buf[1]);
            }
            // CoAP code byte: class in the top 3 bits (RFC 7252 §3).
            if n > 1 && buf[1] >> 5 == 4 {
                stats.down_errors.fetch_add(1, Ordering::Relaxed);
                stats
                    .last_error_code
                    .store(u64::from(buf[1]), Ordering::Relaxed);
            }
            if let Some(g) = *gw_addr.lock().unwrap() {
                let _ = front.send_to(&buf[..n], g);
            }
        }
    });
    addr
}

fn run_through_mitm(mode: Mitm, first: u64, n: u32, uplinks: u32) {
    let t0 = Instant::now();
    let core = core_with_gateway_subscriber();
    core.add_devices(first, n, K, OPC, Some(GW));
    let armed = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(ProxyStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let proxy = mitm(
        core.link.unwrap(),
        mode,
        armed.clone(),
        stats.clone(),
        stop.clone(),
    );
    let gw = gateway(&core, Some(proxy), "127.0.0.1:0");
    armed.store(true, Ordering::Relaxed);
    let run = run_devices(
        gw.listen,
        &imsi(first),
        n,
        K,
        OPC,
        &[
            "--seed",
            "5",
            "--timeout",
            "18",
            "--uplinks",
            &uplinks.to_string(),
        ],
    );
    stop.store(true, Ordering::Relaxed);
    assert!(
        run.status.success(),
        "{mode:?}: {}\nproxy {stats:?}\ngateway:\n{}",
        run.describe(),
        gw.log_text()
    );
    assert_eq!(run.get("authenticated"), u64::from(n));
    assert_eq!(run.get("uplinks_acked"), u64::from(n * uplinks));
    // Each uplink reached the northbound side, and exactly once: the replayed copies of
    // the batches were not processed a second time.
    assert!(
        core.wait_log(Duration::from_secs(2), |_| uplinks_logged(&core).0
            == n as usize),
        "{:?}",
        uplinks_logged(&core)
    );
    std::thread::sleep(Duration::from_millis(300));
    let (devices, lines) = uplinks_logged(&core);
    assert_eq!(devices, n as usize);
    // The network delivers each protected uplink once (OSCORE replay window, link dedup).
    // A device that gave up an attempt (stall) re-authenticates and sends its uplinks again
    // as new messages: at-least-once at the application level, bounded by the attempts.
    let attempts = run.get("attempts");
    if attempts == u64::from(n) {
        assert_eq!(
            lines,
            (n * uplinks) as usize,
            "an uplink was delivered twice"
        );
    } else {
        assert!(
            lines >= (n * uplinks) as usize && lines as u64 <= attempts * u64::from(uplinks),
            "{lines} uplinks for {attempts} attempts"
        );
    }
    match mode {
        Mitm::Duplicate => {
            assert!(stats.replayed.load(Ordering::Relaxed) >= 4, "{stats:?}");
        }
        Mitm::Tamper => {
            let tampered = stats.tampered.load(Ordering::Relaxed);
            assert!((2..=MAX_TAMPERED).contains(&tampered), "{stats:?}");
            // The core refused the tampered requests with unprotected errors (RFC 8613
            // §8.2); tampered responses are dropped silently.
            assert!(stats.down_errors.load(Ordering::Relaxed) >= 1, "{stats:?}");
        }
    }
    if std::env::var_os("SYSTEM_FULL_LOG").is_some() {
        eprintln!("{}", run.describe());
    }
    let relinks = gw.log_text().matches("gateway link lost").count();
    eprintln!(
        "MITM {mode:?}, {n} devices × {uplinks} uplinks: {:?}; proxy {stats:?}; gateway \
         re-authentications {relinks}; {}",
        t0.elapsed(),
        run.stdout.lines().last().unwrap()
    );
}

/// Test 8a: Every gateway → core datagram replayed: devices all attach, nothing is processed
/// twice.
#[test]
fn replayed_link_datagrams_are_ignored() {
    let _g = heavy();
    run_through_mitm(Mitm::Duplicate, 1_010_000_002_001, 20, 3);
}

/// Test 8b: Every 5th gateway → core datagram tampered: dropped by the core, retransmitted, and
/// every device still attaches.
#[test]
fn tampered_link_datagrams_are_dropped() {
    let _g = heavy();
    run_through_mitm(Mitm::Tamper, 1_010_000_003_001, 20, 2);
}
