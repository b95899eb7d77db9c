//! The `AF_PACKET` backend: Linux packet sockets with memory-mapped rings,
//! one RX and one TX socket per interface.
//!
//! # Receive: `TPACKET_V3` blocks, zero-copy
//!
//! Each interface has an RX ring of `block_count` blocks of `block_size`
//! bytes, mapped into the process. The kernel fills a block with frames and
//! retires it (`TP_STATUS_USER`) when it is full or `block_timeout` after
//! its first frame. [`AfPacketIo::rx_burst`] walks the frames of retired
//! blocks in ring order, without a system call, and hands each out as an
//! [`AfPacketBuf`]: a pointer and length into the block (plus the ring and
//! block it came from), so the worker reads and rewrites the frame in place.
//!
//! **Block lifetime.** A block belongs to user space from the moment the
//! kernel retires it until we store `TP_STATUS_KERNEL` in its header. We do
//! that only when (a) every frame of the block has been handed out and (b)
//! every handed-out buffer of it has come back through
//! [`tx_burst`](PacketIo::tx_burst) or [`free_burst`](PacketIo::free_burst):
//! the backend keeps a per-block count of buffers out, decremented as they
//! come back. So the kernel never writes a frame a buffer still points to.
//! A buffer that is dropped instead of returned pins its block forever (the
//! ring then runs one block short; [`AfPacketIo::outstanding`] shows it). If
//! the backend is dropped while buffers are out, it unbinds its RX socket
//! and leaks the mapping rather than unmapping memory those buffers point
//! to. Buffers must go back to the backend that received them (checked).
//!
//! The kernel moves a VLAN tag out of the frame into the ring's metadata;
//! `rx_burst` puts it back in front of the ethertype (the 4 bytes of room
//! are there: the kernel leaves slack before the frame), so the pipeline
//! sees the frame as it was on the wire.
//!
//! # Transmit: `TPACKET_V2` ring, one copy
//!
//! A second, send-only socket per interface (bound with protocol 0, so it
//! receives nothing) has a TX ring of `tx_frames` slots and
//! `PACKET_QDISC_BYPASS`. `tx_burst` copies each frame into the next free
//! slot (the one copy `AF_PACKET` cannot avoid), marks it
//! `TP_STATUS_SEND_REQUEST`, returns the RX buffer (which may release its
//! block), and kicks each socket once per burst with a non-blocking
//! `sendto(fd, NULL, 0, MSG_DONTWAIT)`. A slot still being sent means the
//! ring is full: the frame is dropped and counted (`tx_ring_full`). If the
//! kick fails for good (link down: `ENETDOWN`, interface gone: `ENXIO`),
//! the frames it left unsent are dropped and counted as `tx_errors`, and the
//! error is kept for [`AfPacketIo::health`].
//!
//! # Several workers on one interface: fanout
//!
//! With [`AfPacketOptions::fanout`], every worker opens the same interfaces
//! and the kernel spreads received frames over the group's sockets
//! (interface `i` uses group id `group + i`, since a group is per device).
//! [`FanoutMode::Hash`] (flow hash) and [`FanoutMode::Cpu`] suit a stateless
//! path. For NAT, where a connection's replies (backend -> client) must
//! reach the worker holding the connection, use [`FanoutMode::Client`] and
//! [`AfPacketIo::set_fanout_program`]: it installs a classic BPF program
//! (`PACKET_FANOUT_CBPF` + `PACKET_FANOUT_DATA`) that returns the low 32
//! bits of the *client* address, which the kernel takes modulo the group
//! size: if the destination is a frontend (service) address the client is
//! the source, otherwise the packet is a reply and the client is the
//! destination. One 802.1Q/802.1ad tag is skipped; IPv4 and IPv6; anything
//! else (ARP, ...) goes to member 0. Both directions of a connection
//! therefore hash the same address to the same member. The program is
//! bounded to 4096 instructions (about 1000 IPv4 or 225 IPv6 frontends);
//! more is an error. Until a program is installed, `Client` sends every
//! frame to member 0.
//!
//! # Errors and health
//!
//! `rx_burst` and `tx_burst` never block and never fail; problems are
//! counted ([`AfPacketStats`]) and latched. A worker polls
//! [`AfPacketIo::health`] about once a second: it reads the sockets'
//! pending errors (the kernel posts `ENETDOWN` when the link goes down),
//! the last TX error, kernel drop counts (`PACKET_STATISTICS`), and whether
//! each interface still exists and is up with carrier. [`AfPacketIo::wait`]
//! blocks in `poll()` for idle workers that prefer that to busy polling.
//!
//! # Offloads left on: partial checksums and super-frames
//!
//! The RX socket asks for a virtio-net header before each frame
//! (`PACKET_VNET_HDR`), which says what the kernel's offloads left
//! undone. A frame whose TCP/UDP checksum a local sender left to offload
//! (`TP_STATUS_CSUMNOTREADY`) is handed out flagged
//! ([`PacketBuf::checksum_partial`]) and the pipeline completes it. A
//! super-frame (a local sender's TSO/GSO, or GRO on the interface: up to
//! 64 KiB where the wire carries one MSS) is cut into the segments its
//! header's `gso_size` says, by [`crate::gso`], before the worker sees it:
//! each segment is written, checksum complete, into a buffer of the port's
//! segment pool (`SEGMENT_SLOTS` of them), and the super-frame's block
//! stays pinned until its last segment has been written. When the pool is
//! empty, cutting resumes at the next `rx_burst`, once the worker has sent
//! or freed segments. A super-frame that cannot be cut (a tunnel, an
//! extension header, a segment longer than a TX slot) is dropped and
//! counted (`rx_gso_refused`), never forwarded malformed. Interfaces'
//! offloads may therefore stay at their defaults.
//!
//! # Overload: shedding in XDP
//!
//! Offered more than the workers can forward, with the interface's receive
//! work on a worker's CPU, the kernel's receive softirq runs first (on
//! every interrupt and every system call the worker makes) and takes each
//! frame through its whole receive path, only to drop it at the full ring:
//! the worker gets almost no CPU and forwarding collapses (receive
//! livelock). With [`AfPacketIo::shed_with`], a ring whose kernel side has
//! filled a quarter of its blocks ahead of the worker raises its
//! interface's [`ShedSignal`] (a word in an XDP program's map, mapped into
//! the process: no system call), and the program (`limpet_shed` in
//! `bpf/steer.c`) drops limpet's frames in the driver until the worker is
//! back within `block_count / 16` blocks. The host's own traffic is never
//! shed: the program tells limpet's frames (to its service, source-NAT
//! and own addresses, from its endpoints, ICMP errors about either) from
//! the rest by the same address maps the `AF_XDP` backend steers with.

pub(crate) mod bpf;
mod raw;
pub(super) mod sys;

pub use bpf::{MAX_INSNS, fanout_client_program, neighbour_filter};
pub use raw::{Offload, RawSocket};

