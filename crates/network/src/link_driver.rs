//! The gateway-link driver of `capillary core`: one UDP socket, the sans-IO
//! [`crate::link::LinkEndpoint`], the AuC and the store. Storage requests of a whole batch are
//! answered with one store round trip each (vectors, authorization), as the endpoint asks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use capillary_eap::server::RejectReason;
use capillary_secrets::Imsi;
use capillary_store::{AuditRecord, SubscriberStore};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::auc::Auc;
use crate::link::{LinkConfig, LinkEndpoint, LinkEvent, LinkStats};
use crate::unix_now;

/// An uplink delivered to the MTC server side.
#[derive(Debug, Clone)]
pub struct Uplink {
    /// The device.
    pub device: Imsi,
    /// Its payload, opaque.
    pub payload: Vec<u8>,
}

enum Command {
    Downlink(Imsi, Vec<u8>, oneshot::Sender<Result<(), String>>),
    ExportSecrets(oneshot::Sender<Vec<Vec<u8>>>),
}

/// Handle on the running gateway-link endpoint.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    /// The bound address gateways talk to.
    pub local_addr: SocketAddr,
    uplinks: broadcast::Sender<Uplink>,
    commands: mpsc::Sender<Command>,
    stats: Arc<Mutex<LinkStats>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl LinkHandle {
    /// Subscribes to the uplinks (northbound delivery).
    pub fn uplinks(&self) -> broadcast::Receiver<Uplink> {
        self.uplinks.subscribe()
    }

    /// Queues a downlink for an authenticated device.
    pub async fn downlink(&self, device: Imsi, payload: Vec<u8>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Downlink(device, payload, tx))
            .await
            .map_err(|_| "link endpoint stopped".to_string())?;
        rx.await.map_err(|_| "link endpoint stopped".to_string())?
    }

    /// Every device key the endpoint holds: for the key-isolation check (R3) only.
    pub async fn dangerous_export_secrets(&self) -> Vec<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::ExportSecrets(tx))
            .await
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Binds `listen` and runs the endpoint in a task.
pub async fn spawn(
    listen: SocketAddr,
    cfg: LinkConfig,
    auc: Auc,
) -> std::io::Result<(LinkHandle, tokio::task::JoinHandle<()>)> {
    let sock = UdpSocket::bind(listen).await?;
    // A wave of gateway batches arrives as a burst: a large receive buffer keeps it (the
    // kernel caps the size at net.core.rmem_max).
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 << 20);
    let local_addr = sock.local_addr()?;
    let (uplinks, _) = broadcast::channel(4096);
    let (commands, rx) = mpsc::channel(1024);
    let stats = Arc::new(Mutex::new(LinkStats::default()));
    let handle = LinkHandle {
        local_addr,
        uplinks: uplinks.clone(),
        commands,
        stats: stats.clone(),
    };
    let seed = rand::random::<u64>();
    let endpoint = LinkEndpoint::new(cfg, seed);
    info!(%local_addr, "gateway link listening");
    let task = tokio::spawn(drive(endpoint, sock, auc, uplinks, rx, stats));
    Ok((handle, task))
}

