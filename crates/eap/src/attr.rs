//! EAP-AKA / EAP-AKA' attributes (RFC 4187 §8.1, §10; RFC 9048 §3.1, §3.2, §4, §6 Table 1).
//!
//! Every attribute is `Type (1) | Length (1, in 4-octet units) | Value`. Types 0..=127 are
//! non-skippable (an unknown one is an error), 128..=255 are skippable (an unknown one is
//! ignored), RFC 4187 §8.1.

use capillary_secrets::{Autn, Auts, Rand, Res};

use crate::error::CodecError;

/// Attribute type numbers (RFC 4187 §11, RFC 9048 §6).
pub mod types {
    #![allow(missing_docs)]
    pub const AT_RAND: u8 = 1;
    pub const AT_AUTN: u8 = 2;
    pub const AT_RES: u8 = 3;
    pub const AT_AUTS: u8 = 4;
    pub const AT_PADDING: u8 = 6;
    pub const AT_NONCE_MT: u8 = 7;
    pub const AT_PERMANENT_ID_REQ: u8 = 10;
    pub const AT_MAC: u8 = 11;
    pub const AT_NOTIFICATION: u8 = 12;
    pub const AT_ANY_ID_REQ: u8 = 13;
    pub const AT_IDENTITY: u8 = 14;
    pub const AT_VERSION_LIST: u8 = 15;
    pub const AT_SELECTED_VERSION: u8 = 16;
    pub const AT_FULLAUTH_ID_REQ: u8 = 17;
    pub const AT_COUNTER: u8 = 19;
    pub const AT_COUNTER_TOO_SMALL: u8 = 20;
    pub const AT_NONCE_S: u8 = 21;
    pub const AT_CLIENT_ERROR_CODE: u8 = 22;
    pub const AT_KDF_INPUT: u8 = 23;
    pub const AT_KDF: u8 = 24;
    pub const AT_IV: u8 = 129;
    pub const AT_ENCR_DATA: u8 = 130;
    pub const AT_NEXT_PSEUDONYM: u8 = 132;
    pub const AT_NEXT_REAUTH_ID: u8 = 133;
    pub const AT_CHECKCODE: u8 = 134;
    pub const AT_RESULT_IND: u8 = 135;
    pub const AT_BIDDING: u8 = 136;
}

use types::*;

/// AT_NOTIFICATION codes (RFC 4187 §10.19). Bit 0x8000 is S (success), 0x4000 is P (phase:
/// 1 = before authentication, no AT_MAC).
pub mod notification {
    /// General failure after authentication (S=0, P=0).
    pub const GENERAL_FAILURE_AFTER_AUTH: u16 = 0;
    /// User has been temporarily denied access (after authentication).
    pub const TEMPORARILY_DENIED: u16 = 1026;
    /// User has not subscribed to the requested service (after authentication).
    pub const NOT_SUBSCRIBED: u16 = 1031;
    /// General failure (before authentication, P=1).
    pub const GENERAL_FAILURE: u16 = 16384;
    /// Success (S=1, after authentication).
    pub const SUCCESS: u16 = 32768;
    /// The P bit: set when the notification is sent before authentication (no AT_MAC).
    pub const P_BIT: u16 = 0x4000;
    /// The S bit: set for success.
    pub const S_BIT: u16 = 0x8000;
}

/// AT_CLIENT_ERROR_CODE values (RFC 4187 §10.20).
pub mod client_error {
    /// Unable to process packet.
    pub const UNABLE_TO_PROCESS: u16 = 0;
}

/// AT_KDF value 1: CK'/IK' per TS 33.402 Annex A.2 (RFC 9048 §3.2, §6).
pub const KDF_AKA_PRIME: u16 = 1;

/// AT_BIDDING "D" flag: the server supports EAP-AKA' (RFC 9048 §4).
pub const BIDDING_D: u16 = 0x8000;

