//! A fake Kubernetes API server for tests: real HTTP/1.1 on 127.0.0.1 (a
//! random port), speaking the API's wire format for the two resources limpet
//! watches, so that tests drive limpet's real kube-rs client.
//!
//! Served:
//!
//! - `GET /api/v1/services` and `GET /apis/discovery.k8s.io/v1/endpointslices`
//!   (all namespaces): lists (`ServiceList` / `EndpointSliceList`, items
//!   without `kind`/`apiVersion` as the real server sends them) with
//!   `metadata.resourceVersion`, `labelSelector` (`key`, `!key`, `key=value`,
//!   `key==value`, `key!=value`, comma-separated), `limit` and `continue`
//!   (pages of a snapshot taken by the first page);
//! - the same paths with `watch=true&resourceVersion=N`: a chunked stream of
//!   newline-delimited `{"type": ..., "object": ...}` events after `N`, then
//!   live ones; `allowWatchBookmarks=true` enables `BOOKMARK`s
//!   ([`FakeApiServer::bookmark`]); `timeoutSeconds` ends the stream. Objects
//!   moving into or out of the selector are sent as `ADDED` / `DELETED`, as
//!   the real server's watch cache does;
//! - `/api/v1/nodes` likewise (cluster-scoped: stored under namespace
//!   `default`), and `GET /api/v1/nodes/NAME` (the object, or a 404
//!   `Status`);
//! - `GET /version`; anything else is a 404 `Status`.
//!
//! Every write bumps one cluster-wide, monotonically increasing
//! `resourceVersion` (set on the object) and appends to an event log. Tests
//! control it: objects are created, replaced and deleted; the history can be
//! compacted ([`FakeApiServer::compact`]), after which a watch from an older
//! version gets an `ERROR` event with a `410 Gone` `Status` ("too old
//! resource version") and ends, as with the real server; watches can be
//! dropped; lists can be held back; every watch can be answered with
//! `410 Gone` at once for as long as a test says ([`FakeApiServer::gone_storm`]);
//! and the server can go down (its port closed, every connection cut) and
//! come back up on the same port.
#![allow(dead_code)] // each test binary uses a part

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// The resources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::Services | Resource::Nodes => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Resource::Services => "/api/v1/services",
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
            Resource::Nodes => "/api/v1/nodes",
        }
    }

    /// The resource of a JSON object, by its `kind`.
    pub fn of(object: &Value) -> Resource {
        match object["kind"].as_str() {
            Some("Service") => Resource::Services,
            Some("EndpointSlice") => Resource::EndpointSlices,
            Some("Node") => Resource::Nodes,
            other => panic!("fake apiserver: unsupported kind {other:?}"),
        }
    }
}

type Key = (String, String);

fn key_of(object: &Value) -> Key {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("default").to_owned(),
        meta["name"].as_str().expect("metadata.name").to_owned(),
    )
}

#[derive(Debug, Clone)]
struct LogEntry {
    rv: u64,
    resource: Resource,
    kind: &'static str,
    /// The object before the change (for selector transitions).
    prev: Option<Value>,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: HashMap<Resource, BTreeMap<Key, Value>>,
    log: Vec<LogEntry>,
    /// Watches from a version below this get `410 Gone`.
    compacted: u64,
    /// Bumped to end every open watch.
    drop_generation: u64,
    /// Bumped to send a bookmark on every open watch that asked for them.
    bookmark_generation: u64,
    /// Lists of these resources wait until released.
    held: HashMap<Resource, bool>,
    /// Every watch, open or new, is answered with `410 Gone`.
    gone_storm: bool,
    /// `410 Gone` events sent.
    gone_sent: usize,
    /// Pages of list snapshots: token -> (resource version, items, offset).
    pages: HashMap<String, (u64, Vec<Value>, usize)>,
    next_token: u64,
    requests: Vec<String>,
}

struct Inner {
    state: Mutex<State>,
    /// Bumped after every change a watch or a held list may care about.
    tick: watch::Sender<u64>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake(&self) {
        self.tick.send_modify(|t| *t += 1);
    }
}

