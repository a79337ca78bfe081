//! EAP (RFC 3748) and EAP-AKA' (RFC 9048, building on RFC 4187): codec and sans-IO server
//! and peer state machines.
//!
//! - [`eap`]: the EAP header (Code, Identifier, Length, Type), Success/Failure/Identity/Nak.
//! - [`attr`], [`msg`]: every EAP-AKA' attribute (RFC 9048 §6 Table 1, RFC 4187 §10), the
//!   packet, AT_MAC (HMAC-SHA-256-128, RFC 9048 §3.4) and AT_ENCR_DATA (AES-128-CBC,
//!   RFC 4187 §10.12). Decoders return [`CodecError`] and never panic.
//! - [`server`]: [`EapAkaServer`], the authenticator side. Inputs arrive through methods,
//!   outputs leave as [`ServerEvent`]s drained with `poll_event`.
//! - [`peer`]: [`EapAkaPeer`], the device side, driven the same way.
//!
//! No I/O, no clock, no RNG of its own: randomness is injected as `rand_core::RngCore`. Key
//! derivation, AT_MAC and AT_CHECKCODE come from `capillary_aka::prime`.
//!
//! Not implemented: EAP-AKA (Type 23) authentication (the codec decodes it), KDFs other than
//! KDF 1, identity privacy of RFC 9048 §3.1/Annex (encrypted IMSI).
#![forbid(unsafe_code)]

pub mod attr;
pub mod eap;
pub mod error;
pub mod msg;
pub mod peer;
pub mod server;

pub use attr::Attribute;
pub use error::CodecError;
pub use msg::{AkaPacket, Attributes, Decoded, IdReq, Subtype};
pub use peer::{EapAkaPeer, PeerConfig, PeerEvent, PeerFailure};
pub use server::{
    DiscardReason, EapAkaServer, FailureReason, IdentityKind, Method, ReauthContext, RejectReason,
    ServerConfig, ServerEvent, VectorInput,
};
