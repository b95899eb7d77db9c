//! The `AF_XDP` backend: XDP sockets on an ordinary host's interfaces, fed
//! by a small XDP program that steers only limpet's traffic to them.
//!
//! # Steering: [`XdpSteering`]
//!
//! `bpf/steer.c`, built by `build.rs` and embedded here, runs in the
//! interface's driver before the kernel allocates anything for a frame. It
//! redirects to the `AF_XDP` socket of the receiving queue the unicast
//! IPv4/IPv6 packets limpet owns: to an address it serves or holds (map
//! bit `DST`: service addresses, `--address`es, source-NAT addresses),
//! from an endpoint it balances to (bit `SRC`: its NAT flows' replies), and
//! ICMP errors quoting either. An endpoint that leaves the services (not
//! ready, terminating, removed) stays in the map for
//! [`XdpSteering::set_linger`] (by default the connection table's TCP
//! established timeout): the connections limpet still holds to it keep
//! their replies. Everything else (broadcast, multicast, ARP,
//! neighbour discovery, the host's own traffic) goes on to the kernel
//! (`XDP_PASS`): the host keeps SSH and its routes on the same interface,
//! and limpet's neighbour thread reads ARP/ND through its own packet
//! socket, as with `AF_PACKET`. Under overload the cost of a frame limpet
//! cannot take is the program's and a full ring's: the kernel drops it
//! before building an skb, so a flood cannot starve the worker of its CPU
//! the way `AF_PACKET`'s receive path does.
//!
//! The program is loaded and attached with [aya] (pure Rust: no libbpf or
//! libxdp at run time) through a BPF link: the kernel refuses the link if
//! any other XDP program is on the interface (limpet never replaces one),
//! and removes limpet's when its link is closed, whichever way the process
//! ends. Native (driver) mode where the driver has it, generic mode
//! otherwise; [`XdpSteering::mode`] says which.
//!
//! # Sockets: [`AfXdpIo`]
//!
//! One socket per (worker, interface), bound to queue `worker` of the
//! interface: worker `i` owns queue `i`, and an interface with fewer queues
//! is refused at open. Each socket has its own UMEM of `frames` frames of
//! `frame_size` bytes, its fill and completion rings and its RX and TX
//! rings, all mapped into the process. Zero-copy where the driver offers
//! it, copy mode where it does not (veth, virtio-net), chosen at bind and
//! reported ([`AfXdpIo::zero_copy`]).
//!
//! - **Receive**: descriptors from the RX ring become [`AfXdpBuf`]s
//!   pointing into the UMEM; the worker rewrites them in place. Frames go
//!   back to the fill ring from a free list, topped up every `rx_burst`.
//! - **Transmit**: a buffer leaving by the socket it came from is sent
//!   without a copy (its descriptor goes on the TX ring); one leaving by
//!   another interface (two-armed) is copied into a frame of that socket's
//!   UMEM. Sent frames come back through the completion ring.
//! - **Wake-ups** (`XDP_USE_NEED_WAKEUP`): the kernel is kicked (`sendto`,
//!   `recvfrom`, non-blocking) only when a ring says it needs one, so a
//!   busy zero-copy worker makes no system call; copy mode needs a `sendto`
//!   per burst sent.
//!
//! `rx_burst` and `tx_burst` never block, allocate or fail: problems are
//! counted ([`AfXdpStats`], with the kernel's `XDP_STATISTICS`).

mod sys;

use super::afpacket::sys as common;
use super::{PacketBuf, PacketIo};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The compiled XDP program (empty when the build had no clang), aligned
/// as the ELF parser needs.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer.o"));

/// The program's map bits (`bpf/steer.c`).
const STEER_DST: u8 = 1;
const STEER_SRC: u8 = 2;

/// Why the backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AfXdpError {
    #[error("interface {iface} not found")]
    NotFound { iface: String },
    #[error("invalid interface name {iface:?}")]
    BadName { iface: String },
    #[error(
        "limpet was built without its XDP program (no clang at build time); install clang and rebuild"
    )]
    NoProgram,
    #[error("this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS): {0}")]
    NoAfXdp(io::Error),
    #[error(
        "{iface}: another XDP program is attached (see `ip link show {iface}`); limpet does not replace it"
    )]
    AlreadyAttached { iface: String },
    #[error("{iface}: the XDP program: {what}")]
    Program { iface: String, what: String },
    #[error(
        "{iface} has {queues} receive queue(s); worker {queue} needs queue {queue} (use fewer workers, or `ethtool -L {iface} combined N`)"
    )]
    QueueOutOfRange {
        iface: String,
        queue: u32,
        queues: u32,
    },
    #[error("{iface}: {call}: {source}")]
    Sys {
        iface: String,
        call: &'static str,
        source: io::Error,
    },
    #[error("invalid AF_XDP options: {0}")]
    InvalidOptions(String),
}

fn sys_err<'a>(iface: &'a str, call: &'static str) -> impl Fn(io::Error) -> AfXdpError + 'a {
    move |source| AfXdpError::Sys {
        iface: iface.to_owned(),
        call,
        source,
    }
}

/// Where to ask for the XDP program to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpAttach {
    /// In the driver where it can, in the generic hook otherwise.
    #[default]
    Auto,
    /// In the driver, or fail.
    Native,
    /// In the generic hook, after the kernel's receive steering (RPS): on
    /// a veth, where native XDP runs on the sender's CPU, this keeps the
    /// program's cost on the CPUs the interface's receive work is given.
    Generic,
}

/// Where the XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before any skb (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// In the kernel's generic hook, after the skb (`XDP_FLAGS_SKB_MODE`).
    Generic,
}

