//! The gateway against the in-memory network stand-in (see `common`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use capillary_gateway::{
    AuthFailure, Gateway, GatewayEvent, GatewayOptions, GatewayStats, Transmit,
};
use capillary_relay::{Entry, EntryKind, OutcomeResult};
use common::{device_msg, gateway_config, World};

#[test]
fn gateway_authenticates_with_coap_eap_and_eap_aka_prime() {
    let w = World::authenticated(1);
    assert_eq!(w.count_events(|e| *e == GatewayEvent::Authenticated), 1);
    assert_eq!(w.gw.session_lifetime(), Some(Duration::from_secs(3600)));
    // Trigger, Identity round, AKA'-Challenge round, protected Success + 2.04.
    let s = w.gw.stats();
    assert_eq!(s.link_msgs_out, 4);
    assert_eq!(s.link_msgs_in, 3);
    assert_eq!(s.link_round_trips, 0, "CoAP-EAP is not a batch round trip");
    assert!(w.net.ctx.is_some());
}

#[test]
fn datagrams_within_the_window_go_up_as_one_batch_and_answers_reach_the_right_devices() {
    let mut w = World::authenticated(2);
    let before = w.gw.stats();
    let msgs: Vec<Vec<u8>> = (0..10u16)
        .map(|i| device_msg(100 + i, format!("dev{i}").as_bytes()))
        .collect();
    for (i, m) in msgs.iter().enumerate() {
        w.device_sends(10 + i as u32, m);
        w.run_for(Duration::from_millis(1));
    }
    assert!(w.net.batches_in.is_empty(), "window still open");
    w.run_for(Duration::from_millis(20));
    assert_eq!(w.net.batches_in.len(), 1, "one POST /r");
    let batch = &w.net.batches_in[0];
    assert_eq!(batch.entries.len(), 10);
    for (i, m) in msgs.iter().enumerate() {
        let h = w.gw.handle_of(&(10 + i as u32)).unwrap();
        assert!(batch
            .entries
            .iter()
            .any(|e| e.handle == h && e.kind == EntryKind::Coap(m.clone())));
    }
    let s = w.gw.stats();
    let total: u64 = msgs.iter().map(|m| m.len() as u64).sum();
    assert_eq!(s.capillary_msgs_in, 10);
    assert_eq!(s.capillary_bytes_in, total);
    assert_eq!(s.batches_sent, 1);
    assert_eq!(s.link_round_trips, 1);
    assert_eq!(s.link_msgs_out - before.link_msgs_out, 1);
    assert_eq!(s.link_msgs_in - before.link_msgs_in, 1);
    // The echo came back in the 2.04, each datagram to its own device, byte for byte.
    assert_eq!(s.capillary_msgs_out, 10);
    assert_eq!(s.capillary_bytes_out, total);
    for (i, m) in msgs.iter().enumerate() {
        assert!(w.to_devices.contains(&(10 + i as u32, m.clone())));
    }
    assert_eq!(w.to_devices.len(), 10);
}

#[test]
fn network_post_is_delivered_once_and_answered_with_due_entries() {
    let mut w = World::authenticated(3);
    let up = device_msg(1, b"hello");
    w.device_sends(7, &up);
    w.run_for(Duration::from_millis(25));
    assert_eq!(w.net.batches_in.len(), 1);
    let h = w.gw.handle_of(&7).unwrap();

    // A device datagram still in its batching window when the network's POST /r arrives:
    // it is not due yet, so it does not ride on the answer (that would cut a wave of
    // device messages still arriving, PROTOCOL.md §1).
    let waiting = device_msg(2, b"waiting");
    w.device_sends(7, &waiting);
    // The gateway's first 2.04 is lost: the network retransmits its POST.
    w.drop.push(w.link_log.len() + 1);
    let down = device_msg(0x700, b"downlink");
    w.net.post_batch(w.now, vec![Entry::coap(h, down.clone())]);
    w.pump();
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.gw.stats().link_duplicates, 1, "answered from the cache");
    let deliveries = w
        .to_devices
        .iter()
        .filter(|(a, b)| *a == 7 && *b == down)
        .count();
    assert_eq!(deliveries, 1, "not re-delivered to the device");
    assert_eq!(w.net.answers_in.len(), 1);
    assert!(w.net.answers_in[0].entries.is_empty(), "nothing was due");
    // The waiting entry went up once the window closed, in the gateway's own POST /r.
    assert_eq!(w.net.batches_in.len(), 2);
    assert_eq!(
        w.net.batches_in[1].entries,
        vec![Entry::coap(h, waiting.clone())]
    );
    assert_eq!(w.gw.stats().link_round_trips, 3);
    assert_eq!(w.gw.stats().link_exchanges, 3);
}

