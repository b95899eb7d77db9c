//! The receive side of the traffic generator: per-backend and per-client
//! accounting of arrivals, stickiness, and latency from payload stamps.
//!
//! A [`Sink`] is fed frames with the backend (interface) they arrived on and
//! the receive time. It keeps, for each client (source) address, how many of
//! its packets reached each backend; a client whose packets all reached one
//! backend is *sticky*. [`Sink::tally`] turns that into a [`Tally`], which is
//! what reports are made of and what merges: one sink per backend namespace
//! each write a [`SinkReport`], and [`SinkReport::merge`] recomputes
//! stickiness over their union (a client seen by two sinks is split).
//!
//! # Clock
//!
//! Stamps carry `CLOCK_REALTIME` nanoseconds since the Unix epoch
//! ([`realtime_nanos`]), not `CLOCK_MONOTONIC`: the sender and the sinks are
//! different processes (in different network namespaces, same host), and
//! `std::time::Instant` offers no absolute value to compare across
//! processes. `CLOCK_REALTIME` is system-wide; a clock step (NTP) during a
//! run would skew the latencies of that run, so samples that come out
//! negative or above [`MAX_LATENCY_NS`] are counted as invalid, not
//! recorded.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::spec::Proto;
use crate::stamp::{STAMP_LEN, parse_frame};

/// Latency samples above this (10 s) are taken to be garbage (unstamped
/// payload read as a stamp, or a clock step), not latency.
pub const MAX_LATENCY_NS: u64 = 10_000_000_000;

/// Nanoseconds since the Unix epoch (`CLOCK_REALTIME`): the clock of stamps.
pub fn realtime_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Sub-buckets per power of two: values are kept to within 1/16 (6.25 %).
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// A log-linear histogram of nanosecond values: exact below 16, then 16
/// buckets per power of two. Fixed size (about 8 KiB), no allocation per
/// sample, and mergeable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bucket holding `v`.
    pub const fn bucket_of(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let exp = v.ilog2(); // >= SUB_BITS
        let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
        ((exp - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
    }

    /// The smallest value of bucket `i`.
    pub const fn lower_bound(i: usize) -> u64 {
        if i < SUB as usize {
            return i as u64;
        }
        let exp = (i / SUB as usize) as u32 + SUB_BITS - 1;
        let sub = (i % SUB as usize) as u64;
        (SUB + sub) << (exp - SUB_BITS)
    }

    /// How many values bucket `i` spans.
    pub const fn width(i: usize) -> u64 {
        if i < SUB as usize {
            1
        } else {
            1 << ((i / SUB as usize) as u32 - 1)
        }
    }

    #[inline]
    pub fn record(&mut self, v: u64) {
        self.record_n(v, 1);
    }

    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.counts[Self::bucket_of(v)] += n;
        self.count += n;
        self.sum += u128::from(v) * u128::from(n);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub const fn count(&self) -> u64 {
        self.count
    }

    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The nearest-rank `q`-quantile (`0 < q <= 1`): the middle of the bucket
    /// holding the `ceil(q * count)`-th smallest value, clamped to the
    /// recorded minimum and maximum. Exact for values below 16 and for
    /// buckets holding a single distinct value at their lower bound or at
    /// the extremes; otherwise within half a bucket (3.2 %).
    #[allow(clippy::cast_sign_loss)] // q is clamped to 0..=1
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let mid = Self::lower_bound(i) + (Self::width(i) - 1) / 2;
                return Some(mid.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    fn to_serial(&self) -> HistogramSerial {
        HistogramSerial {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|&(_, &c)| c > 0)
                .map(|(i, &c)| (Self::lower_bound(i), c))
                .collect(),
            sum_ns: self.sum,
            min_ns: self.min(),
            max_ns: self.max(),
        }
    }

    fn from_serial(s: &HistogramSerial) -> Self {
        let mut h = Self::default();
        for &(lower, c) in &s.buckets {
            h.counts[Self::bucket_of(lower)] += c;
            h.count += c;
        }
        h.sum = s.sum_ns;
        if h.count > 0 {
            h.min = s.min_ns.unwrap_or(0);
            h.max = s.max_ns.unwrap_or(u64::MAX);
        }
        h
    }
}

/// A histogram as it is written to JSON: `(bucket lower bound, count)` for
/// each non-empty bucket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramSerial {
    pub buckets: Vec<(u64, u64)>,
    pub sum_ns: u128,
    pub min_ns: Option<u64>,
    pub max_ns: Option<u64>,
}

