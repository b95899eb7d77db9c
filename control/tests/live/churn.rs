//! A cluster that keeps changing: endpoints added and removed, readiness
//! flipped, whole services created and deleted, applied through the
//! Kubernetes API (the fake API server) or a manifest directory, with the
//! state each change must lead to.
//!
//! Service `i` is `live/svc-i`, cluster IP `198.18.0.0 + i`, port 80 ->
//! 8080 (TCP, `ClientIP`), one `EndpointSlice` `svc-i-0`; endpoint `j` is
//! `198.18.64.0 + j`. Every change leaves every service at least one ready
//! endpoint (a service port with none drops new connections, as
//! kube-proxy's do); a service is created slice first and deleted service
//! first, so a manifest directory never holds one without endpoints (the
//! API's two watches may still show one for a moment: `WorkerLog::empty`).

use crate::fake_apiserver::{FakeApiServer, Resource, service, slice};
use limpet_dataplane::snapshot::Snapshot;
use limpet_pktgen::SplitMix64;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

pub const NAMESPACE: &str = "live";
pub const PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;

pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32)
}

pub fn endpoint_ip(j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + j as u32)
}

/// One endpoint: its address index and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: usize,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    pub endpoints: Vec<Endpoint>,
    /// Created by the churn (and deleted by it later).
    pub churn: bool,
}

impl Svc {
    fn ready(&self) -> usize {
        self.endpoints.iter().filter(|e| e.ready).count()
    }
}

/// What kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Add,
    Remove,
    Flip,
    Create,
    Delete,
}

/// One change and the state of its service after it (`None`: deleted).
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: Kind,
    pub service: usize,
    pub after: Option<Svc>,
}

impl Change {
    /// Whether `snapshot` serves the service as this change left it.
    pub fn reflected_in(&self, snapshot: &Snapshot) -> bool {
        reflects(snapshot, self.service, self.after.as_ref())
    }
}

/// Whether `snapshot` serves service `i` as `svc` says (`None`: not at all):
/// its usable backends are exactly the ready endpoints.
pub fn reflects(snapshot: &Snapshot, i: usize, svc: Option<&Svc>) -> bool {
    let port = snapshot.service(IpAddr::V4(cluster_ip(i)), PORT, 6);
    match (port, svc) {
        (None, None) => true,
        (Some(p), Some(s)) => {
            let have: BTreeSet<(IpAddr, u16)> =
                p.spec.backends.iter().map(|b| (b.addr, b.port)).collect();
            let want: BTreeSet<(IpAddr, u16)> = s
                .endpoints
                .iter()
                .filter(|e| e.ready)
                .map(|e| (IpAddr::V4(endpoint_ip(e.addr)), TARGET_PORT))
                .collect();
            have == want
        }
        _ => false,
    }
}

/// The cluster as the changes left it.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub services: BTreeMap<usize, Svc>,
    next_service: usize,
    next_endpoint: usize,
    rng: SplitMix64,
    /// Services that never go away.
    stable: usize,
    /// Whether changes create and delete services (else only endpoints
    /// of the stable services change).
    pub churn: bool,
}

impl Cluster {
    /// `stable` services of `endpoints` ready endpoints each.
    pub fn new(stable: usize, endpoints: usize, seed: u64) -> Self {
        let mut c = Self {
            services: BTreeMap::new(),
            next_service: stable,
            next_endpoint: 0,
            rng: SplitMix64::new(seed),
            stable,
            churn: true,
        };
        for i in 0..stable {
            let svc = c.fresh(endpoints, false);
            c.services.insert(i, svc);
        }
        c
    }

    fn fresh(&mut self, endpoints: usize, churn: bool) -> Svc {
        let endpoints = (0..endpoints)
            .map(|_| {
                self.next_endpoint += 1;
                Endpoint {
                    addr: self.next_endpoint - 1,
                    ready: true,
                }
            })
            .collect();
        Svc { endpoints, churn }
    }

    /// Whether every service is served as the model says, and nothing else.
    pub fn reflected_in(&self, snapshot: &Snapshot) -> bool {
        snapshot.ports().len() == self.services.len()
            && self
                .services
                .iter()
                .all(|(i, s)| reflects(snapshot, *i, Some(s)))
    }

