//! `medgate-receiver train`, `calibrate`, `evaluate`, `evaluate-ood` and
//! `classify` as a user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const RECEIVER: &str = env!("CARGO_BIN_EXE_medgate-receiver");

fn run(args: &[&str]) -> Output {
    Command::new(RECEIVER).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "medgate-receiver {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `train` on `data` into `out` for `epochs`, on the CPU, with a tiny
/// network, plus `extra` arguments; what it printed.
fn train_tiny(data: &Path, out: &Path, epochs: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--data",
        s(data),
        "--out",
        s(out),
        "--epochs",
        epochs,
        "--backend",
        "cpu",
        "--channels",
        "4,8,8",
    ];
    args.extend_from_slice(extra);
    ok(&args)
}

fn data_file() -> PathBuf {
    let dir = std::env::var_os("MEDGATE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    dir.join("pneumoniamnist.npz")
}

fn npy(shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A small synthetic MedMNIST-style file: bright-centre images are class 1,
/// dark-centre images class 0, with noise. No test split.
fn synthetic_npz(dir: &Path) -> PathBuf {
    synthetic_npz_with(dir, "synthetic.npz", 96, None)
}

/// [`synthetic_npz`] with `train` training images (the first 96 always the
/// same), and `flip` the label of that training image flipped.
fn synthetic_npz_with(dir: &Path, name: &str, train: usize, flip: Option<usize>) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let split = |name: &str, n: usize| -> Vec<(String, Vec<u8>)> {
        // Each split its own noise, so that one's size leaves the other alone.
        let mut x = u32::from(name == "val") + 1;
        let mut images = Vec::with_capacity(n * 784);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let label = (i % 2) as u8;
            for p in 0..784 {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                let (r, c) = (p / 28, p % 28);
                let centre = (8..20).contains(&r) && (8..20).contains(&c);
                let base = if centre && label == 1 { 180 } else { 70 };
                images.push((base + (x >> 27) as i32) as u8);
            }
            labels.push(label);
        }
        if name == "train"
            && let Some(i) = flip
        {
            labels[i] ^= 1;
        }
        vec![
            (
                format!("{name}_images"),
                npy(&format!("({n}, 28, 28)"), &images),
            ),
            (format!("{name}_labels"), npy(&format!("({n}, 1)"), &labels)),
        ]
    };
    for (name, bytes) in split("train", train).into_iter().chain(split("val", 32)) {
        zip.start_file(
            format!("{name}.npy"),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.write_all(&bytes).unwrap();
    }
    zip.finish().unwrap();
    path
}

const REPORT_KEYS: [&str; 16] = [
    "n",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "auc",
    "confusion",
    "ece",
    "reliability",
    "threshold",
    "temperature",
    "ood_acceptance",
    "backend",
    "model_version",
];

fn assert_report_shape(report: &serde_json::Value) {
    let mut keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = REPORT_KEYS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected);
}

#[test]
fn train_with_one_seed_writes_the_same_model_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_npz(dir.path());
    let train = |name: &str, seed: &str| {
        let model = dir.path().join(name);
        train_tiny(
            &data,
            &model,
            "2",
            &["--seed", seed, "--normalise", "image"],
        );
        model
    };
    let (a, b) = (train("a", "5"), train("b", "5"));
    for f in ["model.json", "ood.json"] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs between two runs with seed 5");
    }
    // The weights file also holds parameter ids that Burn draws at random,
    // so the weights are compared by what they answer, image by image.
    let predictions = |model: &Path| {
        let csv = dir.path().join(format!(
            "{}.csv",
            model.file_name().unwrap().to_string_lossy()
        ));
        ok(&[
            "evaluate",
            "--data",
            s(&data),
            "--split",
            "val",
            "--model",
            s(model),
            "--backend",
            "cpu",
            "--predictions",
            s(&csv),
        ]);
        std::fs::read_to_string(csv).unwrap()
    };
    let (x, y) = (predictions(&a), predictions(&b));
    assert!(x.lines().count() > 10, "{x}");
    assert_eq!(x, y, "the two runs' weights answer differently");
    assert_ne!(
        x,
        predictions(&train("c", "6")),
        "another seed, another model"
    );
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["normalisation"]["scope"], "image", "{card}");
    assert_eq!(card["training"]["seed"], 5, "{card}");
}

