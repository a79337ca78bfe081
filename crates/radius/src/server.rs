//! Sans-IO RADIUS server for EAP (RFC 2865, RFC 3579, RFC 5080 §2.2.2).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use capillary_secrets::{Msk, Secret};
use zeroize::Zeroizing;

use crate::crypto::{self, MaCheck};
use crate::packet::{
    Attribute, Code, DecodeError, Packet, CALLING_STATION_ID, MS_MPPE_RECV_KEY, MS_MPPE_SEND_KEY,
    NAS_IDENTIFIER, PROXY_STATE, SESSION_TIMEOUT, STATE, USER_NAME, VENDOR_MICROSOFT,
};
use crate::RadiusError;

/// A RADIUS shared secret (RFC 2865 §3): zeroized on drop, redacted in `Debug`.
#[derive(Clone, Default)]
pub struct SharedSecret(Zeroizing<Vec<u8>>);

impl SharedSecret {
    /// Wraps the secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }

    /// Reads the secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty (RFC 2865 §3 forbids that).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

impl From<Vec<u8>> for SharedSecret {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}

impl From<&[u8]> for SharedSecret {
    fn from(v: &[u8]) -> Self {
        Self::new(v)
    }
}

impl From<&str> for SharedSecret {
    fn from(v: &str) -> Self {
        Self::new(v.as_bytes())
    }
}

/// One RADIUS client (NAS), matched by source address prefix.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name for logs and for [`AccessRequest::client`].
    pub name: String,
    /// Network address; with `prefix_len` selects the source addresses of this client.
    pub addr: IpAddr,
    /// Prefix length (32 / 128 for a single host). Values above the address width are treated
    /// as the full width; [`ServerConfig::validate`] reports them.
    pub prefix_len: u8,
    /// Shared secret.
    pub secret: SharedSecret,
    /// Whether MS-MPPE keys (the MSK) may be sent to this client.
    pub trusted: bool,
}

impl ClientConfig {
    fn width(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// Whether `ip` lies in this client's prefix. IPv4-mapped IPv6 addresses match IPv4 entries.
    pub fn matches(&self, ip: IpAddr) -> bool {
        let plen = u32::from(self.prefix_len.min(self.width()));
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - plen).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - plen).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Known clients; the longest matching prefix wins.
    pub clients: Vec<ClientConfig>,
    /// How long a request is remembered for duplicate detection (RFC 5080 §2.2.2).
    pub duplicate_window: Duration,
}

impl ServerConfig {
    /// Reports empty secrets, prefix lengths wider than the address, and duplicate names.
    pub fn validate(&self) -> Result<(), RadiusError> {
        for (i, c) in self.clients.iter().enumerate() {
            if c.secret.is_empty() {
                return Err(RadiusError::InvalidConfig(format!(
                    "client {:?}: empty shared secret",
                    c.name
                )));
            }
            if c.prefix_len > c.width() {
                return Err(RadiusError::InvalidConfig(format!(
                    "client {:?}: prefix length {} exceeds {}",
                    c.name,
                    c.prefix_len,
                    c.width()
                )));
            }
            if self.clients[..i].iter().any(|o| o.name == c.name) {
                return Err(RadiusError::InvalidConfig(format!(
                    "client {:?} defined twice",
                    c.name
                )));
            }
        }
        Ok(())
    }
}

/// Identifies one request for duplicate detection (RFC 5080 §2.2.2): source address and port,
/// Identifier, Request Authenticator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestKey {
    /// Source address and port of the Access-Request.
    pub from: SocketAddr,
    /// RADIUS Identifier.
    pub identifier: u8,
    /// Request Authenticator.
    pub authenticator: [u8; 16],
}

