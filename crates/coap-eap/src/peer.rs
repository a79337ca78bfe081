//! The EAP peer side (the IoT device, a CoAP server after the trigger), RFC 9820 §3.
//!
//! Drive it like this:
//!
//! 1. [`CoapEapPeer::start`] queues the trigger ([`PeerEvent::Transmit`]).
//! 2. Feed every CoAP request that reaches the device to [`CoapEapPeer::handle_message`]; feed
//!    a request that the driver has verified and decrypted with the OSCORE context of
//!    [`PeerEvent::KeysReady`] to [`CoapEapPeer::handle_oscore_message`] instead.
//! 3. On [`PeerEvent::EapRequest`] run the EAP peer method and answer with
//!    [`CoapEapPeer::provide_eap_response`]. As soon as the method has an MSK, call
//!    [`CoapEapPeer::provide_msk`]: the peer emits [`PeerEvent::KeysReady`], and the driver can
//!    then verify the OSCORE-protected EAP-Success (RFC 9820 §3.3).
//! 4. [`PeerEvent::TransmitProtected`] must be OSCORE-protected before sending.
//! 5. Call [`CoapEapPeer::handle_timeout`] when [`CoapEapPeer::poll_timeout`] is reached.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use capillary_coap::{Code, Message, MessageType};
use capillary_secrets::Msk;

use crate::info::{build_payload, CipherSuite, CoapEapInfo, Payload};
use crate::keys::{KeyError, OscoreIds, OscoreMaterial};
use crate::trigger::{build_trigger, ResourcePath, CONTENT_FORMAT_COAP_EAP, KNOWN_REQUEST_OPTIONS};
use crate::{check_eap_packet, EAP_FAILURE, EAP_REQUEST, EAP_SUCCESS};

/// Configuration of the EAP peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// First segment of the resources this device creates (`/a/<n>`).
    pub resource_prefix: String,
    /// Number of the first resource; inject a random value so that resources of an earlier run
    /// are not reused.
    pub resource_seed: u32,
    /// Cipher suites this device supports (any order). Default `[0]` (RFC 9820 §6.1).
    pub cipher_suites: Vec<CipherSuite>,
    /// RID-I: the OSCORE Recipient ID this device chooses (RFC 9820 §5.1), at most 7 bytes.
    pub rid_i: Vec<u8>,
    /// First CoAP Message ID (inject a random value, RFC 7252 §4.4).
    pub initial_message_id: u16,
    /// Time to wait for the first request after a trigger before sending it again.
    pub trigger_interval: Duration,
    /// Triggers sent before giving up with [`PeerFailure::AuthenticatorUnresponsive`].
    pub max_triggers: u32,
    /// Time to wait for the next request (and for the caller's EAP response) during an
    /// authentication before giving up with [`PeerFailure::Timeout`].
    pub exchange_timeout: Duration,
    /// Session lifetime assumed when the EAP-Success carries no Session-Lifetime (Capillary
    /// policy; RFC 9820 leaves it to the deployment).
    pub default_session_lifetime: Duration,
    /// Re-authenticate this long before the session lifetime ends (RFC 9820 §3.4).
    pub reauth_margin: Duration,
}

impl PeerConfig {
    /// Defaults: resources `/a/<seed>…`, suite `[0]`, trigger every 10 s up to 4 times,
    /// 60 s exchange timeout, 8 h default lifetime, re-authentication 5 min before the end.
    pub fn new(rid_i: Vec<u8>, resource_seed: u32, initial_message_id: u16) -> Self {
        Self {
            resource_prefix: "a".into(),
            resource_seed,
            cipher_suites: vec![CipherSuite::DEFAULT],
            rid_i,
            initial_message_id,
            trigger_interval: Duration::from_secs(10),
            max_triggers: 4,
            exchange_timeout: Duration::from_secs(60),
            default_session_lifetime: Duration::from_secs(8 * 3600),
            reauth_margin: Duration::from_secs(300),
        }
    }
}

