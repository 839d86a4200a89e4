//! Intake: turns captures into spooled, sealed images, one at a time, and
//! tells the source whether its image is safe (so that a hot-folder file is
//! moved away only then) or refused (spool full: the source keeps it).

use std::sync::{Arc, Mutex, PoisonError};

use medgate_shared::header::ImageMeta;
use medgate_shared::ids::{MessageId, Name};
use medgate_shared::seal::Sealer;
use tokio::sync::{mpsc, oneshot};

use crate::capture::{Capture, pixel_budget};
use crate::messages::{Event, LinkLimit, Spooled};
use crate::metrics::Metrics;
use crate::sequence::Sequences;
use crate::spool::{Spool, SpoolError};

/// Why a capture was not accepted. The source keeps the image.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The spool is full.
    #[error(transparent)]
    Full(SpoolError),
    /// The disk under the spool or the state folder is full (ENOSPC): the
    /// source keeps the image and tries again; it recovers by itself once
    /// there is room.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// Sealed, it could not be published (too large for the broker link):
    /// the source refuses the image for good.
    #[error("{0}")]
    TooLarge(String),
    /// Sealing, the disk or the sequence store failed.
    #[error("{0}")]
    Failed(String),
    /// The gateway is shutting down.
    #[error("the gateway is stopping")]
    Stopping,
}

struct Submission {
    capture: Capture,
    reply: oneshot::Sender<Result<MessageId, Refusal>>,
}

/// The sources' handle to intake.
#[derive(Clone)]
pub struct Intake {
    tx: mpsc::Sender<Submission>,
}

impl Intake {
    /// Submits a capture and waits until it is durably spooled or refused.
    ///
    /// # Errors
    /// [`Refusal`]; the caller keeps its image.
    pub async fn submit(&self, capture: Capture) -> Result<MessageId, Refusal> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Submission { capture, reply })
            .await
            .map_err(|_| Refusal::Stopping)?;
        answer.await.map_err(|_| Refusal::Stopping)?
    }
}

/// What the intake actor owns.
pub struct IntakeActor {
    rx: mpsc::Receiver<Submission>,
    site: Name,
    gateway: Name,
    sealer: Option<Sealer>,
    sequences: Option<Sequences>,
    spool: Arc<Mutex<Spool>>,
    events: mpsc::Sender<Event>,
    link: LinkLimit,
    metrics: Metrics,
    /// Whether the last capture met a full disk (logged on change).
    disk_full: bool,
}

/// Creates the intake actor and its handle; the channel holds `queue`
/// submissions before sources wait.
#[allow(clippy::too_many_arguments)]
pub fn intake(
    queue: usize,
    site: Name,
    gateway: Name,
    sealer: Sealer,
    sequences: Sequences,
    spool: Arc<Mutex<Spool>>,
    events: mpsc::Sender<Event>,
    link: LinkLimit,
    metrics: Metrics,
) -> (Intake, IntakeActor) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let actor = IntakeActor {
        rx,
        site,
        gateway,
        sealer: Some(sealer),
        sequences: Some(sequences),
        spool,
        events,
        link,
        metrics,
        disk_full: false,
    };
    (Intake { tx }, actor)
}

impl IntakeActor {
    /// Runs until every handle is dropped.
    pub async fn run(mut self) {
        while let Some(Submission { capture, reply }) = self.rx.recv().await {
            self.metrics.captured.inc();
            let outcome = self.accept(capture).await;
            let _ = reply.send(outcome);
        }
    }

