//! `capillary demo`: the whole system on one machine over real loopback sockets. It starts the
//! network side on the embedded store, one gateway and N devices, authenticates all of them,
//! sends data end to end, and checks that none of the devices' keys ever crossed the gateway
//! (R3). Exit status non-zero if any part failed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use capillary_device::DeviceConfig;
use capillary_gateway::{GatewayConfig, GatewayOptions};
use capillary_network::config::CoreConfig;
use capillary_secrets::{Amf, Imsi, Opc, Secret, K};
use capillary_store::{
    NewSubscriber, OpKind, SqliteStore, SubscriberKind, SubscriberStatus, SubscriberStore,
};
use rand::RngCore;

use crate::device_cmd::{run_population, Counters, Population};

/// Options of `capillary demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of devices behind the gateway.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub devices: u32,
    /// Store directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seconds before giving up.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// The gateway relays the devices' CoAP-EAP triggers instead of answering them
    /// locally (docs/PROTOCOL.md §5).
    #[arg(long)]
    pub no_local_identity: bool,
    /// The gateway sends key confirmations in confirmable batches (docs/PROTOCOL.md §4.1).
    #[arg(long)]
    pub no_confirm_one_way: bool,
    /// The gateway's NSTART on the link (`capillary gateway --link-nstart`); loopback is a
    /// fast link, so the demo lets a whole wave go at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub link_nstart: u16,
}

/// The outcome of a demo run.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Devices asked for.
    pub devices: u64,
    /// Devices authenticated.
    pub authenticated: u64,
    /// Device authentications that failed.
    pub failed: u64,
    /// Uplinks the network delivered northbound.
    pub delivered: u64,
    /// Uplinks the devices saw acknowledged.
    pub acked: u64,
    /// Capillary link: messages and bytes (both directions).
    pub capillary_msgs: u64,
    /// Capillary link bytes.
    pub capillary_bytes: u64,
    /// Capillary link round trips (request/response pairs seen by the devices).
    pub capillary_round_trips: u64,
    /// Gateway link: messages (both directions).
    pub link_msgs: u64,
    /// Gateway link bytes.
    pub link_bytes: u64,
    /// Gateway link round trips.
    pub link_round_trips: u64,
    /// One-way gateway-link batches (NON, No-Response; PROTOCOL.md §4.1), both directions.
    pub link_one_way: u64,
    /// Store round trips made for the gateway link.
    pub store_round_trips: u64,
    /// Device secrets searched for in the gateway's bytes.
    pub secrets_checked: u64,
    /// Device secrets found there (must be 0).
    pub secrets_leaked: u64,
    /// Bytes recorded at the gateway.
    pub gateway_bytes_recorded: u64,
    /// Wall time.
    pub seconds: f64,
}

impl Summary {
    /// Whether everything worked.
    pub fn ok(&self) -> bool {
        self.authenticated == self.devices
            && self.delivered == self.devices
            && self.secrets_checked > 0
            && self.secrets_leaked == 0
    }

    fn json(&self) -> String {
        format!(
            "{{\"ok\":{},\"devices\":{},\"authenticated\":{},\"failed\":{},\"data_delivered\":{},\
             \"data_acked\":{},\"capillary_link\":{{\"messages\":{},\"bytes\":{},\"round_trips\":{}}},\
             \"gateway_link\":{{\"messages\":{},\"bytes\":{},\"round_trips\":{},\"one_way\":{}}},\
             \"store_round_trips\":{},\"key_isolation\":{{\"secrets_checked\":{},\
             \"secrets_found_at_gateway\":{},\"gateway_bytes_recorded\":{}}},\"seconds\":{:.3}}}",
            self.ok(),
            self.devices,
            self.authenticated,
            self.failed,
            self.delivered,
            self.acked,
            self.capillary_msgs,
            self.capillary_bytes,
            self.capillary_round_trips,
            self.link_msgs,
            self.link_bytes,
            self.link_round_trips,
            self.link_one_way,
            self.store_round_trips,
            self.secrets_checked,
            self.secrets_leaked,
            self.gateway_bytes_recorded,
            self.seconds
        )
    }

