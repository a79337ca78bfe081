//! Server ↔ peer runs in memory (RFC 9048 §3, RFC 4187 §4–§6).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use capillary_eap::attr::types::AT_MAC;
use capillary_eap::msg::{AkaPacket, Subtype};
use capillary_eap::peer::PeerFailure;
use capillary_eap::server::{EapAkaServer, FailureReason, IdentityKind, Method, RejectReason};
use common::*;

#[test]
fn full_auth_with_eap_identity() {
    let (mut hss, mut rng) = (Hss::new(), rng(1));
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let mut s = EapAkaServer::new(cfg(), 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(
        out.assert_success(),
        (Method::Full, IdentityKind::Permanent)
    );
    assert!(p.pseudonym().unwrap().starts_with('7'));
    assert!(p
        .pseudonym()
        .unwrap()
        .ends_with("@wlan.mnc001.mcc001.3gppnetwork.org"));
    assert!(p.reauth_id().unwrap().starts_with('8'));
    assert_eq!(hss.pseudonyms.len(), 1);
    assert_eq!(hss.reauth.len(), 1);
}

#[test]
fn full_auth_started_by_server_with_identity_round() {
    let (mut hss, mut rng) = (Hss::new(), rng(2));
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let mut c = cfg();
    c.pseudonyms = false;
    c.fast_reauth = false;
    let mut s = EapAkaServer::new(c, 9);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        false,
        &mut no_tamper(),
    );
    assert_eq!(
        out.assert_success(),
        (Method::Full, IdentityKind::Permanent)
    );
    // No AT_ENCR_DATA when neither pseudonyms nor re-authentication are enabled.
    assert!(p.pseudonym().is_none() && p.reauth_id().is_none());
    // The challenge carries a 32-octet AT_CHECKCODE over the identity round.
    let ch = AkaPacket::decode(&out.server.sent[1]).unwrap().packet;
    assert_eq!(ch.subtype, Subtype::Challenge);
    assert_eq!(ch.attributes.checkcode().unwrap().len(), 32);
}

#[test]
fn resynchronisation() {
    let (mut hss, mut rng) = (Hss::new(), rng(3));
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    hss.seq = 1000;
    let mut s = EapAkaServer::new(cfg(), 1);
    run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    )
    .assert_success();
    // The HSS lost its SQN: the USIM answers with AUTS.
    hss.seq = 5;
    let mut p = peer(false);
    let mut s = EapAkaServer::new(cfg(), 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(out.server.resyncs, 1);
    out.assert_success();
    assert!(hss.seq > 1000);
}

