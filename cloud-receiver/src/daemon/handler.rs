//! What happens to one sealed image, from receipt to acknowledgement.
//!
//! Order matters, cheap checks first: the header must parse, name a gateway
//! in the trust list and carry that gateway's signature, and match the topic
//! it came on (which the broker's ACL lets only that gateway publish to),
//! all before any RSA work; then the image is opened (decrypted, checked);
//! a message id already answered gets that answer again; only then is the
//! device's sequence number checked against replays, and the image
//! classified. Results carry a MAC from the image's session key. A refusal
//! of an image that arrived on its own gateway's topic and whose session
//! key was recovered (tag mismatch, AEAD failure, replay) is answered, with
//! a MAC, so that the gateway quarantines it instead of re-publishing it. The broker gets its acknowledgement only after the result is
//! published, so a receiver that dies mid-way leaves the image with the
//! broker and the gateway, never lost. A refused message is acknowledged
//! (it has been dealt with), counted and audited, never classified.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use medgate_daemon::trust::TrustFile;
use medgate_shared::answer::AnswerKey;
use medgate_shared::envelope;
use medgate_shared::header::Header;
use medgate_shared::ids::Name;
use medgate_shared::messages::{
    Answer, AuditRecord, NotClassifiedMessage, Notification, RefusalMessage, ResultMessage,
    Timings, not_classified,
};
use medgate_shared::seal::Opener;
use medgate_shared::topics;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::acks::{Acks, Ticket};
use super::batcher::Batcher;
use super::dedupe::{Begin, Dedupe};
use super::journal::Journal;
use super::metrics::Metrics;
use super::replay::{DeviceKey, ReplayGuard};
use super::rules::{self, Rule};
use crate::model::data::preprocess;
use crate::model::decision::{self, Decision};
use crate::model::gate::Gate;
use crate::model::{ModelCard, routing};

/// One model the receiver serves: its card, its out-of-distribution gate
/// and its inference thread (which answers each image with the margin
/// `logit₁ − logit₀` followed by the pooled features).
pub struct Served {
    /// The card (classes, threshold, input size, version, what it accepts).
    pub card: ModelCard,
    /// The gate, when the model folder has one.
    pub gate: Option<Gate>,
    /// Its inference thread.
    pub batcher: Batcher,
}

/// Everything a handler needs; one per service, shared.
pub struct Context {
    /// This receiver's name.
    pub name: Name,
    /// Site for audit records of unattributable messages.
    pub audit_site: Name,
    /// The broker client (publishes).
    pub client: AsyncClient,
    /// Acknowledgements, in the order the images arrived.
    pub acks: Acks,
    /// Opens sealed images (thread-safe; locks only its key cache briefly).
    pub opener: Opener,
    /// The enrolled gateways.
    pub trust: Arc<TrustFile>,
    /// Answers by message id and replay windows.
    pub memory: Mutex<Memory>,
    /// The same answers on disk, when a state folder is configured.
    pub journal: Option<Journal>,
    /// How many refusals get their own audit record.
    pub audits: AuditLimiter,
    /// The models, in routing order.
    pub models: Vec<Served>,
    /// Notification rules.
    pub rules: Vec<Rule>,
    /// Metrics.
    pub metrics: Metrics,
    /// Cancelled when the service cannot go on (inference thread gone).
    pub fatal: CancellationToken,
}

/// The receiver's memory of what it has seen.
pub struct Memory {
    /// Answers by message id.
    pub dedupe: Dedupe<Arc<Answer>, oneshot::Sender<Arc<Answer>>>,
    /// Per-device sequence windows.
    pub replay: ReplayGuard,
}