/// Which frames a sink counts; the rest are `ignored`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub proto: Option<Proto>,
    pub dst_port: Option<u16>,
    /// Read a stamp at the start of the L4 payload of counted frames.
    pub stamped: bool,
}

/// One backend (receive interface) of a sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub name: String,
    /// Count only frames sent to this MAC (the interface's own), so that a
    /// frame a bridge floods to every port before it has learnt where the
    /// destination is does not count as reaching every backend.
    pub mac: Option<[u8; 6]>,
}

/// What [`Sink::record`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Counted,
    /// Not TCP/UDP over IP, filtered out, or for another MAC.
    Ignored,
}

#[derive(Clone, Copy, Debug, Default)]
struct BackendCounters {
    packets: u64,
    bytes: u64,
}

/// Live accounting for one sink process. Indexing by backend number keeps
/// the per-packet path to one hash lookup (the client address) and a few
/// additions.
#[derive(Debug)]
pub struct Sink {
    backends: Vec<BackendSpec>,
    counters: Vec<BackendCounters>,
    /// Per client: packets per backend, indexed like `backends`.
    clients: HashMap<IpAddr, Box<[u64]>>,
    latency: Histogram,
    filter: Filter,
    ignored: u64,
    stamp_invalid: u64,
    first_rx_ns: Option<u64>,
    last_rx_ns: Option<u64>,
}

impl Sink {
    pub fn new(backends: Vec<BackendSpec>, filter: Filter) -> Self {
        Self {
            counters: vec![BackendCounters::default(); backends.len()],
            backends,
            clients: HashMap::new(),
            latency: Histogram::new(),
            filter,
            ignored: 0,
            stamp_invalid: 0,
            first_rx_ns: None,
            last_rx_ns: None,
        }
    }

    /// Accounts one frame that arrived at backend `backend` at `rx_ns`
    /// (see [`realtime_nanos`]).
    pub fn record(&mut self, backend: usize, frame: &[u8], rx_ns: u64) -> Outcome {
        if let Some(mac) = self.backends[backend].mac
            && frame.get(..6) != Some(&mac[..])
        {
            self.ignored += 1;
            return Outcome::Ignored;
        }
        let Ok(info) = parse_frame(frame) else {
            self.ignored += 1;
            return Outcome::Ignored;
        };
        if self.filter.proto.is_some_and(|p| p != info.proto)
            || self.filter.dst_port.is_some_and(|p| p != info.dst_port)
        {
            self.ignored += 1;
            return Outcome::Ignored;
        }
        let c = &mut self.counters[backend];
        c.packets += 1;
        c.bytes += frame.len() as u64;
        let n = self.backends.len();
        self.clients
            .entry(info.src)
            .or_insert_with(|| vec![0; n].into_boxed_slice())[backend] += 1;
        self.first_rx_ns = Some(self.first_rx_ns.map_or(rx_ns, |f| f.min(rx_ns)));
        self.last_rx_ns = Some(self.last_rx_ns.map_or(rx_ns, |l| l.max(rx_ns)));
        if self.filter.stamped {
            let at = info.payload_offset;
            if info.payload_len >= STAMP_LEN {
                let sent = u64::from_be_bytes(frame[at + 8..at + 16].try_into().expect("8 bytes"));
                match rx_ns.checked_sub(sent) {
                    Some(lat) if lat <= MAX_LATENCY_NS => self.latency.record(lat),
                    _ => self.stamp_invalid += 1,
                }
            } else {
                self.stamp_invalid += 1;
            }
        }
        Outcome::Counted
    }

