//! A gateway under test: a real mosquitto with mutual TLS, a receiver key
//! pair, a hot folder, the gateway (in this process or as a process) from a
//! real config file, and a client with the receiver's identity that opens
//! and answers images. Shared by the service tests and the `footprint`
//! example (which includes this file by path).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each user takes what it needs.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use medgate_daemon::mqtt::BrokerSettings;
use medgate_daemon::trust::TrustList;
use medgate_gateway::config::{self, GatewayConfig, HotFolderSection};
use medgate_gateway::service::{self, ServiceError, Started};
use medgate_shared::envelope::Opened;
use medgate_shared::keys::ReceiverPrivateKey;
use medgate_shared::messages::{Answer, NotClassifiedMessage, ResultMessage, Timings};
use medgate_shared::seal::{Opener, Rejected};
use medgate_testkit::client::{self, TestClient};
use medgate_testkit::identity;
use medgate_testkit::mosquitto::{BrokerOptions, Mosquitto};
use medgate_testkit::pki::Pki;
use medgate_testkit::write_config;
use tokio::sync::oneshot;

pub const WAIT: Duration = Duration::from_secs(60);

pub struct World {
    pub dir: tempfile::TempDir,
    pub broker: Mosquitto,
    pub pki: Pki,
    pub key: ReceiverPrivateKey,
    /// The trust list naming gw-1's signing key.
    pub trust: TrustList,
    pub inbox: PathBuf,
    pub config: PathBuf,
}

impl World {
    pub fn new(spool_bytes: u64, result_timeout_secs: u64) -> World {
        Self::with(spool_bytes, result_timeout_secs, |_| {})
    }

    /// As [`World::new`], with `edit` applied to the config (more sources).
    pub fn with(
        spool_bytes: u64,
        result_timeout_secs: u64,
        edit: impl FnOnce(&mut GatewayConfig),
    ) -> World {
        Self::with_broker(
            &BrokerOptions::default(),
            spool_bytes,
            result_timeout_secs,
            edit,
        )
    }