/// Entries due while the gateway's own POST /r exchanges fill NSTART ride on the answer
/// to a network POST /r.
#[test]
fn due_entries_ride_on_the_answer_to_a_network_post() {
    let opts = GatewayOptions {
        link: capillary_coap::reliability::TransmissionParams {
            nstart: 1,
            ..Default::default()
        },
        ..GatewayOptions::default()
    };
    let mut w = World::with(9, gateway_config(), opts, 3600);
    w.start_auth();
    // The answer to the first POST /r is lost: it stays outstanding.
    w.drop.push(w.link_log.len() + 1);
    w.device_sends(7, &device_msg(1, b"first"));
    w.run_for(Duration::from_millis(25));
    assert_eq!(
        w.net.batches_in.len(),
        1,
        "the first POST /r is outstanding"
    );
    let second = device_msg(2, b"second");
    w.device_sends(7, &second);
    w.run_for(Duration::from_millis(25));
    assert_eq!(w.net.batches_in.len(), 1, "NSTART 1: the second waits");
    let h = w.gw.handle_of(&7).unwrap();
    w.net.post_batch(w.now, Vec::new());
    w.pump();
    assert_eq!(w.net.answers_in.len(), 1);
    assert_eq!(w.net.answers_in[0].entries, vec![Entry::coap(h, second)]);
    // It overlapped the outstanding POST /r: one more exchange, no extra round trip.
    let s = w.gw.stats();
    assert_eq!(s.link_exchanges, 1);
    assert_eq!(s.link_round_trips, 0);
}

#[test]
fn lost_link_messages_are_retransmitted() {
    let mut w = World::authenticated(4);
    let base = w.link_log.len();
    // Lose the first POST /r and then the first 2.04 answer.
    w.drop = vec![base, base + 2];
    let m = device_msg(5, b"x");
    w.device_sends(1, &m);
    w.run_for(Duration::from_secs(20));
    let s = w.gw.stats();
    assert_eq!(s.link_retransmissions, 2);
    assert_eq!(s.link_round_trips, 1);
    assert_eq!(w.net.batches_in.len(), 1, "processed once");
    assert_eq!(w.net.duplicates, 1, "the network answered its cache");
    assert_eq!(w.to_devices, vec![(1, m)]);
    assert!(w.gw.is_authenticated());
}

#[test]
fn link_loss_reports_link_lost_and_reauthenticates() {
    let opts = GatewayOptions {
        retry_backoff_initial: Duration::from_secs(2),
        ..GatewayOptions::default()
    };
    let mut w = World::with(5, gateway_config(), opts, 3600);
    w.start_auth();
    w.link_down = true;
    w.device_sends(1, &device_msg(1, b"lost"));
    w.run_for(Duration::from_secs(100));
    assert_eq!(
        w.count_events(|e| *e == GatewayEvent::LinkLost),
        1,
        "{:?}",
        w.events
    );
    assert!(!w.gw.is_authenticated());
    assert_eq!(w.gw.stats().link_retransmissions, 4);
    assert_eq!(w.gw.stats().entries_lost, 1);
    // The network comes back (and forgot the gateway).
    w.link_down = false;
    w.net.forget_gateway();
    w.run_for(Duration::from_secs(200));
    assert!(w.gw.is_authenticated(), "re-authenticated: {:?}", w.events);
    assert_eq!(w.net.authenticated, 2, "counter survives forget_gateway");
    assert_eq!(w.count_events(|e| *e == GatewayEvent::Authenticated), 2);
    // The relay works with the new context.
    let m = device_msg(2, b"again");
    w.device_sends(1, &m);
    w.run_for(Duration::from_millis(25));
    assert!(w.to_devices.contains(&(1, m)));
}

