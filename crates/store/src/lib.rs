//! Subscriber store of the network side: the HSS/AuC database (TS 33.102 §6.3, Annex C).
//!
//! One async trait, [`SubscriberStore`], with two backends:
//!
//! - [`SqliteStore`]: embedded SQLite in WAL mode with `synchronous=FULL`, so every committed
//!   SQN allocation is on disk before [`SubscriberStore::allocate`] returns;
//! - [`MemoryStore`]: the same semantics in memory, for tests and the simulator.
//!
//! # Design
//!
//! The trait is written for a database shared by several network-side instances (a later
//! PostgreSQL backend). Nothing relies on a process-wide lock: every read-modify-write runs inside
//! one database transaction (`BEGIN IMMEDIATE` plus single-statement `UPDATE … RETURNING` or
//! compare-and-set `UPDATE … WHERE counter = ?`), so two processes opening the same SQLite file
//! are as safe as two tasks sharing one handle.
//!
//! # Sequence numbers (TS 33.102 Annex C)
//!
//! `SQN = SEQ ‖ IND` with an IND of `ind_len` bits (C.1.1). The HE keeps one counter `SEQ_HE`
//! per subscriber (C.3.2, profile 2, not time based) and increments it by one for every vector it
//! generates; the IND of each vector is the *lane* of the requesting instance (C.3.2: IND values
//! may be assigned per serving node). A single counter shared by all lanes keeps the lanes close
//! together, so the USIM's age limit `L` (C.2.2) never rejects a vector from a slow lane.
//! Resynchronisation (§6.3.5) only ever raises `SEQ_HE`.
//!
//! # Gateway authorisation (docs/PROTOCOL.md §6)
//!
//! A device's profile lists the gateways it may attach through
//! ([`SubscriberStore::bind_gateway`]). The network checks every batch entry with
//! [`SubscriberStore::authorize_batch`] (one round trip), so barring a device or revoking a
//! gateway takes effect at the next message; a refusal is written to the append-only
//! [`SubscriberStore::audit`] log.
//!
//! Secrets (K, OPc, OP, K_encr, K_aut, K_re) are stored as BLOBs and are never logged; every
//! public type that holds one has a redacted `Debug`.
#![forbid(unsafe_code)]

use core::fmt;
use core::str::FromStr;

use async_trait::async_trait;
use capillary_secrets::{Amf, Imsi, KAut, KEncr, KRe, Op, Opc, Sqn, K};

mod memory;
mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

/// Default IND length in bits (TS 33.102 Annex C.3.2 suggests 5: 32 lanes).
pub const DEFAULT_IND_LEN: u8 = 5;

/// Largest accepted `ind_len` (the CLI's limit too). The USIM keeps one SEQ_MS per IND value
/// (C.2.2), so real profiles use about 5; 28 still leaves 20 bits of SEQ.
pub const MAX_IND_LEN: u8 = 28;

/// Most SQNs one [`SubscriberStore::allocate`] call may issue.
pub const MAX_ALLOCATE: u32 = 1024;

/// Whether the subscriber is a device or a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriberKind {
    /// An end device (stored as `"device"`).
    Device,
    /// A gateway (stored as `"gateway"`).
    Gateway,
}

impl SubscriberKind {
    /// Stored text form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Gateway => "gateway",
        }
    }
}

impl fmt::Display for SubscriberKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SubscriberKind {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "device" => Ok(Self::Device),
            "gateway" => Ok(Self::Gateway),
            _ => Err(StoreError::InvalidInput(format!(
                "subscriber kind must be \"device\" or \"gateway\", got {s:?}"
            ))),
        }
    }
}

/// Administrative state of a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriberStatus {
    /// May authenticate (stored as `"active"`).
    Active,
    /// No vectors are generated (stored as `"barred"`).
    Barred,
}

impl SubscriberStatus {
    /// Stored text form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Barred => "barred",
        }
    }
}

impl fmt::Display for SubscriberStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SubscriberStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "barred" => Ok(Self::Barred),
            _ => Err(StoreError::InvalidInput(format!(
                "subscriber status must be \"active\" or \"barred\", got {s:?}"
            ))),
        }
    }
}

