//! EAP-AKA' packets (RFC 4187 §8.1, RFC 9048 §3): header, attribute list, AT_MAC (RFC 4187
//! §10.15, RFC 9048 §3.4) and AT_ENCR_DATA (RFC 4187 §10.12).

use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use capillary_aka::prime;
use capillary_secrets::{Autn, Auts, KAut, KEncr, Rand, Res};
use zeroize::Zeroizing;

use crate::attr::{parse_all, types::*, Attribute};
use crate::eap::{types, Code, Packet};
use crate::error::CodecError;

/// EAP-AKA / EAP-AKA' Subtype (RFC 4187 §11, RFC 9048 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subtype {
    /// 1, AKA-Challenge.
    Challenge,
    /// 2, AKA-Authentication-Reject.
    AuthenticationReject,
    /// 4, AKA-Synchronization-Failure.
    SynchronizationFailure,
    /// 5, AKA-Identity.
    Identity,
    /// 12, Notification.
    Notification,
    /// 13, Re-authentication.
    Reauthentication,
    /// 14, Client-Error.
    ClientError,
}

impl Subtype {
    /// Wire value.
    pub const fn to_u8(self) -> u8 {
        match self {
            Subtype::Challenge => 1,
            Subtype::AuthenticationReject => 2,
            Subtype::SynchronizationFailure => 4,
            Subtype::Identity => 5,
            Subtype::Notification => 12,
            Subtype::Reauthentication => 13,
            Subtype::ClientError => 14,
        }
    }

    /// From the wire value.
    pub fn from_u8(v: u8) -> Result<Self, CodecError> {
        Ok(match v {
            1 => Subtype::Challenge,
            2 => Subtype::AuthenticationReject,
            4 => Subtype::SynchronizationFailure,
            5 => Subtype::Identity,
            12 => Subtype::Notification,
            13 => Subtype::Reauthentication,
            14 => Subtype::ClientError,
            other => return Err(CodecError::UnknownSubtype(other)),
        })
    }
}

/// Which identity an AKA-Identity request asks for (RFC 4187 §4.1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdReq {
    /// AT_ANY_ID_REQ.
    Any,
    /// AT_FULLAUTH_ID_REQ.
    Fullauth,
    /// AT_PERMANENT_ID_REQ.
    Permanent,
}

/// An ordered attribute list with typed getters (first occurrence wins; duplicates other than
/// AT_KDF / AT_PADDING are rejected by the decoder).
#[derive(Debug, Clone, Default)]
pub struct Attributes(pub Vec<Attribute>);

