//! The Security Context (RFC 8613 §3) and message protection / verification (§8).

use capillary_coap::msg::{encode_uint, option_number as num, CoapOption, Code, Message};

use crate::crypto::{self, MAX_ID_LEN, MAX_SSN, TAG_LEN};
use crate::error::{DecodeError, OscoreError};
use crate::message::{decode_plaintext, encode_plaintext, merge, split_options};
use crate::option::OscoreOption;
use crate::replay::ReplayWindow;
use crate::secret::{AeadKey, CommonIv, MasterSalt, MasterSecret, NONCE_LEN};

/// Default Replay Window size (RFC 8613 §3.2.2: "the default is 32").
pub const DEFAULT_REPLAY_WINDOW: usize = 32;

/// Whether the Sender Sequence Number must be covered by a persisted mark before use
/// (RFC 8613 Appendix B.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SsnPersistence {
    /// No persistence: only for contexts derived afresh each time (new Master Secret,
    /// Master Salt or ID Context, e.g. from EAP or EDHOC, RFC 8613 Appendix B.2).
    #[default]
    Volatile,
    /// Every SSN used must be below a mark the driver has persisted
    /// ([`SecurityContext::reserve_ssn_block`], [`SecurityContext::confirm_ssn_persisted`]).
    Persistent,
}

/// Input parameters of the Security Context (RFC 8613 §3.2).
#[derive(Clone, Copy)]
pub struct ContextParams<'a> {
    /// Master Secret (RFC 8613 §3.1), non-empty.
    pub master_secret: &'a [u8],
    /// Master Salt; empty is the default (RFC 8613 §3.2).
    pub master_salt: &'a [u8],
    /// ID Context, if any (RFC 8613 §3.1); also sent as kid context in requests.
    pub id_context: Option<&'a [u8]>,
    /// Own Sender ID (0..=7 bytes, RFC 8613 §3.3).
    pub sender_id: &'a [u8],
    /// Peer's Sender ID = own Recipient ID (0..=7 bytes, different from `sender_id`).
    pub recipient_id: &'a [u8],
    /// Replay Window size, 1..=128 (default 32).
    pub replay_window: usize,
    /// Sender Sequence Number persistence (default volatile).
    pub ssn_persistence: SsnPersistence,
}

impl<'a> ContextParams<'a> {
    /// Parameters with defaults: empty Master Salt, no ID Context, window 32, volatile SSN.
    pub fn new(master_secret: &'a [u8], sender_id: &'a [u8], recipient_id: &'a [u8]) -> Self {
        Self {
            master_secret,
            master_salt: &[],
            id_context: None,
            sender_id,
            recipient_id,
            replay_window: DEFAULT_REPLAY_WINDOW,
            ssn_persistence: SsnPersistence::Volatile,
        }
    }
}

impl core::fmt::Debug for ContextParams<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ContextParams")
            .field("master_secret", &"..")
            .field("master_salt", &"..")
            .field("id_context", &self.id_context)
            .field("sender_id", &self.sender_id)
            .field("recipient_id", &self.recipient_id)
            .field("replay_window", &self.replay_window)
            .field("ssn_persistence", &self.ssn_persistence)
            .finish()
    }
}

/// What a driver persisted for a context derived once (RFC 8613 Appendix B.1), given to
/// [`SecurityContext::restore`] after a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistedState {
    /// The last mark confirmed with [`SecurityContext::confirm_ssn_persisted`]: every SSN
    /// below it may have been used, none at or above it was (Appendix B.1.1).
    pub ssn_mark: u64,
    /// The last persisted [`SecurityContext::replay_high_water`]: the restored context
    /// rejects every Partial IV `<=` it (Appendix B.1.2). `None` only if no request was
    /// ever accepted on this context.
    pub replay_floor: Option<u64>,
}

/// What ties a response to its request (RFC 8613 §5.4, §8.1, §8.3): the request's kid,
/// Partial IV and AEAD nonce, and for Observe the Notification Number (§7.4.1).
///
/// Returned by [`SecurityContext::protect_request`] (client side) and
/// [`SecurityContext::unprotect_request`] (server side); keep it with the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBinding {
    kid: Vec<u8>,
    piv: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    observe: bool,
    notification_number: Option<u64>,
}

