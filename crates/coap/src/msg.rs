//! CoAP message format (RFC 7252 §3) and option helpers (RFC 7252 §5.4, §5.10).
//!
//! [`Message`] is an owned representation: [`Message::parse`] checks the whole datagram
//! once ("parse, don't validate"), after which all fields are plain data.
//! [`Message::encode`] produces the minimal wire encoding.

use core::fmt;

use crate::CoapError;

/// Message type, the `T` field of the header (RFC 7252 §3, §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// Confirmable (0).
    Con,
    /// Non-confirmable (1).
    Non,
    /// Acknowledgement (2).
    Ack,
    /// Reset (3).
    Rst,
}

impl MessageType {
    /// The 2-bit wire value.
    pub const fn to_bits(self) -> u8 {
        match self {
            MessageType::Con => 0,
            MessageType::Non => 1,
            MessageType::Ack => 2,
            MessageType::Rst => 3,
        }
    }

    /// From the 2-bit wire value (only the low two bits are looked at).
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0 => MessageType::Con,
            1 => MessageType::Non,
            2 => MessageType::Ack,
            _ => MessageType::Rst,
        }
    }
}

/// Message code `c.dd`: 3-bit class and 5-bit detail (RFC 7252 §3, §12.1).
///
/// `Display` prints the dotted form, e.g. `2.05`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Code(pub u8);

impl Code {
    /// 0.00 Empty message (RFC 7252 §4.1).
    pub const EMPTY: Code = Code::new(0, 0);
    /// 0.01 GET.
    pub const GET: Code = Code::new(0, 1);
    /// 0.02 POST.
    pub const POST: Code = Code::new(0, 2);
    /// 0.03 PUT.
    pub const PUT: Code = Code::new(0, 3);
    /// 0.04 DELETE.
    pub const DELETE: Code = Code::new(0, 4);
    /// 0.05 FETCH (RFC 8132).
    pub const FETCH: Code = Code::new(0, 5);
    /// 0.06 PATCH (RFC 8132).
    pub const PATCH: Code = Code::new(0, 6);
    /// 0.07 iPATCH (RFC 8132).
    pub const IPATCH: Code = Code::new(0, 7);
    /// 2.01 Created.
    pub const CREATED: Code = Code::new(2, 1);
    /// 2.02 Deleted.
    pub const DELETED: Code = Code::new(2, 2);
    /// 2.03 Valid.
    pub const VALID: Code = Code::new(2, 3);
    /// 2.04 Changed.
    pub const CHANGED: Code = Code::new(2, 4);
    /// 2.05 Content.
    pub const CONTENT: Code = Code::new(2, 5);
    /// 2.31 Continue (RFC 7959).
    pub const CONTINUE: Code = Code::new(2, 31);
    /// 4.00 Bad Request.
    pub const BAD_REQUEST: Code = Code::new(4, 0);
    /// 4.01 Unauthorized.
    pub const UNAUTHORIZED: Code = Code::new(4, 1);
    /// 4.02 Bad Option.
    pub const BAD_OPTION: Code = Code::new(4, 2);
    /// 4.03 Forbidden.
    pub const FORBIDDEN: Code = Code::new(4, 3);
    /// 4.04 Not Found.
    pub const NOT_FOUND: Code = Code::new(4, 4);
    /// 4.05 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Code = Code::new(4, 5);
    /// 4.06 Not Acceptable.
    pub const NOT_ACCEPTABLE: Code = Code::new(4, 6);
    /// 4.08 Request Entity Incomplete (RFC 7959).
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code::new(4, 8);
    /// 4.12 Precondition Failed.
    pub const PRECONDITION_FAILED: Code = Code::new(4, 12);
    /// 4.13 Request Entity Too Large.
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code::new(4, 13);
    /// 4.15 Unsupported Content-Format.
    pub const UNSUPPORTED_CONTENT_FORMAT: Code = Code::new(4, 15);
    /// 4.29 Too Many Requests (RFC 8516).
    pub const TOO_MANY_REQUESTS: Code = Code::new(4, 29);
    /// 5.00 Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: Code = Code::new(5, 0);
    /// 5.01 Not Implemented.
    pub const NOT_IMPLEMENTED: Code = Code::new(5, 1);
    /// 5.02 Bad Gateway.
    pub const BAD_GATEWAY: Code = Code::new(5, 2);
    /// 5.03 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Code = Code::new(5, 3);
    /// 5.04 Gateway Timeout.
    pub const GATEWAY_TIMEOUT: Code = Code::new(5, 4);
    /// 5.05 Proxying Not Supported.
    pub const PROXYING_NOT_SUPPORTED: Code = Code::new(5, 5);

