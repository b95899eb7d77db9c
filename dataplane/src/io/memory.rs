//! The in-memory backend: a pool of fixed-size buffers and two queues, for
//! tests, benchmarks and fixtures. Packets move between the queues and the
//! worker as owned buffers (a pointer and a length), never copied, and every
//! buffer is allocated up front.

use super::{PacketBuf, PacketIo};
use std::collections::VecDeque;

/// Room in one buffer: a full Ethernet frame with VLAN tag, after
/// [`HEADROOM`].
pub const BUF_SIZE: usize = 2048;

/// Bytes kept free before each received frame, as DPDK's mbufs keep them
/// (`RTE_PKTMBUF_HEADROOM`), for [`PacketBuf::prepend`].
pub const HEADROOM: usize = 128;

/// One pooled packet buffer.
#[derive(Debug)]
pub struct MemoryPacket {
    buf: Box<[u8; BUF_SIZE]>,
    /// Where the frame starts in `buf`.
    head: u16,
    len: u16,
    port: u16,
    /// See [`PacketBuf::checksum_partial`] ([`MemoryIo::inject_partial`]):
    /// 0 or 1. Not a `bool`: its invalid values would become the niche of
    /// `Option<MemoryPacket>` in place of the `Box`'s null, and moving
    /// buffers between the queues went through it (hot-1k: 12 ns a packet
    /// more, all in `rx_burst` and `recycle_sent`).
    partial: u8,
}

impl MemoryPacket {
    fn empty() -> Self {
        Self {
            buf: Box::new([0; BUF_SIZE]),
            head: HEADROOM as u16,
            len: 0,
            port: 0,
            partial: 0,
        }
    }

    #[inline(always)]
    fn range(&self) -> std::ops::Range<usize> {
        let head = usize::from(self.head);
        head..head + usize::from(self.len)
    }
}

impl PacketBuf for MemoryPacket {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        &self.buf[self.range()]
    }

    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        let range = self.range();
        &mut self.buf[range]
    }

    #[inline(always)]
    fn port(&self) -> u16 {
        self.port
    }

    #[inline(always)]
    fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    #[inline]
    fn prepend(&mut self, n: usize) -> bool {
        let Ok(n) = u16::try_from(n) else {
            return false;
        };
        if n > self.head {
            return false;
        }
        self.head -= n;
        self.len += n;
        true
    }

    #[inline]
    fn truncate(&mut self, len: usize) {
        if len < usize::from(self.len) {
            self.len = len as u16;
        }
    }

    #[inline(always)]
    fn checksum_partial(&self) -> bool {
        self.partial != 0
    }
}

/// An in-memory NIC: frames injected with [`inject`](Self::inject) are
/// received by the worker; frames it sends collect in the TX queue.
#[derive(Debug)]
pub struct MemoryIo {
    pool: Vec<MemoryPacket>,
    rx: VecDeque<MemoryPacket>,
    tx: VecDeque<MemoryPacket>,
    /// Frames the worker sent, over the backend's life.
    pub sent: u64,
    /// Frames the worker freed unsent.
    pub freed: u64,
    /// Injections refused because the pool was empty.
    pub pool_empty: u64,
    /// What [`PacketIo::max_frame`] says (tests of oversized frames).
    pub max_frame: usize,
    /// What [`PacketIo::checksum_state_unknown`] says (tests of a backend
    /// that cannot flag partial checksums).
    pub checksum_state_unknown: bool,
}

impl MemoryIo {
    /// A backend with `buffers` preallocated buffers.
    pub fn new(buffers: usize) -> Self {
        Self {
            pool: (0..buffers).map(|_| MemoryPacket::empty()).collect(),
            rx: VecDeque::with_capacity(buffers),
            tx: VecDeque::with_capacity(buffers),
            sent: 0,
            freed: 0,
            pool_empty: 0,
            max_frame: BUF_SIZE - HEADROOM,
            checksum_state_unknown: false,
        }
    }

    /// Queues a copy of `frame` for reception on `port`. Returns false (and
    /// counts it) when no buffer is free or the frame is too long.
    pub fn inject(&mut self, frame: &[u8], port: u16) -> bool {
        if frame.len() > BUF_SIZE - HEADROOM {
            return false;
        }
        let Some(mut p) = self.pool.pop() else {
            self.pool_empty += 1;
            return false;
        };
        p.head = HEADROOM as u16;
        p.buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        p.len = frame.len() as u16;
        p.port = port;
        p.partial = 0;
        self.rx.push_back(p);
        true
    }

