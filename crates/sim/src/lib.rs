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
//!
//! What is simulated after the gateways authenticated is a [`Scenario`] (cold attach storm,
//! gateway reboot with or without the devices, steady uplinks; optionally with refused
//! devices), in a [`Mode`] set by [`apply_mode`]. Each [`SimReport`] carries the traffic per
//! interface of the measured phase and its payload [`Floor`] (docs/PERFORMANCE.md,
//! "Simulator").

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use capillary_aka::vector::{generate_vector, AuthVector};
use capillary_aka::Milenage;
use capillary_coap::msg::option_number;
use capillary_coap::Message;
use capillary_device::{Device, DeviceConfig, DeviceEvent};
use capillary_gateway::{
    BatcherConfig, Gateway, GatewayConfig, GatewayEvent, GatewayOptions, Transmit,
};
use capillary_network::link::{DropCause, LinkConfig, LinkEndpoint, LinkEvent};
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

/// Batching mode of the gateway system. Everything a mode changes is set in one place,
/// [`apply_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// The real gateway and network with their default batching (PROTOCOL.md §4.1) and
    /// every later optimisation switched off, so that it stays the baseline of batching
    /// alone.
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
    /// Batched with every optimisation of the gateway system switched on (see
    /// [`apply_mode`]: local identity, one-way confirmations, fast re-authentication in
    /// memory, vector prefetch, the first device batch with the gateway's authentication).
    Optimised,
}

impl Mode {
    /// `batched`, `naive` or `optimised`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Batched => "batched",
            Mode::Naive => "naive",
            Mode::Optimised => "optimised",
        }
    }

    /// Parses `batched` / `naive` / `optimised` (or `optimized`).
    pub fn parse(s: &str) -> Result<Self, SimError> {
        match s {
            "batched" => Ok(Mode::Batched),
            "naive" => Ok(Mode::Naive),
            "optimised" | "optimized" => Ok(Mode::Optimised),
            _ => Err(SimError::InvalidConfig(format!(
                "mode {s:?}: use batched, naive or optimised"
            ))),
        }
    }
}

/// The one place where a [`Mode`] changes the configuration of the gateways (`batcher`,
/// `opts`, the same for every gateway) and of the network (`link`). Called after the
/// simulator set its link-dependent timers and limits.
pub fn apply_mode(
    mode: Mode,
    naive_nstart: usize,
    batcher: &mut BatcherConfig,
    opts: &mut GatewayOptions,
    link: &mut LinkConfig,
) {
    // The optimisations of PROTOCOL.md §5 (local identity) and §4.1 (one-way key
    // confirmations); the naive relay and plain batching run without them.
    let optimised = mode == Mode::Optimised;
    opts.local_identity = optimised;
    opts.confirm_one_way = optimised;
    link.accept_local_identity = optimised;
    // PROTOCOL.md §6.1 (fast re-authentication in memory), §6.2 (vector prefetch when a
    // gateway authenticates), §4.1 (the first device batch in the flight of the gateway's
    // own authentication).
    link.fast_reauth = optimised;
    link.prefetch_vectors = optimised;
    opts.first_batch_with_auth = optimised;
    if mode == Mode::Naive {
        batcher.window = Duration::ZERO;
        batcher.max_entries = 1;
        opts.batch_max_delay = Duration::ZERO;
        opts.link.nstart = naive_nstart.max(1);
        link.max_batch_entries = 1;
        link.batch_window = Duration::ZERO;
        link.transmission.nstart = naive_nstart.max(1);
    }
}

/// Optimisations of [`Mode::Optimised`] switched off one at a time, after [`apply_mode`],
/// to measure each on and off (`capillary sim --without ...`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Without {
    /// `LinkConfig::fast_reauth` off (PROTOCOL.md §6.1).
    pub fast_reauth: bool,
    /// `LinkConfig::prefetch_vectors` off (PROTOCOL.md §6.2).
    pub prefetch: bool,
    /// `GatewayOptions::first_batch_with_auth` off (PROTOCOL.md §4.1).
    pub first_batch_with_auth: bool,
}

impl Without {
    /// Parses a comma-separated list of `fast-reauth`, `prefetch`, `first-batch`.
    pub fn parse(s: &str) -> Result<Self, SimError> {
        let mut w = Without::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "fast-reauth" => w.fast_reauth = true,
                "prefetch" => w.prefetch = true,
                "first-batch" => w.first_batch_with_auth = true,
                _ => {
                    return Err(SimError::InvalidConfig(format!(
                        "without {part:?}: use fast-reauth, prefetch or first-batch"
                    )))
                }
            }
        }
        Ok(w)
    }

    /// Switches the named optimisations off.
    pub fn apply(self, opts: &mut GatewayOptions, link: &mut LinkConfig) {
        if self.fast_reauth {
            link.fast_reauth = false;
        }
        if self.prefetch {
            link.prefetch_vectors = false;
        }
        if self.first_batch_with_auth {
            opts.first_batch_with_auth = false;
        }
    }
}

/// What a run simulates after the gateways authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// Cold attach storm: every device attaches within [`SimConfig::start_spread`], then
    /// sends [`SimConfig::uplinks`] uplinks. The report covers the storm and those uplinks.
    Cold,
    /// After the cold storm, the gateways reboot: each is replaced by a fresh [`Gateway`]
    /// (its state is lost; it authenticates itself again) while the devices and the network
    /// keep theirs. Each device then sends one uplink within [`SimConfig::start_spread`];
    /// an uplink that fails makes the device re-authenticate (CoAP-EAP again) and send it
    /// again. The report covers the time from the reboot until every device delivered an
    /// uplink; [`SimReport::recovery`] holds the per-device times.
    Reboot,
    /// Like [`Scenario::Reboot`], but the devices reboot too (fresh [`Device`]s, their
    /// sessions lost): each re-authenticates within [`SimConfig::start_spread`], then sends
    /// one uplink.
    RebootDevices,
    /// After the cold storm, every device runs CoAP-EAP again (as at session renewal or
    /// after a lost context; gateways, devices and the network keep their state) within
    /// [`SimConfig::start_spread`], then sends one uplink. With
    /// `LinkConfig::fast_reauth` (PROTOCOL.md §6.1) this is a fast re-authentication. The
    /// report covers the time from the start of the re-attach until every device delivered
    /// an uplink.
    Reattach,
    /// After the cold storm (without uplinks), every device sends uplinks following
    /// [`SimConfig::pattern`] (mean interval [`SimConfig::uplink_interval`]) for
    /// [`SimConfig::steady_duration`]. The report covers those uplinks only.
    Steady,
}

