//! One Ethernet frame: its description ([`PacketSpec`]) and its bytes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::{BitOr, BitOrAssign};

use crate::checksum;

/// Ethernet II header: destination, source, `EtherType`.
pub const ETH_HEADER_LEN: usize = 14;
/// One 802.1Q tag (TPID + TCI), inserted before the `EtherType`.
pub const VLAN_TAG_LEN: usize = 4;
/// IPv4 header without options (pktgen never writes options).
pub const IPV4_HEADER_LEN: usize = 20;
/// IPv6 fixed header (pktgen never writes extension headers).
pub const IPV6_HEADER_LEN: usize = 40;
/// TCP header without options (pktgen never writes options).
pub const TCP_HEADER_LEN: usize = 20;
/// UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// Smallest Ethernet frame as handed to a NIC: 64 bytes on the wire less the
/// 4-byte FCS, which the NIC appends.
pub const MIN_FRAME_LEN: usize = 60;
/// Largest VLAN id that fits the 12-bit VID field.
pub const MAX_VLAN_ID: u16 = 0x0fff;

pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(crate) const ETHERTYPE_IPV6: u16 = 0x86dd;
pub(crate) const ETHERTYPE_VLAN: u16 = 0x8100;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;

/// Locally administered unicast MACs, so generated frames can never collide
/// with a vendor-assigned address on a test link.
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// See [`DEFAULT_SRC_MAC`].
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// Linux's default IPv4 TTL and IPv6 hop limit.
pub const DEFAULT_TTL: u8 = 64;
/// Receive window in generated TCP headers.
pub const DEFAULT_WINDOW: u16 = 65_535;

/// The TCP flag bits (the low byte of the flags field; NS is never set).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const NONE: Self = Self(0);
    pub const FIN: Self = Self(0x01);
    pub const SYN: Self = Self(0x02);
    pub const RST: Self = Self(0x04);
    pub const PSH: Self = Self(0x08);
    pub const ACK: Self = Self(0x10);
    pub const URG: Self = Self(0x20);

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for TcpFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for TcpFlags {
    // `SYN|ACK` reads far better in assertion failures than `TcpFlags(18)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(TcpFlags, &str); 6] = [
            (TcpFlags::FIN, "FIN"),
            (TcpFlags::SYN, "SYN"),
            (TcpFlags::RST, "RST"),
            (TcpFlags::PSH, "PSH"),
            (TcpFlags::ACK, "ACK"),
            (TcpFlags::URG, "URG"),
        ];
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        let rest = self.0 & !0x3f;
        if rest != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{rest:#04x}")?;
        } else if first {
            f.write_str("NONE")?;
        }
        Ok(())
    }
}

/// Shorthand for [`TcpFlags::FIN`].
pub const FIN: TcpFlags = TcpFlags::FIN;
/// Shorthand for [`TcpFlags::SYN`].
pub const SYN: TcpFlags = TcpFlags::SYN;
/// Shorthand for [`TcpFlags::RST`].
pub const RST: TcpFlags = TcpFlags::RST;
/// Shorthand for [`TcpFlags::PSH`].
pub const PSH: TcpFlags = TcpFlags::PSH;
/// Shorthand for [`TcpFlags::ACK`].
pub const ACK: TcpFlags = TcpFlags::ACK;

/// Transport protocol of a flow or VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number (IPv4 protocol / IPv6 next header).
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpSpec {
    pub src_port: u16,
    pub dst_port: u16,
    pub flags: TcpFlags,
    pub seq: u32,
    /// The acknowledgment number (sent whether or not ACK is set, as the
    /// field is always present on the wire).
    pub ack: u32,
    pub window: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpSpec {
    pub src_port: u16,
    pub dst_port: u16,
    /// Send checksum 0 ("not computed"). Legal for IPv4 (RFC 768); for IPv6
    /// a receiver must drop such a datagram (RFC 8200 section 8.1), which is
    /// exactly what a test of that drop path needs, so it is allowed there
    /// too.
    pub zero_checksum: bool,
}

/// The transport header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4 {
    Tcp(TcpSpec),
    Udp(UdpSpec),
}

