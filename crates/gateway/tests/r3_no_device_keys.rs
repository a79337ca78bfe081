//! R3 by construction (PROTOCOL.md §1: "the gateway relays, it does not hold device
//! secrets"): the modules that handle device traffic name no key type, and key types
//! appear only in the module of the gateway's OWN authentication.

const RELAY: &str = include_str!("../src/relay.rs");
const LOCAL: &str = include_str!("../src/local.rs");
const GATEWAY: &str = include_str!("../src/gateway.rs");
const TYPES: &str = include_str!("../src/types.rs");
const CONFIG: &str = include_str!("../src/config.rs");
const LIB: &str = include_str!("../src/lib.rs");
const AUTH: &str = include_str!("../src/auth.rs");

/// Key types of EAP-AKA' / CoAP-EAP / OSCORE material (capillary-secrets, capillary-coap-eap).
const KEY_TYPES: &[&str] = &[
    "Msk",
    "Emsk",
    "CkPrime",
    "IkPrime",
    "Ck",
    "Ik",
    "KEncr",
    "KAut",
    "KRe",
    "Res",
    "OscoreMaterial",
    "MasterSecret",
    "MasterSalt",
    "keys_in_progress",
    "capillary_secrets",
];

/// Does `src` use `word` as an identifier (not as part of a longer one)?
fn names(src: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    src.match_indices(word).any(|(i, _)| {
        let before = src[..i].chars().next_back();
        let after = src[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// Source without comments (doc comments may explain what the code does not do).
fn code(src: &str) -> String {
    src.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn device_traffic_module_names_no_key_type() {
    for k in KEY_TYPES {
        assert!(!names(&code(RELAY), k), "relay.rs names {k}");
        // PROTOCOL.md §5: the local identity step handles device traffic too.
        assert!(!names(&code(LOCAL), k), "local.rs names {k}");
    }
}

#[test]
fn key_types_only_in_the_own_authentication_module() {
    for (name, src) in [
        ("relay.rs", RELAY),
        ("local.rs", LOCAL),
        ("gateway.rs", GATEWAY),
        ("types.rs", TYPES),
        ("lib.rs", LIB),
    ] {
        for k in KEY_TYPES {
            assert!(!names(&code(src), k), "{name} names {k}");
        }
    }
    // config.rs holds the gateway's own subscription (K, OPc, IMSI) and nothing else.
    for k in KEY_TYPES.iter().filter(|k| **k != "capillary_secrets") {
        assert!(!names(&code(CONFIG), k), "config.rs names {k}");
    }
    // The own authentication does use them (so the check above is meaningful).
    assert!(names(&code(AUTH), "keys_in_progress"));
    assert!(names(&code(AUTH), "OscoreMaterial"));
}

#[test]
fn the_checker_finds_what_it_looks_for() {
    assert!(names("let m: Msk = x;", "Msk"));
    assert!(!names("let m: MskLike = x;", "Msk"));
    assert!(!names(&code("// Msk in a comment"), "Msk"));
}
