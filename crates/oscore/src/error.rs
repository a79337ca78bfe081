//! The one error type of this crate, and the one table from error to CoAP response
//! (RFC 8613 §7.4, §8.2, §8.4).

use capillary_coap::msg::{option_number, Code, Message};

/// Why an OSCORE option value or a protected message could not be decoded
/// (RFC 8613 §6.1, §8.2 step 3: "the decompression or the COSE message fails to decode").
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Reserved flag bits (the three most significant) are set.
    #[error("reserved OSCORE flag bits set in 0x{0:02x}")]
    ReservedFlags(u8),
    /// Partial IV length `n` is 6 or 7 (reserved).
    #[error("reserved Partial IV length {0}")]
    ReservedPivLength(u8),
    /// A flag byte of zero with further bytes (an all-zero flag byte SHALL be omitted).
    #[error("zero flag byte in a non-empty OSCORE option")]
    NonEmptyZeroFlags,
    /// The option ends inside the Partial IV or kid context.
    #[error("OSCORE option truncated")]
    Truncated,
    /// Bytes after the kid context when the `k` flag is not set.
    #[error("trailing bytes in OSCORE option")]
    TrailingBytes,
    /// A request without a Partial IV (RFC 8613 §6.1: mandatory in requests).
    #[error("request without Partial IV")]
    MissingPartialIv,
    /// A request without a kid (RFC 8613 §6.1: mandatory in requests).
    #[error("request without kid")]
    MissingKid,
    /// More than one OSCORE option.
    #[error("repeated OSCORE option")]
    RepeatedOption,
    /// The payload is shorter than an AEAD tag plus the code byte.
    #[error("ciphertext too short")]
    CiphertextTooShort,
}

/// Everything that can go wrong while protecting or verifying an OSCORE message.
///
/// Peer misbehaviour (`Decode`, `UnknownKid`, `Replay`, `DecryptionFailed`,
/// `InvalidPlaintext`, `NotProtected`) is answered as [`OscoreError::to_coap_code`] says;
/// local conditions and API misuse (`SsnExhausted`, `SsnNotPersisted`, `InvalidParams`,
/// `Encode`, `UnsupportedOption`) are the caller's to fix.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OscoreError {
    /// The OSCORE option or COSE object failed to decode (RFC 8613 §8.2 step 3).
    #[error("failed to decode COSE: {0}")]
    Decode(#[from] DecodeError),
    /// No Recipient Context for the kid / kid context (RFC 8613 §8.2 step 3).
    #[error("security context not found")]
    UnknownKid,
    /// The Partial IV was already received or is below the Replay Window (RFC 8613 §7.4),
    /// or a notification is not newer than the last one (§7.4.1).
    #[error("replay detected")]
    Replay,
    /// AEAD decryption / tag verification failed (RFC 8613 §8.2 step 7, §8.4 step 5).
    #[error("decryption failed")]
    DecryptionFailed,
    /// Authentic plaintext that is not `code || options || 0xFF payload` (RFC 8613 §5.3).
    #[error("malformed decrypted plaintext")]
    InvalidPlaintext,
    /// A notification (Inner Observe) in response to a non-Observe request
    /// (RFC 8613 §4.1.3.5.2: the client "stops processing the message").
    #[error("notification for a non-Observe request")]
    UnexpectedObserve,
    /// The message carries no OSCORE option.
    #[error("message is not OSCORE-protected")]
    NotProtected,
    /// The Sender Sequence Number space (2^40, RFC 8613 §7.2.1) is used up: re-key.
    #[error("sender sequence number exhausted; a new security context is required")]
    SsnExhausted,
    /// The next Sender Sequence Number is not covered by a persisted mark
    /// (RFC 8613 Appendix B.1.1): persist a new mark first.
    #[error("sender sequence number not covered by a persisted mark")]
    SsnNotPersisted,
    /// Bad context parameters or a bad argument (the text says which).
    #[error("invalid parameter: {0}")]
    InvalidParams(&'static str),
    /// An option this implementation does not protect (e.g. an unparseable Proxy-Uri).
    #[error("cannot protect option {0}")]
    UnsupportedOption(u16),
    /// Encoding the plaintext failed (option value too long).
    #[error("plaintext encoding failed: {0}")]
    Encode(#[from] capillary_coap::CoapError),
}

impl OscoreError {
    /// The CoAP response code for this error (RFC 8613 §7.4, §8.2):
    /// decode failure → 4.02 Bad Option, unknown context or replay → 4.01 Unauthorized,
    /// decryption failure or malformed plaintext → 4.00 Bad Request, unprotected request
    /// → 4.01 Unauthorized, local errors → 5.00 Internal Server Error.
    pub fn to_coap_code(&self) -> Code {
        match self {
            OscoreError::Decode(_) => Code::BAD_OPTION,
            OscoreError::UnknownKid | OscoreError::Replay | OscoreError::NotProtected => {
                Code::UNAUTHORIZED
            }
            OscoreError::DecryptionFailed
            | OscoreError::InvalidPlaintext
            | OscoreError::UnexpectedObserve => Code::BAD_REQUEST,
            _ => Code::INTERNAL_SERVER_ERROR,
        }
    }

    /// The diagnostic payload the RFC suggests (RFC 8613 §7.4, §8.2), if any.
    pub fn diagnostic(&self) -> Option<&'static str> {
        match self {
            OscoreError::Decode(_) => Some("Failed to decode COSE"),
            OscoreError::UnknownKid => Some("Security context not found"),
            OscoreError::Replay => Some("Replay detected"),
            OscoreError::DecryptionFailed => Some("Decryption failed"),
            _ => None,
        }
    }

    /// Whether this error is the peer's doing (so a server answers it, see
    /// [`OscoreError::error_response`]) rather than a local condition.
    pub fn is_peer_error(&self) -> bool {
        matches!(
            self,
            OscoreError::Decode(_)
                | OscoreError::UnknownKid
                | OscoreError::Replay
                | OscoreError::DecryptionFailed
                | OscoreError::InvalidPlaintext
                | OscoreError::UnexpectedObserve
                | OscoreError::NotProtected
        )
    }

    /// The one mapping from a request-verification error to what goes on the wire: an
    /// *unprotected* error response to `request` with [`Self::to_coap_code`], an Outer
    /// Max-Age of 0 (RFC 8613 §8.2) and the diagnostic payload. `None` for local errors
    /// and for non-requests (a client never answers a bad response, RFC 8613 §8.4).
    /// ACK (piggybacked) for a Confirmable request; for a Non-confirmable one the
    /// response is NON with `non_message_id`.
    pub fn error_response(&self, request: &Message, non_message_id: u16) -> Option<Message> {
        if !self.is_peer_error() || !request.code.is_request() {
            return None;
        }
        let mut resp = Message::response_to(request, self.to_coap_code(), non_message_id);
        resp.add_option(option_number::MAX_AGE, Vec::new());
        if let Some(d) = self.diagnostic() {
            resp.payload = d.as_bytes().to_vec();
        }
        Some(resp)
    }
}
