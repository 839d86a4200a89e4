//! The core's state machine, driven event by event against a real spool
//! and a recording client: spool entry states, re-publication, result
//! matching.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use medgate_shared::answer::AnswerKey;
use medgate_shared::envelope::Sealed;
use medgate_shared::header::{ImageMeta, Modality};
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::keys::ReceiverPrivateKey;
use medgate_shared::messages::{NotClassifiedMessage, RefusalMessage, ResultMessage, Timings};
use medgate_shared::pixels::{PixelFormat, Pixels};
use medgate_shared::seal::{RotationPolicy, Sealer};
use prometheus_client::registry::Registry;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(60);
const MAX_PUBLICATIONS: u32 = 4;

/// What the core asked of the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    Publish {
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    },
    Subscribe(String),
}

/// A client that records requests; `full` makes its queue refuse them.
#[derive(Clone, Default)]
struct Recorder {
    requests: Arc<Mutex<Vec<Request>>>,
    full: Arc<AtomicBool>,
}

impl Recorder {
    fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

impl Requests for Recorder {
    fn try_publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), QueueFull> {
        if self.full.load(Ordering::SeqCst) {
            return Err(QueueFull);
        }
        self.requests.lock().unwrap().push(Request::Publish {
            topic,
            retain,
            payload,
        });
        Ok(())
    }

    fn try_subscribe(&self, filter: String) -> Result<(), QueueFull> {
        if self.full.load(Ordering::SeqCst) {
            return Err(QueueFull);
        }
        self.requests
            .lock()
            .unwrap()
            .push(Request::Subscribe(filter));
        Ok(())
    }
}

/// A core over a real spool in a temporary folder, with one device
/// (`xr-1`) whose deliveries the test receives.
struct Harness {
    core: Core<Recorder>,
    broker: Recorder,
    spool: Arc<Mutex<Spool>>,
    deliveries: mpsc::Receiver<Delivery>,
    metrics: Metrics,
    pkid: u16,
    sealer: Sealer,
    /// Sealed images by the label a test gave them.
    payloads: HashMap<Vec<u8>, Vec<u8>>,
    /// What each spooled image's answers must match.
    sealed: HashMap<MessageId, (u64, Sealed)>,
    sequence: u64,
    dir: tempfile::TempDir,
}

fn receiver_key() -> &'static ReceiverPrivateKey {
    static KEY: OnceLock<ReceiverPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| ReceiverPrivateKey::generate(3072).unwrap())
}

fn name(text: &str) -> Name {
    text.parse().unwrap()
}

impl Harness {
    fn new() -> Self {
        Self::with_inflight(1 << 20)
    }

    /// A harness whose core keeps at most `inflight_bytes` unacknowledged.
    fn with_inflight(inflight_bytes: u64) -> Self {
        Self::with_limits(inflight_bytes, 16)
    }

    /// A harness whose core keeps at most `inflight_bytes` unacknowledged
    /// and whose device takes `route` verdicts before it reads them.
    fn with_limits(inflight_bytes: u64, route: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(&dir.path().join("spool"), 64 << 20).unwrap();
        let spool = Arc::new(Mutex::new(spool));
        let metrics = Metrics::register(&mut Registry::default());
        let (events_tx, events_rx) = mpsc::channel(16);
        let (route, deliveries) = mpsc::channel(route);
        let broker = Recorder::default();
        let core = Core::new(
            CoreConfig {
                site: name("site-a"),
                gateway: name("gw-1"),
                result_timeout: TIMEOUT,
                max_publications: MAX_PUBLICATIONS,
                link: LinkLimit::new(1 << 20),
                inflight_bytes,
                heartbeat: Heartbeat::new(),
                health: Health::default(),
            },
            broker.clone(),
            events_rx,
            events_tx,
            spool.clone(),
            HashMap::from([(name("xr-1"), route)]),
            metrics.clone(),
        );
        Self {
            core,
            broker,
            spool,
            deliveries,
            metrics,
            pkid: 0,
            sealer: Sealer::new(
                receiver_key().public().clone(),
                GatewayIdentity::generate(),
                RotationPolicy::default(),
            ),
            payloads: HashMap::new(),
            sealed: HashMap::new(),
            sequence: 0,
            dir,
        }
    }