#[test]
fn reauthenticates_before_the_session_ends_and_rekeys() {
    let mut w = World::with(6, gateway_config(), GatewayOptions::default(), 600);
    w.start_auth();
    let m1 = device_msg(1, b"before");
    w.device_sends(1, &m1);
    w.run_for(Duration::from_millis(25));
    // Re-authentication at 600 − 300 s.
    w.run_for(Duration::from_secs(310));
    assert_eq!(w.net.authenticated, 2, "{:?}", w.events);
    assert_eq!(w.count_events(|e| *e == GatewayEvent::Authenticated), 2);
    assert_eq!(w.count_events(|e| *e == GatewayEvent::LinkLost), 0);
    assert!(w.gw.is_authenticated());
    let m2 = device_msg(2, b"after");
    w.device_sends(1, &m2);
    w.run_for(Duration::from_millis(25));
    assert!(w.to_devices.contains(&(1, m2)), "new context works");
    // Keeps going across several lifetimes without expiring.
    w.run_for(Duration::from_secs(1300));
    assert!(w.gw.is_authenticated());
    assert_eq!(w.count_events(|e| *e == GatewayEvent::SessionExpired), 0);
}

#[test]
fn device_limits_are_enforced() {
    let mut cfg = gateway_config();
    cfg.max_devices = 2;
    let opts = GatewayOptions {
        max_pending_per_device: 2,
        ..GatewayOptions::default()
    };
    let mut w = World::with(7, cfg, opts, 3600);
    w.start_auth();
    w.device_sends(1, &device_msg(1, b"a"));
    w.device_sends(1, &device_msg(2, b"b"));
    w.device_sends(1, &device_msg(3, b"c")); // third pending entry of device 1
    w.device_sends(2, &device_msg(4, b"d"));
    w.device_sends(3, &device_msg(5, b"e")); // third device
    w.device_sends(4, b"\xff not coap"); // malformed
    let s = w.gw.stats();
    assert_eq!(s.device_dropped_pending_limit, 1);
    assert_eq!(s.device_dropped_max_devices, 1);
    assert_eq!(s.device_dropped_malformed, 1);
    assert_eq!(w.gw.devices(), 2);
    w.run_for(Duration::from_millis(25));
    assert_eq!(w.net.batches_in.len(), 1);
    assert_eq!(w.net.batches_in[0].entries.len(), 3);
    // Once the batch left, device 1 may send again.
    w.device_sends(1, &device_msg(6, b"f"));
    assert_eq!(w.gw.stats().device_dropped_pending_limit, 1);
}

#[test]
fn outcomes_are_reported_and_refused_devices_released_after_grace() {
    let opts = GatewayOptions {
        refused_grace: Duration::from_secs(30),
        ..GatewayOptions::default()
    };
    let mut w = World::with(8, gateway_config(), opts, 3600);
    w.start_auth();
    w.device_sends(1, &device_msg(1, b"ok"));
    w.device_sends(2, &device_msg(2, b"no"));
    let h1 = w.gw.handle_of(&1).unwrap();
    let h2 = w.gw.handle_of(&2).unwrap();
    w.net.extra = vec![
        Entry {
            handle: h1,
            kind: EntryKind::Outcome {
                result: OutcomeResult::Authenticated,
                session_lifetime: Some(3600),
            },
        },
        Entry::refusal(h2),
    ];
    w.run_for(Duration::from_millis(25));
    assert!(w.events.contains(&GatewayEvent::DeviceOutcome {
        addr: 1,
        authenticated: true
    }));
    assert!(w.events.contains(&GatewayEvent::DeviceOutcome {
        addr: 2,
        authenticated: false
    }));
    assert_eq!(w.gw.handle_of(&2), Some(h2), "kept during the grace period");
    w.run_for(Duration::from_secs(31));
    assert_eq!(w.gw.handle_of(&2), None);
    assert_eq!(w.gw.handle_of(&1), Some(h1));
    assert_eq!(w.gw.devices(), 1);
}

#[test]
fn idle_devices_are_reported_gone_and_unknown_handles_answered_gone() {
    let opts = GatewayOptions {
        device_idle_timeout: Duration::from_secs(10),
        ..GatewayOptions::default()
    };
    let mut w = World::with(9, gateway_config(), opts, 3600);
    w.start_auth();
    w.device_sends(1, &device_msg(1, b"hi"));
    let h = w.gw.handle_of(&1).unwrap();
    w.run_for(Duration::from_secs(11));
    assert!(w.events.contains(&GatewayEvent::DeviceGone { addr: 1 }));
    assert_eq!(w.gw.handle_of(&1), None);
    assert_eq!(w.net.batches_in.len(), 2);
    assert_eq!(w.net.batches_in[1].entries, vec![Entry::gone(h)]);
    // The network talks to a handle the gateway does not hold: it learns `gone`.
    w.net
        .post_batch(w.now, vec![Entry::coap(999, device_msg(9, b"?"))]);
    w.pump();
    assert_eq!(w.gw.stats().unknown_handle_entries, 1);
    assert_eq!(
        w.net.answers_in.last().unwrap().entries,
        vec![Entry::gone(999)]
    );
    assert!(w.to_devices.iter().all(|(_, b)| *b != device_msg(9, b"?")));
}

