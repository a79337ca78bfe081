//! Embedded SQLite backend.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a commit is fsync'd before it returns.
//! Atomicity: every write runs inside a `BEGIN IMMEDIATE` transaction (the write lock is taken up
//! front, so concurrent writers wait on `busy_timeout` instead of failing on lock upgrade), and
//! every read-modify-write is a single `UPDATE … RETURNING` or compare-and-set statement.
//!
//! # Group commit
//!
//! One writer thread owns the write connection. Every write call enqueues a job and awaits its
//! answer; the writer takes all jobs queued at that moment (at most [`MAX_GROUP`]), opens ONE
//! `BEGIN IMMEDIATE` transaction, runs each job inside its own `SAVEPOINT` (a job that fails
//! rolls back to its savepoint only and gets its own error), `COMMIT`s once — one fsync for the
//! whole group — and only then answers every job. A caller therefore never sees a result whose
//! effect is not on disk, exactly as with one transaction per call; while one group is being
//! fsync'd the next one queues up, so under load the fsync cost is shared by many calls. A busy
//! writer (its previous group committed less than 2 ms ago) also waits
//! [`SqliteStore::GROUP_LINGER`] once before committing, so that more calls share the group.
//! If the group cannot commit, every job of it gets an error and nothing of it is kept.
//!
//! Reads of a file database use a second connection (WAL readers never block the writer); an
//! in-memory database has one connection, so its reads go through the writer thread (outside
//! the write transaction). Two processes (or two [`SqliteStore`] handles) on the same file are
//! still kept apart by SQLite's own locking: each group is a real SQL transaction.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use capillary_secrets::{Amf, Imsi, KAut, KEncr, KRe, Op, Opc, Secret, Sqn, K};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, Row, TransactionBehavior};
use tokio::sync::oneshot;

use crate::{
    check_binding, check_count, check_counter_step, check_ind, check_seq, AuditEvent, AuditRecord,
    AuthMaterial, Authorization, NewSubscriber, OpKind, ReauthRecord, StoreError, SubscriberInfo,
    SubscriberKind, SubscriberStatus, SubscriberStore, MAX_IND_LEN,
};

/// How long a writer waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Most write jobs committed together in one transaction (bounds the time a group holds the
/// write lock and the work lost to one failed commit).
const MAX_GROUP: usize = 512;

/// Schema migrations; migration `i` brings `PRAGMA user_version` from `i` to `i + 1`.
/// Released entries are never edited: a change is a new entry.
const MIGRATIONS: &[&str] = &[
    // v1: subscribers, pseudonyms, re-authentication records.
    r#"
CREATE TABLE subscriber (
    imsi     TEXT    NOT NULL PRIMARY KEY,
    k        BLOB    NOT NULL CHECK (length(k) = 16),
    opc      BLOB             CHECK (opc IS NULL OR length(opc) = 16),
    op       BLOB             CHECK (op IS NULL OR length(op) = 16),
    amf      BLOB    NOT NULL CHECK (length(amf) = 2),
    ind_len  INTEGER NOT NULL CHECK (ind_len BETWEEN 0 AND 28),
    seq_he   INTEGER NOT NULL CHECK (seq_he >= 0),
    kind     TEXT    NOT NULL CHECK (kind IN ('device', 'gateway')),
    status   TEXT    NOT NULL CHECK (status IN ('active', 'barred')),
    created  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK ((opc IS NULL) <> (op IS NULL))
);
CREATE TABLE pseudonym (
    pseudonym TEXT    NOT NULL PRIMARY KEY,
    imsi      TEXT    NOT NULL REFERENCES subscriber (imsi) ON DELETE CASCADE,
    expires   INTEGER NOT NULL
);
CREATE INDEX pseudonym_imsi ON pseudonym (imsi);
CREATE TABLE reauth (
    reauth_id TEXT    NOT NULL PRIMARY KEY,
    imsi      TEXT    NOT NULL REFERENCES subscriber (imsi) ON DELETE CASCADE,
    k_encr    BLOB    NOT NULL,
    k_aut     BLOB    NOT NULL,
    k_re      BLOB    NOT NULL,
    counter   INTEGER NOT NULL,
    expires   INTEGER NOT NULL
);
CREATE INDEX reauth_imsi ON reauth (imsi);
"#,
    // v2: gateway bindings and the audit log (docs/PROTOCOL.md §6).
    r#"
CREATE TABLE gateway_binding (
    device   TEXT NOT NULL REFERENCES subscriber (imsi) ON DELETE CASCADE,
    gateway  TEXT NOT NULL REFERENCES subscriber (imsi) ON DELETE CASCADE,
    created  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (device, gateway)
) WITHOUT ROWID;
CREATE INDEX gateway_binding_gateway ON gateway_binding (gateway, device);
CREATE TABLE audit (
    id        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    unix_time INTEGER NOT NULL CHECK (unix_time >= 0),
    event     TEXT    NOT NULL,
    subject   TEXT    NOT NULL,
    gateway   TEXT,
    detail    TEXT    NOT NULL
);
CREATE INDEX audit_subject ON audit (subject, id);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"#,
];

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// [`SubscriberStore`] on an SQLite file. Cloning shares the writer thread and the connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Queue of the writer thread (which owns the write connection).
    jobs: mpsc::Sender<Box<dyn Job>>,
    /// Read connection of a file database; `None` for an in-memory one (reads go to the writer).
    read: Option<Mutex<Connection>>,
    /// Transactions committed by the writer thread.
    commits: Arc<AtomicU64>,
    /// Group-commit delay of a busy writer, microseconds (see [`SqliteStore::set_group_linger`]).
    linger_us: Arc<AtomicU64>,
    path: Option<PathBuf>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    ///
    /// A new database file is created readable by its owner only (it holds every K and OPc);
    /// SQLite gives its `-wal` and `-shm` files the same permissions.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::Io(e)),
            }
        }
        let conn = Connection::open(path)?;
        Self::setup(conn, Some(path.to_path_buf()))
    }

    /// A private in-memory database (gone when the last clone is dropped).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory()?, None)
    }

    /// The schema version this build writes (`PRAGMA user_version`).
    pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

    /// Default group-commit delay of a busy writer on a file database
    /// ([`SqliteStore::set_group_linger`]). Measured under the RADIUS load of
    /// `bench/core-cpu.sh` (docs/perf-radius-notes.md): 500 µs cut the CPU per full
    /// authentication by 10-25 %; 1 ms gained nothing more. Under a closed-loop load with few
    /// clients it lowers throughput, as every store write may wait up to this long.
    pub const GROUP_LINGER: Duration = Duration::from_micros(500);

    /// Write transactions committed so far by this handle's writer thread (shared by its
    /// clones). Several write calls committed as one group count once, so under concurrency this
    /// grows far slower than the number of calls. For tests and benchmarks.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// How long a busy writer waits for more jobs before it commits a group (default
    /// [`Self::GROUP_LINGER`] for a file, zero in memory; at most 10 ms; `capillary core`:
    /// `[store] group_linger_us`). The writer waits only when
    /// its previous group committed less than 2 ms earlier, i.e. under sustained load, and
    /// then once per group: the group's WAL frames and fsync are shared by more calls, at the
    /// price of up to `linger` more latency per write (PostgreSQL's `commit_delay`). A result
    /// is still answered only after the commit that makes it durable. Zero turns it off.
    pub fn set_group_linger(&self, linger: Duration) {
        let us = u64::try_from(linger.min(Duration::from_millis(10)).as_micros()).unwrap_or(0);
        self.inner.linger_us.store(us, Ordering::Relaxed);
    }

    fn setup(mut conn: Connection, path: Option<PathBuf>) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // In-memory databases answer "memory"; files switch to (or stay in) WAL.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if path.is_some() && !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Internal(format!(
                "could not enable WAL journal (got {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // The writer keeps its pages across transactions (WAL): a larger cache avoids
        // re-reading pseudonym and re-authentication index pages from the OS (16 MiB).
        conn.pragma_update(None, "cache_size", -16_384)?;
        // Checkpoint every 10,000 WAL pages (40 MiB at 4 KiB) instead of 1,000: hot pages
        // rewritten by many groups are copied to the database file less often. Durability is
        // the WAL's (fsync'd at every commit); only recovery after a crash reads more WAL.
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        migrate_to(&mut conn, MIGRATIONS.len())?;
        let read = match &path {
            Some(p) => {
                let r = Connection::open(p)?;
                r.busy_timeout(BUSY_TIMEOUT)?;
                r.pragma_update(None, "foreign_keys", "ON")?;
                Some(Mutex::new(r))
            }
            None => None,
        };
        let commits = Arc::new(AtomicU64::new(0));
        let (jobs, rx) = mpsc::channel();
        let counter = Arc::clone(&commits);
        let default_linger = if path.is_some() {
            Self::GROUP_LINGER
        } else {
            Duration::ZERO
        };
        let linger_us = Arc::new(AtomicU64::new(
            u64::try_from(default_linger.as_micros()).unwrap_or(0),
        ));
        let linger = Arc::clone(&linger_us);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, &counter, &linger))
            .map_err(StoreError::Io)?;
        Ok(Self {
            inner: Arc::new(Inner {
                jobs,
                read,
                commits,
                linger_us,
                path,
            }),
        })
    }

    /// Queues `f` for the writer thread and waits for its answer. `write` jobs run inside the
    /// group transaction (in their own savepoint) and are answered after its COMMIT; other jobs
    /// run outside any transaction.
    async fn submit<T, F>(&self, write: bool, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(Task {
            f: Some(f),
            out: None,
            reply,
            write,
        });
        self.inner
            .jobs
            .send(job)
            .map_err(|_| StoreError::Internal("store writer thread is gone".into()))?;
        rx.await
            .map_err(|_| StoreError::Internal("store writer thread dropped a job".into()))?
    }

    /// Runs the write `f` in the next group transaction; returns once that group committed.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(true, f).await
    }

    /// Runs the read-only `f` on the read connection (tokio's blocking pool), or on the writer
    /// thread for an in-memory database.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if self.inner.read.is_none() {
            return self.submit(false, f).await;
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let Some(conn) = &inner.read else {
                return Err(StoreError::Internal("no read connection".into()));
            };
            // A panic inside `f` dropped its statements: the connection is still usable.
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("store task failed: {e}")))?
    }
}

