//! The RADIUS / EAP-AKA' driver: one UDP socket, one sans-IO RADIUS server, one sans-IO
//! EAP-AKA' server per conversation (keyed by the RADIUS State attribute), the AuC and the store.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capillary_eap::server::{
    EapAkaServer, FailureReason, IdentityKind, Method, ReauthContext, RejectReason, ServerConfig,
    ServerEvent, VectorInput,
};
use capillary_radius::{AccessRequest, ClientConfig, Incoming, RadiusServer, Reply};
use capillary_store::{ReauthRecord, SqliteStore, StoreError, SubscriberStore};
use rand::RngCore;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::auc::{Auc, AucError};
use crate::config::CoreConfig;

/// Why the network side could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// No data directory was configured.
    #[error("no data directory configured")]
    NoDataDir,
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A northbound sink could not start.
    #[error(transparent)]
    Northbound(#[from] crate::northbound::NorthboundError),
    /// The RADIUS client list is unusable.
    #[error("radius: {0}")]
    Radius(#[from] capillary_radius::RadiusError),
    /// A socket or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Io { what, source }
}

/// Unfinished conversations kept at most; beyond it new ones are refused (memory bound).
const MAX_SESSIONS: usize = 100_000;

/// Runs the network side with the embedded SQLite store until SIGINT/SIGTERM. Prints
/// `radius-listen=<addr>` on stdout once the socket is bound (for scripts and tests).
pub async fn run(cfg: CoreConfig) -> Result<(), NetworkError> {
    cfg.check()?;
    let data_dir = cfg.data_dir.clone().ok_or(NetworkError::NoDataDir)?;
    create_private_dir(&data_dir).map_err(io(format!(
        "creating data directory {}",
        data_dir.display()
    )))?;
    let db = data_dir.join("subscribers.db");
    let store = SqliteStore::open(&db)?;
    info!(store = %db.display(), "subscriber store opened");
    let handle = run_with_store(cfg, Arc::new(store)).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "radius-listen={}", handle.local_addr);
        if let Some(link) = &handle.link {
            let _ = writeln!(out, "link-listen={}", link.local_addr);
        }
        if let Some(addr) = handle.northbound.as_ref().and_then(|n| n.http_addr()) {
            let _ = writeln!(out, "northbound-http={addr}");
        }
        let _ = out.flush();
    }
    wait_for_signal().await;
    info!("shutting down");
    handle.stop().await;
    Ok(())
}

/// Creates the data directory (and parents) accessible to its owner only, if it is missing.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A running network side.
#[derive(Debug)]
pub struct CoreHandle {
    /// The bound RADIUS address.
    pub local_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    core: Arc<Core>,
    /// The gateway link, when `[link] listen` is set.
    pub link: Option<crate::link_driver::LinkHandle>,
    /// Northbound delivery, when configured.
    pub northbound: Option<crate::northbound::NorthboundHandle>,
}

impl CoreHandle {
    /// RADIUS counters so far.
    pub fn radius_stats(&self) -> capillary_radius::Stats {
        lock(&self.core.radius).stats().clone()
    }