async fn drive(
    mut ep: LinkEndpoint,
    sock: UdpSocket,
    auc: Auc,
    uplinks: broadcast::Sender<Uplink>,
    mut commands: mpsc::Receiver<Command>,
    stats: Arc<Mutex<LinkStats>>,
) {
    let store: Arc<dyn SubscriberStore> = auc.store().clone();
    let mut buf = vec![0u8; 70_000];
    loop {
        // Events first: they may produce datagrams; then send everything queued. The audit
        // records of one round are written together (one store round trip, not one fsync'd
        // transaction per device: an attach wave of N devices records N successes), and
        // before the datagrams that report those outcomes leave.
        let mut audits = Vec::new();
        while let Some(ev) = ep.poll_event() {
            match ev {
                LinkEvent::Audit(a) => audits.push(AuditRecord {
                    unix_time: unix_now(),
                    event: a.event,
                    subject: a.subject,
                    gateway: a.gateway,
                    detail: a.detail,
                }),
                ev => handle_event(&mut ep, ev, &auc, store.as_ref(), &uplinks).await,
            }
        }
        if !audits.is_empty() {
            let n = audits.len();
            if let Err(e) = store.audit_batch(audits).await {
                warn!(error = %e, records = n, "audit records not stored");
            }
        }
        while let Some((to, bytes)) = ep.poll_transmit() {
            if let Err(e) = sock.send_to(&bytes, to).await {
                warn!(%to, error = %e, "gateway link send failed");
            }
        }
        if let Ok(mut s) = stats.lock() {
            *s = ep.stats();
        }
        let wake = ep
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(3600));
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    ep.handle_datagram(Instant::now(), from, &buf[..n]);
                    // Take everything already queued before polling events, so that the
                    // batches of one wave share their store round trips.
                    while let Ok((n, from)) = sock.try_recv_from(&mut buf) {
                        ep.handle_datagram(Instant::now(), from, &buf[..n]);
                    }
                }
                Err(e) => debug!(error = %e, "gateway link receive failed"),
            },
            c = commands.recv() => match c {
                Some(Command::Downlink(device, payload, tx)) => {
                    let r = ep.queue_downlink(Instant::now(), &device, &payload).map_err(|e| e.to_string());
                    let _ = tx.send(r);
                }
                Some(Command::ExportSecrets(tx)) => {
                    let _ = tx.send(ep.dangerous_export_secrets());
                }
                None => {}
            },
            _ = tokio::time::sleep_until(wake) => ep.handle_timeout(Instant::now()),
        }
    }
}

async fn handle_event(
    ep: &mut LinkEndpoint,
    ev: LinkEvent,
    auc: &Auc,
    store: &dyn SubscriberStore,
    uplinks: &broadcast::Sender<Uplink>,
) {
    match ev {
        LinkEvent::NeedVectors { ticket, requests } => {
            let answers = match auc.vectors(&requests).await {
                Ok(results) => results
                    .into_iter()
                    .map(|r| r.map_err(|e| e.reject_reason()))
                    .collect(),
                Err(e) => {
                    warn!(error = %e, "vector batch failed");
                    requests
                        .iter()
                        .map(|_| Err(RejectReason::StoreFailure))
                        .collect()
                }
            };
            if let Err(e) = ep.provide_vectors(Instant::now(), ticket, answers) {
                warn!(error = %e, "vectors not taken");
            }
        }
        LinkEvent::NeedResync {
            ticket,
            imsi,
            rand,
            auts,
        } => {
            let answer = match auc.resync(&imsi, &rand, &auts).await {
                Ok(seq_ms) => {
                    info!(%imsi, seq_ms, "SQN resynchronised from AUTS (gateway link)");
                    auc.vector(&imsi).await.map_err(|e| e.reject_reason())
                }
                Err(e) => Err(e.reject_reason()),
            };
            if let Err(e) = ep.provide_vectors(Instant::now(), ticket, vec![answer]) {
                warn!(error = %e, "resync vector not taken");
            }
        }
        LinkEvent::Authorize { ticket, pairs } => match store.authorize_batch(&pairs).await {
            Ok(answers) => {
                if let Err(e) = ep.provide_authorization(Instant::now(), ticket, answers) {
                    warn!(error = %e, "authorization not taken");
                }
            }
            Err(e) => warn!(error = %e, "authorization batch failed"),
        },
        LinkEvent::PrefetchVectors {
            ticket,
            gateway,
            skip,
            limit,
        } => {
            let vectors = match auc.bound_vectors(&gateway, &skip, limit).await {
                Ok(v) => v,
                Err(e) => {
                    warn!(error = %e, "vector prefetch failed");
                    Vec::new()
                }
            };
            debug!(%gateway, vectors = vectors.len(), "vectors prefetched");
            if let Err(e) = ep.provide_prefetch(Instant::now(), ticket, vectors) {
                warn!(error = %e, "prefetched vectors not taken");
            }
        }
        LinkEvent::Authenticated { imsi, kind, via } => {
            info!(%imsi, kind = %kind, via = ?via.as_ref().map(Imsi::as_str), "authenticated over the gateway link");
        }
        LinkEvent::Failed { imsi, kind, reason } => {
            info!(imsi = ?imsi.as_ref().map(Imsi::as_str), kind = %kind, reason = ?reason, "authentication failed over the gateway link");
        }
        LinkEvent::Uplink { device, payload } => {
            debug!(%device, bytes = payload.len(), "uplink");
            let _ = uplinks.send(Uplink { device, payload });
        }
        other => debug!(event = ?other, "gateway link event"),
    }
}
