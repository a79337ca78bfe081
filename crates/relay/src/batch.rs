//! The batch payload of the gateway link (PROTOCOL.md §4).
//!
//! ```text
//! batch   = [ version: 1, entries: [* entry] ]
//! entry   = [ handle: uint, kind: uint, body: bstr / map ]
//! ```
//!
//! Wire choices this module pins down where §4 leaves room (all marked "decision" below):
//! - `kind 2` (gone) is encoded with an empty byte string as body; on input any `bstr` or `map`
//!   body is accepted and ignored.
//! - `kind 1` `result`: `0` authenticated, any other value `1..=255` is a refusal and is kept as
//!   [`OutcomeResult::Refused`]`(code)`; `1` is the refusal §4 defines (fail closed: a value
//!   this code does not know never reads as "authenticated"). Values above 255 are invalid.
//! - In the `kind 1` and `kind 3` maps, keys must be unsigned integers and must not repeat;
//!   unknown keys are skipped (forward compatibility, like unknown kinds).
//! - An entry must be an array of exactly 3 items.
//! - A `kind 0` body over 1,152 bytes refuses the whole batch with 4.13 ("a batch over a limit
//!   is refused whole"), while a `kind 0` body that is not a CoAP message (RFC 7252 §3) is a
//!   per-entry error.
//! - Unknown kinds must carry a `bstr` or `map` body; it is kept byte for byte in
//!   [`EntryKind::Unknown`] so the entry can be forwarded or re-encoded unchanged.

use std::collections::BTreeSet;

use capillary_coap::Message;

use crate::cbor::{
    bytes_len, head_len, write_bytes, write_head, Reader, MAJOR_ARRAY, MAJOR_BYTES, MAJOR_MAP,
    MAJOR_UINT,
};
use crate::RelayError;

/// The only batch version (§4).
pub const VERSION: u8 = 1;
/// At most this many entries per batch (§1, §4).
pub const MAX_ENTRIES: usize = 1024;
/// At most this many bytes per encoded batch, 64 KiB (§1, §4).
pub const MAX_BATCH_BYTES: usize = 64 * 1024;
/// At most this many bytes in a `kind 0` body (§4).
pub const MAX_COAP_BODY: usize = 1152;

/// `kind 0`: one CoAP message of the capillary link.
pub const KIND_COAP: u64 = 0;
/// `kind 1`: authentication outcome, network → gateway.
pub const KIND_OUTCOME: u64 = 1;
/// `kind 2`: device gone, gateway → network.
pub const KIND_GONE: u64 = 2;
/// `kind 3`: the identity step answered locally (§5): `{1: request, 2: response}`, gateway → network.
pub const KIND_IDENTITY: u64 = 3;

/// Encoded size of the smallest possible entry, `[0, 2, h'']`.
pub(crate) const MIN_ENTRY_LEN: usize = 4;

/// Encoded size of a batch with `n` entries, not counting the entries themselves:
/// array(2) head, version, entries array head.
pub(crate) const fn overhead(n: usize) -> usize {
    1 + 1 + head_len(n as u64)
}

/// One batch: the payload of `POST /r` and of its `2.04` answer (§4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Always [`VERSION`] (1); [`Batch::encode`] refuses anything else.
    pub version: u8,
    /// Entries in order.
    pub entries: Vec<Entry>,
}

/// One entry: `[handle, kind, body]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The gateway's number for a device's capillary-link address (§4, [`crate::HandleTable`]).
    pub handle: u32,
    /// Kind and body.
    pub kind: EntryKind,
}

