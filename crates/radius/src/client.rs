//! RADIUS client side (the NAS role): build Access-Requests, check replies, unwrap MPPE keys.
//! Used by tests now and by the gateway later.

use zeroize::Zeroizing;

use crate::crypto;
use crate::packet::{
    Attribute, Code, Packet, MS_MPPE_RECV_KEY, MS_MPPE_SEND_KEY, STATE, USER_NAME, VENDOR_MICROSOFT,
};
use crate::RadiusError;

/// Builds an Access-Request carrying `eap` (split into 253-byte EAP-Message attributes,
/// RFC 3579 §3.1) and a Message-Authenticator (RFC 3579 §3.2). Attribute order: User-Name,
/// `extra`, EAP-Message, State, Message-Authenticator.
///
/// `authenticator` is the Request Authenticator; it must be unpredictable (RFC 2865 §3).
pub fn access_request(
    secret: &[u8],
    identifier: u8,
    authenticator: [u8; 16],
    user_name: Option<&[u8]>,
    eap: &[u8],
    state: Option<&[u8]>,
    extra: &[Attribute],
) -> Result<Vec<u8>, RadiusError> {
    let mut p = Packet {
        code: Code::AccessRequest,
        identifier,
        authenticator,
        attributes: Vec::new(),
    };
    if let Some(u) = user_name {
        p.attributes.push(Attribute::new(USER_NAME, u));
    }
    p.attributes.extend_from_slice(extra);
    p.push_eap_message(eap);
    if let Some(s) = state {
        p.attributes.push(Attribute::new(STATE, s));
    }
    Ok(crypto::sign_request(secret, &p)?)
}

/// Checks a reply to the request with `request_authenticator`: well-formed, code Access-Accept,
/// -Reject or -Challenge, correct Response Authenticator (RFC 2865 §3), and a correct
/// Message-Authenticator (RFC 3579 §3.2). The Message-Authenticator is required in every
/// reply, not only those with EAP-Message, as the Blast-RADIUS (CVE-2024-3596) mitigations
/// recommend; use [`crypto::verify_response_authenticator`] for plain RFC 2865 replies.
pub fn verify_response(
    secret: &[u8],
    request_authenticator: &[u8; 16],
    bytes: &[u8],
) -> Result<Packet, RadiusError> {
    let p = Packet::parse(bytes)?;
    match p.code {
        Code::Accept | Code::Reject | Code::Challenge => {}
        other => return Err(RadiusError::UnexpectedCode(other.to_u8())),
    }
    if !crypto::verify_response_authenticator(secret, request_authenticator, bytes) {
        return Err(RadiusError::BadResponseAuthenticator);
    }
    if !crypto::verify_message_authenticator(secret, request_authenticator, bytes)? {
        return Err(RadiusError::MissingMessageAuthenticator);
    }
    Ok(p)
}

/// Decrypts an MS-MPPE-Send/Recv-Key value (RFC 2548 §2.4.2/2.4.3).
pub fn decrypt_mppe_key(
    secret: &[u8],
    request_authenticator: &[u8; 16],
    value: &[u8],
) -> Result<Zeroizing<Vec<u8>>, RadiusError> {
    crypto::decrypt_mppe_key(secret, request_authenticator, value)
}

/// Reassembles the EAP packet (RFC 3579 §3.1); `None` if absent or not consecutive.
pub fn eap_message(p: &Packet) -> Option<Vec<u8>> {
    p.eap_message().ok().flatten()
}

/// The State attribute (RFC 2865 §5.24).
pub fn state(p: &Packet) -> Option<Vec<u8>> {
    p.attribute(STATE).map(<[u8]>::to_vec)
}

/// The encrypted MS-MPPE-Recv-Key value (salt + ciphertext), if present (RFC 2548 §2.4.3).
pub fn mppe_recv_key(p: &Packet) -> Option<&[u8]> {
    p.vendor_attribute(VENDOR_MICROSOFT, MS_MPPE_RECV_KEY)
}

/// The encrypted MS-MPPE-Send-Key value (salt + ciphertext), if present (RFC 2548 §2.4.2).
pub fn mppe_send_key(p: &Packet) -> Option<&[u8]> {
    p.vendor_attribute(VENDOR_MICROSOFT, MS_MPPE_SEND_KEY)
}

/// Decrypts both MPPE keys and joins them back into the 64-byte MSK
/// (Recv-Key = MSK[0..32], Send-Key = MSK[32..64], RFC 5216 §2.3). `None` if either is absent.
pub fn msk_from_mppe(
    secret: &[u8],
    request_authenticator: &[u8; 16],
    p: &Packet,
) -> Result<Option<Zeroizing<Vec<u8>>>, RadiusError> {
    let (Some(r), Some(s)) = (mppe_recv_key(p), mppe_send_key(p)) else {
        return Ok(None);
    };
    let recv = decrypt_mppe_key(secret, request_authenticator, r)?;
    let send = decrypt_mppe_key(secret, request_authenticator, s)?;
    let mut out = Zeroizing::new(Vec::with_capacity(64));
    out.extend_from_slice(&recv);
    out.extend_from_slice(&send);
    Ok(Some(out))
}
