//! The `AF_XDP` socket calls and rings. The calls shared with `AF_PACKET`
//! (socket options, mappings, interface lookups) are `afpacket::sys`'s.

use super::common::{self, Mmap};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes the kernel keeps before a received frame in its UMEM chunk
/// (`XDP_PACKET_HEADROOM`).
pub(super) const XDP_PACKET_HEADROOM: usize = 256;

pub(super) fn xdp_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; its result is checked by `cvt`.
    let fd =
        common::cvt(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds to queue `queue` of `ifindex`, asking for wake-up flags.
pub(super) fn bind(fd: &OwnedFd, ifindex: u32, queue: u32, mode: u16) -> io::Result<()> {
    let addr = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: mode | libc::XDP_USE_NEED_WAKEUP,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: 0,
    };
    // SAFETY: `addr` is a live `sockaddr_xdp` and its exact size is passed.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            ptr::from_ref(&addr).cast(),
            size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    };
    common::cvt(ret).map(drop)
}

/// Asks the kernel to take the fill ring's new frames (a driver that set
/// the ring's need-wakeup flag), without waiting.
pub(super) fn wake_rx(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: a null buffer of length 0 and no address: the kernel writes
    // nothing to user memory.
    let ret = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
    Ok(())
}

pub(super) fn zero_offsets() -> libc::xdp_mmap_offsets {
    let zero = libc::xdp_ring_offset {
        producer: 0,
        consumer: 0,
        desc: 0,
        flags: 0,
    };
    libc::xdp_mmap_offsets {
        rx: zero,
        tx: zero,
        fr: zero,
        cr: zero,
    }
}

pub(super) fn zero_stats() -> libc::xdp_statistics {
    libc::xdp_statistics {
        rx_dropped: 0,
        rx_invalid_descs: 0,
        tx_invalid_descs: 0,
        rx_ring_full: 0,
        rx_fill_ring_empty_descs: 0,
        tx_ring_empty_descs: 0,
    }
}

/// Which of a socket's four rings, and so its offset in the socket's
/// mappable memory, its entries, and which side user space is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RingKind {
    /// Descriptors the kernel received; we consume.
    Rx,
    /// Descriptors to send; we produce.
    Tx,
    /// Frames for the kernel to receive into; we produce.
    Fill,
    /// Frames the kernel sent; we consume.
    Completion,
}

/// One single-producer single-consumer ring shared with the kernel. `local`
/// is our side's index (consumer or producer), `cached` the kernel's as
/// last read.
pub(super) struct Ring {
    map: Mmap,
    producer: usize,
    consumer: usize,
    flags: usize,
    desc: usize,
    mask: u32,
    size: u32,
    local: u32,
    cached: u32,
}

impl Ring {
    pub(super) fn map(
        fd: &OwnedFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        kind: RingKind,
    ) -> io::Result<Ring> {
        let (entry, pgoff) = match kind {
            RingKind::Rx => (size_of::<libc::xdp_desc>(), libc::XDP_PGOFF_RX_RING as u64),
            RingKind::Tx => (size_of::<libc::xdp_desc>(), libc::XDP_PGOFF_TX_RING as u64),
            RingKind::Fill => (size_of::<u64>(), libc::XDP_UMEM_PGOFF_FILL_RING),
            RingKind::Completion => (size_of::<u64>(), libc::XDP_UMEM_PGOFF_COMPLETION_RING),
        };
        let len = off.desc as usize + size as usize * entry;
        let map = Mmap::at(fd, len, pgoff)?;
        let mut ring = Ring {
            map,
            producer: off.producer as usize,
            consumer: off.consumer as usize,
            flags: off.flags as usize,
            desc: off.desc as usize,
            mask: size - 1,
            size,
            local: 0,
            cached: 0,
        };
        let (p, c) = (
            ring.word(ring.producer).load(Ordering::Acquire),
            ring.word(ring.consumer).load(Ordering::Acquire),
        );
        (ring.local, ring.cached) = match kind {
            RingKind::Rx | RingKind::Completion => (c, p),
            RingKind::Tx | RingKind::Fill => (p, c),
        };
        Ok(ring)
    }

