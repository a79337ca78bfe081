//! `capillary bench gateway`: device authentications per second through one gateway.
//!
//! The network side (`capillary core`'s gateway link over the embedded SQLite store) and the
//! gateway talk over real loopback UDP, exactly as in production. The devices are the real
//! sans-IO [`Device`]s (soft USIM, CoAP-EAP, EAP-AKA', OSCORE), run in the gateway's thread
//! with an ideal capillary link: their datagrams are handed to the gateway in memory, because
//! the target is the software capacity of the gateway and the network, and a real capillary
//! radio (IEEE 802.15.4 at 250 kbit/s) would bound the rate long before them.
//!
//! Devices start in waves of `--wave` devices every `--wave-interval` (all at once by
//! default); a device counts when its authentication succeeded (and, with `--uplink`, when
//! its first uplink was acknowledged). The report gives device authentications per second
//! of wall time from the first trigger to the last success, the process CPU spent in that
//! window per device (all three parties on this machine), the part of it spent in the
//! gateway-and-devices thread, and the gateway's link counters.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use capillary_device::{Device, DeviceEvent};
use capillary_gateway::{Gateway, GatewayOptions, GatewayStats, Transmit};
use rand::{RngCore, SeedableRng};

/// Options of `capillary bench gateway`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices behind the gateway.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub devices: u32,
    /// Devices started together in one wave (0: all at once).
    #[arg(long, default_value_t = 0)]
    pub wave: u32,
    /// Time between two waves, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub wave_interval: u64,
    /// Each device also sends one uplink once authenticated and counts when it is
    /// acknowledged.
    #[arg(long)]
    pub uplink: bool,
    /// Store directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds before giving up.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The gateway's NSTART on the link (`capillary gateway --link-nstart`); loopback is a
    /// fast link, so a whole wave goes at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub link_nstart: u16,
    /// Print every gateway-link datagram (monotonic time, direction, bytes) and the
    /// gateway's counters on standard error.
    #[arg(long)]
    pub trace: bool,
}

/// `--trace`, set once before the run.
static TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints one gateway-link datagram with `--trace` (monotonic time: matches
/// `perf record -k CLOCK_MONOTONIC`, for a profile of the measured window only).
fn trace(direction: &str, len: usize) {
    if TRACE.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{:?} {direction} {len}", Instant::now());
    }
}

/// What one run measured.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Devices asked for.
    pub devices: u64,
    /// Devices that completed (authenticated, and acknowledged uplink with `--uplink`).
    pub completed: u64,
    /// Device authentications that failed.
    pub failed: u64,
    /// Wall seconds from the first trigger to the last completion.
    pub seconds: f64,
    /// Process CPU seconds in that window (network, gateway, devices).
    pub cpu_total: f64,
    /// CPU seconds of the gateway-and-devices thread in that window.
    pub cpu_gateway_thread: f64,
    /// Seconds spent inside the devices' state machines (on that thread).
    pub devices_seconds: f64,
    /// The gateway's counters.
    pub gateway: GatewayStats,
}

impl Outcome {
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.completed as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn per_device_us(&self, cpu: f64) -> f64 {
        if self.completed > 0 {
            cpu * 1e6 / self.completed as f64
        } else {
            0.0
        }
    }

    fn json(&self) -> String {
        let g = &self.gateway;
        format!(
            "{{\"devices\":{},\"completed\":{},\"failed\":{},\"seconds\":{:.3},\
             \"device_auths_per_s\":{:.0},\"cpu_us_per_device\":{:.1},\
             \"gateway_thread_cpu_us_per_device\":{:.1},\"devices_us_per_device\":{:.1},\
             \"gateway_us_per_device\":{:.1},\"network_us_per_device\":{:.1},\"gateway_link\":{{\"messages\":{},\
             \"bytes\":{},\"round_trips\":{},\"exchanges\":{}}}}}",
            self.devices,
            self.completed,
            self.failed,
            self.seconds,
            self.rate(),
            self.per_device_us(self.cpu_total),
            self.per_device_us(self.cpu_gateway_thread),
            self.per_device_us(self.devices_seconds),
            self.per_device_us(self.gateway_only()),
            self.per_device_us(self.network_only()),
            g.link_msgs_in + g.link_msgs_out,
            g.link_bytes_in + g.link_bytes_out,
            g.link_round_trips,
            g.link_exchanges,
        )
    }