/// One queued call for the writer thread.
trait Job: Send {
    /// Whether the job writes (runs inside the group transaction).
    fn is_write(&self) -> bool;
    /// Runs the job; true if it succeeded.
    fn run(&mut self, conn: &mut Connection) -> bool;
    /// Answers the caller. `group` is the error that kept the group from committing, if any: a
    /// job that had succeeded gets it instead of its result (its effect was rolled back).
    fn finish(self: Box<Self>, group: Option<&rusqlite::Error>);
}

struct Task<T, F> {
    f: Option<F>,
    out: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
    write: bool,
}

impl<T, F> Job for Task<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
{
    fn is_write(&self) -> bool {
        self.write
    }

    fn run(&mut self, conn: &mut Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let out = catch_unwind(AssertUnwindSafe(|| f(conn)))
            .unwrap_or_else(|_| Err(StoreError::Internal("store job panicked".into())));
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, group: Option<&rusqlite::Error>) {
        let out = match (self.out, group) {
            (Some(Ok(_)), Some(e)) | (None, Some(e)) => Err(clone_error(e)),
            (Some(out), _) => out,
            (None, None) => Err(StoreError::Internal("store job did not run".into())),
        };
        // The caller may have given up waiting (its future was dropped): nothing to do.
        let _ = self.reply.send(out);
    }
}

/// A copy of a SQLite error for each job of a failed group.
fn clone_error(e: &rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(*code, msg.clone()))
        }
        other => StoreError::Internal(format!("group commit failed: {other}")),
    }
}

/// The writer thread: takes every queued job, runs the writes as one group transaction.
/// Ends when the last [`SqliteStore`] clone is dropped (after answering what was queued).
fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Box<dyn Job>>,
    commits: &AtomicU64,
    linger_us: &AtomicU64,
) {
    let mut writes: Vec<Box<dyn Job>> = Vec::new();
    let mut last_commit: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        drain(&mut conn, &rx, Some(first), &mut writes);
        let linger = Duration::from_micros(linger_us.load(Ordering::Relaxed));
        // Under sustained load (the previous group committed moments ago), wait a little for
        // more jobs before committing: the group's WAL frames and its fsync are then shared by
        // more calls (PostgreSQL's commit_delay). One timed sleep per group; a caller's result
        // still comes only after the commit that makes it durable.
        if !linger.is_zero()
            && !writes.is_empty()
            && writes.len() < MAX_GROUP
            && last_commit.is_some_and(|t| t.elapsed() < LINGER_BUSY)
        {
            std::thread::sleep(linger);
            drain(&mut conn, &rx, None, &mut writes);
        }
        if !writes.is_empty() {
            run_group(&mut conn, &mut writes, commits);
            last_commit = Some(Instant::now());
        }
    }
}

