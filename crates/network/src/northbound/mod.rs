//! Northbound delivery: how MTC servers get the uplinks of authenticated devices and send
//! them downlinks (docs/PROTOCOL.md: the network side delivers what the gateway link received
//! under OSCORE, RFC 8613, and protects downlinks the same way before they leave).
//!
//! Four independent sinks, each off unless configured in `[northbound]`:
//!
//! * **HTTP API** (`http_listen`): `GET /v1/uplinks` (newline-delimited JSON, streaming or
//!   long-poll), `POST /v1/devices/{imsi}/downlink`, `GET /v1/stats`, `GET /healthz`; optional
//!   bearer token (RFC 6750 §2.1). See [`http`] for the exact semantics.
//! * **Webhook** (`webhook_url`): each uplink POSTed as one JSON object, bounded queue, retries
//!   with exponential backoff, drop and count when the queue is full.
//! * **JSON lines file** (`jsonl_path`): each uplink appended as one line, fsync batched.
//! * **MQTT** (`[northbound.mqtt]`, MQTT 3.1.1): uplinks published to `<prefix>/up/<imsi>` at
//!   QoS 1 with the raw payload; messages on `<prefix>/down/<imsi>` become downlinks.
//!
//! The JSON form of an uplink, one object per line (RFC 8259, RFC 7464-style NDJSON without
//! the record separator):
//!
//! ```json
//! {"seq":7,"device":"001010000000001","payload_b64":"aGVsbG8=","received_unix_ms":1764860000000}
//! ```
//!
//! `seq` counts uplinks from 1 since the process started; `payload_b64` is standard base64
//! with padding (RFC 4648 §4).
//!
//! The module is driver code: it takes a [`broadcast::Receiver`] of [`Uplink`]s and a
//! [`DownlinkSink`], so it runs the same over the real [`LinkHandle`] ([`spawn`]) and over a
//! test double ([`spawn_with`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use capillary_secrets::Imsi;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::link::{LinkError, LinkStats};
use crate::link_driver::{LinkHandle, Uplink};

pub mod http;
mod jsonl;
mod mqtt;
mod webhook;

/// Largest downlink payload accepted northbound, bytes. The gateway link carries up to 1,152
/// bytes of relayed CoAP (docs/PROTOCOL.md §4); 1,024 leaves room for the CoAP and OSCORE
/// overhead (RFC 8613 §6).
pub const MAX_DOWNLINK: usize = 1024;

/// A password or token from the configuration: printed as `..`, zeroized on drop.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// `[northbound]`: every field optional; an absent section turns every sink off.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NorthboundConfig {
    /// Address of the HTTP API, e.g. `127.0.0.1:8080`; off when absent.
    pub http_listen: Option<SocketAddr>,
    /// Bearer token every HTTP request but `GET /healthz` must carry
    /// (`Authorization: Bearer <token>`, RFC 6750 §2.1); none when absent.
    pub http_token: Option<SecretString>,
    /// Concurrent HTTP connections; further connections are closed at once.
    pub http_max_connections: usize,
    /// Uplinks kept in memory for `GET /v1/uplinks?after=SEQ`.
    pub replay_buffer: usize,
    /// `http://host[:port][/path]` each uplink is POSTed to; off when absent. Plain HTTP/1.1
    /// only: put a TLS-terminating proxy on loopback for an `https` endpoint.
    pub webhook_url: Option<String>,
    /// Bearer token sent to the webhook (`Authorization: Bearer <token>`).
    pub webhook_token: Option<SecretString>,
    /// Uplinks waiting for the webhook; when full, new uplinks are dropped and counted.
    pub webhook_queue: usize,
    /// Attempts per uplink (first try included) before it is dropped and counted.
    pub webhook_max_attempts: u32,
    /// Seconds one webhook request may take (connect included).
    pub webhook_timeout_secs: u64,
    /// File each uplink is appended to as one JSON line; off when absent.
    pub jsonl_path: Option<PathBuf>,
    /// Milliseconds between fsyncs of the JSON lines file while uplinks arrive.
    pub jsonl_fsync_ms: u64,
    /// `[northbound.mqtt]`: on when the table is present.
    pub mqtt: Option<MqttConfig>,
}

