//! Announcing service addresses to a tier's routers through the node's own
//! BGP speaker: each load-balancer ingress address and external IP while
//! this node can serve it, withdrawn otherwise and before limpet stops.
//!
//! The speaker is BIRD 2, driven the way BIRD is meant to be: limpet writes
//! a configuration fragment that the operator's `bird.conf` includes (two
//! static protocols, `limpet4` and `limpet6`, one `/32` or `/128` route per
//! address) and sends `configure` over BIRD's control socket (what `birdc
//! configure` sends), BIRD's own soft reconfiguration: BGP sessions stay
//! up, only the changed static routes come and go.
//!
//! Why BIRD and this way, for robustness:
//! - **limpet dying withdraws its routes without limpet.** Every route is
//!   `via` limpet's liveness link ([`LivenessLink`]), a TUN device that
//!   the kernel deletes when limpet's process ends, however it ends;
//!   `check link` makes BIRD withdraw routes whose interface is down or
//!   gone, within milliseconds of the netlink event. A live limpet that
//!   cannot serve (a worker stopped polling, a planned stop) takes the link
//!   down itself. `GoBGP`'s API keeps routes a dead client added, and FRR's
//!   `frr-reload` rewrites the whole running configuration; neither ties a
//!   route to a process's life without BFD or a keepalive of our own.
//! - **The speaker dying stops nothing.** limpet keeps forwarding; failed
//!   reconfigurations are retried, and a restarted BIRD reads the fragment
//!   (with the latest addresses) from its configuration itself.
//! - **The operator keeps BGP.** Peers, timers, BFD, communities and export
//!   policy stay in the operator's BIRD configuration; limpet only names
//!   the routes (`export where proto = "limpet4"`).

use crate::backend::Heartbeat;
use crate::state::Shared;
use crate::translate::{SpecIndex, SpecInfo};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use limpet_dataplane::affinity::ServicePortId;
use limpet_dataplane::io::tun::{LivenessError, LivenessLink};
use limpet_dataplane::snapshot::{ServicePortSpec, Snapshot};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How limpet reaches its speaker (`limpet run --announce bird`).
#[derive(Debug, Clone)]
pub struct AnnounceOptions {
    /// The fragment limpet owns; the speaker's configuration includes it.
    pub fragment: PathBuf,
    /// BIRD's control socket (`bird -s`, `birdc -s`).
    pub socket: PathBuf,
    /// The liveness link's name: every route is `via` it.
    pub link: String,
}

/// How long a worker may go without a heartbeat before this node stops
/// attracting traffic: far above a healthy poll loop's, which beats every
/// 100 ms even while idle.
pub const WORKER_STALL: Duration = Duration::from_secs(2);

/// Why this node should not attract traffic now, if it should not: no
/// snapshot published yet, the operator drains the node (`drain_node`), or
/// a worker's heartbeat is older than `stall` (a hung or dead worker drops
/// what the routers send it).
pub fn why_not_serving(
    published: bool,
    drain_node: Option<String>,
    beats: &[Arc<Heartbeat>],
    stall: Duration,
) -> Option<String> {
    if !published {
        return Some("no snapshot served yet".to_owned());
    }
    if drain_node.is_some() {
        return drain_node;
    }
    beats
        .iter()
        .enumerate()
        .find(|(_, b)| b.age() > stall)
        .map(|(i, b)| {
            format!(
                "worker {i} has not polled for {:.1} s",
                b.age().as_secs_f64()
            )
        })
}

/// How long a planned stop keeps forwarding after withdrawing, so that the
/// routers have moved the flows they were sending here.
pub const WITHDRAW_GRACE: Duration = Duration::from_secs(1);

/// How long one exchange with BIRD may take before it is given up on.
const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);
/// Between retries of a failed reconfiguration, and speaker checks.
const RETRY: Duration = Duration::from_secs(2);

/// The addresses each service port would have announced, and its
/// Service's name, kept by service port so that a change to some ports
/// updates only those.
#[derive(Debug, Default)]
pub struct AnnounceIndex(SpecIndex<(Vec<IpAddr>, String)>);

/// A service port's announceable addresses and its Service, if it has any.
fn announce_of(info: &SpecInfo) -> Option<(Vec<IpAddr>, String)> {
    (!info.announce.is_empty()).then(|| {
        (
            info.announce.clone(),
            format!("{}/{}", info.namespace, info.service),
        )
    })
}

