//! The authentication centre: fresh authentication vectors and resynchronisation over the
//! subscriber store (TS 33.102 §6.3.2, §6.3.5, Annex C.3).
//!
//! The store allocates each SQN durably before the vector exists, so a vector that leaves the
//! process never carries an SQN that could be issued again after a crash.
//!
//! # Prefetch (RADIUS path)
//!
//! An [`Auc`] built with [`Auc::with_prefetch`] allocates, for a subscriber that asked again
//! within [`Prefetch::max_age`], [`Prefetch::depth`] SQNs in one store call and keeps the unused
//! ones in memory for the next vectors of that subscriber. This is crash-safe: every SQN in the
//! stock is already committed, so none can be issued twice; a stock lost in a crash (or evicted,
//! or expired) only makes the USIM see a gap in SEQ, which TS 33.102 Annex C.2 accepts as long
//! as it stays within Δ (2^28 by default) — at most `depth − 1` per subscriber and stock.
//! Bounds: at most [`Prefetch::max_subscribers`] entries; a stock older than `max_age` is
//! dropped, so barring or removing a subscriber takes effect for this path within `max_age`;
//! a resynchronisation drops the subscriber's stock (its SQNs would be stale for the USIM).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capillary_aka::vector::{generate_vector, verify_auts, AuthVector};
use capillary_aka::Milenage;
use capillary_secrets::{Auts, Imsi, Rand};
use capillary_store::{AuthMaterial, OpKind, StoreError, SubscriberKind, SubscriberStore};
use rand::RngCore;

use crate::lock;

/// Why no vector could be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AucError {
    /// The IMSI is not provisioned.
    #[error("unknown subscriber")]
    UnknownSubscriber,
    /// The subscriber is barred.
    #[error("subscriber barred")]
    Barred,
    /// The subscriber exists but is of the other kind (a device presenting itself as a gateway,
    /// or the reverse).
    #[error("subscriber is of the wrong kind")]
    WrongKind,
    /// The AUTS from the peer did not verify (MAC-S wrong).
    #[error("AUTS did not verify")]
    BadAuts,
    /// The store failed.
    #[error("store: {0}")]
    Store(StoreError),
}

impl AucError {
    /// The EAP server's reason for the failure (what goes on the wire: RFC 4187 §6.3.1).
    pub fn reject_reason(&self) -> capillary_eap::server::RejectReason {
        use capillary_eap::server::RejectReason;
        match self {
            AucError::UnknownSubscriber | AucError::WrongKind => RejectReason::Unknown,
            AucError::Barred => RejectReason::Barred,
            _ => RejectReason::StoreFailure,
        }
    }
}

impl From<StoreError> for AucError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownSubscriber => AucError::UnknownSubscriber,
            StoreError::Barred => AucError::Barred,
            other => AucError::Store(other),
        }
    }
}

/// Limits of the per-subscriber SQN stock of [`Auc::with_prefetch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefetch {
    /// SQNs allocated per store call for a subscriber seen again within `max_age` (≥ 1).
    pub depth: u32,
    /// How long a stock (and the memory of a request) is used; also the longest delay before
    /// barring a subscriber stops its vectors on this path.
    pub max_age: Duration,
    /// Most subscribers with an entry; beyond it old entries are dropped (their SQNs skipped).
    pub max_subscribers: usize,
}

impl Default for Prefetch {
    fn default() -> Self {
        Self {
            depth: 8,
            max_age: Duration::from_secs(2),
            max_subscribers: 100_000,
        }
    }
}

/// One subscriber's stock: key material and committed, unused SQNs (increasing).
struct Entry {
    mat: Option<AuthMaterial>,
    sqns: VecDeque<capillary_secrets::Sqn>,
    /// When the stock was allocated (the store checked the status then).
    fetched: Instant,
    /// Last vector request for this subscriber.
    last: Instant,
}

struct Stock {
    cfg: Prefetch,
    entries: Mutex<HashMap<Imsi, Entry>>,
}

/// Authentication centre of one network-side instance, owning one IND lane.
#[derive(Clone)]
pub struct Auc {
    store: Arc<dyn SubscriberStore>,
    ind: u32,
    stock: Option<Arc<Stock>>,
}

impl std::fmt::Debug for Auc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auc")
            .field("ind", &self.ind)
            .field("prefetch", &self.stock.as_ref().map(|s| s.cfg))
            .finish_non_exhaustive()
    }
}