    async fn connect(&mut self, session_present: bool) {
        self.connect_with(session_present, None).await;
    }

    async fn connect_with(&mut self, session_present: bool, max_packet_bytes: Option<u32>) {
        self.core
            .handle(Event::Connected {
                session_present,
                max_packet_bytes,
            })
            .await;
    }

    /// Seals an image for `xr-1` (known to the test as `label`), spools it
    /// and tells the core, as intake does.
    async fn spool_image(&mut self, label: &[u8]) -> MessageId {
        self.sequence += 1;
        let meta = ImageMeta {
            message_id: MessageId::random(),
            site: name("site-a"),
            gateway: name("gw-1"),
            device: name("xr-1"),
            epoch: 9,
            sequence: self.sequence,
            captured_at_ms: now_ms(),
            modality: Modality::Dx,
            model_hint: None,
            anatomy: Default::default(),
        };
        let pixels =
            Pixels::new(8, 8, PixelFormat::Gray8, label.repeat(64)[..64].to_vec()).unwrap();
        let sealed = self.sealer.seal(&meta, &pixels).unwrap();
        let id = self.spool.lock().unwrap().put(&sealed).unwrap();
        self.payloads.insert(label.to_vec(), sealed.bytes.clone());
        self.sealed.insert(id, (self.sequence, sealed));
        self.core
            .handle(Event::Spooled(crate::messages::Spooled {
                id,
                device: name("xr-1"),
                captured_at_ms: now_ms(),
            }))
            .await;
        id
    }

    /// The link reports the next queued publication as sent and its
    /// PUBACK with `reason`.
    async fn broker_answers(&mut self, reason: PubAckReason) {
        self.pkid += 1;
        self.core.handle(Event::Sent(self.pkid)).await;
        self.core
            .handle(Event::Acked {
                pkid: self.pkid,
                reason,
            })
            .await;
    }

    async fn result_arrives(&mut self, payload: Vec<u8>) {
        let topic = topics::results(&name("site-a"), &name("gw-1"), &name("xr-1"));
        self.core.handle(Event::Result { topic, payload }).await;
    }

    /// Hands the core the feedback its delivery task sends.
    async fn feedback(&mut self) {
        let event = self.core.events.recv().await.unwrap();
        assert!(matches!(event, Event::Delivered { .. }));
        self.core.handle(event).await;
    }

    fn spooled(&self, id: &MessageId) -> bool {
        self.spool.lock().unwrap().contains(id)
    }

    /// The publication of the image labelled `label`.
    fn published(&self, label: &[u8]) -> Request {
        Request::Publish {
            topic: image_topic(),
            retain: false,
            payload: self.payloads[label].clone(),
        }
    }

    /// An authenticated result for a spooled image (for any other id, one
    /// under a key nobody has).
    fn result_for(&self, id: MessageId) -> Vec<u8> {
        serde_json::to_vec(&Answer::Result(self.result_message(id))).unwrap()
    }

    fn result_message(&self, id: MessageId) -> ResultMessage {
        let (sequence, sha512, key) = match self.sealed.get(&id) {
            Some((sequence, sealed)) => (*sequence, sealed.sha512, sealed.answer_key.clone()),
            None => (1, [0; 64], AnswerKey::from_bytes([7; 32])),
        };
        let mut result = ResultMessage {
            message_id: id.to_string(),
            site: "site-a".into(),
            gateway: "gw-1".into(),
            device: "xr-1".into(),
            sequence,
            captured_at_ms: now_ms(),
            label: "pneumonia".into(),
            probabilities: BTreeMap::from([("pneumonia".into(), 0.9), ("normal".into(), 0.1)]),
            threshold: 0.5,
            model_version: "test".into(),
            sha512: hex::encode(sha512),
            receiver: "receiver-1".into(),
            timings: Timings {
                open_ms: 1.0,
                queue_ms: 1.0,
                inference_ms: 1.0,
                batch_size: 1,
                total_ms: 3.0,
            },
            mac: String::new(),
        };
        result.mac = hex::encode(key.mac(&result.answer_fields().unwrap()));
        result
    }

