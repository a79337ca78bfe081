//! `capillary`: the network side, provisioning, vector generation and a soft USIM, in one binary.
//! `main` only parses the command line and calls into the library crates.
#![forbid(unsafe_code)]

mod auc_gen;
mod bench_gateway;
mod bench_radius;
mod demo;
mod device_cmd;
mod gateway_cmd;
mod sim_cmd;
mod subscriber;
mod usim_agent;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Capillary: EAP-AKA' authentication for MTC gateways and the devices behind them.
#[derive(Debug, Parser)]
#[command(name = "capillary", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the network side: RADIUS front end, EAP-AKA' server, AuC over the subscriber store.
    Core(CoreArgs),
    /// Provision subscribers in the store.
    #[command(subcommand)]
    Subscriber(subscriber::SubscriberCmd),
    /// Generate an authentication vector, like `osmo-auc-gen -3 -a milenage`.
    AucGen(auc_gen::AucGenArgs),
    /// Soft USIM for wpa_supplicant / eapol_test with `external_sim=1`.
    UsimAgent(UsimAgentArgs),
    /// Run devices (soft USIM, CoAP-EAP, OSCORE) that attach through a gateway and send data.
    Device(device_cmd::DeviceArgs),
    /// The whole system on this machine: network side, a gateway and N devices, end to end.
    Demo(demo::DemoArgs),
    /// Run the MTC gateway: authenticate to the network, relay and batch device traffic.
    Gateway(gateway_cmd::GatewayArgs),
    /// Deterministic discrete-event simulation of the gateway system (naive, batched, optimised).
    Sim(sim_cmd::SimArgs),
    /// Load generators.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum BenchCmd {
    /// EAP-AKA' RADIUS load: many concurrent sessions, full or fast re-authentication.
    Radius(bench_radius::Args),
    /// Device authentications per second through one gateway (network and gateway over
    /// loopback UDP, devices in memory).
    Gateway(bench_gateway::Args),
}

#[derive(Debug, clap::Args)]
struct CoreArgs {
    /// TOML configuration file (every field optional; flags override it).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    validate: bool,
    /// Directory of the embedded store.
    #[arg(long, env = "CAPILLARY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// RADIUS listen address, e.g. 127.0.0.1:1812.
    #[arg(long)]
    radius_listen: Option<std::net::SocketAddr>,
    /// Network name for AT_KDF_INPUT (RFC 9048 §3.1).
    #[arg(long)]
    network_name: Option<String>,
    /// Gateway-link address (docs/PROTOCOL.md); without a configuration file the default is
    /// 127.0.0.1:5683.
    #[arg(long)]
    link_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct UsimAgentArgs {
    /// The supplicant's control socket: `<ctrl_interface dir>/<ifname>` (eapol_test: `-T dir`, ifname `test`).
    #[arg(long)]
    ctrl: PathBuf,
    /// Subscriber key K (hex).
    #[arg(long, short = 'k')]
    key: String,
    /// OPc (hex).
    #[arg(long, short = 'o', conflicts_with = "op")]
    opc: Option<String>,
    /// OP (hex); OPc is computed from it.
    #[arg(long, short = 'O')]
    op: Option<String>,
    /// SQN_MS of a new USIM: every IND lane starts at SEQ(sqn) (ignored when --state exists).
    #[arg(long, short = 's', default_value_t = 0)]
    sqn: u64,
    /// IND length in bits (TS 33.102 Annex C).
    #[arg(long, short = 'l', default_value_t = 5)]
    ind_len: u8,
    /// File keeping the USIM's SEQ array across runs.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Seconds to wait for the control socket.
    #[arg(long, default_value_t = 30)]
    wait: u64,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAPILLARY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Core(args) => core(args),
        Command::Subscriber(cmd) => subscriber::run(cmd),
        Command::AucGen(args) => auc_gen::run(args),
        Command::UsimAgent(args) => usim_agent_cmd(args),
        Command::Device(args) => device_cmd::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Gateway(args) => gateway_cmd::run(args),
        Command::Sim(args) => sim_cmd::run(args),
        Command::Bench(BenchCmd::Radius(args)) => bench_radius::run(args),
        Command::Bench(BenchCmd::Gateway(args)) => bench_gateway::run(args),
    }
}

/// Parses a number given in decimal or, with `0x`, in hex (as osmo-auc-gen's `--sqn`).
pub(crate) fn parse_u64(text: &str) -> Result<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).context("not a hex number"),
        None => text.parse::<u64>().context("not a decimal number"),
    }
}

/// Creates a fresh directory `<tmp>/<prefix>-<pid>-<n>` for this process.
pub(crate) fn private_temp_dir(prefix: &str) -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for n in 0..1000u32 {
        let dir = base.join(format!("{prefix}-{}-{n}", std::process::id()));
        if std::fs::create_dir(&dir).is_ok() {
            return Ok(dir);
        }
    }
    anyhow::bail!("cannot create a directory under {}", base.display())
}

/// The default data directory: `$XDG_DATA_HOME/capillary`, else `~/.local/share/capillary`.
pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("capillary");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/capillary"),
        None => PathBuf::from("capillary-data"),
    }
}

fn core(args: CoreArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            capillary_network::config::CoreConfig::from_toml(&text)
                .with_context(|| format!("in {}", path.display()))?
        }
        None => capillary_network::config::CoreConfig::default(),
    };
    if let Some(d) = args.data_dir {
        cfg.data_dir = Some(d);
    }
    if let Some(l) = args.radius_listen {
        cfg.radius.listen = l;
    }
    if let Some(n) = args.network_name {
        cfg.eap.network_name = n;
    }
    if let Some(l) = args.link_listen {
        cfg.link.listen = Some(l);
    } else if args.config.is_none() && cfg.link.listen.is_none() {
        cfg.link.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 5683)));
    }
    if cfg.data_dir.is_none() {
        cfg.data_dir = Some(default_data_dir());
    }
    cfg.check()?;
    if args.validate {
        println!("configuration is valid");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(capillary_network::run(cfg))?;
    Ok(())
}

fn usim_agent_cmd(args: UsimAgentArgs) -> Result<()> {
    use capillary_secrets::{Op, Opc, Secret, K};
    let k = K::from_hex(&args.key).context("--key")?;
    let opc = match (args.opc, args.op) {
        (Some(opc), _) => Opc::from_hex(&opc).context("--opc")?,
        (None, Some(op)) => capillary_aka::opc_from_op(&k, &Op::from_hex(&op).context("--op")?),
        (None, None) => anyhow::bail!("give --opc or --op"),
    };
    let sqn = capillary_secrets::Sqn::new(args.sqn).context("--sqn must fit in 48 bits")?;
    usim_agent::run(usim_agent::AgentConfig {
        ctrl: args.ctrl,
        k,
        opc,
        usim: capillary_aka::vector::UsimConfig {
            ind_len: args.ind_len,
            ..Default::default()
        },
        initial_seq: sqn.seq(args.ind_len),
        state: args.state,
        wait: Duration::from_secs(args.wait),
    })
}