/// The operator constant of a subscriber: OPc, or OP from which OPc is derived (TS 35.206 §4.1).
#[derive(Clone)]
pub enum OpKind {
    /// OPc = OP ⊕ E_K(OP), already derived.
    Opc(Opc),
    /// OP; the caller derives OPc with K.
    Op(Op),
}

impl OpKind {
    /// True for [`OpKind::Opc`].
    pub fn is_opc(&self) -> bool {
        matches!(self, Self::Opc(_))
    }
}

impl fmt::Debug for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Opc(_) => f.write_str("Opc(..)"),
            Self::Op(_) => f.write_str("Op(..)"),
        }
    }
}

/// A subscriber to provision.
#[derive(Clone)]
pub struct NewSubscriber {
    /// Identity.
    pub imsi: Imsi,
    /// Subscriber key.
    pub k: K,
    /// OPc or OP.
    pub op: OpKind,
    /// AMF put in every AUTN (TS 33.102 Annex F).
    pub amf: Amf,
    /// Initial SQN_HE (full 48-bit SQN). The first issued SEQ is `seq(sqn) + 1`.
    pub sqn: u64,
    /// IND length in bits, 0..=[`MAX_IND_LEN`]; default [`DEFAULT_IND_LEN`].
    pub ind_len: u8,
    /// Device or gateway.
    pub kind: SubscriberKind,
    /// Active or barred.
    pub status: SubscriberStatus,
}

impl NewSubscriber {
    /// A subscriber with SQN 0, [`DEFAULT_IND_LEN`], kind device, status active.
    pub fn new(imsi: Imsi, k: K, op: OpKind, amf: Amf) -> Self {
        Self {
            imsi,
            k,
            op,
            amf,
            sqn: 0,
            ind_len: DEFAULT_IND_LEN,
            kind: SubscriberKind::Device,
            status: SubscriberStatus::Active,
        }
    }

    /// Checks `ind_len` and `sqn`; returns the initial SEQ_HE.
    pub(crate) fn initial_seq(&self) -> Result<u64, StoreError> {
        if self.ind_len > MAX_IND_LEN {
            return Err(StoreError::InvalidInput(format!(
                "ind_len must be at most {MAX_IND_LEN}, got {}",
                self.ind_len
            )));
        }
        let sqn = Sqn::new(self.sqn).ok_or_else(|| {
            StoreError::InvalidInput("SQN must fit in 48 bits (TS 33.102 §6.3.2)".into())
        })?;
        Ok(sqn.seq(self.ind_len))
    }
}

impl fmt::Debug for NewSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSubscriber")
            .field("imsi", &self.imsi)
            .field("k", &"..")
            .field("op", &self.op)
            .field("amf", &self.amf)
            .field("sqn", &self.sqn)
            .field("ind_len", &self.ind_len)
            .field("kind", &self.kind)
            .field("status", &self.status)
            .finish()
    }
}

/// Public view of a subscriber: no secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberInfo {
    /// Identity.
    pub imsi: Imsi,
    /// AMF.
    pub amf: Amf,
    /// IND length in bits.
    pub ind_len: u8,
    /// Current SEQ_HE: the highest SEQ issued (or the resynchronised value).
    pub seq_he: u64,
    /// Device or gateway.
    pub kind: SubscriberKind,
    /// Active or barred.
    pub status: SubscriberStatus,
    /// True if OPc is stored, false if OP.
    pub has_opc: bool,
    /// Creation time as stored by the backend (SQLite: ISO 8601 UTC), if it keeps one.
    pub created: Option<String>,
    /// Last change time as stored by the backend, if it keeps one.
    pub updated: Option<String>,
}

/// What the AuC needs to compute vectors (TS 33.102 §6.3.2), with freshly allocated SQNs.
#[derive(Clone)]
pub struct AuthMaterial {
    /// Identity.
    pub imsi: Imsi,
    /// Subscriber key.
    pub k: K,
    /// OPc or OP.
    pub op: OpKind,
    /// AMF.
    pub amf: Amf,
    /// IND length in bits.
    pub ind_len: u8,
    /// Status at allocation time (always active: barred subscribers get [`StoreError::Barred`]).
    pub status: SubscriberStatus,
    /// Device or gateway.
    pub kind: SubscriberKind,
    /// The allocated SQNs, increasing, all in the requested IND lane.
    pub sqns: Vec<Sqn>,
}

