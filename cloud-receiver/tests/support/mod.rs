//! A receiver under test: a real mosquitto with mutual TLS, the receiver
//! service running in this process from a real config file, and a test
//! client with a gateway's identity. Shared by the service tests and the
//! `throughput` example (which includes this file by path).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each user takes what it needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use medgate_daemon::mqtt::BrokerSettings;
use medgate_medmnist::{SplitName, read_split};
use medgate_receiver::daemon::config::{self, ReceiverConfig};
use medgate_receiver::daemon::rules::{Priority, Rule};
use medgate_receiver::daemon::service::{self, ServiceError, Started};
use medgate_receiver::model::backend::BackendChoice;
use medgate_shared::header::{ImageMeta, Modality};
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::ids::{MessageId, Name};
use medgate_shared::keys::ReceiverPrivateKey;
use medgate_shared::pixels::{PixelFormat, Pixels};
use medgate_shared::seal::{RotationPolicy, Sealer};
use medgate_testkit::client::{self, TestClient};
use medgate_testkit::mosquitto::{BrokerOptions, Mosquitto};
use medgate_testkit::pki::Pki;
use medgate_testkit::write_config;
use tokio::sync::oneshot;

/// Deadline of every wait (a failure bound, not a synchronisation).
pub const WAIT: Duration = Duration::from_secs(120);
/// The test site.
pub const SITE: &str = "site-a";
/// The test gateway.
pub const GATEWAY: &str = "gw-1";

/// Receiver options a test may set.
pub struct RigOptions {
    /// `model.backend`.
    pub backend: BackendChoice,
    /// `model.max_batch`.
    pub max_batch: usize,
    /// `model.max_wait_ms`.
    pub max_wait_ms: u64,
    /// `mqtt.receive_maximum`.
    pub receive_maximum: u16,
}

impl Default for RigOptions {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Cpu,
            max_batch: 16,
            max_wait_ms: 20,
            receive_maximum: 32,
        }
    }
}

/// A broker, a running receiver and a gateway-identity client.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub broker: Mosquitto,
    pub pki: Pki,
    pub key: ReceiverPrivateKey,
    /// The test gateway's signing identity, enrolled in the trust list.
    pub identity: GatewayIdentity,
    /// The trust list file.
    pub trust: PathBuf,
    pub metrics: std::net::SocketAddr,
    pub client: TestClient,
    stop: Option<oneshot::Sender<()>>,
    service: tokio::task::JoinHandle<Result<(), ServiceError>>,
}

