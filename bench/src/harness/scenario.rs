//! The implementations under comparison and the measured steps they all go
//! through: the same pktgen traffic from `lp-client` (pinned to the
//! generator's CPU), one pktgen sink per backend namespace (on the same
//! CPU), and the load balancer's work on the measured CPU.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use limpet_pktgen::send::SendReport;
use limpet_pktgen::sink::SinkReport;

use crate::HarnessError;
use crate::testbed::{
    CLIENT_NS, CpuTimes, LB_MAC, LB_NS, NS_PER_TICK, Proc, Sched, TARGET_PORT, Testbed, VIP,
    admin_get, backend_ip, backend_mac, backend_ns, in_ns, metric, resolve_backends,
};

/// A load balancer on `lp-lb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Impl {
    /// limpet over `AF_PACKET`, one worker.
    Limpet,
    /// limpet over `AF_XDP`, one worker, its XDP program in the generic
    /// hook after RPS, so the program's cost lands on the LB CPU.
    #[serde(rename = "limpet-afxdp")]
    LimpetAfxdp,
    /// The kernel with kube-proxy's iptables rules (`xt_recent` affinity).
    Iptables,
    /// The kernel with kube-proxy's nftables rules (dynamic-set affinity).
    Nftables,
    /// `pktgen forward`: `AF_PACKET` receive, MAC rewrite, send.
    Floor,
}

impl Impl {
    pub const ALL: [Impl; 5] = [
        Impl::Limpet,
        Impl::LimpetAfxdp,
        Impl::Iptables,
        Impl::Nftables,
        Impl::Floor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Impl::Limpet => "limpet",
            Impl::LimpetAfxdp => "limpet-afxdp",
            Impl::Iptables => "iptables",
            Impl::Nftables => "nftables",
            Impl::Floor => "floor",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Impl::Limpet => {
                "limpet run --io afpacket:lb0 --workers 1 --idle wait --forward nat, pinned to the LB CPU (SCHED_FIFO); the kernel stack kept off lb0 (netdev ingress drop after AF_PACKET)"
            }
            Impl::LimpetAfxdp => {
                "limpet run --io afxdp:lb0 --xdp-mode generic --workers 1 --idle wait --forward nat, pinned to the LB CPU (SCHED_FIFO); its XDP program after RPS to the LB CPU (on a veth, native XDP would run on the sender's CPU, uncounted)"
            }
            Impl::Iptables => {
                "kernel forwarding, kube-proxy iptables rules (xt_recent ip_list_tot 100, statistic random), RPS to the LB CPU"
            }
            Impl::Nftables => {
                "kernel forwarding, kube-proxy nftables rules (dynamic timeout sets, numgen vmap), RPS to the LB CPU"
            }
            Impl::Floor => {
                "pktgen forward: AF_PACKET receive, MAC rewrite to a backend by client address, send; pinned to the LB CPU (SCHED_FIFO); the kernel stack kept off lb0"
            }
        }
    }

    /// Whether the CPU cost is the process's own busy-time accounting
    /// (user space over `AF_PACKET`) rather than the kernel's time.
    pub fn user_space(self) -> bool {
        matches!(self, Impl::Limpet | Impl::LimpetAfxdp | Impl::Floor)
    }
}

/// Where things run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Placement {
    /// The generator, the sinks, the bridge and the backends' receive work.
    pub generator_cpu: usize,
    /// The load balancer: limpet's worker, the floor, or the kernel's
    /// receive work for lb0 (RPS).
    pub lb_cpu: usize,
}

/// One measured send.
#[derive(Clone, Debug)]
pub struct Traffic {
    pub clients: usize,
    pub flows_per_client: usize,
    pub new_share: f64,
    /// Packets per second; `None` flat out.
    pub rate: Option<f64>,
    pub duration_s: Option<f64>,
    pub count: Option<u64>,
    pub size: usize,
    pub seed: u64,
}

