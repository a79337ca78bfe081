//! The batch layer of Capillary's gateway link (`docs/PROTOCOL.md` §4), sans-IO.
//!
//! What this crate does:
//! - [`batch`]: encode and decode the batch payload of `POST /r`
//!   (`batch = [version: 1, entries: [* entry]]`, `entry = [handle, kind, body]`), enforcing
//!   the §4 limits (1,024 entries, 64 KiB, CoAP body 1,152 bytes), isolating malformed entries
//!   ([`batch::DecodedBatch`]) and preserving entries of unknown kinds.
//! - [`batcher`]: collect entries for one direction of the link and cut them into batches when
//!   the window (default 20 ms, §1) expires or a limit would be reached. Time comes in as `now`.
//! - [`handles`]: the gateway's table from capillary-link addresses to batch handles, with
//!   idle expiry and a capacity limit.
//! - [`RelayError`]: the one error type, with [`RelayError::to_coap_code`] as the single
//!   mapping from an error to the CoAP response code on the wire.
//!
//! What it does not do: sockets, clocks, OSCORE protection of the link (§3, see
//! `capillary-oscore`), the CoAP request/response around a batch, or interpreting the CoAP
//! messages it carries beyond checking that they parse (RFC 7252 §3).
//!
//! CBOR (RFC 8949) is handled by a small strict reader/writer in this crate rather than by
//! `ciborium`; see the private `cbor` module for why. `ciborium` is used in the tests as an
//! independent cross-check of the encoding.
#![forbid(unsafe_code)]

pub mod batch;
pub mod batcher;
mod cbor;
mod error;
pub mod handles;

pub use batch::{Batch, DecodedBatch, Entry, EntryKind, OutcomeResult};
pub use batcher::{Batcher, BatcherConfig};
pub use error::RelayError;
pub use handles::HandleTable;