impl Context {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        // The daemon ends on any panic (logging::exit_on_panic), so a
        // poisoned lock is never seen in service; tests may still see one.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Audit records published per second at most, after a burst of
/// [`AUDIT_BURST`].
pub const AUDIT_RATE: f64 = 50.0;
/// Audit records that may go out at once.
pub const AUDIT_BURST: f64 = 200.0;

/// Whether a refusal gets its own audit record.
enum Admit {
    Yes,
    /// No; `report` is how many were suppressed since the last report, at
    /// most once a second.
    No {
        report: Option<u64>,
    },
}

/// The audit allowance: a token bucket, and a count of what it held back.
pub struct AuditLimiter {
    state: Mutex<AuditState>,
}

struct AuditState {
    tokens: f64,
    at: Instant,
    suppressed: u64,
    reported: Option<Instant>,
}

impl Default for AuditLimiter {
    fn default() -> Self {
        Self {
            state: Mutex::new(AuditState {
                tokens: AUDIT_BURST,
                at: Instant::now(),
                suppressed: 0,
                reported: None,
            }),
        }
    }
}

impl AuditLimiter {
    fn admit(&self, now: Instant) -> Admit {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let earned = now.saturating_duration_since(state.at).as_secs_f64() * AUDIT_RATE;
        state.tokens = (state.tokens + earned).min(AUDIT_BURST);
        state.at = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            return Admit::Yes;
        }
        state.suppressed += 1;
        let due = state
            .reported
            .is_none_or(|at| now.saturating_duration_since(at).as_secs() >= 1);
        if due {
            state.reported = Some(now);
            let report = std::mem::take(&mut state.suppressed);
            Admit::No {
                report: Some(report),
            }
        } else {
            Admit::No { report: None }
        }
    }
}

/// Keeps the in-flight gauge honest on every exit path.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// An image that passed every check, with the model it goes to.
struct Accepted {
    header: Header,
    sha512: [u8; 64],
    answer_key: AnswerKey,
    route: Route,
}

/// Where an accepted image goes.
enum Route {
    /// To model `index`, as its input (resized to the model's size).
    Model { index: usize, input: Vec<u8> },
    /// Nowhere: no model takes it, for this reason.
    NoModel(String),
}

/// Why an image was not accepted, and whether its gateway can be told.
struct Refused {
    reason: &'static str,
    detail: String,
    /// Set when the session key was recovered and the image came on its own
    /// gateway's topic: the refusal can be authenticated and answered.
    answerable: Option<Box<(Header, AnswerKey)>>,
}

/// Handles one publish from the images subscription.
pub async fn handle(ctx: Arc<Context>, publish: Publish, ticket: Ticket) {
    let _in_flight = InFlight::enter(&ctx.metrics);
    let received = Instant::now();
    ctx.metrics.received.inc();
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let Some(origin) = topics::parse_images(&topic) else {
        let detail = "the topic does not name a valid site, gateway and device".to_owned();
        reject(&ctx, &publish, &topic, None, "malformed", detail, None).await;
        ticket.ack(&publish);
        return;
    };

    let accepted = match open(&ctx, &publish, &origin).await {
        Ok(accepted) => accepted,
        Err(refused) => {
            let header = refused.answerable.as_ref().map(|boxed| &boxed.0);
            reject(
                &ctx,
                &publish,
                &topic,
                Some(&origin.0),
                refused.reason,
                refused.detail.clone(),
                header,
            )
            .await;
            if let Some(boxed) = &refused.answerable {
                let (header, key) = &**boxed;
                answer_refusal(&ctx, header, key, refused.reason, &refused.detail).await;
            }
            ticket.ack(&publish);
            return;
        }
    };
    let opened_after = received.elapsed();
    let meta = &accepted.header.meta;

    let id = meta.message_id;
    let device: DeviceKey = (origin.0, origin.1, origin.2, meta.epoch);
    let (waiter, answer) = oneshot::channel();
    let begun = match begin(&ctx, &device, &accepted.header, waiter) {
        Ok(begun) => begun,
        Err(replay) => {
            let header = Some(&accepted.header);
            reject(
                &ctx,
                &publish,
                &topic,
                Some(&device.0),
                "replay",
                replay.clone(),
                header,
            )
            .await;
            answer_refusal(
                &ctx,
                &accepted.header,
                &accepted.answer_key,
                "replay",
                &replay,
            )
            .await;
            ticket.ack(&publish);
            return;
        }
    };
    match begun {
        Begin::Done(result) => {
            ctx.metrics.duplicates.inc();
            tracing::debug!(message = %id, "repeated message id: answering with the earlier result");
            if publish_answer(&ctx, &result).await {
                ticket.ack(&publish);
            }
            return;
        }
        Begin::InFlight => {
            ctx.metrics.duplicates.inc();
            // Acknowledge once the first copy is answered; if it is
            // abandoned, leave this copy with the broker for a retry.
            if answer.await.is_ok() {
                ticket.ack(&publish);
            }
            return;
        }
        Begin::New => {}
    }

    match decide(&ctx, &accepted, received, opened_after).await {
        Some(result) => {
            let result = Arc::new(result);
            let published = publish_answer(&ctx, &result).await;
            if published {
                match &*result {
                    Answer::Result(classified) => {
                        notify(&ctx, classified).await;
                        ctx.metrics
                            .results
                            .get_or_create(&vec![("label", classified.label.clone())])
                            .inc();
                    }
                    Answer::NotClassified(unclassified) => {
                        ctx.metrics
                            .not_classified
                            .get_or_create(&vec![("reason", unclassified.reason.clone())])
                            .inc();
                    }
                    Answer::Refusal(_) => {}
                }
                ctx.metrics
                    .processing_seconds
                    .observe(received.elapsed().as_secs_f64());
                if let Some(journal) = &ctx.journal {
                    journal.record(&device, accepted.header.meta.sequence, &result);
                }
                let waiters = ctx.memory().dedupe.finish(id, result.clone());
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
                ticket.ack(&publish);
                return;
            }
            abandon(&ctx, &accepted, &device);
        }
        None => abandon(&ctx, &accepted, &device),
    }
}

