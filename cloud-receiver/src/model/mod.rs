//! The chest X-ray classifier: a compact CNN for 28×28 grayscale images,
//! its model card (what the weights need to be used correctly), and loading
//! of the shipped model or one from a folder.
//!
//! - [`backend`]: choosing the device (wgpu or CPU) at start.
//! - [`bench`]: inference speed per backend and batch size.
//! - [`data`]: MedMNIST splits as tensors, normalisation, augmentation.
//! - [`infer`]: positive-class probabilities for batches of images.
//! - [`metrics`]: accuracy, sensitivity, specificity, ROC AUC, thresholds.
//! - [`train`] and [`evaluate`]: the `train` and `evaluate` subcommands.
//!
//! A model folder holds `model.json` (the [`ModelCard`]), `model.bpk`
//! (the weights, Burn's burnpack format) and, once fitted, `ood.json` (the
//! out-of-distribution [`gate::Gate`]). A model may be a small ensemble:
//! its card then names further weight files (`members`) of the same
//! architecture, whose logits are averaged with `model.bpk`'s (the gate
//! reads `model.bpk`'s features). The shipped model is compiled into the
//! binary from `cloud-receiver/model/`.

pub mod backend;
pub mod bench;
pub mod calibration;
pub mod classify;
pub mod data;
pub mod decision;
pub mod evaluate;
pub mod gate;
pub mod infer;
pub mod manifest;
pub mod metrics;
pub mod routing;
pub mod train;

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
    Relu,
    conv::{Conv2d, Conv2dConfig},
};
use burn::store::ModuleRecord;
use burn::tensor::{Device, Tensor};
use medgate_shared::header::Modality;
use medgate_shared::pixels::PixelFormat;
use serde::{Deserialize, Serialize};

/// File name of the model card in a model folder.
pub const CARD_FILE: &str = "model.json";
/// File name of the weights in a model folder.
pub const WEIGHTS_FILE: &str = "model.bpk";
/// The model-card format this build reads and writes.
pub const CARD_FORMAT: &str = "medgate-model/1";

const SHIPPED_CARD: &str = include_str!("../../model/model.json");
/// The shipped weight files, by name: `model.bpk` and the card's members.
const SHIPPED_WEIGHTS: &[(&str, &[u8])] = &[
    (WEIGHTS_FILE, include_bytes!("../../model/model.bpk")),
    ("model-2.bpk", include_bytes!("../../model/model-2.bpk")),
    ("model-3.bpk", include_bytes!("../../model/model-3.bpk")),
];
const SHIPPED_GATE: &str = include_str!("../../model/ood.json");

/// Why a model could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The model card is not valid JSON of the expected shape.
    #[error("{path}: not a valid model card: {reason}")]
    Card {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The weights do not load into the architecture the card describes.
    #[error("{path}: weights do not fit the architecture: {reason}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What Burn said.
        reason: String,
    },
    /// Models that cannot be joined into one ensemble.
    #[error("cannot join {member} to {model}: they differ in {differs}")]
    Incompatible {
        /// The joined model's version.
        model: String,
        /// The version of the model that does not fit.
        member: String,
        /// What differs, e.g. "normalisation, classes".
        differs: String,
    },
}

/// The network's shape: channels of the three convolution stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Output channels of stage 1, 2 and 3.
    pub channels: [usize; 3],
    /// Dropout before the classifier head.
    pub dropout: f64,
}

/// How pixels become model input: `(v / 255 − mean) / std`, with the
/// training pixels' mean and spread, or each image's own (see [`Scope`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalisation {
    /// Mean of the training pixels, on the 0–1 scale.
    pub mean: f32,
    /// Standard deviation of the training pixels, on the 0–1 scale.
    pub std: f32,
    /// Whose mean and spread: the training pixels' (cards written before
    /// this field existed) or each image's own.
    #[serde(default, skip_serializing_if = "Scope::is_dataset")]
    pub scope: Scope,
}

