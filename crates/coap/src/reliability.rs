//! Message-layer reliability (RFC 7252 §4): retransmission of Confirmable messages,
//! duplicate detection, Message ID and token allocation.
//!
//! Sans-IO: the caller passes `now` (a [`std::time::Instant`]) and randomness in, and gets
//! bytes to (re)send and deadlines out ([`Outbox::poll_timeout`], [`Dedup::poll_timeout`]).
//! Nothing here reads a clock, sleeps, or touches a socket.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::msg::MessageType;

/// Transmission parameters (RFC 7252 §4.8) with the derived time values of §4.8.2.
///
/// `Default` gives the RFC defaults: ACK_TIMEOUT 2 s, ACK_RANDOM_FACTOR 1.5,
/// MAX_RETRANSMIT 4, NSTART 1, DEFAULT_LEISURE 5 s, PROBING_RATE 1 byte/s,
/// MAX_LATENCY 100 s, PROCESSING_DELAY = ACK_TIMEOUT.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransmissionParams {
    /// ACK_TIMEOUT.
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR (≥ 1.0; values below 1.0 or non-finite are treated as 1.0).
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT.
    pub max_retransmit: u8,
    /// NSTART: outstanding interactions per peer ([`Outbox::can_send`]).
    pub nstart: usize,
    /// DEFAULT_LEISURE (multicast response spreading).
    pub default_leisure: Duration,
    /// PROBING_RATE in bytes per second.
    pub probing_rate: u32,
    /// MAX_LATENCY.
    pub max_latency: Duration,
    /// PROCESSING_DELAY.
    pub processing_delay: Duration,
}

impl Default for TransmissionParams {
    fn default() -> Self {
        TransmissionParams {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            nstart: 1,
            default_leisure: Duration::from_secs(5),
            probing_rate: 1,
            max_latency: Duration::from_secs(100),
            processing_delay: Duration::from_secs(2),
        }
    }
}

/// `d * f` without panicking (saturates; non-finite or negative `f` → `d`).
fn mul_f64(d: Duration, f: f64) -> Duration {
    if !f.is_finite() || f < 0.0 {
        return d;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() * f).unwrap_or(Duration::MAX)
}

/// `now + d`, falling back to `now` if the sum is not representable.
fn add(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

impl TransmissionParams {
    fn factor(&self) -> f64 {
        if self.ack_random_factor.is_finite() && self.ack_random_factor >= 1.0 {
            self.ack_random_factor
        } else {
            1.0
        }
    }

    /// Initial retransmission timeout for a CON message: ACK_TIMEOUT scaled by a value in
    /// `[1, ACK_RANDOM_FACTOR)` chosen by `jitter ∈ [0, 1)` (RFC 7252 §4.2).
    /// `jitter` outside `[0, 1)` is clamped; NaN counts as 0.
    pub fn initial_timeout(&self, jitter: f64) -> Duration {
        let j = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        mul_f64(self.ack_timeout, 1.0 + j * (self.factor() - 1.0))
    }

    /// MAX_TRANSMIT_SPAN = ACK_TIMEOUT × (2^MAX_RETRANSMIT − 1) × ACK_RANDOM_FACTOR (45 s).
    pub fn max_transmit_span(&self) -> Duration {
        let n = (1u64 << self.max_retransmit.min(62)) - 1;
        mul_f64(self.ack_timeout, n as f64 * self.factor())
    }

    /// MAX_TRANSMIT_WAIT = ACK_TIMEOUT × (2^(MAX_RETRANSMIT+1) − 1) × ACK_RANDOM_FACTOR (93 s).
    pub fn max_transmit_wait(&self) -> Duration {
        let n = (1u64 << (u32::from(self.max_retransmit) + 1).min(62)) - 1;
        mul_f64(self.ack_timeout, n as f64 * self.factor())
    }

    /// MAX_RTT = 2 × MAX_LATENCY + PROCESSING_DELAY (202 s).
    pub fn max_rtt(&self) -> Duration {
        self.max_latency
            .saturating_mul(2)
            .saturating_add(self.processing_delay)
    }

    /// EXCHANGE_LIFETIME = MAX_TRANSMIT_SPAN + 2 × MAX_LATENCY + PROCESSING_DELAY (247 s).
    pub fn exchange_lifetime(&self) -> Duration {
        self.max_transmit_span().saturating_add(self.max_rtt())
    }

    /// NON_LIFETIME = MAX_TRANSMIT_SPAN + MAX_LATENCY (145 s).
    pub fn non_lifetime(&self) -> Duration {
        self.max_transmit_span().saturating_add(self.max_latency)
    }
}

/// Output of [`Outbox::handle_timeout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retransmission {
    /// Send these bytes again (same Message ID).
    Resend {
        /// Message ID of the retransmitted message.
        message_id: u16,
        /// The encoded message, as given to [`Outbox::send_con`].
        bytes: Vec<u8>,
    },
    /// MAX_RETRANSMIT reached and the last timeout expired without ACK/RST: the exchange
    /// failed (RFC 7252 §4.2 "the attempt to transmit the message is canceled").
    GaveUp {
        /// Message ID of the abandoned message.
        message_id: u16,
    },
}