/// Registers the message id and, for a new one, checks the device's
/// sequence number; a replay gives its description.
fn begin(
    ctx: &Context,
    device: &DeviceKey,
    header: &Header,
    waiter: oneshot::Sender<Arc<Answer>>,
) -> Result<Begin<Arc<Answer>>, String> {
    let mut memory = ctx.memory();
    let (begun, _) = memory.dedupe.begin(header.meta.message_id, waiter);
    if begun == Begin::New
        && let Err(e) = memory.replay.check(device, header.meta.sequence)
    {
        drop(memory.dedupe.abandon(header.meta.message_id));
        return Err(e.to_string());
    }
    Ok(begun)
}

/// Forgets an image that was not answered, so that a copy sent again is
/// classified then rather than refused as a replay; the broker keeps the
/// unacknowledged original.
fn abandon(ctx: &Context, accepted: &Accepted, device: &DeviceKey) {
    let mut memory = ctx.memory();
    memory.replay.forget(device, accepted.header.meta.sequence);
    // Waiters dropped here learn that no answer is coming.
    drop(memory.dedupe.abandon(accepted.header.meta.message_id));
}

/// Parses, checks the header against the topic it came on, then opens and
/// preprocesses, on a blocking thread (Ed25519, RSA, ChaCha20, Henon and
/// SHA-512 are CPU work). The opener takes no global lock, so images open
/// in parallel.
async fn open(
    ctx: &Arc<Context>,
    publish: &Publish,
    origin: &(Name, Name, Name),
) -> Result<Accepted, Refused> {
    let payload = publish.payload.clone();
    let worker = ctx.clone();
    let origin = origin.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let envelope = envelope::parse(&payload).map_err(|e| {
            let e = envelope::OpenError::from(e);
            Refused {
                reason: e.reason(),
                detail: e.to_string(),
                answerable: None,
            }
        })?;
        // The topic is the broker's word for who published; an image on
        // another gateway's or device's topic is refused before any crypto,
        // and never answered (its gateway did not send it there).
        let meta = &envelope.header.meta;
        if (&meta.site, &meta.gateway, &meta.device) != (&origin.0, &origin.1, &origin.2) {
            return Err(Refused {
                reason: "topic_mismatch",
                detail: format!(
                    "header names {}/{}/{} but it was published under {}/{}/{}",
                    meta.site, meta.gateway, meta.device, origin.0, origin.1, origin.2
                ),
                answerable: None,
            });
        }
        let trust = worker.trust.current();
        match worker.opener.open_parsed(&envelope, trust.as_ref()) {
            Ok(opened) => Ok(Accepted {
                route: route(&worker.models, &opened.header, &opened.pixels),
                header: opened.header,
                sha512: opened.sha512,
                answer_key: opened.answer_key,
            }),
            Err(rejected) => Err(Refused {
                reason: rejected.error.reason(),
                detail: rejected.error.to_string(),
                answerable: rejected.answerable,
            }),
        }
    })
    .await;
    match opened {
        Ok(outcome) => outcome,
        Err(e) => Err(Refused {
            reason: "malformed",
            detail: format!("opening failed: {e}"),
            answerable: None,
        }),
    }
}

