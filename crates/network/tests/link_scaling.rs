//! Gateway-link round trips of an attach do not grow with the number of devices
//! (docs/PROTOCOL.md §1 "Batching", §7; docs/PERFORMANCE.md "Gateway link").
//!
//! In-memory, deterministic, no wall clock: the REAL sans-IO cores — the network's
//! [`LinkEndpoint`], the [`Gateway`] and N [`Device`]s — exchange datagrams through a
//! simulated wire with a fake clock. The store answers at once (zero latency). To make the
//! property meaningful the simulation models what makes a real attach storm spread out in
//! time: the devices share one CPU (each datagram a device handles costs `device_cpu`, so the
//! answers of N devices to one wave trickle in over `N × device_cpu`), the network spends
//! `network_cpu` per batch entry, and every link has a one-way delay. A batcher that cut
//! batches on a fixed window would need more round trips as N (and so the spread) grows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use capillary_aka::vector::{generate_vector, AuthVector};
use capillary_aka::Milenage;
use capillary_coap::{Code, Message, MessageType};
use capillary_device::{Device, DeviceConfig, DeviceEvent};
use capillary_eap::server::RejectReason;
use capillary_gateway::{Gateway, GatewayConfig, GatewayEvent, GatewayOptions, Transmit};
use capillary_network::link::{DropCause, LinkConfig, LinkEndpoint, LinkEvent};
use capillary_secrets::{Amf, Imsi, Opc, Rand, Secret, Sqn, K};
use capillary_store::{Authorization, SubscriberKind, SubscriberStatus};

/// A hook on the simulated wire: it may change the datagram, and `Some(copies)` replaces
/// it by `copies` copies (0: lost, 2: duplicated).
type WireHook = Box<dyn FnMut(&Dest, &mut Vec<u8>) -> Option<usize>>;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

const GW_IMSI: &str = "001019000000001";

fn device_imsi(i: u32) -> String {
    format!("0010100{:08}", i + 1)
}

fn k_of(imsi: &str) -> K {
    let mut b = [0x5au8; 16];
    for (i, c) in imsi.bytes().enumerate() {
        b[i % 16] ^= c.wrapping_mul(i as u8 + 3);
    }
    K::from_slice(&b).unwrap()
}

fn opc() -> Opc {
    Opc::from_hex("cd63cb71954a9f4e48a5994e37a02baf").unwrap()
}

/// Timing of the simulated system.
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// One-way delay of the gateway link.
    link_delay: Duration,
    /// One-way delay of the capillary link.
    capillary_delay: Duration,
    /// CPU time of one device datagram (all devices share one CPU).
    device_cpu: Duration,
    /// Network CPU time per batch entry received.
    network_cpu: Duration,
}

#[derive(Debug)]
enum Dest {
    Network,
    GatewayFromNetwork,
    GatewayFromDevice(u32),
    Device(u32),
    Start(u32),
}

/// Figures of one attach wave.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Wave {
    link_round_trips: u64,
    /// One-way batches (NON with No-Response, PROTOCOL.md §4.1), both directions.
    link_one_way: u64,
    gateway_batches: u64,
    network_batches: u64,
    store_round_trips: u64,
    link_retransmissions: u64,
    duplicates: u64,
}

struct Sim {
    t: Timing,
    now: Instant,
    net: LinkEndpoint,
    gw: Gateway<u32>,
    gw_addr: SocketAddr,
    devices: Vec<Device>,
    wire: BTreeMap<(Instant, u64), (Dest, Vec<u8>)>,
    seq: u64,
    device_cpu_free: Instant,
    network_cpu_free: Instant,
    dirty: BTreeSet<u32>,
    seqs: HashMap<String, u64>,
    rng: StdRng,
    gw_authenticated: bool,
    authenticated: usize,
    failed: usize,
    acked: usize,
    delivered: usize,
    /// Devices the network reported authenticated (key confirmation received).
    net_authenticated: usize,
    /// Devices send one uplink as soon as they are authenticated.
    uplink: bool,
    hook: Option<WireHook>,
    /// Uplinks that failed, with the device and the reason.
    uplink_failures: Vec<(u32, capillary_device::DeviceError)>,
}

/// The options of PROTOCOL.md §5 and §4.1 (local identity, one-way key confirmation),
/// all on or all off.
fn options(on: bool) -> GatewayOptions {
    GatewayOptions {
        local_identity: on,
        confirm_one_way: on,
        ..GatewayOptions::default()
    }
}

impl Sim {
    fn new(n: u32, t: Timing, seed: u64) -> Self {
        Self::with_options(n, t, seed, options(true))
    }

