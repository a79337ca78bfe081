//! `capillary bench radius`: an EAP-AKA' (RFC 9048) RADIUS load generator.
//!
//! It plays many NAS + supplicant pairs at once against any RADIUS server that speaks EAP-AKA'
//! (RFC 3579): `capillary core`, hostapd's integrated RADIUS server, FreeRADIUS. Each subscriber
//! is the project's own [`EapAkaPeer`] driven by a soft [`Usim`] whose SEQ array stays in memory
//! for the whole run, so consecutive authentications of one subscriber look like one real device.
//!
//! Design:
//! - one tokio task ("worker") per UDP socket; a socket multiplexes up to 256 sessions over the
//!   8-bit RADIUS Identifier (RFC 2865 §3), so `--concurrency` above 256 opens more sockets;
//! - each in-flight authentication is a small state machine keyed by the Identifier of its
//!   outstanding Access-Request; Identifiers are reused first-in first-out, so a late reply to an
//!   abandoned request fails the Response Authenticator check instead of matching a new one;
//! - a request unanswered after `--timeout-ms` is retransmitted with the identical bytes
//!   (RFC 5080 §2.2.1), at most `--retries` times, then the authentication fails as `timeout`;
//! - the MSK carried in MS-MPPE-Recv/Send-Key (RFC 2548 §2.4.2–2.4.3, RFC 5216 §2.3) is compared
//!   with the peer's own MSK when present; a difference fails the authentication as
//!   `mppe-mismatch`.
//!
//! Provisioning: the server must know the population. For `capillary core`:
//! `capillary bench radius --imsi-start … --subscribers N --emit-csv pop.csv`, then
//! `capillary subscriber import pop.csv`. For hostapd with Capillary as its AuC (hlr_auc_gw),
//! import into Capillary's store the same way.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use capillary_aka::vector::{Usim, UsimConfig};
use capillary_eap::eap;
use capillary_eap::peer::{EapAkaPeer, PeerConfig, PeerEvent, PeerFailure};
use capillary_radius::{client, Code, Packet};
use capillary_secrets::{Imsi, Msk, Opc, Secret, K};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// TS 35.208 §4.3 Test Set 1: the default credentials of the test population.
const DEFAULT_K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const DEFAULT_OPC: &str = "cd63cb71954a9f4e48a5994e37a02baf";
/// Identifiers per socket (RFC 2865 §3: one octet).
const IDS_PER_SOCKET: usize = 256;
/// An authentication still unfinished after this many Access-Request rounds is abandoned.
const MAX_ROUNDS: u32 = 16;

/// Authentication kind to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Full authentication every time (a fresh peer: permanent identity, AKA on the USIM).
    Full,
    /// One unmeasured full authentication per subscriber, then fast re-authentications
    /// (RFC 4187 §5) with the re-authentication identity the server issued.
    Reauth,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Reauth => "reauth",
        }
    }
}

/// `capillary bench radius` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// RADIUS server (host:port).
    #[arg(long, default_value = "127.0.0.1:1812")]
    pub server: String,
    /// RADIUS shared secret.
    #[arg(long, conflicts_with = "secret_file")]
    pub secret: Option<String>,
    /// File holding the shared secret (surrounding whitespace ignored).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// First IMSI of the population; the others follow consecutively.
    #[arg(long, default_value = "001010000000001")]
    pub imsi_start: String,
    /// Number of subscribers.
    #[arg(long, default_value_t = 100)]
    pub subscribers: u32,
    /// Subscriber key K (hex), the same for every subscriber (default: TS 35.208 Test Set 1).
    #[arg(long, default_value = DEFAULT_K)]
    pub k: String,
    /// OPc (hex), the same for every subscriber (default: TS 35.208 Test Set 1).
    #[arg(long, default_value = DEFAULT_OPC)]
    pub opc: String,
    /// Realm of the identities `6<IMSI>@<realm>` (RFC 9048 §3.1; empty: no realm).
    #[arg(long, default_value = "wlan.mnc001.mcc001.3gppnetwork.org")]
    pub realm: String,
    /// Expected network name (AT_KDF_INPUT); any is accepted when absent.
    #[arg(long)]
    pub network_name: Option<String>,
    /// Authentications in flight at once (at most one per subscriber).
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    /// Number of measured authentications (default 1000 unless --duration).
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,
    /// Start new authentications for this many seconds instead of a fixed count.
    #[arg(long)]
    pub duration: Option<f64>,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Full)]
    pub mode: Mode,
    /// Milliseconds before an unanswered Access-Request is retransmitted.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Retransmissions of one Access-Request before the authentication counts as `timeout`.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write the population as CSV (`imsi,k,opc`, for `capillary subscriber import`) and exit.
    #[arg(long, value_name = "FILE")]
    pub emit_csv: Option<PathBuf>,
}