/// A running fake API server; see the module documentation.
pub struct FakeApiServer {
    inner: Arc<Inner>,
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    accept: Option<tokio::task::JoinHandle<()>>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl FakeApiServer {
    pub fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fake apiserver runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (tick, _) = watch::channel(0);
        let mut server = Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                tick,
            }),
            rt,
            addr,
            accept: None,
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let inner = self.inner.clone();
        let connections = self.connections.clone();
        self.accept = Some(self.rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // As Go's net package (the real API server) does: a watch
                // event is not held back for the previous one's ACK.
                let _ = stream.set_nodelay(true);
                let inner = inner.clone();
                let task = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let inner = inner.clone();
                        async move { Ok::<_, Infallible>(handle(inner, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                let mut conns = connections
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                conns.retain(|c| !c.is_finished());
                conns.push(task.abort_handle());
            }
        }));
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server (no authentication) into `dir`
    /// and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    // ---- objects -------------------------------------------------------

    /// Creates or replaces an object (by `kind`, namespace and name); returns
    /// its new resource version.
    pub fn apply(&self, object: Value) -> u64 {
        let rv = self.apply_quiet(object);
        self.inner.wake();
        rv
    }

    fn apply_quiet(&self, mut object: Value) -> u64 {
        let resource = Resource::of(&object);
        let key = key_of(&object);
        let mut st = self.inner.lock();
        st.rv += 1;
        let rv = st.rv;
        let meta = object["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.entry("namespace").or_insert(json!("default"));
        let objects = st.objects.entry(resource).or_default();
        let prev = objects.get(&key).cloned();
        let uid = prev
            .as_ref()
            .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("00000000-0000-4000-8000-{rv:012}"));
        object["metadata"]["uid"] = json!(uid);
        objects.insert(key, object.clone());
        let kind = if prev.is_some() { "MODIFIED" } else { "ADDED" };
        st.log.push(LogEntry {
            rv,
            resource,
            kind,
            prev,
            object,
        });
        rv
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let existed = self.delete_quiet(resource, namespace, name);
        self.inner.wake();
        existed
    }

    fn delete_quiet(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let mut st = self.inner.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let Some(mut object) = st.objects.entry(resource).or_default().remove(&key) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.log.push(LogEntry {
            rv,
            resource,
            kind: "DELETED",
            prev: None,
            object,
        });
        true
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }

    // ---- failures ------------------------------------------------------

    /// Forgets the history up to now: watches from an older version (open
    /// ones included) get `410 Gone` and end.
    pub fn compact(&self) {
        {
            let mut st = self.inner.lock();
            st.compacted = st.rv;
            st.log.clear();
        }
        self.inner.wake();
    }

    /// Applies `change` while no watch can see it, then compacts: every open
    /// watch gets `410 Gone` without having seen the change, so clients only
    /// learn of it by relisting (a watcher that fell too far behind).
    pub fn change_unseen(&self, change: impl FnOnce(&UnseenChanges<'_>)) {
        change(&UnseenChanges(self));
        self.compact();
    }

    /// While `on`, every watch (those open included) gets `410 Gone` at
    /// once, whatever its resource version: a server whose watch cache
    /// cannot serve anyone (restarting, or compacting faster than clients
    /// relist). Lists are answered as usual.
    pub fn gone_storm(&self, on: bool) {
        self.inner.lock().gone_storm = on;
        self.inner.wake();
    }

    /// How many `410 Gone` events watches were sent.
    pub fn gone_sent(&self) -> usize {
        self.inner.lock().gone_sent
    }

    /// Ends every open watch cleanly (as a watch timeout does).
    pub fn drop_watches(&self) {
        self.inner.lock().drop_generation += 1;
        self.inner.wake();
    }

    /// Sends a `BOOKMARK` at the current resource version on every open
    /// watch that allowed them.
    pub fn bookmark(&self) {
        self.inner.lock().bookmark_generation += 1;
        self.inner.wake();
    }

    /// Lists of `resource` wait until [`release_lists`](Self::release_lists).
    pub fn hold_lists(&self, resource: Resource) {
        self.inner.lock().held.insert(resource, true);
        self.inner.wake();
    }

    pub fn release_lists(&self, resource: Resource) {
        self.inner.lock().held.insert(resource, false);
        self.inner.wake();
    }

    /// Stops accepting (the port is closed: connection refused) and cuts
    /// every open connection.
    pub fn down(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = self.rt.block_on(accept);
        }
        let conns: Vec<AbortHandle> = std::mem::take(
            &mut *self
                .connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for c in conns {
            c.abort();
        }
    }

    /// Listens again on the same port.
    pub fn up(&mut self) {
        assert!(self.accept.is_none(), "already up");
        let listener = (0..100)
            .find_map(|_| {
                let l = self.rt.block_on(tokio::net::TcpListener::bind(self.addr));
                if l.is_err() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                l.ok()
            })
            .expect("rebind the fake apiserver's port");
        self.serve(listener);
    }

    // ---- inspection ----------------------------------------------------

    /// Every request received, as `GET /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().requests.clone()
    }

    /// How many list (not watch) requests `resource` received.
    pub fn list_count(&self, resource: Resource) -> usize {
        self.requests_for(resource, false)
    }

    /// How many watch requests `resource` received.
    pub fn watch_count(&self, resource: Resource) -> usize {
        self.requests_for(resource, true)
    }

    fn requests_for(&self, resource: Resource, watch: bool) -> usize {
        self.inner
            .lock()
            .requests
            .iter()
            .filter(|r| {
                let path = r.trim_start_matches("GET ");
                let (p, q) = path.split_once('?').unwrap_or((path, ""));
                p == resource.path() && q.split('&').any(|kv| kv == "watch=true") == watch
            })
            .count()
    }
}

