//! Arbitrary input never panics.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use capillary_radius::packet::Packet;
use capillary_radius::{
    client, crypto, ClientConfig, Incoming, RadiusServer, ServerConfig, SharedSecret,
};
use proptest::prelude::*;

fn server() -> RadiusServer {
    RadiusServer::new(ServerConfig {
        clients: vec![ClientConfig {
            name: "any".into(),
            addr: "0.0.0.0".parse().unwrap(),
            prefix_len: 0,
            secret: SharedSecret::from("s"),
            trusted: true,
        }],
        duplicate_window: Duration::from_secs(5),
    })
}

proptest! {
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(p) = Packet::parse(&bytes) {
            // Whatever parses re-encodes to the same bytes (up to the Length field).
            let out = p.emit().unwrap();
            prop_assert_eq!(&out[..], &bytes[..out.len()]);
            let _ = p.eap_message();
        }
    }

    #[test]
    fn structured_headers_never_panic(
        code in any::<u8>(), id in any::<u8>(), len in 0u16..700,
        attrs in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut b = vec![code, id];
        b.extend(len.to_be_bytes());
        b.extend([0u8; 16]);
        b.extend(attrs);
        let _ = Packet::parse(&b);
        let mut s = server();
        let from: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let _ = s.handle_datagram(Instant::now(), from, &b);
        let _ = client::verify_response(b"s", &[0; 16], &b);
    }

    #[test]
    fn handle_datagram_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut s = server();
        let from: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let now = Instant::now();
        prop_assert!(!matches!(s.handle_datagram(now, from, &bytes), Incoming::Retransmit(_)));
        prop_assert_eq!(s.stats().received, 1);
        let _ = crypto::decrypt_mppe_key(b"s", &[0; 16], &bytes);
        let _ = crypto::decode_user_password(b"s", &[0; 16], &bytes);
    }

    #[test]
    fn valid_requests_round_trip(
        eap in proptest::collection::vec(any::<u8>(), 1..2000),
        id in any::<u8>(), ra in any::<[u8; 16]>(),
    ) {
        let bytes = client::access_request(b"s", id, ra, None, &eap, None, &[]).unwrap();
        let mut s = server();
        let from: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        match s.handle_datagram(Instant::now(), from, &bytes) {
            Incoming::Request(r) => prop_assert_eq!(r.eap_message, eap),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
