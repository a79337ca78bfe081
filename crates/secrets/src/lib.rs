//! Secret key material and subscriber identifiers.
//!
//! Every secret of the AKA / EAP-AKA' key hierarchy (TS 33.102, TS 33.402 Annex A, RFC 9048 §3.3)
//! is its own fixed-size newtype here, so that a function signature says which key it takes and a
//! crate that must never hold a key (the gateway) has no way to name it. All secret types:
//!
//! - are zeroized when dropped ([`zeroize::ZeroizeOnDrop`]);
//! - print as `Name(..)` in `Debug` and have no `Display`;
//! - compare only in constant time ([`subtle::ConstantTimeEq`], no `PartialEq`);
//! - are not `Clone` unless a holder really needs a second copy, and never `Serialize`.
//!
//! The bytes are reachable only through the explicitly named [`Secret::expose`] method.
//!
//! This crate also holds the public values that travel with AKA (RAND, AUTN, AUTS, AMF, SQN) and
//! the IMSI, so that every crate speaks the same types. It does no cryptography.
#![forbid(unsafe_code)]

mod ident;
mod secret;

pub use ident::{Amf, Autn, Auts, Imsi, ImsiError, Rand, Sqn};
pub use secret::{
    Ck, CkPrime, Emsk, Ik, IkPrime, KAut, KEncr, KRe, MasterSalt, MasterSecret, Msk, Op, Opc, Res,
    Secret, SecretError, K,
};
