//! RADIUS authenticators and attribute hiding: Response Authenticator (RFC 2865 §3),
//! Message-Authenticator (RFC 3579 §3.2 / RFC 2869 §5.14), User-Password (RFC 2865 §5.2) and
//! MS-MPPE-Send/Recv-Key (RFC 2548 §2.4.2, §2.4.3).

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::packet::{
    checked_body, AttrIter, Attribute, EncodeError, Packet, MESSAGE_AUTHENTICATOR,
};
use crate::RadiusError;

type HmacMd5 = Hmac<Md5>;

/// HMAC-MD5 keyed with the shared secret over `data` (RFC 3579 §3.2).
fn hmac_md5(secret: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of every length, so this cannot fail; fall back to an
    // unusable all-zero tag rather than panic.
    let Ok(mut mac) = <HmacMd5 as Mac>::new_from_slice(secret) else {
        return [0; 16];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Response Authenticator = MD5(Code+ID+Length+RequestAuth+Attributes+Secret) (RFC 2865 §3).
///
/// `packet` is the encoded reply; its authenticator field is ignored and replaced by
/// `request_authenticator` in the hash.
pub fn response_authenticator(
    secret: &[u8],
    request_authenticator: &[u8; 16],
    packet: &[u8],
) -> [u8; 16] {
    let head = packet.get(..4).unwrap_or(&[]);
    let attrs = packet.get(20..).unwrap_or(&[]);
    md5(&[head, request_authenticator, attrs, secret])
}

/// Computes the Message-Authenticator over an encoded packet (RFC 3579 §3.2): HMAC-MD5 of the
/// whole packet with the Message-Authenticator value zeroed and the authenticator field set to
/// `authenticator` (the Request Authenticator, for requests and for replies alike).
///
/// `ma_offset` is the offset of the Message-Authenticator attribute header in `packet`.
fn compute_ma(
    secret: &[u8],
    authenticator: &[u8; 16],
    packet: &[u8],
    ma_offset: usize,
) -> [u8; 16] {
    let head = packet.get(..4).unwrap_or(&[]);
    let before = packet.get(20..ma_offset + 2).unwrap_or(&[]);
    let after = packet.get(ma_offset + 18..).unwrap_or(&[]);
    hmac_md5(secret, &[head, authenticator, before, &[0u8; 16], after])
}

/// Outcome of checking the Message-Authenticator of a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaCheck {
    Absent,
    Valid,
    Invalid,
}

/// Verifies the Message-Authenticator of an encoded packet (RFC 3579 §3.2). `authenticator` is
/// the Request Authenticator: the packet's own for a request, the original request's for a reply.
pub(crate) fn check_ma(secret: &[u8], authenticator: &[u8; 16], packet: &[u8]) -> MaCheck {
    let Ok(body) = checked_body(packet) else {
        return MaCheck::Invalid;
    };
    let Some((_, value, off)) = AttrIter::new(body).find(|(t, _, _)| *t == MESSAGE_AUTHENTICATOR)
    else {
        return MaCheck::Absent;
    };
    let expected = compute_ma(secret, authenticator, body, off);
    if bool::from(expected.ct_eq(value)) {
        MaCheck::Valid
    } else {
        MaCheck::Invalid
    }
}

/// Verifies a Message-Authenticator (RFC 3579 §3.2). Returns `Ok(false)` when the packet has
/// none, `Ok(true)` when it is correct, and an error when it is wrong or the packet malformed.
pub fn verify_message_authenticator(
    secret: &[u8],
    request_authenticator: &[u8; 16],
    packet: &[u8],
) -> Result<bool, RadiusError> {
    checked_body(packet)?;
    match check_ma(secret, request_authenticator, packet) {
        MaCheck::Absent => Ok(false),
        MaCheck::Valid => Ok(true),
        MaCheck::Invalid => Err(RadiusError::BadMessageAuthenticator),
    }
}

/// Encodes `packet` with a Message-Authenticator attribute filled in (inserted first if absent).
/// The authenticator field is written as `packet.authenticator`; the MAC uses the same value.
fn emit_with_ma(secret: &[u8], packet: &Packet, ma_key: &[u8; 16]) -> Result<Vec<u8>, EncodeError> {
    let mut p = packet.clone();
    match p
        .attributes
        .iter_mut()
        .find(|a| a.typ == MESSAGE_AUTHENTICATOR)
    {
        Some(a) => a.value = vec![0; 16],
        // First, as Blast-RADIUS (CVE-2024-3596) mitigations recommend.
        None => p
            .attributes
            .insert(0, Attribute::new(MESSAGE_AUTHENTICATOR, [0u8; 16])),
    }
    let mut bytes = p.emit()?;
    let off = AttrIter::new(&bytes)
        .find(|(t, _, _)| *t == MESSAGE_AUTHENTICATOR)
        .map(|(_, _, o)| o);
    if let Some(off) = off {
        let ma = compute_ma(secret, ma_key, &bytes, off);
        bytes[off + 2..off + 18].copy_from_slice(&ma);
    }
    Ok(bytes)
}

/// Encodes a request (Access-Request, Status-Server) with its Message-Authenticator computed
/// over its own Request Authenticator (RFC 3579 §3.2).
pub fn sign_request(secret: &[u8], packet: &Packet) -> Result<Vec<u8>, EncodeError> {
    emit_with_ma(secret, packet, &packet.authenticator)
}

/// Encodes a reply: adds the Message-Authenticator (computed with the Request Authenticator,
/// RFC 3579 §3.2), then writes the Response Authenticator (RFC 2865 §3). The
/// `authenticator` field of `packet` is ignored.
pub fn sign_response(
    secret: &[u8],
    request_authenticator: &[u8; 16],
    packet: &Packet,
) -> Result<Vec<u8>, EncodeError> {
    let mut p = packet.clone();
    p.authenticator = *request_authenticator;
    let mut bytes = emit_with_ma(secret, &p, request_authenticator)?;
    let ra = response_authenticator(secret, request_authenticator, &bytes);
    bytes[4..20].copy_from_slice(&ra);
    Ok(bytes)
}

/// Checks a reply's Response Authenticator (RFC 2865 §3) in constant time.
pub fn verify_response_authenticator(
    secret: &[u8],
    request_authenticator: &[u8; 16],
    packet: &[u8],
) -> bool {
    let Ok(body) = checked_body(packet) else {
        return false;
    };
    let expected = response_authenticator(secret, request_authenticator, body);
    expected.ct_eq(&body[4..20]).into()
}

/// Hides a User-Password (RFC 2865 §5.2): pad to a multiple of 16 (at most 128 bytes),
/// c(1) = p1 xor MD5(S + RA), c(i) = p(i) xor MD5(S + c(i-1)).
pub fn hide_user_password(
    secret: &[u8],
    request_authenticator: &[u8; 16],
    password: &[u8],
) -> Result<Vec<u8>, RadiusError> {
    if password.len() > 128 {
        return Err(RadiusError::InvalidValue(
            "User-Password longer than 128 bytes",
        ));
    }
    let mut p = Zeroizing::new(password.to_vec());
    let padded = p.len().div_ceil(16).max(1) * 16;
    p.resize(padded, 0);
    Ok(xor_chain_encrypt(secret, request_authenticator, &[], &p))
}

/// Recovers a User-Password hidden per RFC 2865 §5.2, stripping the zero padding.
pub fn decode_user_password(
    secret: &[u8],
    request_authenticator: &[u8; 16],
    hidden: &[u8],
) -> Result<Zeroizing<Vec<u8>>, RadiusError> {
    if hidden.is_empty() || !block_aligned(hidden.len()) || hidden.len() > 128 {
        return Err(RadiusError::InvalidValue("User-Password length"));
    }
    let mut p = xor_chain_decrypt(secret, request_authenticator, &[], hidden);
    while p.last() == Some(&0) {
        p.pop();
    }
    Ok(p)
}

/// b(1) = MD5(S + RA + extra), b(i) = MD5(S + c(i-1)); c(i) = p(i) xor b(i).
/// `plain.len()` is a multiple of 16.
fn xor_chain_encrypt(secret: &[u8], ra: &[u8; 16], extra: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plain.len());
    let mut b = md5(&[secret, ra, extra]);
    for block in plain.chunks(16) {
        let start = out.len();
        for (i, x) in block.iter().enumerate() {
            out.push(x ^ b[i]);
        }
        b = md5(&[secret, &out[start..]]);
    }
    out
}

