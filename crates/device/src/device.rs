//! The [`Device`] state machine.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use capillary_aka::vector::Usim;
use capillary_coap::msg::option_number;
use capillary_coap::reliability::{
    Dedup, DedupResult, MessageIdAllocator, Outbox, Retransmission, TokenAllocator,
    TransmissionParams,
};
use capillary_coap::{Code, Message, MessageType};
use capillary_coap_eap::{CoapEapPeer, OscoreMaterial, PeerConfig, PeerError, PeerEvent};
use capillary_eap::peer::{
    EapAkaPeer, PeerConfig as AkaPeerConfig, PeerEvent as AkaEvent, PeerFailure as AkaFailure,
};
use capillary_oscore::{ContextParams, OscoreError, RequestBinding, SecurityContext};
use capillary_secrets::{Emsk, Msk, Secret};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::config::{DeviceConfig, MAX_RID_LEN};
use crate::error::DeviceError;

/// Inner Uri-Path of an uplink (device → network), see the gateway contract.
pub const UPLINK_PATH: &str = "u";
/// Inner Uri-Path of a downlink (network → device).
pub const DOWNLINK_PATH: &str = "d";
/// Largest uplink payload accepted by [`Device::send_uplink`].
pub const MAX_UPLINK_PAYLOAD: usize = 1024;
/// Uplinks that may wait for the one in flight (NSTART = 1).
pub const MAX_QUEUED_UPLINKS: usize = 64;

/// Wait before retrying a failed re-authentication while the session is still valid.
pub const REAUTH_RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// EAP Code Request and Type Identity (RFC 3748 §4, §5.1).
const EAP_REQUEST: u8 = 1;
const EAP_TYPE_IDENTITY: u8 = 1;

/// Output of the device; handle in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceEvent {
    /// An (re-)authentication succeeded and its OSCORE context is in use (RFC 9820 §3.3).
    Authenticated {
        /// Lifetime of the session (Session-Lifetime of the EAP-Success, RFC 9820 §5.1).
        session_lifetime: Duration,
    },
    /// The network acknowledged the uplink `id` with an authentic 2.xx.
    UplinkAcked {
        /// As returned by [`Device::send_uplink`].
        id: u64,
    },
    /// The uplink `id` was not delivered (timeout, reset, error answer, session end).
    UplinkFailed {
        /// As returned by [`Device::send_uplink`].
        id: u64,
        /// Why.
        reason: DeviceError,
    },
    /// A verified downlink from the network, delivered once.
    Downlink {
        /// The opaque payload.
        payload: Vec<u8>,
    },
    /// The authentication failed. Without a session, call [`Device::start`] to try again.
    /// A failed *re*-authentication leaves the current session usable; the device retries
    /// by itself every [`REAUTH_RETRY_INTERVAL`] until the session expires.
    Failed(DeviceError),
    /// The session lifetime ended without a successful re-authentication: the OSCORE
    /// context is gone.
    SessionExpired,
}

/// One OSCORE context with the keys it came from.
struct Session {
    generation: u64,
    ctx: SecurityContext,
    material: OscoreMaterial,
    msk: Msk,
    emsk: Emsk,
}

/// An uplink sent and not yet answered.
#[derive(Debug)]
struct InFlight {
    id: u64,
    message_id: u16,
    token: Vec<u8>,
    binding: RequestBinding,
    generation: u64,
    /// Set after an Empty ACK: the separate response must come by then (RFC 7252 §5.2.2).
    separate_deadline: Option<Instant>,
}

/// The verified request a CoAP-EAP response is being produced for.
#[derive(Debug, Clone)]
struct Responding {
    generation: u64,
    binding: RequestBinding,
    request_mid: u16,
}