use super::afxdp::{AfXdpError, ShedSignal, XdpSteering};
use super::{PacketBuf, PacketIo};
use crate::gso::{GsoKind, SuperFrame};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Why the backend could not be opened or is unhealthy.
#[derive(Debug, thiserror::Error)]
pub enum AfPacketError {
    #[error("interface {iface} not found")]
    NotFound { iface: String },
    #[error("invalid interface name {iface:?} (empty, over 15 bytes, or with NUL)")]
    BadName { iface: String },
    #[error("interface {iface} is down")]
    LinkDown { iface: String },
    #[error("interface {iface} has no carrier")]
    NoCarrier { iface: String },
    #[error("interface {iface} is gone")]
    InterfaceGone { iface: String },
    #[error("{iface}: {call}: {source}{hint}")]
    Sys {
        iface: String,
        call: &'static str,
        source: io::Error,
        hint: &'static str,
    },
    #[error("invalid AF_PACKET options: {0}")]
    InvalidOptions(String),
    #[error(
        "fanout program for {frontends} frontends needs {insns} instructions, over the limit of 4096"
    )]
    ProgramTooLong { frontends: usize, insns: usize },
    #[error("set_fanout_program needs fanout mode Client (PACKET_FANOUT_CBPF)")]
    NotClientFanout,
    #[error("the shedding program: {0}")]
    Shedding(#[source] AfXdpError),
}

impl AfPacketError {
    fn sys(iface: &str, call: &'static str, source: io::Error) -> AfPacketError {
        let hint = match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => " (needs root or CAP_NET_RAW)",
            Some(libc::ENOPROTOOPT) if call.contains("IGNORE_OUTGOING") => {
                " (needs Linux 4.20 or later)"
            }
            _ => "",
        };
        AfPacketError::Sys {
            iface: iface.to_owned(),
            call,
            source,
            hint,
        }
    }
}

/// How the kernel spreads an interface's frames over a fanout group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FanoutMode {
    /// By flow hash (`PACKET_FANOUT_HASH`).
    #[default]
    Hash,
    /// By the CPU the frame arrived on (`PACKET_FANOUT_CPU`).
    Cpu,
    /// By client address, with the program of
    /// [`AfPacketIo::set_fanout_program`] (`PACKET_FANOUT_CBPF`).
    Client,
}

/// Membership of a fanout group: workers opening the same interfaces with
/// the same group share their frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Group id; interface `i` of the list joins group `group + i`.
    pub group: u16,
    pub mode: FanoutMode,
}

/// Ring geometry and socket settings.
#[derive(Debug, Clone)]
pub struct AfPacketOptions {
    /// Bytes per RX block: a multiple of the page size.
    pub block_size: u32,
    /// RX blocks per interface.
    pub block_count: u32,
    /// Bytes per TX slot (and the RX frame-size hint): a multiple of 16,
    /// with room for a 32-byte header and the longest frame.
    pub frame_size: u32,
    /// How long the kernel fills a block before handing it over anyway
    /// (millisecond granularity, at least 1 ms).
    pub block_timeout: Duration,
    /// TX slots per interface (rounded up to whole blocks).
    pub tx_frames: u32,
    pub fanout: Option<Fanout>,
    /// Receive frames for any MAC address (`PACKET_MR_PROMISC`).
    pub promisc: bool,
    /// How long [`AfPacketIo::wait`] blocks by default.
    pub poll_timeout: Duration,
    /// Open even if an interface is down or without carrier.
    pub allow_link_down: bool,
}

impl Default for AfPacketOptions {
    fn default() -> Self {
        Self {
            block_size: 1 << 17,
            block_count: 32,
            frame_size: 2048,
            block_timeout: Duration::from_millis(1),
            tx_frames: 1024,
            fanout: None,
            promisc: true,
            poll_timeout: Duration::from_millis(10),
            allow_link_down: false,
        }
    }
}

/// Counters of one interface (or, from [`AfPacketIo::stats`], all of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfPacketStats {
    /// Frames handed to the worker.
    pub rx_packets: u64,
    /// Blocks taken from the kernel.
    pub rx_blocks: u64,
    /// Blocks given back to the kernel.
    pub rx_blocks_released: u64,
    /// Frames the kernel dropped because the ring was full
    /// (`PACKET_STATISTICS`; updated by `health` and `stats`).
    pub rx_dropped_by_kernel: u64,
    /// Times the kernel found the ring full (`tp_freeze_q_cnt`).
    pub rx_ring_freezes: u64,
    /// Blocks flagged `TP_STATUS_LOSING`: retired while kernel drops were
    /// pending (the kernel flags every block until the drop count is read),
    /// so a sign of loss; `rx_dropped_by_kernel` says how much.
    pub rx_losing_blocks: u64,
    /// Frames queued on the TX ring and not failed.
    pub tx_packets: u64,
    /// Frames dropped by a failed send (link down, interface gone) or sent
    /// to a port that does not exist.
    pub tx_errors: u64,
    /// Frames dropped because no TX slot was free.
    pub tx_ring_full: u64,
    /// Frames dropped for being longer than a TX slot.
    pub tx_too_long: u64,
    /// Buffers returned unsent through `free_burst`.
    pub freed: u64,
    /// Super-frames (segmentation or receive offload) cut into segments.
    pub rx_gso_frames: u64,
    /// Segments cut from them (counted in `rx_packets` too).
    pub rx_gso_segments: u64,
    /// Super-frames dropped because they could not be cut.
    pub rx_gso_refused: u64,
    /// Times this ring backed up and raised the interface's shedding
    /// switch (see the module docs).
    pub rx_shed_raised: u64,
    /// Frames the shedding program dropped in the driver (reported by the
    /// worker that keeps the program, so counted once per interface).
    pub rx_shed_dropped: u64,
}

impl AfPacketStats {
    fn add(&mut self, o: &AfPacketStats) {
        self.rx_packets += o.rx_packets;
        self.rx_blocks += o.rx_blocks;
        self.rx_blocks_released += o.rx_blocks_released;
        self.rx_dropped_by_kernel += o.rx_dropped_by_kernel;
        self.rx_ring_freezes += o.rx_ring_freezes;
        self.rx_losing_blocks += o.rx_losing_blocks;
        self.tx_packets += o.tx_packets;
        self.tx_errors += o.tx_errors;
        self.tx_ring_full += o.tx_ring_full;
        self.tx_too_long += o.tx_too_long;
        self.freed += o.freed;
        self.rx_gso_frames += o.rx_gso_frames;
        self.rx_gso_segments += o.rx_gso_segments;
        self.rx_gso_refused += o.rx_gso_refused;
        self.rx_shed_raised += o.rx_shed_raised;
        self.rx_shed_dropped += o.rx_shed_dropped;
    }