#[test]
fn datagrams_before_authentication_wait_for_the_link() {
    let mut w = World::new(10);
    let m = device_msg(1, b"early");
    w.device_sends(1, &m);
    w.run_for(Duration::from_millis(50));
    assert!(w.net.batches_in.is_empty());
    w.start_auth();
    w.run_for(Duration::from_millis(1));
    assert_eq!(w.net.batches_in.len(), 1);
    assert!(w.to_devices.contains(&(1, m)));
}

#[test]
fn unprotected_relay_requests_are_refused() {
    let mut w = World::authenticated(11);
    let mut m = capillary_coap::Message::new(
        capillary_coap::MessageType::Con,
        capillary_coap::Code::POST,
        77,
        vec![1],
    );
    m.set_uri_path("r");
    m.payload = capillary_relay::Batch::new(vec![Entry::coap(0, device_msg(1, b"x"))])
        .encode()
        .unwrap();
    w.gw.handle_network_datagram(w.now, &m.encode().unwrap());
    let Some(Transmit::ToNetwork(b)) = w.gw.poll_transmit() else {
        panic!("no answer")
    };
    let resp = capillary_coap::Message::parse(&b).unwrap();
    assert_eq!(resp.code, capillary_coap::Code::UNAUTHORIZED);
    assert!(w.to_devices.is_empty());
}

#[test]
fn invalid_configuration_fails_closed() {
    let mut cfg = gateway_config();
    cfg.rid_i = vec![0; 8];
    assert!(cfg.validate().is_err());
    let mut gw: Gateway<u32> = Gateway::new(cfg, 1);
    let now = std::time::Instant::now();
    gw.start(now);
    assert!(matches!(
        gw.poll_event(),
        Some(GatewayEvent::AuthFailed(AuthFailure::InvalidConfig(_)))
    ));
    gw.handle_device_datagram(now, 1, &device_msg(1, b"x"));
    assert!(gw.poll_transmit().is_none());
    assert!(gw.poll_timeout().is_none());
}

fn transcript(seed: u64) -> (Vec<(bool, Vec<u8>)>, GatewayStats) {
    let mut w = World::authenticated(seed);
    for i in 0..5u32 {
        w.device_sends(i, &device_msg(i as u16, b"d"));
    }
    w.run_for(Duration::from_secs(1));
    (w.link_log.clone(), w.gw.stats())
}

#[test]
fn deterministic_with_a_seed() {
    let a = transcript(42);
    let b = transcript(42);
    assert_eq!(a, b);
    let c = transcript(43);
    assert_ne!(a.0, c.0);
}

#[test]
fn separate_responses_are_accepted_and_acknowledged() {
    let mut w = World::authenticated(13);
    w.net.separate = true;
    let m = device_msg(1, b"sep");
    w.device_sends(1, &m);
    w.run_for(Duration::from_millis(25));
    assert_eq!(w.to_devices, vec![(1, m)]);
    assert_eq!(w.net.empty_acks, 1, "the CON separate response was ACKed");
    let s = w.gw.stats();
    assert_eq!(s.link_round_trips, 1);
    assert_eq!(s.link_retransmissions, 0);
    assert!(w.gw.is_authenticated());
}

fn old_context_post(w: &mut World, mid: u16, entries: Vec<Entry>) -> Vec<u8> {
    let mut req = capillary_coap::Message::new(
        capillary_coap::MessageType::Con,
        capillary_coap::Code::POST,
        mid,
        vec![9, mid as u8],
    );
    req.set_uri_path("r");
    req.payload = capillary_relay::Batch::new(entries).encode().unwrap();
    let (outer, _) = w.net.ctx.as_mut().unwrap().protect_request(&req).unwrap();
    outer.encode().unwrap()
}