macro_rules! getter {
    ($(#[$m:meta])* $name:ident, $variant:ident, $ty:ty) => {
        $(#[$m])*
        pub fn $name(&self) -> Option<&$ty> {
            self.0.iter().find_map(|a| match a {
                Attribute::$variant(v) => Some(v),
                _ => None,
            })
        }
    };
}

impl Attributes {
    getter!(/// AT_RAND.
        rand, Rand, Rand);
    getter!(/// AT_AUTN.
        autn, Autn, Autn);
    getter!(/// AT_RES.
        res, Res, Res);
    getter!(/// AT_AUTS.
        auts, Auts, Auts);
    getter!(/// AT_MAC.
        mac, Mac, [u8; 16]);
    getter!(/// AT_NOTIFICATION.
        notification, Notification, u16);
    getter!(/// AT_IDENTITY.
        identity, Identity, Vec<u8>);
    getter!(/// AT_COUNTER.
        counter, Counter, u16);
    getter!(/// AT_NONCE_S.
        nonce_s, NonceS, [u8; 16]);
    getter!(/// AT_CLIENT_ERROR_CODE.
        client_error_code, ClientErrorCode, u16);
    getter!(/// AT_KDF_INPUT.
        kdf_input, KdfInput, Vec<u8>);
    getter!(/// AT_IV.
        iv, Iv, [u8; 16]);
    getter!(/// AT_ENCR_DATA.
        encr_data, EncrData, Vec<u8>);
    getter!(/// AT_NEXT_PSEUDONYM.
        next_pseudonym, NextPseudonym, Vec<u8>);
    getter!(/// AT_NEXT_REAUTH_ID.
        next_reauth_id, NextReauthId, Vec<u8>);
    getter!(/// AT_CHECKCODE.
        checkcode, Checkcode, Vec<u8>);

    /// Whether an attribute of this type is present.
    pub fn has(&self, typ: u8) -> bool {
        self.0.iter().any(|a| a.typ() == typ)
    }

    /// All AT_KDF values in order (RFC 9048 §3.2).
    pub fn kdfs(&self) -> Vec<u16> {
        self.0
            .iter()
            .filter_map(|a| match a {
                Attribute::Kdf(v) => Some(*v),
                _ => None,
            })
            .collect()
    }

    /// The identity request of an AKA-Identity message; more than one is invalid.
    pub fn id_req(&self) -> Result<Option<IdReq>, CodecError> {
        let mut found = None;
        for a in &self.0 {
            let r = match a {
                Attribute::AnyIdReq => IdReq::Any,
                Attribute::FullauthIdReq => IdReq::Fullauth,
                Attribute::PermanentIdReq => IdReq::Permanent,
                _ => continue,
            };
            if found.is_some() {
                return Err(CodecError::DuplicateAttribute(a.typ()));
            }
            found = Some(r);
        }
        Ok(found)
    }
}

/// One EAP-Request or EAP-Response of method EAP-AKA' (or EAP-AKA).
#[derive(Debug, Clone)]
pub struct AkaPacket {
    /// Request or Response.
    pub code: Code,
    /// EAP Identifier.
    pub identifier: u8,
    /// EAP Type: [`types::AKA_PRIME`] (50) or [`types::AKA`] (23).
    pub method: u8,
    /// Subtype.
    pub subtype: Subtype,
    /// Attributes in wire order.
    pub attributes: Attributes,
}

/// A decoded packet together with what is needed to check its AT_MAC.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The packet.
    pub packet: AkaPacket,
    raw: Vec<u8>,
    mac_offset: Option<usize>,
}

impl Decoded {
    /// The packet bytes as delimited by the EAP Length field.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Checks AT_MAC over the packet (MAC value zeroed) followed by `extra`, in constant time
    /// (RFC 4187 §10.15, RFC 9048 §3.4). False when there is no AT_MAC.
    pub fn verify_mac(&self, k_aut: &KAut, extra: &[u8]) -> bool {
        let Some(off) = self.mac_offset else {
            return false;
        };
        let Some(mac) = self.raw.get(off..off + 16) else {
            return false;
        };
        let mac: [u8; 16] = match mac.try_into() {
            Ok(m) => m,
            Err(_) => return false,
        };
        let mut zeroed = self.raw.clone();
        zeroed[off..off + 16].fill(0);
        prime::verify_at_mac(k_aut, &zeroed, extra, &mac)
    }
}

impl AkaPacket {
    /// Builds a packet.
    pub fn new(code: Code, identifier: u8, subtype: Subtype, attributes: Vec<Attribute>) -> Self {
        Self {
            code,
            identifier,
            method: types::AKA_PRIME,
            subtype,
            attributes: Attributes(attributes),
        }
    }

    /// Decodes an EAP-Request or EAP-Response of Type 50 (or 23).
    pub fn decode(bytes: &[u8]) -> Result<Decoded, CodecError> {
        let p = Packet::parse(bytes)?;
        if !matches!(p.code, Code::Request | Code::Response) {
            return Err(CodecError::UnexpectedCode(p.code.to_u8()));
        }
        let method = p.typ.ok_or(CodecError::MissingType)?;
        if method != types::AKA_PRIME && method != types::AKA {
            return Err(CodecError::UnexpectedType(method));
        }
        if p.type_data.len() < 3 {
            return Err(CodecError::TruncatedHeader);
        }
        let subtype = Subtype::from_u8(p.type_data[0])?;
        let (attrs, mac) = parse_all(&p.type_data[3..])?;
        // Attribute area starts after Code, Id, Length(2), Type, Subtype, Reserved(2) = 8.
        let mac_offset = mac.map(|m| m + 8);
        Ok(Decoded {
            packet: AkaPacket {
                code: p.code,
                identifier: p.identifier,
                method,
                subtype,
                attributes: Attributes(attrs),
            },
            raw: p.raw.to_vec(),
            mac_offset,
        })
    }

    fn encode_inner(&self) -> Result<(Vec<u8>, Option<usize>), CodecError> {
        let mut out = vec![self.code.to_u8(), self.identifier, 0, 0, self.method];
        out.push(self.subtype.to_u8());
        out.extend_from_slice(&[0, 0]);
        let mut mac_offset = None;
        for a in &self.attributes.0 {
            if a.typ() == AT_MAC {
                mac_offset = Some(out.len() + 4);
            }
            a.encode(&mut out)?;
        }
        let len = u16::try_from(out.len()).map_err(|_| CodecError::TooLong)?;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        Ok((out, mac_offset))
    }

    /// Encodes the packet as is (an AT_MAC, if any, is written with the value it holds).
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Ok(self.encode_inner()?.0)
    }

    /// Encodes the packet and fills AT_MAC = HMAC-SHA-256-128(K_aut, packet ‖ extra)
    /// (RFC 9048 §3.4). An AT_MAC is appended if the list has none.
    pub fn encode_with_mac(&self, k_aut: &KAut, extra: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut with_mac;
        let me = if self.attributes.has(AT_MAC) {
            self
        } else {
            with_mac = self.clone();
            with_mac.attributes.0.push(Attribute::Mac([0; 16]));
            &with_mac
        };
        let (mut out, off) = me.encode_inner()?;
        let off = off.ok_or(CodecError::AttributeNotAllowed(AT_MAC))?;
        out[off..off + 16].fill(0);
        let mac = prime::at_mac(k_aut, &out, extra);
        out[off..off + 16].copy_from_slice(&mac);
        Ok(out)
    }
}

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

