//! Criterion benchmarks: one authentication vector (Milenage f1..f5 + AUTN) and the
//! EAP-AKA' full-authentication key derivation (CK'/IK' → PRF' → 208 bytes of MK).
#![allow(missing_docs)]

use capillary_aka::prime::{ck_ik_prime, full_auth_keys};
use capillary_aka::vector::generate_vector;
use capillary_aka::Milenage;
use capillary_secrets::{Amf, Ck, Ik, Opc, Rand, Sqn, K};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn benches(c: &mut Criterion) {
    // TS 35.208 test set 19 / RFC 9048 Appendix D case 1.
    let k = K::from_bytes([
        0x51, 0x22, 0x25, 0x02, 0x14, 0xc3, 0x3e, 0x72, 0x3a, 0x5d, 0xd5, 0x23, 0xfc, 0x14, 0x5f,
        0xc0,
    ]);
    let opc = Opc::from_bytes([
        0x98, 0x1d, 0x46, 0x4c, 0x7c, 0x52, 0xeb, 0x6e, 0x50, 0x36, 0x23, 0x49, 0x84, 0xad, 0x0b,
        0xcf,
    ]);
    let m = Milenage::new(&k, &opc);
    let rand = Rand([0x81; 16]);
    let sqn = Sqn::from_bytes([0x16, 0xf3, 0xb3, 0xf7, 0x0f, 0xc2]);
    let amf = Amf([0xc3, 0xab]);

    c.bench_function("generate_vector", |b| {
        b.iter(|| generate_vector(black_box(&m), black_box(&rand), black_box(&sqn), &amf))
    });

    let (ckp, ikp) = ck_ik_prime(
        &Ck::from_bytes([0xc0; 16]),
        &Ik::from_bytes([0xb0; 16]),
        b"WLAN",
        &[0xa0; 6],
    );
    c.bench_function("full_auth_keys", |b| {
        b.iter(|| {
            full_auth_keys(
                black_box(b"0555444333222111"),
                black_box(&ckp),
                black_box(&ikp),
            )
        })
    });
}

criterion_group!(vector, benches);
criterion_main!(vector);
