//! The network side of Capillary (`capillary core`): a RADIUS front end (RFC 2865/3579) that
//! feeds EAP-AKA' conversations (RFC 9048) into the sans-IO server of `capillary-eap`, and an
//! authentication centre over the subscriber store.
//!
//! This crate is the driver: it owns the socket, the clock, the RNG and the store, and turns the
//! state machines' events into storage calls and datagrams. Every state change an event asks
//! for (a pseudonym, a re-authentication identity, an SQN) is durable in the store before the
//! message that depends on it leaves the process, unless `[eap] identity_store = "memory"`
//! keeps pseudonyms and re-authentication contexts in the process only (see
//! [`config::IdentityStore`]).
#![forbid(unsafe_code)]

pub mod auc;
pub mod config;
mod driver;
pub mod hlr_auc_gw;
mod identities;
pub mod link;
pub mod link_driver;
pub mod northbound;
mod secret_file;

pub use driver::{create_private_dir, run, run_with_store, CoreHandle, NetworkError};

/// Locks a mutex whose data stays usable after a panic elsewhere (no invariant spans a lock).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Seconds since the Unix epoch (0 if the clock is before it), for expiry and audit times.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