/// `kind` and `body` of an entry (§4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// `0`: one CoAP message exactly as sent by or to the device (the UDP payload), at most
    /// [`MAX_COAP_BODY`] bytes.
    Coap(Vec<u8>),
    /// `1` (network → gateway): `{1: result, 2: ?session_lifetime}`; no keys.
    Outcome {
        /// `result`.
        result: OutcomeResult,
        /// `session_lifetime` in seconds, if given.
        session_lifetime: Option<u32>,
    },
    /// `2` (gateway → network): the device left or stopped answering.
    Gone,
    /// `3` (gateway → network): `{1: request, 2: response}` (§4, §5): the gateway answered
    /// the device's CoAP-EAP trigger itself. `request` is the exact CoAP message the gateway
    /// sent the device (`POST` carrying EAP-Request/Identity and the CoAP-EAP information),
    /// `response` the exact CoAP message the device answered it with (2.01 carrying
    /// EAP-Response/Identity, its CoAP-EAP information and the Location-Path). Each is at
    /// most [`MAX_COAP_BODY`] bytes and must parse as a CoAP message.
    Identity {
        /// The CoAP request the gateway sent the device (UDP payload, byte for byte).
        request: Vec<u8>,
        /// The CoAP response the device answered (UDP payload, byte for byte).
        response: Vec<u8>,
    },
    /// A kind this version does not know (> 3): receivers skip it (§4). `body` is the exact
    /// CBOR encoding of the body item (a `bstr` or `map`).
    Unknown {
        /// The kind number.
        kind: u64,
        /// The encoded body item, byte for byte.
        body: Vec<u8>,
    },
}

/// `result` of a `kind 1` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutcomeResult {
    /// `0`.
    Authenticated,
    /// A non-zero result; §4 defines `1` ([`OutcomeResult::REFUSED`]). `Refused(0)` cannot be
    /// encoded.
    Refused(u8),
}

impl OutcomeResult {
    /// The refusal defined by §4 (`result 1`), also the answer to a malformed entry.
    pub const REFUSED: OutcomeResult = OutcomeResult::Refused(1);

    /// The wire value of `result`.
    pub fn code(self) -> u8 {
        match self {
            OutcomeResult::Authenticated => 0,
            OutcomeResult::Refused(c) => c,
        }
    }

    /// From the wire value: `0` authenticated, anything else refused (fail closed).
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => OutcomeResult::Authenticated,
            c => OutcomeResult::Refused(c),
        }
    }
}

impl Entry {
    /// A `kind 0` entry.
    pub fn coap(handle: u32, message: Vec<u8>) -> Self {
        Entry {
            handle,
            kind: EntryKind::Coap(message),
        }
    }

    /// A `kind 2` entry.
    pub fn gone(handle: u32) -> Self {
        Entry {
            handle,
            kind: EntryKind::Gone,
        }
    }

    /// `kind 1, result 1` for `handle`: the answer to an entry that failed to parse (§4).
    pub fn refusal(handle: u32) -> Self {
        Entry {
            handle,
            kind: EntryKind::Outcome {
                result: OutcomeResult::REFUSED,
                session_lifetime: None,
            },
        }
    }

    /// The wire `kind` number.
    pub fn kind_number(&self) -> u64 {
        match &self.kind {
            EntryKind::Coap(_) => KIND_COAP,
            EntryKind::Outcome { .. } => KIND_OUTCOME,
            EntryKind::Gone => KIND_GONE,
            EntryKind::Identity { .. } => KIND_IDENTITY,
            EntryKind::Unknown { kind, .. } => *kind,
        }
    }

    /// Check everything [`Batch::encode`] checks for one entry: a `kind 0` body of at most
    /// [`MAX_COAP_BODY`] bytes that parses as a CoAP message, no `Refused(0)`, and for
    /// [`EntryKind::Unknown`] a kind above 3 with exactly one well-formed `bstr`/`map` body.
    pub fn validate(&self) -> Result<(), RelayError> {
        match &self.kind {
            EntryKind::Coap(m) => check_coap(m),
            EntryKind::Outcome { result, .. } => {
                if result.code() == 0 && *result != OutcomeResult::Authenticated {
                    return Err(RelayError::InvalidEntry(
                        "Refused(0) would read as authenticated",
                    ));
                }
                Ok(())
            }
            EntryKind::Identity { request, response } => {
                check_coap(request)?;
                check_coap(response)
            }
            EntryKind::Gone => Ok(()),
            EntryKind::Unknown { kind, body } => {
                if *kind <= KIND_IDENTITY {
                    return Err(RelayError::InvalidEntry(
                        "Unknown entry uses a kind number this version defines",
                    ));
                }
                let mut r = Reader::new(body);
                let major = body.first().map(|b| b >> 5);
                r.skip_item()?;
                if r.remaining() != 0 {
                    return Err(RelayError::InvalidEntry(
                        "Unknown body is more than one CBOR item",
                    ));
                }
                if major != Some(MAJOR_BYTES) && major != Some(MAJOR_MAP) {
                    return Err(RelayError::InvalidEntry("body is neither bstr nor map"));
                }
                Ok(())
            }
        }
    }

