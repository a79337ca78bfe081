//! `kind 3` entries (docs/PROTOCOL.md §4, §5): the gateway answered the device's CoAP-EAP
//! trigger with EAP-Request/Identity itself and forwards `{1: request, 2: response}`; the
//! network continues the run only when that request offers exactly its cipher suites and
//! RID-C.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod link_support;

use std::time::Duration;

use capillary_coap::Message;
use capillary_coap_eap::trigger::parse_trigger;
use capillary_coap_eap::{identity_request, CipherSuite, CoapEapInfo};
use capillary_network::link::{DropCause, LinkConfig};
use capillary_relay::{Entry, EntryKind, OutcomeResult};
use capillary_store::SubscriberKind;
use link_support::{imsi, World};

fn world(n: u32, seed: u64, cfg: LinkConfig) -> World {
    let mut w = World::with_config(seed, cfg);
    w.authenticate_gateway();
    for i in 1..=n {
        w.add_sub(&imsi(i), SubscriberKind::Device, true);
        w.add_device(&imsi(i), i);
    }
    w
}

/// What the gateway learnt from its own CoAP-EAP run with the network.
fn network_offer(w: &World) -> CoapEapInfo {
    w.gw.peer.coap.authenticator_offer().unwrap()
}

/// Device `h` starts; the "gateway" answers its trigger with `offer` and EAP Identifier
/// `eap_id`; returns the `kind 3` entry (request, device's answer).
fn local_step(w: &mut World, h: u32, offer: &CoapEapInfo, eap_id: u8) -> Entry {
    let now = w.now;
    let d = w.device(h);
    d.start(now);
    let trigger = Message::parse(&d.out.pop_front().unwrap()).unwrap();
    let path = parse_trigger(&trigger).unwrap();
    let req = identity_request(0x7000 + h as u16, vec![0xa5; 8], true, &path, eap_id, offer);
    let req = req.encode().unwrap();
    d.handle(now, &req);
    let resp = d.out.pop_front().expect("the device answers");
    Entry {
        handle: h,
        kind: EntryKind::Identity {
            request: req,
            response: resp,
        },
    }
}

fn refusals(w: &World, h: u32) -> usize {
    w.gw.outcomes
        .iter()
        .filter(|(x, r)| *x == h && *r == OutcomeResult::REFUSED)
        .count()
}

#[test]
fn kind_3_attaches_devices_with_one_store_request() {
    let mut w = world(3, 1, LinkConfig::default());
    let offer = network_offer(&w);
    let vectors = w.need_vectors;
    for h in 1..=3 {
        let e = local_step(&mut w, h, &offer, 0x10 * h as u8);
        w.gw.queue.push(e);
    }
    w.run_until(Duration::from_secs(60), |w| {
        w.devices.iter().all(|(_, d)| d.authenticated) && w.gw.outcomes.len() >= 3
    });
    for (h, d) in &w.devices {
        assert!(d.authenticated, "device {h}");
        assert!(d.failed.is_none());
    }
    assert_eq!(w.net.stats().local_identities, 3);
    assert_eq!(
        w.need_vectors - vectors,
        1,
        "one vector request for the batch"
    );
    assert!(w
        .gw
        .outcomes
        .iter()
        .all(|(_, r)| *r == OutcomeResult::Authenticated));
}

#[test]
fn duplicate_kind_3_is_ignored() {
    let mut w = world(1, 2, LinkConfig::default());
    let offer = network_offer(&w);
    let e = local_step(&mut w, 1, &offer, 7);
    w.gw.queue.push(e.clone());
    w.gw.queue.push(e.clone());
    w.settle();
    w.gw.queue.push(e);
    w.run_until(Duration::from_secs(60), |w| w.devices[0].1.authenticated);
    assert!(w.devices[0].1.authenticated);
    let s = w.net.stats();
    assert_eq!(s.local_identities, 1);
    assert_eq!(s.duplicates, 2);
    assert_eq!(refusals(&w, 1), 0);
}

fn assert_refused(offer_change: impl Fn(&mut CoapEapInfo), seed: u64) {
    let mut w = world(1, seed, LinkConfig::default());
    let mut offer = network_offer(&w);
    offer_change(&mut offer);
    let vectors = w.need_vectors;
    let e = local_step(&mut w, 1, &offer, 9);
    w.gw.queue.push(e);
    w.settle();
    assert_eq!(refusals(&w, 1), 1, "kind 1 result 1 for the handle");
    assert_eq!(w.net.stats().dropped.get(&DropCause::BadEntry), Some(&1));
    assert_eq!(w.net.stats().local_identities, 0);
    assert_eq!(w.need_vectors, vectors, "no vector asked for");
    assert!(!w.devices[0].1.authenticated);
}

#[test]
fn kind_3_with_another_rid_c_is_refused() {
    assert_refused(|o| o.rid_c = Some(vec![0x66]), 3);
}

#[test]
fn kind_3_with_other_cipher_suites_is_refused() {
    assert_refused(
        |o| o.cipher_suites = Some(vec![CipherSuite::A128GCM_SHA256, CipherSuite::DEFAULT]),
        4,
    );
    // No list at all is another offer too (the list is bound into the OSCORE keys).
    assert_refused(|o| o.cipher_suites = None, 5);
}

#[test]
fn kind_3_whose_response_does_not_answer_the_request_is_refused() {
    let mut w = world(1, 6, LinkConfig::default());
    let offer = network_offer(&w);
    let mut e = local_step(&mut w, 1, &offer, 9);
    if let EntryKind::Identity { response, .. } = &mut e.kind {
        let mut m = Message::parse(response).unwrap();
        m.token = vec![1, 2, 3];
        *response = m.encode().unwrap();
    }
    w.gw.queue.push(e);
    w.settle();
    assert_eq!(refusals(&w, 1), 1);
    assert_eq!(w.net.stats().local_identities, 0);
}

#[test]
fn kind_3_refused_when_switched_off() {
    let cfg = LinkConfig {
        accept_local_identity: false,
        ..LinkConfig::default()
    };
    let mut w = world(1, 8, cfg);
    let offer = network_offer(&w);
    let e = local_step(&mut w, 1, &offer, 9);
    w.gw.queue.push(e);
    w.settle();
    assert_eq!(refusals(&w, 1), 1);
    assert_eq!(w.net.stats().local_identities, 0);
}