impl XdpMode {
    /// As logs and `--xdp-mode` say it.
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

struct Attached {
    iface: String,
    queues: u32,
    ebpf: aya::Ebpf,
    mode: XdpMode,
    /// `limpet_shed`'s state, mapped (shedding programs only).
    shed: Option<ShedSignal>,
}

/// Which of `bpf/steer.c`'s programs an [`XdpSteering`] attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    /// `limpet_steer`: limpet's frames to its `AF_XDP` sockets.
    Steer,
    /// `limpet_shed`: everything on to the kernel, except limpet's frames
    /// while a worker's `AF_PACKET` ring is backed up.
    Shed,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Steer => "limpet_steer",
            Program::Shed => "limpet_shed",
        }
    }
}

/// `struct shed` of `bpf/steer.c`: the one entry of `limpet_shed_state`.
const SHED_PRESSURED: usize = 0;
const SHED_DROPPED: usize = 8;

/// The shedding program's switch on one interface, shared by the workers
/// reading it: a worker whose receive ring is backed up raises it, and
/// the program drops limpet's frames in the driver while any worker has
/// it raised. It lives in the program's array map, mapped into the
/// process, so raising and lowering it is a memory write, not a system
/// call.
#[derive(Clone)]
pub struct ShedSignal {
    map: std::sync::Arc<ShedMap>,
}

/// The mapping of `limpet_shed_state`'s value.
struct ShedMap(common::Mmap);

// SAFETY: the mapping is shared memory the kernel also writes; this side
// touches it only through `ShedSignal`'s atomics, and the `Arc` around it
// keeps it mapped while any handle lives.
unsafe impl Send for ShedMap {}
// SAFETY: as for `Send`: every access is atomic.
unsafe impl Sync for ShedMap {}

