//! The `AF_PACKET` backend against real veth pairs in throwaway network
//! namespaces. Needs root (`CAP_NET_ADMIN` and `CAP_NET_RAW`): without it every
//! test fails with a message saying so, rather than being skipped.
//!
//! Each test creates namespace `lpt<pid>x<n>` holding a veth pair
//! `lpa..`/`lpb..` (IPv6 off, no addresses, so the kernel sends nothing on
//! them), runs its body on a thread that entered the namespace, and deletes
//! the namespace on drop, panics included. The backend opens end `a`; a
//! [`RawSocket`] on end `b` plays the peer.

mod common;

use common::veth::{LB_MAC, Net, PEER_MAC, require_root, run_ip};
use limpet_dataplane::gso::GsoKind;
use limpet_dataplane::io::afpacket::{
    AfPacketError, AfPacketIo, AfPacketOptions, Fanout, FanoutMode, Offload, RawSocket,
};
use limpet_dataplane::io::{BURST, PacketBuf, PacketIo};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const TEST_ETHERTYPE: u16 = 0x88b5; // IEEE local experimental

/// A test frame: peer -> limpet, ethertype 0x88b5, `seq` in the payload.
fn test_frame(seq: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&LB_MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push(f.len() as u8);
    }
    f
}

fn seq_of(frame: &[u8]) -> Option<u32> {
    (frame.len() >= 18 && frame[12..14] == TEST_ETHERTYPE.to_be_bytes())
        .then(|| u32::from_be_bytes(frame[14..18].try_into().unwrap()))
}

/// An IPv4/UDP or IPv6/UDP frame (checksums not needed here).
fn udp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, id: u32) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&LB_MAC);
    f.extend_from_slice(&PEER_MAC);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            f.extend_from_slice(&[0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0, 0, 12, 17, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => unreachable!(),
    }
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 12, 0, 0]);
    f.extend_from_slice(&id.to_be_bytes());
    while f.len() < 60 {
        f.push(0);
    }
    f
}

fn udp_id(frame: &[u8]) -> Option<u32> {
    let l4 = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => 14 + 20,
        0x86dd => 14 + 40,
        _ => return None,
    };
    frame
        .get(l4 + 8..l4 + 12)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
}

fn small_opts() -> AfPacketOptions {
    AfPacketOptions {
        block_size: 1 << 16,
        block_count: 8,
        tx_frames: 256,
        ..AfPacketOptions::default()
    }
}

/// Receives until `want` frames matching `keep` arrived or `timeout`
/// passed; frees every buffer.
fn collect(
    io: &mut AfPacketIo,
    want: usize,
    timeout: Duration,
    keep: impl Fn(&[u8]) -> bool,
) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut burst = Vec::with_capacity(BURST);
    let deadline = Instant::now() + timeout;
    while got.len() < want && Instant::now() < deadline {
        if io.rx_burst(&mut burst) == 0 {
            io.wait(Some(Duration::from_millis(5))).expect("wait");
            continue;
        }
        for b in &burst {
            assert_eq!(b.port(), 0);
            if keep(b.data()) {
                got.push(b.data().to_vec());
            }
        }
        io.free_burst(&mut burst);
    }
    got
}