#[derive(Debug)]
struct Pending {
    message_id: u16,
    bytes: Vec<u8>,
    timeout: Duration,
    deadline: Instant,
    retransmit_count: u8,
}

/// Outstanding Confirmable messages towards one peer, with exponential back-off
/// (RFC 7252 §4.2).
///
/// Schedule with initial timeout `T ∈ [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR)`:
/// retransmissions at `T, 3T, 7T, 15T` and give-up at `31T` after the first send
/// (for MAX_RETRANSMIT = 4), measured from the times `handle_timeout` is called.
#[derive(Debug)]
pub struct Outbox {
    params: TransmissionParams,
    pending: Vec<Pending>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new(TransmissionParams::default())
    }
}

impl Outbox {
    /// An empty outbox.
    pub fn new(params: TransmissionParams) -> Self {
        Outbox {
            params,
            pending: Vec::new(),
        }
    }

    /// The parameters in use.
    pub fn params(&self) -> &TransmissionParams {
        &self.params
    }

    /// Start tracking a CON message the caller is sending now. `jitter ∈ [0, 1)` picks the
    /// initial timeout (pass a fresh random number). An entry with the same Message ID is
    /// replaced.
    pub fn send_con(&mut self, now: Instant, msg_bytes: Vec<u8>, message_id: u16, jitter: f64) {
        self.pending.retain(|p| p.message_id != message_id);
        let timeout = self.params.initial_timeout(jitter);
        self.pending.push(Pending {
            message_id,
            bytes: msg_bytes,
            timeout,
            deadline: add(now, timeout),
            retransmit_count: 0,
        });
    }

    /// An ACK or RST with `message_id` arrived: stop retransmitting. Returns whether the
    /// message was outstanding (false → unmatched ACK/RST, ignore it, RFC 7252 §4.2).
    pub fn handle_incoming_ack_or_rst(&mut self, message_id: u16) -> bool {
        self.cancel(message_id)
    }

    /// Stop tracking `message_id` (e.g. the application abandoned the request).
    pub fn cancel(&mut self, message_id: u16) -> bool {
        let before = self.pending.len();
        self.pending.retain(|p| p.message_id != message_id);
        self.pending.len() != before
    }

    /// Is `message_id` still awaiting ACK/RST?
    pub fn is_outstanding(&self, message_id: u16) -> bool {
        self.pending.iter().any(|p| p.message_id == message_id)
    }

    /// Number of outstanding CON messages.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// No outstanding CON messages.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Fewer than NSTART messages outstanding (RFC 7252 §4.7), so a new one may be sent.
    pub fn can_send(&self) -> bool {
        self.pending.len() < self.params.nstart
    }

    /// Retransmissions done so far for `message_id`.
    pub fn retransmit_count(&self, message_id: u16) -> Option<u8> {
        self.pending
            .iter()
            .find(|p| p.message_id == message_id)
            .map(|p| p.retransmit_count)
    }