    /// Exact length of this entry's encoding (valid entries only).
    pub fn encoded_len(&self) -> usize {
        let body = match &self.kind {
            EntryKind::Coap(m) => bytes_len(m.len()),
            EntryKind::Outcome {
                result,
                session_lifetime,
            } => {
                1 + 1
                    + head_len(u64::from(result.code()))
                    + session_lifetime.map_or(0, |l| 1 + head_len(u64::from(l)))
            }
            EntryKind::Gone => 1,
            EntryKind::Identity { request, response } => {
                1 + 1 + bytes_len(request.len()) + 1 + bytes_len(response.len())
            }
            EntryKind::Unknown { body, .. } => body.len(),
        };
        1 + head_len(u64::from(self.handle)) + head_len(self.kind_number()) + body
    }

    fn write(&self, out: &mut Vec<u8>) {
        write_head(out, MAJOR_ARRAY, 3);
        write_head(out, MAJOR_UINT, u64::from(self.handle));
        write_head(out, MAJOR_UINT, self.kind_number());
        match &self.kind {
            EntryKind::Coap(m) => write_bytes(out, m),
            EntryKind::Outcome {
                result,
                session_lifetime,
            } => {
                write_head(out, MAJOR_MAP, 1 + u64::from(session_lifetime.is_some()));
                write_head(out, MAJOR_UINT, 1);
                write_head(out, MAJOR_UINT, u64::from(result.code()));
                if let Some(l) = session_lifetime {
                    write_head(out, MAJOR_UINT, 2);
                    write_head(out, MAJOR_UINT, u64::from(*l));
                }
            }
            // Decision: the body of `gone` is an empty byte string.
            EntryKind::Gone => write_bytes(out, &[]),
            EntryKind::Identity { request, response } => {
                write_head(out, MAJOR_MAP, 2);
                write_head(out, MAJOR_UINT, 1);
                write_bytes(out, request);
                write_head(out, MAJOR_UINT, 2);
                write_bytes(out, response);
            }
            EntryKind::Unknown { body, .. } => out.extend_from_slice(body),
        }
    }

    /// Parse one entry from `raw`, which holds exactly one well-formed item.
    fn parse(raw: &[u8]) -> Result<Entry, RelayError> {
        let mut r = Reader::new(raw);
        let h = r.head()?;
        if h.major != MAJOR_ARRAY || h.arg != 3 {
            return Err(RelayError::InvalidEntry("entry is not an array of 3 items"));
        }
        let handle = read_handle(&mut r)?;
        let kind = r.uint("kind is not an unsigned integer")?;
        let body_start = r.pos();
        let kind = match kind {
            KIND_COAP => {
                let m = read_bstr(&mut r, "coap body is not a byte string")?;
                check_coap(m)?;
                EntryKind::Coap(m.to_vec())
            }
            KIND_OUTCOME => {
                let mut result = None;
                let mut session_lifetime = None;
                read_map(&mut r, "outcome body is not a map", |r, key| {
                    match key {
                        1 => {
                            let v = r.uint("result is not an unsigned integer")?;
                            let c = u8::try_from(v)
                                .map_err(|_| RelayError::InvalidEntry("result above 255"))?;
                            result = Some(OutcomeResult::from_code(c));
                        }
                        2 => {
                            let v = r.uint("session lifetime is not an unsigned integer")?;
                            session_lifetime = Some(u32::try_from(v).map_err(|_| {
                                RelayError::InvalidEntry("session lifetime above u32::MAX")
                            })?);
                        }
                        _ => r.skip_item()?,
                    }
                    Ok(())
                })?;
                EntryKind::Outcome {
                    result: result.ok_or(RelayError::InvalidEntry("outcome without result"))?,
                    session_lifetime,
                }
            }
            KIND_GONE => {
                skip_bstr_or_map(&mut r)?;
                EntryKind::Gone
            }
            KIND_IDENTITY => {
                let mut request = None;
                let mut response = None;
                read_map(&mut r, "identity body is not a map", |r, key| {
                    match key {
                        1 => request = Some(read_bstr(r, "identity request is not a bstr")?),
                        2 => response = Some(read_bstr(r, "identity response is not a bstr")?),
                        _ => r.skip_item()?,
                    }
                    Ok(())
                })?;
                let request = request.ok_or(RelayError::InvalidEntry("identity without key 1"))?;
                let response =
                    response.ok_or(RelayError::InvalidEntry("identity without key 2"))?;
                check_coap(request)?;
                check_coap(response)?;
                EntryKind::Identity {
                    request: request.to_vec(),
                    response: response.to_vec(),
                }
            }
            kind => {
                skip_bstr_or_map(&mut r)?;
                EntryKind::Unknown {
                    kind,
                    body: r.since(body_start).to_vec(),
                }
            }
        };
        Ok(Entry { handle, kind })
    }
}