fn recv_all(
    peer: &RawSocket,
    want: usize,
    timeout: Duration,
    keep: impl Fn(&[u8]) -> bool,
) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + timeout;
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Some(n) = peer.recv(&mut buf, left).expect("peer recv")
            && keep(&buf[..n])
        {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

#[test]
fn open_errors_are_clear() {
    require_root();
    let err = AfPacketIo::open(&["lpnosuch0"], &AfPacketOptions::default()).unwrap_err();
    assert!(matches!(err, AfPacketError::NotFound { .. }), "{err:?}");
    assert_eq!(err.to_string(), "interface lpnosuch0 not found");
    let err = AfPacketIo::open(&["a-name-far-too-long"], &AfPacketOptions::default()).unwrap_err();
    assert!(matches!(err, AfPacketError::BadName { .. }), "{err:?}");
    let bad = AfPacketOptions {
        block_size: 1000,
        ..AfPacketOptions::default()
    };
    assert!(matches!(
        AfPacketIo::open(&["lo"], &bad),
        Err(AfPacketError::InvalidOptions(_))
    ));
    assert!(matches!(
        RawSocket::open("lpnosuch0"),
        Err(AfPacketError::NotFound { .. })
    ));

    let net = Net::new();
    net.link(&net.a, "down");
    net.run(|| {
        let err = AfPacketIo::open(&[&net.a], &small_opts()).unwrap_err();
        assert!(matches!(err, AfPacketError::LinkDown { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("interface {} is down", net.a));
        let mut io = AfPacketIo::open(
            &[&net.a],
            &AfPacketOptions {
                allow_link_down: true,
                ..small_opts()
            },
        )
        .expect("allow_link_down opens");
        assert!(matches!(io.health(), Err(AfPacketError::LinkDown { .. })));
        // Fanout programs need Client mode.
        assert!(matches!(
            io.set_fanout_program(&[]),
            Err(AfPacketError::NotClientFanout)
        ));
    });
}

#[test]
fn receives_injected_frames_in_place() {
    let net = Net::new();
    net.run(|| {
        let mut io = AfPacketIo::open(&[&net.a], &small_opts()).expect("open");
        let peer = RawSocket::open(&net.b).expect("peer");
        assert_eq!(peer.mac().octets(), PEER_MAC);
        let frames: Vec<Vec<u8>> = (0..300u32)
            .map(|i| test_frame(i, 60 + (i as usize * 7) % 1400))
            .collect();
        for f in &frames {
            peer.send(f).unwrap();
        }
        let got = collect(&mut io, frames.len(), Duration::from_secs(5), |f| {
            seq_of(f).is_some()
        });
        assert_eq!(got, frames, "every frame, in order, byte for byte");

        // A VLAN-tagged frame comes back tagged (the kernel strips the tag
        // into the ring metadata; the backend puts it back).
        let mut tagged = test_frame(9999, 64);
        tagged.splice(12..12, [0x81, 0x00, 0x20, 0x2a]);
        peer.send(&tagged).unwrap();
        let got = collect(&mut io, 1, Duration::from_secs(5), |f| {
            f[12..14] == [0x81, 0x00]
        });
        assert_eq!(got, vec![tagged]);

        // Held buffers hold their block; returning them releases it.
        for i in 0..5 {
            peer.send(&test_frame(i, 60)).unwrap();
        }
        let mut burst = Vec::with_capacity(BURST);
        let deadline = Instant::now() + Duration::from_secs(5);
        while burst.len() < 5 && Instant::now() < deadline {
            io.rx_burst(&mut burst);
        }
        assert_eq!(burst.len(), 5);
        assert_eq!(io.outstanding(), 5);
        assert!(io.held_blocks() >= 1);
        burst[0].data_mut()[0] = 0xee; // writable in place
        assert_eq!(burst[0].data()[0], 0xee);
        io.free_burst(&mut burst);
        assert_eq!(io.outstanding(), 0);
        assert_eq!(io.held_blocks(), 0);
        let s = io.stats();
        assert_eq!(s.rx_blocks, s.rx_blocks_released);
        assert_eq!(s.rx_packets, s.freed);
        assert!(io.health().is_ok(), "{:?}", io.health());
    });
}

/// A worker-like loop: receive, swap MACs, send back out of the same port.
fn reflect(
    io: &mut AfPacketIo,
    burst: &mut Vec<limpet_dataplane::io::afpacket::AfPacketBuf>,
) -> usize {
    let n = io.rx_burst(burst);
    for b in burst.iter_mut() {
        let d = b.data_mut();
        let (dst, rest) = d.split_at_mut(6);
        dst.swap_with_slice(&mut rest[..6]);
        b.set_port(0);
    }
    if n > 0 {
        io.tx_burst(burst);
    }
    n
}

#[test]
fn forwards_rewritten_frames_exactly() {
    let net = Net::new();
    net.run(|| {
        let mut io = AfPacketIo::open(&[&net.a], &small_opts()).expect("open");
        let peer = RawSocket::open(&net.b).expect("peer");
        let sent: Vec<Vec<u8>> = (0..500u32)
            .map(|i| test_frame(i, 60 + (i as usize * 13) % 1450))
            .collect();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let mut burst = Vec::with_capacity(BURST);
                while !stop.load(Ordering::Acquire) {
                    if reflect(&mut io, &mut burst) == 0 {
                        io.wait(Some(Duration::from_millis(2))).unwrap();
                    }
                }
                io
            });
            // In windows of one burst, so no socket buffer on the way can
            // overflow however the threads are scheduled.
            let mut got = Vec::new();
            for window in sent.chunks(BURST) {
                for f in window {
                    peer.send(f).unwrap();
                }
                got.extend(recv_all(&peer, window.len(), Duration::from_secs(5), |f| {
                    seq_of(f).is_some()
                }));
            }
            stop.store(true, Ordering::Release);
            let mut io = worker.join().unwrap();
            let stats = io.stats();
            let expect: Vec<Vec<u8>> = sent
                .iter()
                .map(|f| {
                    let mut f = f.clone();
                    let (dst, rest) = f.split_at_mut(6);
                    dst.swap_with_slice(&mut rest[..6]);
                    f
                })
                .collect();
            assert_eq!(got.len(), expect.len(), "{stats:?}");
            assert_eq!(stats.tx_packets, sent.len() as u64, "{stats:?}");
            assert!(
                got == expect,
                "the peer receives every rewritten frame, in order"
            );
            assert_eq!(io.outstanding(), 0);
        });
    });
}

