//! `limpet-harness`: limpet side by side with kube-proxy's kernel
//! dataplanes (iptables with `xt_recent`, nftables with dynamic sets) and a
//! floor (`AF_PACKET` receive, MAC rewrite, send) on the `lp-*` testbed,
//! through the same scenarios:
//!
//! - forwarded packets per second and loss at rising offered load, with
//!   p50/p99 latency and CPU per forwarded packet at each step;
//! - the share of clients that stayed sticky at 100 ... 100,000 clients;
//! - new connections per second;
//!
//! and limpet's in-memory pipeline figures (`limpet-bench`) beside them.
//! Writes `<out>/<date>.json`, `<out>/<date>.md` and SVG plots.
//!
//! Needs root (network namespaces); holds the testbed lock for the whole
//! run. `scripts/bench-compare` builds the binaries and runs it.

mod plot;
mod report;
mod scenario;
mod testbed;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use serde::Serialize;

use scenario::{Impl, Measurement, OverloadMeasurement, Placement, Running, Traffic};
use testbed::Testbed;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("starting {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("{0} failed:\n{1}")]
    Command(String, String),
    #[error("{0} exited ({1}):\n{2}")]
    Exited(String, String, String),
    #[error("{0}: timed out; output:\n{1}")]
    Timeout(String, String),
    #[error("{0}: {1}")]
    Parse(String, String),
    #[error("plotting {0}: {1}")]
    Plot(PathBuf, String),
    #[error("{0}")]
    Usage(String),
}

#[allow(clippy::struct_excessive_bools)] // command-line switches
#[derive(Parser, Debug)]
#[command(
    name = "limpet-harness",
    about = "limpet beside kube-proxy's kernel dataplanes and a floor, on the lp-* testbed"
)]
struct Cli {
    /// Where the report goes (`<date>.json`, `<date>.md`, `<date>-*.svg`).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Report file stem; default the UTC date and time.
    #[arg(long)]
    name: Option<String>,
    /// Directory holding the `limpet`, `pktgen` and `limpet-bench`
    /// binaries; default this binary's own.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Implementations to run (repeatable); default all.
    #[arg(long = "impl", value_enum)]
    impls: Vec<Impl>,
    /// A short run: a few thousand packets per step, 100 clients.
    #[arg(long)]
    smoke: bool,
    /// Leave out limpet's in-memory pipeline figures (`limpet-bench`).
    #[arg(long)]
    no_pipeline: bool,
    /// `limpet-bench --quick` sizes for the pipeline figures.
    #[arg(long)]
    pipeline_quick: bool,
    /// CPU of the generator, sinks, bridge and backends.
    #[arg(long, default_value_t = 0)]
    generator_cpu: usize,
    /// CPU of the load balancer's work (the measured CPU).
    #[arg(long, default_value_t = 1)]
    lb_cpu: usize,
    #[arg(long, default_value_t = 3)]
    backends: usize,
    /// Seconds per load step.
    #[arg(long, default_value_t = 3.0)]
    step_seconds: f64,
    /// Clients in the load and latency steps.
    #[arg(long, default_value_t = 100_000)]
    load_clients: usize,
    /// Offered loads (packets per second) of the load steps, comma
    /// separated; a flat-out step follows.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "25000,50000,100000,200000,400000"
    )]
    rates: Vec<f64>,
    /// Runs of each load and new-connection step (the median CPU cost is
    /// reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Offered loads of the overload steps (packets per second, comma
    /// separated; a flat-out step follows), sent by pktgen over DPDK's
    /// `net_af_xdp` straight into lb0 (pktgen built with `--features
    /// dpdk`), with lb0's receive work on the LB CPU and on the other.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100000,200000,400000,800000"
    )]
    overload_rates: Vec<f64>,
    /// Leave out the overload steps.
    #[arg(long)]
    no_overload: bool,
}

