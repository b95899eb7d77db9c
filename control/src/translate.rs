//! Kubernetes `Service` and `EndpointSlice` objects -> the dataplane's
//! [`ServicePortSpec`]s, with kube-proxy's semantics (DESIGN.md, "Semantics:
//! kube-proxy is the ground truth"). The manifest source and the API watcher
//! both go through [`translate`]; it is a pure function of the objects, the
//! node it runs for ([`TranslateContext`]) and the id allocator.
//!
//! # Naming, ids and families
//!
//! - A spec is named `namespace/name:port/PROTOCOL`, where `port` is the
//!   service port's `name` when it has one (kube-proxy's `ServicePortName`,
//!   so renumbering a named port keeps its affinity) and its number
//!   otherwise: `default/hostnames:80/TCP`, `default/web:http/TCP`.
//! - A spec holds one address family ([`Snapshot`] requires it). A
//!   dual-stack service gives one spec per (service port, family); the IPv4
//!   one has the plain name and the IPv6 one the suffix `/v6`
//!   (`default/hostnames:80/TCP/v6`), whichever family is primary, so a
//!   service that gains or loses a family keeps the ids of the other. The
//!   families served are those of `spec.clusterIPs` (as kube-proxy's
//!   per-family proxiers do): external, load-balancer and node addresses of
//!   another family are not served.
//! - `internalTrafficPolicy` applies to cluster IPs and
//!   `externalTrafficPolicy` to external IPs, load-balancer ingress IPs and
//!   node ports. A spec has one backend set, so when the two policies differ
//!   and the service has external frontends, it is split: the cluster spec
//!   (plain name) and an external spec with the suffix `/external`
//!   (`default/web:http/TCP/external`), with its own id. Affinity is then
//!   per scope: a client that reaches the service both through its cluster
//!   IP and through a load-balancer IP may be sticky to two backends. When
//!   the policies agree there is one spec and affinity is shared by every
//!   frontend, as in kube-proxy.
//! - Ids come from [`IdAllocator`]: by spec name for service ports, by
//!   endpoint address and port for backends, stable across reloads.
//!
//! # Endpoints
//!
//! `EndpointSlice`s labelled `kubernetes.io/service-name=<service>` in the
//! service's namespace, with `addressType` of the spec's family (FQDN slices
//! are ignored). The backend port is the slice's `ports[]` entry whose `name`
//! and `protocol` equal the service port's: the endpoints controller has
//! already resolved `targetPort` (by number or by container port name), so a
//! slice with no such entry contributes nothing to that port. Only
//! `addresses[0]` of an endpoint is used. Conditions: `ready` nil = true,
//! `serving` nil = true, `terminating` nil = false. An address:port listed
//! by several slices is used once (ready if any listing says so).
//!
//! Usable endpoints are the ready ones or, if none is ready, those serving
//! and terminating. With a `Local` policy, the usable endpoints are those
//! whose `nodeName` is [`TranslateContext::node_name`], ready or, if none
//! of them is ready, serving and terminating (kube-proxy's
//! `CategorizeEndpoints`); with no node name, none is local. A spec with no
//! usable endpoint is still emitted, with no backends: its frontends are
//! known and traffic to them is dropped rather than forwarded elsewhere.
//!
//! # Validation
//!
//! Objects are checked the way the API server checks them, and reported in
//! its words (`spec.ports[0].port: Invalid value: 70000: must be between 1
//! and 65535, inclusive`). An invalid object is left out and the others are
//! translated; callers decide whether errors are fatal. A frontend already
//! claimed by an earlier spec (services in namespace/name order) is dropped
//! from the later one and reported, so one bad object cannot fail a whole
//! snapshot.
//!
//! [`Snapshot`]: limpet_dataplane::snapshot::Snapshot

use crate::ids::IdAllocator;
use crate::manifest::{Manifests, Sourced};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use limpet_dataplane::affinity::ServicePortId;
use limpet_dataplane::snapshot::{
    Affinity, Backend, ForwardMode, Repick, ServicePortSpec, SourceRanges,
};
use limpet_dataplane::wire::MacAddr;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

/// `timeoutSeconds` when `ClientIP` has no `sessionAffinityConfig`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// The largest valid `timeoutSeconds` (one day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;
/// Services with this label belong to another proxy.
/// Annotation: the IPv4 prefix length (1..=32) that identifies a `ClientIP`
/// client, so that clients behind one /n share a backend.
pub const AFFINITY_IPV4_PREFIX_ANNOTATION: &str = "limpet.io/affinity-ipv4-prefix";
/// Annotation: the IPv6 prefix length (1..=128) that identifies a client; a
/// /64 holds one host that rotates its privacy addresses.
pub const AFFINITY_IPV6_PREFIX_ANNOTATION: &str = "limpet.io/affinity-ipv6-prefix";
/// Annotation: how a `ClientIP` client without a live entry is placed:
/// `ClientIP` (Maglev over its address, the default) or `Connection`
/// (over the connection's 5-tuple, so load spreads again after expiry).
pub const AFFINITY_REPICK_ANNOTATION: &str = "limpet.io/affinity-repick";
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label tying an `EndpointSlice` to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The node limpet runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateContext {
    /// This node's name, matched against endpoints' `nodeName` for `Local`
    /// traffic policies.
    pub node_name: Option<String>,
    /// The addresses node ports are served on.
    pub node_addresses: Vec<IpAddr>,
    pub mode: ForwardMode,
    /// The smallest Maglev table a service port gets; see [`maglev_size`].
    /// Every limpet instance serving the same cluster must use the same
    /// value, or they stop agreeing on clients' backends.
    pub maglev_min_size: usize,
    /// This node's zone (`topology.kubernetes.io/zone`), for topology-aware
    /// routing: cluster traffic of a Service that asks for it goes to the
    /// endpoints hinted for this zone, as kube-proxy does.
    pub node_zone: Option<String>,
    /// How `ClientIP` clients are identified and re-picked where a Service
    /// does not say ([`AFFINITY_IPV4_PREFIX_ANNOTATION`] and the others).
    pub affinity: AffinityDefaults,
}

/// The `ClientIP` settings a Service's annotations may override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffinityDefaults {
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub repick: Repick,
}

impl Default for AffinityDefaults {
    /// Kubernetes' behaviour: one address is one client.
    fn default() -> Self {
        Self {
            v4_prefix: 32,
            v6_prefix: 128,
            repick: Repick::ClientIp,
        }
    }
}

/// A Service's own [`AffinityDefaults`] overrides, from its annotations.
#[derive(Debug, Clone, Copy, Default)]
struct AffinityOverrides {
    v4_prefix: Option<u8>,
    v6_prefix: Option<u8>,
    repick: Option<Repick>,
}

impl AffinityOverrides {
    /// Reads the annotations, reporting a bad value under the annotation's
    /// own field path.
    fn parse(meta: &ObjectMeta, problems: &mut Problems) -> Self {
        let Some(annotations) = meta.annotations.as_ref() else {
            return Self::default();
        };
        let mut prefix = |key: &str, max: u8| {
            let value = annotations.get(key)?;
            match value.trim().parse::<u8>() {
                Ok(n) if (1..=max).contains(&n) => Some(n),
                _ => {
                    problems.push(
                        format!("metadata.annotations[{key}]"),
                        invalid(
                            quoted(value),
                            &format!("must be an integer from 1 to {max}"),
                        ),
                    );
                    None
                }
            }
        };
        let v4_prefix = prefix(AFFINITY_IPV4_PREFIX_ANNOTATION, 32);
        let v6_prefix = prefix(AFFINITY_IPV6_PREFIX_ANNOTATION, 128);
        let repick = annotations
            .get(AFFINITY_REPICK_ANNOTATION)
            .and_then(|value| match value.as_str() {
                "ClientIP" => Some(Repick::ClientIp),
                "Connection" => Some(Repick::Connection),
                other => {
                    problems.push(
                        format!("metadata.annotations[{AFFINITY_REPICK_ANNOTATION}]"),
                        not_supported(other, &["ClientIP", "Connection"]),
                    );
                    None
                }
            });
        Self {
            v4_prefix,
            v6_prefix,
            repick,
        }
    }

