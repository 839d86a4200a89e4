//! `medgate-receiver run`: the MQTT service that ties the building blocks
//! together.
//!
//! One task owns the rumqttc event loop and only polls it: it subscribes at
//! every connection (a session the broker kept is no proof that it still
//! holds the subscription: a graceful stop unsubscribes, and an operator or
//! a broker may drop one), hands each image to a handler
//! task (the broker's receive maximum bounds how many there are), and
//! reconnects with backoff by polling again after an error. Inference runs
//! on the batcher's own thread. Shutdown stops intake, unsubscribes, lets
//! in-flight images finish within the grace period, then disconnects;
//! images not started stay unacknowledged in the broker session.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medgate_daemon::metrics as endpoint;
use medgate_daemon::mqtt::{self, Backoff};
use medgate_daemon::trust::{Refresh, TrustFile};
use medgate_shared::seal::Opener;
use medgate_shared::topics;
use prometheus_client::registry::Registry;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::acks::Acks;
use super::batcher::{self, BatchLimits};
use super::config::Settings;
use super::dedupe::Dedupe;
use super::handler::{self, AuditLimiter, Context, Memory, Served};
use super::journal;
use super::metrics::Metrics;
use super::replay::ReplayGuard;
use crate::model::backend::{self, BackendError};
use crate::model::infer::infer;
use crate::model::{LoadedModel, ModelError};

