//! The EAP-AKA' server (authenticator back end) as a sans-IO state machine (RFC 9048 §3,
//! RFC 4187 §4, §5, §6).
//!
//! Inputs arrive through [`EapAkaServer::handle_response`], [`EapAkaServer::start`] and the
//! `provide_*` answers to lookups; outputs leave as [`ServerEvent`]s drained with
//! [`EapAkaServer::poll_event`]. The driver must handle events **in order** and make every
//! `Persist*` / `Forget*` event durable before it sends the next [`ServerEvent::Send`].
//!
//! Identities (RFC 9048 §3.1, hostapd convention): permanent `6<IMSI>[@realm]`, pseudonym
//! `7<hex>` (sent in AT_NEXT_PSEUDONYM without realm; the peer appends the realm of its
//! permanent identity, RFC 4187 §4.1.1.7), re-authentication identity `8<hex>[@realm]` (a
//! full NAI carrying the realm of the identity in use, RFC 4187 §4.1.1.8, matched exactly).

use std::collections::VecDeque;

use capillary_aka::prime;
use capillary_secrets::{Amf, Autn, Auts, Ck, Emsk, Ik, Imsi, KAut, KEncr, KRe, Msk, Rand, Res};
use rand_core::RngCore;
use subtle::ConstantTimeEq;

use crate::attr::{notification, types::*, Attribute, KDF_AKA_PRIME};
use crate::eap::{self, types, Code, Packet};
use crate::error::CodecError;
use crate::msg::{decrypt_attributes, encrypted_pair, AkaPacket, Decoded, IdReq, Subtype};

/// Leading character of a permanent EAP-AKA' identity (RFC 9048 §3.1).
pub const PERMANENT_PREFIX: char = '6';
/// Leading character of EAP-AKA' pseudonyms (hostapd convention).
pub const PSEUDONYM_PREFIX: char = '7';
/// Leading character of EAP-AKA' fast re-authentication identities (hostapd convention).
pub const REAUTH_PREFIX: char = '8';

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Access network name sent in AT_KDF_INPUT and used for CK'/IK' (RFC 9048 §3.1,
    /// TS 24.302 §8.1.1). Default "WLAN".
    pub network_name: String,
    /// Hand out pseudonyms in AT_NEXT_PSEUDONYM (RFC 4187 §4.1.1.7).
    pub pseudonyms: bool,
    /// Hand out fast re-authentication identities (RFC 4187 §5).
    pub fast_reauth: bool,
    /// Number of fast re-authentications allowed after one full authentication.
    pub max_reauth: u16,
    /// Offer protected result indications (AT_RESULT_IND, RFC 4187 §6.2).
    pub result_indication: bool,
    /// Lifetime the driver should give stored re-authentication records.
    pub reauth_lifetime_secs: u64,
    /// Random bytes in each pseudonym and re-authentication identity issued (hex-encoded,
    /// so twice as many characters), 8..=32 (values outside are clamped). Default 16. They
    /// only need to be unguessable and unlinkable (RFC 4187 §4.1.1.7, §4.1.1.8): 8 bytes
    /// (64 bits) suffice where every identity byte costs air time.
    pub issued_id_bytes: usize,
    /// Append the realm of the identity in use to re-authentication identities (a full NAI,
    /// RFC 4187 §4.1.1.8, so that AAA proxies can route them; default `true`). Where the
    /// server is reached without routing (the gateway link) the realm is dead weight.
    pub reauth_id_realm: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            network_name: "WLAN".to_owned(),
            pseudonyms: true,
            fast_reauth: true,
            max_reauth: 16,
            result_indication: false,
            reauth_lifetime_secs: 3600,
            issued_id_bytes: 16,
            reauth_id_realm: true,
        }
    }
}

/// An authentication vector from the home network (TS 33.102 §6.3.2) for one challenge.
#[derive(Debug)]
pub struct VectorInput {
    /// RAND.
    pub rand: Rand,
    /// AUTN; its AMF separation bit must be 1 (RFC 9048 §3.2).
    pub autn: Autn,
    /// XRES.
    pub xres: Res,
    /// CK.
    pub ck: Ck,
    /// IK.
    pub ik: Ik,
}

impl From<capillary_aka::vector::AuthVector> for VectorInput {
    fn from(v: capillary_aka::vector::AuthVector) -> Self {
        Self {
            rand: v.rand,
            autn: v.autn,
            xres: v.xres,
            ck: v.ck,
            ik: v.ik,
        }
    }
}

/// Fast re-authentication state stored by the driver under a re-authentication identity
/// (RFC 9048 §3.4, RFC 4187 §5).
#[derive(Debug, Clone)]
pub struct ReauthContext {
    /// The subscriber.
    pub imsi: Imsi,
    /// K_encr of the full authentication.
    pub k_encr: KEncr,
    /// K_aut of the full authentication.
    pub k_aut: KAut,
    /// K_re of the full authentication.
    pub k_re: KRe,
    /// The counter value to send in the next re-authentication (1 after a full one).
    pub counter: u16,
}

