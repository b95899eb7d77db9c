//! Katran-style fixtures: a table of {description, input frame, expected
//! action, expected output frame} run in order against the real pipeline
//! (state carries over, so a reply fixture follows its connection's SYN).
//! Expected frames are written by pktgen from scratch, full checksums
//! included, so a byte-exact match also proves the incremental updates.

mod common;

use common::fixtures::{BE4, CLIENT4, VIP4, VIP4_EMPTY, inbound, ip, run_table, specs};
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
    // ARP, the unknown VIP, the echo to an address limpet does not hold,
    // and the host's IGMP and MLD reports.
    assert_eq!(stats.slow_path, 5);
    // The unknown VIP and the four packets to a port no service defines.
    assert_eq!(stats.no_service, 5);
    assert_eq!(stats.dropped(DropReason::IcmpNoConnection), 2);
    assert_eq!(stats.dropped(DropReason::NoBackend), 0);
    let icmp = stats.icmp;
    assert_eq!((icmp.errors_to_client, icmp.errors_to_backend), (3, 2));
    assert_eq!(icmp.echo_replies, 4);
    assert_eq!(icmp.rejects, 6);
    assert_eq!(icmp.rejects_rate_limited + icmp.rejects_unsent, 0);
}

/// The port unreachables a worker sends are bounded by its token bucket,
/// refilled each second; what it holds back is dropped and counted.
#[test]
fn rejects_are_rate_limited_per_worker() {
    let mut h = harness_with_reject_rate(2);
    let syn = |sport: u16| {
        inbound(PacketSpec::tcp(ip(CLIENT4), ip(VIP4_EMPTY), sport, 80).flags(SYN)).build()
    };
    assert_eq!(h.send(&syn(1)).0, Action::Forward);
    assert_eq!(h.send(&syn(2)).0, Action::Forward);
    let (action, out) = h.send(&syn(3));
    assert_eq!((action, out), (Action::Drop(DropReason::NoBackend), None));
    h.tick(1);
    assert_eq!(h.send(&syn(4)).0, Action::Forward);
    let s = h.worker.stats();
    assert_eq!((s.icmp.rejects, s.icmp.rejects_rate_limited), (3, 1));
    assert_eq!(s.dropped(DropReason::NoBackend), 1);
    // A rate of 0 sends none: the packet is dropped as before.
    let mut off = harness_with_reject_rate(0);
    assert_eq!(
        off.send(&syn(5)),
        (Action::Drop(DropReason::NoBackend), None)
    );
}

#[test]
fn echo_can_be_turned_off() {
    let mut h = Harness::with_config(specs(), |c| c.icmp.echo = false);
    let ping = etherparse::PacketBuilder::ethernet2(common::CLIENT_MAC, LIMPET_MAC)
        .ipv4([198, 18, 0, 1], [192, 0, 2, 10], 64)
        .icmpv4_echo_request(1, 1);
    let mut frame = Vec::new();
    ping.write(&mut frame, b"x").unwrap();
    assert_eq!(h.send(&frame), (Action::SlowPath, None));
}

/// An ICMP error that names a connection but whose checksum is wrong is
/// dropped, never translated.
#[test]
fn icmp_error_with_a_bad_checksum_is_dropped() {
    let mut h = harness();
    h.connect(ip(CLIENT4), 40000, ip(VIP4));
    let inner = common::fixtures::dnat(
        inbound(PacketSpec::tcp(ip(CLIENT4), ip(VIP4), 40000, 80).flags(SYN)),
        BE4,
    )
    .build();
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], LIMPET_MAC)
        .ipv4([203, 0, 113, 254], [198, 18, 0, 1], 64)
        .icmpv4_raw(3, 4, [0, 0, 5, 0])
        .write(&mut frame, &common::icmp::ip_packet(&inner))
        .unwrap();
    assert_eq!(h.send(&frame).0, Action::Forward);
    let last = frame.len() - 1;
    frame[last] ^= 0x55;
    assert_eq!(
        h.send(&frame),
        (Action::Drop(DropReason::BadChecksum), None)
    );
}

fn harness_with_reject_rate(rate: u32) -> Harness {
    Harness::with_config(specs(), |c| c.icmp.reject_rate = rate)
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
