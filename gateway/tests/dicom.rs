//! The gateway as a DICOM node against real peers: dcmtk (`storescu`,
//! `echoscu`, `img2dcm`, `dsrdump`) as the modality and Orthanc as the
//! PACS, both installed by `scripts/install-deps`; real chest X-rays from
//! `MEDGATE_DATA_DIR` turned into DICOM by `img2dcm`; a real mosquitto and
//! a test receiver that answers the sealed images.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use medgate_gateway::config::DicomSection;
use medgate_gateway::dicom::dimse::{self, Peer};
use medgate_testkit::free_port;
use medgate_testkit::orthanc::Orthanc;
use serde_json::Value;
use support::*;

const GATEWAY: &str = env!("CARGO_BIN_EXE_medgate-gateway");
const MODALITY: &str = "CR_ROOM1";
const PACS: &str = "ORTHANC";
const IMAGES: &str = "medgate/v1/site-a/gw-1/images/";

/// A gateway with a DICOM node, its PACS port reserved (Orthanc started
/// on it when the test wants the PACS up).
struct Site {
    world: World,
    dicom_port: u16,
    pacs_port: u16,
    work: PathBuf,
}

impl Site {
    fn new() -> Site {
        Self::with_result_timeout(60)
    }

    fn with_result_timeout(result_timeout_secs: u64) -> Site {
        Self::with_edit(result_timeout_secs, |_| {})
    }

    fn with_edit(result_timeout_secs: u64, edit: impl FnOnce(&mut DicomSection)) -> Site {
        Self::with_spool(1 << 30, result_timeout_secs, edit)
    }

    fn with_spool(
        spool_bytes: u64,
        result_timeout_secs: u64,
        edit: impl FnOnce(&mut DicomSection),
    ) -> Site {
        assert!(
            Path::new("/usr/bin/storescu").exists() && Orthanc::installed(),
            "dcmtk and Orthanc are needed (scripts/install-deps installs them)"
        );
        let dicom_port = free_port().unwrap();
        let pacs_port = free_port().unwrap();
        let world = World::with(spool_bytes, result_timeout_secs, |config| {
            let mut node = DicomSection::new(
                "modalities",
                &format!("127.0.0.1:{dicom_port}"),
                &[MODALITY],
                PACS,
                &format!("127.0.0.1:{pacs_port}"),
            );
            node.pacs.retry_max_secs = 1;
            node.timeout_secs = 10;
            edit(&mut node);
            config.dicom = Some(node);
        });
        let work = world.dir.path().join("modality");
        std::fs::create_dir_all(&work).unwrap();
        Site {
            world,
            dicom_port,
            pacs_port,
            work,
        }
    }

    fn pacs(&self) -> Orthanc {
        Orthanc::start_on(&self.world.dir.path().join("pacs"), PACS, self.pacs_port).unwrap()
    }

    /// `count` chest X-rays from the val split as DICOM files made by
    /// img2dcm (Secondary Capture, JPEG baseline, modality DX), one study.
    fn xrays(&self, count: usize) -> Vec<PathBuf> {
        self.xrays_of_side(count, 224)
    }

    /// As [`Site::xrays`], `side` × `side` pixels.
    fn xrays_of_side(&self, count: usize, side: u32) -> Vec<PathBuf> {
        let data = std::env::var_os("MEDGATE_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("../../shared/data"))
            .join("pneumoniamnist.npz");
        let split = medgate_medmnist::read_split(&data, medgate_medmnist::SplitName::Val).unwrap();
        let study = format!(
            "2.25.{}",
            u128::from_be_bytes(*medgate_shared::ids::MessageId::random().as_bytes())
        );
        (0..count)
            .map(|i| {
                let pixels = split.image(i).unwrap().to_vec();
                let image =
                    image::GrayImage::from_raw(split.width as u32, split.height as u32, pixels)
                        .unwrap();
                let image = image::imageops::resize(
                    &image,
                    side,
                    side,
                    image::imageops::FilterType::Triangle,
                );
                let jpeg = self.work.join(format!("xray-{i}.jpg"));
                image
                    .save_with_format(&jpeg, image::ImageFormat::Jpeg)
                    .unwrap();
                let dcm = self.work.join(format!("xray-{i}.dcm"));
                let out = Command::new("img2dcm")
                    .arg(&jpeg)
                    .arg(&dcm)
                    .args(["-k", "Modality=DX", "-k", "PatientName=Test^Patient"])
                    .args(["-k", "PatientID=MG-0001", "-k", "BodyPartExamined=CHEST"])
                    .args(["-k", &format!("StudyInstanceUID={study}")])
                    .args(["-k", "AccessionNumber=ACC-77"])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "img2dcm: {}", text(&out));
                dcm
            })
            .collect()
    }

