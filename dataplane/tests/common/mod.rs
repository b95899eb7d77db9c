//! A worker over the in-memory backend with a hand-moved clock, for tests
//! that drive the real pipeline packet by packet.
#![allow(dead_code)]

pub mod fixtures;
pub mod icmp;
pub mod veth;

use limpet_dataplane::clock::{Clock, ManualClock};
use limpet_dataplane::command::{AffinityFilter, AffinityRecord, BackendLoad, Command};
use limpet_dataplane::io::MemoryIo;
use limpet_dataplane::pipeline::{Action, Worker, WorkerConfig};
use limpet_dataplane::snapshot::{Affinity, Backend, ForwardMode, ServicePortSpec, Snapshot};
use limpet_dataplane::wire::MacAddr;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub const LIMPET_MAC: [u8; 6] = [0x02, 0x11, 0x11, 0x11, 0x11, 0x11];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc];
/// limpet's own addresses (`--address`), answered for echo.
pub const LIMPET4: &str = "203.0.113.1";
pub const LIMPET6: &str = "2001:db8:be::1";

/// The ICMP settings every test worker runs with: limpet's own addresses.
pub fn icmp_config() -> limpet_dataplane::icmp::IcmpConfig {
    limpet_dataplane::icmp::IcmpConfig {
        own_addrs: vec![LIMPET4.parse().unwrap(), LIMPET6.parse().unwrap()],
        ..Default::default()
    }
}

