//! The network link endpoint against in-test gateway and device stand-ins
//! (docs/PROTOCOL.md §3, §4, §6, §7).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod link_support;

use std::time::Duration;

use capillary_network::link::{DropCause, FailureCause, LinkEvent};
use capillary_relay::OutcomeResult;
use capillary_secrets::Imsi;
use capillary_store::{AuditEvent, SubscriberKind};
use link_support::{imsi, World, GW_IMSI};

fn authenticated_world(n: u32, seed: u64) -> World {
    let mut w = World::new(seed);
    w.authenticate_gateway();
    for i in 1..=n {
        w.add_sub(&imsi(i), SubscriberKind::Device, true);
        w.add_device(&imsi(i), i);
    }
    w
}

#[test]
fn gateway_authenticates_directly() {
    let mut w = World::new(1);
    w.authenticate_gateway();
    let gw = Imsi::new(GW_IMSI).unwrap();
    assert!(w.log.iter().any(|e| matches!(e,
        LinkEvent::Authenticated { imsi, kind: SubscriberKind::Gateway, via: None } if *imsi == gw)));
    // One store round trip: the gateway's vector, asked for with kind Gateway.
    assert_eq!(w.need_vectors, 1);
    assert_eq!(w.authorize, 0);
    assert_eq!(w.net.stats().authenticated, 1);
    // Gateway keys are not device keys.
    assert!(w.net.dangerous_export_secrets().is_empty());
}

#[test]
fn ten_devices_attach_in_batches() {
    let mut w = authenticated_world(10, 2);
    let before = w.need_vectors;
    let batches_before = w.gw.sent_batches.len();
    w.start_devices();
    w.run_until(Duration::from_secs(120), |w| {
        w.devices.iter().all(|(_, d)| d.authenticated)
            && w.gw.outcomes.len() >= 10
            && !w.gw.outstanding()
    });
    for (h, d) in &w.devices {
        assert!(d.authenticated, "device {h} authenticated");
        assert!(d.failed.is_none());
    }
    let s = w.net.stats();
    // All ten identities travel in one batch: ONE NeedVectors, ONE Authorize.
    assert_eq!(
        w.need_vectors - before,
        1,
        "NeedVectors per batch, not per device"
    );
    // §6: one Authorize per batch carrying known identities — the identities (with the
    // vector request), the challenge responses, the key confirmations — whatever N.
    assert_eq!(w.authorize, 3);
    // The gateway's prefetch (PROTOCOL.md §6.2) ran before these devices were bound to it,
    // so it found none: the identities need their own NeedVectors.
    assert_eq!(w.prefetches, 1);
    assert_eq!(
        s.store_round_trips, 6,
        "gateway vector + prefetch + one NeedVectors + one Authorize per batch"
    );
    // §7: triggers, identities, challenge responses, key confirmations: 4 batches.
    let batches = w.gw.sent_batches.len() - batches_before;
    assert_eq!(batches, 4, "gateway-link batches for 10 devices");
    assert_eq!(s.authenticated, 11);
    let outcomes: Vec<_> =
        w.gw.outcomes
            .iter()
            .filter(|(_, r)| *r == OutcomeResult::Authenticated)
            .collect();
    assert_eq!(outcomes.len(), 10);
    let auths = w
        .log
        .iter()
        .filter(|e| {
            matches!(e, LinkEvent::Authenticated { kind: SubscriberKind::Device, via: Some(g), .. }
                if g.as_str() == GW_IMSI)
        })
        .count();
    assert_eq!(auths, 10);
    for i in 1..=10 {
        assert!(w.net.is_device_authenticated(&Imsi::new(&imsi(i)).unwrap()));
    }
    // 7 secrets per device (MSK, EMSK, master secret, salt, 2 keys, common IV).
    assert_eq!(w.net.dangerous_export_secrets().len(), 70);
}