    /// CPU of the gateway alone: its thread minus the time inside the devices.
    fn gateway_only(&self) -> f64 {
        (self.cpu_gateway_thread - self.devices_seconds).max(0.0)
    }

    /// CPU of the network side: the process minus the gateway-and-devices thread.
    fn network_only(&self) -> f64 {
        (self.cpu_total - self.cpu_gateway_thread).max(0.0)
    }

    fn table(&self) -> String {
        let g = &self.gateway;
        format!(
            "devices completed        {}/{} ({} failed)\n\
             time                     {:.3} s\n\
             device auths/s           {:.0}\n\
             CPU per device           {:.1} µs (all parties): network {:.1} µs, gateway {:.1} µs, devices {:.1} µs\n\
             gateway link             {} messages, {} bytes ({:.0} B/device), {} round trips, {} exchanges\n",
            self.completed,
            self.devices,
            self.failed,
            self.seconds,
            self.rate(),
            self.per_device_us(self.cpu_total),
            self.per_device_us(self.network_only()),
            self.per_device_us(self.gateway_only()),
            self.per_device_us(self.devices_seconds),
            g.link_msgs_in + g.link_msgs_out,
            g.link_bytes_in + g.link_bytes_out,
            (g.link_bytes_in + g.link_bytes_out) as f64 / self.devices.max(1) as f64,
            g.link_round_trips,
            g.link_exchanges,
        )
    }
}

