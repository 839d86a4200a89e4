//! The `medgate-receiver` command line: the daemon skeleton of
//! `medgate_daemon::cli` (`run`, `check-config`, `print-default-config`)
//! with the receiver's settings and service, plus the model's own
//! subcommands (`train`, `evaluate`, `bench-inference`) and `keygen`.

use std::ffi::OsString;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use medgate_daemon::acl::{self, Broker, Roles};
use medgate_daemon::cli::{self, Daemon, DaemonCommand};
use medgate_daemon::logging;
use medgate_daemon::settings::SettingsError;
use medgate_daemon::trust::TrustList;
use medgate_medmnist::SplitName;
use medgate_shared::header::{Anatomy, Modality};
use medgate_shared::ids::Name;
use medgate_shared::keys::DEFAULT_RSA_BITS;

use crate::daemon::config::{self, Settings};
use crate::daemon::service::{self, ServiceError};
use crate::model::backend::{self, BackendChoice};
use crate::model::data::Augmentation;
use crate::model::train::{self, TrainOptions};
use crate::model::{Architecture, LoadedModel, Scope, bench, calibration, classify, evaluate};

#[derive(Parser)]
#[command(
    name = "medgate-receiver",
    version,
    about = "medgate cloud receiver: consume sealed images, classify, publish results"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Daemon(DaemonCommand),
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
        /// A model folder; default: the shipped model.
        #[arg(long)]
        model: Option<PathBuf>,
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
    /// Print the broker's access rules from the trust list and the site's
    /// other roles (install as mosquitto's acl_file, EMQX's acl.conf or
    /// rmqtt's plugins/rmqtt-acl.toml).
    BrokerAcl {
        /// The trust list (`receiver.trusted_gateways`): one rule block per gateway.
        #[arg(long, value_name = "GATEWAYS.toml")]
        trust: PathBuf,
        /// Receiver certificate names, e.g. receiver-1,receiver-2.
        #[arg(long, value_delimiter = ',')]
        receivers: Vec<Name>,
        /// Wards whose clinician apps (certificates clinician-WARD) read notifications.
        #[arg(long, value_delimiter = ',')]
        clinician_wards: Vec<Name>,
        /// Security staff certificate names.
        #[arg(long, value_delimiter = ',')]
        security: Vec<Name>,
        /// Sites whose brokers bridge to this one (certificates bridge-SITE):
        /// each carries its own site's images up and results down.
        #[arg(long, value_delimiter = ',')]
        bridged_sites: Vec<Name>,
        /// Broker syntax.
        #[arg(long, value_enum, default_value_t = AclSyntax::Mosquitto)]
        broker: AclSyntax,
    },
    /// Train the chest X-ray classifier on a MedMNIST .npz file (selects on val only).
    Train(TrainArgs),
    /// Write the per-sample SHA-512 manifest of a MedMNIST .npz file's train
    /// and val splits, for `train --manifest` to verify the data against.
    Manifest {
        /// The .npz file.
        #[arg(long)]
        data: PathBuf,
        /// The manifest to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Fit a model's calibration (temperature), screening threshold and
    /// out-of-distribution gate on a MedMNIST .npz file (statistics from
    /// train, selection on val) and write the model folder.
    Calibrate {
        /// The .npz file with train_* and val_* arrays.
        #[arg(long)]
        data: PathBuf,
        /// A model folder; default: the shipped model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Folder to write model.json, model.bpk and ood.json into.
        #[arg(long)]
        out: PathBuf,
        /// A further model folder (repeatable) whose networks join the
        /// model's as a small ensemble (logits averaged; same architecture
        /// and normalisation), written as model-2.bpk, model-3.bpk, …
        #[arg(long = "member")]
        members: Vec<PathBuf>,
        /// Version written into the card (default: the model's).
        #[arg(long)]
        version: Option<String>,
        /// Val sensitivity the screening threshold keeps at least.
        #[arg(long, default_value_t = calibration::MIN_SENSITIVITY)]
        min_sensitivity: f64,
        /// Backend: auto (GPU if present), wgpu, cpu.
        #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
        backend: BackendChoice,
    },
    /// Classify image files (PNG, JPEG, TIFF, DICOM) as the receiver would: the
    /// model chosen, label, calibrated probability and out-of-distribution
    /// score, or why an image is not classified.
    Classify {
        /// The image files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The modality of the PNG/JPEG/TIFF files (what routing reads), e.g.
        /// DX, CR, CT; a DICOM file is routed by its own.
        #[arg(long, default_value = "DX", value_parser = parse_modality)]
        modality: Modality,
        /// The body part the PNG/JPEG/TIFF files show (DICOM Body Part
        /// Examined, e.g. CHEST); a DICOM file's own comes first.
        #[arg(long, value_parser = parse_code)]
        body_part: Option<Name>,
        /// Their view position (e.g. PA, AP, LL), in the same way.
        #[arg(long, value_parser = parse_code)]
        view_position: Option<Name>,
        /// Model folders, in routing order (repeat the flag); default: the shipped model.
        #[arg(long = "model")]
        models: Vec<PathBuf>,
        /// Backend: auto (GPU if present), wgpu, cpu.
        #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
        backend: BackendChoice,
        /// One JSON object per file, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Measure the out-of-distribution gate on a non-chest image set (one
    /// subfolder per kind; scripts/make-ood-set assembles one).
    EvaluateOod {
        /// The set's folder.
        #[arg(long)]
        set: PathBuf,
        /// A model folder; default: the shipped model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The modality the images are sent as (one the model accepts).
        #[arg(long, default_value = "DX", value_parser = parse_modality)]
        modality: Modality,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
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
        /// Also draw the confusion matrix, ROC curve and reliability diagram into this PNG.
        #[arg(long, value_name = "OUT.png")]
        plot: Option<PathBuf>,
        /// Also write each image's label, calibrated probability and
        /// out-of-distribution score into this CSV file.
        #[arg(long, value_name = "OUT.csv")]
        predictions: Option<PathBuf>,
    },
}

/// `model` with the models in `dirs` joined as an ensemble.
fn join_members(
    model: LoadedModel,
    dirs: &[PathBuf],
    device: &burn::tensor::Device,
) -> anyhow::Result<LoadedModel> {
    let mut model = model;
    for dir in dirs {
        let other = LoadedModel::from_dir(dir, device)?;
        model = model
            .join(vec![other])
            .with_context(|| format!("--member {}", dir.display()))?;
    }
    Ok(model)
}

fn parse_modality(code: &str) -> Result<Modality, String> {
    Modality::from_code(code)
        .ok_or_else(|| format!("{code:?} is not a DICOM modality code such as DX, CR, CT, MR"))
}

fn parse_code(value: &str) -> Result<Name, String> {
    match Anatomy::code(value) {
        Ok(Some(code)) => Ok(code),
        Ok(None) => Err("is empty: give a DICOM code such as CHEST or PA".into()),
        Err(e) => Err(format!("{value:?} is not a DICOM code string: {e}")),
    }
}

/// The brokers `broker-acl` writes rules for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AclSyntax {
    /// mosquitto's acl_file.
    Mosquitto,
    /// EMQX 5's file authorization source.
    Emqx,
    /// rmqtt's `plugins/rmqtt-acl.toml`.
    Rmqtt,
}

