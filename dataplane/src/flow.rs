//! The per-worker connection table: which backend each connection went to,
//! and how to translate its replies.
//!
//! A connection keeps its backend for its whole life, whatever happens to
//! the endpoint set or the client's affinity entry meanwhile (kube-proxy
//! gets this from conntrack). Under `nat` one entry answers to two keys, the
//! client's tuple towards the service address and the tuple the backend's
//! replies carry, so a reply finds its reverse translation with the same one
//! lookup. Under `dsr` replies bypass limpet and the entry has one key.
//!
//! Idle timeouts depend on the protocol and, for TCP, on how far the
//! connection got, as in IPVS (`ipvsadm --set`): see [`FlowTimeouts`].

use crate::family::Family;
use crate::hash::table_hash;
use crate::table::{Hit, NO_HINT, Room, Table, TableCounters, TableEntry, TableError, Tier};
use crate::wire::MacAddr;

/// A packet's 5-tuple as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey<A> {
    pub src: A,
    pub dst: A,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
}

impl<A: Family> FlowKey<A> {
    #[inline(always)]
    pub fn hash(&self) -> u64 {
        let [s0, s1] = self.src.words();
        let [d0, d1] = self.dst.words();
        let ports = u64::from(self.src_port) << 24
            | u64::from(self.dst_port) << 8
            | u64::from(self.protocol);
        if A::LEN == 4 {
            // Both IPv4 addresses fit one word: two words, three multiplies
            // instead of five.
            return table_hash(&[s0 << 32 | d0, ports]);
        }
        table_hash(&[s0, s1, d0 ^ (ports << 32), d1 ^ ports])
    }
}

/// Where a TCP connection stands, as far as timeouts care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum FlowState {
    /// TCP: only the client's SYN seen.
    #[default]
    SynSent,
    /// TCP past the handshake; UDP and SCTP always.
    Established,
    /// TCP: a FIN seen.
    Closing,
    /// TCP: a RST seen.
    Reset,
}

/// Idle timeouts in seconds. Defaults follow IPVS (`ipvsadm --set 900 120
/// 300`), with a short handshake timeout so SYN floods drain quickly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTimeouts {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub tcp_reset: u32,
    pub udp: u32,
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        Self {
            tcp_syn: 60,
            tcp_established: 900,
            tcp_closing: 120,
            tcp_reset: 10,
            udp: 300,
        }
    }
}

impl FlowTimeouts {
    #[inline(always)]
    fn for_flow<A>(&self, f: &Flow<A>) -> u32 {
        if f.protocol != crate::wire::IpProtocol::TCP {
            return self.udp;
        }
        match f.state {
            FlowState::SynSent => self.tcp_syn,
            FlowState::Established => self.tcp_established,
            FlowState::Closing => self.tcp_closing,
            FlowState::Reset => self.tcp_reset,
        }
    }

    /// The first tick at which `flow`, last seen at `last_seen`, is idle.
    #[inline(always)]
    pub fn deadline<A>(&self, flow: &Flow<A>, last_seen: u32) -> u32 {
        last_seen.saturating_add(self.for_flow(flow))
    }
}

/// One connection through limpet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow<A> {
    pub client: A,
    pub service_addr: A,
    pub backend_addr: A,
    pub client_port: u16,
    pub service_port: u16,
    pub backend_port: u16,
    pub protocol: u8,
    pub state: FlowState,
    /// Under `nat` replies are translated back, so the reply tuple is a key.
    pub nat: bool,
    /// The client's affinity entry is on probation and this connection has
    /// not yet proved the client real (see the affinity table's admission
    /// notes): its next qualifying client packet promotes the entry. Fits
    /// the entry's padding.
    pub awaiting_proof: bool,
    pub backend: crate::affinity::BackendId,
    /// Where forward packets go on the wire.
    pub backend_mac: MacAddr,
    /// The hop the client's packets came from: translated replies go back
    /// the way the connection came in.
    pub client_mac: MacAddr,
    /// The port (interface) the connection came in on: replies leave there.
    pub client_iface: u16,
    /// The port (interface) its backend is reached through.
    pub backend_iface: u16,
    /// The source is translated too (`fullnat`, or a client its endpoint
    /// would answer directly): the backend sees `snat_addr:snat_port`, and
    /// its replies are addressed there (see [`crate::snat`]).
    pub snat: bool,
    /// With `snat`: the source the backend sees. Meaningless without it.
    pub snat_addr: A,
    pub snat_port: u16,
    /// Encapsulated DSR: forward packets go to `backend_addr` wrapped in
    /// this tunnel (`nat` is false).
    pub tunnel: crate::encap::Tunnel,
}