    /// `class.detail`; class is masked to 3 bits, detail to 5 bits.
    pub const fn new(class: u8, detail: u8) -> Self {
        Code(((class & 0x07) << 5) | (detail & 0x1f))
    }

    /// The class (0..=7).
    pub fn class(self) -> u8 {
        self.0 >> 5
    }

    /// The detail (0..=31).
    pub fn detail(self) -> u8 {
        self.0 & 0x1f
    }

    /// Class 0 with a non-zero detail (RFC 7252 §12.1.1).
    pub fn is_request(self) -> bool {
        self.class() == 0 && self.detail() != 0
    }

    /// Classes 2, 4 and 5 (RFC 7252 §12.1.2); class 3 is reserved for signaling
    /// in RFC 8323 and treated as a response here too.
    pub fn is_response(self) -> bool {
        matches!(self.class(), 2..=5)
    }

    /// 0.00.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// 2.xx.
    pub fn is_success(self) -> bool {
        self.class() == 2
    }

    /// 4.xx.
    pub fn is_client_error(self) -> bool {
        self.class() == 4
    }

    /// 5.xx.
    pub fn is_server_error(self) -> bool {
        self.class() == 5
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

/// One option instance: number and opaque value bytes (RFC 7252 §3.1, §5.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoapOption {
    /// Option number (absolute, not the delta).
    pub number: u16,
    /// Raw value bytes (uint options are minimal big-endian, see [`encode_uint`]).
    pub value: Vec<u8>,
}

/// Option numbers from the IANA "CoAP Option Numbers" registry, and the
/// critical / unsafe / NoCacheKey bits (RFC 7252 §5.4.6).
pub mod option_number {
    /// If-Match (RFC 7252).
    pub const IF_MATCH: u16 = 1;
    /// Uri-Host (RFC 7252).
    pub const URI_HOST: u16 = 3;
    /// ETag (RFC 7252).
    pub const ETAG: u16 = 4;
    /// If-None-Match (RFC 7252).
    pub const IF_NONE_MATCH: u16 = 5;
    /// Observe (RFC 7641).
    pub const OBSERVE: u16 = 6;
    /// Uri-Port (RFC 7252).
    pub const URI_PORT: u16 = 7;
    /// Location-Path (RFC 7252).
    pub const LOCATION_PATH: u16 = 8;
    /// OSCORE (RFC 8613).
    pub const OSCORE: u16 = 9;
    /// Uri-Path (RFC 7252).
    pub const URI_PATH: u16 = 11;
    /// Content-Format (RFC 7252).
    pub const CONTENT_FORMAT: u16 = 12;
    /// Max-Age (RFC 7252).
    pub const MAX_AGE: u16 = 14;
    /// Uri-Query (RFC 7252).
    pub const URI_QUERY: u16 = 15;
    /// Hop-Limit (RFC 8768).
    pub const HOP_LIMIT: u16 = 16;
    /// Accept (RFC 7252).
    pub const ACCEPT: u16 = 17;
    /// Q-Block1 (RFC 9177).
    pub const Q_BLOCK1: u16 = 19;
    /// Location-Query (RFC 7252).
    pub const LOCATION_QUERY: u16 = 20;
    /// EDHOC (RFC 9668).
    pub const EDHOC: u16 = 21;
    /// Block2 (RFC 7959).
    pub const BLOCK2: u16 = 23;
    /// Block1 (RFC 7959).
    pub const BLOCK1: u16 = 27;
    /// Size2 (RFC 7959).
    pub const SIZE2: u16 = 28;
    /// Q-Block2 (RFC 9177).
    pub const Q_BLOCK2: u16 = 31;
    /// Proxy-Uri (RFC 7252).
    pub const PROXY_URI: u16 = 35;
    /// Proxy-Scheme (RFC 7252).
    pub const PROXY_SCHEME: u16 = 39;
    /// Size1 (RFC 7252).
    pub const SIZE1: u16 = 60;
    /// Echo (RFC 9175).
    pub const ECHO: u16 = 252;
    /// No-Response (RFC 7967).
    pub const NO_RESPONSE: u16 = 258;
    /// Request-Tag (RFC 9175).
    pub const REQUEST_TAG: u16 = 292;