impl L4 {
    pub const fn proto(&self) -> Proto {
        match self {
            Self::Tcp(_) => Proto::Tcp,
            Self::Udp(_) => Proto::Udp,
        }
    }

    pub const fn src_port(&self) -> u16 {
        match self {
            Self::Tcp(t) => t.src_port,
            Self::Udp(u) => u.src_port,
        }
    }

    pub const fn dst_port(&self) -> u16 {
        match self {
            Self::Tcp(t) => t.dst_port,
            Self::Udp(u) => u.dst_port,
        }
    }

    pub fn set_src_port(&mut self, port: u16) {
        match self {
            Self::Tcp(t) => t.src_port = port,
            Self::Udp(u) => u.src_port = port,
        }
    }

    pub fn set_dst_port(&mut self, port: u16) {
        match self {
            Self::Tcp(t) => t.dst_port = port,
            Self::Udp(u) => u.dst_port = port,
        }
    }

    const fn header_len(&self) -> usize {
        match self {
            Self::Tcp(_) => TCP_HEADER_LEN,
            Self::Udp(_) => UDP_HEADER_LEN,
        }
    }
}

/// The L4 payload before any padding from [`FrameSize::Exact`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Payload {
    /// These exact bytes.
    Bytes(Vec<u8>),
    /// `n` bytes of the pattern `0, 1, 2, ..., 255, 0, 1, ...` (byte `i` is
    /// `i as u8`), so a test can spot payload bytes that a dataplane shifted
    /// or overwrote without having to keep the payload around.
    Len(usize),
}

impl Payload {
    pub fn len(&self) -> usize {
        match self {
            Self::Bytes(b) => b.len(),
            Self::Len(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The byte a [`Payload::Len`] payload has at index `i`.
    pub const fn pattern_byte(i: usize) -> u8 {
        i as u8
    }
}

/// How long the frame is. Every length here is the frame as handed to the
/// NIC: Ethernet header (and VLAN tag) through the last byte, excluding the
/// FCS that the NIC appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FrameSize {
    /// Headers and payload, then zero bytes after the IP packet up to
    /// [`MIN_FRAME_LEN`], as a NIC pads a short frame on the wire. The
    /// trailer is not covered by the IP length, so a parser must trust the
    /// IP length rather than the frame length.
    #[default]
    Natural,
    /// Headers and payload only, possibly shorter than [`MIN_FRAME_LEN`]:
    /// what a veth or `AF_PACKET` socket delivers from the local stack.
    Unpadded,
    /// Exactly this many bytes, reached by appending zero bytes to the L4
    /// payload (so the IP and UDP lengths and the checksums cover them).
    /// Must be at least [`MIN_FRAME_LEN`] and at least the unpadded length.
    Exact(usize),
}

/// Where each part of a built frame lies. Offsets are from the start of the
/// frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    pub l3_offset: usize,
    pub l4_offset: usize,
    pub payload_offset: usize,
    /// L4 payload length, including padding from [`FrameSize::Exact`].
    pub payload_len: usize,
    /// End of the IP packet; bytes from here to `frame_len` are Ethernet
    /// trailer.
    pub ip_end: usize,
    pub frame_len: usize,
}

/// Why a [`PacketSpec`] cannot be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuildError {
    /// Source and destination are not the same IP version.
    MixedFamilies { src: IpAddr, dst: IpAddr },
    /// The VLAN id does not fit the 12-bit VID field.
    InvalidVlanId(u16),
    /// [`FrameSize::Exact`] below the Ethernet minimum.
    BelowMinimumFrame { requested: usize },
    /// [`FrameSize::Exact`] shorter than headers plus payload.
    FrameTooSmall { requested: usize, needed: usize },
    /// The IP length field (IPv4 total length, IPv6 payload length) would
    /// overflow 16 bits.
    TooLarge { ip_len: usize },
    /// The output buffer is shorter than the frame.
    BufferTooSmall { needed: usize, available: usize },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MixedFamilies { src, dst } => {
                write!(
                    f,
                    "source {src} and destination {dst} are different IP versions"
                )
            }
            Self::InvalidVlanId(id) => {
                write!(f, "VLAN id {id} exceeds the 12-bit maximum {MAX_VLAN_ID}")
            }
            Self::BelowMinimumFrame { requested } => write!(
                f,
                "frame length {requested} is below the Ethernet minimum {MIN_FRAME_LEN} (FCS excluded)"
            ),
            Self::FrameTooSmall { requested, needed } => write!(
                f,
                "frame length {requested} cannot hold headers and payload ({needed} bytes)"
            ),
            Self::TooLarge { ip_len } => {
                write!(f, "IP length {ip_len} does not fit the 16-bit length field")
            }
            Self::BufferTooSmall { needed, available } => write!(
                f,
                "buffer of {available} bytes is too small for a {needed}-byte frame"
            ),
        }
    }
}

