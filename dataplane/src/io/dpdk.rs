//! The DPDK backend (cargo feature `dpdk`): poll-mode drivers through
//! limpet's own binding, `limpet-dpdk-sys`, to the system DPDK (>= 21.11).
//!
//! # Pieces
//!
//! - [`Eal`]: the Environment Abstraction Layer, started once per process
//!   from limpet's own settings ([`EalConfig`]: cores, memory, `--no-huge`,
//!   `--vdev`, a PCI allow list) and cleaned up when the last handle goes.
//!   Worker lcores are pinned by EAL to their cores; [`Eal::launch`] runs a
//!   worker there.
//! - [`Mempool`]: mbuf pools, one per NUMA socket ([`Eal::pools_per_socket`]).
//! - [`Port`]: an ethdev configured with one RX/TX queue pair per worker,
//!   started, and stopped and closed when dropped (by then every worker's
//!   [`DpdkIo`] is gone, so nothing polls it): the driver frees the mbufs
//!   still in its rings, then the pools are freed, then EAL is cleaned up.
//! - [`DpdkIo`]: one worker's [`PacketIo`]: its queue pair on each port.
//!   `rx_burst` hands the received mbufs to the pipeline in place (a
//!   [`DpdkBuf`] is the `rte_mbuf` pointer; `data()` is the mbuf's data
//!   room from `data_off`, `data_len` long): no copy either way.
//!
//! # RSS and where a connection's packets land
//!
//! With more than one worker, a port spreads received packets over its
//! queues with RSS, hashing the IP address pair only (`RTE_ETH_RSS_IP`: no
//! ports, so fragments and ICMP errors land with their flow) under a
//! *symmetric* Toeplitz key: the 16-bit pattern `0x6d5a` repeated
//! (Woo and Park, "Scalable TCP Session Monitoring with Symmetric RSS"),
//! which makes `hash(a, b) == hash(b, a)`. So a packet and its exact
//! reverse reach the same worker. That covers DSR (the client talks to the
//! VIP and only the client's packets come through limpet) and every flow
//! whose reply swaps the pair.
//!
//! **`nat` replies.** A NAT reply does not swap the pair: the client sent
//! `client -> vip`, the backend answers `backend -> client`. What both
//! directions share is the *client* address, so that is what has to be
//! hashed (the same answer the `AF_PACKET` backend's client fanout gives).
//! [`RssMode::ClientIsSource`] and [`RssMode::ClientIsDestination`] ask the
//! NIC for `RTE_ETH_RSS_L3_SRC_ONLY` / `RTE_ETH_RSS_L3_DST_ONLY`: in a
//! two-armed set-up the client-facing port hashes the source address and
//! the backend-facing port the destination, both the client, through the
//! same key and the same indirection table (programmed identically on every
//! port), so both directions of a connection meet at one queue index, that
//! is one worker. A port that cannot hash one address alone is refused
//! with [`DpdkError::Rss`] rather than silently splitting connections.
//!
//! **Software steering.** A one-armed `nat` port (clients and backends on
//! one wire) cannot be told which address is the client's by a hash type:
//! that depends on whether the destination is a frontend. Nor can ports
//! without RSS (`net_ring`, `net_af_packet`, `net_memif`). There the port
//! runs with [`RssMode::Off`] and [`DpdkIo::with_steering`] fixes things up
//! in software: each worker, after receiving a burst, computes the owner of
//! every IP packet from its client address with the very hash the
//! `AF_PACKET` backend's fanout program uses ([`super::steer`]), keeps its
//! own, and hands the others to their owner over a [`SteeringMesh`]: one
//! single-producer/single-consumer `rte_ring` per ordered pair of workers,
//! so no ring has two writers or two readers and nothing locks; the mbuf
//! pointers move, the packets do not. Each worker drains the rings aimed at
//! it before polling its own queues, so its burst mixes both. A full ring
//! drops and counts (`steer_full`) rather than blocking. Frames with no
//! client (ARP, ND) stay on the worker that received them and go to the
//! neighbour thread through [`SlowPath`].
//!
//! # Offloads
//!
//! The pipeline rewrites headers in place with incremental checksum
//! updates and checks the IPv4 header checksum itself, so checksum
//! offloads would buy nothing and VLAN stripping would hide the tag it
//! keeps: both stay off. `RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE` is used where
//! the port has it and every mbuf comes from one pool (one socket): limpet
//! never shares or chains mbufs. Frames longer than one mbuf (2048 bytes
//! of data room) are not received (no scatter); jumbo frames need a larger
//! data room.
//!
//! # Threads
//!
//! A [`DpdkBuf`] may be freed from any thread (DPDK's mempools are
//! multi-producer/multi-consumer; threads that are not EAL lcores simply
//! bypass the per-lcore cache). A [`DpdkIo`] is `Send` so it can be built
//! on the main thread and moved to its worker; each queue is polled by that
//! one worker only, which DPDK requires.

mod burst;