/// Tells the gateway, authenticated, that its image was refused, on the
/// image's results topic.
async fn answer_refusal(
    ctx: &Context,
    header: &Header,
    key: &AnswerKey,
    reason: &'static str,
    detail: &str,
) {
    let meta = &header.meta;
    // A damaged or replayed copy of an image that is being (or was)
    // answered must not make its gateway quarantine the good original.
    if ctx.memory().dedupe.knows(&meta.message_id) {
        tracing::debug!(message = %meta.message_id, reason, "refused copy of an image already answered: not reported to the gateway");
        return;
    }
    let mut refusal = RefusalMessage {
        message_id: meta.message_id.to_string(),
        site: meta.site.to_string(),
        gateway: meta.gateway.to_string(),
        device: meta.device.to_string(),
        sequence: meta.sequence,
        reason: reason.to_owned(),
        detail: detail.to_owned(),
        receiver: ctx.name.to_string(),
        mac: String::new(),
    };
    let Some(fields) = refusal.answer_fields() else {
        return;
    };
    refusal.mac = hex::encode(key.mac(&fields));
    let topic = topics::results(&meta.site, &meta.gateway, &meta.device);
    let Ok(body) = serde_json::to_vec(&Answer::Refusal(refusal)) else {
        return;
    };
    match ctx
        .client
        .publish(topic, QoS::AtLeastOnce, false, body)
        .await
    {
        Ok(()) => {
            ctx.metrics.refusals_answered.inc();
            tracing::info!(message = %meta.message_id, device = %meta.device, reason, "refusal sent to the gateway");
        }
        Err(e) => tracing::warn!(message = %meta.message_id, cause = %e, "refusal not published"),
    }
}

/// The model an opened image goes to (from its header) and its input for
/// that model; CPU work, run where the image was opened.
fn route(models: &[Served], header: &Header, pixels: &medgate_shared::pixels::Pixels) -> Route {
    let cards: Vec<&ModelCard> = models.iter().map(|m| &m.card).collect();
    match routing::choose(&cards, header) {
        Ok(index) => Route::Model {
            index,
            input: preprocess(pixels, models[index].card.input_size[0]),
        },
        Err(detail) => Route::NoModel(detail),
    }
}

/// What the receiver says about an accepted image: its class from the model
/// it was routed to, or "not classified" and why. `None` when inference
/// failed (the service is stopping; the image stays with the broker).
async fn decide(
    ctx: &Context,
    accepted: &Accepted,
    received: Instant,
    opened_after: std::time::Duration,
) -> Option<Answer> {
    let meta = &accepted.header.meta;
    let (index, input) = match &accepted.route {
        Route::Model { index, input } => (*index, input),
        Route::NoModel(detail) => {
            tracing::info!(message = %meta.message_id, device = %meta.device, detail = %detail, "not classified: no model takes this image");
            let refusal = Unclassified {
                reason: not_classified::NO_MODEL,
                detail: detail.clone(),
                score: None,
                model_version: String::new(),
            };
            return not_classified_answer(ctx, accepted, refusal).map(Answer::NotClassified);
        }
    };
    let served = ctx.models.get(index)?;
    // Pixels first: a blank or saturated frame needs no inference.
    if let Some(gate) = &served.gate
        && let Err(refusal) = gate.check_pixels(input)
    {
        return refuse_as_unlike(ctx, accepted, &served.card, refusal);
    }
    let answer = match served.batcher.infer(input.clone()).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(cause = %e, "inference failed; stopping the service");
            ctx.fatal.cancel();
            return None;
        }
    };
    let card = &served.card;
    let (margin, features) = answer.output.split_first()?;
    let (label, positive) =
        match decision::decide(card, served.gate.as_ref(), input, *margin, features) {
            Decision::Classified {
                label, positive, ..
            } => (label, positive),
            Decision::Unlike(refusal) => return refuse_as_unlike(ctx, accepted, card, refusal),
        };
    let probabilities: BTreeMap<String, f32> = card
        .classes
        .iter()
        .cloned()
        .zip([1.0 - positive, positive])
        .collect();
    let mut result = ResultMessage {
        message_id: meta.message_id.to_string(),
        site: meta.site.to_string(),
        gateway: meta.gateway.to_string(),
        device: meta.device.to_string(),
        sequence: meta.sequence,
        captured_at_ms: meta.captured_at_ms,
        label,
        probabilities,
        threshold: card.threshold,
        model_version: card.version.clone(),
        sha512: hex::encode(accepted.sha512),
        receiver: ctx.name.to_string(),
        timings: Timings {
            open_ms: millis(opened_after),
            queue_ms: millis(answer.queued),
            inference_ms: millis(answer.inference),
            batch_size: answer.batch_size,
            total_ms: millis(received.elapsed()),
        },
        mac: String::new(),
    };
    let mac = result
        .answer_fields()
        .map(|f| accepted.answer_key.mac(&f))?;
    result.mac = hex::encode(mac);
    Some(Answer::Result(result))
}