impl AnnounceIndex {
    /// Forgets everything and takes `specs` (`info[i]` describing `specs[i]`).
    pub fn replace(&mut self, specs: &[ServicePortSpec], info: &[SpecInfo]) {
        self.0.replace(specs, info, announce_of);
    }

    /// Takes changed `specs` and forgets `removed` ones.
    pub fn apply(
        &mut self,
        specs: &[ServicePortSpec],
        info: &[SpecInfo],
        removed: &[ServicePortId],
    ) {
        self.0.apply(specs, info, removed, announce_of);
    }
}

/// One address and whether this node can serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub address: IpAddr,
    /// At least one service port on it has a usable endpoint in the
    /// published snapshot (a local one under `externalTrafficPolicy:
    /// Local`, which keeps such ports to local endpoints).
    pub serving: bool,
    /// The Services it fronts.
    pub services: Vec<String>,
    pub reason: String,
}

/// The addresses `snapshot` serves that `index` says are announced, and
/// whether each can be served. A frontend the snapshot left out (claimed
/// by another service) is not this port's to announce.
pub fn routes(snapshot: &Snapshot, index: &AnnounceIndex) -> Vec<Route> {
    // address -> (services, ports with endpoints, ports)
    let mut by_addr: BTreeMap<IpAddr, (Vec<String>, usize, usize)> = BTreeMap::new();
    for port in snapshot.ports() {
        let Some((addrs, service)) = index.0.get(port.spec.id) else {
            continue;
        };
        let usable = port.spec.backends.iter().any(|b| b.weight > 0);
        for addr in addrs {
            if !port.spec.frontends.iter().any(|(a, _)| a == addr) {
                continue;
            }
            let entry = by_addr.entry(*addr).or_default();
            if !entry.0.contains(service) {
                entry.0.push(service.clone());
            }
            entry.1 += usize::from(usable);
            entry.2 += 1;
        }
    }
    by_addr
        .into_iter()
        .map(|(address, (services, usable, ports))| Route {
            address,
            serving: usable > 0,
            services,
            reason: if usable > 0 {
                format!("{usable} of {ports} service ports have usable endpoints")
            } else {
                format!("none of its {ports} service ports has a usable endpoint on this node")
            },
        })
        .collect()
}

/// The fragment for `addrs`, every route tied to `link`. Both protocols are
/// always there (empty when nothing is announced), so the operator's
/// filters can name them.
pub fn render_fragment(link: &str, addrs: &[IpAddr]) -> String {
    let mut out = String::from(
        "# Written by limpet: the service addresses this node serves now.\n\
         # Do not edit; limpet rewrites it and has BIRD reconfigure.\n",
    );
    for (proto, channel, v4) in [("limpet4", "ipv4", true), ("limpet6", "ipv6", false)] {
        let _ = write!(
            out,
            "protocol static {proto} {{\n    {channel};\n    check link;\n"
        );
        for addr in addrs.iter().filter(|a| a.is_ipv4() == v4) {
            let len = if v4 { 32 } else { 128 };
            let _ = writeln!(out, "    route {addr}/{len} via \"{link}\";");
        }
        out.push_str("}\n");
    }
    out
}

/// What the admin API shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AnnounceStatus {
    pub speaker: &'static str,
    pub fragment: PathBuf,
    pub socket: PathBuf,
    pub link: String,
    /// Whether the liveness link is up: routes are announced only then.
    pub link_up: bool,
    /// Why the link is down, if it is.
    pub withdrawn_because: Option<String>,
    /// Whether the last exchange reached the speaker and it took the
    /// fragment.
    pub speaker_ok: bool,
    pub last_error: Option<String>,
    /// Seconds since the speaker last took the fragment.
    pub configured_ago_s: Option<u64>,
    pub routes: Vec<RouteStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    #[serde(flatten)]
    pub route: Route,
    /// In the fragment, the speaker took it, and the link is up.
    pub announced: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error(transparent)]
    Link(#[from] LivenessError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the announcer: {0}")]
    Thread(std::io::Error),
}

enum Msg {
    Routes(Vec<Route>),
    /// `None`: the node can serve; `Some(why)`: it cannot, withdraw all.
    Serving(Option<String>),
    Stop(Sender<()>),
}