impl Default for NorthboundConfig {
    fn default() -> Self {
        Self {
            http_listen: None,
            http_token: None,
            http_max_connections: 64,
            replay_buffer: 1024,
            webhook_url: None,
            webhook_token: None,
            webhook_queue: 1024,
            webhook_max_attempts: 5,
            webhook_timeout_secs: 10,
            jsonl_path: None,
            jsonl_fsync_ms: 1000,
            mqtt: None,
        }
    }
}

/// `[northbound.mqtt]` (MQTT 3.1.1, plain TCP).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker as `host:port`. Default `127.0.0.1:1883`.
    pub broker: String,
    /// Client identifier (MQTT 3.1.1 §3.1.3.1). Default `capillary-core`.
    pub client_id: String,
    /// Topic prefix: uplinks go to `<prefix>/up/<imsi>`, downlinks come from
    /// `<prefix>/down/<imsi>`. Default `capillary`.
    pub topic_prefix: String,
    /// Keep-alive, seconds (MQTT 3.1.1 §3.1.2.10). Default 30.
    pub keep_alive_secs: u64,
    /// User name (MQTT 3.1.1 §3.1.3.4).
    pub username: Option<String>,
    /// Password (MQTT 3.1.1 §3.1.3.5); only with `username`.
    pub password: Option<SecretString>,
    /// Publishes waiting for the broker; when full, uplinks are dropped and counted.
    pub queue: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            broker: "127.0.0.1:1883".into(),
            client_id: "capillary-core".into(),
            topic_prefix: "capillary".into(),
            keep_alive_secs: 30,
            username: None,
            password: None,
            queue: 1024,
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> NorthboundError {
    NorthboundError::Invalid {
        field,
        problem: problem.into(),
    }
}

impl NorthboundConfig {
    /// Whether any sink is configured.
    pub fn is_enabled(&self) -> bool {
        self.http_listen.is_some()
            || self.webhook_url.is_some()
            || self.jsonl_path.is_some()
            || self.mqtt.is_some()
    }

    /// Checks every field [`spawn`] would otherwise refuse later.
    pub fn validate(&self) -> Result<(), NorthboundError> {
        if self
            .http_token
            .as_ref()
            .is_some_and(|t| t.expose().is_empty())
        {
            return Err(invalid("northbound.http_token", "empty token"));
        }
        if self.http_max_connections == 0 {
            return Err(invalid(
                "northbound.http_max_connections",
                "must be at least 1",
            ));
        }
        if self.webhook_queue == 0 {
            return Err(invalid("northbound.webhook_queue", "must be at least 1"));
        }
        if self.webhook_max_attempts == 0 {
            return Err(invalid(
                "northbound.webhook_max_attempts",
                "must be at least 1",
            ));
        }
        if self.webhook_timeout_secs == 0 {
            return Err(invalid(
                "northbound.webhook_timeout_secs",
                "must be at least 1",
            ));
        }
        if let Some(url) = &self.webhook_url {
            webhook::WebhookUrl::parse(url)?;
        }
        if let Some(m) = &self.mqtt {
            mqtt::broker_addr(&m.broker)?;
            if m.client_id.is_empty() || m.client_id.len() > 65535 {
                return Err(invalid(
                    "northbound.mqtt.client_id",
                    "1 to 65535 bytes (MQTT 3.1.1 §3.1.3.1)",
                ));
            }
            let p = &m.topic_prefix;
            if p.is_empty() || p.contains(['+', '#', '\0']) || p.ends_with('/') {
                return Err(invalid(
                    "northbound.mqtt.topic_prefix",
                    "must be non-empty, without '+', '#' or a trailing '/' (MQTT 3.1.1 §4.7)",
                ));
            }
            if m.password.is_some() && m.username.is_none() {
                return Err(invalid(
                    "northbound.mqtt.password",
                    "a password needs a username (MQTT 3.1.1 §3.1.2.9)",
                ));
            }
            if m.queue == 0 {
                return Err(invalid("northbound.mqtt.queue", "must be at least 1"));
            }
            if m.keep_alive_secs == 0 || m.keep_alive_secs > 65535 {
                return Err(invalid("northbound.mqtt.keep_alive_secs", "1 to 65535"));
            }
        }
        Ok(())
    }
}

