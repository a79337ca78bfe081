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
        Self::spawn(dir, cmd, |_| SECRET.to_string())
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

    fn spawn(
        dir: tempfile::TempDir,
        mut cmd: Command,
        secret: impl FnOnce(&Path) -> String,
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
