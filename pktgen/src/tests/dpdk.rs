//! pktgen over a DPDK `net_ring` port, without hugepages or PCI: what the
//! sender puts on the wire is exactly what its generator builds (and what
//! etherparse, the oracle, expects), with nothing lost or reordered when
//! the port's queue is full; the sink counts what a ring port receives.
//! Needs libdpdk-dev (`scripts/dpdk-setup`); run with
//! `cargo test -p limpet-pktgen --features dpdk dpdk`.
#![allow(clippy::many_single_char_names)]

use std::sync::{Arc, Mutex, OnceLock};

use limpet_dataplane::io::BURST;
use limpet_dataplane::io::dpdk::{
    DpdkBuf, DpdkIo, Eal, EalConfig, Mempool, Port, PortConfig, Ring,
};

use super::oracle::check;
use super::send::{expected, plan};
use crate::arp::Prefix;
use crate::dpdk::{ArpResponder, BackendOf, DpdkSender, receive_burst};
use crate::send::Generator;
use crate::sink::{BackendSpec, Filter, Sink};
use crate::{Proto, parse_frame, read_stamp};

struct Dpdk {
    eal: Eal,
    pool: Arc<Mempool>,
}

/// EAL, once per test binary, on CPU 0 with no devices (ring ports are
/// made by each test); tests that use it take turns on the lock.
fn dpdk() -> &'static Mutex<Dpdk> {
    static DPDK: OnceLock<Mutex<Dpdk>> = OnceLock::new();
    DPDK.get_or_init(|| {
        let config = EalConfig::virtual_only("0", &[]);
        let eal = Eal::init(&config).unwrap_or_else(|e| panic!("EAL: {e}"));
        let pool = Arc::new(Mempool::new(&eal, "pktgen_test_pool", 2047, 0, -1).unwrap());
        Mutex::new(Dpdk { eal, pool })
    })
}

/// A ring port: `rx` feeds what it receives, `tx` collects what it sends.
/// (Fields drop in order: the port before its rings.)
struct RingPort {
    port: Arc<Port>,
    rx: Ring,
    tx: Ring,
}

fn ring_port(d: &Dpdk, name: &str, tx_slots: u32) -> RingPort {
    let rx = Ring::new(&d.eal, &format!("{name}_rx"), 1024).unwrap();
    let tx = Ring::new(&d.eal, &format!("{name}_tx"), tx_slots).unwrap();
    let id = d.eal.port_from_rings(name, &[&rx], &[&tx]).unwrap();
    let port = Port::start(&d.eal, id, &PortConfig::default(), &[Arc::clone(&d.pool)]).unwrap();
    RingPort {
        port: Arc::new(port),
        rx,
        tx,
    }
}

#[test]
fn dpdk_sender_sends_what_the_generator_builds() {
    let d = dpdk()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A TX ring of 64 slots holds 63 frames: the sender must keep what the
    // full queue refuses and offer it again, in order.
    let ring = ring_port(&d, "pktgen_send", 64);
    for (proto, v6) in [(Proto::Tcp, false), (Proto::Udp, true)] {
        let mut p = plan(proto, v6);
        p.new_share = 0.25;
        p.stamp = true;
        let mut generator = Generator::new(&p).unwrap();
        let mut reference = Generator::new(&p).unwrap();
        let io = DpdkIo::new(&[Arc::clone(&ring.port)], 0).unwrap();
        let mut sender = DpdkSender::new(io, Arc::clone(&d.pool));
        let total = 500u64;
        let (mut built, mut sent, mut checked, mut clock, mut held) = (0u64, 0u64, 0u64, 0, 0);
        let mut out: Vec<DpdkBuf> = Vec::with_capacity(BURST);
        while checked < total {
            let want = (total - built).min(BURST as u64) as usize;
            let (b, s) = sender.send(&mut generator, want, || {
                clock += 1;
                clock
            });
            built += b as u64;
            sent += s as u64;
            if sender.pending() > 0 {
                held += 1;
                // Drain the "wire" only when the queue is full.
                while ring.tx.pop_burst(&mut out, BURST) > 0 {
                    for buf in out.drain(..) {
                        let f = buf.to_vec();
                        let want = reference.next_frame(checked + 1).to_vec();
                        assert_eq!(f, want, "frame {checked} ({proto:?}, v6 {v6})");
                        let info = parse_frame(&f).unwrap();
                        let syn =
                            proto == Proto::Tcp && f[info.payload_offset - 20 + 13] & 0x02 != 0;
                        check(&expected(&p, &f, syn), &f);
                        assert_eq!(read_stamp(&f, 0).unwrap().seq, checked);
                        checked += 1;
                    }
                }
            } else if built == total {
                while let Some(buf) = ring.tx.pop() {
                    let f = buf.to_vec();
                    assert_eq!(f, reference.next_frame(checked + 1), "frame {checked}");
                    checked += 1;
                }
            }
        }
        assert_eq!((built, sent, checked), (total, total, total));
        assert!(held > 0, "the full queue was never hit");
        assert!(
            generator.new_connections() > 50,
            "{}",
            generator.new_connections()
        );
        assert_eq!(sender.io().stats.tx, total);
    }
    assert_eq!(d.pool.in_use(), 0, "every mbuf went back to the pool");
}

