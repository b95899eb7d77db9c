//! The DPDK backend with virtual devices, without hugepages or PCI
//! (`--no-huge --no-pci`): EAL comes up with `net_null` and ring ports; the
//! Katran-style fixture table runs through a real worker over a `net_ring`
//! port and every frame comes out exactly as the in-memory pipeline's table
//! says; a worker runs on an EAL worker lcore. Needs libdpdk-dev
//! (`scripts/dpdk-setup`); run with `cargo test -p limpet-dataplane
//! --features dpdk --test dpdk`.
//!
//! EAL starts once per process: every test shares one (`eal()`), and each
//! uses its own ports, named after it.
#![cfg(feature = "dpdk")]

mod common;

use common::LIMPET_MAC;
use common::fixtures::{BE4, CLIENT4, VIP4, dnat, fixtures, inbound, ip, run_table, specs};
use limpet_dataplane::clock::ManualClock;
use limpet_dataplane::io::PacketIo;
use limpet_dataplane::io::dpdk::{
    DpdkBuf, DpdkError, DpdkIo, Eal, EalConfig, Mempool, Port, PortConfig, Ring, RssMode,
    SteeringMesh, symmetric_rss_key,
};
use limpet_dataplane::pipeline::{Action, Worker, WorkerConfig};
use limpet_dataplane::snapshot::Snapshot;
use limpet_dataplane::stats::DropReason;
use limpet_dataplane::wire::MacAddr;
use limpet_pktgen::{PacketSpec, SYN};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

// ---- EAL, shared by the tests of this binary. ----

struct Dpdk {
    eal: Eal,
    pool: Arc<Mempool>,
}

/// EAL with lcore 0 (main) and lcore 1 (a worker), both on CPU 0 so the
/// test runs on any machine, and a `net_null` device.
fn dpdk() -> &'static Dpdk {
    static DPDK: OnceLock<Dpdk> = OnceLock::new();
    DPDK.get_or_init(|| {
        let mut config = EalConfig::virtual_only("0", &["net_null0"]);
        config.cores = None;
        config.extra.push("--lcores=0@0,1@0".to_owned());
        let eal = Eal::init(&config).unwrap_or_else(|e| panic!("EAL: {e}"));
        let pool = Arc::new(Mempool::new(&eal, "test_pool", 4095, 0, -1).unwrap());
        Dpdk { eal, pool }
    })
}

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        mac: MacAddr(LIMPET_MAC),
        flow_capacity: 1 << 12,
        affinity_capacity: 1 << 12,
        icmp: common::icmp_config(),
        ..WorkerConfig::default()
    }
}

fn snapshot() -> Arc<Snapshot> {
    Arc::new(Snapshot::build(1, specs()).unwrap())
}

/// A ring port: frames pushed on `rx` are received, frames sent land on `tx`.
/// (Fields drop in order: the port before the rings it uses.)
struct RingPort {
    port: Arc<Port>,
    rx: Ring,
    tx: Ring,
}

fn ring_port(name: &str) -> RingPort {
    ring_port_on(name, &dpdk().pool)
}

/// A ring port whose queue takes its mbufs from `pool`.
fn ring_port_on(name: &str, pool: &Arc<Mempool>) -> RingPort {
    let d = dpdk();
    let rx = Ring::new(&d.eal, &format!("{name}_rx"), 1024).unwrap();
    let tx = Ring::new(&d.eal, &format!("{name}_tx"), 1024).unwrap();
    let id = d.eal.port_from_rings(name, &[&rx], &[&tx]).unwrap();
    let port = Port::start(&d.eal, id, &PortConfig::default(), &[Arc::clone(pool)]).unwrap();
    RingPort {
        port: Arc::new(port),
        rx,
        tx,
    }
}

fn inject(ring: &Ring, frame: &[u8]) {
    inject_from(&dpdk().pool, ring, frame);
}

fn inject_from(pool: &Mempool, ring: &Ring, frame: &[u8]) {
    let buf = pool.mbuf_from(frame).expect("an mbuf for the frame");
    assert!(ring.push(buf).is_ok(), "RX ring full");
}

