//! End-to-end tests of the network side in one process: a real UDP RADIUS socket
//! (`run_with_store`), a small RADIUS NAS written here (RFC 2865 §3, RFC 3579 §3.1–3.2) and the
//! EAP-AKA' peer of `capillary-eap` driven by a software USIM (TS 35.208 Test Set 1 keys).
//!
//! Every test starts its own core on `127.0.0.1:0`, so they run in parallel.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use capillary_aka::vector::{Usim, UsimConfig, UsimOutcome};
use capillary_eap::eap;
use capillary_eap::peer::{EapAkaPeer, PeerConfig, PeerEvent, PeerFailure};
use capillary_network::config::{CoreConfig, IdentityStore, RadiusClientConfig};
use capillary_network::CoreHandle;
use capillary_radius::client;
use capillary_radius::{Code, Packet};
use capillary_secrets::{Amf, Imsi, Opc, Secret, K};
use capillary_store::{
    MemoryStore, NewSubscriber, OpKind, SqliteStore, SubscriberStatus, SubscriberStore,
};
use rand::rngs::OsRng;
use rand::RngCore;
use tokio::net::UdpSocket;

/// TS 35.208 §4.3 Test Set 1.
const K_HEX: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OPC_HEX: &str = "cd63cb71954a9f4e48a5994e37a02baf";
const REALM: &str = "wlan.mnc001.mcc001.3gppnetwork.org";
const SECRET: &str = "e2e-shared-secret";
const IMSI: &str = "001010000000001";

/// How long the NAS waits for a reply before retransmitting (RFC 5080 §2.2.1), and how often.
const RETRY_AFTER: Duration = Duration::from_millis(1000);
const TRIES: usize = 3;
/// "No reply" means none within this long.
const SILENCE: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Set-up

fn k() -> K {
    K::from_hex(K_HEX).unwrap()
}

fn opc() -> Opc {
    Opc::from_hex(OPC_HEX).unwrap()
}

fn imsi(s: &str) -> Imsi {
    Imsi::new(s).unwrap()
}

/// A subscriber with Test Set 1 keys, SQN 0 and AMF 0000: the AuC must set the separation bit
/// itself (RFC 9048 §3.1), or the peer refuses the challenge.
fn subscriber(imsi_text: &str) -> NewSubscriber {
    NewSubscriber::new(imsi(imsi_text), k(), OpKind::Opc(opc()), Amf([0, 0]))
}

fn usim() -> Usim {
    Usim::new(&k(), &opc(), UsimConfig::default())
}

fn peer(imsi_text: &str) -> EapAkaPeer {
    EapAkaPeer::new(PeerConfig {
        permanent_identity: format!("6{imsi_text}@{REALM}"),
        network_name: Some("WLAN".into()),
        result_indication: false,
    })
}

struct Core {
    handle: CoreHandle,
    store: Arc<dyn SubscriberStore>,
    _dir: tempfile::TempDir,
}

impl Core {
    fn addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    async fn seq_he(&self, imsi_text: &str) -> u64 {
        self.store
            .get(&imsi(imsi_text))
            .await
            .unwrap()
            .expect("subscriber exists")
            .seq_he
    }
}

async fn start_with(
    store: Arc<dyn SubscriberStore>,
    trusted: bool,
    dir: tempfile::TempDir,
) -> Core {
    start_with_identities(store, trusted, dir, IdentityStore::Store).await
}

async fn start_with_identities(
    store: Arc<dyn SubscriberStore>,
    trusted: bool,
    dir: tempfile::TempDir,
    identity_store: IdentityStore,
) -> Core {
    let mut cfg = CoreConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..CoreConfig::default()
    };
    cfg.radius.listen = "127.0.0.1:0".parse().unwrap();
    cfg.radius.client = vec![RadiusClientConfig {
        name: "e2e-nas".into(),
        address: "127.0.0.1".into(),
        secret: SECRET.into(),
        trusted,
    }];
    cfg.eap.identity_store = identity_store;
    let handle = capillary_network::run_with_store(cfg, store.clone())
        .await
        .unwrap();
    assert_ne!(handle.local_addr.port(), 0);
    Core {
        handle,
        store,
        _dir: dir,
    }
}