/// The announcer thread's handle.
pub struct Announcer {
    tx: Sender<Msg>,
    join: Option<JoinHandle<()>>,
}

impl Announcer {
    /// Creates the liveness link (down) and writes an empty fragment, so
    /// that nothing is announced before the first snapshot is served.
    pub fn start(opts: &AnnounceOptions, shared: Arc<Shared>) -> Result<Self, AnnounceError> {
        let link = LivenessLink::create(&opts.link)?;
        write_atomically(&opts.fragment, &render_fragment(&opts.link, &[]))?;
        let (tx, rx) = unbounded();
        let mut driver = BirdDriver {
            opts: opts.clone(),
            link,
            shared,
            routes: Vec::new(),
            why_not: Some("starting: no snapshot served yet".into()),
            configured: None,
            configured_at: None,
            speaker_ok: false,
            last_error: None,
            next_try: Instant::now(),
        };
        let join = std::thread::Builder::new()
            .name("limpet-announce".into())
            .spawn(move || driver.run(&rx))
            .map_err(AnnounceError::Thread)?;
        info!(
            link = opts.link,
            fragment = %opts.fragment.display(),
            socket = %opts.socket.display(),
            "announcing service addresses through BIRD"
        );
        Ok(Self {
            tx,
            join: Some(join),
        })
    }

    pub fn routes(&self, routes: Vec<Route>) {
        let _ = self.tx.send(Msg::Routes(routes));
    }

    /// Whether the node can serve now (`None`) or why not.
    pub fn serving(&self, why_not: Option<String>) {
        let _ = self.tx.send(Msg::Serving(why_not));
    }

    /// Withdraws everything (link down, empty fragment) and waits for the
    /// speaker to have taken it, or for the exchange's timeout.
    pub fn withdraw_all(&mut self) {
        let (ack_tx, ack_rx) = bounded(1);
        if self.tx.send(Msg::Stop(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(BIRDC_TIMEOUT + Duration::from_secs(1));
        }
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        if self.join.is_some() {
            self.withdraw_all();
        }
    }
}

struct BirdDriver {
    opts: AnnounceOptions,
    link: LivenessLink,
    shared: Arc<Shared>,
    routes: Vec<Route>,
    why_not: Option<String>,
    /// The fragment the speaker last took.
    configured: Option<String>,
    configured_at: Option<Instant>,
    speaker_ok: bool,
    last_error: Option<String>,
    /// When to retry a failed reconfiguration or check the speaker.
    next_try: Instant,
}

impl BirdDriver {
    fn run(&mut self, rx: &Receiver<Msg>) {
        loop {
            let wait = self.next_try.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                // Dropped without a stop: the link goes with this thread.
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // Every queued change before talking to the speaker.
            let mut stop = None;
            for msg in first.into_iter().chain(rx.try_iter()) {
                match msg {
                    Msg::Routes(routes) => self.routes = routes,
                    Msg::Serving(why_not) => self.why_not = why_not,
                    Msg::Stop(ack) => {
                        self.why_not = Some("limpet is stopping".into());
                        self.routes.clear();
                        stop = Some(ack);
                        break;
                    }
                }
            }
            self.set_link();
            self.configure(stop.is_some());
            self.publish_status();
            if let Some(ack) = stop {
                let _ = ack.send(());
                return;
            }
        }
    }

    fn set_link(&mut self) {
        let up = self.why_not.is_none();
        match self.link.is_up() {
            Ok(now) if now == up => return,
            Ok(_) => {}
            Err(e) => warn!(link = self.link.name(), "reading the liveness link: {e}"),
        }
        match self.link.set_up(up) {
            Ok(()) if up => info!(link = self.link.name(), "serving: liveness link up"),
            Ok(()) => warn!(
                link = self.link.name(),
                "withdrawing every route: {}",
                self.why_not.as_deref().unwrap_or_default()
            ),
            Err(e) => warn!(link = self.link.name(), "setting the liveness link: {e}"),
        }
    }

    fn fragment(&self) -> String {
        let addrs: Vec<IpAddr> = self
            .routes
            .iter()
            .filter(|r| r.serving)
            .map(|r| r.address)
            .collect();
        render_fragment(&self.opts.link, &addrs)
    }