#[test]
fn eal_config_builds_the_command_line() {
    let mut c = EalConfig::virtual_only("0-2", &["net_null0", "net_ring0"]);
    c.pci_allow.push("0000:3b:00.0".to_owned());
    c.file_prefix = Some("lb1".to_owned());
    assert_eq!(
        c.args(),
        [
            "limpet",
            "-l",
            "0-2",
            "-m",
            "256",
            "--no-huge",
            "--no-pci",
            "-a",
            "0000:3b:00.0",
            "--vdev=net_null0",
            "--vdev=net_ring0",
            "--file-prefix=lb1",
            "--no-shconf",
            "--log-level=warning",
        ]
    );
}

/// Toeplitz over `input` with `key`, as a NIC computes it.
fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let mut hash = 0u32;
    let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    for (next, byte) in (4..).zip(input) {
        for bit in (0..8).rev() {
            if byte >> bit & 1 == 1 {
                hash ^= window;
            }
            let k = key.get(next).copied().unwrap_or(0);
            window = window << 1 | u32::from(k >> bit & 1);
        }
    }
    hash
}

#[test]
fn the_rss_key_is_symmetric_over_the_address_pair() {
    let key = symmetric_rss_key(40);
    assert_eq!(&key[..4], &[0x6d, 0x5a, 0x6d, 0x5a]);
    let pairs: [([u8; 4], [u8; 4]); 3] = [
        ([198, 18, 0, 1], [192, 0, 2, 10]),
        ([203, 0, 113, 7], [198, 18, 3, 200]),
        ([10, 0, 0, 1], [10, 0, 0, 2]),
    ];
    for (a, b) in pairs {
        let ab = toeplitz(&key, &[a, b].concat());
        let ba = toeplitz(&key, &[b, a].concat());
        assert_eq!(ab, ba, "{a:?} <-> {b:?}");
    }
    let a6 = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let b6 = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0xc1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    ];
    assert_eq!(
        toeplitz(&key, &[a6, b6].concat()),
        toeplitz(&key, &[b6, a6].concat())
    );
    // The standard (Microsoft) key is not symmetric: the check has teeth.
    let ms = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];
    let (a, b) = pairs[0];
    assert_ne!(
        toeplitz(&ms, &[a, b].concat()),
        toeplitz(&ms, &[b, a].concat())
    );
}

#[test]
fn eal_comes_up_and_net_null_receives_and_sends() {
    let d = dpdk();
    assert!(d.eal.port_count() >= 1);
    let id = d.eal.port_by_name("net_null0").unwrap();
    let port =
        Arc::new(Port::start(&d.eal, id, &PortConfig::default(), &[Arc::clone(&d.pool)]).unwrap());
    assert_eq!(port.name(), "net_null0");
    assert!(port.link().unwrap().up);
    let mut io = DpdkIo::new(&[Arc::clone(&port)], 0).unwrap();
    assert!(
        matches!(
            DpdkIo::new(&[Arc::clone(&port)], 0),
            Err(DpdkError::Port { .. })
        ),
        "a queue belongs to one worker"
    );
    let mut burst: Vec<DpdkBuf> = Vec::with_capacity(32);
    // net_null hands out empty 64-byte frames, as many as asked for.
    assert_eq!(io.rx_burst(&mut burst), 32);
    assert!(
        burst
            .iter()
            .all(|b| limpet_dataplane::io::PacketBuf::data(b).len() == 64)
    );
    let mut half: Vec<DpdkBuf> = burst.drain(16..).collect();
    io.free_burst(&mut half);
    assert_eq!(io.tx_burst(&mut burst), 16);
    assert!(burst.is_empty());
    assert_eq!(io.stats.rx, 32);
    assert_eq!(io.stats.tx, 16);
    assert_eq!(io.stats.freed, 16);
    let stats = port.stats().unwrap();
    assert_eq!((stats.rx_packets, stats.tx_packets), (32, 16));
    let xstats = port.xstats().unwrap();
    assert!(
        xstats
            .iter()
            .any(|(name, v)| name == "rx_good_packets" && *v == 32),
        "{xstats:?}"
    );
}

#[test]
fn more_queues_than_one_need_rss_which_net_ring_lacks() {
    let d = dpdk();
    let rx = [
        Ring::new(&d.eal, "rss_rx0", 64).unwrap(),
        Ring::new(&d.eal, "rss_rx1", 64).unwrap(),
    ];
    let tx = [
        Ring::new(&d.eal, "rss_tx0", 64).unwrap(),
        Ring::new(&d.eal, "rss_tx1", 64).unwrap(),
    ];
    let id = d
        .eal
        .port_from_rings("rss_ring", &[&rx[0], &rx[1]], &[&tx[0], &tx[1]])
        .unwrap();
    let config = PortConfig {
        queues: 2,
        rss: RssMode::ClientIsSource,
        ..PortConfig::default()
    };
    let err = Port::start(&d.eal, id, &config, &[Arc::clone(&d.pool)]).unwrap_err();
    assert!(
        matches!(err, DpdkError::Rss { port, .. } if port == id),
        "{err}"
    );
}