/// Why northbound delivery could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NorthboundError {
    /// A field of `[northbound]` is unusable.
    #[error("{field}: {problem}")]
    Invalid {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The HTTP API could not bind its address.
    #[error("binding the northbound HTTP API {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The JSON lines file could not be opened for appending.
    #[error("opening the northbound JSON lines file {path:?}: {source}")]
    Jsonl {
        /// The configured path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a downlink was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DownlinkError {
    /// No authenticated device with this IMSI (HTTP 404).
    #[error("device is not authenticated")]
    NotAuthenticated,
    /// The payload is larger than the link can carry (HTTP 413).
    #[error("downlink payload too large")]
    TooLarge,
    /// The gateway link is not running (HTTP 503).
    #[error("gateway link stopped")]
    Stopped,
    /// Anything else the link refused (HTTP 500).
    #[error("downlink refused: {0}")]
    Other(String),
}

/// Where downlinks go: the gateway link, or a test double.
#[async_trait::async_trait]
pub trait DownlinkSink: Send + Sync + 'static {
    /// Queues `payload` for `device`; the link protects it with the device's OSCORE context
    /// (RFC 8613 §8.1) before it leaves.
    async fn downlink(&self, device: Imsi, payload: Vec<u8>) -> Result<(), DownlinkError>;
    /// The link's counters for `GET /v1/stats`, when there are any.
    fn link_stats(&self) -> Option<LinkStats>;
}

#[async_trait::async_trait]
impl DownlinkSink for LinkHandle {
    async fn downlink(&self, device: Imsi, payload: Vec<u8>) -> Result<(), DownlinkError> {
        // The link driver reports errors as text: map the LinkError messages back.
        LinkHandle::downlink(self, device, payload)
            .await
            .map_err(|e| {
                if e == LinkError::NotAuthenticated.to_string() {
                    DownlinkError::NotAuthenticated
                } else if e == LinkError::TooLarge.to_string() {
                    DownlinkError::TooLarge
                } else if e == "link endpoint stopped" {
                    DownlinkError::Stopped
                } else {
                    DownlinkError::Other(e)
                }
            })
    }

    fn link_stats(&self) -> Option<LinkStats> {
        Some(self.stats())
    }
}

/// Counters of one sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SinkStats {
    /// Uplinks delivered: written to an HTTP stream, answered 2xx by the webhook, fsynced to
    /// the file, acknowledged by the broker (PUBACK, MQTT 3.1.1 §3.4).
    pub delivered: u64,
    /// Uplinks given up: queue full, retries exhausted, or a reader too slow to keep up.
    pub dropped: u64,
    /// Failed attempts (I/O errors, non-2xx answers, refused requests, lost connections).
    pub errors: u64,
    /// Downlinks this sink queued on the link (HTTP and MQTT only).
    pub downlinks_queued: u64,
    /// Downlinks this sink refused or the link refused (HTTP and MQTT only).
    pub downlinks_refused: u64,
}