impl std::fmt::Debug for ShedSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShedSignal")
            .field("pressured", &self.pressured().load(Ordering::Relaxed))
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl ShedSignal {
    fn map(ebpf: &aya::Ebpf, iface: &str) -> Result<ShedSignal, AfXdpError> {
        let map = ebpf
            .map("limpet_shed_state")
            .ok_or_else(|| program_err(iface, "no map limpet_shed_state"))?;
        let aya::maps::Map::Array(data) = map else {
            return Err(program_err(iface, "limpet_shed_state is not an array"));
        };
        let fd = std::os::fd::AsFd::as_fd(data.fd())
            .try_clone_to_owned()
            .map_err(sys_err(iface, "dup (shed map)"))?;
        let mmap = common::Mmap::at(&fd, common::page_size(), 0)
            .map_err(sys_err(iface, "mmap (shed map)"))?;
        Ok(ShedSignal {
            map: std::sync::Arc::new(ShedMap(mmap)),
        })
    }

    #[allow(clippy::cast_ptr_alignment)] // a page-aligned mapping
    fn pressured(&self) -> &AtomicU32 {
        let p = self
            .map
            .0
            .as_ptr()
            .wrapping_add(SHED_PRESSURED)
            .cast::<u32>();
        // SAFETY: offset 0 of the page-aligned, page-long mapping of the
        // map's value: `struct shed`'s aligned `pressured` word, which the
        // program only reads.
        unsafe { AtomicU32::from_ptr(p) }
    }

    /// One more worker is backed up: limpet's frames are dropped in the
    /// driver from now on.
    pub fn raise(&self) {
        self.pressured().fetch_add(1, Ordering::AcqRel);
    }

    /// That worker caught up (call once per [`raise`](Self::raise)).
    pub fn lower(&self) {
        let _ = self
            .pressured()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Whether any worker has it raised.
    pub fn raised(&self) -> bool {
        self.pressured().load(Ordering::Acquire) != 0
    }

    /// Frames the program has dropped while it was raised.
    #[allow(clippy::cast_ptr_alignment)] // a page-aligned mapping
    pub fn dropped(&self) -> u64 {
        let p = self
            .map
            .0
            .as_ptr()
            .wrapping_add(SHED_DROPPED)
            .cast::<std::sync::atomic::AtomicU64>();
        // SAFETY: offset 8 of the mapping: `struct shed`'s 8-byte-aligned
        // `dropped`, which the program updates with atomic adds.
        unsafe { &*p }.load(Ordering::Relaxed)
    }
}

/// The steering program attached to each of a set of interfaces, and its
/// maps. Dropping it detaches the program.
pub struct XdpSteering {
    ifaces: Vec<Attached>,
    /// What the address maps hold now, so an update writes only changes.
    addrs: std::collections::HashMap<IpAddr, u8>,
    own: Vec<IpAddr>,
    sources: Vec<IpAddr>,
    frontends: Vec<IpAddr>,
    endpoints: Vec<IpAddr>,
    /// Endpoints no longer in the set, and since when: still steered
    /// until `linger` has passed.
    leaving: std::collections::HashMap<IpAddr, std::time::Instant>,
    linger: Duration,
}

impl std::fmt::Debug for XdpSteering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpSteering")
            .field(
                "ifaces",
                &self
                    .ifaces
                    .iter()
                    .map(|a| (&a.iface, a.mode))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl XdpSteering {
    /// Loads the program once per interface and attaches it, native mode
    /// first, generic if the driver has none.
    pub fn attach(ifaces: &[&str]) -> Result<XdpSteering, AfXdpError> {
        XdpSteering::attach_with(ifaces, XdpAttach::Auto)
    }

    /// [`attach`](Self::attach) in the mode `how` asks for.
    pub fn attach_with(ifaces: &[&str], how: XdpAttach) -> Result<XdpSteering, AfXdpError> {
        XdpSteering::attach_program(ifaces, how, Program::Steer)
    }

    /// The shedding program (`limpet_shed`) for the `AF_PACKET` backend:
    /// the kernel gets every frame, as without it, except limpet's while
    /// one of its workers' rings is backed up ([`shed_signal`](Self::shed_signal)).
    /// The address maps are kept as for steering, so the host's own
    /// traffic is never shed.
    pub fn attach_shedding(ifaces: &[&str], how: XdpAttach) -> Result<XdpSteering, AfXdpError> {
        XdpSteering::attach_program(ifaces, how, Program::Shed)
    }

    fn attach_program(
        ifaces: &[&str],
        how: XdpAttach,
        program: Program,
    ) -> Result<XdpSteering, AfXdpError> {
        if PROGRAM.is_empty() {
            return Err(AfXdpError::NoProgram);
        }
        let mut attached = Vec::with_capacity(ifaces.len());
        for iface in ifaces {
            attached.push(attach_one(iface, how, program)?);
        }
        Ok(XdpSteering {
            ifaces: attached,
            addrs: std::collections::HashMap::new(),
            own: Vec::new(),
            sources: Vec::new(),
            frontends: Vec::new(),
            endpoints: Vec::new(),
            leaving: std::collections::HashMap::new(),
            linger: Duration::from_secs(u64::from(
                crate::flow::FlowTimeouts::default().tcp_established,
            )),
        })
    }

    /// How long an endpoint that left the services stays steered (its
    /// open connections' replies): the longest a connection may idle in
    /// the worker's table.
    pub fn set_linger(&mut self, linger: Duration) {
        self.linger = linger;
    }

    /// Stops steering endpoints that left more than `linger` ago. Called
    /// about once a second (the worker's health check).
    pub fn expire(&mut self, now: std::time::Instant) -> Result<(), AfXdpError> {
        let before = self.leaving.len();
        let linger = self.linger;
        self.leaving
            .retain(|_, since| now.duration_since(*since) < linger);
        if self.leaving.len() == before {
            return Ok(());
        }
        self.sync()
    }

    /// Where the program runs on `iface`.
    pub fn mode(&self, iface: &str) -> Option<XdpMode> {
        self.ifaces
            .iter()
            .find(|a| a.iface == iface)
            .map(|a| a.mode)
    }

    /// The shedding switch of `iface` (attached with
    /// [`attach_shedding`](Self::attach_shedding)).
    pub fn shed_signal(&self, iface: &str) -> Option<ShedSignal> {
        self.ifaces
            .iter()
            .find(|a| a.iface == iface)
            .and_then(|a| a.shed.clone())
    }

    /// Receive queues of `iface` (what bounds the workers on it).
    pub fn queues(&self, iface: &str) -> Option<u32> {
        self.ifaces
            .iter()
            .find(|a| a.iface == iface)
            .map(|a| a.queues)
    }

    fn register(&mut self, iface: &str, queue: u32, fd: &OwnedFd) -> Result<(), AfXdpError> {
        let a = self
            .ifaces
            .iter_mut()
            .find(|a| a.iface == iface)
            .ok_or_else(|| AfXdpError::Program {
                iface: iface.to_owned(),
                what: "not attached to this interface".to_owned(),
            })?;
        let map = a
            .ebpf
            .map_mut("limpet_xsks")
            .ok_or_else(|| program_err(iface, "no map limpet_xsks"))?;
        let mut xsks = aya::maps::XskMap::try_from(map)
            .map_err(|e| program_err(iface, &format!("limpet_xsks: {e}")))?;
        xsks.set(queue, fd.as_raw_fd(), 0)
            .map_err(|e| program_err(iface, &format!("limpet_xsks[{queue}]: {e}")))
    }

    /// limpet's own addresses (`--address`): steered to limpet.
    pub fn set_own_addrs(&mut self, addrs: &[IpAddr]) -> Result<(), AfXdpError> {
        self.own = addrs.to_vec();
        self.sync()
    }

    /// Source-NAT addresses: their replies come back to limpet.
    pub fn set_sources(&mut self, addrs: &[IpAddr]) -> Result<(), AfXdpError> {
        self.sources = addrs.to_vec();
        self.sync()
    }

    /// Every address a service is reached at.
    pub fn set_frontends(&mut self, addrs: &[IpAddr]) -> Result<(), AfXdpError> {
        self.frontends = addrs.to_vec();
        self.sync()
    }

    /// Every endpoint address limpet balances to: packets from them (its
    /// NAT flows' replies) are limpet's.
    pub fn set_endpoints(&mut self, addrs: &[IpAddr]) -> Result<(), AfXdpError> {
        let now = std::time::Instant::now();
        for old in &self.endpoints {
            if !addrs.contains(old) {
                self.leaving.entry(*old).or_insert(now);
            }
        }
        for new in addrs {
            self.leaving.remove(new);
        }
        self.endpoints = addrs.to_vec();
        self.sync()
    }

    /// Writes the maps' changes: what the four lists say now against what
    /// the maps hold.
    fn sync(&mut self) -> Result<(), AfXdpError> {
        let mut want: std::collections::HashMap<IpAddr, u8> = std::collections::HashMap::new();
        for a in self.own.iter().chain(&self.sources).chain(&self.frontends) {
            *want.entry(*a).or_default() |= STEER_DST;
        }
        for a in self.endpoints.iter().chain(self.leaving.keys()) {
            *want.entry(*a).or_default() |= STEER_SRC;
        }
        for a in &mut self.ifaces {
            for (addr, bits) in &want {
                if self.addrs.get(addr) != Some(bits) {
                    map_insert(a, *addr, *bits)?;
                }
            }
            for addr in self.addrs.keys() {
                if !want.contains_key(addr) {
                    map_remove(a, *addr)?;
                }
            }
        }
        self.addrs = want;
        Ok(())
    }
}

fn program_err(iface: &str, what: &str) -> AfXdpError {
    AfXdpError::Program {
        iface: iface.to_owned(),
        what: what.to_owned(),
    }
}

fn map_insert(a: &mut Attached, addr: IpAddr, bits: u8) -> Result<(), AfXdpError> {
    let iface = a.iface.clone();
    let err = |e: aya::maps::MapError| program_err(&iface, &format!("address map: {e}"));
    match addr {
        IpAddr::V4(v4) => {
            let map = a
                .ebpf
                .map_mut("limpet_addrs4")
                .ok_or_else(|| err(no_map()))?;
            let mut m = aya::maps::HashMap::<_, u32, u8>::try_from(map).map_err(err)?;
            m.insert(u32::from_ne_bytes(v4.octets()), bits, 0)
                .map_err(err)
        }
        IpAddr::V6(v6) => {
            let map = a
                .ebpf
                .map_mut("limpet_addrs6")
                .ok_or_else(|| err(no_map()))?;
            let mut m = aya::maps::HashMap::<_, [u8; 16], u8>::try_from(map).map_err(err)?;
            m.insert(v6.octets(), bits, 0).map_err(err)
        }
    }
}

fn map_remove(a: &mut Attached, addr: IpAddr) -> Result<(), AfXdpError> {
    let iface = a.iface.clone();
    let err = |e: aya::maps::MapError| program_err(&iface, &format!("address map: {e}"));
    let gone = |r: Result<(), aya::maps::MapError>| match r {
        Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
        Err(e) => Err(err(e)),
    };
    match addr {
        IpAddr::V4(v4) => {
            let map = a
                .ebpf
                .map_mut("limpet_addrs4")
                .ok_or_else(|| err(no_map()))?;
            let mut m = aya::maps::HashMap::<_, u32, u8>::try_from(map).map_err(err)?;
            gone(m.remove(&u32::from_ne_bytes(v4.octets())))
        }
        IpAddr::V6(v6) => {
            let map = a
                .ebpf
                .map_mut("limpet_addrs6")
                .ok_or_else(|| err(no_map()))?;
            let mut m = aya::maps::HashMap::<_, [u8; 16], u8>::try_from(map).map_err(err)?;
            gone(m.remove(&v6.octets()))
        }
    }
}

fn no_map() -> aya::maps::MapError {
    aya::maps::MapError::InvalidName {
        name: "limpet_addrs".to_owned(),
    }
}

fn attach_one(iface: &str, how: XdpAttach, which: Program) -> Result<Attached, AfXdpError> {
    let name = common::ifname(iface).ok_or_else(|| AfXdpError::BadName {
        iface: iface.to_owned(),
    })?;
    let ifindex = common::if_nametoindex(&name).map_err(|_| AfXdpError::NotFound {
        iface: iface.to_owned(),
    })?;
    let queues = rx_queues(iface);
    let mut ebpf =
        aya::Ebpf::load(PROGRAM).map_err(|e| program_err(iface, &format!("load: {e}")))?;
    let shed = match which {
        Program::Shed => Some(ShedSignal::map(&ebpf, iface)?),
        Program::Steer => None,
    };
    let program: &mut aya::programs::Xdp = ebpf
        .program_mut(which.name())
        .ok_or_else(|| program_err(iface, &format!("no program {}", which.name())))?
        .try_into()
        .map_err(|e| program_err(iface, &format!("{e}")))?;
    program
        .load()
        .map_err(|e| program_err(iface, &format!("verifier: {e}")))?;
    let (mut mode, flags) = match how {
        XdpAttach::Generic => (XdpMode::Generic, aya::programs::XdpFlags::SKB_MODE),
        XdpAttach::Auto | XdpAttach::Native => (XdpMode::Native, aya::programs::XdpFlags::DRV_MODE),
    };
    let mut result = program.attach_to_if_index(ifindex, flags);
    if how == XdpAttach::Auto && matches!(&result, Err(e) if !busy(e)) {
        mode = XdpMode::Generic;
        result = program.attach_to_if_index(ifindex, aya::programs::XdpFlags::SKB_MODE);
    }
    match result {
        Ok(_) => {}
        Err(e) if busy(&e) => {
            return Err(AfXdpError::AlreadyAttached {
                iface: iface.to_owned(),
            });
        }
        Err(e) => return Err(program_err(iface, &format!("attach: {e}"))),
    }
    Ok(Attached {
        iface: iface.to_owned(),
        queues,
        ebpf,
        mode,
        shed,
    })
}

/// Whether attaching failed because a program is already there.
fn busy(e: &aya::programs::ProgramError) -> bool {
    matches!(e, aya::programs::ProgramError::SyscallError(s)
        if s.io_error.raw_os_error() == Some(libc::EBUSY) || s.io_error.raw_os_error() == Some(libc::EEXIST))
}

/// Receive queues the interface has (`/sys/class/net/IFACE/queues/rx-*`).
pub fn rx_queues(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map_or(1, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .max(1)
}

/// UMEM and ring sizes of each socket.
#[derive(Debug, Clone)]
pub struct AfXdpOptions {
    /// UMEM frames per socket: at least twice `ring_size`.
    pub frames: u32,
    /// Bytes per frame: 2048 or 4096.
    pub frame_size: u32,
    /// Entries of each of the four rings: a power of two.
    pub ring_size: u32,
    /// Insist on zero-copy (fail rather than copy), or never try it.
    pub zero_copy: ZeroCopy,
    /// How long [`AfXdpIo::wait`] blocks by default.
    pub poll_timeout: Duration,
}

/// Whether to bind zero-copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroCopy {
    /// Zero-copy where the driver offers it, copy mode otherwise.
    #[default]
    Auto,
    Require,
    Never,
}

impl Default for AfXdpOptions {
    fn default() -> Self {
        AfXdpOptions {
            frames: 4096,
            frame_size: 2048,
            ring_size: 2048,
            zero_copy: ZeroCopy::Auto,
            poll_timeout: Duration::from_millis(10),
        }
    }
}

/// Counters of one socket, or (from [`AfXdpIo::stats`]) all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfXdpStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Sent by another interface's socket: copied into its UMEM.
    pub tx_copied: u64,
    /// Dropped: the TX ring was full.
    pub tx_ring_full: u64,
    /// Dropped: no free frame to copy into (another interface's socket).
    pub tx_no_frame: u64,
    /// Dropped: longer than a frame, or for a port that does not exist.
    pub tx_errors: u64,
    /// Buffers returned unsent.
    pub freed: u64,
    /// Kernel kicks made (`sendto` / `recvfrom` because a ring asked).
    pub wakeups: u64,
    /// The kernel's `XDP_STATISTICS`: frames it dropped for want of room in
    /// the RX ring, or of frames in the fill ring.
    pub rx_dropped_by_kernel: u64,
    pub rx_ring_full: u64,
    pub rx_fill_empty: u64,
}

impl AfXdpStats {
    fn add(&mut self, o: &AfXdpStats) {
        self.rx_packets += o.rx_packets;
        self.tx_packets += o.tx_packets;
        self.tx_copied += o.tx_copied;
        self.tx_ring_full += o.tx_ring_full;
        self.tx_no_frame += o.tx_no_frame;
        self.tx_errors += o.tx_errors;
        self.freed += o.freed;
        self.wakeups += o.wakeups;
        self.rx_dropped_by_kernel += o.rx_dropped_by_kernel;
        self.rx_ring_full += o.rx_ring_full;
        self.rx_fill_empty += o.rx_fill_empty;
    }

    /// Every counter by name, for the admin API's `limpet_io_total`.
    pub fn named(&self) -> [(&'static str, u64); 11] {
        [
            ("rx_packets", self.rx_packets),
            ("tx_packets", self.tx_packets),
            ("tx_copied", self.tx_copied),
            ("tx_ring_full", self.tx_ring_full),
            ("tx_no_frame", self.tx_no_frame),
            ("tx_errors", self.tx_errors),
            ("freed", self.freed),
            ("wakeups", self.wakeups),
            ("rx_dropped_by_kernel", self.rx_dropped_by_kernel),
            ("rx_ring_full", self.rx_ring_full),
            ("rx_fill_empty", self.rx_fill_empty),
        ]
    }
}

/// One received frame, in place in its socket's UMEM.
#[derive(Debug)]
pub struct AfXdpBuf {
    ptr: NonNull<u8>,
    len: u32,
    /// Bytes of the frame before `ptr` (the kernel's headroom).
    headroom: u32,
    /// The frame's offset in the UMEM of socket `ring`.
    frame: u64,
    owner: u32,
    port: u16,
    ring: u16,
}

// SAFETY: the buffer is the only handle on its UMEM frame until it comes
// back to its backend, and the UMEM stays mapped while any buffer is out
// (the backend leaks it otherwise), so it may move to another thread.
unsafe impl Send for AfXdpBuf {}

impl PacketBuf for AfXdpBuf {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` lies in one UMEM frame that user space
        // owns (taken from the RX ring, not yet given back to the kernel),
        // and this buffer is its only handle.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len as usize) }
    }

    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `data`; `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len as usize) }
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
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        if n > self.headroom {
            return false;
        }
        // The frame's bytes before the data are ours as the rest of it is.
        self.ptr = NonNull::new(self.ptr.as_ptr().wrapping_sub(n as usize))
            .expect("UMEM pointer is not null");
        self.headroom -= n;
        self.len += n;
        true
    }

    #[inline]
    fn truncate(&mut self, len: usize) {
        if len < self.len as usize {
            self.len = len as u32;
        }
    }
}

