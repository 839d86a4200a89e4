//! `medgate-receiver evaluate`: the shipped (or a given) model on one split
//! of a MedMNIST file, as a report (JSON and text), a plot of the confusion
//! matrix, ROC curve and reliability diagram, and per-image predictions.
//! Probabilities are the calibrated ones results show.

use std::path::Path;

use medgate_medmnist::{self as dataset, SplitName};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use super::LoadedModel;
use super::backend::Selected;
use super::infer::infer;
use super::metrics::{
    Confusion, ReliabilityBin, expected_calibration_error, reliability, roc_auc, roc_curve,
};

/// Bins of the reliability diagram and the calibration error.
pub const CALIBRATION_BINS: usize = 10;

/// The evaluation report, with exactly the fields of `evaluate --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Images evaluated.
    pub n: usize,
    /// Accuracy at the model's threshold.
    pub accuracy: f64,
    /// Mean of sensitivity and specificity.
    pub balanced_accuracy: f64,
    /// Sensitivity (recall) for pneumonia.
    pub sensitivity: f64,
    /// Specificity.
    pub specificity: f64,
    /// Precision for pneumonia.
    pub precision: f64,
    /// F1 for pneumonia.
    pub f1: f64,
    /// ROC AUC.
    pub auc: f64,
    /// `[[tn, fp], [fn, tp]]`, positive = pneumonia.
    pub confusion: [[u64; 2]; 2],
    /// Expected calibration error of the probabilities the model reports,
    /// over [`CALIBRATION_BINS`] equal-width bins.
    pub ece: f64,
    /// The reliability diagram behind `ece`.
    pub reliability: Vec<ReliabilityBin>,
    /// The decision threshold (calibrated probability of pneumonia).
    pub threshold: f32,
    /// The card's calibration temperature.
    pub temperature: f32,
    /// Share of the images the out-of-distribution gate accepts (`null`
    /// for a model without a gate).
    pub ood_acceptance: Option<f64>,
    /// `"wgpu"` or `"cpu"`.
    pub backend: String,
    /// The model card's version.
    pub model_version: String,
}

/// Scores and labels behind a report, for plotting.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Calibrated probability of pneumonia per image.
    pub scores: Vec<f32>,
    /// True labels.
    pub labels: Vec<u8>,
    /// Per image: the out-of-distribution score and whether the gate let it
    /// through (`None` without a gate).
    pub ood: Vec<Option<(f32, bool)>>,
}

/// Evaluates `model` on `split` of the file at `data`.
///
/// # Errors
/// If the file lacks the split (a clear message naming what it has) or its
/// images do not match the model's input size.
pub fn evaluate(
    model: &LoadedModel,
    backend: &Selected,
    data: &Path,
    split: SplitName,
) -> anyhow::Result<(EvalReport, Scored)> {
    let set = dataset::read_split(data, split)?;
    let [w, h] = model.card.input_size;
    anyhow::ensure!(
        set.width == w && set.height == h,
        "{}: {} images are {}x{}, the model takes {w}x{h}",
        data.display(),
        split.as_str(),
        set.width,
        set.height
    );
    let outputs = infer(
        &model.network,
        &set.images,
        w,
        model.card.normalisation,
        &backend.device,
        256,
    );
    let scores: Vec<f32> = outputs
        .iter()
        .map(|o| model.card.probability(o.margin))
        .collect();
    let ood: Vec<Option<(f32, bool)>> = outputs
        .iter()
        .zip(set.images.chunks_exact(w * h))
        .map(|(o, image)| {
            model
                .gate
                .as_ref()
                .map(|gate| match gate.admit(image, &o.features) {
                    Ok(score) => (score, true),
                    Err(refusal) => (refusal.score.unwrap_or(f32::INFINITY), false),
                })
        })
        .collect();
    let ood_acceptance = model.gate.as_ref().map(|_| {
        ood.iter().filter(|o| matches!(o, Some((_, true)))).count() as f64 / ood.len().max(1) as f64
    });
    let confusion = Confusion::at(&scores, &set.labels, model.card.threshold);
    let bins = reliability(&scores, &set.labels, CALIBRATION_BINS);
    let report = EvalReport {
        n: set.len,
        accuracy: confusion.accuracy(),
        balanced_accuracy: confusion.balanced_accuracy(),
        sensitivity: confusion.sensitivity(),
        specificity: confusion.specificity(),
        precision: confusion.precision(),
        f1: confusion.f1(),
        auc: roc_auc(&scores, &set.labels),
        confusion: confusion.matrix(),
        ece: expected_calibration_error(&bins),
        reliability: bins,
        threshold: model.card.threshold,
        temperature: model.card.temperature,
        ood_acceptance,
        backend: backend.name.to_owned(),
        model_version: model.card.version.clone(),
    };
    Ok((
        report,
        Scored {
            scores,
            labels: set.labels,
            ood,
        },
    ))
}

