//! Key derivation (RFC 8613 §3.2.1), nonce (§5.2), AAD (§5.4) and the AEAD
//! AES-CCM-16-64-128 (COSE algorithm 10, RFC 8152 §10.2).

use aes::Aes128;
use ccm::aead::{AeadInPlace, KeyInit};
use ccm::consts::{U13, U8};
use ccm::Ccm;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroize;

use crate::cbor;
use crate::error::OscoreError;
use crate::secret::{AeadKey, CommonIv, MasterSalt, MasterSecret, KEY_LEN, NONCE_LEN};

/// COSE algorithm identifier of AES-CCM-16-64-128 (RFC 8152 §10.2), the OSCORE default.
pub const ALG_AES_CCM_16_64_128: u64 = 10;
/// Authentication tag length of AES-CCM-16-64-128, in bytes.
pub const TAG_LEN: usize = 8;
/// Largest Sender/Recipient ID for a 13-byte nonce: nonce length − 6 (RFC 8613 §3.3).
pub const MAX_ID_LEN: usize = NONCE_LEN - 6;
/// Largest Partial IV, in bytes (RFC 8613 §5.2).
pub const MAX_PIV_LEN: usize = 5;
/// Largest Sender Sequence Number: 2^40 − 1 (RFC 8613 §7.2.1).
pub const MAX_SSN: u64 = (1 << 40) - 1;

type AesCcm = Ccm<Aes128, U8, U13>;

/// HKDF `info` (RFC 8613 §3.2.1): `[id, id_context / nil, alg_aead, type, L]`.
pub fn info(id: &[u8], id_context: Option<&[u8]>, ty: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + id.len());
    cbor::array(&mut out, 5);
    cbor::bstr(&mut out, id);
    match id_context {
        Some(c) => cbor::bstr(&mut out, c),
        None => cbor::nil(&mut out),
    }
    cbor::uint(&mut out, ALG_AES_CCM_16_64_128);
    cbor::tstr(&mut out, ty);
    cbor::uint(&mut out, len as u64);
    out
}

fn hkdf_expand<const N: usize>(
    secret: &MasterSecret,
    salt: &MasterSalt,
    info: &[u8],
) -> Result<[u8; N], OscoreError> {
    // RFC 8613 §3.2.1: HKDF-SHA-256 with the Master Salt as salt (empty by default) and
    // the Master Secret as IKM.
    let hk = Hkdf::<Sha256>::new(Some(salt.expose()), secret.expose());
    let mut okm = [0u8; N];
    hk.expand(info, &mut okm)
        .map_err(|_| OscoreError::InvalidParams("HKDF output length"))?;
    Ok(okm)
}

/// Derives a Sender Key or Recipient Key for `id` (RFC 8613 §3.2.1, type "Key", L = 16).
pub fn derive_key(
    secret: &MasterSecret,
    salt: &MasterSalt,
    id: &[u8],
    id_context: Option<&[u8]>,
) -> Result<AeadKey, OscoreError> {
    let mut k = hkdf_expand::<KEY_LEN>(secret, salt, &info(id, id_context, "Key", KEY_LEN))?;
    let key = AeadKey::new(k);
    k.zeroize();
    Ok(key)
}

/// Derives the Common IV (RFC 8613 §3.2.1, id = empty, type "IV", L = 13).
pub fn derive_common_iv(
    secret: &MasterSecret,
    salt: &MasterSalt,
    id_context: Option<&[u8]>,
) -> Result<CommonIv, OscoreError> {
    let mut iv = hkdf_expand::<NONCE_LEN>(secret, salt, &info(&[], id_context, "IV", NONCE_LEN))?;
    let out = CommonIv::new(iv);
    iv.zeroize();
    Ok(out)
}

/// AEAD nonce (RFC 8613 §5.2): `len(ID_PIV) || pad7(ID_PIV) || pad5(PIV)`, XORed with the
/// Common IV. `id_piv` is the Sender ID of the endpoint that generated `piv`.
///
/// Fails if `id_piv` is longer than 7 bytes or `piv` is empty or longer than 5 bytes.
pub fn nonce(
    common_iv: &CommonIv,
    id_piv: &[u8],
    piv: &[u8],
) -> Result<[u8; NONCE_LEN], OscoreError> {
    if id_piv.len() > MAX_ID_LEN {
        return Err(OscoreError::InvalidParams("ID longer than 7 bytes"));
    }
    if piv.is_empty() || piv.len() > MAX_PIV_LEN {
        return Err(OscoreError::InvalidParams("Partial IV must be 1..=5 bytes"));
    }
    let mut n = [0u8; NONCE_LEN];
    n[0] = id_piv.len() as u8;
    n[1 + MAX_ID_LEN - id_piv.len()..1 + MAX_ID_LEN].copy_from_slice(id_piv);
    n[NONCE_LEN - piv.len()..].copy_from_slice(piv);
    for (b, iv) in n.iter_mut().zip(common_iv.expose()) {
        *b ^= iv;
    }
    Ok(n)
}

