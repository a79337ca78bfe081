//! Message API: codes, option helpers, uint codec, option-length boundaries (RFC 7252 §3.1, §3.2, §5.4.6).
#![allow(clippy::unwrap_used)] // tests may unwrap (house rules)

use capillary_coap::msg::{
    decode_uint, encode_options, encode_uint, option_number as on, parse_options, rejection_for,
    CoapOption, Code, Message, MessageType, MAX_OPTION_LENGTH,
};
use capillary_coap::CoapError;

#[test]
fn code_class_detail_display() {
    assert_eq!(Code::CONTENT.0, 0x45);
    assert_eq!(Code::CONTENT.to_string(), "2.05");
    assert_eq!(Code::CONTINUE.to_string(), "2.31");
    assert_eq!(Code::TOO_MANY_REQUESTS.0, (4 << 5) | 29);
    assert_eq!(Code::PROXYING_NOT_SUPPORTED.to_string(), "5.05");
    assert_eq!(Code::IPATCH, Code(7));
    assert_eq!(Code::new(4, 4), Code::NOT_FOUND);
    assert_eq!((Code::NOT_FOUND.class(), Code::NOT_FOUND.detail()), (4, 4));
    assert!(Code::GET.is_request() && !Code::GET.is_response());
    assert!(Code::CHANGED.is_response() && !Code::CHANGED.is_request());
    assert!(Code::EMPTY.is_empty() && !Code::EMPTY.is_request() && !Code::EMPTY.is_response());
    assert!(!Code::new(1, 0).is_request() && !Code::new(7, 1).is_response());
}

#[test]
fn option_number_properties() {
    // RFC 7252 Table 4 C/U/N columns.
    assert!(on::is_critical(on::IF_MATCH) && on::is_critical(on::URI_PATH));
    assert!(!on::is_critical(on::ETAG) && !on::is_critical(on::MAX_AGE));
    assert!(
        on::is_unsafe(on::URI_HOST) && on::is_unsafe(on::URI_PORT) && on::is_unsafe(on::MAX_AGE)
    );
    assert!(!on::is_unsafe(on::ETAG) && !on::is_unsafe(on::CONTENT_FORMAT));
    assert!(on::is_no_cache_key(on::SIZE1) && on::is_no_cache_key(on::SIZE2));
    assert!(!on::is_no_cache_key(on::ETAG) && !on::is_no_cache_key(on::CONTENT_FORMAT));
    // OSCORE (9) critical, safe-to-forward (RFC 8613 §2); No-Response (258) elective, unsafe;
    // Echo (252) elective, safe-to-forward, NoCacheKey.
    assert!(on::is_critical(on::OSCORE) && !on::is_unsafe(on::OSCORE));
    assert!(!on::is_critical(on::NO_RESPONSE) && on::is_unsafe(on::NO_RESPONSE));
    assert!(
        !on::is_critical(on::ECHO) && !on::is_unsafe(on::ECHO) && on::is_no_cache_key(on::ECHO)
    );
}

#[test]
fn uint_codec() {
    assert_eq!(encode_uint(0), Vec::<u8>::new());
    assert_eq!(encode_uint(1), vec![1]);
    assert_eq!(encode_uint(255), vec![0xff]);
    assert_eq!(encode_uint(256), vec![1, 0]);
    assert_eq!(encode_uint(0x0001_0000), vec![1, 0, 0]);
    assert_eq!(encode_uint(u32::MAX), vec![0xff; 4]);
    assert_eq!(decode_uint(&[]), Ok(0));
    assert_eq!(decode_uint(&[0, 0, 1]), Ok(1));
    assert_eq!(decode_uint(&[1, 2, 3, 4]), Ok(0x0102_0304));
    assert_eq!(decode_uint(&[0; 5]), Err(CoapError::UintTooLong(5)));
    for v in [0u32, 1, 12, 13, 268, 269, 65535, 65536, 1 << 24, u32::MAX] {
        assert_eq!(decode_uint(&encode_uint(v)), Ok(v));
    }
}

