//! Configuration of the gateway (contract: `notes/gateway-contract.md`, "Gateway").

use std::time::Duration;

use capillary_aka::vector::UsimConfig;
use capillary_coap::reliability::TransmissionParams;
use capillary_relay::batch::MAX_ENTRIES;
use capillary_relay::BatcherConfig;
use capillary_secrets::{Imsi, Opc, K};

/// Default realm of the EAP identity `6<IMSI>@<realm>` (RFC 9048 §3.1).
pub const DEFAULT_REALM: &str = "wlan.mnc001.mcc001.3gppnetwork.org";
/// Default access network name (AT_KDF_INPUT, RFC 9048 §3.1).
pub const DEFAULT_NETWORK_NAME: &str = "WLAN";

/// What the gateway is: its own subscription (it authenticates itself like a device,
/// PROTOCOL.md §3) and its relay limits.
#[derive(Debug)]
pub struct GatewayConfig {
    /// The gateway's own IMSI (subscriber kind `gateway`).
    pub imsi: Imsi,
    /// The gateway's own K.
    pub k: K,
    /// The gateway's own OPc.
    pub opc: Opc,
    /// USIM SQN handling (TS 33.102 Annex C).
    pub usim: UsimConfig,
    /// Realm of the EAP identity `6<IMSI>@<realm>`.
    pub realm: String,
    /// Expected EAP-AKA' network name (AT_KDF_INPUT).
    pub network_name: String,
    /// RID-I: the OSCORE Recipient ID the gateway picks (RFC 9820 §5.1), at most 7 bytes.
    pub rid_i: Vec<u8>,
    /// Batching of device→network entries (PROTOCOL.md §1, §4).
    pub batcher: BatcherConfig,
    /// Devices held at once; datagrams of further devices are dropped and counted.
    pub max_devices: usize,
}

impl GatewayConfig {
    /// A configuration with the default realm, network name, RID-I `[0x01]`, batcher
    /// (20 ms, 1,024 entries, 64 KiB) and 1,024 devices.
    pub fn new(imsi: Imsi, k: K, opc: Opc) -> Self {
        GatewayConfig {
            imsi,
            k,
            opc,
            usim: UsimConfig::default(),
            realm: DEFAULT_REALM.into(),
            network_name: DEFAULT_NETWORK_NAME.into(),
            rid_i: vec![0x01],
            batcher: BatcherConfig::default(),
            max_devices: MAX_ENTRIES,
        }
    }

    /// Checks the values the gateway cannot run with.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.rid_i.len() > 7 {
            return Err(GatewayError::InvalidConfig(
                "rid_i is longer than 7 bytes (RFC 8613 §3.3)",
            ));
        }
        if self.realm.is_empty() {
            return Err(GatewayError::InvalidConfig("realm is empty"));
        }
        capillary_relay::Batcher::new(self.batcher)
            .map(|_| ())
            .map_err(|_| {
                GatewayError::InvalidConfig(
                    "batcher: max_entries must be 1..=1024 and max_bytes 6..=65536",
                )
            })
    }

    /// The EAP identity `6<IMSI>@<realm>` (RFC 9048 §3.1: "6" for EAP-AKA').
    pub fn eap_identity(&self) -> String {
        format!("6{}@{}", self.imsi.as_str(), self.realm)
    }
}