/// One socket: UMEM, four rings, and the frames user space holds.
struct Socket {
    iface: String,
    ifindex: u32,
    queue: u32,
    fd: OwnedFd,
    /// The UMEM (None once leaked) and where it starts.
    umem: Option<common::Mmap>,
    umem_base: *mut u8,
    frame_size: u64,
    rx: sys::Ring,
    tx: sys::Ring,
    fill: sys::Ring,
    comp: sys::Ring,
    /// Frames neither in the kernel's rings nor handed out.
    free: Vec<u64>,
    zero_copy: bool,
    mtu: usize,
    /// Descriptors put on the TX ring since the last kick.
    tx_pending: bool,
    stats: AfXdpStats,
}

impl Socket {
    #[inline(always)]
    fn frame_ptr(&self, addr: u64) -> *mut u8 {
        self.umem_base.wrapping_add(addr as usize)
    }

    /// Takes sent frames back and gives the kernel every free frame the
    /// fill ring has room for.
    #[inline]
    fn recycle(&mut self) {
        while let Some(addr) = self.comp.consume_addr() {
            self.free.push(addr & !(self.frame_size - 1));
        }
        self.comp.release();
        let room = self.fill.free_entries() as usize;
        let n = room.min(self.free.len());
        for _ in 0..n {
            if let Some(addr) = self.free.pop() {
                self.fill.produce_addr(addr);
            }
        }
        self.fill.publish();
        if n > 0 && self.fill.needs_wakeup() {
            self.stats.wakeups += 1;
            let _ = sys::wake_rx(&self.fd);
        }
    }