#[test]
fn option_helpers_keep_order() {
    let mut m = Message::new(MessageType::Con, Code::POST, 7, vec![1, 2]);
    m.add_option(on::CONTENT_FORMAT, encode_uint(60));
    m.set_uri_path("/.well-known/coap-eap");
    m.add_option(on::URI_HOST, b"gw".to_vec());
    m.add_option(on::NO_RESPONSE, vec![26]);
    m.add_uri_query("a=1");
    let nums: Vec<u16> = m.options.iter().map(|o| o.number).collect();
    assert_eq!(nums, vec![3, 11, 11, 12, 15, 258]);
    assert_eq!(m.uri_path(), vec![".well-known", "coap-eap"]);
    assert_eq!(m.uri_path_string(), ".well-known/coap-eap");
    assert_eq!(m.uri_query(), vec!["a=1"]);
    assert_eq!(m.content_format(), Some(60));
    m.set_uri_path("a");
    assert_eq!(m.uri_path(), vec!["a"]);
    m.set_uri_path("/");
    assert!(m.uri_path().is_empty());
    m.set_option(on::URI_HOST, b"h2".to_vec());
    assert_eq!(m.options_of(on::URI_HOST).count(), 1);
    assert_eq!(m.option(on::URI_HOST), Some(&b"h2"[..]));
    m.remove_option(on::NO_RESPONSE);
    assert!(!m.has_option(on::NO_RESPONSE));
    m.set_location_path("rd/4521");
    assert_eq!(m.location_path(), vec!["rd", "4521"]);
    m.set_content_format(0);
    assert_eq!(m.option(on::CONTENT_FORMAT), Some(&[][..]));
    assert_eq!(m.content_format(), Some(0));
    let again = Message::parse(&m.encode().unwrap()).unwrap();
    assert_eq!(again, m);
}

#[test]
fn repeated_options_appended_in_order() {
    let mut m = Message::new(MessageType::Non, Code::GET, 1, vec![]);
    m.add_option(on::URI_QUERY, b"x".to_vec());
    m.add_option(on::URI_PATH, b"1".to_vec());
    m.add_option(on::URI_PATH, b"2".to_vec());
    m.add_option(on::URI_PATH, b"3".to_vec());
    assert_eq!(m.uri_path(), vec!["1", "2", "3"]);
    assert_eq!(m.options.last().map(|o| o.number), Some(on::URI_QUERY));
}

#[test]
fn encode_sorts_unsorted_options_stably() {
    let mut m = Message::new(MessageType::Con, Code::GET, 1, vec![]);
    m.options.push(CoapOption {
        number: 15,
        value: b"q".to_vec(),
    });
    m.options.push(CoapOption {
        number: 11,
        value: b"a".to_vec(),
    });
    m.options.push(CoapOption {
        number: 11,
        value: b"b".to_vec(),
    });
    let p = Message::parse(&m.encode().unwrap()).unwrap();
    assert_eq!(p.uri_path(), vec!["a", "b"]);
    assert_eq!(p.uri_query(), vec!["q"]);
}

fn header_after(m: &Message) -> Vec<u8> {
    m.encode().unwrap()[4..].to_vec()
}

#[test]
fn option_length_boundaries() {
    // (length, expected option header bytes) for Uri-Path (delta 11 = 0xb).
    for (len, hdr) in [
        (12usize, vec![0xbc]),
        (13, vec![0xbd, 0x00]),
        (268, vec![0xbd, 0xff]),
        (269, vec![0xbe, 0x00, 0x00]),
        (270, vec![0xbe, 0x00, 0x01]),
        (MAX_OPTION_LENGTH, vec![0xbe, 0xff, 0xff]),
    ] {
        let mut m = Message::new(MessageType::Con, Code::PUT, 9, vec![]);
        m.add_option(on::URI_PATH, vec![0x61; len]);
        let out = header_after(&m);
        assert_eq!(out[..hdr.len()], hdr[..], "len {len}");
        assert_eq!(out.len(), hdr.len() + len);
        assert_eq!(Message::parse(&m.encode().unwrap()).unwrap(), m);
    }
    let mut m = Message::new(MessageType::Con, Code::PUT, 9, vec![]);
    m.add_option(2000, vec![0; MAX_OPTION_LENGTH + 1]);
    assert_eq!(
        m.encode(),
        Err(CoapError::OptionValueTooLong {
            number: 2000,
            len: MAX_OPTION_LENGTH + 1
        })
    );
}

#[test]
fn option_delta_boundaries() {
    for (num, hdr) in [
        (12u16, vec![0xc0]),
        (13, vec![0xd0, 0x00]),
        (268, vec![0xd0, 0xff]),
        (269, vec![0xe0, 0x00, 0x00]),
        (on::NO_RESPONSE, vec![0xd1, 0xf5]),
        (2000, vec![0xe1, 0x06, 0xc3]),
        (u16::MAX, vec![0xe1, 0xfe, 0xf2]),
    ] {
        let mut m = Message::new(MessageType::Con, Code::GET, 9, vec![]);
        m.add_option(
            num,
            if hdr[0] & 0x0f == 1 {
                vec![0x1a]
            } else {
                vec![]
            },
        );
        let out = header_after(&m);
        assert_eq!(out[..hdr.len()], hdr[..], "number {num}");
        assert_eq!(Message::parse(&m.encode().unwrap()).unwrap(), m);
    }
}

