//! The admin API: health, readiness, Prometheus metrics, and the affinity
//! table (list, get, delete, flush) that operators have wanted from
//! `ipvsadm -Lnc` and `/proc/net/xt_recent`. Bound to loopback by default.
//!
//! Tables live on the workers; a request is a [`Command`] sent to every
//! worker and answered at a burst boundary, so serving it takes no lock on
//! the packet path.

use crate::state::Shared;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use crossbeam_channel::{Sender, bounded};
use limpet_dataplane::affinity::BackendId;
use limpet_dataplane::command::{
    AffinityFilter, AffinityRecord, BackendLoad, Command, WorkerReport,
};
use limpet_dataplane::stats::DropReason;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long a worker may take to answer.
const WORKER_TIMEOUT: Duration = Duration::from_secs(2);

/// One affinity entry as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AffinityView {
    pub client: IpAddr,
    pub service: String,
    pub backend: String,
    pub backend_usable: bool,
    /// Its backend is being drained (`limpet drain`): `draining` or
    /// `deadline_passed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_drain: Option<crate::drain::Phase>,
    pub idle_seconds: u32,
    /// `None` when the service port no longer has `ClientIP` affinity.
    pub expires_in_seconds: Option<u32>,
    pub worker: usize,
}

/// The query string of the affinity endpoints.
#[derive(Debug, Deserialize, Default, PartialEq, Eq)]
pub struct FilterQuery {
    pub service: Option<String>,
    pub client: Option<IpAddr>,
}

/// Parses the affinity endpoints' query string from a request URI, as the
/// handlers do (a separate function so the parsing can be fuzzed alone).
pub fn parse_filter_query(uri: &Uri) -> Result<FilterQuery, QueryRejection> {
    Query::try_from_uri(uri).map(|Query(q)| q)
}

/// Sends a command built by `make` to every worker and gathers answers.
fn ask_all<T: Send + 'static>(
    shared: &Shared,
    make: impl Fn(Sender<T>) -> Command,
) -> Result<Vec<T>, String> {
    let mut answers = Vec::with_capacity(shared.workers.len());
    for (i, worker) in shared.workers.iter().enumerate() {
        let (tx, rx) = bounded(1);
        worker
            .send(make(tx))
            .map_err(|_| format!("worker {i} has stopped"))?;
        answers.push(
            rx.recv_timeout(WORKER_TIMEOUT)
                .map_err(|_| format!("worker {i} did not answer within {WORKER_TIMEOUT:?}"))?,
        );
    }
    Ok(answers)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

/// Resolves a service name filter to the ids of its service ports. A name
/// matches exactly, or as `namespace/name` covering every port of it.
fn service_ids(shared: &Shared, name: &str) -> Vec<u32> {
    let state = shared.lock();
    state
        .snapshot
        .ports()
        .iter()
        .filter(|p| {
            let n = &p.spec.name;
            n == name || n.split_once(':').is_some_and(|(svc, _)| svc == name)
        })
        .map(|p| p.spec.id)
        .collect()
}

/// Runs a blocking worker round trip off the async runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("admin task panicked")
}

/// The filters `q` asks for; `Err` names a service that does not exist.
fn filters(shared: &Shared, q: &FilterQuery) -> Result<Vec<AffinityFilter>, String> {
    match &q.service {
        None => Ok(vec![AffinityFilter {
            service: None,
            client: q.client,
        }]),
        Some(name) => {
            let ids = service_ids(shared, name);
            if ids.is_empty() {
                return Err(format!("no service port named {name}"));
            }
            Ok(ids
                .into_iter()
                .map(|id| AffinityFilter {
                    service: Some(id),
                    client: q.client,
                })
                .collect())
        }
    }
}

/// Why a listing failed.
#[derive(Debug)]
pub enum ListError {
    NoService(String),
    Workers(String),
}

