//! Packet I/O: the [`PacketIo`] trait the pipeline runs over, its backends,
//! and the few hardware hints the packet path needs.
//!
//! This module is the crate's only `unsafe` boundary.
#![allow(unsafe_code)]

pub mod afpacket;
pub mod afxdp;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod memory;
pub mod steer;
pub mod tun;

pub use memory::{MemoryIo, MemoryPacket};

/// Most packets one burst carries.
pub const BURST: usize = 32;

/// One received packet, in a buffer its backend owns: an `rte_mbuf`, a
/// frame of an `AF_PACKET` ring, or a pooled buffer of the in-memory backend.
/// The pipeline edits it in place and hands it back through
/// [`PacketIo::tx_burst`] or [`PacketIo::free_burst`].
pub trait PacketBuf {
    /// The frame's bytes, from the Ethernet header on.
    fn data(&self) -> &[u8];
    fn data_mut(&mut self) -> &mut [u8];
    /// The port it arrived on, or (once set) the port to send it out of.
    fn port(&self) -> u16;
    fn set_port(&mut self, port: u16);

    /// Grows the frame by `n` bytes at its front, into the room the buffer
    /// has before the received frame (DPDK's headroom, an `AF_PACKET` frame
    /// header already read): how limpet turns a packet into the ICMP error
    /// that quotes it without copying it. The new bytes are unspecified.
    /// Returns false, changing nothing, when there is no such room.
    fn prepend(&mut self, _n: usize) -> bool {
        false
    }

    /// Shortens the frame to `len` bytes; a longer `len` changes nothing.
    fn truncate(&mut self, len: usize);

    /// Whether the frame's TCP/UDP checksum was left for a device to
    /// compute (a local sender's checksum offload, `CHECKSUM_PARTIAL`): the
    /// field holds only the pseudo-header's sum, and the pipeline completes
    /// it before forwarding.
    fn checksum_partial(&self) -> bool {
        false
    }
}

/// A packet I/O backend, polled by one worker.
///
/// Bursts are `Vec`s that the worker allocates once with capacity
/// [`BURST`]; backends only push within that capacity and drain them, so the
/// packet path never allocates.
pub trait PacketIo {
    type Buf: PacketBuf;

    /// Appends up to `burst`'s spare capacity of received packets to it;
    /// returns how many. Never blocks.
    fn rx_burst(&mut self, burst: &mut Vec<Self::Buf>) -> usize;

    /// Sends every packet of `burst` out of its port and empties `burst`.
    /// Packets the device cannot take are freed and counted by the backend.
    /// Returns how many were sent.
    fn tx_burst(&mut self, burst: &mut Vec<Self::Buf>) -> usize;

    /// Returns packets to the backend unsent and empties `burst`.
    fn free_burst(&mut self, burst: &mut Vec<Self::Buf>);

    /// Whether a received frame's TCP/UDP checksum may be a local sender's
    /// partial one without [`PacketBuf::checksum_partial`] saying so (the
    /// backend sees bytes, not the kernel's checksum state): the pipeline
    /// then checks every one ([`crate::pipeline`]'s `looks_partial`).
    fn checksum_state_unknown(&self) -> bool {
        false
    }

    /// The longest frame `tx_burst` can send, Ethernet header included.
    fn max_frame(&self) -> usize {
        usize::MAX
    }

    /// The largest IP packet every port sends (the interfaces' MTU): what
    /// an encapsulated packet must fit. Read once, when a worker is built.
    fn mtu(&self) -> usize {
        usize::MAX
    }

    /// Takes the packets the pipeline leaves to the slow path (ARP,
    /// neighbour discovery, ICMP for limpet itself) and empties `burst`.
    /// Backends whose control plane sees the wire on its own (`AF_PACKET`:
    /// the kernel gives its raw neighbour socket a copy) just free them;
    /// the DPDK backend, where only the workers see the wire, hands them
    /// to its neighbour thread.
    fn slow_burst(&mut self, burst: &mut Vec<Self::Buf>) {
        self.free_burst(burst);
    }

