//! The `limpet` command.
// Doc comments here are `--help` text, written for a terminal, not rustdoc.
#![allow(clippy::doc_markdown)]

use clap::{Args, Parser, Subcommand};
use limpet_control::announce::AnnounceOptions;
use limpet_control::run::{
    Idle, IoBackend, IoKind, Link, RunOptions, Source, parse_interface_addr, parse_io,
};
use limpet_dataplane::flow::FlowTimeouts;
use limpet_dataplane::neighbour::InterfaceAddr;
use limpet_dataplane::pipeline::WorkerConfig;
use limpet_dataplane::snapshot::ForwardMode;
use limpet_dataplane::wire::MacAddr;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

/// limpet: a user-space L4 load balancer for Kubernetes Services, with
/// `sessionAffinity: ClientIP` at line rate.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the load balancer on one or more interfaces.
    Run(Box<RunArgs>),
    /// Inspect and edit the affinity table of a running limpet.
    Affinity {
        /// Address of the running limpet's admin API.
        #[arg(long, default_value = DEFAULT_ADMIN, global = true)]
        admin: SocketAddr,
        /// A file holding the token the admin API wants (its
        /// `--admin-token-file`).
        #[arg(long, value_name = "PATH", global = true)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        action: AffinityAction,
    },
    /// Drain an endpoint (`ADDR`: every port of it, or `ADDR:PORT`) or this
    /// whole node (`node`: its announced routes are withdrawn) with a
    /// deadline: a draining endpoint takes no new client, its sticky
    /// clients and open connections stay until the deadline, then its
    /// sticky clients re-pick while open connections stay until they end.
    /// Without TARGET: every drain and its progress.
    Drain {
        /// `node`, an endpoint address, or an address and port.
        target: Option<String>,
        /// How long sticky clients keep the endpoint (`300s`, `5m`, `1h`).
        #[arg(long, default_value = "300s")]
        deadline: String,
        /// End the drain of TARGET: it takes new clients again.
        #[arg(long, requires = "target")]
        cancel: bool,
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
        /// Address of the running limpet's admin API.
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin: SocketAddr,
        /// A file holding the token the admin API wants.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
    },
    /// Show a running limpet's state: readiness, its snapshot, and which
    /// service addresses it announces to the tier's routers, and why.
    Status {
        /// Address of the running limpet's admin API.
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin: SocketAddr,
        /// A file holding the token the admin API wants.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// Print the admin API's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Run the packet pipeline in memory on a built-in example Service:
    /// many clients open connections, each sticks to one backend; then one
    /// endpoint is removed and only its clients move. Needs no privileges.
    Demo {
        /// Number of client addresses (from 198.18.0.0/15).
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Number of backends (endpoints) behind the Service.
        #[arg(long, default_value_t = 3)]
        backends: usize,
        /// New connections each client opens before the endpoint is removed.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// The Service's `sessionAffinityConfig.clientIP.timeoutSeconds`.
        #[arg(long, default_value_t = 10800, value_parser = clap::value_parser!(u32).range(1..=86400))]
        timeout: u32,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A YAML file, or a directory of them, holding Kubernetes v1/Service
    /// and discovery.k8s.io/v1/EndpointSlice objects as `kubectl get -o
    /// yaml` prints them (multi-document files and `kind: List` accepted).
    /// Changes are picked up while running (file notification, or SIGHUP);
    /// an invalid change is refused and the previous configuration stays.
    /// Without --config, limpet watches the Kubernetes API instead.
    #[arg(long, value_name = "PATH", conflicts_with = "kubeconfig")]
    config: Option<PathBuf>,
    /// Watch Services and EndpointSlices through the Kubernetes API with
    /// this kubeconfig. Without it (and without --config), the in-cluster
    /// configuration of the pod's service account is used. Nothing is
    /// served until both initial lists are complete; if the API server
    /// becomes unreachable the last state keeps being served and /readyz
    /// reports not ready.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Packet I/O. `afpacket:IFACE[,IFACE2]` drives kernel interfaces with
    /// AF_PACKET rings. `afxdp:IFACE[,IFACE2]` drives them with AF_XDP
    /// sockets behind limpet's XDP program, which takes only limpet's
    /// traffic and leaves the rest to the host (worker i on receive queue
    /// i). `dpdk:PORT[,PORT2]` drives DPDK ports, each named
    /// by PCI address (0000:3b:00.0, bound to vfio-pci) or by the name of a
    /// virtual device given with --vdev (net_af_packet0, net_af_xdp0,
    /// net_memif0, virtio_user0, net_ring0, net_null0); needs a limpet
    /// built with `--features dpdk`. Two ports: list the client-facing one
    /// first. limpet owns its ports: it answers ARP/ND itself and does not
    /// use the kernel's IP stack on them.
    #[arg(long = "io", value_name = "BACKEND")]
    io: String,
    /// Number of poll-mode workers, each with its own tables. AF_PACKET:
    /// one socket per worker in a fanout group steered by client address.
    /// DPDK: one RX/TX queue pair per worker on every port, each worker on
    /// its own EAL lcore; a client's packets reach one worker through RSS
    /// on the client address where the ports can, by software steering
    /// between workers otherwise.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// AF_PACKET: pin worker i to the i-th CPU of this list (e.g.
    /// `--cpus 2,3`), so each poll-mode worker owns a core; give one CPU per
    /// worker. Without it the scheduler places them. (DPDK workers run on
    /// EAL lcores: see --dpdk-cores / --dpdk-lcores.)
    #[arg(long, value_delimiter = ',', value_name = "CPU,...")]
    cpus: Vec<usize>,
    /// How packets reach backends: `nat` rewrites the destination to the
    /// endpoint and translates replies back (kube-proxy's model); `dsr`
    /// only rewrites the destination MAC (the endpoint holds the service
    /// address and replies to the client directly, as IPVS DR); `fullnat`
    /// also rewrites the source, to limpet's address (--snat-address, or
    /// its --address on the endpoint's subnet) and a port of the worker's,
    /// so endpoints need no route back to clients through limpet. Under
    /// `nat` a client the endpoint would answer directly (the endpoint
    /// itself, or a neighbour on its --address subnet) is source-translated
    /// the same way, as kube-proxy masquerades hairpin traffic. `ipip`
    /// and `gue` are direct server return through a tunnel: the packet,
    /// untouched, goes to the endpoint inside IP-in-IP (IPv6-in-IPv6) or
    /// GUE (IP in UDP to --gue-port), so endpoints may be behind routers;
    /// each decapsulates with its kernel's tunnel device, holds the service
    /// address and replies to the client directly.
    #[arg(long, value_enum, default_value_t = Forward::Nat)]
    forward: Forward,
    /// `ipip` / `gue`: the outer source addresses, as a prefix (one per
    /// family at most, repeatable): each connection's outer source takes
    /// its host bits from the connection's hash, so the endpoints' NICs
    /// spread connections over their receive queues (e.g. 198.18.128.0/20).
    /// Without one of a family: limpet's first --address of the family,
    /// alone. Endpoints' tunnel devices must accept these sources.
    #[arg(long = "tunnel-source", value_name = "ADDR/PREFIX", value_parser = parse_interface_addr)]
    tunnel_sources: Vec<InterfaceAddr>,
    /// `gue`: the UDP port endpoints decapsulate on (their `ip fou add
    /// port N gue`).
    #[arg(long, value_name = "PORT", default_value_t = limpet_dataplane::encap::DEFAULT_GUE_PORT)]
    gue_port: u16,
    /// `ipip` / `gue`: the largest outer packet the path to the endpoints
    /// carries (its smallest link MTU); the interface's MTU bounds it in
    /// any case. A client packet that would not fit once wrapped is
    /// answered with "fragmentation needed" / "packet too big" carrying
    /// the room left, so the client's path MTU discovery adapts.
    #[arg(long, value_name = "BYTES", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=65535))]
    tunnel_mtu: u16,
    /// `fullnat`'s source address, one per family at most (repeatable).
    /// Without one of a family: limpet's --address on the endpoint's
    /// subnet, else its first --address of the family. Replies to it must
    /// reach limpet (it answers ARP/ND for it only if it is an --address).
    #[arg(long = "snat-address", value_name = "IP")]
    snat_addresses: Vec<IpAddr>,
    /// Source ports for source-translated connections (FIRST-LAST). Worker
    /// k of n takes the ports p with p % n == k, so replies are steered to
    /// it by port; a worker that finds none free refuses the connection
    /// and counts it (`snat_ports_exhausted`).
    #[arg(long, value_name = "FIRST-LAST", default_value = "1024-65535", value_parser = parse_port_range)]
    snat_ports: (u16, u16),
    /// This node's name, for `internalTrafficPolicy` / `externalTrafficPolicy: Local`
    /// (endpoints whose `nodeName` matches are local). Defaults to the host name.
    #[arg(long)]
    node_name: Option<String>,
    /// This node's addresses, on which NodePorts are served. Repeatable.
    /// With the Kubernetes API and none given, the `InternalIP` and
    /// `ExternalIP` addresses of the Node named `--node-name`; with a
    /// manifest directory and none given, limpet's own `--address`es (as
    /// kube-proxy serves NodePorts on every node address).
    #[arg(long = "node-address", value_name = "IP")]
    node_addresses: Vec<IpAddr>,
    /// This node's zone (its `topology.kubernetes.io/zone` label). With it,
    /// Services that ask for topology-aware routing (the `topology-mode:
    /// Auto` annotation, or `trafficDistribution: PreferClose`) send
    /// cluster traffic to the endpoints hinted for this zone, as kube-proxy
    /// does. With the Kubernetes API and none given, the Node's label.
    #[arg(long)]
    node_zone: Option<String>,
    /// An address limpet owns on an interface, with its prefix
    /// (e.g. 203.0.113.1/24, or lb1=203.0.113.1/24 to name the interface
    /// when --io has several; unnamed means the first). limpet answers
    /// ARP/ND for it, sends its own ARP/ND requests from it, and treats its
    /// subnet as on-link there: backends on it are reached through that
    /// interface. Repeatable.
    #[arg(long = "address", value_name = "[IFACE=]ADDR/PREFIX", value_parser = parse_on_iface::<InterfaceAddr>)]
    addresses: Vec<(Option<String>, InterfaceAddr)>,
    /// Next hop for backends outside every --address subnet of an
    /// interface ([IFACE=]IP; unnamed means the first), one per family
    /// and interface. Repeatable.
    #[arg(long = "gateway", value_name = "[IFACE=]IP", value_parser = parse_on_iface::<IpAddr>)]
    gateways: Vec<(Option<String>, IpAddr)>,
    /// MAC address to send from; defaults to the interface's.
    #[arg(long, value_parser = parse_mac)]
    mac: Option<MacAddr>,
    /// Where the admin API listens (metrics, readiness, and `/v1`: the
    /// services and the affinity table, which it can delete). A
    /// non-loopback address needs `--admin-token-file`.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    admin: SocketAddr,
    /// A file holding a secret that `/v1` on the admin API then requires
    /// as `Authorization: Bearer <secret>` (`limpet affinity --token-file`).
    #[arg(long, value_name = "PATH")]
    admin_token_file: Option<PathBuf>,
    /// A second listener serving only `/metrics`, `/healthz` and `/readyz`,
    /// read-only: where Prometheus in another pod scrapes (for example
    /// `0.0.0.0:9902`), with the admin API left on loopback.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Connections each worker can track per address family.
    #[arg(long, default_value_t = 1 << 20)]
    flow_capacity: usize,
    /// Sticky clients each worker can hold per address family (metric
    /// `limpet_affinity_capacity{family=...}`). When full, the entry
    /// closest to expiry among clients still on probation (no connection
    /// completed yet) is evicted, and a protected client only when none is
    /// on probation; both counted.
    #[arg(long, default_value_t = 1 << 20)]
    affinity_capacity: usize,
    /// The smallest Maglev table of a service port, in entries (2 bytes
    /// each). A service port with N endpoints gets the smallest prime above
    /// a power of two that is at least max(100 x N, this), so its table
    /// changes size only when N doubles. 65537 gives every service port of
    /// up to 655 endpoints Maglev's classic table (128 KiB each). Every
    /// limpet serving the same clients must use the same value.
    #[arg(
        long,
        value_name = "ENTRIES",
        default_value_t = limpet_control::translate::DEFAULT_MAGLEV_MIN_SIZE as u32,
        value_parser = clap::value_parser!(u32).range(1..=8_388_617),
    )]
    maglev_min_size: u32,
    /// The IPv4 prefix length that identifies a `ClientIP` client, for
    /// Services without the limpet.io/affinity-ipv4-prefix annotation:
    /// clients within one /N share an entry and a backend. 32 (one address,
    /// one client) is Kubernetes' behaviour.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u8).range(1..=32))]
    affinity_ipv4_prefix: u8,
    /// The same for IPv6 (limpet.io/affinity-ipv6-prefix); 64 keeps a host
    /// that rotates its privacy addresses within its /64 on one backend.
    #[arg(long, value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u8).range(1..=128))]
    affinity_ipv6_prefix: u8,
    /// How a `ClientIP` client without a live entry (new or expired) is
    /// placed, for Services without the limpet.io/affinity-repick
    /// annotation: client-ip (Maglev over its address: it usually returns
    /// to the same pod, and every node agrees) or connection (over the
    /// connection's 5-tuple: load spreads again after expiry).
    #[arg(long, value_enum, default_value_t = RepickArg::ClientIp)]
    affinity_repick: RepickArg,
    /// What workers do when there is no traffic.
    #[arg(long, value_enum, default_value_t = Idle::Spin)]
    idle: Idle,
    /// Keep the affinity and connection tables across restarts in this
    /// file: written when limpet stops on SIGTERM / SIGINT and every
    /// --state-interval, read at start (a file that is torn, corrupt or of
    /// another version is refused, said in the log, and limpet starts with
    /// empty tables). Without it, tables start empty on every start.
    #[arg(long, value_name = "PATH")]
    state_file: Option<PathBuf>,
    /// Seconds between checkpoints of the tables to --state-file, which
    /// bounds what a crash loses; 0 saves only on a planned stop.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 10,
        requires = "state_file"
    )]
    state_interval: u64,
    /// At start, how long to wait for an interface that is down or has no
    /// carrier yet (at boot, or in a namespace whose link comes up a
    /// moment later) before giving up. 0 fails at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    link_wait: u64,
    /// With --io afxdp: where limpet's XDP program runs. `auto`: in the
    /// driver where it can, in the kernel's generic hook otherwise;
    /// `native`: in the driver or not at all; `generic`: in the generic
    /// hook, after receive steering (RPS), which on a veth keeps its cost
    /// on the CPUs given the interface's receive work.
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    xdp_mode: XdpModeArg,
    /// With --io afpacket: overload shedding. limpet attaches its XDP
    /// program in shedding mode: it passes every frame to the kernel, as
    /// without it, except limpet's own traffic while a worker's receive
    /// ring is backed up, which it then drops in the driver before the
    /// kernel spends its receive path on it (otherwise a flood above what
    /// the workers can forward takes their CPUs: receive livelock).
    /// `auto`: in the driver where it can, the generic hook otherwise;
    /// `native`, `generic` as for --xdp-mode; `off`: no program. If it
    /// cannot be attached (another XDP program is there, no BPF) limpet
    /// says so and runs without it; it never replaces another program.
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    shed: ShedArg,
    /// Announce each LoadBalancer ingress address and external IP this
    /// node can serve through this node's BGP speaker (only `bird`: BIRD 2):
    /// limpet writes --bird-fragment, which bird.conf includes, and has
    /// BIRD reconfigure over its control socket. Every route is via --announce-link, a device
    /// that exists only while limpet runs: BIRD withdraws the routes when
    /// limpet dies, however it dies.
    #[arg(long, value_enum, value_name = "SPEAKER")]
    announce: Option<SpeakerArg>,
    /// The BIRD configuration fragment limpet owns (protocols `limpet4`
    /// and `limpet6`; export them with `where proto = "limpet4"`).
    #[arg(long, value_name = "PATH", default_value = "/etc/bird/limpet.conf")]
    bird_fragment: PathBuf,
    /// BIRD's control socket.
    #[arg(long, value_name = "PATH", default_value = "/run/bird/bird.ctl")]
    birdc_socket: PathBuf,
    /// The liveness link limpet creates (a TUN device; it must not exist).
    #[arg(long, value_name = "NAME", default_value = "limpet0")]
    announce_link: String,
    /// Do not answer ICMP/ICMPv6 echo requests (ping) to limpet's own
    /// --address es and to service addresses (answered by default).
    #[arg(long)]
    no_echo: bool,
    /// ICMP/ICMPv6 port unreachables each worker sends per second, at
    /// most, for packets to a service port without a usable endpoint or to
    /// a port a service address does not define (kube-proxy's reject); 0
    /// drops such packets silently instead.
    #[arg(long, value_name = "PER_SECOND", default_value_t = limpet_dataplane::icmp::DEFAULT_REJECT_RATE)]
    icmp_reject_rate: u32,
    #[command(flatten)]
    dpdk: DpdkArgs,
}

