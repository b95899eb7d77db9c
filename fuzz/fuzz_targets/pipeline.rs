//! The whole worker pipeline (parse, flow and affinity tables, Maglev,
//! NAT / DSR rewrite, timer wheel) over the in-memory backend, on bursts
//! of frames against a small snapshot, with a hand-moved clock.
//!
//! Input: byte 0 odd is raw mode ([`limpet_fuzz::raw`]: the seed corpus,
//! fixture frames as they are); even is structured mode (an `arbitrary`
//! [`Session`] of built frames). Every poll is checked:
//! - counters add up: rx = tx + drops (by reason, matching each packet's
//!   action) + slow path; forwarded = new flows + flow hits + replies;
//! - every forwarded frame keeps its length (so within its buffer), comes
//!   from limpet's MAC, parses with etherparse, has a valid IPv4 header
//!   checksum, a TCP/UDP checksum exactly as valid as it arrived with (a
//!   zero UDP checksum stays zero), changes no byte but the MACs, TTL, IP
//!   checksum, one address, one port and the L4 checksum, and is a NAT
//!   forward to a backend, a NAT reply from a frontend or a DSR frame
//!   with its L3 untouched;
//! - a frame etherparse reads as plain IPv4/IPv6 TCP/UDP with a good
//!   header checksum is never dropped as truncated, malformed or bad.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use libfuzzer_sys::fuzz_target;
use limpet_dataplane::clock::ManualClock;
use limpet_dataplane::flow::FlowTimeouts;
use limpet_dataplane::io::memory::{BUF_SIZE, HEADROOM};
use limpet_dataplane::io::{BURST, MemoryIo};
use limpet_dataplane::pipeline::{Action, Worker, WorkerConfig};
use limpet_dataplane::snapshot::ForwardMode;
use limpet_dataplane::stats::{DropReason, WorkerStats};
use limpet_dataplane::wire::MacAddr;
use limpet_fuzz::frames::{FrameDesc, PacketDesc, Seen, Session};
use limpet_fuzz::raw;
use limpet_fuzz::services::{
    GUE_PORT, LIMPET_MAC, backend_mac, snapshots, snat_config, snat_source, tunnel_config,
    universe,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A frame as the input gives it: bytes, or a description built when its
/// burst comes (so that replies can answer what was forwarded before).
enum Frame {
    Bytes(Vec<u8>),
    Built(Box<PacketDesc>),
}

struct Burst {
    advance: u32,
    swap: bool,
    frames: Vec<Frame>,
}

fn bursts(data: &[u8]) -> Vec<Burst> {
    let Some((&mode, body)) = data.split_first() else {
        return Vec::new();
    };
    if mode & 1 == 1 {
        let mut out: Vec<Burst> = Vec::new();
        for r in raw::records(body) {
            if r.ctrl & raw::NEW_BURST != 0 || out.is_empty() {
                out.push(Burst {
                    advance: u32::from(r.ctrl & raw::ADVANCE_MASK),
                    swap: r.ctrl & raw::SWAP != 0,
                    frames: Vec::new(),
                });
            }
            out.last_mut()
                .unwrap()
                .frames
                .push(Frame::Bytes(r.frame.to_vec()));
        }
        return out;
    }
    let Ok(session) = Session::arbitrary_take_rest(Unstructured::new(body)) else {
        return Vec::new();
    };
    session
        .bursts
        .into_iter()
        .map(|b| Burst {
            advance: b.advance,
            swap: b.swap,
            frames: b
                .frames
                .into_iter()
                .map(|f| match f {
                    FrameDesc::Packet(p) => Frame::Built(p),
                    FrameDesc::Raw(bytes) => Frame::Bytes(bytes),
                })
                .collect(),
        })
        .collect()
}

/// One frame of a burst: what is injected, and the model it is judged by.
struct Input {
    model: Vec<u8>,
    /// The bytes a sender with checksum offload hands over instead (the
    /// buffer flagged partial); `None`: `model` itself.
    partial: Option<Vec<u8>>,
}

impl Input {
    fn plain(model: Vec<u8>) -> Self {
        Self {
            model,
            partial: None,
        }
    }

    /// `model`, a TCP/UDP frame with a valid checksum, with its checksum
    /// field holding the pseudo-header's folded sum, as Linux leaves a
    /// `CHECKSUM_PARTIAL` packet; any other frame stays plain.
    fn offloaded(model: Vec<u8>) -> Self {
        use limpet_fuzz::refsum;
        let Some(p) = parse(&model).filter(|p| p.l4_sum == L4Sum::Valid && !p.extended) else {
            return Self::plain(model);
        };
        let word = |at: usize| usize::from(u16::from_be_bytes([model[at], model[at + 1]]));
        let (end, pseudo) = match (p.src.ip(), p.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let end = p.l3 + word(p.l3 + 2);
                (
                    end,
                    refsum::pseudo_v4(s.octets(), d.octets(), p.protocol, end - p.l4),
                )
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let end = p.l3 + 40 + word(p.l3 + 4);
                (
                    end,
                    refsum::pseudo_v6(s.octets(), d.octets(), p.protocol, end - p.l4),
                )
            }
            _ => return Self::plain(model),
        };
        let field = p.l4 + if p.protocol == 6 { 16 } else { 6 };
        if end > model.len() || field + 2 > end {
            return Self::plain(model);
        }
        let mut wire = model.clone();
        wire[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
        Self {
            model,
            partial: Some(wire),
        }
    }
}

struct Harness {
    worker: Worker<MemoryIo, ManualClock>,
    clock: ManualClock,
    current: usize,
    /// Source MACs seen so far: where replies may be sent.
    client_macs: Vec<[u8; 6]>,
    /// The last `nat` connections forwarded, for replies to answer.
    seen: Vec<Seen>,
}

impl Harness {
    fn new() -> Self {
        let clock = ManualClock::new(1000);
        // Small tables so that eviction and the wheel's reaping are
        // reached within a few bursts, and short timeouts so that a
        // clock step can expire them.
        let config = WorkerConfig {
            // Echo answered and rejects sent, as by default; a rate high
            // enough that the bucket seldom runs dry within one input.
            icmp: limpet_dataplane::icmp::IcmpConfig {
                echo: true,
                reject_rate: 64,
                ..limpet_dataplane::icmp::IcmpConfig::default()
            },
            mac: MacAddr(LIMPET_MAC),
            flow_capacity: 16,
            affinity_capacity: 8,
            flow_capacity_v6: Some(8),
            affinity_capacity_v6: Some(4),
            timeouts: FlowTimeouts {
                tcp_syn: 5,
                tcp_established: 60,
                tcp_closing: 5,
                tcp_reset: 2,
                udp: 10,
            },
            snat: snat_config(),
            tunnel: tunnel_config(),
        };
        let snapshot = Arc::clone(&snapshots()[0]);
        let worker = Worker::new(MemoryIo::new(BURST), clock.clone(), config, snapshot)
            .expect("worker with small tables");
        Self {
            worker,
            clock,
            current: 0,
            client_macs: Vec::new(),
            seen: Vec::new(),
        }
    }

    fn run(&mut self, burst: &Burst) {
        self.clock.advance(burst.advance);
        if burst.swap {
            self.current ^= 1;
            self.worker
                .set_snapshot(Arc::clone(&snapshots()[self.current]));
        }
        let frames: Vec<Input> = burst
            .frames
            .iter()
            .map(|f| match f {
                Frame::Bytes(b) => Input::plain(b.clone()),
                Frame::Built(p) => {
                    let frame = p.build_with(&self.seen);
                    if p.offloaded {
                        Input::offloaded(frame)
                    } else {
                        Input::plain(frame)
                    }
                }
            })
            // What a buffer takes after its headroom (`MemoryIo::inject`).
            .filter(|f| f.model.len() <= BUF_SIZE - HEADROOM)
            .collect();
        for chunk in frames.chunks(BURST) {
            self.poll(chunk);
        }
    }

    fn poll(&mut self, inputs: &[Input]) {
        // The checks below judge each packet by its model: what limpet must
        // send for an offloaded frame is what it sends for the same frame
        // with its checksum complete.
        let frames: Vec<&Vec<u8>> = inputs.iter().map(|i| &i.model).collect();
        let frames = &frames[..];
        for input in inputs {
            let f = &input.model;
            let io = self.worker.io_mut();
            let queued = match &input.partial {
                Some(wire) => io.inject_partial(wire, 0),
                None => io.inject(f, 0),
            };
            assert!(queued, "pool has room");
            if let Some(mac) = f.get(6..12) {
                let mac: [u8; 6] = mac.try_into().unwrap();
                if !self.client_macs.contains(&mac) {
                    self.client_macs.push(mac);
                }
            }
        }
        let before = self.worker.stats();
        let io_before = (self.worker.io().sent, self.worker.io().freed);
        let n = self.worker.poll();
        assert_eq!(n, frames.len(), "a poll takes the whole burst");
        let after = self.worker.stats();
        let actions: Vec<Action> = self.worker.last_actions(n).to_vec();
        check_counters(&before, &after, &actions);
        let offloaded = inputs.iter().filter(|i| i.partial.is_some()).count() as u64;
        assert!(
            after.checksums_completed - before.checksums_completed <= offloaded,
            "completed a checksum nobody left to offload"
        );
        let io = self.worker.io();
        let forwarded = actions.iter().filter(|a| **a == Action::Forward).count() as u64;
        assert_eq!(
            io.sent - io_before.0,
            forwarded,
            "backend sent what was forwarded"
        );
        assert_eq!(
            io.freed - io_before.1,
            n as u64 - forwarded,
            "backend got every other buffer back"
        );
        for (frame, action) in frames.iter().zip(&actions) {
            match action {
                Action::Forward => {
                    let (port, out) = self
                        .worker
                        .io_mut()
                        .take_sent()
                        .expect("a forwarded frame was sent");
                    if let Some(seen) = check_forwarded(frame, &out, port, &self.client_macs) {
                        if self.seen.len() == 16 {
                            self.seen.remove(0);
                        }
                        self.seen.push(seen);
                    }
                }
                Action::Drop(reason) => check_drop(frame, *reason),
                Action::SlowPath => {}
            }
        }
        assert!(
            self.worker.io_mut().take_sent().is_none(),
            "nothing else sent"
        );
    }
}

fn check_counters(before: &WorkerStats, after: &WorkerStats, actions: &[Action]) {
    let d = |f: fn(&WorkerStats) -> u64| f(after) - f(before);
    let n = actions.len() as u64;
    let count = |want: Action| actions.iter().filter(|a| **a == want).count() as u64;
    assert_eq!(d(|s| s.rx_packets), n, "rx counts the burst");
    assert_eq!(
        d(|s| s.tx_packets),
        count(Action::Forward),
        "tx = forwarded"
    );
    assert_eq!(d(|s| s.slow_path), count(Action::SlowPath), "slow path");
    for reason in DropReason::ALL {
        assert_eq!(
            after.dropped(reason) - before.dropped(reason),
            count(Action::Drop(reason)),
            "drops by reason {reason:?}"
        );
    }
    assert_eq!(
        d(|s| s.tx_packets) + (after.total_drops() - before.total_drops()) + d(|s| s.slow_path),
        n,
        "rx = tx + drops + slow path"
    );
    assert_eq!(
        d(|s| s.new_flows)
            + d(|s| s.flow_hits)
            + d(|s| s.replies)
            + d(|s| s.icmp.errors_to_client)
            + d(|s| s.icmp.errors_to_backend)
            + d(|s| s.icmp.echo_replies)
            + d(|s| s.icmp.rejects),
        count(Action::Forward)
            // Balanced (or an error matched), then not wrapped.
            + count(Action::Drop(DropReason::TunnelTooBig))
            + count(Action::Drop(DropReason::NoTunnelSource))
            + count(Action::Drop(DropReason::NoHeadroom)),
        "every forwarded packet is a new flow, a flow hit, a reply or an ICMP message"
    );
    // A port no service defines, on a service address, is rejected.
    assert!(d(|s| s.no_service) <= d(|s| s.slow_path) + d(|s| s.icmp.rejects));
    let sticky = d(|s| s.affinity_hits)
        + d(|s| s.affinity_misses)
        + d(|s| s.affinity_expired)
        + d(|s| s.affinity_stale);
    assert!(
        sticky
            <= d(|s| s.new_flows)
                + count(Action::Drop(DropReason::NoBackend))
                + count(Action::Drop(DropReason::FlowTableFull))
                // Placed, then refused a source port or address.
                + count(Action::Drop(DropReason::SnatPortsExhausted))
                + count(Action::Drop(DropReason::NoSnatAddress))
                // No usable endpoint, answered with a port unreachable.
                + d(|s| s.icmp.rejects),
        "affinity lookups only for connections being balanced"
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4Sum {
    Valid,
    Invalid,
    /// UDP's zero: no checksum.
    Absent,
}

/// Whether a checksum field agrees with the one computed from scratch
/// (0x0000 and 0xffff are the same number in ones-complement).
fn same_sum(field: u16, computed: u16) -> bool {
    field == computed || (field | computed == 0xffff && (field == 0 || computed == 0))
}

struct Parsed {
    src: SocketAddr,
    dst: SocketAddr,
    protocol: u8,
    ttl: u8,
    /// Offset of the IP header and of the transport header in the frame.
    l3: usize,
    l4: usize,
    ip_header_ok: bool,
    l4_sum: L4Sum,
    /// IPv6 with extension headers, or a header etherparse reads more
    /// leniently than the protocol allows (a UDP length below 8, which it
    /// takes for a jumbogram's).
    extended: bool,
}

fn offset(frame: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - frame.as_ptr() as usize
}

/// Reads a frame with etherparse: the independent oracle.
fn parse(frame: &[u8]) -> Option<Parsed> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (src_ip, dst_ip, ttl, l3, ip_header_ok, extended): (IpAddr, IpAddr, u8, usize, bool, bool) =
        match p.net.as_ref()? {
            NetSlice::Ipv4(v4) => {
                let h = v4.header();
                // etherparse rebuilds the header from its fields to
                // checksum it, and has no field for the reserved flag bit:
                // with that bit set, sum the bytes as they are.
                let ok = if h.slice()[6] & 0x80 == 0 {
                    h.header_checksum() == h.to_header().calc_header_checksum()
                } else {
                    limpet_fuzz::refsum::sum(h.slice()) == 0xffff
                };
                (
                    h.source_addr().into(),
                    h.destination_addr().into(),
                    h.ttl(),
                    offset(frame, h.slice()),
                    ok,
                    false,
                )
            }
            NetSlice::Ipv6(v6) => {
                let h = v6.header();
                (
                    h.source_addr().into(),
                    h.destination_addr().into(),
                    h.hop_limit(),
                    offset(frame, h.slice()),
                    true,
                    // A zero payload length etherparse reads as "to the
                    // end of the buffer" (a jumbogram's).
                    !v6.extensions().is_empty()
                        || v6.payload().len_source != etherparse::LenSource::Ipv6HeaderPayloadLen,
                )
            }
            NetSlice::Arp(_) => return None,
        };
    let mut lenient = false;
    let (src_port, dst_port, protocol, l4, l4_sum) = match p.transport.as_ref()? {
        TransportSlice::Tcp(t) => {
            let computed = match (src_ip, dst_ip) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    t.calc_checksum_ipv4(s.octets(), d.octets()).ok()?
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    t.calc_checksum_ipv6(s.octets(), d.octets()).ok()?
                }
                _ => return None,
            };
            let sum = if same_sum(t.checksum(), computed) {
                L4Sum::Valid
            } else {
                L4Sum::Invalid
            };
            (
                t.source_port(),
                t.destination_port(),
                6u8,
                offset(frame, t.slice()),
                sum,
            )
        }
        TransportSlice::Udp(u) => {
            let h = u.to_header();
            let computed = match (src_ip, dst_ip) {
                (IpAddr::V4(s), IpAddr::V4(d)) => h
                    .calc_checksum_ipv4_raw(s.octets(), d.octets(), u.payload())
                    .ok()?,
                (IpAddr::V6(s), IpAddr::V6(d)) => h
                    .calc_checksum_ipv6_raw(s.octets(), d.octets(), u.payload())
                    .ok()?,
                _ => return None,
            };
            lenient = u.length() < 8;
            let sum = if u.checksum() == 0 {
                L4Sum::Absent
            } else if same_sum(u.checksum(), computed) {
                L4Sum::Valid
            } else {
                L4Sum::Invalid
            };
            (
                u.source_port(),
                u.destination_port(),
                17u8,
                offset(frame, u.slice()),
                sum,
            )
        }
        _ => return None,
    };
    Some(Parsed {
        src: SocketAddr::new(src_ip, src_port),
        dst: SocketAddr::new(dst_ip, dst_port),
        protocol,
        ttl,
        l3,
        l4,
        ip_header_ok,
        l4_sum,
        extended: extended || lenient,
    })
}