/// Runs the command. Fails (non-zero exit) when any measured authentication failed.
pub fn run(args: Args) -> Result<()> {
    let imsis = population(&args.imsi_start, args.subscribers)?;
    K::from_hex(&args.k).context("--k")?;
    Opc::from_hex(&args.opc).context("--opc")?;
    if let Some(path) = &args.emit_csv {
        let mut csv = String::from("imsi,k,opc\n");
        for i in &imsis {
            let _ = writeln!(csv, "{i},{},{}", args.k, args.opc);
        }
        if path.as_os_str() == "-" {
            print!("{csv}");
        } else {
            std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} subscribers to {}; provision them with `capillary subscriber import {}`",
                imsis.len(),
                path.display(),
                path.display()
            );
        }
        return Ok(());
    }
    let secret: Zeroizing<Vec<u8>> = match (&args.secret, &args.secret_file) {
        (Some(s), _) => Zeroizing::new(s.as_bytes().to_vec()),
        (None, Some(p)) => {
            let t = Zeroizing::new(
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            );
            Zeroizing::new(t.trim().as_bytes().to_vec())
        }
        (None, None) => bail!("give --secret or --secret-file"),
    };
    if secret.is_empty() {
        bail!("the shared secret is empty");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.timeout_ms == 0 {
        bail!("--timeout-ms must be positive");
    }
    let stop = match (args.count, args.duration) {
        (_, Some(d)) if !(d.is_finite() && d > 0.0) => bail!("--duration must be positive"),
        (_, Some(d)) => Stop::Duration(Duration::from_secs_f64(d)),
        (Some(0), None) => bail!("--count must be at least 1"),
        (Some(c), None) => Stop::Count(c),
        (None, None) => Stop::Count(1000),
    };
    let server = std::net::ToSocketAddrs::to_socket_addrs(&args.server)
        .with_context(|| format!("--server {}", args.server))?
        .next()
        .with_context(|| format!("--server {} resolves to nothing", args.server))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(bench(&args, server, secret, imsis, stop))?;
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if report.measured.failed() > 0 || report.measured.ok == 0 {
        bail!(
            "{} of {} authentications failed",
            report.measured.failed(),
            report.measured.attempted
        );
    }
    Ok(())
}

/// `n` consecutive IMSIs from `start`, keeping its width.
fn population(start: &str, n: u32) -> Result<Vec<String>> {
    Imsi::new(start).map_err(|e| anyhow::anyhow!("--imsi-start: {e}"))?;
    if n == 0 {
        bail!("--subscribers must be at least 1");
    }
    let first: u64 = start.parse().context("--imsi-start")?;
    let width = start.len();
    (0..u64::from(n))
        .map(|i| {
            let s = format!("{:0width$}", first + i);
            if s.len() != width {
                bail!("--imsi-start + --subscribers overflows {width} digits");
            }
            Imsi::new(&s).map_err(|e| anyhow::anyhow!("IMSI {s}: {e}"))?;
            Ok(s)
        })
        .collect()
}

/// When the measured phase stops starting authentications.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Count(u64),
    Duration(Duration),
}

/// Where a worker takes its next job from.
#[derive(Debug, Clone)]
enum Jobs {
    /// Every subscriber of the worker once (reauth priming).
    EachOnce,
    /// A shared ticket counter up to a total.
    Count { next: Arc<AtomicU64>, total: u64 },
    /// Until a deadline.
    Until(Instant),
}

