//! Draining an endpoint with a deadline, on real TCP through limpet on the
//! testbed: `limpet drain ADDR --deadline 10s` keeps the endpoint's sticky
//! clients and its open connection and gives it no new client; after the
//! deadline its sticky clients re-pick while the open connection still
//! completes on it; the drain's progress (clients pinned, connections
//! open) reads as the traffic says; a cancel gives it new clients again.
//! Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// A figure for the log: written to stderr itself, past libtest's capture
/// of `println!`, so a passing run in CI prints it too.
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod testbed;

use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use testbed::story::{Config, Io, Limpet, ep, manifest};
use testbed::{HeldConnections, LIMPET, VIP4, http, sh};

const DEADLINE_S: u64 = 10;

/// `limpet ARGS...` in lp-lb.
fn limpet(args: &[&str]) -> String {
    sh(Command::new("ip")
        .args(["netns", "exec", "lp-lb", LIMPET])
        .args(args))
}

fn drains() -> Vec<Value> {
    serde_json::from_str(&limpet(&["drain", "--json"])).expect("limpet drain --json")
}

/// Backend name (lp-beN) -> its address.
fn addr_of(name: &str) -> String {
    format!("203.0.113.1{}", name.trim_start_matches("lp-be"))
}

#[test]
#[allow(clippy::too_many_lines)] // one drain, in order
fn a_drained_endpoint_keeps_its_clients_until_the_deadline_and_its_connection_after() {
    testbed::must_be_root();
    let _testbed = testbed::Testbed::up(3);
    let config = Config::new("drain");
    config.write(&manifest(Some(10800), &[ep(1), ep(2), ep(3)]));
    let limpet_run = Limpet::start(&config, Io::AfPacket, "nat", 1);

    // Sticky clients on every backend.
    let first: BTreeMap<String, String> = http(VIP4, "198.18.0.10", 60, 2).sticky();
    assert_eq!(first.len(), 60, "every client sticky: {first:?}");
    let (keeper, drained) = first
        .iter()
        .next()
        .map(|(c, b)| (c.clone(), b.clone()))
        .unwrap();
    let drained_addr = addr_of(&drained);
    let pinned: Vec<&String> = first
        .iter()
        .filter(|(_, b)| **b == drained)
        .map(|(c, _)| c)
        .collect();

    // An open connection to it, from one of its clients.
    let held = HeldConnections::open(std::slice::from_ref(&keeper), VIP4, config.dir.join("go"));

    let said = limpet(&[
        "drain",
        &drained_addr,
        "--deadline",
        &format!("{DEADLINE_S}s"),
    ]);
    assert!(said.contains("draining"), "{said}");
    let started = Instant::now();
    // The control loop republishes within its tick.
    std::thread::sleep(Duration::from_millis(500));

    // Draining: its progress, no new client, its own clients stay.
    let d = &drains()[0];
    report!("drain: {d}");
    assert_eq!(d["target"], drained_addr.as_str());
    assert_eq!(d["phase"], "draining");
    assert_eq!(d["clients_pinned"], pinned.len() as u64, "{d}");
    assert!(d["connections_open"].as_u64().unwrap() >= 1, "{d}");
    let listed = limpet(&["affinity", "list"]);
    assert!(listed.contains("(draining)"), "{listed}");
    let fresh = http(VIP4, "198.18.1.10", 100, 2).sticky();
    assert!(
        fresh.values().all(|b| *b != drained),
        "a new client reached the draining {drained}"
    );
    let again = http(VIP4, "198.18.0.10", 60, 1).sticky();
    assert_eq!(again, first, "sticky clients moved before the deadline");
    assert!(
        started.elapsed() < Duration::from_secs(DEADLINE_S),
        "the checks took longer than the deadline"
    );

    // The deadline passes: its sticky clients re-pick, the open connection
    // completes on it.
    let deadline = Instant::now() + Duration::from_secs(DEADLINE_S + 10);
    while drains()[0]["phase"] != "deadline_passed" {
        assert!(Instant::now() < deadline, "deadline never passed");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = http(VIP4, "198.18.0.10", 60, 1).sticky();
    let moved: Vec<&String> = first
        .iter()
        .filter(|(c, b)| after.get(*c) != Some(*b))
        .map(|(c, _)| c)
        .collect();
    report!(
        "drain: after the deadline {} of {} clients of {drained} re-picked, {} others moved",
        pinned.iter().filter(|c| after[**c] != drained).count(),
        pinned.len(),
        moved.len() - pinned.len()
    );
    assert!(after.values().all(|b| *b != drained));
    assert_eq!(moved, pinned, "only the drained endpoint's clients move");
    assert_eq!(
        held.finish(),
        std::slice::from_ref(&drained),
        "the open connection did not complete on its backend"
    );
    let d = &drains()[0];
    report!("drain after the deadline: {d}");
    assert_eq!(d["clients_pinned"], 0, "{d}");

    // Cancelled: it takes new clients again.
    let said = limpet(&["drain", &drained_addr, "--cancel"]);
    assert!(said.contains("cancelled"), "{said}");
    assert!(drains().is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let back = http(VIP4, "198.18.2.10", 100, 1).sticky();
    assert!(
        back.values().any(|b| *b == drained),
        "no new client reached {drained} after the cancel"
    );
    let log = limpet_run.log_text();
    assert!(
        log.contains("drain started") && log.contains("drain cancelled"),
        "the drain is not in limpet's log:\n{log}"
    );
}