/// Requests queued towards the event loop.
const CLIENT_QUEUE: usize = 256;

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The inference backend could not start.
    #[error("inference backend: {0}")]
    Backend(#[from] BackendError),
    /// The model could not be loaded.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// The metrics endpoint could not listen.
    #[error(transparent)]
    Metrics(#[from] endpoint::EndpointError),
    /// The inference thread could not start or stopped.
    #[error("inference thread: {0}")]
    Inference(String),
    /// The answer journal could not be opened.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
}

/// A running service's addresses, for logs and tests.
#[derive(Debug, Clone)]
pub struct Started {
    /// Where the metrics endpoint listens, when enabled.
    pub metrics: Option<std::net::SocketAddr>,
    /// The backend in use.
    pub backend: String,
    /// Becomes `true` once the broker holds the shared subscription (after
    /// its SUBACK), `false` again while a connection is being re-made.
    pub subscribed: tokio::sync::watch::Receiver<bool>,
}

/// Runs the receiver until `shutdown` completes, then drains and returns.
/// `started` (if given) learns the metrics address once listening.
///
/// # Errors
/// [`ServiceError`] when the backend, model, metrics endpoint or inference
/// thread fail; connection trouble is retried, not returned.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
) -> Result<(), ServiceError> {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);

    let choice = settings.backend;
    let model_dirs = settings.model_dirs.clone();
    let (selected, loaded) = tokio::task::spawn_blocking(move || {
        let selected = backend::select(choice)?;
        let loaded = if model_dirs.is_empty() {
            vec![LoadedModel::shipped(&selected.device)?]
        } else {
            model_dirs
                .iter()
                .map(|dir| LoadedModel::from_dir(dir, &selected.device))
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok::<_, ServiceError>((selected, loaded))
    })
    .await
    .map_err(|e| ServiceError::Inference(e.to_string()))??;
    let mut models = Vec::with_capacity(loaded.len());
    let mut inference_threads = Vec::with_capacity(loaded.len());
    for model in loaded {
        tracing::info!(backend = %selected, model = %model.card.version, modalities = ?model.card.accepts.modalities, "model loaded");
        if model.gate.is_none() {
            tracing::warn!(model = %model.card.version, "this model folder has no out-of-distribution gate (ood.json): every image it takes is classified; fit one with `medgate-receiver calibrate`");
        }
        let card = model.card.clone();
        let gate = model.gate.clone();
        let (batcher, thread) =
            spawn_inference(settings.batch, model, selected.device.clone(), &metrics)?;
        models.push(Served {
            card,
            gate,
            batcher,
        });
        inference_threads.push(thread);
    }

    let stop = CancellationToken::new();
    let metrics_address = endpoint::start(settings.metrics, registry, stop.clone()).await?;

    let mut options = settings.mqtt.options(settings.name.as_str(), &settings.tls);
    options.set_manual_acks(true);
    let (client, eventloop) = AsyncClient::new(options, CLIENT_QUEUE);
    let limits = settings.limits.clone();
    let mut memory = Memory {
        dedupe: Dedupe::new(limits.remember_results),
        replay: ReplayGuard::new(limits.replay_window, limits.replay_devices)
            .per_gateway(limits.replay_devices_per_gateway),
    };
    let (journal, journal_writer) = match &settings.state_dir {
        Some(dir) => {
            let dir = dir.clone();
            let keep = limits.remember_results;
            let (journal, restored, writer) =
                tokio::task::spawn_blocking(move || journal::open(&dir, keep))
                    .await
                    .map_err(|e| ServiceError::Inference(e.to_string()))??;
            let count = restored.answers.len();
            for answer in restored.answers {
                let Ok(id) = answer.answer.message_id().parse() else {
                    continue;
                };
                let _ = memory.replay.check(&answer.device, answer.sequence);
                memory.dedupe.finish(id, Arc::new(answer.answer));
            }
            if count + restored.skipped > 0 {
                tracing::info!(
                    answers = count,
                    skipped = restored.skipped,
                    "answers remembered from the journal"
                );
            }
            (Some(journal), Some(writer))
        }
        None => (None, None),
    };
    let ctx = Arc::new(Context {
        name: settings.name.clone(),
        audit_site: settings.audit_site.clone(),
        client: client.clone(),
        acks: Acks::spawn(client.clone()),
        opener: Opener::new(settings.private_key, limits.session_keys),
        trust: settings.trust.clone(),
        memory: Mutex::new(memory),
        journal,
        audits: AuditLimiter::default(),
        models,
        rules: settings.rules.clone(),
        metrics: metrics.clone(),
        fatal: CancellationToken::new(),
    });
    let filter = topics::images_shared_subscription(&settings.group);
    let intake = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (subscribed, subscribed_watch) = tokio::sync::watch::channel(false);
    let driver = tokio::spawn(drive(
        eventloop,
        ctx.clone(),
        Subscription {
            filter: filter.clone(),
            subscribed,
        },
        intake.clone(),
        tracker.clone(),
        stop.clone(),
        usize::from(settings.mqtt.receive_maximum) * 2,
    ));
    if let Some(started) = started {
        let _ = started.send(Started {
            metrics: metrics_address,
            backend: selected.to_string(),
            subscribed: subscribed_watch,
        });
    }
    tokio::spawn(watch_trust(settings.trust.clone(), stop.clone()));
    tracing::info!(broker = %settings.mqtt.host, port = settings.mqtt.port, subscription = %filter, trusted_gateways = settings.trust.current().len(), "receiver running");

    let fatal = ctx.fatal.clone();
    let failed = tokio::select! {
        () = shutdown => false,
        () = fatal.cancelled() => true,
    };

    tracing::info!("stopping: no new images; finishing those in flight");
    intake.cancel();
    let _ = client.try_unsubscribe(filter);
    tracker.close();
    let grace = Duration::from_secs(settings.limits.shutdown_grace_secs);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            left = tracker.len(),
            "grace period over; unfinished images stay unacknowledged with the broker"
        );
    }
    mqtt::disconnect(&client, driver).await;
    stop.cancel();
    drop(ctx);
    // The journal writer ends once the context is gone, every answer flushed.
    if let Some(writer) = journal_writer {
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
    let joined = tokio::task::spawn_blocking(move || {
        // Every thread is joined, even after one that failed.
        let joined: Vec<bool> = inference_threads
            .into_iter()
            .map(|thread| thread.join().is_ok())
            .collect();
        joined.into_iter().all(|ok| ok)
    })
    .await;
    if failed || !matches!(joined, Ok(true)) {
        return Err(ServiceError::Inference(
            "the inference thread stopped".into(),
        ));
    }
    tracing::info!("receiver stopped");
    Ok(())
}