/// Writes made by [`FakeApiServer::change_unseen`].
pub struct UnseenChanges<'a>(&'a FakeApiServer);

impl UnseenChanges<'_> {
    pub fn apply(&self, object: Value) -> u64 {
        self.0.apply_quiet(object)
    }

    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        self.0.delete_quiet(resource, namespace, name)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.down();
    }
}

// ---- label selectors ---------------------------------------------------

#[derive(Debug, Clone)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
}

fn parse_selector(s: &str) -> Result<Vec<Requirement>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if let Some(k) = t.strip_prefix('!') {
                Ok(Requirement::NotExists(k.trim().to_owned()))
            } else if let Some((k, v)) = t.split_once("!=") {
                Ok(Requirement::NotEquals(
                    k.trim().to_owned(),
                    v.trim().to_owned(),
                ))
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Ok(Requirement::Equals(
                    k.trim().to_owned(),
                    v.trim().to_owned(),
                ))
            } else if t.contains(' ') || t.contains('(') {
                Err(format!("unsupported selector term {t:?}"))
            } else {
                Ok(Requirement::Exists(t.to_owned()))
            }
        })
        .collect()
}

fn matches(selector: &[Requirement], object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    selector.iter().all(|r| match r {
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::NotExists(k) => get(k).is_none(),
        Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
        Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
    })
}

// ---- HTTP --------------------------------------------------------------

type Body = BoxBody<Bytes, Infallible>;

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("response")
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn error_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_object(code.as_u16(), reason, message))
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    inner.lock().requests.push(format!(
        "{} {}",
        req.method(),
        req.uri()
            .path_and_query()
            .map_or(path.as_str(), |p| p.as_str())
    ));
    if req.method() != hyper::Method::GET {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake apiserver only serves GET",
        );
    }
    if path == "/version" {
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-fake", "platform": "linux/amd64"}),
        );
    }
    if let Some(name) = path.strip_prefix("/api/v1/nodes/") {
        let node = inner
            .lock()
            .objects
            .get(&Resource::Nodes)
            .and_then(|m| m.get(&("default".to_owned(), name.to_owned())))
            .cloned();
        return match node {
            Some(n) => json_response(StatusCode::OK, &with_type(Resource::Nodes, &n)),
            None => error_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("nodes \"{name}\" not found"),
            ),
        };
    }
    let resource = match path.as_str() {
        "/api/v1/services" => Resource::Services,
        "/api/v1/nodes" => Resource::Nodes,
        "/apis/discovery.k8s.io/v1/endpointslices" => Resource::EndpointSlices,
        _ => {
            return error_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("the server could not find the requested resource ({path})"),
            );
        }
    };
    let selector = match parse_selector(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    if query.get("watch").map(String::as_str) == Some("true") {
        watch_response(inner, resource, selector, &query)
    } else {
        list_response(&inner, resource, &selector, &query).await
    }
}

async fn list_response(
    inner: &Arc<Inner>,
    resource: Resource,
    selector: &[Requirement],
    query: &HashMap<String, String>,
) -> Response<Body> {
    let mut tick = inner.tick.subscribe();
    while inner.lock().held.get(&resource).copied().unwrap_or(false) {
        if tick.changed().await.is_err() {
            break;
        }
    }
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0);
    let mut st = inner.lock();
    let (rv, items, offset) = if let Some(token) = query.get("continue").filter(|t| !t.is_empty()) {
        match st.pages.remove(token) {
            Some(page) => page,
            None => {
                return error_response(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
        }
    } else {
        let items: Vec<Value> = st
            .objects
            .get(&resource)
            .map(|m| {
                m.values()
                    .filter(|o| matches(selector, o))
                    .map(|o| {
                        // List items carry no kind/apiVersion on the wire.
                        let mut o = o.clone();
                        if let Some(m) = o.as_object_mut() {
                            m.remove("kind");
                            m.remove("apiVersion");
                        }
                        o
                    })
                    .collect()
            })
            .unwrap_or_default();
        (st.rv, items, 0)
    };
    let end = limit.map_or(items.len(), |l| (offset + l).min(items.len()));
    let page: Vec<Value> = items[offset..end].to_vec();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < items.len() {
        st.next_token += 1;
        let token = format!("page-{}", st.next_token);
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(items.len() - end);
        st.pages.insert(token, (rv, items, end));
    }
    drop(st);
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", resource.kind()),
            "apiVersion": resource.api_version(),
            "metadata": metadata,
            "items": page,
        }),
    )
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn with_type(resource: Resource, object: &Value) -> Value {
    let mut o = object.clone();
    o["kind"] = json!(resource.kind());
    o["apiVersion"] = json!(resource.api_version());
    o
}