/// One decoded attribute. Secret-bearing values (RES) use the redacting types of
/// `capillary_secrets`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Attribute {
    /// AT_RAND with one RAND (RFC 4187 §10.6).
    Rand(Rand),
    /// AT_AUTN (RFC 4187 §10.7).
    Autn(Autn),
    /// AT_RES; the RES Length field is in bits and must be a multiple of 8, 32..=128
    /// (RFC 4187 §10.8).
    Res(Res),
    /// AT_AUTS (RFC 4187 §10.9).
    Auts(Auts),
    /// AT_PADDING, total attribute length in octets: 4, 8 or 12; contents zero (RFC 4187 §10.12).
    Padding(u8),
    /// AT_NONCE_MT (EAP-SIM, RFC 4186 §10.4).
    NonceMt([u8; 16]),
    /// AT_PERMANENT_ID_REQ (RFC 4187 §10.2).
    PermanentIdReq,
    /// AT_MAC (RFC 4187 §10.15).
    Mac([u8; 16]),
    /// AT_NOTIFICATION (RFC 4187 §10.19).
    Notification(u16),
    /// AT_ANY_ID_REQ (RFC 4187 §10.3).
    AnyIdReq,
    /// AT_IDENTITY, exactly "Actual Identity Length" octets (RFC 4187 §10.5).
    Identity(Vec<u8>),
    /// AT_VERSION_LIST (EAP-SIM, RFC 4186 §10.2).
    VersionList(Vec<u16>),
    /// AT_SELECTED_VERSION (EAP-SIM, RFC 4186 §10.3).
    SelectedVersion(u16),
    /// AT_FULLAUTH_ID_REQ (RFC 4187 §10.4).
    FullauthIdReq,
    /// AT_COUNTER (RFC 4187 §10.16).
    Counter(u16),
    /// AT_COUNTER_TOO_SMALL (RFC 4187 §10.17).
    CounterTooSmall,
    /// AT_NONCE_S (RFC 4187 §10.18).
    NonceS([u8; 16]),
    /// AT_CLIENT_ERROR_CODE (RFC 4187 §10.20).
    ClientErrorCode(u16),
    /// AT_KDF_INPUT, the network name, exactly "Actual Network Name Length" octets
    /// (RFC 9048 §3.1).
    KdfInput(Vec<u8>),
    /// AT_KDF (RFC 9048 §3.2).
    Kdf(u16),
    /// AT_IV (RFC 4187 §10.12).
    Iv([u8; 16]),
    /// AT_ENCR_DATA ciphertext (RFC 4187 §10.12).
    EncrData(Vec<u8>),
    /// AT_NEXT_PSEUDONYM (RFC 4187 §10.10).
    NextPseudonym(Vec<u8>),
    /// AT_NEXT_REAUTH_ID (RFC 4187 §10.11).
    NextReauthId(Vec<u8>),
    /// AT_CHECKCODE: empty, 20 octets (EAP-AKA) or 32 octets (EAP-AKA', RFC 9048 §3.4).
    Checkcode(Vec<u8>),
    /// AT_RESULT_IND (RFC 4187 §10.13).
    ResultInd,
    /// AT_BIDDING (RFC 9048 §4).
    Bidding(u16),
}

impl Attribute {
    /// The attribute type number.
    pub fn typ(&self) -> u8 {
        match self {
            Attribute::Rand(_) => AT_RAND,
            Attribute::Autn(_) => AT_AUTN,
            Attribute::Res(_) => AT_RES,
            Attribute::Auts(_) => AT_AUTS,
            Attribute::Padding(_) => AT_PADDING,
            Attribute::NonceMt(_) => AT_NONCE_MT,
            Attribute::PermanentIdReq => AT_PERMANENT_ID_REQ,
            Attribute::Mac(_) => AT_MAC,
            Attribute::Notification(_) => AT_NOTIFICATION,
            Attribute::AnyIdReq => AT_ANY_ID_REQ,
            Attribute::Identity(_) => AT_IDENTITY,
            Attribute::VersionList(_) => AT_VERSION_LIST,
            Attribute::SelectedVersion(_) => AT_SELECTED_VERSION,
            Attribute::FullauthIdReq => AT_FULLAUTH_ID_REQ,
            Attribute::Counter(_) => AT_COUNTER,
            Attribute::CounterTooSmall => AT_COUNTER_TOO_SMALL,
            Attribute::NonceS(_) => AT_NONCE_S,
            Attribute::ClientErrorCode(_) => AT_CLIENT_ERROR_CODE,
            Attribute::KdfInput(_) => AT_KDF_INPUT,
            Attribute::Kdf(_) => AT_KDF,
            Attribute::Iv(_) => AT_IV,
            Attribute::EncrData(_) => AT_ENCR_DATA,
            Attribute::NextPseudonym(_) => AT_NEXT_PSEUDONYM,
            Attribute::NextReauthId(_) => AT_NEXT_REAUTH_ID,
            Attribute::Checkcode(_) => AT_CHECKCODE,
            Attribute::ResultInd => AT_RESULT_IND,
            Attribute::Bidding(_) => AT_BIDDING,
        }
    }

