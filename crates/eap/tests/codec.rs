//! Codec: fixtures, round trips of every attribute, AT_ENCR_DATA, AT_MAC, and no-panic
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! properties on arbitrary bytes.

use capillary_eap::attr::{types::*, Attribute};
use capillary_eap::eap::Code;
use capillary_eap::msg::{decrypt_attributes, encrypt_attributes, AkaPacket, IdReq, Subtype};
use capillary_eap::CodecError;
use capillary_secrets::{Autn, Auts, KAut, KEncr, Rand, Res};
use proptest::prelude::*;

fn fixtures() -> toml::Table {
    toml::from_str(include_str!("data/packets.toml")).unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    let t = fixtures();
    hex::decode(t[name]["hex"].as_str().unwrap()).unwrap()
}

#[test]
fn fixtures_decode_and_reencode() {
    for (name, v) in fixtures() {
        let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
        let d = AkaPacket::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = d.packet.encode().unwrap();
        if name == "skippable_unknown" {
            // The skippable attribute 200 is dropped (RFC 4187 §8.1).
            assert_eq!(again, hex::decode("020c000c320e000016010000").unwrap());
        } else {
            assert_eq!(again, bytes, "{name}");
        }
    }
}

#[test]
fn fixture_fields() {
    let p = AkaPacket::decode(&fixture("identity_request_any"))
        .unwrap()
        .packet;
    assert_eq!(
        (p.code, p.identifier, p.subtype),
        (Code::Request, 5, Subtype::Identity)
    );
    assert_eq!(p.attributes.id_req().unwrap(), Some(IdReq::Any));

    let p = AkaPacket::decode(&fixture("identity_response"))
        .unwrap()
        .packet;
    assert_eq!(
        p.attributes.identity().unwrap().as_slice(),
        b"6001010000000001@wlan.mnc001.mcc001.3gppnetwork.org"
    );

    let p = AkaPacket::decode(&fixture("sync_failure")).unwrap().packet;
    assert_eq!(p.subtype, Subtype::SynchronizationFailure);
    assert_eq!(p.attributes.auts().unwrap().0[0], 1);
    assert_eq!(p.attributes.kdfs(), vec![1]);

    let p = AkaPacket::decode(&fixture("client_error")).unwrap().packet;
    assert_eq!(p.attributes.client_error_code(), Some(&0));

    let p = AkaPacket::decode(&fixture("challenge_response"))
        .unwrap()
        .packet;
    assert_eq!(
        p.attributes.res().unwrap().expose(),
        hex::decode("28d7b0f2a2ec3de5").unwrap()
    );
    assert_eq!(p.attributes.checkcode().unwrap().len(), 0);

    let p = AkaPacket::decode(&fixture("challenge_request"))
        .unwrap()
        .packet;
    assert_eq!(p.attributes.kdf_input().unwrap().as_slice(), b"WLAN");
    assert!(p.attributes.has(AT_RESULT_IND));
    assert_eq!(
        p.attributes.rand().unwrap(),
        &Rand::from_hex("81e92b6c0ee0e12ebceba8d92a99dfa5").unwrap()
    );

    let p = AkaPacket::decode(&fixture("notification_success"))
        .unwrap()
        .packet;
    assert_eq!(p.attributes.notification(), Some(&32768));
}

fn every_attribute() -> Vec<Attribute> {
    vec![
        Attribute::Rand(Rand([1; 16])),
        Attribute::Autn(Autn([2; 16])),
        Attribute::Res(Res::from_slice(&[3; 5]).unwrap()),
        Attribute::Auts(Auts([4; 14])),
        Attribute::Padding(8),
        Attribute::NonceMt([5; 16]),
        Attribute::PermanentIdReq,
        Attribute::Mac([6; 16]),
        Attribute::Notification(1026),
        Attribute::AnyIdReq,
        Attribute::Identity(b"7abc@realm".to_vec()),
        Attribute::VersionList(vec![1, 2]),
        Attribute::SelectedVersion(1),
        Attribute::FullauthIdReq,
        Attribute::Counter(7),
        Attribute::CounterTooSmall,
        Attribute::NonceS([8; 16]),
        Attribute::ClientErrorCode(0),
        Attribute::KdfInput(b"WLAN".to_vec()),
        Attribute::Kdf(1),
        Attribute::Kdf(2),
        Attribute::Iv([9; 16]),
        Attribute::EncrData(vec![10; 32]),
        Attribute::NextPseudonym(b"7p".to_vec()),
        Attribute::NextReauthId(b"8r@realm".to_vec()),
        Attribute::Checkcode(vec![11; 32]),
        Attribute::ResultInd,
        Attribute::Bidding(0x8000),
    ]
}

