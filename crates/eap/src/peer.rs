//! The EAP-AKA' peer as a sans-IO state machine (RFC 9048 §3, RFC 4187 §4, §5, §6).
//!
//! Feed EAP-Requests (and EAP-Success/Failure) to [`EapAkaPeer::handle_request`], drain
//! [`PeerEvent`]s with [`EapAkaPeer::poll_event`]. On [`PeerEvent::RunAka`] the driver runs the
//! USIM (`capillary_aka::vector::Usim::authenticate`) and answers with
//! [`EapAkaPeer::provide_aka`]. Pseudonym and re-authentication state survive from one
//! authentication to the next inside the same `EapAkaPeer`.

use std::collections::VecDeque;

use capillary_aka::prime;
use capillary_aka::vector::UsimOutcome;
use capillary_aka::AkaError;
use capillary_secrets::{Amf, Autn, Emsk, KAut, KEncr, KRe, Msk, Rand};
use rand_core::RngCore;
use subtle::ConstantTimeEq;

use crate::attr::{client_error, notification, types::*, Attribute, KDF_AKA_PRIME};
use crate::eap::{self, types, Code, Packet};
use crate::msg::{decrypt_attributes, encrypted_pair, AkaPacket, Decoded, IdReq, Subtype};

/// Peer configuration.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Permanent identity, `6<IMSI>@realm` (RFC 9048 §3.1).
    pub permanent_identity: String,
    /// Expected access network name; when set, a different AT_KDF_INPUT is rejected
    /// (RFC 9048 §3.1). `None` accepts any non-empty name.
    pub network_name: Option<String>,
    /// Ask for protected result indications (RFC 4187 §6.2).
    pub result_indication: bool,
}

/// Why the peer gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerFailure {
    /// The server sent EAP-Failure.
    EapFailure,
    /// The server sent a failure notification with this code (RFC 4187 §10.19).
    Notification(u16),
    /// AUTN did not verify (sent Authentication-Reject).
    AuthenticationRejected(AkaError),
    /// AMF separation bit 0 (sent Authentication-Reject, RFC 9048 §3.2).
    AmfSeparationBit,
    /// AT_KDF_INPUT missing, empty or not the expected network name (RFC 9048 §3.1).
    NetworkName,
    /// No supported KDF offered (RFC 9048 §3.2).
    KdfUnsupported,
    /// The server's AT_MAC did not verify (sent Client-Error).
    MacInvalid,
    /// AT_CHECKCODE mismatch (sent Client-Error).
    CheckcodeMismatch,
    /// A malformed or unexpected request (sent Client-Error).
    Protocol,
}

/// Output of the peer; handle in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum PeerEvent {
    /// Send this EAP-Response.
    Send(Vec<u8>),
    /// Run AKA on the USIM, then call [`EapAkaPeer::provide_aka`].
    RunAka {
        /// RAND.
        rand: Rand,
        /// AUTN.
        autn: Autn,
    },
    /// EAP-Success after a verified authentication: the session keys.
    Success {
        /// MSK.
        msk: Msk,
        /// EMSK.
        emsk: Emsk,
        /// EAP Session-Id (RFC 5247 §1.4, RFC 9048 §6).
        session_id: Vec<u8>,
    },
    /// The authentication failed.
    Failure {
        /// Why.
        reason: PeerFailure,
    },
}

/// Stored fast re-authentication state of the peer (RFC 4187 §5.1).
struct Reauth {
    id: String,
    k_encr: KEncr,
    k_aut: KAut,
    k_re: KRe,
    /// Last counter accepted (0 after a full authentication).
    counter: u16,
}

struct Session {
    session_id: Vec<u8>,
    msk: Msk,
    emsk: Emsk,
    k_aut: KAut,
    k_encr: KEncr,
    /// Counter of the fast re-authentication, if this session was one.
    counter: Option<u16>,
}

enum State {
    Idle,
    WaitAka { req: Decoded },
    Authenticated(Session),
    Done,
}

/// The EAP-AKA' peer.
pub struct EapAkaPeer {
    cfg: PeerConfig,
    state: State,
    pseudonym: Option<String>,
    reauth: Option<Reauth>,
    /// Identity sent last in this authentication (key derivation input, RFC 9048 §3.3).
    last_identity: Option<String>,
    id_msgs: Vec<Vec<u8>>,
    id_rounds: u8,
    notified: bool,
    events: VecDeque<PeerEvent>,
}

impl core::fmt::Debug for EapAkaPeer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EapAkaPeer")
            .field("pseudonym", &self.pseudonym)
            .field("reauth_id", &self.reauth.as_ref().map(|r| &r.id))
            .finish_non_exhaustive()
    }
}