/// Counters of every sink, as [`NorthboundHandle::stats`] and `GET /v1/stats` give them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NorthboundStats {
    /// Uplinks taken from the link.
    pub uplinks: u64,
    /// Uplinks the link broadcast but northbound fell too far behind to take.
    pub lagged: u64,
    /// The HTTP API.
    pub http: SinkStats,
    /// The webhook.
    pub webhook: SinkStats,
    /// The JSON lines file.
    pub jsonl: SinkStats,
    /// MQTT.
    pub mqtt: SinkStats,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
    pub downlinks_queued: AtomicU64,
    pub downlinks_refused: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> SinkStats {
        SinkStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            downlinks_queued: self.downlinks_queued.load(Ordering::Relaxed),
            downlinks_refused: self.downlinks_refused.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct AllCounters {
    pub uplinks: AtomicU64,
    pub lagged: AtomicU64,
    pub http: Counters,
    pub webhook: Counters,
    pub jsonl: Counters,
    pub mqtt: Counters,
}

impl AllCounters {
    pub(crate) fn snapshot(&self) -> NorthboundStats {
        NorthboundStats {
            uplinks: self.uplinks.load(Ordering::Relaxed),
            lagged: self.lagged.load(Ordering::Relaxed),
            http: self.http.snapshot(),
            webhook: self.webhook.snapshot(),
            jsonl: self.jsonl.snapshot(),
            mqtt: self.mqtt.snapshot(),
        }
    }
}

/// One uplink as the sinks see it, its JSON line computed once.
#[derive(Debug)]
pub(crate) struct Record {
    pub seq: u64,
    pub device: Imsi,
    pub payload: Vec<u8>,
    /// The JSON object, without the newline.
    pub json: String,
}

#[derive(Serialize)]
struct RecordJson<'a> {
    seq: u64,
    device: &'a str,
    payload_b64: String,
    received_unix_ms: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Record {
    fn new(seq: u64, up: Uplink) -> Self {
        let json = serde_json::to_string(&RecordJson {
            seq,
            device: up.device.as_str(),
            payload_b64: base64::engine::general_purpose::STANDARD.encode(&up.payload),
            received_unix_ms: unix_ms(),
        })
        // Serialising plain strings and integers cannot fail.
        .unwrap_or_default();
        Self {
            seq,
            device: up.device,
            payload: up.payload,
            json,
        }
    }
}

/// Fan-out of the link's uplinks to the sinks, with a replay ring for the HTTP API.
#[derive(Debug)]
pub(crate) struct Hub {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Record>>,
}

#[derive(Debug)]
struct Ring {
    next_seq: u64,
    cap: usize,
    records: VecDeque<Arc<Record>>,
}

/// Capacity of the fan-out channel; a sink further behind than this loses uplinks (counted).
const FANOUT: usize = 4096;

impl Hub {
    fn new(replay: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                next_seq: 1,
                cap: replay,
                records: VecDeque::with_capacity(replay.min(4096)),
            }),
            tx: broadcast::channel(FANOUT).0,
        }
    }

    fn publish(&self, up: Uplink) {
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        let rec = Arc::new(Record::new(ring.next_seq, up));
        ring.next_seq += 1;
        if ring.cap > 0 {
            if ring.records.len() == ring.cap {
                ring.records.pop_front();
            }
            ring.records.push_back(rec.clone());
        }
        // Sent under the lock so that `subscribe_after` sees every record exactly once.
        let _ = self.tx.send(rec);
    }

    /// A live subscription, plus the buffered records with `seq > after` when asked.
    pub(crate) fn subscribe_after(
        &self,
        after: Option<u64>,
    ) -> (Vec<Arc<Record>>, broadcast::Receiver<Arc<Record>>) {
        match self.ring.lock() {
            Ok(ring) => {
                let backlog = match after {
                    Some(a) => ring.records.iter().filter(|r| r.seq > a).cloned().collect(),
                    None => Vec::new(),
                };
                (backlog, self.tx.subscribe())
            }
            Err(_) => (Vec::new(), self.tx.subscribe()),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.tx.subscribe()
    }
}

