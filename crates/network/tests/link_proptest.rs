//! No input bytes make the network link endpoint panic: arbitrary datagrams from unknown and
//! authenticated gateways, arbitrary batch payloads and arbitrary relayed CoAP messages
//! inside valid OSCORE-protected `POST /r` requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod link_support;

use std::time::{Duration, Instant};

use capillary_coap::{Code, Message, MessageType};
use capillary_network::link::{LinkConfig, LinkEndpoint};
use capillary_relay::{Batch, Entry};
use link_support::World;
use proptest::prelude::*;

fn drain(net: &mut LinkEndpoint) {
    while net.poll_transmit().is_some() {}
    while net.poll_event().is_some() {}
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_datagrams_from_anyone(datagrams in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..300), 1..8)) {
        let mut net = LinkEndpoint::new(LinkConfig::default(), 1);
        let now = Instant::now();
        let from = "198.51.100.7:5683".parse().unwrap();
        for d in &datagrams {
            net.handle_datagram(now, from, d);
            drain(&mut net);
        }
        net.handle_timeout(now + Duration::from_secs(30));
        drain(&mut net);
    }

    #[test]
    fn arbitrary_coap_shaped_datagrams(ty in 0u8..4, code in any::<u8>(), mid in any::<u16>(),
        path in "[a-z./-]{0,24}", oscore in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)),
        payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut net = LinkEndpoint::new(LinkConfig::default(), 2);
        let now = Instant::now();
        let from = "198.51.100.8:5683".parse().unwrap();
        let mut m = Message::new(MessageType::from_bits(ty), Code(code), mid, vec![1, 2]);
        m.set_uri_path(&path);
        if let Some(o) = oscore {
            m.add_option(capillary_coap::msg::option_number::OSCORE, o);
        }
        m.payload = payload;
        if let Ok(b) = m.encode() {
            net.handle_datagram(now, from, &b);
            drain(&mut net);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn arbitrary_input_from_an_authenticated_gateway(
        raw in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4),
        batch_payload in proptest::collection::vec(any::<u8>(), 0..200),
        entries in proptest::collection::vec((0u32..4, 0u8..4, any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..40)), 0..6),
    ) {
        let mut w = World::new(3);
        w.authenticate_gateway();
        let addr = w.gw_addr;
        // Raw datagrams from the gateway's address.
        for d in &raw {
            w.net.handle_datagram(w.now, addr, d);
        }
        // A valid OSCORE POST /r with an arbitrary payload.
        let mut m = Message::new(MessageType::Con, Code::POST, 0x7000, vec![9]);
        m.set_uri_path("r");
        m.payload = batch_payload;
        let (b, _) = w.gw.peer.protect_request(&m);
        w.net.handle_datagram(w.now, addr, &b);
        // A valid batch of arbitrary relayed CoAP messages (some protected-looking).
        let es: Vec<Entry> = entries.iter().filter_map(|(h, ty, mid, body)| {
            let mut c = Message::new(MessageType::from_bits(*ty), Code::POST, *mid, vec![]);
            if body.first().is_some_and(|x| x % 2 == 0) {
                c.add_option(capillary_coap::msg::option_number::OSCORE, body.iter().take(5).copied().collect());
            } else {
                c.set_uri_path(".well-known/coap-eap");
            }
            c.payload = body.clone();
            c.encode().ok().map(|bytes| Entry::coap(*h, bytes))
        }).collect();
        let mut m = Message::new(MessageType::Con, Code::POST, 0x7001, vec![10]);
        m.set_uri_path("r");
        m.payload = Batch::new(es).encode().unwrap();
        let (b, _) = w.gw.peer.protect_request(&m);
        w.net.handle_datagram(w.now, addr, &b);
        w.run_until(Duration::from_secs(300), |_| false);
    }
}
