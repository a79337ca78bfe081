//! In-memory harness for the network link endpoint: a gateway stand-in and device stand-ins
//! built from the same crates (CoapEapPeer + EapAkaPeer + Usim + OSCORE, a minimal relay
//! that wraps device datagrams in batches), a store stand-in answering the endpoint's
//! events, and a fake clock.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use capillary_aka::vector::{generate_vector, Usim, UsimConfig};
use capillary_aka::Milenage;
use capillary_coap::msg::option_number;
use capillary_coap::{Code, Message, MessageType};
use capillary_coap_eap::{CoapEapPeer, PeerConfig, PeerEvent, PeerFailure};
use capillary_eap::peer::{EapAkaPeer, PeerConfig as AkaPeerConfig, PeerEvent as AkaPeerEvent};
use capillary_eap::server::RejectReason;
use capillary_network::link::{LinkConfig, LinkEndpoint, LinkEvent};
use capillary_oscore::{ContextParams, RequestBinding, SecurityContext};
use capillary_relay::{Batch, Entry, EntryKind, OutcomeResult};
use capillary_secrets::{Amf, Imsi, Opc, Rand, Secret, Sqn, K};
use capillary_store::{Authorization, SubscriberKind, SubscriberStatus};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

pub const REALM: &str = "wlan.mnc001.mcc001.3gppnetwork.org";
pub const GW_IMSI: &str = "001010000000900";

pub fn imsi(n: u32) -> String {
    format!("00101000000{n:04}")
}

pub fn k_of(imsi: &str) -> K {
    let mut b = [0x46u8; 16];
    for (i, c) in imsi.bytes().enumerate() {
        b[i % 16] ^= c.wrapping_mul(i as u8 + 1);
    }
    K::from_slice(&b).unwrap()
}

pub fn opc() -> Opc {
    Opc::from_hex("cd63cb71954a9f4e48a5994e37a02baf").unwrap()
}

/// What the store stand-in knows about one subscriber.
pub struct Sub {
    pub kind: SubscriberKind,
    pub status: SubscriberStatus,
    pub gateways: Vec<String>,
    seq: u64,
}

/// A CoAP-EAP + EAP-AKA' peer with a USIM and its OSCORE context.
pub struct Peer {
    pub imsi: String,
    usim: Usim,
    aka: EapAkaPeer,
    pub coap: CoapEapPeer,
    rng: StdRng,
    pub ctx: Option<SecurityContext>,
    bindings: HashMap<u16, RequestBinding>,
    uplinks: HashMap<u16, RequestBinding>,
    pub out: VecDeque<Vec<u8>>,
    pub authenticated: bool,
    pub failed: Option<PeerFailure>,
    pub downlinks: Vec<Vec<u8>>,
    pub uplink_acks: Vec<(u16, Code)>,
    pub next_mid: u16,
    /// Protected requests to paths this peer does not serve (the gateway's `r`).
    pub other: VecDeque<(Message, Message, RequestBinding)>,
    /// Protected responses this peer did not match.
    pub other_responses: VecDeque<Message>,
}

impl Peer {
    pub fn new(imsi: &str, rid_i: Vec<u8>, seed: u64) -> Self {
        let k = k_of(imsi);
        Self {
            imsi: imsi.to_owned(),
            usim: Usim::new(&k, &opc(), UsimConfig::default()),
            aka: EapAkaPeer::new(AkaPeerConfig {
                permanent_identity: format!("6{imsi}@{REALM}"),
                network_name: Some("WLAN".into()),
                result_indication: false,
            }),
            coap: CoapEapPeer::new(PeerConfig::new(rid_i, seed as u32, (seed as u16) ^ 0x1234)),
            rng: StdRng::seed_from_u64(seed),
            ctx: None,
            bindings: HashMap::new(),
            uplinks: HashMap::new(),
            out: VecDeque::new(),
            authenticated: false,
            failed: None,
            downlinks: Vec::new(),
            uplink_acks: Vec::new(),
            next_mid: (seed as u16).wrapping_mul(7919),
            other: VecDeque::new(),
            other_responses: VecDeque::new(),
        }
    }

    pub fn start(&mut self, now: Instant) {
        self.coap.start(now);
        self.drain(now);
    }

