//! Reliability layer (RFC 7252 §4.2, §4.5, §4.8): retransmission schedule, give-up, ACK/RST
//! cancellation, deduplication with cached responses, and a lossy-link simulation.
#![allow(clippy::unwrap_used)] // tests may unwrap (house rules)

use std::time::{Duration, Instant};

use capillary_coap::msg::{Code, Message, MessageType};
use capillary_coap::reliability::{
    Dedup, DedupResult, MessageIdAllocator, Outbox, Retransmission, TokenAllocator,
    TransmissionParams,
};
use proptest::prelude::*;

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn derived_parameters_match_rfc7252_4_8_2() {
    let p = TransmissionParams::default();
    assert_eq!(p.max_transmit_span(), S(45));
    assert_eq!(p.max_transmit_wait(), S(93));
    assert_eq!(p.max_rtt(), S(202));
    assert_eq!(p.exchange_lifetime(), S(247));
    assert_eq!(p.non_lifetime(), S(145));
    assert_eq!(p.initial_timeout(0.0), S(2));
    assert_eq!(p.initial_timeout(0.5), Duration::from_millis(2500));
    assert!(p.initial_timeout(0.999_999) < S(3));
    // Out-of-range jitter is clamped, never panics.
    assert_eq!(p.initial_timeout(-1.0), S(2));
    assert_eq!(p.initial_timeout(f64::NAN), S(2));
    assert_eq!(p.initial_timeout(7.0), S(3));
}

/// Drive the outbox at exactly its deadlines; return (time since send, event) pairs.
fn run_schedule(jitter: f64) -> Vec<(Duration, Retransmission)> {
    let t0 = Instant::now();
    let mut ob = Outbox::default();
    ob.send_con(t0, vec![0x40, 1, 0, 7], 7, jitter);
    let mut events = Vec::new();
    while let Some(deadline) = ob.poll_timeout() {
        // Nothing happens just before the deadline.
        assert!(ob
            .handle_timeout(deadline - Duration::from_millis(1))
            .is_empty());
        for e in ob.handle_timeout(deadline) {
            events.push((deadline - t0, e));
        }
    }
    events
}

#[test]
fn retransmission_schedule_doubles_then_gives_up() {
    let resend = Retransmission::Resend {
        message_id: 7,
        bytes: vec![0x40, 1, 0, 7],
    };
    let ev = run_schedule(0.0);
    let times: Vec<Duration> = ev.iter().map(|e| e.0).collect();
    // T = 2 s: retransmit at T, 3T, 7T, 15T; give up at 31T (MAX_RETRANSMIT = 4).
    assert_eq!(times, vec![S(2), S(6), S(14), S(30), S(62)]);
    assert!(ev[..4].iter().all(|e| e.1 == resend));
    assert_eq!(ev[4].1, Retransmission::GaveUp { message_id: 7 });

    let ev = run_schedule(0.5);
    let times: Vec<Duration> = ev.iter().map(|e| e.0).collect();
    let t = Duration::from_millis(2500);
    assert_eq!(times, vec![t, t * 3, t * 7, t * 15, t * 31]);

    // Upper end of the random range: give-up stays within MAX_TRANSMIT_WAIT (93 s).
    let ev = run_schedule(0.999_999);
    let last = ev.last().unwrap().0;
    assert!(last > S(92) && last <= S(93), "{last:?}");
}

#[test]
fn ack_or_rst_cancels_retransmission() {
    let t0 = Instant::now();
    let mut ob = Outbox::default();
    ob.send_con(t0, vec![1], 1, 0.0);
    ob.send_con(t0, vec![2], 2, 0.0);
    assert_eq!(ob.len(), 2);
    assert!(!ob.can_send(), "NSTART = 1");
    let ev = ob.handle_timeout(t0 + S(2));
    assert_eq!(ev.len(), 2);
    assert_eq!(ob.retransmit_count(1), Some(1));
    assert!(ob.handle_incoming_ack_or_rst(1));
    assert!(!ob.handle_incoming_ack_or_rst(1), "second ACK is unmatched");
    assert!(!ob.handle_incoming_ack_or_rst(99));
    assert!(!ob.is_outstanding(1) && ob.is_outstanding(2));
    let ev = ob.handle_timeout(t0 + S(6));
    assert_eq!(
        ev,
        vec![Retransmission::Resend {
            message_id: 2,
            bytes: vec![2]
        }]
    );
    assert!(ob.cancel(2));
    assert!(ob.is_empty() && ob.can_send());
    assert_eq!(ob.poll_timeout(), None);
    assert!(ob.handle_timeout(t0 + S(1000)).is_empty());
}