    /// Puts frame `addr` (`len` bytes) on the TX ring.
    #[inline]
    fn send(&mut self, addr: u64, len: u32) -> bool {
        if self.tx.free_entries() == 0 {
            self.stats.tx_ring_full += 1;
            return false;
        }
        self.tx.produce_desc(addr, len);
        self.tx_pending = true;
        self.stats.tx_packets += 1;
        true
    }

    fn kick(&mut self) {
        if !self.tx_pending {
            return;
        }
        self.tx.publish();
        self.tx_pending = false;
        if !self.zero_copy || self.tx.needs_wakeup() {
            self.stats.wakeups += 1;
            let _ = common::kick(&self.fd);
        }
    }
}

/// An `AF_XDP` backend: one socket per interface given, all on one queue
/// (the worker's). Ports are the interfaces in the order given.
pub struct AfXdpIo {
    sockets: Vec<Socket>,
    id: u32,
    rx_next: usize,
    pollfds: Vec<libc::pollfd>,
    poll_timeout: Duration,
    /// Worker 0's backend keeps the steering program and updates its maps.
    steering: Option<XdpSteering>,
    steering_error: Option<AfXdpError>,
    out: usize,
}

// SAFETY: the raw pointers are into mappings this value owns; the kernel
// side is synchronised through the rings' producer/consumer words; nothing
// is shared with other threads.
unsafe impl Send for AfXdpIo {}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