impl Jobs {
    fn take(&self) -> bool {
        match self {
            // Counted per worker in `run_phase`.
            Jobs::EachOnce => true,
            Jobs::Count { next, total } => next.fetch_add(1, Ordering::Relaxed) < *total,
            Jobs::Until(t) => Instant::now() < *t,
        }
    }
}

/// Everything a worker needs to know, shared.
struct Shared {
    server: SocketAddr,
    secret: Zeroizing<Vec<u8>>,
    mode: Mode,
    timeout: Duration,
    retries: u32,
    peer_cfg_realm: String,
    network_name: Option<String>,
}

impl Shared {
    fn peer_config(&self, imsi: &str) -> PeerConfig {
        PeerConfig {
            permanent_identity: if self.peer_cfg_realm.is_empty() {
                format!("6{imsi}")
            } else {
                format!("6{imsi}@{}", self.peer_cfg_realm)
            },
            network_name: self.network_name.clone(),
            result_indication: false,
        }
    }
}

/// One simulated device: its peer (pseudonym / re-authentication state) and its USIM.
struct Subscriber {
    imsi: String,
    peer: EapAkaPeer,
    usim: Usim,
}

/// One authentication in progress, waiting for the reply to its outstanding Access-Request.
struct Session {
    sub: usize,
    user_name: Vec<u8>,
    /// The outstanding Access-Request, retransmitted as is.
    bytes: Vec<u8>,
    authenticator: [u8; 16],
    deadline: Instant,
    /// Transmissions of `bytes` so far.
    sends: u32,
    started: Instant,
    rounds: u32,
    aka_runs: u32,
}

/// Counters of one phase.
#[derive(Debug, Default, Clone)]
struct Stats {
    attempted: u64,
    ok: u64,
    failures: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
    rounds_ok: u64,
    retransmissions: u64,
    fast_reauths: u64,
    full_auths: u64,
    mppe_checked: u64,
    mppe_absent: u64,
    invalid_replies: u64,
    stale_replies: u64,
    elapsed: Duration,
}

impl Stats {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn merge(&mut self, o: Stats) {
        self.attempted += o.attempted;
        self.ok += o.ok;
        for (k, v) in o.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.latencies_us.extend(o.latencies_us);
        self.rounds_ok += o.rounds_ok;
        self.retransmissions += o.retransmissions;
        self.fast_reauths += o.fast_reauths;
        self.full_auths += o.full_auths;
        self.mppe_checked += o.mppe_checked;
        self.mppe_absent += o.mppe_absent;
        self.invalid_replies += o.invalid_replies;
        self.stale_replies += o.stale_replies;
    }

    fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ok as f64 / s
        } else {
            0.0
        }
    }

    /// Nearest-rank percentile of the successful authentications' latency, in ms.
    fn percentile_ms(&self, p: f64) -> f64 {
        let v = &self.latencies_us;
        if v.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1] as f64 / 1000.0
    }

    fn mean_ms(&self) -> f64 {
        let v = &self.latencies_us;
        if v.is_empty() {
            return 0.0;
        }
        v.iter().sum::<u64>() as f64 / v.len() as f64 / 1000.0
    }

    fn rounds_per_auth(&self) -> f64 {
        if self.ok == 0 {
            0.0
        } else {
            self.rounds_ok as f64 / self.ok as f64
        }
    }
}

/// Why an authentication failed, as reported (`eap-failure:<reason>` for the peer's reasons).
fn peer_cause(f: &PeerFailure) -> String {
    let r = match f {
        PeerFailure::EapFailure => "eap-failure".to_string(),
        PeerFailure::Notification(c) => format!("notification-{c}"),
        PeerFailure::AuthenticationRejected(e) => format!("authentication-rejected ({e})"),
        PeerFailure::AmfSeparationBit => "amf-separation-bit".into(),
        PeerFailure::NetworkName => "network-name".into(),
        PeerFailure::KdfUnsupported => "kdf-unsupported".into(),
        PeerFailure::MacInvalid => "mac-invalid".into(),
        PeerFailure::CheckcodeMismatch => "checkcode-mismatch".into(),
        PeerFailure::Protocol => "protocol".into(),
        other => format!("{other:?}").to_lowercase(),
    };
    format!("eap-failure:{r}")
}