#[test]
fn old_context_is_kept_until_the_new_one_verified_a_link_message() {
    let mut w = World::with(12, gateway_config(), GatewayOptions::default(), 600);
    w.start_auth();
    w.device_sends(1, &device_msg(1, b"x"));
    w.run_for(Duration::from_millis(25));
    let h = w.gw.handle_of(&1).unwrap();
    let d1 = device_msg(0x301, b"old ctx 1");
    let d2 = device_msg(0x302, b"old ctx 2");
    let old1 = old_context_post(&mut w, 0x3001, vec![Entry::coap(h, d1.clone())]);
    let old2 = old_context_post(&mut w, 0x3002, vec![Entry::coap(h, d2.clone())]);
    w.run_for(Duration::from_secs(310));
    assert_eq!(w.net.authenticated, 2, "re-authenticated");
    // The new context has verified only the EAP-Success: the old one still works.
    w.gw.handle_network_datagram(w.now, &old1);
    w.pump();
    assert!(w.to_devices.contains(&(1, d1)));
    // A round trip under the new context, then the old one is gone.
    w.device_sends(1, &device_msg(3, b"y"));
    w.run_for(Duration::from_millis(25));
    let dropped = w.gw.stats().link_dropped;
    w.gw.handle_network_datagram(w.now, &old2);
    w.pump();
    assert!(!w.to_devices.contains(&(1, d2)));
    assert_eq!(w.gw.stats().link_dropped, dropped + 1);
}

#[test]
fn own_authentication_survives_losses() {
    let mut w = World::new(14);
    // Link log: 0 trigger (lost), 1 trigger again, 2 Identity request (lost), 3 its
    // retransmission, 4 2.01, 5 AKA'-Challenge, 6 2.01, 7 protected EAP-Success,
    // 8 protected 2.04 (lost), 9 EAP-Success retransmitted, 10 cached 2.04.
    w.drop = vec![0, 2, 8];
    w.gw.start(w.now);
    w.run_for(Duration::from_secs(60));
    assert!(w.gw.is_authenticated(), "{:?}", w.events);
    assert_eq!(w.net.authenticated, 1);
    assert_eq!(
        w.gw.stats().link_duplicates,
        1,
        "the retransmitted EAP-Success was answered from the cache"
    );
    let m = device_msg(1, b"after losses");
    w.device_sends(1, &m);
    w.run_for(Duration::from_millis(25));
    assert!(w.to_devices.contains(&(1, m)));
}

#[test]
fn unreachable_network_is_retried_with_growing_back_off() {
    let mut w = World::new(15);
    w.link_down = true;
    w.gw.start(w.now);
    w.run_for(Duration::from_secs(1200));
    let failures = w.count_events(|e| matches!(e, GatewayEvent::AuthFailed(_)));
    // Each attempt: 4 triggers 10 s apart, then back-off 1, 2, 4, ... 60 s (+ jitter).
    assert!((5..=20).contains(&failures), "{failures} attempts");
    assert!(!w.gw.is_authenticated());
    w.link_down = false;
    w.run_for(Duration::from_secs(200));
    assert!(w.gw.is_authenticated());
}

#[test]
fn an_attach_storm_costs_the_same_round_trips_for_any_number_of_devices() {
    for n in [1u32, 50, 300] {
        let mut cfg = gateway_config();
        cfg.max_devices = 1024;
        let mut w = World::with(16, cfg, GatewayOptions::default(), 3600);
        w.start_auth();
        for d in 0..n {
            w.device_sends(d, &device_msg(d as u16, b"trigger"));
        }
        w.run_for(Duration::from_millis(25));
        let s = w.gw.stats();
        assert_eq!(s.link_round_trips, 1, "n = {n}");
        assert_eq!(s.batches_sent, 1, "n = {n}");
        assert_eq!(s.capillary_msgs_out, u64::from(n));
        assert_eq!(w.net.batches_in[0].entries.len(), n as usize);
    }
}

/// What an on-path attacker who sees the gateway's `POST /r` (Message ID, token) can
/// forge: an unprotected OSCORE error response to it (RFC 8613 §8.2).
fn forged_error(post: &[u8], code: capillary_coap::Code) -> Vec<u8> {
    let req = capillary_coap::Message::parse(post).unwrap();
    let mut r = capillary_coap::Message::response_to(&req, code, 0x1234);
    r.add_option(capillary_coap::msg::option_number::MAX_AGE, Vec::new());
    r.payload = b"Decryption failed".to_vec();
    r.encode().unwrap()
}

