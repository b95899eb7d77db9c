//! kube-proxy's service health checks: for each Service of `type:
//! LoadBalancer` with `externalTrafficPolicy: Local`, an HTTP server on its
//! `healthCheckNodePort` that answers 200 while this node has a ready local
//! endpoint for it and 503 otherwise, with kube-proxy's JSON body and
//! headers. External load balancers (and a tier's router) probe it to send
//! traffic only to nodes that can serve it without masquerading.
//!
//! The listeners are the host's own sockets (kube-proxy's are too): they
//! answer on the node's addresses wherever the kernel owns them, and on
//! loopback.

use crate::state::Shared;
use crate::translate::{SpecIndex, SpecInfo};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use limpet_dataplane::affinity::ServicePortId;
use limpet_dataplane::snapshot::ServicePortSpec;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{error, info};

/// What one health check port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// Every health check port wanted, by port.
pub type HealthChecks = BTreeMap<u16, ServiceHealth>;

/// The health check each service port contributes, kept by service port
/// so that a change to some ports (a Kubernetes delta) updates only those.
#[derive(Debug, Default)]
pub struct HealthIndex(SpecIndex<(u16, ServiceHealth)>);

/// A service port's health check port and what it reports.
fn health_of(info: &SpecInfo) -> Option<(u16, ServiceHealth)> {
    info.health_check.map(|h| {
        let health = ServiceHealth {
            namespace: info.namespace.clone(),
            name: info.service.clone(),
            local_endpoints: h.local_endpoints,
        };
        (h.node_port, health)
    })
}

impl HealthIndex {
    /// Forgets everything and takes `specs` (`info[i]` describing `specs[i]`).
    pub fn replace(&mut self, specs: &[ServicePortSpec], info: &[SpecInfo]) {
        self.0.replace(specs, info, health_of);
    }

    /// Takes changed `specs` and forgets `removed` ones.
    pub fn apply(
        &mut self,
        specs: &[ServicePortSpec],
        info: &[SpecInfo],
        removed: &[ServicePortId],
    ) {
        self.0.apply(specs, info, removed, health_of);
    }

    /// Each port's report. A Service's ports and families each count their
    /// local endpoints; the port reports the most any of them has (a pod
    /// serving every port, or both families, is one endpoint).
    pub fn checks(&self) -> HealthChecks {
        let mut out = HealthChecks::new();
        for (port, health) in self.0.values() {
            out.entry(*port)
                .and_modify(|h: &mut ServiceHealth| {
                    h.local_endpoints = h.local_endpoints.max(health.local_endpoints);
                })
                .or_insert_with(|| health.clone());
        }
        out
    }
}

/// The running health check listeners; [`update`](Self::update) opens and
/// closes them to match what the configuration asks for.
pub struct HealthServer {
    wanted: watch::Sender<HealthChecks>,
}

impl HealthServer {
    /// Starts the thread that owns the listeners (none until asked).
    pub fn start(shared: Arc<Shared>) -> std::io::Result<Self> {
        let (wanted, rx) = watch::channel(HealthChecks::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("limpet-health".into())
            .spawn(move || rt.block_on(reconcile(rx, shared)))?;
        Ok(Self { wanted })
    }

    /// Serves exactly `checks` from now on.
    pub fn update(&self, checks: HealthChecks) {
        self.wanted.send_if_modified(|current| {
            let changed = *current != checks;
            *current = checks;
            changed
        });
    }
}

/// Opens a listener for each wanted port and closes those no longer
/// wanted, for as long as the sender lives.
async fn reconcile(mut wanted: watch::Receiver<HealthChecks>, shared: Arc<Shared>) {
    let mut serving: BTreeMap<u16, tokio::task::JoinHandle<()>> = BTreeMap::new();
    // Ports that could not be bound, not retried until they are wanted anew.
    let mut refused: BTreeSet<u16> = BTreeSet::new();
    loop {
        let ports: Vec<u16> = wanted.borrow_and_update().keys().copied().collect();
        serving.retain(|port, task| {
            let keep = ports.contains(port);
            if !keep {
                task.abort();
                info!(port, "health check port closed");
            }
            keep
        });
        refused.retain(|port| ports.contains(port));
        for port in ports {
            if serving.contains_key(&port) || refused.contains(&port) {
                continue;
            }
            match bind(port).await {
                Ok(listener) => {
                    let state = Listener {
                        port,
                        wanted: wanted.clone(),
                        shared: Arc::clone(&shared),
                    };
                    let router = axum::Router::new()
                        .fallback(answer)
                        .with_state(Arc::new(state));
                    serving.insert(
                        port,
                        tokio::spawn(async move {
                            let _ = axum::serve(listener, router).await;
                        }),
                    );
                    info!(port, "health check port open");
                }
                Err(e) => {
                    error!(port, "health check port not served: {e}");
                    refused.insert(port);
                }
            }
        }
        if wanted.changed().await.is_err() {
            return;
        }
    }
}

/// Both families where the host has IPv6, IPv4 alone where it does not.
async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
        Err(_) => {
            tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await
        }
    }
}

