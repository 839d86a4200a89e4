//! The whole system on a real broker: simulated SPI sensors streaming real
//! chest X-rays → the gateway (a process) → mosquitto with TLS, client
//! certificates and the shipped ACL → two receivers (processes) in one
//! shared-subscription group → results back into each sensor's RESULT
//! register, and clinician notifications read by `mosquitto_sub`, a real
//! client that is not ours, with a clinician certificate. Faults: a receiver
//! killed with SIGKILL while it holds unacknowledged images, the gateway
//! killed mid-stream and restarted, mosquitto restarted, mosquitto gone for
//! 30 s while the sensors keep capturing. After each, every frame of every
//! sensor gets exactly one result: none lost, none twice. Attacks injected
//! into the live stream (tampered, unknown key, replayed sequence, header
//! for another device, garbage) are refused, audited and counted, and the
//! stream goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use medgate_daemon::mqtt::BrokerSettings;
use medgate_e2e::{Enrolment, WAIT, attach_sensors, binary, data_file};
use medgate_gateway::config::GatewayConfig;
use medgate_gateway::sources::spi::registers::{FLAG_NOT_CLASSIFIED, FLAG_REJECTED};
use medgate_gateway::spool::Spool;
use medgate_medmnist::SplitName;
use medgate_receiver::daemon::config::ReceiverConfig;
use medgate_receiver::daemon::rules::{Priority, Rule};
use medgate_receiver::model::backend::BackendChoice;
use medgate_shared::envelope;
use medgate_shared::header::{ImageMeta, Modality};
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::ids::MessageId;
use medgate_shared::keys::ReceiverPublicKey;
use medgate_shared::messages::{Answer, AuditRecord, ResultMessage, Timings};
use medgate_shared::pixels::{PixelFormat, Pixels};
use medgate_shared::seal::{RotationPolicy, Sealer};
use medgate_sim::sensor::{Feed, Sensor};
use medgate_testkit::client::{self, TestClient};
use medgate_testkit::mosquitto::{BrokerOptions, Mosquitto};
use medgate_testkit::pki::Pki;
use medgate_testkit::{forge, free_port, metrics, write_config};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mqtt(pki: &Pki, broker: &Mosquitto, name: &str) -> BrokerSettings {
    let files = pki.client(name).unwrap();
    BrokerSettings::new(
        "127.0.0.1",
        broker.port(),
        pki.ca_file(),
        files.cert,
        files.key,
    )
}