    /// `affinity` with these overrides, and `defaults` where there are none.
    fn apply(self, affinity: Affinity, defaults: AffinityDefaults) -> Affinity {
        match affinity {
            Affinity::None => Affinity::None,
            Affinity::ClientIp { timeout, .. } => Affinity::ClientIp {
                timeout,
                v4_prefix: self.v4_prefix.unwrap_or(defaults.v4_prefix),
                v6_prefix: self.v6_prefix.unwrap_or(defaults.v6_prefix),
                repick: self.repick.unwrap_or(defaults.repick),
            },
        }
    }
}

impl Default for TranslateContext {
    fn default() -> Self {
        Self {
            node_name: None,
            node_addresses: Vec::new(),
            mode: ForwardMode::Nat,
            maglev_min_size: DEFAULT_MAGLEV_MIN_SIZE,
            node_zone: None,
            affinity: AffinityDefaults::default(),
        }
    }
}

/// The default of [`TranslateContext::maglev_min_size`]: the ladder's prime
/// above 2^10, 2 KiB of table per service port.
pub const DEFAULT_MAGLEV_MIN_SIZE: usize = 1031;

/// The Maglev table sizes translation picks from: `MAGLEV_LADDER[k]` is the
/// smallest prime above `2^k` (checked by a test). 65537 (DESIGN's default)
/// is on it; the last covers 100 x the most backends a table can index.
const MAGLEV_LADDER: [usize; 24] = [
    2, 3, 5, 11, 17, 37, 67, 131, 257, 521, 1031, 2053, 4099, 8209, 16411, 32771, 65537, 131_101,
    262_147, 524_309, 1_048_583, 2_097_169, 4_194_319, 8_388_617,
];

/// The Maglev table size of a service port with `backends` backends: the
/// smallest prime of the ladder `{smallest prime > 2^k}` that is at least
/// `max(100 x backends, min_size)` (beyond the ladder, the smallest prime at
/// least that).
///
/// Why not DESIGN's "65537 for everyone": the table is `M` `u16`s, so 128
/// KiB per service port; 10,000 service ports would hold 1.3 GB per
/// snapshot and spend seconds filling tables at start-up. What Maglev needs
/// is `M` prime and `M >= 100 x backends` (each backend then owns
/// `floor(M/N)` or `ceil(M/N)` slots, under 1% apart, and removing one of
/// `N` moves little more than the unavoidable `1/N`); that holds here.
///
/// Why a ladder rather than the smallest prime `>= 100 x backends`: a table
/// of another size is a different permutation, and every slot can change
/// owner, so with `M` tracking the backend count every scale-up or -down
/// would re-pick every client that has no affinity entry on this node (a
/// client moved by ECMP to another limpet of the tier, or whose entry
/// expired): Maglev's minimal disruption only holds while `M` stays put. On
/// the ladder `M` changes only when `100 x backends` crosses a power of two,
/// i.e. at most once per doubling of the backend count (by default on
/// reaching 11, 21, 41, 83, 165, 328 and 656 backends), at the price of up to twice the
/// memory of the tightest size. A service with 656 to 1310 backends gets
/// 131101 where the dataplane's own default (`table_size_for`) would give
/// the first prime above `100 x backends`.
///
/// `M` depends only on the endpoint count the API reports and on
/// `min_size`, so every limpet instance with the same `min_size` picks the
/// same `M` for the same endpoint set (backends left out of a snapshot
/// while their MAC address resolves do not change it). Setting `min_size`
/// to 65537 gives DESIGN's default for up to 655 backends.
pub fn maglev_size(backends: usize, min_size: usize) -> usize {
    let target = backends.saturating_mul(100).max(min_size);
    MAGLEV_LADDER
        .iter()
        .copied()
        .find(|&m| m >= target)
        .unwrap_or_else(|| {
            limpet_dataplane::maglev::next_prime_at_least(target as u64)
                .map_or(usize::MAX, |p| p as usize)
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// The `EndpointSlice` `addressType`.
    pub fn address_type(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

/// `internalTrafficPolicy` / `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

/// Which frontends a spec serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every frontend of the service port (both policies agree, or there is
    /// no external frontend).
    All,
    /// Cluster IPs only (the policies differ).
    Cluster,
    /// External IPs, load-balancer IPs and node ports only.
    External,
}

/// What a spec was made from, beyond what the dataplane needs: for the
/// admin API and for later policy work (source ranges, topology).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecInfo {
    pub namespace: String,
    pub service: String,
    /// The service port's `name`, if it has one.
    pub port_name: Option<String>,
    pub port: u16,
    pub file: Option<PathBuf>,
    pub family: IpFamily,
    pub scope: Scope,
    pub internal_traffic_policy: TrafficPolicy,
    pub external_traffic_policy: TrafficPolicy,
    /// Load-balancer ingress addresses among the spec's frontends (what
    /// `loadBalancerSourceRanges` restricts).
    pub load_balancer_ips: Vec<IpAddr>,
    /// External IPs and load-balancer ingress addresses among the spec's
    /// frontends: what a tier announces to its routers (cluster IPs and
    /// node ports never are).
    pub announce: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<String>,
    pub traffic_distribution: Option<String>,
    /// The Service's `healthCheckNodePort` and the ready endpoints of this
    /// service port on this node (what kube-proxy's health check reports).
    pub health_check: Option<HealthCheckPort>,
}

/// What a consumer keeps of each service port's [`SpecInfo`] (its health
/// check, the addresses it announces), by service port, so that a change
/// to some ports (a Kubernetes delta) updates only those.
#[derive(Debug)]
pub struct SpecIndex<T> {
    by_spec: BTreeMap<ServicePortId, T>,
}

impl<T> Default for SpecIndex<T> {
    fn default() -> Self {
        Self {
            by_spec: BTreeMap::new(),
        }
    }
}

impl<T> SpecIndex<T> {
    /// Forgets everything and keeps `of(info[i])` for `specs[i]`.
    pub fn replace(
        &mut self,
        specs: &[ServicePortSpec],
        info: &[SpecInfo],
        of: impl Fn(&SpecInfo) -> Option<T>,
    ) {
        self.by_spec.clear();
        self.apply(specs, info, &[], of);
    }

    /// Takes changed `specs` (a `None` from `of` forgets the port) and
    /// forgets `removed` ones.
    pub fn apply(
        &mut self,
        specs: &[ServicePortSpec],
        info: &[SpecInfo],
        removed: &[ServicePortId],
        of: impl Fn(&SpecInfo) -> Option<T>,
    ) {
        for id in removed {
            self.by_spec.remove(id);
        }
        for (spec, info) in specs.iter().zip(info) {
            match of(info) {
                Some(v) => {
                    self.by_spec.insert(spec.id, v);
                }
                None => {
                    self.by_spec.remove(&spec.id);
                }
            }
        }
    }

    pub fn get(&self, id: ServicePortId) -> Option<&T> {
        self.by_spec.get(&id)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.by_spec.values()
    }
}

/// What a Service's `healthCheckNodePort` reports, from one service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheckPort {
    pub node_port: u16,
    pub local_endpoints: usize,
}

/// An object left out, in the API server's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    pub file: Option<PathBuf>,
    /// The resource: `services` or `endpointslices`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The field path, as `spec.ports[0].port`.
    pub field: String,
    /// `Invalid value: 70000: must be between 1 and 65535, inclusive`.
    pub message: String,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)?;
        if let Some(file) = &self.file {
            write!(f, " (file {})", file.display())?;
        }
        write!(f, ": {}: {}", self.field, self.message)
    }
}

impl std::error::Error for ObjectError {}

/// The outcome of a translation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    pub specs: Vec<ServicePortSpec>,
    /// `info[i]` describes `specs[i]`.
    pub info: Vec<SpecInfo>,
    pub errors: Vec<ObjectError>,
    /// Objects deliberately not served: (`services/namespace/name`, reason).
    pub skipped: Vec<(String, String)>,
}

impl Manifests {
    /// Translates every object loaded.
    pub fn translate(&self, ctx: &TranslateContext, ids: &mut IdAllocator) -> Translation {
        translate(&self.services, &self.slices, ctx, ids)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    const SUPPORTED: &[&str] = &["SCTP", "TCP", "UDP"];

    /// The API's default is TCP.
    fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }

    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

// The API server's `field.Error` kinds.
fn invalid(value: impl fmt::Display, detail: &str) -> String {
    format!("Invalid value: {value}: {detail}")
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn not_supported(value: &str, supported: &[&str]) -> String {
    let list: Vec<String> = supported.iter().map(|s| quoted(s)).collect();
    format!(
        "Unsupported value: {}: supported values: {}",
        quoted(value),
        list.join(", ")
    )
}

fn forbidden(detail: &str) -> String {
    format!("Forbidden: {detail}")
}

fn duplicate(value: impl fmt::Display) -> String {
    format!("Duplicate value: {value}")
}

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

fn port_number(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|&p| p != 0)
}

/// Field errors of one object.
#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, message: String) {
        self.0.push((field.into(), message));
    }
}