/// Whose mean and spread [`Normalisation`] subtracts and divides by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The training pixels' (`mean` and `std`): an image's overall
    /// brightness and contrast reach the network.
    #[default]
    Dataset,
    /// Each image's own: the network sees the same input whatever the
    /// exposure, window or gain that scaled the image linearly. Another
    /// detector, another exposure or another processing chain changes an
    /// image's overall contrast, and on PneumoniaMNIST contrast alone
    /// separates the classes (its ROC AUC on train is 0.81: consolidated
    /// lungs flatten a radiograph), so a network that can read it leans on
    /// a cue that moves with the equipment.
    Image,
}

impl Scope {
    fn is_dataset(&self) -> bool {
        *self == Self::Dataset
    }
}

/// Everything needed to use the weights correctly, stored beside them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Always [`CARD_FORMAT`].
    pub format: String,
    /// The model's version, reported with every result.
    pub version: String,
    /// Input width and height in pixels (images are resized to this).
    pub input_size: [usize; 2],
    /// Input normalisation.
    pub normalisation: Normalisation,
    /// Class names, in output order; index 1 is the positive class.
    pub classes: Vec<String>,
    /// Calibrated probability of the positive class at or above which a
    /// case is positive.
    pub threshold: f32,
    /// How the threshold was chosen, and what it gave on val.
    #[serde(default)]
    pub threshold_rule: String,
    /// The temperature `T` that calibrates probabilities:
    /// `sigmoid((logit₁ − logit₀) / T)`, fitted on val. Cards from before
    /// calibration have 1 (the raw softmax).
    #[serde(default = "unit_temperature")]
    pub temperature: f32,
    /// The network's shape.
    pub architecture: Architecture,
    /// Where the weights came from.
    pub training: TrainingRecord,
    /// Which images the receiver routes to this model. Cards written
    /// before routing existed are the chest X-ray model's: CR and DX.
    #[serde(default = "Accepts::chest_xray")]
    pub accepts: Accepts,
    /// Further networks of the same architecture whose logits are averaged
    /// with `model.bpk`'s (a small ensemble); empty for a single network.
    /// The temperature and threshold are fitted on the average.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
}

/// A further network of an ensemble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Its weights file in the model folder (a plain file name).
    pub weights: String,
    /// How it was trained.
    pub training: TrainingRecord,
}

fn unit_temperature() -> f32 {
    1.0
}

impl ModelCard {
    /// The calibrated probability of the positive class for a raw margin
    /// (`logit₁ − logit₀`).
    pub fn probability(&self, margin: f32) -> f32 {
        calibration::calibrated(margin, self.temperature)
    }
}

/// What a model is for, as the header can tell: the receiver gives a
/// model only images of these modalities and pixel formats (and, when the
/// device names one, of this model's hint); any other image is answered
/// "not classified: no model".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accepts {
    /// DICOM modality codes, e.g. `["DX", "CR"]`.
    pub modalities: Vec<String>,
    /// Pixel formats (`Gray8`, `Gray16`).
    #[serde(default = "all_pixel_formats")]
    pub pixel_formats: Vec<PixelFormat>,
    /// Names a device may give as its model hint to ask for this model
    /// (the model's version is always one).
    #[serde(default)]
    pub hints: Vec<String>,
    /// DICOM body parts (Body Part Examined, e.g. `CHEST`): an image whose
    /// header names another is not this model's. Empty: any. An image that
    /// names none is taken, and the out-of-distribution gate judges it.
    #[serde(default)]
    pub body_parts: Vec<String>,
    /// DICOM view positions (e.g. `PA`, `AP`), in the same way.
    #[serde(default)]
    pub view_positions: Vec<String>,
}

impl Accepts {
    /// Frontal (PA, AP) chest radiographs (CR, DX) of any pixel format:
    /// what the chest X-ray classifier is for.
    pub fn chest_xray() -> Self {
        Self {
            modalities: vec!["CR".into(), "DX".into()],
            pixel_formats: all_pixel_formats(),
            hints: vec!["chest-xray".into()],
            body_parts: vec!["CHEST".into()],
            view_positions: vec!["PA".into(), "AP".into()],
        }
    }
}