use super::{BURST, PacketBuf, PacketIo};
use limpet_dpdk_sys as sys;
use std::ffi::{CStr, CString, c_char, c_void};
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What went wrong starting or driving DPDK.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error("EAL is already initialised in this process (it can start only once)")]
    AlreadyInitialised,
    #[error("rte_eal_init({args:?}) failed: {reason} (rte_errno {errno})")]
    EalInit {
        args: Vec<String>,
        errno: i32,
        reason: String,
    },
    #[error("{call}: {reason} (error {code})")]
    Call {
        call: String,
        code: i32,
        reason: String,
    },
    #[error("no DPDK port named {0:?}")]
    NoSuchPort(String),
    #[error("port {port}: {what}")]
    Port { port: u16, what: String },
    #[error("port {port}: RSS: {what}")]
    Rss { port: u16, what: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// The reason for DPDK error `code` (an errno or a negative return value).
fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local
    // string, valid until the next call on this thread.
    let p = unsafe { sys::rte_strerror(code.abs()) };
    if p.is_null() {
        return format!("error {code}");
    }
    // SAFETY: non-null, NUL-terminated (see above); copied at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Turns a DPDK return value (`< 0`: `-errno`) into a `Result`.
fn check(call: impl Into<String>, ret: i32) -> Result<u32, DpdkError> {
    u32::try_from(ret).map_err(|_| DpdkError::Call {
        call: call.into(),
        code: ret,
        reason: strerror(ret),
    })
}

fn cstring(s: &str) -> Result<CString, DpdkError> {
    CString::new(s).map_err(|_| DpdkError::Invalid(format!("{s:?} contains NUL")))
}

/// limpet's EAL settings; [`EalConfig::args`] turns them into EAL's
/// command line.
#[derive(Debug, Clone, Default)]
pub struct EalConfig {
    /// The lcores to use (`-l`, e.g. `"0-3"` or `"2,4,6"`); the first is
    /// the main lcore, the others run workers. `None`: every core.
    pub cores: Option<String>,
    /// Memory to preallocate, in MiB (`-m`). Needed with `no_huge`.
    pub memory_mb: Option<u32>,
    /// Run on ordinary pages (`--no-huge`): tests, CI, small hosts.
    pub no_huge: bool,
    /// Do not scan the PCI bus (`--no-pci`): virtual devices only.
    pub no_pci: bool,
    /// PCI devices to use, by address (`-a 0000:3b:00.0`); empty: all that
    /// are bound to a DPDK-capable driver (unless `no_pci`).
    pub pci_allow: Vec<String>,
    /// Virtual devices (`--vdev`), e.g. `net_null0`, `net_ring0`,
    /// `net_af_packet0,iface=eth0`, `net_af_xdp0,iface=eth0`,
    /// `net_memif0,role=server`, `virtio_user0,path=/dev/vhost-net`.
    pub vdevs: Vec<String>,
    /// Prefix of EAL's runtime files (`--file-prefix`), so several limpets
    /// (or tests) can run side by side.
    pub file_prefix: Option<String>,
    /// Keep no shared runtime files at all (`--no-shconf`).
    pub no_shconf: bool,
    /// EAL log level (`--log-level`), e.g. `"warning"` or `"lib.eal:debug"`.
    pub log_level: Option<String>,
    /// Anything else, appended as given.
    pub extra: Vec<String>,
}

impl EalConfig {
    /// Settings for tests and CI: no hugepages, no PCI, 256 MiB, one core
    /// (or `cores`), no runtime files, the given virtual devices.
    pub fn virtual_only(cores: &str, vdevs: &[&str]) -> Self {
        Self {
            cores: Some(cores.to_owned()),
            memory_mb: Some(256),
            no_huge: true,
            no_pci: true,
            vdevs: vdevs.iter().map(|&v| v.to_owned()).collect(),
            no_shconf: true,
            log_level: Some("warning".to_owned()),
            ..Self::default()
        }
    }

    /// EAL's argument vector, program name first.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["limpet".to_owned()];
        if let Some(c) = &self.cores {
            a.extend(["-l".to_owned(), c.clone()]);
        }
        if let Some(m) = self.memory_mb {
            a.extend(["-m".to_owned(), m.to_string()]);
        }
        if self.no_huge {
            a.push("--no-huge".to_owned());
        }
        if self.no_pci {
            a.push("--no-pci".to_owned());
        }
        for p in &self.pci_allow {
            a.extend(["-a".to_owned(), p.clone()]);
        }
        for v in &self.vdevs {
            a.push(format!("--vdev={v}"));
        }
        if let Some(p) = &self.file_prefix {
            a.push(format!("--file-prefix={p}"));
        }
        if self.no_shconf {
            a.push("--no-shconf".to_owned());
        }
        if let Some(l) = &self.log_level {
            a.push(format!("--log-level={l}"));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

static EAL_STARTED: AtomicBool = AtomicBool::new(false);

/// EAL, up. Cleaned up (`rte_eal_cleanup`) when the last handle, including
/// those every pool and port keeps, is dropped. EAL starts once per
/// process: a second [`Eal::init`] fails, even after cleanup.
#[derive(Debug)]
struct EalInner {
    args: Vec<String>,
}

impl Drop for EalInner {
    fn drop(&mut self) {
        // SAFETY: every pool and port holds an `Arc<EalInner>`, so none is
        // left; workers launched on lcores were waited for (`Eal::wait`
        // before the handle could be dropped: `launch` borrows it).
        let ret = unsafe { sys::rte_eal_cleanup() };
        if ret < 0 {
            eprintln!("rte_eal_cleanup: {}", strerror(ret));
        }
    }
}

/// A handle on the running EAL.
#[derive(Debug, Clone)]
pub struct Eal {
    inner: Arc<EalInner>,
}

impl Eal {
    /// Starts EAL with `config`.
    pub fn init(config: &EalConfig) -> Result<Self, DpdkError> {
        if EAL_STARTED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::AlreadyInitialised);
        }
        let args = config.args();
        let owned: Vec<CString> = args.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
        // EAL keeps pointers into argv (and may permute it): leak both, once
        // per process.
        let mut argv: Vec<*mut c_char> = owned.into_iter().map(CString::into_raw).collect();
        let argc = i32::try_from(argv.len())
            .map_err(|_| DpdkError::Invalid("too many EAL arguments".into()))?;
        let argv_ptr = argv.as_mut_ptr();
        std::mem::forget(argv);
        // SAFETY: argv holds argc valid NUL-terminated strings, leaked, so
        // they outlive EAL; this is the process's only call (checked above).
        let ret = unsafe { sys::rte_eal_init(argc, argv_ptr) };
        if ret < 0 {
            let errno = sys::rte_errno();
            return Err(DpdkError::EalInit {
                args,
                errno,
                reason: strerror(errno),
            });
        }
        Ok(Self {
            inner: Arc::new(EalInner { args }),
        })
    }

    /// The arguments EAL was started with.
    pub fn args(&self) -> &[String] {
        &self.inner.args
    }

    /// Ports EAL found (PCI devices and virtual devices).
    pub fn port_count(&self) -> u16 {
        // SAFETY: EAL is up.
        unsafe { sys::rte_eth_dev_count_avail() }
    }

    /// The port id of the device named `name` (`net_ring0`, `0000:3b:00.0`).
    pub fn port_by_name(&self, name: &str) -> Result<u16, DpdkError> {
        let c = cstring(name)?;
        let mut id = 0u16;
        // SAFETY: a valid C string and out-pointer.
        let ret = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &raw mut id) };
        if ret < 0 {
            return Err(DpdkError::NoSuchPort(name.to_owned()));
        }
        Ok(id)
    }

    /// Whether port `id` can spread packets over several queues the way
    /// `mode` asks (false for [`RssMode::Off`], which needs nothing).
    pub fn supports_rss(&self, id: u16, mode: RssMode) -> Result<bool, DpdkError> {
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: any port id may be asked about; a valid out-pointer.
        check("rte_eth_dev_info_get", unsafe {
            sys::rte_eth_dev_info_get(id, &raw mut info)
        })?;
        let config = PortConfig {
            queues: 2,
            rss: mode,
            ..PortConfig::default()
        };
        Ok(mode != RssMode::Off && rss_types(id, &config, &info).is_ok())
    }

    /// The NUMA socket of the calling thread's lcore, or of the first core.
    pub fn socket_count(&self) -> u32 {
        // SAFETY: EAL is up.
        unsafe { sys::rte_socket_count() }.max(1)
    }

    /// The worker lcores (every enabled lcore but the main one), in order.
    pub fn worker_lcores(&self) -> Vec<u32> {
        let mut out = Vec::new();
        // SAFETY: EAL is up; -1 asks for the first lcore.
        let mut lcore = unsafe { sys::rte_get_next_lcore(u32::MAX, 1, 0) };
        while lcore < sys::RTE_MAX_LCORE {
            out.push(lcore);
            // SAFETY: as above, continuing from `lcore`.
            lcore = unsafe { sys::rte_get_next_lcore(lcore, 1, 0) };
        }
        out
    }

    /// One mbuf pool per NUMA socket EAL knows of, each of `mbufs` mbufs
    /// with a per-lcore cache of `cache` and the default 2048-byte data
    /// room. Index `i` is socket `i`'s pool (by socket index).
    pub fn pools_per_socket(&self, mbufs: u32, cache: u32) -> Result<Vec<Arc<Mempool>>, DpdkError> {
        (0..self.socket_count())
            .map(|i| {
                // SAFETY: i < rte_socket_count().
                let socket = unsafe { sys::rte_socket_id_by_idx(i) };
                Mempool::new(self, &format!("limpet_mbuf_s{i}"), mbufs, cache, socket).map(Arc::new)
            })
            .collect()
    }

    /// Creates an ethdev over rings (the `net_ring` driver's constructor):
    /// what is enqueued on `rx[q]` is received on queue `q`, and what is
    /// sent on queue `q` is enqueued on `tx[q]`. For tests, and as a
    /// software port between processes or threads. The rings must outlive
    /// the port (drop the [`Port`] first).
    pub fn port_from_rings(
        &self,
        name: &str,
        rx: &[&Ring],
        tx: &[&Ring],
    ) -> Result<u16, DpdkError> {
        let c = cstring(name)?;
        let rxp: Vec<*mut sys::rte_ring> = rx.iter().map(|r| r.ptr.as_ptr()).collect();
        let txp: Vec<*mut sys::rte_ring> = tx.iter().map(|r| r.ptr.as_ptr()).collect();
        // SAFETY: valid name and ring arrays of the lengths given; the rings
        // outlive the port as long as the caller keeps them (documented).
        let ret = unsafe {
            sys::rte_eth_from_rings(
                c.as_ptr(),
                rxp.as_ptr(),
                rxp.len() as u32,
                txp.as_ptr(),
                txp.len() as u32,
                0,
            )
        };
        check(format!("rte_eth_from_rings({name})"), ret).map(|p| p as u16)
    }

    /// Runs `f` on worker lcore `lcore` (pinned there by EAL). Wait for it
    /// with [`Eal::wait`].
    pub fn launch<F: FnOnce() + Send + 'static>(&self, lcore: u32, f: F) -> Result<(), DpdkError> {
        unsafe extern "C" fn trampoline(arg: *mut c_void) -> i32 {
            // SAFETY: `arg` is the `Box<Box<dyn FnOnce>>` leaked by `launch`,
            // taken back exactly once, here.
            let f = unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce() + Send>>()) };
            // A panic must not unwind into C: report it through `wait`.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(()) => 0,
                Err(_) => -1,
            }
        }
        let boxed: Box<Box<dyn FnOnce() + Send>> = Box::new(Box::new(f));
        let arg = Box::into_raw(boxed).cast::<c_void>();
        // SAFETY: a valid function and argument; EAL runs it once on
        // `lcore` or fails without running it.
        let ret = unsafe { sys::rte_eal_remote_launch(Some(trampoline), arg, lcore) };
        if ret < 0 {
            // SAFETY: not launched, so the box is still ours.
            drop(unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce() + Send>>()) });
        }
        check(format!("rte_eal_remote_launch(lcore {lcore})"), ret).map(drop)
    }

    /// Waits for the function launched on `lcore` to return; an error if
    /// it panicked.
    pub fn wait(&self, lcore: u32) -> Result<(), DpdkError> {
        // SAFETY: EAL is up; waiting on an idle lcore returns at once.
        let ret = unsafe { sys::rte_eal_wait_lcore(lcore) };
        if ret == 0 {
            Ok(())
        } else {
            Err(DpdkError::Call {
                call: format!("the function launched on lcore {lcore}"),
                code: ret,
                reason: "panicked".to_owned(),
            })
        }
    }
}