impl Scenario {
    /// `cold`, `reboot`, `reboot-devices`, `reattach` or `steady`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Cold => "cold",
            Scenario::Reboot => "reboot",
            Scenario::RebootDevices => "reboot-devices",
            Scenario::Reattach => "reattach",
            Scenario::Steady => "steady",
        }
    }

    /// Parses the names of [`Scenario::name`].
    pub fn parse(s: &str) -> Result<Self, SimError> {
        match s {
            "cold" => Ok(Scenario::Cold),
            "reboot" => Ok(Scenario::Reboot),
            "reboot-devices" => Ok(Scenario::RebootDevices),
            "reattach" => Ok(Scenario::Reattach),
            "steady" => Ok(Scenario::Steady),
            _ => Err(SimError::InvalidConfig(format!(
                "scenario {s:?}: use cold, reboot, reboot-devices, reattach or steady"
            ))),
        }
    }
}

/// When a device sends its uplinks in [`Scenario::Steady`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UplinkPattern {
    /// Every [`SimConfig::uplink_interval`] plus a uniform offset in `[-jitter, +jitter]`
    /// (the first at a uniformly random time within one interval).
    Periodic {
        /// Largest offset from the period.
        jitter: Duration,
    },
    /// A Poisson process: exponential gaps with mean [`SimConfig::uplink_interval`].
    Poisson,
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

/// Most devices behind one gateway the simulator accepts (it raises the gateway's
/// `max_devices` to the number it simulates).
pub const MAX_DEVICES_PER_GATEWAY: u32 = 10_000;

/// The device timers a simulation sets in every [`DeviceConfig`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceTimers {
    /// ACK_TIMEOUT of the devices' uplinks (RFC 7252 §4.8; `DeviceConfig::transmission`).
    pub ack_timeout: Duration,
    /// CoAP-EAP trigger interval (`DeviceConfig::trigger_interval`).
    pub trigger_interval: Duration,
    /// CoAP-EAP exchange timeout (`DeviceConfig::exchange_timeout`).
    pub exchange_timeout: Duration,
}

impl Default for DeviceTimers {
    /// The defaults of [`DeviceConfig::new`]: 2 s (RFC 7252 §4.8), 10 s, 60 s.
    fn default() -> Self {
        DeviceTimers {
            ack_timeout: capillary_coap::reliability::TransmissionParams::default().ack_timeout,
            trigger_interval: Duration::from_secs(10),
            exchange_timeout: Duration::from_secs(60),
        }
    }
}

/// One simulation run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Number of gateways `G`.
    pub gateways: u32,
    /// Devices behind each gateway `D`, at most [`MAX_DEVICES_PER_GATEWAY`] (the simulator
    /// sets the gateway's `max_devices` to at least this).
    pub devices_per_gateway: u32,
    /// Batching mode.
    pub mode: Mode,
    /// What is simulated after the gateways authenticated.
    pub scenario: Scenario,
    /// Name of the gateway-link model, for reports (a preset name or `custom`).
    pub link_name: String,
    /// Capillary link model.
    pub capillary: CapillaryLink,
    /// Gateway link model.
    pub gateway_link: GatewayLink,
    /// Time the store takes to answer one request (vectors, authorization).
    pub store_rtt: Duration,
    /// Devices start at uniformly random times in `[0, start_spread]` after the gateways
    /// are authenticated (cold attach storm), and after the reboot (reboot scenarios).
    pub start_spread: Duration,
    /// Uplinks per device after it authenticated in the cold storm (the first at once, as
    /// `capillary demo`; not used by [`Scenario::Steady`]'s storm).
    pub uplinks: u32,
    /// Interval between a device's uplinks (cold storm), mean interval ([`Scenario::Steady`]).
    pub uplink_interval: Duration,
    /// Uplink arrival pattern of [`Scenario::Steady`].
    pub pattern: UplinkPattern,
    /// How long [`Scenario::Steady`] sends uplinks.
    pub steady_duration: Duration,
    /// Uplink payload size in bytes (at least 8: device index and sequence number).
    pub uplink_bytes: usize,
    /// Fraction of the devices, `0.0..=1.0`, whose K differs from the store's: they are
    /// refused (their authentication fails, they do not retry) and do not take part in
    /// uplinks or reboots.
    pub refused_fraction: f64,
    /// A device whose authentication failed starts again after this long (its driver),
    /// doubled for each further failure in a row (at most 256 times), with a random factor
    /// in [0.5, 1.5).
    pub restart_delay: Duration,
    /// CPU time of one device datagram; the devices of one gateway share one CPU.
    pub device_cpu: Duration,
    /// Network CPU time per batch entry received.
    pub network_cpu: Duration,
    /// Naive mode only: `POST /r` outstanding at once at each end (NSTART, RFC 7252 §4.7).
    pub naive_nstart: usize,
    /// The devices' CoAP and CoAP-EAP timers ([`DeviceTimers`]); default: the RFC values
    /// of [`DeviceConfig::new`]. Raise them on links whose round trip approaches them
    /// (NB-IoT).
    pub device_timers: DeviceTimers,
    /// Seed of every random choice.
    pub seed: u64,
    /// Optimisations switched off after [`apply_mode`] (none by default).
    pub without: Without,
    /// Simulated time after which a phase (the gateways' authentication, the storm, the
    /// measured scenario) stops (reported as not completed).
    pub time_limit: Duration,
}