/// A verified Access-Request carrying EAP, for the EAP layer to process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    /// Pass back to [`RadiusServer::respond`] or [`RadiusServer::forget`].
    pub key: RequestKey,
    /// Name of the matching [`ClientConfig`].
    pub client: String,
    /// Whether that client may receive MS-MPPE keys.
    pub trusted: bool,
    /// User-Name (RFC 2865 §5.1).
    pub user_name: Option<Vec<u8>>,
    /// EAP packet reassembled from the EAP-Message attributes (RFC 3579 §3.1).
    pub eap_message: Vec<u8>,
    /// State (RFC 2865 §5.24) echoed from our last Access-Challenge.
    pub state: Option<Vec<u8>>,
    /// Calling-Station-Id (RFC 2865 §5.31).
    pub calling_station_id: Option<Vec<u8>>,
    /// NAS-Identifier (RFC 2865 §5.32).
    pub nas_identifier: Option<Vec<u8>>,
}

/// What the EAP layer answers.
#[derive(Debug, Clone, Copy)]
pub enum Reply<'a> {
    /// Access-Challenge with an EAP-Request and State (RFC 3579 §2.1); Session-Timeout, if set,
    /// is the NAS's EAP retransmission timeout (RFC 3579 §2.2).
    Challenge {
        /// EAP packet (split into 253-byte EAP-Message attributes).
        eap: &'a [u8],
        /// State for the next Access-Request.
        state: &'a [u8],
        /// Session-Timeout in seconds.
        session_timeout: Option<u32>,
    },
    /// Access-Accept with EAP-Success; the MSK becomes MS-MPPE-Recv-Key = MSK[0..32] and
    /// MS-MPPE-Send-Key = MSK[32..64] (RFC 3579 §2.6.2, RFC 5216 §2.3), for trusted clients only.
    Accept {
        /// EAP packet (normally EAP-Success).
        eap: &'a [u8],
        /// Master Session Key; ignored for untrusted clients.
        msk: Option<&'a Msk>,
        /// User-Name to return (RFC 2865 §5.1), e.g. the permanent identity.
        user_name: Option<&'a [u8]>,
    },
    /// Access-Reject, normally with EAP-Failure (RFC 3579 §2.6.3).
    Reject {
        /// EAP packet, if any.
        eap: Option<&'a [u8]>,
    },
}

/// Why a datagram was silently discarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscardReason {
    /// No client is configured for the source address (RFC 2865 §3).
    #[error("unknown client")]
    UnknownClient,
    /// The packet is malformed (RFC 2865 §3, §5).
    #[error("malformed: {0}")]
    Malformed(DecodeError),
    /// The Message-Authenticator is wrong: wrong secret or tampering (RFC 3579 §3.2).
    #[error("bad Message-Authenticator")]
    BadMessageAuthenticator,
    /// EAP-Message without Message-Authenticator (RFC 3579 §3.2).
    #[error("missing Message-Authenticator")]
    MissingMessageAuthenticator,
    /// An Access-Request without EAP-Message; this server only does EAP.
    #[error("no EAP-Message")]
    MissingEapMessage,
    /// Not an Access-Request.
    #[error("unsupported code {0}")]
    UnsupportedCode(u8),
}

/// Result of [`RadiusServer::handle_datagram`].
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Drop the datagram; nothing to send.
    Discard(DiscardReason),
    /// A retransmitted request we already answered: send these bytes back to the sender.
    Retransmit(Vec<u8>),
    /// A retransmitted request still being processed: send nothing.
    InProgress,
    /// A new request for the EAP layer.
    Request(AccessRequest),
    /// A request the server answered itself (Status-Server, RFC 5997): send these bytes back.
    Reply(Vec<u8>),
}

/// Counters (monotonic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams passed to `handle_datagram`.
    pub received: u64,
    /// New Access-Requests handed to the EAP layer.
    pub requests: u64,
    /// Status-Server requests answered (RFC 5997).
    pub status_server: u64,
    /// Access-Accepts built.
    pub accepts: u64,
    /// Access-Rejects built.
    pub rejects: u64,
    /// Access-Challenges built.
    pub challenges: u64,
    /// Duplicates answered from the cache.
    pub duplicates: u64,
    /// Duplicates of requests still in progress (nothing sent).
    pub duplicates_in_progress: u64,
    /// Accepts with an MSK for an untrusted client: MPPE keys withheld.
    pub mppe_withheld: u64,
    /// Discarded: source address not configured.
    pub discarded_unknown_client: u64,
    /// Discarded: malformed packet.
    pub discarded_malformed: u64,
    /// Discarded: wrong Message-Authenticator (wrong secret or tampering).
    pub discarded_bad_authenticator: u64,
    /// Discarded: EAP-Message without Message-Authenticator.
    pub discarded_missing_message_authenticator: u64,
    /// Discarded: Access-Request without EAP-Message.
    pub discarded_missing_eap_message: u64,
    /// Discarded: code other than Access-Request.
    pub discarded_unsupported_code: u64,
}

