//! No-Response (RFC 7967 §2.1).
#![allow(clippy::unwrap_used)] // tests may unwrap (house rules)

use capillary_coap::msg::{option_number, Code, Message, MessageType};
use capillary_coap::no_response::{self, suppresses, SUPPRESS_2XX, SUPPRESS_4XX, SUPPRESS_5XX};

#[test]
fn bits_per_class() {
    assert_eq!((SUPPRESS_2XX, SUPPRESS_4XX, SUPPRESS_5XX), (2, 8, 16));
    assert!(suppresses(2, Code::CHANGED) && !suppresses(2, Code::NOT_FOUND));
    assert!(suppresses(8, Code::BAD_REQUEST) && !suppresses(8, Code::CONTENT));
    assert!(suppresses(16, Code::INTERNAL_SERVER_ERROR) && !suppresses(16, Code::BAD_REQUEST));
    assert!(
        suppresses(26, Code::CONTENT)
            && suppresses(26, Code::NOT_FOUND)
            && suppresses(26, Code::BAD_GATEWAY)
    );
    for code in [Code::CONTENT, Code::NOT_FOUND, Code::SERVICE_UNAVAILABLE] {
        assert!(!suppresses(0, code), "0 = interested in all");
    }
    assert!(!suppresses(0xff, Code::EMPTY) && !suppresses(0xff, Code::GET));
}

#[test]
fn from_request() {
    let mut req = Message::new(MessageType::Non, Code::POST, 1, vec![1]);
    assert!(!no_response::should_suppress(&req, Code::CHANGED));
    no_response::set(&mut req, SUPPRESS_2XX);
    assert_eq!(req.option(option_number::NO_RESPONSE), Some(&[2u8][..]));
    assert!(no_response::should_suppress(&req, Code::CHANGED));
    assert!(!no_response::should_suppress(&req, Code::BAD_REQUEST));
    let parsed = Message::parse(&req.encode().unwrap()).unwrap();
    assert_eq!(no_response::value_of(&parsed), Some(2));
    req.set_option(option_number::NO_RESPONSE, vec![1, 2]);
    assert_eq!(no_response::value_of(&req), None);
}
