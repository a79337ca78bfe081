//! Device sessions with an index of their timers, so that [`super::LinkEndpoint`] finds the
//! next deadline and the due sessions without walking every session (10,000s of them).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use super::session::Session;

/// A device is known by the gateway it came through and the gateway's handle (§4).
pub(crate) type DevKey = (SocketAddr, u32);

/// The device sessions, keyed like a `HashMap`, plus a deadline index. Every mutable access
/// (`get_mut`, `insert`) marks the key (`remove` unindexes at once); [`Sessions::refresh`]
/// then re-reads the deadlines of the marked sessions, so the index is exact after each
/// refresh.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    /// Each session (boxed: it is large, and growing the map then moves pointers only)
    /// with the deadline it is indexed under in `timers`.
    map: HashMap<DevKey, (Box<Session>, Option<Instant>)>,
    /// Keys whose deadline may have changed since the last refresh.
    dirty: Vec<DevKey>,
    /// `(deadline, key)` of every session with a timer, ordered (deterministic).
    timers: BTreeSet<(Instant, DevKey)>,
}

/// When a session needs [`super::LinkEndpoint::handle_timeout`]: its CoAP-EAP
/// authenticator or its downlink retransmissions.
fn deadline(s: &Session) -> Option<Instant> {
    match (s.auth.poll_timeout(), s.downlink.outbox.poll_timeout()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Sessions {
    pub fn get(&self, k: &DevKey) -> Option<&Session> {
        self.map.get(k).map(|(b, _)| &**b)
    }

    pub fn get_mut(&mut self, k: &DevKey) -> Option<&mut Session> {
        let (s, _) = self.map.get_mut(k)?;
        if self.dirty.last() != Some(k) {
            self.dirty.push(*k);
        }
        Some(&mut **s)
    }

    pub fn insert(&mut self, k: DevKey, s: Session) -> Option<Session> {
        self.dirty.push(k);
        let old = self.map.insert(k, (Box::new(s), None))?;
        if let Some(t) = old.1 {
            self.timers.remove(&(t, k));
        }
        Some(*old.0)
    }

    pub fn remove(&mut self, k: &DevKey) -> Option<Session> {
        let (s, armed) = self.map.remove(k)?;
        if let Some(t) = armed {
            self.timers.remove(&(t, *k));
        }
        Some(*s)
    }

    pub fn contains_key(&self, k: &DevKey) -> bool {
        self.map.contains_key(k)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &DevKey> {
        self.map.keys()
    }

    pub fn values(&self) -> impl Iterator<Item = &Session> {
        self.map.values().map(|(b, _)| &**b)
    }

    /// Re-indexes the sessions touched since the last call.
    pub fn refresh(&mut self) {
        for k in std::mem::take(&mut self.dirty) {
            let Some((s, armed)) = self.map.get_mut(&k) else {
                continue;
            };
            let new = deadline(s);
            if new == *armed {
                continue;
            }
            if let Some(t) = armed.take() {
                self.timers.remove(&(t, k));
            }
            if let Some(t) = new {
                self.timers.insert((t, k));
                *armed = Some(t);
            }
        }
    }

    /// The earliest deadline of any session (exact even before a refresh).
    pub fn next_deadline(&self) -> Option<Instant> {
        let pending = self
            .dirty
            .iter()
            .filter_map(|k| self.map.get(k).and_then(|(s, _)| deadline(s)))
            .min();
        let indexed = self.timers.first().map(|(t, _)| *t);
        match (pending, indexed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Keys of the sessions due at `now`, by deadline then key (a deterministic order).
    pub fn due(&mut self, now: Instant) -> Vec<DevKey> {
        self.refresh();
        self.timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, k)| *k)
            .collect()
    }
}