/// Rereads the trust list when its file changes (checked every two
/// seconds; a stat is all an unchanged file costs).
async fn watch_trust(trust: Arc<TrustFile>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let file = trust.clone();
        let Ok(outcome) = tokio::task::spawn_blocking(move || file.refresh()).await else {
            continue;
        };
        match outcome {
            Refresh::Unchanged => {}
            Refresh::Reloaded(keys) => {
                tracing::info!(file = %trust.path().display(), keys, "trust list reloaded");
            }
            Refresh::Kept(cause) => {
                tracing::error!(cause = %cause, "trust list changed but is not valid; the previous list stays in force");
            }
        }
    }
}

fn spawn_inference(
    limits: BatchLimits,
    model: LoadedModel,
    device: burn::tensor::Device,
    metrics: &Metrics,
) -> Result<(batcher::Batcher, std::thread::JoinHandle<()>), ServiceError> {
    let side = model.card.input_size[0];
    let norm = model.card.normalisation;
    let batch_size = metrics.batch_size.clone();
    let inference_seconds = metrics.inference_seconds.clone();
    batcher::spawn(limits, move |inputs: &[u8], count: usize| {
        let started = std::time::Instant::now();
        let outputs = infer(&model.network, inputs, side, norm, &device, count);
        inference_seconds.observe(started.elapsed().as_secs_f64());
        batch_size.observe(count as f64);
        // Per image: the margin, then the features (see `handler::decide`).
        outputs
            .into_iter()
            .map(|o| std::iter::once(o.margin).chain(o.features).collect())
            .collect()
    })
    .map_err(|e| ServiceError::Inference(e.to_string()))
}

/// The shared subscription, and who learns that the broker holds it.
struct Subscription {
    filter: String,
    subscribed: tokio::sync::watch::Sender<bool>,
}

/// Owns and polls the event loop until the disconnect goes out or `stop`.
async fn drive(
    mut eventloop: EventLoop,
    ctx: Arc<Context>,
    Subscription { filter, subscribed }: Subscription,
    intake: CancellationToken,
    tracker: TaskTracker,
    stop: CancellationToken,
    most_in_flight: usize,
) {
    let mut backoff = Backoff::new();
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            () = stop.cancelled() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                ctx.metrics.connections.inc();
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                subscribed.send_replace(false);
                if !intake.is_cancelled() {
                    // Through a task: the request queue is drained by this
                    // very loop, so waiting on it here could deadlock.
                    let client = ctx.client.clone();
                    let filter = filter.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce).await {
                            tracing::error!(cause = %e, "cannot subscribe");
                        }
                    });
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if intake.is_cancelled() {
                    // Left unacknowledged: the broker keeps it.
                    continue;
                }
                if tracker.len() >= most_in_flight {
                    ctx.metrics.overloaded.inc();
                    tracing::warn!(
                        "more unacknowledged images than receive_maximum allows; leaving this one with the broker"
                    );
                    continue;
                }
                let ticket = ctx.acks.ticket();
                tracker.spawn(handler::handle(ctx.clone(), publish, ticket));
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                if granted {
                    tracing::info!(codes = ?ack.return_codes, "subscribed");
                    subscribed.send_replace(true);
                } else {
                    tracing::error!(codes = ?ack.return_codes, "the broker refused the subscription");
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                tracing::warn!(reason = ?d.reason_code, "the broker closed the session");
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                ctx.metrics.connection_errors.inc();
                tracing::warn!(cause = %e, retry_in_ms = backoff.delay().as_millis() as u64, "broker connection failed");
                if !backoff.wait(&stop).await {
                    return;
                }
            }
        }
    }
}
