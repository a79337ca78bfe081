//! The network end of the gateway link (docs/PROTOCOL.md), sans-IO.
//!
//! [`LinkEndpoint`] is `capillary core`'s side of the protocol between gateways and the
//! network: no socket, no clock (every call takes `now`), no OS RNG (a `u64` seed), no store.
//! Datagrams go in through [`LinkEndpoint::handle_datagram`] and out through
//! [`LinkEndpoint::poll_transmit`]; the subscriber store is asked through [`LinkEvent`]s and
//! answered with [`LinkEndpoint::provide_vectors`] / [`LinkEndpoint::provide_authorization`].
//!
//! What it does:
//! - **Gateways** authenticate directly with CoAP-EAP (RFC 9820) carrying EAP-AKA'
//!   (RFC 9048), unprotected until the OSCORE context of the link exists (PROTOCOL.md §3);
//!   their vectors are asked for with [`capillary_store::SubscriberKind::Gateway`].
//! - **Batches** (§4): OSCORE-protected (RFC 8613) `POST /r` from an authenticated gateway.
//!   Every `kind 0` entry goes to the device session of `(gateway, handle)`: one
//!   [`capillary_coap_eap::CoapEapAuthenticator`] and one [`capillary_eap::EapAkaServer`] per
//!   device. The store needs of one batch — and of every batch received before the driver
//!   next polls [`LinkEndpoint::poll_event`] — become ONE [`LinkEvent::NeedVectors`] (kind
//!   `Device`) and ONE [`LinkEvent::Authorize`] (all `(device, gateway)` pairs, §6); the
//!   sessions continue only once the driver answered, and the request is then answered with
//!   ONE `2.04` carrying a batch of the device-bound entries (plus `kind 1` outcomes, no keys).
//! - **`kind 3` entries** (PROTOCOL.md §5): the gateway answered a device's CoAP-EAP trigger
//!   with EAP-Request/Identity itself and forwards `{1: request, 2: response}`. When
//!   [`LinkConfig::accept_local_identity`] is on and the request offers exactly
//!   [`LinkConfig::cipher_suites`] and [`LinkConfig::rid_c`], the device session starts as if
//!   its authenticator had sent that request
//!   ([`capillary_coap_eap::CoapEapAuthenticator::handle_local_identity`]) and the EAP-AKA'
//!   server starts from the device's EAP-Response/Identity, its own Identifiers following
//!   the request's; otherwise the entry is refused with `kind 1, result 1`. The vector
//!   request and the attach check of the identity join the batch's store requests.
//! - **One-way batches** (§4.1): a NON `POST /r` with No-Response is processed like any
//!   batch but never answered ([`LinkStats::one_way_in`]); to a gateway that sends them, a
//!   batch made only of "authenticated" outcomes goes one-way too
//!   ([`LinkStats::one_way_out`]).
//! - Device-bound messages produced later (the per-device authenticators' retransmissions,
//!   downlink, answers that arrive after the response, entries a full response could not
//!   carry) wait [`LinkConfig::batch_window`] for a response to ride on, then leave in one
//!   network-initiated OSCORE-protected CON `POST /r`, retransmitted with
//!   [`capillary_coap::reliability::Outbox`];
//!   incoming requests are deduplicated with [`capillary_coap::reliability::Dedup`] and
//!   duplicates get the cached response, never a second processing.
//! - **Devices** after authentication: an OSCORE context from their MSK (RFC 9820 §6.2);
//!   protected `POST u` uplinks become [`LinkEvent::Uplink`] and get a protected `2.04`;
//!   [`LinkEndpoint::queue_downlink`] sends a protected CON `POST d` through the gateway.
//! - **Authorization** (PROTOCOL.md §6) takes effect at the next message: every batch is
//!   checked with ONE [`LinkEvent::Authorize`] covering all its `(device, gateway)` pairs
//!   before the entries of a device with a known identity are acted on (a run's identity
//!   from its EAP-Response/Identity on, or the confirmed context's for protected
//!   messages); a run before its identity is checked with its vector request, in the same
//!   event. A refused device gets EAP-Failure (run in progress) or 4.03 and loses its
//!   context (authenticated), plus an audit record and a `kind 1` refusal. A gateway found
//!   barred or unknown is forgotten: its devices end that way, the batch's `2.04` carrying
//!   their refusals is the last message under its link context, later requests get an
//!   unprotected 4.01 and it relays nothing until it authenticates again.
//! - **Store-side optimisations** (PROTOCOL.md §6.1, §6.2): devices' fast
//!   re-authentication with the contexts in memory ([`LinkConfig::fast_reauth`]: no vector,
//!   no SQN, no store write), and one vector per bound device fetched when a gateway
//!   authenticates ([`LinkEvent::PrefetchVectors`], [`LinkEndpoint::provide_prefetch`]), so
//!   the identity step of an attach needs no store round trip. Either way the batch that
//!   carries the device's answer is authorized from the store before EAP-Success (§6).
//! - **Gateway restart** (PROTOCOL.md §4): a gateway that authenticates from scratch (no
//!   message of it verified under its old link context during the run) numbers its devices
//!   afresh, so its old handles are void: device sessions holding an OSCORE context are
//!   kept aside ([`LinkStats::handles_voided`]) and re-bound to the handle on which a
//!   protected request verifies under them, found by its OSCORE `kid`
//!   ([`LinkStats::rebound`]); a protected request whose `kid` matches no context behind
//!   the gateway gets an unprotected 4.01 (RFC 8613 §8.2), so the device re-authenticates
//!   at once.
//! - Timers: device-session deadlines are indexed (no walk over every session per
//!   [`LinkEndpoint::poll_timeout`]); [`LinkEndpoint::handle_timeout`] runs the due ones in
//!   deadline order, so same-seed runs are identical.
//! - Replayed or tampered messages on either OSCORE layer are dropped and counted
//!   ([`LinkStats::dropped`]); no input bytes can make it panic.
//!
//! Deliberately not done in this version (see the contract's "Scope"):
//! - Pseudonyms: [`LinkEndpoint::new`] turns them off in the EAP server configuration,
//!   because the endpoint has no event to persist the identities they hand out (an identity
//!   must be durable before the message that carries it leaves). Fast re-authentication
//!   ([`LinkConfig::fast_reauth`]) keeps its contexts in memory only (PROTOCOL.md §6.1).
//! - The Sender Sequence Numbers of the contexts are volatile (RFC 8613 Appendix B.2: every
//!   context is derived afresh from a new MSK).