    /// [`inject`](Self::inject) a frame whose TCP/UDP checksum its sender
    /// left to offload, as an `AF_PACKET` ring flags it.
    pub fn inject_partial(&mut self, frame: &[u8], port: u16) -> bool {
        let queued = self.inject(frame, port);
        if let Some(p) = self.rx.back_mut().filter(|_| queued) {
            p.partial = 1;
        }
        queued
    }

    /// Takes the oldest sent frame as `(port, bytes)`, recycling its buffer.
    pub fn take_sent(&mut self) -> Option<(u16, Vec<u8>)> {
        let p = self.tx.pop_front()?;
        let out = (p.port, p.data().to_vec());
        self.pool.push(p);
        Some(out)
    }

    /// Recycles every sent frame without looking at it (benchmarks).
    pub fn recycle_sent(&mut self) -> usize {
        let n = self.tx.len();
        self.pool.extend(self.tx.drain(..));
        n
    }

    /// Moves every sent frame back to the receive queue, unchanged: a
    /// benchmark loop that replays the same packets without copying them.
    pub fn loop_back(&mut self) -> usize {
        let n = self.tx.len();
        // What limpet sent has its checksums complete.
        self.rx.extend(self.tx.drain(..).map(|mut p| {
            p.partial = 0;
            p
        }));
        n
    }

    pub fn pending_rx(&self) -> usize {
        self.rx.len()
    }
}

impl PacketIo for MemoryIo {
    type Buf = MemoryPacket;

    #[inline]
    fn rx_burst(&mut self, burst: &mut Vec<MemoryPacket>) -> usize {
        let room = burst.capacity() - burst.len();
        let n = room.min(self.rx.len());
        burst.extend(self.rx.drain(..n));
        n
    }

    #[inline]
    fn tx_burst(&mut self, burst: &mut Vec<MemoryPacket>) -> usize {
        let n = burst.len();
        self.sent += n as u64;
        self.tx.extend(burst.drain(..));
        n
    }

    fn max_frame(&self) -> usize {
        self.max_frame
    }

    fn checksum_state_unknown(&self) -> bool {
        self.checksum_state_unknown
    }

    #[inline]
    fn free_burst(&mut self, burst: &mut Vec<MemoryPacket>) {
        self.freed += burst.len() as u64;
        self.pool.append(burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_without_growing() {
        let mut io = MemoryIo::new(4);
        for i in 0..4u8 {
            assert!(io.inject(&[i; 60], 1));
        }
        assert!(!io.inject(&[9; 60], 1));
        assert_eq!(io.pool_empty, 1);
        let mut burst = Vec::with_capacity(3);
        assert_eq!(io.rx_burst(&mut burst), 3);
        assert_eq!(burst[0].data(), &[0; 60]);
        let first = burst.remove(0);
        let mut drop = Vec::with_capacity(3);
        drop.push(first);
        io.free_burst(&mut drop);
        burst[0].set_port(2);
        assert_eq!(io.tx_burst(&mut burst), 2);
        assert_eq!(burst.capacity(), 3);
        assert_eq!(io.take_sent(), Some((2, vec![1; 60])));
        assert_eq!(io.take_sent(), Some((1, vec![2; 60])));
        assert_eq!(io.take_sent(), None);
        assert_eq!(io.pending_rx(), 1);
    }

    #[test]
    fn prepend_uses_the_headroom_and_truncate_shortens() {
        let mut io = MemoryIo::new(1);
        assert!(io.inject(&[7; 60], 0));
        let mut burst = Vec::with_capacity(1);
        io.rx_burst(&mut burst);
        let p = &mut burst[0];
        assert!(p.prepend(28));
        assert_eq!(p.data().len(), 88);
        assert_eq!(&p.data()[28..], &[7; 60]);
        assert!(!p.prepend(HEADROOM));
        assert_eq!(p.data().len(), 88);
        p.truncate(30);
        assert_eq!(p.data().len(), 30);
        p.truncate(40);
        assert_eq!(p.data().len(), 30);
        io.free_burst(&mut burst);
        // A recycled buffer starts at the headroom again.
        assert!(io.inject(&[1; 60], 0));
        io.rx_burst(&mut burst);
        assert!(burst[0].prepend(HEADROOM));
    }
}
