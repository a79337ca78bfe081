//! [`LinkEndpoint`]: routing between gateways, device sessions, the store and OSCORE.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use capillary_aka::vector::AuthVector;
use capillary_coap::msg::option_number;
use capillary_coap::no_response;
use capillary_coap::reliability::{
    Dedup, DedupResult, MessageIdAllocator, Outbox, Retransmission, TokenAllocator,
};
use capillary_coap::{Code, Message, MessageType};
use capillary_coap_eap::trigger::is_trigger;
use capillary_eap::server::{Method, ReauthContext, RejectReason, VectorInput};
use capillary_oscore::{OscoreError, RequestBinding};
use capillary_relay::batch::{MAX_COAP_BODY, MAX_ENTRIES};
use capillary_relay::{Batch, DecodedBatch, Entry, EntryKind, OutcomeResult};
use capillary_secrets::{Auts, Imsi, Rand};
use capillary_store::{AuditEvent, Authorization, SubscriberKind, SubscriberStatus};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::session::{Finish, Need, Pumped, Session};
use super::{DropCause, FailureCause, LinkAudit, LinkConfig, LinkError, LinkEvent, LinkStats};

use super::timers::{DevKey, Sessions};

/// A device request verified (or not) under a session's contexts, and whether the context
/// awaiting key confirmation verified it (see `unprotect_device_request`).
type Unprotected = (Result<(Message, RequestBinding), OscoreError>, bool);

/// Largest batch payload the network sends: 64 KiB (§4) less room for CoAP and OSCORE
/// headers, so that the protected message still fits one UDP datagram.
const MAX_SEND_BATCH: usize = 60 * 1024;

/// Largest downlink payload: the relayed CoAP message must stay within §4's 1,152 bytes.
const MAX_DOWNLINK: usize = MAX_COAP_BODY - 64;

#[derive(Debug)]
struct Gateway {
    /// The gateway's own CoAP-EAP run; its confirmed keys are the link context (§3).
    session: Session,
    mids: MessageIdAllocator,
    tokens: TokenAllocator,
    /// Network-initiated `POST /r` (RFC 7252 §4.2).
    outbox: Outbox,
    /// Message ID → (token, binding) of outstanding network-initiated requests.
    out_requests: HashMap<u16, (Vec<u8>, RequestBinding)>,
    /// Device-bound entries waiting for a batch.
    pending: Vec<Entry>,
    /// When the oldest of `pending` started waiting (for [`LinkConfig::batch_window`]).
    pending_since: Option<Instant>,
    /// Requests from this gateway whose response waits for the driver.
    held: usize,
    /// The gateway sends one-way batches (PROTOCOL.md §4.1), so it takes them too: a batch
    /// of only "authenticated" outcomes goes to it one-way.
    one_way: bool,
    /// PROTOCOL.md §6.2: one vector per bound device, fetched when the gateway
    /// authenticated, with the instant it stops being used; each is taken at most once.
    prefetched: HashMap<Imsi, (AuthVector, Instant)>,
    /// A message from the gateway verified under its link context since its last CoAP-EAP
    /// trigger: the link was live during the run (a re-keying, §3.3). When its run ends
    /// without one, the gateway authenticated from scratch and its handles are void
    /// (PROTOCOL.md §4 "Gateway restart").
    link_heard: bool,
    /// Changes with every link context the gateway establishes (random start): requests are
    /// deduplicated per (address, epoch), so a request under a new context never gets a
    /// response cached under an old one (a rebooted gateway may reuse Message IDs within
    /// EXCHANGE_LIFETIME, RFC 7252 §4.5).
    link_epoch: u64,
    /// Changes whenever the gateway's handles are voided (a restart, PROTOCOL.md §4): device
    /// requests are deduplicated per (device key, handle epoch), so a device re-bound to a
    /// handle another device used before never gets that device's cached response.
    handle_epoch: u64,
}

#[derive(Debug, Clone, Copy)]
enum Owner {
    Gateway(SocketAddr, u64),
    Device(DevKey, u64),
}

#[derive(Debug)]
struct PendingUplink {
    key: DevKey,
    generation: u64,
    device: Imsi,
    request: Message,
    binding: RequestBinding,
}

#[derive(Debug)]
enum AuthzItem {
    Attach(DevKey, u64),
    Uplink(Box<PendingUplink>),
    /// §6: the entries of one batch for a device whose identity is known, held back until
    /// the batch's Authorize is answered.
    Device {
        key: DevKey,
        generation: u64,
        entries: Vec<Entry>,
    },
}

impl AuthzItem {
    fn gateway(&self) -> SocketAddr {
        match self {
            Self::Attach(key, _) | Self::Device { key, .. } => key.0,
            Self::Uplink(u) => u.key.0,
        }
    }
}

/// §6: a gateway that is barred or no longer a gateway subscriber is revoked.
fn gateway_revoked(a: &Authorization) -> bool {
    matches!(a.gateway_status, None | Some(SubscriberStatus::Barred))
}

#[derive(Debug)]
enum TicketKind {
    Vectors(Vec<Owner>),
    Resync(Owner),
    Authorize(Vec<AuthzItem>),
    /// §6.2: vectors for the devices of the gateway at this address, authenticated in the
    /// run of this generation.
    Prefetch(SocketAddr, u64),
}

#[derive(Debug)]
struct Ticket {
    /// The held batches whose response waits for this ticket.
    batches: Vec<u64>,
    kind: TicketKind,
}

#[derive(Debug)]
struct RespondTo {
    /// The outer request (type, Message ID, token).
    request: Message,
    binding: RequestBinding,
}

#[derive(Debug)]
struct Held {
    gateway: SocketAddr,
    respond: Option<RespondTo>,
    outstanding: usize,
    deadline: Instant,
}

/// Store requests collected while processing inputs.
#[derive(Debug, Default)]
struct Acc {
    vectors: Vec<(Imsi, SubscriberKind, Owner)>,
    authz: Vec<((Imsi, Imsi), AuthzItem)>,
    resyncs: Vec<(Owner, Imsi, Rand, Auts)>,
}

impl Acc {
    fn is_empty(&self) -> bool {
        self.vectors.is_empty() && self.authz.is_empty() && self.resyncs.is_empty()
    }

    fn append(&mut self, mut other: Acc) {
        self.vectors.append(&mut other.vectors);
        self.authz.append(&mut other.authz);
        self.resyncs.append(&mut other.resyncs);
    }
}

fn count<K: Ord>(map: &mut std::collections::BTreeMap<K, u64>, k: K) {
    *map.entry(k).or_default() += 1;
}

/// A CoAP message (RFC 7252 §3) from a datagram of the gateway link or a relayed device
/// datagram, or `None` after counting it as malformed.
fn parse_counted(stats: &mut LinkStats, bytes: &[u8]) -> Option<Message> {
    match Message::parse(bytes) {
        Ok(m) if m.type_code_valid() => Some(m),
        _ => {
            count(&mut stats.dropped, DropCause::Malformed);
            None
        }
    }
}

/// The network end of the gateway link; see the [module docs](super).
#[derive(Debug)]
pub struct LinkEndpoint {
    cfg: LinkConfig,
    rng: StdRng,
    gateways: HashMap<SocketAddr, Gateway>,
    devices: Sessions,
    by_imsi: HashMap<Imsi, DevKey>,
    /// PROTOCOL.md §4 "Gateway restart": authenticated device sessions whose handle was
    /// voided, by (gateway, kid = the device's Sender ID), until an OSCORE-protected
    /// request verified under their context re-binds them to a handle.
    orphans: HashMap<(SocketAddr, Vec<u8>), Vec<Session>>,
    tickets: HashMap<u64, Ticket>,
    next_ticket: u64,
    held: HashMap<u64, Held>,
    next_batch: u64,
    /// Store requests not yet handed to the driver: everything processed between two
    /// [`LinkEndpoint::poll_event`] calls shares one store round trip per kind.
    store_acc: Acc,
    /// Held batches waiting for `store_acc`.
    store_batches: Vec<u64>,
    gw_dedup: Dedup<(SocketAddr, u64)>,
    dev_dedup: Dedup<(DevKey, u64)>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<LinkEvent>,
    stats: LinkStats,
    /// True while the entries of an authorized batch are processed (§6): their uplinks
    /// are delivered without a further check.
    preauthorized: bool,
    /// §6.1: fast re-authentication contexts by re-authentication identity, in memory
    /// only, with the instant they expire; each is taken out when used.
    reauth: HashMap<String, (ReauthContext, Instant)>,
    /// The `now` of the call being processed (for the in-memory tables and the sessions
    /// resumed from them).
    clock: Option<Instant>,
}

impl LinkEndpoint {
    /// A new endpoint; all randomness (Message IDs, tokens, EAP Identifiers, RAND-independent
    /// nonces of EAP-AKA') comes from `seed`. Pseudonyms and fast re-authentication are
    /// switched off in `cfg.eap` (module docs).
    pub fn new(mut cfg: LinkConfig, seed: u64) -> Self {
        cfg.eap.pseudonyms = false;
        cfg.eap.fast_reauth = cfg.fast_reauth;
        cfg.max_batch_entries = cfg.max_batch_entries.clamp(1, MAX_ENTRIES);
        let gw_dedup = Dedup::new(&cfg.transmission);
        let dev_dedup = Dedup::new(&cfg.transmission);
        Self {
            cfg,
            rng: StdRng::seed_from_u64(seed),
            gateways: HashMap::new(),
            devices: Sessions::default(),
            by_imsi: HashMap::new(),
            orphans: HashMap::new(),
            tickets: HashMap::new(),
            next_ticket: 1,
            held: HashMap::new(),
            next_batch: 1,
            store_acc: Acc::default(),
            store_batches: Vec::new(),
            gw_dedup,
            dev_dedup,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: LinkStats::default(),
            preauthorized: false,
            reauth: HashMap::new(),
            clock: None,
        }
    }