    /// Earliest instant at which [`Outbox::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.deadline).min()
    }

    /// Process all deadlines ≤ `now`: retransmit (doubling the timeout) or give up.
    #[must_use]
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Retransmission> {
        let mut out = Vec::new();
        let max = self.params.max_retransmit;
        self.pending.retain_mut(|p| {
            if p.deadline > now {
                return true;
            }
            if p.retransmit_count < max {
                p.retransmit_count += 1;
                p.timeout = p.timeout.saturating_mul(2);
                p.deadline = add(now, p.timeout);
                out.push(Retransmission::Resend {
                    message_id: p.message_id,
                    bytes: p.bytes.clone(),
                });
                true
            } else {
                out.push(Retransmission::GaveUp {
                    message_id: p.message_id,
                });
                false
            }
        });
        out
    }
}

/// Result of [`Dedup::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DedupResult {
    /// First time this (peer, Message ID) is seen within its lifetime: process it.
    New,
    /// A duplicate (RFC 7252 §4.5). `Some(bytes)`: resend this cached response (ACK or
    /// RST) without reprocessing; `None`: no response recorded yet, so ignore the duplicate
    /// (for a CON still being processed an Empty ACK may be sent instead).
    Duplicate(Option<Vec<u8>>),
}

#[derive(Debug)]
struct Seen {
    expires: Instant,
    response: Option<Vec<u8>>,
}

/// Default bound on remembered (peer, Message ID) pairs in a [`Dedup`].
pub const DEFAULT_DEDUP_CAPACITY: usize = 4096;

/// Received-Message-ID duplicate detection per peer (RFC 7252 §4.5): CON IDs are remembered
/// for EXCHANGE_LIFETIME, NON IDs for NON_LIFETIME, with an optional cached response.
///
/// Memory is bounded: when `capacity` pairs are remembered, the one expiring first is
/// forgotten (an attacker can flood it, which only weakens deduplication).
#[derive(Debug)]
pub struct Dedup<K> {
    exchange_lifetime: Duration,
    non_lifetime: Duration,
    capacity: usize,
    len: usize,
    seen: HashMap<K, HashMap<u16, Seen>>,
    // Insertion order per lifetime; each queue is ordered by expiry when `now` is monotonic.
    con_queue: VecDeque<(Instant, K, u16)>,
    non_queue: VecDeque<(Instant, K, u16)>,
}

impl<K: Hash + Eq + Clone> Default for Dedup<K> {
    fn default() -> Self {
        Dedup::new(&TransmissionParams::default())
    }
}

impl<K: Hash + Eq + Clone> Dedup<K> {
    /// Lifetimes from `params`, capacity [`DEFAULT_DEDUP_CAPACITY`].
    pub fn new(params: &TransmissionParams) -> Self {
        Dedup::with_capacity(params, DEFAULT_DEDUP_CAPACITY)
    }

    /// Lifetimes from `params`, at most `capacity` (≥ 1) remembered pairs.
    pub fn with_capacity(params: &TransmissionParams, capacity: usize) -> Self {
        Dedup {
            exchange_lifetime: params.exchange_lifetime(),
            non_lifetime: params.non_lifetime(),
            capacity: capacity.max(1),
            len: 0,
            seen: HashMap::new(),
            con_queue: VecDeque::new(),
            non_queue: VecDeque::new(),
        }
    }

    /// Check a received Confirmable message (remembered for EXCHANGE_LIFETIME).
    /// A `New` result records the pair.
    pub fn check(&mut self, now: Instant, peer: &K, message_id: u16) -> DedupResult {
        self.check_typed(now, peer, message_id, MessageType::Con)
    }

    /// Check a received message of type `ty`: CON → EXCHANGE_LIFETIME, NON → NON_LIFETIME.
    /// ACK and RST are matched by [`Outbox`], not deduplicated here: always `New`, nothing recorded.
    pub fn check_typed(
        &mut self,
        now: Instant,
        peer: &K,
        message_id: u16,
        ty: MessageType,
    ) -> DedupResult {
        let lifetime = match ty {
            MessageType::Con => self.exchange_lifetime,
            MessageType::Non => self.non_lifetime,
            MessageType::Ack | MessageType::Rst => return DedupResult::New,
        };
        if let Some(s) = self.seen.get(peer).and_then(|m| m.get(&message_id)) {
            if s.expires > now {
                return DedupResult::Duplicate(s.response.clone());
            }
        }
        self.expire(now);
        while self.len >= self.capacity && self.evict_one() {}
        let expires = add(now, lifetime);
        let prev = self.seen.entry(peer.clone()).or_default().insert(
            message_id,
            Seen {
                expires,
                response: None,
            },
        );
        if prev.is_none() {
            self.len += 1;
        }
        let q = if ty == MessageType::Con {
            &mut self.con_queue
        } else {
            &mut self.non_queue
        };
        q.push_back((expires, peer.clone(), message_id));
        DedupResult::New
    }