/// Sends one device datagram as a batch whose first transmission is lost on the way to
/// the network; returns the protected `POST /r` as sent.
fn batch_lost_on_the_way(w: &mut World, device: u32, m: &[u8]) -> Vec<u8> {
    let base = w.link_log.len();
    let retransmissions = w.gw.stats().link_retransmissions;
    w.drop.push(base);
    w.device_sends(device, m);
    w.run_for(Duration::from_millis(25));
    let (to_net, post) = w.link_log[base].clone();
    assert!(to_net);
    assert_eq!(
        w.gw.stats().link_retransmissions,
        retransmissions,
        "not retransmitted yet"
    );
    post
}

#[test]
fn a_forged_unprotected_4_00_does_not_cancel_the_batch() {
    for code in [
        capillary_coap::Code::BAD_REQUEST,
        capillary_coap::Code::BAD_OPTION,
    ] {
        let mut w = World::authenticated(18);
        let m = device_msg(1, b"keep me");
        let post = batch_lost_on_the_way(&mut w, 1, &m);
        w.gw.handle_network_datagram(w.now, &forged_error(&post, code));
        w.pump();
        let s = w.gw.stats();
        assert_eq!(s.link_unprotected_errors, 1);
        assert_eq!(s.batches_refused, 0, "{code:?}");
        assert_eq!(s.entries_lost, 0, "{code:?}");
        // Retransmitted (the same protected bytes, new to the network) and answered.
        w.run_for(Duration::from_secs(5));
        let s = w.gw.stats();
        assert_eq!(s.link_retransmissions, 1);
        assert_eq!(w.net.batches_in.len(), 1);
        assert_eq!(w.to_devices, vec![(1, m)], "{code:?}");
        assert_eq!(s.link_round_trips, 1);
        assert_eq!(w.count_events(|e| *e == GatewayEvent::LinkLost), 0);
        assert_eq!(w.net.authenticated, 1, "no re-authentication");
        assert!(w.gw.is_authenticated());
    }
}

#[test]
fn a_forged_unprotected_4_00_before_the_real_answer_is_harmless() {
    // The network processed the batch; its 2.04 is lost and the attacker's 4.00 arrives:
    // the retransmission is answered from the network's cache.
    let mut w = World::authenticated(19);
    let base = w.link_log.len();
    w.drop = vec![base + 1];
    let m = device_msg(1, b"processed once");
    w.device_sends(1, &m);
    w.run_for(Duration::from_millis(25));
    assert_eq!(w.net.batches_in.len(), 1);
    let post = w.link_log[base].1.clone();
    w.gw.handle_network_datagram(
        w.now,
        &forged_error(&post, capillary_coap::Code::BAD_REQUEST),
    );
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.net.batches_in.len(), 1, "processed once");
    assert_eq!(w.net.duplicates, 1);
    assert_eq!(w.to_devices, vec![(1, m)]);
    assert_eq!(w.gw.stats().entries_lost, 0);
}

#[test]
fn a_single_forged_unprotected_4_01_does_not_force_reauthentication() {
    let mut w = World::authenticated(20);
    let m = device_msg(1, b"still mine");
    let post = batch_lost_on_the_way(&mut w, 1, &m);
    w.gw.handle_network_datagram(
        w.now,
        &forged_error(&post, capillary_coap::Code::UNAUTHORIZED),
    );
    w.pump();
    assert_eq!(w.count_events(|e| *e == GatewayEvent::LinkLost), 0);
    assert!(w.gw.is_authenticated());
    w.run_for(Duration::from_secs(5));
    let s = w.gw.stats();
    assert_eq!(s.entries_lost, 0);
    assert_eq!(s.batches_refused, 0);
    assert_eq!(w.to_devices, vec![(1, m)]);
    // Later batches: the authenticated 2.04 refuted the forged 4.01, so two more forged
    // ones (for two different exchanges) do not add up to a link loss either.
    for d in 2..4u32 {
        let m = device_msg(d as u16, b"later");
        let post = batch_lost_on_the_way(&mut w, d, &m);
        w.gw.handle_network_datagram(
            w.now,
            &forged_error(&post, capillary_coap::Code::UNAUTHORIZED),
        );
        w.run_for(Duration::from_secs(5));
        assert!(w.to_devices.contains(&(d, m)));
    }
    assert_eq!(w.count_events(|e| *e == GatewayEvent::LinkLost), 0);
    assert_eq!(w.count_events(|e| *e == GatewayEvent::Authenticated), 1);
    assert_eq!(w.net.authenticated, 1, "never re-authenticated");
    assert_eq!(w.gw.stats().entries_lost, 0);
}

