//! Northbound delivery: the HTTP API, the JSON lines file, the webhook and MQTT against a
//! real Mosquitto broker, all fed from an in-test uplink channel and a recording downlink sink.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use capillary_network::link::LinkStats;
use capillary_network::link_driver::Uplink;
use capillary_network::northbound::{
    spawn_with, DownlinkError, DownlinkSink, MqttConfig, NorthboundConfig, NorthboundError,
    NorthboundHandle, SecretString,
};
use capillary_secrets::Imsi;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

const DEV: &str = "001010000000001";
const OTHER: &str = "001010000000002";

/// Records downlinks; only `DEV` is authenticated.
#[derive(Debug, Default)]
struct FakeLink {
    authenticated: HashSet<String>,
    got: Mutex<Vec<(String, Vec<u8>)>>,
}

#[async_trait::async_trait]
impl DownlinkSink for FakeLink {
    async fn downlink(&self, device: Imsi, payload: Vec<u8>) -> Result<(), DownlinkError> {
        if !self.authenticated.contains(device.as_str()) {
            return Err(DownlinkError::NotAuthenticated);
        }
        self.got.lock().unwrap().push((device.to_string(), payload));
        Ok(())
    }

    fn link_stats(&self) -> Option<LinkStats> {
        Some(LinkStats {
            authenticated: 7,
            ..LinkStats::default()
        })
    }
}

struct Rig {
    up: broadcast::Sender<Uplink>,
    link: Arc<FakeLink>,
    nb: NorthboundHandle,
}

impl Rig {
    async fn new(cfg: NorthboundConfig) -> Self {
        let (up, rx) = broadcast::channel(64);
        let link = Arc::new(FakeLink {
            authenticated: [DEV.to_string()].into(),
            ..FakeLink::default()
        });
        let nb = spawn_with(cfg, rx, link.clone()).await.unwrap();
        Self { up, link, nb }
    }

    fn uplink(&self, device: &str, payload: &[u8]) {
        self.up
            .send(Uplink {
                device: Imsi::new(device).unwrap(),
                payload: payload.to_vec(),
            })
            .unwrap();
    }

    fn http(&self) -> SocketAddr {
        self.nb.http_addr().unwrap()
    }
}

fn http_cfg() -> NorthboundConfig {
    NorthboundConfig {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..NorthboundConfig::default()
    }
}

/// Waits (at most 10 s) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    tx.send_request(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
        .await
        .unwrap()
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (StatusCode, Vec<u8>) {
    let r = send(addr, method, path, token, body).await;
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, body)
}

fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap()
}

