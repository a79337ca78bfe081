//! Block1/Block2 option values (RFC 7959 §2.2).
#![allow(clippy::unwrap_used)] // tests may unwrap (house rules)

use capillary_coap::block::BlockValue;
use capillary_coap::msg::option_number::BLOCK2;
use capillary_coap::CoapError;
use proptest::prelude::*;

#[test]
fn known_encodings() {
    // NUM 0, M 0, SZX 0 → empty value; NUM 0, M 1, SZX 6 (1024) → 0x0e;
    // NUM 1, M 0, SZX 2 (64) → 0x12; NUM 4096, M 1, SZX 6 → 0x01000e.
    for (num, more, szx, hex_value) in [
        (0u32, false, 0u8, ""),
        (0, true, 6, "0e"),
        (1, false, 2, "12"),
        (4096, true, 6, "01000e"),
        (BlockValue::MAX_NUM, true, 6, "fffffe"),
    ] {
        let b = BlockValue::new(num, more, szx).unwrap();
        assert_eq!(hex::encode(b.encode()), hex_value, "{b:?}");
        assert_eq!(BlockValue::decode(BLOCK2, &b.encode()), Ok(b));
    }
    let b = BlockValue::new(3, false, 6).unwrap();
    assert_eq!((b.size(), b.offset()), (1024, 3072));
}

#[test]
fn invalid_values() {
    assert_eq!(
        BlockValue::decode(BLOCK2, &[0x07]),
        Err(CoapError::InvalidOptionValue(BLOCK2))
    );
    assert_eq!(
        BlockValue::decode(BLOCK2, &[0, 0, 0, 1]),
        Err(CoapError::InvalidOptionValue(BLOCK2))
    );
    assert_eq!(BlockValue::new(1 << 20, false, 0), None);
    assert_eq!(BlockValue::new(0, false, 7), None);
}

proptest! {
    #[test]
    fn decode_never_panics(v in prop::collection::vec(any::<u8>(), 0..6)) {
        if let Ok(b) = BlockValue::decode(BLOCK2, &v) {
            prop_assert_eq!(BlockValue::decode(BLOCK2, &b.encode()), Ok(b));
        }
    }
}
