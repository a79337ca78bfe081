//! The northbound HTTP/1.1 API (RFC 9110, RFC 9112).
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /healthz` | `200 ok` (no token needed) |
//! | `GET /v1/uplinks` | `200`, `application/x-ndjson`: one JSON object per uplink, per line |
//! | `POST /v1/devices/{imsi}/downlink` | body = raw payload, at most [`MAX_DOWNLINK`] bytes: `202` queued, `400` bad IMSI, `404` device not authenticated, `413` too large, `503` link stopped |
//! | `GET /v1/stats` | `200`, `{"link": {...} or null, "northbound": {...}}` |
//!
//! Every request but `/healthz` carries `Authorization: Bearer <http_token>` when a token is
//! configured (RFC 6750 §2.1), else gets `401` with `WWW-Authenticate: Bearer` (RFC 6750 §3).
//! Tokens are compared as SHA-256 digests in constant time. Error bodies are
//! `{"error": "<text>"}`.
//!
//! # `GET /v1/uplinks`
//!
//! Query parameters, all optional:
//!
//! * `after=SEQ`: first replay the uplinks still held in memory (`replay_buffer`, default
//!   1024) whose `seq` is greater than `SEQ`, then continue live. Without it only uplinks that
//!   arrive after the request are sent.
//! * `wait=SECS` (long-poll, at most 3600): the response ends as soon as at least one uplink
//!   was written and no further one is ready, or after `SECS` seconds with an empty body. A
//!   client loops on `GET /v1/uplinks?wait=30&after=<last seq seen>` and loses nothing that
//!   is still in the replay buffer.
//! * `limit=N`: the response ends after `N` uplinks.
//!
//! Without `wait` the response is an endless stream (chunked transfer coding, RFC 9112 §7.1)
//! that writes each uplink as it arrives. A reader too slow to keep up with the fan-out (4096
//! uplinks behind) has its response ended; it can resume with `after=`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use capillary_secrets::Imsi;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, Semaphore};
use tracing::{debug, info, warn};

use super::{bump, stopped, DownlinkError, NorthboundConfig, Record, Shared, MAX_DOWNLINK};
use crate::link::LinkStats;

/// Longest `wait` accepted, seconds.
pub const MAX_WAIT_SECS: u64 = 3600;

type ResBody = BoxBody<Bytes, Infallible>;

#[derive(Debug)]
struct Inner {
    token: Option<[u8; 32]>,
    max_connections: usize,
    shared: Arc<Shared>,
}

/// The HTTP API over the shared sink state.
#[derive(Debug, Clone)]
pub(crate) struct Api(Arc<Inner>);

/// A response body fed by a channel: the NDJSON stream of `GET /v1/uplinks`.
#[derive(Debug)]
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn error(status: StatusCode, text: &str) -> Response<ResBody> {
    let body = serde_json::json!({ "error": text }).to_string();
    full(status, "application/json", body)
}

/// `GET /v1/uplinks` query.
#[derive(Debug, Default, PartialEq, Eq)]
struct UplinkQuery {
    after: Option<u64>,
    wait: Option<u64>,
    limit: Option<u64>,
}

fn parse_query(q: Option<&str>) -> Result<UplinkQuery, String> {
    let mut out = UplinkQuery::default();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: u64 = v
            .parse()
            .map_err(|_| format!("{k}: expected a non-negative integer"))?;
        match k {
            "after" => out.after = Some(n),
            "wait" if n <= MAX_WAIT_SECS => out.wait = Some(n),
            "wait" => return Err(format!("wait: at most {MAX_WAIT_SECS} seconds")),
            "limit" if n > 0 => out.limit = Some(n),
            "limit" => return Err("limit: at least 1".into()),
            _ => return Err(format!("unknown parameter {k:?}")),
        }
    }
    Ok(out)
}

/// The link counters as JSON (the map keys are the variant names).
fn link_json(s: &LinkStats) -> serde_json::Value {
    let failures: serde_json::Map<String, serde_json::Value> = s
        .failures
        .iter()
        .map(|(k, v)| (format!("{k:?}"), (*v).into()))
        .collect();
    let dropped: serde_json::Map<String, serde_json::Value> = s
        .dropped
        .iter()
        .map(|(k, v)| (format!("{k:?}"), (*v).into()))
        .collect();
    serde_json::json!({
        "batches_in": s.batches_in,
        "batches_out": s.batches_out,
        "entries_in": s.entries_in,
        "entries_out": s.entries_out,
        "round_trips": s.round_trips,
        "store_round_trips": s.store_round_trips,
        "authenticated": s.authenticated,
        "duplicates": s.duplicates,
        "failures": failures,
        "dropped": dropped,
    })
}

impl Api {
    pub(crate) fn new(cfg: &NorthboundConfig, shared: Arc<Shared>) -> Self {
        Self(Arc::new(Inner {
            token: cfg
                .http_token
                .as_ref()
                .map(|t| Sha256::digest(t.expose().as_bytes()).into()),
            max_connections: cfg.http_max_connections,
            shared,
        }))
    }

    /// Accepts connections until the handle stops.
    pub(crate) async fn serve(self, listener: TcpListener) {
        let limit = Arc::new(Semaphore::new(self.0.max_connections));
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "northbound HTTP API listening");
        }
        let stop = stopped(self.0.shared.shutdown.clone());
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut stop => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "northbound HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                debug!(%peer, "northbound HTTP connection limit reached");
                continue;
            };
            let api = self.clone();
            // A connection (and any stream on it) ends when the API stops.
            let stop = stopped(self.0.shared.shutdown.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        debug!(%peer, error = %e, "northbound HTTP connection ended");
                    },
                    _ = stop => {}
                }
                drop(permit);
            });
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(want) = &self.0.token else {
            return true;
        };
        let Some(v) = req.headers().get(header::AUTHORIZATION) else {
            return false;
        };
        let v = v.as_bytes();
        // RFC 9110 §11.1: the scheme name is case-insensitive.
        if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        let got: [u8; 32] = Sha256::digest(&v[7..]).into();
        bool::from(got.ct_eq(want))
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ResBody> {
        let path = req.uri().path().to_owned();
        if path == "/healthz" {
            return if req.method() == Method::GET {
                full(StatusCode::OK, "text/plain", "ok\n")
            } else {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            };
        }
        let c = &self.0.shared.counters.http;
        if !self.authorized(&req) {
            bump(&c.errors, 1);
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"capillary\""),
            );
            return r;
        }
        let segments: Vec<&str> = path.split('/').collect();
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, ["", "v1", "uplinks"]) => match parse_query(req.uri().query()) {
                Ok(q) => self.uplinks(q),
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
            },
            (Method::GET, ["", "v1", "stats"]) => {
                let s = &self.0.shared;
                let body = serde_json::json!({
                    "link": s.sink.link_stats().as_ref().map(link_json),
                    "northbound": s.counters.snapshot(),
                });
                full(StatusCode::OK, "application/json", body.to_string())
            }
            (Method::POST, ["", "v1", "devices", imsi, "downlink"]) => {
                let imsi = (*imsi).to_owned();
                self.downlink(&imsi, req).await
            }
            (
                _,
                ["", "v1", "uplinks"] | ["", "v1", "stats"] | ["", "v1", "devices", _, "downlink"],
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => error(StatusCode::NOT_FOUND, "no such resource"),
        }
    }

    async fn downlink(&self, imsi: &str, req: Request<Incoming>) -> Response<ResBody> {
        let c = &self.0.shared.counters.http;
        let refuse = |status, text: &str| {
            bump(&c.downlinks_refused, 1);
            error(status, text)
        };
        let device = match Imsi::new(imsi) {
            Ok(d) => d,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_DOWNLINK as u64) {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload larger than 1024 bytes",
            );
        }
        let payload = match Limited::new(req.into_body(), MAX_DOWNLINK).collect().await {
            Ok(b) => b.to_bytes().to_vec(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload larger than 1024 bytes",
                )
            }
            Err(_) => return refuse(StatusCode::BAD_REQUEST, "request body not read"),
        };
        match self.0.shared.sink.downlink(device, payload).await {
            Ok(()) => {
                bump(&c.downlinks_queued, 1);
                full(
                    StatusCode::ACCEPTED,
                    "application/json",
                    "{\"queued\":true}",
                )
            }
            Err(DownlinkError::NotAuthenticated) => {
                refuse(StatusCode::NOT_FOUND, "device is not authenticated")
            }
            Err(DownlinkError::TooLarge) => refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large for the link",
            ),
            Err(DownlinkError::Stopped) => {
                refuse(StatusCode::SERVICE_UNAVAILABLE, "gateway link stopped")
            }
            Err(e) => {
                warn!(error = %e, "downlink refused by the link");
                refuse(StatusCode::INTERNAL_SERVER_ERROR, "downlink refused")
            }
        }
    }

    fn uplinks(&self, q: UplinkQuery) -> Response<ResBody> {
        let shared = self.0.shared.clone();
        let (backlog, rx) = shared.hub.subscribe_after(q.after);
        let (tx, body) = mpsc::channel(32);
        tokio::spawn(stream_uplinks(shared, q, backlog, rx, tx));
        let mut r = Response::new(ChannelBody(body).boxed());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

fn line(rec: &Record) -> Bytes {
    let mut v = Vec::with_capacity(rec.json.len() + 1);
    v.extend_from_slice(rec.json.as_bytes());
    v.push(b'\n');
    Bytes::from(v)
}

/// Feeds one `GET /v1/uplinks` response; see the module documentation for when it ends.
async fn stream_uplinks(
    shared: Arc<Shared>,
    q: UplinkQuery,
    backlog: Vec<Arc<Record>>,
    mut rx: broadcast::Receiver<Arc<Record>>,
    tx: mpsc::Sender<Bytes>,
) {
    let c = &shared.counters.http;
    let mut sent: u64 = 0;
    let done = |sent: u64| q.limit.is_some_and(|l| sent >= l);
    for rec in backlog {
        if tx.send(line(&rec)).await.is_err() {
            return;
        }
        bump(&c.delivered, 1);
        sent += 1;
        if done(sent) {
            return;
        }
    }
    if q.wait.is_some() && sent > 0 {
        return;
    }
    let deadline = q
        .wait
        .map(|w| tokio::time::Instant::now() + Duration::from_secs(w));
    let stop = stopped(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        let r = tokio::select! {
            _ = &mut stop => return,
            _ = tx.closed() => return,
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } else { std::future::pending().await } } => return,
            r = rx.recv() => r,
        };
        match r {
            Ok(rec) => {
                if tx.send(line(&rec)).await.is_err() {
                    return;
                }
                bump(&c.delivered, 1);
                sent += 1;
                if done(sent) {
                    return;
                }
                if q.wait.is_some() {
                    // Long-poll: hand over what is ready now, then end.
                    while let Ok(rec) = rx.try_recv() {
                        if tx.send(line(&rec)).await.is_err() {
                            return;
                        }
                        bump(&c.delivered, 1);
                        sent += 1;
                        if done(sent) {
                            return;
                        }
                    }
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!(
                    lost = n,
                    "northbound HTTP reader too slow; ending its stream"
                );
                bump(&c.dropped, n);
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query() {
        assert_eq!(parse_query(None), Ok(UplinkQuery::default()));
        assert_eq!(
            parse_query(Some("after=5&wait=30&limit=2")),
            Ok(UplinkQuery {
                after: Some(5),
                wait: Some(30),
                limit: Some(2)
            })
        );
        assert!(parse_query(Some("wait=3601")).is_err());
        assert!(parse_query(Some("limit=0")).is_err());
        assert!(parse_query(Some("after=-1")).is_err());
        assert!(parse_query(Some("foo=1")).is_err());
    }

    proptest::proptest! {
        #[test]
        fn query_never_panics(q in ".{0,64}") {
            let _ = parse_query(Some(&q));
        }
    }
}
