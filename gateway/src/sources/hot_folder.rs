//! The hot folder: image files (PNG, JPEG, TIFF, and DICOM: a `.dcm` name
//! or the `DICM` marker, see [`crate::dicom::read`]) written into a folder
//! are captured for one device. A DICOM image carries its own Modality
//! when the gateway knows the code, else the folder's.
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
//!
//! Capture is idempotent per file: a file spooled but not movable to
//! `done/` (a read-only or full folder) is recorded in
//! `{state_dir}/hot_folders/{device}/` by its identity (device, inode,
//! size, modification time) and never captured again, by a later scan or
//! after a restart; the move is retried every scan, and until it succeeds
//! the folder is reported broken (log, `hot_folder_stuck_files` gauge, the
//! retained status's `problems`).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use medgate_shared::header::{Anatomy, Modality};
use medgate_shared::ids::{MessageId, Name};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Source, SourceTask};
use crate::capture::{self, Capture, DecodeError, Preparation};
use crate::dicom;
use crate::intake::{Intake, Refusal};
use crate::messages::{Delivery, Health, LinkLimit, Verdict};
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
    /// Body part and view of its images (a DICOM file's own win).
    pub anatomy: Anatomy,
    /// Scan period.
    pub scan_interval: Duration,
    /// Settle time.
    pub settle: Duration,
    /// Where captured files that could not be moved are recorded
    /// (`{state_dir}/hot_folders/{device}`).
    pub state_dir: PathBuf,
}

/// A hot-folder source.
pub struct HotFolderSource {
    folder: HotFolder,
    preparation: Preparation,
    link: LinkLimit,
    health: Health,
    metrics: Metrics,
    done: HashMap<MessageId, PathBuf>,
    /// Captured files still in the folder (the move to `done/` failed).
    stuck: HashMap<FileKey, Stuck>,
    /// Whether the last scan could not list the folder (logged once).
    unlistable: bool,
}

