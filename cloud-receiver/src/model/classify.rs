//! `medgate-receiver classify FILE…`: what the receiver would answer for an
//! image file, without the rest of the system: the model routing picks, the
//! label and calibrated probability, the out-of-distribution score, or why
//! it is not classified. For integrators checking an image, and for
//! measuring the gate on a folder of images.
//!
//! PNG, JPEG and TIFF files are routed as the modality given (a hot
//! folder's); DICOM files as their own Modality (0008,0060), their pixels
//! read exactly as the gateway reads them (windowing, MONOCHROME1,
//! first frame, and its refusals: colour, burned-in annotation).

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageReader};
use medgate_shared::header::{Anatomy, Modality};
use medgate_shared::pixels::{PixelFormat, Pixels};
use serde::Serialize;

use super::LoadedModel;
use super::backend::Selected;
use super::data::preprocess;
use super::decision::{Decision, decide};
use super::infer::infer;
use super::routing;

/// Largest width or height read.
const MAX_DIMENSION: u32 = 16_384;
/// Largest decoded image held, bytes.
const MAX_DECODED: u64 = 512 << 20;

/// What `classify` says about one file (one JSON line with `--json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileVerdict {
    /// The file as given.
    pub file: String,
    /// The model that took it (none when no model accepts it, or the file
    /// is unreadable).
    pub model: Option<String>,
    /// The label, when classified.
    pub label: Option<String>,
    /// Calibrated probability of the positive class, when classified.
    pub probability: Option<f32>,
    /// The model's decision threshold on it.
    pub threshold: Option<f32>,
    /// The out-of-distribution score, when computed: the gate's larger
    /// distance as a multiple of its limit (above 1 is refused).
    pub ood_score: Option<f32>,
    /// `no_model`, `out_of_distribution` or `unreadable`, when not
    /// classified.
    pub not_classified: Option<String>,
    /// Why, in words.
    pub detail: Option<String>,
}

impl FileVerdict {
    fn refused(file: &str, reason: &str, detail: String) -> Self {
        Self {
            file: file.to_owned(),
            model: None,
            label: None,
            probability: None,
            threshold: None,
            ood_score: None,
            not_classified: Some(reason.to_owned()),
            detail: Some(detail),
        }
    }

    /// One line for a person.
    pub fn render(&self) -> String {
        match (&self.label, self.probability, &self.not_classified) {
            (Some(label), Some(p), _) => {
                let mut line = format!(
                    "{}: {label} ({:.1} % pneumonia, threshold {:.1} %; model {})",
                    self.file,
                    p * 100.0,
                    self.threshold.unwrap_or(0.0) * 100.0,
                    self.model.as_deref().unwrap_or("?")
                );
                if let Some(score) = self.ood_score {
                    line.push_str(&format!(
                        "; out-of-distribution score {score:.2} (above 1 is refused)"
                    ));
                }
                line
            }
            (_, _, reason) => format!(
                "{}: not classified ({}: {})",
                self.file,
                reason.as_deref().unwrap_or("?"),
                self.detail.as_deref().unwrap_or("")
            ),
        }
    }
}

/// Decodes an image file's bytes (PNG, JPEG, TIFF) as the hot folder does:
/// 16-bit grayscale stays 16-bit, anything else becomes 8-bit grayscale.
///
/// # Errors
/// A description of why the bytes are not a readable image within limits.
pub fn decode_image(bytes: Vec<u8>) -> Result<Pixels, String> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_DECODED);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| e.to_string())?;
    let (width, height) = (image.width(), image.height());
    let (format, data) = match image {
        DynamicImage::ImageLuma16(gray) => (
            PixelFormat::Gray16,
            gray.into_raw()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        other => (PixelFormat::Gray8, other.into_luma8().into_raw()),
    };
    Pixels::new(width, height, format, data).map_err(|e| e.to_string())
}

/// An image file as routing and the model see it.
#[derive(Debug)]
pub struct ReadFile {
    /// Its pixels.
    pub pixels: Pixels,
    /// A DICOM file's modality, when it names a known one.
    pub modality: Option<Modality>,
    /// A DICOM file's body part and view, where it names them.
    pub anatomy: Anatomy,
}

/// Reads any image file: DICOM through the gateway's reader (its pixels
/// and what it says of itself), anything else through [`decode_image`].
///
/// # Errors
/// Why the file cannot be classified.
pub fn read_file(path: &Path) -> Result<ReadFile, String> {
    use medgate_gateway::capture::{Oversize, Preparation};
    use medgate_gateway::dicom::read;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if !read::is_dicom(&name, &bytes) {
        return decode_image(bytes).map(|pixels| ReadFile {
            pixels,
            modality: None,
            anatomy: Anatomy::default(),
        });
    }
    let preparation = Preparation {
        format: PixelFormat::Gray16,
        resize: None,
        max_decoded_bytes: MAX_DECODED,
        oversize: Oversize::Downscale,
    };
    let limits = preparation.limits(u32::MAX);
    let image = read::read(bytes, preparation, &limits).map_err(|e| e.to_string())?;
    Ok(ReadFile {
        pixels: image.pixels,
        modality: image.modality,
        anatomy: image.anatomy,
    })
}

