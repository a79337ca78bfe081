//! MQTT 3.1.1 delivery (OASIS mqtt-v3.1.1, plain TCP): uplinks published to
//! `<prefix>/up/<imsi>` at QoS 1 with the raw payload (§3.3), downlinks taken from a QoS 1
//! subscription to `<prefix>/down/+` (§3.8, §4.7.1.3). The session is clean (§3.1.2.4): the
//! subscription is renewed on every CONNACK, after each reconnection.

use std::sync::Arc;
use std::time::Duration;

use capillary_secrets::Imsi;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{
    backoff, bump, invalid, stopped, MqttConfig, NorthboundError, Record, SecretString, Shared,
    MAX_DOWNLINK,
};

/// First reconnection delay; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest delay between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Downlinks from the broker waiting for the link; further ones are refused and counted.
const DOWNLINK_QUEUE: usize = 256;
/// Largest MQTT packet sent or accepted (uplinks and downlinks are at most ~1.2 KiB).
const MAX_PACKET: usize = 16 * 1024;

/// Splits `host:port` (`[v6]:port` for IPv6).
pub(crate) fn broker_addr(s: &str) -> Result<(String, u16), NorthboundError> {
    let bad = || {
        invalid(
            "northbound.mqtt.broker",
            "expected host:port, e.g. 127.0.0.1:1883",
        )
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// The device a downlink topic names, if it is `<prefix>/down/<imsi>`.
fn device_of(prefix: &str, topic: &str) -> Option<Imsi> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix("/down/")?;
    Imsi::new(rest).ok()
}

pub(crate) fn spawn(
    cfg: &MqttConfig,
    shared: Arc<Shared>,
) -> Result<Vec<JoinHandle<()>>, NorthboundError> {
    let (host, port) = broker_addr(&cfg.broker)?;
    let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
    opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some(user) = &cfg.username {
        let password = cfg.password.as_ref().map_or("", SecretString::expose);
        opts.set_credentials(user.clone(), password);
    }
    let (client, eventloop) = AsyncClient::new(opts, cfg.queue);
    let (dtx, drx) = mpsc::channel(DOWNLINK_QUEUE);
    let prefix = cfg.topic_prefix.clone();
    Ok(vec![
        tokio::spawn(publish(
            client.clone(),
            prefix.clone(),
            shared.hub.subscribe(),
            shared.clone(),
        )),
        tokio::spawn(drive(client, eventloop, prefix, dtx, shared.clone())),
        tokio::spawn(downlinks(drx, shared)),
    ])
}

/// Hands uplinks to the client; drops and counts when its request queue is full.
async fn publish(
    client: AsyncClient,
    prefix: String,
    mut rx: broadcast::Receiver<Arc<Record>>,
    shared: Arc<Shared>,
) {
    let c = &shared.counters.mqtt;
    let stop = stopped(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = rx.recv() => match r {
                Ok(rec) => {
                    let topic = format!("{prefix}/up/{}", rec.device);
                    if client
                        .try_publish(topic, QoS::AtLeastOnce, false, rec.payload.clone())
                        .is_err()
                    {
                        bump(&c.dropped, 1);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => bump(&c.dropped, n),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Runs the connection: reconnects with backoff, subscribes, counts PUBACKs, takes downlinks.
async fn drive(
    client: AsyncClient,
    mut eventloop: EventLoop,
    prefix: String,
    downlinks: mpsc::Sender<(Imsi, Vec<u8>)>,
    shared: Arc<Shared>,
) {
    let c = &shared.counters.mqtt;
    let filter = format!("{prefix}/down/+");
    let mut failures = 0u32;
    let stop = stopped(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        let ev = tokio::select! {
            _ = &mut stop => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!(broker = %shared_broker(&eventloop), "northbound MQTT connected");
                failures = 0;
                // Not from this task: the request queue may be full of publishes that only
                // this task's polling drains.
                let client = client.clone();
                let filter = filter.clone();
                tokio::spawn(async move {
                    let _ = client.subscribe(filter, QoS::AtLeastOnce).await;
                });
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|r| matches!(r, SubscribeReasonCode::Failure))
                {
                    warn!(%filter, "northbound MQTT subscription refused by the broker");
                    bump(&c.errors, 1);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => bump(&c.delivered, 1),
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(device) = device_of(&prefix, &p.topic) else {
                    debug!(topic = %p.topic, "MQTT downlink on a topic that names no IMSI");
                    bump(&c.downlinks_refused, 1);
                    continue;
                };
                if p.payload.len() > MAX_DOWNLINK {
                    debug!(%device, bytes = p.payload.len(), "MQTT downlink too large");
                    bump(&c.downlinks_refused, 1);
                    continue;
                }
                if downlinks.try_send((device, p.payload.to_vec())).is_err() {
                    bump(&c.downlinks_refused, 1);
                }
            }
            Ok(_) => {}
            Err(e) => {
                bump(&c.errors, 1);
                if failures == 0 {
                    warn!(error = %e, "northbound MQTT connection failed; retrying");
                } else {
                    debug!(error = %e, "northbound MQTT connection failed again");
                }
                let wait = backoff(FIRST_BACKOFF, failures, MAX_BACKOFF);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    // Send DISCONNECT (§3.14) when connected; give it a moment to leave.
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(ev) = eventloop.poll().await {
                if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}

fn shared_broker(ev: &EventLoop) -> String {
    let (host, port) = ev.mqtt_options.broker_address();
    format!("{host}:{port}")
}

/// Queues downlinks taken from the broker on the link.
async fn downlinks(mut rx: mpsc::Receiver<(Imsi, Vec<u8>)>, shared: Arc<Shared>) {
    let c = &shared.counters.mqtt;
    let stop = stopped(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        let (device, payload) = tokio::select! {
            _ = &mut stop => return,
            r = rx.recv() => match r {
                Some(x) => x,
                None => return,
            },
        };
        match shared.sink.downlink(device, payload).await {
            Ok(()) => bump(&c.downlinks_queued, 1),
            Err(e) => {
                debug!(error = %e, "MQTT downlink refused by the link");
                bump(&c.downlinks_refused, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers() {
        assert_eq!(
            broker_addr("127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert_eq!(broker_addr("[::1]:1883").unwrap(), ("::1".into(), 1883));
        assert_eq!(
            broker_addr("mq.example:8883").unwrap(),
            ("mq.example".into(), 8883)
        );
        assert!(broker_addr("127.0.0.1").is_err());
        assert!(broker_addr(":1883").is_err());
        assert!(broker_addr("h:0").is_err());
    }

    #[test]
    fn downlink_topics() {
        assert_eq!(
            device_of("capillary", "capillary/down/001010000000001").map(|i| i.to_string()),
            Some("001010000000001".into())
        );
        assert!(device_of("capillary", "capillary/down/abc").is_none());
        assert!(device_of("capillary", "capillary/up/001010000000001").is_none());
        assert!(device_of("capillary", "other/down/001010000000001").is_none());
        assert!(device_of("cap", "capillary/down/001010000000001").is_none());
    }

    proptest::proptest! {
        #[test]
        fn topics_and_brokers_never_panic(t in ".{0,64}") {
            let _ = device_of("capillary", &t);
            let _ = broker_addr(&t);
        }
    }
}