mod endpoint;
mod session;
mod timers;

use std::collections::BTreeMap;
use std::time::Duration;

use capillary_coap::reliability::TransmissionParams;
use capillary_coap_eap::CipherSuite;
use capillary_eap::server::ServerConfig;
use capillary_secrets::{Auts, Imsi, Rand};
use capillary_store::{AuditEvent, SubscriberKind};

pub use endpoint::LinkEndpoint;

/// Configuration of the [`LinkEndpoint`].
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// EAP-AKA' server settings (network name, result indication, `max_reauth`,
    /// `reauth_lifetime_secs`: how long a fast re-authentication context is kept).
    /// `pseudonyms` is forced off and `fast_reauth` follows [`Self::fast_reauth`] (see the
    /// module docs).
    pub eap: ServerConfig,
    /// Session-Lifetime sent with EAP-Success to devices and gateways (RFC 9820 §5.1), also
    /// reported in `kind 1` outcome entries.
    pub session_lifetime_secs: u32,
    /// Most entries the network puts in one batch it sends (capped at 1,024, §4).
    pub max_batch_entries: usize,
    /// RID-C: the network's OSCORE Recipient ID offered to every peer (RFC 9820 §5.1); a
    /// peer choosing the same RID-I fails with an ID collision.
    pub rid_c: Vec<u8>,
    /// Cipher suites offered (RFC 9820 §6.1). Only suite 0 (AES-CCM-16-64-128, SHA-256) has
    /// an OSCORE implementation here.
    pub cipher_suites: Vec<CipherSuite>,
    /// Timers of the network-initiated `POST /r` (RFC 7252 §4.8) and of downlink requests.
    pub transmission: TransmissionParams,
    /// How long device-bound output waits for a network-initiated `POST /r` (PROTOCOL.md
    /// §4): output produced in one burst travels together, and entries a response could
    /// not carry (64 KiB) wait for the response to the gateway's next batch, which is
    /// usually already on its way. Default 20 ms, like the gateway's window.
    pub batch_window: Duration,
    /// Initial retransmission timeout (RFC 7252 §4.8 ACK_TIMEOUT) of the CoAP-EAP requests
    /// sent to relayed devices. Their path includes the gateway's batching (up to its
    /// longest batch delay) and, in an attach storm, the other devices' processing, so the
    /// RFC's 2 s would retransmit requests that are not lost but still on their way (each
    /// retransmission is one more entry, and possibly one more round trip, on the gateway
    /// link). The gateway link itself is reliable; these timers only cover the capillary
    /// hop. Default 3 s (RFC 7252 §4.8 lets an application environment choose it).
    pub relayed_ack_timeout: Duration,
    /// Longest time a `POST /r` waits for the driver's answers before its `2.04` is sent
    /// with what is ready (the rest follows in a network-initiated batch). Keep it below the
    /// gateway's ACK_TIMEOUT.
    pub response_hold: Duration,
    /// Most gateways tracked at once (new triggers beyond are ignored).
    pub max_gateways: usize,
    /// Most device sessions tracked at once (new triggers beyond are refused).
    pub max_devices: usize,
    /// PROTOCOL.md §5: accept `kind 3` entries (the gateway answered the device's CoAP-EAP
    /// trigger with EAP-Request/Identity itself). Each is checked to offer exactly
    /// [`Self::cipher_suites`] and [`Self::rid_c`]; a device session then starts from the
    /// device's EAP-Response/Identity. When `false`, `kind 3` entries are refused with
    /// `kind 1, result 1`. Default `true`.
    pub accept_local_identity: bool,
    /// PROTOCOL.md §6.1: EAP-AKA' fast re-authentication (RFC 9048 §3.4, RFC 4187 §5) with
    /// the re-authentication contexts kept in this endpoint's memory only (at most
    /// [`Self::max_reauth_contexts`], each for `eap.reauth_lifetime_secs`, each usable once:
    /// the next one is handed out with AT_NEXT_REAUTH_ID). A device that runs CoAP-EAP again
    /// while its context is held needs no vector, no SQN and no store write. A lost context
    /// only makes the device run a full authentication. Default `true`.
    pub fast_reauth: bool,
    /// Most fast re-authentication contexts kept (beyond it, expired ones are dropped, then
    /// the oldest).
    pub max_reauth_contexts: usize,
    /// PROTOCOL.md §6.2: when a gateway authenticates, ask the store once
    /// ([`LinkEvent::PrefetchVectors`]) for one fresh vector per device bound to it, kept in
    /// memory for [`Self::prefetch_lifetime`] and dropped with the gateway's link context;
    /// each is handed out at most once, to a run of that device through that gateway, which
    /// then needs no store round trip for its identity. Default `true`.
    pub prefetch_vectors: bool,
    /// How long a prefetched vector is used. Default 10 min.
    pub prefetch_lifetime: Duration,
    /// Most devices one prefetch asks for. Default 10,000.
    pub prefetch_max_devices: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            eap: ServerConfig {
                pseudonyms: false,
                fast_reauth: true,
                // Bytes on the gateway link and the capillary radio (PROTOCOL.md §6.1):
                // 64-bit re-authentication identities without a realm (nothing routes them).
                issued_id_bytes: 8,
                reauth_id_realm: false,
                ..ServerConfig::default()
            },
            session_lifetime_secs: 24 * 3600,
            max_batch_entries: capillary_relay::batch::MAX_ENTRIES,
            rid_c: Vec::new(),
            cipher_suites: vec![CipherSuite::DEFAULT],
            transmission: TransmissionParams::default(),
            batch_window: Duration::from_millis(20),
            relayed_ack_timeout: Duration::from_secs(3),
            response_hold: Duration::from_secs(1),
            max_gateways: 1024,
            max_devices: 100_000,
            accept_local_identity: true,
            fast_reauth: true,
            max_reauth_contexts: 100_000,
            prefetch_vectors: true,
            prefetch_lifetime: Duration::from_secs(600),
            prefetch_max_devices: 10_000,
        }
    }
}

