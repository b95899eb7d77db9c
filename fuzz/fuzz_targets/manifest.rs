//! The manifest loader (`manifest::load_str`) and the translator
//! (`translate`, and the kube path's `translate_service` + `assemble`).
//!
//! Input: YAML text for the loader (the seed corpus: the control tests'
//! fixture files), or, after a zero byte, an `arbitrary` description of Service and EndpointSlice objects
//! (well-typed k8s-openapi objects with values drawn from pools of valid
//! and invalid ones), fed straight to the translator. Checked:
//! - nothing panics; a refused load is an error naming the input;
//! - objects loaded survive a JSON round trip through the loader (JSON is
//!   YAML) unchanged;
//! - every error names its object and field;
//! - the translation is a pure function (twice gives the same);
//! - the kube path gives the same service ports as the manifest path;
//! - what is accepted compiles into a snapshot (`SnapshotCompiler`).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use libfuzzer_sys::fuzz_target;
use limpet_control::compile::SnapshotCompiler;
use limpet_control::ids::IdAllocator;
use limpet_control::manifest::{self, Sourced};
use limpet_control::translate::{
    self, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, TranslateContext, Translation,
};
use limpet_dataplane::snapshot::{ForwardMode, ServicePortSpec};
use std::collections::{BTreeMap, BTreeSet};

const NAMES: [&str; 5] = [
    "web",
    "db",
    "dns",
    "",
    "a-very-long-name-with-dashes-0123456789",
];
const NAMESPACES: [&str; 3] = ["default", "kube-system", ""];
const V4: [&str; 8] = [
    "10.96.0.10",
    "10.96.0.11",
    "192.0.2.10",
    "10.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "10.96.0.256",
    "None",
];
const V6: [&str; 6] = [
    "fd00::10",
    "fd00::11",
    "2001:db8::1",
    "::",
    "fd00::zz",
    "::ffff:10.0.0.1",
];
const ENDPOINTS4: [&str; 6] = [
    "10.244.0.1",
    "10.244.0.2",
    "10.244.1.1",
    "10.244.0.1 ",
    "x",
    "",
];
const ENDPOINTS6: [&str; 4] = [
    "fd00:244::1",
    "fd00:244::2",
    "fd00:244::1%eth0",
    "10.244.0.1",
];
const PORT_NAMES: [&str; 4] = ["", "http", "dns", "HTTP"];
const PROTOCOLS: [&str; 5] = ["TCP", "UDP", "SCTP", "tcp", "ICMP"];
const TYPES: [&str; 5] = [
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "ExternalName",
    "Bogus",
];
const AFFINITIES: [&str; 3] = ["ClientIP", "None", "Sticky"];
const POLICIES: [&str; 3] = ["Cluster", "Local", "Nowhere"];
const FAMILIES: [&str; 3] = ["IPv4", "IPv6", "FQDN"];
const RANGES: [&str; 5] = [
    "198.18.0.0/15",
    "0.0.0.0/0",
    "2001:db8::/32",
    "10.0.0.0/33",
    "garbage",
];
const NODES: [&str; 3] = ["node-a", "node-b", ""];
const ZONES: [&str; 2] = ["zone-a", "zone-b"];
const INTS: [i32; 12] = [
    1, 53, 80, 443, 8080, 9376, 30080, 32767, 65535, 0, -1, 70000,
];
const TIMEOUTS: [i32; 7] = [1, 60, 10800, 86400, 0, -5, 86401];

fn pick<T: Copy>(items: &[T], i: u8) -> T {
    items[usize::from(i) % items.len()]
}

fn pick_s(items: &[&str], i: u8) -> String {
    pick(items, i).to_owned()
}

fn opt<T>(o: Option<u8>, f: impl FnOnce(u8) -> T) -> Option<T> {
    o.map(f)
}

#[derive(Debug, Arbitrary)]
struct PortDesc {
    name: Option<u8>,
    protocol: Option<u8>,
    port: u8,
    target: Option<(bool, u8)>,
    node_port: Option<u8>,
}

#[derive(Debug, Arbitrary)]
struct ServiceDesc {
    name: u8,
    namespace: Option<u8>,
    other_proxy: bool,
    no_spec: bool,
    type_: Option<u8>,
    /// (v6, index) per address; the first is also `clusterIP`.
    cluster_ips: Vec<(bool, u8)>,
    families: Vec<bool>,
    ports: Vec<PortDesc>,
    affinity: Option<u8>,
    timeout: Option<Option<u8>>,
    external_ips: Vec<(bool, u8)>,
    lb_ingress: Vec<(bool, u8)>,
    source_ranges: Vec<u8>,
    internal_policy: Option<u8>,
    external_policy: Option<u8>,
    topology: Option<bool>,
}

