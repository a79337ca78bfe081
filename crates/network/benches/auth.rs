//! Criterion benchmarks: the network side's CPU cost of one EAP-AKA' authentication
//! (RFC 9048), piece by piece. Figures and their interpretation: `docs/PERFORMANCE.md`.
//!
//! Run with `cargo bench -p capillary-network --bench auth`.
//!
//! - `vector/generate`: one authentication vector (Milenage f1..f5, AUTN; TS 33.102 §6.3.2).
//! - `eap/full_auth_conversation/*`: a whole full authentication in memory: EAP server, EAP
//!   peer, software USIM and vector generation (NAS-initiated: EAP-Request/Identity,
//!   AKA'-Challenge, EAP-Success).
//! - `eap/peer_side/*`: the peer + USIM half alone, replaying the server's recorded messages.
//! - `eap/full_auth_server_side/*`: the server half alone (EAP server + Milenage vector),
//!   replaying the peer's recorded messages. Replay is exact because the sans-IO server takes
//!   RAND from the driver's vector and its randomness from an injected, seeded RNG.
//! - `radius/*`: `RadiusServer::handle_datagram` + `respond` for one Access-Request.
//! - `store/*`: SQN allocation (`SubscriberStore::allocate`): SQLite on a file (WAL,
//!   `synchronous=FULL`, one fsync'd commit per call), the same on an in-memory SQLite database
//!   (SQL and thread hand-off without the disk), and `MemoryStore`. The SQLite file lives in a
//!   temporary directory (`TMPDIR`), so point `TMPDIR` at the disk the store will use.
//!
//! `*/plain` runs the server with pseudonyms and fast re-authentication off;
//! `*/defaults` with `ServerConfig::default()` (both on: a pseudonym and a re-authentication
//! identity are generated and sent encrypted in AT_ENCR_DATA).
#![allow(missing_docs)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use capillary_aka::vector::{generate_vector, Usim, UsimConfig};
use capillary_aka::Milenage;
use capillary_eap::eap::{self, Code as EapCode};
use capillary_eap::peer::{EapAkaPeer, PeerConfig, PeerEvent};
use capillary_eap::server::{EapAkaServer, ServerConfig, ServerEvent};
use capillary_radius::client::access_request;
use capillary_radius::{
    ClientConfig, Incoming, RadiusServer, Reply, ServerConfig as RadiusConfig, SharedSecret,
};
use capillary_secrets::{Amf, Imsi, Msk, Opc, Rand, Sqn, K};
use capillary_store::{MemoryStore, NewSubscriber, OpKind, SqliteStore, SubscriberStore};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// TS 35.208 Test Set 1 K and OPc.
const K_BYTES: [u8; 16] = [
    0x46, 0x5b, 0x5c, 0xe8, 0xb1, 0x99, 0xb4, 0x9f, 0xaa, 0x5f, 0x0a, 0x2e, 0xe2, 0x38, 0xa6, 0xbc,
];
const OPC_BYTES: [u8; 16] = [
    0xcd, 0x63, 0xcb, 0x71, 0x95, 0x4a, 0x9f, 0x4e, 0x48, 0xa5, 0x99, 0x4e, 0x37, 0xa0, 0x2b, 0xaf,
];
const IMSI: &str = "001010000000001";
const IDENTITY: &str = "6001010000000001@wlan.mnc001.mcc001.3gppnetwork.org";
/// AMF with the separation bit set, as EAP-AKA' requires (RFC 9048 §3.2).
const AMF: Amf = Amf([0x80, 0x00]);

const SERVER_SEED: u64 = 1;
const PEER_SEED: u64 = 2;
const HSS_SEED: u64 = 3;

fn milenage() -> Milenage {
    Milenage::new(&K::from_bytes(K_BYTES), &Opc::from_bytes(OPC_BYTES))
}

/// First vector of a fresh USIM: SEQ 1, IND 0 (TS 33.102 Annex C).
fn first_sqn() -> Sqn {
    Sqn::from_seq_ind(1, 0, 5).expect("SEQ 1 / IND 0 fits in 48 bits")
}

