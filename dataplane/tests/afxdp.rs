//! The `AF_XDP` backend against a real veth pair in a throwaway network
//! namespace (see `common::veth`): the steering program takes limpet's
//! traffic (to its addresses, from its endpoints, ICMP errors about
//! either) and passes the rest to the kernel, which a packet socket on the
//! same interface sees; frames rewritten in place go back out without a
//! copy; bad cases fail at open with a clear error. Needs root; without it
//! every test fails, loudly.

mod common;

use common::veth::{LB_MAC, Net, PEER_MAC};
use limpet_dataplane::io::afpacket::{AfPacketIo, AfPacketOptions, RawSocket};
use limpet_dataplane::io::afxdp::{
    AfXdpError, AfXdpIo, AfXdpOptions, XdpAttach, XdpMode, XdpSteering,
};
use limpet_dataplane::io::{BURST, PacketBuf, PacketIo};
use limpet_pktgen::PacketSpec;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const VIP: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:5::10";
const ENDPOINT: &str = "203.0.113.11";
const LIMPET: &str = "203.0.113.1";
const CLIENT: &str = "198.51.100.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A UDP frame peer -> limpet's MAC, `id` in its source port.
fn udp(src: &str, dst: &str, id: u16) -> Vec<u8> {
    PacketSpec::udp(ip(src), ip(dst), id, 53)
        .src_mac(PEER_MAC)
        .dst_mac(LB_MAC)
        .build()
}

/// A router's "fragmentation needed" (MTU 1400) from `router` to `to`,
/// quoting `inner` (an IP packet).
fn frag_needed(router: &str, to: &str, inner: &[u8]) -> Vec<u8> {
    use etherparse::{Icmpv4Type, PacketBuilder, icmpv4::DestUnreachableHeader};
    let (IpAddr::V4(r), IpAddr::V4(t)) = (ip(router), ip(to)) else {
        unreachable!()
    };
    let b = PacketBuilder::ethernet2(PEER_MAC, LB_MAC)
        .ipv4(r.octets(), t.octets(), 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ));
    let mut out = Vec::new();
    b.write(&mut out, inner).unwrap();
    out
}

/// A broadcast ARP request for `target` from `sender`.
fn arp_request(sender: &str, target: &str) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(t)) = (ip(sender), ip(target)) else {
        unreachable!()
    };
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&s.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&t.octets());
    f.resize(60, 0);
    f
}

fn open(net: &Net) -> AfXdpIo {
    let mut steering = XdpSteering::attach(&[&net.a]).expect("attach the steering program");
    let mut io = AfXdpIo::open(&[&net.a], 0, &AfXdpOptions::default(), &mut steering)
        .expect("open an AF_XDP socket");
    io.keep_steering(steering);
    io.serve_own_addrs(&[ip(LIMPET)]);
    io.serve_frontends(&[ip(VIP), ip(VIP6)]);
    io.serve_endpoints(&[ip(ENDPOINT)]);
    io.health().expect("the maps took the addresses");
    io
}

/// Receives for `window`, freeing every buffer; the frames' bytes.
fn drain(io: &mut AfXdpIo, window: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut burst = Vec::with_capacity(BURST);
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        if io.rx_burst(&mut burst) == 0 {
            io.wait(Some(Duration::from_millis(5))).unwrap();
            continue;
        }
        got.extend(burst.iter().map(|b| b.data().to_vec()));
        io.free_burst(&mut burst);
    }
    got
}

/// What an `AF_PACKET` ring receives for `window` (VLAN tags restored).
fn ring_frames(io: &mut AfPacketIo, window: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut burst = Vec::with_capacity(BURST);
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        if io.rx_burst(&mut burst) == 0 {
            io.wait(Some(Duration::from_millis(5))).unwrap();
            continue;
        }
        got.extend(burst.iter().map(|b| b.data().to_vec()));
        io.free_burst(&mut burst);
        if !got.is_empty() {
            break;
        }
    }
    got
}