/// What the peer said after being fed one EAP packet.
#[derive(Default)]
struct PeerOut {
    send: Option<Vec<u8>>,
    msk: Option<Msk>,
    failure: Option<PeerFailure>,
    aka_runs: u32,
}

fn drive(sub: &mut Subscriber, eap_in: &[u8], rng: &mut StdRng) -> PeerOut {
    sub.peer.handle_request(eap_in, rng);
    let mut out = PeerOut::default();
    while let Some(ev) = sub.peer.poll_event() {
        match ev {
            PeerEvent::Send(b) => out.send = Some(b),
            PeerEvent::RunAka { rand, autn } => {
                out.aka_runs += 1;
                let r = sub.usim.authenticate(&rand, &autn);
                sub.peer.provide_aka(r);
            }
            PeerEvent::Success { msk, .. } => out.msk = Some(msk),
            PeerEvent::Failure { reason } => out.failure = Some(reason),
            _ => {}
        }
    }
    out
}

/// One UDP socket and the sessions multiplexed on it.
struct Worker {
    sh: Arc<Shared>,
    sock: UdpSocket,
    subs: Vec<Subscriber>,
    idle: VecDeque<usize>,
    /// Sessions by the Identifier of their outstanding request.
    slots: Vec<Option<Session>>,
    free_ids: VecDeque<u8>,
    max_active: usize,
    active: usize,
    rng: StdRng,
    stats: Stats,
}

impl Worker {
    async fn new(
        sh: Arc<Shared>,
        imsis: Vec<String>,
        max_active: usize,
        k: &K,
        opc: &Opc,
    ) -> Result<Self> {
        let bind: SocketAddr = if sh.server.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let sock = UdpSocket::bind(bind)
            .await
            .context("binding a UDP socket")?;
        let subs: Vec<Subscriber> = imsis
            .into_iter()
            .map(|imsi| Subscriber {
                peer: EapAkaPeer::new(sh.peer_config(&imsi)),
                usim: Usim::new(k, opc, UsimConfig::default()),
                imsi,
            })
            .collect();
        let mut rng = StdRng::from_entropy();
        let start = (rng.next_u32() & 0xff) as u8;
        Ok(Self {
            idle: (0..subs.len()).collect(),
            subs,
            slots: (0..IDS_PER_SOCKET).map(|_| None).collect(),
            free_ids: (0..=255u8).map(|i| i.wrapping_add(start)).collect(),
            max_active,
            active: 0,
            rng,
            sock,
            sh,
            stats: Stats::default(),
        })
    }

