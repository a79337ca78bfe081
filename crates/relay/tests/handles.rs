//! Handle table (PROTOCOL.md §4 `handle`): allocation, lookup, release, idle expiry, capacity.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use capillary_relay::{HandleTable, RelayError};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

const S: Duration = Duration::from_secs(1);

#[test]
fn allocate_lookup_release() {
    let t0 = Instant::now();
    let mut t = HandleTable::new(10);
    assert!(t.is_empty());
    let a = t.handle_for(&addr(1), t0).unwrap();
    let b = t.handle_for(&addr(2), t0).unwrap();
    assert_ne!(a, b);
    assert_eq!(t.handle_for(&addr(1), t0).unwrap(), a, "stable while kept");
    assert_eq!(t.get(&addr(2)), Some(b));
    assert_eq!(t.get(&addr(3)), None);
    assert_eq!(t.addr_of(a), Some(&addr(1)));
    assert_eq!(t.addr_of(b), Some(&addr(2)));
    assert_eq!(t.addr_of(12345), None);
    assert_eq!(t.len(), 2);

    assert_eq!(t.release(a), Some(addr(1)));
    assert_eq!(t.release(a), None);
    assert_eq!(t.addr_of(a), None);
    assert_eq!(t.get(&addr(1)), None);
    // A returning device gets a fresh handle, not its old one (no reuse of released handles).
    let a2 = t.handle_for(&addr(1), t0).unwrap();
    assert_ne!(a2, a);
    assert_ne!(a2, b);
}

#[test]
fn capacity_limit() {
    let t0 = Instant::now();
    let mut t = HandleTable::new(3);
    assert_eq!(t.capacity(), 3);
    let hs: Vec<u32> = (1..=3)
        .map(|p| t.handle_for(&addr(p), t0).unwrap())
        .collect();
    assert_eq!(
        t.handle_for(&addr(4), t0),
        Err(RelayError::HandleTableFull { capacity: 3 })
    );
    // Known devices still resolve when full.
    assert_eq!(t.handle_for(&addr(2), t0).unwrap(), hs[1]);
    t.release(hs[0]);
    let h4 = t.handle_for(&addr(4), t0).unwrap();
    assert!(!hs.contains(&h4));
    assert_eq!(t.len(), 3);

    let mut z: HandleTable<SocketAddr> = HandleTable::new(0);
    assert!(matches!(
        z.handle_for(&addr(1), t0),
        Err(RelayError::HandleTableFull { .. })
    ));
}

#[test]
fn idle_expiry_with_fake_clock() {
    let t0 = Instant::now();
    let idle = 60 * S;
    let mut t = HandleTable::new(10);
    let a = t.handle_for(&addr(1), t0).unwrap();
    let b = t.handle_for(&addr(2), t0 + 10 * S).unwrap();
    let c = t.handle_for(&addr(3), t0 + 20 * S).unwrap();
    assert_eq!(t.next_expiry(idle), Some(t0 + 60 * S));

    // Activity refreshes: uplink through handle_for, downlink through touch.
    t.handle_for(&addr(1), t0 + 30 * S).unwrap();
    assert!(t.touch(b, t0 + 40 * S));
    assert!(!t.touch(999, t0));
    assert_eq!(t.next_expiry(idle), Some(t0 + 80 * S));

    assert_eq!(t.expire(t0 + 79 * S, idle), vec![]);
    assert_eq!(
        t.expire(t0 + 80 * S, idle),
        vec![(c, addr(3))],
        "idle for exactly 60 s"
    );
    assert_eq!(
        t.expire(t0 + 200 * S, idle),
        vec![(a, addr(1)), (b, addr(2))]
    );
    assert!(t.is_empty());
    assert_eq!(t.next_expiry(idle), None);
    assert_eq!(t.get(&addr(1)), None);
}
