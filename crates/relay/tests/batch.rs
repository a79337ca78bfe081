//! Batch codec (PROTOCOL.md §4): fixtures, limits, versioning, unknown kinds, per-entry
//! isolation, robustness.
#![allow(clippy::unwrap_used)]

mod common;

use capillary_coap::Code;
use capillary_relay::batch::{MAX_BATCH_BYTES, MAX_COAP_BODY, MAX_ENTRIES};
use capillary_relay::{Batch, DecodedBatch, Entry, EntryKind, OutcomeResult, RelayError};
use ciborium::value::Value;
use common::{coap_of_len, entry, COAP_GET};
use proptest::prelude::*;

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).unwrap()
}

/// Parse with ciborium and re-serialize: an independent encoder/decoder must agree with ours
/// byte for byte (both use preferred serialization, RFC 8949 §4.2.1).
fn ciborium_roundtrip(bytes: &[u8]) -> Vec<u8> {
    let v: Value = ciborium::de::from_reader(bytes).unwrap();
    let mut out = Vec::new();
    ciborium::ser::into_writer(&v, &mut out).unwrap();
    out
}

// Fixture 1, hand-computed (RFC 8949 §3):
//   82              array(2)                    batch
//   01              1                           version
//   82              array(2)                    entries
//   83              array(3)                    entry 1
//   07              7                             handle
//   00              0                             kind coap
//   44 40011234     bstr(4)                       CON GET, MID 0x1234, no token (RFC 7252 §3)
//   83              array(3)                    entry 2
//   19 012c         300                           handle
//   01              1                             kind outcome
//   a2              map(2)
//   01 00           1: 0                            result authenticated
//   02 19 0e10      2: 3600                         session_lifetime
const FIXTURE_1: &str = "82 01 82 83 07 00 44 40011234 83 19012c 01 a2 0100 02190e10";

fn fixture_1_batch() -> Batch {
    Batch::new(vec![
        Entry::coap(7, COAP_GET.to_vec()),
        Entry {
            handle: 300,
            kind: EntryKind::Outcome {
                result: OutcomeResult::Authenticated,
                session_lifetime: Some(3600),
            },
        },
    ])
}

// Fixture 2, hand-computed:
//   82 01 82                     batch, version 1, 2 entries
//   83 05 03                     handle 5, kind 3 identity
//   a2                           map(2)
//   01 44 40020001                 1: request: CoAP CON POST, Message ID 1 (RFC 7252 §3)
//   02 44 60410001                 2: response: CoAP ACK 2.01, Message ID 1
//   83 18 2a 02 40               handle 42, kind 2 gone, body h''
const FIXTURE_2: &str = "82 01 82 83 05 03 a2 01 44 40020001 02 44 60410001 83 182a 02 40";

fn fixture_2_batch() -> Batch {
    Batch::new(vec![
        Entry {
            handle: 5,
            kind: EntryKind::Identity {
                request: unhex("40020001"),
                response: unhex("60410001"),
            },
        },
        Entry::gone(42),
    ])
}

#[test]
fn fixtures_encode_and_decode() {
    for (hex, batch) in [
        (FIXTURE_1, fixture_1_batch()),
        (FIXTURE_2, fixture_2_batch()),
    ] {
        let bytes = unhex(hex);
        assert_eq!(batch.encode().unwrap(), bytes);
        assert_eq!(batch.encoded_len(), bytes.len());
        assert_eq!(Batch::decode(&bytes).unwrap(), batch);
        assert_eq!(ciborium_roundtrip(&bytes), bytes);
    }
    assert_eq!(unhex(FIXTURE_1).len(), 23);
}