/// An mbuf pool.
#[derive(Debug)]
pub struct Mempool {
    ptr: NonNull<sys::rte_mempool>,
    _eal: Arc<EalInner>,
}

// SAFETY: DPDK mempools are safe to use from several threads at once
// (multi-producer/multi-consumer rings underneath).
unsafe impl Send for Mempool {}
// SAFETY: as above.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// A pool of `mbufs` mbufs (2048 bytes of data room each) on NUMA
    /// `socket` (`-1`: any).
    pub fn new(
        eal: &Eal,
        name: &str,
        mbufs: u32,
        cache: u32,
        socket: i32,
    ) -> Result<Self, DpdkError> {
        let c = cstring(name)?;
        let cache = cache.min(sys::RTE_MEMPOOL_CACHE_MAX_SIZE);
        // SAFETY: a valid name; EAL is up.
        let p = unsafe {
            sys::rte_pktmbuf_pool_create(
                c.as_ptr(),
                mbufs,
                cache,
                0,
                sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                socket,
            )
        };
        let ptr = NonNull::new(p).ok_or_else(|| {
            let errno = sys::rte_errno();
            DpdkError::Call {
                call: format!("rte_pktmbuf_pool_create({name}, {mbufs})"),
                code: errno,
                reason: strerror(errno),
            }
        })?;
        Ok(Self {
            ptr,
            _eal: Arc::clone(&eal.inner),
        })
    }

    /// Mbufs free in the pool (including per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: a live pool.
        unsafe { sys::rte_mempool_avail_count(self.ptr.as_ptr()) }
    }

    /// Mbufs taken from the pool and not yet returned.
    pub fn in_use(&self) -> u32 {
        // SAFETY: a live pool.
        unsafe { sys::rte_mempool_in_use_count(self.ptr.as_ptr()) }
    }

    /// An mbuf holding a copy of `frame`, or `None` if the pool is empty or
    /// the frame does not fit. Set-up and test use (it copies).
    pub fn mbuf_from(&self, frame: &[u8]) -> Option<DpdkBuf> {
        let len = u16::try_from(frame.len()).ok()?;
        // SAFETY: a live pool.
        let m = NonNull::new(unsafe { sys::rte_pktmbuf_alloc(self.ptr.as_ptr()) })?;
        let buf = DpdkBuf { mbuf: m };
        // SAFETY: a fresh mbuf of ours.
        let data = unsafe { sys::rte_pktmbuf_append(m.as_ptr(), len) }.cast::<u8>();
        if data.is_null() {
            return None; // `buf` frees the mbuf
        }
        // SAFETY: `append` made `len` bytes at `data` part of the mbuf; they
        // cannot overlap `frame`, which we borrow.
        unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), data, frame.len()) };
        Some(buf)
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: every port using the pool holds an Arc to it, so all are
        // closed; mbufs still out (leaked buffers) would be freed into
        // freed memory, which DpdkBuf's Drop prevents by returning them.
        unsafe { sys::rte_mempool_free(self.ptr.as_ptr()) };
    }
}

/// An `rte_ring` of mbuf pointers: the two ends of a `net_ring` port.
#[derive(Debug)]
pub struct Ring {
    ptr: NonNull<sys::rte_ring>,
    _eal: Arc<EalInner>,
}