impl EapAkaPeer {
    /// A peer with no stored pseudonym or re-authentication identity.
    pub fn new(cfg: PeerConfig) -> Self {
        Self {
            cfg,
            state: State::Idle,
            pseudonym: None,
            reauth: None,
            last_identity: None,
            id_msgs: Vec::new(),
            id_rounds: 0,
            notified: false,
            events: VecDeque::new(),
        }
    }

    /// The next output, if any.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// The pseudonym learnt from the server (with the realm of the permanent identity).
    pub fn pseudonym(&self) -> Option<&str> {
        self.pseudonym.as_deref()
    }

    /// The fast re-authentication identity learnt from the server.
    pub fn reauth_id(&self) -> Option<&str> {
        self.reauth.as_ref().map(|r| r.id.as_str())
    }

    /// Forgets the pseudonym (e.g. when the server does not recognise it).
    pub fn forget_pseudonym(&mut self) {
        self.pseudonym = None;
    }

    fn realm(&self) -> &str {
        match self.cfg.permanent_identity.split_once('@') {
            Some((_, r)) => r,
            None => "",
        }
    }

    fn new_session(&mut self) {
        self.state = State::Idle;
        self.last_identity = None;
        self.id_msgs.clear();
        self.id_rounds = 0;
        self.notified = false;
    }

    fn send(&mut self, p: AkaPacket) {
        match p.encode() {
            Ok(b) => self.events.push_back(PeerEvent::Send(b)),
            Err(_) => self.fail(PeerFailure::Protocol),
        }
    }

    fn fail(&mut self, reason: PeerFailure) {
        if !matches!(self.state, State::Done) {
            self.state = State::Done;
            self.events.push_back(PeerEvent::Failure { reason });
        }
    }

    fn client_error(&mut self, id: u8, reason: PeerFailure) {
        let p = AkaPacket::new(
            Code::Response,
            id,
            Subtype::ClientError,
            vec![Attribute::ClientErrorCode(client_error::UNABLE_TO_PROCESS)],
        );
        self.send(p);
        self.fail(reason);
    }

    fn auth_reject(&mut self, id: u8, reason: PeerFailure) {
        self.send(AkaPacket::new(
            Code::Response,
            id,
            Subtype::AuthenticationReject,
            Vec::new(),
        ));
        self.fail(reason);
    }

    /// Chooses the identity for an EAP-Response/Identity or AT_IDENTITY (RFC 4187 §4.1.1.3).
    fn choose_identity(&mut self, req: IdReq) -> String {
        let id = match req {
            IdReq::Any if self.reauth.is_some() => self.reauth.as_ref().map(|r| r.id.clone()),
            IdReq::Any | IdReq::Fullauth if self.pseudonym.is_some() => self.pseudonym.clone(),
            _ => None,
        };
        let id = id.unwrap_or_else(|| self.cfg.permanent_identity.clone());
        if Some(&id) != self.reauth.as_ref().map(|r| &r.id) {
            // A re-authentication identity not used now must not be used later.
            self.reauth = None;
        }
        self.last_identity = Some(id.clone());
        id
    }

    /// The MSK and EMSK of the authentication in progress, once the server proved itself
    /// (AUTN and AT_MAC verified) and the peer answered, before EAP-Success arrives.
    ///
    /// CoAP-EAP (RFC 9820 §3.3) needs them at that point: the EAP-Success travels inside an
    /// OSCORE-protected message whose keys come from the MSK. Until EAP-Success is processed
    /// the authentication is not complete; a caller must not use the keys for anything else.
    pub fn keys_in_progress(&self) -> Option<(&Msk, &Emsk)> {
        match &self.state {
            State::Authenticated(s) => Some((&s.msk, &s.emsk)),
            _ => None,
        }
    }

