//! In-memory harness: server ↔ peer with a Milenage HSS and a software USIM.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};

use capillary_aka::vector::{generate_vector, verify_auts, Usim, UsimConfig};
use capillary_aka::Milenage;
use capillary_eap::eap;
use capillary_eap::peer::{EapAkaPeer, PeerConfig, PeerEvent, PeerFailure};
use capillary_eap::server::{
    EapAkaServer, FailureReason, IdentityKind, Method, ReauthContext, RejectReason, ServerConfig,
    ServerEvent, VectorInput,
};
use capillary_secrets::{Amf, Imsi, Opc, Rand, Res, Secret, Sqn, K};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

pub const IMSI: &str = "001010000000001";
pub const K_HEX: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
pub const OPC_HEX: &str = "cd63cb71954a9f4e48a5994e37a02baf";

pub fn identity() -> String {
    format!("6{IMSI}@wlan.mnc001.mcc001.3gppnetwork.org")
}

pub struct Hss {
    pub milenage: Milenage,
    pub seq: u64,
    pub pseudonyms: HashMap<String, Imsi>,
    pub reauth: HashMap<String, ReauthContext>,
    pub corrupt_xres: bool,
    pub reject: Option<RejectReason>,
    pub amf: Amf,
}

impl Hss {
    pub fn new() -> Self {
        let k = K::from_hex(K_HEX).unwrap();
        let opc = Opc::from_hex(OPC_HEX).unwrap();
        Self {
            milenage: Milenage::new(&k, &opc),
            seq: 1,
            pseudonyms: HashMap::new(),
            reauth: HashMap::new(),
            corrupt_xres: false,
            reject: None,
            amf: Amf([0x80, 0x00]),
        }
    }

    fn vector(&mut self, rng: &mut StdRng) -> VectorInput {
        let mut r = [0u8; 16];
        rng.fill_bytes(&mut r);
        let rand = Rand(r);
        let sqn = Sqn::from_seq_ind(self.seq, 0, 5).unwrap();
        self.seq += 1;
        let v = generate_vector(&self.milenage, &rand, &sqn, &self.amf);
        let xres = if self.corrupt_xres {
            let mut x = v.xres.expose().to_vec();
            x[0] ^= 1;
            Res::from_slice(&x).unwrap()
        } else {
            v.xres
        };
        VectorInput {
            rand: v.rand,
            autn: v.autn,
            xres,
            ck: v.ck,
            ik: v.ik,
        }
    }
}

pub fn usim(k_hex: &str) -> Usim {
    Usim::new(
        &K::from_hex(k_hex).unwrap(),
        &Opc::from_hex(OPC_HEX).unwrap(),
        UsimConfig::default(),
    )
}

pub fn peer(result_indication: bool) -> EapAkaPeer {
    EapAkaPeer::new(PeerConfig {
        permanent_identity: identity(),
        network_name: Some("WLAN".into()),
        result_indication,
    })
}

#[derive(Debug)]
pub struct ServerOutcome {
    pub ok: Option<(Method, IdentityKind, [u8; 64])>,
    pub session_id: Option<Vec<u8>>,
    pub failure: Option<FailureReason>,
    pub resyncs: usize,
    pub sent: Vec<Vec<u8>>,
}

#[derive(Debug)]
pub struct Outcome {
    pub server: ServerOutcome,
    pub peer_msk: Option<[u8; 64]>,
    pub peer_session_id: Option<Vec<u8>>,
    pub peer_failure: Option<PeerFailure>,
}

impl Outcome {
    pub fn assert_success(&self) -> (Method, IdentityKind) {
        let (m, k, msk) = self.server.ok.expect("server success");
        assert_eq!(Some(msk), self.peer_msk, "MSKs equal");
        assert_eq!(
            self.server.session_id, self.peer_session_id,
            "Session-Ids equal"
        );
        assert_eq!(self.peer_session_id.as_ref().map(Vec::len), Some(33));
        assert!(self.peer_failure.is_none());
        (m, k)
    }
}

pub type Tamper<'a> = &'a mut dyn FnMut(&[u8]) -> Vec<u8>;