impl RequestBinding {
    /// The request's kid (the requester's Sender ID).
    pub fn kid(&self) -> &[u8] {
        &self.kid
    }
    /// The request's Partial IV.
    pub fn partial_iv(&self) -> &[u8] {
        &self.piv
    }
    /// Whether the request carried Observe.
    pub fn is_observe(&self) -> bool {
        self.observe
    }
}

/// An OSCORE Security Context (RFC 8613 §3.1): Common, Sender and Recipient Context.
///
/// Holds only derived keys; the Master Secret and Salt are not kept.
#[derive(Debug)]
pub struct SecurityContext {
    id_context: Option<Vec<u8>>,
    sender_id: Vec<u8>,
    recipient_id: Vec<u8>,
    sender_key: AeadKey,
    recipient_key: AeadKey,
    common_iv: CommonIv,
    /// Next Sender Sequence Number to use.
    ssn: u64,
    persistence: SsnPersistence,
    /// Persistent mode: SSNs `< persisted_mark` may be used.
    persisted_mark: u64,
    /// Persistent mode: the last mark handed out by `reserve_ssn_block`, not yet confirmed.
    pending_mark: Option<u64>,
    last_block: u64,
    window: ReplayWindow,
    send_kid_context: bool,
}

impl SecurityContext {
    /// Derives a fresh context (RFC 8613 §3.2): Sender Key, Recipient Key and Common IV with
    /// HKDF-SHA-256, AEAD AES-CCM-16-64-128; SSN 0, empty Replay Window.
    pub fn new(params: ContextParams<'_>) -> Result<Self, OscoreError> {
        if params.sender_id.len() > MAX_ID_LEN || params.recipient_id.len() > MAX_ID_LEN {
            return Err(OscoreError::InvalidParams(
                "Sender/Recipient ID longer than 7 bytes",
            ));
        }
        if params.sender_id == params.recipient_id {
            return Err(OscoreError::InvalidParams("Sender ID equals Recipient ID"));
        }
        if params.id_context.is_some_and(|c| c.len() > 255) {
            return Err(OscoreError::InvalidParams(
                "ID Context longer than 255 bytes",
            ));
        }
        let window = ReplayWindow::new(params.replay_window)
            .ok_or(OscoreError::InvalidParams("replay window must be 1..=128"))?;
        let secret = MasterSecret::from_slice(params.master_secret)?;
        let salt = MasterSalt::from_slice(params.master_salt);
        let idc = params.id_context;
        Ok(Self {
            id_context: idc.map(<[u8]>::to_vec),
            sender_id: params.sender_id.to_vec(),
            recipient_id: params.recipient_id.to_vec(),
            sender_key: crypto::derive_key(&secret, &salt, params.sender_id, idc)?,
            recipient_key: crypto::derive_key(&secret, &salt, params.recipient_id, idc)?,
            common_iv: crypto::derive_common_iv(&secret, &salt, idc)?,
            ssn: 0,
            persistence: params.ssn_persistence,
            persisted_mark: 0,
            pending_mark: None,
            last_block: 0,
            window,
            send_kid_context: idc.is_some(),
        })
    }

    /// Re-creates a context derived once, after a reboot (RFC 8613 Appendix B.1): the SSN
    /// resumes at `state.ssn_mark` (never reusing one that may have been used), persistence
    /// becomes [`SsnPersistence::Persistent`] (so a new mark must be reserved and persisted
    /// before the first message), and Partial IVs `<= state.replay_floor` are rejected.
    pub fn restore(params: ContextParams<'_>, state: PersistedState) -> Result<Self, OscoreError> {
        if state.ssn_mark > MAX_SSN + 1 {
            return Err(OscoreError::InvalidParams("persisted SSN mark beyond 2^40"));
        }
        let mut ctx = Self::new(params)?;
        ctx.ssn = state.ssn_mark;
        ctx.persistence = SsnPersistence::Persistent;
        ctx.persisted_mark = state.ssn_mark;
        if let Some(floor) = state.replay_floor {
            ctx.window = ReplayWindow::with_floor(params.replay_window, floor)
                .ok_or(OscoreError::InvalidParams("replay window must be 1..=128"))?;
        }
        Ok(ctx)
    }

