//! The structure-aware frame generator: `arbitrary` descriptions of
//! Ethernet / 802.1Q / IPv4 (options, fragments) / IPv6 (extension
//! headers) / TCP (options) / UDP / ICMP frames, with addresses drawn from
//! the snapshot's services, backends and a few clients, checksums right
//! unless a mutation says otherwise, and occasional raw byte frames.
//! Frames are built here byte by byte with [`crate::refsum`], not with
//! limpet's code, so the pipeline never parses its own handwriting.

use crate::refsum;
use crate::services::{
    BACKEND_PORTS, CLIENT_MACS, CLIENT_PORTS, CLIENTS4, CLIENTS6, LIMPET_MAC, SERVICE_PORT,
    backend_addrs, backend_mac, frontend_addrs,
};
use arbitrary::{Arbitrary, Result, Unstructured};
use std::net::IpAddr;

/// A connection the pipeline forwarded with `nat`: replies are built to
/// match it.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub backend: std::net::SocketAddr,
    pub client: std::net::SocketAddr,
    pub protocol: u8,
}

/// A whole pipeline session: bursts in order, one worker.
#[derive(Debug)]
pub struct Session {
    pub bursts: Vec<BurstDesc>,
}

/// At most this many bursts per session and frames per burst (a burst of
/// more than `io::BURST` frames is received over several polls).
pub const MAX_BURSTS: usize = 12;
pub const MAX_FRAMES: usize = 48;

impl<'a> Arbitrary<'a> for Session {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut bursts = Vec::new();
        while bursts.len() < MAX_BURSTS && !u.is_empty() {
            let advance = match u.int_in_range(0u8..=15)? {
                0..=5 => 0,
                6..=12 => u32::from(u.int_in_range(1u8..=3)?),
                13 => u32::from(u.arbitrary::<u8>()?),
                // Past every flow timeout and affinity timeout.
                _ => u32::from(u.arbitrary::<u16>()?),
            };
            let swap = u.ratio(1u8, 8u8)?;
            let n = u.int_in_range(1..=MAX_FRAMES)?;
            let mut frames = Vec::with_capacity(n);
            for _ in 0..n {
                if u.is_empty() {
                    break;
                }
                frames.push(u.arbitrary()?);
            }
            bursts.push(BurstDesc {
                advance,
                swap,
                frames,
            });
        }
        Ok(Session { bursts })
    }
}

#[derive(Debug)]
pub struct BurstDesc {
    /// Seconds the clock moves before this burst.
    pub advance: u32,
    /// Whether the other snapshot is installed before this burst.
    pub swap: bool,
    pub frames: Vec<FrameDesc>,
}

#[derive(Debug)]
pub enum FrameDesc {
    Packet(Box<PacketDesc>),
    Raw(Vec<u8>),
}

impl<'a> Arbitrary<'a> for FrameDesc {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        if u.ratio(1u8, 16u8)? {
            let len = u.int_in_range(0usize..=128)?;
            let bytes = u.bytes(len.min(u.len()))?;
            Ok(FrameDesc::Raw(bytes.to_vec()))
        } else {
            Ok(FrameDesc::Packet(Box::new(u.arbitrary()?)))
        }
    }
}

/// Who sends, and to whom.
#[derive(Debug, Clone, Copy)]
pub enum Flow {
    /// A client to a service frontend (a connection opening or going on).
    ClientToService {
        client: u8,
        service: u8,
    },
    /// A backend's reply to a client (`nat` traffic comes back this way).
    BackendToClient {
        backend: u8,
        client: u8,
    },
    /// A client to a backend directly, or anything else.
    ClientToBackend {
        client: u8,
        backend: u8,
    },
    Any {
        src: [u8; 16],
        dst: [u8; 16],
    },
}

