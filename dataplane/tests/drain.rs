//! Draining an endpoint, over the real pipeline: what the control plane
//! publishes for a drain (the endpoint at weight 0 until the deadline, then
//! gone) and what the worker does with it. A draining endpoint takes no new
//! client but keeps its sticky clients and open connections; after the
//! deadline its sticky clients re-pick and its open TCP connections stay
//! until they end. The worker counts what still points at it.

mod common;

use common::{Harness, backend, service};
use limpet_dataplane::command::BackendLoad;
use limpet_dataplane::snapshot::{Affinity, ForwardMode, ServicePortSpec};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

const VIP: &str = "192.0.2.10";
const CLIENTS: u32 = 300;
/// Backend 203.0.113.11 (id 11) is the one drained.
const DRAINED: u32 = 11;

fn client(n: u32) -> IpAddr {
    IpAddr::V4((0xc612_0000 | n).into())
}

/// The service with backends .11, .12, .13; `drained` sets .11's weight
/// (0: draining), `None` leaves it out (its deadline passed).
fn spec(drained: Option<u32>) -> ServicePortSpec {
    let mut backends = Vec::new();
    for n in [11, 12, 13] {
        let mut b = backend(&format!("203.0.113.{n}"));
        if n == 11 {
            match drained {
                Some(w) => b.weight = w,
                None => continue,
            }
        }
        backends.push(b);
    }
    service(
        1,
        VIP,
        6,
        Affinity::client_ip(10800),
        ForwardMode::Nat,
        backends,
    )
}

fn drained_addr() -> SocketAddr {
    "203.0.113.11:9376".parse().unwrap()
}

#[test]
fn a_drained_endpoint_keeps_its_clients_until_the_deadline_and_its_connections_after() {
    let vip: IpAddr = VIP.parse().unwrap();
    let mut h = Harness::new(vec![spec(Some(1))]);
    let mut placed = BTreeMap::new();
    for n in 0..CLIENTS {
        placed.insert(n, h.connect(client(n), 1000, vip));
    }
    let pinned: Vec<u32> = placed
        .iter()
        .filter(|(_, b)| **b == drained_addr())
        .map(|(n, _)| *n)
        .collect();
    assert!(pinned.len() > 50, "only {} clients on .11", pinned.len());
    // Their first connections end; one client keeps a second one open.
    let keeper = pinned[0];
    for &n in &pinned {
        let fin = limpet_pktgen::PacketSpec::tcp(client(n), vip, 1000, 80)
            .flags(limpet_pktgen::FIN | limpet_pktgen::ACK)
            .src_mac(common::CLIENT_MAC)
            .dst_mac(common::LIMPET_MAC)
            .build();
        h.send(&fin);
    }
    assert_eq!(h.connect(client(keeper), 2000, vip), drained_addr());
    let other: SocketAddr = "203.0.113.12:9376".parse().unwrap();
    let on_other = placed.values().filter(|b| **b == other).count() as u64;
    assert_eq!(
        h.backend_load(&[DRAINED, 12]),
        [
            BackendLoad {
                pinned_clients: pinned.len() as u64,
                open_connections: 1,
            },
            // Handshakes not finished are open too.
            BackendLoad {
                pinned_clients: on_other,
                open_connections: on_other,
            },
        ]
    );

    // Draining: weight 0. No new client reaches it; its own clients do.
    h.update(vec![spec(Some(0))]);
    for n in CLIENTS..CLIENTS * 3 {
        assert_ne!(
            h.connect(client(n), 1000, vip),
            drained_addr(),
            "new client {n} placed on the draining endpoint"
        );
    }
    for &n in &pinned {
        assert_eq!(
            h.connect(client(n), 3000, vip),
            drained_addr(),
            "sticky client {n} left the draining endpoint before its deadline"
        );
    }
    // Clients of the others stay where they were.
    for (n, b) in &placed {
        if *b != drained_addr() {
            assert_eq!(h.connect(client(*n), 3000, vip), *b);
        }
    }

    // The deadline: the endpoint leaves the set. Its sticky clients
    // re-pick, the open connection stays until it ends.
    h.update(vec![spec(None)]);
    for &n in &pinned {
        assert_ne!(h.connect(client(n), 4000, vip), drained_addr());
    }
    assert_eq!(h.data(client(keeper), 2000, vip), drained_addr());
    // Open: the kept connection and the pinned clients' second ones; the
    // first ones closed.
    assert_eq!(
        h.backend_load(&[DRAINED]),
        [BackendLoad {
            pinned_clients: 0,
            open_connections: pinned.len() as u64 + 1,
        }]
    );
}
