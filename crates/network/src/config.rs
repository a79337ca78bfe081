//! Configuration of the network side (`capillary core`), read from TOML.
//!
//! Every field has a default, so an empty file (or none) is a valid configuration: the embedded
//! SQLite store under the data directory and RADIUS on 127.0.0.1:1812 for loopback clients.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

/// Why a configuration was refused. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML did not parse or had an unknown or ill-typed field.
    #[error("configuration: {0}")]
    Toml(#[from] toml::de::Error),
    /// A RADIUS client entry is unusable.
    #[error("radius.client {name:?}: {problem}")]
    Client {
        /// The entry's name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Some other field is out of range.
    #[error("{field}: {problem}")]
    Invalid {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CoreConfig {
    /// Directory of the embedded store (and generated secrets). Default: platform data dir.
    pub data_dir: Option<PathBuf>,
    /// RADIUS front end.
    pub radius: RadiusConfig,
    /// EAP-AKA' server policy.
    pub eap: EapConfig,
    /// Authentication centre.
    pub auc: AucConfig,
    /// The embedded SQLite store.
    pub store: StoreConfig,
    /// hostapd's hlr_auc_gw vector interface (off unless a socket is given).
    pub hlr_auc_gw: HlrAucGwConfig,
    /// The gateway link (docs/PROTOCOL.md): CoAP-EAP and relayed devices from MTC gateways.
    pub link: LinkSection,
    /// Northbound delivery to MTC servers (HTTP API, webhook, JSON lines, MQTT); off unless
    /// configured.
    pub northbound: crate::northbound::NorthboundConfig,
}

/// `[link]`: where MTC gateways reach the network side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkSection {
    /// UDP address of the gateway link; off when absent. `capillary core` without a
    /// configuration file listens on 127.0.0.1:5683.
    pub listen: Option<SocketAddr>,
    /// Session-Lifetime given to gateways and devices (RFC 9820 §5.1), seconds.
    pub session_lifetime_secs: u32,
    /// Fast re-authentication of devices, contexts in memory (PROTOCOL.md §6.1).
    pub fast_reauth: bool,
    /// Vectors prefetched when a gateway authenticates (PROTOCOL.md §6.2).
    pub prefetch_vectors: bool,
}

impl Default for LinkSection {
    fn default() -> Self {
        Self {
            listen: None,
            session_lifetime_secs: 24 * 3600,
            fast_reauth: true,
            prefetch_vectors: true,
        }
    }
}

/// `[hlr_auc_gw]`: serve authentication vectors to hostapd (`eap_sim_db=unix:<socket>`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HlrAucGwConfig {
    /// Path of the Unix datagram socket to create.
    pub socket: Option<PathBuf>,
}

/// `[radius]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RadiusConfig {
    /// Address to listen on. Default 127.0.0.1:1812.
    pub listen: SocketAddr,
    /// Clients (NAS / authenticators). When empty, loopback clients are accepted with the secret
    /// kept in `<data_dir>/radius-secret` (generated on first start).
    pub client: Vec<RadiusClientConfig>,
    /// Seconds a reply is kept to answer a retransmitted request (RFC 5080 §2.2.2).
    pub duplicate_window_secs: u64,
    /// Seconds an unfinished EAP session is kept.
    pub session_timeout_secs: u64,
}

impl Default for RadiusConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 1812)),
            client: Vec::new(),
            duplicate_window_secs: 30,
            session_timeout_secs: 60,
        }
    }
}

/// `[[radius.client]]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RadiusClientConfig {
    /// Name used in logs.
    pub name: String,
    /// Address or prefix, e.g. `127.0.0.1` or `10.0.0.0/8`.
    pub address: String,
    /// Shared secret (RFC 2865 §3).
    pub secret: String,
    /// Whether this client is an authenticator trusted with the MSK (MS-MPPE keys, RFC 2548).
    #[serde(default)]
    pub trusted: bool,
}

impl std::fmt::Debug for RadiusClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadiusClientConfig")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("secret", &"..")
            .field("trusted", &self.trusted)
            .finish()
    }
}

