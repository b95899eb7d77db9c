//! Shared set-up for limpet's benchmarks: one worker over [`MemoryIo`] with
//! a hand-moved clock, prebuilt frames, the feed loop that replays them, and
//! the floor loop the pipeline is compared against.
//!
//! # How packets are fed
//!
//! The pipeline rewrites every frame in place (NAT changes the destination
//! address, port, TTL and checksums; every mode changes the MACs), so a frame
//! the worker sent is no longer the frame a client would send, and looping
//! it back with [`MemoryIo::loop_back`] would replay rewritten packets
//! (which the flow table would see as a different tuple). Instead every
//! frame is built once, untimed, into one contiguous pristine array, and the
//! timed loop copies it into a recycled pool buffer with
//! [`MemoryIo::inject`] (one memcpy of the frame, 60 bytes for a 64-byte
//! IPv4 TCP frame), polls the worker, and recycles what it sent with
//! [`MemoryIo::recycle_sent`]. That copy stands in for the NIC's DMA and is
//! part of every timed figure, the floor's included, so the comparison is
//! like for like. [`METHOD`] says so in each JSON line.

use limpet_dataplane::clock::ManualClock;
use limpet_dataplane::io::{BURST, MemoryIo, PacketBuf, PacketIo, huge_vec, prefetch};
use limpet_dataplane::pipeline::{Worker, WorkerConfig};
use limpet_dataplane::snapshot::{Affinity, Backend, ForwardMode, ServicePortSpec, Snapshot};
use limpet_dataplane::wire::MacAddr;
use limpet_pktgen::{Flow, PacketSpec};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the timed loops feed packets, for the JSON output.
pub const METHOD: &str = "pristine frames prebuilt once; per packet one memcpy into a recycled \
    MemoryIo pool buffer (inject), worker.poll() of 32-packet bursts, recycle_sent; the floor \
    runs the same inject/rx_burst/tx_burst/recycle loop, so the copy is in both";

/// The MAC address the worker sends from.
pub const LIMPET_MAC: [u8; 6] = [0x02, 0x11, 0x11, 0x11, 0x11, 0x11];
/// The MAC address clients' frames come from.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc];
/// The service's port.
pub const SERVICE_PORT: u16 = 80;
/// Backends' port.
pub const BACKEND_PORT: u16 = 9376;
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const AFFINITY_TIMEOUT: u32 = 10_800;
/// Where the manual clock starts.
pub const START: u32 = 1_000;
/// Buffers in the in-memory NIC's pool: two bursts' worth.
pub const POOL: usize = 2 * BURST;

/// The address family a scenario runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    pub fn name(self) -> &'static str {
        match self {
            Fam::V4 => "ipv4",
            Fam::V6 => "ipv6",
        }
    }

    /// The service's address (documentation ranges).
    pub fn vip(self) -> IpAddr {
        match self {
            Fam::V4 => Ipv4Addr::new(192, 0, 2, 10).into(),
            Fam::V6 => Ipv6Addr::new(0x2001, 0xdb8, 0x5, 0, 0, 0, 0, 0x10).into(),
        }
    }

    /// Backend `i`'s address: pod-network style, never a client address.
    pub fn backend_addr(self, i: usize) -> IpAddr {
        let i = i as u16;
        match self {
            Fam::V4 => Ipv4Addr::new(10, 244, (i >> 8) as u8, i as u8 + 1).into(),
            Fam::V6 => Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, i >> 8, i + 1).into(),
        }
    }
}

/// `n` backends of the benchmark service, ids `1..=n`.
pub fn backends(fam: Fam, n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend {
            id: i as u32 + 1,
            addr: fam.backend_addr(i),
            port: BACKEND_PORT,
            weight: 1,
            mac: MacAddr([0x02, 0xbb, 0, 0, (i >> 8) as u8, i as u8]),
            iface: 0,
        })
        .collect()
}

/// The one service port every scenario targets: TCP, `ClientIP` affinity,
/// NAT, `backends` backends.
pub fn service(fam: Fam, backends_n: usize) -> ServicePortSpec {
    ServicePortSpec {
        id: 1,
        name: "bench/svc:80/TCP".to_owned(),
        protocol: 6,
        affinity: Affinity::client_ip(AFFINITY_TIMEOUT),
        mode: ForwardMode::Nat,
        frontends: vec![(fam.vip(), SERVICE_PORT)],
        backends: backends(fam, backends_n),
        maglev_size: None,
        source_ranges: None,
    }
}

