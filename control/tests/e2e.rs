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

/// A `type: LoadBalancer` Service with `externalTrafficPolicy: Local`:
/// its `healthCheckNodePort` answers as kube-proxy's does (200 and the
/// count while this node has a ready endpoint, 503 once it has none), and
/// its load-balancer address reaches only this node's endpoint while its
/// cluster IP reaches all of them.
#[test]
fn health_check_node_port_follows_this_nodes_endpoints() {
    testbed::must_be_root();
    let _testbed = testbed::Testbed::up(3);
    let config = Config::new("health");
    let service = |local_ready: bool| {
        let mut eps = [ep(1), ep(2), ep(3)];
        eps[0].ready = local_ready;
        eps[0].serving = local_ready;
        let text = manifest(Some(10800), &eps);
        // The IPv4 Service alone, as a load balancer.
        let (svc, rest) = text.split_once("---\n").unwrap();
        let v4_slice = rest.split("---\n").next().unwrap();
        let svc = svc
            .replace(
                "  type: ClusterIP\n",
                "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n",
            )
            .replace("  - \"2001:db8:5::10\"\n", "")
            .replace("ipFamilies: [IPv4, IPv6]", "ipFamilies: [IPv4]")
            .replace("RequireDualStack", "SingleStack")
            .replace("targetPort: 9376\n", "targetPort: 9376\n    nodePort: 30080\n");
        format!(
            "{svc}status:\n  loadBalancer:\n    ingress:\n    - ip: 192.0.2.20\n---\n{v4_slice}"
        )
    };
    config.write(&service(true));
    let mut args = Io::AfPacket.args(&["lb0"], 1);
    args.extend(
        [
            "--address",
            "203.0.113.1/24",
            "--node-name",
            "node-1",
            "--forward",
            "nat",
        ]
        .map(str::to_owned),
    );
    let limpet = Limpet::start_with(&config, &args);
    let probe = || -> (u16, serde_json::Value) {
        const GET: &str = r"
import sys, time, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for attempt in range(50):  # the port opens as the configuration is taken
    try:
        r = opener.open('http://127.0.0.1:32000/healthz', timeout=3)
        code, body, weight = r.status, r.read(), r.headers['X-Load-Balancing-Endpoint-Weight']
        break
    except urllib.error.HTTPError as e:
        code, body, weight = e.code, e.read(), e.headers['X-Load-Balancing-Endpoint-Weight']
        break
    except urllib.error.URLError:
        time.sleep(0.1)
else:
    sys.exit('port 32000 never answered')
print(code, weight)
sys.stdout.write(body.decode())
";
        let out =
            testbed::sh(Command::new("ip").args(["netns", "exec", "lp-lb", "python3", "-c", GET]));
        let (head, body) = out.split_once('\n').unwrap();
        let (code, weight) = head.split_once(' ').unwrap();
        let body: serde_json::Value = serde_json::from_str(body).expect("kube-proxy's JSON");
        assert_eq!(weight, body["localEndpoints"].to_string(), "weight header");
        (code.parse().unwrap(), body)
    };
    let (code, body) = probe();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({
            "service": {"namespace": "default", "name": "hostnames"},
            "localEndpoints": 1,
            "serviceProxyHealthy": true,
        })
    );
    // External traffic: this node's endpoint only; cluster traffic: all.
    let external = testbed::http("192.0.2.20", "198.18.0.10", 20, 2);
    let reached: std::collections::BTreeSet<String> = external.sticky().into_values().collect();
    assert_eq!(
        reached.len(),
        1,
        "externalTrafficPolicy Local reached {reached:?}"
    );
    let cluster = testbed::http(testbed::VIP4, "198.18.1.10", 40, 1);
    let all: std::collections::BTreeSet<String> = cluster.sticky().into_values().collect();
    assert!(all.len() > 1, "the cluster IP reached only {all:?}");
    assert!(reached.is_subset(&all));

    // This node's endpoint goes unready: 503, no local endpoint.
    let before = limpet.published();
    config.write(&service(false));
    limpet.wait_published(before);
    let (code, body) = probe();
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["localEndpoints"], 0);
    assert_eq!(body["serviceProxyHealthy"], true);
}
