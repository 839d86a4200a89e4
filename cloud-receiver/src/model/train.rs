//! `medgate-receiver train`: fits the classifier on a MedMNIST file's train
//! split and selects the weights and the decision threshold on its val split
//! only (the test split, if the file has one, is never read).
//!
//! Regularisation, because the official test images come from another
//! collection than train/val: augmentation (see [`augment`]), dropout,
//! AdamW weight decay, label smoothing, class-weighted loss for the 3:1
//! imbalance, and a cosine learning-rate decay. The kept epoch is the one
//! with the best val ROC AUC. Then [`super::calibration::fit_card`] fits
//! the temperature and the screening threshold on val, and the
//! out-of-distribution gate on train's features with its limit from val.
//!
//! Three levers are there to try, off by default because on val they have
//! not beaten the default recipe (seed 7, sensitivity held at 0.972). The
//! shipped model averages three networks of the default recipe (seeds 7,
//! 11 and 13, joined by `calibrate --member`):
//!
//! | recipe | epochs | val AUC | val specificity | val ECE |
//! |---|---|---|---|---|
//! | mild augmentation (default) | 25 | 0.9983 | 0.985 | 0.046 |
//! | the same, seeds 7, 11, 13 averaged (shipped) | 25 | 0.9983 | 0.993 | 0.052 |
//! | mild, weight average 0.998 | 30 | 0.9981 | 0.978 | 0.064 |
//! | strong augmentation | 30 | 0.9973 | 0.978 | 0.146 |
//! | strong, weight average 0.998 | 40 | 0.9978 | 0.985 | 0.257 |
//! | mild, per-image normalisation | 25 | 0.9981 | 0.963 | 0.159 |
//!
//! - `--augmentation strong` ([`Augmentation::Strong`]): what another
//!   detector and its processing change. Val comes from train's collection,
//!   so it cannot show the gain this is for, only the cost: the margins
//!   shift towards "normal" (thresholds near 0.12), which one temperature
//!   cannot calibrate away.
//! - `--weight-average-decay D`: evaluate and keep an exponential moving
//!   average of the weights and batch-norm statistics instead of the last
//!   step's.
//! - `--normalise image` ([`Scope::Image`]): each image standardised by its
//!   own mean and spread, so that an exposure, window or gain that scales
//!   it linearly cannot move the answer. On val perturbed that way
//!   (contrast ×0.75 and ×1.25, brightness ±20) it answers exactly as on
//!   val. The shipped model, on the same perturbed val, keeps a
//!   specificity of 0.978–0.993 and a sensitivity of 0.969–0.982 at its
//!   threshold, so such shifts were not what it needed guarding from; and
//!   on val itself specificity and calibration are worse.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use medgate_medmnist::{self as dataset, SplitName};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::data::{
    Augmentation, augment, fingerprint, images_tensor, labels_tensor, normalisation_of,
};
use super::infer::predict;
use super::manifest::{Manifest, ManifestRecord};
use super::metrics::{Confusion, balanced_threshold, roc_auc};
use super::{
    Architecture, CARD_FORMAT, Classifier, ModelCard, Normalisation, Scope, TrainingRecord,
};
use crate::model::backend::{BackendChoice, select};

/// Settings of one training run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The `.npz` file.
    pub data: PathBuf,
    /// Where to write `model.json` and `model.bpk`.
    pub out: PathBuf,
    /// Epochs.
    pub epochs: usize,
    /// Images per optimisation step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f32,
    /// Random seed (weights, shuffling, augmentation).
    pub seed: u64,
    /// Network shape.
    pub architecture: Architecture,
    /// Backend to train on.
    pub backend: BackendChoice,
    /// Version string written into the model card.
    pub version: String,
    /// Draw a progress bar (off when not on a terminal).
    pub progress: bool,
    /// Val sensitivity the screening threshold keeps at least.
    pub min_sensitivity: f64,
    /// A per-sample SHA-512 manifest the data must match (see
    /// [`super::manifest`]).
    pub manifest: Option<PathBuf>,
    /// How training images are varied.
    pub augmentation: Augmentation,
    /// Decay of the weights' moving average per step (`None`: keep the
    /// weights themselves).
    pub weight_average_decay: Option<f32>,
    /// Whose mean and spread normalise the input.
    pub scope: Scope,
}

