//! The CoAP-EAP information object (RFC 9820 §5.1, IANA "CoAP-EAP Information Elements") and
//! the split of a CoAP-EAP payload into `EAP packet ‖ CBOR map` (RFC 9820 §3.2, §5).
//!
//! | label | name             | CBOR type        | sent by                                   |
//! |-------|------------------|------------------|-------------------------------------------|
//! | 1     | Cipher Suite     | array of int     | authenticator (offer, step 1), peer (choice, step 2) |
//! | 2     | RID-C            | byte string      | authenticator (step 1)                    |
//! | 3     | RID-I            | byte string      | peer (step 2)                             |
//! | 4     | Session-Lifetime | uint (seconds)   | authenticator, with EAP-Success           |
//!
//! Decoding is strict about the types of the known labels and about duplicates, and ignores
//! unknown labels (private use 24–49, experimental 65001–65535, future registrations), so that a
//! newer authenticator does not break an older device.

use ciborium::value::{Integer, Value};

/// Map label of the cipher suite list (RFC 9820 §5.1).
pub const LABEL_CIPHER_SUITE: u64 = 1;
/// Map label of RID-C, the Recipient ID of the EAP authenticator (RFC 9820 §5.1).
pub const LABEL_RID_C: u64 = 2;
/// Map label of RID-I, the Recipient ID of the EAP peer (RFC 9820 §5.1).
pub const LABEL_RID_I: u64 = 3;
/// Map label of Session-Lifetime in seconds (RFC 9820 §5.1).
pub const LABEL_SESSION_LIFETIME: u64 = 4;

/// Largest CBOR object accepted (bytes). CoAP-EAP info objects are a few dozen bytes.
pub const MAX_INFO_LEN: usize = 512;
/// Most cipher suites accepted in one list.
pub const MAX_CIPHER_SUITES: usize = 16;
/// Longest RID accepted by the codec (OSCORE IDs are at most nonce length − 6 = 7 bytes,
/// RFC 8613 §3.3; the state machines check the exact limit of the chosen suite).
pub const MAX_RID_LEN: usize = 7;

/// A CoAP-EAP cipher suite (RFC 9820 §6.1, IANA "CoAP-EAP Cipher Suites"): an AEAD and a hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CipherSuite(pub i32);

impl CipherSuite {
    /// 0: AES-CCM-16-64-128 (COSE 10), SHA-256 (COSE -16). The default (RFC 9820 §6.1).
    pub const AES_CCM_16_64_128_SHA256: Self = Self(0);
    /// 1: A128GCM (COSE 1), SHA-256.
    pub const A128GCM_SHA256: Self = Self(1);
    /// 2: A256GCM (COSE 3), SHA-384.
    pub const A256GCM_SHA384: Self = Self(2);
    /// 3: ChaCha20/Poly1305 (COSE 24), SHA-256.
    pub const CHACHA20_POLY1305_SHA256: Self = Self(3);
    /// 4: ChaCha20/Poly1305 (COSE 24), SHAKE256.
    pub const CHACHA20_POLY1305_SHAKE256: Self = Self(4);

    /// The default suite used when no list is sent (RFC 9820 §6.1).
    pub const DEFAULT: Self = Self::AES_CCM_16_64_128_SHA256;

    /// COSE algorithm identifiers `(AEAD, hash)` of the registered suites.
    pub fn cose_algorithms(self) -> Option<(i32, i32)> {
        match self.0 {
            0 => Some((10, -16)),
            1 => Some((1, -16)),
            2 => Some((3, -43)),
            3 => Some((24, -16)),
            4 => Some((24, -45)),
            _ => None,
        }
    }

    /// AEAD nonce length in bytes (RFC 8613 §3.3: an OSCORE ID is at most nonce length − 6).
    pub fn nonce_len(self) -> Option<usize> {
        match self.0 {
            0 => Some(13),
            1..=4 => Some(12),
            _ => None,
        }
    }

    /// Longest OSCORE Sender/Recipient ID usable with this suite (RFC 8613 §3.3).
    pub fn max_id_len(self) -> Option<usize> {
        self.nonce_len().map(|n| n - 6)
    }
}