/// Lists affinity entries matching `q`, across all workers.
pub fn list_affinity(
    shared: &Shared,
    service: Option<String>,
    client: Option<IpAddr>,
) -> Result<Vec<AffinityView>, ListError> {
    let q = FilterQuery { service, client };
    let filters = filters(shared, &q).map_err(ListError::NoService)?;
    let mut out = Vec::new();
    for filter in filters {
        let per_worker = ask_all(shared, |reply| Command::ListAffinity {
            filter: filter.clone(),
            reply,
        })
        .map_err(ListError::Workers)?;
        let state = shared.lock();
        let now = std::time::Instant::now();
        for (worker, records) in per_worker.into_iter().enumerate() {
            out.extend(records.into_iter().map(|r: AffinityRecord| {
                let backend = state.backends.get(&r.backend);
                AffinityView {
                    client: r.client,
                    service: state
                        .snapshot
                        .by_id(r.service)
                        .map_or_else(|| format!("#{}", r.service), |s| s.spec.name.clone()),
                    backend: backend
                        .map_or_else(|| format!("#{}", r.backend), SocketAddr::to_string),
                    backend_usable: r.backend_usable,
                    backend_drain: backend.and_then(|b| state.drains.of(b.ip(), b.port(), now)),
                    idle_seconds: r.idle,
                    expires_in_seconds: r.expires_in,
                    worker,
                }
            }));
        }
    }
    out.sort_by(|a, b| (a.service.as_str(), a.client).cmp(&(b.service.as_str(), b.client)));
    Ok(out)
}

