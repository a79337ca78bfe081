//! `capillary sim`: the deterministic discrete-event simulator (crates/sim) from the command
//! line. Runs every combination of `--scenario`, `--devices`, `--mode` and `--preset`, prints
//! a table (or JSON with `--json`) with the real time each run took, and writes `--csv` /
//! `--html` files.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use capillary_sim::{report, Mode, Preset, Scenario, SimConfig, SimReport, UplinkPattern};

/// Arguments of `capillary sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Devices per gateway, comma-separated list (one run each).
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 10, 100, 1000, 10_000])]
    devices: Vec<u32>,
    /// Scenarios: cold (attach storm), reboot (the gateways lose their state), reboot-devices
    /// (the devices reboot with them), reattach (every device runs CoAP-EAP again), steady
    /// (uplinks after the attach), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = ["cold".to_string()])]
    scenario: Vec<String>,
    /// Gateways.
    #[arg(long, default_value_t = 1)]
    gateways: u32,
    /// Modes: naive, batched, optimised (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = ["naive".to_string(), "batched".to_string(), "optimised".to_string()])]
    mode: Vec<String>,
    /// Naive mode is skipped above this many devices per run (its attach time grows
    /// quadratically with N; 0: never skipped).
    #[arg(long, default_value_t = 1000)]
    naive_max_devices: u64,
    /// Gateway-link presets: nbiot, lte-m, broadband (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = ["broadband".to_string()])]
    preset: Vec<String>,
    /// Override the preset's RTT (ms).
    #[arg(long)]
    link_rtt_ms: Option<u64>,
    /// Override the preset's bit rate (bit/s).
    #[arg(long)]
    link_bitrate: Option<u64>,
    /// Gateway-link datagram loss probability.
    #[arg(long, default_value_t = 0.0)]
    link_loss: f64,
    /// Capillary link one-way latency (ms).
    #[arg(long, default_value_t = 5.0)]
    cap_latency_ms: f64,
    /// Capillary link jitter (ms, uniform).
    #[arg(long, default_value_t = 2.0)]
    cap_jitter_ms: f64,
    /// Capillary link frame loss probability.
    #[arg(long, default_value_t = 0.0)]
    cap_loss: f64,
    /// Capillary link frame size (bytes).
    #[arg(long, default_value_t = 1280)]
    cap_mtu: usize,
    /// Capillary shared-medium bit rate per gateway (bit/s); none by default.
    #[arg(long)]
    cap_bitrate: Option<u64>,
    /// Store latency per round trip (ms).
    #[arg(long, default_value_t = 1.0)]
    store_ms: f64,
    /// Devices start within this spread (ms).
    #[arg(long, default_value_t = 100.0)]
    spread_ms: f64,
    /// Uplinks per device after attaching (cold, reboot scenarios).
    #[arg(long, default_value_t = 1)]
    uplinks: u32,
    /// Interval between uplinks (ms); steady scenario: the mean interval.
    #[arg(long, default_value_t = 10_000.0)]
    uplink_interval_ms: f64,
    /// Steady scenario: uplink pattern, periodic (with --jitter-ms) or poisson.
    #[arg(long, default_value = "periodic")]
    pattern: String,
    /// Steady scenario, periodic pattern: uniform offset in [-jitter, +jitter] (ms).
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Steady scenario: how long the devices send uplinks (s).
    #[arg(long, default_value_t = 60.0)]
    steady_s: f64,
    /// Uplink payload size (bytes, 8..=1024).
    #[arg(long, default_value_t = 16)]
    uplink_bytes: usize,
    /// Fraction of devices with a wrong K (refused, counted).
    #[arg(long, default_value_t = 0.0)]
    refused: f64,
    /// A device whose authentication failed starts again after this long (ms), doubled per
    /// further failure in a row, times a random factor in [0.5, 1.5).
    #[arg(long, default_value_t = 1000.0)]
    restart_ms: f64,
    /// Shared device CPU per datagram (µs), per gateway.
    #[arg(long, default_value_t = 100.0)]
    device_cpu_us: f64,
    /// Network CPU per batch entry (µs).
    #[arg(long, default_value_t = 20.0)]
    network_cpu_us: f64,
    /// Simulated time limit per run (s).
    #[arg(long, default_value_t = 600.0)]
    limit_s: f64,
    /// Naive mode: `POST /r` outstanding at once at each end (NSTART).
    #[arg(long, default_value_t = 4)]
    naive_nstart: usize,
    /// Devices: ACK_TIMEOUT of their uplinks (ms, RFC 7252 §4.8); raise it above the
    /// link's round trip on slow links (NB-IoT).
    #[arg(long, default_value_t = 2000.0)]
    device_ack_timeout_ms: f64,
    /// Devices: CoAP-EAP trigger interval (ms, RFC 9820 §3.2).
    #[arg(long, default_value_t = 10_000.0)]
    device_trigger_interval_ms: f64,
    /// Devices: CoAP-EAP exchange timeout (ms).
    #[arg(long, default_value_t = 60_000.0)]
    device_exchange_timeout_ms: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Switch these optimisations of the optimised mode off, to measure each:
    /// fast-reauth, prefetch, first-batch (comma-separated).
    #[arg(long, default_value = "")]
    without: String,
    /// Print JSON to stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
    /// Write CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write a self-contained HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
}