/// An audit record for the driver to store (docs/PROTOCOL.md §6); the driver adds the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAudit {
    /// What happened.
    pub event: AuditEvent,
    /// The subscriber concerned (the device).
    pub subject: Imsi,
    /// The gateway involved.
    pub gateway: Option<Imsi>,
    /// Free text without secrets.
    pub detail: String,
}

/// Output of the [`LinkEndpoint`]; handle in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum LinkEvent {
    /// Fetch one vector per request (in order), then call
    /// [`LinkEndpoint::provide_vectors`] with `ticket`. Refuse (`Err(RejectReason::Unknown)`)
    /// a subscriber whose kind differs from the one asked for.
    NeedVectors {
        /// Answer with this.
        ticket: u64,
        /// Subscriber and the kind it must have.
        requests: Vec<(Imsi, SubscriberKind)>,
    },
    /// Re-synchronise SQN with AUTS (TS 33.102 §6.3.5), then answer `ticket` with one fresh
    /// vector.
    NeedResync {
        /// Answer with this.
        ticket: u64,
        /// Subscriber.
        imsi: Imsi,
        /// RAND of the rejected challenge.
        rand: Rand,
        /// AUTS from the peer.
        auts: Auts,
    },
    /// PROTOCOL.md §6.2: a gateway authenticated. Fetch, in one store round trip, one fresh
    /// vector (kind `Device`) for each device bound to `gateway` (at most `limit`, skipping
    /// `skip`: devices that hold a fast re-authentication context here), leaving out
    /// devices that are barred or unknown, then call [`LinkEndpoint::provide_prefetch`]
    /// with `ticket` (an empty answer is fine). Nothing waits for it.
    PrefetchVectors {
        /// Answer with this.
        ticket: u64,
        /// The gateway that authenticated.
        gateway: Imsi,
        /// Devices not to fetch a vector for.
        skip: Vec<Imsi>,
        /// Most devices to fetch for.
        limit: usize,
    },
    /// Check each `(device, gateway)` pair (§6), then call
    /// [`LinkEndpoint::provide_authorization`] with one answer per pair, in order.
    Authorize {
        /// Answer with this.
        ticket: u64,
        /// `(device IMSI, gateway IMSI)`.
        pairs: Vec<(Imsi, Imsi)>,
    },
    /// A device or gateway confirmed its new OSCORE context (RFC 9820 §3.3).
    Authenticated {
        /// Who.
        imsi: Imsi,
        /// Device (relayed) or gateway (direct).
        kind: SubscriberKind,
        /// The gateway a device came through.
        via: Option<Imsi>,
    },
    /// An authentication ended without success.
    Failed {
        /// Who, if the identity was known by then.
        imsi: Option<Imsi>,
        /// Device (relayed) or gateway (direct).
        kind: SubscriberKind,
        /// Why.
        reason: FailureCause,
    },
    /// An OSCORE-verified, authorized uplink (`POST u`) from a device.
    Uplink {
        /// The device.
        device: Imsi,
        /// The payload, opaque.
        payload: Vec<u8>,
    },
    /// The device acknowledged (OSCORE-verified) a downlink.
    DownlinkDelivered {
        /// The device.
        device: Imsi,
    },
    /// A downlink was not acknowledged after all retransmissions.
    DownlinkFailed {
        /// The device.
        device: Imsi,
    },
    /// Store this audit record (§6).
    Audit(LinkAudit),
}