impl Default for SimConfig {
    /// One gateway, 10 devices, batched, cold storm, broadband, the default capillary link,
    /// 1 ms store, 100 ms start spread, one uplink of 16 bytes, steady: periodic every 10 s
    /// without jitter for 60 s, no refused devices, restart after 1 s, the load model of
    /// `link_scaling.rs` (100 µs device CPU, 20 µs network CPU per entry), seed 1, 600 s
    /// limit.
    fn default() -> Self {
        SimConfig {
            gateways: 1,
            devices_per_gateway: 10,
            mode: Mode::Batched,
            scenario: Scenario::Cold,
            link_name: Preset::Broadband.name().into(),
            capillary: CapillaryLink::default(),
            gateway_link: Preset::Broadband.link(),
            store_rtt: Duration::from_millis(1),
            start_spread: Duration::from_millis(100),
            uplinks: 1,
            uplink_interval: Duration::from_secs(10),
            pattern: UplinkPattern::Periodic {
                jitter: Duration::ZERO,
            },
            steady_duration: Duration::from_secs(60),
            uplink_bytes: 16,
            refused_fraction: 0.0,
            restart_delay: Duration::from_secs(1),
            device_cpu: Duration::from_micros(100),
            network_cpu: Duration::from_micros(20),
            naive_nstart: 4,
            device_timers: DeviceTimers::default(),
            seed: 1,
            time_limit: Duration::from_secs(600),
            without: Without::default(),
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
        if self.devices_per_gateway > MAX_DEVICES_PER_GATEWAY {
            return bad("devices per gateway must be at most 10000");
        }
        if self.total_devices() > 1_000_000 {
            return bad("at most 1,000,000 devices in total");
        }
        if !(0.0..1.0).contains(&self.capillary.loss)
            || !(0.0..1.0).contains(&self.gateway_link.loss)
        {
            return bad("loss must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.refused_fraction) {
            return bad("refused fraction must be in [0, 1]");
        }
        if self.capillary.mtu == 0 {
            return bad("capillary mtu must be positive");
        }
        if self.gateway_link.bitrate == 0 || self.capillary.bitrate == Some(0) {
            return bad("bit rates must be positive");
        }
        if self.uplink_bytes < 8 || self.uplink_bytes > capillary_device::MAX_UPLINK_PAYLOAD {
            return bad("uplink bytes must be in 8..=1024");
        }
        if self.scenario == Scenario::Steady && self.uplink_interval.is_zero() {
            return bad("the steady scenario needs a positive uplink interval");
        }
        Ok(())
    }

    /// Total number of devices `G × D`.
    pub fn total_devices(&self) -> u64 {
        u64::from(self.gateways) * u64::from(self.devices_per_gateway)
    }
}

/// Traffic on one interface during the measured phase (the gateways' first authentication
/// is never counted; see [`Scenario`] for what each scenario measures).
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

/// A distribution of durations (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachTimes {
    /// Median (nearest rank).
    pub p50: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

impl AttachTimes {
    fn of(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        AttachTimes {
            p50: percentile(&v, 50),
            p99: percentile(&v, 99),
            max: v.last().copied().unwrap_or_default(),
        }
    }
}

/// The payload floor of the measured phase: the bytes that must cross the gateway link
/// whatever the relay does, computed from the device datagrams seen in clear on the
/// capillary link (both directions, each CoAP message once: retransmissions, recognised by
/// device, direction, type and Message ID, are not counted again).
///
/// - `eap`: for every CoAP message without an OSCORE option whose payload starts with an
///   EAP packet (RFC 3748 §4: code 1–4, length field within the payload), the EAP packet's
///   length field, i.e. the EAP packet without the CoAP-EAP CBOR information that follows
///   it (RFC 9820 §5). The EAP-Request/Identity (code 1, type 1) is excluded: the gateway
///   may send it itself (PROTOCOL.md §5), so it need not cross.
/// - `oscore`: for every CoAP message with an OSCORE option (uplinks and their answers, the
///   protected EAP-Success and its answer), the OSCORE option value plus the payload
///   (ciphertext with the 8-byte tag, RFC 8613 §6, §5.3).
///
/// Everything else (CoAP headers, tokens, other options, the CoAP-EAP trigger, Empty ACKs,
/// batch framing, the link's own OSCORE layer) is overhead of the relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Floor {
    /// EAP packets.
    pub eap: u64,
    /// OSCORE option values and ciphertexts.
    pub oscore: u64,
}

impl Floor {
    /// `eap + oscore`.
    pub fn total(&self) -> u64 {
        self.eap + self.oscore
    }
}

/// Result of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Mode.
    pub mode: Mode,
    /// Scenario.
    pub scenario: Scenario,
    /// Gateway-link model name.
    pub link: String,
    /// Gateways.
    pub gateways: u32,
    /// Devices in total.
    pub devices: u64,
    /// Seed.
    pub seed: u64,
    /// Every phase finished before its time limit: every device (not refused) authenticated,
    /// every uplink was answered, and in the reboot scenarios every device delivered an
    /// uplink after the reboot.
    pub completed: bool,
    /// Device authentications in the measured phase (a device that authenticates twice
    /// counts twice).
    pub authenticated: u64,
    /// Device authentications of the whole run (storm and measured phase).
    pub total_authentications: u64,
    /// Device authentication failures of devices that are not refused (the device starts
    /// again after [`SimConfig::restart_delay`]), in the measured phase.
    pub failures: u64,
    /// Devices given a wrong K ([`SimConfig::refused_fraction`]).
    pub refused_devices: u64,
    /// Of those, how many got their authentication refused (a `Failed` event) in the cold
    /// storm.
    pub refused: u64,
    /// Uplinks handed to the devices in the measured phase.
    pub uplinks_sent: u64,
    /// Uplinks acknowledged to the devices.
    pub uplinks_acked: u64,
    /// Uplinks that failed on the device.
    pub uplinks_failed: u64,
    /// Uplinks the network delivered (after its duplicate detection).
    pub uplinks_delivered: u64,
    /// From an uplink handed to the device to its delivery by the network (includes the
    /// wait behind the device's previous uplink, NSTART 1).
    pub uplink_latency: AttachTimes,
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
    /// The payload floor of the measured phase ([`Floor`]).
    pub floor: Floor,
    /// Time to attach in the cold storm (start to `Authenticated`), of the devices that
    /// authenticated.
    pub attach: AttachTimes,
    /// Simulated time from the storm's start to the last device authenticated.
    pub attach_all: Duration,
    /// Reboot scenarios: per device, from the reboot to the network's delivery of its first
    /// uplink after it; `max` is the time until every device can deliver again.
    pub recovery: Option<AttachTimes>,
    /// Simulated time of the measured phase.
    pub duration: Duration,
    /// Inputs the network dropped in the measured phase, by cause (`LinkStats::dropped`,
    /// the cause's `Debug` name).
    pub network_dropped: BTreeMap<String, u64>,
    /// Real time the run took, set by the caller ([`run`] leaves it `None` so that its
    /// reports stay deterministic).
    pub wall_clock: Option<Duration>,
}

impl SimReport {
    /// Gateway-link bytes (both directions) of the phase divided by its floor; `None` when
    /// the floor is zero.
    pub fn floor_ratio(&self) -> Option<f64> {
        let f = self.floor.total();
        (f > 0).then(|| self.gateway_link.bytes.unwrap_or(0) as f64 / f as f64)
    }

