//! In-memory network stand-in for the device tests: a CoAP-EAP authenticator with the real
//! EAP-AKA' server, a Milenage "HSS" and real OSCORE on the network side (the mirror of
//! crates/coap-eap/tests/eap_aka.rs, with OSCORE instead of the stand-in), plus a lossy link
//! and a fake clock.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use capillary_aka::vector::{generate_vector, verify_auts};
use capillary_aka::Milenage;
use capillary_coap::msg::option_number;
use capillary_coap::reliability::{
    Dedup, DedupResult, MessageIdAllocator, Outbox, Retransmission, TransmissionParams,
};
use capillary_coap::{Code, Message, MessageType};
use capillary_coap_eap::{
    AuthEvent, AuthFailure, AuthenticatorConfig, CoapEapAuthenticator, OscoreMaterial,
};
use capillary_device::{Device, DeviceConfig, DeviceEvent};
use capillary_eap::eap;
use capillary_eap::server::{
    EapAkaServer, FailureReason, Method, ReauthContext, ServerConfig, ServerEvent, VectorInput,
};
use capillary_oscore::{ContextParams, OscoreError, RequestBinding, SecurityContext};
use capillary_secrets::{Amf, Imsi, Opc, Rand, Secret, Sqn, K};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

pub const IMSI: &str = "001010000000001";
const IND_LEN: u8 = 5;

/// `(k, opc)` hex of a section of tests/data/subscribers.toml.
pub fn subscriber(set: &str) -> (String, String) {
    let text = include_str!("../data/subscribers.toml");
    let mut in_set = false;
    let (mut k, mut opc) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_set = line == format!("[{set}]");
            continue;
        }
        if !in_set {
            continue;
        }
        if let Some((key, val)) = line.split_once('=') {
            let val = val.trim().trim_matches('"').to_owned();
            match key.trim() {
                "k" => k = Some(val),
                "opc" => opc = Some(val),
                _ => {}
            }
        }
    }
    (k.unwrap(), opc.unwrap())
}

pub fn device_config() -> DeviceConfig {
    let (k, opc) = subscriber("set1");
    DeviceConfig::new(
        Imsi::new(IMSI).unwrap(),
        K::from_hex(&k).unwrap(),
        Opc::from_hex(&opc).unwrap(),
    )
}

fn context(m: &OscoreMaterial) -> SecurityContext {
    let mut p = ContextParams::new(m.master_secret.expose(), &m.sender_id, &m.recipient_id);
    p.master_salt = m.master_salt.expose();
    SecurityContext::new(p).unwrap()
}

/// The network side of one device: authenticator, EAP-AKA' server, HSS and OSCORE.
pub struct Network {
    pub rng: StdRng,
    milenage: Milenage,
    pub seq: u64,
    pub auth: CoapEapAuthenticator,
    server: Option<EapAkaServer>,
    pub server_cfg: ServerConfig,
    reauth_db: HashMap<String, ReauthContext>,
    pseudonyms: HashMap<String, Imsi>,
    pending: Option<SecurityContext>,
    pub current: Option<SecurityContext>,
    /// The protected CoAP-EAP request (EAP-Success) in flight: Message ID, bytes, binding.
    eap_req: Option<(u16, Vec<u8>, RequestBinding)>,
    outbox: Outbox,
    mids: MessageIdAllocator,
    downlink: Option<(u16, Vec<u8>, RequestBinding)>,
    dedup: Dedup<()>,
    out: VecDeque<Vec<u8>>,
    // Observations.
    pub uplinks: Vec<Vec<u8>>,
    pub downlink_acks: usize,
    pub replays_rejected: usize,
    pub authenticated: usize,
    pub methods: Vec<Method>,
    pub server_failures: Vec<FailureReason>,
    pub auth_failures: Vec<AuthFailure>,
    pub msks: Vec<[u8; 64]>,
    pub resyncs: usize,
}