async fn get_affinity(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let q = match parse_filter_query(&uri) {
        Ok(q) => q,
        Err(rejection) => return rejection.into_response(),
    };
    let result = blocking(move || list_affinity(&shared, q.service, q.client)).await;
    match result {
        Ok(list) => axum::Json(list).into_response(),
        Err(ListError::NoService(e)) => error(StatusCode::NOT_FOUND, e),
        Err(ListError::Workers(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn delete_affinity(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let q = match parse_filter_query(&uri) {
        Ok(q) => q,
        Err(rejection) => return rejection.into_response(),
    };
    if q.client.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "delete needs ?client=ADDRESS (use flush to clear a service)",
        );
    }
    remove(shared, q).await
}

async fn flush_affinity(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let q = match parse_filter_query(&uri) {
        Ok(q) => q,
        Err(rejection) => return rejection.into_response(),
    };
    remove(
        shared,
        FilterQuery {
            service: q.service,
            client: None,
        },
    )
    .await
}

async fn remove(shared: Arc<Shared>, q: FilterQuery) -> Response {
    let filters = match filters(&shared, &q) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::NOT_FOUND, e),
    };
    let result = blocking(move || {
        let mut deleted = 0usize;
        for filter in filters {
            deleted += ask_all(&shared, |reply| Command::DeleteAffinity {
                filter: filter.clone(),
                reply,
            })?
            .into_iter()
            .sum::<usize>();
        }
        Ok::<_, String>(deleted)
    })
    .await;
    match result {
        Ok(deleted) => axum::Json(serde_json::json!({ "deleted": deleted })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.lock();
    if !state.ready {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no configuration published yet\n",
        )
            .into_response()
    } else if !state.source_connected {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the Kubernetes API is out of reach or relisting; serving the last snapshot\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

/// One drain as `GET /v1/drain` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainView {
    pub target: String,
    pub phase: crate::drain::Phase,
    pub started_seconds_ago: u64,
    /// Negative once the deadline has passed.
    pub deadline_in_seconds: i64,
    /// Endpoints: the backends (address and port) it covers now, and what
    /// still points at them, summed over every worker. The node: none.
    pub backends: Vec<String>,
    pub clients_pinned: u64,
    pub connections_open: u64,
}

#[derive(Debug, Deserialize)]
struct DrainQuery {
    target: String,
    /// `300`, `300s`, `5m`; default 300 s.
    deadline: Option<String>,
}

/// Every drain with its progress: asks every worker what still points at
/// the drained backends.
pub fn list_drains(shared: &Shared) -> Result<Vec<DrainView>, String> {
    let now = std::time::Instant::now();
    let (drains, known) = {
        let state = shared.lock();
        let drains: Vec<_> = state.drains.iter().map(|(t, d)| (*t, *d)).collect();
        let known: Vec<(BackendId, SocketAddr)> =
            state.backends.iter().map(|(id, a)| (*id, *a)).collect();
        (drains, known)
    };
    let mut views = Vec::with_capacity(drains.len());
    for (target, drain) in drains {
        let covered: Vec<(BackendId, SocketAddr)> = known
            .iter()
            .filter(|(_, a)| target.covers(a.ip(), a.port()))
            .copied()
            .collect();
        let mut load = BackendLoad::default();
        if !covered.is_empty() {
            let ids: Vec<BackendId> = covered.iter().map(|(id, _)| *id).collect();
            for per_worker in ask_all(shared, |reply| Command::BackendLoad {
                backends: ids.clone(),
                reply,
            })? {
                for l in per_worker {
                    load.add(l);
                }
            }
        }
        let mut backends: Vec<String> = covered.iter().map(|(_, a)| a.to_string()).collect();
        backends.sort();
        let left = if now < drain.deadline {
            i64::try_from(drain.deadline.duration_since(now).as_secs()).unwrap_or(i64::MAX)
        } else {
            -i64::try_from(now.duration_since(drain.deadline).as_secs()).unwrap_or(i64::MAX)
        };
        views.push(DrainView {
            target: target.to_string(),
            phase: crate::drain::Drains::phase(&drain, now),
            started_seconds_ago: now.duration_since(drain.started).as_secs(),
            deadline_in_seconds: left,
            backends,
            clients_pinned: load.pinned_clients,
            connections_open: load.open_connections,
        });
    }
    Ok(views)
}

async fn get_drains(State(shared): State<Arc<Shared>>) -> Response {
    match blocking(move || list_drains(&shared)).await {
        Ok(list) => axum::Json(list).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

fn drain_query(uri: &Uri) -> Result<(crate::drain::DrainTarget, Option<Duration>), Box<Response>> {
    let Query(q): Query<DrainQuery> =
        Query::try_from_uri(uri).map_err(|r| Box::new(r.into_response()))?;
    let target = q.target.parse().map_err(|e: crate::drain::BadTarget| {
        Box::new(error(StatusCode::BAD_REQUEST, e.to_string()))
    })?;
    let deadline = q
        .deadline
        .as_deref()
        .map(crate::drain::parse_duration)
        .transpose()
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e)))?;
    Ok((target, deadline))
}

/// `POST /v1/drain?target=T&deadline=300s`: starts a drain, or moves its
/// deadline.
async fn start_drain(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let (target, deadline) = match drain_query(&uri) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let deadline = deadline.unwrap_or(crate::drain::DEFAULT_DEADLINE);
    shared
        .lock()
        .drains
        .start(target, deadline, std::time::Instant::now());
    tracing::info!(%target, deadline_s = deadline.as_secs(), "drain started");
    axum::Json(serde_json::json!({
        "target": target.to_string(),
        "deadline_in_seconds": deadline.as_secs(),
    }))
    .into_response()
}

/// `DELETE /v1/drain?target=T`: ends a drain.
async fn cancel_drain(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let (target, _) = match drain_query(&uri) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let cancelled = shared.lock().drains.cancel(target);
    if cancelled {
        tracing::info!(%target, "drain cancelled");
        axum::Json(serde_json::json!({ "target": target.to_string(), "cancelled": true }))
            .into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("{target} is not being drained"),
        )
    }
}

/// `GET /v1/status`: readiness, the snapshot, and what is announced.
async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.lock();
    axum::Json(serde_json::json!({
        "ready": state.ready,
        "source_connected": state.source_connected,
        "generation": state.snapshot.generation(),
        "service_ports": state.snapshot.ports().len(),
        "announce": state.announce,
    }))
    .into_response()
}

#[derive(Debug, Serialize)]
struct ServiceView {
    name: String,
    id: u32,
    protocol: u8,
    affinity: String,
    mode: String,
    frontends: Vec<String>,
    backends: Vec<String>,
}

