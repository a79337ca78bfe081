//! The one error type of the device.

use capillary_coap::Code;
use capillary_coap_eap::keys::KeyError;
use capillary_oscore::OscoreError;

/// Everything that can go wrong on the device.
///
/// API misuse (`NotAuthenticated`, `PayloadTooLarge`, `QueueFull`), bad configuration
/// (`InvalidConfig`), an authentication that did not succeed (`CoapEap`, `EapAka`, `Keys`),
/// and uplink outcomes (`Oscore`, `Timeout`, `Reset`, `Rejected`, `SessionEnded`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// No authenticated session yet (or it expired): authenticate first.
    #[error("the device has no authenticated session")]
    NotAuthenticated,
    /// The uplink payload is longer than [`crate::MAX_UPLINK_PAYLOAD`].
    #[error("uplink payload of {len} bytes exceeds {max}")]
    PayloadTooLarge {
        /// Bytes given.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// More than [`crate::MAX_QUEUED_UPLINKS`] uplinks wait to be sent.
    #[error("too many uplinks waiting")]
    QueueFull,
    /// The configuration cannot work (the text says what to fix).
    #[error("invalid device configuration: {0}")]
    InvalidConfig(&'static str),
    /// CoAP-EAP ended without success (RFC 9820 §3).
    #[error("CoAP-EAP: {0}")]
    CoapEap(capillary_coap_eap::PeerFailure),
    /// The EAP-AKA' peer gave up (e.g. AUTN did not verify: wrong K, or a foreign network).
    #[error("EAP-AKA': {0:?}")]
    EapAka(capillary_eap::peer::PeerFailure),
    /// The OSCORE input could not be derived from the MSK (RFC 9820 §6.2).
    #[error("OSCORE key derivation: {0}")]
    Keys(KeyError),
    /// OSCORE refused to build a context or to protect a message (RFC 8613).
    #[error("OSCORE: {0}")]
    Oscore(OscoreError),
    /// No acknowledgement after all retransmissions (RFC 7252 §4.2).
    #[error("no answer after the retransmissions")]
    Timeout,
    /// The network reset the exchange (RFC 7252 §4.2).
    #[error("the network reset the exchange")]
    Reset,
    /// The network answered with an error code (RFC 8613 §8.2 errors come unprotected).
    #[error("the network answered {0}")]
    Rejected(Code),
    /// The session (and its OSCORE context) ended before the uplink was acknowledged.
    #[error("the session ended before the uplink was acknowledged")]
    SessionEnded,
}
