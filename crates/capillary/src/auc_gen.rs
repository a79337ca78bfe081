//! `capillary auc-gen`: one authentication vector, printed like `osmo-auc-gen -3 -a milenage`,
//! plus AK, MAC-A, MAC-S and, on request, the EAP-AKA' key chain (RFC 9048 §3.3) for debugging
//! a peer. It prints key material on purpose: it is an operator's offline tool.

use anyhow::{bail, Context, Result};

use crate::parse_u64;
use capillary_aka::prime::{ck_ik_prime, full_auth_keys};
use capillary_aka::vector::{generate_vector, verify_auts};
use capillary_aka::Milenage;
use capillary_secrets::{Amf, Auts, Op, Opc, Rand, Secret, Sqn, K};
use rand::RngCore;

/// Options, named as osmo-auc-gen names them where it has them.
#[derive(Debug, clap::Args)]
pub struct AucGenArgs {
    /// Use 3G (UMTS) authentication (accepted for compatibility; the only mode).
    #[arg(short = '3', long = "3g")]
    pub umts: bool,
    /// Algorithm (only `milenage`).
    #[arg(short = 'a', long, default_value = "milenage")]
    pub algorithm: String,
    /// K (hex).
    #[arg(short = 'k', long)]
    pub key: String,
    /// OPc (hex).
    #[arg(short = 'o', long, conflicts_with = "op")]
    pub opc: Option<String>,
    /// OP (hex).
    #[arg(short = 'O', long)]
    pub op: Option<String>,
    /// AMF (hex, 2 bytes).
    #[arg(short = 'f', long, default_value = "8000")]
    pub amf: String,
    /// SQN (decimal, or hex with 0x), used as given.
    #[arg(short = 's', long, default_value = "0")]
    pub sqn: String,
    /// IND length in bits.
    #[arg(short = 'l', long, default_value_t = 5)]
    pub ind_len: u8,
    /// IND slot for the SQN of the vector after a resynchronisation with --auts.
    #[arg(short = 'i', long, default_value_t = 0)]
    pub ind: u32,
    /// AUTS from the MS (hex, 14 bytes): verify it and recover SQN_MS.
    #[arg(short = 'A', long, requires = "rand")]
    pub auts: Option<String>,
    /// RAND (hex, 16 bytes); random when absent.
    #[arg(short = 'r', long)]
    pub rand: Option<String>,
    /// Network name for CK'/IK' (RFC 9048 §3.1); with --identity prints the EAP-AKA' keys.
    #[arg(long, requires = "identity")]
    pub network_name: Option<String>,
    /// EAP identity for the EAP-AKA' key derivation, e.g. 6001010000000001@realm.
    #[arg(long, requires = "network_name")]
    pub identity: Option<String>,
}

/// Runs the command, printing to stdout.
pub fn run(args: AucGenArgs) -> Result<()> {
    print!("{}", render(&args)?);
    Ok(())
}