fn is_frontend(addr: SocketAddr, protocol: u8, mode: ForwardMode) -> bool {
    universe()
        .frontends
        .iter()
        .any(|&(a, p, m)| a == addr && p == protocol && m == mode)
}

fn is_backend(addr: SocketAddr, mode: ForwardMode) -> bool {
    universe()
        .backends
        .iter()
        .any(|&(a, m)| a == addr && m == mode)
}

/// Checks one forwarded frame; returns the connection if it was a `nat`
/// forward.
fn check_forwarded(input: &[u8], out: &[u8], port: u16, client_macs: &[[u8; 6]]) -> Option<Seen> {
    assert!(
        out.len() <= BUF_SIZE,
        "a forwarded frame stays within its buffer"
    );
    assert_eq!(out[6..12], LIMPET_MAC, "sent from limpet's MAC");
    if let Some(icmp_out) = icmp_view(out) {
        check_icmp_sent(input, &icmp_out);
        return None;
    }
    // An ICMP error translated for a connection: its rewrite is checked
    // by the fixtures and icmp_props, not by this TCP/UDP model.
    let pin = parse(input)?;
    if let Some(inner) = tunnel_inner(out, pin.l3) {
        check_tunnelled(input, out, &pin, inner, port);
        return None;
    }
    assert_eq!(
        out.len(),
        input.len(),
        "a forwarded frame keeps its length: {} sent as {}",
        hex(input),
        hex(out)
    );
    let pout = parse(out).expect("limpet sent a frame etherparse cannot read");
    assert!(pin.ip_header_ok, "forwarded a bad IPv4 header checksum");
    assert!(pout.ip_header_ok, "sent a bad IPv4 header checksum");
    assert_eq!(pin.l4_sum, pout.l4_sum, "L4 checksum validity changed");
    assert_eq!((pin.l3, pin.l4), (pout.l3, pout.l4));
    assert_eq!(pin.protocol, pout.protocol);
    let proto = pin.protocol;
    let dst_mac: [u8; 6] = out[0..6].try_into().unwrap();

    // `nat` and `fullnat` forward alike but for the source, which is
    // translated under `fullnat` always and under `nat` for a client on
    // the backends' subnet.
    let forward_mode = [ForwardMode::Nat, ForwardMode::FullNat]
        .into_iter()
        .find(|&m| is_frontend(pin.dst, proto, m) && is_backend(pout.dst, m));
    let nat_forward = forward_mode.is_some_and(|m| match snat_source(pin.src.ip(), m) {
        Some(ours) => pout.src.ip() == ours,
        None => pout.src == pin.src,
    });
    let reply_mode = [ForwardMode::Nat, ForwardMode::FullNat]
        .into_iter()
        .find(|&m| is_backend(pin.src, m) && is_frontend(pout.src, proto, m));
    // A source-translated reply arrives for limpet's address.
    let snat_reply = reply_mode.is_some()
        && snat_source(pout.dst.ip(), ForwardMode::FullNat) == Some(pin.dst.ip());
    let nat_reply = reply_mode.is_some() && (pout.dst == pin.dst || snat_reply);
    let translated_source = nat_forward && pout.src != pin.src;
    let both_ends = translated_source || snat_reply;
    let dsr = pout.src == pin.src
        && pout.dst == pin.dst
        && (is_frontend(pin.dst, proto, ForwardMode::Dsr) || is_backend(pin.src, ForwardMode::Dsr));
    assert!(
        nat_forward || nat_reply || dsr,
        "forwarded {}->{} as {}->{}: neither NAT forward, NAT reply nor DSR",
        pin.src,
        pin.dst,
        pout.src,
        pout.dst
    );
    if nat_forward {
        assert_eq!(dst_mac, backend_mac(pout.dst.ip()), "to the backend's MAC");
        assert_eq!(port, 1, "out of the backends' port");
    } else if nat_reply {
        assert!(client_macs.contains(&dst_mac), "reply to a client's MAC");
        assert_eq!(port, 0, "back out of the client's port");
    } else {
        assert!(
            universe().backend_macs.contains(&dst_mac) || client_macs.contains(&dst_mac),
            "dsr to a backend or back to a client"
        );
    }
    if nat_forward || nat_reply {
        assert_eq!(pout.ttl, pin.ttl - 1, "NAT forwarding costs a hop");
    } else {
        assert_eq!(pout.ttl, pin.ttl, "dsr leaves L3 alone");
    }

    // No byte changes but those the rewrite owns.
    let mut owned = vec![false; input.len()];
    owned[..12].fill(true);
    if nat_forward || nat_reply {
        let (l3, l4) = (pin.l3, pin.l4);
        let v6 = pin.src.is_ipv6();
        let (src_at, dst_at, len) = if v6 {
            (l3 + 8, l3 + 24, 16)
        } else {
            owned[l3 + 10..l3 + 12].fill(true);
            (l3 + 12, l3 + 16, 4)
        };
        owned[if v6 { l3 + 7 } else { l3 + 8 }] = true;
        // The end NAT rewrites: the destination forwards, the source
        // replies; both when the source is translated too.
        if nat_forward || both_ends {
            owned[dst_at..dst_at + len].fill(true);
            owned[l4 + 2..l4 + 4].fill(true);
        }
        if nat_reply || both_ends {
            owned[src_at..src_at + len].fill(true);
            owned[l4..l4 + 2].fill(true);
        }
        let c = if proto == 6 { l4 + 16 } else { l4 + 6 };
        owned[c..c + 2].fill(true);
    }
    for (i, ((a, b), o)) in input.iter().zip(out).zip(&owned).enumerate() {
        assert!(*o || a == b, "byte {i} changed ({a:#04x} -> {b:#04x})");
    }
    // Where the backend answers: the client, or limpet's source.
    nat_forward.then_some(Seen {
        backend: pout.dst,
        client: pout.src,
        protocol: proto,
    })
}