fn check_coap(m: &[u8]) -> Result<(), RelayError> {
    if m.len() > MAX_COAP_BODY {
        return Err(RelayError::CoapBodyTooLarge {
            len: m.len(),
            max: MAX_COAP_BODY,
        });
    }
    Message::parse(m).map_err(RelayError::MalformedCoap)?;
    Ok(())
}

fn read_handle(r: &mut Reader<'_>) -> Result<u32, RelayError> {
    let h = r.head().map_err(|_| RelayError::InvalidHandle)?;
    if h.major != MAJOR_UINT {
        return Err(RelayError::InvalidHandle);
    }
    u32::try_from(h.arg).map_err(|_| RelayError::InvalidHandle)
}

/// The handle of a (possibly malformed, but well-formed CBOR) entry, if it has one.
fn peek_handle(raw: &[u8]) -> Option<u32> {
    let mut r = Reader::new(raw);
    let h = r.head().ok()?;
    if h.major != MAJOR_ARRAY || h.arg == 0 {
        return None;
    }
    read_handle(&mut r).ok()
}

fn read_bstr<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<&'a [u8], RelayError> {
    let h = r.head()?;
    if h.major != MAJOR_BYTES {
        return Err(RelayError::InvalidEntry(what));
    }
    r.take(h.arg)
}

fn skip_bstr_or_map(r: &mut Reader<'_>) -> Result<(), RelayError> {
    let start = r.pos();
    r.skip_item()?;
    match r.since(start).first().map(|b| b >> 5) {
        Some(MAJOR_BYTES) | Some(MAJOR_MAP) => Ok(()),
        _ => Err(RelayError::InvalidEntry("body is neither bstr nor map")),
    }
}

/// Read a map with unsigned-integer keys, no key twice; `value` reads (or skips) the value.
fn read_map<'a>(
    r: &mut Reader<'a>,
    what: &'static str,
    mut value: impl FnMut(&mut Reader<'a>, u64) -> Result<(), RelayError>,
) -> Result<(), RelayError> {
    let h = r.head()?;
    if h.major != MAJOR_MAP {
        return Err(RelayError::InvalidEntry(what));
    }
    let mut seen = BTreeSet::new();
    for _ in 0..h.arg {
        let key = r.uint("map key is not an unsigned integer")?;
        if !seen.insert(key) {
            return Err(RelayError::InvalidEntry("duplicate map key"));
        }
        value(r, key)?;
    }
    Ok(())
}

impl Batch {
    /// A version-1 batch.
    pub fn new(entries: Vec<Entry>) -> Self {
        Batch {
            version: VERSION,
            entries,
        }
    }

    /// Exact length of the encoding (valid batches only).
    pub fn encoded_len(&self) -> usize {
        overhead(self.entries.len()) + self.entries.iter().map(Entry::encoded_len).sum::<usize>()
    }

    /// Encode with preferred serialization (RFC 8949 §4.2.1). Fails for a version other than
    /// 1, more than [`MAX_ENTRIES`] entries, more than [`MAX_BATCH_BYTES`] bytes, or an entry
    /// that fails [`Entry::validate`].
    pub fn encode(&self) -> Result<Vec<u8>, RelayError> {
        if self.version != VERSION {
            return Err(RelayError::UnsupportedVersion(u64::from(self.version)));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(RelayError::TooManyEntries {
                count: self.entries.len() as u64,
                max: MAX_ENTRIES,
            });
        }
        for e in &self.entries {
            e.validate()?;
        }
        let len = self.encoded_len();
        if len > MAX_BATCH_BYTES {
            return Err(RelayError::BatchTooLarge {
                len,
                max: MAX_BATCH_BYTES,
            });
        }
        let mut out = Vec::with_capacity(len);
        write_head(&mut out, MAJOR_ARRAY, 2);
        write_head(&mut out, MAJOR_UINT, u64::from(VERSION));
        write_head(&mut out, MAJOR_ARRAY, self.entries.len() as u64);
        for e in &self.entries {
            e.write(&mut out);
        }
        debug_assert_eq!(out.len(), len);
        Ok(out)
    }

