//! Criterion benchmarks of the AKA crypto against the floor of this machine: one AES-128 block
//! and one SHA-256 compression, measured in the same binary and the same run, so the ratios
//! (`bench/floor-ratios.sh`) hold even when the absolute times move with the machine's load.
//! Figures and how to read them: `docs/PERFORMANCE.md`, section "Crypto against the floor".
//!
//! Run with
//! `cargo bench -p capillary-aka --bench floor -- --warm-up-time 1 --measurement-time 2`.
//!
//! - `floor/aes128_block`: `Aes128::encrypt_block` on one 16-byte block with a key expanded
//!   beforehand (the `aes` crate picks AES-NI at run time when the CPU has it).
//! - `floor/hmac_sha256_compression`: `sha2::compress256` on one 64-byte block, i.e. one
//!   SHA-256 compression function call and nothing else (no padding, no finalisation). HMAC
//!   costs whole compressions: with a 32-byte key and a short message, HMAC-SHA-256 is 4 of
//!   them (ipad block, message block, opad block, inner hash block).
//! - `milenage/f2345`: RES, CK, IK, AK from RAND (TS 35.206 §4.1): 4 AES blocks.
//! - `milenage/f1`: MAC-A (TS 35.206 §4.1): 2 AES blocks (TEMP, OUT1).
//! - `milenage/generate_vector`: f1 + f2345 + AUTN (TS 33.102 §6.3.2): 6 AES blocks (TEMP is
//!   computed once in f1 and once in f2345).
//! - `aka_prime/ck_ik_prime`: CK' ‖ IK' = KDF(CK ‖ IK, FC 0x20, "WLAN", SQN ⊕ AK)
//!   (TS 33.402 Annex A.2): one HMAC-SHA-256 = 4 compressions.
//! - `aka_prime/full_auth_keys`: PRF' for 208 bytes of MK with a 52-byte NAI
//!   (RFC 9048 §3.3): one HMAC key set-up (2 compressions) and 7 HMAC blocks of 3 compressions
//!   each = 23 compressions.
#![allow(missing_docs)]

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;
use capillary_aka::prime::{ck_ik_prime, full_auth_keys};
use capillary_aka::vector::generate_vector;
use capillary_aka::Milenage;
use capillary_secrets::{Amf, Opc, Rand, Sqn, K};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

/// TS 35.208 Test Set 1 K and OPc (the same subscriber as `crates/network/benches/auth.rs`).
const K_BYTES: [u8; 16] = [
    0x46, 0x5b, 0x5c, 0xe8, 0xb1, 0x99, 0xb4, 0x9f, 0xaa, 0x5f, 0x0a, 0x2e, 0xe2, 0x38, 0xa6, 0xbc,
];
const OPC_BYTES: [u8; 16] = [
    0xcd, 0x63, 0xcb, 0x71, 0x95, 0x4a, 0x9f, 0x4e, 0x48, 0xa5, 0x99, 0x4e, 0x37, 0xa0, 0x2b, 0xaf,
];
/// TS 35.208 Test Set 1 RAND, SQN and AMF.
const RAND: [u8; 16] = [
    0x23, 0x55, 0x3c, 0xbe, 0x96, 0x37, 0xa8, 0x9d, 0x21, 0x8a, 0xe6, 0x4d, 0xae, 0x47, 0xbf, 0x35,
];
const SQN: [u8; 6] = [0xff, 0x9b, 0xb4, 0xd0, 0xb6, 0x07];
const AMF: Amf = Amf([0xb9, 0xb9]);
/// A realistic permanent NAI (52 bytes), as in the network-side benchmarks.
const IDENTITY: &[u8] = b"6001010000000001@wlan.mnc001.mcc001.3gppnetwork.org";

fn bench_floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    let cipher = Aes128::new(GenericArray::from_slice(&K_BYTES));
    let mut block = GenericArray::clone_from_slice(&RAND);
    g.bench_function("aes128_block", |b| {
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
    g.bench_function("hmac_sha256_compression", |b| {
        b.iter(|| sha2::compress256(black_box(&mut state), black_box(&blocks)))
    });
    g.finish();
}

fn bench_milenage(c: &mut Criterion) {
    let m = Milenage::new(&K::from_bytes(K_BYTES), &Opc::from_bytes(OPC_BYTES));
    let rand = Rand(RAND);
    let sqn = Sqn::from_bytes(SQN);
    let mut g = c.benchmark_group("milenage");
    g.bench_function("f2345", |b| b.iter(|| m.f2345(black_box(&rand))));
    g.bench_function("f1", |b| {
        b.iter(|| m.f1(black_box(&rand), black_box(&sqn), black_box(&AMF)))
    });
    g.bench_function("generate_vector", |b| {
        b.iter(|| generate_vector(black_box(&m), black_box(&rand), black_box(&sqn), &AMF))
    });
    g.finish();
}

fn bench_prime(c: &mut Criterion) {
    let m = Milenage::new(&K::from_bytes(K_BYTES), &Opc::from_bytes(OPC_BYTES));
    let (_, ck, ik, ak) = m.f2345(&Rand(RAND));
    let sqn_xor_ak: [u8; 6] = std::array::from_fn(|i| SQN[i] ^ ak[i]);
    let mut g = c.benchmark_group("aka_prime");
    g.bench_function("ck_ik_prime", |b| {
        b.iter(|| {
            ck_ik_prime(
                black_box(&ck),
                black_box(&ik),
                black_box(b"WLAN"),
                black_box(&sqn_xor_ak),
            )
        })
    });
    let (ckp, ikp) = ck_ik_prime(&ck, &ik, b"WLAN", &sqn_xor_ak);
    g.bench_function("full_auth_keys", |b| {
        b.iter(|| full_auth_keys(black_box(IDENTITY), black_box(&ckp), black_box(&ikp)))
    });
    g.finish();
}

criterion_group!(floor, bench_floor, bench_milenage, bench_prime);
criterion_main!(floor);