struct ParsedPort {
    name: Option<String>,
    port: u16,
    protocol: Protocol,
    node_port: Option<u16>,
}

/// A frontend and the field it came from (for conflict reports).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frontend {
    addr: IpAddr,
    port: u16,
    field: String,
}

/// `loadBalancerSourceRanges` as kube-proxy applies them: only to the
/// load-balancer ingress addresses (node ports are exempt), and only with
/// the ranges of the spec's family; no range of that family means no
/// restriction. Malformed ranges are left out (the API server rejects
/// them before they reach a real cluster).
fn restrict(lb_ips: &[IpAddr], ranges: &[String], family: IpFamily) -> Option<SourceRanges> {
    let allowed: Vec<(IpAddr, u8)> = ranges
        .iter()
        .filter_map(|r| {
            let (addr, len) = r.trim().split_once('/')?;
            let addr: IpAddr = addr.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            let (v4, max) = (addr.is_ipv4(), if addr.is_ipv4() { 32 } else { 128 });
            (len <= max && v4 == matches!(family, IpFamily::V4)).then_some((addr, len))
        })
        .collect();
    (!lb_ips.is_empty() && !allowed.is_empty()).then(|| SourceRanges {
        frontends: lb_ips.to_vec(),
        allowed,
    })
}

struct ParsedService<'a> {
    file: Option<&'a PathBuf>,
    namespace: String,
    name: String,
    affinity: Affinity,
    affinity_overrides: AffinityOverrides,
    cluster_ips: Vec<(IpAddr, String)>,
    external_ips: Vec<(IpAddr, String)>,
    lb_ips: Vec<(IpAddr, String)>,
    node_ports: bool,
    ports: Vec<ParsedPort>,
    itp: TrafficPolicy,
    etp: TrafficPolicy,
    source_ranges: Vec<String>,
    traffic_distribution: Option<String>,
    /// `spec.healthCheckNodePort` (`type: LoadBalancer` with
    /// `externalTrafficPolicy: Local` only).
    health_check_node_port: Option<u16>,
    /// Topology-aware routing asked for: the `topology-mode: Auto`
    /// annotation (or the older `topology-aware-hints`), or
    /// `trafficDistribution: PreferClose`.
    topology: bool,
}

enum ServiceOutcome<'a> {
    Serve(Box<ParsedService<'a>>),
    Skip(String),
    Invalid(Problems),
}

fn namespace_of(ns: Option<&String>) -> String {
    ns.filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| "default".to_owned())
}

fn parse_policy(value: Option<&str>, field: &str, problems: &mut Problems) -> TrafficPolicy {
    match value {
        None | Some("" | "Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            problems.push(field, not_supported(other, &["Cluster", "Local"]));
            TrafficPolicy::Cluster
        }
    }
}

#[allow(clippy::too_many_lines)] // one pass over the spec, as the API server's validation
fn parse_service<'a>(svc: &'a Service, file: Option<&'a PathBuf>) -> ServiceOutcome<'a> {
    let labels = svc.metadata.labels.as_ref();
    if let Some(proxy) = labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL)) {
        return ServiceOutcome::Skip(format!(
            "labelled {SERVICE_PROXY_NAME_LABEL}={proxy}: served by another proxy"
        ));
    }
    let mut problems = Problems::default();
    let Some(spec) = svc.spec.as_ref() else {
        problems.push("spec", "Required value".to_owned());
        return ServiceOutcome::Invalid(problems);
    };
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    match type_ {
        "ExternalName" => {
            return ServiceOutcome::Skip("type ExternalName: no proxying".to_owned());
        }
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        other => problems.push(
            "spec.type",
            not_supported(
                other,
                &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
            ),
        ),
    }

    let affinity = match spec.session_affinity.as_deref() {
        None | Some("" | "None") => {
            if spec.session_affinity_config.is_some() {
                problems.push(
                    "spec.sessionAffinityConfig",
                    forbidden("must not be set when session affinity is None"),
                );
            }
            Affinity::None
        }
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Affinity::client_ip(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) => match u32::try_from(t) {
                    Ok(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => Affinity::client_ip(t),
                    _ => {
                        // The API server's wording, although it accepts 86400.
                        problems.push(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            invalid(
                                t,
                                &format!(
                                    "must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}"
                                ),
                            ),
                        );
                        Affinity::None
                    }
                },
            }
        }
        Some(other) => {
            problems.push(
                "spec.sessionAffinity",
                not_supported(other, &["ClientIP", "None"]),
            );
            Affinity::None
        }
    };

    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or_default();
    let headless = cluster_ip == "None";
    if !cluster_ip.is_empty() && !headless && parse_ip(cluster_ip).is_none() {
        problems.push(
            "spec.clusterIP",
            invalid(
                quoted(cluster_ip),
                "must be empty, 'None', or a valid IP address",
            ),
        );
    }
    let mut cluster_ips = Vec::new();
    match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => {
            if !cluster_ip.is_empty() && list[0] != cluster_ip {
                problems.push(
                    "spec.clusterIPs[0]",
                    invalid(
                        quoted(&list[0]),
                        "must be same as clusterIP when clusterIP is set",
                    ),
                );
            }
            for (i, s) in list.iter().enumerate() {
                if s == "None" {
                    continue;
                }
                let field = format!("spec.clusterIPs[{i}]");
                match parse_ip(s) {
                    Some(a) => cluster_ips.push((a, field)),
                    None => problems.push(field, invalid(quoted(s), "must be a valid IP address")),
                }
            }
        }
        _ => {
            if let Some(a) = parse_ip(cluster_ip) {
                cluster_ips.push((a, "spec.clusterIP".to_owned()));
            }
        }
    }
    if cluster_ips.len() == 2 && IpFamily::of(cluster_ips[0].0) == IpFamily::of(cluster_ips[1].0) {
        problems.push(
            "spec.clusterIPs[1]",
            invalid(
                quoted(&cluster_ips[1].0.to_string()),
                "may specify no more than one IP for each IP family",
            ),
        );
    }
    if cluster_ips.len() > 2 {
        problems.push(
            "spec.clusterIPs",
            "Invalid value: must be at most 2 entries".to_owned(),
        );
    }

    let mut external_ips = Vec::new();
    for (i, s) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        match parse_ip(s) {
            Some(a) => external_ips.push((a, field)),
            None => problems.push(
                field,
                invalid(
                    quoted(s),
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                ),
            ),
        }
    }

    let mut lb_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        let Some(s) = ing.ip.as_deref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        match parse_ip(s) {
            // ipMode Proxy: the load balancer proxies to the node; kube-proxy
            // does not capture the address.
            Some(_) if ing.ip_mode.as_deref() == Some("Proxy") => {}
            Some(a) => lb_ips.push((a, field)),
            None => problems.push(field, invalid(quoted(s), "must be a valid IP address")),
        }
    }

    let mut ports = Vec::new();
    let mut seen_ports: HashSet<(Protocol, u16)> = HashSet::new();
    let mut seen_names: HashSet<&str> = HashSet::new();
    // The API server's rules: with more than one port every port is named,
    // and no name twice (a service port's name is its spec's name).
    let named = spec.ports.as_ref().is_some_and(|p| p.len() > 1);
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        match p.name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) if !seen_names.insert(name) => {
                problems.push(format!("{field}.name"), duplicate(quoted(name)));
            }
            None if named => problems.push(format!("{field}.name"), "Required value".to_owned()),
            _ => {}
        }
        let port = port_number(p.port);
        if port.is_none() {
            problems.push(format!("{field}.port"), invalid(p.port, PORT_RANGE));
        }
        let protocol = Protocol::parse(p.protocol.as_deref());
        if protocol.is_none() {
            problems.push(
                format!("{field}.protocol"),
                not_supported(
                    p.protocol.as_deref().unwrap_or_default(),
                    Protocol::SUPPORTED,
                ),
            );
        }
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => {
                let np = port_number(n);
                if np.is_none() {
                    problems.push(format!("{field}.nodePort"), invalid(n, PORT_RANGE));
                }
                np
            }
        };
        if let (Some(port), Some(protocol)) = (port, protocol) {
            if !seen_ports.insert((protocol, port)) {
                problems.push(
                    field,
                    duplicate(format!("{{{port} {}}}", protocol.as_str())),
                );
                continue;
            }
            ports.push(ParsedPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port,
                protocol,
                node_port,
            });
        }
    }

    let affinity_overrides = AffinityOverrides::parse(&svc.metadata, &mut problems);
    let itp = parse_policy(
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
        &mut problems,
    );
    let etp = parse_policy(
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
        &mut problems,
    );

    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(n) if type_ != "LoadBalancer" || etp != TrafficPolicy::Local => {
            problems.push(
                "spec.healthCheckNodePort",
                invalid(
                    n,
                    "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
                ),
            );
            None
        }
        Some(n) => {
            let np = port_number(n);
            if np.is_none() {
                problems.push("spec.healthCheckNodePort", invalid(n, PORT_RANGE));
            }
            np
        }
    };

    if !problems.0.is_empty() {
        return ServiceOutcome::Invalid(problems);
    }
    if headless {
        return ServiceOutcome::Skip("headless (clusterIP: None): no proxying".to_owned());
    }
    if cluster_ips.is_empty() {
        return ServiceOutcome::Skip("no cluster IP assigned".to_owned());
    }
    ServiceOutcome::Serve(Box::new(ParsedService {
        file,
        namespace: namespace_of(svc.metadata.namespace.as_ref()),
        name: svc.metadata.name.clone().unwrap_or_default(),
        affinity,
        affinity_overrides,
        cluster_ips,
        external_ips,
        lb_ips,
        node_ports: matches!(type_, "NodePort" | "LoadBalancer"),
        ports,
        itp,
        etp,
        source_ranges: spec.load_balancer_source_ranges.clone().unwrap_or_default(),
        traffic_distribution: spec.traffic_distribution.clone(),
        health_check_node_port,
        topology: wants_topology(svc),
    }))
}

