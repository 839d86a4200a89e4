//! The publisher: everything between the spool and the broker.
//!
//! Two tasks. The *link* owns the rumqttc event loop and only polls it,
//! forwarding what matters (connection up or down, publications sent and
//! acknowledged, results) to the *core*. The core owns the publication
//! state: it publishes each spooled image (QoS 1), marks it acknowledged on
//! PUBACK, publishes it again with the same message id when no result came
//! within the timeout or the connection was re-established, and deletes it
//! from the spool only when the source that captured the image confirms
//! its device has the result.
//!
//! The core never waits on the client's request queue (it uses
//! `try_publish`; what does not fit is published on a later tick), so the
//! link can always hand it events: no cycle can block both.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use medgate_shared::ids::{MessageId, Name};
use medgate_shared::messages::ResultMessage;
use medgate_shared::topics;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event as MqttEvent, EventLoop};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::capture::now_ms;
use crate::intake::Spooled;
use crate::metrics::Metrics;
use crate::sources::Delivery;
use crate::spool::Spool;

/// How often the core looks for images to (re)publish.
const TICK: Duration = Duration::from_millis(200);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the core hears about.
pub enum Event {
    /// Intake spooled a new image.
    Spooled(Spooled),
    /// The broker accepted the connection.
    Connected {
        /// Whether it kept our session (subscriptions).
        session_present: bool,
    },
    /// The connection dropped.
    Disconnected,
    /// A publication went out with this packet id.
    Sent(u16),
    /// The broker acknowledged (or refused) a publication.
    Acked {
        /// Packet id.
        pkid: u16,
        /// The broker's verdict.
        reason: PubAckReason,
    },
    /// A result reached its device (`true`) or could not be delivered.
    Delivered {
        /// The image.
        id: MessageId,
        /// Whether the device has it (and the spool let go of the image).
        delivered: bool,
    },
    /// A message on our results topics.
    Result {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Vec<u8>,
    },
}

/// The gateway's retained status message.
#[derive(Debug, Serialize)]
struct Status<'a> {
    state: &'a str,
    gateway: &'a str,
    version: &'a str,
    at_ms: u64,
}

/// The retained status payload for `state` ("online" / "offline").
pub fn status_payload(gateway: &Name, state: &str) -> Vec<u8> {
    serde_json::to_vec(&Status {
        state,
        gateway: gateway.as_str(),
        version: crate::VERSION,
        at_ms: now_ms(),
    })
    .unwrap_or_default()
}