#[test]
fn fixture_1_matches_ciborium_value() {
    let v: Value = ciborium::de::from_reader(&unhex(FIXTURE_1)[..]).unwrap();
    let expected = Value::Array(vec![
        Value::Integer(1.into()),
        Value::Array(vec![
            Value::Array(vec![
                Value::Integer(7.into()),
                Value::Integer(0.into()),
                Value::Bytes(COAP_GET.to_vec()),
            ]),
            Value::Array(vec![
                Value::Integer(300.into()),
                Value::Integer(1.into()),
                Value::Map(vec![
                    (Value::Integer(1.into()), Value::Integer(0.into())),
                    (Value::Integer(2.into()), Value::Integer(3600.into())),
                ]),
            ]),
        ]),
    ]);
    assert_eq!(v, expected);
}

#[test]
fn accepts_other_map_order_and_unknown_map_keys() {
    // [1, [[300, 1, {2: 3600, 9: "x", 1: 0}]]]
    let bytes = unhex("82 01 81 83 19012c 01 a3 02190e10 09 6178 0100");
    let b = Batch::decode(&bytes).unwrap();
    assert_eq!(b.entries, fixture_1_batch().entries[1..]);
}

#[test]
fn accepts_non_preferred_heads() {
    // [1, [[7, 0, h'40011234']]] with the handle as a 4-byte uint and the bstr length as 1-byte.
    let bytes = unhex("82 01 81 83 1a00000007 00 5804 40011234");
    let b = Batch::decode(&bytes).unwrap();
    assert_eq!(b.entries, vec![Entry::coap(7, COAP_GET.to_vec())]);
}

#[test]
fn empty_batch() {
    let b = Batch::new(vec![]);
    assert_eq!(b.encode().unwrap(), unhex("82 01 80"));
    assert_eq!(Batch::decode(&unhex("82 01 80")).unwrap(), b);
}

// ---- limits (§4) ---------------------------------------------------------------------------

fn gone_entries(n: usize) -> Vec<Entry> {
    (0..n as u32).map(Entry::gone).collect()
}

#[test]
fn entry_count_boundary() {
    let ok = Batch::new(gone_entries(MAX_ENTRIES));
    let bytes = ok.encode().unwrap();
    assert_eq!(bytes.len(), ok.encoded_len());
    assert_eq!(Batch::decode(&bytes).unwrap(), ok);

    let over = Batch::new(gone_entries(MAX_ENTRIES + 1));
    let err = over.encode().unwrap_err();
    assert_eq!(
        err,
        RelayError::TooManyEntries {
            count: 1025,
            max: 1024
        }
    );
    assert_eq!(err.to_coap_code(), Code::REQUEST_ENTITY_TOO_LARGE);

    // Hand-build the 1,025-entry batch: the entries array head says 1025 (0x99 0401).
    let mut bytes = unhex("82 01 99 0401");
    for e in over.entries {
        bytes.extend_from_slice(&Batch::new(vec![e]).encode().unwrap()[3..]);
    }
    let err = DecodedBatch::decode(&bytes).unwrap_err();
    assert!(matches!(
        err,
        RelayError::TooManyEntries { count: 1025, .. }
    ));
    assert_eq!(err.to_coap_code(), Code::REQUEST_ENTITY_TOO_LARGE);
    // A lying count is refused from the head alone.
    let err = DecodedBatch::decode(&unhex("82 01 9a ffffffff")).unwrap_err();
    assert!(matches!(err, RelayError::TooManyEntries { .. }));
}

/// A one-entry batch of exactly `total` bytes: `[1, [[0, 9, h'..']]]`, unknown kind 9 whose
/// body is a byte string (9 bytes of framing for bodies of 256..=65535 bytes).
fn batch_of_len(total: usize) -> Batch {
    let n = total - 9;
    let mut body = vec![0x59];
    body.extend_from_slice(&(n as u16).to_be_bytes());
    body.resize(3 + n, 0x5a);
    let b = Batch::new(vec![Entry {
        handle: 0,
        kind: EntryKind::Unknown { kind: 9, body },
    }]);
    assert_eq!(b.encoded_len(), total);
    b
}