fn lines(b: &[u8]) -> Vec<serde_json::Value> {
    std::str::from_utf8(b)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn check_record(v: &serde_json::Value, seq: u64, device: &str, payload: &[u8]) {
    assert_eq!(v["seq"], seq);
    assert_eq!(v["device"], device);
    let p = base64::engine::general_purpose::STANDARD
        .decode(v["payload_b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(p, payload);
    let ms = v["received_unix_ms"].as_u64().unwrap();
    assert!(ms > 1_600_000_000_000, "received_unix_ms {ms}");
}

#[tokio::test]
async fn http_downlink_status_codes_and_auth() {
    let rig = Rig::new(NorthboundConfig {
        http_token: Some(SecretString::new("s3cret")),
        ..http_cfg()
    })
    .await;
    let a = rig.http();
    let ok = Some("s3cret");

    // Health needs no token; everything else does.
    assert_eq!(
        call(a, "GET", "/healthz", None, b"").await.0,
        StatusCode::OK
    );
    let r = send(a, "GET", "/v1/stats", None, b"").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    for bad in ["s3cre", "s3cret!", "S3CRET", ""] {
        let (s, _) = call(a, "GET", "/v1/stats", Some(bad), b"").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "token {bad:?}");
    }
    let p = format!("/v1/devices/{DEV}/downlink");
    assert_eq!(
        call(a, "POST", &p, None, b"x").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Downlinks: queued, unknown device, bad IMSI, too large, exactly the limit.
    let (s, _) = call(a, "POST", &p, ok, b"hello device").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, b) = call(
        a,
        "POST",
        &format!("/v1/devices/{OTHER}/downlink"),
        ok,
        b"x",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(json(&b)["error"]
        .as_str()
        .unwrap()
        .contains("not authenticated"));
    for bad in ["12ab5678", "12345", "1234567890123456"] {
        let (s, _) = call(a, "POST", &format!("/v1/devices/{bad}/downlink"), ok, b"x").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "IMSI {bad}");
    }
    let (s, _) = call(a, "POST", &p, ok, &[7u8; 1025]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _) = call(a, "POST", &p, ok, &[9u8; 1024]).await;
    assert_eq!(s, StatusCode::ACCEPTED);

    // A chunked body (no Content-Length) over the limit is refused as well.
    let mut raw = TcpStream::connect(a).await.unwrap();
    let chunk = vec![b'z'; 1500];
    let mut req = format!(
        "POST {p} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    req.extend_from_slice(&chunk);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    raw.write_all(&req).await.unwrap();
    let mut answer = vec![0u8; 12];
    raw.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");

    // Routing.
    assert_eq!(
        call(a, "GET", "/v2/nothing", ok, b"").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(a, "GET", &p, ok, b"").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        call(a, "POST", "/v1/uplinks", ok, b"").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        call(a, "GET", "/v1/uplinks?wait=x", ok, b"").await.0,
        StatusCode::BAD_REQUEST
    );

    let got = rig.link.got.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![
            (DEV.to_string(), b"hello device".to_vec()),
            (DEV.to_string(), vec![9u8; 1024])
        ]
    );

    // Stats: the link's counters and ours.
    let (s, b) = call(a, "GET", "/v1/stats", ok, b"").await;
    assert_eq!(s, StatusCode::OK);
    let v = json(&b);
    assert_eq!(v["link"]["authenticated"], 7);
    assert_eq!(v["northbound"]["http"]["downlinks_queued"], 2);
    assert_eq!(v["northbound"]["http"]["downlinks_refused"], 6);
    let st = rig.nb.stats();
    assert_eq!(st.http.downlinks_queued, 2);
    assert!(st.http.errors >= 6, "unauthorized requests counted: {st:?}");
    rig.nb.stop().await;
}

#[tokio::test]
async fn http_uplink_stream() {
    let rig = Rig::new(http_cfg()).await;
    let r = send(rig.http(), "GET", "/v1/uplinks", None, b"").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    // The response is open: uplinks that arrive now are streamed, one line each.
    rig.uplink(DEV, b"one");
    rig.uplink(OTHER, b"");
    rig.uplink(DEV, &[0xff, 0x00, 0x80]);
    let mut body = r.into_body();
    let mut buf = Vec::new();
    while buf.iter().filter(|&&b| b == b'\n').count() < 3 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.extend_from_slice(&frame.into_data().unwrap());
    }
    let v = lines(&buf);
    check_record(&v[0], 1, DEV, b"one");
    check_record(&v[1], 2, OTHER, b"");
    check_record(&v[2], 3, DEV, &[0xff, 0x00, 0x80]);
    drop(body);
    eventually("delivered count", || rig.nb.stats().http.delivered == 3).await;
    assert_eq!(rig.nb.stats().uplinks, 3);
    rig.nb.stop().await;
}

#[tokio::test]
async fn http_uplink_long_poll() {
    let rig = Rig::new(NorthboundConfig {
        replay_buffer: 2,
        ..http_cfg()
    })
    .await;
    let a = rig.http();

    // Nothing arrives: an empty 200 after `wait` seconds.
    let t0 = std::time::Instant::now();
    let (s, b) = call(a, "GET", "/v1/uplinks?wait=1", None, b"").await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(900));

    // Replay from the buffer (only the last two are kept).
    rig.uplink(DEV, b"a");
    rig.uplink(DEV, b"b");
    rig.uplink(DEV, b"c");
    eventually("hub", || rig.nb.stats().uplinks == 3).await;
    let (_, b) = call(a, "GET", "/v1/uplinks?wait=10&after=0", None, b"").await;
    let v = lines(&b);
    assert_eq!(v.len(), 2);
    check_record(&v[0], 2, DEV, b"b");
    check_record(&v[1], 3, DEV, b"c");
    let (_, b) = call(a, "GET", "/v1/uplinks?wait=10&after=2&limit=5", None, b"").await;
    assert_eq!(lines(&b).len(), 1);
    let (_, b) = call(a, "GET", "/v1/uplinks?after=0&limit=1", None, b"").await;
    let v = lines(&b);
    assert_eq!(v.len(), 1);
    check_record(&v[0], 2, DEV, b"b");

    // A poll that waits: answered as soon as the next uplink arrives.
    let poll = tokio::spawn(call(a, "GET", "/v1/uplinks?wait=30&after=3", None, b""));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished());
    rig.uplink(OTHER, b"d");
    let (s, b) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    let v = lines(&b);
    assert_eq!(v.len(), 1);
    check_record(&v[0], 4, OTHER, b"d");
    rig.nb.stop().await;
}

