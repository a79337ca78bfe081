//! The gateway state machine: own authentication, the OSCORE-protected gateway link
//! (PROTOCOL.md §3, §4) and the device relay, all sans-IO.
//!
//! Key handling is confined to [`crate::auth`]: this module only ever holds the gateway
//! link's [`SecurityContext`] objects and never names an EAP or AKA key type.

use std::collections::VecDeque;
use std::fmt;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use capillary_coap::msg::option_number;
use capillary_coap::no_response;
use capillary_coap::reliability::{
    Dedup, DedupResult, MessageIdAllocator, Outbox, Retransmission, TokenAllocator,
};
use capillary_coap::{Code, Message, MessageType};
use capillary_oscore::{OscoreError, RequestBinding, SecurityContext};
use capillary_relay::{Batch, Batcher, BatcherConfig, DecodedBatch, EntryKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::auth::{AuthOutput, OwnAuth};
use crate::config::{GatewayConfig, GatewayError, GatewayOptions};
use crate::local::{LocalIdentity, Outcome};
use crate::relay::{DeviceRelay, RelayLimits, Sink};
use crate::types::{AuthFailure, GatewayEvent, GatewayStats, Transmit};

/// Dedup key of separate responses (context generations count up from 0).
const SEPARATE: u64 = u64::MAX;

/// Largest batch payload the gateway sends: 64 KiB (PROTOCOL.md §4) less room for the CoAP
/// header, token, options and OSCORE tag, so that the protected `POST /r` fits one UDP
/// datagram (65,507 bytes over IPv4).
const MAX_BATCH_PAYLOAD: usize = 60 * 1024;

/// Token length of the gateway's `POST /r` (RFC 7252 §5.3.1).
const TOKEN_LEN: usize = 8;

/// Unprotected 4.01 responses for this many different `POST /r` exchanges (sent under the
/// current context, within MAX_TRANSMIT_SPAN of each other, with no authenticated message
/// in between) make the link count as lost (PROTOCOL.md §4 "Errors"). One unprotected
/// 4.01 is not enough: anyone who sees the Message ID and token can forge it (RFC 8613
/// §8.2 error responses are not protected).
const UNAUTHORIZED_QUORUM: usize = 3;

/// One gateway-link OSCORE context and its generation number.
struct LinkContext {
    epoch: u64,
    sc: SecurityContext,
}

/// One of the gateway's outstanding `POST /r` (at most `GatewayOptions::link.nstart`,
/// RFC 7252 §4.7).
struct InFlight {
    mid: u16,
    token: Vec<u8>,
    epoch: u64,
    binding: RequestBinding,
    entries: u64,
    /// The round trip this exchange belongs to (see `own_exchange_done`).
    round: u64,
    /// Set once an Empty ACK arrived: wait for the separate response until then.
    separate_deadline: Option<Instant>,
}

/// A protected request handed to the own authentication, to protect its answer.
struct Serving {
    epoch: u64,
    binding: RequestBinding,
    mid: u16,
}

/// The MTC gateway (see the crate documentation).
pub struct Gateway<A> {
    invalid: Option<&'static str>,
    opts: GatewayOptions,
    rng: StdRng,
    auth: OwnAuth,
    relay: DeviceRelay<A>,
    /// PROTOCOL.md §5: the gateway's own EAP-Request/Identity runs with devices.
    local: LocalIdentity<A>,
    /// Context of the authentication in progress (RFC 9820 §6.2), before EAP-Success.
    pending_ctx: Option<LinkContext>,
    /// The link context.
    current: Option<LinkContext>,
    /// The context before the last re-authentication, kept until the new one verified a
    /// link message (PROTOCOL.md §3.3).
    previous: Option<LinkContext>,
    drop_previous: bool,
    next_epoch: u64,
    authenticated: bool,
    /// PROTOCOL.md §4.1 (`first_batch_with_auth`): device triggers that arrived while the
    /// gateway's own run had not yet shown the network's offer, answered locally once it
    /// does (at most one per device, at most `max_devices`).
    early_triggers: Vec<(A, Vec<u8>)>,
    session_lifetime: Option<Duration>,
    outbox: Outbox,
    /// Duplicate detection (RFC 7252 §4.5) per OSCORE context generation: a new session's
    /// requests may reuse Message IDs of the previous one ([`SEPARATE`] for separate
    /// responses).
    dedup: Dedup<u64>,
    mids: MessageIdAllocator,
    tokens: TokenAllocator,
    inflight: Vec<InFlight>,
    /// The outstanding `POST /r` exchanges already count as one round trip.
    /// Round-trip accounting (`GatewayStats::link_round_trips`): the newest round, whether
    /// it still takes new exchanges (none of it completed yet), the newest round counted.
    round: u64,
    round_open: bool,
    round_counted: u64,
    /// Message IDs of our `POST /r` (current context) answered with an unprotected 4.01,
    /// and when, since the last authenticated message: evidence that the network forgot
    /// the gateway, acted on at [`UNAUTHORIZED_QUORUM`] different exchanges.
    unauthorized: Vec<(u16, Instant)>,
    serving: Option<Serving>,
    retry_at: Option<Instant>,
    backoff: Duration,
    transmits: VecDeque<Transmit<A>>,
    events: VecDeque<GatewayEvent<A>>,
    stats: GatewayStats,
}

impl<A> fmt::Debug for Gateway<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("authenticated", &self.authenticated)
            .field("invalid", &self.invalid)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

macro_rules! sink {
    ($s:ident) => {
        Sink {
            transmits: &mut $s.transmits,
            events: &mut $s.events,
            stats: &mut $s.stats,
        }
    };
}

fn is_relay_path(m: &Message) -> bool {
    let p = m.uri_path();
    p.len() == 1 && p[0] == "r"
}

impl<A: Hash + Eq + Clone + Debug> Gateway<A> {
    /// A gateway with default [`GatewayOptions`]; `seed` drives every random choice
    /// (Message IDs, tokens, resource names, AT_IV, jitter). An invalid `cfg`
    /// ([`GatewayConfig::validate`]) gives a gateway that does nothing and reports
    /// [`AuthFailure::InvalidConfig`] on [`Gateway::start`]; use [`Gateway::try_new`] to get
    /// the error instead.
    pub fn new(cfg: GatewayConfig, seed: u64) -> Self {
        Self::with_options(cfg, GatewayOptions::default(), seed)
    }

    /// Like [`Gateway::new`], failing on an invalid configuration.
    pub fn try_new(
        cfg: GatewayConfig,
        opts: GatewayOptions,
        seed: u64,
    ) -> Result<Self, GatewayError> {
        cfg.validate()?;
        Ok(Self::with_options(cfg, opts, seed))
    }

    /// A gateway with explicit options.
    pub fn with_options(cfg: GatewayConfig, opts: GatewayOptions, seed: u64) -> Self {
        let invalid = cfg.validate().err().map(|GatewayError::InvalidConfig(w)| w);
        let mut rng = StdRng::seed_from_u64(seed);
        let resource_seed: u32 = rng.gen();
        let mid0: u16 = rng.gen();
        let auth = OwnAuth::new(
            &cfg,
            &opts,
            resource_seed,
            mid0,
            StdRng::seed_from_u64(rng.gen()),
        );
        // The configured window is the quiet gap that closes a batch, `batch_max_delay` the
        // longest wait (relay::DeviceRelay::take_batch). A batch payload stays below 64 KiB
        // by the room OSCORE and CoAP need, so the protected POST /r fits one UDP datagram.
        let quiet = cfg.batcher.window;
        let batcher_cfg = BatcherConfig {
            max_bytes: cfg.batcher.max_bytes.min(MAX_BATCH_PAYLOAD),
            ..cfg.batcher
        };
        let batcher = match Batcher::new(batcher_cfg) {
            Ok(b) => b,
            // Only for an invalid configuration, in which case the gateway stays inert.
            Err(_) => Batcher::new(BatcherConfig::default())
                .expect("the default batcher configuration is valid"),
        };
        let relay = DeviceRelay::new(
            batcher,
            RelayLimits {
                max_devices: cfg.max_devices,
                max_pending_per_device: opts.max_pending_per_device.max(1),
                idle: opts.device_idle_timeout,
                refused_grace: opts.refused_grace,
                quiet,
                max_delay: opts.batch_max_delay.max(quiet),
                max_ready: opts.link.nstart.max(1),
            },
        );
        // Its own stream, so that the other random choices stay what they were.
        let local = LocalIdentity::new(
            opts.capillary_link,
            &mut StdRng::seed_from_u64(seed ^ 0x6c6f_6361_6c5f_6964),
        );
        Gateway {
            invalid,
            local,
            outbox: Outbox::new(opts.link),
            dedup: Dedup::new(&opts.link),
            // The own CoAP-EAP peer counts up from mid0; keep the link's IDs far away.
            mids: MessageIdAllocator::new(mid0.wrapping_add(0x8000)),
            tokens: TokenAllocator::new(TOKEN_LEN, rng.gen()),
            backoff: opts.retry_backoff_initial,
            opts,
            rng,
            auth,
            relay,
            pending_ctx: None,
            current: None,
            previous: None,
            drop_previous: false,
            next_epoch: 0,
            authenticated: false,
            early_triggers: Vec::new(),
            session_lifetime: None,
            inflight: Vec::new(),
            round: 0,
            round_open: false,
            round_counted: 0,
            unauthorized: Vec::new(),
            serving: None,
            retry_at: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: GatewayStats::default(),
        }
    }

    /// Start the gateway's own CoAP-EAP authentication with the network (PROTOCOL.md §3.1).
    pub fn start(&mut self, now: Instant) {
        if let Some(why) = self.invalid {
            self.events
                .push_back(GatewayEvent::AuthFailed(AuthFailure::InvalidConfig(why)));
            return;
        }
        self.retry_at = None;
        self.auth.start(now);
        self.drain_auth(now);
    }

    /// True while the gateway link has an OSCORE context from a successful authentication.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Lifetime of the current session, as the network sent it (RFC 9820 §5.1).
    pub fn session_lifetime(&self) -> Option<Duration> {
        self.session_lifetime
    }

    /// Devices currently holding a handle.
    pub fn devices(&self) -> usize {
        self.relay.devices()
    }

    /// The batch handle of a device, if it holds one (PROTOCOL.md §4).
    pub fn handle_of(&self, addr: &A) -> Option<u32> {
        self.relay.handle_of(addr)
    }

    /// Device→network entries waiting for the link.
    pub fn pending_entries(&self) -> usize {
        self.relay.pending_entries()
    }

    /// Counters.
    pub fn stats(&self) -> GatewayStats {
        self.stats
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit<A>> {
        let t = self.transmits.pop_front()?;
        match &t {
            Transmit::ToNetwork(b) => {
                self.stats.link_msgs_out += 1;
                self.stats.link_bytes_out += b.len() as u64;
            }
            Transmit::ToDevice(_, b) => {
                self.stats.capillary_msgs_out += 1;
                self.stats.capillary_bytes_out += b.len() as u64;
            }
        }
        Some(t)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<GatewayEvent<A>> {
        self.events.pop_front()
    }

    /// When [`Gateway::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.invalid.is_some() {
            return None;
        }
        [
            self.auth.poll_timeout(),
            self.outbox.poll_timeout(),
            self.inflight
                .iter()
                .filter_map(|i| i.separate_deadline)
                .min(),
            self.retry_at,
            self.relay.poll_timeout(self.can_send()),
            self.local.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers: own authentication, `POST /r` retransmission and link loss, batching
    /// window, device idle/refusal releases, re-authentication back-off.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.invalid.is_some() {
            return;
        }
        self.auth.handle_timeout(now);
        self.drain_auth(now);
        for r in self.outbox.handle_timeout(now) {
            match r {
                Retransmission::Resend { bytes, .. } => {
                    self.stats.link_retransmissions += 1;
                    self.transmits.push_back(Transmit::ToNetwork(bytes));
                }
                Retransmission::GaveUp { message_id } => {
                    if self.inflight.iter().any(|i| i.mid == message_id) {
                        self.link_lost(now);
                    }
                }
            }
        }
        if self
            .inflight
            .iter()
            .filter_map(|i| i.separate_deadline)
            .any(|t| t <= now)
        {
            self.link_lost(now);
        }
        self.dedup.expire(now);
        for (addr, bytes) in self.local.handle_timeout(now) {
            self.stats.local_identity_retransmissions += 1;
            self.transmits.push_back(Transmit::ToDevice(addr, bytes));
        }
        self.relay.handle_timeout(now, sink!(self));
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.auth.start(now);
            self.drain_auth(now);
        }
        self.try_send_batch(now);
    }

    /// One UDP payload from a device on the capillary link.
    pub fn handle_device_datagram(&mut self, now: Instant, from: A, bytes: &[u8]) {
        self.stats.capillary_msgs_in += 1;
        self.stats.capillary_bytes_in += bytes.len() as u64;
        if self.invalid.is_some() {
            return;
        }
        if self.hold_early_trigger(&from, bytes) {
            return;
        }
        if self.local_step(now, &from, bytes) {
            self.try_send_batch(now);
            return;
        }
        self.relay.device_datagram(now, from, bytes, sink!(self));
        self.try_send_batch(now);
    }

    /// PROTOCOL.md §4.1 (`first_batch_with_auth`): a device trigger that arrives while the
    /// gateway's own run is under way but has not shown the network's offer yet is held
    /// (the latest per device) and answered locally as soon as the offer is known.
    fn hold_early_trigger(&mut self, from: &A, bytes: &[u8]) -> bool {
        if !(self.opts.local_identity && self.opts.first_batch_with_auth)
            || self.authenticated
            || !self.auth.is_running()
            || self.auth.offer_in_progress().is_some()
        {
            return false;
        }
        let Ok(msg) = Message::parse(bytes) else {
            return false;
        };
        if !capillary_coap_eap::trigger::is_trigger(&msg) {
            return false;
        }
        if let Some(t) = self.early_triggers.iter_mut().find(|(a, _)| a == from) {
            t.1 = bytes.to_vec();
            return true;
        }
        if self.early_triggers.len() >= self.relay.max_devices() {
            return false;
        }
        self.early_triggers.push((from.clone(), bytes.to_vec()));
        true
    }

    /// The held triggers, once the offer is known (or the run ended without one: then
    /// they are relayed as usual).
    fn release_early_triggers(&mut self, now: Instant) {
        if self.early_triggers.is_empty()
            || (self.auth.is_running() && self.auth.offer_in_progress().is_none())
        {
            return;
        }
        for (from, bytes) in std::mem::take(&mut self.early_triggers) {
            if !self.local_step(now, &from, &bytes) {
                self.relay.device_datagram(now, from, &bytes, sink!(self));
            }
        }
    }

    /// PROTOCOL.md §5: a trigger answered locally, or the device's answer to the local
    /// EAP-Request/Identity turned into a `kind 3` entry. `false`: relay the datagram.
    fn local_step(&mut self, now: Instant, from: &A, bytes: &[u8]) -> bool {
        let Ok(msg) = Message::parse(bytes) else {
            return false;
        };
        if !msg.type_code_valid() || msg.has_option(option_number::OSCORE) {
            return false;
        }
        let offer = if self.opts.local_identity && self.authenticated {
            self.auth.network_offer().cloned()
        } else if self.opts.local_identity && self.opts.first_batch_with_auth {
            // PROTOCOL.md §4.1: also while the gateway's own run is in progress, with that
            // run's offer; the `kind 3` entries wait for the link context.
            self.auth.offer_in_progress()
        } else {
            None
        };
        match self
            .local
            .device_message(now, from, &msg, offer.as_ref(), &mut self.rng)
        {
            Outcome::Relay => false,
            Outcome::Consumed => {
                self.stats.local_identity_duplicates += 1;
                true
            }
            Outcome::Reply(b) => {
                self.stats.local_identity_duplicates += 1;
                self.transmits
                    .push_back(Transmit::ToDevice(from.clone(), b));
                true
            }
            Outcome::Request(b) => {
                if self.relay.handle_for(now, from, &mut self.stats).is_none() {
                    self.local.forget(from);
                    return true;
                }
                self.stats.local_identity_requests += 1;
                self.transmits
                    .push_back(Transmit::ToDevice(from.clone(), b));
                true
            }
            Outcome::Answered {
                request,
                response,
                ack,
            } => {
                if let Some(a) = ack {
                    self.transmits
                        .push_back(Transmit::ToDevice(from.clone(), a));
                }
                if self
                    .relay
                    .identity_entry(now, from, request, response, &mut self.stats)
                {
                    self.stats.local_identity_forwarded += 1;
                    self.local.forwarded(now, from);
                }
                // Else not queued (counted): the request is retransmitted and the device
                // answers it again from its cache (RFC 9820 §3.2).
                true
            }
        }
    }

    /// One UDP payload from the network on the gateway link.
    pub fn handle_network_datagram(&mut self, now: Instant, bytes: &[u8]) {
        self.stats.link_msgs_in += 1;
        self.stats.link_bytes_in += bytes.len() as u64;
        if self.invalid.is_some() {
            return;
        }
        let msg = match Message::parse(bytes) {
            Ok(m) if m.type_code_valid() => m,
            _ => {
                self.stats.link_dropped += 1;
                return;
            }
        };
        let protected = msg.has_option(option_number::OSCORE);
        if msg.code.is_empty() {
            self.on_empty(now, &msg);
        } else if msg.code.is_request() {
            if protected {
                self.on_protected_request(now, &msg);
            } else if is_relay_path(&msg) {
                // PROTOCOL.md §3.2: unprotected requests other than CoAP-EAP → 4.01.
                self.stats.link_dropped += 1;
                let mut resp = Message::response_to(&msg, Code::UNAUTHORIZED, self.mids.next_id());
                resp.add_option(option_number::MAX_AGE, Vec::new());
                self.send(&resp);
            } else {
                // The own CoAP-EAP exchange (RFC 9820 §3.2), unprotected until EAP-Success.
                self.auth.handle_message(now, &msg);
                self.drain_auth(now);
            }
        } else if msg.code.is_response() {
            if protected {
                self.on_protected_response(now, &msg);
            } else {
                self.on_plain_response(now, &msg);
            }
        } else {
            self.stats.link_dropped += 1;
        }
        self.try_send_batch(now);
    }

    // ---- link internals ----

    fn can_send(&self) -> bool {
        self.authenticated
            && self.current.is_some()
            && self.inflight.len() < self.opts.link.nstart.max(1)
    }

    /// One of our `POST /r` of round `round` completed (already removed from `inflight`).
    /// A round is the exchanges sent together: a `POST /r` sent while the exchanges of the
    /// newest round are all still outstanding joins that round (it adds no waiting); one
    /// sent after an exchange of it completed — it waited for that answer, or for a free
    /// NSTART slot — starts a new round. Each round counts once, when its first exchange
    /// completes. A wave of more datagrams than NSTART therefore costs more than one round
    /// trip, as it does in time.
    fn own_exchange_done(&mut self, round: u64) {
        self.stats.link_exchanges += 1;
        if round > self.round_counted {
            self.stats.link_round_trips += 1;
            self.round_counted = round;
        }
        if round == self.round {
            self.round_open = false;
        }
    }

    fn send(&mut self, m: &Message) -> Option<Vec<u8>> {
        match m.encode() {
            Ok(b) => {
                self.transmits.push_back(Transmit::ToNetwork(b.clone()));
                Some(b)
            }
            Err(_) => None,
        }
    }

    fn ctx_mut(&mut self, epoch: u64) -> Option<&mut SecurityContext> {
        [
            self.pending_ctx.as_mut(),
            self.current.as_mut(),
            self.previous.as_mut(),
        ]
        .into_iter()
        .flatten()
        .find(|c| c.epoch == epoch)
        .map(|c| &mut c.sc)
    }

    fn drain_auth(&mut self, now: Instant) {
        self.drain_auth_outputs(now);
        self.release_early_triggers(now);
    }

    fn drain_auth_outputs(&mut self, now: Instant) {
        while let Some(o) = self.auth.poll_output() {
            match o {
                AuthOutput::Transmit(m) => {
                    self.send(&m);
                }
                AuthOutput::TransmitProtected(m) => {
                    let Some(s) = self.serving.take() else {
                        continue;
                    };
                    let protected = self
                        .ctx_mut(s.epoch)
                        .and_then(|c| c.protect_response(&m, &s.binding, false).ok());
                    if let Some(p) = protected {
                        if let Some(b) = self.send(&p) {
                            self.dedup.record_response(&s.epoch, s.mid, b);
                        }
                    }
                }
                AuthOutput::NewContext(sc) => {
                    let epoch = self.next_epoch;
                    self.next_epoch += 1;
                    self.pending_ctx = Some(LinkContext { epoch, sc });
                }
                AuthOutput::Authenticated(lifetime) => {
                    if let Some(new) = self.pending_ctx.take() {
                        if let Some(old) = self.current.take() {
                            // PROTOCOL.md §3.3: keep the old context until the new one has
                            // verified a link message.
                            self.previous = Some(old);
                            self.drop_previous = false;
                        }
                        self.current = Some(new);
                    }
                    self.authenticated = self.current.is_some();
                    self.unauthorized.clear();
                    self.session_lifetime = Some(lifetime);
                    self.backoff = self.opts.retry_backoff_initial;
                    self.retry_at = None;
                    self.events.push_back(GatewayEvent::Authenticated);
                }
                AuthOutput::SessionExpired => {
                    if self.authenticated || self.current.is_some() {
                        self.drop_link(now);
                        self.events.push_back(GatewayEvent::SessionExpired);
                    }
                    if !self.auth.is_running() && self.retry_at.is_none() {
                        self.retry_at = Some(now);
                    }
                }
                AuthOutput::Failed(f) => {
                    self.pending_ctx = None;
                    self.events.push_back(GatewayEvent::AuthFailed(f));
                    if self.retry_at.is_none() {
                        self.schedule_retry(now);
                    }
                }
            }
        }
    }

    /// Forget the link state (contexts, outstanding batch).
    fn drop_link(&mut self, _now: Instant) {
        for inf in self.inflight.drain(..) {
            self.stats.entries_lost += inf.entries;
        }
        self.round_open = false;
        self.unauthorized.clear();
        self.outbox = Outbox::new(self.opts.link);
        self.pending_ctx = None;
        self.current = None;
        self.previous = None;
        self.drop_previous = false;
        self.serving = None;
        self.authenticated = false;
        self.session_lifetime = None;
    }

    fn link_lost(&mut self, now: Instant) {
        self.drop_link(now);
        self.events.push_back(GatewayEvent::LinkLost);
        self.schedule_retry(now);
    }

    fn schedule_retry(&mut self, now: Instant) {
        let jitter: f64 = self.rng.gen_range(0.0..0.5);
        let delay = self.backoff.mul_f64(1.0 + jitter);
        self.retry_at = Some(now.checked_add(delay).unwrap_or(now));
        self.backoff = self
            .backoff
            .saturating_mul(2)
            .min(self.opts.retry_backoff_max);
    }

    /// A link message verified under `epoch`. If that is the current context, the network
    /// holds it: the previous context can go (§3.3) and unprotected 4.01s seen so far are
    /// refuted (PROTOCOL.md §4 "Errors").
    fn current_verified(&mut self, epoch: u64) {
        if self.current.as_ref().is_some_and(|c| c.epoch == epoch) {
            self.unauthorized.clear();
            if self.previous.is_some() {
                self.drop_previous = true;
            }
        }
        self.maybe_drop_previous();
    }

    fn maybe_drop_previous(&mut self) {
        if !self.drop_previous {
            return;
        }
        let prev = self.previous.as_ref().map(|c| c.epoch);
        if prev.is_none() || !self.inflight.iter().any(|i| Some(i.epoch) == prev) {
            self.previous = None;
            self.drop_previous = false;
        }
    }

    fn on_empty(&mut self, now: Instant, msg: &Message) {
        let ours = self.inflight.iter().any(|i| i.mid == msg.message_id);
        match msg.ty {
            MessageType::Ack if ours => {
                // Empty ACK: the network answers separately (RFC 7252 §5.2.2).
                self.outbox.handle_incoming_ack_or_rst(msg.message_id);
                let deadline = now
                    .checked_add(self.opts.separate_response_timeout)
                    .unwrap_or(now);
                if let Some(i) = self.inflight.iter_mut().find(|i| i.mid == msg.message_id) {
                    i.separate_deadline.get_or_insert(deadline);
                }
            }
            MessageType::Rst if ours => {
                self.outbox.cancel(msg.message_id);
                self.link_lost(now);
            }
            MessageType::Con => {
                // CoAP ping (RFC 7252 §4.3): answer RST.
                self.send(&Message::reset(msg.message_id));
            }
            _ => self.stats.link_dropped += 1,
        }
    }

    fn on_protected_request(&mut self, now: Instant, msg: &Message) {
        let mut verified = None;
        let mut replay = None;
        let mut error = None;
        for slot in [&mut self.pending_ctx, &mut self.current, &mut self.previous]
            .into_iter()
            .flatten()
        {
            match slot.sc.unprotect_request(msg) {
                Ok((inner, binding)) => {
                    verified = Some((slot.epoch, inner, binding));
                    break;
                }
                Err(OscoreError::Replay) => replay = Some(slot.epoch),
                Err(e) => error = Some(e),
            }
        }
        let Some((epoch, inner, binding)) = verified else {
            if let Some(e) = replay {
                // A retransmission of a request already verified (RFC 7252 §4.5): answer
                // from the cache, never process it twice.
                if let DedupResult::Duplicate(Some(b)) =
                    self.dedup.check_typed(now, &e, msg.message_id, msg.ty)
                {
                    self.stats.link_duplicates += 1;
                    self.transmits.push_back(Transmit::ToNetwork(b));
                    return;
                }
            }
            self.stats.link_dropped += 1;
            // RFC 8613 §8.2: unprotected error response.
            let e = error.unwrap_or(OscoreError::UnknownKid);
            if let Some(resp) = e.error_response(msg, self.mids.next_id()) {
                self.send(&resp);
            }
            return;
        };
        match self.dedup.check_typed(now, &epoch, msg.message_id, msg.ty) {
            DedupResult::New => {}
            DedupResult::Duplicate(cached) => {
                self.stats.link_duplicates += 1;
                if let Some(b) = cached {
                    self.transmits.push_back(Transmit::ToNetwork(b));
                }
                return;
            }
        }
        let for_auth = self.pending_ctx.as_ref().is_some_and(|c| c.epoch == epoch)
            || self.current.as_ref().is_some_and(|c| c.epoch == epoch);
        if inner.code == Code::POST && is_relay_path(&inner) {
            if self.pending_ctx.as_ref().is_some_and(|c| c.epoch == epoch) {
                // Not a link context yet.
                self.respond_protected(epoch, &inner, &binding, Code::UNAUTHORIZED, Vec::new());
                return;
            }
            self.current_verified(epoch);
            if msg.ty == MessageType::Non && no_response::should_suppress(&inner, Code::CHANGED) {
                // §4.1: a one-way batch from the network; no response.
                self.stats.link_one_way_in += 1;
                if let Ok(d) = DecodedBatch::decode(&inner.payload) {
                    self.relay.network_entries(now, d.entries, sink!(self));
                }
                return;
            }
            self.serve_relay(now, epoch, &inner, &binding);
        } else if for_auth {
            // The own CoAP-EAP: EAP-Success under the new context (RFC 9820 §3.3).
            self.serving = Some(Serving {
                epoch,
                binding,
                mid: msg.message_id,
            });
            self.auth.handle_oscore_message(now, &inner);
            self.drain_auth(now);
            self.serving = None;
        } else {
            self.respond_protected(epoch, &inner, &binding, Code::NOT_FOUND, Vec::new());
        }
    }

    /// A network-initiated `POST /r` (PROTOCOL.md §4): deliver its entries, answer 2.04
    /// with the device→network entries that are due (possibly none).
    fn serve_relay(&mut self, now: Instant, epoch: u64, inner: &Message, binding: &RequestBinding) {
        let decoded = if inner.payload.is_empty() {
            Ok(DecodedBatch {
                entries: Vec::new(),
                bad_entries: Vec::new(),
            })
        } else {
            DecodedBatch::decode(&inner.payload)
        };
        let (code, payload) = match decoded {
            Ok(d) => {
                self.relay.network_entries(now, d.entries, sink!(self));
                let payload = match self.relay.take_batch(now) {
                    Some(b) => match b.encode() {
                        Ok(p) => p,
                        Err(_) => {
                            self.stats.entries_lost += b.entries.len() as u64;
                            Vec::new()
                        }
                    },
                    None => Vec::new(),
                };
                (Code::CHANGED, payload)
            }
            Err(e) => (
                e.to_coap_code(),
                e.diagnostic().unwrap_or_default().as_bytes().to_vec(),
            ),
        };
        if self.respond_protected(epoch, inner, binding, code, payload) {
            // While our own POST /r is outstanding this exchange overlaps it: no extra
            // round trip (ours counts when it completes).
            self.stats.link_exchanges += 1;
            if self.inflight.is_empty() {
                self.stats.link_round_trips += 1;
            }
        }
    }

    fn respond_protected(
        &mut self,
        epoch: u64,
        req: &Message,
        binding: &RequestBinding,
        code: Code,
        payload: Vec<u8>,
    ) -> bool {
        let mid = self.mids.next_id();
        let mut resp = Message::response_to(req, code, mid);
        resp.payload = payload;
        let Some(p) = self
            .ctx_mut(epoch)
            .and_then(|c| c.protect_response(&resp, binding, false).ok())
        else {
            return false;
        };
        match self.send(&p) {
            Some(b) => {
                self.dedup.record_response(&epoch, req.message_id, b);
                true
            }
            None => false,
        }
    }

    fn matches_inflight(&self, msg: &Message) -> Option<usize> {
        self.inflight.iter().position(|i| {
            msg.token == i.token && (msg.ty != MessageType::Ack || msg.message_id == i.mid)
        })
    }

    fn ack_separate(&mut self, now: Instant, msg: &Message) {
        if msg.ty != MessageType::Con {
            return;
        }
        let ack = Message::empty_ack(msg.message_id);
        if let DedupResult::Duplicate(_) = self.dedup.check(now, &SEPARATE, msg.message_id) {
            self.stats.link_duplicates += 1;
        }
        if let Some(b) = self.send(&ack) {
            self.dedup.record_response(&SEPARATE, msg.message_id, b);
        }
    }

    fn on_protected_response(&mut self, now: Instant, msg: &Message) {
        let Some(idx) = self.matches_inflight(msg) else {
            // A late or duplicated separate response: ACK it, nothing else.
            if msg.ty == MessageType::Con
                && matches!(
                    self.dedup.check(now, &SEPARATE, msg.message_id),
                    DedupResult::Duplicate(_)
                )
            {
                self.stats.link_duplicates += 1;
                self.send(&Message::empty_ack(msg.message_id));
            } else {
                self.stats.link_dropped += 1;
            }
            return;
        };
        let epoch = self.inflight[idx].epoch;
        let mut binding = self.inflight[idx].binding.clone();
        let inner = match self.ctx_mut(epoch) {
            Some(c) => c.unprotect_response(msg, &mut binding),
            None => Err(OscoreError::UnknownKid),
        };
        let Ok(inner) = inner else {
            self.stats.link_dropped += 1;
            return;
        };
        let inf = self.inflight.remove(idx);
        self.outbox.cancel(inf.mid);
        self.ack_separate(now, msg);
        self.own_exchange_done(inf.round);
        self.current_verified(epoch);
        self.maybe_drop_previous();
        if inner.code != Code::CHANGED {
            self.stats.batches_refused += 1;
            self.stats.entries_lost += inf.entries;
            return;
        }
        if inner.payload.is_empty() {
            return;
        }
        match DecodedBatch::decode(&inner.payload) {
            Ok(d) => self.relay.network_entries(now, d.entries, sink!(self)),
            Err(_) => self.stats.link_dropped += 1,
        }
    }

    /// An unprotected response to one of our `POST /r` (RFC 8613 §8.2 error). It is not
    /// authenticated: anyone who sees the Message ID and token can forge one, so it does
    /// not end an exchange sent under the current context (PROTOCOL.md §4 "Errors"):
    ///
    /// - 4.00, 4.02 (and any other code): ignored; the request is retransmitted (the same
    ///   protected bytes: if the network never verified them they are still new to its
    ///   replay window, RFC 8613 §7.4) until an authenticated answer or the normal give-up
    ///   (RFC 7252 §4.2), which counts as link loss.
    /// - 4.01 ("security context not found"): the network may have forgotten the gateway.
    ///   The link counts as lost once 4.01s arrived for [`UNAUTHORIZED_QUORUM`] different
    ///   exchanges within MAX_TRANSMIT_SPAN with no authenticated message in between, or at
    ///   the normal give-up.
    ///
    /// A request protected with a context replaced since (re-keying, §3.3) is the
    /// exception: the network drops that context once the new one is confirmed, so the
    /// error is what it answers and retransmitting cannot succeed. That exchange ends and
    /// only its batch is lost (the devices' end-to-end timers resend), without re-keying.
    fn on_plain_response(&mut self, now: Instant, msg: &Message) {
        let Some(idx) = self.matches_inflight(msg) else {
            self.stats.link_dropped += 1;
            return;
        };
        self.ack_separate(now, msg);
        let (mid, epoch) = (self.inflight[idx].mid, self.inflight[idx].epoch);
        if self.current.as_ref().map(|c| c.epoch) != Some(epoch) {
            let inf = self.inflight.remove(idx);
            if self.inflight.is_empty() {
                self.round_open = false;
            }
            self.outbox.cancel(inf.mid);
            self.stats.batches_refused += 1;
            self.stats.entries_lost += inf.entries;
            self.maybe_drop_previous();
            return;
        }
        self.stats.link_unprotected_errors += 1;
        if msg.code != Code::UNAUTHORIZED {
            return;
        }
        let span = self.opts.link.max_transmit_span();
        self.unauthorized
            .retain(|(_, t)| now.saturating_duration_since(*t) < span);
        if !self.unauthorized.iter().any(|(m, _)| *m == mid) {
            self.unauthorized.push((mid, now));
        }
        if self.unauthorized.len() >= UNAUTHORIZED_QUORUM {
            // Corroborated: the network no longer knows the current context. The exchanges
            // it refused end here; drop_link counts their entries as lost.
            let refused = self
                .inflight
                .iter()
                .filter(|i| self.unauthorized.iter().any(|(m, _)| *m == i.mid))
                .count();
            self.stats.batches_refused += refused as u64;
            self.link_lost(now);
        }
    }

    /// Sends every due batch the link takes (up to NSTART outstanding `POST /r`).
    fn try_send_batch(&mut self, now: Instant) {
        while self.can_send() {
            if !self.send_one_batch(now) {
                return;
            }
        }
    }

    fn send_one_batch(&mut self, now: Instant) -> bool {
        let Some(batch) = self.relay.take_batch(now) else {
            return false;
        };
        let entries = batch.entries.len() as u64;
        let one_way = self.opts.confirm_one_way && needs_no_answer(&batch);
        let Ok(payload) = batch.encode() else {
            self.stats.entries_lost += entries;
            return true;
        };
        if one_way {
            return self.send_one_way(now, payload, entries);
        }
        let mid = self.mids.next_id();
        let token = self.tokens.next_token();
        let mut req = Message::new(MessageType::Con, Code::POST, mid, token.clone());
        req.set_uri_path("r");
        req.payload = payload;
        let Some(cur) = self.current.as_mut() else {
            return false;
        };
        let epoch = cur.epoch;
        let (outer, binding) = match cur.sc.protect_request(&req) {
            Ok(x) => x,
            Err(e) => {
                self.stats.entries_lost += entries;
                if matches!(e, OscoreError::SsnExhausted) {
                    // RFC 8613 §7.2.1: re-key by re-authenticating.
                    self.link_lost(now);
                }
                return false;
            }
        };
        let Ok(bytes) = outer.encode() else {
            self.stats.entries_lost += entries;
            return true;
        };
        let jitter: f64 = self.rng.gen();
        self.outbox.send_con(now, bytes.clone(), mid, jitter);
        if self.inflight.is_empty() || !self.round_open {
            self.round += 1;
            self.round_open = true;
        }
        self.inflight.push(InFlight {
            mid,
            token,
            epoch,
            binding,
            entries,
            round: self.round,
            separate_deadline: None,
        });
        self.stats.batches_sent += 1;
        self.transmits.push_back(Transmit::ToNetwork(bytes));
        true
    }

    /// §4.1: a batch that needs no answer, as a NON `POST /r` with No-Response (RFC 7967):
    /// no retransmission (loss is recovered end to end), no round trip.
    fn send_one_way(&mut self, now: Instant, payload: Vec<u8>, entries: u64) -> bool {
        let mid = self.mids.next_id();
        let token = self.tokens.next_token();
        let mut req = Message::new(MessageType::Non, Code::POST, mid, token);
        req.set_uri_path("r");
        no_response::set(&mut req, no_response::SUPPRESS_ALL);
        req.payload = payload;
        let Some(cur) = self.current.as_mut() else {
            return false;
        };
        let bytes = match cur.sc.protect_request(&req) {
            Ok((outer, _)) => outer.encode(),
            Err(e) => {
                self.stats.entries_lost += entries;
                if matches!(e, OscoreError::SsnExhausted) {
                    self.link_lost(now);
                }
                return false;
            }
        };
        let Ok(bytes) = bytes else {
            self.stats.entries_lost += entries;
            return true;
        };
        self.stats.batches_sent += 1;
        self.stats.link_one_way += 1;
        self.transmits.push_back(Transmit::ToNetwork(bytes));
        true
    }
}

/// §4.1: a batch the network has nothing to answer: every entry is a CoAP message that is
/// an Empty ACK/RST or an OSCORE-protected response (a key confirmation after EAP-Success,
/// an answer to a downlink); loss of those is recovered end to end. Plain responses are
/// CoAP-EAP answers the network answers with its next request, requests need their
/// response, and `gone` entries (which nothing would repeat) stay confirmable.
fn needs_no_answer(batch: &Batch) -> bool {
    batch.entries.iter().all(|e| match &e.kind {
        EntryKind::Coap(b) => Message::parse(b).is_ok_and(|m| {
            m.code.is_empty() || (m.code.is_response() && m.has_option(option_number::OSCORE))
        }),
        _ => false,
    })
}