impl fmt::Debug for AuthMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthMaterial")
            .field("imsi", &self.imsi)
            .field("k", &"..")
            .field("op", &self.op)
            .field("amf", &self.amf)
            .field("ind_len", &self.ind_len)
            .field("status", &self.status)
            .field("kind", &self.kind)
            .field("sqns", &self.sqns)
            .finish()
    }
}

/// Fast re-authentication state (RFC 4187 §5, RFC 9048 §3.3).
#[derive(Clone)]
pub struct ReauthRecord {
    /// The fast re-authentication identity (its username part).
    pub reauth_id: String,
    /// The subscriber it belongs to.
    pub imsi: Imsi,
    /// K_encr of the full authentication.
    pub k_encr: KEncr,
    /// K_aut of the full authentication.
    pub k_aut: KAut,
    /// K_re of the full authentication.
    pub k_re: KRe,
    /// Last used counter (RFC 4187 §5.2: the next one must be greater).
    pub counter: u16,
    /// Unix time after which the record is ignored.
    pub expires_unix: u64,
}

impl fmt::Debug for ReauthRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReauthRecord")
            .field("reauth_id", &self.reauth_id)
            .field("imsi", &self.imsi)
            .field("keys", &"..")
            .field("counter", &self.counter)
            .field("expires_unix", &self.expires_unix)
            .finish()
    }
}

/// Longest accepted [`AuditRecord::detail`], in bytes.
pub const MAX_AUDIT_DETAIL: usize = 1024;

/// What an [`AuditRecord`] reports (docs/PROTOCOL.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditEvent {
    /// A device authenticated through a gateway it is bound to (`"auth_succeeded"`).
    AuthSucceeded,
    /// Authentication failed for another reason, e.g. a wrong RES (`"auth_failed"`).
    AuthFailed,
    /// The device is not bound to the gateway it came through (`"not_bound_to_gateway"`).
    NotBoundToGateway,
    /// The gateway is barred (revoked) (`"gateway_revoked"`).
    GatewayRevoked,
    /// The device is barred (`"device_barred"`).
    DeviceBarred,
    /// No device with this IMSI (`"unknown_device"`).
    UnknownDevice,
    /// No gateway with this IMSI (`"unknown_gateway"`).
    UnknownGateway,
}

impl AuditEvent {
    /// Every event, in declaration order.
    pub const ALL: [AuditEvent; 7] = [
        Self::AuthSucceeded,
        Self::AuthFailed,
        Self::NotBoundToGateway,
        Self::GatewayRevoked,
        Self::DeviceBarred,
        Self::UnknownDevice,
        Self::UnknownGateway,
    ];

    /// Stored text form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AuthSucceeded => "auth_succeeded",
            Self::AuthFailed => "auth_failed",
            Self::NotBoundToGateway => "not_bound_to_gateway",
            Self::GatewayRevoked => "gateway_revoked",
            Self::DeviceBarred => "device_barred",
            Self::UnknownDevice => "unknown_device",
            Self::UnknownGateway => "unknown_gateway",
        }
    }
}

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditEvent {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| StoreError::InvalidInput(format!("unknown audit event {s:?}")))
    }
}

/// One entry of the append-only audit log. Holds no secrets: `detail` is free text written by
/// the caller, who must keep keys, RES, AUTS and the like out of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// When it happened (Unix seconds, at most `i64::MAX`).
    pub unix_time: u64,
    /// What happened.
    pub event: AuditEvent,
    /// The subscriber concerned (usually the device). Kept as text: the record outlives the
    /// subscriber.
    pub subject: Imsi,
    /// The gateway involved, if any.
    pub gateway: Option<Imsi>,
    /// Human-readable detail, at most [`MAX_AUDIT_DETAIL`] bytes, no secrets.
    pub detail: String,
}