#[test]
fn train_writes_a_model_that_evaluate_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_npz(dir.path());
    let model = dir.path().join("model");
    let said = train_tiny(&data, &model, "2", &["--version", "test-1"]);
    assert!(said.contains("kept epoch"), "{said}");
    for f in ["model.json", "model.bpk", "ood.json", "training-log.json"] {
        assert!(model.join(f).exists(), "{f} missing");
    }
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("model.json")).unwrap()).unwrap();
    assert!(card["temperature"].as_f64().unwrap() > 0.0);
    assert!(
        card["threshold_rule"]
            .as_str()
            .unwrap()
            .contains("sensitivity first"),
        "{card}"
    );
    let json = ok(&[
        "evaluate",
        "--data",
        s(&data),
        "--split",
        "val",
        "--model",
        s(&model),
        "--backend",
        "cpu",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_report_shape(&report);
    assert_eq!(report["n"], 32);
    assert_eq!(report["model_version"], "test-1");
    assert_eq!(report["backend"], "cpu");
    // The file has no test split: a clear error naming what it has.
    let out = run(&[
        "evaluate",
        "--data",
        s(&data),
        "--split",
        "test",
        "--model",
        s(&model),
        "--backend",
        "cpu",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("test_images") && stderr.contains("val_images"),
        "{stderr}"
    );
}

/// `evaluate --json` of a model folder (or the shipped model) on the real
/// val split, with `extra` arguments.
fn evaluate_val(model: Option<&Path>, extra: &[&str]) -> serde_json::Value {
    let data = data_file();
    let mut args = vec!["evaluate", "--data", s(&data), "--split", "val"];
    args.extend(["--backend", "cpu", "--json"]);
    if let Some(model) = model {
        args.extend(["--model", s(model)]);
    }
    args.extend(extra);
    serde_json::from_str(&ok(&args)).unwrap()
}

#[test]
fn train_refuses_and_counts_samples_its_manifest_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let vouched = synthetic_npz(dir.path());
    let manifest = dir.path().join("manifest.txt");
    let said = ok(&["manifest", "--data", s(&vouched), "--out", s(&manifest)]);
    assert!(said.contains("96 train and 32 val samples"), "{said}");
    // Later: one label flipped and four samples added.
    let poisoned = synthetic_npz_with(dir.path(), "poisoned.npz", 100, Some(5));
    let model = dir.path().join("model");
    let said = train_tiny(&poisoned, &model, "1", &["--manifest", s(&manifest)]);
    assert!(
        said.contains(
            "manifest, train: 95 samples kept, 5 refused (changed or added), 1 listed but missing"
        ),
        "{said}"
    );
    assert!(
        said.contains("manifest, val: 32 samples kept, 0 refused"),
        "{said}"
    );
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("model.json")).unwrap()).unwrap();
    let record = &card["training"]["manifest"];
    assert_eq!(record["train"]["refused"], 5, "{card}");
    assert_eq!(record["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(card["training"]["train_images"], 95);

    // A manifest that is not one is named with its line.
    std::fs::write(&manifest, "train 1234\n").unwrap();
    let out = run(&[
        "train",
        "--data",
        s(&poisoned),
        "--manifest",
        s(&manifest),
        "--out",
        s(&model),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("manifest.txt:1"), "{stderr}");
}

#[test]
fn evaluate_reports_the_shipped_model_on_real_val_images() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("eval.png");
    let report = evaluate_val(None, &["--plot", s(&plot)]);
    assert_report_shape(&report);
    assert_eq!(report["n"], 524);
    let confusion = report["confusion"].as_array().unwrap();
    let total: u64 = confusion
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
        .sum();
    assert_eq!(total, 524);
    assert!(report["auc"].as_f64().unwrap() > 0.95);
    assert!(report["balanced_accuracy"].as_f64().unwrap() > 0.85);
    let ece = report["ece"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ece), "{ece}");
    let bins = report["reliability"].as_array().unwrap();
    assert_eq!(bins.len(), 10);
    let binned: u64 = bins.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(binned, 524);
    // Calibrated: the shipped card's temperature halves the raw softmax's
    // error (0.089 before calibration).
    assert!(ece < 0.06, "ECE {ece}");
    let accepted = report["ood_acceptance"].as_f64().unwrap();
    assert!(accepted >= 0.97, "the gate accepts {accepted} of val");
    let drawn = image::open(&plot).unwrap();
    assert_eq!((drawn.width(), drawn.height()), (1900, 600));
}