    /// Appends the encoded attribute to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let typ = self.typ();
        let mut body: Vec<u8> = Vec::new();
        match self {
            Attribute::Rand(v) => reserved_then(&mut body, &v.0),
            Attribute::Autn(v) => reserved_then(&mut body, &v.0),
            Attribute::Res(res) => {
                let bits = (res.len() * 8) as u16;
                body.extend_from_slice(&bits.to_be_bytes());
                body.extend_from_slice(res.expose());
            }
            Attribute::Auts(v) => body.extend_from_slice(&v.0),
            Attribute::Padding(len) => {
                if !matches!(len, 4 | 8 | 12) {
                    return Err(CodecError::AttributeValue { typ });
                }
                body.resize(usize::from(*len) - 2, 0);
            }
            Attribute::NonceMt(v) | Attribute::Mac(v) | Attribute::NonceS(v) | Attribute::Iv(v) => {
                reserved_then(&mut body, v)
            }
            Attribute::PermanentIdReq
            | Attribute::AnyIdReq
            | Attribute::FullauthIdReq
            | Attribute::CounterTooSmall
            | Attribute::ResultInd => body.extend_from_slice(&[0, 0]),
            Attribute::Notification(v)
            | Attribute::SelectedVersion(v)
            | Attribute::Counter(v)
            | Attribute::ClientErrorCode(v)
            | Attribute::Kdf(v)
            | Attribute::Bidding(v) => body.extend_from_slice(&v.to_be_bytes()),
            Attribute::Identity(v)
            | Attribute::KdfInput(v)
            | Attribute::NextPseudonym(v)
            | Attribute::NextReauthId(v) => {
                let n = u16::try_from(v.len()).map_err(|_| CodecError::TooLong)?;
                body.extend_from_slice(&n.to_be_bytes());
                body.extend_from_slice(v);
            }
            Attribute::VersionList(list) => {
                let n = u16::try_from(list.len() * 2).map_err(|_| CodecError::TooLong)?;
                body.extend_from_slice(&n.to_be_bytes());
                for v in list {
                    body.extend_from_slice(&v.to_be_bytes());
                }
            }
            Attribute::EncrData(v) | Attribute::Checkcode(v) => reserved_then(&mut body, v),
        }
        // Pad the value to a multiple of 4 octets (header is 2).
        while (body.len() + 2) % 4 != 0 {
            body.push(0);
        }
        let units = (body.len() + 2) / 4;
        let units = u8::try_from(units).map_err(|_| CodecError::TooLong)?;
        out.push(typ);
        out.push(units);
        out.extend_from_slice(&body);
        Ok(())
    }
}

fn reserved_then(body: &mut Vec<u8>, v: &[u8]) {
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(v);
}

/// Where an AT_MAC value sits inside the attribute area, as an offset from its start.
pub type MacOffset = usize;

/// Decodes an attribute area. Returns the attributes and the offset of the 16-octet AT_MAC
/// value relative to `bytes`, if present.
///
/// Unknown skippable attributes are dropped; each attribute may occur once, except AT_KDF
/// (RFC 9048 §3.2) and AT_PADDING.
pub fn parse_all(bytes: &[u8]) -> Result<(Vec<Attribute>, Option<MacOffset>), CodecError> {
    let mut out: Vec<Attribute> = Vec::new();
    let mut seen = [false; 256];
    let mut mac_offset = None;
    let mut pos = 0usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < 2 {
            return Err(CodecError::AttributeLength { typ: rest[0] });
        }
        let typ = rest[0];
        let len = usize::from(rest[1]) * 4;
        if len == 0 || len > rest.len() {
            return Err(CodecError::AttributeLength { typ });
        }
        let value = &rest[2..len];
        if let Some(attr) = parse_one(typ, value)? {
            if seen[usize::from(typ)] && typ != AT_KDF && typ != AT_PADDING {
                return Err(CodecError::DuplicateAttribute(typ));
            }
            seen[usize::from(typ)] = true;
            if typ == AT_MAC {
                mac_offset = Some(pos + 4);
            }
            out.push(attr);
        }
        pos += len;
    }
    Ok((out, mac_offset))
}

fn fixed<const N: usize>(typ: u8, value: &[u8]) -> Result<[u8; N], CodecError> {
    value
        .try_into()
        .map_err(|_| CodecError::AttributeLength { typ })
}

/// `Reserved (2) | 16 octets`.
fn reserved16(typ: u8, value: &[u8]) -> Result<[u8; 16], CodecError> {
    if value.len() != 18 {
        return Err(CodecError::AttributeLength { typ });
    }
    fixed::<16>(typ, &value[2..])
}