/// The CoAP-EAP information object (RFC 9820 §5.1). Every element is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoapEapInfo {
    /// Label 1: the offered list (authenticator, in decreasing preference) or the choice (peer).
    pub cipher_suites: Option<Vec<CipherSuite>>,
    /// Label 2: RID-C, the OSCORE Recipient ID of the EAP authenticator.
    pub rid_c: Option<Vec<u8>>,
    /// Label 3: RID-I, the OSCORE Recipient ID of the EAP peer (IoT device).
    pub rid_i: Option<Vec<u8>>,
    /// Label 4: Session-Lifetime in seconds.
    pub session_lifetime: Option<u64>,
}

/// Why a CoAP-EAP information object or payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InfoError {
    /// The bytes are not one well-formed CBOR data item.
    #[error("CoAP-EAP info is not well-formed CBOR")]
    MalformedCbor,
    /// Bytes follow the CBOR map.
    #[error("{0} bytes after the CoAP-EAP info map")]
    TrailingBytes(usize),
    /// The item is not a map.
    #[error("CoAP-EAP info is not a CBOR map")]
    NotAMap,
    /// A map key is not an unsigned integer.
    #[error("CoAP-EAP info key is not an unsigned integer")]
    BadKey,
    /// A label appears twice.
    #[error("CoAP-EAP info label {0} appears twice")]
    DuplicateLabel(u64),
    /// A known label has a value of the wrong CBOR type or range.
    #[error("CoAP-EAP info label {label}: {what}")]
    BadValue {
        /// The label.
        label: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The object is larger than [`MAX_INFO_LEN`].
    #[error("CoAP-EAP info of {0} bytes is too long")]
    TooLong(usize),
    /// The payload is shorter than an EAP header (4 bytes).
    #[error("payload of {0} bytes is shorter than an EAP header")]
    ShortPayload(usize),
    /// The EAP Length field is below 4 or beyond the payload.
    #[error("EAP Length {eap_len} does not fit a payload of {payload_len} bytes")]
    BadEapLength {
        /// EAP Length field.
        eap_len: usize,
        /// Payload length.
        payload_len: usize,
    },
}

impl CoapEapInfo {
    /// True when no element is set (then nothing is appended to the EAP packet).
    pub fn is_empty(&self) -> bool {
        self.cipher_suites.is_none()
            && self.rid_c.is_none()
            && self.rid_i.is_none()
            && self.session_lifetime.is_none()
    }

    /// Deterministic CBOR encoding (RFC 8949 §4.2.1: labels ascending, shortest integers).
    pub fn encode(&self) -> Vec<u8> {
        let mut map: Vec<(Value, Value)> = Vec::new();
        let label = |l: u64| Value::Integer(Integer::from(l));
        if let Some(cs) = &self.cipher_suites {
            map.push((label(LABEL_CIPHER_SUITE), cipher_suites_value(cs)));
        }
        if let Some(r) = &self.rid_c {
            map.push((label(LABEL_RID_C), Value::Bytes(r.clone())));
        }
        if let Some(r) = &self.rid_i {
            map.push((label(LABEL_RID_I), Value::Bytes(r.clone())));
        }
        if let Some(l) = self.session_lifetime {
            map.push((
                label(LABEL_SESSION_LIFETIME),
                Value::Integer(Integer::from(l)),
            ));
        }
        encode_value(&Value::Map(map))
    }

