//! Crash safety of SQN allocation (TS 33.102 Annex C.3: an SQN must never be issued twice).
//!
//! The test binary re-invokes itself (`current_exe`) with `SQN_WRITER_DB` set: in that mode the
//! `sqn_writer_child` test allocates SQNs in a loop and prints each one only after `allocate`
//! returned. The parent kills the writers with SIGKILL at random moments, several rounds on the
//! same file, and checks that no printed SQN was ever issued twice and that allocation after
//! reopening continues above everything printed.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use capillary_store::{SqliteStore, SubscriberStore};
use common::{imsi, sub};

const ENV_DB: &str = "SQN_WRITER_DB";
const IND_LEN: u8 = 5;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writer mode; a no-op in a normal test run.
#[test]
fn sqn_writer_child() {
    let Ok(db) = std::env::var(ENV_DB) else {
        return;
    };
    runtime().block_on(async {
        let s = SqliteStore::open(Path::new(&db)).unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0u32.. {
            let m = s.allocate(&imsi(1), i % 32, 1 + i % 3).await.unwrap();
            // Only after allocate returned (committed, fsync'd) do we claim the SQNs.
            let mut text = String::new();
            for q in &m.sqns {
                text.push_str(&format!("SQN {}\n", q.value()));
            }
            out.write_all(text.as_bytes()).unwrap();
            out.flush().unwrap();
        }
    });
}

struct XorShift(u64);
impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn sigkill_never_reuses_an_sqn() {
    if std::env::var_os(ENV_DB).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hss.db");
    runtime().block_on(async {
        SqliteStore::open(&path).unwrap().add(sub(1)).await.unwrap();
    });
    let exe = std::env::current_exe().unwrap();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash test seed {seed}");
    let mut rng = XorShift(seed | 1);
    let mut printed = HashSet::new();
    let mut max_printed = 0u64;

    for round in 0..6 {
        // Two writer processes at once: crash safety and cross-process exclusion together.
        let mut children = Vec::new();
        for _ in 0..2 {
            let mut child = Command::new(&exe)
                .args([
                    "sqn_writer_child",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ENV_DB, &path)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (started_tx, started_rx) = mpsc::channel();
            let reader = std::thread::spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut got = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    // A line cut short by the kill has no newline and claims nothing.
                    let Some(v) = line.strip_suffix('\n').and_then(|l| l.strip_prefix("SQN "))
                    else {
                        continue;
                    };
                    got.push(v.parse::<u64>().unwrap());
                    if got.len() == 1 {
                        let _ = started_tx.send(());
                    }
                }
                got
            });
            children.push((child, started_rx, reader));
        }
        for (_, started, _) in &children {
            started
                .recv_timeout(Duration::from_secs(120))
                .expect("writer printed nothing");
        }
        let mut results = Vec::new();
        for (mut child, _, reader) in children {
            std::thread::sleep(Duration::from_millis(5 + rng.below(250)));
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert_eq!(
                status.signal(),
                Some(9),
                "writer died on its own: {status:?}"
            );
            results.push(reader.join().unwrap());
        }
        let mut n = 0;
        for got in results {
            for v in got {
                assert!(printed.insert(v), "round {round}: SQN {v:#x} issued twice");
                max_printed = max_printed.max(v);
                n += 1;
            }
        }
        assert!(n > 0);
        // What is on disk covers everything that was printed.
        runtime().block_on(async {
            let s = SqliteStore::open(&path).unwrap();
            let seq_he = s.get(&imsi(1)).await.unwrap().unwrap().seq_he;
            assert!(
                seq_he >= max_printed >> IND_LEN,
                "round {round}: SEQ_HE went back"
            );
        });
    }

    runtime().block_on(async {
        let s = SqliteStore::open(&path).unwrap();
        for ind in [0, 31] {
            let m = s.allocate(&imsi(1), ind, 1).await.unwrap();
            let next = m.sqns[0].value();
            assert!(next > max_printed, "{next:#x} <= {max_printed:#x}");
            assert!(!printed.contains(&next));
        }
    });
    eprintln!("crash test: {} SQNs printed over 6 rounds", printed.len());
}