/// Why an authentication failed (also the key of [`LinkStats::failures`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FailureCause {
    /// The pair was refused by the authorization check (§6); the audit event says why.
    Refused(AuditEventKey),
    /// The driver could not supply a vector (unknown subscriber, wrong kind, barred).
    NoVector,
    /// EAP-AKA' failed (wrong RES or MAC, client error, synchronisation failure, ...).
    Eap,
    /// The peer stopped answering.
    Unresponsive,
    /// Another CoAP-EAP failure (bad payload, cipher suite, RID collision, peer error code).
    CoapEap,
    /// The OSCORE context could not be built (unsupported cipher suite).
    Oscore,
}

/// A copyable, ordered stand-in for [`AuditEvent`] in [`FailureCause::Refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum AuditEventKey {
    /// [`AuditEvent::NotBoundToGateway`].
    NotBound,
    /// [`AuditEvent::DeviceBarred`].
    DeviceBarred,
    /// [`AuditEvent::UnknownDevice`].
    UnknownDevice,
    /// [`AuditEvent::UnknownGateway`].
    UnknownGateway,
    /// [`AuditEvent::GatewayRevoked`].
    GatewayRevoked,
    /// Any other denial.
    Other,
}

impl From<AuditEvent> for AuditEventKey {
    fn from(e: AuditEvent) -> Self {
        match e {
            AuditEvent::NotBoundToGateway => Self::NotBound,
            AuditEvent::DeviceBarred => Self::DeviceBarred,
            AuditEvent::UnknownDevice => Self::UnknownDevice,
            AuditEvent::UnknownGateway => Self::UnknownGateway,
            AuditEvent::GatewayRevoked => Self::GatewayRevoked,
            _ => Self::Other,
        }
    }
}