#[test]
fn evaluate_writes_each_images_probability_label_and_ood_score() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("val.csv");
    let report = evaluate_val(None, &["--predictions", s(&csv)]);
    let threshold = report["threshold"].as_f64().unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("index,label,probability_pneumonia,predicted,ood_score,in_distribution")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 524);
    let mut called = 0;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], i.to_string());
        let p: f64 = row[2].parse().unwrap();
        let expected = if p >= threshold {
            "pneumonia"
        } else {
            "normal"
        };
        assert_eq!(row[3], expected, "row {i}: the label follows the threshold");
        called += usize::from(row[3] == "pneumonia");
        let score: f64 = row[4].parse().unwrap();
        assert_eq!(row[5] == "true", score <= 1.0, "row {i}");
    }
    let tp_fp =
        report["confusion"][0][1].as_u64().unwrap() + report["confusion"][1][1].as_u64().unwrap();
    assert_eq!(called as u64, tp_fp, "the CSV and the report agree");
}

/// 8-bit grayscale PNG of `pixels`.
fn write_png(path: &Path, width: u32, height: u32, pixels: Vec<u8>) {
    image::GrayImage::from_raw(width, height, pixels)
        .unwrap()
        .save(path)
        .unwrap();
}

#[test]
fn classify_answers_for_files_as_the_receiver_would() {
    let dir = tempfile::tempdir().unwrap();
    let val = medgate_medmnist::read_split(&data_file(), medgate_medmnist::SplitName::Val).unwrap();
    // A val X-ray at a gateway's size, the same turned on its side and
    // upside down, noise, and a file that is no image.
    let original = image::GrayImage::from_raw(28, 28, val.image(0).unwrap().to_vec()).unwrap();
    let big = image::imageops::resize(&original, 256, 256, image::imageops::FilterType::Lanczos3);
    let xray = dir.path().join("xray.png");
    big.save(&xray).unwrap();
    let flipped = dir.path().join("turned.png");
    image::imageops::rotate90(&big).save(&flipped).unwrap();
    let upside_down = dir.path().join("upside-down.png");
    image::imageops::flip_vertical(&big)
        .save(&upside_down)
        .unwrap();
    let noise = dir.path().join("noise.png");
    let mut x = 7u32;
    let pixels = (0..128 * 128)
        .map(|_| {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 24) as u8
        })
        .collect();
    write_png(&noise, 128, 128, pixels);
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"not an image").unwrap();
    let files = [s(&xray), s(&flipped), s(&noise), s(&junk), s(&upside_down)];

    let mut args = vec!["classify", "--json"];
    args.extend(files);
    let lines: Vec<serde_json::Value> = ok(&args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    let xray_verdict = &lines[0];
    assert_eq!(xray_verdict["file"], s(&xray));
    assert_eq!(xray_verdict["model"], "pneumonia-cnn-2");
    let label = if val.labels[0] == 1 {
        "pneumonia"
    } else {
        "normal"
    };
    assert_eq!(xray_verdict["label"], label);
    let p = xray_verdict["probability"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));
    assert!(xray_verdict["ood_score"].as_f64().unwrap() <= 1.0);
    assert!(xray_verdict["not_classified"].is_null());
    for (verdict, reason) in [
        (&lines[1], "out_of_distribution"),
        (&lines[2], "out_of_distribution"),
        (&lines[3], "unreadable"),
        (&lines[4], "out_of_distribution"),
    ] {
        assert_eq!(verdict["not_classified"], reason, "{verdict}");
        assert!(verdict["label"].is_null(), "{verdict}");
        assert!(!verdict["detail"].as_str().unwrap().is_empty());
    }

    // DICOM: routed by its own Modality, its pixels read as a gateway reads
    // them. The X-ray as DX (img2dcm, JPEG baseline) is classified like the
    // PNG; pydicom's MR is not.
    let jpeg = dir.path().join("xray.jpg");
    big.save_with_format(&jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let dcm = dir.path().join("xray.dcm");
    let made = Command::new("img2dcm")
        .arg(&jpeg)
        .arg(&dcm)
        .args(["-k", "Modality=DX", "-k", "BodyPartExamined=CHEST"])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mr = dicom_samples().join("MR_small.dcm");
    let lines: Vec<serde_json::Value> = ok(&["classify", "--json", s(&dcm), s(&mr)])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["label"], label, "{}", lines[0]);
    assert_eq!(lines[1]["not_classified"], "no_model", "{}", lines[1]);
    assert_eq!(lines[1]["detail"], "no model for MR");

    // The same as a person reads it; a CT is routed to no model.
    let text = ok(&["classify", s(&xray), "--modality", "CT"]);
    assert!(
        text.contains("not classified (no_model: no model for CT)"),
        "{text}"
    );
    let text = ok(&["classify", s(&xray)]);
    assert!(text.contains(&format!("{}: {label} (", s(&xray))), "{text}");
    assert!(text.contains("out-of-distribution score"), "{text}");

    // A body part or view the chest model was not made for, as a device's
    // config would name it.
    let text = ok(&["classify", s(&xray), "--body-part", "shoulder"]);
    assert!(
        text.contains("not classified (no_model: no model for DX/SHOULDER)"),
        "{text}"
    );
    let text = ok(&[
        "classify",
        s(&xray),
        "--body-part",
        "CHEST",
        "--view-position",
        "LL",
    ]);
    assert!(text.contains("no model for DX/CHEST LL"), "{text}");
    let text = ok(&[
        "classify",
        s(&xray),
        "--body-part",
        "CHEST",
        "--view-position",
        "PA",
    ]);
    assert!(text.contains(&format!("{}: {label} (", s(&xray))), "{text}");
    let out = run(&["classify", s(&xray), "--body-part", "CHEST/PA"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--body-part") && err.contains("not a DICOM code string"),
        "{err}"
    );
}

