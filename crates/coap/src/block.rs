//! Block1/Block2 option values (RFC 7959 §2.2).
//!
//! Only the value codec: `NUM | M | SZX` in a 0..=3-byte `uint`. Block-wise transfer state
//! (reassembly, Request-Tag handling) is left to the application.

use crate::msg::{decode_uint, encode_uint};
use crate::CoapError;

/// A decoded Block1/Block2 value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockValue {
    /// Block number (0..2^20).
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent 0..=6; block size is `2^(szx + 4)` (16..=1024). 7 is reserved.
    pub szx: u8,
}

impl BlockValue {
    /// Largest block number a 3-byte value can carry.
    pub const MAX_NUM: u32 = (1 << 20) - 1;

    /// A block value; `None` if `num` or `szx` is out of range.
    pub fn new(num: u32, more: bool, szx: u8) -> Option<Self> {
        (num <= Self::MAX_NUM && szx <= 6).then_some(BlockValue { num, more, szx })
    }

    /// Block size in bytes.
    pub fn size(self) -> usize {
        1 << (usize::from(self.szx) + 4)
    }

    /// Byte offset of this block (`num × size`).
    pub fn offset(self) -> usize {
        self.num as usize * self.size()
    }

    /// Decode an option value (RFC 7959 §2.2); `option` is used in the error.
    /// Fails for values over 3 bytes and for SZX 7.
    pub fn decode(option: u16, value: &[u8]) -> Result<Self, CoapError> {
        if value.len() > 3 {
            return Err(CoapError::InvalidOptionValue(option));
        }
        let v = decode_uint(value)?;
        let szx = (v & 0x07) as u8;
        if szx == 7 {
            return Err(CoapError::InvalidOptionValue(option));
        }
        Ok(BlockValue {
            num: v >> 4,
            more: v & 0x08 != 0,
            szx,
        })
    }

    /// Minimal encoding (0 → empty value).
    pub fn encode(self) -> Vec<u8> {
        encode_uint(
            ((self.num & Self::MAX_NUM) << 4)
                | (u32::from(self.more) << 3)
                | u32::from(self.szx & 0x07),
        )
    }
}
