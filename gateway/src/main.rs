//! `medgate-gateway`: command-line entry point. The daemon's subcommands
//! (`run`, `check-config`, `print-default-config`) arrive with the gateway
//! issue; until then this binary only identifies itself.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "medgate-gateway",
    version = medgate_gateway::VERSION,
    about = "medgate edge gateway (skeleton: the daemon is not built yet)"
)]
struct Cli {}

fn main() {
    let Cli {} = Cli::parse();
    println!(
        "medgate-gateway {}: the daemon is not part of this build yet",
        medgate_gateway::VERSION
    );
}