fn new_peer() -> EapAkaPeer {
    EapAkaPeer::new(PeerConfig {
        permanent_identity: IDENTITY.to_owned(),
        network_name: Some("WLAN".to_owned()),
        result_indication: false,
    })
}

fn new_usim() -> Usim {
    Usim::new(
        &K::from_bytes(K_BYTES),
        &Opc::from_bytes(OPC_BYTES),
        UsimConfig::default(),
    )
}

fn plain_cfg() -> ServerConfig {
    ServerConfig {
        pseudonyms: false,
        fast_reauth: false,
        ..ServerConfig::default()
    }
}

/// The messages of one authentication, for replaying either half.
#[derive(Debug, Default)]
struct Transcript {
    /// Everything the peer received, in order (the first is the NAS's EAP-Request/Identity).
    to_peer: Vec<Vec<u8>>,
    /// Everything the server received, in order.
    to_server: Vec<Vec<u8>>,
    /// RAND of the challenge.
    rand: Option<Rand>,
}

/// Both MSKs of a finished authentication.
#[derive(Debug, PartialEq, Eq)]
struct Keys {
    server: [u8; 64],
    peer: [u8; 64],
}

fn msk_bytes(msk: &Msk) -> [u8; 64] {
    *msk.expose_array()
}

/// One full authentication, server ↔ peer in memory. The HSS computes the vector with a fresh
/// Milenage instance (as `capillary_network::auc::Auc::vector` does), RAND from a seeded RNG.
/// Store events (`Persist*`) are dropped: the store is measured separately.
fn converse(cfg: &ServerConfig, mut rec: Option<&mut Transcript>) -> Option<Keys> {
    let mut server = EapAkaServer::new(cfg.clone(), 1);
    let mut peer = new_peer();
    let mut usim = new_usim();
    let mut rs = StdRng::seed_from_u64(SERVER_SEED);
    let mut rp = StdRng::seed_from_u64(PEER_SEED);
    let mut rh = StdRng::seed_from_u64(HSS_SEED);
    let mut to_peer = VecDeque::from([eap::identity_request(0)]);
    let mut to_server: VecDeque<Vec<u8>> = VecDeque::new();
    let (mut server_msk, mut peer_msk) = (None, None);
    loop {
        let mut progressed = false;
        while let Some(b) = to_peer.pop_front() {
            progressed = true;
            peer.handle_request(&b, &mut rp);
            if let Some(t) = rec.as_deref_mut() {
                t.to_peer.push(b);
            }
            while let Some(ev) = peer.poll_event() {
                match ev {
                    PeerEvent::Send(b) => to_server.push_back(b),
                    PeerEvent::RunAka { rand, autn } => {
                        peer.provide_aka(usim.authenticate(&rand, &autn));
                    }
                    PeerEvent::Success { msk, .. } => peer_msk = Some(msk_bytes(&msk)),
                    PeerEvent::Failure { .. } => return None,
                    _ => {}
                }
            }
        }
        while let Some(b) = to_server.pop_front() {
            progressed = true;
            server.handle_response(&b, &mut rs);
            if let Some(t) = rec.as_deref_mut() {
                t.to_server.push(b);
            }
            while let Some(ev) = server.poll_event() {
                match ev {
                    ServerEvent::Send(b) => to_peer.push_back(b),
                    ServerEvent::NeedVector { .. } => {
                        let m = milenage();
                        let mut rand = Rand([0; 16]);
                        rh.fill_bytes(&mut rand.0);
                        if let Some(t) = rec.as_deref_mut() {
                            t.rand = Some(rand);
                        }
                        let v = generate_vector(&m, &rand, &first_sqn(), &AMF);
                        server.provide_vector(v.into(), &mut rs);
                    }
                    ServerEvent::Success { eap, msk, .. } => {
                        server_msk = Some(msk_bytes(&msk));
                        to_peer.push_back(eap);
                    }
                    ServerEvent::Failure { .. } => return None,
                    _ => {}
                }
            }
        }
        if !progressed {
            break;
        }
    }
    Some(Keys {
        server: server_msk?,
        peer: peer_msk?,
    })
}