impl std::error::Error for BuildError {}

/// One Ethernet II frame carrying IPv4 or IPv6 and TCP or UDP.
///
/// Fields are public so a hot loop can patch a spec in place; the builder
/// methods are the pleasant way to make one:
///
/// ```
/// use limpet_pktgen::{PacketSpec, SYN};
/// use std::net::Ipv4Addr;
///
/// let frame = PacketSpec::tcp_v4(
///     Ipv4Addr::new(198, 18, 0, 1),
///     Ipv4Addr::new(192, 0, 2, 10),
///     40_000,
///     80,
/// )
/// .flags(SYN)
/// .build();
/// assert_eq!(frame.len(), 60); // 54 bytes of headers, padded to the minimum
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PacketSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// 802.1Q VLAN id; the tag is written with priority 0 and DEI clear.
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub l4: L4,
    pub payload: Payload,
    pub frame_size: FrameSize,
}

/// Sequence number a reply to a bare SYN starts from.
pub const SERVER_ISN: u32 = 0x2000_0000;

impl PacketSpec {
    fn with_l4(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        Self {
            src_mac: DEFAULT_SRC_MAC,
            dst_mac: DEFAULT_DST_MAC,
            vlan: None,
            src,
            dst,
            ttl: DEFAULT_TTL,
            l4,
            payload: Payload::Bytes(Vec::new()),
            frame_size: FrameSize::Natural,
        }
    }

    /// A TCP segment with no flags set, sequence and acknowledgment 0.
    pub fn tcp(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, sport: u16, dport: u16) -> Self {
        Self::with_l4(
            src.into(),
            dst.into(),
            L4::Tcp(TcpSpec {
                src_port: sport,
                dst_port: dport,
                flags: TcpFlags::NONE,
                seq: 0,
                ack: 0,
                window: DEFAULT_WINDOW,
            }),
        )
    }

    /// A UDP datagram with a computed checksum.
    pub fn udp(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, sport: u16, dport: u16) -> Self {
        Self::with_l4(
            src.into(),
            dst.into(),
            L4::Udp(UdpSpec {
                src_port: sport,
                dst_port: dport,
                zero_checksum: false,
            }),
        )
    }

    pub fn tcp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Self {
        Self::tcp(src, dst, sport, dport)
    }

    pub fn tcp_v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Self {
        Self::tcp(src, dst, sport, dport)
    }

    pub fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Self {
        Self::udp(src, dst, sport, dport)
    }

    pub fn udp_v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Self {
        Self::udp(src, dst, sport, dport)
    }

    /// A TCP segment or UDP datagram from `src` to `dst`.
    pub fn between(proto: Proto, src: SocketAddr, dst: SocketAddr) -> Self {
        match proto {
            Proto::Tcp => Self::tcp(src.ip(), dst.ip(), src.port(), dst.port()),
            Proto::Udp => Self::udp(src.ip(), dst.ip(), src.port(), dst.port()),
        }
    }

    #[must_use]
    pub fn src_mac(mut self, mac: [u8; 6]) -> Self {
        self.src_mac = mac;
        self
    }

    #[must_use]
    pub fn dst_mac(mut self, mac: [u8; 6]) -> Self {
        self.dst_mac = mac;
        self
    }