impl Network {
    pub fn new(seed: u64, session_lifetime: Duration) -> Self {
        let (k, opc) = subscriber("set1");
        let k = K::from_hex(&k).unwrap();
        let opc = Opc::from_hex(&opc).unwrap();
        let mut cfg = AuthenticatorConfig::new(vec![0x0c], 0x4000, seed);
        cfg.session_lifetime = session_lifetime;
        let params = TransmissionParams {
            ack_random_factor: 1.0,
            ..TransmissionParams::default()
        };
        Self {
            rng: StdRng::seed_from_u64(seed ^ 0xdead_beef),
            milenage: Milenage::new(&k, &opc),
            seq: 1,
            auth: CoapEapAuthenticator::new(cfg),
            server: None,
            server_cfg: ServerConfig::default(),
            reauth_db: HashMap::new(),
            pseudonyms: HashMap::new(),
            pending: None,
            current: None,
            eap_req: None,
            outbox: Outbox::new(params),
            mids: MessageIdAllocator::new(0x6000),
            downlink: None,
            dedup: Dedup::new(&params),
            out: VecDeque::new(),
            uplinks: Vec::new(),
            downlink_acks: 0,
            replays_rejected: 0,
            authenticated: 0,
            methods: Vec::new(),
            server_failures: Vec::new(),
            auth_failures: Vec::new(),
            msks: Vec::new(),
            resyncs: 0,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.auth.poll_timeout(), self.outbox.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.auth.handle_timeout(now);
        self.drain_auth(now);
        for r in self.outbox.handle_timeout(now) {
            if let Retransmission::Resend { bytes, .. } = r {
                self.out.push_back(bytes);
            }
        }
    }

    /// An OSCORE-protected CON POST /d to the device (the contract's downlink).
    pub fn queue_downlink(&mut self, now: Instant, payload: &[u8]) {
        let ctx = self.current.as_mut().expect("authenticated");
        let mid = self.mids.next_id();
        let mut req = Message::new(MessageType::Con, Code::POST, mid, vec![0xd0, mid as u8]);
        req.set_uri_path("d");
        req.payload = payload.to_vec();
        let (wire, binding) = ctx.protect_request(&req).unwrap();
        let bytes = wire.encode().unwrap();
        self.outbox.send_con(now, bytes.clone(), mid, 0.0);
        self.downlink = Some((mid, req.token.clone(), binding));
        self.out.push_back(bytes);
    }

    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        let Ok(msg) = Message::parse(bytes) else {
            return;
        };
        if !msg.has_option(option_number::OSCORE) {
            self.auth.handle_message(now, &msg);
        } else if msg.code.is_request() {
            self.on_protected_request(now, &msg);
        } else {
            self.on_protected_response(now, &msg);
        }
        self.drain_auth(now);
    }

    fn on_protected_request(&mut self, now: Instant, msg: &Message) {
        let mut replay = false;
        let mut verified = None;
        for ctx in [self.current.as_mut(), self.pending.as_mut()]
            .into_iter()
            .flatten()
        {
            match ctx.unprotect_request(msg) {
                Ok(v) => {
                    verified = Some(v);
                    break;
                }
                Err(OscoreError::Replay) => replay = true,
                Err(_) => {}
            }
        }
        let Some((inner, binding)) = verified else {
            if replay {
                self.replays_rejected += 1;
                if let DedupResult::Duplicate(Some(b)) =
                    self.dedup.check_typed(now, &(), msg.message_id, msg.ty)
                {
                    self.out.push_back(b);
                }
            }
            return;
        };
        let _ = self.dedup.check_typed(now, &(), msg.message_id, msg.ty);
        let code = if inner.uri_path() == ["u"] && inner.code == Code::POST {
            self.uplinks.push(inner.payload.clone());
            Code::CHANGED
        } else {
            Code::NOT_FOUND
        };
        let mid = self.mids.next_id();
        let resp = Message::response_to(&inner, code, mid);
        let ctx = self.current.as_mut().unwrap();
        let bytes = ctx
            .protect_response(&resp, &binding, false)
            .unwrap()
            .encode()
            .unwrap();
        self.dedup
            .record_response(&(), msg.message_id, bytes.clone());
        self.out.push_back(bytes);
    }

    fn on_protected_response(&mut self, now: Instant, msg: &Message) {
        if let Some((mid, _, binding)) = self.eap_req.as_mut() {
            if *mid == msg.message_id {
                if let Some(ctx) = self.pending.as_mut() {
                    if let Ok(inner) = ctx.unprotect_response(msg, binding) {
                        self.eap_req = None;
                        self.auth.handle_oscore_message(now, &inner);
                    }
                }
                return;
            }
        }
        if let Some((mid, token, binding)) = self.downlink.as_mut() {
            if *mid == msg.message_id && *token == msg.token {
                if let Some(ctx) = self.current.as_mut() {
                    if let Ok(inner) = ctx.unprotect_response(msg, binding) {
                        assert_eq!(inner.code, Code::CHANGED);
                        self.outbox.cancel(*mid);
                        self.downlink = None;
                        self.downlink_acks += 1;
                    }
                }
            }
        }
    }

