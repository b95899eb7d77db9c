//! Restarts on the testbed, with real TCP: a planned restart (SIGTERM, start
//! again with the same `--state-file`) in the middle of traffic moves none
//! of 1000 sticky clients and breaks none of 20 open connections; a crash
//! (SIGKILL) loses nothing older than the last checkpoint, even when the
//! new process runs another number of workers; a torn or corrupt state file
//! is refused, said in the log, and limpet serves with empty tables. The
//! same restart without a state file is run too, as the control that shows
//! the test can see clients move and connections break.
//!
//! A third of the clients are held only by their affinity entry: they are
//! placed while two backends serve, then a third backend is added, which
//! Maglev would now give a third of them. Needs root (CI is root); without
//! it the test fails, loudly.

mod testbed;

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testbed::story::{Config, Io, Limpet, ep, manifest};
use testbed::{Testbed, VIP4, http, must_be_root};

const CLIENTS: usize = 1000;
const FIRST: &str = "198.18.0.10";
/// The open connections: 20 of the placed clients.
const CONNECTIONS: usize = 20;
const FIRST_CONNECTION: &str = "198.18.3.200";
/// Clients kept busy through each restart.
const BUSY: usize = 50;

fn args(workers: u16, state: Option<&Path>) -> Vec<String> {
    let mut args = Io::AfPacket.args(&["lb0"], workers);
    args.extend(
        [
            "--address",
            "203.0.113.1/24",
            "--address",
            "2001:db8:be::1/64",
            "--forward",
            "nat",
            "--workers",
            &workers.to_string(),
        ]
        .map(str::to_owned),
    );
    if let Some(path) = state {
        args.extend([
            "--state-file".to_owned(),
            path.display().to_string(),
            "--state-interval".to_owned(),
            "1".to_owned(),
        ]);
    }
    args
}

/// Clients whose backend is not what they had.
fn moved(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    before
        .iter()
        .filter(|(c, b)| after.get(*c) != Some(*b))
        .map(|(c, b)| format!("{c}: {b} -> {:?}", after.get(c)))
        .collect()
}

/// `CONNECTIONS` TCP connections to the VIP, one from each client from
/// `FIRST_CONNECTION`, held open until [`OpenConnections::exchange`].
struct OpenConnections {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    go: PathBuf,
}

impl OpenConnections {
    fn open(dir: &Path, name: &str) -> Self {
        let go = dir.join(format!("go-{name}"));
        let _ = std::fs::remove_file(&go);
        let script = format!(
            r#"
import ipaddress, json, os, socket, time
first = ipaddress.ip_address("{FIRST_CONNECTION}")
socks = []
for i in range({CONNECTIONS}):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_IP, 15, 1)
    s.bind((str(first + i), 0))
    s.settimeout(10)
    s.connect(("{VIP4}", 80))
    socks.append((str(first + i), s))
print("connected", flush=True)
while not os.path.exists("{go}"):
    time.sleep(0.02)
out = {{}}
for client, s in socks:
    try:
        s.settimeout(5)
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        out[client] = body.decode().strip() if head.startswith(b"HTTP/1.0 200") else "bad answer: %r" % data[:60]
    except Exception as e:
        out[client] = "error: %s" % e
print(json.dumps(out), flush=True)
"#,
            go = go.display()
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", "lp-client", "python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the connection holder");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "connected", "connections not opened");
        Self { child, out, go }
    }

    /// Sends a request on every connection; each one's answer (the
    /// backend's name, or what went wrong).
    fn exchange(mut self) -> BTreeMap<String, String> {
        std::fs::write(&self.go, b"").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

/// One request from each busy client: its answer, if one came.
type Round = BTreeMap<String, Vec<Option<String>>>;

/// New connections from `BUSY` clients, one after another, until stopped:
/// every answer that came, per client.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Round>>,
}

impl Traffic {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut rounds = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                rounds.push(http(VIP4, FIRST, BUSY, 1).results);
            }
            rounds
        });
        Self { stop, thread }
    }

    /// Stops, and checks every answer came from the client's placement;
    /// returns (answers, failed requests).
    fn check(self, placed: &BTreeMap<String, String>) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let rounds = self.thread.join().unwrap();
        let (mut ok, mut failed) = (0, 0);
        for round in rounds {
            for (client, answers) in round {
                for a in answers {
                    match a {
                        Some(backend) => {
                            assert_eq!(
                                &backend, &placed[&client],
                                "{client} reached {backend} during the restart, placed on {}",
                                placed[&client]
                            );
                            ok += 1;
                        }
                        None => failed += 1,
                    }
                }
            }
        }
        (ok, failed)
    }
}

fn log_of(config: &Config) -> String {
    std::fs::read_to_string(config.dir.with_extension("log")).unwrap_or_default()
}