/// Why the driver could not supply a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// No such subscriber.
    Unknown,
    /// The subscriber is barred.
    Barred,
    /// The subscriber store failed.
    StoreFailure,
}

/// How the peer was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Full authentication with an AKA challenge (RFC 9048 §3).
    Full,
    /// Fast re-authentication (RFC 9048 §3.4, RFC 4187 §5).
    FastReauth,
}

/// Which kind of identity the peer used (the one that went into key derivation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// `6<IMSI>@realm`.
    Permanent,
    /// A pseudonym.
    Pseudonym,
    /// A fast re-authentication identity.
    Reauth,
}

/// Why an authentication failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureReason {
    /// The peer sent Authentication-Reject (AUTN, AMF or KDF rejected, RFC 4187 §6.3.2).
    AuthenticationReject,
    /// The peer sent Client-Error with this code (RFC 4187 §6.3.1).
    ClientError(u16),
    /// AT_MAC missing or wrong.
    MacInvalid,
    /// AT_RES missing or not equal to XRES.
    ResMismatch,
    /// AT_CHECKCODE does not match the identity messages (RFC 4187 §10.13).
    CheckcodeMismatch,
    /// AT_COUNTER in the re-authentication response is wrong (RFC 4187 §5.4).
    CounterMismatch,
    /// The subscriber is unknown.
    UnknownSubscriber,
    /// The subscriber is barred.
    Barred,
    /// The subscriber store failed.
    StoreFailure,
    /// No usable identity after the allowed identity rounds (RFC 4187 §4.1.6).
    UnknownIdentity,
    /// The peer asked for a KDF other than KDF 1 (RFC 9048 §3.2).
    KdfUnsupported,
    /// A second synchronisation failure in one authentication.
    SyncFailureRepeated,
    /// The vector's AUTN has the AMF separation bit 0 (RFC 9048 §3.2).
    VectorInvalid,
    /// The peer refused EAP-AKA' with a Nak (RFC 3748 §5.3).
    PeerNak,
    /// A message that is not valid in the current state.
    UnexpectedMessage,
    /// A malformed EAP-AKA' message.
    Malformed(CodecError),
    /// An internal encoding error (a bug).
    Internal(CodecError),
}

/// Output of the server; handle in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerEvent {
    /// Send this EAP-Request to the peer (e.g. in a RADIUS Access-Challenge).
    Send(Vec<u8>),
    /// Fetch a vector for this subscriber, then call `provide_vector` (or
    /// `subscriber_rejected`).
    NeedVector {
        /// Subscriber.
        imsi: Imsi,
    },
    /// Re-synchronise SQN with AUTS (TS 33.102 §6.3.5), then call `provide_vector` with a fresh
    /// vector (or `subscriber_rejected`).
    NeedResync {
        /// Subscriber.
        imsi: Imsi,
        /// RAND of the rejected challenge.
        rand: Rand,
        /// AUTS from the peer.
        auts: Auts,
    },
    /// Look up a pseudonym (username part, without realm), then call `provide_pseudonym`.
    ResolvePseudonym {
        /// The pseudonym.
        pseudonym: String,
    },
    /// Look up a re-authentication identity (exactly as received), then call `provide_reauth`.
    ResolveReauth {
        /// The identity.
        reauth_id: String,
    },
    /// Store this pseudonym before sending the next message.
    PersistPseudonym {
        /// The pseudonym (username part).
        pseudonym: String,
        /// Its subscriber.
        imsi: Imsi,
    },
    /// Store this re-authentication record before sending the next message.
    PersistReauth {
        /// The identity, as the peer will send it.
        reauth_id: String,
        /// The record.
        rec: ReauthContext,
        /// Configured lifetime.
        lifetime_secs: u64,
    },
    /// Delete this re-authentication record (used, or over the counter limit).
    ForgetReauth {
        /// The identity.
        reauth_id: String,
    },
    /// Authentication succeeded; send `eap` (EAP-Success) with the MSK (e.g. Access-Accept).
    Success {
        /// EAP-Success.
        eap: Vec<u8>,
        /// Subscriber.
        imsi: Imsi,
        /// MSK (RFC 9048 §3.3).
        msk: Msk,
        /// EMSK.
        emsk: Emsk,
        /// Full or fast re-authentication.
        method: Method,
        /// Identity kind used.
        identity: IdentityKind,
        /// EAP Session-Id (RFC 5247 §1.4, RFC 9048 §6).
        session_id: Vec<u8>,
    },
    /// Authentication failed; send `eap` (EAP-Failure, e.g. in Access-Reject).
    Failure {
        /// EAP-Failure.
        eap: Vec<u8>,
        /// Why.
        reason: FailureReason,
    },
    /// The packet was silently discarded (RFC 3748 §4.1: wrong Identifier, not a Response,
    /// malformed header, or nothing outstanding); the state is unchanged and the driver keeps
    /// waiting (with RADIUS: no reply to this Access-Request).
    Discarded {
        /// What was wrong with it.
        why: DiscardReason,
    },
}

