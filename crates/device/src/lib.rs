//! The device stack of Capillary, sans-IO: CoAP-EAP (RFC 9820) carrying EAP-AKA'
//! (RFC 9048) with a software USIM (TS 33.102), then OSCORE (RFC 8613) end to end with the
//! network, as one state machine, [`Device`].
//!
//! Drive it like quinn-proto: no sockets, no clock (every call takes `now`), no OS RNG (a
//! `u64` seed feeds a [`rand::rngs::StdRng`]); inputs through [`Device::start`],
//! [`Device::handle_datagram`], [`Device::handle_timeout`], [`Device::send_uplink`]; outputs
//! through [`Device::poll_transmit`] (UDP payloads, all to the gateway address),
//! [`Device::poll_timeout`] and [`Device::poll_event`]. Same seed and same inputs give the
//! same bytes out.
//!
//! # What happens on the wire
//!
//! 1. [`Device::start`]: the CoAP-EAP trigger `POST /.well-known/coap-eap` (RFC 9820 §3.2).
//! 2. EAP-Request/Identity, AKA'-Challenge (or fast Re-authentication, RFC 9048 §3.4) are
//!    answered through the EAP-AKA' peer and the USIM; right after answering the challenge
//!    the MSK (`EapAkaPeer::keys_in_progress`) gives the OSCORE context (RFC 9820 §6.2).
//! 3. The OSCORE-protected EAP-Success is verified with that context and answered with a
//!    protected 2.04 (key confirmation, RFC 9820 §3.3): [`DeviceEvent::Authenticated`].
//! 4. Uplink ([`Device::send_uplink`]): an OSCORE-protected CON `POST` with inner Uri-Path
//!    `u` and the opaque payload; the network answers 2.04 (piggybacked, protected):
//!    [`DeviceEvent::UplinkAcked`]. Retransmission per RFC 7252 §4.2 with
//!    [`capillary_coap::reliability::Outbox`], always the same protected bytes.
//! 5. Downlink: the network sends an OSCORE-protected CON `POST` with inner Uri-Path `d`;
//!    the device answers a protected 2.04 and reports [`DeviceEvent::Downlink`] once;
//!    retransmissions (OSCORE replays of an already verified request) get the cached
//!    response ([`capillary_coap::reliability::Dedup`]) and are never delivered twice.
//! 6. Before the Session-Lifetime ends the CoAP-EAP peer re-authenticates (RFC 9820 §3.4),
//!    with EAP-AKA' fast re-authentication when the network offered it; the old context
//!    serves uplinks until the new one is confirmed, then is dropped (re-keying). If the
//!    lifetime ends first: [`DeviceEvent::SessionExpired`].
//!
//! # Decisions (and what is not done)
//!
//! - **Volatile OSCORE contexts.** Every authentication derives a fresh Master Secret and
//!   Salt from a fresh MSK, so the Sender Sequence Number starts at 0 in a new context and is
//!   never persisted (RFC 8613 Appendix B.2 situation; `SsnPersistence::Volatile`). A reboot
//!   therefore requires a new authentication. The USIM SEQ array is not persisted here either
//!   (a driver can read it later if needed); after a reboot the network resynchronises.
//! - **Messages that do not verify are dropped silently** (no unprotected 4.xx as
//!   RFC 8613 §8.2 suggests): answering would only let an on-path forger stop the network's
//!   retransmissions of the genuine message. The same holds for a protected request that
//!   is an OSCORE replay without a cached response.
//! - An unprotected error response (4.xx/5.xx) to an uplink ends it with
//!   [`DeviceError::Rejected`], as the OSCORE error responses of RFC 8613 §8.2 are
//!   unprotected; an unprotected success response is ignored (it cannot be authentic).
//! - Only cipher suite 0 (AES-CCM-16-64-128, SHA-256) is offered: the OSCORE crate
//!   implements only that one.
//! - A failed authentication is not retried automatically: the driver calls
//!   [`Device::start`] again (back-off is the driver's policy). A failed
//!   re-authentication leaves the old session usable, and the device retries every
//!   [`REAUTH_RETRY_INTERVAL`] until it succeeds or the session expires.
//! - An uplink still unanswered when a re-keying completes keeps its protected bytes (RFC
//!   7252 retransmission); if the network no longer verifies the old context it ends with
//!   [`DeviceEvent::UplinkFailed`] and the application decides whether to send it again
//!   (no silent re-protection under the new keys, which could deliver it twice).
//! - An unprotected 4.01 to an uplink sent under the current context ("Security context
//!   not found", RFC 8613 §8.2: e.g. the network lost the context, or no longer knows the
//!   device after its gateway restarted, docs/PROTOCOL.md §4) is reported as
//!   [`DeviceError::Rejected`] and, unless a run is already in progress, starts a new
//!   authentication at once (as [`Device::start`]), instead of after the CoAP give-up.
//!   Since the 4.01 is unauthenticated the current context is kept until the new one is
//!   confirmed: a forged 4.01 costs one authentication, nothing more.
//! - Uplinks: NSTART = 1 (RFC 7252 §4.7); further uplinks wait in a queue of at most
//!   [`MAX_QUEUED_UPLINKS`], payloads at most [`MAX_UPLINK_PAYLOAD`] bytes (so the protected
//!   message stays under the 1,152-byte relay limit, PROTOCOL.md §4).
//! - [`Device::dangerous_export_secrets`] exists only for the key-isolation test (R3).
#![forbid(unsafe_code)]

pub mod config;
mod device;
pub mod error;

pub use config::{rid_i_from_imsi, DeviceConfig, DEFAULT_NETWORK_NAME, DEFAULT_REALM};
pub use device::{
    Device, DeviceEvent, DOWNLINK_PATH, MAX_QUEUED_UPLINKS, MAX_UPLINK_PAYLOAD,
    REAUTH_RETRY_INTERVAL, UPLINK_PATH,
};
pub use error::DeviceError;