    /// Runs one phase to completion and hands back its counters.
    async fn run_phase(&mut self, jobs: &Jobs) -> Stats {
        self.stats = Stats::default();
        if matches!(jobs, Jobs::EachOnce) {
            self.idle = (0..self.subs.len()).collect();
        }
        let mut buf = vec![0u8; 4096];
        let mut draining = false;
        // Priming visits every subscriber of this worker exactly once.
        let mut once_left = self.subs.len();
        loop {
            while !draining && self.active < self.max_active && !self.idle.is_empty() {
                let more = match jobs {
                    Jobs::EachOnce if once_left == 0 => false,
                    Jobs::EachOnce => {
                        once_left -= 1;
                        true
                    }
                    _ => jobs.take(),
                };
                if !more {
                    draining = true;
                    break;
                }
                if let Some(sub) = self.idle.pop_front() {
                    self.start(sub).await;
                }
            }
            if self.active == 0 {
                break;
            }
            let next = self
                .slots
                .iter()
                .flatten()
                .map(|s| s.deadline)
                .min()
                .unwrap_or_else(|| Instant::now() + self.sh.timeout);
            tokio::select! {
                r = self.sock.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        if from == self.sh.server {
                            self.on_datagram(&buf[..n]).await;
                        } else {
                            self.stats.stale_replies += 1;
                        }
                    }
                }
                _ = tokio::time::sleep_until(next) => {}
            }
            self.on_timers().await;
        }
        std::mem::take(&mut self.stats)
    }

    /// Starts one authentication of subscriber `sub`: the EAP-Request/Identity a NAS would send
    /// goes to the peer locally (RFC 3579 §3.1), its answer opens the RADIUS conversation.
    async fn start(&mut self, sub: usize) {
        self.active += 1;
        self.stats.attempted += 1;
        let now = Instant::now();
        let s = &mut self.subs[sub];
        if self.sh.mode == Mode::Full {
            s.peer = EapAkaPeer::new(self.sh.peer_config(&s.imsi));
        }
        let out = drive(s, &eap::identity_request(1), &mut self.rng);
        let sess = Session {
            sub,
            user_name: Vec::new(),
            bytes: Vec::new(),
            authenticator: [0; 16],
            deadline: now,
            sends: 0,
            started: now,
            rounds: 0,
            aka_runs: 0,
        };
        match out.send {
            Some(resp) if resp.len() > 5 => {
                let sess = Session {
                    user_name: resp[5..].to_vec(),
                    ..sess
                };
                self.send_request(sess, &resp, None).await;
            }
            _ => self.finish(sess, Err("eap-failure:no-identity".into()), None),
        }
    }

    /// Builds, records and sends the next Access-Request of `sess`.
    async fn send_request(&mut self, mut sess: Session, eap_out: &[u8], state: Option<&[u8]>) {
        let Some(id) = self.free_ids.pop_front() else {
            return self.finish(sess, Err("no-identifier".into()), None);
        };
        let mut authenticator = [0u8; 16];
        self.rng.fill_bytes(&mut authenticator);
        let bytes = match client::access_request(
            &self.sh.secret,
            id,
            authenticator,
            Some(&sess.user_name),
            eap_out,
            state,
            &[],
        ) {
            Ok(b) => b,
            Err(_) => {
                self.free_ids.push_back(id);
                return self.finish(sess, Err("encode".into()), None);
            }
        };
        // A send error (e.g. no route yet) is left to the retransmission timer.
        let _ = self.sock.send_to(&bytes, self.sh.server).await;
        sess.bytes = bytes;
        sess.authenticator = authenticator;
        sess.sends = 1;
        sess.deadline = Instant::now() + self.sh.timeout;
        self.slots[usize::from(id)] = Some(sess);
    }

    /// A datagram from the server: discarded unless it answers an outstanding request and
    /// carries a valid Response Authenticator and Message-Authenticator (RFC 2865 §3,
    /// RFC 3579 §3.2).
    async fn on_datagram(&mut self, bytes: &[u8]) {
        let Some(&id) = bytes.get(1) else {
            self.stats.invalid_replies += 1;
            return;
        };
        let slot = usize::from(id);
        let Some(sess) = self.slots[slot].take() else {
            self.stats.stale_replies += 1;
            return;
        };
        let reply = match client::verify_response(&self.sh.secret, &sess.authenticator, bytes) {
            Ok(p) => p,
            Err(_) => {
                self.slots[slot] = Some(sess);
                self.stats.invalid_replies += 1;
                return;
            }
        };
        self.free_ids.push_back(id);
        self.advance(sess, reply).await;
    }

    async fn advance(&mut self, mut sess: Session, reply: Packet) {
        sess.rounds += 1;
        let eap_in = client::eap_message(&reply);
        match reply.code {
            Code::Challenge => {
                let Some(eap_in) = eap_in else {
                    return self.finish(sess, Err("protocol:challenge-without-eap".into()), None);
                };
                if sess.rounds >= MAX_ROUNDS {
                    return self.finish(sess, Err("protocol:too-many-rounds".into()), None);
                }
                let out = drive(&mut self.subs[sess.sub], &eap_in, &mut self.rng);
                sess.aka_runs += out.aka_runs;
                if let Some(f) = &out.failure {
                    return self.finish(sess, Err(peer_cause(f)), None);
                }
                let Some(next) = out.send else {
                    return self.finish(sess, Err("protocol:no-eap-response".into()), None);
                };
                let state = client::state(&reply);
                self.send_request(sess, &next, state.as_deref()).await;
            }
            Code::Accept => {
                let out = match &eap_in {
                    Some(e) => drive(&mut self.subs[sess.sub], e, &mut self.rng),
                    None => PeerOut::default(),
                };
                sess.aka_runs += out.aka_runs;
                let Some(peer_msk) = out.msk else {
                    let cause = match &out.failure {
                        Some(f) => peer_cause(f),
                        None => "eap-failure:accept-without-eap-success".into(),
                    };
                    return self.finish(sess, Err(cause), None);
                };
                let mppe = client::msk_from_mppe(&self.sh.secret, &sess.authenticator, &reply);
                let verdict = match mppe {
                    Ok(Some(radius_msk)) => {
                        if radius_msk.as_slice() == peer_msk.expose() {
                            Ok(())
                        } else {
                            Err("mppe-mismatch".to_string())
                        }
                    }
                    Ok(None) => Ok(()),
                    Err(_) => Err("mppe-mismatch".to_string()),
                };
                let checked = mppe_present(&reply);
                self.finish(sess, verdict, Some(checked));
            }
            _ => {
                // Access-Reject (verify_response admits nothing else).
                if let Some(e) = &eap_in {
                    let _ = drive(&mut self.subs[sess.sub], e, &mut self.rng);
                }
                self.finish(sess, Err("reject".into()), None);
            }
        }
    }

    /// Retransmits requests whose timer ran out, or gives up on them.
    async fn on_timers(&mut self) {
        let now = Instant::now();
        for slot in 0..IDS_PER_SOCKET {
            let due = matches!(&self.slots[slot], Some(s) if s.deadline <= now);
            if !due {
                continue;
            }
            let Some(mut sess) = self.slots[slot].take() else {
                continue;
            };
            if sess.sends > self.sh.retries {
                self.free_ids.push_back(slot as u8);
                self.finish(sess, Err("timeout".into()), None);
                continue;
            }
            let _ = self.sock.send_to(&sess.bytes, self.sh.server).await;
            sess.sends += 1;
            sess.deadline = now + self.sh.timeout;
            self.stats.retransmissions += 1;
            self.slots[slot] = Some(sess);
        }
    }

    /// Records the outcome; `mppe` says whether MPPE keys were present (on success).
    fn finish(&mut self, sess: Session, outcome: Result<(), String>, mppe: Option<bool>) {
        self.active -= 1;
        match outcome {
            Ok(()) => {
                self.stats.ok += 1;
                self.stats.rounds_ok += u64::from(sess.rounds);
                let us = sess.started.elapsed().as_micros();
                self.stats
                    .latencies_us
                    .push(u64::try_from(us).unwrap_or(u64::MAX));
                if sess.aka_runs == 0 {
                    self.stats.fast_reauths += 1;
                } else {
                    self.stats.full_auths += 1;
                }
                match mppe {
                    Some(true) => self.stats.mppe_checked += 1,
                    _ => self.stats.mppe_absent += 1,
                }
            }
            Err(cause) => {
                if cause == "mppe-mismatch" {
                    self.stats.mppe_checked += 1;
                }
                *self.stats.failures.entry(cause).or_default() += 1;
            }
        }
        self.idle.push_back(sess.sub);
    }
}