#[test]
fn store_round_trips_hold_the_response() {
    let mut w = authenticated_world(3, 3);
    w.store_online = false;
    w.start_devices();
    w.settle();
    // The identity batch is waiting for the store: nothing has been answered yet.
    assert!(
        w.gw.outstanding(),
        "POST /r response held until the store answers"
    );
    w.store_online = true;
    w.release_store();
    w.run_until(Duration::from_secs(60), |w| {
        w.devices.iter().all(|(_, d)| d.authenticated)
    });
    assert!(w.devices.iter().all(|(_, d)| d.authenticated));
}

#[test]
fn slow_store_answers_follow_in_a_network_initiated_batch() {
    let mut w = authenticated_world(3, 13);
    w.store_online = false;
    w.start_devices();
    w.settle();
    assert!(w.gw.outstanding());
    // The hold time passes: the 2.04 leaves with what is ready.
    w.now += Duration::from_secs(2);
    let now = w.now;
    w.net.handle_timeout(now);
    w.settle();
    assert!(!w.gw.outstanding(), "response sent after the hold time");
    let before = w.gw.network_batches;
    w.store_online = true;
    w.release_store();
    w.run_until(Duration::from_secs(60), |w| {
        w.devices.iter().all(|(_, d)| d.authenticated)
    });
    assert!(w.devices.iter().all(|(_, d)| d.authenticated));
    assert!(w.gw.network_batches > before);
}