fn all_pixel_formats() -> Vec<PixelFormat> {
    vec![PixelFormat::Gray8, PixelFormat::Gray16]
}

/// How the weights were trained, for traceability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    /// SHA-256 of the training images and labels as read from the file.
    pub data_sha256: String,
    /// Training images used.
    pub train_images: usize,
    /// Validation images used for model selection and the threshold.
    pub val_images: usize,
    /// Epoch whose weights were kept (1-based).
    pub best_epoch: usize,
    /// Epochs run.
    pub epochs: usize,
    /// Random seed.
    pub seed: u64,
    /// Validation ROC AUC of the kept weights.
    pub val_auc: f64,
    /// Validation balanced accuracy at the chosen threshold.
    pub val_balanced_accuracy: f64,
    /// The manifest the data was verified against, and what it refused
    /// (absent when training ran without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<manifest::ManifestRecord>,
    /// How training images were varied (absent on cards from before the
    /// choice existed, which used [`data::Augmentation::Mild`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augmentation: Option<data::Augmentation>,
    /// Decay of the exponential moving average of the weights that was
    /// kept instead of the last step's (absent: no averaging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_average_decay: Option<f32>,
}

/// Convolution, batch normalisation, ReLU.
#[derive(Module, Debug)]
struct ConvBlock {
    conv: Conv2d,
    norm: BatchNorm,
    activation: Relu,
}

impl ConvBlock {
    fn new(input: usize, output: usize, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([input, output], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .with_bias(false)
                .init(device),
            norm: BatchNormConfig::new(output).init(device),
            activation: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.activation
            .forward(self.norm.forward(self.conv.forward(x)))
    }
}

/// The classifier: two stages of two 3×3 convolutions with max pooling, a
/// third convolution, global average pooling, dropout and a linear head.
#[derive(Module, Debug)]
pub struct Classifier {
    stage1a: ConvBlock,
    stage1b: ConvBlock,
    stage2a: ConvBlock,
    stage2b: ConvBlock,
    stage3: ConvBlock,
    pool: MaxPool2d,
    global: AdaptiveAvgPool2d,
    dropout: Dropout,
    head: Linear,
}

impl Classifier {
    /// A freshly initialised network of the given shape, for 2 classes.
    pub fn new(arch: &Architecture, device: &Device) -> Self {
        let [c1, c2, c3] = arch.channels;
        Self {
            stage1a: ConvBlock::new(1, c1, device),
            stage1b: ConvBlock::new(c1, c1, device),
            stage2a: ConvBlock::new(c1, c2, device),
            stage2b: ConvBlock::new(c2, c2, device),
            stage3: ConvBlock::new(c2, c3, device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            global: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(arch.dropout).init(),
            head: LinearConfig::new(c3, 2).init(device),
        }
    }

    /// Logits `[batch, 2]` for normalised images `[batch, 1, H, W]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with_features(images).0
    }

    /// Logits `[batch, 2]` and the pooled features the head reads
    /// `[batch, channels of stage 3]`, which the out-of-distribution gate
    /// measures.
    pub fn forward_with_features(&self, images: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let x = self.stage1b.forward(self.stage1a.forward(images));
        let x = self.pool.forward(x);
        let x = self.stage2b.forward(self.stage2a.forward(x));
        let x = self.pool.forward(x);
        let x = self.global.forward(self.stage3.forward(x));
        let [batch, channels, _, _] = x.dims();
        let features = x.reshape([batch, channels]);
        let logits = self.head.forward(self.dropout.forward(features.clone()));
        (logits, features)
    }
}

/// What the inference functions run: one classifier, or an ensemble.
pub trait Forward {
    /// Logits `[batch, 2]` and the pooled features `[batch, channels]` the
    /// out-of-distribution gate measures, for normalised images
    /// `[batch, 1, H, W]`.
    fn forward_with_features(&self, images: Tensor<4>) -> (Tensor<2>, Tensor<2>);
}

impl Forward for Classifier {
    fn forward_with_features(&self, images: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        Classifier::forward_with_features(self, images)
    }
}

/// A model's networks: the card's own (`model.bpk`) first, then its
/// members. Their logits are averaged; the features are the first
/// network's, on which the gate was fitted.
#[derive(Debug)]
pub struct Network {
    first: Classifier,
    rest: Vec<Classifier>,
}

impl Network {
    /// One network alone.
    pub fn single(network: Classifier) -> Self {
        Self::ensemble(network, Vec::new())
    }