/// EAL settings for `--io dpdk:...`, in limpet's own words.
#[derive(Debug, Args)]
#[command(next_help_heading = "DPDK (--io dpdk:...)")]
struct DpdkArgs {
    /// The cores EAL uses (its `-l`: `2-4` or `2,4,6`). The first is the
    /// main lcore (control thread, admin API, neighbour threads); each
    /// worker gets one of the rest, in order, pinned there. Default: every
    /// core.
    #[arg(long, value_name = "LIST", conflicts_with = "dpdk_lcores")]
    dpdk_cores: Option<String>,
    /// An lcore-to-CPU map instead (EAL's `--lcores`, e.g. `0@0,1@2,2@4`
    /// or `(0-2)@0` to run three lcores on CPU 0 on a small host).
    #[arg(long, value_name = "MAP")]
    dpdk_lcores: Option<String>,
    /// Memory EAL preallocates, in MiB (its `-m`). Default with
    /// --dpdk-no-huge: 512.
    #[arg(long, value_name = "MIB")]
    dpdk_memory: Option<u32>,
    /// Run on ordinary pages (no hugepages): virtual devices, tests,
    /// small hosts. On bare metal set hugepages up with
    /// scripts/dpdk-setup --hugepages N instead.
    #[arg(long)]
    dpdk_no_huge: bool,
    /// A virtual device for EAL (`--vdev`), repeatable: e.g.
    /// `net_af_packet0,iface=eth1`, `net_af_xdp0,iface=eth1`,
    /// `net_memif0,role=server,socket=/run/limpet.memif`,
    /// `virtio_user0,path=/dev/vhost-net,queues=2,iface=tap0`. Name its
    /// port in --io (`dpdk:net_af_packet0`).
    #[arg(long = "vdev", value_name = "DEVICE[,ARGS]")]
    vdevs: Vec<String>,
    /// A PCI device EAL may use (its `-a` allow list), repeatable. Without
    /// any, and with only virtual devices named in --io, PCI is not
    /// scanned at all.
    #[arg(long = "pci", value_name = "ADDRESS")]
    pci: Vec<String>,
    /// Prefix of EAL's runtime files, for DPDK's multi-process tools
    /// (dpdk-proc-info). Without it EAL keeps no shared files
    /// (`--in-memory`, or `--no-shconf` with --dpdk-no-huge).
    #[arg(long, value_name = "NAME")]
    dpdk_file_prefix: Option<String>,
    /// Mbufs in each pool. Default: enough for every queue and ring.
    #[arg(long, value_name = "N")]
    dpdk_mbufs: Option<u32>,
    /// Descriptors in each RX and each TX queue.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    dpdk_descriptors: u16,
    /// Any other EAL argument, passed as given (repeatable), e.g.
    /// `--dpdk-eal=--log-level=pmd.net.af_xdp:debug`.
    #[arg(long = "dpdk-eal", value_name = "ARG", allow_hyphen_values = true)]
    dpdk_eal: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ShedArg {
    Auto,
    Native,
    Generic,
    Off,
}

/// BGP speakers limpet can drive (see `limpet_control::announce`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SpeakerArg {
    Bird,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RepickArg {
    ClientIp,
    Connection,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Forward {
    Nat,
    Dsr,
    #[value(name = "fullnat")]
    FullNat,
    Ipip,
    Gue,
}

/// Parses `FIRST-LAST`, an inclusive port range.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (first, last) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 1024-65535"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|e| format!("{s:?}: port {p:?}: {e}"))
    };
    let (first, last) = (port(first)?, port(last)?);
    if first == 0 || last < first {
        return Err(format!(
            "{s:?}: the range must run upwards from port 1 or above"
        ));
    }
    Ok((first, last))
}