/// Everything one run sends.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub backends: usize,
    pub size: usize,
    pub load_clients: usize,
    pub load_rates: Vec<Option<f64>>,
    pub step_seconds: f64,
    pub sticky_clients: Vec<usize>,
    pub sticky_flows_per_client: usize,
    pub sticky_rate: f64,
    pub new_conn_clients: usize,
    pub new_conn_rates: Vec<Option<f64>>,
    pub new_conn_seconds: f64,
    /// The load step whose latency and CPU the summary shows.
    pub reference_rate: f64,
    /// Runs of each load and new-connection step; the median is kept.
    pub repeats: usize,
    /// Offered loads of the overload steps (`None`: flat out); empty: none.
    pub overload_rates: Vec<Option<f64>>,
    pub overload_seconds: f64,
}

impl Plan {
    fn of(cli: &Cli) -> Plan {
        if cli.smoke {
            return Plan {
                backends: cli.backends,
                size: 64,
                load_clients: 100,
                load_rates: vec![Some(5_000.0)],
                step_seconds: 0.6,
                sticky_clients: vec![100],
                sticky_flows_per_client: 2,
                sticky_rate: 5_000.0,
                new_conn_clients: 100,
                new_conn_rates: vec![Some(5_000.0)],
                new_conn_seconds: 0.4,
                reference_rate: 5_000.0,
                repeats: 1,
                // The smoke run checks delivery; its pktgen has no DPDK.
                overload_rates: Vec::new(),
                overload_seconds: 0.0,
            };
        }
        let mut load_rates: Vec<Option<f64>> = cli.rates.iter().copied().map(Some).collect();
        load_rates.push(None);
        Plan {
            backends: cli.backends,
            size: 64,
            load_clients: cli.load_clients,
            load_rates,
            step_seconds: cli.step_seconds,
            sticky_clients: vec![100, 1_000, 10_000, 100_000],
            sticky_flows_per_client: 2,
            sticky_rate: 100_000.0,
            new_conn_clients: 1_000,
            new_conn_rates: vec![Some(50_000.0), Some(100_000.0), None],
            new_conn_seconds: 1.0,
            reference_rate: 100_000.0,
            repeats: cli.repeats,
            overload_rates: if cli.no_overload {
                Vec::new()
            } else {
                let mut r: Vec<Option<f64>> =
                    cli.overload_rates.iter().copied().map(Some).collect();
                r.push(None);
                r
            },
            overload_seconds: cli.step_seconds,
        }
    }
}

/// One implementation's results.
#[derive(Clone, Debug, Serialize)]
pub struct ImplResult {
    pub name: &'static str,
    pub describe: &'static str,
    pub load: Vec<Measurement>,
    pub sticky: Vec<Measurement>,
    pub new_connections: Vec<Measurement>,
    pub overload: Vec<OverloadMeasurement>,
    pub error: Option<String>,
}