    fn vector(&mut self) -> VectorInput {
        let mut r = [0u8; 16];
        self.rng.fill_bytes(&mut r);
        let sqn = Sqn::from_seq_ind(self.seq, 0, IND_LEN).unwrap();
        self.seq += 1;
        generate_vector(&self.milenage, &Rand(r), &sqn, &Amf([0x80, 0x00])).into()
    }

    fn drain_auth(&mut self, now: Instant) {
        while let Some(ev) = self.auth.poll_event() {
            match ev {
                AuthEvent::Triggered { .. } => {
                    let id = (self.rng.next_u32() & 0xff) as u8;
                    self.server = Some(EapAkaServer::new(
                        self.server_cfg.clone(),
                        id.wrapping_add(1),
                    ));
                    self.auth
                        .send_eap_request(now, &eap::identity_request(id))
                        .unwrap();
                }
                AuthEvent::Transmit(m) => self.out.push_back(m.encode().unwrap()),
                AuthEvent::TransmitProtected(m) => {
                    if let Some((mid, bytes, _)) = &self.eap_req {
                        if *mid == m.message_id {
                            let b = bytes.clone();
                            self.out.push_back(b);
                            continue;
                        }
                    }
                    let ctx = self.pending.as_mut().expect("KeysReady first");
                    let (wire, binding) = ctx.protect_request(&m).unwrap();
                    let bytes = wire.encode().unwrap();
                    self.eap_req = Some((m.message_id, bytes.clone(), binding));
                    self.out.push_back(bytes);
                }
                AuthEvent::EapResponse(r) => {
                    if let Some(s) = self.server.as_mut() {
                        s.handle_response(&r, &mut self.rng);
                    }
                    self.drain_server(now);
                }
                AuthEvent::KeysReady(m) => self.pending = Some(context(&m)),
                AuthEvent::Authenticated { .. } => {
                    self.authenticated += 1;
                    self.current = self.pending.take();
                }
                AuthEvent::SessionExpired => self.current = None,
                AuthEvent::Failed(f) => self.auth_failures.push(f),
                _ => {}
            }
        }
    }

    fn drain_server(&mut self, now: Instant) {
        loop {
            let Some(ev) = self.server.as_mut().and_then(|s| s.poll_event()) else {
                return;
            };
            match ev {
                ServerEvent::Send(req) => self.auth.send_eap_request(now, &req).unwrap(),
                ServerEvent::NeedVector { imsi } => {
                    assert_eq!(imsi.as_str(), IMSI);
                    let v = self.vector();
                    self.server
                        .as_mut()
                        .unwrap()
                        .provide_vector(v, &mut self.rng);
                }
                ServerEvent::NeedResync { rand, auts, .. } => {
                    self.resyncs += 1;
                    let sqn_ms = verify_auts(&self.milenage, &rand, &auts).unwrap();
                    self.seq = sqn_ms.seq(IND_LEN) + 1;
                    let v = self.vector();
                    self.server
                        .as_mut()
                        .unwrap()
                        .provide_vector(v, &mut self.rng);
                }
                ServerEvent::ResolvePseudonym { pseudonym } => {
                    let imsi = self.pseudonyms.get(&pseudonym).cloned();
                    self.server
                        .as_mut()
                        .unwrap()
                        .provide_pseudonym(imsi, &mut self.rng);
                }
                ServerEvent::ResolveReauth { reauth_id } => {
                    let rec = self.reauth_db.get(&reauth_id).cloned();
                    self.server
                        .as_mut()
                        .unwrap()
                        .provide_reauth(rec, &mut self.rng);
                }
                ServerEvent::PersistPseudonym { pseudonym, imsi } => {
                    self.pseudonyms.insert(pseudonym, imsi);
                }
                ServerEvent::PersistReauth { reauth_id, rec, .. } => {
                    self.reauth_db.insert(reauth_id, rec);
                }
                ServerEvent::ForgetReauth { reauth_id } => {
                    self.reauth_db.remove(&reauth_id);
                }
                ServerEvent::Success {
                    eap, msk, method, ..
                } => {
                    self.methods.push(method);
                    self.msks.push(*msk.expose_array());
                    self.auth.send_eap_success(now, &eap, &msk).unwrap();
                }
                ServerEvent::Failure { eap, reason } => {
                    self.server_failures.push(reason);
                    self.auth.send_eap_failure(now, &eap).unwrap();
                }
                _ => {}
            }
        }
    }
}

