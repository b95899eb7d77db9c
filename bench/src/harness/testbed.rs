//! The harness's hold on the `lp-*` testbed: its lock, bringing it up and
//! down, the kube-proxy peer script, processes inside its namespaces, and
//! the measurements taken from outside them (`/proc/stat`, limpet's
//! `/metrics`).

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::HarnessError;

/// The file every user of the `lp-*` testbed locks (see
/// `control/tests/testbed/mod.rs`).
pub const TESTBED_LOCK: &str = "/run/lock/limpet-testbed.lock";

pub const LB_NS: &str = "lp-lb";
pub const CLIENT_NS: &str = "lp-client";
/// The testbed's bridge: lb0's peer `sw-lb` is here.
pub const SWITCH_NS: &str = "lp-sw";
pub const LB_MAC: &str = "02:00:00:00:01:00";
pub const VIP: &str = "192.0.2.10:80";
pub const TARGET_PORT: u16 = 9376;

pub fn backend_ns(n: usize) -> String {
    format!("lp-be{n}")
}

pub fn backend_mac(n: usize) -> String {
    format!("02:00:00:00:03:{n:02x}")
}

pub fn backend_ip(n: usize) -> String {
    format!("203.0.113.1{n}")
}

/// Runs `cmd`, failing with its output if it fails.
pub fn sh(cmd: &mut Command) -> Result<String, HarnessError> {
    let out = cmd
        .output()
        .map_err(|e| HarnessError::Spawn(format!("{cmd:?}"), e))?;
    if !out.status.success() {
        return Err(HarnessError::Command(
            format!("{cmd:?}"),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How a process is scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sched {
    /// The default (CFS) policy.
    Normal,
    /// `SCHED_FIFO` at priority [`LB_RT_PRIORITY`]: a user-space load
    /// balancer owns its core as the kernel's softirq work does (which runs
    /// before any task), instead of sharing it with whatever else the
    /// machine runs. With `--idle wait` it sleeps when there is no traffic,
    /// so it starves nothing.
    Dedicated,
}

pub const LB_RT_PRIORITY: u32 = 50;

/// `ip netns exec NS [chrt -f P] taskset -c CPU PROGRAM ARGS...`: `ip`,
/// `chrt` and `taskset` all exec, so the child's pid is the program's.
pub fn in_ns(ns: &str, cpu: Option<usize>, sched: Sched, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    if sched == Sched::Dedicated {
        c.args(["chrt", "-f", &LB_RT_PRIORITY.to_string()]);
    }
    if let Some(cpu) = cpu {
        c.args(["taskset", "-c", &cpu.to_string()]);
    }
    c.arg(program);
    c
}

/// The testbed, up while this lives; held under [`TESTBED_LOCK`] and torn
/// down on drop.
pub struct Testbed {
    repo: PathBuf,
    pub backends: usize,
    _lock: File,
}

impl Testbed {
    pub fn up(repo: &Path, backends: usize) -> Result<Self, HarnessError> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(TESTBED_LOCK)
            .map_err(|e| HarnessError::Io(TESTBED_LOCK.into(), e))?;
        eprintln!("harness: waiting for the testbed lock {TESTBED_LOCK}");
        lock.lock()
            .map_err(|e| HarnessError::Io(TESTBED_LOCK.into(), e))?;
        sh(Command::new(repo.join("scripts/testbed")).args([
            "up",
            "--backends",
            &backends.to_string(),
        ]))?;
        Ok(Testbed {
            repo: repo.to_owned(),
            backends,
            _lock: lock,
        })
    }

    /// `scripts/kube-proxy-peer ARGS`.
    pub fn peer(&self, args: &[&str]) -> Result<(), HarnessError> {
        sh(Command::new(self.repo.join("scripts/kube-proxy-peer")).args(args)).map(drop)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = Command::new(self.repo.join("scripts/testbed"))
            .arg("down")
            .output();
    }
}

/// A process started inside a namespace, stopped (SIGTERM, then SIGKILL
/// after five seconds) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self, HarnessError> {
        let out = File::create(&log).map_err(|e| HarnessError::Io(log.clone(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| HarnessError::Io(log.clone(), e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| HarnessError::Spawn(format!("{cmd:?}"), e))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle`; fails if the process exits or
    /// `timeout` passes first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(HarnessError::Exited(
                    self.name.clone(),
                    status.to_string(),
                    self.log_text(),
                ));
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout(self.name.clone(), self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails if the process has exited.
    pub fn alive(&mut self) -> Result<(), HarnessError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(HarnessError::Exited(
                self.name.clone(),
                status.to_string(),
                self.log_text(),
            )),
            _ => Ok(()),
        }
    }

    /// SIGTERM and wait (SIGKILL after five seconds); true if it exited
    /// by itself with success.
    pub fn stop(&mut self) -> bool {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.success();
        }
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `SCHED_IDLE` busy loop on the measured CPU for the whole run.
///
/// `/proc/stat` is sampled at the scheduler tick, and on a tickless
/// (`NO_HZ`) kernel without IRQ time accounting an idle CPU stops its tick:
/// softirq work done from the idle loop (the kernel peers' forwarding, the
/// `AF_PACKET` receive) is sampled unevenly or not at all. A loop that runs
/// only when nothing else wants the CPU keeps the tick going, so every tick
/// samples softirq, system and user time alike, and takes nothing from any
/// other task (every other policy preempts `SCHED_IDLE`).
pub fn tick_keeper(cpu: usize, log: PathBuf) -> Result<Proc, HarnessError> {
    let mut cmd = Command::new("chrt");
    cmd.args(["-i", "0", "taskset", "-c", &cpu.to_string()])
        .args(["sh", "-c", "while :; do :; done"]);
    Proc::spawn("tick keeper", cmd, log)
}

/// Jiffies of one CPU from `/proc/stat` (`USER_HZ`, 100 a second).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub user: u64,
    pub system: u64,
    pub softirq: u64,
    pub irq: u64,
    pub idle: u64,
}

/// `/proc/stat`'s clock: 100 ticks a second on every architecture Linux
/// exports it for.
pub const NS_PER_TICK: f64 = 10_000_000.0;

impl CpuTimes {
    pub fn read(cpu: usize) -> Result<Self, HarnessError> {
        let mut text = String::new();
        File::open("/proc/stat")
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|e| HarnessError::Io("/proc/stat".into(), e))?;
        let tag = format!("cpu{cpu} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&tag))
            .ok_or_else(|| HarnessError::Parse("/proc/stat".into(), format!("no {tag}line")))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        Ok(CpuTimes {
            user: at(0) + at(1),
            system: at(2),
            idle: at(3) + at(4),
            irq: at(5),
            softirq: at(6),
        })
    }

    /// Every field times `factor` (non-negative), rounded.
    #[allow(clippy::cast_sign_loss)] // clamped to zero first
    pub fn scaled(&self, factor: f64) -> CpuTimes {
        let f = |v: u64| (v as f64 * factor).max(0.0).round() as u64;
        CpuTimes {
            user: f(self.user),
            system: f(self.system),
            softirq: f(self.softirq),
            irq: f(self.irq),
            idle: f(self.idle),
        }
    }

    /// `self` less `other`, field by field, floored at zero.
    pub fn less(&self, other: &CpuTimes) -> CpuTimes {
        self.since(other)
    }

    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            irq: self.irq.saturating_sub(earlier.irq),
            idle: self.idle.saturating_sub(earlier.idle),
        }
    }
}

/// limpet's admin API inside `lp-lb`, fetched with python3 (a testbed
/// dependency already) since the harness itself lives outside the
/// namespace.
pub fn admin_get(path: &str) -> Result<String, HarnessError> {
    sh(Command::new("ip").args([
        "netns",
        "exec",
        LB_NS,
        "python3",
        "-c",
        &format!(
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9901{path}', timeout=5).read().decode())"
        ),
    ]))
}

/// The sum over workers of a metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// Makes `lp-lb`'s kernel resolve the backends' MAC addresses before
/// traffic arrives (kube-proxy nodes have them from earlier traffic): one
/// datagram to each backend's discard port.
pub fn resolve_backends(backends: usize) -> Result<(), HarnessError> {
    let ips: Vec<String> = (1..=backends)
        .map(|n| format!("'{}'", backend_ip(n)))
        .collect();
    sh(Command::new("ip").args([
        "netns",
        "exec",
        LB_NS,
        "python3",
        "-c",
        &format!(
            "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor ip in [{}]:\n    s.sendto(b'x', (ip, 9))\ntime.sleep(0.3)",
            ips.join(", ")
        ),
    ]))
    .map(drop)
}