#[tokio::test]
async fn jsonl_file_appends_and_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uplinks.jsonl");
    std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
    let rig = Rig::new(NorthboundConfig {
        jsonl_path: Some(path.clone()),
        jsonl_fsync_ms: 20,
        ..NorthboundConfig::default()
    })
    .await;
    rig.uplink(DEV, b"first");
    rig.uplink(OTHER, b"second");
    eventually("two synced lines", || rig.nb.stats().jsonl.delivered == 2).await;
    let text = std::fs::read(&path).unwrap();
    let v = lines(&text);
    assert_eq!(v.len(), 3);
    assert_eq!(v[0]["earlier"], true);
    check_record(&v[1], 1, DEV, b"first");
    check_record(&v[2], 2, OTHER, b"second");

    // Stop flushes whatever was taken.
    rig.uplink(DEV, b"third");
    eventually("hub", || rig.nb.stats().uplinks == 3).await;
    rig.nb.stop().await;
    let v = lines(&std::fs::read(&path).unwrap());
    assert_eq!(v.len(), 4);
    check_record(&v[3], 3, DEV, b"third");
}

/// A webhook receiver: answers 500 to the first `fail_first` requests, then 204.
async fn webhook_server(
    fail_first: usize,
) -> (
    SocketAddr,
    Arc<Mutex<Vec<(Option<String>, String, Vec<u8>)>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(Mutex::new(0usize));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let s = s.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    let count = count.clone();
                    async move {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_string());
                        let path = req.uri().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                        let n = {
                            let mut c = count.lock().unwrap();
                            *c += 1;
                            *c
                        };
                        let status = if n <= fail_first {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            s.lock().unwrap().push((auth, path, body));
                            StatusCode::NO_CONTENT
                        };
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn webhook_delivers_with_retries() {
    let (addr, seen) = webhook_server(2).await;
    let rig = Rig::new(NorthboundConfig {
        webhook_url: Some(format!("http://{addr}/hook?src=capillary")),
        webhook_token: Some(SecretString::new("hooktoken")),
        ..NorthboundConfig::default()
    })
    .await;
    rig.uplink(DEV, b"to the hook");
    rig.uplink(OTHER, b"again");
    eventually("two deliveries", || seen.lock().unwrap().len() == 2).await;
    let seen = seen.lock().unwrap().clone();
    for (auth, path, _) in &seen {
        assert_eq!(auth.as_deref(), Some("Bearer hooktoken"));
        assert_eq!(path, "/hook?src=capillary");
    }
    check_record(&json(&seen[0].2), 1, DEV, b"to the hook");
    check_record(&json(&seen[1].2), 2, OTHER, b"again");
    let st = rig.nb.stats().webhook;
    assert_eq!((st.delivered, st.errors, st.dropped), (2, 2, 0), "{st:?}");
    rig.nb.stop().await;
}

#[tokio::test]
async fn webhook_gives_up_and_drops_when_full() {
    // A receiver that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
    });
    let rig = Rig::new(NorthboundConfig {
        webhook_url: Some(format!("http://{addr}/")),
        webhook_queue: 2,
        webhook_max_attempts: 1,
        webhook_timeout_secs: 1,
        ..NorthboundConfig::default()
    })
    .await;
    for i in 0..10u8 {
        rig.uplink(DEV, &[i]);
    }
    // Two queued (plus at most one already in flight), the rest dropped at once; those
    // taken time out after one attempt and are dropped as well.
    eventually("all ten dropped", || rig.nb.stats().webhook.dropped == 10).await;
    let st = rig.nb.stats().webhook;
    assert_eq!(st.delivered, 0);
    assert!((2..=3).contains(&st.errors), "{st:?}");

    // A refused connection counts as an error too.
    drop(rig);
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let rig = Rig::new(NorthboundConfig {
        webhook_url: Some(format!("http://{port}/")),
        webhook_max_attempts: 2,
        ..NorthboundConfig::default()
    })
    .await;
    rig.uplink(DEV, b"x");
    eventually("dropped after two attempts", || {
        let s = rig.nb.stats().webhook;
        s.dropped == 1 && s.errors == 2
    })
    .await;
}