/// A cached folder that a script fills (scripts/test runs it): from `var`,
/// else `~/.cache/medgate/{name}`; `marker` must be in it.
fn cached(var: &str, name: &str, marker: &str, script: &str) -> PathBuf {
    let dir = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap())
            .join(".cache/medgate")
            .join(name)
    });
    assert!(
        dir.join(marker).exists(),
        "{} is missing {marker}: run {script}",
        dir.display()
    );
    dir
}

/// pydicom's test files.
fn dicom_samples() -> PathBuf {
    cached(
        "MEDGATE_DICOM_SAMPLES",
        "dicom-samples",
        "MR_small.dcm",
        "scripts/fetch-dicom-samples",
    )
}

/// The non-chest image set.
fn ood_set() -> PathBuf {
    cached(
        "MEDGATE_OOD_SET",
        "ood-set",
        ".ood-set-2",
        "scripts/make-ood-set",
    )
}

#[test]
fn the_shipped_gate_refuses_the_non_chest_set() {
    let json = ok(&["evaluate-ood", "--set", s(&ood_set()), "--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let kinds: Vec<&str> = report["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "dicom-ct",
            "dicom-mr",
            "dicom-other",
            "synthetic",
            "xray-transformed"
        ]
    );
    assert!(report["images"].as_u64().unwrap() >= 150, "{report}");
    let refused = report["refused_share"].as_f64().unwrap();
    assert!(
        refused >= 0.95,
        "{refused} of the non-chest set refused: {report}"
    );
    // What is committed beside the model is what it does.
    let committed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("model/ood-report.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(committed["refused_share"], report["refused_share"]);
}

#[test]
fn calibrate_fits_a_model_folder_without_changing_its_ranking() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("calibrated");
    let said = ok(&[
        "calibrate",
        "--data",
        s(&data_file()),
        "--out",
        s(&out),
        "--min-sensitivity",
        "0.99",
    ]);
    assert!(said.contains("temperature"), "{said}");
    let report = evaluate_val(Some(&out), &[]);
    assert!(report["sensitivity"].as_f64().unwrap() >= 0.99, "{report}");
    let shipped = evaluate_val(None, &[]);
    assert_eq!(
        report["auc"], shipped["auc"],
        "temperature scaling keeps the ranking"
    );
}

#[test]
fn calibrate_refuses_a_member_that_does_not_fit_and_names_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let member = dir.path().join("per-image");
    std::fs::create_dir_all(&member).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("model");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, member.join(path.file_name().unwrap())).unwrap();
    }
    let card = member.join("model.json");
    let mut text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&card).unwrap()).unwrap();
    text["version"] = "per-image".into();
    text["normalisation"]["scope"] = "image".into();
    std::fs::write(&card, text.to_string()).unwrap();
    let out_dir = dir.path().join("joined");
    let out = run(&[
        "calibrate",
        "--data",
        s(&data_file()),
        "--out",
        s(&out_dir),
        "--member",
        s(&member),
        "--backend",
        "cpu",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("--member {}", member.display()))
            && stderr.contains("per-image")
            && stderr.contains("they differ in normalisation"),
        "{stderr}"
    );
    assert!(!out_dir.exists(), "nothing is written");
}

#[test]
fn bad_model_folders_are_named_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("model.json"), "{\"format\": 3}").unwrap();
    let out = run(&[
        "evaluate",
        "--data",
        s(&data_file()),
        "--split",
        "val",
        "--model",
        s(&model),
        "--backend",
        "cpu",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model.json"), "{stderr}");
}