#[test]
fn uplink_and_downlink_round_trip() {
    let mut w = authenticated_world(2, 4);
    w.start_devices();
    w.run_until(Duration::from_secs(60), |w| {
        w.devices.iter().all(|(_, d)| d.authenticated)
    });
    let authorize_before = w.authorize;
    w.device(1).send_uplink(b"temperature=21");
    w.device(2).send_uplink(b"humidity=40");
    w.run_until(Duration::from_secs(10), |w| {
        w.devices.iter().all(|(_, d)| !d.uplink_acks.is_empty())
    });
    let ups: Vec<_> = w
        .log
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Uplink { device, payload } => Some((device.clone(), payload.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(ups.len(), 2);
    assert!(ups.contains(&(Imsi::new(&imsi(1)).unwrap(), b"temperature=21".to_vec())));
    assert_eq!(w.device(1).uplink_acks[0].1, capillary_coap::Code::CHANGED);
    // §6: both uplinks of the batch were authorized with one Authorize.
    assert_eq!(w.authorize - authorize_before, 1);

    let dev = Imsi::new(&imsi(2)).unwrap();
    w.net
        .queue_downlink(w.now, &dev, b"set-interval 60")
        .unwrap();
    w.run_until(Duration::from_secs(10), |w| {
        w.log
            .iter()
            .any(|e| matches!(e, LinkEvent::DownlinkDelivered { .. }))
    });
    assert_eq!(w.device(2).downlinks, vec![b"set-interval 60".to_vec()]);
    assert!(w
        .log
        .iter()
        .any(|e| matches!(e, LinkEvent::DownlinkDelivered { device } if *device == dev)));
    // Downlink to an unknown device is refused.
    let unknown = Imsi::new(&imsi(77)).unwrap();
    assert!(w.net.queue_downlink(w.now, &unknown, b"x").is_err());
}

#[test]
fn unbound_device_refused_with_audit() {
    let mut w = World::new(5);
    w.authenticate_gateway();
    w.add_sub(&imsi(1), SubscriberKind::Device, true);
    w.add_sub(&imsi(2), SubscriberKind::Device, false); // not bound to the gateway
    w.add_device(&imsi(1), 1);
    w.add_device(&imsi(2), 2);
    w.start_devices();
    w.run_until(Duration::from_secs(120), |w| {
        w.devices[0].1.authenticated && w.devices[1].1.failed.is_some() && w.gw.outcomes.len() >= 2
    });
    assert!(w.device(1).authenticated);
    assert!(!w.device(2).authenticated);
    assert!(
        w.device(2).failed.is_some(),
        "EAP failure reached the device"
    );
    let bad = Imsi::new(&imsi(2)).unwrap();
    assert!(w.log.iter().any(|e| matches!(e,
        LinkEvent::Audit(a) if a.event == AuditEvent::NotBoundToGateway && a.subject == bad
            && a.gateway.as_ref().map(Imsi::as_str) == Some(GW_IMSI))));
    assert!(w.log.iter().any(|e| matches!(e,
        LinkEvent::Failed { imsi: Some(i), reason: FailureCause::Refused(_), .. } if *i == bad)));
    assert!(w.gw.outcomes.contains(&(2, OutcomeResult::REFUSED)));
    assert!(w.gw.outcomes.contains(&(1, OutcomeResult::Authenticated)));
    assert!(!w.net.is_device_authenticated(&bad));
}

#[test]
fn device_credentials_cannot_authenticate_as_gateway() {
    // A device subscriber runs CoAP-EAP directly, as if it were a gateway.
    let mut w = World::new(6);
    let dev = imsi(3);
    w.add_sub(&dev, SubscriberKind::Device, true);
    w.gw.peer = link_support::Peer::new(&dev, vec![0x47], 99);
    w.gw.peer.start(w.now);
    w.run_until(Duration::from_secs(120), |w| w.gw.peer.failed.is_some());
    assert!(!w.gw.peer.authenticated);
    assert!(!w.net.is_gateway_authenticated(w.gw_addr));
    assert!(w.log.iter().any(|e| matches!(
        e,
        LinkEvent::Failed {
            kind: SubscriberKind::Gateway,
            reason: FailureCause::NoVector,
            ..
        }
    )));
}

#[test]
fn gateway_credentials_cannot_attach_as_device() {
    let mut w = World::new(7);
    w.authenticate_gateway();
    // A relayed run with the gateway's own identity.
    w.add_device(GW_IMSI, 5);
    w.start_devices();
    w.run_until(Duration::from_secs(120), |w| {
        w.devices[0].1.failed.is_some() && !w.gw.outcomes.is_empty()
    });
    assert!(!w.devices[0].1.authenticated);
    assert!(w.log.iter().any(|e| matches!(e,
        LinkEvent::Audit(a) if a.event == AuditEvent::UnknownDevice)));
    assert!(w.gw.outcomes.contains(&(5, OutcomeResult::REFUSED)));
}

#[test]
fn replayed_batch_is_not_processed_again() {
    let mut w = authenticated_world(2, 8);
    w.start_devices();
    w.run_until(Duration::from_secs(60), |w| {
        w.devices.iter().all(|(_, d)| d.authenticated)
    });
    w.device(1).send_uplink(b"once");
    w.run_until(Duration::from_secs(10), |w| {
        !w.devices[0].1.uplink_acks.is_empty()
    });
    let uplinks = |w: &World| {
        w.log
            .iter()
            .filter(|e| matches!(e, LinkEvent::Uplink { .. }))
            .count()
    };
    assert_eq!(uplinks(&w), 1);
    let last = w.gw.sent_batches.last().unwrap().clone();
    let s0 = w.net.stats();
    // Within the exchange lifetime: a duplicate, answered from the cache.
    w.net.handle_datagram(w.now, w.gw_addr, &last);
    let cached = w.net.poll_transmit();
    assert!(
        cached.is_some(),
        "duplicate answered with the cached response"
    );
    assert!(
        w.net.poll_event().is_none(),
        "a replayed batch produced an event"
    );
    let s1 = w.net.stats();
    assert_eq!(s1.batches_in, s0.batches_in);
    assert_eq!(s1.duplicates, s0.duplicates + 1);
    // Long after: OSCORE replay protection drops it.
    w.now += Duration::from_secs(600);
    w.net.handle_timeout(w.now);
    while w.net.poll_transmit().is_some() {}
    w.net.handle_datagram(w.now, w.gw_addr, &last);
    assert!(w.net.poll_event().is_none());
    let s2 = w.net.stats();
    assert_eq!(s2.batches_in, s0.batches_in);
    assert_eq!(s2.dropped.get(&DropCause::Replay), Some(&1));
    assert_eq!(uplinks(&w), 1);
}

#[test]
fn tampered_batch_dropped_and_counted() {
    let mut w = authenticated_world(1, 9);
    w.start_devices();
    w.run_until(Duration::from_secs(60), |w| w.devices[0].1.authenticated);
    let mut last = w.gw.sent_batches.last().unwrap().clone();
    let n = last.len();
    last[n - 3] ^= 0x40;
    // Fresh Message ID so deduplication does not catch it first.
    last[3] ^= 0x55;
    let s0 = w.net.stats();
    w.net.handle_datagram(w.now, w.gw_addr, &last);
    assert!(w.net.poll_event().is_none());
    let s1 = w.net.stats();
    assert_eq!(s1.batches_in, s0.batches_in);
    assert_eq!(
        s1.dropped
            .get(&DropCause::OscoreInvalid)
            .copied()
            .unwrap_or(0),
        s0.dropped
            .get(&DropCause::OscoreInvalid)
            .copied()
            .unwrap_or(0)
            + 1
    );
}

#[test]
fn device_retransmissions_travel_in_network_initiated_batches() {
    let mut w = authenticated_world(1, 10);
    // The EAP-Request/Identity relayed in the first 2.04 is lost on the capillary link.
    w.drop_device_deliveries = 1;
    w.start_devices();
    w.settle();
    assert!(!w.devices[0].1.authenticated);
    let before = w.gw.network_batches;
    w.run_until(Duration::from_secs(120), |w| w.devices[0].1.authenticated);
    assert!(w.devices[0].1.authenticated);
    // The authenticator's retransmission went out in a network-initiated POST /r.
    assert!(w.gw.network_batches > before, "network-initiated batch");
    assert!(w.net.stats().round_trips > 0);
}

#[test]
fn device_layer_replay_and_tamper_dropped() {
    let mut w = authenticated_world(1, 11);
    w.start_devices();
    w.run_until(Duration::from_secs(60), |w| w.devices[0].1.authenticated);
    let up = w.device(1).send_uplink(b"reading");
    w.run_until(Duration::from_secs(10), |w| {
        !w.devices[0].1.uplink_acks.is_empty()
    });
    let count_uplinks = |w: &World| {
        w.log
            .iter()
            .filter(|e| matches!(e, LinkEvent::Uplink { .. }))
            .count()
    };
    assert_eq!(count_uplinks(&w), 1);
    // The same protected uplink again, in a fresh (valid) batch: answered from the cache.
    let d0 = w.net.stats().duplicates;
    w.gw.queue.push(capillary_relay::Entry::coap(1, up.clone()));
    w.settle();
    assert_eq!(count_uplinks(&w), 1, "not delivered twice");
    assert_eq!(w.net.stats().duplicates, d0 + 1);
    // After the deduplication lifetime: the OSCORE replay window drops it.
    w.now += Duration::from_secs(600);
    w.net.handle_timeout(w.now);
    w.settle();
    w.gw.queue.push(capillary_relay::Entry::coap(1, up.clone()));
    w.settle();
    assert_eq!(count_uplinks(&w), 1);
    assert_eq!(w.net.stats().dropped.get(&DropCause::Replay), Some(&1));
    // Tampered ciphertext with a fresh Message ID.
    let mut bad = up;
    let n = bad.len();
    bad[n - 2] ^= 1;
    bad[3] ^= 0x33;
    w.gw.queue.push(capillary_relay::Entry::coap(1, bad));
    w.settle();
    assert_eq!(count_uplinks(&w), 1);
    assert_eq!(
        w.net.stats().dropped.get(&DropCause::OscoreInvalid),
        Some(&1)
    );
}

#[test]
fn unprotected_request_from_gateway_gets_4_01() {
    let mut w = World::new(12);
    w.authenticate_gateway();
    let mut m = capillary_coap::Message::new(
        capillary_coap::MessageType::Con,
        capillary_coap::Code::POST,
        7,
        vec![1],
    );
    m.set_uri_path("r");
    w.net
        .handle_datagram(w.now, w.gw_addr, &m.encode().unwrap());
    let (_, b) = w.net.poll_transmit().unwrap();
    let r = capillary_coap::Message::parse(&b).unwrap();
    assert_eq!(r.code, capillary_coap::Code::UNAUTHORIZED);
    assert_eq!(r.message_id, 7);
}

#[test]
fn gateway_reauthentication_rekeys_the_link() {
    let mut w = authenticated_world(1, 14);
    w.start_devices();
    w.run_until(Duration::from_secs(60), |w| w.devices[0].1.authenticated);
    // The gateway runs CoAP-EAP again (RFC 9820 §3.4): a new MSK, a new link context.
    w.gw.peer.authenticated = false;
    w.gw.peer.start(w.now);
    w.run_until(Duration::from_secs(60), |w| w.gw.peer.authenticated);
    assert!(w.gw.peer.authenticated);
    let gw_auths = w
        .log
        .iter()
        .filter(|e| {
            matches!(
                e,
                LinkEvent::Authenticated {
                    kind: SubscriberKind::Gateway,
                    ..
                }
            )
        })
        .count();
    assert_eq!(gw_auths, 2);
    // The device session survives, and batches under the new link context work.
    w.device(1).send_uplink(b"after rekey");
    w.run_until(Duration::from_secs(10), |w| {
        !w.devices[0].1.uplink_acks.is_empty()
    });
    assert!(w
        .log
        .iter()
        .any(|e| matches!(e, LinkEvent::Uplink { payload, .. } if payload == b"after rekey")));
}

/// Takes the OSCORE-protected responses a device queued (its key-confirmation 2.04 to the
/// EAP-Success, RFC 9820 §3.3, or answers to downlinks) out of its queue before the gateway
/// relays them; returns how many.
fn take_protected_responses(w: &mut World, handle: u32) -> usize {
    let d = w.device(handle);
    let before = d.out.len();
    d.out.retain(|b| {
        let m = capillary_coap::Message::parse(b).unwrap();
        !(m.has_option(capillary_coap::msg::option_number::OSCORE) && m.code.is_response())
    });
    before - d.out.len()
}

/// [`World::run_until`], counting (in `seen`) every protected response device `handle`
/// sends and losing the first `lose` of them on the capillary link.
fn run_losing_protected_responses(
    w: &mut World,
    handle: u32,
    limit: Duration,
    lose: &mut usize,
    seen: &mut usize,
    done: impl Fn(&World) -> bool,
) {
    let end = w.now + limit;
    loop {
        for _ in 0..100_000 {
            let n = take_protected_responses(w, handle);
            if n > 0 {
                *seen += n;
                // Put back what is not lost.
                let keep = n.saturating_sub(*lose);
                *lose = lose.saturating_sub(n);
                assert_eq!(keep, 0, "this helper only loses, it does not replay");
            }
            if !w.step() {
                break;
            }
        }
        if done(w) || w.now >= end {
            return;
        }
        let mut next = w.net.poll_timeout();
        for t in std::iter::once(w.gw.peer.coap.poll_timeout())
            .chain(w.devices.iter().map(|(_, d)| d.coap.poll_timeout()))
            .flatten()
        {
            next = Some(next.map_or(t, |n: std::time::Instant| n.min(t)));
        }
        let Some(t) = next else { return };
        w.now = w.now.max(t).min(end);
        let now = w.now;
        w.net.handle_timeout(now);
        w.gw.peer.coap.handle_timeout(now);
        w.gw.peer.drain(now);
        for (_, d) in w.devices.iter_mut() {
            d.coap.handle_timeout(now);
            d.drain(now);
        }
    }
}

#[test]
fn uplink_under_the_new_context_confirms_keys_when_the_key_confirmation_is_lost() {
    let mut w = authenticated_world(1, 14);
    let dev = Imsi::new(&imsi(1)).unwrap();
    w.start_devices();
    let (mut lose, mut seen) = (1, 0);
    run_losing_protected_responses(
        &mut w,
        1,
        Duration::from_secs(60),
        &mut lose,
        &mut seen,
        |w| w.devices[0].1.authenticated,
    );
    assert!(w.devices[0].1.authenticated, "the device got EAP-Success");
    assert_eq!((lose, seen), (0, 1), "its protected 2.04 was lost");
    assert!(!w.net.is_device_authenticated(&dev), "not confirmed yet");
    let device_auths = |w: &World| {
        w.log
            .iter()
            .filter(|e| {
                matches!(e, LinkEvent::Authenticated { kind: SubscriberKind::Device, imsi, .. }
                    if *imsi == dev)
            })
            .count()
    };
    let authenticated_outcomes = |w: &World| {
        w.gw.outcomes
            .iter()
            .filter(|(h, r)| *h == 1 && *r == OutcomeResult::Authenticated)
            .count()
    };
    assert_eq!(device_auths(&w), 0);
    let stats_before = w.net.stats();

    // The device's first uplink under the new context, at once.
    let t0 = w.now;
    w.device(1).send_uplink(b"first reading");
    run_losing_protected_responses(
        &mut w,
        1,
        Duration::from_secs(10),
        &mut lose,
        &mut seen,
        |w| !w.devices[0].1.uplink_acks.is_empty(),
    );
    assert_eq!(
        w.devices[0].1.uplink_acks,
        vec![(
            w.devices[0].1.uplink_acks[0].0,
            capillary_coap::Code::CHANGED
        )]
    );
    // Delivered without waiting for the EAP-Success retransmission (relayed ACK_TIMEOUT
    // 3 s): the device never had to answer it again.
    assert!(w.now - t0 < Duration::from_secs(1), "{:?}", w.now - t0);
    assert_eq!(seen, 1, "no EAP-Success retransmission reached the device");
    assert!(w.log.iter().any(|e| matches!(e,
        LinkEvent::Uplink { device, payload } if *device == dev && payload == b"first reading")));
    assert!(w.net.is_device_authenticated(&dev));
    assert_eq!(device_auths(&w), 1);
    assert_eq!(authenticated_outcomes(&w), 1);
    let s = w.net.stats();
    assert_eq!(s.authenticated, stats_before.authenticated + 1);
    assert_eq!(
        s.dropped.get(&DropCause::NoContext),
        stats_before.dropped.get(&DropCause::NoContext)
    );

    // The EAP-Success retransmission was stopped: nothing more happens, the device is
    // counted authenticated exactly once and keeps working.
    run_losing_protected_responses(
        &mut w,
        1,
        Duration::from_secs(60),
        &mut lose,
        &mut seen,
        |_| false,
    );
    assert_eq!(seen, 1, "no EAP-Success retransmission");
    assert_eq!(device_auths(&w), 1);
    assert_eq!(authenticated_outcomes(&w), 1);
    assert_eq!(w.net.stats().authenticated, stats_before.authenticated + 1);
    assert!(!w.log.iter().any(|e| matches!(e, LinkEvent::Failed { .. })));
    w.device(1).send_uplink(b"second reading");
    w.run_until(Duration::from_secs(10), |w| {
        w.devices[0].1.uplink_acks.len() == 2
    });
    assert_eq!(w.devices[0].1.uplink_acks.len(), 2);
    assert_eq!(
        w.devices[0].1.uplink_acks[1].1,
        capillary_coap::Code::CHANGED
    );
}

fn set_status(w: &mut World, who: &str, status: capillary_store::SubscriberStatus) {
    w.subs.get_mut(who).unwrap().status = status;
}

fn audits(w: &World, event: AuditEvent) -> Vec<(Imsi, Option<Imsi>)> {
    w.log
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Audit(a) if a.event == event => Some((a.subject.clone(), a.gateway.clone())),
            _ => None,
        })
        .collect()
}

