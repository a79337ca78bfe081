//! A tiny, strict CBOR (RFC 8949) reader and writer for the batch format of PROTOCOL.md §4.
//!
//! Why not `ciborium::value::Value`: its decoder silently accepts indefinite-length strings,
//! arrays and maps (concatenating or collecting them), so it cannot enforce the
//! "definite-length only" rule of the batch profile; it does not give back the exact bytes of
//! an item, which we need to preserve the body of an entry of unknown kind; and decoding a whole
//! `Value` tree first makes it impossible to skip one malformed entry and resume at the next
//! (§4: "an entry that fails to parse is skipped"). The subset needed here is small: heads,
//! unsigned integers, byte strings, arrays, maps, plus a generic iterative skipper that checks
//! well-formedness (RFC 8949 §3, Appendix C) of anything else without recursion.
//!
//! Strictness on input: indefinite lengths are refused ([`RelayError::IndefiniteLength`]),
//! reserved additional-information values 28..=30, a stray "break", two-byte simple values
//! below 32 and text strings that are not UTF-8 are refused
//! ([`RelayError::NotWellFormed`]), every declared length is checked against the bytes that
//! remain before anything is allocated ([`RelayError::Truncated`]). Non-preferred
//! (over-long) heads are accepted, as RFC 8949 §3 makes them well-formed.
//!
//! Output always uses preferred serialization (RFC 8949 §4.2.1: shortest heads, definite
//! lengths).

use crate::RelayError;

/// Major types (RFC 8949 §3.1).
pub(crate) const MAJOR_UINT: u8 = 0;
pub(crate) const MAJOR_BYTES: u8 = 2;
pub(crate) const MAJOR_TEXT: u8 = 3;
pub(crate) const MAJOR_ARRAY: u8 = 4;
pub(crate) const MAJOR_MAP: u8 = 5;
pub(crate) const MAJOR_TAG: u8 = 6;
pub(crate) const MAJOR_SIMPLE: u8 = 7;

/// An initial byte plus its argument (RFC 8949 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) major: u8,
    pub(crate) arg: u64,
}

/// Cursor over a byte slice. Never panics: every access is bounds-checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// `buf[from..self.pos]`.
    pub(crate) fn since(&self, from: usize) -> &'a [u8] {
        self.buf.get(from..self.pos).unwrap_or_default()
    }

    fn byte(&mut self) -> Result<u8, RelayError> {
        let b = *self.buf.get(self.pos).ok_or(RelayError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// Take `n` bytes, checking `n` against what remains first (no allocation).
    pub(crate) fn take(&mut self, n: u64) -> Result<&'a [u8], RelayError> {
        let n = usize::try_from(n).map_err(|_| RelayError::Truncated)?;
        if n > self.remaining() {
            return Err(RelayError::Truncated);
        }
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(RelayError::Truncated)?;
        self.pos += n;
        Ok(s)
    }

    /// Read one head. Refuses indefinite lengths, "break" and reserved additional information.
    /// For major type 7 the argument is the simple value or the raw float bits.
    pub(crate) fn head(&mut self) -> Result<Head, RelayError> {
        let ib = self.byte()?;
        let major = ib >> 5;
        let info = ib & 0x1f;
        let arg = match info {
            0..=23 => u64::from(info),
            24 => {
                let v = self.byte()?;
                if major == MAJOR_SIMPLE && v < 32 {
                    return Err(RelayError::NotWellFormed(
                        "two-byte simple value below 32 (RFC 8949 §3.3)",
                    ));
                }
                u64::from(v)
            }
            25 => be(self.take(2)?),
            26 => be(self.take(4)?),
            27 => be(self.take(8)?),
            28..=30 => {
                return Err(RelayError::NotWellFormed(
                    "reserved additional information 28..=30",
                ))
            }
            _ => {
                return Err(match major {
                    MAJOR_BYTES | MAJOR_TEXT | MAJOR_ARRAY | MAJOR_MAP => {
                        RelayError::IndefiniteLength
                    }
                    MAJOR_SIMPLE => {
                        RelayError::NotWellFormed("\"break\" outside an indefinite item")
                    }
                    _ => {
                        RelayError::NotWellFormed("additional information 31 on an integer or tag")
                    }
                })
            }
        };
        Ok(Head { major, arg })
    }

    /// Skip exactly one well-formed, definite-length data item of any type, iteratively (no
    /// recursion, so nesting depth cannot exhaust the stack).
    pub(crate) fn skip_item(&mut self) -> Result<(), RelayError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let h = self.head()?;
            match h.major {
                MAJOR_BYTES => {
                    self.take(h.arg)?;
                }
                MAJOR_TEXT => {
                    let s = self.take(h.arg)?;
                    if core::str::from_utf8(s).is_err() {
                        return Err(RelayError::NotWellFormed("text string is not UTF-8"));
                    }
                }
                MAJOR_ARRAY | MAJOR_MAP => {
                    let per = if h.major == MAJOR_MAP { 2 } else { 1 };
                    // Each item takes at least one byte: a count above what remains is truncated.
                    let items = h.arg.checked_mul(per).ok_or(RelayError::Truncated)?;
                    if items > self.remaining() as u64 {
                        return Err(RelayError::Truncated);
                    }
                    pending = pending.checked_add(items).ok_or(RelayError::Truncated)?;
                }
                MAJOR_TAG => pending += 1,
                // Unsigned/negative integers, simple values and floats: the head is the item.
                _ => {}
            }
        }
        Ok(())
    }

    /// An unsigned integer (major type 0).
    pub(crate) fn uint(&mut self, what: &'static str) -> Result<u64, RelayError> {
        let h = self.head()?;
        if h.major != MAJOR_UINT {
            return Err(RelayError::InvalidEntry(what));
        }
        Ok(h.arg)
    }
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// Length of the preferred-serialization head for argument `arg`.
pub(crate) const fn head_len(arg: u64) -> usize {
    if arg < 24 {
        1
    } else if arg <= 0xff {
        2
    } else if arg <= 0xffff {
        3
    } else if arg <= 0xffff_ffff {
        5
    } else {
        9
    }
}