async fn services(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.lock();
    let list: Vec<ServiceView> = state
        .snapshot
        .ports()
        .iter()
        .map(|p| ServiceView {
            name: p.spec.name.clone(),
            id: p.spec.id,
            protocol: p.spec.protocol,
            affinity: format!("{:?}", p.spec.affinity),
            mode: format!("{:?}", p.spec.mode),
            frontends: p
                .spec
                .frontends
                .iter()
                .map(|(a, port)| SocketAddr::new(*a, *port).to_string())
                .collect(),
            backends: p
                .spec
                .backends
                .iter()
                .map(|b| format!("{} ({})", SocketAddr::new(b.addr, b.port), b.mac))
                .collect(),
        })
        .collect();
    axum::Json(serde_json::json!({
        "generation": state.snapshot.generation(),
        "services": list,
        "unresolved_backends": state.unresolved_backends,
        "neighbours": state.neighbours.iter().map(|(ip, mac)| {
            serde_json::json!({"address": ip, "mac": mac.map(|m| m.to_string())})
        }).collect::<Vec<_>>(),
        "reload": {
            "ok": state.reload.loads_ok,
            "failed": state.reload.loads_failed,
            "last_error": state.reload.last_error,
        },
    }))
    .into_response()
}

type Field = (
    &'static str,
    &'static str,
    &'static str,
    fn(&WorkerReport) -> f64,
);
/// Per-worker metrics: name, type, help, and how to read it off a report.
const WORKER_METRICS: [Field; 35] = [
    ("rx_packets_total", "counter", "Packets received.", |r| {
        r.stats.rx_packets as f64
    }),
    ("tx_packets_total", "counter", "Packets sent.", |r| {
        r.stats.tx_packets as f64
    }),
    (
        "flow_hits_total",
        "counter",
        "Packets of known connections forwarded.",
        |r| r.stats.flow_hits as f64,
    ),
    (
        "replies_total",
        "counter",
        "Replies translated back to clients (nat).",
        |r| r.stats.replies as f64,
    ),
    (
        "new_connections_total",
        "counter",
        "New connections balanced.",
        |r| r.stats.new_flows as f64,
    ),
    (
        "affinity_hits_total",
        "counter",
        "New connections sent to a live sticky backend.",
        |r| r.stats.affinity_hits as f64,
    ),
    (
        "affinity_misses_total",
        "counter",
        "New connections of clients without an entry.",
        |r| r.stats.affinity_misses as f64,
    ),
    (
        "affinity_expired_total",
        "counter",
        "Entries found past their timeout and overwritten.",
        |r| r.stats.affinity_expired as f64,
    ),
    (
        "affinity_stale_total",
        "counter",
        "Entries whose backend left the usable set, overwritten.",
        |r| r.stats.affinity_stale as f64,
    ),
    (
        "affinity_evictions_total",
        "counter",
        "Live affinity entries evicted because the table was full.",
        |r| r.stats.affinity_evictions as f64,
    ),
    (
        "affinity_admissions_total",
        "counter",
        "Clients admitted to the affinity table, on probation.",
        |r| r.stats.affinity_admissions as f64,
    ),
    (
        "affinity_promotions_total",
        "counter",
        "Affinity entries promoted from probation to protected by a connection proving its client (TCP: the client's ACK after its SYN; UDP: a second datagram).",
        |r| r.stats.affinity_promotions as f64,
    ),
    (
        "affinity_probation_evictions_total",
        "counter",
        "Of affinity_evictions_total, entries taken from probation.",
        |r| r.stats.affinity_probation_evictions as f64,
    ),
    (
        "affinity_protected_evictions_total",
        "counter",
        "Of affinity_evictions_total, protected entries, taken only when probation was empty.",
        |r| (r.stats.affinity_evictions - r.stats.affinity_probation_evictions) as f64,
    ),
    (
        "affinity_proofs_unpromoted_total",
        "counter",
        "Connections that proved their client after its entry had left probation unpromoted (pushed out or expired).",
        |r| r.stats.affinity_proofs_unpromoted as f64,
    ),
    (
        "affinity_probation_entries",
        "gauge",
        "Live affinity entries on probation (the rest are protected).",
        |r| r.affinity_on_probation as f64,
    ),
    (
        "udp_repicks_total",
        "counter",
        "UDP flows re-balanced because their backend left the usable set.",
        |r| r.stats.udp_repicks as f64,
    ),
    (
        "checksums_completed_total",
        "counter",
        "TCP/UDP checksums completed in software because a local sender left them to offload.",
        |r| r.stats.checksums_completed as f64,
    ),
    (
        "tunnelled_packets_total",
        "counter",
        "Packets sent to their endpoint encapsulated (--forward ipip / gue).",
        |r| r.stats.tunnelled as f64,
    ),
    (
        "flow_evictions_total",
        "counter",
        "Live connections evicted because the table was full.",
        |r| r.stats.flow_evictions as f64,
    ),
    (
        "slow_path_total",
        "counter",
        "Packets handed to the slow path.",
        |r| r.stats.slow_path as f64,
    ),
    (
        "no_service_total",
        "counter",
        "Packets to no service address and port.",
        |r| r.stats.no_service as f64,
    ),
    (
        "icmp_errors_to_client_total",
        "counter",
        "ICMP errors about packets sent to a backend, translated to the client.",
        |r| r.stats.icmp.errors_to_client as f64,
    ),
    (
        "icmp_errors_to_backend_total",
        "counter",
        "ICMP errors about replies, translated to the backend.",
        |r| r.stats.icmp.errors_to_backend as f64,
    ),
    (
        "icmp_echo_replies_total",
        "counter",
        "Echo requests to limpet's or service addresses answered.",
        |r| r.stats.icmp.echo_replies as f64,
    ),
    (
        "icmp_rejects_total",
        "counter",
        "Port unreachables sent for a service port without endpoints or an undefined port.",
        |r| r.stats.icmp.rejects as f64,
    ),
    (
        "icmp_rejects_rate_limited_total",
        "counter",
        "Port unreachables held back by the per-worker rate limit (the packet was dropped).",
        |r| r.stats.icmp.rejects_rate_limited as f64,
    ),
    (
        "icmp_rejects_unsent_total",
        "counter",
        "Port unreachables not sent: no room in the buffer, or a source that may not be answered.",
        |r| r.stats.icmp.rejects_unsent as f64,
    ),
    (
        "icmp_too_big_total",
        "counter",
        "Fragmentation needed / packet too big sent to clients whose packets would not fit the tunnel once wrapped.",
        |r| r.stats.icmp.too_big as f64,
    ),
    ("affinity_entries", "gauge", "Live affinity entries.", |r| {
        r.affinity_entries as f64
    }),
    ("flow_entries", "gauge", "Live connections.", |r| {
        r.flow_entries as f64
    }),
    (
        "busy_polls_total",
        "counter",
        "Polls that received at least one packet (bursts).",
        |r| r.stats.busy_polls as f64,
    ),
    (
        "busy_ns_total",
        "counter",
        "Nanoseconds spent in polls that received packets; per packet over an interval: its increase over rx_packets_total's.",
        |r| r.stats.busy_ns as f64,
    ),
    (
        "busy_ns_per_packet",
        "gauge",
        "Busy nanoseconds per received packet (polls that received packets).",
        |r| r.stats.busy_ns_per_packet(),
    ),
    (
        "packets_per_burst",
        "gauge",
        "Mean packets per non-empty burst.",
        |r| r.stats.packets_per_burst(),
    ),
];