impl Drop for RadiusClientConfig {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl RadiusClientConfig {
    /// Parses `address` as `IP` or `IP/len`.
    pub fn prefix(&self) -> Result<(IpAddr, u8), ConfigError> {
        let bad = |problem: String| ConfigError::Client {
            name: self.name.clone(),
            problem,
        };
        let (ip, len) = match self.address.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (self.address.as_str(), None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| bad(format!("address {:?} is not an IP", self.address)))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| bad(format!("prefix length must be 0..={max}")))?,
            None => max,
        };
        if self.secret.is_empty() {
            return Err(bad("secret must not be empty".into()));
        }
        Ok((ip, len))
    }
}

/// `[eap]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EapConfig {
    /// Access network identity sent in AT_KDF_INPUT and bound into CK'/IK' (RFC 9048 §3.1).
    pub network_name: String,
    /// Issue pseudonyms (AT_NEXT_PSEUDONYM, RFC 4187 §4.1.1.7).
    pub pseudonyms: bool,
    /// Offer fast re-authentication (AT_NEXT_REAUTH_ID, RFC 4187 §5).
    pub fast_reauth: bool,
    /// Fast re-authentications allowed before a full one is required.
    pub max_reauth: u16,
    /// Use protected result indications (AT_RESULT_IND, RFC 4187 §6.2).
    pub result_indication: bool,
    /// Where the pseudonyms and fast re-authentication contexts issued on the RADIUS path
    /// live: `"store"` (default) or `"memory"`.
    pub identity_store: IdentityStore,
}

/// `[eap] identity_store`: where issued pseudonyms and fast re-authentication contexts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum IdentityStore {
    /// Rows in the subscriber store, committed before the challenge or success that names them
    /// leaves the process. They survive a restart and are shared by every instance using the
    /// same store. Costs a store write (WAL pages under random keys) per full authentication.
    /// Required when several instances serve the same subscribers (a peer may come back to
    /// another instance).
    #[default]
    Store,
    /// Tables in this process only, as hostapd keeps them: one re-authentication context and
    /// at most two pseudonyms per subscriber, no store write besides the SQN. A restart (or
    /// another instance) loses them, which the protocol absorbs: an unknown pseudonym or
    /// re-authentication identity makes the server ask for the permanent identity (RFC 4187
    /// §4.1.4, RFC 9048 §3), then a full authentication follows. Counters die with their
    /// context, so none can be reused. Costs privacy (one more permanent identity in clear
    /// after each restart) and one more round trip and SQN for peers that come back after it.
    /// Single-instance deployments only.
    Memory,
}

impl Default for EapConfig {
    fn default() -> Self {
        Self {
            network_name: "WLAN".into(),
            pseudonyms: true,
            fast_reauth: true,
            max_reauth: 16,
            result_indication: false,
            identity_store: IdentityStore::Store,
        }
    }
}

/// `[store]`: the embedded SQLite store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Group-commit delay, microseconds: under sustained load the store's writer waits this
    /// long once before committing a group, so that more writes share its WAL pages and fsync
    /// (less CPU per authentication, up to this much more latency per store write; results
    /// are still answered only after the commit). 0 turns it off. Default 500, at most 10,000.
    pub group_linger_us: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            group_linger_us: 500,
        }
    }
}

/// `[auc]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AucConfig {
    /// IND lane of this instance (TS 33.102 Annex C.1.2): SQNs it allocates carry this IND.
    pub ind: u32,
    /// SQNs allocated ahead, per subscriber seen again within 2 s, on the RADIUS path
    /// (0 = off, the default). Saves store work under load, but a subscriber barred or
    /// removed meanwhile can still be served from the stock for up to 2 s.
    pub prefetch: u32,
}

