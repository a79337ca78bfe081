//! CoAP (RFC 7252) message codec and sans-IO reliability layer, plus No-Response (RFC 7967).
//!
//! What this crate does:
//! - [`msg`]: parse and encode CoAP-over-UDP messages (RFC 7252 §3), option helpers.
//! - [`no_response`]: the No-Response option (RFC 7967).
//! - [`block`]: Block1/Block2 option values (RFC 7959 §2.2).
//! - [`reliability`]: retransmission of Confirmable messages and duplicate detection
//!   (RFC 7252 §4), driven by an injected clock and injected randomness.
//!
//! What it does not do: sockets, timers, the OS clock or RNG, resource dispatch, DTLS,
//! OSCORE (see `capillary-oscore`), CoAP over TCP/WebSockets.
//!
//! Requirements deliberately not implemented here (left to the endpoint/driver):
//! - type/code rules are not enforced by [`msg::Message::parse`]; call
//!   [`msg::Message::type_code_valid`] (RFC 7252 §4.2–§4.3);
//! - no congestion control beyond NSTART ([`reliability::Outbox::can_send`]); PROBING_RATE
//!   and DEFAULT_LEISURE are carried in [`reliability::TransmissionParams`] but not enforced;
//! - one [`reliability::Outbox`] tracks one peer's Message-ID space; keep one per peer;
//! - extended token lengths (RFC 8974) are rejected as reserved TKL values;
//! - no percent-encoding/URI parsing: [`msg::Message::set_uri_path`] splits on `/` only.
#![forbid(unsafe_code)]

pub mod block;
mod error;
pub mod msg;
pub mod no_response;
pub mod reliability;

pub use error::CoapError;
pub use msg::{CoapOption, Code, Message, MessageType};
