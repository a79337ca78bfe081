//! Byte fixtures from tests/data/messages.toml: RFC 8613 Appendix C CoAP messages and
//! hand-assembled RFC 7252 §3.1 encodings. Every valid fixture must parse to the listed
//! fields and re-encode to the identical bytes; every invalid one must fail with the listed error.
#![allow(clippy::unwrap_used)] // tests may unwrap (house rules)

use capillary_coap::msg::{CoapOption, Code, Message, MessageType};

fn load() -> toml::Table {
    let text = include_str!("data/messages.toml");
    text.parse::<toml::Table>().unwrap()
}

fn ty(s: &str) -> MessageType {
    match s {
        "Con" => MessageType::Con,
        "Non" => MessageType::Non,
        "Ack" => MessageType::Ack,
        "Rst" => MessageType::Rst,
        other => panic!("bad type {other}"),
    }
}

#[test]
fn valid_fixtures_parse_and_reencode_identically() {
    let t = load();
    let valid = t["valid"].as_array().unwrap();
    assert!(valid.len() >= 10);
    for v in valid {
        let name = v["name"].as_str().unwrap();
        let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
        let m = Message::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.ty, ty(v["type"].as_str().unwrap()), "{name}");
        assert_eq!(m.code.to_string(), v["code"].as_str().unwrap(), "{name}");
        assert_eq!(
            i64::from(m.message_id),
            v["mid"].as_integer().unwrap(),
            "{name}"
        );
        assert_eq!(
            hex::encode(&m.token),
            v["token"].as_str().unwrap(),
            "{name}"
        );
        let opts: Vec<CoapOption> = v["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let o = o.as_array().unwrap();
                CoapOption {
                    number: u16::try_from(o[0].as_integer().unwrap()).unwrap(),
                    value: hex::decode(o[1].as_str().unwrap()).unwrap(),
                }
            })
            .collect();
        assert_eq!(m.options, opts, "{name}");
        assert_eq!(
            hex::encode(&m.payload),
            v["payload"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(m.encode().unwrap(), bytes, "{name}: re-encode");

        // Build the same message through the API and encode it.
        let mut built = Message::new(m.ty, m.code, m.message_id, m.token.clone());
        for o in &opts {
            built.add_option(o.number, o.value.clone());
        }
        built.payload = m.payload.clone();
        assert_eq!(built.encode().unwrap(), bytes, "{name}: built");
    }
}

#[test]
fn invalid_fixtures_fail_with_named_error() {
    let t = load();
    let invalid = t["invalid"].as_array().unwrap();
    assert!(invalid.len() >= 15);
    for v in invalid {
        let name = v["name"].as_str().unwrap();
        let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
        let err = Message::parse(&bytes).expect_err(name);
        let want = v["error"].as_str().unwrap();
        assert!(
            format!("{err:?}").starts_with(want),
            "{name}: got {err:?}, want {want}"
        );
    }
}

#[test]
fn rfc8613_c4_request_accessors() {
    let bytes = hex::decode("44015d1f00003974396c6f63616c686f737483747631").unwrap();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.code, Code::GET);
    assert!(m.code.is_request());
    assert_eq!(m.option(3), Some(&b"localhost"[..]));
    assert_eq!(m.uri_path(), vec!["tv1".to_string()]);
    assert_eq!(m.content_format(), None);
}
