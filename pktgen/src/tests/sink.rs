//! The sink's accounting on synthetic traces with known answers.
#![allow(clippy::many_single_char_names)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::sink::{BackendSpec, Filter, Histogram, MAX_LATENCY_NS, Outcome, Sink, SinkReport};
use crate::{PacketSpec, Proto, stamp_payload};

const BE_MAC: [[u8; 6]; 3] = [
    [0x02, 0, 0, 0, 3, 1],
    [0x02, 0, 0, 0, 3, 2],
    [0x02, 0, 0, 0, 3, 3],
];

fn backends(macs: bool) -> Vec<BackendSpec> {
    (0..3)
        .map(|i| BackendSpec {
            name: format!("be{}", i + 1),
            mac: macs.then_some(BE_MAC[i]),
        })
        .collect()
}

fn client(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, i)
}

/// A forwarded UDP datagram as a backend receives it: client source, the
/// backend's address and port 9376, to the backend's MAC.
fn arrival(src: IpAddr, backend: usize) -> Vec<u8> {
    let dst: IpAddr = match src {
        IpAddr::V4(_) => Ipv4Addr::new(203, 0, 113, 11 + backend as u8).into(),
        IpAddr::V6(_) => "2001:db8:be::11".parse().unwrap(),
    };
    PacketSpec::udp(src, dst, 40_000, 9376)
        .dst_mac(BE_MAC[backend])
        .payload_len(16)
        .build()
}

fn run(sink: &mut Sink, trace: &[(IpAddr, usize)]) {
    for &(src, be) in trace {
        assert_eq!(sink.record(be, &arrival(src, be), 1), Outcome::Counted);
    }
}

#[test]
fn sticky_and_split_clients() {
    let mut sink = Sink::new(backends(true), Filter::default());
    let a = client(1).into();
    let b = client(2).into();
    let c = client(3).into();
    let d: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 0xc1, 0, 0, 0, 0, 4).into();
    let e = client(5).into();
    run(
        &mut sink,
        &[
            (a, 0),
            (a, 0),
            (a, 0),
            (b, 1),
            (b, 1),
            (c, 0),
            (c, 2),
            (d, 0),
            (d, 1),
            (d, 2),
            (e, 2),
        ],
    );
    let r = sink.tally(7).report(2.0);
    assert_eq!(r.packets, 11);
    assert_eq!(r.clients, 5);
    assert_eq!(r.clients_single_backend, 3); // a, b, e
    assert_eq!(r.clients_multi_backend, 2); // c, d
    assert_eq!(r.sticky_share, Some(0.6));
    assert_eq!(r.kernel_drops, 7);
    let pk = |n: &str| (r.backends[n].packets, r.backends[n].clients);
    assert_eq!(pk("be1"), (5, 3)); // a x3, c, d
    assert_eq!(pk("be2"), (3, 2)); // b x2, d
    assert_eq!(pk("be3"), (3, 3)); // c, d, e
    let split: Vec<IpAddr> = r.multi_backend_examples.iter().map(|(a, _)| *a).collect();
    assert_eq!(split, vec![c, d]);
    assert_eq!(
        r.client_backends[&c],
        BTreeMap::from([("be1".to_owned(), 1), ("be3".to_owned(), 1)])
    );
    assert!(r.latency.is_none());
    let table = r.table();
    assert!(table.contains("60.0000% sticky"), "{table}");
}

#[test]
fn filters_and_foreign_frames_are_ignored() {
    let mut sink = Sink::new(
        backends(true),
        Filter {
            proto: Some(Proto::Udp),
            dst_port: Some(9376),
            stamped: false,
        },
    );
    let src = Ipv4Addr::new(198, 18, 0, 1);
    let dst = Ipv4Addr::new(203, 0, 113, 11);
    let ok = PacketSpec::udp_v4(src, dst, 1, 9376)
        .dst_mac(BE_MAC[0])
        .build();
    let wrong_port = PacketSpec::udp_v4(src, dst, 1, 80)
        .dst_mac(BE_MAC[0])
        .build();
    let tcp = PacketSpec::tcp_v4(src, dst, 1, 9376)
        .dst_mac(BE_MAC[0])
        .build();
    // Flooded by the bridge: meant for backend 2, seen on backend 1.
    let other_mac = PacketSpec::udp_v4(src, dst, 1, 9376)
        .dst_mac(BE_MAC[1])
        .build();
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 1, 0, 0x08, 0x06]);
    arp.resize(60, 0);
    assert_eq!(sink.record(0, &ok, 1), Outcome::Counted);
    for f in [&wrong_port, &tcp, &other_mac, &arp, &ok[..10].to_vec()] {
        assert_eq!(sink.record(0, f, 1), Outcome::Ignored);
    }
    let r = sink.tally(0).report(1.0);
    assert_eq!((r.packets, r.ignored, r.clients), (1, 5, 1));

    // Without a MAC filter the flooded frame counts.
    let mut any = Sink::new(backends(false), Filter::default());
    assert_eq!(any.record(0, &other_mac, 1), Outcome::Counted);
}

