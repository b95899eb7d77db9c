//! The deployment files under `deploy/` parse as the Kubernetes objects they
//! claim to be (k8s-openapi's own types, every field known), and say what
//! the documentation says: least-privilege RBAC, no privileged container,
//! readiness and metrics on a read-only listener, the admin API on
//! loopback, a `PodMonitor` and a dashboard that name only what limpet
//! exports, and a tier overlay whose BIRD shares limpet's fragment and
//! control socket (its configurations parsed by BIRD itself).

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

/// Every document of a YAML file, as JSON values.
fn documents(rel: &str) -> Vec<Value> {
    let path = deploy(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Drops nulls and empty objects, which serializing a typed object may add
/// or leave out.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// Decodes a document as `T` and checks that nothing was lost on the way:
/// k8s-openapi ignores unknown fields, so a misspelt one (`readinesProbe`)
/// would otherwise pass unnoticed.
fn typed<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{e}: {}", serde_json::to_string_pretty(doc).unwrap()));
    let back = serde_json::to_value(&object).unwrap();
    assert_eq!(
        normalize(&back),
        normalize(doc),
        "fields lost decoding {}",
        doc["kind"]
    );
    object
}

/// A container's command and arguments, as one line.
fn command_line(c: &k8s_openapi::api::core::v1::Container) -> String {
    [c.command.clone(), c.args.clone()]
        .into_iter()
        .flatten()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().expect("every document has a kind")
}

struct Rbac {
    account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
}

fn rbac() -> Rbac {
    let docs = documents("kubernetes/rbac.yaml");
    let kinds: Vec<&str> = docs.iter().map(kind).collect();
    assert_eq!(
        kinds,
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    );
    Rbac {
        account: typed(&docs[0]),
        role: typed(&docs[1]),
        binding: typed(&docs[2]),
    }
}

fn daemonset() -> (ConfigMap, DaemonSet) {
    let docs = documents("kubernetes/daemonset.yaml");
    let kinds: Vec<&str> = docs.iter().map(kind).collect();
    assert_eq!(kinds, ["ConfigMap", "DaemonSet"]);
    (typed(&docs[0]), typed(&docs[1]))
}

#[test]
fn cluster_role_only_lists_and_watches_services_and_slices_and_gets_nodes() {
    let Rbac { role, .. } = rbac();
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(rule.resource_names.is_none(), "{rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.as_str(), resource.as_str(), verb.as_str()));
                }
            }
        }
    }
    let expected: BTreeSet<(&str, &str, &str)> = [
        ("", "services", "list"),
        ("", "services", "watch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("", "nodes", "get"),
    ]
    .into_iter()
    .collect();
    assert_eq!(granted, expected);
    assert!(role.aggregation_rule.is_none());
}

#[test]
fn the_binding_gives_the_role_to_the_daemonsets_account() {
    let Rbac {
        account,
        role,
        binding,
    } = rbac();
    let (_, ds) = daemonset();
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, account.metadata.namespace);
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name, account.metadata.name);
    assert_eq!(ds.metadata.namespace, account.metadata.namespace);
}

