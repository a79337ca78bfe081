//! Server state machine: client lookup, discards, duplicates, replies, MPPE policy.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use capillary_radius::packet::{self, Attribute, Code, Packet};
use capillary_radius::{
    client, ClientConfig, DiscardReason, Incoming, RadiusError, RadiusServer, Reply, ServerConfig,
    SharedSecret,
};
use capillary_secrets::Msk;

const TRUSTED_SECRET: &[u8] = b"trusted-secret";
const OTHER_SECRET: &[u8] = b"other-secret";

fn server() -> RadiusServer {
    let cfg = ServerConfig {
        clients: vec![
            ClientConfig {
                name: "ap-net".into(),
                addr: "10.0.0.0".parse().unwrap(),
                prefix_len: 8,
                secret: SharedSecret::from(OTHER_SECRET),
                trusted: false,
            },
            ClientConfig {
                name: "gw".into(),
                addr: "10.1.2.3".parse().unwrap(),
                prefix_len: 32,
                secret: SharedSecret::from(TRUSTED_SECRET),
                trusted: true,
            },
            ClientConfig {
                name: "v6".into(),
                addr: "2001:db8::".parse().unwrap(),
                prefix_len: 32,
                secret: SharedSecret::from(OTHER_SECRET),
                trusted: false,
            },
        ],
        duplicate_window: Duration::from_secs(30),
    };
    cfg.validate().unwrap();
    RadiusServer::new(cfg)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const EAP_RESPONSE_ID: &[u8] = &[2, 1, 0, 9, 1, b'a', b'l', b'i', b'c'];

fn request(secret: &[u8], id: u8, ra: [u8; 16], state: Option<&[u8]>) -> Vec<u8> {
    client::access_request(
        secret,
        id,
        ra,
        Some(b"alice"),
        EAP_RESPONSE_ID,
        state,
        &[
            Attribute::new(packet::CALLING_STATION_ID, *b"02-00-00-00-00-01"),
            Attribute::new(packet::NAS_IDENTIFIER, *b"nas1"),
        ],
    )
    .unwrap()
}

fn expect_request(i: Incoming) -> capillary_radius::AccessRequest {
    match i {
        Incoming::Request(r) => r,
        other => panic!("expected Request, got {other:?}"),
    }
}

fn msk() -> Msk {
    let mut b = [0u8; 64];
    for (i, x) in b.iter_mut().enumerate() {
        *x = i as u8;
    }
    Msk::from_bytes(b)
}

#[test]
fn request_fields_and_longest_prefix() {
    let mut s = server();
    let now = Instant::now();
    let r = expect_request(s.handle_datagram(
        now,
        addr("10.1.2.3:5000"),
        &request(TRUSTED_SECRET, 1, [1; 16], Some(b"st1")),
    ));
    assert_eq!(r.client, "gw");
    assert!(r.trusted);
    assert_eq!(r.user_name.as_deref(), Some(&b"alice"[..]));
    assert_eq!(r.eap_message, EAP_RESPONSE_ID);
    assert_eq!(r.state.as_deref(), Some(&b"st1"[..]));
    assert_eq!(
        r.calling_station_id.as_deref(),
        Some(&b"02-00-00-00-00-01"[..])
    );
    assert_eq!(r.nas_identifier.as_deref(), Some(&b"nas1"[..]));
    assert_eq!(r.key.identifier, 1);

    let r = expect_request(s.handle_datagram(
        now,
        addr("10.9.9.9:5000"),
        &request(OTHER_SECRET, 1, [1; 16], None),
    ));
    assert_eq!(r.client, "ap-net");
    assert!(!r.trusted);
    // IPv6 prefix.
    let r = expect_request(s.handle_datagram(
        now,
        addr("[2001:db8::77]:1812"),
        &request(OTHER_SECRET, 1, [1; 16], None),
    ));
    assert_eq!(r.client, "v6");
    // IPv4-mapped IPv6 source matches the IPv4 entry.
    let r = expect_request(s.handle_datagram(
        now,
        addr("[::ffff:10.1.2.3]:6000"),
        &request(TRUSTED_SECRET, 1, [1; 16], None),
    ));
    assert_eq!(r.client, "gw");
    assert_eq!(s.stats().requests, 4);
}

#[test]
fn unknown_client_and_wrong_secret_discarded() {
    let mut s = server();
    let now = Instant::now();
    let bytes = request(TRUSTED_SECRET, 1, [1; 16], None);
    assert_eq!(
        s.handle_datagram(now, addr("192.0.2.1:5000"), &bytes),
        Incoming::Discard(DiscardReason::UnknownClient)
    );
    // Right address, secret of another client.
    assert_eq!(
        s.handle_datagram(
            now,
            addr("10.1.2.3:5000"),
            &request(OTHER_SECRET, 2, [2; 16], None)
        ),
        Incoming::Discard(DiscardReason::BadMessageAuthenticator)
    );
    // Tampered byte (User-Name) under a correct secret.
    let mut t = bytes.clone();
    t[22] ^= 1;
    assert_eq!(
        s.handle_datagram(now, addr("10.1.2.3:5000"), &t),
        Incoming::Discard(DiscardReason::BadMessageAuthenticator)
    );
    let st = s.stats();
    assert_eq!(st.discarded_unknown_client, 1);
    assert_eq!(st.discarded_bad_authenticator, 2);
    assert_eq!(st.requests, 0);
    assert_eq!(st.discarded(), 3);
}

#[test]
fn missing_message_authenticator_missing_eap_malformed_unsupported() {
    let mut s = server();
    let now = Instant::now();
    let from = addr("10.1.2.3:5000");
    let mut p = Packet {
        code: Code::AccessRequest,
        identifier: 4,
        authenticator: [4; 16],
        attributes: vec![Attribute::new(packet::EAP_MESSAGE, EAP_RESPONSE_ID)],
    };
    assert_eq!(
        s.handle_datagram(now, from, &p.emit().unwrap()),
        Incoming::Discard(DiscardReason::MissingMessageAuthenticator)
    );
    p.attributes.clear();
    p.attributes
        .push(Attribute::new(packet::USER_NAME, *b"bob"));
    let signed = capillary_radius::crypto::sign_request(TRUSTED_SECRET, &p).unwrap();
    assert_eq!(
        s.handle_datagram(now, from, &signed),
        Incoming::Discard(DiscardReason::MissingEapMessage)
    );
    assert!(matches!(
        s.handle_datagram(now, from, &[1, 2, 3]),
        Incoming::Discard(DiscardReason::Malformed(_))
    ));
    p.code = Code::AccountingRequest;
    assert_eq!(
        s.handle_datagram(now, from, &p.emit().unwrap()),
        Incoming::Discard(DiscardReason::UnsupportedCode(4))
    );
    let st = s.stats();
    assert_eq!(st.discarded_missing_message_authenticator, 1);
    assert_eq!(st.discarded_missing_eap_message, 1);
    assert_eq!(st.discarded_malformed, 1);
    assert_eq!(st.discarded_unsupported_code, 1);
}

#[test]
fn duplicates_in_progress_then_retransmit_identical_bytes() {
    let mut s = server();
    let t0 = Instant::now();
    let from = addr("10.1.2.3:5000");
    let ra = [5; 16];
    let bytes = request(TRUSTED_SECRET, 7, ra, None);
    let r = expect_request(s.handle_datagram(t0, from, &bytes));
    assert_eq!(s.handle_datagram(t0, from, &bytes), Incoming::InProgress);

    let reply = s
        .respond(
            t0,
            &r.key,
            Reply::Challenge {
                eap: &[1, 2, 0, 4],
                state: b"S",
                session_timeout: Some(30),
            },
            [0, 0],
        )
        .unwrap();
    let t1 = t0 + Duration::from_secs(5);
    assert_eq!(
        s.handle_datagram(t1, from, &bytes),
        Incoming::Retransmit(reply.clone())
    );
    assert_eq!(s.stats().duplicates, 1);
    assert_eq!(s.stats().duplicates_in_progress, 1);
    assert_eq!(s.stats().requests, 1);
    assert_eq!(s.stats().challenges, 1);
    // Answering twice is refused.
    assert_eq!(
        s.respond(t1, &r.key, Reply::Reject { eap: None }, [0, 0]),
        Err(RadiusError::AlreadyAnswered)
    );
    // Other port: not a duplicate.
    expect_request(s.handle_datagram(t1, addr("10.1.2.3:5001"), &bytes));
    // After the window the same bytes are a new request.
    let t2 = t0 + Duration::from_secs(31);
    s.expire(t2);
    expect_request(s.handle_datagram(t2, from, &bytes));
    // Same id, new authenticator: new request, and the old key is superseded.
    let r2 =
        expect_request(s.handle_datagram(t2, from, &request(TRUSTED_SECRET, 7, [6; 16], None)));
    assert_eq!(
        s.respond(t2, &r.key, Reply::Reject { eap: None }, [0, 0]),
        Err(RadiusError::Superseded)
    );
    s.respond(
        t2,
        &r2.key,
        Reply::Reject {
            eap: Some(&[4, 2, 0, 4]),
        },
        [0, 0],
    )
    .unwrap();
    assert_eq!(s.stats().rejects, 1);
}

#[test]
fn forget_and_expire() {
    let mut s = server();
    let t0 = Instant::now();
    let from = addr("10.1.2.3:5000");
    let bytes = request(TRUSTED_SECRET, 8, [8; 16], None);
    let r = expect_request(s.handle_datagram(t0, from, &bytes));
    s.forget(&r.key);
    assert_eq!(s.cache_len(), 0);
    expect_request(s.handle_datagram(t0, from, &bytes));
    // In-progress entries survive one window, go after two.
    s.expire(t0 + Duration::from_secs(31));
    assert_eq!(s.cache_len(), 1);
    s.expire(t0 + Duration::from_secs(61));
    assert_eq!(s.cache_len(), 0);
    // respond still works after expiry (looked up by source address).
    let out = s
        .respond(t0, &r.key, Reply::Reject { eap: None }, [0, 0])
        .unwrap();
    assert!(client::verify_response(TRUSTED_SECRET, &r.key.authenticator, &out).is_ok());
}

#[test]
fn challenge_reply_is_signed_and_splits_eap() {
    let mut s = server();
    let now = Instant::now();
    let from = addr("10.1.2.3:5000");
    let ra = [9; 16];
    let r = expect_request(s.handle_datagram(now, from, &request(TRUSTED_SECRET, 3, ra, None)));
    let eap: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
    let out = s
        .respond(
            now,
            &r.key,
            Reply::Challenge {
                eap: &eap,
                state: b"state-1",
                session_timeout: Some(20),
            },
            [1, 2],
        )
        .unwrap();
    let p = client::verify_response(TRUSTED_SECRET, &ra, &out).unwrap();
    assert_eq!(p.code, Code::Challenge);
    assert_eq!(p.identifier, 3);
    assert_eq!(p.attributes_of(packet::EAP_MESSAGE).count(), 3);
    assert_eq!(client::eap_message(&p).unwrap(), eap);
    assert_eq!(client::state(&p).unwrap(), b"state-1");
    assert_eq!(
        p.attribute(packet::SESSION_TIMEOUT),
        Some(&[0, 0, 0, 20][..])
    );
    assert!(p.attribute(packet::MESSAGE_AUTHENTICATOR).is_some());
    // Wrong secret or wrong request authenticator fail verification.
    assert_eq!(
        client::verify_response(OTHER_SECRET, &ra, &out),
        Err(RadiusError::BadResponseAuthenticator)
    );
    assert!(client::verify_response(TRUSTED_SECRET, &[0; 16], &out).is_err());
    // Tampered Message-Authenticator with a recomputed Response Authenticator is caught.
    let mut t = out.clone();
    let n = t.len();
    t[n - 1] ^= 1;
    let fixed = capillary_radius::crypto::response_authenticator(TRUSTED_SECRET, &ra, &t);
    t[4..20].copy_from_slice(&fixed);
    assert_eq!(
        client::verify_response(TRUSTED_SECRET, &ra, &t),
        Err(RadiusError::BadMessageAuthenticator)
    );
}

#[test]
fn mppe_keys_only_for_trusted_clients() {
    let mut s = server();
    let now = Instant::now();
    let key = msk();

    // Trusted: Recv-Key = MSK[0..32], Send-Key = MSK[32..64], distinct salts with high bit.
    let ra = [10; 16];
    let r = expect_request(s.handle_datagram(
        now,
        addr("10.1.2.3:5000"),
        &request(TRUSTED_SECRET, 1, ra, None),
    ));
    let out = s
        .respond(
            now,
            &r.key,
            Reply::Accept {
                eap: &[3, 1, 0, 4],
                msk: Some(&key),
                user_name: Some(b"imsi"),
            },
            [0x12, 0x34],
        )
        .unwrap();
    let p = client::verify_response(TRUSTED_SECRET, &ra, &out).unwrap();
    assert_eq!(p.code, Code::Accept);
    assert_eq!(p.attribute(packet::USER_NAME), Some(&b"imsi"[..]));
    assert_eq!(client::eap_message(&p).unwrap(), [3, 1, 0, 4]);
    let recv = client::mppe_recv_key(&p).unwrap();
    let send = client::mppe_send_key(&p).unwrap();
    assert!(recv[0] & 0x80 != 0 && send[0] & 0x80 != 0);
    assert_ne!(recv[..2], send[..2]);
    let all: Vec<u8> = (0..64).collect();
    assert_eq!(
        &client::decrypt_mppe_key(TRUSTED_SECRET, &ra, recv).unwrap()[..],
        &all[..32]
    );
    assert_eq!(
        &client::decrypt_mppe_key(TRUSTED_SECRET, &ra, send).unwrap()[..],
        &all[32..]
    );
    assert_eq!(
        &client::msk_from_mppe(TRUSTED_SECRET, &ra, &p)
            .unwrap()
            .unwrap()[..],
        &all[..]
    );
    // Vendor-Specific layout: 26, len 58, vendor 311, type 17, vendor-len 52.
    let vsa = p
        .attributes
        .iter()
        .find(|a| a.typ == packet::VENDOR_SPECIFIC)
        .unwrap();
    assert_eq!(vsa.value.len(), 56);
    assert_eq!(&vsa.value[..6], &[0, 0, 1, 0x37, 17, 52]);

    // Untrusted: no Vendor-Specific at all, counted.
    let ra = [11; 16];
    let r = expect_request(s.handle_datagram(
        now,
        addr("10.7.7.7:5000"),
        &request(OTHER_SECRET, 1, ra, None),
    ));
    let out = s
        .respond(
            now,
            &r.key,
            Reply::Accept {
                eap: &[3, 1, 0, 4],
                msk: Some(&key),
                user_name: None,
            },
            [0, 0],
        )
        .unwrap();
    let p = client::verify_response(OTHER_SECRET, &ra, &out).unwrap();
    assert!(p.attribute(packet::VENDOR_SPECIFIC).is_none());
    assert_eq!(s.stats().mppe_withheld, 1);
    assert_eq!(s.stats().accepts, 2);
}

#[test]
fn config_validation_and_redaction() {
    let mut cfg = ServerConfig {
        clients: vec![ClientConfig {
            name: "a".into(),
            addr: IpAddr::from([10, 0, 0, 1]),
            prefix_len: 33,
            secret: SharedSecret::from("hunter2"),
            trusted: false,
        }],
        duplicate_window: Duration::from_secs(10),
    };
    assert!(cfg.validate().is_err());
    cfg.clients[0].prefix_len = 32;
    assert!(cfg.validate().is_ok());
    cfg.clients[0].secret = SharedSecret::new(Vec::new());
    assert!(cfg.validate().is_err());
    cfg.clients[0].secret = SharedSecret::from("hunter2");
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains("hunter2"));
    assert!(!dbg.contains("104, 117"));
    // prefix_len 0 matches everything of the family.
    cfg.clients[0].prefix_len = 0;
    assert!(cfg.clients[0].matches("192.0.2.1".parse().unwrap()));
    assert!(!cfg.clients[0].matches("2001:db8::1".parse().unwrap()));
}

#[test]
fn proxy_state_echoed_and_message_authenticator_first() {
    let mut s = server();
    let now = Instant::now();
    let ra = [12; 16];
    let bytes = client::access_request(
        TRUSTED_SECRET,
        5,
        ra,
        None,
        EAP_RESPONSE_ID,
        None,
        &[
            Attribute::new(packet::PROXY_STATE, *b"p1"),
            Attribute::new(packet::PROXY_STATE, *b"p2"),
        ],
    )
    .unwrap();
    let r = expect_request(s.handle_datagram(now, addr("10.1.2.3:5000"), &bytes));
    let out = s
        .respond(
            now,
            &r.key,
            Reply::Reject {
                eap: Some(&[4, 1, 0, 4]),
            },
            [0, 0],
        )
        .unwrap();
    let p = client::verify_response(TRUSTED_SECRET, &ra, &out).unwrap();
    assert_eq!(p.code, Code::Reject);
    assert_eq!(p.attributes[0].typ, packet::MESSAGE_AUTHENTICATOR);
    let ps: Vec<&[u8]> = p.attributes_of(packet::PROXY_STATE).collect();
    assert_eq!(ps, [&b"p1"[..], &b"p2"[..]]);
}