    /// storescu from the modality's AE title.
    fn storescu(&self, files: &[PathBuf]) -> Output {
        Command::new("storescu")
            // img2dcm files are JPEG baseline: propose it.
            .args(["-aet", MODALITY, "-aec", "MEDGATE", "-v", "--propose-jpeg8"])
            .arg("127.0.0.1")
            .arg(self.dicom_port.to_string())
            .args(files)
            .output()
            .unwrap()
    }

    /// echoscu from `calling` to `called`.
    fn echo(&self, calling: &str, called: &str) -> Output {
        Command::new("echoscu")
            .args(["-aet", calling, "-aec", called, "127.0.0.1"])
            .arg(self.dicom_port.to_string())
            .output()
            .unwrap()
    }

    /// Waits until the node answers C-ECHO (a gateway started as a process).
    async fn wait_listening(&self) {
        let port = self.dicom_port.to_string();
        eventually("the DICOM node answering C-ECHO", || {
            Command::new("echoscu")
                .args([
                    "-aet",
                    MODALITY,
                    "-aec",
                    "MEDGATE",
                    "-to",
                    "5",
                    "127.0.0.1",
                    &port,
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .await;
    }

    fn spooled(&self) -> usize {
        files_in(&self.world.dir.path().join("spool"), ".mgsi").len()
    }

    fn outbox(&self) -> usize {
        files_in(&self.world.dir.path().join("state/dicom/outbox"), ".dcm").len()
    }

    fn references(&self) -> usize {
        files_in(
            &self.world.dir.path().join("state/dicom/references"),
            ".json",
        )
        .len()
    }
}

/// A gateway process, killed when the test ends (even by a panic).
struct Process(std::process::Child);

impl Process {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How many C-STORE responses with `status` (as dcmtk names it) storescu's
/// verbose output shows.
fn responses(log: &str, status: &str) -> usize {
    log.matches(&format!("Received Store Response ({status})"))
        .count()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Answers `count` images as the receiver would; their message ids.
async fn answer_all(
    receiver: &mut medgate_testkit::client::TestClient,
    opener: &mut TestOpener,
    count: usize,
) -> Vec<String> {
    let images = receiver.expect(IMAGES, count, WAIT).await.unwrap();
    let mut ids = Vec::new();
    for image in images {
        let (id, device, _) = answer(receiver, opener, &image.payload).await;
        assert_eq!(device, "modalities");
        ids.push(id);
    }
    ids
}

/// The Structured Reports Orthanc holds, as simplified tags.
fn reports(pacs: &Orthanc) -> Vec<Value> {
    pacs.instances()
        .unwrap()
        .iter()
        .map(|id| {
            let mut tags = pacs.tags(id).unwrap();
            tags["OrthancId"] = Value::String(id.clone());
            tags
        })
        .filter(|t| t["Modality"] == "SR")
        .collect()
}

async fn wait_reports(pacs: &Orthanc, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = reports(pacs);
        if found.len() >= count {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {count} reports in the PACS",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tag_of(file: &Path, keyword: &str) -> String {
    let out = Command::new("dcmdump")
        .args(["-q", "+P", keyword])
        .arg(file)
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split('[')
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storescu_xrays_come_back_as_structured_reports_in_orthanc() {
    let site = Site::new();
    let pacs = site.pacs();
    let mut receiver = site.world.receiver().await;
    let mut opener = site.world.opener();
    let mut gateway = site.world.start_in_process();
    let started = gateway.started().await;
    assert_eq!(started.dicom.unwrap().port(), site.dicom_port);

    // C-ECHO from the modality.
    let echo = site.echo(MODALITY, "MEDGATE");
    assert!(echo.status.success(), "echoscu: {}", text(&echo));

    let files = site.xrays(3);
    let sent = site.storescu(&files);
    assert!(sent.status.success(), "storescu: {}", text(&sent));
    assert_eq!(responses(&text(&sent), "Success"), 3, "{}", text(&sent));
    // Success was answered only once every image was in the spool.
    assert_eq!(site.spooled(), 3);
    assert_eq!(site.references(), 3);

    // What went to the broker is pixels, never the patient.
    let images = receiver.expect(IMAGES, 3, WAIT).await.unwrap();
    for image in &images {
        let raw = String::from_utf8_lossy(&image.payload);
        assert!(!raw.contains("Test^Patient") && !raw.contains("MG-0001"));
        let opened = opener.open(&image.payload).unwrap();
        assert_eq!(opened.header.meta.modality.code(), "DX");
        assert_eq!(
            opened.header.meta.anatomy.to_string(),
            "CHEST",
            "its own body part"
        );
        assert_eq!(opened.pixels.width(), 224);
        answer(&receiver, &mut opener, &image.payload).await;
    }

    let found = wait_reports(&pacs, 3).await;
    let sources: Vec<String> = files.iter().map(|f| tag_of(f, "SOPInstanceUID")).collect();
    for report in &found {
        assert_eq!(report["SOPClassUID"], "1.2.840.10008.5.1.4.1.1.88.22");
        assert_eq!(report["PatientID"], "MG-0001");
        assert_eq!(
            report["StudyInstanceUID"],
            Value::String(tag_of(&files[0], "StudyInstanceUID"))
        );
        let evidence = &report["CurrentRequestedProcedureEvidenceSequence"][0];
        let referenced = evidence["ReferencedSeriesSequence"][0]["ReferencedSOPSequence"][0]
            ["ReferencedSOPInstanceUID"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            sources.contains(&referenced),
            "{referenced} is a source image"
        );
        // dsrdump parses the report.
        let file = site.work.join("report.dcm");
        std::fs::write(
            &file,
            pacs.file(report["OrthancId"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        let dump = Command::new("dsrdump")
            .args(["+Pl", "+Pc", "+Pi"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(dump.status.success(), "dsrdump: {}", text(&dump));
        let dump = text(&dump);
        assert!(dump.contains("Enhanced SR"), "{dump}");
        assert!(dump.contains("\"normal\""), "{dump}");
        assert!(dump.contains("not a diagnosis"), "{dump}");
        // Every code is valid (dsrdump names invalid ones), no error.
        assert!(dump.contains("(121071,DCM,\"Finding\")"), "{dump}");
        assert!(!dump.to_lowercase().contains("invalid"), "{dump}");
        assert!(!dump.contains("E: "), "{dump}");
    }
    // Delivered: the spool, the references and the outbox are empty.
    eventually("the spool and outbox emptied", || {
        site.spooled() == 0 && site.outbox() == 0 && site.references() == 0
    })
    .await;
    let metrics = metrics_text(started.metrics.unwrap()).await;
    assert_eq!(
        counter(
            &metrics,
            "medgate_gateway_dicom_stores_total{status=\"stored\"}"
        ),
        3.0
    );
    assert_eq!(
        counter(&metrics, "medgate_gateway_dicom_reports_stored_total"),
        3.0
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_modalities_may_associate() {
    let site = Site::new();
    let mut gateway = site.world.start_in_process();
    let started = gateway.started().await;
    let port = site.dicom_port.to_string();
    let echo = |calling: &str, called: &str| site.echo(calling, called);
    let allowed = echo(MODALITY, "MEDGATE");
    assert!(allowed.status.success(), "{}", text(&allowed));
    let stranger = echo("LAPTOP", "MEDGATE");
    assert!(!stranger.status.success());
    assert!(
        text(&stranger).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&stranger)
    );
    let misdialled = echo(MODALITY, "OTHER");
    assert!(!misdialled.status.success());
    assert!(
        text(&misdialled).contains("Called AE Title Not Recognized"),
        "{}",
        text(&misdialled)
    );
    // A refused caller's images never get in.
    let files = site.xrays(1);
    let sent = Command::new("storescu")
        .args(["-aet", "LAPTOP", "-aec", "MEDGATE", "127.0.0.1", &port])
        .args(&files)
        .output()
        .unwrap();
    assert!(!sent.status.success());
    assert_eq!(site.spooled(), 0);
    let metrics = metrics_text(started.metrics.unwrap()).await;
    assert_eq!(
        counter(
            &metrics,
            "medgate_gateway_dicom_associations_total{outcome=\"rejected\"}"
        ),
        3.0
    );
    gateway.stop().await;
}

/// A data set in explicit VR little endian from raw elements.
fn element(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&group.to_le_bytes());
    bytes.extend_from_slice(&element.to_le_bytes());
    bytes.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    bytes.extend_from_slice(value);
    bytes
}

fn us(value: u16) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

/// A small CR data set whose pixel data element is `pixels` (VR, value).
fn cr_dataset(rows: u16, columns: u16, pixel_vr: &[u8; 2], pixels: &[u8]) -> Vec<u8> {
    [
        element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.1\0"),
        element(0x0008, 0x0018, b"UI", b"1.2.826.0.1.3680043.9.8.1"),
        element(0x0008, 0x0060, b"CS", b"CR"),
        element(0x0010, 0x0010, b"PN", b"Doe^Jane"),
        element(0x0020, 0x000D, b"UI", b"1.2.826.0.1.3680043.9.8"),
        element(0x0020, 0x000E, b"UI", b"1.2.826.0.1.3680043.9.8.2"),
        element(0x0028, 0x0002, b"US", &us(1)),
        element(0x0028, 0x0004, b"CS", b"MONOCHROME2 "),
        element(0x0028, 0x0010, b"US", &us(rows)),
        element(0x0028, 0x0011, b"US", &us(columns)),
        element(0x0028, 0x0100, b"US", &us(8)),
        element(0x0028, 0x0101, b"US", &us(8)),
        element(0x0028, 0x0102, b"US", &us(7)),
        element(0x0028, 0x0103, b"US", &us(0)),
        element(0x7FE0, 0x0010, pixel_vr, pixels),
    ]
    .concat()
}

/// An encapsulated pixel data element (undefined length) of `fragment`.
fn encapsulated(dataset_without_pixels: Vec<u8>, fragment: &[u8]) -> Vec<u8> {
    let mut bytes = dataset_without_pixels;
    bytes.extend_from_slice(&[
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    // Basic offset table (empty), one fragment, sequence delimiter.
    bytes.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
    bytes.extend_from_slice(&(fragment.len() as u32).to_le_bytes());
    bytes.extend_from_slice(fragment);
    bytes.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    bytes
}

async fn store_raw(port: u16, ts: &'static str, data: Vec<u8>) -> (u16, Option<String>) {
    let address = format!("127.0.0.1:{port}");
    let peer = Peer {
        calling: MODALITY,
        called: "MEDGATE",
        address: &address,
        timeout: WAIT,
    };
    dimse::store(
        &peer,
        "1.2.840.10008.5.1.4.1.1.1",
        "1.2.826.0.1.3680043.9.8.1",
        &[ts],
        move |_| Ok(data),
    )
    .await
    .unwrap()
    .expect("the gateway accepts CR in this transfer syntax")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_objects_get_failure_statuses_and_the_gateway_keeps_serving() {
    const EXPLICIT: &str = "1.2.840.10008.1.2.1";
    const JPEG: &str = "1.2.840.10008.1.2.4.50";
    let site = Site::new();
    let mut gateway = site.world.start_in_process();
    let started = gateway.started().await;
    let port = site.dicom_port;
    let good = cr_dataset(4, 4, b"OB", &[9; 16]);

    let mut truncated = good.clone();
    truncated.truncate(good.len() - 7);
    let mut wrong_vr = good.clone();
    // PatientName's VR "PN" becomes "Q!".
    let at = wrong_vr.windows(2).position(|w| w == b"PN").unwrap();
    wrong_vr[at..at + 2].copy_from_slice(b"Q!");
    let huge = cr_dataset(65_535, 65_535, b"OB", &[0; 16]);
    let head = cr_dataset(4, 4, b"OB", &[]);
    let head = head[..head.len() - 12].to_vec();
    let corrupt_jpeg = encapsulated(
        head,
        &[0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0xDE, 0xAD],
    );

    let cases: Vec<(&str, &'static str, Vec<u8>, &[u16])> = vec![
        ("truncated", EXPLICIT, truncated, &[0xC000]),
        ("wrong VR", EXPLICIT, wrong_vr, &[0xC000]),
        ("huge dimensions", EXPLICIT, huge, &[0xC000, 0xC001]),
        ("corrupt JPEG", JPEG, corrupt_jpeg, &[0xC000]),
    ];
    for (what, ts, data, expected) in cases {
        let (code, comment) = store_raw(port, ts, data).await;
        assert!(
            expected.contains(&code),
            "{what}: status {code:#06x} ({comment:?})"
        );
        assert!(comment.is_some(), "{what}: a reason comes back");
    }
    assert_eq!(site.spooled(), 0);
    assert_eq!(site.references(), 0);
    // The gateway still serves: a good object is stored.
    let (code, _) = store_raw(port, EXPLICIT, good).await;
    assert_eq!(code, 0x0000);
    assert_eq!(site.spooled(), 1);
    let metrics = metrics_text(started.metrics.unwrap()).await;
    assert_eq!(
        counter(
            &metrics,
            "medgate_gateway_dicom_stores_total{status=\"stored\"}"
        ),
        1.0
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_sent_while_the_broker_is_down_are_spooled_first_and_all_reported() {
    // Images the receiver missed while it reconnected are published again
    // after 5 s.
    let mut site = Site::with_result_timeout(5);
    let pacs = site.pacs();
    let files = site.xrays(50);
    let mut gateway = site.world.start_in_process();
    gateway.started().await;
    site.world.broker.kill();
    let sent = site.storescu(&files);
    assert!(sent.status.success(), "storescu: {}", text(&sent));
    assert_eq!(responses(&text(&sent), "Success"), 50, "{}", text(&sent));
    // Each success came after its image was spooled.
    assert_eq!(site.spooled(), 50);
    site.world.broker.restart().unwrap();
    let mut receiver = site.world.receiver().await;
    let mut opener = site.world.opener();
    answer_until(&mut receiver, &mut opener, 50).await;
    let found = wait_reports(&pacs, 50).await;
    assert_eq!(found.len(), 50);
    eventually("the spool and outbox emptied", || {
        site.spooled() == 0 && site.outbox() == 0
    })
    .await;
    // Nothing twice: one report per image even if an answer came twice.
    assert_eq!(reports(&pacs).len(), 50);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_out_of_resources_and_the_modality_sends_again_later() {
    // Room for a few of the sealed X-rays (about 260 kB each), not for ten
    // (the smallest spool the config allows is 1 MiB). Images the receiver
    // missed while it reconnected are published again after 5 s.
    let mut site = Site::with_spool(1 << 20, 5, |_| {});
    let pacs = site.pacs();
    let files = site.xrays_of_side(10, 512);
    let mut gateway = site.world.start_in_process();
    gateway.started().await;
    site.world.broker.kill();
    let sent = site.storescu(&files);
    let log = text(&sent);
    let stored = responses(&log, "Success");
    // storescu stops at the first refusal, as a modality holds its queue.
    assert!(stored >= 1, "{log}");
    assert_eq!(responses(&log, "Refused: OutOfResources"), 1, "{log}");
    // Exactly the acknowledged images are spooled; the refused one left
    // nothing behind (no references, no report to come).
    assert_eq!(site.spooled(), stored);
    assert_eq!(site.references(), stored);

    site.world.broker.restart().unwrap();
    let mut receiver = site.world.receiver().await;
    let mut opener = site.world.opener();
    let mut answered = HashSet::new();
    let mut remaining = files[stored..].to_vec();
    let mut total = stored;
    // The modality's own retry is all it takes: it sends the rest again
    // as the spool drains.
    for round in 0.. {
        answer_more(&mut receiver, &mut opener, &mut answered, total).await;
        eventually("the spool emptied", || site.spooled() == 0).await;
        if remaining.is_empty() {
            break;
        }
        assert!(round < 10, "{} images never stored", remaining.len());
        let again = text(&site.storescu(&remaining));
        let stored = responses(&again, "Success");
        assert!(stored >= 1, "an empty spool refused an image: {again}");
        remaining.drain(..stored);
        total += stored;
    }
    assert_eq!(wait_reports(&pacs, 10).await.len(), 10);
    gateway.stop().await;
}

/// Answers images until `count` distinct ones are answered.
async fn answer_until(
    receiver: &mut medgate_testkit::client::TestClient,
    opener: &mut TestOpener,
    count: usize,
) {
    answer_more(receiver, opener, &mut HashSet::new(), count).await;
}

/// Answers images until `answered` holds `count` distinct ones.
async fn answer_more(
    receiver: &mut medgate_testkit::client::TestClient,
    opener: &mut TestOpener,
    answered: &mut HashSet<String>,
    count: usize,
) {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while answered.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {count} images answered",
            answered.len()
        );
        if let Ok(images) = receiver.expect(IMAGES, 1, Duration::from_millis(500)).await {
            for image in images {
                let (id, _, _) = answer(receiver, opener, &image.payload).await;
                answered.insert(id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_wait_in_the_outbox_across_a_sigkill_until_the_pacs_is_back() {
    let site = Site::new();
    let mut receiver = site.world.receiver().await;
    let mut opener = site.world.opener();
    let files = site.xrays(5);
    let mut gateway = Process(site.world.start_process(Path::new(GATEWAY)));
    site.wait_listening().await;
    let sent = site.storescu(&files);
    assert!(sent.status.success(), "storescu: {}", text(&sent));
    answer_all(&mut receiver, &mut opener, 5).await;
    // The PACS is down: the reports wait, the images are delivered.
    eventually("five reports in the outbox", || {
        site.outbox() == 5 && site.spooled() == 0 && site.references() == 0
    })
    .await;
    gateway.kill();

    let mut gateway = Process(site.world.start_process(Path::new(GATEWAY)));
    let pacs = site.pacs();
    let found = wait_reports(&pacs, 5).await;
    assert_eq!(found.len(), 5);
    eventually("the outbox emptied", || site.outbox() == 0).await;
    gateway.kill();
}

/// pydicom's test files (`scripts/fetch-dicom-samples`).
fn samples() -> PathBuf {
    let dir = std::env::var_os("MEDGATE_DICOM_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/medgate/dicom-samples")
        });
    assert!(
        dir.join("MR_small.dcm").exists(),
        "pydicom's test files are missing from {}: run scripts/fetch-dicom-samples",
        dir.display()
    );
    dir
}

/// What the node answered for one file stored as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// The file has no meta group this test can send it with.
    NotSendable,
    /// No presentation context accepted (SOP class or transfer syntax).
    NotNegotiated,
    Status(u16),
}

/// Stores `file` to the node in its own transfer syntax, its data set
/// byte for byte.
/// `as_class`: send it as that SOP class whatever it says it is.
async fn store_file(port: u16, file: &Path, as_class: Option<&str>) -> Answer {
    let bytes = std::fs::read(file).unwrap();
    // Where the data set starts: after the meta group, whose length its
    // first element gives (a broken data set must still be sent).
    let Some(start) = bytes
        .get(128..144)
        .filter(|head| &head[..4] == b"DICM" && head[4..6] == [2, 0] && head[6..8] == [0, 0])
        .map(|head| 144 + u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize)
        .filter(|start| *start <= bytes.len())
    else {
        return Answer::NotSendable;
    };
    let Ok(meta) = dicom_object::FileMetaTable::from_reader(&bytes[128..start]) else {
        return Answer::NotSendable;
    };
    let class = as_class
        .map(str::to_owned)
        .unwrap_or_else(|| meta.media_storage_sop_class_uid().to_owned());
    let instance = meta.media_storage_sop_instance_uid().to_owned();
    let ts = meta.transfer_syntax().to_owned();
    let address = format!("127.0.0.1:{port}");
    let peer = Peer {
        calling: MODALITY,
        called: "MEDGATE",
        address: &address,
        timeout: WAIT,
    };
    let data = bytes[start..].to_vec();
    match dimse::store(&peer, &class, &instance, &[&ts], move |_| Ok(data))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    {
        None => Answer::NotNegotiated,
        Some((code, _)) => Answer::Status(code),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pydicom_test_files_are_stored_or_refused_with_a_status_and_never_crash_the_gateway() {
    let dir = samples();
    let site = Site::new();
    let mut gateway = site.world.start_in_process();
    let started = gateway.started().await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    // Real CR, CT and MR series of the DICOMDIR tests.
    for series in ["77654033/CR1", "77654033/CT2", "98892003/MR1"] {
        let series = dir.join("dicomdirtests").join(series);
        files.extend(
            std::fs::read_dir(series)
                .unwrap()
                .map(|e| e.unwrap().path()),
        );
    }
    files.sort();
    let mut answers = std::collections::BTreeMap::new();
    // Broken files are sent as CR whatever they are, to reach the parser.
    let broken = ["MR_truncated.dcm", "badVR.dcm", "rtplan_truncated.dcm"];
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        let as_class = broken
            .contains(&name.as_ref())
            .then_some("1.2.840.10008.5.1.4.1.1.1");
        let answer = store_file(site.dicom_port, file, as_class).await;
        let name = file.strip_prefix(&dir).unwrap().display().to_string();
        eprintln!("{name:60} {answer:x?}");
        answers.insert(name, answer);
    }
    let stored = |name: &str| answers[name] == Answer::Status(0);
    // Grayscale images in every accepted transfer syntax are stored.
    for name in [
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_RLE.dcm",
        "MR_small_padded.dcm",
        "CT_small.dcm",
        "image_dfl.dcm",
        "examples_overlay.dcm",
        "dicomdirtests/77654033/CR1/6154",
    ] {
        assert!(stored(name), "{name}: {:?}", answers[name]);
    }
    // Broken files are refused: truncated ones as not understood; badVR.dcm
    // (an RT dose with a bad VR, 32 bits allocated) may be refused by rule.
    for name in broken {
        assert!(
            matches!(answers[name], Answer::Status(0xC000 | 0xC001)),
            "{name}: {:?}",
            answers[name]
        );
    }
    assert_eq!(answers["MR_truncated.dcm"], Answer::Status(0xC000));
    assert_eq!(answers["rtplan_truncated.dcm"], Answer::Status(0xC000));
    // 12-bit JPEG (extended, process 4): the pure-Rust decoder lacks it.
    for name in ["JPGExtended.dcm", "JPEG-lossy.dcm"] {
        assert_eq!(answers[name], Answer::Status(0xC000), "{name}");
    }
    // Colour is refused, not guessed.
    assert_eq!(answers["SC_rgb_rle.dcm"], Answer::Status(0xC001));
    // JPEG 2000, JPEG-LS and big endian are not negotiated.
    for name in [
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ] {
        assert_eq!(answers[name], Answer::NotNegotiated, "{name}");
    }
    // Every success is in the spool; the gateway still answers.
    let successes = answers
        .values()
        .filter(|a| **a == Answer::Status(0))
        .count();
    assert_eq!(site.spooled(), successes);
    assert_eq!(site.references(), successes);
    let echo = site.echo(MODALITY, "MEDGATE");
    assert!(echo.status.success(), "{}", text(&echo));
    let metrics = metrics_text(started.metrics.unwrap()).await;
    assert_eq!(
        counter(
            &metrics,
            "medgate_gateway_dicom_stores_total{status=\"stored\"}"
        ),
        successes as f64
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn associations_over_the_limit_are_rejected_for_now_not_queued() {
    let site = Site::with_edit(60, |node| node.max_associations = 1);
    let mut gateway = site.world.start_in_process();
    let started = gateway.started().await;
    // A modality holds the only slot: associated, then silent.
    let held = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title(MODALITY)
        .called_ae_title("MEDGATE")
        .with_abstract_syntax("1.2.840.10008.1.1")
        .establish_async(format!("127.0.0.1:{}", site.dicom_port))
        .await
        .unwrap();
    let echo = site.echo(MODALITY, "MEDGATE");
    assert!(!echo.status.success());
    assert!(
        text(&echo).contains("Rejected Transient"),
        "{}",
        text(&echo)
    );
    assert!(
        text(&echo).contains("Local Limit Exceeded"),
        "{}",
        text(&echo)
    );
    // Released, the slot serves the next modality.
    held.release().await.unwrap();
    site.wait_listening().await;
    let metrics = metrics_text(started.metrics.unwrap()).await;
    assert!(
        counter(
            &metrics,
            "medgate_gateway_dicom_associations_total{outcome=\"busy\"}"
        ) >= 1.0
    );
    gateway.stop().await;
}
