//! RFC 8613 Appendix C test vectors (tests/data/rfc8613.toml), byte-exact.

#![allow(clippy::unwrap_used)]

mod common;

use capillary_coap::msg::Message;
use capillary_oscore::crypto::{aad, info, nonce, ssn_from_piv};
use capillary_oscore::{OscoreOption, SecurityContext};
use common::{h, vectors, Owned};

#[test]
fn c1_c2_c3_context_derivation() {
    let v = vectors();
    assert_eq!(v.derivation.len(), 6);
    for d in &v.derivation {
        let o = Owned::new(
            &d.master_secret,
            &d.master_salt,
            &d.id_context,
            &d.sender_id,
            &d.recipient_id,
        );
        let idc = o.idc.as_deref();
        assert_eq!(
            info(&o.sid, idc, "Key", 16),
            h(&d.sender_info),
            "{}",
            d.name
        );
        assert_eq!(
            info(&o.rid, idc, "Key", 16),
            h(&d.recipient_info),
            "{}",
            d.name
        );
        assert_eq!(info(&[], idc, "IV", 13), h(&d.common_iv_info), "{}", d.name);
        let ctx = SecurityContext::new(o.params()).unwrap();
        assert_eq!(
            ctx.sender_key().expose().as_slice(),
            h(&d.sender_key),
            "{}",
            d.name
        );
        assert_eq!(
            ctx.recipient_key().expose().as_slice(),
            h(&d.recipient_key),
            "{}",
            d.name
        );
        assert_eq!(
            ctx.common_iv().expose().as_slice(),
            h(&d.common_iv),
            "{}",
            d.name
        );
        assert_eq!(
            nonce(ctx.common_iv(), &o.sid, &[0]).unwrap().as_slice(),
            h(&d.sender_nonce),
            "{}",
            d.name
        );
        assert_eq!(
            nonce(ctx.common_iv(), &o.rid, &[0]).unwrap().as_slice(),
            h(&d.recipient_nonce),
            "{}",
            d.name
        );
        assert_eq!(ctx.id_context(), idc);
    }
}

#[test]
fn c4_c5_c6_request_protection() {
    let v = vectors();
    assert_eq!(v.request.len(), 3);
    for r in &v.request {
        let o = r.owned();
        let mut client = o.context_at(r.ssn);
        let plain = Message::parse(&h(&r.unprotected)).unwrap();
        // intermediate values
        let piv = capillary_oscore::crypto::piv_from_ssn(r.ssn);
        assert_eq!(aad(&o.sid, &piv), h(&r.aad), "{}", r.name);
        assert_eq!(
            nonce(client.common_iv(), &o.sid, &piv).unwrap().as_slice(),
            h(&r.nonce),
            "{}",
            r.name
        );
        let (prot, binding) = client.protect_request(&plain).unwrap();
        assert_eq!(prot.option(9).unwrap(), h(&r.oscore_option), "{}", r.name);
        assert_eq!(prot.payload, h(&r.ciphertext), "{}", r.name);
        assert_eq!(
            hex::encode(prot.encode().unwrap()),
            r.protected,
            "{}",
            r.name
        );
        assert_eq!(binding.partial_iv(), piv);
        assert_eq!(client.sender_sequence_number(), r.ssn + 1);

        // The server side (sender/recipient swapped) recovers the unprotected request.
        let so = Owned::new(
            &r.master_secret,
            &r.master_salt,
            &r.id_context,
            &r.recipient_id,
            &r.sender_id,
        );
        let mut server = SecurityContext::new(so.params()).unwrap();
        let wire = Message::parse(&h(&r.protected)).unwrap();
        let (got, sb) = server.unprotect_request(&wire).unwrap();
        assert_eq!(got, plain, "{}", r.name);
        assert_eq!(sb, binding, "{}", r.name);
        assert_eq!(server.replay_high_water(), ssn_from_piv(&piv));
    }
}

#[test]
fn c7_c8_response_protection() {
    let v = vectors();
    assert_eq!(v.response.len(), 2);
    for r in &v.response {
        let o = r.owned();
        let mut server = o.context_at(r.ssn);
        let (_, binding) = server
            .unprotect_request(&Message::parse(&h(r.request_protected.as_ref().unwrap())).unwrap())
            .unwrap();
        assert_eq!(aad(binding.kid(), binding.partial_iv()), h(&r.aad));
        let plain = Message::parse(&h(&r.unprotected)).unwrap();
        let prot = server
            .protect_response(&plain, &binding, r.fresh_piv.unwrap())
            .unwrap();
        assert_eq!(prot.option(9).unwrap(), h(&r.oscore_option), "{}", r.name);
        let optv = h(&r.oscore_option);
        let opt = OscoreOption::decode(&optv).unwrap();
        let n = match opt.partial_iv {
            Some(p) => nonce(server.common_iv(), &o.sid, p).unwrap(),
            None => nonce(server.common_iv(), binding.kid(), binding.partial_iv()).unwrap(),
        };
        assert_eq!(n.as_slice(), h(&r.nonce), "{}", r.name);
        assert_eq!(prot.payload, h(&r.ciphertext), "{}", r.name);
        assert_eq!(
            hex::encode(prot.encode().unwrap()),
            r.protected,
            "{}",
            r.name
        );

        // The client that sent C.4 verifies it.
        let co = Owned::new(
            &r.master_secret,
            &r.master_salt,
            &r.id_context,
            &r.recipient_id,
            &r.sender_id,
        );
        let mut client = co.context_at(20);
        let (_, mut cb) = client
            .protect_request(
                &Message::parse(&h("44015d1f00003974396c6f63616c686f737483747631")).unwrap(),
            )
            .unwrap();
        let got = client
            .unprotect_response(&Message::parse(&h(&r.protected)).unwrap(), &mut cb)
            .unwrap();
        assert_eq!(got, plain, "{}", r.name);
    }
}
