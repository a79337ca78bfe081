//! `capillary device`: runs one or many devices (soft USIM, CoAP-EAP + EAP-AKA', OSCORE) over
//! real UDP sockets against a gateway, each device on its own socket. The protocol logic is
//! `capillary-device`; this module only owns sockets, timers, the retry policy and the
//! emulation of a lossy capillary link.
//!
//! Retry policy (default on, `--no-retry` turns it off): an attempt is one [`Device`] from
//! [`Device::start`] until it is authenticated and its uplinks are acknowledged. An attempt
//! ends as *lost* when the authentication fails ([`DeviceEvent::Failed`]), the session ends
//! ([`DeviceEvent::SessionExpired`], an uplink not delivered) or nothing progresses for
//! `--stall` seconds (nothing received from the gateway, and no uplink acknowledged: the
//! gateway went away mid-exchange, and the device's own timers of RFC 9820 wait up to a
//! minute). The device then waits 1 s, 2 s, 4 s, 8 s, 8 s, ... (minus up to a quarter of
//! jitter, so that a population does not retry in lockstep; back to 1 s after an attempt that
//! authenticated) and starts again with a fresh state machine, until the overall `--timeout`.
//! Each device is counted once, by its final outcome.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use capillary_device::{Device, DeviceConfig, DeviceEvent};
use capillary_secrets::{Imsi, Opc, Secret, K};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tracing::Instrument;

/// First wait before a retry.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// With retries: an attempt that has heard nothing at all from the gateway for this long (the
/// trigger was lost) is lost, even when `--stall` is longer.
pub const FIRST_ANSWER_STALL: Duration = Duration::from_secs(2);

/// Options of `capillary device`.
#[derive(Debug, clap::Args)]
pub struct DeviceArgs {
    /// The gateway's capillary-side address.
    #[arg(long, default_value = "127.0.0.1:5684")]
    pub gateway: SocketAddr,
    /// IMSI of the first device; the others follow consecutively.
    #[arg(long)]
    pub imsi_start: String,
    /// Number of devices.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// K of every device (hex; a test population shares credentials).
    #[arg(long)]
    pub k: String,
    /// OPc of every device (hex).
    #[arg(long)]
    pub opc: String,
    /// Uplink messages each device sends after authenticating.
    #[arg(long, default_value_t = 1)]
    pub uplinks: u32,
    /// Seconds to wait for everything to finish.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Emulate a lossy capillary link: drop each datagram a device sends or receives with
    /// this probability (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub loss: f64,
    /// Seed of the loss emulation and of the devices' randomness (default: random; the seed
    /// used is printed on stderr).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not retry: a device whose authentication fails stays failed.
    #[arg(long)]
    pub no_retry: bool,
    /// With retries: seconds without progress (nothing received, no uplink acknowledged)
    /// after which an attempt counts as lost; at most 2 s before the first answer.
    #[arg(long, default_value_t = 5)]
    pub stall: u64,
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err("must be between 0 and 1".into())
    }
}

/// Counters of a run, shared by all device tasks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Devices authenticated (at the end of a run: devices that ended authenticated).
    pub authenticated: AtomicU64,
    /// Devices that ended without a session after at least one failed or lost attempt.
    pub failed: AtomicU64,
    /// Uplinks acknowledged by the network (each uplink of a device counted once).
    pub uplinks_acked: AtomicU64,
    /// Uplinks sent at least once and never acknowledged.
    pub uplinks_failed: AtomicU64,
    /// Downlinks received.
    pub downlinks: AtomicU64,
    /// Datagrams sent to the gateway.
    pub msgs_out: AtomicU64,
    /// Datagrams received from the gateway.
    pub msgs_in: AtomicU64,
    /// Bytes sent to the gateway.
    pub bytes_out: AtomicU64,
    /// Bytes received from the gateway.
    pub bytes_in: AtomicU64,
    /// Attempts started (one per device plus one per retry).
    pub attempts: AtomicU64,
    /// Datagrams dropped by the loss emulation (both directions).
    pub dropped: AtomicU64,
    /// Capillary-link round trips: per device, the smaller of the datagrams it sent and
    /// received (each request answered by one response), summed over the devices.
    pub round_trips: AtomicU64,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Population {
    /// Gateway address.
    pub gateway: SocketAddr,
    /// One config per device.
    pub devices: Vec<DeviceConfig>,
    /// Uplinks per device.
    pub uplinks: u32,
    /// Overall deadline.
    pub timeout: Duration,
}

