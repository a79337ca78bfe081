//! Replay, tampering, reordering, Observe, option classes, SSN persistence (Appendix B.1)
//! and the error → wire mapping.

#![allow(clippy::unwrap_used)]

mod common;

use capillary_coap::msg::{option_number as num, CoapOption, Code, Message, MessageType};
use capillary_oscore::crypto::MAX_SSN;
use capillary_oscore::{
    ContextParams, DecodeError, OscoreError, OscoreOption, PersistedState, SecurityContext,
    SsnPersistence,
};
use common::c1_pair;

fn get(mid: u16) -> Message {
    let mut m = Message::new(MessageType::Con, Code::GET, mid, vec![0x39, 0x74]);
    m.add_option(num::URI_HOST, b"localhost".to_vec());
    m.set_uri_path("/tv1");
    m
}

#[test]
fn replay_rejected_with_401() {
    let (mut c, mut s) = c1_pair();
    let (wire, _) = c.protect_request(&get(1)).unwrap();
    s.unprotect_request(&wire).unwrap();
    let err = s.unprotect_request(&wire).unwrap_err();
    assert_eq!(err, OscoreError::Replay);
    assert_eq!(err.to_coap_code(), Code::UNAUTHORIZED);
    let resp = err.error_response(&wire, 99).unwrap();
    assert_eq!(
        (resp.ty, resp.code, resp.message_id),
        (MessageType::Ack, Code::UNAUTHORIZED, 1)
    );
    assert_eq!(resp.token, wire.token);
    assert_eq!(resp.option(num::MAX_AGE), Some(&[][..]));
    assert_eq!(resp.payload, b"Replay detected");
    assert!(!resp.has_option(num::OSCORE));
}

#[test]
fn tampered_ciphertext_rejected_and_window_untouched() {
    let (mut c, mut s) = c1_pair();
    let (wire, _) = c.protect_request(&get(1)).unwrap();
    for i in 0..wire.payload.len() {
        let mut bad = wire.clone();
        bad.payload[i] ^= 0x01;
        let err = s.unprotect_request(&bad).unwrap_err();
        assert_eq!(err, OscoreError::DecryptionFailed);
        assert_eq!(err.to_coap_code(), Code::BAD_REQUEST);
        assert_eq!(
            err.error_response(&bad, 0).unwrap().payload,
            b"Decryption failed"
        );
    }
    assert_eq!(
        s.replay_high_water(),
        None,
        "forgeries must not move the window"
    );
    s.unprotect_request(&wire).unwrap();
}