// SAFETY: rings are created multi-producer/multi-consumer (flags 0), safe
// to use from several threads.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// A ring of `size` slots (a power of two; it holds `size - 1`).
    pub fn new(eal: &Eal, name: &str, size: u32) -> Result<Self, DpdkError> {
        Self::with_flags(eal, name, size, 0)
    }

    /// A ring of `size` slots with one producer thread and one consumer
    /// thread (`RING_F_SP_ENQ | RING_F_SC_DEQ`: no compare-and-swap loop
    /// on either end). The caller keeps to one of each.
    pub fn new_spsc(eal: &Eal, name: &str, size: u32) -> Result<Self, DpdkError> {
        Self::with_flags(eal, name, size, sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ)
    }

    /// A ring many threads may enqueue to and one dequeues from.
    pub fn new_mpsc(eal: &Eal, name: &str, size: u32) -> Result<Self, DpdkError> {
        Self::with_flags(eal, name, size, sys::RING_F_SC_DEQ)
    }

    fn with_flags(eal: &Eal, name: &str, size: u32, flags: u32) -> Result<Self, DpdkError> {
        let c = cstring(name)?;
        // SAFETY: a valid name; EAL is up.
        let p = unsafe { sys::rte_ring_create(c.as_ptr(), size, sys::SOCKET_ID_ANY, flags) };
        let ptr = NonNull::new(p).ok_or_else(|| {
            let errno = sys::rte_errno();
            DpdkError::Call {
                call: format!("rte_ring_create({name}, {size})"),
                code: errno,
                reason: strerror(errno),
            }
        })?;
        Ok(Self {
            ptr,
            _eal: Arc::clone(&eal.inner),
        })
    }

    /// Enqueues as many of the owned mbufs `objs` as fit, in order;
    /// returns how many (those now belong to the ring).
    #[inline]
    fn enqueue_raw(&self, objs: &[*mut sys::rte_mbuf]) -> usize {
        // SAFETY: a live ring; `objs.len()` object pointers.
        (unsafe {
            sys::rte_ring_enqueue_burst(
                self.ptr.as_ptr(),
                objs.as_ptr().cast::<*mut c_void>(),
                objs.len() as u32,
                std::ptr::null_mut(),
            )
        }) as usize
    }

    /// Dequeues up to `out.len()` mbufs into `out`; returns how many (now
    /// owned by the caller).
    #[inline]
    fn dequeue_raw(&self, out: &mut [*mut sys::rte_mbuf]) -> usize {
        // SAFETY: a live ring; room for `out.len()` pointers.
        (unsafe {
            sys::rte_ring_dequeue_burst(
                self.ptr.as_ptr(),
                out.as_mut_ptr().cast::<*mut c_void>(),
                out.len() as u32,
                std::ptr::null_mut(),
            )
        }) as usize
    }

    /// Enqueues `buf` (as a port would receive it); gives it back if full.
    pub fn push(&self, buf: DpdkBuf) -> Result<(), DpdkBuf> {
        let buf = ManuallyDrop::new(buf);
        let objs = [buf.mbuf.as_ptr().cast::<c_void>()];
        // SAFETY: a live ring and one object pointer.
        let n = unsafe {
            sys::rte_ring_enqueue_burst(self.ptr.as_ptr(), objs.as_ptr(), 1, std::ptr::null_mut())
        };
        if n == 1 {
            Ok(())
        } else {
            Err(ManuallyDrop::into_inner(buf))
        }
    }

    /// Dequeues one mbuf (as a port sent it).
    pub fn pop(&self) -> Option<DpdkBuf> {
        let mut obj: *mut c_void = std::ptr::null_mut();
        // SAFETY: a live ring; room for one object.
        let n = unsafe {
            sys::rte_ring_dequeue_burst(self.ptr.as_ptr(), &raw mut obj, 1, std::ptr::null_mut())
        };
        if n == 0 {
            return None;
        }
        NonNull::new(obj.cast::<sys::rte_mbuf>()).map(|mbuf| DpdkBuf { mbuf })
    }

    /// Objects in the ring.
    pub fn len(&self) -> u32 {
        // SAFETY: a live ring.
        unsafe { sys::rte_ring_count(self.ptr.as_ptr()) }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        while self.pop().is_some() {}
        // SAFETY: emptied above; a port using it must be closed first
        // (documented on `port_from_rings`).
        unsafe { sys::rte_ring_free(self.ptr.as_ptr()) };
    }
}

/// One received packet: an `rte_mbuf` this worker owns. Dropping it
/// returns the mbuf to its pool.
#[derive(Debug)]
pub struct DpdkBuf {
    mbuf: NonNull<sys::rte_mbuf>,
}

// SAFETY: the buffer owns its mbuf exclusively; freeing it from another
// thread is allowed (see the module documentation).
unsafe impl Send for DpdkBuf {}

impl DpdkBuf {
    /// The mbuf, given up by this buffer.
    fn into_raw(self) -> *mut sys::rte_mbuf {
        ManuallyDrop::new(self).mbuf.as_ptr()
    }

    /// The frame's bytes, copied (tests).
    pub fn to_vec(&self) -> Vec<u8> {
        self.data().to_vec()
    }
}

impl Drop for DpdkBuf {
    fn drop(&mut self) {
        // SAFETY: the mbuf is ours (see `into_raw` for the other way out).
        unsafe { sys::rte_pktmbuf_free(self.mbuf.as_ptr()) };
    }
}

impl PacketBuf for DpdkBuf {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        let m = self.mbuf.as_ptr();
        // SAFETY: a live mbuf of ours.
        let len = usize::from(unsafe { (*m).data_len });
        // SAFETY: as above.
        let data = unsafe { sys::pktmbuf_mtod(m) };
        // SAFETY: the first segment's `data_len` bytes from `data_off` are
        // initialised packet data inside the mbuf's buffer, which lives as
        // long as we own the mbuf; `&self` keeps writers away.
        unsafe { std::slice::from_raw_parts(data, len) }
    }

    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        let m = self.mbuf.as_ptr();
        // SAFETY: a live mbuf of ours.
        let len = usize::from(unsafe { (*m).data_len });
        // SAFETY: as above.
        let data = unsafe { sys::pktmbuf_mtod(m) };
        // SAFETY: as in `data`; `&mut self` makes the access exclusive (limpet
        // never shares an mbuf: its reference count is 1).
        unsafe { std::slice::from_raw_parts_mut(data, len) }
    }

    #[inline(always)]
    fn port(&self) -> u16 {
        // SAFETY: a live mbuf of ours.
        unsafe { (*self.mbuf.as_ptr()).port }
    }

    #[inline(always)]
    fn set_port(&mut self, port: u16) {
        // SAFETY: a live mbuf of ours.
        unsafe { (*self.mbuf.as_ptr()).port = port };
    }

    /// `rte_pktmbuf_prepend` (a static inline function the binding does
    /// not export), for a single-segment mbuf.
    #[inline]
    fn prepend(&mut self, n: usize) -> bool {
        let Ok(n) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: a live mbuf of ours, never shared (its reference count is
        // 1), borrowed exclusively through `&mut self`.
        let m = unsafe { &mut *self.mbuf.as_ptr() };
        // The bytes `data_off - n .. data_off` are the buffer's headroom.
        if m.nb_segs != 1 || m.data_off < n {
            return false;
        }
        m.data_off -= n;
        m.data_len += n;
        m.pkt_len += u32::from(n);
        true
    }

    #[inline]
    fn truncate(&mut self, len: usize) {
        // SAFETY: as in `prepend`.
        let m = unsafe { &mut *self.mbuf.as_ptr() };
        if m.nb_segs == 1 && len < usize::from(m.data_len) {
            m.data_len = len as u16;
            m.pkt_len = len as u32;
        }
    }
}

