//! Device traffic (PROTOCOL.md §4): the handle table, per-device limits, batching of
//! device→network entries and delivery of device-bound entries.
//!
//! The gateway is a transparent relay here: a device datagram becomes one `kind 0` entry
//! byte for byte, a device-bound `kind 0` entry becomes one datagram byte for byte. This
//! module names no key type at all (R3, checked by `tests/r3_no_device_keys.rs`): it sees
//! CoAP messages whose EAP content carries no key in clear and whose OSCORE content it
//! cannot read, and outcome entries that carry no key.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use capillary_relay::{Batch, Batcher, Entry, EntryKind, HandleTable, OutcomeResult, RelayError};

use crate::types::{GatewayEvent, GatewayStats, Transmit};

/// Where the relay puts its outputs.
pub(crate) struct Sink<'a, A> {
    pub(crate) transmits: &'a mut std::collections::VecDeque<Transmit<A>>,
    pub(crate) events: &'a mut std::collections::VecDeque<GatewayEvent<A>>,
    pub(crate) stats: &'a mut GatewayStats,
}

/// Limits of the relay.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RelayLimits {
    pub(crate) max_devices: usize,
    pub(crate) max_pending_per_device: usize,
    pub(crate) idle: Duration,
    pub(crate) refused_grace: Duration,
    /// A batch closes once no entry joined it for this long (PROTOCOL.md §1: the batching
    /// window, [`capillary_relay::BatcherConfig::window`], default 20 ms).
    pub(crate) quiet: Duration,
    /// A batch is sent at the latest this long after its first entry.
    pub(crate) max_delay: Duration,
    /// Full batches held back while a wave is still arriving.
    pub(crate) max_ready: usize,
}

/// The device side of the gateway.
#[derive(Debug)]
pub(crate) struct DeviceRelay<A> {
    handles: HandleTable<A>,
    batcher: Batcher,
    limits: RelayLimits,
    /// Entries per handle waiting in the batcher.
    pending: HashMap<u32, usize>,
    /// Refused devices and when their handle is released.
    release_at: HashMap<u32, Instant>,
    /// `gone` entries not yet in the batcher (it was full).
    gone_backlog: Vec<u32>,
    /// Handles already reported `gone` in the batcher (no duplicates).
    gone_queued: HashSet<u32>,
    /// Full batches cut from the batcher, waiting with the open one for the release.
    ready: VecDeque<Batch>,
    /// When the first of the waiting entries arrived (`None` when none wait).
    first_push: Option<Instant>,
    /// When the last entry joined the waiting entries (`None` when none wait).
    last_push: Option<Instant>,
    /// The waiting entries are due: every batch goes as soon as the link takes it.
    releasing: bool,
}

impl<A: Hash + Eq + Clone + Debug> DeviceRelay<A> {
    pub(crate) fn new(batcher: Batcher, limits: RelayLimits) -> Self {
        DeviceRelay {
            handles: HandleTable::new(limits.max_devices),
            batcher,
            limits,
            pending: HashMap::new(),
            release_at: HashMap::new(),
            gone_backlog: Vec::new(),
            gone_queued: HashSet::new(),
            ready: VecDeque::new(),
            first_push: None,
            last_push: None,
            releasing: false,
        }
    }

    /// Most devices held at once.
    pub(crate) fn max_devices(&self) -> usize {
        self.limits.max_devices
    }

    /// Devices held.
    pub(crate) fn devices(&self) -> usize {
        self.handles.len()
    }

    /// The handle of a device, if held.
    pub(crate) fn handle_of(&self, addr: &A) -> Option<u32> {
        self.handles.get(addr)
    }

    /// Entries waiting for the link.
    pub(crate) fn pending_entries(&self) -> usize {
        self.batcher.len() + self.ready.iter().map(|b| b.entries.len()).sum::<usize>()
    }

    fn is_empty(&self) -> bool {
        self.batcher.is_empty() && self.ready.is_empty()
    }

    /// Adds an entry; a batch that is full moves to `ready`, up to `max_ready` (NSTART) of
    /// them; beyond, the entry is refused (back-pressure: the device's own CoAP timers send
    /// it again later). The bound is the gateway's congestion control on a slow link: an
    /// unbounded queue there fills with retransmissions of entries already queued and the
    /// link collapses (measured: `capillary sim --preset nbiot --mode naive -n 100` completes
    /// with the bound and does not without it). On a fast link raise NSTART
    /// (`capillary gateway --link-nstart`) so that a large wave is held whole.
    fn push(&mut self, now: Instant, entry: Entry) -> Result<(), RelayError> {
        let r = match self.batcher.push(now, entry.clone()) {
            Err(RelayError::Full) if self.ready.len() < self.limits.max_ready => {
                // Full implies a sealed batch: the batcher hands it out first.
                if let Some(b) = self.batcher.flush() {
                    self.ready.push_back(b);
                }
                self.batcher.push(now, entry)
            }
            r => r,
        };
        if r.is_ok() {
            self.first_push.get_or_insert(now);
            self.last_push = Some(now);
        }
        r
    }

