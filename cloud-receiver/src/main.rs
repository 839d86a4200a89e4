//! `medgate-receiver`: parses the command line, sets up logging and calls
//! the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use medgate_receiver::config;
use medgate_receiver::daemon::service;
use medgate_receiver::model::backend::{self, BackendChoice};
use medgate_receiver::model::train::{self, TrainOptions};
use medgate_receiver::model::{Architecture, LoadedModel, bench, evaluate};
use medgate_shared::dataset::SplitName;
use medgate_shared::keys::DEFAULT_RSA_BITS;
use medgate_shared::service::{logging, signals};

#[derive(Parser)]
#[command(name = "medgate-receiver", version, about = "medgate cloud receiver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the receiver service: consume sealed images, classify, publish results.
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
    /// Measure inference speed (images/s) per backend and batch size, interleaved in one run.
    BenchInference {
        /// Backends to compare, e.g. cpu or cpu,wgpu.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "cpu")]
        backend: Vec<BackendChoice>,
        /// Batch sizes, e.g. 1,64,256.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        batch: Vec<usize>,
        /// Seconds of measurement in total.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create the receiver key pair: DIR/receiver.pem (0600) and DIR/receiver.pub.pem.
    Keygen {
        /// Folder for the two files (created if missing; existing keys are never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// RSA modulus size.
        #[arg(long, default_value_t = DEFAULT_RSA_BITS)]
        bits: usize,
    },
    /// Train the chest X-ray classifier on a MedMNIST .npz file (selects on val only).
    Train {
        /// The .npz file with train_* and val_* arrays.
        #[arg(long)]
        data: PathBuf,
        /// Folder to write model.json, model.bpk and training-log.json into.
        #[arg(long)]
        out: PathBuf,
        /// Epochs.
        #[arg(long, default_value_t = 30)]
        epochs: usize,
        /// Random seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Backend: auto (GPU if present), wgpu, cpu.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// Channels of the three convolution stages, e.g. 24,48,96.
        #[arg(long, value_delimiter = ',')]
        channels: Option<Vec<usize>>,
        /// Version written into the model card.
        #[arg(long)]
        version: Option<String>,
    },
    /// Evaluate a model on one split of a MedMNIST .npz file.
    Evaluate {
        /// The .npz file.
        #[arg(long)]
        data: PathBuf,
        /// Which split: val or test (train works too).
        #[arg(long)]
        split: SplitName,
        /// A model folder (model.json + model.bpk); default: the shipped model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Backend: auto (GPU if present), wgpu, cpu.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also draw the confusion matrix and ROC curve into this PNG.
        #[arg(long, value_name = "OUT.png")]
        plot: Option<PathBuf>,
    },
}

/// Exit status for a configuration error (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    logging::init("info");
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("medgate-receiver: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `run --config`: the service until SIGTERM or SIGINT.
fn serve(file: &Path) -> ExitCode {
    logging::exit_on_panic();
    let settings = match config::load(file) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("medgate-receiver: config error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("medgate-receiver: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service::run(settings, signals::terminated(), None)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medgate-receiver: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => return Ok(serve(&config)),
        Command::CheckConfig { file } => {
            return Ok(match config::load(&file) {
                Ok(settings) => {
                    println!(
                        "{}: ok (receiver {}, group {}, broker {}:{})",
                        file.display(),
                        settings.name,
                        settings.group,
                        settings.mqtt.host,
                        settings.mqtt.port
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("medgate-receiver: config error: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            });
        }
        Command::PrintDefaultConfig => print!("{}", config::DEFAULT_CONFIG),
        Command::BenchInference {
            backend,
            batch,
            seconds,
            json,
        } => {
            anyhow::ensure!(
                batch.iter().all(|&b| (1..=4096).contains(&b)),
                "--batch sizes must be 1..=4096"
            );
            let mut backends = Vec::new();
            for choice in backend {
                let selected = backend::select(choice)?;
                let model = LoadedModel::shipped(&selected.device)?;
                backends.push((selected, model));
            }
            let figures = bench::run(&backends, &batch, std::time::Duration::from_secs(seconds));
            if json {
                println!("{}", serde_json::to_string(&figures)?);
            } else {
                println!(
                    "{:<28} {:>6} {:>12} {:>10} {:>7}",
                    "backend", "batch", "images/s", "ms/call", "rounds"
                );
                for f in &figures {
                    println!(
                        "{:<28} {:>6} {:>12.0} {:>10.3} {:>7}",
                        f.backend, f.batch, f.images_per_s, f.ms_per_call, f.rounds
                    );
                }
            }
        }
        Command::Keygen { out, bits } => {
            let (private, public) = medgate_receiver::keys::generate(&out, bits)?;
            println!(
                "private key: {} (mode 0600; never leaves the receiver)",
                private.display()
            );
            println!(
                "public key:  {} (install on every gateway)",
                public.display()
            );
        }
        Command::Train {
            data,
            out,
            epochs,
            seed,
            backend,
            channels,
            version,
        } => {
            let mut options = TrainOptions::defaults(data, out.clone());
            options.epochs = epochs;
            options.seed = seed;
            options.backend = backend;
            options.progress = std::io::stderr().is_terminal();
            if let Some(c) = channels {
                let [a, b, c] = c[..] else {
                    anyhow::bail!("--channels takes three numbers, e.g. 24,48,96");
                };
                options.architecture = Architecture {
                    channels: [a, b, c],
                    ..options.architecture
                };
            }
            if let Some(v) = version {
                options.version = v;
            }
            let (card, log) = train::train(&options)?;
            train::write_log(&out, &log)?;
            println!(
                "kept epoch {} of {}: val AUC {:.4}, val balanced accuracy {:.4} at threshold {:.4}; model written to {}",
                card.training.best_epoch,
                card.training.epochs,
                card.training.val_auc,
                card.training.val_balanced_accuracy,
                card.threshold,
                out.display()
            );
        }
        Command::Evaluate {
            data,
            split,
            model,
            backend,
            json,
            plot,
        } => {
            let selected = backend::select(backend)?;
            let loaded = match &model {
                Some(dir) => LoadedModel::from_dir(dir, &selected.device)?,
                None => LoadedModel::shipped(&selected.device)?,
            };
            let (report, scored) = evaluate::evaluate(&loaded, &selected, &data, split)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", evaluate::render_text(&report, split));
            }
            if let Some(out) = plot {
                evaluate::plot(&report, &scored, &out)
                    .map_err(|e| anyhow::anyhow!("drawing {}: {e}", out.display()))?;
                eprintln!("plot written to {}", out.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