    /// Every counter by name, for the admin API's `limpet_io_total`.
    pub fn named(&self) -> [(&'static str, u64); 16] {
        [
            ("rx_packets", self.rx_packets),
            ("rx_blocks", self.rx_blocks),
            ("rx_blocks_released", self.rx_blocks_released),
            ("rx_dropped_by_kernel", self.rx_dropped_by_kernel),
            ("rx_ring_freezes", self.rx_ring_freezes),
            ("rx_losing_blocks", self.rx_losing_blocks),
            ("tx_packets", self.tx_packets),
            ("tx_errors", self.tx_errors),
            ("tx_ring_full", self.tx_ring_full),
            ("tx_too_long", self.tx_too_long),
            ("freed", self.freed),
            ("rx_gso_frames", self.rx_gso_frames),
            ("rx_gso_segments", self.rx_gso_segments),
            ("rx_gso_refused", self.rx_gso_refused),
            ("rx_shed_raised", self.rx_shed_raised),
            ("rx_shed_dropped", self.rx_shed_dropped),
        ]
    }
}

/// One received frame, in place in its RX ring block.
#[derive(Debug)]
pub struct AfPacketBuf {
    ptr: NonNull<u8>,
    len: u32,
    /// Bytes of this frame's slot before `ptr`: its `tpacket3_hdr` and the
    /// slack after it, free once the header has been read.
    headroom: u16,
    /// Block index in the ring of port `ring`, or [`SEGMENT`] plus the
    /// index of a segment pool buffer.
    block: u32,
    /// Which backend received it.
    owner: u32,
    port: u16,
    ring: u16,
    /// `TP_STATUS_CSUMNOTREADY` (0 or 1): see [`PacketBuf::checksum_partial`].
    /// Not a `bool`, whose invalid values would take over from `ptr`'s null
    /// as the niche of `Option<AfPacketBuf>` (see `MemoryPacket`).
    partial: u8,
}

// SAFETY: the buffer is the sole handle on its frame (nothing else reads or
// writes it until it comes back to its backend), and the frame's memory
// stays mapped and user-owned wherever the buffer goes (see the module
// docs), so moving it to another thread is sound.
unsafe impl Send for AfPacketBuf {}

impl PacketBuf for AfPacketBuf {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        // The ring stays mapped while any buffer is out (the backend leaks it
        // rather than unmap it), and a block stays user-owned until every
        // buffer from it is returned.
        // SAFETY: `ptr..ptr + len` is one frame of such a block, so the kernel
        // does not write it meanwhile; frames never overlap and this buffer
        // is their only handle, borrowed here.
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
    fn checksum_partial(&self) -> bool {
        self.partial != 0
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
        if n > self.headroom {
            return false;
        }
        // `take_frame` read the frame header before handing the buffer out
        // and nothing reads it again (the kernel only looks at the block's
        // status word, and the block is ours until every buffer from it
        // comes back), so the slot's bytes before the frame are ours.
        self.ptr = NonNull::new(self.ptr.as_ptr().wrapping_sub(usize::from(n)))
            .expect("ring pointer is not null");
        self.headroom -= n;
        self.len += u32::from(n);
        true
    }

    #[inline]
    fn truncate(&mut self, len: usize) {
        if len < self.len as usize {
            self.len = len as u32;
        }
    }
}

/// Bit of [`AfPacketBuf::block`] marking a segment pool buffer.
const SEGMENT: u32 = 1 << 31;
/// Segment buffers per port: a 64 KiB super-frame cuts into about 45
/// segments, and a worker returns a burst's buffers before asking for more.
const SEGMENT_SLOTS: usize = 128;
/// Room before a segment, for what the pipeline prepends (tunnel headers,
/// the headers of an ICMP error quoting the packet).
const SEGMENT_HEADROOM: usize = 128;
/// `struct virtio_net_hdr`, which `PACKET_VNET_HDR` puts before each frame.
const VNET_HDR_LEN: usize = 10;
const VNET_GSO_TCPV4: u8 = 1;
const VNET_GSO_TCPV6: u8 = 4;
const VNET_GSO_UDP_L4: u8 = 5;
const VNET_GSO_ECN: u8 = 0x80;

/// Offsets in a `tpacket_block_desc` / `tpacket2_hdr`.
const BLOCK_STATUS: usize = 8;
const BLOCK_HDR_V1: usize = 8;
/// Where frame data starts in a `TPACKET_V2` TX slot.
const TX_DATA: usize = 32;
const TPACKET3_HDR_LEN: usize = 48;

/// The block being walked.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    block: usize,
    left: u32,
    /// Offset of the next frame header from the block start.
    offset: usize,
}

/// A super-frame being cut: it stays in its block (pinned by one count in
/// `Port::out`) until its last segment is written.
#[derive(Debug, Clone, Copy)]
struct Pending {
    frame: NonNull<u8>,
    len: usize,
    block: usize,
    plan: SuperFrame,
    next: usize,
}

/// The buffers segments are written to, allocated once when the port opens.
struct SegmentPool {
    /// `SEGMENT_SLOTS` buffers of `slot_size` bytes, from `Box::into_raw`:
    /// a raw pointer, so buffers handed out stay valid however the pool
    /// moves; freed on drop unless leaked (see `AfPacketIo`'s `Drop`).
    base: NonNull<u8>,
    slot_size: usize,
    /// Longest segment, Ethernet header included: what a TX slot holds.
    room: usize,
    /// Indices of free buffers (capacity `SEGMENT_SLOTS`: never grows).
    free: Vec<u16>,
    pending: Option<Pending>,
    leaked: bool,
}

impl SegmentPool {
    fn new(tx_room: usize) -> SegmentPool {
        let slot_size = (SEGMENT_HEADROOM + tx_room).next_multiple_of(64);
        let memory = vec![0u8; slot_size * SEGMENT_SLOTS].into_boxed_slice();
        let base = NonNull::new(Box::into_raw(memory).cast::<u8>()).expect("Box is not null");
        SegmentPool {
            base,
            slot_size,
            room: tx_room,
            free: (0..SEGMENT_SLOTS as u16).rev().collect(),
            pending: None,
            leaked: false,
        }
    }
}

impl Drop for SegmentPool {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        let slice =
            std::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), self.slot_size * SEGMENT_SLOTS);
        // SAFETY: `base` came from `Box::into_raw` of a boxed slice of this
        // length in `new`, and is freed only here, once; no buffer points
        // into it (otherwise `leaked` is set).
        drop(unsafe { Box::from_raw(slice) });
    }
}

struct Port {
    iface: String,
    ifindex: u32,
    rx_fd: OwnedFd,
    tx_fd: OwnedFd,
    rx_map: Option<sys::Mmap>,
    /// Owns the TX mapping (unmapped on drop).
    _tx_map: sys::Mmap,
    rx_base: *mut u8,
    tx_base: *mut u8,
    block_size: usize,
    block_count: usize,
    next_block: usize,
    cursor: Option<Cursor>,
    /// Buffers out, per block.
    out: Box<[u32]>,
    out_total: usize,
    held_blocks: usize,
    tx_block_size: usize,
    tx_frame_size: usize,
    /// The interface's MTU, read when opened.
    mtu: usize,
    tx_frames_per_block: usize,
    tx_slots: usize,
    tx_head: usize,
    /// Frames written since the last kick (or left by a transient failure).
    tx_unkicked: bool,
    tx_error: Option<io::Error>,
    segments: SegmentPool,
    /// The interface's shedding switch, with whether this ring holds it
    /// raised.
    shed: Option<ShedSignal>,
    shedding: bool,
    stats: AfPacketStats,
}

impl Port {
    #[inline(always)]
    fn block_ptr(&self, block: usize) -> *mut u8 {
        self.rx_base.wrapping_add(block * self.block_size)
    }

    #[allow(clippy::cast_ptr_alignment)] // ring layout: page-aligned blocks, 16-byte-aligned headers
    #[inline(always)]
    fn block_status(&self, block: usize) -> &AtomicU32 {
        let p = self
            .block_ptr(block)
            .wrapping_add(BLOCK_STATUS)
            .cast::<u32>();
        // SAFETY: `p` is the 4-byte-aligned `block_status` word of a block
        // header inside the live RX mapping; the kernel accesses it
        // atomically too (it is the ownership handshake).
        unsafe { AtomicU32::from_ptr(p) }
    }

    #[inline(always)]
    fn release_block(&mut self, block: usize) {
        self.block_status(block)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.held_blocks -= 1;
        self.stats.rx_blocks_released += 1;
    }

