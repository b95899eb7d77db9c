//! The memory the tables say they take is the memory they take: after
//! filling a worker's four tables (IPv4 and IPv6 connections and affinity
//! entries) to capacity, the process's resident set grew by their
//! `capacity x bytes_per_entry` within 10%. One test in its own binary, so
//! nothing else allocates meanwhile.

use limpet_dataplane::affinity::{AffinityKey, AffinityTable};
use limpet_dataplane::family::Family;
use limpet_dataplane::flow::{Flow, FlowTable, FlowTimeouts};
use limpet_dataplane::wire::tcp::flags::ACK;
use std::net::{Ipv4Addr, Ipv6Addr};

const CAPACITY: usize = 1 << 19;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Client `i` of a family: distinct for every `i`.
fn client<A: Family>(i: u32) -> A {
    let mut octets = [0u8; 16];
    if A::LEN == 4 {
        octets[..4].copy_from_slice(&i.to_be_bytes());
    } else {
        octets[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        octets[12..].copy_from_slice(&i.to_be_bytes());
    }
    A::from_octets16(&octets)
}

fn fill_affinity<A: Family>(t: &mut AffinityTable<A>) {
    for i in 0..t.capacity() as u32 {
        let key = AffinityKey {
            service: 1,
            client: client::<A>(i),
        };
        t.insert(key, 1, 60, 0, |_| Some(60)).expect("insert");
    }
    assert_eq!(t.len(), t.capacity());
    assert_eq!(t.counters().evictions, 0);
}

fn fill_flows<A: Family>(t: &mut FlowTable<A>) {
    let vip = client::<A>(u32::MAX);
    let backend = client::<A>(u32::MAX - 1);
    for i in 0..t.capacity() as u32 {
        let flow = Flow {
            client: client::<A>(i),
            service_addr: vip,
            backend_addr: backend,
            client_port: 1024,
            service_port: 80,
            backend_port: 9376,
            protocol: 6,
            nat: true,
            ..Flow::default()
        };
        t.insert(flow, ACK, 0).expect("insert");
    }
    assert_eq!(t.len(), t.capacity());
    assert_eq!(t.counters().evictions, 0);
}

#[test]
fn full_tables_take_what_bytes_per_entry_says() {
    let before = resident_bytes();
    let mut a4 = AffinityTable::<Ipv4Addr>::new(CAPACITY, 0).unwrap();
    let mut a6 = AffinityTable::<Ipv6Addr>::new(CAPACITY, 0).unwrap();
    let mut f4 = FlowTable::<Ipv4Addr>::new(CAPACITY, FlowTimeouts::default(), 0).unwrap();
    let mut f6 = FlowTable::<Ipv6Addr>::new(CAPACITY, FlowTimeouts::default(), 0).unwrap();
    fill_affinity(&mut a4);
    fill_affinity(&mut a6);
    fill_flows(&mut f4);
    fill_flows(&mut f6);
    let grew = resident_bytes().saturating_sub(before) as f64;
    let said = [
        ("affinity v4", a4.bytes_per_entry()),
        ("affinity v6", a6.bytes_per_entry()),
        ("flows v4", f4.bytes_per_entry()),
        ("flows v6", f6.bytes_per_entry()),
    ];
    let expected: f64 = said.iter().map(|(_, b)| b * CAPACITY as f64).sum();
    let ratio = grew / expected;
    eprintln!(
        "four tables of {CAPACITY} entries ({}): resident set grew {:.1} MiB, \
         capacity x bytes_per_entry = {:.1} MiB, ratio {ratio:.3}",
        said.map(|(n, b)| format!("{n} {b:.1} B")).join(", "),
        grew / 1_048_576.0,
        expected / 1_048_576.0,
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "resident set grew {grew} bytes for tables that say {expected}"
    );
}
