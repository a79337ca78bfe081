//! `capillary usim-agent`: a soft USIM behind wpa_supplicant's / eapol_test's control interface.
//!
//! With `external_sim=1` the supplicant does not run AKA itself: it sends the monitor
//! `CTRL-REQ-SIM-<id>:UMTS-AUTH:<RAND>:<AUTN> needed for SSID …` and waits for the command
//! `CTRL-RSP-SIM-<id>:UMTS-AUTH:<IK>:<CK>:<RES>` or `CTRL-RSP-SIM-<id>:UMTS-AUTS:<AUTS>`. Any
//! other answer makes the peer send EAP-AKA' Authentication-Reject, which is what a USIM does when
//! MAC-A is wrong (TS 33.102 §6.3.3). The agent keeps the USIM's SEQ array in a state file that is
//! written (and fsynced) before each answer leaves the process.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use capillary_aka::vector::{Usim, UsimConfig, UsimOutcome};
use capillary_secrets::{Autn, Opc, Rand, Secret, K};

/// One request of the supplicant.
#[derive(Debug, PartialEq, Eq)]
pub struct SimRequest {
    /// The request id to echo in the answer.
    pub id: String,
    /// RAND.
    pub rand: Rand,
    /// AUTN.
    pub autn: Autn,
}

/// Parses a monitor event; returns `None` for events that are not a UMTS-AUTH request.
pub fn parse_event(event: &str) -> Option<SimRequest> {
    // Events carry a "<level>" prefix.
    let body = match event.strip_prefix('<') {
        Some(rest) => rest.split_once('>')?.1,
        None => event,
    };
    let rest = body.strip_prefix("CTRL-REQ-SIM-")?;
    let (id, rest) = rest.split_once(':')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = rest.strip_prefix("UMTS-AUTH:")?;
    let (rand, rest) = rest.split_once(':')?;
    let autn = rest.get(..32)?;
    Some(SimRequest {
        id: id.to_owned(),
        rand: Rand::from_hex(rand)?,
        autn: Autn::from_hex(autn)?,
    })
}

/// The control-interface command answering `req` with the USIM's `outcome`.
pub fn answer(req: &SimRequest, outcome: Result<UsimOutcome, capillary_aka::AkaError>) -> String {
    match outcome {
        Ok(UsimOutcome::Success { res, ck, ik }) => format!(
            "CTRL-RSP-SIM-{}:UMTS-AUTH:{}:{}:{}",
            req.id,
            hex::encode(ik.expose()),
            hex::encode(ck.expose()),
            hex::encode(res.expose())
        ),
        Ok(UsimOutcome::SyncFailure { auts }) => {
            format!("CTRL-RSP-SIM-{}:UMTS-AUTS:{}", req.id, auts.to_hex())
        }
        // Not a UMTS-AUTH/UMTS-AUTS answer: the supplicant sends Authentication-Reject.
        Err(_) => format!("CTRL-RSP-SIM-{}:UMTS-FAIL", req.id),
    }
}

/// What the agent needs to run.
#[derive(Debug)]
pub struct AgentConfig {
    /// Path of the supplicant's control socket (`<ctrl_interface dir>/<ifname>`).
    pub ctrl: PathBuf,
    /// Subscriber key.
    pub k: K,
    /// OPc.
    pub opc: Opc,
    /// USIM parameters.
    pub usim: UsimConfig,
    /// Initial SEQ array when there is no state file yet: every lane starts at this SEQ.
    pub initial_seq: u64,
    /// File that keeps the SEQ array across runs.
    pub state: Option<PathBuf>,
    /// How long to wait for the control socket to appear.
    pub wait: Duration,
}

fn load_state(cfg: &AgentConfig) -> Result<Usim> {
    let lanes = 1usize << cfg.usim.ind_len;
    let seqs: Vec<u64> = match cfg.state.as_deref().filter(|p| p.exists()) {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading USIM state {}", path.display()))?;
            text.split_whitespace()
                .map(|s| {
                    s.parse::<u64>()
                        .context("USIM state file holds one SEQ per line")
                })
                .collect::<Result<_>>()?
        }
        None => vec![cfg.initial_seq; lanes],
    };
    Usim::restore(&cfg.k, &cfg.opc, cfg.usim.clone(), &seqs)
        .map_err(|e| anyhow::anyhow!("USIM state does not fit the IND length: {e}"))
}