    /// Devices that take part (not refused).
    pub fn active_devices(&self) -> u64 {
        self.devices - self.refused_devices
    }

    /// [`SimReport::total_authentications`] per second of real time of the whole run, if
    /// [`SimReport::wall_clock`] is set: a bound on device authentications per second
    /// through one gateway set by the CPU cost of all three parties' state machines on one
    /// core (plus the simulator's own bookkeeping).
    pub fn auths_per_wall_second(&self) -> Option<f64> {
        self.wall_clock
            .filter(|w| !w.is_zero())
            .map(|w| self.total_authentications as f64 / w.as_secs_f64())
    }
}

/// Progress of a run, for a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Simulated time since the storm began (zero during the gateways' authentication).
    pub sim_time: Duration,
    /// Devices authenticated so far in the cold storm.
    pub authenticated: u64,
    /// Uplinks delivered by the network in the current phase.
    pub delivered: u64,
    /// Reboot scenarios: devices that delivered an uplink since the reboot.
    pub recovered: u64,
    /// Devices in total.
    pub devices: u64,
    /// Events processed.
    pub events: u64,
}

const GW_PREFIX: &str = "0010190";
const DEV_PREFIX: &str = "0010100";

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
    /// The store answers a vector prefetch (PROTOCOL.md §6.2) for these devices.
    Prefetch(u64, Vec<Imsi>),
    /// Nothing: wakes the loop at an instant (end of the steady phase).
    Wake,
}

/// What a device's driver does in the current phase.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Cold storm: after the first authentication, `uplinks` uplinks `uplink_interval` apart.
    #[default]
    Storm,
    /// Steady uplinks until the end instant.
    Steady,
    /// After a reboot: one uplink; a failed one triggers a re-authentication and a resend.
    Recovery,
}

#[derive(Debug, Default, Clone, Copy)]
struct DevState {
    /// K differs from the store's: refused, never retried.
    bad: bool,
    /// A bad device's authentication failed.
    refused: bool,
    /// Failed authentications in a row (reset by a success): the restart back-off.
    fails: u32,
    started: Option<Instant>,
    attach: Option<Duration>,
    /// Cold storm: uplinks still to send.
    uplinks_left: u32,
    /// Next uplink sequence number.
    seq: u32,
    /// Recovery: an uplink must be (re)sent once authenticated.
    want_uplink: bool,
    /// Recovery: a CoAP-EAP run is in progress.
    reauthenticating: bool,
    /// Recovery: time from the reboot to the first uplink delivered after it.
    recovered: Option<Duration>,
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
    authenticated: u64,
    failures: u64,
    sent: u64,
    acked: u64,
    uplink_failed: u64,
    delivered: u64,
    floor: Floor,
}

