//! OSCORE security context input from the EAP MSK (RFC 9820 §6.2) and the OSCORE IDs from RID-C
//! and RID-I (RFC 9820 §5.1, §6.2).
//!
//! RFC 9820 gives no test vector and no output lengths; Capillary pins its reading in
//! `tests/data/coap-eap-oscore.toml`:
//!
//! ```text
//! KDF           = HKDF-Expand (RFC 5869 §2.3) with PRK = MSK (no Extract step),
//!                 hash of the selected cipher suite (SHA-256 for suite 0)
//! CS            = CBOR(CS-C) ‖ CBOR(CS-I); an absent list counts as the default [0] (81 00)
//! Master Secret = KDF(MSK, CS ‖ "COAP-EAP OSCORE MASTER SECRET", 16)
//! Master Salt   = KDF(MSK, CS ‖ "COAP-EAP OSCORE MASTER SALT", 8)
//! ```

use capillary_secrets::{Msk, Secret};
use hkdf::Hkdf;
use sha2::{Sha256, Sha384};
use zeroize::Zeroize;

use crate::info::{encode_cipher_suites, CipherSuite};

/// Label of the Master Secret derivation (RFC 9820 §6.2).
pub const LABEL_MASTER_SECRET: &[u8] = b"COAP-EAP OSCORE MASTER SECRET";
/// Label of the Master Salt derivation (RFC 9820 §6.2).
pub const LABEL_MASTER_SALT: &[u8] = b"COAP-EAP OSCORE MASTER SALT";

/// Why no OSCORE input could be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The suite's hash is not available here (SHAKE256, suite 4) or the suite is unknown.
    #[error("cipher suite {0:?} is not supported for the OSCORE derivation")]
    UnsupportedCipherSuite(CipherSuite),
    /// An OSCORE ID is longer than the suite allows (RFC 8613 §3.3).
    #[error("OSCORE ID of {len} bytes is longer than {max} for the chosen suite")]
    IdTooLong {
        /// Length given.
        len: usize,
        /// Limit of the suite.
        max: usize,
    },
}

/// The OSCORE Master Secret and Master Salt live with the other secret types (zeroized,
/// redacted, constant-time).
pub use capillary_secrets::{MasterSalt, MasterSecret};

/// The CS input of the derivation: `CBOR(CS-C) ‖ CBOR(CS-I)` (RFC 9820 §6.2). `None` stands
/// for "not sent" and counts as the default array `[0]`.
pub fn cs_input(cs_c: Option<&[CipherSuite]>, cs_i: Option<&[CipherSuite]>) -> Vec<u8> {
    let default = [CipherSuite::DEFAULT];
    let mut out = encode_cipher_suites(cs_c.unwrap_or(&default));
    out.extend_from_slice(&encode_cipher_suites(cs_i.unwrap_or(&default)));
    out
}

macro_rules! expand_with {
    ($hash:ty, $prk:expr, $cs:expr, $secret:expr, $salt:expr) => {
        match Hkdf::<$hash>::from_prk($prk) {
            Ok(hk) => {
                hk.expand_multi_info(&[$cs, LABEL_MASTER_SECRET], $secret)
                    .is_ok()
                    && hk
                        .expand_multi_info(&[$cs, LABEL_MASTER_SALT], $salt)
                        .is_ok()
            }
            Err(_) => false,
        }
    };
}

/// Derives the OSCORE Master Secret and Master Salt (RFC 9820 §6.2) for the selected suite.
pub fn derive_master(
    msk: &Msk,
    suite: CipherSuite,
    cs: &[u8],
) -> Result<(MasterSecret, MasterSalt), KeyError> {
    let mut secret = [0u8; MasterSecret::LEN];
    let mut salt = [0u8; MasterSalt::LEN];
    let ok = match suite.0 {
        0 | 1 | 3 => expand_with!(Sha256, msk.expose(), cs, &mut secret, &mut salt),
        2 => expand_with!(Sha384, msk.expose(), cs, &mut secret, &mut salt),
        _ => false,
    };
    let out = (
        MasterSecret::from_bytes(secret),
        MasterSalt::from_bytes(salt),
    );
    secret.zeroize();
    salt.zeroize();
    if ok {
        Ok(out)
    } else {
        Err(KeyError::UnsupportedCipherSuite(suite))
    }
}

