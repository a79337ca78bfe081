//! SQLite-only behaviour: files, reopening, several handles and processes, corrupt rows.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use capillary_store::{
    AuditEvent, AuditRecord, SqliteStore, StoreError, SubscriberKind, SubscriberStore,
};
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

fn gw(n: u64) -> capillary_store::NewSubscriber {
    let mut g = sub(n);
    g.kind = SubscriberKind::Gateway;
    g
}

fn count(raw: &rusqlite::Connection, sql: &str, n: u64) -> i64 {
    raw.query_row(sql, [imsi(n).as_str()], |r| r.get(0))
        .unwrap()
}

/// `remove` deletes the subscriber's pseudonyms, re-authentication records and bindings in
/// both directions, and keeps its audit records; with foreign keys on, a raw delete cascades
/// the same way.
#[test]
fn remove_deletes_everything_but_audit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hss.db");
    rt().block_on(async {
        let s = SqliteStore::open(&path).unwrap();
        s.import(vec![sub(1), gw(2), sub(3), gw(4)]).await.unwrap();
        s.put_pseudonym("p", &imsi(1), 1000).await.unwrap();
        s.put_reauth(&reauth("r", 1, 0, 1000)).await.unwrap();
        s.bind_gateway(&imsi(1), &imsi(2)).await.unwrap();
        s.bind_gateway(&imsi(3), &imsi(2)).await.unwrap();
        s.bind_gateway(&imsi(3), &imsi(4)).await.unwrap();
        s.audit(AuditRecord {
            unix_time: 1,
            event: AuditEvent::AuthSucceeded,
            subject: imsi(1),
            gateway: Some(imsi(2)),
            detail: "first attach".into(),
        })
        .await
        .unwrap();
        assert!(s.remove(&imsi(1)).await.unwrap());
        assert!(s.remove(&imsi(2)).await.unwrap());
    });
    let raw = rusqlite::Connection::open(&path).unwrap();
    for n in [1, 2] {
        assert_eq!(
            count(&raw, "SELECT count(*) FROM subscriber WHERE imsi = ?1", n),
            0
        );
        assert_eq!(
            count(&raw, "SELECT count(*) FROM pseudonym WHERE imsi = ?1", n),
            0
        );
        assert_eq!(
            count(&raw, "SELECT count(*) FROM reauth WHERE imsi = ?1", n),
            0
        );
        assert_eq!(
            count(
                &raw,
                "SELECT count(*) FROM gateway_binding WHERE device = ?1 OR gateway = ?1",
                n
            ),
            0
        );
    }
    assert_eq!(
        count(&raw, "SELECT count(*) FROM audit WHERE subject = ?1", 1),
        1
    );
    assert_eq!(
        count(
            &raw,
            "SELECT count(*) FROM gateway_binding WHERE device = ?1",
            3
        ),
        1
    );
    // ON DELETE CASCADE (PROTOCOL §6 bindings belong to the profile).
    raw.pragma_update(None, "foreign_keys", "ON").unwrap();
    raw.execute("DELETE FROM subscriber WHERE imsi = ?1", [imsi(4).as_str()])
        .unwrap();
    assert_eq!(
        count(
            &raw,
            "SELECT count(*) FROM gateway_binding WHERE device = ?1",
            3
        ),
        0
    );
    // A binding to a missing subscriber is refused by the schema itself.
    assert!(raw
        .execute(
            "INSERT INTO gateway_binding (device, gateway) VALUES (?1, ?2)",
            [imsi(3).as_str(), imsi(9).as_str()],
        )
        .is_err());
    // The audit log is append-only in the schema too.
    assert!(raw.execute("DELETE FROM audit", []).is_err());
    assert!(raw.execute("UPDATE audit SET detail = 'x'", []).is_err());
    assert_eq!(
        count(&raw, "SELECT count(*) FROM audit WHERE subject = ?1", 1),
        1
    );
}