/// Tunables beyond the contract's [`GatewayConfig`]; `Default` gives sensible values.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayOptions {
    /// Entries one device may have waiting for the link; further datagrams are dropped.
    pub max_pending_per_device: usize,
    /// A device with no traffic in either direction for this long is released and
    /// reported `gone` (`kind 2`). Default 1 h.
    pub device_idle_timeout: Duration,
    /// A refused device keeps its handle this long (so the EAP-Failure exchange can finish)
    /// before it is released. Default 60 s.
    pub refused_grace: Duration,
    /// Gateway-link CoAP reliability (RFC 7252 §4.8). Default: RFC values except NSTART 4
    /// (§4.8 lets an application environment configure it; PROTOCOL.md §4): the gateway
    /// keeps up to this many `POST /r` outstanding, so that a wave too large for one
    /// datagram still costs one round trip.
    pub link: TransmissionParams,
    /// Longest time a device→network entry waits for its batch to close (PROTOCOL.md §1).
    /// A batch closes when no entry joined it for the batching window
    /// ([`GatewayConfig::batcher`]`.window`, 20 ms), when it is full, or at the latest this
    /// long after its first entry, so that a steady stream of entries cannot hold a batch
    /// back forever. Keep it well below the devices' CoAP ACK_TIMEOUT (2 s, RFC 7252 §4.8).
    /// Default 500 ms; never shorter than the window.
    pub batch_max_delay: Duration,
    /// Time to wait for a separate response after an Empty ACK to `POST /r`. Default 60 s.
    pub separate_response_timeout: Duration,
    /// First back-off before re-authenticating after a failure or link loss. Default 1 s.
    pub retry_backoff_initial: Duration,
    /// Largest back-off. Default 60 s.
    pub retry_backoff_max: Duration,
    /// CoAP-EAP: re-authenticate this long before the session lifetime ends
    /// (RFC 9820 §3.4). Default 300 s.
    pub reauth_margin: Duration,
    /// CoAP-EAP: trigger repetition interval. Default 10 s.
    pub trigger_interval: Duration,
    /// CoAP-EAP: triggers before the network counts as unresponsive. Default 4.
    pub max_triggers: u32,
    /// CoAP-EAP: time allowed between two steps of an authentication. Default 60 s.
    pub exchange_timeout: Duration,
    /// CoAP-EAP: session lifetime assumed when the network sends none. Default 8 h.
    pub default_session_lifetime: Duration,
    /// PROTOCOL.md §5: answer a device's CoAP-EAP trigger locally with the first request
    /// (EAP-Request/Identity and the network's cipher suites and RID-C, learnt from the
    /// gateway's own CoAP-EAP run with the network) and forward the device's answer with
    /// that request as one `kind 3` entry: one gateway-link round trip less per attach.
    /// Triggers are relayed (`kind 0`) while the gateway knows no offer yet (and, with
    /// [`Self::first_batch_with_auth`] off, while it is not authenticated). Default
    /// `true`.
    pub local_identity: bool,
    /// Timers of the local EAP-Request/Identity to devices (CON, RFC 7252 §4.2/§4.8).
    /// Default: the RFC values (ACK_TIMEOUT 2 s, MAX_RETRANSMIT 4).
    pub capillary_link: TransmissionParams,
    /// PROTOCOL.md §4.1: a batch whose entries need no answer from the network (only
    /// OSCORE-protected responses, such as the devices' key confirmations after
    /// EAP-Success, and Empty ACKs/RSTs) is sent one-way: a NON `POST /r` with
    /// No-Response (RFC 7967), not retransmitted, not a round trip
    /// ([`crate::GatewayStats::link_one_way`]). Loss is recovered end to end: the network
    /// retransmits EAP-Success until the device's protected 2.04 arrives, and the device
    /// answers from its cache. Default `true`.
    pub confirm_one_way: bool,
    /// PROTOCOL.md §4.1, §5: with [`Self::local_identity`] on, answer device triggers
    /// locally already while the gateway's own CoAP-EAP run is in progress (as soon as the
    /// network's first request showed its offer), and hold their `kind 3` entries until the
    /// link context exists: they leave in the same flight as the gateway's protected 2.04
    /// to EAP-Success (RFC 9820 §3.3), so the devices that triggered during the gateway's
    /// authentication skip the round trip of relayed triggers. The offer is authenticated
    /// by that run (the cipher suites are bound into its key derivation, RFC 9820 §6.2) and
    /// checked again by the network (§5). Default `true`.
    pub first_batch_with_auth: bool,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            max_pending_per_device: 8,
            device_idle_timeout: Duration::from_secs(3600),
            refused_grace: Duration::from_secs(60),
            link: TransmissionParams {
                nstart: 4,
                ..TransmissionParams::default()
            },
            batch_max_delay: Duration::from_millis(500),
            separate_response_timeout: Duration::from_secs(60),
            retry_backoff_initial: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(60),
            reauth_margin: Duration::from_secs(300),
            trigger_interval: Duration::from_secs(10),
            max_triggers: 4,
            exchange_timeout: Duration::from_secs(60),
            default_session_lifetime: Duration::from_secs(8 * 3600),
            local_identity: true,
            capillary_link: TransmissionParams::default(),
            confirm_one_way: true,
            first_batch_with_auth: true,
        }
    }
}

/// Errors of the gateway API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A configuration value the gateway cannot run with (the text says which).
    #[error("invalid gateway configuration: {0}")]
    InvalidConfig(&'static str),
}