/// A Mosquitto broker on a free loopback port, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    async fn start() -> Self {
        let bin = [
            "mosquitto",
            "/usr/sbin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("-h")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
        .expect("mosquitto not found: install the Debian package `mosquitto` (scripts/test does)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Killed and reaped by Drop, also when the test fails below.
        let broker = Self {
            child: Command::new(bin)
                .args(["-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            port,
        };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return broker;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("mosquitto did not start on port {port}");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn mqtt_against_mosquitto() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let broker = Mosquitto::start().await;
    let rig = Rig::new(NorthboundConfig {
        mqtt: Some(MqttConfig {
            broker: format!("127.0.0.1:{}", broker.port),
            client_id: "capillary-test-core".into(),
            topic_prefix: "cap/test".into(),
            ..MqttConfig::default()
        }),
        ..NorthboundConfig::default()
    })
    .await;

    // The MTC server side: subscribes to uplinks, publishes downlinks.
    let (server, mut events) =
        AsyncClient::new(MqttOptions::new("mtc-server", "127.0.0.1", broker.port), 64);
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel();
    let (atx, mut arx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = ptx.send((p.topic.clone(), p.payload.to_vec(), p.qos));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = atx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    server
        .subscribe("cap/test/up/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), arx.recv())
        .await
        .unwrap()
        .unwrap();

    // Downlink: publish until the core has subscribed and the link got it.
    let topic = format!("cap/test/down/{DEV}");
    let mut got = false;
    for _ in 0..50 {
        server
            .publish(&topic, QoS::AtLeastOnce, false, b"down!".to_vec())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !rig.link.got.lock().unwrap().is_empty() {
            got = true;
            break;
        }
    }
    assert!(
        got,
        "no downlink reached the link: {:?}",
        rig.nb.stats().mqtt
    );
    assert_eq!(
        rig.link.got.lock().unwrap()[0],
        (DEV.to_string(), b"down!".to_vec())
    );

    // Uplink: published raw at QoS 1 on <prefix>/up/<imsi>.
    rig.uplink(DEV, &[1, 2, 3, 0xfe]);
    let (t, payload, qos) = tokio::time::timeout(Duration::from_secs(10), prx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t, format!("cap/test/up/{DEV}"));
    assert_eq!(payload, vec![1, 2, 3, 0xfe]);
    assert_eq!(qos, QoS::AtLeastOnce);
    eventually("PUBACK counted", || rig.nb.stats().mqtt.delivered == 1).await;

    // Refused downlinks: not an IMSI, a device not authenticated, too large.
    let before = rig.nb.stats().mqtt.downlinks_refused;
    for (t, p) in [
        ("cap/test/down/notanimsi".to_string(), vec![1u8]),
        (format!("cap/test/down/{OTHER}"), vec![1u8]),
        (topic.clone(), vec![0u8; 1025]),
    ] {
        server.publish(t, QoS::AtLeastOnce, false, p).await.unwrap();
    }
    eventually("three refused downlinks", || {
        rig.nb.stats().mqtt.downlinks_refused == before + 3
    })
    .await;
    let st = rig.nb.stats().mqtt;
    assert!(st.downlinks_queued >= 1);
    assert_eq!(st.dropped, 0);
    rig.nb.stop().await;
}

#[tokio::test]
async fn mqtt_broker_down_counts_errors_and_drops() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rig = Rig::new(NorthboundConfig {
        mqtt: Some(MqttConfig {
            broker: format!("127.0.0.1:{port}"),
            queue: 2,
            ..MqttConfig::default()
        }),
        ..NorthboundConfig::default()
    })
    .await;
    for i in 0..6u8 {
        rig.uplink(DEV, &[i]);
    }
    eventually("connection errors and drops", || {
        let s = rig.nb.stats().mqtt;
        s.errors >= 1 && s.dropped >= 3
    })
    .await;
    tokio::time::timeout(Duration::from_secs(6), rig.nb.stop())
        .await
        .unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// Arbitrary bytes on the HTTP socket get an error or a closed connection, never a crash:
    /// the API still answers afterwards.
    #[test]
    fn http_survives_arbitrary_bytes(junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let rig = Rig::new(http_cfg()).await;
            let mut s = TcpStream::connect(rig.http()).await.unwrap();
            let _ = s.write_all(&junk).await;
            let _ = s.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut sink)).await;
            assert_eq!(call(rig.http(), "GET", "/healthz", None, b"").await.0, StatusCode::OK);
            rig.nb.stop().await;
        });
    }
}