    /// `first` and `rest` averaged, `first`'s features kept.
    pub fn ensemble(first: Classifier, rest: Vec<Classifier>) -> Self {
        Self { first, rest }
    }

    /// How many networks are averaged.
    pub fn len(&self) -> usize {
        1 + self.rest.len()
    }

    /// Always false: a model has at least one network.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The networks, the card's own first.
    pub fn into_networks(self) -> Vec<Classifier> {
        std::iter::once(self.first).chain(self.rest).collect()
    }
}

impl Forward for Network {
    fn forward_with_features(&self, images: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let (mut logits, features) = self.first.forward_with_features(images.clone());
        if self.rest.is_empty() {
            return (logits, features);
        }
        for network in &self.rest {
            logits = logits.add(network.forward(images.clone()));
        }
        (logits.div_scalar(self.len() as f32), features)
    }
}

/// A classifier with its card, ready for inference.
#[derive(Debug)]
pub struct LoadedModel {
    /// The card.
    pub card: ModelCard,
    /// The network (or the ensemble's networks), in evaluation mode.
    pub network: Network,
    /// The out-of-distribution gate, when the folder has one.
    pub gate: Option<gate::Gate>,
}

impl LoadedModel {
    /// The model shipped inside this binary.
    ///
    /// # Errors
    /// [`ModelError`] if the embedded files are inconsistent (a build
    /// problem, caught by the test that loads them).
    pub fn shipped(device: &Device) -> Result<Self, ModelError> {
        let origin = PathBuf::from("<shipped model>");
        let card = parse_card(SHIPPED_CARD, &origin)?;
        let records = weight_files(&card)
            .map(|name| {
                let bytes = SHIPPED_WEIGHTS
                    .iter()
                    .find(|(file, _)| *file == name)
                    .map(|(_, bytes)| bytes.to_vec())
                    .ok_or_else(|| ModelError::Weights {
                        path: origin.join(name),
                        reason: "not compiled into this build".into(),
                    })?;
                ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
                    .map(|record| (origin.join(name), record))
                    .map_err(|e| ModelError::Weights {
                        path: origin.join(name),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let gate = parse_gate(SHIPPED_GATE, &card, &origin)?;
        Self::assemble(card, records, Some(gate), device)
    }

    /// The model in folder `dir`, or the shipped one without a folder.
    ///
    /// # Errors
    /// [`ModelError`] naming the file that is missing or wrong.
    pub fn open(dir: Option<&Path>, device: &Device) -> Result<Self, ModelError> {
        match dir {
            Some(dir) => Self::from_dir(dir, device),
            None => Self::shipped(device),
        }
    }

    /// A model from a folder holding `model.json` and `model.bpk`.
    ///
    /// # Errors
    /// [`ModelError`] naming the file that is missing or wrong.
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let card_path = dir.join(CARD_FILE);
        let text = std::fs::read_to_string(&card_path).map_err(|source| ModelError::Io {
            path: card_path.clone(),
            source,
        })?;
        let card = parse_card(&text, &card_path)?;
        let records = weight_files(&card)
            .map(|name| {
                let path = dir.join(name);
                ModuleRecord::load(&path)
                    .map(|record| (path.clone(), record))
                    .map_err(|e| ModelError::Weights {
                        path,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let gate_path = dir.join(gate::GATE_FILE);
        let gate = match std::fs::read_to_string(&gate_path) {
            Ok(text) => Some(parse_gate(&text, &card, &gate_path)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ModelError::Io {
                    path: gate_path,
                    source,
                });
            }
        };
        Self::assemble(card, records, gate, device)
    }

    /// Only the model card: of the folder `dir`, or of the shipped model.
    /// Cheap (no weights, no backend); for config checks.
    ///
    /// # Errors
    /// [`ModelError`] naming the file that is missing or wrong.
    pub fn card(dir: Option<&Path>) -> Result<ModelCard, ModelError> {
        match dir {
            None => parse_card(SHIPPED_CARD, Path::new("<shipped model>")),
            Some(dir) => {
                let card_path = dir.join(CARD_FILE);
                let text =
                    std::fs::read_to_string(&card_path).map_err(|source| ModelError::Io {
                        path: card_path.clone(),
                        source,
                    })?;
                parse_card(&text, &card_path)
            }
        }
    }

    /// This model with the networks of `others` joined to it as a small
    /// ensemble, named `model-2.bpk`, `model-3.bpk`, … in the card. The
    /// card keeps this model's temperature, threshold and gate until they
    /// are fitted again (`calibration::fit_card`).
    ///
    /// # Errors
    /// [`ModelError::Incompatible`] if another model differs in
    /// architecture, input size, normalisation or classes.
    pub fn join(self, others: Vec<LoadedModel>) -> Result<Self, ModelError> {
        let Self {
            mut card,
            network,
            gate,
        } = self;
        let Network {
            first,
            rest: mut networks,
        } = network;
        for other in others {
            let differs: Vec<&str> = [
                (other.card.architecture != card.architecture, "architecture"),
                (other.card.input_size != card.input_size, "input size"),
                (
                    other.card.normalisation != card.normalisation,
                    "normalisation",
                ),
                (other.card.classes != card.classes, "classes"),
            ]
            .into_iter()
            .filter_map(|(differ, what)| differ.then_some(what))
            .collect();
            if !differs.is_empty() {
                return Err(ModelError::Incompatible {
                    model: card.version,
                    member: other.card.version,
                    differs: differs.join(", "),
                });
            }
            let records = std::iter::once(other.card.training.clone())
                .chain(other.card.members.iter().map(|m| m.training.clone()));
            for (network, training) in other.network.into_networks().into_iter().zip(records) {
                networks.push(network);
                card.members.push(Member {
                    weights: format!("model-{}.bpk", networks.len() + 1),
                    training,
                });
            }
        }
        Ok(Self {
            card,
            network: Network::ensemble(first, networks),
            gate,
        })
    }

    fn assemble(
        card: ModelCard,
        records: Vec<(PathBuf, ModuleRecord)>,
        gate: Option<gate::Gate>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let networks = records
            .into_iter()
            .map(|(origin, record)| {
                Classifier::new(&card.architecture, device)
                    .try_load_record(record)
                    .map(|network| network.valid())
                    .map_err(|e| ModelError::Weights {
                        path: origin,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut networks = networks.into_iter();
        let first = networks.next().ok_or_else(|| ModelError::Card {
            path: PathBuf::from(&card.version),
            reason: "no weights".into(),
        })?;
        Ok(Self {
            card,
            network: Network::ensemble(first, networks.collect()),
            gate,
        })
    }
}

/// The weight files a card names: `model.bpk`, then its members'.
fn weight_files(card: &ModelCard) -> impl Iterator<Item = &str> {
    std::iter::once(WEIGHTS_FILE).chain(card.members.iter().map(|m| m.weights.as_str()))
}

fn parse_gate(text: &str, card: &ModelCard, path: &Path) -> Result<gate::Gate, ModelError> {
    let bad = |reason: String| ModelError::Card {
        path: path.to_owned(),
        reason,
    };
    let gate: gate::Gate =
        serde_json::from_str(text).map_err(|e| bad(format!("not a valid gate: {e}")))?;
    gate.check(card.architecture.channels[2])
        .map_err(|e| bad(e.to_string()))?;
    Ok(gate)
}

fn parse_card(text: &str, path: &Path) -> Result<ModelCard, ModelError> {
    let card: ModelCard = serde_json::from_str(text).map_err(|e| ModelError::Card {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let bad = |reason: String| ModelError::Card {
        path: path.to_owned(),
        reason,
    };
    if card.format != CARD_FORMAT {
        return Err(bad(format!(
            "format {:?}, this build reads {CARD_FORMAT:?}",
            card.format
        )));
    }
    if card.classes.len() != 2 {
        return Err(bad(format!(
            "{} classes, the classifier has 2",
            card.classes.len()
        )));
    }
    if !(card.temperature.is_finite() && card.temperature > 0.0) {
        return Err(bad(format!(
            "temperature {} must be a positive number",
            card.temperature
        )));
    }
    if !(0.0..=1.0).contains(&card.threshold) {
        return Err(bad(format!(
            "threshold {} is outside 0..=1",
            card.threshold
        )));
    }
    if card.normalisation.std <= 0.0 {
        return Err(bad("normalisation std must be positive".into()));
    }
    let mut seen = vec![WEIGHTS_FILE];
    for member in &card.members {
        let name = member.weights.as_str();
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains(['/', '\\'])
            && name.ends_with(".bpk");
        if !plain {
            return Err(bad(format!(
                "members: weights {name:?} must be a .bpk file name in the model folder"
            )));
        }
        if seen.contains(&name) {
            return Err(bad(format!("members: weights {name:?} named twice")));
        }
        seen.push(name);
    }
    if card.accepts.modalities.is_empty() {
        return Err(bad(
            "accepts.modalities is empty: the model would never be used".into(),
        ));
    }
    if let Some(code) = card
        .accepts
        .modalities
        .iter()
        .find(|code| Modality::from_code(code).is_none())
    {
        return Err(bad(format!(
            "accepts.modalities: {code:?} is not a DICOM modality code such as DX, CR, CT, MR"
        )));
    }
    if card.accepts.pixel_formats.is_empty() {
        return Err(bad(
            "accepts.pixel_formats is empty: the model would never be used".into(),
        ));
    }
    Ok(card)
}

/// Writes a model folder: the weights (`model.bpk`, then the card's
/// members'), the gate, then the card.
///
/// # Errors
/// [`ModelError`] if a file cannot be written, or if the card names another
/// number of networks than `network` has.
pub fn save(
    dir: &Path,
    card: &ModelCard,
    network: Network,
    gate: Option<&gate::Gate>,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let names: Vec<&str> = weight_files(card).collect();
    if names.len() != network.len() {
        return Err(ModelError::Card {
            path: dir.join(CARD_FILE),
            reason: format!(
                "the card names {} weight files for {} networks",
                names.len(),
                network.len()
            ),
        });
    }
    for (name, network) in names.into_iter().zip(network.into_networks()) {
        let weights_path = dir.join(name);
        network
            .valid()
            .save_file(&weights_path)
            .map_err(|e| ModelError::Weights {
                path: weights_path.clone(),
                reason: e.to_string(),
            })?;
    }
    if let Some(gate) = gate {
        let gate_path = dir.join(gate::GATE_FILE);
        let text = serde_json::to_string(gate).map_err(|e| ModelError::Card {
            path: gate_path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&gate_path, text + "\n").map_err(|source| ModelError::Io {
            path: gate_path,
            source,
        })?;
    }
    let card_path = dir.join(CARD_FILE);
    let text = serde_json::to_string_pretty(card).map_err(|e| ModelError::Card {
        path: card_path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&card_path, text + "\n").map_err(|source| ModelError::Io {
        path: card_path,
        source,
    })
}