    /// The next change (mixed kinds), applied to the model.
    pub fn next_change(&mut self) -> Change {
        let churned: Vec<usize> = self
            .services
            .iter()
            .filter(|(_, s)| s.churn)
            .map(|(i, _)| *i)
            .collect();
        let roll = self.rng.below(if self.churn { 100 } else { 88 });
        if roll >= 88 {
            return if churned.len() < 3 || (churned.len() < 8 && roll >= 94) {
                let i = self.next_service;
                self.next_service += 1;
                let svc = self.fresh(3, true);
                self.services.insert(i, svc.clone());
                Change {
                    kind: Kind::Create,
                    service: i,
                    after: Some(svc),
                }
            } else {
                let i = churned[0];
                self.services.remove(&i);
                Change {
                    kind: Kind::Delete,
                    service: i,
                    after: None,
                }
            };
        }
        let i = self.rng.below(self.stable as u64) as usize;
        let next_endpoint = self.next_endpoint;
        let s = self.services.get_mut(&i).expect("stable service");
        let kind = if roll < 30 || s.endpoints.len() < 2 {
            Kind::Add
        } else if roll < 55 {
            Kind::Remove
        } else {
            Kind::Flip
        };
        let kind = match kind {
            Kind::Add if s.endpoints.len() >= 12 && s.ready() > 1 => Kind::Remove,
            Kind::Remove if s.ready() < 2 => Kind::Add,
            k => k,
        };
        match kind {
            Kind::Add => {
                s.endpoints.push(Endpoint {
                    addr: next_endpoint,
                    ready: true,
                });
                self.next_endpoint += 1;
            }
            Kind::Remove => {
                // A ready one (removing one that is not changes nothing a
                // worker sees), never the last.
                let candidates: Vec<usize> = (0..s.endpoints.len())
                    .filter(|&k| s.endpoints[k].ready)
                    .collect();
                let k = candidates[self.rng.below(candidates.len() as u64) as usize];
                s.endpoints.remove(k);
            }
            _ => {
                let ready = s.ready();
                let candidates: Vec<usize> = (0..s.endpoints.len())
                    .filter(|&k| !s.endpoints[k].ready || ready > 1)
                    .collect();
                let k = candidates[self.rng.below(candidates.len() as u64) as usize];
                s.endpoints[k].ready = !s.endpoints[k].ready;
            }
        }
        Change {
            kind,
            service: i,
            after: Some(s.clone()),
        }
    }
}

// ---- as API objects ------------------------------------------------------

pub fn service_object(i: usize) -> Value {
    service(
        NAMESPACE,
        &format!("svc-{i}"),
        &cluster_ip(i).to_string(),
        &[("http", PORT)],
        Some(10_800),
    )
}

pub fn slice_object(i: usize, svc: &Svc) -> Value {
    let addrs: Vec<String> = svc
        .endpoints
        .iter()
        .map(|e| endpoint_ip(e.addr).to_string())
        .collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut s = slice(
        NAMESPACE,
        &format!("svc-{i}-0"),
        &format!("svc-{i}"),
        ("http", TARGET_PORT),
        &refs,
    );
    for (k, e) in svc.endpoints.iter().enumerate() {
        if !e.ready {
            s["endpoints"][k]["conditions"] =
                json!({"ready": false, "serving": false, "terminating": false});
        }
    }
    s
}

/// Loads the whole cluster into the API server.
pub fn load_api(server: &FakeApiServer, cluster: &Cluster) {
    for (i, s) in &cluster.services {
        server.apply(slice_object(*i, s));
        server.apply(service_object(*i));
    }
}

/// Applies one change on the API server (one write, two for a service
/// created or deleted).
pub fn apply_api(server: &FakeApiServer, change: &Change) {
    let i = change.service;
    match (&change.after, change.kind) {
        (Some(s), Kind::Create) => {
            server.apply(slice_object(i, s));
            server.apply(service_object(i));
        }
        (Some(s), _) => {
            server.apply(slice_object(i, s));
        }
        (None, _) => {
            server.delete(Resource::Services, NAMESPACE, &format!("svc-{i}"));
            server.delete(Resource::EndpointSlices, NAMESPACE, &format!("svc-{i}-0"));
        }
    }
}

// ---- as manifest files ---------------------------------------------------

/// One file per service (its Service and slice), in `dir`.
pub fn manifest_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("svc-{i}.yaml"))
}

fn write_manifest(dir: &Path, i: usize, svc: &Svc) {
    // JSON documents are YAML; written aside and renamed over the old
    // file, as deployment tooling does.
    let text = format!("{}\n---\n{}\n", service_object(i), slice_object(i, svc));
    let tmp = dir.join(format!(".svc-{i}.yaml.tmp"));
    std::fs::write(&tmp, text).expect("write a manifest");
    std::fs::rename(&tmp, manifest_path(dir, i)).expect("rename a manifest");
}

pub fn load_dir(dir: &Path, cluster: &Cluster) {
    for (i, s) in &cluster.services {
        write_manifest(dir, *i, s);
    }
}

pub fn apply_dir(dir: &Path, change: &Change) {
    match &change.after {
        Some(s) => write_manifest(dir, change.service, s),
        None => {
            std::fs::remove_file(manifest_path(dir, change.service)).expect("remove a manifest");
        }
    }
}