impl HotFolderSource {
    /// A source for `folder`.
    pub fn new(
        folder: HotFolder,
        preparation: Preparation,
        link: LinkLimit,
        health: Health,
        metrics: Metrics,
    ) -> Self {
        Self {
            folder,
            preparation,
            link,
            health,
            metrics,
            done: HashMap::new(),
            stuck: HashMap::new(),
            unlistable: false,
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
        self.stuck = load_stuck(&self.folder.state_dir);
        if !self.stuck.is_empty() {
            tracing::warn!(folder = %self.folder.path.display(), files = self.stuck.len(), "captured files still wait to be moved to done/; they will not be captured again");
        }
        self.report_stuck(None);
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
                // Counted every scan, logged once until it can be listed
                // again: a removed folder must not flood the journal.
                self.metrics.error("hot_folder");
                if !self.unlistable {
                    self.unlistable = true;
                    tracing::warn!(folder = %self.folder.path.display(), cause = %e, "cannot list the hot folder; trying again every scan");
                }
                return true;
            }
            Err(_) => return true,
        };
        if self.unlistable {
            self.unlistable = false;
            tracing::info!(folder = %self.folder.path.display(), "the hot folder can be listed again");
        }
        let present: Vec<FileKey> = files.iter().filter_map(|p| file_key(p).ok()).collect();
        self.forget_vanished(&present);
        for path in files {
            if stop.is_cancelled() {
                return true;
            }
            let key = file_key(&path).ok();
            if let Some(stuck) = key.as_ref().and_then(|k| self.stuck.get(k)) {
                // Spooled already: only the move is left to do.
                let id = stuck.id;
                self.mark_done(&path, id, key).await;
                continue;
            }
            let preparation = self.preparation;
            let limits = preparation.limits(self.link.get());
            let file = path.clone();
            let name = file_name(&path);
            // Read at most the limit, decode within it: both blocking.
            let decoded = tokio::task::spawn_blocking(move || {
                let bytes = read_limited(&file, limits.max_file_bytes())?;
                Ok::<_, std::io::Error>(if dicom::read::is_dicom(&name, &bytes) {
                    dicom::read::read(bytes, preparation, &limits)
                        .map(|d| (d.pixels, d.modality, d.anatomy))
                } else {
                    capture::decode(bytes, preparation, &limits)
                        .map(|p| (p, None, Anatomy::default()))
                })
            })
            .await;
            let (pixels, modality, anatomy) = match decoded {
                Ok(Ok(Ok(decoded))) => decoded,
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
                message_id: MessageId::random(),
                device: self.folder.device.clone(),
                modality: modality.unwrap_or(self.folder.modality),
                anatomy: anatomy.or(&self.folder.anatomy),
                captured_at_ms: capture::now_ms(),
                pixels,
            };
            match intake.submit(capture).await {
                Ok(id) => self.mark_done(&path, id, key).await,
                // Counted and logged by intake; the file waits for room.
                Err(Refusal::Full(_) | Refusal::DiskFull(_)) => return true,
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

    /// Moves a spooled file to `done/`; when that fails, records it so
    /// that it is never captured again, and reports the folder broken.
    async fn mark_done(&mut self, path: &Path, id: MessageId, key: Option<FileKey>) {
        let name = file_name(path);
        let target = self.folder.path.join("done").join(format!("{id}-{name}"));
        match tokio::fs::rename(path, &target).await {
            Ok(()) => {
                self.done.insert(id, target);
                if let Some(key) = key
                    && let Some(stuck) = self.stuck.remove(&key)
                {
                    let _ = std::fs::remove_file(&stuck.record);
                    tracing::info!(file = %path.display(), "captured file moved to done/ at last");
                    self.report_stuck(None);
                }
            }
            Err(e) => {
                let Some(key) = key else {
                    self.metrics.error("hot_folder_move");
                    tracing::error!(file = %path.display(), cause = %e, "image spooled but the file could not be moved to done/ nor identified; it may be captured again");
                    return;
                };
                if self.stuck.contains_key(&key) {
                    return;
                }
                self.metrics.error("hot_folder_move");
                let record = match record_stuck(&self.folder.state_dir, &key, id) {
                    Ok(record) => record,
                    Err(record_error) => {
                        tracing::error!(dir = %self.folder.state_dir.display(), cause = %record_error, "cannot record a captured file; only this run will not capture it again");
                        PathBuf::new()
                    }
                };
                self.stuck.insert(key, Stuck { id, record });
                tracing::error!(file = %path.display(), message = %id, cause = %e, "image spooled but the file cannot be moved to done/; it stays, and is not captured again");
                self.report_stuck(Some(&e));
            }
        }
    }

    /// Stuck files whose file is gone (someone removed it) need no move.
    fn forget_vanished(&mut self, present: &[FileKey]) {
        let before = self.stuck.len();
        self.stuck.retain(|key, stuck| {
            let keep = present.contains(key);
            if !keep {
                let _ = std::fs::remove_file(&stuck.record);
            }
            keep
        });
        if self.stuck.len() != before {
            self.report_stuck(None);
        }
    }

    /// Tells metrics, the log and the status whether the folder is broken.
    fn report_stuck(&self, cause: Option<&std::io::Error>) {
        let count = self.stuck.len();
        self.metrics
            .hot_folder_stuck
            .get_or_create(&vec![("device", self.folder.device.to_string())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        let problem = (count > 0).then(|| {
            let why = cause.map_or_else(String::new, |e| format!(" ({e})"));
            format!(
                "{count} captured file(s) cannot be moved to {}{why}; they are not captured again",
                self.folder.path.join("done").display()
            )
        });
        let fixed = problem.is_none();
        if self.health.set(&self.folder.device, problem) && fixed {
            tracing::info!(folder = %self.folder.path.display(), "hot folder works again");
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

    /// Writes the sidecar, `{stem}.result.json`, `{stem}.not-classified.json`
    /// or `{stem}.rejected.json`;
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
            Verdict::NotClassified(answer) => (
                "not-classified",
                serde_json::to_vec_pretty(answer),
                format!("not classified ({}: {})", answer.reason, answer.detail),
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

/// What identifies a file across scans and restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct FileKey {
    name: String,
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i64,
}

/// A captured file that is still in the folder.
#[derive(Debug)]
struct Stuck {
    id: MessageId,
    /// Its record in the state folder.
    record: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct StuckRecord {
    message_id: String,
    file: FileKey,
}

fn file_key(path: &Path) -> std::io::Result<FileKey> {
    let meta = std::fs::metadata(path)?;
    Ok(FileKey {
        name: file_name(path),
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
    })
}

/// Records durably that the file `key` is image `id`.
fn record_stuck(dir: &Path, key: &FileKey, id: MessageId) -> std::io::Result<PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{id}.json"));
    let tmp = dir.join(format!(".{id}.json.tmp"));
    let body = serde_json::to_vec(&StuckRecord {
        message_id: id.to_string(),
        file: key.clone(),
    })
    .map_err(std::io::Error::other)?;
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&body)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

/// The records of an earlier run; unreadable ones are skipped with a
/// warning.
fn load_stuck(dir: &Path) -> HashMap<FileKey, Stuck> {
    let mut stuck = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return stuck;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let parsed = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<StuckRecord>(&b).ok())
            .and_then(|r| Some((r.file, r.message_id.parse::<MessageId>().ok()?)));
        match parsed {
            Some((key, id)) => {
                stuck.insert(key, Stuck { id, record: path });
            }
            None => {
                tracing::warn!(file = %path.display(), "unreadable record of a captured file; ignored");
            }
        }
    }
    stuck
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
        // The gateway's own subfolders are never inputs, whatever they are.
        if name.starts_with('.')
            || name == "done"
            || name == "rejected"
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