#[test]
fn latency_from_stamps() {
    let mut sink = Sink::new(
        backends(true),
        Filter {
            stamped: true,
            ..Filter::default()
        },
    );
    let sent = 1_700_000_000_000_000_000u64;
    // Latencies 1..=10 us, in whole microseconds.
    for (i, lat_us) in (1..=10u64).enumerate() {
        let mut f = arrival(client(1).into(), 0);
        stamp_payload(&mut f, 0, i as u64, sent).unwrap();
        assert_eq!(sink.record(0, &f, sent + lat_us * 1000), Outcome::Counted);
    }
    // A stamp from the future and one far in the past are not latencies.
    let mut f = arrival(client(1).into(), 0);
    stamp_payload(&mut f, 0, 99, sent + 5).unwrap();
    sink.record(0, &f, sent);
    stamp_payload(&mut f, 0, 99, sent - MAX_LATENCY_NS - 1).unwrap();
    sink.record(0, &f, sent);
    let r = sink.tally(0).report(1.0);
    let l = r.latency.unwrap();
    assert_eq!(l.samples, 10);
    assert_eq!(r.stamp_invalid, 2);
    assert_eq!((l.min_ns, l.max_ns), (1000, 10_000));
    assert!((l.mean_ns - 5500.0).abs() < 1e-9);
    // Nearest rank: p50 is the 5th value, p90 the 9th, p99 the 10th; each
    // within the histogram's 1/32.
    for (got, want) in [(l.p50_ns, 5000), (l.p90_ns, 9000), (l.p99_ns, 10_000)] {
        let err = got.abs_diff(want) as f64 / want as f64;
        assert!(err <= 1.0 / 32.0, "got {got}, want {want}");
    }
}

#[test]
fn histogram_buckets_tile_the_range() {
    for i in 0..900 {
        assert_eq!(
            Histogram::bucket_of(Histogram::lower_bound(i)),
            i,
            "bucket {i}"
        );
        let next = Histogram::lower_bound(i) + Histogram::width(i);
        assert_eq!(Histogram::bucket_of(next), i + 1, "bucket {i}");
    }
    assert!(Histogram::bucket_of(u64::MAX) < 976);
    let mut v = 1u64;
    while v < u64::MAX / 3 {
        let b = Histogram::bucket_of(v);
        assert!(Histogram::lower_bound(b) <= v);
        assert!(v - Histogram::lower_bound(b) < Histogram::width(b));
        assert!(Histogram::width(b) * 16 <= Histogram::lower_bound(b).max(16));
        v = v * 3 + 1;
    }
}

#[test]
fn histogram_quantiles() {
    let mut h = Histogram::new();
    assert_eq!(h.quantile(0.5), None);
    for v in 1..=10 {
        h.record(v);
    }
    // Exact below 16.
    assert_eq!(h.quantile(0.5), Some(5));
    assert_eq!(h.quantile(0.9), Some(9));
    assert_eq!(h.quantile(0.99), Some(10));
    assert_eq!(h.quantile(1.0), Some(10));
    assert_eq!(h.quantile(0.0), Some(1));

    // 99 fast samples and one slow: p50 fast, p99 fast, p99.9 slow.
    let mut h = Histogram::new();
    h.record_n(20_000, 99);
    h.record(5_000_000);
    assert_eq!(h.quantile(0.5), Some(20_000)); // clamped to the minimum
    let p50 = h.quantile(0.5).unwrap();
    assert!(p50.abs_diff(20_000) <= 20_000 / 32);
    assert!(h.quantile(0.99).unwrap().abs_diff(20_000) <= 20_000 / 32);
    assert_eq!(h.quantile(0.999), Some(5_000_000));
}

#[test]
fn merge_recomputes_stickiness_across_sinks() {
    // Two sinks in two namespaces, one backend each.
    let mut s1 = Sink::new(
        vec![BackendSpec {
            name: "lp-be1".into(),
            mac: None,
        }],
        Filter::default(),
    );
    let mut s2 = Sink::new(
        vec![BackendSpec {
            name: "lp-be2".into(),
            mac: None,
        }],
        Filter {
            stamped: true,
            ..Filter::default()
        },
    );
    let a: IpAddr = client(1).into();
    let b: IpAddr = client(2).into();
    let c: IpAddr = client(3).into();
    for _ in 0..4 {
        s1.record(0, &arrival(a, 0), 100);
    }
    s1.record(0, &arrival(c, 0), 300);
    let mut f = arrival(b, 1);
    stamp_payload(&mut f, 0, 0, 50).unwrap();
    s2.record(0, &f, 200);
    stamp_payload(&mut f, 0, 1, 50).unwrap();
    let mut g = arrival(c, 1);
    stamp_payload(&mut g, 0, 2, 40).unwrap();
    s2.record(0, &g, 250);

    let r1 = s1.tally(1).report(3.0);
    let r2 = s2.tally(2).report(4.0);
    // Each alone: everyone sticky.
    assert_eq!(r1.sticky_share, Some(1.0));
    assert_eq!(r2.sticky_share, Some(1.0));

    // Through JSON, as `pktgen merge` reads them.
    let back: Vec<SinkReport> = [&r1, &r2]
        .iter()
        .map(|r| serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap())
        .collect();
    assert_eq!(back[0], r1);
    let m = SinkReport::merge(&back);
    assert_eq!(m.packets, 7);
    assert_eq!(m.clients, 3);
    assert_eq!(m.clients_single_backend, 2);
    assert_eq!(m.clients_multi_backend, 1);
    assert_eq!(m.multi_backend_examples[0].0, c);
    assert_eq!(m.backends["lp-be1"].packets, 5);
    assert_eq!(m.backends["lp-be2"].clients, 2);
    assert_eq!(m.kernel_drops, 3);
    assert!((m.duration_s - 4.0).abs() < 1e-12);
    assert_eq!((m.first_rx_ns, m.last_rx_ns), (Some(100), Some(300)));
    let l = m.latency.unwrap();
    assert_eq!((l.samples, l.min_ns, l.max_ns), (2, 150, 210));
    // Merging a merged report with nothing changes nothing.
    assert_eq!(SinkReport::merge(std::slice::from_ref(&m)), m);
}