/// Polls the event loop until `stop`, forwarding events to the core.
pub async fn link(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
    metrics: Metrics,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let polled = tokio::select! {
            polled = eventloop.poll() => polled,
            () = stop.cancelled() => return,
        };
        let event = match polled {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                Event::Connected {
                    session_present: ack.session_present,
                }
            }
            Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => Event::Acked {
                pkid: ack.pkid,
                reason: ack.reason,
            },
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => Event::Result {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload.to_vec(),
            },
            Ok(MqttEvent::Incoming(Packet::Disconnect(d))) => {
                tracing::warn!(reason = ?d.reason_code, "the broker closed the connection");
                Event::Disconnected
            }
            Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => Event::Sent(pkid),
            Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(e) => {
                metrics.error("connection");
                tracing::warn!(cause = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection failed");
                let _ = events.send(Event::Disconnected).await;
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

#[derive(Debug, Default)]
struct Publication {
    published_at: Option<Instant>,
    acked: bool,
    count: u32,
}

/// The core's fixed inputs.
pub struct CoreConfig {
    /// Site.
    pub site: Name,
    /// This gateway.
    pub gateway: Name,
    /// Re-publication timeout.
    pub result_timeout: Duration,
    /// Max packet size, for error messages.
    pub max_packet_bytes: u32,
}

/// The core actor.
pub struct Core {
    config: CoreConfig,
    client: AsyncClient,
    events: mpsc::Receiver<Event>,
    spool: Arc<Mutex<Spool>>,
    routes: HashMap<Name, mpsc::Sender<Delivery>>,
    /// The core's own event channel, for delivery confirmations.
    feedback: mpsc::Sender<Event>,
    /// Images whose result is on its way to the device.
    delivering: HashSet<MessageId>,
    metrics: Metrics,
    connected: bool,
    publications: HashMap<MessageId, Publication>,
    /// Message ids in the order their publish requests were queued; `None`
    /// for the status message.
    awaiting_pkid: VecDeque<Option<MessageId>>,
    by_pkid: HashMap<u16, MessageId>,
}

impl Core {
    /// A core for `spool`, answering results to `routes` (device → source).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: CoreConfig,
        client: AsyncClient,
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
            metrics,
            connected: false,
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
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.publish_due().await,
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
                // A tick may have published it already (it was in the spool
                // before this event arrived).
                let fresh = self
                    .publications
                    .entry(spooled.id)
                    .or_default()
                    .published_at
                    .is_none();
                if self.connected && fresh {
                    self.publish(spooled.id, &spooled.device).await;
                }
            }
            Event::Connected { session_present } => {
                self.connected = true;
                self.metrics.connected.set(1);
                tracing::info!(session_present, "connected to the broker");
                // Packet ids of the old connection mean nothing now, and
                // what was not acknowledged is sent again (replay).
                self.awaiting_pkid.clear();
                self.by_pkid.clear();
                for publication in self.publications.values_mut() {
                    if !publication.acked {
                        publication.published_at = None;
                    }
                }
                if !session_present {
                    let filter = topics::results_filter(&self.config.site, &self.config.gateway);
                    if let Err(e) = self.client.try_subscribe(filter, QoS::AtLeastOnce) {
                        tracing::error!(cause = %e, "cannot subscribe to results");
                    }
                }
                let status = topics::status(&self.config.site, &self.config.gateway);
                let payload = status_payload(&self.config.gateway, "online");
                if self
                    .client
                    .try_publish(status, QoS::AtLeastOnce, true, payload)
                    .is_ok()
                {
                    self.awaiting_pkid.push_back(None);
                }
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
            Event::Delivered { id, delivered } => {
                self.delivering.remove(&id);
                if delivered {
                    self.publications.remove(&id);
                    self.refresh_gauges();
                }
            }
        }
    }

    /// Publishes what was never published, or whose result is overdue.
    async fn publish_due(&mut self) {
        if !self.connected {
            return;
        }
        let due: Vec<(MessageId, Name)> = {
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
                .map(|e| (e.id, e.device.clone()))
                .collect()
        };
        for (id, device) in due {
            if !self.publish(id, &device).await {
                break;
            }
        }
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
        if bytes.len() as u64 + 256 > u64::from(self.config.max_packet_bytes) {
            self.metrics.error("too_large");
            tracing::error!(message = %id, bytes = bytes.len(), limit = self.config.max_packet_bytes, "sealed image larger than mqtt.max_packet_bytes; raise it (and the broker's max_packet_size) or resize images");
        }
        let topic = topics::images(&self.config.site, &self.config.gateway, device);
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, bytes)
        {
            Ok(()) => {
                self.awaiting_pkid.push_back(Some(id));
                let publication = self.publications.entry(id).or_default();
                if publication.count > 0 {
                    self.metrics.republished.inc();
                    tracing::info!(message = %id, times = publication.count + 1, "publishing again (no result yet)");
                }
                publication.count += 1;
                publication.published_at = Some(Instant::now());
                publication.acked = false;
                self.metrics.published.inc();
                true
            }
            Err(_) => false,
        }
    }

    async fn result(&mut self, topic: &str, payload: &[u8]) {
        let result: ResultMessage = match serde_json::from_slice(payload) {
            Ok(result) => result,
            Err(e) => {
                self.metrics.error("bad_result");
                tracing::warn!(topic, cause = %e, "not a result message");
                return;
            }
        };
        let Ok(id) = result.message_id.parse::<MessageId>() else {
            self.metrics.error("bad_result");
            tracing::warn!(topic, "result with an unreadable message id");
            return;
        };
        if self.delivering.contains(&id) {
            tracing::debug!(message = %id, "a result for this image is already on its way");
            return;
        }
        let device = {
            let spool = self.spool.lock().unwrap_or_else(PoisonError::into_inner);
            spool
                .entries()
                .find(|e| e.id == id)
                .map(|e| e.device.clone())
        };
        let Some(device) = device else {
            tracing::debug!(message = %id, "result for an image no longer spooled (answered before)");
            return;
        };
        self.metrics.results.inc();
        let latency_ms = now_ms().saturating_sub(result.captured_at_ms);
        self.metrics
            .result_latency_seconds
            .observe(latency_ms as f64 / 1000.0);
        tracing::info!(
            message = %id,
            device = %device,
            label = %result.label,
            latency_ms,
            "result received"
        );
        let (done, delivered) = oneshot::channel();
        let routed = match self.routes.get(&device) {
            Some(route) => route.send(Delivery { result, done }).await.is_ok(),
            None => {
                // No source for this device any more (config changed): the
                // log is all the device gets.
                let _ = done.send(());
                true
            }
        };
        if !routed {
            tracing::warn!(device = %device, "the source of this image is gone; it stays spooled");
            return;
        }
        // The spool lets go of the image only once the device has its
        // result: a crash in between means publishing it again, not
        // losing the result.
        self.delivering.insert(id);
        let spool = self.spool.clone();
        let feedback = self.feedback.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let delivered = delivered.await.is_ok();
            if delivered {
                let removed = tokio::task::spawn_blocking(move || {
                    spool
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id)
                })
                .await;
                if !matches!(removed, Ok(Ok(_))) {
                    metrics.error("spool_remove");
                    tracing::error!(message = %id, "cannot delete an answered image; it will be answered again");
                }
            }
            let _ = feedback.send(Event::Delivered { id, delivered }).await;
        });
    }

    fn refresh_gauges(&self) {
        self.metrics
            .spool(&self.spool.lock().unwrap_or_else(PoisonError::into_inner));
    }
}
