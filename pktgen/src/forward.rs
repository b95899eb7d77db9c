//! The floor beside every load-balancer figure: receive a frame, pick a
//! backend by the client's address, rewrite the two MAC addresses and send
//! the frame on. No parsing past the source address, no tables, no NAT:
//! what the same packet I/O costs with next to nothing done in between.
//!
//! Busy time is accounted the way limpet's workers account it (see
//! `limpet_dataplane::stats::WorkerStats::busy_ns`): polls that received
//! packets, one clock read each, back to back busy polls counted end to end.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use limpet_dataplane::io::{BURST, PacketBuf, PacketIo};

/// Shortest frame the forwarder handles: Ethernet and an IPv4 header.
const MIN_FRAME: usize = 14 + 20;

/// What a forwarder has done, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Frames that were not IPv4 or IPv6, or too short for their header.
    pub dropped: u64,
    /// Polls that received at least one packet.
    pub busy_polls: u64,
    /// Nanoseconds spent in those polls.
    pub busy_ns: u64,
}

impl ForwardStats {
    /// Mean busy nanoseconds per received packet.
    pub fn busy_ns_per_packet(&self) -> f64 {
        if self.rx_packets == 0 {
            0.0
        } else {
            self.busy_ns as f64 / self.rx_packets as f64
        }
    }

    /// Mean packets per non-empty burst.
    pub fn packets_per_burst(&self) -> f64 {
        if self.busy_polls == 0 {
            0.0
        } else {
            self.rx_packets as f64 / self.busy_polls as f64
        }
    }
}

/// A MAC-rewriting forwarder to a fixed set of backends.
#[derive(Debug)]
pub struct Forwarder<B> {
    src_mac: [u8; 6],
    backends: Vec<[u8; 6]>,
    rx: Vec<B>,
    tx: Vec<B>,
    refused: Vec<B>,
    busy_since: Option<Instant>,
    pub stats: ForwardStats,
}

impl<B: PacketBuf> Forwarder<B> {
    /// Forwards from `src_mac` to `backends` (at least one).
    pub fn new(src_mac: [u8; 6], backends: Vec<[u8; 6]>) -> Self {
        assert!(!backends.is_empty(), "a forwarder needs a backend");
        Self {
            src_mac,
            backends,
            rx: Vec::with_capacity(BURST),
            tx: Vec::with_capacity(BURST),
            refused: Vec::with_capacity(BURST),
            busy_since: None,
            stats: ForwardStats::default(),
        }
    }

    /// One receive, rewrite, send round. Returns how many packets came in.
    pub fn poll<I: PacketIo<Buf = B>>(&mut self, io: &mut I) -> usize {
        let n = io.rx_burst(&mut self.rx);
        if n == 0 {
            self.busy_since = None;
            return 0;
        }
        let started = self.busy_since.unwrap_or_else(Instant::now);
        for mut buf in self.rx.drain(..) {
            match pick(&self.backends, buf.data()) {
                Some(i) => {
                    let frame = buf.data_mut();
                    frame[..6].copy_from_slice(&self.backends[i]);
                    frame[6..12].copy_from_slice(&self.src_mac);
                    self.tx.push(buf);
                }
                None => self.refused.push(buf),
            }
        }
        self.stats.dropped += self.refused.len() as u64;
        io.free_burst(&mut self.refused);
        self.stats.tx_packets += io.tx_burst(&mut self.tx) as u64;
        let ended = Instant::now();
        self.stats.rx_packets += n as u64;
        self.stats.busy_polls += 1;
        self.stats.busy_ns += ended.saturating_duration_since(started).as_nanos() as u64;
        self.busy_since = Some(ended);
        n
    }
}

/// The backend for `frame`'s client (source) address, the same for every
/// frame of that client; `None` for frames that are not IPv4 or IPv6.
pub fn pick(backends: &[[u8; 6]], frame: &[u8]) -> Option<usize> {
    if frame.len() < MIN_FRAME {
        return None;
    }
    let low = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => &frame[26..30],
        0x86dd if frame.len() >= 14 + 40 => &frame[34..38],
        _ => return None,
    };
    let word = u32::from_be_bytes([low[0], low[1], low[2], low[3]]);
    // Fibonacci hashing spreads consecutive client addresses evenly.
    let h = u64::from(word.wrapping_mul(0x9E37_79B9));
    Some(((h * backends.len() as u64) >> 32) as usize)
}
