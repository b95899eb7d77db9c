//! limpet's `ClientIP` annotations over real TCP on the namespace testbed
//! (`limpet run --io afpacket`, three backends): clients grouped by prefix
//! share a backend, v4 and v6, and a client whose entry expired is placed
//! again by its address (the default: it returns to its backend) or per
//! connection (load spreads again). Needs root (CI is root); without it
//! the test fails, loudly.
//!
//! The testbed's client ranges are 198.18.0.0/22 and one /64,
//! `2001:db8:c1::/64`, so the prefixes under test are a v4 /26 and a v6
//! /120: groups of 64 and 256 addresses, many groups per range.

mod testbed;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use testbed::story::{Config, Io, Limpet, ep, manifest};
use testbed::{Testbed, VIP4, VIP6, http, must_be_root};

/// The testbed's Service with `annotations` on its metadata.
fn annotated(timeout: u32, annotations: &[(&str, &str)]) -> String {
    let base = manifest(Some(timeout), &[ep(1), ep(2), ep(3)]);
    if annotations.is_empty() {
        return base;
    }
    let mut block = String::from("  annotations:\n");
    for (k, v) in annotations {
        let _ = writeln!(block, "    {k}: \"{v}\"");
    }
    // The Service's metadata comes first in the file.
    let at =
        base.find("  namespace: default\n").expect("metadata") + "  namespace: default\n".len();
    format!("{}{block}{}", &base[..at], &base[at..])
}

/// For each of `groups` prefixes (the `n`th at `first + n * stride`),
/// `per_group` clients with a connection each: every group reaches one
/// backend, and the groups are spread over more than one.
fn groups_share_a_backend(
    vip: &str,
    addrs: impl Fn(usize) -> String,
    groups: usize,
    per_group: usize,
) {
    let mut used = BTreeSet::new();
    for g in 0..groups {
        let first = addrs(g);
        let answers = http(vip, &first, per_group, 2);
        let placed = answers.sticky();
        let backends: BTreeSet<&String> = placed.values().collect();
        assert_eq!(
            backends.len(),
            1,
            "the {per_group} clients of the group from {first} reached {backends:?}"
        );
        used.extend(backends.into_iter().cloned());
    }
    assert!(used.len() >= 2, "{groups} groups all on {used:?}");
}

/// Pins `clients` clients from `first`, lets their entries expire (timeout
/// 2 s, idle 4 s), and connects them again: how many moved.
fn moved_after_expiry(limpet: &Limpet, vip: &str, first: &str, clients: usize) -> usize {
    let pinned = http(vip, first, clients, 2).sticky();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !limpet.affinity().iter().any(|e| e["client"] == first),
        "entry for {first} still listed after 4 s idle with timeoutSeconds 2"
    );
    let again = http(vip, first, clients, 1).sticky();
    pinned.iter().filter(|(c, b)| again[*c] != **b).count()
}

#[test]
fn affinity_prefixes_and_repick_end_to_end() {
    must_be_root();
    let _testbed = Testbed::up(3);
    let config = Config::new("affinity-keys");

    // --- prefixes: a v4 /26 and a v6 /120 identify a client ---
    config.write(&annotated(
        10_800,
        &[
            ("limpet.io/affinity-ipv4-prefix", "26"),
            ("limpet.io/affinity-ipv6-prefix", "120"),
        ],
    ));
    let limpet = Limpet::start(&config, Io::AfPacket, "nat", 1);
    // 12 groups: all on one backend by chance 1 time in 3^11.
    let v4 = |g: usize| {
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 64 * g as u32 + 5;
        Ipv4Addr::from(base).to_string()
    };
    groups_share_a_backend(VIP4, v4, 12, 6);
    let v6 = |g: usize| {
        let base =
            u128::from("2001:db8:c1::".parse::<Ipv6Addr>().unwrap()) + 0x100 * (g as u128 + 1) + 5;
        Ipv6Addr::from(base).to_string()
    };
    groups_share_a_backend(VIP6, v6, 6, 4);
    // One entry per prefix, keyed by it.
    let listed = limpet.affinity();
    assert!(
        listed.iter().any(|e| e["client"] == "198.18.0.0"),
        "no entry for 198.18.0.0/26: {listed:?}"
    );
    assert!(
        !listed.iter().any(|e| e["client"] == "198.18.0.5"),
        "an entry for a single address under a /26: {listed:?}"
    );
    assert!(
        listed.iter().any(|e| e["client"] == "2001:db8:c1::100"),
        "no entry for 2001:db8:c1::100/120: {listed:?}"
    );
    drop(limpet);

    // --- re-pick after expiry: by client address (default), every client
    // returns to its backend; per connection, load spreads again ---
    config.write(&annotated(2, &[]));
    let limpet = Limpet::start(&config, Io::AfPacket, "nat", 1);
    assert_eq!(
        moved_after_expiry(&limpet, VIP4, "198.18.1.10", 60),
        0,
        "a client moved after expiry with nothing changed (Repick ClientIP)"
    );
    assert_eq!(
        moved_after_expiry(&limpet, VIP6, "2001:db8:c1::610", 30),
        0,
        "an IPv6 client moved after expiry with nothing changed (Repick ClientIP)"
    );
    drop(limpet);
    config.write(&annotated(
        2,
        &[("limpet.io/affinity-repick", "Connection")],
    ));
    let limpet = Limpet::start(&config, Io::AfPacket, "nat", 1);
    // About two thirds move (a fresh pick over three backends).
    let moved = moved_after_expiry(&limpet, VIP4, "198.18.2.10", 60);
    assert!(
        moved >= 10,
        "only {moved} of 60 clients re-picked per connection"
    );
    let moved = moved_after_expiry(&limpet, VIP6, "2001:db8:c1::710", 30);
    assert!(
        moved >= 5,
        "only {moved} of 30 IPv6 clients re-picked per connection"
    );
}
