//! In-memory harness: one gateway, a network stand-in (CoAP-EAP authenticator + EAP-AKA'
//! server + Milenage HSS for the gateway's own authentication, the link OSCORE context, and
//! a relay-batch responder that echoes device datagrams back as device-bound entries), a
//! fake clock and a link that can lose messages.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use capillary_aka::vector::{generate_vector, UsimConfig};
use capillary_aka::Milenage;
use capillary_coap::msg::option_number;
use capillary_coap::reliability::{
    MessageIdAllocator, Outbox, Retransmission, TokenAllocator, TransmissionParams,
};
use capillary_coap::{Code, Message, MessageType};
use capillary_coap_eap::{AuthEvent, AuthenticatorConfig, CoapEapAuthenticator, OscoreMaterial};
use capillary_eap::eap;
use capillary_eap::server::{EapAkaServer, ServerConfig, ServerEvent, VectorInput};
use capillary_gateway::{
    BatcherConfig, Gateway, GatewayConfig, GatewayEvent, GatewayOptions, Transmit,
};
use capillary_oscore::{ContextParams, RequestBinding, SecurityContext};
use capillary_relay::{Batch, DecodedBatch, Entry, EntryKind};
use capillary_secrets::{Amf, Imsi, Opc, Rand, Secret, Sqn, K};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

// 3GPP TS 35.208 Test Set 1 K / OPc (as in crates/coap-eap/tests/eap_aka.rs).
pub const IMSI: &str = "001010000000001";
pub const K_HEX: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
pub const OPC_HEX: &str = "cd63cb71954a9f4e48a5994e37a02baf";

pub type Addr = u32;

pub fn gateway_config() -> GatewayConfig {
    let mut cfg = GatewayConfig::new(
        Imsi::new(IMSI).unwrap(),
        K::from_hex(K_HEX).unwrap(),
        Opc::from_hex(OPC_HEX).unwrap(),
    );
    cfg.usim = UsimConfig::default();
    cfg.rid_i = vec![0x01];
    cfg.batcher = BatcherConfig::default();
    cfg.max_devices = 64;
    cfg
}

fn context_from(m: &OscoreMaterial) -> SecurityContext {
    let mut p = ContextParams::new(m.master_secret.expose(), &m.sender_id, &m.recipient_id);
    p.master_salt = m.master_salt.expose();
    SecurityContext::new(p).unwrap()
}

/// A device datagram: a CON POST carrying `tag` (a valid CoAP message).
pub fn device_msg(mid: u16, tag: &[u8]) -> Vec<u8> {
    let mut m = Message::new(MessageType::Con, Code::POST, mid, vec![0xd0, mid as u8]);
    m.set_uri_path("u");
    m.payload = tag.to_vec();
    m.encode().unwrap()
}

/// The network side of the gateway link.
pub struct Net {
    rng: StdRng,
    milenage: Milenage,
    seq: u64,
    pub auth: CoapEapAuthenticator,
    acfg: AuthenticatorConfig,
    aka: EapAkaServer,
    pending_ctx: Option<SecurityContext>,
    pub ctx: Option<SecurityContext>,
    /// Protected bytes of the authenticator's requests by Message ID (retransmissions).
    auth_protected: HashMap<u16, Vec<u8>>,
    auth_bindings: HashMap<Vec<u8>, RequestBinding>,
    pub authenticated: u32,
    pub auth_failed: u32,
    /// Echo device datagrams back as device-bound entries.
    pub echo: bool,
    /// Entries added to the next answer (2.04 to a gateway POST /r).
    pub extra: Vec<Entry>,
    /// Every batch the network processed (POST /r from the gateway, first copy only).
    pub batches_in: Vec<Batch>,
    /// Batches that came back in 2.04 answers to network-initiated POST /r.
    pub answers_in: Vec<Batch>,
    /// Codes of the gateway's answers to network-initiated POST /r.
    pub answer_codes: Vec<Code>,
    /// Answers to gateway POST /r, by Message ID (RFC 7252 §4.5 on the network side).
    dedup: HashMap<u16, Vec<u8>>,
    pub duplicates: u32,
    pub unprotected_errors: Vec<Code>,
    outbox: Outbox,
    mids: MessageIdAllocator,
    tokens: TokenAllocator,
    inflight: Option<(u16, Vec<u8>, RequestBinding)>,
    pub post_gave_up: u32,
    /// Answer gateway POST /r with an Empty ACK and a separate CON response (RFC 7252 §5.2.2).
    pub separate: bool,
    /// Empty ACKs received from the gateway.
    pub empty_acks: u32,
    pub out: VecDeque<Vec<u8>>,
}