    fn with_options(n: u32, t: Timing, seed: u64, opts: GatewayOptions) -> Self {
        let now = Instant::now();
        let gw_imsi = Imsi::new(GW_IMSI).unwrap();
        let mut gcfg = GatewayConfig::new(gw_imsi, k_of(GW_IMSI), opc());
        gcfg.max_devices = gcfg.max_devices.max(n as usize);
        let gw = Gateway::with_options(gcfg, opts, seed ^ 1);
        let devices = (0..n)
            .map(|i| {
                let imsi = device_imsi(i);
                let cfg = DeviceConfig::new(Imsi::new(&imsi).unwrap(), k_of(&imsi), opc());
                Device::new(cfg, u64::from(i) ^ 0x00de_71ce)
            })
            .collect();
        Self {
            t,
            now,
            // The round-trip figures of PROTOCOL.md §7 are for a full attach wave without
            // the store-side optimisations of §6.1/§6.2 (tested in link_signalling.rs):
            // AT_NEXT_REAUTH_ID makes each AKA'-Challenge larger, so fewer fit one 60 KiB
            // batch (§4.1), and this harness answers no prefetch.
            net: LinkEndpoint::new(
                LinkConfig {
                    fast_reauth: false,
                    prefetch_vectors: false,
                    ..LinkConfig::default()
                },
                seed ^ 2,
            ),
            gw,
            gw_addr: "192.0.2.1:40000".parse().unwrap(),
            devices,
            wire: BTreeMap::new(),
            seq: 0,
            device_cpu_free: now,
            network_cpu_free: now,
            dirty: BTreeSet::new(),
            seqs: HashMap::new(),
            rng: StdRng::seed_from_u64(seed ^ 3),
            gw_authenticated: false,
            authenticated: 0,
            failed: 0,
            acked: 0,
            delivered: 0,
            net_authenticated: 0,
            uplink: true,
            hook: None,
            uplink_failures: Vec::new(),
        }
    }

    fn send(&mut self, at: Instant, to: Dest, mut bytes: Vec<u8>) {
        let copies = match self.hook.as_mut() {
            Some(h) => h(&to, &mut bytes).unwrap_or(1),
            None => 1,
        };
        if copies == 0 {
            return;
        }
        for _ in 1..copies {
            self.seq += 1;
            let dup = match &to {
                Dest::Network => Dest::Network,
                Dest::GatewayFromNetwork => Dest::GatewayFromNetwork,
                Dest::GatewayFromDevice(i) => Dest::GatewayFromDevice(*i),
                Dest::Device(i) => Dest::Device(*i),
                Dest::Start(i) => Dest::Start(*i),
            };
            self.wire.insert((at, self.seq), (dup, bytes.clone()));
        }
        self.seq += 1;
        self.wire.insert((at, self.seq), (to, bytes));
    }

    /// A datagram for device `i`: it waits for the shared device CPU.
    fn send_to_device(&mut self, i: u32, bytes: Vec<u8>, start: bool) {
        let arrival = self.now + self.t.capillary_delay;
        let at = arrival.max(self.device_cpu_free) + self.t.device_cpu;
        self.device_cpu_free = at;
        let dest = if start {
            Dest::Start(i)
        } else {
            Dest::Device(i)
        };
        self.send(at, dest, bytes);
    }

    fn vector(&mut self, imsi: &Imsi, kind: SubscriberKind) -> Result<AuthVector, RejectReason> {
        let is_gw = imsi.as_str() == GW_IMSI;
        let known = is_gw
            || imsi.as_str().starts_with("0010100")
                && self.devices.len() as u64
                    >= imsi.as_str()[7..].parse::<u64>().unwrap_or(u64::MAX);
        if !known || (is_gw != (kind == SubscriberKind::Gateway)) {
            return Err(RejectReason::Unknown);
        }
        let seq = self.seqs.entry(imsi.as_str().to_owned()).or_insert(1);
        let sqn = Sqn::from_seq_ind(*seq, 0, 5).unwrap();
        *seq += 1;
        let mut r = [0u8; 16];
        self.rng.fill_bytes(&mut r);
        let m = Milenage::new(&k_of(imsi.as_str()), &opc());
        Ok(generate_vector(&m, &Rand(r), &sqn, &Amf([0x80, 0x00])))
    }