/// Shared state of the running sinks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub hub: Hub,
    pub counters: AllCounters,
    pub sink: Arc<dyn DownlinkSink>,
    pub shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for dyn DownlinkSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DownlinkSink")
    }
}

/// Resolves when the handle is stopped or dropped.
pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Exponential backoff: `base * 2^attempt`, at most `max`.
pub(crate) fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16)).min(max)
}

/// Handle on running northbound delivery. Dropping it stops every sink too, without waiting
/// for the JSON lines file's last sync; [`NorthboundHandle::stop`] waits.
#[derive(Debug)]
pub struct NorthboundHandle {
    http_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl NorthboundHandle {
    /// The bound address of the HTTP API, when on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Counters so far.
    pub fn stats(&self) -> NorthboundStats {
        self.shared.counters.snapshot()
    }

    /// Stops every sink; waits (at most 5 s) for the JSON lines file to be flushed and synced
    /// and the MQTT session to be closed.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            warn!("northbound delivery did not stop in time");
            for a in aborts {
                a.abort();
            }
        }
    }
}

/// Starts northbound delivery over the gateway link: uplinks from [`LinkHandle::uplinks`],
/// downlinks into [`LinkHandle::downlink`].
pub async fn spawn(
    cfg: NorthboundConfig,
    link: LinkHandle,
) -> Result<NorthboundHandle, NorthboundError> {
    let uplinks = link.uplinks();
    spawn_with(cfg, uplinks, Arc::new(link)).await
}

/// Starts northbound delivery over any source of uplinks and any [`DownlinkSink`].
pub async fn spawn_with(
    cfg: NorthboundConfig,
    mut uplinks: broadcast::Receiver<Uplink>,
    sink: Arc<dyn DownlinkSink>,
) -> Result<NorthboundHandle, NorthboundError> {
    cfg.validate()?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let shared = Arc::new(Shared {
        hub: Hub::new(cfg.replay_buffer),
        counters: AllCounters::default(),
        sink,
        shutdown,
    });
    let mut tasks = Vec::new();
    let mut http_addr = None;

    // Everything that can fail first, so that a refused start leaves nothing running.
    let listener = match cfg.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| NorthboundError::Bind { addr, source })?,
        ),
        None => None,
    };
    let file = match &cfg.jsonl_path {
        Some(path) => Some(
            jsonl::open(path)
                .await
                .map_err(|source| NorthboundError::Jsonl {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => None,
    };

    if let Some(listener) = listener {
        http_addr = listener.local_addr().ok();
        let api = http::Api::new(&cfg, shared.clone());
        tasks.push(tokio::spawn(api.serve(listener)));
    }
    if let Some(file) = file {
        let rx = shared.hub.subscribe();
        let every = Duration::from_millis(cfg.jsonl_fsync_ms);
        tasks.push(tokio::spawn(jsonl::run(file, rx, every, shared.clone())));
    }
    if let Some(url) = &cfg.webhook_url {
        let wh = webhook::Webhook::new(&cfg, url)?;
        tasks.extend(wh.spawn(shared.clone()));
    }
    if let Some(m) = &cfg.mqtt {
        tasks.extend(mqtt::spawn(m, shared.clone())?);
    }

    let hub_shared = shared.clone();
    tasks.push(tokio::spawn(async move {
        let s = &hub_shared;
        let stop = stopped(s.shutdown.clone());
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                r = uplinks.recv() => match r {
                    Ok(up) => {
                        bump(&s.counters.uplinks, 1);
                        s.hub.publish(up);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(lost = n, "northbound fell behind the gateway link");
                        bump(&s.counters.lagged, n);
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        debug!("gateway link closed its uplinks");
                        break;
                    }
                },
            }
        }
    }));

    Ok(NorthboundHandle {
        http_addr,
        shared,
        shutdown: shutdown_tx,
        tasks,
    })
}