/// The device: CoAP-EAP peer + EAP-AKA' peer + soft USIM + OSCORE. See the crate docs.
pub struct Device {
    rng: StdRng,
    usim: Option<Usim>,
    config_error: Option<&'static str>,
    aka: EapAkaPeer,
    coap_eap: CoapEapPeer,
    /// Why the EAP-AKA' peer gave up in the current run (reported with the CoAP-EAP failure).
    aka_failure: Option<AkaFailure>,
    /// MSK and EMSK handed to CoAP-EAP, waiting for its `KeysReady`.
    key_stash: Option<(Msk, Emsk)>,
    next_generation: u64,
    /// Context of the authentication in progress (verifies the EAP-Success).
    pending: Option<Session>,
    /// Context of the confirmed session.
    current: Option<Session>,
    /// The context replaced by the last re-keying, kept while uplinks sent under it wait.
    previous: Option<Session>,
    responding: Option<Responding>,
    /// When to retry a failed re-authentication (only while a session is valid).
    reauth_retry_at: Option<Instant>,
    params: TransmissionParams,
    mids: MessageIdAllocator,
    tokens: TokenAllocator,
    outbox: Outbox,
    dedup: Dedup<()>,
    queue: VecDeque<(u64, Vec<u8>)>,
    in_flight: Vec<InFlight>,
    next_uplink_id: u64,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<DeviceEvent>,
    /// An unprotected 4.01 answered an uplink under the current context: the network has no
    /// context for this device (RFC 8613 §8.2), so it authenticates again at once.
    context_lost: bool,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("authenticated", &self.is_authenticated())
            .field("coap_eap", &self.coap_eap)
            .field("in_flight", &self.in_flight.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A device that has not started. Never fails: a configuration that cannot work (an IND
    /// length over 16 bits, a RID-I over 7 bytes) makes [`Device::start`] report
    /// [`DeviceEvent::Failed`] with [`DeviceError::InvalidConfig`].
    pub fn new(cfg: DeviceConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut config_error = None;
        let usim = match Usim::try_new(&cfg.k, &cfg.opc, cfg.usim.clone()) {
            Ok(u) => Some(u),
            Err(_) => {
                config_error = Some("USIM IND length must be at most 16 bits");
                None
            }
        };
        if cfg.rid_i.len() > MAX_RID_LEN {
            config_error = Some("rid_i must be at most 7 bytes");
        }
        let aka = EapAkaPeer::new(AkaPeerConfig {
            permanent_identity: cfg.permanent_identity(),
            network_name: (!cfg.network_name.is_empty()).then(|| cfg.network_name.clone()),
            result_indication: false,
        });
        let first_mid = (rng.next_u32() & 0xffff) as u16;
        let resource_seed = rng.next_u32() & 0x00ff_ffff;
        let mut pcfg = PeerConfig::new(cfg.rid_i.clone(), resource_seed, first_mid);
        pcfg.trigger_interval = cfg.trigger_interval;
        pcfg.max_triggers = cfg.max_triggers;
        pcfg.exchange_timeout = cfg.exchange_timeout;
        let coap_eap = CoapEapPeer::new(pcfg);
        // Own requests use the other half of the Message ID space from the CoAP-EAP peer's
        // responses and triggers (RFC 7252 §4.4: one ID space per endpoint pair).
        let mids = MessageIdAllocator::new(first_mid.wrapping_add(0x8000));
        let tokens = TokenAllocator::new(8, rng.next_u64());
        let params = cfg.transmission;
        Self {
            rng,
            usim,
            config_error,
            aka,
            coap_eap,
            aka_failure: None,
            key_stash: None,
            next_generation: 1,
            pending: None,
            current: None,
            previous: None,
            responding: None,
            reauth_retry_at: None,
            params,
            mids,
            tokens,
            outbox: Outbox::new(params),
            dedup: Dedup::new(&params),
            queue: VecDeque::new(),
            in_flight: Vec::new(),
            next_uplink_id: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            context_lost: false,
        }
    }

    /// Starts (or restarts) CoAP-EAP: the trigger towards the gateway (RFC 9820 §3.2).
    /// An existing session stays usable until it expires or a new one is confirmed.
    pub fn start(&mut self, now: Instant) {
        if let Some(why) = self.config_error {
            self.events
                .push_back(DeviceEvent::Failed(DeviceError::InvalidConfig(why)));
            return;
        }
        self.reauth_retry_at = None;
        self.aka_failure = None;
        self.key_stash = None;
        self.pending = None;
        self.coap_eap.start(now);
        self.pump(now);
    }

    /// One UDP payload from the gateway. Anything that is not a valid CoAP message, does not
    /// verify, or is not expected is dropped; this never panics.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        let Ok(msg) = Message::parse(bytes) else {
            return;
        };
        if !msg.type_code_valid() {
            // RFC 7252 §4.2: a malformed CON is rejected with RST, anything else ignored.
            if msg.ty == MessageType::Con {
                self.send_message(&Message::reset(msg.message_id));
            }
            return;
        }
        match msg.ty {
            MessageType::Rst => self.on_reset(&msg),
            MessageType::Ack if msg.code.is_empty() => self.on_empty_ack(now, &msg),
            MessageType::Ack => {
                if let Some(idx) = self
                    .in_flight
                    .iter()
                    .position(|f| f.message_id == msg.message_id && f.token == msg.token)
                {
                    self.complete_uplink(idx, &msg);
                }
            }
            _ if msg.is_ping() => self.send_message(&Message::reset(msg.message_id)),
            _ if msg.code.is_request() => {
                if msg.has_option(option_number::OSCORE) {
                    self.on_protected_request(now, &msg);
                } else {
                    self.coap_eap.handle_message(now, &msg);
                }
            }
            _ => self.on_separate_response(now, &msg),
        }
        if std::mem::take(&mut self.context_lost) && self.coap_eap.is_authenticated() {
            // RFC 8613 §8.2 "Security context not found" (e.g. the network no longer knows
            // this device after its gateway restarted, docs/PROTOCOL.md §4): the current
            // context stays usable until a new one is confirmed (RFC 9820 §3.4).
            self.start(now);
        }
        self.pump(now);
        self.gc_previous();
        self.dispatch_uplinks(now);
    }

