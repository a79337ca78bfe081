//! Shared harness of the interop tests: runs `capillary core` on a free loopback port with a
//! fresh store, provisions subscribers, and runs the real `eapol_test` peer against it with
//! `capillary usim-agent` as its USIM.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_capillary");
pub const SECRET: &str = "interop-secret";

/// Fails (never skips) when a peer is missing.
pub fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: apt-get install {package} (scripts/test does it)"
    );
}

pub struct Core {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The gateway-link address (`link-listen=`), when the core was started with one and
    /// asked to report it ([`Core::start_with_link`]).
    pub link: Option<std::net::SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The RADIUS shared secret eapol_test must use.
    pub secret: String,
}

impl Core {
    /// Starts the network side with `extra` appended to its TOML configuration.
    pub fn start(extra: &str) -> Core {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// As [`Core::start`], in an existing directory (a restart on the same store).
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Core {
        let cfg = dir.path().join("core.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {data:?}\n{extra}\n[radius]\nlisten = \"127.0.0.1:0\"\n\
                 [[radius.client]]\nname = \"eapol_test\"\naddress = \"127.0.0.1\"\n\
                 secret = \"{SECRET}\"\ntrusted = true\n",
                data = dir.path().join("data"),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["core", "--config"]).arg(&cfg);
        let expect_link = extra.contains("[link]");
        Self::spawn_with(dir, cmd, |_| SECRET.to_string(), expect_link)
    }

    /// As [`Core::start`], with the gateway link on a free loopback port; `link` holds it.
    pub fn start_with_link(extra: &str) -> Core {
        Self::start(&format!("{extra}\n[link]\nlisten = \"127.0.0.1:0\"\n"))
    }

    /// Starts `capillary core` with no configuration file at all, only a data directory and
    /// a free port: the zero-configuration path (loopback clients, generated secret).
    pub fn start_zero_config() -> Core {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "core",
            "--radius-listen",
            "127.0.0.1:0",
            "--link-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"));
        Self::spawn(dir, cmd, |data| {
            std::fs::read_to_string(data.join("radius-secret"))
                .unwrap()
                .trim()
                .to_string()
        })
    }

    fn spawn(dir: tempfile::TempDir, cmd: Command, secret: impl FnOnce(&Path) -> String) -> Core {
        Self::spawn_with(dir, cmd, secret, false)
    }

    /// Starts the process and reads `radius-listen=` (and, with `expect_link`, the
    /// `link-listen=` line that follows it) from its stdout.
    fn spawn_with(
        dir: tempfile::TempDir,
        mut cmd: Command,
        secret: impl FnOnce(&Path) -> String,
        expect_link: bool,
    ) -> Core {
        let mut child = cmd
            .env("CAPILLARY_LOG", "info,capillary_network=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut port = 0;
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap() > 0 {
            if let Some(addr) = line.trim().strip_prefix("radius-listen=") {
                port = addr.rsplit(':').next().unwrap().parse().unwrap();
                break;
            }
            line.clear();
        }
        assert!(
            port != 0,
            "core did not report its RADIUS address; log: {:?}",
            log.lock().unwrap()
        );
        let mut link = None;
        if expect_link {
            line.clear();
            while stdout.read_line(&mut line).unwrap() > 0 {
                if let Some(addr) = line.trim().strip_prefix("link-listen=") {
                    link = Some(addr.parse().unwrap());
                    break;
                }
                line.clear();
            }
            assert!(
                link.is_some(),
                "core did not report its gateway-link address; log: {:?}",
                log.lock().unwrap()
            );
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stdout.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let secret = secret(&dir.path().join("data"));
        Core {
            child,
            dir,
            port,
            link,
            log,
            secret,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `capillary subscriber <args>` on this core's store.
    pub fn subscriber(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(BIN)
            .arg("subscriber")
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .output()
            .unwrap();
        out
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Core {
    /// Kills the process and hands back its directory (store, USIM state files).
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One USIM: credentials and the SQN it starts with.
pub struct Sim<'a> {
    pub imsi: &'a str,
    pub k: &'a str,
    pub opc: &'a str,
    pub sqn: u64,
}

pub struct EapolRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub agent: std::process::Output,
}

impl EapolRun {
    pub fn succeeded(&self) -> bool {
        self.status.success() && self.stdout.lines().any(|l| l.trim() == "SUCCESS")
    }
    /// Number of `MPPE keys OK` reports eapol_test printed.
    pub fn mppe_ok(&self) -> Option<u32> {
        self.stdout.lines().find_map(|l| {
            let rest = l.strip_prefix("MPPE keys OK: ")?;
            let (ok, mismatch) = rest.split_once("mismatch: ")?;
            let ok: u32 = ok.trim().parse().ok()?;
            let mismatch: u32 = mismatch.trim().parse().ok()?;
            (mismatch == 0).then_some(ok)
        })
    }
}

/// Runs eapol_test (EAP-AKA', external SIM) against `core`, with `reauths` extra rounds (`-r`).
pub fn eapol_test(core: &Core, sim: &Sim<'_>, state: &Path, reauths: u32) -> EapolRun {
    eapol_test_with(core, sim, state, reauths, "")
}

/// As [`eapol_test`], with `network_extra` lines added to the network block.
pub fn eapol_test_with(
    core: &Core,
    sim: &Sim<'_>,
    state: &Path,
    reauths: u32,
    network_extra: &str,
) -> EapolRun {
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("eapol.conf");
    let ctrl_dir = work.path().join("ctrl");
    // `ctrl_interface` in the file (not `-T`, which switches eapol_test into a mode that waits
    // for its configuration over the control interface) plus `-W`: eapol_test starts once the
    // agent has attached.
    std::fs::write(
        &conf,
        format!(
            "ctrl_interface={}\nexternal_sim=1\nnetwork={{\n  ssid=\"capillary\"\n  \
             key_mgmt=IEEE8021X\n  eap=AKA'\n  \
             identity=\"6{}@wlan.mnc001.mcc001.3gppnetwork.org\"\n{}\n}}\n",
            ctrl_dir.display(),
            sim.imsi,
            network_extra
        ),
    )
    .unwrap();
    let mut eapol = Command::new("eapol_test")
        .arg(format!("-c{}", conf.display()))
        .arg("-a127.0.0.1")
        .arg(format!("-p{}", core.port))
        .arg(format!("-s{}", core.secret))
        .arg(format!("-r{reauths}"))
        .arg("-W")
        .arg("-t10")
        .stdout(std::fs::File::create(work.path().join("eapol.out")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("eapol_test runs");
    let agent = Command::new(BIN)
        .arg("usim-agent")
        .arg("--ctrl")
        .arg(ctrl_dir.join("test"))
        .args([
            "--key",
            sim.k,
            "--opc",
            sim.opc,
            "--sqn",
            &sim.sqn.to_string(),
            "--wait",
            "10",
        ])
        .arg("--state")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("usim-agent runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    // eapol_test's debug output goes to a file: a full pipe would stall it.
    let status = loop {
        if let Some(status) = eapol.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = eapol.kill();
            panic!("eapol_test did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let agent = agent.wait_with_output().unwrap();
    let stdout = std::fs::read_to_string(work.path().join("eapol.out")).unwrap_or_default();
    EapolRun {
        status,
        stdout,
        agent,
    }
}

// ---- the gateway system: `capillary gateway` and `capillary device` processes ----

/// Collects the lines of a child's pipe in a background thread.
fn collect_lines(
    pipe: impl std::io::Read + Send + 'static,
) -> (Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    let t = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(line);
        }
    });
    (log, t)
}

impl Core {
    /// Adds a subscriber of kind `kind` (`gateway` or `device`); panics if the CLI fails.
    pub fn add(&self, imsi: &str, kind: &str, k: &str, opc: &str) {
        let out = self.subscriber(&[
            "add", "--imsi", imsi, "--k", k, "--opc", opc, "--kind", kind,
        ]);
        assert!(
            out.status.success(),
            "subscriber add {imsi}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `capillary subscriber <args>` and panics unless it succeeds; returns stdout.
    pub fn subscriber_ok(&self, args: &[&str]) -> String {
        let out = self.subscriber(args);
        assert!(
            out.status.success(),
            "subscriber {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Provisions `count` devices with consecutive IMSIs from `first` (same K and OPc), each
    /// bound to `gateway` (none when `None`), with one `subscriber import`.
    pub fn add_devices(&self, first: u64, count: u32, k: &str, opc: &str, gateway: Option<&str>) {
        let csv = self.dir.path().join(format!("devices-{first}.csv"));
        let mut text = String::from("imsi,k,opc,kind,gateways\n");
        for i in 0..u64::from(count) {
            text.push_str(&format!(
                "{:015},{k},{opc},device,{}\n",
                first + i,
                gateway.unwrap_or("")
            ));
        }
        std::fs::write(&csv, text).unwrap();
        self.subscriber_ok(&["import", csv.to_str().unwrap()]);
    }

    /// `capillary subscriber audit --imsi <imsi>`.
    pub fn audit(&self, imsi: &str) -> String {
        self.subscriber_ok(&["audit", "--imsi", imsi])
    }

    /// Lines of the core's log containing every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
            .collect()
    }

    /// Waits until `pred` holds for the log, up to `timeout`.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&[String]) -> bool) -> bool {
        let until = Instant::now() + timeout;
        loop {
            let lines = self.log.lock().unwrap().clone();
            if pred(&lines) {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A `capillary gateway` process.
pub struct GatewayProc {
    pub child: Child,
    /// Its capillary-side address (`capillary-listen=`).
    pub listen: std::net::SocketAddr,
    /// Its stderr (log) lines.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl GatewayProc {
    /// Starts `capillary gateway --network <network> --listen <listen>` with its own
    /// credentials and waits for `capillary-listen=`.
    pub fn start(
        network: std::net::SocketAddr,
        listen: &str,
        imsi: &str,
        k: &str,
        opc: &str,
    ) -> GatewayProc {
        let mut child = Command::new(BIN)
            .arg("gateway")
            .arg("--network")
            .arg(network.to_string())
            .args(["--listen", listen, "--imsi", imsi, "--k", k, "--opc", opc])
            .env("CAPILLARY_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (log, _) = collect_lines(child.stderr.take().unwrap());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut addr = None;
        while stdout.read_line(&mut line).unwrap() > 0 {
            if let Some(a) = line.trim().strip_prefix("capillary-listen=") {
                addr = Some(a.parse().unwrap());
                break;
            }
            line.clear();
        }
        let listen = addr.unwrap_or_else(|| {
            panic!(
                "gateway did not report its address; log: {:?}",
                log.lock().unwrap()
            )
        });
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stdout.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        GatewayProc { child, listen, log }
    }

    /// Waits for "gateway authenticated" in its log.
    pub fn wait_authenticated(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("gateway authenticated"))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A finished `capillary device` run.
pub struct DeviceRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl DeviceRun {
    /// The `key=value` pairs of the last line (`summary ...`); panics without it.
    pub fn summary(&self) -> std::collections::HashMap<String, u64> {
        let last = self.stdout.lines().last().unwrap_or_default();
        let rest = last.strip_prefix("summary ").unwrap_or_else(|| {
            panic!(
                "no summary line; stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        });
        rest.split_whitespace()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    /// One summary value.
    pub fn get(&self, key: &str) -> u64 {
        *self
            .summary()
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in the summary: {}", self.stdout))
    }

    /// Status, stdout and the last 40 lines of stderr (all of it with SYSTEM_FULL_LOG set).
    pub fn describe(&self) -> String {
        let keep = if std::env::var_os("SYSTEM_FULL_LOG").is_some() {
            usize::MAX
        } else {
            40
        };
        format!(
            "status {:?} after {:?}\nstdout:\n{}\nstderr (tail):\n{}",
            self.status,
            self.elapsed,
            self.stdout,
            self.stderr
                .lines()
                .rev()
                .take(keep)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

/// `capillary device` with the given population; `extra` adds flags (`--loss`, `--seed`,
/// `--no-retry`, `--timeout`, ...). Not yet waited for.
pub fn spawn_devices(
    gateway: std::net::SocketAddr,
    imsi_start: &str,
    count: u32,
    k: &str,
    opc: &str,
    extra: &[&str],
) -> (Child, Instant) {
    let child = Command::new(BIN)
        .arg("device")
        .arg("--gateway")
        .arg(gateway.to_string())
        .args(["--imsi-start", imsi_start, "--count", &count.to_string()])
        .args(["--k", k, "--opc", opc])
        .args(extra)
        // SYSTEM_DEVICE_LOG=capillary=debug shows every attempt of every device.
        .env(
            "CAPILLARY_LOG",
            std::env::var("SYSTEM_DEVICE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, Instant::now())
}

/// Waits for a process of [`spawn_devices`].
pub fn wait_devices(child: Child, started: Instant) -> DeviceRun {
    let out = child.wait_with_output().unwrap();
    DeviceRun {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// [`spawn_devices`] then [`wait_devices`].
pub fn run_devices(
    gateway: std::net::SocketAddr,
    imsi_start: &str,
    count: u32,
    k: &str,
    opc: &str,
    extra: &[&str],
) -> DeviceRun {
    let (child, started) = spawn_devices(gateway, imsi_start, count, k, opc, extra);
    wait_devices(child, started)
}
