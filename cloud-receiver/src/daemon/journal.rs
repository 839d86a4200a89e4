//! The receiver's memory on disk, so that a restart does not forget what it
//! answered. Every answered image (its device, epoch, sequence number and
//! result) is appended as one JSON line to `answers.jsonl` in the state
//! folder by a writer thread, which flushes each batch to disk (`fsync`)
//! before taking the next. At start the last `remember_results` lines
//! rebuild the de-duplication cache and the replay windows: a replayed
//! image is answered from memory, not classified (and notified) again, and
//! a new message reusing an answered sequence number is still a replay.
//!
//! Bounded: the file is rewritten to its last `keep` lines at start and
//! whenever it has grown to twice that. A torn last line (a crash in the
//! middle of a write) and lines that do not parse are skipped and counted.
//! What was answered in the last batch before a power cut may be forgotten;
//! the gateway's own spool makes such an image come back, and it is then
//! classified once more rather than lost.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use medgate_shared::ids::Name;
use medgate_shared::messages::{Answer, ResultMessage};
use serde::{Deserialize, Serialize};

use super::replay::DeviceKey;

const FILE: &str = "answers.jsonl";
/// Answers waiting for the writer before new ones are dropped (and logged).
const QUEUE: usize = 4096;

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("answer journal {path}: {source}")]
pub struct JournalError {
    /// The file or folder.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

#[derive(Serialize, Deserialize)]
struct Line {
    site: Name,
    gateway: Name,
    device: Name,
    epoch: u64,
    sequence: u64,
    result: Stored,
}

/// An answer as a line holds it: tagged with its kind, or (lines written
/// before answers had kinds) a bare result.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Stored {
    Tagged(Answer),
    Untagged(ResultMessage),
}

impl From<Stored> for Answer {
    fn from(stored: Stored) -> Self {
        match stored {
            Stored::Tagged(answer) => answer,
            Stored::Untagged(result) => Self::Result(result),
        }
    }
}

/// One remembered answer.
pub struct Remembered {
    /// Whose sequence number it answered.
    pub device: DeviceKey,
    /// The sequence number.
    pub sequence: u64,
    /// The answer given (a result, or not classified).
    pub answer: Answer,
}

/// What the journal found at start.
pub struct Restored {
    /// The remembered answers, oldest first.
    pub answers: Vec<Remembered>,
    /// Lines that did not parse (a torn last write, damage).
    pub skipped: usize,
}

/// Appends answers; cheap to call from the handlers (a channel send).
pub struct Journal {
    tx: SyncSender<String>,
}

impl Journal {
    /// Records an answered image. Never blocks: with the writer far behind,
    /// the answer is kept in memory only, and that is logged.
    pub fn record(&self, device: &DeviceKey, sequence: u64, answer: &Answer) {
        let line = Line {
            site: device.0.clone(),
            gateway: device.1.clone(),
            device: device.2.clone(),
            epoch: device.3,
            sequence,
            result: Stored::Tagged(answer.clone()),
        };
        let Ok(text) = serde_json::to_string(&line) else {
            return;
        };
        match self.tx.try_send(text) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(message = %answer.message_id(), "answer journal behind: this answer is remembered in memory only");
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("answer journal writer stopped");
            }
        }
    }
}

/// Opens (creating) the journal in `dir`, keeping the last `keep` answers;
/// returns the writer, what it restored, and the writer thread (which ends,
/// having flushed everything, once the [`Journal`] is dropped).
///
/// # Errors
/// [`JournalError`] when the folder or file cannot be used.
pub fn open(
    dir: &Path,
    keep: usize,
) -> Result<(Journal, Restored, std::thread::JoinHandle<()>), JournalError> {
    let keep = keep.max(1);
    fs::create_dir_all(dir).map_err(|source| JournalError {
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join(FILE);
    let (kept, skipped) = read_last(&path, keep)?;
    let (lines, parsed): (Vec<String>, Vec<Line>) = kept.into_iter().unzip();
    rewrite(&path, &lines)?;
    let answers = parsed
        .into_iter()
        .map(|line| Remembered {
            device: (line.site, line.gateway, line.device, line.epoch),
            sequence: line.sequence,
            answer: line.result.into(),
        })
        .collect();
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|source| JournalError {
            path: path.clone(),
            source,
        })?;
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let count = lines.len();
    let writer = std::thread::Builder::new()
        .name("answer-journal".into())
        .spawn(move || write_loop(&path, file, &rx, keep, count))
        .map_err(|source| JournalError {
            path: dir.to_owned(),
            source,
        })?;
    Ok((Journal { tx }, Restored { answers, skipped }, writer))
}

/// The last `keep` parsable lines of `path` (none when it does not exist),
/// each with what it says, and how many lines were skipped.
fn read_last(path: &Path, keep: usize) -> Result<(Vec<(String, Line)>, usize), JournalError> {
    let error = |source| JournalError {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(error(e)),
    };
    let mut last = VecDeque::with_capacity(keep.min(1 << 16));
    let mut skipped = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(error)?;
        match std::str::from_utf8(&line) {
            _ if line.is_empty() => {}
            Ok(text) => match serde_json::from_str::<Line>(text) {
                Ok(parsed) => {
                    if last.len() == keep {
                        last.pop_front();
                    }
                    last.push_back((text.to_owned(), parsed));
                }
                Err(_) => skipped += 1,
            },
            Err(_) => skipped += 1,
        }
    }
    Ok((last.into(), skipped))
}