/// One authentication. `start_with_identity`: the NAS sends EAP-Request/Identity to the peer
/// and forwards the answer; otherwise the server starts with AKA'-Identity.
pub fn run(
    server: &mut EapAkaServer,
    peer: &mut EapAkaPeer,
    usim: &mut Usim,
    hss: &mut Hss,
    rng: &mut StdRng,
    start_with_identity: bool,
    tamper: Tamper<'_>,
) -> Outcome {
    let mut out = Outcome {
        server: ServerOutcome {
            ok: None,
            session_id: None,
            failure: None,
            resyncs: 0,
            sent: Vec::new(),
        },
        peer_msk: None,
        peer_session_id: None,
        peer_failure: None,
    };
    let mut to_peer: VecDeque<Vec<u8>> = VecDeque::new();
    let mut to_server: VecDeque<Vec<u8>> = VecDeque::new();
    if start_with_identity {
        to_peer.push_back(eap::identity_request(200));
    } else {
        server.start();
    }
    for _round in 0..100 {
        let mut progressed = false;
        while let Some(ev) = server.poll_event() {
            progressed = true;
            match ev {
                ServerEvent::Send(b) => {
                    out.server.sent.push(b.clone());
                    to_peer.push_back(b)
                }
                ServerEvent::NeedVector { imsi } => {
                    assert_eq!(imsi.as_str(), IMSI);
                    if let Some(r) = hss.reject {
                        server.subscriber_rejected(r);
                    } else {
                        let v = hss.vector(rng);
                        server.provide_vector(v, rng);
                    }
                }
                ServerEvent::NeedResync { imsi, rand, auts } => {
                    assert_eq!(imsi.as_str(), IMSI);
                    out.server.resyncs += 1;
                    let sqn_ms = verify_auts(&hss.milenage, &rand, &auts).unwrap();
                    hss.seq = sqn_ms.seq(5) + 1;
                    let v = hss.vector(rng);
                    server.provide_vector(v, rng);
                }
                ServerEvent::ResolvePseudonym { pseudonym } => {
                    let imsi = hss.pseudonyms.get(&pseudonym).cloned();
                    server.provide_pseudonym(imsi, rng);
                }
                ServerEvent::ResolveReauth { reauth_id } => {
                    let rec = hss.reauth.get(&reauth_id).cloned();
                    server.provide_reauth(rec, rng);
                }
                ServerEvent::PersistPseudonym { pseudonym, imsi } => {
                    assert!(pseudonym.starts_with('7') && !pseudonym.contains('@'));
                    hss.pseudonyms.insert(pseudonym, imsi);
                }
                ServerEvent::PersistReauth { reauth_id, rec, .. } => {
                    assert!(reauth_id.starts_with('8'));
                    hss.reauth.insert(reauth_id, rec);
                }
                ServerEvent::ForgetReauth { reauth_id } => {
                    hss.reauth.remove(&reauth_id);
                }
                ServerEvent::Success {
                    eap,
                    imsi,
                    msk,
                    method,
                    identity,
                    session_id,
                    ..
                } => {
                    out.server.session_id = Some(session_id);
                    assert_eq!(imsi.as_str(), IMSI);
                    out.server.ok = Some((method, identity, *msk.expose_array()));
                    to_peer.push_back(eap);
                }
                ServerEvent::Failure { eap, reason } => {
                    out.server.failure = Some(reason);
                    to_peer.push_back(eap);
                }
                ServerEvent::Discarded { why } => panic!("discarded: {why:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
        while let Some(b) = to_peer.pop_front() {
            progressed = true;
            peer.handle_request(&b, rng);
        }
        while let Some(ev) = peer.poll_event() {
            progressed = true;
            match ev {
                PeerEvent::Send(b) => to_server.push_back(tamper(&b)),
                PeerEvent::RunAka { rand, autn } => {
                    let r = usim.authenticate(&rand, &autn);
                    peer.provide_aka(r);
                }
                PeerEvent::Success {
                    msk, session_id, ..
                } => {
                    out.peer_msk = Some(*msk.expose_array());
                    out.peer_session_id = Some(session_id);
                }
                PeerEvent::Failure { reason } => out.peer_failure = Some(reason),
                other => panic!("unexpected {other:?}"),
            }
        }
        while let Some(b) = to_server.pop_front() {
            progressed = true;
            if server.is_finished() {
                continue;
            }
            server.handle_response(&b, rng);
        }
        if !progressed {
            break;
        }
    }
    out
}

pub fn no_tamper() -> impl FnMut(&[u8]) -> Vec<u8> {
    |b: &[u8]| b.to_vec()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn cfg() -> ServerConfig {
    ServerConfig::default()
}
