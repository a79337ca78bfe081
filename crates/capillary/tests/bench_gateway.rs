//! `capillary bench gateway` end to end: the network side and the gateway over loopback UDP,
//! the devices in memory; every device must authenticate and the JSON must report it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_capillary");

fn field<'a>(json: &'a str, name: &str) -> &'a str {
    let at = json
        .find(&format!("\"{name}\":"))
        .unwrap_or_else(|| panic!("no {name} in {json}"));
    let rest = &json[at + name.len() + 3..];
    let end = rest.find([',', '}']).unwrap();
    &rest[..end]
}

#[test]
fn every_device_authenticates_through_one_gateway() {
    for extra in [
        &[][..],
        &["--wave", "40", "--wave-interval", "10", "--uplink"][..],
    ] {
        let out = Command::new(BIN)
            .args(["bench", "gateway", "-n", "200", "--json", "--timeout", "60"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{extra:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(field(&stdout, "devices"), "200");
        assert_eq!(field(&stdout, "completed"), "200", "{stdout}");
        assert_eq!(field(&stdout, "failed"), "0");
        assert!(field(&stdout, "device_auths_per_s").parse::<f64>().unwrap() > 0.0);
        // The gateway link carried the devices' EAP exchanges: at least one batch each way
        // and some bytes per device.
        let bytes: u64 = field(&stdout, "bytes").parse().unwrap();
        assert!(bytes > 200 * 100, "{stdout}");
    }
}
