//! CoAP-EAP carrying the real EAP-AKA' peer and server (capillary-eap) with a Milenage HSS and a
//! software USIM (capillary-aka), in memory.
//!
//! RFC 9820 §3.3 sends EAP-Success under OSCORE keyed from the MSK, so the device takes the
//! MSK from `EapAkaPeer::keys_in_progress` right after answering AKA'-Challenge, and the EAP
//! peer then confirms it when the (OSCORE-verified) EAP-Success reaches it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::time::Instant;

use capillary_aka::vector::{generate_vector, Usim, UsimConfig};
use capillary_aka::Milenage;
use capillary_coap::Message;
use capillary_coap_eap::{
    AuthEvent, AuthenticatorConfig, CoapEapAuthenticator, CoapEapPeer, OscoreMaterial, PeerConfig,
    PeerEvent,
};
use capillary_eap::eap;
use capillary_eap::peer::{EapAkaPeer, PeerConfig as AkaPeerConfig, PeerEvent as AkaPeerEvent};
use capillary_eap::server::{EapAkaServer, ServerConfig, ServerEvent, VectorInput};
use capillary_secrets::{Amf, Msk, Opc, Rand, Secret, Sqn, K};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

const IMSI: &str = "001010000000001";
const K_HEX: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OPC_HEX: &str = "cd63cb71954a9f4e48a5994e37a02baf";

struct World {
    now: Instant,
    rng: StdRng,
    milenage: Milenage,
    seq: u64,
    usim: Usim,
    aka_peer: EapAkaPeer,
    aka_server: EapAkaServer,
    peer: CoapEapPeer,
    auth: CoapEapAuthenticator,
    link: VecDeque<(bool, Message, bool)>, // (to_auth, msg, protected)
    sent: usize,
    drop: Vec<usize>,
    peer_keys: Option<OscoreMaterial>,
    auth_keys: Option<OscoreMaterial>,
    peer_ok: bool,
    auth_ok: bool,
    server_msk: Option<[u8; 64]>,
    peer_msk: Option<[u8; 64]>,
    eap_success_seen: bool,
}

impl World {
    fn new(seed: u64) -> Self {
        let k = K::from_hex(K_HEX).unwrap();
        let opc = Opc::from_hex(OPC_HEX).unwrap();
        Self {
            now: Instant::now(),
            rng: StdRng::seed_from_u64(seed),
            milenage: Milenage::new(&k, &opc),
            seq: 1,
            usim: Usim::new(&k, &opc, UsimConfig::default()),
            aka_peer: EapAkaPeer::new(AkaPeerConfig {
                permanent_identity: format!("6{IMSI}@wlan.mnc001.mcc001.3gppnetwork.org"),
                network_name: Some("WLAN".into()),
                result_indication: false,
            }),
            aka_server: EapAkaServer::new(ServerConfig::default(), 1),
            peer: CoapEapPeer::new(PeerConfig::new(vec![0x11], 1, 0x100)),
            auth: CoapEapAuthenticator::new(AuthenticatorConfig::new(vec![], 0x9000, 5)),
            link: VecDeque::new(),
            sent: 0,
            drop: Vec::new(),
            peer_keys: None,
            auth_keys: None,
            peer_ok: false,
            auth_ok: false,
            server_msk: None,
            peer_msk: None,
            eap_success_seen: false,
        }
    }

    fn put(&mut self, to_auth: bool, m: Message, protected: bool) {
        let m = Message::parse(&m.encode().unwrap()).unwrap();
        let i = self.sent;
        self.sent += 1;
        if !self.drop.contains(&i) {
            self.link.push_back((to_auth, m, protected));
        }
    }

    fn vector(&mut self) -> VectorInput {
        let mut r = [0u8; 16];
        self.rng.fill_bytes(&mut r);
        let sqn = Sqn::from_seq_ind(self.seq, 0, 5).unwrap();
        self.seq += 1;
        let v = generate_vector(&self.milenage, &Rand(r), &sqn, &Amf([0x80, 0x00]));
        VectorInput {
            rand: v.rand,
            autn: v.autn,
            xres: v.xres,
            ck: v.ck,
            ik: v.ik,
        }
    }