/// The pair counts of every Authorize event so far.
fn authorize_sizes(w: &World) -> Vec<usize> {
    w.log
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Authorize { pairs, .. } => Some(pairs.len()),
            _ => None,
        })
        .collect()
}

#[test]
fn device_barred_mid_attach_is_refused_at_its_next_message() {
    let mut w = authenticated_world(2, 21);
    w.start_devices();
    // Until the devices' vectors (and their attach check) were answered: the challenges
    // are on their way, the responses not yet.
    for _ in 0..10_000 {
        if w.need_vectors >= 2 {
            break;
        }
        assert!(w.step() || w.gw.flush());
    }
    assert_eq!(w.need_vectors, 2);
    let authorize_before = w.authorize;
    // §6: barred between the challenge and its response.
    set_status(&mut w, &imsi(1), capillary_store::SubscriberStatus::Barred);
    w.run_until(Duration::from_secs(120), |w| {
        w.devices[0].1.failed.is_some()
            && w.devices[1].1.authenticated
            && w.gw.outcomes.len() >= 2
            && !w.gw.outstanding()
    });
    let bad = Imsi::new(&imsi(1)).unwrap();
    assert!(!w.device(1).authenticated);
    assert!(
        w.device(1).failed.is_some(),
        "EAP-Failure reached the device"
    );
    assert!(w.device(2).authenticated);
    assert!(!w.net.is_device_authenticated(&bad));
    assert_eq!(
        audits(&w, AuditEvent::DeviceBarred),
        vec![(bad.clone(), Some(Imsi::new(GW_IMSI).unwrap()))]
    );
    assert!(w.log.iter().any(|e| matches!(e,
        LinkEvent::Failed { imsi: Some(i), reason: FailureCause::Refused(k), .. }
            if *i == bad && *k == AuditEvent::DeviceBarred.into())));
    assert!(w.gw.outcomes.contains(&(1, OutcomeResult::REFUSED)));
    assert!(w.gw.outcomes.contains(&(2, OutcomeResult::Authenticated)));
    // No vector request after the refusal; the challenge responses' batch and the key
    // confirmation's batch were each checked with ONE Authorize.
    assert_eq!(w.need_vectors, 2);
    assert_eq!(w.authorize - authorize_before, 2);
    assert!(authorize_sizes(&w).iter().all(|n| *n <= 2));
}

