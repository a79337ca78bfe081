//! Option classification (RFC 8613 §4.1), the plaintext (§5.3) and the outer/inner
//! message split and merge (§4.1, §4.2, §8.2 step 8).

use capillary_coap::msg::{
    encode_options, option_number as num, parse_options, CoapOption, Code, Message,
};

use crate::error::OscoreError;

/// How an option is handled when protecting (RFC 8613 §4.1, Figure 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionClass {
    /// Class E: encrypted and integrity protected (Inner). Also the class of every option
    /// not listed in Figure 5 (RFC 8613 §4.1: "Unless specified otherwise ...").
    Inner,
    /// Class U: unprotected (Outer): Uri-Host, Uri-Port, OSCORE, Proxy-Scheme,
    /// Hop-Limit (RFC 8768 §3), EDHOC (RFC 9668 §3.1).
    Outer,
    /// Observe (RFC 8613 §4.1.3.5): Inner, and copied to the Outer message for proxies.
    /// In requests both carry the same value; in notifications the Inner value is empty
    /// (§4.1.3.5.2) and the Outer one carries the original value.
    InnerAndOuter,
    /// Proxy-Uri (RFC 8613 §4.1.3.3): decomposed; scheme and authority Outer, path and
    /// query Inner.
    ProxyUri,
}

/// The class of option `number` when protecting a message.
pub fn option_class(number: u16) -> OptionClass {
    match number {
        num::URI_HOST
        | num::URI_PORT
        | num::OSCORE
        | num::PROXY_SCHEME
        | num::HOP_LIMIT
        | num::EDHOC => OptionClass::Outer,
        num::OBSERVE => OptionClass::InnerAndOuter,
        num::PROXY_URI => OptionClass::ProxyUri,
        // Max-Age (§4.1.3.1), Block1/2 and Size1/2 (§4.1.3.4: Inner block-wise end to end;
        // Outer block-wise is applied by the transport after protection), No-Response
        // ("MUST be Inner", §4.1.3.6), Echo, Request-Tag (RFC 9175) and unknown options.
        _ => OptionClass::Inner,
    }
}

fn percent_decode(s: &str) -> Result<Vec<u8>, OscoreError> {
    let bad = OscoreError::UnsupportedOption(num::PROXY_URI);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(bad.clone())?;
            let hex = core::str::from_utf8(hex).map_err(|_| bad.clone())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad.clone())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Decomposes a Proxy-Uri (RFC 7252 §6.4) into Outer Proxy-Scheme / Uri-Host / Uri-Port and
/// Inner Uri-Path / Uri-Query options (RFC 8613 §4.1.3.3).
pub(crate) fn decompose_proxy_uri(
    value: &[u8],
) -> Result<(Vec<CoapOption>, Vec<CoapOption>), OscoreError> {
    let bad = OscoreError::UnsupportedOption(num::PROXY_URI);
    let s = core::str::from_utf8(value).map_err(|_| bad.clone())?;
    let s = s.split('#').next().unwrap_or("");
    let (scheme, rest) = s.split_once("://").ok_or(bad.clone())?;
    if scheme.is_empty() {
        return Err(bad);
    }
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_query) = rest.split_at(auth_end);
    if authority.is_empty() || authority.contains('@') {
        return Err(bad);
    }
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        let close = stripped.find(']').ok_or(bad.clone())?;
        let host = &authority[..close + 2];
        let after = &authority[close + 2..];
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(bad),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let mut outer = vec![
        CoapOption {
            number: num::PROXY_SCHEME,
            value: scheme.to_ascii_lowercase().into_bytes(),
        },
        CoapOption {
            number: num::URI_HOST,
            value: percent_decode(host)?.to_ascii_lowercase(),
        },
    ];
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        let p: u16 = p.parse().map_err(|_| bad.clone())?;
        outer.push(CoapOption {
            number: num::URI_PORT,
            value: capillary_coap::msg::encode_uint(u32::from(p)),
        });
    }
    let mut inner = Vec::new();
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_query, None),
    };
    let path = path.strip_prefix('/').unwrap_or(path);
    if !path.is_empty() {
        for seg in path.split('/') {
            inner.push(CoapOption {
                number: num::URI_PATH,
                value: percent_decode(seg)?,
            });
        }
    }
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        for arg in q.split('&') {
            inner.push(CoapOption {
                number: num::URI_QUERY,
                value: percent_decode(arg)?,
            });
        }
    }
    Ok((outer, inner))
}

