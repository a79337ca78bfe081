//! Helpers shared by the integration tests.
#![allow(dead_code)]

use capillary_secrets::{Amf, Imsi, KAut, KEncr, KRe, Opc, K};
use capillary_store::{NewSubscriber, OpKind, ReauthRecord};

pub fn imsi(n: u64) -> Imsi {
    Imsi::new(&format!("00101{n:010}")).unwrap()
}

pub fn sub(n: u64) -> NewSubscriber {
    NewSubscriber::new(
        imsi(n),
        K::from_bytes([n as u8; 16]),
        OpKind::Opc(Opc::from_bytes([0xa5; 16])),
        Amf([0x80, 0x00]),
    )
}

pub fn reauth(id: &str, n: u64, counter: u16, expires_unix: u64) -> ReauthRecord {
    ReauthRecord {
        reauth_id: id.to_owned(),
        imsi: imsi(n),
        k_encr: KEncr::from_bytes([1; 16]),
        k_aut: KAut::from_bytes([2; 32]),
        k_re: KRe::from_bytes([3; 32]),
        counter,
        expires_unix,
    }
}
