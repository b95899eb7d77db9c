//! Translation of Kubernetes objects into service port specs, from YAML
//! fixtures, after kube-proxy's proxier tests.

use limpet_control::ids::IdAllocator;
use limpet_control::manifest::{LoadError, load_path};
use limpet_control::translate::{
    AffinityDefaults, HealthCheckPort, IpFamily, Scope, TrafficPolicy, TranslateContext,
    Translation, translate,
};
use limpet_dataplane::snapshot::{
    Affinity, ForwardMode, Repick, ServicePortSpec, Snapshot, SourceRanges,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn ctx() -> TranslateContext {
    TranslateContext {
        node_name: Some("node-a".to_owned()),
        node_addresses: vec![ip("198.51.100.1"), ip("2001:db8:1::1")],
        mode: ForwardMode::Nat,
        ..TranslateContext::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn run(name: &str) -> Translation {
    let m = load_path(&fixture(name)).unwrap_or_else(|e| panic!("{e}"));
    let t = m.translate(&ctx(), &mut IdAllocator::new());
    // Whatever translates must compile into a snapshot.
    Snapshot::build(1, t.specs.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    t
}

fn spec<'a>(t: &'a Translation, name: &str) -> &'a ServicePortSpec {
    t.specs.iter().find(|s| s.name == name).unwrap_or_else(|| {
        let names: Vec<&str> = t.specs.iter().map(|s| s.name.as_str()).collect();
        panic!("no spec {name} in {names:?}")
    })
}

fn fronts(s: &ServicePortSpec) -> Vec<String> {
    s.frontends
        .iter()
        .map(|&(a, p)| sock(a, p))
        .collect::<Vec<_>>()
}

fn backs(s: &ServicePortSpec) -> Vec<String> {
    s.backends.iter().map(|b| sock(b.addr, b.port)).collect()
}

fn sock(a: IpAddr, p: u16) -> String {
    match a {
        IpAddr::V4(a) => format!("{a}:{p}"),
        IpAddr::V6(a) => format!("[{a}]:{p}"),
    }
}

fn no_errors(t: &Translation) {
    let errors: Vec<String> = t.errors.iter().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn hostnames_dual_stack() {
    let t = run("hostnames.yaml");
    no_errors(&t);
    assert_eq!(t.specs.len(), 2);
    let v4 = spec(&t, "default/hostnames:80/TCP");
    assert_eq!(v4.protocol, 6);
    assert_eq!(v4.affinity, Affinity::client_ip(30));
    assert_eq!(fronts(v4), ["192.0.2.10:80"]);
    assert_eq!(
        backs(v4),
        [
            "203.0.113.11:9376",
            "203.0.113.12:9376",
            "203.0.113.13:9376"
        ]
    );
    let v6 = spec(&t, "default/hostnames:80/TCP/v6");
    assert_eq!(v6.affinity, Affinity::client_ip(30));
    assert_eq!(fronts(v6), ["[2001:db8:5::10]:80"]);
    assert_eq!(
        backs(v6),
        [
            "[2001:db8:be::11]:9376",
            "[2001:db8:be::12]:9376",
            "[2001:db8:be::13]:9376"
        ]
    );
    assert_ne!(v4.id, v6.id);
    assert!(
        v4.backends
            .iter()
            .all(|b| b.weight == 1 && b.mac.0 == [0; 6])
    );
    let info = &t.info[t.specs.iter().position(|s| s.id == v6.id).unwrap()];
    assert_eq!(info.family, IpFamily::V6);
    assert_eq!(info.scope, Scope::All);
}

#[test]
fn session_affinity() {
    let t = run("cases/affinity.yaml");
    no_errors(&t);
    let cases = [
        ("default/sticky-default:80/TCP", Affinity::client_ip(10_800)),
        ("default/sticky-600:80/TCP", Affinity::client_ip(600)),
        ("default/sticky-max:53/UDP", Affinity::client_ip(86_400)),
        ("default/plain:80/TCP", Affinity::None),
    ];
    for (name, affinity) in cases {
        assert_eq!(spec(&t, name).affinity, affinity, "{name}");
    }
    assert_eq!(spec(&t, "default/sticky-max:53/UDP").protocol, 17);
    assert_eq!(
        backs(spec(&t, "default/sticky-default:80/TCP")),
        ["203.0.113.21:8080"]
    );
    // No slice: the service port is known, with nothing to send to.
    assert!(spec(&t, "default/plain:80/TCP").backends.is_empty());
}

#[test]
fn affinity_key_annotations() {
    let t = run("cases/affinity_keys.yaml");
    no_errors(&t);
    let client_ip = |timeout, v4_prefix, v6_prefix, repick| Affinity::ClientIp {
        timeout,
        v4_prefix,
        v6_prefix,
        repick,
    };
    let by_prefix = client_ip(10_800, 24, 64, Repick::ClientIp);
    let cases = [
        ("default/by-prefix:80/TCP", by_prefix),
        ("default/by-prefix:80/TCP/v6", by_prefix),
        (
            "default/spread-after-expiry:53/UDP",
            client_ip(60, 32, 128, Repick::Connection),
        ),
        ("default/defaults:80/TCP", Affinity::client_ip(10_800)),
        ("default/plain-annotated:80/TCP", Affinity::None),
    ];
    for (name, affinity) in cases {
        assert_eq!(spec(&t, name).affinity, affinity, "{name}");
    }

    // The flags' defaults apply where a Service does not say.
    let defaults = AffinityDefaults {
        v4_prefix: 28,
        v6_prefix: 56,
        repick: Repick::Connection,
    };
    let m = load_path(&fixture("cases/affinity_keys.yaml")).unwrap();
    let ctx = TranslateContext {
        affinity: defaults,
        ..ctx()
    };
    let t = m.translate(&ctx, &mut IdAllocator::new());
    no_errors(&t);
    let cases = [
        (
            "default/by-prefix:80/TCP",
            client_ip(10_800, 24, 64, Repick::Connection),
        ),
        (
            "default/spread-after-expiry:53/UDP",
            client_ip(60, 28, 56, Repick::Connection),
        ),
        (
            "default/defaults:80/TCP",
            client_ip(10_800, 28, 56, Repick::Connection),
        ),
        ("default/plain-annotated:80/TCP", Affinity::None),
    ];
    for (name, affinity) in cases {
        assert_eq!(spec(&t, name).affinity, affinity, "{name} under flags");
    }
}

#[test]
fn target_ports() {
    let t = run("cases/targetport.yaml");
    no_errors(&t);
    // Named targetPort, resolved per slice; duplicate 203.0.113.31 once.
    assert_eq!(
        backs(spec(&t, "shop/web:http/TCP")),
        [
            "203.0.113.31:8080",
            "203.0.113.32:8080",
            "203.0.113.33:8081"
        ]
    );
    // The slice without a `metrics` entry contributes nothing to that port.
    let metrics = spec(&t, "shop/web:metrics/TCP");
    assert_eq!(fronts(metrics), ["192.0.2.30:9100"]);
    assert_eq!(backs(metrics), ["203.0.113.31:9100", "203.0.113.32:9100"]);
    // Numeric targetPort of an unnamed port; only addresses[0]; protocol
    // picks the slice's TCP entry.
    let dns = spec(&t, "shop/dns:8443/TCP");
    assert_eq!(backs(dns), ["203.0.113.35:9443"]);
}

#[test]
fn endpoint_conditions() {
    let t = run("cases/conditions.yaml");
    no_errors(&t);
    // Ready (explicit or nil) only: not-ready and terminating left out.
    assert_eq!(
        backs(spec(&t, "default/mixed:80/TCP")),
        ["203.0.113.41:8080", "203.0.113.44:8080"]
    );
    // None ready: serving and terminating ones, not the non-serving one.
    assert_eq!(
        backs(spec(&t, "default/draining:80/TCP")),
        ["203.0.113.45:8080", "203.0.113.47:8080"]
    );
    assert!(spec(&t, "default/empty:80/TCP").backends.is_empty());
}

#[test]
fn skipped_services() {
    let m = load_path(&fixture("cases/skipped.yaml")).unwrap();
    assert_eq!(m.notes.len(), 1, "{:?}", m.notes);
    assert!(m.notes[0].contains("Deployment default/hostnames"));
    let t = m.translate(&ctx(), &mut IdAllocator::new());
    no_errors(&t);
    assert!(t.specs.is_empty(), "{:?}", t.specs);
    let skipped: Vec<&str> = t.skipped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        skipped,
        [
            "services/default/alias",
            "services/default/elsewhere",
            "services/default/headless"
        ]
    );
    assert!(t.skipped[1].1.contains("service-proxy-name"));
    assert!(t.skipped[2].1.contains("headless"));
}

#[test]
fn kind_list() {
    let t = run("cases/list.yaml");
    no_errors(&t);
    let s = spec(&t, "default/listed:443/TCP");
    assert_eq!(s.affinity, Affinity::client_ip(10_800));
    assert_eq!(fronts(s), ["192.0.2.60:443"]);
    assert_eq!(backs(s), ["203.0.113.61:8443", "203.0.113.62:8443"]);
}

#[test]
fn load_balancer_and_node_port() {
    let t = run("cases/loadbalancer.yaml");
    no_errors(&t);
    let edge = spec(&t, "default/edge:https/TCP");
    assert_eq!(edge.affinity, Affinity::client_ip(60));
    assert_eq!(
        fronts(edge),
        [
            "192.0.2.70:443",
            "198.51.100.60:443",
            "198.51.100.50:443",
            "198.51.100.1:30443"
        ]
    );
    assert_eq!(backs(edge), ["203.0.113.71:8443", "203.0.113.72:8443"]);
    let i = t.specs.iter().position(|s| s.id == edge.id).unwrap();
    assert_eq!(t.info[i].load_balancer_ips, [ip("198.51.100.50")]);
    assert_eq!(t.info[i].load_balancer_source_ranges, ["198.18.0.0/15"]);
    // Only the load-balancer address is restricted; node ports, cluster
    // and external IPs are not.
    assert_eq!(
        edge.source_ranges,
        Some(SourceRanges {
            frontends: vec![ip("198.51.100.50")],
            allowed: vec![(ip("198.18.0.0"), 15)],
        })
    );
    let compiled = Snapshot::build(1, vec![edge.clone()]).unwrap();
    let lb = compiled.service_index(ip("198.51.100.50"), 443, 6).unwrap();
    let node_port = compiled
        .service_index(ip("198.51.100.1"), 30443, 6)
        .unwrap();
    assert!(compiled.admits(lb, ip("198.18.5.5")));
    assert!(!compiled.admits(lb, ip("203.0.113.200")));
    assert!(compiled.admits(node_port, ip("203.0.113.200")));

    // externalTrafficPolicy Local: two scopes.
    let cluster = spec(&t, "default/edge-local:https/TCP");
    assert_eq!(fronts(cluster), ["192.0.2.71:443"]);
    assert_eq!(backs(cluster), ["203.0.113.73:8443", "203.0.113.74:8443"]);
    let external = spec(&t, "default/edge-local:https/TCP/external");
    assert_eq!(
        fronts(external),
        ["198.51.100.51:443", "198.51.100.1:30444"]
    );
    assert_eq!(backs(external), ["203.0.113.73:8443"]);
    assert_ne!(cluster.id, external.id);
    assert_eq!(external.affinity, Affinity::client_ip(10_800));
    let i = t.specs.iter().position(|s| s.id == external.id).unwrap();
    assert_eq!(t.info[i].scope, Scope::External);
    assert_eq!(t.info[i].external_traffic_policy, TrafficPolicy::Local);
    // kube-proxy's health check counts this node's (node-a's) endpoints.
    assert_eq!(
        t.info[i].health_check,
        Some(HealthCheckPort {
            node_port: 32444,
            local_endpoints: 1
        })
    );
    let e = t.specs.iter().position(|s| s.id == edge.id).unwrap();
    assert_eq!(t.info[e].health_check, None, "edge is not Local");
}

/// Under `fullnat`, external traffic to an `externalTrafficPolicy: Local`
/// service keeps its client address (kube-proxy never masquerades it);
/// cluster traffic is source-translated as asked.
#[test]
fn external_traffic_policy_local_is_never_masqueraded() {
    let m = load_path(&fixture("cases/loadbalancer.yaml")).unwrap();
    let ctx = TranslateContext {
        mode: ForwardMode::FullNat,
        ..ctx()
    };
    let t = m.translate(&ctx, &mut IdAllocator::new());
    no_errors(&t);
    assert_eq!(
        spec(&t, "default/edge-local:https/TCP/external").mode,
        ForwardMode::Nat
    );
    assert_eq!(
        spec(&t, "default/edge-local:https/TCP").mode,
        ForwardMode::FullNat
    );
    assert_eq!(
        spec(&t, "default/edge:https/TCP").mode,
        ForwardMode::FullNat
    );
}

#[test]
fn internal_traffic_policy_local() {
    let t = run("cases/local.yaml");
    no_errors(&t);
    let none_here = spec(&t, "default/node-local:80/TCP");
    assert_eq!(fronts(none_here), ["192.0.2.80:80"]);
    assert!(none_here.backends.is_empty());
    assert_eq!(
        backs(spec(&t, "default/node-local-here:80/TCP")),
        ["203.0.113.83:8080"]
    );
    // Without a node name nothing is local.
    let m = load_path(&fixture("cases/local.yaml")).unwrap();
    let t = m.translate(
        &TranslateContext {
            node_name: None,
            ..ctx()
        },
        &mut IdAllocator::new(),
    );
    assert!(
        spec(&t, "default/node-local-here:80/TCP")
            .backends
            .is_empty()
    );
}

#[test]
fn invalid_objects_are_reported_and_left_out() {
    let t = run("invalid");
    let errors: Vec<String> = t.errors.iter().map(ToString::to_string).collect();
    let dir = fixture("invalid");
    let f = |name: &str| dir.join(name).display().to_string();
    let expected = [
        format!(
            "services/default/affinity-prefix-over (file {}): metadata.annotations[limpet.io/affinity-ipv6-prefix]: Invalid value: \"129\": must be an integer from 1 to 128",
            f("affinity-prefix-over.yaml")
        ),
        format!(
            "services/default/affinity-prefix-word (file {}): metadata.annotations[limpet.io/affinity-ipv4-prefix]: Invalid value: \"/24\": must be an integer from 1 to 32",
            f("affinity-prefix-word.yaml")
        ),
        format!(
            "services/default/affinity-repick-bad (file {}): metadata.annotations[limpet.io/affinity-repick]: Unsupported value: \"Random\": supported values: \"ClientIP\", \"Connection\"",
            f("affinity-repick-bad.yaml")
        ),
        format!(
            "services/default/bad-external-ip (file {}): spec.externalIPs[1]: Invalid value: \"not-an-ip\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            f("bad-external-ip.yaml")
        ),
        format!(
            "services/default/bad-ip (file {}): spec.clusterIP: Invalid value: \"192.0.2.999\": must be empty, 'None', or a valid IP address",
            f("bad-ip.yaml")
        ),
        format!(
            "services/default/bad-protocol (file {}): spec.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            f("bad-protocol.yaml")
        ),
        format!(
            "services/default/config-with-none (file {}): spec.sessionAffinityConfig: Forbidden: must not be set when session affinity is None",
            f("config-with-none.yml")
        ),
        format!(
            "services/default/health-check-cluster (file {}): spec.healthCheckNodePort: Invalid value: 32000: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            f("health-check-cluster.yaml")
        ),
        format!(
            "services/default/port-big (file {}): spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
            f("port-big.yaml")
        ),
        format!(
            "services/default/port-name-twice (file {}): spec.ports[1].name: Duplicate value: \"http\"",
            f("port-name-twice.yaml")
        ),
        format!(
            "services/default/port-unnamed (file {}): spec.ports[1].name: Required value",
            f("port-unnamed.yaml")
        ),
        format!(
            "services/default/port-zero (file {}): spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            f("port-zero.yaml")
        ),
        format!(
            "services/default/timeout-over (file {}): spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 86401: must be greater than 0 and less than 86400",
            f("timeout-over.yaml")
        ),
        format!(
            "services/default/timeout-zero (file {}): spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400",
            f("timeout-zero.yaml")
        ),
        format!(
            "services/default/zz-conflict (file {}): spec.externalIPs[0]: Duplicate value: \"192.0.2.90:80\": already served by default/good:80/TCP",
            f("conflict.json")
        ),
        format!(
            "endpointslices/default/good-2 (file {}): endpoints[1].addresses[0]: Invalid value: \"203.0.113.300\": must be a valid IPv4 address",
            f("00-good.yaml")
        ),
    ];
    for e in &expected {
        assert!(errors.contains(e), "missing\n  {e}\nin {errors:#?}");
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    let e = &t.errors[0];
    assert_eq!(
        (e.kind.as_str(), e.namespace.as_str(), e.field.as_str()),
        ("endpointslices", "default", "endpoints[1].addresses[0]")
    );
    // The valid objects still translate.
    let names: Vec<&str> = t.specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["default/good:80/TCP", "default/zz-conflict:80/TCP"]);
    assert_eq!(backs(&t.specs[0]), ["203.0.113.91:8080"]);
    assert_eq!(fronts(&t.specs[1]), ["192.0.2.98:80"]);
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let err = load_path(&fixture("malformed")).unwrap_err();
    let LoadError::Syntax { file, line, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(file, &fixture("malformed/b-broken.yaml"));
    let line = line.expect("a line number");
    assert!((9..=10).contains(&line), "line {line}: {err}");
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{}:{line}:", file.display())),
        "{shown}"
    );
}

#[test]
fn ids_survive_a_reload() {
    let mut ids = IdAllocator::new();
    let m = load_path(&fixture("hostnames.yaml")).unwrap();
    let first = m.translate(&ctx(), &mut ids);
    // Something else appears in between; the hostnames ids do not move.
    let other = load_path(&fixture("cases/targetport.yaml")).unwrap();
    let _ = other.translate(&ctx(), &mut ids);
    let mut m2 = m.clone();
    // One endpoint leaves: the others keep their backend ids.
    if let Some(eps) = m2.slices[0].object.endpoints.as_mut() {
        eps.remove(0);
    }
    let second = translate(&m2.services, &m2.slices, &ctx(), &mut ids);
    for s in &second.specs {
        let before = spec(&first, &s.name);
        assert_eq!(s.id, before.id);
        for b in &s.backends {
            let old = before.backends.iter().find(|o| o.addr == b.addr).unwrap();
            assert_eq!(b.id, old.id);
        }
    }
    assert_eq!(second.specs[0].backends.len(), 2);
}

#[test]
fn dsr_mode_is_passed_through() {
    let m = load_path(&fixture("hostnames.yaml")).unwrap();
    let t = m.translate(
        &TranslateContext {
            mode: ForwardMode::Dsr,
            ..ctx()
        },
        &mut IdAllocator::new(),
    );
    assert!(t.specs.iter().all(|s| s.mode == ForwardMode::Dsr));
}

#[test]
fn topology_hints_for_this_nodes_zone() {
    let m = load_path(&fixture("cases/topology.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let zoned = TranslateContext {
        node_zone: Some("zone-a".to_owned()),
        ..ctx()
    };
    let t = m.translate(&zoned, &mut IdAllocator::new());
    no_errors(&t);
    // Every endpoint hinted, some for this zone: only those.
    assert_eq!(
        backs(spec(&t, "default/zoned:80/TCP")),
        ["203.0.113.91:8080", "203.0.113.93:8080"]
    );
    // One endpoint without hints: kube-proxy routes to all.
    assert_eq!(
        backs(spec(&t, "default/partly-hinted:80/TCP")),
        ["203.0.113.94:8080", "203.0.113.95:8080"]
    );
    // Hinted, but none for this zone: all.
    assert_eq!(
        backs(spec(&t, "default/prefer-close:80/TCP")),
        ["203.0.113.96:8080", "203.0.113.97:8080"]
    );
    // Hints present, but the Service did not ask for topology: all.
    assert_eq!(
        backs(spec(&t, "default/not-asked:80/TCP")),
        ["203.0.113.98:8080", "203.0.113.99:8080"]
    );
    // A node whose zone is unknown routes everything everywhere.
    let t = m.translate(&ctx(), &mut IdAllocator::new());
    assert_eq!(
        backs(spec(&t, "default/zoned:80/TCP")),
        [
            "203.0.113.91:8080",
            "203.0.113.92:8080",
            "203.0.113.93:8080"
        ]
    );
    // PreferClose with an endpoint hinted for this zone narrows too.
    let t = m.translate(
        &TranslateContext {
            node_zone: Some("zone-c".to_owned()),
            ..ctx()
        },
        &mut IdAllocator::new(),
    );
    assert_eq!(
        backs(spec(&t, "default/prefer-close:80/TCP")),
        ["203.0.113.97:8080"]
    );
}
