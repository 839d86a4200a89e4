//! `medgate-gateway run`: wires the spool, intake, publisher and sources
//! together, tells systemd when it is ready (and keeps its watchdog fed),
//! and shuts down cleanly: sources stop first, intake finishes what it
//! holds, the publisher says "offline", then the connection closes. Every
//! accepted image is in the spool by then and is published on the next start.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use medgate_daemon::metrics as endpoint;
use medgate_daemon::mqtt;
use medgate_shared::seal::Sealer;
use medgate_shared::topics;
use prometheus_client::registry::Registry;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::LastWill;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::intake;
use crate::messages::{Health, Heartbeat, LinkLimit};
use crate::metrics::Metrics;
use crate::publisher::core::TICK;
use crate::publisher::core::{Core, CoreConfig};
use crate::publisher::{self, link};
use crate::sequence::{SequenceError, Sequences};
use crate::sources::Source;
use crate::sources::dicom::{DicomSource, DicomStartError};
use crate::sources::hot_folder::HotFolderSource;
use crate::sources::spi::SpiSensorSource;
use crate::spool::{Spool, SpoolError};

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The sequence store could not be opened.
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    /// The metrics endpoint could not listen.
    #[error(transparent)]
    Metrics(#[from] endpoint::EndpointError),
    /// The DICOM node could not start.
    #[error(transparent)]
    Dicom(#[from] DicomStartError),
}

/// What a started gateway reports (tests use it).
#[derive(Debug, Clone)]
pub struct Started {
    /// Where metrics listen.
    pub metrics: Option<std::net::SocketAddr>,
    /// Images recovered from the spool at start.
    pub recovered: usize,
    /// Where the DICOM node listens, if configured.
    pub dicom: Option<std::net::SocketAddr>,
}

/// Runs the gateway until `shutdown` completes.
///
/// # Errors
/// [`ServiceError`] when the spool, state or metrics endpoint cannot start;
/// broker trouble is retried, never returned.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
) -> Result<(), ServiceError> {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);

    let (spool, recovery) = Spool::open(&settings.spool_dir, settings.spool_bytes)?;
    if recovery.entries + recovery.discarded_partial + recovery.quarantined > 0 {
        tracing::info!(
            recovered = recovery.entries,
            discarded_partial = recovery.discarded_partial,
            quarantined = recovery.quarantined,
            "spool recovered; every image in it will be published again"
        );
    }
    metrics.spool(&spool);
    let spool = Arc::new(Mutex::new(spool));
    let sequences = Sequences::open(&settings.state_dir)?;

    for warning in &settings.warnings {
        tracing::warn!(file = %settings.file.display(), "{warning}");
    }
    let stop = CancellationToken::new();
    let metrics_address = endpoint::start(settings.metrics, registry, stop.clone()).await?;

    let mut options = settings.mqtt.options(settings.name.as_str(), &settings.tls);
    let status_topic = topics::status(&settings.site, &settings.name);
    options.set_last_will(LastWill::new(
        status_topic.clone(),
        publisher::status_payload(&settings.name, "offline", None, BTreeMap::new()),
        QoS::AtLeastOnce,
        true,
        None,
    ));
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (events_tx, events_rx) = mpsc::channel(256);

    let mut routes = HashMap::new();
    let mut sources: Vec<(Box<dyn Source>, mpsc::Receiver<_>)> = Vec::new();
    let preparation = settings.preparation;
    let link_limit = LinkLimit::new(settings.mqtt.max_packet_bytes);
    let health = Health::default();
    for sensor in &settings.spi_sensors {
        let source: Box<dyn Source> = Box::new(SpiSensorSource::new(
            sensor.clone(),
            link_limit.clone(),
            health.clone(),
            metrics.clone(),
        ));
        let (tx, rx) = mpsc::channel(64);
        routes.insert(source.device().clone(), tx);
        sources.push((source, rx));
    }
    for folder in &settings.hot_folders {
        let source: Box<dyn Source> = Box::new(HotFolderSource::new(
            folder.clone(),
            preparation,
            link_limit.clone(),
            health.clone(),
            metrics.clone(),
        ));
        let (tx, rx) = mpsc::channel(64);
        routes.insert(source.device().clone(), tx);
        sources.push((source, rx));
    }

    let mut dicom_address = None;
    if let Some(node) = &settings.dicom {
        let source = DicomSource::bind(
            node.clone(),
            settings.name.clone(),
            preparation,
            link_limit.clone(),
            health.clone(),
            metrics.clone(),
        )
        .await?;
        dicom_address = source.local_addr();
        let source: Box<dyn Source> = Box::new(source);
        let (tx, rx) = mpsc::channel(64);
        routes.insert(source.device().clone(), tx);
        sources.push((source, rx));
    }

    let heartbeat = Heartbeat::new();
    let link_stop = CancellationToken::new();
    let link = tokio::spawn(link::link(
        eventloop,
        events_tx.clone(),
        link_stop.clone(),
        metrics.clone(),
    ));
    let core_stop = CancellationToken::new();
    let core = tokio::spawn(
        Core::new(
            CoreConfig {
                site: settings.site.clone(),
                gateway: settings.name.clone(),
                result_timeout: settings.result_timeout,
                max_publications: settings.max_publications,
                link: link_limit.clone(),
                inflight_bytes: publisher::core::INFLIGHT_BYTES,
                heartbeat: heartbeat.clone(),
                health: health.clone(),
            },
            client.clone(),
            events_rx,
            events_tx.clone(),
            spool.clone(),
            routes,
            metrics.clone(),
        )
        .run(core_stop.clone()),
    );
    let (intake, intake_actor) = intake::intake(
        16,
        settings.site.clone(),
        settings.name.clone(),
        Sealer::new(
            settings.receiver_key.clone(),
            settings.identity.clone(),
            settings.rotation,
        ),
        sequences,
        spool.clone(),
        events_tx,
        link_limit.clone(),
        metrics.clone(),
    );
    let intake_task = tokio::spawn(intake_actor.run());
    let sources_stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    for (source, results) in sources {
        tracker.spawn(source.run(intake.clone(), results, sources_stop.clone()));
    }
    drop(intake);
    tracker.close();

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = tokio::spawn(feed_watchdog(heartbeat, stop.clone()));
    if let Some(started) = started {
        let _ = started.send(Started {
            metrics: metrics_address,
            recovered: recovery.entries,
            dicom: dicom_address,
        });
    }
    tracing::info!(
        site = %settings.site,
        gateway = %settings.name,
        broker = %settings.mqtt.host,
        port = settings.mqtt.port,
        hot_folders = settings.hot_folders.len(),
        spi_sensors = settings.spi_sensors.len(),
        dicom = settings.dicom.is_some(),
        "gateway running"
    );

    shutdown.await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping: sources first, then intake, then the broker connection");
    sources_stop.cancel();
    tracker.wait().await;
    // Every intake handle is gone now: the actor finishes and ends.
    let _ = intake_task.await;
    core_stop.cancel();
    let _ = core.await;
    let _ = client
        .publish(
            status_topic,
            QoS::AtLeastOnce,
            true,
            publisher::status_payload(&settings.name, "offline", None, BTreeMap::new()),
        )
        .await;
    if !mqtt::disconnect(&client, link).await {
        link_stop.cancel();
    }
    stop.cancel();
    let _ = watchdog.await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Whether a core whose heartbeat is `age` old counts as turning, for a