/// A core over a [`MemoryStore`] holding `imsis`.
async fn start(imsis: &[&str], trusted: bool) -> Core {
    let store = MemoryStore::new();
    for i in imsis {
        store.add(subscriber(i)).await.unwrap();
    }
    start_with(Arc::new(store), trusted, tempfile::tempdir().unwrap()).await
}

// ---------------------------------------------------------------------------------------------
// The NAS

/// One Access-Request as sent.
#[derive(Clone)]
struct Sent {
    bytes: Vec<u8>,
    authenticator: [u8; 16],
}

impl Sent {
    fn identifier(&self) -> u8 {
        self.bytes[1]
    }
}

/// A minimal RADIUS client (NAS) on its own UDP port.
struct Nas {
    sock: UdpSocket,
    server: SocketAddr,
    secret: Vec<u8>,
    next_id: u8,
}

impl Nas {
    async fn new(server: SocketAddr, secret: &str) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut id = [0u8; 1];
        OsRng.fill_bytes(&mut id);
        Self {
            sock,
            server,
            secret: secret.as_bytes().to_vec(),
            next_id: id[0],
        }
    }

    /// A signed Access-Request with a fresh Identifier and a random Request Authenticator.
    fn build(&mut self, user_name: Option<&[u8]>, eap: &[u8], state: Option<&[u8]>) -> Sent {
        let mut authenticator = [0u8; 16];
        OsRng.fill_bytes(&mut authenticator);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let bytes =
            client::access_request(&self.secret, id, authenticator, user_name, eap, state, &[])
                .unwrap();
        Sent {
            bytes,
            authenticator,
        }
    }

    async fn send_raw(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.server).await.unwrap();
    }

    /// The next datagram from the server with Identifier `id` within `wait`, if any.
    async fn recv_for(&self, id: u8, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 4096];
        loop {
            let got = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf)).await;
            match got {
                Err(_) => return None,
                Ok(r) => {
                    let (n, from) = r.unwrap();
                    if from == self.server && n >= 2 && buf[1] == id {
                        return Some(buf[..n].to_vec());
                    }
                }
            }
        }
    }

    /// Sends `sent`, retransmitting the identical bytes on timeout; panics without a reply.
    async fn transact(&self, sent: &Sent) -> Vec<u8> {
        for _ in 0..TRIES {
            self.send_raw(&sent.bytes).await;
            if let Some(r) = self.recv_for(sent.identifier(), RETRY_AFTER).await {
                return r;
            }
        }
        panic!("no reply after {TRIES} tries");
    }

    /// Whether anything at all arrives within [`SILENCE`].
    async fn silent(&self) -> bool {
        let mut buf = vec![0u8; 4096];
        tokio::time::timeout(SILENCE, self.sock.recv_from(&mut buf))
            .await
            .is_err()
    }

    fn verify(&self, sent: &Sent, raw: &[u8]) -> Packet {
        client::verify_response(&self.secret, &sent.authenticator, raw)
            .expect("reply has valid Response Authenticator and Message-Authenticator")
    }
}

// ---------------------------------------------------------------------------------------------
// The supplicant: EAP-AKA' peer + USIM

#[derive(Default)]
struct PeerOut {
    send: Option<Vec<u8>>,
    msk: Option<Vec<u8>>,
    failure: Option<PeerFailure>,
    aka_runs: usize,
    sync_failures: usize,
}

/// Drains the peer's events, answering `RunAka` with the USIM.
fn drain(peer: &mut EapAkaPeer, usim: &mut Usim, out: &mut PeerOut) {
    out.send = None;
    while let Some(ev) = peer.poll_event() {
        match ev {
            PeerEvent::Send(b) => out.send = Some(b),
            PeerEvent::RunAka { rand, autn } => {
                out.aka_runs += 1;
                let r = usim.authenticate(&rand, &autn);
                if matches!(r, Ok(UsimOutcome::SyncFailure { .. })) {
                    out.sync_failures += 1;
                }
                peer.provide_aka(r);
            }
            PeerEvent::Success { msk, .. } => out.msk = Some(msk.expose().to_vec()),
            PeerEvent::Failure { reason } => out.failure = Some(reason),
            other => panic!("unexpected peer event {other:?}"),
        }
    }
}