/// A not-classified answer before its MAC.
struct Unclassified {
    reason: &'static str,
    detail: String,
    score: Option<f32>,
    model_version: String,
}

/// The answer for an image the model's gate found unlike its training data.
fn refuse_as_unlike(
    ctx: &Context,
    accepted: &Accepted,
    card: &ModelCard,
    refusal: crate::model::gate::Refusal,
) -> Option<Answer> {
    let meta = &accepted.header.meta;
    tracing::info!(message = %meta.message_id, device = %meta.device, model = %card.version, detail = %refusal.detail, "not classified: out of distribution");
    let unclassified = Unclassified {
        reason: not_classified::OUT_OF_DISTRIBUTION,
        detail: refusal.detail,
        score: refusal.score,
        model_version: card.version.clone(),
    };
    not_classified_answer(ctx, accepted, unclassified).map(Answer::NotClassified)
}

/// A not-classified answer with its MAC; `None` if it cannot be
/// authenticated (fields too long to encode).
fn not_classified_answer(
    ctx: &Context,
    accepted: &Accepted,
    unclassified: Unclassified,
) -> Option<NotClassifiedMessage> {
    let meta = &accepted.header.meta;
    let mut answer = NotClassifiedMessage {
        message_id: meta.message_id.to_string(),
        site: meta.site.to_string(),
        gateway: meta.gateway.to_string(),
        device: meta.device.to_string(),
        sequence: meta.sequence,
        captured_at_ms: meta.captured_at_ms,
        reason: unclassified.reason.to_owned(),
        detail: unclassified.detail,
        score: unclassified.score,
        model_version: unclassified.model_version,
        sha512: hex::encode(accepted.sha512),
        receiver: ctx.name.to_string(),
        mac: String::new(),
    };
    let mac = answer
        .answer_fields()
        .map(|f| accepted.answer_key.mac(&f))?;
    answer.mac = hex::encode(mac);
    Some(answer)
}

async fn publish_answer(ctx: &Context, answer: &Answer) -> bool {
    let (site, gateway, device) = match answer {
        Answer::Result(r) => (&r.site, &r.gateway, &r.device),
        Answer::NotClassified(r) => (&r.site, &r.gateway, &r.device),
        Answer::Refusal(r) => (&r.site, &r.gateway, &r.device),
    };
    let (Ok(site), Ok(gateway), Ok(device)) = (
        site.parse::<Name>(),
        gateway.parse::<Name>(),
        device.parse::<Name>(),
    ) else {
        return false;
    };
    let topic = topics::results(&site, &gateway, &device);
    let body = match serde_json::to_vec(answer) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(cause = %e, "cannot encode a result");
            return false;
        }
    };
    match ctx
        .client
        .publish(topic, QoS::AtLeastOnce, false, body)
        .await
    {
        Ok(()) => {
            match answer {
                Answer::Result(result) => tracing::info!(
                    message = %result.message_id,
                    device = %result.device,
                    label = %result.label,
                    batch = result.timings.batch_size,
                    total_ms = result.timings.total_ms,
                    "result published"
                ),
                _ => tracing::info!(
                    message = %answer.message_id(),
                    device = %device,
                    "not-classified answer published"
                ),
            }
            true
        }
        Err(e) => {
            tracing::warn!(message = %answer.message_id(), cause = %e, "result not published; the image stays unacknowledged");
            false
        }
    }
}