#[test]
fn pseudonym_then_auth_and_unknown_pseudonym_escalates() {
    let (mut hss, mut rng) = (Hss::new(), rng(4));
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let mut c = cfg();
    c.fast_reauth = false;
    let mut s = EapAkaServer::new(c.clone(), 1);
    run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    )
    .assert_success();
    let first = p.pseudonym().unwrap().to_owned();
    let mut s = EapAkaServer::new(c.clone(), 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(
        out.assert_success(),
        (Method::Full, IdentityKind::Pseudonym)
    );
    assert_ne!(
        p.pseudonym().unwrap(),
        first,
        "a new pseudonym every full authentication"
    );
    // The store forgets all pseudonyms: AT_PERMANENT_ID_REQ round, AT_CHECKCODE over it.
    hss.pseudonyms.clear();
    let mut s = EapAkaServer::new(c, 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(
        out.assert_success(),
        (Method::Full, IdentityKind::Permanent)
    );
}

#[test]
fn reauth_three_times_then_full_auth() {
    for result_ind in [false, true] {
        let (mut hss, mut rng) = (Hss::new(), rng(5));
        let mut u = usim(K_HEX);
        let mut p = peer(result_ind);
        let mut c = cfg();
        c.max_reauth = 3;
        c.result_indication = result_ind;
        let mut msks = Vec::new();
        let mut s = EapAkaServer::new(c.clone(), 1);
        let out = run(
            &mut s,
            &mut p,
            &mut u,
            &mut hss,
            &mut rng,
            true,
            &mut no_tamper(),
        );
        assert_eq!(
            out.assert_success(),
            (Method::Full, IdentityKind::Permanent)
        );
        msks.push(out.peer_msk);
        for i in 0..3 {
            let mut s = EapAkaServer::new(c.clone(), 1);
            let out = run(
                &mut s,
                &mut p,
                &mut u,
                &mut hss,
                &mut rng,
                true,
                &mut no_tamper(),
            );
            assert_eq!(
                out.assert_success(),
                (Method::FastReauth, IdentityKind::Reauth),
                "reauth {i}"
            );
            msks.push(out.peer_msk);
        }
        assert!(
            p.reauth_id().is_none(),
            "no new reauth id at the counter limit"
        );
        let mut s = EapAkaServer::new(c.clone(), 1);
        let out = run(
            &mut s,
            &mut p,
            &mut u,
            &mut hss,
            &mut rng,
            true,
            &mut no_tamper(),
        );
        assert_eq!(
            out.assert_success(),
            (Method::Full, IdentityKind::Pseudonym)
        );
        msks.push(out.peer_msk);
        msks.dedup();
        assert_eq!(msks.len(), 5, "fresh MSK every time");
    }
}

#[test]
fn stored_counter_over_limit_forces_full_auth_on_reauth_identity() {
    let (mut hss, mut rng) = (Hss::new(), rng(6));
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let c = cfg();
    let mut s = EapAkaServer::new(c.clone(), 1);
    run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    )
    .assert_success();
    for rec in hss.reauth.values_mut() {
        rec.counter = c.max_reauth + 1;
    }
    let mut s = EapAkaServer::new(c, 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(out.assert_success(), (Method::Full, IdentityKind::Reauth));
}

#[test]
fn counter_too_small_falls_back_to_full_auth() {
    let (mut hss, mut rng) = (Hss::new(), rng(7));
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let c = cfg();
    let mut s = EapAkaServer::new(c.clone(), 1);
    run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    )
    .assert_success();
    let mut s = EapAkaServer::new(c.clone(), 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(out.assert_success().0, Method::FastReauth);
    // Replay an old counter value.
    for rec in hss.reauth.values_mut() {
        rec.counter = 1;
    }
    let mut s = EapAkaServer::new(c, 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(out.assert_success(), (Method::Full, IdentityKind::Reauth));
}

#[test]
fn unknown_reauth_id_asks_for_fullauth_identity() {
    let (mut hss, mut rng) = (Hss::new(), rng(8));
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let mut s = EapAkaServer::new(cfg(), 1);
    run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    )
    .assert_success();
    hss.reauth.clear();
    let mut s = EapAkaServer::new(cfg(), 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(
        out.assert_success(),
        (Method::Full, IdentityKind::Pseudonym)
    );
}

#[test]
fn wrong_k_peer_rejects() {
    let (mut hss, mut rng) = (Hss::new(), rng(9));
    let mut u = usim("000102030405060708090a0b0c0d0e0f");
    let mut p = peer(false);
    let mut s = EapAkaServer::new(cfg(), 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(
        out.server.failure,
        Some(FailureReason::AuthenticationReject)
    );
    assert!(matches!(
        out.peer_failure,
        Some(PeerFailure::AuthenticationRejected(_))
    ));
    assert!(out.server.ok.is_none() && out.peer_msk.is_none());
}

#[test]
fn amf_separation_bit_zero_is_rejected() {
    let (mut hss, mut rng) = (Hss::new(), rng(10));
    hss.amf = capillary_secrets::Amf([0, 0]);
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let mut s = EapAkaServer::new(cfg(), 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(out.server.failure, Some(FailureReason::VectorInvalid));
}

#[test]
fn bad_mac_from_peer() {
    let (mut hss, mut rng) = (Hss::new(), rng(11));
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let mut s = EapAkaServer::new(cfg(), 1);
    let mut tamper = |b: &[u8]| {
        let mut b = b.to_vec();
        if let Ok(d) = AkaPacket::decode(&b) {
            if d.packet.subtype == Subtype::Challenge && d.packet.attributes.has(AT_MAC) {
                let n = b.len();
                b[n - 1] ^= 0x01; // AT_MAC is the last attribute
            }
        }
        b
    };
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut tamper,
    );
    assert_eq!(out.server.failure, Some(FailureReason::MacInvalid));
    assert_eq!(out.peer_failure, Some(PeerFailure::Notification(16384)));
}

#[test]
fn res_mismatch() {
    let (mut hss, mut rng) = (Hss::new(), rng(12));
    hss.corrupt_xres = true;
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let mut s = EapAkaServer::new(cfg(), 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(out.server.failure, Some(FailureReason::ResMismatch));
    assert!(out.peer_msk.is_none());
}

#[test]
fn unknown_subscriber() {
    let (mut hss, mut rng) = (Hss::new(), rng(13));
    hss.reject = Some(RejectReason::Unknown);
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let mut s = EapAkaServer::new(cfg(), 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(out.server.failure, Some(FailureReason::UnknownSubscriber));
    assert_eq!(out.peer_failure, Some(PeerFailure::Notification(16384)));
}

#[test]
fn wrong_network_name_is_rejected_by_peer() {
    let (mut hss, mut rng) = (Hss::new(), rng(14));
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let mut c = cfg();
    c.network_name = "OTHER".into();
    let mut s = EapAkaServer::new(c, 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(
        out.server.failure,
        Some(FailureReason::AuthenticationReject)
    );
    assert_eq!(out.peer_failure, Some(PeerFailure::NetworkName));
}

#[test]
fn peer_proposing_other_kdf_fails() {
    let (mut hss, mut rng) = (Hss::new(), rng(15));
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let mut s = EapAkaServer::new(cfg(), 1);
    let mut tamper = |b: &[u8]| match AkaPacket::decode(b) {
        Ok(d) if d.packet.subtype == Subtype::Challenge => AkaPacket::new(
            capillary_eap::eap::Code::Response,
            d.packet.identifier,
            Subtype::Challenge,
            vec![capillary_eap::Attribute::Kdf(2)],
        )
        .encode()
        .unwrap(),
        _ => b.to_vec(),
    };
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut tamper,
    );
    assert_eq!(out.server.failure, Some(FailureReason::KdfUnsupported));
}

#[test]
fn peer_negotiates_kdf_and_rejects_unknown_kdfs() {
    use capillary_eap::eap::Code;
    use capillary_eap::peer::PeerEvent;
    use capillary_eap::Attribute;
    use capillary_secrets::{Autn, Rand};
    let mut rng = rng(16);
    let req = |kdfs: &[u16]| {
        let mut attrs = vec![
            Attribute::Rand(Rand([1; 16])),
            Attribute::Autn(Autn([0x80; 16])),
        ];
        attrs.extend(kdfs.iter().map(|k| Attribute::Kdf(*k)));
        attrs.push(Attribute::KdfInput(b"WLAN".to_vec()));
        attrs.push(Attribute::Mac([0; 16]));
        AkaPacket::new(Code::Request, 3, Subtype::Challenge, attrs)
            .encode()
            .unwrap()
    };
    let mut p = peer(false);
    p.handle_request(&req(&[7, 1]), &mut rng);
    let Some(PeerEvent::Send(b)) = p.poll_event() else {
        panic!("expected a response")
    };
    let d = AkaPacket::decode(&b).unwrap().packet;
    assert_eq!(d.subtype, Subtype::Challenge);
    assert_eq!(d.attributes.kdfs(), vec![1]);
    assert!(!d.attributes.has(AT_MAC));

    let mut p = peer(false);
    p.handle_request(&req(&[7]), &mut rng);
    let Some(PeerEvent::Send(b)) = p.poll_event() else {
        panic!("expected a response")
    };
    assert_eq!(
        AkaPacket::decode(&b).unwrap().packet.subtype,
        Subtype::AuthenticationReject
    );
    assert!(matches!(
        p.poll_event(),
        Some(PeerEvent::Failure {
            reason: PeerFailure::KdfUnsupported
        })
    ));
}

#[test]
fn nak_client_error_and_wrong_identifier() {
    use capillary_eap::server::{DiscardReason, ServerEvent};
    let mut rng = rng(17);
    // Nak.
    let mut s = EapAkaServer::new(cfg(), 1);
    s.start();
    let Some(ServerEvent::Send(req)) = s.poll_event() else {
        panic!()
    };
    s.handle_response(
        &capillary_eap::eap::nak(req[1].wrapping_add(1), &[23]),
        &mut rng,
    );
    assert!(matches!(
        s.poll_event(),
        Some(ServerEvent::Discarded {
            why: DiscardReason::WrongIdentifier
        })
    ));
    s.handle_response(&capillary_eap::eap::nak(req[1], &[23]), &mut rng);
    assert!(matches!(
        s.poll_event(),
        Some(ServerEvent::Failure {
            reason: FailureReason::PeerNak,
            ..
        })
    ));
    // Client-Error.
    let mut s = EapAkaServer::new(cfg(), 1);
    s.start();
    let Some(ServerEvent::Send(req)) = s.poll_event() else {
        panic!()
    };
    let ce = AkaPacket::new(
        capillary_eap::eap::Code::Response,
        req[1],
        Subtype::ClientError,
        vec![capillary_eap::Attribute::ClientErrorCode(0)],
    )
    .encode()
    .unwrap();
    s.handle_response(&ce, &mut rng);
    let Some(ServerEvent::Failure { eap, reason }) = s.poll_event() else {
        panic!()
    };
    assert_eq!(reason, FailureReason::ClientError(0));
    assert_eq!(eap, vec![4, req[1], 0, 4]);
    assert!(s.is_finished());
}

#[test]
fn server_started_reauth_covers_identity_round_in_checkcode() {
    let (mut hss, mut rng) = (Hss::new(), rng(18));
    let mut u = usim(K_HEX);
    let mut p = peer(true);
    let mut c = cfg();
    c.result_indication = true;
    let mut s = EapAkaServer::new(c.clone(), 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        false,
        &mut no_tamper(),
    );
    assert_eq!(
        out.assert_success(),
        (Method::Full, IdentityKind::Permanent)
    );
    let mut s = EapAkaServer::new(c, 250);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        false,
        &mut no_tamper(),
    );
    assert_eq!(
        out.assert_success(),
        (Method::FastReauth, IdentityKind::Reauth)
    );
    // AKA'-Identity, Re-authentication, success Notification; identifiers wrap.
    assert_eq!(out.server.sent.len(), 3);
    let reauth = AkaPacket::decode(&out.server.sent[1]).unwrap().packet;
    assert_eq!(reauth.subtype, Subtype::Reauthentication);
    assert_eq!(reauth.attributes.checkcode().unwrap().len(), 32);
    assert_eq!(out.server.sent[2][1], 252);
}

/// `issued_id_bytes` and `reauth_id_realm` (the gateway link's short identities): a
/// 64-bit re-authentication identity without a realm, used as issued for a fast
/// re-authentication, which issues the next one in the same form.
#[test]
fn short_reauth_identities_without_realm() {
    let (mut hss, mut rng) = (Hss::new(), rng(31));
    let mut u = usim(K_HEX);
    let mut p = peer(false);
    let mut c = cfg();
    c.pseudonyms = false;
    c.issued_id_bytes = 8;
    c.reauth_id_realm = false;
    let short = |id: &str| {
        id.len() == 17 && id.starts_with('8') && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
    };
    let mut s = EapAkaServer::new(c.clone(), 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(
        out.assert_success(),
        (Method::Full, IdentityKind::Permanent)
    );
    let first = p.reauth_id().unwrap().to_owned();
    assert!(short(&first), "{first}");
    let mut s = EapAkaServer::new(c.clone(), 1);
    let out = run(
        &mut s,
        &mut p,
        &mut u,
        &mut hss,
        &mut rng,
        true,
        &mut no_tamper(),
    );
    assert_eq!(
        out.assert_success(),
        (Method::FastReauth, IdentityKind::Reauth)
    );
    let next = p.reauth_id().unwrap();
    assert!(short(next) && next != first, "{next}");
    // Out-of-range sizes are clamped: 0 gives 8 bytes, 100 gives 32.
    for (asked, chars) in [(0, 17), (100, 65)] {
        let (mut hss, mut rng) = (Hss::new(), common::rng(32));
        let mut u = usim(K_HEX);
        let mut p = peer(false);
        let mut c = cfg();
        c.issued_id_bytes = asked;
        let mut s = EapAkaServer::new(c, 1);
        let out = run(
            &mut s,
            &mut p,
            &mut u,
            &mut hss,
            &mut rng,
            true,
            &mut no_tamper(),
        );
        out.assert_success();
        let id = p.reauth_id().unwrap();
        assert_eq!(id.split('@').next().unwrap().len(), chars, "{id}");
        assert!(id.ends_with("@wlan.mnc001.mcc001.3gppnetwork.org"), "{id}");
    }
}
