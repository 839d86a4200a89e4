//! The `medgate-gateway` command line: parses it, sets up logging, loads the
//! config and runs the service. In the library so that the simulator's load
//! generator can run the very same gateway process (`medgate-sim gateway …`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::{config, service};
use clap::{Parser, Subcommand};
use medgate_shared::service::{logging, signals};

/// Exit status for a configuration error (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(name = "medgate-gateway", version = crate::VERSION, about = "medgate edge gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: capture, seal, spool, publish, route results.
    Run {
        /// The configuration file (see `print-default-config`).
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a configuration file: exit 0, or 78 with the file, key and reason.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Print the shipped, commented configuration to start from.
    PrintDefaultConfig,
}

/// Runs the command line `args` (the program's name first) and returns the
/// process's exit status.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    logging::init("info");
    match Cli::parse_from(args).command {
        Command::Run { config } => serve(&config),
        Command::CheckConfig { file } => match config::load(&file) {
            Ok(settings) => {
                println!(
                    "{}: ok (gateway {}/{}, broker {}:{}, {} hot folder(s), {} SPI sensor(s))",
                    file.display(),
                    settings.site,
                    settings.name,
                    settings.mqtt.host,
                    settings.mqtt.port,
                    settings.hot_folders.len(),
                    settings.spi_sensors.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("medgate-gateway: config error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::PrintDefaultConfig => {
            print!("{}", config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
    }
}

fn serve(file: &Path) -> ExitCode {
    logging::exit_on_panic();
    let settings = match config::load(file) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("medgate-gateway: config error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Two worker threads and a small blocking pool (sealing, fsync, file
    // reads): enough for a Pi-class box, and each thread costs memory.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("medgate-gateway: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service::run(settings, signals::terminated(), None)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medgate-gateway: error: {e}");
            ExitCode::FAILURE
        }
    }
}