#[test]
#[allow(clippy::too_many_lines)] // one story, in order, on one testbed
fn restart_keeps_affinity_and_connections() {
    must_be_root();
    let _testbed = Testbed::up(3);
    let config = Config::new("restart");
    // Beside the watched directory, not in it.
    let state = config.dir.with_extension("state");
    let _ = std::fs::remove_file(&state);
    config.write(&manifest(Some(10800), &[ep(1), ep(2)]));
    let limpet = Limpet::start_with(&config, &args(2, Some(&state)));

    // Placed while two backends serve; then the third comes, and only
    // their entries keep the clients Maglev now maps to it.
    let placed = http(VIP4, FIRST, CLIENTS, 2).sticky();
    let n = limpet.published();
    config.write(&manifest(Some(10800), &[ep(1), ep(2), ep(3)]));
    limpet.wait_published(n);
    let held = http(VIP4, FIRST, CLIENTS, 1).sticky();
    assert!(
        moved(&placed, &held).is_empty(),
        "clients moved when a backend was added"
    );

    // --- planned restart, mid-traffic ---
    let conns = OpenConnections::open(&config.dir, "planned");
    let traffic = Traffic::start();
    std::thread::sleep(Duration::from_millis(500));
    let sigterm = Instant::now();
    drop(limpet);
    let stopped = sigterm.elapsed();
    let old_log = log_of(&config);
    assert!(
        old_log.contains("state saved"),
        "no state saved on SIGTERM:\n{old_log}"
    );
    let limpet = Limpet::start_with(&config, &args(2, Some(&state)));
    let gap = sigterm.elapsed();
    assert!(
        limpet.log_text().contains("state restored"),
        "state not restored:\n{}",
        limpet.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    // First the connections: the backends drop one idle for 10 s.
    let answered = conns.exchange();
    let (answers, failed) = traffic.check(&placed);
    let broken: Vec<_> = answered
        .iter()
        .filter(|(c, b)| placed.get(*c) != Some(*b))
        .collect();
    let after = http(VIP4, FIRST, CLIENTS, 2).sticky();
    let moved_planned = moved(&placed, &after);
    eprintln!(
        "planned restart: SIGTERM to exit {stopped:?}, SIGTERM to serving again {gap:?}; \
         moved {} of {CLIENTS} clients, broke {} of {CONNECTIONS} connections; \
         busy clients: {answers} answers, {failed} failed requests in the gap\n\
         old: {}\nnew: {}",
        moved_planned.len(),
        broken.len(),
        old_log
            .lines()
            .find(|l| l.contains("state saved"))
            .unwrap_or(""),
        limpet
            .log_text()
            .lines()
            .find(|l| l.contains("state restored"))
            .unwrap_or(""),
    );
    assert!(
        moved_planned.is_empty(),
        "a planned restart moved clients: {moved_planned:?}"
    );
    assert!(
        broken.is_empty(),
        "a planned restart broke connections: {broken:?}"
    );

    // --- crash: SIGKILL after a checkpoint, back with three workers ---
    std::thread::sleep(Duration::from_millis(2500));
    limpet.crash();
    let limpet = Limpet::start_with(&config, &args(3, Some(&state)));
    assert!(
        limpet.log_text().contains("state restored"),
        "checkpoint not restored after a crash:\n{}",
        limpet.log_text()
    );
    let after_crash = http(VIP4, FIRST, CLIENTS, 2).sticky();
    let moved_crash = moved(&placed, &after_crash);
    eprintln!(
        "crash restart (2 -> 3 workers): moved {} of {CLIENTS}",
        moved_crash.len()
    );
    assert!(
        moved_crash.is_empty(),
        "a crash lost checkpointed clients: {moved_crash:?}"
    );

    // --- bad state files are refused; limpet serves with empty tables ---
    drop(limpet);
    let good = std::fs::read(&state).expect("state file after a planned stop");
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    for (what, bytes, says) in [
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "torn or truncated",
        ),
        ("corrupt", corrupt, "checksum mismatch"),
        (
            "foreign",
            b"not a state file at all, but long enough".to_vec(),
            "not a limpet state file",
        ),
    ] {
        std::fs::write(&state, &bytes).unwrap();
        let limpet = Limpet::start_with(&config, &args(2, Some(&state)));
        let log = limpet.log_text();
        assert!(
            log.contains("refused")
                && log.contains(says)
                && log.contains("starting with empty tables"),
            "{what} state file not refused with {says:?}:\n{log}"
        );
        assert!(
            !log.contains("state restored"),
            "{what} state file restored:\n{log}"
        );
        let served = http(VIP4, FIRST, 100, 2).sticky();
        assert_eq!(served.len(), 100, "{what} state file: limpet not serving");
        eprintln!(
            "{what} state file: {}",
            log.lines().find(|l| l.contains("refused")).unwrap_or("")
        );
        drop(limpet);
    }

    // --- the control: the same restart without a state file ---
    let _ = std::fs::remove_file(&state);
    config.write(&manifest(Some(10800), &[ep(1), ep(2)]));
    let limpet = Limpet::start_with(&config, &args(2, None));
    let placed_now = http(VIP4, FIRST, CLIENTS, 2).sticky();
    let n = limpet.published();
    config.write(&manifest(Some(10800), &[ep(1), ep(2), ep(3)]));
    limpet.wait_published(n);
    let conns = OpenConnections::open(&config.dir, "stateless");
    drop(limpet);
    let _limpet = Limpet::start_with(&config, &args(2, None));
    let answered = conns.exchange();
    let broken = answered
        .iter()
        .filter(|(c, b)| placed_now.get(*c) != Some(*b))
        .count();
    let after = http(VIP4, FIRST, CLIENTS, 2).sticky();
    let moved_stateless = moved(&placed_now, &after).len();
    eprintln!(
        "restart without a state file: moved {moved_stateless} of {CLIENTS} clients, \
         broke {broken} of {CONNECTIONS} connections"
    );
    assert!(
        moved_stateless > 0,
        "without a state file no client moved: the test cannot see a move"
    );
}