    /// An authenticated refusal of a spooled image.
    fn refusal_for(&self, id: MessageId, reason: &str) -> Vec<u8> {
        let (sequence, sealed) = &self.sealed[&id];
        let mut refusal = RefusalMessage {
            message_id: id.to_string(),
            site: "site-a".into(),
            gateway: "gw-1".into(),
            device: "xr-1".into(),
            sequence: *sequence,
            reason: reason.into(),
            detail: "test".into(),
            receiver: "receiver-1".into(),
            mac: String::new(),
        };
        refusal.mac = hex::encode(sealed.answer_key.mac(&refusal.answer_fields().unwrap()));
        serde_json::to_vec(&Answer::Refusal(refusal)).unwrap()
    }

    /// An authenticated not-classified answer for a spooled image.
    fn not_classified_for(&self, id: MessageId, reason: &str) -> NotClassifiedMessage {
        let (sequence, sealed) = &self.sealed[&id];
        let mut answer = NotClassifiedMessage {
            message_id: id.to_string(),
            site: "site-a".into(),
            gateway: "gw-1".into(),
            device: "xr-1".into(),
            sequence: *sequence,
            captured_at_ms: now_ms(),
            reason: reason.into(),
            detail: "no model for MR".into(),
            score: None,
            model_version: String::new(),
            sha512: hex::encode(sealed.sha512),
            receiver: "receiver-1".into(),
            mac: String::new(),
        };
        answer.mac = hex::encode(sealed.answer_key.mac(&answer.answer_fields().unwrap()));
        answer
    }

    fn answers_refused(&self, reason: &str) -> u64 {
        self.metrics
            .answers_refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .get()
    }

    fn quarantined(&self, cause: &str) -> u64 {
        self.metrics
            .quarantined
            .get_or_create(&vec![("cause", cause.to_owned())])
            .get()
    }

    fn errors(&self, kind: &str) -> u64 {
        self.metrics
            .errors
            .get_or_create(&vec![("kind", kind.to_owned())])
            .get()
    }
}

/// The result a delivery carries.
fn classified(delivery: &Delivery) -> &ResultMessage {
    match &delivery.verdict {
        Verdict::Classified(result) => result,
        other => panic!("expected a result, got {other:?}"),
    }
}

