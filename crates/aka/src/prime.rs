//! The EAP-AKA' key chain: TS 33.220 Annex B.2 KDF, CK'/IK' (TS 33.402 Annex A.2), PRF',
//! full and fast re-authentication keys, AT_MAC and AT_CHECKCODE (RFC 9048 §3.3, §3.4).

use capillary_secrets::{Ck, CkPrime, Emsk, Ik, IkPrime, KAut, KEncr, KRe, Msk};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// FC value for the CK'/IK' derivation (TS 33.402 Annex A.2).
pub const FC_CK_IK_PRIME: u8 = 0x20;

/// Largest output of [`prf_prime`]: the block counter is one octet (RFC 9048 §3.4).
pub const PRF_PRIME_MAX: usize = 255 * 32;

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of every length; this never fails.
    #[allow(clippy::expect_used)]
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length")
}

/// The generic key derivation function of TS 33.220 Annex B.2:
/// `HMAC-SHA-256(key, FC ‖ P0 ‖ L0 ‖ P1 ‖ L1 ‖ …)`, each Li the 2-octet big-endian length of Pi.
///
/// # Panics
/// If a parameter is longer than 65535 octets (it cannot be encoded in Li).
pub fn kdf(key: &[u8], fc: u8, params: &[&[u8]]) -> [u8; 32] {
    let mut mac = hmac(key);
    mac.update(&[fc]);
    for p in params {
        let len =
            u16::try_from(p.len()).unwrap_or_else(|_| panic!("KDF parameter over 65535 octets"));
        mac.update(p);
        mac.update(&len.to_be_bytes());
    }
    mac.finalize().into_bytes().into()
}

/// CK' ‖ IK' = KDF(CK ‖ IK, FC = 0x20, P0 = access network identity, P1 = SQN ⊕ AK)
/// (TS 33.402 Annex A.2, RFC 9048 §3.3). CK' is the first 128 bits, IK' the last.
pub fn ck_ik_prime(
    ck: &Ck,
    ik: &Ik,
    network_name: &[u8],
    sqn_xor_ak: &[u8; 6],
) -> (CkPrime, IkPrime) {
    let mut key = Zeroizing::new([0u8; 32]);
    key[..16].copy_from_slice(ck.expose_array());
    key[16..].copy_from_slice(ik.expose_array());
    let out = Zeroizing::new(kdf(&key[..], FC_CK_IK_PRIME, &[network_name, sqn_xor_ak]));
    let mut ckp = [0u8; 16];
    let mut ikp = [0u8; 16];
    ckp.copy_from_slice(&out[..16]);
    ikp.copy_from_slice(&out[16..]);
    let keys = (CkPrime::from_bytes(ckp), IkPrime::from_bytes(ikp));
    zeroize::Zeroize::zeroize(&mut ckp);
    zeroize::Zeroize::zeroize(&mut ikp);
    keys
}

/// PRF' (RFC 9048 §3.4): `T1 = HMAC-SHA-256(K, S ‖ 0x01)`,
/// `Tn = HMAC-SHA-256(K, Tn-1 ‖ S ‖ n)`, output `T1 ‖ T2 ‖ …` truncated to `out_len`.
///
/// # Panics
/// If `out_len` exceeds [`PRF_PRIME_MAX`] (255 blocks; the counter is one octet).
pub fn prf_prime(key: &[u8], seed: &[u8], out_len: usize) -> Zeroizing<Vec<u8>> {
    assert!(
        out_len <= PRF_PRIME_MAX,
        "PRF' output limited to 255 blocks"
    );
    let mut out = Zeroizing::new(Vec::with_capacity(out_len + 32));
    let base = hmac(key);
    let mut prev = Zeroizing::new([0u8; 32]);
    let mut n: u8 = 1;
    while out.len() < out_len {
        let mut mac = base.clone();
        if n > 1 {
            mac.update(&prev[..]);
        }
        mac.update(seed);
        mac.update(&[n]);
        prev.copy_from_slice(&mac.finalize().into_bytes());
        out.extend_from_slice(&prev[..]);
        n = n.wrapping_add(1);
    }
    out.truncate(out_len);
    out
}

/// Keys of an EAP-AKA' full authentication (RFC 9048 §3.3).
#[derive(Debug)]
pub struct FullAuthKeys {
    /// K_encr, 128 bits.
    pub k_encr: KEncr,
    /// K_aut, 256 bits.
    pub k_aut: KAut,
    /// K_re, 256 bits.
    pub k_re: KRe,
    /// MSK, 512 bits.
    pub msk: Msk,
    /// EMSK, 512 bits.
    pub emsk: Emsk,
}

