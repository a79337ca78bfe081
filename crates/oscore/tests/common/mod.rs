//! Shared test helpers: the RFC 8613 Appendix C vector file.
#![allow(dead_code, clippy::unwrap_used)]

use capillary_oscore::{ContextParams, PersistedState, SecurityContext};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Vectors {
    pub derivation: Vec<Derivation>,
    pub request: Vec<Exchange>,
    pub response: Vec<Exchange>,
}

#[derive(Deserialize)]
pub struct Derivation {
    pub name: String,
    pub master_secret: String,
    pub master_salt: String,
    pub id_context: Option<String>,
    pub sender_id: String,
    pub recipient_id: String,
    pub sender_info: String,
    pub recipient_info: String,
    pub common_iv_info: String,
    pub sender_key: String,
    pub recipient_key: String,
    pub common_iv: String,
    pub sender_nonce: String,
    pub recipient_nonce: String,
}

#[derive(Deserialize)]
pub struct Exchange {
    pub name: String,
    pub master_secret: String,
    pub master_salt: String,
    pub id_context: Option<String>,
    pub sender_id: String,
    pub recipient_id: String,
    pub ssn: u64,
    pub request_protected: Option<String>,
    pub fresh_piv: Option<bool>,
    pub unprotected: String,
    pub aad: String,
    pub plaintext: String,
    pub nonce: String,
    pub oscore_option: String,
    pub ciphertext: String,
    pub protected: String,
}

pub fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

pub fn vectors() -> Vectors {
    toml::from_str(include_str!("../data/rfc8613.toml")).unwrap()
}

pub struct Owned {
    pub secret: Vec<u8>,
    pub salt: Vec<u8>,
    pub idc: Option<Vec<u8>>,
    pub sid: Vec<u8>,
    pub rid: Vec<u8>,
}

impl Owned {
    pub fn new(secret: &str, salt: &str, idc: &Option<String>, sid: &str, rid: &str) -> Self {
        Owned {
            secret: h(secret),
            salt: h(salt),
            idc: idc.as_deref().map(h),
            sid: h(sid),
            rid: h(rid),
        }
    }
    pub fn params(&self) -> ContextParams<'_> {
        let mut p = ContextParams::new(&self.secret, &self.sid, &self.rid);
        p.master_salt = &self.salt;
        p.id_context = self.idc.as_deref();
        p
    }
    /// A context whose next SSN is `ssn` (restored at mark `ssn`, then a block persisted).
    pub fn context_at(&self, ssn: u64) -> SecurityContext {
        if ssn == 0 {
            return SecurityContext::new(self.params()).unwrap();
        }
        let mut c = SecurityContext::restore(
            self.params(),
            PersistedState {
                ssn_mark: ssn,
                replay_floor: None,
            },
        )
        .unwrap();
        let mark = c.reserve_ssn_block(100).unwrap();
        c.confirm_ssn_persisted(mark).unwrap();
        assert_eq!(c.sender_sequence_number(), ssn);
        c
    }
}

impl Exchange {
    pub fn owned(&self) -> Owned {
        Owned::new(
            &self.master_secret,
            &self.master_salt,
            &self.id_context,
            &self.sender_id,
            &self.recipient_id,
        )
    }
}

/// Client and server contexts of RFC 8613 Appendix C.1 (with Master Salt).
pub fn c1_pair() -> (SecurityContext, SecurityContext) {
    let c = Owned::new(
        "0102030405060708090a0b0c0d0e0f10",
        "9e7ca92223786340",
        &None,
        "",
        "01",
    );
    let s = Owned::new(
        "0102030405060708090a0b0c0d0e0f10",
        "9e7ca92223786340",
        &None,
        "01",
        "",
    );
    (
        SecurityContext::new(c.params()).unwrap(),
        SecurityContext::new(s.params()).unwrap(),
    )
}