/// Whether a Service asks for topology-aware routing.
fn wants_topology(svc: &Service) -> bool {
    let annotated = svc.metadata.annotations.as_ref().is_some_and(|a| {
        [
            "service.kubernetes.io/topology-mode",
            "service.kubernetes.io/topology-aware-hints",
        ]
        .iter()
        .any(|k| a.get(*k).is_some_and(|v| v.eq_ignore_ascii_case("auto")))
    });
    let prefer_close = svc
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref())
        == Some("PreferClose");
    annotated || prefer_close
}

#[derive(Debug, Clone, Copy)]
struct Endpoint<'a> {
    addr: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<&'a str>,
    /// The zones the endpoint is hinted for, if it has hints.
    zones: Option<&'a [k8s_openapi::api::discovery::v1::ForZone]>,
}

struct SlicePort<'a> {
    name: &'a str,
    protocol: Protocol,
    port: Option<u16>,
}

struct ParsedSlice<'a> {
    family: IpFamily,
    ports: Vec<SlicePort<'a>>,
    endpoints: Vec<Endpoint<'a>>,
}

fn parse_slice(slice: &EndpointSlice) -> Result<Option<ParsedSlice<'_>>, Problems> {
    let mut problems = Problems::default();
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => return Ok(None),
        other => {
            problems.push("addressType", not_supported(other, &["IPv4", "IPv6"]));
            return Err(problems);
        }
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let protocol = Protocol::parse(p.protocol.as_deref());
        if protocol.is_none() {
            problems.push(
                format!("ports[{i}].protocol"),
                not_supported(
                    p.protocol.as_deref().unwrap_or_default(),
                    Protocol::SUPPORTED,
                ),
            );
        }
        let port = match p.port {
            None => None,
            Some(n) => {
                let np = port_number(n);
                if np.is_none() {
                    problems.push(format!("ports[{i}].port"), invalid(n, PORT_RANGE));
                }
                np
            }
        };
        if let Some(protocol) = protocol {
            ports.push(SlicePort {
                name: p.name.as_deref().unwrap_or_default(),
                protocol,
                port,
            });
        }
    }
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().flatten().enumerate() {
        let Some(s) = ep.addresses.first() else {
            continue;
        };
        match parse_ip(s).filter(|&a| IpFamily::of(a) == family) {
            Some(addr) => {
                let c = ep.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                endpoints.push(Endpoint {
                    addr,
                    ready,
                    serving: c.and_then(|c| c.serving).unwrap_or(true),
                    terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                    node: ep.node_name.as_deref(),
                    zones: ep
                        .hints
                        .as_ref()
                        .and_then(|h| h.for_zones.as_deref())
                        .filter(|z| !z.is_empty()),
                });
            }
            None => problems.push(
                format!("endpoints[{i}].addresses[0]"),
                invalid(
                    quoted(s),
                    &format!("must be a valid {} address", family.address_type()),
                ),
            ),
        }
    }
    if !problems.0.is_empty() {
        return Err(problems);
    }
    Ok(Some(ParsedSlice {
        family,
        ports,
        endpoints,
    }))
}

/// The endpoints of `slices` for a service port in `family`, deduplicated.
fn collect_endpoints<'a>(
    slices: &[&ParsedSlice<'a>],
    family: IpFamily,
    port: &ParsedPort,
) -> Vec<(Endpoint<'a>, u16)> {
    let want_name = port.name.as_deref().unwrap_or_default();
    let mut seen: BTreeMap<(IpAddr, u16), Endpoint<'a>> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.family == family) {
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| p.name == want_name && p.protocol == port.protocol)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            seen.entry((ep.addr, target))
                .and_modify(|old| {
                    if ep.ready && !old.ready {
                        *old = *ep;
                    }
                })
                .or_insert(*ep);
        }
    }
    seen.into_iter().map(|((_, port), ep)| (ep, port)).collect()
}

/// Topology-aware routing as kube-proxy applies it to cluster traffic: when
/// the Service asks for it, this node's zone is known, every usable
/// endpoint carries zone hints and some are hinted for this zone, only
/// those are used. `None`: route to every usable endpoint.
fn topology_filter(
    wanted: bool,
    zone: Option<&str>,
    eps: &[(Endpoint<'_>, u16)],
) -> Option<Vec<(IpAddr, u16)>> {
    let zone = zone.filter(|_| wanted)?;
    let all = usable(eps, |_| true);
    let hinted = |e: &Endpoint<'_>| e.zones.is_some();
    let every_usable_hinted = eps
        .iter()
        .filter(|(e, p)| all.contains(&(e.addr, *p)))
        .all(|(e, _)| hinted(e));
    if !every_usable_hinted {
        return None;
    }
    let here = usable(eps, |e| {
        e.zones.is_some_and(|z| z.iter().any(|f| f.name == zone))
    });
    (!here.is_empty()).then_some(here)
}

/// kube-proxy's usable set: ready, else serving and terminating.
fn usable<'a>(
    eps: &[(Endpoint<'a>, u16)],
    keep: impl Fn(&Endpoint<'a>) -> bool,
) -> Vec<(IpAddr, u16)> {
    let pick = |f: &dyn Fn(&Endpoint<'a>) -> bool| -> Vec<(IpAddr, u16)> {
        eps.iter()
            .filter(|(e, _)| keep(e) && f(e))
            .map(|(e, p)| (e.addr, *p))
            .collect()
    };
    let ready = pick(&|e| e.ready);
    if ready.is_empty() {
        pick(&|e| e.serving && e.terminating)
    } else {
        ready
    }
}

fn backends(set: &[(IpAddr, u16)], ids: &mut IdAllocator) -> Vec<Backend> {
    let mut set = set.to_vec();
    set.sort_unstable();
    set.dedup();
    set.into_iter()
        .map(|(addr, port)| Backend {
            id: ids.backend(addr, port),
            addr,
            port,
            weight: 1,
            mac: MacAddr::UNSPECIFIED,
            iface: 0,
        })
        .collect()
}

/// A spec before frontend conflicts are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    spec: ServicePortSpec,
    info: SpecInfo,
    frontends: Vec<Frontend>,
}

fn key_of(ns: &str, name: &str) -> (String, String) {
    (ns.to_owned(), name.to_owned())
}

/// What one `EndpointSlice` reports by itself, whatever service it serves:
/// why it is skipped or what is invalid in it (see [`slice_report`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceReport {
    pub errors: Vec<ObjectError>,
    pub skipped: Vec<(String, String)>,
}

/// One service translated by itself ([`translate_service`]): its specs
/// before frontend conflicts with other services are resolved, and its own
/// errors and skip reasons. [`assemble`] puts services together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTranslation {
    pending: Vec<Pending>,
    errors: Vec<ObjectError>,
    skipped: Vec<(String, String)>,
}

impl ServiceTranslation {
    /// How many specs it holds.
    pub fn spec_count(&self) -> usize {
        self.pending.len()
    }
}

/// The service a slice is labelled for (`kubernetes.io/service-name`), if
/// any; the slice serves that service of its own namespace.
pub fn slice_service(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(String::as_str)
}

/// A slice's report and, when it is usable, its parsed form and the
/// service it serves.
fn check_slice<'a>(
    slice: &'a EndpointSlice,
    file: Option<&PathBuf>,
) -> (SliceReport, Option<(&'a str, ParsedSlice<'a>)>) {
    let meta = &slice.metadata;
    let ns = namespace_of(meta.namespace.as_ref());
    let name = meta.name.clone().unwrap_or_default();
    let mut report = SliceReport::default();
    let Some(service) = slice_service(slice) else {
        report.skipped.push((
            format!("endpointslices/{ns}/{name}"),
            format!("no {SERVICE_NAME_LABEL} label"),
        ));
        return (report, None);
    };
    match parse_slice(slice) {
        Ok(Some(parsed)) => return (report, Some((service, parsed))),
        Ok(None) => report.skipped.push((
            format!("endpointslices/{ns}/{name}"),
            "addressType FQDN: not proxied".to_owned(),
        )),
        Err(problems) => {
            for (field, message) in problems.0 {
                report.errors.push(ObjectError {
                    file: file.cloned(),
                    kind: "endpointslices".to_owned(),
                    namespace: ns.clone(),
                    name: name.clone(),
                    field,
                    message,
                });
            }
        }
    }
    (report, None)
}