/// How the devices of a [`Population`] behave beyond the protocol.
#[derive(Debug, Clone, Copy)]
pub struct DriveOptions {
    /// Probability of dropping each datagram sent or received (0 = none).
    pub loss: f64,
    /// Seed of the loss emulation and of the devices.
    pub seed: u64,
    /// Retry failed or lost attempts with exponential backoff.
    pub retry: bool,
    /// With `retry`: an attempt without progress for this long is lost.
    pub stall: Duration,
}

impl Default for DriveOptions {
    /// No loss, no retry (one attempt per device), a fixed seed.
    fn default() -> Self {
        Self {
            loss: 0.0,
            seed: 0x00de_71ce,
            retry: false,
            stall: Duration::from_secs(5),
        }
    }
}

/// Consecutive IMSIs from `start`.
pub fn imsis(start: &str, count: u32) -> Result<Vec<Imsi>> {
    let first: u64 = start.parse().context("--imsi-start must be digits")?;
    let width = start.len();
    (0..u64::from(count))
        .map(|i| {
            let text = format!("{:0width$}", first + i, width = width);
            Imsi::new(&text).with_context(|| format!("IMSI {text}"))
        })
        .collect()
}

/// Runs the population to completion (every device authenticated or failed, every uplink
/// answered) or to the deadline, one attempt per device. Returns the secrets of every device
/// when `export` is set, for the key-isolation check only.
pub async fn run_population(
    pop: Population,
    counters: Arc<Counters>,
    export: bool,
) -> Result<Vec<Vec<u8>>> {
    run_population_with(pop, DriveOptions::default(), counters, export).await
}

/// As [`run_population`], with loss emulation and the retry policy of `opts`.
pub async fn run_population_with(
    pop: Population,
    opts: DriveOptions,
    counters: Arc<Counters>,
    export: bool,
) -> Result<Vec<Vec<u8>>> {
    let deadline = tokio::time::Instant::now() + pop.timeout;
    let mut tasks = Vec::with_capacity(pop.devices.len());
    for (i, cfg) in pop.devices.into_iter().enumerate() {
        let bind: SocketAddr = match pop.gateway.ip() {
            IpAddr::V4(_) => "127.0.0.1:0".parse()?,
            IpAddr::V6(_) => "[::1]:0".parse()?,
        };
        let sock = UdpSocket::bind(bind)
            .await
            .context("binding a device socket")?;
        let link = Link {
            sock,
            gateway: pop.gateway,
            loss: opts.loss,
            rng: StdRng::seed_from_u64(mix(opts.seed, i as u64, u64::MAX)),
            c: counters.clone(),
            sent: 0,
            received: 0,
        };
        let job = Job {
            index: i as u64,
            cfg,
            uplinks: pop.uplinks,
            deadline,
            opts,
            export,
        };
        let span = tracing::debug_span!("device", imsi = %job.cfg.imsi);
        tasks.push(tokio::spawn(drive(job, link).instrument(span)));
    }
    let mut secrets = Vec::new();
    for t in tasks {
        if let Ok(mut s) = t.await {
            secrets.append(&mut s);
        }
    }
    Ok(secrets)
}

/// A seed for device `index`, attempt `attempt` (SplitMix64 finaliser over the three).
fn mix(seed: u64, index: u64, attempt: u64) -> u64 {
    let mut z = seed
        ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ attempt.wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One device's socket towards the gateway, with the loss emulation.
struct Link {
    sock: UdpSocket,
    gateway: SocketAddr,
    loss: f64,
    rng: StdRng,
    c: Arc<Counters>,
    sent: u64,
    received: u64,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.c
            .round_trips
            .fetch_add(self.sent.min(self.received), Ordering::Relaxed);
    }
}

impl Link {
    fn lose(&mut self) -> bool {
        let lost = self.loss > 0.0 && self.rng.gen::<f64>() < self.loss;
        if lost {
            self.c.dropped.fetch_add(1, Ordering::Relaxed);
        }
        lost
    }

    async fn send_all(&mut self, dev: &mut Device) {
        while let Some(out) = dev.poll_transmit() {
            if self.lose() {
                tracing::trace!(to = %self.gateway, len = out.len(), "loss emulation: send dropped");
                continue;
            }
            tracing::trace!(to = %self.gateway, len = out.len(), "send");
            self.c.msgs_out.fetch_add(1, Ordering::Relaxed);
            self.sent += 1;
            self.c
                .bytes_out
                .fetch_add(out.len() as u64, Ordering::Relaxed);
            let _ = self.sock.send_to(&out, self.gateway).await;
        }
    }

