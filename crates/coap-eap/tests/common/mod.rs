//! In-memory harness: one CoAP-EAP peer, one authenticator, a dummy EAP method, a fake clock, a
//! link that can drop or duplicate messages, and a stand-in for the OSCORE driver (a protected
//! message is delivered only if the receiver already holds the same key material).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use capillary_coap::Message;
use capillary_coap_eap::{
    AuthEvent, AuthFailure, AuthenticatorConfig, CoapEapAuthenticator, CoapEapPeer, OscoreMaterial,
    PeerConfig, PeerEvent, PeerFailure,
};
use capillary_secrets::{Msk, Secret};

pub const MSK: [u8; 64] = [0x5a; 64];

/// The dummy EAP method: Identity, one method round (type 99), then Success or Failure.
#[derive(Debug, Default)]
pub struct DummyServer {
    pub reject: bool,
    pub rounds: u8,
}

impl DummyServer {
    pub fn first(&mut self) -> Vec<u8> {
        vec![1, 1, 0, 5, 1]
    }

    /// `Ok(request)` or `Err(final packet, success?)`.
    pub fn next(&mut self, resp: &[u8]) -> Result<Vec<u8>, (Vec<u8>, bool)> {
        assert_eq!(resp[0], 2, "EAP-Response");
        self.rounds += 1;
        let id = resp[1];
        if self.rounds == 1 {
            return Ok(vec![1, id + 1, 0, 6, 99, 0xaa]);
        }
        if self.reject {
            Err((vec![4, id, 0, 4], false))
        } else {
            Err((vec![3, id, 0, 4], true))
        }
    }
}