impl Net {
    pub fn new(seed: u64, session_lifetime: Duration) -> Self {
        let k = K::from_hex(K_HEX).unwrap();
        let opc = Opc::from_hex(OPC_HEX).unwrap();
        let mut acfg = AuthenticatorConfig::new(vec![0x02], 0x4000, seed);
        acfg.session_lifetime = session_lifetime;
        Net {
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            milenage: Milenage::new(&k, &opc),
            seq: 1,
            auth: CoapEapAuthenticator::new(acfg.clone()),
            acfg,
            aka: Self::server(),
            pending_ctx: None,
            ctx: None,
            auth_protected: HashMap::new(),
            auth_bindings: HashMap::new(),
            authenticated: 0,
            auth_failed: 0,
            echo: true,
            extra: Vec::new(),
            batches_in: Vec::new(),
            answers_in: Vec::new(),
            answer_codes: Vec::new(),
            dedup: HashMap::new(),
            duplicates: 0,
            unprotected_errors: Vec::new(),
            outbox: Outbox::new(TransmissionParams::default()),
            mids: MessageIdAllocator::new(0x2000),
            tokens: TokenAllocator::new(4, seed),
            inflight: None,
            post_gave_up: 0,
            separate: false,
            empty_acks: 0,
            out: VecDeque::new(),
        }
    }

    fn server() -> EapAkaServer {
        EapAkaServer::new(
            ServerConfig {
                pseudonyms: false,
                fast_reauth: false,
                ..ServerConfig::default()
            },
            1,
        )
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

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.auth.poll_timeout(), self.outbox.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.auth.handle_timeout(now);
        for r in self.outbox.handle_timeout(now) {
            match r {
                Retransmission::Resend { bytes, .. } => self.out.push_back(bytes),
                Retransmission::GaveUp { .. } => {
                    self.inflight = None;
                    self.post_gave_up += 1;
                }
            }
        }
        self.drain(now);
    }

    /// A network-initiated POST /r with `entries`.
    pub fn post_batch(&mut self, now: Instant, entries: Vec<Entry>) {
        self.post_raw(now, Batch::new(entries).encode().unwrap());
    }

    /// A network-initiated POST /r with any payload.
    pub fn post_raw(&mut self, now: Instant, payload: Vec<u8>) {
        let mid = self.mids.next_id();
        let token = self.tokens.next_token();
        let mut req = Message::new(MessageType::Con, Code::POST, mid, token.clone());
        req.set_uri_path("r");
        req.payload = payload;
        let (outer, binding) = self.ctx.as_mut().unwrap().protect_request(&req).unwrap();
        let bytes = outer.encode().unwrap();
        self.outbox.send_con(now, bytes.clone(), mid, 0.0);
        self.inflight = Some((mid, token, binding));
        self.out.push_back(bytes);
    }

    pub fn handle(&mut self, now: Instant, bytes: &[u8]) {
        let Ok(msg) = Message::parse(bytes) else {
            return;
        };
        let protected = msg.has_option(option_number::OSCORE);
        if msg.code.is_request() && protected {
            self.on_post(&msg);
        } else if msg.code.is_response() && protected {
            if let Some(mut b) = self.auth_bindings.get(&msg.token).cloned() {
                let ctx = self.pending_ctx.as_mut().or(self.ctx.as_mut()).unwrap();
                if let Ok(inner) = ctx.unprotect_response(&msg, &mut b) {
                    self.auth.handle_oscore_message(now, &inner);
                }
            } else if let Some((mid, token, mut b)) = self.inflight.take() {
                if msg.token == token {
                    let inner = self
                        .ctx
                        .as_mut()
                        .unwrap()
                        .unprotect_response(&msg, &mut b)
                        .unwrap();
                    self.outbox.handle_incoming_ack_or_rst(mid);
                    self.answer_codes.push(inner.code);
                    if inner.code != Code::CHANGED {
                        self.drain(now);
                        return;
                    }
                    let batch = if inner.payload.is_empty() {
                        Batch::new(vec![])
                    } else {
                        Batch::decode(&inner.payload).unwrap()
                    };
                    self.answers_in.push(batch);
                } else {
                    self.inflight = Some((mid, token, b));
                }
            }
        } else if msg.code.is_empty() && msg.ty == MessageType::Ack {
            self.empty_acks += 1;
        } else {
            if msg.code.is_response() && !msg.code.is_success() {
                self.unprotected_errors.push(msg.code);
            }
            self.auth.handle_message(now, &msg);
        }
        self.drain(now);
    }