#[derive(Debug, Arbitrary)]
struct EndpointDesc {
    addresses: Vec<u8>,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    node: Option<u8>,
    zones: Option<Vec<u8>>,
}

#[derive(Debug, Arbitrary)]
struct SliceDesc {
    name: u8,
    namespace: Option<u8>,
    service: Option<u8>,
    family: u8,
    ports: Option<Vec<(Option<u8>, Option<u8>, Option<u8>)>>,
    endpoints: Vec<EndpointDesc>,
}

#[derive(Debug, Arbitrary)]
struct Objects {
    services: Vec<ServiceDesc>,
    slices: Vec<SliceDesc>,
    node_name: Option<u8>,
    node_zone: Option<u8>,
    dsr: bool,
}

fn addr(v6: bool, i: u8) -> String {
    if v6 { pick_s(&V6, i) } else { pick_s(&V4, i) }
}

impl ServiceDesc {
    fn build(&self) -> Service {
        let mut labels = BTreeMap::new();
        if self.other_proxy {
            labels.insert(SERVICE_PROXY_NAME_LABEL.to_owned(), "other".to_owned());
        }
        let mut annotations = BTreeMap::new();
        if self.topology == Some(true) {
            annotations.insert(
                "service.kubernetes.io/topology-mode".to_owned(),
                "Auto".to_owned(),
            );
        }
        let cluster_ips: Vec<String> = self
            .cluster_ips
            .iter()
            .take(3)
            .map(|&(v6, i)| addr(v6, i))
            .collect();
        let spec = ServiceSpec {
            type_: opt(self.type_, |i| pick_s(&TYPES, i)),
            cluster_ip: cluster_ips.first().cloned(),
            cluster_ips: (!cluster_ips.is_empty()).then_some(cluster_ips),
            ip_families: (!self.families.is_empty()).then(|| {
                self.families
                    .iter()
                    .take(3)
                    .map(|&v6| if v6 { "IPv6" } else { "IPv4" }.to_owned())
                    .collect()
            }),
            ports: Some(
                self.ports
                    .iter()
                    .take(4)
                    .map(|p| ServicePort {
                        name: opt(p.name, |i| pick_s(&PORT_NAMES, i)),
                        protocol: opt(p.protocol, |i| pick_s(&PROTOCOLS, i)),
                        port: pick(&INTS, p.port),
                        target_port: p.target.map(|(named, i)| {
                            if named {
                                IntOrString::String(pick_s(&PORT_NAMES, i))
                            } else {
                                IntOrString::Int(pick(&INTS, i))
                            }
                        }),
                        node_port: opt(p.node_port, |i| pick(&INTS, i)),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            session_affinity: opt(self.affinity, |i| pick_s(&AFFINITIES, i)),
            session_affinity_config: self.timeout.map(|t| SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: t.map(|i| pick(&TIMEOUTS, i)),
                }),
            }),
            external_ips: (!self.external_ips.is_empty()).then(|| {
                self.external_ips
                    .iter()
                    .take(3)
                    .map(|&(v6, i)| addr(v6, i))
                    .collect()
            }),
            load_balancer_source_ranges: (!self.source_ranges.is_empty()).then(|| {
                self.source_ranges
                    .iter()
                    .take(3)
                    .map(|&i| pick_s(&RANGES, i))
                    .collect()
            }),
            internal_traffic_policy: opt(self.internal_policy, |i| pick_s(&POLICIES, i)),
            external_traffic_policy: opt(self.external_policy, |i| pick_s(&POLICIES, i)),
            traffic_distribution: (self.topology == Some(false)).then(|| "PreferClose".to_owned()),
            ..ServiceSpec::default()
        };
        Service {
            metadata: ObjectMeta {
                name: Some(pick_s(&NAMES, self.name)),
                namespace: opt(self.namespace, |i| pick_s(&NAMESPACES, i)),
                labels: (!labels.is_empty()).then_some(labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                ..ObjectMeta::default()
            },
            spec: (!self.no_spec).then_some(spec),
            status: (!self.lb_ingress.is_empty()).then(|| ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        self.lb_ingress
                            .iter()
                            .take(3)
                            .map(|&(v6, i)| LoadBalancerIngress {
                                ip: Some(addr(v6, i)),
                                ..LoadBalancerIngress::default()
                            })
                            .collect(),
                    ),
                }),
                ..ServiceStatus::default()
            }),
        }
    }
}