fn run_impl(
    which: Impl,
    bed: &Testbed,
    bins: &Path,
    work: &Path,
    placement: Placement,
    plan: &Plan,
) -> Result<ImplResult, HarnessError> {
    let mut res = ImplResult {
        name: which.name(),
        describe: which.describe(),
        load: Vec::new(),
        sticky: Vec::new(),
        new_connections: Vec::new(),
        overload: Vec::new(),
        error: None,
    };
    let base = Traffic {
        clients: plan.load_clients,
        flows_per_client: 1,
        new_share: 0.0,
        rate: None,
        duration_s: None,
        count: None,
        size: plan.size,
        seed: 1,
    };
    let mut lb = Running::start(which, bed, bins, work, placement)?;
    // Load: every flow set up once, then rising offered load.
    let lowest = plan
        .load_rates
        .iter()
        .flatten()
        .copied()
        .fold(f64::MAX, f64::min);
    lb.warm(&Traffic {
        rate: Some(lowest),
        count: Some(plan.load_clients as u64),
        ..base.clone()
    })?;
    for &rate in &plan.load_rates {
        let t = Traffic {
            rate,
            duration_s: Some(plan.step_seconds),
            ..base.clone()
        };
        let m = median_of(plan.repeats, || lb.measure(&t))?;
        eprintln!("harness: {} load {}", which.name(), report::brief(&m));
        res.load.push(m);
    }
    // Stickiness: fresh state, every client opening several connections.
    for &clients in &plan.sticky_clients {
        lb.reset()?;
        let flows = plan.sticky_flows_per_client;
        let count = ((clients * flows * 2) as u64).max(2_000);
        let m = lb.measure(&Traffic {
            clients,
            flows_per_client: flows,
            rate: Some(plan.sticky_rate),
            count: Some(count),
            seed: 2,
            ..base.clone()
        })?;
        eprintln!("harness: {} sticky {}", which.name(), report::brief(&m));
        res.sticky.push(m);
    }
    // New connections: every packet opens one (fresh source port).
    for &rate in &plan.new_conn_rates {
        let t = Traffic {
            clients: plan.new_conn_clients,
            new_share: 1.0,
            rate,
            duration_s: Some(plan.new_conn_seconds),
            seed: 3,
            ..base.clone()
        };
        let m = median_of(plan.repeats, || {
            lb.reset()?;
            lb.measure(&t)
        })?;
        eprintln!(
            "harness: {} new connections {}",
            which.name(),
            report::brief(&m)
        );
        res.new_connections.push(m);
    }
    // Overload: every configuration, receive work on the LB CPU and off it.
    if !plan.overload_rates.is_empty() && which != Impl::Floor {
        for (variant, io_args) in lb.overload_variants() {
            lb.reconfigure(io_args)?;
            for on_lb in [true, false] {
                for &rate in &plan.overload_rates {
                    let mut m = median_overload(plan.repeats, || {
                        lb.overload(rate, plan.overload_seconds, plan.load_clients, on_lb)
                    })?;
                    variant.clone_into(&mut m.variant);
                    eprintln!(
                        "harness: {} {variant} overload (receive work {}): offered {:.0} pps, forwarded {:.0} pps",
                        which.name(),
                        if on_lb { "on the LB CPU" } else { "elsewhere" },
                        m.offered_pps,
                        m.forwarded_pps
                    );
                    res.overload.push(m);
                }
            }
        }
    }
    lb.stop();
    Ok(res)
}

/// Runs a step `n` times and keeps the run with the median CPU cost per
/// packet (other work on a shared machine lands on some runs, not all),
/// with every run's cost beside it.
fn median_of(
    n: usize,
    mut step: impl FnMut() -> Result<Measurement, HarnessError>,
) -> Result<Measurement, HarnessError> {
    let mut runs = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        runs.push(step()?);
    }
    let costs: Vec<f64> = runs.iter().map(|m| m.cost_ns_per_packet).collect();
    runs.sort_by(|a, b| a.cost_ns_per_packet.total_cmp(&b.cost_ns_per_packet));
    let mut m = runs.swap_remove(runs.len() / 2);
    m.cost_ns_per_packet_runs = costs;
    Ok(m)
}

/// Runs an overload step `n` times and keeps the run with the median
/// forwarded rate, with every run's beside it.
fn median_overload(
    n: usize,
    mut step: impl FnMut() -> Result<OverloadMeasurement, HarnessError>,
) -> Result<OverloadMeasurement, HarnessError> {
    let mut runs = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        runs.push(step()?);
    }
    let all: Vec<f64> = runs.iter().map(|m| m.forwarded_pps).collect();
    runs.sort_by(|a, b| a.forwarded_pps.total_cmp(&b.forwarded_pps));
    let mut m = runs.swap_remove(runs.len() / 2);
    m.forwarded_pps_runs = all;
    Ok(m)
}

/// limpet's in-memory pipeline figures: `limpet-bench`'s JSON lines.
fn pipeline(bins: &Path, quick: bool) -> Result<Vec<serde_json::Value>, HarnessError> {
    let mut cmd = std::process::Command::new(bins.join("limpet-bench"));
    if quick {
        cmd.arg("--quick");
    }
    eprintln!("harness: running {cmd:?}");
    let out = testbed::sh(&mut cmd)?;
    out.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| HarnessError::Parse("limpet-bench".into(), e.to_string()))
        })
        .collect()
}

