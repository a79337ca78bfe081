//! `capillary gateway`: the MTC gateway daemon. One UDP socket towards the network (the gateway
//! link), one towards the capillary network (devices). The protocol logic, batching and limits
//! are `capillary-gateway`; this module only owns the sockets and the timer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use capillary_gateway::{
    Gateway, GatewayConfig, GatewayEvent, GatewayOptions, GatewayStats, Transmit,
};
use capillary_secrets::{Imsi, Opc, Secret, K};
use tokio::net::UdpSocket;
use tracing::{info, warn};

/// Options of `capillary gateway`.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// The network side's gateway-link address (`[link] listen` of `capillary core`).
    #[arg(long, default_value = "127.0.0.1:5683")]
    pub network: SocketAddr,
    /// Where devices reach the gateway (port 0: any free port). A fixed port still in use is
    /// retried for a few seconds, so that a restarted gateway takes its port back.
    #[arg(long, default_value = "127.0.0.1:5684")]
    pub listen: SocketAddr,
    /// The gateway's own IMSI (a subscriber of kind gateway).
    #[arg(long)]
    pub imsi: String,
    /// The gateway's K (hex).
    #[arg(long)]
    pub k: String,
    /// The gateway's OPc (hex).
    #[arg(long)]
    pub opc: String,
    /// Batching window in milliseconds (docs/PROTOCOL.md §1).
    #[arg(long, default_value_t = 20)]
    pub batch_ms: u64,
    /// Relay the devices' CoAP-EAP triggers to the network instead of answering them with
    /// EAP-Request/Identity locally (docs/PROTOCOL.md §5): one more round trip per attach.
    #[arg(long)]
    pub no_local_identity: bool,
    /// Send the devices' key confirmations in confirmable batches instead of one-way
    /// (docs/PROTOCOL.md §4.1): one more round trip per attach.
    #[arg(long)]
    pub no_confirm_one_way: bool,
    /// Do not answer device triggers locally while the gateway's own authentication runs
    /// (by default their identities leave right behind it, docs/PROTOCOL.md §4.1); they are
    /// relayed once it is authenticated.
    #[arg(long)]
    pub no_first_batch_with_auth: bool,
    /// `POST /r` outstanding at once on the gateway link (NSTART, RFC 7252 §4.7, which
    /// lets the application environment set it). A step of an attach wave larger than this
    /// many 60 KiB datagrams costs one more round trip per NSTART datagrams; on a fast link
    /// to the core raise it (a wave of 10,000 devices is about 20 datagrams per step).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub link_nstart: u16,
}

impl GatewayArgs {
    /// The gateway options these flags select.
    pub fn options(&self) -> GatewayOptions {
        let mut o = GatewayOptions {
            local_identity: !self.no_local_identity,
            confirm_one_way: !self.no_confirm_one_way,
            first_batch_with_auth: !self.no_first_batch_with_auth,
            ..GatewayOptions::default()
        };
        o.link.nstart = usize::from(self.link_nstart);
        o
    }
}

/// A running gateway: its bound capillary-side address and a view of its counters.
#[derive(Debug)]
pub struct RunningGateway {
    /// Where devices send.
    pub capillary_addr: SocketAddr,
    /// Latest counters.
    pub stats: Arc<Mutex<GatewayStats>>,
    /// Becomes true once the gateway's own authentication succeeded.
    pub authenticated: Arc<std::sync::atomic::AtomicBool>,
    /// The task.
    pub task: tokio::task::JoinHandle<()>,
}

/// Every byte the gateway received or sent on either socket, for the key-isolation check
/// (R3): the test searches it for device keys.
pub type Recorder = Arc<Mutex<Vec<u8>>>;

/// Binds both sockets and spawns the gateway.
pub async fn spawn(
    cfg: GatewayConfig,
    opts: GatewayOptions,
    network: SocketAddr,
    listen: SocketAddr,
    seed: u64,
    recorder: Option<Recorder>,
) -> Result<RunningGateway> {
    let link_bind: SocketAddr = if network.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let link_bind = if network.ip().is_loopback() {
        SocketAddr::new(network.ip(), 0)
    } else {
        link_bind
    };
    let link = UdpSocket::bind(link_bind)
        .await
        .context("binding the gateway-link socket")?;
    let capillary = bind_capillary(listen).await?;
    // An attach storm arrives as a burst on both sockets: large receive buffers keep it (the
    // kernel caps the size at net.core.rmem_max).
    let _ = socket2::SockRef::from(&link).set_recv_buffer_size(4 << 20);
    let _ = socket2::SockRef::from(&capillary).set_recv_buffer_size(4 << 20);
    let capillary_addr = capillary.local_addr()?;
    let stats = Arc::new(Mutex::new(GatewayStats::default()));
    let authenticated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gw = Gateway::try_new(cfg, opts, seed).context("gateway configuration")?;
    let task = tokio::spawn(drive(
        gw,
        link,
        capillary,
        network,
        stats.clone(),
        authenticated.clone(),
        recorder,
    ));
    Ok(RunningGateway {
        capillary_addr,
        stats,
        authenticated,
        task,
    })
}

