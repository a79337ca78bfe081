//! Independent oracle cross-check against the pure-Rust `oscore` crate (crates.io 0.1.2,
//! a separate RFC 8613 implementation; dev-dependency only). Both directions, requests and
//! responses (with and without Partial IV), over randomised contexts and messages.
//! The oracle is a normal dev-dependency: if it is missing the test fails to build, it
//! never skips.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use capillary_coap::msg::{
    encode_options, option_number as num, CoapOption, Code, Message, MessageType,
};
use capillary_oscore::{ContextParams, OscoreOption, SecurityContext};
use oscore::{ContextId, SenderSequenceState, SenderStateStore};
use proptest::prelude::*;

#[derive(Default)]
struct MemStore(HashMap<[u8; 32], SenderSequenceState>);

impl SenderStateStore for MemStore {
    type Error = ();
    fn load(&mut self, id: &ContextId) -> Result<Option<SenderSequenceState>, ()> {
        Ok(self.0.get(id.as_bytes()).copied())
    }
    fn compare_exchange(
        &mut self,
        id: &ContextId,
        expected: Option<SenderSequenceState>,
        next: SenderSequenceState,
    ) -> Result<bool, ()> {
        if self.0.get(id.as_bytes()).copied() != expected {
            return Ok(false);
        }
        self.0.insert(*id.as_bytes(), next);
        Ok(true)
    }
}

struct Case {
    secret: [u8; 16],
    salt: Vec<u8>,
    idc: Option<Vec<u8>>,
    client_id: Vec<u8>,
    server_id: Vec<u8>,
}

impl Case {
    fn ours(&self, client: bool) -> SecurityContext {
        let (s, r) = if client {
            (&self.client_id, &self.server_id)
        } else {
            (&self.server_id, &self.client_id)
        };
        let mut p = ContextParams::new(&self.secret, s, r);
        p.master_salt = &self.salt;
        p.id_context = self.idc.as_deref();
        SecurityContext::new(p).unwrap()
    }
    fn oracle(&self, client: bool, store: &mut MemStore) -> oscore::Context {
        let (s, r) = if client {
            (&self.client_id, &self.server_id)
        } else {
            (&self.server_id, &self.client_id)
        };
        let salt = (!self.salt.is_empty()).then_some(self.salt.as_slice());
        oscore::Context::new_fresh(&self.secret, salt, self.idc.as_deref(), s, r)
            .unwrap()
            .register_fresh(store)
            .unwrap_or_else(|_| panic!("oracle registration"))
    }
}

fn inner_bytes(opts: &[CoapOption]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_options(opts, &[], &mut v).unwrap();
    v
}

fn request(path: &[String], query: Option<&str>, payload: &[u8], code: Code) -> Message {
    let mut m = Message::new(MessageType::Con, code, 0x1234, vec![0xaa, 0xbb]);
    m.add_option(num::URI_HOST, b"localhost".to_vec());
    for seg in path {
        m.add_option(num::URI_PATH, seg.as_bytes().to_vec());
    }
    if let Some(q) = query {
        m.add_uri_query(q);
    }
    if !payload.is_empty() {
        m.set_content_format(0);
    }
    m.payload = payload.to_vec();
    m
}