    fn network_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::NeedVectors { ticket, requests } => {
                let v = requests.iter().map(|(i, k)| self.vector(i, *k)).collect();
                self.net.provide_vectors(self.now, ticket, v).unwrap();
            }
            LinkEvent::NeedResync { ticket, imsi, .. } => {
                let v = self.vector(&imsi, SubscriberKind::Device);
                self.net.provide_vectors(self.now, ticket, vec![v]).unwrap();
            }
            LinkEvent::Authorize { ticket, pairs } => {
                let a = pairs
                    .iter()
                    .map(|_| Authorization {
                        device_status: Some(SubscriberStatus::Active),
                        gateway_status: Some(SubscriberStatus::Active),
                        bound: true,
                    })
                    .collect();
                self.net.provide_authorization(self.now, ticket, a).unwrap();
            }
            LinkEvent::Uplink { .. } => self.delivered += 1,
            LinkEvent::Authenticated {
                kind: SubscriberKind::Device,
                ..
            } => self.net_authenticated += 1,
            _ => {}
        }
    }

    /// Moves every output produced at `now` onto the wire (store answers at once).
    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.net.poll_event() {
                progressed = true;
                self.network_event(ev);
            }
            while let Some((to, bytes)) = self.net.poll_transmit() {
                progressed = true;
                assert_eq!(to, self.gw_addr);
                let at = self.now.max(self.network_cpu_free) + self.t.link_delay;
                self.send(at, Dest::GatewayFromNetwork, bytes);
            }
            while let Some(tx) = self.gw.poll_transmit() {
                progressed = true;
                match tx {
                    Transmit::ToNetwork(b) => {
                        let at = self.now + self.t.link_delay;
                        self.send(at, Dest::Network, b);
                    }
                    Transmit::ToDevice(i, b) => self.send_to_device(i, b, false),
                }
            }
            while let Some(ev) = self.gw.poll_event() {
                if ev == GatewayEvent::Authenticated {
                    self.gw_authenticated = true;
                }
            }
            for i in std::mem::take(&mut self.dirty) {
                let now = self.now;
                let d = &mut self.devices[i as usize];
                let mut out = Vec::new();
                while let Some(b) = d.poll_transmit() {
                    out.push(b);
                }
                while let Some(ev) = d.poll_event() {
                    match ev {
                        DeviceEvent::Authenticated { .. } => {
                            self.authenticated += 1;
                            if self.uplink {
                                d.send_uplink(now, b"{\"seq\":0}").unwrap();
                                while let Some(b) = d.poll_transmit() {
                                    out.push(b);
                                }
                            }
                        }
                        DeviceEvent::UplinkAcked { .. } => self.acked += 1,
                        DeviceEvent::UplinkFailed { reason, .. } => {
                            self.uplink_failures.push((i, reason));
                        }
                        DeviceEvent::Failed(f) => {
                            if self.failed < 3 {
                                eprintln!("device {i} failed: {f:?}");
                            }
                            self.failed += 1
                        }
                        _ => {}
                    }
                }
                for b in out {
                    progressed = true;
                    let at = self.now + self.t.capillary_delay;
                    self.send(at, Dest::GatewayFromDevice(i), b);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn deliver(&mut self, dest: Dest, bytes: &[u8]) {
        let now = self.now;
        match dest {
            Dest::Network => {
                let start = now.max(self.network_cpu_free);
                let before = self.net.stats().entries_in;
                self.net.handle_datagram(start, self.gw_addr, bytes);
                let entries = self.net.stats().entries_in - before;
                let cost = self.t.network_cpu * u32::try_from(entries).unwrap();
                self.network_cpu_free = start + cost;
            }
            Dest::GatewayFromNetwork => self.gw.handle_network_datagram(now, bytes),
            Dest::GatewayFromDevice(i) => self.gw.handle_device_datagram(now, i, bytes),
            Dest::Device(i) => {
                self.devices[i as usize].handle_datagram(now, bytes);
                self.dirty.insert(i);
            }
            Dest::Start(i) => {
                self.devices[i as usize].start(now);
                self.dirty.insert(i);
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        let devs = self.devices.iter().filter_map(Device::poll_timeout).min();
        [self.net.poll_timeout(), self.gw.poll_timeout(), devs]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs until `done` holds (checked whenever the system is quiet at an instant) or
    /// `limit` of simulated time passes.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.drain();
            if done(self) {
                return true;
            }
            let next_msg = self.wire.keys().next().map(|k| k.0);
            let Some(next) = [next_msg, self.next_timer()].into_iter().flatten().min() else {
                return false;
            };
            if next > end {
                return false;
            }
            self.now = self.now.max(next);
            // Like a driver that reads every datagram already received before it polls the
            // outputs (so the batches of one wave share the store round trips).
            while let Some(entry) = self.wire.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (dest, bytes) = entry.remove();
                self.deliver(dest, &bytes);
            }
            self.drain();
            let now = self.now;
            if self.net.poll_timeout().is_some_and(|t| t <= now) {
                self.net.handle_timeout(now);
            }
            if self.gw.poll_timeout().is_some_and(|t| t <= now) {
                self.gw.handle_timeout(now);
            }
            for (i, d) in self.devices.iter_mut().enumerate() {
                if d.poll_timeout().is_some_and(|t| t <= now) {
                    d.handle_timeout(now);
                    self.dirty.insert(i as u32);
                }
            }
        }
    }

    fn figures(&self) -> Wave {
        let g = self.gw.stats();
        let n = self.net.stats();
        Wave {
            link_round_trips: g.link_round_trips,
            link_one_way: g.link_one_way + g.link_one_way_in,
            gateway_batches: g.batches_sent,
            // Network-initiated exchanges: every completed exchange that is not one of
            // the gateway's (confirmable) batches.
            network_batches: g
                .link_exchanges
                .saturating_sub(g.batches_sent - g.link_one_way),
            store_round_trips: n.store_round_trips,
            link_retransmissions: g.link_retransmissions,
            duplicates: n.duplicates + g.link_duplicates,
        }
    }

    fn authenticate_gateway(&mut self) {
        self.gw.start(self.now);
        assert!(
            self.run_until(Duration::from_secs(30), |s| s.gw_authenticated
                && s.net.is_gateway_authenticated(s.gw_addr)),
            "the gateway authenticates"
        );
    }

    /// One attach wave: every device starts at once (through the shared device CPU) and
    /// authenticates; with `self.uplink` each then sends one uplink, like `capillary demo`.
    /// Done when the network confirmed every device (and delivered every uplink), then
    /// one more simulated second lets the last one-way batches land. Returns its figures.
    fn attach_wave(&mut self) -> Wave {
        self.attach_wave_within(Duration::from_secs(120))
    }

    fn attach_wave_within(&mut self, limit: Duration) -> Wave {
        let before = self.figures();
        self.authenticated = 0;
        self.acked = 0;
        self.delivered = 0;
        self.net_authenticated = 0;
        for i in 0..self.devices.len() as u32 {
            self.send_to_device(i, Vec::new(), true);
        }
        let n = self.devices.len();
        let uplink = self.uplink;
        let ok = self.run_until(limit, move |s| {
            s.authenticated == n
                && s.net_authenticated >= n
                && (!uplink || (s.acked == n && s.delivered == n))
        });
        assert!(
            ok,
            "attach of {n}: {} authenticated ({} at the network), {} failed, {} acked, {} delivered; {:?} {:?}",
            self.authenticated, self.net_authenticated, self.failed, self.acked, self.delivered, self.net.stats(), self.gw.stats()
        );
        assert_eq!(self.failed, 0);
        self.run_until(Duration::from_secs(1), |_| false);
        let after = self.figures();
        Wave {
            link_round_trips: after.link_round_trips - before.link_round_trips,
            link_one_way: after.link_one_way - before.link_one_way,
            gateway_batches: after.gateway_batches - before.gateway_batches,
            network_batches: after.network_batches - before.network_batches,
            store_round_trips: after.store_round_trips - before.store_round_trips,
            link_retransmissions: after.link_retransmissions - before.link_retransmissions,
            duplicates: after.duplicates - before.duplicates,
        }
    }
}

/// One attach wave of `n` devices on a fresh system, with the §5/§4.1 options `on` or off,
/// each device sending one uplink when `uplink`.
fn attach(n: u32, t: Timing, on: bool, uplink: bool) -> Wave {
    let mut sim = Sim::with_options(n, t, 7, options(on));
    sim.uplink = uplink;
    sim.authenticate_gateway();
    let w = sim.attach_wave();
    eprintln!("N={n} on={on} uplink={uplink} {t:?}: {w:?}");
    w
}

/// Loaded-system timing: 1 ms one-way on both links, 100 µs of device CPU per datagram
/// (1,000 devices answer one wave over 100 ms, five times the 20 ms batching window), 20 µs
/// of network CPU per entry.
const LOADED: Timing = Timing {
    link_delay: Duration::from_millis(1),
    capillary_delay: Duration::from_millis(1),
    device_cpu: Duration::from_micros(100),
    network_cpu: Duration::from_micros(20),
};

const INSTANT: Timing = Timing {
    link_delay: Duration::ZERO,
    capillary_delay: Duration::ZERO,
    device_cpu: Duration::ZERO,
    network_cpu: Duration::ZERO,
};

/// The requirement (docs/PROTOCOL.md §7): an attach costs the same small number of
/// gateway-link round trips for any number of devices. With the local identity step (§5)
/// and one-way key confirmations (§4.1): TWO round trips (identities up in `kind 3`
/// entries / challenges down, challenge responses up / EAP-Success down), then the key
/// confirmations one-way up and the "authenticated" outcomes one-way down (exchanges in
/// flight together count once, see `GatewayStats::link_round_trips`).
#[test]
fn attach_round_trips_do_not_grow_with_n() {
    let waves: Vec<(u32, Wave)> = [1, 10, 100, 1000]
        .map(|n| (n, attach(n, LOADED, true, false)))
        .into();
    for (n, w) in &waves {
        assert!(
            w.link_round_trips <= 2,
            "round trips of an attach of {n}: {w:?}"
        );
        assert_eq!(w.link_round_trips, 2, "N={n}");
        assert!(
            w.link_one_way >= 2,
            "key confirmations and outcomes one-way (N={n})"
        );
        assert_eq!(w.link_retransmissions, 0, "N={n}");
        assert_eq!(
            w.duplicates, 0,
            "no retransmission crossed the link (N={n})"
        );
        assert_eq!(
            w.network_batches, 0,
            "everything rode on the responses (N={n})"
        );
        // NeedVectors + Authorize for the identities, Authorize for the challenge
        // responses, Authorize for the key confirmations (§6), whatever N.
        assert_eq!(
            w.store_round_trips, 4,
            "store round trips of an attach of {n}"
        );
    }
    // A wave of 1,000 devices needs two datagrams for some of its steps (64 KiB per
    // batch, PROTOCOL.md §4); they are sent together and count once.
    assert!(waves[3].1.gateway_batches > waves[1].1.gateway_batches);
}

/// The same waves with the options off: the triggers travel up and the
/// EAP-Request/Identity messages come down in one more round trip, and the key
/// confirmations in a confirmable batch of their own: 3 + 1.
#[test]
fn attach_round_trips_with_the_options_off() {
    for n in [1, 10, 100, 1000] {
        let w = attach(n, LOADED, false, false);
        assert_eq!(w.link_round_trips, 4, "3 + 1 round trips (N={n}): {w:?}");
        assert_eq!(w.link_one_way, 0, "N={n}");
        assert_eq!(w.link_retransmissions + w.duplicates, 0, "N={n}");
        assert_eq!(w.store_round_trips, 4, "N={n}");
    }
}

/// With a first uplink from every device (`capillary demo`): the uplinks need their
/// answers, so the key confirmations travel with them in a third round trip (a fourth
/// with the options off).
#[test]
fn attach_with_uplinks_round_trips() {
    for n in [10, 1000] {
        let on = attach(n, LOADED, true, true);
        assert_eq!(on.link_round_trips, 3, "N={n}: {on:?}");
        assert_eq!(on.store_round_trips, 4, "N={n}");
        assert_eq!(on.network_batches, 0, "N={n}");
        let off = attach(n, LOADED, false, true);
        assert_eq!(off.link_round_trips, 4, "N={n}: {off:?}");
        assert_eq!(off.store_round_trips, 4, "N={n}");
    }
}

/// Without load (every device answers at once) the figures are the same.
#[test]
fn attach_round_trips_without_load() {
    for n in [1, 10, 300] {
        let w = attach(n, INSTANT, true, false);
        assert_eq!(w.link_round_trips, 2, "N={n}");
        assert_eq!(w.store_round_trips, 4, "N={n}");
        assert_eq!(w.link_retransmissions + w.duplicates, 0, "N={n}");
        let w = attach(n, INSTANT, false, false);
        assert_eq!(w.link_round_trips, 4, "N={n}");
    }
}

/// Ten thousand devices behind one gateway: a wave of about 20 datagrams per step. All
/// arrive at the same instant here, so the gateway must hold the whole wave: NSTART
/// (which also bounds the full batches held, PROTOCOL.md §4.1) is raised to 32 for this
/// gateway. Still two round trips.
#[test]
#[ignore = "about 10 s in a debug build; run with --ignored (or --release)"]
fn ten_thousand_devices_two_round_trips() {
    let mut opts = options(true);
    opts.link.nstart = 32;
    let mut sim = Sim::with_options(10_000, INSTANT, 7, opts);
    sim.uplink = false;
    sim.authenticate_gateway();
    let w = sim.attach_wave();
    eprintln!("N=10000: {w:?}");
    assert_eq!(w.link_round_trips, 2, "{w:?}");
    assert_eq!(w.link_retransmissions, 0);
}

/// A second wave on the same gateway costs the same as the first.
#[test]
fn second_wave_costs_the_same() {
    let mut sim = Sim::new(200, LOADED, 11);
    sim.authenticate_gateway();
    let first = sim.attach_wave();
    // The same devices re-authenticate (new triggers, new sessions).
    let second = sim.attach_wave();
    assert_eq!(first.link_round_trips, 3);
    assert_eq!(second, first);
}

/// Is `bytes` the device's 2.01 answer to the gateway's local EAP-Request/Identity (the
/// only piggybacked 2.01 whose EAP packet is an EAP-Response/Identity)?
fn is_identity_answer(bytes: &[u8]) -> bool {
    Message::parse(bytes).is_ok_and(|m| {
        m.ty == MessageType::Ack
            && m.code == Code::CREATED
            && m.payload.first() == Some(&2)
            && m.payload.get(4) == Some(&1)
    })
}

/// PROTOCOL.md §5: the device's answer to the local EAP-Request/Identity is lost; the
/// gateway retransmits its request (RFC 7252 §4.2), the device answers from its cache, and
/// the attach completes with one `kind 3` per device.
#[test]
fn local_request_retransmitted_when_the_answer_is_lost() {
    let mut sim = Sim::new(10, LOADED, 21);
    sim.authenticate_gateway();
    let mut lost = 0;
    sim.hook = Some(Box::new(move |to, b| {
        let answer =
            matches!(to, Dest::GatewayFromDevice(i) if i % 3 == 0) && is_identity_answer(b);
        if answer && lost < 4 {
            lost += 1;
            return Some(0);
        }
        None
    }));
    sim.attach_wave_within(Duration::from_secs(60));
    let g = sim.gw.stats();
    assert_eq!(g.local_identity_requests, 10);
    assert_eq!(g.local_identity_retransmissions, 4);
    assert_eq!(g.local_identity_forwarded, 10);
    assert_eq!(sim.net.stats().local_identities, 10);
    assert_eq!(sim.authenticated, 10);
}

/// Every datagram between the devices and the gateway arrives twice: repeated triggers and
/// a device's 2.01 answered twice are absorbed by the gateway (one `kind 3` per device),
/// the rest is deduplicated end to end, and every device attaches once.
#[test]
fn duplicated_capillary_datagrams() {
    let mut sim = Sim::new(20, LOADED, 23);
    sim.authenticate_gateway();
    sim.hook = Some(Box::new(|to, _| {
        matches!(to, Dest::GatewayFromDevice(_) | Dest::Device(_)).then_some(2)
    }));
    sim.attach_wave_within(Duration::from_secs(60));
    let g = sim.gw.stats();
    assert_eq!(g.local_identity_forwarded, 20);
    assert!(g.local_identity_duplicates >= 20, "{g:?}");
    assert_eq!(sim.net.stats().local_identities, 20);
    assert_eq!(sim.net.stats().failures.len(), 0);
    assert_eq!(sim.authenticated, 20);
}

/// A lossy system: one datagram in ten lost on both links, at random (seeded). Every
/// device still attaches (end-to-end retransmissions: the gateway's local request, the
/// gateway link's CON batches, the network's CoAP-EAP requests; a lost one-way key
/// confirmation is recovered by the network retransmitting EAP-Success).
#[test]
fn lossy_links_still_attach() {
    for on in [true, false] {
        let mut sim = Sim::with_options(30, LOADED, 29, options(on));
        sim.authenticate_gateway();
        let mut rng = StdRng::seed_from_u64(31);
        sim.hook = Some(Box::new(move |to, _| {
            if matches!(to, Dest::Start(_)) {
                return None;
            }
            (rng.next_u32() % 10 == 0).then_some(0)
        }));
        sim.attach_wave_within(Duration::from_secs(600));
        assert_eq!(sim.authenticated, 30, "on={on}");
        assert_eq!(sim.failed, 0, "on={on}");
    }
}

/// Tampered gateway-link datagrams (the last byte, in the OSCORE tag, flipped in one in
/// five, both directions) are dropped by OSCORE and recovered: confirmable batches by
/// their retransmission, a one-way key-confirmation batch by the network retransmitting
/// EAP-Success and the device answering from its cache.
#[test]
fn tampered_link_datagrams() {
    let mut sim = Sim::new(20, LOADED, 37);
    sim.authenticate_gateway();
    let mut rng = StdRng::seed_from_u64(41);
    sim.hook = Some(Box::new(move |to, b| {
        if matches!(to, Dest::Network | Dest::GatewayFromNetwork) && rng.next_u32() % 5 == 0 {
            if let Some(x) = b.last_mut() {
                *x ^= 0x01;
            }
        }
        None
    }));
    sim.attach_wave_within(Duration::from_secs(600));
    assert_eq!(sim.authenticated, 20);
    assert_eq!(sim.net_authenticated, 20);
    assert_eq!(sim.failed, 0);
    let dropped = sim.net.stats().dropped.values().sum::<u64>() + sim.gw.stats().link_dropped;
    assert!(dropped > 0, "some tampered datagrams were dropped");
}

/// PROTOCOL.md §5: the network's first EAP request after a `kind 3` (the AKA'-Challenge)
/// carries another EAP Identifier than the gateway's EAP-Request/Identity (RFC 3748 §4.1).
#[test]
fn network_identifiers_follow_the_gateways() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let mut sim = Sim::new(30, LOADED, 43);
    sim.authenticate_gateway();
    /// Per device: the EAP (Code, Identifier, Type) of every POST it receives.
    type Seen = HashMap<u32, Vec<(u8, u8, u8)>>;
    let seen: Rc<RefCell<Seen>> = Rc::default();
    let s2 = seen.clone();
    sim.hook = Some(Box::new(move |to, b| {
        if let Dest::Device(i) = to {
            if let Ok(m) = Message::parse(b) {
                if m.code == Code::POST && m.payload.len() >= 5 {
                    let p = &m.payload;
                    let mut s = s2.borrow_mut();
                    let v = s.entry(*i).or_default();
                    if v.last().map(|x| x.1) != Some(p[1]) {
                        v.push((p[0], p[1], p[4]));
                    }
                }
            }
        }
        None
    }));
    sim.attach_wave_within(Duration::from_secs(60));
    assert_eq!(sim.net.stats().local_identities, 30);
    let seen = seen.borrow();
    assert_eq!(seen.len(), 30);
    for (i, v) in seen.iter() {
        assert!(v.len() >= 2, "device {i}: {v:?}");
        assert_eq!(
            (v[0].0, v[0].2),
            (1, 1),
            "device {i}: EAP-Request/Identity first"
        );
        assert_eq!(
            v[1].0, 1,
            "device {i}: then an EAP request from the network"
        );
        assert_ne!(v[1].1, v[0].1, "device {i}: another Identifier");
    }
}