    #[allow(clippy::cast_ptr_alignment)] // the kernel aligns the ring words
    #[inline(always)]
    fn word(&self, offset: usize) -> &AtomicU32 {
        let p = self.map.as_ptr().wrapping_add(offset).cast::<u32>();
        // SAFETY: `offset` is one of the kernel's `xdp_ring_offset` words,
        // 4-byte aligned inside this live mapping; the kernel accesses it
        // atomically from its side.
        unsafe { AtomicU32::from_ptr(p) }
    }

    #[inline(always)]
    fn slot(&self, index: u32, entry: usize) -> *mut u8 {
        self.map
            .as_ptr()
            .wrapping_add(self.desc + (index & self.mask) as usize * entry)
    }

    /// Entries a producer may still add before the kernel consumes more.
    #[inline]
    pub(super) fn free_entries(&mut self) -> u32 {
        let used = self.local.wrapping_sub(self.cached);
        if used < self.size {
            return self.size - used;
        }
        self.cached = self.word(self.consumer).load(Ordering::Acquire);
        self.size - self.local.wrapping_sub(self.cached)
    }

    /// Entries a consumer may take now.
    #[inline]
    pub(super) fn available(&self) -> u32 {
        self.word(self.producer)
            .load(Ordering::Acquire)
            .wrapping_sub(self.local)
    }

    #[inline]
    fn take(&mut self) -> Option<u32> {
        if self.local == self.cached {
            self.cached = self.word(self.producer).load(Ordering::Acquire);
            if self.local == self.cached {
                return None;
            }
        }
        let index = self.local;
        self.local = self.local.wrapping_add(1);
        Some(index)
    }

    /// The next received descriptor (RX ring): frame address and length.
    #[allow(clippy::cast_ptr_alignment)] // descriptors are 16-byte aligned
    #[inline]
    pub(super) fn consume_desc(&mut self) -> Option<(u64, u32)> {
        let index = self.take()?;
        let p = self
            .slot(index, size_of::<libc::xdp_desc>())
            .cast::<libc::xdp_desc>();
        // SAFETY: the kernel published this slot (index below its producer,
        // read with Acquire) and does not reuse it until we release it.
        let d = unsafe { p.read() };
        Some((d.addr, d.len))
    }

    /// The next completed frame (completion ring).
    #[allow(clippy::cast_ptr_alignment)] // u64 entries, 8-byte aligned
    #[inline]
    pub(super) fn consume_addr(&mut self) -> Option<u64> {
        let index = self.take()?;
        let p = self.slot(index, size_of::<u64>()).cast::<u64>();
        // SAFETY: as for `consume_desc`.
        Some(unsafe { p.read() })
    }

    /// Tells the kernel the entries taken are consumed.
    #[inline]
    pub(super) fn release(&self) {
        self.word(self.consumer)
            .store(self.local, Ordering::Release);
    }

    /// Adds a frame (fill ring); the caller checked `free_entries`.
    #[allow(clippy::cast_ptr_alignment)] // u64 entries, 8-byte aligned
    #[inline]
    pub(super) fn produce_addr(&mut self, addr: u64) {
        let p = self.slot(self.local, size_of::<u64>()).cast::<u64>();
        // SAFETY: the slot is below consumer + size (checked by the caller
        // through `free_entries`), so the kernel is not reading it; it lies
        // in the mapping.
        unsafe { p.write(addr) };
        self.local = self.local.wrapping_add(1);
    }

    /// Adds a descriptor to send (TX ring); the caller checked
    /// `free_entries`.
    #[allow(clippy::cast_ptr_alignment)] // descriptors are 16-byte aligned
    #[inline]
    pub(super) fn produce_desc(&mut self, addr: u64, len: u32) {
        let p = self
            .slot(self.local, size_of::<libc::xdp_desc>())
            .cast::<libc::xdp_desc>();
        // SAFETY: as for `produce_addr`.
        unsafe {
            p.write(libc::xdp_desc {
                addr,
                len,
                options: 0,
            });
        };
        self.local = self.local.wrapping_add(1);
    }

    /// Makes the entries produced visible to the kernel.
    #[inline]
    pub(super) fn publish(&self) {
        self.word(self.producer)
            .store(self.local, Ordering::Release);
    }

    /// Whether the kernel asked to be woken for this ring.
    #[inline]
    pub(super) fn needs_wakeup(&self) -> bool {
        self.word(self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}