/// `allocate_batch` is one transaction: a database failure in any request undoes the
/// allocations of the requests before it.
#[test]
fn allocate_batch_is_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hss.db");
    let s = SqliteStore::open(&path).unwrap();
    rt().block_on(async {
        s.import(vec![sub(1), sub(2), sub(3)]).await.unwrap();
    });
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(&format!(
        "CREATE TRIGGER boom BEFORE UPDATE ON subscriber WHEN NEW.imsi = '{}'
         BEGIN SELECT RAISE(ABORT, 'boom'); END;",
        imsi(2).as_str()
    ))
    .unwrap();
    rt().block_on(async {
        let r = s
            .allocate_batch(&[(imsi(1), 0, 5), (imsi(3), 1, 2), (imsi(2), 0, 1)])
            .await;
        assert!(matches!(r, Err(StoreError::Sqlite(_))), "{r:?}");
        for n in 1..=3 {
            assert_eq!(s.get(&imsi(n)).await.unwrap().unwrap().seq_he, 0, "{n}");
        }
    });
    raw.execute_batch("DROP TRIGGER boom").unwrap();
    rt().block_on(async {
        let r = s
            .allocate_batch(&[(imsi(1), 0, 5), (imsi(3), 1, 2), (imsi(2), 0, 1)])
            .await
            .unwrap();
        assert!(r.iter().all(Result::is_ok));
        assert_eq!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he, 5);
    });
}

/// A request that fails after its `UPDATE` ran (a corrupt K found in the returned row)
/// allocates nothing, while the other requests of the batch commit.
#[test]
fn allocate_batch_failed_request_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hss.db");
    let s = SqliteStore::open(&path).unwrap();
    rt().block_on(async {
        s.import(vec![sub(1), sub(2)]).await.unwrap();
    });
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.pragma_update(None, "ignore_check_constraints", "ON")
        .unwrap();
    raw.execute(
        "UPDATE subscriber SET k = x'0102' WHERE imsi = ?1",
        [imsi(2).as_str()],
    )
    .unwrap();
    rt().block_on(async {
        let out = s
            .allocate_batch(&[(imsi(1), 0, 1), (imsi(2), 0, 3), (imsi(1), 1, 1)])
            .await
            .unwrap();
        assert!(out[0].is_ok() && out[2].is_ok());
        assert!(
            matches!(out[1], Err(StoreError::Corrupt(_))),
            "{:?}",
            out[1]
        );
        assert_eq!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he, 2);
        assert_eq!(s.get(&imsi(2)).await.unwrap().unwrap().seq_he, 0);
        assert!(matches!(
            s.allocate(&imsi(2), 0, 1).await,
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(s.get(&imsi(2)).await.unwrap().unwrap().seq_he, 0);
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

    /// Arbitrary contents of the v2 tables (bindings, audit) never panic a read: they decode
    /// or give StoreError::Corrupt.
    #[test]
    fn corrupt_bindings_and_audit_are_typed_errors(
        binding in prop::collection::vec(any_value(), 2),
        audit_cols in prop::collection::vec(any_value(), 5),
        status in any_value(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hss.db");
        rt().block_on(async {
            let s = SqliteStore::open(&path).unwrap();
            s.import(vec![sub(1), gw(2)]).await.unwrap();
            s.bind_gateway(&imsi(1), &imsi(2)).await.unwrap();
        });
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.pragma_update(None, "ignore_check_constraints", "ON").unwrap();
        let _ = raw.execute(
            "INSERT INTO gateway_binding (device, gateway) VALUES (?1, ?2)",
            rusqlite::params_from_iter(binding.iter()),
        );
        let _ = raw.execute(
            "UPDATE gateway_binding SET device = ?1 WHERE device = '001010000000001'",
            [&binding[0]],
        );
        let _ = raw.execute(
            "INSERT INTO audit (unix_time, event, subject, gateway, detail)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params_from_iter(audit_cols.iter()),
        );
        let _ = raw.execute("UPDATE subscriber SET status = ?1", [&status]);
        drop(raw);
        rt().block_on(async {
            let s = SqliteStore::open(&path).unwrap();
            let typed = |e: &StoreError| matches!(e, StoreError::Corrupt(_));
            if let Err(e) = s.gateways_of(&imsi(1)).await {
                prop_assert!(typed(&e), "{e:?}");
            }
            if let Err(e) = s.devices_of(&imsi(2), None, 10).await {
                prop_assert!(typed(&e), "{e:?}");
            }
            if let Err(e) = s.audit_log(None, 0, 10).await {
                prop_assert!(typed(&e), "{e:?}");
            }
            if let Err(e) = s.authorize_batch(&[(imsi(1), imsi(2))]).await {
                prop_assert!(typed(&e), "{e:?}");
            }
            let _ = s.bind_gateway(&imsi(1), &imsi(2)).await;
            let _ = s.remove(&imsi(1)).await;
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
