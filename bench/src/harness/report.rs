//! The harness's report: one JSON document and a markdown summary.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::scenario::{Measurement, OverloadMeasurement, Placement};
use crate::{HarnessError, ImplResult, Plan};

/// The machine around the run: a shared machine's load skews every figure,
/// so the report carries it.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    pub utc: String,
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub loadavg: String,
}

impl Host {
    pub fn read() -> Host {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        Host {
            utc: utc_stamp(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            loadavg: read("/proc/loadavg").trim().to_owned(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub name: String,
    pub command: String,
    pub host_before: Host,
    pub host_after: Host,
    pub placement: Placement,
    pub plan: Plan,
    pub implementations: Vec<ImplResult>,
    /// `limpet-bench` JSON lines: the in-memory pipeline, no I/O.
    pub pipeline: Vec<serde_json::Value>,
}

/// `YYYY-MM-DDTHHMMZ`, UTC, from the system clock (no calendar crate for
/// one file name).
pub fn utc_stamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}{:02}Z",
        rem / 3_600,
        (rem % 3_600) / 60
    )
}

fn pps(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} Mpps", x / 1e6)
    } else {
        format!("{:.0} kpps", x / 1e3)
    }
}

fn rate(x: Option<f64>) -> String {
    x.map_or_else(|| "flat out".to_owned(), pps)
}

fn us(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_owned(), |v| format!("{:.0}", v as f64 / 1e3))
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