/// What [`translate`] reports about one slice by itself (an API object:
/// no file).
pub fn slice_report(slice: &EndpointSlice) -> SliceReport {
    check_slice(slice, None).0
}

/// Translates one service (an API object: no file) with the slices
/// labelled for it in its namespace (any order; invalid and FQDN slices
/// contribute nothing, as in [`translate`]). Ids are allocated as
/// [`translate`] would for this service.
pub fn translate_service(
    service: &Service,
    slices: &[&EndpointSlice],
    ctx: &TranslateContext,
    ids: &mut IdAllocator,
) -> ServiceTranslation {
    let mut sorted: Vec<&EndpointSlice> = slices.to_vec();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let parsed: Vec<ParsedSlice<'_>> = sorted
        .into_iter()
        .filter_map(|s| parse_slice(s).ok().flatten())
        .collect();
    let refs: Vec<&ParsedSlice<'_>> = parsed.iter().collect();
    translate_one(service, None, &refs, ctx, ids)
}

/// Puts slices' reports and services' translations together into what
/// [`translate`] gives for the same objects, given in (namespace, name)
/// order: a frontend claimed by several services goes to the first, and is
/// reported for the others.
pub fn assemble<'a>(
    slices: impl IntoIterator<Item = &'a SliceReport>,
    services: impl IntoIterator<Item = &'a ServiceTranslation> + Clone,
) -> Translation {
    let mut out = Translation::default();
    for r in slices {
        out.errors.extend(r.errors.iter().cloned());
        out.skipped.extend(r.skipped.iter().cloned());
    }
    let mut count = 0;
    for s in services.clone() {
        out.errors.extend(s.errors.iter().cloned());
        out.skipped.extend(s.skipped.iter().cloned());
        count += s.pending.len();
    }
    let mut claims = Claims::with_capacity(&mut out, count);
    for s in services {
        for p in &s.pending {
            let spec = ServicePortSpec {
                frontends: Vec::with_capacity(p.frontends.len()),
                ..p.spec.clone()
            };
            claims.add(spec, p.info.clone(), &p.frontends);
        }
    }
    out
}

/// What changed between two states of an [`Assembly`]: the service ports
/// added or changed (whole, as [`assemble`] would give them), those gone,
/// and the errors and skip reasons of the whole new state (few, so carried
/// whole).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TranslationDelta {
    /// Added or changed service ports.
    pub specs: Vec<ServicePortSpec>,
    /// `info[i]` describes `specs[i]`.
    pub info: Vec<SpecInfo>,
    /// Service ports no longer served.
    pub removed: Vec<ServicePortId>,
    pub errors: Vec<ObjectError>,
    pub skipped: Vec<(String, String)>,
}

impl TranslationDelta {
    /// Whether no service port changed.
    pub fn no_spec_changed(&self) -> bool {
        self.specs.is_empty() && self.removed.is_empty()
    }
}

impl Translation {
    /// Brings a full translation up to date with a delta: changed specs
    /// are replaced where they were, new ones appended, removed ones
    /// dropped; errors and skip reasons replaced.
    pub fn apply(&mut self, delta: TranslationDelta) {
        let gone: HashSet<ServicePortId> = delta.removed.iter().copied().collect();
        let mut at: HashMap<ServicePortId, usize> = HashMap::with_capacity(self.specs.len());
        let mut keep = 0;
        for i in 0..self.specs.len() {
            if gone.contains(&self.specs[i].id) {
                continue;
            }
            self.specs.swap(keep, i);
            self.info.swap(keep, i);
            at.insert(self.specs[keep].id, keep);
            keep += 1;
        }
        self.specs.truncate(keep);
        self.info.truncate(keep);
        for (spec, info) in delta.specs.into_iter().zip(delta.info) {
            if let Some(&i) = at.get(&spec.id) {
                self.specs[i] = spec;
                self.info[i] = info;
            } else {
                at.insert(spec.id, self.specs.len());
                self.specs.push(spec);
                self.info.push(info);
            }
        }
        self.errors = delta.errors;
        self.skipped = delta.skipped;
    }
}

/// (namespace, name) of a service.
pub type ServiceKey = (String, String);

/// A spec of an [`Assembly`]: its service and its index in that service's
/// translation. Claims on a frontend are ordered by it, as [`assemble`]
/// orders them.
type SpecKey = (ServiceKey, usize);

/// (address, port, protocol) of a frontend.
type FrontendKey = (IpAddr, u16, u8);

/// Services translated one by one ([`translate_service`]) and put together
/// as [`assemble`] does, kept up to date as services change: a change
/// touches only the changed services' specs and those of the services
/// sharing one of their frontends (first claim in (namespace, name) order
/// wins, the others are reported), and says which specs it changed.
#[derive(Debug, Default)]
pub struct Assembly {
    parts: BTreeMap<ServiceKey, ServiceTranslation>,
    /// Who lists each frontend; the first holds it.
    claims: HashMap<FrontendKey, Vec<SpecKey>>,
    /// Frontends a spec lost to an earlier one, as reported.
    conflicts: BTreeMap<SpecKey, Vec<ObjectError>>,
}

impl Assembly {
    pub fn new() -> Self {
        Self::default()
    }

    /// The translation of one service.
    pub fn part(&self, key: &ServiceKey) -> Option<&ServiceTranslation> {
        self.parts.get(key)
    }

    /// Every service's translation, in (namespace, name) order.
    pub fn parts(&self) -> impl Iterator<Item = (&ServiceKey, &ServiceTranslation)> {
        self.parts.iter()
    }