#[test]
fn blocks_recycle_under_sustained_load() {
    const N: u32 = 100_000;
    let net = Net::new();
    net.run(|| {
        // A small ring (4 blocks of 16 KiB) so 100k frames cycle it many times.
        let opts = AfPacketOptions {
            block_size: 1 << 14,
            block_count: 4,
            tx_frames: 64,
            ..AfPacketOptions::default()
        };
        let mut io = AfPacketIo::open(&[&net.a], &opts).expect("open");
        let peer = RawSocket::open(&net.b).expect("peer");
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let sender = s.spawn(|| {
                let mut f = test_frame(0, 64);
                for i in 0..N {
                    f[14..18].copy_from_slice(&i.to_be_bytes());
                    peer.send(&f).unwrap();
                }
                stop.store(true, Ordering::Release);
            });
            let mut burst = Vec::with_capacity(BURST);
            let mut idle_since = Instant::now();
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let n = if i.is_multiple_of(2) {
                    reflect(&mut io, &mut burst)
                } else {
                    let n = io.rx_burst(&mut burst);
                    io.free_burst(&mut burst);
                    n
                };
                i += 1;
                if n > 0 {
                    idle_since = Instant::now();
                } else if stop.load(Ordering::Acquire)
                    && idle_since.elapsed() > Duration::from_millis(200)
                {
                    break;
                }
            }
            sender.join().unwrap();
        });
        let s = io.stats();
        eprintln!("{s:?}");
        assert_eq!(io.outstanding(), 0);
        assert_eq!(io.held_blocks(), 0, "every block went back to the kernel");
        assert_eq!(s.rx_blocks, s.rx_blocks_released);
        assert!(s.rx_blocks > 100, "the ring was recycled many times: {s:?}");
        assert_eq!(
            s.rx_packets,
            s.tx_packets + s.tx_errors + s.tx_ring_full + s.tx_too_long + s.freed,
            "{s:?}"
        );
        // Every frame the peer sent was received or counted as a kernel
        // drop (fewer only if the veth itself dropped some).
        assert!(
            s.rx_packets + s.rx_dropped_by_kernel <= u64::from(N),
            "{s:?}"
        );
        assert!(s.rx_packets >= 5_000, "{s:?}");
        assert_eq!(s.tx_errors, 0);
        io.health().expect("healthy");
    });
}