impl std::fmt::Debug for AfXdpIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpIo")
            .field(
                "sockets",
                &self
                    .sockets
                    .iter()
                    .map(|s| (s.iface.as_str(), s.queue, s.zero_copy))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl AfXdpIo {
    /// Opens a socket on queue `queue` of each of `ifaces` and registers it
    /// with `steering` (attached to the same interfaces).
    pub fn open(
        ifaces: &[&str],
        queue: u32,
        opts: &AfXdpOptions,
        steering: &mut XdpSteering,
    ) -> Result<AfXdpIo, AfXdpError> {
        validate(ifaces, opts)?;
        let mut sockets = Vec::with_capacity(ifaces.len());
        for iface in ifaces {
            let queues = steering.queues(iface).unwrap_or_else(|| rx_queues(iface));
            if queue >= queues {
                return Err(AfXdpError::QueueOutOfRange {
                    iface: (*iface).to_owned(),
                    queue,
                    queues,
                });
            }
            let socket = open_socket(iface, queue, opts)?;
            steering.register(iface, queue, &socket.fd)?;
            sockets.push(socket);
        }
        let pollfds = sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Ok(AfXdpIo {
            sockets,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            rx_next: 0,
            pollfds,
            poll_timeout: opts.poll_timeout,
            steering: None,
            steering_error: None,
            out: 0,
        })
    }

    /// Makes this backend the steering program's keeper: it writes the
    /// address maps when the worker learns new addresses, and detaches the
    /// program when dropped.
    pub fn keep_steering(&mut self, steering: XdpSteering) {
        self.steering = Some(steering);
    }

    pub fn steering(&self) -> Option<&XdpSteering> {
        self.steering.as_ref()
    }

    pub fn steering_mut(&mut self) -> Option<&mut XdpSteering> {
        self.steering.as_mut()
    }

    /// Whether each socket is zero-copy (else copy mode), in port order.
    pub fn zero_copy(&self) -> Vec<bool> {
        self.sockets.iter().map(|s| s.zero_copy).collect()
    }

    /// Buffers handed out and not yet returned.
    pub fn outstanding(&self) -> usize {
        self.out
    }

    /// Counters summed over the sockets, the kernel's refreshed.
    pub fn stats(&mut self) -> AfXdpStats {
        let mut total = AfXdpStats::default();
        for s in &mut self.sockets {
            if let Ok(k) = common::getsockopt(
                &s.fd,
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                sys::zero_stats(),
            ) {
                s.stats.rx_dropped_by_kernel = k.rx_dropped;
                s.stats.rx_ring_full = k.rx_ring_full;
                s.stats.rx_fill_empty = k.rx_fill_ring_empty_descs;
            }
            total.add(&s.stats);
        }
        total
    }

    /// A pending socket error, a failed map update, or an interface gone.
    pub fn health(&mut self) -> Result<(), AfXdpError> {
        self.with_steering(|s| s.expire(std::time::Instant::now()));
        if let Some(e) = self.steering_error.take() {
            return Err(e);
        }
        for s in &self.sockets {
            if common::if_indextoname(s.ifindex).is_none() {
                return Err(AfXdpError::NotFound {
                    iface: s.iface.clone(),
                });
            }
            if let Some(e) = common::take_socket_error(&s.fd)
                .map_err(sys_err(&s.iface, "getsockopt(SO_ERROR)"))?
            {
                return Err(AfXdpError::Sys {
                    iface: s.iface.clone(),
                    call: "socket error",
                    source: e,
                });
            }
        }
        Ok(())
    }

    /// For an idle worker: `poll()`s the sockets for up to `timeout`.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, AfXdpError> {
        for s in &self.sockets {
            if s.rx.available() > 0 {
                return Ok(true);
            }
        }
        for p in &mut self.pollfds {
            p.revents = 0;
        }
        let n = common::poll(&mut self.pollfds, timeout.unwrap_or(self.poll_timeout))
            .map_err(sys_err(&self.sockets[0].iface, "poll"))?;
        Ok(n > 0)
    }

    fn with_steering(&mut self, f: impl FnOnce(&mut XdpSteering) -> Result<(), AfXdpError>) {
        if let Some(s) = self.steering.as_mut()
            && let Err(e) = f(s)
        {
            self.steering_error = Some(e);
        }
    }

    #[inline(always)]
    fn give_back(&mut self, buf: &AfXdpBuf) {
        assert_eq!(
            buf.owner, self.id,
            "AfXdpBuf returned to an AfXdpIo that did not receive it"
        );
        self.out -= 1;
        let s = &mut self.sockets[usize::from(buf.ring)];
        s.free.push(buf.frame);
    }
}

