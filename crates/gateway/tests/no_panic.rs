//! No panic on arbitrary bytes from either side (network, devices), in each phase:
//! before start, during the gateway's own authentication, after it, and with batches in
//! flight. Deterministic: every case runs from a fixed seed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use capillary_gateway::{Gateway, Transmit};
use common::{device_msg, gateway_config, World};
use proptest::prelude::*;

fn drain(gw: &mut Gateway<u32>) {
    while gw.poll_transmit().is_some() {}
    while gw.poll_event().is_some() {}
}

fn feed(w: &mut World, inputs: &[(bool, u8, Vec<u8>)]) {
    for (from_net, dev, bytes) in inputs {
        if *from_net {
            w.gw.handle_network_datagram(w.now, bytes);
        } else {
            w.gw.handle_device_datagram(w.now, u32::from(*dev % 4), bytes);
        }
        if let Some(t) = w.gw.poll_timeout() {
            if t <= w.now + Duration::from_secs(1) {
                w.now = w.now.max(t);
                w.gw.handle_timeout(w.now);
            }
        }
    }
    drain(&mut w.gw);
    let _ = w.gw.stats();
}

fn inputs() -> impl Strategy<Value = Vec<(bool, u8, Vec<u8>)>> {
    prop::collection::vec(
        (
            any::<bool>(),
            any::<u8>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                // Look like CoAP: version 1 header, then anything.
                (0u8..=0x3f, prop::collection::vec(any::<u8>(), 3..80)).prop_map(|(b0, mut r)| {
                    r.insert(0, 0x40 | b0);
                    r
                }),
            ],
        ),
        0..24,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn before_start(inp in inputs()) {
        let mut w = World::new(1);
        feed(&mut w, &inp);
    }

    #[test]
    fn during_own_authentication(inp in inputs(), cut in 0usize..6) {
        let mut w = World::new(2);
        w.gw.start(w.now);
        // Deliver the first `cut` link messages, then garbage.
        for _ in 0..cut {
            if let Some(Transmit::ToNetwork(b)) = w.gw.poll_transmit() {
                w.net.handle(w.now, &b);
            }
            while let Some(b) = w.net.out.pop_front() {
                w.gw.handle_network_datagram(w.now, &b);
            }
        }
        feed(&mut w, &inp);
        // Whatever happened, the gateway still runs its timers without panicking.
        w.link_down = true;
        w.run_for(Duration::from_secs(120));
    }

    #[test]
    fn after_authentication_with_batch_in_flight(inp in inputs()) {
        let mut w = World::authenticated(3);
        w.device_sends(1, &device_msg(1, b"in flight"));
        w.run_for(Duration::from_millis(20));
        w.link_down = true;
        w.device_sends(2, &device_msg(2, b"lost"));
        w.run_for(Duration::from_millis(25));
        feed(&mut w, &inp);
        w.link_down = false;
        w.run_for(Duration::from_secs(300));
    }

    #[test]
    fn after_authentication_relay_keeps_working(inp in inputs()) {
        let mut w = World::authenticated(4);
        feed(&mut w, &inp);
        let m = device_msg(9, b"still works");
        w.device_sends(3, &m);
        // `feed` threw away what the gateway sent: a batch in flight is retransmitted.
        w.run_for(Duration::from_secs(10));
        // Garbage from the network without the OSCORE context cannot stop the relay: an
        // unprotected error for the batch in flight (which would have to match its 8-byte
        // token) does not end it either, and it takes 4.01s for 3 different exchanges to
        // count as link loss (PROTOCOL.md §4 "Errors").
        prop_assert!(w.to_devices.contains(&(3, m)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The authenticated network sends anything as a batch payload: the gateway answers
    /// (2.04 or a §4 error code) and never panics.
    #[test]
    fn arbitrary_batch_payloads_from_the_network(payload in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut w = World::authenticated(6);
        w.device_sends(1, &device_msg(1, b"x"));
        w.run_for(Duration::from_millis(25));
        w.net.post_raw(w.now, payload);
        w.pump();
        prop_assert_eq!(w.net.answer_codes.len(), 1);
    }

    /// Well-formed batches with arbitrary entries (any handle, kind, body).
    #[test]
    fn arbitrary_entries_from_the_network(
        entries in prop::collection::vec(
            (0u32..4, 0u64..6, prop::collection::vec(any::<u8>(), 0..40), any::<u8>()),
            0..20,
        )
    ) {
        use capillary_relay::{Entry, EntryKind, OutcomeResult};
        let mut w = World::authenticated(7);
        w.device_sends(1, &device_msg(1, b"x"));
        w.run_for(Duration::from_millis(25));
        let entries: Vec<Entry> = entries
            .into_iter()
            .map(|(handle, kind, body, r)| Entry {
                handle,
                kind: match kind {
                    0 => EntryKind::Coap(device_msg(u16::from(r), &body)),
                    1 => EntryKind::Outcome {
                        result: OutcomeResult::from_code(r),
                        session_lifetime: Some(u32::from(r)),
                    },
                    2 => EntryKind::Gone,
                    3 => EntryKind::Identity {
                        request: device_msg(u16::from(r), &body),
                        response: device_msg(u16::from(r), &body),
                    },
                    k => {
                        let mut b = vec![0x40 | body.len().min(23) as u8];
                        b.extend_from_slice(&body[..body.len().min(23)]);
                        EntryKind::Unknown { kind: k + 10, body: b }
                    }
                },
            })
            .collect();
        w.net.post_batch(w.now, entries);
        w.pump();
        w.run_for(Duration::from_secs(120));
        prop_assert_eq!(w.net.answer_codes.len(), 1);
    }

    /// Real protected network messages with bytes flipped: dropped or answered, never
    /// delivered altered, never a panic.
    #[test]
    fn mutated_protected_network_messages(flips in prop::collection::vec((any::<usize>(), 1u8..=255), 1..4)) {
        use capillary_relay::Entry;
        let mut w = World::authenticated(8);
        w.device_sends(1, &device_msg(1, b"x"));
        w.run_for(Duration::from_millis(25));
        let h = w.gw.handle_of(&1).unwrap();
        let down = device_msg(0x55, b"downlink");
        w.link_down = true;
        w.net.post_batch(w.now, vec![Entry::coap(h, down.clone())]);
        w.pump();
        let mut bytes = w.link_log.last().unwrap().1.clone();
        for (i, x) in flips {
            let n = bytes.len();
            bytes[i % n] ^= x;
        }
        w.link_down = false;
        let before = w.to_devices.len();
        w.gw.handle_network_datagram(w.now, &bytes);
        w.pump();
        prop_assert!(w.to_devices[before..].iter().all(|(_, b)| *b == down));
    }
}

#[test]
fn huge_and_empty_datagrams() {
    let mut w = World::authenticated(5);
    w.gw.handle_network_datagram(w.now, &[]);
    w.gw.handle_network_datagram(w.now, &vec![0x40; 70_000]);
    w.gw.handle_device_datagram(w.now, 1, &[]);
    w.gw.handle_device_datagram(w.now, 1, &vec![0x40; 70_000]);
    w.run_for(Duration::from_secs(1));
    assert!(w.gw.is_authenticated());
    let _ = gateway_config();
}