/// Inverse of [`xor_chain_encrypt`]; `cipher.len()` is a multiple of 16.
fn xor_chain_decrypt(
    secret: &[u8],
    ra: &[u8; 16],
    extra: &[u8],
    cipher: &[u8],
) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(cipher.len()));
    let mut b = md5(&[secret, ra, extra]);
    for block in cipher.chunks(16) {
        for (i, c) in block.iter().enumerate() {
            out.push(c ^ b[i]);
        }
        b = md5(&[secret, block]);
    }
    out
}

/// Encrypts an MS-MPPE-Send/Recv-Key value (RFC 2548 §2.4.2): the plaintext is
/// Key-Length (1) + key + zero padding to a multiple of 16; b(1) = MD5(S + R + A) with R the
/// Request Authenticator and A the salt; the result is salt (2) + ciphertext.
/// The salt's high bit is forced to 1, as the RFC requires.
pub fn encrypt_mppe_key(
    secret: &[u8],
    request_authenticator: &[u8; 16],
    salt: [u8; 2],
    key: &[u8],
) -> Result<Vec<u8>, RadiusError> {
    // 2 salt + 16*k bytes must fit the 247-byte vendor value (253 - 6).
    if key.len() > 239 - 1 {
        return Err(RadiusError::InvalidValue("MPPE key too long"));
    }
    let salt = [salt[0] | 0x80, salt[1]];
    let mut p = Zeroizing::new(Vec::with_capacity(key.len() + 16));
    p.push(key.len() as u8);
    p.extend_from_slice(key);
    let padded = p.len().div_ceil(16) * 16;
    p.resize(padded, 0);
    let mut out = salt.to_vec();
    out.extend(xor_chain_encrypt(secret, request_authenticator, &salt, &p));
    if out.len() > 247 {
        return Err(RadiusError::InvalidValue("MPPE key too long"));
    }
    Ok(out)
}

