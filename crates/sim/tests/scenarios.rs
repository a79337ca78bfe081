//! The scenarios of the simulator (cold storm, gateway reboot, reboot with the devices,
//! steady uplinks, refused devices) with the real sans-IO state machines inside.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use capillary_sim::{run, Mode, Scenario, SimConfig, SimReport, UplinkPattern, Without};

fn cfg(n: u32, scenario: Scenario) -> SimConfig {
    SimConfig {
        devices_per_gateway: n,
        scenario,
        ..SimConfig::default()
    }
}

fn sim(c: &SimConfig) -> SimReport {
    let r = run(c, &mut |_| {}).unwrap();
    eprintln!("{}", r.to_json());
    r
}

/// Every scenario (with loss, jitter, refused devices, a Poisson pattern) gives the same
/// JSON twice; another seed changes it.
#[test]
fn every_scenario_is_deterministic() {
    for s in [
        Scenario::Cold,
        Scenario::Steady,
        Scenario::Reboot,
        Scenario::RebootDevices,
        Scenario::Reattach,
    ] {
        let mut c = cfg(12, s);
        c.capillary.loss = 0.03;
        c.refused_fraction = 0.2;
        c.pattern = UplinkPattern::Poisson;
        c.steady_duration = Duration::from_secs(30);
        c.seed = 9;
        let a = sim(&c).to_json().to_string();
        assert_eq!(a, sim(&c).to_json().to_string(), "{s:?}");
        c.seed = 10;
        assert_ne!(a, sim(&c).to_json().to_string(), "{s:?}: the seed matters");
    }
}

/// The gateway reboots (fresh state, it authenticates again); the devices keep theirs.
/// Every device delivers an uplink again: at once if the network still accepts it, else
/// after its uplink failed and it re-authenticated.
#[test]
fn reboot_recovers_every_device() {
    for (scenario, mode) in [
        (Scenario::Reboot, Mode::Batched),
        (Scenario::Reboot, Mode::Naive),
        (Scenario::RebootDevices, Mode::Batched),
    ] {
        let mut c = cfg(30, scenario);
        c.mode = mode;
        let r = sim(&c);
        assert!(r.completed, "{scenario:?} {mode:?}: {}", r.to_json());
        let rec = r.recovery.expect("recovery times");
        assert!(rec.p50 <= rec.p99 && rec.p99 <= rec.max);
        assert!(rec.max > Duration::ZERO);
        assert!(r.uplinks_delivered >= 30, "one uplink per device at least");
        assert!(r.gateway_link.messages > 0 && r.store.round_trips > 0);
        if scenario == Scenario::RebootDevices {
            assert!(r.authenticated >= 30, "every device authenticated again");
        }
        assert!(r.floor.total() > 0);
    }
    let cold = sim(&cfg(30, Scenario::Cold));
    assert!(cold.recovery.is_none());
}

/// PROTOCOL.md §4 "Gateway restart" with every optimisation on (local identity, one-way
/// confirmations, prefetch, fast re-authentication, first batch with the gateway's
/// authentication): every device is re-bound by its `kid`, none re-authenticates, and all
/// are back within a second (each device's next uplink, not a CoAP give-up of 93 s). The
/// case of a first batch overtaking the gateway's 2.04 is in
/// crates/network/tests/link_signalling.rs.
#[test]
fn reboot_rebinds_devices_without_reauthentication_when_optimised() {
    for n in [10, 60] {
        let mut c = cfg(n, Scenario::Reboot);
        c.mode = Mode::Optimised;
        let r = sim(&c);
        assert!(r.completed, "{}", r.to_json());
        assert_eq!(
            r.authenticated,
            0,
            "no device re-authenticated: {}",
            r.to_json()
        );
        assert!(r.uplinks_delivered >= u64::from(n));
        let rec = r.recovery.expect("recovery times");
        assert!(rec.max < Duration::from_secs(1), "{:?}", rec.max);
    }
}