/// The peer half: a fresh peer and USIM fed the server's recorded messages.
fn peer_replay(t: &Transcript) -> Option<[u8; 64]> {
    let mut peer = new_peer();
    let mut usim = new_usim();
    let mut rp = StdRng::seed_from_u64(PEER_SEED);
    let mut out = None;
    for b in &t.to_peer {
        peer.handle_request(b, &mut rp);
        while let Some(ev) = peer.poll_event() {
            match ev {
                PeerEvent::Send(b) => {
                    black_box(b);
                }
                PeerEvent::RunAka { rand, autn } => {
                    peer.provide_aka(usim.authenticate(&rand, &autn));
                }
                PeerEvent::Success { msk, .. } => out = Some(msk_bytes(&msk)),
                PeerEvent::Failure { .. } => return None,
                _ => {}
            }
        }
    }
    out
}

/// The server half: a fresh server fed the peer's recorded messages; the vector is computed
/// (fresh Milenage, f1..f5) from the recorded RAND, as the AuC would.
fn server_replay(cfg: &ServerConfig, t: &Transcript) -> Option<[u8; 64]> {
    let rand = t.rand?;
    let mut server = EapAkaServer::new(cfg.clone(), 1);
    let mut rs = StdRng::seed_from_u64(SERVER_SEED);
    let mut out = None;
    for b in &t.to_server {
        server.handle_response(b, &mut rs);
        while let Some(ev) = server.poll_event() {
            match ev {
                ServerEvent::Send(b) => {
                    black_box(b);
                }
                ServerEvent::NeedVector { .. } => {
                    let m = milenage();
                    let v = generate_vector(&m, &rand, &first_sqn(), &AMF);
                    server.provide_vector(v.into(), &mut rs);
                }
                ServerEvent::Success { eap, msk, .. } => {
                    black_box(eap);
                    out = Some(msk_bytes(&msk));
                }
                ServerEvent::Failure { .. } => return None,
                other => {
                    black_box(other);
                }
            }
        }
    }
    out
}

/// Records one authentication and checks that both replays reach the same MSK.
fn checked_transcript(cfg: &ServerConfig) -> Transcript {
    let mut t = Transcript::default();
    let keys = converse(cfg, Some(&mut t)).expect("in-memory authentication succeeds");
    assert_eq!(keys.server, keys.peer, "server and peer MSK agree");
    assert_eq!(peer_replay(&t), Some(keys.peer), "peer replay is exact");
    assert_eq!(
        server_replay(cfg, &t),
        Some(keys.server),
        "server replay is exact"
    );
    t
}

fn bench_vector(c: &mut Criterion) {
    let m = milenage();
    let rand = Rand([0x23; 16]);
    let sqn = first_sqn();
    c.bench_function("vector/generate", |b| {
        b.iter(|| generate_vector(black_box(&m), black_box(&rand), black_box(&sqn), &AMF))
    });
}

fn bench_eap(c: &mut Criterion) {
    let mut g = c.benchmark_group("eap");
    for (name, cfg) in [
        ("plain", plain_cfg()),
        ("defaults", ServerConfig::default()),
    ] {
        let t = checked_transcript(&cfg);
        g.bench_function(format!("full_auth_conversation/{name}"), |b| {
            b.iter(|| converse(black_box(&cfg), None))
        });
        g.bench_function(format!("peer_side/{name}"), |b| {
            b.iter(|| peer_replay(black_box(&t)))
        });
        g.bench_function(format!("full_auth_server_side/{name}"), |b| {
            b.iter(|| server_replay(black_box(&cfg), black_box(&t)))
        });
    }
    g.finish();
}

