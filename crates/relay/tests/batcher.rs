//! Batcher (PROTOCOL.md §1 "Batching", §4 limits) driven by a fake clock.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use capillary_relay::batch::{MAX_BATCH_BYTES, MAX_ENTRIES};
use capillary_relay::{Batch, Batcher, BatcherConfig, Entry, EntryKind, RelayError};
use common::{coap_of_len, entry, COAP_GET};
use proptest::prelude::*;

const MS: Duration = Duration::from_millis(1);

fn get(handle: u32) -> Entry {
    Entry::coap(handle, COAP_GET.to_vec())
}

fn check_batch(b: &Batch, cfg: &BatcherConfig) -> Vec<u8> {
    let bytes = b.encode().unwrap();
    assert_eq!(bytes.len(), b.encoded_len());
    assert!(
        bytes.len() <= cfg.max_bytes,
        "{} > {}",
        bytes.len(),
        cfg.max_bytes
    );
    assert!(b.entries.len() <= cfg.max_entries);
    bytes
}

#[test]
fn default_config_is_protocol_md() {
    let c = BatcherConfig::default();
    assert_eq!(c.window, 20 * MS);
    assert_eq!(c.max_entries, 1024);
    assert_eq!(c.max_bytes, 65_536);
}

#[test]
fn invalid_configs() {
    for c in [
        BatcherConfig {
            max_entries: 0,
            ..Default::default()
        },
        BatcherConfig {
            max_entries: 1025,
            ..Default::default()
        },
        BatcherConfig {
            max_bytes: 65_537,
            ..Default::default()
        },
        BatcherConfig {
            max_bytes: 6,
            ..Default::default()
        },
    ] {
        assert!(
            matches!(Batcher::new(c), Err(RelayError::InvalidConfig(_))),
            "{c:?}"
        );
    }
    Batcher::new(BatcherConfig {
        max_bytes: 7,
        ..Default::default()
    })
    .unwrap();
}

#[test]
fn window_timing() {
    let t0 = Instant::now();
    let mut b = Batcher::new(BatcherConfig::default()).unwrap();
    assert_eq!(b.poll_timeout(), None);
    assert_eq!(b.poll_batch(t0), None);

    b.push(t0, get(1)).unwrap();
    assert_eq!(b.poll_timeout(), Some(t0 + 20 * MS));
    assert_eq!(b.poll_batch(t0 + 19 * MS), None);
    b.push(t0 + 10 * MS, get(2)).unwrap();
    // The window runs from the first entry, not the last.
    assert_eq!(b.poll_timeout(), Some(t0 + 20 * MS));
    assert_eq!(b.poll_batch(t0 + 19 * MS), None);
    let batch = b.poll_batch(t0 + 20 * MS).unwrap();
    assert_eq!(batch.entries, vec![get(1), get(2)]);
    assert_eq!(b.poll_batch(t0 + 20 * MS), None);
    assert_eq!(b.poll_timeout(), None);
    assert!(b.is_empty());

    // The next batch's window starts at its own first entry.
    b.push(t0 + 50 * MS, get(3)).unwrap();
    assert_eq!(b.poll_timeout(), Some(t0 + 70 * MS));
    assert_eq!(b.poll_batch(t0 + 69 * MS), None);
    assert_eq!(b.poll_batch(t0 + 70 * MS).unwrap().entries, vec![get(3)]);
}

#[test]
fn flush_ignores_window() {
    let t0 = Instant::now();
    let mut b = Batcher::new(BatcherConfig::default()).unwrap();
    assert_eq!(b.flush(), None);
    b.push(t0, get(1)).unwrap();
    assert_eq!(b.flush().unwrap().entries, vec![get(1)]);
    assert_eq!(b.flush(), None);
}

