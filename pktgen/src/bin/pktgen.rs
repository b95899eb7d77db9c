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
//!
//! With `--io dpdk` (built with the `dpdk` feature) `--iface` names DPDK
//! ports instead (`net_memif0`, `virtio_user0`, a PCI address), created
//! with `--vdev`: frames are written straight into mbufs, and pktgen and
//! limpet can run as two processes over `net_memif` at full speed:
//!
//!     pktgen send --io dpdk --vdev net_memif0,role=server,socket=/run/lp.sock \
//!         --iface net_memif0 --dst-mac 02:11:11:11:11:11 --vip 192.0.2.10:80 ...

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
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
    /// Unwrap encapsulated DSR (IP in IP, GUE) addressed to this host and
    /// hand the inner packets to the kernel over a veth pair: a tunnel
    /// endpoint for kernels without tunnel modules.
    Decap(DecapArgs),
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

/// Which packet I/O drives the interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IoKind {
    /// Linux `AF_PACKET` rings on network interfaces.
    Afpacket,
    /// DPDK ports (build with `--features dpdk`); `--iface` names ports.
    Dpdk,
}

/// DPDK settings (`--io dpdk`).
#[derive(clap::Args, Debug, Clone)]
struct DpdkArgs {
    /// A DPDK virtual device to create (repeatable), e.g.
    /// `net_memif0,role=server,socket=/run/limpet-memif.sock`.
    #[arg(long = "vdev")]
    vdevs: Vec<String>,
    /// The CPU pktgen's one lcore runs on.
    #[arg(long, default_value_t = 0)]
    dpdk_cpu: usize,
    /// EAL memory in MiB (no hugepages unless EAL arguments ask).
    #[arg(long, default_value_t = 256)]
    dpdk_memory_mb: u32,
    /// Seconds to wait for the port's link (a memif peer) before giving up.
    #[arg(long, default_value_t = 30.0)]
    link_timeout: f64,
    /// More EAL arguments, after `--`.
    #[arg(last = true)]
    eal: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct SendArgs {
    /// Interface to send from (with `--io dpdk`: a DPDK port name).
    #[arg(long)]
    iface: String,
    /// Packet I/O.
    #[arg(long, value_enum, default_value = "afpacket")]
    io: IoKind,
    #[command(flatten)]
    dpdk: DpdkArgs,
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

#[derive(clap::Args, Debug, Clone)]
struct SinkArgs {
    /// IFACE or IFACE=BACKEND (label; default the interface name);
    /// repeatable. With `--io dpdk`: DPDK port names.
    #[arg(long = "iface", required = true)]
    ifaces: Vec<String>,
    /// Packet I/O.
    #[arg(long, value_enum, default_value = "afpacket")]
    io: IoKind,
    #[command(flatten)]
    dpdk: DpdkArgs,
    /// Count only this protocol.
    #[arg(long, value_enum)]
    proto: Option<ProtoArg>,
    /// Count only this destination port (e.g. the backends' target port).
    #[arg(long)]
    dst_port: Option<u16>,
    /// Payloads carry stamps (`pktgen send --stamp`): measure latency.
    #[arg(long)]
    stamp: bool,
    /// Answer ARP requests for addresses in this prefix (repeatable, e.g.
    /// the backends' 203.0.113.0/24) from the port's MAC, as the backends
    /// this sink stands in for would: limpet resolves backends itself.
    /// `--io dpdk` only (on kernel interfaces the kernel answers).
    #[arg(long = "answer-arp", value_name = "PREFIX")]
    answer_arp: Vec<limpet_pktgen::arp::Prefix>,
    /// Count frames per destination address instead of per interface:
    /// one backend per address given (repeatable), for a NAT load
    /// balancer's backends that all sit behind one DPDK port. `--io dpdk`.
    #[arg(long = "backend-addr", value_name = "IP")]
    backend_addrs: Vec<std::net::IpAddr>,
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

#[derive(clap::Args, Debug)]
struct DecapArgs {
    /// Interface tunnelled packets arrive on.
    #[arg(long)]
    on: String,
    /// This host's tunnel address (an outer destination); repeatable.
    #[arg(long = "address", required = true)]
    addresses: Vec<IpAddr>,
    /// GUE's UDP port.
    #[arg(long, default_value_t = 6080)]
    gue_port: u16,
    /// Our end of the veth pair inner packets are sent into.
    #[arg(long)]
    into: String,
    /// The kernel's end of that pair, whose MAC the inner packets go to.
    #[arg(long)]
    peer: String,
    /// Write the JSON report here (at SIGINT / SIGTERM) instead of stdout.
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

/// Hands `n` frames of `generator` to the interface, waiting for room;
/// returns (sent, failed). Stops early at the deadline, on a stop request
/// or on an interface error (kept in `last_error`).
type Transmit<'a> = dyn FnMut(&mut Generator, usize, &AtomicBool, Option<Instant>, &mut Option<String>) -> (u64, u64)
    + 'a;

fn send(a: &SendArgs) -> Result<(), String> {
    match a.io {
        IoKind::Afpacket => {
            let our_mac = RawSocket::open(&a.iface).map_err(|e| e.to_string())?.mac();
            let mut io = AfPacketIo::open(
                &[a.iface.as_str()],
                &AfPacketOptions {
                    promisc: false,
                    ..AfPacketOptions::default()
                },
            )
            .map_err(|e| e.to_string())?;
            let mut burst = vec![[0u8; 2048]; BURST];
            let mut transmit = |generator: &mut Generator,
                                n: usize,
                                stop: &AtomicBool,
                                deadline: Option<Instant>,
                                last_error: &mut Option<String>| {
                let mut lens = [0usize; BURST];
                for (i, len) in lens.iter_mut().enumerate().take(n) {
                    let frame = generator.next_frame(realtime_nanos());
                    burst[i][..frame.len()].copy_from_slice(frame);
                    *len = frame.len();
                }
                offer(&mut io, &burst, &lens[..n], stop, deadline, last_error)
            };
            send_loop(a, our_mac.0, &mut transmit)
        }
        IoKind::Dpdk => send_dpdk(a),
    }
}

#[cfg(not(feature = "dpdk"))]
fn send_dpdk(_: &SendArgs) -> Result<(), String> {
    Err(NO_DPDK.to_owned())
}

#[cfg(not(feature = "dpdk"))]
fn sink_dpdk(_: &SinkArgs) -> Result<(), String> {
    Err(NO_DPDK.to_owned())
}

#[cfg(not(feature = "dpdk"))]
const NO_DPDK: &str =
    "this pktgen was built without DPDK: cargo build --release -p limpet-pktgen --features dpdk";

#[cfg(feature = "dpdk")]
mod with_dpdk {
    use super::{
        AtomicBool, DpdkArgs, Duration, Generator, Instant, Ordering, SendArgs, SinkArgs,
        realtime_nanos, send_loop, sink_loop, sink_report,
    };
    use limpet_dataplane::io::BURST;
    use limpet_dataplane::io::dpdk::{DpdkIo, Eal, EalConfig, Mempool, Port, PortConfig};
    use limpet_pktgen::dpdk::{ArpResponder, BackendOf, DpdkSender, receive_burst};
    use limpet_pktgen::sink::Sink;
    use std::sync::Arc;

    /// EAL, the mbuf pool and the ports pktgen drives (dropped in that
    /// order reversed: ports, pool, EAL).
    struct DpdkEnv {
        ports: Vec<Arc<Port>>,
        pool: Arc<Mempool>,
        _eal: Eal,
    }

    /// EAL up with `d`'s settings, a pool, and the ports named, started
    /// and (within `d.link_timeout`) with their link up.
    fn ports(d: &DpdkArgs, names: &[&str]) -> Result<DpdkEnv, String> {
        let vdevs: Vec<&str> = d.vdevs.iter().map(String::as_str).collect();
        let mut config = EalConfig::virtual_only(&d.dpdk_cpu.to_string(), &vdevs);
        config.memory_mb = Some(d.dpdk_memory_mb);
        config.extra.push("--no-telemetry".to_owned());
        config.extra.extend(d.eal.iter().cloned());
        let eal = Eal::init(&config).map_err(|e| e.to_string())?;
        let pool = Arc::new(
            Mempool::new(&eal, "pktgen_mbufs", 16_383, 256, -1).map_err(|e| e.to_string())?,
        );
        let mut out = Vec::new();
        for name in names {
            let id = eal.port_by_name(name).map_err(|e| {
                format!(
                    "{e} (create it with --vdev; EAL has {} ports)",
                    eal.port_count()
                )
            })?;
            let port = Port::start(&eal, id, &PortConfig::default(), &[Arc::clone(&pool)])
                .map_err(|e| e.to_string())?;
            out.push(Arc::new(port));
        }
        let deadline = Instant::now() + Duration::from_secs_f64(d.link_timeout.max(0.0));
        for port in &out {
            let mut told = false;
            while !port.link().map_err(|e| e.to_string())?.up {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{}: link down after {} s",
                        port.name(),
                        d.link_timeout
                    ));
                }
                if !told {
                    eprintln!("pktgen: waiting for {}'s link (a memif peer?)", port.name());
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(DpdkEnv {
            ports: out,
            pool,
            _eal: eal,
        })
    }

    pub(super) fn send_dpdk(a: &SendArgs) -> Result<(), String> {
        let DpdkEnv { ports, pool, _eal } = ports(&a.dpdk, &[a.iface.as_str()])?;
        let our_mac = ports[0].mac().map_err(|e| e.to_string())?;
        let io = DpdkIo::new(&ports, 0).map_err(|e| e.to_string())?;
        let mut sender = DpdkSender::new(io, pool);
        let mut transmit = |generator: &mut Generator,
                            n: usize,
                            stop: &AtomicBool,
                            deadline: Option<Instant>,
                            _: &mut Option<String>| {
            let (mut built, mut sent) = (0, 0);
            while sent < n {
                let (b, s) = sender.send(generator, n - built, realtime_nanos);
                built += b;
                sent += s;
                if b + s == 0 {
                    if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            (sent as u64, (built - sent) as u64)
        };
        let result = send_loop(a, our_mac, &mut transmit);
        // Frames the port took may still sit in its ring; a memif peer
        // drops what is left there when this end disconnects, so give it a
        // moment to read them before the port closes.
        std::thread::sleep(Duration::from_millis(200));
        result
    }

    pub(super) fn sink_dpdk(a: &SinkArgs) -> Result<(), String> {
        let names: Vec<&str> = a
            .ifaces
            .iter()
            .map(|s| s.split_once('=').map_or(s.as_str(), |(i, _)| i))
            .collect();
        let DpdkEnv { ports, pool, _eal } = ports(&a.dpdk, &names)?;
        let macs: Vec<Option<[u8; 6]>> = ports.iter().map(|p| p.mac().ok()).collect();
        let acc = if a.backend_addrs.is_empty() {
            super::with_macs(a, &macs)
        } else {
            // One backend per address (and "other"), all behind the ports.
            let labels: Vec<String> = a
                .backend_addrs
                .iter()
                .map(ToString::to_string)
                .chain(["other".to_owned()])
                .collect();
            let by_addr = SinkArgs {
                ifaces: labels,
                ..a.clone()
            };
            super::with_macs(&by_addr, &vec![macs[0]; a.backend_addrs.len() + 1])
        };
        let by = if a.backend_addrs.is_empty() {
            BackendOf::Port
        } else {
            BackendOf::Destination(&a.backend_addrs)
        };
        let mut io = DpdkIo::new(&ports, 0).map_err(|e| e.to_string())?;
        let mut burst = Vec::with_capacity(BURST);
        let drops = || {
            ports
                .iter()
                .filter_map(|p| p.stats().ok())
                .map(|s| s.rx_missed + s.rx_nombuf)
                .sum::<u64>()
        };
        let before = drops();
        let mut arp = (!a.answer_arp.is_empty()).then(|| {
            let macs = macs.iter().map(|m| m.unwrap_or([0; 6])).collect();
            ArpResponder::new(Arc::clone(&pool), macs, a.answer_arp.clone())
        });
        let mut receive = |acc: &mut Sink| {
            if receive_burst(&mut io, &mut burst, acc, realtime_nanos(), by, arp.as_mut()) == 0 {
                std::hint::spin_loop();
            }
            Ok(())
        };
        let (acc, elapsed) = sink_loop(a, &names, acc, &mut receive)?;
        sink_report(a, &acc, drops() - before, elapsed)
    }
}

#[cfg(feature = "dpdk")]
use with_dpdk::{send_dpdk, sink_dpdk};

/// The sending loop, whatever the I/O: pacing, deadline, count, report.
fn send_loop(a: &SendArgs, our_mac: [u8; 6], transmit: &mut Transmit<'_>) -> Result<(), String> {
    let (plan, mut generator) = generator_for(a, our_mac)?;
    let stop = stop_flag()?;
    let start = Instant::now();
    let deadline = a.duration.map(|d| start + Duration::from_secs_f64(d));
    let limit = a.count.unwrap_or(u64::MAX);
    let mut pacer = a.rate.map(|r| Pacer::new(r, BURST as u32, 0));
    let (mut sent, mut errors) = (0u64, 0u64);
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
        first_tx_ns.get_or_insert_with(realtime_nanos);
        let (taken, failed) =
            transmit(&mut generator, n as usize, &stop, deadline, &mut last_error);
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

/// A sink whose backends are `a`'s interfaces, counting frames sent to
/// `macs[i]` only (any MAC where `None`).
fn with_macs(a: &SinkArgs, macs: &[Option<[u8; 6]>]) -> Sink {
    let mut backends = Vec::new();
    for (spec, mac) in a.ifaces.iter().zip(macs) {
        let (iface, label) = spec.split_once('=').unwrap_or((spec, spec));
        if mac.is_none() && !a.any_mac {
            eprintln!("pktgen: {iface}: MAC unknown, counting frames to any MAC");
        }
        backends.push(BackendSpec {
            name: label.to_owned(),
            mac: if a.any_mac { None } else { *mac },
        });
    }
    Sink::new(
        backends,
        Filter {
            proto: a.proto.map(Into::into),
            dst_port: a.dst_port,
            stamped: a.stamp,
        },
    )
}

fn sink(a: &SinkArgs) -> Result<(), String> {
    let names: Vec<&str> = a
        .ifaces
        .iter()
        .map(|s| s.split_once('=').map_or(s.as_str(), |(i, _)| i))
        .collect();
    if a.io == IoKind::Dpdk {
        return sink_dpdk(a);
    }
    if !a.answer_arp.is_empty() || !a.backend_addrs.is_empty() {
        return Err("--answer-arp and --backend-addr need --io dpdk".to_owned());
    }
    let macs: Vec<Option<[u8; 6]>> = names.iter().map(|i| iface_mac(i)).collect();
    let acc = with_macs(a, &macs);
    let opts = AfPacketOptions {
        promisc: true,
        ..AfPacketOptions::default()
    };
    let mut io = AfPacketIo::open(&names, &opts).map_err(|e| e.to_string())?;
    let mut burst = Vec::with_capacity(BURST);
    let mut last_health = Instant::now();
    let mut receive = |acc: &mut Sink| -> Result<(), String> {
        if io.rx_burst(&mut burst) == 0 {
            return io
                .wait(Some(Duration::from_millis(20)))
                .map(drop)
                .map_err(|e| e.to_string());
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
        Ok(())
    };
    let (acc, elapsed) = sink_loop(a, &names, acc, &mut receive)?;
    sink_report(a, &acc, io.stats().rx_dropped_by_kernel, elapsed)
}

/// The receiving loop, whatever the I/O: until the duration or a signal.
/// Returns the accounts and the seconds it ran.
fn sink_loop(
    a: &SinkArgs,
    names: &[&str],
    mut acc: Sink,
    receive: &mut dyn FnMut(&mut Sink) -> Result<(), String>,
) -> Result<(Sink, f64), String> {
    let stop = stop_flag()?;
    let start = Instant::now();
    let deadline = a.duration.map(|d| start + Duration::from_secs_f64(d));
    eprintln!("pktgen: sink on {} ready", names.join(","));
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        receive(&mut acc)?;
    }
    Ok((acc, start.elapsed().as_secs_f64()))
}

/// Writes the sink's report; `drops` are frames the interface dropped.
fn sink_report(a: &SinkArgs, acc: &Sink, drops: u64, elapsed_s: f64) -> Result<(), String> {
    let report = acc.tally(drops).report(elapsed_s);
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

fn decap(a: &DecapArgs) -> Result<(), String> {
    let into_mac = RawSocket::open(&a.into).map_err(|e| e.to_string())?.mac();
    let peer_mac = RawSocket::open(&a.peer).map_err(|e| e.to_string())?.mac();
    let mut io = AfPacketIo::open(
        &[a.on.as_str(), a.into.as_str()],
        &AfPacketOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let stop = stop_flag()?;
    let (mut rx, mut tx, mut other) = (
        Vec::with_capacity(BURST),
        Vec::with_capacity(BURST),
        Vec::with_capacity(BURST),
    );
    let (mut unwrapped, mut ignored) = (0u64, 0u64);
    eprintln!("pktgen: decapsulating on {} into {} ready", a.on, a.into);
    while !stop.load(Ordering::Relaxed) {
        if io.rx_burst(&mut rx) == 0 {
            io.wait(Some(Duration::from_millis(1)))
                .map_err(|e| e.to_string())?;
            continue;
        }
        for mut buf in rx.drain(..) {
            let found = (buf.port() == 0)
                .then(|| limpet_pktgen::decap::inner(buf.data(), &a.addresses, a.gue_port))
                .flatten();
            let Some(inner) = found else {
                ignored += 1;
                other.push(buf);
                continue;
            };
            let frame = buf.data_mut();
            frame.copy_within(inner.at..inner.at + inner.len, 14);
            frame[0..6].copy_from_slice(&peer_mac.0);
            frame[6..12].copy_from_slice(&into_mac.0);
            let ethertype: u16 = if inner.version == 4 { 0x0800 } else { 0x86dd };
            frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
            buf.truncate(14 + inner.len);
            buf.set_port(1);
            tx.push(buf);
            unwrapped += 1;
        }
        io.tx_burst(&mut tx);
        io.free_burst(&mut other);
    }
    let report = serde_json::json!({ "unwrapped": unwrapped, "ignored": ignored });
    let table = format!("unwrapped {unwrapped} packets, ignored {ignored}\n");
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
        Cmd::Decap(a) => decap(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pktgen: {e}");
            ExitCode::FAILURE
        }
    }
}