/// One metric family in Prometheus text: its HELP and TYPE lines, then a
/// line per `(labels, value)` row.
fn write_metric(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: &mut dyn Iterator<Item = (String, f64)>,
) {
    let _ = writeln!(
        out,
        "# HELP limpet_{name} {help}\n# TYPE limpet_{name} {kind}"
    );
    for (labels, value) in rows {
        let _ = writeln!(out, "limpet_{name}{labels} {value}");
    }
}

/// The I/O backend's per-worker counters and the ports' link state and
/// device counters (DPDK), in the same exposition format.
fn render_io_metrics(
    out: &mut String,
    reports: &[WorkerReport],
    ports: &[crate::state::PortMetrics],
) {
    let mut io = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        for (name, value) in &r.io {
            io.push((
                format!("{{worker=\"{i}\",counter=\"{name}\"}}"),
                *value as f64,
            ));
        }
    }
    if !io.is_empty() {
        write_metric(
            out,
            "io_total",
            "counter",
            "The I/O backend's own counters per worker (DPDK: rx, tx, tx_full, steered_out, steered_in, steer_full, slow_passed, ...).",
            &mut io.into_iter(),
        );
    }
    if !ports.is_empty() {
        let label = |p: &crate::state::PortMetrics| format!("port=\"{}\"", p.name);
        write_metric(
            out,
            "port_link_up",
            "gauge",
            "1 if the port's link is up.",
            &mut ports
                .iter()
                .map(|p| (format!("{{{}}}", label(p)), f64::from(u8::from(p.link_up)))),
        );
        write_metric(
            out,
            "port_link_speed_mbps",
            "gauge",
            "The port's link speed as its driver reports it.",
            &mut ports
                .iter()
                .map(|p| (format!("{{{}}}", label(p)), f64::from(p.speed_mbps))),
        );
        write_metric(
            out,
            "port_xstat",
            "untyped",
            "The port driver's extended statistics (rte_eth_xstats), by name.",
            &mut ports.iter().flat_map(|p| {
                p.xstats
                    .iter()
                    .map(move |(name, v)| (format!("{{{},stat=\"{name}\"}}", label(p)), *v as f64))
            }),
        );
    }
}