fn milenage(mat: &AuthMaterial) -> Milenage {
    match &mat.op {
        OpKind::Opc(opc) => Milenage::new(&mat.k, opc),
        OpKind::Op(op) => Milenage::with_op(&mat.k, op),
    }
}

fn no_sqn() -> AucError {
    AucError::Store(StoreError::Corrupt("allocation returned no SQN".into()))
}

/// An EAP-AKA' vector: AMF separation bit set (TS 33.402 §6.1, RFC 9048 §3.1), fresh RAND.
fn aka_prime_vector(mat: &AuthMaterial, sqn: &capillary_secrets::Sqn) -> AuthVector {
    let mut amf = mat.amf;
    amf.0[0] |= 0x80;
    let mut rand = Rand([0; 16]);
    rand::thread_rng().fill_bytes(&mut rand.0);
    generate_vector(&milenage(mat), &rand, sqn, &amf)
}

impl Auc {
    /// An AuC allocating SQNs in lane `ind`.
    pub fn new(store: Arc<dyn SubscriberStore>, ind: u32) -> Self {
        Self {
            store,
            ind,
            stock: None,
        }
    }

    /// The same AuC (store, lane) with its own SQN stock (see the module documentation).
    pub fn with_prefetch(&self, cfg: Prefetch) -> Self {
        let cfg = Prefetch {
            depth: cfg.depth.clamp(1, capillary_store::MAX_ALLOCATE),
            ..cfg
        };
        Self {
            store: Arc::clone(&self.store),
            ind: self.ind,
            stock: Some(Arc::new(Stock {
                cfg,
                entries: Mutex::new(HashMap::new()),
            })),
        }
    }

    /// SQNs currently held in the stock (all subscribers); 0 without prefetch.
    pub fn stocked(&self) -> usize {
        self.stock
            .as_ref()
            .map(|s| lock(&s.entries).values().map(|e| e.sqns.len()).sum())
            .unwrap_or(0)
    }

    /// The store behind this AuC.
    pub fn store(&self) -> &Arc<dyn SubscriberStore> {
        &self.store
    }

    /// One fresh vector for EAP-AKA': the AMF separation bit is set (TS 33.402 §6.1,
    /// RFC 9048 §3.1 "AMF separation bit").
    pub async fn vector(&self, imsi: &Imsi) -> Result<AuthVector, AucError> {
        let Some(stock) = &self.stock else {
            let mat = self.store.allocate(imsi, self.ind, 1).await?;
            let sqn = mat.sqns.first().copied().ok_or_else(no_sqn)?;
            return Ok(aka_prime_vector(&mat, &sqn));
        };
        let now = Instant::now();
        let count = {
            let mut entries = lock(&stock.entries);
            match entries.get_mut(imsi) {
                Some(e) if now.duration_since(e.last) < stock.cfg.max_age => {
                    e.last = now;
                    if now.duration_since(e.fetched) < stock.cfg.max_age {
                        if let (Some(mat), Some(sqn)) = (&e.mat, e.sqns.pop_front()) {
                            return Ok(aka_prime_vector(mat, &sqn));
                        }
                    }
                    stock.cfg.depth
                }
                // First request (or none for a while): no stock, just this vector.
                _ => 1,
            }
        };
        let mut mat = self.store.allocate(imsi, self.ind, count).await?;
        let mut sqns: VecDeque<_> = std::mem::take(&mut mat.sqns).into();
        let sqn = sqns.pop_front().ok_or_else(no_sqn)?;
        let v = aka_prime_vector(&mat, &sqn);
        let mut entries = lock(&stock.entries);
        if entries.len() >= stock.cfg.max_subscribers && !entries.contains_key(imsi) {
            entries.retain(|_, e| now.duration_since(e.last) < stock.cfg.max_age);
            if entries.len() >= stock.cfg.max_subscribers {
                entries.clear();
            }
        }
        // A stock allocated concurrently for the same subscriber is replaced (its SQNs skipped).
        entries.insert(
            imsi.clone(),
            Entry {
                mat: (!sqns.is_empty()).then_some(mat),
                sqns,
                fetched: now,
                last: now,
            },
        );
        Ok(v)
    }

    fn drop_stock(&self, imsi: &Imsi) {
        if let Some(stock) = &self.stock {
            lock(&stock.entries).remove(imsi);
        }
    }

