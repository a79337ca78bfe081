//! Peer ↔ authenticator in memory with a dummy EAP method (RFC 9820 §3.2 flow).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use capillary_coap::{no_response, Code, Message, MessageType};
use capillary_coap_eap::info::{build_payload, Payload};
use capillary_coap_eap::trigger::{is_trigger, parse_trigger};
use capillary_coap_eap::{
    AuthEvent, AuthFailure, CipherSuite, CoapEapAuthenticator, CoapEapInfo, CoapEapPeer, PeerEvent,
    PeerFailure,
};
use capillary_secrets::Secret;
use common::{Dir, Harness};

#[test]
fn full_flow_message_count_and_keys() {
    let (p, a) = Harness::default_configs();
    let mut h = Harness::new(p, a);
    h.peer.start(h.now);
    h.run_until_done();
    assert_eq!(h.peer_authenticated, 1);
    assert_eq!(h.auth_authenticated, 1);
    assert!(h.peer.is_authenticated() && h.auth.is_authenticated());
    // RFC 9820 Figure 3 with one method round: trigger, 3 × (POST, 2.0x) = 7 messages.
    assert_eq!(h.sent.len(), 7);
    assert_eq!(h.count(Dir::ToAuth), 4);
    assert_eq!(h.count(Dir::ToPeer), 3);

    // Message by message.
    let (d, trig, prot) = &h.sent[0];
    assert_eq!((*d, *prot), (Dir::ToAuth, false));
    assert!(is_trigger(trig));
    assert_eq!(trig.ty, MessageType::Non);
    assert_eq!(no_response::value_of(trig), Some(26));
    assert_eq!(trig.content_format(), Some(269));
    let first = parse_trigger(trig).unwrap();
    assert_eq!(first.to_path_string(), "/a/100");

    let (_, post1, _) = &h.sent[1];
    assert_eq!(post1.code, Code::POST);
    assert_eq!(post1.ty, MessageType::Con);
    assert_eq!(post1.uri_path(), ["a", "100"]);
    let p1 = Payload::parse(&post1.payload).unwrap();
    assert_eq!(p1.eap, [1, 1, 0, 5, 1]);
    let i1 = p1.info.unwrap();
    assert_eq!(i1.cipher_suites, Some(vec![CipherSuite::DEFAULT]));
    assert_eq!(i1.rid_c, Some(vec![0x02]));

    let (_, resp1, _) = &h.sent[2];
    assert_eq!(resp1.ty, MessageType::Ack);
    assert_eq!(resp1.message_id, post1.message_id);
    assert_eq!(resp1.token, post1.token);
    assert_eq!(resp1.code, Code::CREATED);
    assert_eq!(resp1.location_path(), ["a", "101"]);
    assert_eq!(resp1.content_format(), Some(269));
    assert_eq!(post1.content_format(), Some(269));
    let r1 = Payload::parse(&resp1.payload).unwrap();
    let ri = r1.info.unwrap();
    assert_eq!(ri.cipher_suites, Some(vec![CipherSuite::DEFAULT]));
    assert_eq!(ri.rid_i, Some(vec![0x01]));

    let (_, post2, _) = &h.sent[3];
    assert_eq!(post2.uri_path(), ["a", "101"]);
    assert_eq!(Payload::parse(&post2.payload).unwrap().info, None);

    let (_, post3, prot3) = &h.sent[5];
    assert!(*prot3, "EAP-Success is OSCORE-protected");
    let p3 = Payload::parse(&post3.payload).unwrap();
    assert_eq!(p3.eap_code(), 3);
    assert_eq!(p3.info.unwrap().session_lifetime, Some(24 * 3600));
    let (_, fin, protf) = &h.sent[6];
    assert!(*protf);
    assert_eq!(fin.code, Code::CHANGED);
    assert!(fin.location_path().is_empty());

    // Both sides hold the same OSCORE input, IDs mirrored (RFC 9820 §6.2).
    let pk = h.peer_keys.as_ref().unwrap();
    let ak = h.auth_keys.as_ref().unwrap();
    assert_eq!(pk.sender_id, vec![0x02]);
    assert_eq!(pk.recipient_id, vec![0x01]);
    assert_eq!(ak.sender_id, vec![0x01]);
    assert_eq!(ak.recipient_id, vec![0x02]);
    assert_eq!(pk.master_secret.expose(), ak.master_secret.expose());
    assert!(format!("{pk:?}").contains("MasterSecret(..)"));
    assert_eq!(h.peer_eap_requests, 2);
    assert_eq!(h.auth_eap_responses, 2);
}

