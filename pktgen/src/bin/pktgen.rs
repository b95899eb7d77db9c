//! `pktgen`: a traffic generator and sink over limpet's packet I/O.
//!
//! - `pktgen send`: N clients x M flows to one or more VIPs, TCP or UDP,
//!   IPv4 or IPv6, at a target rate or flat out, with a share of new
//!   connections, for a duration or a packet count.
//! - `pktgen sink`: counts arrivals on backend-side interfaces per backend
//!   and per client address, checks stickiness, and reads latency from
//!   payload stamps.
//! - `pktgen forward`: the floor for load-balancer figures: receives on
//!   one interface and sends each frame on to a backend chosen by client
//!   address, rewriting only the MAC addresses.
//! - `pktgen merge`: merges the reports of sinks that ran side by side (one
//!   per backend network namespace) and recomputes stickiness.
//!
//! Sending copies each burst of prebuilt frames into `AfPacketIo`'s mmap TX
//! ring with one kick per burst (`AfPacketIo::tx_frames`); receiving uses
//! its `TPACKET_V3` RX ring, promiscuous.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use limpet_dataplane::io::afpacket::{AfPacketIo, AfPacketOptions, RawSocket};
use limpet_dataplane::io::{BURST, PacketBuf, PacketIo};
use limpet_pktgen::Proto;
use limpet_pktgen::forward::Forwarder;
use limpet_pktgen::send::{Generator, Pacer, Plan, SendReport, default_first_client};
use limpet_pktgen::sink::{BackendSpec, Filter, Sink, SinkReport, realtime_nanos};

#[derive(Parser, Debug)]
#[command(name = "pktgen", about = "limpet's traffic generator and sink")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Send generated traffic out of an interface.
    Send(SendArgs),
    /// Count arrivals on backend-side interfaces.
    Sink(SinkArgs),
    /// Merge sink reports (JSON files) and recompute stickiness.
    Merge(MergeArgs),
    /// Forward frames to backends by MAC rewrite alone (the benchmarks'
    /// floor: the packet I/O with no load balancing in between).
    Forward(ForwardArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

impl From<ProtoArg> for Proto {
    fn from(p: ProtoArg) -> Proto {
        match p {
            ProtoArg::Tcp => Proto::Tcp,
            ProtoArg::Udp => Proto::Udp,
        }
    }
}

#[derive(clap::Args, Debug)]
struct SendArgs {
    /// Interface to send from.
    #[arg(long)]
    iface: String,
    /// Destination MAC (the load balancer's interface), aa:bb:cc:dd:ee:ff.
    #[arg(long, value_parser = parse_mac)]
    dst_mac: [u8; 6],
    /// Source MAC; default: the interface's.
    #[arg(long, value_parser = parse_mac)]
    src_mac: Option<[u8; 6]>,
    /// Service address IP:PORT ([IPv6]:PORT); repeatable.
    #[arg(long = "vip", required = true)]
    vips: Vec<SocketAddr>,
    #[arg(long, value_enum, default_value = "udp")]
    proto: ProtoArg,
    /// Number of client addresses.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// First client address (then counting up); must lie in 198.18.0.0/15 or
    /// `2001:db8::/32`. Default 198.18.0.1 or `2001:db8:c1::1` by the VIPs'
    /// family.
    #[arg(long)]
    first_client: Option<std::net::IpAddr>,
    /// Established flows (source ports) per client and VIP.
    #[arg(long, default_value_t = 1)]
    flows_per_client: usize,
    /// Frame size on the wire including the 4-byte FCS (64 = minimum
    /// Ethernet frame); raised to what headers (and stamp) need.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Target rate in packets per second (token bucket).
    #[arg(
        long,
        conflicts_with = "flat_out",
        required_unless_present = "flat_out"
    )]
    rate: Option<f64>,
    /// Send as fast as possible.
    #[arg(long)]
    flat_out: bool,
    /// Share of packets that open a new connection (TCP: a SYN from a fresh
    /// source port; UDP: a datagram from a fresh source port), 0..=1.
    #[arg(long, default_value_t = 0.0)]
    new_share: f64,
    /// Seconds to send for.
    #[arg(long, conflicts_with = "count", required_unless_present = "count")]
    duration: Option<f64>,
    /// Packets to send.
    #[arg(long)]
    count: Option<u64>,
    /// Put a sequence number and `CLOCK_REALTIME` send time in each payload.
    #[arg(long)]
    stamp: bool,
    /// Seed for the flow order and new-connection draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the JSON report here instead of stdout (the table then goes to
    /// stdout instead of stderr).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct SinkArgs {
    /// IFACE or IFACE=BACKEND (label; default the interface name);
    /// repeatable.
    #[arg(long = "iface", required = true)]
    ifaces: Vec<String>,
    /// Count only this protocol.
    #[arg(long, value_enum)]
    proto: Option<ProtoArg>,
    /// Count only this destination port (e.g. the backends' target port).
    #[arg(long)]
    dst_port: Option<u16>,
    /// Payloads carry stamps (`pktgen send --stamp`): measure latency.
    #[arg(long)]
    stamp: bool,
    /// Also count frames addressed to other MACs (a bridge floods unknown
    /// destinations to every port, which would look like a client reaching
    /// several backends).
    #[arg(long)]
    any_mac: bool,
    /// Seconds to run; default until SIGINT or SIGTERM.
    #[arg(long)]
    duration: Option<f64>,
    /// Write the JSON report here instead of stdout (the table then goes to
    /// stdout instead of stderr).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct MergeArgs {
    /// Sink reports to merge.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ForwardArgs {
    /// Interface to receive on and send from.
    #[arg(long)]
    iface: String,
    /// A backend's MAC address; repeatable. Each client address goes to
    /// one of them.
    #[arg(long = "to", required = true, value_parser = parse_mac)]
    backends: Vec<[u8; 6]>,
    /// Seconds to run; default until SIGINT or SIGTERM.
    #[arg(long)]
    duration: Option<f64>,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
    }
    Ok(mac)
}