#[test]
fn late_driver_retransmits_once_per_call() {
    let t0 = Instant::now();
    let mut ob = Outbox::default();
    ob.send_con(t0, vec![1], 1, 0.0);
    // Called very late: one resend, and the next deadline counts from now.
    let ev = ob.handle_timeout(t0 + S(50));
    assert_eq!(ev.len(), 1);
    assert_eq!(ob.poll_timeout(), Some(t0 + S(54)));
}

#[test]
fn resend_with_same_message_id_replaces() {
    let t0 = Instant::now();
    let mut ob = Outbox::default();
    ob.send_con(t0, vec![1], 5, 0.0);
    ob.send_con(t0 + S(1), vec![2], 5, 0.0);
    assert_eq!(ob.len(), 1);
    assert_eq!(ob.poll_timeout(), Some(t0 + S(3)));
}

#[test]
fn custom_params() {
    let p = TransmissionParams {
        ack_timeout: Duration::from_millis(500),
        max_retransmit: 1,
        ..TransmissionParams::default()
    };
    let t0 = Instant::now();
    let mut ob = Outbox::new(p);
    ob.send_con(t0, vec![1], 1, 0.0);
    assert_eq!(ob.handle_timeout(t0 + Duration::from_millis(500)).len(), 1);
    assert_eq!(
        ob.handle_timeout(t0 + Duration::from_millis(1500)),
        vec![Retransmission::GaveUp { message_id: 1 }]
    );
}

#[test]
fn dedup_returns_cached_response_within_lifetime() {
    let t0 = Instant::now();
    let mut d: Dedup<&str> = Dedup::default();
    assert_eq!(d.check(t0, &"a", 10), DedupResult::New);
    assert_eq!(d.check(t0 + S(1), &"a", 10), DedupResult::Duplicate(None));
    assert!(d.record_response(&"a", 10, vec![0x60, 0x45, 0, 10]));
    assert!(!d.record_response(&"a", 11, vec![]));
    assert_eq!(
        d.check(t0 + S(246), &"a", 10),
        DedupResult::Duplicate(Some(vec![0x60, 0x45, 0, 10]))
    );
    // Other peer, same Message ID: independent.
    assert_eq!(d.check(t0 + S(2), &"b", 10), DedupResult::New);
    assert_eq!(d.len(), 2);
    assert_eq!(d.poll_timeout(), Some(t0 + S(247)));
    // EXCHANGE_LIFETIME (247 s) later the ID is fresh again.
    assert_eq!(d.check(t0 + S(247), &"a", 10), DedupResult::New);
    d.expire(t0 + S(1000));
    assert!(d.is_empty());
}

#[test]
fn dedup_non_uses_non_lifetime_and_ignores_ack() {
    let t0 = Instant::now();
    let mut d: Dedup<u8> = Dedup::default();
    assert_eq!(d.check_typed(t0, &1, 5, MessageType::Non), DedupResult::New);
    assert_eq!(
        d.check_typed(t0 + S(144), &1, 5, MessageType::Non),
        DedupResult::Duplicate(None)
    );
    d.expire(t0 + S(145));
    assert!(d.is_empty());
    assert_eq!(d.check_typed(t0, &1, 6, MessageType::Ack), DedupResult::New);
    assert_eq!(d.check_typed(t0, &1, 6, MessageType::Ack), DedupResult::New);
    assert!(d.is_empty());
}

#[test]
fn dedup_capacity_evicts_oldest() {
    let t0 = Instant::now();
    let mut d: Dedup<u8> = Dedup::with_capacity(&TransmissionParams::default(), 3);
    for (i, mid) in [1u16, 2, 3, 4].into_iter().enumerate() {
        assert_eq!(d.check(t0 + S(i as u64), &0, mid), DedupResult::New);
    }
    assert_eq!(d.len(), 3);
    assert_eq!(d.check(t0 + S(5), &0, 1), DedupResult::New, "1 was evicted");
    assert_eq!(d.check(t0 + S(5), &0, 4), DedupResult::Duplicate(None));
}

