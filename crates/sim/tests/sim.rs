//! Properties of the simulator, with the real sans-IO state machines inside
//! (docs/PROTOCOL.md §4.1, §7; docs/PERFORMANCE.md "Gateway link").
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use capillary_sim::{report, run, Mode, Preset, SimConfig, SimReport};

fn cfg(n: u32, mode: Mode) -> SimConfig {
    SimConfig {
        devices_per_gateway: n,
        mode,
        ..SimConfig::default()
    }
}

fn sim(c: &SimConfig) -> SimReport {
    let r = run(c, &mut |_| {}).unwrap();
    eprintln!("{}", r.to_json());
    r
}

/// Same seed, same configuration: identical JSON, bit for bit.
#[test]
fn same_seed_same_json() {
    let mut c = cfg(20, Mode::Batched);
    c.capillary.loss = 0.05;
    c.seed = 42;
    // Several runs: the state machines' hash maps get new random hashers each time, the
    // simulator's canonical ordering must hide that.
    let a = sim(&c).to_json().to_string();
    for _ in 0..3 {
        assert_eq!(a, sim(&c).to_json().to_string());
    }
    let mut n = c.clone();
    n.mode = Mode::Naive;
    let na = sim(&n).to_json().to_string();
    assert_eq!(na, sim(&n).to_json().to_string());
    c.seed = 43;
    let other = sim(&c).to_json().to_string();
    assert_ne!(a, other, "the seed matters (loss, jitter, start times)");
}

fn storm(n: u32, mode: Mode) -> SimConfig {
    SimConfig {
        start_spread: Duration::ZERO,
        ..cfg(n, mode)
    }
}

/// Batched: the gateway-link round trips and the store round trips of the storm are the
/// same for N = 10 and N = 300 (all devices start at once, like link_scaling.rs); naive:
/// the round trips grow with N.
#[test]
fn batched_constant_naive_grows() {
    let b10 = sim(&storm(10, Mode::Batched));
    let b300 = sim(&storm(300, Mode::Batched));
    for r in [&b10, &b300] {
        assert!(r.completed, "{:?}", r.to_json());
        assert_eq!(r.authenticated, r.devices);
        assert_eq!(r.uplinks_delivered, r.devices);
    }
    assert_eq!(b10.gateway_link.round_trips, b300.gateway_link.round_trips);
    // Store: one vector request and one authorization for the identities, one authorization
    // for the challenge responses (authorization on every batch, PROTOCOL.md §6), one for the
    // uplinks (PROTOCOL.md §7), whatever N.
    assert_eq!(b10.store.round_trips, b300.store.round_trips);
    assert_eq!(b300.store.round_trips, 4);

    assert_eq!(
        b300.gateway_link.round_trips, 4,
        "PROTOCOL.md §7, first implementation"
    );
    let n10 = sim(&storm(10, Mode::Naive));
    let n300 = sim(&storm(300, Mode::Naive));
    for r in [&n10, &n300] {
        assert!(r.completed, "{:?}", r.to_json());
        assert_eq!(r.authenticated, r.devices);
    }
    // Exchanges in flight together count as one round trip (GatewayStats::link_round_trips),
    // so naive's cost at small N shows in the exchanges and the store.
    assert!(n10.link_exchanges > b10.link_exchanges);
    assert!(n10.store.round_trips > b10.store.round_trips);
    assert!(
        n300.store.round_trips >= 3 * 300,
        "one store round trip per device and step"
    );
    assert!(
        n300.gateway_link.round_trips > 10 * n10.gateway_link.round_trips,
        "naive grows with N: {} vs {}",
        n300.gateway_link.round_trips,
        n10.gateway_link.round_trips
    );
}

/// Loss on the capillary link: the end-to-end CoAP-EAP and uplink timers repair it and
/// every device still attaches and delivers its uplink.
#[test]
fn capillary_loss_still_completes() {
    let mut c = cfg(50, Mode::Batched);
    c.capillary.loss = 0.1;
    c.seed = 7;
    let r = sim(&c);
    assert!(r.capillary_lost > 0, "the loss model dropped something");
    assert!(r.completed, "{:?}", r.to_json());
    assert_eq!(r.authenticated, 50);
    assert_eq!(r.uplinks_acked, 50);
    assert_eq!(r.uplinks_delivered, 50);
}

/// A slow link (LTE-M preset) and several gateways: still completes, round trips batched.
#[test]
fn lte_m_two_gateways() {
    let mut c = cfg(50, Mode::Batched);
    c.gateways = 2;
    c.gateway_link = Preset::LteM.link();
    c.link_name = "lte-m".into();
    let r = sim(&c);
    assert!(r.completed, "{:?}", r.to_json());
    assert_eq!(r.authenticated, 100);
    assert!(r.attach.p50 >= Duration::from_millis(3 * 125));
}

/// The outputs: CSV has one line per run, the HTML report is self-contained with inline SVG.
#[test]
fn csv_and_html() {
    let runs: Vec<SimReport> = [
        (1, Mode::Batched),
        (5, Mode::Batched),
        (1, Mode::Naive),
        (5, Mode::Naive),
    ]
    .iter()
    .map(|(n, m)| sim(&cfg(*n, *m)))
    .collect();
    let csv = report::to_csv(&runs);
    assert_eq!(csv.lines().count(), 5);
    assert!(csv.starts_with(report::CSV_HEADER));
    let html = report::to_html(&runs, &["assumption <x>".into()]);
    assert_eq!(html.matches("<svg").count(), 6);
    assert!(html.contains("assumption &lt;x&gt;"));
    assert!(!html.contains("<script") && !html.contains("src=\"http"));
    let table = report::to_table(&runs);
    assert_eq!(table.lines().count(), 6);
}