impl SliceDesc {
    fn build(&self) -> EndpointSlice {
        let family = pick_s(&FAMILIES, self.family);
        let v6 = family == "IPv6";
        let mut labels = BTreeMap::new();
        if let Some(s) = self.service {
            labels.insert(SERVICE_NAME_LABEL.to_owned(), pick_s(&NAMES, s));
        }
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("slice-{}", self.name % 6)),
                namespace: opt(self.namespace, |i| pick_s(&NAMESPACES, i)),
                labels: (!labels.is_empty()).then_some(labels),
                ..ObjectMeta::default()
            },
            address_type: family,
            ports: self.ports.as_ref().map(|ports| {
                ports
                    .iter()
                    .take(4)
                    .map(|&(name, protocol, port)| EndpointPort {
                        name: opt(name, |i| pick_s(&PORT_NAMES, i)),
                        protocol: opt(protocol, |i| pick_s(&PROTOCOLS, i)),
                        port: opt(port, |i| pick(&INTS, i)),
                        ..EndpointPort::default()
                    })
                    .collect()
            }),
            endpoints: Some(
                self.endpoints
                    .iter()
                    .take(6)
                    .map(|e| Endpoint {
                        addresses: e
                            .addresses
                            .iter()
                            .take(2)
                            .map(|&i| {
                                if v6 {
                                    pick_s(&ENDPOINTS6, i)
                                } else {
                                    pick_s(&ENDPOINTS4, i)
                                }
                            })
                            .collect(),
                        conditions: (e.ready.is_some()
                            || e.serving.is_some()
                            || e.terminating.is_some())
                        .then_some(EndpointConditions {
                            ready: e.ready,
                            serving: e.serving,
                            terminating: e.terminating,
                        }),
                        node_name: opt(e.node, |i| pick_s(&NODES, i)),
                        hints: e.zones.as_ref().map(|z| EndpointHints {
                            for_zones: Some(
                                z.iter()
                                    .take(2)
                                    .map(|&i| ForZone {
                                        name: pick_s(&ZONES, i),
                                    })
                                    .collect(),
                            ),
                            ..EndpointHints::default()
                        }),
                        ..Endpoint::default()
                    })
                    .collect(),
            ),
        }
    }
}