/// How a port spreads packets over its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RssMode {
    /// Symmetric Toeplitz over the IP address pair: a packet and its
    /// reverse meet (DSR; flows whose replies swap the pair).
    #[default]
    Pair,
    /// Over the source address only: the client-facing port of a
    /// two-armed `nat` set-up (see the module documentation).
    ClientIsSource,
    /// Over the destination address only: the backend-facing port.
    ClientIsDestination,
    /// No RSS: each packet lands on whichever queue the driver puts it
    /// (queue 0 on most; the kernel's flow hash for `net_af_packet` with
    /// `qpairs`). For ports that cannot hash the client address alone:
    /// [`DpdkIo::with_steering`] then hands each packet to its owner.
    Off,
}

/// The symmetric Toeplitz key: `0x6d5a` repeated (`len` bytes, 40 or the
/// port's `hash_key_size`).
pub fn symmetric_rss_key(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| if i % 2 == 0 { 0x6d } else { 0x5a })
        .collect()
}

/// The RSS hash types for `config` on a port with `info`'s abilities.
fn rss_types(id: u16, config: &PortConfig, info: &sys::rte_eth_dev_info) -> Result<u64, DpdkError> {
    let q = config.queues;
    let side = match config.rss {
        RssMode::Pair | RssMode::Off => 0,
        RssMode::ClientIsSource => sys::RTE_ETH_RSS_L3_SRC_ONLY,
        RssMode::ClientIsDestination => sys::RTE_ETH_RSS_L3_DST_ONLY,
    };
    let hf = (sys::RTE_ETH_RSS_IP | side) & info.flow_type_rss_offloads;
    if hf & (sys::RTE_ETH_RSS_IPV4 | sys::RTE_ETH_RSS_IPV6) == 0 {
        return Err(DpdkError::Rss {
            port: id,
            what: format!(
                "{q} queues need RSS over IP addresses; the port offers {:#x}",
                info.flow_type_rss_offloads
            ),
        });
    }
    if side != 0 && hf & side == 0 {
        return Err(DpdkError::Rss {
            port: id,
            what: format!(
                "{:?} needs L3 source/destination-only hashing, which the port lacks",
                config.rss
            ),
        });
    }
    Ok(hf)
}

/// A NUL-terminated C string in a fixed-size array (up to its end if no
/// NUL), as a `String`.
fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| u8::from_ne_bytes(c.to_ne_bytes()))
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A port's settings.
#[derive(Debug, Clone)]
pub struct PortConfig {
    /// RX/TX queue pairs: one per worker.
    pub queues: u16,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    pub rss: RssMode,
    /// Accept frames for any MAC address.
    pub promiscuous: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            rss: RssMode::Pair,
            promiscuous: true,
        }
    }
}

/// Link state, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    pub speed_mbps: u32,
    pub full_duplex: bool,
}

/// A port's basic counters (`rte_eth_stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Dropped by the NIC: RX queues full (`imissed`).
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// A started ethdev. Stopped and closed on drop, after every worker
/// using it has dropped its [`DpdkIo`].
#[derive(Debug)]
pub struct Port {
    id: u16,
    name: String,
    queues: u16,
    offloads: (u64, u64),
    _pool: Arc<Mempool>,
    _eal: Arc<EalInner>,
}

