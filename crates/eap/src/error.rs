//! Codec errors: why bytes from the wire are not a valid EAP / EAP-AKA' packet.

/// Why a packet could not be decoded or decrypted. Every decoder in this crate returns this
/// instead of panicking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Fewer than 4 octets, or the Length field is below 4 or beyond the buffer (RFC 3748 §4).
    #[error("EAP packet truncated or Length field invalid (RFC 3748 §4)")]
    BadLength,
    /// Code outside 1..=4 (RFC 3748 §4).
    #[error("unknown EAP Code {0} (RFC 3748 §4)")]
    UnknownCode(u8),
    /// A Request or Response without a Type octet (RFC 3748 §4.1).
    #[error("EAP Request/Response without Type (RFC 3748 §4.1)")]
    MissingType,
    /// The EAP Type is not the one expected here.
    #[error("unexpected EAP Type {0}")]
    UnexpectedType(u8),
    /// Success/Failure with data, or a Code not allowed here.
    #[error("unexpected EAP Code {0}")]
    UnexpectedCode(u8),
    /// The EAP-AKA' header (Subtype, Reserved) is truncated (RFC 4187 §8.1).
    #[error("EAP-AKA' header truncated (RFC 4187 §8.1)")]
    TruncatedHeader,
    /// Unknown EAP-AKA' Subtype (RFC 4187 §11, RFC 9048 §6).
    #[error("unknown EAP-AKA' Subtype {0}")]
    UnknownSubtype(u8),
    /// An attribute's Length is 0 or runs past the end of the packet (RFC 4187 §8.1).
    #[error("attribute {typ} has an invalid Length (RFC 4187 §8.1)")]
    AttributeLength {
        /// Attribute type.
        typ: u8,
    },
    /// A non-skippable attribute (type 0..=127) this implementation does not know (RFC 4187 §8.1).
    #[error("unknown non-skippable attribute {0} (RFC 4187 §8.1)")]
    UnknownAttribute(u8),
    /// The attribute occurs more than once where only one is allowed (RFC 4187 §8.1).
    #[error("attribute {0} occurs more than once (RFC 4187 §8.1)")]
    DuplicateAttribute(u8),
    /// A field inside an attribute is inconsistent (actual length, RES length, padding).
    #[error("attribute {typ} has an invalid value (RFC 4187 §10)")]
    AttributeValue {
        /// Attribute type.
        typ: u8,
    },
    /// The attribute is not allowed in this place (e.g. AT_ENCR_DATA nested, RFC 4187 §10.12).
    #[error("attribute {0} not allowed here (RFC 4187 §10)")]
    AttributeNotAllowed(u8),
    /// AT_ENCR_DATA is not a whole number of AES blocks or AT_IV is missing (RFC 4187 §10.12).
    #[error("AT_ENCR_DATA cannot be decrypted (RFC 4187 §10.12)")]
    Encryption,
    /// An attribute is too long to encode (Length is one octet of 4-octet units).
    #[error("attribute too long to encode")]
    TooLong,
}