/// Parses `[IFACE=]VALUE`.
fn parse_on_iface<T: ParseOnIface>(s: &str) -> Result<(Option<String>, T), String> {
    match s.split_once('=') {
        Some((iface, value)) => Ok((Some(iface.to_string()), T::parse(value)?)),
        None => Ok((None, T::parse(s)?)),
    }
}

trait ParseOnIface: Sized + Clone + Send + Sync + 'static {
    fn parse(s: &str) -> Result<Self, String>;
}

impl ParseOnIface for InterfaceAddr {
    fn parse(s: &str) -> Result<Self, String> {
        parse_interface_addr(s)
    }
}

impl ParseOnIface for IpAddr {
    fn parse(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e| format!("{s:?}: {e}"))
    }
}

/// Groups addresses and gateways under the interfaces of `--io`.
fn links(
    interfaces: Vec<String>,
    addresses: Vec<(Option<String>, InterfaceAddr)>,
    gateways: Vec<(Option<String>, IpAddr)>,
) -> Result<Vec<Link>, String> {
    let mut links: Vec<Link> = interfaces
        .into_iter()
        .map(|iface| Link {
            iface,
            addresses: Vec::new(),
            gateways: Vec::new(),
        })
        .collect();
    let index = |links: &[Link], iface: Option<&str>| -> Result<usize, String> {
        match iface {
            None => Ok(0),
            Some(name) => links
                .iter()
                .position(|l| l.iface == name)
                .ok_or_else(|| format!("{name} is not one of the --io interfaces")),
        }
    };
    for (iface, addr) in addresses {
        let i = index(&links, iface.as_deref())?;
        links[i].addresses.push(addr);
    }
    for (iface, gw) in gateways {
        let i = index(&links, iface.as_deref())?;
        if links[i]
            .gateways
            .iter()
            .any(|g| g.is_ipv4() == gw.is_ipv4())
        {
            return Err(format!(
                "two {} gateways for {}",
                if gw.is_ipv4() { "IPv4" } else { "IPv6" },
                links[i].iface
            ));
        }
        links[i].gateways.push(gw);
    }
    Ok(links)
}