    /// One UDP payload from `from` (a gateway's link address).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.clock = Some(now);
        let Some(msg) = parse_counted(&mut self.stats, bytes) else {
            return;
        };
        if msg.has_option(option_number::OSCORE) {
            if msg.code.is_request() {
                self.gw_protected_request(now, from, &msg);
            } else {
                self.gw_protected_response(now, from, &msg);
            }
        } else {
            self.gw_plain(now, from, &msg);
        }
        self.flush(now);
    }

    /// The next UDP payload to send, with its destination.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next output event. Store requests ([`LinkEvent::NeedVectors`],
    /// [`LinkEvent::Authorize`], [`LinkEvent::NeedResync`]) are built here from everything
    /// processed since the previous call: a driver that hands over every datagram already
    /// received before polling events gets ONE store round trip per kind for all of them
    /// (e.g. the several batches of one attach wave too large for one datagram).
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        if self.events.is_empty() {
            self.emit_stored();
        }
        self.events.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats.clone()
    }

    /// Is this gateway authenticated (link context established)?
    pub fn is_gateway_authenticated(&self, gateway: SocketAddr) -> bool {
        self.gateways
            .get(&gateway)
            .is_some_and(|g| g.session.keys.is_some())
    }

    /// Is this device authenticated (end-to-end context established)?
    pub fn is_device_authenticated(&self, device: &Imsi) -> bool {
        self.by_imsi
            .get(device)
            .and_then(|k| self.devices.get(k))
            .is_some_and(|s| s.keys.is_some())
    }

    /// The earliest instant at which [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let gws = self
            .gateways
            .values()
            .flat_map(|g| [g.session.auth.poll_timeout(), g.outbox.poll_timeout()]);
        let devs = [self.devices.next_deadline()];
        let held = self.held.values().map(|h| Some(h.deadline));
        let window = self.cfg.batch_window;
        let batches = self.gateways.values().map(|g| {
            if g.pending.is_empty() || g.held > 0 || !g.outbox.can_send() {
                return None;
            }
            g.pending_since.and_then(|t| t.checked_add(window))
        });
        gws.chain(devs)
            .chain(batches)
            .chain(held)
            .chain([self.gw_dedup.poll_timeout(), self.dev_dedup.poll_timeout()])
            .flatten()
            .min()
    }

    /// Runs every timer due at `now`: CoAP-EAP retransmissions (relayed in a
    /// network-initiated batch for devices), `POST /r` and downlink retransmissions, held
    /// responses whose driver answers are late, deduplication expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = Some(now);
        let mut acc = Acc::default();
        let mut addrs: Vec<SocketAddr> = self.gateways.keys().copied().collect();
        addrs.sort_unstable();
        for addr in addrs {
            let mut p = Pumped::default();
            let mut resend = Vec::new();
            if let Some(gw) = self.gateways.get_mut(&addr) {
                gw.session.auth.handle_timeout(now);
                gw.session.pump(now, &mut self.rng, &self.cfg, &mut p);
                for r in gw.outbox.handle_timeout(now) {
                    match r {
                        Retransmission::Resend { bytes, .. } => resend.push(bytes),
                        Retransmission::GaveUp { message_id } => {
                            // The entries in it are lost; the device authenticators
                            // retransmit end to end.
                            gw.out_requests.remove(&message_id);
                        }
                    }
                }
            }
            for b in resend {
                self.transmits.push_back((addr, b));
            }
            self.route_gateway(addr, p, &mut acc);
        }
        // Only the sessions whose timer is due, in deadline order (deterministic).
        for key in self.devices.due(now) {
            let mut p = Pumped::default();
            let mut relay = Vec::new();
            let mut failed = 0;
            let mut next = false;
            if let Some(s) = self.devices.get_mut(&key) {
                if s.auth.poll_timeout().is_some_and(|t| t <= now) {
                    s.auth.handle_timeout(now);
                    s.pump(now, &mut self.rng, &self.cfg, &mut p);
                }
                for r in s.downlink.outbox.handle_timeout(now) {
                    match r {
                        Retransmission::Resend { bytes, .. } => relay.push(bytes),
                        Retransmission::GaveUp { message_id } => {
                            s.downlink.outstanding.remove(&message_id);
                            failed += 1;
                            next = true;
                        }
                    }
                }
            }
            for b in relay {
                self.push_entry(key, b);
            }
            // An authenticator retransmission whose previous copy still waits for a batch
            // to the gateway is not queued twice: the link itself is reliable, only the
            // capillary hop can lose it (docs/PERFORMANCE.md).
            if let Some(gw) = self.gateways.get(&key.0) {
                p.out.retain(|b| {
                    !gw.pending.iter().any(|e| {
                        e.handle == key.1 && matches!(&e.kind, EntryKind::Coap(x) if x == b)
                    })
                });
            }
            if let Some(device) = self.device_imsi(key) {
                for _ in 0..failed {
                    self.events.push_back(LinkEvent::DownlinkFailed {
                        device: device.clone(),
                    });
                }
            }
            if next {
                self.next_downlink(now, key);
            }
            self.route_device(key, p, &mut acc);
        }
        self.emit_tickets(acc, None);
        let due: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.finish_held(id);
        }
        self.gw_dedup.expire(now);
        self.dev_dedup.expire(now);
        self.flush(now);
    }

    /// Answer to [`LinkEvent::NeedVectors`] (one result per request, in order) or
    /// [`LinkEvent::NeedResync`] (one result).
    pub fn provide_vectors(
        &mut self,
        now: Instant,
        ticket: u64,
        vectors: Vec<Result<AuthVector, RejectReason>>,
    ) -> Result<(), LinkError> {
        self.clock = Some(now);
        let expected = match self.tickets.get(&ticket).map(|t| &t.kind) {
            Some(TicketKind::Vectors(o)) => o.len(),
            Some(TicketKind::Resync(_)) => 1,
            _ => return Err(LinkError::UnknownTicket),
        };
        if vectors.len() != expected {
            return Err(LinkError::WrongAnswerCount {
                expected,
                got: vectors.len(),
            });
        }
        let Some(t) = self.tickets.remove(&ticket) else {
            return Err(LinkError::UnknownTicket);
        };
        let owners = match t.kind {
            TicketKind::Vectors(o) => o,
            TicketKind::Resync(o) => vec![o],
            TicketKind::Authorize(_) | TicketKind::Prefetch(..) => {
                return Err(LinkError::UnknownTicket)
            }
        };
        let mut acc = Acc::default();
        for (owner, v) in owners.into_iter().zip(vectors) {
            let v = v.map(VectorInput::from);
            match owner {
                Owner::Gateway(addr, generation) => {
                    let mut p = Pumped::default();
                    if let Some(gw) = self.gateways.get_mut(&addr) {
                        let s = &mut gw.session;
                        if s.generation != generation {
                            continue;
                        }
                        if let Some(w) = s.wait.as_mut() {
                            w.vector = Some(v);
                        }
                        s.try_continue(&mut self.rng);
                        s.pump(now, &mut self.rng, &self.cfg, &mut p);
                    }
                    self.route_gateway(addr, p, &mut acc);
                }
                Owner::Device(key, generation) => {
                    let mut p = Pumped::default();
                    let mut denial = None;
                    if let Some(s) = self.devices.get_mut(&key) {
                        if s.generation != generation {
                            continue;
                        }
                        if let Some(w) = s.wait.as_mut() {
                            w.vector = Some(v);
                        }
                        denial = s.try_continue(&mut self.rng);
                        s.pump(now, &mut self.rng, &self.cfg, &mut p);
                    }
                    self.audit_denial(key, denial);
                    self.route_device(key, p, &mut acc);
                }
            }
        }
        self.emit_tickets(acc, None);
        self.ticket_done(&t.batches);
        self.flush(now);
        Ok(())
    }

    /// Answer to [`LinkEvent::Authorize`]: one [`Authorization`] per pair, in order.
    pub fn provide_authorization(
        &mut self,
        now: Instant,
        ticket: u64,
        answers: Vec<Authorization>,
    ) -> Result<(), LinkError> {
        self.clock = Some(now);
        let expected = match self.tickets.get(&ticket).map(|t| &t.kind) {
            Some(TicketKind::Authorize(items)) => items.len(),
            _ => return Err(LinkError::UnknownTicket),
        };
        if answers.len() != expected {
            return Err(LinkError::WrongAnswerCount {
                expected,
                got: answers.len(),
            });
        }
        let Some(Ticket {
            batches,
            kind: TicketKind::Authorize(items),
        }) = self.tickets.remove(&ticket)
        else {
            return Err(LinkError::UnknownTicket);
        };
        // §6: a revoked gateway is forgotten before anything of its batches is acted on.
        let mut revoked: Vec<SocketAddr> = Vec::new();
        for (item, a) in items.iter().zip(&answers) {
            let gw = item.gateway();
            if gateway_revoked(a) && !revoked.contains(&gw) {
                revoked.push(gw);
            }
        }
        let mut kept = Vec::new();
        let mut held_back: Vec<(DevKey, Vec<Entry>)> = Vec::new();
        for (item, a) in items.into_iter().zip(answers) {
            if !revoked.contains(&item.gateway()) {
                kept.push((item, a));
                continue;
            }
            match item {
                AuthzItem::Device { key, entries, .. } => held_back.push((key, entries)),
                // Answered before its context goes (§6).
                AuthzItem::Uplink(u) => {
                    self.device_respond(u.key, &u.request, &u.binding, Code::FORBIDDEN)
                }
                AuthzItem::Attach(..) => {}
            }
        }
        for gw in revoked {
            self.revoke_gateway(now, gw, &mut held_back);
        }
        let mut acc = Acc::default();
        for (item, a) in kept {
            if !self.gateways.contains_key(&item.gateway()) {
                continue;
            }
            match item {
                AuthzItem::Device {
                    key,
                    generation,
                    entries,
                } => self.finish_device_entries(now, key, generation, entries, &a, &mut acc),
                AuthzItem::Attach(key, generation) => {
                    let mut p = Pumped::default();
                    let mut denial = None;
                    if let Some(s) = self.devices.get_mut(&key) {
                        if s.generation != generation {
                            continue;
                        }
                        if let Some(w) = s.wait.as_mut() {
                            w.denial = Some(a.denial());
                        }
                        denial = s.try_continue(&mut self.rng);
                        s.pump(now, &mut self.rng, &self.cfg, &mut p);
                    }
                    self.audit_denial(key, denial);
                    self.route_device(key, p, &mut acc);
                }
                AuthzItem::Uplink(u) => self.finish_uplink(*u, a.denial()),
            }
        }
        self.emit_tickets(acc, None);
        self.ticket_done(&batches);
        self.flush(now);
        Ok(())
    }

    /// Answer to [`LinkEvent::PrefetchVectors`] (§6.2): one fresh vector per device bound
    /// to the gateway, leaving out devices the store refused. Each is kept for
    /// [`LinkConfig::prefetch_lifetime`] and handed out at most once, to a run of that
    /// device through that gateway; all are dropped when the gateway's link context goes
    /// or it authenticates again. Answers for a gateway that is gone are dropped.
    pub fn provide_prefetch(
        &mut self,
        now: Instant,
        ticket: u64,
        vectors: Vec<(Imsi, AuthVector)>,
    ) -> Result<(), LinkError> {
        self.clock = Some(now);
        let Some(TicketKind::Prefetch(addr, generation)) =
            self.tickets.get(&ticket).map(|t| &t.kind)
        else {
            return Err(LinkError::UnknownTicket);
        };
        let (addr, generation) = (*addr, *generation);
        self.tickets.remove(&ticket);
        let until = now.checked_add(self.cfg.prefetch_lifetime).unwrap_or(now);
        let Some(gw) = self.gateways.get_mut(&addr) else {
            return Ok(());
        };
        if gw.session.generation != generation || gw.session.keys.is_none() {
            return Ok(());
        }
        let n = vectors.len().min(self.cfg.prefetch_max_devices);
        self.stats.prefetched += n as u64;
        gw.prefetched = vectors
            .into_iter()
            .take(n)
            .map(|(i, v)| (i, (v, until)))
            .collect();
        Ok(())
    }

    /// Sends `payload` to an authenticated device: an OSCORE-protected CON `POST d`
    /// relayed through its gateway (retransmitted until the device's protected 2.04).
    pub fn queue_downlink(
        &mut self,
        now: Instant,
        device: &Imsi,
        payload: &[u8],
    ) -> Result<(), LinkError> {
        self.clock = Some(now);
        if payload.len() > MAX_DOWNLINK {
            return Err(LinkError::TooLarge);
        }
        let key = *self
            .by_imsi
            .get(device)
            .ok_or(LinkError::NotAuthenticated)?;
        let s = self
            .devices
            .get_mut(&key)
            .filter(|s| s.keys.is_some())
            .ok_or(LinkError::NotAuthenticated)?;
        if let Some(bytes) = s.send_downlink(now, &mut self.rng, payload.to_vec())? {
            self.push_entry(key, bytes);
        }
        self.flush(now);
        Ok(())
    }

    /// Every device key this endpoint holds: MSK, EMSK, OSCORE Master Secret and Salt,
    /// Sender/Recipient Key and Common IV of each device context. For the R3 test only
    /// (it proves the gateway never sees any of them). Gateways' own keys are not included.
    pub fn dangerous_export_secrets(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for s in self.devices.values().chain(self.orphans.values().flatten()) {
            for k in [&s.keys, &s.new_keys].into_iter().flatten() {
                k.export(&mut out);
            }
        }
        out
    }

    // ---- gateway link ----

    fn gw_plain(&mut self, now: Instant, from: SocketAddr, msg: &Message) {
        if is_trigger(msg) {
            if !self.gateways.contains_key(&from) {
                if self.gateways.len() >= self.cfg.max_gateways {
                    count(&mut self.stats.dropped, DropCause::Limit);
                    return;
                }
                let session = Session::new(&self.cfg, &mut self.rng, false);
                let mid: u16 = self.rng.gen();
                let gw = Gateway {
                    session,
                    mids: MessageIdAllocator::new(mid),
                    tokens: TokenAllocator::new(8, self.rng.gen()),
                    outbox: Outbox::new(self.cfg.transmission),
                    out_requests: HashMap::new(),
                    pending: Vec::new(),
                    pending_since: None,
                    held: 0,
                    one_way: false,
                    prefetched: HashMap::new(),
                    link_heard: false,
                    link_epoch: self.rng.gen(),
                    handle_epoch: self.rng.gen(),
                };
                self.gateways.insert(from, gw);
            } else if let Some(gw) = self.gateways.get_mut(&from) {
                gw.link_heard = false;
            }
            self.feed_gateway(now, from, msg);
            return;
        }
        if msg.code.is_request() {
            // §3: unprotected requests other than the CoAP-EAP trigger are answered 4.01.
            count(&mut self.stats.dropped, DropCause::NoContext);
            let mid = self.rng.gen();
            if let Ok(b) = Message::response_to(msg, Code::UNAUTHORIZED, mid).encode() {
                self.transmits.push_back((from, b));
            }
            return;
        }
        let Some(gw) = self.gateways.get_mut(&from) else {
            count(&mut self.stats.dropped, DropCause::Unexpected);
            return;
        };
        let mid = msg.message_id;
        if matches!(msg.ty, MessageType::Ack | MessageType::Rst)
            && gw.out_requests.contains_key(&mid)
        {
            gw.outbox.cancel(mid);
            if !(msg.ty == MessageType::Ack && msg.code.is_empty()) {
                // RST or an unprotected error: the exchange is over.
                gw.out_requests.remove(&mid);
                count(&mut self.stats.dropped, DropCause::Unexpected);
            }
            return;
        }
        self.feed_gateway(now, from, msg);
    }

    fn feed_gateway(&mut self, now: Instant, from: SocketAddr, msg: &Message) {
        let mut p = Pumped::default();
        if let Some(gw) = self.gateways.get_mut(&from) {
            gw.session.auth.handle_message(now, msg);
            gw.session.pump(now, &mut self.rng, &self.cfg, &mut p);
        }
        let mut acc = Acc::default();
        self.route_gateway(from, p, &mut acc);
        self.emit_tickets(acc, None);
    }

    fn gw_protected_request(&mut self, now: Instant, from: SocketAddr, msg: &Message) {
        let mid = msg.message_id;
        let (res, by_new_keys) = match self.gateways.get_mut(&from) {
            Some(g) => Self::unprotect_device_request(&mut g.session, msg),
            None => (Err(OscoreError::UnknownKid), false),
        };
        // Only the link context in use before the run proves a live link: a request under
        // the new context (the first batch overtaking the 2.04, §4.1) comes from the run.
        if res.is_ok() && !by_new_keys {
            if let Some(gw) = self.gateways.get_mut(&from) {
                gw.link_heard = true;
            }
        }
        if by_new_keys && res.is_ok() {
            // PROTOCOL.md §4.1: a `POST /r` under the gateway's new context that overtook
            // its protected 2.04 to EAP-Success proves key possession (RFC 9820 §3.3), as
            // for devices: confirm the run, then serve the request.
            let mut p = Pumped::default();
            let mut confirmed = false;
            if let Some(g) = self.gateways.get_mut(&from) {
                g.session.confirm_by_request(now);
                g.session.pump(now, &mut self.rng, &self.cfg, &mut p);
                confirmed = g.session.new_keys.is_none() && g.session.keys.is_some();
            }
            let mut acc = Acc::default();
            self.route_gateway(from, p, &mut acc);
            self.emit_tickets(acc, None);
            if !confirmed {
                count(&mut self.stats.dropped, DropCause::NoContext);
                return;
            }
        }
        let dedup_key = (from, self.link_epoch(from));
        match res {
            Ok((inner, binding)) => match self.gw_dedup.check_typed(now, &dedup_key, mid, msg.ty) {
                DedupResult::New => self.gw_request(now, from, msg, &inner, binding),
                DedupResult::Duplicate(cached) => self.gw_duplicate(from, cached),
            },
            Err(OscoreError::Replay) => {
                match self.gw_dedup.check_typed(now, &dedup_key, mid, msg.ty) {
                    // A retransmission of a request already processed (RFC 7252 §4.5).
                    DedupResult::Duplicate(cached) => self.gw_duplicate(from, cached),
                    DedupResult::New => {
                        count(&mut self.stats.dropped, DropCause::Replay);
                        self.gw_oscore_error(from, msg, &OscoreError::Replay);
                    }
                }
            }
            Err(e) => {
                let cause = if e == OscoreError::UnknownKid {
                    DropCause::NoContext
                } else {
                    DropCause::OscoreInvalid
                };
                count(&mut self.stats.dropped, cause);
                self.gw_oscore_error(from, msg, &e);
            }
        }
    }

    /// RFC 8613 §8.2: an unprotected error response (never cached).
    fn gw_oscore_error(&mut self, from: SocketAddr, msg: &Message, e: &OscoreError) {
        let mid = self.rng.gen();
        if let Some(b) = e.error_response(msg, mid).and_then(|r| r.encode().ok()) {
            self.transmits.push_back((from, b));
        }
    }

    fn gw_duplicate(&mut self, from: SocketAddr, cached: Option<Vec<u8>>) {
        self.stats.duplicates += 1;
        if let Some(b) = cached {
            self.transmits.push_back((from, b));
        }
    }

    fn gw_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        outer: &Message,
        inner: &Message,
        binding: RequestBinding,
    ) {
        // Only the type, Message ID and token are needed to answer: not the whole batch.
        let respond = RespondTo {
            request: Message::new(outer.ty, outer.code, outer.message_id, outer.token.clone()),
            binding,
        };
        if inner.code != Code::POST || inner.uri_path() != ["r"] {
            self.gw_respond(from, respond, Code::NOT_FOUND, Vec::new());
            return;
        }
        // §4.1: a one-way batch (NON with No-Response) gets no response at all.
        let one_way = outer.ty == MessageType::Non
            && no_response::should_suppress(inner, Code::CHANGED)
            && no_response::should_suppress(inner, Code::BAD_REQUEST);
        if one_way {
            self.stats.one_way_in += 1;
            if let Some(gw) = self.gateways.get_mut(&from) {
                gw.one_way = true;
            }
        }
        match DecodedBatch::decode(&inner.payload) {
            Ok(d) => self.process_batch(now, from, d, (!one_way).then_some(respond)),
            Err(e) => {
                count(&mut self.stats.dropped, DropCause::BadBatch);
                if !one_way {
                    let diag = e.diagnostic().unwrap_or_default().as_bytes().to_vec();
                    self.gw_respond(from, respond, e.to_coap_code(), diag);
                }
            }
        }
    }

    /// Protects a response to a gateway request, caches it for duplicates and sends it.
    fn gw_respond(&mut self, from: SocketAddr, r: RespondTo, code: Code, payload: Vec<u8>) {
        let Some(gw) = self.gateways.get_mut(&from) else {
            return;
        };
        let mut resp = Message::response_to(&r.request, code, gw.mids.next_id());
        resp.payload = payload;
        let Some(keys) = gw.session.keys.as_mut() else {
            return;
        };
        let Ok(bytes) = keys
            .ctx
            .protect_response(&resp, &r.binding, false)
            .and_then(|m| Ok(m.encode()?))
        else {
            return;
        };
        let key = (from, gw.link_epoch);
        self.gw_dedup
            .record_response(&key, r.request.message_id, bytes.clone());
        self.transmits.push_back((from, bytes));
    }

    fn gw_protected_response(&mut self, now: Instant, from: SocketAddr, msg: &Message) {
        let Some(gw) = self.gateways.get_mut(&from) else {
            count(&mut self.stats.dropped, DropCause::Unexpected);
            return;
        };
        let mid = msg.message_id;
        // The key confirmation of the gateway's own CoAP-EAP (RFC 9820 §3.3).
        if msg.ty == MessageType::Ack {
            if let Some((_, binding)) = gw.session.protected_out.get(&mid) {
                let binding = binding.clone();
                let mut p = Pumped::default();
                let res =
                    gw.session
                        .confirm_keys(now, msg, binding, &mut self.rng, &self.cfg, &mut p);
                match res {
                    Ok(()) => {
                        let mut acc = Acc::default();
                        self.route_gateway(from, p, &mut acc);
                        self.emit_tickets(acc, None);
                    }
                    Err(_) => count(&mut self.stats.dropped, DropCause::OscoreInvalid),
                }
                return;
            }
        }
        // The answer to a network-initiated POST /r (piggybacked or separate).
        let found = match msg.ty {
            MessageType::Ack => gw.out_requests.get(&mid).map(|(_, b)| (mid, b.clone())),
            _ => gw
                .out_requests
                .iter()
                .find(|(_, (t, _))| *t == msg.token)
                .map(|(m, (_, b))| (*m, b.clone())),
        };
        let Some((req_mid, mut binding)) = found else {
            count(&mut self.stats.dropped, DropCause::Unexpected);
            return;
        };
        let res = match gw.session.keys.as_mut() {
            Some(k) => k.ctx.unprotect_response(msg, &mut binding),
            None => Err(OscoreError::UnknownKid),
        };
        let inner = match res {
            Ok(i) => i,
            Err(_) => {
                count(&mut self.stats.dropped, DropCause::OscoreInvalid);
                return;
            }
        };
        gw.outbox.cancel(req_mid);
        gw.out_requests.remove(&req_mid);
        gw.link_heard = true;
        self.stats.round_trips += 1;
        if msg.ty == MessageType::Con {
            if let Ok(b) = Message::empty_ack(mid).encode() {
                self.transmits.push_back((from, b));
            }
        }
        if !inner.code.is_success() {
            count(&mut self.stats.dropped, DropCause::Unexpected);
            return;
        }
        if inner.payload.is_empty() {
            return;
        }
        match DecodedBatch::decode(&inner.payload) {
            Ok(d) => self.process_batch(now, from, d, None),
            Err(_) => count(&mut self.stats.dropped, DropCause::BadBatch),
        }
    }

    /// §4: every entry of a batch from `from`; store needs become one ticket of each kind;
    /// the response (if `respond`) leaves once they are answered.
    fn process_batch(
        &mut self,
        now: Instant,
        from: SocketAddr,
        d: DecodedBatch,
        respond: Option<RespondTo>,
    ) {
        self.stats.batches_in += 1;
        self.stats.entries_in += (d.entries.len() + d.bad_entries.len()) as u64;
        let refusals: Vec<Entry> = d.refusals().collect();
        for _ in &d.bad_entries {
            count(&mut self.stats.dropped, DropCause::BadEntry);
        }
        if let Some(gw) = self.gateways.get_mut(&from) {
            gw.pending.extend(refusals);
        }
        let mut acc = Acc::default();
        // §6: the entries of devices whose identity is known wait for ONE Authorize of
        // all their (device, gateway) pairs; the others (no identity yet) have nothing to
        // check and are processed now (their attach check joins the same Authorize).
        let gw_imsi = self.gateway_imsi(from);
        let mut gated: Vec<(u32, Imsi, u64, Vec<Entry>)> = Vec::new();
        for e in d.entries {
            let key = (from, e.handle);
            if let Some(g) = gated.iter_mut().find(|g| g.0 == e.handle) {
                g.3.push(e);
                continue;
            }
            let identity = match (self.devices.get(&key), &gw_imsi) {
                (Some(s), Some(_)) => Self::identity_to_check(s, &e),
                _ => None,
            };
            match identity {
                Some((imsi, generation)) => gated.push((e.handle, imsi, generation, vec![e])),
                None => self.batch_entry(now, key, e, &mut acc),
            }
        }
        if let Some(gw) = gw_imsi {
            for (handle, imsi, generation, entries) in gated {
                let item = AuthzItem::Device {
                    key: (from, handle),
                    generation,
                    entries,
                };
                acc.authz.push(((imsi, gw.clone()), item));
            }
        }
        if acc.is_empty() {
            if let Some(r) = respond {
                self.respond_batch(from, r);
            }
            return;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        if let Some(gw) = self.gateways.get_mut(&from) {
            gw.held += 1;
        }
        // `outstanding` counts the tickets once they are built (emit_stored).
        self.held.insert(
            batch,
            Held {
                gateway: from,
                respond,
                outstanding: 0,
                deadline: now.checked_add(self.cfg.response_hold).unwrap_or(now),
            },
        );
        self.emit_tickets(acc, Some(batch));
    }

    /// §6: the identity an entry for session `s` must be authorized for before it is
    /// acted on, if one is known: the identity of the run in progress (after its
    /// EAP-Response/Identity, until key confirmation), or, between runs, the identity of
    /// the confirmed context for OSCORE-protected messages. A run before its identity
    /// (e.g. a new trigger) has nothing to check yet: its attach check travels with the
    /// vector request. A run already refused is only being ended.
    fn identity_to_check(s: &Session, e: &Entry) -> Option<(Imsi, u64)> {
        if s.refused {
            return None;
        }
        if s.run_in_progress() || s.new_keys.is_some() {
            return s.imsi.clone().map(|i| (i, s.generation));
        }
        // A protected message under another kid is not this session's (a gateway restart,
        // PROTOCOL.md §4): it is routed by its kid and authorized then.
        let protected = matches!(&e.kind, EntryKind::Coap(b)
            if Message::parse(b).is_ok_and(|m| m
                .option(option_number::OSCORE)
                .and_then(|v| capillary_oscore::OscoreOption::decode(v).ok())
                .and_then(|o| o.kid)
                .is_some_and(|k| Self::session_has_kid(s, k))));
        match (&s.keys_imsi, protected) {
            (Some(i), true) => Some((i.clone(), s.generation)),
            _ => None,
        }
    }

    /// One entry of a batch from a gateway (§4).
    fn batch_entry(&mut self, now: Instant, key: DevKey, e: Entry, acc: &mut Acc) {
        match e.kind {
            EntryKind::Coap(bytes) => self.device_datagram(now, key, &bytes, acc),
            EntryKind::Gone => self.remove_device(key),
            EntryKind::Identity { request, response } => {
                self.local_identity(now, key, &request, &response, acc);
            }
            // Outcomes only flow network → gateway; unknown kinds are skipped (§4).
            _ => {}
        }
    }

    /// §5 (`kind 3`): the gateway answered the device's trigger with EAP-Request/Identity
    /// itself; the device session starts from the device's answer, as if its authenticator
    /// had sent that request. Refused (`kind 1, result 1`) when
    /// [`LinkConfig::accept_local_identity`] is off or the request is not exactly what the
    /// network would have sent (cipher suites, RID-C, §5).
    fn local_identity(
        &mut self,
        now: Instant,
        key: DevKey,
        request: &[u8],
        response: &[u8],
        acc: &mut Acc,
    ) {
        let refuse = |this: &mut Self, cause| {
            count(&mut this.stats.dropped, cause);
            if let Some(gw) = this.gateways.get_mut(&key.0) {
                gw.pending.push(Entry::refusal(key.1));
            }
        };
        if !self.cfg.accept_local_identity {
            refuse(self, DropCause::Unexpected);
            return;
        }
        let (Ok(req), Ok(resp)) = (Message::parse(request), Message::parse(response)) else {
            refuse(self, DropCause::Malformed);
            return;
        };
        if !req.type_code_valid() || !resp.type_code_valid() {
            refuse(self, DropCause::Malformed);
            return;
        }
        let created = !self.devices.contains_key(&key);
        if created {
            if self.devices.len() >= self.cfg.max_devices {
                refuse(self, DropCause::Limit);
                return;
            }
            let s = Session::new(&self.cfg, &mut self.rng, true);
            self.devices.insert(key, s);
        }
        let mut p = Pumped::default();
        let res = match self.devices.get_mut(&key) {
            Some(s) => {
                let r = s.local_identity(now, &mut self.rng, &self.cfg, &req, &resp);
                if r.is_ok() {
                    s.pump(now, &mut self.rng, &self.cfg, &mut p);
                }
                r
            }
            None => return,
        };
        match res {
            Ok(true) => {
                self.stats.local_identities += 1;
                self.route_device(key, p, acc);
            }
            Ok(false) => self.stats.duplicates += 1,
            Err(_) => {
                if created {
                    self.devices.remove(&key);
                }
                refuse(self, DropCause::BadEntry);
            }
        }
    }

    fn ticket_done(&mut self, batches: &[u64]) {
        for &id in batches {
            let done = match self.held.get_mut(&id) {
                Some(h) => {
                    h.outstanding = h.outstanding.saturating_sub(1);
                    h.outstanding == 0
                }
                None => false,
            };
            if done {
                self.finish_held(id);
            }
        }
    }

    fn finish_held(&mut self, id: u64) {
        let Some(h) = self.held.remove(&id) else {
            return;
        };
        if let Some(gw) = self.gateways.get_mut(&h.gateway) {
            gw.held = gw.held.saturating_sub(1);
        }
        if let Some(r) = h.respond {
            self.respond_batch(h.gateway, r);
        }
    }

    /// Entries that fit one batch sent by the network.
    fn take_entries(pending: &mut Vec<Entry>, max: usize) -> Vec<Entry> {
        let mut len = Batch::new(Vec::new()).encoded_len() + 8;
        let mut n = 0;
        for e in pending.iter() {
            let l = e.encoded_len();
            if n >= max || len + l > MAX_SEND_BATCH {
                break;
            }
            len += l;
            n += 1;
        }
        pending.drain(..n).collect()
    }

    /// ONE 2.04 with the device-bound entries ready now (§4).
    fn respond_batch(&mut self, from: SocketAddr, r: RespondTo) {
        let Some(gw) = self.gateways.get_mut(&from) else {
            return;
        };
        let entries = Self::take_entries(&mut gw.pending, self.cfg.max_batch_entries);
        if gw.pending.is_empty() {
            gw.pending_since = None;
        }
        let n = entries.len() as u64;
        let Ok(payload) = Batch::new(entries).encode() else {
            return;
        };
        self.stats.batches_out += 1;
        self.stats.entries_out += n;
        self.stats.round_trips += 1;
        self.gw_respond(from, r, Code::CHANGED, payload);
    }

    /// Sends network-initiated `POST /r` batches where entries have waited
    /// [`LinkConfig::batch_window`] (so that output produced in one burst, and entries a
    /// response could not carry, travel together or on the next response), no response is
    /// held (it will carry them) and no earlier request is outstanding (NSTART 1,
    /// RFC 7252 §4.7).
    fn flush(&mut self, now: Instant) {
        let max = self.cfg.max_batch_entries;
        let window = self.cfg.batch_window;
        // The timer index follows every session touched by the call that flushes.
        self.devices.refresh();
        // In address order: the RNG draws (retransmission jitter) are deterministic.
        let mut addrs: Vec<SocketAddr> = self.gateways.keys().copied().collect();
        addrs.sort_unstable();
        for addr in addrs {
            let Some(gw) = self.gateways.get_mut(&addr) else {
                continue;
            };
            if gw.pending.is_empty() {
                gw.pending_since = None;
                continue;
            }
            let since = *gw.pending_since.get_or_insert(now);
            let due = since.checked_add(window).is_none_or(|t| now >= t);
            if !due || gw.held > 0 || !gw.outbox.can_send() {
                continue;
            }
            let Some(keys) = gw.session.keys.as_mut() else {
                continue;
            };
            let entries = Self::take_entries(&mut gw.pending, max);
            if gw.pending.is_empty() {
                gw.pending_since = None;
            }
            let n = entries.len() as u64;
            // §4.1: only "authenticated" outcomes (the answer to one-way key confirmations)
            // go one-way to a gateway that sends one-way batches itself: losing one costs
            // the gateway an event, nothing else.
            let one_way = gw.one_way
                && entries.iter().all(|e| {
                    matches!(
                        e.kind,
                        EntryKind::Outcome {
                            result: OutcomeResult::Authenticated,
                            ..
                        }
                    )
                });
            let Ok(payload) = Batch::new(entries).encode() else {
                continue;
            };
            let mid = gw.mids.next_id();
            let token = gw.tokens.next_token();
            if one_way {
                let mut m = Message::new(MessageType::Non, Code::POST, mid, token);
                m.set_uri_path("r");
                no_response::set(&mut m, no_response::SUPPRESS_ALL);
                m.payload = payload;
                if let Ok(bytes) = keys
                    .ctx
                    .protect_request(&m)
                    .and_then(|(p, _)| Ok(p.encode()?))
                {
                    self.stats.one_way_out += 1;
                    self.stats.batches_out += 1;
                    self.stats.entries_out += n;
                    self.transmits.push_back((addr, bytes));
                }
                continue;
            }
            let mut m = Message::new(MessageType::Con, Code::POST, mid, token.clone());
            m.set_uri_path("r");
            m.payload = payload;
            let Ok((prot, binding)) = keys.ctx.protect_request(&m) else {
                continue;
            };
            let Ok(bytes) = prot.encode() else {
                continue;
            };
            gw.outbox
                .send_con(now, bytes.clone(), mid, self.rng.gen::<f64>());
            gw.out_requests.insert(mid, (token, binding));
            self.stats.batches_out += 1;
            self.stats.entries_out += n;
            self.transmits.push_back((addr, bytes));
        }
    }

    // ---- devices ----

    fn device_datagram(&mut self, now: Instant, key: DevKey, bytes: &[u8], acc: &mut Acc) {
        let Some(msg) = parse_counted(&mut self.stats, bytes) else {
            return;
        };
        if msg.has_option(option_number::OSCORE) {
            if msg.code.is_request() {
                self.device_protected_request(now, key, &msg, acc);
            } else {
                self.device_protected_response(now, key, &msg, acc);
            }
            return;
        }
        if !self.devices.contains_key(&key) {
            if !is_trigger(&msg) {
                count(&mut self.stats.dropped, DropCause::Unexpected);
                return;
            }
            if self.devices.len() >= self.cfg.max_devices {
                count(&mut self.stats.dropped, DropCause::Limit);
                if let Some(gw) = self.gateways.get_mut(&key.0) {
                    gw.pending.push(Entry::refusal(key.1));
                }
                return;
            }
            let s = Session::new(&self.cfg, &mut self.rng, true);
            self.devices.insert(key, s);
        }
        let mut p = Pumped::default();
        if let Some(s) = self.devices.get_mut(&key) {
            // An Empty ACK / RST for a downlink request.
            if matches!(msg.ty, MessageType::Ack | MessageType::Rst)
                && msg.code.is_empty()
                && s.downlink.outstanding.contains_key(&msg.message_id)
            {
                s.downlink.outbox.cancel(msg.message_id);
                if msg.ty == MessageType::Rst {
                    s.downlink.outstanding.remove(&msg.message_id);
                }
                return;
            }
            s.auth.handle_message(now, &msg);
            s.pump(now, &mut self.rng, &self.cfg, &mut p);
        }
        self.route_device(key, p, acc);
    }

    fn device_protected_request(
        &mut self,
        now: Instant,
        key: DevKey,
        msg: &Message,
        acc: &mut Acc,
    ) {
        let mid = msg.message_id;
        let kid = msg
            .option(option_number::OSCORE)
            .and_then(|v| capillary_oscore::OscoreOption::decode(v).ok())
            .and_then(|o| o.kid)
            .map(<[u8]>::to_vec);
        let here = self
            .devices
            .get(&key)
            .is_some_and(|s| kid.as_deref().is_some_and(|k| Self::session_has_kid(s, k)));
        let mut rebound = false;
        let (res, by_new_keys) = match (here, kid) {
            (true, _) => match self.devices.get_mut(&key) {
                Some(s) => Self::unprotect_device_request(s, msg),
                None => (Err(OscoreError::UnknownKid), false),
            },
            (false, Some(kid)) => match self.adopt_by_kid(key, &kid, msg) {
                Some(r) => {
                    rebound = r.0.is_ok();
                    r
                }
                None => {
                    // No context with this kid behind this gateway (RFC 8613 §8.2).
                    count(&mut self.stats.dropped, DropCause::NoContext);
                    self.device_no_context(key, msg);
                    return;
                }
            },
            (false, None) => (Err(OscoreError::UnknownKid), false),
        };
        if by_new_keys && res.is_ok() {
            // The device's 2.04 to the EAP-Success was lost, yet it already uses the new
            // context: this request proves key possession (RFC 9820 §3.3). Confirm the run
            // as the 2.04 would have, then serve the request under the confirmed keys.
            let mut p = Pumped::default();
            let mut confirmed = false;
            if let Some(s) = self.devices.get_mut(&key) {
                s.confirm_by_request(now);
                s.pump(now, &mut self.rng, &self.cfg, &mut p);
                confirmed = s.new_keys.is_none() && s.keys.is_some();
            }
            self.route_device(key, p, acc);
            if !confirmed {
                // No EAP-Success of this run was waiting for its answer: nothing to serve
                // the request with.
                count(&mut self.stats.dropped, DropCause::NoContext);
                return;
            }
        }
        let (inner, binding) = match res {
            Ok(x) => x,
            Err(OscoreError::Replay) => {
                match self
                    .dev_dedup
                    .check_typed(now, &self.dedup_key(key), mid, msg.ty)
                {
                    DedupResult::Duplicate(cached) => self.dev_duplicate(key, cached),
                    DedupResult::New => count(&mut self.stats.dropped, DropCause::Replay),
                }
                return;
            }
            Err(OscoreError::UnknownKid) => {
                count(&mut self.stats.dropped, DropCause::NoContext);
                return;
            }
            Err(_) => {
                count(&mut self.stats.dropped, DropCause::OscoreInvalid);
                return;
            }
        };
        let dk = self.dedup_key(key);
        if let DedupResult::Duplicate(cached) = self.dev_dedup.check_typed(now, &dk, mid, msg.ty) {
            self.dev_duplicate(key, cached);
            return;
        }
        let gw_imsi = self.gateway_imsi(key.0);
        let Some(s) = self.devices.get(&key) else {
            return;
        };
        match (
            inner.code == Code::POST && inner.uri_path() == ["u"],
            &s.keys_imsi,
            gw_imsi,
        ) {
            (true, Some(device), Some(_)) if self.preauthorized && !rebound => {
                // §6: the batch's Authorize already allowed this device.
                let u = PendingUplink {
                    key,
                    generation: s.generation,
                    device: device.clone(),
                    request: inner,
                    binding,
                };
                self.finish_uplink(u, None);
            }
            (true, Some(device), Some(gw)) => {
                // §6: checked with the batch's one Authorize event before delivery.
                let u = PendingUplink {
                    key,
                    generation: s.generation,
                    device: device.clone(),
                    request: inner,
                    binding,
                };
                acc.authz
                    .push(((device.clone(), gw), AuthzItem::Uplink(Box::new(u))));
            }
            _ => self.device_respond(key, &inner, &binding, Code::NOT_FOUND),
        }
    }

    /// Verifies a protected device request with the confirmed keys, else with the keys of
    /// the run awaiting key confirmation (`true` in the result when those verified it or
    /// found it a replay). A replay under the confirmed keys verified there: it is not
    /// tried again. When neither context verifies it, the error of the context that got
    /// furthest is returned (confirmed keys first).
    fn unprotect_device_request(
        s: &mut Session,
        msg: &Message,
    ) -> (Result<(Message, RequestBinding), OscoreError>, bool) {
        let res = match s.keys.as_mut() {
            Some(k) => k.ctx.unprotect_request(msg),
            None => Err(OscoreError::UnknownKid),
        };
        let Some(k) = s.new_keys.as_mut() else {
            return (res, false);
        };
        match res {
            Ok(_) | Err(OscoreError::Replay) => (res, false),
            Err(first) => match k.ctx.unprotect_request(msg) {
                Ok(x) => (Ok(x), true),
                Err(OscoreError::Replay) => (Err(OscoreError::Replay), true),
                Err(e) if s.keys.is_none() => (Err(e), false),
                Err(_) => (Err(first), false),
            },
        }
    }

    fn dev_duplicate(&mut self, key: DevKey, cached: Option<Vec<u8>>) {
        self.stats.duplicates += 1;
        if let Some(b) = cached {
            self.push_entry(key, b);
        }
    }

    /// Protects the response to a device request, caches it and relays it.
    fn device_respond(&mut self, key: DevKey, req: &Message, binding: &RequestBinding, code: Code) {
        let Some(s) = self.devices.get_mut(&key) else {
            return;
        };
        let resp = Message::response_to(req, code, s.downlink.mids.next_id());
        let Some(keys) = s.keys.as_mut() else {
            return;
        };
        let Ok(bytes) = keys
            .ctx
            .protect_response(&resp, binding, false)
            .and_then(|m| Ok(m.encode()?))
        else {
            return;
        };
        let dk = self.dedup_key(key);
        self.dev_dedup
            .record_response(&dk, req.message_id, bytes.clone());
        self.push_entry(key, bytes);
    }

    fn finish_uplink(&mut self, mut u: PendingUplink, denial: Option<AuditEvent>) {
        let current = self
            .devices
            .get(&u.key)
            .is_some_and(|s| s.generation == u.generation && s.keys.is_some());
        if !current {
            return;
        }
        match denial {
            None => {
                self.events.push_back(LinkEvent::Uplink {
                    device: u.device,
                    payload: std::mem::take(&mut u.request.payload),
                });
                self.device_respond(u.key, &u.request, &u.binding, Code::CHANGED);
            }
            Some(d) => {
                // §6: barring or unbinding takes effect at the next message.
                self.device_respond(u.key, &u.request, &u.binding, Code::FORBIDDEN);
                self.audit_denial(u.key, Some(d));
                count(&mut self.stats.failures, FailureCause::Refused(d.into()));
                self.push_outcome(u.key, OutcomeResult::REFUSED, None);
                self.remove_device(u.key);
            }
        }
    }

    /// §6: the answer for a device whose entries of a batch were held back. Allowed: the
    /// entries are processed now. Refused: an authenticated device's protected requests in
    /// them are answered 4.03 and its context is dropped; a run in progress ends with
    /// EAP-Failure (its EAP-Responses are not processed); either way an audit record and a
    /// `kind 1` refused outcome.
    fn finish_device_entries(
        &mut self,
        now: Instant,
        key: DevKey,
        generation: u64,
        entries: Vec<Entry>,
        a: &Authorization,
        acc: &mut Acc,
    ) {
        let current = self
            .devices
            .get(&key)
            .is_some_and(|s| s.generation == generation);
        let denial = if current { a.denial() } else { None };
        let Some(d) = denial else {
            // Allowed, or the session changed meanwhile (a new run has no identity to
            // check yet): process as usual.
            self.preauthorized = current;
            for e in entries {
                self.batch_entry(now, key, e, acc);
            }
            self.preauthorized = false;
            return;
        };
        self.audit_denial(key, Some(d));
        let running = self.devices.get(&key).is_some_and(Session::run_in_progress);
        if !running {
            // Authenticated (or between runs): its requests are refused, its context goes.
            for e in entries {
                if let EntryKind::Coap(bytes) = e.kind {
                    self.refuse_protected_request(now, key, &bytes);
                }
            }
            count(&mut self.stats.failures, FailureCause::Refused(d.into()));
            self.push_outcome(key, OutcomeResult::REFUSED, None);
            if let Some(imsi) = self.device_imsi(key) {
                self.events.push_back(LinkEvent::Failed {
                    imsi: Some(imsi),
                    kind: SubscriberKind::Device,
                    reason: FailureCause::Refused(d.into()),
                });
            }
            self.remove_device(key);
            return;
        }
        let mut p = Pumped::default();
        if let Some(s) = self.devices.get_mut(&key) {
            s.refuse(now, d);
            s.pump(now, &mut self.rng, &self.cfg, &mut p);
        }
        if let Some(imsi) = self.devices.get(&key).and_then(|s| s.keys_imsi.clone()) {
            if self.by_imsi.get(&imsi) == Some(&key) {
                self.by_imsi.remove(&imsi);
            }
        }
        self.route_device(key, p, acc);
        // The CoAP-EAP layer still carries the run to its EAP-Failure.
        for e in entries {
            self.batch_entry(now, key, e, acc);
        }
    }

    /// Answers a protected request of a refused, authenticated device with a protected
    /// 4.03 (§6); anything else is dropped.
    fn refuse_protected_request(&mut self, now: Instant, key: DevKey, bytes: &[u8]) {
        let Ok(msg) = Message::parse(bytes) else {
            return;
        };
        if !msg.code.is_request() || !msg.has_option(option_number::OSCORE) {
            return;
        }
        let res = match self.devices.get_mut(&key).and_then(|s| s.keys.as_mut()) {
            Some(k) => k.ctx.unprotect_request(&msg),
            None => return,
        };
        match res {
            Ok((inner, binding)) => {
                let dk = self.dedup_key(key);
                if let DedupResult::Duplicate(cached) =
                    self.dev_dedup.check_typed(now, &dk, msg.message_id, msg.ty)
                {
                    self.dev_duplicate(key, cached);
                    return;
                }
                self.device_respond(key, &inner, &binding, Code::FORBIDDEN);
            }
            Err(_) => count(&mut self.stats.dropped, DropCause::OscoreInvalid),
        }
    }

    /// §6: the gateway at `addr` is revoked (barred or no longer a gateway subscriber).
    /// Every device session behind it ends as a refused pair does (audit `GatewayRevoked`,
    /// `Failed`, EAP-Failure for a run in progress, 4.03 for the protected requests in
    /// `held_back`, a `kind 1` refusal); the held requests of the gateway are answered one
    /// last time under its link context, carrying those refusals; then the context is
    /// forgotten: every later request from it gets an unprotected 4.01 (RFC 8613 §8.2) and
    /// it relays nothing until it authenticates again.
    fn revoke_gateway(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        held_back: &mut Vec<(DevKey, Vec<Entry>)>,
    ) {
        self.orphans.retain(|(a, _), _| *a != addr);
        let Some(gw_imsi) = self.gateway_imsi(addr) else {
            self.gateways.remove(&addr);
            return;
        };
        let event = AuditEvent::GatewayRevoked;
        let cause = FailureCause::Refused(event.into());
        let keys = self.device_keys_behind(addr);
        let mut scratch = Acc::default();
        for key in keys {
            let Some(s) = self.devices.get(&key) else {
                continue;
            };
            let subject = s.keys_imsi.clone().or_else(|| s.imsi.clone());
            let running = s.run_in_progress();
            if let Some(subject) = subject {
                self.events.push_back(LinkEvent::Audit(LinkAudit {
                    event,
                    subject: subject.clone(),
                    gateway: Some(gw_imsi.clone()),
                    detail: format!("refused: {event}"),
                }));
                self.events.push_back(LinkEvent::Failed {
                    imsi: Some(subject),
                    kind: SubscriberKind::Device,
                    reason: cause,
                });
            }
            count(&mut self.stats.failures, cause);
            let entries: Vec<Entry> = match held_back.iter().position(|(k, _)| *k == key) {
                Some(i) => held_back.swap_remove(i).1,
                None => Vec::new(),
            };
            if running {
                let mut p = Pumped::default();
                if let Some(s) = self.devices.get_mut(&key) {
                    s.refuse(now, event);
                    s.pump(now, &mut self.rng, &self.cfg, &mut p);
                }
                for b in p.out {
                    self.push_entry(key, b);
                }
                // CoAP-EAP carries the run to its EAP-Failure; nothing else is processed.
                for e in entries {
                    self.batch_entry(now, key, e, &mut scratch);
                }
            } else {
                for e in entries {
                    if let EntryKind::Coap(bytes) = e.kind {
                        self.refuse_protected_request(now, key, &bytes);
                    }
                }
            }
            self.push_outcome(key, OutcomeResult::REFUSED, None);
            self.remove_device(key);
        }
        self.events.push_back(LinkEvent::Audit(LinkAudit {
            event,
            subject: gw_imsi.clone(),
            gateway: Some(gw_imsi.clone()),
            detail: "gateway revoked: link context dropped".into(),
        }));
        self.events.push_back(LinkEvent::Failed {
            imsi: Some(gw_imsi),
            kind: SubscriberKind::Gateway,
            reason: cause,
        });
        let mut held: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.gateway == addr)
            .map(|(id, _)| *id)
            .collect();
        held.sort_unstable();
        for id in held {
            if let Some(r) = self.held.remove(&id).and_then(|h| h.respond) {
                self.respond_batch(addr, r);
            }
        }
        self.gateways.remove(&addr);
    }

    fn device_protected_response(
        &mut self,
        now: Instant,
        key: DevKey,
        msg: &Message,
        acc: &mut Acc,
    ) {
        let Some(s) = self.devices.get_mut(&key) else {
            count(&mut self.stats.dropped, DropCause::NoContext);
            return;
        };
        let mid = msg.message_id;
        if msg.ty != MessageType::Ack {
            count(&mut self.stats.dropped, DropCause::Unexpected);
            return;
        }
        if let Some((_, binding)) = s.protected_out.get(&mid) {
            // Key confirmation of the device's CoAP-EAP (RFC 9820 §3.3).
            let binding = binding.clone();
            let mut p = Pumped::default();
            match s.confirm_keys(now, msg, binding, &mut self.rng, &self.cfg, &mut p) {
                Ok(()) => {
                    self.route_device(key, p, acc);
                }
                Err(_) => count(&mut self.stats.dropped, DropCause::OscoreInvalid),
            }
            return;
        }
        if let Some((_, binding)) = s.downlink.outstanding.get(&mid) {
            let mut binding = binding.clone();
            let res = match s.keys.as_mut() {
                Some(k) => k.ctx.unprotect_response(msg, &mut binding),
                None => Err(OscoreError::UnknownKid),
            };
            match res {
                Ok(_) => {
                    s.downlink.outbox.cancel(mid);
                    s.downlink.outstanding.remove(&mid);
                    if let Some(device) = s.keys_imsi.clone() {
                        self.events
                            .push_back(LinkEvent::DownlinkDelivered { device });
                    }
                    self.next_downlink(now, key);
                }
                Err(_) => count(&mut self.stats.dropped, DropCause::OscoreInvalid),
            }
            return;
        }
        count(&mut self.stats.dropped, DropCause::Unexpected);
    }

    fn next_downlink(&mut self, now: Instant, key: DevKey) {
        let Some(s) = self.devices.get_mut(&key) else {
            return;
        };
        if !s.downlink.outbox.can_send() {
            return;
        }
        let Some(payload) = s.downlink.queue.pop_front() else {
            return;
        };
        if let Ok(Some(bytes)) = s.send_downlink(now, &mut self.rng, payload) {
            self.push_entry(key, bytes);
        }
    }

    // ---- routing of session output ----

    fn push_entry(&mut self, key: DevKey, bytes: Vec<u8>) {
        if bytes.len() > MAX_COAP_BODY {
            count(&mut self.stats.dropped, DropCause::Limit);
            return;
        }
        if let Some(gw) = self.gateways.get_mut(&key.0) {
            gw.pending.push(Entry::coap(key.1, bytes));
        }
    }

    fn push_outcome(&mut self, key: DevKey, result: OutcomeResult, lifetime: Option<u32>) {
        if let Some(gw) = self.gateways.get_mut(&key.0) {
            gw.pending.push(Entry {
                handle: key.1,
                kind: EntryKind::Outcome {
                    result,
                    session_lifetime: lifetime,
                },
            });
        }
    }

    fn gateway_imsi(&self, addr: SocketAddr) -> Option<Imsi> {
        self.gateways
            .get(&addr)
            .and_then(|g| g.session.keys_imsi.clone())
    }

    fn device_imsi(&self, key: DevKey) -> Option<Imsi> {
        self.devices
            .get(&key)
            .and_then(|s| s.keys_imsi.clone().or_else(|| s.imsi.clone()))
    }

    fn audit_denial(&mut self, key: DevKey, denial: Option<AuditEvent>) {
        let Some(event) = denial else { return };
        let Some(subject) = self.devices.get(&key).and_then(|s| s.imsi.clone()) else {
            return;
        };
        self.events.push_back(LinkEvent::Audit(LinkAudit {
            event,
            subject,
            gateway: self.gateway_imsi(key.0),
            detail: format!("refused: {event}"),
        }));
    }

    fn remove_device(&mut self, key: DevKey) {
        if let Some(s) = self.devices.remove(&key) {
            if let Some(imsi) = s.keys_imsi {
                if self.by_imsi.get(&imsi) == Some(&key) {
                    self.by_imsi.remove(&imsi);
                }
            }
        }
    }

    /// A device request's deduplication key: its session key and its gateway's handle epoch.
    fn dedup_key(&self, key: DevKey) -> (DevKey, u64) {
        (key, self.gateways.get(&key.0).map_or(0, |g| g.handle_epoch))
    }

    /// The gateway's current link epoch (0 for an unknown gateway): the second half of its
    /// requests' deduplication key.
    fn link_epoch(&self, addr: SocketAddr) -> u64 {
        self.gateways.get(&addr).map_or(0, |g| g.link_epoch)
    }

    /// The sessions behind the gateway at `addr`, in key order (deterministic runs).
    fn device_keys_behind(&self, addr: SocketAddr) -> Vec<DevKey> {
        let mut keys: Vec<DevKey> = self
            .devices
            .keys()
            .filter(|k| k.0 == addr)
            .copied()
            .collect();
        keys.sort_unstable();
        keys
    }

    /// PROTOCOL.md §4 "Gateway restart": the gateway at `addr` authenticated from scratch
    /// (no message of it verified under the old link context during its run), so the
    /// handles it used before mean nothing now (a rebooted gateway numbers its devices
    /// afresh). Every session behind it leaves its handle: one holding an OSCORE context
    /// becomes an orphan found by its kid ([`Self::adopt_by_kid`]), a run without one ends
    /// (the device starts over); device-bound entries still waiting for the old handles are
    /// dropped.
    fn void_handles(&mut self, addr: SocketAddr) {
        if let Some(g) = self.gateways.get_mut(&addr) {
            g.handle_epoch = g.handle_epoch.wrapping_add(1);
        }
        let keys = self.device_keys_behind(addr);
        for key in keys {
            let Some(s) = self.devices.remove(&key) else {
                continue;
            };
            self.stats.handles_voided += 1;
            if let Some(imsi) = &s.keys_imsi {
                if self.by_imsi.get(imsi) == Some(&key) {
                    self.by_imsi.remove(imsi);
                }
            }
            if let Some(kid) = Self::session_kid(&s) {
                self.orphans.entry((addr, kid)).or_default().push(s);
            }
        }
        if let Some(gw) = self.gateways.get_mut(&addr) {
            gw.pending.clear();
            gw.pending_since = None;
        }
    }

    /// The kid a device puts in its requests (its Sender ID = our Recipient ID), from the
    /// confirmed context, else from the one awaiting key confirmation.
    fn session_kid(s: &Session) -> Option<Vec<u8>> {
        s.keys
            .as_ref()
            .or(s.new_keys.as_ref())
            .map(|k| k.ctx.recipient_id().to_vec())
    }

    /// Does `s` hold a context (confirmed or awaiting confirmation) for requests with `kid`?
    fn session_has_kid(s: &Session, kid: &[u8]) -> bool {
        [&s.keys, &s.new_keys]
            .into_iter()
            .flatten()
            .any(|k| k.ctx.recipient_id() == kid)
    }

    /// PROTOCOL.md §4 "Gateway restart": a protected device request on handle `key` that
    /// no session there can verify (none, or another kid) is tried on the orphaned
    /// sessions of this gateway with the request's kid (RFC 8613 §6.1: the kid is the
    /// sender's ID). The first that verifies it is bound to `key` (a session that was
    /// there moves to the orphans, or ends if it holds no context). `None`: no context
    /// with this kid behind this gateway.
    fn adopt_by_kid(&mut self, key: DevKey, kid: &[u8], msg: &Message) -> Option<Unprotected> {
        let okey = (key.0, kid.to_vec());
        let candidates = self.orphans.get_mut(&okey)?;
        let mut last = None;
        let mut found = None;
        for (i, s) in candidates.iter_mut().enumerate() {
            let r = Self::unprotect_device_request(s, msg);
            if r.0.is_ok() {
                found = Some((i, r));
                break;
            }
            last = Some(r);
        }
        let Some((i, r)) = found else {
            return Some(last.unwrap_or((Err(OscoreError::UnknownKid), false)));
        };
        let s = candidates.swap_remove(i);
        if candidates.is_empty() {
            self.orphans.remove(&okey);
        }
        if let Some(old) = self.devices.remove(&key) {
            if let Some(imsi) = &old.keys_imsi {
                if self.by_imsi.get(imsi) == Some(&key) {
                    self.by_imsi.remove(imsi);
                }
            }
            if let Some(k) = Self::session_kid(&old) {
                self.orphans.entry((key.0, k)).or_default().push(old);
            }
        }
        if let Some(imsi) = s.keys_imsi.clone() {
            if let Some(prev) = self.by_imsi.insert(imsi, key) {
                if prev != key {
                    self.devices.remove(&prev);
                }
            }
        }
        self.devices.insert(key, s);
        self.stats.rebound += 1;
        Some(r)
    }

    /// RFC 8613 §8.2: "Security context not found", an unprotected 4.01 relayed to the
    /// device, which then authenticates again at once (PROTOCOL.md §4 "Gateway restart").
    fn device_no_context(&mut self, key: DevKey, msg: &Message) {
        let mid = self.rng.gen();
        if let Some(b) = OscoreError::UnknownKid
            .error_response(msg, mid)
            .and_then(|r| r.encode().ok())
        {
            self.push_entry(key, b);
        }
    }

    fn route_gateway(&mut self, addr: SocketAddr, mut p: Pumped, acc: &mut Acc) {
        self.keep_reauth(&mut p);
        for b in p.out {
            self.transmits.push_back((addr, b));
        }
        let Some(gw) = self.gateways.get(&addr) else {
            return;
        };
        let generation = gw.session.generation;
        let imsi = gw.session.imsi.clone();
        let fast = gw.session.last_method == Some(Method::FastReauth);
        let mut again = None;
        let restarted = !gw.link_heard;
        for need in p.needs {
            let owner = Owner::Gateway(addr, generation);
            match need {
                Need::Vector(i) => acc.vectors.push((i, SubscriberKind::Gateway, owner)),
                Need::Resync(i, rand, auts) => acc.resyncs.push((owner, i, rand, auts)),
                Need::Reauth(id) => {
                    let rec = self.take_reauth(&id);
                    if let (Some(gw), Some(now)) = (self.gateways.get_mut(&addr), self.clock) {
                        let mut q = Pumped::default();
                        gw.session.provide_reauth(rec, &mut self.rng);
                        gw.session.pump(now, &mut self.rng, &self.cfg, &mut q);
                        again = Some(q);
                    }
                }
            }
        }
        for f in p.finished {
            match f {
                Finish::Authenticated(_) => {
                    self.stats.authenticated += 1;
                    if fast {
                        self.stats.fast_reauths += 1;
                    }
                    if let Some(g) = self.gateways.get_mut(&addr) {
                        g.link_epoch = g.link_epoch.wrapping_add(1);
                    }
                    if restarted {
                        self.void_handles(addr);
                    }
                    self.start_prefetch(addr, imsi.clone());
                    if let Some(imsi) = imsi.clone() {
                        self.events.push_back(LinkEvent::Authenticated {
                            imsi,
                            kind: SubscriberKind::Gateway,
                            via: None,
                        });
                    }
                }
                Finish::Failed(reason) => {
                    count(&mut self.stats.failures, reason);
                    self.events.push_back(LinkEvent::Failed {
                        imsi: imsi.clone(),
                        kind: SubscriberKind::Gateway,
                        reason,
                    });
                }
                Finish::Expired => {}
            }
        }
        if let Some(q) = again {
            self.route_gateway(addr, q, acc);
        }
    }

    /// §6.2: a gateway authenticated (its new link context is confirmed): the vectors
    /// prefetched for its previous context are dropped and, when
    /// [`LinkConfig::prefetch_vectors`] is on, new ones are asked for (one store round trip)
    /// for its bound devices, except those holding a fast re-authentication context.
    fn start_prefetch(&mut self, addr: SocketAddr, imsi: Option<Imsi>) {
        let Some(gw) = self.gateways.get_mut(&addr) else {
            return;
        };
        gw.prefetched.clear();
        let (Some(gateway), true) = (imsi, self.cfg.prefetch_vectors) else {
            return;
        };
        let generation = gw.session.generation;
        let now = self.clock;
        let mut skip: Vec<Imsi> = self
            .reauth
            .values()
            .filter(|(_, until)| now.is_some_and(|n| n < *until))
            .map(|(r, _)| r.imsi.clone())
            .collect();
        skip.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        skip.dedup();
        let ticket = self.ticket();
        self.tickets.insert(
            ticket,
            Ticket {
                batches: Vec::new(),
                kind: TicketKind::Prefetch(addr, generation),
            },
        );
        self.stats.store_round_trips += 1;
        self.events.push_back(LinkEvent::PrefetchVectors {
            ticket,
            gateway,
            skip,
            limit: self.cfg.prefetch_max_devices,
        });
    }

    /// §6.1: keeps the fast re-authentication contexts a session handed out and forgets
    /// the used ones (memory only, before the message carrying the identity leaves).
    fn keep_reauth(&mut self, p: &mut Pumped) {
        for id in p.forget.drain(..) {
            self.reauth.remove(&id);
        }
        let persist = std::mem::take(&mut p.persist);
        let (Some(now), true) = (self.clock, self.cfg.fast_reauth) else {
            return;
        };
        let life = std::time::Duration::from_secs(self.cfg.eap.reauth_lifetime_secs);
        let until = now.checked_add(life).unwrap_or(now);
        for (id, rec) in persist {
            if self.reauth.len() >= self.cfg.max_reauth_contexts.max(1) {
                self.reauth.retain(|_, (_, t)| now < *t);
            }
            if self.reauth.len() >= self.cfg.max_reauth_contexts.max(1) {
                let oldest = self
                    .reauth
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.reauth.remove(&k);
                }
            }
            self.reauth.insert(id, (rec, until));
        }
    }

    /// §6.1: the context of a re-authentication identity, taken out of memory (a context
    /// is used once; its successor is handed out with AT_NEXT_REAUTH_ID). `None` when
    /// unknown or expired: the peer then runs a full authentication.
    fn take_reauth(&mut self, id: &str) -> Option<ReauthContext> {
        let (rec, until) = self.reauth.remove(id)?;
        let now = self.clock?;
        (self.cfg.fast_reauth && now < until).then_some(rec)
    }

    /// §6.2: a vector prefetched for `device` behind the gateway at `addr`, taken out (never
    /// handed out twice), if one is still fresh.
    fn take_prefetched(&mut self, addr: SocketAddr, device: &Imsi) -> Option<AuthVector> {
        let now = self.clock?;
        let gw = self.gateways.get_mut(&addr)?;
        let (v, until) = gw.prefetched.remove(device)?;
        (now < until).then_some(v)
    }

    fn route_device(&mut self, key: DevKey, mut p: Pumped, acc: &mut Acc) {
        self.keep_reauth(&mut p);
        for b in p.out {
            self.push_entry(key, b);
        }
        let gw_imsi = self.gateway_imsi(key.0);
        let mut remove = false;
        let mut again = None;
        for need in p.needs {
            if let Need::Reauth(id) = need {
                let rec = self.take_reauth(&id);
                if let (Some(s), Some(now)) = (self.devices.get_mut(&key), self.clock) {
                    let mut q = Pumped::default();
                    s.provide_reauth(rec, &mut self.rng);
                    s.pump(now, &mut self.rng, &self.cfg, &mut q);
                    again = Some(q);
                }
                continue;
            }
            if let Need::Vector(imsi) = &need {
                if let Some(v) = self.take_prefetched(key.0, imsi) {
                    // §6.2: the identity step uses the vector and authorization fetched
                    // with the prefetch; the next batch of the run is authorized from the
                    // store before EAP-Success (§6).
                    self.stats.prefetch_hits += 1;
                    if let (Some(s), Some(now)) = (self.devices.get_mut(&key), self.clock) {
                        if let Some(w) = s.wait.as_mut() {
                            w.vector = Some(Ok(VectorInput::from(v)));
                        }
                        let mut q = Pumped::default();
                        let denial = s.try_continue(&mut self.rng);
                        s.pump(now, &mut self.rng, &self.cfg, &mut q);
                        self.audit_denial(key, denial);
                        again = Some(q);
                    }
                    continue;
                }
            }
            let Some(s) = self.devices.get_mut(&key) else {
                break;
            };
            let owner = Owner::Device(key, s.generation);
            match need {
                Need::Reauth(_) => {}
                Need::Vector(imsi) => {
                    acc.vectors
                        .push((imsi.clone(), SubscriberKind::Device, owner));
                    if let Some(w) = s.wait.as_mut() {
                        w.need_authz = true;
                        match &gw_imsi {
                            Some(g) => acc
                                .authz
                                .push(((imsi, g.clone()), AuthzItem::Attach(key, s.generation))),
                            None => w.denial = Some(Some(AuditEvent::UnknownGateway)),
                        }
                    }
                }
                Need::Resync(imsi, rand, auts) => acc.resyncs.push((owner, imsi, rand, auts)),
            }
        }
        for f in p.finished {
            let Some(s) = self.devices.get(&key) else {
                break;
            };
            match f {
                Finish::Authenticated(lifetime) => {
                    let Some(imsi) = s.keys_imsi.clone() else {
                        continue;
                    };
                    let kid = Self::session_kid(s);
                    self.stats.authenticated += 1;
                    if s.last_method == Some(Method::FastReauth) {
                        self.stats.fast_reauths += 1;
                    }
                    if let Some(old) = self.by_imsi.insert(imsi.clone(), key) {
                        if old != key {
                            self.devices.remove(&old);
                        }
                    }
                    // An orphaned context of this device (gateway restart) is superseded.
                    if let Some(kid) = kid {
                        let okey = (key.0, kid);
                        if let Some(v) = self.orphans.get_mut(&okey) {
                            v.retain(|o| o.keys_imsi.as_ref() != Some(&imsi));
                            if v.is_empty() {
                                self.orphans.remove(&okey);
                            }
                        }
                    }
                    let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
                    self.push_outcome(key, OutcomeResult::Authenticated, Some(secs));
                    self.events.push_back(LinkEvent::Authenticated {
                        imsi: imsi.clone(),
                        kind: SubscriberKind::Device,
                        via: gw_imsi.clone(),
                    });
                    self.events.push_back(LinkEvent::Audit(LinkAudit {
                        event: AuditEvent::AuthSucceeded,
                        subject: imsi,
                        gateway: gw_imsi.clone(),
                        detail: "authenticated".into(),
                    }));
                }
                Finish::Failed(reason) => {
                    let imsi = s.imsi.clone();
                    count(&mut self.stats.failures, reason);
                    self.push_outcome(key, OutcomeResult::REFUSED, None);
                    if let (Some(subject), false) =
                        (imsi.clone(), matches!(reason, FailureCause::Refused(_)))
                    {
                        self.events.push_back(LinkEvent::Audit(LinkAudit {
                            event: AuditEvent::AuthFailed,
                            subject,
                            gateway: gw_imsi.clone(),
                            detail: format!("{reason:?}"),
                        }));
                    }
                    self.events.push_back(LinkEvent::Failed {
                        imsi,
                        kind: SubscriberKind::Device,
                        reason,
                    });
                    remove = true;
                }
                Finish::Expired => {
                    if let Some(imsi) = s.keys_imsi.clone() {
                        if self.by_imsi.get(&imsi) == Some(&key) {
                            self.by_imsi.remove(&imsi);
                        }
                    }
                }
            }
        }
        if remove {
            // A device that still holds an earlier confirmed session keeps it.
            if self.devices.get(&key).is_some_and(|s| s.keys.is_none()) {
                self.remove_device(key);
            }
        }
        if let Some(q) = again {
            self.route_device(key, q, acc);
        }
    }

    /// Queues store needs for the next [`Self::poll_event`]; `batch` is a held batch whose
    /// response waits for them.
    fn emit_tickets(&mut self, acc: Acc, batch: Option<u64>) {
        if acc.is_empty() {
            return;
        }
        self.store_acc.append(acc);
        if let Some(b) = batch {
            self.store_batches.push(b);
        }
    }

    /// Turns the queued needs into ONE NeedVectors, ONE Authorize and one NeedResync per
    /// resynchronisation; every held batch that contributed waits for all of them.
    fn emit_stored(&mut self) {
        let acc = std::mem::take(&mut self.store_acc);
        let batches = std::mem::take(&mut self.store_batches);
        if acc.is_empty() {
            return;
        }
        let mut n = 0;
        if !acc.vectors.is_empty() {
            let ticket = self.ticket();
            let (requests, owners) = acc.vectors.into_iter().map(|(i, k, o)| ((i, k), o)).unzip();
            self.tickets.insert(
                ticket,
                Ticket {
                    batches: batches.clone(),
                    kind: TicketKind::Vectors(owners),
                },
            );
            self.events
                .push_back(LinkEvent::NeedVectors { ticket, requests });
            n += 1;
        }
        if !acc.authz.is_empty() {
            let ticket = self.ticket();
            let (pairs, items) = acc.authz.into_iter().unzip();
            self.tickets.insert(
                ticket,
                Ticket {
                    batches: batches.clone(),
                    kind: TicketKind::Authorize(items),
                },
            );
            self.events
                .push_back(LinkEvent::Authorize { ticket, pairs });
            n += 1;
        }
        for (owner, imsi, rand, auts) in acc.resyncs {
            let ticket = self.ticket();
            self.tickets.insert(
                ticket,
                Ticket {
                    batches: batches.clone(),
                    kind: TicketKind::Resync(owner),
                },
            );
            self.events.push_back(LinkEvent::NeedResync {
                ticket,
                imsi,
                rand,
                auts,
            });
            n += 1;
        }
        for b in &batches {
            if let Some(h) = self.held.get_mut(b) {
                h.outstanding += n;
            }
        }
        self.stats.store_round_trips += n as u64;
    }

    fn ticket(&mut self) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        t
    }
}