    /// Writes the fragment if it changed and has the speaker take it;
    /// after a failure, retries (and otherwise checks the speaker is
    /// there) every [`RETRY`]. `now`: try at once whatever happened last.
    fn configure(&mut self, now: bool) {
        let wanted = self.fragment();
        let due = now || Instant::now() >= self.next_try;
        if self.configured.as_deref() == Some(wanted.as_str()) && !due {
            return;
        }
        if self.configured.as_deref() != Some(wanted.as_str()) || !self.speaker_ok {
            if let Err(e) = write_atomically(&self.opts.fragment, &wanted) {
                self.fail(e.to_string());
                return;
            }
            match bird_command(&self.opts.socket, "configure") {
                Ok(_) => {
                    if !self.speaker_ok {
                        info!(socket = %self.opts.socket.display(), "speaker took the fragment");
                    }
                    self.configured = Some(wanted);
                    self.configured_at = Some(Instant::now());
                    self.speaker_ok = true;
                    self.last_error = None;
                }
                Err(e) => self.fail(e),
            }
        } else {
            // Nothing changed: only check that the speaker is there, so the
            // status says when it is not (a restarted BIRD reads the
            // fragment itself).
            if let Err(e) = bird_command(&self.opts.socket, "show status") {
                self.fail(e);
            }
        }
        self.next_try = Instant::now() + RETRY;
    }

    fn fail(&mut self, e: String) {
        if self.speaker_ok || self.last_error.is_none() {
            warn!("speaker: {e}; limpet keeps forwarding and retries every {RETRY:?}");
        }
        self.speaker_ok = false;
        self.last_error = Some(e);
        self.next_try = Instant::now() + RETRY;
    }

    fn publish_status(&self) {
        let link_up = self.link.is_up().unwrap_or(false);
        let configured = self.configured.as_deref().unwrap_or_default();
        let status = AnnounceStatus {
            speaker: "bird",
            fragment: self.opts.fragment.clone(),
            socket: self.opts.socket.clone(),
            link: self.opts.link.clone(),
            link_up,
            withdrawn_because: self.why_not.clone(),
            speaker_ok: self.speaker_ok,
            last_error: self.last_error.clone(),
            configured_ago_s: self.configured_at.map(|t| t.elapsed().as_secs()),
            routes: self
                .routes
                .iter()
                .map(|r| RouteStatus {
                    announced: r.serving
                        && link_up
                        && self.speaker_ok
                        && fragment_routes(configured).contains(&r.address),
                    route: r.clone(),
                })
                .collect(),
        };
        self.shared.lock().announce = Some(status);
    }
}

/// The addresses a fragment routes.
fn fragment_routes(fragment: &str) -> Vec<IpAddr> {
    fragment
        .lines()
        .filter_map(|l| l.trim().strip_prefix("route "))
        .filter_map(|r| r.split('/').next()?.parse().ok())
        .collect()
}

/// Sends one command over BIRD's control socket, as `birdc` does, bounded
/// by [`BIRDC_TIMEOUT`]: what BIRD said on success, or why it failed.
///
/// The protocol is BIRD's own, line by line: `NNNN-text` continues a reply,
/// `NNNN text` ends it, a line starting with a space continues the last
/// code. Codes from 8000 up are errors (run-time and parse errors alike).
/// Spoken here rather than through `birdc`, so that limpet's container
/// needs no BIRD client and a slow BIRD cannot leave a child behind.
fn bird_command(socket: &Path, command: &str) -> Result<String, String> {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    let stream = UnixStream::connect(socket)
        .map_err(|e| format!("BIRD's control socket {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(BIRDC_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(BIRDC_TIMEOUT)))
        .map_err(|e| format!("BIRD's control socket: {e}"))?;
    let mut reader = BufReader::new(&stream);
    let read_reply = |reader: &mut BufReader<&UnixStream>| -> Result<(u16, Vec<String>), String> {
        let mut said = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| format!("reading BIRD's answer to {command:?}: {e}"))?;
            if n == 0 {
                return Err(format!("BIRD closed its control socket during {command:?}"));
            }
            let line = line.trim_end_matches('\n');
            let code = line.get(..4).and_then(|c| c.parse::<u16>().ok());
            match (code, line.as_bytes().get(4)) {
                (Some(code), Some(b' ')) => {
                    said.push(line[5..].to_owned());
                    return Ok((code, said));
                }
                (Some(_), Some(b'-')) => said.push(line[5..].to_owned()),
                _ => said.push(line.trim_start().to_owned()),
            }
        }
    };
    let (code, hello) = read_reply(&mut reader)?;
    if code != 1 {
        return Err(format!(
            "BIRD's control socket greeted with {code:04}: {}",
            hello.join("; ")
        ));
    }
    (&stream)
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| format!("sending {command:?} to BIRD: {e}"))?;
    let (code, said) = read_reply(&mut reader)?;
    if code >= 8000 {
        Err(format!("BIRD refused {command:?}: {}", said.join("; ")))
    } else {
        Ok(said.join("\n"))
    }
}