    /// Own Sender ID.
    pub fn sender_id(&self) -> &[u8] {
        &self.sender_id
    }
    /// Own Recipient ID (the peer's Sender ID).
    pub fn recipient_id(&self) -> &[u8] {
        &self.recipient_id
    }
    /// ID Context, if any.
    pub fn id_context(&self) -> Option<&[u8]> {
        self.id_context.as_deref()
    }
    /// Sender Key (RFC 8613 §3.2.1). Secret: for test vectors and key export only.
    pub fn sender_key(&self) -> &AeadKey {
        &self.sender_key
    }
    /// Recipient Key (RFC 8613 §3.2.1). Secret: for test vectors and key export only.
    pub fn recipient_key(&self) -> &AeadKey {
        &self.recipient_key
    }
    /// Common IV (RFC 8613 §3.2.1).
    pub fn common_iv(&self) -> &CommonIv {
        &self.common_iv
    }
    /// The next Sender Sequence Number to be used.
    pub fn sender_sequence_number(&self) -> u64 {
        self.ssn
    }
    /// Whether requests carry the kid context (default: when an ID Context is set).
    pub fn set_send_kid_context(&mut self, send: bool) {
        self.send_kid_context = send;
    }

    /// Highest Partial IV accepted in a request: persist it (before acting on the request)
    /// to restore with [`PersistedState::replay_floor`] (RFC 8613 Appendix B.1.2).
    pub fn replay_high_water(&self) -> Option<u64> {
        self.window.highest()
    }

    /// In [`SsnPersistence::Persistent`] mode: whether a new mark should be reserved and
    /// persisted now, i.e. at least half of the current block is used (or none reserved).
    pub fn ssn_persist_due(&self) -> bool {
        self.persistence == SsnPersistence::Persistent
            && self.persisted_mark.saturating_sub(self.ssn) <= self.last_block / 2
    }

    /// Reserves the next `k` SSNs (RFC 8613 Appendix B.1.1): returns the mark to persist
    /// (= current SSN + `k`, capped at 2^40). Until [`Self::confirm_ssn_persisted`] is called
    /// with it, only SSNs below the previous mark are usable.
    pub fn reserve_ssn_block(&mut self, k: u64) -> Result<u64, OscoreError> {
        if k == 0 {
            return Err(OscoreError::InvalidParams(
                "SSN block size must be positive",
            ));
        }
        if self.ssn > MAX_SSN {
            return Err(OscoreError::SsnExhausted);
        }
        let mark = self
            .ssn
            .saturating_add(k)
            .min(MAX_SSN + 1)
            .max(self.persisted_mark);
        self.pending_mark = Some(mark);
        self.last_block = k;
        Ok(mark)
    }

    /// Tells the context that `mark` (from [`Self::reserve_ssn_block`]) is durably stored;
    /// SSNs below it become usable. Any other value is rejected.
    pub fn confirm_ssn_persisted(&mut self, mark: u64) -> Result<(), OscoreError> {
        if self.pending_mark != Some(mark) {
            return Err(OscoreError::InvalidParams(
                "mark was not the last reserved one",
            ));
        }
        self.pending_mark = None;
        self.persistence = SsnPersistence::Persistent;
        self.persisted_mark = self.persisted_mark.max(mark);
        Ok(())
    }

    /// The SSN a message would use, without consuming it.
    fn check_ssn(&self) -> Result<u64, OscoreError> {
        if self.ssn > MAX_SSN {
            return Err(OscoreError::SsnExhausted);
        }
        if self.persistence == SsnPersistence::Persistent && self.ssn >= self.persisted_mark {
            return Err(OscoreError::SsnNotPersisted);
        }
        Ok(self.ssn)
    }

    fn outer_message(
        plain: &Message,
        code: Code,
        mut outer: Vec<CoapOption>,
        option: Vec<u8>,
        ct: Vec<u8>,
    ) -> Message {
        let mut m = Message::new(plain.ty, code, plain.message_id, plain.token.clone());
        outer.push(CoapOption {
            number: num::OSCORE,
            value: option,
        });
        outer.sort_by_key(|o| o.number);
        m.options = outer;
        m.payload = ct;
        m
    }

