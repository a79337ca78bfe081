//! `capillary sim`: a deterministic discrete-event simulator of Capillary's gateway system.
//!
//! The simulator drives the project's own sans-IO state machines, exactly as
//! `crates/network/tests/link_scaling.rs` does: the network's
//! [`capillary_network::link::LinkEndpoint`], `G` [`capillary_gateway::Gateway`]s and `G × D`
//! [`capillary_device::Device`]s. There is no second implementation of any protocol here:
//! the simulator only moves datagrams between them through modelled links, answers the
//! store's requests after a modelled latency, and advances a simulated clock (an [`Instant`]
//! base plus offsets) from event to event. All randomness (loss, jitter, start times,
//! RAND values, the state machines' seeds) comes from one seed, so the same
//! [`SimConfig`] gives the same [`SimReport`] bit for bit.
//!
//! Models (docs/PROTOCOL.md §4.1, §7; docs/PERFORMANCE.md "Gateway link"):
//! - capillary link ([`CapillaryLink`]): one-way latency plus uniform jitter, loss per
//!   link-layer frame, an MTU that cuts a datagram into frames (a datagram is lost if one of
//!   its frames is), an optional shared bit rate per gateway;
//! - gateway link ([`GatewayLink`], presets in [`Preset`]): RTT, bit rate (serialization
//!   delay, one queue per direction and gateway), loss per datagram;
//! - the store ([`SimConfig::store_rtt`]): every store request is answered after this long;
//! - load, as in `link_scaling.rs`: the devices behind one gateway share one CPU
//!   ([`SimConfig::device_cpu`] per datagram), the network spends [`SimConfig::network_cpu`]
//!   per batch entry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use capillary_aka::vector::{generate_vector, AuthVector};
use capillary_aka::Milenage;
use capillary_device::{Device, DeviceConfig, DeviceEvent};
use capillary_gateway::{Gateway, GatewayConfig, GatewayEvent, GatewayOptions, Transmit};
use capillary_network::link::{LinkConfig, LinkEndpoint, LinkEvent};
use capillary_secrets::{Amf, Imsi, Opc, Rand, Secret, Sqn, K};
use capillary_store::{Authorization, SubscriberStatus};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

pub mod report;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A configuration value the simulator cannot run with (the text says which).
    #[error("invalid simulation config: {0}")]
    InvalidConfig(String),
    /// An identifier or key built by the simulator was refused (a simulator bug).
    #[error("internal: {0}")]
    Internal(String),
}

/// Batching mode of the gateway system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// The real gateway and network with their default batching (PROTOCOL.md §4.1).
    Batched,
    /// The same real gateway and network with batching effectively off: a batching window
    /// of 0, `batch_max_delay` 0, one entry per gateway batch (`BatcherConfig::max_entries`
    /// = 1) and per network batch (`LinkConfig::max_batch_entries` = 1, `batch_window` 0).
    /// Every device message is its own `POST /r`. Both ends keep up to
    /// [`SimConfig::naive_nstart`] `POST /r` outstanding (default 4, the gateway's NSTART),
    /// so this approximates a relay that forwards each datagram as it comes but is still
    /// congestion-controlled like CoAP (RFC 7252 §4.7); a large value approximates a relay
    /// with no congestion control.
    Naive,
}

impl Mode {
    /// `batched` or `naive`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Batched => "batched",
            Mode::Naive => "naive",
        }
    }

    /// Parses `batched` / `naive`.
    pub fn parse(s: &str) -> Result<Self, SimError> {
        match s {
            "batched" => Ok(Mode::Batched),
            "naive" => Ok(Mode::Naive),
            _ => Err(SimError::InvalidConfig(format!(
                "mode {s:?}: use batched or naive"
            ))),
        }
    }
}

/// The capillary link between a gateway and its devices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapillaryLink {
    /// One-way latency.
    pub latency: Duration,
    /// Extra one-way delay, uniform in `[0, jitter]` per datagram (can reorder).
    pub jitter: Duration,
    /// Probability that one link-layer frame is lost, `0.0..1.0`.
    pub loss: f64,
    /// Link-layer frame payload size in bytes; a datagram is cut into `ceil(len / mtu)`
    /// frames and is lost if one of them is.
    pub mtu: usize,
    /// Shared medium bit rate per gateway (both directions, half duplex); `None`: no
    /// serialization delay.
    pub bitrate: Option<u64>,
}

impl Default for CapillaryLink {
    /// 5 ms latency, 2 ms jitter, no loss, 1,280-byte frames (IPv6 minimum MTU, RFC 8200
    /// §5), no shared bit rate.
    fn default() -> Self {
        CapillaryLink {
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(2),
            loss: 0.0,
            mtu: 1280,
            bitrate: None,
        }
    }
}

