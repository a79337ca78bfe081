//! `capillary device`: runs one or many devices (soft USIM, CoAP-EAP + EAP-AKA', OSCORE) over
//! real UDP sockets against a gateway, each device on its own socket. The protocol logic is
//! `capillary-device`; this module only owns sockets and timers.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use capillary_device::{Device, DeviceConfig, DeviceEvent};
use capillary_secrets::{Imsi, Opc, Secret, K};
use tokio::net::UdpSocket;

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
}

/// Counters of a run, shared by all device tasks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Devices authenticated.
    pub authenticated: AtomicU64,
    /// Devices whose authentication failed.
    pub failed: AtomicU64,
    /// Uplinks acknowledged by the network.
    pub uplinks_acked: AtomicU64,
    /// Uplinks not delivered.
    pub uplinks_failed: AtomicU64,
    /// Downlinks received.
    pub downlinks: AtomicU64,
    /// Datagrams sent to / received from the gateway.
    pub msgs_out: AtomicU64,
    /// Datagrams received from the gateway.
    pub msgs_in: AtomicU64,
    /// Bytes sent to the gateway.
    pub bytes_out: AtomicU64,
    /// Bytes received from the gateway.
    pub bytes_in: AtomicU64,
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
/// answered) or to the deadline. Returns the secrets of every device when `export` is set, for
/// the key-isolation check only.
pub async fn run_population(
    pop: Population,
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
        let counters = counters.clone();
        let gateway = pop.gateway;
        let uplinks = pop.uplinks;
        tasks.push(tokio::spawn(async move {
            drive(
                Device::new(cfg, i as u64 ^ 0x00de_71ce),
                sock,
                gateway,
                uplinks,
                deadline,
                counters,
                export,
            )
            .await
        }));
    }
    let mut secrets = Vec::new();
    for t in tasks {
        if let Ok(mut s) = t.await {
            secrets.append(&mut s);
        }
    }
    Ok(secrets)
}

async fn drive(
    mut dev: Device,
    sock: UdpSocket,
    gateway: SocketAddr,
    uplinks: u32,
    deadline: tokio::time::Instant,
    c: Arc<Counters>,
    export: bool,
) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    dev.start(Instant::now());
    let mut sent = 0u32;
    let mut answered = 0u32;
    let mut done = false;
    let mut secrets = Vec::new();
    loop {
        while let Some(out) = dev.poll_transmit() {
            c.msgs_out.fetch_add(1, Ordering::Relaxed);
            c.bytes_out.fetch_add(out.len() as u64, Ordering::Relaxed);
            let _ = sock.send_to(&out, gateway).await;
        }
        while let Some(ev) = dev.poll_event() {
            match ev {
                DeviceEvent::Authenticated { .. } => {
                    c.authenticated.fetch_add(1, Ordering::Relaxed);
                    if export {
                        secrets.extend(dev.dangerous_export_secrets());
                    }
                    while sent < uplinks {
                        let payload = format!("{{\"seq\":{sent}}}");
                        if dev.send_uplink(Instant::now(), payload.as_bytes()).is_err() {
                            break;
                        }
                        sent += 1;
                    }
                }
                DeviceEvent::UplinkAcked { .. } => {
                    c.uplinks_acked.fetch_add(1, Ordering::Relaxed);
                    answered += 1;
                }
                DeviceEvent::UplinkFailed { .. } => {
                    c.uplinks_failed.fetch_add(1, Ordering::Relaxed);
                    answered += 1;
                }
                DeviceEvent::Downlink { .. } => {
                    c.downlinks.fetch_add(1, Ordering::Relaxed);
                }
                DeviceEvent::Failed(e) => {
                    tracing::info!(error = %e, "device authentication failed");
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    done = true;
                }
                _ => {}
            }
        }
        if done || (dev.is_authenticated() && answered >= uplinks) {
            // Keep answering for a moment so that the network's last exchange completes.
            let linger = tokio::time::Instant::now() + Duration::from_millis(200);
            let end = linger.min(deadline);
            while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, sock.recv_from(&mut buf)).await
            {
                dev.handle_datagram(Instant::now(), &buf[..n]);
                while let Some(out) = dev.poll_transmit() {
                    let _ = sock.send_to(&out, gateway).await;
                }
            }
            return secrets;
        }
        let wake = dev
            .poll_timeout()
            .map(|t| tokio::time::Instant::from_std(t).min(deadline))
            .unwrap_or(deadline);
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    if from == gateway {
                        c.msgs_in.fetch_add(1, Ordering::Relaxed);
                        c.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                        dev.handle_datagram(Instant::now(), &buf[..n]);
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    return secrets;
                }
                dev.handle_timeout(Instant::now());
            }
        }
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
    let counters = Arc::new(Counters::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_population(pop, counters.clone(), false))?;
    let a = counters.authenticated.load(Ordering::Relaxed);
    let f = counters.failed.load(Ordering::Relaxed);
    let ua = counters.uplinks_acked.load(Ordering::Relaxed);
    let uf = counters.uplinks_failed.load(Ordering::Relaxed);
    println!(
        "devices: {} authenticated, {f} failed, {} unfinished",
        a,
        u64::from(args.count) - a - f
    );
    println!("uplinks: {ua} acknowledged, {uf} failed");
    if a < u64::from(args.count) || uf > 0 {
        anyhow::bail!("not every device authenticated and delivered its data");
    }
    Ok(())
}