/// Steady uplinks, no loss: every uplink handed to a device is delivered once and
/// acknowledged; periodic without jitter gives exactly duration / interval per device.
#[test]
fn steady_uplinks_all_delivered() {
    let mut c = cfg(40, Scenario::Steady);
    c.uplink_interval = Duration::from_secs(5);
    c.steady_duration = Duration::from_secs(30);
    let r = sim(&c);
    assert!(r.completed, "{}", r.to_json());
    assert_eq!(r.uplinks_sent, 40 * 6);
    assert_eq!(r.uplinks_delivered, r.uplinks_sent);
    assert_eq!(r.uplinks_acked, r.uplinks_sent);
    assert_eq!(r.uplinks_failed, 0);
    assert_eq!(r.authenticated, 0, "the phase has uplinks only");
    assert_eq!(r.floor.eap, 0, "no EAP in the steady phase");
    assert!(r.uplink_latency.p50 > Duration::ZERO);
    assert!(r.uplink_latency.p50 <= r.uplink_latency.p99);
    // One OSCORE request and response per uplink, each with an 8-byte tag at least.
    assert!(r.floor.oscore >= r.uplinks_sent * 2 * 8);

    let mut p = c.clone();
    p.pattern = UplinkPattern::Poisson;
    p.uplink_interval = Duration::from_secs(2);
    let r = sim(&p);
    assert!(r.completed, "{}", r.to_json());
    assert!(r.uplinks_sent > 40);
    assert_eq!(r.uplinks_delivered, r.uplinks_sent);
    assert_eq!(r.uplinks_acked, r.uplinks_sent);

    let mut j = c.clone();
    j.pattern = UplinkPattern::Periodic {
        jitter: Duration::from_secs(1),
    };
    let r = sim(&j);
    assert!(r.completed, "{}", r.to_json());
    assert_eq!(r.uplinks_delivered, r.uplinks_sent);
}

/// The floor is computed and every mode stays above it; batching gets closer to it than
/// the naive relay.
#[test]
fn floor_ratio_above_one() {
    let b = sim(&cfg(50, Scenario::Cold));
    let mut nc = cfg(50, Scenario::Cold);
    nc.mode = Mode::Naive;
    let n = sim(&nc);
    let mut oc = cfg(50, Scenario::Cold);
    oc.mode = Mode::Optimised;
    let o = sim(&oc);
    for r in [&b, &n, &o] {
        assert!(r.completed);
        assert!(r.floor.eap > 0 && r.floor.oscore > 0);
        let ratio = r.floor_ratio().unwrap();
        assert!(ratio > 1.0, "{ratio}");
        assert!(r.link_bytes_per_device().unwrap() > r.floor_per_device().unwrap());
    }
    assert_eq!(b.floor, n.floor, "the floor does not depend on the relay");
    assert!(b.floor_ratio().unwrap() < n.floor_ratio().unwrap());
}

/// Devices with a wrong K are refused, counted, and do not hold the run back.
#[test]
fn refused_devices_counted() {
    let mut c = cfg(40, Scenario::Cold);
    c.refused_fraction = 0.25;
    let r = sim(&c);
    assert!(r.completed, "{}", r.to_json());
    assert!(r.refused_devices > 0 && r.refused_devices < 40);
    assert_eq!(r.refused, r.refused_devices);
    assert_eq!(r.authenticated, 40 - r.refused_devices);
    assert_eq!(r.uplinks_delivered, 40 - r.refused_devices);
}

/// Beyond the gateway's default 1,024 devices: 2,000 behind one gateway attach in batched
/// mode (10,000 take about 40 s in a debug build; docs/PERFORMANCE.md has the release run).
#[test]
fn two_thousand_devices_behind_one_gateway() {
    let r = sim(&cfg(2000, Scenario::Cold));
    assert!(r.completed, "{}", r.to_json());
    assert_eq!(r.authenticated, 2000);
    assert_eq!(r.uplinks_delivered, 2000);
    assert_eq!(r.failures, 0);
}

/// N is capped at 10,000 per gateway.
#[test]
fn ten_thousand_is_the_limit() {
    let mut c = cfg(10_000, Scenario::Cold);
    assert!(c.validate().is_ok());
    c.devices_per_gateway = 10_001;
    assert!(c.validate().is_err());
}

