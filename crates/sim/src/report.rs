//! Output of [`SimReport`]s: JSON, CSV, a terminal table and a self-contained HTML report
//! with hand-written inline SVG charts (no plotting dependency).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::{InterfaceStats, SimReport};

fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

fn iface(s: &InterfaceStats) -> Value {
    json!({ "messages": s.messages, "bytes": s.bytes, "round_trips": s.round_trips })
}

impl SimReport {
    /// The report as JSON (times in milliseconds of simulated time).
    pub fn to_json(&self) -> Value {
        json!({
            "mode": self.mode.name(),
            "link": self.link,
            "gateways": self.gateways,
            "devices": self.devices,
            "seed": self.seed,
            "completed": self.completed,
            "authenticated": self.authenticated,
            "failures": self.failures,
            "uplinks": {
                "acked": self.uplinks_acked,
                "failed": self.uplinks_failed,
                "delivered": self.uplinks_delivered,
            },
            "capillary_link": iface(&self.capillary),
            "capillary_lost": self.capillary_lost,
            "gateway_link": iface(&self.gateway_link),
            "link_exchanges": self.link_exchanges,
            "link_retransmissions": self.link_retransmissions,
            "link_lost": self.link_lost,
            "store": iface(&self.store),
            "attach_ms": {
                "p50": ms(self.attach.p50),
                "p99": ms(self.attach.p99),
                "max": ms(self.attach.max),
            },
            "attach_all_ms": ms(self.attach_all),
            "duration_ms": ms(self.duration),
            "network_dropped": self.network_dropped,
        })
    }
}

/// All reports as one JSON array.
pub fn to_json(reports: &[SimReport]) -> Value {
    Value::Array(reports.iter().map(SimReport::to_json).collect())
}

/// All reports as pretty-printed JSON text.
pub fn to_json_pretty(reports: &[SimReport]) -> String {
    let v = to_json(reports);
    serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
}

/// CSV header, one line per report.
pub const CSV_HEADER: &str = "mode,link,gateways,devices,seed,completed,authenticated,failures,\
cap_msgs,cap_bytes,cap_round_trips,cap_lost,link_msgs,link_bytes,link_round_trips,\
link_exchanges,link_retransmissions,link_lost,store_msgs,store_round_trips,\
attach_p50_ms,attach_p99_ms,attach_max_ms,attach_all_ms,duration_ms";

/// The reports as CSV (with header).
pub fn to_csv(reports: &[SimReport]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in reports {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3}",
            r.mode.name(),
            r.link,
            r.gateways,
            r.devices,
            r.seed,
            r.completed,
            r.authenticated,
            r.failures,
            r.capillary.messages,
            r.capillary.bytes.unwrap_or(0),
            r.capillary.round_trips,
            r.capillary_lost,
            r.gateway_link.messages,
            r.gateway_link.bytes.unwrap_or(0),
            r.gateway_link.round_trips,
            r.link_exchanges,
            r.link_retransmissions,
            r.link_lost,
            r.store.messages,
            r.store.round_trips,
            ms(r.attach.p50),
            ms(r.attach.p99),
            ms(r.attach.max),
            ms(r.attach_all),
            ms(r.duration),
        );
    }
    s
}

