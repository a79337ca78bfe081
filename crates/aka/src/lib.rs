//! AKA algorithms and key derivation for Capillary; no I/O, no clock, no RNG.
//!
//! - [`milenage`]: the Milenage algorithm set f1, f1*, f2, f3, f4, f5, f5* (3GPP TS 35.206 §4.1),
//!   built on the `aes` crate, with intermediate key material zeroized.
//! - [`vector`]: authentication vectors, AUTN and AUTS (TS 33.102 §6.3.2, §6.3.3, §6.3.5) and a
//!   USIM model with the sequence-number management of TS 33.102 Annex C.2.
//! - [`prime`]: the EAP-AKA' key chain: the TS 33.220 Annex B.2 KDF, CK'/IK' (TS 33.402 Annex A.2,
//!   RFC 9048 §3.3), PRF' and the full / fast re-authentication keys (RFC 9048 §3.3, §3.4),
//!   AT_MAC and AT_CHECKCODE (RFC 9048 §3.1, §3.4; RFC 4187 §10.13).
//!
//! Random values (RAND, NONCE_S) come from the caller. Secrets use the types of
//! [`capillary_secrets`] and are zeroized on drop.
#![forbid(unsafe_code)]

pub mod error;
pub mod milenage;
pub mod prime;
pub mod vector;

pub use error::AkaError;
pub use milenage::{opc_from_op, Milenage};