/// The result of one authentication.
struct Run {
    /// Code of the final reply.
    code: Code,
    /// The final reply.
    reply: Packet,
    /// EAP packet in the final reply.
    final_eap: Option<Vec<u8>>,
    /// MSK from MS-MPPE-Recv-Key ‖ MS-MPPE-Send-Key.
    radius_msk: Option<Vec<u8>>,
    /// MSK the peer derived (on EAP-Success).
    peer_msk: Option<Vec<u8>>,
    peer_failure: Option<PeerFailure>,
    aka_runs: usize,
    sync_failures: usize,
    /// Number of Access-Request / reply rounds.
    rounds: usize,
}

impl Run {
    fn eap_code(&self) -> Option<eap::Code> {
        self.final_eap
            .as_deref()
            .map(|e| eap::Packet::parse(e).unwrap().code)
    }

    /// Access-Accept with EAP-Success, the peer succeeded, and both sides hold the same MSK.
    fn assert_accepted_with_msk(&self) -> Vec<u8> {
        assert_eq!(self.code, Code::Accept);
        assert_eq!(self.eap_code(), Some(eap::Code::Success));
        assert!(self.peer_failure.is_none(), "{:?}", self.peer_failure);
        let peer = self.peer_msk.clone().expect("peer saw EAP-Success");
        let radius = self.radius_msk.clone().expect("MPPE keys present");
        assert_eq!(peer.len(), 64);
        assert_eq!(radius, peer, "MSK from MPPE keys equals the peer's MSK");
        peer
    }
}

/// Runs one authentication: EAP-Request/Identity to the peer (locally, as a NAS does), then
/// Access-Request / Access-Challenge rounds until Accept or Reject. With `retransmit`, every
/// Access-Request is sent a second time (identical bytes) after its reply, and the second
/// reply must be byte-identical.
async fn authenticate(
    nas: &mut Nas,
    peer: &mut EapAkaPeer,
    usim: &mut Usim,
    retransmit: bool,
) -> Run {
    let mut out = PeerOut::default();
    peer.handle_request(&eap::identity_request(1), &mut OsRng);
    drain(peer, usim, &mut out);
    let first = out.send.clone().expect("identity response");
    let user_name = first[5..].to_vec();
    let mut state: Option<Vec<u8>> = None;
    for round in 1..=10 {
        let to_send = out
            .send
            .take()
            .expect("the peer has an EAP-Response to send");
        let sent = nas.build(Some(&user_name), &to_send, state.as_deref());
        let raw = nas.transact(&sent).await;
        if retransmit {
            nas.send_raw(&sent.bytes).await;
            let again = nas
                .recv_for(sent.identifier(), RETRY_AFTER)
                .await
                .expect("reply resent");
            assert_eq!(
                again, raw,
                "retransmission answered with the identical reply"
            );
        }
        let reply = nas.verify(&sent, &raw);
        let eap_in = client::eap_message(&reply);
        match reply.code {
            Code::Challenge => {
                state = Some(client::state(&reply).expect("Access-Challenge carries State"));
                peer.handle_request(&eap_in.expect("Access-Challenge carries EAP"), &mut OsRng);
                drain(peer, usim, &mut out);
            }
            Code::Accept | Code::Reject => {
                if let Some(e) = &eap_in {
                    peer.handle_request(e, &mut OsRng);
                    drain(peer, usim, &mut out);
                }
                let radius_msk = client::msk_from_mppe(&nas.secret, &sent.authenticator, &reply)
                    .unwrap()
                    .map(|m| m.to_vec());
                return Run {
                    code: reply.code,
                    final_eap: eap_in,
                    reply,
                    radius_msk,
                    peer_msk: out.msk,
                    peer_failure: out.failure,
                    aka_runs: out.aka_runs,
                    sync_failures: out.sync_failures,
                    rounds: round,
                };
            }
            other => panic!("unexpected reply code {other:?}"),
        }
    }
    panic!("no final answer after 10 rounds");
}