async fn notify(ctx: &Context, result: &ResultMessage) {
    let Ok(site) = result.site.parse::<Name>() else {
        return;
    };
    let hits = rules::matches(&ctx.rules, &site, |label| {
        result.probabilities.get(label).copied()
    });
    for (ward, priority) in hits {
        let note = Notification {
            message_id: result.message_id.clone(),
            site: result.site.clone(),
            gateway: result.gateway.clone(),
            device: result.device.clone(),
            ward: ward.to_string(),
            priority,
            label: result.label.clone(),
            probability: result
                .probabilities
                .get(&result.label)
                .copied()
                .unwrap_or(0.0),
            model_version: result.model_version.clone(),
            captured_at_ms: result.captured_at_ms,
        };
        let Ok(body) = serde_json::to_vec(&note) else {
            continue;
        };
        let topic = topics::notify(&site, ward);
        match ctx
            .client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await
        {
            Ok(()) => {
                ctx.metrics
                    .notifications
                    .get_or_create(&vec![("priority", format!("{priority:?}").to_lowercase())])
                    .inc();
            }
            Err(e) => tracing::warn!(ward = %ward, cause = %e, "notification not published"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn reject(
    ctx: &Context,
    publish: &Publish,
    topic: &str,
    site: Option<&Name>,
    reason: &'static str,
    detail: String,
    header: Option<&Header>,
) {
    ctx.metrics.reject(reason);
    // A flood of junk must not flood the audit topic (and the client queue
    // that results share): past the allowance, refusals are counted only.
    match ctx.audits.admit(Instant::now()) {
        Admit::Yes => {}
        Admit::No { report } => {
            ctx.metrics.audits_suppressed.inc();
            if let Some(suppressed) = report {
                tracing::warn!(
                    suppressed,
                    "refusals arriving faster than the audit allowance: counted, not each audited (rejected_total, audits_suppressed_total)"
                );
            }
            return;
        }
    }
    tracing::warn!(topic, reason, detail = %detail, bytes = publish.payload.len(), "message refused");
    let record = AuditRecord {
        receiver: ctx.name.to_string(),
        reason: reason.to_owned(),
        detail,
        topic: topic.to_owned(),
        bytes: publish.payload.len(),
        message_id: header.map(|h| h.meta.message_id.to_string()),
        device: header.map(|h| h.meta.device.to_string()),
        sequence: header.map(|h| h.meta.sequence),
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let audit_topic = topics::audit(site.unwrap_or(&ctx.audit_site), &ctx.name);
    if let Ok(body) = serde_json::to_vec(&record)
        && let Err(e) = ctx
            .client
            .publish(audit_topic, QoS::AtLeastOnce, false, body)
            .await
    {
        tracing::warn!(cause = %e, "audit record not published");
    }
}

fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn audits_are_limited_to_a_burst_then_a_rate_and_the_excess_is_reported_once_a_second() {
        let limiter = AuditLimiter::default();
        let start = Instant::now();
        let admitted = (0..1000)
            .filter(|_| matches!(limiter.admit(start), Admit::Yes))
            .count();
        assert_eq!(admitted, AUDIT_BURST as usize);
        // The excess was reported once (the first suppression), not 800 times.
        let later = start + Duration::from_millis(500);
        let mut reports = Vec::new();
        let mut yes = 0;
        for _ in 0..100 {
            match limiter.admit(later) {
                Admit::Yes => yes += 1,
                Admit::No { report: Some(n) } => reports.push(n),
                Admit::No { report: None } => {}
            }
        }
        assert_eq!(yes, (AUDIT_RATE / 2.0) as usize, "half a second's worth");
        assert!(reports.is_empty(), "no second report within the second");
        match limiter.admit(start + Duration::from_millis(1100)) {
            Admit::Yes => {}
            Admit::No { .. } => panic!("the allowance refills"),
        }
    }
}