    /// An EAP packet from the authenticator; `rng` supplies AT_IV values.
    pub fn handle_request(&mut self, packet: &[u8], rng: &mut dyn RngCore) {
        let Ok(p) = Packet::parse(packet) else {
            return;
        };
        match p.code {
            Code::Success => {
                match core::mem::replace(&mut self.state, State::Done) {
                    State::Authenticated(s) => self.events.push_back(PeerEvent::Success {
                        msk: s.msk,
                        emsk: s.emsk,
                        session_id: s.session_id,
                    }),
                    State::Done => {}
                    // EAP-Success before authentication is not accepted (RFC 3748 §4.2).
                    _ => self.events.push_back(PeerEvent::Failure {
                        reason: PeerFailure::Protocol,
                    }),
                }
                return;
            }
            Code::Failure => {
                self.fail(PeerFailure::EapFailure);
                return;
            }
            Code::Response => return,
            Code::Request => {}
        }
        match p.typ {
            Some(types::IDENTITY) => {
                self.new_session();
                let id = self.choose_identity(IdReq::Any);
                self.events
                    .push_back(PeerEvent::Send(eap::identity_response(
                        p.identifier,
                        id.as_bytes(),
                    )));
            }
            Some(types::NOTIFICATION) => self.events.push_back(PeerEvent::Send(eap::build(
                Code::Response,
                p.identifier,
                types::NOTIFICATION,
                &[],
            ))),
            Some(types::AKA_PRIME) => self.handle_aka(packet, p.identifier, rng),
            _ => self
                .events
                .push_back(PeerEvent::Send(eap::nak(p.identifier, &[types::AKA_PRIME]))),
        }
    }

    fn handle_aka(&mut self, packet: &[u8], id: u8, rng: &mut dyn RngCore) {
        if matches!(self.state, State::Done) {
            self.new_session();
        }
        let d = match AkaPacket::decode(packet) {
            Ok(d) if d.packet.method == types::AKA_PRIME => d,
            _ => return self.client_error(id, PeerFailure::Protocol),
        };
        match d.packet.subtype {
            Subtype::Identity => self.on_identity(d, id),
            Subtype::Challenge => self.on_challenge(d, id),
            Subtype::Reauthentication => self.on_reauth(d, id, rng),
            Subtype::Notification => self.on_notification(d, id, rng),
            _ => self.client_error(id, PeerFailure::Protocol),
        }
    }

    fn on_identity(&mut self, d: Decoded, id: u8) {
        let req = match d.packet.attributes.id_req() {
            Ok(Some(r)) => r,
            _ => return self.client_error(id, PeerFailure::Protocol),
        };
        self.id_rounds += 1;
        if self.id_rounds > 3 {
            return self.client_error(id, PeerFailure::Protocol);
        }
        let identity = self.choose_identity(req);
        let resp = AkaPacket::new(
            Code::Response,
            id,
            Subtype::Identity,
            vec![Attribute::Identity(identity.into_bytes())],
        );
        match resp.encode() {
            Ok(b) => {
                self.id_msgs.push(d.raw().to_vec());
                self.id_msgs.push(b.clone());
                self.events.push_back(PeerEvent::Send(b));
            }
            Err(_) => self.client_error(id, PeerFailure::Protocol),
        }
    }

    fn checkcode_ok(&self, got: Option<&Vec<u8>>) -> bool {
        let Some(got) = got else {
            return true;
        };
        if self.id_msgs.is_empty() {
            return got.is_empty();
        }
        let parts: Vec<&[u8]> = self.id_msgs.iter().map(Vec::as_slice).collect();
        let want = prime::checkcode(&parts);
        got.len() == want.len() && bool::from(want.as_slice().ct_eq(got.as_slice()))
    }

    fn checkcode_attr(&self) -> Attribute {
        if self.id_msgs.is_empty() {
            Attribute::Checkcode(Vec::new())
        } else {
            let parts: Vec<&[u8]> = self.id_msgs.iter().map(Vec::as_slice).collect();
            Attribute::Checkcode(prime::checkcode(&parts).to_vec())
        }
    }

    fn on_challenge(&mut self, d: Decoded, id: u8) {
        let a = &d.packet.attributes;
        if !self.checkcode_ok(a.checkcode()) {
            return self.client_error(id, PeerFailure::CheckcodeMismatch);
        }
        match a.kdf_input() {
            Some(n) if !n.is_empty() => {
                if let Some(want) = &self.cfg.network_name {
                    if want.as_bytes() != n.as_slice() {
                        return self.auth_reject(id, PeerFailure::NetworkName);
                    }
                }
            }
            _ => return self.auth_reject(id, PeerFailure::NetworkName),
        }
        let kdfs = a.kdfs();
        match kdfs.first() {
            Some(&KDF_AKA_PRIME) => {}
            Some(_) if kdfs.contains(&KDF_AKA_PRIME) => {
                // KDF negotiation (RFC 9048 §3.2): answer with the one we support.
                return self.send(AkaPacket::new(
                    Code::Response,
                    id,
                    Subtype::Challenge,
                    vec![Attribute::Kdf(KDF_AKA_PRIME)],
                ));
            }
            _ => return self.auth_reject(id, PeerFailure::KdfUnsupported),
        }
        let (Some(rand), Some(autn), true) = (a.rand().copied(), a.autn().copied(), a.has(AT_MAC))
        else {
            return self.client_error(id, PeerFailure::Protocol);
        };
        if !Amf([autn.0[6], autn.0[7]]).separation_bit() {
            return self.auth_reject(id, PeerFailure::AmfSeparationBit);
        }
        self.state = State::WaitAka { req: d };
        self.events.push_back(PeerEvent::RunAka { rand, autn });
    }