    fn on_post(&mut self, msg: &Message) {
        if let Some(cached) = self.dedup.get(&msg.message_id) {
            self.duplicates += 1;
            self.out.push_back(cached.clone());
            return;
        }
        let Some(ctx) = self.ctx.as_mut() else {
            // RFC 8613 §8.2: no context for this kid → unprotected 4.01.
            let e = capillary_oscore::OscoreError::UnknownKid;
            let r = e.error_response(msg, 0x7777).unwrap();
            self.out.push_back(r.encode().unwrap());
            return;
        };
        let Ok((inner, binding)) = ctx.unprotect_request(msg) else {
            return;
        };
        assert_eq!(inner.uri_path(), vec!["r".to_string()]);
        let d = DecodedBatch::decode(&inner.payload).unwrap();
        assert!(d.bad_entries.is_empty());
        let batch = Batch::new(d.entries);
        let mut answer = Vec::new();
        if self.echo {
            for e in &batch.entries {
                if let EntryKind::Coap(b) = &e.kind {
                    answer.push(Entry::coap(e.handle, b.clone()));
                }
            }
        }
        answer.append(&mut self.extra);
        self.batches_in.push(batch);
        let mut resp = if self.separate {
            self.out
                .push_back(Message::empty_ack(msg.message_id).encode().unwrap());
            Message::new(
                MessageType::Con,
                Code::CHANGED,
                self.mids.next_id(),
                inner.token.clone(),
            )
        } else {
            Message::response_to(&inner, Code::CHANGED, 0)
        };
        resp.payload = Batch::new(answer).encode().unwrap();
        let wire = ctx.protect_response(&resp, &binding, false).unwrap();
        let bytes = wire.encode().unwrap();
        self.dedup.insert(msg.message_id, bytes.clone());
        self.out.push_back(bytes);
    }

    fn drain(&mut self, now: Instant) {
        while let Some(ev) = self.auth.poll_event() {
            match ev {
                AuthEvent::Triggered { .. } => {
                    self.aka = Self::server();
                    self.auth
                        .send_eap_request(now, &eap::identity_request(200))
                        .unwrap();
                }
                AuthEvent::Transmit(m) => self.out.push_back(m.encode().unwrap()),
                AuthEvent::TransmitProtected(m) => {
                    if let Some(b) = self.auth_protected.get(&m.message_id) {
                        self.out.push_back(b.clone());
                        continue;
                    }
                    let ctx = self.pending_ctx.as_mut().unwrap();
                    let (outer, binding) = ctx.protect_request(&m).unwrap();
                    let b = outer.encode().unwrap();
                    self.auth_bindings.insert(m.token.clone(), binding);
                    self.auth_protected.insert(m.message_id, b.clone());
                    self.out.push_back(b);
                }
                AuthEvent::EapResponse(r) => {
                    self.aka.handle_response(&r, &mut self.rng);
                    self.drain_aka(now);
                }
                AuthEvent::KeysReady(k) => self.pending_ctx = Some(context_from(&k)),
                AuthEvent::Authenticated { .. } => {
                    self.ctx = self.pending_ctx.take();
                    self.auth_bindings.clear();
                    self.authenticated += 1;
                }
                AuthEvent::Failed(_) => self.auth_failed += 1,
                _ => {}
            }
        }
    }

    fn drain_aka(&mut self, now: Instant) {
        while let Some(ev) = self.aka.poll_event() {
            match ev {
                ServerEvent::Send(req) => self.auth.send_eap_request(now, &req).unwrap(),
                ServerEvent::NeedVector { imsi } => {
                    assert_eq!(imsi.as_str(), IMSI);
                    let v = self.vector();
                    self.aka.provide_vector(v, &mut self.rng);
                }
                ServerEvent::Success { eap, msk, .. } => {
                    self.auth.send_eap_success(now, &eap, &msk).unwrap()
                }
                _ => {}
            }
        }
    }