/// The rejection a delivery carries.
fn rejected(delivery: &Delivery) -> &Rejection {
    match &delivery.verdict {
        Verdict::Rejected(rejection) => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn image_topic() -> String {
    topics::images(&name("site-a"), &name("gw-1"), &name("xr-1"))
}

#[tokio::test]
async fn every_connection_subscribes_to_results_and_says_online() {
    let mut h = Harness::new();
    h.connect(false).await;
    let requests = h.broker.take();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[0],
        Request::Subscribe("medgate/v1/site-a/gw-1/results/+".into())
    );
    let Request::Publish {
        topic,
        retain,
        payload,
    } = &requests[1]
    else {
        panic!("{requests:?}");
    };
    assert_eq!(topic, "medgate/v1/site-a/gw-1/status");
    assert!(retain);
    let status: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(status["state"], "online");

    // A session the broker kept may have lost the subscription all the same.
    h.core.handle(Event::Disconnected).await;
    h.connect(true).await;
    let requests = h.broker.take();
    assert_eq!(
        requests[0],
        Request::Subscribe("medgate/v1/site-a/gw-1/results/+".into()),
        "{requests:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_acknowledged_image_is_published_again_only_after_the_result_timeout() {
    let mut h = Harness::new();
    h.connect(false).await;
    h.broker_answers(PubAckReason::Success).await; // the status
    h.broker.take();

    let id = h.spool_image(b"sealed image").await;
    assert_eq!(h.broker.take(), vec![h.published(b"sealed image")]);
    h.broker_answers(PubAckReason::Success).await;
    assert_eq!(
        h.metrics.acknowledged.get(),
        1,
        "images only, not the status"
    );

    h.core.publish_due().await;
    tokio::time::advance(TIMEOUT - Duration::from_secs(1)).await;
    h.core.publish_due().await;
    assert_eq!(h.broker.take(), Vec::new(), "not before the timeout");

    tokio::time::advance(Duration::from_secs(1)).await;
    h.core.publish_due().await;
    // The same bytes, so the same message id: receivers answer it from
    // their memory instead of classifying it again.
    assert_eq!(h.broker.take(), vec![h.published(b"sealed image")]);
    assert_eq!(h.metrics.republished.get(), 1);
    assert_eq!(h.metrics.published.get(), 2);
    assert!(h.spooled(&id));
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_publishes_again_what_the_broker_had_not_acknowledged() {
    let mut h = Harness::new();
    h.connect(false).await;
    h.broker_answers(PubAckReason::Success).await;
    let first = h.spool_image(b"first").await;
    h.broker_answers(PubAckReason::Success).await;
    let second = h.spool_image(b"second").await;
    h.broker.take();

    // The connection drops before the second image's PUBACK.
    h.core.handle(Event::Disconnected).await;
    let _ = h.spool_image(b"while offline").await;
    assert_eq!(h.broker.take(), Vec::new(), "nothing is sent offline");
    h.connect(true).await;
    let images: Vec<Request> = h
        .broker
        .take()
        .into_iter()
        .filter(|r| matches!(r, Request::Publish { topic, .. } if *topic == image_topic()))
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    assert!(images.contains(&h.published(b"second")));
    assert!(images.contains(&h.published(b"while offline")));
    assert!(h.spooled(&first) && h.spooled(&second));
}

#[tokio::test(start_paused = true)]
async fn a_refused_publication_stays_spooled_and_is_tried_again() {
    let mut h = Harness::new();
    h.connect(false).await;
    h.broker_answers(PubAckReason::Success).await;
    let id = h.spool_image(b"image").await;
    h.broker.take();
    h.broker_answers(PubAckReason::NotAuthorized).await;
    assert_eq!(h.errors("publish_refused"), 1);
    assert_eq!(h.metrics.acknowledged.get(), 0);
    assert!(h.spooled(&id));

    tokio::time::advance(TIMEOUT).await;
    h.core.publish_due().await;
    assert_eq!(h.broker.take(), vec![h.published(b"image")]);
}

#[tokio::test]
async fn a_full_client_queue_leaves_the_image_for_a_later_tick() {
    let mut h = Harness::new();
    h.connect(false).await;
    h.broker.take();
    h.broker.full.store(true, Ordering::SeqCst);
    let _ = h.spool_image(b"image").await;
    h.core.publish_due().await;
    assert_eq!(h.broker.take(), Vec::new());
    assert_eq!(h.metrics.published.get(), 0);

    h.broker.full.store(false, Ordering::SeqCst);
    h.core.publish_due().await;
    assert_eq!(h.broker.take(), vec![h.published(b"image")]);
}

#[tokio::test]
async fn a_result_reaches_its_device_and_only_then_the_image_leaves_the_spool() {
    let mut h = Harness::new();
    h.connect(false).await;
    let id = h.spool_image(b"image").await;
    h.broker_answers(PubAckReason::Success).await;
    h.broker_answers(PubAckReason::Success).await;

    h.result_arrives(h.result_for(id)).await;
    let delivery = h.deliveries.recv().await.unwrap();
    assert_eq!(classified(&delivery).message_id, id.to_string());
    assert_eq!(classified(&delivery).label, "pneumonia");
    assert!(h.spooled(&id), "kept until the device has it");
    assert_eq!(h.metrics.results.get(), 1);

    // The same result again while the first is being delivered.
    h.result_arrives(h.result_for(id)).await;
    assert!(h.deliveries.try_recv().is_err(), "delivered once");

    delivery.done.send(()).unwrap();
    h.feedback().await;
    assert!(!h.spooled(&id));
    assert!(h.core.publications.is_empty());

    // A late duplicate of an answered image is ignored.
    h.result_arrives(h.result_for(id)).await;
    assert!(h.deliveries.try_recv().is_err());
    assert_eq!(h.metrics.results.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_result_the_device_did_not_take_leaves_the_image_to_be_answered_again() {
    let mut h = Harness::new();
    h.connect(false).await;
    let id = h.spool_image(b"image").await;
    h.broker_answers(PubAckReason::Success).await;
    h.broker_answers(PubAckReason::Success).await;
    h.broker.take();

    h.result_arrives(h.result_for(id)).await;
    drop(h.deliveries.recv().await.unwrap()); // the source gave up
    h.feedback().await;
    assert!(h.spooled(&id));

    tokio::time::advance(TIMEOUT).await;
    h.core.publish_due().await;
    assert_eq!(h.broker.take(), vec![h.published(b"image")]);
    h.result_arrives(h.result_for(id)).await;
    assert!(h.deliveries.recv().await.is_some(), "answered again");
}

#[tokio::test]
async fn results_for_no_spooled_image_or_unreadable_ones_reach_no_device() {
    let mut h = Harness::new();
    h.connect(false).await;
    let _ = h.spool_image(b"image").await;

    h.result_arrives(h.result_for(MessageId::random())).await;
    h.result_arrives(b"not json".to_vec()).await;
    let mut unreadable_id: serde_json::Value =
        serde_json::from_slice(&h.result_for(MessageId::random())).unwrap();
    unreadable_id["message_id"] = "zz".into();
    h.result_arrives(serde_json::to_vec(&unreadable_id).unwrap())
        .await;

    assert!(h.deliveries.try_recv().is_err());
    assert_eq!(h.answers_refused("unreadable"), 2);
    assert_eq!(h.metrics.results.get(), 0);
}

#[tokio::test]
async fn forged_or_mismatched_results_reach_no_device_and_the_image_stays() {
    let mut h = Harness::new();
    h.connect(false).await;
    let id = h.spool_image(b"image").await;
    let other = h.spool_image(b"other").await;
    let real = h.result_message(id);

    // "normal" written by someone without the answer key (MAC of other
    // fields, or none), a result naming another image's SHA-512, another
    // image's valid result relabelled with this id, and a valid result on
    // another device's topic.
    let mut relabelled = real.clone();
    relabelled.label = "normal".into();
    let mut no_mac = real.clone();
    no_mac.mac = "00".repeat(32);
    let mut wrong_image = real.clone();
    wrong_image.sha512 = h.result_message(other).sha512;
    let mut other_as_this = h.result_message(other);
    other_as_this.message_id = id.to_string();
    for forged in [relabelled, no_mac, wrong_image, other_as_this] {
        h.result_arrives(serde_json::to_vec(&Answer::Result(forged)).unwrap())
            .await;
    }
    let elsewhere = topics::results(&name("site-a"), &name("gw-1"), &name("xr-2"));
    h.core
        .handle(Event::Result {
            topic: elsewhere,
            payload: h.result_for(id),
        })
        .await;
    assert!(
        h.deliveries.try_recv().is_err(),
        "nothing reached the device"
    );
    assert_eq!(h.answers_refused("bad_mac"), 2);
    assert_eq!(h.answers_refused("mismatch"), 2);
    assert_eq!(h.answers_refused("wrong_topic"), 1);
    assert!(h.spooled(&id) && h.spooled(&other));

    // The genuine result still gets through.
    h.result_arrives(h.result_for(id)).await;
    assert_eq!(
        classified(&h.deliveries.recv().await.unwrap()).label,
        "pneumonia"
    );
}

#[tokio::test]
async fn a_not_classified_answer_reaches_the_device_and_frees_the_spool_without_quarantine() {
    let mut h = Harness::new();
    h.connect(false).await;
    let id = h.spool_image(b"image").await;
    let other = h.spool_image(b"other").await;

    // Forged: another reason than the receiver authenticated.
    let mut forged = h.not_classified_for(id, "no_model");
    forged.reason = "out_of_distribution".into();
    h.result_arrives(serde_json::to_vec(&Answer::NotClassified(forged)).unwrap())
        .await;
    assert_eq!(h.answers_refused("bad_mac"), 1);
    // Mismatched: the answer for one image carried under another's id.
    let mut swapped = h.not_classified_for(id, "no_model");
    swapped.message_id = other.to_string();
    h.result_arrives(serde_json::to_vec(&Answer::NotClassified(swapped)).unwrap())
        .await;
    assert!(
        h.deliveries.try_recv().is_err(),
        "nothing forged is delivered"
    );
    assert!(h.spooled(&id) && h.spooled(&other));

    let answer = h.not_classified_for(id, "no_model");
    h.result_arrives(serde_json::to_vec(&Answer::NotClassified(answer)).unwrap())
        .await;
    let delivery = h.deliveries.recv().await.unwrap();
    let Verdict::NotClassified(told) = &delivery.verdict else {
        panic!("expected not classified, got {:?}", delivery.verdict);
    };
    assert_eq!(
        (told.reason.as_str(), told.detail.as_str()),
        ("no_model", "no model for MR")
    );
    assert!(h.spooled(&id), "kept until the device knows");
    delivery.done.send(()).unwrap();
    h.feedback().await;
    assert!(!h.spooled(&id), "let go of, as after a result");
    assert_eq!(h.spool.lock().unwrap().quarantined(), 0, "not quarantined");
    assert_eq!(
        h.metrics
            .not_classified
            .get_or_create(&vec![("reason", "no_model".to_owned())])
            .get(),
        1
    );
    h.broker.take();
    h.core.publish_due().await;
    assert!(
        !h.broker.take().contains(&h.published(b"image")),
        "never published again"
    );
}

#[tokio::test]
async fn an_authenticated_refusal_quarantines_the_image_and_a_forged_one_does_not() {
    let mut h = Harness::new();
    h.connect(false).await;
    let id = h.spool_image(b"image").await;
    let mut forged: serde_json::Value = serde_json::from_slice(&h.refusal_for(id, "aead")).unwrap();
    forged["reason"] = "replay".into();
    h.result_arrives(serde_json::to_vec(&forged).unwrap()).await;
    assert!(h.spooled(&id));
    assert_eq!(h.answers_refused("bad_mac"), 1);

    h.result_arrives(h.refusal_for(id, "aead")).await;
    // The device is told first (sidecar, RESULT register); only then does
    // the image move to quarantine.
    let delivery = h.deliveries.recv().await.unwrap();
    let rejection = rejected(&delivery);
    assert_eq!(
        (rejection.cause.as_str(), rejection.reason.as_str()),
        ("refused", "aead")
    );
    assert!(h.spooled(&id), "kept until the device knows");
    h.broker.take();
    delivery.done.send(()).unwrap();
    h.feedback().await;
    assert!(!h.spooled(&id), "out of the spool");
    assert_eq!(h.quarantined("refused"), 1);
    // The retained status lists it.
    let status = h
        .broker
        .take()
        .into_iter()
        .find_map(|r| match r {
            Request::Publish {
                topic,
                retain: true,
                payload,
            } if topic.ends_with("/status") => {
                Some(serde_json::from_slice::<serde_json::Value>(&payload).unwrap())
            }
            _ => None,
        })
        .expect("a new retained status");
    assert_eq!(status["state"], "online");
    assert_eq!(status["quarantined"], 1);
    assert_eq!(
        status["recently_quarantined"][0]["message_id"],
        id.to_string()
    );
    assert_eq!(status["recently_quarantined"][0]["reason"], "aead");
    assert_eq!(h.spool.lock().unwrap().quarantined(), 1);
    let notes: Vec<_> = std::fs::read_dir(h.dir.path().join("spool/quarantine"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .collect();
    let note: serde_json::Value =
        serde_json::from_slice(&std::fs::read(notes[0].path()).unwrap()).unwrap();
    assert_eq!(note["reason"], "aead");
    assert_eq!(note["receiver"], "receiver-1");
    assert_eq!(note["message_id"], id.to_string());

    // Never published again.
    h.broker.take();
    h.core.publish_due().await;
    assert_eq!(h.broker.take(), Vec::new());
}

#[tokio::test(start_paused = true)]
async fn an_image_nobody_answers_is_quarantined_after_the_last_publication() {
    let mut h = Harness::new();
    h.connect(false).await;
    h.broker_answers(PubAckReason::Success).await;
    let id = h.spool_image(b"image").await;
    for _ in 1..MAX_PUBLICATIONS {
        h.broker_answers(PubAckReason::Success).await;
        tokio::time::advance(TIMEOUT).await;
        h.core.publish_due().await;
    }
    assert_eq!(h.metrics.published.get(), u64::from(MAX_PUBLICATIONS));
    assert!(h.spooled(&id));
    tokio::time::advance(TIMEOUT).await;
    h.core.publish_due().await;
    let delivery = h.deliveries.recv().await.unwrap();
    assert_eq!(rejected(&delivery).cause, "unanswered");
    delivery.done.send(()).unwrap();
    h.feedback().await;
    assert!(!h.spooled(&id));
    assert_eq!(h.quarantined("unanswered"), 1);
    // Not published again, and not rejected twice.
    tokio::time::advance(TIMEOUT).await;
    h.core.publish_due().await;
    assert!(h.deliveries.try_recv().is_err());
    assert_eq!(h.metrics.published.get(), u64::from(MAX_PUBLICATIONS));
}

#[tokio::test]
async fn an_image_larger_than_the_broker_takes_is_never_sent_and_is_quarantined() {
    let mut h = Harness::new();
    // The broker's CONNACK names a limit below the sealed test image.
    h.connect_with(false, Some(600)).await;
    h.broker.take();
    let id = h.spool_image(b"image").await;
    let delivery = h.deliveries.recv().await.unwrap();
    let rejection = rejected(&delivery);
    assert_eq!(rejection.cause, "too_large");
    assert!(
        rejection.reason.contains("at most 600"),
        "{}",
        rejection.reason
    );
    assert_eq!(h.broker.take(), [], "nothing sent that the broker refuses");
    delivery.done.send(()).unwrap();
    h.feedback().await;
    assert!(!h.spooled(&id));
    assert_eq!(h.quarantined("too_large"), 1);
}

#[tokio::test]
async fn unacknowledged_bytes_are_bounded_and_the_next_image_waits_for_a_puback() {
    // Room for one sealed 8 x 8 test image (about 770 bytes), not two.
    let mut h = Harness::with_inflight(1000);
    h.connect(false).await;
    h.broker_answers(PubAckReason::Success).await;
    h.broker.take();
    h.spool_image(b"first").await;
    h.spool_image(b"second").await;
    assert_eq!(h.broker.take(), [h.published(b"first")]);
    h.core.publish_due().await;
    assert_eq!(h.broker.take(), [], "over the in-flight budget");
    h.broker_answers(PubAckReason::Success).await;
    h.core.publish_due().await;
    assert_eq!(h.broker.take(), [h.published(b"second")]);
}

#[tokio::test]
async fn a_device_that_takes_no_results_never_stops_the_core() {
    // The device's source holds one verdict and reads none (a sensor
    // unplugged with results pending).
    let mut h = Harness::with_limits(1 << 20, 1);
    h.connect(false).await;
    h.broker_answers(PubAckReason::Success).await;
    let first = h.spool_image(b"first").await;
    h.broker_answers(PubAckReason::Success).await;
    let second = h.spool_image(b"second").await;
    h.broker_answers(PubAckReason::Success).await;
    h.broker.take();
    let results = [h.result_for(first), h.result_for(second)];
    for result in results {
        tokio::time::timeout(Duration::from_secs(5), h.result_arrives(result))
            .await
            .expect("the core does not wait for the device");
    }
    // The core goes on: a new image is published at once.
    h.spool_image(b"third").await;
    assert_eq!(h.broker.take(), [h.published(b"third")]);
    assert!(h.spooled(&first) && h.spooled(&second));
    // The device comes back: it gets both, in order, the second from a
    // later tick.
    let delivery = h.deliveries.recv().await.unwrap();
    assert_eq!(classified(&delivery).message_id, first.to_string());
    delivery.done.send(()).unwrap();
    h.feedback().await;
    h.core.retry_waiting();
    let delivery = h.deliveries.recv().await.unwrap();
    assert_eq!(classified(&delivery).message_id, second.to_string());
    delivery.done.send(()).unwrap();
    h.feedback().await;
    assert!(!h.spooled(&first) && !h.spooled(&second));
}
