//! `medgate-sim demo` and `medgate-sim load` as a user runs them: the whole
//! system in one process (embedded broker with mutual TLS, receiver,
//! gateway, simulated sensors), real X-rays, one line per result, a summary,
//! `--images N`, Ctrl-C; and the load generator's report.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SIM: &str = env!("CARGO_BIN_EXE_medgate-sim");

/// Generous: the first run loads the model and makes an RSA key.
const WAIT: Duration = Duration::from_secs(180);

fn data_dir() -> PathBuf {
    std::env::var_os("MEDGATE_DATA_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
        PathBuf::from,
    )
}

/// One result line: sensor, frame, label, confidence, latency, and the
/// dataset's label when the images have one.
#[derive(Debug)]
struct Line {
    sensor: String,
    frame: u32,
    label: String,
    confidence: f64,
    latency_ms: f64,
    truth: Option<String>,
}

fn parse(line: &str) -> Option<Line> {
    let words: Vec<&str> = line.split_whitespace().collect();
    // xr-1 frame 3 pneumonia 97.1% capture→result 23.4 ms (dataset: pneumonia)
    if words.len() < 8 || words[1] != "frame" || words[5] != "capture→result" {
        return None;
    }
    Some(Line {
        sensor: words[0].to_owned(),
        frame: words[2].parse().ok()?,
        label: words[3].to_owned(),
        confidence: words[4].trim_end_matches('%').parse().ok()?,
        latency_ms: words[6].parse().ok()?,
        truth: words.get(9).map(|w| w.trim_end_matches(')').to_owned()),
    })
}

/// Runs a command to its end within `WAIT`; returns status, stdout, stderr.
fn run(command: &mut Command) -> (std::process::ExitStatus, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        let _ = done_tx.send((child.wait().unwrap(), text));
    });
    let (status, out) = done.recv_timeout(WAIT).expect("the command did not finish");
    (status, out, err.join().unwrap())
}

#[test]
fn the_demo_answers_each_frame_once_with_a_readable_line_and_a_summary() {
    let (status, out, err) = run(Command::new(SIM)
        .args(["demo", "--images", "8", "--sensors", "2", "--rate", "4"])
        .args(["--size", "64", "--backend", "cpu"])
        .env("MEDGATE_DATA_DIR", data_dir()));
    assert!(status.success(), "{status}\n{out}\n{err}");
    assert!(err.contains("PneumoniaMNIST validation X-rays"), "{err}");
    assert!(
        err.contains("mutual") || err.contains("client certificates"),
        "{err}"
    );
    let lines: Vec<Line> = out.lines().filter_map(parse).collect();
    assert!(lines.len() >= 8, "{out}");
    let mut seen = HashSet::new();
    for line in &lines {
        assert!(["xr-1", "xr-2"].contains(&line.sensor.as_str()), "{line:?}");
        assert!(
            seen.insert((line.sensor.clone(), line.frame)),
            "twice: {line:?}"
        );
        assert!(
            ["normal", "pneumonia"].contains(&line.label.as_str()),
            "{line:?}"
        );
        assert!(
            line.confidence > 0.0 && line.confidence <= 100.0,
            "{line:?}"
        );
        assert!(
            line.latency_ms > 0.0 && line.latency_ms < 60_000.0,
            "{line:?}"
        );
        assert!(
            matches!(line.truth.as_deref(), Some("normal" | "pneumonia")),
            "{line:?}"
        );
    }
    // Both sensors were answered, each from its first frame on.
    for sensor in ["xr-1", "xr-2"] {
        assert!(seen.contains(&(sensor.to_owned(), 1)), "{sensor}: {out}");
    }
    let summary = out.lines().find(|l| l.starts_with("summary:")).unwrap();
    assert!(
        summary.contains(&format!("{} results", lines.len())),
        "{summary}"
    );
    assert!(out.contains("capture→result: p50"), "{out}");
    assert!(out.contains("agreement with the dataset's labels"), "{out}");
    // No pixel data or key material on any output.
    assert!(!out.contains("PRIVATE KEY") && !err.contains("PRIVATE KEY"));
}

