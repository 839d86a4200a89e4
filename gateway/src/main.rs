//! `medgate-gateway`: the command line is in the library ([`medgate_gateway::cli`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    medgate_gateway::cli::main(std::env::args_os())
}
