//! `limpet run --io afpacket:IFACE[,IFACE]`: one set of `AF_PACKET` rings
//! per worker, joined in a fanout group steered by client address, and a
//! raw socket per interface for the neighbour thread.

use crate::backend::{
    BackendError, Heartbeat, Idle, NeighbourWire, WorkerIo, WorkerSetup, Workers, worker_loop,
};
use limpet_dataplane::clock::MonotonicClock;
use limpet_dataplane::io::afpacket::{
    AfPacketError, AfPacketIo, AfPacketOptions, Fanout, FanoutMode, RawSocket, link_state,
};
use limpet_dataplane::pipeline::Worker;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::info;

impl NeighbourWire for RawSocket {
    fn send(&self, frame: &[u8]) -> Result<(), String> {
        RawSocket::send(self, frame).map_err(|e| e.to_string())
    }

    fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, String> {
        RawSocket::recv(self, buf, timeout).map_err(|e| e.to_string())
    }
}

impl WorkerIo for AfPacketIo {
    fn idle_wait(&mut self) {
        // Errors surface through `health`.
        let _ = self.wait(Some(Duration::from_millis(1)));
    }

    fn health(&mut self) -> Result<(), String> {
        AfPacketIo::health(self).map_err(|e| e.to_string())
    }
}

/// Opens one set of sockets per worker (all of them before any thread
/// starts, so a bad interface fails cleanly) and starts the workers on an
/// empty snapshot.
pub fn start(opts: &WorkerSetup<'_>, stop: &Arc<AtomicBool>) -> Result<Workers, BackendError> {
    let mut sockets = Vec::with_capacity(opts.links.len());
    for link in opts.links {
        wait_for_link(&link.iface, opts.link_wait, stop)?;
    }
    for link in opts.links {
        let raw = RawSocket::open_neighbour(&link.iface).map_err(|source| BackendError::Io {
            iface: link.iface.clone(),
            source,
        })?;
        sockets.push(raw);
    }
    // limpet sends from one MAC on every port: the first interface's,
    // unless --mac says otherwise.
    let mac = opts.mac.unwrap_or_else(|| sockets[0].mac());
    let ifaces: Vec<&str> = opts.links.iter().map(|l| l.iface.as_str()).collect();
    // Several workers share each interface in a fanout group steered by
    // client address: a connection's packets and its replies (which come
    // back from the backend) then reach the same worker, which holds the
    // connection's reverse translation. Each snapshot swap re-installs the
    // steering program with the current service addresses.
    let fanout = (opts.workers > 1).then(|| Fanout {
        group: std::process::id() as u16,
        mode: FanoutMode::Client,
    });
    let mut ios = Vec::with_capacity(opts.workers);
    for _ in 0..opts.workers {
        let io = AfPacketIo::open(
            &ifaces,
            &AfPacketOptions {
                fanout,
                ..AfPacketOptions::default()
            },
        )
        .map_err(|source| BackendError::Io {
            iface: ifaces.join(","),
            source,
        })?;
        ios.push(io);
    }
    let (mut workers, retired) = Workers::new(mac);
    for (i, io) in ios.into_iter().enumerate() {
        let worker = workers.add(io, opts.worker, &retired)?;
        let handle = spawn_worker(
            i,
            worker,
            opts.idle,
            opts.cpus.get(i).copied(),
            Arc::clone(stop),
            Arc::clone(&workers.beats[i]),
        )?;
        workers.joins.push(Box::new(move || {
            let _ = handle.join();
        }));
    }
    workers.wires = sockets
        .into_iter()
        .map(|s| Box::new(s) as Box<dyn NeighbourWire>)
        .collect();
    Ok(workers)
}

/// Waits up to `wait` for `iface` to be up with carrier: a link that comes
/// up a moment after limpet (at boot, in a fresh namespace) is not an
/// error, a missing interface is at once, and a stop ends the wait.
fn wait_for_link(iface: &str, wait: Duration, stop: &AtomicBool) -> Result<(), BackendError> {
    let deadline = Instant::now() + wait;
    let mut logged = false;
    loop {
        match link_state(iface) {
            Ok(()) => {
                if logged {
                    info!(iface, "link up");
                }
                return Ok(());
            }
            Err(e @ (AfPacketError::LinkDown { .. } | AfPacketError::NoCarrier { .. }))
                if Instant::now() < deadline && !stop.load(Ordering::Relaxed) =>
            {
                if !logged {
                    info!(
                        iface,
                        wait_s = wait.as_secs_f64(),
                        "waiting for the link: {e}"
                    );
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(source) => {
                return Err(BackendError::Io {
                    iface: iface.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Starts worker `index` on its own thread, pinned to `cpu` when given;
/// returns once the thread is running there (or could not be pinned).
fn spawn_worker(
    index: usize,
    mut worker: Worker<AfPacketIo, MonotonicClock>,
    idle: Idle,
    cpu: Option<usize>,
    stop: Arc<AtomicBool>,
    beat: Arc<Heartbeat>,
) -> Result<JoinHandle<()>, BackendError> {
    let (pinned_tx, pinned_rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(format!("limpet-worker-{index}"))
        .spawn(move || {
            let pinned = cpu.map_or(Ok(()), limpet_dataplane::io::pin_current_thread);
            let failed = pinned.is_err();
            let _ = pinned_tx.send(pinned);
            if !failed {
                worker_loop(index, &mut worker, idle, &stop, &beat);
            }
        })
        .map_err(|e| BackendError::Other(format!("starting worker {index}: {e}")))?;
    match pinned_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(BackendError::Other(format!(
            "pinning worker {index} to CPU {}: {e}",
            cpu.unwrap_or_default()
        ))),
        Err(_) => Err(BackendError::Other(format!("worker {index} died starting"))),
    }
}