/// A fixed-width terminal table.
pub fn to_table(reports: &[SimReport]) -> String {
    let head = [
        "mode",
        "link",
        "N",
        "ok",
        "cap msgs",
        "cap bytes",
        "cap RT",
        "gw msgs",
        "gw bytes",
        "gw RT",
        "gw exch",
        "store req",
        "store RT",
        "p50 ms",
        "p99 ms",
        "max ms",
    ];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.mode.name().to_string(),
                r.link.clone(),
                r.devices.to_string(),
                if r.completed { "yes" } else { "NO" }.to_string(),
                r.capillary.messages.to_string(),
                r.capillary.bytes.unwrap_or(0).to_string(),
                r.capillary.round_trips.to_string(),
                r.gateway_link.messages.to_string(),
                r.gateway_link.bytes.unwrap_or(0).to_string(),
                r.gateway_link.round_trips.to_string(),
                r.link_exchanges.to_string(),
                r.store.messages.to_string(),
                r.store.round_trips.to_string(),
                format!("{:.1}", ms(r.attach.p50)),
                format!("{:.1}", ms(r.attach.p99)),
                format!("{:.1}", ms(r.attach.max)),
            ]
        })
        .collect();
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, cells: &[String]| {
        for (i, c) in cells.iter().enumerate() {
            if i < 2 {
                let _ = write!(s, "{:<width$}  ", c, width = w[i]);
            } else {
                let _ = write!(s, "{:>width$}  ", c, width = w[i]);
            }
        }
        let trimmed = s.trim_end().len();
        s.truncate(trimmed);
        s.push('\n');
    };
    line(&mut s, &head.map(String::from));
    line(
        &mut s,
        &w.iter().map(|n| "-".repeat(*n)).collect::<Vec<_>>(),
    );
    for row in &rows {
        line(&mut s, row);
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One series of a chart: a label and one value per category (`None`: missing).
type Series = (String, Vec<Option<f64>>);

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn axis(svg: &mut String, x0: f64, y0: f64, h: f64, wdt: f64, max: f64, log: bool) {
    for t in 0..=4 {
        let f = f64::from(t) / 4.0;
        let y = y0 - f * h;
        let v = if log {
            10f64.powf(f * max.log10())
        } else {
            f * max
        };
        let _ = write!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            x0 + wdt,
            x0 - 4.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{x0}" y1="{y0}" x2="{:.1}" y2="{y0}" stroke="#333"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{:.1}" stroke="#333"/>"##,
        x0 + wdt,
        y0 - h
    );
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn scale(v: f64, max: f64, log: bool) -> f64 {
    if log {
        if v <= 1.0 {
            0.0
        } else {
            v.log10() / max.log10()
        }
    } else {
        v / max
    }
}

fn legend(svg: &mut String, series: &[Series], x: f64) {
    for (i, (name, _)) in series.iter().enumerate() {
        let y = 30.0 + 16.0 * i as f64;
        let _ = write!(
            svg,
            r##"<rect x="{x}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            y - 9.0,
            COLORS[i % COLORS.len()],
            x + 14.0,
            y,
            esc(name)
        );
    }
}

/// A grouped bar chart: one group per category, one bar per series.
pub fn bar_chart(title: &str, categories: &[String], series: &[Series], log: bool) -> String {
    let (wd, ht, x0, y0, plot_w, plot_h) = (720.0, 300.0, 60.0, 260.0, 480.0, 220.0);
    let vmax = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .fold(0.0, f64::max);
    let max = if log {
        nice_max(vmax.max(10.0))
    } else {
        nice_max(vmax)
    };
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{wd}" height="{ht}" viewBox="0 0 {wd} {ht}"><text x="{x0}" y="16" font-size="13" font-weight="bold">{}</text>"##,
        esc(title)
    );
    axis(&mut svg, x0, y0, plot_h, plot_w, max, log);
    let group = plot_w / categories.len().max(1) as f64;
    let bw = (group * 0.8) / series.len().max(1) as f64;
    for (ci, cat) in categories.iter().enumerate() {
        let gx = x0 + group * ci as f64 + group * 0.1;
        for (si, (name, vals)) in series.iter().enumerate() {
            if let Some(Some(v)) = vals.get(ci) {
                let h = (scale(*v, max, log) * plot_h).max(if *v > 0.0 { 2.0 } else { 0.0 });
                let _ = write!(
                    svg,
                    r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} N={}: {}</title></rect>"##,
                    gx + bw * si as f64,
                    y0 - h,
                    bw.max(1.0) - 1.0,
                    h,
                    COLORS[si % COLORS.len()],
                    esc(name),
                    esc(cat),
                    fmt_num(*v)
                );
            }
        }
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            gx + group * 0.4,
            y0 + 15.0,
            esc(cat)
        );
    }
    legend(&mut svg, series, x0 + plot_w + 20.0);
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">devices N{}</text></svg>"##,
        x0 + plot_w / 2.0,
        y0 + 32.0,
        if log { " (log scale)" } else { "" }
    );
    svg
}

