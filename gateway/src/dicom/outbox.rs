//! The report outbox: Structured Reports wait in
//! `{state_dir}/dicom/outbox/{message_id}.dcm` (written durably before the
//! spool lets go of their image, readable by the gateway's user only) until
//! the PACS has stored them by C-STORE; then they are deleted.
//!
//! Delivery is retried with exponential back-off (1 s doubling up to
//! `dicom.pacs.retry_max_secs`) while the PACS is unreachable, rejects the
//! association or answers out of resources; the outbox survives restarts
//! and crashes, so a report is never lost. A report the PACS refuses for
//! good (an error status) moves to `outbox/refused/` with the status in a
//! `.status.txt`, counted in `dicom_reports_refused`, and the retained
//! status names the problem: an administrator decides.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dicom_dictionary_std::uids;
use dicom_object::OpenFileOptions;
use dicom_object::file::ReadPreamble;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use medgate_shared::ids::{MessageId, Name};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::dimse;
use super::node::{AeTitle, Pacs};
use super::references::{create_private_dir, write_private};
use crate::messages::Health;
use crate::metrics::Metrics;

/// The largest report file read back (reports are a few KiB).
const MAX_REPORT_BYTES: u64 = 1 << 20;

/// The outbox folder; clones share the wake-up.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
    wake: Arc<Notify>,
}

impl Outbox {
    /// The outbox in `dir`, created (mode 0700) if missing.
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        create_private_dir(dir)?;
        create_private_dir(&dir.join("refused"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Puts the report of `id` in the outbox, durably, and wakes the sender.
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn put(&self, id: &MessageId, report: &[u8]) -> std::io::Result<()> {
        write_private(&self.dir, &self.dir.join(format!("{id}.dcm")), report)?;
        self.wake.notify_one();
        Ok(())
    }

    /// The reports waiting, oldest first.
    pub fn pending(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".dcm") && !name.starts_with('.')
            })
            .filter_map(|e| {
                let modified = e.metadata().ok()?.modified().ok()?;
                Some((modified, e.path()))
            })
            .collect();
        files.sort();
        files.into_iter().map(|(_, path)| path).collect()
    }

    fn refuse(&self, file: &Path, why: &str) -> std::io::Result<()> {
        let name = file.file_name().unwrap_or_default();
        let target = self.dir.join("refused").join(name);
        std::fs::rename(file, &target)?;
        let mut note = target.clone().into_os_string();
        note.push(".status.txt");
        std::fs::write(note, format!("{why}\n"))
    }
}

/// What the PACS did with a report.
#[derive(Debug, PartialEq, Eq)]
enum Stored {
    /// Stored (success or a warning status).
    Yes,
    /// Refused for good, with this status.
    Refused(u16, Option<String>),
}

/// Who sends the reports.
pub struct Sender {
    /// The outbox.
    pub outbox: Outbox,
    /// Where to.
    pub pacs: Pacs,
    /// Who calls.
    pub calling: AeTitle,
    /// Time limit per network step.
    pub timeout: Duration,
    /// The source's device, for the retained status's problems.
    pub device: Name,
    /// Problems, as the retained status shows them.
    pub health: Health,
    /// Counters.
    pub metrics: Metrics,
}

