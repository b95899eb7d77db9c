//! Source NAT over real TCP on the namespace testbed (`limpet run --io
//! afpacket:lb0`, three backends, two workers so replies must be steered
//! home by port), IPv4 and IPv6:
//!
//! - **hairpin** under `nat`: each backend reaches its own Service through
//!   limpet. Without source NAT the chosen endpoint (itself, or a
//!   neighbour on its subnet) answers it directly, past the reverse
//!   translation, and every connection fails;
//! - **fullnat**: the backends lose every route to the clients (only their
//!   own subnet is left, as for backends in another L3 domain), and the
//!   ordinary clients still connect and stay sticky by their own address;
//!   the same topology under `nat` fails, which shows the routes are gone.
//!
//! Needs root (CI is root); without it the test fails, loudly.

mod testbed;

use std::process::Command;
use testbed::story::{Config, Io, Limpet, ep, manifest};
use testbed::{
    Answers, Testbed, VIP4, VIP6, admin_get, clientip_sticks, http, http_from, must_be_root, sh,
};

const BACKENDS: u8 = 3;

fn all_answered(what: &str, a: &Answers) {
    let failed: Vec<_> = a
        .results
        .iter()
        .filter(|(_, r)| r.iter().any(Option::is_none))
        .collect();
    assert!(failed.is_empty(), "{what}: failed requests {failed:?}");
}

#[test]
fn hairpin_and_fullnat_over_real_tcp() {
    must_be_root();
    let testbed = Testbed::up(usize::from(BACKENDS));
    let config = Config::new("snat");
    config.write(&manifest(Some(10800), &[ep(1), ep(2), ep(3)]));

    {
        let limpet = Limpet::start(&config, Io::AfPacket, "nat", 2);
        for n in 1..=BACKENDS {
            let ns = format!("lp-be{n}");
            // Eight new connections from one backend's own address, each
            // to the backend its affinity holds (often another one; for
            // one backend of three, itself).
            let v4 = http_from(&ns, VIP4, &format!("203.0.113.1{n}"), 1, 8);
            all_answered(&format!("{ns} to {VIP4}"), &v4);
            let v6 = http_from(&ns, VIP6, &format!("2001:db8:be::1{n}"), 1, 8);
            all_answered(&format!("{ns} to {VIP6}"), &v6);
        }
        // Clients off the backends' subnet keep their own address.
        clientip_sticks(VIP4, "198.18.0.10", 16);
        clientip_sticks(VIP6, "2001:db8:c1::10", 16);
        let (_, metrics) = admin_get("/metrics");
        let snat_drops: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("limpet_drops_total") && l.contains("snat"))
            .collect();
        assert_eq!(snat_drops.len(), 4, "{metrics}");
        assert!(
            snat_drops.iter().all(|l| l.ends_with(" 0")),
            "{snat_drops:?}"
        );
        drop(limpet);
    }

    for n in 1..=BACKENDS {
        let ns = format!("lp-be{n}");
        sh(Command::new("ip").args(["-n", &ns, "route", "del", "default"]));
        sh(Command::new("ip").args(["-n", &ns, "-6", "route", "del", "default"]));
    }
    {
        let _limpet = Limpet::start(&config, Io::AfPacket, "fullnat", 2);
        let v4 = clientip_sticks(VIP4, "198.18.0.10", 24);
        let v6 = clientip_sticks(VIP6, "2001:db8:c1::10", 24);
        assert_eq!((v4.len(), v6.len()), (24, 24));
    }
    {
        let _limpet = Limpet::start(&config, Io::AfPacket, "nat", 2);
        let a = http(VIP4, "198.18.0.40", 1, 1);
        assert!(
            a.results.values().flatten().all(Option::is_none),
            "nat answered with no route back to the client: {:?}",
            a.results
        );
    }
    drop(testbed);
}
