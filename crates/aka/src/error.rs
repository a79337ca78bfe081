//! The one error type of this crate.

/// Why an AKA operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AkaError {
    /// MAC-A in AUTN (TS 33.102 §6.3.3) or MAC-S in AUTS (§6.3.5) did not verify.
    #[error("MAC verification failed (TS 33.102 §6.3.3)")]
    MacFailure,
    /// The sequence number was not acceptable (TS 33.102 §6.3.3, Annex C.2).
    #[error("sequence number not acceptable (TS 33.102 Annex C.2)")]
    SyncFailure,
    /// IND length outside 0..=16 bits (TS 33.102 Annex C.1.2 suggests 5).
    #[error("IND length {ind_len} is outside 0..=16 bits (TS 33.102 Annex C.1.2)")]
    InvalidIndLen {
        /// The length that was given.
        ind_len: u8,
    },
    /// A SEQ or SQN value does not fit in 48 bits with the configured IND length.
    #[error("sequence number out of range for 48-bit SQN (TS 33.102 Annex C.1.1)")]
    SqnOutOfRange,
    /// The restored SEQ array does not have `1 << ind_len` entries.
    #[error("SEQ array has {got} entries, expected {expected} (one per IND value)")]
    SeqArrayLength {
        /// `1 << ind_len`.
        expected: usize,
        /// Entries given.
        got: usize,
    },
    /// The AMF separation bit is not set, as RFC 9048 §3.2 / TS 33.401 Annex H require for AKA'.
    #[error("AMF separation bit is 0; EAP-AKA' requires 1 (RFC 9048 §3.2)")]
    AmfSeparationBit,
}
