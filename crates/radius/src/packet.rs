//! RADIUS packet codec (RFC 2865 §3, §5).
//!
//! [`Packet::parse`] checks the header and every attribute header once; after that no accessor
//! can panic. [`Packet::emit`] refuses values that do not fit on the wire.

/// Smallest valid RADIUS packet: the 20-byte header (RFC 2865 §3).
pub const HEADER_LEN: usize = 20;
/// Largest valid RADIUS packet (RFC 2865 §3).
pub const MAX_PACKET_LEN: usize = 4096;
/// Largest attribute value: 255 minus the type and length octets (RFC 2865 §5).
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 253;

/// User-Name (RFC 2865 §5.1).
pub const USER_NAME: u8 = 1;
/// User-Password (RFC 2865 §5.2).
pub const USER_PASSWORD: u8 = 2;
/// NAS-IP-Address (RFC 2865 §5.4).
pub const NAS_IP_ADDRESS: u8 = 4;
/// NAS-Port (RFC 2865 §5.5).
pub const NAS_PORT: u8 = 5;
/// Service-Type (RFC 2865 §5.6).
pub const SERVICE_TYPE: u8 = 6;
/// Framed-MTU (RFC 2865 §5.12).
pub const FRAMED_MTU: u8 = 12;
/// Reply-Message (RFC 2865 §5.18).
pub const REPLY_MESSAGE: u8 = 18;
/// State (RFC 2865 §5.24).
pub const STATE: u8 = 24;
/// Class (RFC 2865 §5.25).
pub const CLASS: u8 = 25;
/// Vendor-Specific (RFC 2865 §5.26).
pub const VENDOR_SPECIFIC: u8 = 26;
/// Session-Timeout (RFC 2865 §5.27).
pub const SESSION_TIMEOUT: u8 = 27;
/// Called-Station-Id (RFC 2865 §5.30).
pub const CALLED_STATION_ID: u8 = 30;
/// Calling-Station-Id (RFC 2865 §5.31).
pub const CALLING_STATION_ID: u8 = 31;
/// NAS-Identifier (RFC 2865 §5.32).
pub const NAS_IDENTIFIER: u8 = 32;
/// Proxy-State (RFC 2865 §5.33).
pub const PROXY_STATE: u8 = 33;
/// NAS-Port-Type (RFC 2865 §5.41).
pub const NAS_PORT_TYPE: u8 = 61;
/// EAP-Message (RFC 3579 §3.1).
pub const EAP_MESSAGE: u8 = 79;
/// Message-Authenticator (RFC 3579 §3.2, RFC 2869 §5.14).
pub const MESSAGE_AUTHENTICATOR: u8 = 80;
/// NAS-IPv6-Address (RFC 3162 §2.1).
pub const NAS_IPV6_ADDRESS: u8 = 95;

/// Microsoft's SMI network management private enterprise code (RFC 2548 §2).
pub const VENDOR_MICROSOFT: u32 = 311;
/// MS-MPPE-Send-Key vendor type (RFC 2548 §2.4.2).
pub const MS_MPPE_SEND_KEY: u8 = 16;
/// MS-MPPE-Recv-Key vendor type (RFC 2548 §2.4.3).
pub const MS_MPPE_RECV_KEY: u8 = 17;

/// RADIUS packet type (RFC 2865 §3, RFC 2866 §3, RFC 5997 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Access-Request (1).
    AccessRequest,
    /// Access-Accept (2).
    Accept,
    /// Access-Reject (3).
    Reject,
    /// Accounting-Request (4, RFC 2866).
    AccountingRequest,
    /// Accounting-Response (5, RFC 2866).
    AccountingResponse,
    /// Access-Challenge (11).
    Challenge,
    /// Status-Server (12, RFC 5997).
    StatusServer,
    /// Any other code.
    Unknown(u8),
}

impl Code {
    /// The code octet on the wire.
    pub const fn to_u8(self) -> u8 {
        match self {
            Code::AccessRequest => 1,
            Code::Accept => 2,
            Code::Reject => 3,
            Code::AccountingRequest => 4,
            Code::AccountingResponse => 5,
            Code::Challenge => 11,
            Code::StatusServer => 12,
            Code::Unknown(c) => c,
        }
    }
}

impl From<u8> for Code {
    fn from(c: u8) -> Self {
        match c {
            1 => Code::AccessRequest,
            2 => Code::Accept,
            3 => Code::Reject,
            4 => Code::AccountingRequest,
            5 => Code::AccountingResponse,
            11 => Code::Challenge,
            12 => Code::StatusServer,
            other => Code::Unknown(other),
        }
    }
}