    /// Decodes exactly one CBOR map (RFC 9820 §5.1). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, InfoError> {
        if bytes.len() > MAX_INFO_LEN {
            return Err(InfoError::TooLong(bytes.len()));
        }
        let mut rest = bytes;
        let value: Value =
            ciborium::de::from_reader(&mut rest).map_err(|_| InfoError::MalformedCbor)?;
        if !rest.is_empty() {
            return Err(InfoError::TrailingBytes(rest.len()));
        }
        let Value::Map(entries) = value else {
            return Err(InfoError::NotAMap);
        };
        let mut info = CoapEapInfo::default();
        let mut seen: Vec<u64> = Vec::new();
        for (k, v) in entries {
            let Value::Integer(k) = k else {
                return Err(InfoError::BadKey);
            };
            let k = u64::try_from(i128::from(k)).map_err(|_| InfoError::BadKey)?;
            if seen.contains(&k) {
                return Err(InfoError::DuplicateLabel(k));
            }
            seen.push(k);
            match k {
                LABEL_CIPHER_SUITE => info.cipher_suites = Some(decode_cipher_suites(v)?),
                LABEL_RID_C => info.rid_c = Some(decode_rid(k, v)?),
                LABEL_RID_I => info.rid_i = Some(decode_rid(k, v)?),
                LABEL_SESSION_LIFETIME => {
                    let Value::Integer(i) = v else {
                        return Err(InfoError::BadValue {
                            label: k,
                            what: "not an unsigned integer",
                        });
                    };
                    let l = u64::try_from(i128::from(i)).map_err(|_| InfoError::BadValue {
                        label: k,
                        what: "negative lifetime",
                    })?;
                    info.session_lifetime = Some(l);
                }
                // Unknown labels are ignored (see module docs).
                _ => {}
            }
        }
        Ok(info)
    }
}

/// `CBOR(array of cipher suites)`, the form that enters the key derivation (RFC 9820 §6.2).
pub fn encode_cipher_suites(cs: &[CipherSuite]) -> Vec<u8> {
    encode_value(&cipher_suites_value(cs))
}

fn cipher_suites_value(cs: &[CipherSuite]) -> Value {
    Value::Array(
        cs.iter()
            .map(|c| Value::Integer(Integer::from(c.0)))
            .collect(),
    )
}

fn encode_value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail and every Value built here is encodable.
    if ciborium::ser::into_writer(v, &mut out).is_err() {
        out.clear();
    }
    out
}

fn decode_cipher_suites(v: Value) -> Result<Vec<CipherSuite>, InfoError> {
    const L: u64 = LABEL_CIPHER_SUITE;
    let Value::Array(items) = v else {
        return Err(InfoError::BadValue {
            label: L,
            what: "not an array",
        });
    };
    if items.is_empty() || items.len() > MAX_CIPHER_SUITES {
        return Err(InfoError::BadValue {
            label: L,
            what: "empty or too many cipher suites",
        });
    }
    items
        .into_iter()
        .map(|i| match i {
            Value::Integer(i) => {
                i32::try_from(i128::from(i))
                    .map(CipherSuite)
                    .map_err(|_| InfoError::BadValue {
                        label: L,
                        what: "cipher suite out of range",
                    })
            }
            _ => Err(InfoError::BadValue {
                label: L,
                what: "cipher suite is not an integer",
            }),
        })
        .collect()
}

fn decode_rid(label: u64, v: Value) -> Result<Vec<u8>, InfoError> {
    match v {
        Value::Bytes(b) if b.len() <= MAX_RID_LEN => Ok(b),
        Value::Bytes(_) => Err(InfoError::BadValue {
            label,
            what: "RID longer than 7 bytes",
        }),
        _ => Err(InfoError::BadValue {
            label,
            what: "not a byte string",
        }),
    }
}

/// A CoAP-EAP payload split into its EAP packet and its optional info object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload<'a> {
    /// The EAP packet (its length is its own Length field, RFC 3748 §4).
    pub eap: &'a [u8],
    /// The info object after the EAP packet, if any.
    pub info: Option<CoapEapInfo>,
}

impl<'a> Payload<'a> {
    /// Splits `EAP packet ‖ CBOR map` (RFC 9820 §3.2: the CBOR object follows the EAP packet).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, InfoError> {
        if bytes.len() < 4 {
            return Err(InfoError::ShortPayload(bytes.len()));
        }
        let eap_len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if eap_len < 4 || eap_len > bytes.len() {
            return Err(InfoError::BadEapLength {
                eap_len,
                payload_len: bytes.len(),
            });
        }
        let (eap, rest) = bytes.split_at(eap_len);
        let info = if rest.is_empty() {
            None
        } else {
            Some(CoapEapInfo::decode(rest)?)
        };
        Ok(Self { eap, info })
    }

    /// EAP Code (RFC 3748 §4): 1 Request, 2 Response, 3 Success, 4 Failure.
    pub fn eap_code(&self) -> u8 {
        self.eap.first().copied().unwrap_or(0)
    }

    /// EAP Identifier (RFC 3748 §4).
    pub fn eap_identifier(&self) -> u8 {
        self.eap.get(1).copied().unwrap_or(0)
    }
}