    pub fn handle(&mut self, now: Instant, bytes: &[u8]) {
        let m = Message::parse(bytes).unwrap();
        if m.has_option(option_number::OSCORE) {
            let Some(ctx) = self.ctx.as_mut() else { return };
            if m.code.is_request() {
                let Ok((inner, binding)) = ctx.unprotect_request(&m) else {
                    return;
                };
                match inner.uri_path().as_slice() {
                    [d] if d == "d" => {
                        self.downlinks.push(inner.payload.clone());
                        let resp = Message::response_to(&inner, Code::CHANGED, 0);
                        let p = ctx.protect_response(&resp, &binding, false).unwrap();
                        self.out.push_back(p.encode().unwrap());
                    }
                    [r] if r == "r" => self.other.push_back((m.clone(), inner, binding)),
                    _ => {
                        self.bindings.insert(m.message_id, binding);
                        self.coap.handle_oscore_message(now, &inner);
                    }
                }
            } else if let Some(mut b) = self.uplinks.get(&m.message_id).cloned() {
                if let Ok(inner) = ctx.unprotect_response(&m, &mut b) {
                    self.uplinks.remove(&m.message_id);
                    self.uplink_acks.push((m.message_id, inner.code));
                }
            } else {
                self.other_responses.push_back(m);
            }
        } else {
            self.coap.handle_message(now, &m);
        }
        self.drain(now);
    }

    pub fn send_uplink(&mut self, payload: &[u8]) -> Vec<u8> {
        let mid = self.next_mid;
        self.next_mid = self.next_mid.wrapping_add(1);
        let mut m = Message::new(
            MessageType::Con,
            Code::POST,
            mid,
            mid.to_be_bytes().to_vec(),
        );
        m.set_uri_path("u");
        m.payload = payload.to_vec();
        let (p, b) = self.ctx.as_mut().unwrap().protect_request(&m).unwrap();
        self.uplinks.insert(mid, b);
        let bytes = p.encode().unwrap();
        self.out.push_back(bytes.clone());
        bytes
    }

    pub fn protect_request(&mut self, m: &Message) -> (Vec<u8>, RequestBinding) {
        let (p, b) = self.ctx.as_mut().unwrap().protect_request(m).unwrap();
        (p.encode().unwrap(), b)
    }

    pub fn drain(&mut self, now: Instant) {
        while let Some(ev) = self.coap.poll_event() {
            match ev {
                PeerEvent::Transmit(m) => self.out.push_back(m.encode().unwrap()),
                PeerEvent::TransmitProtected(m) => {
                    let ctx = self.ctx.as_mut().unwrap();
                    let b = self.bindings.get(&m.message_id).unwrap();
                    let p = ctx.protect_response(&m, b, false).unwrap();
                    self.out.push_back(p.encode().unwrap());
                }
                PeerEvent::EapRequest(req) => {
                    // AKA'-Challenge or AKA'-Reauthentication (RFC 4187 §11: subtypes 1, 13).
                    let challenge =
                        req.get(4) == Some(&50) && matches!(req.get(5), Some(&1) | Some(&13));
                    self.aka.handle_request(&req, &mut self.rng);
                    self.drain_aka(now);
                    if challenge {
                        if let Some((msk, _)) = self.aka.keys_in_progress() {
                            self.coap.provide_msk(msk).unwrap();
                        }
                    }
                }
                PeerEvent::KeysReady(k) => {
                    let mut p =
                        ContextParams::new(k.master_secret.expose(), &k.sender_id, &k.recipient_id);
                    p.master_salt = k.master_salt.expose();
                    self.ctx = Some(SecurityContext::new(p).unwrap());
                }
                PeerEvent::Authenticated { eap_success, .. } => {
                    self.authenticated = true;
                    self.aka.handle_request(&eap_success, &mut self.rng);
                    self.drain_aka(now);
                }
                PeerEvent::Failed(f) => self.failed = Some(f),
                _ => {}
            }
        }
    }

    fn drain_aka(&mut self, now: Instant) {
        while let Some(ev) = self.aka.poll_event() {
            match ev {
                AkaPeerEvent::Send(resp) => {
                    let _ = self.coap.provide_eap_response(now, &resp);
                }
                AkaPeerEvent::RunAka { rand, autn } => {
                    let r = self.usim.authenticate(&rand, &autn);
                    self.aka.provide_aka(r);
                }
                _ => {}
            }
        }
    }
}

