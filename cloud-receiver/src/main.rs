//! `medgate-receiver`: command-line entry point.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use medgate_shared::keys::DEFAULT_RSA_BITS;

#[derive(Parser)]
#[command(name = "medgate-receiver", version, about = "medgate cloud receiver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the receiver key pair: DIR/receiver.pem (0600) and DIR/receiver.pub.pem.
    Keygen {
        /// Folder for the two files (created if missing; existing keys are never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// RSA modulus size.
        #[arg(long, default_value_t = DEFAULT_RSA_BITS)]
        bits: usize,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Keygen { out, bits } => match medgate_receiver::keys::generate(&out, bits) {
            Ok((private, public)) => {
                println!(
                    "private key: {} (mode 0600; never leaves the receiver)",
                    private.display()
                );
                println!(
                    "public key:  {} (install on every gateway)",
                    public.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("medgate-receiver: error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