impl Sim {
    /// The gateway restarts: a fresh [`Gateway`] at the same link address, with no
    /// handles and no link context (`idle`: its device idle timeout).
    fn reboot_gateway(&mut self, seed: u64, idle: Option<Duration>) {
        let gw_imsi = Imsi::new(GW_IMSI).unwrap();
        let mut gcfg = GatewayConfig::new(gw_imsi, k_of(GW_IMSI), opc());
        gcfg.max_devices = gcfg.max_devices.max(self.devices.len());
        let mut opts = options(true);
        if let Some(idle) = idle {
            opts.device_idle_timeout = idle;
        }
        self.gw = Gateway::with_options(gcfg, opts, seed);
        self.gw_authenticated = false;
    }

    /// Device `i` sends one uplink; runs until it is acknowledged (or `limit`).
    fn uplink_from(&mut self, i: u32, limit: Duration) -> bool {
        let acked = self.acked;
        let now = self.now;
        self.devices[i as usize].send_uplink(now, b"up").unwrap();
        self.dirty.insert(i);
        self.run_until(limit, move |s| s.acked > acked)
    }
}

/// PROTOCOL.md §4 "Gateway restart": a rebooted gateway numbers its devices afresh. Its new
/// authentication (no message under the old link context during the run) voids its old
/// handles; each device's OSCORE-protected uplink on its new handle is routed by its kid to
/// its context, which is re-bound to the new handle — no device authenticates again, no
/// uplink is lost or delivered to another device's session.
#[test]
fn gateway_reboot_rebinds_device_contexts_by_kid() {
    let n = 6;
    let mut sim = Sim::new(n, LOADED, 21);
    sim.authenticate_gateway();
    sim.attach_wave();
    let before = sim.net.stats();
    sim.reboot_gateway(99, None);
    sim.authenticate_gateway();
    // The network confirms the gateway when its protected 2.04 arrives.
    sim.run_until(Duration::from_secs(1), |_| false);
    assert_eq!(
        sim.net.stats().handles_voided - before.handles_voided,
        u64::from(n)
    );
    // The devices speak in reverse order: device n-1 gets handle 0 (device 0's before).
    sim.authenticated = 0;
    sim.delivered = 0;
    for i in (0..n).rev() {
        assert!(sim.uplink_from(i, Duration::from_secs(10)), "device {i}");
    }
    let after = sim.net.stats();
    assert_eq!(sim.delivered, n as usize);
    assert_eq!(after.rebound - before.rebound, u64::from(n));
    assert_eq!(sim.authenticated, 0, "no device authenticated again");
    assert!(sim.uplink_failures.is_empty(), "{:?}", sim.uplink_failures);
    for cause in [DropCause::OscoreInvalid, DropCause::NoContext] {
        assert_eq!(
            after.dropped.get(&cause),
            before.dropped.get(&cause),
            "{cause:?}"
        );
    }
    // The re-bound contexts serve downlinks on the new handles.
    let imsi = Imsi::new(&device_imsi(0)).unwrap();
    assert!(sim.net.is_device_authenticated(&imsi));
}

