//! Where the RADIUS path keeps the pseudonyms and fast re-authentication contexts it issues
//! (`[eap] identity_store`, see [`crate::config::IdentityStore`]).
//!
//! - `store` (the default): rows in the subscriber store, committed before the message that
//!   names them leaves the process; they survive a restart and are shared by every instance on
//!   the same store.
//! - `memory`: tables in this process only, as hostapd keeps them (`eap_sim_db.c`). One
//!   re-authentication context and at most [`PSEUDONYMS_PER_SUBSCRIBER`] pseudonyms per
//!   subscriber, so memory is bounded by the number of subscribers that authenticated, and a
//!   full authentication costs no store write besides its SQN. What a restart loses is
//!   recovered by the protocol itself: an unknown pseudonym or re-authentication identity makes
//!   the server ask for the permanent identity (RFC 4187 §4.1.4, RFC 9048 §3), which is
//!   followed by a full authentication. A re-authentication counter lives and dies with its
//!   context, so a lost context can never let a counter value be used twice.

use std::collections::HashMap;
use std::sync::Mutex;

use capillary_secrets::Imsi;
use capillary_store::{ReauthRecord, StoreError};

use crate::lock;

/// Pseudonyms kept per subscriber in memory: the newest and the one before it, so that a peer
/// that missed the challenge naming the newest can still use the previous one.
pub(crate) const PSEUDONYMS_PER_SUBSCRIBER: usize = 2;

#[derive(Default)]
struct PerSubscriber {
    /// Newest last.
    pseudonyms: Vec<String>,
    reauth_id: Option<String>,
}

#[derive(Default)]
struct Tables {
    pseudonyms: HashMap<String, (Imsi, u64)>,
    reauth: HashMap<String, ReauthRecord>,
    by_imsi: HashMap<Imsi, PerSubscriber>,
}

/// In-process pseudonym and re-authentication tables (`identity_store = "memory"`).
#[derive(Default)]
pub(crate) struct MemoryIdentities {
    tables: Mutex<Tables>,
}

impl MemoryIdentities {
    /// Records `pseudonym` for `imsi` (or renews it); the subscriber's oldest pseudonym beyond
    /// [`PSEUDONYMS_PER_SUBSCRIBER`] is forgotten. [`StoreError::Exists`] if another
    /// subscriber holds it.
    pub(crate) fn put_pseudonym(
        &self,
        pseudonym: &str,
        imsi: &Imsi,
        expires_unix: u64,
    ) -> Result<(), StoreError> {
        let mut t = lock(&self.tables);
        let t = &mut *t;
        match t.pseudonyms.get_mut(pseudonym) {
            Some((owner, _)) if owner != imsi => return Err(StoreError::Exists),
            Some((_, exp)) => {
                *exp = expires_unix;
                return Ok(());
            }
            None => {}
        }
        t.pseudonyms
            .insert(pseudonym.to_owned(), (imsi.clone(), expires_unix));
        let per = t.by_imsi.entry(imsi.clone()).or_default();
        per.pseudonyms.push(pseudonym.to_owned());
        while per.pseudonyms.len() > PSEUDONYMS_PER_SUBSCRIBER {
            let old = per.pseudonyms.remove(0);
            t.pseudonyms.remove(&old);
        }
        Ok(())
    }

    /// The subscriber of an unexpired pseudonym.
    pub(crate) fn resolve_pseudonym(&self, pseudonym: &str, now_unix: u64) -> Option<Imsi> {
        lock(&self.tables)
            .pseudonyms
            .get(pseudonym)
            .filter(|(_, exp)| *exp > now_unix)
            .map(|(imsi, _)| imsi.clone())
    }

    /// Records a re-authentication context; it replaces the subscriber's previous one.
    /// [`StoreError::Exists`] if another subscriber holds the identity.
    pub(crate) fn put_reauth(&self, rec: &ReauthRecord) -> Result<(), StoreError> {
        let mut t = lock(&self.tables);
        let t = &mut *t;
        if let Some(old) = t.reauth.get(&rec.reauth_id) {
            if old.imsi != rec.imsi {
                return Err(StoreError::Exists);
            }
        }
        let per = t.by_imsi.entry(rec.imsi.clone()).or_default();
        if let Some(previous) = per.reauth_id.replace(rec.reauth_id.clone()) {
            if previous != rec.reauth_id {
                t.reauth.remove(&previous);
            }
        }
        t.reauth.insert(rec.reauth_id.clone(), rec.clone());
        Ok(())
    }

    /// Looks up an unexpired context and claims its next counter value, atomically: the record
    /// is returned with the counter the peer last used, and two conversations presenting the
    /// same identity never get the same counter (RFC 4187 §5.2).
    pub(crate) fn claim_reauth(&self, reauth_id: &str, now_unix: u64) -> Option<ReauthRecord> {
        let mut t = lock(&self.tables);
        let rec = t.reauth.get_mut(reauth_id)?;
        if rec.expires_unix <= now_unix {
            return None;
        }
        let next = rec.counter.checked_add(1)?;
        let claimed = rec.clone();
        rec.counter = next;
        Some(claimed)
    }