/// What one step measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Measurement {
    pub offered_target_pps: Option<f64>,
    pub clients: usize,
    pub new_share: f64,
    pub sent: u64,
    pub send_elapsed_s: f64,
    /// Offered load as achieved by the generator.
    pub offered_pps: f64,
    /// Packets the backends received.
    pub delivered: u64,
    pub delivered_pps: f64,
    pub loss: f64,
    /// Clients whose every packet reached one backend, of those seen.
    pub sticky_share: Option<f64>,
    pub clients_seen: u64,
    pub clients_multi_backend: u64,
    pub latency_p50_ns: Option<u64>,
    pub latency_p99_ns: Option<u64>,
    /// LB CPU over the step, per delivered packet (ns): softirq, system,
    /// user, from `/proc/stat`, less the CPU's background (below).
    pub cpu_softirq_ns_per_packet: f64,
    pub cpu_system_ns_per_packet: f64,
    pub cpu_user_ns_per_packet: f64,
    /// limpet / floor only: their own busy time per received packet.
    pub busy_ns_per_packet: Option<f64>,
    pub packets_per_burst: Option<f64>,
    /// The figure compared across implementations: the kernel's
    /// softirq + system time per forwarded packet for the kernel peers, the
    /// process's own busy time per packet for limpet and the floor.
    pub cost_ns_per_packet: f64,
    /// What the LB CPU spent in softirq + system over a quiet second
    /// before the step, scaled to the step's length, per delivered packet:
    /// subtracted from the step's figures above.
    pub background_softirq_system_ns_per_packet: f64,
    /// Softirq + system per delivered packet before that subtraction.
    pub raw_softirq_system_ns_per_packet: f64,
    /// Every run's cost where the step was repeated (this one is the
    /// median).
    pub cost_ns_per_packet_runs: Vec<f64>,
}

/// One overload step: pktgen over DPDK's `net_af_xdp` on `sw-lb` (lb0's
/// bridge port) sends straight into lb0, so the one generator CPU offers
/// several times what the load balancer forwards; DPDK's XDP program on
/// sw-lb also takes what lb0 sends back, so the backends and sinks do no
/// work. Forwarded = lb0's TX packets.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OverloadMeasurement {
    /// The configuration measured (`--shed off`, `native`, ...), empty for
    /// the kernel peers.
    pub variant: String,
    /// lb0's receive work (RPS): on the LB CPU (`true`) or the other.
    pub receive_on_lb_cpu: bool,
    pub offered_target_pps: Option<f64>,
    pub sent: u64,
    pub offered_pps: f64,
    pub forwarded: u64,
    pub forwarded_pps: f64,
    /// Every run's forwarded packets per second (this one is the median).
    pub forwarded_pps_runs: Vec<f64>,
}

/// Busy-time counters of a user-space load balancer.
#[derive(Clone, Copy, Debug, Default)]
struct Busy {
    rx: f64,
    ns: f64,
    polls: f64,
}

/// A running implementation.
pub struct Running<'a> {
    pub which: Impl,
    bed: &'a Testbed,
    bins: &'a Path,
    work: PathBuf,
    placement: Placement,
    proc: Option<Proc>,
    config_dir: PathBuf,
    step: usize,
    /// limpet's `--io ...` arguments in place of its default ones.
    io_args: Option<Vec<String>>,
}

impl<'a> Running<'a> {
    pub fn start(
        which: Impl,
        bed: &'a Testbed,
        bins: &'a Path,
        work: &Path,
        placement: Placement,
    ) -> Result<Self, HarnessError> {
        let config_dir = work.join("limpet-config");
        let mut r = Running {
            which,
            bed,
            bins,
            work: work.to_owned(),
            placement,
            proc: None,
            config_dir,
            step: 0,
            io_args: None,
        };
        r.reset()?;
        Ok(r)
    }

    /// Fresh state: limpet restarted, the kernel's rules, conntrack table
    /// and affinity lists rebuilt. The floor has no state.
    pub fn reset(&mut self) -> Result<(), HarnessError> {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
        let n = self.bed.backends.to_string();
        match self.which {
            Impl::Limpet | Impl::LimpetAfxdp => {
                self.bed.peer(&["userspace"])?;
                self.write_config()?;
                self.start_limpet()?;
            }
            Impl::Iptables | Impl::Nftables => {
                self.bed
                    .peer(&[self.which.name(), "--backends", &n, "--proto", "udp"])?;
                resolve_backends(self.bed.backends)?;
            }
            Impl::Floor => self.bed.peer(&["userspace"])?,
        }
        self.steer()
    }

