//! The same behaviour tests, run against every backend.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use capillary_secrets::{Op, Secret, Sqn, K};
use capillary_store::{
    OpKind, StoreError, SubscriberKind, SubscriberStatus, SubscriberStore, MAX_ALLOCATE,
};
use common::{imsi, reauth, sub};

async fn crud<S: SubscriberStore>(s: S) {
    assert!(s.get(&imsi(1)).await.unwrap().is_none());
    let mut g = sub(1);
    g.kind = SubscriberKind::Gateway;
    g.op = OpKind::Op(Op::from_bytes([7; 16]));
    s.add(g).await.unwrap();
    assert!(matches!(s.add(sub(1)).await, Err(StoreError::Exists)));
    let info = s.get(&imsi(1)).await.unwrap().unwrap();
    assert_eq!(info.imsi, imsi(1));
    assert_eq!(info.kind, SubscriberKind::Gateway);
    assert_eq!(info.status, SubscriberStatus::Active);
    assert_eq!(info.ind_len, 5);
    assert_eq!(info.seq_he, 0);
    assert!(!info.has_opc);
    assert_eq!(info.amf.0, [0x80, 0]);

    for n in 2..=25 {
        s.add(sub(n)).await.unwrap();
    }
    assert!(s.get(&imsi(2)).await.unwrap().unwrap().has_opc);
    // Page through in tens.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.list(after.as_ref(), 10).await.unwrap();
        assert!(page.len() <= 10);
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().imsi.clone());
        seen.extend(page.into_iter().map(|i| i.imsi));
    }
    assert_eq!(seen, (1..=25).map(imsi).collect::<Vec<_>>());
    assert!(s.list(None, 0).await.unwrap().is_empty());

    assert!(s
        .set_status(&imsi(3), SubscriberStatus::Barred)
        .await
        .unwrap());
    assert_eq!(
        s.get(&imsi(3)).await.unwrap().unwrap().status,
        SubscriberStatus::Barred
    );
    assert!(!s
        .set_status(&imsi(99), SubscriberStatus::Barred)
        .await
        .unwrap());

    assert!(s.remove(&imsi(3)).await.unwrap());
    assert!(!s.remove(&imsi(3)).await.unwrap());
    assert!(s.get(&imsi(3)).await.unwrap().is_none());
    assert_eq!(s.list(None, 100).await.unwrap().len(), 24);
}

async fn import_is_atomic<S: SubscriberStore>(s: S) {
    assert_eq!(s.import(vec![sub(1), sub(2), sub(3)]).await.unwrap(), 3);
    // Duplicate inside the batch.
    let r = s.import(vec![sub(10), sub(11), sub(10)]).await;
    assert!(matches!(r, Err(StoreError::Exists)), "{r:?}");
    // Duplicate of a stored subscriber.
    let r = s.import(vec![sub(12), sub(2)]).await;
    assert!(matches!(r, Err(StoreError::Exists)), "{r:?}");
    // Invalid entry.
    let mut bad = sub(14);
    bad.ind_len = 40;
    let r = s.import(vec![sub(13), bad]).await;
    assert!(matches!(r, Err(StoreError::InvalidInput(_))), "{r:?}");
    let all: Vec<_> = s
        .list(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.imsi)
        .collect();
    assert_eq!(all, vec![imsi(1), imsi(2), imsi(3)]);
    assert_eq!(s.import(vec![]).await.unwrap(), 0);
}

async fn allocate_lanes<S: SubscriberStore>(s: S) {
    let mut n = sub(1);
    n.sqn = (100 << 5) | 3; // SEQ 100, IND 3
    s.add(n).await.unwrap();

    let m = s.allocate(&imsi(1), 7, 3).await.unwrap();
    assert_eq!(m.imsi, imsi(1));
    assert_eq!(m.ind_len, 5);
    assert_eq!(m.k.expose(), &[1u8; 16]);
    assert!(m.op.is_opc());
    let want: Vec<u64> = (101..=103).map(|seq| (seq << 5) | 7).collect();
    assert_eq!(m.sqns.iter().map(|q| q.value()).collect::<Vec<_>>(), want);
    assert!(
        !format!("{m:?}").contains("01, 01"),
        "Debug must not show K"
    );

    // Lanes: all share SEQ_HE; each lane is strictly increasing and keeps its IND.
    let mut last = [0u64; 32];
    let mut all = HashSet::new();
    for i in 0..200u32 {
        let ind = (i * 7) % 32;
        let m = s.allocate(&imsi(1), ind, 1 + i % 3).await.unwrap();
        for q in m.sqns {
            assert_eq!(q.ind(5), ind);
            assert_eq!(q.value(), (q.seq(5) << 5) | u64::from(ind));
            assert!(q.value() > last[ind as usize]);
            last[ind as usize] = q.value();
            assert!(all.insert(q));
        }
    }
    let info = s.get(&imsi(1)).await.unwrap().unwrap();
    assert_eq!(info.seq_he, 103 + (0..200).map(|i| 1 + i % 3).sum::<u64>());

    // Count zero allocates nothing.
    assert!(s.allocate(&imsi(1), 0, 0).await.unwrap().sqns.is_empty());
    assert_eq!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he, info.seq_he);

    // Errors.
    assert!(matches!(
        s.allocate(&imsi(1), 32, 1).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        s.allocate(&imsi(1), 0, MAX_ALLOCATE + 1).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        s.allocate(&imsi(2), 0, 1).await,
        Err(StoreError::UnknownSubscriber)
    ));
    s.set_status(&imsi(1), SubscriberStatus::Barred)
        .await
        .unwrap();
    assert!(matches!(
        s.allocate(&imsi(1), 0, 1).await,
        Err(StoreError::Barred)
    ));
    assert_eq!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he, info.seq_he);
    s.set_status(&imsi(1), SubscriberStatus::Active)
        .await
        .unwrap();
    let m = s.allocate(&imsi(1), 0, 1).await.unwrap();
    assert_eq!(m.sqns[0].seq(5), info.seq_he + 1);
}