/// The gateway stand-in: its own CoAP-EAP peer, a transparent relay (kind 0 entries, one
/// batch per "window" = whenever nothing else is moving), OSCORE on the link.
pub struct GatewaySim {
    pub peer: Peer,
    pub queue: Vec<Entry>,
    pub to_network: VecDeque<Vec<u8>>,
    pub to_devices: VecDeque<(u32, Vec<u8>)>,
    pub outcomes: Vec<(u32, OutcomeResult)>,
    out_req: HashMap<u16, RequestBinding>,
    next_mid: u16,
    /// Every POST /r sent (protected bytes), for replay tests.
    pub sent_batches: Vec<Vec<u8>>,
    /// POST /r requests the network sent to us.
    pub network_batches: usize,
    /// Responses to our POST /r.
    pub responses: Vec<Code>,
}

impl GatewaySim {
    pub fn new(seed: u64) -> Self {
        Self {
            peer: Peer::new(GW_IMSI, vec![0x47], seed),
            queue: Vec::new(),
            to_network: VecDeque::new(),
            to_devices: VecDeque::new(),
            outcomes: Vec::new(),
            out_req: HashMap::new(),
            next_mid: 0x4000,
            sent_batches: Vec::new(),
            network_batches: 0,
            responses: Vec::new(),
        }
    }

    fn deliver(&mut self, payload: &[u8]) {
        let b = Batch::decode(payload).unwrap();
        for e in b.entries {
            match e.kind {
                EntryKind::Coap(m) => self.to_devices.push_back((e.handle, m)),
                EntryKind::Outcome { result, .. } => self.outcomes.push((e.handle, result)),
                _ => {}
            }
        }
    }

    pub fn handle_network(&mut self, now: Instant, bytes: &[u8]) {
        self.peer.handle(now, bytes);
        while let Some((outer, inner, binding)) = self.peer.other.pop_front() {
            self.network_batches += 1;
            self.deliver(&inner.payload);
            let mut resp = Message::response_to(&outer, Code::CHANGED, 0);
            resp.payload = Batch::new(std::mem::take(&mut self.queue))
                .encode()
                .unwrap();
            let ctx = self.peer.ctx.as_mut().unwrap();
            let p = ctx.protect_response(&resp, &binding, false).unwrap();
            self.to_network.push_back(p.encode().unwrap());
        }
        while let Some(m) = self.peer.other_responses.pop_front() {
            let Some(mut b) = self.out_req.remove(&m.message_id) else {
                continue;
            };
            let inner = self
                .peer
                .ctx
                .as_mut()
                .unwrap()
                .unprotect_response(&m, &mut b)
                .unwrap();
            self.responses.push(inner.code);
            if inner.code == Code::CHANGED {
                self.deliver(&inner.payload);
            }
        }
        // An unprotected error answering our POST /r (e.g. 4.01: the network forgot our
        // link context, PROTOCOL.md §6) ends that exchange.
        if let Ok(m) = Message::parse(bytes) {
            if !m.has_option(option_number::OSCORE)
                && m.code.is_response()
                && self.out_req.remove(&m.message_id).is_some()
            {
                self.responses.push(m.code);
            }
        }
    }

    /// The batch window closed: one POST /r with everything collected (NSTART 1).
    pub fn flush(&mut self) -> bool {
        if self.queue.is_empty() || !self.out_req.is_empty() || !self.peer.authenticated {
            return false;
        }
        let mid = self.next_mid;
        self.next_mid = self.next_mid.wrapping_add(1);
        let mut m = Message::new(MessageType::Con, Code::POST, mid, vec![0xb0, mid as u8]);
        m.set_uri_path("r");
        m.payload = Batch::new(std::mem::take(&mut self.queue))
            .encode()
            .unwrap();
        let (bytes, b) = self.peer.protect_request(&m);
        self.out_req.insert(mid, b);
        self.sent_batches.push(bytes.clone());
        self.to_network.push_back(bytes);
        true
    }

    pub fn outstanding(&self) -> bool {
        !self.out_req.is_empty()
    }
}

