//! One CoAP-EAP authenticator (RFC 9820) plus one EAP-AKA' server (RFC 9048) and the OSCORE
//! contexts that result, for one gateway (direct) or one device (relayed).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use capillary_coap::reliability::{MessageIdAllocator, Outbox, TokenAllocator};
use capillary_coap::Message;
use capillary_coap_eap::{
    AuthEvent, AuthFailure, AuthenticatorConfig, CoapEapAuthenticator, OscoreMaterial,
};
use capillary_eap::eap;
use capillary_eap::server::{
    EapAkaServer, FailureReason, Method, ReauthContext, RejectReason, ServerEvent, VectorInput,
};
use capillary_oscore::{ContextParams, RequestBinding, SecurityContext};
use capillary_secrets::{Auts, Emsk, Imsi, Msk, Rand, Secret};
use capillary_store::AuditEvent;
use rand::rngs::StdRng;
use rand::Rng;

use super::{FailureCause, LinkConfig};

/// The keys of one confirmed (or about to be confirmed) authentication.
pub(crate) struct Keys {
    pub ctx: SecurityContext,
    pub msk: Msk,
    pub emsk: Emsk,
    pub master_secret: [u8; 16],
    pub master_salt: [u8; 8],
}

impl Drop for Keys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.master_secret);
        zeroize::Zeroize::zeroize(&mut self.master_salt);
    }
}

impl core::fmt::Debug for Keys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn export(&self, out: &mut Vec<Vec<u8>>) {
        out.push(self.msk.expose_array().to_vec());
        out.push(self.emsk.expose_array().to_vec());
        out.push(self.master_secret.to_vec());
        out.push(self.master_salt.to_vec());
        out.push(self.ctx.sender_key().expose().to_vec());
        out.push(self.ctx.recipient_key().expose().to_vec());
        out.push(self.ctx.common_iv().expose().to_vec());
    }
}

/// What a session waits for from the store.
#[derive(Debug, Default)]
pub(crate) struct StoreWait {
    pub vector: Option<Result<VectorInput, RejectReason>>,
    pub need_authz: bool,
    pub denial: Option<Option<AuditEvent>>,
}

/// A store request raised while pumping a session.
#[derive(Debug)]
pub(crate) enum Need {
    Vector(Imsi),
    Resync(Imsi, Rand, Auts),
    /// Look up this fast re-authentication identity in the endpoint's memory (RFC 4187 §5;
    /// no store access), then call [`Session::provide_reauth`].
    Reauth(String),
}

/// The end of an authentication.
#[derive(Debug)]
pub(crate) enum Finish {
    Authenticated(Duration),
    Failed(FailureCause),
    Expired,
}

/// Outputs of one pump.
#[derive(Debug, Default)]
pub(crate) struct Pumped {
    /// Encoded CoAP messages for the peer.
    pub out: Vec<Vec<u8>>,
    pub needs: Vec<Need>,
    pub finished: Vec<Finish>,
    /// Fast re-authentication contexts to keep in memory (RFC 4187 §5.1, AT_NEXT_REAUTH_ID):
    /// kept before the message carrying the identity leaves.
    pub persist: Vec<(String, ReauthContext)>,
    /// Fast re-authentication identities to forget (used, or over the counter limit).
    pub forget: Vec<String>,
}

/// Downlink requests of a device (network → device CON `POST d`).
#[derive(Debug)]
pub(crate) struct Downlink {
    pub outbox: Outbox,
    pub mids: MessageIdAllocator,
    pub tokens: TokenAllocator,
    pub queue: VecDeque<Vec<u8>>,
    /// Message ID → (token, binding) of outstanding downlinks.
    pub outstanding: HashMap<u16, (Vec<u8>, RequestBinding)>,
}