    fn step(&mut self) -> bool {
        let mut progressed = false;
        while let Some(ev) = self.peer.poll_event() {
            progressed = true;
            match ev {
                PeerEvent::Transmit(m) => self.put(true, m, false),
                PeerEvent::TransmitProtected(m) => self.put(true, m, true),
                PeerEvent::EapRequest(req) => {
                    let challenge = req.get(4) == Some(&50) && req.get(5) == Some(&1);
                    self.aka_peer.handle_request(&req, &mut self.rng);
                    self.drain_aka_peer();
                    if challenge {
                        // The MSK before EAP-Success (see module docs).
                        let (msk, _) = self
                            .aka_peer
                            .keys_in_progress()
                            .expect("challenge verified");
                        self.peer_msk = Some(*msk.expose_array());
                        self.peer.provide_msk(msk).unwrap();
                    }
                }
                PeerEvent::KeysReady(k) => self.peer_keys = Some(k),
                PeerEvent::Authenticated { eap_success, .. } => {
                    self.peer_ok = true;
                    self.aka_peer.handle_request(&eap_success, &mut self.rng);
                    self.drain_aka_peer();
                }
                PeerEvent::Failed(f) => panic!("peer failed: {f:?}"),
                _ => {}
            }
        }
        while let Some(ev) = self.auth.poll_event() {
            progressed = true;
            match ev {
                AuthEvent::Triggered { .. } => {
                    // The authenticator sends EAP-Request/Identity itself (RFC 3748 §5.1).
                    self.auth
                        .send_eap_request(self.now, &eap::identity_request(200))
                        .unwrap();
                }
                AuthEvent::Transmit(m) => self.put(false, m, false),
                AuthEvent::TransmitProtected(m) => self.put(false, m, true),
                AuthEvent::EapResponse(r) => {
                    self.aka_server.handle_response(&r, &mut self.rng);
                    self.drain_aka_server();
                }
                AuthEvent::KeysReady(k) => self.auth_keys = Some(k),
                AuthEvent::Authenticated { .. } => self.auth_ok = true,
                AuthEvent::Failed(f) => panic!("authenticator failed: {f:?}"),
                _ => {}
            }
        }
        if let Some((to_auth, m, protected)) = self.link.pop_front() {
            progressed = true;
            let verified = protected && self.keys_match();
            match (to_auth, protected, verified) {
                (true, false, _) => self.auth.handle_message(self.now, &m),
                (false, false, _) => self.peer.handle_message(self.now, &m),
                (true, true, true) => self.auth.handle_oscore_message(self.now, &m),
                (false, true, true) => self.peer.handle_oscore_message(self.now, &m),
                _ => {}
            }
        }
        progressed
    }

    fn keys_match(&self) -> bool {
        match (&self.peer_keys, &self.auth_keys) {
            (Some(p), Some(a)) => {
                p.master_secret.expose() == a.master_secret.expose()
                    && p.master_salt.expose() == a.master_salt.expose()
                    && p.sender_id == a.recipient_id
                    && p.recipient_id == a.sender_id
            }
            _ => false,
        }
    }

    fn drain_aka_peer(&mut self) {
        while let Some(ev) = self.aka_peer.poll_event() {
            match ev {
                AkaPeerEvent::Send(resp) => {
                    self.peer.provide_eap_response(self.now, &resp).unwrap()
                }
                AkaPeerEvent::RunAka { rand, autn } => {
                    let r = self.usim.authenticate(&rand, &autn);
                    self.aka_peer.provide_aka(r);
                }
                AkaPeerEvent::Success { msk, .. } => {
                    // EAP-Success confirms the MSK already handed to CoAP-EAP.
                    assert_eq!(self.peer_msk, Some(*msk.expose_array()));
                    self.eap_success_seen = true;
                }
                other => panic!("EAP peer: {other:?}"),
            }
        }
    }

    fn drain_aka_server(&mut self) {
        while let Some(ev) = self.aka_server.poll_event() {
            match ev {
                ServerEvent::Send(req) => self.auth.send_eap_request(self.now, &req).unwrap(),
                ServerEvent::NeedVector { imsi } => {
                    assert_eq!(imsi.as_str(), IMSI);
                    let v = self.vector();
                    self.aka_server.provide_vector(v, &mut self.rng);
                }
                ServerEvent::Success { eap, msk, .. } => {
                    self.server_msk = Some(*msk.expose_array());
                    self.auth.send_eap_success(self.now, &eap, &msk).unwrap();
                }
                ServerEvent::Failure { reason, .. } => panic!("server failure {reason:?}"),
                ServerEvent::PersistPseudonym { .. }
                | ServerEvent::PersistReauth { .. }
                | ServerEvent::ForgetReauth { .. } => {}
                other => panic!("EAP server: {other:?}"),
            }
        }
    }

    fn run(&mut self) {
        self.peer.start(self.now);
        for _ in 0..10_000 {
            while self.step() {}
            if self.peer_ok && self.auth_ok {
                return;
            }
            let next = [self.peer.poll_timeout(), self.auth.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(t) = next else { return };
            self.now = self.now.max(t);
            self.peer.handle_timeout(self.now);
            self.auth.handle_timeout(self.now);
        }
    }
}

#[test]
fn eap_aka_prime_over_coap_eap() {
    let mut w = World::new(1);
    w.run();
    assert!(w.peer_ok && w.auth_ok);
    assert_eq!(w.peer_msk, w.server_msk, "same MSK on both sides");
    assert!(w.eap_success_seen, "the EAP peer saw the EAP-Success");
    // Trigger + Identity round + AKA'-Challenge round + Success/2.04 = 7 CoAP messages.
    assert_eq!(w.sent, 7);
    let server_msk = Msk::from_bytes(w.server_msk.unwrap());
    let expected = capillary_coap_eap::keys::derive_master(
        &server_msk,
        capillary_coap_eap::CipherSuite::DEFAULT,
        &capillary_coap_eap::keys::cs_input(None, None),
    )
    .unwrap();
    assert_eq!(
        w.peer_keys.as_ref().unwrap().master_secret.expose(),
        expected.0.expose()
    );
    // Empty RID-C is allowed (an empty OSCORE ID is valid, RFC 8613 §3.3).
    assert_eq!(w.peer_keys.as_ref().unwrap().sender_id, Vec::<u8>::new());
}

#[test]
fn eap_aka_prime_with_losses() {
    let mut w = World::new(2);
    w.drop = vec![1, 4, 7];
    w.run();
    assert!(w.peer_ok && w.auth_ok);
    assert_eq!(w.peer_msk, w.server_msk);
    assert_eq!(w.sent, 10);
}