#[test]
fn lost_request_is_retransmitted() {
    let (p, a) = Harness::default_configs();
    let mut h = Harness::new(p, a);
    h.drop = vec![1]; // the first POST
    h.peer.start(h.now);
    h.run_until_done();
    assert_eq!((h.peer_authenticated, h.auth_authenticated), (1, 1));
    assert_eq!(h.sent.len(), 8);
    assert_eq!(h.sent[1].1.message_id, h.sent[2].1.message_id, "same MID");
    assert_eq!(h.peer_eap_requests, 2);
}

#[test]
fn lost_response_is_answered_from_cache() {
    let (p, a) = Harness::default_configs();
    let mut h = Harness::new(p, a);
    h.drop = vec![2, 4]; // first 2.01 and second 2.01
    h.peer.start(h.now);
    h.run_until_done();
    assert_eq!((h.peer_authenticated, h.auth_authenticated), (1, 1));
    assert_eq!(h.sent.len(), 11);
    // The EAP method ran once per request despite the retransmissions.
    assert_eq!(h.peer_eap_requests, 2);
    assert_eq!(h.auth_eap_responses, 2);
    assert_eq!(h.sent[2].1.payload, h.sent[4].1.payload, "cached answer");
}

#[test]
fn lost_final_response_is_repeated_under_oscore() {
    let (p, a) = Harness::default_configs();
    let mut h = Harness::new(p, a);
    h.drop = vec![6]; // the protected 2.04
    h.peer.start(h.now);
    h.run_until_done();
    assert_eq!((h.peer_authenticated, h.auth_authenticated), (1, 1));
    assert_eq!(h.sent.len(), 9);
    assert!(h.sent[8].2, "repeat is protected too");
}

#[test]
fn lost_trigger_is_repeated() {
    let (p, a) = Harness::default_configs();
    let mut h = Harness::new(p, a);
    h.drop = vec![0];
    h.peer.start(h.now);
    h.run_until_done();
    assert_eq!((h.peer_authenticated, h.auth_authenticated), (1, 1));
    assert!(is_trigger(&h.sent[1].1));
    assert_eq!(
        h.sent[0].1.payload, h.sent[1].1.payload,
        "same first resource"
    );
    assert_eq!(h.triggered, 1);
}

#[test]
fn every_message_duplicated() {
    let (p, a) = Harness::default_configs();
    let mut h = Harness::new(p, a);
    h.duplicate_all = true;
    h.peer.start(h.now);
    h.run_until_done();
    assert_eq!((h.peer_authenticated, h.auth_authenticated), (1, 1));
    assert_eq!(h.peer_eap_requests, 2);
    assert_eq!(h.auth_eap_responses, 2);
    assert_eq!(h.triggered, 1);
    assert!(h.peer_failed.is_none() && h.auth_failed.is_none());
}

#[test]
fn non_confirmable_mode() {
    let (p, mut a) = Harness::default_configs();
    a.confirmable = false;
    let mut h = Harness::new(p, a);
    h.drop = vec![2];
    h.peer.start(h.now);
    h.run_until_done();
    assert_eq!((h.peer_authenticated, h.auth_authenticated), (1, 1));
    assert!(h.sent.iter().all(|(_, m, _)| m.ty == MessageType::Non));
}

#[test]
fn eap_failure() {
    let (p, a) = Harness::default_configs();
    let mut h = Harness::new(p, a);
    h.server.reject = true;
    h.peer.start(h.now);
    h.run_for(Duration::from_secs(30));
    assert_eq!(h.peer_failed, Some(PeerFailure::EapFailure));
    assert_eq!(h.auth_failed, Some(AuthFailure::EapFailureSent));
    assert!(h.peer_keys.is_none() || h.auth_keys.is_none());
    assert_eq!(h.sent.len(), 7);
    assert!(!h.sent[5].2, "EAP-Failure is not protected");
}