/// `train`'s arguments.
#[derive(Args)]
struct TrainArgs {
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
    /// A per-sample SHA-512 manifest (`manifest` writes one): samples it
    /// does not hold are refused and counted.
    #[arg(long, value_name = "MANIFEST")]
    manifest: Option<PathBuf>,
    /// How training images are varied.
    #[arg(long, value_enum, default_value_t = Augmentation::Mild)]
    augmentation: Augmentation,
    /// Decay per step of a moving average of the weights to evaluate and
    /// keep instead of the weights themselves (e.g. 0.998: with 74 steps
    /// an epoch, about the last 7 epochs); 0, the default, keeps the
    /// weights.
    #[arg(long, default_value_t = 0.0)]
    weight_average_decay: f32,
    /// Normalise the input by the training pixels' mean and spread
    /// (dataset) or by each image's own (image).
    #[arg(long, value_enum, default_value_t = Scope::Dataset)]
    normalise: Scope,
}

impl TrainArgs {
    /// The training run these arguments ask for.
    fn options(self) -> anyhow::Result<TrainOptions> {
        let mut options = TrainOptions::defaults(self.data, self.out);
        options.epochs = self.epochs;
        options.seed = self.seed;
        options.backend = self.backend;
        options.progress = std::io::stderr().is_terminal();
        options.manifest = self.manifest;
        options.augmentation = self.augmentation;
        options.scope = self.normalise;
        anyhow::ensure!(
            (0.0..1.0).contains(&self.weight_average_decay),
            "--weight-average-decay must be at least 0 and below 1, not {}",
            self.weight_average_decay
        );
        options.weight_average_decay =
            (self.weight_average_decay > 0.0).then_some(self.weight_average_decay);
        if let Some(c) = self.channels {
            let [a, b, c] = c[..] else {
                anyhow::bail!("--channels takes three numbers, e.g. 24,48,96");
            };
            options.architecture = Architecture {
                channels: [a, b, c],
                ..options.architecture
            };
        }
        if let Some(v) = self.version {
            options.version = v;
        }
        Ok(options)
    }
}