    /// Protects a request (RFC 8613 §8.1) with the next Sender Sequence Number.
    /// Outer code POST, or FETCH if the request carries Observe (§4.2).
    pub fn protect_request(
        &mut self,
        plain: &Message,
    ) -> Result<(Message, RequestBinding), OscoreError> {
        if !plain.code.is_request() {
            return Err(OscoreError::InvalidParams("not a request"));
        }
        let (inner, outer) = split_options(plain, false)?;
        let plaintext = encode_plaintext(plain.code, &inner, &plain.payload)?;
        let ssn = self.check_ssn()?;
        let piv = crypto::piv_from_ssn(ssn);
        let nonce = crypto::nonce(&self.common_iv, &self.sender_id, &piv)?;
        let aad = crypto::aad(&self.sender_id, &piv);
        let ct = crypto::seal(&self.sender_key, &nonce, &aad, &plaintext)?;
        self.ssn = ssn + 1;
        let option = OscoreOption {
            partial_iv: Some(&piv),
            kid_context: if self.send_kid_context {
                self.id_context.as_deref()
            } else {
                None
            },
            kid: Some(&self.sender_id),
        }
        .encode();
        let observe = plain.has_option(num::OBSERVE);
        let code = if observe { Code::FETCH } else { Code::POST };
        let msg = Self::outer_message(plain, code, outer, option, ct);
        let binding = RequestBinding {
            kid: self.sender_id.clone(),
            piv,
            nonce,
            observe,
            notification_number: None,
        };
        Ok((msg, binding))
    }

