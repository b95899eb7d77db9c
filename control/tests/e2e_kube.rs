//! Real TCP through limpet on the network-namespace testbed
//! (`scripts/testbed`), with the configuration coming from the Kubernetes
//! API: `limpet run --kubeconfig` against the fake API server
//! (`fake_apiserver`), which the test drives while HTTP clients send
//! traffic. The clients must see what the manifest-driven end-to-end test
//! (`e2e.rs`) requires: only a removed endpoint's clients move, adding one
//! moves nobody, affinity can be switched off and on, an invalid object is
//! refused while the rest keep working, and an API server outage keeps the
//! last state serving (not ready meanwhile) until it returns.
//!
//! limpet runs in the lp-lb namespace and reaches the API server on
//! 127.0.0.1 there, so the fake server's listening sockets are opened from a
//! thread that entered lp-lb (see [`in_lb`]).
//!
//! Needs root (CI is root); without it the test fails, loudly. The
//! testbed's namespaces are global, so everything runs in one test function.
#![allow(unsafe_code)] // setns() and geteuid() in the harness only.

mod fake_apiserver;
mod testbed;

use fake_apiserver::{FakeApiServer, Resource};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testbed::story;
use testbed::{
    LIMPET, Testbed, VIP4, VIP6, admin_get, clientip_sticks, http, must_be_root, none_spreads, sh,
};

/// The invalid Service's address (nothing answers there).
const BROKEN_VIP: &str = "192.0.2.20";
const LB_NS: &str = "/run/netns/lp-lb";

/// Runs `f` on a thread inside lp-lb's network namespace. Sockets it opens
/// (the fake API server's listener) and threads it starts (its runtime's
/// workers) stay there.
fn in_lb<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let file = std::fs::File::open(LB_NS).expect("open lp-lb's namespace file");
            // SAFETY: `file` is an open network namespace descriptor; setns
            // only changes this (scoped, short-lived) thread's namespace.
            let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

// ---- API objects -------------------------------------------------------

/// The example Service, dual-stack, port 80 -> 9376; `affinity` is
/// `Some(timeoutSeconds)` for `ClientIP`.
fn hostnames(affinity: Option<i64>) -> Value {
    service("hostnames", &[VIP4, VIP6], affinity)
}

fn service(name: &str, ips: &[&str], affinity: Option<i64>) -> Value {
    let families: Vec<&str> = ips
        .iter()
        .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
        .collect();
    let mut spec = json!({
        "type": "ClusterIP",
        "clusterIP": ips[0],
        "clusterIPs": ips,
        "ipFamilies": families,
        "ipFamilyPolicy": if ips.len() > 1 { "RequireDualStack" } else { "SingleStack" },
        "ports": [{"port": 80, "protocol": "TCP", "targetPort": 9376}],
        "sessionAffinity": "None",
    });
    if let Some(t) = affinity {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
    }
    json!({
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"namespace": "default", "name": name},
        "spec": spec,
    })
}

/// A slice of `service` with ready endpoints on backends `backends`
/// (`203.0.113.1N` or `2001:db8:be::1N`), port 9376.
fn slice(service: &str, v6: bool, backends: &[u8]) -> Value {
    let endpoints: Vec<Value> = backends
        .iter()
        .map(|n| {
            let addr = if v6 {
                format!("2001:db8:be::1{n}")
            } else {
                format!("203.0.113.1{n}")
            };
            json!({
                "addresses": [addr],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{n}"),
            })
        })
        .collect();
    let family = if v6 { "v6" } else { "v4" };
    json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "namespace": "default",
            "name": format!("{service}-{family}"),
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": if v6 { "IPv6" } else { "IPv4" },
        "endpoints": endpoints,
        "ports": [{"name": "", "port": 9376, "protocol": "TCP"}],
    })
}

/// Sets the example Service's endpoints (both families; IPv4 last).
fn set_endpoints(api: &FakeApiServer, backends: &[u8]) {
    api.apply(slice("hostnames", true, backends));
    api.apply(slice("hostnames", false, backends));
}

// ---- limpet ------------------------------------------------------------

/// A running `limpet run --kubeconfig` in the lp-lb namespace, stopped when
/// dropped.
struct Limpet(story::Limpet);

impl Limpet {
    fn start(kubeconfig: &Path, log: PathBuf) -> Self {
        let args = [
            "--io",
            "afpacket:lb0",
            "--address",
            "203.0.113.1/24",
            "--address",
            "2001:db8:be::1/64",
            "--forward",
            "nat",
            "--workers",
            "1",
        ]
        .map(str::to_owned);
        Limpet(story::Limpet::spawn(
            &[OsStr::new("--kubeconfig"), kubeconfig.as_os_str()],
            &args,
            log,
        ))
    }

    fn log_text(&self) -> String {
        self.0.log_text()
    }

