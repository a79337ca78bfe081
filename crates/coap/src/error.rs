//! The one error type of this crate.

/// Everything that can go wrong while decoding or encoding CoAP messages.
///
/// Decoding errors are *message format errors* in the sense of RFC 7252 §4.2/§4.3:
/// a Confirmable message that fails to parse is rejected with a Reset (see
/// [`crate::msg::rejection_for`]), a Non-confirmable one is silently ignored.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoapError {
    /// Fewer than the 4 bytes of the fixed header (RFC 7252 §3).
    #[error("message shorter than the 4-byte CoAP header")]
    TooShort,
    /// Version field is not 1 (RFC 7252 §3: "Messages with unknown version numbers MUST be silently ignored").
    #[error("unsupported CoAP version {0}")]
    UnsupportedVersion(u8),
    /// Token length 9..=15 (reserved, RFC 7252 §3), or a token longer than 8 bytes on encode.
    #[error("invalid token length {0} (must be 0..=8)")]
    InvalidTokenLength(usize),
    /// The datagram ends inside the token.
    #[error("message truncated inside the token")]
    TruncatedToken,
    /// The datagram ends inside an option header, extended delta/length or option value.
    #[error("message truncated inside an option")]
    TruncatedOption,
    /// Option delta or length nibble 15 without being the 0xFF payload marker (RFC 7252 §3.1).
    #[error("reserved option delta/length nibble 15")]
    ReservedOptionNibble,
    /// Payload marker followed by a zero-length payload (RFC 7252 §3: "MUST be processed as a message format error").
    #[error("payload marker followed by an empty payload")]
    EmptyPayload,
    /// Accumulated option number exceeds 65535.
    #[error("option number exceeds 65535")]
    OptionNumberOverflow,
    /// Code 0.00 (Empty) with a token, options or payload (RFC 7252 §4.1).
    #[error("Empty message (code 0.00) carries token, options or payload")]
    MalformedEmptyMessage,
    /// Option value longer than the 65535 + 269 bytes the option length encoding can express.
    #[error("option {number} value of {len} bytes is too long to encode")]
    OptionValueTooLong {
        /// Option number.
        number: u16,
        /// Offending value length.
        len: usize,
    },
    /// A `uint` option value longer than 4 bytes (RFC 7252 §3.2).
    #[error("uint value of {0} bytes does not fit in 32 bits")]
    UintTooLong(usize),
    /// An option value that is not valid for its option (e.g. a Block option longer than 3 bytes).
    #[error("invalid value for option {0}")]
    InvalidOptionValue(u16),
}