/// Prometheus text exposition of every worker's counters.
pub fn render_metrics(shared: &Shared) -> Result<String, String> {
    let reports: Vec<WorkerReport> = ask_all(shared, |reply| Command::Report { reply })?;
    let drains = if shared.lock().drains.is_empty() {
        Vec::new()
    } else {
        list_drains(shared)?
    };
    let state = shared.lock();
    let mut out = String::new();
    let per_worker = |f: &dyn Fn(&WorkerReport) -> f64| -> Vec<(String, f64)> {
        reports
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("{{worker=\"{i}\"}}"), f(r)))
            .collect()
    };
    for (name, kind, help, f) in WORKER_METRICS {
        write_metric(&mut out, name, kind, help, &mut per_worker(&f).into_iter());
    }
    // One table per address family, each as large as its flag says.
    write_metric(
        &mut out,
        "affinity_capacity",
        "gauge",
        "Affinity table capacity per worker and address family (--affinity-capacity).",
        &mut reports.iter().enumerate().flat_map(|(i, r)| {
            [
                ("ipv4", r.affinity_capacity_v4),
                ("ipv6", r.affinity_capacity_v6),
            ]
            .map(|(family, cap)| {
                (
                    format!("{{worker=\"{i}\",family=\"{family}\"}}"),
                    cap as f64,
                )
            })
        }),
    );
    let mut drops = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        for reason in DropReason::ALL {
            drops.push((
                format!("{{worker=\"{i}\",reason=\"{}\"}}", reason.name()),
                r.stats.dropped(reason) as f64,
            ));
        }
    }
    write_metric(
        &mut out,
        "drops_total",
        "counter",
        "Packets dropped, by reason.",
        &mut drops.into_iter(),
    );
    render_control_metrics(&mut out, &state);
    render_drain_metrics(&mut out, &drains);
    render_io_metrics(&mut out, &reports, &state.ports);
    Ok(out)
}

/// The control plane's own state: neighbours, loads, the snapshot,
/// readiness, and what is announced.
fn render_control_metrics(out: &mut String, state: &crate::state::ControlState) {
    let n = state.neighbour_counters;
    write_metric(
        out,
        "neighbour_unresolved",
        "gauge",
        "Backend next hops whose MAC address did not resolve.",
        &mut std::iter::once((String::new(), n.unresolved as f64)),
    );
    write_metric(
        out,
        "neighbour_answers_total",
        "counter",
        "ARP requests and neighbour solicitations answered.",
        &mut std::iter::once((String::new(), (n.arp_answered + n.nd_answered) as f64)),
    );
    write_metric(
        out,
        "config_loads_total",
        "counter",
        "Configuration loads, by result.",
        &mut [
            ("{result=\"ok\"}".to_string(), state.reload.loads_ok as f64),
            (
                "{result=\"refused\"}".to_string(),
                state.reload.loads_failed as f64,
            ),
        ]
        .into_iter(),
    );
    write_metric(
        out,
        "snapshot_generation",
        "gauge",
        "Generation of the snapshot last published.",
        &mut std::iter::once((String::new(), state.snapshot.generation() as f64)),
    );
    write_metric(
        out,
        "ready",
        "gauge",
        "1 once a configuration has been published, while its source is in reach.",
        &mut std::iter::once((
            String::new(),
            if state.ready && state.source_connected {
                1.0
            } else {
                0.0
            },
        )),
    );
    if let Some(a) = &state.announce {
        render_announce_metrics(out, a);
    }
}