/// Moves `first` and every job queued now into `writes` (up to [`MAX_GROUP`]); reads are run
/// and answered at once, outside the group transaction.
fn drain(
    conn: &mut Connection,
    rx: &mpsc::Receiver<Box<dyn Job>>,
    first: Option<Box<dyn Job>>,
    writes: &mut Vec<Box<dyn Job>>,
) {
    let mut next = match first {
        Some(j) => Some(j),
        None if writes.len() < MAX_GROUP => rx.try_recv().ok(),
        None => None,
    };
    while let Some(mut job) = next.take() {
        if job.is_write() {
            writes.push(job);
        } else {
            job.run(conn);
            job.finish(None);
        }
        if writes.len() < MAX_GROUP {
            next = rx.try_recv().ok();
        }
    }
}

/// The writer lingers only if its previous group committed less than this long ago.
const LINGER_BUSY: Duration = Duration::from_millis(2);

/// One group: `BEGIN IMMEDIATE`, each job in its own savepoint, one `COMMIT`, then the answers.
fn run_group(conn: &mut Connection, jobs: &mut Vec<Box<dyn Job>>, commits: &AtomicU64) {
    let outcome = run_group_tx(conn, jobs);
    if outcome.is_ok() {
        commits.fetch_add(1, Ordering::Relaxed);
    } else if !conn.is_autocommit() {
        // Nothing of a failed group may stay; an error here leaves the connection to SQLite's
        // own recovery (the transaction is rolled back when the next BEGIN fails or on close).
        let _ = conn.execute_batch("ROLLBACK");
    }
    let group = outcome.err();
    for job in jobs.drain(..) {
        job.finish(group.as_ref());
    }
}

/// Runs one transaction-control statement (prepared once per connection, not parsed per call).
fn control(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn run_group_tx(conn: &mut Connection, jobs: &mut [Box<dyn Job>]) -> Result<(), rusqlite::Error> {
    control(conn, "BEGIN IMMEDIATE")?;
    for job in jobs.iter_mut() {
        control(conn, "SAVEPOINT capillary_job")?;
        let ok = job.run(conn);
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (I/O error, disk full, …): the jobs
            // before this one lost their effect too.
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("group transaction rolled back by SQLite".into()),
            ));
        }
        if !ok {
            control(conn, "ROLLBACK TO capillary_job")?;
        }
        control(conn, "RELEASE capillary_job")?;
    }
    control(conn, "COMMIT")
}

/// Brings the schema up to version `target` (≤ `MIGRATIONS.len()`) in one transaction.
fn migrate_to(conn: &mut Connection, target: usize) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version)
        .map_err(|_| StoreError::Corrupt(format!("negative schema version {version}")))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "schema version {version} is newer than this build ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().take(target).skip(version) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tracing::info!(version = i + 1, "store schema migrated");
    }
    tx.commit()?;
    Ok(())
}

// ---- decoding: every column is checked, bad rows become StoreError::Corrupt ----

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("column {what} has an unexpected type or value"))
}

fn col_i64(row: &Row<'_>, idx: usize, what: &str) -> Result<i64, StoreError> {
    match row.get_ref(idx)? {
        ValueRef::Integer(i) => Ok(i),
        _ => Err(corrupt(what)),
    }
}

fn col_u64(row: &Row<'_>, idx: usize, what: &str) -> Result<u64, StoreError> {
    u64::try_from(col_i64(row, idx, what)?).map_err(|_| corrupt(what))
}

fn col_text<'r>(row: &'r Row<'_>, idx: usize, what: &str) -> Result<&'r str, StoreError> {
    match row.get_ref(idx)? {
        ValueRef::Text(t) => core::str::from_utf8(t).map_err(|_| corrupt(what)),
        _ => Err(corrupt(what)),
    }
}

fn col_opt_text(row: &Row<'_>, idx: usize, what: &str) -> Result<Option<String>, StoreError> {
    match row.get_ref(idx)? {
        ValueRef::Null => Ok(None),
        _ => col_text(row, idx, what).map(|s| Some(s.to_owned())),
    }
}

fn col_opt_blob<'r>(
    row: &'r Row<'_>,
    idx: usize,
    what: &str,
) -> Result<Option<&'r [u8]>, StoreError> {
    match row.get_ref(idx)? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) => Ok(Some(b)),
        _ => Err(corrupt(what)),
    }
}

fn col_secret<S: Secret>(row: &Row<'_>, idx: usize, what: &str) -> Result<S, StoreError> {
    let b = col_opt_blob(row, idx, what)?.ok_or_else(|| corrupt(what))?;
    S::from_slice(b).map_err(|_| corrupt(what))
}

fn col_imsi(row: &Row<'_>, idx: usize) -> Result<Imsi, StoreError> {
    Imsi::new(col_text(row, idx, "imsi")?).map_err(|_| corrupt("imsi"))
}

fn col_amf(row: &Row<'_>, idx: usize) -> Result<Amf, StoreError> {
    let b = col_opt_blob(row, idx, "amf")?.ok_or_else(|| corrupt("amf"))?;
    Amf::from_slice(b).ok_or_else(|| corrupt("amf"))
}

fn col_ind_len(row: &Row<'_>, idx: usize) -> Result<u8, StoreError> {
    u8::try_from(col_i64(row, idx, "ind_len")?)
        .ok()
        .filter(|l| *l <= MAX_IND_LEN)
        .ok_or_else(|| corrupt("ind_len"))
}

fn col_seq(row: &Row<'_>, idx: usize, ind_len: u8) -> Result<u64, StoreError> {
    let seq = col_u64(row, idx, "seq_he")?;
    if seq > Sqn::MAX >> ind_len {
        return Err(corrupt("seq_he"));
    }
    Ok(seq)
}

fn col_kind(row: &Row<'_>, idx: usize) -> Result<SubscriberKind, StoreError> {
    col_text(row, idx, "kind")?
        .parse()
        .map_err(|_| corrupt("kind"))
}

fn col_status(row: &Row<'_>, idx: usize) -> Result<SubscriberStatus, StoreError> {
    col_text(row, idx, "status")?
        .parse()
        .map_err(|_| corrupt("status"))
}