#[test]
fn dpdk_sink_counts_what_the_port_receives() {
    let d = dpdk()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ring = ring_port(&d, "pktgen_sink", 1024);
    let p = plan(Proto::Udp, false);
    let mut generator = Generator::new(&p).unwrap();
    let mut io = DpdkIo::new(&[Arc::clone(&ring.port)], 0).unwrap();
    let mut sink = Sink::new(
        vec![BackendSpec {
            name: "be1".to_owned(),
            mac: Some(p.dst_mac),
        }],
        Filter {
            proto: Some(Proto::Udp),
            ..Filter::default()
        },
    );
    let frames = 300;
    let mut burst = Vec::with_capacity(BURST);
    let mut received = 0;
    for i in 0..frames {
        let buf = d.pool.mbuf_from(generator.next_frame(0)).unwrap();
        assert!(ring.rx.push(buf).is_ok());
        if i % 100 == 99 {
            received += receive_burst(&mut io, &mut burst, &mut sink, 1_000, BackendOf::Port, None);
            received += receive_burst(&mut io, &mut burst, &mut sink, 1_000, BackendOf::Port, None);
            received += receive_burst(&mut io, &mut burst, &mut sink, 1_000, BackendOf::Port, None);
            received += receive_burst(&mut io, &mut burst, &mut sink, 1_000, BackendOf::Port, None);
        }
    }
    assert_eq!(received, frames);
    let tally = sink.tally(0);
    assert_eq!(tally.backends["be1"].packets, frames as u64);
    assert_eq!(tally.ignored, 0);
    // 5 clients, 2 VIPs x 3 flows each, all at the one backend.
    assert_eq!(tally.client_backends.len(), 5);
    assert!(tally.client_backends.values().all(|per| per.len() == 1));
    drop(io);
    drop(ring);
    assert_eq!(d.pool.in_use(), 0, "every mbuf went back to the pool");
}

#[test]
fn dpdk_sink_answers_arp_for_its_backends() {
    let d = dpdk()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ring = ring_port(&d, "pktgen_arp", 1024);
    let mut io = DpdkIo::new(&[Arc::clone(&ring.port)], 0).unwrap();
    let mut sink = Sink::new(
        vec![BackendSpec {
            name: "be1".to_owned(),
            mac: None,
        }],
        Filter::default(),
    );
    let mac = [2, 0xbb, 0, 0, 0, 1];
    let prefixes = vec!["203.0.113.0/24".parse::<Prefix>().unwrap()];
    let mut arp = ArpResponder::new(Arc::clone(&d.pool), vec![mac], prefixes);
    // Who has 203.0.113.11 (ours) and 198.51.100.1 (not ours)? Tell 203.0.113.1.
    let request = |target: [u8; 4]| {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0x11, 0x11, 0x11, 0x11, 0x11, 0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend_from_slice(&[
            2, 0x11, 0x11, 0x11, 0x11, 0x11, 203, 0, 113, 1, 0, 0, 0, 0, 0, 0,
        ]);
        f.extend_from_slice(&target);
        f.resize(60, 0);
        f
    };
    for target in [[203, 0, 113, 11], [198, 51, 100, 1]] {
        assert!(
            ring.rx
                .push(d.pool.mbuf_from(&request(target)).unwrap())
                .is_ok()
        );
    }
    let mut burst = Vec::with_capacity(BURST);
    assert_eq!(
        receive_burst(
            &mut io,
            &mut burst,
            &mut sink,
            0,
            BackendOf::Port,
            Some(&mut arp)
        ),
        2
    );
    assert_eq!(arp.answered, 1);
    let reply = ring.tx.pop().expect("an ARP reply").to_vec();
    assert!(
        ring.tx.pop().is_none(),
        "only the request for our prefix is answered"
    );
    assert_eq!(&reply[..6], &[2, 0x11, 0x11, 0x11, 0x11, 0x11]);
    assert_eq!(&reply[6..12], &mac);
    assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&reply[22..32], &[2, 0xbb, 0, 0, 0, 1, 203, 0, 113, 11]);
    drop(io);
    drop(ring);
    assert_eq!(d.pool.in_use(), 0);
}