fn check(case: &Case, req: &Message, resp_payload: &[u8], fresh: bool) {
    let inner_req: Vec<CoapOption> = req
        .options
        .iter()
        .filter(|o| o.number != num::URI_HOST)
        .cloned()
        .collect();

    // 1. Our client -> oracle server.
    let mut store = MemStore::default();
    let mut client = case.ours(true);
    let mut oserver = case.oracle(false, &mut store);
    let (wire, mut binding) = client.protect_request(req).unwrap();
    let opt = wire.option(num::OSCORE).unwrap().to_vec();
    let (code, opts, payload) = oserver
        .unprotect_request(&opt, &wire.payload)
        .expect("oracle accepts our request");
    assert_eq!(code, req.code.0);
    assert_eq!(opts.as_slice(), inner_bytes(&inner_req).as_slice());
    assert_eq!(payload.as_slice(), req.payload.as_slice());

    // 1b. Oracle server response -> our client.
    let resp_inner = vec![CoapOption {
        number: num::CONTENT_FORMAT,
        value: vec![],
    }];
    let (ct, ropt) = oserver
        .protect_response(
            0x45,
            &inner_bytes(&resp_inner),
            resp_payload,
            binding.kid(),
            binding.partial_iv(),
            fresh,
        )
        .expect("oracle protects response");
    let mut rwire = Message::new(
        MessageType::Ack,
        Code::CHANGED,
        wire.message_id,
        wire.token.clone(),
    );
    rwire.add_option(num::OSCORE, ropt.to_vec());
    rwire.payload = ct.to_vec();
    let got = client
        .unprotect_response(&rwire, &mut binding)
        .expect("we accept the oracle's response");
    assert_eq!(got.code, Code::CONTENT);
    assert_eq!(got.options, resp_inner);
    assert_eq!(got.payload, resp_payload);

    // 2. Oracle client -> our server.
    let mut store = MemStore::default();
    let mut oclient = case.oracle(true, &mut store);
    let mut server = case.ours(false);
    let (ct, qopt) = oclient
        .reserve_sender(&mut store)
        .unwrap_or_else(|_| panic!("oracle reserve"))
        .protect_request(req.code.0, &inner_bytes(&inner_req), &req.payload)
        .expect("oracle protects request");
    let mut qwire = Message::new(MessageType::Con, Code::POST, 7, vec![1]);
    qwire.add_option(num::URI_HOST, b"localhost".to_vec());
    qwire.add_option(num::OSCORE, qopt.to_vec());
    qwire.payload = ct.to_vec();
    let (got, sbinding) = server
        .unprotect_request(&qwire)
        .expect("we accept the oracle's request");
    let mut expect = req.clone();
    expect.message_id = 7;
    expect.token = vec![1];
    assert_eq!(got, expect);

    // 2b. Our server response -> oracle client.
    let mut resp = Message::response_to(&got, Code::CONTENT, 0);
    resp.set_content_format(0);
    resp.payload = resp_payload.to_vec();
    let rwire = server.protect_response(&resp, &sbinding, fresh).unwrap();
    let ropt = rwire.option(num::OSCORE).unwrap();
    assert_eq!(
        OscoreOption::decode(ropt).unwrap().partial_iv.is_some(),
        fresh
    );
    let (code, opts, payload) = oclient
        .unprotect_response(ropt, &rwire.payload, sbinding.partial_iv())
        .expect("oracle accepts our response");
    assert_eq!(code, 0x45);
    assert_eq!(opts.as_slice(), inner_bytes(&resp_inner).as_slice());
    assert_eq!(payload.as_slice(), resp_payload);
}

fn rfc_case(idc: bool) -> Case {
    Case {
        secret: *b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10",
        salt: vec![0x9e, 0x7c, 0xa9, 0x22, 0x23, 0x78, 0x63, 0x40],
        idc: idc.then(|| vec![0x37, 0xcb, 0xf3, 0x21, 0x00, 0x17, 0xa2, 0xd3]),
        client_id: vec![],
        server_id: vec![1],
    }
}