    /// One fresh vector for each request, with ONE store round trip for the whole batch
    /// (`allocate_batch`, one transaction). A subscriber whose kind differs from the expected
    /// one gets [`AucError::WrongKind`]; its SQN is still consumed, which is harmless.
    pub async fn vectors(
        &self,
        requests: &[(Imsi, SubscriberKind)],
    ) -> Result<Vec<Result<AuthVector, AucError>>, AucError> {
        let reqs: Vec<(Imsi, u32, u32)> = requests
            .iter()
            .map(|(imsi, _)| (imsi.clone(), self.ind, 1))
            .collect();
        let materials = self.store.allocate_batch(&reqs).await?;
        Ok(materials
            .into_iter()
            .zip(requests)
            .map(|(mat, (_, kind))| {
                let mat = mat?;
                if mat.kind != *kind {
                    return Err(AucError::WrongKind);
                }
                let sqn = mat.sqns.first().copied().ok_or_else(|| {
                    AucError::Store(StoreError::Corrupt("allocation returned no SQN".into()))
                })?;
                let mut amf = mat.amf;
                amf.0[0] |= 0x80;
                let mut rand = Rand([0; 16]);
                rand::thread_rng().fill_bytes(&mut rand.0);
                Ok(generate_vector(&milenage(&mat), &rand, &sqn, &amf))
            })
            .collect())
    }

    /// PROTOCOL.md §6.2 (vector prefetch when a gateway authenticates): one fresh vector for
    /// each device bound to `gateway` (at most `limit`, none for the devices in `skip`),
    /// leaving out devices the store refuses (barred, unknown, not a device). Two store
    /// calls (`devices_of`, then one `allocate_batch`) whatever the number of devices.
    pub async fn bound_vectors(
        &self,
        gateway: &Imsi,
        skip: &[Imsi],
        limit: usize,
    ) -> Result<Vec<(Imsi, AuthVector)>, AucError> {
        let devices = self.store.devices_of(gateway, None, limit).await?;
        let skip: std::collections::HashSet<&Imsi> = skip.iter().collect();
        let requests: Vec<(Imsi, SubscriberKind)> = devices
            .into_iter()
            .filter(|d| !skip.contains(d))
            .map(|d| (d, SubscriberKind::Device))
            .collect();
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let vectors = self.vectors(&requests).await?;
        Ok(requests
            .into_iter()
            .zip(vectors)
            .filter_map(|((imsi, _), v)| v.ok().map(|v| (imsi, v)))
            .collect())
    }