/// Where the inner packet of a frame limpet tunnelled starts (its outer
/// IP header at `l3`): IP in IP of one family, or UDP to GUE's port.
fn tunnel_inner(out: &[u8], l3: usize) -> Option<usize> {
    let ip = out.get(l3..)?;
    let (header, next) = match ip.first()? >> 4 {
        4 => (usize::from(ip[0] & 0x0f) * 4, *ip.get(9)?),
        6 => (40, *ip.get(6)?),
        _ => return None,
    };
    match next {
        4 | 41 => Some(l3 + header),
        17 if ip.get(header + 2..header + 4)? == GUE_PORT.to_be_bytes() => Some(l3 + header + 8),
        _ => None,
    }
}

/// A TCP/UDP packet sent through a tunnel: to a tunnelled service port,
/// the inner packet exactly the client's (padding left out), the outer
/// header from limpet's address to one of that mode's backends, carrying
/// the hop count and traffic class, its checksums right.
fn check_tunnelled(input: &[u8], out: &[u8], pin: &Parsed, inner: usize, port: u16) {
    use limpet_fuzz::refsum;
    let proto = pin.protocol;
    let mode = [ForwardMode::Ipip, ForwardMode::Gue]
        .into_iter()
        .find(|&m| is_frontend(pin.dst, proto, m))
        .expect("tunnelled a packet of no tunnelled service port");
    let l3 = pin.l3;
    let v6 = pin.src.is_ipv6();
    let len = if v6 {
        40 + usize::from(u16::from_be_bytes([input[l3 + 4], input[l3 + 5]]))
    } else {
        usize::from(u16::from_be_bytes([input[l3 + 2], input[l3 + 3]]))
    };
    assert_eq!(&out[inner..], &input[l3..l3 + len], "the inner packet is the client's");
    assert_eq!(out[12..l3], input[12..l3], "the link header's type and tags kept");
    let outer = &out[l3..inner];
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        let s: [u8; 16] = outer[8..24].try_into().unwrap();
        let d: [u8; 16] = outer[24..40].try_into().unwrap();
        (s.into(), d.into())
    } else {
        let s: [u8; 4] = outer[12..16].try_into().unwrap();
        let d: [u8; 4] = outer[16..20].try_into().unwrap();
        (s.into(), d.into())
    };
    assert!(
        universe()
            .backends
            .iter()
            .any(|&(b, m)| b.ip() == dst && m == mode),
        "tunnelled to {dst}, no backend of its service port"
    );
    let ours: IpAddr = if v6 {
        limpet_fuzz::services::LIMPET6.parse().unwrap()
    } else {
        limpet_fuzz::services::LIMPET4.parse().unwrap()
    };
    assert_eq!(src, ours, "the outer source is limpet's");
    assert_eq!(out[0..6], backend_mac(dst), "to the endpoint's MAC");
    assert_eq!(port, 1, "out of the backends' port");
    let inner_ip = &input[l3..];
    if v6 {
        assert_eq!(outer[7], inner_ip[7], "hop limit carried");
        let class = |h: &[u8]| (h[0] << 4) | (h[1] >> 4);
        assert_eq!(class(outer), class(inner_ip), "traffic class carried");
        // limpet derives the outer UDP checksum from the inner one: right
        // whenever the inner one is (a wrong one makes it wrong too).
        if mode == ForwardMode::Gue && pin.l4_sum != L4Sum::Invalid {
            let udp = &out[l3 + 40..];
            let s: [u8; 16] = outer[8..24].try_into().unwrap();
            let d: [u8; 16] = outer[24..40].try_into().unwrap();
            assert!(
                refsum::verifies(refsum::pseudo_v6(s, d, 17, udp.len()), udp),
                "outer UDP checksum of a right inner one: {}",
                hex(out)
            );
        }
    } else {
        assert_eq!(refsum::sum(&outer[..20]), 0xffff, "outer IPv4 header checksum");
        assert_eq!(outer[8], inner_ip[8], "TTL carried");
        assert_eq!(outer[1], inner_ip[1], "DSCP/ECN carried");
    }
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_drop(input: &[u8], reason: DropReason) {
    if !matches!(
        reason,
        DropReason::Truncated | DropReason::Malformed | DropReason::BadChecksum
    ) {
        return;
    }
    // Only frames both parsers must read alike: one tag at most, no IPv6
    // extension headers, not a fragment.
    let Some(p) = parse(input) else {
        return;
    };
    let plain_l2 = match u16::from_be_bytes([input[12], input[13]]) {
        0x0800 | 0x86dd => p.l3 == 14,
        0x8100 => {
            p.l3 == 18 && matches!(u16::from_be_bytes([input[16], input[17]]), 0x0800 | 0x86dd)
        }
        _ => false,
    };
    if !plain_l2 || p.extended {
        return;
    }
    if reason == DropReason::BadChecksum {
        assert!(
            !p.ip_header_ok,
            "dropped a good IPv4 header as a bad checksum: {}",
            hex(input)
        );
    } else {
        panic!(
            "dropped as {reason:?} a frame etherparse reads as plain TCP/UDP: {}",
            hex(input)
        );
    }
}