    fn table(&self) -> String {
        let mark = |ok: bool| if ok { "ok" } else { "FAILED" };
        format!(
            "devices authenticated   {}/{} ({} failed)   {}\n\
             data delivered          {}/{} (acknowledged {})   {}\n\
             capillary link          {} messages, {} bytes, {} round trips\n\
             gateway link            {} messages, {} bytes, {} round trips, {} one-way\n\
             store round trips       {}\n\
             key isolation (R3)      {} device secrets, {} found in {} gateway bytes   {}\n\
             time                    {:.2} s\n",
            self.authenticated,
            self.devices,
            self.failed,
            mark(self.authenticated == self.devices),
            self.delivered,
            self.devices,
            self.acked,
            mark(self.delivered == self.devices),
            self.capillary_msgs,
            self.capillary_bytes,
            self.capillary_round_trips,
            self.link_msgs,
            self.link_bytes,
            self.link_round_trips,
            self.link_one_way,
            self.store_round_trips,
            self.secrets_checked,
            self.secrets_leaked,
            self.gateway_bytes_recorded,
            mark(self.secrets_checked > 0 && self.secrets_leaked == 0),
            self.seconds
        )
    }
}

/// How many of `secrets` occur anywhere in `haystack`.
pub fn count_leaks(haystack: &[u8], secrets: &[Vec<u8>]) -> u64 {
    const W: usize = 8;
    let mut windows: HashSet<&[u8]> = HashSet::with_capacity(haystack.len());
    for w in haystack.windows(W) {
        windows.insert(w);
    }
    let mut leaks = 0;
    for s in secrets.iter().filter(|s| s.len() >= W) {
        if windows.contains(&s[..W]) && haystack.windows(s.len()).any(|w| w == s.as_slice()) {
            leaks += 1;
        }
    }
    leaks
}

fn random_key() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// Creates `data_dir` (0700) with a SQLite store and provisions one gateway subscriber and
/// `n` active devices bound to it, each with its own random K and OPc. Returns the store,
/// the gateway's configuration and the devices' (for `capillary demo` and
/// `capillary bench gateway`). Fails if the directory already holds a population.
pub(crate) async fn provision(
    data_dir: &std::path::Path,
    n: u32,
) -> Result<(Arc<SqliteStore>, GatewayConfig, Vec<DeviceConfig>)> {
    capillary_network::create_private_dir(data_dir)?;
    let store = Arc::new(SqliteStore::open(&data_dir.join("subscribers.db"))?);
    let gw_imsi = Imsi::new("001019000000001")?;
    let (gw_k, gw_opc) = (random_key(), random_key());
    let mut gw_sub = NewSubscriber::new(
        gw_imsi.clone(),
        K::from_slice(&gw_k)?,
        OpKind::Opc(Opc::from_slice(&gw_opc)?),
        Amf([0x80, 0x00]),
    );
    gw_sub.kind = SubscriberKind::Gateway;
    let mut subs = vec![gw_sub];
    let mut devices = Vec::new();
    let mut bindings = Vec::new();
    for i in 0..n {
        let imsi = Imsi::new(&format!("0010100{:08}", i + 1))?;
        let (k, opc) = (random_key(), random_key());
        let mut s = NewSubscriber::new(
            imsi.clone(),
            K::from_slice(&k)?,
            OpKind::Opc(Opc::from_slice(&opc)?),
            Amf([0x80, 0x00]),
        );
        s.status = SubscriberStatus::Active;
        subs.push(s);
        bindings.push((imsi.clone(), gw_imsi.clone()));
        devices.push(DeviceConfig::new(
            imsi,
            K::from_slice(&k)?,
            Opc::from_slice(&opc)?,
        ));
    }
    if store.get(&gw_imsi).await?.is_some() {
        bail!(
            "{} already holds a population: use an empty --data-dir",
            data_dir.display()
        );
    }
    store
        .import_with_bindings(subs, bindings)
        .await
        .context("provisioning")?;
    let gateway = GatewayConfig::new(gw_imsi, K::from_slice(&gw_k)?, Opc::from_slice(&gw_opc)?);
    Ok((store, gateway, devices))
}

/// The network side over `store`: RADIUS (unused by the gateway system) and the gateway
/// link, on free loopback ports.
pub(crate) async fn start_core(
    data_dir: &std::path::Path,
    store: Arc<SqliteStore>,
) -> Result<capillary_network::CoreHandle> {
    let mut cfg = CoreConfig {
        data_dir: Some(data_dir.to_path_buf()),
        ..CoreConfig::default()
    };
    cfg.radius.listen = "127.0.0.1:0".parse()?;
    cfg.link.listen = Some("127.0.0.1:0".parse()?);
    Ok(capillary_network::run_with_store(cfg, store).await?)
}

