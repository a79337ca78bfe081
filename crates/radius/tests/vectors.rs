//! Known-answer tests against RFC examples and hand-computed vectors.
#![allow(clippy::unwrap_used)]

mod common;

use capillary_radius::client;
use capillary_radius::crypto;
use capillary_radius::packet::{self, Code, Packet};
use common::{arr16, vectors};

#[test]
fn rfc2865_7_1_access_request_parses_and_reencodes() {
    let v = vectors("rfc2865.toml");
    let req = Packet::parse(&v["access_request"]).unwrap();
    assert_eq!(req.code, Code::AccessRequest);
    assert_eq!(req.identifier, 0);
    assert_eq!(&req.authenticator[..], &v["request_authenticator"][..]);
    assert_eq!(req.attribute(packet::USER_NAME), Some(&b"nemo"[..]));
    assert_eq!(req.attribute(packet::NAS_PORT), Some(&[0, 0, 0, 3][..]));
    assert_eq!(req.emit().unwrap(), v["access_request"]);
}

#[test]
fn rfc2865_7_1_user_password_hiding() {
    let v = vectors("rfc2865.toml");
    let ra = arr16(&v["request_authenticator"]);
    let req = Packet::parse(&v["access_request"]).unwrap();
    let hidden = req.attribute(packet::USER_PASSWORD).unwrap();
    assert_eq!(hidden, &v["user_password_hidden"][..]);
    let plain = crypto::decode_user_password(&v["secret"], &ra, hidden).unwrap();
    assert_eq!(&plain[..], &v["user_password"][..]);
    let again = crypto::hide_user_password(&v["secret"], &ra, &v["user_password"]).unwrap();
    assert_eq!(again, v["user_password_hidden"]);
}

#[test]
fn rfc2865_7_1_response_authenticator() {
    let v = vectors("rfc2865.toml");
    let ra = arr16(&v["request_authenticator"]);
    let accept = &v["access_accept"];
    assert_eq!(
        crypto::response_authenticator(&v["secret"], &ra, accept),
        arr16(&accept[4..20])
    );
    assert!(crypto::verify_response_authenticator(
        &v["secret"],
        &ra,
        accept
    ));
    assert!(!crypto::verify_response_authenticator(
        b"wrong", &ra, accept
    ));
    // It has no Message-Authenticator: client::verify_response requires one in every reply
    // (Blast-RADIUS mitigation), so the plain RFC 2865 reply is refused there.
    assert_eq!(
        client::verify_response(&v["secret"], &ra, accept),
        Err(capillary_radius::RadiusError::MissingMessageAuthenticator)
    );
}

#[test]
fn rfc5997_6_message_authenticator() {
    let v = vectors("rfc5997.toml");
    let req = &v["status_server"];
    let p = Packet::parse(req).unwrap();
    assert_eq!(p.code, Code::StatusServer);
    assert_eq!(
        p.attribute(packet::MESSAGE_AUTHENTICATOR),
        Some(&v["message_authenticator"][..])
    );
    assert_eq!(
        crypto::verify_message_authenticator(&v["secret"], &p.authenticator, req),
        Ok(true)
    );
    assert!(crypto::verify_message_authenticator(b"xyzzy5462", &p.authenticator, req).is_err());
    // Signing the packet with the MA zeroed reproduces the RFC bytes.
    let mut unsigned = p.clone();
    unsigned.attributes[0].value = vec![0; 16];
    assert_eq!(&crypto::sign_request(&v["secret"], &unsigned).unwrap(), req);
    // The RFC's Access-Accept reply: Response Authenticator over the Status-Server's authenticator.
    assert!(crypto::verify_response_authenticator(
        &v["secret"],
        &p.authenticator,
        &v["access_accept"]
    ));
}

#[test]
fn rfc2548_mppe_fixed_vector() {
    let v = vectors("mppe.toml");
    let ra = arr16(&v["request_authenticator"]);
    let salt = [v["salt"][0], v["salt"][1]];
    let enc = crypto::encrypt_mppe_key(&v["secret"], &ra, salt, &v["key"]).unwrap();
    assert_eq!(enc, v["value"]);
    assert_eq!(enc.len(), 2 + 48);
    let dec = client::decrypt_mppe_key(&v["secret"], &ra, &v["value"]).unwrap();
    assert_eq!(&dec[..], &v["key"][..]);
}