/// The additional authenticated data (RFC 8613 §5.4): the COSE `Enc_structure`
/// `["Encrypt0", h'', external_aad]` with
/// `external_aad = bstr .cbor [1, [alg_aead], request_kid, request_piv, h'']`.
pub fn aad(request_kid: &[u8], request_piv: &[u8]) -> Vec<u8> {
    let mut ext = Vec::with_capacity(16 + request_kid.len() + request_piv.len());
    cbor::array(&mut ext, 5);
    cbor::uint(&mut ext, 1); // oscore_version
    cbor::array(&mut ext, 1); // algorithms: [alg_aead]
    cbor::uint(&mut ext, ALG_AES_CCM_16_64_128);
    cbor::bstr(&mut ext, request_kid);
    cbor::bstr(&mut ext, request_piv);
    cbor::bstr(&mut ext, &[]); // options: no Class I options defined (RFC 8613 §4.1.3)
    let mut out = Vec::with_capacity(ext.len() + 16);
    cbor::array(&mut out, 3);
    cbor::tstr(&mut out, "Encrypt0");
    cbor::bstr(&mut out, &[]);
    cbor::bstr(&mut out, &ext);
    out
}

/// AES-CCM-16-64-128 encryption: returns ciphertext || 8-byte tag.
pub fn seal(
    key: &AeadKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, OscoreError> {
    let cipher = AesCcm::new(key.expose().into());
    let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buf.extend_from_slice(plaintext);
    cipher
        .encrypt_in_place(nonce.into(), aad, &mut buf)
        .map_err(|_| OscoreError::InvalidParams("plaintext too long for AES-CCM"))?;
    Ok(buf)
}

/// AES-CCM-16-64-128 decryption and tag verification of ciphertext || tag.
pub fn open(
    key: &AeadKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, OscoreError> {
    if ciphertext.len() < TAG_LEN {
        return Err(OscoreError::DecryptionFailed);
    }
    let cipher = AesCcm::new(key.expose().into());
    let mut buf = ciphertext.to_vec();
    cipher
        .decrypt_in_place(nonce.into(), aad, &mut buf)
        .map_err(|_| OscoreError::DecryptionFailed)?;
    Ok(buf)
}

/// The Partial IV of a sequence number (RFC 8613 §6.1): big-endian, leading zero bytes
/// removed, 0 encoded as `0x00`.
pub fn piv_from_ssn(ssn: u64) -> Vec<u8> {
    let bytes = ssn.to_be_bytes();
    let skip = bytes.iter().take(7).take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// Numeric value of a Partial IV (1..=5 bytes).
pub fn ssn_from_piv(piv: &[u8]) -> Option<u64> {
    if piv.is_empty() || piv.len() > MAX_PIV_LEN {
        return None;
    }
    Some(piv.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn piv_encoding() {
        assert_eq!(piv_from_ssn(0), [0]);
        assert_eq!(piv_from_ssn(20), [0x14]);
        assert_eq!(piv_from_ssn(0x100), [1, 0]);
        assert_eq!(piv_from_ssn(MAX_SSN), [0xff; 5]);
        assert_eq!(ssn_from_piv(&[0xff; 5]), Some(MAX_SSN));
        assert_eq!(ssn_from_piv(&[]), None);
        assert_eq!(ssn_from_piv(&[0; 6]), None);
    }

    #[test]
    fn aad_c4() {
        // RFC 8613 Appendix C.4: AAD for request_kid h'' and request_piv h'14'.
        assert_eq!(
            aad(&[], &[0x14]),
            [
                0x83, 0x68, b'E', b'n', b'c', b'r', b'y', b'p', b't', b'0', 0x40, 0x48, 0x85, 0x01,
                0x81, 0x0a, 0x40, 0x41, 0x14, 0x40
            ]
        );
    }
}
