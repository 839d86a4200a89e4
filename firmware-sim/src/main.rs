//! `medgate-sim`: the command line is in the library ([`medgate_sim::cli`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    medgate_sim::cli::main(std::env::args_os())
}
