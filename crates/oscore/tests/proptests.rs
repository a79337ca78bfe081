//! Property tests: no panic on arbitrary input, typed errors, round trips.

#![allow(clippy::unwrap_used)]

mod common;

use capillary_coap::msg::{option_number as num, Code, Message, MessageType};
use capillary_oscore::OscoreOption;
use common::c1_pair;
use proptest::prelude::*;

fn valid_request() -> Message {
    let mut m = Message::new(MessageType::Con, Code::GET, 0x5d1f, vec![0, 0, 0x39, 0x74]);
    m.add_option(num::URI_HOST, b"localhost".to_vec());
    m.set_uri_path("/tv1");
    m.payload = b"payload".to_vec();
    m
}

const NUMBERS: &[u16] = &[
    num::IF_MATCH,
    num::URI_HOST,
    num::ETAG,
    num::IF_NONE_MATCH,
    num::OBSERVE,
    num::URI_PORT,
    num::LOCATION_PATH,
    num::URI_PATH,
    num::CONTENT_FORMAT,
    num::MAX_AGE,
    num::URI_QUERY,
    num::HOP_LIMIT,
    num::ACCEPT,
    num::LOCATION_QUERY,
    num::BLOCK2,
    num::BLOCK1,
    num::SIZE2,
    num::PROXY_SCHEME,
    num::SIZE1,
    num::ECHO,
    num::NO_RESPONSE,
    num::REQUEST_TAG,
    65000,
];

fn arb_message(request: bool) -> impl Strategy<Value = Message> {
    (
        0u8..4,
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..=8),
        proptest::collection::vec(
            (
                proptest::sample::select(NUMBERS),
                proptest::collection::vec(any::<u8>(), 0..20),
            ),
            0..8,
        ),
        proptest::collection::vec(any::<u8>(), 0..100),
        if request {
            (1u8..=7).boxed()
        } else {
            (0x40u8..=0xbf).boxed()
        },
    )
        .prop_map(move |(ty, mid, token, opts, payload, code)| {
            let mut m = Message::new(MessageType::from_bits(ty), Code(code), mid, token);
            for (n, v) in opts {
                // Notifications are covered in tests/behaviour.rs (their Observe value is
                // rewritten, RFC 8613 §4.1.3.5.2).
                if request || n != num::OBSERVE {
                    m.add_option(n, v);
                }
            }
            m.payload = payload;
            m
        })
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (mut c, mut s) = c1_pair();
        if let Ok(m) = Message::parse(&bytes) {
            let r = s.unprotect_request(&m);
            if let Err(e) = &r {
                let _ = (e.to_coap_code(), e.error_response(&m, 1), e.to_string());
            }
            let (_, mut b) = c.protect_request(&valid_request()).unwrap();
            let _ = c.unprotect_response(&m, &mut b);
        }
    }

    #[test]
    fn arbitrary_option_and_payload_never_panic(
        opt in proptest::collection::vec(any::<u8>(), 0..40),
        payload in proptest::collection::vec(any::<u8>(), 0..60),
    ) {
        let (mut c, mut s) = c1_pair();
        let mut m = valid_request();
        m.code = Code::POST;
        m.add_option(num::OSCORE, opt.clone());
        m.payload = payload;
        let r = s.unprotect_request(&m);
        prop_assert!(r.is_err(), "random ciphertext must not verify");
        prop_assert_eq!(s.replay_high_water(), None);
        let (_, mut b) = c.protect_request(&valid_request()).unwrap();
        prop_assert!(c.unprotect_response(&m, &mut b).is_err());
        if let Ok(o) = OscoreOption::decode(&opt) {
            prop_assert_eq!(o.encode(), opt);
        }
    }

    #[test]
    fn flipped_byte_is_rejected_or_harmless(pos in any::<usize>(), bit in 0u8..8) {
        let (mut c, mut s) = c1_pair();
        let orig = valid_request();
        let (wire, _) = c.protect_request(&orig).unwrap();
        let mut bytes = wire.encode().unwrap();
        let i = pos % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Ok(m) = Message::parse(&bytes) {
            match s.unprotect_request(&m) {
                Ok((got, _)) => {
                    // Only unprotected outer fields (header, token, Uri-Host) may differ.
                    prop_assert_eq!(got.code, orig.code);
                    prop_assert_eq!(&got.payload, &orig.payload);
                    prop_assert_eq!(got.uri_path(), orig.uri_path());
                }
                Err(e) => {
                    prop_assert!(e.is_peer_error(), "{:?}", e);
                    prop_assert_eq!(s.replay_high_water(), None);
                }
            }
        }
    }

    #[test]
    fn protect_unprotect_round_trip(req in arb_message(true), resp in arb_message(false), fresh in any::<bool>()) {
        let (mut c, mut s) = c1_pair();
        let (wire, mut cb) = c.protect_request(&req).unwrap();
        let wire = Message::parse(&wire.encode().unwrap()).unwrap();
        let (got, sb) = s.unprotect_request(&wire).unwrap();
        prop_assert_eq!(&got, &req);
        let rwire = s.protect_response(&resp, &sb, fresh).unwrap();
        let rwire = Message::parse(&rwire.encode().unwrap()).unwrap();
        prop_assert_eq!(c.unprotect_response(&rwire, &mut cb).unwrap(), resp);
    }
}
