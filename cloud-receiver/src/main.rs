//! `medgate-receiver`: parses the command line, sets up logging and calls
//! the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use medgate_receiver::model::backend::{self, BackendChoice};
use medgate_receiver::model::train::{self, TrainOptions};
use medgate_receiver::model::{Architecture, LoadedModel, evaluate};
use medgate_shared::dataset::SplitName;
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medgate-receiver: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
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
    Ok(())
}
