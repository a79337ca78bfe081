//! The EAP layer (RFC 3748 §4, §5): Code, Identifier, Length, Type.

use crate::error::CodecError;

/// EAP Code (RFC 3748 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// 1, Request.
    Request,
    /// 2, Response.
    Response,
    /// 3, Success.
    Success,
    /// 4, Failure.
    Failure,
}

impl Code {
    /// Wire value.
    pub const fn to_u8(self) -> u8 {
        match self {
            Code::Request => 1,
            Code::Response => 2,
            Code::Success => 3,
            Code::Failure => 4,
        }
    }

    /// From the wire value.
    pub fn from_u8(v: u8) -> Result<Self, CodecError> {
        Ok(match v {
            1 => Code::Request,
            2 => Code::Response,
            3 => Code::Success,
            4 => Code::Failure,
            other => return Err(CodecError::UnknownCode(other)),
        })
    }
}

/// EAP Type values used here (RFC 3748 §5, IANA "Method Types").
pub mod types {
    /// Identity (RFC 3748 §5.1).
    pub const IDENTITY: u8 = 1;
    /// Notification (RFC 3748 §5.2).
    pub const NOTIFICATION: u8 = 2;
    /// Legacy Nak (RFC 3748 §5.3.1).
    pub const NAK: u8 = 3;
    /// EAP-AKA (RFC 4187).
    pub const AKA: u8 = 23;
    /// EAP-AKA' (RFC 9048).
    pub const AKA_PRIME: u8 = 50;
}

/// A checked view of one EAP packet (RFC 3748 §4). Octets beyond the Length field are ignored
/// (RFC 3748 §4.1 "Length").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Code.
    pub code: Code,
    /// Identifier.
    pub identifier: u8,
    /// Type, for Requests and Responses.
    pub typ: Option<u8>,
    /// Type-Data (after the Type octet); empty for Success/Failure.
    pub type_data: &'a [u8],
    /// The packet as delimited by its Length field.
    pub raw: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Parses and checks the header.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, CodecError> {
        if bytes.len() < 4 {
            return Err(CodecError::BadLength);
        }
        let code = Code::from_u8(bytes[0])?;
        let identifier = bytes[1];
        let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if len < 4 || len > bytes.len() {
            return Err(CodecError::BadLength);
        }
        let raw = &bytes[..len];
        match code {
            Code::Request | Code::Response => {
                if len < 5 {
                    return Err(CodecError::MissingType);
                }
                Ok(Self {
                    code,
                    identifier,
                    typ: Some(raw[4]),
                    type_data: &raw[5..],
                    raw,
                })
            }
            Code::Success | Code::Failure => {
                if len != 4 {
                    return Err(CodecError::BadLength);
                }
                Ok(Self {
                    code,
                    identifier,
                    typ: None,
                    type_data: &[],
                    raw,
                })
            }
        }
    }
}

/// Builds a Request or Response with the given Type and Type-Data.
pub fn build(code: Code, identifier: u8, typ: u8, type_data: &[u8]) -> Vec<u8> {
    let len = 5 + type_data.len();
    let mut out = Vec::with_capacity(len);
    out.push(code.to_u8());
    out.push(identifier);
    out.extend_from_slice(&(len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.push(typ);
    out.extend_from_slice(type_data);
    out
}

/// EAP-Success (RFC 3748 §4.2).
pub fn success(identifier: u8) -> Vec<u8> {
    vec![3, identifier, 0, 4]
}

/// EAP-Failure (RFC 3748 §4.2).
pub fn failure(identifier: u8) -> Vec<u8> {
    vec![4, identifier, 0, 4]
}

/// EAP-Request/Identity with an optional displayable message (RFC 3748 §5.1).
pub fn identity_request(identifier: u8) -> Vec<u8> {
    build(Code::Request, identifier, types::IDENTITY, &[])
}

/// EAP-Response/Identity (RFC 3748 §5.1).
pub fn identity_response(identifier: u8, identity: &[u8]) -> Vec<u8> {
    build(Code::Response, identifier, types::IDENTITY, identity)
}

/// EAP-Response/Nak listing the desired authentication types (RFC 3748 §5.3.1).
pub fn nak(identifier: u8, desired: &[u8]) -> Vec<u8> {
    build(Code::Response, identifier, types::NAK, desired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let p = identity_response(7, b"6001010000000001@example.org");
        let v = Packet::parse(&p).unwrap();
        assert_eq!(v.code, Code::Response);
        assert_eq!(v.identifier, 7);
        assert_eq!(v.typ, Some(types::IDENTITY));
        assert_eq!(v.type_data, b"6001010000000001@example.org");
        assert_eq!(Packet::parse(&success(3)).unwrap().code, Code::Success);
        assert_eq!(Packet::parse(&[1, 1, 0, 4]), Err(CodecError::MissingType));
        assert_eq!(Packet::parse(&[1, 1, 0, 9, 1]), Err(CodecError::BadLength));
        assert_eq!(
            Packet::parse(&[9, 1, 0, 4]),
            Err(CodecError::UnknownCode(9))
        );
        // Trailing link-layer padding is ignored.
        let mut padded = failure(2);
        padded.extend_from_slice(&[0, 0]);
        assert_eq!(Packet::parse(&padded).unwrap().raw.len(), 4);
    }
}