/// Why an input was dropped (the key of [`LinkStats::dropped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropCause {
    /// Not a CoAP message (RFC 7252 §3) or an invalid type/code combination.
    Malformed,
    /// OSCORE replay (RFC 8613 §7.4) outside the deduplication lifetime.
    Replay,
    /// OSCORE verification failed (tampered, wrong key, bad option).
    OscoreInvalid,
    /// A protected message with no context to verify it.
    NoContext,
    /// A message no exchange or session expects.
    Unexpected,
    /// A batch that could not be decoded (answered with 4.00 / 4.13).
    BadBatch,
    /// A malformed batch entry (answered with `kind 1, result 1`).
    BadEntry,
    /// A limit (gateways, devices, entry size) was reached.
    Limit,
}

/// Counters of the [`LinkEndpoint`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Batches received (requests and responses).
    pub batches_in: u64,
    /// Batches sent (requests and responses).
    pub batches_out: u64,
    /// Entries received.
    pub entries_in: u64,
    /// Entries sent.
    pub entries_out: u64,
    /// Completed `POST /r` round trips (answered gateway requests plus answered
    /// network-initiated requests).
    pub round_trips: u64,
    /// Store round trips asked for: number of NeedVectors, NeedResync, Authorize and
    /// PrefetchVectors events.
    pub store_round_trips: u64,
    /// Device runs that used a prefetched vector (no store round trip for the identity).
    pub prefetch_hits: u64,
    /// Prefetched vectors received.
    pub prefetched: u64,
    /// Authentications (devices and gateways) that were fast re-authentications.
    pub fast_reauths: u64,
    /// Authentications that succeeded (devices and gateways).
    pub authenticated: u64,
    /// Duplicate requests answered from the cache (or ignored while being processed), and
    /// duplicate `kind 3` entries.
    pub duplicates: u64,
    /// One-way batches (NON `POST /r` with No-Response, RFC 7967; PROTOCOL.md §4.1)
    /// received from gateways: not round trips.
    pub one_way_in: u64,
    /// One-way batches sent to gateways (only `kind 1` "authenticated" outcomes, to a
    /// gateway that sends one-way batches itself).
    pub one_way_out: u64,
    /// `kind 3` entries that started a device run (PROTOCOL.md §5).
    pub local_identities: u64,
    /// Device sessions whose handle was voided because their gateway authenticated from
    /// scratch (PROTOCOL.md §4 "Gateway restart").
    pub handles_voided: u64,
    /// Orphaned device contexts bound to a new handle by the kid of a request that
    /// verified under them (PROTOCOL.md §4 "Gateway restart").
    pub rebound: u64,
    /// Failed authentications by cause.
    pub failures: BTreeMap<FailureCause, u64>,
    /// Dropped inputs by cause.
    pub dropped: BTreeMap<DropCause, u64>,
}

/// API misuse reported by [`LinkEndpoint`] methods.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// No authenticated device with this IMSI.
    #[error("device is not authenticated")]
    NotAuthenticated,
    /// The payload does not fit one relayed CoAP message (§4: 1,152 bytes).
    #[error("downlink payload too large")]
    TooLarge,
    /// The ticket is unknown or already answered.
    #[error("unknown ticket")]
    UnknownTicket,
    /// The answer does not have one item per request.
    #[error("expected {expected} answers, got {got}")]
    WrongAnswerCount {
        /// Requests in the event.
        expected: usize,
        /// Answers given.
        got: usize,
    },
    /// OSCORE protection failed (e.g. sequence numbers exhausted).
    #[error("OSCORE: {0}")]
    Oscore(#[from] capillary_oscore::OscoreError),
}