/// Splits the options of an unprotected message into (Inner, Outer) lists (RFC 8613 §4.1).
pub(crate) fn split_options(
    plain: &Message,
    response: bool,
) -> Result<(Vec<CoapOption>, Vec<CoapOption>), OscoreError> {
    let mut inner = Vec::new();
    let mut outer = Vec::new();
    for o in &plain.options {
        match option_class(o.number) {
            OptionClass::Inner => inner.push(o.clone()),
            OptionClass::Outer if o.number == num::OSCORE => {
                return Err(OscoreError::InvalidParams(
                    "message already carries an OSCORE option",
                ))
            }
            OptionClass::Outer => outer.push(o.clone()),
            OptionClass::InnerAndOuter => {
                let inner_value = if response {
                    Vec::new()
                } else {
                    o.value.clone()
                };
                inner.push(CoapOption {
                    number: o.number,
                    value: inner_value,
                });
                outer.push(o.clone());
            }
            OptionClass::ProxyUri => {
                let (out, inn) = decompose_proxy_uri(&o.value)?;
                outer.extend(out);
                inner.extend(inn);
            }
        }
    }
    inner.sort_by_key(|o| o.number);
    Ok((inner, outer))
}

/// The plaintext (RFC 8613 §5.3): `code || Class E options || 0xFF || payload`.
pub(crate) fn encode_plaintext(
    code: Code,
    inner: &[CoapOption],
    payload: &[u8],
) -> Result<Vec<u8>, OscoreError> {
    let mut out = Vec::with_capacity(
        1 + payload.len() + inner.iter().map(|o| o.value.len() + 3).sum::<usize>(),
    );
    out.push(code.0);
    encode_options(inner, payload, &mut out)?;
    Ok(out)
}

/// Parses a decrypted plaintext into (code, Inner options, payload).
pub(crate) fn decode_plaintext(pt: &[u8]) -> Result<(Code, Vec<CoapOption>, Vec<u8>), OscoreError> {
    let (&code, rest) = pt.split_first().ok_or(OscoreError::InvalidPlaintext)?;
    let (opts, payload) = parse_options(rest).map_err(|_| OscoreError::InvalidPlaintext)?;
    Ok((Code(code), opts, payload.to_vec()))
}

/// Builds the verified message: header fields from the Outer message, code, options and
/// payload from the plaintext, plus the Outer Class U options not overridden by an Inner
/// option (RFC 8613 §8.2 steps 2, 8, 9; §8.4 steps 2, 6, 7). Outer copies of Inner or
/// special options (Observe, Max-Age, Block, Size, ...) and the OSCORE option are dropped.
pub(crate) fn merge(
    outer: &Message,
    code: Code,
    inner: Vec<CoapOption>,
    payload: Vec<u8>,
) -> Message {
    let mut m = Message::new(outer.ty, code, outer.message_id, outer.token.clone());
    for o in &outer.options {
        let keep = matches!(
            option_class(o.number),
            OptionClass::Outer | OptionClass::ProxyUri
        ) && o.number != num::OSCORE
            && !inner.iter().any(|i| i.number == o.number);
        if keep {
            m.add_option(o.number, o.value.clone());
        }
    }
    for o in inner {
        m.add_option(o.number, o.value);
    }
    m.payload = payload;
    m
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn proxy_uri() {
        let (outer, inner) = decompose_proxy_uri(b"coap://Example.com:5684/a/b%20c?x=1&y").unwrap();
        assert_eq!(outer[0].value, b"coap");
        assert_eq!(outer[1].value, b"example.com");
        assert_eq!(
            outer[2],
            CoapOption {
                number: num::URI_PORT,
                value: vec![0x16, 0x34]
            }
        );
        let vals: Vec<&[u8]> = inner.iter().map(|o| o.value.as_slice()).collect();
        assert_eq!(vals, [&b"a"[..], b"b c", b"x=1", b"y"]);
        let (outer, inner) = decompose_proxy_uri(b"coap://[::1]").unwrap();
        assert_eq!(outer[1].value, b"[::1]");
        assert!(inner.is_empty());
        assert!(decompose_proxy_uri(b"nonsense").is_err());
        assert!(decompose_proxy_uri(b"coap://h:99999/").is_err());
        assert!(decompose_proxy_uri(b"coap://h/%zz").is_err());
    }
}