#[test]
fn mppe_round_trip_and_errors() {
    let ra = [7u8; 16];
    for len in [0usize, 1, 15, 16, 32, 64, 200] {
        let key: Vec<u8> = (0..len as u8).collect();
        let enc = crypto::encrypt_mppe_key(b"s3cret", &ra, [0x12, 0x34], &key).unwrap();
        assert_eq!(enc[0], 0x92, "salt high bit forced");
        assert_eq!((enc.len() - 2) % 16, 0);
        assert_eq!(
            &crypto::decrypt_mppe_key(b"s3cret", &ra, &enc).unwrap()[..],
            &key[..]
        );
        // A different Request Authenticator does not give the key back.
        let other = crypto::decrypt_mppe_key(b"s3cret", &[8; 16], &enc);
        assert!(other.map(|k| k[..] != key[..]).unwrap_or(true) || key.is_empty());
    }
    assert!(crypto::encrypt_mppe_key(b"s", &ra, [0, 0], &[0u8; 240]).is_err());
    assert!(crypto::decrypt_mppe_key(b"s", &ra, &[0x80]).is_err());
    assert!(crypto::decrypt_mppe_key(
        b"s",
        &ra,
        &[0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    )
    .is_err());
    assert!(crypto::decrypt_mppe_key(b"s", &ra, &[0x80, 0x01, 0, 0, 0]).is_err());
}

#[test]
fn eap_message_split_at_253_and_reassembled() {
    let ra = [3u8; 16];
    for len in [1usize, 252, 253, 254, 506, 507, 1000, 3000] {
        let eap: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let bytes =
            client::access_request(b"sec", 9, ra, Some(b"user"), &eap, Some(b"st"), &[]).unwrap();
        let p = Packet::parse(&bytes).unwrap();
        let parts: Vec<&[u8]> = p.attributes_of(packet::EAP_MESSAGE).collect();
        assert_eq!(parts.len(), len.div_ceil(253));
        assert!(parts.iter().all(|c| c.len() <= 253));
        assert!(parts[..parts.len() - 1].iter().all(|c| c.len() == 253));
        assert_eq!(client::eap_message(&p).unwrap(), eap);
        assert_eq!(client::state(&p).unwrap(), b"st");
        assert_eq!(
            crypto::verify_message_authenticator(b"sec", &ra, &bytes),
            Ok(true)
        );
    }
    // Too large for one packet.
    assert!(client::access_request(b"sec", 9, ra, None, &[0u8; 4096], None, &[]).is_err());
}

#[test]
fn non_consecutive_eap_messages_rejected() {
    let p = Packet {
        code: Code::AccessRequest,
        identifier: 1,
        authenticator: [0; 16],
        attributes: vec![
            packet::Attribute::new(packet::EAP_MESSAGE, [1, 2]),
            packet::Attribute::new(packet::USER_NAME, *b"x"),
            packet::Attribute::new(packet::EAP_MESSAGE, [3]),
        ],
    };
    assert!(p.eap_message().is_err());
    assert_eq!(client::eap_message(&p), None);
}

#[test]
fn decode_errors() {
    use capillary_radius::DecodeError;
    assert_eq!(Packet::parse(&[1; 19]), Err(DecodeError::TooShort(19)));
    let mut b = vec![1, 0, 0, 19];
    b.extend([0; 16]);
    assert_eq!(Packet::parse(&b), Err(DecodeError::BadLength(19)));
    b[3] = 30;
    assert!(matches!(
        Packet::parse(&b),
        Err(DecodeError::Truncated { .. })
    ));
    b[3] = 22;
    b.extend([1, 1]);
    assert!(matches!(
        Packet::parse(&b),
        Err(DecodeError::BadAttributeLength { .. })
    ));
    b[21] = 3;
    assert!(matches!(
        Packet::parse(&b),
        Err(DecodeError::BadAttributeLength { .. })
    ));
    // Padding after Length is ignored.
    b[21] = 2;
    b.extend([0xff; 5]);
    assert_eq!(Packet::parse(&b).unwrap().attributes.len(), 1);
    // Message-Authenticator with the wrong length.
    let mut m = vec![1, 0, 0, 24];
    m.extend([0; 16]);
    m.extend([80, 4, 0, 0]);
    assert_eq!(
        Packet::parse(&m),
        Err(DecodeError::BadMessageAuthenticatorAttribute)
    );
}

/// The server answers the RFC 5997 §6 Status-Server with an Access-Accept that the client can
/// verify (Response Authenticator and, as we always add one, Message-Authenticator); the same
/// packet under another secret, or without its Message-Authenticator, is discarded.
#[test]
fn rfc5997_status_server_is_answered() {
    use capillary_radius::{ClientConfig, DiscardReason, Incoming, RadiusServer, ServerConfig};
    let v = vectors("rfc5997.toml");
    let make = |secret: &[u8]| {
        RadiusServer::new(ServerConfig {
            clients: vec![ClientConfig {
                name: "nas".into(),
                addr: "127.0.0.1".parse().unwrap(),
                prefix_len: 32,
                secret: secret.to_vec().into(),
                trusted: false,
            }],
            duplicate_window: std::time::Duration::from_secs(30),
        })
    };
    let from: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let now = std::time::Instant::now();
    let req = &v["status_server"];
    let ra = Packet::parse(req).unwrap().authenticator;
    let mut server = make(&v["secret"]);
    let Incoming::Reply(bytes) = server.handle_datagram(now, from, req) else {
        panic!("Status-Server not answered");
    };
    let reply = client::verify_response(&v["secret"], &ra, &bytes).unwrap();
    assert_eq!(reply.code, Code::Accept);
    assert_eq!(reply.identifier, 0xda);
    assert_eq!(server.stats().status_server, 1);
    assert_eq!(server.stats().requests, 0, "never reaches the EAP layer");

    let mut other = make(b"not-the-secret");
    assert_eq!(
        other.handle_datagram(now, from, req),
        Incoming::Discard(DiscardReason::BadMessageAuthenticator)
    );
    let mut no_ma = Packet::parse(req).unwrap();
    no_ma.attributes.clear();
    let bytes = no_ma.emit().unwrap();
    assert_eq!(
        server.handle_datagram(now, from, &bytes),
        Incoming::Discard(DiscardReason::MissingMessageAuthenticator)
    );
}
