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
use limpet_dataplane::io::afxdp::{XdpAttach, XdpMode, XdpSteering};
use limpet_dataplane::pipeline::Worker;
use limpet_dataplane::wire::MacAddr;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{info, warn};

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
pub fn start(
    opts: &WorkerSetup<'_>,
    shed: Option<XdpAttach>,
    stop: &Arc<AtomicBool>,
) -> Result<Workers, BackendError> {
    let sockets = neighbour_sockets(opts, stop)?;
    // limpet sends from one MAC on every port: the first interface's,
    // unless --mac says otherwise.
    let mac = opts.mac.unwrap_or_else(|| sockets[0].mac());
    let ifaces: Vec<&str> = opts.links.iter().map(|l| l.iface.as_str()).collect();
    report_receive_placement(&ifaces, opts.cpus);
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
    if let Some(how) = shed {
        attach_shedding(&ifaces, how, opts, &mut ios);
    }
    start_workers(opts, stop, mac, ios, sockets)
}

/// Puts the shedding program on the interfaces and connects every
/// worker's rings to it; worker 0 keeps it (and its address maps). A
/// program that cannot be attached is reported, and limpet runs without
/// it: shedding protects the workers under overload, and is never worth
/// refusing to serve for.
fn attach_shedding(
    ifaces: &[&str],
    how: XdpAttach,
    opts: &WorkerSetup<'_>,
    ios: &mut [AfPacketIo],
) {
    let mut program = match XdpSteering::attach_shedding(ifaces, how) {
        Ok(p) => p,
        Err(e) => {
            warn!(
                error = %e,
                "overload shedding is off: limpet forwards as usual, but a flood above what the workers can take may starve them (--shed off silences this)"
            );
            return;
        }
    };
    program.set_linger(crate::afxdp::endpoint_linger(opts));
    for iface in ifaces {
        let xdp = program.mode(iface).map_or("none", XdpMode::name);
        info!(
            iface,
            xdp,
            "overload shedding: limpet's traffic is dropped in XDP while a worker's ring is backed up"
        );
    }
    let Some((first, rest)) = ios.split_first_mut() else {
        return;
    };
    for io in rest {
        io.shed_with(&program);
    }
    first.keep_shedding(program);
}

/// Waits for every link to come up, then opens the neighbour thread's raw
/// socket on each (ARP and neighbour discovery, which the kernel sees).
pub(crate) fn neighbour_sockets(
    opts: &WorkerSetup<'_>,
    stop: &AtomicBool,
) -> Result<Vec<RawSocket>, BackendError> {
    for link in opts.links {
        wait_for_link(&link.iface, opts.link_wait, stop)?;
    }
    let mut sockets = Vec::with_capacity(opts.links.len());
    for link in opts.links {
        let raw = RawSocket::open_neighbour(&link.iface).map_err(|source| BackendError::Io {
            iface: link.iface.clone(),
            source,
        })?;
        sockets.push(raw);
    }
    Ok(sockets)
}

/// Starts one worker thread per backend in `ios` (worker `i` on
/// `--cpus[i]` when given), the neighbour thread's wires beside them.
pub(crate) fn start_workers<I>(
    opts: &WorkerSetup<'_>,
    stop: &Arc<AtomicBool>,
    mac: MacAddr,
    ios: Vec<I>,
    sockets: Vec<RawSocket>,
) -> Result<Workers, BackendError>
where
    I: WorkerIo,
    I::Buf: Send,
{
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
fn spawn_worker<I>(
    index: usize,
    mut worker: Worker<I, MonotonicClock>,
    idle: Idle,
    cpu: Option<usize>,
    stop: Arc<AtomicBool>,
    beat: Arc<Heartbeat>,
) -> Result<JoinHandle<()>, BackendError>
where
    I: WorkerIo,
    I::Buf: Send,
{
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

/// Where the kernel does an interface's receive work: the CPUs RPS may
/// hand its packets to, and those its interrupts may run on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivePlacement {
    pub rps: BTreeSet<usize>,
    pub irq_cpus: BTreeSet<usize>,
    /// How many interrupts the interface (or its device) has.
    pub irqs: usize,
}

/// Reads `iface`'s receive placement under `root` (`/` on a host; a
/// directory laid out like it in tests): `sys/class/net/IFACE/queues/
/// rx-*/rps_cpus`, the interrupts in `proc/interrupts` named after the
/// interface or its device (`eth1-TxRx-0`, `virtio2-input.0`) and their
/// `proc/irq/N/smp_affinity_list`. What cannot be read is left out.
pub fn receive_placement(root: &Path, iface: &str) -> ReceivePlacement {
    let net = root.join("sys/class/net").join(iface);
    let mut out = ReceivePlacement::default();
    if let Ok(queues) = std::fs::read_dir(net.join("queues")) {
        for q in queues.flatten() {
            if q.file_name().to_string_lossy().starts_with("rx-")
                && let Ok(mask) = std::fs::read_to_string(q.path().join("rps_cpus"))
            {
                out.rps.extend(parse_cpu_mask(&mask));
            }
        }
    }
    let device = std::fs::read_link(net.join("device"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let names: Vec<String> = std::iter::once(iface.to_owned()).chain(device).collect();
    let interrupts = std::fs::read_to_string(root.join("proc/interrupts")).unwrap_or_default();
    for line in interrupts.lines() {
        let Some((irq, rest)) = line.trim_start().split_once(':') else {
            continue;
        };
        let Ok(irq) = irq.parse::<u32>() else {
            continue;
        };
        let named = rest.split_whitespace().any(|word| {
            names.iter().any(|n| {
                word == n
                    || word
                        .strip_prefix(n.as_str())
                        .is_some_and(|r| r.starts_with(['-', '@']))
            })
        });
        if named {
            out.irqs += 1;
            let list = root.join(format!("proc/irq/{irq}/smp_affinity_list"));
            if let Ok(list) = std::fs::read_to_string(list) {
                out.irq_cpus.extend(parse_cpu_list(&list));
            }
        }
    }
    out
}

/// A hex CPU mask as sysfs writes it (`00000000,0000000f`).
fn parse_cpu_mask(text: &str) -> Vec<usize> {
    let digits: Vec<u32> = text
        .trim()
        .chars()
        .filter(|c| *c != ',')
        .filter_map(|c| c.to_digit(16))
        .collect();
    let mut cpus = Vec::new();
    for (i, d) in digits.iter().rev().enumerate() {
        for bit in 0..4 {
            if d & (1 << bit) != 0 {
                cpus.push(i * 4 + bit);
            }
        }
    }
    cpus
}

/// A CPU list as procfs writes it (`0-3,8,10-11`).
fn parse_cpu_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
            cpus.extend(a..=b);
        }
    }
    cpus
}

