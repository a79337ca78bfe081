//! Signalling optimisations of the network link endpoint, each on and off, with the real
//! sans-IO cores (docs/PROTOCOL.md §6.1 fast re-authentication in memory, §6.2 vector
//! prefetch when a gateway authenticates).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod link_support;

use std::time::Duration;

use capillary_network::link::{LinkConfig, LinkEvent};
use capillary_store::{SubscriberKind, SubscriberStatus};
use link_support::{imsi, World};

/// `n` devices bound to the gateway BEFORE it authenticates (so its prefetch finds them).
fn world(n: u32, seed: u64, cfg: LinkConfig) -> World {
    let mut w = World::with_config(seed, cfg);
    for i in 1..=n {
        w.add_sub(&imsi(i), SubscriberKind::Device, true);
        w.add_device(&imsi(i), i);
    }
    w.authenticate_gateway();
    w
}

fn attach_all(w: &mut World) {
    w.start_devices();
    w.run_until(Duration::from_secs(120), |w| {
        w.devices.iter().all(|(_, d)| d.authenticated) && !w.gw.outstanding()
    });
    for (h, d) in &w.devices {
        assert!(
            d.authenticated,
            "device {h} authenticated: {:?} {:?}",
            d.failed,
            w.net.stats()
        );
    }
}

fn cfg(prefetch: bool, fast_reauth: bool) -> LinkConfig {
    LinkConfig {
        prefetch_vectors: prefetch,
        fast_reauth,
        ..LinkConfig::default()
    }
}

#[test]
fn prefetch_on_attach_wave_needs_no_vector_request() {
    let mut w = world(10, 3, cfg(true, false));
    assert_eq!(
        w.prefetches, 1,
        "one prefetch when the gateway authenticated"
    );
    assert_eq!(w.need_vectors, 1, "only the gateway's own vector so far");
    assert_eq!(w.net.stats().prefetched, 10);
    attach_all(&mut w);
    let s = w.net.stats();
    assert_eq!(s.prefetch_hits, 10);
    assert_eq!(
        w.need_vectors, 1,
        "the identities used the prefetched vectors"
    );
    // §6.2: the identity step uses the prefetch's authorization; the challenge responses and
    // the key confirmations are each authorized from the store.
    assert_eq!(w.authorize, 2);
    // Gateway vector + prefetch + two Authorize.
    assert_eq!(s.store_round_trips, 4);
}

#[test]
fn prefetch_off_attach_wave_asks_for_vectors() {
    let mut w = world(10, 3, cfg(false, false));
    assert_eq!(w.prefetches, 0);
    attach_all(&mut w);
    let s = w.net.stats();
    assert_eq!(s.prefetch_hits, 0);
    assert_eq!(
        w.need_vectors, 2,
        "gateway vector + one NeedVectors for the wave"
    );
    assert_eq!(w.authorize, 3);
    assert_eq!(s.store_round_trips, 5);
}

#[test]
fn prefetched_vector_is_not_handed_out_twice() {
    let mut w = world(1, 4, cfg(true, false));
    attach_all(&mut w);
    assert_eq!(w.net.stats().prefetch_hits, 1);
    let before = w.need_vectors;
    // A second run (fast re-authentication off): the prefetched vector is gone.
    w.devices[0].1.authenticated = false;
    w.start_devices();
    w.run_until(Duration::from_secs(120), |w| w.devices[0].1.authenticated);
    assert!(w.devices[0].1.authenticated);
    assert_eq!(w.net.stats().prefetch_hits, 1);
    assert_eq!(w.need_vectors, before + 1);
}

#[test]
fn device_barred_after_prefetch_is_refused_before_eap_success() {
    let mut w = world(2, 5, cfg(true, false));
    // Barred after the prefetch fetched its vector: the challenge-response batch is still
    // authorized from the store before EAP-Success (§6, §6.2).
    w.subs.get_mut(&imsi(2)).unwrap().status = SubscriberStatus::Barred;
    w.start_devices();
    w.run_until(Duration::from_secs(120), |w| {
        w.devices[0].1.authenticated && w.devices[1].1.failed.is_some()
    });
    assert!(w.devices[0].1.authenticated);
    assert!(!w.devices[1].1.authenticated);
    assert!(w.devices[1].1.failed.is_some());
    assert_eq!(w.net.stats().prefetch_hits, 2);
    let dev2 = capillary_secrets::Imsi::new(&imsi(2)).unwrap();
    assert!(!w.net.is_device_authenticated(&dev2));
    assert!(!w.log.iter().any(|e| matches!(e,
        LinkEvent::Authenticated { imsi, .. } if *imsi == dev2)));
}

