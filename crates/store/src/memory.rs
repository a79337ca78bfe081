//! In-memory backend with the semantics of [`crate::SqliteStore`], for tests and the simulator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use capillary_secrets::{Amf, Imsi, K};

use crate::{
    check_binding, check_count, check_counter_step, check_seq, plan_allocation, AuditRecord,
    AuthMaterial, Authorization, NewSubscriber, OpKind, ReauthRecord, StoreError, SubscriberInfo,
    SubscriberKind, SubscriberStatus, SubscriberStore,
};

struct Row {
    k: K,
    op: OpKind,
    amf: Amf,
    ind_len: u8,
    seq_he: u64,
    kind: SubscriberKind,
    status: SubscriberStatus,
}

#[derive(Default)]
struct State {
    subscribers: BTreeMap<Imsi, Row>,
    pseudonyms: HashMap<String, (Imsi, u64)>,
    reauth: HashMap<String, ReauthRecord>,
    /// Gateway bindings: device → its gateways.
    gateways: BTreeMap<Imsi, BTreeSet<Imsi>>,
    /// The same bindings the other way round: gateway → its devices.
    devices: BTreeMap<Imsi, BTreeSet<Imsi>>,
    /// Audit log, ids increasing from 1.
    audit: Vec<(u64, AuditRecord)>,
    last_audit_id: u64,
}

impl State {
    fn kind_of(&self, imsi: &Imsi) -> Option<SubscriberKind> {
        self.subscribers.get(imsi).map(|r| r.kind)
    }

    fn status_of(&self, imsi: &Imsi, kind: SubscriberKind) -> Option<SubscriberStatus> {
        self.subscribers
            .get(imsi)
            .filter(|r| r.kind == kind)
            .map(|r| r.status)
    }

    fn bind(&mut self, device: &Imsi, gateway: &Imsi) {
        self.gateways
            .entry(device.clone())
            .or_default()
            .insert(gateway.clone());
        self.devices
            .entry(gateway.clone())
            .or_default()
            .insert(device.clone());
    }

    fn unbind(&mut self, device: &Imsi, gateway: &Imsi) -> bool {
        let found = unlink(&mut self.gateways, device, gateway);
        unlink(&mut self.devices, gateway, device);
        found
    }

    fn is_bound(&self, device: &Imsi, gateway: &Imsi) -> bool {
        self.gateways
            .get(device)
            .is_some_and(|gs| gs.contains(gateway))
    }

    /// Checks new rows (valid, no duplicate in the batch or the store).
    fn check_import(&self, rows: &[(Imsi, Row)]) -> Result<(), StoreError> {
        let mut seen = BTreeSet::new();
        for (i, (imsi, _)) in rows.iter().enumerate() {
            if self.subscribers.contains_key(imsi) || !seen.insert(imsi) {
                tracing::warn!(
                    index = i,
                    "import rejected: duplicate IMSI in batch or store"
                );
                return Err(StoreError::Exists);
            }
        }
        Ok(())
    }
}

/// In-memory [`SubscriberStore`]. One mutex guards the whole state, which is the in-memory
/// equivalent of a serialisable transaction. Nothing survives the process.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.lock().subscribers.len();
        f.debug_struct("MemoryStore")
            .field("subscribers", &n)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied change: every method
        // validates first and mutates last.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn info(imsi: &Imsi, r: &Row) -> SubscriberInfo {
    SubscriberInfo {
        imsi: imsi.clone(),
        amf: r.amf,
        ind_len: r.ind_len,
        seq_he: r.seq_he,
        kind: r.kind,
        status: r.status,
        has_opc: r.op.is_opc(),
        created: None,
        updated: None,
    }
}

fn row(s: NewSubscriber) -> Result<(Imsi, Row), StoreError> {
    let seq_he = s.initial_seq()?;
    Ok((
        s.imsi,
        Row {
            k: s.k,
            op: s.op,
            amf: s.amf,
            ind_len: s.ind_len,
            seq_he,
            kind: s.kind,
            status: s.status,
        },
    ))
}

/// Removes `to` from the set of `from`, dropping an emptied set. True if it was there.
fn unlink(links: &mut BTreeMap<Imsi, BTreeSet<Imsi>>, from: &Imsi, to: &Imsi) -> bool {
    let Some(set) = links.get_mut(from) else {
        return false;
    };
    let found = set.remove(to);
    if set.is_empty() {
        links.remove(from);
    }
    found
}

