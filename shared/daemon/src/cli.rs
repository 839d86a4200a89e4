//! The command-line skeleton of a medgate daemon: the subcommands every
//! daemon has (`run --config FILE`, `check-config FILE`,
//! `print-default-config`), what they print and their exit codes, so that
//! the gateway and the receiver answer a field technician the same way.
//! Each program adds its own subcommands beside [`DaemonCommand`] and
//! describes itself through [`Daemon`].

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::settings::SettingsError;
use crate::{logging, signals};

/// Exit status for a configuration error (EX_CONFIG of sysexits.h; the
/// systemd units do not restart a daemon that exits with it).
pub const EXIT_CONFIG: u8 = 78;

/// The subcommands every daemon has; flatten it into the program's own
/// subcommand enum.
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Run the service until SIGTERM or Ctrl-C.
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

/// A daemon as its command line sees it.
pub trait Daemon {
    /// The program's name, as error messages start with it.
    const PROGRAM: &'static str;
    /// The shipped, commented configuration.
    const DEFAULT_CONFIG: &'static str;
    /// Its checked configuration.
    type Settings;
    /// Why its service stopped with an error.
    type Error: Display;

    /// Reads and checks a configuration file.
    ///
    /// # Errors
    /// [`SettingsError`] naming the file, the key and the reason.
    fn load(file: &Path) -> Result<Self::Settings, SettingsError>;

    /// One line for `check-config`, after the file name and "ok".
    fn summary(settings: &Self::Settings) -> String;

    /// Settings that work but will refuse some inputs; `check-config`
    /// prints each as a warning (and still succeeds).
    fn warnings(_settings: &Self::Settings) -> Vec<String> {
        Vec::new()
    }

    /// The async runtime the service runs on.
    ///
    /// # Errors
    /// If the runtime cannot start.
    fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }

    /// The service, until `shutdown` completes.
    fn serve(
        settings: Self::Settings,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = Result<(), Self::Error>>;
}

/// Runs one of the common subcommands of daemon `D` and returns the
/// process's exit status.
pub fn execute<D: Daemon>(command: DaemonCommand) -> ExitCode {
    match command {
        DaemonCommand::Run { config } => serve::<D>(&config),
        DaemonCommand::CheckConfig { file } => match D::load(&file) {
            Ok(settings) => {
                for warning in D::warnings(&settings) {
                    eprintln!("{}: warning: {}: {warning}", D::PROGRAM, file.display());
                }
                println!("{}: ok ({})", file.display(), D::summary(&settings));
                ExitCode::SUCCESS
            }
            Err(e) => config_error::<D>(&e),
        },
        DaemonCommand::PrintDefaultConfig => {
            print!("{}", D::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
    }
}

/// `run --config FILE`: the service until SIGTERM or SIGINT; a panic in any
/// thread ends the process.
fn serve<D: Daemon>(file: &Path) -> ExitCode {
    logging::exit_on_panic();
    let settings = match D::load(file) {
        Ok(settings) => settings,
        Err(e) => return config_error::<D>(&e),
    };
    let runtime = match D::runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{}: error: cannot start the async runtime: {e}", D::PROGRAM);
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(D::serve(settings, signals::terminated())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: error: {e}", D::PROGRAM);
            ExitCode::FAILURE
        }
    }
}

fn config_error<D: Daemon>(e: &SettingsError) -> ExitCode {
    eprintln!("{}: config error: {e}", D::PROGRAM);
    ExitCode::from(EXIT_CONFIG)
}
