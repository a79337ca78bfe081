//! The same behaviour tests, run against every backend.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use capillary_secrets::Imsi;
use capillary_secrets::{Op, Secret, Sqn, K};
use capillary_store::{
    AuditEvent, AuditRecord, Authorization, NewSubscriber, OpKind, StoreError, SubscriberKind,
    SubscriberStatus, SubscriberStore, MAX_ALLOCATE, MAX_AUDIT_DETAIL,
};
use common::{imsi, reauth, sub};

fn gw(n: u64) -> NewSubscriber {
    let mut g = sub(n);
    g.kind = SubscriberKind::Gateway;
    g
}

fn rec(t: u64, event: AuditEvent, subject: u64, gateway: Option<u64>, detail: &str) -> AuditRecord {
    AuditRecord {
        unix_time: t,
        event,
        subject: imsi(subject),
        gateway: gateway.map(imsi),
        detail: detail.to_owned(),
    }
}

fn imsis(ns: &[u64]) -> Vec<Imsi> {
    ns.iter().copied().map(imsi).collect()
}

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

/// docs/PROTOCOL.md §6: bindings name the gateways a device may attach through.
async fn gateway_bindings<S: SubscriberStore>(s: S) {
    // Gateways sort below (1) and above (99) the devices (10..=14).
    s.import(vec![gw(1), gw(99)]).await.unwrap();
    for n in 10..=14 {
        s.add(sub(n)).await.unwrap();
    }
    s.bind_gateway(&imsi(10), &imsi(1)).await.unwrap();
    s.bind_gateway(&imsi(10), &imsi(99)).await.unwrap();
    s.bind_gateway(&imsi(10), &imsi(1)).await.unwrap(); // idempotent
    for n in 11..=14 {
        s.bind_gateway(&imsi(n), &imsi(1)).await.unwrap();
    }
    s.bind_gateway(&imsi(12), &imsi(99)).await.unwrap();

    assert_eq!(s.gateways_of(&imsi(10)).await.unwrap(), imsis(&[1, 99]));
    assert_eq!(s.gateways_of(&imsi(11)).await.unwrap(), imsis(&[1]));
    assert!(s.gateways_of(&imsi(1)).await.unwrap().is_empty());
    assert!(s.gateways_of(&imsi(50)).await.unwrap().is_empty());

    assert_eq!(
        s.devices_of(&imsi(1), None, 100).await.unwrap(),
        imsis(&[10, 11, 12, 13, 14])
    );
    assert_eq!(
        s.devices_of(&imsi(99), None, 100).await.unwrap(),
        imsis(&[10, 12])
    );
    // Paging.
    let mut seen = Vec::new();
    let mut after: Option<Imsi> = None;
    loop {
        let page = s.devices_of(&imsi(1), after.as_ref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last().cloned() else {
            break;
        };
        seen.extend(page);
        after = Some(last);
    }
    assert_eq!(seen, imsis(&[10, 11, 12, 13, 14]));
    assert_eq!(
        s.devices_of(&imsi(1), Some(&imsi(12)), 100).await.unwrap(),
        imsis(&[13, 14])
    );
    assert!(s.devices_of(&imsi(1), None, 0).await.unwrap().is_empty());
    assert!(s.devices_of(&imsi(10), None, 10).await.unwrap().is_empty());
    assert!(s.devices_of(&imsi(50), None, 10).await.unwrap().is_empty());

    // Errors: unknown IMSIs, wrong kinds; nothing is bound.
    assert!(matches!(
        s.bind_gateway(&imsi(10), &imsi(50)).await,
        Err(StoreError::UnknownSubscriber)
    ));
    assert!(matches!(
        s.bind_gateway(&imsi(50), &imsi(1)).await,
        Err(StoreError::UnknownSubscriber)
    ));
    for (d, g) in [(10, 11), (1, 99), (1, 10), (10, 10), (1, 1)] {
        let r = s.bind_gateway(&imsi(d), &imsi(g)).await;
        assert!(
            matches!(r, Err(StoreError::InvalidInput(_))),
            "{d}->{g}: {r:?}"
        );
    }
    assert_eq!(s.gateways_of(&imsi(10)).await.unwrap(), imsis(&[1, 99]));
    assert!(s.gateways_of(&imsi(1)).await.unwrap().is_empty());

    // Unbind.
    assert!(s.unbind_gateway(&imsi(10), &imsi(99)).await.unwrap());
    assert!(!s.unbind_gateway(&imsi(10), &imsi(99)).await.unwrap());
    assert!(!s.unbind_gateway(&imsi(50), &imsi(1)).await.unwrap());
    assert_eq!(s.gateways_of(&imsi(10)).await.unwrap(), imsis(&[1]));
    assert_eq!(
        s.devices_of(&imsi(99), None, 10).await.unwrap(),
        imsis(&[12])
    );

    // Barring changes no binding.
    s.set_status(&imsi(1), SubscriberStatus::Barred)
        .await
        .unwrap();
    assert_eq!(s.devices_of(&imsi(1), None, 100).await.unwrap().len(), 5);

    // Removing a device removes its bindings; removing a gateway removes all bindings to it.
    assert!(s.remove(&imsi(12)).await.unwrap());
    assert!(s.devices_of(&imsi(99), None, 10).await.unwrap().is_empty());
    assert_eq!(
        s.devices_of(&imsi(1), None, 100).await.unwrap(),
        imsis(&[10, 11, 13, 14])
    );
    assert!(s.remove(&imsi(1)).await.unwrap());
    for n in [10, 11, 13, 14] {
        assert!(s.gateways_of(&imsi(n)).await.unwrap().is_empty());
    }
    // A re-added subscriber starts with no bindings.
    s.add(gw(1)).await.unwrap();
    s.add(sub(12)).await.unwrap();
    assert!(s.devices_of(&imsi(1), None, 100).await.unwrap().is_empty());
    assert!(s.gateways_of(&imsi(12)).await.unwrap().is_empty());
}

fn auth(
    device: Option<SubscriberStatus>,
    gateway: Option<SubscriberStatus>,
    bound: bool,
) -> Authorization {
    Authorization {
        device_status: device,
        gateway_status: gateway,
        bound,
    }
}

/// docs/PROTOCOL.md §6: every batch entry is checked; barring and revoking act at once.
async fn authorize_batch_mix<S: SubscriberStore>(s: S) {
    use SubscriberStatus::{Active, Barred};
    s.import(vec![gw(1), gw(2), sub(10), sub(11), sub(13)])
        .await
        .unwrap();
    s.bind_gateway(&imsi(10), &imsi(1)).await.unwrap();
    s.bind_gateway(&imsi(10), &imsi(2)).await.unwrap();
    s.bind_gateway(&imsi(11), &imsi(1)).await.unwrap();
    s.set_status(&imsi(11), Barred).await.unwrap();
    s.set_status(&imsi(2), Barred).await.unwrap();

    assert!(s.authorize_batch(&[]).await.unwrap().is_empty());
    let pairs = [
        (10, 1),  // allowed
        (10, 2),  // gateway revoked, still bound
        (11, 1),  // device barred
        (12, 1),  // unknown device
        (10, 3),  // unknown gateway
        (13, 1),  // not bound
        (1, 1),   // a gateway is not a device
        (10, 13), // a device is not a gateway
        (10, 1),  // repeated
    ];
    let pairs: Vec<_> = pairs.iter().map(|(d, g)| (imsi(*d), imsi(*g))).collect();
    let out = s.authorize_batch(&pairs).await.unwrap();
    let want = vec![
        auth(Some(Active), Some(Active), true),
        auth(Some(Active), Some(Barred), true),
        auth(Some(Barred), Some(Active), true),
        auth(None, Some(Active), false),
        auth(Some(Active), None, false),
        auth(Some(Active), Some(Active), false),
        auth(None, Some(Active), false),
        auth(Some(Active), None, false),
        auth(Some(Active), Some(Active), true),
    ];
    assert_eq!(out, want);
    let verdicts: Vec<_> = out.iter().map(Authorization::denial).collect();
    assert_eq!(
        verdicts,
        vec![
            None,
            Some(AuditEvent::GatewayRevoked),
            Some(AuditEvent::DeviceBarred),
            Some(AuditEvent::UnknownDevice),
            Some(AuditEvent::UnknownGateway),
            Some(AuditEvent::NotBoundToGateway),
            Some(AuditEvent::UnknownDevice),
            Some(AuditEvent::UnknownGateway),
            None,
        ]
    );
    assert!(out[0].is_allowed() && !out[1].is_allowed());

    // Revoking the gateway takes effect at the next batch; so does lifting it, unbinding,
    // barring the device and removing it.
    let one = [(imsi(10), imsi(1))];
    s.set_status(&imsi(1), Barred).await.unwrap();
    let r = s.authorize_batch(&one).await.unwrap()[0];
    assert_eq!(r.denial(), Some(AuditEvent::GatewayRevoked));
    s.set_status(&imsi(1), Active).await.unwrap();
    assert!(s.authorize_batch(&one).await.unwrap()[0].is_allowed());
    s.set_status(&imsi(10), Barred).await.unwrap();
    let r = s.authorize_batch(&one).await.unwrap()[0];
    assert_eq!(r.denial(), Some(AuditEvent::DeviceBarred));
    s.set_status(&imsi(10), Active).await.unwrap();
    s.unbind_gateway(&imsi(10), &imsi(1)).await.unwrap();
    let r = s.authorize_batch(&one).await.unwrap()[0];
    assert_eq!(r, auth(Some(Active), Some(Active), false));
    s.bind_gateway(&imsi(10), &imsi(1)).await.unwrap();
    s.remove(&imsi(1)).await.unwrap();
    let r = s.authorize_batch(&one).await.unwrap()[0];
    assert_eq!(r, auth(Some(Active), None, false));

    // A large batch keeps its order.
    s.add(gw(1)).await.unwrap();
    for n in 100..300 {
        s.add(sub(n)).await.unwrap();
        if n % 3 == 0 {
            s.bind_gateway(&imsi(n), &imsi(1)).await.unwrap();
        }
    }
    let pairs: Vec<_> = (100..300).map(|n| (imsi(n), imsi(1))).collect();
    let out = s.authorize_batch(&pairs).await.unwrap();
    assert_eq!(out.len(), 200);
    for (n, a) in (100..300u64).zip(&out) {
        assert_eq!(a.bound, n % 3 == 0, "{n}");
        assert_eq!(a.is_allowed(), n % 3 == 0, "{n}");
    }
}

/// The denial order of [`Authorization::denial`].
#[test]
fn authorization_denial_order() {
    use SubscriberStatus::{Active, Barred};
    let sts = [None, Some(Active), Some(Barred)];
    for d in sts {
        for g in sts {
            for bound in [false, true] {
                let a = auth(d, g, bound);
                let want = match (d, g, bound) {
                    (None, _, _) => Some(AuditEvent::UnknownDevice),
                    (Some(Barred), _, _) => Some(AuditEvent::DeviceBarred),
                    (_, None, _) => Some(AuditEvent::UnknownGateway),
                    (_, Some(Barred), _) => Some(AuditEvent::GatewayRevoked),
                    (_, _, false) => Some(AuditEvent::NotBoundToGateway),
                    _ => None,
                };
                assert_eq!(a.denial(), want, "{a:?}");
            }
        }
    }
}

#[test]
fn audit_event_text_round_trip() {
    let mut texts = HashSet::new();
    for e in AuditEvent::ALL {
        assert_eq!(e.as_str().parse::<AuditEvent>().unwrap(), e);
        assert_eq!(e.to_string(), e.as_str());
        assert!(texts.insert(e.as_str()));
    }
    assert!(matches!(
        "Auth_Succeeded".parse::<AuditEvent>(),
        Err(StoreError::InvalidInput(_))
    ));
    assert!("".parse::<AuditEvent>().is_err());
}

async fn audit_log<S: SubscriberStore>(s: S) {
    assert!(s.audit_log(None, 0, 100).await.unwrap().is_empty());
    s.import(vec![gw(1), sub(10), sub(11)]).await.unwrap();
    let recs = vec![
        rec(1_700_000_000, AuditEvent::AuthSucceeded, 10, Some(1), "ok"),
        rec(
            1_700_000_001,
            AuditEvent::NotBoundToGateway,
            11,
            Some(1),
            "",
        ),
        rec(
            1_700_000_002,
            AuditEvent::AuthFailed,
            10,
            None,
            "MAC mismatch",
        ),
        rec(
            0,
            AuditEvent::UnknownDevice,
            12,
            Some(1),
            "unicode ✓ 'quoted'",
        ),
        rec(
            i64::MAX as u64,
            AuditEvent::GatewayRevoked,
            10,
            Some(1),
            &"x".repeat(MAX_AUDIT_DETAIL),
        ),
    ];
    for r in &recs {
        s.audit(r.clone()).await.unwrap();
    }
    let all = s.audit_log(None, 0, 100).await.unwrap();
    assert_eq!(all.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), recs);
    assert!(all[0].0 > 0);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");

    // Paging by id.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = s.audit_log(None, after, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some((last, _)) = page.last() else { break };
        after = *last;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert!(s.audit_log(None, 0, 0).await.unwrap().is_empty());
    assert!(s.audit_log(None, u64::MAX, 10).await.unwrap().is_empty());
    assert!(s
        .audit_log(None, all.last().unwrap().0, 10)
        .await
        .unwrap()
        .is_empty());

    // By subject.
    let of10 = s.audit_log(Some(&imsi(10)), 0, 100).await.unwrap();
    assert_eq!(of10, vec![all[0].clone(), all[2].clone(), all[4].clone()]);
    let of10_later = s.audit_log(Some(&imsi(10)), all[0].0, 1).await.unwrap();
    assert_eq!(of10_later, vec![all[2].clone()]);
    assert!(s.audit_log(Some(&imsi(1)), 0, 10).await.unwrap().is_empty());

    // Bad records are refused and append nothing.
    let long = rec(
        5,
        AuditEvent::AuthFailed,
        10,
        None,
        &"y".repeat(MAX_AUDIT_DETAIL + 1),
    );
    assert!(matches!(
        s.audit(long).await,
        Err(StoreError::InvalidInput(_))
    ));
    let late = rec(u64::MAX, AuditEvent::AuthFailed, 10, None, "");
    assert!(matches!(
        s.audit(late).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(s.audit_log(None, 0, 100).await.unwrap(), all);

    // Records outlive their subject; ids are not reused.
    assert!(s.remove(&imsi(10)).await.unwrap());
    assert_eq!(s.audit_log(Some(&imsi(10)), 0, 100).await.unwrap(), of10);
    s.audit(rec(9, AuditEvent::DeviceBarred, 11, None, "after"))
        .await
        .unwrap();
    let tail = s.audit_log(None, all.last().unwrap().0, 10).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert!(tail[0].0 > all.last().unwrap().0);
}

/// `audit_batch`: one round trip, in order, all or nothing.
async fn audit_batch<S: SubscriberStore>(s: S) {
    s.import(vec![gw(1), sub(10), sub(11)]).await.unwrap();
    s.audit(rec(1, AuditEvent::AuthFailed, 11, None, "before"))
        .await
        .unwrap();
    let batch: Vec<AuditRecord> = (0..50)
        .map(|i| {
            rec(
                1_700_000_000 + i,
                AuditEvent::AuthSucceeded,
                10 + (i % 2),
                Some(1),
                "authenticated",
            )
        })
        .collect();
    s.audit_batch(batch.clone()).await.unwrap();
    let all = s.audit_log(None, 0, 100).await.unwrap();
    assert_eq!(all.len(), 51);
    assert_eq!(
        all[1..].iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
        batch
    );
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    s.audit_batch(Vec::new()).await.unwrap();

    // One bad record refuses the whole batch: nothing of it is appended.
    let mut bad = batch[..3].to_vec();
    bad.push(rec(
        5,
        AuditEvent::AuthFailed,
        10,
        None,
        &"y".repeat(MAX_AUDIT_DETAIL + 1),
    ));
    assert!(matches!(
        s.audit_batch(bad).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(s.audit_log(None, 0, 100).await.unwrap(), all);
}

type ErrCheck = fn(&StoreError) -> bool;

async fn import_with_bindings<S: SubscriberStore>(s: S) {
    s.add(gw(1)).await.unwrap();
    // Bindings may name stored subscribers or ones of the same batch, in any order.
    let n = s
        .import_with_bindings(
            vec![sub(10), sub(11), gw(2)],
            vec![
                (imsi(10), imsi(1)),
                (imsi(10), imsi(2)),
                (imsi(11), imsi(2)),
                (imsi(11), imsi(2)),
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(s.gateways_of(&imsi(10)).await.unwrap(), imsis(&[1, 2]));
    assert_eq!(s.gateways_of(&imsi(11)).await.unwrap(), imsis(&[2]));
    assert_eq!(
        s.devices_of(&imsi(2), None, 10).await.unwrap(),
        imsis(&[10, 11])
    );

    // A binding to an existing device from a new gateway.
    s.import_with_bindings(vec![gw(3)], vec![(imsi(11), imsi(3))])
        .await
        .unwrap();
    assert_eq!(s.gateways_of(&imsi(11)).await.unwrap(), imsis(&[2, 3]));

    // All or nothing: a bad binding imports no subscriber and binds nothing.
    let bad_sets: Vec<(Vec<(u64, u64)>, ErrCheck)> = vec![
        (vec![(20, 21), (20, 50)], |e| {
            matches!(e, StoreError::UnknownSubscriber)
        }),
        (vec![(20, 21), (50, 21)], |e| {
            matches!(e, StoreError::UnknownSubscriber)
        }),
        (vec![(20, 21), (20, 10)], |e| {
            matches!(e, StoreError::InvalidInput(_))
        }),
        (vec![(21, 1)], |e| matches!(e, StoreError::InvalidInput(_))),
        (vec![(10, 21), (1, 21)], |e| {
            matches!(e, StoreError::InvalidInput(_))
        }),
    ];
    for (bindings, want) in bad_sets {
        let b: Vec<_> = bindings.iter().map(|(d, g)| (imsi(*d), imsi(*g))).collect();
        let r = s.import_with_bindings(vec![sub(20), gw(21)], b).await;
        assert!(r.as_ref().is_err_and(want), "{bindings:?}: {r:?}");
        assert!(s.get(&imsi(20)).await.unwrap().is_none());
        assert!(s.get(&imsi(21)).await.unwrap().is_none());
        assert_eq!(s.gateways_of(&imsi(10)).await.unwrap(), imsis(&[1, 2]));
    }
    // A duplicate subscriber binds nothing either.
    let r = s
        .import_with_bindings(vec![sub(20), sub(10)], vec![(imsi(20), imsi(1))])
        .await;
    assert!(matches!(r, Err(StoreError::Exists)), "{r:?}");
    assert!(s.devices_of(&imsi(1), None, 10).await.unwrap() == imsis(&[10]));
    // No subscribers, only bindings.
    assert_eq!(
        s.import_with_bindings(vec![], vec![(imsi(11), imsi(1))])
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.gateways_of(&imsi(11)).await.unwrap(), imsis(&[1, 2, 3]));
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
    gateway_bindings,
    authorize_batch_mix,
    audit_log,
    audit_batch,
    import_with_bindings,
);