/// Builds `EAP packet ‖ CBOR(info)`; an empty info adds nothing.
pub fn build_payload(eap: &[u8], info: &CoapEapInfo) -> Vec<u8> {
    let mut out = eap.to_vec();
    if !info.is_empty() {
        out.extend_from_slice(&info.encode());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_suite_array_is_8100() {
        assert_eq!(encode_cipher_suites(&[CipherSuite::DEFAULT]), [0x81, 0x00]);
    }

    #[test]
    fn round_trip_full() {
        let info = CoapEapInfo {
            cipher_suites: Some(vec![CipherSuite(0), CipherSuite(1), CipherSuite(-22)]),
            rid_c: Some(vec![0x01]),
            rid_i: Some(vec![]),
            session_lifetime: Some(86_400),
        };
        let bytes = info.encode();
        // {1: [0, 1, -22], 2: h'01', 3: h'', 4: 86400}
        assert_eq!(hex::encode(&bytes), "a401830001350241010340041a00015180");
        assert_eq!(CoapEapInfo::decode(&bytes).unwrap(), info);
    }

    #[test]
    fn errors() {
        assert_eq!(CoapEapInfo::decode(&[]), Err(InfoError::MalformedCbor));
        assert_eq!(CoapEapInfo::decode(&[0x80]), Err(InfoError::NotAMap));
        assert_eq!(
            CoapEapInfo::decode(&[0xa0, 0x00]),
            Err(InfoError::TrailingBytes(1))
        );
        // {1: 0}
        assert!(matches!(
            CoapEapInfo::decode(&[0xa1, 0x01, 0x00]),
            Err(InfoError::BadValue { label: 1, .. })
        ));
        // {1: []}
        assert!(matches!(
            CoapEapInfo::decode(&[0xa1, 0x01, 0x80]),
            Err(InfoError::BadValue { label: 1, .. })
        ));
        // {2: 1}
        assert!(matches!(
            CoapEapInfo::decode(&[0xa1, 0x02, 0x01]),
            Err(InfoError::BadValue { label: 2, .. })
        ));
        // {4: -1}
        assert!(matches!(
            CoapEapInfo::decode(&[0xa1, 0x04, 0x20]),
            Err(InfoError::BadValue { label: 4, .. })
        ));
        // {4: 1, 4: 2}
        assert_eq!(
            CoapEapInfo::decode(&[0xa2, 0x04, 0x01, 0x04, 0x02]),
            Err(InfoError::DuplicateLabel(4))
        );
        // {"a": 1}
        assert_eq!(
            CoapEapInfo::decode(&[0xa1, 0x61, 0x61, 0x01]),
            Err(InfoError::BadKey)
        );
        // {30: 1} unknown label ignored
        assert_eq!(
            CoapEapInfo::decode(&[0xa1, 0x18, 0x1e, 0x01]),
            Ok(CoapEapInfo::default())
        );
    }

    #[test]
    fn payload_split() {
        // EAP-Request/Identity id 7, then {4: 10}
        let eap = [1u8, 7, 0, 5, 1];
        let info = CoapEapInfo {
            session_lifetime: Some(10),
            ..Default::default()
        };
        let p = build_payload(&eap, &info);
        let parsed = Payload::parse(&p).unwrap();
        assert_eq!(parsed.eap, eap);
        assert_eq!(parsed.info, Some(info));
        assert_eq!(parsed.eap_code(), 1);
        assert_eq!(parsed.eap_identifier(), 7);
        assert_eq!(
            Payload::parse(&eap).unwrap().info,
            None,
            "no CBOR after the packet"
        );
        assert_eq!(Payload::parse(&[1, 2, 0]), Err(InfoError::ShortPayload(3)));
        assert!(matches!(
            Payload::parse(&[1, 2, 0, 9]),
            Err(InfoError::BadEapLength { .. })
        ));
        assert!(matches!(
            Payload::parse(&[1, 2, 0, 3]),
            Err(InfoError::BadEapLength { .. })
        ));
    }
}