/// The gateway link between a gateway and the network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatewayLink {
    /// Round-trip time without serialization (one-way delay is half of it).
    pub rtt: Duration,
    /// Bit rate, each direction: a datagram of `b` bytes occupies the link for
    /// `8·b / bitrate` seconds (one queue per direction and gateway).
    pub bitrate: u64,
    /// Probability that one datagram is lost, `0.0..1.0`.
    pub loss: f64,
}

/// Gateway-link presets. The figures are *assumptions* from public descriptions of the
/// technologies, not measurements:
/// - `nbiot`: NB-IoT (3GPP Rel-13 Cat-NB1) targets a latency of at most 10 s (3GPP TR 45.820),
///   typical one-way latency 1.6–10 s, peak rate about 60 kbit/s: RTT 3.2 s (best case,
///   2 × 1.6 s), 60 kbit/s.
/// - `lte-m`: LTE-M (Cat-M1) latency about 100–150 ms, about 1 Mbit/s: RTT 125 ms, 1 Mbit/s.
/// - `broadband`: fixed broadband or a LAN to the core: RTT 20 ms, 100 Mbit/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Preset {
    /// NB-IoT: RTT 3.2 s, 60 kbit/s.
    Nbiot,
    /// LTE-M: RTT 125 ms, 1 Mbit/s.
    LteM,
    /// Broadband: RTT 20 ms, 100 Mbit/s.
    Broadband,
}

impl Preset {
    /// `nbiot`, `lte-m` or `broadband`.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Nbiot => "nbiot",
            Preset::LteM => "lte-m",
            Preset::Broadband => "broadband",
        }
    }

    /// Parses `nbiot`, `lte-m` (or `ltem`), `broadband`.
    pub fn parse(s: &str) -> Result<Self, SimError> {
        match s {
            "nbiot" | "nb-iot" => Ok(Preset::Nbiot),
            "lte-m" | "ltem" => Ok(Preset::LteM),
            "broadband" => Ok(Preset::Broadband),
            _ => Err(SimError::InvalidConfig(format!(
                "preset {s:?}: use nbiot, lte-m or broadband"
            ))),
        }
    }

    /// The link model of the preset (no loss).
    pub fn link(self) -> GatewayLink {
        let (rtt_ms, bitrate) = match self {
            Preset::Nbiot => (3200, 60_000),
            Preset::LteM => (125, 1_000_000),
            Preset::Broadband => (20, 100_000_000),
        };
        GatewayLink {
            rtt: Duration::from_millis(rtt_ms),
            bitrate,
            loss: 0.0,
        }
    }
}

/// One simulation run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Number of gateways `G`.
    pub gateways: u32,
    /// Devices behind each gateway `D` (at most 1,024, the gateway's default limit).
    pub devices_per_gateway: u32,
    /// Batching mode.
    pub mode: Mode,
    /// Name of the gateway-link model, for reports (a preset name or `custom`).
    pub link_name: String,
    /// Capillary link model.
    pub capillary: CapillaryLink,
    /// Gateway link model.
    pub gateway_link: GatewayLink,
    /// Time the store takes to answer one request (vectors, authorization).
    pub store_rtt: Duration,
    /// Devices start at uniformly random times in `[0, start_spread]` after the gateways
    /// are authenticated (cold attach storm).
    pub start_spread: Duration,
    /// Uplinks per device after it authenticated (the first at once, as `capillary demo`).
    pub uplinks: u32,
    /// Interval between a device's uplinks.
    pub uplink_interval: Duration,
    /// CPU time of one device datagram; the devices of one gateway share one CPU.
    pub device_cpu: Duration,
    /// Network CPU time per batch entry received.
    pub network_cpu: Duration,
    /// Naive mode only: `POST /r` outstanding at once at each end (NSTART, RFC 7252 §4.7).
    pub naive_nstart: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Simulated time after which the run stops (reported as not completed).
    pub time_limit: Duration,
}

impl Default for SimConfig {
    /// One gateway, 10 devices, batched, broadband, the default capillary link, 1 ms store,
    /// 100 ms start spread, one uplink, the load model of `link_scaling.rs` (100 µs device
    /// CPU, 20 µs network CPU per entry), seed 1, 600 s limit.
    fn default() -> Self {
        SimConfig {
            gateways: 1,
            devices_per_gateway: 10,
            mode: Mode::Batched,
            link_name: Preset::Broadband.name().into(),
            capillary: CapillaryLink::default(),
            gateway_link: Preset::Broadband.link(),
            store_rtt: Duration::from_millis(1),
            start_spread: Duration::from_millis(100),
            uplinks: 1,
            uplink_interval: Duration::from_secs(10),
            device_cpu: Duration::from_micros(100),
            network_cpu: Duration::from_micros(20),
            naive_nstart: 4,
            seed: 1,
            time_limit: Duration::from_secs(600),
        }
    }
}

