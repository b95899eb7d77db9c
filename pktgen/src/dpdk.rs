//! pktgen over a DPDK port (cargo feature `dpdk`): the generator writes
//! each frame straight into an mbuf (no intermediate buffer, no copy of a
//! copy), and the sink reads received mbufs in place. With `net_memif` or
//! `virtio_user` ports, pktgen and limpet run as two processes on one host
//! at full speed; with `net_ring` ports, in one process (tests).
//!
//! EAL set-up (cores, vdevs) is the caller's: see `pktgen send --io dpdk`.

use std::net::IpAddr;
use std::sync::Arc;

use limpet_dataplane::io::dpdk::{DpdkBuf, DpdkIo, Mempool};
use limpet_dataplane::io::{BURST, PacketBuf, PacketIo};

use crate::arp::{ARP_FRAME_LEN, Prefix, reply_to};
use crate::parse_frame;
use crate::send::Generator;
use crate::sink::Sink;

/// Sends a [`Generator`]'s frames out of port index 0 of a [`DpdkIo`].
#[derive(Debug)]
pub struct DpdkSender {
    io: DpdkIo,
    pool: Arc<Mempool>,
    /// Frames built but not yet taken by the port: offered first next time,
    /// so a full queue delays frames rather than dropping them.
    pending: Vec<DpdkBuf>,
}

impl DpdkSender {
    pub fn new(io: DpdkIo, pool: Arc<Mempool>) -> Self {
        Self {
            io,
            pool,
            pending: Vec::with_capacity(BURST),
        }
    }

    /// Frames built and waiting for room in the port's queue.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Builds up to `n` new frames (at most [`BURST`]; none while earlier
    /// ones wait) with `generator`, each stamped with `now_ns()` if the plan
    /// stamps, and offers every waiting frame to the port. Returns (frames
    /// built, frames the port took); 0 built means the pool was empty or
    /// frames were still waiting.
    pub fn send(
        &mut self,
        generator: &mut Generator,
        n: usize,
        mut now_ns: impl FnMut() -> u64,
    ) -> (usize, usize) {
        let mut built = 0;
        if self.pending.is_empty() && n > 0 {
            let len = u16::try_from(generator.frame_len()).unwrap_or(u16::MAX);
            built = self.pool.alloc_burst(&mut self.pending, n, len);
            for buf in &mut self.pending {
                let frame = generator.next_frame(now_ns());
                let data = buf.data_mut();
                if data.len() == frame.len() {
                    data.copy_from_slice(frame);
                }
            }
        }
        let sent = if self.pending.is_empty() {
            0
        } else {
            self.io.send_retaining(0, &mut self.pending)
        };
        (built, sent)
    }

    pub fn io(&self) -> &DpdkIo {
        &self.io
    }
}

/// Answers ARP requests for the addresses a sink stands in for, from the
/// MAC address of the port each arrived on (see [`crate::arp`]).
#[derive(Debug)]
pub struct ArpResponder {
    pool: Arc<Mempool>,
    /// Per port index: its MAC address.
    macs: Vec<[u8; 6]>,
    prefixes: Vec<Prefix>,
    replies: Vec<DpdkBuf>,
    /// Requests answered.
    pub answered: u64,
}

impl ArpResponder {
    pub fn new(pool: Arc<Mempool>, macs: Vec<[u8; 6]>, prefixes: Vec<Prefix>) -> Self {
        Self {
            pool,
            macs,
            prefixes,
            replies: Vec::with_capacity(BURST),
            answered: 0,
        }
    }
}

/// Which sink backend a received frame counts for.
#[derive(Debug, Clone, Copy)]
pub enum BackendOf<'a> {
    /// The port it arrived on: port index `i` is backend `i`.
    Port,
    /// Its destination address: backend `i` is `addrs[i]` (a NAT load
    /// balancer's backends all behind one port); frames to other
    /// addresses count for backend `addrs.len()` (name it "other").
    Destination(&'a [IpAddr]),
}

/// Receives a burst from every port of `io` into `sink` at receive time
/// `now_ns`, each frame counted for the backend `by` says, answering ARP
/// requests with `arp` if given; returns how many frames arrived.
pub fn receive_burst(
    io: &mut DpdkIo,
    burst: &mut Vec<DpdkBuf>,
    sink: &mut Sink,
    now_ns: u64,
    by: BackendOf<'_>,
    mut arp: Option<&mut ArpResponder>,
) -> usize {
    let n = io.rx_burst(burst);
    let mut reply = [0u8; ARP_FRAME_LEN];
    for buf in burst.iter() {
        let port = usize::from(buf.port());
        let backend = match by {
            BackendOf::Port => port,
            BackendOf::Destination(addrs) => parse_frame(buf.data())
                .ok()
                .and_then(|f| addrs.iter().position(|&a| a == f.dst))
                .unwrap_or(addrs.len()),
        };
        sink.record(backend, buf.data(), now_ns);
        if let Some(arp) = arp.as_deref_mut()
            && let Some(&mac) = arp.macs.get(port)
            && reply_to(buf.data(), mac, &arp.prefixes, &mut reply)
            && let Some(mut out) = arp.pool.mbuf_from(&reply)
        {
            out.set_port(buf.port());
            arp.replies.push(out);
            arp.answered += 1;
        }
    }
    io.free_burst(burst);
    if let Some(arp) = arp
        && !arp.replies.is_empty()
    {
        io.tx_burst(&mut arp.replies);
    }
    n
}