/// Binds the capillary socket. A fixed port that is still in use (a restarted gateway taking
/// its port back) is retried for up to [`BIND_RETRY`].
async fn bind_capillary(listen: SocketAddr) -> Result<UdpSocket> {
    let until = Instant::now() + BIND_RETRY;
    loop {
        match UdpSocket::bind(listen).await {
            Ok(s) => return Ok(s),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && listen.port() != 0
                    && Instant::now() < until =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("binding the capillary socket {listen}"))
            }
        }
    }
}

/// How long [`spawn`] retries a capillary port that is in use.
pub const BIND_RETRY: Duration = Duration::from_secs(5);

async fn drive(
    mut gw: Gateway<SocketAddr>,
    link: UdpSocket,
    capillary: UdpSocket,
    network: SocketAddr,
    stats: Arc<Mutex<GatewayStats>>,
    authenticated: Arc<std::sync::atomic::AtomicBool>,
    recorder: Option<Recorder>,
) {
    let record = |bytes: &[u8]| {
        if let Some(r) = &recorder {
            if let Ok(mut r) = r.lock() {
                r.extend_from_slice(bytes);
            }
        }
    };
    let mut lbuf = vec![0u8; 70_000];
    let mut cbuf = vec![0u8; 2048];
    gw.start(Instant::now());
    loop {
        while let Some(t) = gw.poll_transmit() {
            match &t {
                Transmit::ToNetwork(bytes) | Transmit::ToDevice(_, bytes) => record(bytes),
            }
            let r = match &t {
                Transmit::ToNetwork(bytes) => link.send_to(bytes, network).await,
                Transmit::ToDevice(addr, bytes) => capillary.send_to(bytes, *addr).await,
            };
            if let Err(e) = r {
                warn!(error = %e, "gateway send failed");
            }
        }
        while let Some(ev) = gw.poll_event() {
            match ev {
                GatewayEvent::Authenticated => {
                    authenticated.store(true, std::sync::atomic::Ordering::SeqCst);
                    info!("gateway authenticated; link protected");
                }
                GatewayEvent::LinkLost => {
                    authenticated.store(false, std::sync::atomic::Ordering::SeqCst);
                    warn!("gateway link lost; re-authenticating");
                }
                GatewayEvent::DeviceOutcome {
                    addr,
                    authenticated,
                } => {
                    info!(%addr, authenticated, "device outcome");
                }
                other => info!(event = ?other, "gateway event"),
            }
        }
        if let Ok(mut s) = stats.lock() {
            *s = gw.stats();
        }
        let wake = gw
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = link.recv_from(&mut lbuf) => {
                if let Ok((n, from)) = r {
                    if from == network {
                        record(&lbuf[..n]);
                        gw.handle_network_datagram(Instant::now(), &lbuf[..n]);
                    }
                }
            }
            r = capillary.recv_from(&mut cbuf) => {
                if let Ok((n, from)) = r {
                    record(&cbuf[..n]);
                    gw.handle_device_datagram(Instant::now(), from, &cbuf[..n]);
                }
            }
            _ = tokio::time::sleep_until(wake) => gw.handle_timeout(Instant::now()),
        }
    }
}

/// Runs `capillary gateway` until interrupted.
pub fn run(args: GatewayArgs) -> Result<()> {
    let imsi = Imsi::new(&args.imsi).context("--imsi")?;
    let k = K::from_hex(&args.k).context("--k")?;
    let opc = Opc::from_hex(&args.opc).context("--opc")?;
    let mut cfg = GatewayConfig::new(imsi, k, opc);
    cfg.batcher.window = Duration::from_millis(args.batch_ms);
    let opts = args.options();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let seed = rand::random::<u64>();
        let g = spawn(cfg, opts, args.network, args.listen, seed, None).await?;
        println!("capillary-listen={}", g.capillary_addr);
        tokio::signal::ctrl_c().await?;
        info!(stats = ?g.stats.lock().map(|s| *s).ok(), "gateway counters");
        g.task.abort();
        Ok(())
    })
}