    /// The handle of `from`, allocated if needed and touched; `None` (counted) when
    /// `max_devices` devices are held.
    pub(crate) fn handle_for(
        &mut self,
        now: Instant,
        from: &A,
        stats: &mut GatewayStats,
    ) -> Option<u32> {
        let handle = match self.handles.get(from) {
            Some(h) => h,
            None if self.handles.len() >= self.limits.max_devices => {
                stats.device_dropped_max_devices += 1;
                return None;
            }
            None => match self.handles.handle_for(from, now) {
                Ok(h) => h,
                Err(_) => {
                    stats.device_dropped_max_devices += 1;
                    return None;
                }
            },
        };
        self.handles.touch(handle, now);
        Some(handle)
    }

    /// PROTOCOL.md §5: the request the gateway sent `from` and the device's answer, as one
    /// `kind 3` entry. `false` when it could not be queued (counted).
    pub(crate) fn identity_entry(
        &mut self,
        now: Instant,
        from: &A,
        request: Vec<u8>,
        response: Vec<u8>,
        stats: &mut GatewayStats,
    ) -> bool {
        let entry = Entry {
            handle: 0,
            kind: EntryKind::Identity { request, response },
        };
        if entry.validate().is_err() {
            stats.device_dropped_malformed += 1;
            return false;
        }
        let Some(handle) = self.handle_for(now, from, stats) else {
            return false;
        };
        let waiting = self.pending.get(&handle).copied().unwrap_or(0);
        if waiting >= self.limits.max_pending_per_device {
            stats.device_dropped_pending_limit += 1;
            return false;
        }
        match self.push(now, Entry { handle, ..entry }) {
            Ok(()) => {
                *self.pending.entry(handle).or_insert(0) += 1;
                true
            }
            Err(RelayError::Full) => {
                stats.device_dropped_backpressure += 1;
                false
            }
            Err(_) => {
                stats.device_dropped_malformed += 1;
                false
            }
        }
    }

    /// A datagram from a device: one `kind 0` entry, or dropped and counted.
    pub(crate) fn device_datagram(
        &mut self,
        now: Instant,
        from: A,
        bytes: &[u8],
        sink: Sink<'_, A>,
    ) {
        let entry_probe = Entry::coap(0, bytes.to_vec());
        if entry_probe.validate().is_err() {
            sink.stats.device_dropped_malformed += 1;
            return;
        }
        let Some(handle) = self.handle_for(now, &from, sink.stats) else {
            return;
        };
        let waiting = self.pending.get(&handle).copied().unwrap_or(0);
        if waiting >= self.limits.max_pending_per_device {
            sink.stats.device_dropped_pending_limit += 1;
            return;
        }
        let EntryKind::Coap(body) = entry_probe.kind else {
            return;
        };
        match self.push(now, Entry::coap(handle, body)) {
            Ok(()) => {
                *self.pending.entry(handle).or_insert(0) += 1;
            }
            Err(RelayError::Full) => sink.stats.device_dropped_backpressure += 1,
            Err(_) => sink.stats.device_dropped_malformed += 1,
        }
    }

