//! ICMP on the packet path: errors follow the connection they quote, echo
//! requests to limpet's addresses are answered, and packets for a service
//! port that cannot be served are refused with a port unreachable, all in
//! place in the received buffer.
//!
//! **Errors.** An ICMP or `ICMPv6` error (destination unreachable, including
//! fragmentation needed; packet too big; time exceeded; parameter problem)
//! quotes the header of the packet it is about. Reversing the quoted tuple
//! gives the tuple of a packet travelling the error's way, so one flow-table
//! lookup finds the connection and the direction, as conntrack and IPVS do:
//!
//! - a reply-key hit is an error about a packet limpet sent to a backend (a
//!   router between limpet and the backend, or the backend itself,
//!   answering the client's translated packet): the quoted destination
//!   address and port go back to the service's, the outer source becomes the
//!   service address (what conntrack does), and the error goes to the
//!   client's hop;
//! - a forward-key hit is an error about a reply limpet translated for the
//!   client: the quoted source goes back to the backend's, the outer
//!   destination becomes the backend, and it goes to the backend. Under
//!   `dsr` only the MAC addresses change, as for the connection's packets.
//!
//! The quoted IPv4 header checksum, the quoted TCP or UDP checksum (where
//! the quote holds it; a zero UDP checksum stays zero) and the ICMP checksum
//! (with the IPv6 pseudo-header for `ICMPv6`) are updated incrementally. The
//! MTU of a fragmentation-needed or packet-too-big is left as it is: the
//! translation changes no packet's size, so the path's MTU is the client's
//! too. An error quoting no connection limpet holds is dropped and counted
//! ([`DropReason::IcmpNoConnection`]).
//!
//! **Echo.** An echo request to one of limpet's own addresses or to a
//! service address is answered (unless turned off): the request becomes
//! its reply in place.
//!
//! **Rejects.** A TCP or UDP packet for a service port with no usable
//! endpoint, or for a port a service address does not define, is answered
//! with a port unreachable, as kube-proxy's `reject` rules do, so the client
//! fails at once instead of timing out. The received buffer becomes the
//! reply: the new headers go into the room before the frame
//! ([`PacketBuf::prepend`]) and the packet itself, cut to the 576-byte
//! (IPv4) or 1280-byte (IPv6) limit, is the quote. A token bucket per worker
//! bounds the rate; what it holds back is counted and dropped as before.

use crate::encap::{self, Encap, Tunnel};
use crate::flow::{Direction, Flow, FlowKey, FlowTable};
use crate::io::PacketBuf;
use crate::nat::{End, IpRewrite};
use crate::pipeline::Action;
use crate::snapshot::Snapshot;
use crate::stats::DropReason;
use crate::wire::checksum::{self, fold, sum};
use crate::wire::{IpProtocol, MacAddr, icmpv4, icmpv6};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Port unreachables a worker sends per second by default: Linux's own
/// `net.ipv4.icmp_msgs_per_sec`.
pub const DEFAULT_REJECT_RATE: u32 = 1000;

/// Largest IPv4 datagram an ICMP error may be (RFC 1812 4.3.2.3).
const MAX_ERROR_V4: usize = 576;
/// Largest IPv6 packet an `ICMPv6` error may be (RFC 4443 2.4 (c)).
const MAX_ERROR_V6: usize = 1280;

const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const ICMP_HEADER: usize = 8;

/// IPv4's parameter problem (RFC 792), the one error type the wire module
/// has no name for.
const V4_PARAMETER_PROBLEM: u8 = 12;
/// Destination unreachable codes for "port unreachable".
const V4_PORT_UNREACHABLE: u8 = 3;
const V6_PORT_UNREACHABLE: u8 = 4;
/// Destination unreachable's "fragmentation needed and DF set" (RFC 1191).
const V4_FRAG_NEEDED: u8 = 4;

/// How a worker treats ICMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpConfig {
    /// Answer echo requests to `own_addrs` and to service addresses.
    pub echo: bool,
    /// limpet's own addresses (`--address`).
    pub own_addrs: Vec<IpAddr>,
    /// Port unreachables per second per worker (and as many at once);
    /// 0 sends none (such packets are dropped and counted, as before).
    pub reject_rate: u32,
}

impl Default for IcmpConfig {
    fn default() -> Self {
        Self {
            echo: true,
            own_addrs: Vec::new(),
            reject_rate: DEFAULT_REJECT_RATE,
        }
    }
}

/// What a worker did with ICMP.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IcmpCounters {
    /// Errors about packets sent to a backend, translated to the client.
    pub errors_to_client: u64,
    /// Errors about replies, translated to the backend.
    pub errors_to_backend: u64,
    pub echo_replies: u64,
    /// Port unreachables sent.
    pub rejects: u64,
    /// Port unreachables the token bucket held back.
    pub rejects_rate_limited: u64,
    /// Port unreachables not sent because the buffer had no room before
    /// the frame for the new headers, or the packet's source may not be
    /// answered (multicast, broadcast, unspecified).
    pub rejects_unsent: u64,
    /// "Fragmentation needed" / "packet too big" sent to clients whose
    /// packets would not fit the tunnel once encapsulated.
    pub too_big: u64,
}