/// A line chart: categories evenly spaced on x, one line per series.
pub fn line_chart(title: &str, categories: &[String], series: &[Series], log: bool) -> String {
    let (wd, ht, x0, y0, plot_w, plot_h) = (720.0, 300.0, 60.0, 260.0, 480.0, 220.0);
    let vmax = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .fold(0.0, f64::max);
    let max = if log {
        nice_max(vmax.max(10.0))
    } else {
        nice_max(vmax)
    };
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{wd}" height="{ht}" viewBox="0 0 {wd} {ht}"><text x="{x0}" y="16" font-size="13" font-weight="bold">{}</text>"##,
        esc(title)
    );
    axis(&mut svg, x0, y0, plot_h, plot_w, max, log);
    let step = plot_w / categories.len().max(1) as f64;
    let x_of = |i: usize| x0 + step * (i as f64 + 0.5);
    for (i, cat) in categories.iter().enumerate() {
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            x_of(i),
            y0 + 15.0,
            esc(cat)
        );
    }
    for (si, (name, vals)) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let pts: Vec<(f64, f64, f64)> = vals
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (x_of(i), y0 - scale(v, max, log) * plot_h, v)))
            .collect();
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"##,
            path.join(" ")
        );
        for (x, y, v) in pts {
            let _ = write!(
                svg,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"><title>{}: {}</title></circle>"##,
                esc(name),
                fmt_num(v)
            );
        }
    }
    legend(&mut svg, series, x0 + plot_w + 20.0);
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">devices N{}</text></svg>"##,
        x0 + plot_w / 2.0,
        y0 + 32.0,
        if log { " (log scale)" } else { "" }
    );
    svg
}

/// Series of `metric` per (mode, link), over the device counts of `reports`.
fn series_of(
    reports: &[SimReport],
    cats: &[u64],
    metric: impl Fn(&SimReport) -> f64,
) -> Vec<Series> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in reports {
        let k = (r.mode.name().to_string(), r.link.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(mode, link)| {
            let vals = cats
                .iter()
                .map(|n| {
                    reports
                        .iter()
                        .find(|r| r.mode.name() == mode && r.link == link && r.devices == *n)
                        .map(&metric)
                })
                .collect();
            (format!("{mode} / {link}"), vals)
        })
        .collect()
}

/// A self-contained HTML report comparing the modes over the device counts, with the
/// table and inline SVG charts. `assumptions` is shown as a list (link models etc.).
pub fn to_html(reports: &[SimReport], assumptions: &[String]) -> String {
    let mut cats: Vec<u64> = reports.iter().map(|r| r.devices).collect();
    cats.sort_unstable();
    cats.dedup();
    let labels: Vec<String> = cats.iter().map(u64::to_string).collect();
    let charts = [
        bar_chart(
            "Gateway-link round trips",
            &labels,
            &series_of(reports, &cats, |r| r.gateway_link.round_trips as f64),
            true,
        ),
        bar_chart(
            "Gateway-link messages",
            &labels,
            &series_of(reports, &cats, |r| r.gateway_link.messages as f64),
            true,
        ),
        bar_chart(
            "Store round trips",
            &labels,
            &series_of(reports, &cats, |r| r.store.round_trips as f64),
            true,
        ),
        line_chart(
            "Time to attach all devices (ms, max)",
            &labels,
            &series_of(reports, &cats, |r| ms(r.attach.max)),
            true,
        ),
        line_chart(
            "Time to attach, p50 (ms)",
            &labels,
            &series_of(reports, &cats, |r| ms(r.attach.p50)),
            true,
        ),
    ];
    let mut h = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>capillary sim</title>\
<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;font-size:12px}\
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}td.l{text-align:left}\
svg{display:block;margin:1em 0}</style></head><body>\n<h1>capillary sim: batched vs naive</h1>\n",
    );
    h.push_str(
        "<p>Deterministic discrete-event simulation driving the real sans-IO network \
(<code>LinkEndpoint</code>), gateway and device state machines. Times are simulated.</p>\n<ul>\n",
    );
    for a in assumptions {
        let _ = writeln!(h, "<li>{}</li>", esc(a));
    }
    h.push_str("</ul>\n");
    for c in &charts {
        h.push_str(c);
        h.push('\n');
    }
    h.push_str("<table><tr>");
    for col in CSV_HEADER.split(',') {
        let _ = write!(h, "<th>{}</th>", esc(col));
    }
    h.push_str("</tr>\n");
    for line in to_csv(reports).lines().skip(1) {
        h.push_str("<tr>");
        for (i, cell) in line.split(',').enumerate() {
            let class = if i < 2 { " class=\"l\"" } else { "" };
            let _ = write!(h, "<td{class}>{}</td>", esc(cell));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n</body></html>\n");
    h
}
