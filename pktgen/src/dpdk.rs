//! pktgen over a DPDK port (cargo feature `dpdk`): the generator writes
//! each frame straight into an mbuf (no intermediate buffer, no copy of a
//! copy), and the sink reads received mbufs in place. With `net_memif` or
//! `virtio_user` ports, pktgen and limpet run as two processes on one host
//! at full speed; with `net_ring` ports, in one process (tests).
//!
//! EAL set-up (cores, vdevs) is the caller's: see `pktgen send --io dpdk`.

use std::sync::Arc;

use limpet_dataplane::io::dpdk::{DpdkBuf, DpdkIo, Mempool};
use limpet_dataplane::io::{BURST, PacketBuf, PacketIo};

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

/// Receives a burst from every port of `io` into `sink` (port index `i`
/// is backend `i`), at receive time `now_ns`; returns how many.
pub fn receive_burst(
    io: &mut DpdkIo,
    burst: &mut Vec<DpdkBuf>,
    sink: &mut Sink,
    now_ns: u64,
) -> usize {
    let n = io.rx_burst(burst);
    for buf in burst.iter() {
        sink.record(usize::from(buf.port()), buf.data(), now_ns);
    }
    io.free_burst(burst);
    n
}