impl Stats {
    /// Total datagrams discarded.
    pub fn discarded(&self) -> u64 {
        self.discarded_unknown_client
            + self.discarded_malformed
            + self.discarded_bad_authenticator
            + self.discarded_missing_message_authenticator
            + self.discarded_missing_eap_message
            + self.discarded_unsupported_code
    }
}

#[derive(Debug)]
enum Entry {
    InProgress {
        since: Instant,
        /// Proxy-State values to echo in the reply (RFC 2865 §5.33).
        proxy_state: Vec<Vec<u8>>,
    },
    Answered {
        at: Instant,
        bytes: Vec<u8>,
    },
}

#[derive(Debug)]
struct Cached {
    authenticator: [u8; 16],
    entry: Entry,
}

/// Cache size above which `handle_datagram` purges expired entries by itself.
const AUTO_EXPIRE_THRESHOLD: usize = 4096;

/// The RADIUS server state machine. See the crate docs.
#[derive(Debug)]
pub struct RadiusServer {
    clients: Vec<ClientConfig>,
    window: Duration,
    cache: HashMap<(SocketAddr, u8), Cached>,
    stats: Stats,
}

impl RadiusServer {
    /// Builds a server. Call [`ServerConfig::validate`] first to reject bad configurations.
    pub fn new(cfg: ServerConfig) -> Self {
        Self {
            clients: cfg.clients,
            window: cfg.duplicate_window,
            cache: HashMap::new(),
            stats: Stats::default(),
        }
    }

    /// The client for a source address: longest matching prefix.
    fn client_for(&self, ip: IpAddr) -> Option<&ClientConfig> {
        self.clients
            .iter()
            .filter(|c| c.matches(ip))
            .max_by_key(|c| c.prefix_len.min(c.width()))
    }

    /// Status-Server (RFC 5997 §3): authenticated by its Message-Authenticator, which it must
    /// carry; answered with an Access-Accept carrying only a Message-Authenticator. It never
    /// reaches the EAP layer and creates no state, so it needs no duplicate detection.
    fn status_server(&mut self, secret: &SharedSecret, packet: &Packet, bytes: &[u8]) -> Incoming {
        match crypto::check_ma(secret.expose(), &packet.authenticator, bytes) {
            MaCheck::Valid => {}
            MaCheck::Absent => return self.discard(DiscardReason::MissingMessageAuthenticator),
            MaCheck::Invalid => return self.discard(DiscardReason::BadMessageAuthenticator),
        }
        let reply = Packet {
            code: Code::Accept,
            identifier: packet.identifier,
            authenticator: [0; 16],
            attributes: Vec::new(),
        };
        match crypto::sign_response(secret.expose(), &packet.authenticator, &reply) {
            Ok(bytes) => {
                self.stats.status_server += 1;
                Incoming::Reply(bytes)
            }
            Err(_) => self.discard(DiscardReason::UnsupportedCode(packet.code.to_u8())),
        }
    }

    fn discard(&mut self, reason: DiscardReason) -> Incoming {
        let s = &mut self.stats;
        match &reason {
            DiscardReason::UnknownClient => s.discarded_unknown_client += 1,
            DiscardReason::Malformed(_) => s.discarded_malformed += 1,
            DiscardReason::BadMessageAuthenticator => s.discarded_bad_authenticator += 1,
            DiscardReason::MissingMessageAuthenticator => {
                s.discarded_missing_message_authenticator += 1
            }
            DiscardReason::MissingEapMessage => s.discarded_missing_eap_message += 1,
            DiscardReason::UnsupportedCode(_) => s.discarded_unsupported_code += 1,
        }
        Incoming::Discard(reason)
    }

