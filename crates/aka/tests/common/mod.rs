//! Shared helpers for the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

/// Reads and parses `tests/data/<name>`.
pub fn load<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("# "),
        "{name}: first line must name the source"
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Decodes hex into a fixed-size array.
pub fn arr<const N: usize>(hex_text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    hex::decode_to_slice(hex_text, &mut out).unwrap_or_else(|e| panic!("{hex_text}: {e}"));
    out
}

/// Decodes hex.
pub fn bytes(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).unwrap()
}