async fn allocate_other_ind_len_and_exhaustion<S: SubscriberStore>(s: S) {
    let mut n = sub(1);
    n.ind_len = 0;
    s.add(n).await.unwrap();
    let m = s.allocate(&imsi(1), 0, 2).await.unwrap();
    assert_eq!(m.sqns, vec![Sqn::new(1).unwrap(), Sqn::new(2).unwrap()]);
    assert!(matches!(
        s.allocate(&imsi(1), 1, 1).await,
        Err(StoreError::InvalidInput(_))
    ));

    let mut n = sub(2);
    n.sqn = Sqn::MAX - 31 - 32; // SEQ = max - 1 with ind_len 5
    s.add(n).await.unwrap();
    let m = s.allocate(&imsi(2), 31, 1).await.unwrap();
    assert_eq!(m.sqns[0].value(), Sqn::MAX);
    assert!(matches!(
        s.allocate(&imsi(2), 0, 1).await,
        Err(StoreError::SqnExhausted)
    ));
    let mut bad = sub(3);
    bad.sqn = 1 << 48;
    assert!(matches!(s.add(bad).await, Err(StoreError::InvalidInput(_))));
}

async fn allocate_batch<S: SubscriberStore>(s: S) {
    s.import(vec![sub(1), sub(2)]).await.unwrap();
    s.set_status(&imsi(2), SubscriberStatus::Barred)
        .await
        .unwrap();
    let out = s
        .allocate_batch(&[
            (imsi(1), 1, 2),
            (imsi(2), 1, 1),
            (imsi(3), 1, 1),
            (imsi(1), 2, 1),
            (imsi(1), 99, 1),
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 5);
    let a = out[0].as_ref().unwrap();
    assert_eq!(
        a.sqns.iter().map(|q| q.value()).collect::<Vec<_>>(),
        vec![(1 << 5) | 1, (2 << 5) | 1]
    );
    assert!(matches!(out[1], Err(StoreError::Barred)));
    assert!(matches!(out[2], Err(StoreError::UnknownSubscriber)));
    assert_eq!(out[3].as_ref().unwrap().sqns[0].value(), (3 << 5) | 2);
    assert!(matches!(out[4], Err(StoreError::InvalidInput(_))));
    assert_eq!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he, 3);
    assert_eq!(s.get(&imsi(2)).await.unwrap().unwrap().seq_he, 0);
}

async fn resync_never_lowers<S: SubscriberStore>(s: S) {
    s.add(sub(1)).await.unwrap();
    s.allocate(&imsi(1), 0, 10).await.unwrap();
    s.resync(&imsi(1), 5).await.unwrap();
    assert_eq!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he, 10);
    s.resync(&imsi(1), 1000).await.unwrap();
    assert_eq!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he, 1000);
    let m = s.allocate(&imsi(1), 4, 1).await.unwrap();
    assert_eq!(m.sqns[0].value(), (1001 << 5) | 4);
    s.resync(&imsi(1), 1001).await.unwrap();
    assert_eq!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he, 1001);
    assert!(matches!(
        s.resync(&imsi(1), 1 << 43).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        s.resync(&imsi(2), 1).await,
        Err(StoreError::UnknownSubscriber)
    ));
}

