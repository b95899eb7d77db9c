//! Thin wrappers over the system calls the `AF_PACKET` backend makes. Each
//! holds exactly one `unsafe` operation and returns `io::Result`.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::time::Duration;

pub(in crate::io) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An interface name as the kernel wants it: NUL-padded, at most 15 bytes.
pub(in crate::io) fn ifname(name: &str) -> Option<[libc::c_char; libc::IFNAMSIZ]> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return None;
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, &b) in out.iter_mut().zip(bytes) {
        *o = b.cast_signed();
    }
    Some(out)
}

/// `PACKET_VNET_HDR` (`linux/if_packet.h`), which the libc crate lacks.
pub(super) const PACKET_VNET_HDR: libc::c_int = 15;

/// `socket(AF_PACKET, SOCK_RAW, 0)`: protocol 0, so it receives nothing
/// until it is bound with a protocol.
pub(in crate::io) fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; its result is checked by `cvt`.
    let fd = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(in crate::io) fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live `&T` and the length passed is exactly
    // `size_of::<T>()`, so the kernel reads only inside it.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            ptr::from_ref(value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop)
}

/// Only for plain-integer types, for which every bit pattern is valid.
pub(in crate::io) trait PlainInts: Copy {}
impl PlainInts for libc::c_int {}
impl PlainInts for libc::tpacket_stats_v3 {}
impl PlainInts for libc::xdp_mmap_offsets {}
impl PlainInts for libc::xdp_statistics {}

pub(in crate::io) fn getsockopt<T: PlainInts>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    mut value: T,
) -> io::Result<T> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals; `len` tells the kernel how
    // much it may write, and any bytes it writes form a valid `T` (plain
    // integers only, see `PlainInts`).
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            ptr::from_mut(&mut value).cast(),
            &raw mut len,
        )
    };
    cvt(ret).map(|_| value)
}

/// The socket's pending error (`SO_ERROR`), which reading clears.
pub(in crate::io) fn take_socket_error(fd: &OwnedFd) -> io::Result<Option<io::Error>> {
    let err = getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, 0)?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// `PACKET_STATISTICS` of a `TPACKET_V3` socket; reading resets them.
pub(super) fn packet_stats(fd: &OwnedFd) -> io::Result<libc::tpacket_stats_v3> {
    let zero = libc::tpacket_stats_v3 {
        tp_packets: 0,
        tp_drops: 0,
        tp_freeze_q_cnt: 0,
    };
    getsockopt(fd, libc::SOL_PACKET, libc::PACKET_STATISTICS, zero)
}

fn sockaddr_ll(ifindex: u32, protocol: u16) -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: protocol.to_be(),
        sll_ifindex: ifindex.cast_signed(),
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    }
}

/// Binds to one interface and `protocol` (host order; 0 receives nothing).
pub(super) fn bind(fd: &OwnedFd, ifindex: u32, protocol: u16) -> io::Result<()> {
    let addr = sockaddr_ll(ifindex, protocol);
    // SAFETY: `addr` is a live `sockaddr_ll` and the length passed is its size.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            ptr::from_ref(&addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop)
}

pub(in crate::io) fn if_nametoindex(name: &[libc::c_char; libc::IFNAMSIZ]) -> io::Result<u32> {
    // SAFETY: `name` is NUL-terminated (see `ifname`) and outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(index)
    }
}

/// The interface's current name, or `None` once it is gone.
pub(in crate::io) fn if_indextoname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IFNAMSIZ];
    // SAFETY: `buf` has the IFNAMSIZ bytes `if_indextoname` may write.
    let ret = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if ret.is_null() {
        return None;
    }
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c.cast_unsigned())
        .collect();
    String::from_utf8(bytes).ok()
}

pub(in crate::io) fn ifreq(name: &[libc::c_char; libc::IFNAMSIZ]) -> libc::ifreq {
    // SAFETY: `ifreq` is a C struct of integer arrays and a union of
    // integers, `sockaddr`s and a pointer, for all of which all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = *name;
    req
}

pub(in crate::io) fn ioctl_ifreq(
    fd: &OwnedFd,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
) -> io::Result<()> {
    // SAFETY: `req` is a live, writable `ifreq`, which is what every
    // request passed here (SIOCGIF*, SIOCSIFFLAGS, TUNSETIFF) reads and
    // writes.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, ptr::from_mut(req)) };
    cvt(ret).map(drop)
}