#[test]
fn config_parses_validates_and_redacts() {
    let cfg: NorthboundConfig = toml::from_str(
        r#"
        http_listen = "127.0.0.1:8080"
        http_token = "tok"
        webhook_url = "http://127.0.0.1:9000/up"
        jsonl_path = "/var/lib/capillary/uplinks.jsonl"
        [mqtt]
        broker = "127.0.0.1:1883"
        client_id = "core-1"
        topic_prefix = "capillary"
        "#,
    )
    .unwrap();
    assert!(cfg.is_enabled());
    cfg.validate().unwrap();
    assert_eq!(cfg.http_token.as_ref().unwrap().expose(), "tok");
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains("tok\""), "{dbg}");

    let empty: NorthboundConfig = toml::from_str("").unwrap();
    assert_eq!(empty, NorthboundConfig::default());
    assert!(!empty.is_enabled());
    let m: NorthboundConfig = toml::from_str("[mqtt]").unwrap();
    assert_eq!(m.mqtt.unwrap(), MqttConfig::default());

    assert!(toml::from_str::<NorthboundConfig>("http_port = 1").is_err());
    assert!(toml::from_str::<NorthboundConfig>("[mqtt]\nhost = \"x\"").is_err());
    for bad in [
        "webhook_url = \"https://example.org/\"",
        "webhook_url = \"ftp://example.org/\"",
        "webhook_queue = 0",
        "http_token = \"\"",
        "[mqtt]\nbroker = \"localhost\"",
        "[mqtt]\ntopic_prefix = \"a/#\"",
        "[mqtt]\ntopic_prefix = \"\"",
        "[mqtt]\npassword = \"pw\"",
    ] {
        let c: NorthboundConfig = toml::from_str(bad).unwrap();
        assert!(
            matches!(c.validate(), Err(NorthboundError::Invalid { .. })),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn spawn_refuses_what_it_cannot_open() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_tx, rx) = broadcast::channel::<Uplink>(4);
    let link = Arc::new(FakeLink::default());
    let e = spawn_with(
        NorthboundConfig {
            http_listen: Some(taken.local_addr().unwrap()),
            ..NorthboundConfig::default()
        },
        rx.resubscribe(),
        link.clone(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, NorthboundError::Bind { .. }), "{e}");
    let e = spawn_with(
        NorthboundConfig {
            jsonl_path: Some("/nonexistent-dir/x.jsonl".into()),
            ..NorthboundConfig::default()
        },
        rx,
        link,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, NorthboundError::Jsonl { .. }), "{e}");
}

/// `spawn` over a real gateway-link endpoint: its refusals map to HTTP status codes and its
/// counters show up in `GET /v1/stats`.
#[tokio::test]
async fn over_the_real_link_handle() {
    use capillary_network::auc::Auc;
    use capillary_network::link::LinkConfig;
    use capillary_store::{MemoryStore, SubscriberStore};

    let store: Arc<dyn SubscriberStore> = Arc::new(MemoryStore::new());
    let (link, task) = capillary_network::link_driver::spawn(
        "127.0.0.1:0".parse().unwrap(),
        LinkConfig::default(),
        Auc::new(store, 0),
    )
    .await
    .unwrap();
    let nb = capillary_network::northbound::spawn(http_cfg(), link.clone())
        .await
        .unwrap();
    let a = nb.http_addr().unwrap();
    let p = format!("/v1/devices/{DEV}/downlink");
    assert_eq!(
        call(a, "POST", &p, None, b"x").await.0,
        StatusCode::NOT_FOUND
    );

    // A datagram that is not CoAP is dropped and counted by the link (RFC 7252 §3).
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(&[0xff; 3], link.local_addr).await.unwrap();
    let mut seen = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, b) = call(a, "GET", "/v1/stats", None, b"").await;
        seen = json(&b);
        if seen["link"]["dropped"]["Malformed"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen["link"]["dropped"]["Malformed"], 1, "{seen}");
    assert_eq!(seen["link"]["authenticated"], 0);
    assert_eq!(seen["northbound"]["http"]["downlinks_refused"], 1);

    // The link stops: downlinks get 503.
    task.abort();
    let _ = task.await;
    assert_eq!(
        call(a, "POST", &p, None, b"x").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    nb.stop().await;
}