    fn steer(&self) -> Result<(), HarnessError> {
        self.bed.peer(&[
            "steer",
            &self.placement.lb_cpu.to_string(),
            &self.placement.generator_cpu.to_string(),
        ])
    }

    fn write_config(&self) -> Result<(), HarnessError> {
        std::fs::create_dir_all(&self.config_dir)
            .map_err(|e| HarnessError::Io(self.config_dir.clone(), e))?;
        let mut eps = String::new();
        for n in 1..=self.bed.backends {
            let _ = write!(
                eps,
                "- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n",
                backend_ip(n)
            );
        }
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: bench, namespace: default}}\nspec:\n  type: ClusterIP\n  clusterIP: 192.0.2.10\n  ports:\n  - {{name: udp, port: 80, protocol: UDP, targetPort: {TARGET_PORT}}}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 10800}}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: bench-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: bench}}\naddressType: IPv4\nendpoints:\n{eps}ports:\n- {{name: udp, port: {TARGET_PORT}, protocol: UDP}}\n"
        );
        let path = self.config_dir.join("bench.yaml");
        std::fs::write(&path, yaml).map_err(|e| HarnessError::Io(path, e))
    }

    fn start_limpet(&mut self) -> Result<(), HarnessError> {
        let mut cmd = in_ns(
            LB_NS,
            Some(self.placement.lb_cpu),
            Sched::Dedicated,
            &self.bins.join("limpet"),
        );
        let default: &[&str] = if self.which == Impl::LimpetAfxdp {
            &["--io", "afxdp:lb0", "--xdp-mode", "generic"]
        } else {
            // Without overload shedding: its XDP program would run in lb0's
            // driver hook, which on a veth is the sender's CPU, moving
            // receive work off the measured CPU. The overload steps run
            // both ways.
            &["--io", "afpacket:lb0", "--shed", "off"]
        };
        let io: Vec<String> = self
            .io_args
            .clone()
            .unwrap_or_else(|| default.iter().map(|a| (*a).to_owned()).collect());
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config_dir)
            .args(&io)
            .args([
                "--address",
                "203.0.113.1/24",
                "--forward",
                "nat",
                "--workers",
                "1",
                "--idle",
                "wait",
            ]);
        let mut p = Proc::spawn("limpet", cmd, self.work.join("limpet.log"))?;
        // Ready, and every backend's MAC resolved.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            p.alive()?;
            if let Ok(m) = admin_get("/metrics")
                && metric(&m, "limpet_neighbour_unresolved") == Some(0.0)
                && admin_get("/readyz").is_ok()
            {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(HarnessError::Timeout(
                    "limpet readiness".into(),
                    p.log_text(),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.proc = Some(p);
        Ok(())
    }

    fn start_floor(&mut self) -> Result<(), HarnessError> {
        let mut cmd = in_ns(
            LB_NS,
            Some(self.placement.lb_cpu),
            Sched::Dedicated,
            &self.bins.join("pktgen"),
        );
        cmd.args(["forward", "--iface", "lb0"]);
        for n in 1..=self.bed.backends {
            cmd.args(["--to", &backend_mac(n)]);
        }
        let json = self.work.join("floor.json");
        let _ = std::fs::remove_file(&json);
        cmd.arg("--json").arg(&json);
        let mut p = Proc::spawn("pktgen forward", cmd, self.work.join("floor.log"))?;
        p.wait_for("ready", Duration::from_secs(10))?;
        self.proc = Some(p);
        Ok(())
    }

    fn busy(&mut self) -> Result<Option<Busy>, HarnessError> {
        match self.which {
            Impl::Limpet | Impl::LimpetAfxdp => {
                if let Some(p) = &mut self.proc {
                    p.alive()?;
                }
                let m = admin_get("/metrics")?;
                let get = |n: &str| {
                    metric(&m, n).ok_or_else(|| {
                        HarnessError::Parse("limpet /metrics".into(), format!("no {n}"))
                    })
                };
                Ok(Some(Busy {
                    rx: get("limpet_rx_packets_total")?,
                    ns: get("limpet_busy_ns_total")?,
                    polls: get("limpet_busy_polls_total")?,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Stops the floor and reads its counters.
    fn floor_busy(&mut self) -> Result<Busy, HarnessError> {
        let mut p = self
            .proc
            .take()
            .ok_or_else(|| HarnessError::Parse("floor".into(), "not running".into()))?;
        p.stop();
        let json = self.work.join("floor.json");
        let v: serde_json::Value = read_json(&json)?;
        let s = &v["stats"];
        let get = |k: &str| s[k].as_f64().unwrap_or(0.0);
        Ok(Busy {
            rx: get("rx_packets"),
            ns: get("busy_ns"),
            polls: get("busy_polls"),
        })
    }

    fn start_sinks(&self, stamp: bool) -> Result<Vec<(Proc, PathBuf)>, HarnessError> {
        let mut sinks = Vec::new();
        for n in 1..=self.bed.backends {
            let json = self.work.join(format!("sink-{n}.json"));
            let _ = std::fs::remove_file(&json);
            let mut cmd = in_ns(
                &backend_ns(n),
                Some(self.placement.generator_cpu),
                Sched::Normal,
                &self.bins.join("pktgen"),
            );
            cmd.args(["sink", "--iface", &format!("eth0=be{n}"), "--proto", "udp"]);
            if stamp {
                cmd.arg("--stamp");
            }
            cmd.arg("--json").arg(&json);
            let mut p = Proc::spawn(
                &format!("sink be{n}"),
                cmd,
                self.work.join(format!("sink-{n}.log")),
            )?;
            p.wait_for("ready", Duration::from_secs(10))?;
            sinks.push((p, json));
        }
        Ok(sinks)
    }

    fn send(&self, t: &Traffic, stamp: bool) -> Result<SendReport, HarnessError> {
        let json = self.work.join("send.json");
        let _ = std::fs::remove_file(&json);
        let mut cmd = self.generator(CLIENT_NS);
        cmd.args([
            "send",
            "--iface",
            "cl0",
            "--dst-mac",
            LB_MAC,
            "--vip",
            VIP,
            "--proto",
            "udp",
        ])
        .args(["--clients", &t.clients.to_string()])
        .args(["--flows-per-client", &t.flows_per_client.to_string()])
        .args(["--size", &t.size.to_string()])
        .args(["--new-share", &t.new_share.to_string()])
        .args(["--seed", &t.seed.to_string()]);
        match t.rate {
            Some(r) => cmd.args(["--rate", &r.to_string()]),
            None => cmd.arg("--flat-out"),
        };
        if let Some(d) = t.duration_s {
            cmd.args(["--duration", &d.to_string()]);
        }
        if let Some(c) = t.count {
            cmd.args(["--count", &c.to_string()]);
        }
        if stamp {
            cmd.arg("--stamp");
        }
        cmd.arg("--json").arg(&json);
        crate::testbed::sh(&mut cmd)?;
        read_json(&json)
    }

    /// `pktgen` in namespace `ns` on the generator's CPU.
    fn generator(&self, ns: &str) -> std::process::Command {
        in_ns(
            ns,
            Some(self.placement.generator_cpu),
            Sched::Normal,
            &self.bins.join("pktgen"),
        )
    }

    /// Sends `t` without measuring (warm-up: flows, conntrack entries,
    /// affinity state in place).
    pub fn warm(&mut self, t: &Traffic) -> Result<(), HarnessError> {
        self.send(t, false).map(drop)
    }

    /// One measured step.
    pub fn measure(&mut self, t: &Traffic) -> Result<Measurement, HarnessError> {
        self.step += 1;
        if self.which == Impl::Floor {
            self.start_floor()?;
        }
        // The LB CPU's background (other work on a shared machine, timers)
        // over a quiet second, subtracted pro rata from the step's.
        let quiet_start = (Instant::now(), CpuTimes::read(self.placement.lb_cpu)?);
        std::thread::sleep(Duration::from_secs(1));
        let quiet = CpuTimes::read(self.placement.lb_cpu)?.since(&quiet_start.1);
        let quiet_s = quiet_start.0.elapsed().as_secs_f64();
        let sinks = self.start_sinks(true)?;
        let busy_before = self.busy()?;
        let step_start = Instant::now();
        let cpu_before = CpuTimes::read(self.placement.lb_cpu)?;
        let sent = self.send(t, true)?;
        // Let the last frames drain through the load balancer and sinks.
        std::thread::sleep(Duration::from_millis(300));
        let cpu = CpuTimes::read(self.placement.lb_cpu)?.since(&cpu_before);
        let background = quiet.scaled(step_start.elapsed().as_secs_f64() / quiet_s);
        let busy = match (self.which, busy_before) {
            (Impl::Floor, _) => Some(self.floor_busy()?),
            (_, Some(before)) => self.busy()?.map(|after| Busy {
                rx: after.rx - before.rx,
                ns: after.ns - before.ns,
                polls: after.polls - before.polls,
            }),
            _ => None,
        };
        let mut reports = Vec::new();
        for (mut p, json) in sinks {
            p.stop();
            reports.push(read_json::<SinkReport>(&json)?);
        }
        let sink = SinkReport::merge(&reports);
        Ok(summarise(
            self.which,
            t,
            &sent,
            &sink,
            &cpu,
            &background,
            busy,
        ))
    }

    /// The configurations the overload steps measure, as (label, limpet's
    /// `--io ...` arguments): limpet over `AF_PACKET` without and with
    /// overload shedding, over `AF_XDP` in the generic hook and in the
    /// driver; the kernel peers as they are.
    pub fn overload_variants(&self) -> Vec<(&'static str, Option<Vec<String>>)> {
        let args = |a: &[&str]| Some(a.iter().map(|s| (*s).to_owned()).collect());
        match self.which {
            Impl::Limpet => vec![
                (
                    "--shed off",
                    args(&["--io", "afpacket:lb0", "--shed", "off"]),
                ),
                (
                    "--shed auto",
                    args(&["--io", "afpacket:lb0", "--shed", "auto"]),
                ),
            ],
            Impl::LimpetAfxdp => vec![
                (
                    "generic",
                    args(&["--io", "afxdp:lb0", "--xdp-mode", "generic"]),
                ),
                (
                    "native",
                    args(&["--io", "afxdp:lb0", "--xdp-mode", "native"]),
                ),
            ],
            Impl::Iptables | Impl::Nftables | Impl::Floor => vec![("", None)],
        }
    }

    /// Restarts with fresh state in the configuration `io_args` names
    /// (`None`: the default).
    pub fn reconfigure(&mut self, io_args: Option<Vec<String>>) -> Result<(), HarnessError> {
        self.io_args = io_args;
        self.reset()
    }

    /// One overload step (see [`OverloadMeasurement`]).
    pub fn overload(
        &mut self,
        rate: Option<f64>,
        seconds: f64,
        clients: usize,
        receive_on_lb_cpu: bool,
    ) -> Result<OverloadMeasurement, HarnessError> {
        let rx_cpu = if receive_on_lb_cpu {
            self.placement.lb_cpu
        } else {
            self.placement.generator_cpu
        };
        self.bed.peer(&[
            "steer",
            &rx_cpu.to_string(),
            &self.placement.generator_cpu.to_string(),
        ])?;
        if !self.which.user_space() {
            // DPDK's program on sw-lb takes lb0's ARP probes too: the
            // kernel keeps its backends' addresses as limpet does.
            for n in 1..=self.bed.backends {
                crate::testbed::sh(std::process::Command::new("ip").args([
                    "-n",
                    LB_NS,
                    "neigh",
                    "replace",
                    &backend_ip(n),
                    "lladdr",
                    &backend_mac(n),
                    "nud",
                    "permanent",
                    "dev",
                    "lb0",
                ]))?;
            }
        }
        if let Some(p) = &mut self.proc {
            p.alive()?;
        }
        let json = self.work.join("overload.json");
        let _ = std::fs::remove_file(&json);
        let mut cmd = self.generator(crate::testbed::SWITCH_NS);
        cmd.args([
            "send",
            "--io",
            "dpdk",
            "--vdev",
            "net_af_xdp0,iface=sw-lb",
            "--iface",
            "net_af_xdp0",
            "--dpdk-cpu",
            &self.placement.generator_cpu.to_string(),
            "--dst-mac",
            LB_MAC,
            "--vip",
            VIP,
            "--proto",
            "udp",
            "--clients",
            &clients.to_string(),
            "--duration",
            &seconds.to_string(),
        ]);
        match rate {
            Some(r) => cmd.args(["--rate", &r.to_string()]),
            None => cmd.arg("--flat-out"),
        };
        cmd.arg("--json").arg(&json);
        let before = lb0_tx_packets()?;
        crate::testbed::sh(&mut cmd)?;
        std::thread::sleep(Duration::from_millis(300));
        let forwarded = lb0_tx_packets()?.saturating_sub(before);
        if let Some(p) = &mut self.proc {
            p.alive()?;
        }
        self.steer()?;
        let sent: SendReport = read_json(&json)?;
        Ok(OverloadMeasurement {
            variant: String::new(),
            receive_on_lb_cpu,
            offered_target_pps: rate,
            sent: sent.sent,
            offered_pps: sent.pps,
            forwarded,
            forwarded_pps: per_second(forwarded, sent.elapsed_s),
            forwarded_pps_runs: Vec::new(),
        })
    }

    pub fn stop(mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
}

/// A JSON report a pktgen process wrote.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, HarnessError> {
    let text = std::fs::read_to_string(path).map_err(|e| HarnessError::Io(path.to_owned(), e))?;
    serde_json::from_str(&text)
        .map_err(|e| HarnessError::Parse(path.display().to_string(), e.to_string()))
}

fn per_second(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

/// Frames lb0 has sent (`/sys/class/net/lb0/statistics/tx_packets` in
/// lp-lb): what any implementation forwarded, since all of them forward
/// out of lb0.
fn lb0_tx_packets() -> Result<u64, HarnessError> {
    let out = crate::testbed::sh(std::process::Command::new("ip").args([
        "netns",
        "exec",
        LB_NS,
        "cat",
        "/sys/class/net/lb0/statistics/tx_packets",
    ]))?;
    out.trim()
        .parse()
        .map_err(|e| HarnessError::Parse("lb0 tx_packets".into(), format!("{e}: {out:?}")))
}

fn summarise(
    which: Impl,
    t: &Traffic,
    sent: &SendReport,
    sink: &SinkReport,
    cpu: &CpuTimes,
    background: &CpuTimes,
    busy: Option<Busy>,
) -> Measurement {
    let delivered = sink.packets;
    let per = |ticks: u64| {
        if delivered == 0 {
            0.0
        } else {
            ticks as f64 * NS_PER_TICK / delivered as f64
        }
    };
    let raw = per(cpu.softirq + cpu.system);
    let cpu = cpu.less(background);
    let busy_ns_per_packet = busy.map(|b| if b.rx > 0.0 { b.ns / b.rx } else { 0.0 });
    let packets_per_burst = busy.map(|b| if b.polls > 0.0 { b.rx / b.polls } else { 0.0 });
    let softirq = per(cpu.softirq);
    let system = per(cpu.system);
    let cost = if which.user_space() {
        busy_ns_per_packet.unwrap_or(0.0)
    } else {
        softirq + system
    };
    Measurement {
        offered_target_pps: t.rate,
        clients: t.clients,
        new_share: t.new_share,
        sent: sent.sent,
        send_elapsed_s: sent.elapsed_s,
        offered_pps: sent.pps,
        delivered,
        delivered_pps: per_second(delivered, sent.elapsed_s),
        loss: if sent.sent == 0 {
            0.0
        } else {
            1.0 - (delivered as f64 / sent.sent as f64).min(1.0)
        },
        sticky_share: sink.sticky_share,
        clients_seen: sink.clients,
        clients_multi_backend: sink.clients_multi_backend,
        latency_p50_ns: sink.latency.map(|l| l.p50_ns),
        latency_p99_ns: sink.latency.map(|l| l.p99_ns),
        cpu_softirq_ns_per_packet: softirq,
        cpu_system_ns_per_packet: system,
        cpu_user_ns_per_packet: per(cpu.user),
        busy_ns_per_packet,
        packets_per_burst,
        cost_ns_per_packet: cost,
        background_softirq_system_ns_per_packet: per(background.softirq + background.system),
        raw_softirq_system_ns_per_packet: raw,
        cost_ns_per_packet_runs: Vec::new(),
    }
}
