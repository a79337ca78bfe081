//! Sans-IO batching of one direction of the gateway link (PROTOCOL.md §1 "Batching", §4).
//!
//! Entries pushed within a window (default 20 ms from the first entry of a batch) travel as one
//! batch. A batch is cut early, never over the limits: an entry that would push the open batch
//! past `max_entries` or `max_bytes` seals the open batch and starts the next one. Size
//! accounting is exact (the sealed batch's [`Batch::encode`] length is what was counted).
//!
//! Driving it (quinn-style): after every [`Batcher::push`] and whenever the instant from
//! [`Batcher::poll_timeout`] is reached, call [`Batcher::poll_batch`] until it returns `None`.
//! The batcher holds at most one sealed batch besides the open one; when both exist and the
//! next entry does not fit, [`Batcher::push`] refuses with [`RelayError::Full`] (back-pressure).

use std::time::{Duration, Instant};

use crate::batch::{overhead, Batch, Entry, MAX_BATCH_BYTES, MAX_ENTRIES, MIN_ENTRY_LEN};
use crate::RelayError;

/// Limits of a [`Batcher`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatcherConfig {
    /// How long the first entry of a batch waits for company (§1: default 20 ms).
    pub window: Duration,
    /// Entries per batch, `1..=1024` (§4).
    pub max_entries: usize,
    /// Encoded bytes per batch, at most 65,536 (§4), and enough for one entry.
    pub max_bytes: usize,
}

impl Default for BatcherConfig {
    /// 20 ms, 1,024 entries, 64 KiB (PROTOCOL.md §1, §4).
    fn default() -> Self {
        BatcherConfig {
            window: Duration::from_millis(20),
            max_entries: MAX_ENTRIES,
            max_bytes: MAX_BATCH_BYTES,
        }
    }
}

/// Collects entries into batches for one direction of the link.
#[derive(Debug)]
pub struct Batcher {
    config: BatcherConfig,
    /// The open batch.
    current: Vec<Entry>,
    /// Sum of `encoded_len` of `current`.
    current_bytes: usize,
    /// When the first entry of `current` was pushed.
    window_start: Option<Instant>,
    /// A batch cut because the next entry did not fit, and when it was cut.
    sealed: Option<(Instant, Batch)>,
}

impl Batcher {
    /// A batcher with `config`. Fails if `max_entries` is not in `1..=1024` or `max_bytes` is
    /// over 65,536 or too small for one minimal entry.
    pub fn new(config: BatcherConfig) -> Result<Self, RelayError> {
        if config.max_entries == 0 || config.max_entries > MAX_ENTRIES {
            return Err(RelayError::InvalidConfig("max_entries must be in 1..=1024"));
        }
        if config.max_bytes > MAX_BATCH_BYTES || config.max_bytes < overhead(1) + MIN_ENTRY_LEN {
            return Err(RelayError::InvalidConfig(
                "max_bytes must be in 6..=65536 (room for one entry, at most 64 KiB)",
            ));
        }
        Ok(Batcher {
            config,
            current: Vec::new(),
            current_bytes: 0,
            window_start: None,
            sealed: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BatcherConfig {
        &self.config
    }

    /// Entries held (open and sealed batch).
    pub fn len(&self) -> usize {
        self.current.len() + self.sealed.as_ref().map_or(0, |(_, b)| b.entries.len())
    }

    /// True if no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add `entry` at `now`. Fails with the entry's validation error ([`Entry::validate`]),
    /// with [`RelayError::EntryTooLarge`] if it cannot fit even in an empty batch, or with
    /// [`RelayError::Full`] if it would start a new batch while a sealed one is still waiting
    /// for [`Batcher::poll_batch`]. On error the batcher is unchanged.
    pub fn push(&mut self, now: Instant, entry: Entry) -> Result<(), RelayError> {
        entry.validate()?;
        let len = entry.encoded_len();
        if overhead(1) + len > self.config.max_bytes {
            return Err(RelayError::EntryTooLarge {
                len,
                max: self.config.max_bytes,
            });
        }
        if !self.current.is_empty() && !self.fits(len) {
            if self.sealed.is_some() {
                return Err(RelayError::Full);
            }
            let batch = self.take_current();
            self.sealed = Some((now, batch));
        }
        if self.current.is_empty() {
            self.window_start = Some(now);
        }
        self.current.push(entry);
        self.current_bytes += len;
        Ok(())
    }

    /// When [`Batcher::poll_batch`] should next be called: now (an instant not after `now`)
    /// if a batch is ready, the end of the open batch's window otherwise, `None` if empty.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some((at, _)) = &self.sealed {
            return Some(*at);
        }
        let start = self.window_start?;
        if self.current_full() {
            return Some(start);
        }
        start.checked_add(self.config.window)
    }

    /// The next batch to send, if one is due at `now`: the sealed batch first, then the open
    /// batch once its window has expired or it cannot take even a minimal entry more.
    #[must_use]
    pub fn poll_batch(&mut self, now: Instant) -> Option<Batch> {
        if let Some((_, b)) = self.sealed.take() {
            return Some(b);
        }
        let start = self.window_start?;
        let expired = start
            .checked_add(self.config.window)
            .is_some_and(|deadline| now >= deadline);
        if expired || self.current_full() {
            Some(self.take_current())
        } else {
            None
        }
    }

    /// The next batch regardless of the window (sealed first, then the open one); call until
    /// `None` to drain, e.g. on shutdown.
    #[must_use]
    pub fn flush(&mut self) -> Option<Batch> {
        if let Some((_, b)) = self.sealed.take() {
            return Some(b);
        }
        if self.current.is_empty() {
            None
        } else {
            Some(self.take_current())
        }
    }

    /// Exact encoded size of the open batch.
    pub fn open_batch_len(&self) -> usize {
        overhead(self.current.len()) + self.current_bytes
    }

    /// Would an entry of encoded length `len` fit in the open batch?
    fn fits(&self, len: usize) -> bool {
        let n = self.current.len() + 1;
        n <= self.config.max_entries
            && overhead(n) + self.current_bytes + len <= self.config.max_bytes
    }

    /// The open batch cannot take another entry of any kind.
    fn current_full(&self) -> bool {
        !self.current.is_empty() && !self.fits(MIN_ENTRY_LEN)
    }

    fn take_current(&mut self) -> Batch {
        self.window_start = None;
        self.current_bytes = 0;
        Batch::new(std::mem::take(&mut self.current))
    }
}
