//! `capillary subscriber`: provisioning of the subscriber store (the embedded SQLite default).
//! Secrets go in, never out: `list` and `show` print no K, OP or OPc.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use capillary_secrets::{Amf, Imsi, Op, Opc, Secret, K};
use capillary_store::{
    NewSubscriber, OpKind, SqliteStore, SubscriberInfo, SubscriberKind, SubscriberStatus,
    SubscriberStore,
};

/// Store location shared by every subcommand.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Directory of the embedded store (as for `capillary core`).
    #[arg(long, env = "CAPILLARY_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// `capillary subscriber ...`
#[derive(Debug, clap::Subcommand)]
pub enum SubscriberCmd {
    /// Add one subscriber.
    Add(AddArgs),
    /// List subscribers (no secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show one subscriber (no secrets).
    Show {
        /// IMSI.
        #[arg(long)]
        imsi: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a subscriber with its pseudonyms and re-authentication state.
    Remove {
        /// IMSI.
        #[arg(long)]
        imsi: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Bar a subscriber: authentication is refused until `unbar`.
    Bar {
        /// IMSI.
        #[arg(long)]
        imsi: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Lift a bar.
    Unbar {
        /// IMSI.
        #[arg(long)]
        imsi: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Import subscribers from CSV (header `imsi,k,opc,op,amf,sqn,kind,status`; `opc` or `op`
    /// per row; `amf`, `sqn`, `kind`, `status` optional). All rows or none.
    Import {
        /// The CSV file (`-` for stdin).
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `capillary subscriber add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// IMSI (6 to 15 digits).
    #[arg(long)]
    imsi: String,
    /// Subscriber key K (32 hex digits).
    #[arg(long)]
    k: String,
    /// OPc (32 hex digits).
    #[arg(long, conflicts_with = "op", required_unless_present = "op")]
    opc: Option<String>,
    /// OP (32 hex digits); kept as OP, OPc is derived per use.
    #[arg(long)]
    op: Option<String>,
    /// AMF (4 hex digits). EAP-AKA' vectors always carry the separation bit.
    #[arg(long, default_value = "8000")]
    amf: String,
    /// Initial SQN of the network (SQN_HE, decimal or 0x-hex); the first vector uses the next SEQ.
    #[arg(long, default_value = "0")]
    sqn: String,
    /// IND length in bits (TS 33.102 Annex C).
    #[arg(long, default_value_t = 5)]
    ind_len: u8,
    /// `device` or `gateway`.
    #[arg(long, default_value = "device")]
    kind: String,
    /// Provision as barred.
    #[arg(long)]
    barred: bool,
    #[command(flatten)]
    store: StoreArgs,
}

fn open(store: &StoreArgs) -> Result<SqliteStore> {
    let dir = store
        .data_dir
        .clone()
        .unwrap_or_else(crate::default_data_dir);
    capillary_network::create_private_dir(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("subscribers.db");
    SqliteStore::open(&db).with_context(|| format!("opening {}", db.display()))
}

fn parse_u64(text: &str) -> Result<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).context("not a hex number"),
        None => text.parse::<u64>().context("not a decimal number"),
    }
}

fn parse_kind(text: &str) -> Result<SubscriberKind> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "device" => Ok(SubscriberKind::Device),
        "gateway" => Ok(SubscriberKind::Gateway),
        other => bail!("kind {other:?}: expected device or gateway"),
    }
}

fn parse_status(text: &str) -> Result<SubscriberStatus> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "active" => Ok(SubscriberStatus::Active),
        "barred" => Ok(SubscriberStatus::Barred),
        other => bail!("status {other:?}: expected active or barred"),
    }
}

struct Fields<'a> {
    imsi: &'a str,
    k: &'a str,
    opc: Option<&'a str>,
    op: Option<&'a str>,
    amf: &'a str,
    sqn: &'a str,
    ind_len: u8,
    kind: &'a str,
    status: &'a str,
}

fn build(f: Fields<'_>) -> Result<NewSubscriber> {
    let imsi = Imsi::new(f.imsi.trim()).with_context(|| format!("imsi {:?}", f.imsi))?;
    let k = K::from_hex(f.k.trim()).context("k: expected 32 hex digits")?;
    let op = match (
        f.opc.filter(|s| !s.trim().is_empty()),
        f.op.filter(|s| !s.trim().is_empty()),
    ) {
        (Some(opc), None) => {
            OpKind::Opc(Opc::from_hex(opc.trim()).context("opc: expected 32 hex digits")?)
        }
        (None, Some(op)) => {
            OpKind::Op(Op::from_hex(op.trim()).context("op: expected 32 hex digits")?)
        }
        (Some(_), Some(_)) => bail!("give opc or op, not both"),
        (None, None) => bail!("give opc or op"),
    };
    let amf_text = if f.amf.trim().is_empty() {
        "8000"
    } else {
        f.amf.trim()
    };
    let amf = Amf::from_hex(amf_text).context("amf: expected 4 hex digits")?;
    let sqn_text = if f.sqn.trim().is_empty() {
        "0"
    } else {
        f.sqn.trim()
    };
    let sqn = parse_u64(sqn_text).context("sqn")?;
    if sqn >= 1 << 48 {
        bail!("sqn must fit in 48 bits");
    }
    if f.ind_len == 0 || f.ind_len > 28 {
        bail!("ind-len must be 1 to 28");
    }
    Ok(NewSubscriber {
        imsi,
        k,
        op,
        amf,
        sqn,
        ind_len: f.ind_len,
        kind: parse_kind(f.kind)?,
        status: parse_status(f.status)?,
    })
}

fn kind_text(k: SubscriberKind) -> &'static str {
    match k {
        SubscriberKind::Device => "device",
        SubscriberKind::Gateway => "gateway",
    }
}

fn status_text(s: SubscriberStatus) -> &'static str {
    match s {
        SubscriberStatus::Active => "active",
        SubscriberStatus::Barred => "barred",
    }
}

fn imsi(text: &str) -> Result<Imsi> {
    Imsi::new(text.trim()).with_context(|| format!("imsi {text:?}"))
}

/// Runs a subcommand.
pub fn run(cmd: SubscriberCmd) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(cmd))
}

async fn run_async(cmd: SubscriberCmd) -> Result<()> {
    match cmd {
        SubscriberCmd::Add(a) => {
            let status = if a.barred { "barred" } else { "active" };
            let sub = build(Fields {
                imsi: &a.imsi,
                k: &a.k,
                opc: a.opc.as_deref(),
                op: a.op.as_deref(),
                amf: &a.amf,
                sqn: &a.sqn,
                ind_len: a.ind_len,
                kind: &a.kind,
                status,
            })?;
            let imsi = sub.imsi.clone();
            open(&a.store)?
                .add(sub)
                .await
                .with_context(|| format!("adding {imsi}"))?;
            println!("added {imsi}");
        }
        SubscriberCmd::List { store } => {
            let store = open(&store)?;
            println!(
                "{:<15}  {:<7}  {:<6}  {:<4}  {:>14}  IND_LEN",
                "IMSI", "KIND", "STATUS", "AMF", "SEQ_HE"
            );
            let mut after: Option<Imsi> = None;
            loop {
                let page = store.list(after.as_ref(), 500).await?;
                for s in &page {
                    print_row(s);
                }
                match page.last() {
                    Some(last) if page.len() == 500 => after = Some(last.imsi.clone()),
                    _ => break,
                }
            }
        }
        SubscriberCmd::Show { imsi: text, store } => {
            let id = imsi(&text)?;
            match open(&store)?.get(&id).await? {
                Some(s) => {
                    println!("imsi:     {}", s.imsi);
                    println!("kind:     {}", kind_text(s.kind));
                    println!("status:   {}", status_text(s.status));
                    println!("amf:      {}", s.amf.to_hex());
                    println!("op:       {}", if s.has_opc { "OPc" } else { "OP" });
                    println!("seq_he:   {}", s.seq_he);
                    println!("ind_len:  {}", s.ind_len);
                }
                None => bail!("no subscriber {id}"),
            }
        }
        SubscriberCmd::Remove { imsi: text, store } => {
            let id = imsi(&text)?;
            if !open(&store)?.remove(&id).await? {
                bail!("no subscriber {id}");
            }
            println!("removed {id}");
        }
        SubscriberCmd::Bar { imsi: text, store } => {
            set_status(&text, &store, SubscriberStatus::Barred).await?
        }
        SubscriberCmd::Unbar { imsi: text, store } => {
            set_status(&text, &store, SubscriberStatus::Active).await?
        }
        SubscriberCmd::Import { file, store } => {
            let subs = read_csv(&file)?;
            let n = open(&store)?
                .import(subs)
                .await
                .context("import (nothing was imported)")?;
            println!("imported {n} subscribers");
        }
    }
    Ok(())
}

async fn set_status(text: &str, store: &StoreArgs, st: SubscriberStatus) -> Result<()> {
    let id = imsi(text)?;
    if !open(store)?.set_status(&id, st).await? {
        bail!("no subscriber {id}");
    }
    println!("{id} {}", status_text(st));
    Ok(())
}

fn print_row(s: &SubscriberInfo) {
    println!(
        "{:<15}  {:<7}  {:<6}  {:<4}  {:>14}  {}",
        s.imsi.as_str(),
        kind_text(s.kind),
        status_text(s.status),
        s.amf.to_hex(),
        s.seq_he,
        s.ind_len
    );
}

/// Reads the CSV, reporting the line of the first bad row.
fn read_csv(path: &Path) -> Result<Vec<NewSubscriber>> {
    let reader: Box<dyn std::io::Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)
    };
    let mut csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(reader);
    let headers = csv.headers()?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(imsi_c), Some(k_c)) = (col("imsi"), col("k")) else {
        bail!("CSV header must name at least the columns imsi and k (and opc or op)");
    };
    for h in headers.iter() {
        if ![
            "imsi", "k", "opc", "op", "amf", "sqn", "kind", "status", "ind_len",
        ]
        .iter()
        .any(|k| h.eq_ignore_ascii_case(k))
        {
            bail!("unknown CSV column {h:?}");
        }
    }
    let (opc_c, op_c, amf_c, sqn_c, kind_c, status_c, ind_c) = (
        col("opc"),
        col("op"),
        col("amf"),
        col("sqn"),
        col("kind"),
        col("status"),
        col("ind_len"),
    );
    let mut out = Vec::new();
    for (i, rec) in csv.records().enumerate() {
        let line = i + 2;
        let rec = rec.with_context(|| format!("line {line}"))?;
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("");
        let ind_len = match get(ind_c) {
            "" => 5,
            t => t.parse().with_context(|| format!("line {line}: ind_len"))?,
        };
        let sub = build(Fields {
            imsi: get(Some(imsi_c)),
            k: get(Some(k_c)),
            opc: opc_c.map(|_| get(opc_c)),
            op: op_c.map(|_| get(op_c)),
            amf: get(amf_c),
            sqn: get(sqn_c),
            ind_len,
            kind: get(kind_c),
            status: get(status_c),
        })
        .with_context(|| format!("line {line}"))?;
        out.push(sub);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        std::fs::write(
            &p,
            "imsi,k,opc,op,amf,sqn,kind,status\n\
             001010000000001,465b5ce8b199b49faa5f0a2ee238a6bc,cd63cb71954a9f4e48a5994e37a02baf,,,,,\n\
             001010000000002,465b5ce8b199b49faa5f0a2ee238a6bc,,cdc202d5123e20f62b6d676ac72cb318,b9b9,0x20,gateway,barred\n",
        )
        .unwrap();
        let subs = read_csv(&p).unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[1].kind, SubscriberKind::Gateway);
        assert_eq!(subs[1].status, SubscriberStatus::Barred);
        assert_eq!(subs[1].sqn, 0x20);
        assert!(matches!(subs[1].op, OpKind::Op(_)));
        std::fs::write(
            &p,
            "imsi,k,opc\n001010000000001,zz,cd63cb71954a9f4e48a5994e37a02baf\n",
        )
        .unwrap();
        let err = format!("{:#}", read_csv(&p).unwrap_err());
        assert!(err.contains("line 2") && err.contains("k:"), "{err}");
        std::fs::write(&p, "imsi,key\n").unwrap();
        assert!(read_csv(&p).is_err());
    }
}