#[test]
fn byte_size_boundary() {
    let ok = batch_of_len(MAX_BATCH_BYTES);
    let bytes = ok.encode().unwrap();
    assert_eq!(bytes.len(), 65_536);
    assert_eq!(DecodedBatch::decode(&bytes).unwrap().entries, ok.entries);

    let over = batch_of_len(MAX_BATCH_BYTES + 1);
    assert_eq!(
        over.encode().unwrap_err(),
        RelayError::BatchTooLarge {
            len: 65_537,
            max: 65_536
        }
    );
    // Hand-built: [1, [[0, 9, h'5a..']]] with a 65,528-byte body, 65,537 bytes in all.
    let mut bytes = unhex("82 01 81 83 00 09 59 fff8");
    bytes.resize(65_537, 0x5a);
    let err = DecodedBatch::decode(&bytes).unwrap_err();
    assert_eq!(
        err,
        RelayError::BatchTooLarge {
            len: 65_537,
            max: 65_536
        }
    );
    assert_eq!(err.to_coap_code(), Code::REQUEST_ENTITY_TOO_LARGE);
}

#[test]
fn byte_size_boundary_with_coap_entries() {
    // 56 entries of 1,152-byte CoAP bodies, handles 100..156 (2-byte heads):
    // 56 * (1 + 2 + 1 + 3 + 1152) + 4 = 64,908 bytes.
    let mut entries: Vec<Entry> = (0..56)
        .map(|h| Entry::coap(100 + h, coap_of_len(MAX_COAP_BODY)))
        .collect();
    let b = Batch::new(entries.clone());
    assert_eq!(b.encode().unwrap().len(), 64_908);
    // Pad to exactly 65,536 with one more coap entry: 628 bytes = 1 + 2 + 1 + 3 + 621.
    entries.push(Entry::coap(200, coap_of_len(621)));
    let b = Batch::new(entries.clone());
    assert_eq!(b.encode().unwrap().len(), 65_536);
    entries.last_mut().unwrap().kind = EntryKind::Coap(coap_of_len(622));
    assert!(matches!(
        Batch::new(entries).encode(),
        Err(RelayError::BatchTooLarge { len: 65_537, .. })
    ));
}

#[test]
fn coap_body_boundary() {
    let ok = Batch::new(vec![Entry::coap(1, coap_of_len(MAX_COAP_BODY))]);
    let bytes = ok.encode().unwrap();
    assert_eq!(Batch::decode(&bytes).unwrap(), ok);

    let over = Batch::new(vec![Entry::coap(1, coap_of_len(MAX_COAP_BODY + 1))]);
    let err = over.encode().unwrap_err();
    assert_eq!(
        err,
        RelayError::CoapBodyTooLarge {
            len: 1153,
            max: 1152
        }
    );
    // On input the over-long body refuses the whole batch (§4: "refused whole with 4.13"),
    // even next to good entries.
    let mut bytes = unhex("82 01 82 83 01 00 59 0481");
    bytes.extend_from_slice(&coap_of_len(1153));
    bytes.extend_from_slice(&unhex("83 02 02 40"));
    let err = DecodedBatch::decode(&bytes).unwrap_err();
    assert_eq!(
        err,
        RelayError::CoapBodyTooLarge {
            len: 1153,
            max: 1152
        }
    );
    assert_eq!(err.to_coap_code(), Code::REQUEST_ENTITY_TOO_LARGE);
}

// ---- versioning ----------------------------------------------------------------------------

#[test]
fn unknown_version() {
    for hex in [
        "82 02 80",       // [2, []]
        "82 00 80",       // [0, []]
        "83 02 61 78 05", // [2, "x", 5]: a future layout is not parsed further
        "82 1b ffffffffffffffff 80",
    ] {
        let err = DecodedBatch::decode(&unhex(hex)).unwrap_err();
        assert!(
            matches!(err, RelayError::UnsupportedVersion(v) if v != 1),
            "{hex}"
        );
        assert_eq!(err.to_coap_code(), Code::BAD_REQUEST);
        assert_eq!(err.diagnostic(), Some("batch version"));
    }
    let mut b = fixture_1_batch();
    b.version = 2;
    assert_eq!(b.encode().unwrap_err(), RelayError::UnsupportedVersion(2));
}