impl Port {
    /// Configures port `id` with `config` (one RX/TX queue pair per worker,
    /// RX mbufs from the pool of the port's socket, or the first one) and
    /// starts it.
    pub fn start(
        eal: &Eal,
        id: u16,
        config: &PortConfig,
        pools: &[Arc<Mempool>],
    ) -> Result<Self, DpdkError> {
        let port_err = |what: String| DpdkError::Port { port: id, what };
        if pools.is_empty() {
            return Err(DpdkError::Invalid("no mbuf pool".to_owned()));
        }
        // SAFETY: any port id may be asked about.
        if unsafe { sys::rte_eth_dev_is_valid_port(id) } == 0 {
            return Err(port_err("no such port".to_owned()));
        }
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: a valid port and out-pointer.
        check("rte_eth_dev_info_get", unsafe {
            sys::rte_eth_dev_info_get(id, &raw mut info)
        })?;
        let mut name_buf = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
        // SAFETY: a buffer of RTE_ETH_NAME_MAX_LEN bytes.
        let ret = unsafe { sys::rte_eth_dev_get_name_by_port(id, name_buf.as_mut_ptr()) };
        let name = if ret == 0 {
            c_chars_to_string(&name_buf)
        } else {
            format!("port{id}")
        };
        let q = config.queues;
        if q == 0 || q > info.max_rx_queues || q > info.max_tx_queues {
            return Err(port_err(format!(
                "{q} queue pairs asked, the port has at most {} RX and {} TX",
                info.max_rx_queues, info.max_tx_queues
            )));
        }

        let mut conf = sys::rte_eth_conf::default();
        // Kept alive until rte_eth_dev_configure has copied it.
        let key_len = if info.hash_key_size == 0 {
            40
        } else {
            usize::from(info.hash_key_size)
        };
        let mut key = symmetric_rss_key(key_len);
        let rss = q > 1 && config.rss != RssMode::Off;
        if rss {
            let hf = rss_types(id, config, &info)?;
            conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_key = key.as_mut_ptr();
            conf.rx_adv_conf.rss_conf.rss_key_len = key.len() as u8;
            conf.rx_adv_conf.rss_conf.rss_hf = hf;
        }
        let one_pool = pools.len() == 1;
        if one_pool && info.tx_offload_capa & sys::RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE != 0 {
            conf.txmode.offloads |= sys::RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE;
        }
        // SAFETY: a valid port; `conf` (and the key it points to) live
        // across the call, which copies them.
        check(format!("{name}: rte_eth_dev_configure"), unsafe {
            sys::rte_eth_dev_configure(id, q, q, &raw const conf)
        })?;
        drop(key);

        // SAFETY: a valid port.
        let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
        let pool = usize::try_from(socket)
            .ok()
            .and_then(|s| pools.get(s))
            .unwrap_or(&pools[0]);
        let mut rx_desc = config.rx_descriptors;
        let mut tx_desc = config.tx_descriptors;
        // SAFETY: a configured port; the counts are in-out.
        let ret = unsafe {
            sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &raw mut rx_desc, &raw mut tx_desc)
        };
        check(format!("{name}: rte_eth_dev_adjust_nb_rx_tx_desc"), ret)?;
        let socket_id = u32::try_from(socket).unwrap_or(0);
        let mut txconf = info.default_txconf;
        txconf.offloads = conf.txmode.offloads;
        for queue in 0..q {
            // SAFETY: a configured port; the pool outlives the port (the
            // port holds an Arc to it); default RX settings.
            check(format!("{name}: rte_eth_rx_queue_setup({queue})"), unsafe {
                sys::rte_eth_rx_queue_setup(
                    id,
                    queue,
                    rx_desc,
                    socket_id,
                    std::ptr::null(),
                    pool.ptr.as_ptr(),
                )
            })?;
            // SAFETY: a configured port; `txconf` lives across the call.
            check(format!("{name}: rte_eth_tx_queue_setup({queue})"), unsafe {
                sys::rte_eth_tx_queue_setup(id, queue, tx_desc, socket_id, &raw const txconf)
            })?;
        }
        // SAFETY: every queue is set up.
        check(format!("{name}: rte_eth_dev_start"), unsafe {
            sys::rte_eth_dev_start(id)
        })?;
        if config.promiscuous {
            // Best effort: virtual devices may not have the notion.
            // SAFETY: a started port.
            let _ = unsafe { sys::rte_eth_promiscuous_enable(id) };
        }
        let port = Self {
            id,
            name,
            queues: q,
            offloads: (conf.rxmode.offloads, conf.txmode.offloads),
            _pool: Arc::clone(pool),
            _eal: Arc::clone(&eal.inner),
        };
        if rss && info.reta_size > 0 {
            port.spread_reta(info.reta_size)?;
        }
        Ok(port)
    }

    /// Programs the redirection table round-robin over the queues, the
    /// same on every port, so equal hashes mean equal queues everywhere.
    fn spread_reta(&self, size: u16) -> Result<(), DpdkError> {
        let group = sys::RTE_ETH_RETA_GROUP_SIZE as usize;
        let groups = usize::from(size).div_ceil(group);
        let mut reta = vec![sys::rte_eth_rss_reta_entry64::default(); groups];
        for (g, entry) in reta.iter_mut().enumerate() {
            entry.mask = u64::MAX;
            for (i, slot) in entry.reta.iter_mut().enumerate() {
                *slot = ((g * group + i) % usize::from(self.queues)) as u16;
            }
        }
        // SAFETY: `groups` entries covering `size` slots.
        let ret = unsafe { sys::rte_eth_dev_rss_reta_update(self.id, reta.as_mut_ptr(), size) };
        check(format!("{}: rte_eth_dev_rss_reta_update", self.name), ret).map(drop)
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn queues(&self) -> u16 {
        self.queues
    }

    /// The RX and TX offloads in use.
    pub fn offloads(&self) -> (u64, u64) {
        self.offloads
    }

    pub fn mac(&self) -> Result<[u8; 6], DpdkError> {
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: a valid port and out-pointer.
        check("rte_eth_macaddr_get", unsafe {
            sys::rte_eth_macaddr_get(self.id, &raw mut mac)
        })?;
        Ok(mac.addr_bytes)
    }

    /// The link state, without waiting for negotiation.
    pub fn link(&self) -> Result<LinkStatus, DpdkError> {
        let mut link = sys::rte_eth_link::default();
        // SAFETY: a valid port and out-pointer.
        check("rte_eth_link_get_nowait", unsafe {
            sys::rte_eth_link_get_nowait(self.id, &raw mut link)
        })?;
        Ok(LinkStatus {
            up: link.link_status() == sys::RTE_ETH_LINK_UP as u16,
            speed_mbps: link.link_speed,
            full_duplex: link.link_duplex() == sys::RTE_ETH_LINK_FULL_DUPLEX as u16,
        })
    }

    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: a valid port and out-pointer.
        check("rte_eth_stats_get", unsafe {
            sys::rte_eth_stats_get(self.id, &raw mut s)
        })?;
        Ok(PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// Every extended counter the driver has, by name. Allocates: for the
    /// admin API, not the packet path.
    pub fn xstats(&self) -> Result<Vec<(String, u64)>, DpdkError> {
        // SAFETY: a NULL array asks for the count.
        let n = check("rte_eth_xstats_get", unsafe {
            sys::rte_eth_xstats_get(self.id, std::ptr::null_mut(), 0)
        })? as usize;
        let mut names = vec![sys::rte_eth_xstat_name::default(); n];
        let mut values = vec![sys::rte_eth_xstat::default(); n];
        // SAFETY: arrays of `n` entries.
        let got = check("rte_eth_xstats_get_names", unsafe {
            sys::rte_eth_xstats_get_names(self.id, names.as_mut_ptr(), n as u32)
        })? as usize;
        // SAFETY: as above.
        let got_values = check("rte_eth_xstats_get", unsafe {
            sys::rte_eth_xstats_get(self.id, values.as_mut_ptr(), n as u32)
        })? as usize;
        let n = n.min(got).min(got_values);
        Ok(values[..n]
            .iter()
            .map(|v| {
                let name = names
                    .get(v.id as usize)
                    .map_or_else(String::new, |nm| c_chars_to_string(&nm.name));
                (name, v.value)
            })
            .collect())
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // No worker polls the port any more (each holds an Arc to it). Stop
        // it, then close it: the driver frees the mbufs left in its RX and
        // TX rings back to the pool, which outlives this.
        // SAFETY: a started port no thread uses.
        let stop = unsafe { sys::rte_eth_dev_stop(self.id) };
        if stop < 0 {
            eprintln!("{}: rte_eth_dev_stop: {}", self.name, strerror(stop));
        }
        // SAFETY: a stopped port.
        let close = unsafe { sys::rte_eth_dev_close(self.id) };
        if close < 0 {
            eprintln!("{}: rte_eth_dev_close: {}", self.name, strerror(close));
        }
    }
}

/// Counters of one worker's I/O.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DpdkIoStats {
    /// Frames received from this worker's queues (before steering).
    pub rx: u64,
    pub tx: u64,
    /// Frames the TX queue had no room for, freed.
    pub tx_full: u64,
    /// Frames sent to a port this worker does not have, freed.
    pub tx_bad_port: u64,
    pub freed: u64,
    /// Frames handed to the worker owning their client ([`SteeringMesh`]).
    pub steered_out: u64,
    /// Frames other workers handed to this one.
    pub steered_in: u64,
    /// Frames to hand over that the owner's ring had no room for, freed.
    pub steer_full: u64,
    /// Slow-path frames (ARP, ND) passed to the neighbour thread.
    pub slow_passed: u64,
    /// Slow-path frames the neighbour thread's ring had no room for, freed.
    pub slow_full: u64,
    /// Frames the neighbour thread made that this worker sent.
    pub control_sent: u64,
}