fn allocate_in(
    st: &mut State,
    imsi: &Imsi,
    ind: u32,
    count: u32,
) -> Result<AuthMaterial, StoreError> {
    check_count(count)?;
    let r = st
        .subscribers
        .get_mut(imsi)
        .ok_or(StoreError::UnknownSubscriber)?;
    if r.status == SubscriberStatus::Barred {
        return Err(StoreError::Barred);
    }
    let (new_seq, sqns) = plan_allocation(r.seq_he, ind, r.ind_len, count)?;
    r.seq_he = new_seq;
    Ok(AuthMaterial {
        imsi: imsi.clone(),
        k: r.k.clone(),
        op: r.op.clone(),
        amf: r.amf,
        ind_len: r.ind_len,
        status: r.status,
        kind: r.kind,
        sqns,
    })
}

#[async_trait]
impl SubscriberStore for MemoryStore {
    async fn add(&self, s: NewSubscriber) -> Result<(), StoreError> {
        let (imsi, r) = row(s)?;
        let mut st = self.lock();
        if st.subscribers.contains_key(&imsi) {
            return Err(StoreError::Exists);
        }
        st.subscribers.insert(imsi, r);
        Ok(())
    }

    async fn import_with_bindings(
        &self,
        subs: Vec<NewSubscriber>,
        bindings: Vec<(Imsi, Imsi)>,
    ) -> Result<usize, StoreError> {
        let rows = subs.into_iter().map(row).collect::<Result<Vec<_>, _>>()?;
        let mut st = self.lock();
        st.check_import(&rows)?;
        // Validate every binding against the store plus the batch before changing anything.
        let new_kinds: HashMap<&Imsi, SubscriberKind> =
            rows.iter().map(|(i, r)| (i, r.kind)).collect();
        let kind = |i: &Imsi| st.kind_of(i).or_else(|| new_kinds.get(i).copied());
        for (device, gateway) in &bindings {
            check_binding(device, kind(device), gateway, kind(gateway))?;
        }
        let n = rows.len();
        st.subscribers.extend(rows);
        for (device, gateway) in &bindings {
            st.bind(device, gateway);
        }
        Ok(n)
    }

    async fn get(&self, imsi: &Imsi) -> Result<Option<SubscriberInfo>, StoreError> {
        Ok(self.lock().subscribers.get(imsi).map(|r| info(imsi, r)))
    }