/// A re-keying of a live link (the gateway relays under its old context during its new
/// run) keeps the handles: nothing is voided.
#[test]
fn gateway_rekeying_keeps_handles() {
    // A 50 ms link: the uplink's batch (20 ms window) arrives while the run is under way.
    let slow = Timing {
        link_delay: Duration::from_millis(50),
        ..LOADED
    };
    let mut sim = Sim::new(2, slow, 22);
    sim.authenticate_gateway();
    sim.attach_wave();
    let now = sim.now;
    sim.gw.start(now);
    sim.gw_authenticated = false;
    // An uplink relayed under the old link context while the run is under way.
    let acked = sim.acked;
    sim.devices[0].send_uplink(now, b"during").unwrap();
    sim.dirty.insert(0);
    assert!(
        sim.run_until(Duration::from_secs(30), move |s| s.gw_authenticated
            && s.acked > acked)
    );
    assert_eq!(sim.net.stats().handles_voided, 0);
    assert!(sim.uplink_from(1, Duration::from_secs(10)));
    assert_eq!(sim.net.stats().rebound, 0);
}

/// RFC 8613 §8.2: a protected uplink for which the network has no context behind this
/// gateway (here: the gateway reported the idle device `gone`, so the network dropped its
/// session, then the device spoke again) gets an unprotected 4.01, and the device
/// authenticates again at once — not after the CoAP give-up (~93 s).
#[test]
fn device_without_context_gets_4_01_and_reauthenticates() {
    let mut sim = Sim::new(1, LOADED, 23);
    sim.reboot_gateway(5, Some(Duration::from_secs(20)));
    sim.authenticate_gateway();
    sim.attach_wave();
    let dropped_before = sim.net.stats().dropped.get(&DropCause::NoContext).copied();
    // Idle: the gateway reports the device gone, the network forgets its session.
    sim.run_until(Duration::from_secs(60), |_| false);
    assert!(!sim
        .net
        .is_device_authenticated(&Imsi::new(&device_imsi(0)).unwrap()));
    sim.authenticated = 0;
    let now = sim.now;
    sim.devices[0].send_uplink(now, b"lost").unwrap();
    sim.dirty.insert(0);
    // The test never calls Device::start: the device re-authenticates on the 4.01.
    assert!(sim.run_until(Duration::from_secs(20), |s| s.authenticated == 1));
    assert!(
        matches!(sim.uplink_failures.as_slice(), [(0, capillary_device::DeviceError::Rejected(c))] if *c == Code::UNAUTHORIZED),
        "{:?}",
        sim.uplink_failures
    );
    assert!(sim.net.stats().dropped.get(&DropCause::NoContext).copied() > dropped_before);
    assert!(sim.uplink_from(0, Duration::from_secs(10)));
}

/// Same seeds, same run: with losses (so the network's timers fire for many sessions at
/// once) the network sends exactly the same datagrams at the same simulated times twice
/// (its timers run in deadline order, gateways in address order, not in hash order).
#[test]
fn same_seed_same_network_output() {
    let run = || {
        let mut sim = Sim::new(40, INSTANT, 43);
        sim.authenticate_gateway();
        let start = sim.now;
        let out = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let rec = out.clone();
        let mut rng = StdRng::seed_from_u64(47);
        sim.hook = Some(Box::new(move |to, bytes| {
            if matches!(to, Dest::GatewayFromNetwork) {
                rec.borrow_mut().push(bytes.clone());
            }
            if matches!(to, Dest::Device(_)) && rng.next_u32() % 4 == 0 {
                return Some(0);
            }
            None
        }));
        sim.attach_wave_within(Duration::from_secs(600));
        let elapsed = sim.now - start;
        let v = out.borrow().clone();
        (v, elapsed, sim.net.stats())
    };
    let (a, ta, sa) = run();
    let (b, tb, sb) = run();
    assert_eq!(sa, sb);
    assert_eq!(ta, tb);
    assert_eq!(a.len(), b.len());
    assert!(a == b, "network output differs between two same-seed runs");
}