    /// Restart the authenticator (a network that lost the gateway's session).
    pub fn forget_gateway(&mut self) {
        self.auth = CoapEapAuthenticator::new(self.acfg.clone());
        self.auth_protected.clear();
        self.auth_bindings.clear();
        self.ctx = None;
        self.pending_ctx = None;
    }
}

/// Gateway + network + devices with a fake clock.
pub struct World {
    pub now: Instant,
    pub start: Instant,
    pub gw: Gateway<Addr>,
    pub net: Net,
    pub events: Vec<GatewayEvent<Addr>>,
    /// Datagrams the gateway sent to devices.
    pub to_devices: Vec<(Addr, Vec<u8>)>,
    /// Every datagram put on the gateway link: (to_network, bytes).
    pub link_log: Vec<(bool, Vec<u8>)>,
    /// Link message indices (into `link_log`) to drop.
    pub drop: Vec<usize>,
    /// Drop everything on the gateway link.
    pub link_down: bool,
}

impl World {
    pub fn new(seed: u64) -> Self {
        Self::with(seed, gateway_config(), GatewayOptions::default(), 3600)
    }

    pub fn with(seed: u64, cfg: GatewayConfig, opts: GatewayOptions, lifetime_secs: u64) -> Self {
        let now = Instant::now();
        World {
            now,
            start: now,
            gw: Gateway::with_options(cfg, opts, seed),
            net: Net::new(seed, Duration::from_secs(lifetime_secs)),
            events: Vec::new(),
            to_devices: Vec::new(),
            link_log: Vec::new(),
            drop: Vec::new(),
            link_down: false,
        }
    }

    /// An authenticated world.
    pub fn authenticated(seed: u64) -> Self {
        let mut w = Self::new(seed);
        w.start_auth();
        w
    }

    pub fn start_auth(&mut self) {
        self.gw.start(self.now);
        self.run_for(Duration::from_millis(1));
        assert!(self.gw.is_authenticated(), "gateway authenticated");
        assert_eq!(self.net.authenticated, 1);
    }

    fn on_link(&mut self, to_net: bool, bytes: Vec<u8>) {
        let idx = self.link_log.len();
        self.link_log.push((to_net, bytes.clone()));
        if self.link_down || self.drop.contains(&idx) {
            return;
        }
        if to_net {
            self.net.handle(self.now, &bytes);
        } else {
            self.gw.handle_network_datagram(self.now, &bytes);
        }
    }

    /// Deliver everything queued at the current instant.
    pub fn pump(&mut self) {
        for _ in 0..100_000 {
            let mut progressed = false;
            while let Some(t) = self.gw.poll_transmit() {
                progressed = true;
                match t {
                    Transmit::ToNetwork(b) => self.on_link(true, b),
                    Transmit::ToDevice(a, b) => self.to_devices.push((a, b)),
                }
            }
            while let Some(b) = self.net.out.pop_front() {
                progressed = true;
                self.on_link(false, b);
            }
            while let Some(e) = self.gw.poll_event() {
                progressed = true;
                self.events.push(e);
            }
            if !progressed {
                return;
            }
        }
        panic!("pump does not settle");
    }

    /// Run timers until `now + d`.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..100_000 {
            self.pump();
            let next = [self.gw.poll_timeout(), self.net.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.gw.handle_timeout(self.now);
                    self.net.handle_timeout(self.now);
                }
                _ => {
                    self.now = until;
                    self.gw.handle_timeout(self.now);
                    self.net.handle_timeout(self.now);
                    self.pump();
                    return;
                }
            }
        }
        panic!("timers do not settle");
    }

    pub fn device_sends(&mut self, addr: Addr, bytes: &[u8]) {
        self.gw.handle_device_datagram(self.now, addr, bytes);
        self.pump();
    }

    pub fn count_events(&self, f: impl Fn(&GatewayEvent<Addr>) -> bool) -> usize {
        self.events.iter().filter(|e| f(e)).count()
    }
}