    #[allow(clippy::cast_ptr_alignment)] // ring layout: page-aligned blocks, 16-byte-aligned headers
    /// Takes the next retired block, if the kernel has one for us.
    #[inline]
    fn open_block(&mut self) -> bool {
        let block = self.next_block;
        let status = self.block_status(block).load(Ordering::Acquire);
        if status & libc::TP_STATUS_USER == 0 {
            return false;
        }
        let hdr_ptr = self
            .block_ptr(block)
            .wrapping_add(BLOCK_HDR_V1)
            .cast::<libc::tpacket_hdr_v1>();
        // SAFETY: the block is ours (TP_STATUS_USER, acquired above), its
        // header lies inside the mapping at an 8-byte-aligned offset, and the
        // kernel does not write it until we release the block.
        let hdr = unsafe { hdr_ptr.read() };
        self.next_block = (block + 1) % self.block_count;
        self.held_blocks += 1;
        self.stats.rx_blocks += 1;
        if self.shed.is_some() {
            self.watch_backlog(block);
        }
        if status & libc::TP_STATUS_LOSING != 0 {
            self.stats.rx_losing_blocks += 1;
        }
        if hdr.num_pkts == 0 {
            self.release_block(block);
        } else {
            self.cursor = Some(Cursor {
                block,
                left: hdr.num_pkts,
                offset: hdr.offset_to_first_pkt as usize,
            });
        }
        true
    }

    /// Raises the shedding switch when the kernel has filled a quarter of
    /// the ring ahead of the block just opened (this worker is that far
    /// behind), and lowers it once fewer than `block_count / 16` blocks
    /// wait: a band wide enough that the switch flips every few
    /// milliseconds under overload, not every block. Reads two status
    /// words; no system call.
    #[inline]
    fn watch_backlog(&mut self, opened: usize) {
        let ahead = |n: usize| (opened + n.max(1)) % self.block_count;
        let retired =
            |b: usize| self.block_status(b).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0;
        let Some(shed) = &self.shed else { return };
        if !self.shedding {
            if retired(ahead(self.block_count / 4)) {
                shed.raise();
                self.shedding = true;
                self.stats.rx_shed_raised += 1;
            }
        } else if !retired(ahead(self.block_count / 16)) {
            shed.lower();
            self.shedding = false;
        }
    }