async fn pseudonyms_and_reauth<S: SubscriberStore>(s: S) {
    s.import(vec![sub(1), sub(2)]).await.unwrap();
    // Pseudonyms.
    s.put_pseudonym("p1", &imsi(1), 100).await.unwrap();
    assert_eq!(s.resolve_pseudonym("p1", 99).await.unwrap(), Some(imsi(1)));
    assert_eq!(s.resolve_pseudonym("p1", 100).await.unwrap(), None);
    assert_eq!(s.resolve_pseudonym("nope", 0).await.unwrap(), None);
    s.put_pseudonym("p1", &imsi(1), 200).await.unwrap(); // renew
    assert_eq!(s.resolve_pseudonym("p1", 150).await.unwrap(), Some(imsi(1)));
    assert!(matches!(
        s.put_pseudonym("p1", &imsi(2), 300).await,
        Err(StoreError::Exists)
    ));
    assert!(matches!(
        s.put_pseudonym("p9", &imsi(9), 300).await,
        Err(StoreError::UnknownSubscriber)
    ));
    s.put_pseudonym("p2", &imsi(2), u64::MAX).await.unwrap();
    assert_eq!(
        s.resolve_pseudonym("p2", u64::MAX - 1).await.unwrap(),
        Some(imsi(2))
    );

    // Re-authentication records.
    s.put_reauth(&reauth("r1", 1, 0, 100)).await.unwrap();
    let r = s.get_reauth("r1", 50).await.unwrap().unwrap();
    assert_eq!(r.imsi, imsi(1));
    assert_eq!(r.counter, 0);
    assert_eq!(r.expires_unix, 100);
    assert_eq!(r.k_aut.expose(), &[2u8; 32]);
    assert!(!format!("{r:?}").contains("2, 2"));
    assert!(s.get_reauth("r1", 100).await.unwrap().is_none());
    assert!(matches!(
        s.put_reauth(&reauth("r1", 2, 0, 100)).await,
        Err(StoreError::Exists)
    ));
    assert!(matches!(
        s.put_reauth(&reauth("r9", 9, 0, 100)).await,
        Err(StoreError::UnknownSubscriber)
    ));
    // Compare-and-set.
    assert!(s.advance_reauth("r1", 0, 1).await.unwrap());
    assert!(!s.advance_reauth("r1", 0, 2).await.unwrap());
    assert!(s.advance_reauth("r1", 1, 5).await.unwrap());
    assert!(matches!(
        s.advance_reauth("r1", 5, 5).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(!s.advance_reauth("missing", 0, 1).await.unwrap());
    assert_eq!(s.get_reauth("r1", 0).await.unwrap().unwrap().counter, 5);
    s.delete_reauth("r1").await.unwrap();
    s.delete_reauth("r1").await.unwrap();
    assert!(s.get_reauth("r1", 0).await.unwrap().is_none());

    // Expiry purge.
    s.put_reauth(&reauth("r2", 1, 0, 10)).await.unwrap();
    s.put_pseudonym("p3", &imsi(1), 10).await.unwrap();
    assert_eq!(s.purge_expired(10).await.unwrap(), 2);
    assert_eq!(s.resolve_pseudonym("p1", 0).await.unwrap(), Some(imsi(1)));

    // Removing a subscriber removes its pseudonyms and records.
    s.put_reauth(&reauth("r3", 1, 0, 1000)).await.unwrap();
    assert!(s.remove(&imsi(1)).await.unwrap());
    assert_eq!(s.resolve_pseudonym("p1", 0).await.unwrap(), None);
    assert!(s.get_reauth("r3", 0).await.unwrap().is_none());
    assert_eq!(s.resolve_pseudonym("p2", 0).await.unwrap(), Some(imsi(2)));
    // The pseudonym is free again.
    s.put_pseudonym("p1", &imsi(2), 100).await.unwrap();
}

async fn concurrent_allocations<S: SubscriberStore>(s: S) {
    let s = Arc::new(s);
    s.add(sub(1)).await.unwrap();
    let tasks: Vec<_> = (0..8u32)
        .map(|t| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..200 {
                    let m = s.allocate(&imsi(1), t, 1).await.unwrap();
                    got.extend(m.sqns);
                }
                got
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in tasks {
        for q in t.await.unwrap() {
            assert!(all.insert(q), "{q:?} issued twice");
        }
    }
    assert_eq!(all.len(), 1600);
    assert_eq!(s.get(&imsi(1)).await.unwrap().unwrap().seq_he, 1600);
}

async fn secrets_round_trip<S: SubscriberStore>(s: S) {
    let mut n = sub(1);
    n.k = K::from_bytes(*b"0123456789abcdef");
    n.op = OpKind::Op(Op::from_bytes(*b"fedcba9876543210"));
    s.add(n).await.unwrap();
    let m = s.allocate(&imsi(1), 0, 1).await.unwrap();
    assert_eq!(m.k.expose(), b"0123456789abcdef");
    match &m.op {
        OpKind::Op(op) => assert_eq!(op.expose(), b"fedcba9876543210"),
        OpKind::Opc(_) => panic!("OP came back as OPc"),
    }
    assert_eq!(format!("{:?}", m.op), "Op(..)");
}

macro_rules! suite {
    ($module:ident, $make:expr, $($name:ident),* $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($make).await;
                }
            )*
        }
    };
}

macro_rules! all_backends {
    ($($name:ident),* $(,)?) => {
        suite!(sqlite, capillary_store::SqliteStore::open_in_memory().unwrap(), $($name),*);
        suite!(memory, capillary_store::MemoryStore::new(), $($name),*);
    };
}

all_backends!(
    crud,
    import_is_atomic,
    allocate_lanes,
    allocate_other_ind_len_and_exhaustion,
    allocate_batch,
    resync_never_lowers,
    pseudonyms_and_reauth,
    concurrent_allocations,
    secrets_round_trip,
);
