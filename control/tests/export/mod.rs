//! A cluster's Services and `EndpointSlice`s as `kubectl get
//! svc,endpointslices -A -o yaml` prints them (every field the API server
//! fills in: uids, resource versions, timestamps, owner references, target
//! refs, zones), for the manifest tests and the manifest benchmark.
//!
//! Service `i` is `bench/svc-{i}` on cluster IP `198.18.0.0 + i`, one TCP
//! port `http` 80 -> 8080, `ClientIP` affinity, with `endpoints` ready
//! endpoints from `198.18.64.0` on in slices of at most 100 (RFC 2544's
//! benchmarking range: nothing is sent anywhere).

#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

pub const NAMESPACE: &str = "bench";
const SLICE_MAX: usize = 100;

fn base() -> u32 {
    u32::from(Ipv4Addr::new(198, 18, 0, 0))
}

pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(base() + i as u32)
}

pub fn endpoint_ip(j: usize) -> Ipv4Addr {
    Ipv4Addr::from(base() + 16_384 + j as u32)
}

/// A uid-shaped string, distinct for each (kind, i, k).
fn uid(kind: u32, i: usize, k: usize) -> String {
    format!(
        "{kind:08x}-{:04x}-4{:03x}-8000-{:012x}",
        i >> 16,
        i & 0xfff,
        k
    )
}

/// The cluster: `counts[i]` endpoints for service `i`.
#[derive(Debug, Clone)]
pub struct Export {
    pub counts: Vec<usize>,
    /// Endpoint `j` (global index) is not ready.
    pub not_ready: Vec<usize>,
}

impl Export {
    /// `services` services of `per_service` endpoints each.
    pub fn uniform(services: usize, per_service: usize) -> Self {
        Self {
            counts: vec![per_service; services],
            not_ready: Vec::new(),
        }
    }

    pub fn endpoints(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Services `range` and their slices, as `- ` items of a list
    /// (indented for `items:`).
    pub fn items(&self, range: std::ops::Range<usize>, out: &mut String) {
        let mut first_ep: usize = self.counts[..range.start].iter().sum();
        for i in range {
            service(out, i);
            let n = self.counts[i];
            for (k, start) in (0..n).step_by(SLICE_MAX).enumerate() {
                let end = (start + SLICE_MAX).min(n);
                self.slice(out, i, k, first_ep + start..first_ep + end);
            }
            first_ep += n;
        }
    }

    /// Services `range` and their slices, one object a document (`---`
    /// between them), as `kubectl get -o yaml` of each object concatenated.
    pub fn documents(&self, range: std::ops::Range<usize>) -> String {
        let mut items = String::new();
        self.items(range, &mut items);
        let mut out = String::with_capacity(items.len());
        for line in items.lines() {
            if let Some(first) = line.strip_prefix("- ") {
                out.push_str("---\n");
                out.push_str(first);
            } else {
                out.push_str(line.strip_prefix("  ").unwrap_or(line));
            }
            out.push('\n');
        }
        out
    }

    /// The whole cluster as one `kind: List`.
    pub fn list(&self) -> String {
        self.list_of(0..self.counts.len())
    }

    /// Services `range` as one `kind: List`.
    pub fn list_of(&self, range: std::ops::Range<usize>) -> String {
        let mut out = String::with_capacity(range.len() * 4096);
        out.push_str("apiVersion: v1\nitems:\n");
        self.items(range, &mut out);
        out.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
        out
    }

    /// The cluster as `files` files of `kind: List` (`export-000.yaml`,
    /// ...) in `dir`.
    pub fn write_dir(&self, dir: &Path, files: usize) {
        let n = self.counts.len();
        for f in 0..files {
            let range = n * f / files..n * (f + 1) / files;
            std::fs::write(dir.join(format!("export-{f:03}.yaml")), self.list_of(range)).unwrap();
        }
    }

    fn slice(&self, out: &mut String, i: usize, k: usize, eps: std::ops::Range<usize>) {
        let ns = NAMESPACE;
        let _ = write!(
            out,
            "- addressType: IPv4\n  apiVersion: discovery.k8s.io/v1\n  endpoints:\n"
        );
        for j in eps {
            let ready = !self.not_ready.contains(&j);
            let _ = write!(
                out,
                "  - addresses:\n    - {ip}\n    conditions:\n      ready: {ready}\n      \
                 serving: true\n      terminating: {terminating}\n    nodeName: node-{node}\n    \
                 targetRef:\n      kind: Pod\n      name: svc-{i}-7d4b9c8f6-{j:05x}\n      \
                 namespace: {ns}\n      uid: {uid}\n    zone: zone-{zone}\n",
                ip = endpoint_ip(j),
                terminating = !ready,
                node = j % 50,
                uid = uid(3, j, 0),
                zone = ["a", "b", "c"][j % 3],
            );
        }
        let _ = write!(
            out,
            "  kind: EndpointSlice\n  metadata:\n    annotations:\n      \
             endpoints.kubernetes.io/last-change-trigger-time: \"2026-11-20T10:00:00Z\"\n    \
             creationTimestamp: \"2026-11-20T10:00:00Z\"\n    generateName: svc-{i}-\n    \
             generation: 1\n    labels:\n      \
             endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n      \
             kubernetes.io/service-name: svc-{i}\n    name: svc-{i}-{k:05x}\n    \
             namespace: {ns}\n    ownerReferences:\n    - apiVersion: v1\n      \
             blockOwnerDeletion: true\n      controller: true\n      kind: Service\n      \
             name: svc-{i}\n      uid: {owner}\n    resourceVersion: \"{rv}\"\n    uid: {uid}\n  \
             ports:\n  - name: http\n    port: 8080\n    protocol: TCP\n",
            owner = uid(1, i, 0),
            rv = 200_000 + i * 4 + k,
            uid = uid(2, i, k),
        );
    }
}

fn service(out: &mut String, i: usize) {
    let ns = NAMESPACE;
    let ip = cluster_ip(i);
    let _ = write!(
        out,
        "- apiVersion: v1\n  kind: Service\n  metadata:\n    \
         creationTimestamp: \"2026-11-20T10:00:00Z\"\n    labels:\n      app: svc-{i}\n    \
         name: svc-{i}\n    namespace: {ns}\n    resourceVersion: \"{rv}\"\n    uid: {uid}\n  \
         spec:\n    clusterIP: {ip}\n    clusterIPs:\n    - {ip}\n    \
         internalTrafficPolicy: Cluster\n    ipFamilies:\n    - IPv4\n    \
         ipFamilyPolicy: SingleStack\n    ports:\n    - name: http\n      port: 80\n      \
         protocol: TCP\n      targetPort: 8080\n    selector:\n      app: svc-{i}\n    \
         sessionAffinity: ClientIP\n    sessionAffinityConfig:\n      clientIP:\n        \
         timeoutSeconds: 10800\n    type: ClusterIP\n  status:\n    loadBalancer: {{}}\n",
        rv = 100_000 + i,
        uid = uid(1, i, 0),
    );
}