/// OSCORE Sender and Recipient IDs of one side (RFC 8613 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OscoreIds {
    /// Sender ID.
    pub sender_id: Vec<u8>,
    /// Recipient ID.
    pub recipient_id: Vec<u8>,
}

impl OscoreIds {
    /// The EAP peer (IoT device): its Recipient ID is RID-I, its Sender ID is RID-C
    /// (RFC 9820 §5.1, §6.2).
    pub fn for_peer(rid_c: &[u8], rid_i: &[u8]) -> Self {
        Self {
            sender_id: rid_c.to_vec(),
            recipient_id: rid_i.to_vec(),
        }
    }

    /// The EAP authenticator: its Recipient ID is RID-C, its Sender ID is RID-I.
    pub fn for_authenticator(rid_c: &[u8], rid_i: &[u8]) -> Self {
        Self {
            sender_id: rid_i.to_vec(),
            recipient_id: rid_c.to_vec(),
        }
    }

    /// Checks both IDs against the limit of `suite` (RFC 8613 §3.3).
    pub fn check(&self, suite: CipherSuite) -> Result<(), KeyError> {
        let max = suite
            .max_id_len()
            .ok_or(KeyError::UnsupportedCipherSuite(suite))?;
        for id in [&self.sender_id, &self.recipient_id] {
            if id.len() > max {
                return Err(KeyError::IdTooLong { len: id.len(), max });
            }
        }
        Ok(())
    }
}

/// Everything the driver needs to build the OSCORE security context (RFC 8613 §3.2) after a
/// successful CoAP-EAP authentication (RFC 9820 §6.2). The ID Context is absent and the
/// AEAD / HKDF algorithms are those of `cipher_suite` (RFC 9820 §6.1).
#[derive(Debug)]
pub struct OscoreMaterial {
    /// Master Secret.
    pub master_secret: MasterSecret,
    /// Master Salt.
    pub master_salt: MasterSalt,
    /// This side's Sender ID.
    pub sender_id: Vec<u8>,
    /// This side's Recipient ID.
    pub recipient_id: Vec<u8>,
    /// The negotiated cipher suite.
    pub cipher_suite: CipherSuite,
}

impl OscoreMaterial {
    /// Derives the material of one side.
    pub fn derive(
        msk: &Msk,
        suite: CipherSuite,
        cs_c: Option<&[CipherSuite]>,
        cs_i: Option<&[CipherSuite]>,
        ids: OscoreIds,
    ) -> Result<Self, KeyError> {
        ids.check(suite)?;
        let (master_secret, master_salt) = derive_master(msk, suite, &cs_input(cs_c, cs_i))?;
        Ok(Self {
            master_secret,
            master_salt,
            sender_id: ids.sender_id,
            recipient_id: ids.recipient_id,
            cipher_suite: suite,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        assert_eq!(
            format!("{:?}", MasterSecret::from_bytes([7; 16])),
            "MasterSecret(..)"
        );
        assert_eq!(
            format!("{:?}", MasterSalt::from_bytes([7; 8])),
            "MasterSalt(..)"
        );
    }

    #[test]
    fn default_cs_input() {
        assert_eq!(cs_input(None, None), [0x81, 0x00, 0x81, 0x00]);
        assert_eq!(
            cs_input(
                Some(&[CipherSuite(0), CipherSuite(1)]),
                Some(&[CipherSuite(1)])
            ),
            [0x82, 0x00, 0x01, 0x81, 0x01]
        );
    }

    #[test]
    fn ids_mirror() {
        let p = OscoreIds::for_peer(b"C", b"I");
        let a = OscoreIds::for_authenticator(b"C", b"I");
        assert_eq!(p.sender_id, a.recipient_id);
        assert_eq!(p.recipient_id, a.sender_id);
        assert!(p.check(CipherSuite(0)).is_ok());
        assert_eq!(
            OscoreIds::for_peer(&[0; 7], b"").check(CipherSuite(1)),
            Err(KeyError::IdTooLong { len: 7, max: 6 })
        );
    }

    #[test]
    fn shake_suite_refused() {
        let msk = Msk::from_bytes([1; 64]);
        assert_eq!(
            derive_master(&msk, CipherSuite(4), &cs_input(None, None)).err(),
            Some(KeyError::UnsupportedCipherSuite(CipherSuite(4)))
        );
        assert!(derive_master(&msk, CipherSuite(2), &cs_input(None, None)).is_ok());
    }
}