/// Runs a full attach, then every device runs CoAP-EAP again.
fn reattach(fast_reauth: bool) -> World {
    let mut w = world(5, 6, cfg(false, fast_reauth));
    attach_all(&mut w);
    assert_eq!(w.net.stats().fast_reauths, 0);
    for (_, d) in w.devices.iter_mut() {
        d.authenticated = false;
    }
    attach_all(&mut w);
    w
}

#[test]
fn fast_reauth_on_reattach_needs_no_vector() {
    let before_vectors;
    {
        let mut w = world(5, 6, cfg(false, true));
        attach_all(&mut w);
        before_vectors = w.need_vectors;
    }
    let w = reattach(true);
    let s = w.net.stats();
    assert_eq!(s.fast_reauths, 5, "every device re-authenticated fast");
    assert_eq!(
        w.need_vectors, before_vectors,
        "no vector, no SQN for the re-attach"
    );
    // The re-attach is still authorized from the store before EAP-Success (§6).
    assert!(w.authorize >= 4);
    // And uplinks work under the new context.
    let mut w = w;
    w.device(1).send_uplink(b"after fast reauth");
    w.run_until(Duration::from_secs(10), |w| {
        !w.devices[0].1.uplink_acks.is_empty()
    });
    assert!(w.log.iter().any(
        |e| matches!(e, LinkEvent::Uplink { payload, .. } if payload == b"after fast reauth")
    ));
}

#[test]
fn fast_reauth_off_reattach_needs_vectors() {
    let w = reattach(false);
    assert_eq!(w.net.stats().fast_reauths, 0);
    // Gateway + first wave + second wave.
    assert_eq!(w.need_vectors, 3);
}

#[test]
fn gateway_runs_are_always_full() {
    let mut w = world(0, 7, cfg(false, true));
    let before = w.need_vectors;
    w.gw.peer.authenticated = false;
    w.gw.peer.start(w.now);
    w.run_until(Duration::from_secs(60), |w| w.gw.peer.authenticated);
    assert!(w.gw.peer.authenticated);
    // The gateway's vector request is its authorization check (§6): never skipped.
    assert_eq!(w.need_vectors, before + 1);
    assert_eq!(w.net.stats().fast_reauths, 0);
}

/// PROTOCOL.md §4.1: the gateway's first `POST /r` leaves right behind its protected 2.04 to
/// EAP-Success; if it overtakes the 2.04, it proves the new context by itself (RFC 9820
/// §3.3) and is served.
#[test]
fn first_batch_overtaking_the_gateways_key_confirmation_is_served() {
    let mut w = World::new(21);
    w.add_sub(&imsi(1), SubscriberKind::Device, true);
    w.add_device(&imsi(1), 1);
    w.gw.peer.start(w.now);
    for _ in 0..10_000 {
        if w.gw.peer.authenticated {
            break;
        }
        w.step();
    }
    assert!(w.gw.peer.authenticated);
    // Hold back the gateway's protected 2.04 to EAP-Success.
    let held: Vec<Vec<u8>> = w.gw.peer.out.drain(..).collect();
    assert!(!held.is_empty());
    assert!(!w.net.is_gateway_authenticated(w.gw_addr));
    w.start_devices();
    w.settle();
    assert!(w.net.is_gateway_authenticated(w.gw_addr));
    assert!(w.gw.responses.contains(&capillary_coap::Code::CHANGED));
    let gw_auths = |w: &World| {
        w.log
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
            .count()
    };
    assert_eq!(gw_auths(&w), 1);
    // The late 2.04 changes nothing.
    for b in held {
        w.net.handle_datagram(w.now, w.gw_addr, &b);
    }
    w.run_until(Duration::from_secs(60), |w| w.devices[0].1.authenticated);
    assert!(w.devices[0].1.authenticated);
    assert_eq!(gw_auths(&w), 1);
}

