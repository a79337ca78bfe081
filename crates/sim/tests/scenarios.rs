//! The scenarios of the simulator (cold storm, gateway reboot, reboot with the devices,
//! steady uplinks, refused devices) with the real sans-IO state machines inside.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use capillary_sim::{run, Mode, Scenario, SimConfig, SimReport, UplinkPattern};

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

#[test]
fn explore() {
    for s in [Scenario::Cold, Scenario::Steady, Scenario::Reboot, Scenario::RebootDevices] {
        let mut c = cfg(20, s);
        c.refused_fraction = 0.0;
        let r = sim(&c);
        eprintln!("{s:?} completed {} recovery {:?} floor {:?} ratio {:?}", r.completed, r.recovery, r.floor, r.floor_ratio());
    }
    let mut c = cfg(20, Scenario::Cold);
    c.refused_fraction = 0.2;
    let r = sim(&c);
    eprintln!("refused {} of {} completed {}", r.refused, r.refused_devices, r.completed);
    let _ = (Mode::Batched, UplinkPattern::Poisson, Duration::ZERO);
}

#[test]
fn explore_big() {
    let n: u32 = std::env::var("SIM_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let t = std::time::Instant::now();
    let r = sim(&cfg(n, Scenario::Cold));
    eprintln!("N={n} wall {:?} completed {} ratio {:?}", t.elapsed(), r.completed, r.floor_ratio());
}