fn col_op(row: &Row<'_>, opc_idx: usize, op_idx: usize) -> Result<OpKind, StoreError> {
    match (
        col_opt_blob(row, opc_idx, "opc")?,
        col_opt_blob(row, op_idx, "op")?,
    ) {
        (Some(b), None) => Ok(OpKind::Opc(Opc::from_slice(b).map_err(|_| corrupt("opc"))?)),
        (None, Some(b)) => Ok(OpKind::Op(Op::from_slice(b).map_err(|_| corrupt("op"))?)),
        _ => Err(StoreError::Corrupt(
            "exactly one of opc and op must be set".into(),
        )),
    }
}

const INFO_COLS: &str =
    "imsi, amf, ind_len, seq_he, kind, status, opc IS NOT NULL, created, updated";

fn decode_info(row: &Row<'_>) -> Result<SubscriberInfo, StoreError> {
    let ind_len = col_ind_len(row, 2)?;
    Ok(SubscriberInfo {
        imsi: col_imsi(row, 0)?,
        amf: col_amf(row, 1)?,
        ind_len,
        seq_he: col_seq(row, 3, ind_len)?,
        kind: col_kind(row, 4)?,
        status: col_status(row, 5)?,
        has_opc: col_i64(row, 6, "opc")? != 0,
        created: col_opt_text(row, 7, "created")?,
        updated: col_opt_text(row, 8, "updated")?,
    })
}

const REAUTH_COLS: &str = "reauth_id, imsi, k_encr, k_aut, k_re, counter, expires";

fn decode_reauth(row: &Row<'_>) -> Result<ReauthRecord, StoreError> {
    Ok(ReauthRecord {
        reauth_id: col_text(row, 0, "reauth_id")?.to_owned(),
        imsi: col_imsi(row, 1)?,
        k_encr: col_secret::<KEncr>(row, 2, "k_encr")?,
        k_aut: col_secret::<KAut>(row, 3, "k_aut")?,
        k_re: col_secret::<KRe>(row, 4, "k_re")?,
        counter: u16::try_from(col_i64(row, 5, "counter")?).map_err(|_| corrupt("counter"))?,
        expires_unix: col_u64(row, 6, "expires")?,
    })
}

/// Expiry times beyond `i64::MAX` are stored as `i64::MAX`, meaning "never".
fn unix_to_sql(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// A "now" is clamped one below, so that a "never" expiry stays in the future.
fn now_to_sql(t: u64) -> i64 {
    unix_to_sql(t).min(i64::MAX - 1)
}

fn insert_subscriber(tx: &Connection, s: &NewSubscriber) -> Result<bool, StoreError> {
    let seq_he = s.initial_seq()?;
    let (opc, op): (Option<&[u8]>, Option<&[u8]>) = match &s.op {
        OpKind::Opc(v) => (Some(v.expose()), None),
        OpKind::Op(v) => (None, Some(v.expose())),
    };
    let n = tx.execute(
        "INSERT INTO subscriber (imsi, k, opc, op, amf, ind_len, seq_he, kind, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (imsi) DO NOTHING",
        params![
            s.imsi.as_str(),
            s.k.expose(),
            opc,
            op,
            &s.amf.0[..],
            s.ind_len,
            seq_to_sql(seq_he)?,
            s.kind.as_str(),
            s.status.as_str(),
        ],
    )?;
    Ok(n == 1)
}

fn seq_to_sql(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::InvalidInput("SEQ out of range".into()))
}

/// One allocation inside an open transaction: a single `UPDATE … RETURNING` that only matches
/// an active subscriber with room for `count` more SEQ values in a valid lane; if it matches
/// nothing, a read inside the same transaction says why.
fn allocate_in(
    tx: &Connection,
    imsi: &Imsi,
    ind: u32,
    count: u32,
) -> Result<AuthMaterial, StoreError> {
    check_count(count)?;
    let mut stmt = tx.prepare_cached(&format!(
        "UPDATE subscriber SET seq_he = seq_he + ?2, updated = {NOW}
         WHERE imsi = ?1 AND status = 'active'
           AND ind_len BETWEEN 0 AND {MAX_IND_LEN}
           AND ?3 < (1 << ind_len)
           AND seq_he + ?2 <= ({max} >> ind_len)
         RETURNING seq_he, k, opc, op, amf, ind_len, kind, status",
        max = Sqn::MAX
    ))?;
    let mut rows = stmt.query(params![imsi.as_str(), count, ind])?;
    if let Some(row) = rows.next()? {
        let material = decode_material(row, imsi, ind, count);
        // Step the statement to its end before it is reset.
        while rows.next()?.is_some() {}
        return material;
    }
    drop(rows);
    // Nothing matched: find out why (same transaction, so the answer is consistent).
    let mut stmt =
        tx.prepare_cached("SELECT status, ind_len, seq_he FROM subscriber WHERE imsi = ?1")?;
    let mut rows = stmt.query(params![imsi.as_str()])?;
    let row = rows.next()?.ok_or(StoreError::UnknownSubscriber)?;
    if col_status(row, 0)? == SubscriberStatus::Barred {
        return Err(StoreError::Barred);
    }
    let ind_len = col_ind_len(row, 1)?;
    check_ind(ind, ind_len)?;
    col_seq(row, 2, ind_len)?;
    Err(StoreError::SqnExhausted)
}

