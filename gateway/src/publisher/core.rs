//! The publisher's core: the state of every spooled image between intake
//! and its device (never published, published and waiting for PUBACK,
//! acknowledged and waiting for the result, result on its way to the
//! device), driven by [`Event`]s and a tick that re-publishes what is
//! overdue. It talks to the broker only through [`Requests`], which never
//! waits, so tests drive it without one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use medgate_shared::answer::Outcome;
use medgate_shared::ids::{MessageId, Name};
use medgate_shared::messages::Answer;
use medgate_shared::topics;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::status_payload;
use crate::capture::now_ms;
use crate::capture::publish_overhead;
use crate::messages::{Delivery, Event, Health, Heartbeat, LinkLimit, Rejection, Verdict};
use crate::metrics::Metrics;
use crate::spool::{Entry, QuarantineNote, Spool};

/// How often the core looks for images to (re)publish.
pub const TICK: Duration = Duration::from_millis(200);

/// Bytes of images published and not yet acknowledged, at most (one image
/// is always allowed): rumqttc holds each until its PUBACK, so this bounds
/// the memory large images take on their way out. Small images are bound
/// by `mqtt.max_inflight` long before.
pub const INFLIGHT_BYTES: u64 = 32 << 20;

/// The client's request queue is full; the request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the MQTT client's request queue is full")]
pub struct QueueFull;

/// What the core asks of the MQTT client: requests queued without
/// waiting (QoS 1), so that the core never blocks the link.
pub trait Requests: Send {
    /// Queues a publication.
    ///
    /// # Errors
    /// [`QueueFull`]; the caller tries again later.
    fn try_publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), QueueFull>;

    /// Queues a subscription.
    ///
    /// # Errors
    /// [`QueueFull`].
    fn try_subscribe(&self, filter: String) -> Result<(), QueueFull>;
}

impl Requests for AsyncClient {
    fn try_publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), QueueFull> {
        AsyncClient::try_publish(self, topic, QoS::AtLeastOnce, retain, payload)
            .map_err(|_| QueueFull)
    }

    fn try_subscribe(&self, filter: String) -> Result<(), QueueFull> {
        AsyncClient::try_subscribe(self, filter, QoS::AtLeastOnce).map_err(|_| QueueFull)
    }
}

/// A verdict on its way to a device's source.
struct Waiting {
    id: MessageId,
    device: Name,
    delivery: Delivery,
    delivered: oneshot::Receiver<()>,
    note: Option<QuarantineNote>,
}

#[derive(Debug, Default)]
struct Publication {
    published_at: Option<Instant>,
    acked: bool,
    count: u32,
    /// Size of the last publication.
    bytes: u64,
    /// Queued or sent on this connection, no PUBACK yet.
    in_flight: bool,
}

/// The core's fixed inputs.
pub struct CoreConfig {
    /// Site.
    pub site: Name,
    /// This gateway.
    pub gateway: Name,
    /// Re-publication timeout.
    pub result_timeout: Duration,
    /// Publications without an answer before quarantine.
    pub max_publications: u32,
    /// The packet limit of the broker link, which the core learns from
    /// the broker.
    pub link: LinkLimit,
    /// Unacknowledged image bytes at most ([`INFLIGHT_BYTES`]).
    pub inflight_bytes: u64,
    /// Beaten at every turn of the loop (the watchdog reads it).
    pub heartbeat: Heartbeat,
    /// The sources' problems, which the status names.
    pub health: Health,
}

/// The core actor, publishing through `C` (the rumqttc client in the
/// daemon).
pub struct Core<C> {
    config: CoreConfig,
    client: C,
    events: mpsc::Receiver<Event>,
    spool: Arc<Mutex<Spool>>,
    routes: HashMap<Name, mpsc::Sender<Delivery>>,
    /// The core's own event channel, for delivery confirmations.
    feedback: mpsc::Sender<Event>,
    /// Images whose result is on its way to the device.
    delivering: HashSet<MessageId>,
    /// Verdicts whose device's source is not taking any now (its queue is
    /// full: a sensor unplugged), oldest first; tried again every tick, so
    /// that one absent device never stops the others.
    waiting: VecDeque<Waiting>,
    metrics: Metrics,
    connected: bool,
    /// The health version the last status showed.
    status_version: u64,
    publications: HashMap<MessageId, Publication>,
    /// Message ids in the order their publish requests were queued; `None`
    /// for the status message.
    awaiting_pkid: VecDeque<Option<MessageId>>,
    by_pkid: HashMap<u16, MessageId>,
}