/// An ICMP or ICMPv6 message as sent (no IPv6 extension headers: limpet
/// sends none), with its checksums verified by the reference sum.
struct IcmpView {
    src: IpAddr,
    dst: IpAddr,
    kind: (u8, u8),
    ip_header_ok: bool,
    icmp_ok: bool,
}

fn icmp_view(frame: &[u8]) -> Option<IcmpView> {
    use limpet_fuzz::refsum;
    // Past any VLAN tags (a reject keeps the packet's own).
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    while matches!(ethertype, 0x8100 | 0x88a8) {
        at += 4;
        ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    }
    let ip = frame.get(at + 2..)?;
    match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            if ip[0] >> 4 != 4 || *ip.get(9)? != 1 || ihl < 20 || total < ihl + 8 {
                return None;
            }
            let msg = ip.get(ihl..total)?;
            Some(IcmpView {
                src: IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).ok()?),
                dst: IpAddr::from(<[u8; 4]>::try_from(&ip[16..20]).ok()?),
                kind: (msg[0], msg[1]),
                ip_header_ok: refsum::sum(&ip[..ihl]) == 0xffff,
                icmp_ok: refsum::sum(msg) == 0xffff,
            })
        }
        0x86dd => {
            let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            if ip[0] >> 4 != 6 || *ip.get(6)? != 58 || len < 8 {
                return None;
            }
            let msg = ip.get(40..40 + len)?;
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let dst: [u8; 16] = ip[24..40].try_into().ok()?;
            Some(IcmpView {
                src: IpAddr::from(src),
                dst: IpAddr::from(dst),
                kind: (msg[0], msg[1]),
                ip_header_ok: true,
                icmp_ok: refsum::verifies(refsum::pseudo_v6(src, dst, 58, len), msg),
            })
        }
        _ => None,
    }
}