#[test]
fn no_common_cipher_suite() {
    let (p, mut a) = Harness::default_configs();
    a.cipher_suites = vec![CipherSuite::A128GCM_SHA256];
    let mut h = Harness::new(p, a);
    h.peer.start(h.now);
    h.run_until_done();
    assert_eq!(h.peer_failed, Some(PeerFailure::NoCommonCipherSuite));
    assert_eq!(
        h.auth_failed,
        Some(AuthFailure::PeerRejected(Code::BAD_REQUEST))
    );
}

#[test]
fn negotiates_preferred_common_suite() {
    let (mut p, mut a) = Harness::default_configs();
    a.cipher_suites = vec![CipherSuite(3), CipherSuite(1), CipherSuite(0)];
    p.cipher_suites = vec![CipherSuite(0), CipherSuite(1)];
    let mut h = Harness::new(p, a);
    h.peer.start(h.now);
    h.run_until_done();
    assert_eq!((h.peer_authenticated, h.auth_authenticated), (1, 1));
    assert_eq!(
        h.peer_keys.as_ref().unwrap().cipher_suite,
        CipherSuite::A128GCM_SHA256
    );
}

/// The authenticator refuses a suite it did not offer.
#[test]
fn authenticator_rejects_unoffered_suite() {
    let (_, a) = Harness::default_configs();
    let mut auth = CoapEapAuthenticator::new(a);
    let now = std::time::Instant::now();
    let trig = capillary_coap_eap::trigger::build_trigger(
        1,
        vec![],
        &capillary_coap_eap::trigger::ResourcePath(vec!["x".into()]),
    );
    auth.handle_message(now, &trig);
    assert!(matches!(
        auth.poll_event(),
        Some(AuthEvent::Triggered { .. })
    ));
    auth.send_eap_request(now, &[1, 1, 0, 5, 1]).unwrap();
    let Some(AuthEvent::Transmit(post)) = auth.poll_event() else {
        panic!()
    };
    let mut resp = Message::response_to(&post, Code::CREATED, 0);
    resp.set_location_path("x/2");
    resp.payload = build_payload(
        &[2, 1, 0, 5, 1],
        &CoapEapInfo {
            cipher_suites: Some(vec![CipherSuite(2)]),
            rid_i: Some(vec![9]),
            ..Default::default()
        },
    );
    auth.handle_message(now, &resp);
    assert!(matches!(
        auth.poll_event(),
        Some(AuthEvent::Failed(AuthFailure::CipherSuiteMismatch))
    ));
}

#[test]
fn unresponsive_authenticator() {
    let (p, _) = Harness::default_configs();
    let mut peer = CoapEapPeer::new(p);
    let mut now = std::time::Instant::now();
    peer.start(now);
    let mut triggers = 0;
    let mut failed = None;
    for _ in 0..10 {
        while let Some(ev) = peer.poll_event() {
            match ev {
                PeerEvent::Transmit(m) if is_trigger(&m) => triggers += 1,
                PeerEvent::Failed(f) => failed = Some(f),
                _ => {}
            }
        }
        let Some(t) = peer.poll_timeout() else { break };
        now = t;
        peer.handle_timeout(now);
    }
    assert_eq!(triggers, 4);
    assert_eq!(failed, Some(PeerFailure::AuthenticatorUnresponsive));
}

#[test]
fn unresponsive_peer() {
    let (p, a) = Harness::default_configs();
    let mut h = Harness::new(p, a);
    h.drop = (2..100).collect(); // nothing from the first POST on reaches anybody
    h.peer.start(h.now);
    h.run_for(Duration::from_secs(120));
    assert_eq!(h.auth_failed, Some(AuthFailure::PeerUnresponsive));
    // 1 POST + 4 retransmissions (RFC 7252 MAX_RETRANSMIT).
    let posts = h
        .sent
        .iter()
        .filter(|(d, m, _)| *d == Dir::ToPeer && m.code == Code::POST)
        .count();
    assert_eq!(posts, 5);
    assert_eq!(h.peer_failed, Some(PeerFailure::Timeout));
}