    /// Resynchronisation (TS 33.102 §6.3.5): verifies AUTS and moves SEQ_HE up to SEQ_MS, so the
    /// next vector is fresh for the USIM. Returns SEQ_MS.
    pub async fn resync(&self, imsi: &Imsi, rand: &Rand, auts: &Auts) -> Result<u64, AucError> {
        // A zero-count allocation reads the key material without consuming an SQN.
        let mat = self.store.allocate(imsi, self.ind, 0).await?;
        let sqn_ms = verify_auts(&milenage(&mat), rand, auts).map_err(|_| AucError::BadAuts)?;
        let seq_ms = sqn_ms.seq(mat.ind_len);
        // The stocked SQNs may be at or below SEQ_MS now: never hand them out.
        self.drop_stock(imsi);
        self.store.resync(imsi, seq_ms).await?;
        self.drop_stock(imsi);
        Ok(seq_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capillary_secrets::{Amf, Opc, Secret, K};
    use capillary_store::{MemoryStore, NewSubscriber};

    fn imsi(n: u32) -> Imsi {
        Imsi::new(&format!("0010100000{n:05}")).unwrap()
    }

    #[tokio::test]
    async fn batch_of_vectors_in_one_round_trip() {
        let store = Arc::new(MemoryStore::new());
        let k = K::from_hex("465b5ce8b199b49faa5f0a2ee238a6bc").unwrap();
        let opc = Opc::from_hex("cd63cb71954a9f4e48a5994e37a02baf").unwrap();
        store
            .add(NewSubscriber::new(
                imsi(1),
                k.clone(),
                OpKind::Opc(opc.clone()),
                Amf([0, 0]),
            ))
            .await
            .unwrap();
        let mut gw = NewSubscriber::new(imsi(2), k, OpKind::Opc(opc), Amf([0, 0]));
        gw.kind = SubscriberKind::Gateway;
        store.add(gw).await.unwrap();
        let auc = Auc::new(store.clone(), 3);
        let out = auc
            .vectors(&[
                (imsi(1), SubscriberKind::Device),
                (imsi(2), SubscriberKind::Device),
                (imsi(9), SubscriberKind::Device),
                (imsi(2), SubscriberKind::Gateway),
            ])
            .await
            .unwrap();
        assert_eq!(out.len(), 4);
        let v = out[0].as_ref().unwrap();
        // AMF separation bit forced on (RFC 9048 §3.1), SQN in lane 3.
        assert_eq!(v.autn.0[6] & 0x80, 0x80);
        assert!(matches!(out[1], Err(AucError::WrongKind)));
        assert!(matches!(out[2], Err(AucError::UnknownSubscriber)));
        assert!(out[3].is_ok());
        assert_eq!(store.get(&imsi(1)).await.unwrap().unwrap().seq_he, 1);
    }
}

#[cfg(test)]
mod prefetch_tests {
    use super::*;
    use capillary_secrets::{Amf, Opc, Secret, K};
    use capillary_store::{MemoryStore, NewSubscriber, SubscriberStatus};

    fn imsi(n: u32) -> Imsi {
        Imsi::new(&format!("0010100000{n:05}")).unwrap()
    }

    async fn store_with(n: u32) -> Arc<MemoryStore> {
        let store = Arc::new(MemoryStore::new());
        let k = K::from_hex("465b5ce8b199b49faa5f0a2ee238a6bc").unwrap();
        let opc = Opc::from_hex("cd63cb71954a9f4e48a5994e37a02baf").unwrap();
        store
            .add(NewSubscriber::new(
                imsi(n),
                k,
                OpKind::Opc(opc),
                Amf([0, 0]),
            ))
            .await
            .unwrap();
        store
    }

    /// SQN of a vector: AUTN = SQN ⊕ AK ‖ AMF ‖ MAC; AK is the same for the same RAND only, so
    /// compare through SEQ_HE in the store instead.
    async fn seq_he(store: &MemoryStore, n: u32) -> u64 {
        store.get(&imsi(n)).await.unwrap().unwrap().seq_he
    }

    #[tokio::test]
    async fn stock_serves_repeat_requests_from_memory() {
        let store = store_with(1).await;
        let auc = Auc::new(store.clone(), 3).with_prefetch(Prefetch {
            depth: 4,
            max_age: Duration::from_secs(60),
            max_subscribers: 10,
        });
        // First request: one SQN, no stock (a subscriber seen once costs nothing extra).
        auc.vector(&imsi(1)).await.unwrap();
        assert_eq!(seq_he(&store, 1).await, 1);
        assert_eq!(auc.stocked(), 0);
        // Seen again: 4 SQNs committed at once, 3 kept.
        auc.vector(&imsi(1)).await.unwrap();
        assert_eq!(seq_he(&store, 1).await, 5);
        assert_eq!(auc.stocked(), 3);
        let mut autns = std::collections::HashSet::new();
        for _ in 0..3 {
            let v = auc.vector(&imsi(1)).await.unwrap();
            assert_eq!(v.autn.0[6] & 0x80, 0x80, "AMF separation bit");
            assert!(autns.insert(v.autn.0));
        }
        // All from the stock: no store trip.
        assert_eq!(seq_he(&store, 1).await, 5);
        assert_eq!(auc.stocked(), 0);
        auc.vector(&imsi(1)).await.unwrap();
        assert_eq!(seq_he(&store, 1).await, 9);
    }

    #[tokio::test]
    async fn stock_expires_and_is_bounded() {
        let store = store_with(1).await;
        let auc = Auc::new(store.clone(), 0).with_prefetch(Prefetch {
            depth: 4,
            max_age: Duration::ZERO,
            max_subscribers: 10,
        });
        for i in 1..=5 {
            auc.vector(&imsi(1)).await.unwrap();
            assert_eq!(seq_he(&store, 1).await, i, "no stock when max_age is zero");
        }
        // Barring takes effect once the stock is older than max_age (here at once).
        store
            .set_status(&imsi(1), SubscriberStatus::Barred)
            .await
            .unwrap();
        assert!(matches!(auc.vector(&imsi(1)).await, Err(AucError::Barred)));
        // Unknown subscribers are never stocked.
        assert!(matches!(
            auc.vector(&imsi(2)).await,
            Err(AucError::UnknownSubscriber)
        ));
        assert_eq!(auc.stocked(), 0);
    }

    #[tokio::test]
    async fn plain_auc_allocates_one_per_vector() {
        let store = store_with(1).await;
        let auc = Auc::new(store.clone(), 0);
        for i in 1..=3 {
            auc.vector(&imsi(1)).await.unwrap();
            assert_eq!(seq_he(&store, 1).await, i);
        }
        assert_eq!(auc.stocked(), 0);
    }
}
