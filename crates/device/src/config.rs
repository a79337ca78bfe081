//! Device configuration.

use std::time::Duration;

use capillary_aka::vector::UsimConfig;
use capillary_coap::reliability::TransmissionParams;
use capillary_secrets::{Imsi, Opc, K};

/// Default EAP realm (TS 23.003 §14.2 form for MCC 001 / MNC 01, the test network).
pub const DEFAULT_REALM: &str = "wlan.mnc001.mcc001.3gppnetwork.org";

/// Default EAP-AKA' access network name, AT_KDF_INPUT (RFC 9048 §3.1, TS 24.302 §8.1.1).
pub const DEFAULT_NETWORK_NAME: &str = "WLAN";

/// Longest RID-I (OSCORE Recipient ID) usable with cipher suite 0, AES-CCM-16-64-128
/// (RFC 8613 §3.3: nonce length 13 − 6).
pub const MAX_RID_LEN: usize = 7;

/// What a device needs: its subscription (IMSI, K, OPc, USIM parameters), its EAP identity
/// realm, the access network name it expects, and its OSCORE Recipient ID.
///
/// `Debug` does not print K or OPc (their types redact themselves).
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// IMSI; the EAP identity is `6<IMSI>@<realm>` (RFC 9048 §3.1).
    pub imsi: Imsi,
    /// Subscriber key K (TS 33.102 §6.3).
    pub k: K,
    /// OPc (TS 35.206 §4.1).
    pub opc: Opc,
    /// Sequence-number check parameters of the soft USIM (TS 33.102 Annex C).
    pub usim: UsimConfig,
    /// Realm of the EAP identity; empty means no `@realm`.
    pub realm: String,
    /// Expected access network name in AT_KDF_INPUT (RFC 9048 §3.1); empty accepts any.
    pub network_name: String,
    /// RID-I: the OSCORE Recipient ID this device announces (RFC 9820 §5.1), at most
    /// [`MAX_RID_LEN`] bytes.
    pub rid_i: Vec<u8>,
    /// CoAP transmission parameters of the device's own requests (uplinks: ACK_TIMEOUT,
    /// ACK_RANDOM_FACTOR, MAX_RETRANSMIT, NSTART) and of its duplicate detection
    /// (EXCHANGE_LIFETIME). Default: RFC 7252 §4.8 (ACK_TIMEOUT 2 s, MAX_RETRANSMIT 4). On
    /// a link whose round trip approaches ACK_TIMEOUT (NB-IoT), raise it (RFC 7252 §4.8
    /// lets the application environment choose).
    pub transmission: TransmissionParams,
    /// CoAP-EAP (RFC 9820 §3.2): wait this long for the first request after a trigger
    /// before sending it again. Default 10 s.
    pub trigger_interval: Duration,
    /// Triggers sent before the authentication fails as unresponsive. Default 4.
    pub max_triggers: u32,
    /// CoAP-EAP: time to wait for the network's next request during an authentication
    /// before giving up. Default 60 s.
    pub exchange_timeout: Duration,
}

impl DeviceConfig {
    /// Defaults: realm [`DEFAULT_REALM`], network name [`DEFAULT_NETWORK_NAME`], default
    /// USIM parameters (IND 5 bits, Δ = 2^28, no L), `rid_i` from [`rid_i_from_imsi`], the
    /// RFC 7252 transmission parameters and the CoAP-EAP timers of
    /// [`capillary_coap_eap::PeerConfig::new`] (trigger every 10 s, 4 triggers, 60 s
    /// exchange timeout).
    pub fn new(imsi: Imsi, k: K, opc: Opc) -> Self {
        let rid_i = rid_i_from_imsi(&imsi);
        Self {
            imsi,
            k,
            opc,
            usim: UsimConfig::default(),
            realm: DEFAULT_REALM.to_owned(),
            network_name: DEFAULT_NETWORK_NAME.to_owned(),
            rid_i,
            transmission: TransmissionParams::default(),
            trigger_interval: Duration::from_secs(10),
            max_triggers: 4,
            exchange_timeout: Duration::from_secs(60),
        }
    }

    /// The permanent EAP-AKA' identity `6<IMSI>@<realm>` (RFC 9048 §3.1).
    pub fn permanent_identity(&self) -> String {
        if self.realm.is_empty() {
            format!("6{}", self.imsi)
        } else {
            format!("6{}@{}", self.imsi, self.realm)
        }
    }
}

/// Capillary's default RID-I: the last four IMSI digits as a big-endian `u16` (2 bytes,
/// e.g. IMSI `001010000000001` → `00 01`).
///
/// RID-I must differ from the network's RID-C (RFC 9820 §5.1). After a gateway restart the
/// network finds a device's context by this ID (the OSCORE `kid`, docs/PROTOCOL.md §4), so
/// it should be unique among the devices behind one gateway; a collision only costs a
/// failed verification. Deriving it from the IMSI keeps the device deterministic.
pub fn rid_i_from_imsi(imsi: &Imsi) -> Vec<u8> {
    let digits = imsi.as_str().as_bytes();
    let tail = &digits[digits.len().saturating_sub(4)..];
    let v = tail.iter().fold(0u16, |acc, d| {
        acc.wrapping_mul(10)
            .wrapping_add(u16::from(d.wrapping_sub(b'0')))
    });
    v.to_be_bytes().to_vec()
}
