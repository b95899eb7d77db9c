//! `limpet run --io afxdp:IFACE[,IFACE]`: the steering XDP program on each
//! interface, one `AF_XDP` socket per (worker, interface) on queue
//! `worker`, and a raw socket per interface for the neighbour thread (ARP
//! and neighbour discovery are passed to the kernel, where it reads them,
//! as with `AF_PACKET`).

use crate::afpacket::{neighbour_sockets, start_workers};
use crate::backend::{BackendError, WorkerIo, WorkerSetup, Workers};
use limpet_dataplane::io::afxdp::{AfXdpIo, AfXdpOptions, XdpAttach, XdpMode, XdpSteering};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tracing::info;

impl WorkerIo for AfXdpIo {
    fn idle_wait(&mut self) {
        // Errors surface through `health`.
        let _ = self.wait(Some(Duration::from_millis(1)));
    }

    fn health(&mut self) -> Result<(), String> {
        AfXdpIo::health(self).map_err(|e| e.to_string())
    }
}

/// How long an XDP program keeps steering an endpoint that left the
/// services: as long as the workers may hold a connection to it, so its
/// replies keep reaching limpet.
pub(crate) fn endpoint_linger(opts: &WorkerSetup<'_>) -> Duration {
    let t = &opts.worker.timeouts;
    Duration::from_secs(u64::from(t.tcp_established.max(t.udp)))
}

/// Attaches the program, opens every worker's sockets (all before any
/// thread starts, so a bad interface or queue count fails cleanly), and
/// starts the workers on an empty snapshot.
pub fn start(
    opts: &WorkerSetup<'_>,
    how: XdpAttach,
    stop: &Arc<AtomicBool>,
) -> Result<Workers, BackendError> {
    let wires = neighbour_sockets(opts, stop)?;
    let mac = opts.mac.unwrap_or_else(|| wires[0].mac());
    let ifaces: Vec<&str> = opts.links.iter().map(|l| l.iface.as_str()).collect();
    let afxdp = |source| BackendError::AfXdp {
        iface: ifaces.join(","),
        source,
    };
    let mut steering = XdpSteering::attach_with(&ifaces, how).map_err(afxdp)?;
    steering.set_linger(endpoint_linger(opts));
    let mut ios = Vec::with_capacity(opts.workers);
    for queue in 0..opts.workers {
        let io = AfXdpIo::open(
            &ifaces,
            queue as u32,
            &AfXdpOptions::default(),
            &mut steering,
        )
        .map_err(afxdp)?;
        ios.push(io);
    }
    for (port, iface) in ifaces.iter().enumerate() {
        let mode = steering.mode(iface).map_or("generic", XdpMode::name);
        let zero_copy = ios[0].zero_copy()[port];
        info!(
            iface,
            xdp = mode,
            sockets = if zero_copy { "zero-copy" } else { "copy" },
            queues = steering.queues(iface).unwrap_or(1),
            workers = opts.workers,
            "AF_XDP"
        );
    }
    // Worker 0 keeps the program: it writes the address maps as snapshots
    // change, and the program leaves the interfaces when it stops.
    ios[0].keep_steering(steering);
    start_workers(opts, stop, mac, ios, wires)
}
