//! Real TCP through limpet on the network-namespace testbed
//! (`scripts/testbed`): three backends answering their own name on port
//! 9376, a Service on 192.0.2.10 / `2001:db8:5::10` port 80, and HTTP clients
//! from many addresses. Modelled on the Kubernetes e2e session-affinity
//! tests. Needs root (CI is root); without it the test fails, loudly.
//!
//! The testbed's namespaces are global, so every scenario runs in one test
//! function, in order, on one testbed (`testbed::story`, shared with the
//! DPDK run in `e2e_dpdk.rs`).

mod testbed;

use std::process::Command;
use testbed::LIMPET;
use testbed::story::{Config, Io, Limpet, ep, manifest, session_affinity};

#[test]
fn session_affinity_end_to_end() {
    session_affinity(Io::AfPacket);
}

#[test]
fn invalid_manifest_at_start_up_exits_non_zero_naming_the_field() {
    let config = Config::new("invalid");
    config.write(&manifest(Some(86401), &[ep(1)]));
    // The configuration is checked before any interface is touched.
    let out = Command::new(LIMPET)
        .args(["run", "--config"])
        .arg(&config.dir)
        .args(["--io", "afpacket:lp-does-not-exist"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "limpet accepted timeoutSeconds 86401"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hostnames.yaml"), "no file named: {err}");
    assert!(err.contains("hostnames"), "no object named: {err}");
    assert!(
        err.contains("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
        "no field named: {err}"
    );
}

/// As a new user meets limpet at boot: started a moment before its link
/// has carrier, it waits for the link (and says so) instead of exiting;
/// and with a manifest directory and no `--node-address`, a node port is
/// served on limpet's own `--address`, as kube-proxy serves node ports on
/// every node address.
#[test]
fn starts_before_its_link_has_carrier_and_serves_nodeports_on_its_own_address() {
    testbed::must_be_root();
    let _testbed = testbed::Testbed::up(3);
    let config = Config::new("boot");
    config.write(
        &manifest(Some(10800), &[ep(1), ep(2), ep(3)])
            .replace("type: ClusterIP", "type: NodePort")
            .replace(
                "targetPort: 9376\n",
                "targetPort: 9376\n    nodePort: 30080\n",
            ),
    );
    // lb0 loses carrier while its peer on the bridge is down.
    let peer = |state: &str| {
        testbed::sh(Command::new("ip").args(["-n", "lp-sw", "link", "set", "sw-lb", state]));
    };
    peer("down");
    let later = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        peer("up");
    });
    let limpet = Limpet::start(&config, Io::AfPacket, "nat", 1);
    later.join().unwrap();
    let log = limpet.log_text();
    assert!(
        log.contains("waiting for the link") && log.contains("link up"),
        "no word of the wait:\n{log}"
    );
    assert!(
        log.contains("NodePorts served on"),
        "no word of NodePorts:\n{log}"
    );
    let sticky = testbed::clientip_sticks(testbed::VIP4, "198.18.0.10", 20);
    assert_eq!(sticky.len(), 20);

    // The client reaches limpet's own address on its link.
    testbed::sh(Command::new("ip").args([
        "-n",
        "lp-client",
        "route",
        "add",
        "203.0.113.1/32",
        "dev",
        "cl0",
        "src",
        "198.51.100.2",
    ]));
    let out = testbed::sh(
        Command::new("ip")
            .args(["netns", "exec", "lp-client", "python3"])
            .arg(testbed::repo().join("scripts/testbed-client.py"))
            .args([
                "--vip",
                "203.0.113.1",
                "--port",
                "30080",
                "--first",
                "198.18.1.10",
                "--clients",
                "20",
                "--requests",
                "2",
                "--timeout",
                "3",
            ]),
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("client JSON");
    let answered = v["results"]
        .as_object()
        .expect("results")
        .values()
        .flat_map(|r| r.as_array().expect("requests").iter())
        .filter(|a| a.is_string())
        .count();
    assert_eq!(answered, 40, "NodePort 30080 on 203.0.113.1: {out}");
}

/// The admin API deletes affinity entries: on a non-loopback address
/// without a token limpet refuses to start, before touching an interface.
#[test]
fn an_exposed_admin_api_without_a_token_is_refused_at_start() {
    let config = Config::new("exposed");
    config.write(&manifest(Some(10800), &[ep(1)]));
    let out = Command::new(LIMPET)
        .args(["run", "--config"])
        .arg(&config.dir)
        .args([
            "--io",
            "afpacket:lp-does-not-exist",
            "--admin",
            "0.0.0.0:9901",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "limpet served /v1 on 0.0.0.0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--admin 0.0.0.0:9901") && err.contains("--admin-token-file"),
        "{err}"
    );
}
