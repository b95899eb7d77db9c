//! The Kubernetes source against a fake API server (real HTTP, the API's
//! wire format): limpet's real kube-rs client lists and watches it through a
//! kubeconfig file.

mod fake_apiserver;

use fake_apiserver::{FakeApiServer, Resource, node, service, slice};
use limpet_control::kube_source::{
    BackoffOptions, KubeOptions, KubeSource, KubeUpdate, LABEL_SELECTOR,
};
use limpet_control::translate::{TranslateContext, Translation};
use limpet_dataplane::snapshot::Affinity;
use serde_json::json;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// A source and the state its updates add up to.
struct Running {
    source: KubeSource,
    state: RefCell<Translation>,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Running {
    type Target = KubeSource;

    fn deref(&self) -> &KubeSource {
        &self.source
    }
}

/// An update and the state after it.
#[derive(Debug, Clone)]
struct Step {
    update: KubeUpdate,
    state: Translation,
}

impl Step {
    fn translation(&self) -> &Translation {
        &self.state
    }
}

impl Running {
    /// The next update, applied to the state.
    fn recv(&self, timeout: Duration) -> Option<Step> {
        let update = self.source.updates.recv_timeout(timeout).ok()?;
        let mut state = self.state.borrow_mut();
        match &update {
            KubeUpdate::Synced(t) => *state = t.clone(),
            KubeUpdate::Changed(d) => state.apply(d.clone()),
        }
        Some(Step {
            update,
            state: state.clone(),
        })
    }
}

fn spawn(server: &FakeApiServer) -> Running {
    spawn_with(server, TranslateContext::default())
}

fn spawn_with(server: &FakeApiServer, ctx: TranslateContext) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.write_kubeconfig(dir.path());
    let opts = KubeOptions {
        kubeconfig: Some(kubeconfig),
        ctx,
        backoff: BackoffOptions {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(250),
            factor: 2.0,
            jitter: false,
            reset_after: Duration::from_secs(1),
        },
        node_refresh: Duration::from_millis(100),
    };
    Running {
        source: KubeSource::spawn(opts).expect("spawn the kube source"),
        state: RefCell::new(Translation::default()),
        _dir: dir,
    }
}

/// Spec name -> (affinity, frontends, backends), as strings.
type Summary = BTreeMap<String, (Affinity, Vec<String>, Vec<String>)>;

fn summary(t: &Translation) -> Summary {
    t.specs
        .iter()
        .map(|s| {
            let fe = s
                .frontends
                .iter()
                .map(|(a, p)| format!("{a}:{p}"))
                .collect();
            let mut be: Vec<String> = s
                .backends
                .iter()
                .map(|b| format!("{}:{}", b.addr, b.port))
                .collect();
            be.sort();
            (s.name.clone(), (s.affinity, fe, be))
        })
        .collect()
}

fn spec(
    name: &str,
    affinity: Affinity,
    frontend: &str,
    backends: &[&str],
) -> (String, (Affinity, Vec<String>, Vec<String>)) {
    let mut be: Vec<String> = backends.iter().map(|b| (*b).to_owned()).collect();
    be.sort();
    (name.to_owned(), (affinity, vec![frontend.to_owned()], be))
}

/// Receives updates until the state after one satisfies `pred`; returns
/// it and every step seen (it included).
fn wait_for(src: &Running, what: &str, pred: impl Fn(&Step) -> bool) -> (Step, Vec<Step>) {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match src.recv(left) {
            Some(u) => {
                seen.push(u.clone());
                if pred(&u) {
                    return (u, seen);
                }
            }
            None => panic!(
                "timed out waiting for {what}; seen: {:#?}; last error: {:?}",
                seen.iter()
                    .map(|u| summary(u.translation()))
                    .collect::<Vec<_>>(),
                src.last_error()
            ),
        }
    }
}