/// The report as a table.
pub fn render_text(r: &EvalReport, split: SplitName) -> String {
    let [[tn, fp], [fn_, tp]] = r.confusion;
    format!(
        "model {} on {} ({} images, backend {})\n\
         accuracy           {:.4}\n\
         balanced accuracy  {:.4}\n\
         sensitivity        {:.4}\n\
         specificity        {:.4}\n\
         precision          {:.4}\n\
         F1                 {:.4}\n\
         ROC AUC            {:.4}\n\
         calibration error  {:.4} (ECE, {CALIBRATION_BINS} bins; temperature {:.3}, threshold {:.4})\n\
         in distribution    {}\n\
         confusion          predicted normal  predicted pneumonia\n\
         actual normal      {tn:>16}  {fp:>19}\n\
         actual pneumonia   {fn_:>16}  {tp:>19}\n",
        r.model_version,
        split.as_str(),
        r.n,
        r.backend,
        r.accuracy,
        r.balanced_accuracy,
        r.sensitivity,
        r.specificity,
        r.precision,
        r.f1,
        r.auc,
        r.ece,
        r.temperature,
        r.threshold,
        r.ood_acceptance.map_or_else(
            || "no gate in this model folder".to_owned(),
            |a| format!(
                "{:.1} % accepted by the out-of-distribution gate",
                a * 100.0
            )
        ),
    )
}

/// Per-image predictions as CSV: index, label, calibrated probability of
/// pneumonia, the decision at `threshold`, the out-of-distribution score
/// and whether the gate accepted the image (empty without a gate).
pub fn predictions_csv(scored: &Scored, threshold: f32) -> String {
    let mut out =
        String::from("index,label,probability_pneumonia,predicted,ood_score,in_distribution\n");
    for (i, ((p, label), ood)) in scored
        .scores
        .iter()
        .zip(&scored.labels)
        .zip(&scored.ood)
        .enumerate()
    {
        let predicted = if *p >= threshold {
            "pneumonia"
        } else {
            "normal"
        };
        let label = if *label == 1 { "pneumonia" } else { "normal" };
        let (score, accepted) = match ood {
            Some((score, accepted)) => (format!("{score:.3}"), accepted.to_string()),
            None => (String::new(), String::new()),
        };
        out.push_str(&format!(
            "{i},{label},{p:.6},{predicted},{score},{accepted}\n"
        ));
    }
    out
}

