//! Test helpers: a tiny reader for the flat `key = "hex"` vector files.
#![allow(dead_code)]

use std::collections::HashMap;

/// Reads `tests/data/<name>`, returning hex-decoded values by key.
pub fn vectors(name: &str) -> HashMap<String, Vec<u8>> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (k, rest) = line.split_once('=').unwrap();
        let v = rest.trim().trim_start_matches('"');
        let v = &v[..v.find('"').unwrap()];
        out.insert(k.trim().to_string(), hex::decode(v).unwrap());
    }
    out
}

pub fn arr16(v: &[u8]) -> [u8; 16] {
    v.try_into().unwrap()
}