    /// Remember the response sent for (peer, Message ID), returned on later duplicates.
    /// Returns false if the pair is not (or no longer) remembered.
    pub fn record_response(&mut self, peer: &K, message_id: u16, bytes: Vec<u8>) -> bool {
        match self.seen.get_mut(peer).and_then(|m| m.get_mut(&message_id)) {
            Some(s) => {
                s.response = Some(bytes);
                true
            }
            None => false,
        }
    }

    /// Forget every pair whose lifetime ended at or before `now`.
    pub fn expire(&mut self, now: Instant) {
        for which in [true, false] {
            loop {
                let q = if which {
                    &mut self.con_queue
                } else {
                    &mut self.non_queue
                };
                match q.front() {
                    Some((t, _, _)) if *t <= now => {}
                    _ => break,
                }
                if let Some((t, k, mid)) = q.pop_front() {
                    self.remove_if(&k, mid, t);
                }
            }
        }
    }

    /// Earliest instant at which [`Dedup::expire`] would forget something.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let a = self.con_queue.front().map(|e| e.0);
        let b = self.non_queue.front().map(|e| e.0);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Number of remembered (peer, Message ID) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn remove_if(&mut self, peer: &K, message_id: u16, expires: Instant) {
        if let Some(m) = self.seen.get_mut(peer) {
            if m.get(&message_id).is_some_and(|s| s.expires == expires) {
                m.remove(&message_id);
                self.len -= 1;
            }
            if m.is_empty() {
                self.seen.remove(peer);
            }
        }
    }

    /// Drop the queue entry expiring first; false if both queues are empty.
    fn evict_one(&mut self) -> bool {
        let con_first = match (self.con_queue.front(), self.non_queue.front()) {
            (Some(a), Some(b)) => a.0 <= b.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return false,
        };
        let q = if con_first {
            &mut self.con_queue
        } else {
            &mut self.non_queue
        };
        if let Some((t, k, mid)) = q.pop_front() {
            self.remove_if(&k, mid, t);
        }
        true
    }
}

/// Message ID allocation (RFC 7252 §4.4): sequential from a randomized start.
#[derive(Clone, Debug)]
pub struct MessageIdAllocator {
    next: u16,
}

impl MessageIdAllocator {
    /// Start at `initial` — pass a random value.
    pub fn new(initial: u16) -> Self {
        MessageIdAllocator { next: initial }
    }

    /// The next Message ID (wraps at 65535).
    pub fn next_id(&mut self) -> u16 {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        id
    }
}

/// Token allocation (RFC 7252 §5.3.1): distinct tokens of a fixed length from a seeded
/// SplitMix64 sequence (a bijection of a counter, so 8-byte tokens never repeat within
/// 2^64 allocations). Seed it from a CSPRNG. Not cryptographically unpredictable: on paths
/// exposed to off-path attackers rely on OSCORE/DTLS, as §5.3.1 allows.
#[derive(Clone, Debug)]
pub struct TokenAllocator {
    len: usize,
    state: u64,
}

impl TokenAllocator {
    /// Tokens of `len` bytes (clamped to 1..=8), sequence chosen by `seed`.
    pub fn new(len: usize, seed: u64) -> Self {
        TokenAllocator {
            len: len.clamp(1, 8),
            state: seed,
        }
    }

    /// The token length in bytes.
    pub fn token_len(&self) -> usize {
        self.len
    }

    /// The next token.
    pub fn next_token(&mut self) -> Vec<u8> {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        z.to_be_bytes()[..self.len].to_vec()
    }
}