/// Encrypts `inner` attributes for AT_ENCR_DATA with AES-128-CBC under K_encr and AT_IV,
/// padding with AT_PADDING to a multiple of 16 octets (RFC 4187 §10.12).
pub fn encrypt_attributes(
    k_encr: &KEncr,
    iv: &[u8; 16],
    inner: &[Attribute],
) -> Result<Vec<u8>, CodecError> {
    let mut plain = Zeroizing::new(Vec::new());
    for a in inner {
        if matches!(a.typ(), AT_ENCR_DATA | AT_IV | AT_MAC | AT_PADDING) {
            return Err(CodecError::AttributeNotAllowed(a.typ()));
        }
        a.encode(&mut plain)?;
    }
    let rem = plain.len() % 16;
    if rem != 0 {
        Attribute::Padding((16 - rem) as u8).encode(&mut plain)?;
    }
    let len = plain.len();
    let enc = Aes128CbcEnc::new(k_encr.expose_array().into(), iv.into());
    let ct = enc
        .encrypt_padded_mut::<NoPadding>(&mut plain[..], len)
        .map_err(|_| CodecError::Encryption)?;
    Ok(ct.to_vec())
}

/// Decrypts AT_ENCR_DATA and decodes the attributes inside (RFC 4187 §10.12). Nested
/// AT_ENCR_DATA, AT_IV and AT_MAC are rejected.
pub fn decrypt_attributes(
    k_encr: &KEncr,
    iv: &[u8; 16],
    data: &[u8],
) -> Result<Attributes, CodecError> {
    if data.is_empty() || data.len() % 16 != 0 {
        return Err(CodecError::Encryption);
    }
    let mut buf = Zeroizing::new(data.to_vec());
    let dec = Aes128CbcDec::new(k_encr.expose_array().into(), iv.into());
    let plain = dec
        .decrypt_padded_mut::<NoPadding>(&mut buf[..])
        .map_err(|_| CodecError::Encryption)?;
    let (attrs, _) = parse_all(plain)?;
    for a in &attrs {
        if matches!(a.typ(), AT_ENCR_DATA | AT_IV | AT_MAC) {
            return Err(CodecError::AttributeNotAllowed(a.typ()));
        }
    }
    Ok(Attributes(attrs))
}

/// Builds `AT_IV` and `AT_ENCR_DATA` for `inner`.
pub fn encrypted_pair(
    k_encr: &KEncr,
    iv: [u8; 16],
    inner: &[Attribute],
) -> Result<[Attribute; 2], CodecError> {
    let ct = encrypt_attributes(k_encr, &iv, inner)?;
    Ok([Attribute::Iv(iv), Attribute::EncrData(ct)])
}

/// Decodes any EAP packet far enough to tell an EAP-AKA' packet from others.
pub fn is_aka_prime(bytes: &[u8]) -> bool {
    matches!(Packet::parse(bytes), Ok(p) if p.typ == Some(types::AKA_PRIME))
}