/// The simulation state. Use [`run`].
struct Sim {
    cfg: SimConfig,
    now: Instant,
    storm_start: Instant,
    phase: Phase,
    phase_start: Instant,
    steady_end: Instant,
    net: LinkEndpoint,
    /// `None`: stale (the endpoint was touched since it was computed).
    net_timer: Option<Option<Instant>>,
    gws: Vec<Gateway<u32>>,
    gw_timer: Vec<Option<Option<Instant>>>,
    gw_authenticated: Vec<bool>,
    gw_opts: GatewayOptions,
    batcher: BatcherConfig,
    /// Stats of gateways replaced by a reboot.
    retired: Snapshot,
    devices: Vec<Device>,
    dev: Vec<DevState>,
    /// Device timers: `dev_timer[i]` is device `i`'s `poll_timeout` as last seen, indexed in
    /// `timers`.
    dev_timer: Vec<Option<Instant>>,
    timers: BTreeSet<(Instant, u32)>,
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
    /// One random stream per device (its capillary link and its uplink times) and per
    /// gateway (its link), so that the order in which the state machines emit simultaneous
    /// outputs (some iterate hash maps) cannot change which datagram is lost or delayed.
    dev_rng: Vec<StdRng>,
    gw_rng: Vec<StdRng>,
    opc: Opc,
    /// Counters of the current phase.
    c: Counters,
    /// Messages already counted in the floor: (device, to device, CoAP type, Message ID).
    floor_seen: HashSet<(u32, bool, u8, u16)>,
    /// Uplinks handed to a device and not yet delivered: (device, seq) → when.
    in_flight: HashMap<(u32, u32), Instant>,
    latencies: Vec<Duration>,
    /// Devices authenticated in the storm, ever (attach times taken).
    storm_authenticated: u64,
    total_authentications: u64,
    refused: u64,
    recovered: u64,
    /// `LinkStats::dropped` at the start of the phase.
    dropped_before: BTreeMap<DropCause, u64>,
    /// The last first authentication of the storm.
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
        let total = cfg.gateways * cfg.devices_per_gateway;
        link_cfg.max_devices = link_cfg.max_devices.max(total as usize);
        let mut opts = GatewayOptions::default();
        opts.link.ack_timeout = ack;
        // NSTART scaled to the link the same way (RFC 7252 §4.7 lets the application
        // environment raise it): as many full batches outstanding as the link serializes
        // in half an ACK_TIMEOUT, at least the default 4 and at most 32. A wave of 10,000
        // devices is about 20 datagrams per step: on broadband they all go at once; on a
        // slow link the default stays (going below it measured worse on NB-IoT: the link
        // idles while the gateway waits for answers).
        let nstart = if full.is_zero() {
            32
        } else {
            ((ack / 2).as_nanos() / full.as_nanos()).clamp(4, 32) as usize
        };
        opts.link.nstart = nstart;
        link_cfg.transmission.nstart = nstart;
        let mut batcher = BatcherConfig::default();
        apply_mode(
            cfg.mode,
            cfg.naive_nstart,
            &mut batcher,
            &mut opts,
            &mut link_cfg,
        );
        cfg.without.apply(&mut opts, &mut link_cfg);
        let net = LinkEndpoint::new(link_cfg, rng.next_u64());
        let mut gws = Vec::new();
        for g in 0..cfg.gateways {
            gws.push(Self::gateway(cfg, g, batcher, &opts, rng.next_u64())?);
        }
        let mut devices = Vec::with_capacity(total as usize);
        let mut dev = vec![DevState::default(); total as usize];
        for i in 0..total {
            // Refused devices: chosen from the seed, independent of N's other devices.
            let r = mix(cfg.seed, 3, u64::from(i)) as f64 / u64::MAX as f64;
            dev[i as usize].bad = r < cfg.refused_fraction;
            devices.push(Self::device(
                i,
                dev[i as usize].bad,
                cfg.device_timers,
                rng.next_u64(),
            )?);
        }
        let g = cfg.gateways as usize;
        Ok(Sim {
            cfg: cfg.clone(),
            now,
            storm_start: now,
            phase: Phase::Storm,
            phase_start: now,
            steady_end: now,
            net,
            net_timer: None,
            gws,
            gw_timer: vec![None; g],
            gw_authenticated: vec![false; g],
            gw_opts: opts,
            batcher,
            retired: Snapshot::default(),
            devices,
            dev,
            dev_timer: vec![None; total as usize],
            timers: BTreeSet::new(),
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
            floor_seen: HashSet::new(),
            in_flight: HashMap::new(),
            latencies: Vec::new(),
            storm_authenticated: 0,
            total_authentications: 0,
            refused: 0,
            recovered: 0,
            dropped_before: BTreeMap::new(),
            last_auth: now,
            events: 0,
        })
    }

    /// A fresh gateway `g` (at the start, or after a reboot).
    fn gateway(
        cfg: &SimConfig,
        g: u32,
        batcher: BatcherConfig,
        opts: &GatewayOptions,
        seed: u64,
    ) -> Result<Gateway<u32>, SimError> {
        let s = gw_imsi(g);
        let mut gc = GatewayConfig::new(imsi(&s)?, k_of(&s)?, opc()?);
        gc.batcher = batcher;
        // 10,000 devices behind one gateway: the default is 1,024.
        gc.max_devices = gc.max_devices.max(cfg.devices_per_gateway as usize);
        gc.validate()
            .map_err(|e| SimError::InvalidConfig(format!("gateway: {e}")))?;
        Ok(Gateway::with_options(gc, opts.clone(), seed))
    }

    /// A fresh device `i` (at the start, or after a reboot); `bad`: a K the store does not
    /// know.
    fn device(i: u32, bad: bool, t: DeviceTimers, seed: u64) -> Result<Device, SimError> {
        let s = dev_imsi(i);
        let k = if bad {
            k_of(&format!("{s}-wrong"))?
        } else {
            k_of(&s)?
        };
        let mut cfg = DeviceConfig::new(imsi(&s)?, k, opc()?);
        cfg.transmission.ack_timeout = t.ack_timeout;
        cfg.trigger_interval = t.trigger_interval;
        cfg.exchange_timeout = t.exchange_timeout;
        Ok(Device::new(cfg, seed))
    }

    fn gw_of(&self, dev: u32) -> u32 {
        dev / self.cfg.devices_per_gateway.max(1)
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    /// Adds a capillary datagram of device `dev` to the payload floor ([`Floor`]).
    fn count_floor(&mut self, dev: u32, to_device: bool, bytes: &[u8]) {
        let Ok(msg) = Message::parse(bytes) else {
            return;
        };
        let key = (dev, to_device, msg.ty as u8, msg.message_id);
        if let Some(o) = msg.option(option_number::OSCORE) {
            let n = (o.len() + msg.payload.len()) as u64;
            if self.floor_seen.insert(key) {
                self.c.floor.oscore += n;
            }
            return;
        }
        let p = &msg.payload;
        if p.len() < 4 || !(1..=4).contains(&p[0]) {
            return;
        }
        let len = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if len < 4 || len > p.len() {
            return;
        }
        // EAP-Request/Identity: the gateway may send it itself (PROTOCOL.md §5).
        if p[0] == 1 && len >= 5 && p[4] == 1 {
            return;
        }
        if self.floor_seen.insert(key) {
            self.c.floor.eap += len as u64;
        }
    }

    /// A capillary datagram in either direction: frames, loss, medium, latency, jitter.
    /// Returns the arrival time, or `None` if lost.
    fn capillary(&mut self, g: u32, dev: u32, bytes: &[u8], to_device: bool) -> Option<Instant> {
        let cap = self.cfg.capillary;
        let len = bytes.len();
        self.count_floor(dev, to_device, bytes);
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
        let Some(arrival) = self.capillary(g, dev, &bytes, true) else {
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
            LinkEvent::PrefetchVectors {
                ticket,
                gateway,
                skip,
                limit,
            } => {
                self.c.store_requests += 1;
                let g = gateway
                    .as_str()
                    .strip_prefix(GW_PREFIX)
                    .and_then(|n| n.parse::<u32>().ok())
                    .and_then(|n| n.checked_sub(1));
                let d = self.cfg.devices_per_gateway;
                let skip: HashSet<&str> = skip.iter().map(Imsi::as_str).collect();
                let who = g
                    .map(|g| (g * d..(g + 1) * d).map(dev_imsi).collect::<Vec<_>>())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|i| !skip.contains(i.as_str()))
                    .take(limit)
                    .filter_map(|i| Imsi::new(&i).ok())
                    .collect();
                self.schedule(at, Ev::Prefetch(ticket, who));
            }
            LinkEvent::Uplink { payload, .. } => self.uplink_delivered(&payload),
            _ => {}
        }
    }

    /// The network delivered an uplink: latency, and recovery in the reboot scenarios.
    fn uplink_delivered(&mut self, payload: &[u8]) {
        self.c.delivered += 1;
        let (Some(d), Some(s)) = (payload.get(0..4), payload.get(4..8)) else {
            return;
        };
        let dev = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let seq = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
        if let Some(t) = self.in_flight.remove(&(dev, seq)) {
            self.latencies.push(self.now.saturating_duration_since(t));
        }
        if self.phase == Phase::Recovery {
            if let Some(st) = self.dev.get_mut(dev as usize) {
                if st.recovered.is_none() {
                    st.recovered = Some(self.now.saturating_duration_since(self.phase_start));
                    st.want_uplink = false;
                    self.recovered += 1;
                }
            }
        }
    }

    /// Re-reads device `i`'s timer into the index.
    fn refresh_timer(&mut self, i: u32) {
        let t = self.devices[i as usize].poll_timeout();
        let old = self.dev_timer[i as usize];
        if t != old {
            if let Some(o) = old {
                self.timers.remove(&(o, i));
            }
            if let Some(t) = t {
                self.timers.insert((t, i));
            }
            self.dev_timer[i as usize] = t;
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
            if progressed {
                self.net_timer = None;
            }
            down.sort_by_key(|(g, _)| *g);
            for (g, bytes) in down {
                self.send_link(g, bytes, false);
            }
            for g in 0..self.cfg.gateways {
                let mut to_devices = Vec::new();
                while let Some(tx) = self.gws[g as usize].poll_transmit() {
                    progressed = true;
                    self.gw_timer[g as usize] = None;
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
                self.device_outputs(i)?;
                progressed = true;
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Device `i` was touched: its events (the driver's reactions), its datagrams, its timer.
    fn device_outputs(&mut self, i: u32) -> Result<(), SimError> {
        let now = self.now;
        let mut authed = false;
        let mut failed = false;
        let mut uplink_failed = false;
        let mut self_restarted = false;
        while let Some(ev) = self.devices[i as usize].poll_event() {
            match ev {
                DeviceEvent::Authenticated { .. } => authed = true,
                DeviceEvent::UplinkAcked { .. } => self.c.acked += 1,
                DeviceEvent::UplinkFailed { reason, .. } => {
                    self.c.uplink_failed += 1;
                    uplink_failed = true;
                    // "Security context not found" (RFC 8613 §8.2): the device starts a
                    // new authentication by itself.
                    self_restarted |= matches!(
                        reason,
                        capillary_device::DeviceError::Rejected(c)
                            if c == capillary_coap::Code::UNAUTHORIZED
                    );
                }
                DeviceEvent::Failed(_) => failed = true,
                _ => {}
            }
        }
        if failed {
            let st = &mut self.dev[i as usize];
            st.reauthenticating = false;
            if st.bad {
                // Counted once: a refused device does not try again.
                if !st.refused {
                    st.refused = true;
                    self.refused += 1;
                }
            } else {
                self.c.failures += 1;
                st.fails += 1;
                let at = now + self.restart_backoff(i);
                self.schedule(at, Ev::Start(i));
            }
        }
        if authed {
            self.c.authenticated += 1;
            self.total_authentications += 1;
            let phase = self.phase;
            let st = &mut self.dev[i as usize];
            st.reauthenticating = false;
            st.fails = 0;
            match phase {
                Phase::Storm if st.attach.is_none() => {
                    self.storm_authenticated += 1;
                    self.last_auth = now;
                    st.attach = st.started.map(|s| now.saturating_duration_since(s));
                    st.uplinks_left = self.cfg.uplinks;
                    if st.uplinks_left > 0 {
                        self.send_uplink(i)?;
                    }
                }
                Phase::Recovery if st.want_uplink => self.send_uplink(i)?,
                _ => {}
            }
        }
        if uplink_failed && self.phase == Phase::Recovery {
            // The device's driver: the network does not answer under this session any
            // more, so authenticate again and resend.
            let st = &mut self.dev[i as usize];
            if st.recovered.is_none() && !st.bad {
                st.want_uplink = true;
                if !st.reauthenticating {
                    st.reauthenticating = true;
                    if !self_restarted {
                        self.devices[i as usize].start(now);
                    }
                }
            }
        }
        let g = self.gw_of(i);
        while let Some(b) = self.devices[i as usize].poll_transmit() {
            if let Some(at) = self.capillary(g, i, &b, false) {
                self.schedule(at, Ev::FromDevice(i, b));
            }
        }
        // A second round of events can only come from `start` or `send_uplink` above.
        while let Some(ev) = self.devices[i as usize].poll_event() {
            if let DeviceEvent::Failed(_) = ev {
                self.c.failures += 1;
            }
        }
        self.refresh_timer(i);
        Ok(())
    }

    /// The driver's wait before restarting device `i` after its `fails`-th failure in a
    /// row: [`SimConfig::restart_delay`] doubled per earlier failure (at most 2^8 times),
    /// times a uniform factor in [0.5, 1.5) so that devices that failed together do not
    /// retry together.
    fn restart_backoff(&mut self, i: u32) -> Duration {
        let fails = self.dev[i as usize].fails.clamp(1, 9);
        let base = self.cfg.restart_delay * (1u32 << (fails - 1));
        let f: f64 = self.dev_rng[i as usize].gen_range(0.5..1.5);
        base.mul_f64(f)
    }

    /// Hands device `i` its next uplink now and schedules the one after (storm: the
    /// configured count; steady: the pattern, until the end of the phase).
    fn send_uplink(&mut self, i: u32) -> Result<(), SimError> {
        let phase = self.phase;
        let st = &mut self.dev[i as usize];
        if st.bad {
            return Ok(());
        }
        let next = match phase {
            Phase::Storm => {
                if st.uplinks_left == 0 {
                    return Ok(());
                }
                st.uplinks_left -= 1;
                (st.uplinks_left > 0).then(|| self.now + self.cfg.uplink_interval)
            }
            Phase::Steady => {
                let at = self.now + self.gap(i, false);
                (at < self.steady_end).then_some(at)
            }
            Phase::Recovery => None,
        };
        let st = &mut self.dev[i as usize];
        let seq = st.seq;
        st.seq += 1;
        let mut payload = vec![0u8; self.cfg.uplink_bytes.max(8)];
        payload[0..4].copy_from_slice(&i.to_be_bytes());
        payload[4..8].copy_from_slice(&seq.to_be_bytes());
        self.c.sent += 1;
        if self.devices[i as usize]
            .send_uplink(self.now, &payload)
            .is_err()
        {
            self.c.uplink_failed += 1;
        } else {
            self.in_flight.insert((i, seq), self.now);
        }
        self.dirty.insert(i);
        if let Some(at) = next {
            self.schedule(at, Ev::Uplink(i));
        }
        Ok(())
    }

    /// Time to device `i`'s next steady uplink; `first`: from the start of the phase.
    fn gap(&mut self, i: u32, first: bool) -> Duration {
        let mean = self.cfg.uplink_interval.as_secs_f64();
        let rng = &mut self.dev_rng[i as usize];
        let secs = match self.cfg.pattern {
            UplinkPattern::Poisson => {
                // Exponential gaps; the process is memoryless, so the first is one too.
                let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
                -mean * u.ln()
            }
            UplinkPattern::Periodic { .. } if first => rng.gen_range(0.0..mean),
            UplinkPattern::Periodic { jitter } => {
                let j = jitter.as_secs_f64().min(mean);
                if j > 0.0 {
                    mean + rng.gen_range(-j..=j)
                } else {
                    mean
                }
            }
        };
        Duration::from_secs_f64(secs.max(0.0))
    }

    fn deliver(&mut self, ev: Ev) -> Result<(), SimError> {
        let now = self.now;
        match ev {
            Ev::ToNetwork(g, bytes) => {
                let start = now.max(self.network_cpu_free);
                let before = self.net.stats().entries_in;
                self.net.handle_datagram(start, gw_addr(g), &bytes);
                self.net_timer = None;
                let entries = self.net.stats().entries_in - before;
                let cost = self.cfg.network_cpu * u32::try_from(entries).unwrap_or(u32::MAX);
                self.network_cpu_free = start + cost;
            }
            Ev::ToGateway(g, bytes) => {
                self.gws[g as usize].handle_network_datagram(now, &bytes);
                self.gw_timer[g as usize] = None;
            }
            Ev::FromDevice(i, bytes) => {
                let g = self.gw_of(i);
                let local = i - g * self.cfg.devices_per_gateway;
                self.gws[g as usize].handle_device_datagram(now, local, &bytes);
                self.gw_timer[g as usize] = None;
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
                self.net_timer = None;
            }
            Ev::Prefetch(ticket, who) => {
                let mut v = Vec::with_capacity(who.len());
                for w in who {
                    let vector = self.vector(&w)?;
                    v.push((w, vector));
                }
                self.net
                    .provide_prefetch(now, ticket, v)
                    .map_err(|e| SimError::Internal(format!("provide_prefetch: {e}")))?;
                self.net_timer = None;
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
                self.net_timer = None;
            }
            Ev::Wake => {}
        }
        Ok(())
    }

    /// The network's and the gateways' timers, cached between the calls that can change
    /// them (both compute them over every device they hold).
    fn net_timeout(&mut self) -> Option<Instant> {
        if self.net_timer.is_none() {
            self.net_timer = Some(self.net.poll_timeout());
        }
        self.net_timer.flatten()
    }

    fn gw_timeout(&mut self, g: usize) -> Option<Instant> {
        if self.gw_timer[g].is_none() {
            self.gw_timer[g] = Some(self.gws[g].poll_timeout());
        }
        self.gw_timer[g].flatten()
    }

    fn next_timer(&mut self) -> Option<Instant> {
        let devs = self.timers.first().map(|(t, _)| *t);
        let gws = (0..self.gws.len()).filter_map(|g| self.gw_timeout(g)).min();
        [self.net_timeout(), gws, devs].into_iter().flatten().min()
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
                    authenticated: self.storm_authenticated,
                    delivered: self.c.delivered,
                    recovered: self.recovered,
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
            if self.net_timeout().is_some_and(|t| t <= now) {
                self.net.handle_timeout(now);
                self.net_timer = None;
            }
            for g in 0..self.gws.len() {
                if self.gw_timeout(g).is_some_and(|t| t <= now) {
                    self.gws[g].handle_timeout(now);
                    self.gw_timer[g] = None;
                }
            }
            while let Some(&(t, i)) = self.timers.first() {
                if t > now {
                    break;
                }
                self.timers.pop_first();
                self.dev_timer[i as usize] = None;
                self.devices[i as usize].handle_timeout(now);
                self.dirty.insert(i);
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut s = self.retired;
        for g in &self.gws {
            s.add(g);
        }
        s.link_lost = self.c.link_lost;
        s.store_round_trips = self.net.stats().store_round_trips;
        s.store_requests = self.c.store_requests;
        s
    }

    /// Starts a measured phase: counters from zero.
    fn begin_phase(&mut self, phase: Phase) -> Snapshot {
        self.c = Counters::default();
        self.floor_seen.clear();
        self.latencies.clear();
        for st in &mut self.dev {
            st.up = 0;
            st.down = 0;
        }
        self.phase = phase;
        self.phase_start = self.now;
        self.dropped_before = self.net.stats().dropped;
        self.snapshot()
    }

    /// The gateways authenticate (not counted in any report).
    fn gateways_up(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<bool, SimError> {
        let now = self.now;
        for g in 0..self.gws.len() {
            self.gws[g].start(now);
            self.gw_timer[g] = None;
        }
        let limit = self.now + self.cfg.time_limit;
        self.run_until(
            limit,
            |s| {
                s.gw_authenticated.iter().all(|a| *a)
                    && (0..s.cfg.gateways).all(|g| s.net.is_gateway_authenticated(gw_addr(g)))
            },
            progress,
        )
    }

    /// Schedules every device's start within the spread, from now.
    fn start_devices(&mut self) {
        let spread = u64::try_from(self.cfg.start_spread.as_nanos()).unwrap_or(u64::MAX);
        for i in 0..self.devices.len() as u32 {
            let off = if spread == 0 {
                0
            } else {
                self.rng.gen_range(0..=spread)
            };
            let at = self.now + Duration::from_nanos(off);
            self.schedule(at, Ev::Start(i));
        }
    }

    /// The cold storm, with `uplinks` uplinks per device. Returns whether it completed.
    fn storm(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<bool, SimError> {
        self.storm_start = self.now;
        self.start_devices();
        let n_bad = self.dev.iter().filter(|d| d.bad).count() as u64;
        let good = self.cfg.total_devices() - n_bad;
        let k = u64::from(self.cfg.uplinks);
        let end = self.now + self.cfg.time_limit;
        self.run_until(
            end,
            move |s| {
                s.storm_authenticated == good
                    && s.refused == n_bad
                    && s.c.acked + s.c.uplink_failed >= good * k
                    && s.c.delivered >= s.c.acked
            },
            progress,
        )
    }

    /// Steady uplinks for the configured duration, then until every one is answered.
    fn steady(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<bool, SimError> {
        self.steady_end = self.now + self.cfg.steady_duration;
        for i in 0..self.devices.len() as u32 {
            if self.dev[i as usize].bad {
                continue;
            }
            let at = self.now + self.gap(i, true);
            if at < self.steady_end {
                self.schedule(at, Ev::Uplink(i));
            }
        }
        let end_mark = self.steady_end;
        self.schedule(end_mark, Ev::Wake);
        let end = self.steady_end + self.cfg.time_limit;
        self.run_until(
            end,
            move |s| {
                s.now >= end_mark
                    && s.c.acked + s.c.uplink_failed >= s.c.sent
                    && s.c.delivered >= s.c.acked
            },
            progress,
        )
    }

    /// Reboots the gateways (and the devices with `devices`), then waits until every device
    /// delivered an uplink.
    fn reboot(
        &mut self,
        scenario: Scenario,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<bool, SimError> {
        let now = self.now;
        let devices = scenario == Scenario::RebootDevices;
        let reattach = scenario == Scenario::Reattach;
        for g in 0..self.cfg.gateways {
            if reattach {
                break;
            }
            let seed = self.rng.next_u64();
            let fresh = Self::gateway(&self.cfg, g, self.batcher, &self.gw_opts, seed)?;
            let old = std::mem::replace(&mut self.gws[g as usize], fresh);
            self.retired.add(&old);
            self.gw_authenticated[g as usize] = false;
            self.gws[g as usize].start(now);
            self.gw_timer[g as usize] = None;
        }
        let spread = u64::try_from(self.cfg.start_spread.as_nanos()).unwrap_or(u64::MAX);
        for i in 0..self.devices.len() as u32 {
            if self.dev[i as usize].bad {
                continue;
            }
            self.dev[i as usize].want_uplink = true;
            let off = if spread == 0 {
                0
            } else {
                self.rng.gen_range(0..=spread)
            };
            let at = now + Duration::from_nanos(off);
            if devices || reattach {
                if devices {
                    let seed = self.rng.next_u64();
                    let timers = self.cfg.device_timers;
                    self.devices[i as usize] = Self::device(i, false, timers, seed)?;
                }
                self.dev[i as usize].reauthenticating = true;
                self.schedule(at, Ev::Start(i));
            } else {
                self.schedule(at, Ev::Uplink(i));
            }
            self.dirty.insert(i);
        }
        let good = self.dev.iter().filter(|d| !d.bad).count() as u64;
        let end = self.now + self.cfg.time_limit;
        self.run_until(end, move |s| s.recovered == good, progress)
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

impl Snapshot {
    fn add(&mut self, g: &Gateway<u32>) {
        let st = g.stats();
        self.link_msgs += st.link_msgs_in + st.link_msgs_out;
        self.link_bytes += st.link_bytes_in + st.link_bytes_out;
        self.link_round_trips += st.link_round_trips;
        self.link_exchanges += st.link_exchanges;
        self.link_retransmissions += st.link_retransmissions;
    }
}

fn percentile(sorted: &[Duration], p: u64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let n = sorted.len() as u64;
    let rank = (p * n).div_ceil(100).clamp(1, n);
    sorted[(rank - 1) as usize]
}

/// Runs one simulation: the gateways authenticate (never counted), then the devices attach
/// (cold storm within [`SimConfig::start_spread`]), then the [`Scenario`]. `progress` is
/// called about once per simulated second.
pub fn run(cfg: &SimConfig, progress: &mut dyn FnMut(Progress)) -> Result<SimReport, SimError> {
    let mut sim = Sim::new(cfg)?;
    if !sim.gateways_up(progress)? {
        return Err(SimError::InvalidConfig(
            "the gateways did not authenticate within the time limit".into(),
        ));
    }
    if cfg.scenario == Scenario::Steady {
        // The storm of the steady scenario sends no uplinks of its own.
        sim.cfg.uplinks = 0;
    }
    let mut before = sim.begin_phase(Phase::Storm);
    let mut completed = sim.storm(progress)?;
    let mut recovery = None;
    if completed && cfg.scenario != Scenario::Cold {
        // Let the storm's last answers settle, then measure the scenario alone.
        let settle = sim.now + Duration::from_secs(1);
        sim.run_until(settle, |_| false, progress)?;
        match cfg.scenario {
            Scenario::Steady => {
                before = sim.begin_phase(Phase::Steady);
                completed = sim.steady(progress)?;
            }
            Scenario::Reboot | Scenario::RebootDevices | Scenario::Reattach => {
                before = sim.begin_phase(Phase::Recovery);
                completed = sim.reboot(cfg.scenario, progress)?;
                recovery = Some(AttachTimes::of(
                    sim.dev.iter().filter_map(|d| d.recovered).collect(),
                ));
            }
            Scenario::Cold => {}
        }
    }
    let after = sim.snapshot();
    let attach = AttachTimes::of(
        sim.dev
            .iter()
            .filter(|d| !d.bad)
            .filter_map(|d| d.attach)
            .collect(),
    );
    let cap_rt = sim.dev.iter().map(|d| d.up.min(d.down)).sum::<u64>();
    let c = sim.c;
    Ok(SimReport {
        mode: cfg.mode,
        scenario: cfg.scenario,
        link: cfg.link_name.clone(),
        gateways: cfg.gateways,
        devices: cfg.total_devices(),
        seed: cfg.seed,
        completed,
        authenticated: c.authenticated,
        total_authentications: sim.total_authentications,
        failures: c.failures,
        refused_devices: sim.dev.iter().filter(|d| d.bad).count() as u64,
        refused: sim.refused,
        uplinks_sent: c.sent,
        uplinks_acked: c.acked,
        uplinks_failed: c.uplink_failed,
        uplinks_delivered: c.delivered,
        uplink_latency: AttachTimes::of(std::mem::take(&mut sim.latencies)),
        capillary: InterfaceStats {
            messages: c.cap_msgs,
            bytes: Some(c.cap_bytes),
            round_trips: cap_rt,
        },
        capillary_lost: c.cap_lost,
        gateway_link: InterfaceStats {
            messages: after.link_msgs - before.link_msgs,
            bytes: Some(after.link_bytes - before.link_bytes),
            round_trips: after.link_round_trips - before.link_round_trips,
        },
        link_exchanges: after.link_exchanges - before.link_exchanges,
        link_retransmissions: after.link_retransmissions - before.link_retransmissions,
        link_lost: c.link_lost,
        store: InterfaceStats {
            messages: c.store_requests,
            bytes: None,
            round_trips: after.store_round_trips - before.store_round_trips,
        },
        floor: c.floor,
        attach,
        attach_all: sim.last_auth.saturating_duration_since(sim.storm_start),
        recovery,
        duration: sim.now.saturating_duration_since(sim.phase_start),
        network_dropped: sim
            .net
            .stats()
            .dropped
            .iter()
            .filter_map(|(k, v)| {
                let was = sim.dropped_before.get(k).copied().unwrap_or(0);
                (*v > was).then(|| (format!("{k:?}"), v - was))
            })
            .collect(),
        wall_clock: None,
    })
}