#[derive(Debug)]
pub(crate) struct Session {
    /// Changes with each new EAP run (stale store answers are ignored).
    pub generation: u64,
    pub auth: CoapEapAuthenticator,
    pub server: Option<EapAkaServer>,
    /// Identity of the current run (from EAP).
    pub imsi: Option<Imsi>,
    pub wait: Option<StoreWait>,
    pending_secrets: Option<(Msk, Emsk)>,
    /// Keys of the run in progress (after KeysReady, before confirmation).
    pub new_keys: Option<Keys>,
    /// Confirmed keys and whose they are.
    pub keys: Option<Keys>,
    pub keys_imsi: Option<Imsi>,
    /// Authenticator's protected requests by Message ID: (bytes, binding).
    pub protected_out: HashMap<u16, (Vec<u8>, RequestBinding)>,
    /// Why EAP failed, recorded when the EAP server gave up.
    pub eap_failure: Option<FailureCause>,
    pub downlink: Downlink,
    /// The run was refused by the authorization check (PROTOCOL.md §6): the next
    /// EAP-Response is answered with EAP-Failure instead of reaching the EAP server.
    pub refused: bool,
    /// Identifier of the last EAP-Response received (the EAP-Failure echoes it, RFC 3748
    /// §4.2).
    last_response_id: Option<u8>,
    /// The run in progress is a fast re-authentication (RFC 4187 §5): no vector, no SQN.
    pub fast_reauth: bool,
    /// Method of the last successful run (full or fast re-authentication).
    pub last_method: Option<Method>,
    /// A device session (relayed); a gateway's own runs are always full authentications,
    /// whose vector request is its authorization check (PROTOCOL.md §6).
    relayed: bool,
}

impl Session {
    /// A session for a gateway (direct) or a device (`relayed`: its CoAP-EAP requests
    /// use [`LinkConfig::relayed_ack_timeout`]).
    pub fn new(cfg: &LinkConfig, rng: &mut StdRng, relayed: bool) -> Self {
        let mid: u16 = rng.gen();
        let mut acfg = AuthenticatorConfig::new(cfg.rid_c.clone(), mid, rng.gen());
        if relayed {
            acfg.ack_timeout = cfg.relayed_ack_timeout;
        }
        acfg.cipher_suites = cfg.cipher_suites.clone();
        acfg.session_lifetime = Duration::from_secs(u64::from(cfg.session_lifetime_secs));
        Self {
            generation: 0,
            auth: CoapEapAuthenticator::new(acfg),
            server: None,
            imsi: None,
            wait: None,
            pending_secrets: None,
            new_keys: None,
            keys: None,
            keys_imsi: None,
            protected_out: HashMap::new(),
            eap_failure: None,
            downlink: Downlink {
                outbox: Outbox::new(cfg.transmission),
                // A Message-ID range away from the authenticator's (RFC 7252 §4.4).
                mids: MessageIdAllocator::new(mid.wrapping_add(0x8000)),
                tokens: TokenAllocator::new(8, rng.gen()),
                queue: VecDeque::new(),
                outstanding: HashMap::new(),
            },
            refused: false,
            last_response_id: None,
            fast_reauth: false,
            last_method: None,
            relayed,
        }
    }

    /// A new EAP run whose EAP-Request/Identity had Identifier `identity_id`: a fresh
    /// EAP-AKA' server whose own requests start at the next Identifier (RFC 3748 §4.1: it
    /// must differ from the one of the request just answered). Keeps confirmed keys.
    fn begin_run(&mut self, rng: &mut StdRng, cfg: &LinkConfig, identity_id: u8) {
        // Random, not a counter: a session re-created under the same key must not accept
        // answers meant for its predecessor.
        self.generation = rng.gen();
        let mut eap = cfg.eap.clone();
        // PROTOCOL.md §6.1: fast re-authentication for devices only.
        eap.fast_reauth &= self.relayed;
        self.server = Some(EapAkaServer::new(eap, identity_id.wrapping_add(1)));
        self.imsi = None;
        self.wait = None;
        self.pending_secrets = None;
        self.new_keys = None;
        self.protected_out.clear();
        self.eap_failure = None;
        self.refused = false;
        self.last_response_id = None;
        self.fast_reauth = false;
    }

    /// Answer to [`Need::Reauth`]: the context kept in memory for the identity, or `None`
    /// (unknown, expired or already used: the EAP server asks for a full-authentication
    /// identity, RFC 4187 §5.1). The run's identity is the context's subscriber from now
    /// on, so the next batch of this device is authorized from the store (PROTOCOL.md §6)
    /// before EAP-Success. Call [`Session::pump`] next.
    pub fn provide_reauth(&mut self, rec: Option<ReauthContext>, rng: &mut StdRng) {
        if let Some(r) = &rec {
            self.imsi = Some(r.imsi.clone());
            self.fast_reauth = true;
        }
        if let Some(s) = self.server.as_mut() {
            s.provide_reauth(rec, rng);
        }
    }