    #[allow(clippy::cast_ptr_alignment)] // ring layout: page-aligned blocks, 16-byte-aligned headers
    /// Hands out the cursor's next frame.
    #[inline]
    fn take_frame(&mut self, port: u16, owner: u32) -> Option<AfPacketBuf> {
        let mut cur = self.cursor?;
        let block_ptr = self.block_ptr(cur.block);
        let hdr_ptr = block_ptr
            .wrapping_add(cur.offset)
            .cast::<libc::tpacket3_hdr>();
        // SAFETY: the frame header lies inside our block (the kernel wrote
        // `offset_to_first_pkt` / `tp_next_offset` within it) at a
        // TPACKET_ALIGNMENT boundary; the block is ours until released.
        let hdr = unsafe { hdr_ptr.read() };
        let mut mac = cur.offset + usize::from(hdr.tp_mac);
        let mut len = hdr.tp_snaplen as usize;
        let fits = mac + len <= self.block_size;
        // The virtio-net header ends where the frame starts; read it before
        // the VLAN tag goes back over its last bytes.
        let vnet = if fits && usize::from(hdr.tp_mac) >= TPACKET3_HDR_LEN + VNET_HDR_LEN {
            let vnet_ptr = block_ptr
                .wrapping_add(mac - VNET_HDR_LEN)
                .cast::<[u8; 10]>();
            // SAFETY: the 10 bytes before the frame lie in our block, after
            // the frame header (checked just above); unaligned read.
            unsafe { vnet_ptr.read_unaligned() }
        } else {
            [0; VNET_HDR_LEN]
        };
        if fits
            && hdr.tp_status & libc::TP_STATUS_VLAN_VALID != 0
            && len >= 12
            && usize::from(hdr.tp_mac) >= TPACKET3_HDR_LEN + 4
        {
            // Put the tag back: move the MAC addresses 4 bytes down (over
            // the unused slack after the frame header) and write the tag.
            let tpid = if hdr.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                hdr.hv1.tp_vlan_tpid
            } else {
                0x8100
            };
            let tci = hdr.hv1.tp_vlan_tci as u16;
            let src = block_ptr.wrapping_add(mac);
            let dst = block_ptr.wrapping_add(mac - 4);
            // SAFETY: both ranges (12 bytes at `mac` and at `mac - 4`) lie in
            // our block, after the frame header; `copy` allows overlap.
            unsafe { std::ptr::copy(src, dst, 12) };
            let tag_ptr = block_ptr.wrapping_add(mac + 8).cast::<[u8; 4]>();
            let [t0, t1] = tpid.to_be_bytes();
            let [c0, c1] = tci.to_be_bytes();
            // SAFETY: 4 bytes at `mac + 8` lie in our block; unaligned write.
            unsafe { tag_ptr.write_unaligned([t0, t1, c0, c1]) };
            mac -= 4;
            len += 4;
        }
        let headroom = mac.saturating_sub(cur.offset).min(usize::from(u16::MAX)) as u16;
        cur.left -= 1;
        cur.offset += hdr.tp_next_offset as usize;
        self.cursor = (cur.left > 0).then_some(cur);
        if !fits {
            // Not expected from the kernel; skip rather than hand out memory
            // past the block. The block is released when walked.
            if self.cursor.is_none() && self.out[cur.block] == 0 {
                self.release_block(cur.block);
            }
            return None;
        }
        let gso = vnet[1] & !VNET_GSO_ECN;
        if gso != 0 {
            let segment_size = u16::from_ne_bytes([vnet[4], vnet[5]]);
            let kind = match gso {
                VNET_GSO_TCPV4 | VNET_GSO_TCPV6 => Some(GsoKind::Tcp),
                VNET_GSO_UDP_L4 => Some(GsoKind::Udp),
                _ => None,
            };
            let frame = block_ptr.wrapping_add(mac);
            // SAFETY: `mac..mac + len` lies in our block (`fits`), which the
            // kernel does not write until released; read-only here.
            let bytes = unsafe { std::slice::from_raw_parts(frame, len) };
            let plan = kind.and_then(|kind| {
                SuperFrame::parse(bytes, kind, segment_size, self.segments.room).ok()
            });
            if let Some(plan) = plan {
                self.out[cur.block] += 1;
                self.stats.rx_gso_frames += 1;
                self.segments.pending = Some(Pending {
                    frame: NonNull::new(frame).expect("ring pointer is not null"),
                    len,
                    block: cur.block,
                    plan,
                    next: 0,
                });
            } else {
                self.stats.rx_gso_refused += 1;
                if self.cursor.is_none() && self.out[cur.block] == 0 {
                    self.release_block(cur.block);
                }
            }
            return None;
        }
        self.out[cur.block] += 1;
        self.out_total += 1;
        self.stats.rx_packets += 1;
        Some(AfPacketBuf {
            ptr: NonNull::new(block_ptr.wrapping_add(mac)).expect("ring pointer is not null"),
            len: len as u32,
            headroom,
            block: cur.block as u32,
            owner,
            port,
            ring: port,
            // A local sender's checksum offload (veth, a host's own
            // traffic): the kernel hands the frame over before any device
            // computed the checksum.
            partial: u8::from(hdr.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0),
        })
    }

    /// A buffer of this port came back.
    #[inline(always)]
    fn give_back(&mut self, block: u32) {
        self.out_total -= 1;
        if block & SEGMENT != 0 {
            self.segments.free.push((block & !SEGMENT) as u16);
        } else {
            self.unpin(block as usize);
        }
    }

    /// One user of `block` (a buffer, or a super-frame being cut) is done.
    #[inline(always)]
    fn unpin(&mut self, block: usize) {
        self.out[block] -= 1;
        if self.out[block] == 0 && self.cursor.is_none_or(|c| c.block != block) {
            self.release_block(block);
        }
    }

    /// Cuts the next segment of the pending super-frame into a pool buffer.
    /// None when nothing is pending or no buffer is free (check `pending`).
    #[cold]
    fn next_segment(&mut self, port: u16, owner: u32) -> Option<AfPacketBuf> {
        let mut pending = self.segments.pending?;
        let slot = self.segments.free.pop()?;
        let pool = &self.segments;
        let buf = pool
            .base
            .as_ptr()
            .wrapping_add(usize::from(slot) * pool.slot_size + SEGMENT_HEADROOM);
        // SAFETY: the super-frame lies in its block, pinned (one count in
        // `out`) since `take_frame`, so the kernel does not write it; no
        // buffer was handed out for it, so nothing else borrows it.
        let frame = unsafe { std::slice::from_raw_parts(pending.frame.as_ptr(), pending.len) };
        // SAFETY: slot `slot` was free, so no buffer points into it; its
        // bytes after the headroom lie inside the pool's allocation, a
        // different one from the ring's.
        let out = unsafe { std::slice::from_raw_parts_mut(buf, pool.slot_size - SEGMENT_HEADROOM) };
        let len = pending.plan.write_segment(frame, pending.next, out);
        pending.next += 1;
        if pending.next >= pending.plan.segments() || len == 0 {
            self.segments.pending = None;
            self.unpin(pending.block);
        } else {
            self.segments.pending = Some(pending);
        }
        if len == 0 {
            // Not expected: the plan was checked against the room.
            self.segments.free.push(slot);
            return None;
        }
        self.out_total += 1;
        self.stats.rx_packets += 1;
        self.stats.rx_gso_segments += 1;
        Some(AfPacketBuf {
            ptr: NonNull::new(buf).expect("pool pointer is not null"),
            len: len as u32,
            headroom: SEGMENT_HEADROOM as u16,
            block: SEGMENT | u32::from(slot),
            owner,
            port,
            ring: port,
            partial: 0,
        })
    }

    #[inline(always)]
    fn tx_slot(&self, slot: usize) -> *mut u8 {
        let block = slot / self.tx_frames_per_block;
        let within = slot % self.tx_frames_per_block;
        self.tx_base
            .wrapping_add(block * self.tx_block_size + within * self.tx_frame_size)
    }

    #[allow(clippy::cast_ptr_alignment)] // ring layout: page-aligned blocks, 16-byte-aligned headers
    #[inline(always)]
    fn tx_status(&self, slot: usize) -> &AtomicU32 {
        let p = self.tx_slot(slot).cast::<u32>();
        // SAFETY: `p` is the aligned `tp_status` word at the start of a TX
        // slot in the live TX mapping; the kernel accesses it atomically.
        unsafe { AtomicU32::from_ptr(p) }
    }

    #[allow(clippy::cast_ptr_alignment)] // ring layout: page-aligned blocks, 16-byte-aligned headers
    /// Copies `frame` into the next TX slot. Returns false (counted) if it
    /// could not.
    #[inline]
    fn queue(&mut self, frame: &[u8]) -> bool {
        if frame.len() > self.tx_frame_size - TX_DATA {
            self.stats.tx_too_long += 1;
            return false;
        }
        let slot = self.tx_head;
        if self.tx_status(slot).load(Ordering::Acquire) != libc::TP_STATUS_AVAILABLE {
            self.stats.tx_ring_full += 1;
            return false;
        }
        let base = self.tx_slot(slot);
        let data = base.wrapping_add(TX_DATA);
        // SAFETY: the slot is available, so the kernel does not touch it
        // until we mark it; `frame.len()` bytes from `data` fit in the slot
        // (checked above); `frame` is a different mapping or buffer.
        unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), data, frame.len()) };
        let len_ptr = base.wrapping_add(4).cast::<u32>();
        // SAFETY: `tp_len` is the aligned word at offset 4 of the slot's
        // `tpacket2_hdr`, ours while the slot is available.
        unsafe { len_ptr.write(frame.len() as u32) };
        self.tx_status(slot)
            .store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.tx_head = (slot + 1) % self.tx_slots;
        self.tx_unkicked = true;
        self.stats.tx_packets += 1;
        true
    }

    /// Sends what was queued. On a lasting failure the frames the kernel
    /// did not take are withdrawn and counted, so the ring stays usable.
    fn kick(&mut self) {
        if !self.tx_unkicked {
            return;
        }
        match sys::kick(&self.tx_fd) {
            Ok(()) => self.tx_unkicked = false,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::ENOBUFS | libc::EINTR)
                ) => {}
            Err(e) => {
                self.tx_unkicked = false;
                // The kernel takes SEND_REQUEST slots in order from its own
                // head and stops at the first other one, and it only does so
                // inside a send call, so the unsent slots are exactly the run
                // before our head; rewind over it to stay in step.
                let mut dropped = 0;
                for _ in 0..self.tx_slots {
                    let prev = (self.tx_head + self.tx_slots - 1) % self.tx_slots;
                    let st = self.tx_status(prev);
                    if st
                        .compare_exchange(
                            libc::TP_STATUS_SEND_REQUEST,
                            libc::TP_STATUS_AVAILABLE,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_err()
                    {
                        break;
                    }
                    self.tx_head = prev;
                    dropped += 1;
                }
                self.stats.tx_errors += dropped;
                self.stats.tx_packets -= dropped.min(self.stats.tx_packets);
                self.tx_error = Some(e);
            }
        }
    }

    fn refresh_kernel_stats(&mut self) -> Result<(), AfPacketError> {
        let s = sys::packet_stats(&self.rx_fd)
            .map_err(|e| AfPacketError::sys(&self.iface, "getsockopt(PACKET_STATISTICS)", e))?;
        self.stats.rx_dropped_by_kernel += u64::from(s.tp_drops);
        self.stats.rx_ring_freezes += u64::from(s.tp_freeze_q_cnt);
        Ok(())
    }

    fn link_state(&self) -> Result<(), AfPacketError> {
        let gone = || AfPacketError::InterfaceGone {
            iface: self.iface.clone(),
        };
        let name = sys::if_indextoname(self.ifindex).ok_or_else(gone)?;
        let name = sys::ifname(&name).ok_or_else(gone)?;
        let flags = sys::if_flags(&self.rx_fd, &name).map_err(|_| gone())?;
        check_flags(&self.iface, flags)
    }

    fn health(&mut self) -> Result<(), AfPacketError> {
        self.refresh_kernel_stats()?;
        for (fd, call) in [
            (&self.rx_fd, "RX socket error"),
            (&self.tx_fd, "TX socket error"),
        ] {
            if let Some(e) = sys::take_socket_error(fd)
                .map_err(|e| AfPacketError::sys(&self.iface, "getsockopt(SO_ERROR)", e))?
            {
                self.link_state()?;
                return Err(AfPacketError::sys(&self.iface, call, e));
            }
        }
        if let Some(e) = self.tx_error.take() {
            self.link_state()?;
            return Err(AfPacketError::sys(&self.iface, "sendto (TX ring kick)", e));
        }
        // Retry frames a transient failure left queued.
        self.kick();
        self.link_state()
    }
}