    /// Adds an 802.1Q tag with this VLAN id.
    #[must_use]
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    #[must_use]
    pub fn src_ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.src = ip.into();
        self
    }

    #[must_use]
    pub fn dst_ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.dst = ip.into();
        self
    }

    #[must_use]
    pub fn src_port(mut self, port: u16) -> Self {
        self.l4.set_src_port(port);
        self
    }

    #[must_use]
    pub fn dst_port(mut self, port: u16) -> Self {
        self.l4.set_dst_port(port);
        self
    }

    /// IPv4 TTL or IPv6 hop limit.
    #[must_use]
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the TCP flags. Panics on a UDP spec: that is a bug in the test.
    #[must_use]
    pub fn flags(mut self, flags: TcpFlags) -> Self {
        self.tcp_mut("flags").flags = flags;
        self
    }

    /// Sets the TCP sequence number. Panics on a UDP spec.
    #[must_use]
    pub fn seq(mut self, seq: u32) -> Self {
        self.tcp_mut("seq").seq = seq;
        self
    }

    /// Sets the TCP acknowledgment number (not the ACK flag). Panics on a UDP
    /// spec.
    #[must_use]
    pub fn ack_number(mut self, ack: u32) -> Self {
        self.tcp_mut("ack_number").ack = ack;
        self
    }

    /// Sets the TCP window. Panics on a UDP spec.
    #[must_use]
    pub fn window(mut self, window: u16) -> Self {
        self.tcp_mut("window").window = window;
        self
    }

    /// Sends UDP checksum 0 (see [`UdpSpec::zero_checksum`]). Panics on a TCP
    /// spec.
    #[must_use]
    pub fn zero_checksum(mut self, zero: bool) -> Self {
        match &mut self.l4 {
            L4::Udp(u) => u.zero_checksum = zero,
            L4::Tcp(_) => panic!("zero_checksum() on a TCP PacketSpec"),
        }
        self
    }

    /// Uses these bytes as the L4 payload.
    #[must_use]
    pub fn payload(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.payload = Payload::Bytes(bytes.into());
        self
    }

    /// Uses `len` bytes of the [`Payload::Len`] pattern as the L4 payload.
    #[must_use]
    pub fn payload_len(mut self, len: usize) -> Self {
        self.payload = Payload::Len(len);
        self
    }

    /// Pads the L4 payload so the frame is exactly `len` bytes, FCS excluded
    /// (see [`FrameSize::Exact`]). `frame_len(60)` is a minimum-size frame.
    #[must_use]
    pub fn frame_len(mut self, len: usize) -> Self {
        self.frame_size = FrameSize::Exact(len);
        self
    }

    /// Leaves a short frame short instead of padding it to
    /// [`MIN_FRAME_LEN`] (see [`FrameSize::Unpadded`]).
    #[must_use]
    pub fn unpadded(mut self) -> Self {
        self.frame_size = FrameSize::Unpadded;
        self
    }

    fn tcp_mut(&mut self, what: &str) -> &mut TcpSpec {
        match &mut self.l4 {
            L4::Tcp(t) => t,
            L4::Udp(_) => panic!("{what}() on a UDP PacketSpec"),
        }
    }

    pub const fn proto(&self) -> Proto {
        self.l4.proto()
    }

    pub const fn src_socket(&self) -> SocketAddr {
        SocketAddr::new(self.src, self.l4.src_port())
    }

    pub const fn dst_socket(&self) -> SocketAddr {
        SocketAddr::new(self.dst, self.l4.dst_port())
    }

    /// The frame that answers this one, sent back along the same path: MACs,
    /// addresses and ports swapped, same VLAN, TTL and [`FrameSize`], empty
    /// payload.
    ///
    /// For TCP it is what a peer's stack would send: SYN|ACK to a bare SYN,
    /// otherwise a bare ACK; the acknowledgment number covers the payload
    /// (and the SYN or FIN) of `self`, and the sequence number continues
    /// from `self`'s acknowledgment number when `self` has ACK set, or starts
    /// at a fixed ISN. Set other flags on the result as needed.
    #[must_use]
    pub fn reply(&self) -> Self {
        let l4 = match self.l4 {
            L4::Tcp(t) => {
                let syn_only = t.flags.contains(SYN) && !t.flags.contains(ACK);
                let mut consumed = self.layout().map_or(self.payload.len(), |l| l.payload_len);
                if t.flags.contains(SYN) {
                    consumed += 1;
                }
                if t.flags.contains(FIN) {
                    consumed += 1;
                }
                L4::Tcp(TcpSpec {
                    src_port: t.dst_port,
                    dst_port: t.src_port,
                    flags: if syn_only { SYN | ACK } else { ACK },
                    seq: if t.flags.contains(ACK) {
                        t.ack
                    } else {
                        SERVER_ISN
                    },
                    // Sequence space is mod 2^32, so truncating is the point.
                    ack: t.seq.wrapping_add(consumed as u32),
                    window: t.window,
                })
            }
            L4::Udp(u) => L4::Udp(UdpSpec {
                src_port: u.dst_port,
                dst_port: u.src_port,
                zero_checksum: u.zero_checksum,
            }),
        };
        Self {
            src_mac: self.dst_mac,
            dst_mac: self.src_mac,
            vlan: self.vlan,
            src: self.dst,
            dst: self.src,
            ttl: self.ttl,
            l4,
            payload: Payload::Bytes(Vec::new()),
            frame_size: self.frame_size,
        }
    }

    /// [`reply`](Self::reply), but sent from `from` rather than from this
    /// spec's destination: a NAT backend answering a client that addressed a
    /// VIP.
    #[must_use]
    pub fn reply_from(&self, from: SocketAddr) -> Self {
        let mut r = self.reply();
        r.src = from.ip();
        r.l4.set_src_port(from.port());
        r
    }

    /// Checks the spec and says where each part of its frame will lie.
    pub fn layout(&self) -> Result<Layout, BuildError> {
        let l3_len = match (self.src, self.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => IPV4_HEADER_LEN,
            (IpAddr::V6(_), IpAddr::V6(_)) => IPV6_HEADER_LEN,
            (src, dst) => return Err(BuildError::MixedFamilies { src, dst }),
        };
        let l3_offset = match self.vlan {
            Some(id) if id > MAX_VLAN_ID => return Err(BuildError::InvalidVlanId(id)),
            Some(_) => ETH_HEADER_LEN + VLAN_TAG_LEN,
            None => ETH_HEADER_LEN,
        };
        let l4_offset = l3_offset + l3_len;
        let payload_offset = l4_offset + self.l4.header_len();
        let unpadded = payload_offset.saturating_add(self.payload.len());
        let (payload_len, frame_len) = match self.frame_size {
            FrameSize::Natural => (self.payload.len(), unpadded.max(MIN_FRAME_LEN)),
            FrameSize::Unpadded => (self.payload.len(), unpadded),
            FrameSize::Exact(n) if n < MIN_FRAME_LEN => {
                return Err(BuildError::BelowMinimumFrame { requested: n });
            }
            FrameSize::Exact(n) if n < unpadded => {
                return Err(BuildError::FrameTooSmall {
                    requested: n,
                    needed: unpadded,
                });
            }
            FrameSize::Exact(n) => (n - payload_offset, n),
        };
        // Saturating so an absurd payload length reports TooLarge instead of
        // overflowing.
        let ip_end = payload_offset.saturating_add(payload_len);
        // IPv4 counts its own header in the total length; IPv6 does not.
        let ip_len = match self.src {
            IpAddr::V4(_) => ip_end - l3_offset,
            IpAddr::V6(_) => ip_end - l4_offset,
        };
        if ip_len > usize::from(u16::MAX) {
            return Err(BuildError::TooLarge { ip_len });
        }
        Ok(Layout {
            l3_offset,
            l4_offset,
            payload_offset,
            payload_len,
            ip_end,
            frame_len,
        })
    }

    /// Writes the frame to the start of `buf` and returns its length. Does
    /// not allocate, so benchmarks can rewrite one buffer per packet.
    pub fn write_into(&self, buf: &mut [u8]) -> Result<usize, BuildError> {
        let lay = self.layout()?;
        let available = buf.len();
        let Some(frame) = buf.get_mut(..lay.frame_len) else {
            return Err(BuildError::BufferTooSmall {
                needed: lay.frame_len,
                available,
            });
        };

        frame[0..6].copy_from_slice(&self.dst_mac);
        frame[6..12].copy_from_slice(&self.src_mac);
        if let Some(id) = self.vlan {
            put16(frame, 12, ETHERTYPE_VLAN);
            put16(frame, 14, id);
        }
        let ethertype = match self.src {
            IpAddr::V4(_) => ETHERTYPE_IPV4,
            IpAddr::V6(_) => ETHERTYPE_IPV6,
        };
        put16(frame, lay.l3_offset - 2, ethertype);

        let written = lay.payload_offset + self.payload.len();
        match &self.payload {
            Payload::Bytes(b) => frame[lay.payload_offset..written].copy_from_slice(b),
            Payload::Len(_) => {
                for (i, byte) in frame[lay.payload_offset..written].iter_mut().enumerate() {
                    *byte = Payload::pattern_byte(i);
                }
            }
        }
        // Exact-size padding and the Ethernet trailer; the caller's buffer
        // may hold a previous frame.
        frame[written..].fill(0);

        self.write_l3(frame, &lay);
        self.write_l4(frame, &lay);
        Ok(lay.frame_len)
    }

    fn write_l3(&self, frame: &mut [u8], lay: &Layout) {
        let h = &mut frame[lay.l3_offset..lay.l4_offset];
        let proto = self.proto().number();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                h[0] = 0x45; // version 4, 5-word header
                h[1] = 0; // DSCP 0, not ECN-capable
                put16(h, 2, (lay.ip_end - lay.l3_offset) as u16);
                put16(h, 4, 0); // identification: unused, since DF is set
                put16(h, 6, 0x4000); // DF, as Linux sends TCP and UDP
                h[8] = self.ttl;
                h[9] = proto;
                put16(h, 10, 0);
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                let c = checksum::Sum::default().add(h).finish();
                put16(h, 10, c);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                h[0..4].copy_from_slice(&[0x60, 0, 0, 0]); // class 0, no flow label
                put16(h, 4, (lay.ip_end - lay.l4_offset) as u16);
                h[6] = proto;
                h[7] = self.ttl;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
            }
            _ => unreachable!("layout() rejects mixed families"),
        }
    }

    fn write_l4(&self, frame: &mut [u8], lay: &Layout) {
        let seg = &mut frame[lay.l4_offset..lay.ip_end];
        let csum_at = match self.l4 {
            L4::Tcp(t) => {
                put16(seg, 0, t.src_port);
                put16(seg, 2, t.dst_port);
                put32(seg, 4, t.seq);
                put32(seg, 8, t.ack);
                seg[12] = 5 << 4; // data offset: 5 words, no options
                seg[13] = t.flags.bits();
                put16(seg, 14, t.window);
                put16(seg, 16, 0);
                put16(seg, 18, 0); // urgent pointer
                Some(16)
            }
            L4::Udp(u) => {
                put16(seg, 0, u.src_port);
                put16(seg, 2, u.dst_port);
                put16(seg, 4, seg.len() as u16);
                put16(seg, 6, 0);
                (!u.zero_checksum).then_some(6)
            }
        };
        if let Some(at) = csum_at {
            let proto = self.proto();
            let c = checksum::l4(self.src, self.dst, proto.number(), seg, proto == Proto::Udp);
            put16(seg, at, c);
        }
    }

    /// The frame in a fresh `Vec`. Panics if the spec is invalid; use
    /// [`try_build`](Self::try_build) to get the error instead.
    pub fn build(&self) -> Vec<u8> {
        self.try_build()
            .unwrap_or_else(|e| panic!("invalid PacketSpec: {e}"))
    }

    pub fn try_build(&self) -> Result<Vec<u8>, BuildError> {
        let mut v = vec![0; self.layout()?.frame_len];
        self.write_into(&mut v)?;
        Ok(v)
    }
}

pub(crate) fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn get16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}