impl From<Code> for u8 {
    fn from(c: Code) -> u8 {
        c.to_u8()
    }
}

/// One attribute, type and value (RFC 2865 §5). The value is at most 253 bytes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// Attribute type octet.
    pub typ: u8,
    /// Attribute value (without the type and length octets).
    pub value: Vec<u8>,
}

impl Attribute {
    /// Builds an attribute.
    pub fn new(typ: u8, value: impl Into<Vec<u8>>) -> Self {
        Self {
            typ,
            value: value.into(),
        }
    }

    /// A Vendor-Specific attribute (RFC 2865 §5.26) holding one vendor sub-attribute in the
    /// recommended format: Vendor-Id (4), Vendor-Type (1), Vendor-Length (1), value.
    pub fn vendor_specific(
        vendor: u32,
        vendor_type: u8,
        value: &[u8],
    ) -> Result<Self, EncodeError> {
        let sub_len = value.len() + 2;
        if sub_len + 4 > MAX_ATTRIBUTE_VALUE_LEN {
            return Err(EncodeError::AttributeTooLong {
                typ: VENDOR_SPECIFIC,
                len: sub_len + 4,
            });
        }
        let mut v = Vec::with_capacity(sub_len + 4);
        v.extend_from_slice(&vendor.to_be_bytes());
        v.push(vendor_type);
        v.push(sub_len as u8);
        v.extend_from_slice(value);
        Ok(Self::new(VENDOR_SPECIFIC, v))
    }

    /// If this is a Vendor-Specific attribute of `vendor` whose first sub-attribute has type
    /// `vendor_type`, returns that sub-attribute's value.
    pub fn vendor_value(&self, vendor: u32, vendor_type: u8) -> Option<&[u8]> {
        if self.typ != VENDOR_SPECIFIC {
            return None;
        }
        let v = &self.value;
        let id = v.get(0..4)?;
        if id != vendor.to_be_bytes() || *v.get(4)? != vendor_type {
            return None;
        }
        let len = usize::from(*v.get(5)?);
        if len < 2 {
            return None;
        }
        v.get(6..4 + len)
    }
}

/// Why bytes are not a well-formed RADIUS packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer than 20 bytes.
    #[error("packet is {0} bytes, shorter than the 20-byte header")]
    TooShort(usize),
    /// The Length field is below 20 or above 4096 (RFC 2865 §3).
    #[error("Length field {0} outside 20..=4096")]
    BadLength(u16),
    /// The datagram is shorter than its Length field says (RFC 2865 §3: silently discard).
    #[error("Length field {length} exceeds the {received} bytes received")]
    Truncated {
        /// The Length field.
        length: u16,
        /// Bytes in the datagram.
        received: usize,
    },
    /// An attribute's length octet is below 2 or runs past the packet end (RFC 2865 §5).
    #[error("attribute at offset {offset} has bad length {len}")]
    BadAttributeLength {
        /// Offset of the attribute in the packet.
        offset: usize,
        /// Its length octet (0 if missing).
        len: u8,
    },
    /// Message-Authenticator is not 18 bytes long, or occurs twice (RFC 3579 §3.2).
    #[error("bad Message-Authenticator attribute")]
    BadMessageAuthenticatorAttribute,
    /// EAP-Message attributes are not consecutive (RFC 3579 §3.1).
    #[error("EAP-Message attributes are not consecutive")]
    EapMessageNotConsecutive,
}

/// Why a packet cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// An attribute value longer than 253 bytes.
    #[error("attribute {typ} value of {len} bytes exceeds 253")]
    AttributeTooLong {
        /// Attribute type.
        typ: u8,
        /// Value length.
        len: usize,
    },
    /// The packet would exceed 4096 bytes.
    #[error("packet of {0} bytes exceeds 4096")]
    PacketTooLong(usize),
}

/// A RADIUS packet (RFC 2865 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Packet type.
    pub code: Code,
    /// Identifier, matches requests and replies.
    pub identifier: u8,
    /// Request Authenticator or Response Authenticator.
    pub authenticator: [u8; 16],
    /// Attributes in wire order.
    pub attributes: Vec<Attribute>,
}

