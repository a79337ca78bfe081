//! The Capillary MTC gateway, sans-IO (quinn-proto style: `handle_*` in, `poll_*` out,
//! time passed in as `now`, randomness from a seed).
//!
//! What it does (docs/PROTOCOL.md):
//! - authenticates **itself** with the network: CoAP-EAP (RFC 9820) as an EAP peer carrying
//!   EAP-AKA' (RFC 9048) with its own USIM, then protects every gateway-link message with
//!   the OSCORE context derived from its MSK (§3); re-authenticates before the session
//!   lifetime ends, keeping the old context until the new one has verified a message (§3.3);
//! - relays device datagrams **transparently**: each becomes a `kind 0` entry of a batch,
//!   byte for byte, and device-bound `kind 0` entries go out byte for byte (§4);
//! - batches device→network entries into OSCORE-protected CON `POST /r` (§4.1): a batch
//!   closes after a quiet gap of the window (default 20 ms), when full, or 500 ms after its
//!   first entry; a wave too large for one datagram goes as several batches released
//!   together (up to NSTART = 4 outstanding), so an attach storm costs the same number of
//!   round trips for any number of devices; retransmitted per RFC 7252 §4.2; answers
//!   network-initiated `POST /r` with 2.04 carrying the entries that are due, answering
//!   retransmissions from a cache;
//! - reports per-device outcomes (`kind 1`), releases refused devices after a grace period,
//!   sends `gone` (`kind 2`) for idle devices, enforces device and per-device limits;
//! - on link loss (no answer after all retransmissions) reports [`GatewayEvent::LinkLost`]
//!   and re-authenticates with exponential back-off.
//!
//! What it does not do: sockets, clocks, terminating device CoAP (no Message-ID rewriting,
//! no retransmission on behalf of the network), PROTOCOL.md §5 local identity (`kind 3`:
//! TODO, [`GatewayConfig::local_identity`] must be `false`).
//!
//! R3 (the gateway holds no device key) by construction: device traffic is handled in the
//! private `relay` module, which names no key type; only the private `auth` module (the
//! gateway's OWN authentication) touches key types. `tests/r3_no_device_keys.rs` checks the
//! source text.
#![forbid(unsafe_code)]

mod auth;
mod config;
mod gateway;
mod local;
mod relay;
mod types;

pub use capillary_relay::BatcherConfig;
pub use config::{
    GatewayConfig, GatewayError, GatewayOptions, DEFAULT_NETWORK_NAME, DEFAULT_REALM,
};
pub use gateway::Gateway;
pub use types::{AuthFailure, GatewayEvent, GatewayStats, Transmit};