/// A token bucket on the worker's seconds clock: `rate` tokens a second,
/// at most `rate` saved up.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: u32,
    tokens: u32,
    at: u32,
}

impl TokenBucket {
    pub fn new(rate: u32, now: u32) -> Self {
        Self {
            rate,
            tokens: rate,
            at: now,
        }
    }

    /// Takes a token if one is left.
    #[inline]
    pub fn take(&mut self, now: u32) -> bool {
        if now != self.at {
            let refill = now.wrapping_sub(self.at).saturating_mul(self.rate);
            self.tokens = self.tokens.saturating_add(refill).min(self.rate);
            self.at = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// A worker's ICMP settings and state.
#[derive(Debug)]
pub struct Icmp {
    config: IcmpConfig,
    bucket: TokenBucket,
}

/// What the ICMP handlers need from the worker.
pub struct Env<'a> {
    pub snapshot: &'a Snapshot,
    pub flows4: &'a FlowTable<Ipv4Addr>,
    pub flows6: &'a FlowTable<Ipv6Addr>,
    /// The MAC address limpet sends from.
    pub mac: MacAddr,
    pub now: u32,
    pub counters: &'a mut IcmpCounters,
    /// GUE's port: errors quoting limpet's own GUE packets are recognised
    /// by it.
    pub gue_port: u16,
}

impl Icmp {
    pub fn new(config: IcmpConfig, now: u32) -> Self {
        let bucket = TokenBucket::new(config.reject_rate, now);
        Self { config, bucket }
    }

    /// Whether echo requests to `addr` are answered.
    fn answers(&self, snapshot: &Snapshot, addr: IpAddr) -> bool {
        self.config.echo
            && (self.config.own_addrs.contains(&addr)
                || snapshot.frontend_addrs().binary_search(&addr).is_ok())
    }

    /// Handles an ICMP or `ICMPv6` message the parser found: the IP header
    /// at `l3` (checked, an IPv4 one's checksum verified), the message at
    /// `l4` within it. `port` holds the port it arrived on and is set to
    /// the one it leaves by. Messages for the neighbour machinery and
    /// anything else limpet does not handle here go to the slow path.
    pub fn message<B: PacketBuf>(
        &self,
        env: &mut Env<'_>,
        buf: &mut B,
        l3: usize,
        l4: usize,
        port: &mut u16,
        encap: &mut Option<Encap>,
    ) -> Action {
        let frame = buf.data_mut();
        let mut len = None;
        let action = match frame.get(l3).map(|b| b >> 4) {
            Some(4) => self.message_v4(env, frame, (l3, l4), port, (encap, &mut len)),
            Some(6) => self.message_v6(env, frame, (l3, l4), port, (encap, &mut len)),
            _ => Action::SlowPath,
        };
        if let Some(len) = len {
            buf.truncate(len);
        }
        action
    }

    /// `out`: the tunnel the message still has to be wrapped for, and the
    /// frame's new length if the message was rebuilt shorter.
    fn message_v4(
        &self,
        env: &mut Env<'_>,
        frame: &mut [u8],
        (l3, l4): (usize, usize),
        port: &mut u16,
        (encap, len): (&mut Option<Encap>, &mut Option<usize>),
    ) -> Action {
        let Some(ip) = frame.get(l3..) else {
            return Action::Drop(DropReason::Truncated);
        };
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        let Some(msg) = ip.get(l4..total).filter(|m| m.len() >= ICMP_HEADER) else {
            return Action::Drop(DropReason::Truncated);
        };
        let kind = msg[0];
        let handled = matches!(
            kind,
            icmpv4::msg_type::ECHO_REQUEST
                | icmpv4::msg_type::DEST_UNREACHABLE
                | icmpv4::msg_type::TIME_EXCEEDED
                | V4_PARAMETER_PROBLEM
        );
        if !handled {
            return Action::SlowPath;
        }
        if fold(sum(msg)) != 0xffff {
            return Action::Drop(DropReason::BadChecksum);
        }
        if kind == icmpv4::msg_type::ECHO_REQUEST {
            let dst = Ipv4Addr::from(get4(ip, 16));
            if msg[1] != 0 || l4 != IPV4_HEADER || !self.answers(env.snapshot, dst.into()) {
                return Action::SlowPath;
            }
            if !unicast_v4(Ipv4Addr::from(get4(ip, 12))) {
                return Action::Drop(DropReason::Malformed);
            }
            echo_v4(frame, l3, total, env.mac);
            env.counters.echo_replies += 1;
            return Action::Forward;
        }
        if kind == icmpv4::msg_type::DEST_UNREACHABLE
            && msg[1] == V4_FRAG_NEEDED
            && let Some(at) = encap::quoted_tunnel(&msg[ICMP_HEADER..], env.gue_port)
        {
            let mtu = u32::from(get_u16(msg, 6));
            let inner = l3 + l4 + ICMP_HEADER + at..l3 + total;
            let tunnelled = quoted_v4(&frame[inner.clone()])
                .ok()
                .and_then(|q| tunnelled_flow(env.flows4, &q.key, env.now));
            if let Some(flow) = tunnelled {
                return tunnel_too_big(env, frame, (l3, inner, at), &flow, mtu, (port, len));
            }
        }
        let quote = match quoted_v4(&msg[ICMP_HEADER..]) {
            Ok(q) => q,
            Err(reason) => return Action::Drop(reason),
        };
        let Some((idx, dir)) = env.flows4.lookup(quote.key.hash(), &quote.key, env.now) else {
            return Action::Drop(DropReason::IcmpNoConnection);
        };
        if ip[8] <= 1 {
            return Action::Drop(DropReason::TtlExceeded);
        }
        let flow = *env.flows4.get(idx);
        *port = translate(frame, l3, l4, total, quote.l4, &flow, dir, env.mac);
        *encap = tunnelled(&flow, dir, quote.key.hash());
        count(env.counters, dir);
        Action::Forward
    }

    /// `out`: the tunnel the message still has to be wrapped for, and the
    /// frame's new length if the message was rebuilt shorter.
    fn message_v6(
        &self,
        env: &mut Env<'_>,
        frame: &mut [u8],
        (l3, l4): (usize, usize),
        port: &mut u16,
        (encap, len): (&mut Option<Encap>, &mut Option<usize>),
    ) -> Action {
        let Some(ip) = frame.get(l3..).filter(|ip| ip.len() >= IPV6_HEADER) else {
            return Action::Drop(DropReason::Truncated);
        };
        let total = (IPV6_HEADER + usize::from(u16::from_be_bytes([ip[4], ip[5]]))).min(ip.len());
        let Some(msg) = ip.get(l4..total).filter(|m| m.len() >= ICMP_HEADER) else {
            return Action::Drop(DropReason::Truncated);
        };
        let kind = msg[0];
        let handled = matches!(
            kind,
            icmpv6::msg_type::ECHO_REQUEST
                | icmpv6::msg_type::DEST_UNREACHABLE
                | icmpv6::msg_type::PACKET_TOO_BIG
                | icmpv6::msg_type::TIME_EXCEEDED
                | icmpv6::msg_type::PARAM_PROBLEM
        );
        if !handled {
            // Neighbour discovery above all: the neighbour thread's.
            return Action::SlowPath;
        }
        let src = Ipv6Addr::from(get16(ip, 8));
        let dst = Ipv6Addr::from(get16(ip, 24));
        let pseudo = checksum::pseudo_header_v6(src, dst, IpProtocol::ICMPV6, msg.len() as u32);
        if fold(pseudo + sum(msg)) != 0xffff {
            return Action::Drop(DropReason::BadChecksum);
        }
        if kind == icmpv6::msg_type::ECHO_REQUEST {
            if msg[1] != 0 || !self.answers(env.snapshot, dst.into()) {
                return Action::SlowPath;
            }
            if src.is_unspecified() || src.is_multicast() {
                return Action::Drop(DropReason::Malformed);
            }
            echo_v6(frame, l3, l4, total, env.mac);
            env.counters.echo_replies += 1;
            return Action::Forward;
        }
        if kind == icmpv6::msg_type::PACKET_TOO_BIG
            && let Some(at) = encap::quoted_tunnel(&msg[ICMP_HEADER..], env.gue_port)
        {
            let mtu = u32::from_be_bytes(get4(msg, 4));
            let inner = l3 + l4 + ICMP_HEADER + at..l3 + total;
            let tunnelled = quoted_v6(&frame[inner.clone()])
                .ok()
                .and_then(|q| tunnelled_flow(env.flows6, &q.key, env.now));
            if let Some(flow) = tunnelled {
                return tunnel_too_big(env, frame, (l3, inner, at), &flow, mtu, (port, len));
            }
        }
        let quote = match quoted_v6(&msg[ICMP_HEADER..]) {
            Ok(q) => q,
            Err(reason) => return Action::Drop(reason),
        };
        let Some((idx, dir)) = env.flows6.lookup(quote.key.hash(), &quote.key, env.now) else {
            return Action::Drop(DropReason::IcmpNoConnection);
        };
        if ip[7] <= 1 {
            return Action::Drop(DropReason::TtlExceeded);
        }
        let flow = *env.flows6.get(idx);
        *port = translate(frame, l3, l4, total, quote.l4, &flow, dir, env.mac);
        *encap = tunnelled(&flow, dir, quote.key.hash());
        count(env.counters, dir);
        Action::Forward
    }

    /// Where the pipeline decided `action` for a TCP or UDP packet to
    /// `dst` (IP header at `l3`): turns a packet for a service port with no
    /// usable endpoint, or for a port a service address does not define,
    /// into a port unreachable back to its sender, if the rate allows.
    /// Returns the action to take.
    pub fn reject<B: PacketBuf>(
        &mut self,
        env: &mut Env<'_>,
        buf: &mut B,
        l3: usize,
        dst: IpAddr,
        action: Action,
    ) -> Action {
        let rejectable = match action {
            Action::Drop(DropReason::NoBackend) => true,
            Action::SlowPath => env.snapshot.frontend_addrs().binary_search(&dst).is_ok(),
            _ => false,
        };
        if !rejectable || self.config.reject_rate == 0 {
            return action;
        }
        if !answerable(buf.data(), l3) {
            env.counters.rejects_unsent += 1;
            return action;
        }
        if !self.bucket.take(env.now) {
            env.counters.rejects_rate_limited += 1;
            return action;
        }
        let built = match dst {
            IpAddr::V4(_) => error_reply(
                buf,
                l3,
                icmpv4::msg_type::DEST_UNREACHABLE,
                V4_PORT_UNREACHABLE,
                [0; 4],
                env.mac,
            ),
            IpAddr::V6(_) => error_reply(
                buf,
                l3,
                icmpv6::msg_type::DEST_UNREACHABLE,
                V6_PORT_UNREACHABLE,
                [0; 4],
                env.mac,
            ),
        };
        if !built {
            env.counters.rejects_unsent += 1;
            return action;
        }
        env.counters.rejects += 1;
        Action::Forward
    }

    /// Turns a packet (IP header at `l3`) that would not fit the tunnel
    /// once wrapped into "fragmentation needed" (IPv4) or "packet too big"
    /// (IPv6) with `mtu`, back to its sender at `client_mac`, as a router
    /// at the tunnel's entry answers; the token bucket of rejects bounds
    /// the rate. Returns whether it did (otherwise the packet is as it was).
    pub fn too_big<B: PacketBuf>(
        &mut self,
        env: &mut Env<'_>,
        buf: &mut B,
        l3: usize,
        mtu: u16,
        client_mac: MacAddr,
    ) -> bool {
        if !answerable(buf.data(), l3) || !self.bucket.take(env.now) {
            return false;
        }
        let v4 = buf.data().get(l3).is_some_and(|b| b >> 4 == 4);
        let [hi, lo] = mtu.to_be_bytes();
        let (kind, code) = too_big_type(v4);
        let built = error_reply(buf, l3, kind, code, [0, 0, hi, lo], env.mac);
        if built {
            buf.data_mut()[0..6].copy_from_slice(&client_mac.0);
            env.counters.too_big += 1;
        }
        built
    }
}

/// The type and code of "fragmentation needed" (IPv4, `v4`) or "packet
/// too big" (`ICMPv6`).
fn too_big_type(v4: bool) -> (u8, u8) {
    if v4 {
        (icmpv4::msg_type::DEST_UNREACHABLE, V4_FRAG_NEEDED)
    } else {
        (icmpv6::msg_type::PACKET_TOO_BIG, 0)
    }
}

/// An error about a reply of a tunnelled connection goes to its endpoint
/// the way the connection's packets do, wrapped, with the connection's
/// outer source (`hash`: its forward tuple's, which the quote reverses to).
fn tunnelled<A: IpRewrite>(flow: &Flow<A>, dir: Direction, hash: u64) -> Option<Encap> {
    (dir == Direction::Forward && flow.tunnel != Tunnel::None).then(|| Encap {
        tunnel: flow.tunnel,
        dst: flow.backend_addr.ip(),
        hash,
    })
}

/// The tunnelled connection whose packet a tunnel error quotes (`key`:
/// the quoted tuple reversed, as [`quoted_v4`] reads it), if limpet holds
/// one.
fn tunnelled_flow<A: IpRewrite>(
    flows: &FlowTable<A>,
    key: &FlowKey<A>,
    now: u32,
) -> Option<Flow<A>> {
    let forward = FlowKey {
        src: key.dst,
        dst: key.src,
        src_port: key.dst_port,
        dst_port: key.src_port,
        protocol: key.protocol,
    };
    let (idx, dir) = flows.lookup(forward.hash(), &forward, now)?;
    let flow = *flows.get(idx);
    (dir == Direction::Forward && flow.tunnel != Tunnel::None).then_some(flow)
}

/// A router on the tunnel's path could not forward one of limpet's outer
/// packets (its MTU `mtu` is too small) and told limpet, the outer source:
/// the error (IP header at `l3`) becomes the one the client needs, as if
/// limpet were that router for the inner packet (what Linux's own tunnels
/// do): from the service address to the client, quoting the client's
/// packet (`inner`, `overhead` bytes into the router's quote), with the
/// MTU less the tunnel's overhead. The frame's new length goes to `len`.
#[cold]
#[inline(never)]
fn tunnel_too_big<A: IpRewrite>(
    env: &mut Env<'_>,
    frame: &mut [u8],
    (l3, inner, overhead): (usize, std::ops::Range<usize>, usize),
    flow: &Flow<A>,
    mtu: u32,
    (port, len): (&mut u16, &mut Option<usize>),
) -> Action {
    let v4 = A::LEN == 4;
    let (header, limit, min) = if v4 {
        (IPV4_HEADER, MAX_ERROR_V4, 68)
    } else {
        (IPV6_HEADER, MAX_ERROR_V6, 1280)
    };
    // A router that reports no MTU (RFC 792's) leaves nothing to tell.
    let Some(mtu) = mtu.checked_sub(overhead as u32).filter(|_| mtu != 0) else {
        return Action::Drop(DropReason::Malformed);
    };
    // IPv6 links carry 1280 bytes at least (RFC 8200 5).
    let mtu = mtu.max(min);
    let quote = inner.len().min(limit - header - ICMP_HEADER);
    frame.copy_within(inner.start..inner.start + quote, l3 + header + ICMP_HEADER);
    frame[0..6].copy_from_slice(&flow.client_mac.0);
    frame[6..12].copy_from_slice(&env.mac.0);
    let rest = if v4 {
        let [hi, lo] = (mtu.min(0xffff) as u16).to_be_bytes();
        [0, 0, hi, lo]
    } else {
        mtu.to_be_bytes()
    };
    let (kind, code) = too_big_type(v4);
    let end = write_error(
        &mut frame[l3..],
        (flow.service_addr.octets16(), flow.client.octets16()),
        (kind, code, rest),
        quote,
        v4,
    );
    *len = Some(l3 + end);
    *port = flow.client_iface;
    env.counters.errors_to_client += 1;
    Action::Forward
}

fn count(counters: &mut IcmpCounters, dir: Direction) {
    match dir {
        Direction::Reply => counters.errors_to_client += 1,
        Direction::Forward => counters.errors_to_backend += 1,
    }
}

#[inline(always)]
fn get4(b: &[u8], at: usize) -> [u8; 4] {
    let mut out = [0; 4];
    out.copy_from_slice(&b[at..at + 4]);
    out
}

#[inline(always)]
fn get16(b: &[u8], at: usize) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(&b[at..at + 16]);
    out
}

#[inline(always)]
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Whether an IPv4 source may be sent an ICMP message (RFC 1122 3.2.2).
fn unicast_v4(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

/// The quoted packet's tuple, reversed (the tuple of a packet travelling
/// the error's way), and where its transport header starts in the quote.
struct Quote<A> {
    key: FlowKey<A>,
    l4: usize,
}

/// Reads the IPv4 header and ports an ICMP error quotes. The quote is cut
/// short by design, so its length fields are not checked against it.
fn quoted_v4(q: &[u8]) -> Result<Quote<Ipv4Addr>, DropReason> {
    if q.len() < IPV4_HEADER {
        return Err(DropReason::Truncated);
    }
    if q[0] >> 4 != 4 || usize::from(q[0] & 0x0f) * 4 < IPV4_HEADER {
        return Err(DropReason::Malformed);
    }
    let l4 = usize::from(q[0] & 0x0f) * 4;
    if q.len() < l4 + 8 {
        return Err(DropReason::Truncated);
    }
    if get_u16(q, 6) & 0x1fff != 0 {
        // A later fragment carries no ports.
        return Err(DropReason::Fragment);
    }
    let protocol = q[9];
    if !matches!(protocol, IpProtocol::TCP | IpProtocol::UDP) {
        return Err(DropReason::IcmpNoConnection);
    }
    Ok(Quote {
        key: FlowKey {
            src: Ipv4Addr::from(get4(q, 16)),
            dst: Ipv4Addr::from(get4(q, 12)),
            src_port: get_u16(q, l4 + 2),
            dst_port: get_u16(q, l4),
            protocol,
        },
        l4,
    })
}

/// Reads the IPv6 header, extension headers and ports an `ICMPv6` error
/// quotes.
fn quoted_v6(q: &[u8]) -> Result<Quote<Ipv6Addr>, DropReason> {
    if q.len() < IPV6_HEADER {
        return Err(DropReason::Truncated);
    }
    if q[0] >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    let mut protocol = q[6];
    let mut l4 = IPV6_HEADER;
    // The same bound as the parser's walk over a packet's own chain.
    for _ in 0..8 {
        match protocol {
            IpProtocol::HOPOPTS | IpProtocol::ROUTING | IpProtocol::DSTOPTS => {
                let (Some(&next), Some(&units)) = (q.get(l4), q.get(l4 + 1)) else {
                    return Err(DropReason::Truncated);
                };
                protocol = next;
                l4 += (usize::from(units) + 1) * 8;
            }
            IpProtocol::FRAGMENT => {
                if q.len() < l4 + 8 {
                    return Err(DropReason::Truncated);
                }
                if get_u16(q, l4 + 2) & 0xfff8 != 0 {
                    return Err(DropReason::Fragment);
                }
                protocol = q[l4];
                l4 += 8;
            }
            _ => break,
        }
    }
    if !matches!(protocol, IpProtocol::TCP | IpProtocol::UDP) {
        return Err(DropReason::IcmpNoConnection);
    }
    if q.len() < l4 + 8 {
        return Err(DropReason::Truncated);
    }
    Ok(Quote {
        key: FlowKey {
            src: Ipv6Addr::from(get16(q, 24)),
            dst: Ipv6Addr::from(get16(q, 8)),
            src_port: get_u16(q, l4 + 2),
            dst_port: get_u16(q, l4),
            protocol,
        },
        l4,
    })
}

/// `!fold(!csum + delta)`: RFC 1624 eqn. 3 with every change summed into
/// `delta` first.
#[inline(always)]
fn apply(csum: u16, delta: u32) -> u16 {
    !fold(u32::from(!csum) + u32::from(fold(delta)))
}

/// Writes `new` over the bytes at `at` and returns what the change adds to
/// a checksum covering them (`!old + new`, as a partial sum).
#[inline(always)]
fn replace(b: &mut [u8], at: usize, new: &[u8]) -> u32 {
    let field = &mut b[at..at + new.len()];
    let delta = u32::from(!fold(sum(field))) + sum(new);
    field.copy_from_slice(new);
    delta
}

/// Writes checksum `new` at `at`; returns the change as [`replace`] does.
#[inline(always)]
fn replace_csum(b: &mut [u8], at: usize, new: u16) -> u32 {
    replace(b, at, &new.to_be_bytes())
}

/// Rewrites an ICMP error (IP header at `l3`, message at `l4` within it and
/// ending at `end`, the quoted transport header at `quoted_l4` within the
/// quote) for `flow`, travelling `dir`, and points it at its next hop.
/// Returns the port it leaves by.
#[allow(clippy::too_many_arguments)] // one call per family, all offsets known
fn translate<A: IpRewrite>(
    frame: &mut [u8],
    l3: usize,
    l4: usize,
    end: usize,
    quoted_l4: usize,
    flow: &Flow<A>,
    dir: Direction,
    mac: MacAddr,
) -> u16 {
    let (hop, port) = match dir {
        Direction::Reply => (flow.client_mac, flow.client_iface),
        Direction::Forward => (flow.backend_mac, flow.backend_iface),
    };
    frame[0..6].copy_from_slice(&hop.0);
    frame[6..12].copy_from_slice(&mac.0);
    if !flow.nat {
        return port;
    }
    // Towards the client the quote is the packet as sent to the backend:
    // its destination goes back to the service. Towards the backend it is
    // the reply as the client saw it: its source goes back to the backend.
    // Under source NAT the other end changes too (the client's address,
    // or limpet's source address and port), outside and inside alike.
    let (outer, inner, addr, l4_port) = match dir {
        Direction::Reply => (
            End::Source,
            End::Destination,
            flow.service_addr,
            flow.service_port,
        ),
        Direction::Forward => (
            End::Destination,
            End::Source,
            flow.backend_addr,
            flow.backend_port,
        ),
    };
    let (other, other_addr, other_port) = match dir {
        Direction::Reply => (End::Destination, flow.client, flow.client_port),
        Direction::Forward => (End::Source, flow.snat_addr, flow.snat_port),
    };
    let ip = &mut frame[l3..];
    // The outer header: the address, the hop count, (IPv4) its checksum.
    let Some(mut outer_delta) = A::rewrite_ip(ip, outer, addr) else {
        return port;
    };
    if flow.snat {
        let Some(delta) = A::set_addr(ip, other, other_addr) else {
            return port;
        };
        outer_delta += delta;
    }
    let q = &mut ip[l4 + ICMP_HEADER..end];
    let mut icmp_delta = quote_rewrite(q, quoted_l4, flow.protocol, inner, addr, l4_port);
    if flow.snat {
        // The quote's other end is the connection's other end, which the
        // outer header holds the other way round.
        let mirror = match inner {
            End::Source => End::Destination,
            End::Destination => End::Source,
        };
        icmp_delta += quote_rewrite(q, quoted_l4, flow.protocol, mirror, other_addr, other_port);
    }
    if A::LEN == 16 {
        // `ICMPv6` covers the pseudo-header, which holds the outer address.
        icmp_delta += outer_delta;
    }
    let old = get_u16(ip, l4 + 2);
    let new = apply(old, icmp_delta);
    ip[l4 + 2..l4 + 4].copy_from_slice(&new.to_be_bytes());
    port
}

/// Rewrites one end (`end`) of the packet an ICMP error quotes (`q`, its
/// transport header at `quoted_l4`) to `addr` and `port`, updating the
/// quoted IPv4 header checksum and, where the quote holds it, the quoted
/// TCP or UDP checksum. Returns what the changes add to the ICMP checksum.
fn quote_rewrite<A: IpRewrite>(
    q: &mut [u8],
    quoted_l4: usize,
    protocol: u8,
    end: End,
    addr: A,
    port: u16,
) -> u32 {
    let v4 = A::LEN == 4;
    let octets = addr.octets16();
    let addr_at = match (v4, end) {
        (true, End::Source) => 12,
        (true, End::Destination) => 16,
        (false, End::Source) => 8,
        (false, End::Destination) => 24,
    };
    let addr_delta = replace(q, addr_at, &octets[..A::LEN]);
    let mut icmp_delta = addr_delta;
    if v4 {
        let old = get_u16(q, 10);
        icmp_delta += replace_csum(q, 10, apply(old, addr_delta));
    }
    let port_at = quoted_l4
        + match end {
            End::Source => 0,
            End::Destination => 2,
        };
    let port_delta = replace(q, port_at, &port.to_be_bytes());
    icmp_delta += port_delta;
    let csum_at = match protocol {
        IpProtocol::TCP => quoted_l4 + 16,
        _ => quoted_l4 + 6,
    };
    if q.len() >= csum_at + 2 {
        let old = get_u16(q, csum_at);
        // A zero UDP checksum means "none" and stays zero; a computed zero
        // is sent as 0xffff.
        if protocol == IpProtocol::TCP || old != 0 {
            let mut new = apply(old, addr_delta + port_delta);
            if protocol == IpProtocol::UDP && new == 0 {
                new = 0xffff;
            }
            icmp_delta += replace_csum(q, csum_at, new);
        }
    }
    icmp_delta
}

/// Turns the echo request in `frame` (IPv4 header without options at `l3`,
/// `total` bytes) into its reply.
fn echo_v4(frame: &mut [u8], l3: usize, total: usize, mac: MacAddr) {
    swap_macs(frame, mac);
    let ip = &mut frame[l3..l3 + total];
    let src = get4(ip, 12);
    let dst = get4(ip, 16);
    ip[12..16].copy_from_slice(&dst);
    ip[16..20].copy_from_slice(&src);
    ip[8] = 64;
    ip[10..12].fill(0);
    let csum = checksum::checksum(&ip[..IPV4_HEADER]);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    icmpv4::Packet::new_unchecked(&mut ip[IPV4_HEADER..]).make_echo_reply();
}

/// Turns the `ICMPv6` echo request in `frame` into its reply; swapping the
/// addresses leaves the pseudo-header's sum as it was.
fn echo_v6(frame: &mut [u8], l3: usize, l4: usize, total: usize, mac: MacAddr) {
    swap_macs(frame, mac);
    let ip = &mut frame[l3..l3 + total];
    let src = get16(ip, 8);
    let dst = get16(ip, 24);
    ip[8..24].copy_from_slice(&dst);
    ip[24..40].copy_from_slice(&src);
    ip[7] = 64;
    icmpv6::Packet::new_unchecked(&mut ip[l4..]).make_echo_reply();
}

/// Sends a frame back where it came from, from `mac`.
fn swap_macs(frame: &mut [u8], mac: MacAddr) {
    frame.copy_within(6..12, 0);
    frame[6..12].copy_from_slice(&mac.0);
}

/// Whether the packet (IP header at `l3`) may be answered with an ICMP
/// error (RFC 1122 3.2.2, RFC 4443 2.4 (e)): a unicast source, at the
/// link layer too.
fn answerable(frame: &[u8], l3: usize) -> bool {
    if frame.get(6).is_none_or(|b| b & 1 != 0) {
        return false;
    }
    match frame.get(l3).map(|b| b >> 4) {
        Some(4) if frame.len() >= l3 + IPV4_HEADER => {
            unicast_v4(Ipv4Addr::from(get4(frame, l3 + 12)))
        }
        Some(6) if frame.len() >= l3 + IPV6_HEADER => {
            let src = Ipv6Addr::from(get16(frame, l3 + 8));
            !(src.is_unspecified() || src.is_multicast() || src.is_loopback())
        }
        _ => false,
    }
}

/// Turns the packet in `buf` (Ethernet header, any VLAN tag, IP header at
/// `l3`) into an ICMP (IPv4) or `ICMPv6` (IPv6) error of `kind` and `code`
/// about it, from its destination back to its source and sender: the new
/// IP and ICMP headers go before the packet, which becomes the quote, cut
/// to the size limit of an error message. `rest` is the message's four
/// type-specific bytes (an MTU for fragmentation needed or packet too big).
/// Returns false, leaving the buffer as it was, when it has no room before
/// the frame or the IP header is not whole.
pub fn error_reply<B: PacketBuf>(
    buf: &mut B,
    l3: usize,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    mac: MacAddr,
) -> bool {
    let data = buf.data();
    let mut link = [0u8; 18];
    if l3 > link.len() || data.len() < l3 + IPV4_HEADER {
        return false;
    }
    link[..l3].copy_from_slice(&data[..l3]);
    let ip = &data[l3..];
    let v4 = ip[0] >> 4 == 4;
    let (header, limit, total) = if v4 {
        let total = usize::from(get_u16(ip, 2));
        (IPV4_HEADER, MAX_ERROR_V4, total)
    } else if ip[0] >> 4 == 6 && ip.len() >= IPV6_HEADER {
        let total = IPV6_HEADER + usize::from(get_u16(ip, 4));
        (IPV6_HEADER, MAX_ERROR_V6, total)
    } else {
        return false;
    };
    let quote = total.min(ip.len()).min(limit - header - ICMP_HEADER);
    let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
    let n = if v4 { 4 } else { 16 };
    let (src_at, dst_at) = if v4 { (12, 16) } else { (8, 24) };
    src[..n].copy_from_slice(&ip[src_at..src_at + n]);
    dst[..n].copy_from_slice(&ip[dst_at..dst_at + n]);
    let grow = header + ICMP_HEADER;
    if !buf.prepend(grow) {
        return false;
    }
    buf.truncate(l3 + grow + quote);
    let frame = buf.data_mut();
    frame[..l3].copy_from_slice(&link[..l3]);
    swap_macs(frame, mac);
    write_error(&mut frame[l3..], (dst, src), (kind, code, rest), quote, v4);
    true
}

/// Writes an ICMP (`v4`) or `ICMPv6` error's IP header, from `src` to `dst`
/// (the first 4 bytes of each for IPv4), and its message header (`kind`,
/// `code`, the four type-specific bytes `rest`) before the `quote` bytes
/// already in place after them, both checksums included. Returns the IP
/// packet's length.
fn write_error(
    ip: &mut [u8],
    (src, dst): ([u8; 16], [u8; 16]),
    (kind, code, rest): (u8, u8, [u8; 4]),
    quote: usize,
    v4: bool,
) -> usize {
    let msg_len = ICMP_HEADER + quote;
    let header = if v4 {
        let len = ((IPV4_HEADER + msg_len) as u16).to_be_bytes();
        // Precedence "internetwork control", as Linux sends its errors.
        ip[..12].copy_from_slice(&[0x45, 0xc0, len[0], len[1], 0, 0, 0, 0, 64, 1, 0, 0]);
        ip[12..16].copy_from_slice(&src[..4]);
        ip[16..20].copy_from_slice(&dst[..4]);
        let csum = checksum::checksum(&ip[..IPV4_HEADER]);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
        IPV4_HEADER
    } else {
        let len = (msg_len as u16).to_be_bytes();
        ip[..8].copy_from_slice(&[0x60, 0, 0, 0, len[0], len[1], IpProtocol::ICMPV6, 64]);
        ip[8..24].copy_from_slice(&src);
        ip[24..40].copy_from_slice(&dst);
        IPV6_HEADER
    };
    let msg = &mut ip[header..header + msg_len];
    msg[..4].copy_from_slice(&[kind, code, 0, 0]);
    msg[4..8].copy_from_slice(&rest);
    let pseudo = if v4 {
        0
    } else {
        checksum::pseudo_header_v6(
            Ipv6Addr::from(src),
            Ipv6Addr::from(dst),
            IpProtocol::ICMPV6,
            msg_len as u32,
        )
    };
    let csum = !fold(pseudo + sum(msg));
    msg[2..4].copy_from_slice(&csum.to_be_bytes());
    header + msg_len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_each_second_up_to_its_rate() {
        let mut b = TokenBucket::new(3, 10);
        assert!((0..3).all(|_| b.take(10)));
        assert!(!b.take(10));
        assert!(b.take(11));
        assert!(b.take(11));
        // Saved up over idle seconds, but never more than one second's worth.
        let taken = (0..10).filter(|_| b.take(100)).count();
        assert_eq!(taken, 3);
        let mut off = TokenBucket::new(0, 0);
        assert!(!off.take(5));
    }

    #[test]
    fn quoted_tuples_are_reversed() {
        let mut q = vec![0u8; 28];
        q[0] = 0x45;
        q[9] = IpProtocol::UDP;
        q[12..16].copy_from_slice(&[198, 18, 0, 1]);
        q[16..20].copy_from_slice(&[203, 0, 113, 7]);
        q[20..22].copy_from_slice(&40000u16.to_be_bytes());
        q[22..24].copy_from_slice(&9376u16.to_be_bytes());
        let quote = quoted_v4(&q).ok().unwrap();
        assert_eq!(quote.key.src, Ipv4Addr::new(203, 0, 113, 7));
        assert_eq!(quote.key.dst, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!((quote.key.src_port, quote.key.dst_port), (9376, 40000));
        assert_eq!(quote.l4, 20);
        assert_eq!(
            quoted_v4(&q[..27]).err(),
            Some(DropReason::Truncated),
            "ports cut off"
        );
        q[7] = 1;
        assert_eq!(quoted_v4(&q).err(), Some(DropReason::Fragment));
    }

    proptest::proptest! {
        /// No quote, however broken, panics the parsers.
        #[test]
        fn quotes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            let _ = quoted_v4(&data);
            let _ = quoted_v6(&data);
            let _ = answerable(&data, 14);
        }
    }
}