fn seen_by_kernel(raw: &RawSocket, window: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + window;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        if let Some(n) = raw.recv(&mut buf, left).unwrap() {
            got.push(buf[..n].to_vec());
        }
    }
}

#[test]
fn the_program_is_built_in() {
    // Without clang at build time limpet has no program; CI must not pass
    // such a build.
    let mut e = None;
    if let Err(err) = XdpSteering::attach(&["lo-limpet-none"]) {
        e = Some(err);
    }
    assert!(
        !matches!(e, Some(AfXdpError::NoProgram)),
        "built without the XDP program: install clang"
    );
}

#[test]
fn limpets_traffic_is_steered_to_it_and_the_rest_passed_to_the_kernel() {
    let net = Net::new();
    net.run(|| {
        let mut io = open(&net);
        assert_eq!(io.steering().unwrap().mode(&net.a), Some(XdpMode::Native));
        assert_eq!(io.zero_copy(), [false], "a veth has no zero-copy");
        let kernel = RawSocket::open(&net.a).expect("a packet socket on the same interface");
        let peer = RawSocket::open(&net.b).expect("peer");

        let to_vip = udp(CLIENT, VIP, 1001);
        let reply = udp(ENDPOINT, CLIENT, 1002);
        let to_limpet = udp(CLIENT, LIMPET, 1003);
        let to_vip6 = udp("2001:db8:100::2", VIP6, 1004);
        let elsewhere = udp(CLIENT, "198.51.100.99", 1005);
        // A router's "fragmentation needed" to the client about a packet
        // limpet sent on to its endpoint.
        let mut inner = udp(CLIENT, ENDPOINT, 1006);
        inner.drain(..14);
        inner.truncate(28);
        let frag_needed = frag_needed("198.51.100.1", CLIENT, &inner);
        let arp = arp_request(ENDPOINT, LIMPET);
        let limpets = [&to_vip, &reply, &to_limpet, &to_vip6, &frag_needed];
        let kernels = [&elsewhere, &arp];
        for f in limpets.iter().chain(&kernels) {
            peer.send(f).unwrap();
        }
        let mut got = drain(&mut io, Duration::from_millis(500));
        got.sort();
        let mut want: Vec<Vec<u8>> = limpets.iter().map(|f| (*f).clone()).collect();
        want.sort();
        assert_eq!(
            got, want,
            "exactly limpet's frames reach its socket, unchanged"
        );
        let passed = seen_by_kernel(&kernel, Duration::from_millis(300));
        for f in kernels {
            assert!(
                passed.contains(f),
                "the kernel still gets what is not limpet's"
            );
        }
        for f in limpets {
            assert!(
                !passed.contains(f),
                "the kernel does not see limpet's frames"
            );
        }

        // An endpoint that leaves the set stays limpet's while its
        // connections may still be open, then is the kernel's again.
        io.serve_endpoints(&[]);
        io.health().unwrap();
        peer.send(&reply).unwrap();
        assert_eq!(
            drain(&mut io, Duration::from_millis(300)),
            std::slice::from_ref(&reply)
        );
        io.steering_mut().unwrap().set_linger(Duration::ZERO);
        io.health().unwrap();
        peer.send(&reply).unwrap();
        assert!(drain(&mut io, Duration::from_millis(300)).is_empty());
        assert!(seen_by_kernel(&kernel, Duration::from_millis(300)).contains(&reply));
        let s = io.stats();
        assert_eq!(s.rx_packets, 6, "{s:?}");
        assert_eq!(s.rx_packets, s.freed, "{s:?}");
        assert_eq!(io.outstanding(), 0);
    });
}

