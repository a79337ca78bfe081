//! The handful of deterministic CBOR (RFC 8949) encodings OSCORE needs for the HKDF `info`
//! (RFC 8613 §3.2.1) and the AAD (RFC 8613 §5.4). Encoding only; OSCORE never decodes CBOR.

fn head(out: &mut Vec<u8>, major: u8, value: u64) {
    let m = major << 5;
    match value {
        0..=23 => out.push(m | value as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, value as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(value as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

pub(crate) fn uint(out: &mut Vec<u8>, v: u64) {
    head(out, 0, v);
}

pub(crate) fn bstr(out: &mut Vec<u8>, b: &[u8]) {
    head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

pub(crate) fn tstr(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn array(out: &mut Vec<u8>, len: u64) {
    head(out, 4, len);
}

pub(crate) fn nil(out: &mut Vec<u8>) {
    out.push(0xf6);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let mut v = Vec::new();
        uint(&mut v, 10);
        uint(&mut v, 24);
        uint(&mut v, 256);
        bstr(&mut v, &[]);
        tstr(&mut v, "IV");
        array(&mut v, 5);
        nil(&mut v);
        assert_eq!(
            v,
            [0x0a, 0x18, 0x18, 0x19, 0x01, 0x00, 0x40, 0x62, b'I', b'V', 0x85, 0xf6]
        );
    }
}