fn wait_state(src: &Running, expected: &Summary) -> (Step, Vec<Step>) {
    wait_for(src, &format!("{expected:#?}"), |u| {
        summary(u.translation()) == *expected
    })
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_quiet(src: &Running, d: Duration) {
    if let Some(u) = src.recv(d) {
        panic!("unexpected update: {:#?}", summary(u.translation()));
    }
}

const WEB_FE: &str = "198.51.100.10:80";

fn client_ip(t: u32) -> Affinity {
    Affinity::client_ip(t)
}

/// Creates the `web` Service (`ClientIP`, 600 s) and its slice with one
/// endpoint, 203.0.113.1:8080.
fn apply_web(server: &FakeApiServer) {
    server.apply(service(
        "default",
        "web",
        "198.51.100.10",
        &[("http", 80)],
        Some(600),
    ));
    server.apply(slice(
        "default",
        "web-1",
        "web",
        ("http", 8080),
        &["203.0.113.1"],
    ));
}

/// The `web` Service (`ClientIP`, 600 s) with one endpoint, synced, with both
/// watches open.
fn web_synced(server: &FakeApiServer) -> Running {
    apply_web(server);
    let run = spawn(server);
    wait_state(
        &run,
        &[spec(
            "default/web:http/TCP",
            client_ip(600),
            WEB_FE,
            &["203.0.113.1:8080"],
        )]
        .into(),
    );
    wait_until("both watches open", || {
        server.watch_count(Resource::Services) >= 1
            && server.watch_count(Resource::EndpointSlices) >= 1
    });
    run
}

#[test]
fn initial_sync_waits_for_both_lists_and_honours_the_selector() {
    let server = FakeApiServer::start();
    server.apply(service(
        "default",
        "web",
        "198.51.100.10",
        &[("http", 80)],
        Some(600),
    ));
    server.apply(slice(
        "default",
        "web-abc",
        "web",
        ("http", 8080),
        &["203.0.113.1", "203.0.113.2"],
    ));
    // Another proxy's service and its slice: filtered out by the server.
    let mut other = service("default", "other", "198.51.100.11", &[("http", 80)], None);
    other["metadata"]["labels"] =
        json!({"service.kubernetes.io/service-proxy-name": "someone-else"});
    server.apply(other);
    let mut other_slice = slice(
        "default",
        "other-abc",
        "other",
        ("http", 8080),
        &["203.0.113.9"],
    );
    other_slice["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] =
        json!("someone-else");
    server.apply(other_slice);

    server.hold_lists(Resource::EndpointSlices);
    let run = spawn(&server);
    let src = &run;
    // The service list completes (its watch starts); the slice list hangs.
    wait_until("services are watched and slices listed", || {
        server.watch_count(Resource::Services) >= 1
            && server.list_count(Resource::EndpointSlices) >= 1
    });
    assert_quiet(src, Duration::from_millis(500));
    assert!(!src.synced());
    assert!(src.connected());

    server.release_lists(Resource::EndpointSlices);
    let (u, seen) = wait_for(src, "the first state", |_| true);
    assert_eq!(seen.len(), 1);
    let KubeUpdate::Synced(t) = u.update else {
        panic!("first update is not Synced");
    };
    let expected: Summary = [spec(
        "default/web:http/TCP",
        client_ip(600),
        WEB_FE,
        &["203.0.113.1:8080", "203.0.113.2:8080"],
    )]
    .into();
    assert_eq!(summary(&t), expected);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    // Filtered by the server, not skipped by the translation.
    assert!(t.skipped.is_empty(), "{:?}", t.skipped);
    assert!(src.synced());

    // Every list and watch carried kube-proxy's selector.
    wait_until("the slice watch is open", || {
        server.watch_count(Resource::EndpointSlices) >= 1
    });
    let requests = server.requests();
    let api: Vec<&String> = requests
        .iter()
        .filter(|r| r.contains("/services") || r.contains("/endpointslices"))
        .collect();
    assert!(api.len() >= 4, "{requests:?}");
    for r in api {
        let query = r.split_once('?').map_or("", |(_, q)| q);
        let selector = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "labelSelector")
            .map(|(_, v)| v.into_owned());
        assert_eq!(selector.as_deref(), Some(LABEL_SELECTOR), "{r}");
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn adds_updates_and_deletes_reach_the_output() {
    let server = FakeApiServer::start();
    apply_web(&server);
    let run = spawn(&server);
    let src = &run;
    let (first, _) = wait_state(
        src,
        &[spec(
            "default/web:http/TCP",
            client_ip(600),
            WEB_FE,
            &["203.0.113.1:8080"],
        )]
        .into(),
    );
    assert!(matches!(first.update, KubeUpdate::Synced(_)));
    let web_id = first.translation().specs[0].id;
    let b1_id = first.translation().specs[0].backends[0].id;

    // A backend added to the slice.
    server.apply(slice(
        "default",
        "web-1",
        "web",
        ("http", 8080),
        &["203.0.113.1", "203.0.113.2"],
    ));
    let (u, _) = wait_state(
        src,
        &[spec(
            "default/web:http/TCP",
            client_ip(600),
            WEB_FE,
            &["203.0.113.1:8080", "203.0.113.2:8080"],
        )]
        .into(),
    );
    assert!(matches!(u.update, KubeUpdate::Changed(_)));

    // A second slice.
    server.apply(slice(
        "default",
        "web-2",
        "web",
        ("http", 8080),
        &["203.0.113.3"],
    ));
    wait_state(
        src,
        &[spec(
            "default/web:http/TCP",
            client_ip(600),
            WEB_FE,
            &["203.0.113.1:8080", "203.0.113.2:8080", "203.0.113.3:8080"],
        )]
        .into(),
    );

    // A backend removed.
    server.apply(slice(
        "default",
        "web-1",
        "web",
        ("http", 8080),
        &["203.0.113.2"],
    ));
    wait_state(
        src,
        &[spec(
            "default/web:http/TCP",
            client_ip(600),
            WEB_FE,
            &["203.0.113.2:8080", "203.0.113.3:8080"],
        )]
        .into(),
    );

    // Affinity flipped ClientIP -> None.
    server.apply(service(
        "default",
        "web",
        "198.51.100.10",
        &[("http", 80)],
        None,
    ));
    wait_state(
        src,
        &[spec(
            "default/web:http/TCP",
            Affinity::None,
            WEB_FE,
            &["203.0.113.2:8080", "203.0.113.3:8080"],
        )]
        .into(),
    );

    // A new service and its slice.
    server.apply(service(
        "shop",
        "api",
        "198.51.100.20",
        &[("", 443)],
        Some(30),
    ));
    server.apply(slice("shop", "api-1", "api", ("", 8443), &["203.0.113.20"]));
    let web_now = spec(
        "default/web:http/TCP",
        Affinity::None,
        WEB_FE,
        &["203.0.113.2:8080", "203.0.113.3:8080"],
    );
    wait_state(
        src,
        &[
            web_now.clone(),
            spec(
                "shop/api:443/TCP",
                client_ip(30),
                "198.51.100.20:443",
                &["203.0.113.20:8443"],
            ),
        ]
        .into(),
    );

    // A slice deleted: its backends go.
    assert!(server.delete(Resource::EndpointSlices, "default", "web-2"));
    let web_now = spec(
        "default/web:http/TCP",
        Affinity::None,
        WEB_FE,
        &["203.0.113.2:8080"],
    );
    wait_state(
        src,
        &[
            web_now.clone(),
            spec(
                "shop/api:443/TCP",
                client_ip(30),
                "198.51.100.20:443",
                &["203.0.113.20:8443"],
            ),
        ]
        .into(),
    );

    // A service deleted: its spec goes (its slice stays, unused).
    assert!(server.delete(Resource::Services, "shop", "api"));
    let (u, _) = wait_state(src, &[web_now].into());

    // Ids are stable across every update.
    let t = u.translation();
    assert_eq!(t.specs[0].id, web_id);
    // 203.0.113.1 left; its id is not reused for another backend.
    assert_ne!(t.specs[0].backends[0].id, b1_id);

    // Back to the first endpoint: it gets its old id.
    server.apply(slice(
        "default",
        "web-1",
        "web",
        ("http", 8080),
        &["203.0.113.1", "203.0.113.2"],
    ));
    let (u, _) = wait_state(
        src,
        &[spec(
            "default/web:http/TCP",
            Affinity::None,
            WEB_FE,
            &["203.0.113.1:8080", "203.0.113.2:8080"],
        )]
        .into(),
    );
    let b1 = u.translation().specs[0]
        .backends
        .iter()
        .find(|b| b.addr.to_string() == "203.0.113.1")
        .unwrap();
    assert_eq!(b1.id, b1_id);
}

#[test]
fn a_change_is_sent_at_once_and_bursts_are_coalesced_while_one_is_pending() {
    let server = FakeApiServer::start();
    server.apply(service(
        "default",
        "web",
        "198.51.100.10",
        &[("http", 80)],
        Some(600),
    ));
    let run = spawn(&server);
    let src = &run;
    wait_state(
        src,
        &[spec("default/web:http/TCP", client_ip(600), WEB_FE, &[])].into(),
    );
    wait_until("the slice watch is open", || {
        server.watch_count(Resource::EndpointSlices) >= 1
    });

    // Leading edge: one change is sent without waiting for more.
    server.apply(slice(
        "default",
        "web-1",
        "web",
        ("http", 8080),
        &["203.0.113.1"],
    ));
    wait_until("the change is sent", || !src.updates.is_empty());
    let (_, seen) = wait_state(
        src,
        &[spec(
            "default/web:http/TCP",
            client_ip(600),
            WEB_FE,
            &["203.0.113.1:8080"],
        )]
        .into(),
    );
    assert_eq!(seen.len(), 1);
    let KubeUpdate::Changed(delta) = &seen[0].update else {
        panic!("not a change");
    };
    // Only what changed.
    assert_eq!(delta.specs.len(), 1);
    assert!(delta.removed.is_empty());

    // 200 writes as fast as the server takes them while this consumer is
    // busy (not reading), cycling through 1 to 20 endpoints; the last has
    // 25, a state no earlier write had. At most one update waits for the
    // consumer; everything after it is gathered into the next.
    let mut last = Vec::new();
    for i in 0..200u32 {
        let n = if i == 199 { 25 } else { i % 20 + 1 };
        last = (1..=n)
            .map(|k| format!("203.0.113.{k}"))
            .collect::<Vec<_>>();
        let addrs: Vec<&str> = last.iter().map(String::as_str).collect();
        server.apply(slice("default", "web-1", "web", ("http", 8080), &addrs));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        src.updates.len() <= 1,
        "{} updates queued",
        src.updates.len()
    );
    let backends: Vec<String> = last.iter().map(|a| format!("{a}:8080")).collect();
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    let (_, seen) = wait_state(
        src,
        &[spec(
            "default/web:http/TCP",
            client_ip(600),
            WEB_FE,
            &backends,
        )]
        .into(),
    );
    assert!(seen.len() <= 2, "200 events gave {} updates", seen.len());
    assert_quiet(src, Duration::from_millis(200));
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn gone_410_relists_without_losing_state() {
    let server = FakeApiServer::start();
    server.apply(service(
        "default",
        "web",
        "198.51.100.10",
        &[("http", 80)],
        Some(600),
    ));
    server.apply(slice(
        "default",
        "web-1",
        "web",
        ("http", 8080),
        &["203.0.113.1", "203.0.113.2"],
    ));
    server.apply(service(
        "default",
        "old",
        "198.51.100.30",
        &[("http", 80)],
        None,
    ));
    server.apply(slice(
        "default",
        "old-1",
        "old",
        ("http", 8080),
        &["203.0.113.30"],
    ));
    let run = spawn(&server);
    let src = &run;
    let before: Summary = [
        spec(
            "default/old:http/TCP",
            Affinity::None,
            "198.51.100.30:80",
            &["203.0.113.30:8080"],
        ),
        spec(
            "default/web:http/TCP",
            client_ip(600),
            WEB_FE,
            &["203.0.113.1:8080", "203.0.113.2:8080"],
        ),
    ]
    .into();
    wait_state(src, &before);
    wait_until("both watches open", || {
        server.watch_count(Resource::Services) >= 1
            && server.watch_count(Resource::EndpointSlices) >= 1
    });
    let lists = (
        server.list_count(Resource::Services),
        server.list_count(Resource::EndpointSlices),
    );

    // The watches miss these changes: the history they need is compacted
    // and they get 410 Gone.
    server.change_unseen(|c| {
        c.apply(slice(
            "default",
            "web-1",
            "web",
            ("http", 8080),
            &["203.0.113.2", "203.0.113.3"],
        ));
        c.delete(Resource::Services, "default", "old");
        c.apply(service(
            "default",
            "new",
            "198.51.100.40",
            &[("http", 80)],
            Some(60),
        ));
        c.apply(slice(
            "default",
            "new-1",
            "new",
            ("http", 8080),
            &["203.0.113.40"],
        ));
    });
    let after: Summary = [
        spec(
            "default/new:http/TCP",
            client_ip(60),
            "198.51.100.40:80",
            &["203.0.113.40:8080"],
        ),
        spec(
            "default/web:http/TCP",
            client_ip(600),
            WEB_FE,
            &["203.0.113.2:8080", "203.0.113.3:8080"],
        ),
    ]
    .into();
    let (u, seen) = wait_state(src, &after);
    assert!(matches!(u.update, KubeUpdate::Changed(_)));
    // Nothing lost on the way: the stores are replaced only once a relist
    // completes. (Services and slices relist independently, so a state
    // with one relisted and not the other is legitimate.)
    let web_before = &before["default/web:http/TCP"];
    let web_after = &after["default/web:http/TCP"];
    for s in &seen {
        let got = summary(s.translation());
        let web = &got["default/web:http/TCP"];
        assert!(
            web == web_before || web == web_after,
            "partial state {got:#?}"
        );
    }
    assert!(
        server.list_count(Resource::Services) > lists.0,
        "services relisted"
    );
    assert!(
        server.list_count(Resource::EndpointSlices) > lists.1,
        "slices relisted"
    );
    assert!(
        src.last_error()
            .is_some_and(|e| e.contains("410") || e.contains("too old")),
        "{:?}",
        src.last_error()
    );
    assert!(src.connected());

    // Watching goes on after the relist.
    server.apply(slice(
        "default",
        "web-1",
        "web",
        ("http", 8080),
        &["203.0.113.3"],
    ));
    wait_state(
        src,
        &[
            spec(
                "default/new:http/TCP",
                client_ip(60),
                "198.51.100.40:80",
                &["203.0.113.40:8080"],
            ),
            spec(
                "default/web:http/TCP",
                client_ip(600),
                WEB_FE,
                &["203.0.113.3:8080"],
            ),
        ]
        .into(),
    );
}

#[test]
fn apiserver_outage_keeps_state_and_recovers() {
    let mut server = FakeApiServer::start();
    let run = web_synced(&server);
    let src = &run;
    assert!(src.connected());
    let lists = (
        server.list_count(Resource::Services),
        server.list_count(Resource::EndpointSlices),
    );

    server.down();
    wait_until("the source sees the outage", || !src.connected());
    assert!(src.last_error().is_some());
    // Retried with backoff all along; no empty (or any) state meanwhile.
    assert_quiet(src, Duration::from_millis(1500));
    assert!(src.synced());

    // Changes made during the outage arrive once it is over.
    server.apply(slice(
        "default",
        "web-1",
        "web",
        ("http", 8080),
        &["203.0.113.1", "203.0.113.2"],
    ));
    server.up();
    let (u, seen) = wait_state(
        src,
        &[spec(
            "default/web:http/TCP",
            client_ip(600),
            WEB_FE,
            &["203.0.113.1:8080", "203.0.113.2:8080"],
        )]
        .into(),
    );
    assert_eq!(seen.len(), 1);
    assert!(matches!(u.update, KubeUpdate::Changed(_)));
    assert!(src.connected());
    // The watches resumed from their resource versions: no relist.
    assert_eq!(server.list_count(Resource::Services), lists.0);
    assert_eq!(server.list_count(Resource::EndpointSlices), lists.1);
}

#[test]
fn starts_while_the_apiserver_is_down() {
    let mut server = FakeApiServer::start();
    server.apply(service(
        "default",
        "web",
        "198.51.100.10",
        &[("http", 80)],
        None,
    ));
    server.apply(slice(
        "default",
        "web-1",
        "web",
        ("http", 8080),
        &["203.0.113.1"],
    ));
    server.down();
    let run = spawn(&server);
    let src = &run;
    wait_until("an error is reported", || src.last_error().is_some());
    assert!(!src.connected());
    assert_quiet(src, Duration::from_millis(500));
    assert!(!src.synced());

    server.up();
    let (u, _) = wait_state(
        src,
        &[spec(
            "default/web:http/TCP",
            Affinity::None,
            WEB_FE,
            &["203.0.113.1:8080"],
        )]
        .into(),
    );
    assert!(matches!(u.update, KubeUpdate::Synced(_)));
    assert!(src.connected());
    assert!(src.synced());
}

#[test]
fn an_invalid_object_is_reported_and_the_rest_served() {
    let server = FakeApiServer::start();
    server.apply(service(
        "default",
        "bad",
        "198.51.100.50",
        &[("http", 80)],
        Some(0),
    ));
    server.apply(slice(
        "default",
        "bad-1",
        "bad",
        ("http", 8080),
        &["203.0.113.50"],
    ));
    apply_web(&server);
    let run = spawn(&server);
    let src = &run;
    let web = spec(
        "default/web:http/TCP",
        client_ip(600),
        WEB_FE,
        &["203.0.113.1:8080"],
    );
    let (u, _) = wait_state(src, &[web.clone()].into());
    assert!(matches!(u.update, KubeUpdate::Synced(_)));
    let errors = &u.translation().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].kind, "services");
    assert_eq!(errors[0].name, "bad");
    assert_eq!(
        errors[0].field,
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
    );
    assert!(
        errors[0].message.starts_with("Invalid value: 0"),
        "{}",
        errors[0].message
    );

    // The rest keeps working.
    server.apply(slice(
        "default",
        "web-1",
        "web",
        ("http", 8080),
        &["203.0.113.1", "203.0.113.2"],
    ));
    let web = spec(
        "default/web:http/TCP",
        client_ip(600),
        WEB_FE,
        &["203.0.113.1:8080", "203.0.113.2:8080"],
    );
    let (u, _) = wait_state(src, &[web.clone()].into());
    assert_eq!(u.translation().errors.len(), 1);

    // Fixed: served, and the error is gone.
    server.apply(service(
        "default",
        "bad",
        "198.51.100.50",
        &[("http", 80)],
        Some(60),
    ));
    let (u, _) = wait_state(
        src,
        &[
            spec(
                "default/bad:http/TCP",
                client_ip(60),
                "198.51.100.50:80",
                &["203.0.113.50:8080"],
            ),
            web,
        ]
        .into(),
    );
    assert!(
        u.translation().errors.is_empty(),
        "{:?}",
        u.translation().errors
    );
}

#[test]
fn dropped_watches_resume_from_bookmarks_without_relisting() {
    let server = FakeApiServer::start();
    let run = web_synced(&server);
    let src = &run;
    let lists = (
        server.list_count(Resource::Services),
        server.list_count(Resource::EndpointSlices),
    );
    let watches = server.watch_count(Resource::Services);

    // Slices move on; the service watch sees nothing, so its own resource
    // version falls behind, until a bookmark brings it forward.
    for n in 2..=5 {
        let addrs: Vec<String> = (1..=n).map(|k| format!("203.0.113.{k}")).collect();
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        server.apply(slice("default", "web-1", "web", ("http", 8080), &addrs));
    }
    let four = [
        "203.0.113.1:8080",
        "203.0.113.2:8080",
        "203.0.113.3:8080",
        "203.0.113.4:8080",
        "203.0.113.5:8080",
    ];
    wait_state(
        src,
        &[spec("default/web:http/TCP", client_ip(600), WEB_FE, &four)].into(),
    );
    server.bookmark();
    std::thread::sleep(Duration::from_millis(300));
    // History before now is gone; a watch resuming from an older version
    // than the bookmark's would get 410 and relist.
    server.compact();
    server.drop_watches();
    wait_until("the watches are reopened", || {
        server.watch_count(Resource::Services) > watches
    });

    server.apply(service(
        "default",
        "web",
        "198.51.100.10",
        &[("http", 80)],
        None,
    ));
    wait_state(
        src,
        &[spec("default/web:http/TCP", Affinity::None, WEB_FE, &four)].into(),
    );
    assert_eq!(
        server.list_count(Resource::Services),
        lists.0,
        "{:#?}",
        server.requests()
    );
    assert_eq!(
        server.list_count(Resource::EndpointSlices),
        lists.1,
        "{:#?}",
        server.requests()
    );
}

#[test]
fn large_lists_are_paged() {
    let server = FakeApiServer::start();
    // More services than kube-rs's page size (500).
    let addrs: Vec<String> = ["198.51.100", "203.0.113", "192.0.2"]
        .iter()
        .flat_map(|net| (1..=254).map(move |h| format!("{net}.{h}")))
        .take(520)
        .collect();
    for (i, a) in addrs.iter().enumerate() {
        server.apply(service(
            "bulk",
            &format!("svc-{i:04}"),
            a,
            &[("http", 80)],
            None,
        ));
    }
    server.apply(slice(
        "bulk",
        "svc-0519-1",
        "svc-0519",
        ("http", 8080),
        &["203.0.113.1"],
    ));
    let run = spawn(&server);
    let (u, _) = wait_for(&run, "the first state", |_| true);
    let KubeUpdate::Synced(t) = u.update else {
        panic!("not Synced");
    };
    assert_eq!(t.specs.len(), 520);
    let last = t
        .specs
        .iter()
        .find(|s| s.name == "bulk/svc-0519:http/TCP")
        .unwrap();
    assert_eq!(last.backends.len(), 1);
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/services?") && r.contains("continue=")),
        "no second page requested"
    );
}

/// Frontends of each spec, sorted, by spec name.
fn frontends(t: &Translation) -> BTreeMap<String, Vec<String>> {
    t.specs
        .iter()
        .map(|s| {
            let mut fe: Vec<String> = s
                .frontends
                .iter()
                .map(|(a, p)| format!("{a}:{p}"))
                .collect();
            fe.sort();
            (s.name.clone(), fe)
        })
        .collect()
}

#[test]
fn node_identity_comes_from_the_node_object() {
    let server = FakeApiServer::start();
    let mut svc = service("default", "web", "198.51.100.10", &[("http", 80)], None);
    svc["spec"]["type"] = json!("NodePort");
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    server.apply(svc);
    server.apply(slice(
        "default",
        "web-1",
        "web",
        ("http", 8080),
        &["203.0.113.1"],
    ));
    server.apply(node(
        "edge-1",
        &[
            ("InternalIP", "192.0.2.7"),
            ("ExternalIP", "203.0.113.7"),
            ("Hostname", "edge-1"),
        ],
        Some("zone-a"),
    ));
    // Topology-aware: endpoints hinted for zone-a and zone-b.
    let mut near = service("default", "near", "198.51.100.20", &[("http", 80)], None);
    near["spec"]["trafficDistribution"] = json!("PreferClose");
    server.apply(near);
    let mut near_slice = slice(
        "default",
        "near-1",
        "near",
        ("http", 8080),
        &["203.0.113.21", "203.0.113.22"],
    );
    near_slice["endpoints"][0]["hints"] = json!({"forZones": [{"name": "zone-a"}]});
    near_slice["endpoints"][1]["hints"] = json!({"forZones": [{"name": "zone-b"}]});
    server.apply(near_slice);
    let ctx = TranslateContext {
        node_name: Some("edge-1".into()),
        ..TranslateContext::default()
    };
    let run = spawn_with(&server, ctx);
    let want = |node_ips: &[&str]| -> BTreeMap<String, Vec<String>> {
        let mut fe: Vec<String> = node_ips.iter().map(|a| format!("{a}:30080")).collect();
        fe.push(WEB_FE.to_owned());
        fe.sort();
        [
            (
                "default/near:http/TCP".to_owned(),
                vec!["198.51.100.20:80".to_owned()],
            ),
            ("default/web:http/TCP".to_owned(), fe),
        ]
        .into()
    };
    // The first state already has the node's addresses (read before it).
    let (u, seen) = wait_for(&run, "the first state", |_| true);
    assert!(matches!(u.update, KubeUpdate::Synced(_)));
    assert_eq!(seen.len(), 1);
    assert_eq!(
        frontends(u.translation()),
        want(&["192.0.2.7", "203.0.113.7"])
    );
    // The zone label picks the endpoint hinted for zone-a.
    assert_eq!(
        summary(u.translation())["default/near:http/TCP"].2,
        ["203.0.113.21:8080"]
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/nodes/edge-1")),
        "{:?}",
        server.requests()
    );

    // The node's address changes: node ports follow.
    server.apply(node(
        "edge-1",
        &[("InternalIP", "192.0.2.8")],
        Some("zone-a"),
    ));
    wait_for(&run, "the new node address", |u| {
        frontends(u.translation()) == want(&["192.0.2.8"])
    });

    // --node-address overrides the node's addresses.
    let ctx = TranslateContext {
        node_name: Some("edge-1".into()),
        node_addresses: vec!["192.0.2.99".parse().unwrap()],
        ..TranslateContext::default()
    };
    let run = spawn_with(&server, ctx);
    let (u, _) = wait_for(&run, "the first state", |_| true);
    assert_eq!(frontends(u.translation()), want(&["192.0.2.99"]));

    // A node that does not exist: no node ports, the rest is served.
    let ctx = TranslateContext {
        node_name: Some("nowhere".into()),
        ..TranslateContext::default()
    };
    let run = spawn_with(&server, ctx);
    let (u, _) = wait_for(&run, "the first state", |_| true);
    assert_eq!(frontends(u.translation())["default/web:http/TCP"], [WEB_FE]);
    assert_eq!(
        summary(u.translation())["default/near:http/TCP"].2,
        ["203.0.113.21:8080", "203.0.113.22:8080"],
        "no zone: every endpoint"
    );
}

#[test]
fn a_missing_kubeconfig_fails_to_spawn() {
    let dir = tempfile::tempdir().unwrap();
    let opts = KubeOptions::new(
        Some(dir.path().join("no-such-kubeconfig")),
        TranslateContext::default(),
    );
    let Err(e) = KubeSource::spawn(opts) else {
        panic!("spawned without a kubeconfig");
    };
    assert!(e.to_string().contains("no-such-kubeconfig"), "{e}");
}
