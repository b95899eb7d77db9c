//! Property tests of session affinity over the real pipeline: a `Worker`
//! on the in-memory backend, driven packet by packet with a hand-moved
//! clock (see `common::Harness`). Every property compares what the worker
//! sent, read back with etherparse, against a model computed independently:
//! the sticky backend the model remembers, or Maglev's current choice
//! `service.pick(client_hash(client))` from the snapshot the worker holds.
//!
//! Semantics under test (DESIGN.md "Semantics" and "Selection"): a client's
//! new connections reach the backend it last used while it stays idle no
//! longer than `timeoutSeconds` (honoured at exactly `timeout` seconds idle,
//! gone one tick later); a new client, or one whose entry expired, follows
//! Maglev over its address; an entry whose backend left the usable set is
//! never honoured; a new backend moves no sticky client; connections keep
//! their backend for life; the tables are bounded and every entry that
//! leaves them is counted.

mod common;

use common::{CLIENT_MAC, Harness, LIMPET_MAC, backend, backend_mac, destination, service};
use limpet_dataplane::hash::client_hash;
use limpet_dataplane::pipeline::Action;
use limpet_dataplane::snapshot::{
    Affinity, Backend, ForwardMode, Repick, ServicePortSpec, Snapshot,
};
use limpet_dataplane::table::TableCounters;
use limpet_pktgen::{ACK, PSH, PacketSpec, SYN};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// ---------------------------------------------------------------------------
// Addresses, services and packets

const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8::10";
const SERVICE_ID: u32 = 1;
const BACKEND_PORT: u16 = 9376;
/// Maglev table size: a prime at least 100 times the 13 backends the
/// population tests reach (DESIGN.md "Selection"). The default, 65537,
/// makes every snapshot cost milliseconds in a debug build and would triple
/// this file's runtime; no property depends on the size, since every
/// expected backend is computed from the snapshot the worker holds.
const MAGLEV_SIZE: usize = 1301;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    fn vip(self) -> IpAddr {
        match self {
            Fam::V4 => VIP4.parse().unwrap(),
            Fam::V6 => VIP6.parse().unwrap(),
        }
    }

    fn vip_str(self) -> &'static str {
        match self {
            Fam::V4 => VIP4,
            Fam::V6 => VIP6,
        }
    }

    /// Test backend number `n` (1..=250): `203.0.113.n` or `2001:db8:be::n`.
    fn backend(self, n: u8) -> Backend {
        match self {
            Fam::V4 => backend(&format!("203.0.113.{n}")),
            Fam::V6 => backend(&format!("2001:db8:be::{n:x}")),
        }
    }

    /// A client address from a random seed: `198.18.0.0/15` or
    /// `2001:db8::/32`.
    fn client(self, seed: u128) -> IpAddr {
        match self {
            Fam::V4 => {
                let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
                IpAddr::V4(Ipv4Addr::from(base | (seed as u32 & 0x1_ffff)))
            }
            Fam::V6 => {
                let base = 0x2001_0db8u128 << 96;
                IpAddr::V6(Ipv6Addr::from(base | (seed & ((1u128 << 96) - 1))))
            }
        }
    }
}

fn fam() -> impl Strategy<Value = Fam> {
    prop_oneof![Just(Fam::V4), Just(Fam::V6)]
}

/// `n` distinct clients of family `fam`.
fn distinct_clients(fam: Fam, seeds: &[u128], n: usize) -> Vec<IpAddr> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(n);
    // Seeds may collide once masked to the family's range: walk on from a
    // collision so the count is exact.
    for &s in seeds {
        let mut s = s;
        while !seen.insert(fam.client(s)) {
            s = s.wrapping_add(0x9e37_79b9);
        }
        out.push(fam.client(s));
        if out.len() == n {
            break;
        }
    }
    assert_eq!(out.len(), n, "not enough seeds");
    out
}

/// Transport of the service under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![Just(Proto::Tcp), Just(Proto::Udp)]
}

/// `sessionAffinity` timeouts spread over the timer wheel's levels (64 s,
/// 4096 s and 262144 s slots), the Kubernetes default and its maximum.
fn timeout() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 1u32..=5,
        3 => 6u32..=70,
        2 => 71u32..=5000,
        1 => Just(10_800u32),
        1 => Just(86_400u32),
    ]
}

fn spec(
    fam: Fam,
    proto: Proto,
    affinity: Affinity,
    mode: ForwardMode,
    backends: Vec<Backend>,
) -> ServicePortSpec {
    let mut s = service(
        SERVICE_ID,
        fam.vip_str(),
        proto.number(),
        affinity,
        mode,
        backends,
    );
    s.maglev_size = Some(MAGLEV_SIZE);
    s
}

/// Fresh source ports: every new connection of a case gets its own tuple.
struct Ports(u16);

impl Ports {
    fn new() -> Self {
        Self(1024)
    }

    fn next(&mut self) -> u16 {
        let p = self.0;
        self.0 = if p == u16::MAX { 1024 } else { p + 1 };
        p
    }
}

/// The first packet of a connection from `client:sport` to `vip:80`, as it
/// reaches limpet: a TCP SYN or a UDP datagram.
fn opening(proto: Proto, client: IpAddr, sport: u16, vip: IpAddr) -> PacketSpec {
    let spec = match proto {
        Proto::Tcp => PacketSpec::tcp(client, vip, sport, 80).flags(SYN),
        Proto::Udp => PacketSpec::udp(client, vip, sport, 80).payload(b"hello".to_vec()),
    };
    spec.src_mac(CLIENT_MAC).dst_mac(LIMPET_MAC)
}