/// Network + gateway + devices + store stand-in, with a fake clock.
pub struct World {
    pub now: Instant,
    pub net: LinkEndpoint,
    pub gw: GatewaySim,
    pub gw_addr: SocketAddr,
    pub devices: Vec<(u32, Peer)>,
    pub subs: HashMap<String, Sub>,
    pub log: Vec<LinkEvent>,
    pub need_vectors: usize,
    pub authorize: usize,
    /// PrefetchVectors events (PROTOCOL.md §6.2).
    pub prefetches: usize,
    rng: StdRng,
    /// Answer the store's events only when this is true.
    pub store_online: bool,
    parked: Vec<LinkEvent>,
    /// Lose this many gateway → device deliveries.
    pub drop_device_deliveries: usize,
}

impl World {
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, LinkConfig::default())
    }

    pub fn with_config(seed: u64, cfg: LinkConfig) -> Self {
        let mut subs = HashMap::new();
        subs.insert(
            GW_IMSI.to_owned(),
            Sub {
                kind: SubscriberKind::Gateway,
                status: SubscriberStatus::Active,
                gateways: Vec::new(),
                seq: 1,
            },
        );
        Self {
            now: Instant::now(),
            net: LinkEndpoint::new(cfg, seed),
            gw: GatewaySim::new(seed ^ 0x55),
            gw_addr: "192.0.2.1:5683".parse().unwrap(),
            devices: Vec::new(),
            subs,
            log: Vec::new(),
            need_vectors: 0,
            authorize: 0,
            prefetches: 0,
            rng: StdRng::seed_from_u64(seed ^ 0xaa),
            store_online: true,
            parked: Vec::new(),
            drop_device_deliveries: 0,
        }
    }

    pub fn add_sub(&mut self, imsi: &str, kind: SubscriberKind, bound: bool) {
        self.subs.insert(
            imsi.to_owned(),
            Sub {
                kind,
                status: SubscriberStatus::Active,
                gateways: if bound {
                    vec![GW_IMSI.to_owned()]
                } else {
                    Vec::new()
                },
                seq: 1,
            },
        );
    }

    /// A device stand-in behind the gateway with `handle`.
    pub fn add_device(&mut self, imsi: &str, handle: u32) {
        let p = Peer::new(imsi, vec![0x10 + (handle as u8)], 1000 + u64::from(handle));
        self.devices.push((handle, p));
    }

    pub fn device(&mut self, handle: u32) -> &mut Peer {
        &mut self
            .devices
            .iter_mut()
            .find(|(h, _)| *h == handle)
            .unwrap()
            .1
    }

    fn vector(
        &mut self,
        imsi: &Imsi,
        kind: SubscriberKind,
    ) -> Result<capillary_aka::vector::AuthVector, RejectReason> {
        let Some(sub) = self.subs.get_mut(imsi.as_str()) else {
            return Err(RejectReason::Unknown);
        };
        if sub.kind != kind {
            return Err(RejectReason::Unknown);
        }
        if sub.status == SubscriberStatus::Barred {
            return Err(RejectReason::Barred);
        }
        let m = Milenage::new(&k_of(imsi.as_str()), &opc());
        let mut r = [0u8; 16];
        self.rng.fill_bytes(&mut r);
        let sqn = Sqn::from_seq_ind(sub.seq, 0, 5).unwrap();
        sub.seq += 1;
        Ok(generate_vector(&m, &Rand(r), &sqn, &Amf([0x80, 0x00])))
    }

    fn authorization(&self, dev: &Imsi, gw: &Imsi) -> Authorization {
        let status = |i: &Imsi, kind| {
            self.subs
                .get(i.as_str())
                .filter(|s| s.kind == kind)
                .map(|s| s.status)
        };
        Authorization {
            device_status: status(dev, SubscriberKind::Device),
            gateway_status: status(gw, SubscriberKind::Gateway),
            bound: self
                .subs
                .get(dev.as_str())
                .is_some_and(|s| s.gateways.iter().any(|g| g == gw.as_str())),
        }
    }

    fn answer(&mut self, ev: &LinkEvent) {
        match ev {
            LinkEvent::NeedVectors { ticket, requests } => {
                let v = requests.iter().map(|(i, k)| self.vector(i, *k)).collect();
                self.net.provide_vectors(self.now, *ticket, v).unwrap();
            }
            LinkEvent::PrefetchVectors {
                ticket,
                gateway,
                skip,
                limit,
            } => {
                let mut bound: Vec<String> = self
                    .subs
                    .iter()
                    .filter(|(i, s)| {
                        s.gateways.iter().any(|g| g == gateway.as_str())
                            && !skip.iter().any(|k| k.as_str() == i.as_str())
                    })
                    .map(|(i, _)| i.clone())
                    .collect();
                bound.sort();
                bound.truncate(*limit);
                let v = bound
                    .into_iter()
                    .filter_map(|i| {
                        let imsi = Imsi::new(&i).unwrap();
                        let v = self.vector(&imsi, SubscriberKind::Device).ok()?;
                        Some((imsi, v))
                    })
                    .collect();
                self.net.provide_prefetch(self.now, *ticket, v).unwrap();
            }
            LinkEvent::Authorize { ticket, pairs } => {
                let a = pairs
                    .iter()
                    .map(|(d, g)| self.authorization(d, g))
                    .collect();
                self.net
                    .provide_authorization(self.now, *ticket, a)
                    .unwrap();
            }
            _ => {}
        }
    }

    /// Offline store answers now.
    pub fn release_store(&mut self) {
        for ev in std::mem::take(&mut self.parked) {
            self.answer(&ev);
        }
    }

    pub fn step(&mut self) -> bool {
        let mut progressed = false;
        let now = self.now;
        for (h, d) in self.devices.iter_mut() {
            while let Some(b) = d.out.pop_front() {
                self.gw.queue.push(Entry::coap(*h, b));
                progressed = true;
            }
        }
        while let Some(b) = self.gw.peer.out.pop_front() {
            self.net.handle_datagram(now, self.gw_addr, &b);
            progressed = true;
        }
        while let Some(b) = self.gw.to_network.pop_front() {
            self.net.handle_datagram(now, self.gw_addr, &b);
            progressed = true;
        }
        while let Some((to, b)) = self.net.poll_transmit() {
            assert_eq!(to, self.gw_addr);
            self.gw.handle_network(now, &b);
            progressed = true;
        }
        while let Some(ev) = self.net.poll_event() {
            progressed = true;
            match &ev {
                LinkEvent::NeedVectors { .. } => self.need_vectors += 1,
                LinkEvent::Authorize { .. } => self.authorize += 1,
                LinkEvent::PrefetchVectors { .. } => self.prefetches += 1,
                _ => {}
            }
            if self.store_online {
                self.answer(&ev);
            } else if matches!(
                ev,
                LinkEvent::NeedVectors { .. }
                    | LinkEvent::Authorize { .. }
                    | LinkEvent::PrefetchVectors { .. }
            ) {
                self.parked.push(ev);
                continue;
            }
            self.log.push(ev);
        }
        while let Some((h, b)) = self.gw.to_devices.pop_front() {
            progressed = true;
            if self.drop_device_deliveries > 0 {
                self.drop_device_deliveries -= 1;
                continue;
            }
            if let Some((_, d)) = self.devices.iter_mut().find(|(x, _)| *x == h) {
                d.handle(now, &b);
            }
            progressed = true;
        }
        if !progressed {
            progressed = self.gw.flush();
        }
        progressed
    }

    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            if !self.step() {
                return;
            }
        }
        panic!("no quiescence");
    }

    /// Runs (advancing the fake clock to the next timer) until `done` or `limit` passes.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&World) -> bool) {
        let end = self.now + limit;
        loop {
            self.settle();
            if done(self) || self.now >= end {
                return;
            }
            let mut next = self.net.poll_timeout();
            for t in std::iter::once(self.gw.peer.coap.poll_timeout())
                .chain(self.devices.iter().map(|(_, d)| d.coap.poll_timeout()))
                .flatten()
            {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
            let Some(t) = next else { return };
            self.now = self.now.max(t).min(end);
            let now = self.now;
            self.net.handle_timeout(now);
            self.gw.peer.coap.handle_timeout(now);
            self.gw.peer.drain(now);
            for (_, d) in self.devices.iter_mut() {
                d.coap.handle_timeout(now);
                d.drain(now);
            }
        }
    }

    pub fn authenticate_gateway(&mut self) {
        self.gw.peer.start(self.now);
        self.run_until(Duration::from_secs(60), |w| w.gw.peer.authenticated);
        assert!(self.gw.peer.authenticated, "gateway authenticated");
        assert!(self.net.is_gateway_authenticated(self.gw_addr));
    }

    pub fn start_devices(&mut self) {
        let now = self.now;
        for (_, d) in self.devices.iter_mut() {
            d.start(now);
        }
    }
}
