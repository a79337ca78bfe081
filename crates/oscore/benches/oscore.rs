//! Criterion benchmarks of OSCORE protect/unprotect (RFC 8613 §8) against the floor of this
//! machine (one AES-128 block, one SHA-256 compression), measured in the same binary and run.
//! Ratios: `bench/floor-ratios.sh`; figures and how to read them: `docs/PERFORMANCE.md`,
//! section "Crypto against the floor".
//!
//! Run with
//! `cargo bench -p capillary-oscore --bench oscore -- --warm-up-time 1 --measurement-time 2`.
//!
//! Contexts: RFC 8613 Appendix C.1 (Master Secret, Master Salt; client Sender ID empty,
//! server Sender ID 0x01), AES-CCM-16-64-128. Messages are `capillary_coap` `Message`
//! values: CoAP encoding and parsing are not included.
//!
//! - `oscore/floor/aes128_block`, `oscore/floor/hmac_sha256_compression`: the same floor as
//!   `crates/aka/benches/floor.rs`, measured again in this binary.
//! - `oscore/protect_request`: client side, a CON POST with a 4-byte token, Uri-Path "u",
//!   Content-Format 60 and a 64-byte payload (a device uplink, `crates/device`). Each
//!   iteration uses the next Sender Sequence Number, as a long-lived context does.
//! - `oscore/unprotect_request`: server side, the same request, each with a fresh Partial IV
//!   in increasing order (so the Replay Window accepts every one). The protected requests
//!   are made in criterion's untimed set-up.
//! - `oscore/protect_response`: server side, a 2.04 Changed ACK without payload, reusing the
//!   request's nonce (no fresh Partial IV, RFC 8613 §8.3), the usual answer to an uplink.
#![allow(missing_docs)]

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;
use capillary_coap::msg::{Code, Message, MessageType};
use capillary_oscore::{ContextParams, SecurityContext};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use std::hint::black_box;

const MASTER_SECRET: [u8; 16] = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10,
];
const MASTER_SALT: [u8; 8] = [0x9e, 0x7c, 0xa9, 0x22, 0x23, 0x78, 0x63, 0x40];
const CLIENT_ID: &[u8] = &[];
const SERVER_ID: &[u8] = &[0x01];
/// application/cbor (RFC 8949 §9.5).
const CONTENT_FORMAT_CBOR: u16 = 60;

fn context(sender: &[u8], recipient: &[u8]) -> SecurityContext {
    let mut p = ContextParams::new(&MASTER_SECRET, sender, recipient);
    p.master_salt = &MASTER_SALT;
    SecurityContext::new(p).expect("RFC 8613 C.1 parameters derive a context")
}

fn uplink(mid: u16) -> Message {
    let mut m = Message::new(
        MessageType::Con,
        Code::POST,
        mid,
        vec![0x4a, 0x1c, 0x02, 0x7f],
    );
    m.set_uri_path("u");
    m.set_content_format(CONTENT_FORMAT_CBOR);
    m.payload = (0u8..64).collect();
    m
}

fn bench_floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("oscore");
    let cipher = Aes128::new(GenericArray::from_slice(&MASTER_SECRET));
    let mut block = GenericArray::clone_from_slice(&[0x5a; 16]);
    g.bench_function("floor/aes128_block", |b| {
        b.iter(|| {
            cipher.encrypt_block(black_box(&mut block));
        })
    });
    // SHA-256 initial hash value (FIPS 180-4 §5.3.3); the state then chains from call to call.
    let mut state: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let blocks = [GenericArray::clone_from_slice(&[0x36u8; 64])];
    g.bench_function("floor/hmac_sha256_compression", |b| {
        b.iter(|| sha2::compress256(black_box(&mut state), black_box(&blocks)))
    });
    g.finish();
}

fn bench_oscore(c: &mut Criterion) {
    let mut client = context(CLIENT_ID, SERVER_ID);
    let mut server = context(SERVER_ID, CLIENT_ID);
    let req = uplink(1);

    // Sanity: one exchange round-trips before anything is measured.
    let (wire, mut client_binding) = client.protect_request(&req).expect("request protects");
    let (plain, binding) = server.unprotect_request(&wire).expect("request verifies");
    assert_eq!((plain.code, &plain.payload), (req.code, &req.payload));
    let resp = Message::response_to(&plain, Code::CHANGED, plain.message_id);
    let protected = server
        .protect_response(&resp, &binding, false)
        .expect("response protects");
    let answer = client
        .unprotect_response(&protected, &mut client_binding)
        .expect("response verifies");
    assert_eq!(answer.code, Code::CHANGED);

    let mut g = c.benchmark_group("oscore");
    g.bench_function("protect_request", |b| {
        b.iter(|| client.protect_request(black_box(&req)))
    });
    g.bench_function("unprotect_request", |b| {
        b.iter_batched(
            || client.protect_request(&req).expect("request protects").0,
            |wire| server.unprotect_request(black_box(&wire)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("protect_response", |b| {
        b.iter(|| server.protect_response(black_box(&resp), black_box(&binding), false))
    });
    g.finish();
}

criterion_group!(oscore, bench_floor, bench_oscore);
criterion_main!(oscore);
