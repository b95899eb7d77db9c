//! `limpet demo`: the in-memory pipeline on a built-in example, with no
//! network and no privileges. It shows what limpet is for: many clients,
//! each sticking to one backend across new connections, and removing one
//! endpoint moving only that endpoint's clients.

use limpet_dataplane::clock::ManualClock;
use limpet_dataplane::io::MemoryIo;
use limpet_dataplane::pipeline::{Action, Worker, WorkerConfig};
use limpet_dataplane::snapshot::{Affinity, Backend, ForwardMode, ServicePortSpec, Snapshot};
use limpet_dataplane::wire::{MacAddr, ethernet, ipv4};
use limpet_pktgen::{ClientSet, PacketSpec, SYN};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// What the demo is asked to do.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub clients: usize,
    pub backends: usize,
    pub connections: usize,
    pub timeout: u32,
}

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend {
            id: i as u32 + 1,
            addr: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10 + i as u8)),
            port: 9376,
            weight: 1,
            mac: MacAddr([0x02, 0xbb, 0, 0, 0, 10 + i as u8]),
            iface: 0,
        })
        .collect()
}

fn spec(backends: Vec<Backend>, timeout: u32) -> ServicePortSpec {
    ServicePortSpec {
        id: 1,
        name: "default/hostnames:80/TCP".into(),
        protocol: 6,
        affinity: Affinity::client_ip(timeout),
        mode: ForwardMode::Nat,
        frontends: vec![(IpAddr::V4(VIP), 80)],
        backends,
        maglev_size: None,
        source_ranges: None,
    }
}

/// Sends one SYN from `client:sport` and returns the backend address it was
/// translated to.
fn connect(
    worker: &mut Worker<MemoryIo, ManualClock>,
    client: IpAddr,
    sport: u16,
) -> Option<Ipv4Addr> {
    let syn = PacketSpec::tcp(client, IpAddr::V4(VIP), sport, 80)
        .flags(SYN)
        .build();
    worker.io_mut().inject(&syn, 0);
    worker.poll();
    if worker.last_actions(1).first() != Some(&Action::Forward) {
        return None;
    }
    let (_, frame) = worker.io_mut().take_sent()?;
    let eth = ethernet::Frame::new_checked(&frame[..]).ok()?;
    let ip = ipv4::Packet::new_checked(eth.payload()).ok()?;
    Some(ip.dst_addr())
}

/// Prints which backend each client reached (the first few) and how many
/// clients each backend got; returns the latter.
fn write_placement(
    out: &mut String,
    before: &BTreeMap<IpAddr, Ipv4Addr>,
    connections: usize,
) -> BTreeMap<Ipv4Addr, usize> {
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:>11}",
        "client", "backend", "connections"
    );
    for (client, be) in before.iter().take(12) {
        let _ = writeln!(out, "{client:<16} {be:<16} {connections:>11}");
    }
    if before.len() > 12 {
        let _ = writeln!(out, "... and {} more clients", before.len() - 12);
    }
    let mut per_backend: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for be in before.values() {
        *per_backend.entry(*be).or_default() += 1;
    }
    let _ = writeln!(out, "\nclients per backend:");
    for (be, n) in &per_backend {
        let _ = writeln!(out, "  {be:<16} {n}");
    }
    per_backend
}

/// Runs the demo and returns its report.
pub fn run(config: &DemoConfig) -> Result<String, String> {
    if config.backends == 0 || config.backends > 200 {
        return Err("--backends must be between 1 and 200".into());
    }
    let clients = ClientSet::v4(config.clients).map_err(|e| e.to_string())?;
    let all = backends(config.backends);
    let clock = ManualClock::new(0);
    let snapshot =
        Snapshot::build(1, vec![spec(all.clone(), config.timeout)]).map_err(|e| e.to_string())?;
    let worker_config = WorkerConfig {
        flow_capacity: (config.clients * config.connections * 2).max(1024),
        affinity_capacity: config.clients.max(1024),
        ..WorkerConfig::default()
    };
    let mut worker = Worker::new(
        MemoryIo::new(64),
        clock.clone(),
        worker_config,
        Arc::new(snapshot),
    )
    .map_err(|e| e.to_string())?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "limpet demo: {} clients x {} new connections each to {VIP}:80 (ClientIP, timeoutSeconds {}), {} backends\n",
        config.clients, config.connections, config.timeout, config.backends
    );

    // Phase 1: every client opens several connections, one second apart.
    let mut before: BTreeMap<IpAddr, Ipv4Addr> = BTreeMap::new();
    let mut split = 0usize;
    for round in 0..config.connections {
        for client in clients.iter() {
            let Some(be) = connect(&mut worker, client, 10_000 + round as u16) else {
                return Err(format!("connection from {client} was not forwarded"));
            };
            if *before.entry(client).or_insert(be) != be {
                split += 1;
            }
        }
        clock.advance(1);
    }
    let per_backend = write_placement(&mut out, &before, config.connections);
    let _ = writeln!(
        out,
        "clients whose connections went to more than one backend: {split} (sticky: {})",
        if split == 0 { "yes" } else { "NO" }
    );

    // Phase 2: remove one endpoint; only its clients may move.
    let removed = all[0].addr;
    let remaining: Vec<Backend> = all.iter().skip(1).cloned().collect();
    let snapshot =
        Snapshot::build(2, vec![spec(remaining, config.timeout)]).map_err(|e| e.to_string())?;
    worker.set_snapshot(Arc::new(snapshot));
    let (mut moved, mut moved_others) = (0usize, 0usize);
    for client in clients.iter() {
        let be = connect(&mut worker, client, 20_000).ok_or("connection not forwarded")?;
        let was = before[&client];
        if be != was {
            if IpAddr::V4(was) == removed {
                moved += 1;
            } else {
                moved_others += 1;
            }
        }
    }
    let on_removed = per_backend.get(&match removed {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    });
    let _ = writeln!(
        out,
        "\nremoved endpoint {removed}: {moved} of its {} clients moved, {moved_others} other clients moved",
        on_removed.copied().unwrap_or(0)
    );
    let stats = worker.stats();
    let _ = writeln!(
        out,
        "worker: {} packets, {} new connections, affinity hits {}, misses {}, stale {}, entries {} ({:.1} bytes each)",
        stats.rx_packets,
        stats.new_flows,
        stats.affinity_hits,
        stats.affinity_misses,
        stats.affinity_stale,
        worker.affinity_v4().len(),
        worker.affinity_v4().bytes_per_entry()
    );
    if split != 0 || moved_others != 0 {
        return Err(format!("{out}\nstickiness violated"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_is_sticky_and_moves_only_removed_clients() {
        let report = run(&DemoConfig {
            clients: 300,
            backends: 3,
            connections: 4,
            timeout: 10800,
        })
        .unwrap();
        assert!(report.contains("sticky: yes"), "{report}");
        assert!(report.contains(", 0 other clients moved"), "{report}");
    }
}