#[test]
fn rewritten_frames_go_back_out_of_the_same_socket() {
    let net = Net::new();
    net.run(|| {
        let mut io = open(&net);
        let peer = RawSocket::open(&net.b).expect("peer");
        let sent: Vec<Vec<u8>> = (0..2000u16).map(|i| udp(CLIENT, VIP, i)).collect();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let mut burst = Vec::with_capacity(BURST);
                while !stop.load(Ordering::Acquire) {
                    if io.rx_burst(&mut burst) == 0 {
                        io.wait(Some(Duration::from_millis(2))).unwrap();
                        continue;
                    }
                    for b in &mut burst {
                        let d = b.data_mut();
                        let (dst, rest) = d.split_at_mut(6);
                        dst.swap_with_slice(&mut rest[..6]);
                        b.set_port(0);
                    }
                    io.tx_burst(&mut burst);
                }
                io
            });
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            for window in sent.chunks(BURST) {
                for f in window {
                    peer.send(f).unwrap();
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut n = 0;
                while n < window.len() && Instant::now() < deadline {
                    if let Some(len) = peer.recv(&mut buf, Duration::from_millis(100)).unwrap()
                        && buf[..6] == PEER_MAC
                    {
                        got.push(buf[..len].to_vec());
                        n += 1;
                    }
                }
            }
            stop.store(true, Ordering::Release);
            let mut io = worker.join().unwrap();
            let expect: Vec<Vec<u8>> = sent
                .iter()
                .map(|f| {
                    let mut f = f.clone();
                    let (dst, rest) = f.split_at_mut(6);
                    dst.swap_with_slice(&mut rest[..6]);
                    f
                })
                .collect();
            let s = io.stats();
            eprintln!("{s:?}");
            assert_eq!(got.len(), expect.len(), "{s:?}");
            assert!(got == expect, "every rewritten frame, in order");
            assert_eq!(s.tx_packets, 2000, "{s:?}");
            assert_eq!(s.tx_copied, 0, "sent from the frame it arrived in");
            assert_eq!(io.outstanding(), 0);
        });
    });
}

#[test]
fn bad_cases_fail_at_open_with_a_clear_error() {
    let net = Net::new();
    net.run(|| {
        assert!(matches!(
            XdpSteering::attach(&["lpnosuch0"]),
            Err(AfXdpError::NotFound { .. })
        ));
        let mut steering = XdpSteering::attach(&[&net.a]).unwrap();
        // A second program on the interface: refused, the first untouched.
        let second = XdpSteering::attach(&[&net.a]);
        assert!(
            matches!(second, Err(AfXdpError::AlreadyAttached { .. })),
            "{second:?}"
        );
        let err = AfXdpIo::open(&[&net.a], 1, &AfXdpOptions::default(), &mut steering)
            .expect_err("a veth has one queue");
        assert!(
            matches!(
                err,
                AfXdpError::QueueOutOfRange {
                    queue: 1,
                    queues: 1,
                    ..
                }
            ),
            "{err}"
        );
        let bad = AfXdpOptions {
            ring_size: 100,
            ..AfXdpOptions::default()
        };
        assert!(matches!(
            AfXdpIo::open(&[&net.a], 0, &bad, &mut steering),
            Err(AfXdpError::InvalidOptions(_))
        ));
        // Gone with its owner: the interface is free again.
        drop(steering);
        XdpSteering::attach(&[&net.a]).expect("detached when dropped");
    });
}

#[test]
fn the_generic_hook_serves_when_asked_for() {
    let net = Net::new();
    net.run(|| {
        let mut steering = XdpSteering::attach_with(&[&net.a], XdpAttach::Generic).unwrap();
        assert_eq!(steering.mode(&net.a), Some(XdpMode::Generic));
        let mut io = AfXdpIo::open(&[&net.a], 0, &AfXdpOptions::default(), &mut steering).unwrap();
        io.keep_steering(steering);
        io.serve_frontends(&[ip(VIP)]);
        let peer = RawSocket::open(&net.b).unwrap();
        let frame = udp(CLIENT, VIP, 7);
        peer.send(&frame).unwrap();
        assert_eq!(drain(&mut io, Duration::from_millis(300)), [frame]);
    });
}

