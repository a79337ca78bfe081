//! Secret key material as types (RFC 8613 §3.1): zeroized on drop, redacted in `Debug`,
//! no `PartialEq` (use [`MasterSecret::ct_eq`] etc. for constant-time comparison).

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::OscoreError;

/// Key length of AES-CCM-16-64-128 (COSE algorithm 10), in bytes.
pub const KEY_LEN: usize = 16;
/// Nonce length of AES-CCM-16-64-128 (COSE algorithm 10), in bytes.
pub const NONCE_LEN: usize = 13;

/// OSCORE Master Secret (RFC 8613 §3.1): variable length, at least 1 byte.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterSecret(Vec<u8>);

impl MasterSecret {
    /// Wraps a copy of `bytes`. Fails on an empty secret.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, OscoreError> {
        if bytes.is_empty() {
            return Err(OscoreError::InvalidParams(
                "master secret must not be empty",
            ));
        }
        Ok(Self(bytes.to_vec()))
    }
    /// The secret bytes. Do not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// Constant-time comparison (length is not secret).
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// OSCORE Master Salt (RFC 8613 §3.1): optional, default the empty byte string.
#[derive(Zeroize, ZeroizeOnDrop, Default)]
pub struct MasterSalt(Vec<u8>);

impl MasterSalt {
    /// Wraps a copy of `bytes` (may be empty: the RFC 8613 §3.2 default).
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
    /// The salt bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// Constant-time comparison (length is not secret).
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// A derived AEAD key: Sender Key or Recipient Key (RFC 8613 §3.2.1), 16 bytes.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct AeadKey([u8; KEY_LEN]);

impl AeadKey {
    pub(crate) fn new(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
    /// The key bytes. Do not log them.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
    /// Constant-time comparison.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// The Common IV (RFC 8613 §3.2.1), 13 bytes for AES-CCM-16-64-128.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct CommonIv([u8; NONCE_LEN]);

impl CommonIv {
    pub(crate) fn new(bytes: [u8; NONCE_LEN]) -> Self {
        Self(bytes)
    }
    /// The IV bytes.
    pub fn expose(&self) -> &[u8; NONCE_LEN] {
        &self.0
    }
    /// Constant-time comparison.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

macro_rules! redacted_debug {
    ($($t:ident),*) => {$(
        impl core::fmt::Debug for $t {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(concat!(stringify!($t), " { .. }"))
            }
        }
    )*};
}
redacted_debug!(MasterSecret, MasterSalt, AeadKey, CommonIv);