    /// PROTOCOL.md §5 (`kind 3`): the gateway sent the device `request` (EAP-Request/Identity
    /// with the network's CoAP-EAP information) and the device answered `response`. The
    /// run continues as if this session's authenticator had sent that request
    /// ([`CoapEapAuthenticator::handle_local_identity`] checks it offers exactly the
    /// configured cipher suites and RID-C); the EAP server starts from the
    /// EAP-Response/Identity. `Ok(false)`: a duplicate of the run in progress, ignored.
    /// Call [`Session::pump`] next.
    pub fn local_identity(
        &mut self,
        now: Instant,
        rng: &mut StdRng,
        cfg: &LinkConfig,
        request: &Message,
        response: &Message,
    ) -> Result<bool, capillary_coap_eap::AuthError> {
        let started = self.auth.handle_local_identity(now, request, response)?;
        if started {
            // The payload starts with the EAP packet (`EAP ‖ CBOR(info)`, RFC 9820 §5.1),
            // already checked by the authenticator: its Identifier is the second byte.
            let id = request.payload.get(1).copied().unwrap_or_default();
            self.begin_run(rng, cfg, id);
        }
        Ok(started)
    }

    /// Is an EAP run in progress (not yet ended by EAP-Success or EAP-Failure)?
    pub fn run_in_progress(&self) -> bool {
        self.server.as_ref().is_some_and(|s| !s.is_finished())
    }

    /// PROTOCOL.md §6: the authorization check refused this device at its next message.
    /// Every OSCORE context (confirmed and pending) is dropped at once; a run in progress
    /// ends with EAP-Failure (RFC 3748 §4.2), now if the authenticator is waiting for the
    /// network, else in answer to the device's next EAP-Response. Call [`Session::pump`]
    /// next; the run then ends as [`Finish::Failed`] with [`FailureCause::Refused`].
    pub fn refuse(&mut self, now: Instant, denial: AuditEvent) {
        self.keys = None;
        self.new_keys = None;
        self.pending_secrets = None;
        self.wait = None;
        self.eap_failure = Some(FailureCause::Refused(denial.into()));
        if !self.run_in_progress() {
            return;
        }
        self.refused = true;
        if let Some(id) = self.last_response_id {
            // Err: a request is outstanding; its answer gets the EAP-Failure.
            if self.auth.send_eap_failure(now, &eap::failure(id)).is_ok() {
                self.server = None;
            }
        }
    }

    /// Feeds the store's answers to the EAP server once all have arrived (RFC 4187 §6.3.1:
    /// a refusal becomes the general-failure notification, then EAP-Failure). Returns the
    /// authorization denial, if any, for the audit record (PROTOCOL.md §6).
    pub fn try_continue(&mut self, rng: &mut StdRng) -> Option<AuditEvent> {
        let ready = self
            .wait
            .as_ref()
            .is_some_and(|w| w.vector.is_some() && (!w.need_authz || w.denial.is_some()));
        if !ready {
            return None;
        }
        let w = self.wait.take()?;
        let server = self.server.as_mut()?;
        let denial = w.denial.flatten();
        match (denial, w.vector) {
            (Some(d), _) => {
                let r = if d == AuditEvent::UnknownDevice {
                    RejectReason::Unknown
                } else {
                    RejectReason::Barred
                };
                self.eap_failure = Some(FailureCause::Refused(d.into()));
                server.subscriber_rejected(r);
                Some(d)
            }
            (None, Some(Err(r))) => {
                self.eap_failure = Some(FailureCause::NoVector);
                server.subscriber_rejected(r);
                None
            }
            (None, Some(Ok(v))) => {
                server.provide_vector(v, rng);
                None
            }
            (None, None) => None,
        }
    }