/// The Katran-style fixture table through a real worker over an `AF_XDP`
/// socket: each input sent by the peer, and what the worker did and sent
/// checked against the table. Rows the steering program leaves to the
/// kernel (ARP, neighbour discovery, what is to no address limpet
/// serves, frames too short for their headers) never reach limpet; those
/// must be rows the table neither forwards nor answers, and the kernel
/// must have had them.
#[test]
fn fixture_table_through_an_af_xdp_socket() {
    use common::fixtures::{fixtures, run_table, specs};
    use limpet_dataplane::clock::ManualClock;
    use limpet_dataplane::pipeline::{Action, Worker, WorkerConfig};
    use limpet_dataplane::snapshot::Snapshot;
    use limpet_dataplane::wire::MacAddr;
    use std::sync::Arc;

    let net = Net::new();
    let mac = common::veth::mac_str(common::LIMPET_MAC);
    common::veth::run_ip(&["-n", &net.ns, "link", "set", &net.a, "address", &mac]);
    net.run(|| {
        let mut steering = XdpSteering::attach(&[&net.a]).unwrap();
        let mut io = AfXdpIo::open(&[&net.a], 0, &AfXdpOptions::default(), &mut steering).unwrap();
        io.keep_steering(steering);
        // What the kernel gets on the interface, and what the peer gets,
        // read through AF_PACKET rings: a plain packet socket would see a
        // VLAN tag only in metadata, the rings put it back.
        let mut kernel = AfPacketIo::open(&[&net.a], &AfPacketOptions::default()).unwrap();
        let mut sink = AfPacketIo::open(&[&net.b], &AfPacketOptions::default()).unwrap();
        let peer = RawSocket::open(&net.b).unwrap();
        let config = WorkerConfig {
            mac: MacAddr(common::LIMPET_MAC),
            flow_capacity: 1 << 12,
            affinity_capacity: 1 << 12,
            icmp: common::icmp_config(),
            ..WorkerConfig::default()
        };
        let snapshot = Arc::new(Snapshot::build(1, specs()).unwrap());
        let mut worker = Worker::new(io, ManualClock::new(1000), config, snapshot).unwrap();
        let mut steered = 0;
        let mut passed = Vec::new();
        run_table(|f| {
            if let Err(e) = peer.send(&f.input) {
                // No link carries a frame without a whole Ethernet header.
                assert!(f.input.len() < 14, "{}: {e}", f.description);
                passed.push(f.description);
                return (f.action, f.output.clone());
            }
            let deadline = Instant::now() + Duration::from_millis(300);
            while worker.poll() == 0 {
                if Instant::now() >= deadline {
                    // Left to the kernel: a row limpet would not have
                    // forwarded or answered either.
                    assert!(
                        matches!(f.action, Action::SlowPath | Action::Drop(_))
                            && f.output.is_none(),
                        "{}: not steered to limpet, but the table forwards it",
                        f.description
                    );
                    assert!(
                        ring_frames(&mut kernel, Duration::from_millis(200)).contains(&f.input),
                        "{}: neither limpet nor the kernel got it",
                        f.description
                    );
                    passed.push(f.description);
                    return (f.action, f.output.clone());
                }
            }
            steered += 1;
            let action = worker.last_actions(1)[0];
            let out = if f.output.is_some() {
                ring_frames(&mut sink, Duration::from_millis(300))
                    .into_iter()
                    .find(|o| o[6..12] == common::LIMPET_MAC)
            } else {
                None
            };
            (action, out)
        });
        let forwarded = fixtures().iter().filter(|f| f.output.is_some()).count();
        eprintln!(
            "{steered} rows steered to limpet, {} left to the kernel: {passed:?}",
            passed.len()
        );
        assert!(
            steered >= forwarded,
            "every row with an output went through limpet"
        );
        assert_eq!(worker.io().outstanding(), 0);
    });
}