#[test]
fn authenticated_device_barred_next_uplink_refused() {
    let mut w = authenticated_world(3, 22);
    w.start_devices();
    w.run_until(Duration::from_secs(60), |w| {
        w.devices.iter().all(|(_, d)| d.authenticated)
    });
    let bad = Imsi::new(&imsi(2)).unwrap();
    assert!(w.net.is_device_authenticated(&bad));
    set_status(&mut w, &imsi(2), capillary_store::SubscriberStatus::Barred);
    let (authorize_before, store_before) = (w.authorize, w.net.stats().store_round_trips);
    for h in 1..=3 {
        w.device(h).send_uplink(b"reading");
    }
    w.run_until(Duration::from_secs(10), |w| {
        w.devices.iter().all(|(_, d)| !d.uplink_acks.is_empty())
    });
    // One batch, three pairs, ONE Authorize: one store round trip.
    assert_eq!(w.authorize - authorize_before, 1);
    assert_eq!(w.net.stats().store_round_trips - store_before, 1);
    assert_eq!(authorize_sizes(&w).last(), Some(&3));
    assert_eq!(
        w.device(2).uplink_acks[0].1,
        capillary_coap::Code::FORBIDDEN
    );
    assert_eq!(w.device(1).uplink_acks[0].1, capillary_coap::Code::CHANGED);
    assert_eq!(w.device(3).uplink_acks[0].1, capillary_coap::Code::CHANGED);
    let delivered: Vec<Imsi> = w
        .log
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Uplink { device, .. } => Some(device.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(delivered.len(), 2);
    assert!(!delivered.contains(&bad));
    assert_eq!(audits(&w, AuditEvent::DeviceBarred).len(), 1);
    assert!(w.gw.outcomes.contains(&(2, OutcomeResult::REFUSED)));
    // Its OSCORE context is gone: the next uplink has nothing to verify it.
    assert!(!w.net.is_device_authenticated(&bad));
    assert!(w.net.queue_downlink(w.now, &bad, b"x").is_err());
    let no_ctx = |w: &World| {
        w.net
            .stats()
            .dropped
            .get(&DropCause::NoContext)
            .copied()
            .unwrap_or(0)
    };
    let before = no_ctx(&w);
    w.device(2).send_uplink(b"again");
    w.settle();
    assert_eq!(no_ctx(&w), before + 1);
    assert_eq!(w.device(2).uplink_acks.len(), 1);
    assert_eq!(delivered.len(), 2);
}

#[test]
fn revoked_gateway_is_forgotten_at_its_next_batch() {
    let mut w = authenticated_world(3, 23);
    w.start_devices();
    w.run_until(Duration::from_secs(60), |w| {
        w.devices.iter().all(|(_, d)| d.authenticated)
    });
    set_status(&mut w, GW_IMSI, capillary_store::SubscriberStatus::Barred);
    let (authorize_before, store_before) = (w.authorize, w.net.stats().store_round_trips);
    w.device(1).send_uplink(b"one");
    w.device(3).send_uplink(b"three");
    w.run_until(Duration::from_secs(10), |w| !w.gw.outstanding());
    // ONE Authorize for the batch; its 2.04 is the last message under the link context and
    // carries the refusals (4.03 to both uplinks, a refused outcome for every device).
    assert_eq!(w.authorize - authorize_before, 1);
    assert_eq!(w.net.stats().store_round_trips - store_before, 1);
    assert_eq!(w.gw.responses.last(), Some(&capillary_coap::Code::CHANGED));
    assert_eq!(
        w.device(1).uplink_acks[0].1,
        capillary_coap::Code::FORBIDDEN
    );
    assert_eq!(
        w.device(3).uplink_acks[0].1,
        capillary_coap::Code::FORBIDDEN
    );
    for h in 1..=3 {
        assert!(w.gw.outcomes.contains(&(h, OutcomeResult::REFUSED)));
    }
    assert!(!w.net.is_gateway_authenticated(w.gw_addr));
    assert!(!w.log.iter().any(|e| matches!(e, LinkEvent::Uplink { .. })));
    let gw = Imsi::new(GW_IMSI).unwrap();
    let revoked = audits(&w, AuditEvent::GatewayRevoked);
    for i in 1..=3 {
        let dev = Imsi::new(&imsi(i)).unwrap();
        assert!(!w.net.is_device_authenticated(&dev), "device {i} dropped");
        assert!(revoked.contains(&(dev, Some(gw.clone()))));
    }
    assert!(revoked.contains(&(gw.clone(), Some(gw.clone()))));
    assert!(w.net.dangerous_export_secrets().is_empty());
    // The gateway is forgotten: its next batch gets the unprotected 4.01 of an unknown
    // context, with no store request.
    let authorize_before = w.authorize;
    w.device(2).send_uplink(b"two");
    w.run_until(Duration::from_secs(10), |w| !w.gw.outstanding());
    assert_eq!(
        w.gw.responses.last(),
        Some(&capillary_coap::Code::UNAUTHORIZED)
    );
    assert_eq!(w.authorize, authorize_before);
    assert!(w.device(2).uplink_acks.is_empty());
    // Authenticating again fails: the vector request for a barred gateway is refused.
    w.gw.peer.authenticated = false;
    w.gw.peer.start(w.now);
    w.run_until(Duration::from_secs(120), |w| w.gw.peer.failed.is_some());
    assert!(w.gw.peer.failed.is_some());
    assert!(!w.gw.peer.authenticated);
    assert!(!w.net.is_gateway_authenticated(w.gw_addr));
    assert!(w.log.iter().any(|e| matches!(
        e,
        LinkEvent::Failed {
            kind: SubscriberKind::Gateway,
            reason: FailureCause::NoVector,
            ..
        }
    )));
}