/// Decrypts an MS-MPPE-Send/Recv-Key value (salt + ciphertext, RFC 2548 §2.4.2) and returns
/// the key (without the length octet and padding).
pub fn decrypt_mppe_key(
    secret: &[u8],
    request_authenticator: &[u8; 16],
    value: &[u8],
) -> Result<Zeroizing<Vec<u8>>, RadiusError> {
    let (salt, cipher) = value
        .split_at_checked(2)
        .ok_or(RadiusError::InvalidValue("MPPE value too short"))?;
    if salt[0] & 0x80 == 0 {
        return Err(RadiusError::InvalidValue("MPPE salt high bit not set"));
    }
    if cipher.is_empty() || !block_aligned(cipher.len()) {
        return Err(RadiusError::InvalidValue("MPPE ciphertext length"));
    }
    let plain = xor_chain_decrypt(secret, request_authenticator, salt, cipher);
    let len = usize::from(plain[0]);
    let key = plain
        .get(1..1 + len)
        .ok_or(RadiusError::InvalidValue("MPPE key length octet"))?;
    Ok(Zeroizing::new(key.to_vec()))
}

/// Whether `n` is a whole number of 16-byte MD5 blocks (MSRV 1.80: no `is_multiple_of`).
const fn block_aligned(n: usize) -> bool {
    n & 15 == 0
}
