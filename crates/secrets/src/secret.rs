//! Fixed-size secret newtypes.

use core::fmt;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Why bytes could not become a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The input had the wrong number of bytes.
    #[error("{what} must be {expected} bytes, got {got}")]
    Length {
        /// Name of the secret type.
        what: &'static str,
        /// Required length in bytes.
        expected: usize,
        /// Length that was given.
        got: usize,
    },
    /// The input was not valid hexadecimal.
    #[error("{what} is not valid hex")]
    Hex {
        /// Name of the secret type.
        what: &'static str,
    },
}

/// Behaviour shared by every fixed-size secret.
pub trait Secret: Sized + ZeroizeOnDrop {
    /// Length in bytes.
    const LEN: usize;
    /// Type name used in error messages and redacted `Debug` output.
    const NAME: &'static str;
    /// Builds the secret from a slice of exactly [`Self::LEN`] bytes.
    fn from_slice(bytes: &[u8]) -> Result<Self, SecretError>;
    /// Reads the secret bytes. Named so that every use is visible in review.
    fn expose(&self) -> &[u8];

    /// Parses hex (upper or lower case, no separators) of exactly [`Self::LEN`] bytes.
    fn from_hex(text: &str) -> Result<Self, SecretError> {
        let mut buf = zeroize::Zeroizing::new(vec![0u8; text.len() / 2]);
        if text.len() != 2 * Self::LEN {
            return Err(SecretError::Length {
                what: Self::NAME,
                expected: Self::LEN,
                got: text.len() / 2,
            });
        }
        hex::decode_to_slice(text, &mut buf[..])
            .map_err(|_| SecretError::Hex { what: Self::NAME })?;
        Self::from_slice(&buf)
    }

    /// Constant-time equality.
    fn ct_eq_secret(&self, other: &Self) -> bool {
        self.expose().ct_eq(other.expose()).into()
    }
}