/// The receiver as the daemon skeleton sees it.
pub struct Receiver;

impl Daemon for Receiver {
    const PROGRAM: &'static str = "medgate-receiver";
    const DEFAULT_CONFIG: &'static str = config::DEFAULT_CONFIG;
    type Settings = Settings;
    type Error = ServiceError;

    fn load(file: &Path) -> Result<Settings, SettingsError> {
        config::load(file)
    }

    fn summary(settings: &Settings) -> String {
        format!(
            "receiver {}, group {}, broker {}:{}",
            settings.name, settings.group, settings.mqtt.host, settings.mqtt.port
        )
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
    match run(Cli::parse_from(args).command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}: error: {e:#}", Receiver::PROGRAM);
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Daemon(command) => return Ok(cli::execute::<Receiver>(command)),
        Command::BenchInference {
            backend,
            batch,
            seconds,
            model,
            json,
        } => {
            anyhow::ensure!(
                batch.iter().all(|&b| (1..=4096).contains(&b)),
                "--batch sizes must be 1..=4096"
            );
            let mut backends = Vec::new();
            for choice in backend {
                let selected = backend::select(choice)?;
                let model = LoadedModel::open(model.as_deref(), &selected.device)?;
                backends.push((selected, model));
            }
            let figures = bench::run(&backends, &batch, std::time::Duration::from_secs(seconds));
            if json {
                println!("{}", serde_json::to_string(&figures)?);
            } else {
                print!("{}", bench::render_table(&figures));
            }
        }
        Command::Keygen { out, bits } => {
            let (private, public) = crate::keys::generate(&out, bits)?;
            println!(
                "private key: {} (mode 0600; never leaves the receiver)",
                private.display()
            );
            println!(
                "public key:  {} (install on every gateway)",
                public.display()
            );
        }
        Command::BrokerAcl {
            trust,
            receivers,
            clinician_wards,
            security,
            bridged_sites,
            broker,
        } => {
            let list = TrustList::read(&trust)?;
            let roles = Roles {
                receivers,
                clinician_wards,
                security,
                bridged_sites,
            };
            let broker = match broker {
                AclSyntax::Mosquitto => Broker::Mosquitto,
                AclSyntax::Emqx => Broker::Emqx,
                AclSyntax::Rmqtt => Broker::Rmqtt,
            };
            print!("{}", acl::render(&list, &roles, broker)?);
        }
        Command::Train(args) => {
            let options = args.options()?;
            let (card, log) = train::train(&options)?;
            train::write_log(&options.out, &log)?;
            println!(
                "kept epoch {} of {}: val AUC {:.4}, val balanced accuracy {:.4} at threshold {:.4}; model written to {}",
                card.training.best_epoch,
                card.training.epochs,
                card.training.val_auc,
                card.training.val_balanced_accuracy,
                card.threshold,
                options.out.display()
            );
            if let Some(record) = &card.training.manifest {
                for (name, checked) in [("train", record.train), ("val", record.val)] {
                    println!(
                        "manifest, {name}: {} samples kept, {} refused (changed or added), {} listed but missing",
                        checked.kept, checked.refused, checked.missing
                    );
                }
            }
        }
        Command::Manifest { data, out } => {
            let train = medgate_medmnist::read_split(&data, SplitName::Train)?;
            let val = medgate_medmnist::read_split(&data, SplitName::Val)?;
            let text = crate::model::manifest::write(&[("train", &train), ("val", &val)]);
            std::fs::write(&out, text).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            println!(
                "{} train and {} val samples listed in {}",
                train.len,
                val.len,
                out.display()
            );
        }
        Command::Classify {
            files,
            modality,
            body_part,
            view_position,
            models,
            backend,
            json,
        } => {
            let anatomy = Anatomy {
                body_part,
                view_position,
            };
            let selected = backend::select(backend)?;
            let loaded = if models.is_empty() {
                vec![LoadedModel::shipped(&selected.device)?]
            } else {
                models
                    .iter()
                    .map(|dir| LoadedModel::from_dir(dir, &selected.device))
                    .collect::<Result<Vec<_>, _>>()?
            };
            for verdict in classify::classify(&loaded, &selected, &files, modality, &anatomy) {
                if json {
                    println!("{}", serde_json::to_string(&verdict)?);
                } else {
                    println!("{}", verdict.render());
                }
            }
        }
        Command::EvaluateOod {
            set,
            model,
            modality,
            json,
        } => {
            let selected = backend::select(BackendChoice::Cpu)?;
            let loaded = LoadedModel::open(model.as_deref(), &selected.device)?;
            let report = classify::ood_report(&loaded, &selected, &set, modality)
                .map_err(|e| anyhow::anyhow!("{}: {e}", set.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", classify::render_ood(&report));
            }
        }
        Command::Calibrate {
            data,
            model,
            out,
            members,
            version,
            min_sensitivity,
            backend,
        } => {
            let selected = backend::select(backend)?;
            let mut loaded = LoadedModel::open(model.as_deref(), &selected.device)?;
            if !members.is_empty() {
                loaded = join_members(loaded, &members, &selected.device)?;
            }
            if let Some(version) = version {
                loaded.card.version = version;
            }
            let train = medgate_medmnist::read_split(&data, SplitName::Train)?;
            let val = medgate_medmnist::read_split(&data, SplitName::Val)?;
            let (gate, fitted) = calibration::fit_card(
                &loaded.network,
                &mut loaded.card,
                &train,
                &val,
                &selected.device,
                min_sensitivity,
            );
            crate::model::save(&out, &loaded.card, loaded.network, Some(&gate))?;
            println!(
                "{} network(s); temperature {:.3}; threshold {:.4} (val sensitivity {:.3}, \
                 specificity {:.3}); out-of-distribution gate accepts {:.1} % of val; model \
                 written to {}",
                loaded.card.members.len() + 1,
                fitted.temperature,
                fitted.threshold,
                fitted.sensitivity,
                fitted.specificity,
                fitted.val_acceptance * 100.0,
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
            predictions,
        } => {
            let selected = backend::select(backend)?;
            let loaded = LoadedModel::open(model.as_deref(), &selected.device)?;
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
            if let Some(out) = predictions {
                std::fs::write(&out, evaluate::predictions_csv(&scored, report.threshold))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
                eprintln!("predictions written to {}", out.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
