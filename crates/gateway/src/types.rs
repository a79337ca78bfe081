//! Outputs of the gateway: datagrams, events, counters. No key types live here.

use capillary_coap_eap::PeerFailure;
use capillary_oscore::OscoreError;

/// One UDP payload to send (the driver owns the sockets).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Transmit<A> {
    /// To the network, on the gateway link (PROTOCOL.md §3).
    ToNetwork(Vec<u8>),
    /// To a device at this capillary-link address (byte for byte what the network sent for
    /// it, PROTOCOL.md §4 `kind 0`).
    ToDevice(A, Vec<u8>),
}

/// What happened, for the driver (logs, metrics, supervision).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GatewayEvent<A> {
    /// The gateway's own CoAP-EAP authentication (or re-authentication) succeeded; the
    /// gateway link is protected with the new OSCORE context (PROTOCOL.md §3).
    Authenticated,
    /// The gateway's own authentication failed; a new attempt is scheduled with back-off.
    AuthFailed(AuthFailure),
    /// The session lifetime ended before a re-authentication succeeded; the OSCORE
    /// context is gone and a new authentication is scheduled.
    SessionExpired,
    /// The network did not answer a `POST /r` (all retransmissions used, RFC 7252 §4.2) or
    /// reset it, or no longer knows the gateway's OSCORE context: the link context is
    /// dropped and the gateway re-authenticates with back-off.
    LinkLost,
    /// The network's verdict on a device (`kind 1`, PROTOCOL.md §4). No keys.
    DeviceOutcome {
        /// The device.
        addr: A,
        /// `result 0`.
        authenticated: bool,
    },
    /// A device was idle past the limit: its handle was released and `kind 2` (gone) sent.
    DeviceGone {
        /// The device.
        addr: A,
    },
}

/// Why the gateway's own authentication failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// The CoAP-EAP peer failed (RFC 9820; EAP-Failure, timeout, unresponsive network, ...).
    #[error("CoAP-EAP: {0}")]
    CoapEap(PeerFailure),
    /// The OSCORE context could not be built from the CoAP-EAP material (RFC 8613 §3.2).
    #[error("OSCORE context: {0}")]
    Oscore(OscoreError),
    /// The configuration is invalid; the gateway does nothing (see [`crate::GatewayError`]).
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
}

/// Counters, cumulative since [`crate::Gateway::new`]. "capillary" is the device side,
/// "link" the gateway link to the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Datagrams received from devices.
    pub capillary_msgs_in: u64,
    /// Datagrams sent to devices.
    pub capillary_msgs_out: u64,
    /// Bytes received from devices.
    pub capillary_bytes_in: u64,
    /// Bytes sent to devices.
    pub capillary_bytes_out: u64,
    /// Datagrams received from the network.
    pub link_msgs_in: u64,
    /// Datagrams sent to the network (retransmissions included).
    pub link_msgs_out: u64,
    /// Bytes received from the network.
    pub link_bytes_in: u64,
    /// Bytes sent to the network.
    pub link_bytes_out: u64,
    /// Gateway-link round trips: completed `POST /r` exchanges (request and its response),
    /// whichever side started it, where exchanges that overlap in time count once (a
    /// `POST /r` outstanding together with another one, or a network `POST /r` answered
    /// while one of ours is outstanding, adds no waiting). See also `link_exchanges`.
    /// One-way batches (`link_one_way`, `link_one_way_in`, PROTOCOL.md §4.1) are not round
    /// trips: nothing waits for them.
    pub link_round_trips: u64,
    /// Completed `POST /r` exchanges, each one counted.
    pub link_exchanges: u64,
    /// `POST /r` sent by the gateway (first transmissions), one-way ones included.
    pub batches_sent: u64,
    /// Retransmissions of the gateway's `POST /r` (RFC 7252 §4.2).
    pub link_retransmissions: u64,
    /// Network requests answered from the duplicate cache (RFC 7252 §4.5), not re-processed.
    pub link_duplicates: u64,
    /// Network datagrams dropped: not CoAP, not verifiable, unexpected.
    pub link_dropped: u64,
    /// `POST /r` of the gateway answered with an error code (the batch is lost).
    pub batches_refused: u64,
    /// Unprotected error responses to the gateway's protected `POST /r` that did not end
    /// the exchange: they are unauthenticated (RFC 8613 §8.2), so the request is kept and
    /// retransmitted (PROTOCOL.md §4 "Errors").
    pub link_unprotected_errors: u64,
    /// Device→network entries lost because the link was lost while they were in flight.
    pub entries_lost: u64,
    /// Device datagrams dropped because they are not a CoAP message of at most 1,152 bytes.
    pub device_dropped_malformed: u64,
    /// Datagrams of new devices dropped because `max_devices` devices are held.
    pub device_dropped_max_devices: u64,
    /// Device datagrams dropped because the device already has the maximum of entries
    /// waiting for the link.
    pub device_dropped_pending_limit: u64,
    /// Device datagrams dropped because the batcher is full (back-pressure).
    pub device_dropped_backpressure: u64,
    /// Device-bound entries for handles the gateway does not hold (answered with `gone`).
    pub unknown_handle_entries: u64,
    /// Devices released after being idle past the limit.
    pub devices_gone: u64,
    /// One-way batches sent (NON `POST /r` with No-Response, PROTOCOL.md §4.1): counted
    /// in `batches_sent`, never in `link_round_trips` or `link_exchanges`.
    pub link_one_way: u64,
    /// One-way batches received from the network (not round trips either).
    pub link_one_way_in: u64,
    /// Local EAP-Request/Identity sent to devices (PROTOCOL.md §5), first transmissions.
    pub local_identity_requests: u64,
    /// Retransmissions of local EAP-Request/Identity (RFC 7252 §4.2).
    pub local_identity_retransmissions: u64,
    /// `kind 3` entries queued (device answers to a local EAP-Request/Identity).
    pub local_identity_forwarded: u64,
    /// Device datagrams of a local identity step absorbed without relaying: repeated
    /// triggers, repeated answers, Empty ACKs.
    pub local_identity_duplicates: u64,
}
