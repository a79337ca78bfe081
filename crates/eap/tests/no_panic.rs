//! Arbitrary bytes at every server state and at the peer: typed outcomes, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use capillary_eap::peer::PeerEvent;
use capillary_eap::server::{EapAkaServer, ServerEvent};
use common::*;
use proptest::prelude::*;

/// Drives a fresh server to a state: 0 = start, 1 = after start(), 2 = waiting for a vector,
/// 3 = challenge sent, 5 = failure notification sent, 6 = resolving a pseudonym,
/// other = re-authentication sent. Returns the server and the outstanding
/// request identifier.
fn server_at(stage: u8, seed: u64) -> (EapAkaServer, u8) {
    let mut rng = rng(seed);
    let mut s = EapAkaServer::new(cfg(), 7);
    let id_resp = capillary_eap::eap::identity_response(1, identity().as_bytes());
    match stage {
        0 => {}
        1 => s.start(),
        2 => s.handle_response(&id_resp, &mut rng),
        3 => {
            s.handle_response(&id_resp, &mut rng);
            let mut hss = Hss::new();
            let _ = s.poll_event();
            let v = {
                let mut r = [0u8; 16];
                rand::RngCore::fill_bytes(&mut rng, &mut r);
                let sqn = capillary_secrets::Sqn::from_seq_ind(1, 0, 5).unwrap();
                let v = capillary_aka::vector::generate_vector(
                    &hss.milenage,
                    &capillary_secrets::Rand(r),
                    &sqn,
                    &capillary_secrets::Amf([0x80, 0]),
                );
                hss.seq += 1;
                capillary_eap::server::VectorInput {
                    rand: v.rand,
                    autn: v.autn,
                    xres: v.xres,
                    ck: v.ck,
                    ik: v.ik,
                }
            };
            s.provide_vector(v, &mut rng);
        }
        5 => {
            // Failure notification outstanding.
            s.handle_response(&id_resp, &mut rng);
            let _ = s.poll_event();
            s.subscriber_rejected(capillary_eap::server::RejectReason::Barred);
        }
        6 => {
            // Waiting for a pseudonym lookup.
            s.handle_response(
                &capillary_eap::eap::identity_response(1, b"7abc@realm"),
                &mut rng,
            );
        }
        _ => {
            // Full authentication, then a fresh server for the re-authentication.
            let mut hss = Hss::new();
            let mut u = usim(K_HEX);
            let mut p = peer(false);
            let mut s1 = EapAkaServer::new(cfg(), 1);
            run(
                &mut s1,
                &mut p,
                &mut u,
                &mut hss,
                &mut rng,
                true,
                &mut no_tamper(),
            )
            .assert_success();
            let id = p.reauth_id().unwrap().to_owned();
            s.handle_response(
                &capillary_eap::eap::identity_response(1, id.as_bytes()),
                &mut rng,
            );
            let _ = s.poll_event();
            s.provide_reauth(hss.reauth.get(&id).cloned(), &mut rng);
        }
    }
    let mut last = 0;
    while let Some(ev) = s.poll_event() {
        if let ServerEvent::Send(b) = ev {
            last = b[1];
        }
    }
    (s, last)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn server_survives_arbitrary_bytes(stage in 0u8..7, raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (mut s, _) = server_at(stage, 1);
        let mut rng = rng(2);
        s.handle_response(&raw, &mut rng);
        while s.poll_event().is_some() {}
    }

    #[test]
    fn server_survives_arbitrary_aka_bodies(stage in 1u8..8, sub in prop_oneof![Just(1u8), Just(2), Just(4), Just(5), Just(12), Just(13), Just(14), any::<u8>()], body in proptest::collection::vec(any::<u8>(), 0..160)) {
        let (mut s, id) = server_at(stage, 3);
        let mut p = vec![2, id, 0, 0, 50, sub, 0, 0];
        p.extend_from_slice(&body);
        let n = p.len() as u16;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        let mut rng = rng(4);
        s.handle_response(&p, &mut rng);
        while s.poll_event().is_some() {}
        // A second packet after whatever happened.
        s.handle_response(&p, &mut rng);
        while s.poll_event().is_some() {}
    }

    #[test]
    fn peer_survives_arbitrary_bytes(sub in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..160), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut peer = peer(true);
        let mut rng = rng(5);
        peer.handle_request(&raw, &mut rng);
        let mut p = vec![1, 3, 0, 0, 50, sub, 0, 0];
        p.extend_from_slice(&body);
        let n = p.len() as u16;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        peer.handle_request(&p, &mut rng);
        while let Some(ev) = peer.poll_event() {
            if let PeerEvent::RunAka { .. } = ev {
                peer.provide_aka(Err(capillary_aka::AkaError::MacFailure));
            }
        }
    }
}
