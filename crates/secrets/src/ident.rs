//! Subscriber identifiers and the public values of an AKA run.

use core::fmt;
use core::str::FromStr;

/// Why a string is not an IMSI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImsiError {
    /// Not 6 to 15 decimal digits (TS 23.003 §2.2: MCC 3 + MNC 2..3 + MSIN, at most 15).
    #[error("an IMSI is 6 to 15 decimal digits (TS 23.003 §2.2), got {len} characters")]
    Length {
        /// Characters given.
        len: usize,
    },
    /// A character other than 0-9.
    #[error("an IMSI has only decimal digits (TS 23.003 §2.2)")]
    NotDigits,
}

/// International Mobile Subscriber Identity, TS 23.003 §2.2: 6 to 15 ASCII digits.
///
/// It is a permanent identifier: log it only where an operator needs it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Imsi(String);

impl Imsi {
    /// Validates and wraps an IMSI.
    pub fn new(text: &str) -> Result<Self, ImsiError> {
        if !(6..=15).contains(&text.len()) {
            return Err(ImsiError::Length { len: text.len() });
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ImsiError::NotDigits);
        }
        Ok(Self(text.to_owned()))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Imsi {
    type Err = ImsiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for Imsi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Imsi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Imsi({})", self.0)
    }
}

macro_rules! public_bytes {
    ($(#[$meta:meta])* $name:ident, $len:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Copies exactly `LEN` bytes, or returns `None`.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map(Self)
            }

            /// Parses hex of exactly `LEN` bytes, or returns `None`.
            pub fn from_hex(text: &str) -> Option<Self> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(text, &mut out).ok()?;
                Some(Self(out))
            }

            /// Lower-case hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), hex::encode(self.0))
            }
        }
    };
}

public_bytes!(
    /// RAND, the 128-bit network challenge (TS 33.102 §6.3.2).
    Rand, 16);
public_bytes!(
    /// AUTN = SQN ⊕ AK ‖ AMF ‖ MAC (TS 33.102 §6.3.2).
    Autn, 16);
public_bytes!(
    /// AUTS = SQN_MS ⊕ AK* ‖ MAC-S (TS 33.102 §6.3.3), sent on synchronisation failure.
    Auts, 14);
public_bytes!(
    /// Authentication Management Field (TS 33.102 Annex F). Bit 0 of the first octet is the
    /// "separation bit" that TS 33.401 Annex H and RFC 9048 §3.2 require to be 1 for AKA'.
    Amf, 2);

impl Amf {
    /// True when the AMF separation bit (TS 33.102 Annex H, bit 0 = most significant bit) is set.
    pub fn separation_bit(&self) -> bool {
        self.0[0] & 0x80 != 0
    }
}

/// Sequence number SQN, 48 bits (TS 33.102 §6.3.2, Annex C: SQN = SEQ ‖ IND).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Sqn(u64);

impl Sqn {
    /// Largest representable SQN (2^48 − 1).
    pub const MAX: u64 = (1 << 48) - 1;

    /// Wraps a value of at most 48 bits, or returns `None`.
    pub const fn new(value: u64) -> Option<Self> {
        if value > Self::MAX {
            None
        } else {
            Some(Self(value))
        }
    }

    /// SEQ ‖ IND with an IND of `ind_len` bits (TS 33.102 Annex C.1.1).
    pub fn from_seq_ind(seq: u64, ind: u32, ind_len: u8) -> Option<Self> {
        if ind_len > 47 || u64::from(ind) >> ind_len != 0 {
            return None;
        }
        let seq_max = Self::MAX >> ind_len;
        if seq > seq_max {
            return None;
        }
        Some(Self((seq << ind_len) | u64::from(ind)))
    }

    /// The value.
    pub const fn value(self) -> u64 {
        self.0
    }

    /// SEQ, the upper `48 − ind_len` bits.
    pub const fn seq(self, ind_len: u8) -> u64 {
        self.0 >> ind_len
    }

    /// IND, the lower `ind_len` bits.
    pub const fn ind(self, ind_len: u8) -> u32 {
        (self.0 & ((1u64 << ind_len) - 1)) as u32
    }

    /// Big-endian 6-byte form.
    pub fn to_bytes(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// From the big-endian 6-byte form.
    pub fn from_bytes(b: [u8; 6]) -> Self {
        Self(u64::from_be_bytes([
            0, 0, b[0], b[1], b[2], b[3], b[4], b[5],
        ]))
    }
}

impl fmt::Debug for Sqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sqn({:012x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imsi_validation() {
        assert!(Imsi::new("001010000000001").is_ok());
        assert_eq!(Imsi::new("12345"), Err(ImsiError::Length { len: 5 }));
        assert_eq!(
            Imsi::new("1234567890123456"),
            Err(ImsiError::Length { len: 16 })
        );
        assert_eq!(Imsi::new("00101a"), Err(ImsiError::NotDigits));
        assert_eq!(
            Imsi::new("001010000000001").unwrap().to_string(),
            "001010000000001"
        );
    }

    #[test]
    fn sqn_layout() {
        let sqn = Sqn::from_seq_ind(0x123, 7, 5).unwrap();
        assert_eq!(sqn.value(), (0x123 << 5) | 7);
        assert_eq!(sqn.seq(5), 0x123);
        assert_eq!(sqn.ind(5), 7);
        assert_eq!(Sqn::from_bytes(sqn.to_bytes()), sqn);
        assert!(Sqn::from_seq_ind(0, 32, 5).is_none());
        assert!(Sqn::new(1 << 48).is_none());
        assert_eq!(
            Sqn::from_bytes([0xff, 0x9b, 0xb4, 0xd0, 0xb6, 0x07]).value(),
            0xff9bb4d0b607
        );
    }

    #[test]
    fn amf_separation_bit() {
        assert!(Amf([0x80, 0x00]).separation_bit());
        assert!(!Amf([0x7f, 0xff]).separation_bit());
    }
}