impl<A: Family> Default for Flow<A> {
    fn default() -> Self {
        Self {
            client: A::UNSPECIFIED,
            service_addr: A::UNSPECIFIED,
            backend_addr: A::UNSPECIFIED,
            client_port: 0,
            service_port: 0,
            backend_port: 0,
            protocol: 0,
            state: FlowState::SynSent,
            nat: false,
            awaiting_proof: false,
            backend: 0,
            backend_mac: MacAddr([0; 6]),
            client_mac: MacAddr([0; 6]),
            client_iface: 0,
            backend_iface: 0,
            snat: false,
            snat_addr: A::UNSPECIFIED,
            snat_port: 0,
            tunnel: crate::encap::Tunnel::None,
        }
    }
}

impl<A: Family> Flow<A> {
    /// The client's tuple towards the service.
    #[inline(always)]
    pub fn forward_key(&self) -> FlowKey<A> {
        FlowKey {
            src: self.client,
            dst: self.service_addr,
            src_port: self.client_port,
            dst_port: self.service_port,
            protocol: self.protocol,
        }
    }

    /// The tuple the backend's replies carry under `nat`.
    #[inline(always)]
    pub fn reply_key(&self) -> FlowKey<A> {
        let (dst, dst_port) = self.backend_peer();
        FlowKey {
            src: self.backend_addr,
            dst,
            src_port: self.backend_port,
            dst_port,
            protocol: self.protocol,
        }
    }

    /// The address and port the backend sees the connection come from:
    /// the client's, or under source NAT limpet's.
    #[inline(always)]
    pub fn backend_peer(&self) -> (A, u16) {
        if self.snat {
            (self.snat_addr, self.snat_port)
        } else {
            (self.client, self.client_port)
        }
    }
}

impl<A: Family> TableEntry for Flow<A> {
    type Key = FlowKey<A>;
    type Align = A::FlowAlign;
    const MAX_WAYS: usize = 2;

    #[inline(always)]
    fn ways(&self) -> u8 {
        if self.nat { 2 } else { 1 }
    }

    #[inline(always)]
    fn key(&self, way: u8) -> FlowKey<A> {
        if way == 0 {
            self.forward_key()
        } else {
            self.reply_key()
        }
    }

    #[inline(always)]
    fn hash(key: &FlowKey<A>) -> u64 {
        key.hash()
    }
}

/// Which way a packet of a known connection travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to service.
    Forward,
    /// Backend to client, under `nat`.
    Reply,
}

/// The connection table for one address family.
#[derive(Debug)]
pub struct FlowTable<A: Family> {
    table: Table<Flow<A>>,
    timeouts: FlowTimeouts,
}

impl<A: Family> FlowTable<A> {
    pub fn new(capacity: usize, timeouts: FlowTimeouts, now: u32) -> Result<Self, TableError> {
        Ok(Self {
            table: Table::new(capacity, now)?,
            timeouts,
        })
    }

    #[inline(always)]
    pub fn prefetch_bucket(&self, hash: u64) {
        self.table.prefetch_bucket(hash);
    }

    /// Starts loading the entry a key with this hash most likely is;
    /// returns the guess for [`lookup_hinted`](Self::lookup_hinted).
    #[inline(always)]
    pub fn prefetch_entry(&self, hash: u64) -> u32 {
        self.table.prefetch_entry(hash)
    }

    /// Finds the connection a packet with tuple `key` belongs to. An entry
    /// idle past its timeout that the wheel has not reaped yet is treated as
    /// gone.
    #[inline]
    pub fn lookup(&self, hash: u64, key: &FlowKey<A>, now: u32) -> Option<(u32, Direction)> {
        self.lookup_hinted(hash, NO_HINT, key, now)
    }