/// Why an authentication of the peer ended without success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerFailure {
    /// No request arrived after [`PeerConfig::max_triggers`] triggers.
    #[error("the EAP authenticator did not answer the trigger")]
    AuthenticatorUnresponsive,
    /// No request (or no caller answer) within [`PeerConfig::exchange_timeout`].
    #[error("the CoAP-EAP exchange timed out")]
    Timeout,
    /// The authenticator sent EAP-Failure.
    #[error("the EAP authenticator sent EAP-Failure")]
    EapFailure,
    /// None of the offered cipher suites is supported here (RFC 9820 §6.1).
    #[error("no common cipher suite")]
    NoCommonCipherSuite,
    /// The first request carried no RID-C (RFC 9820 §5.1).
    #[error("the first request carried no RID-C")]
    MissingRidC,
    /// RID-C equals this device's RID-I, so the OSCORE IDs would collide.
    #[error("RID-C equals RID-I")]
    IdCollision,
    /// The OSCORE material could not be derived.
    #[error("OSCORE key derivation: {0}")]
    Keys(#[from] KeyError),
}

/// API misuse by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No EAP request is waiting for an answer.
    #[error("no EAP request is waiting for a response")]
    NoPendingRequest,
    /// The bytes are not one EAP packet (Length field ≠ length).
    #[error("not a single EAP packet")]
    BadEapPacket,
    /// The MSK was given before the first exchange (cipher suite, RIDs) or twice.
    #[error("the MSK cannot be used in this state")]
    MskNotExpected,
    /// The derivation failed.
    #[error("OSCORE key derivation: {0}")]
    Keys(#[from] KeyError),
}

/// Output of the peer; handle in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum PeerEvent {
    /// Send this message as is.
    Transmit(Message),
    /// OSCORE-protect this message with the context of [`PeerEvent::KeysReady`] (its type,
    /// Message ID and token are those of the outer message), then send it.
    TransmitProtected(Message),
    /// Run the EAP peer method on this EAP-Request, then call
    /// [`CoapEapPeer::provide_eap_response`].
    EapRequest(Vec<u8>),
    /// Build the OSCORE context from this (RFC 9820 §6.2); keep any older context until
    /// [`PeerEvent::Authenticated`].
    KeysReady(OscoreMaterial),
    /// EAP-Success arrived OSCORE-protected and was confirmed (RFC 9820 §3.3).
    Authenticated {
        /// Lifetime of the new session (Session-Lifetime, or the configured default).
        session_lifetime: Duration,
        /// The EAP-Success packet, for the EAP peer method to complete on (RFC 3748 §4.2).
        eap_success: Vec<u8>,
    },
    /// The session lifetime ended before a re-authentication succeeded: drop the context.
    SessionExpired,
    /// The authentication failed; call [`CoapEapPeer::start`] to try again.
    Failed(PeerFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Triggering,
    Exchanging,
    Authenticated,
    Failed,
}

/// A request answered last, with its cached response (RFC 9820 §3.2: answer retransmissions).
#[derive(Debug)]
struct Served {
    path: ResourcePath,
    message_id: u16,
    token: Vec<u8>,
    response: Message,
    protected: bool,
}

/// A request waiting for the caller's EAP response.
#[derive(Debug)]
struct Pending {
    path: ResourcePath,
    header: Message,
    first: bool,
}

/// The outcome of the cipher suite and RID negotiation of the first exchange.
#[derive(Debug, Clone)]
struct Negotiated {
    suite: CipherSuite,
    cs_c: Option<Vec<CipherSuite>>,
    rid_c: Vec<u8>,
}

/// The CoAP-EAP peer (IoT device) state machine.
#[derive(Debug)]
pub struct CoapEapPeer {
    cfg: PeerConfig,
    phase: Phase,
    events: VecDeque<PeerEvent>,
    next_mid: u16,
    resource_counter: u32,
    first_path: Option<ResourcePath>,
    next_path: Option<ResourcePath>,
    last: Option<Served>,
    pending: Option<Pending>,
    nego: Option<Negotiated>,
    keys_ready: bool,
    triggers_sent: u32,
    deadline: Option<Instant>,
    reauth_at: Option<Instant>,
    expires_at: Option<Instant>,
}

impl CoapEapPeer {
    /// A peer that has not started.
    pub fn new(cfg: PeerConfig) -> Self {
        Self {
            next_mid: cfg.initial_message_id,
            resource_counter: cfg.resource_seed,
            cfg,
            phase: Phase::Idle,
            events: VecDeque::new(),
            first_path: None,
            next_path: None,
            last: None,
            pending: None,
            nego: None,
            keys_ready: false,
            triggers_sent: 0,
            deadline: None,
            reauth_at: None,
            expires_at: None,
        }
    }