#[derive(Debug, Clone)]
pub enum Transport {
    Tcp {
        flags: TcpFlags,
        seq: u32,
        ack: u32,
        window: u16,
        /// Option bytes, padded to a multiple of 4 and cut at 40.
        options: Vec<u8>,
    },
    Udp {
        zero_checksum: bool,
    },
    Icmp {
        kind: u8,
        code: u8,
    },
    Other {
        protocol: u8,
    },
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum TcpFlags {
    Syn,
    Ack,
    SynAck,
    Fin,
    Rst,
    Any(u8),
}

impl TcpFlags {
    fn bits(self) -> u8 {
        match self {
            TcpFlags::Syn => 0x02,
            TcpFlags::Ack => 0x10,
            TcpFlags::SynAck => 0x12,
            TcpFlags::Fin => 0x11,
            TcpFlags::Rst => 0x04,
            TcpFlags::Any(b) => b,
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub enum Ext6 {
    HopByHop(u8),
    DestOpts(u8),
    Routing(u8),
    Fragment {
        offset: u16,
        more: bool,
    },
    Raw {
        next_is_self: bool,
        kind: u8,
        units: u8,
    },
}

/// What goes wrong with the frame, if anything.
#[derive(Debug, Clone, Copy)]
pub enum Mutation {
    None,
    BadIpChecksum,
    BadL4Checksum,
    Truncate(u16),
    Flip { at: u16, xor: u8 },
    TotalLen(u16),
    Extend(u8),
}

impl<'a> Arbitrary<'a> for Mutation {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0u8..=31)? {
            0..=23 => Mutation::None,
            24 => Mutation::BadIpChecksum,
            25 => Mutation::BadL4Checksum,
            26 | 27 => Mutation::Truncate(u.arbitrary()?),
            28 | 29 => Mutation::Flip {
                at: u.arbitrary()?,
                xor: u.arbitrary()?,
            },
            30 => Mutation::TotalLen(u.arbitrary()?),
            _ => Mutation::Extend(u.arbitrary()?),
        })
    }
}

#[derive(Debug, Clone)]
pub struct PacketDesc {
    pub v6: bool,
    pub vlan: Option<u16>,
    /// 0: the fixtures' client MAC, 1: another client's, 2: the backend's
    /// own (as its replies carry), 3: raw.
    pub src_mac: (u8, [u8; 6]),
    pub flow: Flow,
    /// Replaces the natural source / destination port.
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    /// 0 and 1 stand for themselves, anything else for 64.
    pub ttl: u8,
    pub ip: IpExtras,
    pub transport: Transport,
    pub payload_len: u8,
    pub pad_to_min: bool,
    pub mutation: Mutation,
    /// Handed over as a local sender with checksum offload does: the
    /// TCP/UDP checksum field holding only the pseudo-header's sum, the
    /// buffer flagged partial (the harness converts the built frame).
    pub offloaded: bool,
}

#[derive(Debug, Clone)]
pub enum IpExtras {
    Plain,
    /// IPv4 options (padded, cut at 40); ignored on IPv6.
    Options(Vec<u8>),
    /// IPv4 MF / offset; on IPv6 a Fragment header.
    Fragment {
        offset: u16,
        more: bool,
    },
    /// IPv6 extension headers before the transport header; ignored on
    /// IPv4.
    Ext(Vec<Ext6>),
}

// Weighted choices, so that most frames are well-formed connections to
// the services and replies to them, and the odd ones stay the minority.

impl<'a> Arbitrary<'a> for Flow {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0u8..=7)? {
            0..=3 => Flow::ClientToService {
                client: u.arbitrary()?,
                service: u.arbitrary()?,
            },
            4 | 5 => Flow::BackendToClient {
                backend: u.arbitrary()?,
                client: u.arbitrary()?,
            },
            6 => Flow::ClientToBackend {
                client: u.arbitrary()?,
                backend: u.arbitrary()?,
            },
            _ => Flow::Any {
                src: u.arbitrary()?,
                dst: u.arbitrary()?,
            },
        })
    }
}

impl<'a> Arbitrary<'a> for Transport {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0u8..=19)? {
            0..=8 => Transport::Tcp {
                flags: u.arbitrary()?,
                seq: u.arbitrary()?,
                ack: u.arbitrary()?,
                window: u.arbitrary()?,
                options: if u.ratio(1u8, 4u8)? {
                    u.arbitrary()?
                } else {
                    Vec::new()
                },
            },
            9..=15 => Transport::Udp {
                zero_checksum: u.ratio(1u8, 8u8)?,
            },
            16 | 17 => Transport::Icmp {
                kind: u.arbitrary()?,
                code: u.arbitrary()?,
            },
            _ => Transport::Other {
                protocol: u.arbitrary()?,
            },
        })
    }
}

