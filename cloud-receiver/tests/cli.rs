//! `medgate-receiver train` and `evaluate` as a user runs them.
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
    let path = dir.join("synthetic.npz");
    let file = std::fs::File::create(&path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let mut x = 1u32;
    let mut split = |name: &str, n: usize| -> Vec<(String, Vec<u8>)> {
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
        vec![
            (
                format!("{name}_images"),
                npy(&format!("({n}, 28, 28)"), &images),
            ),
            (format!("{name}_labels"), npy(&format!("({n}, 1)"), &labels)),
        ]
    };
    for (name, bytes) in split("train", 96).into_iter().chain(split("val", 32)) {
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

const REPORT_KEYS: [&str; 13] = [
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
fn train_writes_a_model_that_evaluate_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_npz(dir.path());
    let model = dir.path().join("model");
    let said = ok(&[
        "train",
        "--data",
        s(&data),
        "--out",
        s(&model),
        "--epochs",
        "2",
        "--backend",
        "cpu",
        "--channels",
        "4,8,8",
        "--version",
        "test-1",
    ]);
    assert!(said.contains("kept epoch"), "{said}");
    for f in ["model.json", "model.bpk", "training-log.json"] {
        assert!(model.join(f).exists(), "{f} missing");
    }
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

#[test]
fn evaluate_reports_the_shipped_model_on_real_val_images() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("eval.png");
    let json = ok(&[
        "evaluate",
        "--data",
        s(&data_file()),
        "--split",
        "val",
        "--backend",
        "cpu",
        "--json",
        "--plot",
        s(&plot),
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
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
    let drawn = image::open(&plot).unwrap();
    assert_eq!((drawn.width(), drawn.height()), (1300, 600));
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