    /// The USIM's answer to [`PeerEvent::RunAka`].
    pub fn provide_aka(&mut self, outcome: Result<UsimOutcome, AkaError>) {
        let State::WaitAka { req } = core::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        let id = req.packet.identifier;
        let (res, ck, ik) = match outcome {
            Err(AkaError::AmfSeparationBit) => {
                return self.auth_reject(id, PeerFailure::AmfSeparationBit)
            }
            Err(e) => return self.auth_reject(id, PeerFailure::AuthenticationRejected(e)),
            Ok(UsimOutcome::SyncFailure { auts }) => {
                let mut attrs = vec![Attribute::Auts(auts)];
                attrs.extend(req.packet.attributes.kdfs().into_iter().map(Attribute::Kdf));
                return self.send(AkaPacket::new(
                    Code::Response,
                    id,
                    Subtype::SynchronizationFailure,
                    attrs,
                ));
            }
            Ok(UsimOutcome::Success { res, ck, ik }) => (res, ck, ik),
        };
        let a = &req.packet.attributes;
        let (Some(autn), Some(name)) = (a.autn(), a.kdf_input()) else {
            return self.client_error(id, PeerFailure::Protocol);
        };
        let a_rand = a.rand().map(|r| r.0).unwrap_or_default();
        let mut sqn_xor_ak = [0u8; 6];
        sqn_xor_ak.copy_from_slice(&autn.0[..6]);
        let (ckp, ikp) = prime::ck_ik_prime(&ck, &ik, name, &sqn_xor_ak);
        let identity = self
            .last_identity
            .clone()
            .unwrap_or_else(|| self.cfg.permanent_identity.clone());
        let keys = prime::full_auth_keys(identity.as_bytes(), &ckp, &ikp);
        if !req.verify_mac(&keys.k_aut, &[]) {
            return self.client_error(id, PeerFailure::MacInvalid);
        }
        // The old re-authentication identity is spent (RFC 4187 §5.1).
        self.reauth = None;
        if let (Some(iv), Some(data)) = (a.iv(), a.encr_data()) {
            let Ok(inner) = decrypt_attributes(&keys.k_encr, iv, data) else {
                return self.client_error(id, PeerFailure::Protocol);
            };
            if let Some(p) = inner.next_pseudonym() {
                let p = String::from_utf8_lossy(p).into_owned();
                let realm = self.realm();
                self.pseudonym = Some(if realm.is_empty() {
                    p
                } else {
                    format!("{p}@{realm}")
                });
            }
            if let Some(r) = inner.next_reauth_id() {
                self.reauth = Some(Reauth {
                    id: String::from_utf8_lossy(r).into_owned(),
                    k_encr: keys.k_encr.clone(),
                    k_aut: keys.k_aut.clone(),
                    k_re: keys.k_re.clone(),
                    counter: 0,
                });
            }
        }
        let mut attrs = vec![Attribute::Res(res), self.checkcode_attr()];
        if self.cfg.result_indication && a.has(AT_RESULT_IND) {
            attrs.push(Attribute::ResultInd);
        }
        let resp = AkaPacket::new(Code::Response, id, Subtype::Challenge, attrs)
            .encode_with_mac(&keys.k_aut, &[]);
        match resp {
            Ok(b) => {
                self.state = State::Authenticated(Session {
                    session_id: crate::server::session_id(&a_rand, &autn.0),
                    msk: keys.msk,
                    emsk: keys.emsk,
                    k_aut: keys.k_aut,
                    k_encr: keys.k_encr,
                    counter: None,
                });
                self.events.push_back(PeerEvent::Send(b));
            }
            Err(_) => self.client_error(id, PeerFailure::Protocol),
        }
    }

