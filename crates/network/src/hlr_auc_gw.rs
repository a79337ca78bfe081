//! The hlr_auc_gw vector interface of hostapd (`eap_sim_db=unix:<path>`): a text protocol over
//! a Unix datagram socket through which an external EAP server asks Capillary's AuC for
//! authentication vectors, so that hostapd can authenticate against Capillary's store.
//!
//! Requests and answers (one datagram each, IMSI in ASCII, values in hex):
//! - `AKA-REQ-AUTH <IMSI>` → `AKA-RESP-AUTH <IMSI> <RAND> <AUTN> <IK> <CK> <RES>`, or
//!   `AKA-RESP-AUTH <IMSI> FAILURE`;
//! - `AKA-AUTS <IMSI> <AUTS> <RAND>` → no answer (the next `AKA-REQ-AUTH` gets a fresh SQN);
//! - `SIM-REQ-AUTH <IMSI> [max]` → `SIM-RESP-AUTH <IMSI> FAILURE` (no GSM triplets here).
//!
//! The vectors carry CK and IK in clear over this socket: that is the protocol. The socket file
//! is created owner-only; put it in a private directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use capillary_secrets::{Auts, Imsi, Rand, Secret};
use tokio::net::UnixDatagram;
use tracing::{debug, info, warn};

use crate::auc::{Auc, AucError};

/// One parsed request. Parsing is separate from acting on it (and never panics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `AKA-REQ-AUTH <IMSI>`.
    AkaAuth {
        /// Subscriber.
        imsi: Imsi,
    },
    /// `AKA-AUTS <IMSI> <AUTS> <RAND>`.
    AkaAuts {
        /// Subscriber.
        imsi: Imsi,
        /// AUTS from the peer.
        auts: Auts,
        /// RAND of the failed challenge.
        rand: Rand,
    },
    /// `SIM-REQ-AUTH <IMSI> ...` (GSM triplets, refused).
    SimAuth {
        /// The IMSI text as received.
        imsi: String,
    },
}

/// Why a datagram is not a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not UTF-8 text.
    #[error("not text")]
    NotText,
    /// An unknown command word.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A field is missing or malformed.
    #[error("bad {0}")]
    BadField(&'static str),
}

/// Parses one datagram.
pub fn parse(datagram: &[u8]) -> Result<Request, ParseError> {
    let text = std::str::from_utf8(datagram).map_err(|_| ParseError::NotText)?;
    let mut words = text.trim_end_matches(['\0', '\n', '\r']).split(' ');
    let cmd = words.next().unwrap_or_default();
    let imsi_text = words.next().ok_or(ParseError::BadField("IMSI"))?;
    match cmd {
        "AKA-REQ-AUTH" => {
            let imsi = Imsi::new(imsi_text).map_err(|_| ParseError::BadField("IMSI"))?;
            Ok(Request::AkaAuth { imsi })
        }
        "AKA-AUTS" => {
            let imsi = Imsi::new(imsi_text).map_err(|_| ParseError::BadField("IMSI"))?;
            let auts = words
                .next()
                .and_then(Auts::from_hex)
                .ok_or(ParseError::BadField("AUTS"))?;
            let rand = words
                .next()
                .and_then(Rand::from_hex)
                .ok_or(ParseError::BadField("RAND"))?;
            Ok(Request::AkaAuts { imsi, auts, rand })
        }
        "SIM-REQ-AUTH" => Ok(Request::SimAuth {
            imsi: imsi_text.chars().take(20).collect(),
        }),
        other => Err(ParseError::UnknownCommand(other.chars().take(32).collect())),
    }
}

