//! Property tests: every valid message round-trips; arbitrary bytes never panic, and whatever
//! parses re-encodes to the same bytes (the RFC 7252 §3 encoding is canonical).
#![allow(clippy::unwrap_used)] // tests may unwrap (house rules)

use capillary_coap::msg::{parse_options, Code, Message, MessageType};
use proptest::prelude::*;

fn msg_type() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        Just(MessageType::Con),
        Just(MessageType::Non),
        Just(MessageType::Ack),
        Just(MessageType::Rst)
    ]
}

fn option_number() -> impl Strategy<Value = u16> {
    prop_oneof![0u16..=30, 0u16..=300, 250u16..=300, any::<u16>()]
}

fn option_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..=16),
        1 => prop::collection::vec(any::<u8>(), 10..=300),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let non_empty = (
        msg_type(),
        1u8..=255,
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..=8),
        prop::collection::vec((option_number(), option_value()), 0..8),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(ty, code, mid, token, opts, payload)| {
            let mut m = Message::new(ty, Code(code), mid, token);
            for (n, v) in opts {
                m.add_option(n, v);
            }
            m.payload = payload;
            m
        });
    let empty = (msg_type(), any::<u16>())
        .prop_map(|(ty, mid)| Message::new(ty, Code::EMPTY, mid, Vec::new()));
    prop_oneof![9 => non_empty, 1 => empty]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn roundtrip(m in message()) {
        let bytes = m.encode().unwrap();
        let p = Message::parse(&bytes).unwrap();
        prop_assert_eq!(&p, &m);
        prop_assert_eq!(p.encode().unwrap(), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        if let Ok(m) = Message::parse(&bytes) {
            prop_assert_eq!(m.encode().unwrap(), bytes.clone());
        }
        let _ = parse_options(&bytes);
        let _ = capillary_coap::msg::rejection_for(&bytes);
    }

    #[test]
    fn header_like_bytes_never_panic(
        b0 in 0x40u8..=0x7f,
        code in any::<u8>(),
        rest in prop::collection::vec(any::<u8>(), 0..96),
    ) {
        let mut bytes = vec![b0, code, 0, 1];
        bytes.extend(rest);
        if let Ok(m) = Message::parse(&bytes) {
            prop_assert_eq!(m.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        m in message(),
        idx in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = m.encode().unwrap();
        let i = idx.index(bytes.len());
        bytes[i] ^= flip;
        let n = cut.index(bytes.len() + 1);
        for candidate in [&bytes[..], &bytes[..n]] {
            if let Ok(p) = Message::parse(candidate) {
                prop_assert_eq!(p.encode().unwrap(), candidate.to_vec());
            }
        }
    }
}