    fn on_reauth(&mut self, d: Decoded, id: u8, rng: &mut dyn RngCore) {
        let Some(re) = self.reauth.take() else {
            return self.client_error(id, PeerFailure::Protocol);
        };
        let a = &d.packet.attributes;
        if !self.checkcode_ok(a.checkcode()) {
            return self.client_error(id, PeerFailure::CheckcodeMismatch);
        }
        if !d.verify_mac(&re.k_aut, &[]) {
            return self.client_error(id, PeerFailure::MacInvalid);
        }
        let (Some(iv), Some(data)) = (a.iv(), a.encr_data()) else {
            return self.client_error(id, PeerFailure::Protocol);
        };
        let Ok(inner) = decrypt_attributes(&re.k_encr, iv, data) else {
            return self.client_error(id, PeerFailure::Protocol);
        };
        let (Some(&counter), Some(&nonce_s)) = (inner.counter(), inner.nonce_s()) else {
            return self.client_error(id, PeerFailure::Protocol);
        };
        let mut rng_iv = [0u8; 16];
        rng.fill_bytes(&mut rng_iv);
        let too_small = counter <= re.counter;
        let mut inner_resp = Vec::new();
        if too_small {
            inner_resp.push(Attribute::CounterTooSmall);
        }
        inner_resp.push(Attribute::Counter(counter));
        let pair = match encrypted_pair(&re.k_encr, rng_iv, &inner_resp) {
            Ok(p) => p,
            Err(_) => return self.client_error(id, PeerFailure::Protocol),
        };
        let mut attrs: Vec<Attribute> = pair.into();
        attrs.push(self.checkcode_attr());
        let use_ind = self.cfg.result_indication && a.has(AT_RESULT_IND);
        if use_ind && !too_small {
            attrs.push(Attribute::ResultInd);
        }
        let resp = match AkaPacket::new(Code::Response, id, Subtype::Reauthentication, attrs)
            .encode_with_mac(&re.k_aut, &nonce_s)
        {
            Ok(b) => b,
            Err(_) => return self.client_error(id, PeerFailure::Protocol),
        };
        if too_small {
            // RFC 4187 §5.5: full authentication follows, keyed on this identity.
            self.last_identity = Some(re.id.clone());
            self.events.push_back(PeerEvent::Send(resp));
            return;
        }
        let keys = prime::reauth_keys(&re.k_re, re.id.as_bytes(), counter, &nonce_s);
        if let Some(next) = inner.next_reauth_id() {
            self.reauth = Some(Reauth {
                id: String::from_utf8_lossy(next).into_owned(),
                k_encr: re.k_encr.clone(),
                k_aut: re.k_aut.clone(),
                k_re: re.k_re.clone(),
                counter,
            });
        }
        let server_mac = a.mac().copied().unwrap_or_default();
        self.state = State::Authenticated(Session {
            session_id: crate::server::session_id(&nonce_s, &server_mac),
            msk: keys.msk,
            emsk: keys.emsk,
            k_aut: re.k_aut.clone(),
            k_encr: re.k_encr.clone(),
            counter: Some(counter),
        });
        self.events.push_back(PeerEvent::Send(resp));
    }

    fn on_notification(&mut self, d: Decoded, id: u8, rng: &mut dyn RngCore) {
        if self.notified {
            return self.client_error(id, PeerFailure::Protocol);
        }
        self.notified = true;
        let Some(&code) = d.packet.attributes.notification() else {
            return self.client_error(id, PeerFailure::Protocol);
        };
        let before_auth = code & notification::P_BIT != 0;
        let mut attrs = Vec::new();
        if before_auth {
            self.send(AkaPacket::new(
                Code::Response,
                id,
                Subtype::Notification,
                attrs,
            ));
        } else {
            let State::Authenticated(s) = &self.state else {
                return self.client_error(id, PeerFailure::Protocol);
            };
            if !d.verify_mac(&s.k_aut, &[]) {
                return self.client_error(id, PeerFailure::MacInvalid);
            }
            if let Some(c) = s.counter {
                let a = &d.packet.attributes;
                let ok = match (a.iv(), a.encr_data()) {
                    (Some(iv), Some(data)) => {
                        decrypt_attributes(&s.k_encr, iv, data)
                            .ok()
                            .and_then(|i| i.counter().copied())
                            == Some(c)
                    }
                    _ => false,
                };
                if !ok {
                    return self.client_error(id, PeerFailure::Protocol);
                }
                let mut iv = [0u8; 16];
                rng.fill_bytes(&mut iv);
                match encrypted_pair(&s.k_encr, iv, &[Attribute::Counter(c)]) {
                    Ok(p) => attrs.extend(p),
                    Err(_) => return self.client_error(id, PeerFailure::Protocol),
                }
            }
            match AkaPacket::new(Code::Response, id, Subtype::Notification, attrs)
                .encode_with_mac(&s.k_aut, &[])
            {
                Ok(b) => self.events.push_back(PeerEvent::Send(b)),
                Err(_) => return self.client_error(id, PeerFailure::Protocol),
            }
        }
        if code & notification::S_BIT == 0 {
            self.fail(PeerFailure::Notification(code));
        }
    }
}
