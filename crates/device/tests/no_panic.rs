//! Arbitrary datagrams never panic the device, in every phase: not started, triggering,
//! in the middle of EAP-AKA', authenticated with an uplink in flight, and during a
//! re-authentication. Inputs are random bytes, mutations of genuine network datagrams, and
//! genuine datagrams replayed out of order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use capillary_device::DeviceEvent;
use common::Sim;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Input {
    Random(Vec<u8>),
    /// Genuine network datagram `idx` with byte `pos` xor `mask`, truncated to `keep`.
    Mutated {
        idx: usize,
        pos: usize,
        mask: u8,
        keep: usize,
    },
    /// Genuine network datagram `idx` as is (a replay, possibly stale).
    Replay(usize),
    /// Let `secs` pass.
    Wait(u16),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Input::Random),
        (any::<usize>(), any::<usize>(), 1u8.., any::<usize>()).prop_map(
            |(idx, pos, mask, keep)| Input::Mutated {
                idx,
                pos,
                mask,
                keep
            }
        ),
        any::<usize>().prop_map(Input::Replay),
        (0u16..400).prop_map(Input::Wait),
    ]
}

/// A reference run to take genuine network datagrams from.
fn genuine() -> Vec<Vec<u8>> {
    let mut s = Sim::with(common::device_config(), 77, Duration::from_secs(600));
    s.authenticate();
    let id = s.device.send_uplink(s.now, b"x").unwrap();
    s.run_until(Duration::from_secs(10), |s| {
        s.events.contains(&DeviceEvent::UplinkAcked { id })
    });
    s.net.queue_downlink(s.now, b"y");
    s.run_until(Duration::from_secs(10), |s| s.net.downlink_acks == 1);
    s.advance(Duration::from_secs(320));
    s.net_sent
}

/// A sim in `phase`: 0 new, 1 triggering, 2 mid-EAP, 3 authenticated + uplink in flight,
/// 4 re-authenticating.
fn sim_in(phase: u8) -> Sim {
    let mut s = Sim::with(common::device_config(), 77, Duration::from_secs(600));
    match phase {
        0 => {}
        1 => s.start(),
        2 => {
            s.start();
            while s.device_sent.len() < 2 && s.step() {}
        }
        3 => {
            s.authenticate();
            s.device.send_uplink(s.now, b"in flight").unwrap();
        }
        _ => {
            s.authenticate();
            s.advance(Duration::from_secs(300));
            while s.device_sent.len() < 9 && s.step() {}
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_datagrams_never_panic(
        phase in 0u8..5,
        inputs in proptest::collection::vec(input(), 1..12),
    ) {
        let pool = genuine();
        let mut s = sim_in(phase);
        for i in inputs {
            match i {
                Input::Random(b) => s.device.handle_datagram(s.now, &b),
                Input::Mutated { idx, pos, mask, keep } => {
                    let mut b = pool[idx % pool.len()].clone();
                    let p = pos % b.len();
                    b[p] ^= mask;
                    b.truncate(keep % (b.len() + 1));
                    s.device.handle_datagram(s.now, &b);
                }
                Input::Replay(idx) => s.device.handle_datagram(s.now, &pool[idx % pool.len()]),
                Input::Wait(secs) => {
                    s.now += Duration::from_secs(u64::from(secs));
                    s.device.handle_timeout(s.now);
                }
            }
            while s.device.poll_transmit().is_some() {}
            while let Some(ev) = s.device.poll_event() {
                // A forged or replayed input never yields a downlink the network did not
                // send in this run.
                if let DeviceEvent::Downlink { payload } = &ev {
                    prop_assert!(phase >= 3, "downlink before authentication: {payload:?}");
                }
            }
            let _ = s.device.poll_timeout();
        }
        // The system still runs (and may recover) afterwards.
        s.run_until(Duration::from_secs(120), |_| false);
        let _ = s.device.dangerous_export_secrets();
    }
}