fn mppe_present(p: &Packet) -> bool {
    client::mppe_recv_key(p).is_some() && client::mppe_send_key(p).is_some()
}

/// The whole run.
#[derive(Debug)]
struct Report {
    server: SocketAddr,
    mode: Mode,
    subscribers: usize,
    concurrency: usize,
    sockets: usize,
    priming: Option<Stats>,
    measured: Stats,
}

async fn bench(
    args: &Args,
    server: SocketAddr,
    secret: Zeroizing<Vec<u8>>,
    imsis: Vec<String>,
    stop: Stop,
) -> Result<Report> {
    let k = K::from_hex(&args.k).context("--k")?;
    let opc = Opc::from_hex(&args.opc).context("--opc")?;
    let subscribers = imsis.len();
    let concurrency = (args.concurrency as usize).min(subscribers);
    let sockets = concurrency.div_ceil(IDS_PER_SOCKET);
    let sh = Arc::new(Shared {
        server,
        secret,
        mode: args.mode,
        timeout: Duration::from_millis(args.timeout_ms),
        retries: args.retries,
        peer_cfg_realm: args.realm.clone(),
        network_name: args.network_name.clone(),
    });
    let mut parts: Vec<Vec<String>> = vec![Vec::new(); sockets];
    for (i, imsi) in imsis.into_iter().enumerate() {
        parts[i % sockets].push(imsi);
    }
    let mut workers = Vec::with_capacity(sockets);
    for (w, part) in parts.into_iter().enumerate() {
        let slots = concurrency / sockets + usize::from(w < concurrency % sockets);
        workers.push(Worker::new(sh.clone(), part, slots, &k, &opc).await?);
    }
    let priming = if args.mode == Mode::Reauth {
        let (w, s) = phase(workers, Jobs::EachOnce).await?;
        workers = w;
        Some(s)
    } else {
        None
    };
    let jobs = match stop {
        Stop::Count(total) => Jobs::Count {
            next: Arc::new(AtomicU64::new(0)),
            total,
        },
        Stop::Duration(d) => Jobs::Until(Instant::now() + d),
    };
    let (_, measured) = phase(workers, jobs).await?;
    Ok(Report {
        server,
        mode: args.mode,
        subscribers,
        concurrency,
        sockets,
        priming,
        measured,
    })
}

