//! The hot folder: image files (PNG, JPEG, TIFF) written into a folder are
//! captured for one device.
//!
//! A file is taken once it has not changed for the settle time (or at once
//! when written elsewhere and renamed in, the safe way to drop files).
//! Names starting with `.` or ending in `.tmp`, `.part` or `.partial` are
//! left alone. After intake confirms the image is durably spooled the file
//! moves to `done/{message_id}-{name}`; its result is written beside it as
//! `done/{message_id}-{stem}.result.json`, or, when the image will not be
//! classified (refused by a receiver, or unanswered, and quarantined),
//! `done/{message_id}-{stem}.rejected.json` saying why. A file that is not
//! a readable image, or too large (on disk, decoded, or for the broker
//! link, see [`crate::capture`]), moves to `rejected/` with a
//! `.reason.txt`, counted by reason, and is never spooled; nothing
//! vanishes silently. When the spool is full the file stays where it is
//! and is tried again on a later scan.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use medgate_shared::header::Modality;
use medgate_shared::ids::{MessageId, Name};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Source, SourceTask};
use crate::capture::{self, Capture, DecodeError, Preparation};
use crate::intake::{Intake, Refusal};
use crate::messages::{Delivery, LinkLimit, Verdict};
use crate::metrics::Metrics;

/// A hot folder, as the config check makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotFolder {
    /// Device name.
    pub device: Name,
    /// Folder.
    pub path: PathBuf,
    /// Modality.
    pub modality: Modality,
    /// Scan period.
    pub scan_interval: Duration,
    /// Settle time.
    pub settle: Duration,
}

/// A hot-folder source.
pub struct HotFolderSource {
    folder: HotFolder,
    preparation: Preparation,
    link: LinkLimit,
    metrics: Metrics,
    done: HashMap<MessageId, PathBuf>,
}

impl HotFolderSource {
    /// A source for `folder`.
    pub fn new(
        folder: HotFolder,
        preparation: Preparation,
        link: LinkLimit,
        metrics: Metrics,
    ) -> Self {
        Self {
            folder,
            preparation,
            link,
            metrics,
            done: HashMap::new(),
        }
    }