impl SimConfig {
    /// Checks values the simulator cannot run with.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |w: &str| Err(SimError::InvalidConfig(w.into()));
        if self.gateways == 0 || self.gateways > 1000 {
            return bad("gateways must be in 1..=1000");
        }
        if self.devices_per_gateway > 1024 {
            return bad("devices per gateway must be at most 1024 (the gateway's max_devices)");
        }
        if !(0.0..1.0).contains(&self.capillary.loss)
            || !(0.0..1.0).contains(&self.gateway_link.loss)
        {
            return bad("loss must be in [0, 1)");
        }
        if self.capillary.mtu == 0 {
            return bad("capillary mtu must be positive");
        }
        if self.gateway_link.bitrate == 0 || self.capillary.bitrate == Some(0) {
            return bad("bit rates must be positive");
        }
        Ok(())
    }

    /// Total number of devices `G × D`.
    pub fn total_devices(&self) -> u64 {
        u64::from(self.gateways) * u64::from(self.devices_per_gateway)
    }
}

/// Traffic on one interface during the attach storm and the uplinks (the gateways' own
/// authentication is not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// Messages (datagrams; store: requests).
    pub messages: u64,
    /// Bytes of those messages (UDP payload); `None` for the store (not modelled).
    pub bytes: Option<u64>,
    /// Round trips. Capillary link: request/response pairs, `min(up, down)` datagrams per
    /// device, summed. Gateway link: `GatewayStats::link_round_trips` summed over gateways
    /// (exchanges in flight together count once). Store: `LinkStats::store_round_trips`.
    pub round_trips: u64,
}

/// Time from a device's start to its `Authenticated` event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachTimes {
    /// Median (nearest rank).
    pub p50: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

/// Result of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Mode.
    pub mode: Mode,
    /// Gateway-link model name.
    pub link: String,
    /// Gateways.
    pub gateways: u32,
    /// Devices in total.
    pub devices: u64,
    /// Seed.
    pub seed: u64,
    /// Every device authenticated and every uplink was answered before the time limit.
    pub completed: bool,
    /// Devices authenticated.
    pub authenticated: u64,
    /// Device authentication failures (the device is restarted after 1 s).
    pub failures: u64,
    /// Uplinks acknowledged to the devices.
    pub uplinks_acked: u64,
    /// Uplinks that failed on the device.
    pub uplinks_failed: u64,
    /// Uplinks the network delivered (after its duplicate detection).
    pub uplinks_delivered: u64,
    /// Capillary link.
    pub capillary: InterfaceStats,
    /// Capillary datagrams lost (loss model or MTU).
    pub capillary_lost: u64,
    /// Gateway link.
    pub gateway_link: InterfaceStats,
    /// `POST /r` exchanges (each one, `GatewayStats::link_exchanges`).
    pub link_exchanges: u64,
    /// Gateway-link retransmissions by the gateways.
    pub link_retransmissions: u64,
    /// Gateway-link datagrams lost (loss model).
    pub link_lost: u64,
    /// Store.
    pub store: InterfaceStats,
    /// Time to attach, of the devices that authenticated.
    pub attach: AttachTimes,
    /// Simulated time from the storm's start to the last device authenticated.
    pub attach_all: Duration,
    /// Simulated time from the storm's start to the end of the run.
    pub duration: Duration,
}

/// Progress of a run, for a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Simulated time since the storm began (zero during the gateways' authentication).
    pub sim_time: Duration,
    /// Devices authenticated so far.
    pub authenticated: u64,
    /// Devices in total.
    pub devices: u64,
    /// Events processed.
    pub events: u64,
}

const GW_PREFIX: &str = "0010190";
const DEV_PREFIX: &str = "0010100";
/// A failed device tries again after this long (like a driver would).
const RESTART_DELAY: Duration = Duration::from_secs(1);

fn gw_imsi(g: u32) -> String {
    format!("{GW_PREFIX}{:08}", g + 1)
}

fn dev_imsi(i: u32) -> String {
    format!("{DEV_PREFIX}{:08}", i + 1)
}

fn k_of(imsi: &str) -> Result<K, SimError> {
    let mut b = [0x5au8; 16];
    for (i, c) in imsi.bytes().enumerate() {
        b[i % 16] ^= c.wrapping_mul((i as u8).wrapping_add(3));
    }
    K::from_slice(&b).map_err(|e| SimError::Internal(format!("K: {e}")))
}

fn opc() -> Result<Opc, SimError> {
    Opc::from_hex("cd63cb71954a9f4e48a5994e37a02baf")
        .map_err(|e| SimError::Internal(format!("OPc: {e}")))
}