#[test]
fn the_daemonset_runs_limpet_on_the_host_network_unprivileged() {
    let (nodes, ds) = daemonset();
    let spec = ds.spec;
    let labels = spec.template.metadata.as_ref().unwrap().labels.as_ref();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(labels.and_then(|l| l.get(k)), Some(v), "selector {k}");
    }
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];

    // The command line: limpet run on $IFACE as this node, API source.
    let line = command_line(c);
    for part in [
        "limpet run",
        "--io \"afpacket:${IFACE}\"",
        "--node-name \"${NODE_NAME}\"",
        "--admin 127.0.0.1:9901",
        "--state-file /var/lib/limpet/state",
        "/etc/limpet/nodes/${NODE_NAME}",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    assert!(!line.contains("--config") && !line.contains("--kubeconfig"));
    // Node ports on the Node object's addresses, not one fixed address.
    assert!(!line.contains("--node-address"), "{line}");
    let env = c.env.as_deref().unwrap_or_default();
    let field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(field("NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert!(env.iter().any(|e| e.name == "IFACE" && e.value.is_some()));
    let mount = c.volume_mounts.as_deref().unwrap_or_default();
    assert!(mount.iter().any(|m| m.mount_path == "/etc/limpet/nodes"));
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let cm = volumes
        .iter()
        .find_map(|v| v.config_map.as_ref())
        .expect("the per-node ConfigMap is mounted");
    assert_eq!(cm.name, nodes.metadata.name.clone().unwrap());
    for (node, flags) in nodes.data.as_ref().unwrap() {
        assert!(flags.contains("--address "), "{node}: {flags}");
    }

    // The state file outlives the pod: a writable hostPath at its
    // directory, time to write it on SIGTERM, and a rollout that stops the
    // old pod before the new one reads it.
    let state = mount
        .iter()
        .find(|m| m.mount_path == "/var/lib/limpet")
        .expect("the state directory is mounted");
    assert_ne!(state.read_only, Some(true));
    let host = volumes
        .iter()
        .find(|v| v.name == state.name)
        .and_then(|v| v.host_path.as_ref())
        .expect("the state directory is a hostPath");
    assert_eq!(host.path, "/var/lib/limpet");
    assert_eq!(host.type_.as_deref(), Some("DirectoryOrCreate"));
    assert!(pod.termination_grace_period_seconds.unwrap_or(30) >= 10);
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .expect("a rolling update");
    assert_eq!(
        rolling.max_surge,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );

    // Capabilities instead of privileged.
    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let mut added = caps.add.clone().unwrap();
    added.sort();
    assert_eq!(added, ["IPC_LOCK", "NET_ADMIN", "NET_RAW"]);
}

/// Metrics and health on their own read-only listener, a named port that
/// the kubelet probes from the host; the admin API (which deletes
/// entries) stays on loopback.
#[test]
fn probes_and_metrics_use_the_read_only_listener() {
    let (_, ds) = daemonset();
    let pod = ds.spec.template.spec.unwrap();
    let c = &pod.containers[0];
    let line = command_line(c);
    assert!(line.contains("--admin 127.0.0.1:9901"), "{line}");
    assert!(line.contains("--metrics 0.0.0.0:9902"), "{line}");
    let ports = c.ports.as_deref().unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == Some("metrics") && p.container_port == 9902),
        "no metrics port: {ports:?}"
    );
    // Ready and live as the read-only listener says, probed from the host.
    for probe in [&c.readiness_probe, &c.liveness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into())
        );
    }
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
}

/// The `PodMonitor` scrapes the `DaemonSet`'s pods on their read-only port.
#[test]
fn the_pod_monitor_scrapes_the_read_only_port() {
    let (_, ds) = daemonset();
    let docs = documents("kubernetes/monitoring.yaml");
    assert_eq!(docs.len(), 1);
    let pm = &docs[0];
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(kind(pm), "PodMonitor");
    let labels = ds.spec.template.metadata.as_ref().unwrap().labels.clone();
    let labels = labels.unwrap();
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            labels.get(k).map(String::as_str),
            v.as_str(),
            "selector {k}"
        );
    }
    let namespace = ds.metadata.namespace.clone().unwrap();
    assert_eq!(
        pm["spec"]["namespaceSelector"]["matchNames"][0],
        namespace.as_str()
    );
    let endpoints = pm["spec"]["podMetricsEndpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"], "metrics");
    assert_eq!(endpoints[0]["path"], "/metrics");
    assert_eq!(
        endpoints[0]["relabelings"][0]["targetLabel"], "node",
        "the dashboard groups by node"
    );
}