impl CoreConfig {
    /// Parses and checks a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text)?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks cross-field constraints.
    pub fn check(&self) -> Result<(), ConfigError> {
        for c in &self.radius.client {
            c.prefix()?;
        }
        if self.eap.network_name.is_empty() || self.eap.network_name.len() > 255 {
            return Err(ConfigError::Invalid {
                field: "eap.network_name",
                problem: "must be 1 to 255 bytes (RFC 9048 §3.1)".into(),
            });
        }
        if self.auc.prefetch > 1024 {
            return Err(ConfigError::Invalid {
                field: "auc.prefetch",
                problem: "must be at most 1024".into(),
            });
        }
        if self.store.group_linger_us > 10_000 {
            return Err(ConfigError::Invalid {
                field: "store.group_linger_us",
                problem: "must be at most 10000 (10 ms)".into(),
            });
        }
        if self.auc.ind >= 32 {
            return Err(ConfigError::Invalid {
                field: "auc.ind",
                problem: "must be below 2^ind_len = 32 (TS 33.102 Annex C.3.4)".into(),
            });
        }
        self.northbound.validate().map_err(|e| match e {
            crate::northbound::NorthboundError::Invalid { field, problem } => {
                ConfigError::Invalid { field, problem }
            }
            other => ConfigError::Invalid {
                field: "northbound",
                problem: other.to_string(),
            },
        })?;
        if self.northbound.is_enabled() && self.link.listen.is_none() {
            return Err(ConfigError::Invalid {
                field: "northbound",
                problem: "needs [link] listen (uplinks come from the gateway link)".into(),
            });
        }
        if self.radius.duplicate_window_secs == 0 || self.radius.session_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "radius",
                problem: "duplicate_window_secs and session_timeout_secs must be positive".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let cfg = CoreConfig::from_toml("").unwrap();
        assert_eq!(cfg.radius.listen, SocketAddr::from(([127, 0, 0, 1], 1812)));
        assert_eq!(cfg.eap.network_name, "WLAN");
        assert!(cfg.radius.client.is_empty());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = CoreConfig::from_toml("[radius]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn bad_client_is_named() {
        let text = "[[radius.client]]\nname = \"ap1\"\naddress = \"10.0.0.0/33\"\nsecret = \"s\"\n";
        let err = CoreConfig::from_toml(text).unwrap_err().to_string();
        assert!(err.contains("ap1") && err.contains("prefix"), "{err}");
        let text = "[[radius.client]]\nname = \"ap2\"\naddress = \"10.0.0.1\"\nsecret = \"\"\n";
        assert!(CoreConfig::from_toml(text)
            .unwrap_err()
            .to_string()
            .contains("secret"));
    }

    #[test]
    fn debug_hides_client_secret() {
        let text = "[[radius.client]]\nname = \"ap\"\naddress = \"::1\"\nsecret = \"hunter2\"\n";
        let cfg = CoreConfig::from_toml(text).unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert_eq!(cfg.radius.client[0].prefix().unwrap().1, 128);
    }

    #[test]
    fn identity_store_is_store_unless_memory_is_asked() {
        assert_eq!(
            CoreConfig::from_toml("").unwrap().eap.identity_store,
            IdentityStore::Store
        );
        let cfg = CoreConfig::from_toml("[eap]\nidentity_store = \"memory\"\n").unwrap();
        assert_eq!(cfg.eap.identity_store, IdentityStore::Memory);
        assert!(CoreConfig::from_toml("[eap]\nidentity_store = \"disk\"\n").is_err());
    }

    #[test]
    fn group_linger_defaults_to_500_us_and_is_bounded() {
        assert_eq!(
            CoreConfig::from_toml("").unwrap().store.group_linger_us,
            500
        );
        assert_eq!(
            CoreConfig::from_toml("[store]\ngroup_linger_us = 0\n")
                .unwrap()
                .store
                .group_linger_us,
            0
        );
        assert!(CoreConfig::from_toml("[store]\ngroup_linger_us = 10001\n").is_err());
    }

    #[test]
    fn ind_lane_is_bounded() {
        assert!(CoreConfig::from_toml("[auc]\nind = 32\n").is_err());
        assert_eq!(
            CoreConfig::from_toml("[auc]\nind = 31\n").unwrap().auc.ind,
            31
        );
    }
}