/// `Actual Length (2) | data | padding`: the padding must be shorter than 4 octets.
fn counted(typ: u8, value: &[u8]) -> Result<Vec<u8>, CodecError> {
    if value.len() < 2 {
        return Err(CodecError::AttributeLength { typ });
    }
    let n = usize::from(u16::from_be_bytes([value[0], value[1]]));
    let data = &value[2..];
    if n > data.len() || data.len() - n >= 4 {
        return Err(CodecError::AttributeValue { typ });
    }
    Ok(data[..n].to_vec())
}

fn two_octets(typ: u8, value: &[u8]) -> Result<u16, CodecError> {
    let a: [u8; 2] = fixed(typ, value)?;
    Ok(u16::from_be_bytes(a))
}

fn flag(typ: u8, value: &[u8]) -> Result<(), CodecError> {
    if value.len() != 2 {
        return Err(CodecError::AttributeLength { typ });
    }
    Ok(())
}

fn parse_one(typ: u8, value: &[u8]) -> Result<Option<Attribute>, CodecError> {
    let a = match typ {
        AT_RAND => Attribute::Rand(Rand(reserved16(typ, value)?)),
        AT_AUTN => Attribute::Autn(Autn(reserved16(typ, value)?)),
        AT_RES => {
            if value.len() < 2 {
                return Err(CodecError::AttributeLength { typ });
            }
            let bits = usize::from(u16::from_be_bytes([value[0], value[1]]));
            let data = &value[2..];
            if bits % 8 != 0 || bits / 8 > data.len() || data.len() - bits / 8 >= 4 {
                return Err(CodecError::AttributeValue { typ });
            }
            let res = Res::from_slice(&data[..bits / 8])
                .map_err(|_| CodecError::AttributeValue { typ })?;
            Attribute::Res(res)
        }
        AT_AUTS => Attribute::Auts(Auts(fixed::<14>(typ, value)?)),
        AT_PADDING => {
            let total = value.len() + 2;
            if !matches!(total, 4 | 8 | 12) {
                return Err(CodecError::AttributeLength { typ });
            }
            if value.iter().any(|&b| b != 0) {
                return Err(CodecError::AttributeValue { typ });
            }
            Attribute::Padding(total as u8)
        }
        AT_NONCE_MT => Attribute::NonceMt(reserved16(typ, value)?),
        AT_PERMANENT_ID_REQ => {
            flag(typ, value)?;
            Attribute::PermanentIdReq
        }
        AT_MAC => Attribute::Mac(reserved16(typ, value)?),
        AT_NOTIFICATION => Attribute::Notification(two_octets(typ, value)?),
        AT_ANY_ID_REQ => {
            flag(typ, value)?;
            Attribute::AnyIdReq
        }
        AT_IDENTITY => Attribute::Identity(counted(typ, value)?),
        AT_VERSION_LIST => {
            let raw = counted(typ, value)?;
            if raw.len() % 2 != 0 {
                return Err(CodecError::AttributeValue { typ });
            }
            Attribute::VersionList(
                raw.chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect(),
            )
        }
        AT_SELECTED_VERSION => Attribute::SelectedVersion(two_octets(typ, value)?),
        AT_FULLAUTH_ID_REQ => {
            flag(typ, value)?;
            Attribute::FullauthIdReq
        }
        AT_COUNTER => Attribute::Counter(two_octets(typ, value)?),
        AT_COUNTER_TOO_SMALL => {
            flag(typ, value)?;
            Attribute::CounterTooSmall
        }
        AT_NONCE_S => Attribute::NonceS(reserved16(typ, value)?),
        AT_CLIENT_ERROR_CODE => Attribute::ClientErrorCode(two_octets(typ, value)?),
        AT_KDF_INPUT => Attribute::KdfInput(counted(typ, value)?),
        AT_KDF => Attribute::Kdf(two_octets(typ, value)?),
        AT_IV => Attribute::Iv(reserved16(typ, value)?),
        AT_ENCR_DATA => {
            if value.len() < 2 {
                return Err(CodecError::AttributeLength { typ });
            }
            Attribute::EncrData(value[2..].to_vec())
        }
        AT_NEXT_PSEUDONYM => Attribute::NextPseudonym(counted(typ, value)?),
        AT_NEXT_REAUTH_ID => Attribute::NextReauthId(counted(typ, value)?),
        AT_CHECKCODE => {
            if !matches!(value.len(), 2 | 22 | 34) {
                return Err(CodecError::AttributeLength { typ });
            }
            Attribute::Checkcode(value[2..].to_vec())
        }
        AT_RESULT_IND => {
            flag(typ, value)?;
            Attribute::ResultInd
        }
        AT_BIDDING => Attribute::Bidding(two_octets(typ, value)?),
        t if t < 128 => return Err(CodecError::UnknownAttribute(t)),
        _ => return Ok(None),
    };
    Ok(Some(a))
}