/// The dummy peer method: answers Identity and type 99; has the MSK after type 99.
pub fn dummy_peer_answer(req: &[u8]) -> (Vec<u8>, bool) {
    match req[4] {
        1 => (vec![2, req[1], 0, 8, 1, b'd', b'e', b'v'], false),
        _ => (vec![2, req[1], 0, 6, 99, 0xbb], true),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToAuth,
    ToPeer,
}

#[derive(Debug)]
pub struct Wire {
    pub dir: Dir,
    pub msg: Message,
    pub protected: bool,
}

pub struct Harness {
    pub now: Instant,
    pub peer: CoapEapPeer,
    pub auth: CoapEapAuthenticator,
    pub server: DummyServer,
    pub queue: VecDeque<Wire>,
    /// Every message put on the link, in order (before loss).
    pub sent: Vec<(Dir, Message, bool)>,
    /// Indices (into `sent`) to drop.
    pub drop: Vec<usize>,
    /// Deliver every message twice.
    pub duplicate_all: bool,
    pub peer_keys: Option<OscoreMaterial>,
    pub auth_keys: Option<OscoreMaterial>,
    pub peer_authenticated: u32,
    pub auth_authenticated: u32,
    pub peer_failed: Option<PeerFailure>,
    pub auth_failed: Option<AuthFailure>,
    pub peer_eap_requests: u32,
    pub auth_eap_responses: u32,
    pub triggered: u32,
    pub peer_expired: u32,
}

impl Harness {
    pub fn new(pcfg: PeerConfig, acfg: AuthenticatorConfig) -> Self {
        Self {
            now: Instant::now(),
            peer: CoapEapPeer::new(pcfg),
            auth: CoapEapAuthenticator::new(acfg),
            server: DummyServer::default(),
            queue: VecDeque::new(),
            sent: Vec::new(),
            drop: Vec::new(),
            duplicate_all: false,
            peer_keys: None,
            auth_keys: None,
            peer_authenticated: 0,
            auth_authenticated: 0,
            peer_failed: None,
            auth_failed: None,
            peer_eap_requests: 0,
            auth_eap_responses: 0,
            triggered: 0,
            peer_expired: 0,
        }
    }

    pub fn default_configs() -> (PeerConfig, AuthenticatorConfig) {
        (
            PeerConfig::new(vec![0x01], 100, 0x1000),
            AuthenticatorConfig::new(vec![0x02], 0x8000, 77),
        )
    }

    fn put(&mut self, dir: Dir, msg: Message, protected: bool) {
        // Through the codec, as on a real link.
        let bytes = msg.encode().expect("encodable");
        let msg = Message::parse(&bytes).expect("parsable");
        let idx = self.sent.len();
        self.sent.push((dir, msg.clone(), protected));
        if self.drop.contains(&idx) {
            return;
        }
        if self.duplicate_all {
            self.queue.push_back(Wire {
                dir,
                msg: msg.clone(),
                protected,
            });
        }
        self.queue.push_back(Wire {
            dir,
            msg,
            protected,
        });
    }

    pub fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.peer.poll_event() {
                progressed = true;
                match ev {
                    PeerEvent::Transmit(m) => self.put(Dir::ToAuth, m, false),
                    PeerEvent::TransmitProtected(m) => {
                        assert!(self.peer_keys.is_some(), "protect without keys");
                        self.put(Dir::ToAuth, m, true)
                    }
                    PeerEvent::EapRequest(req) => {
                        self.peer_eap_requests += 1;
                        let (resp, has_msk) = dummy_peer_answer(&req);
                        self.peer.provide_eap_response(self.now, &resp).unwrap();
                        if has_msk {
                            self.peer.provide_msk(&Msk::from_bytes(MSK)).unwrap();
                        }
                    }
                    PeerEvent::KeysReady(k) => self.peer_keys = Some(k),
                    PeerEvent::Authenticated { .. } => self.peer_authenticated += 1,
                    PeerEvent::SessionExpired => self.peer_expired += 1,
                    PeerEvent::Failed(f) => self.peer_failed = Some(f),
                    _ => {}
                }
            }
            while let Some(ev) = self.auth.poll_event() {
                progressed = true;
                match ev {
                    AuthEvent::Triggered { .. } => {
                        self.triggered += 1;
                        self.server = DummyServer {
                            reject: self.server.reject,
                            rounds: 0,
                        };
                        let first = self.server.first();
                        self.auth.send_eap_request(self.now, &first).unwrap();
                    }
                    AuthEvent::Transmit(m) => self.put(Dir::ToPeer, m, false),
                    AuthEvent::TransmitProtected(m) => {
                        assert!(self.auth_keys.is_some(), "protect without keys");
                        self.put(Dir::ToPeer, m, true)
                    }
                    AuthEvent::EapResponse(r) => {
                        self.auth_eap_responses += 1;
                        match self.server.next(&r) {
                            Ok(req) => self.auth.send_eap_request(self.now, &req).unwrap(),
                            Err((fin, true)) => self
                                .auth
                                .send_eap_success(self.now, &fin, &Msk::from_bytes(MSK))
                                .unwrap(),
                            Err((fin, false)) => {
                                self.auth.send_eap_failure(self.now, &fin).unwrap()
                            }
                        }
                    }
                    AuthEvent::KeysReady(k) => self.auth_keys = Some(k),
                    AuthEvent::Authenticated { .. } => self.auth_authenticated += 1,
                    AuthEvent::Failed(f) => self.auth_failed = Some(f),
                    _ => {}
                }
            }
            if let Some(w) = self.queue.pop_front() {
                progressed = true;
                self.deliver(w);
            }
            if !progressed {
                return;
            }
        }
    }

    /// The stand-in OSCORE driver: a protected message reaches the receiver only if both
    /// sides derived matching material (same secret and salt, mirrored IDs).
    fn keys_match(&self) -> bool {
        match (&self.peer_keys, &self.auth_keys) {
            (Some(p), Some(a)) => {
                p.master_secret.expose() == a.master_secret.expose()
                    && p.master_salt.expose() == a.master_salt.expose()
                    && p.sender_id == a.recipient_id
                    && p.recipient_id == a.sender_id
                    && p.cipher_suite == a.cipher_suite
            }
            _ => false,
        }
    }

    fn deliver(&mut self, w: Wire) {
        match (w.dir, w.protected) {
            (Dir::ToAuth, false) => self.auth.handle_message(self.now, &w.msg),
            (Dir::ToPeer, false) => self.peer.handle_message(self.now, &w.msg),
            (Dir::ToAuth, true) if self.keys_match() => {
                self.auth.handle_oscore_message(self.now, &w.msg)
            }
            (Dir::ToPeer, true) if self.keys_match() => {
                self.peer.handle_oscore_message(self.now, &w.msg)
            }
            _ => {} // cannot be verified: dropped by the OSCORE layer
        }
    }

    /// Runs until both sides are idle, advancing the clock to the next timer, at most until
    /// `limit` from now.
    pub fn run_for(&mut self, limit: Duration) {
        let end = self.now + limit;
        loop {
            self.drain();
            let next = [self.peer.poll_timeout(), self.auth.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    if t > self.now {
                        self.now = t;
                    }
                    self.peer.handle_timeout(self.now);
                    self.auth.handle_timeout(self.now);
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
    }

    /// Runs until both sides report success or something fails (or 10 minutes pass).
    pub fn run_until_done(&mut self) {
        let end = self.now + Duration::from_secs(600);
        loop {
            self.drain();
            if (self.peer_authenticated > 0 && self.auth_authenticated > 0)
                || self.peer_failed.is_some()
                || self.auth_failed.is_some()
                || self.now >= end
            {
                return;
            }
            let next = [self.peer.poll_timeout(), self.auth.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) => {
                    if t > self.now {
                        self.now = t;
                    }
                    self.peer.handle_timeout(self.now);
                    self.auth.handle_timeout(self.now);
                }
                None => return,
            }
        }
    }

    pub fn count(&self, dir: Dir) -> usize {
        self.sent.iter().filter(|(d, _, _)| *d == dir).count()
    }
}