    /// Sets services' translations (`None`: the service is gone) and
    /// returns the specs that changed (errors and skip reasons are left
    /// empty: see [`finish`](Self::finish)), or `None` if no translation
    /// differs from the one it replaces.
    pub fn update(
        &mut self,
        parts: impl IntoIterator<Item = (ServiceKey, Option<ServiceTranslation>)>,
    ) -> Option<TranslationDelta> {
        if self.parts.is_empty() {
            return self.first(parts);
        }
        let mut changed: Vec<(ServiceKey, Option<ServiceTranslation>)> = Vec::new();
        for (key, part) in parts {
            let old = match part {
                Some(p) => {
                    if self.parts.get(&key) == Some(&p) {
                        continue;
                    }
                    self.parts.insert(key.clone(), p)
                }
                None => match self.parts.remove(&key) {
                    Some(old) => Some(old),
                    None => continue,
                },
            };
            changed.push((key, old));
        }
        if changed.is_empty() {
            return None;
        }
        let mut touched: HashSet<FrontendKey> = HashSet::new();
        let mut specs: BTreeSet<SpecKey> = BTreeSet::new();
        let mut old_ids: Vec<ServicePortId> = Vec::new();
        for (key, old) in &changed {
            for (i, p) in old.iter().flat_map(|o| o.pending.iter().enumerate()) {
                old_ids.push(p.spec.id);
                let me = (key.clone(), i);
                self.conflicts.remove(&me);
                for fe in &p.frontends {
                    let fk = (fe.addr, fe.port, p.spec.protocol);
                    if let Some(list) = self.claims.get_mut(&fk) {
                        list.retain(|c| *c != me);
                        if list.is_empty() {
                            self.claims.remove(&fk);
                        }
                    }
                    touched.insert(fk);
                }
            }
            for (i, p) in self
                .parts
                .get(key)
                .iter()
                .flat_map(|n| n.pending.iter().enumerate())
            {
                let me = (key.clone(), i);
                for fe in &p.frontends {
                    let fk = (fe.addr, fe.port, p.spec.protocol);
                    let list = self.claims.entry(fk).or_default();
                    if let Err(at) = list.binary_search(&me) {
                        list.insert(at, me.clone());
                    }
                    touched.insert(fk);
                }
                specs.insert(me);
            }
        }
        for fk in &touched {
            if let Some(list) = self.claims.get(fk) {
                specs.extend(list.iter().cloned());
            }
        }
        let mut delta = TranslationDelta::default();
        let mut new_ids: HashSet<ServicePortId> = HashSet::new();
        for me in specs {
            let (spec, info, errors) = self.resolve(&me);
            new_ids.insert(spec.id);
            if errors.is_empty() {
                self.conflicts.remove(&me);
            } else {
                self.conflicts.insert(me, errors);
            }
            delta.specs.push(spec);
            delta.info.push(info);
        }
        delta.removed = old_ids
            .into_iter()
            .filter(|id| !new_ids.contains(id))
            .collect();
        delta.removed.sort_unstable();
        delta.removed.dedup();
        Some(delta)
    }

    /// [`update`](Self::update) of an empty assembly (the first state):
    /// every spec is new, and claims arrive in order.
    fn first(
        &mut self,
        parts: impl IntoIterator<Item = (ServiceKey, Option<ServiceTranslation>)>,
    ) -> Option<TranslationDelta> {
        self.parts = parts
            .into_iter()
            .filter_map(|(k, p)| Some((k, p?)))
            .collect();
        if self.parts.is_empty() {
            return None;
        }
        let mut count = 0;
        for (key, part) in &self.parts {
            for (i, p) in part.pending.iter().enumerate() {
                count += 1;
                for fe in &p.frontends {
                    let list = self
                        .claims
                        .entry((fe.addr, fe.port, p.spec.protocol))
                        .or_default();
                    let me = (key.clone(), i);
                    if list.last() != Some(&me) {
                        list.push(me);
                    }
                }
            }
        }
        let mut delta = TranslationDelta {
            specs: Vec::with_capacity(count),
            info: Vec::with_capacity(count),
            ..TranslationDelta::default()
        };
        for (key, part) in &self.parts {
            for i in 0..part.pending.len() {
                let me = (key.clone(), i);
                let (spec, info, errors) = self.resolve(&me);
                if !errors.is_empty() {
                    self.conflicts.insert(me, errors);
                }
                delta.specs.push(spec);
                delta.info.push(info);
            }
        }
        Some(delta)
    }

    /// One spec as [`assemble`] gives it: with the frontends it holds, and
    /// the reports of those another spec holds.
    fn resolve(&self, me: &SpecKey) -> (ServicePortSpec, SpecInfo, Vec<ObjectError>) {
        let p = &self.parts[&me.0].pending[me.1];
        let mut spec = ServicePortSpec {
            frontends: Vec::with_capacity(p.frontends.len()),
            ..p.spec.clone()
        };
        let mut errors = Vec::new();
        for fe in &p.frontends {
            let fk = (fe.addr, fe.port, spec.protocol);
            let Some(first) = self.claims.get(&fk).and_then(|l| l.first()) else {
                continue;
            };
            if first == me {
                if !spec.frontends.contains(&(fe.addr, fe.port)) {
                    spec.frontends.push((fe.addr, fe.port));
                }
                continue;
            }
            let owner = &self.parts[&first.0].pending[first.1].spec.name;
            errors.push(ObjectError {
                file: p.info.file.clone(),
                kind: "services".to_owned(),
                namespace: p.info.namespace.clone(),
                name: p.info.service.clone(),
                field: fe.field.clone(),
                message: duplicate(format!(
                    "{}: already served by {owner}",
                    quoted(&socket(fe.addr, fe.port))
                )),
            });
        }
        (spec, p.info.clone(), errors)
    }

    /// Fills in the errors and skip reasons of the whole state (slices'
    /// reports first, then services', then frontend conflicts: the order
    /// [`assemble`] gives).
    pub fn finish<'a>(
        &self,
        delta: &mut TranslationDelta,
        slices: impl IntoIterator<Item = &'a SliceReport>,
    ) {
        delta.errors.clear();
        delta.skipped.clear();
        for r in slices {
            delta.errors.extend(r.errors.iter().cloned());
            delta.skipped.extend(r.skipped.iter().cloned());
        }
        for s in self.parts.values() {
            delta.errors.extend(s.errors.iter().cloned());
            delta.skipped.extend(s.skipped.iter().cloned());
        }
        for e in self.conflicts.values() {
            delta.errors.extend(e.iter().cloned());
        }
    }
}

/// [`assemble`] of owned parts, moving their specs.
fn assemble_owned(slices: Vec<SliceReport>, services: Vec<ServiceTranslation>) -> Translation {
    let mut out = Translation::default();
    for r in slices {
        out.errors.extend(r.errors);
        out.skipped.extend(r.skipped);
    }
    let mut count = 0;
    let mut pending = Vec::with_capacity(services.len());
    for s in services {
        out.errors.extend(s.errors);
        out.skipped.extend(s.skipped);
        count += s.pending.len();
        pending.push(s.pending);
    }
    let mut claims = Claims::with_capacity(&mut out, count);
    for p in pending.into_iter().flatten() {
        claims.add(p.spec, p.info, &p.frontends);
    }
    out
}

/// Frontends: first claim wins; a later claim is dropped and reported.
struct Claims<'o> {
    out: &'o mut Translation,
    /// Frontend -> index of the spec in `out.specs` that holds it.
    claimed: HashMap<(IpAddr, u16, u8), usize>,
}

impl<'o> Claims<'o> {
    fn with_capacity(out: &'o mut Translation, count: usize) -> Self {
        out.specs.reserve(count);
        out.info.reserve(count);
        Self {
            out,
            claimed: HashMap::with_capacity(count),
        }
    }

    /// Adds `spec` (no frontends yet) with those of `frontends` not
    /// claimed by an earlier spec.
    fn add(&mut self, mut spec: ServicePortSpec, info: SpecInfo, frontends: &[Frontend]) {
        let index = self.out.specs.len();
        for fe in frontends {
            let key = (fe.addr, fe.port, spec.protocol);
            let Some(&i) = self.claimed.get(&key) else {
                self.claimed.insert(key, index);
                spec.frontends.push((fe.addr, fe.port));
                continue;
            };
            let owner = if i == index {
                &spec.name
            } else {
                &self.out.specs[i].name
            };
            if *owner == spec.name {
                continue; // listed twice in one spec
            }
            let message = duplicate(format!(
                "{}: already served by {owner}",
                quoted(&socket(fe.addr, fe.port))
            ));
            self.out.errors.push(ObjectError {
                file: info.file.clone(),
                kind: "services".to_owned(),
                namespace: info.namespace.clone(),
                name: info.service.clone(),
                field: fe.field.clone(),
                message,
            });
        }
        self.out.specs.push(spec);
        self.out.info.push(info);
    }
}