impl<'a> Arbitrary<'a> for IpExtras {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0u8..=19)? {
            0..=13 => IpExtras::Plain,
            14 | 15 => IpExtras::Options(u.arbitrary()?),
            16 => IpExtras::Fragment {
                offset: u.arbitrary()?,
                more: u.arbitrary()?,
            },
            _ => IpExtras::Ext(u.arbitrary()?),
        })
    }
}

/// `Some` one time in eight.
fn rarely<'a, T: Arbitrary<'a>>(u: &mut Unstructured<'a>) -> Result<Option<T>> {
    Ok(if u.ratio(1u8, 8u8)? {
        Some(u.arbitrary()?)
    } else {
        None
    })
}

impl<'a> Arbitrary<'a> for PacketDesc {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(PacketDesc {
            v6: u.ratio(1u8, 3u8)?,
            vlan: rarely(u)?,
            src_mac: u.arbitrary()?,
            flow: u.arbitrary()?,
            src_port: rarely(u)?,
            dst_port: rarely(u)?,
            ttl: u.arbitrary()?,
            ip: u.arbitrary()?,
            transport: u.arbitrary()?,
            payload_len: u.int_in_range(0u8..=u8::MAX)? % 96,
            pad_to_min: !u.ratio(1u8, 8u8)?,
            mutation: u.arbitrary()?,
            offloaded: u.ratio(1u8, 4u8)?,
        })
    }
}

fn pick<T: Copy>(items: &[T], i: u8) -> T {
    items[usize::from(i) % items.len()]
}

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn client(v6: bool, i: u8) -> IpAddr {
    let list: &[&str] = if v6 { &CLIENTS6 } else { &CLIENTS4 };
    list[usize::from(i) % list.len()].parse().unwrap()
}

impl PacketDesc {
    /// The (src, dst) address octets and natural ports.
    fn ends(&self) -> (Vec<u8>, u16, Vec<u8>, u16) {
        let v6 = self.v6;
        let (src, sport, dst, dport) = match self.flow {
            Flow::ClientToService { client: c, service } => {
                let protocol = match self.transport {
                    Transport::Tcp { .. } => Some(6),
                    Transport::Udp { .. } => Some(17),
                    _ => None,
                };
                let fronts = frontend_addrs(v6, protocol);
                (
                    octets(client(v6, c)),
                    pick(&CLIENT_PORTS, c >> 2),
                    octets(pick(&fronts, service)),
                    SERVICE_PORT,
                )
            }
            Flow::BackendToClient { backend, client: c } => {
                let b = pick(&backend_addrs(v6), backend);
                (
                    octets(b.ip()),
                    b.port(),
                    octets(client(v6, c)),
                    pick(&CLIENT_PORTS, c >> 2),
                )
            }
            Flow::ClientToBackend { client: c, backend } => {
                let b = pick(&backend_addrs(v6), backend);
                (
                    octets(client(v6, c)),
                    pick(&CLIENT_PORTS, c >> 2),
                    octets(b.ip()),
                    pick(&BACKEND_PORTS, backend >> 4),
                )
            }
            Flow::Any { src, dst } => {
                let n = if v6 { 16 } else { 4 };
                (
                    src[..n].to_vec(),
                    u16::from_be_bytes([src[0], src[15]]),
                    dst[..n].to_vec(),
                    u16::from_be_bytes([dst[0], dst[15]]),
                )
            }
        };
        (
            src,
            self.src_port.unwrap_or(sport),
            dst,
            self.dst_port.unwrap_or(dport),
        )
    }

    fn src_mac(&self, src_ip: &[u8]) -> [u8; 6] {
        match self.src_mac.0 % 4 {
            0 => CLIENT_MACS[0],
            1 => CLIENT_MACS[1],
            2 => {
                let addr = if src_ip.len() == 4 {
                    IpAddr::from(<[u8; 4]>::try_from(src_ip).unwrap())
                } else {
                    IpAddr::from(<[u8; 16]>::try_from(src_ip).unwrap())
                };
                backend_mac(addr)
            }
            _ => self.src_mac.1,
        }
    }