#[test]
fn every_attribute_round_trips() {
    let p = AkaPacket::new(Code::Request, 1, Subtype::Challenge, every_attribute());
    let bytes = p.encode().unwrap();
    let d = AkaPacket::decode(&bytes).unwrap();
    assert_eq!(d.packet.attributes.0.len(), every_attribute().len());
    for (a, b) in d.packet.attributes.0.iter().zip(every_attribute()) {
        assert_eq!(a.typ(), b.typ());
    }
    assert_eq!(d.packet.encode().unwrap(), bytes);
    // AT_RES length is in bits (RFC 4187 §10.8).
    let i = bytes.windows(2).position(|w| w == [AT_RES, 3]).unwrap();
    assert_eq!(&bytes[i + 2..i + 4], &40u16.to_be_bytes());
}

#[test]
fn decoder_errors() {
    // Unknown non-skippable attribute 99.
    let mut p = fixture("client_error");
    p[8] = 99;
    assert_eq!(
        AkaPacket::decode(&p).unwrap_err(),
        CodecError::UnknownAttribute(99)
    );
    // Attribute length 0.
    let mut p = fixture("client_error");
    p[9] = 0;
    assert!(matches!(
        AkaPacket::decode(&p),
        Err(CodecError::AttributeLength { .. })
    ));
    // Duplicate attribute.
    let dup = AkaPacket::new(
        Code::Response,
        1,
        Subtype::ClientError,
        vec![Attribute::ClientErrorCode(0), Attribute::ClientErrorCode(0)],
    )
    .encode()
    .unwrap();
    assert_eq!(
        AkaPacket::decode(&dup).unwrap_err(),
        CodecError::DuplicateAttribute(AT_CLIENT_ERROR_CODE)
    );
    // RES length not in whole octets.
    let mut p = fixture("challenge_response");
    p[11] = 63;
    assert!(matches!(
        AkaPacket::decode(&p),
        Err(CodecError::AttributeValue { typ: AT_RES })
    ));
    // Unknown subtype, wrong type.
    let mut p = fixture("client_error");
    p[5] = 3;
    assert_eq!(
        AkaPacket::decode(&p).unwrap_err(),
        CodecError::UnknownSubtype(3)
    );
    let mut p = fixture("client_error");
    p[4] = 18;
    assert_eq!(
        AkaPacket::decode(&p).unwrap_err(),
        CodecError::UnexpectedType(18)
    );
}

#[test]
fn encr_data_round_trip_with_padding() {
    let k = KEncr::from_bytes([0x42; 16]);
    let inner = vec![
        Attribute::Counter(3),
        Attribute::NonceS([7; 16]),
        Attribute::NextReauthId(b"8ab@example.org".to_vec()),
    ];
    let ct = encrypt_attributes(&k, &[1; 16], &inner).unwrap();
    assert_eq!(ct.len() % 16, 0);
    let back = decrypt_attributes(&k, &[1; 16], &ct).unwrap();
    assert_eq!(back.counter(), Some(&3));
    assert_eq!(back.nonce_s(), Some(&[7; 16]));
    assert_eq!(
        back.next_reauth_id().unwrap().as_slice(),
        b"8ab@example.org"
    );
    assert!(back.has(AT_PADDING));
    // A wrong key yields garbage: a typed error, never a panic.
    let wrong = KEncr::from_bytes([0x43; 16]);
    assert!(decrypt_attributes(&wrong, &[1; 16], &ct).is_err());
    assert_eq!(
        decrypt_attributes(&k, &[1; 16], &ct[..15]).unwrap_err(),
        CodecError::Encryption
    );
}

#[test]
fn at_mac_covers_packet_and_extra() {
    let k = KAut::from_bytes([9; 32]);
    let p = AkaPacket::new(
        Code::Response,
        4,
        Subtype::Reauthentication,
        vec![Attribute::Checkcode(Vec::new())],
    );
    let bytes = p.encode_with_mac(&k, b"nonce").unwrap();
    let d = AkaPacket::decode(&bytes).unwrap();
    assert!(d.verify_mac(&k, b"nonce"));
    assert!(!d.verify_mac(&k, b""));
    assert!(!d.verify_mac(&KAut::from_bytes([8; 32]), b"nonce"));
    let mut bad = bytes.clone();
    bad[8] ^= 0; // unchanged
    bad[1] ^= 1; // identifier covered by the MAC
    assert!(!AkaPacket::decode(&bad).unwrap().verify_mac(&k, b"nonce"));
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = AkaPacket::decode(&bytes);
        let _ = capillary_eap::eap::Packet::parse(&bytes);
        let _ = capillary_eap::attr::parse_all(&bytes);
        let k = KEncr::from_bytes([1; 16]);
        let _ = decrypt_attributes(&k, &[0; 16], &bytes);
    }

    #[test]
    fn decode_never_panics_with_valid_header(body in proptest::collection::vec(any::<u8>(), 0..200), sub in any::<u8>()) {
        let mut p = vec![2, 1, 0, 0, 50, sub, 0, 0];
        p.extend_from_slice(&body);
        let n = p.len() as u16;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        if let Ok(d) = AkaPacket::decode(&p) {
            // Whatever decodes re-encodes and decodes again.
            let again = d.packet.encode().unwrap();
            prop_assert!(AkaPacket::decode(&again).is_ok());
        }
    }
}
