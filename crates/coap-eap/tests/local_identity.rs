//! [`CoapEapAuthenticator::resume_after_identity`]: an MTC gateway ran the first exchange
//! (EAP-Request/Identity, RFC 9820 §3.2 steps 1–2) with the device on the authenticator's
//! behalf (docs/PROTOCOL.md §5); the authenticator continues only from a request it would
//! have sent itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use capillary_coap::{Code, Message, MessageType};
use capillary_coap_eap::info::Payload;
use capillary_coap_eap::trigger::{build_trigger, parse_trigger, ResourcePath};
use capillary_coap_eap::{
    identity_request, AuthError, AuthEvent, AuthenticatorConfig, CipherSuite, CoapEapAuthenticator,
    CoapEapInfo, CoapEapPeer, PeerConfig, PeerEvent,
};

const RID_C: [u8; 1] = [0x0c];
const IDENTITY: &[u8] = b"60010100000001@wlan.mnc001.mcc001.3gppnetwork.org";

fn cfg() -> AuthenticatorConfig {
    let mut c = AuthenticatorConfig::new(RID_C.to_vec(), 100, 7);
    c.cipher_suites = vec![CipherSuite::DEFAULT, CipherSuite::A128GCM_SHA256];
    c
}

fn offer() -> CoapEapInfo {
    CoapEapInfo {
        cipher_suites: Some(cfg().cipher_suites),
        rid_c: Some(RID_C.to_vec()),
        ..CoapEapInfo::default()
    }
}

/// A device answering `request` with its EAP-Response/Identity; returns the 2.01.
fn device_answer(now: Instant, request: &Message) -> Message {
    let mut peer = CoapEapPeer::new(PeerConfig::new(vec![0x1d], 1, 500));
    peer.start(now);
    let Some(PeerEvent::Transmit(trigger)) = peer.poll_event() else {
        panic!("trigger")
    };
    let path = parse_trigger(&trigger).unwrap();
    let mut request = request.clone();
    request.set_uri_path(&path.to_path_string());
    peer.handle_message(now, &request);
    let Some(PeerEvent::EapRequest(req)) = peer.poll_event() else {
        panic!("the device takes the request")
    };
    let mut resp = vec![2, req[1], 0, 0, 1];
    resp.extend_from_slice(IDENTITY);
    let len = resp.len() as u16;
    resp[2..4].copy_from_slice(&len.to_be_bytes());
    peer.provide_eap_response(now, &resp).unwrap();
    let Some(PeerEvent::Transmit(answer)) = peer.poll_event() else {
        panic!("2.01")
    };
    answer
}

fn first_resource() -> ResourcePath {
    // CoapEapPeer::new(.., resource_seed 1, ..) names its first resource "/a/1".
    let t = build_trigger(0, Vec::new(), &ResourcePath(vec!["a".into(), "1".into()]));
    parse_trigger(&t).unwrap()
}

fn request_with(offer: &CoapEapInfo, eap_id: u8) -> Message {
    identity_request(
        0x4242,
        vec![0xaa; 8],
        true,
        &first_resource(),
        eap_id,
        offer,
    )
}

#[test]
fn resumes_from_the_identity_response() {
    let now = Instant::now();
    let req = request_with(&offer(), 0x31);
    let resp = device_answer(now, &req);
    let mut a = CoapEapAuthenticator::resume_after_identity(cfg(), now, &req, &resp).unwrap();
    let Some(AuthEvent::EapResponse(eap)) = a.poll_event() else {
        panic!("EAP-Response/Identity for the EAP server")
    };
    assert_eq!(eap[0], 2);
    assert_eq!(eap[1], 0x31, "the Identifier of the gateway's request");
    assert_eq!(&eap[5..], IDENTITY);
    assert!(a.poll_event().is_none(), "nothing to send to the device");
    // The next request goes to the device's next resource, with the next Message ID.
    a.send_eap_request(now, &[1, 0x32, 0, 5, 50]).unwrap();
    let Some(AuthEvent::Transmit(next)) = a.poll_event() else {
        panic!("next request")
    };
    assert_eq!(next.message_id, 0x4243);
    assert_eq!(next.uri_path(), resp.location_path());
    assert!(Payload::parse(&next.payload).unwrap().info.is_none());
    // A duplicate of the same request is ignored; the run goes on.
    assert_eq!(a.handle_local_identity(now, &req, &resp), Ok(false));
    assert!(a.poll_event().is_none());
}

#[test]
fn another_rid_c_or_suite_list_is_refused() {
    let now = Instant::now();
    let mut other_rid = offer();
    other_rid.rid_c = Some(vec![0x0d]);
    let mut reordered = offer();
    reordered.cipher_suites = Some(vec![CipherSuite::A128GCM_SHA256, CipherSuite::DEFAULT]);
    let mut fewer = offer();
    fewer.cipher_suites = Some(vec![CipherSuite::DEFAULT]);
    let mut none = offer();
    none.cipher_suites = None;
    let mut extra = offer();
    extra.session_lifetime = Some(60);
    for o in [other_rid, reordered, fewer, none, extra] {
        let req = request_with(&o, 1);
        let resp = device_answer(now, &req);
        let r = CoapEapAuthenticator::resume_after_identity(cfg(), now, &req, &resp);
        assert!(matches!(r, Err(AuthError::LocalIdentity(_))), "{o:?}");
    }
}

#[test]
fn a_response_that_does_not_answer_the_request_is_refused() {
    let now = Instant::now();
    let req = request_with(&offer(), 9);
    let resp = device_answer(now, &req);
    let mut wrong_token = resp.clone();
    wrong_token.token = vec![1; 8];
    let mut wrong_mid = resp.clone();
    wrong_mid.message_id ^= 1;
    let mut not_response = resp.clone();
    not_response.code = Code::POST;
    not_response.ty = MessageType::Con;
    for r in [wrong_token, wrong_mid, not_response] {
        assert!(matches!(
            CoapEapAuthenticator::resume_after_identity(cfg(), now, &req, &r),
            Err(AuthError::LocalIdentity(_))
        ));
    }
    // The EAP-Response/Identity must carry the request's EAP Identifier.
    let other = request_with(&offer(), 10);
    assert!(matches!(
        CoapEapAuthenticator::resume_after_identity(cfg(), now, &other, &resp),
        Err(AuthError::LocalIdentity(_))
    ));
}

#[test]
fn a_request_that_is_not_the_first_coap_eap_request_is_refused() {
    let now = Instant::now();
    let good = request_with(&offer(), 3);
    let resp = device_answer(now, &good);
    let mut get = good.clone();
    get.code = Code::GET;
    let mut challenge = good.clone();
    challenge.payload[4] = 50;
    let mut trigger = good.clone();
    trigger.set_uri_path("/.well-known/coap-eap");
    for r in [get, challenge, trigger] {
        assert!(matches!(
            CoapEapAuthenticator::resume_after_identity(cfg(), now, &r, &resp),
            Err(AuthError::LocalIdentity(_))
        ));
    }
}

#[test]
fn an_error_from_the_device_ends_the_run() {
    let now = Instant::now();
    let req = request_with(&offer(), 3);
    let mut resp = Message::response_to(&req, Code::BAD_REQUEST, 0);
    resp.message_id = req.message_id;
    let mut a = CoapEapAuthenticator::resume_after_identity(cfg(), now, &req, &resp).unwrap();
    assert!(matches!(a.poll_event(), Some(AuthEvent::Failed(_))));
    assert!(a
        .poll_timeout()
        .is_none_or(|t| t > now + Duration::from_secs(1)));
}