#[test]
fn a_network_that_forgot_the_gateway_answers_4_01_and_the_gateway_reauthenticates() {
    let mut w = World::authenticated(17);
    w.net.forget_gateway();
    // Three batches (a quiet gap closes each, NSTART 4): three different exchanges
    // answered 4.01 corroborate each other.
    for d in 1..=3u32 {
        assert_eq!(w.count_events(|e| *e == GatewayEvent::LinkLost), 0, "{d}");
        w.device_sends(d, &device_msg(d as u16, b"lost"));
        w.run_for(Duration::from_millis(25));
    }
    assert_eq!(w.count_events(|e| *e == GatewayEvent::LinkLost), 1);
    assert_eq!(w.gw.stats().batches_refused, 3);
    assert_eq!(w.gw.stats().entries_lost, 3);
    w.run_for(Duration::from_secs(5));
    assert!(w.gw.is_authenticated(), "{:?}", w.events);
    let m = device_msg(9, b"again");
    w.device_sends(1, &m);
    w.run_for(Duration::from_millis(25));
    assert!(w.to_devices.contains(&(1, m)));
}

#[test]
fn one_batch_answered_4_01_by_a_network_that_forgot_the_gateway_ends_at_give_up() {
    let mut w = World::authenticated(21);
    w.net.forget_gateway();
    w.device_sends(1, &device_msg(1, b"lost"));
    w.run_for(Duration::from_millis(25));
    // Every retransmission of the one exchange is answered 4.01: not corroboration.
    w.run_for(Duration::from_secs(40));
    assert_eq!(w.count_events(|e| *e == GatewayEvent::LinkLost), 0);
    assert_eq!(w.gw.stats().link_retransmissions, 4);
    assert_eq!(w.gw.stats().link_unprotected_errors, 5);
    // The normal give-up (RFC 7252 §4.2) is.
    w.run_for(Duration::from_secs(60));
    assert_eq!(w.count_events(|e| *e == GatewayEvent::LinkLost), 1);
    assert_eq!(w.gw.stats().entries_lost, 1);
    w.run_for(Duration::from_secs(10));
    assert!(w.gw.is_authenticated(), "{:?}", w.events);
    assert_eq!(w.net.authenticated, 2);
    let m = device_msg(2, b"again");
    w.device_sends(1, &m);
    w.run_for(Duration::from_millis(25));
    assert!(w.to_devices.contains(&(1, m)));
}

/// PROTOCOL.md §4.1 (`GatewayOptions::first_batch_with_auth`): a device trigger that arrives
/// while the gateway's own run has not shown the network's offer yet is answered locally as
/// soon as it does (on), instead of being relayed as `kind 0` after the gateway's
/// authentication (off).
#[test]
fn early_trigger_is_answered_locally_with_first_batch_with_auth() {
    use capillary_coap_eap::trigger::{build_trigger, ResourcePath};
    for on in [true, false] {
        let opts = GatewayOptions {
            first_batch_with_auth: on,
            ..GatewayOptions::default()
        };
        let mut w = World::with(15, gateway_config(), opts, 3600);
        // The gateway's first trigger is lost: its run is under way without an offer.
        w.drop = vec![0];
        w.gw.start(w.now);
        w.pump();
        let trigger = build_trigger(7, vec![1, 2], &ResourcePath::parse(b"a").unwrap())
            .encode()
            .unwrap();
        w.device_sends(1, &trigger);
        assert!(
            w.to_devices.is_empty(),
            "no offer known yet: nothing to answer with"
        );
        w.run_for(Duration::from_secs(60));
        assert!(w.gw.is_authenticated());
        let relayed = w.net.batches_in.iter().any(|b| {
            b.entries
                .iter()
                .any(|e| matches!(&e.kind, EntryKind::Coap(m) if *m == trigger))
        });
        let local = w.gw.stats().local_identity_requests;
        if on {
            assert_eq!(local, 1, "answered locally once the offer was known");
            assert!(!relayed);
            assert!(w.to_devices.iter().any(|(a, _)| *a == 1));
        } else {
            assert_eq!(local, 0);
            assert!(relayed, "relayed as kind 0 after the gateway authenticated");
        }
    }
}