#[test]
fn without_data_the_demo_says_so_and_uses_generated_images() {
    let home = tempfile::tempdir().unwrap();
    let (status, out, err) = run(Command::new(SIM)
        .args(["demo", "--images", "3", "--sensors", "1", "--rate", "5"])
        .args(["--size", "32", "--backend", "cpu"])
        .env_remove("MEDGATE_DATA_DIR")
        .env("HOME", home.path()));
    assert!(status.success(), "{status}\n{out}\n{err}");
    assert!(err.contains("generated test images"), "{err}");
    assert!(err.contains("scripts/fetch-data"), "{err}");
    // Generated frames are no chest X-rays: the receiver's gate answers
    // them not classified, and each sensor's RESULT register says so.
    let refused: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" frame ") && l.contains("not-classified"))
        .collect();
    assert!(refused.len() >= 3, "{out}");
    assert!(
        out.lines().filter_map(parse).next().is_none(),
        "no generated frame got a class: {out}"
    );
    assert!(out.contains("not classified (no model, or unlike"), "{out}");
}

#[test]
fn ctrl_c_stops_the_demo_cleanly_with_a_summary() {
    let mut child = Command::new(SIM)
        .args(["demo", "--sensors", "2", "--rate", "5", "--size", "32"])
        .args(["--backend", "cpu"])
        .env("MEDGATE_DATA_DIR", data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = lines_tx.send(line.unwrap());
        }
    });
    // Wait for two results, then press Ctrl-C.
    let mut results = 0;
    while results < 2 {
        let line = lines.recv_timeout(WAIT).expect("no result line");
        if parse(&line).is_some() {
            results += 1;
        }
    }
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait().unwrap());
    });
    let status = done.recv_timeout(WAIT).expect("the demo did not stop");
    assert!(status.success(), "{status}");
    let rest: Vec<String> = lines.iter().collect();
    assert!(rest.iter().any(|l| l.starts_with("summary:")), "{rest:?}");
}

#[test]
fn the_load_generator_reports_throughput_latency_footprint_and_ceiling() {
    let report = load_report("embedded", 1, &[]);
    assert!(
        report["broker"].as_str().unwrap().contains("rumqttd"),
        "{report}"
    );
}

#[test]
fn the_load_generator_runs_through_mosquitto_with_the_shipped_access_rules() {
    // Three receivers, with rules from the ACL generator for each, on the
    // shipped broker config; 16-bit frames, sealed and answered as such.
    let report = load_report("mosquitto", 3, &["--depth", "16"]);
    assert_eq!(report["depth"].as_u64(), Some(16), "{report}");
    assert!(
        report["sealed_bytes"].as_u64().unwrap() > 2 * 64 * 64,
        "two bytes a pixel: {report}"
    );
    assert!(
        report["broker"].as_str().unwrap().contains("mosquitto"),
        "{report}"
    );
    // mosquitto keeps every QoS 1 message of the ceiling (rumqttd may not).
    assert_eq!(report["ceiling"]["lost"].as_u64(), Some(0), "{report}");
}

#[test]
fn the_load_generator_runs_across_an_rmqtt_cluster() {
    // The gateway on node 1, two receivers on nodes 2 and 3: every image and
    // result crosses the cluster; each node's CPU is reported.
    assert!(
        medgate_testkit::rmqtt::installed(),
        "rmqttd is missing: run scripts/install-rmqtt (scripts/test does)"
    );
    let report = load_report("rmqtt-cluster", 2, &[]);
    assert!(
        report["broker"].as_str().unwrap().contains("rmqtt cluster"),
        "{report}"
    );
    let nodes: Vec<&str> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .filter(|name| name.starts_with("rmqtt node"))
        .collect();
    assert_eq!(
        nodes,
        ["rmqtt node 1", "rmqtt node 2", "rmqtt node 3"],
        "{report}"
    );
}

#[test]
fn under_a_junk_flood_from_a_stolen_gateway_identity_every_real_image_is_answered() {
    // Scenario 8's shape (the p99 under 1 000 junk messages/s is measured
    // with `medgate-sim load --junk-rate`, not asserted here): junk is
    // published, the real stream loses nothing.
    let report = load_report("mosquitto", 1, &["--junk-rate", "300"]);
    let sent = report["junk_sent"].as_u64().unwrap_or(0);
    assert!(sent > 300, "{report}");
    assert_eq!(report["junk_offered_per_s"].as_f64(), Some(300.0));
}