/// A benchmark worker's settings: sending from [`LIMPET_MAC`], tables of
/// `fam` sized as given, the other family's tables small (never used).
pub fn worker_config(fam: Fam, flow_capacity: usize, affinity_capacity: usize) -> WorkerConfig {
    let (v4, v6) = match fam {
        Fam::V4 => ((flow_capacity, affinity_capacity), (1024, 1024)),
        Fam::V6 => ((1024, 1024), (flow_capacity, affinity_capacity)),
    };
    WorkerConfig {
        mac: MacAddr(LIMPET_MAC),
        flow_capacity: v4.0,
        affinity_capacity: v4.1,
        flow_capacity_v6: Some(v6.0),
        affinity_capacity_v6: Some(v6.1),
        // limpet's own address on the backends' subnet, as `--address`
        // gives it: every new connection is checked for hairpin (none of
        // the benchmark's clients is on that subnet).
        snat: limpet_dataplane::snat::SnatConfig {
            subnets: vec![
                (Ipv4Addr::new(10, 244, 255, 254).into(), 16),
                (
                    Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0xffff, 0xfffe).into(),
                    64,
                ),
            ],
            ..Default::default()
        },
        ..WorkerConfig::default()
    }
}

/// A worker over an in-memory NIC of [`POOL`] buffers, its clock stopped at
/// [`START`] (so nothing expires while it runs).
pub fn worker(
    fam: Fam,
    backends_n: usize,
    flow_capacity: usize,
    affinity_capacity: usize,
) -> (Worker<MemoryIo, ManualClock>, ManualClock) {
    let clock = ManualClock::new(START);
    let config = worker_config(fam, flow_capacity, affinity_capacity);
    let snapshot = Arc::new(Snapshot::build(1, vec![service(fam, backends_n)]).expect("snapshot"));
    let worker = Worker::new(MemoryIo::new(POOL), clock.clone(), config, snapshot).expect("worker");
    (worker, clock)
}

/// Frames built once into one contiguous array, all of one length.
pub struct Frames {
    data: Vec<u8>,
    frame_len: usize,
    count: usize,
}

impl Frames {
    /// Builds one frame per spec. Every frame must have the same length.
    pub fn build(specs: impl IntoIterator<Item = PacketSpec>) -> Self {
        let specs = specs.into_iter();
        let mut scratch = [0u8; 256];
        let mut data = Vec::new();
        let mut frame_len = 0;
        let mut count = 0;
        for spec in specs {
            let n = spec.write_into(&mut scratch).expect("frame");
            if count == 0 {
                frame_len = n;
            }
            assert_eq!(n, frame_len, "frames of one set must have one length");
            data.extend_from_slice(&scratch[..n]);
            count += 1;
        }
        data.shrink_to_fit();
        Self {
            data,
            frame_len,
            count,
        }
    }

    /// Frames from flows, addressed client to limpet: `packet` picks the
    /// flow's SYN or ACK.
    pub fn from_flows(
        flows: impl IntoIterator<Item = Flow>,
        packet: impl Fn(&Flow) -> PacketSpec,
    ) -> Self {
        Self::build(
            flows
                .into_iter()
                .map(|f| packet(&f).src_mac(CLIENT_MAC).dst_mac(LIMPET_MAC)),
        )
    }

    #[inline(always)]
    pub fn get(&self, i: usize) -> &[u8] {
        &self.data[i * self.frame_len..(i + 1) * self.frame_len]
    }