#[test]
fn hash_fanout_spreads_frames() {
    let net = Net::new();
    net.run(|| {
        let opts = AfPacketOptions {
            fanout: Some(Fanout {
                group: 4242,
                mode: FanoutMode::Hash,
            }),
            ..small_opts()
        };
        let mut w0 = AfPacketIo::open(&[&net.a], &opts).expect("worker 0");
        let mut w1 = AfPacketIo::open(&[&net.a], &opts).expect("worker 1");
        let peer = RawSocket::open(&net.b).expect("peer");
        let client = Ipv4Addr::new(198, 18, 0, 1);
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        for i in 0..200u16 {
            peer.send(&udp_frame(
                client.into(),
                vip.into(),
                10_000 + i,
                80,
                u32::from(i),
            ))
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let is_udp = |f: &[u8]| udp_id(f).is_some();
        let g0 = collect(&mut w0, 200, Duration::from_millis(300), is_udp);
        let g1 = collect(&mut w1, 200, Duration::from_millis(300), is_udp);
        assert_eq!(
            g0.len() + g1.len(),
            200,
            "each frame reaches exactly one member"
        );
        assert!(
            g0.len() >= 20 && g1.len() >= 20,
            "spread: {} / {}",
            g0.len(),
            g1.len()
        );
    });
}

#[test]
fn client_fanout_program_keeps_connections_on_one_worker() {
    let net = Net::new();
    net.run(|| {
        let opts = AfPacketOptions {
            fanout: Some(Fanout {
                group: 777,
                mode: FanoutMode::Client,
            }),
            ..small_opts()
        };
        let mut w0 = AfPacketIo::open(&[&net.a], &opts).expect("worker 0");
        let mut w1 = AfPacketIo::open(&[&net.a], &opts).expect("worker 1");
        let vip4 = Ipv4Addr::new(192, 0, 2, 10);
        let vip6: Ipv6Addr = "2001:db8::10".parse().unwrap();
        w0.set_fanout_program(&[
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99)),
            vip4.into(),
            vip6.into(),
        ])
        .expect("install program");
        let too_many: Vec<IpAddr> = (0..2000u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i)))
            .collect();
        assert!(matches!(
            w1.set_fanout_program(&too_many),
            Err(AfPacketError::ProgramTooLong { .. })
        ));

        let peer = RawSocket::open(&net.b).expect("peer");
        let backend4: IpAddr = Ipv4Addr::new(203, 0, 113, 7).into();
        let backend6: IpAddr = "2001:db8:be::7".parse::<Ipv6Addr>().unwrap().into();
        // id = 2 * client + direction (0 forward, 1 reply).
        let mut clients: Vec<(IpAddr, IpAddr, IpAddr)> = Vec::new();
        for c in 0..64u32 {
            clients.push((
                Ipv4Addr::from(0xc612_0000 + c * 7 + 1).into(),
                vip4.into(),
                backend4,
            ));
        }
        for c in 0..16u16 {
            let client = Ipv6Addr::new(0x2001, 0xdb8, 0xc1, 0, 0, 0, c, c * 3 + 1);
            clients.push((client.into(), vip6.into(), backend6));
        }
        for (i, &(client, vip, backend)) in clients.iter().enumerate() {
            let id = 2 * i as u32;
            peer.send(&udp_frame(client, vip, 40_000 + i as u16, 443, id))
                .unwrap();
            peer.send(&udp_frame(backend, client, 8443, 40_000 + i as u16, id + 1))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let want = 2 * clients.len();
        let is_udp = |f: &[u8]| udp_id(f).is_some();
        let g0 = collect(&mut w0, want, Duration::from_millis(300), is_udp);
        let g1 = collect(&mut w1, want, Duration::from_millis(300), is_udp);
        assert_eq!(g0.len() + g1.len(), want);
        let mut member: HashMap<u32, usize> = HashMap::new();
        for (m, frames) in [(0, &g0), (1, &g1)] {
            for f in frames {
                member.insert(udp_id(f).unwrap(), m);
            }
        }
        for (i, (client, ..)) in clients.iter().enumerate() {
            let id = 2 * i as u32;
            assert_eq!(
                member[&id],
                member[&(id + 1)],
                "client {client}: forward and reply on one worker"
            );
            let low = match client {
                IpAddr::V4(a) => u32::from(*a),
                IpAddr::V6(a) => u128::from(*a) as u32,
            };
            assert_eq!(
                member[&id],
                (low % 2) as usize,
                "member = low 32 bits of the client mod 2"
            );
        }
        assert!(!g0.is_empty() && !g1.is_empty());
    });
}