#[test]
fn tampered_option_kid_and_structure_rejected() {
    let (mut c, mut s) = c1_pair();
    let (wire, _) = c.protect_request(&get(1)).unwrap();
    let set_opt = |v: &[u8]| {
        let mut m = wire.clone();
        m.set_option(num::OSCORE, v.to_vec());
        m
    };
    // Partial IV changed (0x14-style tamper): authenticated via nonce and AAD.
    assert_eq!(
        s.unprotect_request(&set_opt(&[0x09, 0x05])).unwrap_err(),
        OscoreError::DecryptionFailed
    );
    // kid changed to an unknown one.
    let e = s
        .unprotect_request(&set_opt(&[0x09, 0x00, 0x07]))
        .unwrap_err();
    assert_eq!(
        (e.clone(), e.to_coap_code()),
        (OscoreError::UnknownKid, Code::UNAUTHORIZED)
    );
    assert_eq!(
        e.error_response(&wire, 0).unwrap().payload,
        b"Security context not found"
    );
    // kid context that is not ours.
    assert_eq!(
        s.unprotect_request(&set_opt(&[0x19, 0x00, 0x01, 0xaa]))
            .unwrap_err(),
        OscoreError::UnknownKid
    );
    // Reserved flag bit, reserved n, truncation, missing PIV/kid.
    let e = s.unprotect_request(&set_opt(&[0x89, 0x00])).unwrap_err();
    assert_eq!(e, OscoreError::Decode(DecodeError::ReservedFlags(0x89)));
    assert_eq!(e.to_coap_code(), Code::BAD_OPTION);
    assert_eq!(
        e.error_response(&wire, 0).unwrap().payload,
        b"Failed to decode COSE"
    );
    assert_eq!(
        s.unprotect_request(&set_opt(&[0x0e, 1, 2, 3, 4, 5, 6]))
            .unwrap_err(),
        OscoreError::Decode(DecodeError::ReservedPivLength(6))
    );
    assert_eq!(
        s.unprotect_request(&set_opt(&[0x0b, 0x00])).unwrap_err(),
        DecodeError::Truncated.into()
    );
    assert_eq!(
        s.unprotect_request(&set_opt(&[0x08])).unwrap_err(),
        DecodeError::MissingPartialIv.into()
    );
    assert_eq!(
        s.unprotect_request(&set_opt(&[0x01, 0x00])).unwrap_err(),
        DecodeError::MissingKid.into()
    );
    assert_eq!(
        s.unprotect_request(&set_opt(&[])).unwrap_err(),
        DecodeError::MissingPartialIv.into()
    );
    // No option, two options, short payload.
    let mut m = wire.clone();
    m.remove_option(num::OSCORE);
    let e = s.unprotect_request(&m).unwrap_err();
    assert_eq!(
        (e.clone(), e.to_coap_code()),
        (OscoreError::NotProtected, Code::UNAUTHORIZED)
    );
    let mut m = wire.clone();
    m.add_option(num::OSCORE, vec![0x09, 0x00]);
    assert_eq!(
        s.unprotect_request(&m).unwrap_err(),
        DecodeError::RepeatedOption.into()
    );
    let mut m = wire.clone();
    m.payload.truncate(8);
    assert_eq!(
        s.unprotect_request(&m).unwrap_err(),
        DecodeError::CiphertextTooShort.into()
    );
    assert_eq!(s.replay_high_water(), None);
    // Outer tampering of unprotected fields does not reach the application.
    let mut m = wire.clone();
    m.code = Code::DELETE;
    m.add_option(num::URI_PATH, b"evil".to_vec());
    m.add_option(num::MAX_AGE, vec![60]);
    let (got, _) = s.unprotect_request(&m).unwrap();
    assert_eq!(got, get(1));
}

#[test]
fn window_accepts_reordering_within_32() {
    let (mut c, mut s) = c1_pair();
    let wires: Vec<Message> = (0..45)
        .map(|i| c.protect_request(&get(i)).unwrap().0)
        .collect();
    s.unprotect_request(&wires[31]).unwrap();
    for i in (0..31).rev() {
        s.unprotect_request(&wires[i])
            .unwrap_or_else(|e| panic!("SSN {i} within window: {e}"));
    }
    for w in &wires[..32] {
        assert_eq!(s.unprotect_request(w).unwrap_err(), OscoreError::Replay);
    }
    s.unprotect_request(&wires[44]).unwrap();
    s.unprotect_request(&wires[40]).unwrap();
    assert_eq!(s.replay_high_water(), Some(44));
    // Fresh server: after 44, the unseen 12 (44 - 12 = 32) is just outside a 32-wide window,
    // the unseen 13 is the oldest still inside.
    let (_, mut s) = c1_pair();
    s.unprotect_request(&wires[44]).unwrap();
    assert_eq!(
        s.unprotect_request(&wires[12]).unwrap_err(),
        OscoreError::Replay
    );
    s.unprotect_request(&wires[13]).unwrap();
    assert_eq!(
        s.unprotect_request(&wires[13]).unwrap_err(),
        OscoreError::Replay
    );
}

#[test]
fn response_tamper_and_wrong_binding_rejected() {
    let (mut c, mut s) = c1_pair();
    let (w1, mut b1) = c.protect_request(&get(1)).unwrap();
    let (w2, mut b2) = c.protect_request(&get(2)).unwrap();
    let (r1, sb1) = s.unprotect_request(&w1).unwrap();
    s.unprotect_request(&w2).unwrap();
    let mut resp = Message::response_to(&r1, Code::CONTENT, 0);
    resp.payload = b"hi".to_vec();
    for fresh in [false, true] {
        let wire = s.protect_response(&resp, &sb1, fresh).unwrap();
        assert_eq!(wire.code, Code::CHANGED);
        assert_eq!(
            c.unprotect_response(&wire, &mut b2).unwrap_err(),
            OscoreError::DecryptionFailed
        );
        let mut bad = wire.clone();
        bad.payload[0] ^= 0x80;
        assert_eq!(
            c.unprotect_response(&bad, &mut b1).unwrap_err(),
            OscoreError::DecryptionFailed
        );
        let e = c.unprotect_response(&bad, &mut b1).unwrap_err();
        assert!(
            e.error_response(&bad, 0).is_none(),
            "clients never answer responses"
        );
        assert_eq!(c.unprotect_response(&wire, &mut b1).unwrap(), resp);
    }
    // A client-side binding cannot be used to protect a response on the client.
    assert!(matches!(
        c.protect_response(&resp, &b1, false),
        Err(OscoreError::InvalidParams(_))
    ));
}