/// Why a packet was silently discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscardReason {
    /// Header could not be decoded.
    Malformed(CodecError),
    /// Not an EAP-Response.
    NotResponse,
    /// Identifier does not match the outstanding request (RFC 3748 §4.1).
    WrongIdentifier,
    /// Nothing outstanding: the server waits for the driver or has finished.
    NotExpected,
    /// An EAP Type this server does not handle here.
    UnexpectedType(u8),
    /// An API call that is not valid in the current state.
    ApiMisuse,
}

/// Proof that an AT_MAC verified; only [`verify_mac`] creates it.
struct MacVerified(());

fn verify_mac(d: &Decoded, k_aut: &KAut, extra: &[u8]) -> Option<MacVerified> {
    d.verify_mac(k_aut, extra).then_some(MacVerified(()))
}

struct FullKeys {
    k_encr: KEncr,
    k_aut: KAut,
    msk: Msk,
    emsk: Emsk,
    session_id: Vec<u8>,
}

/// EAP Session-Id (RFC 9048 §6 / RFC 5247): `0x32 ‖ RAND ‖ AUTN` for a full authentication,
/// `0x32 ‖ NONCE_S ‖ MAC` (AT_MAC of the Re-authentication request) for a fast one.
pub fn session_id(first: &[u8; 16], second: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    out.push(types::AKA_PRIME);
    out.extend_from_slice(first);
    out.extend_from_slice(second);
    out
}

fn last_mac(bytes: &[u8]) -> [u8; 16] {
    let mut mac = [0u8; 16];
    if bytes.len() >= 16 {
        mac.copy_from_slice(&bytes[bytes.len() - 16..]);
    }
    mac
}

enum State {
    Start,
    IdentityWait,
    ResolvingPseudonym,
    ResolvingReauth,
    VectorWait {
        imsi: Imsi,
        resynced: bool,
    },
    ChallengeSent {
        imsi: Imsi,
        rand: Rand,
        xres: Res,
        keys: FullKeys,
        resynced: bool,
    },
    ReauthSent {
        imsi: Imsi,
        counter: u16,
        nonce_s: [u8; 16],
        keys: FullKeys,
        reauth_id: String,
    },
    SuccessNotif {
        imsi: Imsi,
        keys: FullKeys,
        method: Method,
    },
    FailureNotif {
        reason: FailureReason,
    },
    Done,
}

/// The EAP-AKA' server for one authentication.
pub struct EapAkaServer {
    cfg: ServerConfig,
    state: State,
    next_id: u8,
    /// Identifier of the outstanding request.
    current_id: Option<u8>,
    /// Identity for key derivation: the last one the peer sent (RFC 9048 §3.3).
    identity: Vec<u8>,
    kind: IdentityKind,
    /// Strongest identity request sent so far.
    last_req: Option<IdReq>,
    identity_rounds: u8,
    /// AKA'-Identity requests and responses, for AT_CHECKCODE (RFC 4187 §10.13).
    id_msgs: Vec<Vec<u8>>,
    /// The AKA'-Identity request awaiting its response (to record for AT_CHECKCODE).
    pending_id_req: Option<Vec<u8>>,
    events: VecDeque<ServerEvent>,
}

