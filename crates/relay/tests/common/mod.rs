//! Strategies shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use capillary_coap::{Code, Message, MessageType};
use capillary_relay::batch::MAX_COAP_BODY;
use capillary_relay::{Entry, EntryKind, OutcomeResult};
use proptest::prelude::*;

/// A CoAP message (RFC 7252 §3) that `Message::parse` accepts, at most `MAX_COAP_BODY` bytes.
pub fn coap_message(max_payload: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..4,
        prop_oneof![
            Just(Code::POST),
            Just(Code::GET),
            Just(Code::CHANGED),
            Just(Code::CONTENT)
        ],
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..=8),
        proptest::collection::vec(any::<u8>(), 0..=max_payload),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
    )
        .prop_map(|(ty, code, mid, token, payload, opt)| {
            let mut m = Message::new(MessageType::from_bits(ty), code, mid, token);
            if let Some(v) = opt {
                m.add_option(11, v);
            }
            m.payload = payload;
            let bytes = m.encode().unwrap();
            bytes[..bytes.len().min(MAX_COAP_BODY)].to_vec()
        })
        .prop_filter("parses", |b| Message::parse(b).is_ok())
}

/// Any valid entry.
pub fn entry() -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![
        coap_message(1100).prop_map(EntryKind::Coap),
        (any::<u8>(), proptest::option::of(any::<u32>())).prop_map(|(c, session_lifetime)| {
            EntryKind::Outcome {
                result: OutcomeResult::from_code(c),
                session_lifetime,
            }
        }),
        Just(EntryKind::Gone),
        (coap_message(300), coap_message(300))
            .prop_map(|(request, response)| EntryKind::Identity { request, response }),
        (
            4u64..=u64::MAX,
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(kind, b)| {
                // body: a bstr holding b
                let mut body = Vec::new();
                let v = ciborium::value::Value::Bytes(b);
                ciborium::ser::into_writer(&v, &mut body).unwrap();
                EntryKind::Unknown { kind, body }
            }),
    ];
    (any::<u32>(), kind).prop_map(|(handle, kind)| Entry { handle, kind })
}

/// A minimal valid CoAP message: CON GET, Message ID 0x1234, no token (4 bytes).
pub const COAP_GET: [u8; 4] = [0x40, 0x01, 0x12, 0x34];

/// A CoAP message of exactly `len` bytes (>= 6): NON POST, no token, payload marker + payload.
pub fn coap_of_len(len: usize) -> Vec<u8> {
    assert!(len >= 6);
    let mut m = vec![0x50, 0x02, 0x00, 0x01, 0xff];
    m.resize(len, 0xab);
    m
}