/// Test 1 and 10: one full authentication consumes exactly one SQN and yields the same MSK on
/// both sides, delivered in MS-MPPE keys to a trusted client.
async fn full_auth_scenario(core: &Core) {
    assert_eq!(core.seq_he(IMSI).await, 0);
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let (mut p, mut u) = (peer(IMSI), usim());
    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    run.assert_accepted_with_msk();
    assert_eq!(run.aka_runs, 1);
    assert_eq!(run.sync_failures, 0);
    // Identity → Challenge, Challenge response → Accept.
    assert_eq!(run.rounds, 2);
    assert_eq!(core.seq_he(IMSI).await, 1, "exactly one SQN consumed");
    let st = core.handle.radius_stats();
    assert_eq!(
        (st.requests, st.challenges, st.accepts, st.rejects),
        (2, 1, 1, 0)
    );
    assert_eq!(st.discarded(), 0);
    assert!(p.reauth_id().is_some_and(|r| r.starts_with('8')));
    assert!(p.pseudonym().is_some_and(|r| r.starts_with('7')));
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread")]
async fn full_authentication_memory_store() {
    let core = start(&[IMSI], true).await;
    full_auth_scenario(&core).await;
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn full_authentication_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("subscribers.db");
    let store = SqliteStore::open(&db).unwrap();
    store.add(subscriber(IMSI)).await.unwrap();
    let core = start_with(Arc::new(store), true, dir).await;
    full_auth_scenario(&core).await;
    core.handle.stop().await;
    // The allocation is durable: a second handle on the file sees it.
    let reopened = SqliteStore::open(&db).unwrap();
    assert_eq!(reopened.get(&imsi(IMSI)).await.unwrap().unwrap().seq_he, 1);
    assert!(core.store.get(&imsi(IMSI)).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_client_gets_no_mppe_keys() {
    let core = start(&[IMSI], false).await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let (mut p, mut u) = (peer(IMSI), usim());
    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    assert_eq!(run.code, Code::Accept);
    assert_eq!(run.eap_code(), Some(eap::Code::Success));
    assert!(run.peer_msk.is_some(), "the peer authenticated");
    assert!(client::mppe_recv_key(&run.reply).is_none());
    assert!(client::mppe_send_key(&run.reply).is_none());
    assert!(run.radius_msk.is_none());
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_client_withholding_is_counted() {
    let core = start(&[IMSI], false).await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let (mut p, mut u) = (peer(IMSI), usim());
    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    assert_eq!(run.code, Code::Accept);
    assert!(run.radius_msk.is_none());
    assert_eq!(core.handle.radius_stats().mppe_withheld, 1);
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retransmissions_get_identical_replies_and_change_nothing() {
    let core = start(&[IMSI], true).await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let (mut p, mut u) = (peer(IMSI), usim());
    let run = authenticate(&mut nas, &mut p, &mut u, true).await;
    run.assert_accepted_with_msk();
    assert_eq!(run.rounds, 2);
    assert_eq!(
        core.seq_he(IMSI).await,
        1,
        "the duplicate did not consume a second SQN"
    );
    let st = core.handle.radius_stats();
    assert_eq!(st.duplicates, 2, "both duplicates answered from the cache");
    assert_eq!(st.requests, 2, "duplicates never reached the EAP layer");
    assert_eq!((st.challenges, st.accepts), (1, 1));
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_of_first_request_does_not_advance_the_session() {
    // The duplicate of the Identity request is answered with the cached Challenge (same State,
    // same RAND); the session continues from that Challenge.
    let core = start(&[IMSI], true).await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let (mut p, mut u) = (peer(IMSI), usim());
    let mut out = PeerOut::default();
    p.handle_request(&eap::identity_request(1), &mut OsRng);
    drain(&mut p, &mut u, &mut out);
    let id_resp = out.send.take().unwrap();
    let first = nas.build(None, &id_resp, None);
    let r1 = nas.transact(&first).await;
    for _ in 0..3 {
        nas.send_raw(&first.bytes).await;
        let again = nas.recv_for(first.identifier(), RETRY_AFTER).await.unwrap();
        assert_eq!(again, r1);
    }
    assert_eq!(core.seq_he(IMSI).await, 1);
    let c = nas.verify(&first, &r1);
    assert_eq!(c.code, Code::Challenge);
    p.handle_request(&client::eap_message(&c).unwrap(), &mut OsRng);
    drain(&mut p, &mut u, &mut out);
    let second = nas.build(
        None,
        &out.send.take().unwrap(),
        client::state(&c).as_deref(),
    );
    let r2 = nas.transact(&second).await;
    let a = nas.verify(&second, &r2);
    assert_eq!(a.code, Code::Accept);
    p.handle_request(&client::eap_message(&a).unwrap(), &mut OsRng);
    drain(&mut p, &mut u, &mut out);
    let msk = client::msk_from_mppe(&nas.secret, &second.authenticator, &a)
        .unwrap()
        .unwrap();
    assert_eq!(Some(msk.to_vec()), out.msk);
    assert_eq!(core.seq_he(IMSI).await, 1);
    assert_eq!(core.handle.radius_stats().duplicates, 3);
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_secret_and_tampering_are_silently_discarded() {
    let core = start(&[IMSI], true).await;
    let mut p = peer(IMSI);
    let mut out = PeerOut::default();
    p.handle_request(&eap::identity_request(1), &mut OsRng);
    drain(&mut p, &mut usim(), &mut out);
    let id_resp = out.send.take().unwrap();

    // Wrong shared secret.
    let mut bad = Nas::new(core.addr(), "not-the-secret").await;
    let sent = bad.build(None, &id_resp, None);
    bad.send_raw(&sent.bytes).await;
    assert!(bad.silent().await, "no reply to a wrong secret");
    assert_eq!(core.handle.radius_stats().discarded_bad_authenticator, 1);

    // Right secret, but a byte of the identity (inside EAP-Message) flipped in transit.
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let sent = nas.build(None, &id_resp, None);
    let realm = REALM.as_bytes();
    let at = sent
        .bytes
        .windows(realm.len())
        .position(|w| w == realm)
        .unwrap();
    let mut tampered = sent.bytes.clone();
    tampered[at] ^= 0x01;
    nas.send_raw(&tampered).await;
    assert!(nas.silent().await, "no reply to a tampered packet");
    // Request Authenticator flipped (covered by the Message-Authenticator, RFC 3579 §3.2).
    let mut tampered = sent.bytes.clone();
    tampered[4] ^= 0x80;
    nas.send_raw(&tampered).await;
    assert!(nas.silent().await, "no reply to a tampered authenticator");

    let st = core.handle.radius_stats();
    assert_eq!(st.discarded_bad_authenticator, 3);
    assert_eq!(st.discarded(), 3);
    assert_eq!(st.received, 3);
    assert_eq!(st.requests, 0);
    assert_eq!(core.seq_he(IMSI).await, 0);

    // The untampered original still works: the silence above was the discard, not a dead server.
    let raw = nas.transact(&sent).await;
    assert_eq!(nas.verify(&sent, &raw).code, Code::Challenge);
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_state_is_rejected() {
    let core = start(&[IMSI], true).await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let mut p = peer(IMSI);
    let mut out = PeerOut::default();
    p.handle_request(&eap::identity_request(1), &mut OsRng);
    drain(&mut p, &mut usim(), &mut out);
    let id_resp = out.send.take().unwrap();
    let mut state = [0u8; 16];
    OsRng.fill_bytes(&mut state);
    // A well-formed but never issued State, and one of the wrong length.
    for st in [&state[..], &b"short"[..]] {
        let sent = nas.build(None, &id_resp, Some(st));
        let raw = nas.transact(&sent).await;
        let r = nas.verify(&sent, &raw);
        assert_eq!(r.code, Code::Reject);
    }
    assert_eq!(core.seq_he(IMSI).await, 0);
    let stats = core.handle.radius_stats();
    assert_eq!((stats.rejects, stats.challenges), (2, 0));
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn state_from_a_finished_session_is_rejected() {
    let core = start(&[IMSI], true).await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let (mut p, mut u) = (peer(IMSI), usim());
    let mut out = PeerOut::default();
    p.handle_request(&eap::identity_request(1), &mut OsRng);
    drain(&mut p, &mut u, &mut out);
    let first = nas.build(None, &out.send.take().unwrap(), None);
    let c = nas.verify(&first, &nas.transact(&first).await);
    let state = client::state(&c).unwrap();
    p.handle_request(&client::eap_message(&c).unwrap(), &mut OsRng);
    drain(&mut p, &mut u, &mut out);
    let resp = out.send.take().unwrap();
    let second = nas.build(None, &resp, Some(&state));
    assert_eq!(
        nas.verify(&second, &nas.transact(&second).await).code,
        Code::Accept
    );
    // A new request (new Identifier and authenticator) replaying the used State.
    let replay = nas.build(None, &resp, Some(&state));
    assert_eq!(
        nas.verify(&replay, &nas.transact(&replay).await).code,
        Code::Reject
    );
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_imsi_is_rejected_with_eap_failure() {
    let core = start(&[IMSI], true).await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let other = "001010000000999";
    let (mut p, mut u) = (peer(other), usim());
    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    assert_eq!(run.code, Code::Reject);
    assert_eq!(run.eap_code(), Some(eap::Code::Failure));
    assert!(run.peer_failure.is_some());
    assert!(run.peer_msk.is_none() && run.radius_msk.is_none());
    assert_eq!(run.aka_runs, 0);
    assert!(core.store.get(&imsi(other)).await.unwrap().is_none());
    assert_eq!(core.seq_he(IMSI).await, 0);
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn barred_subscriber_is_rejected() {
    let core = start(&[IMSI], true).await;
    assert!(core
        .store
        .set_status(&imsi(IMSI), SubscriberStatus::Barred)
        .await
        .unwrap());
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let (mut p, mut u) = (peer(IMSI), usim());
    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    assert_eq!(run.code, Code::Reject);
    assert_eq!(run.eap_code(), Some(eap::Code::Failure));
    assert!(run.peer_msk.is_none() && run.radius_msk.is_none());
    assert_eq!(run.aka_runs, 0);
    assert_eq!(core.seq_he(IMSI).await, 0, "no SQN for a barred subscriber");
    // Unbarred, the same subscriber authenticates.
    assert!(core
        .store
        .set_status(&imsi(IMSI), SubscriberStatus::Active)
        .await
        .unwrap());
    let (mut p, mut u) = (peer(IMSI), usim());
    authenticate(&mut nas, &mut p, &mut u, false)
        .await
        .assert_accepted_with_msk();
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resynchronisation_after_usim_is_ahead() {
    let core = start(&[IMSI], true).await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let cfg = UsimConfig::default();
    let lanes = 1usize << cfg.ind_len;
    let mut u = Usim::restore(&k(), &opc(), cfg, &vec![5000; lanes]).unwrap();
    let mut p = peer(IMSI);
    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    assert_eq!(
        run.sync_failures, 1,
        "the first challenge hit a sync failure"
    );
    assert_eq!(run.aka_runs, 2);
    run.assert_accepted_with_msk();
    let seq = core.seq_he(IMSI).await;
    assert!(seq > 5000, "SEQ_HE moved past SEQ_MS: {seq}");
    assert!(u.seq_array().iter().any(|&s| s > 5000));
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fast_reauthentication_uses_no_sqn() {
    let core = start(&[IMSI], true).await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let (mut p, mut u) = (peer(IMSI), usim());
    let first = authenticate(&mut nas, &mut p, &mut u, false)
        .await
        .assert_accepted_with_msk();
    assert_eq!(core.seq_he(IMSI).await, 1);
    let id1 = p
        .reauth_id()
        .expect("re-authentication identity issued")
        .to_owned();

    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    let second = run.assert_accepted_with_msk();
    assert_eq!(run.aka_runs, 0, "no AKA run: fast re-authentication");
    assert_ne!(second, first, "fresh MSK");
    assert_eq!(core.seq_he(IMSI).await, 1, "no SQN consumed");
    let id2 = p
        .reauth_id()
        .expect("next re-authentication identity")
        .to_owned();
    assert_ne!(id1, id2);

    // And once more with the next identity; the used one is gone from the store.
    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    let third = run.assert_accepted_with_msk();
    assert_eq!(run.aka_runs, 0);
    assert!(third != first && third != second);
    assert_eq!(core.seq_he(IMSI).await, 1);
    assert!(core.store.get_reauth(&id1, 0).await.unwrap().is_none());
    assert!(core.store.get_reauth(&id2, 0).await.unwrap().is_none());
    core.handle.stop().await;
}

/// `identity_store = "memory"`: fast re-authentication works, nothing is written to the store
/// but the SQN, and after a restart of the core (the tables are lost) the peer's
/// re-authentication identity and pseudonym are unknown: the server asks for the permanent
/// identity and a full authentication succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn memory_identities_reauth_then_full_auth_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("subscribers.db");
    let sqlite = SqliteStore::open(&db).unwrap();
    sqlite.add(subscriber(IMSI)).await.unwrap();
    let store: Arc<dyn SubscriberStore> = Arc::new(sqlite);
    let core = start_with_identities(store.clone(), true, dir, IdentityStore::Memory).await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let (mut p, mut u) = (peer(IMSI), usim());
    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    let first = run.assert_accepted_with_msk();
    assert_eq!((run.aka_runs, run.rounds), (1, 2));
    let id1 = p
        .reauth_id()
        .expect("re-authentication identity")
        .to_owned();
    let pseudonym = p.pseudonym().expect("pseudonym").to_owned();
    assert!(
        store.get_reauth(&id1, 0).await.unwrap().is_none(),
        "not in the store"
    );
    assert!(store
        .resolve_pseudonym(&pseudonym, 0)
        .await
        .unwrap()
        .is_none());

    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    let second = run.assert_accepted_with_msk();
    assert_eq!(run.aka_runs, 0, "fast re-authentication from memory");
    assert_ne!(second, first);
    assert_eq!(core.seq_he(IMSI).await, 1, "no SQN consumed");
    let id2 = p.reauth_id().expect("next identity").to_owned();
    assert_ne!(id1, id2);

    // The used identity is gone: presenting it again is a full authentication.
    core.handle.stop().await;
    let core = start_with_identities(
        store.clone(),
        true,
        tempfile::tempdir().unwrap(),
        IdentityStore::Memory,
    )
    .await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    let third = run.assert_accepted_with_msk();
    assert_eq!(run.aka_runs, 1, "full authentication after the restart");
    assert!(
        run.rounds > 2,
        "the server asked for another identity first ({} rounds)",
        run.rounds
    );
    assert!(third != first && third != second);
    assert_eq!(core.seq_he(IMSI).await, 2);
    let st = core.handle.radius_stats();
    assert_eq!((st.accepts, st.rejects), (1, 0));
    // And the new identities work on the restarted core.
    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    run.assert_accepted_with_msk();
    assert_eq!(run.aka_runs, 0);
    core.handle.stop().await;
}

/// `identity_store = "memory"`: a subscriber barred after its full authentication gets no fast
/// re-authentication from the in-memory context.
#[tokio::test(flavor = "multi_thread")]
async fn memory_identities_refuse_reauth_of_barred_subscriber() {
    let store = MemoryStore::new();
    store.add(subscriber(IMSI)).await.unwrap();
    let store: Arc<dyn SubscriberStore> = Arc::new(store);
    let core = start_with_identities(
        store.clone(),
        true,
        tempfile::tempdir().unwrap(),
        IdentityStore::Memory,
    )
    .await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    let (mut p, mut u) = (peer(IMSI), usim());
    authenticate(&mut nas, &mut p, &mut u, false)
        .await
        .assert_accepted_with_msk();
    assert!(p.reauth_id().is_some());
    store
        .set_status(&imsi(IMSI), SubscriberStatus::Barred)
        .await
        .unwrap();
    let run = authenticate(&mut nas, &mut p, &mut u, false).await;
    assert_eq!(run.code, Code::Reject);
    assert_eq!(run.aka_runs, 0);
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_subscribers_in_parallel() {
    let imsis: Vec<String> = (0..20).map(|i| format!("0010100000001{i:02}")).collect();
    let refs: Vec<&str> = imsis.iter().map(String::as_str).collect();
    let core = start(&refs, true).await;
    let addr = core.addr();
    let tasks: Vec<_> = imsis
        .iter()
        .cloned()
        .map(|i| {
            tokio::spawn(async move {
                let mut nas = Nas::new(addr, SECRET).await;
                let (mut p, mut u) = (peer(&i), usim());
                authenticate(&mut nas, &mut p, &mut u, false)
                    .await
                    .assert_accepted_with_msk()
            })
        })
        .collect();
    let mut msks = HashSet::new();
    for t in tasks {
        msks.insert(t.await.unwrap());
    }
    assert_eq!(msks.len(), 20, "all MSKs distinct");
    for i in &imsis {
        assert_eq!(core.seq_he(i).await, 1);
    }
    let st = core.handle.radius_stats();
    assert_eq!((st.accepts, st.rejects), (20, 0));
    core.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn eap_packets_the_server_discards_get_no_reply_and_leave_the_session_intact() {
    let core = start(&[IMSI], true).await;
    let mut nas = Nas::new(core.addr(), SECRET).await;
    // A first packet that is not an EAP-Response/Identity (here a Nak): silently discarded.
    let nak = eap::nak(1, &[50]);
    let sent = nas.build(None, &nak, None);
    nas.send_raw(&sent.bytes).await;
    assert!(
        nas.silent().await,
        "no reply to a first EAP packet that is not an Identity"
    );

    let (mut p, mut u) = (peer(IMSI), usim());
    let mut out = PeerOut::default();
    p.handle_request(&eap::identity_request(1), &mut OsRng);
    drain(&mut p, &mut u, &mut out);
    let first = nas.build(None, &out.send.take().unwrap(), None);
    let c = nas.verify(&first, &nas.transact(&first).await);
    assert_eq!(c.code, Code::Challenge);
    let state = client::state(&c).unwrap();
    p.handle_request(&client::eap_message(&c).unwrap(), &mut OsRng);
    drain(&mut p, &mut u, &mut out);
    let resp = out.send.take().unwrap();

    // The right answer with the wrong EAP Identifier (RFC 3748 §4.1): discarded, no reply.
    let mut wrong_id = resp.clone();
    wrong_id[1] = wrong_id[1].wrapping_add(1);
    let sent = nas.build(None, &wrong_id, Some(&state));
    nas.send_raw(&sent.bytes).await;
    assert!(
        nas.silent().await,
        "no reply to an EAP-Response with the wrong Identifier"
    );
    assert_eq!(core.seq_he(IMSI).await, 1);

    // The session still waits for the real answer.
    let second = nas.build(None, &resp, Some(&state));
    let a = nas.verify(&second, &nas.transact(&second).await);
    assert_eq!(a.code, Code::Accept);
    p.handle_request(&client::eap_message(&a).unwrap(), &mut OsRng);
    drain(&mut p, &mut u, &mut out);
    let msk = client::msk_from_mppe(&nas.secret, &second.authenticator, &a)
        .unwrap()
        .unwrap();
    assert_eq!(Some(msk.to_vec()), out.msk);
    assert_eq!(core.seq_he(IMSI).await, 1);
    let st = core.handle.radius_stats();
    // Four requests reached the EAP layer; two were answered with nothing.
    assert_eq!(
        (st.requests, st.challenges, st.accepts, st.rejects),
        (4, 1, 1, 0)
    );
    core.handle.stop().await;
}