/// What one health check listener answers from.
struct Listener {
    port: u16,
    wanted: watch::Receiver<HealthChecks>,
    shared: Arc<Shared>,
}

/// kube-proxy's answer, byte for byte: any path, any method.
async fn answer(State(p): State<Arc<Listener>>) -> Response {
    let Some(health) = p.wanted.borrow().get(&p.port).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Healthy once a snapshot is published to the workers.
    let healthy = p.shared.lock().ready;
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        serde_json::Value::from(health.namespace.as_str()),
        serde_json::Value::from(health.name.as_str()),
        health.local_endpoints,
    );
    let status = if health.local_endpoints > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "x-load-balancing-endpoint-weight",
        HeaderValue::from(health.local_endpoints),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::HealthCheckPort;

    fn served(port: u16) -> (u16, String, String) {
        let api = crate::client::AdminApi {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            token: None,
        };
        for _ in 0..100 {
            match crate::client::request_full(&api, "GET", "/") {
                Ok(r) => return r,
                Err(crate::client::ClientError::Connect { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("port {port} never answered");
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn checks(port: u16, local: usize) -> HealthChecks {
        let mut c = HealthChecks::new();
        c.insert(
            port,
            ServiceHealth {
                namespace: "default".into(),
                name: "hostnames".into(),
                local_endpoints: local,
            },
        );
        c
    }

    /// 200 with the count while a local endpoint is ready, 503 with 0
    /// once none is, in kube-proxy's body and headers; the port closes
    /// when the Service stops asking for it.
    #[test]
    fn answers_as_kube_proxy_and_follows_the_configuration() {
        let shared = Arc::new(Shared::new(Vec::new()));
        shared.lock().ready = true;
        let server = HealthServer::start(Arc::clone(&shared)).unwrap();
        let port = free_port();
        server.update(checks(port, 2));
        let (status, head, body) = served(port);
        assert_eq!(status, 200, "{head}\n{body}");
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"hostnames\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(
            head.contains("x-load-balancing-endpoint-weight: 2"),
            "{head}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["localEndpoints"], 2);

        server.update(checks(port, 0));
        let (status, _, body) = served(port);
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("\"localEndpoints\": 0"), "{body}");

        // Not healthy before anything is published, endpoints or not.
        server.update(checks(port, 1));
        shared.lock().ready = false;
        let (status, _, body) = served(port);
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("\"serviceProxyHealthy\": false"), "{body}");

        server.update(HealthChecks::new());
        let closed = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        });
        assert!(closed, "port {port} still open");
    }

    #[test]
    fn a_service_reports_the_most_local_endpoints_of_its_ports() {
        let mut index = HealthIndex::default();
        let spec = |id| ServicePortSpec {
            id,
            name: format!("default/hostnames:{id}/TCP"),
            protocol: 6,
            affinity: limpet_dataplane::snapshot::Affinity::None,
            mode: limpet_dataplane::snapshot::ForwardMode::Nat,
            frontends: Vec::new(),
            backends: Vec::new(),
            maglev_size: None,
            source_ranges: None,
        };
        let info = |local| SpecInfo {
            namespace: "default".into(),
            service: "hostnames".into(),
            port_name: None,
            port: 80,
            file: None,
            family: crate::translate::IpFamily::V4,
            scope: crate::translate::Scope::External,
            internal_traffic_policy: crate::translate::TrafficPolicy::Cluster,
            external_traffic_policy: crate::translate::TrafficPolicy::Local,
            load_balancer_ips: Vec::new(),
            announce: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            traffic_distribution: None,
            health_check: Some(HealthCheckPort {
                node_port: 32000,
                local_endpoints: local,
            }),
        };
        index.replace(&[spec(1), spec(2)], &[info(1), info(3)]);
        assert_eq!(index.checks()[&32000].local_endpoints, 3);
        index.apply(&[], &[], &[2]);
        assert_eq!(index.checks()[&32000].local_endpoints, 1);
        index.apply(
            &[spec(1)],
            &[SpecInfo {
                health_check: None,
                ..info(0)
            }],
            &[],
        );
        assert!(index.checks().is_empty());
    }
}