    /// The frame this describes, a backend's reply answering one of the
    /// connections `seen` forwarded (its backend, client and protocol)
    /// where there is one.
    pub fn build_with(&self, seen: &[Seen]) -> Vec<u8> {
        let Flow::BackendToClient { backend, .. } = self.flow else {
            return self.build();
        };
        if seen.is_empty() {
            return self.build();
        }
        let s = seen[usize::from(backend) % seen.len()];
        let mut d = self.clone();
        let octets16 = |a: IpAddr| match a {
            IpAddr::V4(a) => {
                let mut o = [0u8; 16];
                o[..4].copy_from_slice(&a.octets());
                o
            }
            IpAddr::V6(a) => a.octets(),
        };
        d.v6 = s.backend.is_ipv6();
        d.flow = Flow::Any {
            src: octets16(s.backend.ip()),
            dst: octets16(s.client.ip()),
        };
        d.src_port = Some(s.backend.port());
        d.dst_port = Some(s.client.port());
        d.transport = match (s.protocol, &self.transport) {
            (6, t @ Transport::Tcp { .. }) | (17, t @ Transport::Udp { .. }) => t.clone(),
            (6, _) => Transport::Tcp {
                flags: TcpFlags::SynAck,
                seq: 1,
                ack: 2,
                window: 512,
                options: Vec::new(),
            },
            _ => Transport::Udp {
                zero_checksum: false,
            },
        };
        if d.src_mac.0 % 4 == 3 {
            d.src_mac.0 = 2;
        }
        d.build()
    }