#[test]
fn fixture_table_through_a_ring_port() {
    // A pool of its own: the other tests of this binary run at the same
    // time on the shared pool, so its count says nothing about this worker.
    let pool = Arc::new(Mempool::new(&dpdk().eal, "fixtures_pool", 1023, 0, -1).unwrap());
    let ports = ring_port_on("fixtures", &pool);
    let io = DpdkIo::new(&[Arc::clone(&ports.port)], 0).unwrap();
    let mut worker = Worker::new(io, ManualClock::new(1000), worker_config(), snapshot()).unwrap();
    let in_use = pool.in_use();
    run_table(|f| {
        inject_from(&pool, &ports.rx, &f.input);
        assert_eq!(worker.poll(), 1, "{}", f.description);
        let action = worker.last_actions(1)[0];
        (action, ports.tx.pop().map(|b| b.to_vec()))
    });
    assert!(ports.tx.is_empty(), "nothing else was sent");
    let stats = worker.stats();
    assert_eq!(stats.dropped(DropReason::Truncated), 2);
    assert_eq!(stats.replies, 2);
    let table = fixtures();
    let count = |a: Action| table.iter().filter(|f| f.action == a).count();
    assert_eq!(stats.slow_path, count(Action::SlowPath) as u64);
    // Every mbuf went back: none leaked by drops, the slow path or TX.
    assert_eq!(pool.in_use(), in_use, "mbufs leaked");
    let io = worker.io();
    assert_eq!(io.stats.tx, count(Action::Forward) as u64);
    assert_eq!(io.stats.tx_full + io.stats.tx_bad_port, 0);
}

#[test]
fn a_worker_on_a_worker_lcore_forwards() {
    let d = dpdk();
    let lcores = d.eal.worker_lcores();
    assert_eq!(lcores, [1]);
    let ports = ring_port("lcore");
    let io = DpdkIo::new(&[Arc::clone(&ports.port)], 0).unwrap();
    let mut worker = Worker::new(io, ManualClock::new(1000), worker_config(), snapshot()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        d.eal
            .launch(1, move || {
                worker.run(&stop);
                assert!(worker.stats().rx_packets >= 1);
                done.store(true, Ordering::SeqCst);
            })
            .unwrap();
    }
    let syn = inbound(PacketSpec::tcp(ip(CLIENT4), ip(VIP4), 41000, 80).flags(SYN));
    inject(&ports.rx, &syn.build());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let out = loop {
        if let Some(b) = ports.tx.pop() {
            break b.to_vec();
        }
        assert!(std::time::Instant::now() < deadline, "nothing forwarded");
        std::thread::yield_now();
    };
    assert_eq!(out, dnat(syn, BE4).build());
    stop.store(true, Ordering::Relaxed);
    d.eal.wait(1).unwrap();
    assert!(done.load(Ordering::SeqCst), "the worker returned");
}

/// The source and destination of an IPv4 TCP frame, read with etherparse.
fn endpoints(frame: &[u8]) -> (std::net::SocketAddr, std::net::SocketAddr) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(NetSlice::Ipv4(v4)) = p.net else {
        panic!("not IPv4")
    };
    let Some(TransportSlice::Tcp(tcp)) = p.transport else {
        panic!("not TCP")
    };
    let h = v4.header();
    (
        (h.source_addr(), tcp.source_port()).into(),
        (h.destination_addr(), tcp.destination_port()).into(),
    )
}