    /// Critical options have an odd number (RFC 7252 §5.4.6).
    pub fn is_critical(n: u16) -> bool {
        n & 0x01 != 0
    }

    /// Unsafe-to-forward options have bit 1 set (RFC 7252 §5.4.6).
    pub fn is_unsafe(n: u16) -> bool {
        n & 0x02 != 0
    }

    /// NoCacheKey: bits 1..=4 equal `1110` (RFC 7252 §5.4.6: `(onum & 0x1e) == 0x1c`).
    /// Only meaningful for safe-to-forward options.
    pub fn is_no_cache_key(n: u16) -> bool {
        n & 0x1e == 0x1c
    }
}

/// Encode a `uint` option value: big-endian, minimal length, 0 → empty (RFC 7252 §3.2).
pub fn encode_uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = (v.leading_zeros() / 8) as usize;
    bytes[skip..].to_vec()
}

/// Decode a `uint` option value of 0..=4 bytes; leading zero bytes are accepted
/// (RFC 7252 §3.2: "A recipient MUST be prepared to process values with leading zero bytes").
pub fn decode_uint(b: &[u8]) -> Result<u32, CoapError> {
    if b.len() > 4 {
        return Err(CoapError::UintTooLong(b.len()));
    }
    Ok(b.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x)))
}

/// Largest option value length the option length field can express (14 → 269 + 0xffff).
pub const MAX_OPTION_LENGTH: usize = 269 + 0xffff;

/// Payload marker (RFC 7252 §3).
pub const PAYLOAD_MARKER: u8 = 0xff;

/// A CoAP message (RFC 7252 §3).
///
/// Invariant kept by [`Message::parse`] and the option helpers: `options` is sorted by
/// `number`, repeated options in their original order. [`Message::encode`] sorts (stably)
/// anyway, so code that pushes to `options` directly still encodes correctly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Type (Con, Non, Ack, Rst).
    pub ty: MessageType,
    /// Code.
    pub code: Code,
    /// Message ID (§4.4).
    pub message_id: u16,
    /// Token, 0..=8 bytes (§5.3.1).
    pub token: Vec<u8>,
    /// Options, sorted by number.
    pub options: Vec<CoapOption>,
    /// Payload (empty means "no payload marker").
    pub payload: Vec<u8>,
}

