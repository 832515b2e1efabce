//! The `ringfence` binary: serve a node, drive it as a client, and inspect or replay journals.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ringfence — an exchange-grade flash-sale engine: one deterministic business-logic thread,
/// a lock-free ring, a memory-mapped journal and a hot standby.
#[derive(Parser, Debug)]
#[command(name = "ringfence", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Subcommand, Debug)]
enum TopCommand {
    /// Print the engine's default capacities and limits.
    Defaults,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        TopCommand::Defaults => {
            println!("{:#?}", ringfence_core::EngineConfig::default());
            ExitCode::SUCCESS
        }
    }
}