fn arr<const N: usize>(bytes: &[u8]) -> Zeroizing<[u8; N]> {
    let mut a = Zeroizing::new([0u8; N]);
    a.copy_from_slice(bytes);
    a
}

/// `MK = PRF'(IK' ‖ CK', "EAP-AKA'" ‖ Identity)`; K_encr = MK[0..16], K_aut = MK[16..48],
/// K_re = MK[48..80], MSK = MK[80..144], EMSK = MK[144..208] (RFC 9048 §3.3).
pub fn full_auth_keys(identity: &[u8], ck_p: &CkPrime, ik_p: &IkPrime) -> FullAuthKeys {
    let mut key = Zeroizing::new([0u8; 32]);
    key[..16].copy_from_slice(ik_p.expose_array());
    key[16..].copy_from_slice(ck_p.expose_array());
    let mut seed = Vec::with_capacity(8 + identity.len());
    seed.extend_from_slice(b"EAP-AKA'");
    seed.extend_from_slice(identity);
    let mk = prf_prime(&key[..], &seed, 208);
    FullAuthKeys {
        k_encr: KEncr::from_bytes(*arr::<16>(&mk[0..16])),
        k_aut: KAut::from_bytes(*arr::<32>(&mk[16..48])),
        k_re: KRe::from_bytes(*arr::<32>(&mk[48..80])),
        msk: Msk::from_bytes(*arr::<64>(&mk[80..144])),
        emsk: Emsk::from_bytes(*arr::<64>(&mk[144..208])),
    }
}

/// Keys of an EAP-AKA' fast re-authentication (RFC 9048 §3.3).
#[derive(Debug)]
pub struct ReauthKeys {
    /// MSK, 512 bits.
    pub msk: Msk,
    /// EMSK, 512 bits.
    pub emsk: Emsk,
}

/// `MK = PRF'(K_re, "EAP-AKA' re-auth" ‖ Identity ‖ counter ‖ NONCE_S)`; MSK = MK[0..64],
/// EMSK = MK[64..128] (RFC 9048 §3.3, PRF' of §3.4). `counter` is encoded as 16 bits, big-endian.
pub fn reauth_keys(k_re: &KRe, identity: &[u8], counter: u16, nonce_s: &[u8; 16]) -> ReauthKeys {
    let mut seed = Vec::with_capacity(16 + identity.len() + 2 + 16);
    seed.extend_from_slice(b"EAP-AKA' re-auth");
    seed.extend_from_slice(identity);
    seed.extend_from_slice(&counter.to_be_bytes());
    seed.extend_from_slice(nonce_s);
    let mk = prf_prime(k_re.expose_array(), &seed, 128);
    ReauthKeys {
        msk: Msk::from_bytes(*arr::<64>(&mk[0..64])),
        emsk: Emsk::from_bytes(*arr::<64>(&mk[64..128])),
    }
}

/// AT_MAC value: HMAC-SHA-256-128(K_aut, packet ‖ extra) (RFC 9048 §3.4, RFC 4187 §10.15).
///
/// `packet_with_zeroed_mac` is the whole EAP packet with the AT_MAC value field set to zero;
/// `extra` is empty or the data the method appends (e.g. NONCE_S, NONCE_MT).
pub fn at_mac(k_aut: &KAut, packet_with_zeroed_mac: &[u8], extra: &[u8]) -> [u8; 16] {
    let mut mac = hmac(k_aut.expose_array());
    mac.update(packet_with_zeroed_mac);
    mac.update(extra);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// Checks an AT_MAC value in constant time; a `mac` of the wrong length is rejected.
pub fn verify_at_mac(
    k_aut: &KAut,
    packet_with_zeroed_mac: &[u8],
    extra: &[u8],
    mac: &[u8],
) -> bool {
    let expected = at_mac(k_aut, packet_with_zeroed_mac, extra);
    expected[..].ct_eq(mac).into()
}

/// AT_CHECKCODE value for EAP-AKA': SHA-256 over the EAP-Request/AKA'-Identity and
/// EAP-Response/AKA'-Identity messages exchanged, in order (RFC 9048 §3.4, RFC 4187 §10.13).
pub fn checkcode(messages: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for m in messages {
        h.update(m);
    }
    h.finalize().into()
}
