//! The Milenage algorithm set (3GPP TS 35.206 §4.1), on the RustCrypto `aes` block cipher.
//!
//! ```text
//! OPc  = OP ⊕ E_K(OP)
//! TEMP = E_K(RAND ⊕ OPc)
//! IN1  = SQN ‖ AMF ‖ SQN ‖ AMF
//! OUT1 = E_K(TEMP ⊕ rot(IN1 ⊕ OPc, r1) ⊕ c1) ⊕ OPc
//! OUTn = E_K(rot(TEMP ⊕ OPc, rn) ⊕ cn) ⊕ OPc          n = 2..5
//! f1 = OUT1[0..64]  f1* = OUT1[64..128]  f5 = OUT2[0..48]  f2 = OUT2[64..128]
//! f3 = OUT3         f4 = OUT4            f5* = OUT5[0..48]
//! ```
//! with r1 = 64, r2 = 0, r3 = 32, r4 = 64, r5 = 96 bits and c1..c5 as in §4.1.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::Aes128;
use capillary_secrets::{Amf, Ck, Ik, Op, Opc, Rand, Res, Sqn, K};
use core::fmt;
use zeroize::Zeroizing;

/// Rotation constants r1..r5 in bytes (TS 35.206 §4.1: 64, 0, 32, 64, 96 bits).
const R: [usize; 5] = [8, 0, 4, 8, 12];
/// Last byte of the constants c1..c5 (TS 35.206 §4.1); all other bytes are zero.
const C_LAST: [u8; 5] = [0x00, 0x01, 0x02, 0x04, 0x08];

type Block = [u8; 16];

fn encrypt(cipher: &Aes128, block: &mut Block) {
    cipher.encrypt_block(GenericArray::from_mut_slice(block));
}

fn xor_in(a: &mut Block, b: &Block) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// rot(x, r): cyclic left rotation by `bytes` octets (all Milenage rotations are octet multiples).
fn rotate(x: &mut Block, bytes: usize) {
    x.rotate_left(bytes);
}

/// OPc = OP ⊕ E_K(OP) (TS 35.206 §4.1).
pub fn opc_from_op(k: &K, op: &Op) -> Opc {
    let cipher = Aes128::new(GenericArray::from_slice(k.expose_array()));
    let mut block = Zeroizing::new(*op.expose_array());
    encrypt(&cipher, &mut block);
    xor_in(&mut block, op.expose_array());
    Opc::from_bytes(*block)
}

/// Milenage bound to one subscriber's K and OPc.
///
/// Holds the AES-128 key schedule of K (zeroized on drop by the `aes` crate's `zeroize`
/// feature) and OPc (zeroized on drop). `Debug` prints `Milenage { .. }`.
pub struct Milenage {
    cipher: Aes128,
    opc: Opc,
}

impl fmt::Debug for Milenage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Milenage { .. }")
    }
}

impl Milenage {
    /// From K and OPc.
    pub fn new(k: &K, opc: &Opc) -> Self {
        Self {
            cipher: Aes128::new(GenericArray::from_slice(k.expose_array())),
            opc: Opc::from_bytes(*opc.expose_array()),
        }
    }

    /// From K and OP; computes OPc with [`opc_from_op`].
    pub fn with_op(k: &K, op: &Op) -> Self {
        let opc = opc_from_op(k, op);
        Self::new(k, &opc)
    }

    /// TEMP = E_K(RAND ⊕ OPc).
    fn temp(&self, rand: &Rand) -> Zeroizing<Block> {
        let mut t = Zeroizing::new(rand.0);
        xor_in(&mut t, self.opc.expose_array());
        encrypt(&self.cipher, &mut t);
        t
    }

    /// OUTn for n = 2..=5 (index 1..=4): E_K(rot(TEMP ⊕ OPc, rn) ⊕ cn) ⊕ OPc.
    fn out_n(&self, temp: &Block, n: usize) -> Zeroizing<Block> {
        let mut b = Zeroizing::new(*temp);
        xor_in(&mut b, self.opc.expose_array());
        rotate(&mut b, R[n]);
        b[15] ^= C_LAST[n];
        encrypt(&self.cipher, &mut b);
        xor_in(&mut b, self.opc.expose_array());
        b
    }