#[test]
fn plaintext_success_is_refused() {
    let (p, a) = Harness::default_configs();
    let mut peer = CoapEapPeer::new(p);
    let now = std::time::Instant::now();
    peer.start(now);
    while peer.poll_event().is_some() {}
    let mut post = Message::new(MessageType::Con, Code::POST, 5, vec![1]);
    post.set_uri_path("a/100");
    post.payload = build_payload(
        &[1, 1, 0, 5, 1],
        &CoapEapInfo {
            rid_c: Some(vec![7]),
            ..Default::default()
        },
    );
    peer.handle_message(now, &post);
    assert!(matches!(peer.poll_event(), Some(PeerEvent::EapRequest(_))));
    peer.provide_eap_response(now, &[2, 1, 0, 5, 1]).unwrap();
    peer.provide_msk(&capillary_secrets::Msk::from_bytes([1; 64]))
        .unwrap();
    while peer.poll_event().is_some() {}
    let mut succ = Message::new(MessageType::Con, Code::POST, 6, vec![2]);
    succ.set_uri_path("a/101");
    succ.payload = vec![3, 1, 0, 4];
    peer.handle_message(now, &succ);
    let Some(PeerEvent::Transmit(r)) = peer.poll_event() else {
        panic!()
    };
    assert_eq!(r.code, Code::UNAUTHORIZED);
    assert!(!peer.is_authenticated());
    // The same request under OSCORE is accepted.
    peer.handle_oscore_message(now, &succ);
    let Some(PeerEvent::TransmitProtected(r)) = peer.poll_event() else {
        panic!()
    };
    assert_eq!(r.code, Code::CHANGED);
    assert!(peer.is_authenticated());
    let _ = a;
}

#[test]
fn session_lifetime_triggers_reauthentication() {
    let (mut p, mut a) = Harness::default_configs();
    a.session_lifetime = Duration::from_secs(600);
    p.reauth_margin = Duration::from_secs(60);
    let mut h = Harness::new(p, a);
    h.peer.start(h.now);
    h.run_until_done();
    assert_eq!((h.peer_authenticated, h.auth_authenticated), (1, 1));
    let before = h
        .peer_keys
        .as_ref()
        .unwrap()
        .master_secret
        .expose()
        .to_vec();
    let n = h.sent.len();
    h.run_for(Duration::from_secs(560));
    assert_eq!(h.triggered, 2, "device re-triggered before expiry");
    assert_eq!((h.peer_authenticated, h.auth_authenticated), (2, 2));
    assert_eq!(h.sent.len(), n + 7);
    assert_eq!(h.peer_expired, 0);
    assert_eq!(h.sent[n].1.payload, b"/a/103".to_vec(), "fresh resources");
    // Same dummy MSK → same keys; with a real method they differ.
    assert_eq!(
        before,
        h.peer_keys
            .as_ref()
            .unwrap()
            .master_secret
            .expose()
            .to_vec()
    );
}

#[test]
fn session_expires_without_reauthentication() {
    let (mut p, mut a) = Harness::default_configs();
    a.session_lifetime = Duration::from_secs(600);
    p.reauth_margin = Duration::from_secs(60);
    let mut h = Harness::new(p, a);
    h.peer.start(h.now);
    h.run_until_done();
    let n = h.sent.len();
    h.drop = (n..n + 100).collect();
    h.run_for(Duration::from_secs(700));
    assert_eq!(h.peer_expired, 1);
}

#[test]
fn api_misuse_is_an_error() {
    let (p, a) = Harness::default_configs();
    let mut peer = CoapEapPeer::new(p);
    assert!(peer
        .provide_eap_response(std::time::Instant::now(), &[2, 1, 0, 4])
        .is_err());
    assert!(peer
        .provide_msk(&capillary_secrets::Msk::from_bytes([0; 64]))
        .is_err());
    let mut auth = CoapEapAuthenticator::new(a);
    assert!(auth
        .send_eap_request(std::time::Instant::now(), &[1, 1, 0, 4])
        .is_err());
}