#[test]
fn id_and_token_allocators() {
    let mut a = MessageIdAllocator::new(0xfffe);
    assert_eq!([a.next_id(), a.next_id(), a.next_id()], [0xfffe, 0xffff, 0]);
    let mut t = TokenAllocator::new(8, 42);
    let toks: std::collections::HashSet<Vec<u8>> = (0..10_000).map(|_| t.next_token()).collect();
    assert_eq!(toks.len(), 10_000);
    assert!(toks.iter().all(|x| x.len() == 8));
    assert_eq!(TokenAllocator::new(20, 1).next_token().len(), 8);
    assert_eq!(TokenAllocator::new(0, 1).token_len(), 1);
    assert_ne!(
        TokenAllocator::new(4, 1).next_token(),
        TokenAllocator::new(4, 2).next_token()
    );
}

proptest! {
    /// Lossy link: a client sends one CON request through an Outbox, the server deduplicates
    /// with Dedup and answers with a piggybacked ACK. Whatever the loss pattern, the server
    /// processes the request at most once, and the client either receives the ACK or gives up
    /// only after all MAX_RETRANSMIT + 1 transmissions (or their ACKs) were lost.
    #[test]
    fn lossy_link_exactly_once(
        drop_req in prop::collection::vec(any::<bool>(), 5),
        drop_ack in prop::collection::vec(any::<bool>(), 5),
        jitter in 0.0f64..1.0,
    ) {
        let t0 = Instant::now();
        let mut ob = Outbox::default();
        let mut dedup: Dedup<u8> = Dedup::default();
        let mut req = Message::new(MessageType::Con, Code::POST, 0x77, vec![1, 2]);
        req.set_uri_path(".well-known/coap-eap");
        let bytes = req.encode().unwrap();
        ob.send_con(t0, bytes.clone(), 0x77, jitter);

        let mut processed = 0;
        let mut acked = false;
        let mut gave_up = false;
        let mut attempt = 0usize;
        let mut now = t0;
        let mut pending = Some(bytes);
        loop {
            if let Some(b) = pending.take() {
                let i = attempt;
                attempt += 1;
                if !drop_req[i] {
                    let m = Message::parse(&b).unwrap();
                    let ack = match dedup.check(now, &0, m.message_id) {
                        DedupResult::New => {
                            processed += 1;
                            let r = Message::response_to(&m, Code::CHANGED, 0).encode().unwrap();
                            dedup.record_response(&0, m.message_id, r.clone());
                            Some(r)
                        }
                        DedupResult::Duplicate(cached) => cached,
                    };
                    if let Some(r) = ack {
                        if !drop_ack[i] {
                            let a = Message::parse(&r).unwrap();
                            prop_assert_eq!(a.ty, MessageType::Ack);
                            prop_assert!(ob.handle_incoming_ack_or_rst(a.message_id));
                            acked = true;
                        }
                    }
                }
            }
            let Some(deadline) = ob.poll_timeout() else { break };
            now = deadline;
            for ev in ob.handle_timeout(now) {
                match ev {
                    Retransmission::Resend { bytes, .. } => pending = Some(bytes),
                    Retransmission::GaveUp { .. } => gave_up = true,
                }
            }
        }
        prop_assert!(processed <= 1);
        prop_assert!(acked != gave_up);
        let delivered_round_trip = (0..5).any(|i| !drop_req[i] && !drop_ack[i]);
        prop_assert_eq!(acked, delivered_round_trip);
        prop_assert_eq!(processed == 1, drop_req.iter().any(|d| !d));
        prop_assert!(now - t0 <= TransmissionParams::default().max_transmit_wait());
    }

    #[test]
    fn outbox_and_dedup_never_panic(
        ops in prop::collection::vec((0u8..5, any::<u16>(), 0u64..400, any::<f64>()), 0..64),
    ) {
        let t0 = Instant::now();
        let mut ob = Outbox::default();
        let mut d: Dedup<u16> = Dedup::with_capacity(&TransmissionParams::default(), 8);
        let mut now = t0;
        for (op, mid, dt, j) in ops {
            now += Duration::from_secs(dt);
            match op {
                0 => ob.send_con(now, vec![0], mid, j),
                1 => { let _ = ob.handle_incoming_ack_or_rst(mid); }
                2 => { let _ = ob.handle_timeout(now); }
                3 => { let _ = d.check_typed(now, &(mid % 4), mid % 16, MessageType::Non); }
                _ => { let _ = d.record_response(&(mid % 4), mid % 16, vec![1]); d.expire(now); }
            }
            prop_assert!(d.len() <= 8);
        }
    }
}