fn bench_radius(c: &mut Criterion) {
    const SECRET: &[u8] = b"bench-shared-secret";
    const REQUESTS: usize = 1024;
    let nas = Ipv4Addr::new(192, 0, 2, 10);
    let from = SocketAddr::new(IpAddr::V4(nas), 50_000);
    let mut server = RadiusServer::new(RadiusConfig {
        clients: vec![ClientConfig {
            name: "nas".to_owned(),
            addr: IpAddr::V4(nas),
            prefix_len: 32,
            secret: SharedSecret::new(SECRET),
            trusted: true,
        }],
        duplicate_window: Duration::from_secs(5),
    });
    // A 100-byte EAP-Response (type 50, EAP-AKA') and a 100-byte EAP-Request for the reply.
    let eap_in = eap::build(EapCode::Response, 7, 50, &[0x5a; 95]);
    let eap_out = eap::build(EapCode::Request, 8, 50, &[0xa5; 95]);
    let eap_success = eap::success(8);
    assert_eq!((eap_in.len(), eap_out.len()), (100, 100));
    let state = [0x42u8; 16];
    let msk = Msk::from_bytes([0x77; 64]);
    // Distinct Request Authenticators, so none is taken for a retransmission (RFC 5080 §2.2.2).
    let mut rng = StdRng::seed_from_u64(4);
    let requests: Vec<Vec<u8>> = (0..REQUESTS)
        .map(|_| {
            let mut ra = [0u8; 16];
            rng.fill_bytes(&mut ra);
            access_request(
                SECRET,
                7,
                ra,
                Some(IDENTITY.as_bytes()),
                &eap_in,
                Some(&state),
                &[],
            )
            .expect("Access-Request encodes")
        })
        .collect();
    let now = Instant::now();

    let mut g = c.benchmark_group("radius");
    // Shared by both benches: the request answered last is never the next one sent.
    let mut i = 0usize;
    for accept in [false, true] {
        let name = if accept {
            "access_request_roundtrip_accept"
        } else {
            "access_request_roundtrip"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let bytes = &requests[i % REQUESTS];
                i = i.wrapping_add(1);
                let Incoming::Request(req) = server.handle_datagram(now, from, black_box(bytes))
                else {
                    panic!("Access-Request not accepted");
                };
                let reply = if accept {
                    Reply::Accept {
                        eap: &eap_success,
                        msk: Some(&msk),
                        user_name: Some(IDENTITY.as_bytes()),
                    }
                } else {
                    Reply::Challenge {
                        eap: &eap_out,
                        state: &state,
                        session_timeout: Some(30),
                    }
                };
                server
                    .respond(now, &req.key, reply, [0x12, 0x34])
                    .expect("reply encodes")
            })
        });
    }
    g.finish();
}

fn subscriber() -> NewSubscriber {
    NewSubscriber::new(
        Imsi::new(IMSI).expect("valid IMSI"),
        K::from_bytes(K_BYTES),
        OpKind::Opc(Opc::from_bytes(OPC_BYTES)),
        AMF,
    )
}

fn bench_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let imsi = Imsi::new(IMSI).expect("valid IMSI");
    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite = SqliteStore::open(&dir.path().join("bench.db")).expect("open SQLite store");
    // Same SQL and blocking-pool hand-off as `sqlite`, without a file: no fsync.
    let sqlite_mem = SqliteStore::open_in_memory().expect("open in-memory SQLite store");
    let memory = MemoryStore::new();
    rt.block_on(async {
        sqlite.add(subscriber()).await.expect("add to SQLite");
        sqlite_mem.add(subscriber()).await.expect("add to SQLite");
        memory.add(subscriber()).await.expect("add to memory");
    });

    let mut g = c.benchmark_group("store");
    g.bench_function("allocate_memory", |b| {
        b.iter(|| rt.block_on(memory.allocate(&imsi, 0, 1)).expect("allocate"))
    });
    g.bench_function("allocate_sqlite_in_memory", |b| {
        b.iter(|| {
            rt.block_on(sqlite_mem.allocate(&imsi, 0, 1))
                .expect("allocate")
        })
    });
    // One fsync'd commit per iteration: few samples suffice.
    g.sample_size(20);
    g.bench_function("allocate_sqlite", |b| {
        b.iter(|| rt.block_on(sqlite.allocate(&imsi, 0, 1)).expect("allocate"))
    });
    g.throughput(Throughput::Elements(16));
    g.bench_function("allocate_sqlite_batch16", |b| {
        b.iter(|| {
            let mat = rt
                .block_on(sqlite.allocate(&imsi, 0, 16))
                .expect("allocate");
            assert_eq!(mat.sqns.len(), 16);
            mat
        })
    });
    g.finish();
}

criterion_group!(benches, bench_vector, bench_eap, bench_radius, bench_store);
criterion_main!(benches);
