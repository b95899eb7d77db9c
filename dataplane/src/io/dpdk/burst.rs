//! Bulk operations for traffic generators, sinks and benchmarks that drive
//! DPDK ports directly rather than through the pipeline: allocating bursts
//! of mbufs to fill ([`Mempool::alloc_burst`]), moving bursts through the
//! rings behind a `net_ring` port ([`Ring::push_burst`], [`Ring::pop_burst`]),
//! sending without dropping what the queue did not take
//! ([`DpdkIo::send_retaining`]), and the plain DPDK io-forward loop limpet's
//! benchmarks measure the pipeline against ([`DpdkIo::forward_macswap`]).
//!
//! Everything here works a burst of at most [`BURST`] at a time, through
//! the same stack arrays, and never allocates (the `Vec`s are the caller's,
//! pushed within their capacity).

use super::{DpdkBuf, DpdkIo, Mempool, Ring, sys};
use crate::io::BURST;
use std::ffi::c_void;
use std::ptr::NonNull;

impl Mempool {
    /// Appends up to `n` (at most [`BURST`], within `out`'s spare capacity)
    /// fresh mbufs to `out`, each holding `len` bytes of uninitialised
    /// (stale) data for the caller to write through
    /// [`PacketBuf::data_mut`](crate::io::PacketBuf::data_mut). All or
    /// nothing, as `rte_pktmbuf_alloc_bulk`: returns `n`, or 0 when the pool
    /// has fewer free, or when `len` does not fit an mbuf's data room.
    pub fn alloc_burst(&self, out: &mut Vec<DpdkBuf>, n: usize, len: u16) -> usize {
        let n = n.min(BURST).min(out.capacity() - out.len());
        let mut mbufs = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST];
        // SAFETY: a live pool; room for `n` pointers.
        let ret =
            unsafe { sys::rte_pktmbuf_alloc_bulk(self.ptr.as_ptr(), mbufs.as_mut_ptr(), n as u32) };
        if ret != 0 {
            return 0;
        }
        let mut fits = true;
        for &m in &mbufs[..n] {
            let Some(mbuf) = NonNull::new(m) else {
                continue;
            };
            let buf = DpdkBuf { mbuf };
            // SAFETY: a freshly allocated (reset) mbuf of ours: no data yet,
            // so `append` grows the first segment from `data_off`.
            fits &= !unsafe { sys::rte_pktmbuf_append(m, len) }.is_null();
            out.push(buf);
        }
        if !fits {
            let start = out.len() - n;
            out.truncate(start); // each frees its own
            return 0;
        }
        n
    }
}

impl Ring {
    /// Enqueues packets from the front of `bufs` (as a port would receive
    /// them) until the ring is full; removes the enqueued ones from `bufs`
    /// and returns how many.
    pub fn push_burst(&self, bufs: &mut Vec<DpdkBuf>) -> usize {
        let mut done = 0;
        while done < bufs.len() {
            let n = (bufs.len() - done).min(BURST);
            let mut objs = [std::ptr::null_mut::<c_void>(); BURST];
            for (slot, b) in objs.iter_mut().zip(&bufs[done..done + n]) {
                *slot = b.mbuf.as_ptr().cast();
            }
            // SAFETY: a live ring; `n` object pointers.
            let sent = unsafe {
                sys::rte_ring_enqueue_burst(
                    self.ptr.as_ptr(),
                    objs.as_ptr(),
                    n as u32,
                    std::ptr::null_mut(),
                )
            } as usize;
            done += sent;
            if sent < n {
                break;
            }
        }
        // The ring owns the enqueued mbufs now: forget, do not free, them.
        bufs.drain(..done).for_each(std::mem::forget);
        done
    }

    /// Dequeues up to `max` packets (as a port sent them), at most [`BURST`]
    /// and within `out`'s spare capacity, appending them to `out`.
    pub fn pop_burst(&self, out: &mut Vec<DpdkBuf>, max: usize) -> usize {
        let n = max.min(BURST).min(out.capacity() - out.len());
        let mut objs = [std::ptr::null_mut::<c_void>(); BURST];
        // SAFETY: a live ring; room for `n` objects.
        let got = unsafe {
            sys::rte_ring_dequeue_burst(
                self.ptr.as_ptr(),
                objs.as_mut_ptr(),
                n as u32,
                std::ptr::null_mut(),
            )
        } as usize;
        for &o in &objs[..got] {
            if let Some(mbuf) = NonNull::new(o.cast::<sys::rte_mbuf>()) {
                out.push(DpdkBuf { mbuf });
            }
        }
        got
    }
}

impl DpdkIo {
    /// Sends packets from the front of `burst` out of port index `port`
    /// until its queue is full, removing those sent; what the queue did not
    /// take stays in `burst` for the caller to offer again (a generator
    /// waits for room rather than dropping). Returns how many were sent.
    pub fn send_retaining(&mut self, port: usize, burst: &mut Vec<DpdkBuf>) -> usize {
        let Some(id) = self.ports.get(port).map(|p| p.id) else {
            return 0;
        };
        let n = burst.len().min(BURST);
        for (slot, b) in self.scratch.iter_mut().zip(&burst[..n]) {
            *slot = b.mbuf.as_ptr();
        }
        // SAFETY: our queue of a started port; `n` mbufs we own.
        let sent = usize::from(unsafe {
            sys::rte_eth_tx_burst(id, self.queue, self.scratch.as_mut_ptr(), n as u16)
        });
        // The driver owns the sent mbufs now.
        burst.drain(..sent).for_each(std::mem::forget);
        self.stats.tx += sent as u64;
        sent
    }

    /// One iteration of DPDK's plain io-forward loop on this worker's queue
    /// of every port, as `testpmd --forward-mode=macswap` runs it: receive
    /// a burst, swap each frame's MAC addresses (the only touch of the
    /// data), send it back out of the port it came in on, free what the
    /// queue did not take. No `DpdkBuf`s, no pipeline: the floor limpet's
    /// benchmarks compare the pipeline with. Returns packets received.
    pub fn forward_macswap(&mut self) -> usize {
        let mut total = 0;
        for index in 0..self.ports.len() {
            let id = self.ports[index].id;
            // SAFETY: our queue of a started port; room for BURST mbufs.
            let n = unsafe {
                sys::rte_eth_rx_burst(id, self.queue, self.scratch.as_mut_ptr(), BURST as u16)
            };
            for &m in &self.scratch[..usize::from(n)] {
                // SAFETY: a received mbuf of ours.
                if unsafe { (*m).data_len } < 12 {
                    continue;
                }
                // SAFETY: as above.
                let d = unsafe { sys::pktmbuf_mtod(m) };
                // SAFETY: the frame's first 12 bytes (it has at least that
                // many, checked): two disjoint 6-byte MAC addresses.
                unsafe { std::ptr::swap_nonoverlapping(d, d.wrapping_add(6), 6) };
            }
            // SAFETY: our queue of a started port; the `n` mbufs received.
            let sent =
                unsafe { sys::rte_eth_tx_burst(id, self.queue, self.scratch.as_mut_ptr(), n) };
            if sent < n {
                // SAFETY: the mbufs the driver did not take are still ours.
                unsafe {
                    sys::rte_pktmbuf_free_bulk(
                        self.scratch[usize::from(sent)..usize::from(n)].as_mut_ptr(),
                        u32::from(n - sent),
                    );
                }
                self.stats.tx_full += u64::from(n - sent);
            }
            self.stats.rx += u64::from(n);
            self.stats.tx += u64::from(sent);
            total += usize::from(n);
        }
        total
    }
}