#[test]
fn link_down_is_reported_not_hidden() {
    let net = Net::new();
    net.run(|| {
        let mut io = AfPacketIo::open(&[&net.a], &small_opts()).expect("open");
        let peer = RawSocket::open(&net.b).expect("peer");
        peer.send(&test_frame(1, 60)).unwrap();
        let mut burst = Vec::with_capacity(BURST);
        let deadline = Instant::now() + Duration::from_secs(5);
        while burst.is_empty() && Instant::now() < deadline {
            io.rx_burst(&mut burst);
        }
        assert_eq!(burst.len(), 1);
        io.health().expect("healthy while up");

        net.link(&net.a, "down");
        // A blocked worker wakes up and is told.
        let started = Instant::now();
        let woke = io.wait(Some(Duration::from_secs(2)));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "wait returns promptly on link down"
        );
        let err = woke.expect_err("wait reports the link going down");
        assert!(err.to_string().contains(&net.a), "{err}");
        // Sending fails, is counted, and health says why.
        let sent = io.tx_burst(&mut burst);
        assert_eq!(sent, 0);
        let s = io.stats();
        assert_eq!(s.tx_errors, 1, "{s:?}");
        let err = io.health().expect_err("health reports the link down");
        assert!(matches!(err, AfPacketError::LinkDown { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("interface {} is down", net.a));
        assert_eq!(io.outstanding(), 0);

        // Back up: healthy again, and traffic flows.
        net.link(&net.a, "up");
        let deadline = Instant::now() + Duration::from_secs(5);
        while io.health().is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        io.health().expect("healthy after link up");
        peer.send(&test_frame(2, 60)).unwrap();
        let got = collect(&mut io, 1, Duration::from_secs(5), |f| seq_of(f) == Some(2));
        assert_eq!(got.len(), 1);

        // Interface deleted: gone.
        run_ip(&["-n", &net.ns, "link", "del", &net.a]);
        let err = io.health().expect_err("health reports the interface gone");
        assert!(err.to_string().contains(&net.a), "{err}");
        assert!(
            matches!(io.health(), Err(AfPacketError::InterfaceGone { .. })),
            "{:?}",
            io.health()
        );
        assert_eq!(io.rx_burst(&mut burst), 0);
    });
}

#[test]
fn neighbour_socket_passes_arp_and_nd_only() {
    let net = Net::new();
    net.run(|| {
        let nd = RawSocket::open_neighbour(&net.a).expect("neighbour socket");
        assert_eq!(nd.mac().octets(), LB_MAC);
        assert!(nd.ifindex() > 0);
        let peer = RawSocket::open(&net.b).expect("peer");
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&PEER_MAC);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&PEER_MAC);
        arp.extend_from_slice(&[198, 51, 100, 1, 0, 0, 0, 0, 0, 0, 198, 51, 100, 2]);
        arp.resize(60, 0);
        let nd_frame = |icmp_type: u8| {
            let mut f = udp_frame(
                "2001:db8::1".parse::<Ipv6Addr>().unwrap().into(),
                "2001:db8::2".parse::<Ipv6Addr>().unwrap().into(),
                0,
                0,
                0,
            );
            f[20] = 58; // next header: ICMPv6
            f[54] = icmp_type;
            f
        };
        let v4 = udp_frame(
            Ipv4Addr::new(198, 51, 100, 1).into(),
            Ipv4Addr::new(198, 51, 100, 2).into(),
            1,
            2,
            3,
        );
        for f in [
            &v4,
            &nd_frame(128),
            &arp,
            &nd_frame(135),
            &test_frame(1, 60),
            &nd_frame(136),
        ] {
            peer.send(f).unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        while let Some(n) = nd.recv(&mut buf, Duration::from_millis(200)).unwrap() {
            got.push(buf[..n].to_vec());
        }
        assert_eq!(got, vec![arp.clone(), nd_frame(135), nd_frame(136)]);
        let started = Instant::now();
        assert_eq!(nd.recv(&mut buf, Duration::from_millis(50)).unwrap(), None);
        assert!(started.elapsed() >= Duration::from_millis(50));
        nd.send(&arp).unwrap();
        let back = recv_all(&peer, 1, Duration::from_secs(2), |f| {
            f[12..14] == [0x08, 0x06]
        });
        assert_eq!(back, vec![arp]);
    });
}