    /// [`lookup`](Self::lookup), trying first the entry
    /// [`prefetch_entry`](Self::prefetch_entry) guessed for this key.
    #[inline]
    pub fn lookup_hinted(
        &self,
        hash: u64,
        hint: u32,
        key: &FlowKey<A>,
        now: u32,
    ) -> Option<(u32, Direction)> {
        let Hit { idx, way } = self.table.find_hinted(hash, hint, key)?;
        let flow = self.table.get(idx);
        if now >= self.timeouts.deadline(flow, self.table.last_seen(idx)) {
            return None;
        }
        let dir = if way == 0 {
            Direction::Forward
        } else {
            Direction::Reply
        };
        Some((idx, dir))
    }

    /// Whether any entry holds tuple `key`, live or idle past its timeout
    /// but not reaped yet: a tuple to keep clear of when choosing a new
    /// connection's source port.
    #[inline]
    pub fn holds(&self, key: &FlowKey<A>) -> bool {
        self.table.find(key.hash(), key).is_some()
    }

    #[inline(always)]
    pub fn get(&self, idx: u32) -> &Flow<A> {
        self.table.get(idx)
    }

    /// When connection `idx` last saw a packet.
    #[inline(always)]
    pub fn last_seen(&self, idx: u32) -> u32 {
        self.table.last_seen(idx)
    }

    /// Connection `idx` has proved its client real (or no longer needs to).
    #[inline]
    pub fn proved(&mut self, idx: u32) {
        self.table.get_mut(idx).awaiting_proof = false;
    }

    /// Records a packet of connection `idx` and advances its TCP state.
    #[inline]
    pub fn seen(&mut self, idx: u32, dir: Direction, tcp_flags: u8, now: u32) {
        use crate::wire::tcp::flags::{ACK, FIN, RST, SYN};
        let flow = self.table.get_mut(idx);
        if flow.protocol == crate::wire::IpProtocol::TCP {
            let state = match flow.state {
                _ if tcp_flags & RST != 0 => FlowState::Reset,
                FlowState::Reset | FlowState::Closing if tcp_flags & SYN != 0 => FlowState::SynSent,
                _ if tcp_flags & FIN != 0 => FlowState::Closing,
                FlowState::SynSent if dir == Direction::Reply || tcp_flags & (SYN | ACK) == ACK => {
                    FlowState::Established
                }
                s => s,
            };
            // Store only on change, so the entry's line stays clean.
            if state != flow.state {
                flow.state = state;
            }
        }
        self.table.touch(idx, now);
    }

    /// Records a new connection, whose tuples must not be present.
    #[inline]
    pub fn insert(&mut self, mut flow: Flow<A>, tcp_flags: u8, now: u32) -> Option<(u32, Room)> {
        use crate::wire::tcp::flags::{RST, SYN};
        flow.state = if flow.protocol != crate::wire::IpProtocol::TCP {
            FlowState::Established
        } else if tcp_flags & RST != 0 {
            FlowState::Reset
        } else if tcp_flags & SYN != 0 {
            FlowState::SynSent
        } else {
            // Picked up mid-stream (limpet restarted, or the entry was
            // evicted): conntrack's loose pickup treats it as established.
            FlowState::Established
        };
        let timeouts = self.timeouts;
        let deadline = timeouts.deadline(&flow, now);
        self.table
            .insert(flow, now, deadline, |f, last| timeouts.deadline(f, last))
    }

    /// Puts back a connection saved by an earlier process, last seen at
    /// `last_seen`: left out if it went idle past its timeout meanwhile
    /// or one of its tuples is already here.
    pub fn restore(
        &mut self,
        flow: Flow<A>,
        last_seen: u32,
        now: u32,
    ) -> crate::affinity::Restored {
        use crate::affinity::Restored;
        let timeouts = self.timeouts;
        let due = timeouts.deadline(&flow, last_seen);
        if due <= now {
            return Restored::Expired;
        }
        if self.table.contains_any_key(&flow) {
            return Restored::Duplicate;
        }
        let inserted =
            self.table
                .insert_seen(Tier::Protected, flow, last_seen, now, due, |f, last| {
                    timeouts.deadline(f, last)
                });
        Restored::from_room(inserted.map(|(_, room)| room))
    }