impl PacketIo for AfXdpIo {
    type Buf = AfXdpBuf;

    fn max_frame(&self) -> usize {
        self.sockets
            .iter()
            .map(|s| s.frame_size as usize - sys::XDP_PACKET_HEADROOM)
            .min()
            .unwrap_or(0)
    }

    fn mtu(&self) -> usize {
        self.sockets.iter().map(|s| s.mtu).min().unwrap_or(0)
    }

    /// In copy mode (veth, virtio-net) a local sender's frame reaches the
    /// socket with its checksum as the sender's offload left it, and
    /// nothing says so.
    fn checksum_state_unknown(&self) -> bool {
        self.sockets.iter().any(|s| !s.zero_copy)
    }

    #[inline]
    fn rx_burst(&mut self, burst: &mut Vec<AfXdpBuf>) -> usize {
        let before = burst.len();
        let n = self.sockets.len();
        for i in 0..n {
            let idx = (self.rx_next + i) % n;
            let s = &mut self.sockets[idx];
            s.recycle();
            let mut took = 0;
            while burst.len() < burst.capacity() {
                let Some((addr, len)) = s.rx.consume_desc() else {
                    break;
                };
                let frame = addr & !(s.frame_size - 1);
                let ptr = s.frame_ptr(addr);
                burst.push(AfXdpBuf {
                    ptr: NonNull::new(ptr).expect("UMEM pointer is not null"),
                    len,
                    headroom: (addr - frame) as u32,
                    frame,
                    owner: self.id,
                    port: idx as u16,
                    ring: idx as u16,
                });
                took += 1;
            }
            s.rx.release();
            s.stats.rx_packets += took;
            self.out += took as usize;
        }
        self.rx_next = (self.rx_next + 1) % n.max(1);
        burst.len() - before
    }

    #[inline]
    fn tx_burst(&mut self, burst: &mut Vec<AfXdpBuf>) -> usize {
        let mut sent = 0;
        for buf in burst.drain(..) {
            let (port, ring) = (usize::from(buf.port), usize::from(buf.ring));
            if port == ring {
                let s = &mut self.sockets[ring];
                let addr = buf.ptr.as_ptr().addr() - s.umem_base.addr();
                if s.send(addr as u64, buf.len) {
                    // The frame is the kernel's until the completion ring
                    // gives it back.
                    self.out -= 1;
                    sent += 1;
                    continue;
                }
            } else if let Some(out) = self.sockets.get_mut(port) {
                match out.free.pop() {
                    Some(frame) if (buf.len as usize) <= out.frame_size as usize => {
                        let dst = out.frame_ptr(frame);
                        // SAFETY: `frame` was free (nothing points into it);
                        // it holds `frame_size >= len` bytes of the other
                        // socket's UMEM, a mapping apart from `buf`'s.
                        unsafe {
                            std::ptr::copy_nonoverlapping(buf.ptr.as_ptr(), dst, buf.len as usize);
                        }
                        if out.send(frame, buf.len) {
                            out.stats.tx_copied += 1;
                            sent += 1;
                        } else {
                            out.free.push(frame);
                        }
                    }
                    Some(frame) => {
                        out.free.push(frame);
                        out.stats.tx_errors += 1;
                    }
                    None => out.stats.tx_no_frame += 1,
                }
            } else {
                self.sockets[ring].stats.tx_errors += 1;
            }
            self.give_back(&buf);
        }
        for s in &mut self.sockets {
            s.kick();
        }
        sent
    }

    #[inline]
    fn free_burst(&mut self, burst: &mut Vec<AfXdpBuf>) {
        for buf in burst.drain(..) {
            self.sockets[usize::from(buf.ring)].stats.freed += 1;
            self.give_back(&buf);
        }
    }

    fn serve_frontends(&mut self, frontends: &[IpAddr]) {
        self.with_steering(|s| s.set_frontends(frontends));
    }

    fn serve_sources(&mut self, sources: &[IpAddr]) {
        self.with_steering(|s| s.set_sources(sources));
    }

    fn serve_own_addrs(&mut self, addrs: &[IpAddr]) {
        self.with_steering(|s| s.set_own_addrs(addrs));
    }

    fn serve_endpoints(&mut self, endpoints: &[IpAddr]) {
        self.with_steering(|s| s.set_endpoints(endpoints));
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        let mut total = AfXdpStats::default();
        for s in &self.sockets {
            total.add(&s.stats);
        }
        out.extend(total.named());
    }
}

impl Drop for AfXdpIo {
    fn drop(&mut self) {
        if self.out > 0 {
            // Buffers still point into the UMEMs: keep them mapped.
            for s in &mut self.sockets {
                if let Some(umem) = s.umem.take() {
                    umem.leak();
                }
            }
        }
    }
}

