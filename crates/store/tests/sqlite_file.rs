//! SQLite-only behaviour: files, reopening, several handles and processes, corrupt rows.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use capillary_store::{SqliteStore, StoreError, SubscriberStore};
use common::{imsi, reauth, sub};
use proptest::prelude::*;
use rusqlite::types::Value;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn reopen_keeps_data_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hss.db");
    rt().block_on(async {
        let s = SqliteStore::open(&path).unwrap();
        s.add(sub(1)).await.unwrap();
        s.allocate(&imsi(1), 2, 5).await.unwrap();
        s.put_pseudonym("p", &imsi(1), 50).await.unwrap();
    });
    let raw = rusqlite::Connection::open(&path).unwrap();
    let mode: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let v: u32 = raw
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SqliteStore::SCHEMA_VERSION);
    drop(raw);
    rt().block_on(async {
        let s = SqliteStore::open(&path).unwrap();
        let info = s.get(&imsi(1)).await.unwrap().unwrap();
        assert_eq!(info.seq_he, 5);
        assert!(info.created.is_some() && info.updated.is_some());
        assert_eq!(s.resolve_pseudonym("p", 1).await.unwrap(), Some(imsi(1)));
        let m = s.allocate(&imsi(1), 2, 1).await.unwrap();
        assert_eq!(m.sqns[0].value(), (6 << 5) | 2);
    });
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hss.db");
    drop(SqliteStore::open(&path).unwrap());
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.pragma_update(None, "user_version", 99).unwrap();
    drop(raw);
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn file_store_concurrent_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hss.db");
    rt().block_on(async {
        let s = Arc::new(SqliteStore::open(&path).unwrap());
        s.add(sub(1)).await.unwrap();
        let tasks: Vec<_> = (0..8u32)
            .map(|t| {
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let mut v = Vec::new();
                    for _ in 0..200 {
                        v.extend(s.allocate(&imsi(1), t, 1).await.unwrap().sqns);
                    }
                    v
                })
            })
            .collect();
        let mut all = HashSet::new();
        for t in tasks {
            for q in t.await.unwrap() {
                assert!(all.insert(q));
            }
        }
        assert_eq!(all.len(), 1600);
    });
}

/// Two independent handles (two connections, as two processes would have) on one file.
#[test]
fn two_handles_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hss.db");
    rt().block_on(async {
        let s = SqliteStore::open(&path).unwrap();
        s.add(sub(1)).await.unwrap();
    });
    let threads: Vec<_> = (0..2u32)
        .map(|lane| {
            let path = path.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let s = SqliteStore::open(&path).unwrap();
                    let mut v = Vec::new();
                    for i in 0..200u32 {
                        let m = s.allocate(&imsi(1), lane, 1 + i % 2).await.unwrap();
                        v.extend(m.sqns);
                    }
                    v
                })
            })
        })
        .collect();
    let mut all = HashSet::new();
    let mut seqs = HashSet::new();
    for t in threads {
        for q in t.join().unwrap() {
            assert!(all.insert(q));
            assert!(seqs.insert(q.seq(5)), "SEQ reused across handles");
        }
    }
    assert_eq!(all.len(), 600);
    rt().block_on(async {
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he, 600);
    });
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        (0i64..70).prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Real),
        ".{0,20}".prop_map(Value::Text),
        prop::sample::select(vec!["active", "barred", "device", "gateway", "x"])
            .prop_map(|s| Value::Text(s.to_owned())),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
        prop::collection::vec(any::<u8>(), 16..=16).prop_map(Value::Blob),
        prop::collection::vec(any::<u8>(), 2..=2).prop_map(Value::Blob),
        prop::collection::vec(any::<u8>(), 32..=32).prop_map(Value::Blob),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Arbitrary column contents never panic a read or an allocation: they decode, or give a
    /// typed error (Corrupt for reads).
    #[test]
    fn corrupt_rows_are_typed_errors(
        sub_cols in prop::collection::vec(any_value(), 8),
        reauth_cols in prop::collection::vec(any_value(), 5),
        junk_imsi in any_value(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hss.db");
        drop(SqliteStore::open(&path).unwrap());
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.pragma_update(None, "ignore_check_constraints", "ON").unwrap();
        let ok = raw.execute(
            "INSERT INTO subscriber (imsi, k, opc, op, amf, ind_len, seq_he, kind, status)
             VALUES ('001010000000001', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params_from_iter(sub_cols.iter()),
        ).is_ok();
        let _ = raw.execute(
            "INSERT INTO reauth (reauth_id, imsi, k_encr, k_aut, k_re, counter, expires)
             VALUES ('r', '001010000000001', ?1, ?2, ?3, ?4, ?5)",
            rusqlite::params_from_iter(reauth_cols.iter()),
        );
        let _ = raw.execute(
            "INSERT INTO pseudonym (pseudonym, imsi, expires) VALUES ('p', ?1, 10)",
            [&junk_imsi],
        );
        drop(raw);
        rt().block_on(async {
            let s = SqliteStore::open(&path).unwrap();
            match s.get(&imsi(1)).await {
                Ok(i) => prop_assert!(i.is_some() || !ok),
                Err(e) => prop_assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}"),
            }
            match s.list(None, 10).await {
                Ok(_) => {}
                Err(e) => prop_assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}"),
            }
            let _ = s.allocate(&imsi(1), 0, 1).await;
            let _ = s.allocate_batch(&[(imsi(1), 1, 2)]).await;
            let _ = s.resync(&imsi(1), 3).await;
            match s.get_reauth("r", 0).await {
                Ok(_) => {}
                Err(e) => prop_assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}"),
            }
            match s.resolve_pseudonym("p", 0).await {
                Ok(_) => {}
                Err(e) => prop_assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}"),
            }
            let _ = s.put_reauth(&reauth("r", 1, 0, 5)).await;
            let _ = s.put_pseudonym("p", &imsi(1), 5).await;
            Ok(())
        })?;
    }

    /// Status and kind texts parse only from their exact stored forms.
    #[test]
    fn kind_and_status_parse(text in ".{0,12}") {
        use capillary_store::{SubscriberKind, SubscriberStatus};
        if let Ok(k) = text.parse::<SubscriberKind>() {
            prop_assert_eq!(k.as_str(), text.as_str());
        }
        if let Ok(st) = text.parse::<SubscriberStatus>() {
            prop_assert_eq!(st.as_str(), text.as_str());
        }
    }
}

/// The database holds every K and OPc: a new file is readable by its owner only.
#[cfg(unix)]
#[test]
fn new_database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("subscribers.db");
    let _store = capillary_store::SqliteStore::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
}