#[test]
fn two_workers_keep_each_client_on_one_worker_and_translate_nat_replies_from_either_queue() {
    let d = dpdk();
    let rx = [
        Ring::new(&d.eal, "steer_rx0", 1024).unwrap(),
        Ring::new(&d.eal, "steer_rx1", 1024).unwrap(),
    ];
    let tx = [
        Ring::new(&d.eal, "steer_tx0", 1024).unwrap(),
        Ring::new(&d.eal, "steer_tx1", 1024).unwrap(),
    ];
    let id = d
        .eal
        .port_from_rings("steer", &[&rx[0], &rx[1]], &[&tx[0], &tx[1]])
        .unwrap();
    // net_ring has no RSS: packets stay on the queue they were put on, as
    // a one-armed port (or any port without client-address RSS) would
    // scatter them. Software steering has to put them right.
    assert!(!d.eal.supports_rss(id, RssMode::ClientIsSource).unwrap());
    let config = PortConfig {
        queues: 2,
        rss: RssMode::Off,
        ..PortConfig::default()
    };
    let port = Arc::new(Port::start(&d.eal, id, &config, &[Arc::clone(&d.pool)]).unwrap());
    let mesh = Arc::new(SteeringMesh::new(&d.eal, "steer_mesh", 2, 256).unwrap());
    let mut workers: Vec<_> = (0..2u16)
        .map(|q| {
            let io = DpdkIo::new(&[Arc::clone(&port)], q)
                .unwrap()
                .with_steering(Arc::clone(&mesh), usize::from(q))
                .unwrap();
            let mut w = Worker::new(
                io,
                ManualClock::new(1000),
                worker_config(),
                Arc::new(Snapshot::default()),
            )
            .unwrap();
            // The swap tells the I/O the service addresses to steer by.
            w.set_snapshot(snapshot());
            w
        })
        .collect();
    let settle = |workers: &mut Vec<Worker<DpdkIo, ManualClock>>| {
        let mut quiet = 0;
        while quiet < 4 {
            let n: usize = workers.iter_mut().map(Worker::poll).sum();
            quiet = if n == 0 { quiet + 1 } else { 0 };
        }
    };
    let clients: Vec<std::net::Ipv4Addr> = (1..=64).map(|c| [198, 18, 1, c].into()).collect();
    let owner = |c: std::net::Ipv4Addr| (u32::from(c) % 2) as usize;
    // SYNs, each on the queue the client does *not* hash to half the time.
    for (i, &c) in clients.iter().enumerate() {
        let syn = inbound(PacketSpec::tcp(std::net::IpAddr::V4(c), ip(VIP4), 40000, 80).flags(SYN));
        inject(&rx[(i / 2) % 2], &syn.build());
    }
    settle(&mut workers);
    for (q, ring) in tx.iter().enumerate() {
        while let Some(out) = ring.pop() {
            let (src, dst) = endpoints(&out.to_vec());
            let std::net::IpAddr::V4(client) = src.ip() else {
                unreachable!()
            };
            assert_eq!(dst, (ip(BE4), 9376).into());
            assert_eq!(q, owner(client), "{client}'s SYN left by worker {q}");
        }
    }
    // Each client is known to its owner only.
    for w in &workers {
        assert_eq!(w.affinity_v4().len(), 32);
        assert_eq!(w.stats().new_flows, 32);
    }
    // Replies from the backend, on the queue opposite to the owner: the
    // backend's address says nothing of the client, only the destination
    // does.
    for &c in &clients {
        let reply = PacketSpec::tcp(ip(BE4), std::net::IpAddr::V4(c), 9376, 40000)
            .flags(SYN | limpet_pktgen::ACK)
            .src_mac(common::backend_mac(ip(BE4)))
            .dst_mac(LIMPET_MAC);
        inject(&rx[1 - owner(c)], &reply.build());
    }
    settle(&mut workers);
    let mut translated = 0;
    for (q, ring) in tx.iter().enumerate() {
        while let Some(out) = ring.pop() {
            let (src, dst) = endpoints(&out.to_vec());
            let std::net::IpAddr::V4(client) = dst.ip() else {
                unreachable!()
            };
            assert_eq!(src, (ip(VIP4), 80).into(), "reply to {client} untranslated");
            assert_eq!(q, owner(client), "reply to {client} left by worker {q}");
            translated += 1;
        }
    }
    assert_eq!(translated, clients.len(), "every reply translated");
    let handed: u64 = workers.iter().map(|w| w.io().stats.steered_out).sum();
    let taken: u64 = workers.iter().map(|w| w.io().stats.steered_in).sum();
    // Half the SYNs and every reply arrived on the wrong queue.
    assert_eq!(handed, 32 + 64);
    assert_eq!(taken, handed);
    assert_eq!(
        workers.iter().map(|w| w.io().stats.steer_full).sum::<u64>(),
        0
    );
    drop(workers);
    drop(port);
}