/// Decodes the `RETURNING` row of an allocation (new SEQ_HE first).
fn decode_material(
    row: &Row<'_>,
    imsi: &Imsi,
    ind: u32,
    count: u32,
) -> Result<AuthMaterial, StoreError> {
    let ind_len = col_ind_len(row, 5)?;
    let new_seq = col_seq(row, 0, ind_len)?;
    let first = new_seq
        .checked_sub(u64::from(count))
        .ok_or_else(|| corrupt("seq_he"))?;
    let sqns = (first + 1..=new_seq)
        .map(|seq| Sqn::from_seq_ind(seq, ind, ind_len).ok_or_else(|| corrupt("seq_he")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AuthMaterial {
        imsi: imsi.clone(),
        k: col_secret::<K>(row, 1, "k")?,
        op: col_op(row, 2, 3)?,
        amf: col_amf(row, 4)?,
        ind_len,
        kind: col_kind(row, 6)?,
        status: col_status(row, 7)?,
        sqns,
    })
}

fn owner_of(
    tx: &Connection,
    table: &str,
    key_col: &str,
    key: &str,
) -> Result<Option<Imsi>, StoreError> {
    let mut stmt = tx.prepare_cached(&format!("SELECT imsi FROM {table} WHERE {key_col} = ?1"))?;
    let mut rows = stmt.query(params![key])?;
    match rows.next()? {
        Some(row) => Ok(Some(col_imsi(row, 0)?)),
        None => Ok(None),
    }
}

fn put_pseudonym_in(
    tx: &Connection,
    pseudonym: &str,
    imsi: &Imsi,
    expires_unix: u64,
) -> Result<(), StoreError> {
    if !subscriber_exists(tx, imsi)? {
        return Err(StoreError::UnknownSubscriber);
    }
    match owner_of(tx, "pseudonym", "pseudonym", pseudonym)? {
        Some(owner) if &owner != imsi => return Err(StoreError::Exists),
        _ => {}
    }
    tx.prepare_cached(
        "INSERT INTO pseudonym (pseudonym, imsi, expires) VALUES (?1, ?2, ?3)
         ON CONFLICT (pseudonym) DO UPDATE SET expires = excluded.expires",
    )?
    .execute(params![pseudonym, imsi.as_str(), unix_to_sql(expires_unix)])?;
    Ok(())
}

fn put_reauth_in(tx: &Connection, rec: &ReauthRecord) -> Result<(), StoreError> {
    if !subscriber_exists(tx, &rec.imsi)? {
        return Err(StoreError::UnknownSubscriber);
    }
    match owner_of(tx, "reauth", "reauth_id", &rec.reauth_id)? {
        Some(owner) if owner != rec.imsi => return Err(StoreError::Exists),
        _ => {}
    }
    tx.prepare_cached(
        "INSERT INTO reauth (reauth_id, imsi, k_encr, k_aut, k_re, counter, expires)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (reauth_id) DO UPDATE SET k_encr = excluded.k_encr,
           k_aut = excluded.k_aut, k_re = excluded.k_re,
           counter = excluded.counter, expires = excluded.expires",
    )?
    .execute(params![
        rec.reauth_id,
        rec.imsi.as_str(),
        rec.k_encr.expose(),
        rec.k_aut.expose(),
        rec.k_re.expose(),
        rec.counter,
        unix_to_sql(rec.expires_unix),
    ])?;
    Ok(())
}

fn subscriber_exists(tx: &Connection, imsi: &Imsi) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM subscriber WHERE imsi = ?1")?
        .exists(params![imsi.as_str()])?)
}

#[cfg(test)]
fn immediate(conn: &mut Connection) -> Result<rusqlite::Transaction<'_>, StoreError> {
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

fn kind_of(tx: &Connection, imsi: &Imsi) -> Result<Option<SubscriberKind>, StoreError> {
    let mut stmt = tx.prepare_cached("SELECT kind FROM subscriber WHERE imsi = ?1")?;
    let mut rows = stmt.query(params![imsi.as_str()])?;
    rows.next()?.map(|r| col_kind(r, 0)).transpose()
}

/// Binds inside an open transaction, after checking both kinds.
fn bind_in(tx: &Connection, device: &Imsi, gateway: &Imsi) -> Result<(), StoreError> {
    check_binding(device, kind_of(tx, device)?, gateway, kind_of(tx, gateway)?)?;
    tx.prepare_cached(
        "INSERT INTO gateway_binding (device, gateway) VALUES (?1, ?2)
         ON CONFLICT (device, gateway) DO NOTHING",
    )?
    .execute(params![device.as_str(), gateway.as_str()])?;
    Ok(())
}

/// Status of `imsi` if it is a subscriber of `kind`.
fn status_of(
    tx: &Connection,
    imsi: &Imsi,
    kind: SubscriberKind,
) -> Result<Option<SubscriberStatus>, StoreError> {
    let mut stmt =
        tx.prepare_cached("SELECT status FROM subscriber WHERE imsi = ?1 AND kind = ?2")?;
    let mut rows = stmt.query(params![imsi.as_str(), kind.as_str()])?;
    rows.next()?.map(|r| col_status(r, 0)).transpose()
}

fn imsis(rows: &mut rusqlite::Rows<'_>) -> Result<Vec<Imsi>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(col_imsi(row, 0)?);
    }
    Ok(out)
}

fn col_opt_imsi(row: &Row<'_>, idx: usize) -> Result<Option<Imsi>, StoreError> {
    match row.get_ref(idx)? {
        ValueRef::Null => Ok(None),
        _ => col_imsi(row, idx).map(Some),
    }
}

const AUDIT_COLS: &str = "id, unix_time, event, subject, gateway, detail";

fn decode_audit(row: &Row<'_>) -> Result<(u64, AuditRecord), StoreError> {
    let id = col_u64(row, 0, "audit id")?;
    Ok((
        id,
        AuditRecord {
            unix_time: col_u64(row, 1, "unix_time")?,
            event: col_text(row, 2, "event")?
                .parse::<AuditEvent>()
                .map_err(|_| corrupt("event"))?,
            subject: col_imsi(row, 3)?,
            gateway: col_opt_imsi(row, 4)?,
            detail: col_text(row, 5, "detail")?.to_owned(),
        },
    ))
}

fn limit_to_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[async_trait]
impl SubscriberStore for SqliteStore {
    async fn add(&self, s: NewSubscriber) -> Result<(), StoreError> {
        self.write(move |tx| {
            if !insert_subscriber(tx, &s)? {
                return Err(StoreError::Exists);
            }
            Ok(())
        })
        .await
    }

    async fn import_with_bindings(
        &self,
        subs: Vec<NewSubscriber>,
        bindings: Vec<(Imsi, Imsi)>,
    ) -> Result<usize, StoreError> {
        self.write(move |tx| {
            for (i, s) in subs.iter().enumerate() {
                if !insert_subscriber(tx, s)? {
                    tracing::warn!(
                        index = i,
                        "import rejected: duplicate IMSI in batch or store"
                    );
                    return Err(StoreError::Exists);
                }
            }
            for (device, gateway) in &bindings {
                bind_in(tx, device, gateway)?;
            }
            Ok(subs.len())
        })
        .await
    }