    /// The next UDP payload to send to the gateway.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// When [`Device::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let separate = self.in_flight.iter().filter_map(|f| f.separate_deadline);
        [
            self.coap_eap.poll_timeout(),
            self.outbox.poll_timeout(),
            self.reauth_retry_at,
        ]
        .into_iter()
        .flatten()
        .chain(separate)
        .min()
    }

    /// Timers: CoAP-EAP triggers, exchange timeout, re-authentication and expiry
    /// (RFC 9820 §3.2, §3.4), uplink retransmissions (RFC 7252 §4.2).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.coap_eap.handle_timeout(now);
        self.pump(now);
        if self.reauth_retry_at.is_some_and(|t| now >= t) {
            self.start(now);
        }
        for r in self.outbox.handle_timeout(now) {
            match r {
                Retransmission::Resend { bytes, .. } => self.transmits.push_back(bytes),
                Retransmission::GaveUp { message_id } => {
                    if let Some(idx) = self
                        .in_flight
                        .iter()
                        .position(|f| f.message_id == message_id)
                    {
                        let f = self.in_flight.remove(idx);
                        self.uplink_failed(f.id, DeviceError::Timeout);
                    }
                }
            }
        }
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i]
                .separate_deadline
                .is_some_and(|t| now >= t)
            {
                let f = self.in_flight.remove(i);
                self.uplink_failed(f.id, DeviceError::Timeout);
            } else {
                i += 1;
            }
        }
        self.dedup.expire(now);
        self.gc_previous();
        self.dispatch_uplinks(now);
    }

    /// Queues `payload` as an uplink: an OSCORE-protected CON `POST` with inner Uri-Path
    /// [`UPLINK_PATH`], sent now if nothing else is in flight (NSTART = 1). Returns the id
    /// reported by [`DeviceEvent::UplinkAcked`] or [`DeviceEvent::UplinkFailed`].
    pub fn send_uplink(&mut self, now: Instant, payload: &[u8]) -> Result<u64, DeviceError> {
        if self.current.is_none() {
            return Err(DeviceError::NotAuthenticated);
        }
        if payload.len() > MAX_UPLINK_PAYLOAD {
            return Err(DeviceError::PayloadTooLarge {
                len: payload.len(),
                max: MAX_UPLINK_PAYLOAD,
            });
        }
        if self.queue.len() >= MAX_QUEUED_UPLINKS {
            return Err(DeviceError::QueueFull);
        }
        let id = self.next_uplink_id;
        self.next_uplink_id = self.next_uplink_id.wrapping_add(1);
        self.queue.push_back((id, payload.to_vec()));
        self.dispatch_uplinks(now);
        Ok(id)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<DeviceEvent> {
        self.events.pop_front()
    }

    /// True while a confirmed session (an OSCORE context with the network) exists, including
    /// during a re-authentication.
    pub fn is_authenticated(&self) -> bool {
        self.current.is_some()
    }

    /// **Dangerous**: copies of every key this device holds — for each OSCORE context
    /// (pending, current, previous): MSK, EMSK, OSCORE Master Secret, Master Salt, Sender
    /// Key, Recipient Key, Common IV. Exists only for the key-isolation test (R3: prove the
    /// gateway never holds any of these byte strings). Never log the result.
    pub fn dangerous_export_secrets(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for s in [&self.pending, &self.current, &self.previous]
            .into_iter()
            .flatten()
        {
            out.push(s.msk.expose_array().to_vec());
            out.push(s.emsk.expose_array().to_vec());
            out.push(s.material.master_secret.expose().to_vec());
            out.push(s.material.master_salt.expose().to_vec());
            out.push(s.ctx.sender_key().expose().to_vec());
            out.push(s.ctx.recipient_key().expose().to_vec());
            out.push(s.ctx.common_iv().expose().to_vec());
        }
        if let Some((msk, emsk)) = &self.key_stash {
            out.push(msk.expose_array().to_vec());
            out.push(emsk.expose_array().to_vec());
        }
        out
    }

    // ---- CoAP-EAP and EAP-AKA' -------------------------------------------------------

    /// Handles every event of the CoAP-EAP peer (and, through it, of the EAP-AKA' peer).
    fn pump(&mut self, now: Instant) {
        while let Some(ev) = self.coap_eap.poll_event() {
            match ev {
                PeerEvent::Transmit(m) => self.send_message(&m),
                PeerEvent::TransmitProtected(m) => self.send_protected_response(&m),
                PeerEvent::EapRequest(req) => self.on_eap_request(now, &req),
                PeerEvent::KeysReady(material) => self.on_keys_ready(material),
                PeerEvent::Authenticated {
                    session_lifetime,
                    eap_success,
                } => self.on_authenticated(now, session_lifetime, &eap_success),
                PeerEvent::SessionExpired => self.on_session_expired(),
                PeerEvent::Failed(f) => {
                    let err = match self.aka_failure.take() {
                        Some(r) => DeviceError::EapAka(r),
                        None => DeviceError::CoapEap(f),
                    };
                    self.pending = None;
                    self.key_stash = None;
                    if self.current.is_some() {
                        self.reauth_retry_at = now.checked_add(REAUTH_RETRY_INTERVAL);
                    }
                    self.events.push_back(DeviceEvent::Failed(err));
                }
                _ => {}
            }
        }
    }

    fn on_eap_request(&mut self, now: Instant, req: &[u8]) {
        if req.first() == Some(&EAP_REQUEST) && req.get(4) == Some(&EAP_TYPE_IDENTITY) {
            // A new EAP conversation (also the one of a re-authentication).
            self.aka_failure = None;
            self.key_stash = None;
            self.pending = None;
        }
        self.aka.handle_request(req, &mut self.rng);
        self.drain_aka(now);
        // RFC 9820 §3.3: the EAP-Success arrives under OSCORE keyed from the MSK, so the MSK
        // is needed as soon as the challenge (or re-authentication) is answered.
        if self.key_stash.is_none() && self.pending.is_none() {
            let keys = self.aka.keys_in_progress().map(|(msk, emsk)| {
                (
                    Msk::from_bytes(*msk.expose_array()),
                    Emsk::from_bytes(*emsk.expose_array()),
                )
            });
            if let Some((msk, emsk)) = keys {
                match self.coap_eap.provide_msk(&msk) {
                    Ok(()) => self.key_stash = Some((msk, emsk)),
                    Err(PeerError::Keys(e)) => {
                        self.events
                            .push_back(DeviceEvent::Failed(DeviceError::Keys(e)));
                    }
                    Err(_) => {}
                }
            }
        }
    }

    fn drain_aka(&mut self, now: Instant) {
        while let Some(ev) = self.aka.poll_event() {
            match ev {
                AkaEvent::Send(resp) => {
                    // `NoPendingRequest` only for an answer nobody asked for: drop it.
                    let _ = self.coap_eap.provide_eap_response(now, &resp);
                }
                AkaEvent::RunAka { rand, autn } => {
                    if let Some(usim) = self.usim.as_mut() {
                        let outcome = usim.authenticate(&rand, &autn);
                        self.aka.provide_aka(outcome);
                    }
                }
                // The EAP-Success confirmed the keys already in use (RFC 3748 §4.2).
                AkaEvent::Success { .. } => {}
                AkaEvent::Failure { reason } => self.aka_failure = Some(reason),
                _ => {}
            }
        }
    }

    /// RFC 9820 §6.2 → RFC 8613 §3.2: the OSCORE context of the authentication in progress.
    fn on_keys_ready(&mut self, material: OscoreMaterial) {
        let Some((msk, emsk)) = self.key_stash.take() else {
            return;
        };
        let mut params = ContextParams::new(
            material.master_secret.expose(),
            &material.sender_id,
            &material.recipient_id,
        );
        params.master_salt = material.master_salt.expose();
        match SecurityContext::new(params) {
            Ok(ctx) => {
                let generation = self.next_generation;
                self.next_generation = self.next_generation.wrapping_add(1);
                self.pending = Some(Session {
                    generation,
                    ctx,
                    material,
                    msk,
                    emsk,
                });
            }
            Err(e) => self
                .events
                .push_back(DeviceEvent::Failed(DeviceError::Oscore(e))),
        }
    }

    fn on_authenticated(&mut self, now: Instant, session_lifetime: Duration, eap_success: &[u8]) {
        self.aka.handle_request(eap_success, &mut self.rng);
        self.drain_aka(now);
        self.aka_failure = None;
        if let Some(new) = self.pending.take() {
            if let Some(old) = self.current.replace(new) {
                if let Some(older) = self.previous.replace(old) {
                    self.retire(older.generation);
                }
            }
        }
        self.gc_previous();
        self.events
            .push_back(DeviceEvent::Authenticated { session_lifetime });
    }

    fn on_session_expired(&mut self) {
        self.reauth_retry_at = None;
        for s in [self.current.take(), self.previous.take()]
            .into_iter()
            .flatten()
        {
            self.retire(s.generation);
        }
        while let Some((id, _)) = self.queue.pop_front() {
            self.uplink_failed(id, DeviceError::SessionEnded);
        }
        self.events.push_back(DeviceEvent::SessionExpired);
    }

    // ---- OSCORE -----------------------------------------------------------------------

    fn sessions_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        [&mut self.pending, &mut self.current, &mut self.previous]
            .into_iter()
            .filter_map(Option::as_mut)
    }

    fn session_mut(&mut self, generation: u64) -> Option<&mut Session> {
        self.sessions_mut().find(|s| s.generation == generation)
    }

    /// RFC 8613 §8.2 with every context held (a re-keying may be in progress).
    fn on_protected_request(&mut self, now: Instant, msg: &Message) {
        let mut replay = false;
        let mut verified = None;
        for s in self.sessions_mut() {
            match s.ctx.unprotect_request(msg) {
                Ok((inner, binding)) => {
                    verified = Some((s.generation, inner, binding));
                    break;
                }
                Err(OscoreError::Replay) => replay = true,
                Err(_) => {}
            }
        }
        let Some((generation, inner, binding)) = verified else {
            if replay {
                // An authentic copy of a request already processed: a retransmission
                // (RFC 7252 §4.5) gets the cached response, anything else is dropped.
                if let DedupResult::Duplicate(Some(bytes)) =
                    self.dedup.check_typed(now, &(), msg.message_id, msg.ty)
                {
                    self.transmits.push_back(bytes);
                }
            }
            return;
        };
        // A verified request is fresh (OSCORE replay window), so it is processed whatever
        // the Message ID cache says; the cache only serves its later retransmissions.
        let _ = self.dedup.check_typed(now, &(), msg.message_id, msg.ty);
        let responding = Responding {
            generation,
            binding,
            request_mid: msg.message_id,
        };
        let confirmed = self.pending.as_ref().map(|s| s.generation) != Some(generation);
        if confirmed && inner.uri_path() == [DOWNLINK_PATH] {
            let code = if inner.code == Code::POST {
                self.events.push_back(DeviceEvent::Downlink {
                    payload: inner.payload.clone(),
                });
                Code::CHANGED
            } else {
                Code::METHOD_NOT_ALLOWED
            };
            let mid = self.mids.next_id();
            let resp = Message::response_to(&inner, code, mid);
            self.responding = Some(responding);
            self.send_protected_response(&resp);
            self.responding = None;
        } else {
            self.responding = Some(responding);
            self.coap_eap.handle_oscore_message(now, &inner);
            self.pump(now);
            self.responding = None;
        }
    }

    /// RFC 8613 §8.3 for the request being answered; the bytes are cached for its
    /// retransmissions.
    fn send_protected_response(&mut self, plain: &Message) {
        let Some(r) = self.responding.clone() else {
            return;
        };
        let Some(s) = self.session_mut(r.generation) else {
            return;
        };
        let Ok(protected) = s.ctx.protect_response(plain, &r.binding, false) else {
            return;
        };
        let Ok(bytes) = protected.encode() else {
            return;
        };
        self.dedup
            .record_response(&(), r.request_mid, bytes.clone());
        self.transmits.push_back(bytes);
    }

    fn send_message(&mut self, m: &Message) {
        if let Ok(bytes) = m.encode() {
            self.transmits.push_back(bytes);
        }
    }

    // ---- uplinks ----------------------------------------------------------------------

    fn dispatch_uplinks(&mut self, now: Instant) {
        while self.outbox.can_send() {
            let Some(generation) = self.current.as_ref().map(|s| s.generation) else {
                return;
            };
            let Some((id, payload)) = self.queue.pop_front() else {
                return;
            };
            let message_id = self.mids.next_id();
            let token = self.tokens.next_token();
            let mut req = Message::new(MessageType::Con, Code::POST, message_id, token.clone());
            req.set_uri_path(UPLINK_PATH);
            req.payload = payload;
            let protected = match self.current.as_mut().map(|s| s.ctx.protect_request(&req)) {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    self.uplink_failed(id, DeviceError::Oscore(e));
                    continue;
                }
                None => return,
            };
            let (wire, binding) = protected;
            let bytes = match wire.encode() {
                Ok(b) => b,
                Err(e) => {
                    self.uplink_failed(id, DeviceError::Oscore(OscoreError::Encode(e)));
                    continue;
                }
            };
            let jitter: f64 = self.rng.gen();
            self.outbox.send_con(now, bytes.clone(), message_id, jitter);
            self.in_flight.push(InFlight {
                id,
                message_id,
                token,
                binding,
                generation,
                separate_deadline: None,
            });
            self.transmits.push_back(bytes);
        }
    }

    /// A response (piggybacked or separate) to the uplink at `idx`. Returns whether it was
    /// accepted (authentic, or an unprotected error).
    fn complete_uplink(&mut self, idx: usize, msg: &Message) -> bool {
        if idx >= self.in_flight.len() {
            return false;
        }
        let mut f = self.in_flight.remove(idx);
        let outcome = if msg.has_option(option_number::OSCORE) {
            match self.session_mut(f.generation) {
                Some(s) => match s.ctx.unprotect_response(msg, &mut f.binding) {
                    Ok(inner) if inner.code.is_success() => Some(None),
                    Ok(inner) => Some(Some(DeviceError::Rejected(inner.code))),
                    Err(_) => None,
                },
                None => Some(Some(DeviceError::SessionEnded)),
            }
        } else if msg.code.is_success() {
            // An unprotected 2.xx cannot come from the network's OSCORE endpoint.
            None
        } else {
            if msg.code == Code::UNAUTHORIZED
                && self.current.as_ref().map(|s| s.generation) == Some(f.generation)
            {
                self.context_lost = true;
            }
            Some(Some(DeviceError::Rejected(msg.code)))
        };
        match outcome {
            None => {
                self.in_flight.insert(idx, f);
                false
            }
            Some(result) => {
                self.outbox.cancel(f.message_id);
                match result {
                    None => self.events.push_back(DeviceEvent::UplinkAcked { id: f.id }),
                    Some(reason) => self.uplink_failed(f.id, reason),
                }
                true
            }
        }
    }

    /// Empty ACK: the network will answer separately (RFC 7252 §5.2.2).
    fn on_empty_ack(&mut self, now: Instant, msg: &Message) {
        if !self.outbox.handle_incoming_ack_or_rst(msg.message_id) {
            return;
        }
        let deadline = now.checked_add(self.params.exchange_lifetime());
        if let Some(f) = self
            .in_flight
            .iter_mut()
            .find(|f| f.message_id == msg.message_id)
        {
            f.separate_deadline = deadline.or(Some(now));
        }
    }

    fn on_reset(&mut self, msg: &Message) {
        if !self.outbox.handle_incoming_ack_or_rst(msg.message_id) {
            return;
        }
        if let Some(idx) = self
            .in_flight
            .iter()
            .position(|f| f.message_id == msg.message_id)
        {
            let f = self.in_flight.remove(idx);
            self.uplink_failed(f.id, DeviceError::Reset);
        }
    }

    /// A separate response (CON or NON) to an uplink, matched by token (RFC 7252 §5.3.2).
    fn on_separate_response(&mut self, now: Instant, msg: &Message) {
        let idx = self.in_flight.iter().position(|f| f.token == msg.token);
        let accepted = match idx {
            Some(idx) => self.complete_uplink(idx, msg),
            None => false,
        };
        if msg.ty != MessageType::Con {
            return;
        }
        if accepted {
            let ack = Message::empty_ack(msg.message_id);
            let _ = self.dedup.check(now, &(), msg.message_id);
            if let Ok(bytes) = ack.encode() {
                self.dedup
                    .record_response(&(), msg.message_id, bytes.clone());
                self.transmits.push_back(bytes);
            }
        } else if idx.is_none() {
            // Unknown token: an answer to something already completed gets its cached ACK,
            // anything else is rejected (RFC 7252 §4.2).
            match self.dedup.check(now, &(), msg.message_id) {
                DedupResult::Duplicate(Some(bytes)) => self.transmits.push_back(bytes),
                DedupResult::Duplicate(None) => {}
                DedupResult::New => {
                    if let Ok(bytes) = Message::reset(msg.message_id).encode() {
                        self.dedup
                            .record_response(&(), msg.message_id, bytes.clone());
                        self.transmits.push_back(bytes);
                    }
                }
            }
        }
    }

    fn uplink_failed(&mut self, id: u64, reason: DeviceError) {
        self.events
            .push_back(DeviceEvent::UplinkFailed { id, reason });
    }

    /// Ends every uplink that depends on the context `generation` (which is being dropped).
    fn retire(&mut self, generation: u64) {
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].generation == generation {
                let f = self.in_flight.remove(i);
                self.outbox.cancel(f.message_id);
                self.uplink_failed(f.id, DeviceError::SessionEnded);
            } else {
                i += 1;
            }
        }
    }

    /// Drops the previous context once no uplink waits for an answer under it (re-keying,
    /// RFC 9820 §3.4 / PROTOCOL.md §3).
    fn gc_previous(&mut self) {
        let Some(g) = self.previous.as_ref().map(|s| s.generation) else {
            return;
        };
        if !self.in_flight.iter().any(|f| f.generation == g) {
            self.previous = None;
        }
    }
}