/// Runs the demo and returns its summary.
pub async fn run_demo(
    n: u32,
    opts: GatewayOptions,
    data_dir: PathBuf,
    timeout: Duration,
    progress: bool,
) -> Result<Summary> {
    let started = Instant::now();
    let (store, gcfg, devices) = provision(&data_dir, n).await?;
    let core = start_core(&data_dir, store.clone()).await?;
    let link = core.link.clone().context("gateway link not started")?;
    let mut uplinks = link.uplinks();
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let d2 = delivered.clone();
    tokio::spawn(async move {
        while let Ok(_u) = uplinks.recv().await {
            d2.fetch_add(1, Ordering::Relaxed);
        }
    });

    // The gateway, recording every byte it receives and sends.
    let recorder: crate::gateway_cmd::Recorder = Arc::new(Mutex::new(Vec::new()));
    let gw = crate::gateway_cmd::spawn(
        gcfg,
        opts,
        link.local_addr,
        "127.0.0.1:0".parse()?,
        rand::random(),
        Some(recorder.clone()),
    )
    .await?;
    let deadline = Instant::now() + timeout;
    while !gw.authenticated.load(Ordering::SeqCst) {
        if Instant::now() > deadline {
            bail!("the gateway did not authenticate");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The devices.
    let counters = Arc::new(Counters::default());
    let pop = Population {
        gateway: gw.capillary_addr,
        devices,
        uplinks: 1,
        timeout,
    };
    let reporter = if progress {
        let c = counters.clone();
        let d = delivered.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                eprint!(
                    "\rauthenticated {:>6}/{n}   data delivered {:>6}/{n}   failed {:>4}",
                    c.authenticated.load(Ordering::Relaxed),
                    d.load(Ordering::Relaxed),
                    c.failed.load(Ordering::Relaxed)
                );
            }
        }))
    } else {
        None
    };
    let device_secrets = run_population(pop, counters.clone(), true).await?;
    // Let the last uplinks reach the northbound side.
    let settle = Instant::now() + Duration::from_secs(2);
    while delivered.load(Ordering::Relaxed) < counters.uplinks_acked.load(Ordering::Relaxed)
        && Instant::now() < settle
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(r) = reporter {
        r.abort();
        eprintln!();
    }

    // Key isolation: every key the devices and the network hold for the devices.
    let mut secrets = device_secrets;
    secrets.extend(link.dangerous_export_secrets().await);
    let recorded = recorder.lock().map(|r| r.clone()).unwrap_or_default();
    let leaks = count_leaks(&recorded, &secrets);

    let gs = *gw.stats.lock().map_err(|_| anyhow::anyhow!("stats lock"))?;
    let ls = link.stats();
    let summary = Summary {
        devices: u64::from(n),
        authenticated: counters.authenticated.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        delivered: delivered.load(Ordering::Relaxed),
        acked: counters.uplinks_acked.load(Ordering::Relaxed),
        capillary_msgs: gs.capillary_msgs_in + gs.capillary_msgs_out,
        capillary_bytes: gs.capillary_bytes_in + gs.capillary_bytes_out,
        capillary_round_trips: counters.round_trips.load(Ordering::Relaxed),
        link_msgs: gs.link_msgs_in + gs.link_msgs_out,
        link_bytes: gs.link_bytes_in + gs.link_bytes_out,
        link_round_trips: gs.link_round_trips,
        link_one_way: gs.link_one_way + gs.link_one_way_in,
        store_round_trips: ls.store_round_trips,
        secrets_checked: secrets.len() as u64,
        secrets_leaked: leaks,
        gateway_bytes_recorded: recorded.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
    };
    gw.task.abort();
    core.stop().await;
    Ok(summary)
}

/// Runs `capillary demo`.
pub fn run(args: DemoArgs) -> Result<()> {
    let tmp;
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = crate::private_temp_dir("capillary-demo")?;
            tmp.clone()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut opts = GatewayOptions {
        local_identity: !args.no_local_identity,
        confirm_one_way: !args.no_confirm_one_way,
        ..GatewayOptions::default()
    };
    opts.link.nstart = usize::from(args.link_nstart);
    let result = rt.block_on(run_demo(
        args.devices,
        opts,
        dir.clone(),
        Duration::from_secs(args.timeout),
        !args.json,
    ));
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let summary = result?;
    if args.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.table());
    }
    if !summary.ok() {
        bail!("the demo did not complete");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn leak_search_finds_and_misses() {
        let hay = b"0123456789abcdefSECRETSECRETSECRET-tail".to_vec();
        let found = vec![b"SECRETSECRETSECR".to_vec()];
        let absent = vec![b"NOTTHEREnotthere".to_vec()];
        assert_eq!(super::count_leaks(&hay, &found), 1);
        assert_eq!(super::count_leaks(&hay, &absent), 0);
        assert_eq!(super::count_leaks(&hay, &[b"short".to_vec()]), 0);
    }
}
