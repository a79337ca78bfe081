//! The EAP authenticator side (Capillary's network side, a CoAP client after the trigger),
//! RFC 9820 §3. One [`CoapEapAuthenticator`] serves one device.
//!
//! Drive it like this:
//!
//! 1. Feed the trigger (see [`crate::trigger::is_trigger`]) and every CoAP response from the
//!    device to [`CoapEapAuthenticator::handle_message`]; a response that the driver verified
//!    and decrypted with the OSCORE context goes to
//!    [`CoapEapAuthenticator::handle_oscore_message`].
//! 2. On [`AuthEvent::Triggered`] start the EAP server and pass its first EAP-Request (normally
//!    Request/Identity) to [`CoapEapAuthenticator::send_eap_request`]; on
//!    [`AuthEvent::EapResponse`] feed the EAP server and pass its next output to
//!    `send_eap_request`, [`CoapEapAuthenticator::send_eap_success`] (with the MSK) or
//!    [`CoapEapAuthenticator::send_eap_failure`].
//! 3. [`AuthEvent::TransmitProtected`] must be OSCORE-protected with the context of
//!    [`AuthEvent::KeysReady`] before sending (RFC 9820 §3.3).
//!
//! Reliability: each request is retransmitted by this state machine itself (same Message ID
//! and token, RFC 7252 §4.2 back-off without jitter), for CON and NON requests alike, because
//! RFC 9820 §3.2 lets the flow run over either and EAP leaves retransmission to the
//! authenticator (RFC 3748 §4.3). The capillary-coap reliability layer is therefore not used
//! for these requests; the driver must not add a second retransmission layer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use capillary_coap::{Code, Message, MessageType};
use capillary_secrets::Msk;

use crate::info::{build_payload, CipherSuite, CoapEapInfo, InfoError, Payload};
use crate::keys::{KeyError, OscoreIds, OscoreMaterial};
use crate::trigger::{is_trigger, parse_trigger, ResourcePath, CONTENT_FORMAT_COAP_EAP};
use crate::{check_eap_packet, EAP_FAILURE, EAP_REQUEST, EAP_RESPONSE, EAP_SUCCESS};

/// Configuration of the EAP authenticator.
#[derive(Debug, Clone)]
pub struct AuthenticatorConfig {
    /// RID-C: the OSCORE Recipient ID of the authenticator (RFC 9820 §5.1), at most 7 bytes.
    pub rid_c: Vec<u8>,
    /// Cipher suites offered, in decreasing order of preference (RFC 9820 §6.1).
    pub cipher_suites: Vec<CipherSuite>,
    /// Session-Lifetime sent with EAP-Success (RFC 9820 §5.1), whole seconds.
    pub session_lifetime: Duration,
    /// First CoAP Message ID (inject a random value, RFC 7252 §4.4).
    pub initial_message_id: u16,
    /// Seed of the request tokens (inject a random value, RFC 7252 §5.3.1).
    pub token_seed: u64,
    /// Send Confirmable requests (default) or Non-confirmable ones.
    pub confirmable: bool,
    /// Initial retransmission timeout (RFC 7252 §4.8 ACK_TIMEOUT, 2 s).
    pub ack_timeout: Duration,
    /// Retransmissions before giving up (RFC 7252 §4.8 MAX_RETRANSMIT, 4).
    pub max_retransmit: u8,
    /// Time to wait for a separate response after an Empty ACK.
    pub separate_response_timeout: Duration,
}

impl AuthenticatorConfig {
    /// Defaults: suite `[0]`, 24 h session lifetime, CON requests, RFC 7252 timers.
    pub fn new(rid_c: Vec<u8>, initial_message_id: u16, token_seed: u64) -> Self {
        Self {
            rid_c,
            cipher_suites: vec![CipherSuite::DEFAULT],
            session_lifetime: Duration::from_secs(24 * 3600),
            initial_message_id,
            token_seed,
            confirmable: true,
            ack_timeout: Duration::from_secs(2),
            max_retransmit: 4,
            separate_response_timeout: Duration::from_secs(60),
        }
    }
}