/// A datagram on its way, with its direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    ToNetwork(Vec<u8>),
    ToDevice(Vec<u8>),
}

/// Device + network + a link that drops every `drop_every`-th datagram, fake clock.
pub struct Sim {
    pub now: Instant,
    pub device: Device,
    pub net: Network,
    pub link: VecDeque<Hop>,
    pub drop_every: Option<usize>,
    /// Drop everything (a dead link).
    pub cut: bool,
    pub sent: usize,
    /// Every datagram the device transmitted, in order.
    pub device_sent: Vec<Vec<u8>>,
    /// Every datagram the network transmitted, in order.
    pub net_sent: Vec<Vec<u8>>,
    pub events: Vec<DeviceEvent>,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        Self::with(device_config(), seed, Duration::from_secs(3600))
    }

    pub fn with(cfg: DeviceConfig, seed: u64, lifetime: Duration) -> Self {
        Self {
            now: Instant::now(),
            device: Device::new(cfg, seed),
            net: Network::new(seed.wrapping_add(1000), lifetime),
            link: VecDeque::new(),
            drop_every: None,
            cut: false,
            sent: 0,
            device_sent: Vec::new(),
            net_sent: Vec::new(),
            events: Vec::new(),
        }
    }

    fn put(&mut self, hop: Hop) {
        self.sent += 1;
        if self.cut || self.drop_every.is_some_and(|n| self.sent % n == 0) {
            return;
        }
        self.link.push_back(hop);
    }

    /// Moves outputs to the link and delivers one datagram; false when nothing moved.
    pub fn step(&mut self) -> bool {
        let mut progressed = false;
        while let Some(ev) = self.device.poll_event() {
            self.events.push(ev);
        }
        while let Some(b) = self.device.poll_transmit() {
            progressed = true;
            self.device_sent.push(b.clone());
            self.put(Hop::ToNetwork(b));
        }
        while let Some(b) = self.net.poll_transmit() {
            progressed = true;
            self.net_sent.push(b.clone());
            self.put(Hop::ToDevice(b));
        }
        if let Some(hop) = self.link.pop_front() {
            progressed = true;
            match hop {
                Hop::ToNetwork(b) => self.net.handle_datagram(self.now, &b),
                Hop::ToDevice(b) => self.device.handle_datagram(self.now, &b),
            }
        }
        while let Some(ev) = self.device.poll_event() {
            self.events.push(ev);
        }
        progressed
    }

    /// Runs until `done` holds or no timer is due before `limit` from now.
    pub fn run_until(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            while self.step() {}
            if done(self) {
                return true;
            }
            let next = [self.device.poll_timeout(), self.net.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.device.handle_timeout(self.now);
                    self.net.handle_timeout(self.now);
                }
                _ => return done(self),
            }
        }
    }

    /// Runs every timer up to `d` from now, then sets the clock to that instant.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(d, |_| false);
        self.now = self.now.max(end);
        self.device.handle_timeout(self.now);
        self.net.handle_timeout(self.now);
        while self.step() {}
    }

    pub fn start(&mut self) {
        self.device.start(self.now);
    }

    pub fn count(&self, pred: impl Fn(&DeviceEvent) -> bool) -> usize {
        self.events.iter().filter(|e| pred(e)).count()
    }

    pub fn authenticated_count(&self) -> usize {
        self.count(|e| matches!(e, DeviceEvent::Authenticated { .. }))
    }

    /// Starts and runs until the first authentication.
    pub fn authenticate(&mut self) {
        self.start();
        assert!(
            self.run_until(Duration::from_secs(300), |s| s.authenticated_count() >= 1
                && s.net.authenticated >= 1),
            "authentication did not complete: {:?}",
            self.events
        );
    }
}