/// Replaces `path` whole: the speaker never reads half a fragment.
fn write_atomically(path: &Path, text: &str) -> Result<(), AnnounceError> {
    let err = |source| AnnounceError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("limpet-tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use limpet_dataplane::snapshot::{Affinity, Backend, ForwardMode};
    use limpet_dataplane::wire::MacAddr;

    fn spec(id: u32, frontends: &[&str], backends: usize) -> ServicePortSpec {
        ServicePortSpec {
            id,
            name: format!("default/svc{id}:80/TCP"),
            protocol: 6,
            affinity: Affinity::client_ip(600),
            mode: ForwardMode::Dsr,
            frontends: frontends
                .iter()
                .map(|a| (a.parse().unwrap(), 8000 + id as u16))
                .collect(),
            backends: (0..backends)
                .map(|i| Backend {
                    id: i as u32 + 1,
                    addr: format!("203.0.113.{}", 21 + i).parse().unwrap(),
                    port: 80,
                    weight: 1,
                    mac: MacAddr([2, 0, 0, 0, 6, i as u8]),
                    iface: 0,
                })
                .collect(),
            maglev_size: Some(251),
            source_ranges: None,
        }
    }

    fn info(service: &str, announce: &[&str]) -> SpecInfo {
        SpecInfo {
            namespace: "default".into(),
            service: service.into(),
            port_name: None,
            port: 80,
            file: None,
            family: crate::translate::IpFamily::V4,
            scope: crate::translate::Scope::All,
            internal_traffic_policy: crate::translate::TrafficPolicy::Cluster,
            external_traffic_policy: crate::translate::TrafficPolicy::Cluster,
            load_balancer_ips: Vec::new(),
            announce: announce.iter().map(|a| a.parse().unwrap()).collect(),
            load_balancer_source_ranges: Vec::new(),
            traffic_distribution: None,
            health_check: None,
        }
    }

    /// An address is served while any of its service ports has an
    /// endpoint; cluster IPs are never announced; a frontend the snapshot
    /// left out is not announced by the port that lost it.
    #[test]
    fn an_address_is_served_while_one_of_its_ports_has_an_endpoint() {
        let specs = vec![
            // 192.0.2.100: two ports, one without endpoints.
            spec(1, &["198.51.100.80", "192.0.2.100"], 3),
            spec(2, &["192.0.2.100"], 0),
            // 192.0.2.101: no endpoint at all.
            spec(3, &["198.51.100.81", "192.0.2.101"], 0),
            // Announceable, but its frontend went to another port.
            spec(4, &["198.51.100.82"], 2),
        ];
        let infos = [
            info("a", &["192.0.2.100"]),
            info("b", &["192.0.2.100"]),
            info("c", &["192.0.2.101"]),
            info("d", &["192.0.2.102"]),
        ];
        let mut index = AnnounceIndex::default();
        index.replace(&specs, &infos);
        let snapshot = Snapshot::build(1, specs.clone()).unwrap();
        let got = routes(&snapshot, &index);
        let view: Vec<(String, bool, Vec<String>)> = got
            .iter()
            .map(|r| (r.address.to_string(), r.serving, r.services.clone()))
            .collect();
        assert_eq!(
            view,
            [
                (
                    "192.0.2.100".to_owned(),
                    true,
                    vec!["default/a".to_owned(), "default/b".to_owned()]
                ),
                (
                    "192.0.2.101".to_owned(),
                    false,
                    vec!["default/c".to_owned()]
                ),
            ]
        );
        assert_eq!(got[0].reason, "1 of 2 service ports have usable endpoints");

        // Port 1 loses its endpoints: the address is no longer served; a
        // removed port takes its address with it.
        let mut changed = specs[0].clone();
        changed.backends.clear();
        index.apply(std::slice::from_ref(&changed), &infos[..1], &[3]);
        let snapshot = Snapshot::build(2, vec![changed, specs[1].clone()]).unwrap();
        let got = routes(&snapshot, &index);
        assert_eq!(got.len(), 1);
        assert!(!got[0].serving);
        assert!(got[0].reason.contains("none of its 2"), "{}", got[0].reason);
    }

    #[test]
    fn a_worker_that_stops_beating_withdraws_the_node() {
        let beats = vec![Arc::new(Heartbeat::new()), Arc::new(Heartbeat::new())];
        for b in &beats {
            b.beat();
        }
        let stall = Duration::from_millis(50);
        assert_eq!(why_not_serving(true, None, &beats, stall), None);
        assert!(why_not_serving(false, None, &beats, stall).is_some());
        let drain = Some("the node is draining".to_owned());
        assert_eq!(why_not_serving(true, drain.clone(), &beats, stall), drain);
        // Worker 1 stops; worker 0 goes on.
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(20));
            beats[0].beat();
        }
        let why = why_not_serving(true, None, &beats, stall).expect("worker 1 stalled");
        assert!(why.starts_with("worker 1 has not polled"), "{why}");
        beats[1].beat();
        assert_eq!(why_not_serving(true, None, &beats, stall), None);
    }

    /// A control socket that greets as BIRD does and answers each command
    /// with `answers[i]`.
    fn fake_bird(answers: Vec<&'static str>) -> (tempfile::TempDir, PathBuf) {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bird.ctl");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for (conn, answer) in listener.incoming().zip(answers) {
                let mut conn = conn.unwrap();
                conn.write_all(b"0001 BIRD 2.0.12 ready.\n").unwrap();
                let mut line = String::new();
                BufReader::new(&conn).read_line(&mut line).unwrap();
                conn.write_all(answer.as_bytes()).unwrap();
            }
        });
        (dir, path)
    }

    #[test]
    fn the_control_socket_is_spoken_as_bird_speaks_it() {
        let (_dir, path) = fake_bird(vec![
            "0002-Reading configuration from /etc/bird/bird.conf\n0003 Reconfigured\n",
            "0002-Reading configuration from /etc/bird/bird.conf\n8002 limpet.conf:1:39 syntax error\n",
            "1000-BIRD 2.0.12\n1011-Router ID is 192.0.2.1\n Hostname is vm\n0013 Daemon is up and running\n",
        ]);
        assert_eq!(
            bird_command(&path, "configure").unwrap(),
            "Reading configuration from /etc/bird/bird.conf\nReconfigured"
        );
        let err = bird_command(&path, "configure").unwrap_err();
        assert!(err.contains("syntax error"), "{err}");
        let ok = bird_command(&path, "show status").unwrap();
        assert!(
            ok.ends_with("Hostname is vm\nDaemon is up and running"),
            "{ok}"
        );
        let gone = bird_command(Path::new("/nonexistent/bird.ctl"), "configure").unwrap_err();
        assert!(gone.contains("control socket"), "{gone}");
    }

    #[test]
    fn the_fragment_routes_each_family_through_the_liveness_link() {
        let addrs: Vec<IpAddr> = vec![
            "192.0.2.100".parse().unwrap(),
            "2001:db8:5::10".parse().unwrap(),
            "192.0.2.101".parse().unwrap(),
        ];
        let text = render_fragment("limpet0", &addrs);
        assert_eq!(
            text,
            "# Written by limpet: the service addresses this node serves now.\n\
             # Do not edit; limpet rewrites it and has BIRD reconfigure.\n\
             protocol static limpet4 {\n    ipv4;\n    check link;\n\
             \x20   route 192.0.2.100/32 via \"limpet0\";\n\
             \x20   route 192.0.2.101/32 via \"limpet0\";\n}\n\
             protocol static limpet6 {\n    ipv6;\n    check link;\n\
             \x20   route 2001:db8:5::10/128 via \"limpet0\";\n}\n"
        );
        let mut read = fragment_routes(&text);
        read.sort();
        let mut want = addrs.clone();
        want.sort();
        assert_eq!(read, want);
        let empty = render_fragment("limpet0", &[]);
        assert!(empty.contains("protocol static limpet4 {\n    ipv4;\n    check link;\n}"));
        assert!(fragment_routes(&empty).is_empty());
    }
}