/// Draws the confusion matrix (left), the ROC curve (middle) and the
/// reliability diagram (right) into a PNG.
///
/// # Errors
/// A description if drawing or writing fails.
pub fn plot(report: &EvalReport, scored: &Scored, out: &Path) -> Result<(), String> {
    let labels = crate::plotting::register_font();
    let root = BitMapBackend::new(out, (1900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, rest) = root.split_horizontally(600);
    let (right, third) = rest.split_horizontally(650);
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();

    // Confusion matrix: rows = actual, columns = predicted; shade by the
    // share of the actual class.
    let mut chart = ChartBuilder::on(&left);
    chart.margin(30);
    if labels {
        chart
            .caption("confusion matrix (rows: actual)", ("sans-serif", 26))
            .x_label_area_size(40)
            .y_label_area_size(90);
    }
    // Segmented axes put each label at the centre of its cell.
    let mut chart = chart
        .build_cartesian_2d((0u32..1u32).into_segmented(), (0u32..1u32).into_segmented())
        .map_err(err)?;
    let names = ["normal", "pneumonia"];
    let name_of = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => *i,
        SegmentValue::Last => 2,
    };
    if labels {
        chart
            .configure_mesh()
            .disable_mesh()
            .x_label_formatter(&|v| {
                names
                    .get(name_of(v) as usize)
                    .map_or(String::new(), |n| format!("predicted {n}"))
            })
            // Actual "normal" is drawn on the top row (y = 1).
            .y_label_formatter(&|v| match name_of(v) {
                0 => names[1].to_string(),
                1 => names[0].to_string(),
                _ => String::new(),
            })
            .draw()
            .map_err(err)?;
    }
    for (actual, row) in report.confusion.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1) as f64;
        for (predicted, &count) in row.iter().enumerate() {
            let share = count as f64 / total;
            let shade = (255.0 * (1.0 - 0.75 * share)) as u8;
            let (x, y) = (predicted as u32, 1 - actual as u32);
            // The right and top edges of the last cell are the axis ends.
            let edge = |v: u32| {
                if v == 1 {
                    SegmentValue::Last
                } else {
                    SegmentValue::Exact(v + 1)
                }
            };
            let cell = [
                (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                (edge(x), edge(y)),
            ];
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    cell,
                    RGBColor(shade, shade, 255).filled(),
                )))
                .map_err(err)?;
            if labels {
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{count} ({:.1}%)", 100.0 * share),
                        (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                        TextStyle::from(("sans-serif", 28).into_font())
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    )))
                    .map_err(err)?;
            }
        }
    }

    let mut chart = ChartBuilder::on(&right);
    chart.margin(30);
    if labels {
        chart
            .caption(
                format!("ROC curve (AUC {:.4})", report.auc),
                ("sans-serif", 26),
            )
            .x_label_area_size(40)
            .y_label_area_size(50);
    }
    let mut chart = chart.build_cartesian_2d(0.0..1.0, 0.0..1.0).map_err(err)?;
    if labels {
        chart
            .configure_mesh()
            .x_desc("false positive rate (1 - specificity)")
            .y_desc("sensitivity")
            .draw()
            .map_err(err)?;
    }
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            roc_curve(&scored.scores, &scored.labels),
            RED.stroke_width(3),
        ))
        .map_err(err)?;
    let point = (1.0 - report.specificity, report.sensitivity);
    chart
        .draw_series(std::iter::once(Circle::new(point, 7, BLUE.filled())))
        .map_err(err)?;

    // Reliability: per bin, the share of positives against the mean
    // predicted probability; calibrated points lie on the diagonal.
    let mut chart = ChartBuilder::on(&third);
    chart.margin(30);
    if labels {
        chart
            .caption(
                format!("reliability (ECE {:.4})", report.ece),
                ("sans-serif", 26),
            )
            .x_label_area_size(40)
            .y_label_area_size(50);
    }
    let mut chart = chart.build_cartesian_2d(0.0..1.0, 0.0..1.0).map_err(err)?;
    if labels {
        chart
            .configure_mesh()
            .x_desc("predicted probability of pneumonia")
            .y_desc("observed share of pneumonia")
            .draw()
            .map_err(err)?;
    }
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
        .map_err(err)?;
    let most = report
        .reliability
        .iter()
        .map(|b| b.count)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    for bin in report.reliability.iter().filter(|b| b.count > 0) {
        // Bar height: how many images the bin holds, relative to the
        // fullest bin, in the bottom fifth of the chart.
        let height = 0.2 * bin.count as f64 / most;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(bin.lower, 0.0), (bin.upper, height)],
                BLUE.mix(0.2).filled(),
            )))
            .map_err(err)?;
    }
    chart
        .draw_series(LineSeries::new(
            report
                .reliability
                .iter()
                .filter(|b| b.count > 0)
                .map(|b| (b.predicted, b.observed)),
            RED.stroke_width(3),
        ))
        .map_err(err)?;
    chart
        .draw_series(
            report
                .reliability
                .iter()
                .filter(|b| b.count > 0)
                .map(|b| Circle::new((b.predicted, b.observed), 5, RED.filled())),
        )
        .map_err(err)?;
    root.present().map_err(|e| e.to_string())
}