impl TrainOptions {
    /// The settings the shipped model was trained with.
    pub fn defaults(data: PathBuf, out: PathBuf) -> Self {
        Self {
            data,
            out,
            epochs: 30,
            batch_size: 64,
            learning_rate: 2e-3,
            weight_decay: 1e-3,
            seed: 7,
            architecture: Architecture {
                channels: [24, 48, 96],
                dropout: 0.3,
            },
            backend: BackendChoice::Cpu,
            version: "pneumonia-cnn-1".into(),
            progress: true,
            min_sensitivity: super::calibration::MIN_SENSITIVITY,
            manifest: None,
            augmentation: Augmentation::Mild,
            weight_average_decay: None,
            scope: Scope::Dataset,
        }
    }
}

/// An exponential moving average of a network's float tensors (weights
/// and batch-norm statistics), on the plain (non-autodiff) device.
struct Average {
    network: Classifier,
    decay: f32,
    updates: u32,
}

impl Average {
    fn new(network: Classifier, decay: f32) -> Self {
        Self {
            network,
            decay,
            updates: 0,
        }
    }

    /// Moves the average towards `current`. The decay ramps up over the
    /// first steps, so that the random initial weights fade quickly.
    fn update(&mut self, current: &Classifier) {
        self.updates += 1;
        let n = self.updates as f32;
        let decay = self.decay.min((1.0 + n) / (10.0 + n));
        let mut collect = Collect(Vec::new());
        current.visit(&mut collect);
        let mut blend = Blend {
            current: collect.0.into_iter(),
            decay,
        };
        self.network = self.network.clone().map(&mut blend);
    }
}

/// Every float tensor of a module, flattened, in visiting order.
struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let count = value.shape().num_elements();
        self.0.push(value.reshape([count]));
    }
}

/// `average · decay + current · (1 − decay)` for each float tensor, taken
/// in the same order as [`Collect`] gave them.
struct Blend {
    current: std::vec::IntoIter<Tensor<1>>,
    decay: f32,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(current) = self.current.next() else {
            return param;
        };
        let decay = self.decay;
        param.map(|average| {
            let dims = average.dims();
            average.mul_scalar(decay) + current.reshape(dims).mul_scalar(1.0 - decay)
        })
    }
}

/// One epoch's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Val ROC AUC.
    pub val_auc: f64,
    /// Val balanced accuracy at the val-balanced threshold.
    pub val_balanced_accuracy: f64,
    /// Seconds the epoch took.
    pub seconds: f64,
}