/// A TCP (or UDP) super-frame peer -> limpet as a local sender's
/// segmentation offload leaves it: one set of headers and `n` payload
/// bytes, to be cut into `mss`-byte segments.
fn super_frame(v6: bool, udp: bool, n: usize, mss: u16) -> (Vec<u8>, Offload, Vec<u8>) {
    use etherparse::PacketBuilder;
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let eth = PacketBuilder::ethernet2(PEER_MAC, LB_MAC);
    let ip = if v6 {
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        dst[15] = 0x10;
        let mut src = dst;
        src[15] = 2;
        eth.ipv6(src, dst, 64)
    } else {
        eth.ipv4([198, 51, 100, 2], [192, 0, 2, 10], 64)
    };
    let mut frame = Vec::new();
    let l4: u16 = if v6 { 14 + 40 } else { 14 + 20 };
    let headers = if udp {
        ip.udp(5353, 53).write(&mut frame, &data).unwrap();
        l4 + 8
    } else {
        ip.tcp(40000, 80, 7_000_000, 64000)
            .ack(1)
            .psh()
            .options(&[etherparse::TcpOptionElement::Timestamp(5, 6)])
            .unwrap()
            .write(&mut frame, &data)
            .unwrap();
        l4 + 32
    };
    let offload = Offload {
        kind: if udp { GsoKind::Udp } else { GsoKind::Tcp },
        v6,
        segment_size: mss,
        headers,
        l4,
    };
    (frame, offload, data)
}

/// Checks one segment as a receiver would (checksums, lengths) and returns
/// its TCP sequence number (0 for UDP) and payload.
fn check_segment(seg: &[u8]) -> (u32, Vec<u8>) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(seg).expect("a segment parses");
    let (src, dst): (IpAddr, IpAddr) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
            assert_eq!(usize::from(h.total_len), seg.len() - 14);
            (h.source.into(), h.destination.into())
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            assert_eq!(usize::from(h.payload_length()), seg.len() - 54);
            (h.source_addr().into(), h.destination_addr().into())
        }
        _ => panic!("not IP"),
    };
    match (&p.transport, src, dst) {
        (Some(TransportSlice::Tcp(t)), IpAddr::V4(s), IpAddr::V4(d)) => {
            let want = t
                .to_header()
                .calc_checksum_ipv4_raw(s.octets(), d.octets(), t.payload());
            assert_eq!(t.checksum(), want.unwrap(), "TCP checksum");
            (t.sequence_number(), t.payload().to_vec())
        }
        (Some(TransportSlice::Tcp(t)), IpAddr::V6(s), IpAddr::V6(d)) => {
            let want = t
                .to_header()
                .calc_checksum_ipv6_raw(s.octets(), d.octets(), t.payload());
            assert_eq!(t.checksum(), want.unwrap(), "TCP checksum");
            (t.sequence_number(), t.payload().to_vec())
        }
        (Some(TransportSlice::Udp(u)), IpAddr::V6(s), IpAddr::V6(d)) => {
            let want = u
                .to_header()
                .calc_checksum_ipv6_raw(s.octets(), d.octets(), u.payload());
            assert_eq!(u.checksum(), want.unwrap(), "UDP checksum");
            assert_eq!(usize::from(u.length()), seg.len() - 54);
            (0, u.payload().to_vec())
        }
        other => panic!("unexpected transport {:?}", other.0),
    }
}