    /// Stops the receive loop and the housekeeping task; logs the counters.
    pub async fn stop(mut self) {
        if let Some(nb) = self.northbound.take() {
            nb.stop().await;
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        info!(stats = ?lock(&self.core.radius).stats(), "RADIUS counters");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take the server down with it: the data stays usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Session {
    eap: EapAkaServer,
    client: String,
}

struct SessionSlot {
    session: Arc<tokio::sync::Mutex<Session>>,
    last: Instant,
}

struct Core {
    radius: Mutex<RadiusServer>,
    sessions: Mutex<HashMap<[u8; 16], SessionSlot>>,
    auc: Auc,
    eap: ServerConfig,
    socket: UdpSocket,
    session_timeout: Duration,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

fn radius_clients(cfg: &CoreConfig) -> Result<Vec<ClientConfig>, NetworkError> {
    if cfg.radius.client.is_empty() {
        let dir: PathBuf = cfg.data_dir.clone().ok_or(NetworkError::NoDataDir)?;
        create_private_dir(&dir)
            .map_err(io(format!("creating data directory {}", dir.display())))?;
        let secret = crate::secret_file::load_or_create(&dir).map_err(io(format!(
            "reading {}",
            dir.join("radius-secret").display()
        )))?;
        info!(file = %dir.join("radius-secret").display(), "no RADIUS clients configured: accepting loopback clients with the generated secret");
        // The loopback authenticator is the operator's own: it is trusted with the MSK.
        return Ok(vec![
            ClientConfig {
                name: "loopback".into(),
                addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                prefix_len: 8,
                secret: capillary_radius::SharedSecret::new(secret.to_vec()),
                trusted: true,
            },
            ClientConfig {
                name: "loopback6".into(),
                addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                prefix_len: 128,
                secret: capillary_radius::SharedSecret::new(secret.to_vec()),
                trusted: true,
            },
        ]);
    }
    cfg.radius
        .client
        .iter()
        .map(|c| {
            let (addr, prefix_len) = c.prefix()?;
            Ok(ClientConfig {
                name: c.name.clone(),
                addr,
                prefix_len,
                secret: capillary_radius::SharedSecret::new(c.secret.as_bytes().to_vec()),
                trusted: c.trusted,
            })
        })
        .collect()
}

/// Starts the network side over `store` and returns once the socket is bound.
pub async fn run_with_store(
    cfg: CoreConfig,
    store: Arc<dyn SubscriberStore>,
) -> Result<CoreHandle, NetworkError> {
    cfg.check()?;
    let clients = radius_clients(&cfg)?;
    let socket = UdpSocket::bind(cfg.radius.listen)
        .await
        .map_err(io(format!("binding RADIUS socket {}", cfg.radius.listen)))?;
    let local_addr = socket
        .local_addr()
        .map_err(io("reading the bound address"))?;
    let radius_cfg = capillary_radius::ServerConfig {
        clients,
        duplicate_window: Duration::from_secs(cfg.radius.duplicate_window_secs),
    };
    radius_cfg.validate()?;
    let radius = RadiusServer::new(radius_cfg);
    let eap = ServerConfig {
        network_name: cfg.eap.network_name.clone(),
        pseudonyms: cfg.eap.pseudonyms,
        fast_reauth: cfg.eap.fast_reauth,
        max_reauth: cfg.eap.max_reauth,
        result_indication: cfg.eap.result_indication,
        ..ServerConfig::default()
    };
    let core = Arc::new(Core {
        radius: Mutex::new(radius),
        sessions: Mutex::new(HashMap::new()),
        auc: Auc::new(store, cfg.auc.ind),
        eap,
        socket,
        session_timeout: Duration::from_secs(cfg.radius.session_timeout_secs),
    });
    info!(%local_addr, network_name = %cfg.eap.network_name, ind = cfg.auc.ind, "RADIUS server listening");
    let mut tasks = vec![
        tokio::spawn(receive_loop(core.clone())),
        tokio::spawn(housekeeping(core.clone())),
    ];
    if let Some(path) = &cfg.hlr_auc_gw.socket {
        let task = crate::hlr_auc_gw::serve(path.clone(), core.auc.clone())
            .await
            .map_err(io(format!("binding hlr_auc_gw socket {}", path.display())))?;
        tasks.push(task);
    }
    let mut link = None;
    if let Some(listen) = cfg.link.listen {
        let link_cfg = crate::link::LinkConfig {
            eap: capillary_eap::server::ServerConfig {
                network_name: cfg.eap.network_name.clone(),
                pseudonyms: false,
                fast_reauth: false,
                ..capillary_eap::server::ServerConfig::default()
            },
            session_lifetime_secs: cfg.link.session_lifetime_secs,
            ..crate::link::LinkConfig::default()
        };
        let (handle, task) = crate::link_driver::spawn(listen, link_cfg, core.auc.clone())
            .await
            .map_err(io(format!("binding the gateway link {listen}")))?;
        tasks.push(task);
        link = Some(handle);
    }
    let mut northbound = None;
    if let (Some(l), true) = (&link, cfg.northbound.is_enabled()) {
        northbound = Some(crate::northbound::spawn(cfg.northbound.clone(), l.clone()).await?);
    }
    Ok(CoreHandle {
        local_addr,
        tasks,
        core,
        link,
        northbound,
    })
}

async fn housekeeping(core: Arc<Core>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_purge = Instant::now();
    loop {
        tick.tick().await;
        if last_purge.elapsed() >= Duration::from_secs(60) {
            last_purge = Instant::now();
            // Pseudonyms and re-authentication records the peer never used expire here.
            match core.auc.store().purge_expired(unix_now()).await {
                Ok(0) => {}
                Ok(purged) => debug!(
                    purged,
                    "expired pseudonyms and re-authentication records purged"
                ),
                Err(e) => warn!(error = %e, "purging expired identities failed"),
            }
        }
        let now = Instant::now();
        lock(&core.radius).expire(now);
        let timeout = core.session_timeout;
        let mut sessions = lock(&core.sessions);
        let before = sessions.len();
        sessions.retain(|_, slot| now.duration_since(slot.last) < timeout);
        if sessions.len() != before {
            debug!(
                expired = before - sessions.len(),
                "unfinished EAP sessions dropped"
            );
        }
    }
}

async fn receive_loop(core: Arc<Core>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match core.socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "RADIUS receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let incoming = lock(&core.radius).handle_datagram(Instant::now(), from, &buf[..n]);
        match incoming {
            Incoming::Discard(reason) => {
                debug!(%from, reason = ?reason, "RADIUS packet discarded");
            }
            Incoming::Retransmit(bytes) => {
                debug!(%from, "duplicate request: cached reply resent");
                if let Err(e) = core.socket.send_to(&bytes, from).await {
                    warn!(%from, error = %e, "RADIUS send failed");
                }
            }
            Incoming::InProgress => debug!(%from, "duplicate request still being processed"),
            Incoming::Request(req) => {
                let core = core.clone();
                tokio::spawn(async move { handle_request(core, from, req).await });
            }
        }
    }
}

enum Outcome {
    Challenge(Vec<u8>),
    Accept {
        eap: Vec<u8>,
        msk: capillary_secrets::Msk,
    },
    Reject(Vec<u8>),
    /// The EAP server dropped the packet (RFC 3748 §2.1 silent discard); no reply.
    Silent,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn handle_request(core: Arc<Core>, from: SocketAddr, req: AccessRequest) {
    let found = match req.state.as_deref() {
        Some(state) => {
            let mut sessions = lock(&core.sessions);
            match <[u8; 16]>::try_from(state)
                .ok()
                .and_then(|s| sessions.get_mut(&s).map(|v| (s, v)))
            {
                Some((s, slot)) => {
                    slot.last = Instant::now();
                    Some((s, slot.session.clone()))
                }
                None => None,
            }
        }
        None => {
            let mut state = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut state);
            let mut seed = [0u8; 1];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let session = Arc::new(tokio::sync::Mutex::new(Session {
                eap: EapAkaServer::new(core.eap.clone(), seed[0]),
                client: req.client.clone(),
            }));
            let mut sessions = lock(&core.sessions);
            if sessions.len() >= MAX_SESSIONS {
                warn!(client = %req.client, "too many unfinished EAP sessions: request refused");
                None
            } else {
                sessions.insert(
                    state,
                    SessionSlot {
                        session: session.clone(),
                        last: Instant::now(),
                    },
                );
                Some((state, session))
            }
        }
    };
    let Some((state, session)) = found else {
        info!(client = %req.client, "Access-Request for an unknown or expired EAP session: rejected");
        respond(&core, from, &req, Reply::Reject { eap: None }).await;
        return;
    };
    let outcome = {
        let mut s = session.lock().await;
        if s.client != req.client {
            drop(s);
            info!(client = %req.client, "EAP session belongs to another RADIUS client: rejected");
            respond(&core, from, &req, Reply::Reject { eap: None }).await;
            return;
        }
        s.eap
            .handle_response(&req.eap_message, &mut rand::rngs::OsRng);
        drive(&core, &mut s).await
    };
    match outcome {
        Outcome::Challenge(eap) => {
            let reply = Reply::Challenge {
                eap: &eap,
                state: &state,
                session_timeout: None,
            };
            respond(&core, from, &req, reply).await;
        }
        Outcome::Accept { eap, msk } => {
            lock(&core.sessions).remove(&state);
            // The RADIUS layer withholds (and counts) the keys for untrusted clients.
            let reply = Reply::Accept {
                eap: &eap,
                msk: Some(&msk),
                user_name: None,
            };
            respond(&core, from, &req, reply).await;
        }
        Outcome::Reject(eap) => {
            lock(&core.sessions).remove(&state);
            respond(&core, from, &req, Reply::Reject { eap: Some(&eap) }).await;
        }
        Outcome::Silent => {
            debug!(client = %req.client, "EAP packet silently discarded");
            if req.state.is_none() {
                // A conversation that never started must not hold a session slot.
                lock(&core.sessions).remove(&state);
            }
            lock(&core.radius).forget(&req.key);
        }
    }
}

async fn respond(core: &Core, from: SocketAddr, req: &AccessRequest, reply: Reply<'_>) {
    let mut salt = [0u8; 2];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let bytes = lock(&core.radius).respond(Instant::now(), &req.key, reply, salt);
    match bytes {
        Ok(bytes) => {
            if let Err(e) = core.socket.send_to(&bytes, from).await {
                warn!(%from, error = %e, "RADIUS send failed");
            }
        }
        Err(e) => warn!(client = %req.client, error = %e, "could not build the RADIUS reply"),
    }
}

fn method_name(m: &Method) -> &'static str {
    match m {
        Method::Full => "full",
        Method::FastReauth => "fast-reauth",
    }
}

fn identity_name(i: &IdentityKind) -> &'static str {
    match i {
        IdentityKind::Permanent => "permanent",
        IdentityKind::Pseudonym => "pseudonym",
        IdentityKind::Reauth => "reauth",
    }
}

/// Executes the EAP server's events in order until it has something for the wire.
async fn drive(core: &Core, s: &mut Session) -> Outcome {
    let store = core.auc.store().clone();
    let mut rng = rand::rngs::OsRng;
    while let Some(event) = s.eap.poll_event() {
        match event {
            ServerEvent::Send(eap) => return Outcome::Challenge(eap),
            ServerEvent::NeedVector { imsi } => match core.auc.vector(&imsi).await {
                Ok(v) => s.eap.provide_vector(
                    VectorInput {
                        rand: v.rand,
                        autn: v.autn,
                        xres: v.xres,
                        ck: v.ck,
                        ik: v.ik,
                    },
                    &mut rng,
                ),
                Err(e) => reject_subscriber(s, &imsi, e),
            },
            ServerEvent::NeedResync { imsi, rand, auts } => {
                match core.auc.resync(&imsi, &rand, &auts).await {
                    Ok(seq_ms) => {
                        info!(%imsi, seq_ms, "SQN resynchronised from AUTS");
                        match core.auc.vector(&imsi).await {
                            Ok(v) => s.eap.provide_vector(
                                VectorInput {
                                    rand: v.rand,
                                    autn: v.autn,
                                    xres: v.xres,
                                    ck: v.ck,
                                    ik: v.ik,
                                },
                                &mut rng,
                            ),
                            Err(e) => reject_subscriber(s, &imsi, e),
                        }
                    }
                    Err(e) => reject_subscriber(s, &imsi, e),
                }
            }
            ServerEvent::ResolvePseudonym { pseudonym } => {
                match store.resolve_pseudonym(&pseudonym, unix_now()).await {
                    Ok(imsi) => s.eap.provide_pseudonym(imsi, &mut rng),
                    Err(e) => {
                        warn!(error = %e, "pseudonym lookup failed");
                        s.eap.provide_pseudonym(None, &mut rng)
                    }
                }
            }
            ServerEvent::ResolveReauth { reauth_id } => {
                match claim_reauth(store.as_ref(), &reauth_id).await {
                    Ok(rec) => s.eap.provide_reauth(
                        rec.map(|r| ReauthContext {
                            imsi: r.imsi,
                            k_encr: r.k_encr,
                            k_aut: r.k_aut,
                            k_re: r.k_re,
                            counter: r.counter,
                        }),
                        &mut rng,
                    ),
                    Err(e) => {
                        warn!(error = %e, "re-authentication identity lookup failed");
                        s.eap.provide_reauth(None, &mut rng)
                    }
                }
            }
            ServerEvent::PersistPseudonym { pseudonym, imsi } => {
                let expires = unix_now() + 7 * 24 * 3600;
                if let Err(e) = store.put_pseudonym(&pseudonym, &imsi, expires).await {
                    warn!(error = %e, "storing a pseudonym failed");
                    s.eap.subscriber_rejected(RejectReason::StoreFailure);
                }
            }
            ServerEvent::PersistReauth {
                reauth_id,
                rec,
                lifetime_secs,
            } => {
                let r = ReauthRecord {
                    reauth_id,
                    imsi: rec.imsi,
                    k_encr: rec.k_encr,
                    k_aut: rec.k_aut,
                    k_re: rec.k_re,
                    counter: rec.counter,
                    expires_unix: unix_now() + lifetime_secs,
                };
                if let Err(e) = store.put_reauth(&r).await {
                    warn!(error = %e, "storing a re-authentication identity failed");
                    s.eap.subscriber_rejected(RejectReason::StoreFailure);
                }
            }
            ServerEvent::ForgetReauth { reauth_id } => {
                if let Err(e) = store.delete_reauth(&reauth_id).await {
                    warn!(error = %e, "deleting a used re-authentication identity failed");
                }
            }
            ServerEvent::Discarded { why } => {
                debug!(why = ?why, "EAP packet discarded");
            }
            ServerEvent::Success {
                eap,
                imsi,
                msk,
                emsk,
                method,
                identity,
                ..
            } => {
                drop(emsk);
                info!(%imsi, method = %method_name(&method), identity = %identity_name(&identity), client = %s.client, "authenticated");
                return Outcome::Accept { eap, msk };
            }
            ServerEvent::Failure { eap, reason } => {
                info!(reason = %failure_name(&reason), client = %s.client, "authentication failed");
                return Outcome::Reject(eap);
            }
            other => debug!(event = ?other, "EAP server event ignored"),
        }
    }
    Outcome::Silent
}

/// Looks up a fast re-authentication record and claims its counter value with a
/// compare-and-set, so that two conversations (or two instances sharing the store) presenting
/// the same identity never use the same counter (RFC 4187 §5.2).
async fn claim_reauth(
    store: &dyn SubscriberStore,
    reauth_id: &str,
) -> Result<Option<ReauthRecord>, StoreError> {
    let Some(rec) = store.get_reauth(reauth_id, unix_now()).await? else {
        return Ok(None);
    };
    let Some(next) = rec.counter.checked_add(1) else {
        return Ok(None);
    };
    if store.advance_reauth(reauth_id, rec.counter, next).await? {
        Ok(Some(rec))
    } else {
        debug!("re-authentication identity raced by another conversation");
        Ok(None)
    }
}

/// Stable names for logs and metrics.
fn failure_name(r: &FailureReason) -> String {
    match r {
        FailureReason::AuthenticationReject => "authentication-reject".into(),
        FailureReason::ClientError(code) => format!("client-error({code})"),
        FailureReason::MacInvalid => "mac-invalid".into(),
        FailureReason::ResMismatch => "res-mismatch".into(),
        FailureReason::CheckcodeMismatch => "checkcode-mismatch".into(),
        FailureReason::CounterMismatch => "counter-mismatch".into(),
        FailureReason::UnknownSubscriber => "unknown-subscriber".into(),
        FailureReason::Barred => "barred".into(),
        FailureReason::StoreFailure => "store-failure".into(),
        FailureReason::UnknownIdentity => "unknown-identity".into(),
        FailureReason::KdfUnsupported => "kdf-unsupported".into(),
        FailureReason::SyncFailureRepeated => "sync-failure-repeated".into(),
        FailureReason::VectorInvalid => "vector-invalid".into(),
        FailureReason::PeerNak => "peer-nak".into(),
        FailureReason::UnexpectedMessage => "unexpected-message".into(),
        FailureReason::Malformed(e) => format!("malformed({e})"),
        other => format!("{other:?}"),
    }
}

fn reject_subscriber(s: &mut Session, imsi: &capillary_secrets::Imsi, e: AucError) {
    let reason = match &e {
        AucError::UnknownSubscriber => {
            info!(%imsi, "unknown subscriber");
            RejectReason::Unknown
        }
        AucError::Barred => {
            info!(%imsi, "subscriber barred");
            RejectReason::Barred
        }
        AucError::BadAuts => {
            info!(%imsi, "AUTS did not verify: resynchronisation refused");
            RejectReason::StoreFailure
        }
        _ => {
            warn!(%imsi, error = %e, "no authentication vector");
            RejectReason::StoreFailure
        }
    };
    s.eap.subscriber_rejected(reason);
}
