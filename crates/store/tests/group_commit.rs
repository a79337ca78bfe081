//! Group commit of the SQLite backend: concurrent write calls share one transaction (one fsync)
//! while each keeps its own result and its own rollback.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use capillary_store::{SqliteStore, StoreError, SubscriberStatus, SubscriberStore};
use common::{imsi, reauth, sub};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 1,000 concurrent allocations over 10 subscribers: every SQN distinct, every one committed
/// (visible to an independent connection), and far fewer commits than calls.
#[test]
fn concurrent_allocations_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hss.db");
    let calls = 1000u64;
    rt().block_on(async {
        let s = Arc::new(SqliteStore::open(&path).unwrap());
        s.import((1..=10).map(sub).collect()).await.unwrap();
        let before = s.commits();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..calls {
            let s = Arc::clone(&s);
            tasks.spawn(async move {
                let m = s
                    .allocate(&imsi(1 + i % 10), (i % 32) as u32, 1)
                    .await
                    .unwrap();
                (1 + i % 10, m.sqns[0])
            });
        }
        let mut seen = HashSet::new();
        while let Some(r) = tasks.join_next().await {
            assert!(seen.insert(r.unwrap()), "an SQN was issued twice");
        }
        assert_eq!(seen.len() as u64, calls);
        let commits = s.commits() - before;
        assert!(commits >= 1);
        assert!(
            commits * 4 <= calls,
            "{commits} commits for {calls} concurrent calls: no grouping"
        );
        // Every answered allocation is in the file, seen by another connection.
        let raw = rusqlite::Connection::open(&path).unwrap();
        let total: i64 = raw
            .query_row("SELECT sum(seq_he) FROM subscriber", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total as u64, calls);
    });
}

/// With and without the group-commit delay of a busy writer, waves of concurrent allocations
/// all succeed with distinct SQNs that are in the file when answered.
#[test]
fn group_linger_keeps_every_result_durable() {
    let run = |linger: std::time::Duration| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hss.db");
        rt().block_on(async {
            let s = Arc::new(SqliteStore::open(&path).unwrap());
            s.set_group_linger(linger);
            s.import((1..=10).map(sub).collect()).await.unwrap();
            let before = s.commits();
            let mut seen = HashSet::new();
            // Waves of 8 concurrent calls, one after the other: the writer is busy from the
            // second wave on.
            for wave in 0..20u64 {
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..8u64 {
                    let s = Arc::clone(&s);
                    let n = 1 + (wave * 8 + i) % 10;
                    tasks.spawn(
                        async move { (n, s.allocate(&imsi(n), 0, 1).await.unwrap().sqns[0]) },
                    );
                }
                while let Some(r) = tasks.join_next().await {
                    assert!(seen.insert(r.unwrap()), "an SQN was issued twice");
                }
                let raw = rusqlite::Connection::open(&path).unwrap();
                let total: i64 = raw
                    .query_row("SELECT sum(seq_he) FROM subscriber", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(total as u64, (wave + 1) * 8, "answered means committed");
            }
            s.commits() - before
        })
    };
    // How much the delay groups depends on scheduling; that it changes no result does not.
    assert!(run(std::time::Duration::ZERO) >= 1);
    assert!(run(std::time::Duration::from_millis(10)) >= 1);
}

/// In one group, a call that fails (unknown, barred, taken identity, database error from a
/// trigger) gets its own error and leaves nothing behind, while the others commit.
#[test]
fn failing_job_rolls_back_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hss.db");
    rt().block_on(async {
        let s = Arc::new(SqliteStore::open(&path).unwrap());
        s.import(vec![sub(1), sub(2), sub(3), sub(4)])
            .await
            .unwrap();
        s.set_status(&imsi(2), SubscriberStatus::Barred)
            .await
            .unwrap();
        s.put_pseudonym("taken", &imsi(1), u64::MAX).await.unwrap();
    });
    // A database error inside a job (after its own reads).
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(&format!(
        "CREATE TRIGGER boom BEFORE INSERT ON reauth WHEN NEW.imsi = '{}'
         BEGIN SELECT RAISE(ABORT, 'boom'); END;",
        imsi(4).as_str()
    ))
    .unwrap();
    rt().block_on(async {
        let s = Arc::new(SqliteStore::open(&path).unwrap());
        for round in 0..20u64 {
            let (i1, i2, i3, i9) = (imsi(1), imsi(2), imsi(3), imsi(9));
            let p = format!("p{round}");
            let r = reauth(&format!("r{round}"), 4, 0, u64::MAX);
            let (a, b, c, d, e, f, g) = tokio::join!(
                s.allocate(&i1, 0, 1),
                s.allocate(&i2, 0, 1),
                s.allocate(&i9, 0, 1),
                s.put_pseudonym("taken", &i3, u64::MAX),
                s.put_pseudonym(&p, &i3, u64::MAX),
                s.put_reauth(&r),
                s.allocate(&i3, 1, 2),
            );
            assert_eq!(a.unwrap().sqns.len(), 1);
            assert!(matches!(b, Err(StoreError::Barred)), "{b:?}");
            assert!(matches!(c, Err(StoreError::UnknownSubscriber)), "{c:?}");
            assert!(matches!(d, Err(StoreError::Exists)), "{d:?}");
            e.unwrap();
            assert!(matches!(f, Err(StoreError::Sqlite(_))), "{f:?}");
            assert_eq!(g.unwrap().sqns.len(), 2);
        }
        assert_eq!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he, 20);
        assert_eq!(s.get(&imsi(2)).await.unwrap().unwrap().seq_he, 0);
        assert_eq!(s.get(&imsi(3)).await.unwrap().unwrap().seq_he, 40);
        assert_eq!(
            s.resolve_pseudonym("taken", 0).await.unwrap(),
            Some(imsi(1))
        );
        assert_eq!(s.resolve_pseudonym("p19", 0).await.unwrap(), Some(imsi(3)));
        assert!(s.get_reauth("r0", 0).await.unwrap().is_none());
    });
}

/// The in-memory database (one connection: reads go through the writer thread) under
/// concurrent reads and writes.
#[test]
fn in_memory_concurrent_reads_and_writes() {
    rt().block_on(async {
        let s = Arc::new(SqliteStore::open_in_memory().unwrap());
        s.add(sub(1)).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let s = Arc::clone(&s);
            tasks.spawn(async move {
                s.allocate(&imsi(1), i % 32, 1).await.unwrap();
                assert!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he >= 1);
                s.authorize_batch(&[(imsi(1), imsi(2))]).await.unwrap();
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert_eq!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he, 200);
        assert!(s.commits() < 201);
    });
}