#[test]
fn early_flush_on_count() {
    let cfg = BatcherConfig {
        max_entries: 3,
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut b = Batcher::new(cfg).unwrap();
    b.push(t0, get(1)).unwrap();
    b.push(t0, get(2)).unwrap();
    assert_eq!(b.poll_batch(t0 + MS), None);
    b.push(t0 + MS, get(3)).unwrap();
    // Full by count: due now, not at the end of the window.
    assert!(b.poll_timeout().unwrap() <= t0 + MS);
    assert_eq!(b.poll_batch(t0 + MS).unwrap().entries.len(), 3);

    // Without polling in between, the 4th entry seals the first three and opens a new batch.
    for h in 10..14 {
        b.push(t0 + 2 * MS, get(h)).unwrap();
    }
    assert_eq!(b.len(), 4);
    assert_eq!(b.poll_timeout(), Some(t0 + 2 * MS));
    let first = b.poll_batch(t0 + 2 * MS).unwrap();
    assert_eq!(first.entries, vec![get(10), get(11), get(12)]);
    assert_eq!(b.poll_batch(t0 + 2 * MS), None);
    assert_eq!(b.poll_timeout(), Some(t0 + 22 * MS));
    assert_eq!(b.poll_batch(t0 + 22 * MS).unwrap().entries, vec![get(13)]);
}

#[test]
fn exact_count_boundary_default() {
    let t0 = Instant::now();
    let cfg = BatcherConfig::default();
    let mut b = Batcher::new(cfg).unwrap();
    for h in 0..MAX_ENTRIES as u32 {
        b.push(t0, Entry::gone(h)).unwrap();
    }
    assert_eq!(b.poll_timeout(), Some(t0), "1,024 entries: due immediately");
    b.push(t0, Entry::gone(5000)).unwrap();
    let full = b.poll_batch(t0).unwrap();
    assert_eq!(full.entries.len(), 1024);
    check_batch(&full, &cfg);
    assert_eq!(b.flush().unwrap().entries, vec![Entry::gone(5000)]);
}

#[test]
fn early_flush_on_size_exact_accounting() {
    let cfg = BatcherConfig {
        max_bytes: 100,
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut b = Batcher::new(cfg).unwrap();
    // Each entry: 83 01 00 58 1e <30 bytes> = 35 bytes; batch overhead 3.
    let e = |h| Entry::coap(h, coap_of_len(30));
    assert_eq!(e(1).encoded_len(), 35);
    b.push(t0, e(1)).unwrap();
    b.push(t0, e(2)).unwrap();
    assert_eq!(b.open_batch_len(), 73);
    // 73 + 35 = 108 > 100: the third entry starts the next batch.
    b.push(t0, e(3)).unwrap();
    let first = b.poll_batch(t0).unwrap();
    assert_eq!(check_batch(&first, &cfg).len(), 73);
    assert_eq!(first.entries, vec![e(1), e(2)]);
    assert_eq!(b.open_batch_len(), 38);

    // Fill to exactly 100 bytes: 38 + 62, an entry of 62 = 1+1+1+2+57.
    let filler = Entry::coap(4, coap_of_len(57));
    assert_eq!(filler.encoded_len(), 62);
    b.push(t0, filler.clone()).unwrap();
    assert_eq!(b.open_batch_len(), 100);
    // Not one more byte fits: due now.
    assert_eq!(b.poll_timeout(), Some(t0));
    let second = b.poll_batch(t0).unwrap();
    assert_eq!(check_batch(&second, &cfg).len(), 100);
    assert_eq!(second.entries, vec![e(3), filler]);
}

#[test]
fn exact_64k_boundary_default() {
    let t0 = Instant::now();
    let cfg = BatcherConfig::default();
    let mut b = Batcher::new(cfg).unwrap();
    // 56 entries of 1,159 bytes + 4 = 64,908 (see tests/batch.rs), then 628 to reach 65,536.
    for h in 100..156 {
        b.push(t0, Entry::coap(h, coap_of_len(1152))).unwrap();
    }
    assert_eq!(b.open_batch_len(), 64_908);
    b.push(t0, Entry::coap(200, coap_of_len(621))).unwrap();
    assert_eq!(b.open_batch_len(), MAX_BATCH_BYTES);
    let batch = b.poll_batch(t0).unwrap();
    assert_eq!(check_batch(&batch, &cfg).len(), 65_536);
}

#[test]
fn full_and_too_large() {
    let cfg = BatcherConfig {
        max_entries: 1,
        max_bytes: 40,
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut b = Batcher::new(cfg).unwrap();
    b.push(t0, get(1)).unwrap();
    b.push(t0, get(2)).unwrap(); // seals [1]
    assert_eq!(b.push(t0, get(3)), Err(RelayError::Full));
    assert_eq!(b.len(), 2, "a refused push changes nothing");
    assert_eq!(b.poll_batch(t0).unwrap().entries, vec![get(1)]);
    b.push(t0, get(3)).unwrap(); // seals [2]
    assert_eq!(b.poll_batch(t0).unwrap().entries, vec![get(2)]);
    assert_eq!(b.poll_batch(t0).unwrap().entries, vec![get(3)]);

    // 3 + (1 + 1 + 1 + 2 + 33) = 41 > 40.
    assert_eq!(
        b.push(t0, Entry::coap(1, coap_of_len(33))),
        Err(RelayError::EntryTooLarge { len: 38, max: 40 })
    );
    b.push(t0, Entry::coap(1, coap_of_len(32))).unwrap(); // 3 + 37 = 40 fits exactly
    assert_eq!(b.flush().unwrap().encode().unwrap().len(), 40);
    let err = b.push(t0, Entry::coap(1, coap_of_len(40))).unwrap_err();
    assert!(matches!(err, RelayError::EntryTooLarge { max: 40, .. }));
    // Invalid entries are refused with their validation error.
    assert!(matches!(
        b.push(t0, Entry::coap(1, vec![0x00])),
        Err(RelayError::MalformedCoap(_))
    ));
    assert!(b.is_empty());
}

/// One step of a simulated driver.
#[derive(Clone, Debug)]
enum Step {
    Push(u64, Entry),
    Wait(u64),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![
            4 => (0u64..5, entry()).prop_map(|(d, e)| Step::Push(d, e)),
            1 => (0u64..40).prop_map(Step::Wait),
        ],
        0..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever the traffic and limits: no entry lost, duplicated or reordered; every batch
    /// within the limits with exact size accounting; no batch held past its window.
    #[test]
    fn batcher_sim(
        steps in steps(),
        max_entries in 1usize..20,
        max_bytes in prop_oneof![Just(65_536usize), 1200usize..4000],
        window_ms in 1u64..30,
    ) {
        let cfg = BatcherConfig { window: Duration::from_millis(window_ms), max_entries, max_bytes };
        let mut b = Batcher::new(cfg).unwrap();
        let t0 = Instant::now();
        let mut now = t0;
        let mut pushed = Vec::new();
        let mut out = Vec::new();
        let drain = |b: &mut Batcher, now: Instant, out: &mut Vec<Entry>| -> Result<(), TestCaseError> {
            while let Some(batch) = b.poll_batch(now) {
                check_batch(&batch, &cfg);
                prop_assert!(!batch.entries.is_empty());
                out.extend(batch.entries);
            }
            if let Some(t) = b.poll_timeout() {
                prop_assert!(t > now, "due batch left behind");
            }
            Ok(())
        };
        for s in steps {
            match s {
                Step::Push(d, e) => {
                    now += Duration::from_millis(d);
                    drain(&mut b, now, &mut out)?;
                    match b.push(now, e.clone()) {
                        Ok(()) => pushed.push(e),
                        Err(RelayError::EntryTooLarge { .. }) => {
                            prop_assert!(e.encoded_len() + 3 > max_bytes);
                        }
                        Err(other) => prop_assert!(false, "unexpected {other:?}"),
                    }
                    drain(&mut b, now, &mut out)?;
                }
                Step::Wait(d) => {
                    now += Duration::from_millis(d);
                    drain(&mut b, now, &mut out)?;
                }
            }
        }
        while let Some(batch) = b.flush() {
            check_batch(&batch, &cfg);
            out.extend(batch.entries);
        }
        prop_assert_eq!(out, pushed);
    }
}

#[test]
fn unknown_entries_batch_too() {
    let t0 = Instant::now();
    let mut b = Batcher::new(BatcherConfig::default()).unwrap();
    let e = Entry {
        handle: 9,
        kind: EntryKind::Unknown {
            kind: 77,
            body: vec![0x40],
        },
    };
    b.push(t0, e.clone()).unwrap();
    assert_eq!(b.flush().unwrap().entries, vec![e]);
}
