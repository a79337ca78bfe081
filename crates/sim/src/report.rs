//! Output of [`SimReport`]s: JSON, CSV, a terminal table and a self-contained HTML report
//! with hand-written inline SVG charts (no plotting dependency).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::{AttachTimes, InterfaceStats, SimReport};

fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

fn iface(s: &InterfaceStats) -> Value {
    json!({ "messages": s.messages, "bytes": s.bytes, "round_trips": s.round_trips })
}

fn times(t: &AttachTimes) -> Value {
    json!({ "p50": ms(t.p50), "p99": ms(t.p99), "max": ms(t.max) })
}

fn per(v: u64, n: u64) -> Option<f64> {
    (n > 0).then(|| v as f64 / n as f64)
}

impl SimReport {
    /// Gateway-link bytes (both directions) of the measured phase per device.
    pub fn link_bytes_per_device(&self) -> Option<f64> {
        per(self.gateway_link.bytes.unwrap_or(0), self.devices)
    }

    /// The payload floor of the measured phase per device.
    pub fn floor_per_device(&self) -> Option<f64> {
        per(self.floor.total(), self.devices)
    }

    /// The report as JSON (times in milliseconds of simulated time; `wall_clock_ms` and
    /// `auths_per_wall_second` only when [`SimReport::wall_clock`] is set).
    pub fn to_json(&self) -> Value {
        let up = self.uplinks_delivered;
        let mut v = json!({
            "mode": self.mode.name(),
            "scenario": self.scenario.name(),
            "link": self.link,
            "gateways": self.gateways,
            "devices": self.devices,
            "seed": self.seed,
            "completed": self.completed,
            "authenticated": self.authenticated,
            "total_authentications": self.total_authentications,
            "failures": self.failures,
            "refused_devices": self.refused_devices,
            "refused": self.refused,
            "uplinks": {
                "sent": self.uplinks_sent,
                "acked": self.uplinks_acked,
                "failed": self.uplinks_failed,
                "delivered": self.uplinks_delivered,
                "latency_ms": times(&self.uplink_latency),
            },
            "per_uplink": {
                "capillary_msgs": per(self.capillary.messages, up),
                "capillary_bytes": per(self.capillary.bytes.unwrap_or(0), up),
                "gateway_msgs": per(self.gateway_link.messages, up),
                "gateway_bytes": per(self.gateway_link.bytes.unwrap_or(0), up),
                "store_requests": per(self.store.messages, up),
            },
            "capillary_link": iface(&self.capillary),
            "capillary_lost": self.capillary_lost,
            "gateway_link": iface(&self.gateway_link),
            "link_exchanges": self.link_exchanges,
            "link_retransmissions": self.link_retransmissions,
            "link_lost": self.link_lost,
            "store": iface(&self.store),
            "floor": {
                "eap_bytes": self.floor.eap,
                "oscore_bytes": self.floor.oscore,
                "per_device": self.floor_per_device(),
                "gateway_bytes_per_device": self.link_bytes_per_device(),
                "ratio": self.floor_ratio(),
            },
            "attach_ms": times(&self.attach),
            "attach_all_ms": ms(self.attach_all),
            "recovery_ms": self.recovery.as_ref().map(times),
            "duration_ms": ms(self.duration),
            "network_dropped": self.network_dropped,
        });
        if let (Some(w), Value::Object(m)) = (self.wall_clock, &mut v) {
            m.insert("wall_clock_ms".into(), json!(ms(w)));
            m.insert(
                "auths_per_wall_second".into(),
                json!(self.auths_per_wall_second()),
            );
        }
        v
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
pub const CSV_HEADER: &str = "mode,scenario,link,gateways,devices,seed,completed,authenticated,\
failures,refused,cap_msgs,cap_bytes,cap_round_trips,cap_lost,link_msgs,link_bytes,\
link_round_trips,link_exchanges,link_retransmissions,link_lost,store_msgs,store_round_trips,\
floor_eap_bytes,floor_oscore_bytes,link_bytes_per_device,floor_per_device,floor_ratio,\
uplinks_sent,uplinks_delivered,uplink_p50_ms,uplink_p99_ms,\
attach_p50_ms,attach_p99_ms,attach_max_ms,attach_all_ms,\
recovery_p50_ms,recovery_p99_ms,recovery_max_ms,duration_ms,wall_clock_ms,auths_per_wall_s";

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or(String::new(), |v| format!("{v:.prec$}"))
}

/// The reports as CSV (with header).
pub fn to_csv(reports: &[SimReport]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in reports {
        let rec = r.recovery.as_ref();
        let cells: Vec<String> = vec![
            r.mode.name().into(),
            r.scenario.name().into(),
            r.link.clone(),
            r.gateways.to_string(),
            r.devices.to_string(),
            r.seed.to_string(),
            r.completed.to_string(),
            r.authenticated.to_string(),
            r.failures.to_string(),
            r.refused.to_string(),
            r.capillary.messages.to_string(),
            r.capillary.bytes.unwrap_or(0).to_string(),
            r.capillary.round_trips.to_string(),
            r.capillary_lost.to_string(),
            r.gateway_link.messages.to_string(),
            r.gateway_link.bytes.unwrap_or(0).to_string(),
            r.gateway_link.round_trips.to_string(),
            r.link_exchanges.to_string(),
            r.link_retransmissions.to_string(),
            r.link_lost.to_string(),
            r.store.messages.to_string(),
            r.store.round_trips.to_string(),
            r.floor.eap.to_string(),
            r.floor.oscore.to_string(),
            opt(r.link_bytes_per_device(), 1),
            opt(r.floor_per_device(), 1),
            opt(r.floor_ratio(), 3),
            r.uplinks_sent.to_string(),
            r.uplinks_delivered.to_string(),
            format!("{:.3}", ms(r.uplink_latency.p50)),
            format!("{:.3}", ms(r.uplink_latency.p99)),
            format!("{:.3}", ms(r.attach.p50)),
            format!("{:.3}", ms(r.attach.p99)),
            format!("{:.3}", ms(r.attach.max)),
            format!("{:.3}", ms(r.attach_all)),
            opt(rec.map(|t| ms(t.p50)), 3),
            opt(rec.map(|t| ms(t.p99)), 3),
            opt(rec.map(|t| ms(t.max)), 3),
            format!("{:.3}", ms(r.duration)),
            opt(r.wall_clock.map(ms), 1),
            opt(r.auths_per_wall_second(), 0),
        ];
        s.push_str(&cells.join(","));
        s.push('\n');
    }
    s
}

/// A fixed-width terminal table.
pub fn to_table(reports: &[SimReport]) -> String {
    let head = [
        "mode",
        "scenario",
        "link",
        "N",
        "ok",
        "cap msgs",
        "cap RT",
        "gw msgs",
        "gw bytes",
        "B/dev",
        "floor/dev",
        "ratio",
        "gw RT",
        "gw exch",
        "store RT",
        "p50 ms",
        "p99 ms",
        "max ms",
        "recov max ms",
        "up p50 ms",
        "up p99 ms",
        "wall s",
        "auths/s",
    ];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.mode.name().to_string(),
                r.scenario.name().to_string(),
                r.link.clone(),
                r.devices.to_string(),
                if r.completed { "yes" } else { "NO" }.to_string(),
                r.capillary.messages.to_string(),
                r.capillary.round_trips.to_string(),
                r.gateway_link.messages.to_string(),
                r.gateway_link.bytes.unwrap_or(0).to_string(),
                opt(r.link_bytes_per_device(), 0),
                opt(r.floor_per_device(), 0),
                opt(r.floor_ratio(), 2),
                r.gateway_link.round_trips.to_string(),
                r.link_exchanges.to_string(),
                r.store.round_trips.to_string(),
                format!("{:.1}", ms(r.attach.p50)),
                format!("{:.1}", ms(r.attach.p99)),
                format!("{:.1}", ms(r.attach.max)),
                opt(r.recovery.map(|t| ms(t.max)), 1),
                format!("{:.1}", ms(r.uplink_latency.p50)),
                format!("{:.1}", ms(r.uplink_latency.p99)),
                opt(r.wall_clock.map(|w| w.as_secs_f64()), 2),
                opt(r.auths_per_wall_second(), 0),
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
            if i < 3 {
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

/// Chart frame shared by [`bar_chart`] and [`line_chart`]: size, origin of the axes and
/// plot area.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 300.0;
const X0: f64 = 60.0;
const Y0: f64 = 260.0;
const PLOT_W: f64 = 480.0;
const PLOT_H: f64 = 220.0;

/// The opening of a chart: the SVG element, its title and the y axis scaled to the largest
/// value of `series`. Returns the SVG so far and the axis maximum.
fn chart_open(title: &str, series: &[Series], log: bool) -> (String, f64) {
    let vmax = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .fold(0.0, f64::max);
    let max = if log {
        nice_max(vmax.max(10.0))
    } else {
        nice_max(vmax)
    };
    let (wd, ht, x0) = (WIDTH, HEIGHT, X0);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{wd}" height="{ht}" viewBox="0 0 {wd} {ht}"><text x="{x0}" y="16" font-size="13" font-weight="bold">{}</text>"##,
        esc(title)
    );
    axis(&mut svg, X0, Y0, PLOT_H, PLOT_W, max, log);
    (svg, max)
}

/// The end of a chart: the legend, the x-axis label and the closing tag.
fn chart_close(mut svg: String, series: &[Series], log: bool) -> String {
    legend(&mut svg, series, X0 + PLOT_W + 20.0);
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">devices N{}</text></svg>"##,
        X0 + PLOT_W / 2.0,
        Y0 + 32.0,
        if log { " (log scale)" } else { "" }
    );
    svg
}

/// A grouped bar chart: one group per category, one bar per series.
pub fn bar_chart(title: &str, categories: &[String], series: &[Series], log: bool) -> String {
    let (x0, y0, plot_w, plot_h) = (X0, Y0, PLOT_W, PLOT_H);
    let (mut svg, max) = chart_open(title, series, log);
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
    chart_close(svg, series, log)
}

/// A line chart: categories evenly spaced on x, one line per series.
pub fn line_chart(title: &str, categories: &[String], series: &[Series], log: bool) -> String {
    let (x0, y0, plot_w, plot_h) = (X0, Y0, PLOT_W, PLOT_H);
    let (mut svg, max) = chart_open(title, series, log);
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
    chart_close(svg, series, log)
}

/// Series of `metric` per (mode, link, and scenario when several), over the device counts
/// of `reports`.
fn series_of(
    reports: &[SimReport],
    cats: &[u64],
    metric: impl Fn(&SimReport) -> Option<f64>,
) -> Vec<Series> {
    let mut keys: Vec<(&str, &str, &str)> = Vec::new();
    for r in reports {
        let k = (r.mode.name(), r.scenario.name(), r.link.as_str());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let several = reports.iter().any(|r| r.scenario != reports[0].scenario);
    keys.into_iter()
        .map(|(mode, scenario, link)| {
            let vals = cats
                .iter()
                .map(|n| {
                    reports
                        .iter()
                        .find(|r| {
                            r.mode.name() == mode
                                && r.scenario.name() == scenario
                                && r.link == link
                                && r.devices == *n
                        })
                        .and_then(&metric)
                })
                .collect();
            let name = if several {
                format!("{mode} / {link} / {scenario}")
            } else {
                format!("{mode} / {link}")
            };
            (name, vals)
        })
        .collect()
}

/// What the floor is, for the HTML report (same text as docs/PERFORMANCE.md).
pub const FLOOR_DEFINITION: &str = "Payload floor per device: the bytes that must cross the \
gateway link whatever the relay does, computed from the device datagrams on the capillary \
link (both directions, each CoAP message once, retransmissions not counted again): for a \
message without an OSCORE option, the EAP packet at the start of its payload (its EAP length \
field, without the CoAP-EAP CBOR information that follows), except the EAP-Request/Identity \
the gateway may send itself (PROTOCOL.md §5); for a message with an OSCORE option, the option \
value plus the payload (ciphertext with its 8-byte tag). Ratio = gateway-link UDP payload \
bytes of the phase, both directions, / that floor (target: at most 1.15).";

/// A self-contained HTML report comparing the modes over the device counts, with the
/// table and inline SVG charts. `assumptions` is shown as a list (link models etc.).
pub fn to_html(reports: &[SimReport], assumptions: &[String]) -> String {
    let mut cats: Vec<u64> = reports.iter().map(|r| r.devices).collect();
    cats.sort_unstable();
    cats.dedup();
    let labels: Vec<String> = cats.iter().map(u64::to_string).collect();
    let mut charts = vec![
        bar_chart(
            "Gateway-link round trips",
            &labels,
            &series_of(reports, &cats, |r| Some(r.gateway_link.round_trips as f64)),
            true,
        ),
        bar_chart(
            "Gateway-link messages",
            &labels,
            &series_of(reports, &cats, |r| Some(r.gateway_link.messages as f64)),
            true,
        ),
        bar_chart(
            "Store round trips",
            &labels,
            &series_of(reports, &cats, |r| Some(r.store.round_trips as f64)),
            true,
        ),
        line_chart(
            "Gateway-link bytes per device / payload floor per device",
            &labels,
            &series_of(reports, &cats, SimReport::floor_ratio),
            false,
        ),
        line_chart(
            "Time to attach all devices (ms, max)",
            &labels,
            &series_of(reports, &cats, |r| Some(ms(r.attach.max))),
            true,
        ),
        line_chart(
            "Time to attach, p50 (ms)",
            &labels,
            &series_of(reports, &cats, |r| Some(ms(r.attach.p50))),
            true,
        ),
    ];
    if reports.iter().any(|r| r.recovery.is_some()) {
        charts.push(line_chart(
            "Reboot: time until every device delivered again (ms)",
            &labels,
            &series_of(reports, &cats, |r| r.recovery.map(|t| ms(t.max))),
            true,
        ));
    }
    if reports.iter().any(|r| r.wall_clock.is_some()) {
        charts.push(line_chart(
            "Device authentications per second of real time (simulator, one core)",
            &labels,
            &series_of(reports, &cats, SimReport::auths_per_wall_second),
            true,
        ));
    }
    let mut h = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>capillary sim</title>\
<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;font-size:12px}\
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}td.l{text-align:left}\
svg{display:block;margin:1em 0}</style></head><body>\n<h1>capillary sim: naive vs batched vs optimised</h1>\n",
    );
    h.push_str(
        "<p>Deterministic discrete-event simulation driving the real sans-IO network \
(<code>LinkEndpoint</code>), gateway and device state machines. Times are simulated, except \
the wall-clock column.</p>\n<ul>\n",
    );
    for a in assumptions {
        let _ = writeln!(h, "<li>{}</li>", esc(a));
    }
    let _ = writeln!(h, "<li>{}</li>", esc(FLOOR_DEFINITION));
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
            let class = if i < 3 { " class=\"l\"" } else { "" };
            let _ = write!(h, "<td{class}>{}</td>", esc(cell));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n</body></html>\n");
    h
}