/// An ICMP message limpet sent for `input`: a reject of a TCP/UDP packet
/// (a port unreachable back to its sender, checksums computed afresh), or
/// an echo reply or translated error (checksums updated incrementally, so
/// as valid as the input's).
fn check_icmp_sent(input: &[u8], out: &IcmpView) {
    if let Some(pin) = parse(input) {
        let unreachable = if pin.src.is_ipv6() { (1, 4) } else { (3, 3) };
        // Or, for a tunnelled service port, too big once wrapped.
        let too_big = if pin.src.is_ipv6() { (2, 0) } else { (3, 4) };
        let tunnelled = [ForwardMode::Ipip, ForwardMode::Gue]
            .into_iter()
            .any(|m| is_frontend(pin.dst, pin.protocol, m));
        assert!(
            out.kind == unreachable || (tunnelled && out.kind == too_big),
            "a TCP/UDP packet answered only by a port unreachable, or too big for a tunnel: {:?}",
            out.kind
        );
        assert_eq!(
            (out.src, out.dst),
            (pin.dst.ip(), pin.src.ip()),
            "rejected back to its sender"
        );
        assert!(
            out.ip_header_ok && out.icmp_ok,
            "a reject with a bad checksum"
        );
        return;
    }
    let inp = icmp_view(input).expect("an ICMP message sent for neither TCP/UDP nor ICMP");
    assert!(
        !inp.ip_header_ok || out.ip_header_ok,
        "sent a bad IPv4 header checksum for an ICMP message"
    );
    assert_eq!(inp.icmp_ok, out.icmp_ok, "ICMP checksum validity changed");
}