fn watch_response(
    inner: Arc<Inner>,
    resource: Resource,
    selector: Vec<Requirement>,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let from: u64 = match query.get("resourceVersion").map(String::as_str) {
        // "" or "0": start at the current state (the real server would
        // first send it as ADDED events; kube-rs never asks for that).
        None | Some("" | "0") => inner.lock().rv,
        Some(v) => match v.parse() {
            Ok(v) => v,
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resource version {v:?}"),
                );
            }
        },
    };
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (tx, rx) = futures::channel::mpsc::channel::<Bytes>(64);
    tokio::spawn(watch_stream(
        inner, resource, selector, from, bookmarks, timeout, tx,
    ));
    let body = StreamBody::new(rx.map(|b| Ok::<_, Infallible>(Frame::data(b))));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .expect("response")
}

async fn watch_stream(
    inner: Arc<Inner>,
    resource: Resource,
    selector: Vec<Requirement>,
    mut cursor: u64,
    bookmarks: bool,
    timeout: Option<Duration>,
    mut tx: futures::channel::mpsc::Sender<Bytes>,
) {
    use futures::SinkExt;
    let mut tick = inner.tick.subscribe();
    let (drop_gen, mut bookmark_gen) = {
        let st = inner.lock();
        (st.drop_generation, st.bookmark_generation)
    };
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let mut lines = Vec::new();
        let mut end = false;
        {
            let mut st = inner.lock();
            if st.drop_generation != drop_gen {
                return;
            }
            if cursor < st.compacted || st.gone_storm {
                st.gone_sent += 1;
                let status = status_object(
                    410,
                    "Expired",
                    &format!("too old resource version: {cursor} ({})", st.compacted),
                );
                lines.push(event_line("ERROR", &status));
                end = true;
            } else {
                for e in st
                    .log
                    .iter()
                    .filter(|e| e.rv > cursor && e.resource == resource)
                {
                    let now = matches(&selector, &e.object);
                    let before = e.prev.as_ref().is_some_and(|p| matches(&selector, p));
                    // The real server's watch cache: an object leaving the
                    // selector is DELETED for this watch, one entering it
                    // ADDED.
                    let kind = match (e.kind, before, now) {
                        ("DELETED", _, true) | ("MODIFIED", true, false) => Some("DELETED"),
                        ("ADDED", _, true) | ("MODIFIED", false, true) => Some("ADDED"),
                        ("MODIFIED", true, true) => Some("MODIFIED"),
                        _ => None,
                    };
                    if let Some(kind) = kind {
                        lines.push(event_line(kind, &with_type(resource, &e.object)));
                    }
                }
                cursor = st.rv;
                if bookmarks && st.bookmark_generation != bookmark_gen {
                    bookmark_gen = st.bookmark_generation;
                    lines.push(event_line(
                        "BOOKMARK",
                        &json!({
                            "kind": resource.kind(),
                            "apiVersion": resource.api_version(),
                            "metadata": {"resourceVersion": st.rv.to_string()},
                        }),
                    ));
                }
            }
        }
        for line in lines {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if end {
            return;
        }
        let wait = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = tick.changed() => if changed.is_err() { return },
            () = wait => return,
        }
    }
}

// ---- objects for tests -------------------------------------------------

/// A `ClusterIP` service with TCP ports (name, port); `affinity` is
/// `Some(timeoutSeconds)` for `ClientIP`.
pub fn service(
    ns: &str,
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, u16)],
    affinity: Option<i64>,
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP", "targetPort": p}))
        .collect();
    let mut spec = json!({
        "type": "ClusterIP",
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "ports": ports,
        "sessionAffinity": "None",
    });
    if let Some(t) = affinity {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
    }
    json!({
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    })
}

/// An IPv4 `EndpointSlice` of `service` with ready endpoints on one TCP
/// port (name, number).
pub fn slice(ns: &str, name: &str, service: &str, port: (&str, u16), addrs: &[&str]) -> Value {
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "namespace": ns,
            "name": name,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": port.0, "port": port.1, "protocol": "TCP"}],
    })
}

/// A `Node` with `(type, address)` status addresses and, if given, its
/// `topology.kubernetes.io/zone` label.
pub fn node(name: &str, addresses: &[(&str, &str)], zone: Option<&str>) -> Value {
    let addresses: Vec<Value> = addresses
        .iter()
        .map(|(t, a)| json!({"type": t, "address": a}))
        .collect();
    let mut labels = json!({"kubernetes.io/hostname": name});
    if let Some(z) = zone {
        labels["topology.kubernetes.io/zone"] = json!(z);
    }
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": labels},
        "status": {"addresses": addresses},
    })
}
