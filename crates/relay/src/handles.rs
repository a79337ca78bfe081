//! The gateway's handles (PROTOCOL.md §4: "a number the gateway assigns to a device's
//! capillary-link address for as long as it keeps that device; the network never sees link
//! addresses").
//!
//! Handles are allocated from a counter that only moves forward (wrapping at `u32::MAX` and
//! skipping handles in use), so a released handle is not given to another device until the
//! other ~4 billion have been used: a late answer from the network for a departed device
//! cannot reach a newcomer.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::RelayError;

#[derive(Clone, Debug)]
struct Slot<A> {
    addr: A,
    last_seen: Instant,
}

/// Two-way map between capillary-link addresses (e.g. `SocketAddr`) and `u32` handles, with
/// idle expiry and a capacity limit. The handles are also indexed by when they were last
/// seen, so the next expiry and the idle handles are found without a scan.
#[derive(Clone, Debug)]
pub struct HandleTable<A> {
    by_addr: HashMap<A, u32>,
    by_handle: HashMap<u32, Slot<A>>,
    /// `(last_seen, handle)` of every handle.
    by_time: BTreeSet<(Instant, u32)>,
    next: u32,
    capacity: usize,
}

impl<A: Hash + Eq + Clone> HandleTable<A> {
    /// An empty table holding at most `capacity` devices (capped at `u32::MAX`).
    pub fn new(capacity: usize) -> Self {
        HandleTable {
            by_addr: HashMap::new(),
            by_handle: HashMap::new(),
            by_time: BTreeSet::new(),
            next: 0,
            capacity: capacity.min(u32::MAX as usize),
        }
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Devices held.
    pub fn len(&self) -> usize {
        self.by_handle.len()
    }

    /// True if no device is held.
    pub fn is_empty(&self) -> bool {
        self.by_handle.is_empty()
    }

    /// The handle of `addr`, allocating one if it has none; marks it seen at `now`.
    /// Fails with [`RelayError::HandleTableFull`] when a new handle is needed and the table
    /// holds `capacity` devices.
    pub fn handle_for(&mut self, addr: &A, now: Instant) -> Result<u32, RelayError> {
        if let Some(&h) = self.by_addr.get(addr) {
            self.touch(h, now);
            return Ok(h);
        }
        if self.by_handle.len() >= self.capacity {
            return Err(RelayError::HandleTableFull {
                capacity: self.capacity,
            });
        }
        // Terminates: fewer than `capacity <= u32::MAX` handles are in use.
        let mut h = self.next;
        while self.by_handle.contains_key(&h) {
            h = h.wrapping_add(1);
        }
        self.next = h.wrapping_add(1);
        self.by_addr.insert(addr.clone(), h);
        self.by_handle.insert(
            h,
            Slot {
                addr: addr.clone(),
                last_seen: now,
            },
        );
        self.by_time.insert((now, h));
        Ok(h)
    }

    /// The handle of `addr`, without allocating or touching.
    pub fn get(&self, addr: &A) -> Option<u32> {
        self.by_addr.get(addr).copied()
    }

    /// The address behind `handle`.
    pub fn addr_of(&self, handle: u32) -> Option<&A> {
        self.by_handle.get(&handle).map(|s| &s.addr)
    }

    /// Mark `handle` seen at `now` (e.g. on traffic from the network for it); false if unknown.
    pub fn touch(&mut self, handle: u32, now: Instant) -> bool {
        match self.by_handle.get_mut(&handle) {
            Some(slot) => {
                if slot.last_seen != now {
                    self.by_time.remove(&(slot.last_seen, handle));
                    self.by_time.insert((now, handle));
                    slot.last_seen = now;
                }
                true
            }
            None => false,
        }
    }

    /// Forget `handle`; returns its address.
    pub fn release(&mut self, handle: u32) -> Option<A> {
        let slot = self.by_handle.remove(&handle)?;
        self.by_time.remove(&(slot.last_seen, handle));
        self.by_addr.remove(&slot.addr);
        Some(slot.addr)
    }

    /// Release every handle not seen for at least `idle` before `now` and return them, in
    /// handle order (the gateway then reports them with `kind 2`, gone).
    pub fn expire(&mut self, now: Instant, idle: Duration) -> Vec<(u32, A)> {
        let mut gone: Vec<u32> = self
            .by_time
            .iter()
            .take_while(|(seen, _)| now.saturating_duration_since(*seen) >= idle)
            .map(|&(_, h)| h)
            .collect();
        gone.sort_unstable();
        gone.into_iter()
            .filter_map(|h| self.release(h).map(|a| (h, a)))
            .collect()
    }

    /// When the next handle becomes idle for `idle` (for the driver's timer); `None` if empty
    /// (or never representable).
    pub fn next_expiry(&self, idle: Duration) -> Option<Instant> {
        self.by_time.first().and_then(|(t, _)| t.checked_add(idle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_follows_the_least_recently_seen_handle() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let idle = Duration::from_secs(10);
        let mut t = HandleTable::new(10);
        let a = t.handle_for(&"a", t0).unwrap();
        let b = t.handle_for(&"b", t0 + s).unwrap();
        let c = t.handle_for(&"c", t0 + 2 * s).unwrap();
        assert_eq!(t.next_expiry(idle), Some(t0 + idle));
        // Seen again: "b" is now the oldest.
        assert!(t.touch(a, t0 + 3 * s));
        assert_eq!(t.next_expiry(idle), Some(t0 + s + idle));
        assert_eq!(t.handle_for(&"b", t0 + 4 * s).unwrap(), b);
        assert_eq!(t.next_expiry(idle), Some(t0 + 2 * s + idle));
        assert_eq!(t.release(c), Some("c"));
        assert_eq!(t.next_expiry(idle), Some(t0 + 3 * s + idle));
        assert!(t.expire(t0 + 12 * s, idle).is_empty());
        assert_eq!(t.expire(t0 + 14 * s, idle), vec![(a, "a"), (b, "b")]);
        assert_eq!(t.next_expiry(idle), None);
        assert!(t.is_empty());
    }

    #[test]
    fn counter_wraps_and_skips_handles_in_use() {
        let t0 = Instant::now();
        let mut t = HandleTable::new(10);
        t.next = u32::MAX - 1;
        assert_eq!(t.handle_for(&1, t0).unwrap(), u32::MAX - 1);
        assert_eq!(t.handle_for(&2, t0).unwrap(), u32::MAX);
        assert_eq!(t.handle_for(&3, t0).unwrap(), 0);
        t.next = u32::MAX - 1;
        assert_eq!(
            t.handle_for(&4, t0).unwrap(),
            1,
            "skips u32::MAX - 1, u32::MAX, 0"
        );
    }
}