impl Message {
    /// A message without options and payload.
    pub fn new(ty: MessageType, code: Code, message_id: u16, token: Vec<u8>) -> Self {
        Message {
            ty,
            code,
            message_id,
            token,
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// Empty ACK (RFC 7252 §4.2) for `message_id`.
    pub fn empty_ack(message_id: u16) -> Self {
        Message::new(MessageType::Ack, Code::EMPTY, message_id, Vec::new())
    }

    /// Reset (always Empty, RFC 7252 §4.2, §4.3) for `message_id`.
    pub fn reset(message_id: u16) -> Self {
        Message::new(MessageType::Rst, Code::EMPTY, message_id, Vec::new())
    }

    /// Empty CON, "CoAP ping" (RFC 7252 §4.3).
    pub fn ping(message_id: u16) -> Self {
        Message::new(MessageType::Con, Code::EMPTY, message_id, Vec::new())
    }

    /// True for an Empty CON message (CoAP ping, answered with RST).
    pub fn is_ping(&self) -> bool {
        self.ty == MessageType::Con && self.code.is_empty()
    }

    /// Type/code combination allowed by RFC 7252 §4.2–§4.3: CON carries a request, a
    /// response or is Empty (ping); NON carries a request or response; ACK carries a response
    /// or is Empty; RST is Empty. Codes of reserved classes (1, 6, 7) are never allowed.
    /// A receiver rejects a CON that fails this with RST and silently ignores anything else.
    pub fn type_code_valid(&self) -> bool {
        let c = self.code;
        match self.ty {
            MessageType::Con => c.is_empty() || c.is_request() || c.is_response(),
            MessageType::Non => c.is_request() || c.is_response(),
            MessageType::Ack => c.is_empty() || c.is_response(),
            MessageType::Rst => c.is_empty(),
        }
    }

    /// A piggybacked (CON request → ACK) or separate/NON response skeleton for `request`:
    /// same token; ACK with the same Message ID if the request was CON, otherwise NON with
    /// `message_id` (RFC 7252 §5.2).
    pub fn response_to(request: &Message, code: Code, message_id: u16) -> Self {
        let (ty, mid) = match request.ty {
            MessageType::Con => (MessageType::Ack, request.message_id),
            _ => (MessageType::Non, message_id),
        };
        Message::new(ty, code, mid, request.token.clone())
    }

    /// Parse one datagram (RFC 7252 §3). Checks: version 1, TKL ≤ 8, Empty messages are
    /// exactly 4 bytes, option nibbles 13/14 extended, 15 reserved, option numbers ≤ 65535,
    /// no payload marker with an empty payload. Type/code combinations are not checked here.
    pub fn parse(bytes: &[u8]) -> Result<Message, CoapError> {
        if bytes.len() < 4 {
            return Err(CoapError::TooShort);
        }
        let b0 = bytes[0];
        let version = b0 >> 6;
        if version != 1 {
            return Err(CoapError::UnsupportedVersion(version));
        }
        let ty = MessageType::from_bits(b0 >> 4);
        let tkl = usize::from(b0 & 0x0f);
        if tkl > 8 {
            return Err(CoapError::InvalidTokenLength(tkl));
        }
        let code = Code(bytes[1]);
        let message_id = u16::from_be_bytes([bytes[2], bytes[3]]);
        if code.is_empty() && (tkl != 0 || bytes.len() != 4) {
            return Err(CoapError::MalformedEmptyMessage);
        }
        let rest = &bytes[4..];
        let token = rest.get(..tkl).ok_or(CoapError::TruncatedToken)?.to_vec();
        let (options, payload) = parse_options(&rest[tkl..])?;
        Ok(Message {
            ty,
            code,
            message_id,
            token,
            options,
            payload: payload.to_vec(),
        })
    }

    /// Encode to the minimal wire form. Fails for tokens over 8 bytes, over-long option
    /// values, and Empty messages carrying token/options/payload.
    pub fn encode(&self) -> Result<Vec<u8>, CoapError> {
        if self.token.len() > 8 {
            return Err(CoapError::InvalidTokenLength(self.token.len()));
        }
        if self.code.is_empty()
            && !(self.token.is_empty() && self.options.is_empty() && self.payload.is_empty())
        {
            return Err(CoapError::MalformedEmptyMessage);
        }
        let mut out = Vec::with_capacity(
            4 + self.token.len()
                + self
                    .options
                    .iter()
                    .map(|o| o.value.len() + 5)
                    .sum::<usize>()
                + 1
                + self.payload.len(),
        );
        out.push((1 << 6) | (self.ty.to_bits() << 4) | self.token.len() as u8);
        out.push(self.code.0);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.token);
        encode_options(&self.options, &self.payload, &mut out)?;
        Ok(out)
    }

    /// First value of option `number`.
    pub fn option(&self, number: u16) -> Option<&[u8]> {
        self.options_of(number).next()
    }

    /// All values of option `number`, in order.
    pub fn options_of(&self, number: u16) -> impl Iterator<Item = &[u8]> + '_ {
        self.options
            .iter()
            .filter(move |o| o.number == number)
            .map(|o| o.value.as_slice())
    }

