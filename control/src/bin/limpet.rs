//! The `limpet` command.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// limpet: a user-space L4 load balancer for Kubernetes Services, with
/// `sessionAffinity: ClientIP` at line rate.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the packet pipeline in memory on a built-in example Service:
    /// many clients open connections, each sticks to one backend; then one
    /// endpoint is removed and only its clients move. Needs no privileges.
    Demo {
        /// Number of client addresses (from 198.18.0.0/15).
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Number of backends (endpoints) behind the Service.
        #[arg(long, default_value_t = 3)]
        backends: usize,
        /// New connections each client opens before the endpoint is removed.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// The Service's `sessionAffinityConfig.clientIP.timeoutSeconds`.
        #[arg(long, default_value_t = 10800, value_parser = clap::value_parser!(u32).range(1..=86400))]
        timeout: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo {
            clients,
            backends,
            connections,
            timeout,
        } => {
            let config = limpet_control::demo::DemoConfig {
                clients,
                backends,
                connections,
                timeout,
            };
            match limpet_control::demo::run(&config) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("limpet demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
