//! `medgate-receiver`: the command line is in the library ([`medgate_receiver::cli`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    medgate_receiver::cli::main(std::env::args_os())
}