fn parse_mac(s: &str) -> Result<MacAddr, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?}: expected six colon-separated hex bytes"));
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|e| format!("{s:?}: {e}"))?;
    }
    Ok(MacAddr(mac))
}

#[derive(Debug, Subcommand)]
enum AffinityAction {
    /// List sticky clients: client, service port, backend, age, expires in.
    List {
        /// Only this service (`namespace/name`) or service port
        /// (`namespace/name:port/PROTOCOL`).
        #[arg(long)]
        service: Option<String>,
        /// Only this client address.
        #[arg(long)]
        client: Option<IpAddr>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one client's entries across all service ports.
    Get {
        client: IpAddr,
        #[arg(long)]
        json: bool,
    },
    /// Forget one client's entries (its next connection is balanced afresh).
    Delete {
        client: IpAddr,
        /// Only for this service or service port.
        #[arg(long)]
        service: Option<String>,
    },
    /// Forget every entry, or every entry of one service.
    Flush {
        /// `namespace/name` or `namespace/name:port/PROTOCOL`.
        service: Option<String>,
    },
}

/// The secret in `path`, without surrounding whitespace; never empty.
fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(format!(
            "the token file {} must hold one word, the token",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

fn affinity(
    admin: &limpet_control::client::AdminApi,
    action: AffinityAction,
) -> Result<String, limpet_control::client::ClientError> {
    use limpet_control::client;
    match action {
        AffinityAction::List {
            service,
            client: who,
            json,
        } => {
            let list = client::list(admin, service.as_deref(), who)?;
            Ok(if json {
                serde_json::to_string_pretty(&list)? + "\n"
            } else {
                client::render_table(&list)
            })
        }
        AffinityAction::Get { client: who, json } => {
            let list = client::list(admin, None, Some(who))?;
            Ok(if json {
                serde_json::to_string_pretty(&list)? + "\n"
            } else {
                client::render_table(&list)
            })
        }
        AffinityAction::Delete {
            client: who,
            service,
        } => {
            let n = client::delete(admin, who, service.as_deref())?;
            Ok(format!("deleted {n} entries\n"))
        }
        AffinityAction::Flush { service } => {
            let n = client::flush(admin, service.as_deref())?;
            Ok(format!("flushed {n} entries\n"))
        }
    }
}

/// The I/O backend `--io` names, with its settings.
#[cfg_attr(feature = "dpdk", allow(clippy::unnecessary_wraps))]
fn io_backend(kind: IoKind, ports: &[String], args: &RunArgs) -> Result<IoBackend, String> {
    match kind {
        IoKind::AfPacket => Ok(IoBackend::AfPacket(match args.shed {
            ShedArg::Off => None,
            ShedArg::Auto => Some(limpet_dataplane::io::afxdp::XdpAttach::Auto),
            ShedArg::Native => Some(limpet_dataplane::io::afxdp::XdpAttach::Native),
            ShedArg::Generic => Some(limpet_dataplane::io::afxdp::XdpAttach::Generic),
        })),
        IoKind::AfXdp => Ok(IoBackend::AfXdp(match args.xdp_mode {
            XdpModeArg::Auto => limpet_dataplane::io::afxdp::XdpAttach::Auto,
            XdpModeArg::Native => limpet_dataplane::io::afxdp::XdpAttach::Native,
            XdpModeArg::Generic => limpet_dataplane::io::afxdp::XdpAttach::Generic,
        })),
        #[cfg(feature = "dpdk")]
        IoKind::Dpdk => {
            let d = &args.dpdk;
            let mut eal = limpet_dataplane::io::dpdk::EalConfig {
                cores: d.dpdk_cores.clone(),
                memory_mb: d.dpdk_memory.or(d.dpdk_no_huge.then_some(512)),
                no_huge: d.dpdk_no_huge,
                // PCI addresses have colons; virtual devices' names do not.
                no_pci: d.pci.is_empty() && ports.iter().all(|p| !p.contains(':')),
                pci_allow: d.pci.clone(),
                vdevs: d.vdevs.clone(),
                file_prefix: d.dpdk_file_prefix.clone(),
                log_level: Some("notice".to_owned()),
                ..Default::default()
            };
            if let Some(map) = &d.dpdk_lcores {
                eal.extra.push(format!("--lcores={map}"));
            }
            // No shared runtime files unless asked for a prefix. `--in-memory`
            // (hugepages without files) cannot go with `--no-huge`, which
            // has no hugepage files anyway.
            if d.dpdk_file_prefix.is_none() {
                if d.dpdk_no_huge {
                    eal.no_shconf = true;
                } else {
                    eal.extra.push("--in-memory".to_owned());
                }
            }
            eal.extra.extend(d.dpdk_eal.iter().cloned());
            Ok(IoBackend::Dpdk(limpet_control::dpdk::DpdkOptions {
                eal,
                mbufs: d.dpdk_mbufs,
                rx_descriptors: d.dpdk_descriptors,
                tx_descriptors: d.dpdk_descriptors,
                ..Default::default()
            }))
        }
        #[cfg(not(feature = "dpdk"))]
        IoKind::Dpdk => {
            let _ = (ports, args);
            Err(
                "this limpet was built without DPDK: build it with `--features dpdk` \
                 (needs libdpdk-dev, scripts/dpdk-setup)"
                    .to_owned(),
            )
        }
    }
}

/// Source NAT as the flags give it: `--snat-address`, `--snat-ports`, and
/// limpet's `--address`es with their subnets (hairpin, and `fullnat`'s
/// default source).
fn snat_config(
    (addresses, (first, last), workers): (Vec<IpAddr>, (u16, u16), u16),
    mode: ForwardMode,
    links: &[Link],
) -> Result<limpet_dataplane::snat::SnatConfig, String> {
    for v4 in [true, false] {
        if addresses.iter().filter(|a| a.is_ipv4() == v4).count() > 1 {
            return Err("--snat-address: give at most one address per family".to_owned());
        }
    }
    if u32::from(last - first) + 1 < u32::from(workers) {
        return Err(format!(
            "--snat-ports {first}-{last} has fewer ports than the {workers} workers that share it"
        ));
    }
    let snat = limpet_dataplane::snat::SnatConfig {
        ports: limpet_dataplane::snat::SnatPorts {
            first,
            last,
            // Each worker's index is filled in as it is built.
            worker: 0,
            workers,
        },
        subnets: links
            .iter()
            .flat_map(|l| l.addresses.iter().map(|a| (a.addr, a.prefix)))
            .collect(),
        fullnat: addresses,
    };
    if mode == ForwardMode::FullNat && snat.subnets.is_empty() && snat.fullnat.is_empty() {
        return Err(
            "--forward fullnat needs a source address: give --address or --snat-address".to_owned(),
        );
    }
    Ok(snat)
}

/// Encapsulated DSR as the flags give it: `--tunnel-source`, else
/// limpet's first `--address` of each family.
fn tunnel_config(
    sources: &[InterfaceAddr],
    (gue_port, mtu, workers): (u16, u16, u16),
    mode: ForwardMode,
    links: &[Link],
) -> Result<limpet_dataplane::encap::TunnelConfig, String> {
    let own = || links.iter().flat_map(|l| l.addresses.iter());
    let pick = |v4: bool| -> Result<Option<(IpAddr, u8)>, String> {
        let given: Vec<_> = sources.iter().filter(|s| s.addr.is_ipv4() == v4).collect();
        match given.as_slice() {
            [] => Ok(own()
                .find(|a| a.addr.is_ipv4() == v4)
                .map(|a| (a.addr, if v4 { 32 } else { 128 }))),
            [one] => Ok(Some((one.addr, one.prefix))),
            _ => Err("--tunnel-source: give at most one prefix per family".to_owned()),
        }
    };
    let v4 = pick(true)?;
    let v6 = pick(false)?;
    if mode.tunnel() != limpet_dataplane::encap::Tunnel::None && v4.is_none() && v6.is_none() {
        return Err(
            "--forward ipip / gue needs an outer source: give --address or --tunnel-source"
                .to_owned(),
        );
    }
    if mtu != 0 && mtu < 576 {
        return Err(format!("--tunnel-mtu {mtu}: below IPv4's minimum of 576"));
    }
    Ok(limpet_dataplane::encap::TunnelConfig {
        gue_port,
        source_v4: v4.and_then(|(a, p)| match a {
            IpAddr::V4(a) => Some((a, p)),
            IpAddr::V6(_) => None,
        }),
        source_v6: v6.and_then(|(a, p)| match a {
            IpAddr::V6(a) => Some((a, p)),
            IpAddr::V4(_) => None,
        }),
        mtu,
        workers,
    })
}

/// `--cpus` pins `AF_PACKET` workers, one CPU each.
fn check_cpus(args: &RunArgs, kind: IoKind) -> Result<(), String> {
    if !args.cpus.is_empty() && !matches!(kind, IoKind::AfPacket | IoKind::AfXdp) {
        return Err(
            "--cpus pins AF_PACKET and AF_XDP workers; DPDK workers run on the EAL \
                    lcores --dpdk-cores / --dpdk-lcores give"
                .to_owned(),
        );
    }
    if !args.cpus.is_empty() && args.cpus.len() != usize::from(args.workers) {
        return Err(format!(
            "--cpus names {} CPUs for {} workers: give one per worker",
            args.cpus.len(),
            args.workers
        ));
    }
    Ok(())
}

impl From<Forward> for ForwardMode {
    fn from(f: Forward) -> Self {
        match f {
            Forward::Nat => ForwardMode::Nat,
            Forward::Dsr => ForwardMode::Dsr,
            Forward::FullNat => ForwardMode::FullNat,
            Forward::Ipip => ForwardMode::Ipip,
            Forward::Gue => ForwardMode::Gue,
        }
    }
}

/// Where a manifest configuration's NodePorts are served: `--node-address`
/// if given, else every address limpet answers on.
fn manifest_node_addresses(given: Vec<IpAddr>, links: &[Link]) -> Vec<IpAddr> {
    let (addresses, from) = if given.is_empty() {
        let own = links
            .iter()
            .flat_map(|l| l.addresses.iter().map(|a| a.addr))
            .collect();
        (own, "--address")
    } else {
        (given, "--node-address")
    };
    tracing::info!(?addresses, from, "NodePorts served on");
    addresses
}

/// `limpet drain`: starts or cancels a drain if asked, then shows them all.
fn drain(
    api: &limpet_control::client::AdminApi,
    target: Option<&str>,
    deadline: &str,
    cancel: bool,
    json: bool,
) -> Result<String, String> {
    use limpet_control::client;
    let mut out = String::new();
    if let Some(target) = target {
        // Checked here too, so a typo is said before anything is sent.
        target
            .parse::<limpet_control::drain::DrainTarget>()
            .map_err(|e| e.to_string())?;
        if cancel {
            client::drain_cancel(api, target).map_err(|e| e.to_string())?;
            let _ = writeln!(out, "{target}: drain cancelled; it takes new clients again");
        } else {
            limpet_control::drain::parse_duration(deadline)?;
            client::drain_start(api, target, deadline).map_err(|e| e.to_string())?;
            let _ = writeln!(
                out,
                "{target}: draining; no new clients, sticky clients and open connections stay for {deadline}"
            );
        }
    }
    let drains = client::drains(api).map_err(|e| e.to_string())?;
    if json {
        return serde_json::to_string_pretty(&drains)
            .map(|j| j + "\n")
            .map_err(|e| e.to_string());
    }
    out.push_str(&client::render_drains(&drains));
    Ok(out)
}

/// `--announce` and the flags that go with it.
fn announce_options(args: &RunArgs) -> Option<AnnounceOptions> {
    args.announce.map(|SpeakerArg::Bird| AnnounceOptions {
        fragment: args.bird_fragment.clone(),
        socket: args.birdc_socket.clone(),
        link: args.announce_link.clone(),
    })
}

fn run(args: RunArgs) -> Result<(), String> {
    let announce = announce_options(&args);
    let (kind, interfaces) = parse_io(&args.io)?;
    let io = io_backend(kind, &interfaces, &args)?;
    check_cpus(&args, kind)?;
    let node_name = args.node_name.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "localhost".into(), |s| s.trim().to_string())
    });
    let mode = ForwardMode::from(args.forward);
    let affinity = limpet_control::translate::AffinityDefaults {
        v4_prefix: args.affinity_ipv4_prefix,
        v6_prefix: args.affinity_ipv6_prefix,
        repick: match args.affinity_repick {
            RepickArg::ClientIp => limpet_dataplane::snapshot::Repick::ClientIp,
            RepickArg::Connection => limpet_dataplane::snapshot::Repick::Connection,
        },
    };
    let links = links(interfaces, args.addresses, args.gateways)?;
    let source = match args.config {
        Some(path) => Source::Manifests(
            limpet_control::config::ConfigSource::new(
                path,
                mode,
                node_name,
                manifest_node_addresses(args.node_addresses, &links),
            )
            .with_maglev_min_size(args.maglev_min_size as usize)
            .with_node_zone(args.node_zone.clone())
            .with_affinity_defaults(affinity),
        ),
        None => Source::Kubernetes(limpet_control::kube_source::KubeOptions::new(
            args.kubeconfig,
            limpet_control::translate::TranslateContext {
                node_name: Some(node_name),
                node_addresses: args.node_addresses,
                mode,
                maglev_min_size: args.maglev_min_size as usize,
                node_zone: args.node_zone.clone(),
                affinity,
            },
        )),
    };
    let icmp = limpet_dataplane::icmp::IcmpConfig {
        echo: !args.no_echo,
        own_addrs: links
            .iter()
            .flat_map(|l| l.addresses.iter().map(|a| a.addr))
            .collect(),
        reject_rate: args.icmp_reject_rate,
    };
    let snat = snat_config(
        (args.snat_addresses, args.snat_ports, args.workers),
        mode,
        &links,
    )?;
    let tunnel = tunnel_config(
        &args.tunnel_sources,
        (args.gue_port, args.tunnel_mtu, args.workers),
        mode,
        &links,
    )?;
    let admin_token = args
        .admin_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let opts = RunOptions {
        source,
        io,
        links,
        workers: usize::from(args.workers),
        cpus: args.cpus,
        mac: args.mac,
        admin: args.admin,
        admin_token: admin_token.map(Into::into),
        metrics: args.metrics,
        worker: WorkerConfig {
            mac: MacAddr::UNSPECIFIED,
            flow_capacity: args.flow_capacity,
            affinity_capacity: args.affinity_capacity,
            flow_capacity_v6: None,
            affinity_capacity_v6: None,
            timeouts: FlowTimeouts::default(),
            icmp,
            snat,
            tunnel,
        },
        idle: args.idle,
        link_wait: std::time::Duration::from_secs(args.link_wait),
        state: args
            .state_file
            .map(|path| limpet_control::checkpoint::StateOptions {
                path,
                interval: (args.state_interval > 0)
                    .then(|| std::time::Duration::from_secs(args.state_interval)),
            }),
        announce,
    };
    limpet_control::run::run(&opts).map_err(|e| e.to_string())
}

