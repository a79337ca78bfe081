//! The trigger message (RFC 9820 §3.2, step 0) and resource paths.
//!
//! The EAP peer (IoT device) starts CoAP-EAP with a Non-confirmable `POST /.well-known/coap-eap`
//! that carries the No-Response option (RFC 7967) and, as payload, the path of the resource to
//! which the EAP authenticator sends its first request (e.g. `/a/1`) as plain text. Every
//! CoAP-EAP message with a payload carries Content-Format 269 (`application/coap-eap`).

use capillary_coap::msg::option_number;
use capillary_coap::{no_response, Code, Message, MessageType};

/// Uri-Path segments of the well-known CoAP-EAP resource (RFC 9820 §3.1, §9).
pub const WELL_KNOWN_PATH: [&str; 2] = [".well-known", "coap-eap"];

/// No-Response value of the trigger: all response classes suppressed (RFC 7967 §2.1, value 26);
/// the authenticator answers the trigger with its first POST, not with a CoAP response.
pub const TRIGGER_NO_RESPONSE: u8 = no_response::SUPPRESS_ALL;

/// CoAP Content-Format of `application/coap-eap` (RFC 9820 §9, IANA CoAP Content-Formats).
pub const CONTENT_FORMAT_COAP_EAP: u16 = 269;

/// Longest resource path accepted in a trigger or a Location-Path (bytes).
pub const MAX_PATH_LEN: usize = 64;

/// A resource path as CoAP path segments (Uri-Path / Location-Path options).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourcePath(pub Vec<String>);

impl ResourcePath {
    /// Parses `/a/b`, `a/b` or `</a/b>`; rejects empty paths, empty segments, non-UTF-8 and
    /// more than [`MAX_PATH_LEN`] bytes.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || bytes.len() > MAX_PATH_LEN {
            return None;
        }
        let s = core::str::from_utf8(bytes).ok()?;
        let s = s
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(s);
        let s = s.strip_prefix('/').unwrap_or(s);
        if s.is_empty() {
            return None;
        }
        let segs: Vec<String> = s.split('/').map(str::to_owned).collect();
        if segs.iter().any(|g| g.is_empty()) {
            return None;
        }
        Some(Self(segs))
    }

    /// `/a/b`.
    pub fn to_path_string(&self) -> String {
        let mut out = String::new();
        for s in &self.0 {
            out.push('/');
            out.push_str(s);
        }
        out
    }

    /// The Uri-Path of `msg`.
    pub fn of_request(msg: &Message) -> Self {
        Self(msg.uri_path())
    }

    /// The Location-Path of `msg`, `None` when absent.
    pub fn of_location(msg: &Message) -> Option<Self> {
        let segs = msg.location_path();
        if segs.is_empty() || segs.iter().any(|s| s.is_empty()) {
            None
        } else {
            Some(Self(segs))
        }
    }
}

/// Builds the trigger (RFC 9820 §3.2 step 0): NON POST /.well-known/coap-eap, No-Response 26,
/// payload = path of the first resource.
pub fn build_trigger(message_id: u16, token: Vec<u8>, first: &ResourcePath) -> Message {
    let mut m = Message::new(MessageType::Non, Code::POST, message_id, token);
    m.set_uri_path(&WELL_KNOWN_PATH.join("/"));
    no_response::set(&mut m, TRIGGER_NO_RESPONSE);
    m.set_content_format(CONTENT_FORMAT_COAP_EAP);
    m.payload = first.to_path_string().into_bytes();
    m
}

/// Is `msg` a request to `/.well-known/coap-eap`?
pub fn is_trigger(msg: &Message) -> bool {
    msg.code == Code::POST && {
        let p = msg.uri_path();
        p.len() == 2 && p[0] == WELL_KNOWN_PATH[0] && p[1] == WELL_KNOWN_PATH[1]
    }
}

/// The first-resource path announced by a trigger, `None` when `msg` is not a valid trigger.
pub fn parse_trigger(msg: &Message) -> Option<ResourcePath> {
    if !is_trigger(msg) {
        return None;
    }
    ResourcePath::parse(&msg.payload)
}

/// Options this crate understands in requests it serves (RFC 7252 §5.4.1: any other critical
/// option makes the request fail with 4.02).
pub(crate) const KNOWN_REQUEST_OPTIONS: [u16; 7] = [
    option_number::URI_HOST,
    option_number::URI_PORT,
    option_number::URI_PATH,
    option_number::CONTENT_FORMAT,
    option_number::OSCORE,
    option_number::IF_MATCH,
    option_number::IF_NONE_MATCH,
];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn path_forms() {
        let want = ResourcePath(vec!["a".into(), "1".into()]);
        assert_eq!(ResourcePath::parse(b"/a/1"), Some(want.clone()));
        assert_eq!(ResourcePath::parse(b"a/1"), Some(want.clone()));
        assert_eq!(ResourcePath::parse(b"</a/1>"), Some(want.clone()));
        assert_eq!(want.to_path_string(), "/a/1");
        assert_eq!(ResourcePath::parse(b""), None);
        assert_eq!(ResourcePath::parse(b"/"), None);
        assert_eq!(ResourcePath::parse(b"/a//1"), None);
        assert_eq!(ResourcePath::parse(&[0xff]), None);
    }

    #[test]
    fn trigger_round_trip() {
        let p = ResourcePath(vec!["a".into(), "7".into()]);
        let t = build_trigger(9, vec![1], &p);
        assert_eq!(t.ty, MessageType::Non);
        assert_eq!(no_response::value_of(&t), Some(26));
        let bytes = t.encode().unwrap();
        let back = Message::parse(&bytes).unwrap();
        assert_eq!(parse_trigger(&back), Some(p));
    }
}