/// Replaces `path` with `lines`, durably (write, fsync, rename, fsync the
/// folder).
fn rewrite(path: &Path, lines: &[String]) -> Result<(), JournalError> {
    let error = |source| JournalError {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("jsonl.tmp");
    let mut file = File::create(&tmp).map_err(error)?;
    for line in lines {
        file.write_all(line.as_bytes()).map_err(error)?;
        file.write_all(b"\n").map_err(error)?;
    }
    file.sync_all().map_err(error)?;
    fs::rename(&tmp, path).map_err(error)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(error)?;
    }
    Ok(())
}

fn write_loop(path: &Path, mut file: File, rx: &Receiver<String>, keep: usize, mut count: usize) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(QUEUE));
        let mut text = String::new();
        for line in &batch {
            text.push_str(line);
            text.push('\n');
        }
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            tracing::error!(file = %path.display(), cause = %e, "answer journal write failed; these answers are remembered in memory only");
            continue;
        }
        count += batch.len();
        if count >= keep.saturating_mul(2) {
            let compacted = read_last(path, keep).and_then(|(kept, _)| {
                let lines: Vec<String> = kept.into_iter().map(|(text, _)| text).collect();
                rewrite(path, &lines)?;
                Ok(lines.len())
            });
            match compacted.and_then(|kept| {
                OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map(|f| (f, kept))
                    .map_err(|source| JournalError {
                        path: path.to_owned(),
                        source,
                    })
            }) {
                Ok((reopened, kept)) => {
                    file = reopened;
                    count = kept;
                }
                Err(e) => tracing::error!(cause = %e, "answer journal compaction failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use medgate_shared::messages::{NotClassifiedMessage, Timings};

    use super::*;

    fn result(id: u8) -> ResultMessage {
        ResultMessage {
            message_id: hex::encode([id; 16]),
            site: "s".into(),
            gateway: "g".into(),
            device: "d".into(),
            sequence: u64::from(id),
            captured_at_ms: 0,
            label: "normal".into(),
            probabilities: BTreeMap::from([("normal".into(), 0.75), ("pneumonia".into(), 0.25)]),
            threshold: 0.5,
            model_version: "m".into(),
            sha512: "00".repeat(64),
            receiver: "r".into(),
            timings: Timings {
                open_ms: 0.0,
                queue_ms: 0.0,
                inference_ms: 0.0,
                batch_size: 1,
                total_ms: 0.0,
            },
            mac: "11".repeat(32),
        }
    }

    fn key() -> DeviceKey {
        (
            "s".parse().unwrap(),
            "g".parse().unwrap(),
            "d".parse().unwrap(),
            7,
        )
    }

    #[test]
    fn answers_survive_a_restart_bounded_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, restored, writer) = open(dir.path(), 3).unwrap();
        assert!(restored.answers.is_empty());
        for id in 1..=5 {
            journal.record(&key(), u64::from(id), &Answer::Result(result(id)));
        }
        drop(journal);
        writer.join().unwrap();
        // A crash in the middle of the next write.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        file.write_all(b"{\"site\":\"s\",\"gat").unwrap();
        drop(file);

        let (_journal, restored, _writer) = open(dir.path(), 3).unwrap();
        assert_eq!(restored.skipped, 1);
        let ids: Vec<u64> = restored.answers.iter().map(|a| a.sequence).collect();
        assert_eq!(ids, [3, 4, 5], "the last `keep`, oldest first");
        assert_eq!(restored.answers[2].answer, Answer::Result(result(5)));
        assert_eq!(restored.answers[2].device, key());
        let lines = fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(lines.lines().count(), 3, "rewritten to what is kept");
    }

    #[test]
    fn lines_from_before_answer_kinds_still_restore_and_not_classified_answers_survive() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = serde_json::json!({
            "site": "s", "gateway": "g", "device": "d", "epoch": 7, "sequence": 1,
            "result": result(1),
        });
        fs::write(dir.path().join(FILE), format!("{legacy}\n")).unwrap();
        let (journal, restored, writer) = open(dir.path(), 8).unwrap();
        assert_eq!(restored.skipped, 0);
        assert_eq!(restored.answers[0].answer, Answer::Result(result(1)));
        let unclassified = Answer::NotClassified(NotClassifiedMessage {
            message_id: hex::encode([2; 16]),
            site: "s".into(),
            gateway: "g".into(),
            device: "d".into(),
            sequence: 2,
            captured_at_ms: 0,
            reason: "no_model".into(),
            detail: "no model for MR".into(),
            score: None,
            model_version: String::new(),
            sha512: "00".repeat(64),
            receiver: "r".into(),
            mac: "22".repeat(32),
        });
        journal.record(&key(), 2, &unclassified);
        drop(journal);
        writer.join().unwrap();
        let (_journal, restored, _writer) = open(dir.path(), 8).unwrap();
        let answers: Vec<&Answer> = restored.answers.iter().map(|a| &a.answer).collect();
        assert_eq!(answers, [&Answer::Result(result(1)), &unclassified]);
    }
}
