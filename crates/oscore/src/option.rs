//! The OSCORE option value (RFC 8613 §6.1): the compressed COSE header.
//!
//! ```text
//!  0 1 2 3 4 5 6 7 <------------- n bytes -------------->
//! +-+-+-+-+-+-+-+-+--------------------------------------
//! |0 0 0|h|k|  n  |       Partial IV (if any) ...
//! +-+-+-+-+-+-+-+-+--------------------------------------
//!  <- 1 byte -> <----- s bytes ------>
//! +------------+----------------------+------------------+
//! | s (if any) | kid context (if any) | kid (if any) ... |
//! +------------+----------------------+------------------+
//! ```

use crate::crypto::MAX_PIV_LEN;
use crate::error::DecodeError;

const FLAG_K: u8 = 0x08;
const FLAG_H: u8 = 0x10;
const RESERVED: u8 = 0xe0;

/// A decoded OSCORE option value. Fields borrow from the option bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OscoreOption<'a> {
    /// Partial IV (`n` bytes, 0..=5).
    pub partial_iv: Option<&'a [u8]>,
    /// kid context (flag `h`).
    pub kid_context: Option<&'a [u8]>,
    /// kid (flag `k`); may be present and empty.
    pub kid: Option<&'a [u8]>,
}

impl<'a> OscoreOption<'a> {
    /// Decodes an option value, rejecting reserved flag bits, reserved `n` (6, 7),
    /// truncation, and trailing bytes (possible only when `k` is not set).
    pub fn decode(value: &'a [u8]) -> Result<Self, DecodeError> {
        let Some((&flags, rest)) = value.split_first() else {
            // RFC 8613 §6.1: an empty option value means all flags zero.
            return Ok(Self::default());
        };
        if flags & RESERVED != 0 {
            return Err(DecodeError::ReservedFlags(flags));
        }
        if flags == 0 {
            // "If all flag bits are zero, the Option Value SHALL be empty."
            return Err(DecodeError::NonEmptyZeroFlags);
        }
        let n = usize::from(flags & 0x07);
        if n > MAX_PIV_LEN {
            return Err(DecodeError::ReservedPivLength(n as u8));
        }
        if rest.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (piv, mut rest) = rest.split_at(n);
        let partial_iv = (n > 0).then_some(piv);
        let kid_context = if flags & FLAG_H != 0 {
            let (&s, r) = rest.split_first().ok_or(DecodeError::Truncated)?;
            let s = usize::from(s);
            if r.len() < s {
                return Err(DecodeError::Truncated);
            }
            let (ctx, r) = r.split_at(s);
            rest = r;
            Some(ctx)
        } else {
            None
        };
        let kid = if flags & FLAG_K != 0 {
            let kid = rest;
            rest = &[];
            Some(kid)
        } else {
            None
        };
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(Self {
            partial_iv,
            kid_context,
            kid,
        })
    }

    /// Encodes the option value; all flags zero gives the empty value.
    ///
    /// Callers guarantee `partial_iv` is at most 5 bytes and `kid_context` at most 255 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let piv = self.partial_iv.unwrap_or(&[]);
        let mut flags = (piv.len() as u8) & 0x07;
        if self.kid.is_some() {
            flags |= FLAG_K;
        }
        if self.kid_context.is_some() {
            flags |= FLAG_H;
        }
        if flags == 0 {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(
            2 + piv.len()
                + self.kid_context.map_or(0, <[u8]>::len)
                + self.kid.map_or(0, <[u8]>::len),
        );
        out.push(flags);
        out.extend_from_slice(piv);
        if let Some(ctx) = self.kid_context {
            out.push(ctx.len() as u8);
            out.extend_from_slice(ctx);
        }
        if let Some(kid) = self.kid {
            out.extend_from_slice(kid);
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc_examples() {
        // RFC 8613 Appendix C.4, C.5, C.6, C.7, C.8 option values.
        let c4 = OscoreOption {
            partial_iv: Some(&[0x14]),
            kid: Some(&[]),
            kid_context: None,
        };
        assert_eq!(c4.encode(), [0x09, 0x14]);
        let c5 = OscoreOption {
            partial_iv: Some(&[0x14]),
            kid: Some(&[0x00]),
            kid_context: None,
        };
        assert_eq!(c5.encode(), [0x09, 0x14, 0x00]);
        let ctx = [0x37, 0xcb, 0xf3, 0x21, 0x00, 0x17, 0xa2, 0xd3];
        let c6 = OscoreOption {
            partial_iv: Some(&[0x14]),
            kid: Some(&[]),
            kid_context: Some(&ctx),
        };
        let enc = c6.encode();
        assert_eq!(
            enc,
            [0x19, 0x14, 0x08, 0x37, 0xcb, 0xf3, 0x21, 0x00, 0x17, 0xa2, 0xd3]
        );
        assert_eq!(OscoreOption::decode(&enc), Ok(c6));
        assert_eq!(OscoreOption::default().encode(), Vec::<u8>::new());
        let c8 = OscoreOption {
            partial_iv: Some(&[0x00]),
            ..Default::default()
        };
        assert_eq!(c8.encode(), [0x01, 0x00]);
        assert_eq!(OscoreOption::decode(&[0x01, 0x00]), Ok(c8));
    }

    #[test]
    fn rejects() {
        assert_eq!(
            OscoreOption::decode(&[0x20]),
            Err(DecodeError::ReservedFlags(0x20))
        );
        assert_eq!(
            OscoreOption::decode(&[0x80]),
            Err(DecodeError::ReservedFlags(0x80))
        );
        assert_eq!(
            OscoreOption::decode(&[0x06, 1, 2, 3, 4, 5, 6]),
            Err(DecodeError::ReservedPivLength(6))
        );
        assert_eq!(
            OscoreOption::decode(&[0x03, 1]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(OscoreOption::decode(&[0x10]), Err(DecodeError::Truncated));
        assert_eq!(
            OscoreOption::decode(&[0x10, 3, 1]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            OscoreOption::decode(&[0x01, 1, 2]),
            Err(DecodeError::TrailingBytes)
        );
        assert_eq!(
            OscoreOption::decode(&[0x00]),
            Err(DecodeError::NonEmptyZeroFlags)
        );
    }
}