    /// Processes one received datagram (RFC 2865 §3, RFC 3579 §3, RFC 5080 §2.2.2).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Incoming {
        self.stats.received += 1;
        if self.cache.len() > AUTO_EXPIRE_THRESHOLD {
            self.expire(now);
        }
        let Some(client) = self.client_for(from.ip()) else {
            return self.discard(DiscardReason::UnknownClient);
        };
        let secret = client.secret.clone();
        let name = client.name.clone();
        let trusted = client.trusted;

        let packet = match Packet::parse(bytes) {
            Ok(p) => p,
            Err(e) => return self.discard(DiscardReason::Malformed(e)),
        };
        if packet.code == Code::StatusServer {
            return self.status_server(&secret, &packet, bytes);
        }
        if packet.code != Code::AccessRequest {
            return self.discard(DiscardReason::UnsupportedCode(packet.code.to_u8()));
        }
        let eap = match packet.eap_message() {
            Ok(Some(e)) => e,
            Ok(None) => return self.discard(DiscardReason::MissingEapMessage),
            Err(e) => return self.discard(DiscardReason::Malformed(e)),
        };
        match crypto::check_ma(secret.expose(), &packet.authenticator, bytes) {
            MaCheck::Valid => {}
            MaCheck::Absent => return self.discard(DiscardReason::MissingMessageAuthenticator),
            MaCheck::Invalid => return self.discard(DiscardReason::BadMessageAuthenticator),
        }