    fn single_option(protected: &Message) -> Result<OscoreOption<'_>, OscoreError> {
        let mut it = protected.options_of(num::OSCORE);
        let value = it.next().ok_or(OscoreError::NotProtected)?;
        if it.next().is_some() {
            return Err(DecodeError::RepeatedOption.into());
        }
        if protected.payload.len() < TAG_LEN + 1 {
            return Err(DecodeError::CiphertextTooShort.into());
        }
        Ok(OscoreOption::decode(value)?)
    }

    /// Verifies a request (RFC 8613 §8.2). The Replay Window (§7.4) is checked and updated
    /// only after successful decryption, so forgeries never move it.
    pub fn unprotect_request(
        &mut self,
        protected: &Message,
    ) -> Result<(Message, RequestBinding), OscoreError> {
        let opt = Self::single_option(protected)?;
        let piv = opt.partial_iv.ok_or(DecodeError::MissingPartialIv)?;
        let kid = opt.kid.ok_or(DecodeError::MissingKid)?;
        if kid != self.recipient_id.as_slice() {
            return Err(OscoreError::UnknownKid);
        }
        if let Some(kc) = opt.kid_context {
            if Some(kc) != self.id_context.as_deref() {
                return Err(OscoreError::UnknownKid);
            }
        }
        let seq =
            crypto::ssn_from_piv(piv).ok_or(DecodeError::ReservedPivLength(piv.len() as u8))?;
        let nonce = crypto::nonce(&self.common_iv, kid, piv)?;
        let aad = crypto::aad(kid, piv);
        let pt = crypto::open(&self.recipient_key, &nonce, &aad, &protected.payload)?;
        if !self.window.check(seq) {
            return Err(OscoreError::Replay);
        }
        self.window.update(seq);
        let (code, inner, payload) = decode_plaintext(&pt)?;
        if !code.is_request() || inner.iter().any(|o| o.number == num::OSCORE) {
            return Err(OscoreError::InvalidPlaintext);
        }
        let observe = inner.iter().any(|o| o.number == num::OBSERVE);
        let binding = RequestBinding {
            kid: kid.to_vec(),
            piv: piv.to_vec(),
            nonce,
            observe,
            notification_number: None,
        };
        Ok((merge(protected, code, inner, payload), binding))
    }

    /// Protects a response to the request bound by `req` (RFC 8613 §8.3). With
    /// `fresh_piv` — forced for Observe notifications (§4.1.3.5.2) — the next SSN is used as
    /// Partial IV and sent; otherwise the request's nonce is reused and the OSCORE option
    /// is empty. A notification's Observe value goes Outer, the Inner Observe is empty.
    /// Outer code 2.04 Changed, or 2.05 Content with Observe (§4.2).
    pub fn protect_response(
        &mut self,
        plain: &Message,
        req: &RequestBinding,
        fresh_piv: bool,
    ) -> Result<Message, OscoreError> {
        if !plain.code.is_response() {
            return Err(OscoreError::InvalidParams("not a response"));
        }
        if req.kid != self.recipient_id {
            return Err(OscoreError::InvalidParams(
                "binding is not for a request received on this context",
            ));
        }
        let (inner, outer) = split_options(plain, true)?;
        let plaintext = encode_plaintext(plain.code, &inner, &plain.payload)?;
        let observe = plain.has_option(num::OBSERVE);
        let aad = crypto::aad(&req.kid, &req.piv);
        let (ct, option) = if fresh_piv || observe {
            let ssn = self.check_ssn()?;
            let piv = crypto::piv_from_ssn(ssn);
            let nonce = crypto::nonce(&self.common_iv, &self.sender_id, &piv)?;
            let ct = crypto::seal(&self.sender_key, &nonce, &aad, &plaintext)?;
            self.ssn = ssn + 1;
            (
                ct,
                OscoreOption {
                    partial_iv: Some(&piv),
                    ..Default::default()
                }
                .encode(),
            )
        } else {
            (
                crypto::seal(&self.sender_key, &req.nonce, &aad, &plaintext)?,
                Vec::new(),
            )
        };
        let code = if observe {
            Code::CONTENT
        } else {
            Code::CHANGED
        };
        Ok(Self::outer_message(plain, code, outer, option, ct))
    }

    /// Verifies a response to the request bound by `req` (RFC 8613 §8.4). A notification
    /// (Inner Observe) must answer an Observe request ([`OscoreError::UnexpectedObserve`]),
    /// carry a Partial IV, and be newer than the last one accepted (Notification Number,
    /// §7.4.1), else [`OscoreError::Replay`]; its Observe value is set to the low 3 bytes of
    /// the Partial IV (§4.1.3.5.2).
    pub fn unprotect_response(
        &mut self,
        protected: &Message,
        req: &mut RequestBinding,
    ) -> Result<Message, OscoreError> {
        if req.kid != self.sender_id {
            return Err(OscoreError::InvalidParams(
                "binding is not for a request sent on this context",
            ));
        }
        let opt = Self::single_option(protected)?;
        if opt.kid.is_some_and(|k| k != self.recipient_id.as_slice()) {
            return Err(OscoreError::UnknownKid);
        }
        if opt
            .kid_context
            .is_some_and(|kc| Some(kc) != self.id_context.as_deref())
        {
            return Err(OscoreError::UnknownKid);
        }
        let aad = crypto::aad(&req.kid, &req.piv);
        let (nonce, seq) = match opt.partial_iv {
            Some(piv) => (
                crypto::nonce(&self.common_iv, &self.recipient_id, piv)?,
                crypto::ssn_from_piv(piv),
            ),
            None => (req.nonce, None),
        };
        let pt = crypto::open(&self.recipient_key, &nonce, &aad, &protected.payload)?;
        let (code, mut inner, payload) = decode_plaintext(&pt)?;
        if !code.is_response() || inner.iter().any(|o| o.number == num::OSCORE) {
            return Err(OscoreError::InvalidPlaintext);
        }
        if let Some(pos) = inner.iter().position(|o| o.number == num::OBSERVE) {
            // A notification (RFC 8613 §4.1.3.5.2): only for an Observe request, always with
            // a Partial IV, ordered by the Notification Number (§7.4.1). The Outer Observe
            // is ignored; the Observe value handed up is the PIV's 3 low bytes.
            if !req.observe {
                return Err(OscoreError::UnexpectedObserve);
            }
            let seq = seq.ok_or(DecodeError::MissingPartialIv)?;
            if req.notification_number.is_some_and(|n| seq <= n) {
                return Err(OscoreError::Replay);
            }
            req.notification_number = Some(seq);
            inner[pos].value = encode_uint((seq & 0x00ff_ffff) as u32);
        }
        Ok(merge(protected, code, inner, payload))
    }
}