fn start_receiver(
    dir: &Path,
    pki: &Pki,
    broker: &Mosquitto,
    name: &str,
    key: &Path,
    trust: &Path,
) -> (Killed, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut mqtt = mqtt(pki, broker, name);
    mqtt.receive_maximum = 8;
    let mut receiver = ReceiverConfig::new(name, key.to_path_buf(), trust.to_path_buf(), mqtt);
    receiver.model.backend = BackendChoice::Cpu;
    receiver.model.max_batch = 8;
    receiver.model.max_wait_ms = 5;
    receiver.metrics.listen = metrics.to_string();
    receiver.receiver.state_dir = Some(dir.join(format!("{name}-state")));
    receiver.notify.push(Rule::new(
        "pneumonia",
        0.5,
        "radiology".parse().unwrap(),
        Priority::Urgent,
    ));
    let config = dir.join(format!("{name}.toml"));
    write_config(&config, &receiver).unwrap();
    let mark = broker.log_len();
    let child = Command::new(binary("medgate-receiver"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    broker
        .wait_for_log(&format!("{name} 1 $share/receivers/"), mark, WAIT)
        .unwrap();
    (Killed(child), metrics)
}

/// Sensors, a broker with the shipped ACL, two receivers and a gateway.
struct Rig {
    pki: Pki,
    broker: Mosquitto,
    receivers: Vec<Killed>,
    receiver_metrics: Vec<SocketAddr>,
    keys_dir: PathBuf,
    /// gw-1's signing key (attack tests play a gateway whose key leaked).
    gateway_identity: PathBuf,
    gateway: Option<Killed>,
    gateway_config: PathBuf,
    gateway_settings: GatewayConfig,
    sensors: Vec<Sensor>,
    frames: u32,
    // Last: the processes above are gone before their files are.
    dir: tempfile::TempDir,
}

impl Rig {
    fn start(frames: u32, period: Duration) -> Rig {
        Self::start_with(frames, period, 2)
    }

    /// The broker runs the shipped `configs/mosquitto/medgate.conf` (client
    /// ids are certificate names) with the access rules `medgate-receiver
    /// broker-acl` writes from the rig's trust list.
    fn start_with(frames: u32, period: Duration, receivers: usize) -> Rig {
        let mut rig = Self::without_gateway(frames, period, receivers);
        rig.start_gateway();
        rig
    }

    /// As [`start_with`](Self::start_with), the gateway not started yet
    /// (its sensors hold their first frame until it is).
    fn without_gateway(frames: u32, period: Duration, receivers: usize) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "site CA").unwrap();
        // A second enrolled gateway, whose certificate and key the junk
        // test plays as stolen.
        let enrolment = Enrolment::new(dir.path(), &["gw-1", "gw-junk"]);
        let (trust, private) = (&enrolment.trust, enrolment.receiver_private());
        let acl = enrolment.broker_acl(&[
            "--receivers",
            "receiver-1,receiver-2",
            "--clinician-wards",
            "radiology",
            "--security",
            "security",
        ]);
        let options = BrokerOptions {
            acl: Some(acl),
            shipped_config: true,
            ..BrokerOptions::default()
        };
        let broker = Mosquitto::start(&pki, dir.path(), &options).unwrap();
        let (receivers, receiver_metrics) = ["receiver-1", "receiver-2"][..receivers]
            .iter()
            .map(|name| start_receiver(dir.path(), &pki, &broker, name, &private, trust))
            .unzip();
        let feed = Feed::from_npz(&data_file(), SplitName::Val, 64, 64).unwrap();
        let mut gateway = GatewayConfig::new(
            "site-a",
            "gw-1",
            enrolment.receiver_public(),
            enrolment.identity("gw-1"),
            dir.path().join("state"),
            dir.path().join("spool"),
            mqtt(&pki, &broker, "gw-1"),
        );
        gateway.spool.result_timeout_secs = 3;
        gateway.metrics.enabled = false;
        let sensors = attach_sensors(
            dir.path(),
            &mut gateway,
            &["xr-1", "xr-2"],
            &feed,
            period,
            frames,
        );
        let gateway_config = dir.path().join("gateway.toml");
        write_config(&gateway_config, &gateway).unwrap();
        Rig {
            pki,
            broker,
            receivers,
            receiver_metrics,
            keys_dir: enrolment.keys.clone(),
            gateway_identity: enrolment.identity("gw-1"),
            gateway: None,
            gateway_config,
            gateway_settings: gateway,
            sensors,
            frames,
            dir,
        }
    }

    /// Kills the gateway process (SIGKILL) and returns once it is dead (a
    /// zombie until [`start_gateway`](Self::start_gateway) reaps it and
    /// starts it again). The broker may not have noticed yet: a client
    /// connecting with its certificate takes the dead connection's place.
    fn kill_gateway(&self) {
        let Some(gateway) = &self.gateway else {
            return;
        };
        let pid = gateway.0.id();
        let killed = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            if matches!(state, None | Some("Z" | "X")) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gateway did not die"
            );
            std::thread::yield_now();
        }
    }

    fn start_gateway(&mut self) {
        self.gateway = Some(Killed(
            Command::new(binary("medgate-gateway"))
                .args(["run", "--config", self.gateway_config.to_str().unwrap()])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }

    /// Stops receiver `index` the way systemd does (SIGTERM, then a clean
    /// exit) and starts it again from the same config; returns once the
    /// broker has its shared subscription again.
    fn restart_receiver_gracefully(&mut self, index: usize) {
        self.stop_receiver_gracefully(index);
        self.start_receiver_again(index);
    }

    /// Stops receiver `index` the way systemd does: SIGTERM, a clean exit.
    fn stop_receiver_gracefully(&mut self, index: usize) {
        let name = format!("receiver-{}", index + 1);
        let child = &mut self.receivers[index].0;
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        assert!(
            child.wait().unwrap().success(),
            "{name} exits cleanly on SIGTERM"
        );
    }

    /// Starts receiver `index` again from its config; returns once the
    /// broker has its shared subscription again.
    fn start_receiver_again(&mut self, index: usize) {
        let name = format!("receiver-{}", index + 1);
        let config = self.dir.path().join(format!("{name}.toml"));
        let mark = self.broker.log_len();
        self.receivers[index] = Killed(
            Command::new(binary("medgate-receiver"))
                .args(["run", "--config", config.to_str().unwrap()])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // Its session outlived the stop (session_present at the new
        // connection), but not the subscription it took back at the stop.
        self.broker
            .wait_for_log(&format!("{name} 1 $share/receivers/"), mark, WAIT)
            .unwrap_or_else(|e| panic!("{name} did not subscribe again after a restart: {e}"));
    }

    /// Waits until the first sensor has `count` results.
    fn results_flow(&self, count: usize) {
        medgate_e2e::results_flow(&self.sensors[0], count);
    }

    /// Every frame of every sensor answered exactly once.
    fn every_frame_answered_once(&self) {
        medgate_e2e::every_frame_answered_once(&self.sensors, self.frames);
    }

    /// Replaces the sensors with new ones on the same sockets, each with
    /// `frames` new frames (counted from 1 again).
    fn new_sensors(&mut self, frames: u32, period: Duration) {
        let feed = Feed::from_npz(&data_file(), SplitName::Val, 64, 64).unwrap();
        self.new_sensors_with(feed, frames, period);
    }

    /// [`new_sensors`](Self::new_sensors) sending frames of `feed`.
    /// Changes the gateway's config (before it starts).
    fn configure_gateway(&mut self, edit: impl FnOnce(&mut GatewayConfig)) {
        edit(&mut self.gateway_settings);
        write_config(&self.gateway_config, &self.gateway_settings).unwrap();
    }

    fn new_sensors_with(&mut self, feed: Feed, frames: u32, period: Duration) {
        self.sensors.clear();
        for name in ["xr-1", "xr-2"] {
            let socket = self.dir.path().join(format!("{name}.sock"));
            self.sensors.push(
                Sensor::start_limited(name, &socket, feed.clone(), period, Some(frames)).unwrap(),
            );
        }
        self.frames = frames;
    }
}

#[test]
fn sensors_to_receivers_and_back_with_a_receiver_killed_mid_stream() {
    let mut rig = Rig::start(30, Duration::from_millis(30));
    // A clinician's own MQTT client, with its own certificate.
    let clinician = rig.pki.client("clinician-radiology").unwrap();
    let mark = rig.broker.log_len();
    let mut notes = Killed(
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &rig.broker.port().to_string(),
                "-V",
                "mqttv5",
            ])
            .args(["-i", "clinician-radiology"])
            .arg("--cafile")
            .arg(rig.pki.ca_file())
            .arg("--cert")
            .arg(&clinician.cert)
            .arg("--key")
            .arg(&clinician.key)
            .args(["-q", "1", "-t", "medgate/v1/site-a/notify/radiology"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    rig.broker
        .wait_for_log(
            "clinician-radiology 1 medgate/v1/site-a/notify/radiology",
            mark,
            WAIT,
        )
        .unwrap();

    // Mid-stream, receiver-1 dies holding whatever it had not acknowledged.
    rig.results_flow(5);
    let receiver_1 = &mut rig.receivers[0].0;
    receiver_1.kill().unwrap();
    receiver_1.wait().unwrap();
    rig.every_frame_answered_once();

    // Pneumonia findings reached the clinician's client.
    let expected = rig
        .sensors
        .iter()
        .flat_map(|s| s.log().results)
        .filter(|r| r.class == 1 && r.confidence >= 5000)
        .count();
    assert!(expected > 0, "the val images include pneumonia cases");
    // Read them on a thread, so that a missing one fails the test instead
    // of blocking it. Around the kill a notification may be lost or sent
    // twice (results are exactly-once; notifications are not promised to be).
    let stdout = notes.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let wanted = expected.saturating_sub(2).max(1);
    for _ in 0..wanted {
        let line = rx.recv_timeout(WAIT).expect("a clinician notification");
        assert!(line.contains("\"ward\":\"radiology\""), "{line}");
        assert!(line.contains("\"label\":\"pneumonia\""), "{line}");
        assert!(
            !line.contains("pixel") && !line.contains("patient"),
            "{line}"
        );
    }
}

#[test]
fn a_receiver_restarted_with_sigterm_subscribes_again_and_answers_every_frame() {
    // One receiver: were the restarted one deaf, nobody would answer.
    let mut rig = Rig::start_with(40, Duration::from_millis(30), 1);
    rig.results_flow(5);
    rig.restart_receiver_gracefully(0);
    rig.every_frame_answered_once();
}

#[test]
fn a_gateway_killed_mid_stream_and_restarted_loses_nothing() {
    let mut rig = Rig::start(40, Duration::from_millis(30));
    rig.results_flow(5);
    let mut gateway = rig.gateway.take().unwrap();
    gateway.0.kill().unwrap();
    gateway.0.wait().unwrap();
    rig.start_gateway();
    rig.every_frame_answered_once();
}

#[test]
fn a_damaged_spool_image_is_refused_once_and_quarantined_and_a_wiped_state_is_classified_again() {
    let mut rig = Rig::start(10, Duration::from_millis(30));
    rig.every_frame_answered_once();
    let mut gateway = rig.gateway.take().unwrap();
    gateway.0.kill().unwrap();
    gateway.0.wait().unwrap();

    // While it is down: one spooled image of xr-1 gets a flipped body byte
    // (as a failing card would leave it)...
    let state = rig.dir.path().join("state");
    let spool_dir = rig.dir.path().join("spool");
    let epoch = std::fs::read_to_string(state.join("epoch")).unwrap();
    let meta = ImageMeta {
        message_id: MessageId::random(),
        site: "site-a".parse().unwrap(),
        gateway: "gw-1".parse().unwrap(),
        device: "xr-1".parse().unwrap(),
        epoch: u64::from_str_radix(epoch.trim(), 16).unwrap(),
        sequence: 1 << 40,
        captured_at_ms: 1_790_000_000_000,
        modality: Modality::Dx,
        model_hint: None,
        anatomy: Default::default(),
    };
    let public = ReceiverPublicKey::read(&rig.keys_dir.join("receiver.pub.pem")).unwrap();
    let identity = GatewayIdentity::read(&rig.gateway_identity).unwrap();
    let pixels = Pixels::new(28, 28, PixelFormat::Gray8, vec![90; 28 * 28]).unwrap();
    let mut damaged = Sealer::new(public, identity, RotationPolicy::default())
        .seal(&meta, &pixels)
        .unwrap();
    let at = damaged.bytes.len() - 30;
    damaged.bytes[at] ^= 0x01;
    let (mut spool, _) = Spool::open(&spool_dir, 1 << 30).unwrap();
    spool.put(&damaged).unwrap();
    drop(spool);
    // ...and its state folder is wiped: sequence numbers start at 0 again.
    std::fs::remove_dir_all(&state).unwrap();
    rig.new_sensors(10, Duration::from_millis(30));
    rig.start_gateway();

    // The new frames are classified (a new epoch, not replays of the old
    // one's numbers: every_frame_answered_once refuses rejections)...
    rig.every_frame_answered_once();
    // ...and the damaged image, refused by the receiver (authenticated),
    // left the spool for quarantine/ with its reason, not to be sent again.
    let quarantine = spool_dir.join("quarantine");
    let deadline = std::time::Instant::now() + WAIT;
    let note = loop {
        let found = std::fs::read_dir(&quarantine).ok().and_then(|items| {
            items
                .filter_map(Result::ok)
                .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
        });
        if let Some(found) = found {
            break serde_json::from_slice::<serde_json::Value>(
                &std::fs::read(found.path()).unwrap(),
            )
            .unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the damaged image was not quarantined within {WAIT:?}"
        );
        // Polling a folder for the outcome, with a deadline.
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(note["message_id"], meta.message_id.to_string());
    assert_eq!(note["cause"], "refused");
    assert_eq!(note["reason"], "aead");
    let id = meta.message_id.to_string();
    let still_spooled = std::fs::read_dir(&spool_dir)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains(&id));
    assert!(!still_spooled, "the quarantined image left the spool");
    // Hospital IT sees it in the gateway's retained status.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let settings = client::settings(&rig.pki, &rig.broker, "security").unwrap();
    runtime.block_on(async {
        let mut security = TestClient::connect(
            &settings,
            "security",
            &["medgate/v1/site-a/gw-1/status".to_owned()],
            WAIT,
        )
        .await
        .unwrap();
        loop {
            let got = security
                .expect("medgate/v1/site-a/gw-1/status", 1, WAIT)
                .await
                .unwrap()
                .remove(0);
            let status: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
            if status["quarantined"] == 1 {
                assert_eq!(status["recently_quarantined"][0]["message_id"], id);
                assert_eq!(status["recently_quarantined"][0]["reason"], "aead");
                break;
            }
        }
    });
}

#[test]
fn frames_that_are_no_chest_xrays_come_back_not_classified_and_leave_the_spool_unquarantined() {
    // The sensors send generated frames (gradients and noise) with the
    // radiograph modality (DX) in their header.
    let mut rig = Rig::without_gateway(4, Duration::from_millis(30), 2);
    rig.new_sensors_with(Feed::generated(64, 4), 4, Duration::from_millis(30));
    rig.start_gateway();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let scrape = |rig: &Rig| -> Vec<String> {
        rig.receiver_metrics
            .iter()
            .map(|at| runtime.block_on(metrics::scrape(*at)).unwrap())
            .collect()
    };
    let total = |texts: &[String], line: &str| -> f64 {
        texts
            .iter()
            .map(|t| metrics::value(t, line).unwrap_or(0.0))
            .sum()
    };
    let notified = |texts: &[String]| -> f64 {
        ["urgent", "routine", "critical"]
            .iter()
            .map(|p| {
                total(
                    texts,
                    &format!("medgate_receiver_notifications_total{{priority=\"{p}\"}}"),
                )
            })
            .sum()
    };
    // Each comes back with the NOT_CLASSIFIED flag, and the gateway lets go
    // of it.
    for sensor in &rig.sensors {
        let results = sensor.wait_for_results(4, WAIT);
        assert_eq!(results.len(), 4, "{}", sensor.name());
        for r in &results {
            assert!(
                r.flags & FLAG_NOT_CLASSIFIED != 0,
                "{}: {r:?}",
                sensor.name()
            );
            assert_eq!((r.class, r.confidence), (0xFF, 0), "{r:?}");
            assert_eq!(r.flags & FLAG_REJECTED, 0, "not a rejection: {r:?}");
        }
    }
    let texts = scrape(&rig);
    assert_eq!(
        total(
            &texts,
            "medgate_receiver_not_classified_total{reason=\"out_of_distribution\"}"
        ),
        8.0,
        "{texts:?}"
    );
    assert_eq!(notified(&texts), 0.0, "nobody is notified of them");
    let quarantine = rig.dir.path().join("spool/quarantine");
    let quarantined = std::fs::read_dir(&quarantine).map_or(0, |d| d.count());
    assert_eq!(quarantined, 0, "not classified is not quarantined");
}

#[test]
fn chest_x_rays_configured_as_shoulders_are_sealed_as_such_and_answered_no_model() {
    // Real chest X-rays, from sensors whose config says they image
    // shoulders: the header says so, the receiver has
    // no shoulder model and answers so, before any inference.
    let mut rig = Rig::without_gateway(3, Duration::from_millis(30), 1);
    rig.configure_gateway(|config| {
        for sensor in &mut config.spi_sensor {
            sensor.body_part = Some("shoulder".into());
            sensor.view_position = Some("AP".into());
        }
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // An observer with another receiver's certificate sees what is sealed.
    let settings = client::settings(&rig.pki, &rig.broker, "receiver-2").unwrap();
    let mut observer = runtime
        .block_on(TestClient::connect(
            &settings,
            "receiver-2",
            &["medgate/v1/site-a/gw-1/images/+".to_owned()],
            WAIT,
        ))
        .unwrap();
    rig.start_gateway();
    let images = runtime
        .block_on(observer.expect("medgate/v1/site-a/gw-1/images/", 2, WAIT))
        .unwrap();
    for image in &images {
        assert_eq!(image.payload[4], envelope::VERSION, "the current format");
        let meta = envelope::parse(&image.payload).unwrap().header.meta;
        assert_eq!(meta.anatomy.to_string(), "SHOULDER/AP");
        assert_eq!(meta.modality, Modality::Dx);
    }
    for sensor in &rig.sensors {
        let results = sensor.wait_for_results(3, WAIT);
        assert_eq!(results.len(), 3, "{}", sensor.name());
        for r in &results {
            assert!(r.flags & FLAG_NOT_CLASSIFIED != 0, "{r:?}");
            assert_eq!(r.flags & FLAG_REJECTED, 0, "not a rejection: {r:?}");
        }
    }
    let text = runtime
        .block_on(metrics::scrape(rig.receiver_metrics[0]))
        .unwrap();
    assert_eq!(
        metrics::value(
            &text,
            "medgate_receiver_not_classified_total{reason=\"no_model\"}"
        ),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        metrics::value(&text, "medgate_receiver_inference_seconds_count").unwrap_or(0.0),
        0.0,
        "routing refused them before any inference: {text}"
    );
}

#[test]
fn forged_results_never_reach_a_sensor_and_the_real_ones_do() {
    let mut rig = Rig::start_with(20, Duration::from_millis(100), 1);
    rig.results_flow(2);
    // The receiver stops; the gateway's images wait in its spool. Another
    // receiver's certificate (which may read images and write results)
    // answers them itself: "normal" at 0.4242, with no valid MAC, one of
    // them on the other sensor's results topic.
    rig.stop_receiver_gracefully(0);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let settings = client::settings(&rig.pki, &rig.broker, "receiver-2").unwrap();
        let mut forger = TestClient::connect(
            &settings,
            "receiver-2",
            &["medgate/v1/site-a/gw-1/images/+".to_owned()],
            WAIT,
        )
        .await
        .unwrap();
        let images = forger
            .expect("medgate/v1/site-a/gw-1/images/", 2, WAIT)
            .await
            .unwrap();
        for (i, image) in images.iter().enumerate() {
            let meta = envelope::parse(&image.payload).unwrap().header.meta;
            let device = if i == 0 {
                meta.device.to_string()
            } else if meta.device.as_str() == "xr-1" {
                "xr-2".to_owned()
            } else {
                "xr-1".to_owned()
            };
            let forged = ResultMessage {
                message_id: meta.message_id.to_string(),
                site: meta.site.to_string(),
                gateway: meta.gateway.to_string(),
                device: device.clone(),
                sequence: meta.sequence,
                captured_at_ms: meta.captured_at_ms,
                label: "normal".into(),
                probabilities: [
                    ("normal".to_owned(), 0.4242),
                    ("pneumonia".to_owned(), 0.5758),
                ]
                .into(),
                threshold: 0.99,
                model_version: "forged".into(),
                sha512: "00".repeat(64),
                receiver: "receiver-2".into(),
                timings: Timings {
                    open_ms: 0.0,
                    queue_ms: 0.0,
                    inference_ms: 0.0,
                    batch_size: 1,
                    total_ms: 0.0,
                },
                mac: "00".repeat(32),
            };
            forger
                .publish(
                    format!("medgate/v1/site-a/gw-1/results/{device}"),
                    serde_json::to_vec(&Answer::Result(forged)).unwrap(),
                )
                .await
                .unwrap();
        }
    });
    // The real receiver comes back; every frame gets its real result, and
    // none the forged one.
    rig.start_receiver_again(0);
    rig.every_frame_answered_once();
    for sensor in &rig.sensors {
        let results = sensor.wait_for_results(rig.frames as usize, WAIT);
        assert!(
            results.iter().all(|r| r.confidence != 4242),
            "{}: a forged result reached the sensor",
            sensor.name()
        );
    }
}

#[test]
fn a_replay_after_a_receiver_restart_is_answered_from_memory_not_classified_again() {
    // The spy subscribes before the gateway starts, so that it sees an
    // image however fast the rig answers all of them.
    let mut rig = Rig::without_gateway(20, Duration::from_millis(50), 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let spy_settings = client::settings(&rig.pki, &rig.broker, "receiver-2").unwrap();
    let replayer_settings = client::settings(&rig.pki, &rig.broker, "gw-1").unwrap();
    let mut spy = runtime
        .block_on(TestClient::connect(
            &spy_settings,
            "spy",
            &["medgate/v1/site-a/gw-1/images/+".to_owned()],
            WAIT,
        ))
        .unwrap();
    rig.start_gateway();
    let captured = runtime
        .block_on(spy.expect("medgate/v1/site-a/gw-1/images/", 1, WAIT))
        .unwrap()
        .remove(0);
    let id = envelope::parse(&captured.payload)
        .unwrap()
        .header
        .meta
        .message_id
        .to_string();
    rig.every_frame_answered_once();

    // A restart (as systemd does it), then the captured image again, sent
    // with gw-1's certificate while the real gateway is down (client ids
    // are certificate names: the replayer is gw-1 to the broker).
    rig.kill_gateway();
    rig.restart_receiver_gracefully(0);
    let metrics_before = runtime
        .block_on(metrics::scrape(rig.receiver_metrics[0]))
        .unwrap();
    assert_eq!(
        metrics::value(&metrics_before, "medgate_receiver_received_total").unwrap_or(0.0),
        0.0
    );
    let answer = runtime.block_on(async {
        let mut replayer = TestClient::connect(
            &replayer_settings,
            "replayer",
            &["medgate/v1/site-a/gw-1/results/+".to_owned()],
            WAIT,
        )
        .await
        .unwrap();
        replayer
            .publish(captured.topic.clone(), captured.payload.clone())
            .await
            .unwrap();
        loop {
            let got = replayer
                .expect("medgate/v1/site-a/gw-1/results/", 1, WAIT)
                .await
                .unwrap()
                .remove(0);
            let answer: Answer = serde_json::from_slice(&got.payload).unwrap();
            if answer.message_id() == id {
                break answer;
            }
        }
    });
    let Answer::Result(result) = answer else {
        panic!("the earlier result, not a refusal: {answer:?}");
    };
    assert_eq!(result.message_id, id);
    // Answered from the journal: one receipt, one duplicate, no
    // classification and no second notification.
    let text = runtime
        .block_on(metrics::scrape(rig.receiver_metrics[0]))
        .unwrap();
    let count = |line: &str| metrics::value(&text, line).unwrap_or(0.0);
    assert_eq!(count("medgate_receiver_received_total"), 1.0, "{text}");
    assert_eq!(count("medgate_receiver_duplicates_total"), 1.0, "{text}");
    for label in ["normal", "pneumonia"] {
        let line = format!("medgate_receiver_results_total{{label=\"{label}\"}}");
        assert_eq!(count(&line), 0.0, "{text}");
    }
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("medgate_receiver_notifications_total") && !l.ends_with(" 0")),
        "{text}"
    );
}

#[test]
fn a_junk_flood_from_a_stolen_gateway_identity_is_refused_and_counted_while_the_stream_goes_on() {
    // Scenario 8's shape; its p99 under 1 000 junk messages/s is measured
    // with `medgate-sim load --junk-rate`, not asserted here.
    let rig = Rig::start_with(40, Duration::from_millis(50), 1);
    rig.results_flow(3);
    const JUNK: u64 = 1500;
    let public = ReceiverPublicKey::read(&rig.keys_dir.join("receiver.pub.pem")).unwrap();
    let stolen = GatewayIdentity::read(&rig.keys_dir.join("gw-junk.identity.pem")).unwrap();
    let meta = ImageMeta {
        message_id: MessageId::random(),
        site: "site-a".parse().unwrap(),
        gateway: "gw-junk".parse().unwrap(),
        device: "junk".parse().unwrap(),
        epoch: 1,
        sequence: 1,
        captured_at_ms: 0,
        modality: Modality::Dx,
        model_hint: None,
        anatomy: Default::default(),
    };
    let pixels = Pixels::new(28, 28, PixelFormat::Gray8, vec![7; 28 * 28]).unwrap();
    let stranger = Sealer::new(
        public.clone(),
        GatewayIdentity::generate(),
        RotationPolicy::default(),
    )
    .seal(&meta, &pixels)
    .unwrap()
    .bytes;
    let own = Sealer::new(public, stolen.clone(), RotationPolicy::default())
        .seal(&meta, &pixels)
        .unwrap()
        .bytes;
    let wrapped_len = envelope::parse(&own).unwrap().wrapped_key.len();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let settings = client::settings(&rig.pki, &rig.broker, "gw-junk").unwrap();
    runtime.block_on(async {
        let junk = TestClient::connect(&settings, "gw-junk", &[], WAIT)
            .await
            .unwrap();
        for k in 0..JUNK {
            // Random-looking bytes, an image signed by nobody enrolled, and
            // the stolen key's images with a new random wrapped key each.
            let payload = match k % 3 {
                0 => (0..600u64).map(|i| (i * 31 + k * 7) as u8).collect(),
                1 => stranger.clone(),
                _ => {
                    // A distinct key id every time (k in the first bytes).
                    let mut wrapped: Vec<u8> = (0..wrapped_len as u64)
                        .map(|i| (i.wrapping_mul(2_654_435_761) >> 3) as u8)
                        .collect();
                    wrapped[..8].copy_from_slice(&k.to_le_bytes());
                    forge::with_wrapped_key(&own, &stolen, &wrapped).unwrap()
                }
            };
            junk.publish("medgate/v1/site-a/gw-junk/images/junk", payload)
                .await
                .unwrap();
        }
    });
    // Every real frame answered (none rejected) while the junk went by...
    rig.every_frame_answered_once();
    // ...and every junk message refused and counted, with few RSA attempts
    // and the audit topic spared.
    let deadline = std::time::Instant::now() + WAIT;
    let count = |text: &str, reason: &str| {
        metrics::value(
            text,
            &format!("medgate_receiver_rejected_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let text = loop {
        let text = runtime
            .block_on(metrics::scrape(rig.receiver_metrics[0]))
            .unwrap();
        let refused: f64 = [
            "malformed",
            "unknown_gateway",
            "unknown_key",
            "key_rate_limited",
        ]
        .iter()
        .map(|r| count(&text, r))
        .sum();
        if refused >= JUNK as f64 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all junk refused within {WAIT:?}:\n{text}"
        );
        // Polling the receiver's counters for the outcome, with a deadline.
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(count(&text, "malformed"), (JUNK / 3) as f64, "{text}");
    assert_eq!(count(&text, "unknown_gateway"), (JUNK / 3) as f64, "{text}");
    // The stolen key gets its allowance of unwraps and no more.
    assert!(count(&text, "unknown_key") <= 40.0, "{text}");
    assert!(
        count(&text, "key_rate_limited") >= (JUNK / 3) as f64 - 40.0,
        "{text}"
    );
    assert!(
        metrics::value(&text, "medgate_receiver_audits_suppressed_total").unwrap_or(0.0) > 0.0,
        "{text}"
    );
}

#[test]
fn a_restarted_broker_loses_nothing() {
    let mut rig = Rig::start(40, Duration::from_millis(30));
    rig.results_flow(5);
    rig.broker.restart().unwrap();
    rig.every_frame_answered_once();
}

#[test]
fn a_broker_gone_for_30_s_while_sensors_capture_loses_nothing() {
    // 60 frames at 5 per second: most are captured while the broker is away.
    let mut rig = Rig::start(60, Duration::from_millis(200));
    rig.results_flow(3);
    rig.broker.kill();
    // The outage itself (the scenario, not a synchronisation).
    std::thread::sleep(Duration::from_secs(30));
    let released_meanwhile = rig.sensors[0].log().released;
    assert!(
        released_meanwhile > 20,
        "capture went on: {released_meanwhile} frames"
    );
    rig.broker.restart().unwrap();
    rig.every_frame_answered_once();
}

#[test]
fn attacks_are_refused_audited_and_counted_while_the_stream_goes_on() {
    // One receiver, so that "replayed" is judged by the receiver that saw
    // the original (replay windows are per receiver).
    let mut rig = Rig::start_with(40, Duration::from_millis(50), 1);
    rig.results_flow(5);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reasons = runtime.block_on(async {
        let connect = |cn: &'static str, id: &'static str, filter: &'static str| {
            let settings = client::settings(&rig.pki, &rig.broker, cn).unwrap();
            async move {
                TestClient::connect(&settings, id, &[filter.to_owned()], WAIT)
                    .await
                    .unwrap()
            }
        };
        let mut security = connect("security", "security", "medgate/v1/+/audit/+").await;
        // A copy of real traffic (a receiver's certificate may read images),
        // then an attacker holding gw-1's certificate. Client ids are
        // certificate names, so the attacker is gw-1 to the broker: it
        // strikes while the real gateway is down (killed), which then
        // comes back.
        let mut spy = connect("receiver-2", "spy", "medgate/v1/site-a/gw-1/images/+").await;
        let real = spy
            .expect("medgate/v1/site-a/gw-1/images/", 1, WAIT)
            .await
            .unwrap()
            .remove(0);
        let topic = real.topic.clone();
        rig.kill_gateway();
        let attacker = connect("gw-1", "attacker", "medgate/v1/site-a/attacker/none").await;

        let tampered = forge::tampered(&real.payload);
        // Worse: gw-1's signing key leaked too. Another wrapped key, a used
        // sequence number (replay), a header naming another device than
        // the topic.
        let leaked = GatewayIdentity::read(&rig.gateway_identity).unwrap();
        let unknown_key = forge::with_unknown_key(&real.payload, &leaked).unwrap();
        let parsed = envelope::parse(&real.payload).unwrap();
        let public = ReceiverPublicKey::read(&rig.keys_dir.join("receiver.pub.pem")).unwrap();
        let mut sealer = Sealer::new(public.clone(), leaked, RotationPolicy::default());
        let mut meta = parsed.header.meta.clone();
        meta.message_id = MessageId::random();
        meta.sequence = 0;
        let pixels = Pixels::new(8, 8, PixelFormat::Gray8, vec![7; 64]).unwrap();
        let replayed = sealer.seal(&meta, &pixels).unwrap().bytes;
        let mut elsewhere = meta.clone();
        elsewhere.message_id = MessageId::random();
        elsewhere.device = "xr-9".parse().unwrap();
        elsewhere.sequence = 1_000_000;
        let misplaced = sealer.seal(&elsewhere, &pixels).unwrap().bytes;
        // Sealed with only the receivers' public key and a key of one's own:
        // not from an enrolled gateway; and a real image whose signature
        // was altered.
        let mut fresh = meta.clone();
        fresh.message_id = MessageId::random();
        fresh.sequence = 2_000_000;
        let stranger = Sealer::new(
            public,
            GatewayIdentity::generate(),
            RotationPolicy::default(),
        )
        .seal(&fresh, &pixels)
        .unwrap()
        .bytes;
        let mut bad_signature = real.payload.clone();
        let signature_at = parsed.signed.len();
        bad_signature[signature_at + 9] ^= 0x04;

        for payload in [
            tampered,
            unknown_key,
            replayed,
            misplaced,
            stranger,
            bad_signature,
            b"garbage".to_vec(),
        ] {
            attacker.publish(topic.clone(), payload).await.unwrap();
        }
        let mut reasons: Vec<String> = security
            .expect("medgate/v1/site-a/audit/receiver-1", 7, WAIT)
            .await
            .unwrap()
            .iter()
            .map(|m| {
                serde_json::from_slice::<AuditRecord>(&m.payload)
                    .unwrap()
                    .reason
            })
            .collect();
        reasons.sort();
        reasons
    });
    assert_eq!(
        reasons,
        [
            "aead",
            "bad_signature",
            "malformed",
            "replay",
            "topic_mismatch",
            "unknown_gateway",
            "unknown_key"
        ]
    );
    // Counted by reason, none classified; and the stream goes on once the
    // gateway is back.
    rig.start_gateway();
    rig.every_frame_answered_once();
    let metrics = runtime
        .block_on(metrics::scrape(rig.receiver_metrics[0]))
        .unwrap();
    for reason in [
        "aead",
        "bad_signature",
        "malformed",
        "replay",
        "topic_mismatch",
        "unknown_gateway",
        "unknown_key",
    ] {
        let line = format!("medgate_receiver_rejected_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
}