#[test]
fn encode_rejects_bad_messages() {
    let m = Message::new(MessageType::Con, Code::GET, 1, vec![0; 9]);
    assert_eq!(m.encode(), Err(CoapError::InvalidTokenLength(9)));
    let m = Message::new(MessageType::Ack, Code::EMPTY, 1, vec![1]);
    assert_eq!(m.encode(), Err(CoapError::MalformedEmptyMessage));
    let mut m = Message::empty_ack(1);
    m.payload = vec![1];
    assert_eq!(m.encode(), Err(CoapError::MalformedEmptyMessage));
}

#[test]
fn empty_message_constructors() {
    assert_eq!(
        Message::empty_ack(0x1234).encode().unwrap(),
        [0x60, 0, 0x12, 0x34]
    );
    assert_eq!(
        Message::reset(0x1234).encode().unwrap(),
        [0x70, 0, 0x12, 0x34]
    );
    assert_eq!(
        Message::ping(0x1234).encode().unwrap(),
        [0x40, 0, 0x12, 0x34]
    );
    assert!(Message::ping(1).is_ping());
    assert!(!Message::empty_ack(1).is_ping());
}

#[test]
fn response_to_request() {
    let req = Message::new(MessageType::Con, Code::GET, 0x11, vec![7]);
    let r = Message::response_to(&req, Code::CONTENT, 0x99);
    assert_eq!(
        (r.ty, r.message_id, r.token.clone()),
        (MessageType::Ack, 0x11, vec![7])
    );
    let req = Message::new(MessageType::Non, Code::GET, 0x11, vec![7]);
    let r = Message::response_to(&req, Code::CONTENT, 0x99);
    assert_eq!((r.ty, r.message_id), (MessageType::Non, 0x99));
}

#[test]
fn rejection_of_unparseable() {
    // CON with reserved TKL → RST with the same Message ID (RFC 7252 §4.2).
    assert_eq!(
        rejection_for(&[0x4f, 0x01, 0xab, 0xcd]),
        Some(Message::reset(0xabcd))
    );
    // NON → silently ignored (§4.3); wrong version / too short → ignored.
    assert_eq!(rejection_for(&[0x5f, 0x01, 0xab, 0xcd]), None);
    assert_eq!(rejection_for(&[0x8f, 0x01, 0xab, 0xcd]), None);
    assert_eq!(rejection_for(&[0x40, 0x01]), None);
}

#[test]
fn options_codec_for_oscore_plaintext() {
    // RFC 8613 §5.3 plaintext after the code byte: Uri-Path "tv1", no payload.
    let opts = vec![CoapOption {
        number: 11,
        value: b"tv1".to_vec(),
    }];
    let mut out = Vec::new();
    encode_options(&opts, &[], &mut out).unwrap();
    assert_eq!(out, hex::decode("b3747631").unwrap());
    let (o, p) = parse_options(&out).unwrap();
    assert_eq!((o, p), (opts, &[][..]));
    let (o, p) = parse_options(&[0xff, 0x01, 0x02]).unwrap();
    assert!(o.is_empty());
    assert_eq!(p, &[1, 2]);
}

#[test]
fn unknown_critical_options() {
    let mut m = Message::new(MessageType::Con, Code::GET, 1, vec![]);
    m.set_uri_path("a/b");
    m.add_option(2001, vec![]);
    m.add_option(2002, vec![]);
    assert_eq!(m.unknown_critical_options(&[on::URI_PATH]), vec![2001]);
}

#[test]
fn type_code_rules() {
    let m = |ty, code| Message::new(ty, code, 1, vec![]);
    assert!(m(MessageType::Con, Code::GET).type_code_valid());
    assert!(m(MessageType::Con, Code::EMPTY).type_code_valid());
    assert!(m(MessageType::Con, Code::CONTENT).type_code_valid());
    assert!(!m(MessageType::Non, Code::EMPTY).type_code_valid());
    assert!(m(MessageType::Ack, Code::EMPTY).type_code_valid());
    assert!(m(MessageType::Ack, Code::CHANGED).type_code_valid());
    assert!(!m(MessageType::Ack, Code::GET).type_code_valid());
    assert!(m(MessageType::Rst, Code::EMPTY).type_code_valid());
    assert!(!m(MessageType::Rst, Code::CONTENT).type_code_valid());
    assert!(!m(MessageType::Con, Code::new(7, 1)).type_code_valid());
}