/// Every run's cost, `a / b / c`.
fn runs(m: &Measurement) -> String {
    if m.cost_ns_per_packet_runs.len() < 2 {
        return "-".to_owned();
    }
    m.cost_ns_per_packet_runs
        .iter()
        .map(|c| format!("{c:.0}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// One line for the progress log.
pub fn brief(m: &Measurement) -> String {
    format!(
        "offered {} ({} sent), delivered {} ({:.2}% loss), sticky {} of {} clients, cost {:.0} ns/packet, p99 {} us",
        rate(m.offered_target_pps),
        m.sent,
        pps(m.delivered_pps),
        m.loss * 100.0,
        pct(m.sticky_share),
        m.clients_seen,
        m.cost_ns_per_packet,
        us(m.latency_p99_ns)
    )
}

/// The flat-out load step.
/// The most a configuration forwarded in its overload steps with the
/// receive work where `on_lb` says, and its step at the highest offered
/// load.
fn overload_top<'a>(
    r: &'a ImplResult,
    variant: &str,
    on_lb: bool,
) -> Option<(f64, &'a OverloadMeasurement)> {
    let steps: Vec<&OverloadMeasurement> = r
        .overload
        .iter()
        .filter(|m| m.variant == variant && m.receive_on_lb_cpu == on_lb)
        .collect();
    let max = steps.iter().map(|m| m.forwarded_pps).fold(0.0, f64::max);
    let last = steps
        .into_iter()
        .max_by(|a, b| a.offered_pps.total_cmp(&b.offered_pps))?;
    Some((max, last))
}

/// Overload, per configuration and receive-work placement: the most
/// the configuration forwarded at any offered load is its maximum; at
/// the highest offered load (the goal wants at least twice that
/// maximum) it must still forward 90% of it, and at least what
/// nftables forwards there.
fn overload_goals(s: &mut String, name: &str, limpet: &ImplResult, nft: &ImplResult) {
    let top = overload_top;
    let mut variants: Vec<&str> = limpet.overload.iter().map(|m| m.variant.as_str()).collect();
    variants.dedup();
    for variant in variants {
        for on_lb in [true, false] {
            let Some((max, last)) = top(limpet, variant, on_lb) else {
                continue;
            };
            if max <= 0.0 {
                continue;
            }
            let times = last.offered_pps / max;
            let kept = last.forwarded_pps / max;
            let verdict = if times < 2.0 {
                format!("offered only {times:.1}x its maximum: not judged")
            } else if kept >= 0.9 {
                "met".to_owned()
            } else {
                "not met".to_owned()
            };
            let vs_nft = top(nft, "", on_lb).map_or_else(String::new, |(_, n)| {
                format!(
                    "; nftables there {} (goal at least as much: {})",
                    pps(n.forwarded_pps),
                    if last.forwarded_pps >= n.forwarded_pps {
                        "met"
                    } else {
                        "not met"
                    }
                )
            });
            let _ = writeln!(
                s,
                "- Overload, {name} `{variant}`, receive work {}: at most {} forwarded; offered {} ({times:.1}x that) it forwarded {} = {:.0}% of its maximum (goal at least 90% at 2x: {verdict}){vs_nft}.",
                if on_lb {
                    "on the LB CPU"
                } else {
                    "on the other CPU"
                },
                pps(max),
                pps(last.offered_pps),
                pps(last.forwarded_pps),
                kept * 100.0
            );
        }
    }
}

fn flat_out(r: &ImplResult) -> Option<&Measurement> {
    r.load.iter().find(|m| m.offered_target_pps.is_none())
}

impl Report {
    fn find(&self, name: &str) -> Option<&ImplResult> {
        self.implementations
            .iter()
            .find(|r| r.name == name && r.error.is_none())
    }

    /// The goals, checked against this run's figures.
    fn goals(&self, s: &mut String) {
        let Some(nft) = self.find("nftables") else {
            return;
        };
        let limpets: Vec<(&str, &ImplResult)> = ["limpet", "limpet-afxdp"]
            .into_iter()
            .filter_map(|name| Some((name, self.find(name)?)))
            .collect();
        if limpets.is_empty() {
            return;
        }
        let _ = writeln!(s, "## Goals\n");
        for (name, limpet) in limpets {
            self.goals_of(s, name, limpet, nft);
        }
        self.sticky_goals(s);
    }

    fn goals_of(&self, s: &mut String, name: &str, limpet: &ImplResult, nft: &ImplResult) {
        let pairs = [
            (
                "at the reference load",
                self.reference(limpet),
                self.reference(nft),
            ),
            ("flat out", flat_out(limpet), flat_out(nft)),
        ];
        for (when, l, n) in pairs {
            if let (Some(l), Some(n)) = (l, n)
                && n.cost_ns_per_packet > 0.0
            {
                let ratio = l.cost_ns_per_packet / n.cost_ns_per_packet;
                let with_rx = (l.cost_ns_per_packet
                    + l.cpu_softirq_ns_per_packet
                    + l.cpu_system_ns_per_packet)
                    / n.cost_ns_per_packet;
                let _ = writeln!(
                    s,
                    "- CPU per forwarded packet {when}: {name} {:.0} ns, nftables peer {:.0} ns: \
                     ratio {ratio:.2} (goal at most 0.50: {}); with all kernel time of the LB CPU \
                     while {name} runs added (softirq + system: its receive path and system calls), \
                     {with_rx:.2} (goal at most 0.50: {}).",
                    l.cost_ns_per_packet,
                    n.cost_ns_per_packet,
                    if ratio <= 0.5 { "met" } else { "not met" },
                    if with_rx <= 0.5 { "met" } else { "not met" }
                );
            }
        }
        let biggest = |r: &ImplResult| r.sticky.iter().max_by_key(|m| m.clients).cloned();
        overload_goals(s, name, limpet, nft);
        if let Some(m) = biggest(limpet) {
            let _ = writeln!(
                s,
                "- {name} kept {} of {} clients sticky ({}) (goal 100%: {}).",
                m.clients_seen - m.clients_multi_backend,
                m.clients_seen,
                pct(m.sticky_share),
                if m.clients_multi_backend == 0 {
                    "met"
                } else {
                    "not met"
                }
            );
        }
    }

    /// The kernel peers' stickiness, beside limpet's.
    fn sticky_goals(&self, s: &mut String) {
        if let Some(ipt) = self.find("iptables") {
            for m in &ipt.sticky {
                let _ = writeln!(
                    s,
                    "- iptables (xt_recent, 100 addresses per endpoint list) at {} clients: {} of {} clients reached several backends ({} sticky).",
                    m.clients,
                    m.clients_multi_backend,
                    m.clients_seen,
                    pct(m.sticky_share)
                );
            }
        }
        s.push('\n');
    }

    pub fn write(&self, dir: &Path) -> Result<(), HarnessError> {
        let json = dir.join(format!("{}.json", self.name));
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| HarnessError::Parse("report".into(), e.to_string()))?;
        std::fs::write(&json, text + "\n").map_err(|e| HarnessError::Io(json, e))?;
        let md = dir.join(format!("{}.md", self.name));
        std::fs::write(&md, self.markdown()).map_err(|e| HarnessError::Io(md, e))
    }

    /// The load step at the reference offered load, or the closest.
    fn reference<'a>(&self, r: &'a ImplResult) -> Option<&'a Measurement> {
        r.load
            .iter()
            .filter(|m| m.offered_target_pps.is_some())
            .min_by(|a, b| {
                let d = |m: &Measurement| {
                    (m.offered_target_pps.unwrap_or(0.0) - self.plan.reference_rate).abs()
                };
                d(a).total_cmp(&d(b))
            })
    }

    #[allow(clippy::too_many_lines)]
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let p = &self.plan;
        let _ = writeln!(
            s,
            "# limpet beside kube-proxy's kernel dataplanes: {}\n",
            self.name
        );
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        let h = &self.host_before;
        let _ = writeln!(
            s,
            "Host: {} ({} CPUs), kernel {}; load average before `{}`, after `{}`. \
             Generator, sinks, bridge and backends on cpu{}; the load balancer on cpu{} \
             (limpet's worker and the floor pinned there, the kernel peers' receive work steered there by RPS). \
             UDP, {}-byte frames, {} backends, ClientIP affinity (10800 s), `nat` forwarding.\n",
            h.cpu,
            h.cpus,
            h.kernel,
            h.loadavg,
            self.host_after.loadavg,
            self.placement.generator_cpu,
            self.placement.lb_cpu,
            p.size,
            p.backends,
        );
        let _ = writeln!(
            s,
            "CPU per forwarded packet: for the kernel peers, softirq + system time of the LB CPU \
             (`/proc/stat`) over packets delivered to the backends; for limpet and the floor, their own \
             busy-time accounting (time in polls that received packets, over packets received; \
             limpet's `limpet_busy_ns_total` / `limpet_rx_packets_total`), with the kernel's softirq \
             time for their AF_PACKET receive shown beside it. `/proc/stat` figures are the kernel's tick \
             sampling (no IRQ time accounting on this kernel; a `SCHED_IDLE` busy loop keeps the measured CPU's \
             tick running so that softirq work done from the idle loop is sampled too), less the CPU's \
             background over a quiet second before each step; on a shared machine they move by tens of percent from run to run, most at low \
             rates, where each packet carries a share of the background and of the per-interrupt cost. \
             Latencies include the sinks' TPACKET_V3 block retirement (up to 1 ms) for every implementation, \
             and limpet's and the floor's own receive ring likewise.\n"
        );
        let _ = writeln!(s, "## Summary\n");
        let mut header = format!(
            "| implementation | max forwarded | CPU ns/packet at {} | + kernel softirq | CPU ns/packet flat out | packets/burst | p50 / p99 us at {} |",
            pps(p.reference_rate),
            pps(p.reference_rate)
        );
        for c in &p.sticky_clients {
            let _ = write!(header, " sticky, {c} clients |");
        }
        header.push_str(" new connections/s |");
        let _ = writeln!(s, "{header}");
        let cols = header.matches('|').count() - 1;
        let _ = writeln!(s, "{}", "|---".repeat(cols) + "|");
        for r in &self.implementations {
            if let Some(e) = &r.error {
                let _ = writeln!(
                    s,
                    "| {} | failed: {} |",
                    r.name,
                    e.lines().next().unwrap_or("")
                );
                continue;
            }
            let max = r.load.iter().map(|m| m.delivered_pps).fold(0.0, f64::max);
            let reference = self.reference(r);
            let mut row = format!("| {} | {} |", r.name, pps(max));
            match reference {
                Some(m) => {
                    let _ = write!(
                        row,
                        " {:.0} | {} | {} | {} | {} / {} |",
                        m.cost_ns_per_packet,
                        if r.name.starts_with("limpet") || r.name == "floor" {
                            format!("{:.0}", m.cpu_softirq_ns_per_packet)
                        } else {
                            "-".to_owned()
                        },
                        flat_out(r).map_or_else(
                            || "-".to_owned(),
                            |f| format!("{:.0}", f.cost_ns_per_packet)
                        ),
                        m.packets_per_burst
                            .map_or_else(|| "-".to_owned(), |b| format!("{b:.1}")),
                        us(m.latency_p50_ns),
                        us(m.latency_p99_ns)
                    );
                }
                None => row.push_str(" - | - | - | - | - |"),
            }
            for m in &r.sticky {
                let _ = write!(row, " {} |", pct(m.sticky_share));
            }
            let best = r
                .new_connections
                .iter()
                .map(|m| m.delivered_pps)
                .fold(0.0, f64::max);
            let _ = write!(row, " {} |", pps(best).replace("pps", "/s"));
            let _ = writeln!(s, "{row}");
        }
        let _ = writeln!(
            s,
            "\n(The floor forwards by MAC rewrite with a fixed client-to-backend map, so its stickiness is \
             by construction; it marks the I/O's own limit. xt_recent keeps 100 addresses per endpoint \
             list (module default `ip_list_tot`), kube-proxy's nftables sets hold 65535.)\n"
        );
        self.goals(&mut s);
        let _ = writeln!(s, "## Load: {} clients, one flow each\n", p.load_clients);
        let _ = writeln!(
            s,
            "| implementation | offered (target) | offered | delivered | loss | CPU ns/packet (median) | all runs | softirq | system | p50 us | p99 us |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &self.implementations {
            for m in &r.load {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.2}% | {:.0} | {} | {:.0} | {:.0} | {} | {} |",
                    r.name,
                    rate(m.offered_target_pps),
                    pps(m.offered_pps),
                    pps(m.delivered_pps),
                    m.loss * 100.0,
                    m.cost_ns_per_packet,
                    runs(m),
                    m.cpu_softirq_ns_per_packet,
                    m.cpu_system_ns_per_packet,
                    us(m.latency_p50_ns),
                    us(m.latency_p99_ns)
                );
            }
        }
        let _ = writeln!(
            s,
            "\n## Stickiness: {} connections per client, fresh state per step, offered {}\n",
            p.sticky_flows_per_client,
            pps(p.sticky_rate)
        );
        let _ = writeln!(
            s,
            "| implementation | clients | packets sent | delivered | clients seen | on several backends | sticky |\n|---|---|---|---|---|---|---|"
        );
        for r in &self.implementations {
            for m in &r.sticky {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    r.name,
                    m.clients,
                    m.sent,
                    m.delivered,
                    m.clients_seen,
                    m.clients_multi_backend,
                    pct(m.sticky_share)
                );
            }
        }
        let _ = writeln!(
            s,
            "\n## New connections: every packet a new connection, {} clients\n",
            p.new_conn_clients
        );
        let _ = writeln!(
            s,
            "| implementation | offered (target) | offered | new connections delivered | loss | CPU ns/connection (median) | all runs |\n|---|---|---|---|---|---|---|"
        );
        for r in &self.implementations {
            for m in &r.new_connections {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {}/s | {:.2}% | {:.0} | {} |",
                    r.name,
                    rate(m.offered_target_pps),
                    pps(m.offered_pps),
                    pps(m.delivered_pps).trim_end_matches("pps").trim_end(),
                    m.loss * 100.0,
                    m.cost_ns_per_packet,
                    runs(m)
                );
            }
        }
        if self.implementations.iter().any(|r| !r.overload.is_empty()) {
            let _ = writeln!(
                s,
                "\n## Overload: pktgen over DPDK `net_af_xdp` on sw-lb, straight into lb0, {} clients\n\n\
                 Forwarded = lb0's TX packets (DPDK's program on sw-lb takes them, so the backends do no work). \
                 Receive work: where lb0's RPS sends it.\n\n\
                 | implementation | configuration | receive work | offered (target) | offered | forwarded | all runs |\n|---|---|---|---|---|---|---|",
                p.load_clients
            );
            for r in &self.implementations {
                for m in &r.overload {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} |",
                        r.name,
                        if m.variant.is_empty() {
                            "-"
                        } else {
                            &m.variant
                        },
                        if m.receive_on_lb_cpu {
                            "LB CPU"
                        } else {
                            "other CPU"
                        },
                        rate(m.offered_target_pps),
                        pps(m.offered_pps),
                        pps(m.forwarded_pps),
                        m.forwarded_pps_runs
                            .iter()
                            .map(|x| format!("{:.0}", x / 1e3))
                            .collect::<Vec<_>>()
                            .join(" / ")
                    );
                }
            }
        }
        if !self.pipeline.is_empty() {
            let _ = writeln!(
                s,
                "\n## limpet's in-memory pipeline (`limpet-bench`, one worker, no I/O)\n\n| scenario | Mpps | ns/packet | floor ns/packet |\n|---|---|---|---|"
            );
            for v in &self.pipeline {
                let f = |k: &str| {
                    v[k].as_f64()
                        .map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"))
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    v["scenario"].as_str().unwrap_or("?"),
                    f("mpps"),
                    f("ns_per_packet"),
                    f("floor_ns_per_packet")
                );
            }
        }
        let _ = writeln!(
            s,
            "\nPlots: `{0}-load.svg` (forwarded vs offered), `{0}-cpu.svg` (CPU per packet vs offered), \
             `{0}-sticky.svg` (sticky share vs clients), `{0}-latency.svg` (p99 vs offered).",
            self.name
        );
        s
    }
}