/// PROTOCOL.md §4 "Gateway restart" together with §4.1 (first batch with the gateway's
/// authentication): a rebooted gateway's first batch, sent under its new link context, may
/// overtake its 2.04 to EAP-Success. That batch comes from the new run, so it must not count
/// as proof that the old link was alive: the old handles are voided and the device, now on
/// another handle, is re-bound by its `kid` without re-authenticating.
#[test]
fn rebooted_gateways_first_batch_overtaking_its_confirmation_still_voids_old_handles() {
    let mut w = world(1, 23, LinkConfig::default());
    attach_all(&mut w);
    let auths_before = w
        .log
        .iter()
        .filter(|e| {
            matches!(
                e,
                LinkEvent::Authenticated {
                    kind: SubscriberKind::Device,
                    ..
                }
            )
        })
        .count();
    assert_eq!(auths_before, 1);

    // The gateway reboots: a fresh CoAP-EAP peer at the same address, new handle numbering.
    w.gw = link_support::GatewaySim::new(99);
    w.gw.peer.start(w.now);
    for _ in 0..10_000 {
        if w.gw.peer.authenticated {
            break;
        }
        w.step();
    }
    assert!(w.gw.peer.authenticated);
    // Hold back its protected 2.04 to EAP-Success; the device's next uplink goes first, on
    // handle 7 now, in the first batch under the new context.
    let held: Vec<Vec<u8>> = w.gw.peer.out.drain(..).collect();
    assert!(!held.is_empty());
    w.devices[0].0 = 7;
    let up = w.devices[0].1.send_uplink(b"after reboot");
    w.gw.queue.push(capillary_relay::Entry::coap(7, up));
    assert!(w.gw.flush());
    w.settle();
    for b in held {
        w.net.handle_datagram(w.now, w.gw_addr, &b);
    }
    w.settle();

    let st = w.net.stats();
    assert!(st.handles_voided >= 1, "{st:?}");
    assert!(st.rebound >= 1, "{st:?}");
    assert!(
        w.log
            .iter()
            .any(|e| matches!(e, LinkEvent::Uplink { payload, .. } if payload == b"after reboot")),
        "the uplink was delivered"
    );
    let auths_after = w
        .log
        .iter()
        .filter(|e| {
            matches!(
                e,
                LinkEvent::Authenticated {
                    kind: SubscriberKind::Device,
                    ..
                }
            )
        })
        .count();
    assert_eq!(auths_after, 1, "no device re-authenticated");
}

/// PROTOCOL.md §4 "Gateway restart": after the restart device B takes the handle device A
/// had, and B's next uplink happens to reuse the Message ID of A's last one (each device
/// numbers its own messages). The network must not answer B from A's cached response (B
/// could not decrypt it): device requests are deduplicated per handle epoch.
#[test]
fn device_rebound_to_anothers_handle_is_not_answered_from_its_cache() {
    let mut w = world(2, 29, LinkConfig::default());
    attach_all(&mut w);
    // A (handle 1) sends an uplink; its response is cached under (gateway, handle 1).
    let a_mid = w.devices[0].1.next_mid;
    w.devices[0].1.send_uplink(b"from A");
    w.settle();
    assert!(w.devices[0]
        .1
        .uplink_acks
        .contains(&(a_mid, capillary_coap::Code::CHANGED)));

    // The gateway reboots and numbers the devices the other way round.
    w.gw = link_support::GatewaySim::new(77);
    w.authenticate_gateway();
    w.devices[0].0 = 2;
    w.devices[1].0 = 1;
    w.devices[1].1.next_mid = a_mid;
    w.devices[1].1.send_uplink(b"from B");
    w.settle();
    assert!(
        w.devices[1]
            .1
            .uplink_acks
            .contains(&(a_mid, capillary_coap::Code::CHANGED)),
        "B's uplink acknowledged under B's context: {:?}",
        w.devices[1].1.uplink_acks
    );
    assert!(w
        .log
        .iter()
        .any(|e| matches!(e, LinkEvent::Uplink { payload, .. } if payload == b"from B")));
    assert!(w.net.stats().rebound >= 1);
}
