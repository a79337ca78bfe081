//! In-memory backend with the semantics of [`crate::SqliteStore`], for tests and the simulator.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use capillary_secrets::{Amf, Imsi, K};

use crate::{
    check_count, check_counter_step, check_seq, plan_allocation, AuthMaterial, NewSubscriber,
    OpKind, ReauthRecord, StoreError, SubscriberInfo, SubscriberKind, SubscriberStatus,
    SubscriberStore,
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

    async fn import(&self, subs: Vec<NewSubscriber>) -> Result<usize, StoreError> {
        let rows = subs.into_iter().map(row).collect::<Result<Vec<_>, _>>()?;
        let mut st = self.lock();
        let mut seen = std::collections::BTreeSet::new();
        for (i, (imsi, _)) in rows.iter().enumerate() {
            if st.subscribers.contains_key(imsi) || !seen.insert(imsi) {
                tracing::warn!(
                    index = i,
                    "import rejected: duplicate IMSI in batch or store"
                );
                return Err(StoreError::Exists);
            }
        }
        let n = rows.len();
        st.subscribers.extend(rows);
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
        use std::ops::Bound;
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

    async fn purge_expired(&self, now_unix: u64) -> Result<u64, StoreError> {
        let mut st = self.lock();
        let before = st.pseudonyms.len() + st.reauth.len();
        st.pseudonyms.retain(|_, (_, exp)| *exp > now_unix);
        st.reauth.retain(|_, r| r.expires_unix > now_unix);
        let after = st.pseudonyms.len() + st.reauth.len();
        Ok((before - after) as u64)
    }
}