    async fn get(&self, imsi: &Imsi) -> Result<Option<SubscriberInfo>, StoreError> {
        let imsi = imsi.clone();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {INFO_COLS} FROM subscriber WHERE imsi = ?1"
            ))?;
            let mut rows = stmt.query(params![imsi.as_str()])?;
            rows.next()?.map(decode_info).transpose()
        })
        .await
    }

    async fn list(
        &self,
        after: Option<&Imsi>,
        limit: usize,
    ) -> Result<Vec<SubscriberInfo>, StoreError> {
        let after = after.map(|a| a.as_str().to_owned()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {INFO_COLS} FROM subscriber WHERE imsi > ?1 ORDER BY imsi LIMIT ?2"
            ))?;
            let mut rows = stmt.query(params![after, limit])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(decode_info(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn remove(&self, imsi: &Imsi) -> Result<bool, StoreError> {
        let imsi = imsi.clone();
        self.write(move |tx| {
            // Explicit deletes, so the result does not depend on foreign_keys being on.
            tx.execute(
                "DELETE FROM pseudonym WHERE imsi = ?1",
                params![imsi.as_str()],
            )?;
            tx.execute("DELETE FROM reauth WHERE imsi = ?1", params![imsi.as_str()])?;
            tx.execute(
                "DELETE FROM gateway_binding WHERE device = ?1 OR gateway = ?1",
                params![imsi.as_str()],
            )?;
            let n = tx.execute(
                "DELETE FROM subscriber WHERE imsi = ?1",
                params![imsi.as_str()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn set_status(&self, imsi: &Imsi, st: SubscriberStatus) -> Result<bool, StoreError> {
        let imsi = imsi.clone();
        self.write(move |tx| {
            let n = tx.execute(
                &format!("UPDATE subscriber SET status = ?2, updated = {NOW} WHERE imsi = ?1"),
                params![imsi.as_str(), st.as_str()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn allocate(
        &self,
        imsi: &Imsi,
        ind: u32,
        count: u32,
    ) -> Result<AuthMaterial, StoreError> {
        let imsi = imsi.clone();
        self.write(move |tx| {
            let m = allocate_in(tx, &imsi, ind, count)?;
            Ok(m)
        })
        .await
    }

    async fn allocate_batch(
        &self,
        reqs: &[(Imsi, u32, u32)],
    ) -> Result<Vec<Result<AuthMaterial, StoreError>>, StoreError> {
        let reqs = reqs.to_vec();
        self.write(move |tx| {
            // One transaction for the whole batch (the group's savepoint); each request inside
            // its own nested savepoint, so a failed request (e.g. a corrupt row found after its
            // UPDATE ran) allocates nothing.
            let mut out = Vec::with_capacity(reqs.len());
            for (imsi, ind, count) in &reqs {
                let mut sp = tx.savepoint()?;
                match allocate_in(&sp, imsi, *ind, *count) {
                    // A database failure aborts the whole batch (rolled back on drop).
                    Err(e @ StoreError::Sqlite(_)) => return Err(e),
                    Ok(m) => {
                        sp.commit()?;
                        out.push(Ok(m));
                    }
                    Err(e) => {
                        sp.rollback()?;
                        sp.commit()?;
                        out.push(Err(e));
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn resync(&self, imsi: &Imsi, seq_ms: u64) -> Result<(), StoreError> {
        let imsi = imsi.clone();
        self.write(move |tx| {
            let ind_len = {
                let mut stmt =
                    tx.prepare_cached("SELECT ind_len FROM subscriber WHERE imsi = ?1")?;
                let mut rows = stmt.query(params![imsi.as_str()])?;
                let row = rows.next()?.ok_or(StoreError::UnknownSubscriber)?;
                col_ind_len(row, 0)?
            };
            check_seq(seq_ms, ind_len)?;
            tx.execute(
                &format!(
                    "UPDATE subscriber SET seq_he = ?2, updated = {NOW}
                     WHERE imsi = ?1 AND seq_he < ?2"
                ),
                params![imsi.as_str(), seq_to_sql(seq_ms)?],
            )?;
            Ok(())
        })
        .await
    }

    async fn put_pseudonym(
        &self,
        pseudonym: &str,
        imsi: &Imsi,
        expires_unix: u64,
    ) -> Result<(), StoreError> {
        let (pseudonym, imsi) = (pseudonym.to_owned(), imsi.clone());
        self.write(move |tx| put_pseudonym_in(tx, &pseudonym, &imsi, expires_unix))
            .await
    }

    async fn resolve_pseudonym(
        &self,
        pseudonym: &str,
        now_unix: u64,
    ) -> Result<Option<Imsi>, StoreError> {
        let pseudonym = pseudonym.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT imsi FROM pseudonym WHERE pseudonym = ?1 AND expires > ?2",
            )?;
            let mut rows = stmt.query(params![pseudonym, now_to_sql(now_unix)])?;
            rows.next()?.map(|r| col_imsi(r, 0)).transpose()
        })
        .await
    }

    async fn put_reauth(&self, rec: &ReauthRecord) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.write(move |tx| put_reauth_in(tx, &rec)).await
    }

    async fn put_issued(
        &self,
        imsi: &Imsi,
        pseudonym: Option<(&str, u64)>,
        reauth: Option<&ReauthRecord>,
    ) -> Result<(), StoreError> {
        let imsi = imsi.clone();
        let pseudonym = pseudonym.map(|(p, e)| (p.to_owned(), e));
        let reauth = reauth.cloned();
        if reauth.as_ref().is_some_and(|r| r.imsi != imsi) {
            return Err(StoreError::Internal(
                "re-authentication record of another subscriber".into(),
            ));
        }
        self.write(move |tx| {
            if let Some((p, expires)) = &pseudonym {
                // Keep the subscriber's newest pseudonym besides the new one (a peer that
                // missed the message naming the new one still has it), drop the older ones.
                tx.prepare_cached(
                    "DELETE FROM pseudonym WHERE imsi = ?1 AND pseudonym <> ?2 AND pseudonym NOT IN
                     (SELECT pseudonym FROM pseudonym WHERE imsi = ?1 AND pseudonym <> ?2
                      ORDER BY expires DESC LIMIT 1)",
                )?
                .execute(params![imsi.as_str(), p])?;
                put_pseudonym_in(tx, p, &imsi, *expires)?;
            }
            if let Some(r) = &reauth {
                tx.prepare_cached("DELETE FROM reauth WHERE imsi = ?1 AND reauth_id <> ?2")?
                    .execute(params![imsi.as_str(), r.reauth_id])?;
                put_reauth_in(tx, r)?;
            }
            Ok(())
        })
        .await
    }

    async fn get_reauth(
        &self,
        reauth_id: &str,
        now_unix: u64,
    ) -> Result<Option<ReauthRecord>, StoreError> {
        let reauth_id = reauth_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {REAUTH_COLS} FROM reauth WHERE reauth_id = ?1 AND expires > ?2"
            ))?;
            let mut rows = stmt.query(params![reauth_id, now_to_sql(now_unix)])?;
            rows.next()?.map(decode_reauth).transpose()
        })
        .await
    }

    async fn advance_reauth(
        &self,
        reauth_id: &str,
        expected: u16,
        new: u16,
    ) -> Result<bool, StoreError> {
        check_counter_step(expected, new)?;
        let reauth_id = reauth_id.to_owned();
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE reauth SET counter = ?3 WHERE reauth_id = ?1 AND counter = ?2",
                params![reauth_id, expected, new],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_reauth(&self, reauth_id: &str) -> Result<(), StoreError> {
        let reauth_id = reauth_id.to_owned();
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM reauth WHERE reauth_id = ?1",
                params![reauth_id],
            )?;
            Ok(())
        })
        .await
    }

    async fn bind_gateway(&self, device: &Imsi, gateway: &Imsi) -> Result<(), StoreError> {
        let (device, gateway) = (device.clone(), gateway.clone());
        self.write(move |tx| {
            bind_in(tx, &device, &gateway)?;
            Ok(())
        })
        .await
    }

    async fn unbind_gateway(&self, device: &Imsi, gateway: &Imsi) -> Result<bool, StoreError> {
        let (device, gateway) = (device.clone(), gateway.clone());
        self.write(move |tx| {
            let n = tx.execute(
                "DELETE FROM gateway_binding WHERE device = ?1 AND gateway = ?2",
                params![device.as_str(), gateway.as_str()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn gateways_of(&self, device: &Imsi) -> Result<Vec<Imsi>, StoreError> {
        let device = device.clone();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT gateway FROM gateway_binding WHERE device = ?1 ORDER BY gateway",
            )?;
            let mut rows = stmt.query(params![device.as_str()])?;
            imsis(&mut rows)
        })
        .await
    }

    async fn devices_of(
        &self,
        gateway: &Imsi,
        after: Option<&Imsi>,
        limit: usize,
    ) -> Result<Vec<Imsi>, StoreError> {
        let gateway = gateway.clone();
        let after = after.map(|a| a.as_str().to_owned()).unwrap_or_default();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT device FROM gateway_binding WHERE gateway = ?1 AND device > ?2
                 ORDER BY device LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![gateway.as_str(), after, limit_to_sql(limit)])?;
            imsis(&mut rows)
        })
        .await
    }

    async fn authorize_batch(
        &self,
        pairs: &[(Imsi, Imsi)],
    ) -> Result<Vec<Authorization>, StoreError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let pairs = pairs.to_vec();
        self.read(move |conn| {
            // A read transaction: every answer comes from the same snapshot.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let mut out = Vec::with_capacity(pairs.len());
            // A batch's pairs usually name one gateway: its status is read once (same
            // snapshot, same answer).
            let mut gateways: Vec<(&Imsi, Option<SubscriberStatus>)> = Vec::new();
            for (device, gateway) in &pairs {
                // One statement per pair: the device's status (NULL when it is not a device
                // subscriber) and whether the binding exists.
                let mut stmt = tx.prepare_cached(
                    "SELECT (SELECT status FROM subscriber WHERE imsi = ?1 AND kind = ?3),
                            EXISTS (SELECT 1 FROM gateway_binding
                                    WHERE device = ?1 AND gateway = ?2)",
                )?;
                let mut rows = stmt.query(params![
                    device.as_str(),
                    gateway.as_str(),
                    SubscriberKind::Device.as_str()
                ])?;
                let row = rows.next()?.ok_or_else(|| corrupt("authorization"))?;
                let device_status = match row.get_ref(0)? {
                    ValueRef::Null => None,
                    _ => Some(col_status(row, 0)?),
                };
                let bound = row.get::<_, i64>(1)? != 0;
                let gateway_status = match gateways.iter().find(|(g, _)| *g == gateway) {
                    Some((_, st)) => *st,
                    None => {
                        let st = status_of(&tx, gateway, SubscriberKind::Gateway)?;
                        gateways.push((gateway, st));
                        st
                    }
                };
                out.push(Authorization {
                    device_status,
                    gateway_status,
                    bound,
                });
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn audit(&self, rec: AuditRecord) -> Result<(), StoreError> {
        self.audit_batch(vec![rec]).await
    }

    async fn audit_batch(&self, recs: Vec<AuditRecord>) -> Result<(), StoreError> {
        for r in &recs {
            r.check()?;
        }
        if recs.is_empty() {
            return Ok(());
        }
        self.write(move |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO audit (unix_time, event, subject, gateway, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for rec in &recs {
                stmt.execute(params![
                    unix_to_sql(rec.unix_time),
                    rec.event.as_str(),
                    rec.subject.as_str(),
                    rec.gateway.as_ref().map(Imsi::as_str),
                    rec.detail,
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn audit_log(
        &self,
        subject: Option<&Imsi>,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        let Ok(after_id) = i64::try_from(after_id) else {
            return Ok(Vec::new());
        };
        let subject = subject.cloned();
        let limit = limit_to_sql(limit);
        self.read(move |conn| {
            let mut out = Vec::new();
            let mut push_all = |mut rows: rusqlite::Rows<'_>| -> Result<(), StoreError> {
                while let Some(row) = rows.next()? {
                    out.push(decode_audit(row)?);
                }
                Ok(())
            };
            match &subject {
                Some(s) => {
                    let mut stmt = conn.prepare_cached(&format!(
                        "SELECT {AUDIT_COLS} FROM audit WHERE subject = ?1 AND id > ?2
                         ORDER BY id LIMIT ?3"
                    ))?;
                    push_all(stmt.query(params![s.as_str(), after_id, limit])?)?;
                }
                None => {
                    let mut stmt = conn.prepare_cached(&format!(
                        "SELECT {AUDIT_COLS} FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2"
                    ))?;
                    push_all(stmt.query(params![after_id, limit])?)?;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn purge_expired(&self, now_unix: u64) -> Result<u64, StoreError> {
        self.write(move |tx| {
            let now = now_to_sql(now_unix);
            let a = tx.execute("DELETE FROM pseudonym WHERE expires <= ?1", params![now])?;
            let b = tx.execute("DELETE FROM reauth WHERE expires <= ?1", params![now])?;
            Ok((a + b) as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use capillary_secrets::Imsi;

    fn imsi(n: u64) -> Imsi {
        Imsi::new(&format!("00101{n:010}")).unwrap()
    }

    fn sub(n: u64, kind: SubscriberKind) -> NewSubscriber {
        let mut s = NewSubscriber::new(
            imsi(n),
            K::from_slice(&[n as u8; 16]).unwrap(),
            OpKind::Opc(Opc::from_slice(&[0xa5; 16]).unwrap()),
            Amf([0x80, 0]),
        );
        s.kind = kind;
        s
    }

    fn user_version(conn: &Connection) -> u32 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    /// A database written by a build that knew only migration v1 upgrades in place to the
    /// current schema, keeping every row.
    #[tokio::test]
    async fn v1_database_upgrades_in_place() {
        assert_eq!(SqliteStore::SCHEMA_VERSION, 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hss.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            conn.pragma_update(None, "foreign_keys", "ON").unwrap();
            migrate_to(&mut conn, 1).unwrap();
            assert_eq!(user_version(&conn), 1);
            let tables: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name IN ('gateway_binding', 'audit')",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(tables, 0, "v1 has no v2 tables");
            let tx = immediate(&mut conn).unwrap();
            assert!(insert_subscriber(&tx, &sub(1, SubscriberKind::Device)).unwrap());
            assert!(insert_subscriber(&tx, &sub(2, SubscriberKind::Gateway)).unwrap());
            allocate_in(&tx, &imsi(1), 3, 4).unwrap();
            tx.execute(
                "INSERT INTO pseudonym (pseudonym, imsi, expires) VALUES ('p', ?1, 100)",
                params![imsi(1).as_str()],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(user_version(&Connection::open(&path).unwrap()), 2);
        let info = s.get(&imsi(1)).await.unwrap().unwrap();
        assert_eq!(info.seq_he, 4);
        assert_eq!(s.resolve_pseudonym("p", 1).await.unwrap(), Some(imsi(1)));
        assert_eq!(s.list(None, 10).await.unwrap().len(), 2);
        // The new tables work on the old rows.
        s.bind_gateway(&imsi(1), &imsi(2)).await.unwrap();
        assert_eq!(s.gateways_of(&imsi(1)).await.unwrap(), vec![imsi(2)]);
        s.audit(AuditRecord {
            unix_time: 5,
            event: AuditEvent::AuthSucceeded,
            subject: imsi(1),
            gateway: Some(imsi(2)),
            detail: String::new(),
        })
        .await
        .unwrap();
        assert_eq!(s.audit_log(None, 0, 10).await.unwrap().len(), 1);
        let m = s.allocate(&imsi(1), 3, 1).await.unwrap();
        assert_eq!(m.sqns[0].value(), (5 << 5) | 3);
        drop(s);
        // Reopening is a no-op migration.
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.gateways_of(&imsi(1)).await.unwrap(), vec![imsi(2)]);
    }

    /// Migrating to a target below the stored version changes nothing; unknown newer versions
    /// are refused.
    #[test]
    fn migrate_to_is_monotonic() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, MIGRATIONS.len()).unwrap();
        migrate_to(&mut conn, 1).unwrap();
        assert_eq!(user_version(&conn) as usize, MIGRATIONS.len());
        conn.pragma_update(None, "user_version", MIGRATIONS.len() + 1)
            .unwrap();
        assert!(matches!(
            migrate_to(&mut conn, MIGRATIONS.len()),
            Err(StoreError::Corrupt(_))
        ));
    }
}

#[cfg(test)]
mod put_issued_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use capillary_secrets::{KAut, KEncr, KRe};

    fn imsi(n: u64) -> Imsi {
        Imsi::new(&format!("00101{n:010}")).unwrap()
    }

    fn rec(id: &str, n: u64) -> ReauthRecord {
        ReauthRecord {
            reauth_id: id.into(),
            imsi: imsi(n),
            k_encr: KEncr::from_bytes([1; 16]),
            k_aut: KAut::from_bytes([2; 32]),
            k_re: KRe::from_bytes([3; 32]),
            counter: 0,
            expires_unix: 1_000,
        }
    }

    /// `put_issued` keeps a subscriber's newest pseudonym besides the new one and only its new
    /// re-authentication record; other subscribers' rows are untouched; a failing call (an
    /// identity held by another subscriber) leaves nothing of itself.
    #[tokio::test]
    async fn put_issued_keeps_the_newest_identities_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("hss.db")).unwrap();
        for n in [1, 2] {
            s.add(NewSubscriber::new(
                imsi(n),
                K::from_slice(&[n as u8; 16]).unwrap(),
                OpKind::Opc(Opc::from_slice(&[0xa5; 16]).unwrap()),
                Amf([0x80, 0]),
            ))
            .await
            .unwrap();
        }
        s.put_issued(&imsi(2), Some(("7other", 100)), Some(&rec("8other", 2)))
            .await
            .unwrap();
        for (i, p) in ["7a", "7b", "7c"].iter().enumerate() {
            let r = rec(&format!("8{p}"), 1);
            s.put_issued(&imsi(1), Some((p, 100 + i as u64)), Some(&r))
                .await
                .unwrap();
        }
        assert_eq!(s.resolve_pseudonym("7a", 0).await.unwrap(), None);
        assert_eq!(s.resolve_pseudonym("7b", 0).await.unwrap(), Some(imsi(1)));
        assert_eq!(s.resolve_pseudonym("7c", 0).await.unwrap(), Some(imsi(1)));
        assert!(s.get_reauth("87a", 0).await.unwrap().is_none());
        assert!(s.get_reauth("87b", 0).await.unwrap().is_none());
        assert!(s.get_reauth("87c", 0).await.unwrap().is_some());
        assert_eq!(
            s.resolve_pseudonym("7other", 0).await.unwrap(),
            Some(imsi(2))
        );
        assert!(s.get_reauth("8other", 0).await.unwrap().is_some());
        // Pseudonym of subscriber 2: refused, and subscriber 1's rows are as they were.
        assert!(matches!(
            s.put_issued(&imsi(1), Some(("7other", 200)), Some(&rec("8d", 1)))
                .await,
            Err(StoreError::Exists)
        ));
        assert_eq!(s.resolve_pseudonym("7b", 0).await.unwrap(), Some(imsi(1)));
        assert!(s.get_reauth("87c", 0).await.unwrap().is_some());
        assert!(s.get_reauth("8d", 0).await.unwrap().is_none());
        // Reauth-only (a fast re-authentication issues no pseudonym).
        s.put_issued(&imsi(1), None, Some(&rec("8e", 1)))
            .await
            .unwrap();
        assert!(s.get_reauth("87c", 0).await.unwrap().is_none());
        assert!(s.get_reauth("8e", 0).await.unwrap().is_some());
        assert_eq!(s.resolve_pseudonym("7c", 0).await.unwrap(), Some(imsi(1)));
    }
}