/// CPU seconds (utime + stime) from a `/proc/.../stat` line (fields 14 and 15, proc(5)).
fn cpu_seconds(stat_path: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(stat_path) else {
        return 0.0;
    };
    // The command name (field 2) may contain spaces: count fields after its closing ')'.
    let Some(rest) = text.rfind(')').map(|i| &text[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// The gateway thread's plan.
struct Plan {
    wave: usize,
    wave_interval: Duration,
    uplink: bool,
    deadline: Duration,
}

/// What the gateway thread reports.
struct ThreadOutcome {
    completed: u64,
    failed: u64,
    started: Instant,
    finished: Instant,
    cpu_thread: f64,
    device_seconds: f64,
    cpu_process_start: f64,
    cpu_process_end: f64,
    stats: GatewayStats,
}

/// Runs the gateway and the devices until every device completed or the deadline.
fn drive(
    mut gw: Gateway<u32>,
    mut devices: Vec<Device>,
    sock: UdpSocket,
    network: SocketAddr,
    plan: Plan,
) -> Result<ThreadOutcome> {
    let n = devices.len();
    let mut buf = vec![0u8; 65_536];
    let begin = Instant::now();
    gw.start(begin);
    // The gateway's own authentication first (not measured).
    let auth_deadline = begin + Duration::from_secs(30);
    while !gw.is_authenticated() {
        let now = Instant::now();
        if now > auth_deadline {
            bail!("the gateway did not authenticate");
        }
        flush_gateway(&mut gw, &mut devices, &sock, network, &mut Vec::new())?;
        recv_one(&mut gw, &sock, &mut buf, Duration::from_millis(20))?;
        if gw.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            gw.handle_timeout(Instant::now());
        }
        while gw.poll_event().is_some() {}
    }

    DEVICE_TIME.with(|d| d.set(Duration::ZERO));
    let cpu_thread0 = cpu_seconds("/proc/thread-self/stat");
    let cpu_process0 = cpu_seconds("/proc/self/stat");
    let started = Instant::now();
    let deadline = started + plan.deadline;
    let mut next_to_start = 0usize;
    let mut next_wave = started;
    let mut dirty: Vec<u32> = Vec::new();
    let mut timers: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
    let mut done = vec![false; n];
    let mut completed = 0u64;
    let mut failed = 0u64;
    let mut finished = started;

    while (completed + failed) < n as u64 {
        let now = Instant::now();
        if now > deadline {
            break;
        }
        // Start the next wave when it is due.
        if next_to_start < n && now >= next_wave {
            let end = (next_to_start + plan.wave).min(n);
            for (i, d) in devices.iter_mut().enumerate().take(end).skip(next_to_start) {
                timed(|| d.start(now));
                dirty.push(i as u32);
            }
            next_to_start = end;
            next_wave = now + plan.wave_interval;
        }
        // Device timers that are due.
        while let Some(Reverse((t, i))) = timers.peek().copied() {
            if t > now {
                break;
            }
            timers.pop();
            let d = &mut devices[i as usize];
            if d.poll_timeout().is_some_and(|dt| dt <= now) {
                timed(|| d.handle_timeout(now));
                dirty.push(i);
            }
        }
        if gw.poll_timeout().is_some_and(|t| t <= now) {
            gw.handle_timeout(now);
        }
        // Move everything that is ready between the devices and the gateway.
        loop {
            while let Some(i) = dirty.pop() {
                let d = &mut devices[i as usize];
                while let Some(bytes) = d.poll_transmit() {
                    gw.handle_device_datagram(now, i, &bytes);
                }
                while let Some(ev) = d.poll_event() {
                    let finished_ok = match ev {
                        DeviceEvent::Authenticated { .. } if plan.uplink => {
                            let _ = timed(|| d.send_uplink(now, b"bench"));
                            while let Some(bytes) = d.poll_transmit() {
                                gw.handle_device_datagram(now, i, &bytes);
                            }
                            continue;
                        }
                        DeviceEvent::Authenticated { .. } | DeviceEvent::UplinkAcked { .. } => true,
                        DeviceEvent::Failed(_) | DeviceEvent::UplinkFailed { .. } => false,
                        _ => continue,
                    };
                    let slot = &mut done[i as usize];
                    if !*slot {
                        *slot = true;
                        finished = now;
                        if finished_ok {
                            completed += 1;
                        } else {
                            failed += 1;
                        }
                    }
                }
                if let Some(t) = d.poll_timeout() {
                    timers.push(Reverse((t, i)));
                }
            }
            flush_gateway(&mut gw, &mut devices, &sock, network, &mut dirty)?;
            if dirty.is_empty() {
                break;
            }
        }
        while gw.poll_event().is_some() {}
        // Wait for the network until the next timer (gateway, device, or wave).
        let mut wake = deadline;
        if let Some(t) = gw.poll_timeout() {
            wake = wake.min(t);
        }
        if let Some(Reverse((t, _))) = timers.peek() {
            wake = wake.min(*t);
        }
        if next_to_start < n {
            wake = wake.min(next_wave);
        }
        let wait = wake
            .saturating_duration_since(Instant::now())
            .max(Duration::from_micros(100));
        recv_one(&mut gw, &sock, &mut buf, wait)?;
    }
    let cpu_thread = cpu_seconds("/proc/thread-self/stat") - cpu_thread0;
    let device_seconds = DEVICE_TIME.with(|d| d.get()).as_secs_f64();
    let cpu_process_end = cpu_seconds("/proc/self/stat");
    Ok(ThreadOutcome {
        completed,
        failed,
        started,
        finished,
        cpu_thread,
        device_seconds,
        cpu_process_start: cpu_process0,
        cpu_process_end,
        stats: gw.stats(),
    })
}

thread_local! {
    /// Time spent inside the devices' state machines on this thread (they run on the
    /// gateway's thread only because this bench has no capillary radio; in a deployment
    /// their work is on the devices).
    static DEVICE_TIME: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// Runs `f` (a device call) and adds its duration to [`DEVICE_TIME`].
fn timed<T>(f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    let spent = t.elapsed();
    DEVICE_TIME.with(|d| d.set(d.get() + spent));
    r
}

/// Sends the gateway's output: network datagrams on the socket, device datagrams in memory.
fn flush_gateway(
    gw: &mut Gateway<u32>,
    devices: &mut [Device],
    sock: &UdpSocket,
    network: SocketAddr,
    dirty: &mut Vec<u32>,
) -> Result<()> {
    let now = Instant::now();
    while let Some(t) = gw.poll_transmit() {
        match t {
            Transmit::ToNetwork(bytes) => {
                trace("up", bytes.len());
                sock.send_to(&bytes, network)
                    .context("sending to the network")?;
            }
            Transmit::ToDevice(i, bytes) => {
                if let Some(d) = devices.get_mut(i as usize) {
                    timed(|| d.handle_datagram(now, &bytes));
                    dirty.push(i);
                }
            }
        }
    }
    Ok(())
}

/// Waits up to `wait` for one datagram from the network, then takes every other one
/// already queued.
fn recv_one(gw: &mut Gateway<u32>, sock: &UdpSocket, buf: &mut [u8], wait: Duration) -> Result<()> {
    sock.set_read_timeout(Some(wait))?;
    match sock.recv_from(buf) {
        Ok((len, _)) => {
            trace("down", len);
            gw.handle_network_datagram(Instant::now(), &buf[..len])
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Ok(())
        }
        Err(e) => return Err(e).context("receiving from the network"),
    }
    sock.set_nonblocking(true)?;
    loop {
        match sock.recv_from(buf) {
            Ok((len, _)) => {
                trace("down", len);
                gw.handle_network_datagram(Instant::now(), &buf[..len])
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => {
                sock.set_nonblocking(false)?;
                return Err(e).context("receiving from the network");
            }
        }
    }
    sock.set_nonblocking(false)?;
    Ok(())
}

/// Provisions the population, starts the network side, runs the gateway thread.
pub async fn run_bench(args: &Args, data_dir: PathBuf) -> Result<Outcome> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let (store, mut gcfg, configs) = crate::demo::provision(&data_dir, args.devices).await?;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let devices: Vec<Device> = configs
        .into_iter()
        .map(|cfg| Device::new(cfg, rng.next_u64()))
        .collect();
    let core = crate::demo::start_core(&data_dir, store).await?;
    let network = core
        .link
        .as_ref()
        .context("gateway link not started")?
        .local_addr;
    gcfg.max_devices = args.devices as usize;
    let mut opts = GatewayOptions::default();
    opts.link.nstart = usize::from(args.link_nstart);
    let gw = Gateway::with_options(gcfg, opts, rng.next_u64());
    let sock = UdpSocket::bind("127.0.0.1:0").context("binding the gateway's link socket")?;
    // As `capillary gateway`: a wave's answer is a burst of 60 KiB datagrams.
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 << 20);
    let plan = Plan {
        wave: if args.wave == 0 {
            args.devices as usize
        } else {
            args.wave as usize
        },
        wave_interval: Duration::from_millis(args.wave_interval),
        uplink: args.uplink,
        deadline: Duration::from_secs(args.timeout),
    };
    let handle = std::thread::Builder::new()
        .name("gateway".into())
        .spawn(move || drive(gw, devices, sock, network, plan))?;
    let t = tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the gateway thread panicked"))??;
    core.stop().await;
    Ok(Outcome {
        devices: u64::from(args.devices),
        completed: t.completed,
        failed: t.failed,
        seconds: t.finished.duration_since(t.started).as_secs_f64(),
        cpu_total: t.cpu_process_end - t.cpu_process_start,
        cpu_gateway_thread: t.cpu_thread,
        devices_seconds: t.device_seconds,
        gateway: t.stats,
    })
}

/// Runs `capillary bench gateway`.
pub fn run(args: Args) -> Result<()> {
    TRACE.store(args.trace, std::sync::atomic::Ordering::Relaxed);
    let tmp;
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = crate::private_temp_dir("capillary-bench-gateway")?;
            tmp.clone()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run_bench(&args, dir.clone()));
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let outcome = result?;
    if args.trace {
        eprintln!("{:?}", outcome.gateway);
    }
    if args.json {
        println!("{}", outcome.json());
    } else {
        print!("{}", outcome.table());
    }
    if outcome.completed != outcome.devices {
        bail!(
            "{} of {} devices did not complete",
            outcome.devices - outcome.completed,
            outcome.devices
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_fields_after_the_command_name() {
        let dir = std::env::temp_dir().join(format!("capillary-stat-{}", std::process::id()));
        std::fs::write(
            &dir,
            "42 (a b) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0\n",
        )
        .unwrap();
        let s = super::cpu_seconds(dir.to_str().unwrap());
        let _ = std::fs::remove_file(&dir);
        assert!((s - 3.0).abs() < 1e-9, "{s}");
    }
}