/// Why an authentication ended without success on the authenticator side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// No response after all retransmissions.
    #[error("the EAP peer did not respond")]
    PeerUnresponsive,
    /// The device answered a request with RST.
    #[error("the EAP peer reset the exchange")]
    PeerReset,
    /// The device answered with an error code (e.g. 4.00 when no cipher suite is common).
    #[error("the EAP peer answered {0}")]
    PeerRejected(Code),
    /// A response without the Location-Path of the next resource (RFC 9820 §3.2).
    #[error("response without Location-Path")]
    MissingLocation,
    /// The payload is not `EAP packet ‖ CBOR`.
    #[error("bad CoAP-EAP payload: {0}")]
    BadPayload(InfoError),
    /// The payload is not an EAP-Response.
    #[error("payload is not an EAP-Response")]
    NotAnEapResponse,
    /// The device chose a suite that was not offered, or more than one (RFC 9820 §6.1).
    #[error("the EAP peer chose a cipher suite that was not offered")]
    CipherSuiteMismatch,
    /// The first response carried no RID-I (RFC 9820 §5.1).
    #[error("the first response carried no RID-I")]
    MissingRidI,
    /// RID-I equals RID-C, so the OSCORE IDs would collide.
    #[error("RID-I equals RID-C")]
    IdCollision,
    /// The OSCORE IDs do not fit the suite.
    #[error("OSCORE: {0}")]
    Keys(KeyError),
    /// EAP-Failure was delivered (or could not be delivered) to the device.
    #[error("EAP-Failure sent")]
    EapFailureSent,
}