impl AuditRecord {
    /// Checks the limits the backends enforce.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        if i64::try_from(self.unix_time).is_err() {
            return Err(StoreError::InvalidInput(
                "audit time must be at most i64::MAX".into(),
            ));
        }
        if self.detail.len() > MAX_AUDIT_DETAIL {
            return Err(StoreError::InvalidInput(format!(
                "audit detail must be at most {MAX_AUDIT_DETAIL} bytes, got {}",
                self.detail.len()
            )));
        }
        Ok(())
    }
}

/// The answer of [`SubscriberStore::authorize_batch`] for one `(device, gateway)` pair
/// (docs/PROTOCOL.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Authorization {
    /// Status of the device; `None` if there is no subscriber of kind device with this IMSI.
    pub device_status: Option<SubscriberStatus>,
    /// Status of the gateway; `None` if there is no subscriber of kind gateway with this IMSI.
    pub gateway_status: Option<SubscriberStatus>,
    /// True if the device's profile lists the gateway.
    pub bound: bool,
}

impl Authorization {
    /// Why the pair is refused, checked in this order: unknown device, barred device, unknown
    /// gateway, revoked (barred) gateway, not bound. `None` means allowed.
    pub fn denial(&self) -> Option<AuditEvent> {
        match (self.device_status, self.gateway_status) {
            (None, _) => Some(AuditEvent::UnknownDevice),
            (Some(SubscriberStatus::Barred), _) => Some(AuditEvent::DeviceBarred),
            (_, None) => Some(AuditEvent::UnknownGateway),
            (_, Some(SubscriberStatus::Barred)) => Some(AuditEvent::GatewayRevoked),
            _ if !self.bound => Some(AuditEvent::NotBoundToGateway),
            _ => None,
        }
    }

    /// True if both are known and active and the device is bound to the gateway.
    pub fn is_allowed(&self) -> bool {
        self.denial().is_none()
    }
}