fn is_super_frame_test(f: &[u8]) -> bool {
    f.len() > 14 && matches!(u16::from_be_bytes([f[12], f[13]]), 0x0800 | 0x86dd)
}

#[test]
fn super_frames_arrive_cut_into_the_segments_the_wire_would_carry() {
    let net = Net::new();
    net.run(|| {
        let mut io = AfPacketIo::open(&[&net.a], &AfPacketOptions::default()).expect("open");
        let peer = RawSocket::open_offloading(&net.b).expect("peer");

        for (v6, udp, n, mss) in [
            (false, false, 20_000, 1448),
            (true, false, 60_000, 1428),
            (true, true, 9_000, 1200),
        ] {
            let (frame, offload, data) = super_frame(v6, udp, n, mss);
            peer.send_super_frame(&frame, offload).unwrap();
            let want = n.div_ceil(usize::from(mss));
            let got = collect(&mut io, want, Duration::from_secs(5), is_super_frame_test);
            assert_eq!(got.len(), want, "v6 {v6} udp {udp}: {:?}", io.stats());
            let mut payload = Vec::new();
            for (i, seg) in got.iter().enumerate() {
                assert!(
                    seg.len() <= 1514,
                    "segment {i} fits the wire: {}",
                    seg.len()
                );
                let (seq, bytes) = check_segment(seg);
                if !udp {
                    assert_eq!(seq, 7_000_000 + (i * usize::from(mss)) as u32);
                    let psh = seg[offload.l4 as usize + 13] & 0x08 != 0;
                    assert_eq!(psh, i + 1 == want, "PSH on the last segment only");
                }
                payload.extend(bytes);
            }
            assert_eq!(payload, data, "the payload, in order, exactly once");
        }
        let s = io.stats();
        assert_eq!(s.rx_gso_frames, 3, "{s:?}");
        assert_eq!(s.rx_gso_segments, 14 + 43 + 8, "{s:?}");
        assert_eq!(s.rx_gso_refused, 0, "{s:?}");

        // Segments longer than a TX slot cannot be cut into anything
        // sendable: refused and counted, nothing handed out.
        let (frame, offload, _) = super_frame(false, false, 8000, 4000);
        peer.send_super_frame(&frame, offload).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while io.stats().rx_gso_refused == 0 && Instant::now() < deadline {
            assert!(collect(&mut io, 1, Duration::from_millis(20), is_super_frame_test).is_empty());
        }
        assert_eq!(io.stats().rx_gso_refused, 1);

        // A worker that holds its buffers runs the segment pool dry; the
        // cut resumes, losing nothing, once it returns them.
        let (frame, offload, _) = super_frame(false, false, 64_000, 1448);
        for _ in 0..4 {
            peer.send_super_frame(&frame, offload).unwrap();
        }
        let want = 4 * 64_000usize.div_ceil(1448);
        let mut held = Vec::with_capacity(want + BURST);
        let mut burst = Vec::with_capacity(BURST);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut dry = false;
        while held.len() < want && Instant::now() < deadline {
            if io.rx_burst(&mut burst) == 0 {
                if held.len() >= 128 {
                    dry = true;
                    break;
                }
                io.wait(Some(Duration::from_millis(5))).unwrap();
            }
            held.append(&mut burst);
        }
        assert!(dry, "the pool of 128 ran dry at {} segments", held.len());
        assert_eq!(io.outstanding(), 128);
        io.free_burst(&mut held);
        let rest = collect(
            &mut io,
            want - 128,
            Duration::from_secs(5),
            is_super_frame_test,
        );
        assert_eq!(rest.len(), want - 128);
        assert_eq!(io.outstanding(), 0);
        assert_eq!(io.held_blocks(), 0, "every block went back to the kernel");
        let s = io.stats();
        assert_eq!(s.rx_packets, s.freed, "{s:?}");
    });
}

