//! `capillary subscriber`: provisioning of the subscriber store (the embedded SQLite default).
//! Secrets go in, never out: `list` and `show` print no K, OP or OPc.
//!
//! Gateway authorisation (docs/PROTOCOL.md §6): `bind` / `unbind` edit the gateways a device
//! may attach through, `import` takes them from a `gateways` column, `audit` prints the log of
//! refusals and successes the network writes.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::parse_u64;
use capillary_secrets::{Amf, Imsi, Op, Opc, Secret, K};
use capillary_store::{
    AuditRecord, NewSubscriber, OpKind, SqliteStore, SubscriberInfo, SubscriberKind,
    SubscriberStatus, SubscriberStore,
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
    /// Import subscribers from CSV (header `imsi,k,opc,op,amf,sqn,kind,status,ind_len,gateways`;
    /// `opc` or `op` per row; the others optional; `gateways` lists, separated by `;`, the
    /// gateways a device may attach through, from the file or the store). All rows or none.
    Import {
        /// The CSV file (`-` for stdin).
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Allow a device to attach through a gateway (docs/PROTOCOL.md §6).
    Bind(BindArgs),
    /// Withdraw a device's permission to attach through a gateway.
    Unbind(BindArgs),
    /// Print the audit log, oldest first: time (UTC), event, subject, gateway, detail.
    Audit {
        /// Only records about this IMSI.
        #[arg(long)]
        imsi: Option<String>,
        /// How many records: the most recent ones, or the first ones after `--after`.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this record id (for paging) instead of showing the most recent.
        #[arg(long)]
        after: Option<u64>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `capillary subscriber bind` / `unbind`.
#[derive(Debug, clap::Args)]
pub struct BindArgs {
    /// IMSI of the device.
    #[arg(long)]
    imsi: String,
    /// IMSI of the gateway.
    #[arg(long)]
    gateway: String,
    #[command(flatten)]
    store: StoreArgs,
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
            let store = open(&store)?;
            match store.get(&id).await? {
                Some(s) => {
                    println!("imsi:     {}", s.imsi);
                    println!("kind:     {}", kind_text(s.kind));
                    println!("status:   {}", status_text(s.status));
                    println!("amf:      {}", s.amf.to_hex());
                    println!("op:       {}", if s.has_opc { "OPc" } else { "OP" });
                    println!("seq_he:   {}", s.seq_he);
                    println!("ind_len:  {}", s.ind_len);
                    match s.kind {
                        SubscriberKind::Device => {
                            let gws = store.gateways_of(&id).await?;
                            let list: Vec<&str> = gws.iter().map(Imsi::as_str).collect();
                            if list.is_empty() {
                                println!("gateways: (none)");
                            } else {
                                println!("gateways: {}", list.join(", "));
                            }
                        }
                        SubscriberKind::Gateway => {
                            println!("devices:  {}", count_devices(&store, &id).await?);
                        }
                    }
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
            let csv = read_csv(&file)?;
            let store = open(&store)?;
            check_csv_bindings(&store, &csv)
                .await
                .context("import (nothing was imported)")?;
            let bindings: Vec<(Imsi, Imsi)> =
                csv.bindings.into_iter().map(|(_, d, g)| (d, g)).collect();
            let m = bindings.len();
            let n = store
                .import_with_bindings(csv.subs, bindings)
                .await
                .context("import (nothing was imported)")?;
            println!("imported {n} subscribers, {m} gateway bindings");
        }
        SubscriberCmd::Bind(a) => {
            let (device, gateway) = (imsi(&a.imsi)?, imsi(&a.gateway)?);
            let store = open(&a.store)?;
            check_pair(&store, &device, &gateway).await?;
            store
                .bind_gateway(&device, &gateway)
                .await
                .with_context(|| format!("binding {device} to {gateway}"))?;
            println!("{device} may attach through {gateway}");
        }
        SubscriberCmd::Unbind(a) => {
            let (device, gateway) = (imsi(&a.imsi)?, imsi(&a.gateway)?);
            if !open(&a.store)?.unbind_gateway(&device, &gateway).await? {
                bail!("{device} is not bound to {gateway}");
            }
            println!("{device} may no longer attach through {gateway}");
        }
        SubscriberCmd::Audit {
            imsi: subject,
            limit,
            after,
            store,
        } => {
            let subject = subject.as_deref().map(imsi).transpose()?;
            let store = open(&store)?;
            let recs = read_audit(&store, subject.as_ref(), after, limit).await?;
            if recs.is_empty() {
                println!("no audit records");
            } else {
                println!(
                    "{:>6}  {:<20}  {:<20}  {:<15}  {:<15}  DETAIL",
                    "ID", "TIME", "EVENT", "SUBJECT", "GATEWAY"
                );
                for (id, r) in &recs {
                    println!("{}", audit_line(*id, r));
                }
            }
        }
    }
    Ok(())
}

/// Clear messages for the two IMSIs of a binding (the store re-checks atomically).
async fn check_pair(store: &SqliteStore, device: &Imsi, gateway: &Imsi) -> Result<()> {
    match store.get(device).await?.map(|s| s.kind) {
        None => bail!("no subscriber {device}"),
        Some(SubscriberKind::Gateway) => {
            bail!("{device} is a gateway; only devices are bound to gateways")
        }
        Some(SubscriberKind::Device) => {}
    }
    match store.get(gateway).await?.map(|s| s.kind) {
        None => bail!("no subscriber {gateway}"),
        Some(SubscriberKind::Device) => bail!("{gateway} is a device, not a gateway"),
        Some(SubscriberKind::Gateway) => {}
    }
    Ok(())
}

async fn count_devices(store: &SqliteStore, gateway: &Imsi) -> Result<usize> {
    const PAGE: usize = 1000;
    let mut n = 0;
    let mut after: Option<Imsi> = None;
    loop {
        let page = store.devices_of(gateway, after.as_ref(), PAGE).await?;
        n += page.len();
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.clone()),
            _ => return Ok(n),
        }
    }
}

/// The first `limit` records after `after`, or (without `after`) the most recent `limit`.
async fn read_audit(
    store: &SqliteStore,
    subject: Option<&Imsi>,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, AuditRecord)>> {
    if let Some(after) = after {
        return Ok(store.audit_log(subject, after, limit).await?);
    }
    const PAGE: usize = 1000;
    let mut last = VecDeque::with_capacity(limit.min(PAGE));
    let mut after = 0;
    loop {
        let page = store.audit_log(subject, after, PAGE).await?;
        let full = page.len() == PAGE;
        for (id, r) in page {
            after = id;
            if limit > 0 {
                if last.len() == limit {
                    last.pop_front();
                }
                last.push_back((id, r));
            }
        }
        if !full {
            return Ok(last.into());
        }
    }
}

fn audit_line(id: u64, r: &AuditRecord) -> String {
    format!(
        "{:>6}  {:<20}  {:<20}  {:<15}  {:<15}  {}",
        id,
        iso8601_utc(r.unix_time),
        r.event.as_str(),
        r.subject.as_str(),
        r.gateway.as_ref().map_or("-", Imsi::as_str),
        printable(&r.detail)
    )
}

/// Control characters escaped, so one record stays one line.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ` (ISO 8601, UTC) of a Unix time; proleptic Gregorian calendar.
fn iso8601_utc(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Days since 1970-01-01 to a civil date (H. Hinnant, "chrono-compatible low-level date
    // algorithms", civil_from_days), in unsigned arithmetic shifted to 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Every binding of the CSV names a gateway of the file or of the store (with the line).
async fn check_csv_bindings(store: &SqliteStore, csv: &CsvImport) -> Result<()> {
    let kinds: HashMap<&Imsi, SubscriberKind> =
        csv.subs.iter().map(|s| (&s.imsi, s.kind)).collect();
    for (line, _, gateway) in &csv.bindings {
        let kind = match kinds.get(gateway) {
            Some(k) => Some(*k),
            None => store.get(gateway).await?.map(|s| s.kind),
        };
        match kind {
            None => bail!("line {line}: gateway {gateway} is neither in the file nor in the store"),
            Some(SubscriberKind::Device) => {
                bail!("line {line}: {gateway} is a device, not a gateway")
            }
            Some(SubscriberKind::Gateway) => {}
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

/// A parsed CSV file (Debug shows no secrets: NewSubscriber redacts them).
#[derive(Debug)]
struct CsvImport {
    subs: Vec<NewSubscriber>,
    /// `(line, device, gateway)` from the `gateways` column.
    bindings: Vec<(usize, Imsi, Imsi)>,
}

/// Reads the CSV, reporting the line of the first bad row.
fn read_csv(path: &Path) -> Result<CsvImport> {
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
            "imsi", "k", "opc", "op", "amf", "sqn", "kind", "status", "ind_len", "gateways",
        ]
        .iter()
        .any(|k| h.eq_ignore_ascii_case(k))
        {
            bail!("unknown CSV column {h:?}");
        }
    }
    let (opc_c, op_c, amf_c, sqn_c, kind_c, status_c, ind_c, gws_c) = (
        col("opc"),
        col("op"),
        col("amf"),
        col("sqn"),
        col("kind"),
        col("status"),
        col("ind_len"),
        col("gateways"),
    );
    let mut out = Vec::new();
    let mut bindings = Vec::new();
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
        for gw in get(gws_c)
            .split(';')
            .map(str::trim)
            .filter(|g| !g.is_empty())
        {
            if sub.kind != SubscriberKind::Device {
                bail!("line {line}: only devices have gateways");
            }
            let gw = Imsi::new(gw).with_context(|| format!("line {line}: gateway {gw:?}"))?;
            bindings.push((line, sub.imsi.clone(), gw));
        }
        out.push(sub);
    }
    Ok(CsvImport {
        subs: out,
        bindings,
    })
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
        let csv = read_csv(&p).unwrap();
        assert!(csv.bindings.is_empty());
        let subs = csv.subs;
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

    const K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
    const OPC: &str = "cd63cb71954a9f4e48a5994e37a02baf";

    #[test]
    fn csv_gateways_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        std::fs::write(
            &p,
            format!(
                "imsi,k,opc,kind,gateways\n\
                 001010000000001,{K},{OPC},device, 001010000000009 ;001010000000008;\n\
                 001010000000002,{K},{OPC},,\n\
                 001010000000009,{K},{OPC},gateway,\n"
            ),
        )
        .unwrap();
        let csv = read_csv(&p).unwrap();
        assert_eq!(csv.subs.len(), 3);
        let b: Vec<_> = csv
            .bindings
            .iter()
            .map(|(l, d, g)| (*l, d.as_str(), g.as_str()))
            .collect();
        assert_eq!(
            b,
            vec![
                (2, "001010000000001", "001010000000009"),
                (2, "001010000000001", "001010000000008"),
            ]
        );
        std::fs::write(
            &p,
            format!("imsi,k,opc,gateways\n001010000000001,{K},{OPC},12x\n"),
        )
        .unwrap();
        let err = format!("{:#}", read_csv(&p).err().unwrap());
        assert!(err.contains("line 2") && err.contains("gateway"), "{err}");
        std::fs::write(
            &p,
            format!(
                "imsi,k,opc,kind,gateways\n001010000000001,{K},{OPC},gateway,001010000000009\n"
            ),
        )
        .unwrap();
        let err = format!("{:#}", read_csv(&p).err().unwrap());
        assert!(err.contains("only devices"), "{err}");
    }

    #[test]
    fn iso8601_dates() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(iso8601_utc(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(iso8601_utc(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(i64::MAX as u64), "292277026596-12-04T15:30:07Z");
    }

    #[test]
    fn audit_detail_stays_on_one_line() {
        assert_eq!(printable("a\nb\tc ✓"), "a\\nb\\tc ✓");
    }
}