/// A later packet of that connection: a bare ACK, or data.
fn later(proto: Proto, client: IpAddr, sport: u16, vip: IpAddr, data: bool) -> PacketSpec {
    let spec = match proto {
        Proto::Tcp if data => PacketSpec::tcp(client, vip, sport, 80)
            .flags(PSH | ACK)
            .payload(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        Proto::Tcp => PacketSpec::tcp(client, vip, sport, 80).flags(ACK),
        Proto::Udp => PacketSpec::udp(client, vip, sport, 80).payload(b"more".to_vec()),
    };
    spec.src_mac(CLIENT_MAC).dst_mac(LIMPET_MAC)
}

/// Sends `frame`, which must be forwarded, and returns where it went.
fn forward(h: &mut Harness, frame: &[u8], what: &str) -> SocketAddr {
    let (action, out) = h.send(frame);
    assert_eq!(action, Action::Forward, "{what} not forwarded");
    destination(&out.unwrap_or_else(|| panic!("{what}: forwarded but nothing sent")))
}

/// Opens a new connection and returns the backend it reached.
fn open(h: &mut Harness, proto: Proto, client: IpAddr, sport: u16, vip: IpAddr) -> SocketAddr {
    let frame = opening(proto, client, sport, vip).build();
    forward(h, &frame, &format!("new connection {client}:{sport}"))
}

/// Maglev's current choice for `client`, from the snapshot the worker
/// holds, computed without the affinity table.
fn maglev_choice(h: &Harness, fam: Fam, proto: Proto, client: IpAddr) -> SocketAddr {
    maglev_choice_in(h.worker.snapshot(), fam, proto, client)
}

fn maglev_choice_in(snap: &Snapshot, fam: Fam, proto: Proto, client: IpAddr) -> SocketAddr {
    let svc = snap
        .service(fam.vip(), 80, proto.number())
        .expect("service in snapshot");
    let b = svc.pick(client_hash(client)).expect("a usable backend");
    SocketAddr::new(b.addr, b.port)
}

fn addr_of(b: &Backend) -> SocketAddr {
    SocketAddr::new(b.addr, b.port)
}

/// The id of the current backend at `addr`.
fn backend_id(h: &Harness, fam: Fam, proto: Proto, addr: SocketAddr) -> u32 {
    let svc = h.worker.snapshot().service(fam.vip(), 80, proto.number());
    let b = svc.and_then(|svc| svc.spec.backends.iter().find(|b| addr_of(b) == addr));
    b.expect("a current backend").id
}

/// Every affinity entry of both families: client -> (backend id, last seen).
fn affinity_entries(h: &Harness) -> BTreeMap<IpAddr, (u32, u32)> {
    let mut out = BTreeMap::new();
    for (e, last) in h.worker.affinity_v4().iter() {
        assert_eq!(e.key.service, SERVICE_ID);
        assert!(
            out.insert(IpAddr::V4(e.key.client), (e.backend, last))
                .is_none()
        );
    }
    for (e, last) in h.worker.affinity_v6().iter() {
        assert_eq!(e.key.service, SERVICE_ID);
        assert!(
            out.insert(IpAddr::V6(e.key.client), (e.backend, last))
                .is_none()
        );
    }
    out
}

fn affinity_len(h: &Harness) -> usize {
    h.worker.affinity_v4().len() + h.worker.affinity_v6().len()
}

fn affinity_counters(h: &Harness, fam: Fam) -> TableCounters {
    match fam {
        Fam::V4 => h.worker.affinity_v4().counters(),
        Fam::V6 => h.worker.affinity_v6().counters(),
    }
}

fn flow_counters(h: &Harness, fam: Fam) -> TableCounters {
    match fam {
        Fam::V4 => h.worker.flows_v4().counters(),
        Fam::V6 => h.worker.flows_v6().counters(),
    }
}

fn flow_len(h: &Harness, fam: Fam) -> usize {
    match fam {
        Fam::V4 => h.worker.flows_v4().len(),
        Fam::V6 => h.worker.flows_v6().len(),
    }
}

fn now(h: &Harness) -> u32 {
    use limpet_dataplane::clock::Clock;
    h.clock.now()
}

/// A poll with nothing to receive: the worker reaps expired entries once a
/// second at the start of a poll, so this shows the tables as of `now`.
fn idle_poll(h: &mut Harness) {
    assert_eq!(h.worker.poll(), 0);
}

/// Backends `1..=n` of a family.
fn backends(fam: Fam, n: u8) -> Vec<Backend> {
    (1..=n).map(|i| fam.backend(i)).collect()
}

// ---------------------------------------------------------------------------
// (a) ClientIP stickiness under random interleavings: a model-based test

#[derive(Debug, Clone)]
enum Op {
    /// Client `i % clients` opens a new connection after `step` seconds,
    /// `step` being a fraction (in 1/64ths) of the timeout.
    Connect { client: usize, step: u8 },
    /// A snapshot with one more backend.
    AddBackend,
    /// A snapshot without the backend at position `i % len` (if more than
    /// one is left).
    RemoveBackend(usize),
}

/// A clock step in 1/64ths of the timeout: mostly short, so clients come
/// back while sticky, sometimes the whole timeout.
fn step() -> impl Strategy<Value = u8> {
    prop_oneof![6 => 0u8..=4, 3 => 5u8..=16, 1 => 17u8..=64]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (any::<usize>(), step()).prop_map(|(client, step)| Op::Connect { client, step }),
        3 => Just(Op::AddBackend),
        2 => any::<usize>().prop_map(Op::RemoveBackend),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// (a) Every new connection of a client whose last new connection was at
    /// most `timeout` seconds ago reaches the backend it reached then, as
    /// long as that backend is usable; any other new connection reaches
    /// Maglev's current choice. After every packet the affinity table holds
    /// exactly the clients whose last new connection is at most `timeout`
    /// seconds old, each with its backend and that time (the once-a-second
    /// reap runs before the packet). Snapshots that add and remove backends
    /// are interleaved, so stickiness differs from what Maglev alone does.
    #[test]
    fn client_ip_sticks_within_timeout(
        fam in fam(),
        proto in proto(),
        timeout in timeout(),
        n_backends in 2u8..=6,
        n_clients in 1usize..=24,
        seeds in proptest::collection::vec(any::<u128>(), 24),
        ops in proptest::collection::vec(op(), 1..=160),
    ) {
        let clients = distinct_clients(fam, &seeds, n_clients);
        let vip = fam.vip();
        let affinity = Affinity::client_ip(timeout);
        let mut live: Vec<Backend> = backends(fam, n_backends);
        let mut next_backend = n_backends + 1;
        let mut h = Harness::new(vec![spec(fam, proto, affinity, ForwardMode::Nat, live.clone())]);
        let mut ports = Ports::new();
        // client -> (backend, time of its last new connection)
        let mut model: BTreeMap<IpAddr, (SocketAddr, u32)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::AddBackend => {
                    live.push(fam.backend(next_backend));
                    next_backend += 1;
                    h.update(vec![spec(fam, proto, affinity, ForwardMode::Nat, live.clone())]);
                }
                Op::RemoveBackend(i) => {
                    if live.len() > 1 {
                        live.remove(i % live.len());
                        h.update(vec![spec(fam, proto, affinity, ForwardMode::Nat, live.clone())]);
                    }
                }
                Op::Connect { client, step } => {
                    let client = clients[client % clients.len()];
                    h.tick((u64::from(timeout) * u64::from(step) / 64) as u32);
                    let t = now(&h);
                    let maglev = maglev_choice(&h, fam, proto, client);
                    let expected = match model.get(&client) {
                        Some(&(b, last))
                            if t - last <= timeout && live.iter().any(|l| addr_of(l) == b) =>
                        {
                            b
                        }
                        _ => maglev,
                    };
                    let got = open(&mut h, proto, client, ports.next(), vip);
                    prop_assert_eq!(
                        got, expected,
                        "client {} at t={} (model {:?}, Maglev {})",
                        client, t, model.get(&client), maglev
                    );
                    model.insert(client, (got, t));
                    // The table is exactly the model's unexpired clients.
                    let t = now(&h);
                    let table = affinity_entries(&h);
                    let want: BTreeMap<IpAddr, (SocketAddr, u32)> = model
                        .iter()
                        .filter(|(_, (_, last))| t - last <= timeout)
                        .map(|(c, v)| (*c, *v))
                        .collect();
                    prop_assert_eq!(
                        table.keys().collect::<Vec<_>>(),
                        want.keys().collect::<Vec<_>>(),
                        "affinity table clients at t={}", t
                    );
                    for (c, &(b, last)) in &want {
                        let (id, seen) = table[c];
                        prop_assert_eq!(seen, last, "last-seen of {}", c);
                        // Stale entries keep the id of a backend that left,
                        // so look the id up in every backend ever used.
                        prop_assert_eq!(
                            (1..next_backend)
                                .map(|n| fam.backend(n))
                                .find(|x| x.id == id)
                                .map(|x| addr_of(&x)),
                            Some(b),
                            "backend of {}", c
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Clients grouped by prefix

/// `ip` with all but its first `v4_prefix` / `v6_prefix` bits cleared.
fn masked(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(v4_prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6_prefix))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// With a client mask (`v4_prefix` 15..=32, `v6_prefix` 32..=128, so
    /// clients stay in the documentation ranges), every client of a prefix
    /// reaches the backend its prefix first reached, even one that connects
    /// for the first time after a new backend changed Maglev's mind; a
    /// prefix seen for the first time follows Maglev over the masked
    /// address. The table holds one entry per prefix, keyed by it.
    #[test]
    fn prefix_groups_share_a_backend(
        fam in fam(),
        proto in proto(),
        v4_prefix in 15u8..=32,
        v6_prefix in 32u8..=128,
        groups in proptest::collection::vec(any::<u128>(), 1..6),
        members in proptest::collection::vec((any::<usize>(), any::<u128>()), 1..60),
        add_at in any::<usize>(),
    ) {
        let vip = fam.vip();
        let affinity = Affinity::ClientIp {
            timeout: 10_800,
            v4_prefix,
            v6_prefix,
            repick: Repick::ClientIp,
        };
        let mut live = backends(fam, 4);
        let mut h = Harness::new(vec![spec(fam, proto, affinity, ForwardMode::Nat, live.clone())]);
        let mut ports = Ports::new();
        let mut model: BTreeMap<IpAddr, SocketAddr> = BTreeMap::new();
        let add_at = add_at % members.len();
        for (i, (g, host)) in members.iter().enumerate() {
            if i == add_at {
                live.push(fam.backend(5));
                h.update(vec![spec(fam, proto, affinity, ForwardMode::Nat, live.clone())]);
            }
            let base = fam.client(groups[g % groups.len()]);
            let net = masked(base, v4_prefix, v6_prefix);
            // Host bits from `host`, network bits from the group.
            let client = match (net, fam.client(*host)) {
                (IpAddr::V4(n), IpAddr::V4(c)) => {
                    let hostmask = u32::MAX.checked_shr(u32::from(v4_prefix)).unwrap_or(0);
                    IpAddr::V4(Ipv4Addr::from(u32::from(n) | (u32::from(c) & hostmask)))
                }
                (IpAddr::V6(n), IpAddr::V6(c)) => {
                    let hostmask = u128::MAX.checked_shr(u32::from(v6_prefix)).unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(u128::from(n) | (u128::from(c) & hostmask)))
                }
                _ => unreachable!(),
            };
            prop_assert_eq!(masked(client, v4_prefix, v6_prefix), net);
            let expected = model.get(&net).copied().unwrap_or_else(|| {
                let svc = h.worker.snapshot().service(vip, 80, proto.number()).unwrap();
                addr_of(svc.pick(client_hash(net)).unwrap())
            });
            let got = open(&mut h, proto, client, ports.next(), vip);
            prop_assert_eq!(got, expected, "client {} of prefix {}", client, net);
            model.insert(net, got);
            let keys: Vec<IpAddr> = affinity_entries(&h).into_keys().collect();
            prop_assert_eq!(keys, model.keys().copied().collect::<Vec<_>>());
        }
    }
}

// ---------------------------------------------------------------------------
// (b) expiry: honoured at `timeout` idle, gone at `timeout + 1`, then Maglev

/// A client, searched for from `seed`, whose Maglev choice differs between
/// the two snapshots.
fn client_moved_by(fam: Fam, before: &Snapshot, after: &Snapshot, seed: u128) -> IpAddr {
    (0..10_000u128)
        .map(|i| fam.client(seed.wrapping_add(i)))
        .find(|&c| {
            maglev_choice_in(before, fam, Proto::Tcp, c)
                != maglev_choice_in(after, fam, Proto::Tcp, c)
        })
        .expect("adding a backend moves some client")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// (b) A client sticky to backend A stays on A while it keeps opening
    /// connections within the timeout, even after a new backend makes
    /// Maglev map it to M != A; its entry is still there, and honoured, at
    /// exactly `timeout` seconds idle; after `timeout + 1` seconds idle the
    /// entry is gone (after the reap of a packet-less poll) and its next
    /// connection reaches M, Maglev's current choice. Packets of the open
    /// connection meanwhile neither refresh the entry nor leave A.
    #[test]
    fn expiry_follows_current_maglev(
        fam in fam(),
        timeout in timeout(),
        n_backends in 2u8..=8,
        seed in any::<u128>(),
        steps in proptest::collection::vec(0u8..=64, 0..6),
        chunks in proptest::collection::vec(1u32..=600, 1..8),
    ) {
        let vip = fam.vip();
        let affinity = Affinity::client_ip(timeout);
        let old = backends(fam, n_backends);
        let mut new = old.clone();
        new.push(fam.backend(n_backends + 1));
        let old_spec = spec(fam, Proto::Tcp, affinity, ForwardMode::Nat, old);
        let new_spec = spec(fam, Proto::Tcp, affinity, ForwardMode::Nat, new);
        let client = client_moved_by(
            fam,
            &Snapshot::build(1, vec![old_spec.clone()]).unwrap(),
            &Snapshot::build(1, vec![new_spec.clone()]).unwrap(),
            seed,
        );
        let mut h = Harness::new(vec![old_spec]);
        let mut ports = Ports::new();

        let a = open(&mut h, Proto::Tcp, client, ports.next(), vip);
        prop_assert_eq!(a, maglev_choice(&h, fam, Proto::Tcp, client));
        h.update(vec![new_spec]);
        let m = maglev_choice(&h, fam, Proto::Tcp, client);
        prop_assert_ne!(a, m);

        // Within the timeout: stays on A, and each connection refreshes.
        for step in steps {
            h.tick((u64::from(timeout) * u64::from(step) / 64) as u32);
            prop_assert_eq!(open(&mut h, Proto::Tcp, client, ports.next(), vip), a);
            prop_assert_eq!(affinity_entries(&h).get(&client).map(|e| e.1), Some(now(&h)));
        }

        // Idle for `timeout`, then for `timeout + 1`: an open connection
        // keeps sending meanwhile, in chunks well within its own timeout.
        for idle in [timeout, timeout + 1] {
            let sport = ports.next();
            let last = now(&h);
            prop_assert_eq!(open(&mut h, Proto::Tcp, client, sport, vip), a);
            let ack = later(Proto::Tcp, client, sport, vip, false).build();
            prop_assert_eq!(forward(&mut h, &ack, "ACK"), a);
            let data = later(Proto::Tcp, client, sport, vip, true).build();
            // At least idle/200 a chunk (bounded work), at most 600 (the
            // connection, established, lives 900 s idle).
            let floor = idle.div_ceil(200).min(600);
            let mut left = idle;
            for &c in chunks.iter().cycle() {
                if left == 0 {
                    break;
                }
                let c = c.max(floor).min(left);
                h.tick(c);
                left -= c;
                prop_assert_eq!(forward(&mut h, &data, "data"), a);
            }
            prop_assert_eq!(now(&h), last + idle);
            idle_poll(&mut h);
            let entries = affinity_entries(&h);
            if idle == timeout {
                // Honoured at exactly `timeout`: present, not refreshed by
                // the data packets, and it still decides.
                prop_assert_eq!(entries.get(&client).map(|e| e.1), Some(last));
                prop_assert_eq!(affinity_len(&h), 1);
            } else {
                prop_assert!(!entries.contains_key(&client), "entry outlived timeout+1");
                prop_assert_eq!(affinity_len(&h), 0);
            }
        }
        let before = h.worker.stats();
        let moved = open(&mut h, Proto::Tcp, client, ports.next(), vip);
        prop_assert_eq!(moved, m, "after timeout+1 idle, not Maglev's current choice");
        prop_assert_eq!(h.worker.stats().affinity_misses, before.affinity_misses + 1);
        let entries = affinity_entries(&h);
        prop_assert_eq!(entries.get(&client).map(|e| e.1), Some(now(&h)));
        let m_id = backend_id(&h, fam, Proto::Tcp, m);
        prop_assert_eq!(entries.get(&client).map(|e| e.0), Some(m_id));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// (b') What a client without a live entry gets. Under
    /// `Repick::ClientIp` (the default) a client whose entry expires again
    /// and again returns each time to Maglev's choice over its address;
    /// under `Repick::Connection` its first connections after expiry spread
    /// over at least two of 5 backends. Either way a pick is then held by
    /// the entry: a second connection at exactly `timeout` seconds idle
    /// reaches the same backend.
    #[test]
    fn repick_after_expiry(
        fam in fam(),
        proto in proto(),
        timeout in 1u32..=120,
        seed in any::<u128>(),
        first_port in 1024u16..=60_000,
        per_connection in any::<bool>(),
    ) {
        let vip = fam.vip();
        let repick = if per_connection { Repick::Connection } else { Repick::ClientIp };
        let affinity = Affinity::ClientIp { timeout, v4_prefix: 32, v6_prefix: 128, repick };
        let mut h = Harness::new(vec![spec(fam, proto, affinity, ForwardMode::Nat, backends(fam, 5))]);
        let client = fam.client(seed);
        let maglev = maglev_choice(&h, fam, proto, client);
        let mut picks = BTreeSet::new();
        for i in 0..32u16 {
            let misses = h.worker.stats().affinity_misses;
            let picked = open(&mut h, proto, client, first_port + 2 * i, vip);
            prop_assert_eq!(h.worker.stats().affinity_misses, misses + 1, "connection {} was not a fresh pick", i);
            if !per_connection {
                prop_assert_eq!(picked, maglev, "connection {} left Maglev's choice", i);
            }
            h.tick(timeout);
            prop_assert_eq!(open(&mut h, proto, client, first_port + 2 * i + 1, vip), picked);
            h.tick(timeout + 1);
            idle_poll(&mut h);
            prop_assert_eq!(affinity_len(&h), 0);
            picks.insert(picked);
        }
        if per_connection {
            prop_assert!(picks.len() >= 2, "32 picks after expiry all went to {:?}", picks);
        }
    }
}

// ---------------------------------------------------------------------------
// (c) removal moves only the removed backend's clients; (d) addition moves
// no sticky client

/// Opens one connection per client and returns where each went.
fn connect_all(
    h: &mut Harness,
    proto: Proto,
    vip: IpAddr,
    clients: &[IpAddr],
    ports: &mut Ports,
) -> BTreeMap<IpAddr, SocketAddr> {
    clients
        .iter()
        .map(|&c| (c, open(h, proto, c, ports.next(), vip)))
        .collect()
}

const POPULATION: usize = 200;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// (c) 200 clients sticky over 5-10 backends (some of them sticky to a
    /// backend Maglev no longer picks for them, when a backend was added
    /// first); one random backend is removed. On their next connection,
    /// within the timeout, the clients of the removed backend move, each to
    /// Maglev's current choice; every other client stays exactly where it
    /// was, even where Maglev now picks another backend for it.
    #[test]
    fn removal_moves_only_its_clients(
        fam in fam(),
        proto in proto(),
        n_backends in 5u8..=10,
        add_first in any::<bool>(),
        victim in any::<usize>(),
        seeds in proptest::collection::vec(any::<u128>(), POPULATION),
        gap in 0u32..=5000,
    ) {
        let vip = fam.vip();
        let affinity = Affinity::client_ip(10_800);
        let clients = distinct_clients(fam, &seeds, POPULATION);
        let mut live = backends(fam, n_backends);
        let mut h = Harness::new(vec![spec(fam, proto, affinity, ForwardMode::Nat, live.clone())]);
        let mut ports = Ports::new();
        let mut sticky = connect_all(&mut h, proto, vip, &clients, &mut ports);
        if add_first {
            live.push(fam.backend(n_backends + 1));
            h.update(vec![spec(fam, proto, affinity, ForwardMode::Nat, live.clone())]);
            h.tick(gap);
            let again = connect_all(&mut h, proto, vip, &clients, &mut ports);
            prop_assert_eq!(&again, &sticky, "adding a backend moved sticky clients");
            sticky = again;
        }
        let removed = live.remove(victim % live.len());
        let removed = addr_of(&removed);
        h.update(vec![spec(fam, proto, affinity, ForwardMode::Nat, live.clone())]);
        h.tick(gap);
        let stale_before = h.worker.stats().affinity_stale;
        let after = connect_all(&mut h, proto, vip, &clients, &mut ports);
        let mut on_removed = 0u64;
        for c in &clients {
            let (was, is) = (sticky[c], after[c]);
            if was == removed {
                on_removed += 1;
                prop_assert_ne!(is, removed);
                prop_assert!(live.iter().any(|b| addr_of(b) == is));
                prop_assert_eq!(is, maglev_choice(&h, fam, proto, *c), "moved client {}", c);
            } else {
                prop_assert_eq!(is, was, "client {} of a kept backend moved", c);
            }
        }
        prop_assert_eq!(h.worker.stats().affinity_stale - stale_before, on_removed);
    }

    /// (d) 200 clients sticky over 5-10 backends; 1-3 backends are added.
    /// Every sticky client's next connection within the timeout reaches its
    /// old backend (the test checks that Maglev alone would have moved some
    /// of them); clients never seen before follow Maglev's current choice.
    #[test]
    fn addition_moves_no_sticky_client(
        fam in fam(),
        proto in proto(),
        n_backends in 5u8..=10,
        added in 1u8..=3,
        seeds in proptest::collection::vec(any::<u128>(), POPULATION + 50),
        gap in 0u32..=10_800,
    ) {
        let vip = fam.vip();
        let affinity = Affinity::client_ip(10_800);
        let everyone = distinct_clients(fam, &seeds, POPULATION + 50);
        let (clients, newcomers) = everyone.split_at(POPULATION);
        let mut live = backends(fam, n_backends);
        let mut h = Harness::new(vec![spec(fam, proto, affinity, ForwardMode::Nat, live.clone())]);
        let mut ports = Ports::new();
        let sticky = connect_all(&mut h, proto, vip, clients, &mut ports);
        for i in 1..=added {
            live.push(fam.backend(n_backends + i));
        }
        h.update(vec![spec(fam, proto, affinity, ForwardMode::Nat, live.clone())]);
        h.tick(gap);
        let maglev_moves = clients
            .iter()
            .filter(|c| maglev_choice(&h, fam, proto, **c) != sticky[*c])
            .count();
        prop_assert!(maglev_moves > 0, "test would not tell stickiness from Maglev");
        let after = connect_all(&mut h, proto, vip, clients, &mut ports);
        prop_assert_eq!(&after, &sticky);
        for &c in newcomers {
            prop_assert_eq!(
                open(&mut h, proto, c, ports.next(), vip),
                maglev_choice(&h, fam, proto, c)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// (e) None affinity: connections spread, each keeps its backend

#[derive(Debug, Clone, Copy)]
enum Later {
    Ack,
    Data,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// (e) Under `sessionAffinity: None` one client's 64 connections (64
    /// source ports) spread over at least two of 5 backends, no affinity
    /// entry is written, and every later packet (ACK, data) of each
    /// connection, in random order and before and after a backend is added,
    /// reaches that connection's backend.
    #[test]
    fn none_spreads_connections_and_keeps_each(
        fam in fam(),
        proto in proto(),
        seed in any::<u128>(),
        first_port in 1024u16..=60_000,
        before in proptest::collection::vec((0usize..64, any::<bool>()), 0..128),
        after in proptest::collection::vec((0usize..64, any::<bool>()), 1..128),
    ) {
        let vip = fam.vip();
        let client = fam.client(seed);
        let mut live = backends(fam, 5);
        let none = Affinity::None;
        let mut h = Harness::new(vec![spec(fam, proto, none, ForwardMode::Nat, live.clone())]);
        let sports: Vec<u16> = (0..64).map(|i| first_port + i).collect();
        let conns: Vec<SocketAddr> =
            sports.iter().map(|&p| open(&mut h, proto, client, p, vip)).collect();
        let distinct: BTreeSet<_> = conns.iter().collect();
        prop_assert!(distinct.len() >= 2, "64 connections all went to {:?}", distinct);
        prop_assert_eq!(affinity_len(&h), 0);
        let check = |h: &mut Harness, pkts: &[(usize, bool)]| -> Result<(), TestCaseError> {
            for &(i, data) in pkts {
                let kind = if data { Later::Data } else { Later::Ack };
                let frame = later(proto, client, sports[i], vip, data).build();
                let got = forward(h, &frame, &format!("{kind:?} of connection {i}"));
                prop_assert_eq!(got, conns[i], "{:?} of connection {} moved", kind, i);
            }
            Ok(())
        };
        check(&mut h, &before)?;
        live.push(fam.backend(6));
        h.update(vec![spec(fam, proto, Affinity::None, ForwardMode::Nat, live.clone())]);
        h.tick(1);
        check(&mut h, &after)?;
        prop_assert_eq!(affinity_len(&h), 0);
        let s = h.worker.stats();
        let lookups = s.affinity_hits + s.affinity_misses + s.affinity_expired + s.affinity_stale;
        prop_assert_eq!(lookups, 0);
    }
}

// ---------------------------------------------------------------------------
// (f) bounded tables: never over capacity, every departure counted

const AFFINITY_CAP: usize = 64;
const FLOW_CAP: usize = 128;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// (f) With room for 64 sticky clients and 128 connections, and many
    /// more clients than that: after every step neither table is over
    /// capacity; the reap removes exactly the entries idle past the timeout
    /// (counted as expirations); a new client arriving at a full table
    /// evicts exactly one live entry (counted in `affinity_evictions`);
    /// nothing else ever leaves; and `inserts == len + evictions +
    /// expirations` for both tables. A client with an entry stays sticky.
    #[test]
    fn tables_are_bounded_and_departures_counted(
        fam in fam(),
        timeout in 5u32..=60,
        n_clients in 100usize..=300,
        seeds in proptest::collection::vec(any::<u128>(), 300),
        steps in proptest::collection::vec(
            (any::<usize>(), prop_oneof![6 => Just(0u32), 3 => 1u32..=3, 1 => 4u32..=80]),
            150..=400,
        ),
    ) {
        let vip = fam.vip();
        let clients = distinct_clients(fam, &seeds, n_clients);
        let mut h = Harness::with_capacity(
            vec![spec(
                fam,
                Proto::Tcp,
                Affinity::client_ip(timeout),
                ForwardMode::Nat,
                backends(fam, 4),
            )],
            FLOW_CAP,
            AFFINITY_CAP,
        );
        let mut ports = Ports::new();
        let mut full_inserts = 0u32;
        let mut model_inserts = 0u64;
        // A burst at one second first: more clients than the affinity
        // table holds and more connections than the flow table holds, so
        // both fill whatever the random steps do.
        let burst = (0..FLOW_CAP + 16).map(|i| (i, 0u32));
        for (done, (pick, step)) in burst.chain(steps).enumerate() {
            let connections = done as u64 + 1;
            let client = clients[pick % clients.len()];
            h.tick(step);
            let t = now(&h);

            // The reap: exactly the entries idle past the timeout go.
            let before = affinity_entries(&h);
            let c0 = affinity_counters(&h, fam);
            idle_poll(&mut h);
            let reaped = affinity_entries(&h);
            let c1 = affinity_counters(&h, fam);
            let want: BTreeMap<_, _> = before
                .iter()
                .filter(|(_, (_, last))| t - last <= timeout)
                .map(|(c, v)| (*c, *v))
                .collect();
            prop_assert_eq!(&reaped, &want, "reap at t={}", t);
            prop_assert_eq!(c1.expirations - c0.expirations, (before.len() - want.len()) as u64);
            prop_assert_eq!(c1.evictions, c0.evictions);

            // The connection: a hit, an insert into room, or an eviction.
            let had = reaped.get(&client).copied();
            let full = reaped.len() == AFFINITY_CAP;
            let got = open(&mut h, Proto::Tcp, client, ports.next(), vip);
            let after = affinity_entries(&h);
            let c2 = affinity_counters(&h, fam);
            let id = backend_id(&h, fam, Proto::Tcp, got);
            prop_assert_eq!(after.get(&client).copied(), Some((id, t)));
            prop_assert_eq!(got, maglev_choice(&h, fam, Proto::Tcp, client));
            prop_assert_eq!(c2.expirations, c1.expirations);
            let gone: Vec<_> = reaped.keys().filter(|c| !after.contains_key(*c)).collect();
            match had {
                Some((b, _)) => {
                    prop_assert_eq!(b, id, "sticky client {} moved", client);
                    prop_assert_eq!(after.len(), reaped.len());
                    prop_assert!(gone.is_empty());
                    prop_assert_eq!(c2.evictions, c1.evictions);
                }
                None if full => {
                    model_inserts += 1;
                    full_inserts += 1;
                    prop_assert_eq!(after.len(), AFFINITY_CAP);
                    prop_assert_eq!(gone.len(), 1, "one entry makes room");
                    prop_assert_eq!(c2.evictions, c1.evictions + 1);
                }
                None => {
                    model_inserts += 1;
                    prop_assert_eq!(after.len(), reaped.len() + 1);
                    prop_assert!(gone.is_empty());
                    prop_assert_eq!(c2.evictions, c1.evictions);
                }
            }

            // Bounds and accounting, both tables.
            prop_assert!(affinity_len(&h) <= AFFINITY_CAP);
            prop_assert_eq!(c2.inserts, model_inserts);
            prop_assert_eq!(c2.removals, 0);
            prop_assert_eq!(c2.inserts, after.len() as u64 + c2.evictions + c2.expirations);
            let s = h.worker.stats();
            prop_assert_eq!(s.affinity_evictions, c2.evictions);
            let f = flow_counters(&h, fam);
            prop_assert!(flow_len(&h, fam) <= FLOW_CAP);
            prop_assert_eq!(f.inserts, connections);
            prop_assert_eq!(
                f.inserts,
                flow_len(&h, fam) as u64 + f.evictions + f.expirations + f.removals
            );
            prop_assert_eq!(s.flow_evictions, f.evictions);
            prop_assert_eq!(s.new_flows, connections);
        }
        // The generator must have filled the table at least once, or the
        // eviction branch went untested.
        prop_assert!(full_inserts > 0, "table never filled");
        prop_assert!(flow_counters(&h, fam).evictions > 0, "flow table never filled");
    }
}

// ---------------------------------------------------------------------------
// Forwarding modes: NAT replies translated back, DSR leaves L3 alone

/// Byte-exact expected frames are written from scratch by pktgen, so a
/// match also proves the incremental checksum updates.
#[derive(Debug, Clone)]
struct Conn {
    client_seed: u128,
    client_mac: [u8; 6],
    ttl: u8,
    vlan: Option<u16>,
    payloads: Vec<(bool, Vec<u8>)>,
}

fn conn() -> impl Strategy<Value = Conn> {
    (
        any::<u128>(),
        any::<[u8; 5]>(),
        2u8..=255,
        proptest::option::of(1u16..=4094),
        proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)),
            1..6,
        ),
    )
        .prop_map(|(client_seed, mac, ttl, vlan, payloads)| Conn {
            client_seed,
            client_mac: [0x02, mac[0], mac[1], mac[2], mac[3], mac[4]],
            ttl,
            vlan,
            payloads,
        })
}

fn with_vlan(spec: PacketSpec, vlan: Option<u16>) -> PacketSpec {
    match vlan {
        Some(id) => spec.vlan(id),
        None => spec,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Under `nat`, for random connections (family, TCP or UDP, client and
    /// its MAC, TTL, VLAN tag, payloads): the first packet goes to its
    /// backend DNATed to `backend:9376` with TTL - 1; every reply from the
    /// backend goes back to the client's hop with source `VIP:80` and TTL -
    /// 1; every later client packet reaches the same backend. All
    /// byte-exact against frames pktgen writes from scratch.
    #[test]
    fn nat_replies_are_reverse_translated(
        fam in fam(),
        proto in proto(),
        sticky in any::<bool>(),
        n_backends in 1u8..=6,
        conns in proptest::collection::vec(conn(), 1..8),
    ) {
        let vip = fam.vip();
        let affinity = if sticky { Affinity::client_ip(10_800) } else { Affinity::None };
        let live = backends(fam, n_backends);
        let mut h = Harness::new(vec![spec(fam, proto, affinity, ForwardMode::Nat, live)]);
        let mut ports = Ports::new();
        for c in conns {
            let client = fam.client(c.client_seed);
            let sport = ports.next();
            let inbound = |spec: PacketSpec| {
                with_vlan(spec.src_mac(c.client_mac).dst_mac(LIMPET_MAC).ttl(c.ttl), c.vlan)
            };
            let first = inbound(match proto {
                Proto::Tcp => PacketSpec::tcp(client, vip, sport, 80).flags(SYN),
                Proto::Udp => {
                    PacketSpec::udp(client, vip, sport, 80).payload(c.payloads[0].1.clone())
                }
            });
            let (action, out) = h.send(&first.build());
            prop_assert_eq!(action, Action::Forward);
            let out = out.unwrap();
            let be = destination(&out);
            prop_assert_eq!(be.port(), BACKEND_PORT);
            let dnat = |spec: PacketSpec| {
                spec.src_mac(LIMPET_MAC)
                    .dst_mac(backend_mac(be.ip()))
                    .dst_ip(be.ip())
                    .dst_port(BACKEND_PORT)
                    .ttl(c.ttl - 1)
                    .build()
            };
            prop_assert_eq!(&out, &dnat(first.clone()), "DNAT of the first packet");
            for (i, (from_backend, payload)) in c.payloads.iter().enumerate() {
                if *from_backend || i == 0 {
                    // The backend answers, to the client's address and port.
                    let answer = first.reply_from(be);
                    let answer = match proto {
                        Proto::Tcp if i > 0 => answer.flags(PSH | ACK),
                        _ => answer,
                    };
                    let reply = with_vlan(
                        answer
                            .src_mac(backend_mac(be.ip()))
                            .dst_mac(LIMPET_MAC)
                            .ttl(c.ttl)
                            .payload(payload.clone()),
                        c.vlan,
                    );
                    let (action, out) = h.send(&reply.build());
                    prop_assert_eq!(action, Action::Forward, "reply {} not forwarded", i);
                    let expected = reply
                        .clone()
                        .src_mac(LIMPET_MAC)
                        .dst_mac(c.client_mac)
                        .src_ip(vip)
                        .src_port(80)
                        .ttl(c.ttl - 1)
                        .build();
                    prop_assert_eq!(out.as_ref(), Some(&expected), "reverse NAT of reply {}", i);
                } else {
                    let pkt = inbound(match proto {
                        Proto::Tcp => PacketSpec::tcp(client, vip, sport, 80)
                            .flags(PSH | ACK)
                            .payload(payload.clone()),
                        Proto::Udp => {
                            PacketSpec::udp(client, vip, sport, 80).payload(payload.clone())
                        }
                    });
                    let (action, out) = h.send(&pkt.build());
                    prop_assert_eq!(action, Action::Forward);
                    prop_assert_eq!(out, Some(dnat(pkt)), "DNAT of client packet {}", i);
                }
            }
        }
    }

    /// Under `dsr`, for random connections and packets of them, the frame
    /// sent differs from the frame received only in its MAC addresses
    /// (source limpet's, destination a backend's): addresses, ports, TTL
    /// and checksums untouched. Every packet of a connection reaches the
    /// same backend MAC, and under `ClientIP` so does every connection of
    /// a client.
    #[test]
    fn dsr_never_rewrites_l3(
        fam in fam(),
        proto in proto(),
        sticky in any::<bool>(),
        n_backends in 1u8..=6,
        conns in proptest::collection::vec((0usize..4, conn()), 1..12),
        client_pool in proptest::collection::vec(any::<u128>(), 4),
    ) {
        let vip = fam.vip();
        let affinity = if sticky { Affinity::client_ip(10_800) } else { Affinity::None };
        let live = backends(fam, n_backends);
        let macs: BTreeSet<[u8; 6]> = live.iter().map(|b| b.mac.0).collect();
        let mut h = Harness::new(vec![spec(fam, proto, affinity, ForwardMode::Dsr, live)]);
        let mut ports = Ports::new();
        let mut client_mac_of: BTreeMap<IpAddr, [u8; 6]> = BTreeMap::new();
        for (who, c) in conns {
            let client = fam.client(client_pool[who]);
            let sport = ports.next();
            let mut conn_mac = None;
            for (i, (_, payload)) in c.payloads.iter().enumerate() {
                let base = match proto {
                    Proto::Tcp if i == 0 => PacketSpec::tcp(client, vip, sport, 80).flags(SYN),
                    Proto::Tcp => PacketSpec::tcp(client, vip, sport, 80)
                        .flags(PSH | ACK)
                        .payload(payload.clone()),
                    Proto::Udp => PacketSpec::udp(client, vip, sport, 80).payload(payload.clone()),
                };
                let frame = with_vlan(
                    base.src_mac(c.client_mac).dst_mac(LIMPET_MAC).ttl(c.ttl),
                    c.vlan,
                )
                .build();
                let (action, out) = h.send(&frame);
                prop_assert_eq!(action, Action::Forward);
                let out = out.unwrap();
                prop_assert_eq!(out.len(), frame.len());
                prop_assert_eq!(&out[12..], &frame[12..], "dsr changed bytes past the MACs");
                prop_assert_eq!(&out[6..12], &LIMPET_MAC[..]);
                let mac: [u8; 6] = out[..6].try_into().unwrap();
                prop_assert!(macs.contains(&mac), "unknown destination MAC {:02x?}", mac);
                prop_assert_eq!(*conn_mac.get_or_insert(mac), mac, "connection moved");
            }
            if sticky {
                let mac = conn_mac.unwrap();
                let first = *client_mac_of.entry(client).or_insert(mac);
                prop_assert_eq!(first, mac, "client {} moved", client);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A changed `timeoutSeconds` applies to existing entries

/// One client's entry under a timeout changed from `t1` to `t2` after `d`
/// seconds idle; see the two properties below.
fn timeout_change_case(
    fam: Fam,
    t1: u32,
    t2: u32,
    d: u32,
    seed: u128,
    probes: &[u32],
) -> Result<(), TestCaseError> {
    let vip = fam.vip();
    let old = backends(fam, 4);
    let mut new = old.clone();
    new.push(fam.backend(5));
    let old_spec = spec(
        fam,
        Proto::Tcp,
        Affinity::client_ip(t1),
        ForwardMode::Nat,
        old,
    );
    let new_spec = spec(
        fam,
        Proto::Tcp,
        Affinity::client_ip(t2),
        ForwardMode::Nat,
        new,
    );
    let client = client_moved_by(
        fam,
        &Snapshot::build(1, vec![old_spec.clone()]).unwrap(),
        &Snapshot::build(1, vec![new_spec.clone()]).unwrap(),
        seed,
    );
    let mut h = Harness::new(vec![old_spec]);
    let mut ports = Ports::new();
    let a = open(&mut h, Proto::Tcp, client, ports.next(), vip);
    h.tick(d);
    idle_poll(&mut h);
    prop_assert_eq!(affinity_len(&h), 1);
    h.update(vec![new_spec]);
    let m = maglev_choice(&h, fam, Proto::Tcp, client);
    let stats = h.worker.stats();
    let gone_before = stats.affinity_expired + stats.affinity_misses;
    let got = open(&mut h, Proto::Tcp, client, ports.next(), vip);
    if d > t2 {
        prop_assert_eq!(got, m, "idle {} > new timeout {}: not re-picked", d, t2);
        // The entry is not honoured: either the re-filing after the swap
        // reaped it (a miss) or the lookup found it expired.
        let stats = h.worker.stats();
        prop_assert_eq!(
            stats.affinity_expired + stats.affinity_misses,
            gone_before + 1
        );
    } else {
        prop_assert_eq!(got, a, "idle {} <= new timeout {}: moved", d, t2);
    }
    let last = now(&h);
    // Probe the reap at random idle times, then at the boundary.
    let mut points: Vec<u32> = probes.iter().map(|p| t2 * p / 128).collect();
    points.extend([t2, t2 + 1]);
    points.sort_unstable();
    for idle in points {
        h.clock.set(last + idle);
        idle_poll(&mut h);
        prop_assert_eq!(
            affinity_entries(&h).contains_key(&client),
            idle <= t2,
            "t1={} t2={} d={}: entry present at {} s idle",
            t1,
            t2,
            d,
            idle
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The timeout is read from the current snapshot (affinity.rs): a
    /// snapshot that changes `timeoutSeconds` from `t1` to `t2` applies to
    /// an existing entry at once. Published at the same second as the last
    /// reap (so only the lookup's lazy check can tell), a client idle for
    /// `d > t2` seconds is re-picked by Maglev (a new backend makes that
    /// observable), one idle `d <= t2` stays. Afterwards the entry is reaped
    /// exactly when it has been idle `t2 + 1` seconds. This property keeps
    /// to `d + t2 >= t1` (the entry's new deadline is no earlier than the
    /// one it was filed under); the other side is
    /// `shortened_timeout_reaps_on_time` below.
    #[test]
    fn changed_timeout_applies_to_existing_entries(
        fam in fam(),
        t1 in 2u32..=3000,
        t2_frac in 1u32..=128,
        d_frac in 1u32..=64,
        seed in any::<u128>(),
        probes in proptest::collection::vec(0u32..=128, 1..6),
    ) {
        let d = (t1 * d_frac / 64).max(1);
        let t2 = (t1 * t2_frac / 64).max(1).max(t1 - d);
        timeout_change_case(fam, t1, t2, d, seed, &probes)?;
    }

    /// The same property where the new timeout makes the entry's deadline
    /// earlier than the one it was filed under on the timer wheel
    /// (`d + t2 < t1`). The wheel only moves entries later by itself, so
    /// the worker re-files the table after a snapshot that cuts a timeout;
    /// without that the entry stayed, dead, until its old deadline
    /// (t1 = 3, then t2 = 1 after d = 1 s: still present at 2 s idle).
    #[test]
    fn shortened_timeout_reaps_on_time(
        fam in fam(),
        t1 in 3u32..=3000,
        t2_frac in 0u32..=64,
        d_frac in 0u32..=64,
        seed in any::<u128>(),
        probes in proptest::collection::vec(0u32..=128, 1..6),
    ) {
        // 1 <= d, 1 <= t2, d + t2 < t1.
        let d = 1 + (t1 - 3) * d_frac / 64;
        let t2 = 1 + (t1 - 2 - d) * t2_frac / 64;
        timeout_change_case(fam, t1, t2, d, seed, &probes)?;
    }
}

/// The consequence for a full table had the re-filing been missing: after
/// `timeoutSeconds` is cut from 1000 to 10, an entry dead for 89 s would
/// still fill the table (filed under its old deadline), and the next new
/// client would evict a *live* entry instead of the dead one.
#[test]
fn timeout_cut_frees_dead_entries_before_evicting_live_ones() {
    let fam = Fam::V4;
    let vip = fam.vip();
    let specs = |t| {
        vec![spec(
            fam,
            Proto::Tcp,
            Affinity::client_ip(t),
            ForwardMode::Nat,
            backends(fam, 3),
        )]
    };
    let mut h = Harness::with_capacity(specs(1000), 1 << 12, 2);
    let (a, b, c) = (fam.client(1), fam.client(2), fam.client(3));
    let mut ports = Ports::new();
    open(&mut h, Proto::Tcp, a, ports.next(), vip); // t = 1000
    h.update(specs(10)); // a is dead from t = 1011 on
    h.tick(100);
    open(&mut h, Proto::Tcp, b, ports.next(), vip); // t = 1100
    let a_lingers = affinity_entries(&h).contains_key(&a);
    h.tick(5);
    open(&mut h, Proto::Tcp, c, ports.next(), vip); // t = 1105, table full?
    let entries = affinity_entries(&h);
    let evictions = h.worker.stats().affinity_evictions;
    assert!(
        !a_lingers && entries.contains_key(&b) && evictions == 0,
        "a (idle 100 s, timeout 10) still in the table at t=1100: {a_lingers}; \
         live b (idle 5 s) kept: {}; live entries evicted: {evictions}; table now {entries:?}",
        entries.contains_key(&b)
    );
}

/// What the admin API lists matches what is honoured: right after a hit an
/// entry shows `timeoutSeconds` to go (never one more), counts down a
/// second a tick, shows 0 in its last honoured tick, and is gone the tick
/// after.
#[test]
fn listed_expiry_counts_down_from_the_timeout() {
    let fam = Fam::V4;
    let vip = fam.vip();
    let timeout = 600;
    let mut h = Harness::new(vec![spec(
        fam,
        Proto::Tcp,
        Affinity::client_ip(timeout),
        ForwardMode::Nat,
        backends(fam, 3),
    )]);
    let a = fam.client(1);
    let mut ports = Ports::new();
    open(&mut h, Proto::Tcp, a, ports.next(), vip);
    let expires = |h: &mut Harness| -> Vec<Option<u32>> {
        h.list_affinity().iter().map(|r| r.expires_in).collect()
    };
    assert_eq!(expires(&mut h), [Some(timeout)]);
    h.tick(1);
    assert_eq!(expires(&mut h), [Some(timeout - 1)]);
    h.tick(timeout - 1);
    assert_eq!(expires(&mut h), [Some(0)], "its last honoured tick");
    h.tick(1);
    assert_eq!(expires(&mut h), [], "past its timeout");
}