fn must_be_root() -> Result<(), HarnessError> {
    let uid = testbed::sh(std::process::Command::new("id").arg("-u"))?;
    if uid.trim() == "0" {
        Ok(())
    } else {
        Err(HarnessError::Usage(
            "limpet-harness builds network namespaces and needs root: run `sudo scripts/bench-compare`"
                .into(),
        ))
    }
}

fn run(cli: &Cli) -> Result<PathBuf, HarnessError> {
    must_be_root()?;
    let bins = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .ok_or_else(|| {
                HarnessError::Usage("cannot tell where the binaries are; pass --bin-dir".into())
            })?,
    };
    let mut needed = vec!["limpet", "pktgen"];
    if !cli.no_pipeline {
        needed.push("limpet-bench");
    }
    for b in needed {
        if !bins.join(b).is_file() {
            return Err(HarnessError::Usage(format!(
                "{} not found: build it (cargo build --release --bins) or pass --bin-dir",
                bins.join(b).display()
            )));
        }
    }
    if cli.generator_cpu == cli.lb_cpu {
        return Err(HarnessError::Usage(
            "--generator-cpu and --lb-cpu must differ".into(),
        ));
    }
    let impls = if cli.impls.is_empty() {
        Impl::ALL.to_vec()
    } else {
        cli.impls.clone()
    };
    let plan = Plan::of(cli);
    let placement = Placement {
        generator_cpu: cli.generator_cpu,
        lb_cpu: cli.lb_cpu,
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::create_dir_all(&cli.out).map_err(|e| HarnessError::Io(cli.out.clone(), e))?;
    let work = std::env::temp_dir().join(format!("limpet-harness-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| HarnessError::Io(work.clone(), e))?;
    let name = cli.name.clone().unwrap_or_else(report::utc_stamp);
    let started = report::Host::read();

    let pipeline = if cli.no_pipeline {
        Vec::new()
    } else {
        pipeline(&bins, cli.pipeline_quick)?
    };

    let mut results = Vec::new();
    {
        let bed = Testbed::up(&repo, cli.backends)?;
        let _keeper = testbed::tick_keeper(cli.lb_cpu, work.join("tick-keeper.log"))?;
        for which in impls {
            eprintln!("harness: == {} ({})", which.name(), which.describe());
            match run_impl(which, &bed, &bins, &work, placement, &plan) {
                Ok(r) => results.push(r),
                Err(e) => {
                    eprintln!("harness: {} failed: {e}", which.name());
                    results.push(ImplResult {
                        name: which.name(),
                        describe: which.describe(),
                        load: Vec::new(),
                        sticky: Vec::new(),
                        new_connections: Vec::new(),
                        overload: Vec::new(),
                        error: Some(e.to_string()),
                    });
                }
            }
        }
        let _ = bed.peer(&["off"]);
    }
    let _ = std::fs::remove_dir_all(&work);
    let doc = report::Report {
        name: name.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        host_before: started,
        host_after: report::Host::read(),
        placement,
        plan,
        implementations: results,
        pipeline,
    };
    doc.write(&cli.out)?;
    plot::all(&doc, &cli.out)?;
    if let Some(failed) = doc.implementations.iter().find(|r| r.error.is_some()) {
        return Err(HarnessError::Usage(format!(
            "{} failed (report written to {}): {}",
            failed.name,
            cli.out.display(),
            failed.error.as_deref().unwrap_or_default()
        )));
    }
    Ok(cli.out.join(format!("{name}.md")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(md) => {
            if let Ok(text) = std::fs::read_to_string(&md) {
                println!("{text}");
            }
            eprintln!("harness: report {}", md.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("limpet-harness: {e}");
            ExitCode::FAILURE
        }
    }
}