#[test]
fn observe_outer_codes_and_notification_order() {
    let (mut c, mut s) = c1_pair();
    let mut req = get(1);
    req.set_uint_option(num::OBSERVE, 0);
    let (wire, mut cb) = c.protect_request(&req).unwrap();
    assert_eq!(wire.code, Code::FETCH);
    assert_eq!(
        wire.option(num::OBSERVE),
        Some(&[][..]),
        "Observe is also an Outer option"
    );
    let (got, sb) = s.unprotect_request(&wire).unwrap();
    assert_eq!(got, req);
    assert!(sb.is_observe());
    let notif = |seq: u32| {
        let mut m = Message::new(
            MessageType::Non,
            Code::CONTENT,
            100 + seq as u16,
            got.token.clone(),
        );
        m.set_uint_option(num::OBSERVE, seq);
        m.payload = vec![seq as u8];
        m
    };
    let n1 = s.protect_response(&notif(1), &sb, false).unwrap();
    let n2 = s.protect_response(&notif(2), &sb, false).unwrap();
    assert_eq!(n1.code, Code::CONTENT);
    assert!(
        OscoreOption::decode(n1.option(num::OSCORE).unwrap())
            .unwrap()
            .partial_iv
            .is_some(),
        "notifications carry a PIV"
    );
    assert_eq!(
        n1.option(num::OBSERVE),
        Some(&[1][..]),
        "Outer Observe keeps the value"
    );
    // The client orders by Partial IV (server SSN 1 for n2) and reports it as Observe value.
    let got2 = c.unprotect_response(&n2, &mut cb).unwrap();
    assert_eq!(got2.uint_option(num::OBSERVE), Some(1));
    assert_eq!(got2.payload, [2]);
    assert_eq!(
        c.unprotect_response(&n1, &mut cb).unwrap_err(),
        OscoreError::Replay,
        "older notification"
    );
    assert_eq!(
        c.unprotect_response(&n2, &mut cb).unwrap_err(),
        OscoreError::Replay
    );
    // A notification answering a non-Observe request is refused.
    let (w, mut cb2) = c.protect_request(&get(2)).unwrap();
    let (_, sb2) = s.unprotect_request(&w).unwrap();
    let n = s.protect_response(&notif(3), &sb2, false).unwrap();
    assert_eq!(
        c.unprotect_response(&n, &mut cb2).unwrap_err(),
        OscoreError::UnexpectedObserve
    );
}