/// Every series the dashboard asks for is one limpet exports (rendered
/// from a real worker), grouped only by labels it carries (or `node`,
/// which the `PodMonitor` adds): a renamed metric breaks this test, not a
/// panel in production.
#[test]
fn the_dashboard_asks_only_for_what_limpet_exports() {
    use limpet_dataplane::clock::ManualClock;
    use limpet_dataplane::io::MemoryIo;
    use limpet_dataplane::pipeline::{Worker, WorkerConfig};
    use limpet_dataplane::snapshot::Snapshot;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (tx, rx) = crossbeam_channel::unbounded();
    let config = WorkerConfig {
        affinity_capacity: 1024,
        flow_capacity: 1024,
        ..WorkerConfig::default()
    };
    let snapshot = Arc::new(Snapshot::build(1, Vec::new()).unwrap());
    let mut worker = Worker::new(MemoryIo::new(16), ManualClock::new(0), config, snapshot)
        .unwrap()
        .with_commands(rx);
    let stop = Arc::new(AtomicBool::new(false));
    let running = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || worker.run(&stop))
    };
    let text = limpet_control::admin::render_metrics(&limpet_control::state::Shared::new(vec![tx]));
    stop.store(true, Ordering::Relaxed);
    running.join().unwrap();
    let text = text.unwrap();
    // Each exported series' name, with the labels it carries.
    let mut exported: std::collections::BTreeMap<String, BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = exported.entry(line[..name_end].to_owned()).or_default();
        if let Some(inner) = line[name_end..].strip_prefix('{') {
            for pair in inner.split('}').next().unwrap().split(',') {
                labels.insert(pair.split('=').next().unwrap().to_owned());
            }
        }
    }

    let path = deploy("grafana/limpet.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for t in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = t["query"].as_str().filter(|q| q.contains("limpet_")) {
            exprs.push(q.to_owned());
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let mut seen = BTreeSet::new();
    for expr in &exprs {
        let mut i = 0;
        while let Some(at) = expr[i..].find("limpet_") {
            let start = i + at;
            let end = start
                + expr[start..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(expr.len() - start);
            let name = &expr[start..end];
            assert!(
                exported.contains_key(name),
                "{name} (in {expr:?}) is not exported"
            );
            seen.insert(name.to_owned());
            i = end;
        }
        for group in expr.split("by (").skip(1) {
            for label in group.split(')').next().unwrap().split(',') {
                let label = label.trim();
                assert!(
                    label == "node" || exported.values().any(|l| l.contains(label)),
                    "grouping by {label:?} (in {expr:?}), which no series carries"
                );
            }
        }
    }
    for must in [
        "limpet_rx_packets_total",
        "limpet_drops_total",
        "limpet_affinity_entries",
        "limpet_affinity_evictions_total",
        "limpet_ready",
    ] {
        assert!(seen.contains(must), "the dashboard does not show {must}");
    }
}

#[test]
fn the_systemd_unit_keeps_af_packet_and_only_its_capabilities() {
    let path = deploy("systemd/limpet.service");
    let text = std::fs::read_to_string(&path).unwrap();
    // Continuation lines joined, comments dropped.
    let joined = text.replace("\\\n", " ");
    let settings: Vec<(&str, &str)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            l.split_once('=')
                .unwrap_or_else(|| panic!("not a setting: {l}"))
        })
        .collect();
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    let exec = get("ExecStart");
    assert_eq!(exec.len(), 1);
    let exec: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(&exec[..2], ["/usr/local/bin/limpet", "run"]);
    let arg = |flag: &str| exec.iter().position(|a| *a == flag).map(|i| exec[i + 1]);
    assert_eq!(arg("--config"), Some("/etc/limpet/manifests"));
    assert_eq!(arg("--io"), Some("afpacket:${LIMPET_IFACE}"));
    // The state file lives in the unit's state directory, which systemd
    // keeps across restarts and leaves writable under ProtectSystem.
    assert_eq!(get("StateDirectory"), ["limpet"]);
    assert_eq!(arg("--state-file"), Some("/var/lib/limpet/state"));
    let caps: BTreeSet<&str> = get("AmbientCapabilities")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    assert_eq!(
        caps,
        BTreeSet::from(["CAP_IPC_LOCK", "CAP_NET_ADMIN", "CAP_NET_RAW"])
    );
    assert_eq!(get("CapabilityBoundingSet"), get("AmbientCapabilities"));
    assert_eq!(get("NoNewPrivileges"), ["yes"]);
    let families = get("RestrictAddressFamilies");
    assert!(
        families
            .iter()
            .any(|f| f.split_whitespace().any(|a| a == "AF_PACKET"))
    );
    // The interface is in the host's network namespace.
    assert!(get("PrivateNetwork").iter().all(|v| *v == "no"));
    assert!(
        get("User").is_empty(),
        "root would not need ambient capabilities"
    );
}

/// Kubernetes' strategic merge of `patch` into `base`, for the lists the
/// tier overlay touches: containers, env and volumes merge by `name`,
/// volume mounts by `mountPath`; maps merge; anything else is replaced.
fn strategic_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing) => {
                        let key = match k.as_str() {
                            "containers" | "env" | "volumes" => Some("name"),
                            "volumeMounts" => Some("mountPath"),
                            _ => None,
                        };
                        match (key, existing, v) {
                            (Some(key), Value::Array(items), Value::Array(new)) => {
                                for n in new {
                                    match items.iter_mut().find(|i| i[key] == n[key]) {
                                        Some(i) => strategic_merge(i, n),
                                        None => items.push(n.clone()),
                                    }
                                }
                            }
                            (_, existing, v) => strategic_merge(existing, v),
                        }
                    }
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