    /// As [`World::with`], on a broker started with `options`.
    pub fn with_broker(
        options: &BrokerOptions,
        spool_bytes: u64,
        result_timeout_secs: u64,
        edit: impl FnOnce(&mut GatewayConfig),
    ) -> World {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "medgate test CA").unwrap();
        let broker = Mosquitto::start(&pki, dir.path(), options).unwrap();
        let key = ReceiverPrivateKey::generate(3072).unwrap();
        let public = dir.path().join("receiver.pub.pem");
        std::fs::write(&public, key.public().to_pem().unwrap()).unwrap();
        let (identity_key, enrolled) =
            identity::gateway_identity(dir.path(), "site-a", "gw-1").unwrap();
        let trust = TrustList::new([enrolled]);
        let tls = pki.client("gw-1").unwrap();
        let inbox = dir.path().join("inbox");
        std::fs::create_dir_all(&inbox).unwrap();
        let mut gateway = GatewayConfig::new(
            "site-a",
            "gw-1",
            public,
            identity_key,
            dir.path().join("state"),
            dir.path().join("spool"),
            BrokerSettings::new("127.0.0.1", broker.port(), pki.ca_file(), tls.cert, tls.key),
        );
        gateway.spool.max_bytes = spool_bytes;
        gateway.spool.result_timeout_secs = result_timeout_secs;
        gateway.metrics.listen = "127.0.0.1:0".into();
        gateway.hot_folder.push(HotFolderSection {
            modality: "DX".into(),
            scan_interval_ms: 20,
            settle_ms: 0,
            ..HotFolderSection::new("scanner-1", inbox.clone())
        });
        edit(&mut gateway);
        let config = dir.path().join("gateway.toml");
        write_config(&config, &gateway).unwrap();
        World {
            dir,
            broker,
            pki,
            key,
            trust,
            inbox,
            config,
        }
    }

    /// A client with the receiver's identity, listening to every image.
    pub async fn receiver(&self) -> TestClient {
        let settings = client::settings(&self.pki, &self.broker, "receiver-1").unwrap();
        TestClient::connect(
            &settings,
            "receiver-1",
            &["medgate/v1/+/+/images/+".to_owned()],
            WAIT,
        )
        .await
        .unwrap()
    }

    /// Drops an image file into the hot folder the safe way (rename).
    pub fn drop_image(&self, name: &str, seed: u8, side: u32) -> Vec<u8> {
        let image = image::GrayImage::from_fn(side, side, |x, y| {
            image::Luma([(x as u8).wrapping_mul(seed).wrapping_add(y as u8)])
        });
        let mut png = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let tmp = self.inbox.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, &png).unwrap();
        std::fs::rename(&tmp, self.inbox.join(name)).unwrap();
        image.into_raw()
    }

    /// Drops `bytes` into the hot folder as `name` (rename).
    pub fn drop_file(&self, name: &str, bytes: &[u8]) {
        let tmp = self.inbox.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, self.inbox.join(name)).unwrap();
    }

    pub fn start_in_process(&self) -> Running {
        let settings = config::load(&self.config).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (started_tx, started) = oneshot::channel();
        let task = tokio::spawn(service::run(
            settings,
            async {
                let _ = stopped.await;
            },
            Some(started_tx),
        ));
        Running {
            stop: Some(stop),
            task,
            started: Some(started),
        }
    }

    /// Starts the `medgate-gateway` binary at `binary`.
    pub fn start_process(&self, binary: &Path) -> Child {
        Command::new(binary)
            .args(["run", "--config", self.config.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// An opener with the receiver's private key and trust list.
    pub fn opener(&self) -> TestOpener {
        let pem = self.key.to_pem().unwrap();
        TestOpener {
            opener: Opener::new(ReceiverPrivateKey::from_pem(&pem, "test key").unwrap(), 8),
            trust: self.trust.clone(),
        }
    }

    pub fn done(&self) -> PathBuf {
        self.inbox.join("done")
    }
}

/// What a receiver opens with.
pub struct TestOpener {
    opener: Opener,
    trust: TrustList,
}

impl TestOpener {
    pub fn open(&self, sealed: &[u8]) -> Result<Opened, Rejected> {
        self.opener.open(sealed, &self.trust)
    }
}

pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
    started: Option<oneshot::Receiver<Started>>,
}

impl Running {
    pub async fn started(&mut self) -> Started {
        tokio::time::timeout(WAIT, self.started.take().unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// Opens an image as the receiver would, answers it, and returns
/// (message id, device, pixels).
pub async fn answer(
    receiver: &TestClient,
    opener: &mut TestOpener,
    sealed: &[u8],
) -> (String, String, Vec<u8>) {
    let opened = opener
        .open(sealed)
        .expect("a sealed image the receiver can open");
    let meta = &opened.header.meta;
    let mut result = ResultMessage {
        message_id: meta.message_id.to_string(),
        site: meta.site.to_string(),
        gateway: meta.gateway.to_string(),
        device: meta.device.to_string(),
        sequence: meta.sequence,
        captured_at_ms: meta.captured_at_ms,
        label: "normal".into(),
        probabilities: [("normal".to_owned(), 0.9), ("pneumonia".to_owned(), 0.1)].into(),
        threshold: 0.5,
        model_version: "test".into(),
        sha512: hex::encode(opened.sha512),
        receiver: "receiver-1".into(),
        timings: Timings {
            open_ms: 0.0,
            queue_ms: 0.0,
            inference_ms: 0.0,
            batch_size: 1,
            total_ms: 0.0,
        },
        mac: String::new(),
    };
    result.mac = hex::encode(opened.answer_key.mac(&result.answer_fields().unwrap()));
    publish_answer(receiver, &opened, &Answer::Result(result)).await;
    (
        meta.message_id.to_string(),
        meta.device.to_string(),
        opened.pixels.into_data(),
    )
}

/// Opens an image as the receiver would and answers it "not classified"
/// (authenticated) with `reason` and `detail`; returns its message id.
pub async fn answer_not_classified(
    receiver: &TestClient,
    opener: &mut TestOpener,
    sealed: &[u8],
    reason: &str,
    detail: &str,
) -> String {
    let opened = opener
        .open(sealed)
        .expect("a sealed image the receiver can open");
    let meta = &opened.header.meta;
    let mut answer = NotClassifiedMessage {
        message_id: meta.message_id.to_string(),
        site: meta.site.to_string(),
        gateway: meta.gateway.to_string(),
        device: meta.device.to_string(),
        sequence: meta.sequence,
        captured_at_ms: meta.captured_at_ms,
        reason: reason.into(),
        detail: detail.into(),
        score: None,
        model_version: String::new(),
        sha512: hex::encode(opened.sha512),
        receiver: "receiver-1".into(),
        mac: String::new(),
    };
    answer.mac = hex::encode(opened.answer_key.mac(&answer.answer_fields().unwrap()));
    publish_answer(receiver, &opened, &Answer::NotClassified(answer)).await;
    meta.message_id.to_string()
}

/// Publishes `answer` on the results topic of `opened`'s device.
async fn publish_answer(receiver: &TestClient, opened: &Opened, answer: &Answer) {
    let meta = &opened.header.meta;
    receiver
        .publish(
            format!(
                "medgate/v1/{}/{}/results/{}",
                meta.site, meta.gateway, meta.device
            ),
            serde_json::to_vec(answer).unwrap(),
        )
        .await
        .unwrap();
}

/// Waits until `check` holds, looking every 20 ms, failing after `WAIT`.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn files_in(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(suffix) && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub async fn metrics_text(address: std::net::SocketAddr) -> String {
    medgate_testkit::metrics::scrape(address).await.unwrap()
}

/// A PNG of `side`² black pixels: a few dozen KB on disk, `side`² bytes
/// decoded (8192: 64 MiB from 65 KB).
pub fn bomb_png(side: u32) -> Vec<u8> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let image = image::GrayImage::new(side, side);
    let mut png = Vec::new();
    PngEncoder::new_with_quality(&mut png, CompressionType::Best, FilterType::NoFilter)
        .write_image(image.as_raw(), side, side, image::ExtendedColorType::L8)
        .unwrap();
    png
}

/// Noise-like bits for pixel (x, y): images of it compress poorly.
fn noise(x: u32, y: u32) -> u32 {
    (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).rotate_left(x % 13)
}

fn encode_png(image: &image::DynamicImage) -> Vec<u8> {
    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

/// An 8-bit grayscale PNG of `width` × `height` noise-like pixels.
pub fn noise_png(width: u32, height: u32) -> Vec<u8> {
    let image = image::GrayImage::from_fn(width, height, |x, y| {
        image::Luma([(noise(x, y) >> 7) as u8])
    });
    encode_png(&image.into())
}

/// A 16-bit grayscale PNG of `width` × `height` noise-like pixels.
pub fn noise_png16(width: u32, height: u32) -> Vec<u8> {
    let image: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
        image::ImageBuffer::from_fn(width, height, |x, y| {
            image::Luma([(noise(x, y) >> 3) as u16])
        });
    encode_png(&image.into())
}

pub fn counter(metrics: &str, name: &str) -> f64 {
    medgate_testkit::metrics::value(metrics, name).unwrap_or(f64::NAN)
}

/// A DICOM file (explicit VR little endian) of a `width` x `height`
/// 16-bit grayscale image of modality `modality`, with a patient name
/// that must never leave the gateway; `photometric` as given.
pub fn dicom_file(width: u16, height: u16, modality: &str, photometric: &str) -> Vec<u8> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
    let mut object = InMemDicomObject::new_empty();
    let mut put = |tag, vr, value: PrimitiveValue| object.put(DataElement::new(tag, vr, value));
    put(tags::SOP_CLASS_UID, VR::UI, CR.into());
    put(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        "1.2.826.0.1.3680043.9.7".into(),
    );
    put(tags::MODALITY, VR::CS, modality.into());
    put(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        "1.2.826.0.1.3680043.9.7.1".into(),
    );
    put(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        "1.2.826.0.1.3680043.9.7.2".into(),
    );
    put(tags::PATIENT_NAME, VR::PN, "Doe^Jane".into());
    put(tags::PATIENT_ID, VR::LO, "PID-1234567".into());
    put(tags::SAMPLES_PER_PIXEL, VR::US, 1u16.into());
    put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric.into());
    put(tags::ROWS, VR::US, height.into());
    put(tags::COLUMNS, VR::US, width.into());
    put(tags::BITS_ALLOCATED, VR::US, 16u16.into());
    put(tags::BITS_STORED, VR::US, 12u16.into());
    put(tags::HIGH_BIT, VR::US, 11u16.into());
    put(tags::PIXEL_REPRESENTATION, VR::US, 0u16.into());
    let samples: Vec<u8> = (0..u32::from(width) * u32::from(height))
        .flat_map(|i| (((i * 37) % 4096) as u16).to_le_bytes())
        .collect();
    put(tags::PIXEL_DATA, VR::OW, samples.into());
    let file = object
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax("1.2.840.10008.1.2.1")
                .media_storage_sop_class_uid(CR)
                .media_storage_sop_instance_uid("1.2.826.0.1.3680043.9.7"),
        )
        .unwrap();
    let mut out = Vec::new();
    file.write_all(&mut out).unwrap();
    out
}

/// The data set of a DICOM file (what a C-STORE carries): the bytes after
/// its meta group.
pub fn data_set(file: &[u8]) -> Vec<u8> {
    let layout = medgate_gateway::dicom::scan::check_file(file).unwrap();
    file[layout.data_set..].to_vec()
}

/// Stores `data_set` (explicit VR little endian, CR) to the DICOM node at
/// `port` as `calling`: the status and error comment.
pub async fn c_store(port: u16, calling: &str, data_set: Vec<u8>) -> (u16, Option<String>) {
    let address = format!("127.0.0.1:{port}");
    let peer = medgate_gateway::dicom::dimse::Peer {
        calling,
        called: "MEDGATE",
        address: &address,
        timeout: WAIT,
    };
    medgate_gateway::dicom::dimse::store(
        &peer,
        "1.2.840.10008.5.1.4.1.1.1",
        "1.2.826.0.1.3680043.9.7",
        &["1.2.840.10008.1.2.1"],
        move |_| Ok(data_set),
    )
    .await
    .unwrap()
    .expect("the node accepts CR in explicit VR little endian")
}