impl Packet {
    /// Parses a datagram (RFC 2865 §3). Octets beyond the Length field are padding and ignored.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let body = checked_body(bytes)?;
        let mut attributes = Vec::new();
        for (typ, value, _) in AttrIter::new(body) {
            attributes.push(Attribute::new(typ, value));
        }
        let mut authenticator = [0u8; 16];
        authenticator.copy_from_slice(&body[4..20]);
        Ok(Self {
            code: Code::from(body[0]),
            identifier: body[1],
            authenticator,
            attributes,
        })
    }

    /// Encodes the packet, filling in the Length field (RFC 2865 §3).
    pub fn emit(&self) -> Result<Vec<u8>, EncodeError> {
        let mut len = HEADER_LEN;
        for a in &self.attributes {
            if a.value.len() > MAX_ATTRIBUTE_VALUE_LEN {
                return Err(EncodeError::AttributeTooLong {
                    typ: a.typ,
                    len: a.value.len(),
                });
            }
            len += 2 + a.value.len();
        }
        if len > MAX_PACKET_LEN {
            return Err(EncodeError::PacketTooLong(len));
        }
        let mut out = Vec::with_capacity(len);
        out.push(self.code.to_u8());
        out.push(self.identifier);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&self.authenticator);
        for a in &self.attributes {
            out.push(a.typ);
            out.push((a.value.len() + 2) as u8);
            out.extend_from_slice(&a.value);
        }
        Ok(out)
    }

    /// The first attribute of type `typ`.
    pub fn attribute(&self, typ: u8) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|a| a.typ == typ)
            .map(|a| a.value.as_slice())
    }

    /// All attributes of type `typ`, in order.
    pub fn attributes_of(&self, typ: u8) -> impl Iterator<Item = &[u8]> + '_ {
        self.attributes
            .iter()
            .filter(move |a| a.typ == typ)
            .map(|a| a.value.as_slice())
    }

    /// The first Vendor-Specific sub-attribute `vendor`/`vendor_type` (RFC 2865 §5.26).
    pub fn vendor_attribute(&self, vendor: u32, vendor_type: u8) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find_map(|a| a.vendor_value(vendor, vendor_type))
    }

    /// Reassembles the EAP packet from consecutive EAP-Message attributes (RFC 3579 §3.1).
    /// `None` if there is no EAP-Message; an error if the attributes are not consecutive.
    pub fn eap_message(&self) -> Result<Option<Vec<u8>>, DecodeError> {
        let mut out: Option<Vec<u8>> = None;
        let mut ended = false;
        for a in &self.attributes {
            if a.typ == EAP_MESSAGE {
                if ended {
                    return Err(DecodeError::EapMessageNotConsecutive);
                }
                out.get_or_insert_with(Vec::new).extend_from_slice(&a.value);
            } else if out.is_some() {
                ended = true;
            }
        }
        Ok(out)
    }

    /// Appends `eap` as EAP-Message attributes of at most 253 bytes each (RFC 3579 §3.1).
    /// An empty `eap` adds nothing.
    pub fn push_eap_message(&mut self, eap: &[u8]) {
        for chunk in eap.chunks(MAX_ATTRIBUTE_VALUE_LEN) {
            self.attributes.push(Attribute::new(EAP_MESSAGE, chunk));
        }
    }
}

/// Checks header and attribute framing; returns the packet without trailing padding.
pub(crate) fn checked_body(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    let length = u16::from_be_bytes([bytes[2], bytes[3]]);
    let l = usize::from(length);
    if !(HEADER_LEN..=MAX_PACKET_LEN).contains(&l) {
        return Err(DecodeError::BadLength(length));
    }
    if bytes.len() < l {
        return Err(DecodeError::Truncated {
            length,
            received: bytes.len(),
        });
    }
    let body = &bytes[..l];
    let mut off = HEADER_LEN;
    let mut ma_seen = false;
    while off < l {
        let alen = body.get(off + 1).copied().unwrap_or(0);
        if alen < 2 || off + usize::from(alen) > l {
            return Err(DecodeError::BadAttributeLength {
                offset: off,
                len: alen,
            });
        }
        if body[off] == MESSAGE_AUTHENTICATOR {
            if alen != 18 || ma_seen {
                return Err(DecodeError::BadMessageAuthenticatorAttribute);
            }
            ma_seen = true;
        }
        off += usize::from(alen);
    }
    Ok(body)
}

/// Iterates `(type, value, offset)` over a body already checked by [`checked_body`].
pub(crate) struct AttrIter<'a> {
    body: &'a [u8],
    off: usize,
}

impl<'a> AttrIter<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Self {
            body,
            off: HEADER_LEN,
        }
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (u8, &'a [u8], usize);

    fn next(&mut self) -> Option<Self::Item> {
        let typ = *self.body.get(self.off)?;
        let len = usize::from(*self.body.get(self.off + 1)?);
        if len < 2 {
            return None;
        }
        let value = self.body.get(self.off + 2..self.off + len)?;
        let at = self.off;
        self.off += len;
        Some((typ, value, at))
    }
}
