//! Arbitrary input never panics: the CBOR info decoder, the payload split, and both state
//! machines fed arbitrary (parsable) CoAP messages, plain and "OSCORE-verified", in several
//! states.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use capillary_coap::{Code, Message, MessageType};
use capillary_coap_eap::info::{build_payload, Payload};
use capillary_coap_eap::{
    AuthenticatorConfig, CoapEapAuthenticator, CoapEapInfo, CoapEapPeer, PeerConfig,
};
use capillary_secrets::Msk;
use proptest::prelude::*;

fn any_message() -> impl Strategy<Value = Message> {
    (
        0u8..4,
        any::<u8>(),
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..3),
        proptest::collection::vec(
            (
                prop_oneof![
                    Just(8u16),
                    Just(11),
                    Just(12),
                    Just(9),
                    Just(258),
                    any::<u16>()
                ],
                proptest::collection::vec(any::<u8>(), 0..6),
            ),
            0..4,
        ),
        proptest::collection::vec(any::<u8>(), 0..40),
        any::<bool>(),
    )
        .prop_map(|(ty, code, mid, token, opts, payload, wellformed)| {
            let code = if wellformed { Code::POST } else { Code(code) };
            let mut m = Message::new(MessageType::from_bits(ty), code, mid, token);
            for (n, v) in opts {
                m.add_option(n, v);
            }
            if wellformed {
                m.set_uri_path("a/100");
                // An EAP header with a random code/length, maybe followed by CBOR.
                let mut p = payload;
                if p.len() >= 4 {
                    p[0] %= 6;
                }
                m.payload = p;
            } else {
                m.payload = payload;
            }
            m
        })
}

fn peer_in_exchange(now: Instant) -> CoapEapPeer {
    let mut peer = CoapEapPeer::new(PeerConfig::new(vec![1], 100, 1));
    peer.start(now);
    while peer.poll_event().is_some() {}
    peer
}

fn auth_waiting(now: Instant) -> CoapEapAuthenticator {
    let mut auth = CoapEapAuthenticator::new(AuthenticatorConfig::new(vec![2], 1, 1));
    let trig = capillary_coap_eap::trigger::build_trigger(
        1,
        vec![],
        &capillary_coap_eap::trigger::ResourcePath(vec!["a".into(), "100".into()]),
    );
    auth.handle_message(now, &trig);
    while auth.poll_event().is_some() {}
    auth.send_eap_request(now, &[1, 1, 0, 5, 1]).unwrap();
    while auth.poll_event().is_some() {}
    auth
}

proptest! {
    #[test]
    fn info_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = CoapEapInfo::decode(&bytes);
        let _ = Payload::parse(&bytes);
    }

    #[test]
    fn info_round_trips(
        cs in proptest::option::of(proptest::collection::vec(any::<i32>(), 1..5)),
        rc in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        ri in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        life in proptest::option::of(any::<u64>()),
    ) {
        let info = CoapEapInfo {
            cipher_suites: cs.map(|v| v.into_iter().map(capillary_coap_eap::CipherSuite).collect()),
            rid_c: rc,
            rid_i: ri,
            session_lifetime: life,
        };
        let bytes = info.encode();
        prop_assert_eq!(CoapEapInfo::decode(&bytes).unwrap(), info.clone());
        let p = build_payload(&[2, 9, 0, 4], &info);
        let parsed = Payload::parse(&p).unwrap();
        prop_assert_eq!(parsed.eap, &[2u8, 9, 0, 4][..]);
    }

    #[test]
    fn state_machines_never_panic(
        msgs in proptest::collection::vec((any_message(), any::<bool>(), 0u64..5), 1..12),
        raw in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..60), 0..4),
    ) {
        let mut now = Instant::now();
        let mut fresh_peer = CoapEapPeer::new(PeerConfig::new(vec![1], 7, 1));
        let mut peer = peer_in_exchange(now);
        let mut fresh_auth = CoapEapAuthenticator::new(AuthenticatorConfig::new(vec![2], 1, 1));
        let mut auth = auth_waiting(now);
        let parsed: Vec<Message> = raw.iter().filter_map(|b| Message::parse(b).ok()).collect();
        let all = msgs.into_iter().chain(parsed.into_iter().map(|m| (m, false, 0)));
        for (m, oscore, dt) in all {
            now += Duration::from_secs(dt);
            for p in [&mut fresh_peer, &mut peer] {
                if oscore { p.handle_oscore_message(now, &m) } else { p.handle_message(now, &m) }
                p.handle_timeout(now);
                let _ = p.provide_eap_response(now, &[2, 1, 0, 4]);
                let _ = p.provide_msk(&Msk::from_bytes([3; 64]));
                while p.poll_event().is_some() {}
            }
            for a in [&mut fresh_auth, &mut auth] {
                if oscore { a.handle_oscore_message(now, &m) } else { a.handle_message(now, &m) }
                a.handle_timeout(now);
                let _ = a.send_eap_request(now, &[1, 2, 0, 4]);
                let _ = a.send_eap_success(now, &[3, 2, 0, 4], &Msk::from_bytes([3; 64]));
                while a.poll_event().is_some() {}
            }
        }
    }
}