/// Classifies each file with the first of `models` that accepts it, as the
/// service would: routed by a DICOM file's own modality, body part and
/// view, else by `modality` and `anatomy` (what a device's config would
/// say).
pub fn classify(
    models: &[LoadedModel],
    backend: &Selected,
    files: &[impl AsRef<Path>],
    modality: Modality,
    anatomy: &Anatomy,
) -> Vec<FileVerdict> {
    let cards: Vec<&super::ModelCard> = models.iter().map(|m| &m.card).collect();
    files
        .iter()
        .map(|path| {
            let path = path.as_ref();
            let file = path.display().to_string();
            let read = match read_file(path) {
                Ok(read) => read,
                Err(e) => return FileVerdict::refused(&file, "unreadable", e),
            };
            let pixels = read.pixels;
            let anatomy = read.anatomy.or(anatomy);
            let query = routing::Query {
                modality: read.modality.unwrap_or(modality),
                format: pixels.format(),
                anatomy: &anatomy,
                hint: None,
            };
            let index = match routing::choose_for(&cards, &query) {
                Ok(index) => index,
                Err(detail) => return FileVerdict::refused(&file, "no_model", detail),
            };
            let model = &models[index];
            let side = model.card.input_size[0];
            let input = preprocess(&pixels, side);
            let output = infer(
                &model.network,
                &input,
                side,
                model.card.normalisation,
                &backend.device,
                1,
            );
            let Some(output) = output.first() else {
                return FileVerdict::refused(&file, "unreadable", "no model output".into());
            };
            let gate = model.gate.as_ref();
            let mut verdict = FileVerdict {
                model: Some(model.card.version.clone()),
                ..FileVerdict::refused(&file, "", String::new())
            };
            match decide(&model.card, gate, &input, output.margin, &output.features) {
                Decision::Classified {
                    label,
                    positive,
                    score,
                } => {
                    verdict.label = Some(label);
                    verdict.probability = Some(positive);
                    verdict.threshold = Some(model.card.threshold);
                    verdict.ood_score = score;
                    verdict.not_classified = None;
                    verdict.detail = None;
                }
                Decision::Unlike(refusal) => {
                    verdict.ood_score = refusal.score;
                    verdict.not_classified = Some("out_of_distribution".into());
                    verdict.detail = Some(refusal.detail);
                }
            }
            verdict
        })
        .collect()
}

/// How the gate did on one kind of image of a non-chest set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OodKind {
    /// The folder's name (`dicom-ct`, `synthetic`, …).
    pub kind: String,
    /// Images in it.
    pub images: usize,
    /// Images answered "not classified".
    pub refused: usize,
    /// The files that were classified all the same.
    pub classified: Vec<String>,
}

/// The gate's record on a non-chest set (`scripts/make-ood-set`): every
/// image there should be answered "not classified".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OodReport {
    /// The model measured.
    pub model_version: String,
    /// Per kind, in name order.
    pub kinds: Vec<OodKind>,
    /// Images in all.
    pub images: usize,
    /// Share refused.
    pub refused_share: f64,
}

/// Classifies every image file in each subfolder of `set` (as `modality`,
/// so that routing takes them to the model) and counts what is refused.
///
/// # Errors
/// When the set cannot be listed.
pub fn ood_report(
    model: &LoadedModel,
    backend: &Selected,
    set: &Path,
    modality: Modality,
) -> std::io::Result<OodReport> {
    let mut folders: Vec<std::path::PathBuf> = std::fs::read_dir(set)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    let models = std::slice::from_ref(model);
    let mut kinds = Vec::new();
    for folder in folders {
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&folder)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        // No body part: what the gate refuses here, routing could not.
        let verdicts = classify(models, backend, &files, modality, &Anatomy::default());
        let classified: Vec<String> = verdicts
            .iter()
            .filter(|v| v.not_classified.is_none())
            .map(|v| {
                Path::new(&v.file)
                    .file_name()
                    .map_or_else(|| v.file.clone(), |n| n.to_string_lossy().into_owned())
            })
            .collect();
        kinds.push(OodKind {
            kind: folder
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            images: verdicts.len(),
            refused: verdicts.len() - classified.len(),
            classified,
        });
    }
    let images: usize = kinds.iter().map(|k| k.images).sum();
    let refused: usize = kinds.iter().map(|k| k.refused).sum();
    Ok(OodReport {
        model_version: model.card.version.clone(),
        kinds,
        images,
        refused_share: refused as f64 / images.max(1) as f64,
    })
}

/// The report as a table.
pub fn render_ood(report: &OodReport) -> String {
    let mut out = format!(
        "model {}: {:.1} % of {} non-chest images not classified\n",
        report.model_version,
        report.refused_share * 100.0,
        report.images
    );
    for kind in &report.kinds {
        out.push_str(&format!(
            "  {:<18} {:>3} of {:>3} refused{}\n",
            kind.kind,
            kind.refused,
            kind.images,
            if kind.classified.is_empty() {
                String::new()
            } else {
                format!(" (classified: {})", kind.classified.join(", "))
            }
        ));
    }
    out
}