impl Rig {
    /// Starts everything; returns once the receiver is subscribed and the
    /// client listens to this site's results, notifications and audits.
    pub async fn start(options: RigOptions) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "medgate test CA").unwrap();
        let broker = Mosquitto::start(&pki, dir.path(), &BrokerOptions::default()).unwrap();
        let key = ReceiverPrivateKey::generate(3072).unwrap();
        let key_path = dir.path().join("receiver.pem");
        std::fs::write(&key_path, key.to_pem().unwrap().as_bytes()).unwrap();
        let (identity_path, enrolled) =
            medgate_testkit::identity::gateway_identity(dir.path(), SITE, GATEWAY).unwrap();
        let identity = GatewayIdentity::read(&identity_path).unwrap();
        let trust = dir.path().join("gateways.toml");
        medgate_testkit::identity::write_trust_list(&trust, [enrolled]).unwrap();
        let tls = pki.client("receiver-1").unwrap();
        let mut mqtt =
            BrokerSettings::new("127.0.0.1", broker.port(), pki.ca_file(), tls.cert, tls.key);
        mqtt.receive_maximum = options.receive_maximum;
        let mut receiver = ReceiverConfig::new("receiver-1", key_path, trust.clone(), mqtt);
        receiver.model.backend = options.backend;
        receiver.model.max_batch = options.max_batch;
        receiver.model.max_wait_ms = options.max_wait_ms;
        receiver.metrics.listen = "127.0.0.1:0".into();
        receiver.notify.push(Rule::new(
            "pneumonia",
            0.5,
            "radiology".parse().unwrap(),
            Priority::Urgent,
        ));
        let config_path = dir.path().join("receiver.toml");
        write_config(&config_path, &receiver).unwrap();
        let settings = config::load(&config_path).unwrap();
        let mark = broker.log_len();
        let (stop, stopped) = oneshot::channel::<()>();
        let (started_tx, started) = oneshot::channel::<Started>();
        let service = tokio::spawn(service::run(
            settings,
            async {
                let _ = stopped.await;
            },
            Some(started_tx),
        ));
        let started = tokio::time::timeout(WAIT, started).await.unwrap().unwrap();
        // The shared subscription is in place once mosquitto says so.
        broker
            .wait_for_log("$share/receivers/medgate/v1/+/+/images/+", mark, WAIT)
            .unwrap();
        let filters = [
            format!("medgate/v1/{SITE}/{GATEWAY}/results/+"),
            format!("medgate/v1/{SITE}/notify/+"),
            format!("medgate/v1/{SITE}/audit/+"),
        ];
        let settings = client::settings(&pki, &broker, GATEWAY).unwrap();
        let client = TestClient::connect(&settings, GATEWAY, &filters, WAIT)
            .await
            .unwrap();
        Rig {
            dir,
            broker,
            pki,
            key,
            identity,
            trust,
            metrics: started.metrics.unwrap(),
            client,
            stop: Some(stop),
            service,
        }
    }

    /// A sealer as the enrolled test gateway seals.
    pub fn sealer(&self) -> Sealer {
        Sealer::new(
            self.key.public().clone(),
            self.identity.clone(),
            RotationPolicy::default(),
        )
    }

    /// Publishes a sealed image on `device`'s images topic of this gateway.
    pub async fn publish(&self, device: &str, sealed: Vec<u8>) {
        self.client
            .publish(
                format!("medgate/v1/{SITE}/{GATEWAY}/images/{device}"),
                sealed,
            )
            .await
            .unwrap();
    }

    /// Waits for `count` messages under `prefix`.
    pub async fn expect(&mut self, prefix: &str, count: usize) -> Vec<(String, Vec<u8>)> {
        self.client
            .expect(prefix, count, WAIT)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.topic, m.payload))
            .collect()
    }

    /// The metrics endpoint's text.
    pub async fn metrics_text(&self) -> String {
        medgate_testkit::metrics::scrape(self.metrics)
            .await
            .unwrap()
    }

    /// Stops the service and waits for it to return cleanly.
    pub async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(WAIT, self.service)
            .await
            .expect("the service stops within the grace period")
            .unwrap()
            .unwrap();
    }
}

/// A name.
pub fn n(s: &str) -> Name {
    s.parse().unwrap()
}

/// The real PneumoniaMNIST file.
pub fn data_file() -> PathBuf {
    let dir = std::env::var_os("MEDGATE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    dir.join("pneumoniamnist.npz")
}

/// Real chest X-rays from the val split (28×28, 8-bit) with their labels.
pub fn xrays(count: usize) -> Vec<(Pixels, u8)> {
    let val = read_split(&data_file(), SplitName::Val).unwrap();
    let size = 28 * 28;
    (0..count)
        .map(|i| {
            let i = i % val.labels.len();
            let data = val.images[i * size..(i + 1) * size].to_vec();
            (
                Pixels::new(28, 28, PixelFormat::Gray8, data).unwrap(),
                val.labels[i],
            )
        })
        .collect()
}

/// Header metadata of an image from `device` of the test gateway.
pub fn meta(device: &str, sequence: u64) -> ImageMeta {
    ImageMeta {
        message_id: MessageId::random(),
        site: n(SITE),
        gateway: n(GATEWAY),
        device: n(device),
        epoch: 1,
        sequence,
        captured_at_ms: 1_790_000_000_000 + sequence,
        modality: Modality::Dx,
        model_hint: None,
        anatomy: Default::default(),
    }
}

/// The value of the first metrics line starting with `line_start`.
pub fn counter(metrics: &str, line_start: &str) -> f64 {
    medgate_testkit::metrics::value(metrics, line_start).unwrap_or(0.0)
}