    /// Counts the kernel reported dropping before we saw them.
    pub fn tally(&self, kernel_drops: u64) -> Tally {
        let mut t = Tally {
            backends: self
                .backends
                .iter()
                .zip(&self.counters)
                .map(|(b, c)| {
                    (
                        b.name.clone(),
                        BackendTally {
                            packets: c.packets,
                            bytes: c.bytes,
                        },
                    )
                })
                .collect(),
            client_backends: BTreeMap::new(),
            latency: self.latency.clone(),
            ignored: self.ignored,
            stamp_invalid: self.stamp_invalid,
            kernel_drops,
            first_rx_ns: self.first_rx_ns,
            last_rx_ns: self.last_rx_ns,
        };
        for (addr, per) in &self.clients {
            let entry = t.client_backends.entry(*addr).or_default();
            for (b, &n) in self.backends.iter().zip(per.iter()) {
                if n > 0 {
                    *entry.entry(b.name.clone()).or_default() += n;
                }
            }
        }
        t
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTally {
    pub packets: u64,
    pub bytes: u64,
}

/// The mergeable content of a sink report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub backends: BTreeMap<String, BackendTally>,
    /// Per client address: packets per backend name.
    pub client_backends: BTreeMap<IpAddr, BTreeMap<String, u64>>,
    pub latency: Histogram,
    pub ignored: u64,
    pub stamp_invalid: u64,
    pub kernel_drops: u64,
    pub first_rx_ns: Option<u64>,
    pub last_rx_ns: Option<u64>,
}

impl Tally {
    pub fn merge(&mut self, o: &Tally) {
        for (name, b) in &o.backends {
            let e = self.backends.entry(name.clone()).or_default();
            e.packets += b.packets;
            e.bytes += b.bytes;
        }
        for (addr, per) in &o.client_backends {
            let e = self.client_backends.entry(*addr).or_default();
            for (name, n) in per {
                *e.entry(name.clone()).or_default() += n;
            }
        }
        self.latency.merge(&o.latency);
        self.ignored += o.ignored;
        self.stamp_invalid += o.stamp_invalid;
        self.kernel_drops += o.kernel_drops;
        self.first_rx_ns = match (self.first_rx_ns, o.first_rx_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_rx_ns = self.last_rx_ns.max(o.last_rx_ns);
    }

    /// The report: derived figures (stickiness, rates, percentiles) plus
    /// the detail a merge needs. `duration_s` is how long the sink ran.
    pub fn report(&self, duration_s: f64) -> SinkReport {
        let mut backends: BTreeMap<String, BackendReport> = self
            .backends
            .iter()
            .map(|(n, b)| {
                (
                    n.clone(),
                    BackendReport {
                        packets: b.packets,
                        bytes: b.bytes,
                        clients: 0,
                    },
                )
            })
            .collect();
        let mut single = 0;
        let mut multi = 0;
        let mut multi_examples = Vec::new();
        for (addr, per) in &self.client_backends {
            for name in per.keys() {
                backends.entry(name.clone()).or_default().clients += 1;
            }
            match per.len() {
                0 => {}
                1 => single += 1,
                _ => {
                    multi += 1;
                    if multi_examples.len() < 10 {
                        multi_examples.push((*addr, per.clone()));
                    }
                }
            }
        }
        let packets = self.backends.values().map(|b| b.packets).sum();
        let clients = single + multi;
        let active_s = match (self.first_rx_ns, self.last_rx_ns) {
            (Some(f), Some(l)) if l > f => Some((l - f) as f64 / 1e9),
            _ => None,
        };
        SinkReport {
            duration_s,
            packets,
            bytes: self.backends.values().map(|b| b.bytes).sum(),
            rate_pps: active_s.map(|s| packets as f64 / s),
            active_s,
            ignored: self.ignored,
            kernel_drops: self.kernel_drops,
            backends,
            clients,
            clients_single_backend: single,
            clients_multi_backend: multi,
            sticky_share: (clients > 0).then(|| single as f64 / clients as f64),
            multi_backend_examples: multi_examples,
            latency: (self.latency.count() > 0).then(|| LatencySummary::of(&self.latency)),
            stamp_invalid: self.stamp_invalid,
            first_rx_ns: self.first_rx_ns,
            last_rx_ns: self.last_rx_ns,
            latency_histogram: self.latency.to_serial(),
            client_backends: self.client_backends.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendReport {
    pub packets: u64,
    pub bytes: u64,
    /// Distinct client addresses seen at this backend.
    pub clients: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub min_ns: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram) -> Self {
        Self {
            samples: h.count(),
            min_ns: h.min().unwrap_or(0),
            mean_ns: h.mean().unwrap_or(0.0),
            p50_ns: h.quantile(0.5).unwrap_or(0),
            p90_ns: h.quantile(0.9).unwrap_or(0),
            p99_ns: h.quantile(0.99).unwrap_or(0),
            p999_ns: h.quantile(0.999).unwrap_or(0),
            max_ns: h.max().unwrap_or(0),
        }
    }
}

/// The JSON document a sink (or `pktgen merge`) writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SinkReport {
    /// How long the sink ran (the longest, after a merge).
    pub duration_s: f64,
    /// Frames counted (passed the filter), over all backends.
    pub packets: u64,
    pub bytes: u64,
    /// `packets` over `active_s`.
    pub rate_pps: Option<f64>,
    /// From the first to the last counted frame.
    pub active_s: Option<f64>,
    /// Frames not counted: not TCP/UDP, filtered out, for another MAC.
    pub ignored: u64,
    /// Frames the kernel dropped at the sink's ring (not seen at all).
    pub kernel_drops: u64,
    pub backends: BTreeMap<String, BackendReport>,
    /// Distinct client (source) addresses.
    pub clients: u64,
    /// Clients whose packets all reached one backend.
    pub clients_single_backend: u64,
    /// Clients whose packets reached more than one backend.
    pub clients_multi_backend: u64,
    /// `clients_single_backend / clients`.
    pub sticky_share: Option<f64>,
    /// Up to 10 clients that reached more than one backend.
    pub multi_backend_examples: Vec<(IpAddr, BTreeMap<String, u64>)>,
    pub latency: Option<LatencySummary>,
    /// Counted frames whose stamp was missing or out of range.
    pub stamp_invalid: u64,
    pub first_rx_ns: Option<u64>,
    pub last_rx_ns: Option<u64>,
    pub latency_histogram: HistogramSerial,
    /// Per client: packets per backend. What `merge` recomputes from.
    pub client_backends: BTreeMap<IpAddr, BTreeMap<String, u64>>,
}

impl SinkReport {
    /// The mergeable content back out of a report.
    pub fn tally(&self) -> Tally {
        Tally {
            backends: self
                .backends
                .iter()
                .map(|(n, b)| {
                    (
                        n.clone(),
                        BackendTally {
                            packets: b.packets,
                            bytes: b.bytes,
                        },
                    )
                })
                .collect(),
            client_backends: self.client_backends.clone(),
            latency: Histogram::from_serial(&self.latency_histogram),
            ignored: self.ignored,
            stamp_invalid: self.stamp_invalid,
            kernel_drops: self.kernel_drops,
            first_rx_ns: self.first_rx_ns,
            last_rx_ns: self.last_rx_ns,
        }
    }

    /// Merges the reports of sinks that ran side by side (one per backend
    /// namespace): counts add up, and a client seen at several sinks' backends
    /// is counted as reaching several backends.
    pub fn merge(reports: &[SinkReport]) -> SinkReport {
        let mut t = Tally::default();
        let mut duration: f64 = 0.0;
        for r in reports {
            t.merge(&r.tally());
            duration = duration.max(r.duration_s);
        }
        t.report(duration)
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<16} {:>12} {:>14} {:>9} {:>10}",
            "backend", "packets", "bytes", "share", "clients"
        );
        for (name, b) in &self.backends {
            let share = if self.packets > 0 {
                100.0 * b.packets as f64 / self.packets as f64
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "{name:<16} {:>12} {:>14} {share:>8.2}% {:>10}",
                b.packets, b.bytes, b.clients
            );
        }
        let _ = writeln!(
            s,
            "{:<16} {:>12} {:>14} {:>9} {:>10}",
            "total", self.packets, self.bytes, "", self.clients
        );
        let _ = write!(s, "rate: ");
        match (self.rate_pps, self.active_s) {
            (Some(r), Some(a)) => {
                let _ = writeln!(s, "{r:.0} pps over {a:.3} s (first to last packet)");
            }
            _ => {
                let _ = writeln!(s, "n/a");
            }
        }
        let _ = writeln!(
            s,
            "ignored: {}  kernel drops at sink: {}",
            self.ignored, self.kernel_drops
        );
        let _ = writeln!(
            s,
            "stickiness: {} clients, {} on one backend, {} on several ({})",
            self.clients,
            self.clients_single_backend,
            self.clients_multi_backend,
            self.sticky_share
                .map_or_else(|| "n/a".to_owned(), |x| format!("{:.4}% sticky", 100.0 * x))
        );
        for (addr, per) in &self.multi_backend_examples {
            let _ = writeln!(s, "  split: {addr} -> {per:?}");
        }
        if let Some(l) = &self.latency {
            let us = |ns: u64| ns as f64 / 1e3;
            let _ = writeln!(
                s,
                "latency (us): n={} min={:.1} p50={:.1} p90={:.1} p99={:.1} p99.9={:.1} max={:.1} mean={:.1}",
                l.samples,
                us(l.min_ns),
                us(l.p50_ns),
                us(l.p90_ns),
                us(l.p99_ns),
                us(l.p999_ns),
                us(l.max_ns),
                l.mean_ns / 1e3
            );
        }
        if self.stamp_invalid > 0 {
            let _ = writeln!(s, "invalid stamps: {}", self.stamp_invalid);
        }
        s
    }
}