    async fn accept(&mut self, capture: Capture) -> Result<MessageId, Refusal> {
        let (Some(mut sealer), Some(mut sequences)) = (self.sealer.take(), self.sequences.take())
        else {
            return Err(Refusal::Failed("intake lost its sealer".into()));
        };
        let spool = self.spool.clone();
        let (site, gateway) = (self.site.clone(), self.gateway.clone());
        let budget = pixel_budget(self.link.get());
        // Sealing a large image and fsync are blocking work.
        let joined = tokio::task::spawn_blocking(move || {
            let outcome = seal_and_spool(
                &mut sealer,
                &mut sequences,
                &spool,
                (site, gateway),
                budget,
                capture,
            );
            (sealer, sequences, outcome)
        })
        .await;
        let (sealer, sequences, outcome) = match joined {
            Ok(parts) => parts,
            Err(e) => return Err(Refusal::Failed(format!("sealing task failed: {e}"))),
        };
        self.sealer = Some(sealer);
        self.sequences = Some(sequences);
        let disk_full = matches!(outcome, Err(Refusal::DiskFull(_)));
        let disk_full_changed = disk_full != self.disk_full;
        if disk_full_changed {
            self.disk_full = disk_full;
            if !disk_full {
                tracing::info!("the disk has room again; captures are accepted");
            }
        }
        match outcome {
            Ok(spooled) => {
                self.metrics.sealed.inc();
                self.update_gauges();
                let id = spooled.id;
                // The publisher gone means shutdown; the image is safe in
                // the spool and will be published on the next start.
                let _ = self.events.send(Event::Spooled(spooled)).await;
                Ok(id)
            }
            Err(refusal) => {
                match &refusal {
                    Refusal::Full(e) => {
                        self.metrics.refused_full.inc();
                        tracing::warn!(cause = %e, "capture refused: spool full");
                    }
                    // Counted and logged by the source, which refuses it.
                    Refusal::TooLarge(_) => {}
                    Refusal::DiskFull(e) => {
                        self.metrics.refused_disk_full.inc();
                        if self.metrics.refused_disk_full.get() == 1 || disk_full_changed {
                            tracing::error!(cause = %e, "capture refused: the disk is full; sources keep their images until there is room");
                        }
                    }
                    other => {
                        self.metrics.error("intake");
                        tracing::error!(cause = %other, "capture refused");
                    }
                }
                Err(refusal)
            }
        }
    }

    fn update_gauges(&self) {
        self.metrics
            .spool(&self.spool.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

fn seal_and_spool(
    sealer: &mut Sealer,
    sequences: &mut Sequences,
    spool: &Mutex<Spool>,
    (site, gateway): (Name, Name),
    budget: u64,
    capture: Capture,
) -> Result<Spooled, Refusal> {
    let bytes = capture.pixels.data().len() as u64;
    if bytes > budget {
        return Err(Refusal::TooLarge(format!(
            "{}x{} image of {bytes} pixel bytes; the broker link carries at most {budget} per image",
            capture.pixels.width(),
            capture.pixels.height()
        )));
    }
    // Check room first, so that a full spool costs no sequence number or
    // sealing work.
    {
        let spool = spool.lock().unwrap_or_else(PoisonError::into_inner);
        let estimate = capture.pixels.data().len() as u64 + 2048;
        if spool.used_bytes() + estimate > spool.limit_bytes() {
            return Err(Refusal::Full(SpoolError::Full {
                used: spool.used_bytes(),
                limit: spool.limit_bytes(),
                wanted: estimate,
            }));
        }
    }
    let sequence = sequences.next(&capture.device).map_err(|e| {
        if is_disk_full(&e.source) {
            Refusal::DiskFull(e.to_string())
        } else {
            Refusal::Failed(e.to_string())
        }
    })?;
    let meta = ImageMeta {
        message_id: capture.message_id,
        site,
        gateway,
        device: capture.device.clone(),
        epoch: sequences.epoch(),
        sequence,
        captured_at_ms: capture.captured_at_ms,
        modality: capture.modality,
        model_hint: None,
        anatomy: capture.anatomy.clone(),
    };
    let sealed = sealer
        .seal(&meta, &capture.pixels)
        .map_err(|e| Refusal::Failed(format!("sealing: {e}")))?;
    // Not needed any more: a large image is not held twice while written.
    drop(capture);
    spool
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .put(&sealed)
        .map_err(|e| match e {
            full @ SpoolError::Full { .. } => Refusal::Full(full),
            SpoolError::Io { ref source, .. } if is_disk_full(source) => {
                Refusal::DiskFull(e.to_string())
            }
            other => Refusal::Failed(other.to_string()),
        })?;
    Ok(Spooled {
        id: meta.message_id,
        device: meta.device,
        captured_at_ms: meta.captured_at_ms,
    })
}

/// Whether an I/O error means the disk (or the quota) is full.
fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}
