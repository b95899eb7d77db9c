//! A plain `AF_PACKET` socket without rings, for the control side: the
//! neighbour-resolution thread (ARP and IPv6 neighbour discovery), and
//! tests and generators (which may send super-frames as a local sender
//! with segmentation offload does: [`RawSocket::open_offloading`]).

use super::{AfPacketError, bpf, sys};
use crate::gso::GsoKind;
use crate::wire::MacAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// An `AF_PACKET` `SOCK_RAW` socket bound to one interface. It does not see
/// frames it sends itself (`PACKET_IGNORE_OUTGOING`).
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    iface: String,
    ifindex: u32,
    mac: MacAddr,
    /// Frames are sent after a virtio-net header (`PACKET_VNET_HDR`).
    vnet: bool,
}

/// What a super-frame sent by [`RawSocket::send_super_frame`] leaves to
/// the kernel's segmentation offload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    pub kind: GsoKind,
    /// The frame is IPv6 (`VIRTIO_NET_HDR_GSO_TCPV6`, for TCP).
    pub v6: bool,
    /// Payload bytes per segment (the sender's MSS).
    pub segment_size: u16,
    /// Length of the headers every segment repeats, Ethernet included.
    pub headers: u16,
    /// Where the transport header starts, from the Ethernet header.
    pub l4: u16,
}

impl RawSocket {
    /// A socket that receives every frame arriving on `iface`.
    pub fn open(iface: &str) -> Result<RawSocket, AfPacketError> {
        RawSocket::with_filter(iface, None, false)
    }

    /// A socket like [`open`](Self::open) whose frames may be super-frames
    /// ([`send_super_frame`](Self::send_super_frame)): how a host's own
    /// TCP hands its device 64 KiB at once when segmentation offload is on.
    pub fn open_offloading(iface: &str) -> Result<RawSocket, AfPacketError> {
        RawSocket::with_filter(iface, None, true)
    }

    /// A socket that receives only ARP and `ICMPv6` neighbour solicitations
    /// and advertisements arriving on `iface` (a classic BPF filter attached
    /// with `SO_ATTACH_FILTER` before the socket starts receiving, so
    /// nothing else is ever queued).
    pub fn open_neighbour(iface: &str) -> Result<RawSocket, AfPacketError> {
        RawSocket::with_filter(iface, Some(&bpf::neighbour_filter()), false)
    }

    fn with_filter(
        iface: &str,
        filter: Option<&[libc::sock_filter]>,
        vnet: bool,
    ) -> Result<RawSocket, AfPacketError> {
        let name = sys::ifname(iface).ok_or_else(|| AfPacketError::BadName {
            iface: iface.to_owned(),
        })?;
        let err = |call: &'static str| move |e| AfPacketError::sys(iface, call, e);
        // Protocol 0: nothing is received until `bind` below, after the
        // filter is in place.
        let fd = sys::packet_socket().map_err(err("socket(AF_PACKET)"))?;
        let ifindex = sys::if_nametoindex(&name).map_err(|_| AfPacketError::NotFound {
            iface: iface.to_owned(),
        })?;
        let mac = MacAddr(sys::if_hwaddr(&fd, &name).map_err(err("ioctl(SIOCGIFHWADDR)"))?);
        if let Some(filter) = filter {
            sys::attach_program(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, filter)
                .map_err(err("setsockopt(SO_ATTACH_FILTER)"))?;
        }
        let one: libc::c_int = 1;
        sys::setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)
            .map_err(err("setsockopt(PACKET_IGNORE_OUTGOING)"))?;
        if vnet {
            sys::setsockopt(&fd, libc::SOL_PACKET, sys::PACKET_VNET_HDR, &one)
                .map_err(err("setsockopt(PACKET_VNET_HDR)"))?;
        }
        sys::bind(&fd, ifindex, libc::ETH_P_ALL as u16).map_err(err("bind"))?;
        Ok(RawSocket {
            fd,
            iface: iface.to_owned(),
            ifindex,
            mac,
            vnet,
        })
    }

    /// The interface's MAC address (read when opened, `SIOCGIFHWADDR`).
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Waits up to `timeout` for a frame and copies it into `buf`; returns
    /// its length (truncated to `buf`), or `None` on timeout.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, AfPacketError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = sys::recv_frame(&self.fd, buf)
                .map_err(|e| AfPacketError::sys(&self.iface, "recv", e))?
            {
                return Ok(Some(n));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut fds = [libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // Round up so a sub-millisecond remainder still waits.
            sys::poll(&mut fds, left + Duration::from_micros(999))
                .map_err(|e| AfPacketError::sys(&self.iface, "poll", e))?;
            if fds[0].revents & libc::POLLERR != 0
                && let Some(e) = sys::take_socket_error(&self.fd)
                    .map_err(|e| AfPacketError::sys(&self.iface, "getsockopt(SO_ERROR)", e))?
            {
                return Err(AfPacketError::sys(&self.iface, "socket error", e));
            }
        }
    }

    /// Sends one whole Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> Result<(), AfPacketError> {
        let sent = if self.vnet {
            sys::send_frame_after(&self.fd, self.ifindex, &[0; 10], frame)
        } else {
            sys::send_frame(&self.fd, self.ifindex, frame)
        };
        sent.map_err(|e| AfPacketError::sys(&self.iface, "sendto", e))?;
        Ok(())
    }

    /// Sends `frame`, longer than the link's MTU, for the kernel to cut into
    /// segments as `offload` says (its transport checksum is left to the
    /// offload too: the field should hold the pseudo-header's sum). Only on
    /// a socket from [`open_offloading`](Self::open_offloading).
    pub fn send_super_frame(&self, frame: &[u8], offload: Offload) -> Result<(), AfPacketError> {
        if !self.vnet {
            return Err(AfPacketError::InvalidOptions(
                "send_super_frame needs a socket from open_offloading".to_owned(),
            ));
        }
        // struct virtio_net_hdr, in the host's byte order (legacy virtio).
        let (gso_type, csum_offset) = match (offload.kind, offload.v6) {
            (GsoKind::Tcp, false) => (1u8, 16u16),
            (GsoKind::Tcp, true) => (4, 16),
            (GsoKind::Udp, _) => (5, 6),
        };
        let mut header = [0u8; 10];
        header[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
        header[1] = gso_type;
        header[2..4].copy_from_slice(&offload.headers.to_ne_bytes());
        header[4..6].copy_from_slice(&offload.segment_size.to_ne_bytes());
        header[6..8].copy_from_slice(&offload.l4.to_ne_bytes());
        header[8..10].copy_from_slice(&csum_offset.to_ne_bytes());
        sys::send_frame_after(&self.fd, self.ifindex, &header, frame)
            .map_err(|e| AfPacketError::sys(&self.iface, "sendmsg (super-frame)", e))?;
        Ok(())
    }
}