    /// The next datagram from the gateway that survives the loss emulation.
    async fn recv(&mut self, buf: &mut [u8]) -> usize {
        loop {
            match self.sock.recv_from(buf).await {
                Ok((n, from)) if from == self.gateway => {
                    if self.lose() {
                        tracing::trace!(len = n, "loss emulation: receive dropped");
                        continue;
                    }
                    tracing::trace!(len = n, "receive");
                    self.c.msgs_in.fetch_add(1, Ordering::Relaxed);
                    self.received += 1;
                    self.c.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    return n;
                }
                Ok(_) => {}
                // ICMP errors surface here on some systems (gateway restarting): wait a
                // little instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// What one device task has to do.
struct Job {
    index: u64,
    cfg: DeviceConfig,
    uplinks: u32,
    deadline: tokio::time::Instant,
    opts: DriveOptions,
    export: bool,
}

/// How one attempt ended.
enum AttemptEnd {
    /// Authenticated and every uplink acknowledged.
    Done,
    /// Failed or lost; retry if allowed.
    Lost,
    /// The overall deadline passed.
    Deadline,
}

/// What a device achieved over all its attempts.
#[derive(Default)]
struct Progress {
    /// Uplink `i` acknowledged.
    acked: Vec<bool>,
    /// Uplink `i` sent at least once.
    sent: Vec<bool>,
    /// An attempt failed or was lost.
    any_failure: bool,
    /// Whether this device is currently counted in `Counters::authenticated`.
    counted_authenticated: bool,
    secrets: Vec<Vec<u8>>,
}

async fn drive(job: Job, mut link: Link) -> Vec<Vec<u8>> {
    let n = job.uplinks as usize;
    let mut prog = Progress {
        acked: vec![false; n],
        sent: vec![false; n],
        ..Progress::default()
    };
    let mut backoff = BACKOFF_MIN;
    let mut attempt = 0u64;
    let mut jitter = StdRng::seed_from_u64(mix(job.opts.seed, job.index, u64::MAX - 1));
    loop {
        link.c.attempts.fetch_add(1, Ordering::Relaxed);
        let dev = Device::new(job.cfg.clone(), mix(job.opts.seed, job.index, attempt));
        let (end, authenticated) = attempt_once(&job, &mut link, dev, &mut prog).await;
        attempt += 1;
        if authenticated {
            // The backoff starts again after an attempt that got through.
            backoff = BACKOFF_MIN;
        }
        match end {
            AttemptEnd::Done | AttemptEnd::Deadline => break,
            AttemptEnd::Lost => {
                prog.any_failure = true;
                if prog.counted_authenticated {
                    prog.counted_authenticated = false;
                    link.c.authenticated.fetch_sub(1, Ordering::Relaxed);
                }
                if !job.opts.retry {
                    break;
                }
                let cut = backoff.mul_f64(jitter.gen_range(0.0..0.25));
                let at = tokio::time::Instant::now() + (backoff - cut);
                if at >= job.deadline {
                    break;
                }
                tracing::debug!(imsi = %job.cfg.imsi, attempt, wait = ?(backoff - cut), "retrying");
                // Late answers to the lost attempt are read and ignored meanwhile.
                let mut buf = vec![0u8; 2048];
                let _ = tokio::time::timeout_at(at, async {
                    loop {
                        let _ = link.recv(&mut buf).await;
                    }
                })
                .await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    let c = &link.c;
    if !prog.counted_authenticated && prog.any_failure {
        c.failed.fetch_add(1, Ordering::Relaxed);
    }
    let acked = prog.acked.iter().filter(|a| **a).count() as u64;
    let unacked = prog
        .sent
        .iter()
        .zip(&prog.acked)
        .filter(|(s, a)| **s && !**a)
        .count() as u64;
    c.uplinks_acked.fetch_add(acked, Ordering::Relaxed);
    c.uplinks_failed.fetch_add(unacked, Ordering::Relaxed);
    prog.secrets
}

/// The state of one attempt, between events.
struct Attempt<'a> {
    job: &'a Job,
    c: Arc<Counters>,
    /// Uplink id of this attempt → index in [`Progress`].
    in_flight: Vec<(u64, usize)>,
    authenticated: bool,
    lost: bool,
    progress_at: tokio::time::Instant,
    /// Something came from the gateway during this attempt.
    heard: bool,
}

impl Attempt<'_> {
    fn on_event(&mut self, dev: &mut Device, prog: &mut Progress, ev: DeviceEvent) {
        let imsi = &self.job.cfg.imsi;
        match ev {
            DeviceEvent::Authenticated { .. } => {
                self.progress_at = tokio::time::Instant::now();
                if self.authenticated {
                    return;
                }
                self.authenticated = true;
                if !prog.counted_authenticated {
                    prog.counted_authenticated = true;
                    self.c.authenticated.fetch_add(1, Ordering::Relaxed);
                }
                if self.job.export {
                    prog.secrets.extend(dev.dangerous_export_secrets());
                }
                for i in 0..prog.acked.len() {
                    if prog.acked[i] {
                        continue;
                    }
                    let payload = format!("{{\"seq\":{i}}}");
                    match dev.send_uplink(Instant::now(), payload.as_bytes()) {
                        Ok(id) => {
                            prog.sent[i] = true;
                            self.in_flight.push((id, i));
                        }
                        Err(_) => break,
                    }
                }
            }
            DeviceEvent::UplinkAcked { id } => {
                self.progress_at = tokio::time::Instant::now();
                if let Some(pos) = self.in_flight.iter().position(|(u, _)| *u == id) {
                    let (_, i) = self.in_flight.remove(pos);
                    prog.acked[i] = true;
                }
            }
            DeviceEvent::UplinkFailed { id, reason } => {
                tracing::debug!(%imsi, error = %reason, "uplink not delivered");
                self.in_flight.retain(|(u, _)| *u != id);
                if self.job.opts.retry {
                    // The session is no longer usable: authenticate again, send again.
                    self.lost = true;
                }
            }
            DeviceEvent::Downlink { .. } => {
                self.c.downlinks.fetch_add(1, Ordering::Relaxed);
            }
            DeviceEvent::Failed(e) => {
                if self.job.opts.retry {
                    tracing::debug!(%imsi, error = %e, "device authentication failed");
                } else {
                    tracing::info!(%imsi, error = %e, "device authentication failed");
                }
                if !dev.is_authenticated() {
                    self.lost = true;
                }
            }
            DeviceEvent::SessionExpired => self.lost = true,
            _ => {}
        }
    }
}

async fn attempt_once(
    job: &Job,
    link: &mut Link,
    mut dev: Device,
    prog: &mut Progress,
) -> (AttemptEnd, bool) {
    let mut buf = vec![0u8; 2048];
    let mut a = Attempt {
        job,
        c: link.c.clone(),
        in_flight: Vec::new(),
        authenticated: false,
        lost: false,
        progress_at: tokio::time::Instant::now(),
        heard: false,
    };
    dev.start(Instant::now());
    loop {
        // Events may queue datagrams (an uplink after `Authenticated`): send until both
        // queues are empty.
        loop {
            link.send_all(&mut dev).await;
            let Some(ev) = dev.poll_event() else {
                break;
            };
            a.on_event(&mut dev, prog, ev);
        }
        let all_acked = prog.acked.iter().all(|x| *x);
        let finished = dev.is_authenticated() && a.in_flight.is_empty();
        if a.lost || (finished && (all_acked || !job.opts.retry)) {
            // Keep answering for a moment so that the network's last exchange completes.
            let linger = tokio::time::Instant::now() + Duration::from_millis(200);
            let end = linger.min(job.deadline);
            while let Ok(n) = tokio::time::timeout_at(end, link.recv(&mut buf)).await {
                dev.handle_datagram(Instant::now(), &buf[..n]);
                link.send_all(&mut dev).await;
            }
            let end = if a.lost {
                AttemptEnd::Lost
            } else {
                AttemptEnd::Done
            };
            return (end, a.authenticated);
        }
        let now = tokio::time::Instant::now();
        if now >= job.deadline {
            return (AttemptEnd::Deadline, a.authenticated);
        }
        // Until the first answer, a shorter wait: a trigger lost on the way would otherwise
        // be repeated only after RFC 9820's trigger interval (10 s in capillary-device).
        let stall = if a.heard {
            job.opts.stall
        } else {
            job.opts.stall.min(FIRST_ANSWER_STALL)
        };
        let stall_at = a.progress_at + stall;
        if job.opts.retry && now >= stall_at {
            tracing::debug!(imsi = %job.cfg.imsi, "no progress: attempt lost");
            return (AttemptEnd::Lost, a.authenticated);
        }
        let mut wake = dev
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or(job.deadline)
            .min(job.deadline);
        if job.opts.retry {
            wake = wake.min(stall_at);
        }
        tokio::select! {
            n = link.recv(&mut buf) => {
                // Anything from the gateway is progress: a retransmitted request of the
                // network means that the path works and the exchange goes on.
                a.progress_at = tokio::time::Instant::now();
                a.heard = true;
                dev.handle_datagram(Instant::now(), &buf[..n]);
            }
            _ = tokio::time::sleep_until(wake) => dev.handle_timeout(Instant::now()),
        }
    }
}

/// The counters of a finished run, as printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Devices that ended authenticated.
    pub authenticated: u64,
    /// Devices that ended failed.
    pub failed: u64,
    /// Devices that neither authenticated nor failed before the deadline.
    pub unfinished: u64,
    /// Uplinks acknowledged.
    pub uplinks_acked: u64,
    /// Uplinks sent and not acknowledged.
    pub uplinks_failed: u64,
    /// Attempts made.
    pub attempts: u64,
    /// Datagrams dropped by the loss emulation.
    pub dropped: u64,
}

impl RunSummary {
    /// Reads the counters after [`run_population_with`] returned.
    pub fn from_counters(c: &Counters, count: u32) -> Self {
        let a = c.authenticated.load(Ordering::Relaxed);
        let f = c.failed.load(Ordering::Relaxed);
        Self {
            authenticated: a,
            failed: f,
            unfinished: u64::from(count).saturating_sub(a + f),
            uplinks_acked: c.uplinks_acked.load(Ordering::Relaxed),
            uplinks_failed: c.uplinks_failed.load(Ordering::Relaxed),
            attempts: c.attempts.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    /// The machine-readable last line of `capillary device`.
    pub fn line(&self) -> String {
        format!(
            "summary authenticated={} failed={} uplinks_acked={} uplinks_failed={} \
             unfinished={} attempts={} dropped={}",
            self.authenticated,
            self.failed,
            self.uplinks_acked,
            self.uplinks_failed,
            self.unfinished,
            self.attempts,
            self.dropped
        )
    }
}

/// Runs `capillary device`.
pub fn run(args: DeviceArgs) -> Result<()> {
    let k = K::from_hex(&args.k).context("--k")?;
    let opc = Opc::from_hex(&args.opc).context("--opc")?;
    let devices = imsis(&args.imsi_start, args.count)?
        .into_iter()
        .map(|imsi| DeviceConfig::new(imsi, k.clone(), opc.clone()))
        .collect();
    let pop = Population {
        gateway: args.gateway,
        devices,
        uplinks: args.uplinks,
        timeout: Duration::from_secs(args.timeout),
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("seed={seed}");
    let opts = DriveOptions {
        loss: args.loss,
        seed,
        retry: !args.no_retry,
        stall: Duration::from_secs(args.stall.max(1)),
    };
    let counters = Arc::new(Counters::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_population_with(pop, opts, counters.clone(), false))?;
    let s = RunSummary::from_counters(&counters, args.count);
    println!(
        "devices: {} authenticated, {} failed, {} unfinished ({} attempts)",
        s.authenticated, s.failed, s.unfinished, s.attempts
    );
    println!(
        "uplinks: {} acknowledged, {} failed",
        s.uplinks_acked, s.uplinks_failed
    );
    if args.loss > 0.0 {
        println!("loss emulation: {} datagrams dropped", s.dropped);
    }
    println!("{}", s.line());
    let expected_uplinks = u64::from(args.count) * u64::from(args.uplinks);
    if s.authenticated < u64::from(args.count)
        || s.uplinks_failed > 0
        || s.uplinks_acked < expected_uplinks
    {
        anyhow::bail!("not every device authenticated and delivered its data");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_bounds() {
        assert_eq!(parse_probability("0.1"), Ok(0.1));
        assert_eq!(parse_probability("0"), Ok(0.0));
        assert_eq!(parse_probability("1"), Ok(1.0));
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("-0.1").is_err());
        assert!(parse_probability("x").is_err());
    }

    #[test]
    fn seeds_differ_per_device_and_attempt() {
        let a = mix(1, 0, 0);
        assert_ne!(a, mix(1, 1, 0));
        assert_ne!(a, mix(1, 0, 1));
        assert_ne!(a, mix(2, 0, 0));
        assert_eq!(a, mix(1, 0, 0));
    }

    #[test]
    fn summary_line_format() {
        let s = RunSummary {
            authenticated: 3,
            failed: 1,
            unfinished: 0,
            uplinks_acked: 3,
            uplinks_failed: 0,
            attempts: 7,
            dropped: 2,
        };
        assert_eq!(
            s.line(),
            "summary authenticated=3 failed=1 uplinks_acked=3 uplinks_failed=0 unfinished=0 \
             attempts=7 dropped=2"
        );
    }
}