    /// Told, at a snapshot swap, every address services are reached at.
    /// Backends that spread traffic over several workers use it to keep
    /// both directions of a `nat` connection on one worker (see
    /// `afpacket`'s client fanout). Rare, so it may make a system call.
    fn serve_frontends(&mut self, _frontends: &[std::net::IpAddr]) {}

    /// Told once, before any packet, the addresses source-translated
    /// connections leave from: their replies belong to the worker owning
    /// the destination port ([`crate::snat::port_owner`]), and backends
    /// that spread traffic over workers steer them so.
    fn serve_sources(&mut self, _sources: &[std::net::IpAddr]) {}

    /// Told once, before any packet, limpet's own addresses (`--address`):
    /// backends that share the interface with the host steer them to
    /// limpet (`afxdp`).
    fn serve_own_addrs(&mut self, _addrs: &[std::net::IpAddr]) {}

    /// Told, at a snapshot swap, every endpoint address services balance
    /// to: packets from them are replies of limpet's translated
    /// connections, which backends sharing the interface with the host
    /// steer to limpet (`afxdp`). Rare, so it may make a system call.
    fn serve_endpoints(&mut self, _endpoints: &[std::net::IpAddr]) {}

    /// The backend's own counters (named, for the admin API), appended to
    /// `out`. Called at burst boundaries when the control plane asks; may
    /// allocate.
    fn counters(&self, _out: &mut Vec<(&'static str, u64)>) {}
}

/// Asks the CPU to start loading the cache line holding `value`.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only needs SSE, which every x86_64 CPU has
    // (it is in the x86_64 baseline target features); a prefetch is a hint
    // that never faults, and `value` is a live reference in any case.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(value).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Asks the CPU to start loading every cache line `value` spans: an entry
/// that straddles a line boundary needs both.
#[inline(always)]
pub fn prefetch_all<T>(value: &T) {
    prefetch(value);
    if std::mem::size_of::<T>() > 1 {
        let first = std::ptr::from_ref(value).cast::<u8>();
        let last = first.wrapping_add(std::mem::size_of::<T>() - 1);
        if first.addr() / 64 != last.addr() / 64 {
            // SAFETY: as for `prefetch`; `last` is the value's last byte.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    last.cast::<i8>(),
                );
            }
        }
    }
}

/// A vector of `n` copies of `value`, its memory advised to be backed by
/// transparent huge pages before it is first touched: big tables read at
/// random take a TLB miss per access on 4 KiB pages. Set-up only (it makes
/// a system call); the advice is best-effort and ignored where unsupported.
pub fn huge_vec<T: Clone>(value: T, n: usize) -> Vec<T> {
    const HUGE: usize = 2 << 20;
    let mut v: Vec<T> = Vec::with_capacity(n);
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    if bytes >= HUGE {
        #[cfg(target_os = "linux")]
        {
            let start = v.as_mut_ptr().cast::<u8>();
            let page = 4096;
            let skip = start.addr().next_multiple_of(page) - start.addr();
            let len = (bytes - skip) / page * page;
            let first = start.wrapping_add(skip).cast::<libc::c_void>();
            // SAFETY: the range lies inside `v`'s allocation (start rounded
            // up, length rounded down to whole pages); MADV_HUGEPAGE only
            // changes how the kernel backs pages not yet touched.
            unsafe {
                libc::madvise(first, len, libc::MADV_HUGEPAGE);
            }
        }
    }
    v.resize(n, value);
    v
}

/// Pins the calling thread to CPU `cpu`, so a poll-mode worker owns its core
/// (and its caches) instead of migrating. Set-up only: one system call.
///
/// # Errors
/// The kernel's, e.g. `EINVAL` when `cpu` is not in the process's allowed
/// set (a cgroup cpuset, or `taskset`), or a CPU number past `CPU_SETSIZE`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu_set_t` is a plain bit array: all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes bit `cpu` of `set`, inside it because
    // `cpu < CPU_SETSIZE` was checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid, initialised `cpu_set_t` and the size passed
    // is its own; pid 0 means the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &raw const set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_to_an_allowed_cpu_works_and_a_wild_one_is_refused() {
        std::thread::spawn(|| {
            pin_current_thread(0).expect("cpu 0 is allowed");
            assert!(pin_current_thread(1 << 20).is_err());
        })
        .join()
        .unwrap();
    }
}