fn ms(v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v / 1000.0).context("a duration is negative or too large")
}

/// Runs `capillary sim`.
pub fn run(args: SimArgs) -> Result<()> {
    let modes = args
        .mode
        .iter()
        .map(|m| Mode::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    let presets = args
        .preset
        .iter()
        .map(|p| Preset::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut assumptions = vec![
        "nbiot: RTT 3.2 s (2 × 1.6 s, the best case of NB-IoT's 1.6–10 s latency), 60 kbit/s".to_string(),
        "lte-m: RTT 125 ms (LTE-M latency about 100–150 ms), 1 Mbit/s".to_string(),
        "broadband: RTT 20 ms, 100 Mbit/s".to_string(),
        format!(
            "capillary link: {} ms ± {} ms, frame loss {}, MTU {} B, shared bit rate {}",
            args.cap_latency_ms,
            args.cap_jitter_ms,
            args.cap_loss,
            args.cap_mtu,
            args.cap_bitrate.map_or("none".to_string(), |b| format!("{b} bit/s"))
        ),
        format!(
            "store {} ms per round trip; devices start within {} ms; {} uplink(s) each; \
             shared device CPU {} µs/datagram; network CPU {} µs/entry; seed {}",
            args.store_ms, args.spread_ms, args.uplinks, args.device_cpu_us, args.network_cpu_us, args.seed
        ),
        format!(
            "naive = the real gateway and network with batching off (window 0, 1 entry per batch, NSTART {}); \
             optimised = batched with every optimisation on (capillary_sim::apply_mode)",
            args.naive_nstart
        ),
    ];
    if args.link_rtt_ms.is_some() || args.link_bitrate.is_some() || args.link_loss > 0.0 {
        assumptions.push(format!(
            "gateway link overridden: RTT {:?} ms, bit rate {:?}, loss {}",
            args.link_rtt_ms, args.link_bitrate, args.link_loss
        ));
    }
    let scenarios = args
        .scenario
        .iter()
        .map(|s| Scenario::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let pattern = match args.pattern.as_str() {
        "periodic" => UplinkPattern::Periodic {
            jitter: ms(args.jitter_ms)?,
        },
        "poisson" => UplinkPattern::Poisson,
        p => anyhow::bail!("pattern {p:?}: use periodic or poisson"),
    };
    assumptions.push(format!(
        "uplinks: {} B payload; steady: {} every {} ms{} for {} s; refused fraction {}; \
         restart after a failure {} ms",
        args.uplink_bytes,
        args.pattern,
        args.uplink_interval_ms,
        if args.pattern == "periodic" {
            format!(" ± {} ms", args.jitter_ms)
        } else {
            String::new()
        },
        args.steady_s,
        args.refused,
        args.restart_ms
    ));
    let mut reports: Vec<SimReport> = Vec::new();
    let mut skipped = Vec::new();
    let total = scenarios.len() * presets.len() * modes.len() * args.devices.len();
    let mut stderr = std::io::stderr();
    let all = std::time::Instant::now();
    let mut k = 0;
    for scenario in &scenarios {
        for preset in &presets {
            for mode in &modes {
                for n in &args.devices {
                    k += 1;
                    let devices = u64::from(*n) * u64::from(args.gateways);
                    if *mode == Mode::Naive
                        && args.naive_max_devices > 0
                        && devices > args.naive_max_devices
                    {
                        skipped.push(format!(
                            "{} {} naive N={devices}",
                            scenario.name(),
                            preset.name()
                        ));
                        continue;
                    }
                    let mut link = preset.link();
                    if let Some(rtt) = args.link_rtt_ms {
                        link.rtt = Duration::from_millis(rtt);
                    }
                    if let Some(b) = args.link_bitrate {
                        link.bitrate = b;
                    }
                    link.loss = args.link_loss;
                    let cfg = SimConfig {
                        gateways: args.gateways,
                        devices_per_gateway: *n,
                        mode: *mode,
                        scenario: *scenario,
                        link_name: preset.name().to_string(),
                        capillary: capillary_sim::CapillaryLink {
                            latency: ms(args.cap_latency_ms)?,
                            jitter: ms(args.cap_jitter_ms)?,
                            loss: args.cap_loss,
                            mtu: args.cap_mtu,
                            bitrate: args.cap_bitrate,
                        },
                        gateway_link: link,
                        store_rtt: ms(args.store_ms)?,
                        start_spread: ms(args.spread_ms)?,
                        uplinks: args.uplinks,
                        uplink_interval: ms(args.uplink_interval_ms)?,
                        pattern,
                        steady_duration: ms(args.steady_s * 1000.0)?,
                        uplink_bytes: args.uplink_bytes,
                        refused_fraction: args.refused,
                        restart_delay: ms(args.restart_ms)?,
                        device_cpu: ms(args.device_cpu_us / 1000.0)?,
                        network_cpu: ms(args.network_cpu_us / 1000.0)?,
                        naive_nstart: args.naive_nstart,
                        device_timers: capillary_sim::DeviceTimers {
                            ack_timeout: ms(args.device_ack_timeout_ms)?,
                            trigger_interval: ms(args.device_trigger_interval_ms)?,
                            exchange_timeout: ms(args.device_exchange_timeout_ms)?,
                        },
                        seed: args.seed,
                        time_limit: ms(args.limit_s * 1000.0)?,
                        without: capillary_sim::Without::parse(&args.without)?,
                    };
                    let label = format!(
                        "[{k}/{total}] {} {} {} N={}",
                        scenario.name(),
                        preset.name(),
                        mode.name(),
                        cfg.total_devices()
                    );
                    let quiet = args.quiet;
                    let started = std::time::Instant::now();
                    let mut r = capillary_sim::run(&cfg, &mut |p| {
                        if !quiet {
                            let _ = write!(
                                stderr,
                                "\r{label}: t={:.1}s authenticated {}/{} delivered {} recovered {} events {}   ",
                                p.sim_time.as_secs_f64(),
                                p.authenticated,
                                p.devices,
                                p.delivered,
                                p.recovered,
                                p.events
                            );
                        }
                    })
                    .with_context(|| label.clone())?;
                    r.wall_clock = Some(started.elapsed());
                    if !quiet {
                        let _ = writeln!(
                            stderr,
                            "\r{label}: done in {:.2} s real time ({} device auths/s), {} gateway-link round trips, attach max {:.1} ms{}          ",
                            started.elapsed().as_secs_f64(),
                            r.auths_per_wall_second().map_or(0.0, f64::round),
                            r.gateway_link.round_trips,
                            r.attach.max.as_secs_f64() * 1000.0,
                            if r.completed { "" } else { " (NOT completed)" }
                        );
                    }
                    reports.push(r);
                }
            }
        }
    }
    if !skipped.is_empty() {
        assumptions.push(format!(
            "naive skipped above {} devices (--naive-max-devices): {}",
            args.naive_max_devices,
            skipped.join(", ")
        ));
    }
    let auths: u64 = reports.iter().map(|r| r.total_authentications).sum();
    let wall = all.elapsed();
    let summary = format!(
        "simulation took {:.2} s real time: {auths} device authentications, {:.0} per second \
         (one core, all three parties' state machines plus the simulator)",
        wall.as_secs_f64(),
        auths as f64 / wall.as_secs_f64().max(1e-9)
    );
    assumptions.push(summary.clone());
    if !skipped.is_empty() && !args.quiet {
        let _ = writeln!(stderr, "skipped: {}", skipped.join(", "));
    }
    if args.json {
        println!("{}", report::to_json_pretty(&reports));
    } else {
        print!("{}", report::to_table(&reports));
        println!("{summary}");
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, report::to_csv(&reports))
            .with_context(|| format!("{}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report::to_html(&reports, &assumptions))
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}