/// watchdog `interval`: younger than the interval, or than 5 of its ticks
/// when the interval is shorter.
fn core_alive(age: std::time::Duration, interval: std::time::Duration) -> bool {
    age <= interval.max(TICK * 5)
}

/// Sends WATCHDOG=1 at half the interval systemd asked for while the
/// publisher's core turns (its heartbeat is younger than the interval, or
/// than a few of its ticks): a wedged runtime or a frozen core stops the
/// pings and systemd restarts the service.
async fn feed_watchdog(heartbeat: Heartbeat, stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(interval / 2);
    let mut silent = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                let age = heartbeat.age();
                if core_alive(age, interval) {
                    silent = false;
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                } else if !silent {
                    silent = true;
                    tracing::error!(stalled_ms = age.as_millis() as u64, "the publisher core has stopped turning; no longer feeding the systemd watchdog");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_watchdog_is_fed_only_while_the_core_turns() {
        let interval = Duration::from_secs(30);
        assert!(core_alive(TICK, interval));
        assert!(core_alive(Duration::from_secs(29), interval));
        assert!(
            !core_alive(Duration::from_secs(31), interval),
            "a frozen core"
        );
        // A short interval still allows a few ticks.
        assert!(core_alive(TICK * 4, Duration::from_millis(200)));
        assert!(!core_alive(TICK * 6, Duration::from_millis(200)));
        // The heartbeat ages while nothing beats it.
        let heartbeat = Heartbeat::new();
        heartbeat.beat();
        assert!(heartbeat.age() < Duration::from_secs(1));
    }
}