/// Append a preferred-serialization head.
pub(crate) fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let mt = major << 5;
    if arg < 24 {
        out.push(mt | arg as u8);
    } else if arg <= 0xff {
        out.push(mt | 24);
        out.push(arg as u8);
    } else if arg <= 0xffff {
        out.push(mt | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= 0xffff_ffff {
        out.push(mt | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(mt | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

/// Append a byte string.
pub(crate) fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_head(out, MAJOR_BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

/// Encoded length of a byte string of `len` bytes.
pub(crate) const fn bytes_len(len: usize) -> usize {
    head_len(len as u64) + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_shortest() {
        for (arg, hex) in [
            (0u64, "00"),
            (23, "17"),
            (24, "1818"),
            (255, "18ff"),
            (256, "190100"),
            (65535, "19ffff"),
            (65536, "1a00010000"),
            (u64::from(u32::MAX), "1affffffff"),
            (u64::from(u32::MAX) + 1, "1b0000000100000000"),
        ] {
            let mut out = Vec::new();
            write_head(&mut out, MAJOR_UINT, arg);
            assert_eq!(hex_str(&out), hex, "arg {arg}");
            assert_eq!(out.len(), head_len(arg));
            let mut r = Reader::new(&out);
            assert_eq!(r.uint("x").unwrap(), arg);
            assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn skipper_rejects_indefinite_and_reserved() {
        for (bytes, err) in [
            (&[0x5f, 0x41, 0x00, 0xff][..], RelayError::IndefiniteLength),
            (&[0x9f, 0xff][..], RelayError::IndefiniteLength),
            (&[0xbf, 0xff][..], RelayError::IndefiniteLength),
            (&[0x7f, 0xff][..], RelayError::IndefiniteLength),
            (&[0xff][..], RelayError::NotWellFormed("")),
            (&[0x1c][..], RelayError::NotWellFormed("")),
            (&[0xf8, 0x10][..], RelayError::NotWellFormed("")),
            (&[0x62, 0xff, 0xfe][..], RelayError::NotWellFormed("")),
            (&[0x9a, 0xff, 0xff, 0xff, 0xff][..], RelayError::Truncated),
            (
                &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
                RelayError::Truncated,
            ),
        ] {
            let got = Reader::new(bytes).skip_item().unwrap_err();
            assert_eq!(
                core::mem::discriminant(&got),
                core::mem::discriminant(&err),
                "{bytes:02x?}: {got:?}"
            );
        }
    }

    #[test]
    fn skipper_accepts_nested_and_deep() {
        // [1, {2: h'', "a": [true, null, 1.5]}, 6(-1)]
        let item = [
            0x83, 0x01, 0xa2, 0x02, 0x40, 0x61, 0x61, 0x83, 0xf5, 0xf6, 0xf9, 0x3e, 0x00, 0xc6,
            0x20,
        ];
        let mut r = Reader::new(&item);
        r.skip_item().unwrap();
        assert_eq!(r.remaining(), 0);
        // 50,000 nested arrays do not recurse.
        let mut deep = vec![0x81; 50_000];
        deep.push(0x00);
        let mut r = Reader::new(&deep);
        r.skip_item().unwrap();
        assert_eq!(r.remaining(), 0);
    }

    fn hex_str(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