fn io_counter(io: &AfPacketIo, name: &str) -> u64 {
    let mut out = Vec::new();
    io.counters(&mut out);
    out.iter()
        .find(|(n, _)| *n == name)
        .map_or_else(|| panic!("no counter {name}"), |(_, v)| *v)
}

/// Overload shedding: a ring left a quarter full raises the switch, the
/// XDP program then drops limpet's frames (to its service address) in the
/// driver but still passes the host's, and once the worker has caught up
/// limpet's frames come through again.
#[test]
fn a_backed_up_ring_sheds_limpets_frames_in_xdp_and_recovers() {
    use limpet_dataplane::io::afxdp::{XdpAttach, XdpSteering};
    let net = Net::new();
    net.run(|| {
        let opts = AfPacketOptions {
            block_size: 1 << 12,
            block_count: 16,
            tx_frames: 64,
            ..AfPacketOptions::default()
        };
        let mut io = AfPacketIo::open(&[&net.a], &opts).expect("open");
        let program = XdpSteering::attach_shedding(&[&net.a], XdpAttach::Auto)
            .expect("attach the shedding program (built with clang?)");
        assert!(program.mode(&net.a).is_some());
        io.keep_shedding(program);
        let vip: IpAddr = Ipv4Addr::new(192, 0, 2, 10).into();
        let host: IpAddr = Ipv4Addr::new(192, 0, 2, 77).into();
        let client: IpAddr = Ipv4Addr::new(198, 18, 0, 1).into();
        io.serve_frontends(&[vip]);
        let peer = RawSocket::open(&net.b).expect("peer");
        let send = |dst: IpAddr, id: u32| {
            peer.send(&udp_frame(client, dst, 4000, 80, id))
                .expect("send");
        };

        // Eight frames, each retired in a block of its own (the ring's
        // 1 ms block timeout), while the worker reads nothing.
        for id in 0..8 {
            send(vip, id);
            std::thread::sleep(Duration::from_millis(4));
        }
        assert!(!io.shedding_now());
        // Reading one frame finds 4 of 16 blocks (a quarter) waiting
        // behind it: the switch goes up.
        let mut one = Vec::with_capacity(1);
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        while n == 0 && Instant::now() < deadline {
            n = io.rx_burst(&mut one);
        }
        assert_eq!(n, 1);
        io.free_burst(&mut one);
        assert!(
            io.shedding_now(),
            "a quarter of the ring waiting raises the switch"
        );
        assert_eq!(io_counter(&io, "rx_shed_raised"), 1);

        // Raised: frames to the service address are dropped in XDP, the
        // host's own traffic still reaches the kernel (and so the ring).
        for id in 100..110 {
            send(vip, id);
        }
        send(host, 200);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(io_counter(&io, "rx_shed_dropped"), 10);

        // Catching up lowers it: the rest of the backlog arrives (7 of the
        // first frames, the host's), none of the shed ones.
        let got = collect(&mut io, 8, Duration::from_secs(2), |f| udp_id(f).is_some());
        let mut ids: Vec<u32> = got.iter().filter_map(|f| udp_id(f)).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 6, 7, 200]);
        assert!(!io.shedding_now(), "caught up: the switch is down");
        send(vip, 300);
        let after = collect(&mut io, 1, Duration::from_secs(2), |f| {
            udp_id(f) == Some(300)
        });
        assert_eq!(after.len(), 1, "limpet's frames pass again");
        assert_eq!(io_counter(&io, "rx_shed_dropped"), 10);
    });
}