fn iface_mac(iface: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).ok()?;
    parse_mac(text.trim()).ok()
}

fn stop_flag() -> Result<Arc<AtomicBool>, String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| format!("installing signal handler: {e}"))?;
    }
    Ok(stop)
}

/// Writes `json` to `path`, or to stdout; the table goes to the other of
/// stdout and stderr.
fn emit(table: &str, json: &str, path: Option<&PathBuf>) -> Result<(), String> {
    if let Some(p) = path {
        std::fs::write(p, format!("{json}\n"))
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
        print!("{table}");
    } else {
        eprint!("{table}");
        println!("{json}");
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

/// Offers a burst to the TX ring until it is all taken: a full ring only
/// means the kernel is behind. Stops early at the deadline, on a stop
/// request, or on an interface error. Returns (sent, failed).
fn offer(
    io: &mut AfPacketIo,
    burst: &[[u8; 2048]],
    lens: &[usize],
    stop: &AtomicBool,
    deadline: Option<Instant>,
    last_error: &mut Option<String>,
) -> (u64, u64) {
    let mut done = 0;
    while done < lens.len() {
        let taken = io.tx_frames(0, (done..lens.len()).map(|i| &burst[i][..lens[i]]));
        done += taken;
        if taken == 0 {
            if let Err(e) = io.health() {
                last_error.get_or_insert(e.to_string());
                return (done as u64, (lens.len() - done) as u64);
            }
            if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            std::hint::spin_loop();
        }
    }
    (done as u64, 0)
}

fn generator_for(a: &SendArgs, our_mac: [u8; 6]) -> Result<(Plan, Generator), String> {
    let v6 = a.vips[0].is_ipv6();
    let plan = Plan {
        proto: a.proto.into(),
        src_mac: a.src_mac.unwrap_or(our_mac),
        dst_mac: a.dst_mac,
        vips: a.vips.clone(),
        first_client: a.first_client.unwrap_or_else(|| default_first_client(v6)),
        clients: a.clients,
        flows_per_client: a.flows_per_client,
        size: a.size,
        new_share: a.new_share,
        stamp: a.stamp,
        seed: a.seed,
    };
    let generator = Generator::new(&plan).map_err(|e| e.to_string())?;
    if generator.frame_len() > 2048 {
        return Err(format!(
            "frames of {} bytes do not fit a 2048-byte TX slot",
            generator.frame_len()
        ));
    }
    if generator.frame_len() + 4 != a.size {
        eprintln!(
            "pktgen: frames are {} bytes + FCS (headers{} need that much)",
            generator.frame_len(),
            if a.stamp { " and stamp" } else { "" }
        );
    }
    Ok((plan, generator))
}

fn send(a: &SendArgs) -> Result<(), String> {
    let our_mac = RawSocket::open(&a.iface).map_err(|e| e.to_string())?.mac();
    let mut io = AfPacketIo::open(
        &[a.iface.as_str()],
        &AfPacketOptions {
            promisc: false,
            ..AfPacketOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let (plan, mut generator) = generator_for(a, our_mac.0)?;
    let stop = stop_flag()?;
    let start = Instant::now();
    let deadline = a.duration.map(|d| start + Duration::from_secs_f64(d));
    let limit = a.count.unwrap_or(u64::MAX);
    let mut pacer = a.rate.map(|r| Pacer::new(r, BURST as u32, 0));
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut burst = vec![[0u8; 2048]; BURST];
    let mut first_tx_ns = None;
    let mut last_error = None;
    let attempts = |sent: u64, errors: u64| sent + errors;
    while attempts(sent, errors) < limit && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let want = (limit - attempts(sent, errors)).min(BURST as u64) as u32;
        let n = match &mut pacer {
            Some(p) => {
                let n = p.take(now.duration_since(start).as_nanos() as u64, want);
                if n == 0 {
                    let wait = p.wait_ns();
                    if wait > 200_000 {
                        std::thread::sleep(Duration::from_nanos(wait - 100_000));
                    } else {
                        std::hint::spin_loop();
                    }
                    continue;
                }
                n
            }
            None => want,
        };
        let mut lens = [0usize; BURST];
        for (i, len) in lens.iter_mut().enumerate().take(n as usize) {
            let ts = realtime_nanos();
            first_tx_ns.get_or_insert(ts);
            let frame = generator.next_frame(ts);
            burst[i][..frame.len()].copy_from_slice(frame);
            *len = frame.len();
        }
        let (taken, failed) = offer(
            &mut io,
            &burst,
            &lens[..n as usize],
            &stop,
            deadline,
            &mut last_error,
        );
        sent += taken;
        errors += failed;
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(e) = last_error {
        eprintln!("pktgen: {errors} sends failed; first: {e}");
    }
    let report = SendReport {
        iface: a.iface.clone(),
        proto: format!("{:?}", plan.proto).to_lowercase(),
        clients: plan.clients,
        flows: generator.flows(),
        vips: plan.vips.clone(),
        frame_len: generator.frame_len(),
        target_pps: a.rate,
        elapsed_s: elapsed,
        sent,
        send_errors: errors,
        new_connections: generator.new_connections(),
        pps: sent as f64 / elapsed,
        bits_per_s: (sent * generator.frame_len() as u64 * 8) as f64 / elapsed,
        first_tx_ns,
        last_tx_ns: first_tx_ns.map(|_| realtime_nanos()),
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    emit(&report.table(), &json, a.json.as_ref())
}

fn sink(a: &SinkArgs) -> Result<(), String> {
    let mut names = Vec::new();
    let mut backends = Vec::new();
    for spec in &a.ifaces {
        let (iface, label) = spec.split_once('=').unwrap_or((spec, spec));
        names.push(iface.to_owned());
        let mac = if a.any_mac { None } else { iface_mac(iface) };
        if mac.is_none() && !a.any_mac {
            eprintln!("pktgen: {iface}: MAC unknown, counting frames to any MAC");
        }
        backends.push(BackendSpec {
            name: label.to_owned(),
            mac,
        });
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AfPacketOptions {
        promisc: true,
        ..AfPacketOptions::default()
    };
    let mut io = AfPacketIo::open(&refs, &opts).map_err(|e| e.to_string())?;
    let mut acc = Sink::new(
        backends,
        Filter {
            proto: a.proto.map(Into::into),
            dst_port: a.dst_port,
            stamped: a.stamp,
        },
    );
    let stop = stop_flag()?;
    let start = Instant::now();
    let deadline = a.duration.map(|d| start + Duration::from_secs_f64(d));
    let mut burst = Vec::with_capacity(BURST);
    let mut last_health = start;
    eprintln!("pktgen: sink on {} ready", names.join(","));
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        if io.rx_burst(&mut burst) == 0 {
            io.wait(Some(Duration::from_millis(20)))
                .map_err(|e| e.to_string())?;
            continue;
        }
        let now = realtime_nanos();
        for buf in &burst {
            acc.record(usize::from(buf.port()), buf.data(), now);
        }
        io.free_burst(&mut burst);
        if last_health.elapsed() > Duration::from_secs(1) {
            last_health = Instant::now();
            if let Err(e) = io.health() {
                eprintln!("pktgen: {e}");
            }
        }
    }
    let drops = io.stats().rx_dropped_by_kernel;
    let report = acc.tally(drops).report(start.elapsed().as_secs_f64());
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    emit(&report.table(), &json, a.json.as_ref())
}

fn merge(a: &MergeArgs) -> Result<(), String> {
    let mut reports = Vec::new();
    for p in &a.reports {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        let r: SinkReport =
            serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", p.display()))?;
        reports.push(r);
    }
    let report = SinkReport::merge(&reports);
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    emit(&report.table(), &json, a.json.as_ref())
}

fn forward(a: &ForwardArgs) -> Result<(), String> {
    let our_mac = RawSocket::open(&a.iface).map_err(|e| e.to_string())?.mac();
    let mut io = AfPacketIo::open(&[a.iface.as_str()], &AfPacketOptions::default())
        .map_err(|e| e.to_string())?;
    let mut fwd = Forwarder::new(our_mac.0, a.backends.clone());
    let stop = stop_flag()?;
    let start = Instant::now();
    let deadline = a.duration.map(|d| start + Duration::from_secs_f64(d));
    eprintln!("pktgen: forwarding on {} ready", a.iface);
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        if fwd.poll(&mut io) == 0 {
            io.wait(Some(Duration::from_millis(1)))
                .map_err(|e| e.to_string())?;
        }
    }
    let s = fwd.stats;
    let report = serde_json::json!({
        "iface": a.iface,
        "elapsed_s": start.elapsed().as_secs_f64(),
        "stats": s,
        "busy_ns_per_packet": s.busy_ns_per_packet(),
        "packets_per_burst": s.packets_per_burst(),
        "kernel_drops": io.stats().rx_dropped_by_kernel,
    });
    let table = format!(
        "forwarded {} of {} packets ({} dropped), {:.1} busy ns/packet, {:.1} packets/burst\n",
        s.tx_packets,
        s.rx_packets,
        s.dropped,
        s.busy_ns_per_packet(),
        s.packets_per_burst()
    );
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    emit(&table, &json, a.json.as_ref())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Send(a) => send(a),
        Cmd::Sink(a) => sink(a),
        Cmd::Merge(a) => merge(a),
        Cmd::Forward(a) => forward(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pktgen: {e}");
            ExitCode::FAILURE
        }
    }
}