/// Checks the kinds of a `(device, gateway)` binding: `None` means the IMSI is unknown.
pub(crate) fn check_binding(
    device: &Imsi,
    device_kind: Option<SubscriberKind>,
    gateway: &Imsi,
    gateway_kind: Option<SubscriberKind>,
) -> Result<(), StoreError> {
    match (device_kind, gateway_kind) {
        (None, _) | (_, None) => Err(StoreError::UnknownSubscriber),
        (Some(SubscriberKind::Gateway), _) => Err(StoreError::InvalidInput(format!(
            "{device} is a gateway; only devices are bound to gateways"
        ))),
        (_, Some(SubscriberKind::Device)) => Err(StoreError::InvalidInput(format!(
            "{gateway} is a device, not a gateway"
        ))),
        (Some(SubscriberKind::Device), Some(SubscriberKind::Gateway)) => Ok(()),
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No subscriber with this IMSI.
    #[error("unknown subscriber")]
    UnknownSubscriber,
    /// The IMSI (or pseudonym / re-authentication identity) is already taken.
    #[error("already exists")]
    Exists,
    /// The subscriber is barred: no vectors are issued.
    #[error("subscriber is barred")]
    Barred,
    /// SEQ_HE would exceed its `48 − ind_len` bits (TS 33.102 Annex C.1.1).
    #[error("sequence number space exhausted")]
    SqnExhausted,
    /// The caller passed a value the store cannot accept.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// SQLite failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row does not decode (wrong length, unknown text, out-of-range number).
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// File system error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A blocking task failed (panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The subscriber database (HSS/AuC).
///
/// All methods are atomic on their own; [`SubscriberStore::import`],
/// [`SubscriberStore::import_with_bindings`] and [`SubscriberStore::allocate_batch`] are one
/// transaction each. Implementations must not rely on
/// a process-local lock for correctness: several processes may share one database.
#[async_trait]
pub trait SubscriberStore: Send + Sync + 'static {
    /// Adds one subscriber; [`StoreError::Exists`] if the IMSI is taken.
    async fn add(&self, s: NewSubscriber) -> Result<(), StoreError>;

    /// Adds many subscribers in one transaction: all or nothing. A duplicate (in the store or
    /// within `subs`) gives [`StoreError::Exists`] and imports nothing. Returns the count.
    /// [`SubscriberStore::import_with_bindings`] without bindings.
    async fn import(&self, subs: Vec<NewSubscriber>) -> Result<usize, StoreError> {
        self.import_with_bindings(subs, Vec::new()).await
    }

    /// The public view of one subscriber.
    async fn get(&self, imsi: &Imsi) -> Result<Option<SubscriberInfo>, StoreError>;

    /// Up to `limit` subscribers with IMSI greater than `after`, ordered by IMSI (byte order).
    async fn list(
        &self,
        after: Option<&Imsi>,
        limit: usize,
    ) -> Result<Vec<SubscriberInfo>, StoreError>;

    /// Removes a subscriber and its pseudonyms, re-authentication records and gateway bindings
    /// (both directions). Its audit records stay. False if unknown.
    async fn remove(&self, imsi: &Imsi) -> Result<bool, StoreError>;

    /// Sets the status. False if unknown.
    async fn set_status(&self, imsi: &Imsi, st: SubscriberStatus) -> Result<bool, StoreError>;

    /// Allocates `count` (0..=[`MAX_ALLOCATE`]) fresh SQNs in IND lane `ind`
    /// (TS 33.102 Annex C.3.2, C.1.1: SEQ_HE is incremented per vector; `SQN = SEQ ‖ IND`).
    ///
    /// The new SEQ_HE is committed (and, for SQLite, fsync'd) before this returns, so no SQN is
    /// ever returned twice, across crashes and concurrent callers. A SQN allocated but never used
    /// (crash, cancelled future) is simply skipped.
    ///
    /// Errors: [`StoreError::UnknownSubscriber`], [`StoreError::Barred`] (nothing allocated),
    /// [`StoreError::InvalidInput`] (`ind ≥ 2^ind_len` or `count` too large),
    /// [`StoreError::SqnExhausted`].
    async fn allocate(&self, imsi: &Imsi, ind: u32, count: u32)
        -> Result<AuthMaterial, StoreError>;

    /// [`SubscriberStore::allocate`] for many `(imsi, ind, count)` requests in one transaction.
    /// Per-request failures are in the inner results, allocate nothing and do not affect the
    /// others; the outer error means nothing was allocated at all.
    async fn allocate_batch(
        &self,
        reqs: &[(Imsi, u32, u32)],
    ) -> Result<Vec<Result<AuthMaterial, StoreError>>, StoreError>;

    /// Resynchronisation (TS 33.102 §6.3.5): `SEQ_HE := max(SEQ_HE, seq_ms)`. Never lowers it.
    /// `seq_ms` is the SEQ part of SQN_MS recovered from AUTS.
    async fn resync(&self, imsi: &Imsi, seq_ms: u64) -> Result<(), StoreError>;

    /// Stores a pseudonym (RFC 4187 §4.1.1.7) for `imsi`, or renews its expiry.
    /// [`StoreError::Exists`] if the pseudonym belongs to another subscriber.
    async fn put_pseudonym(
        &self,
        pseudonym: &str,
        imsi: &Imsi,
        expires_unix: u64,
    ) -> Result<(), StoreError>;

    /// The IMSI of an unexpired pseudonym (`expires_unix > now_unix`).
    async fn resolve_pseudonym(
        &self,
        pseudonym: &str,
        now_unix: u64,
    ) -> Result<Option<Imsi>, StoreError>;

    /// Stores a re-authentication record, replacing one with the same id for the same subscriber.
    /// [`StoreError::Exists`] if the id belongs to another subscriber.
    async fn put_reauth(&self, rec: &ReauthRecord) -> Result<(), StoreError>;

    /// An unexpired re-authentication record (`expires_unix > now_unix`).
    async fn get_reauth(
        &self,
        reauth_id: &str,
        now_unix: u64,
    ) -> Result<Option<ReauthRecord>, StoreError>;

    /// Compare-and-set of the re-authentication counter: from `expected` to `new` (`new >
    /// expected`, RFC 4187 §5.2) only if it still equals `expected`, so two instances cannot use
    /// the same counter. `Ok(false)` if it changed or the record is gone.
    async fn advance_reauth(
        &self,
        reauth_id: &str,
        expected: u16,
        new: u16,
    ) -> Result<bool, StoreError>;

    /// Deletes a re-authentication record (no error if absent).
    async fn delete_reauth(&self, reauth_id: &str) -> Result<(), StoreError>;

    /// Stores the identities one EAP message issues to `imsi` (its next pseudonym with its
    /// expiry, its next re-authentication record, either or both), as
    /// [`SubscriberStore::put_pseudonym`] and [`SubscriberStore::put_reauth`] do, and may forget
    /// the identities they supersede: every re-authentication record of `imsi` but the new one,
    /// and every pseudonym of `imsi` but the new one and the newest before it. A peer only uses
    /// the newest identities it received (RFC 4187 §4.1.1.7, §5.4); dropping the others keeps
    /// the tables at a few rows per subscriber instead of one per authentication. The SQLite
    /// store does all of it in one job of its group commit (an error leaves nothing of it); the
    /// default stores one after the other and forgets nothing.
    async fn put_issued(
        &self,
        imsi: &Imsi,
        pseudonym: Option<(&str, u64)>,
        reauth: Option<&ReauthRecord>,
    ) -> Result<(), StoreError> {
        if let Some((p, expires)) = pseudonym {
            self.put_pseudonym(p, imsi, expires).await?;
        }
        if let Some(r) = reauth {
            self.put_reauth(r).await?;
        }
        Ok(())
    }

    /// [`SubscriberStore::import`] plus gateway bindings, in one transaction: the subscribers
    /// are added first, then every `(device, gateway)` pair is bound as by
    /// [`SubscriberStore::bind_gateway`] (either side may be in `subs` or already stored). All
    /// or nothing. Returns the number of subscribers imported.
    async fn import_with_bindings(
        &self,
        subs: Vec<NewSubscriber>,
        bindings: Vec<(Imsi, Imsi)>,
    ) -> Result<usize, StoreError>;

    /// Allows `device` to attach through `gateway` (docs/PROTOCOL.md §6). Idempotent.
    ///
    /// Errors: [`StoreError::UnknownSubscriber`] if either is unknown,
    /// [`StoreError::InvalidInput`] if `device` is not of kind device or `gateway` not of kind
    /// gateway.
    async fn bind_gateway(&self, device: &Imsi, gateway: &Imsi) -> Result<(), StoreError>;

    /// Removes a binding. False if there was none.
    async fn unbind_gateway(&self, device: &Imsi, gateway: &Imsi) -> Result<bool, StoreError>;

    /// The gateways `device` may attach through, ordered by IMSI (empty if unknown).
    async fn gateways_of(&self, device: &Imsi) -> Result<Vec<Imsi>, StoreError>;

    /// Up to `limit` devices bound to `gateway` with IMSI greater than `after`, ordered by IMSI
    /// (for vector prefetch when the gateway attaches). Barred devices are included.
    async fn devices_of(
        &self,
        gateway: &Imsi,
        after: Option<&Imsi>,
        limit: usize,
    ) -> Result<Vec<Imsi>, StoreError>;

    /// Authorisation of a whole batch of `(device, gateway)` pairs in one round trip, read from
    /// one consistent snapshot; one [`Authorization`] per pair, in order
    /// (docs/PROTOCOL.md §6: checked on every batch entry).
    async fn authorize_batch(
        &self,
        pairs: &[(Imsi, Imsi)],
    ) -> Result<Vec<Authorization>, StoreError>;

    /// Appends a record to the audit log. [`StoreError::InvalidInput`] if `detail` is longer
    /// than [`MAX_AUDIT_DETAIL`] or `unix_time` exceeds `i64::MAX`.
    async fn audit(&self, rec: AuditRecord) -> Result<(), StoreError>;

    /// Appends several records to the audit log in one store round trip (one transaction:
    /// all of them or none), in order. Every record is checked as in
    /// [`SubscriberStore::audit`] before any is written. The default calls `audit` once per
    /// record (one round trip each); the backends override it.
    async fn audit_batch(&self, recs: Vec<AuditRecord>) -> Result<(), StoreError> {
        for r in &recs {
            r.check()?;
        }
        for r in recs {
            self.audit(r).await?;
        }
        Ok(())
    }

    /// Up to `limit` audit records with id greater than `after_id`, oldest first, only those
    /// about `subject` if given. Ids are positive, increasing and never reused; page with the
    /// last id returned.
    async fn audit_log(
        &self,
        subject: Option<&Imsi>,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<(u64, AuditRecord)>, StoreError>;

    /// Deletes pseudonyms and re-authentication records with `expires_unix <= now_unix`;
    /// returns how many. The default does nothing.
    async fn purge_expired(&self, now_unix: u64) -> Result<u64, StoreError> {
        let _ = now_unix;
        Ok(0)
    }
}

/// Shared checks of an allocation: returns the new SEQ_HE and the SQNs.
pub(crate) fn plan_allocation(
    seq_he: u64,
    ind: u32,
    ind_len: u8,
    count: u32,
) -> Result<(u64, Vec<Sqn>), StoreError> {
    check_ind(ind, ind_len)?;
    let max_seq = Sqn::MAX >> ind_len;
    let new_seq = seq_he
        .checked_add(u64::from(count))
        .filter(|s| *s <= max_seq)
        .ok_or(StoreError::SqnExhausted)?;
    let sqns = (seq_he + 1..=new_seq)
        .map(|seq| Sqn::from_seq_ind(seq, ind, ind_len).ok_or(StoreError::SqnExhausted))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((new_seq, sqns))
}

/// `ind` must fit in `ind_len` bits (TS 33.102 Annex C.1.1).
pub(crate) fn check_ind(ind: u32, ind_len: u8) -> Result<(), StoreError> {
    if ind_len > MAX_IND_LEN || u64::from(ind) >> ind_len != 0 {
        return Err(StoreError::InvalidInput(format!(
            "IND {ind} does not fit in {ind_len} bits"
        )));
    }
    Ok(())
}

/// `count` must be at most [`MAX_ALLOCATE`].
pub(crate) fn check_count(count: u32) -> Result<(), StoreError> {
    if count > MAX_ALLOCATE {
        return Err(StoreError::InvalidInput(format!(
            "at most {MAX_ALLOCATE} SQNs per allocation, asked for {count}"
        )));
    }
    Ok(())
}

/// `seq_ms` must fit the SEQ field.
pub(crate) fn check_seq(seq: u64, ind_len: u8) -> Result<(), StoreError> {
    if ind_len > MAX_IND_LEN || seq > Sqn::MAX >> ind_len {
        return Err(StoreError::InvalidInput(format!(
            "SEQ does not fit in {} bits",
            48u32.saturating_sub(u32::from(ind_len))
        )));
    }
    Ok(())
}

/// RFC 4187 §5.2: the counter only grows.
pub(crate) fn check_counter_step(expected: u16, new: u16) -> Result<(), StoreError> {
    if new <= expected {
        return Err(StoreError::InvalidInput(format!(
            "re-authentication counter must increase ({expected} -> {new})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// SQN = SEQ ‖ IND (TS 33.102 C.1.1): consecutive SEQs after SEQ_HE, all in lane `ind`;
        /// exhaustion instead of wrap-around.
        #[test]
        fn allocation_plan(ind_len in 0u8..=MAX_IND_LEN, seq_off in 0u64..5000, raw_ind: u32,
                           count in 0u32..=64, near_end: bool) {
            let max_seq = Sqn::MAX >> ind_len;
            let seq_he = if near_end { max_seq.saturating_sub(seq_off % 64) } else { seq_off };
            let ind = if ind_len == 0 { 0 } else { raw_ind % (1 << ind_len) };
            match plan_allocation(seq_he, ind, ind_len, count) {
                Ok((new_seq, sqns)) => {
                    prop_assert_eq!(new_seq, seq_he + u64::from(count));
                    prop_assert!(new_seq <= max_seq);
                    prop_assert_eq!(sqns.len(), count as usize);
                    for (i, q) in sqns.iter().enumerate() {
                        prop_assert_eq!(q.value(), ((seq_he + 1 + i as u64) << ind_len) | u64::from(ind));
                        prop_assert_eq!(q.ind(ind_len), ind);
                    }
                }
                Err(StoreError::SqnExhausted) => prop_assert!(seq_he + u64::from(count) > max_seq),
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
            if ind_len < 32 && u64::from(raw_ind) >> ind_len != 0 {
                prop_assert!(matches!(plan_allocation(0, raw_ind, ind_len, 1), Err(StoreError::InvalidInput(_))));
            }
        }
    }
}