    /// True if at least one instance of option `number` is present.
    pub fn has_option(&self, number: u16) -> bool {
        self.options.iter().any(|o| o.number == number)
    }

    /// Insert an option after all options with a number ≤ `number` (keeps sort order,
    /// appends after existing instances of the same option).
    pub fn add_option(&mut self, number: u16, value: Vec<u8>) {
        let pos = self.options.partition_point(|o| o.number <= number);
        self.options.insert(pos, CoapOption { number, value });
    }

    /// Replace all instances of option `number` by a single one.
    pub fn set_option(&mut self, number: u16, value: Vec<u8>) {
        self.remove_option(number);
        self.add_option(number, value);
    }

    /// Remove all instances of option `number`.
    pub fn remove_option(&mut self, number: u16) {
        self.options.retain(|o| o.number != number);
    }

    /// First value of a `uint` option, if present and ≤ 4 bytes.
    pub fn uint_option(&self, number: u16) -> Option<u32> {
        self.option(number).and_then(|v| decode_uint(v).ok())
    }

    /// Set a `uint` option (minimal encoding).
    pub fn set_uint_option(&mut self, number: u16, v: u32) {
        self.set_option(number, encode_uint(v));
    }

    fn string_options(&self, number: u16) -> Vec<String> {
        self.options_of(number)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    fn set_path_options(&mut self, number: u16, path: &str) {
        self.remove_option(number);
        let path = path.strip_prefix('/').unwrap_or(path);
        if path.is_empty() {
            return;
        }
        for seg in path.split('/') {
            self.add_option(number, seg.as_bytes().to_vec());
        }
    }

    /// Uri-Path segments (invalid UTF-8 replaced lossily).
    pub fn uri_path(&self) -> Vec<String> {
        self.string_options(option_number::URI_PATH)
    }

    /// Replace the Uri-Path options: `"a/b"` or `"/a/b"` → two options; `""` or `"/"` →
    /// none (RFC 7252 §6.4 step 8). No percent-decoding.
    pub fn set_uri_path(&mut self, path: &str) {
        self.set_path_options(option_number::URI_PATH, path);
    }

    /// Uri-Path joined with `/` (no leading slash).
    pub fn uri_path_string(&self) -> String {
        self.uri_path().join("/")
    }

    /// Uri-Query arguments.
    pub fn uri_query(&self) -> Vec<String> {
        self.string_options(option_number::URI_QUERY)
    }

    /// Append one Uri-Query argument.
    pub fn add_uri_query(&mut self, arg: &str) {
        self.add_option(option_number::URI_QUERY, arg.as_bytes().to_vec());
    }

    /// Location-Path segments.
    pub fn location_path(&self) -> Vec<String> {
        self.string_options(option_number::LOCATION_PATH)
    }

    /// Replace the Location-Path options, split like [`Message::set_uri_path`].
    pub fn set_location_path(&mut self, path: &str) {
        self.set_path_options(option_number::LOCATION_PATH, path);
    }

    /// Content-Format (0..=2-byte uint), `None` if absent or malformed.
    pub fn content_format(&self) -> Option<u16> {
        self.uint_option(option_number::CONTENT_FORMAT)
            .and_then(|v| u16::try_from(v).ok())
    }

    /// Set Content-Format.
    pub fn set_content_format(&mut self, cf: u16) {
        self.set_uint_option(option_number::CONTENT_FORMAT, u32::from(cf));
    }

    /// Accept (0..=2-byte uint), `None` if absent or malformed.
    pub fn accept(&self) -> Option<u16> {
        self.uint_option(option_number::ACCEPT)
            .and_then(|v| u16::try_from(v).ok())
    }

    /// Options whose number is critical (odd) and not in `known` — the receiver must
    /// reject a request with 4.02 Bad Option / a CON response with RST (RFC 7252 §5.4.1).
    pub fn unknown_critical_options(&self, known: &[u16]) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .options
            .iter()
            .map(|o| o.number)
            .filter(|&n| option_number::is_critical(n) && !known.contains(&n))
            .collect();
        out.dedup();
        out
    }
}