    /// Removes a connection, e.g. one whose tuple is being reused.
    pub fn remove(&mut self, idx: u32) {
        self.table.remove(idx);
    }

    /// Reaps idle connections at `now`.
    pub fn expire(&mut self, now: u32) -> usize {
        let timeouts = self.timeouts;
        self.table
            .advance(now, |f, last| timeouts.deadline(f, last))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Flow<A>, u32)> + '_ {
        self.table.iter().map(|(_, f, last)| (f, last))
    }

    /// Live connections among slots `start..start + count` (see
    /// [`Table::iter_slots`](crate::table::Table::iter_slots)).
    pub fn iter_slots(
        &self,
        start: usize,
        count: usize,
    ) -> impl Iterator<Item = (&Flow<A>, u32)> + '_ {
        self.table
            .iter_slots(start, count)
            .map(|(_, f, last)| (f, last))
    }

    pub fn timeouts(&self) -> FlowTimeouts {
        self.timeouts
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    pub fn counters(&self) -> TableCounters {
        self.table.counters()
    }

    pub fn bytes_per_entry(&self) -> f64 {
        self.table.bytes_per_entry()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::IpProtocol;
    use crate::wire::tcp::flags::{ACK, FIN, SYN};
    use std::net::Ipv4Addr;

    fn flow(nat: bool) -> Flow<Ipv4Addr> {
        Flow {
            client: Ipv4Addr::new(198, 18, 0, 1),
            service_addr: Ipv4Addr::new(192, 0, 2, 1),
            backend_addr: Ipv4Addr::new(203, 0, 113, 10),
            client_port: 40000,
            service_port: 80,
            backend_port: 9376,
            protocol: IpProtocol::TCP,
            nat,
            ..Flow::default()
        }
    }

    fn find(t: &FlowTable<Ipv4Addr>, k: &FlowKey<Ipv4Addr>, now: u32) -> Option<(u32, Direction)> {
        t.lookup(k.hash(), k, now)
    }

    #[test]
    fn nat_flow_answers_both_ways_dsr_one() {
        let mut t = FlowTable::new(8, FlowTimeouts::default(), 0).unwrap();
        let f = flow(true);
        let (idx, _) = t.insert(f, SYN, 0).unwrap();
        assert_eq!(
            find(&t, &f.forward_key(), 0),
            Some((idx, Direction::Forward))
        );
        assert_eq!(find(&t, &f.reply_key(), 0), Some((idx, Direction::Reply)));
        let mut d = flow(false);
        d.client_port = 40001;
        t.insert(d, SYN, 0).unwrap();
        assert!(find(&t, &d.forward_key(), 0).is_some());
        assert_eq!(find(&t, &d.reply_key(), 0), None);
    }

    #[test]
    fn tcp_states_drive_timeouts() {
        let to = FlowTimeouts::default();
        let mut t = FlowTable::new(8, to, 0).unwrap();
        let f = flow(true);
        let (idx, _) = t.insert(f, SYN, 0).unwrap();
        assert_eq!(t.get(idx).state, FlowState::SynSent);
        // A handshake left half-open expires after the SYN timeout.
        assert!(find(&t, &f.forward_key(), to.tcp_syn - 1).is_some());
        assert!(find(&t, &f.forward_key(), to.tcp_syn).is_none());
        t.seen(idx, Direction::Reply, SYN | ACK, 1);
        assert_eq!(t.get(idx).state, FlowState::Established);
        assert!(find(&t, &f.forward_key(), 1 + to.tcp_established - 1).is_some());
        t.seen(idx, Direction::Forward, FIN | ACK, 2);
        assert_eq!(t.get(idx).state, FlowState::Closing);
        assert_eq!(t.expire(2 + to.tcp_closing), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn mid_stream_pickup_is_established() {
        let mut t = FlowTable::new(8, FlowTimeouts::default(), 0).unwrap();
        let (idx, _) = t.insert(flow(true), ACK, 0).unwrap();
        assert_eq!(t.get(idx).state, FlowState::Established);
    }
}