impl<C: Requests> Core<C> {
    /// A core for `spool`, answering results to `routes` (device → source).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: CoreConfig,
        client: C,
        events: mpsc::Receiver<Event>,
        feedback: mpsc::Sender<Event>,
        spool: Arc<Mutex<Spool>>,
        routes: HashMap<Name, mpsc::Sender<Delivery>>,
        metrics: Metrics,
    ) -> Self {
        Self {
            config,
            client,
            events,
            spool,
            routes,
            feedback,
            delivering: HashSet::new(),
            waiting: VecDeque::new(),
            metrics,
            connected: false,
            status_version: 0,
            publications: HashMap::new(),
            awaiting_pkid: VecDeque::new(),
            by_pkid: HashMap::new(),
        }
    }

    /// Runs until the event channel closes or `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.config.heartbeat.beat();
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {
                    if self.connected && self.status_version != self.config.health.version() {
                        self.publish_status();
                    }
                    self.retry_waiting();
                    self.publish_due().await;
                }
                event = self.events.recv() => match event {
                    Some(event) => self.handle(event).await,
                    None => return,
                },
            }
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Spooled(spooled) => {
                // At once, through the same checks as a tick (packet limit,
                // bytes in flight); a tick may have published it already.
                self.publications.entry(spooled.id).or_default();
                self.publish_due().await;
            }
            Event::Connected {
                session_present,
                max_packet_bytes,
            } => {
                self.connected = true;
                self.metrics.connected.set(1);
                let limit = self.config.link.broker_says(max_packet_bytes);
                tracing::info!(
                    session_present,
                    max_packet_bytes = limit,
                    "connected to the broker"
                );
                // Packet ids of the old connection mean nothing now, and
                // what was not acknowledged is sent again (replay).
                self.awaiting_pkid.clear();
                self.by_pkid.clear();
                for publication in self.publications.values_mut() {
                    publication.in_flight = false;
                    if !publication.acked {
                        publication.published_at = None;
                    }
                }
                // At every connection: a kept session is no proof that the
                // broker still holds the subscription.
                let filter = topics::results_filter(&self.config.site, &self.config.gateway);
                if let Err(e) = self.client.try_subscribe(filter) {
                    tracing::error!(cause = %e, "cannot subscribe to results");
                }
                self.publish_status();
                self.publish_due().await;
            }
            Event::Disconnected => {
                if self.connected {
                    tracing::warn!("broker connection lost; images stay in the spool");
                }
                self.connected = false;
                self.metrics.connected.set(0);
            }
            Event::Sent(pkid) => {
                if let Some(Some(id)) = self.awaiting_pkid.pop_front() {
                    self.by_pkid.insert(pkid, id);
                }
            }
            Event::Acked { pkid, reason } => {
                let Some(id) = self.by_pkid.remove(&pkid) else {
                    return;
                };
                if let Some(p) = self.publications.get_mut(&id) {
                    p.in_flight = false;
                }
                if reason == PubAckReason::Success || reason == PubAckReason::NoMatchingSubscribers
                {
                    self.metrics.acknowledged.inc();
                    if let Some(p) = self.publications.get_mut(&id) {
                        p.acked = true;
                    }
                } else {
                    self.metrics.error("publish_refused");
                    tracing::error!(message = %id, ?reason, "the broker refused an image; check its ACL for this gateway; it stays in the spool");
                }
            }
            Event::Result { topic, payload } => self.result(&topic, &payload).await,
            Event::Delivered {
                id,
                delivered,
                quarantined,
            } => {
                self.delivering.remove(&id);
                if delivered {
                    self.publications.remove(&id);
                    self.refresh_gauges();
                }
                if quarantined && self.connected {
                    self.publish_status();
                }
            }
        }
    }

    /// Publishes the retained "online" status with the quarantine's count
    /// and latest images.
    fn publish_status(&mut self) {
        let quarantine = self
            .spool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .quarantine_summary(super::STATUS_RECENT_QUARANTINED);
        let status = topics::status(&self.config.site, &self.config.gateway);
        self.status_version = self.config.health.version();
        let payload = status_payload(
            &self.config.gateway,
            "online",
            Some(&quarantine),
            self.config.health.problems(),
        );
        if self.client.try_publish(status, true, payload).is_ok() {
            self.awaiting_pkid.push_back(None);
        }
    }

    /// Publishes what was never published, or whose result is overdue.
    async fn publish_due(&mut self) {
        if !self.connected {
            return;
        }
        let due: Vec<(MessageId, Name, u64)> = {
            let spool = self.spool.lock().unwrap_or_else(PoisonError::into_inner);
            spool
                .entries()
                .filter(|e| !self.delivering.contains(&e.id))
                .filter(|e| {
                    self.publications.get(&e.id).is_none_or(|p| {
                        p.published_at
                            .is_none_or(|at| at.elapsed() >= self.config.result_timeout)
                    })
                })
                .map(|e| (e.id, e.device.clone(), e.sealed_bytes()))
                .collect()
        };
        let mut inflight: u64 = self
            .publications
            .values()
            .filter(|p| p.in_flight)
            .map(|p| p.bytes)
            .sum();
        for (id, device, bytes) in due {
            let topic_len = topics::images(&self.config.site, &self.config.gateway, &device).len();
            let packet = bytes + publish_overhead(topic_len);
            let limit = self.config.link.get();
            if packet > u64::from(limit) {
                // Never sent: rumqttc would refuse it and drop the
                // connection, again at every reconnect.
                self.give_up(
                    id,
                    "too_large",
                    format!(
                        "the sealed image needs a {packet}-byte packet; the broker link carries at most {limit} (mqtt.max_packet_bytes, or the broker's maximum if lower)"
                    ),
                );
                continue;
            }
            if inflight > 0 && inflight + bytes > self.config.inflight_bytes {
                break;
            }
            let count = self.publications.get(&id).map_or(0, |p| p.count);
            if count >= self.config.max_publications {
                self.give_up(
                    id,
                    "unanswered",
                    format!("{count} publications without an answer"),
                );
                continue;
            }
            if !self.publish(id, &device).await {
                break;
            }
            inflight += bytes;
        }
    }

    /// Stops publishing a spooled image: its device learns it will not be
    /// classified, and the image moves to quarantine.
    fn give_up(&mut self, id: MessageId, cause: &str, reason: String) {
        let entry = {
            let spool = self.spool.lock().unwrap_or_else(PoisonError::into_inner);
            spool.get(&id).cloned()
        };
        let Some(entry) = entry else {
            return;
        };
        tracing::error!(message = %id, cause, %reason, "image will not be published");
        let verdict = Verdict::Rejected(Rejection {
            message_id: id.to_string(),
            cause: cause.into(),
            reason,
            receiver: None,
        });
        self.deliver(&entry, verdict);
    }

    /// Queues one publication; false when the client queue is full.
    async fn publish(&mut self, id: MessageId, device: &Name) -> bool {
        let spool = self.spool.clone();
        let read = tokio::task::spawn_blocking(move || {
            spool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .read(&id)
        })
        .await;
        let bytes = match read {
            Ok(Ok(Some(bytes))) => bytes,
            Ok(Ok(None)) => {
                self.publications.remove(&id);
                return true;
            }
            Ok(Err(e)) => {
                self.metrics.error("spool_read");
                tracing::error!(message = %id, cause = %e, "cannot read a spooled image");
                return true;
            }
            Err(e) => {
                tracing::error!(cause = %e, "spool read task failed");
                return true;
            }
        };
        let topic = topics::images(&self.config.site, &self.config.gateway, device);
        let size = bytes.len() as u64;
        match self.client.try_publish(topic, false, bytes) {
            Ok(()) => {
                self.awaiting_pkid.push_back(Some(id));
                let publication = self.publications.entry(id).or_default();
                if publication.count > 0 {
                    self.metrics.republished.inc();
                    tracing::info!(message = %id, times = publication.count + 1, "publishing again (no result yet)");
                }
                publication.count += 1;
                publication.bytes = size;
                publication.in_flight = true;
                publication.published_at = Some(Instant::now());
                publication.acked = false;
                self.metrics.published.inc();
                true
            }
            Err(_) => false,
        }
    }

    async fn result(&mut self, topic: &str, payload: &[u8]) {
        let answer: Answer = match serde_json::from_slice(payload) {
            Ok(answer) => answer,
            Err(e) => {
                self.refuse_answer("unreadable", topic, None, &e.to_string());
                return;
            }
        };
        let Ok(id) = answer.message_id().parse::<MessageId>() else {
            self.refuse_answer("unreadable", topic, None, "unreadable message id");
            return;
        };
        if self.delivering.contains(&id) {
            tracing::debug!(message = %id, "a result for this image is already on its way");
            return;
        }
        let entry = {
            let spool = self.spool.lock().unwrap_or_else(PoisonError::into_inner);
            spool.get(&id).cloned()
        };
        let Some(entry) = entry else {
            tracing::debug!(message = %id, "answer for an image no longer spooled (answered before, or never ours)");
            return;
        };
        if let Err((reason, detail)) = authenticate(&entry, &answer, topic) {
            self.refuse_answer(reason, topic, Some(id), detail);
            return;
        }
        let verdict = match answer {
            Answer::Result(result) => {
                self.metrics.results.inc();
                let latency_ms = now_ms().saturating_sub(result.captured_at_ms);
                self.metrics
                    .result_latency_seconds
                    .observe(latency_ms as f64 / 1000.0);
                tracing::info!(
                    message = %id,
                    device = %entry.device,
                    label = %result.label,
                    latency_ms,
                    "result received"
                );
                Verdict::Classified(Box::new(result))
            }
            Answer::NotClassified(answer) => {
                self.metrics
                    .not_classified
                    .get_or_create(&vec![("reason", answer.reason.clone())])
                    .inc();
                tracing::info!(
                    message = %id,
                    device = %entry.device,
                    reason = %answer.reason,
                    detail = %answer.detail,
                    "not classified"
                );
                Verdict::NotClassified(Box::new(answer))
            }
            Answer::Refusal(refusal) => {
                tracing::warn!(message = %id, device = %entry.device, reason = %refusal.reason, receiver = %refusal.receiver, "a receiver refused this image");
                Verdict::Rejected(Rejection {
                    message_id: id.to_string(),
                    cause: "refused".into(),
                    reason: refusal.reason,
                    receiver: Some(refusal.receiver),
                })
            }
        };
        self.deliver(&entry, verdict);
    }

    /// Hands a verdict to the source of the image's device; once the device
    /// has it, the spool lets go of the image (deleted after a result, moved
    /// to quarantine after a rejection). A crash in between means answering
    /// it again, never losing it.
    fn deliver(&mut self, entry: &Entry, verdict: Verdict) {
        let id = entry.id;
        let (done, delivered) = oneshot::channel();
        let note = match &verdict {
            Verdict::Classified(_) | Verdict::NotClassified(_) => None,
            Verdict::Rejected(rejection) => Some(QuarantineNote {
                message_id: rejection.message_id.clone(),
                device: entry.device.to_string(),
                sequence: entry.sequence,
                cause: rejection.cause.clone(),
                reason: rejection.reason.clone(),
                receiver: rejection.receiver.clone(),
                at_ms: now_ms(),
            }),
        };
        let waiting = Waiting {
            id,
            device: entry.device.clone(),
            delivery: Delivery { verdict, done },
            delivered,
            note,
        };
        self.delivering.insert(id);
        if let Some(waiting) = self.route(waiting) {
            tracing::warn!(device = %waiting.device, message = %id, "the device's source is not taking results now; this one waits (the image stays spooled)");
            self.waiting.push_back(waiting);
        }
    }

    /// Hands a verdict to its source without waiting; gives it back when
    /// the source's queue is full.
    fn route(&mut self, waiting: Waiting) -> Option<Waiting> {
        let Waiting {
            id,
            device,
            delivery,
            delivered,
            note,
        } = waiting;
        match self.routes.get(&device) {
            Some(route) => match route.try_send(delivery) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(delivery)) => {
                    return Some(Waiting {
                        id,
                        device,
                        delivery,
                        delivered,
                        note,
                    });
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::warn!(device = %device, "the source of this image is gone; it stays spooled");
                    self.delivering.remove(&id);
                    return None;
                }
            },
            None => {
                // No source for this device any more (config changed): the
                // log is all the device gets.
                let _ = delivery.done.send(());
            }
        }
        self.watch(id, delivered, note);
        None
    }

    /// Tries the waiting verdicts again, oldest first, each device's in
    /// order.
    fn retry_waiting(&mut self) {
        let mut blocked: HashSet<Name> = HashSet::new();
        for _ in 0..self.waiting.len() {
            let Some(waiting) = self.waiting.pop_front() else {
                break;
            };
            if blocked.contains(&waiting.device) {
                self.waiting.push_back(waiting);
                continue;
            }
            if let Some(waiting) = self.route(waiting) {
                blocked.insert(waiting.device.clone());
                self.waiting.push_back(waiting);
            }
        }
    }

    /// Once the device has the verdict, lets the spool go of the image and
    /// tells the core.
    fn watch(&self, id: MessageId, delivered: oneshot::Receiver<()>, note: Option<QuarantineNote>) {
        let spool = self.spool.clone();
        let feedback = self.feedback.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let delivered = delivered.await.is_ok();
            let mut quarantined = false;
            if delivered {
                let cause = note.as_ref().map(|n| n.cause.clone());
                let let_go = tokio::task::spawn_blocking(move || {
                    let mut spool = spool.lock().unwrap_or_else(PoisonError::into_inner);
                    match &note {
                        None => spool.remove(&id).map(|_| ()),
                        Some(note) => spool.quarantine_entry(&id, note).map(|_| ()),
                    }
                })
                .await;
                match (let_go, cause) {
                    (Ok(Ok(())), Some(cause)) => {
                        quarantined = true;
                        metrics
                            .quarantined
                            .get_or_create(&vec![("cause", cause.clone())])
                            .inc();
                        tracing::error!(message = %id, cause, "image quarantined: it will not be published again (see the spool's quarantine/ folder)");
                    }
                    (Ok(Ok(())), None) => {}
                    _ => {
                        metrics.error("spool_remove");
                        tracing::error!(message = %id, "cannot let go of an answered image; it will be answered again");
                    }
                }
            }
            let _ = feedback
                .send(Event::Delivered {
                    id,
                    delivered,
                    quarantined,
                })
                .await;
        });
    }

    /// Counts and logs an answer that reaches no device.
    fn refuse_answer(
        &self,
        reason: &'static str,
        topic: &str,
        id: Option<MessageId>,
        detail: &str,
    ) {
        self.metrics
            .answers_refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
        tracing::warn!(
            topic,
            message = id.map(|id| id.to_string()),
            reason,
            detail,
            "answer refused: it reaches no device"
        );
    }

    fn refresh_gauges(&self) {
        self.metrics
            .spool(&self.spool.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Checks that an answer is about this spooled image, came on its device's
/// topic, and carries a MAC that only a party that opened the image could
/// compute; the reason names what failed.
fn authenticate(
    entry: &Entry,
    answer: &Answer,
    topic: &str,
) -> Result<(), (&'static str, &'static str)> {
    if topic != topics::results(&entry.site, &entry.gateway, &entry.device) {
        return Err(("wrong_topic", "answer on another device's results topic"));
    }
    let Some(fields) = answer.answer_fields() else {
        return Err(("unreadable", "unreadable ids in the answer"));
    };
    if (fields.site, fields.gateway, fields.device, fields.sequence)
        != (
            entry.site.as_str(),
            entry.gateway.as_str(),
            entry.device.as_str(),
            entry.sequence,
        )
    {
        return Err((
            "mismatch",
            "site, gateway, device or sequence differ from the spooled image",
        ));
    }
    if let Outcome::Classified { sha512, .. } | Outcome::NotClassified { sha512, .. } =
        &fields.outcome
        && sha512 != &entry.sha512
    {
        return Err((
            "mismatch",
            "the result names another image (SHA-512 differs)",
        ));
    }
    let Ok(mac) = hex::decode(answer.mac()) else {
        return Err(("bad_mac", "the MAC is not hex"));
    };
    if !entry.answer_key.verify(&fields, &mac) {
        return Err((
            "bad_mac",
            "the MAC does not verify: not from a receiver that opened this image",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