/// Whether `iface` exists, is up and has carrier: what
/// [`AfPacketIo::open`] requires (unless `allow_link_down`), asked without
/// opening anything, so a caller can wait for a link that comes up late.
pub fn link_state(iface: &str) -> Result<(), AfPacketError> {
    let name = sys::ifname(iface).ok_or_else(|| AfPacketError::BadName {
        iface: iface.to_owned(),
    })?;
    sys::if_nametoindex(&name).map_err(|_| AfPacketError::NotFound {
        iface: iface.to_owned(),
    })?;
    let fd = sys::packet_socket().map_err(|e| AfPacketError::sys(iface, "socket(AF_PACKET)", e))?;
    let flags = sys::if_flags(&fd, &name)
        .map_err(|e| AfPacketError::sys(iface, "ioctl(SIOCGIFFLAGS)", e))?;
    check_flags(iface, flags)
}

fn check_flags(iface: &str, flags: i32) -> Result<(), AfPacketError> {
    if flags & libc::IFF_UP == 0 {
        return Err(AfPacketError::LinkDown {
            iface: iface.to_owned(),
        });
    }
    if flags & libc::IFF_RUNNING == 0 {
        return Err(AfPacketError::NoCarrier {
            iface: iface.to_owned(),
        });
    }
    Ok(())
}

/// An `AF_PACKET` backend over one or more interfaces (ports `0..n` in the
/// order given to [`open`](Self::open)). See the module docs.
pub struct AfPacketIo {
    ports: Vec<Port>,
    id: u32,
    rx_next_port: usize,
    fanout: Option<Fanout>,
    poll_timeout: Duration,
    pollfds: Vec<libc::pollfd>,
    /// A fanout program that could not be installed, for `health` to report.
    fanout_error: Option<AfPacketError>,
    /// Where source-translated connections' replies come back to (see
    /// [`PacketIo::serve_sources`]), for the fanout program.
    sources: Vec<IpAddr>,
    /// The shedding program, kept by one worker, which keeps its address
    /// maps current at snapshot swaps.
    shedding: Option<XdpSteering>,
    shedding_error: Option<AfXdpError>,
}

// SAFETY: the raw pointers are into mappings this value owns (and unmaps
// only on drop); the kernel side is synchronised through the ring status
// words; nothing is shared with other threads, so the whole may move to
// the worker's thread.
unsafe impl Send for AfPacketIo {}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

impl std::fmt::Debug for AfPacketIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfPacketIo")
            .field(
                "ifaces",
                &self
                    .ports
                    .iter()
                    .map(|p| p.iface.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("fanout", &self.fanout)
            .finish_non_exhaustive()
    }
}

