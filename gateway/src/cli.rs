//! The `medgate-gateway` command line: the daemon skeleton of
//! `medgate_daemon::cli` (`run`, `check-config`, `print-default-config`)
//! with the gateway's settings and service. In the library so that the
//! simulator's load generator can run the very same gateway process
//! (`medgate-sim gateway …`).

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use medgate_daemon::cli::{self, Daemon, DaemonCommand};
use medgate_daemon::logging;
use medgate_daemon::settings::SettingsError;
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::ids::Name;

use crate::config::{self, Settings};
use crate::service::{self, ServiceError};

#[derive(Parser)]
#[command(name = "medgate-gateway", version = crate::VERSION, about = "medgate edge gateway: capture, seal, spool, publish, route results")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Daemon(DaemonCommand),
    /// Create this gateway's signing identity (Ed25519, PKCS#8 PEM, mode
    /// 0600; never overwritten) and print the entry hospital IT adds to the
    /// receivers' trust list.
    Keygen {
        /// Where to write the private key (`gateway.identity_key`).
        #[arg(long)]
        out: PathBuf,
        /// The gateway's site, for the printed trust-list entry.
        #[arg(long)]
        site: Name,
        /// The gateway's name, for the printed trust-list entry.
        #[arg(long)]
        name: Name,
    },
    /// Print the trust-list entry of an existing identity.
    ShowIdentity {
        /// The private key file.
        #[arg(long)]
        key: PathBuf,
        /// The gateway's site.
        #[arg(long)]
        site: Name,
        /// The gateway's name.
        #[arg(long)]
        name: Name,
    },
}

/// The `[[gateway]]` entry of a trust list for this identity.
pub fn trust_entry(site: &Name, name: &Name, identity: &GatewayIdentity) -> String {
    format!(
        "[[gateway]]\nsite = \"{site}\"\nname = \"{name}\"\npublic_key = \"{}\"\n",
        identity.public()
    )
}

/// The gateway as the daemon skeleton sees it.
pub struct Gateway;

impl Daemon for Gateway {
    const PROGRAM: &'static str = "medgate-gateway";
    const DEFAULT_CONFIG: &'static str = config::DEFAULT_CONFIG;
    type Settings = Settings;
    type Error = ServiceError;

    fn load(file: &Path) -> Result<Settings, SettingsError> {
        config::load(file)
    }

    fn summary(settings: &Settings) -> String {
        let dicom = settings.dicom.as_ref().map_or_else(String::new, |node| {
            format!(
                ", DICOM node {} on {} ({} calling AE title(s)) reporting to {} at {}",
                node.ae_title,
                node.listen,
                node.callers.len(),
                node.pacs.ae_title,
                node.pacs.address
            )
        });
        format!(
            "gateway {}/{}, broker {}:{}, {} hot folder(s), {} SPI sensor(s){dicom}",
            settings.site,
            settings.name,
            settings.mqtt.host,
            settings.mqtt.port,
            settings.hot_folders.len(),
            settings.spi_sensors.len()
        )
    }

    fn warnings(settings: &Settings) -> Vec<String> {
        settings.warnings.clone()
    }

    fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
        // Two worker threads and a small blocking pool (sealing, fsync, file
        // reads): enough for a Pi-class box, and each thread costs memory.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(4)
            .enable_all()
            .build()
    }

    fn serve(
        settings: Settings,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = Result<(), ServiceError>> {
        service::run(settings, shutdown, None)
    }
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
        Command::Daemon(command) => cli::execute::<Gateway>(command),
        Command::Keygen { out, site, name } => match GatewayIdentity::write_new(&out) {
            Ok(identity) => {
                eprintln!(
                    "wrote {} (keep it secret); add this to the receivers' trust list:",
                    out.display()
                );
                print!("{}", trust_entry(&site, &name, &identity));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("medgate-gateway: {e}");
                ExitCode::FAILURE
            }
        },
        Command::ShowIdentity { key, site, name } => match GatewayIdentity::read(&key) {
            Ok(identity) => {
                print!("{}", trust_entry(&site, &name, &identity));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("medgate-gateway: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
