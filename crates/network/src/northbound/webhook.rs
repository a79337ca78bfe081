//! Webhook delivery: each uplink POSTed as one JSON object (RFC 8259) over HTTP/1.1
//! (RFC 9112), one kept-alive connection, a bounded queue, retries with exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{backoff, bump, invalid, stopped, NorthboundConfig, NorthboundError, Record, Shared};

/// First retry delay; doubled per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Largest webhook answer body read (and discarded) to keep the connection reusable.
const MAX_ANSWER: usize = 64 * 1024;

/// A parsed `http://` webhook URL.
#[derive(Debug, Clone)]
pub(crate) struct WebhookUrl {
    host: String,
    port: u16,
    authority: HeaderValue,
    path: String,
}

impl WebhookUrl {
    pub(crate) fn parse(url: &str) -> Result<Self, NorthboundError> {
        let bad = |p: &str| invalid("northbound.webhook_url", p.to_owned());
        let uri: Uri = url.parse().map_err(|e| bad(&format!("not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(
                "only http:// URLs (put a TLS-terminating proxy on loopback for https)",
            ));
        }
        let auth = uri.authority().ok_or_else(|| bad("no host"))?;
        if auth.as_str().contains('@') {
            return Err(bad("user information in the URL is not supported"));
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port: auth.port_u16().unwrap_or(80),
            authority: HeaderValue::from_str(auth.as_str()).map_err(|_| bad("bad host"))?,
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// The configured webhook.
#[derive(Debug)]
pub(crate) struct Webhook {
    url: WebhookUrl,
    auth: Option<HeaderValue>,
    queue: usize,
    max_attempts: u32,
    timeout: Duration,
}

impl Webhook {
    pub(crate) fn new(cfg: &NorthboundConfig, url: &str) -> Result<Self, NorthboundError> {
        let auth = match &cfg.webhook_token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                    .map_err(|_| invalid("northbound.webhook_token", "not a header value"))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Self {
            url: WebhookUrl::parse(url)?,
            auth,
            queue: cfg.webhook_queue,
            max_attempts: cfg.webhook_max_attempts,
            timeout: Duration::from_secs(cfg.webhook_timeout_secs),
        })
    }

    /// A feeder (uplinks into the bounded queue) and a sender task.
    pub(crate) fn spawn(self, shared: Arc<Shared>) -> Vec<JoinHandle<()>> {
        let (qtx, qrx) = mpsc::channel(self.queue);
        let rx = shared.hub.subscribe();
        let feeder = tokio::spawn(feed(shared.clone(), rx, qtx));
        let sender = tokio::spawn(self.deliver(shared, qrx));
        vec![feeder, sender]
    }

    async fn deliver(self, shared: Arc<Shared>, mut queue: mpsc::Receiver<Arc<Record>>) {
        let c = &shared.counters.webhook;
        let mut conn: Option<SendRequest<Full<Bytes>>> = None;
        let stop = stopped(shared.shutdown.clone());
        tokio::pin!(stop);
        loop {
            let rec = tokio::select! {
                _ = &mut stop => return,
                r = queue.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
            };
            let mut attempt = 0;
            loop {
                match tokio::time::timeout(self.timeout, self.post(&mut conn, &rec)).await {
                    Ok(Ok(status)) if status.is_success() => {
                        bump(&c.delivered, 1);
                        break;
                    }
                    Ok(Ok(status)) => {
                        debug!(%status, "webhook refused an uplink");
                        bump(&c.errors, 1);
                    }
                    Ok(Err(e)) => {
                        debug!(error = %e, "webhook request failed");
                        bump(&c.errors, 1);
                        conn = None;
                    }
                    Err(_) => {
                        debug!("webhook request timed out");
                        bump(&c.errors, 1);
                        conn = None;
                    }
                }
                attempt += 1;
                if attempt >= self.max_attempts {
                    warn!(seq = rec.seq, "webhook gave up on an uplink");
                    bump(&c.dropped, 1);
                    break;
                }
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(backoff(FIRST_BACKOFF, attempt - 1, MAX_BACKOFF)) => {}
                }
            }
        }
    }

    async fn post(
        &self,
        conn: &mut Option<SendRequest<Full<Bytes>>>,
        rec: &Record,
    ) -> Result<hyper::StatusCode, Box<dyn std::error::Error + Send + Sync>> {
        let mut sender = match conn.take() {
            Some(s) if !s.is_closed() => s,
            _ => {
                let stream = TcpStream::connect((self.url.host.as_str(), self.url.port)).await?;
                let _ = stream.set_nodelay(true);
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                sender
            }
        };
        sender.ready().await?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url.path.as_str())
            .header(header::HOST, self.url.authority.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "capillary-core")
            .body(Full::new(Bytes::from(rec.json.clone())))?;
        if let Some(a) = &self.auth {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        // Read the answer so that the connection can carry the next request.
        if Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .is_ok()
        {
            *conn = Some(sender);
        }
        Ok(status)
    }
}

/// Moves uplinks into the bounded queue; drops and counts when it is full.
async fn feed(
    shared: Arc<Shared>,
    mut rx: broadcast::Receiver<Arc<Record>>,
    queue: mpsc::Sender<Arc<Record>>,
) {
    let c = &shared.counters.webhook;
    let stop = stopped(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = rx.recv() => match r {
                Ok(rec) => {
                    if queue.try_send(rec).is_err() {
                        bump(&c.dropped, 1);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => bump(&c.dropped, n),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = WebhookUrl::parse("http://127.0.0.1:9000/hook?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 9000, "/hook?x=1")
        );
        let u = WebhookUrl::parse("http://[::1]/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 80));
        let u = WebhookUrl::parse("http://example.org").unwrap();
        assert_eq!(u.path, "/");
        assert!(WebhookUrl::parse("https://example.org/").is_err());
        assert!(WebhookUrl::parse("http://user:pw@example.org/").is_err());
        assert!(WebhookUrl::parse("not a url").is_err());
    }

    proptest::proptest! {
        #[test]
        fn urls_never_panic(u in ".{0,64}") {
            let _ = WebhookUrl::parse(&u);
            let _ = WebhookUrl::parse(&format!("http://{u}"));
        }
    }
}