/// Runs every worker through one phase in parallel and merges their counters.
async fn phase(workers: Vec<Worker>, jobs: Jobs) -> Result<(Vec<Worker>, Stats)> {
    let t0 = Instant::now();
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let s = w.run_phase(&jobs).await;
                (w, s)
            })
        })
        .collect();
    let mut back = Vec::with_capacity(tasks.len());
    let mut total = Stats::default();
    for t in tasks {
        let (w, s) = t.await.context("worker task")?;
        back.push(w);
        total.merge(s);
    }
    total.elapsed = t0.elapsed();
    total.latencies_us.sort_unstable();
    Ok((back, total))
}

/// A JSON string literal (RFC 8259 §7).
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (finite; non-finite values become 0).
fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "0".into()
    }
}

impl Stats {
    fn json(&self) -> String {
        let failures: Vec<String> = self
            .failures
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        format!(
            "{{\"attempted\":{},\"succeeded\":{},\"failed\":{},\"elapsed_s\":{},\
             \"auths_per_s\":{},\"latency_ms\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{},\
             \"mean\":{}}},\"round_trips_per_auth\":{},\"retransmissions\":{},\
             \"fast_reauths\":{},\"full_auths\":{},\"mppe_checked\":{},\"mppe_absent\":{},\
             \"invalid_replies\":{},\"stale_replies\":{},\"failures\":{{{}}}}}",
            self.attempted,
            self.ok,
            self.failed(),
            json_num(self.elapsed.as_secs_f64()),
            json_num(self.rate()),
            json_num(self.percentile_ms(50.0)),
            json_num(self.percentile_ms(90.0)),
            json_num(self.percentile_ms(99.0)),
            json_num(self.percentile_ms(100.0)),
            json_num(self.mean_ms()),
            json_num(self.rounds_per_auth()),
            self.retransmissions,
            self.fast_reauths,
            self.full_auths,
            self.mppe_checked,
            self.mppe_absent,
            self.invalid_replies,
            self.stale_replies,
            failures.join(","),
        )
    }

    fn text(&self, out: &mut String, reauth: bool) {
        let _ = writeln!(
            out,
            "authentications: {} attempted, {} succeeded, {} failed in {:.3} s",
            self.attempted,
            self.ok,
            self.failed(),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "rate:            {:.1} auths/s", self.rate());
        let _ = writeln!(
            out,
            "latency (ms):    p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}",
            self.percentile_ms(50.0),
            self.percentile_ms(90.0),
            self.percentile_ms(99.0),
            self.percentile_ms(100.0),
            self.mean_ms()
        );
        let _ = writeln!(
            out,
            "round trips:     {:.2} per authentication, {} retransmissions",
            self.rounds_per_auth(),
            self.retransmissions
        );
        if reauth {
            let _ = writeln!(
                out,
                "kind:            {} fast re-authentications, {} full authentications",
                self.fast_reauths, self.full_auths
            );
        }
        let _ = writeln!(
            out,
            "MSK check:       {} compared with MS-MPPE keys, {} without keys",
            self.mppe_checked, self.mppe_absent
        );
        if self.invalid_replies + self.stale_replies > 0 {
            let _ = writeln!(
                out,
                "discarded:       {} invalid replies, {} stale replies",
                self.invalid_replies, self.stale_replies
            );
        }
        if self.failures.is_empty() {
            let _ = writeln!(out, "failures:        none");
        } else {
            let list: Vec<String> = self
                .failures
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "failures:        {}", list.join(", "));
        }
    }
}