/// A subcommand that talks to a running limpet's admin API: prints what
/// `f` made of it, or says why it failed.
fn admin_command(
    name: &str,
    addr: SocketAddr,
    token_file: Option<&std::path::Path>,
    f: impl FnOnce(&limpet_control::client::AdminApi) -> Result<String, String>,
) -> ExitCode {
    let result = token_file
        .map(read_token)
        .transpose()
        .and_then(|token| f(&limpet_control::client::AdminApi { addr, token }));
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("limpet {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            match run(*args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("limpet run: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Affinity {
            admin,
            token_file,
            action,
        } => admin_command("affinity", admin, token_file.as_deref(), |api| {
            affinity(api, action).map_err(|e| e.to_string())
        }),
        Command::Drain {
            target,
            deadline,
            cancel,
            json,
            admin,
            token_file,
        } => admin_command("drain", admin, token_file.as_deref(), |api| {
            drain(api, target.as_deref(), &deadline, cancel, json)
        }),
        Command::Status {
            admin,
            token_file,
            json,
        } => admin_command("status", admin, token_file.as_deref(), |api| {
            let v = limpet_control::client::status(api).map_err(|e| e.to_string())?;
            Ok(if json {
                format!("{v:#}\n")
            } else {
                limpet_control::client::render_status(&v)
            })
        }),
        Command::Demo {
            clients,
            backends,
            connections,
            timeout,
        } => {
            let config = limpet_control::demo::DemoConfig {
                clients,
                backends,
                connections,
                timeout,
            };
            match limpet_control::demo::run(&config) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("limpet demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