impl DpdkIoStats {
    /// Every counter, named as the admin API exports it.
    pub fn named(&self) -> [(&'static str, u64); 11] {
        [
            ("rx", self.rx),
            ("tx", self.tx),
            ("tx_full", self.tx_full),
            ("tx_bad_port", self.tx_bad_port),
            ("freed", self.freed),
            ("steered_out", self.steered_out),
            ("steered_in", self.steered_in),
            ("steer_full", self.steer_full),
            ("slow_passed", self.slow_passed),
            ("slow_full", self.slow_full),
            ("control_sent", self.control_sent),
        ]
    }
}

/// Software steering between workers (see the module documentation): one
/// single-producer/single-consumer `rte_ring` per ordered pair of workers,
/// `ring(from, to)` written only by worker `from` and read only by worker
/// `to`. Created once, before the workers start; nothing on the packet
/// path locks or allocates.
#[derive(Debug)]
pub struct SteeringMesh {
    workers: usize,
    /// `workers * workers` rings, row = producer; the diagonal is unused
    /// (`None`).
    rings: Vec<Option<Ring>>,
}

impl SteeringMesh {
    /// Rings of `size` slots (a power of two) between `workers` workers,
    /// named `{prefix}_{from}_{to}`.
    pub fn new(eal: &Eal, prefix: &str, workers: usize, size: u32) -> Result<Self, DpdkError> {
        let mut rings = Vec::with_capacity(workers * workers);
        for from in 0..workers {
            for to in 0..workers {
                rings.push(if from == to {
                    None
                } else {
                    Some(Ring::new_spsc(eal, &format!("{prefix}_{from}_{to}"), size)?)
                });
            }
        }
        Ok(Self { workers, rings })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    #[inline]
    fn ring(&self, from: usize, to: usize) -> Option<&Ring> {
        self.rings.get(from * self.workers + to)?.as_ref()
    }
}

/// One worker's end of the mesh.
#[derive(Debug)]
struct Steering {
    mesh: Arc<SteeringMesh>,
    me: usize,
    client: super::steer::ClientSteering,
    /// Per owner, the mbufs of this poll to hand over (capacity `BURST`
    /// each, allocated once: one poll receives at most `BURST`).
    stage: Vec<Vec<*mut sys::rte_mbuf>>,
}

/// The two rings between the workers and the neighbour thread of one port
/// (only workers see a DPDK port's traffic, and only they may send on its
/// queues): ARP / ND frames the pipeline leaves to the slow path go up
/// `to_control` (any worker may enqueue), and the replies and requests the
/// neighbour thread makes come down `to_wire`, sent by the one worker that
/// was given `sends` (see [`DpdkIo::with_slow_path`]).
#[derive(Debug)]
pub struct SlowPath {
    pub to_control: Ring,
    pub to_wire: Ring,
}

impl SlowPath {
    /// Rings of 1024 slots named `{prefix}_up` and `{prefix}_down`.
    pub fn new(eal: &Eal, prefix: &str) -> Result<Self, DpdkError> {
        Ok(Self {
            to_control: Ring::new_mpsc(eal, &format!("{prefix}_up"), 1024)?,
            to_wire: Ring::new_spsc(eal, &format!("{prefix}_down"), 1024)?,
        })
    }
}

/// One worker's I/O: queue `queue` of every port. Port `i` of the list is
/// the pipeline's port `i` (`PacketBuf::port`), whatever its DPDK id.
#[derive(Debug)]
pub struct DpdkIo {
    ports: Vec<Arc<Port>>,
    queue: u16,
    /// The next port to poll first, so none starves another.
    next: usize,
    scratch: [*mut sys::rte_mbuf; BURST],
    pub stats: DpdkIoStats,
    steering: Option<Steering>,
    /// Per port index, its rings to the neighbour thread; whether this
    /// worker sends what comes down them.
    slow: Vec<Arc<SlowPath>>,
    sends_control: bool,
}

// SAFETY: the raw pointers in `scratch` are only meaningful during one
// call; the queues are used by this worker alone, from whichever thread it
// runs on.
unsafe impl Send for DpdkIo {}

/// Serialises [`DpdkIo::new`]'s claim check.
static CLAIMS: Mutex<Vec<(u16, u16)>> = Mutex::new(Vec::new());

impl DpdkIo {
    /// The worker owning queue `queue` of `ports`. Each (port, queue) may
    /// be claimed once per process: DPDK queues are single-threaded.
    pub fn new(ports: &[Arc<Port>], queue: u16) -> Result<Self, DpdkError> {
        let mut claims = CLAIMS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in ports {
            if queue >= p.queues {
                return Err(DpdkError::Port {
                    port: p.id,
                    what: format!("no queue {queue} (it has {})", p.queues),
                });
            }
            if claims.contains(&(p.id, queue)) {
                return Err(DpdkError::Port {
                    port: p.id,
                    what: format!("queue {queue} already belongs to a worker"),
                });
            }
        }
        claims.extend(ports.iter().map(|p| (p.id, queue)));
        Ok(Self {
            ports: ports.to_vec(),
            queue,
            next: 0,
            scratch: [std::ptr::null_mut(); BURST],
            stats: DpdkIoStats::default(),
            steering: None,
            slow: Vec::new(),
            sends_control: false,
        })
    }

    /// Makes this worker worker `me` of `mesh`: every received IP packet
    /// whose client another worker owns is handed to that worker, and what
    /// others hand over is received here (see the module documentation).
    /// Every worker of the mesh must be given it, each with its own `me`.
    pub fn with_steering(mut self, mesh: Arc<SteeringMesh>, me: usize) -> Result<Self, DpdkError> {
        if me >= mesh.workers {
            return Err(DpdkError::Invalid(format!(
                "worker {me} of a steering mesh of {}",
                mesh.workers
            )));
        }
        let stage = (0..mesh.workers)
            .map(|_| Vec::with_capacity(BURST))
            .collect();
        self.steering = Some(Steering {
            mesh,
            me,
            client: super::steer::ClientSteering::default(),
            stage,
        });
        Ok(self)
    }

    /// Passes slow-path frames arriving on port index `i` up `paths[i]`;
    /// with `sends`, also sends what comes down every `paths[i].to_wire`
    /// out of port `i` (give that to exactly one worker).
    #[must_use]
    pub fn with_slow_path(mut self, paths: Vec<Arc<SlowPath>>, sends: bool) -> Self {
        self.slow = paths;
        self.sends_control = sends;
        self
    }

    pub fn ports(&self) -> &[Arc<Port>] {
        &self.ports
    }

    /// Sends the frames the neighbour threads queued for the wire.
    fn send_control_frames(&mut self) {
        for i in 0..self.slow.len().min(self.ports.len()) {
            if self.slow[i].to_wire.is_empty() {
                continue;
            }
            let n = self.slow[i].to_wire.dequeue_raw(&mut self.scratch);
            self.stats.control_sent += n as u64;
            self.send_scratch(i, n);
        }
    }