/// Computes the text the command prints.
pub fn render(args: &AucGenArgs) -> Result<String> {
    use std::fmt::Write;
    if !args.algorithm.eq_ignore_ascii_case("milenage") {
        bail!("only --algorithm milenage is supported");
    }
    if args.ind_len > 28 {
        bail!("--ind-len must be at most 28");
    }
    let k = K::from_hex(&args.key).context("--key")?;
    let m = match (&args.opc, &args.op) {
        (Some(opc), _) => Milenage::new(&k, &Opc::from_hex(opc).context("--opc")?),
        (None, Some(op)) => Milenage::with_op(&k, &Op::from_hex(op).context("--op")?),
        (None, None) => bail!("give --opc or --op"),
    };
    let amf = Amf::from_hex(&args.amf).context("--amf must be 2 bytes of hex")?;
    let rand = match &args.rand {
        Some(r) => Rand::from_hex(r).context("--rand must be 16 bytes of hex")?,
        None => {
            let mut r = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut r);
            Rand(r)
        }
    };
    let mut out = String::new();
    let mut sqn =
        Sqn::new(parse_u64(&args.sqn).context("--sqn")?).context("--sqn must fit in 48 bits")?;
    if let Some(auts) = &args.auts {
        let auts = Auts::from_hex(auts).context("--auts must be 14 bytes of hex")?;
        let sqn_ms = verify_auts(&m, &rand, &auts).context("AUTS from MS seems incorrect")?;
        writeln!(out, "SQN.MS:\t{}", sqn_ms.value())?;
        // Next SQN after resynchronisation: SEQ_MS + 1 in the requested IND slot (TS 33.102 C.3.4).
        sqn = Sqn::from_seq_ind(sqn_ms.seq(args.ind_len) + 1, args.ind, args.ind_len)
            .context("--ind does not fit --ind-len, or SEQ overflow")?;
    }
    let v = generate_vector(&m, &rand, &sqn, &amf);
    let (_, _, _, ak) = m.f2345(&rand);
    writeln!(out, "RAND:\t{}", v.rand.to_hex())?;
    writeln!(out, "AUTN:\t{}", v.autn.to_hex())?;
    writeln!(out, "IK:\t{}", hex::encode(v.ik.expose()))?;
    writeln!(out, "CK:\t{}", hex::encode(v.ck.expose()))?;
    writeln!(out, "RES:\t{}", hex::encode(v.xres.expose()))?;
    writeln!(out, "AK:\t{}", hex::encode(ak))?;
    writeln!(out, "MAC-A:\t{}", hex::encode(m.f1(&rand, &sqn, &amf)))?;
    writeln!(out, "MAC-S:\t{}", hex::encode(m.f1_star(&rand, &sqn, &amf)))?;
    writeln!(out, "SQN:\t{}", sqn.value())?;
    writeln!(out, "IND:\t{}", sqn.ind(args.ind_len))?;
    if let (Some(name), Some(identity)) = (&args.network_name, &args.identity) {
        let sqn_xor_ak: [u8; 6] = {
            let mut b = [0u8; 6];
            b.copy_from_slice(&v.autn.0[..6]);
            b
        };
        let (ckp, ikp) = ck_ik_prime(&v.ck, &v.ik, name.as_bytes(), &sqn_xor_ak);
        let keys = full_auth_keys(identity.as_bytes(), &ckp, &ikp);
        writeln!(out, "CK':\t{}", hex::encode(ckp.expose()))?;
        writeln!(out, "IK':\t{}", hex::encode(ikp.expose()))?;
        writeln!(out, "K_encr:\t{}", hex::encode(keys.k_encr.expose()))?;
        writeln!(out, "K_aut:\t{}", hex::encode(keys.k_aut.expose()))?;
        writeln!(out, "K_re:\t{}", hex::encode(keys.k_re.expose()))?;
        writeln!(out, "MSK:\t{}", hex::encode(keys.msk.expose()))?;
        writeln!(out, "EMSK:\t{}", hex::encode(keys.emsk.expose()))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        a: AucGenArgs,
    }

    fn render_args(args: &[&str]) -> Result<String> {
        let mut v = vec!["auc-gen"];
        v.extend_from_slice(args);
        render(&Wrap::try_parse_from(v)?.a)
    }

    fn field<'a>(text: &'a str, label: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(label).and_then(|r| r.strip_prefix('\t')))
            .unwrap_or_else(|| panic!("no {label} in {text}"))
    }

    /// RFC 9048 Appendix D test case 1 (TS 35.208 set 19 underneath).
    #[test]
    fn rfc9048_case_1() {
        let out = render_args(&[
            "-3",
            "-a",
            "milenage",
            "-k",
            "5122250214c33e723a5dd523fc145fc0",
            "-o",
            "981d464c7c52eb6e5036234984ad0bcf",
            "-f",
            "c3ab",
            "-s",
            "0x16f3b3f70fc2",
            "-r",
            "81e92b6c0ee0e12ebceba8d92a99dfa5",
            "--network-name",
            "WLAN",
            "--identity",
            "0555444333222111",
        ])
        .unwrap();
        assert_eq!(field(&out, "AUTN:"), "bb52e91c747ac3ab2a5c23d15ee351d5");
        assert_eq!(field(&out, "RES:"), "28d7b0f2a2ec3de5");
        assert_eq!(field(&out, "AK:"), "ada15aeb7bb8");
        assert_eq!(field(&out, "MAC-S:"), "62dae3853f3af9d2");
        assert_eq!(field(&out, "CK':"), "0093962d0dd84aa5684b045c9edffa04");
        assert_eq!(field(&out, "IK':"), "ccfc230ca74fcc96c0a5d61164f5a76c");
        assert_eq!(
            field(&out, "MSK:"),
            "67c42d9aa56c1b79e295e3459fc3d187d42be0bf818d3070e362c5e967a4d544\
             e8ecfe19358ab3039aff03b7c930588c055babee58a02650b067ec4e9347c75a"
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        let err = render_args(&["-k", "00", "-o", "981d464c7c52eb6e5036234984ad0bcf"]);
        assert!(format!("{:#}", err.unwrap_err()).contains("--key"));
        let err = render_args(&["-k", "5122250214c33e723a5dd523fc145fc0"]);
        assert!(format!("{:#}", err.unwrap_err()).contains("--opc or --op"));
        let err = render_args(&[
            "-k",
            "5122250214c33e723a5dd523fc145fc0",
            "-o",
            "981d464c7c52eb6e5036234984ad0bcf",
            "-s",
            "0x1000000000000",
        ]);
        assert!(format!("{:#}", err.unwrap_err()).contains("48 bits"));
    }
}