    /// Frame `i`, to patch between timed runs (a scenario that needs more
    /// distinct frames than it can hold rewrites a field in place).
    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.data[i * self.frame_len..(i + 1) * self.frame_len]
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of one frame as stored (FCS excluded).
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Bytes of memory the pristine frames take.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// Replays frames into a worker from `*cursor` on (wrapping), a burst at a
/// time: inject (copy) up to [`BURST`] frames, poll, recycle what was sent.
/// Returns the elapsed time for `packets` packets.
#[inline(never)]
pub fn run_pipeline(
    worker: &mut Worker<MemoryIo, ManualClock>,
    frames: &Frames,
    cursor: &mut usize,
    packets: usize,
) -> Duration {
    let started = Instant::now();
    let mut done = 0;
    let mut cur = *cursor;
    while done < packets {
        let n = BURST.min(packets - done);
        let io = worker.io_mut();
        for _ in 0..n {
            let ok = io.inject(frames.get(cur), 0);
            assert!(ok, "pool exhausted");
            cur += 1;
            if cur == frames.len() {
                cur = 0;
            }
        }
        let got = worker.poll();
        debug_assert_eq!(got, n);
        worker.io_mut().recycle_sent();
        done += n;
    }
    let elapsed = started.elapsed();
    *cursor = cur;
    elapsed
}

/// One cache line of the floor's table.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Line([u64; 8]);

/// A table of `bytes` bytes (rounded down to whole lines, at least one),
/// every line written so its pages are really there.
pub fn floor_table(bytes: usize) -> Vec<Line> {
    let lines = (bytes / 64).max(1);
    // Backed like the worker's tables (huge pages where the kernel allows),
    // so the comparison stays like for like.
    let mut table = huge_vec(Line([0; 8]), lines);
    for (i, line) in table.iter_mut().enumerate() {
        *line = Line([i as u64; 8]);
    }
    table
}

#[inline(always)]
fn word(frame: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(b) = frame.get(at..at + 8) {
        w.copy_from_slice(b);
    }
    u64::from_le_bytes(w)
}

/// Which line of a `lines`-line table a frame reads: a multiply hash of the
/// bytes that hold the client address and ports (IPv4: addresses and ports;
/// IPv6: the low half of the source address), reduced without a divide.
#[inline(always)]
fn floor_line(frame: &[u8], lines: usize) -> usize {
    let h = (word(frame, 26) ^ word(frame, 34).rotate_left(29))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(31)
        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    ((u128::from(h) * lines as u128) >> 64) as usize
}

/// The floor: the same inject / rx / tx / recycle loop as
/// [`run_pipeline`], over the same frames and the same in-memory NIC, doing
/// per packet only a read and a write of the frame and (if `table` is not
/// empty) one random cache-line read from `table`, prefetched for the whole
/// burst before any is read, as the pipeline's stages do. Returns the
/// elapsed time and a checksum that keeps the work alive.
#[inline(never)]
pub fn run_floor(
    io: &mut MemoryIo,
    frames: &Frames,
    cursor: &mut usize,
    packets: usize,
    table: &[Line],
) -> (Duration, u64) {
    let mut rx = Vec::with_capacity(BURST);
    let mut at = [0usize; BURST];
    let mut acc = 0u64;
    let started = Instant::now();
    let mut done = 0;
    let mut cur = *cursor;
    while done < packets {
        let n = BURST.min(packets - done);
        for _ in 0..n {
            let ok = io.inject(frames.get(cur), 0);
            assert!(ok, "pool exhausted");
            cur += 1;
            if cur == frames.len() {
                cur = 0;
            }
        }
        let got = io.rx_burst(&mut rx);
        if table.is_empty() {
            for p in &mut rx {
                let d = p.data_mut();
                d[0] ^= 1;
                acc = acc.wrapping_add(u64::from(d[30]));
            }
        } else {
            for (i, p) in rx.iter().enumerate() {
                let line = floor_line(p.data(), table.len());
                at[i] = line;
                prefetch(&table[line]);
            }
            for (i, p) in rx.iter_mut().enumerate() {
                let v = table[at[i]].0[0];
                let d = p.data_mut();
                d[0] ^= v as u8;
                acc = acc.wrapping_add(v);
            }
        }
        debug_assert_eq!(got, n);
        io.tx_burst(&mut rx);
        io.recycle_sent();
        done += n;
    }
    let elapsed = started.elapsed();
    *cursor = cur;
    (elapsed, black_box(acc))
}

/// Sends every frame once through the worker, untimed; returns how many
/// were sent on.
pub fn feed_all(worker: &mut Worker<MemoryIo, ManualClock>, frames: &Frames) -> u64 {
    let before = worker.stats().tx_packets;
    let mut cursor = 0;
    run_pipeline(worker, frames, &mut cursor, frames.len());
    worker.stats().tx_packets - before
}

/// The median of `xs` (the mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// The CPU's model name (`/proc/cpuinfo`), for the JSON lines.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Nanoseconds the calling thread has spent on a CPU (its thread CPU
/// clock), or `None` where the kernel has none. On a machine shared with
/// other work, wall time counts the time the thread waited for a CPU; this
/// does not. (`/proc/thread-self/schedstat`, used before, is only updated
/// at scheduler ticks: a 10 ms chunk read that way was off by up to 40%.)
pub fn thread_cpu_ns() -> Option<u64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    let secs = u64::try_from(t.tv_sec).ok()?;
    let nanos = u64::try_from(t.tv_nsec).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

/// The one-minute load average, for the JSON lines.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