fn validate(ifaces: &[&str], opts: &AfXdpOptions) -> Result<(), AfXdpError> {
    let bad = |m: String| Err(AfXdpError::InvalidOptions(m));
    if ifaces.is_empty() || ifaces.len() > usize::from(u16::MAX) {
        return bad(format!("{} interfaces given", ifaces.len()));
    }
    if !matches!(opts.frame_size, 2048 | 4096) {
        return bad(format!(
            "frame_size {} is not 2048 or 4096",
            opts.frame_size
        ));
    }
    if !opts.ring_size.is_power_of_two() || opts.ring_size < 64 {
        return bad(format!(
            "ring_size {} is not a power of two of at least 64",
            opts.ring_size
        ));
    }
    if opts.frames < 2 * opts.ring_size {
        return bad(format!(
            "frames {} must be at least twice ring_size {}",
            opts.frames, opts.ring_size
        ));
    }
    Ok(())
}

fn open_socket(iface: &str, queue: u32, opts: &AfXdpOptions) -> Result<Socket, AfXdpError> {
    let name = common::ifname(iface).ok_or_else(|| AfXdpError::BadName {
        iface: iface.to_owned(),
    })?;
    let ifindex = common::if_nametoindex(&name).map_err(|_| AfXdpError::NotFound {
        iface: iface.to_owned(),
    })?;
    let fd = sys::xdp_socket().map_err(|e| {
        if e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
            AfXdpError::NoAfXdp(e)
        } else {
            sys_err(iface, "socket(AF_XDP)")(e)
        }
    })?;
    // Interface ioctls need a socket of a family that has them.
    let probe = common::packet_socket().map_err(sys_err(iface, "socket(AF_PACKET)"))?;
    let mtu = common::if_mtu(&probe, &name).map_err(sys_err(iface, "ioctl(SIOCGIFMTU)"))?;
    let umem_len = opts.frames as usize * opts.frame_size as usize;
    let umem = common::Mmap::anonymous(umem_len).map_err(sys_err(iface, "mmap(UMEM)"))?;
    let reg = libc::xdp_umem_reg_v1 {
        addr: umem.as_ptr().addr() as u64,
        len: umem_len as u64,
        chunk_size: opts.frame_size,
        headroom: 0,
    };
    common::setsockopt(&fd, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg)
        .map_err(sys_err(iface, "setsockopt(XDP_UMEM_REG)"))?;
    let size = opts.ring_size;
    for (opt, call) in [
        (libc::XDP_UMEM_FILL_RING, "setsockopt(XDP_UMEM_FILL_RING)"),
        (
            libc::XDP_UMEM_COMPLETION_RING,
            "setsockopt(XDP_UMEM_COMPLETION_RING)",
        ),
        (libc::XDP_RX_RING, "setsockopt(XDP_RX_RING)"),
        (libc::XDP_TX_RING, "setsockopt(XDP_TX_RING)"),
    ] {
        common::setsockopt(&fd, libc::SOL_XDP, opt, &size).map_err(sys_err(iface, call))?;
    }
    let off: libc::xdp_mmap_offsets = common::getsockopt(
        &fd,
        libc::SOL_XDP,
        libc::XDP_MMAP_OFFSETS,
        sys::zero_offsets(),
    )
    .map_err(sys_err(iface, "getsockopt(XDP_MMAP_OFFSETS)"))?;
    let rx = sys::Ring::map(&fd, &off.rx, size, sys::RingKind::Rx)
        .map_err(sys_err(iface, "mmap(RX ring)"))?;
    let tx = sys::Ring::map(&fd, &off.tx, size, sys::RingKind::Tx)
        .map_err(sys_err(iface, "mmap(TX ring)"))?;
    let fill = sys::Ring::map(&fd, &off.fr, size, sys::RingKind::Fill)
        .map_err(sys_err(iface, "mmap(fill ring)"))?;
    let comp = sys::Ring::map(&fd, &off.cr, size, sys::RingKind::Completion)
        .map_err(sys_err(iface, "mmap(completion ring)"))?;

    let zero_copy = match opts.zero_copy {
        ZeroCopy::Never => {
            sys::bind(&fd, ifindex, queue, libc::XDP_COPY)
                .map_err(sys_err(iface, "bind(AF_XDP, copy)"))?;
            false
        }
        ZeroCopy::Require => {
            sys::bind(&fd, ifindex, queue, libc::XDP_ZEROCOPY)
                .map_err(sys_err(iface, "bind(AF_XDP, zero-copy)"))?;
            true
        }
        ZeroCopy::Auto => {
            if sys::bind(&fd, ifindex, queue, libc::XDP_ZEROCOPY).is_ok() {
                true
            } else {
                sys::bind(&fd, ifindex, queue, libc::XDP_COPY)
                    .map_err(sys_err(iface, "bind(AF_XDP, copy)"))?;
                false
            }
        }
    };
    let frame_size = u64::from(opts.frame_size);
    let mut socket = Socket {
        iface: iface.to_owned(),
        ifindex,
        queue,
        fd,
        umem_base: umem.as_ptr(),
        umem: Some(umem),
        frame_size,
        rx,
        tx,
        fill,
        comp,
        free: (0..u64::from(opts.frames))
            .rev()
            .map(|i| i * frame_size)
            .collect(),
        zero_copy,
        mtu,
        tx_pending: false,
        stats: AfXdpStats::default(),
    };
    socket.recycle();
    Ok(socket)
}