/// Parse the option sequence and payload that follow the token (RFC 7252 §3.1).
///
/// Also usable on an OSCORE plaintext after its code byte (RFC 8613 §5.3).
/// Returns the options (sorted, as on the wire) and the payload slice (empty if no marker).
pub fn parse_options(mut bytes: &[u8]) -> Result<(Vec<CoapOption>, &[u8]), CoapError> {
    let mut options = Vec::new();
    let mut number: u32 = 0;
    while let Some((&b, rest)) = bytes.split_first() {
        if b == PAYLOAD_MARKER {
            if rest.is_empty() {
                return Err(CoapError::EmptyPayload);
            }
            return Ok((options, rest));
        }
        bytes = rest;
        let delta = read_ext(b >> 4, &mut bytes)?;
        let len = read_ext(b & 0x0f, &mut bytes)? as usize;
        number += delta;
        let num = u16::try_from(number).map_err(|_| CoapError::OptionNumberOverflow)?;
        let value = bytes.get(..len).ok_or(CoapError::TruncatedOption)?;
        bytes = &bytes[len..];
        options.push(CoapOption {
            number: num,
            value: value.to_vec(),
        });
    }
    Ok((options, &[]))
}

/// Read an extended delta/length for `nibble` (13 → +1 byte, 14 → +2 bytes, 15 reserved).
fn read_ext(nibble: u8, bytes: &mut &[u8]) -> Result<u32, CoapError> {
    match nibble {
        0..=12 => Ok(u32::from(nibble)),
        13 => {
            let (&b, rest) = bytes.split_first().ok_or(CoapError::TruncatedOption)?;
            *bytes = rest;
            Ok(u32::from(b) + 13)
        }
        14 => {
            let ext = bytes.get(..2).ok_or(CoapError::TruncatedOption)?;
            let v = u32::from(u16::from_be_bytes([ext[0], ext[1]]));
            *bytes = &bytes[2..];
            Ok(v + 269)
        }
        _ => Err(CoapError::ReservedOptionNibble),
    }
}

/// Split a delta/length into its nibble and extension bytes.
fn ext_of(v: usize) -> (u8, [u8; 2], usize) {
    if v < 13 {
        (v as u8, [0, 0], 0)
    } else if v < 269 {
        (13, [(v - 13) as u8, 0], 1)
    } else {
        let e = ((v - 269) as u16).to_be_bytes();
        (14, e, 2)
    }
}

/// Append options (sorted stably by number here) and, if non-empty, the payload marker and
/// payload (RFC 7252 §3.1). Also usable for an OSCORE plaintext (RFC 8613 §5.3).
pub fn encode_options(
    options: &[CoapOption],
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CoapError> {
    let mut sorted: Vec<&CoapOption> = options.iter().collect();
    sorted.sort_by_key(|o| o.number);
    let mut prev = 0u16;
    for o in sorted {
        if o.value.len() > MAX_OPTION_LENGTH {
            return Err(CoapError::OptionValueTooLong {
                number: o.number,
                len: o.value.len(),
            });
        }
        let (dn, de, dl) = ext_of(usize::from(o.number - prev));
        let (ln, le, ll) = ext_of(o.value.len());
        out.push((dn << 4) | ln);
        out.extend_from_slice(&de[..dl]);
        out.extend_from_slice(&le[..ll]);
        out.extend_from_slice(&o.value);
        prev = o.number;
    }
    if !payload.is_empty() {
        out.push(PAYLOAD_MARKER);
        out.extend_from_slice(payload);
    }
    Ok(())
}

/// What to send back for a datagram that failed [`Message::parse`]: a Reset if it is
/// recognisably a version-1 Confirmable message (RFC 7252 §4.2), otherwise nothing
/// (Non-confirmable, ACK and RST format errors are silently ignored, §4.3).
pub fn rejection_for(bytes: &[u8]) -> Option<Message> {
    if bytes.len() < 4 || bytes[0] >> 6 != 1 {
        return None;
    }
    if MessageType::from_bits(bytes[0] >> 4) != MessageType::Con {
        return None;
    }
    Some(Message::reset(u16::from_be_bytes([bytes[2], bytes[3]])))
}