fn save_state(path: &Path, usim: &Usim) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    for seq in usim.seq_array() {
        writeln!(f, "{seq}")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Attaches to the supplicant and answers its SIM requests until the supplicant goes away.
pub fn run(cfg: AgentConfig) -> Result<()> {
    let mut usim = load_state(&cfg)?;
    let deadline = Instant::now() + cfg.wait;
    while !cfg.ctrl.exists() {
        if Instant::now() > deadline {
            bail!("control socket {} did not appear", cfg.ctrl.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let dir = crate::private_temp_dir("capillary-usim")?;
    let local = dir.join("agent.sock");
    let sock = UnixDatagram::bind(&local).context("binding the agent's socket")?;
    let result = (|| -> Result<()> {
        sock.connect(&cfg.ctrl)
            .with_context(|| format!("connecting to {}", cfg.ctrl.display()))?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        sock.send(b"ATTACH")?;
        let mut buf = vec![0u8; 4096];
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if let Some(req) = parse_event(&text) {
                        let outcome = usim.authenticate(&req.rand, &req.autn);
                        if let Some(path) = &cfg.state {
                            save_state(path, &usim)?;
                        }
                        let kind = match &outcome {
                            Ok(UsimOutcome::Success { .. }) => "success",
                            Ok(UsimOutcome::SyncFailure { .. }) => "sync-failure",
                            Err(_) => "mac-failure",
                        };
                        tracing::info!(id = %req.id, outcome = kind, "USIM request answered");
                        let reply = answer(&req, outcome);
                        sock.send(reply.as_bytes())?;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if !cfg.ctrl.exists() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    })();
    let _ = std::fs::remove_file(&local);
    let _ = std::fs::remove_dir(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supplicant_request() {
        let ev = "<3>CTRL-REQ-SIM-0:UMTS-AUTH:81e92b6c0ee0e12ebceba8d92a99dfa5:bb52e91c747ac3ab2a5c23d15ee351d5 needed for SSID test";
        let req = parse_event(ev).unwrap();
        assert_eq!(req.id, "0");
        assert_eq!(req.rand.to_hex(), "81e92b6c0ee0e12ebceba8d92a99dfa5");
        assert_eq!(req.autn.to_hex(), "bb52e91c747ac3ab2a5c23d15ee351d5");
    }

    #[test]
    fn ignores_other_events_and_garbage() {
        assert!(parse_event("<3>CTRL-EVENT-EAP-STARTED EAP authentication started").is_none());
        assert!(parse_event("<3>CTRL-REQ-SIM-0:GSM-AUTH:00").is_none());
        assert!(parse_event("<3>CTRL-REQ-SIM-x:UMTS-AUTH:00:00").is_none());
        assert!(
            parse_event("<3>CTRL-REQ-SIM-1:UMTS-AUTH:zz:bb52e91c747ac3ab2a5c23d15ee351d5")
                .is_none()
        );
        assert!(parse_event("<3").is_none());
        assert!(parse_event("").is_none());
    }

    #[test]
    fn answers_in_supplicant_syntax() {
        // TS 35.208 set 19 (RFC 9048 Appendix D case 1), SQN 16f3b3f70fc2; the USIM has
        // accepted the SEQ just below it in every lane, so the SQN is fresh and within Δ.
        let k = K::from_hex("5122250214c33e723a5dd523fc145fc0").unwrap();
        let opc = Opc::from_hex("981d464c7c52eb6e5036234984ad0bcf").unwrap();
        let seq = (0x16f3b3f70fc2u64 >> 5) - 1;
        let mut usim = Usim::restore(&k, &opc, UsimConfig::default(), &[seq; 32]).unwrap();
        let req = parse_event(
            "<3>CTRL-REQ-SIM-7:UMTS-AUTH:81e92b6c0ee0e12ebceba8d92a99dfa5:bb52e91c747ac3ab2a5c23d15ee351d5 needed",
        )
        .unwrap();
        let out = usim.authenticate(&req.rand, &req.autn);
        assert_eq!(
            answer(&req, out),
            "CTRL-RSP-SIM-7:UMTS-AUTH:9744871ad32bf9bbd1dd5ce54e3e2e5a:5349fbe098649f948f5d2e973a81c00f:28d7b0f2a2ec3de5"
        );
        // The same challenge again is a replay: the USIM answers with AUTS.
        let again = usim.authenticate(&req.rand, &req.autn);
        assert!(answer(&req, again).starts_with("CTRL-RSP-SIM-7:UMTS-AUTS:"));
    }
}