fn imsi(s: &str) -> Result<Imsi, SimError> {
    Imsi::new(s).map_err(|e| SimError::Internal(format!("IMSI {s}: {e}")))
}

fn gw_addr(g: u32) -> SocketAddr {
    let [_, _, hi, lo] = g.to_be_bytes();
    SocketAddr::from((Ipv4Addr::new(10, 1, hi, lo), 5683))
}

/// A seed derived from the run's seed, a stream and an index (SplitMix64 finalizer).
fn mix(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed
        ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ index.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn serialization(bytes: usize, bitrate: u64) -> Duration {
    let bits = (bytes as u128) * 8;
    let nanos = bits * 1_000_000_000 / u128::from(bitrate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A scheduled event.
#[derive(Debug)]
enum Ev {
    /// A datagram from gateway `g` reaches the network.
    ToNetwork(u32, Vec<u8>),
    /// A datagram from the network reaches gateway `g`.
    ToGateway(u32, Vec<u8>),
    /// A datagram from device (global index) reaches its gateway.
    FromDevice(u32, Vec<u8>),
    /// A datagram reaches device (global index).
    ToDevice(u32, Vec<u8>),
    /// Device (global index) starts its attach.
    Start(u32),
    /// Device (global index) sends its next uplink.
    Uplink(u32),
    /// The store answers a vector request.
    Vectors(u64, Vec<Imsi>),
    /// The store answers an authorization request of this many pairs.
    Authz(u64, usize),
}

#[derive(Debug, Default, Clone, Copy)]
struct DevState {
    started: Option<Instant>,
    attach: Option<Duration>,
    uplinks_left: u32,
    up: u64,
    down: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    cap_msgs: u64,
    cap_bytes: u64,
    cap_lost: u64,
    link_lost: u64,
    store_requests: u64,
}

/// The simulation state. Use [`run`].
struct Sim {
    cfg: SimConfig,
    base: Instant,
    now: Instant,
    storm_start: Instant,
    net: LinkEndpoint,
    gws: Vec<Gateway<u32>>,
    gw_authenticated: Vec<bool>,
    devices: Vec<Device>,
    dev: Vec<DevState>,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    /// Per gateway: the shared device CPU, the capillary medium, the link up and down queues.
    cpu_free: Vec<Instant>,
    medium_free: Vec<Instant>,
    up_free: Vec<Instant>,
    down_free: Vec<Instant>,
    network_cpu_free: Instant,
    dirty: BTreeSet<u32>,
    sqns: HashMap<String, u64>,
    rng: StdRng,
    /// One random stream per device (its capillary link) and per gateway (its link), so
    /// that the order in which the state machines emit simultaneous outputs (some iterate
    /// hash maps) cannot change which datagram is lost or delayed.
    dev_rng: Vec<StdRng>,
    gw_rng: Vec<StdRng>,
    opc: Opc,
    c: Counters,
    authenticated: u64,
    failures: u64,
    acked: u64,
    uplink_failed: u64,
    delivered: u64,
    last_auth: Instant,
    events: u64,
}

impl Sim {
    fn new(cfg: &SimConfig) -> Result<Self, SimError> {
        cfg.validate()?;
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let net_opc = opc()?;
        let rtt = cfg.gateway_link.rtt;
        // Timers scaled to the link, as a deployment over a slow link would configure
        // them (RFC 7252 §4.8 lets the application environment choose ACK_TIMEOUT): above
        // a round trip plus the serialization of two full 64 KiB batches.
        let full = serialization(65_536, cfg.gateway_link.bitrate);
        let ack = (rtt * 2 + full * 2).max(Duration::from_secs(2));
        let mut link_cfg = LinkConfig::default();
        link_cfg.transmission.ack_timeout = ack;
        link_cfg.relayed_ack_timeout =
            (ack + Duration::from_secs(1)).max(link_cfg.relayed_ack_timeout);
        link_cfg.response_hold = link_cfg.response_hold.min(ack / 2);
        let mut opts = GatewayOptions::default();
        opts.link.ack_timeout = ack;
        if cfg.mode == Mode::Naive {
            link_cfg.max_batch_entries = 1;
            link_cfg.batch_window = Duration::ZERO;
            opts.batch_max_delay = Duration::ZERO;
            opts.link.nstart = cfg.naive_nstart.max(1);
            link_cfg.transmission.nstart = cfg.naive_nstart.max(1);
        }
        let net = LinkEndpoint::new(link_cfg, rng.next_u64());
        let mut gws = Vec::new();
        for g in 0..cfg.gateways {
            let s = gw_imsi(g);
            let mut gc = GatewayConfig::new(imsi(&s)?, k_of(&s)?, opc()?);
            if cfg.mode == Mode::Naive {
                gc.batcher.window = Duration::ZERO;
                gc.batcher.max_entries = 1;
            }
            gc.validate()
                .map_err(|e| SimError::InvalidConfig(format!("gateway: {e}")))?;
            gws.push(Gateway::with_options(gc, opts.clone(), rng.next_u64()));
        }
        let total = cfg.gateways * cfg.devices_per_gateway;
        let mut devices = Vec::with_capacity(total as usize);
        for i in 0..total {
            let s = dev_imsi(i);
            let dc = DeviceConfig::new(imsi(&s)?, k_of(&s)?, opc()?);
            devices.push(Device::new(dc, rng.next_u64()));
        }
        let g = cfg.gateways as usize;
        Ok(Sim {
            cfg: cfg.clone(),
            base: now,
            now,
            storm_start: now,
            net,
            gws,
            gw_authenticated: vec![false; g],
            devices,
            dev: vec![DevState::default(); total as usize],
            queue: BTreeMap::new(),
            seq: 0,
            cpu_free: vec![now; g],
            medium_free: vec![now; g],
            up_free: vec![now; g],
            down_free: vec![now; g],
            network_cpu_free: now,
            dirty: BTreeSet::new(),
            sqns: HashMap::new(),
            dev_rng: (0..total)
                .map(|i| StdRng::seed_from_u64(mix(cfg.seed, 1, u64::from(i))))
                .collect(),
            gw_rng: (0..cfg.gateways)
                .map(|g| StdRng::seed_from_u64(mix(cfg.seed, 2, u64::from(g))))
                .collect(),
            rng,
            opc: net_opc,
            c: Counters::default(),
            authenticated: 0,
            failures: 0,
            acked: 0,
            uplink_failed: 0,
            delivered: 0,
            last_auth: now,
            events: 0,
        })
    }

    fn gw_of(&self, dev: u32) -> u32 {
        dev / self.cfg.devices_per_gateway.max(1)
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    /// A capillary datagram in either direction: frames, loss, medium, latency, jitter.
    /// Returns the arrival time, or `None` if lost.
    fn capillary(&mut self, g: u32, dev: u32, len: usize, to_device: bool) -> Option<Instant> {
        let cap = self.cfg.capillary;
        self.c.cap_msgs += 1;
        self.c.cap_bytes += len as u64;
        let st = &mut self.dev[dev as usize];
        if to_device {
            st.down += 1;
        } else {
            st.up += 1;
        }
        let frames = len.div_ceil(cap.mtu).max(1);
        let mut depart = self.now;
        if let Some(rate) = cap.bitrate {
            let free = &mut self.medium_free[g as usize];
            depart = depart.max(*free) + serialization(len, rate);
            *free = depart;
        }
        let mut lost = false;
        for _ in 0..frames {
            if cap.loss > 0.0 && self.dev_rng[dev as usize].gen_bool(cap.loss) {
                lost = true;
            }
        }
        let jitter = if cap.jitter.is_zero() {
            Duration::ZERO
        } else {
            let j = u64::try_from(cap.jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(self.dev_rng[dev as usize].gen_range(0..=j))
        };
        if lost {
            self.c.cap_lost += 1;
            return None;
        }
        Some(depart + cap.latency + jitter)
    }

    /// A datagram for device `dev`: it crosses the capillary link, then waits for the
    /// shared device CPU of its gateway.
    fn send_to_device(&mut self, dev: u32, bytes: Vec<u8>) {
        let g = self.gw_of(dev);
        let Some(arrival) = self.capillary(g, dev, bytes.len(), true) else {
            return;
        };
        let at = arrival.max(self.cpu_free[g as usize]) + self.cfg.device_cpu;
        self.cpu_free[g as usize] = at;
        self.schedule(at, Ev::ToDevice(dev, bytes));
    }

    /// A datagram on the gateway link; `up`: gateway → network.
    fn send_link(&mut self, g: u32, bytes: Vec<u8>, up: bool) {
        let l = self.cfg.gateway_link;
        let free = if up {
            &mut self.up_free[g as usize]
        } else {
            &mut self.down_free[g as usize]
        };
        let start = if up {
            self.now.max(*free)
        } else {
            self.now.max(self.network_cpu_free).max(*free)
        };
        let done = start + serialization(bytes.len(), l.bitrate);
        *free = done;
        if l.loss > 0.0 && self.gw_rng[g as usize].gen_bool(l.loss) {
            self.c.link_lost += 1;
            return;
        }
        let at = done + l.rtt / 2;
        let ev = if up {
            Ev::ToNetwork(g, bytes)
        } else {
            Ev::ToGateway(g, bytes)
        };
        self.schedule(at, ev);
    }

    fn vector(&mut self, who: &Imsi) -> Result<AuthVector, SimError> {
        let seq = self.sqns.entry(who.as_str().to_owned()).or_insert(1);
        let sqn = Sqn::from_seq_ind(*seq, 0, 5).ok_or_else(|| SimError::Internal("SQN".into()))?;
        // RAND from (seed, IMSI, SQN): independent of the order of the store requests.
        let mut r = [0u8; 16];
        let key = who.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        StdRng::seed_from_u64(mix(self.cfg.seed, key, *seq)).fill_bytes(&mut r);
        *seq += 1;
        let m = Milenage::new(&k_of(who.as_str())?, &self.opc);
        Ok(generate_vector(&m, &Rand(r), &sqn, &Amf([0x80, 0x00])))
    }

    fn network_event(&mut self, ev: LinkEvent) {
        let at = self.now + self.cfg.store_rtt;
        match ev {
            LinkEvent::NeedVectors { ticket, requests } => {
                self.c.store_requests += 1;
                let who = requests.into_iter().map(|(i, _)| i).collect();
                self.schedule(at, Ev::Vectors(ticket, who));
            }
            LinkEvent::NeedResync { ticket, imsi, .. } => {
                self.c.store_requests += 1;
                self.schedule(at, Ev::Vectors(ticket, vec![imsi]));
            }
            LinkEvent::Authorize { ticket, pairs } => {
                self.c.store_requests += 1;
                self.schedule(at, Ev::Authz(ticket, pairs.len()));
            }
            LinkEvent::Uplink { .. } => self.delivered += 1,
            _ => {}
        }
    }

    /// Moves every output produced at `now` onto the links.
    fn drain(&mut self) -> Result<(), SimError> {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.net.poll_event() {
                progressed = true;
                self.network_event(ev);
            }
            // Simultaneous outputs are put in a canonical order (by gateway, by device,
            // stable) before they meet the shared queues and random streams.
            let mut down = Vec::new();
            while let Some((to, bytes)) = self.net.poll_transmit() {
                progressed = true;
                if let Some(g) = (0..self.cfg.gateways).find(|g| gw_addr(*g) == to) {
                    down.push((g, bytes));
                }
            }
            down.sort_by_key(|(g, _)| *g);
            for (g, bytes) in down {
                self.send_link(g, bytes, false);
            }
            for g in 0..self.cfg.gateways {
                let mut to_devices = Vec::new();
                while let Some(tx) = self.gws[g as usize].poll_transmit() {
                    progressed = true;
                    match tx {
                        Transmit::ToNetwork(b) => self.send_link(g, b, true),
                        Transmit::ToDevice(local, b) => to_devices.push((local, b)),
                    }
                }
                to_devices.sort_by_key(|(local, _)| *local);
                for (local, b) in to_devices {
                    let dev = g * self.cfg.devices_per_gateway + local;
                    self.send_to_device(dev, b);
                }
                while let Some(ev) = self.gws[g as usize].poll_event() {
                    if ev == GatewayEvent::Authenticated {
                        self.gw_authenticated[g as usize] = true;
                    }
                }
            }
            for i in std::mem::take(&mut self.dirty) {
                let now = self.now;
                let mut out = Vec::new();
                let mut authed = false;
                {
                    let d = &mut self.devices[i as usize];
                    while let Some(b) = d.poll_transmit() {
                        out.push(b);
                    }
                    while let Some(ev) = d.poll_event() {
                        match ev {
                            DeviceEvent::Authenticated { .. } => authed = true,
                            DeviceEvent::UplinkAcked { .. } => self.acked += 1,
                            DeviceEvent::UplinkFailed { .. } => self.uplink_failed += 1,
                            DeviceEvent::Failed(_) => {
                                self.failures += 1;
                                self.seq += 1;
                                self.queue
                                    .insert((now + RESTART_DELAY, self.seq), Ev::Start(i));
                            }
                            _ => {}
                        }
                    }
                }
                if authed {
                    let st = &mut self.dev[i as usize];
                    if st.attach.is_none() {
                        self.authenticated += 1;
                        self.last_auth = now;
                        st.attach = st.started.map(|s| now.saturating_duration_since(s));
                        st.uplinks_left = self.cfg.uplinks;
                        if st.uplinks_left > 0 {
                            self.send_uplink(i)?;
                            let d = &mut self.devices[i as usize];
                            while let Some(b) = d.poll_transmit() {
                                out.push(b);
                            }
                        }
                    }
                }
                let g = self.gw_of(i);
                for b in out {
                    progressed = true;
                    if let Some(at) = self.capillary(g, i, b.len(), false) {
                        self.schedule(at, Ev::FromDevice(i, b));
                    }
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Sends device `i`'s next uplink now and schedules the one after.
    fn send_uplink(&mut self, i: u32) -> Result<(), SimError> {
        let st = &mut self.dev[i as usize];
        if st.uplinks_left == 0 {
            return Ok(());
        }
        let n = self.cfg.uplinks - st.uplinks_left;
        st.uplinks_left -= 1;
        let more = st.uplinks_left > 0;
        let payload = format!("{{\"dev\":{i},\"seq\":{n}}}");
        if self.devices[i as usize]
            .send_uplink(self.now, payload.as_bytes())
            .is_err()
        {
            self.uplink_failed += 1;
        }
        self.dirty.insert(i);
        if more {
            let at = self.now + self.cfg.uplink_interval;
            self.schedule(at, Ev::Uplink(i));
        }
        Ok(())
    }

    fn deliver(&mut self, ev: Ev) -> Result<(), SimError> {
        let now = self.now;
        match ev {
            Ev::ToNetwork(g, bytes) => {
                let start = now.max(self.network_cpu_free);
                let before = self.net.stats().entries_in;
                self.net.handle_datagram(start, gw_addr(g), &bytes);
                let entries = self.net.stats().entries_in - before;
                let cost = self.cfg.network_cpu * u32::try_from(entries).unwrap_or(u32::MAX);
                self.network_cpu_free = start + cost;
            }
            Ev::ToGateway(g, bytes) => self.gws[g as usize].handle_network_datagram(now, &bytes),
            Ev::FromDevice(i, bytes) => {
                let g = self.gw_of(i);
                let local = i - g * self.cfg.devices_per_gateway;
                self.gws[g as usize].handle_device_datagram(now, local, &bytes);
            }
            Ev::ToDevice(i, bytes) => {
                self.devices[i as usize].handle_datagram(now, &bytes);
                self.dirty.insert(i);
            }
            Ev::Start(i) => {
                let st = &mut self.dev[i as usize];
                if st.started.is_none() {
                    st.started = Some(now);
                }
                self.devices[i as usize].start(now);
                self.dirty.insert(i);
            }
            Ev::Uplink(i) => self.send_uplink(i)?,
            Ev::Vectors(ticket, who) => {
                let mut v = Vec::with_capacity(who.len());
                for w in &who {
                    v.push(Ok(self.vector(w)?));
                }
                self.net
                    .provide_vectors(now, ticket, v)
                    .map_err(|e| SimError::Internal(format!("provide_vectors: {e}")))?;
            }
            Ev::Authz(ticket, n) => {
                let a = (0..n)
                    .map(|_| Authorization {
                        device_status: Some(SubscriberStatus::Active),
                        gateway_status: Some(SubscriberStatus::Active),
                        bound: true,
                    })
                    .collect();
                self.net
                    .provide_authorization(now, ticket, a)
                    .map_err(|e| SimError::Internal(format!("provide_authorization: {e}")))?;
            }
        }
        Ok(())
    }

    fn next_timer(&self) -> Option<Instant> {
        let devs = self.devices.iter().filter_map(Device::poll_timeout).min();
        let gws = self.gws.iter().filter_map(Gateway::poll_timeout).min();
        [self.net.poll_timeout(), gws, devs]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs until `done` holds when the system is quiet at an instant, or `end` passes.
    fn run_until(
        &mut self,
        end: Instant,
        done: impl Fn(&Sim) -> bool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<bool, SimError> {
        let mut next_report = self.now;
        loop {
            self.drain()?;
            if done(self) {
                return Ok(true);
            }
            let next_ev = self.queue.keys().next().map(|k| k.0);
            let Some(next) = [next_ev, self.next_timer()].into_iter().flatten().min() else {
                return Ok(false);
            };
            if next > end {
                self.now = end;
                return Ok(false);
            }
            self.now = self.now.max(next);
            if self.now >= next_report {
                next_report = self.now + Duration::from_secs(1);
                progress(Progress {
                    sim_time: self.now.saturating_duration_since(self.storm_start),
                    authenticated: self.authenticated,
                    devices: self.cfg.total_devices(),
                    events: self.events,
                });
            }
            // Like a driver that reads every datagram already received before it polls the
            // outputs (link_scaling.rs).
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let ev = entry.remove();
                self.events += 1;
                self.deliver(ev)?;
            }
            self.drain()?;
            let now = self.now;
            if self.net.poll_timeout().is_some_and(|t| t <= now) {
                self.net.handle_timeout(now);
            }
            for gw in &mut self.gws {
                if gw.poll_timeout().is_some_and(|t| t <= now) {
                    gw.handle_timeout(now);
                }
            }
            for (i, d) in self.devices.iter_mut().enumerate() {
                if d.poll_timeout().is_some_and(|t| t <= now) {
                    d.handle_timeout(now);
                    self.dirty.insert(i as u32);
                }
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for g in &self.gws {
            let st = g.stats();
            s.link_msgs += st.link_msgs_in + st.link_msgs_out;
            s.link_bytes += st.link_bytes_in + st.link_bytes_out;
            s.link_round_trips += st.link_round_trips;
            s.link_exchanges += st.link_exchanges;
            s.link_retransmissions += st.link_retransmissions;
        }
        s.link_lost = self.c.link_lost;
        s.store_round_trips = self.net.stats().store_round_trips;
        s.store_requests = self.c.store_requests;
        s
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Snapshot {
    link_msgs: u64,
    link_bytes: u64,
    link_round_trips: u64,
    link_exchanges: u64,
    link_retransmissions: u64,
    link_lost: u64,
    store_round_trips: u64,
    store_requests: u64,
}

fn percentile(sorted: &[Duration], p: u64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let n = sorted.len() as u64;
    let rank = (p * n).div_ceil(100).clamp(1, n);
    sorted[(rank - 1) as usize]
}

/// Runs one simulation: the gateways authenticate, then the devices attach (cold storm
/// within [`SimConfig::start_spread`]) and send their uplinks. `progress` is called about
/// once per simulated second.
pub fn run(cfg: &SimConfig, progress: &mut dyn FnMut(Progress)) -> Result<SimReport, SimError> {
    let mut sim = Sim::new(cfg)?;
    // 1. The gateways authenticate (not counted in the report).
    let now = sim.now;
    for gw in &mut sim.gws {
        gw.start(now);
    }
    let limit = sim.base + cfg.time_limit;
    let gws_up = sim.run_until(
        limit,
        |s| {
            s.gw_authenticated.iter().all(|a| *a)
                && (0..s.cfg.gateways).all(|g| s.net.is_gateway_authenticated(gw_addr(g)))
        },
        progress,
    )?;
    if !gws_up {
        return Err(SimError::InvalidConfig(
            "the gateways did not authenticate within the time limit".into(),
        ));
    }
    // 2. The storm.
    let before = sim.snapshot();
    let cap_before = sim.c;
    sim.storm_start = sim.now;
    let spread = u64::try_from(cfg.start_spread.as_nanos()).unwrap_or(u64::MAX);
    let total = cfg.gateways * cfg.devices_per_gateway;
    for i in 0..total {
        let off = if spread == 0 {
            0
        } else {
            sim.rng.gen_range(0..=spread)
        };
        let at = sim.now + Duration::from_nanos(off);
        sim.schedule(at, Ev::Start(i));
    }
    let n = u64::from(total);
    let k = u64::from(cfg.uplinks);
    let end = sim.now + cfg.time_limit;
    let completed = sim.run_until(
        end,
        move |s| {
            s.authenticated == n && s.acked + s.uplink_failed >= n * k && s.delivered >= s.acked
        },
        progress,
    )?;
    let after = sim.snapshot();
    let mut times: Vec<Duration> = sim.dev.iter().filter_map(|d| d.attach).collect();
    times.sort();
    let cap_rt = sim.dev.iter().map(|d| d.up.min(d.down)).sum::<u64>();
    // Capillary round trips counted in the storm only (none before it).
    Ok(SimReport {
        mode: cfg.mode,
        link: cfg.link_name.clone(),
        gateways: cfg.gateways,
        devices: n,
        seed: cfg.seed,
        completed,
        authenticated: sim.authenticated,
        failures: sim.failures,
        uplinks_acked: sim.acked,
        uplinks_failed: sim.uplink_failed,
        uplinks_delivered: sim.delivered,
        capillary: InterfaceStats {
            messages: sim.c.cap_msgs - cap_before.cap_msgs,
            bytes: Some(sim.c.cap_bytes - cap_before.cap_bytes),
            round_trips: cap_rt,
        },
        capillary_lost: sim.c.cap_lost - cap_before.cap_lost,
        gateway_link: InterfaceStats {
            messages: after.link_msgs - before.link_msgs,
            bytes: Some(after.link_bytes - before.link_bytes),
            round_trips: after.link_round_trips - before.link_round_trips,
        },
        link_exchanges: after.link_exchanges - before.link_exchanges,
        link_retransmissions: after.link_retransmissions - before.link_retransmissions,
        link_lost: after.link_lost - before.link_lost,
        store: InterfaceStats {
            messages: after.store_requests - before.store_requests,
            bytes: None,
            round_trips: after.store_round_trips - before.store_round_trips,
        },
        attach: AttachTimes {
            p50: percentile(&times, 50),
            p99: percentile(&times, 99),
            max: times.last().copied().unwrap_or_default(),
        },
        attach_all: sim.last_auth.saturating_duration_since(sim.storm_start),
        duration: sim.now.saturating_duration_since(sim.storm_start),
    })
}
