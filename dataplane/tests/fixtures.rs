//! Katran-style fixtures: a table of {description, input frame, expected
//! action, expected output frame} run in order against the real pipeline
//! (state carries over, so a reply fixture follows its connection's SYN).
//! Expected frames are written by pktgen from scratch, full checksums
//! included, so a byte-exact match also proves the incremental updates.

mod common;

use common::fixtures::{BE4, CLIENT4, VIP4, inbound, ip, run_table, specs};
use common::{Harness, LIMPET_MAC, backend, backend_mac, service};
use limpet_dataplane::pipeline::Action;
use limpet_dataplane::snapshot::{Affinity, ForwardMode};
use limpet_dataplane::stats::DropReason;
use limpet_pktgen::{ACK, PacketSpec, SYN};

fn harness() -> Harness {
    Harness::new(specs())
}

#[test]
fn fixture_table() {
    let mut h = harness();
    run_table(|f| h.send(&f.input));
    let stats = h.worker.stats();
    assert_eq!(stats.dropped(DropReason::Truncated), 2);
    assert_eq!(stats.dropped(DropReason::Fragment), 2);
    assert_eq!(stats.dropped(DropReason::TtlExceeded), 2);
    assert_eq!(stats.replies, 2);
    assert_eq!(stats.slow_path, 3);
    assert_eq!(stats.no_service, 2);
}

#[test]
fn established_connection_survives_backend_removal() {
    let vip = ip(VIP4);
    let mut h = Harness::new(vec![service(
        1,
        VIP4,
        6,
        Affinity::client_ip(10800),
        ForwardMode::Nat,
        vec![backend("203.0.113.1"), backend("203.0.113.2")],
    )]);
    let client = ip(CLIENT4);
    let first = h.connect(client, 5000, vip);
    let other = if first.ip() == ip("203.0.113.1") {
        "203.0.113.2"
    } else {
        "203.0.113.1"
    };
    h.update(vec![service(
        1,
        VIP4,
        6,
        Affinity::client_ip(10800),
        ForwardMode::Nat,
        vec![backend(other)],
    )]);
    // The open connection stays where it was (conntrack semantics)...
    assert_eq!(h.data(client, 5000, vip), first);
    // ...while its next new connection moves to a usable backend.
    assert_eq!(h.connect(client, 5001, vip).ip(), ip(other));
    assert_eq!(h.worker.stats().affinity_stale, 1);
}

#[test]
fn two_armed_forwarding_picks_ports() {
    // Clients arrive on port 1; the backend is reached through port 2.
    let mut be = backend(BE4);
    be.iface = 2;
    let mut h = Harness::new(vec![service(
        1,
        VIP4,
        6,
        Affinity::client_ip(10800),
        ForwardMode::Nat,
        vec![be],
    )]);
    let syn = inbound(PacketSpec::tcp(ip(CLIENT4), ip(VIP4), 41000, 80).flags(SYN));
    let (action, out) = h.send_on(&syn.build(), 1);
    assert_eq!(action, Action::Forward);
    assert_eq!(
        out.map(|(port, _)| port),
        Some(2),
        "forward leaves towards the backend"
    );
    let reply = PacketSpec::tcp(ip(BE4), ip(CLIENT4), 9376, 41000)
        .flags(SYN | ACK)
        .src_mac(backend_mac(ip(BE4)))
        .dst_mac(LIMPET_MAC);
    let (action, out) = h.send_on(&reply.build(), 2);
    assert_eq!(action, Action::Forward);
    assert_eq!(
        out.map(|(port, _)| port),
        Some(1),
        "reply leaves the way the client came in"
    );
}

#[test]
fn load_balancer_source_ranges_restrict_only_the_load_balancer_address() {
    let lb = "198.51.100.50";
    let mut spec = service(
        1,
        VIP4,
        6,
        Affinity::client_ip(10800),
        ForwardMode::Nat,
        vec![backend(BE4)],
    );
    spec.frontends.push((ip(lb), 80));
    spec.source_ranges = Some(limpet_dataplane::snapshot::SourceRanges {
        frontends: vec![ip(lb)],
        allowed: vec![(ip("198.18.0.0"), 15)],
    });
    let mut h = Harness::new(vec![spec]);
    let syn = |client: &str, dst: &str, sport: u16| {
        inbound(PacketSpec::tcp(ip(client), ip(dst), sport, 80).flags(SYN)).build()
    };
    assert_eq!(
        h.send(&syn(CLIENT4, lb, 42000)).0,
        Action::Forward,
        "allowed client"
    );
    assert_eq!(
        h.send(&syn("203.0.113.200", lb, 42001)).0,
        Action::Drop(DropReason::SourceRange),
        "client outside the ranges"
    );
    assert_eq!(
        h.send(&syn("203.0.113.200", VIP4, 42002)).0,
        Action::Forward,
        "the cluster IP is not restricted"
    );
    assert_eq!(h.worker.stats().dropped(DropReason::SourceRange), 1);
}