impl Report {
    fn json(&self) -> String {
        let priming = match &self.priming {
            Some(p) => p.json(),
            None => "null".into(),
        };
        let m = &self.measured;
        format!(
            "{{\"server\":{},\"mode\":{},\"subscribers\":{},\"concurrency\":{},\"sockets\":{},\
             \"attempted\":{},\"succeeded\":{},\"failed\":{},\"elapsed_s\":{},\"auths_per_s\":{},\
             \"latency_ms\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{},\"mean\":{}}},\
             \"round_trips_per_auth\":{},\"failures\":{},\"measured\":{},\"priming\":{}}}",
            json_str(&self.server.to_string()),
            json_str(self.mode.name()),
            self.subscribers,
            self.concurrency,
            self.sockets,
            m.attempted,
            m.ok,
            m.failed(),
            json_num(m.elapsed.as_secs_f64()),
            json_num(m.rate()),
            json_num(m.percentile_ms(50.0)),
            json_num(m.percentile_ms(90.0)),
            json_num(m.percentile_ms(99.0)),
            json_num(m.percentile_ms(100.0)),
            json_num(m.mean_ms()),
            json_num(m.rounds_per_auth()),
            {
                let f: Vec<String> = m
                    .failures
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", json_str(k)))
                    .collect();
                format!("{{{}}}", f.join(","))
            },
            m.json(),
            priming,
        )
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "capillary bench radius: server {}, mode {}, {} subscribers, concurrency {}, {} socket(s)",
            self.server,
            self.mode.name(),
            self.subscribers,
            self.concurrency,
            self.sockets
        );
        if let Some(p) = &self.priming {
            let _ = writeln!(
                out,
                "priming:         {} full authentications, {} succeeded, {} failed in {:.3} s",
                p.attempted,
                p.ok,
                p.failed(),
                p.elapsed.as_secs_f64()
            );
        }
        self.measured.text(&mut out, self.mode == Mode::Reauth);
        let _ = writeln!(
            out,
            "summary:         {} {} authentications, {:.1} auths/s, p99 {:.3} ms, {} failed",
            self.measured.ok,
            self.mode.name(),
            self.measured.rate(),
            self.measured.percentile_ms(99.0),
            self.measured.failed()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn population_is_consecutive_and_keeps_width() {
        let p = population("001010000000098", 3).unwrap();
        assert_eq!(p, ["001010000000098", "001010000000099", "001010000000100"]);
        assert!(population("999999999999999", 2).is_err());
        assert!(population("00101", 1).is_err());
        assert!(population("001010000000001", 0).is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Stats {
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            ..Stats::default()
        };
        assert_eq!(s.percentile_ms(50.0), 50.0);
        assert_eq!(s.percentile_ms(90.0), 90.0);
        assert_eq!(s.percentile_ms(99.0), 99.0);
        assert_eq!(s.percentile_ms(100.0), 100.0);
        assert_eq!(Stats::default().percentile_ms(99.0), 0.0);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(json_num(f64::NAN), "0");
        assert_eq!(json_num(1.5), "1.500");
    }

    #[test]
    fn peer_causes_are_prefixed() {
        assert_eq!(
            peer_cause(&PeerFailure::MacInvalid),
            "eap-failure:mac-invalid"
        );
        assert_eq!(
            peer_cause(&PeerFailure::Notification(16384)),
            "eap-failure:notification-16384"
        );
    }
}