impl core::fmt::Debug for EapAkaServer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EapAkaServer")
            .field("current_id", &self.current_id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn hex_id(rng: &mut dyn RngCore, bytes: usize) -> String {
    let mut b = [0u8; 32];
    let b = &mut b[..bytes.clamp(8, 32)];
    rng.fill_bytes(b);
    let mut s = String::with_capacity(2 * b.len());
    for x in b.iter() {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn split_realm(identity: &str) -> (&str, Option<&str>) {
    match identity.split_once('@') {
        Some((u, r)) => (u, Some(r)),
        None => (identity, None),
    }
}

impl EapAkaServer {
    /// A server for one authentication; request Identifiers start at `identifier_seed`.
    pub fn new(cfg: ServerConfig, identifier_seed: u8) -> Self {
        Self {
            cfg,
            state: State::Start,
            next_id: identifier_seed,
            current_id: None,
            identity: Vec::new(),
            kind: IdentityKind::Permanent,
            last_req: None,
            identity_rounds: 0,
            id_msgs: Vec::new(),
            pending_id_req: None,
            events: VecDeque::new(),
        }
    }

    /// The next output, if any.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// True once Success or Failure has been emitted.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Starts without an EAP-Response/Identity: sends EAP-Request/AKA'-Identity
    /// (RFC 4187 §4.1.5) asking for any identity (or full-auth / permanent per config).
    pub fn start(&mut self) {
        if !matches!(self.state, State::Start) {
            self.discard(DiscardReason::ApiMisuse);
            return;
        }
        let req = if self.cfg.fast_reauth {
            IdReq::Any
        } else if self.cfg.pseudonyms {
            IdReq::Fullauth
        } else {
            IdReq::Permanent
        };
        self.send_identity_request(req);
    }

    fn discard(&mut self, why: DiscardReason) {
        self.events.push_back(ServerEvent::Discarded { why });
    }

    fn alloc_id(&mut self) -> u8 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.current_id = Some(id);
        id
    }

    fn fail_id(&self) -> u8 {
        self.current_id.unwrap_or(self.next_id)
    }

    /// EAP-Failure now (RFC 4187 §6.3).
    fn fail_direct(&mut self, reason: FailureReason) {
        let eap = eap::failure(self.fail_id());
        self.state = State::Done;
        self.events.push_back(ServerEvent::Failure { eap, reason });
    }

    /// General-failure notification (P=1, no AT_MAC) then EAP-Failure (RFC 4187 §6.3.1).
    fn fail_notify(&mut self, reason: FailureReason) {
        let id = self.alloc_id();
        let p = AkaPacket::new(
            Code::Request,
            id,
            Subtype::Notification,
            vec![Attribute::Notification(notification::GENERAL_FAILURE)],
        );
        match p.encode() {
            Ok(bytes) => {
                self.state = State::FailureNotif { reason };
                self.events.push_back(ServerEvent::Send(bytes));
            }
            Err(e) => self.fail_direct(FailureReason::Internal(e)),
        }
    }

    fn send_identity_request(&mut self, req: IdReq) {
        self.identity_rounds += 1;
        if self.identity_rounds > 3 {
            self.fail_notify(FailureReason::UnknownIdentity);
            return;
        }
        self.last_req = Some(req);
        let id = self.alloc_id();
        let attr = match req {
            IdReq::Any => Attribute::AnyIdReq,
            IdReq::Fullauth => Attribute::FullauthIdReq,
            IdReq::Permanent => Attribute::PermanentIdReq,
        };
        let p = AkaPacket::new(Code::Request, id, Subtype::Identity, vec![attr]);
        match p.encode() {
            Ok(bytes) => {
                self.pending_id_req = Some(bytes.clone());
                self.state = State::IdentityWait;
                self.events.push_back(ServerEvent::Send(bytes));
            }
            Err(e) => self.fail_direct(FailureReason::Internal(e)),
        }
    }

    /// Asks for a stronger identity: at least `min`, and stronger than the last request.
    fn escalate(&mut self, min: IdReq) {
        let next = match self.last_req {
            None => Some(min),
            Some(IdReq::Any) => Some(min.max(IdReq::Fullauth)),
            Some(IdReq::Fullauth) => Some(IdReq::Permanent),
            Some(IdReq::Permanent) => None,
        };
        match next {
            Some(r) => self.send_identity_request(r),
            None => self.fail_notify(FailureReason::UnknownIdentity),
        }
    }

    /// Any EAP packet from the peer. The first one may be an EAP-Response/Identity forwarded
    /// by the NAS (RFC 3748 §5.1); otherwise call [`Self::start`] first.
    pub fn handle_response(&mut self, packet: &[u8], rng: &mut dyn RngCore) {
        let p = match Packet::parse(packet) {
            Ok(p) => p,
            Err(e) => return self.discard(DiscardReason::Malformed(e)),
        };
        if p.code != Code::Response {
            return self.discard(DiscardReason::NotResponse);
        }
        if matches!(self.state, State::Start) {
            if p.typ != Some(types::IDENTITY) {
                return self.discard(DiscardReason::UnexpectedType(p.typ.unwrap_or(0)));
            }
            if self.next_id == p.identifier {
                self.next_id = self.next_id.wrapping_add(1);
            }
            self.current_id = Some(p.identifier);
            let identity = p.type_data.to_vec();
            self.on_identity(identity, rng);
            return;
        }
        if self.current_id != Some(p.identifier) {
            return self.discard(DiscardReason::WrongIdentifier);
        }
        match self.state {
            State::IdentityWait
            | State::ChallengeSent { .. }
            | State::ReauthSent { .. }
            | State::SuccessNotif { .. }
            | State::FailureNotif { .. } => {}
            _ => return self.discard(DiscardReason::NotExpected),
        }
        match p.typ {
            Some(types::NAK) => return self.fail_direct(FailureReason::PeerNak),
            Some(types::AKA_PRIME) => {}
            Some(t) => return self.discard(DiscardReason::UnexpectedType(t)),
            None => return self.discard(DiscardReason::Malformed(CodecError::MissingType)),
        }
        if let State::FailureNotif { reason } = &self.state {
            let reason = reason.clone();
            return self.fail_direct(reason);
        }
        let d = match AkaPacket::decode(packet) {
            Ok(d) => d,
            Err(e) => return self.fail_notify(FailureReason::Malformed(e)),
        };
        match d.packet.subtype {
            Subtype::ClientError => {
                let code = d
                    .packet
                    .attributes
                    .client_error_code()
                    .copied()
                    .unwrap_or(0);
                return self.fail_direct(FailureReason::ClientError(code));
            }
            Subtype::AuthenticationReject => {
                return self.fail_direct(FailureReason::AuthenticationReject)
            }
            _ => {}
        }
        let state = core::mem::replace(&mut self.state, State::Done);
        match (state, d.packet.subtype) {
            (State::IdentityWait, Subtype::Identity) => self.on_aka_identity(&d, rng),
            (
                State::ChallengeSent {
                    imsi, xres, keys, ..
                },
                Subtype::Challenge,
            ) => self.on_challenge_response(&d, imsi, xres, keys, rng),
            (
                State::ChallengeSent {
                    imsi,
                    rand,
                    resynced,
                    ..
                },
                Subtype::SynchronizationFailure,
            ) => {
                let Some(auts) = d.packet.attributes.auts().copied() else {
                    return self.fail_notify(FailureReason::Malformed(
                        CodecError::AttributeValue { typ: AT_AUTS },
                    ));
                };
                if resynced {
                    return self.fail_notify(FailureReason::SyncFailureRepeated);
                }
                self.state = State::VectorWait {
                    imsi: imsi.clone(),
                    resynced: true,
                };
                self.events
                    .push_back(ServerEvent::NeedResync { imsi, rand, auts });
            }
            (
                State::ReauthSent {
                    imsi,
                    counter,
                    nonce_s,
                    keys,
                    reauth_id,
                },
                Subtype::Reauthentication,
            ) => self.on_reauth_response(&d, imsi, counter, nonce_s, keys, reauth_id, rng),
            (
                State::SuccessNotif {
                    imsi, keys, method, ..
                },
                Subtype::Notification,
            ) => {
                let Some(proof) = verify_mac(&d, &keys.k_aut, &[]) else {
                    return self.fail_direct(FailureReason::MacInvalid);
                };
                self.succeed(proof, imsi, keys, method);
            }
            _ => self.fail_notify(FailureReason::UnexpectedMessage),
        }
    }

    fn on_aka_identity(&mut self, d: &Decoded, rng: &mut dyn RngCore) {
        let a = &d.packet.attributes;
        if a.has(AT_MAC) || a.has(AT_IV) || a.has(AT_ENCR_DATA) {
            return self.fail_notify(FailureReason::UnexpectedMessage);
        }
        let Some(identity) = a.identity().cloned() else {
            return self.fail_notify(FailureReason::UnknownIdentity);
        };
        if let Some(req) = self.pending_id_req.take() {
            self.id_msgs.push(req);
            self.id_msgs.push(d.raw().to_vec());
        }
        self.on_identity(identity, rng);
    }

    fn on_identity(&mut self, mut identity: Vec<u8>, _rng: &mut dyn RngCore) {
        while identity.last() == Some(&0) {
            identity.pop();
        }
        self.identity = identity;
        let Ok(text) = core::str::from_utf8(&self.identity) else {
            return self.escalate(IdReq::Permanent);
        };
        let text = text.to_owned();
        let (user, _realm) = split_realm(&text);
        let first = user.chars().next();
        let last = self.last_req;
        match first {
            Some(PERMANENT_PREFIX) => match Imsi::new(&user[1..]) {
                Ok(imsi) => {
                    self.kind = IdentityKind::Permanent;
                    self.state = State::VectorWait {
                        imsi: imsi.clone(),
                        resynced: false,
                    };
                    self.events.push_back(ServerEvent::NeedVector { imsi });
                }
                Err(_) => self.escalate(IdReq::Permanent),
            },
            Some(PSEUDONYM_PREFIX) if self.cfg.pseudonyms && last != Some(IdReq::Permanent) => {
                self.state = State::ResolvingPseudonym;
                self.events.push_back(ServerEvent::ResolvePseudonym {
                    pseudonym: user.to_owned(),
                });
            }
            Some(REAUTH_PREFIX)
                if self.cfg.fast_reauth && matches!(last, None | Some(IdReq::Any)) =>
            {
                self.state = State::ResolvingReauth;
                self.events
                    .push_back(ServerEvent::ResolveReauth { reauth_id: text });
            }
            Some(REAUTH_PREFIX) => self.escalate(IdReq::Fullauth),
            // Unrecognised (e.g. "anonymous@realm"): ask for a full-auth identity, which still
            // lets the peer hide its IMSI behind a pseudonym (RFC 4187 §4.1.6).
            _ if self.cfg.pseudonyms => self.escalate(IdReq::Fullauth),
            _ => self.escalate(IdReq::Permanent),
        }
    }

    /// Answer to [`ServerEvent::ResolvePseudonym`]: the subscriber, or `None` if unknown (the
    /// server then asks for the permanent identity, RFC 4187 §4.1.4).
    pub fn provide_pseudonym(&mut self, imsi: Option<Imsi>, _rng: &mut dyn RngCore) {
        if !matches!(self.state, State::ResolvingPseudonym) {
            return self.discard(DiscardReason::ApiMisuse);
        }
        match imsi {
            Some(imsi) => {
                self.kind = IdentityKind::Pseudonym;
                self.state = State::VectorWait {
                    imsi: imsi.clone(),
                    resynced: false,
                };
                self.events.push_back(ServerEvent::NeedVector { imsi });
            }
            None => self.escalate(IdReq::Permanent),
        }
    }

    /// Answer to [`ServerEvent::ResolveReauth`]: the stored record, or `None` if unknown (the
    /// server then asks for a full-authentication identity, RFC 4187 §5.1).
    pub fn provide_reauth(&mut self, rec: Option<ReauthContext>, rng: &mut dyn RngCore) {
        if !matches!(self.state, State::ResolvingReauth) {
            return self.discard(DiscardReason::ApiMisuse);
        }
        let Some(rec) = rec else {
            return self.escalate(IdReq::Fullauth);
        };
        let reauth_id = String::from_utf8_lossy(&self.identity).into_owned();
        self.kind = IdentityKind::Reauth;
        if rec.counter == 0 || rec.counter > self.cfg.max_reauth {
            // Counter limit reached: full authentication, still keyed on this identity
            // (the peer used it in its last identity message, RFC 9048 §3.3).
            self.events
                .push_back(ServerEvent::ForgetReauth { reauth_id });
            self.state = State::VectorWait {
                imsi: rec.imsi.clone(),
                resynced: false,
            };
            self.events
                .push_back(ServerEvent::NeedVector { imsi: rec.imsi });
            return;
        }
        if let Err(e) = self.send_reauth(rec, reauth_id, rng) {
            self.fail_direct(FailureReason::Internal(e));
        }
    }

    fn realm_suffix(&self) -> String {
        if !self.cfg.reauth_id_realm {
            return String::new();
        }
        let text = String::from_utf8_lossy(&self.identity);
        match split_realm(&text).1 {
            Some(r) => format!("@{r}"),
            None => String::new(),
        }
    }

    fn checkcode_attr(&self) -> Attribute {
        if self.id_msgs.is_empty() {
            Attribute::Checkcode(Vec::new())
        } else {
            let parts: Vec<&[u8]> = self.id_msgs.iter().map(Vec::as_slice).collect();
            Attribute::Checkcode(prime::checkcode(&parts).to_vec())
        }
    }

    fn checkcode_ok(&self, got: Option<&Vec<u8>>) -> bool {
        let Some(got) = got else {
            // AT_CHECKCODE is optional in responses (RFC 4187 §10.13).
            return true;
        };
        match self.checkcode_attr() {
            Attribute::Checkcode(want) => {
                want.len() == got.len() && bool::from(want.as_slice().ct_eq(got.as_slice()))
            }
            _ => false,
        }
    }

    fn send_reauth(
        &mut self,
        rec: ReauthContext,
        reauth_id: String,
        rng: &mut dyn RngCore,
    ) -> Result<(), CodecError> {
        let mut nonce_s = [0u8; 16];
        rng.fill_bytes(&mut nonce_s);
        let counter = rec.counter;
        let keys = prime::reauth_keys(&rec.k_re, &self.identity, counter, &nonce_s);
        let mut inner = vec![Attribute::Counter(counter), Attribute::NonceS(nonce_s)];
        if self.cfg.fast_reauth && counter < self.cfg.max_reauth {
            let next = format!(
                "{REAUTH_PREFIX}{}{}",
                hex_id(rng, self.cfg.issued_id_bytes),
                self.realm_suffix()
            );
            inner.push(Attribute::NextReauthId(next.clone().into_bytes()));
            self.events.push_back(ServerEvent::PersistReauth {
                reauth_id: next,
                rec: ReauthContext {
                    imsi: rec.imsi.clone(),
                    k_encr: rec.k_encr.clone(),
                    k_aut: rec.k_aut.clone(),
                    k_re: rec.k_re.clone(),
                    counter: counter + 1,
                },
                lifetime_secs: self.cfg.reauth_lifetime_secs,
            });
        }
        let mut iv = [0u8; 16];
        rng.fill_bytes(&mut iv);
        let mut attrs = Vec::new();
        attrs.extend(encrypted_pair(&rec.k_encr, iv, &inner)?);
        attrs.push(self.checkcode_attr());
        if self.cfg.result_indication {
            attrs.push(Attribute::ResultInd);
        }
        let id = self.alloc_id();
        let bytes = AkaPacket::new(Code::Request, id, Subtype::Reauthentication, attrs)
            .encode_with_mac(&rec.k_aut, &[])?;
        self.state = State::ReauthSent {
            imsi: rec.imsi.clone(),
            counter,
            nonce_s,
            keys: FullKeys {
                k_encr: rec.k_encr.clone(),
                k_aut: rec.k_aut.clone(),
                msk: keys.msk,
                emsk: keys.emsk,
                // AT_MAC is appended last by `encode_with_mac`.
                session_id: session_id(&nonce_s, &last_mac(&bytes)),
            },
            reauth_id,
        };
        self.events.push_back(ServerEvent::Send(bytes));
        Ok(())
    }

    /// Answer to [`ServerEvent::NeedVector`] / [`ServerEvent::NeedResync`]: sends
    /// EAP-Request/AKA'-Challenge (RFC 9048 §3).
    pub fn provide_vector(&mut self, v: VectorInput, rng: &mut dyn RngCore) {
        if !matches!(self.state, State::VectorWait { .. }) {
            return self.discard(DiscardReason::ApiMisuse);
        }
        let State::VectorWait { imsi, resynced } = core::mem::replace(&mut self.state, State::Done)
        else {
            return;
        };
        if let Err(e) = self.send_challenge(v, imsi, resynced, rng) {
            self.fail_direct(FailureReason::Internal(e));
        }
    }

    fn send_challenge(
        &mut self,
        v: VectorInput,
        imsi: Imsi,
        resynced: bool,
        rng: &mut dyn RngCore,
    ) -> Result<(), CodecError> {
        let amf = Amf([v.autn.0[6], v.autn.0[7]]);
        if !amf.separation_bit() {
            self.fail_notify(FailureReason::VectorInvalid);
            return Ok(());
        }
        let mut sqn_xor_ak = [0u8; 6];
        sqn_xor_ak.copy_from_slice(&v.autn.0[..6]);
        let name = self.cfg.network_name.clone().into_bytes();
        let (ckp, ikp) = prime::ck_ik_prime(&v.ck, &v.ik, &name, &sqn_xor_ak);
        let keys = prime::full_auth_keys(&self.identity, &ckp, &ikp);

        let mut inner = Vec::new();
        if self.cfg.pseudonyms {
            let p = format!(
                "{PSEUDONYM_PREFIX}{}",
                hex_id(rng, self.cfg.issued_id_bytes)
            );
            inner.push(Attribute::NextPseudonym(p.clone().into_bytes()));
            self.events.push_back(ServerEvent::PersistPseudonym {
                pseudonym: p,
                imsi: imsi.clone(),
            });
        }
        if self.cfg.fast_reauth && self.cfg.max_reauth > 0 {
            let r = format!(
                "{REAUTH_PREFIX}{}{}",
                hex_id(rng, self.cfg.issued_id_bytes),
                self.realm_suffix()
            );
            inner.push(Attribute::NextReauthId(r.clone().into_bytes()));
            self.events.push_back(ServerEvent::PersistReauth {
                reauth_id: r,
                rec: ReauthContext {
                    imsi: imsi.clone(),
                    k_encr: keys.k_encr.clone(),
                    k_aut: keys.k_aut.clone(),
                    k_re: keys.k_re.clone(),
                    counter: 1,
                },
                lifetime_secs: self.cfg.reauth_lifetime_secs,
            });
        }
        let mut attrs = vec![
            Attribute::Rand(v.rand),
            Attribute::Autn(v.autn),
            Attribute::Kdf(KDF_AKA_PRIME),
            Attribute::KdfInput(name),
        ];
        if !inner.is_empty() {
            let mut iv = [0u8; 16];
            rng.fill_bytes(&mut iv);
            attrs.extend(encrypted_pair(&keys.k_encr, iv, &inner)?);
        }
        attrs.push(self.checkcode_attr());
        if self.cfg.result_indication {
            attrs.push(Attribute::ResultInd);
        }
        let id = self.alloc_id();
        let bytes = AkaPacket::new(Code::Request, id, Subtype::Challenge, attrs)
            .encode_with_mac(&keys.k_aut, &[])?;
        self.state = State::ChallengeSent {
            imsi,
            rand: v.rand,
            xres: v.xres.clone(),
            keys: FullKeys {
                k_encr: keys.k_encr.clone(),
                k_aut: keys.k_aut.clone(),
                msk: keys.msk,
                emsk: keys.emsk,
                session_id: session_id(&v.rand.0, &v.autn.0),
            },
            resynced,
        };
        self.events.push_back(ServerEvent::Send(bytes));
        Ok(())
    }

    /// Answer to [`ServerEvent::NeedVector`] / [`ServerEvent::NeedResync`] when no vector can
    /// be produced: general-failure notification, then EAP-Failure.
    pub fn subscriber_rejected(&mut self, reason: RejectReason) {
        if !matches!(self.state, State::VectorWait { .. }) {
            return self.discard(DiscardReason::ApiMisuse);
        }
        let r = match reason {
            RejectReason::Unknown => FailureReason::UnknownSubscriber,
            RejectReason::Barred => FailureReason::Barred,
            RejectReason::StoreFailure => FailureReason::StoreFailure,
        };
        self.fail_notify(r);
    }

    fn on_challenge_response(
        &mut self,
        d: &Decoded,
        imsi: Imsi,
        xres: Res,
        keys: FullKeys,
        rng: &mut dyn RngCore,
    ) {
        let a = &d.packet.attributes;
        if !a.has(AT_MAC) && !a.kdfs().is_empty() {
            // KDF negotiation (RFC 9048 §3.2): the peer wants a KDF we do not offer.
            return self.fail_notify(FailureReason::KdfUnsupported);
        }
        let Some(proof) = verify_mac(d, &keys.k_aut, &[]) else {
            return self.fail_notify(FailureReason::MacInvalid);
        };
        if !self.checkcode_ok(a.checkcode()) {
            return self.fail_notify(FailureReason::CheckcodeMismatch);
        }
        let res_ok = a.res().is_some_and(|r| bool::from(r.ct_eq(&xres)));
        if !res_ok {
            return self.fail_notify(FailureReason::ResMismatch);
        }
        let result_ind = a.has(AT_RESULT_IND);
        self.authenticated(proof, imsi, keys, Method::Full, None, result_ind, rng);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_reauth_response(
        &mut self,
        d: &Decoded,
        imsi: Imsi,
        counter: u16,
        nonce_s: [u8; 16],
        keys: FullKeys,
        reauth_id: String,
        rng: &mut dyn RngCore,
    ) {
        let a = &d.packet.attributes;
        let Some(proof) = verify_mac(d, &keys.k_aut, &nonce_s) else {
            return self.fail_notify(FailureReason::MacInvalid);
        };
        let (Some(iv), Some(data)) = (a.iv(), a.encr_data()) else {
            return self.fail_notify(FailureReason::Malformed(CodecError::Encryption));
        };
        let inner = match decrypt_attributes(&keys.k_encr, iv, data) {
            Ok(i) => i,
            Err(e) => return self.fail_notify(FailureReason::Malformed(e)),
        };
        if !self.checkcode_ok(a.checkcode()) {
            return self.fail_notify(FailureReason::CheckcodeMismatch);
        }
        self.events
            .push_back(ServerEvent::ForgetReauth { reauth_id });
        if inner.has(AT_COUNTER_TOO_SMALL) {
            // RFC 4187 §5.5: fall back to full authentication; the identity for key
            // derivation stays the re-authentication identity.
            self.state = State::VectorWait {
                imsi: imsi.clone(),
                resynced: false,
            };
            self.events.push_back(ServerEvent::NeedVector { imsi });
            return;
        }
        if inner.counter() != Some(&counter) {
            return self.fail_notify(FailureReason::CounterMismatch);
        }
        let result_ind = a.has(AT_RESULT_IND);
        self.authenticated(
            proof,
            imsi,
            keys,
            Method::FastReauth,
            Some(counter),
            result_ind,
            rng,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn authenticated(
        &mut self,
        proof: MacVerified,
        imsi: Imsi,
        keys: FullKeys,
        method: Method,
        counter: Option<u16>,
        peer_result_ind: bool,
        rng: &mut dyn RngCore,
    ) {
        if self.cfg.result_indication && peer_result_ind {
            // Protected success indication (RFC 4187 §6.2).
            let id = self.alloc_id();
            let mut attrs = vec![Attribute::Notification(notification::SUCCESS)];
            if let Some(c) = counter {
                let mut iv = [0u8; 16];
                rng.fill_bytes(&mut iv);
                match encrypted_pair(&keys.k_encr, iv, &[Attribute::Counter(c)]) {
                    Ok(pair) => attrs.extend(pair),
                    Err(e) => return self.fail_direct(FailureReason::Internal(e)),
                }
            }
            match AkaPacket::new(Code::Request, id, Subtype::Notification, attrs)
                .encode_with_mac(&keys.k_aut, &[])
            {
                Ok(bytes) => {
                    self.state = State::SuccessNotif { imsi, keys, method };
                    self.events.push_back(ServerEvent::Send(bytes));
                }
                Err(e) => self.fail_direct(FailureReason::Internal(e)),
            }
            return;
        }
        self.succeed(proof, imsi, keys, method);
    }

    /// Reachable only with a [`MacVerified`] proof.
    fn succeed(&mut self, _proof: MacVerified, imsi: Imsi, keys: FullKeys, method: Method) {
        let eap = eap::success(self.fail_id());
        self.state = State::Done;
        self.events.push_back(ServerEvent::Success {
            eap,
            imsi,
            msk: keys.msk,
            emsk: keys.emsk,
            method,
            identity: self.kind,
            session_id: keys.session_id,
        });
    }
}