/// API misuse by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Nothing is waiting for an EAP packet from the caller (no trigger yet, a request is
    /// outstanding, or the session ended).
    #[error("the authenticator is not waiting for an EAP packet")]
    NotWaiting,
    /// The bytes are not one EAP packet of the expected Code.
    #[error("not a single EAP packet of the expected code")]
    BadEapPacket,
    /// EAP-Success before the first exchange negotiated suite and RIDs.
    #[error("EAP-Success before the first exchange")]
    NotNegotiated,
    /// The derivation failed.
    #[error("OSCORE key derivation: {0}")]
    Keys(#[from] KeyError),
    /// A first exchange run by someone else ([`CoapEapAuthenticator::resume_after_identity`],
    /// docs/PROTOCOL.md §5) was refused: the text says why (a request this authenticator
    /// would not have sent, or a response that does not answer it).
    #[error("local identity exchange refused: {0}")]
    LocalIdentity(&'static str),
}

/// Output of the authenticator; handle in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthEvent {
    /// A (new) trigger arrived: start the EAP server; any earlier EAP conversation of this
    /// device is abandoned (an established session stays valid until it expires).
    Triggered {
        /// First resource announced by the device.
        path: ResourcePath,
    },
    /// Send this message as is.
    Transmit(Message),
    /// OSCORE-protect this message with the context of [`AuthEvent::KeysReady`] (its type,
    /// Message ID and token are those of the outer message), then send it. The same Message
    /// ID again is a retransmission.
    TransmitProtected(Message),
    /// Feed this EAP-Response to the EAP server.
    EapResponse(Vec<u8>),
    /// Build the OSCORE context from this before sending the EAP-Success (RFC 9820 §6.2).
    KeysReady(OscoreMaterial),
    /// The device confirmed EAP-Success under OSCORE (RFC 9820 §3.3).
    Authenticated {
        /// Session lifetime that was sent.
        session_lifetime: Duration,
    },
    /// The session lifetime ended without re-authentication: drop the context.
    SessionExpired,
    /// The authentication failed.
    Failed(AuthFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    WaitTrigger,
    WaitCaller,
    WaitResponse,
    Authenticated,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    First,
    Eap,
    Success,
    Failure,
}

#[derive(Debug)]
struct Outstanding {
    msg: Message,
    kind: Kind,
    protected: bool,
    retransmits: u8,
    timeout: Duration,
    next_at: Instant,
    acked: bool,
}

#[derive(Debug, Clone)]
struct Negotiated {
    suite: CipherSuite,
    cs_i: Option<Vec<CipherSuite>>,
    rid_i: Vec<u8>,
}

/// The CoAP-EAP authenticator state machine for one device.
#[derive(Debug)]
pub struct CoapEapAuthenticator {
    cfg: AuthenticatorConfig,
    phase: Phase,
    events: VecDeque<AuthEvent>,
    next_mid: u16,
    token_ctr: u64,
    first_path: Option<ResourcePath>,
    target: Option<ResourcePath>,
    outstanding: Option<Outstanding>,
    nego: Option<Negotiated>,
    last_trigger_mid: Option<u16>,
    /// Message ID and token of the last separate CON response, to ACK its retransmissions.
    last_separate: Option<(u16, Vec<u8>)>,
    /// Message ID and token of the first request of the current run when someone else sent
    /// it ([`CoapEapAuthenticator::handle_local_identity`]), to ignore duplicates.
    local_first: Option<(u16, Vec<u8>)>,
    expires_at: Option<Instant>,
}

/// The EAP Type of Identity (RFC 3748 §5.1).
const EAP_TYPE_IDENTITY: u8 = 1;

/// The first CoAP-EAP request (RFC 9820 §3.2 step 1) exactly as
/// [`CoapEapAuthenticator::send_eap_request`] builds it: a `POST` (CON when `confirmable`) to
/// `target` with Content-Format 269 and the payload `EAP-Request/Identity ‖ offer`, where the
/// EAP-Request/Identity has Identifier `eap_identifier` and no type data.
///
/// For an MTC gateway that answers the identity step locally (docs/PROTOCOL.md §5): `offer`
/// must be the network's offer (cipher suites and RID-C, e.g. from
/// [`crate::CoapEapPeer::authenticator_offer`]), or the network refuses the run
/// ([`CoapEapAuthenticator::resume_after_identity`]).
pub fn identity_request(
    message_id: u16,
    token: Vec<u8>,
    confirmable: bool,
    target: &ResourcePath,
    eap_identifier: u8,
    offer: &CoapEapInfo,
) -> Message {
    let ty = if confirmable {
        MessageType::Con
    } else {
        MessageType::Non
    };
    let mut msg = Message::new(ty, Code::POST, message_id, token);
    msg.set_uri_path(&target.to_path_string());
    msg.set_content_format(CONTENT_FORMAT_COAP_EAP);
    let eap = [EAP_REQUEST, eap_identifier, 0, 5, EAP_TYPE_IDENTITY];
    msg.payload = build_payload(&eap, offer);
    msg
}

impl CoapEapAuthenticator {
    /// An authenticator waiting for a trigger.
    pub fn new(cfg: AuthenticatorConfig) -> Self {
        Self {
            next_mid: cfg.initial_message_id,
            token_ctr: cfg.token_seed,
            cfg,
            phase: Phase::WaitTrigger,
            events: VecDeque::new(),
            first_path: None,
            target: None,
            outstanding: None,
            nego: None,
            last_trigger_mid: None,
            last_separate: None,
            local_first: None,
            expires_at: None,
        }
    }

    /// An authenticator whose first exchange (RFC 9820 §3.2 steps 1–2) someone else ran on
    /// its behalf: an MTC gateway sent the device `sent_request` (the CoAP-EAP `POST` with
    /// EAP-Request/Identity) and the device answered `response` (docs/PROTOCOL.md §5,
    /// batch `kind 3`). See [`CoapEapAuthenticator::handle_local_identity`].
    pub fn resume_after_identity(
        cfg: AuthenticatorConfig,
        now: Instant,
        sent_request: &Message,
        response: &Message,
    ) -> Result<Self, AuthError> {
        let mut a = Self::new(cfg);
        a.handle_local_identity(now, sent_request, response)?;
        Ok(a)
    }

    /// Continues as if this authenticator had sent `sent_request` itself and received
    /// `response` to it (docs/PROTOCOL.md §5): a new run replaces any run in progress (an
    /// established session stays valid until it expires, as with a new trigger).
    ///
    /// `sent_request` must be exactly what [`identity_request`] builds with this
    /// configuration's offer: a CoAP-EAP `POST` (Content-Format 269 or none, no OSCORE) to
    /// the device's first resource, carrying an EAP-Request/Identity and the CoAP-EAP
    /// information with the configured cipher-suite list (same suites, same order) and RID-C
    /// and nothing else, since both are bound into the OSCORE derivation (RFC 9820 §6.2)
    /// and the device must not have been offered anything this authenticator would not
    /// offer. `response` must answer it: a piggybacked ACK with its Message ID and token,
    /// or a separate response with its token (already acknowledged by whoever ran the
    /// exchange); a 2.01 whose EAP-Response/Identity has the request's EAP Identifier.
    ///
    /// Then `response` is processed as the answer to the first request: cipher suite and
    /// RID-I negotiation, Location-Path of the next resource, and
    /// [`AuthEvent::EapResponse`] with the EAP-Response/Identity (feed it to an EAP server
    /// that has not sent anything, with a first Identifier other than the request's). An
    /// error response from the device, or a response that fails the negotiation, ends the
    /// run with [`AuthEvent::Failed`] as on the normal path. Later requests continue the
    /// request's Message IDs (`sent_request`'s + 1, …).
    ///
    /// Returns `Ok(false)` without doing anything when the same request (Message ID and
    /// token) already started the run in progress (a duplicate), `Ok(true)` when the run
    /// started. On `Err` nothing changed.
    pub fn handle_local_identity(
        &mut self,
        now: Instant,
        sent_request: &Message,
        response: &Message,
    ) -> Result<bool, AuthError> {
        let (path, eap_id) = self.check_local_request(sent_request)?;
        let key = (sent_request.message_id, sent_request.token.clone());
        if self.local_first.as_ref() == Some(&key)
            && self.first_path.as_ref() == Some(&path)
            && matches!(
                self.phase,
                Phase::WaitCaller | Phase::WaitResponse | Phase::Authenticated
            )
        {
            return Ok(false);
        }
        let answers = match response.ty {
            MessageType::Ack => {
                response.message_id == sent_request.message_id
                    && response.token == sent_request.token
            }
            MessageType::Con | MessageType::Non => response.token == sent_request.token,
            MessageType::Rst => false,
        };
        if !answers || !response.code.is_response() {
            return Err(AuthError::LocalIdentity(
                "the response does not answer the request",
            ));
        }
        if response.has_option(capillary_coap::msg::option_number::OSCORE) {
            return Err(AuthError::LocalIdentity("the response is OSCORE-protected"));
        }
        if response.code.is_success() {
            if let Ok(p) = Payload::parse(&response.payload) {
                if p.eap_code() == EAP_RESPONSE
                    && (p.eap_identifier() != eap_id || p.eap.get(4) != Some(&EAP_TYPE_IDENTITY))
                {
                    return Err(AuthError::LocalIdentity(
                        "the response is not the EAP-Response/Identity to the request",
                    ));
                }
            }
        }
        self.first_path = Some(path.clone());
        self.target = Some(path);
        self.nego = None;
        self.last_separate = None;
        self.last_trigger_mid = None;
        self.local_first = Some(key);
        self.next_mid = sent_request.message_id.wrapping_add(1);
        self.outstanding = Some(Outstanding {
            msg: sent_request.clone(),
            kind: Kind::First,
            protected: false,
            retransmits: 0,
            timeout: self.cfg.ack_timeout,
            next_at: now + self.cfg.ack_timeout,
            acked: false,
        });
        self.phase = Phase::WaitResponse;
        let before = self.events.len();
        self.on_response(now, response, false);
        // A separate CON response was acknowledged by whoever ran the exchange.
        let mut i = before;
        while i < self.events.len() {
            if matches!(&self.events[i], AuthEvent::Transmit(m) if m.code.is_empty()) {
                self.events.remove(i);
            } else {
                i += 1;
            }
        }
        self.last_separate = None;
        Ok(true)
    }

    /// The checks of [`Self::handle_local_identity`] on the request: the first resource and
    /// the EAP Identifier.
    fn check_local_request(&self, req: &Message) -> Result<(ResourcePath, u8), AuthError> {
        let refuse = |why| Err(AuthError::LocalIdentity(why));
        if req.code != Code::POST || !matches!(req.ty, MessageType::Con | MessageType::Non) {
            return refuse("the request is not a CON or NON POST");
        }
        if is_trigger(req) || req.has_option(capillary_coap::msg::option_number::OSCORE) {
            return refuse("the request is not a CoAP-EAP request");
        }
        if req
            .content_format()
            .is_some_and(|cf| cf != CONTENT_FORMAT_COAP_EAP)
        {
            return refuse("the request has another Content-Format");
        }
        let path = ResourcePath::of_request(req);
        if path.0.is_empty() || path.0.iter().any(String::is_empty) {
            return refuse("the request has no resource path");
        }
        let Ok(payload) = Payload::parse(&req.payload) else {
            return refuse("the request payload is not EAP ‖ CBOR");
        };
        if payload.eap_code() != EAP_REQUEST || payload.eap.get(4) != Some(&EAP_TYPE_IDENTITY) {
            return refuse("the request does not carry EAP-Request/Identity");
        }
        let offer = CoapEapInfo {
            cipher_suites: Some(self.cfg.cipher_suites.clone()),
            rid_c: Some(self.cfg.rid_c.clone()),
            ..CoapEapInfo::default()
        };
        match &payload.info {
            Some(info) if info.cipher_suites != offer.cipher_suites => {
                refuse("the request offers other cipher suites")
            }
            Some(info) if info.rid_c != offer.rid_c => refuse("the request offers another RID-C"),
            Some(info) if *info == offer => Ok((path, payload.eap_identifier())),
            Some(_) => refuse("the request carries other CoAP-EAP information"),
            None => refuse("the request carries no CoAP-EAP information"),
        }
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<AuthEvent> {
        self.events.pop_front()
    }

    /// True once the device confirmed EAP-Success and until the next trigger or expiry.
    pub fn is_authenticated(&self) -> bool {
        self.phase == Phase::Authenticated
    }

    /// Earliest time at which [`CoapEapAuthenticator::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let out = self.outstanding.as_ref().map(|o| o.next_at);
        [out, self.expires_at].into_iter().flatten().min()
    }

    /// Retransmits the outstanding request, gives up after
    /// [`AuthenticatorConfig::max_retransmit`], and reports session expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.expires_at.is_some_and(|t| now >= t) {
            self.expires_at = None;
            if self.phase == Phase::Authenticated {
                self.phase = Phase::WaitTrigger;
            }
            self.events.push_back(AuthEvent::SessionExpired);
        }
        let Some(out) = self.outstanding.as_mut() else {
            return;
        };
        if now < out.next_at {
            return;
        }
        if out.acked || out.retransmits >= self.cfg.max_retransmit {
            let why = if out.kind == Kind::Failure {
                AuthFailure::EapFailureSent
            } else {
                AuthFailure::PeerUnresponsive
            };
            self.fail(why);
            return;
        }
        out.retransmits += 1;
        out.timeout = out.timeout.saturating_mul(2);
        out.next_at = now + out.timeout;
        let msg = out.msg.clone();
        let protected = out.protected;
        self.emit(msg, protected);
    }

    /// Handles the trigger and plain responses from the device.
    pub fn handle_message(&mut self, now: Instant, msg: &Message) {
        if is_trigger(msg) {
            self.on_trigger(msg);
        } else if !msg.code.is_request() {
            self.on_response(now, msg, false);
        }
    }

    /// Handles a response the driver verified and decrypted with the OSCORE context (inner
    /// message, outer type / Message ID / token).
    pub fn handle_oscore_message(&mut self, now: Instant, msg: &Message) {
        if !msg.code.is_request() {
            self.on_response(now, msg, true);
        }
    }

    /// Sends an EAP-Request (RFC 9820 §3.2 steps 1, 3, …). The first one carries the offered
    /// cipher suites and RID-C (RFC 9820 §5.1).
    pub fn send_eap_request(&mut self, now: Instant, eap: &[u8]) -> Result<(), AuthError> {
        self.check_send(eap, EAP_REQUEST)?;
        let first = self.nego.is_none();
        let info = if first {
            CoapEapInfo {
                cipher_suites: Some(self.cfg.cipher_suites.clone()),
                rid_c: Some(self.cfg.rid_c.clone()),
                ..CoapEapInfo::default()
            }
        } else {
            CoapEapInfo::default()
        };
        let kind = if first { Kind::First } else { Kind::Eap };
        self.send_post(now, build_payload(eap, &info), kind, false);
        Ok(())
    }

    /// Derives the OSCORE material from `msk` ([`AuthEvent::KeysReady`]) and sends the
    /// EAP-Success with the Session-Lifetime, to be OSCORE-protected (RFC 9820 §3.3, §6.2).
    pub fn send_eap_success(
        &mut self,
        now: Instant,
        eap: &[u8],
        msk: &Msk,
    ) -> Result<(), AuthError> {
        self.check_send(eap, EAP_SUCCESS)?;
        let nego = self.nego.clone().ok_or(AuthError::NotNegotiated)?;
        let material = OscoreMaterial::derive(
            msk,
            nego.suite,
            Some(&self.cfg.cipher_suites),
            nego.cs_i.as_deref(),
            OscoreIds::for_authenticator(&self.cfg.rid_c, &nego.rid_i),
        )?;
        self.events.push_back(AuthEvent::KeysReady(material));
        let info = CoapEapInfo {
            session_lifetime: Some(self.cfg.session_lifetime.as_secs()),
            ..CoapEapInfo::default()
        };
        self.send_post(now, build_payload(eap, &info), Kind::Success, true);
        Ok(())
    }

    /// Sends EAP-Failure (unprotected: there is no key). The session ends with
    /// [`AuthFailure::EapFailureSent`] once the device answers or retransmissions run out.
    pub fn send_eap_failure(&mut self, now: Instant, eap: &[u8]) -> Result<(), AuthError> {
        self.check_send(eap, EAP_FAILURE)?;
        self.send_post(now, eap.to_vec(), Kind::Failure, false);
        Ok(())
    }

    fn check_send(&self, eap: &[u8], code: u8) -> Result<(), AuthError> {
        if self.phase != Phase::WaitCaller || self.target.is_none() {
            return Err(AuthError::NotWaiting);
        }
        if !check_eap_packet(eap) || eap[0] != code {
            return Err(AuthError::BadEapPacket);
        }
        Ok(())
    }

    fn send_post(&mut self, now: Instant, payload: Vec<u8>, kind: Kind, protected: bool) {
        let ty = if self.cfg.confirmable {
            MessageType::Con
        } else {
            MessageType::Non
        };
        let mid = self.alloc_mid();
        let token = self.alloc_token();
        let mut msg = Message::new(ty, Code::POST, mid, token);
        if let Some(t) = &self.target {
            msg.set_uri_path(&t.to_path_string());
        }
        msg.set_content_format(CONTENT_FORMAT_COAP_EAP);
        msg.payload = payload;
        self.outstanding = Some(Outstanding {
            msg: msg.clone(),
            kind,
            protected,
            retransmits: 0,
            timeout: self.cfg.ack_timeout,
            next_at: now + self.cfg.ack_timeout,
            acked: false,
        });
        self.phase = Phase::WaitResponse;
        self.emit(msg, protected);
    }

    fn on_trigger(&mut self, msg: &Message) {
        if msg.ty == MessageType::Con {
            // RFC 7967 §2: a suppressed response to a CON request still gets an Empty ACK.
            self.events
                .push_back(AuthEvent::Transmit(Message::empty_ack(msg.message_id)));
        }
        let Some(path) = parse_trigger(msg) else {
            return;
        };
        if self.last_trigger_mid == Some(msg.message_id) {
            return;
        }
        self.last_trigger_mid = Some(msg.message_id);
        let same_start = matches!(self.phase, Phase::WaitCaller | Phase::WaitResponse)
            && self.nego.is_none()
            && self.first_path.as_ref() == Some(&path);
        if same_start {
            // The device repeated its trigger: our first request (or its retransmission)
            // answers it.
            return;
        }
        self.first_path = Some(path.clone());
        self.target = Some(path.clone());
        self.outstanding = None;
        self.nego = None;
        self.last_separate = None;
        self.local_first = None;
        self.phase = Phase::WaitCaller;
        self.events.push_back(AuthEvent::Triggered { path });
    }

    fn on_response(&mut self, now: Instant, msg: &Message, protected: bool) {
        let Some(out) = self.outstanding.as_mut() else {
            // A retransmitted separate CON response: ACK it again (RFC 7252 §4.5).
            if msg.ty == MessageType::Con
                && self
                    .last_separate
                    .as_ref()
                    .is_some_and(|(m, t)| *m == msg.message_id && *t == msg.token)
            {
                self.events
                    .push_back(AuthEvent::Transmit(Message::empty_ack(msg.message_id)));
            }
            return;
        };
        let same_mid = msg.message_id == out.msg.message_id;
        match msg.ty {
            MessageType::Rst if same_mid && !protected => {
                self.fail(AuthFailure::PeerReset);
                return;
            }
            MessageType::Ack if same_mid && msg.code.is_empty() && !protected => {
                out.acked = true;
                out.next_at = now + self.cfg.separate_response_timeout;
                return;
            }
            MessageType::Ack if same_mid && msg.token == out.msg.token => {}
            MessageType::Con | MessageType::Non if msg.token == out.msg.token => {
                if msg.ty == MessageType::Con {
                    self.events
                        .push_back(AuthEvent::Transmit(Message::empty_ack(msg.message_id)));
                    self.last_separate = Some((msg.message_id, msg.token.clone()));
                }
            }
            _ => return,
        }
        if !msg.code.is_response() {
            return;
        }
        let kind = out.kind;
        if kind == Kind::Success && !protected && msg.code.is_success() {
            // RFC 9820 §3.3: only an OSCORE-verified answer confirms the new context; a
            // plaintext 2.xx is ignored and the request is retransmitted.
            return;
        }
        self.outstanding = None;
        match kind {
            Kind::Failure => self.fail(AuthFailure::EapFailureSent),
            _ if !msg.code.is_success() => self.fail(AuthFailure::PeerRejected(msg.code)),
            Kind::Success => {
                self.phase = Phase::Authenticated;
                self.expires_at = now.checked_add(self.cfg.session_lifetime);
                self.events.push_back(AuthEvent::Authenticated {
                    session_lifetime: self.cfg.session_lifetime,
                });
            }
            Kind::First | Kind::Eap => self.on_eap_response(msg, kind == Kind::First),
        }
    }

    fn on_eap_response(&mut self, msg: &Message, first: bool) {
        let Some(next) = ResourcePath::of_location(msg) else {
            self.fail(AuthFailure::MissingLocation);
            return;
        };
        let payload = match Payload::parse(&msg.payload) {
            Ok(p) => p,
            Err(e) => {
                self.fail(AuthFailure::BadPayload(e));
                return;
            }
        };
        if payload.eap_code() != EAP_RESPONSE {
            self.fail(AuthFailure::NotAnEapResponse);
            return;
        }
        if first {
            match self.negotiate(payload.info.as_ref()) {
                Ok(n) => self.nego = Some(n),
                Err(f) => {
                    self.fail(f);
                    return;
                }
            }
        }
        self.target = Some(next);
        self.phase = Phase::WaitCaller;
        self.events
            .push_back(AuthEvent::EapResponse(payload.eap.to_vec()));
    }

    /// RFC 9820 §6.1: the device answers with one suite out of the offer; none means the
    /// default suite 0, which must then have been offered.
    fn negotiate(&self, info: Option<&CoapEapInfo>) -> Result<Negotiated, AuthFailure> {
        let cs_i = info.and_then(|i| i.cipher_suites.clone());
        let suite = match cs_i.as_deref() {
            None => CipherSuite::DEFAULT,
            Some([one]) => *one,
            Some(_) => return Err(AuthFailure::CipherSuiteMismatch),
        };
        if !self.cfg.cipher_suites.contains(&suite) {
            return Err(AuthFailure::CipherSuiteMismatch);
        }
        let rid_i = info
            .and_then(|i| i.rid_i.clone())
            .ok_or(AuthFailure::MissingRidI)?;
        if rid_i == self.cfg.rid_c {
            return Err(AuthFailure::IdCollision);
        }
        OscoreIds::for_authenticator(&self.cfg.rid_c, &rid_i)
            .check(suite)
            .map_err(AuthFailure::Keys)?;
        Ok(Negotiated { suite, cs_i, rid_i })
    }

    fn emit(&mut self, msg: Message, protected: bool) {
        self.events.push_back(if protected {
            AuthEvent::TransmitProtected(msg)
        } else {
            AuthEvent::Transmit(msg)
        });
    }

    fn fail(&mut self, why: AuthFailure) {
        self.phase = Phase::Failed;
        self.outstanding = None;
        self.events.push_back(AuthEvent::Failed(why));
    }

    fn alloc_mid(&mut self) -> u16 {
        let m = self.next_mid;
        self.next_mid = self.next_mid.wrapping_add(1);
        m
    }

    /// 4-byte tokens from a counter started at an injected seed (RFC 7252 §5.3.1: tokens
    /// need only be unique per endpoint pair unless off-path attackers matter, which OSCORE
    /// covers for the final exchange).
    fn alloc_token(&mut self) -> Vec<u8> {
        let t = self.token_ctr;
        self.token_ctr = self.token_ctr.wrapping_add(1);
        (t as u32).to_be_bytes().to_vec()
    }
}