/// The (namespace, name) objects are ordered by, without copying either.
fn order_key(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// Translates services and their endpoint slices into service port specs.
/// Objects are taken by reference from wherever they are kept (a
/// [`Manifests`], or one per file), in load order.
pub fn translate<'a>(
    services: impl IntoIterator<Item = &'a Sourced<Service>>,
    slices: impl IntoIterator<Item = &'a Sourced<EndpointSlice>>,
    ctx: &TranslateContext,
    ids: &mut IdAllocator,
) -> Translation {
    // Endpoint slices by (namespace, service), in slice-name order.
    let mut by_service: BTreeMap<(String, String), Vec<ParsedSlice<'a>>> = BTreeMap::new();
    let mut seen_slices: HashSet<(String, String)> = HashSet::new();
    let mut reports: Vec<SliceReport> = Vec::new();
    let mut sorted_slices: Vec<&Sourced<EndpointSlice>> = slices.into_iter().collect();
    sorted_slices.sort_by(|a, b| order_key(&a.object.metadata).cmp(&order_key(&b.object.metadata)));
    for src in sorted_slices {
        let meta = &src.object.metadata;
        let ns = namespace_of(meta.namespace.as_ref());
        let name = meta.name.clone().unwrap_or_default();
        if !seen_slices.insert(key_of(&ns, &name)) {
            reports.push(SliceReport {
                errors: vec![ObjectError {
                    file: src.file.clone(),
                    kind: "endpointslices".to_owned(),
                    namespace: ns.clone(),
                    name: name.clone(),
                    field: "metadata.name".to_owned(),
                    message: duplicate(quoted(&name)),
                }],
                skipped: Vec::new(),
            });
            continue;
        }
        let (report, parsed) = check_slice(&src.object, src.file.as_ref());
        if let Some((service, parsed)) = parsed {
            by_service
                .entry(key_of(&ns, service))
                .or_default()
                .push(parsed);
        }
        reports.push(report);
    }

    let mut sorted: Vec<&Sourced<Service>> = services.into_iter().collect();
    sorted.sort_by(|a, b| order_key(&a.object.metadata).cmp(&order_key(&b.object.metadata)));
    let mut seen_services: HashSet<(String, String)> = HashSet::new();
    let mut parts: Vec<ServiceTranslation> = Vec::with_capacity(sorted.len());
    for src in sorted {
        let ns = namespace_of(src.object.metadata.namespace.as_ref());
        let name = src.object.metadata.name.clone().unwrap_or_default();
        if !seen_services.insert(key_of(&ns, &name)) {
            parts.push(ServiceTranslation {
                errors: vec![ObjectError {
                    file: src.file.clone(),
                    kind: "services".to_owned(),
                    namespace: ns,
                    name: name.clone(),
                    field: "metadata.name".to_owned(),
                    message: duplicate(quoted(&name)),
                }],
                ..ServiceTranslation::default()
            });
            continue;
        }
        let empty = Vec::new();
        let svc_slices: Vec<&ParsedSlice<'_>> = by_service
            .get(&key_of(&ns, &name))
            .unwrap_or(&empty)
            .iter()
            .collect();
        parts.push(translate_one(
            &src.object,
            src.file.as_ref(),
            &svc_slices,
            ctx,
            ids,
        ));
    }
    assemble_owned(reports, parts)
}

/// One service with its parsed slices (in slice-name order).
#[allow(clippy::too_many_lines)]
fn translate_one(
    service: &Service,
    file: Option<&PathBuf>,
    svc_slices: &[&ParsedSlice<'_>],
    ctx: &TranslateContext,
    ids: &mut IdAllocator,
) -> ServiceTranslation {
    let mut out = ServiceTranslation::default();
    let ns = namespace_of(service.metadata.namespace.as_ref());
    let name = service.metadata.name.clone().unwrap_or_default();
    let svc = match parse_service(service, file) {
        ServiceOutcome::Serve(svc) => svc,
        ServiceOutcome::Skip(reason) => {
            out.skipped.push((format!("services/{ns}/{name}"), reason));
            return out;
        }
        ServiceOutcome::Invalid(problems) => {
            out.errors
                .extend(problems.0.into_iter().map(|(field, message)| ObjectError {
                    file: file.cloned(),
                    kind: "services".to_owned(),
                    namespace: ns.clone(),
                    name: name.clone(),
                    field,
                    message,
                }));
            return out;
        }
    };
    let pending = &mut out.pending;
    let mut families: Vec<IpFamily> = svc
        .cluster_ips
        .iter()
        .map(|(a, _)| IpFamily::of(*a))
        .collect();
    families.sort_unstable();
    families.dedup();
    let is_local = |e: &Endpoint<'_>| {
        ctx.node_name.is_some() && e.node.is_some() && e.node == ctx.node_name.as_deref()
    };
    for (pi, port) in svc.ports.iter().enumerate() {
        let label = port.name.clone().unwrap_or_else(|| port.port.to_string());
        let base = format!("{ns}/{name}:{label}/{}", port.protocol.as_str());
        for &family in &families {
            let of_family = |list: &[(IpAddr, String)]| -> Vec<Frontend> {
                list.iter()
                    .filter(|(a, _)| IpFamily::of(*a) == family)
                    .map(|(a, f)| Frontend {
                        addr: *a,
                        port: port.port,
                        field: f.clone(),
                    })
                    .collect()
            };
            let cluster_fe = of_family(&svc.cluster_ips);
            let mut external_fe = of_family(&svc.external_ips);
            let lb_fe = of_family(&svc.lb_ips);
            let lb_ips: Vec<IpAddr> = lb_fe.iter().map(|f| f.addr).collect();
            let announceable: Vec<IpAddr> =
                external_fe.iter().chain(&lb_fe).map(|f| f.addr).collect();
            external_fe.extend(lb_fe);
            if let (true, Some(np)) = (svc.node_ports, port.node_port) {
                for &a in ctx
                    .node_addresses
                    .iter()
                    .filter(|a| IpFamily::of(**a) == family)
                {
                    external_fe.push(Frontend {
                        addr: a,
                        port: np,
                        field: format!("spec.ports[{pi}].nodePort"),
                    });
                }
            }
            let eps = collect_endpoints(svc_slices, family, port);
            let cluster_set = topology_filter(svc.topology, ctx.node_zone.as_deref(), &eps)
                .unwrap_or_else(|| usable(&eps, |_| true));
            let local_set = usable(&eps, is_local);
            let pick = |p: TrafficPolicy| match p {
                TrafficPolicy::Cluster => &cluster_set,
                TrafficPolicy::Local => &local_set,
            };
            let family_name = match family {
                IpFamily::V4 => base.clone(),
                IpFamily::V6 => format!("{base}/v6"),
            };
            // A spec whose external frontends keep to local endpoints.
            let external_local = |scope: Scope| {
                svc.etp == TrafficPolicy::Local
                    && match scope {
                        Scope::External => true,
                        Scope::All => svc.itp == TrafficPolicy::Local,
                        Scope::Cluster => false,
                    }
            };
            let mut make = |scope: Scope, frontends: Vec<Frontend>, set: &[(IpAddr, u16)]| {
                let name = match scope {
                    Scope::External => format!("{family_name}/external"),
                    Scope::All | Scope::Cluster => family_name.clone(),
                };
                let lb_ips: Vec<IpAddr> = lb_ips
                    .iter()
                    .copied()
                    .filter(|a| frontends.iter().any(|f| f.addr == *a))
                    .collect();
                let mut announce: Vec<IpAddr> = announceable
                    .iter()
                    .copied()
                    .filter(|a| frontends.iter().any(|f| f.addr == *a))
                    .collect();
                announce.sort_unstable();
                announce.dedup();
                let source_ranges = restrict(&lb_ips, &svc.source_ranges, family);
                let backends = backends(set, ids);
                pending.push(Pending {
                    spec: ServicePortSpec {
                        id: ids.service_port(&name),
                        name,
                        protocol: port.protocol.number(),
                        affinity: svc.affinity_overrides.apply(svc.affinity, ctx.affinity),
                        mode: if external_local(scope) && ctx.mode == ForwardMode::FullNat {
                            // externalTrafficPolicy: Local keeps the
                            // client's address, as kube-proxy never
                            // masquerades it.
                            ForwardMode::Nat
                        } else {
                            ctx.mode
                        },
                        frontends: Vec::new(),
                        maglev_size: Some(maglev_size(backends.len(), ctx.maglev_min_size)),
                        backends,
                        source_ranges,
                    },
                    info: SpecInfo {
                        namespace: svc.namespace.clone(),
                        service: svc.name.clone(),
                        port_name: port.name.clone(),
                        port: port.port,
                        file: svc.file.cloned(),
                        family,
                        scope,
                        internal_traffic_policy: svc.itp,
                        external_traffic_policy: svc.etp,
                        load_balancer_ips: lb_ips,
                        announce,
                        load_balancer_source_ranges: svc.source_ranges.clone(),
                        traffic_distribution: svc.traffic_distribution.clone(),
                        health_check: svc.health_check_node_port.map(|node_port| HealthCheckPort {
                            node_port,
                            local_endpoints: local_set.len(),
                        }),
                    },
                    frontends,
                });
            };
            if external_fe.is_empty() || svc.itp == svc.etp {
                let mut all = cluster_fe;
                all.extend(external_fe);
                make(Scope::All, all, pick(svc.itp));
            } else {
                make(Scope::Cluster, cluster_fe, pick(svc.itp));
                make(Scope::External, external_fe, pick(svc.etp));
            }
        }
    }
    out
}