    /// Runs the authenticator and the EAP server until neither has output.
    pub fn pump(&mut self, now: Instant, rng: &mut StdRng, cfg: &LinkConfig, p: &mut Pumped) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.auth.poll_event() {
                progressed = true;
                self.on_auth_event(now, rng, cfg, ev, p);
            }
            if let Some(server) = self.server.as_mut() {
                let mut evs = Vec::new();
                while let Some(ev) = server.poll_event() {
                    evs.push(ev);
                }
                for ev in evs {
                    progressed = true;
                    self.on_server_event(now, rng, ev, p);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn on_auth_event(
        &mut self,
        now: Instant,
        rng: &mut StdRng,
        cfg: &LinkConfig,
        ev: AuthEvent,
        p: &mut Pumped,
    ) {
        match ev {
            AuthEvent::Triggered { .. } => {
                // The authenticator sends EAP-Request/Identity itself; the server adopts the
                // Identifier of the EAP-Response/Identity (RFC 3748 §5.1).
                let id: u8 = rng.gen();
                self.begin_run(rng, cfg, id);
                // Errors here mean the authenticator is not waiting: nothing to send.
                let _ = self.auth.send_eap_request(now, &eap::identity_request(id));
            }
            AuthEvent::Transmit(m) => {
                if let Ok(b) = m.encode() {
                    p.out.push(b);
                }
            }
            AuthEvent::TransmitProtected(m) => {
                if let Some((bytes, _)) = self.protected_out.get(&m.message_id) {
                    // A retransmission: the same protected bytes (RFC 9820 driver contract).
                    p.out.push(bytes.clone());
                    return;
                }
                let Some(keys) = self.new_keys.as_mut() else {
                    return;
                };
                if let Ok((prot, binding)) = keys.ctx.protect_request(&m) {
                    if let Ok(bytes) = prot.encode() {
                        self.protected_out
                            .insert(m.message_id, (bytes.clone(), binding));
                        p.out.push(bytes);
                    }
                }
            }
            AuthEvent::EapResponse(r) => {
                self.last_response_id = r.get(1).copied();
                if self.refused {
                    // §6: refused mid-run; the response is not processed.
                    if let Some(id) = self.last_response_id {
                        if self.auth.send_eap_failure(now, &eap::failure(id)).is_ok() {
                            self.server = None;
                        }
                    }
                    return;
                }
                if let Some(server) = self.server.as_mut() {
                    server.handle_response(&r, rng);
                }
            }
            AuthEvent::KeysReady(material) => {
                let secrets = self.pending_secrets.take();
                match (secrets, build_keys(&material)) {
                    (Some((msk, emsk)), Some((ctx, master_secret, master_salt))) => {
                        self.new_keys = Some(Keys {
                            ctx,
                            msk,
                            emsk,
                            master_secret,
                            master_salt,
                        });
                    }
                    _ => self.eap_failure = Some(FailureCause::Oscore),
                }
            }
            AuthEvent::Authenticated { session_lifetime } => {
                if let Some(k) = self.new_keys.take() {
                    self.keys = Some(k);
                    self.keys_imsi = self.imsi.clone();
                    self.protected_out.clear();
                    p.finished.push(Finish::Authenticated(session_lifetime));
                }
            }
            AuthEvent::SessionExpired => {
                self.keys = None;
                p.finished.push(Finish::Expired);
            }
            AuthEvent::Failed(f) => {
                let cause = match (&f, self.eap_failure) {
                    (_, Some(c)) => c,
                    (AuthFailure::PeerUnresponsive, None) => FailureCause::Unresponsive,
                    (AuthFailure::EapFailureSent, None) => FailureCause::Eap,
                    _ => FailureCause::CoapEap,
                };
                self.wait = None;
                self.new_keys = None;
                p.finished.push(Finish::Failed(cause));
            }
            _ => {}
        }
    }

    fn on_server_event(&mut self, now: Instant, rng: &mut StdRng, ev: ServerEvent, p: &mut Pumped) {
        match ev {
            ServerEvent::Send(req) => {
                let _ = self.auth.send_eap_request(now, &req);
            }
            ServerEvent::NeedVector { imsi } => {
                // Also after a re-authentication context over its counter limit: a full run.
                self.fast_reauth = false;
                self.imsi = Some(imsi.clone());
                self.wait = Some(StoreWait::default());
                p.needs.push(Need::Vector(imsi));
            }
            ServerEvent::NeedResync { imsi, rand, auts } => {
                self.imsi = Some(imsi.clone());
                self.wait = Some(StoreWait::default());
                p.needs.push(Need::Resync(imsi, rand, auts));
            }
            // Pseudonyms are off (module docs): nothing is ever stored, so nothing resolves.
            ServerEvent::ResolvePseudonym { .. } => {
                if let Some(s) = self.server.as_mut() {
                    s.provide_pseudonym(None, rng);
                }
            }
            // Fast re-authentication: the context lives in the endpoint's memory only.
            ServerEvent::ResolveReauth { reauth_id } => p.needs.push(Need::Reauth(reauth_id)),
            ServerEvent::PersistReauth { reauth_id, rec, .. } => p.persist.push((reauth_id, rec)),
            ServerEvent::ForgetReauth { reauth_id } => p.forget.push(reauth_id),
            ServerEvent::Success {
                eap,
                msk,
                emsk,
                method,
                ..
            } => {
                self.last_method = Some(method);
                // KeysReady is queued by send_eap_success and handled after this event, so
                // the secrets are in place by then.
                if self.auth.send_eap_success(now, &eap, &msk).is_ok() {
                    self.pending_secrets = Some((msk, emsk));
                } else {
                    self.eap_failure = Some(FailureCause::CoapEap);
                }
            }
            ServerEvent::Failure { eap, reason } => {
                if self.eap_failure.is_none() {
                    self.eap_failure = Some(match reason {
                        FailureReason::UnknownSubscriber
                        | FailureReason::Barred
                        | FailureReason::StoreFailure => FailureCause::NoVector,
                        _ => FailureCause::Eap,
                    });
                }
                let _ = self.auth.send_eap_failure(now, &eap);
            }
            // PersistPseudonym cannot occur (pseudonyms are off); Discarded leaves the
            // state unchanged.
            _ => {}
        }
    }

    /// Key confirmation (RFC 9820 §3.3): `msg` answers the protected EAP-Success sent with
    /// `binding`; it must verify under [`Session::new_keys`]. The verified answer goes to the
    /// authenticator and the session is pumped into `p`.
    pub fn confirm_keys(
        &mut self,
        now: Instant,
        msg: &Message,
        mut binding: RequestBinding,
        rng: &mut StdRng,
        cfg: &LinkConfig,
        p: &mut Pumped,
    ) -> Result<(), capillary_oscore::OscoreError> {
        let inner = match self.new_keys.as_mut() {
            Some(k) => k.ctx.unprotect_response(msg, &mut binding)?,
            None => return Err(capillary_oscore::OscoreError::UnknownKid),
        };
        self.auth.handle_oscore_message(now, &inner);
        self.pump(now, rng, cfg, p);
        Ok(())
    }

    /// Key confirmation by a request (RFC 9820 §3.3): a request from the peer verified
    /// under [`Session::new_keys`], which proves that the peer holds the new OSCORE context
    /// just as its protected 2.04 to the EAP-Success would have (that answer was lost on the
    /// way). The authenticator is handed that 2.04 — the one the peer would have sent,
    /// rebuilt from the outstanding protected EAP-Success — so the run ends exactly as on
    /// the normal path ([`AuthEvent::Authenticated`], the EAP-Success is no longer
    /// retransmitted). Call [`Session::pump`] next. Does nothing when no protected
    /// EAP-Success is outstanding.
    pub fn confirm_by_request(&mut self, now: Instant) {
        let sent: Vec<Message> = self
            .protected_out
            .values()
            .filter_map(|(bytes, _)| Message::parse(bytes).ok())
            .collect();
        for success in sent {
            let confirmation =
                Message::response_to(&success, capillary_coap::Code::CHANGED, success.message_id);
            self.auth.handle_oscore_message(now, &confirmation);
        }
    }

    /// Protects and tracks a new downlink request; returns the bytes to relay.
    pub fn send_downlink(
        &mut self,
        now: Instant,
        rng: &mut StdRng,
        payload: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, capillary_oscore::OscoreError> {
        if !self.downlink.outbox.can_send() {
            self.downlink.queue.push_back(payload);
            return Ok(None);
        }
        let Some(keys) = self.keys.as_mut() else {
            return Ok(None);
        };
        let mid = self.downlink.mids.next_id();
        let token = self.downlink.tokens.next_token();
        let mut m = Message::new(
            capillary_coap::MessageType::Con,
            capillary_coap::Code::POST,
            mid,
            token.clone(),
        );
        m.set_uri_path("d");
        m.payload = payload;
        let (prot, binding) = keys.ctx.protect_request(&m)?;
        let bytes = prot.encode()?;
        self.downlink
            .outbox
            .send_con(now, bytes.clone(), mid, rng.gen());
        self.downlink.outstanding.insert(mid, (token, binding));
        Ok(Some(bytes))
    }
}

/// The OSCORE context (RFC 8613 §3.2) from the CoAP-EAP material (RFC 9820 §6.2). Only
/// suite 0 maps to what `capillary-oscore` implements.
fn build_keys(m: &OscoreMaterial) -> Option<(SecurityContext, [u8; 16], [u8; 8])> {
    if m.cipher_suite != capillary_coap_eap::CipherSuite::DEFAULT {
        return None;
    }
    let mut params = ContextParams::new(m.master_secret.expose(), &m.sender_id, &m.recipient_id);
    params.master_salt = m.master_salt.expose();
    let ctx = SecurityContext::new(params).ok()?;
    Some((
        ctx,
        *m.master_secret.expose_array(),
        *m.master_salt.expose_array(),
    ))
}
