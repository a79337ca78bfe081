//! The one error type of this crate.

use capillary_coap::{CoapError, Code};

/// Everything that can go wrong in the batch layer.
///
/// Three groups (rustls-style):
/// - **whole-batch errors** from the peer: the batch is refused with the CoAP code of
///   [`RelayError::to_coap_code`] (PROTOCOL.md §4: over a limit → 4.13, not valid CBOR or
///   unknown version → 4.00);
/// - **per-entry errors** from the peer ([`RelayError::InvalidHandle`],
///   [`RelayError::InvalidEntry`], [`RelayError::MalformedCoap`]): the entry is skipped and, if
///   its handle is known, answered with `kind 1, result 1` (see
///   [`crate::batch::DecodedBatch::refusals`]);
/// - **local errors** (API misuse, back-pressure): [`RelayError::Full`],
///   [`RelayError::EntryTooLarge`], [`RelayError::InvalidConfig`],
///   [`RelayError::HandleTableFull`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The batch is larger than 64 KiB (§4).
    #[error("batch of {len} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The batch has more than 1,024 entries (§4).
    #[error("batch of {count} entries exceeds the limit of {max} entries")]
    TooManyEntries {
        /// Declared (or actual) number of entries.
        count: u64,
        /// The limit.
        max: usize,
    },
    /// A `kind 0` (coap) body is longer than 1,152 bytes (§4). This refuses the whole batch.
    #[error("CoAP body of {len} bytes exceeds the limit of {max} bytes")]
    CoapBodyTooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `version` is not 1 (§4: answered with 4.00 and the diagnostic `"batch version"`).
    #[error("unsupported batch version {0}")]
    UnsupportedVersion(u64),
    /// The input ends inside a CBOR item, or a declared length exceeds the remaining input.
    #[error("batch truncated")]
    Truncated,
    /// Bytes follow the batch item.
    #[error("{0} bytes after the batch")]
    TrailingBytes(usize),
    /// An indefinite-length string, array or map (the batch profile is definite-length only).
    #[error("indefinite-length CBOR item")]
    IndefiniteLength,
    /// Not well-formed CBOR (RFC 8949 Appendix C) for the given reason.
    #[error("not well-formed CBOR: {0}")]
    NotWellFormed(&'static str),
    /// Well-formed CBOR that is not `[version, [* entry]]`.
    #[error("malformed batch: {0}")]
    Malformed(&'static str),
    /// Per entry: the handle is missing, not an unsigned integer, or above `u32::MAX`.
    #[error("entry handle missing or not a 32-bit unsigned integer")]
    InvalidHandle,
    /// Per entry: the entry does not match `[handle, kind, body]` or its kind's body.
    #[error("invalid entry: {0}")]
    InvalidEntry(&'static str),
    /// Per entry: a `kind 0` body that is not a CoAP message (RFC 7252 §3).
    #[error("coap entry body is not a CoAP message: {0}")]
    MalformedCoap(CoapError),
    /// Local: the batcher already holds a sealed batch and the entry does not fit in the open
    /// one; call [`crate::Batcher::poll_batch`] first.
    #[error("batcher full: take the sealed batch first")]
    Full,
    /// Local: the entry alone does not fit in a batch under the batcher's limits.
    #[error("entry of {len} bytes cannot fit in a batch of at most {max} bytes")]
    EntryTooLarge {
        /// Encoded entry length.
        len: usize,
        /// The batcher's byte limit.
        max: usize,
    },
    /// Local: a configuration value out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// Local: the handle table holds `capacity` devices already.
    #[error("handle table full ({capacity} devices)")]
    HandleTableFull {
        /// The table's capacity.
        capacity: usize,
    },
}

impl RelayError {
    /// The CoAP response code that answers a batch refused with this error (PROTOCOL.md §4):
    /// 4.13 for the size/count limits, 4.00 for anything malformed or an unknown version.
    /// Local errors map to 5.03 (back-pressure, table full) or 5.00 (configuration); they are
    /// never caused by the peer.
    pub fn to_coap_code(&self) -> Code {
        match self {
            RelayError::BatchTooLarge { .. }
            | RelayError::TooManyEntries { .. }
            | RelayError::CoapBodyTooLarge { .. }
            | RelayError::EntryTooLarge { .. } => Code::REQUEST_ENTITY_TOO_LARGE,
            RelayError::UnsupportedVersion(_)
            | RelayError::Truncated
            | RelayError::TrailingBytes(_)
            | RelayError::IndefiniteLength
            | RelayError::NotWellFormed(_)
            | RelayError::Malformed(_)
            | RelayError::InvalidHandle
            | RelayError::InvalidEntry(_)
            | RelayError::MalformedCoap(_) => Code::BAD_REQUEST,
            RelayError::Full | RelayError::HandleTableFull { .. } => Code::SERVICE_UNAVAILABLE,
            RelayError::InvalidConfig(_) => Code::INTERNAL_SERVER_ERROR,
        }
    }

    /// The diagnostic payload to send with [`RelayError::to_coap_code`], if §4 fixes one:
    /// `"batch version"` for an unknown version.
    pub fn diagnostic(&self) -> Option<&'static str> {
        match self {
            RelayError::UnsupportedVersion(_) => Some("batch version"),
            _ => None,
        }
    }

    /// True for the errors that concern one entry only (skipped and refused per entry, §4).
    pub fn is_per_entry(&self) -> bool {
        matches!(
            self,
            RelayError::InvalidHandle | RelayError::InvalidEntry(_) | RelayError::MalformedCoap(_)
        )
    }
}