    /// OUT1 = E_K(TEMP ⊕ rot(IN1 ⊕ OPc, r1) ⊕ c1) ⊕ OPc.
    fn out1(&self, rand: &Rand, sqn: &Sqn, amf: &Amf) -> Zeroizing<Block> {
        let sqn = sqn.to_bytes();
        let mut in1 = Zeroizing::new([0u8; 16]);
        in1[0..6].copy_from_slice(&sqn);
        in1[6..8].copy_from_slice(&amf.0);
        in1[8..14].copy_from_slice(&sqn);
        in1[14..16].copy_from_slice(&amf.0);
        xor_in(&mut in1, self.opc.expose_array());
        rotate(&mut in1, R[0]);
        in1[15] ^= C_LAST[0];
        let temp = self.temp(rand);
        xor_in(&mut in1, &temp);
        encrypt(&self.cipher, &mut in1);
        xor_in(&mut in1, self.opc.expose_array());
        in1
    }

    /// f1: network authentication code MAC-A (TS 35.206 §4.1).
    pub fn f1(&self, rand: &Rand, sqn: &Sqn, amf: &Amf) -> [u8; 8] {
        let out = self.out1(rand, sqn, amf);
        let mut mac = [0u8; 8];
        mac.copy_from_slice(&out[0..8]);
        mac
    }

    /// f1*: resynchronisation authentication code MAC-S (TS 35.206 §4.1).
    pub fn f1_star(&self, rand: &Rand, sqn: &Sqn, amf: &Amf) -> [u8; 8] {
        let out = self.out1(rand, sqn, amf);
        let mut mac = [0u8; 8];
        mac.copy_from_slice(&out[8..16]);
        mac
    }

    /// f2 (RES, 8 bytes), f3 (CK), f4 (IK) and f5 (AK) (TS 35.206 §4.1).
    pub fn f2345(&self, rand: &Rand) -> (Res, Ck, Ik, [u8; 6]) {
        let temp = self.temp(rand);
        let out2 = self.out_n(&temp, 1);
        let out3 = self.out_n(&temp, 2);
        let out4 = self.out_n(&temp, 3);
        let mut ak = [0u8; 6];
        ak.copy_from_slice(&out2[0..6]);
        #[allow(clippy::expect_used)]
        let res = Res::from_slice(&out2[8..16]).expect("8 bytes is a valid RES length (4..=16)");
        (res, Ck::from_bytes(*out3), Ik::from_bytes(*out4), ak)
    }

    /// f5*: anonymity key AK for resynchronisation (TS 35.206 §4.1).
    pub fn f5_star(&self, rand: &Rand) -> [u8; 6] {
        let temp = self.temp(rand);
        let out5 = self.out_n(&temp, 4);
        let mut ak = [0u8; 6];
        ak.copy_from_slice(&out5[0..6]);
        ak
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capillary_secrets::Secret;

    #[test]
    fn test_set_1() {
        let k = K::from_hex("465b5ce8b199b49faa5f0a2ee238a6bc").unwrap();
        let op = Op::from_hex("cdc202d5123e20f62b6d676ac72cb318").unwrap();
        assert_eq!(
            opc_from_op(&k, &op).expose(),
            hex::decode("cd63cb71954a9f4e48a5994e37a02baf").unwrap()
        );
        let m = Milenage::with_op(&k, &op);
        let rand = Rand::from_hex("23553cbe9637a89d218ae64dae47bf35").unwrap();
        let sqn = Sqn::from_bytes([0xff, 0x9b, 0xb4, 0xd0, 0xb6, 0x07]);
        let amf = Amf([0xb9, 0xb9]);
        assert_eq!(hex::encode(m.f1(&rand, &sqn, &amf)), "4a9ffac354dfafb3");
        assert_eq!(
            hex::encode(m.f1_star(&rand, &sqn, &amf)),
            "01cfaf9ec4e871e9"
        );
        let (res, ck, ik, ak) = m.f2345(&rand);
        assert_eq!(hex::encode(res.expose()), "a54211d5e3ba50bf");
        assert_eq!(hex::encode(ck.expose()), "b40ba9a3c58b2a05bbf0d987b21bf8cb");
        assert_eq!(hex::encode(ik.expose()), "f769bcd751044604127672711c6d3441");
        assert_eq!(hex::encode(ak), "aa689c648370");
        assert_eq!(hex::encode(m.f5_star(&rand)), "451e8beca43b");
        assert_eq!(format!("{m:?}"), "Milenage { .. }");
    }
}