    /// Strict decode: like [`DecodedBatch::decode`], but any malformed entry fails the whole
    /// batch with that entry's error. Receivers on the link use [`DecodedBatch::decode`].
    pub fn decode(bytes: &[u8]) -> Result<Batch, RelayError> {
        let d = DecodedBatch::decode(bytes)?;
        if let Some((_, e)) = d.bad_entries.into_iter().next() {
            return Err(e);
        }
        Ok(Batch::new(d.entries))
    }
}

/// A received batch as §4 processes it: the good entries, and the malformed ones that were
/// skipped, each with its handle (if one could be read) and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedBatch {
    /// Entries that parsed, in order, including [`EntryKind::Unknown`] ones (to be skipped by
    /// the application).
    pub entries: Vec<Entry>,
    /// Entries that failed to parse: `(handle, error)`; the error is always per-entry
    /// ([`RelayError::is_per_entry`]).
    pub bad_entries: Vec<(Option<u32>, RelayError)>,
}

impl DecodedBatch {
    /// Decode a received batch (§4).
    ///
    /// Whole-batch errors (the batch is refused with [`RelayError::to_coap_code`]): more than
    /// [`MAX_BATCH_BYTES`] bytes, more than [`MAX_ENTRIES`] entries, a `kind 0` body over
    /// [`MAX_COAP_BODY`] (4.13); version other than 1 (4.00, checked right after the version
    /// is read so a future layout is not misread); CBOR that is not well-formed, uses
    /// indefinite lengths, is not `[version, [* entry]]`, or has trailing bytes (4.00).
    ///
    /// Per-entry errors (entry is well-formed CBOR but not a valid entry) land in
    /// [`DecodedBatch::bad_entries`].
    pub fn decode(bytes: &[u8]) -> Result<DecodedBatch, RelayError> {
        if bytes.len() > MAX_BATCH_BYTES {
            return Err(RelayError::BatchTooLarge {
                len: bytes.len(),
                max: MAX_BATCH_BYTES,
            });
        }
        let mut r = Reader::new(bytes);
        let outer = r.head()?;
        if outer.major != MAJOR_ARRAY || outer.arg == 0 {
            return Err(RelayError::Malformed(
                "batch is not an array [version, entries]",
            ));
        }
        let v = r.head()?;
        if v.major != MAJOR_UINT {
            return Err(RelayError::Malformed("version is not an unsigned integer"));
        }
        if v.arg != u64::from(VERSION) {
            return Err(RelayError::UnsupportedVersion(v.arg));
        }
        if outer.arg != 2 {
            return Err(RelayError::Malformed("batch array does not have 2 items"));
        }
        let eh = r.head()?;
        if eh.major != MAJOR_ARRAY {
            return Err(RelayError::Malformed("entries is not an array"));
        }
        if eh.arg > MAX_ENTRIES as u64 {
            return Err(RelayError::TooManyEntries {
                count: eh.arg,
                max: MAX_ENTRIES,
            });
        }
        let mut entries = Vec::new();
        let mut bad_entries = Vec::new();
        for _ in 0..eh.arg {
            let start = r.pos();
            r.skip_item()?;
            let raw = r.since(start);
            match Entry::parse(raw) {
                Ok(e) => entries.push(e),
                Err(e) if e.is_per_entry() => bad_entries.push((peek_handle(raw), e)),
                Err(e) => return Err(e),
            }
        }
        if r.remaining() != 0 {
            return Err(RelayError::TrailingBytes(r.remaining()));
        }
        Ok(DecodedBatch {
            entries,
            bad_entries,
        })
    }

    /// `kind 1, result 1` for each skipped entry whose handle is known (§4).
    pub fn refusals(&self) -> impl Iterator<Item = Entry> + '_ {
        self.bad_entries
            .iter()
            .filter_map(|(h, _)| h.map(Entry::refusal))
    }
}
