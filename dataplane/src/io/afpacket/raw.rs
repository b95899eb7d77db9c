//! A plain `AF_PACKET` socket without rings, for the control side: the
//! neighbour-resolution thread (ARP and IPv6 neighbour discovery), and
//! tests.

use super::{AfPacketError, bpf, sys};
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
}

impl RawSocket {
    /// A socket that receives every frame arriving on `iface`.
    pub fn open(iface: &str) -> Result<RawSocket, AfPacketError> {
        RawSocket::with_filter(iface, None)
    }

    /// A socket that receives only ARP and `ICMPv6` neighbour solicitations
    /// and advertisements arriving on `iface` (a classic BPF filter attached
    /// with `SO_ATTACH_FILTER` before the socket starts receiving, so
    /// nothing else is ever queued).
    pub fn open_neighbour(iface: &str) -> Result<RawSocket, AfPacketError> {
        RawSocket::with_filter(iface, Some(&bpf::neighbour_filter()))
    }

    fn with_filter(
        iface: &str,
        filter: Option<&[libc::sock_filter]>,
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
        sys::bind(&fd, ifindex, libc::ETH_P_ALL as u16).map_err(err("bind"))?;
        Ok(RawSocket {
            fd,
            iface: iface.to_owned(),
            ifindex,
            mac,
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
        sys::send_frame(&self.fd, self.ifindex, frame)
            .map_err(|e| AfPacketError::sys(&self.iface, "sendto", e))?;
        Ok(())
    }
}