/// Serves the interface on `path` until the task is aborted.
pub async fn serve(path: PathBuf, auc: Auc) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let sock = bind(&path)?;
    info!(socket = %path.display(), "hlr_auc_gw vector interface listening");
    let sock = Arc::new(sock);
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 1000];
        loop {
            let (n, from) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "hlr_auc_gw receive failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Some(to) = from.as_pathname().map(Path::to_path_buf) else {
                debug!("hlr_auc_gw request from an unnamed socket ignored");
                continue;
            };
            let request = match parse(&buf[..n]) {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "hlr_auc_gw datagram ignored");
                    continue;
                }
            };
            let sock = sock.clone();
            let auc = auc.clone();
            tokio::spawn(async move {
                if let Some(reply) = answer(&auc, request).await {
                    if let Err(e) = sock.send_to(reply.as_bytes(), &to).await {
                        warn!(error = %e, "hlr_auc_gw send failed");
                    }
                }
            });
        }
    }))
}

fn bind(path: &Path) -> std::io::Result<UnixDatagram> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let sock = UnixDatagram::bind(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(sock)
}

/// Acts on one request; `None` when the protocol has no answer.
async fn answer(auc: &Auc, request: Request) -> Option<zeroize::Zeroizing<String>> {
    match request {
        Request::AkaAuth { imsi } => Some(zeroize::Zeroizing::new(match auc.vector(&imsi).await {
            Ok(v) => {
                debug!(%imsi, "hlr_auc_gw vector issued");
                format!(
                    "AKA-RESP-AUTH {imsi} {} {} {} {} {}",
                    v.rand.to_hex(),
                    v.autn.to_hex(),
                    hex::encode(v.ik.expose()),
                    hex::encode(v.ck.expose()),
                    hex::encode(v.xres.expose()),
                )
            }
            Err(e) => {
                match &e {
                    AucError::UnknownSubscriber => info!(%imsi, "unknown subscriber"),
                    AucError::Barred => info!(%imsi, "subscriber barred"),
                    other => warn!(%imsi, error = %other, "no authentication vector"),
                }
                format!("AKA-RESP-AUTH {imsi} FAILURE")
            }
        })),
        Request::AkaAuts { imsi, auts, rand } => {
            match auc.resync(&imsi, &rand, &auts).await {
                Ok(seq_ms) => info!(%imsi, seq_ms, "SQN resynchronised from AUTS (hlr_auc_gw)"),
                Err(e) => info!(%imsi, error = %e, "AUTS refused (hlr_auc_gw)"),
            }
            None
        }
        Request::SimAuth { imsi } => {
            debug!("hlr_auc_gw: GSM triplets are not supported");
            Some(zeroize::Zeroizing::new(format!(
                "SIM-RESP-AUTH {imsi} FAILURE"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_commands() {
        assert_eq!(
            parse(b"AKA-REQ-AUTH 001010000000001").unwrap(),
            Request::AkaAuth {
                imsi: Imsi::new("001010000000001").unwrap()
            }
        );
        let r = parse(
            b"AKA-AUTS 001010000000001 000102030405060708090a0b0c0d 23553cbe9637a89d218ae64dae47bf35",
        )
        .unwrap();
        assert!(matches!(r, Request::AkaAuts { .. }));
        assert!(matches!(
            parse(b"SIM-REQ-AUTH 001010000000001 3").unwrap(),
            Request::SimAuth { .. }
        ));
    }

    #[test]
    fn bad_datagrams_are_typed_errors() {
        assert_eq!(parse(b"\xff\xfe"), Err(ParseError::NotText));
        assert_eq!(parse(b"AKA-REQ-AUTH"), Err(ParseError::BadField("IMSI")));
        assert_eq!(
            parse(b"AKA-REQ-AUTH 12ab"),
            Err(ParseError::BadField("IMSI"))
        );
        assert_eq!(
            parse(b"AKA-AUTS 001010000000001 00"),
            Err(ParseError::BadField("AUTS"))
        );
        assert!(matches!(
            parse(b"HELLO x"),
            Err(ParseError::UnknownCommand(_))
        ));
        assert!(parse(b"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }
    }
}
