//! The RADIUS / EAP-AKA' driver: one UDP socket, one sans-IO RADIUS server, one sans-IO
//! EAP-AKA' server per conversation (keyed by the RADIUS State attribute), the AuC and the store.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capillary_eap::server::{
    EapAkaServer, FailureReason, IdentityKind, Method, ReauthContext, ServerConfig, ServerEvent,
    VectorInput,
};
use capillary_radius::{AccessRequest, ClientConfig, Incoming, RadiusServer, Reply};
use capillary_store::{ReauthRecord, SqliteStore, StoreError, SubscriberStore};
use rand::RngCore;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::auc::{Auc, AucError, Prefetch};
use crate::config::{CoreConfig, IdentityStore};
use crate::identities::MemoryIdentities;
use crate::{lock, unix_now};

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
    store.set_group_linger(Duration::from_micros(cfg.store.group_linger_us));
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
    /// The RADIUS thread (see [`spawn_radius_thread`]): dropping the sender stops it.
    radius: Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
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
        if let Some((stop, thread)) = self.radius.take() {
            let _ = stop.send(());
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        info!(stats = ?lock(&self.core.radius).stats(), "RADIUS counters");
        if let Some(link) = &self.link {
            info!(stats = ?link.stats(), "gateway link counters");
        }
    }
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
    /// The AuC shared with the hlr_auc_gw and link paths (one SQN per vector).
    auc: Auc,
    /// The same AuC with an SQN stock, for the RADIUS conversations (see [`crate::auc::Prefetch`]).
    vectors: Auc,
    eap: ServerConfig,
    /// Pseudonyms and re-authentication contexts in this process (`identity_store = "memory"`);
    /// `None`: in the store.
    identities: Option<MemoryIdentities>,
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
    // The RADIUS path runs on its own single-threaded runtime (see `spawn_radius_thread`); its
    // socket must be registered with that runtime's reactor.
    let radius_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("starting the RADIUS runtime"))?;
    let socket = std::net::UdpSocket::bind(cfg.radius.listen)
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .map_err(io(format!("binding RADIUS socket {}", cfg.radius.listen)))?;
    let socket = {
        let _guard = radius_rt.enter();
        UdpSocket::from_std(socket)
            .map_err(io(format!("binding RADIUS socket {}", cfg.radius.listen)))?
    };
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
        vectors: if cfg.auc.prefetch > 0 {
            Auc::new(store.clone(), cfg.auc.ind).with_prefetch(Prefetch {
                depth: cfg.auc.prefetch,
                ..Prefetch::default()
            })
        } else {
            Auc::new(store.clone(), cfg.auc.ind)
        },
        auc: Auc::new(store, cfg.auc.ind),
        eap,
        identities: match cfg.eap.identity_store {
            IdentityStore::Memory => Some(MemoryIdentities::default()),
            _ => None,
        },
        socket,
        session_timeout: Duration::from_secs(cfg.radius.session_timeout_secs),
    });
    info!(%local_addr, network_name = %cfg.eap.network_name, ind = cfg.auc.ind, "RADIUS server listening");
    let radius = spawn_radius_thread(radius_rt, core.clone())?;
    let mut tasks = vec![tokio::spawn(housekeeping(core.clone()))];
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
                ..crate::link::LinkConfig::default().eap
            },
            session_lifetime_secs: cfg.link.session_lifetime_secs,
            fast_reauth: cfg.link.fast_reauth,
            prefetch_vectors: cfg.link.prefetch_vectors,
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
        radius: Some(radius),
        core,
        link,
        northbound,
    })
}

/// Runs the RADIUS receive loop, and the requests that wait on the store, on `rt` (a
/// single-threaded runtime) in a thread of its own, as hostapd runs its event loop. A datagram
/// is then received, handled and answered without crossing threads, and no other worker is
/// woken to steal work that the receive loop would finish anyway: under load this costs less
/// CPU per authentication than the multi-threaded runtime (docs/perf-radius-notes.md). The
/// store's writer thread and the rest of the process (gateway link, hlr_auc_gw, housekeeping)
/// are unchanged.
fn spawn_radius_thread(
    rt: tokio::runtime::Runtime,
    core: Arc<Core>,
) -> Result<
    (
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    ),
    NetworkError,
> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("radius".into())
        .spawn(move || {
            rt.block_on(async move {
                tokio::select! {
                    () = receive_loop(core) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops the requests still waiting on the store: their
            // replies are not sent, as when the process stops.
        })
        .map_err(io("starting the RADIUS thread"))?;
    Ok((stop, thread))
}

async fn housekeeping(core: Arc<Core>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_purge = Instant::now();
    loop {
        tick.tick().await;
        if last_purge.elapsed() >= Duration::from_secs(60) {
            last_purge = Instant::now();
            // Pseudonyms and re-authentication records the peer never used expire here.
            if let Some(ids) = &core.identities {
                let purged = ids.purge_expired(unix_now());
                if purged > 0 {
                    debug!(purged, "expired in-memory identities purged");
                }
            }
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
            Incoming::Reply(bytes) => {
                debug!(%from, "Status-Server answered");
                if let Err(e) = core.socket.send_to(&bytes, from).await {
                    warn!(%from, error = %e, "RADIUS send failed");
                }
            }
            Incoming::Request(req) => {
                // Most of a request's work is CPU (RADIUS, EAP, a vector from the AuC's stock)
                // up to its first store write, and a challenge response needs no store at all:
                // run it here, and only hand the rest of a request that waits on the store to a
                // task. `spawn` polls it again at once with the task's own waker, so whatever
                // the first poll registered is superseded (Future::poll contract).
                // A panic stays confined to this request, as it would in its own task.
                let mut fut = Box::pin(handle_request(core.clone(), from, req));
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    fut.as_mut().poll(&mut cx)
                })) {
                    Ok(std::task::Poll::Ready(())) => {}
                    Ok(std::task::Poll::Pending) => {
                        tokio::spawn(fut);
                    }
                    Err(_) => warn!(%from, "RADIUS request handler panicked: request dropped"),
                }
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
    /// A state change the next message depends on could not be stored: that message must not
    /// leave the process; Access-Reject without EAP.
    StoreFailure,
    /// The EAP server dropped the packet (RFC 3748 §2.1 silent discard); no reply.
    Silent,
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
            rand::thread_rng().fill_bytes(&mut state);
            let mut seed = [0u8; 1];
            rand::thread_rng().fill_bytes(&mut seed);
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
            .handle_response(&req.eap_message, &mut rand::thread_rng());
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
        Outcome::StoreFailure => {
            lock(&core.sessions).remove(&state);
            respond(&core, from, &req, Reply::Reject { eap: None }).await;
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
    rand::thread_rng().fill_bytes(&mut salt);
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

/// State changes the next outgoing message depends on (RFC 4187 §4.1.1.7, §5.4: the peer may
/// use the next pseudonym and re-authentication identity as soon as it has the message).
#[derive(Default)]
struct Pending {
    pseudonym: Option<(String, capillary_secrets::Imsi)>,
    reauth: Option<ReauthRecord>,
}

impl Pending {
    /// Stores everything pending in one store call and returns only once it is durable. False
    /// if it failed: the message that names the identities must then not be sent. With
    /// in-memory identities, records them in the process (no store access).
    async fn flush(&mut self, core: &Core) -> bool {
        let pseudonym = self.pseudonym.take();
        let reauth = self.reauth.take();
        if let Some(ids) = &core.identities {
            let p = match &pseudonym {
                Some((p, imsi)) => ids.put_pseudonym(p, imsi, unix_now() + PSEUDONYM_LIFETIME_SECS),
                None => Ok(()),
            };
            let r = match &reauth {
                Some(r) => ids.put_reauth(r),
                None => Ok(()),
            };
            return check_flushed(&p, &r);
        }
        let store: &dyn SubscriberStore = core.auc.store().as_ref();
        let imsi = match (&pseudonym, &reauth) {
            (Some((_, imsi)), _) => imsi,
            (None, Some(r)) => &r.imsi,
            (None, None) => return true,
        };
        let expires = unix_now() + PSEUDONYM_LIFETIME_SECS;
        // One store job: both rows, and the subscriber's superseded identities dropped.
        match store
            .put_issued(
                imsi,
                pseudonym.as_ref().map(|(p, _)| (p.as_str(), expires)),
                reauth.as_ref(),
            )
            .await
        {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "storing issued identities failed");
                false
            }
        }
    }
}

/// Seconds an issued pseudonym stays valid.
const PSEUDONYM_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// Logs failed identity writes; true if both succeeded.
fn check_flushed(p: &Result<(), StoreError>, r: &Result<(), StoreError>) -> bool {
    if let Err(e) = p {
        warn!(error = %e, "storing a pseudonym failed");
    }
    if let Err(e) = r {
        warn!(error = %e, "storing a re-authentication identity failed");
    }
    p.is_ok() && r.is_ok()
}

/// Executes the EAP server's events in order until it has something for the wire. Pseudonyms
/// and re-authentication records are written together just before the message that carries
/// them leaves (never after).
async fn drive(core: &Core, s: &mut Session) -> Outcome {
    let store: &dyn SubscriberStore = core.auc.store().as_ref();
    let mut pending = Pending::default();
    while let Some(event) = s.eap.poll_event() {
        match event {
            ServerEvent::Send(eap) => {
                if !pending.flush(core).await {
                    return Outcome::StoreFailure;
                }
                return Outcome::Challenge(eap);
            }
            ServerEvent::NeedVector { imsi } => match core.vectors.vector(&imsi).await {
                Ok(v) => s.eap.provide_vector(
                    VectorInput {
                        rand: v.rand,
                        autn: v.autn,
                        xres: v.xres,
                        ck: v.ck,
                        ik: v.ik,
                    },
                    &mut rand::thread_rng(),
                ),
                Err(e) => reject_subscriber(s, &imsi, e),
            },
            ServerEvent::NeedResync { imsi, rand, auts } => {
                match core.vectors.resync(&imsi, &rand, &auts).await {
                    Ok(seq_ms) => {
                        info!(%imsi, seq_ms, "SQN resynchronised from AUTS");
                        match core.vectors.vector(&imsi).await {
                            Ok(v) => s.eap.provide_vector(
                                VectorInput {
                                    rand: v.rand,
                                    autn: v.autn,
                                    xres: v.xres,
                                    ck: v.ck,
                                    ik: v.ik,
                                },
                                &mut rand::thread_rng(),
                            ),
                            Err(e) => reject_subscriber(s, &imsi, e),
                        }
                    }
                    Err(e) => reject_subscriber(s, &imsi, e),
                }
            }
            ServerEvent::ResolvePseudonym { pseudonym } => {
                let found = match &core.identities {
                    Some(ids) => Ok(ids.resolve_pseudonym(&pseudonym, unix_now())),
                    None => store.resolve_pseudonym(&pseudonym, unix_now()).await,
                };
                match found {
                    Ok(imsi) => s.eap.provide_pseudonym(imsi, &mut rand::thread_rng()),
                    Err(e) => {
                        warn!(error = %e, "pseudonym lookup failed");
                        s.eap.provide_pseudonym(None, &mut rand::thread_rng())
                    }
                }
            }
            ServerEvent::ResolveReauth { reauth_id } => {
                let claimed = match &core.identities {
                    Some(ids) => claim_memory_reauth(store, ids, &reauth_id).await,
                    None => claim_reauth(store, &reauth_id).await,
                };
                match claimed {
                    Ok(rec) => s.eap.provide_reauth(
                        rec.map(|r| ReauthContext {
                            imsi: r.imsi,
                            k_encr: r.k_encr,
                            k_aut: r.k_aut,
                            k_re: r.k_re,
                            counter: r.counter,
                        }),
                        &mut rand::thread_rng(),
                    ),
                    Err(e) => {
                        warn!(error = %e, "re-authentication identity lookup failed");
                        s.eap.provide_reauth(None, &mut rand::thread_rng())
                    }
                }
            }
            ServerEvent::PersistPseudonym { pseudonym, imsi } => {
                pending.pseudonym = Some((pseudonym, imsi));
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
                pending.reauth = Some(r);
            }
            ServerEvent::ForgetReauth { reauth_id } => {
                if let Some(ids) = &core.identities {
                    ids.delete_reauth(&reauth_id);
                } else if let Err(e) = store.delete_reauth(&reauth_id).await {
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
                if !pending.flush(core).await {
                    return Outcome::StoreFailure;
                }
                info!(%imsi, method = %method_name(&method), identity = %identity_name(&identity), client = %s.client, "authenticated");
                return Outcome::Accept { eap, msk };
            }
            ServerEvent::Failure { eap, reason } => {
                // Nothing pending matters to a failure; still stored, as the server asked.
                pending.flush(core).await;
                info!(reason = %failure_name(&reason), client = %s.client, "authentication failed");
                return Outcome::Reject(eap);
            }
            other => debug!(event = ?other, "EAP server event ignored"),
        }
    }
    if !pending.flush(core).await {
        return Outcome::StoreFailure;
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

/// [`claim_reauth`] for in-memory contexts. A subscriber removed or barred since its full
/// authentication gets no fast re-authentication: removing a subscriber deletes its stored
/// contexts but cannot reach this process's tables, so its status is read here.
async fn claim_memory_reauth(
    store: &dyn SubscriberStore,
    ids: &MemoryIdentities,
    reauth_id: &str,
) -> Result<Option<ReauthRecord>, StoreError> {
    let Some(rec) = ids.claim_reauth(reauth_id, unix_now()) else {
        return Ok(None);
    };
    match store.get(&rec.imsi).await? {
        Some(sub) if sub.status == capillary_store::SubscriberStatus::Active => Ok(Some(rec)),
        _ => {
            ids.delete_reauth(reauth_id);
            debug!("re-authentication context of a removed or barred subscriber dropped");
            Ok(None)
        }
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
    match &e {
        AucError::UnknownSubscriber => info!(%imsi, "unknown subscriber"),
        AucError::Barred => info!(%imsi, "subscriber barred"),
        AucError::BadAuts => info!(%imsi, "AUTS did not verify: resynchronisation refused"),
        _ => warn!(%imsi, error = %e, "no authentication vector"),
    }
    s.eap.subscriber_rejected(e.reject_reason());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RadiusClientConfig;
    use capillary_radius::{client, Code};
    use capillary_secrets::{Amf, Imsi, Opc, Secret, K};
    use capillary_store::{
        AuditRecord, AuthMaterial, Authorization, MemoryStore, NewSubscriber, OpKind,
        SubscriberInfo, SubscriberStatus,
    };

    const SECRET: &str = "driver-test-secret";

    /// A [`MemoryStore`] whose `put_reauth` fails when `.1` is set.
    struct FailingReauth(MemoryStore, bool);

    #[async_trait::async_trait]
    impl SubscriberStore for FailingReauth {
        async fn add(&self, s: NewSubscriber) -> Result<(), StoreError> {
            self.0.add(s).await
        }
        async fn get(&self, imsi: &Imsi) -> Result<Option<SubscriberInfo>, StoreError> {
            self.0.get(imsi).await
        }
        async fn list(
            &self,
            after: Option<&Imsi>,
            limit: usize,
        ) -> Result<Vec<SubscriberInfo>, StoreError> {
            self.0.list(after, limit).await
        }
        async fn remove(&self, imsi: &Imsi) -> Result<bool, StoreError> {
            self.0.remove(imsi).await
        }
        async fn set_status(&self, imsi: &Imsi, st: SubscriberStatus) -> Result<bool, StoreError> {
            self.0.set_status(imsi, st).await
        }
        async fn allocate(
            &self,
            imsi: &Imsi,
            ind: u32,
            count: u32,
        ) -> Result<AuthMaterial, StoreError> {
            self.0.allocate(imsi, ind, count).await
        }
        async fn allocate_batch(
            &self,
            reqs: &[(Imsi, u32, u32)],
        ) -> Result<Vec<Result<AuthMaterial, StoreError>>, StoreError> {
            self.0.allocate_batch(reqs).await
        }
        async fn resync(&self, imsi: &Imsi, seq_ms: u64) -> Result<(), StoreError> {
            self.0.resync(imsi, seq_ms).await
        }
        async fn put_pseudonym(
            &self,
            pseudonym: &str,
            imsi: &Imsi,
            expires_unix: u64,
        ) -> Result<(), StoreError> {
            self.0.put_pseudonym(pseudonym, imsi, expires_unix).await
        }
        async fn resolve_pseudonym(
            &self,
            pseudonym: &str,
            now_unix: u64,
        ) -> Result<Option<Imsi>, StoreError> {
            self.0.resolve_pseudonym(pseudonym, now_unix).await
        }
        async fn put_reauth(&self, rec: &ReauthRecord) -> Result<(), StoreError> {
            if self.1 {
                return Err(StoreError::Internal("disk full (test)".into()));
            }
            self.0.put_reauth(rec).await
        }
        async fn get_reauth(
            &self,
            reauth_id: &str,
            now_unix: u64,
        ) -> Result<Option<ReauthRecord>, StoreError> {
            self.0.get_reauth(reauth_id, now_unix).await
        }
        async fn advance_reauth(
            &self,
            reauth_id: &str,
            expected: u16,
            new: u16,
        ) -> Result<bool, StoreError> {
            self.0.advance_reauth(reauth_id, expected, new).await
        }
        async fn delete_reauth(&self, reauth_id: &str) -> Result<(), StoreError> {
            self.0.delete_reauth(reauth_id).await
        }
        async fn import_with_bindings(
            &self,
            subs: Vec<NewSubscriber>,
            bindings: Vec<(Imsi, Imsi)>,
        ) -> Result<usize, StoreError> {
            self.0.import_with_bindings(subs, bindings).await
        }
        async fn bind_gateway(&self, device: &Imsi, gateway: &Imsi) -> Result<(), StoreError> {
            self.0.bind_gateway(device, gateway).await
        }
        async fn unbind_gateway(&self, device: &Imsi, gateway: &Imsi) -> Result<bool, StoreError> {
            self.0.unbind_gateway(device, gateway).await
        }
        async fn gateways_of(&self, device: &Imsi) -> Result<Vec<Imsi>, StoreError> {
            self.0.gateways_of(device).await
        }
        async fn devices_of(
            &self,
            gateway: &Imsi,
            after: Option<&Imsi>,
            limit: usize,
        ) -> Result<Vec<Imsi>, StoreError> {
            self.0.devices_of(gateway, after, limit).await
        }
        async fn authorize_batch(
            &self,
            pairs: &[(Imsi, Imsi)],
        ) -> Result<Vec<Authorization>, StoreError> {
            self.0.authorize_batch(pairs).await
        }
        async fn audit(&self, rec: AuditRecord) -> Result<(), StoreError> {
            self.0.audit(rec).await
        }
        async fn audit_log(
            &self,
            subject: Option<&Imsi>,
            after_id: u64,
            limit: usize,
        ) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
            self.0.audit_log(subject, after_id, limit).await
        }
    }

    /// The challenge names the next re-authentication identity; when that record cannot be
    /// stored, the challenge must not leave the process: Access-Reject without EAP instead.
    #[tokio::test]
    async fn challenge_not_sent_when_its_identities_are_not_stored() {
        // Control: with a working store the same request gets the challenge.
        assert_eq!(first_reply(false).await, (Code::Challenge, true));
        assert_eq!(first_reply(true).await, (Code::Reject, false));
    }

    /// Code of the reply to an EAP-Response/Identity, and whether it carries EAP.
    async fn first_reply(fail_reauth: bool) -> (Code, bool) {
        let store = MemoryStore::new();
        let imsi = Imsi::new("001010000000001").unwrap();
        store
            .add(NewSubscriber::new(
                imsi.clone(),
                K::from_hex("465b5ce8b199b49faa5f0a2ee238a6bc").unwrap(),
                OpKind::Opc(Opc::from_hex("cd63cb71954a9f4e48a5994e37a02baf").unwrap()),
                Amf([0, 0]),
            ))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CoreConfig {
            data_dir: Some(dir.path().to_path_buf()),
            ..CoreConfig::default()
        };
        cfg.radius.listen = "127.0.0.1:0".parse().unwrap();
        cfg.radius.client = vec![RadiusClientConfig {
            name: "nas".into(),
            address: "127.0.0.1".into(),
            secret: SECRET.into(),
            trusted: true,
        }];
        let handle = run_with_store(cfg, Arc::new(FailingReauth(store, fail_reauth)))
            .await
            .unwrap();
        let nas = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // EAP-Response/Identity (RFC 3748 §5.1) with the permanent AKA' identity.
        let identity = format!("6{}@wlan.mnc001.mcc001.3gppnetwork.org", imsi.as_str());
        let len = 5 + identity.len();
        let mut eap = vec![2, 7, (len >> 8) as u8, len as u8, 1];
        eap.extend_from_slice(identity.as_bytes());
        let authenticator = [0x42; 16];
        let req = client::access_request(
            SECRET.as_bytes(),
            9,
            authenticator,
            Some(identity.as_bytes()),
            &eap,
            None,
            &[],
        )
        .unwrap();
        nas.send_to(&req, handle.local_addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), nas.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let reply = client::verify_response(SECRET.as_bytes(), &authenticator, &buf[..n]).unwrap();
        handle.stop().await;
        (reply.code, reply.eap_message().unwrap().is_some())
    }
}