    /// The frame this describes.
    #[allow(clippy::too_many_lines)]
    pub fn build(&self) -> Vec<u8> {
        let (src, sport, dst, dport) = self.ends();
        let ttl = if self.ttl <= 1 { self.ttl } else { 64 };
        let payload: Vec<u8> = (0..self.payload_len).map(|i| i.wrapping_mul(31)).collect();

        // Transport header and payload, checksum field zero for now.
        let (protocol, mut l4, csum_at) = match &self.transport {
            Transport::Tcp {
                flags,
                seq,
                ack,
                window,
                options,
            } => {
                let mut opts = options.clone();
                opts.truncate(40);
                while opts.len() % 4 != 0 {
                    opts.push(0);
                }
                let mut t = Vec::with_capacity(20 + opts.len() + payload.len());
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&seq.to_be_bytes());
                t.extend_from_slice(&ack.to_be_bytes());
                t.push((((20 + opts.len()) / 4) as u8) << 4);
                t.push(flags.bits());
                t.extend_from_slice(&window.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0]);
                t.extend_from_slice(&opts);
                t.extend_from_slice(&payload);
                (6u8, t, Some(16))
            }
            Transport::Udp { zero_checksum } => {
                let mut t = Vec::with_capacity(8 + payload.len());
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                t.extend_from_slice(&[0, 0]);
                t.extend_from_slice(&payload);
                (17u8, t, if *zero_checksum { None } else { Some(6) })
            }
            Transport::Icmp { kind, code } => {
                let mut t = vec![*kind, *code, 0, 0, 0, 1, 0, 1];
                t.extend_from_slice(&payload);
                (if self.v6 { 58 } else { 1 }, t, Some(2))
            }
            Transport::Other { protocol } => (*protocol, payload.clone(), None),
        };
        if let Some(at) = csum_at {
            let pseudo = if self.v6 {
                refsum::pseudo_v6(dst16(&src), dst16(&dst), protocol, l4.len())
            } else if protocol == 1 {
                0
            } else {
                refsum::pseudo_v4(dst4(&src), dst4(&dst), protocol, l4.len())
            };
            let mut c = refsum::field_value(pseudo, &l4);
            if protocol == 17 && c == 0 {
                c = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
            if matches!(self.mutation, Mutation::BadL4Checksum) {
                l4[at] ^= 0x5a;
            }
        }

        let mut frame = Vec::with_capacity(128 + l4.len());
        frame.extend_from_slice(&LIMPET_MAC);
        frame.extend_from_slice(&self.src_mac(&src));
        if let Some(tci) = self.vlan {
            frame.extend_from_slice(&0x8100u16.to_be_bytes());
            frame.extend_from_slice(&tci.to_be_bytes());
        }
        let l3 = frame.len() + 2;
        if self.v6 {
            frame.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ext = Vec::new();
            let mut kinds = Vec::new();
            match &self.ip {
                IpExtras::Fragment { offset, more } => {
                    kinds.push(44u8);
                    ext.push(vec![
                        0,
                        0,
                        (offset >> 8) as u8,
                        (*offset as u8 & 0xf8) | u8::from(*more),
                        0,
                        0,
                        0,
                        7,
                    ]);
                }
                IpExtras::Ext(list) => {
                    for e in list.iter().take(4) {
                        let (kind, body) = match e {
                            Ext6::HopByHop(n) => (0u8, vec![0; 8 * (1 + usize::from(n % 3))]),
                            Ext6::DestOpts(n) => (60, vec![0; 8 * (1 + usize::from(n % 3))]),
                            Ext6::Routing(n) => (43, vec![0; 8 * (1 + usize::from(n % 3))]),
                            Ext6::Fragment { offset, more } => (
                                44,
                                vec![
                                    0,
                                    0,
                                    (offset >> 8) as u8,
                                    (*offset as u8 & 0xf8) | u8::from(*more),
                                    0,
                                    0,
                                    0,
                                    9,
                                ],
                            ),
                            Ext6::Raw {
                                next_is_self,
                                kind,
                                units,
                            } => {
                                let k = if *next_is_self { 0 } else { *kind };
                                (k, vec![0; 8 * (1 + usize::from(units % 4))])
                            }
                        };
                        kinds.push(kind);
                        ext.push(body);
                    }
                }
                _ => {}
            }
            // Chain: fixed header -> ext[0] -> ... -> transport.
            let mut chain = Vec::new();
            for (i, body) in ext.iter_mut().enumerate() {
                body[0] = kinds.get(i + 1).copied().unwrap_or(protocol);
                if kinds[i] != 44 {
                    body[1] = (body.len() / 8 - 1) as u8;
                }
                chain.extend_from_slice(body);
            }
            let next = kinds.first().copied().unwrap_or(protocol);
            let payload_len = chain.len() + l4.len();
            frame.extend_from_slice(&[0x60, 0, 0, 0]);
            frame.extend_from_slice(&(payload_len as u16).to_be_bytes());
            frame.push(next);
            frame.push(ttl);
            frame.extend_from_slice(&src);
            frame.extend_from_slice(&dst);
            frame.extend_from_slice(&chain);
        } else {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut opts = match &self.ip {
                IpExtras::Options(o) => o.clone(),
                _ => Vec::new(),
            };
            opts.truncate(40);
            while opts.len() % 4 != 0 {
                opts.push(0);
            }
            let (frag_word, _) = match self.ip {
                IpExtras::Fragment { offset, more } => {
                    ((offset & 0x1fff) | if more { 0x2000 } else { 0 }, ())
                }
                _ => (0x4000, ()),
            };
            let ihl = 20 + opts.len();
            let total = ihl + l4.len();
            let mut h = Vec::with_capacity(ihl);
            h.push(0x40 | (ihl / 4) as u8);
            h.push(0);
            h.extend_from_slice(&(total as u16).to_be_bytes());
            h.extend_from_slice(&0x1234u16.to_be_bytes());
            h.extend_from_slice(&frag_word.to_be_bytes());
            h.push(ttl);
            h.push(protocol);
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&src);
            h.extend_from_slice(&dst);
            h.extend_from_slice(&opts);
            let c = !refsum::sum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            if matches!(self.mutation, Mutation::BadIpChecksum) {
                h[11] ^= 0x01;
            }
            frame.extend_from_slice(&h);
        }
        frame.extend_from_slice(&l4);
        if self.pad_to_min && frame.len() < 60 {
            frame.resize(60, 0);
        }
        match self.mutation {
            Mutation::Truncate(n) => frame.truncate(usize::from(n) % (frame.len() + 1)),
            Mutation::Flip { at, xor } => {
                let i = usize::from(at) % frame.len();
                frame[i] ^= xor;
            }
            Mutation::TotalLen(len) => {
                if frame.len() >= l3 + 4 {
                    let at = if self.v6 { l3 + 4 } else { l3 + 2 };
                    frame[at..at + 2].copy_from_slice(&len.to_be_bytes());
                }
            }
            Mutation::Extend(n) => frame.extend(std::iter::repeat_n(0xee, usize::from(n))),
            _ => {}
        }
        frame
    }
}

fn dst4(b: &[u8]) -> [u8; 4] {
    b.try_into().unwrap()
}

fn dst16(b: &[u8]) -> [u8; 16] {
    b.try_into().unwrap()
}