    /// Forgets a re-authentication context.
    pub(crate) fn delete_reauth(&self, reauth_id: &str) {
        let mut t = lock(&self.tables);
        if let Some(rec) = t.reauth.remove(reauth_id) {
            if let Some(per) = t.by_imsi.get_mut(&rec.imsi) {
                if per.reauth_id.as_deref() == Some(reauth_id) {
                    per.reauth_id = None;
                }
            }
        }
    }

    /// Drops what expired (`expires_unix <= now_unix`); returns how many entries went.
    pub(crate) fn purge_expired(&self, now_unix: u64) -> usize {
        let mut t = lock(&self.tables);
        let t = &mut *t;
        let before = t.pseudonyms.len() + t.reauth.len();
        t.pseudonyms.retain(|_, (_, exp)| *exp > now_unix);
        t.reauth.retain(|_, r| r.expires_unix > now_unix);
        let (pseudonyms, reauth) = (&t.pseudonyms, &t.reauth);
        t.by_imsi.retain(|_, per| {
            per.pseudonyms.retain(|p| pseudonyms.contains_key(p));
            if per
                .reauth_id
                .as_ref()
                .is_some_and(|r| !reauth.contains_key(r))
            {
                per.reauth_id = None;
            }
            !per.pseudonyms.is_empty() || per.reauth_id.is_some()
        });
        before - t.pseudonyms.len() - t.reauth.len()
    }

    /// Entries held (pseudonyms, re-authentication contexts).
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let t = lock(&self.tables);
        (t.pseudonyms.len(), t.reauth.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capillary_secrets::{KAut, KEncr, KRe};

    fn imsi(s: &str) -> Imsi {
        Imsi::new(s).unwrap()
    }

    fn rec(id: &str, imsi_text: &str, counter: u16, expires_unix: u64) -> ReauthRecord {
        ReauthRecord {
            reauth_id: id.into(),
            imsi: imsi(imsi_text),
            k_encr: KEncr::from_bytes([1; 16]),
            k_aut: KAut::from_bytes([2; 32]),
            k_re: KRe::from_bytes([3; 32]),
            counter,
            expires_unix,
        }
    }

    const A: &str = "001010000000001";
    const B: &str = "001010000000002";

    #[test]
    fn pseudonyms_are_bounded_per_subscriber_and_owned() {
        let m = MemoryIdentities::default();
        m.put_pseudonym("7p1", &imsi(A), 100).unwrap();
        m.put_pseudonym("7p2", &imsi(A), 100).unwrap();
        m.put_pseudonym("7p3", &imsi(A), 100).unwrap();
        assert_eq!(m.resolve_pseudonym("7p1", 0), None, "oldest forgotten");
        assert_eq!(
            m.resolve_pseudonym("7p2", 0),
            Some(imsi(A)),
            "previous kept"
        );
        assert_eq!(m.resolve_pseudonym("7p3", 0), Some(imsi(A)));
        assert_eq!(m.resolve_pseudonym("7p3", 100), None, "expired");
        assert!(matches!(
            m.put_pseudonym("7p3", &imsi(B), 100),
            Err(StoreError::Exists)
        ));
        // Renewing does not count as a new one.
        m.put_pseudonym("7p2", &imsi(A), 200).unwrap();
        assert_eq!(m.resolve_pseudonym("7p2", 150), Some(imsi(A)));
        assert_eq!(m.resolve_pseudonym("7p3", 0), Some(imsi(A)));
        assert_eq!(m.len().0, 2);
    }

    #[test]
    fn one_reauth_context_per_subscriber_and_counter_claimed_once() {
        let m = MemoryIdentities::default();
        m.put_reauth(&rec("8r1", A, 0, 100)).unwrap();
        m.put_reauth(&rec("8r2", A, 0, 100)).unwrap();
        assert!(m.claim_reauth("8r1", 0).is_none(), "replaced");
        assert!(matches!(
            m.put_reauth(&rec("8r2", B, 0, 100)),
            Err(StoreError::Exists)
        ));
        let first = m.claim_reauth("8r2", 0).unwrap();
        assert_eq!(first.counter, 0);
        let second = m.claim_reauth("8r2", 0).unwrap();
        assert_eq!(
            second.counter, 1,
            "a counter value is never handed out twice"
        );
        assert!(m.claim_reauth("8r2", 100).is_none(), "expired");
        m.put_reauth(&rec("8r3", B, u16::MAX, 100)).unwrap();
        assert!(m.claim_reauth("8r3", 0).is_none(), "counter exhausted");
        m.delete_reauth("8r2");
        assert!(m.claim_reauth("8r2", 0).is_none());
        assert_eq!(m.len().1, 1);
    }

    #[test]
    fn purge_drops_expired_entries_and_their_index() {
        let m = MemoryIdentities::default();
        m.put_pseudonym("7a", &imsi(A), 10).unwrap();
        m.put_reauth(&rec("8a", A, 0, 10)).unwrap();
        m.put_pseudonym("7b", &imsi(B), 1000).unwrap();
        assert_eq!(m.purge_expired(10), 2);
        assert_eq!(m.len(), (1, 0));
        assert_eq!(lock(&m.tables).by_imsi.len(), 1);
        assert_eq!(m.resolve_pseudonym("7b", 10), Some(imsi(B)));
    }
}
