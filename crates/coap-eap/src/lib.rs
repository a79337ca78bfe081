//! CoAP-EAP (RFC 9820): EAP carried over CoAP, as two sans-IO state machines.
//!
//! - [`peer::CoapEapPeer`]: the EAP peer, i.e. the IoT device (CoAP server after the trigger).
//! - [`authenticator::CoapEapAuthenticator`]: the EAP authenticator, one per device; in
//!   Capillary it runs on the network side and reaches devices through the MTC gateway acting
//!   as a CoAP proxy (RFC 9820 §3.6), which forwards and never terminates EAP.
//! - [`info`]: the CoAP-EAP CBOR information object and the `EAP ‖ CBOR` payload split.
//! - [`keys`]: OSCORE Master Secret / Master Salt from the MSK and OSCORE IDs from RID-C/RID-I.
//! - [`trigger`]: the `POST /.well-known/coap-eap` trigger and resource paths.
//!
//! Both state machines are EAP-method agnostic: EAP packets go in and out as bytes, and the
//! caller hands over the MSK when its EAP method (EAP-AKA' in Capillary) exports it. No
//! sockets, no clock (every call takes `now`), no RNG (Message IDs, tokens and resource names
//! start from injected seeds), no OSCORE: messages that must be protected come out as
//! `TransmitProtected`, and messages the driver verified go in through `handle_oscore_message`.
//!
//! # The flow (RFC 9820 §3.2, Figure 3)
//!
//! ```text
//!  device (EAP peer, CoAP server)                 authenticator (CoAP client)
//!  0) NON POST /.well-known/coap-eap, No-Response 26, payload "/a/1"  ──▶
//!  1)  ◀── POST /a/1  EAP-Req/Identity ‖ {1: [suites], 2: RID-C}
//!  2)  2.01 Created, Location-Path /a/2, EAP-Resp/Identity ‖ {1: [suite], 3: RID-I} ──▶
//!  3)  ◀── POST /a/2  EAP method message          (repeated as the method needs)
//!  4)  2.01 Created, Location-Path /a/3, EAP method message ──▶
//!  5)  ◀── POST /a/3  EAP-Success ‖ {4: Session-Lifetime}   [OSCORE]
//!  6)  2.04 Changed                                          [OSCORE] ──▶
//! ```
//!
//! A full authentication therefore costs `1 + 2·(EAP round trips) + 2` CoAP messages
//! (ACKs piggybacked).
//!
//! # RFC 9820 requirements implemented
//!
//! - Trigger to `/.well-known/coap-eap`, NON, with No-Response (value 26, all classes
//!   suppressed), payload = first resource path; resent every `trigger_interval` until the
//!   first request arrives (§3.2 step 0).
//! - Resource chain: every EAP answer is a 2.01 (Created) carrying the Location-Path of the next
//!   resource; the device accepts a new request only on the announced resource and answers
//!   retransmissions of the previous request from a cache, never running EAP twice (§3.2).
//! - CON or NON requests; retransmission by the authenticator (RFC 7252 §4.2 timers), duplicate
//!   detection on both sides (Message ID + token, and same-resource re-sends).
//! - Content-Format 269 (`application/coap-eap`) on every message with a payload; the device
//!   answers 4.15 to another Content-Format and also accepts none (older implementations).
//! - CBOR information object with labels 1 (cipher suites), 2 (RID-C), 3 (RID-I),
//!   4 (Session-Lifetime), unknown labels ignored (§5.1).
//! - Cipher suite negotiation: the authenticator offers a preference list, the device picks the
//!   first one it supports; absence means the default suite 0 (§6.1). No common suite → the
//!   device answers 4.00 and fails, the authenticator fails on the 4.00.
//! - OSCORE derivation from the MSK (§6.2) per `tests/data/coap-eap-oscore.toml`; Sender ID of
//!   the device = RID-C, of the authenticator = RID-I.
//! - EAP-Success only accepted OSCORE-protected, and the final 2.04 only accepted
//!   OSCORE-verified: the last exchange is the key confirmation (§3.3).
//! - EAP-Failure path (unprotected), failure events on both sides.
//! - Session-Lifetime: the device re-authenticates `reauth_margin` before it ends by sending a
//!   new trigger; old keys stay until the new ones are confirmed (§3.4); expiry is reported.
//! - Operation through a forwarding proxy (§3.6) needs nothing here: the SMs only produce
//!   end-to-end requests and responses; the driver adds proxy options.
//!
//! # Deliberately not implemented
//!
//! - OSCORE itself (lives in `capillary-oscore`; the driver protects/verifies).
//! - Resource discovery through `/.well-known/core` or a resource directory (§3.1): the
//!   well-known URI is always used.
//! - Separate responses from the device: the device always piggybacks; if its EAP method is
//!   slow, the authenticator's retransmissions are ignored until the answer is ready (the
//!   authenticator does accept Empty ACK + separate response from other devices).
//! - Cipher suite 4 (SHAKE256) and unregistered suites for the key derivation (no SHAKE
//!   implementation in the workspace); suite 2 uses HKDF-SHA-384.
//! - ACK_RANDOM_FACTOR jitter on retransmission timers (no RNG inside; configure
//!   `ack_timeout` per device if synchronisation matters).
//! - Authenticator-initiated re-authentication and CoAP-EAP session deletion messages.
//! - Block-wise transfer (RFC 7959) of large EAP packets: EAP-AKA' messages fit one datagram.
//! - EAP Identifier sequencing and EAP-level duplicate detection: that is the EAP layer's job
//!   (RFC 3748 §4.1); this crate deduplicates at the CoAP-EAP level so the EAP method never
//!   sees a retransmission.
//!
//! # Driver contract for OSCORE
//!
//! `TransmitProtected(m)`: protect `m` (RFC 8613 §8.1 / §8.3) with the context built from the
//! latest `KeysReady`, keeping `m`'s type, Message ID and token on the outer message. A second
//! `TransmitProtected` with the same Message ID is a retransmission. `handle_oscore_message(m)`:
//! `m` is the decrypted inner message with the outer type, Message ID and token. A message that
//! does not verify is dropped by the driver and never reaches the state machines.
#![forbid(unsafe_code)]

pub mod authenticator;
pub mod info;
pub mod keys;
pub mod peer;
pub mod trigger;

pub use authenticator::{
    identity_request, AuthError, AuthEvent, AuthFailure, AuthenticatorConfig, CoapEapAuthenticator,
};
pub use info::{CipherSuite, CoapEapInfo, InfoError};
pub use keys::{MasterSalt, MasterSecret, OscoreMaterial};
pub use peer::{CoapEapPeer, PeerConfig, PeerError, PeerEvent, PeerFailure};

/// EAP Code Request (RFC 3748 §4).
pub(crate) const EAP_REQUEST: u8 = 1;
/// EAP Code Response (RFC 3748 §4).
pub(crate) const EAP_RESPONSE: u8 = 2;
/// EAP Code Success (RFC 3748 §4.2).
pub(crate) const EAP_SUCCESS: u8 = 3;
/// EAP Code Failure (RFC 3748 §4.2).
pub(crate) const EAP_FAILURE: u8 = 4;

/// Is `eap` exactly one EAP packet (RFC 3748 §4: Length covers the whole packet)?
pub(crate) fn check_eap_packet(eap: &[u8]) -> bool {
    eap.len() >= 4 && usize::from(u16::from_be_bytes([eap[2], eap[3]])) == eap.len()
}
