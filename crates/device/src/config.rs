//! Device configuration.

use capillary_aka::vector::UsimConfig;
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
}

impl DeviceConfig {
    /// Defaults: realm [`DEFAULT_REALM`], network name [`DEFAULT_NETWORK_NAME`], default
    /// USIM parameters (IND 5 bits, Δ = 2^28, no L), and `rid_i` from [`rid_i_from_imsi`].
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
/// RID-I only has to differ from the network's RID-C (RFC 9820 §5.1): the network finds a
/// device's context by its IMSI, not by the OSCORE ID, so collisions between devices are
/// harmless. Deriving it from the IMSI keeps the device deterministic.
pub fn rid_i_from_imsi(imsi: &Imsi) -> Vec<u8> {
    let digits = imsi.as_str().as_bytes();
    let tail = &digits[digits.len().saturating_sub(4)..];
    let v = tail.iter().fold(0u16, |acc, d| {
        acc.wrapping_mul(10)
            .wrapping_add(u16::from(d.wrapping_sub(b'0')))
    });
    v.to_be_bytes().to_vec()
}
