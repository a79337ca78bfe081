//! JSON lines file: each uplink appended as one line; `fsync` (`File::sync_data`) at most
//! every `jsonl_fsync_ms` while uplinks arrive, and on [`super::NorthboundHandle::stop`].
//! An uplink counts as delivered once the sync that covers it succeeded.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::fs::File;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::broadcast;
use tracing::warn;

use super::{bump, stopped, Record, Shared};

/// Opens `path` for appending, creating it (mode 0640 on Unix) when absent.
pub(crate) async fn open(path: &Path) -> std::io::Result<File> {
    let mut o = tokio::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    o.mode(0o640);
    o.open(path).await
}

async fn sync(w: &mut BufWriter<File>, pending: &mut u64, shared: &Shared) {
    let c = &shared.counters.jsonl;
    let r = match w.flush().await {
        Ok(()) => w.get_ref().sync_data().await,
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => bump(&c.delivered, *pending),
        Err(e) => {
            warn!(error = %e, "northbound JSON lines file not synced");
            bump(&c.errors, 1);
            bump(&c.dropped, *pending);
        }
    }
    *pending = 0;
}

pub(crate) async fn run(
    file: File,
    mut rx: broadcast::Receiver<Arc<Record>>,
    every: Duration,
    shared: Arc<Shared>,
) {
    let c = &shared.counters.jsonl;
    let mut w = BufWriter::new(file);
    let mut pending = 0u64;
    let mut sync_at: Option<tokio::time::Instant> = None;
    let stop = stopped(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = async {
                match sync_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                sync(&mut w, &mut pending, &shared).await;
                sync_at = None;
            }
            r = rx.recv() => match r {
                Ok(rec) => {
                    let mut line = Vec::with_capacity(rec.json.len() + 1);
                    line.extend_from_slice(rec.json.as_bytes());
                    line.push(b'\n');
                    if let Err(e) = w.write_all(&line).await {
                        warn!(error = %e, "northbound JSON lines file not written");
                        bump(&c.errors, 1);
                        bump(&c.dropped, 1);
                        continue;
                    }
                    pending += 1;
                    if every.is_zero() {
                        sync(&mut w, &mut pending, &shared).await;
                    } else if sync_at.is_none() {
                        sync_at = Some(tokio::time::Instant::now() + every);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => bump(&c.dropped, n),
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    // Whatever was taken before the stop is written out.
    while let Ok(rec) = rx.try_recv() {
        let mut line = rec.json.clone().into_bytes();
        line.push(b'\n');
        if w.write_all(&line).await.is_err() {
            bump(&c.dropped, 1);
            continue;
        }
        pending += 1;
    }
    sync(&mut w, &mut pending, &shared).await;
}