    /// Starts (or restarts) an authentication: a fresh first resource and the trigger
    /// (RFC 9820 §3.2 step 0). An existing session stays valid until it expires.
    pub fn start(&mut self, now: Instant) {
        let first = self.new_path();
        self.first_path = Some(first.clone());
        self.next_path = Some(first);
        self.last = None;
        self.pending = None;
        self.nego = None;
        self.keys_ready = false;
        self.triggers_sent = 0;
        self.reauth_at = None;
        self.phase = Phase::Triggering;
        self.send_trigger(now);
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// True once EAP-Success was confirmed and until the next start or expiry.
    pub fn is_authenticated(&self) -> bool {
        self.phase == Phase::Authenticated
    }

    /// The CoAP-EAP information the authenticator offered in the first request of the
    /// current (or last) exchange: its cipher-suite list exactly as sent (`None` when it sent
    /// none) and its RID-C (RFC 9820 §5.1). `None` before the first request arrived.
    ///
    /// Carries no secret. An MTC gateway that authenticated itself with the network learns
    /// here what the network offers, so that it can send its devices the same first request
    /// (docs/PROTOCOL.md §5).
    pub fn authenticator_offer(&self) -> Option<CoapEapInfo> {
        self.nego.as_ref().map(|n| CoapEapInfo {
            cipher_suites: n.cs_c.clone(),
            rid_c: Some(n.rid_c.clone()),
            ..CoapEapInfo::default()
        })
    }

    /// Earliest time at which [`CoapEapPeer::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let phase_deadline = match self.phase {
            Phase::Triggering | Phase::Exchanging => self.deadline,
            _ => None,
        };
        [phase_deadline, self.reauth_at, self.expires_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Handles expired timers: trigger retransmission, exchange timeout, re-authentication
    /// (RFC 9820 §3.4) and session expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.expires_at.is_some_and(|t| now >= t) {
            self.expires_at = None;
            self.reauth_at = None;
            if self.phase == Phase::Authenticated {
                self.phase = Phase::Idle;
            }
            self.events.push_back(PeerEvent::SessionExpired);
        }
        if self.reauth_at.is_some_and(|t| now >= t) && self.phase == Phase::Authenticated {
            self.start(now);
            return;
        }
        if self.deadline.is_none_or(|t| now < t) {
            return;
        }
        match self.phase {
            Phase::Triggering if self.triggers_sent < self.cfg.max_triggers => {
                self.send_trigger(now);
            }
            Phase::Triggering => self.fail(PeerFailure::AuthenticatorUnresponsive),
            Phase::Exchanging => self.fail(PeerFailure::Timeout),
            _ => self.deadline = None,
        }
    }

    /// Handles a plain CoAP message addressed to the device. Responses, ACKs and RSTs are
    /// ignored (the device is the CoAP server of the exchange).
    pub fn handle_message(&mut self, now: Instant, msg: &Message) {
        self.handle_request(now, msg, false);
    }

    /// Handles a request that the driver verified and decrypted with the OSCORE context of
    /// [`PeerEvent::KeysReady`] (inner message, outer type / Message ID / token).
    pub fn handle_oscore_message(&mut self, now: Instant, msg: &Message) {
        self.handle_request(now, msg, true);
    }

    /// The EAP-Response to the last [`PeerEvent::EapRequest`]; sent piggybacked in a
    /// 2.01 (Created) with the Location-Path of the next resource (RFC 9820 §3.2).
    pub fn provide_eap_response(&mut self, now: Instant, eap: &[u8]) -> Result<(), PeerError> {
        if !check_eap_packet(eap) {
            return Err(PeerError::BadEapPacket);
        }
        let pending = self.pending.take().ok_or(PeerError::NoPendingRequest)?;
        let info = if pending.first {
            let suite = self.nego.as_ref().map_or(CipherSuite::DEFAULT, |n| n.suite);
            CoapEapInfo {
                cipher_suites: Some(vec![suite]),
                rid_i: Some(self.cfg.rid_i.clone()),
                ..CoapEapInfo::default()
            }
        } else {
            CoapEapInfo::default()
        };
        let mid = self.alloc_mid();
        let mut resp = Message::response_to(&pending.header, Code::CREATED, mid);
        let next = self.new_path();
        resp.set_location_path(&next.to_path_string());
        resp.set_content_format(CONTENT_FORMAT_COAP_EAP);
        resp.payload = build_payload(eap, &info);
        self.last = Some(Served {
            path: pending.path,
            message_id: pending.header.message_id,
            token: pending.header.token.clone(),
            response: resp.clone(),
            protected: false,
        });
        self.next_path = Some(next);
        self.deadline = Some(now + self.cfg.exchange_timeout);
        self.events.push_back(PeerEvent::Transmit(resp));
        Ok(())
    }

    /// The MSK exported by the EAP peer method (RFC 3748 §7.10): derives the OSCORE material
    /// (RFC 9820 §6.2) and emits [`PeerEvent::KeysReady`].
    pub fn provide_msk(&mut self, msk: &Msk) -> Result<(), PeerError> {
        let nego = match (&self.nego, self.keys_ready, self.phase) {
            (Some(n), false, Phase::Exchanging) => n.clone(),
            _ => return Err(PeerError::MskNotExpected),
        };
        let cs_i = [nego.suite];
        let material = OscoreMaterial::derive(
            msk,
            nego.suite,
            nego.cs_c.as_deref(),
            Some(&cs_i),
            OscoreIds::for_peer(&nego.rid_c, &self.cfg.rid_i),
        )?;
        self.keys_ready = true;
        self.events.push_back(PeerEvent::KeysReady(material));
        Ok(())
    }

    fn handle_request(&mut self, now: Instant, msg: &Message, protected: bool) {
        if !msg.code.is_request() || !matches!(msg.ty, MessageType::Con | MessageType::Non) {
            return;
        }
        let path = ResourcePath::of_request(msg);
        // A retransmission of the request answered last (same Message ID, or the same
        // resource again): answer from the cache, never process twice.
        if let Some(last) = &self.last {
            let same_exchange = msg.message_id == last.message_id && msg.token == last.token;
            if same_exchange || path == last.path {
                if protected == last.protected {
                    let resp = if same_exchange {
                        last.response.clone()
                    } else {
                        let mut r = last.response.clone();
                        let hdr = Message::response_to(msg, r.code, 0);
                        r.ty = hdr.ty;
                        r.token = hdr.token;
                        r.message_id = if hdr.ty == MessageType::Ack {
                            hdr.message_id
                        } else {
                            self.alloc_mid()
                        };
                        r
                    };
                    self.emit_response(resp, protected);
                }
                return;
            }
        }
        if self.pending.as_ref().is_some_and(|p| p.path == path) {
            // Retransmission while the EAP method is still working: the answer follows.
            return;
        }
        let expected = matches!(self.phase, Phase::Triggering | Phase::Exchanging)
            && self.pending.is_none()
            && self.next_path.as_ref() == Some(&path);
        if !expected {
            self.reply(msg, Code::NOT_FOUND, protected);
            return;
        }
        if !msg
            .unknown_critical_options(&KNOWN_REQUEST_OPTIONS)
            .is_empty()
        {
            self.reply(msg, Code::BAD_OPTION, protected);
            return;
        }
        if msg.code != Code::POST {
            self.reply(msg, Code::METHOD_NOT_ALLOWED, protected);
            return;
        }
        if msg
            .content_format()
            .is_some_and(|cf| cf != CONTENT_FORMAT_COAP_EAP)
        {
            self.reply(msg, Code::UNSUPPORTED_CONTENT_FORMAT, protected);
            return;
        }
        let payload = match Payload::parse(&msg.payload) {
            Ok(p) => p,
            Err(_) => {
                self.reply(msg, Code::BAD_REQUEST, protected);
                return;
            }
        };
        match payload.eap_code() {
            EAP_REQUEST if !protected => self.on_eap_request(now, msg, path, &payload),
            EAP_SUCCESS if protected && self.keys_ready => {
                let eap = payload.eap.to_vec();
                self.on_success(now, msg, path, payload.info.as_ref(), eap)
            }
            // RFC 9820 §3.3: EAP-Success is only accepted under the new OSCORE context.
            EAP_SUCCESS => self.reply(msg, Code::UNAUTHORIZED, protected),
            EAP_FAILURE => self.on_failure(msg, path, protected),
            _ => self.reply(msg, Code::BAD_REQUEST, protected),
        }
    }

    fn on_eap_request(
        &mut self,
        now: Instant,
        msg: &Message,
        path: ResourcePath,
        payload: &Payload<'_>,
    ) {
        let first = self.last.is_none() && self.first_path.as_ref() == Some(&path);
        if first {
            match self.negotiate(payload.info.as_ref()) {
                Ok(n) => self.nego = Some(n),
                Err(f) => {
                    self.reply(msg, Code::BAD_REQUEST, false);
                    self.fail(f);
                    return;
                }
            }
        }
        self.phase = Phase::Exchanging;
        self.deadline = Some(now + self.cfg.exchange_timeout);
        let header = Message::new(msg.ty, msg.code, msg.message_id, msg.token.clone());
        self.pending = Some(Pending {
            path,
            header,
            first,
        });
        self.events
            .push_back(PeerEvent::EapRequest(payload.eap.to_vec()));
    }

    /// RFC 9820 §6.1: pick the authenticator's most preferred suite that this device supports;
    /// no list means the default suite 0.
    fn negotiate(&self, info: Option<&CoapEapInfo>) -> Result<Negotiated, PeerFailure> {
        let cs_c = info.and_then(|i| i.cipher_suites.clone());
        let offered = cs_c.clone().unwrap_or_else(|| vec![CipherSuite::DEFAULT]);
        let suite = offered
            .iter()
            .copied()
            .find(|s| self.cfg.cipher_suites.contains(s))
            .ok_or(PeerFailure::NoCommonCipherSuite)?;
        let rid_c = info
            .and_then(|i| i.rid_c.clone())
            .ok_or(PeerFailure::MissingRidC)?;
        if rid_c == self.cfg.rid_i {
            return Err(PeerFailure::IdCollision);
        }
        OscoreIds::for_peer(&rid_c, &self.cfg.rid_i).check(suite)?;
        Ok(Negotiated { suite, cs_c, rid_c })
    }

    fn on_success(
        &mut self,
        now: Instant,
        msg: &Message,
        path: ResourcePath,
        info: Option<&CoapEapInfo>,
        eap: Vec<u8>,
    ) {
        let lifetime = info
            .and_then(|i| i.session_lifetime)
            .map_or(self.cfg.default_session_lifetime, Duration::from_secs);
        let resp = self.remember(msg, path, Code::CHANGED, true);
        self.emit_response(resp, true);
        self.phase = Phase::Authenticated;
        self.next_path = None;
        self.deadline = None;
        self.expires_at = now.checked_add(lifetime);
        // Never closer to the end than half the lifetime: a short lifetime must not turn into
        // an immediate re-authentication after every success.
        let margin = self.cfg.reauth_margin.min(lifetime / 2);
        self.reauth_at = now.checked_add(lifetime.saturating_sub(margin));
        self.events.push_back(PeerEvent::Authenticated {
            session_lifetime: lifetime,
            eap_success: eap,
        });
    }

    fn on_failure(&mut self, msg: &Message, path: ResourcePath, protected: bool) {
        let resp = self.remember(msg, path, Code::CHANGED, protected);
        self.emit_response(resp, protected);
        self.next_path = None;
        self.fail(PeerFailure::EapFailure);
    }

    /// Builds a final (no Location-Path) response and caches it.
    fn remember(
        &mut self,
        msg: &Message,
        path: ResourcePath,
        code: Code,
        protected: bool,
    ) -> Message {
        let mid = self.alloc_mid();
        let resp = Message::response_to(msg, code, mid);
        self.last = Some(Served {
            path,
            message_id: msg.message_id,
            token: msg.token.clone(),
            response: resp.clone(),
            protected,
        });
        resp
    }

    fn reply(&mut self, msg: &Message, code: Code, protected: bool) {
        let mid = self.alloc_mid();
        let resp = Message::response_to(msg, code, mid);
        self.emit_response(resp, protected);
    }

    fn emit_response(&mut self, resp: Message, protected: bool) {
        self.events.push_back(if protected {
            PeerEvent::TransmitProtected(resp)
        } else {
            PeerEvent::Transmit(resp)
        });
    }

    fn send_trigger(&mut self, now: Instant) {
        let Some(first) = self.first_path.clone() else {
            return;
        };
        let mid = self.alloc_mid();
        let trigger = build_trigger(mid, Vec::new(), &first);
        self.triggers_sent = self.triggers_sent.saturating_add(1);
        self.deadline = Some(now + self.cfg.trigger_interval);
        self.events.push_back(PeerEvent::Transmit(trigger));
    }

    fn fail(&mut self, why: PeerFailure) {
        self.phase = Phase::Failed;
        self.pending = None;
        self.deadline = None;
        self.events.push_back(PeerEvent::Failed(why));
    }

    fn new_path(&mut self) -> ResourcePath {
        let n = self.resource_counter;
        self.resource_counter = self.resource_counter.wrapping_add(1);
        ResourcePath(vec![self.cfg.resource_prefix.clone(), n.to_string()])
    }

    fn alloc_mid(&mut self) -> u16 {
        let m = self.next_mid;
        self.next_mid = self.next_mid.wrapping_add(1);
        m
    }
}