    /// The next batch for the link (a `POST /r` of the gateway, or the answer to a network
    /// `POST /r`), if the waiting entries are due. They become due together (`releasing`)
    /// when no entry joined them for the quiet window, when the first one has waited
    /// `max_delay`, or when `max_ready` full batches wait; then every batch goes as soon as
    /// the link takes it (several `POST /r` may be outstanding, PROTOCOL.md §4).
    ///
    /// Closing on a quiet gap instead of a fixed time after the first entry is what keeps
    /// an attach storm at one round trip per protocol step whatever the number of devices:
    /// the answers of N devices to one wave trickle in over a time that grows with N (their
    /// own processing, the capillary link), and a fixed window would cut them into ever more
    /// batches, each a sequential gateway-link round trip (docs/PERFORMANCE.md).
    ///
    /// An answer to a network `POST /r` carries only due entries too: taking the entries of
    /// a wave still arriving would cut it, and the network's answer to that slice would come
    /// in a network `POST /r`, whose answer would carry the next slice, and so on — one
    /// round trip per slice.
    pub(crate) fn take_batch(&mut self, now: Instant) -> Option<Batch> {
        self.refill_gone(now);
        if self.is_empty() {
            self.releasing = false;
            return None;
        }
        if !(self.releasing || self.due_at().is_some_and(|t| now >= t)) {
            return None;
        }
        self.releasing = true;
        let batch = self.ready.pop_front().or_else(|| self.batcher.flush());
        if self.is_empty() {
            self.releasing = false;
            self.first_push = None;
            self.last_push = None;
        }
        let batch = batch?;
        for e in &batch.entries {
            match e.kind {
                EntryKind::Coap(_) | EntryKind::Identity { .. } => {
                    if let Some(n) = self.pending.get_mut(&e.handle) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            self.pending.remove(&e.handle);
                        }
                    }
                }
                EntryKind::Gone => {
                    self.gone_queued.remove(&e.handle);
                }
                _ => {}
            }
        }
        self.refill_gone(now);
        Some(batch)
    }

    /// Device-bound entries from the network (a `2.04` batch or a network `POST /r`).
    pub(crate) fn network_entries(&mut self, now: Instant, entries: Vec<Entry>, sink: Sink<'_, A>) {
        for e in entries {
            match e.kind {
                EntryKind::Coap(bytes) => match self.handles.addr_of(e.handle).cloned() {
                    Some(addr) => {
                        self.handles.touch(e.handle, now);
                        sink.transmits.push_back(Transmit::ToDevice(addr, bytes));
                    }
                    None => {
                        // The network still talks to a device the gateway no longer holds:
                        // tell it the device is gone (§4 kind 2), on the answer to this
                        // batch when it is a network `POST /r`.
                        sink.stats.unknown_handle_entries += 1;
                        self.queue_gone(now, e.handle);
                        self.releasing = true;
                    }
                },
                EntryKind::Outcome { result, .. } => {
                    let Some(addr) = self.handles.addr_of(e.handle).cloned() else {
                        sink.stats.unknown_handle_entries += 1;
                        continue;
                    };
                    let authenticated = result == OutcomeResult::Authenticated;
                    if authenticated {
                        self.release_at.remove(&e.handle);
                    } else {
                        // Keep the handle for the EAP-Failure exchange, then release it.
                        let at = now.checked_add(self.limits.refused_grace).unwrap_or(now);
                        self.release_at.insert(e.handle, at);
                    }
                    sink.events.push_back(GatewayEvent::DeviceOutcome {
                        addr,
                        authenticated,
                    });
                }
                // Gateway→network kinds and unknown kinds are skipped (§4).
                _ => {}
            }
        }
    }

    /// Releases: refused devices after their grace period (no `gone`: the network refused
    /// them itself), idle devices (`gone` + event).
    pub(crate) fn handle_timeout(&mut self, now: Instant, sink: Sink<'_, A>) {
        let due: Vec<u32> = self
            .release_at
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(h, _)| *h)
            .collect();
        for h in due {
            self.release_at.remove(&h);
            self.pending.remove(&h);
            self.handles.release(h);
        }
        for (h, addr) in self.handles.expire(now, self.limits.idle) {
            self.release_at.remove(&h);
            self.pending.remove(&h);
            sink.stats.devices_gone += 1;
            self.queue_gone(now, h);
            sink.events.push_back(GatewayEvent::DeviceGone { addr });
        }
    }

    /// The next instant `handle_timeout` or `take_batch` has work; the batcher's deadline
    /// counts only when a batch could be sent (`can_send`).
    pub(crate) fn poll_timeout(&self, can_send: bool) -> Option<Instant> {
        let batch = if can_send { self.due_at() } else { None };
        [
            batch,
            self.handles.next_expiry(self.limits.idle),
            self.release_at.values().min().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When the waiting entries are due: at once while releasing or when `max_ready` full
    /// batches wait, else the earlier of the quiet gap and the longest delay.
    fn due_at(&self) -> Option<Instant> {
        if self.is_empty() {
            return None;
        }
        let first = self.first_push?;
        if self.releasing || self.ready.len() >= self.limits.max_ready {
            return Some(first);
        }
        let quiet = self
            .last_push
            .and_then(|t| t.checked_add(self.limits.quiet));
        let latest = first.checked_add(self.limits.max_delay);
        [quiet, latest].into_iter().flatten().min()
    }

    fn queue_gone(&mut self, now: Instant, handle: u32) {
        if self.gone_queued.contains(&handle) || self.gone_backlog.contains(&handle) {
            return;
        }
        match self.push(now, Entry::gone(handle)) {
            Ok(()) => {
                self.gone_queued.insert(handle);
            }
            // Bounded: the network cannot make the gateway hold more than one batch of these.
            Err(_) if self.gone_backlog.len() < capillary_relay::batch::MAX_ENTRIES => {
                self.gone_backlog.push(handle)
            }
            Err(_) => {}
        }
    }

    fn refill_gone(&mut self, now: Instant) {
        while let Some(&h) = self.gone_backlog.first() {
            if self.push(now, Entry::gone(h)).is_err() {
                break;
            }
            self.gone_backlog.remove(0);
            self.gone_queued.insert(h);
        }
    }
}
