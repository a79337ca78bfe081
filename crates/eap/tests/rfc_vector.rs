//! The peer against RFC 9048 Appendix D test case 3: a challenge MACed with the RFC's K_aut is
//! accepted, the response carries RES under the same K_aut, and the exported MSK/EMSK are the
//! RFC's. (Test case 1 has AMF separation bit 0 and is rejected by design, RFC 9048 §3.2.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use capillary_aka::vector::UsimOutcome;
use capillary_eap::eap::{self, Code};
use capillary_eap::msg::{AkaPacket, Subtype};
use capillary_eap::peer::{EapAkaPeer, PeerConfig, PeerEvent};
use capillary_eap::Attribute;
use capillary_secrets::{Autn, Ck, Ik, KAut, Rand, Res, Secret};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn v(t: &toml::Table, k: &str) -> String {
    t[k].as_str().unwrap().to_owned()
}

#[test]
fn peer_matches_rfc9048_test_case_3() {
    let t: toml::Table = toml::from_str(include_str!("data/rfc9048_case3.toml")).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let k_aut = KAut::from_hex(&v(&t, "k_aut")).unwrap();
    let mut peer = EapAkaPeer::new(PeerConfig {
        permanent_identity: v(&t, "identity"),
        network_name: Some(v(&t, "network_name")),
        result_indication: false,
    });
    peer.handle_request(&eap::identity_request(1), &mut rng);
    let Some(PeerEvent::Send(id)) = peer.poll_event() else {
        panic!()
    };
    assert_eq!(&id[5..], v(&t, "identity").as_bytes());

    let challenge = AkaPacket::new(
        Code::Request,
        2,
        Subtype::Challenge,
        vec![
            Attribute::Rand(Rand::from_hex(&v(&t, "rand")).unwrap()),
            Attribute::Autn(Autn::from_hex(&v(&t, "autn")).unwrap()),
            Attribute::Kdf(1),
            Attribute::KdfInput(v(&t, "network_name").into_bytes()),
        ],
    )
    .encode_with_mac(&k_aut, &[])
    .unwrap();
    peer.handle_request(&challenge, &mut rng);
    assert!(matches!(peer.poll_event(), Some(PeerEvent::RunAka { .. })));
    peer.provide_aka(Ok(UsimOutcome::Success {
        res: Res::from_hex(&v(&t, "res")).unwrap(),
        ck: Ck::from_hex(&v(&t, "ck")).unwrap(),
        ik: Ik::from_hex(&v(&t, "ik")).unwrap(),
    }));
    let Some(PeerEvent::Send(resp)) = peer.poll_event() else {
        panic!("no challenge response")
    };
    let d = AkaPacket::decode(&resp).unwrap();
    assert_eq!(d.packet.subtype, Subtype::Challenge);
    assert!(
        d.verify_mac(&k_aut, &[]),
        "response MAC under the RFC K_aut"
    );
    assert_eq!(
        d.packet.attributes.res().unwrap().expose(),
        hex::decode(v(&t, "res")).unwrap()
    );

    peer.handle_request(&eap::success(2), &mut rng);
    let Some(PeerEvent::Success {
        msk,
        emsk,
        session_id,
    }) = peer.poll_event()
    else {
        panic!("no success")
    };
    assert_eq!(hex::encode(msk.expose()), v(&t, "msk"));
    assert_eq!(hex::encode(emsk.expose()), v(&t, "emsk"));
    assert_eq!(
        hex::encode(session_id),
        format!("32{}{}", v(&t, "rand"), v(&t, "autn"))
    );
}