/// How deep inputs reach, printed per execution when `LIMPET_FUZZ_STATS`
/// is set: executions, structured ones, structured ones that forwarded a
/// frame, frames, frames forwarded, of which replies.
mod depth {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    pub static COUNTS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

    pub fn enabled() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var_os("LIMPET_FUZZ_STATS").is_some())
    }

    pub fn add(i: usize, n: u64) {
        COUNTS[i].fetch_add(n, Relaxed);
    }

    pub fn print() {
        let c: Vec<u64> = COUNTS.iter().map(|c| c.load(Relaxed)).collect();
        eprintln!(
            "depth: execs {} structured {} forwarding {} frames {} forwarded {} replies {}",
            c[0], c[1], c[2], c[3], c[4], c[5]
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let bursts = bursts(data);
    if bursts.is_empty() {
        return;
    }
    let mut h = Harness::new();
    for b in &bursts {
        h.run(b);
    }
    if depth::enabled() {
        let s = h.worker.stats();
        let structured = data[0] & 1 == 0;
        depth::add(0, 1);
        depth::add(1, u64::from(structured));
        depth::add(2, u64::from(structured && s.tx_packets > 0));
        depth::add(3, s.rx_packets);
        depth::add(4, s.tx_packets);
        depth::add(5, s.replies);
        depth::print();
        if std::env::var_os("LIMPET_FUZZ_STATS_DETAIL").is_some() {
            eprintln!("{s:?}");
        }
    }
});
