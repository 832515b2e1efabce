//! The `ringfence` binary: serve a node, drive it as a client, and inspect or replay journals.

use clap::Parser;

/// ringfence — an exchange-grade flash-sale engine.
#[derive(Parser, Debug)]
#[command(name = "ringfence", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
