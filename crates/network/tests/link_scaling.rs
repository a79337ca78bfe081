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
use capillary_device::{Device, DeviceConfig, DeviceEvent};
use capillary_eap::server::RejectReason;
use capillary_gateway::{Gateway, GatewayConfig, GatewayEvent, Transmit};
use capillary_network::link::{LinkConfig, LinkEndpoint, LinkEvent};
use capillary_secrets::{Amf, Imsi, Opc, Rand, Secret, Sqn, K};
use capillary_store::{Authorization, SubscriberKind, SubscriberStatus};
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
}

impl Sim {
    fn new(n: u32, t: Timing, seed: u64) -> Self {
        let now = Instant::now();
        let gw_imsi = Imsi::new(GW_IMSI).unwrap();
        let gw = Gateway::new(GatewayConfig::new(gw_imsi, k_of(GW_IMSI), opc()), seed ^ 1);
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
            net: LinkEndpoint::new(LinkConfig::default(), seed ^ 2),
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
        }
    }

    fn send(&mut self, at: Instant, to: Dest, bytes: Vec<u8>) {
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
                            d.send_uplink(now, b"{\"seq\":0}").unwrap();
                            while let Some(b) = d.poll_transmit() {
                                out.push(b);
                            }
                        }
                        DeviceEvent::UplinkAcked { .. } => self.acked += 1,
                        DeviceEvent::Failed(_) => self.failed += 1,
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
            gateway_batches: g.batches_sent,
            network_batches: g.link_round_trips.saturating_sub(g.batches_sent),
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

    /// One attach wave: every device starts at once (through the shared device CPU),
    /// authenticates and sends one uplink, like `capillary demo`. Returns its figures.
    fn attach_wave(&mut self) -> Wave {
        let before = self.figures();
        for i in 0..self.devices.len() as u32 {
            self.send_to_device(i, Vec::new(), true);
        }
        let n = self.devices.len();
        let ok = self.run_until(Duration::from_secs(120), move |s| {
            s.authenticated == n && s.acked == n && s.delivered == n
        });
        assert!(
            ok,
            "attach of {n}: {} authenticated, {} failed, {} acked, {} delivered",
            self.authenticated, self.failed, self.acked, self.delivered
        );
        assert_eq!(self.failed, 0);
        let after = self.figures();
        Wave {
            link_round_trips: after.link_round_trips - before.link_round_trips,
            gateway_batches: after.gateway_batches - before.gateway_batches,
            network_batches: after.network_batches - before.network_batches,
            store_round_trips: after.store_round_trips - before.store_round_trips,
            link_retransmissions: after.link_retransmissions - before.link_retransmissions,
            duplicates: after.duplicates - before.duplicates,
        }
    }
}

fn attach(n: u32, t: Timing) -> Wave {
    let mut sim = Sim::new(n, t, 7);
    sim.authenticate_gateway();
    let w = sim.attach_wave();
    eprintln!("N={n} {t:?}: {w:?}");
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

/// The requirement (docs/PROTOCOL.md §7): the same small number of gateway-link
/// round trips for 10, 100 and 1,000 devices. Attach plus one uplink per device, without the
/// local identity step of §5: triggers, identities, challenge responses, key confirmations
/// with the uplinks = 4 round trips (exchanges in flight together count once, see
/// `GatewayStats::link_round_trips`).
#[test]
fn attach_round_trips_do_not_grow_with_n() {
    let waves: Vec<(u32, Wave)> = [10, 100, 1000].map(|n| (n, attach(n, LOADED))).into();
    for (n, w) in &waves {
        assert_eq!(w.link_round_trips, 4, "round trips of an attach of {n}");
        assert_eq!(w.link_retransmissions, 0, "N={n}");
        assert_eq!(
            w.duplicates, 0,
            "no retransmission crossed the link (N={n})"
        );
        assert_eq!(
            w.network_batches, 0,
            "everything rode on the responses (N={n})"
        );
    }
    // Store round trips: NeedVectors + Authorize for the identities, Authorize for the
    // challenge responses (§6: every batch is checked), Authorize for the key
    // confirmations with the uplinks, whatever N. A wave of 1,000 devices needs two datagrams for three of its
    // steps (64 KiB per batch, PROTOCOL.md §4); they are sent together and share them.
    for (n, w) in &waves {
        assert_eq!(
            w.store_round_trips, 4,
            "store round trips of an attach of {n}"
        );
    }
    assert_eq!(waves[0].1.gateway_batches, 4);
    assert!(
        waves[2].1.gateway_batches > 4,
        "N=1000 needs more than one datagram"
    );
    assert!(waves[2].1.gateway_batches <= 2 * 4);
}

/// Without load (every device answers at once) the figures are the same.
#[test]
fn attach_round_trips_without_load() {
    let instant = Timing {
        link_delay: Duration::ZERO,
        capillary_delay: Duration::ZERO,
        device_cpu: Duration::ZERO,
        network_cpu: Duration::ZERO,
    };
    for n in [1, 10, 300] {
        let w = attach(n, instant);
        assert_eq!(w.link_round_trips, 4, "N={n}");
        assert_eq!(w.store_round_trips, 4, "N={n}");
        assert_eq!(w.link_retransmissions + w.duplicates, 0, "N={n}");
    }
}

/// A second wave on the same gateway costs the same as the first.
#[test]
fn second_wave_costs_the_same() {
    let mut sim = Sim::new(200, LOADED, 11);
    sim.authenticate_gateway();
    let first = sim.attach_wave();
    // The same devices re-authenticate (new triggers, new sessions).
    sim.authenticated = 0;
    sim.acked = 0;
    sim.delivered = 0;
    let second = sim.attach_wave();
    assert_eq!(first.link_round_trips, 4);
    assert_eq!(second, first);
}