/// Each drain's progress (`limpet drain`).
fn render_drain_metrics(out: &mut String, drains: &[DrainView]) {
    if drains.is_empty() {
        return;
    }
    let series = |f: fn(&DrainView) -> f64| {
        drains
            .iter()
            .map(move |d| (format!("{{target=\"{}\"}}", d.target), f(d)))
    };
    write_metric(
        out,
        "drain_clients_pinned",
        "gauge",
        "Sticky clients whose entry still names a drained endpoint.",
        &mut series(|d| d.clients_pinned as f64),
    );
    write_metric(
        out,
        "drain_connections_open",
        "gauge",
        "Open connections to a drained endpoint.",
        &mut series(|d| d.connections_open as f64),
    );
    write_metric(
        out,
        "drain_deadline_seconds",
        "gauge",
        "Seconds to a drain's deadline; negative once it has passed.",
        &mut series(|d| d.deadline_in_seconds as f64),
    );
}

/// What `--announce` offers the tier's routers.
fn render_announce_metrics(out: &mut String, a: &crate::announce::AnnounceStatus) {
    write_metric(
        out,
        "announce_link_up",
        "gauge",
        "1 while the liveness link is up (this node offers its routes), 0 while every route is withdrawn.",
        &mut std::iter::once((String::new(), f64::from(u8::from(a.link_up)))),
    );
    write_metric(
        out,
        "announce_speaker_up",
        "gauge",
        "1 while the BGP speaker answers and took limpet's last routes.",
        &mut std::iter::once((String::new(), f64::from(u8::from(a.speaker_ok)))),
    );
    write_metric(
        out,
        "announce_routes",
        "gauge",
        "Service addresses, by whether they are announced now.",
        &mut [true, false].into_iter().map(|announced| {
            (
                format!("{{announced=\"{announced}\"}}"),
                a.routes.iter().filter(|r| r.announced == announced).count() as f64,
            )
        }),
    );
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    match blocking(move || render_metrics(&shared)).await {
        Ok(text) => ([("content-type", "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The read-only routes: what Prometheus and the kubelet's probes need,
/// and nothing that changes or reveals the tables. `--metrics` serves only
/// these, so it can listen where other pods reach it.
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    read_only().with_state(shared)
}

fn read_only() -> Router<Arc<Shared>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The admin API's routes: the read-only ones, and `/v1` (the services,
/// and the affinity table: client addresses, delete, flush), which with a
/// `token` answers only requests bearing it.
pub fn router(shared: Arc<Shared>, token: Option<Arc<str>>) -> Router {
    let v1 = Router::new()
        .route("/v1/services", get(services))
        .route("/v1/status", get(status))
        .route(
            "/v1/drain",
            get(get_drains).post(start_drain).delete(cancel_drain),
        )
        .route("/v1/affinity", get(get_affinity).delete(delete_affinity))
        .route("/v1/affinity/flush", post(flush_affinity))
        .route_layer(axum::middleware::from_fn_with_state(token, require_token));
    read_only().merge(v1).with_state(shared)
}

/// Passes a request on when no token is configured or it bears
/// `Authorization: Bearer <token>`; 401 otherwise.
async fn require_token(
    State(token): State<Option<Arc<str>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let offered = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if same_secret(offered.trim().as_bytes(), token.as_bytes()) {
        next.run(request).await
    } else {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "this admin API wants `Authorization: Bearer <token>` (limpet affinity --token-file)",
        );
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        response
    }
}

/// Compares without stopping at the first differing byte, so the time a
/// refusal takes says nothing of how much of the token was right.
fn same_secret(offered: &[u8], token: &[u8]) -> bool {
    offered.len() == token.len()
        && offered
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Serves `router` on `listener` (bound by the caller, so a bad address
/// fails at start) until the process ends. Runs its own small runtime on
/// the calling thread.
pub fn serve(listener: std::net::TcpListener, router: Router) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    listener.set_nonblocking(true)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, router).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use limpet_dataplane::clock::ManualClock;
    use limpet_dataplane::io::MemoryIo;
    use limpet_dataplane::pipeline::{Worker, WorkerConfig};
    use limpet_dataplane::snapshot::Snapshot;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// `--affinity-capacity 8192` builds one 8192-entry table per address
    /// family; the metric says 8192 for each, not their sum.
    #[test]
    fn affinity_capacity_is_reported_per_family_as_configured() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let config = WorkerConfig {
            affinity_capacity: 8192,
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
        let text = render_metrics(&Shared::new(vec![tx]));
        stop.store(true, Ordering::Relaxed);
        running.join().unwrap();
        let text = text.unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("limpet_affinity_capacity"))
            .collect();
        assert_eq!(
            lines,
            [
                "limpet_affinity_capacity{worker=\"0\",family=\"ipv4\"} 8192",
                "limpet_affinity_capacity{worker=\"0\",family=\"ipv6\"} 8192",
            ]
        );
        for name in [
            "affinity_admissions_total",
            "affinity_promotions_total",
            "affinity_probation_evictions_total",
            "affinity_protected_evictions_total",
            "affinity_probation_entries",
            "udp_repicks_total",
            "checksums_completed_total",
            "tunnelled_packets_total",
            "icmp_too_big_total",
        ] {
            assert!(
                text.contains(&format!("\nlimpet_{name}{{worker=\"0\"}} 0\n")),
                "{name} missing:\n{text}"
            );
        }
    }

    /// Serves `router` on an ephemeral loopback port; its address.
    fn serving(router: Router) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener, router));
        addr
    }

    fn status(addr: SocketAddr, token: Option<&str>, method: &str, path: &str) -> u16 {
        let api = crate::client::AdminApi {
            addr,
            token: token.map(str::to_owned),
        };
        match crate::client::request(&api, method, path) {
            Ok(_) => 200,
            Err(crate::client::ClientError::Status { status, .. }) => status,
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    /// With a token, `/v1` (client addresses, delete, flush) answers only
    /// requests bearing it; health and metrics stay open, as the kubelet
    /// and Prometheus carry no token.
    #[test]
    fn a_token_guards_v1_and_leaves_health_and_metrics_open() {
        let shared = Arc::new(Shared::new(Vec::new()));
        shared.lock().ready = true;
        let addr = serving(router(Arc::clone(&shared), Some("s3cret".into())));
        for (method, path) in [
            ("GET", "/v1/services"),
            ("GET", "/v1/affinity"),
            ("DELETE", "/v1/affinity?client=192.0.2.1"),
            ("POST", "/v1/affinity/flush"),
        ] {
            assert_eq!(status(addr, None, method, path), 401, "{method} {path}");
            assert_eq!(
                status(addr, Some("s3cre"), method, path),
                401,
                "{method} {path}"
            );
            assert_eq!(
                status(addr, Some("s3cret!"), method, path),
                401,
                "{method} {path}"
            );
            assert_eq!(
                status(addr, Some("s3cret"), method, path),
                200,
                "{method} {path}"
            );
        }
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(status(addr, None, "GET", path), 200, "{path}");
        }
        // Without a token, as on loopback by default, nothing is asked.
        let open = serving(router(shared, None));
        assert_eq!(status(open, None, "POST", "/v1/affinity/flush"), 200);
    }

    /// `--metrics` serves health and metrics only: nothing there lists or
    /// changes the tables.
    #[test]
    fn the_metrics_listener_is_read_only() {
        let shared = Arc::new(Shared::new(Vec::new()));
        shared.lock().ready = true;
        let addr = serving(metrics_router(shared));
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(status(addr, None, "GET", path), 200, "{path}");
        }
        for (method, path) in [
            ("GET", "/v1/services"),
            ("GET", "/v1/affinity"),
            ("DELETE", "/v1/affinity?client=192.0.2.1"),
            ("POST", "/v1/affinity/flush"),
        ] {
            assert_eq!(status(addr, None, method, path), 404, "{method} {path}");
        }
    }
}