#[test]
fn option_classes_and_proxy_uri() {
    let (mut c, mut s) = c1_pair();
    let mut req = Message::new(MessageType::Con, Code::POST, 5, vec![1]);
    req.add_option(
        num::PROXY_URI,
        b"coap://Example.org:61616/a%2Fb/c?q=1".to_vec(),
    );
    req.add_option(num::HOP_LIMIT, vec![16]);
    req.add_option(num::ECHO, vec![1, 2, 3]);
    req.add_option(num::NO_RESPONSE, vec![26]);
    req.add_option(num::BLOCK1, vec![0x06]);
    req.add_option(2000, b"unknown".to_vec());
    req.payload = b"body".to_vec();
    let (wire, _) = c.protect_request(&req).unwrap();
    let outer: Vec<u16> = wire.options.iter().map(|o| o.number).collect();
    assert_eq!(
        outer,
        [
            num::URI_HOST,
            num::URI_PORT,
            num::OSCORE,
            num::HOP_LIMIT,
            num::PROXY_SCHEME
        ]
    );
    assert_eq!(wire.option(num::URI_HOST), Some(&b"example.org"[..]));
    assert_eq!(wire.code, Code::POST);
    let (got, _) = s.unprotect_request(&wire).unwrap();
    let expect = [
        (num::URI_HOST, &b"example.org"[..]),
        (num::URI_PORT, &[0xf0, 0xb0][..]),
        (num::URI_PATH, b"a/b"),
        (num::URI_PATH, b"c"),
        (num::URI_QUERY, b"q=1"),
        (num::HOP_LIMIT, &[16]),
        (num::BLOCK1, &[6]),
        (num::PROXY_SCHEME, b"coap"),
        (num::ECHO, &[1, 2, 3]),
        (num::NO_RESPONSE, &[26]),
        (2000, b"unknown"),
    ];
    let got_opts: Vec<(u16, &[u8])> = got
        .options
        .iter()
        .map(|o| (o.number, o.value.as_slice()))
        .collect();
    assert_eq!(got_opts, expect);
    assert_eq!(got.payload, b"body");
    // A plain message may not carry the OSCORE option; a bad Proxy-Uri is a typed error.
    let mut m = get(1);
    m.add_option(num::OSCORE, vec![]);
    assert!(matches!(
        c.protect_request(&m),
        Err(OscoreError::InvalidParams(_))
    ));
    let mut m = get(1);
    m.add_option(num::PROXY_URI, b"not a uri".to_vec());
    assert_eq!(
        c.protect_request(&m).unwrap_err(),
        OscoreError::UnsupportedOption(num::PROXY_URI)
    );
    // Max-Age in a response is Inner; the Outer message has none.
    let (w, sb) = {
        let (w, _) = c.protect_request(&get(9)).unwrap();
        s.unprotect_request(&w).unwrap()
    };
    let mut resp = Message::response_to(&w, Code::CONTENT, 0);
    resp.set_uint_option(num::MAX_AGE, 60);
    let rw = s.protect_response(&resp, &sb, false).unwrap();
    assert!(!rw.has_option(num::MAX_AGE));
    assert_eq!(
        rw.options,
        vec![CoapOption {
            number: num::OSCORE,
            value: vec![]
        }]
    );
}

fn c1_params<'a>(secret: &'a [u8], salt: &'a [u8]) -> ContextParams<'a> {
    let mut p = ContextParams::new(secret, b"", b"\x01");
    p.master_salt = salt;
    p
}

const SECRET: [u8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
const SALT: [u8; 8] = [0x9e, 0x7c, 0xa9, 0x22, 0x23, 0x78, 0x63, 0x40];

#[test]
fn ssn_persistence_and_restart_skip() {
    let mut p = c1_params(&SECRET, &SALT);
    p.ssn_persistence = SsnPersistence::Persistent;
    let mut c = SecurityContext::new(p).unwrap();
    assert!(c.ssn_persist_due());
    assert_eq!(
        c.protect_request(&get(0)).unwrap_err(),
        OscoreError::SsnNotPersisted
    );
    let mark = c.reserve_ssn_block(10).unwrap();
    assert_eq!(mark, 10);
    assert_eq!(
        c.protect_request(&get(0)).unwrap_err(),
        OscoreError::SsnNotPersisted,
        "not yet confirmed"
    );
    assert!(matches!(
        c.confirm_ssn_persisted(11),
        Err(OscoreError::InvalidParams(_))
    ));
    c.confirm_ssn_persisted(mark).unwrap();
    assert!(!c.ssn_persist_due());
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(c.protect_request(&get(i)).unwrap().0);
        assert_eq!(
            c.ssn_persist_due(),
            i >= 4,
            "due from half of the block on (i={i})"
        );
    }
    assert_eq!(
        c.protect_request(&get(10)).unwrap_err(),
        OscoreError::SsnNotPersisted
    );
    assert_eq!(c.sender_sequence_number(), 10);

    // Server accepts all, persists its high-water mark.
    let mut sp = ContextParams::new(&SECRET, b"\x01", b"");
    sp.master_salt = &SALT;
    let mut s = SecurityContext::new(sp).unwrap();
    for w in &sent[..6] {
        s.unprotect_request(w).unwrap();
    }
    let floor = s.replay_high_water();
    assert_eq!(floor, Some(5));

    // Reboot both: the client resumes at the persisted mark, never reusing 0..10.
    let mut c2 = SecurityContext::restore(
        c1_params(&SECRET, &SALT),
        PersistedState {
            ssn_mark: mark,
            replay_floor: None,
        },
    )
    .unwrap();
    assert_eq!(c2.sender_sequence_number(), 10);
    assert_eq!(
        c2.protect_request(&get(0)).unwrap_err(),
        OscoreError::SsnNotPersisted
    );
    let m2 = c2.reserve_ssn_block(32).unwrap();
    c2.confirm_ssn_persisted(m2).unwrap();
    let (w, b) = c2.protect_request(&get(0)).unwrap();
    assert_eq!(b.partial_iv(), [10]);

    let mut s2 = SecurityContext::restore(
        sp,
        PersistedState {
            ssn_mark: 0,
            replay_floor: floor,
        },
    )
    .unwrap();
    for old in &sent[..6] {
        assert_eq!(
            s2.unprotect_request(old).unwrap_err(),
            OscoreError::Replay,
            "pre-reboot PIVs are rejected"
        );
    }
    s2.unprotect_request(&w).unwrap();
    // PIVs above the floor that were not yet seen are still fine.
    s2.unprotect_request(&sent[7]).unwrap();
}