/// The one hook of the modes: naive turns batching off on both ends, batched keeps the
/// batching defaults without the optimisations, optimised is the defaults.
#[test]
fn apply_mode_is_the_one_switch() {
    use capillary_gateway::{BatcherConfig, GatewayOptions};
    use capillary_network::link::LinkConfig;
    use capillary_sim::apply_mode;
    let (mut b, mut o, mut l) = (
        BatcherConfig::default(),
        GatewayOptions::default(),
        LinkConfig::default(),
    );
    // Optimised: the defaults of both ends, every optimisation on.
    apply_mode(Mode::Optimised, 4, &mut b, &mut o, &mut l);
    assert_eq!(b, BatcherConfig::default());
    assert_eq!(o, GatewayOptions::default());
    assert!(o.local_identity && o.confirm_one_way && l.accept_local_identity);
    assert!(l.fast_reauth && l.prefetch_vectors && o.first_batch_with_auth);
    // Batched: the same batching, without the local identity step and one-way batches.
    apply_mode(Mode::Batched, 4, &mut b, &mut o, &mut l);
    assert_eq!(b, BatcherConfig::default());
    assert!(!o.local_identity && !o.confirm_one_way && !l.accept_local_identity);
    assert!(!l.fast_reauth && !l.prefetch_vectors && !o.first_batch_with_auth);
    assert_eq!(o.batch_max_delay, GatewayOptions::default().batch_max_delay);
    assert_eq!(l.max_batch_entries, LinkConfig::default().max_batch_entries);
    apply_mode(Mode::Naive, 7, &mut b, &mut o, &mut l);
    assert_eq!((b.max_entries, b.window), (1, Duration::ZERO));
    assert_eq!((o.batch_max_delay, o.link.nstart), (Duration::ZERO, 7));
    assert_eq!((l.max_batch_entries, l.transmission.nstart), (1, 7));
    assert_eq!(l.batch_window, Duration::ZERO);
    for m in ["naive", "batched", "optimised", "optimized"] {
        assert!(Mode::parse(m).is_ok());
    }
    assert!(Mode::parse("fast").is_err());
}

fn optimised(n: u32, scenario: Scenario, without: &str) -> SimReport {
    let mut c = cfg(n, scenario);
    c.mode = Mode::Optimised;
    c.without = Without::parse(without).unwrap();
    let r = sim(&c);
    assert!(r.completed, "{scenario:?} without {without:?}");
    r
}

/// PROTOCOL.md §6.2: with the vectors prefetched when the gateway authenticated, the attach
/// wave needs no vector request for its identities.
#[test]
fn prefetch_saves_store_round_trips_of_the_attach_wave() {
    let on = optimised(20, Scenario::Cold, "");
    let off = optimised(20, Scenario::Cold, "prefetch");
    assert!(
        on.store.round_trips < off.store.round_trips,
        "{} vs {}",
        on.store.round_trips,
        off.store.round_trips
    );
}

/// PROTOCOL.md §6.1: a re-attach with fast re-authentication needs no vector; without it,
/// each wave needs its vector request and the identities' authorization.
#[test]
fn fast_reauth_saves_store_round_trips_of_a_reattach() {
    let on = optimised(20, Scenario::Reattach, "prefetch");
    let off = optimised(20, Scenario::Reattach, "prefetch,fast-reauth");
    assert_eq!(on.authenticated, 20);
    assert_eq!(off.authenticated, 20);
    assert!(
        on.store.round_trips < off.store.round_trips,
        "{} vs {}",
        on.store.round_trips,
        off.store.round_trips
    );
    assert!(Without::parse("nonsense").is_err());
}

/// PROTOCOL.md §4.1: after a reboot of gateways and devices on a slow link (the devices
/// trigger while the gateway authenticates), the devices' triggers are answered locally
/// once the gateway's run shows the network's offer, and their identities leave with the
/// gateway's authentication instead of a relayed exchange.
#[test]
fn first_batch_with_auth_saves_a_round_trip_after_a_reboot() {
    let run = |without: &str| {
        let mut c = cfg(20, Scenario::RebootDevices);
        c.mode = Mode::Optimised;
        c.gateway_link = capillary_sim::Preset::Nbiot.link();
        c.without = Without::parse(without).unwrap();
        let r = sim(&c);
        assert!(r.completed, "without {without:?}");
        r
    };
    let on = run("");
    let off = run("first-batch");
    // The relayed trigger / EAP-Request/Identity exchange disappears: fewer `POST /r`
    // exchanges and bytes. (Whole-run round trips can tie: on NB-IoT the exchanges of the
    // storm overlap each other either way.)
    assert!(
        on.link_exchanges < off.link_exchanges,
        "{} vs {}",
        on.link_exchanges,
        off.link_exchanges
    );
    assert!(on.gateway_link.round_trips <= off.gateway_link.round_trips);
    assert!(on.gateway_link.bytes < off.gateway_link.bytes);
}