// ---- unknown kinds -------------------------------------------------------------------------

#[test]
fn unknown_kind_preserved() {
    // [1, [[5, 99, {1: "x", 2: [1, 2.5]}], [6, 4, h'0102']]]
    let bytes = unhex("82 01 82 83 05 1863 a2 01 6178 02 82 01 f94100 83 06 04 42 0102");
    let d = DecodedBatch::decode(&bytes).unwrap();
    assert!(d.bad_entries.is_empty());
    assert_eq!(
        d.entries,
        vec![
            Entry {
                handle: 5,
                kind: EntryKind::Unknown {
                    kind: 99,
                    body: unhex("a2 01 6178 02 82 01 f94100")
                }
            },
            Entry {
                handle: 6,
                kind: EntryKind::Unknown {
                    kind: 4,
                    body: unhex("42 0102")
                }
            },
        ]
    );
    // Re-encoding gives the same bytes.
    assert_eq!(Batch::new(d.entries).encode().unwrap(), bytes);
}

#[test]
fn unknown_kind_validation_on_encode() {
    let bad = |kind, body: &str| {
        Batch::new(vec![Entry {
            handle: 1,
            kind: EntryKind::Unknown {
                kind,
                body: unhex(body),
            },
        }])
        .encode()
        .unwrap_err()
    };
    assert!(matches!(bad(2, "40"), RelayError::InvalidEntry(_)));
    assert!(matches!(bad(7, "01"), RelayError::InvalidEntry(_)));
    assert!(matches!(bad(7, "40 40"), RelayError::InvalidEntry(_)));
    assert_eq!(bad(7, "5f ff"), RelayError::IndefiniteLength);
    assert_eq!(bad(7, ""), RelayError::Truncated);
}

// ---- per-entry isolation -------------------------------------------------------------------

#[test]
fn malformed_entries_are_isolated() {
    let bytes = unhex(concat!(
        "82 01 8b",
        "83 07 00 44 40011234",         // good coap
        "83 01 00 61 78",               // coap body is text
        "83 1b 0000000200000000 02 40", // handle above u32::MAX
        "61 78",                        // entry is not an array
        "83 03 01 a2 01 00 01 01",      // duplicate key in outcome
        "83 182a 02 40",                // good gone
        "83 04 00 41 00",               // body is not a CoAP message
        "83 05 01 a0",                  // outcome without result
        "84 06 02 40 40",               // array of 4
        "83 07 03 a1 01 40",            // identity without key 2
        "83 08 01 a1 01 190100",        // result 256
    ));
    let d = DecodedBatch::decode(&bytes).unwrap();
    assert_eq!(
        d.entries,
        vec![Entry::coap(7, COAP_GET.to_vec()), Entry::gone(42)]
    );
    let handles: Vec<Option<u32>> = d.bad_entries.iter().map(|(h, _)| *h).collect();
    assert_eq!(
        handles,
        vec![
            Some(1),
            None,
            None,
            Some(3),
            Some(4),
            Some(5),
            Some(6),
            Some(7),
            Some(8)
        ]
    );
    assert_eq!(d.bad_entries[1].1, RelayError::InvalidHandle);
    assert!(matches!(d.bad_entries[4].1, RelayError::MalformedCoap(_)));
    assert!(d.bad_entries.iter().all(|(_, e)| e.is_per_entry()));
    let refusals: Vec<Entry> = d.refusals().collect();
    assert_eq!(refusals.len(), 7);
    assert_eq!(refusals[0], Entry::refusal(1));
    assert_eq!(
        refusals[0].kind,
        EntryKind::Outcome {
            result: OutcomeResult::Refused(1),
            session_lifetime: None
        }
    );
    // Strict decoding refuses the batch with the first entry error.
    assert!(matches!(
        Batch::decode(&bytes),
        Err(RelayError::InvalidEntry(_))
    ));
}