#[test]
fn oracle_rfc_contexts() {
    let path = vec!["tv1".to_string()];
    for idc in [false, true] {
        for fresh in [false, true] {
            check(
                &rfc_case(idc),
                &request(&path, None, b"", Code::GET),
                b"Hello World!",
                fresh,
            );
            check(
                &rfc_case(idc),
                &request(&path, Some("a=b"), b"xyz", Code::PUT),
                b"",
                fresh,
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn oracle_random(
        secret in any::<[u8; 16]>(),
        salt in proptest::collection::vec(any::<u8>(), 0..=8),
        idc in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=8)),
        client_id in proptest::collection::vec(any::<u8>(), 0..=7),
        server_id in proptest::collection::vec(any::<u8>(), 0..=7),
        path in proptest::collection::vec("[a-z0-9]{0,12}", 0..4),
        payload in proptest::collection::vec(any::<u8>(), 0..60),
        resp_payload in proptest::collection::vec(any::<u8>(), 0..60),
        fresh in any::<bool>(),
    ) {
        prop_assume!(client_id != server_id);
        let case = Case { secret, salt, idc, client_id, server_id };
        check(&case, &request(&path, None, &payload, Code::POST), &resp_payload, fresh);
    }
}

#[test]
fn oracle_observe_notifications() {
    let case = rfc_case(false);
    let mut req = request(&["obs".to_string()], None, b"", Code::GET);
    req.set_uint_option(num::OBSERVE, 0);
    let inner_req: Vec<CoapOption> = req
        .options
        .iter()
        .filter(|o| o.number != num::URI_HOST)
        .cloned()
        .collect();
    let empty_observe = vec![CoapOption {
        number: num::OBSERVE,
        value: vec![],
    }];

    // Oracle client registers with our server; our notifications verify at the oracle, whose
    // plaintext must carry an empty Inner Observe (RFC 8613 §4.1.3.5.2).
    let mut store = MemStore::default();
    let mut oclient = case.oracle(true, &mut store);
    let mut server = case.ours(false);
    let (ct, qopt) = oclient
        .reserve_sender(&mut store)
        .unwrap_or_else(|_| panic!("oracle reserve"))
        .protect_request(req.code.0, &inner_bytes(&inner_req), &[])
        .unwrap();
    let mut qwire = Message::new(MessageType::Con, Code::FETCH, 1, vec![1]);
    qwire.add_option(num::OSCORE, qopt.to_vec());
    qwire.payload = ct.to_vec();
    let (got, sb) = server.unprotect_request(&qwire).unwrap();
    assert_eq!(got.uint_option(num::OBSERVE), Some(0));
    for seq in 1..4u32 {
        let mut n = Message::response_to(&got, Code::CONTENT, 0);
        n.set_uint_option(num::OBSERVE, seq);
        n.payload = vec![seq as u8];
        let w = server.protect_response(&n, &sb, false).unwrap();
        let (code, opts, payload) = oclient
            .unprotect_observe_response(w.option(num::OSCORE).unwrap(), &w.payload, sb.partial_iv())
            .expect("oracle accepts our notification");
        assert_eq!(code, 0x45);
        assert_eq!(opts.as_slice(), inner_bytes(&empty_observe).as_slice());
        assert_eq!(payload.as_slice(), [seq as u8]);
    }

    // Oracle server notifications (fresh PIV, empty Inner Observe) verify at our client.
    let mut store = MemStore::default();
    let mut oserver = case.oracle(false, &mut store);
    let mut client = case.ours(true);
    let (w, mut cb) = client.protect_request(&req).unwrap();
    oserver
        .unprotect_request(w.option(num::OSCORE).unwrap(), &w.payload)
        .unwrap();
    let mut notes = Vec::new();
    for i in 0..3u8 {
        let (ct, opt) = oserver
            .protect_response(
                0x45,
                &inner_bytes(&empty_observe),
                &[i],
                cb.kid(),
                cb.partial_iv(),
                true,
            )
            .unwrap();
        let mut m = Message::new(
            MessageType::Non,
            Code::CONTENT,
            10 + u16::from(i),
            w.token.clone(),
        );
        m.add_option(num::OBSERVE, vec![i]);
        m.add_option(num::OSCORE, opt.to_vec());
        m.payload = ct.to_vec();
        notes.push(m);
    }
    let got = client.unprotect_response(&notes[1], &mut cb).unwrap();
    assert_eq!(
        (got.uint_option(num::OBSERVE), got.payload.as_slice()),
        (Some(1), &[1u8][..])
    );
    assert_eq!(
        client.unprotect_response(&notes[0], &mut cb).unwrap_err(),
        capillary_oscore::OscoreError::Replay
    );
    assert_eq!(
        client
            .unprotect_response(&notes[2], &mut cb)
            .unwrap()
            .payload,
        [2]
    );
}