/// The MAC address test backend `addr` answers to.
pub fn backend_mac(addr: IpAddr) -> [u8; 6] {
    let o = match addr {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    [0x02, 0xbb, 0, 0, 0, o]
}

/// A backend at `addr:9376` with an id derived from its address.
pub fn backend(addr: &str) -> Backend {
    let addr: IpAddr = addr.parse().unwrap();
    let id = match addr {
        IpAddr::V4(a) => u32::from(a.octets()[3]),
        IpAddr::V6(a) => 1000 + u32::from(a.octets()[15]),
    };
    Backend {
        id,
        addr,
        port: 9376,
        weight: 1,
        mac: MacAddr(backend_mac(addr)),
        iface: 0,
    }
}

/// One TCP service port on `vip:80` (and UDP when `protocol` is 17).
pub fn service(
    id: u32,
    vip: &str,
    protocol: u8,
    affinity: Affinity,
    mode: ForwardMode,
    backends: Vec<Backend>,
) -> ServicePortSpec {
    ServicePortSpec {
        id,
        name: format!(
            "default/svc{id}:80/{}",
            if protocol == 6 { "TCP" } else { "UDP" }
        ),
        protocol,
        affinity,
        mode,
        frontends: vec![(vip.parse().unwrap(), 80)],
        backends,
        maglev_size: None,
        source_ranges: None,
    }
}

pub struct Harness {
    pub worker: Worker<MemoryIo, ManualClock>,
    pub clock: ManualClock,
    generation: u64,
    commands: crossbeam_channel::Sender<Command>,
}

impl Harness {
    pub fn new(specs: Vec<ServicePortSpec>) -> Self {
        Self::with_capacity(specs, 1 << 12, 1 << 12)
    }

    pub fn with_capacity(specs: Vec<ServicePortSpec>, flows: usize, affinity: usize) -> Self {
        Self::with_config(specs, |c| {
            c.flow_capacity = flows;
            c.affinity_capacity = affinity;
        })
    }

    /// A harness whose worker config `edit` adjusts.
    pub fn with_config(specs: Vec<ServicePortSpec>, edit: impl FnOnce(&mut WorkerConfig)) -> Self {
        Self::with_io(specs, MemoryIo::new(256), edit)
    }

    /// [`with_config`](Self::with_config) over a backend set up by the test.
    pub fn with_io(
        specs: Vec<ServicePortSpec>,
        io: MemoryIo,
        edit: impl FnOnce(&mut WorkerConfig),
    ) -> Self {
        let clock = ManualClock::new(1000);
        let mut config = WorkerConfig {
            mac: MacAddr(LIMPET_MAC),
            flow_capacity: 1 << 12,
            affinity_capacity: 1 << 12,
            icmp: icmp_config(),
            ..WorkerConfig::default()
        };
        edit(&mut config);
        let snapshot = Arc::new(Snapshot::build(1, specs).unwrap());
        let (commands, rx) = crossbeam_channel::unbounded();
        let worker = Worker::new(io, clock.clone(), config, snapshot)
            .unwrap()
            .with_commands(rx);
        Self {
            worker,
            clock,
            generation: 1,
            commands,
        }
    }

    /// The worker's affinity entries, as the admin API lists them.
    pub fn list_affinity(&mut self) -> Vec<AffinityRecord> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.commands
            .send(Command::ListAffinity {
                filter: AffinityFilter::default(),
                reply,
            })
            .unwrap();
        self.worker.serve_commands(self.clock.now());
        answer.recv().unwrap()
    }

    /// What points at each of `backends`, as a drain's progress reads it.
    pub fn backend_load(&mut self, backends: &[u32]) -> Vec<BackendLoad> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.commands
            .send(Command::BackendLoad {
                backends: backends.to_vec(),
                reply,
            })
            .unwrap();
        self.worker.serve_commands(self.clock.now());
        answer.recv().unwrap()
    }

    /// Publishes a new snapshot built from `specs`.
    pub fn update(&mut self, specs: Vec<ServicePortSpec>) {
        self.generation += 1;
        let snap = Snapshot::build(self.generation, specs).unwrap();
        self.worker.set_snapshot(Arc::new(snap));
    }

    /// Sends one frame through the pipeline: what it did, and what it sent.
    pub fn send(&mut self, frame: &[u8]) -> (Action, Option<Vec<u8>>) {
        let (action, out) = self.send_on(frame, 0);
        (action, out.map(|(_, bytes)| bytes))
    }

    /// Sends one frame arriving on `port`: what the pipeline did, and the
    /// port and bytes of what it sent.
    pub fn send_on(&mut self, frame: &[u8], port: u16) -> (Action, Option<(u16, Vec<u8>)>) {
        assert!(self.worker.io_mut().inject(frame, port));
        assert_eq!(self.worker.poll(), 1);
        let action = self.worker.last_actions(1)[0];
        (action, self.worker.io_mut().take_sent())
    }

    /// Opens a TCP connection from `client:sport` to `vip:80` and returns
    /// the backend the SYN was sent to.
    pub fn connect(&mut self, client: IpAddr, sport: u16, vip: IpAddr) -> SocketAddr {
        let syn = limpet_pktgen::PacketSpec::tcp(client, vip, sport, 80)
            .flags(limpet_pktgen::SYN)
            .src_mac(CLIENT_MAC)
            .dst_mac(LIMPET_MAC)
            .build();
        let (action, out) = self.send(&syn);
        assert_eq!(
            action,
            Action::Forward,
            "SYN from {client}:{sport} not forwarded"
        );
        destination(&out.expect("forwarded SYN was not sent"))
    }

    /// Sends a packet of an existing connection and returns where it went.
    pub fn data(&mut self, client: IpAddr, sport: u16, vip: IpAddr) -> SocketAddr {
        let ack = limpet_pktgen::PacketSpec::tcp(client, vip, sport, 80)
            .flags(limpet_pktgen::ACK)
            .src_mac(CLIENT_MAC)
            .dst_mac(LIMPET_MAC)
            .build();
        let (action, out) = self.send(&ack);
        assert_eq!(action, Action::Forward);
        destination(&out.unwrap())
    }

    pub fn tick(&mut self, secs: u32) {
        self.clock.advance(secs);
    }
}

/// The destination address and port of a frame, read with etherparse.
pub fn destination(frame: &[u8]) -> SocketAddr {
    endpoints(frame).1
}

/// The source address and port of a frame, read with etherparse.
pub fn source(frame: &[u8]) -> SocketAddr {
    endpoints(frame).0
}

/// A TCP or UDP frame's (source, destination), read with etherparse.
fn endpoints(frame: &[u8]) -> (SocketAddr, SocketAddr) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let (src, dst): (IpAddr, IpAddr) = match p.net.unwrap() {
        NetSlice::Ipv4(v4) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(v6) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
        ),
        NetSlice::Arp(_) => panic!("not IP"),
    };
    let (sport, dport) = match p.transport.unwrap() {
        TransportSlice::Tcp(t) => (t.source_port(), t.destination_port()),
        TransportSlice::Udp(u) => (u.source_port(), u.destination_port()),
        _ => panic!("not TCP/UDP"),
    };
    (SocketAddr::new(src, sport), SocketAddr::new(dst, dport))
}