/// The tier overlay (`kubectl apply -k deploy/tier`): the base `DaemonSet`
/// with BIRD beside limpet, sharing the fragment limpet writes and the
/// control socket it talks to, and the TUN device limpet's liveness link
/// needs.
#[test]
fn the_tier_overlay_puts_bird_beside_limpet_on_one_fragment_and_socket() {
    let kustomization = documents("tier/kustomization.yaml");
    assert_eq!(kustomization[0]["resources"][0], "../kubernetes");
    assert_eq!(
        kustomization[0]["patches"][0]["path"],
        "daemonset-bird.yaml"
    );
    assert_eq!(
        kustomization[0]["configMapGenerator"][0]["files"][0],
        "bird.conf"
    );
    let base_kustomization = documents("kubernetes/kustomization.yaml");
    for r in base_kustomization[0]["resources"].as_array().unwrap() {
        assert!(deploy(&format!("kubernetes/{}", r.as_str().unwrap())).exists());
    }
    let mut merged = documents("kubernetes/daemonset.yaml").remove(1);
    strategic_merge(&mut merged, &documents("tier/daemonset-bird.yaml")[0]);
    let ds: DaemonSet = typed(&merged);
    let pod = ds.spec.template.spec.unwrap();
    let container = |name: &str| {
        pod.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} container"))
            .clone()
    };
    let (limpet, bird) = (container("limpet"), container("bird"));
    assert!(command_line(&limpet).contains("${LIMPET_EXTRA_ARGS:-}"));
    let extra = limpet
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == "LIMPET_EXTRA_ARGS")
        .and_then(|e| e.value.clone())
        .expect("LIMPET_EXTRA_ARGS");
    let flag = |name: &str| {
        let words: Vec<&str> = extra.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[0] == name)
            .map_or_else(|| panic!("{name} not in {extra}"), |w| w[1].to_owned())
    };
    assert_eq!(flag("--announce"), "bird");
    let fragment = PathBuf::from(flag("--bird-fragment"));
    let socket = PathBuf::from(flag("--birdc-socket"));
    let bird_line = command_line(&bird);
    assert!(
        bird_line.contains(&format!("-s {}", socket.display())),
        "{bird_line}"
    );
    // Both directories are one volume, mounted in both containers.
    let volume_at = |c: &k8s_openapi::api::core::v1::Container, dir: &Path| {
        c.volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|m| Path::new(&m.mount_path) == dir)
            .map_or_else(
                || panic!("{} not mounted in {}", dir.display(), c.name),
                |m| m.name.clone(),
            )
    };
    for dir in [fragment.parent().unwrap(), socket.parent().unwrap()] {
        assert_eq!(volume_at(&limpet, dir), volume_at(&bird, dir));
    }
    // The include in bird.conf finds limpet's fragment.
    let conf = std::fs::read_to_string(deploy("tier/bird.conf")).unwrap();
    let include = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("include \""))
        .and_then(|l| l.strip_suffix("\";"))
        .expect("bird.conf includes limpet's fragment");
    let (dir, pattern) = include.rsplit_once('/').unwrap();
    assert_eq!(Path::new(dir), fragment.parent().unwrap());
    let (prefix, suffix) = pattern.split_once('*').unwrap();
    let name = fragment.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(prefix) && name.ends_with(suffix),
        "{pattern} misses {name}"
    );
    assert!(conf.contains("export where proto = \"limpet4\""));
    // The liveness link's device.
    let tun = volume_at(&limpet, Path::new("/dev/net/tun"));
    let host = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == tun)
        .and_then(|v| v.host_path.clone())
        .expect("/dev/net/tun from the host");
    assert_eq!(host.type_.as_deref(), Some("CharDevice"));
    let sc = bird.security_context.unwrap();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
}

/// The tier's BIRD configurations are ones BIRD 2 accepts (`bird -p`,
/// parse only), with the node's address filled in as the `DaemonSet` does.
#[test]
fn the_tier_bird_configurations_parse() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["tier/bird.conf", "tier/router-bird.conf"] {
        let text = std::fs::read_to_string(deploy(file))
            .unwrap()
            .replace("@NODE_ADDRESS@", "203.0.113.11")
            // The fragment's directory is an emptyDir in the pod.
            .replace("/run/limpet-bird/", &format!("{}/", dir.path().display()));
        let path = dir.path().join("check.conf");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("running bird -p (scripts/test.sh installs bird2)");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