/// Specs with their ids cleared: the two paths may number in another
/// order, which is no divergence.
fn unnumbered(specs: &[ServicePortSpec]) -> Vec<ServicePortSpec> {
    let mut out: Vec<ServicePortSpec> = specs
        .iter()
        .cloned()
        .map(|mut s| {
            s.id = 0;
            for b in &mut s.backends {
                b.id = 0;
            }
            s
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn check_translation(t: &Translation) {
    assert_eq!(t.specs.len(), t.info.len(), "one info per spec");
    for e in &t.errors {
        assert!(
            !e.kind.is_empty() && !e.field.is_empty() && !e.message.is_empty(),
            "{e}"
        );
        assert!(!e.to_string().is_empty());
    }
    let mut names = BTreeSet::new();
    for s in &t.specs {
        assert!(names.insert(s.name.clone()), "spec name {} twice", s.name);
        for b in &s.backends {
            assert!(
                s.frontends
                    .iter()
                    .all(|(f, _)| f.is_ipv4() == b.addr.is_ipv4()),
                "{}: backend of another family",
                s.name
            );
        }
    }
    let mut compiler = SnapshotCompiler::new();
    if let Err(e) = compiler.compile(t.specs.clone()) {
        panic!("accepted specs do not compile: {e}");
    }
}

fn ctx(objects: &Objects) -> TranslateContext {
    TranslateContext {
        node_name: opt(objects.node_name, |i| pick_s(&NODES, i)),
        node_addresses: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        mode: if objects.dsr {
            ForwardMode::Dsr
        } else {
            ForwardMode::Nat
        },
        node_zone: opt(objects.node_zone, |i| pick_s(&ZONES, i)),
        ..TranslateContext::default()
    }
}

fn key(meta: &ObjectMeta) -> (String, String) {
    let ns = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    (ns, meta.name.clone().unwrap_or_default())
}

fn translate_objects(services: &[Service], slices: &[EndpointSlice], ctx: &TranslateContext) {
    let sourced_services: Vec<Sourced<Service>> =
        services.iter().cloned().map(Sourced::unfiled).collect();
    let sourced_slices: Vec<Sourced<EndpointSlice>> =
        slices.iter().cloned().map(Sourced::unfiled).collect();
    let t = translate::translate(
        &sourced_services,
        &sourced_slices,
        ctx,
        &mut IdAllocator::new(),
    );
    check_translation(&t);
    let again = translate::translate(
        &sourced_services,
        &sourced_slices,
        ctx,
        &mut IdAllocator::new(),
    );
    assert_eq!(t, again, "translation is a pure function");

    // The kube path, where names are unique as the API server keeps them.
    let service_keys: BTreeSet<_> = services.iter().map(|s| key(&s.metadata)).collect();
    let slice_keys: BTreeSet<_> = slices.iter().map(|s| key(&s.metadata)).collect();
    if service_keys.len() != services.len() || slice_keys.len() != slices.len() {
        return;
    }
    let mut ids = IdAllocator::new();
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| key(&s.metadata));
    let parts: Vec<_> = sorted
        .iter()
        .map(|svc| {
            let (ns, name) = key(&svc.metadata);
            let mine: Vec<&EndpointSlice> = slices
                .iter()
                .filter(|s| {
                    key(&s.metadata).0 == ns && translate::slice_service(s) == Some(name.as_str())
                })
                .collect();
            translate::translate_service(svc, &mine, ctx, &mut ids)
        })
        .collect();
    let mut sorted_slices: Vec<&EndpointSlice> = slices.iter().collect();
    sorted_slices.sort_by_key(|s| key(&s.metadata));
    let reports: Vec<_> = sorted_slices
        .iter()
        .map(|s| translate::slice_report(s))
        .collect();
    let kube = translate::assemble(&reports, &parts);
    assert_eq!(
        unnumbered(&kube.specs),
        unnumbered(&t.specs),
        "the kube path and the manifest path disagree"
    );
}

fn yaml(text: &str) {
    // The same bytes as a `.json` file: `serde_json`'s path, the same
    // limits, errors naming the file.
    if let Err(e) = manifest::load_str(text, Some(std::path::Path::new("fuzz.json"))) {
        assert_eq!(e.file(), std::path::Path::new("fuzz.json"));
        assert!(e.to_string().starts_with("fuzz.json"), "{e}");
    }
    match manifest::load_str(text, None) {
        Err(e) => {
            assert_eq!(e.file(), std::path::Path::new("<input>"));
            assert!(e.to_string().starts_with("<input>"), "{e}");
        }
        Ok(m) => {
            // What was read reads back the same as JSON.
            let services: Vec<Service> = m.services.iter().map(|s| s.object.clone()).collect();
            let slices: Vec<EndpointSlice> = m.slices.iter().map(|s| s.object.clone()).collect();
            round_trip(&services, &slices);
            let t = m.translate(&TranslateContext::default(), &mut IdAllocator::new());
            check_translation(&t);
        }
    }
}

fn round_trip(services: &[Service], slices: &[EndpointSlice]) {
    let mut items: Vec<serde_json::Value> = Vec::new();
    for s in services {
        let mut v = serde_json::to_value(s).unwrap();
        v["apiVersion"] = "v1".into();
        v["kind"] = "Service".into();
        items.push(v);
    }
    for s in slices {
        let mut v = serde_json::to_value(s).unwrap();
        v["apiVersion"] = "discovery.k8s.io/v1".into();
        v["kind"] = "EndpointSlice".into();
        items.push(v);
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let text = serde_json::to_string(&list).unwrap();
    let back = manifest::load_str(&text, None).expect("a JSON list of well-typed objects loads");
    let back_services: Vec<Service> = back.services.into_iter().map(|s| s.object).collect();
    let back_slices: Vec<EndpointSlice> = back.slices.into_iter().map(|s| s.object).collect();
    assert_eq!(back_services, services, "services round trip");
    assert_eq!(back_slices, slices, "slices round trip");
    let json = manifest::load_str(&text, Some(std::path::Path::new("list.json")))
        .expect("the same list loads as a .json file");
    let json_services: Vec<Service> = json.services.into_iter().map(|s| s.object).collect();
    let json_slices: Vec<EndpointSlice> = json.slices.into_iter().map(|s| s.object).collect();
    assert_eq!(json_services, services, "services through serde_json");
    assert_eq!(json_slices, slices, "slices through serde_json");
}

fuzz_target!(|data: &[u8]| {
    let Some(body) = data.strip_prefix(&[0]) else {
        yaml(&String::from_utf8_lossy(data));
        return;
    };
    let Ok(objects) = Objects::arbitrary_take_rest(Unstructured::new(body)) else {
        return;
    };
    let services: Vec<Service> = objects
        .services
        .iter()
        .take(6)
        .map(ServiceDesc::build)
        .collect();
    let slices: Vec<EndpointSlice> = objects
        .slices
        .iter()
        .take(6)
        .map(SliceDesc::build)
        .collect();
    if std::env::var_os("LIMPET_FUZZ_DUMP").is_some() {
        eprintln!(
            "{}",
            serde_json::to_string_pretty(&services).unwrap_or_default()
        );
    }
    round_trip(&services, &slices);
    translate_objects(&services, &slices, &ctx(&objects));
});