    /// Receives into `burst` from every port, round robin, up to `room`
    /// packets in all; without steering, straight into `burst`.
    #[inline]
    fn rx_ports(&mut self, burst: &mut Vec<DpdkBuf>, room: usize) -> usize {
        let mut total = 0;
        let ports = self.ports.len();
        for k in 0..ports {
            if total == room {
                break;
            }
            let index = (self.next + k) % ports;
            let id = self.ports[index].id;
            // SAFETY: our queue of a started port; room for `room - total`.
            let n = usize::from(unsafe {
                sys::rte_eth_rx_burst(
                    id,
                    self.queue,
                    self.scratch.as_mut_ptr(),
                    (room - total) as u16,
                )
            });
            total += n;
            for j in 0..n {
                let Some(mbuf) = NonNull::new(self.scratch[j]) else {
                    continue;
                };
                let mut buf = DpdkBuf { mbuf };
                buf.set_port(index as u16);
                match &mut self.steering {
                    Some(st) => match st.client.owner(buf.data(), st.mesh.workers) {
                        Some(owner) if owner != st.me => st.stage[owner].push(buf.into_raw()),
                        _ => burst.push(buf),
                    },
                    None => burst.push(buf),
                }
            }
        }
        self.next = (self.next + 1) % ports.max(1);
        self.stats.rx += total as u64;
        total
    }

    /// Hands the staged packets to their owners; frees what does not fit.
    fn hand_over(&mut self) {
        let Some(st) = &mut self.steering else {
            return;
        };
        for (owner, staged) in st.stage.iter_mut().enumerate() {
            if staged.is_empty() {
                continue;
            }
            let Some(ring) = st.mesh.ring(st.me, owner) else {
                continue;
            };
            let n = ring.enqueue_raw(staged);
            self.stats.steered_out += n as u64;
            if n < staged.len() {
                let rest = &mut staged[n..];
                // SAFETY: mbufs the ring did not take are still ours.
                unsafe { sys::rte_pktmbuf_free_bulk(rest.as_mut_ptr(), rest.len() as u32) };
                self.stats.steer_full += rest.len() as u64;
            }
            staged.clear();
        }
    }

    /// Receives what other workers handed over, up to `room` packets.
    fn take_handed(&mut self, burst: &mut Vec<DpdkBuf>, room: usize) -> usize {
        let Some(st) = &self.steering else {
            return 0;
        };
        let mut total = 0;
        for from in 0..st.mesh.workers {
            if total == room {
                break;
            }
            let Some(ring) = st.mesh.ring(from, st.me) else {
                continue;
            };
            let n = ring.dequeue_raw(&mut self.scratch[..room - total]);
            for &m in &self.scratch[..n] {
                if let Some(mbuf) = NonNull::new(m) {
                    // The port index was set by the worker that received it.
                    burst.push(DpdkBuf { mbuf });
                }
            }
            total += n;
        }
        self.stats.steered_in += total as u64;
        total
    }

    /// Sends `n` mbufs from `scratch` out of port index `port`, freeing
    /// what the queue did not take.
    fn send_scratch(&mut self, port: usize, n: usize) -> usize {
        let id = self.ports[port].id;
        // SAFETY: our queue of a started port; `n` owned mbufs.
        let sent = usize::from(unsafe {
            sys::rte_eth_tx_burst(id, self.queue, self.scratch.as_mut_ptr(), n as u16)
        });
        if sent < n {
            // SAFETY: the mbufs the driver did not take are still ours.
            unsafe {
                sys::rte_pktmbuf_free_bulk(self.scratch[sent..n].as_mut_ptr(), (n - sent) as u32);
            }
            self.stats.tx_full += (n - sent) as u64;
        }
        self.stats.tx += sent as u64;
        sent
    }

    fn release_claims(&self) {
        let mut claims = CLAIMS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        claims.retain(|(id, q)| *q != self.queue || !self.ports.iter().any(|p| p.id == *id));
    }
}

impl Drop for DpdkIo {
    fn drop(&mut self) {
        self.release_claims();
    }
}

impl PacketIo for DpdkIo {
    type Buf = DpdkBuf;

    #[inline]
    fn rx_burst(&mut self, burst: &mut Vec<DpdkBuf>) -> usize {
        if self.sends_control {
            self.send_control_frames();
        }
        let start = burst.len();
        let room = (burst.capacity() - start).min(BURST);
        if self.steering.is_none() {
            self.rx_ports(burst, room);
            return burst.len() - start;
        }
        // Handed-over packets first: they were received earlier, and a
        // worker busy with its own queue must not starve its rings.
        let handed = self.take_handed(burst, room);
        self.rx_ports(burst, room - handed);
        self.hand_over();
        burst.len() - start
    }

    #[inline]
    fn tx_burst(&mut self, burst: &mut Vec<DpdkBuf>) -> usize {
        let mut sent = 0;
        // Runs of packets for the same port go out in one call: the common
        // case is the whole burst.
        let mut n = 0;
        let mut run_port = usize::MAX;
        for buf in burst.drain(..) {
            let port = usize::from(buf.port());
            if port >= self.ports.len() {
                self.stats.tx_bad_port += 1;
                drop(buf);
                continue;
            }
            if port != run_port && n > 0 {
                sent += self.send_scratch(run_port, n);
                n = 0;
            }
            run_port = port;
            self.scratch[n] = buf.into_raw();
            n += 1;
            if n == BURST {
                sent += self.send_scratch(run_port, n);
                n = 0;
            }
        }
        if n > 0 {
            sent += self.send_scratch(run_port, n);
        }
        sent
    }

    #[inline]
    fn free_burst(&mut self, burst: &mut Vec<DpdkBuf>) {
        let n = burst.len().min(BURST);
        self.stats.freed += burst.len() as u64;
        if burst.len() > BURST {
            burst.clear(); // each frees its own
            return;
        }
        for (slot, buf) in self.scratch.iter_mut().zip(burst.drain(..)) {
            *slot = buf.into_raw();
        }
        // SAFETY: `n` owned mbufs.
        unsafe { sys::rte_pktmbuf_free_bulk(self.scratch.as_mut_ptr(), n as u32) };
    }

    fn slow_burst(&mut self, burst: &mut Vec<DpdkBuf>) {
        if self.slow.is_empty() {
            self.free_burst(burst);
            return;
        }
        for buf in burst.drain(..) {
            let Some(path) = self.slow.get(usize::from(buf.port())) else {
                self.stats.freed += 1;
                continue; // `buf` frees its mbuf
            };
            if path.to_control.push(buf).is_ok() {
                self.stats.slow_passed += 1;
            } else {
                self.stats.slow_full += 1; // given back and freed
            }
        }
    }

    fn serve_frontends(&mut self, frontends: &[std::net::IpAddr]) {
        if let Some(st) = &mut self.steering {
            st.client.set_frontends(frontends);
        }
    }

    fn serve_sources(&mut self, sources: &[std::net::IpAddr]) {
        if let Some(st) = &mut self.steering {
            st.client.set_sources(sources);
        }
    }

    fn mtu(&self) -> usize {
        self.ports
            .iter()
            .map(|p| {
                let mut mtu: u16 = 0;
                // SAFETY: a started port of ours and a valid out-pointer.
                let rc = unsafe { sys::rte_eth_dev_get_mtu(p.id, &raw mut mtu) };
                if rc == 0 && mtu > 0 {
                    usize::from(mtu)
                } else {
                    usize::MAX
                }
            })
            .min()
            .unwrap_or(usize::MAX)
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        out.extend(self.stats.named());
    }
}
