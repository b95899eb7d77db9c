//! The admin API's request handling: `admin::parse_filter_query` (the
//! affinity endpoints' query parsing) on its own, and whole requests
//! through `admin::router`, answered by a real worker (its affinity table
//! filled by real SYNs) behind the command channel. Checked:
//! - the parser accepts exactly what its query says: a `client` it
//!   returns is the address the query carries, a `service` is one of its
//!   values, and a query it refuses has a `client` that is no address or
//!   a repeated key;
//! - each route answers with the status its inputs call for (never a
//!   500), bodies are what they claim (JSON, Prometheus text), and listed
//!   entries match the filter asked for.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use axum::body::Body;
use crossbeam_channel::{Receiver, Sender, unbounded};
use http::{Method, Request, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;
use limpet_control::admin::{self, FilterQuery};
use limpet_control::state::Shared;
use limpet_dataplane::clock::ManualClock;
use limpet_dataplane::command::Command;
use limpet_dataplane::io::MemoryIo;
use limpet_dataplane::pipeline::{Worker, WorkerConfig};
use limpet_dataplane::wire::MacAddr;
use limpet_fuzz::services::{CLIENT_MACS, CLIENTS4, CLIENTS6, LIMPET_MAC, VIP4, VIP6, snapshots};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

enum Msg {
    Command(Command),
    Refill,
}

/// A SYN from `client:port` to `vip:80`, checksums right.
fn syn(client: IpAddr, vip: IpAddr, port: u16) -> Vec<u8> {
    let desc = limpet_fuzz::frames::PacketDesc {
        v6: client.is_ipv6(),
        vlan: None,
        src_mac: (0, CLIENT_MACS[0]),
        flow: limpet_fuzz::frames::Flow::Any {
            src: octets16(client),
            dst: octets16(vip),
        },
        src_port: Some(port),
        dst_port: Some(80),
        ttl: 64,
        ip: limpet_fuzz::frames::IpExtras::Plain,
        transport: limpet_fuzz::frames::Transport::Tcp {
            flags: limpet_fuzz::frames::TcpFlags::Syn,
            seq: 1,
            ack: 0,
            window: 1024,
            options: Vec::new(),
        },
        payload_len: 0,
        pad_to_min: true,
        mutation: limpet_fuzz::frames::Mutation::None,
        offloaded: false,
    };
    desc.build()
}

fn octets16(a: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

/// Runs the worker: each command is passed to it and answered by one poll,
/// so the thread sleeps on the channel instead of spinning.
fn worker_thread(msgs: Receiver<Msg>) {
    let (tx, rx) = unbounded();
    let config = WorkerConfig {
        mac: MacAddr(LIMPET_MAC),
        flow_capacity: 64,
        affinity_capacity: 64,
        ..WorkerConfig::default()
    };
    let mut worker = Worker::new(
        MemoryIo::new(32),
        ManualClock::new(1000),
        config,
        Arc::clone(&snapshots()[0]),
    )
    .unwrap()
    .with_commands(rx);
    let mut port = 1024u16;
    for msg in msgs {
        match msg {
            Msg::Command(cmd) => {
                tx.send(cmd).unwrap();
                worker.poll();
            }
            Msg::Refill => {
                for c in CLIENTS4 {
                    port = port.wrapping_add(1).max(1024);
                    worker
                        .io_mut()
                        .inject(&syn(c.parse().unwrap(), VIP4.parse().unwrap(), port), 0);
                }
                for c in CLIENTS6 {
                    port = port.wrapping_add(1).max(1024);
                    worker
                        .io_mut()
                        .inject(&syn(c.parse().unwrap(), VIP6.parse().unwrap(), port), 0);
                }
                worker.poll();
                worker.io_mut().recycle_sent();
            }
        }
    }
}

struct Admin {
    shared: Arc<Shared>,
    refill: Sender<Msg>,
    runtime: tokio::runtime::Runtime,
}

fn admin() -> &'static Admin {
    static ADMIN: OnceLock<Admin> = OnceLock::new();
    ADMIN.get_or_init(|| {
        let (msgs, commands) = unbounded::<Msg>();
        std::thread::spawn(move || worker_thread(commands));
        // The admin API holds a plain command sender per worker; relay it.
        let (cmd_tx, cmd_rx) = unbounded::<Command>();
        let relay = msgs.clone();
        std::thread::spawn(move || {
            for cmd in cmd_rx {
                if relay.send(Msg::Command(cmd)).is_err() {
                    break;
                }
            }
        });
        let shared = Arc::new(Shared::new(vec![cmd_tx]));
        {
            let mut state = shared.lock();
            state.snapshot = Arc::clone(&snapshots()[0]);
            state.ready = true;
            for port in state.snapshot.ports().to_vec() {
                for b in &port.spec.backends {
                    state
                        .backends
                        .insert(b.id, std::net::SocketAddr::new(b.addr, b.port));
                }
            }
        }
        Admin {
            shared,
            refill: msgs,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    })
}

const PATHS: [&str; 8] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/services",
    "/v1/affinity",
    "/v1/affinity/flush",
    "/v1/affinity/",
    "/nope",
];
const VALUES: [&str; 10] = [
    "default/svc1",
    "default/svc1:80/6",
    "default/svc5",
    "default/nope",
    "198.18.0.1",
    "2001:db8:c1::1",
    "198.18.0.256",
    "",
    "::ffff:198.18.0.1",
    "default",
];

#[derive(Debug, Arbitrary)]
enum Key {
    Service,
    Client,
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Value {
    Pool(u8),
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum QueryDesc {
    None,
    Pairs(Vec<(Key, Value)>),
    Raw(String),
}

#[derive(Debug, Arbitrary)]
struct RequestDesc {
    method: u8,
    path: u8,
    raw_path: Option<String>,
    query: QueryDesc,
}

impl RequestDesc {
    fn method(&self) -> Method {
        match self.method % 5 {
            0 | 1 => Method::GET,
            2 => Method::DELETE,
            3 => Method::POST,
            _ => Method::PUT,
        }
    }

    fn uri(&self) -> String {
        let mut s = match &self.raw_path {
            Some(p) if self.path > 240 => p.clone(),
            _ => PATHS[usize::from(self.path) % PATHS.len()].to_owned(),
        };
        match &self.query {
            QueryDesc::None => {}
            QueryDesc::Pairs(pairs) => {
                let mut ser = form_urlencoded::Serializer::new(String::new());
                for (k, v) in pairs.iter().take(4) {
                    let k = match k {
                        Key::Service => "service",
                        Key::Client => "client",
                        Key::Other(o) => o.as_str(),
                    };
                    let v = match v {
                        Value::Pool(i) => VALUES[usize::from(*i) % VALUES.len()],
                        Value::Any(s) => s.as_str(),
                    };
                    ser.append_pair(k, v);
                }
                s.push('?');
                s.push_str(&ser.finish());
            }
            QueryDesc::Raw(q) => {
                s.push('?');
                s.push_str(q);
            }
        }
        s
    }
}

/// Checks the parser against the query's own pairs.
fn check_parse(uri: &Uri) -> Result<FilterQuery, ()> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let values = |key: &str| -> Vec<&str> {
        pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let (services, clients) = (values("service"), values("client"));
    match admin::parse_filter_query(uri) {
        Ok(q) => {
            match &q.client {
                Some(c) => assert!(
                    clients.iter().any(|v| v.parse::<IpAddr>().ok() == Some(*c)),
                    "client {c} is not what {uri} carries"
                ),
                None => assert!(clients.is_empty(), "{uri}: client dropped"),
            }
            match &q.service {
                Some(s) => assert!(services.contains(&s.as_str()), "{uri}: service {s}"),
                None => assert!(services.is_empty(), "{uri}: service dropped"),
            }
            Ok(q)
        }
        Err(e) => {
            assert!(
                clients.iter().any(|v| v.parse::<IpAddr>().is_err())
                    || clients.len() > 1
                    || services.len() > 1,
                "{uri} refused ({e}) though it is well formed"
            );
            Err(())
        }
    }
}

/// Whether `name` names a service port (exactly, or as `namespace/name`).
fn known_service(name: &str) -> bool {
    snapshots()[0].ports().iter().any(|p| {
        let n = &p.spec.name;
        n == name || n.split_once(':').is_some_and(|(svc, _)| svc == name)
    })
}

fn check_response(
    method: &Method,
    uri: &Uri,
    query: &Result<FilterQuery, ()>,
    status: StatusCode,
    body: &[u8],
) {
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{method} {uri}");
    let path = uri.path();
    let route_methods: &[Method] = match path {
        "/healthz" | "/readyz" | "/metrics" | "/v1/services" => &[Method::GET],
        "/v1/affinity" => &[Method::GET, Method::DELETE],
        "/v1/affinity/flush" => &[Method::POST],
        _ => {
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
            return;
        }
    };
    // HEAD is answered as GET, without a body.
    if *method == Method::HEAD && route_methods.contains(&Method::GET) {
        return;
    }
    if !route_methods.contains(method) {
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        return;
    }
    let text = std::str::from_utf8(body).expect("UTF-8 body");
    match path {
        "/healthz" => assert_eq!((status, text), (StatusCode::OK, "ok\n")),
        "/readyz" => assert_eq!((status, text), (StatusCode::OK, "ready\n")),
        "/metrics" => {
            assert_eq!(status, StatusCode::OK, "{text}");
            for line in text.lines() {
                if line.starts_with("# HELP limpet_") || line.starts_with("# TYPE limpet_") {
                    continue;
                }
                let (name, value) = line.rsplit_once(' ').expect("metric line");
                assert!(name.starts_with("limpet_"), "{line}");
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        "/v1/services" => {
            assert_eq!(status, StatusCode::OK);
            let v: serde_json::Value = serde_json::from_str(text).expect("JSON");
            assert!(v["services"].is_array());
        }
        _ => {
            let Ok(q) = query else {
                // axum's own rejection, in its words (plain text).
                assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {text}");
                assert!(
                    text.starts_with("Failed to deserialize query string"),
                    "{text}"
                );
                return;
            };
            let v: serde_json::Value = serde_json::from_str(text).expect("JSON body");
            if *method == Method::DELETE && q.client.is_none() {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
                return;
            }
            let service = q.service.as_deref();
            if service.is_some_and(|s| !known_service(s)) {
                assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
                assert!(v["error"].is_string());
                return;
            }
            assert_eq!(status, StatusCode::OK, "{method} {uri}: {text}");
            if *method == Method::GET {
                for entry in v.as_array().expect("a list") {
                    let name = entry["service"].as_str().unwrap();
                    if let Some(s) = service {
                        assert!(
                            name == s || name.split_once(':').is_some_and(|(n, _)| n == s),
                            "{uri}: listed {name}"
                        );
                    }
                    if let Some(c) = q.client {
                        assert_eq!(
                            entry["client"].as_str().unwrap().parse::<IpAddr>().unwrap(),
                            c
                        );
                    }
                }
            } else {
                assert!(v["deleted"].is_u64());
            }
        }
    }
}

/// The request an input describes: byte 0 zero, an `arbitrary`
/// [`RequestDesc`]; otherwise a text line `METHOD URI` (the seed corpus).
fn request(data: &[u8]) -> Option<(Method, Uri)> {
    if let Some(rest) = data.strip_prefix(&[0]) {
        let desc = RequestDesc::arbitrary_take_rest(Unstructured::new(rest)).ok()?;
        return Some((desc.method(), desc.uri().parse().ok()?));
    }
    let text = std::str::from_utf8(data).ok()?;
    let (method, uri) = text.trim_end().split_once(' ')?;
    Some((
        Method::from_bytes(method.as_bytes()).ok()?,
        uri.parse().ok()?,
    ))
}

fuzz_target!(|data: &[u8]| {
    let Some((method, uri)) = request(data) else {
        return;
    };
    let query = check_parse(&uri);
    let a = admin();
    a.refill.send(Msg::Refill).unwrap();
    let Ok(request) = Request::builder()
        .method(method.clone())
        .uri(uri.clone())
        .body(Body::empty())
    else {
        return;
    };
    // No token: the guard itself is the admin unit tests' subject.
    let router = admin::router(Arc::clone(&a.shared), None);
    let (status, body) = a.runtime.block_on(async move {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, body)
    });
    check_response(&method, &uri, &query, status, &body);
});
