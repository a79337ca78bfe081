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
//! - answers a device's CoAP-EAP trigger **locally** (§5, [`GatewayOptions::local_identity`]):
//!   the first request (EAP-Request/Identity with the network's cipher suites and RID-C,
//!   learnt from its own CoAP-EAP run), retransmitted with RFC 7252 timers; the device's
//!   answer and that request go up as one `kind 3` entry; no secret is involved;
//! - sends batches that need no answer (the devices' key confirmations after EAP-Success)
//!   **one-way**: a NON `POST /r` with No-Response, not a round trip (§4.1,
//!   [`GatewayOptions::confirm_one_way`]);
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
//! What it does not do: sockets, clocks, terminating device CoAP beyond the first exchange
//! (no Message-ID rewriting, no retransmission on behalf of the network).
//!
//! R3 (the gateway holds no device key) by construction: device traffic is handled in the
//! private `relay` and `local` modules, which name no key type; only the private `auth` module (the
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