fn socket(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use limpet_dataplane::maglev::{is_prime, next_prime_at_least};

    #[test]
    fn the_ladder_is_the_smallest_prime_above_each_power_of_two() {
        for (k, &m) in MAGLEV_LADDER.iter().enumerate() {
            assert_eq!(
                next_prime_at_least((1u64 << k) + 1),
                Some(m as u64),
                "2^{k}"
            );
        }
        assert!(MAGLEV_LADDER.contains(&limpet_dataplane::maglev::DEFAULT_TABLE_SIZE));
        assert!(*MAGLEV_LADDER.last().unwrap() >= 100 * limpet_dataplane::maglev::MAX_BACKENDS);
    }

    #[test]
    fn maglev_sizes_are_prime_at_least_100_per_backend_and_step_on_doublings() {
        let min = DEFAULT_MAGLEV_MIN_SIZE;
        assert_eq!(maglev_size(0, min), 1031);
        assert_eq!(maglev_size(10, min), 1031);
        assert_eq!(maglev_size(11, min), 2053);
        assert_eq!(maglev_size(82, min), 8209);
        assert_eq!(maglev_size(83, min), 16411);
        assert_eq!(maglev_size(100, min), 16411);
        assert_eq!(maglev_size(99, min), 16411, "removing 1 of 100 keeps M");
        assert_eq!(maglev_size(655, min), 65537);
        assert_eq!(maglev_size(656, min), 131_101);
        assert_eq!(maglev_size(65535, min), 8_388_617);
        // 65537 for up to 655 backends: DESIGN's default.
        assert_eq!(maglev_size(1, 65537), 65537);
        assert_eq!(maglev_size(655, 65537), 65537);
        // Any minimum is rounded up to the ladder; beyond it, to a prime.
        assert_eq!(maglev_size(1, 1000), 1031);
        assert_eq!(maglev_size(1, 1), 131);
        assert_eq!(maglev_size(1, 10_000_000), 10_000_019);
        let mut switches = Vec::new();
        for n in 1..=1000 {
            let m = maglev_size(n, min);
            assert!(is_prime(m as u64) && m >= 100 * n && m >= min, "{n} -> {m}");
            if n > 1 && m != maglev_size(n - 1, min) {
                switches.push(n);
            }
        }
        assert_eq!(switches, [11, 21, 41, 83, 165, 328, 656]);
    }

    #[test]
    fn service_by_service_assembles_to_the_same_translation() {
        use serde_json::json;
        let svc = |name: &str, ip: &str| -> Service {
            serde_json::from_value(json!({
                "metadata": {"namespace": "ns", "name": name},
                "spec": {"clusterIP": ip, "clusterIPs": [ip],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
            }))
            .unwrap()
        };
        let slice = |name: &str, service: Option<&str>, kind: &str, addr: &str| -> EndpointSlice {
            let mut labels = serde_json::Map::new();
            if let Some(s) = service {
                labels.insert(SERVICE_NAME_LABEL.to_owned(), json!(s));
            }
            serde_json::from_value(json!({
                "metadata": {"namespace": "ns", "name": name, "labels": labels},
                "addressType": kind,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [addr]}]
            }))
            .unwrap()
        };
        let services = [
            svc("b", "10.0.0.2"),
            svc("a", "10.0.0.1"),
            svc("c", "10.0.0.1"), // claims a's frontend
            svc("d", "not-an-ip"),
        ];
        let slices = [
            slice("b-1", Some("b"), "IPv4", "10.1.0.2"),
            slice("a-2", Some("a"), "IPv4", "10.1.0.4"),
            slice("a-1", Some("a"), "IPv4", "10.1.0.1"),
            slice("c-1", Some("c"), "IPv4", "10.1.0.3"),
            slice("bad", Some("a"), "IPv4", "nope"),
            slice("fqdn", Some("b"), "FQDN", "x.example"),
            slice("orphan", None, "IPv4", "10.1.0.9"),
            slice("gone", Some("nosuch"), "IPv4", "10.1.0.8"),
        ];
        let ctx = TranslateContext::default();
        let whole = translate(
            &services
                .iter()
                .cloned()
                .map(Sourced::unfiled)
                .collect::<Vec<_>>(),
            &slices
                .iter()
                .cloned()
                .map(Sourced::unfiled)
                .collect::<Vec<_>>(),
            &ctx,
            &mut IdAllocator::new(),
        );
        assert!(!whole.errors.is_empty() && !whole.skipped.is_empty());
        let mut sorted_slices: Vec<&EndpointSlice> = slices.iter().collect();
        sorted_slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let reports: Vec<SliceReport> = sorted_slices.iter().map(|s| slice_report(s)).collect();
        let mut sorted: Vec<&Service> = services.iter().collect();
        sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut ids = IdAllocator::new();
        let parts: Vec<ServiceTranslation> = sorted
            .iter()
            .map(|s| {
                let mine: Vec<&EndpointSlice> = slices
                    .iter()
                    .filter(|x| slice_service(x) == s.metadata.name.as_deref())
                    .collect();
                translate_service(s, &mine, &ctx, &mut ids)
            })
            .collect();
        assert_eq!(assemble(&reports, &parts), whole);
    }
}

#[cfg(test)]
mod assembly_tests {
    use super::*;

    fn service(name: &str, ip: &str, port: i32) -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "default", "name": name},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": port, "protocol": "TCP"}]},
        }))
        .unwrap()
    }

    /// The assembly's full state, as `assemble` would give it.
    fn full(a: &Assembly) -> Translation {
        let parts: Vec<&ServiceTranslation> = a.parts().map(|(_, p)| p).collect();
        assemble(std::iter::empty(), parts)
    }

    /// Applies a delta to `state` and checks it against `assemble`.
    fn step(
        a: &mut Assembly,
        state: &mut Translation,
        changes: Vec<(ServiceKey, Option<ServiceTranslation>)>,
    ) -> TranslationDelta {
        let mut delta = a.update(changes).expect("a change");
        a.finish(&mut delta, std::iter::empty());
        state.apply(delta.clone());
        let want = full(a);
        let by_id = |t: &Translation| {
            t.specs
                .iter()
                .map(|s| (s.id, s.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(by_id(state), by_id(&want));
        assert_eq!(state.errors, want.errors);
        delta
    }

    #[test]
    fn frontend_conflicts_move_with_changes() {
        let ctx = TranslateContext::default();
        let mut ids = IdAllocator::new();
        let mut a = Assembly::new();
        let mut state = Translation::default();
        let key = |n: &str| ("default".to_owned(), n.to_owned());
        let part = |n: &str, ip: &str, port: i32, ids: &mut IdAllocator| {
            Some(translate_service(&service(n, ip, port), &[], &ctx, ids))
        };
        let b = part("b", "198.51.100.1", 80, &mut ids);
        let c = part("c", "198.51.100.2", 80, &mut ids);
        step(&mut a, &mut state, vec![(key("b"), b), (key("c"), c)]);
        assert!(state.errors.is_empty());
        // `a` sorts first and takes b's frontend: b loses it, reported.
        let first = part("a", "198.51.100.1", 80, &mut ids);
        let d = step(&mut a, &mut state, vec![(key("a"), first)]);
        assert_eq!(d.specs.len(), 2, "a, and b that lost its frontend");
        assert_eq!(state.errors.len(), 1);
        assert!(state.errors[0].message.contains("default/a:80/TCP"));
        // Nothing changed: no delta.
        assert!(
            a.update(vec![(key("c"), part("c", "198.51.100.2", 80, &mut ids))])
                .is_none()
        );
        // `a` gone: b has its frontend back.
        let d = step(&mut a, &mut state, vec![(key("a"), None)]);
        assert_eq!(d.removed.len(), 1);
        assert!(state.errors.is_empty());
        assert_eq!(state.specs.len(), 2);
    }
}