impl AfPacketIo {
    /// Opens one RX and one TX socket with rings on each of `ifaces`.
    pub fn open(ifaces: &[&str], opts: &AfPacketOptions) -> Result<AfPacketIo, AfPacketError> {
        validate(ifaces, opts)?;
        let mut ports = Vec::with_capacity(ifaces.len());
        for (i, iface) in ifaces.iter().enumerate() {
            ports.push(open_port(iface, i as u16, opts)?);
        }
        let pollfds = ports
            .iter()
            .map(|p| libc::pollfd {
                fd: p.rx_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Ok(AfPacketIo {
            ports,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            rx_next_port: 0,
            fanout: opts.fanout,
            poll_timeout: opts.poll_timeout,
            pollfds,
            fanout_error: None,
            sources: Vec::new(),
            shedding: None,
            shedding_error: None,
        })
    }

    /// Connects each port to its interface's shedding switch (a program
    /// attached with [`XdpSteering::attach_shedding`] on the same
    /// interfaces): from now on a ring that backs up makes the driver drop
    /// limpet's frames until it has caught up. Every worker on the
    /// interfaces calls this; one of them also keeps the program
    /// ([`keep_shedding`](Self::keep_shedding)).
    pub fn shed_with(&mut self, program: &XdpSteering) {
        for p in &mut self.ports {
            p.shed = program.shed_signal(&p.iface);
        }
    }

    /// Keeps the shedding program (detached when this backend is dropped)
    /// and its address maps current from the snapshots this worker is
    /// given: what counts as limpet's traffic, so the host's own is never
    /// shed.
    pub fn keep_shedding(&mut self, program: XdpSteering) {
        self.shed_with(&program);
        self.shedding = Some(program);
    }

    /// Whether any port's switch is raised now.
    pub fn shedding_now(&self) -> bool {
        self.ports
            .iter()
            .any(|p| p.shed.as_ref().is_some_and(ShedSignal::raised))
    }

    fn with_shedding(&mut self, f: impl FnOnce(&mut XdpSteering) -> Result<(), AfXdpError>) {
        if let Some(s) = &mut self.shedding
            && let Err(e) = f(s)
        {
            self.shedding_error = Some(e);
        }
    }

    /// Number of ports (interfaces).
    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    /// The interface name of `port`.
    pub fn iface(&self, port: u16) -> Option<&str> {
        self.ports.get(usize::from(port)).map(|p| p.iface.as_str())
    }

    /// The kernel interface index of `port`.
    pub fn ifindex(&self, port: u16) -> Option<u32> {
        self.ports.get(usize::from(port)).map(|p| p.ifindex)
    }

    /// Installs the client-address fanout program (see the module docs) on
    /// every interface's group. Any member of a group may install it; it
    /// applies to the whole group.
    pub fn set_fanout_program(&self, frontends: &[IpAddr]) -> Result<(), AfPacketError> {
        if !matches!(
            self.fanout,
            Some(Fanout {
                mode: FanoutMode::Client,
                ..
            })
        ) {
            return Err(AfPacketError::NotClientFanout);
        }
        let program = bpf::fanout_client_program(frontends, &self.sources).map_err(|e| {
            AfPacketError::ProgramTooLong {
                frontends: frontends.len(),
                insns: e.insns,
            }
        })?;
        for p in &self.ports {
            sys::attach_program(
                &p.rx_fd,
                libc::SOL_PACKET,
                libc::PACKET_FANOUT_DATA,
                &program,
            )
            .map_err(|e| AfPacketError::sys(&p.iface, "setsockopt(PACKET_FANOUT_DATA)", e))?;
        }
        Ok(())
    }

    /// Checks every interface: pending socket errors (the kernel posts
    /// `ENETDOWN` when a link goes down), the last failed TX kick, whether
    /// it still exists, is up and has carrier. Also refreshes the kernel's
    /// drop counters and retries TX frames a transient failure left queued.
    /// Meant to be called about once a second.
    pub fn health(&mut self) -> Result<(), AfPacketError> {
        if let Some(e) = self.fanout_error.take() {
            return Err(e);
        }
        self.with_shedding(|s| s.expire(std::time::Instant::now()));
        if let Some(e) = self.shedding_error.take() {
            return Err(AfPacketError::Shedding(e));
        }
        let mut first = None;
        for p in &mut self.ports {
            if let Err(e) = p.health() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Sends frames the caller built (a traffic generator's), copied into
    /// `port`'s TX ring, with one kick at the end. Returns how many the
    /// ring took; the rest were counted as `tx_ring_full` / `tx_too_long`.
    pub fn tx_frames<'a>(
        &mut self,
        port: u16,
        frames: impl IntoIterator<Item = &'a [u8]>,
    ) -> usize {
        let Some(out) = self.ports.get_mut(usize::from(port)) else {
            return 0;
        };
        let mut queued: usize = 0;
        for frame in frames {
            if out.queue(frame) {
                queued += 1;
            }
        }
        let before = out.stats.tx_errors;
        out.kick();
        queued.saturating_sub((out.stats.tx_errors - before) as usize)
    }

    /// Counters summed over all interfaces (refreshing the kernel's drop
    /// counts).
    pub fn stats(&mut self) -> AfPacketStats {
        let mut total = AfPacketStats::default();
        for p in &mut self.ports {
            let _ = p.refresh_kernel_stats();
            total.add(&p.stats);
        }
        total
    }

    /// Counters of one interface (as of the last refresh).
    pub fn port_stats(&self, port: u16) -> Option<AfPacketStats> {
        self.ports.get(usize::from(port)).map(|p| p.stats)
    }

    /// Buffers handed out and not yet returned.
    pub fn outstanding(&self) -> usize {
        self.ports.iter().map(|p| p.out_total).sum()
    }

    /// RX blocks taken from the kernel and not yet given back.
    pub fn held_blocks(&self) -> usize {
        self.ports.iter().map(|p| p.held_blocks).sum()
    }

    /// For an idle worker: returns at once if a block is ready, otherwise
    /// `poll()`s the RX sockets for up to `timeout` (default
    /// `poll_timeout`). `Ok(true)`: frames may be ready. A socket error
    /// (link down) is returned, and an interface that is down or gone too,
    /// so a worker that blocks here does not sleep through it.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, AfPacketError> {
        for p in &mut self.ports {
            if p.cursor.is_some()
                || p.segments.pending.is_some()
                || p.block_status(p.next_block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
            {
                return Ok(true);
            }
        }
        for p in &mut self.pollfds {
            p.revents = 0;
        }
        let n = sys::poll(&mut self.pollfds, timeout.unwrap_or(self.poll_timeout))
            .map_err(|e| AfPacketError::sys(&self.ports[0].iface, "poll", e))?;
        if n == 0 {
            return Ok(false);
        }
        for (p, fd) in self.ports.iter_mut().zip(&self.pollfds) {
            if fd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                p.link_state()?;
                if let Some(e) = sys::take_socket_error(&p.rx_fd)
                    .map_err(|e| AfPacketError::sys(&p.iface, "getsockopt(SO_ERROR)", e))?
                {
                    return Err(AfPacketError::sys(&p.iface, "RX socket error", e));
                }
            }
        }
        Ok(true)
    }

    #[inline(always)]
    fn give_back(&mut self, buf: &AfPacketBuf) {
        assert_eq!(
            buf.owner, self.id,
            "AfPacketBuf returned to an AfPacketIo that did not receive it"
        );
        self.ports[usize::from(buf.ring)].give_back(buf.block);
    }
}

impl PacketIo for AfPacketIo {
    type Buf = AfPacketBuf;

    /// What every port's TX slot holds.
    fn max_frame(&self) -> usize {
        self.ports
            .iter()
            .map(|p| p.tx_frame_size - TX_DATA)
            .min()
            .unwrap_or(0)
    }

    fn mtu(&self) -> usize {
        self.ports.iter().map(|p| p.mtu).min().unwrap_or(0)
    }

    #[inline]
    fn rx_burst(&mut self, burst: &mut Vec<AfPacketBuf>) -> usize {
        let before = burst.len();
        let n = self.ports.len();
        for i in 0..n {
            let idx = (self.rx_next_port + i) % n;
            let port = &mut self.ports[idx];
            while burst.len() < burst.capacity() {
                if port.segments.pending.is_some() {
                    match port.next_segment(idx as u16, self.id) {
                        Some(buf) => {
                            burst.push(buf);
                            continue;
                        }
                        // Out of segment buffers: more once the worker
                        // returns this burst's.
                        None if port.segments.pending.is_some() => break,
                        None => {}
                    }
                }
                if port.cursor.is_none() && !port.open_block() {
                    break;
                }
                if let Some(buf) = port.take_frame(idx as u16, self.id) {
                    burst.push(buf);
                }
            }
        }
        self.rx_next_port = (self.rx_next_port + 1) % n.max(1);
        burst.len() - before
    }

    #[inline]
    fn tx_burst(&mut self, burst: &mut Vec<AfPacketBuf>) -> usize {
        let mut sent: usize = 0;
        for buf in burst.drain(..) {
            match self.ports.get_mut(usize::from(buf.port)) {
                Some(out) => {
                    if out.queue(buf.data()) {
                        sent += 1;
                    }
                }
                None => self.ports[usize::from(buf.ring)].stats.tx_errors += 1,
            }
            self.give_back(&buf);
        }
        for p in &mut self.ports {
            let before = p.stats.tx_errors;
            p.kick();
            sent = sent.saturating_sub((p.stats.tx_errors - before) as usize);
        }
        sent
    }

    #[inline]
    fn free_burst(&mut self, burst: &mut Vec<AfPacketBuf>) {
        for buf in burst.drain(..) {
            self.ports[usize::from(buf.ring)].stats.freed += 1;
            self.give_back(&buf);
        }
    }

    /// Steers the fanout group by client address when it was joined in
    /// [`FanoutMode::Client`]; other modes have nothing to update.
    fn serve_sources(&mut self, sources: &[IpAddr]) {
        self.sources = sources.to_vec();
        self.with_shedding(|s| s.set_sources(sources));
    }

    fn serve_frontends(&mut self, frontends: &[IpAddr]) {
        match self.set_fanout_program(frontends) {
            Ok(()) | Err(AfPacketError::NotClientFanout) => {}
            Err(e) => self.fanout_error = Some(e),
        }
        self.with_shedding(|s| s.set_frontends(frontends));
    }

    fn serve_own_addrs(&mut self, addrs: &[IpAddr]) {
        self.with_shedding(|s| s.set_own_addrs(addrs));
    }

    fn serve_endpoints(&mut self, endpoints: &[IpAddr]) {
        self.with_shedding(|s| s.set_endpoints(endpoints));
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        let mut total = AfPacketStats::default();
        for p in &self.ports {
            total.add(&p.stats);
            if self.shedding.is_some() {
                total.rx_shed_dropped += p.shed.as_ref().map_or(0, ShedSignal::dropped);
            }
        }
        out.extend(total.named());
    }
}

impl Drop for AfPacketIo {
    fn drop(&mut self) {
        for p in &mut self.ports {
            if p.shedding
                && let Some(shed) = &p.shed
            {
                shed.lower();
            }
            if p.out_total > 0 {
                // Buffers still point into this ring: stop receiving and keep
                // the mapping rather than unmap memory they may read.
                let _ = sys::bind(&p.rx_fd, p.ifindex, 0);
                if let Some(map) = p.rx_map.take() {
                    map.leak();
                }
                p.segments.leaked = true;
            }
            // Otherwise the mappings unmap and the sockets close as the
            // fields drop.
        }
    }
}

fn validate(ifaces: &[&str], opts: &AfPacketOptions) -> Result<(), AfPacketError> {
    let bad = |m: String| Err(AfPacketError::InvalidOptions(m));
    let page = sys::page_size();
    if ifaces.is_empty() || ifaces.len() > usize::from(u16::MAX) {
        return bad(format!("{} interfaces given", ifaces.len()));
    }
    if opts.block_size == 0 || !(opts.block_size as usize).is_multiple_of(page) {
        return bad(format!(
            "block_size {} is not a multiple of the page size {page}",
            opts.block_size
        ));
    }
    if opts.frame_size < 128
        || !opts.frame_size.is_multiple_of(16)
        || opts.frame_size > opts.block_size
    {
        return bad(format!(
            "frame_size {} must be a multiple of 16, at least 128 and at most block_size",
            opts.frame_size
        ));
    }
    if opts.block_count < 2 || opts.tx_frames == 0 {
        return bad(format!(
            "block_count {} must be at least 2 and tx_frames at least 1",
            opts.block_count
        ));
    }
    Ok(())
}

fn open_port(iface: &str, index: u16, opts: &AfPacketOptions) -> Result<Port, AfPacketError> {
    let name = sys::ifname(iface).ok_or_else(|| AfPacketError::BadName {
        iface: iface.to_owned(),
    })?;
    let err = |call: &'static str| move |e: io::Error| AfPacketError::sys(iface, call, e);
    let rx_fd = sys::packet_socket().map_err(err("socket(AF_PACKET)"))?;
    let ifindex = sys::if_nametoindex(&name).map_err(|_| AfPacketError::NotFound {
        iface: iface.to_owned(),
    })?;
    let flags = sys::if_flags(&rx_fd, &name).map_err(err("ioctl(SIOCGIFFLAGS)"))?;
    let mtu = sys::if_mtu(&rx_fd, &name).map_err(err("ioctl(SIOCGIFMTU)"))?;
    if !opts.allow_link_down {
        check_flags(iface, flags)?;
    }

    // RX: TPACKET_V3 ring on a socket bound to all protocols, each frame
    // after a virtio-net header (before the ring exists, or it is refused).
    let v3 = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
    sys::setsockopt(&rx_fd, libc::SOL_PACKET, libc::PACKET_VERSION, &v3)
        .map_err(err("setsockopt(PACKET_VERSION, TPACKET_V3)"))?;
    let one: libc::c_int = 1;
    sys::setsockopt(&rx_fd, libc::SOL_PACKET, sys::PACKET_VNET_HDR, &one)
        .map_err(err("setsockopt(PACKET_VNET_HDR)"))?;
    let req = libc::tpacket_req3 {
        tp_block_size: opts.block_size,
        tp_block_nr: opts.block_count,
        tp_frame_size: opts.frame_size,
        tp_frame_nr: opts.block_size / opts.frame_size * opts.block_count,
        tp_retire_blk_tov: u32::try_from(opts.block_timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1),
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    };
    sys::setsockopt(&rx_fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)
        .map_err(err("setsockopt(PACKET_RX_RING)"))?;
    let rx_len = opts.block_size as usize * opts.block_count as usize;
    let rx_map = sys::Mmap::new(&rx_fd, rx_len).map_err(err("mmap(RX ring)"))?;
    let ignore_outgoing =
        sys::setsockopt(&rx_fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one);
    ignore_outgoing.map_err(err("setsockopt(PACKET_IGNORE_OUTGOING)"))?;
    sys::bind(&rx_fd, ifindex, libc::ETH_P_ALL as u16).map_err(err("bind(RX socket)"))?;
    if opts.promisc {
        let mreq = libc::packet_mreq {
            mr_ifindex: ifindex.cast_signed(),
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        sys::setsockopt(&rx_fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
            .map_err(err("setsockopt(PACKET_ADD_MEMBERSHIP, PROMISC)"))?;
    }
    if let Some(f) = opts.fanout {
        let mode = match f.mode {
            FanoutMode::Hash => libc::PACKET_FANOUT_HASH,
            FanoutMode::Cpu => libc::PACKET_FANOUT_CPU,
            FanoutMode::Client => libc::PACKET_FANOUT_CBPF,
        };
        let group = u32::from(f.group.wrapping_add(index));
        // The group's own hook ignores our socket-level IGNORE_OUTGOING, so
        // ask for it on the group too (Linux 6.x); older kernels refuse the
        // flag, and then our own TX is still invisible (QDISC_BYPASS skips
        // the taps).
        let with_flag =
            (group | ((mode | libc::PACKET_FANOUT_FLAG_IGNORE_OUTGOING) << 16)).cast_signed();
        if sys::setsockopt(&rx_fd, libc::SOL_PACKET, libc::PACKET_FANOUT, &with_flag).is_err() {
            let plain = (group | (mode << 16)).cast_signed();
            sys::setsockopt(&rx_fd, libc::SOL_PACKET, libc::PACKET_FANOUT, &plain)
                .map_err(err("setsockopt(PACKET_FANOUT)"))?;
        }
    }

    let tx = open_tx(iface, ifindex, opts)?;

    Ok(Port {
        iface: iface.to_owned(),
        ifindex,
        rx_base: rx_map.as_ptr(),
        tx_base: tx.base,
        rx_fd,
        tx_fd: tx.fd,
        rx_map: Some(rx_map),
        _tx_map: tx.map,
        block_size: opts.block_size as usize,
        block_count: opts.block_count as usize,
        next_block: 0,
        cursor: None,
        out: vec![0; opts.block_count as usize].into_boxed_slice(),
        out_total: 0,
        held_blocks: 0,
        tx_block_size: opts.block_size as usize,
        tx_frame_size: opts.frame_size as usize,
        mtu,
        tx_frames_per_block: tx.frames_per_block,
        tx_slots: tx.slots,
        tx_head: 0,
        tx_unkicked: false,
        tx_error: None,
        segments: SegmentPool::new(opts.frame_size as usize - TX_DATA),
        shed: None,
        shedding: false,
        stats: AfPacketStats::default(),
    })
}

struct TxRing {
    fd: OwnedFd,
    map: sys::Mmap,
    base: *mut u8,
    frames_per_block: usize,
    slots: usize,
}

/// The TX side: a `TPACKET_V2` ring on a send-only socket (protocol 0).
fn open_tx(iface: &str, ifindex: u32, opts: &AfPacketOptions) -> Result<TxRing, AfPacketError> {
    let err = |call: &'static str| move |e: io::Error| AfPacketError::sys(iface, call, e);
    let one: libc::c_int = 1;
    let tx_fd = sys::packet_socket().map_err(err("socket(AF_PACKET) for TX"))?;
    let v2 = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
    sys::setsockopt(&tx_fd, libc::SOL_PACKET, libc::PACKET_VERSION, &v2)
        .map_err(err("setsockopt(PACKET_VERSION, TPACKET_V2)"))?;
    sys::setsockopt(&tx_fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one)
        .map_err(err("setsockopt(PACKET_QDISC_BYPASS)"))?;
    sys::setsockopt(&tx_fd, libc::SOL_PACKET, libc::PACKET_LOSS, &one)
        .map_err(err("setsockopt(PACKET_LOSS)"))?;
    let tx_frames_per_block = (opts.block_size / opts.frame_size) as usize;
    let tx_blocks = (opts.tx_frames as usize).div_ceil(tx_frames_per_block);
    let tx_slots = tx_blocks * tx_frames_per_block;
    let tx_req = libc::tpacket_req {
        tp_block_size: opts.block_size,
        tp_block_nr: tx_blocks as u32,
        tp_frame_size: opts.frame_size,
        tp_frame_nr: tx_slots as u32,
    };
    sys::setsockopt(&tx_fd, libc::SOL_PACKET, libc::PACKET_TX_RING, &tx_req)
        .map_err(err("setsockopt(PACKET_TX_RING)"))?;
    let tx_map = sys::Mmap::new(&tx_fd, tx_blocks * opts.block_size as usize)
        .map_err(err("mmap(TX ring)"))?;
    sys::bind(&tx_fd, ifindex, 0).map_err(err("bind(TX socket)"))?;

    Ok(TxRing {
        fd: tx_fd,
        base: tx_map.as_ptr(),
        map: tx_map,
        frames_per_block: tx_frames_per_block,
        slots: tx_slots,
    })
}
