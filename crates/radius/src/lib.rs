//! RADIUS for EAP, sans-IO: the codec (RFC 2865), Message-Authenticator (RFC 3579 §3.2,
//! RFC 2869 §5.14), EAP over RADIUS (RFC 3579), MS-MPPE keys (RFC 2548 §2.4.2/2.4.3) and a
//! server state machine with per-client secrets and duplicate detection (RFC 5080 §2.2.2).
//!
//! The crate has no sockets, clock or RNG: the driver passes in datagrams, `now` and salt bytes
//! and sends what comes out. It does not run EAP itself: an [`AccessRequest`] carries the
//! reassembled EAP packet out, and a [`Reply`] carries the EAP answer (and MSK) back in.
//!
//! What it does not do: accounting (RFC 2866), CoA (RFC 5176), Status-Server replies
//! (RFC 5997, discarded as unsupported), proxying, RADIUS/TLS.
#![forbid(unsafe_code)]

pub mod client;
pub mod crypto;
pub mod packet;
mod server;

pub use packet::{Attribute, Code, DecodeError, EncodeError, Packet};
pub use server::{
    AccessRequest, ClientConfig, DiscardReason, Incoming, RadiusServer, Reply, RequestKey,
    ServerConfig, SharedSecret, Stats,
};

/// Errors from building replies, checking replies, and configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RadiusError {
    /// Received bytes are not a well-formed RADIUS packet.
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    /// The reply does not fit in a RADIUS packet.
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    /// `respond` for a key whose client is not configured.
    #[error("no client configured for the request's source address")]
    UnknownClient,
    /// `respond` twice for the same request.
    #[error("request already answered")]
    AlreadyAnswered,
    /// A newer request with the same Identifier from the same address replaced this one.
    #[error("request superseded by a newer one with the same Identifier")]
    Superseded,
    /// The Response Authenticator of a reply is wrong (RFC 2865 §3).
    #[error("bad Response Authenticator")]
    BadResponseAuthenticator,
    /// The Message-Authenticator is wrong (RFC 3579 §3.2).
    #[error("bad Message-Authenticator")]
    BadMessageAuthenticator,
    /// A packet carrying EAP-Message has no Message-Authenticator (RFC 3579 §3.2).
    #[error("EAP-Message without Message-Authenticator")]
    MissingMessageAuthenticator,
    /// A reply has a code that is not Access-Accept, -Reject or -Challenge.
    #[error("unexpected code {0}")]
    UnexpectedCode(u8),
    /// An attribute value is invalid (length, salt bit, ...).
    #[error("invalid attribute value: {0}")]
    InvalidValue(&'static str),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}
