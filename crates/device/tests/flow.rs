//! The device against an in-memory network stand-in (real CoAP-EAP authenticator, real
//! EAP-AKA' server, Milenage HSS, real OSCORE on both sides): authentication, uplink,
//! downlink, losses, failures, replay and tampering, re-authentication, determinism.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use capillary_aka::vector::UsimConfig;
use capillary_aka::AkaError;
use capillary_coap::Message;
use capillary_device::{Device, DeviceConfig, DeviceError, DeviceEvent, MAX_UPLINK_PAYLOAD};
use capillary_eap::peer::PeerFailure as AkaFailure;
use capillary_eap::server::Method;
use capillary_secrets::{Secret, K};
use common::{device_config, subscriber, Sim};

fn acked(s: &Sim, id: u64) -> bool {
    s.events.contains(&DeviceEvent::UplinkAcked { id })
}

fn downlinks(s: &Sim) -> Vec<Vec<u8>> {
    s.events
        .iter()
        .filter_map(|e| match e {
            DeviceEvent::Downlink { payload } => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn authenticates_then_uplink_and_downlink() {
    let mut s = Sim::new(1);
    assert!(!s.device.is_authenticated());
    assert_eq!(
        s.device.send_uplink(s.now, b"early"),
        Err(DeviceError::NotAuthenticated)
    );
    s.authenticate();
    assert!(s.device.is_authenticated());
    assert_eq!(
        s.events[0],
        DeviceEvent::Authenticated {
            session_lifetime: Duration::from_secs(3600)
        }
    );
    // Trigger + Identity round + AKA'-Challenge round + EAP-Success/2.04 (RFC 9820 §3.2).
    assert_eq!(s.sent, 7);
    assert_eq!(s.net.methods, vec![Method::Full]);
    // The device holds the MSK the network derived, and the OSCORE keys match.
    let secrets = s.device.dangerous_export_secrets();
    assert_eq!(secrets[0], s.net.msks[0].to_vec());
    let net_ctx = s.net.current.as_ref().unwrap();
    assert_eq!(secrets[4], net_ctx.recipient_key().expose().to_vec());
    assert_eq!(secrets[5], net_ctx.sender_key().expose().to_vec());
    assert_eq!(secrets[6], net_ctx.common_iv().expose().to_vec());

    let id = s.device.send_uplink(s.now, b"temperature=21").unwrap();
    assert!(s.run_until(Duration::from_secs(10), |s| acked(s, id)));
    assert_eq!(s.net.uplinks, vec![b"temperature=21".to_vec()]);
    // The uplink travelled encrypted.
    let up = s.device_sent.last().unwrap();
    assert!(!up.windows(11).any(|w| w == b"temperature"));

    s.net.queue_downlink(s.now, b"set-interval 60");
    assert!(s.run_until(Duration::from_secs(10), |s| s.net.downlink_acks == 1));
    assert_eq!(downlinks(&s), vec![b"set-interval 60".to_vec()]);
    assert!(s
        .events
        .iter()
        .all(|e| !matches!(e, DeviceEvent::Failed(_) | DeviceEvent::UplinkFailed { .. })));
}

#[test]
fn lossy_link_drop_every_third() {
    let mut s = Sim::new(2);
    s.drop_every = Some(3);
    s.authenticate();
    let ids: Vec<u64> = (0..5u8)
        .map(|i| s.device.send_uplink(s.now, &[b'u', i]).unwrap())
        .collect();
    assert!(s.run_until(Duration::from_secs(600), |s| ids
        .iter()
        .all(|id| acked(s, *id))));
    // Losses happened and were repaired by retransmissions (same bytes sent twice).
    let dups = s
        .device_sent
        .iter()
        .enumerate()
        .filter(|(i, b)| s.device_sent[..*i].contains(b))
        .count();
    assert!(dups > 0);
    // Each uplink reached the network exactly once, in order, despite retransmissions.
    let want: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'u', i]).collect();
    assert_eq!(s.net.uplinks, want);
    for i in 0..3u8 {
        s.net.queue_downlink(s.now, &[b'd', i]);
        let n = usize::from(i) + 1;
        assert!(s.run_until(Duration::from_secs(600), |s| s.net.downlink_acks == n));
    }
    let want: Vec<Vec<u8>> = (0..3u8).map(|i| vec![b'd', i]).collect();
    assert_eq!(downlinks(&s), want);
    assert_eq!(s.count(|e| matches!(e, DeviceEvent::UplinkAcked { .. })), 5);
}

#[test]
fn wrong_k_fails() {
    let mut cfg = device_config();
    let (other_k, _) = subscriber("set19");
    cfg.k = K::from_hex(&other_k).unwrap();
    let mut s = Sim::with(cfg, 3, Duration::from_secs(3600));
    s.start();
    assert!(s.run_until(Duration::from_secs(300), |s| s
        .events
        .iter()
        .any(|e| matches!(e, DeviceEvent::Failed(_)))));
    assert_eq!(
        s.events,
        vec![DeviceEvent::Failed(DeviceError::EapAka(
            AkaFailure::AuthenticationRejected(AkaError::MacFailure)
        ))]
    );
    assert!(!s.device.is_authenticated());
    assert_eq!(s.net.authenticated, 0);
    assert!(s.device.dangerous_export_secrets().is_empty());
    assert_eq!(
        s.device.send_uplink(s.now, b"x"),
        Err(DeviceError::NotAuthenticated)
    );
}

#[test]
fn replayed_uplink_is_rejected_by_the_network() {
    let mut s = Sim::new(4);
    s.authenticate();
    let id = s.device.send_uplink(s.now, b"meter 42").unwrap();
    assert!(s.run_until(Duration::from_secs(10), |s| acked(s, id)));
    let uplink = s.device_sent.last().unwrap().clone();
    let response = s.net_sent.last().unwrap().clone();

    // The same datagram again (a retransmission or a replay): OSCORE replay window; the
    // network answers from its cache and does not deliver it twice.
    s.net.handle_datagram(s.now, &uplink);
    assert_eq!(s.net.replays_rejected, 1);
    assert_eq!(s.net.poll_transmit(), Some(response));
    // A replay under a fresh Message ID: rejected, no answer.
    let mut m = Message::parse(&uplink).unwrap();
    m.message_id = m.message_id.wrapping_add(77);
    s.net.handle_datagram(s.now, &m.encode().unwrap());
    assert_eq!(s.net.replays_rejected, 2);
    assert_eq!(s.net.poll_transmit(), None);
    assert_eq!(s.net.uplinks, vec![b"meter 42".to_vec()]);
    // The device ignores the duplicate response.
    let before = s.events.len();
    s.device.handle_datagram(s.now, s.net_sent.last().unwrap());
    assert_eq!(s.device.poll_event(), None);
    assert_eq!(s.events.len(), before);
}

#[test]
fn tampered_downlink_is_ignored() {
    let mut s = Sim::new(5);
    s.authenticate();
    s.net.queue_downlink(s.now, b"open valve");
    let genuine = s.net.poll_transmit().unwrap();
    // Flip one ciphertext bit, one kid bit, one Partial IV bit: none may get through.
    let n = genuine.len();
    let mut tampered = Vec::new();
    for pos in [n - 1, n - 12, 8, 9, 10] {
        let mut t = genuine.clone();
        t[pos] ^= 0x01;
        tampered.push(t);
    }
    for t in &tampered {
        s.device.handle_datagram(s.now, t);
        assert_eq!(s.device.poll_event(), None);
        assert_eq!(
            s.device.poll_transmit(),
            None,
            "tampered input was answered"
        );
    }
    // The genuine one is delivered once and answered; its retransmission gets the cached
    // answer and is not delivered again.
    s.device.handle_datagram(s.now, &genuine);
    assert_eq!(
        s.device.poll_event(),
        Some(DeviceEvent::Downlink {
            payload: b"open valve".to_vec()
        })
    );
    let answer = s.device.poll_transmit().unwrap();
    s.device.handle_datagram(s.now, &genuine);
    assert_eq!(s.device.poll_event(), None);
    assert_eq!(s.device.poll_transmit(), Some(answer.clone()));
    s.net.handle_datagram(s.now, &answer);
    assert_eq!(s.net.downlink_acks, 1);
}

#[test]
fn reauthenticates_before_the_lifetime_ends_with_fast_reauth() {
    // Lifetime 600 s; the CoAP-EAP peer re-authenticates 300 s before the end.
    let mut s = Sim::with(device_config(), 6, Duration::from_secs(600));
    s.authenticate();
    let first_keys = s.device.dangerous_export_secrets();
    assert!(
        s.run_until(Duration::from_secs(400), |s| s.authenticated_count() >= 2
            && s.net.authenticated >= 2)
    );
    assert_eq!(s.net.methods, vec![Method::Full, Method::FastReauth]);
    assert!(s.device.is_authenticated());
    let second_keys = s.device.dangerous_export_secrets();
    // Re-keyed: the old context is gone and nothing is shared with it.
    assert_eq!(second_keys.len(), 7);
    assert!(second_keys.iter().all(|k| !first_keys.contains(k)));
    assert_eq!(second_keys[0], s.net.msks[1].to_vec());
    // Uplink and downlink work under the new context.
    let id = s.device.send_uplink(s.now, b"after rekey").unwrap();
    assert!(s.run_until(Duration::from_secs(10), |s| acked(s, id)));
    s.net.queue_downlink(s.now, b"hello again");
    assert!(s.run_until(Duration::from_secs(10), |s| s.net.downlink_acks == 1));
    assert_eq!(downlinks(&s), vec![b"hello again".to_vec()]);
    // And it keeps going: a third (fast) authentication later on.
    assert!(s.run_until(Duration::from_secs(400), |s| s.authenticated_count() >= 3));
    assert_eq!(
        s.net.methods,
        vec![Method::Full, Method::FastReauth, Method::FastReauth]
    );
    assert_eq!(s.count(|e| *e == DeviceEvent::SessionExpired), 0);
}

#[test]
fn old_context_serves_uplinks_until_the_new_one_is_confirmed() {
    let mut s = Sim::with(device_config(), 7, Duration::from_secs(600));
    s.authenticate();
    // The re-authentication starts at 300 s; its first trigger is lost.
    s.cut = true;
    s.advance(Duration::from_secs(301));
    s.cut = false;
    assert!(s.device.is_authenticated());
    assert_eq!(s.authenticated_count(), 1);
    // Meanwhile uplinks still go out under the old context and are acknowledged.
    let id = s.device.send_uplink(s.now, b"during reauth").unwrap();
    assert!(s.run_until(Duration::from_secs(5), |s| acked(s, id)));
    assert_eq!(s.net.authenticated, 1);
    assert!(s.run_until(Duration::from_secs(60), |s| s.authenticated_count() >= 2));
    assert_eq!(s.net.uplinks, vec![b"during reauth".to_vec()]);
}

#[test]
fn uplink_straddling_a_rekey_is_reported() {
    let mut s = Sim::new(12);
    s.authenticate();
    // An uplink whose first transmission is lost...
    s.cut = true;
    let id = s.device.send_uplink(s.now, b"straddling").unwrap();
    while s.step() {}
    s.cut = false;
    // ...then a re-authentication (started by the driver) re-keys both sides before the
    // retransmission: the device keeps the old context only to verify the answer.
    s.device.start(s.now);
    while s.step() {}
    assert_eq!(s.authenticated_count(), 2);
    assert_eq!(s.net.methods, vec![Method::Full, Method::FastReauth]);
    assert_eq!(s.device.dangerous_export_secrets().len(), 14);
    // The stand-in network dropped its old context (PROTOCOL.md §3), so the retransmitted
    // bytes never verify: the uplink fails and the old context is released.
    assert!(s
        .run_until(Duration::from_secs(300), |s| s.events.iter().any(
            |e| matches!(e, DeviceEvent::UplinkFailed { id: i, .. } if *i == id)
        )));
    assert!(s.events.contains(&DeviceEvent::UplinkFailed {
        id,
        reason: DeviceError::Timeout
    }));
    assert_eq!(s.device.dangerous_export_secrets().len(), 7);
    assert!(s.net.uplinks.is_empty());
    assert_eq!(s.net.replays_rejected, 0);
    // New uplinks use the new context.
    let id = s.device.send_uplink(s.now, b"fresh").unwrap();
    assert!(s.run_until(Duration::from_secs(5), |s| acked(s, id)));
}

#[test]
fn failed_reauthentication_is_retried_while_the_session_lasts() {
    let mut s = Sim::with(device_config(), 13, Duration::from_secs(600));
    s.authenticate();
    // The link is down when the re-authentication starts (at 300 s): 4 triggers, 10 s apart,
    // go unanswered and CoAP-EAP gives up.
    s.cut = true;
    assert!(s.run_until(Duration::from_secs(360), |s| s
        .events
        .iter()
        .any(|e| matches!(e, DeviceEvent::Failed(_)))));
    assert!(s.events.contains(&DeviceEvent::Failed(DeviceError::CoapEap(
        capillary_coap_eap::PeerFailure::AuthenticatorUnresponsive
    ))));
    assert!(
        s.device.is_authenticated(),
        "the old session is still valid"
    );
    // The link comes back: the device retries by itself and re-keys before the end.
    s.cut = false;
    assert!(s.run_until(Duration::from_secs(200), |s| s.authenticated_count() >= 2));
    assert_eq!(s.count(|e| *e == DeviceEvent::SessionExpired), 0);
    assert_eq!(s.net.methods, vec![Method::Full, Method::FastReauth]);
}

#[test]
fn session_expires_when_the_network_is_gone() {
    let mut s = Sim::with(device_config(), 8, Duration::from_secs(600));
    s.authenticate();
    s.cut = true;
    assert!(s.run_until(Duration::from_secs(700), |s| s
        .events
        .contains(&DeviceEvent::SessionExpired)));
    assert!(!s.device.is_authenticated());
    assert_eq!(
        s.device.send_uplink(s.now, b"x"),
        Err(DeviceError::NotAuthenticated)
    );
    assert!(s.device.dangerous_export_secrets().is_empty());
}

#[test]
fn uplink_gives_up_after_retransmissions() {
    let mut s = Sim::new(9);
    s.authenticate();
    s.cut = true;
    let before = s.device_sent.len();
    let id = s.device.send_uplink(s.now, b"lost").unwrap();
    assert!(s.run_until(Duration::from_secs(300), |s| s.events.contains(
        &DeviceEvent::UplinkFailed {
            id,
            reason: DeviceError::Timeout
        }
    )));
    // RFC 7252 §4.2: 1 + MAX_RETRANSMIT (4) transmissions, all the same bytes.
    let sent = &s.device_sent[before..];
    assert_eq!(sent.len(), 5);
    assert!(sent.iter().all(|b| *b == sent[0]));
}

#[test]
fn resynchronises_after_a_network_sqn_reset() {
    // A full authentication moves the USIM's SQN on; a second network whose HSS restarts at
    // SEQ 1 (and offers no fast re-authentication) triggers AUTS and a resynchronisation.
    let mut s = Sim::new(10);
    s.net.seq = 40;
    s.authenticate();
    let mut net = common::Network::new(99, Duration::from_secs(3600));
    net.server_cfg.fast_reauth = false;
    net.server_cfg.pseudonyms = false;
    s.net = net;
    s.start();
    assert!(
        s.run_until(Duration::from_secs(300), |s| s.authenticated_count() >= 2
            && s.net.authenticated >= 1)
    );
    assert_eq!(s.net.resyncs, 1);
    assert_eq!(s.net.methods, vec![Method::Full]);
}

#[test]
fn payload_limit_and_queue() {
    let mut s = Sim::new(11);
    s.authenticate();
    assert_eq!(
        s.device
            .send_uplink(s.now, &vec![0; MAX_UPLINK_PAYLOAD + 1]),
        Err(DeviceError::PayloadTooLarge {
            len: MAX_UPLINK_PAYLOAD + 1,
            max: MAX_UPLINK_PAYLOAD
        })
    );
    let id = s
        .device
        .send_uplink(s.now, &vec![7; MAX_UPLINK_PAYLOAD])
        .unwrap();
    let wire = s.device.poll_transmit().unwrap();
    assert!(
        wire.len() <= 1152,
        "protected uplink is {} bytes",
        wire.len()
    );
    s.net.handle_datagram(s.now, &wire);
    assert!(s.run_until(Duration::from_secs(10), |s| acked(s, id)));
}

#[test]
fn invalid_config_is_reported_not_panicked() {
    let mut cfg = device_config();
    cfg.usim = UsimConfig {
        ind_len: 17,
        ..UsimConfig::default()
    };
    let mut d = Device::new(cfg, 1);
    d.start(std::time::Instant::now());
    assert!(matches!(
        d.poll_event(),
        Some(DeviceEvent::Failed(DeviceError::InvalidConfig(_)))
    ));
    assert_eq!(d.poll_transmit(), None);
    let mut cfg = device_config();
    cfg.rid_i = vec![0; 8];
    let mut d = Device::new(cfg, 1);
    d.start(std::time::Instant::now());
    assert!(matches!(
        d.poll_event(),
        Some(DeviceEvent::Failed(DeviceError::InvalidConfig(_)))
    ));
}

#[test]
fn config_defaults() {
    let cfg: DeviceConfig = device_config();
    assert_eq!(cfg.realm, "wlan.mnc001.mcc001.3gppnetwork.org");
    assert_eq!(cfg.network_name, "WLAN");
    assert_eq!(cfg.rid_i, vec![0x00, 0x01]);
    assert_eq!(
        cfg.permanent_identity(),
        "6001010000000001@wlan.mnc001.mcc001.3gppnetwork.org"
    );
    let dbg = format!("{cfg:?}");
    let (k, _) = subscriber("set1");
    assert!(!dbg.contains(&k));
}

/// Runs a full scenario (lossy auth, uplinks, downlink) and returns the device's bytes.
fn scenario(seed: u64) -> Vec<Vec<u8>> {
    let mut s = Sim::new(seed);
    s.drop_every = Some(4);
    s.authenticate();
    let a = s.device.send_uplink(s.now, b"one").unwrap();
    let b = s.device.send_uplink(s.now, b"two").unwrap();
    assert!(s.run_until(Duration::from_secs(300), |s| acked(s, a) && acked(s, b)));
    s.net.queue_downlink(s.now, b"three");
    assert!(s.run_until(Duration::from_secs(300), |s| s.net.downlink_acks == 1));
    s.device_sent
}

#[test]
fn same_seed_same_bytes() {
    let a = scenario(42);
    let b = scenario(42);
    assert_eq!(a, b);
    let c = scenario(43);
    assert_ne!(a, c);
}

/// The device's CoAP timers come from its configuration (`DeviceConfig::transmission`):
/// with ACK_TIMEOUT 8 s (random factor 1) an unanswered uplink is sent 5 times over
/// 8 + 16 + 32 + 64 s and fails at 2 × 8 × 2^4 - 8 s = 248 s, not at the default ~93 s.
#[test]
fn uplink_timers_follow_the_configuration() {
    let mut cfg = device_config();
    cfg.transmission.ack_timeout = Duration::from_secs(8);
    cfg.transmission.ack_random_factor = 1.0;
    let mut s = Sim::with(cfg, 9, Duration::from_secs(3600));
    s.authenticate();
    s.cut = true;
    let before = s.device_sent.len();
    let start = s.now;
    let id = s.device.send_uplink(s.now, b"lost").unwrap();
    let failed = DeviceEvent::UplinkFailed {
        id,
        reason: DeviceError::Timeout,
    };
    s.advance(Duration::from_secs(200));
    assert!(!s.events.contains(&failed));
    assert!(s.run_until(Duration::from_secs(100), |s| s.events.contains(&failed)));
    assert!(s.now - start >= Duration::from_secs(240));
    assert_eq!(s.device_sent.len() - before, 5);
}