/// Runs a short load through `broker` with `receivers` receivers and checks
/// what every report holds.
fn load_report(broker: &str, receivers: u8, extra: &[&str]) -> serde_json::Value {
    let (status, out, err) = run(Command::new(SIM)
        // Five sensors: more than the gateway process's blocking pool (4 threads).
        .args(["load", "--sensors", "5", "--rate", "25", "--duration", "3"])
        .args([
            "--warm-up",
            "1",
            "--idle",
            "2",
            "--size",
            "64",
            "--ceiling-seconds",
            "2",
        ])
        .args(["--backend", "cpu", "--broker", broker, "--json"])
        .args(["--receivers", &receivers.to_string()])
        .args(extra)
        .env("MEDGATE_DATA_DIR", data_dir()));
    assert!(status.success(), "{status}\n{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let number = |path: &str| {
        report
            .pointer(path)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("{path} missing: {report}"))
    };
    assert_eq!(number("/sensors"), 5.0);
    assert_eq!(number("/receivers"), f64::from(receivers));
    assert!(number("/captured") > 0.0, "{report}");
    assert!(number("/answered") > 0.0, "{report}");
    // Every frame answered, none of them through the gateway's re-publication
    // (its result timeout is longer than the drain): the broker lost nothing.
    assert_eq!(number("/unanswered"), 0.0, "{report}");
    assert!(number("/images_per_s") > 0.0, "{report}");
    assert!(number("/sealed_bytes") > 64.0 * 64.0, "{report}");
    let (p50, p99) = (number("/latency_ms/p50"), number("/latency_ms/p99"));
    assert!(p50 > 0.0 && p50 <= p99, "{report}");
    assert!(number("/gateway/rss_median_mb") > 1.0, "{report}");
    assert!(number("/gateway/rss_peak_mb") >= number("/gateway/rss_median_mb"));
    assert!(number("/gateway/cpu_percent") > 0.0, "{report}");
    // At rest the gateway waits for data-ready edges: a few bus requests a
    // second per sensor (an edge wait and a level check), where polling
    // every 5 ms would make 200, however fast the machine.
    assert!(number("/gateway/idle_seconds") >= 2.0, "{report}");
    let idle_cpu = number("/gateway/idle_cpu_percent");
    assert!(idle_cpu >= 0.0 && idle_cpu.is_finite(), "{report}");
    let idle_requests = number("/gateway/idle_bus_requests_per_s");
    assert!(idle_requests > 0.0 && idle_requests < 10.0, "{report}");
    // CPU per answered image: the gateway's, the broker's when it is
    // mosquitto, the simulated sensors', and the rest of the simulator's.
    let processes = report["processes"].as_array().unwrap();
    let names: Vec<&str> = processes
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let broker_processes = match broker {
        "mosquitto" => 1,
        "rmqtt-cluster" => 3,
        _ => 0,
    };
    assert_eq!(names.len(), 3 + broker_processes, "{report}");
    assert!(names[0].starts_with("gateway"), "{report}");
    assert!(names[names.len() - 2].starts_with("simulated sensors"));
    assert!(names[names.len() - 1].starts_with("receivers"));
    for process in processes {
        let ms = process["cpu_ms_per_image"].as_f64().unwrap();
        // The sensors' few milliseconds may round to no clock tick.
        assert!(ms >= 0.0 && ms.is_finite(), "{report}");
    }
    assert!(processes[0]["cpu_ms_per_image"].as_f64().unwrap() > 0.0);
    // The reference the gateway's cost is judged by, from the same run.
    assert!(number("/reference/images") > 0.0, "{report}");
    assert!(number("/reference/stored") > 0.0, "{report}");
    assert!(number("/reference/seal_ms") > 0.0, "{report}");
    assert!(number("/reference/spool_put_ms") > 0.0, "{report}");
    assert!(number("/reference/spool_put_wall_ms") > 0.0, "{report}");
    let ratio = number("/gateway_ratio_of_reference");
    let reference = number("/reference/seal_ms") + number("/reference/spool_put_ms");
    assert!(
        (ratio - processes[0]["cpu_ms_per_image"].as_f64().unwrap() / reference).abs() < 1e-9,
        "{report}"
    );
    assert!(number("/ceiling/messages") > 0.0, "{report}");
    let ceiling = number("/ceiling/messages_per_s");
    assert!(ceiling > 0.0, "{report}");
    let ratio = number("/ratio_of_ceiling");
    assert!(
        (ratio - number("/images_per_s") / ceiling).abs() < 1e-9,
        "{report}"
    );
    report
}