/// Trains, selects on val, writes the model folder and returns the card
/// and the per-epoch log.
///
/// # Errors
/// If the data cannot be read, the backend cannot start, or the model
/// cannot be written.
pub fn train(options: &TrainOptions) -> anyhow::Result<(ModelCard, Vec<EpochLog>)> {
    let train_set = dataset::read_split(&options.data, SplitName::Train)?;
    let val_set = dataset::read_split(&options.data, SplitName::Val)?;
    let (train_set, val_set, manifest) = match &options.manifest {
        None => (train_set, val_set, None),
        Some(path) => {
            let manifest = Manifest::read(path)?;
            let (train_set, train) = manifest.verify("train", &train_set);
            let (val_set, val) = manifest.verify("val", &val_set);
            for (name, checked) in [("train", train), ("val", val)] {
                if checked.refused + checked.missing > 0 {
                    tracing::warn!(split = name, kept = checked.kept, refused = checked.refused, missing = checked.missing, manifest = %path.display(), "samples the manifest does not hold are refused: changed or added since it was written");
                } else {
                    tracing::info!(
                        split = name,
                        kept = checked.kept,
                        "every sample matches the manifest"
                    );
                }
            }
            anyhow::ensure!(
                train_set.len > 0 && val_set.len > 0,
                "{}: no train or no val sample matches the manifest {}",
                options.data.display(),
                path.display()
            );
            let record = ManifestRecord {
                sha256: manifest.sha256.clone(),
                train,
                val,
            };
            (train_set, val_set, Some(record))
        }
    };
    anyhow::ensure!(
        train_set.width == train_set.height && val_set.width == train_set.width,
        "{}: images must be square and of one size",
        options.data.display()
    );
    let side = train_set.width;
    let norm = Normalisation {
        scope: options.scope,
        ..normalisation_of(&train_set.images)
    };
    let selected = select(options.backend)?;
    tracing::info!(backend = %selected, train = train_set.len, val = val_set.len, "training");
    let device = selected.device.clone().autodiff();
    device.seed(options.seed);

    let positives = train_set.labels.iter().filter(|&&l| l == 1).count() as f32;
    let n = train_set.len as f32;
    let class_weights = vec![
        n / (2.0 * (n - positives).max(1.0)),
        n / (2.0 * positives.max(1.0)),
    ];
    let loss_fn = CrossEntropyLossConfig::new()
        .with_weights(Some(class_weights))
        .with_smoothing(Some(0.05))
        .init(&device);
    let mut network = Classifier::new(&options.architecture, &device);
    let mut optimiser = AdamWConfig::new()
        .with_weight_decay(options.weight_decay)
        .init();

    let steps_per_epoch = train_set.len.div_ceil(options.batch_size);
    let total_steps = (steps_per_epoch * options.epochs).max(1);
    let bar = if options.progress {
        let bar = ProgressBar::new(total_steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps, epoch {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let mut order: Vec<usize> = (0..train_set.len).collect();
    let per_image = side * side;
    let mut batch_images = Vec::with_capacity(options.batch_size * per_image);
    let mut batch_labels = Vec::with_capacity(options.batch_size);
    let mut scratch = Vec::with_capacity(per_image);
    let mut average = options
        .weight_average_decay
        .map(|decay| Average::new(network.valid(), decay));
    let mut best: Option<(f64, f64, usize, Classifier, f32)> = None;
    let mut log = Vec::with_capacity(options.epochs);
    let mut step = 0usize;

    for epoch in 1..=options.epochs {
        let started = Instant::now();
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        let mut batches = 0usize;
        for chunk in order.chunks(options.batch_size) {
            batch_images.clear();
            batch_labels.clear();
            for &i in chunk {
                let image = train_set.image(i).unwrap_or(&[]);
                augment(image, side, options.augmentation, &mut rng, &mut scratch);
                batch_images.extend_from_slice(&scratch);
                batch_labels.push(train_set.labels[i]);
            }
            // Cosine decay with one epoch of linear warm-up.
            let progress = step as f64 / total_steps as f64;
            let warmup = (step as f64 + 1.0) / steps_per_epoch as f64;
            let lr = options.learning_rate
                * warmup.min(1.0)
                * (0.02 + 0.98 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()));
            let logits = network.forward(images_tensor(&batch_images, side, norm, &device));
            let loss = loss_fn.forward(logits, labels_tensor(&batch_labels, &device));
            let loss_value = loss.clone().into_scalar::<f32>();
            let grads = GradientsParams::from_grads(loss.backward(), &network);
            network = optimiser.step(lr, network, grads);
            if let Some(average) = &mut average {
                average.update(&network.valid());
            }
            loss_sum += f64::from(loss_value);
            batches += 1;
            step += 1;
            bar.inc(1);
        }

        let valid = match &average {
            Some(average) => average.network.clone(),
            None => network.valid(),
        };
        let scores = predict(
            &valid,
            &val_set.images,
            side,
            norm,
            &valid_device(&device),
            256,
        );
        let auc = roc_auc(&scores, &val_set.labels);
        let threshold = balanced_threshold(&scores, &val_set.labels);
        let balanced = Confusion::at(&scores, &val_set.labels, threshold).balanced_accuracy();
        let entry = EpochLog {
            epoch,
            train_loss: loss_sum / batches.max(1) as f64,
            val_auc: auc,
            val_balanced_accuracy: balanced,
            seconds: started.elapsed().as_secs_f64(),
        };
        bar.set_message(format!(
            "{epoch}: loss {:.4}, val AUC {auc:.4}, val bal. acc. {balanced:.4}",
            entry.train_loss
        ));
        if !options.progress {
            tracing::info!(
                epoch,
                loss = entry.train_loss,
                val_auc = auc,
                val_balanced_accuracy = balanced,
                "epoch done"
            );
        }
        log.push(entry);
        let better = match &best {
            None => true,
            Some((best_auc, best_bal, ..)) => {
                auc > *best_auc || (auc == *best_auc && balanced > *best_bal)
            }
        };
        if better {
            best = Some((auc, balanced, epoch, valid, threshold));
        }
    }
    bar.finish();

    let Some((val_auc, val_balanced_accuracy, best_epoch, network, threshold)) = best else {
        anyhow::bail!("no epoch was run (epochs = 0)");
    };
    let mut card = ModelCard {
        format: CARD_FORMAT.into(),
        version: options.version.clone(),
        input_size: [side, side],
        normalisation: norm,
        classes: vec!["normal".into(), "pneumonia".into()],
        threshold,
        threshold_rule: String::new(),
        temperature: 1.0,
        architecture: options.architecture.clone(),
        training: TrainingRecord {
            data_sha256: fingerprint(&train_set),
            train_images: train_set.len,
            val_images: val_set.len,
            best_epoch,
            epochs: options.epochs,
            seed: options.seed,
            val_auc,
            val_balanced_accuracy,
            manifest,
            augmentation: Some(options.augmentation),
            weight_average_decay: options.weight_average_decay,
        },
        accepts: super::Accepts::chest_xray(),
        members: Vec::new(),
    };
    let (gate, fitted) = super::calibration::fit_card(
        &network,
        &mut card,
        &train_set,
        &val_set,
        &valid_device(&device),
        options.min_sensitivity,
    );
    tracing::info!(?fitted, "calibrated on val");
    super::save(
        &options.out,
        &card,
        super::Network::single(network),
        Some(&gate),
    )?;
    Ok((card, log))
}

/// The plain device under an autodiff one, for validation passes.
fn valid_device(device: &Device) -> Device {
    device.clone().inner()
}

/// Writes the per-epoch log beside the model.
///
/// # Errors
/// If the file cannot be written.
pub fn write_log(dir: &Path, log: &[EpochLog]) -> anyhow::Result<()> {
    let path = dir.join("training-log.json");
    std::fs::write(&path, serde_json::to_string_pretty(log)? + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(network: &Classifier) -> Vec<f32> {
        let mut collect = Collect(Vec::new());
        network.visit(&mut collect);
        collect
            .0
            .into_iter()
            .flat_map(|t| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn the_weight_average_moves_each_tensor_towards_the_current_weights() {
        let device = select(BackendChoice::Cpu).unwrap().device;
        let arch = TrainOptions::defaults(PathBuf::new(), PathBuf::new()).architecture;
        let start = Classifier::new(&arch, &device);
        let current = Classifier::new(&arch, &device);
        let (a, b) = (floats(&start), floats(&current));
        let mut average = Average::new(start, 0.9);
        average.update(&current);
        // The first update's decay is ramped down to 2/11.
        let decay = 2.0 / 11.0;
        let blended = floats(&average.network);
        assert_eq!(blended.len(), a.len());
        assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3));
        for ((x, y), z) in a.iter().zip(&b).zip(&blended) {
            assert!((x * decay + y * (1.0 - decay) - z).abs() < 1e-5);
        }
    }
}