/// `SIOCGIFFLAGS`.
pub(in crate::io) fn if_flags(
    fd: &OwnedFd,
    name: &[libc::c_char; libc::IFNAMSIZ],
) -> io::Result<i32> {
    let mut req = ifreq(name);
    ioctl_ifreq(fd, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS wrote `ifru_flags`; every union member is plain
    // data, so reading it is valid whatever was written.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Ok(i32::from(flags) & 0xffff)
}

/// `SIOCGIFMTU`: the largest IP packet the interface sends.
pub(in crate::io) fn if_mtu(
    fd: &OwnedFd,
    name: &[libc::c_char; libc::IFNAMSIZ],
) -> io::Result<usize> {
    let mut req = ifreq(name);
    ioctl_ifreq(fd, libc::SIOCGIFMTU, &mut req)?;
    // SAFETY: SIOCGIFMTU wrote `ifru_mtu`; the union is plain data.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(usize::try_from(mtu).unwrap_or(0))
}

/// `SIOCGIFHWADDR`: the interface's MAC address.
pub(super) fn if_hwaddr(
    fd: &OwnedFd,
    name: &[libc::c_char; libc::IFNAMSIZ],
) -> io::Result<[u8; 6]> {
    let mut req = ifreq(name);
    ioctl_ifreq(fd, libc::SIOCGIFHWADDR, &mut req)?;
    // SAFETY: SIOCGIFHWADDR wrote `ifru_hwaddr`; the union is plain data.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0; 6];
    for (m, &b) in mac.iter_mut().zip(&sa.sa_data[..6]) {
        *m = b.cast_unsigned();
    }
    Ok(mac)
}

/// A writable mapping (a socket's rings, or anonymous memory), unmapped on
/// drop.
pub(in crate::io) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    pub(super) fn new(fd: &OwnedFd, len: usize) -> io::Result<Mmap> {
        Mmap::map(Some(fd), len, 0)
    }

    /// The part of `fd`'s mappable memory at `offset` (an `AF_XDP` ring).
    pub(in crate::io) fn at(fd: &OwnedFd, len: usize, offset: u64) -> io::Result<Mmap> {
        Mmap::map(Some(fd), len, offset)
    }

    /// Zeroed private memory of `len` bytes (an `AF_XDP` UMEM).
    pub(in crate::io) fn anonymous(len: usize) -> io::Result<Mmap> {
        Mmap::map(None, len, 0)
    }

    fn map(fd: Option<&OwnedFd>, len: usize, offset: u64) -> io::Result<Mmap> {
        let (flags, raw) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd.as_raw_fd()),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            ),
        };
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh mapping chosen by the kernel (null hint) cannot
        // overlap any Rust object; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mmap { ptr, len })
    }

    pub(in crate::io) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Keeps the mapping for the rest of the process (buffers still point
    /// into it).
    pub(in crate::io) fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping `new` made, and it is
        // unmapped once: `Mmap` is not `Clone` and `leak` skips this drop.
        // Callers guarantee no reference into it outlives it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `poll()` over `fds`; returns how many have events.
pub(in crate::io) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a live, writable slice and its length is passed.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    match cvt(ret) {
        Ok(n) => Ok(usize::try_from(n).unwrap_or(0)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// Tells the kernel to send the TX ring's pending frames, without waiting.
pub(in crate::io) fn kick(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: a null buffer of length 0 and no address: the kernel reads
    // nothing from user memory but the mapped ring.
    let ret = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            ptr::null(),
            0,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sends one whole frame out of `ifindex`.
pub(super) fn send_frame(fd: &OwnedFd, ifindex: u32, frame: &[u8]) -> io::Result<usize> {
    let addr = sockaddr_ll(ifindex, 0);
    // SAFETY: `frame` and `addr` are live for the call and their lengths
    // are passed with them.
    let ret = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            ptr::from_ref(&addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// Sends one frame after a virtio-net header (a `PACKET_VNET_HDR` socket)
/// out of `ifindex`, the two gathered by the kernel, not copied here.
pub(super) fn send_frame_after(
    fd: &OwnedFd,
    ifindex: u32,
    header: &[u8],
    frame: &[u8],
) -> io::Result<usize> {
    let mut addr = sockaddr_ll(ifindex, 0);
    let mut iov = [
        libc::iovec {
            iov_base: header.as_ptr().cast_mut().cast(),
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: frame.as_ptr().cast_mut().cast(),
            iov_len: frame.len(),
        },
    ];
    // SAFETY: `msghdr` is plain data; all zeroes is an empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = ptr::from_mut(&mut addr).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    // SAFETY: `msg` points at `addr` and at two iovecs over `header` and
    // `frame`, all live for the call with their lengths; the kernel only
    // reads them (sendmsg does not write through `iov_base`).
    let ret = unsafe { libc::sendmsg(fd.as_raw_fd(), &raw const msg, 0) };
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// Receives one frame without blocking; `Ok(None)` when none is queued.
pub(super) fn recv_frame(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is a live, writable slice and its length is passed.
    let ret = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if let Ok(n) = usize::try_from(ret) {
        return Ok(Some(n));
    }
    let e = io::Error::last_os_error();
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    ) {
        Ok(None)
    } else {
        Err(e)
    }
}

pub(in crate::io) fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Attaches a classic BPF program with `SO_ATTACH_FILTER` or
/// `PACKET_FANOUT_DATA`.
pub(super) fn attach_program(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    program: &[libc::sock_filter],
) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        // The kernel only reads through this pointer.
        filter: program.as_ptr().cast_mut(),
    };
    setsockopt(fd, level, name, &prog)
}