macro_rules! secret_type {
    ($(#[$meta:meta])* $name:ident, $len:expr) => {
        $(#[$meta])*
        #[derive(Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Wraps the given bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// Reads the secret bytes as an array.
            pub fn expose_array(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl Secret for $name {
            const LEN: usize = $len;
            const NAME: &'static str = stringify!($name);

            fn from_slice(bytes: &[u8]) -> Result<Self, SecretError> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| SecretError::Length {
                    what: stringify!($name),
                    expected: $len,
                    got: bytes.len(),
                })?;
                Ok(Self(arr))
            }

            fn expose(&self) -> &[u8] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(..)"))
            }
        }

        impl ConstantTimeEq for $name {
            fn ct_eq(&self, other: &Self) -> subtle::Choice {
                self.0.ct_eq(&other.0)
            }
        }
    };
    (clone $(#[$meta:meta])* $name:ident, $len:expr) => {
        secret_type!($(#[$meta])* $name, $len);

        impl Clone for $name {
            fn clone(&self) -> Self {
                Self(self.0)
            }
        }
    };
}

secret_type!(clone
    /// Subscriber key K (TS 33.102 §6.3), 128 bits. Cloned only by the store that owns it.
    K, 16);
secret_type!(clone
    /// Operator variant configuration field OP (TS 35.206 §2), 128 bits.
    Op, 16);
secret_type!(clone
    /// OPc = OP ⊕ E_K(OP) (TS 35.206 §4.1), 128 bits.
    Opc, 16);
secret_type!(
    /// Cipher key CK = f3_K(RAND) (TS 33.102 §6.3.2).
    Ck, 16);
secret_type!(
    /// Integrity key IK = f4_K(RAND) (TS 33.102 §6.3.2).
    Ik, 16);
secret_type!(
    /// CK' (TS 33.402 Annex A.2, RFC 9048 §3.3).
    CkPrime, 16);
secret_type!(
    /// IK' (TS 33.402 Annex A.2, RFC 9048 §3.3).
    IkPrime, 16);
secret_type!(clone
    /// K_encr, the AT_ENCR_DATA key (RFC 9048 §3.3).
    KEncr, 16);
secret_type!(clone
    /// K_aut, the AT_MAC key (RFC 9048 §3.3).
    KAut, 32);
secret_type!(clone
    /// K_re, the fast re-authentication key (RFC 9048 §3.3).
    KRe, 32);
secret_type!(
    /// Master Session Key exported by EAP (RFC 3748 §7.10), 64 bytes.
    Msk, 64);
secret_type!(
    /// Extended Master Session Key (RFC 5247), 64 bytes.
    Emsk, 64);
secret_type!(
    /// OSCORE Master Secret that CoAP-EAP derives from the MSK (RFC 9820 §6.2,
    /// RFC 8613 §3.1), 16 bytes.
    MasterSecret, 16);
secret_type!(
    /// OSCORE Master Salt that CoAP-EAP derives from the MSK (RFC 9820 §6.2,
    /// RFC 8613 §3.1), 8 bytes.
    MasterSalt, 8);

/// RES / XRES = f2_K(RAND), 4 to 16 bytes (TS 33.102 §6.3.2, TS 35.206 uses 8).
///
/// XRES is held by the server until the peer answers; it is compared in constant time.
#[derive(Zeroize, ZeroizeOnDrop, Clone)]
pub struct Res {
    bytes: [u8; 16],
    len: u8,
}

impl Res {
    /// Builds a RES from 4 to 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, SecretError> {
        if !(4..=16).contains(&bytes.len()) {
            return Err(SecretError::Length {
                what: "Res",
                expected: 16,
                got: bytes.len(),
            });
        }
        let mut out = [0u8; 16];
        out[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            bytes: out,
            len: bytes.len() as u8,
        })
    }

    /// Parses hex of 4 to 16 bytes.
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let raw = zeroize::Zeroizing::new(
            hex::decode(text).map_err(|_| SecretError::Hex { what: "Res" })?,
        );
        Self::from_slice(&raw)
    }

    /// Reads the bytes. Named so that every use is visible in review.
    pub fn expose(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true: a RES has at least 4 bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Res {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Res(..)")
    }
}

impl ConstantTimeEq for Res {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        // Lengths are public (RFC 4187 AT_RES carries the length in the clear).
        if self.len != other.len {
            return subtle::Choice::from(0);
        }
        self.expose().ct_eq(other.expose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = K::from_bytes([0x5a; 16]);
        assert_eq!(format!("{k:?}"), "K(..)");
        let msk = Msk::from_bytes([0xa5; 64]);
        assert_eq!(format!("{msk:?}"), "Msk(..)");
        let res = Res::from_slice(&[1, 2, 3, 4]).unwrap();
        assert_eq!(format!("{res:?}"), "Res(..)");
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let k = K::from_hex("465b5ce8b199b49faa5f0a2ee238a6bc").unwrap();
        assert_eq!(k.expose()[0], 0x46);
        assert_eq!(
            K::from_hex("465b").err(),
            Some(SecretError::Length {
                what: "K",
                expected: 16,
                got: 2
            })
        );
        assert!(matches!(
            K::from_hex("zz5b5ce8b199b49faa5f0a2ee238a6bc"),
            Err(SecretError::Hex { what: "K" })
        ));
        assert!(matches!(
            KAut::from_slice(&[0; 31]),
            Err(SecretError::Length { .. })
        ));
    }

    #[test]
    fn constant_time_equality() {
        let a = KAut::from_bytes([7; 32]);
        let b = KAut::from_bytes([7; 32]);
        let mut c_bytes = [7; 32];
        c_bytes[31] = 8;
        let c = KAut::from_bytes(c_bytes);
        assert!(a.ct_eq_secret(&b));
        assert!(!a.ct_eq_secret(&c));
        let r1 = Res::from_slice(&[1; 8]).unwrap();
        let r2 = Res::from_slice(&[1; 4]).unwrap();
        assert!(!bool::from(r1.ct_eq(&r2)));
        assert!(bool::from(r1.ct_eq(&r1.clone())));
    }

    #[test]
    fn res_length_limits() {
        assert!(Res::from_slice(&[0; 3]).is_err());
        assert!(Res::from_slice(&[0; 17]).is_err());
        assert_eq!(Res::from_slice(&[0; 16]).unwrap().len(), 16);
    }

    #[test]
    fn zeroize_clears_bytes() {
        let mut k = K::from_bytes([0xff; 16]);
        k.zeroize();
        assert_eq!(k.expose(), &[0u8; 16]);
    }
}