    async fn list(
        &self,
        after: Option<&Imsi>,
        limit: usize,
    ) -> Result<Vec<SubscriberInfo>, StoreError> {
        let st = self.lock();
        let lower = match after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Unbounded,
        };
        Ok(st
            .subscribers
            .range((lower, Bound::Unbounded))
            .take(limit)
            .map(|(i, r)| info(i, r))
            .collect())
    }

    async fn remove(&self, imsi: &Imsi) -> Result<bool, StoreError> {
        let mut st = self.lock();
        if st.subscribers.remove(imsi).is_none() {
            return Ok(false);
        }
        st.pseudonyms.retain(|_, (i, _)| i != imsi);
        st.reauth.retain(|_, r| &r.imsi != imsi);
        for gateway in st.gateways.remove(imsi).unwrap_or_default() {
            unlink(&mut st.devices, &gateway, imsi);
        }
        for device in st.devices.remove(imsi).unwrap_or_default() {
            unlink(&mut st.gateways, &device, imsi);
        }
        Ok(true)
    }

    async fn set_status(&self, imsi: &Imsi, status: SubscriberStatus) -> Result<bool, StoreError> {
        Ok(match self.lock().subscribers.get_mut(imsi) {
            Some(r) => {
                r.status = status;
                true
            }
            None => false,
        })
    }

    async fn allocate(
        &self,
        imsi: &Imsi,
        ind: u32,
        count: u32,
    ) -> Result<AuthMaterial, StoreError> {
        allocate_in(&mut self.lock(), imsi, ind, count)
    }

    async fn allocate_batch(
        &self,
        reqs: &[(Imsi, u32, u32)],
    ) -> Result<Vec<Result<AuthMaterial, StoreError>>, StoreError> {
        let mut st = self.lock();
        Ok(reqs
            .iter()
            .map(|(imsi, ind, count)| allocate_in(&mut st, imsi, *ind, *count))
            .collect())
    }

    async fn resync(&self, imsi: &Imsi, seq_ms: u64) -> Result<(), StoreError> {
        let mut st = self.lock();
        let r = st
            .subscribers
            .get_mut(imsi)
            .ok_or(StoreError::UnknownSubscriber)?;
        check_seq(seq_ms, r.ind_len)?;
        r.seq_he = r.seq_he.max(seq_ms);
        Ok(())
    }

    async fn put_pseudonym(
        &self,
        pseudonym: &str,
        imsi: &Imsi,
        expires_unix: u64,
    ) -> Result<(), StoreError> {
        let mut st = self.lock();
        if !st.subscribers.contains_key(imsi) {
            return Err(StoreError::UnknownSubscriber);
        }
        if let Some((owner, _)) = st.pseudonyms.get(pseudonym) {
            if owner != imsi {
                return Err(StoreError::Exists);
            }
        }
        st.pseudonyms
            .insert(pseudonym.to_owned(), (imsi.clone(), expires_unix));
        Ok(())
    }

    async fn resolve_pseudonym(
        &self,
        pseudonym: &str,
        now_unix: u64,
    ) -> Result<Option<Imsi>, StoreError> {
        Ok(self
            .lock()
            .pseudonyms
            .get(pseudonym)
            .filter(|(_, exp)| *exp > now_unix)
            .map(|(i, _)| i.clone()))
    }

    async fn put_reauth(&self, rec: &ReauthRecord) -> Result<(), StoreError> {
        let mut st = self.lock();
        if !st.subscribers.contains_key(&rec.imsi) {
            return Err(StoreError::UnknownSubscriber);
        }
        if let Some(old) = st.reauth.get(&rec.reauth_id) {
            if old.imsi != rec.imsi {
                return Err(StoreError::Exists);
            }
        }
        st.reauth.insert(rec.reauth_id.clone(), rec.clone());
        Ok(())
    }

    async fn get_reauth(
        &self,
        reauth_id: &str,
        now_unix: u64,
    ) -> Result<Option<ReauthRecord>, StoreError> {
        Ok(self
            .lock()
            .reauth
            .get(reauth_id)
            .filter(|r| r.expires_unix > now_unix)
            .cloned())
    }

    async fn advance_reauth(
        &self,
        reauth_id: &str,
        expected: u16,
        new: u16,
    ) -> Result<bool, StoreError> {
        check_counter_step(expected, new)?;
        Ok(match self.lock().reauth.get_mut(reauth_id) {
            Some(r) if r.counter == expected => {
                r.counter = new;
                true
            }
            _ => false,
        })
    }

    async fn delete_reauth(&self, reauth_id: &str) -> Result<(), StoreError> {
        self.lock().reauth.remove(reauth_id);
        Ok(())
    }

    async fn bind_gateway(&self, device: &Imsi, gateway: &Imsi) -> Result<(), StoreError> {
        let mut st = self.lock();
        check_binding(device, st.kind_of(device), gateway, st.kind_of(gateway))?;
        st.bind(device, gateway);
        Ok(())
    }

    async fn unbind_gateway(&self, device: &Imsi, gateway: &Imsi) -> Result<bool, StoreError> {
        Ok(self.lock().unbind(device, gateway))
    }

    async fn gateways_of(&self, device: &Imsi) -> Result<Vec<Imsi>, StoreError> {
        let st = self.lock();
        Ok(st
            .gateways
            .get(device)
            .map(|gs| gs.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn devices_of(
        &self,
        gateway: &Imsi,
        after: Option<&Imsi>,
        limit: usize,
    ) -> Result<Vec<Imsi>, StoreError> {
        let st = self.lock();
        let Some(ds) = st.devices.get(gateway) else {
            return Ok(Vec::new());
        };
        let lower = match after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Unbounded,
        };
        Ok(ds
            .range((lower, Bound::Unbounded))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn authorize_batch(
        &self,
        pairs: &[(Imsi, Imsi)],
    ) -> Result<Vec<Authorization>, StoreError> {
        let st = self.lock();
        Ok(pairs
            .iter()
            .map(|(device, gateway)| Authorization {
                device_status: st.status_of(device, SubscriberKind::Device),
                gateway_status: st.status_of(gateway, SubscriberKind::Gateway),
                bound: st.is_bound(device, gateway),
            })
            .collect())
    }

    async fn audit(&self, rec: AuditRecord) -> Result<(), StoreError> {
        self.audit_batch(vec![rec]).await
    }

    async fn audit_batch(&self, recs: Vec<AuditRecord>) -> Result<(), StoreError> {
        for r in &recs {
            r.check()?;
        }
        let mut st = self.lock();
        for rec in recs {
            st.last_audit_id += 1;
            let id = st.last_audit_id;
            st.audit.push((id, rec));
        }
        Ok(())
    }

    async fn audit_log(
        &self,
        subject: Option<&Imsi>,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        let st = self.lock();
        // Ids are increasing: skip to the first one after `after_id`.
        let start = st.audit.partition_point(|(id, _)| *id <= after_id);
        Ok(st.audit[start..]
            .iter()
            .filter(|(_, r)| subject.is_none_or(|s| &r.subject == s))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn purge_expired(&self, now_unix: u64) -> Result<u64, StoreError> {
        let mut st = self.lock();
        let before = st.pseudonyms.len() + st.reauth.len();
        st.pseudonyms.retain(|_, (_, exp)| *exp > now_unix);
        st.reauth.retain(|_, r| r.expires_unix > now_unix);
        let after = st.pseudonyms.len() + st.reauth.len();
        Ok((before - after) as u64)
    }
}