    async fn serve(
        mut self,
        intake: Intake,
        mut results: mpsc::Receiver<Delivery>,
        stop: CancellationToken,
    ) {
        for sub in ["done", "rejected"] {
            let dir = self.folder.path.join(sub);
            if let Err(e) = tokio::fs::create_dir_all(&dir).await {
                tracing::error!(folder = %dir.display(), cause = %e, "cannot create hot-folder subfolder");
            }
        }
        let mut tick = tokio::time::interval(self.folder.scan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                Some(delivery) = results.recv() => {
                    if self.write_verdict(&delivery.verdict).await {
                        let _ = delivery.done.send(());
                    }
                }
                _ = tick.tick() => {
                    if !self.scan(&intake, &stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// One scan; false when intake has stopped.
    async fn scan(&mut self, intake: &Intake, stop: &CancellationToken) -> bool {
        let dir = self.folder.path.clone();
        let settle = self.folder.settle;
        let listed = tokio::task::spawn_blocking(move || ready_files(&dir, settle)).await;
        let files = match listed {
            Ok(Ok(files)) => files,
            Ok(Err(e)) => {
                self.metrics.error("hot_folder");
                tracing::warn!(folder = %self.folder.path.display(), cause = %e, "cannot list the hot folder");
                return true;
            }
            Err(_) => return true,
        };
        for path in files {
            if stop.is_cancelled() {
                return true;
            }
            let preparation = self.preparation;
            let limits = preparation.limits(self.link.get());
            let file = path.clone();
            // Read at most the limit, decode within it: both blocking.
            let decoded = tokio::task::spawn_blocking(move || {
                let bytes = read_limited(&file, limits.max_file_bytes())?;
                Ok::<_, std::io::Error>(capture::decode(bytes, preparation, &limits))
            })
            .await;
            let pixels = match decoded {
                Ok(Ok(Ok(pixels))) => pixels,
                Ok(Ok(Err(e))) => {
                    self.reject(&path, e.reason(), &e.to_string()).await;
                    continue;
                }
                Ok(Err(e)) => match e.downcast::<DecodeError>() {
                    Ok(e) => {
                        self.reject(&path, e.reason(), &e.to_string()).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), cause = %e, "cannot read a hot-folder file; will retry");
                        continue;
                    }
                },
                Err(e) => {
                    self.reject(&path, "decoder_failed", &format!("decoder failed: {e}"))
                        .await;
                    continue;
                }
            };
            let capture = Capture {
                device: self.folder.device.clone(),
                modality: self.folder.modality,
                captured_at_ms: capture::now_ms(),
                pixels,
            };
            match intake.submit(capture).await {
                Ok(id) => self.mark_done(&path, id).await,
                // Counted and logged by intake; the file waits for room.
                Err(Refusal::Full(_)) => return true,
                Err(Refusal::Stopping) => return false,
                Err(Refusal::TooLarge(reason)) => {
                    self.reject(&path, "too_large_for_link", &reason).await;
                }
                Err(Refusal::Failed(reason)) => {
                    tracing::error!(file = %path.display(), %reason, "capture failed; the file stays for a retry");
                }
            }
        }
        true
    }

    async fn mark_done(&mut self, path: &Path, id: MessageId) {
        let name = file_name(path);
        let target = self.folder.path.join("done").join(format!("{id}-{name}"));
        match tokio::fs::rename(path, &target).await {
            Ok(()) => {
                self.done.insert(id, target);
            }
            Err(e) => {
                // The image is spooled; a second capture of this file would
                // only be a duplicate, so say so loudly.
                self.metrics.error("hot_folder_move");
                tracing::error!(file = %path.display(), cause = %e, "image spooled but the file could not be moved to done/");
            }
        }
    }

    async fn reject(&self, path: &Path, label: &str, reason: &str) {
        self.metrics.rejected_file(label);
        let name = file_name(path);
        let target = self.folder.path.join("rejected").join(&name);
        tracing::warn!(file = %path.display(), cause = label, reason, "file refused; moved to rejected/");
        if let Err(e) = tokio::fs::rename(path, &target).await {
            tracing::error!(file = %path.display(), cause = %e, "cannot move a rejected file");
            return;
        }
        let note = self
            .folder
            .path
            .join("rejected")
            .join(format!("{name}.reason.txt"));
        if let Err(e) = tokio::fs::write(&note, format!("{reason}\n")).await {
            tracing::error!(file = %note.display(), cause = %e, "cannot write the rejection reason");
        }
    }

    /// Writes the sidecar, `{stem}.result.json` or `{stem}.rejected.json`;
    /// false when it could not be written.
    async fn write_verdict(&mut self, verdict: &Verdict) -> bool {
        let Ok(id) = verdict.message_id().parse::<MessageId>() else {
            return true;
        };
        let done = self.folder.path.join("done");
        let image = match self.done.remove(&id) {
            Some(path) => Some(path),
            None => find_done(&done, &id).await,
        };
        let stem = image
            .as_deref()
            .and_then(|p| p.file_stem())
            .map_or_else(|| id.to_string(), |s| s.to_string_lossy().into_owned());
        let (kind, body, said) = match verdict {
            Verdict::Classified(result) => (
                "result",
                serde_json::to_vec_pretty(result),
                result.label.clone(),
            ),
            Verdict::Rejected(rejection) => (
                "rejected",
                serde_json::to_vec_pretty(rejection),
                format!("rejected ({}: {})", rejection.cause, rejection.reason),
            ),
        };
        let body = body.unwrap_or_default();
        let sidecar = done.join(format!("{stem}.{kind}.json"));
        let tmp = done.join(format!(".{stem}.{kind}.json.tmp"));
        // Durable before the spool lets go of the image: written, flushed,
        // renamed into place, and the folder flushed.
        let written = {
            let (tmp, sidecar, done) = (tmp.clone(), sidecar.clone(), done.clone());
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut file = std::fs::File::create(&tmp)?;
                file.write_all(&body)?;
                file.sync_all()?;
                std::fs::rename(&tmp, &sidecar)?;
                std::fs::File::open(&done)?.sync_all()
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        match written {
            Ok(()) => {
                tracing::info!(device = %self.folder.device, file = %sidecar.display(), verdict = %said, "result written");
                true
            }
            Err(e) => {
                self.metrics.error("hot_folder_result");
                tracing::error!(file = %sidecar.display(), cause = %e, "cannot write a result file");
                false
            }
        }
    }
}

impl Source for HotFolderSource {
    fn device(&self) -> &Name {
        &self.folder.device
    }

    fn run(
        self: Box<Self>,
        intake: Intake,
        results: mpsc::Receiver<Delivery>,
        stop: CancellationToken,
    ) -> SourceTask {
        Box::pin(self.serve(intake, results, stop))
    }
}

/// Reads `path`, refusing (with [`DecodeError::FileTooLarge`] inside the
/// error) a file longer than `limit` without reading more than that.
fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let too_large = |bytes| std::io::Error::other(DecodeError::FileTooLarge { bytes, limit });
    if size > limit {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // The file may grow while read: never past the limit.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// Files in `dir` that are ready: regular, not hidden or partial, unchanged
/// for `settle`; oldest first.
fn ready_files(dir: &Path, settle: Duration) -> std::io::Result<Vec<PathBuf>> {
    let now = SystemTime::now();
    let mut ready = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with('.')
            || [".tmp", ".part", ".partial"]
                .iter()
                .any(|s| name.ends_with(s))
        {
            continue;
        }
        let meta = item.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().unwrap_or(now);
        if now.duration_since(modified).unwrap_or_default() < settle {
            continue;
        }
        ready.push((modified, item.path()));
    }
    ready.sort();
    Ok(ready.into_iter().map(|(_, p)| p).collect())
}

async fn find_done(done: &Path, id: &MessageId) -> Option<PathBuf> {
    let prefix = format!("{id}-");
    let mut entries = tokio::fs::read_dir(done).await.ok()?;
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && !name.ends_with(".result.json") {
            return Some(entry.path());
        }
    }
    None
}