        let key = RequestKey {
            from,
            identifier: packet.identifier,
            authenticator: packet.authenticator,
        };
        if let Some(c) = self.cache.get(&(from, packet.identifier)) {
            if c.authenticator == packet.authenticator {
                match &c.entry {
                    Entry::InProgress { .. } => {
                        self.stats.duplicates_in_progress += 1;
                        return Incoming::InProgress;
                    }
                    Entry::Answered { at, bytes }
                        if now.saturating_duration_since(*at) <= self.window =>
                    {
                        self.stats.duplicates += 1;
                        return Incoming::Retransmit(bytes.clone());
                    }
                    _ => {}
                }
            }
        }
        self.cache.insert(
            (from, packet.identifier),
            Cached {
                authenticator: packet.authenticator,
                entry: Entry::InProgress {
                    since: now,
                    proxy_state: packet
                        .attributes_of(PROXY_STATE)
                        .map(<[u8]>::to_vec)
                        .collect(),
                },
            },
        );
        self.stats.requests += 1;
        Incoming::Request(AccessRequest {
            key,
            client: name,
            trusted,
            user_name: packet.attribute(USER_NAME).map(<[u8]>::to_vec),
            eap_message: eap,
            state: packet.attribute(STATE).map(<[u8]>::to_vec),
            calling_station_id: packet.attribute(CALLING_STATION_ID).map(<[u8]>::to_vec),
            nas_identifier: packet.attribute(NAS_IDENTIFIER).map(<[u8]>::to_vec),
        })
    }

    /// Builds, signs and caches the reply for a request previously returned as
    /// [`Incoming::Request`]. Every reply carries a Message-Authenticator (RFC 3579 §3.2) and a
    /// Response Authenticator (RFC 2865 §3).
    ///
    /// `salt` seeds the MS-MPPE salts (RFC 2548 §2.4.2): the Recv-Key uses `salt` with the high
    /// bit set, the Send-Key the same with the lowest bit flipped, so the two are distinct.
    /// Pass fresh random bytes.
    pub fn respond(
        &mut self,
        now: Instant,
        key: &RequestKey,
        reply: Reply<'_>,
        salt: [u8; 2],
    ) -> Result<Vec<u8>, RadiusError> {
        let mut proxy_state: Vec<Vec<u8>> = Vec::new();
        if let Some(c) = self.cache.get(&(key.from, key.identifier)) {
            if c.authenticator != key.authenticator {
                return Err(RadiusError::Superseded);
            }
            match &c.entry {
                Entry::Answered { .. } => return Err(RadiusError::AlreadyAnswered),
                Entry::InProgress {
                    proxy_state: ps, ..
                } => proxy_state.clone_from(ps),
            }
        }
        let client = self
            .client_for(key.from.ip())
            .ok_or(RadiusError::UnknownClient)?;
        let secret = client.secret.clone();
        let trusted = client.trusted;

        let mut p = Packet {
            code: Code::Reject,
            identifier: key.identifier,
            authenticator: key.authenticator,
            attributes: Vec::new(),
        };
        let mut withheld = false;
        match reply {
            Reply::Challenge {
                eap,
                state,
                session_timeout,
            } => {
                p.code = Code::Challenge;
                p.push_eap_message(eap);
                if !state.is_empty() {
                    p.attributes.push(Attribute::new(STATE, state));
                }
                if let Some(t) = session_timeout {
                    p.attributes
                        .push(Attribute::new(SESSION_TIMEOUT, t.to_be_bytes()));
                }
            }
            Reply::Accept {
                eap,
                msk,
                user_name,
            } => {
                p.code = Code::Accept;
                if let Some(u) = user_name {
                    p.attributes.push(Attribute::new(USER_NAME, u));
                }
                p.push_eap_message(eap);
                if let Some(msk) = msk {
                    if trusted {
                        let m = msk.expose();
                        let recv_salt = [salt[0] | 0x80, salt[1]];
                        let send_salt = [recv_salt[0], recv_salt[1] ^ 1];
                        let ra = &key.authenticator;
                        let s = secret.expose();
                        let recv = crypto::encrypt_mppe_key(s, ra, recv_salt, &m[..32])?;
                        let send = crypto::encrypt_mppe_key(s, ra, send_salt, &m[32..64])?;
                        p.attributes.push(Attribute::vendor_specific(
                            VENDOR_MICROSOFT,
                            MS_MPPE_RECV_KEY,
                            &recv,
                        )?);
                        p.attributes.push(Attribute::vendor_specific(
                            VENDOR_MICROSOFT,
                            MS_MPPE_SEND_KEY,
                            &send,
                        )?);
                    } else {
                        withheld = true;
                    }
                }
            }
            Reply::Reject { eap } => {
                if let Some(e) = eap {
                    p.push_eap_message(e);
                }
            }
        }
        for ps in proxy_state {
            p.attributes.push(Attribute::new(PROXY_STATE, ps));
        }
        let bytes = crypto::sign_response(secret.expose(), &key.authenticator, &p)?;

        let s = &mut self.stats;
        match p.code {
            Code::Accept => s.accepts += 1,
            Code::Challenge => s.challenges += 1,
            _ => s.rejects += 1,
        }
        if withheld {
            s.mppe_withheld += 1;
        }
        self.cache.insert(
            (key.from, key.identifier),
            Cached {
                authenticator: key.authenticator,
                entry: Entry::Answered {
                    at: now,
                    bytes: bytes.clone(),
                },
            },
        );
        Ok(bytes)
    }

    /// Drops an in-progress entry (the driver gave up on this request). A later retransmission
    /// is then treated as a new request. Answered entries are kept.
    pub fn forget(&mut self, key: &RequestKey) {
        let k = (key.from, key.identifier);
        if let Some(c) = self.cache.get(&k) {
            if c.authenticator == key.authenticator && matches!(c.entry, Entry::InProgress { .. }) {
                self.cache.remove(&k);
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Purges answered entries older than the window. In-progress entries are kept until twice
    /// the window (retransmissions meanwhile get [`Incoming::InProgress`]); `respond` still
    /// works after they are purged.
    pub fn expire(&mut self, now: Instant) {
        let w = self.window;
        self.cache.retain(|_, c| match &c.entry {
            Entry::InProgress { since, .. } => {
                now.saturating_duration_since(*since) <= w.saturating_mul(2)
            }
            Entry::Answered { at, .. } => now.saturating_duration_since(*at) <= w,
        });
    }

    /// Number of entries in the duplicate cache.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }
}