#[test]
fn refusal_codes() {
    // result 2 (undefined by §4) is a refusal, never "authenticated".
    let d = Batch::decode(&unhex("82 01 81 83 01 01 a1 01 02")).unwrap();
    assert_eq!(
        d.entries[0].kind,
        EntryKind::Outcome {
            result: OutcomeResult::Refused(2),
            session_lifetime: None
        }
    );
    let bad = Batch::new(vec![Entry {
        handle: 1,
        kind: EntryKind::Outcome {
            result: OutcomeResult::Refused(0),
            session_lifetime: None,
        },
    }]);
    assert!(matches!(bad.encode(), Err(RelayError::InvalidEntry(_))));
}

// ---- whole-batch errors --------------------------------------------------------------------

#[test]
fn whole_batch_errors() {
    let cases: &[(&str, RelayError)] = &[
        ("", RelayError::Truncated),
        ("82 01", RelayError::Truncated),
        ("82 01 81 83 07 00 44 4001", RelayError::Truncated),
        ("82 01 80 00", RelayError::TrailingBytes(1)),
        ("9f 01 80 ff", RelayError::IndefiniteLength),
        ("82 01 9f ff", RelayError::IndefiniteLength),
        (
            "82 01 81 83 07 00 5f 44 40011234 ff",
            RelayError::IndefiniteLength,
        ),
        ("82 01 81 83 07 02 bf ff", RelayError::IndefiniteLength),
        ("82 01 81 83 07 02 a1 01 7c", RelayError::NotWellFormed("")),
        ("a0", RelayError::Malformed("")),
        ("80", RelayError::Malformed("")),
        ("82 61 31 80", RelayError::Malformed("")),
        ("83 01 80 80", RelayError::Malformed("")),
        ("82 01 a0", RelayError::Malformed("")),
    ];
    for (hex, want) in cases {
        let err = DecodedBatch::decode(&unhex(hex)).unwrap_err();
        assert_eq!(
            std::mem::discriminant(&err),
            std::mem::discriminant(want),
            "{hex}: {err:?}"
        );
        assert_eq!(err.to_coap_code(), Code::BAD_REQUEST, "{hex}");
        assert_eq!(err.diagnostic(), None);
    }
}

#[test]
fn error_codes() {
    assert_eq!(RelayError::Full.to_coap_code(), Code::SERVICE_UNAVAILABLE);
    assert_eq!(
        RelayError::HandleTableFull { capacity: 1 }.to_coap_code(),
        Code::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        RelayError::InvalidConfig("x").to_coap_code(),
        Code::INTERNAL_SERVER_ERROR
    );
    assert_eq!(RelayError::InvalidHandle.to_coap_code(), Code::BAD_REQUEST);
}

// ---- properties ----------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn roundtrip(entries in proptest::collection::vec(entry(), 0..40)) {
        let b = Batch::new(entries);
        let bytes = b.encode().unwrap();
        prop_assert_eq!(bytes.len(), b.encoded_len());
        prop_assert_eq!(&Batch::decode(&bytes).unwrap(), &b);
        prop_assert_eq!(ciborium_roundtrip(&bytes), bytes);
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(d) = DecodedBatch::decode(&bytes) {
            // Whatever was accepted re-encodes and decodes to the same entries.
            let b = Batch::new(d.entries);
            let again = b.encode().unwrap();
            prop_assert_eq!(Batch::decode(&again).unwrap(), b);
        }
    }

    #[test]
    fn mutated_batches_never_panic(
        entries in proptest::collection::vec(entry(), 1..8),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = Batch::new(entries).encode().unwrap();
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        if let Ok(d) = DecodedBatch::decode(&bytes) {
            let b = Batch::new(d.entries);
            prop_assert_eq!(Batch::decode(&b.encode().unwrap()).unwrap(), b);
        }
        let _ = DecodedBatch::decode(&bytes[..cut.index(bytes.len())]);
    }
}