impl Sender {
    /// Sends what waits, and what arrives, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let first = Duration::from_secs(1);
        let mut backoff = first;
        let mut failing = false;
        loop {
            let pending = self.outbox.pending();
            self.metrics
                .dicom_outbox
                .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
            if pending.is_empty() {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.outbox.wake.notified() => continue,
                }
            }
            let mut retry = false;
            for file in pending {
                if stop.is_cancelled() {
                    return;
                }
                match self.send(&file).await {
                    Ok(Stored::Yes) => {
                        if let Err(e) = std::fs::remove_file(&file) {
                            tracing::error!(file = %file.display(), cause = %e, "a report the PACS stored cannot be removed from the outbox; it will be sent again");
                        }
                        self.metrics.dicom_reports_stored.inc();
                        if failing {
                            failing = false;
                            tracing::info!(pacs = %self.pacs.ae_title, "the PACS stores reports again");
                            self.health.set(&self.device, None);
                        }
                        backoff = first;
                        tracing::info!(pacs = %self.pacs.ae_title, report = %file_stem(&file), "Structured Report stored in the PACS");
                    }
                    Ok(Stored::Refused(code, comment)) => {
                        let why = format!(
                            "the PACS {} refused the report with status {code:#06x}{}",
                            self.pacs.ae_title,
                            comment.map(|c| format!(" ({c})")).unwrap_or_default()
                        );
                        self.metrics.dicom_reports_refused.inc();
                        tracing::error!(report = %file_stem(&file), "{why}; kept in the outbox's refused/ folder");
                        if let Err(e) = self.outbox.refuse(&file, &why) {
                            tracing::error!(cause = %e, "cannot move a refused report aside; it will be sent again");
                            retry = true;
                            break;
                        }
                        self.health.set(
                            &self.device,
                            Some(format!("{why}; see the outbox's refused/ folder")),
                        );
                    }
                    Err(e) => {
                        self.metrics.dicom_report_attempts_failed.inc();
                        if !failing {
                            tracing::warn!(pacs = %self.pacs.ae_title, address = %self.pacs.address, cause = %e, "cannot store reports in the PACS; they wait in the outbox and are retried");
                        }
                        failing = true;
                        self.health.set(
                            &self.device,
                            Some(format!(
                                "the PACS {} at {} does not take reports: {e}",
                                self.pacs.ae_title, self.pacs.address
                            )),
                        );
                        retry = true;
                        break;
                    }
                }
            }
            if retry {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(self.pacs.retry_max);
            }
        }
    }

    /// One C-STORE of the report in `file`.
    async fn send(&self, file: &Path) -> Result<Stored, String> {
        let bytes = read_limited(file).map_err(|e| format!("reading the report: {e}"))?;
        let report = OpenFileOptions::new()
            .read_preamble(ReadPreamble::Always)
            .from_reader(bytes.as_slice())
            .map_err(|e| format!("reading the report: {e}"))?;
        let class = report
            .meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_owned();
        let instance = report
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_owned();
        let peer = dimse::Peer {
            calling: self.calling.as_str(),
            called: self.pacs.ae_title.as_str(),
            address: &self.pacs.address,
            timeout: self.timeout,
        };
        let answer = dimse::store(
            &peer,
            &class,
            &instance,
            &[
                uids::EXPLICIT_VR_LITTLE_ENDIAN,
                uids::IMPLICIT_VR_LITTLE_ENDIAN,
            ],
            |ts| {
                let ts = TransferSyntaxRegistry
                    .get(ts)
                    .ok_or_else(|| format!("transfer syntax {ts} unknown"))?;
                let mut data = Vec::new();
                report
                    .write_dataset_with_ts(&mut data, ts)
                    .map_err(|e| format!("encoding the report: {e}"))?;
                Ok(data)
            },
        )
        .await?;
        let Some(code) = answer else {
            return Ok(Stored::Refused(
                dimse::status::SOP_CLASS_NOT_SUPPORTED,
                Some("the PACS does not accept Enhanced SR".into()),
            ));
        };
        Ok(match code {
            (0x0000 | 0x0107 | 0x0116 | 0xB000..=0xBFFF, _) => Stored::Yes,
            // Out of resources: the PACS may have room later.
            (0xA700..=0xA7FF, comment) => {
                return Err(format!(
                    "the PACS is out of resources{}",
                    comment.map(|c| format!(" ({c})")).unwrap_or_default()
                ));
            }
            (code, comment) => Stored::Refused(code, comment),
        })
    }
}

fn read_limited(file: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(file)?
        .take(MAX_REPORT_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_REPORT_BYTES {
        return Err(std::io::Error::other("larger than any report"));
    }
    Ok(bytes)
}

fn file_stem(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