    /// Waits until the published snapshot serves `VIP4:80` with exactly
    /// backends `backends` and `ClientIP` affinity or not.
    fn wait_serving(&self, backends: &[u8], client_ip: bool) {
        let want: BTreeSet<String> = backends
            .iter()
            .map(|n| format!("203.0.113.1{n}:9376"))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = Value::Null;
        loop {
            let (code, body) = admin_get("/v1/services");
            if code == 200 {
                last = serde_json::from_str(&body).expect("/v1/services JSON");
                let port = last["services"].as_array().and_then(|s| {
                    s.iter().find(|p| {
                        p["frontends"]
                            .as_array()
                            .is_some_and(|f| f.iter().any(|a| a == &json!(format!("{VIP4}:80"))))
                    })
                });
                if let Some(port) = port {
                    let have: BTreeSet<String> = port["backends"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|b| {
                            let b = b.as_str().unwrap();
                            b.split_once(' ').map_or(b, |(a, _)| a).to_owned()
                        })
                        .collect();
                    let affinity = port["affinity"].as_str().unwrap_or("");
                    if have == want && affinity.starts_with("ClientIp") == client_ip {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "limpet does not serve backends {backends:?} (ClientIP: {client_ip}) after 15 s; \
                 /v1/services: {last:#}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `/readyz` answers `code`; returns the body.
    fn wait_readyz(&self, code: u16, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let (c, body) = admin_get("/readyz");
            if c == code {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz still answers {c} ({body:?}), not {code}, after {within:?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Only the clients of `removed` moved (and not onto it); the rest stayed.
fn only_removed_moved(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    removed: &str,
) {
    assert!(
        before.values().any(|b| b == removed),
        "no client was on {removed}, the check proves nothing: {before:?}"
    );
    for (client, was) in before {
        let now = &after[client];
        if was == removed {
            assert_ne!(now, removed, "{client} still on the removed endpoint");
        } else {
            assert_eq!(
                now, was,
                "{client} moved from {was} to {now} though its endpoint stayed"
            );
        }
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one story, in order, on one testbed
fn kubernetes_api_end_to_end() {
    must_be_root();
    let _testbed = Testbed::up(4);
    let dir = tempfile::tempdir().unwrap();

    // The fake API server listens on lp-lb's loopback.
    let mut api = in_lb(FakeApiServer::start);
    api.apply(hostnames(Some(10800)));
    set_endpoints(&api, &[1, 2, 3]);
    let kubeconfig = api.write_kubeconfig(dir.path());

    // --- initial sync: ClientIP sticks, IPv4 and IPv6 ---
    let limpet = Limpet::start(&kubeconfig, dir.path().join("limpet.log"));
    limpet.wait_serving(&[1, 2, 3], true);
    limpet.wait_readyz(200, Duration::from_secs(10));
    let before = clientip_sticks(VIP4, "198.18.0.10", 100);
    clientip_sticks(VIP6, "2001:db8:c1::10", 30);

    // --- endpoint removed (slice updated): only its clients move ---
    set_endpoints(&api, &[1, 3]);
    limpet.wait_serving(&[1, 3], true);
    let after = http(VIP4, "198.18.0.10", 100, 4).sticky();
    only_removed_moved(&before, &after, "lp-be2");

    // --- endpoint added: nobody moves ---
    set_endpoints(&api, &[1, 3, 4]);
    limpet.wait_serving(&[1, 3, 4], true);
    assert_eq!(
        http(VIP4, "198.18.0.10", 100, 4).sticky(),
        after,
        "a client moved when an endpoint was added"
    );

    // --- affinity off, then on again ---
    api.apply(hostnames(None));
    limpet.wait_serving(&[1, 3, 4], false);
    none_spreads(VIP4, "198.18.1.10");
    api.apply(hostnames(Some(10800)));
    limpet.wait_serving(&[1, 3, 4], true);
    http(VIP4, "198.18.1.20", 20, 16).sticky();

    // --- an invalid object is refused; the rest keeps working ---
    // Turning affinity off dropped every entry; pin the clients again.
    let pinned = http(VIP4, "198.18.0.10", 100, 2).sticky();
    api.apply(service("broken", &[BROKEN_VIP], Some(0)));
    api.apply(slice("broken", false, &[1, 2]));
    let refusal = || {
        limpet
            .log_text()
            .lines()
            .find(|l| l.contains("refused") && l.contains("broken"))
            .map(str::to_owned)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while refusal().is_none() {
        assert!(
            Instant::now() < deadline,
            "the invalid service was not refused:\n{}",
            limpet.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let refusal = refusal().expect("a refusal line");
    assert!(
        refusal.contains("timeoutSeconds"),
        "the refusal does not name the field: {refusal}"
    );
    let (_, services) = admin_get("/v1/services");
    assert!(
        !services.contains(BROKEN_VIP),
        "the invalid service is served: {services}"
    );
    assert_eq!(
        http(VIP4, "198.18.0.10", 100, 2).sticky(),
        pinned,
        "clients moved after an invalid object was refused"
    );
    limpet.wait_readyz(200, Duration::from_secs(5));

    // --- API server down: the last state keeps serving, not ready ---
    api.down();
    let body = limpet.wait_readyz(503, Duration::from_secs(15));
    assert!(
        body.contains("Kubernetes API"),
        "/readyz does not say why: {body:?}"
    );
    assert_eq!(
        http(VIP4, "198.18.0.10", 100, 2).sticky(),
        pinned,
        "clients moved while the API server was down"
    );
    clientip_sticks(VIP4, "198.18.2.10", 20);
    sh(Command::new("ip").args([
        "netns", "exec", "lp-lb", LIMPET, "affinity", "list", "--json",
    ]));
    assert_eq!(admin_get("/readyz").0, 503, "ready again while down");

    // --- API server back: ready again, and later changes take effect ---
    in_lb(|| api.up());
    limpet.wait_readyz(200, Duration::from_secs(45));
    set_endpoints(&api, &[3, 4]);
    limpet.wait_serving(&[3, 4], true);
    let recovered = http(VIP4, "198.18.0.10", 100, 2).sticky();
    only_removed_moved(&pinned, &recovered, "lp-be1");
    // The fake server saw limpet come back (a watch or list after the outage).
    assert!(
        api.watch_count(Resource::EndpointSlices) >= 2,
        "no new endpointslice watch after the outage: {:?}",
        api.requests()
    );
}