#[test]
fn ssn_exhaustion() {
    let mut c = SecurityContext::restore(
        c1_params(&SECRET, &SALT),
        PersistedState {
            ssn_mark: MAX_SSN,
            replay_floor: None,
        },
    )
    .unwrap();
    let m = c.reserve_ssn_block(1000).unwrap();
    assert_eq!(m, MAX_SSN + 1);
    c.confirm_ssn_persisted(m).unwrap();
    let (w, b) = c.protect_request(&get(0)).unwrap();
    assert_eq!(b.partial_iv(), [0xff; 5]);
    assert_eq!(
        OscoreOption::decode(w.option(num::OSCORE).unwrap())
            .unwrap()
            .partial_iv,
        Some(&[0xff; 5][..])
    );
    let e = c.protect_request(&get(0)).unwrap_err();
    assert_eq!(e, OscoreError::SsnExhausted);
    assert!(
        e.error_response(&get(0), 0).is_none(),
        "local errors produce no wire response"
    );
    assert_eq!(e.to_coap_code(), Code::INTERNAL_SERVER_ERROR);
    assert_eq!(
        c.reserve_ssn_block(1).unwrap_err(),
        OscoreError::SsnExhausted
    );
    assert!(SecurityContext::restore(
        c1_params(&SECRET, &SALT),
        PersistedState {
            ssn_mark: MAX_SSN + 2,
            replay_floor: None
        }
    )
    .is_err());
}

#[test]
fn parameter_validation() {
    let bad = |p: ContextParams<'_>| {
        matches!(SecurityContext::new(p), Err(OscoreError::InvalidParams(_)))
    };
    assert!(bad(ContextParams::new(&SECRET, b"\x01", b"\x01")));
    assert!(bad(ContextParams::new(&SECRET, b"12345678", b"")));
    assert!(bad(ContextParams::new(&[], b"\x01", b"")));
    let mut p = ContextParams::new(&SECRET, b"\x01", b"");
    p.replay_window = 0;
    assert!(bad(p));
    p.replay_window = 129;
    assert!(bad(p));
    p.replay_window = 128;
    assert!(SecurityContext::new(p).is_ok());
    // Requests only to protect_request, responses only to protect_response.
    let (mut c, _) = c1_pair();
    let resp = Message::new(MessageType::Ack, Code::CONTENT, 1, vec![]);
    assert!(matches!(
        c.protect_request(&resp),
        Err(OscoreError::InvalidParams(_))
    ));
}

#[test]
fn secrets_are_redacted() {
    let (c, _) = c1_pair();
    let dbg = format!("{c:?} {:?} {:?}", c.sender_key(), c.common_iv());
    assert!(
        !dbg.contains("f0910ed7") && !dbg.contains("240, 145"),
        "{dbg}"
    );
    assert!(dbg.contains("AeadKey { .. }"));
    let p = ContextParams::new(&SECRET, b"\x01", b"");
    assert!(!format!("{p:?}").contains("1, 2, 3, 4"));
}