/// Says at start where each interface's receive work lands relative to the
/// workers' CPUs: on a worker's CPU, the kernel's receive softirq takes that
/// CPU from the worker under overload (every system call the worker makes
/// lets it run), and forwarding collapses.
fn report_receive_placement(ifaces: &[&str], cpus: &[usize]) {
    let workers: BTreeSet<usize> = cpus.iter().copied().collect();
    for iface in ifaces {
        let p = receive_placement(Path::new("/"), iface);
        let rps = if p.rps.is_empty() {
            "off".to_owned()
        } else {
            format!("{:?}", p.rps)
        };
        let irq = if p.irqs == 0 {
            "none (a virtual interface: receive work runs where the sender runs)".to_owned()
        } else {
            format!("{} on CPUs {:?}", p.irqs, p.irq_cpus)
        };
        let shared: BTreeSet<usize> = p.rps.union(&p.irq_cpus).copied().collect();
        let overlap: Vec<usize> = shared.intersection(&workers).copied().collect();
        if p.irqs == 0 && p.rps.is_empty() {
            info!(
                iface,
                workers = ?workers,
                "receive work runs on whichever CPU sends to {iface} (no interrupts, RPS off): keep the senders off the workers' CPUs, or steer it with /sys/class/net/{iface}/queues/rx-*/rps_cpus"
            );
        } else if workers.is_empty() {
            info!(
                iface,
                rps,
                irqs = irq,
                "receive work placement; workers are not pinned (--cpus)"
            );
        } else if overlap.is_empty() {
            info!(iface, rps, irqs = irq, workers = ?workers, "receive work placement: off the workers' CPUs");
        } else {
            warn!(
                iface,
                rps,
                irqs = irq,
                workers = ?workers,
                "receive work may run on worker CPUs {overlap:?}: under overload the kernel's receive softirq takes them from the workers; steer it to other CPUs (/sys/class/net/{iface}/queues/rx-*/rps_cpus, /proc/irq/N/smp_affinity_list)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_masks_and_lists_read_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_mask("00000000,0000000f\n"), [0, 1, 2, 3]);
        assert_eq!(parse_cpu_mask("0"), Vec::<usize>::new());
        assert_eq!(parse_cpu_mask("1,00000002"), [1, 32]);
        assert_eq!(parse_cpu_list("0-2,5,7-8\n"), [0, 1, 2, 5, 7, 8]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
    }

    #[test]
    fn placement_comes_from_rps_and_the_interfaces_interrupts() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let net = r.join("sys/class/net/eth1");
        for (q, mask) in [("rx-0", "0c"), ("rx-1", "00"), ("tx-0", "ff")] {
            std::fs::create_dir_all(net.join("queues").join(q)).unwrap();
            std::fs::write(net.join("queues").join(q).join("rps_cpus"), mask).unwrap();
        }
        std::os::unix::fs::symlink("../../../virtio7", net.join("device")).unwrap();
        std::fs::create_dir_all(r.join("proc")).unwrap();
        std::fs::write(
            r.join("proc/interrupts"),
            "           CPU0       CPU1\n\
             \x20 30:    1    2   PCI-MSIX  0-edge  virtio7-input.0\n\
             \x20 31:    1    2   PCI-MSIX  1-edge  virtio7-output.0\n\
             \x20 40:    1    2   PCI-MSIX  2-edge  eth10-rx-0\n\
             \x20 41:    1    2   PCI-MSIX  3-edge  eth1-TxRx-0\n\
             NMI:    0    0   Non-maskable interrupts\n",
        )
        .unwrap();
        for (irq, list) in [(30, "1"), (31, "1"), (40, "5"), (41, "0-1")] {
            let dir = r.join(format!("proc/irq/{irq}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("smp_affinity_list"), list).unwrap();
        }
        let p = receive_placement(r, "eth1");
        assert_eq!(
            p.rps,
            BTreeSet::from([2, 3]),
            "tx queues are not receive work"
        );
        assert_eq!(p.irqs, 3, "eth10's interrupt is not eth1's");
        assert_eq!(p.irq_cpus, BTreeSet::from([0, 1]));
        assert_eq!(receive_placement(r, "eth9"), ReceivePlacement::default());
    }
}
