//! Which sensor frame each spooled image came from, kept on disk so that a
//! result arriving after a gateway restart still reaches the sensor's
//! RESULT register.
//!
//! A journal per sensor, `journal` in the sensor's folder, one line per
//! change: `+ {message_id} {boot} {frame}` when an image is recorded (the
//! sensor's boot id and the frame number: a frame counter restarts when the
//! sensor does, so only the pair names one frame; `-` for the boot of a
//! record from before boot ids), `- {message_id}` when its
//! result is in the sensor. A record is flushed to disk (`fdatasync`)
//! before the sensor is told FRAME_DONE; a forget is not flushed (lost in a
//! crash, it delivers the result once more, as before). The live records
//! are also held in memory, so a lookup reads no file.
//!
//! Opening replays the journal, ignoring a line a crash cut short, and
//! rewrites it with only the live records (written aside, flushed, renamed
//! into place, the folder flushed), which also happens once the journal
//! holds many more lines than live records. Records of the earlier layout,
//! one small file per image, are read at open and folded into the journal.
//!
//! Why a journal: one appended line and one flush per image, where a file
//! per image cost a create, two flushes (file and folder), a rename and an
//! unlink — about a tenth of the gateway's CPU per image at 256².
//!
//! A crash between spooling and recording leaves the frame with the sensor,
//! which offers it again: the image is then spooled twice, and only the
//! copy with a record reaches the register, so the sensor still sees
//! exactly one result per frame.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use medgate_shared::ids::MessageId;

/// The journal's name in the sensor's folder.
const JOURNAL: &str = "journal";
/// The journal is rewritten when it holds more than this many lines beyond
/// twice the live records.
const COMPACT_SLACK: usize = 4096;

/// A frame: the sensor's boot id (none in records from before boot ids)
/// and its frame number.
type Frame = (Option<u32>, u32);

/// The frame map of one sensor.
#[derive(Debug)]
pub struct FrameMap {
    dir: PathBuf,
    journal: File,
    live: HashMap<MessageId, Frame>,
    /// Lines in the journal file.
    lines: usize,
}

impl FrameMap {
    /// Uses (creating it) `dir`: replays its journal and any records of the
    /// earlier one-file-per-image layout, then rewrites the journal with
    /// the live records alone.
    ///
    /// # Errors
    /// If the folder cannot be created, read or written.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut live = HashMap::new();
        let mut old_files = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.parse::<MessageId>().ok()) else {
                continue;
            };
            if entry.file_type()?.is_file() {
                if let Some(frame) = fs::read_to_string(entry.path())
                    .ok()
                    .as_deref()
                    .and_then(parse)
                {
                    live.insert(id, frame);
                }
                old_files.push(entry.path());
            }
        }
        match fs::read_to_string(dir.join(JOURNAL)) {
            Ok(text) => replay(&text, &mut live),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let map = Self {
            dir: dir.to_path_buf(),
            journal: rewrite(dir, &live)?,
            lines: live.len(),
            live,
        };
        // Folded into the journal, which is on disk: the old files can go.
        for path in old_files {
            let _ = fs::remove_file(path);
        }
        Ok(map)
    }

    /// Records durably that image `id` is frame `frame` of boot `boot`.
    ///
    /// # Errors
    /// If the line cannot be written and flushed.
    pub fn insert(&mut self, id: MessageId, boot: u32, frame: u32) -> std::io::Result<()> {
        self.append(&format!("+ {id} {boot} {frame}\n"))?;
        self.journal.sync_data()?;
        self.live.insert(id, (Some(boot), frame));
        Ok(())
    }

    /// The boot and frame of image `id`, if recorded (a record from before
    /// boot ids has no boot).
    pub fn frame(&self, id: &MessageId) -> Option<Frame> {
        self.live.get(id).copied()
    }

    /// Whether some recorded image is frame `frame` of boot `boot` (a
    /// frame taken just before a crash, whose FRAME_DONE may not have
    /// reached the sensor).
    pub fn has_frame(&self, boot: u32, frame: u32) -> bool {
        self.live.values().any(|&f| f == (Some(boot), frame))
    }

    /// Keeps a verdict that can no longer reach its frame (the sensor
    /// restarted since), as `orphaned/{id}.json`, and forgets the image.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn orphan(&mut self, id: &MessageId, verdict: &[u8]) -> std::io::Result<PathBuf> {
        let dir = self.dir.join("orphaned");
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{id}.json"));
        let tmp = dir.join(format!(".{id}.json.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(verdict)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&dir)?.sync_all()?;
        self.forget(id);
        Ok(path)
    }

    /// Forgets image `id` (its result is in the sensor). Not flushed: lost
    /// in a crash, the result is delivered once more.
    pub fn forget(&mut self, id: &MessageId) {
        if self.live.remove(id).is_none() {
            return;
        }
        if let Err(e) = self.append(&format!("- {id}\n")) {
            // Kept in the journal: after a restart the result reaches the
            // sensor's register once more, nothing is lost.
            tracing::warn!(dir = %self.dir.display(), cause = %e, "cannot note a delivered frame in the journal");
        }
    }

    /// Appends a line, rewriting the journal first when it has grown far
    /// beyond its live records.
    fn append(&mut self, line: &str) -> std::io::Result<()> {
        if self.lines > 2 * self.live.len() + COMPACT_SLACK {
            self.journal = rewrite(&self.dir, &self.live)?;
            self.lines = self.live.len();
        }
        self.journal.write_all(line.as_bytes())?;
        self.lines += 1;
        Ok(())
    }
}

/// Applies the journal's lines to `live`. Only a line that ends in a
/// newline counts: a crash can cut the last one short (or leave zeros past
/// its end), and a prefix of a record must not pass for another record.
fn replay(text: &str, live: &mut HashMap<MessageId, Frame>) {
    for line in text.split_inclusive('\n') {
        let Some(line) = line.strip_suffix('\n') else {
            continue;
        };
        let parts: Vec<&str> = line.split(' ').collect();
        let Some(id) = parts.get(1).and_then(|id| id.parse::<MessageId>().ok()) else {
            continue;
        };
        match parts[..] {
            ["+", _, boot, frame] => {
                let boot = match boot {
                    "-" => None,
                    boot => match boot.parse() {
                        Ok(boot) => Some(boot),
                        Err(_) => continue,
                    },
                };
                if let Ok(frame) = frame.parse() {
                    live.insert(id, (boot, frame));
                }
            }
            ["-", _] => {
                live.remove(&id);
            }
            _ => {}
        }
    }
}

/// Writes `live` as a new journal beside the old one, flushes it, renames
/// it into place and flushes the folder; returns it open for appending.
fn rewrite(dir: &Path, live: &HashMap<MessageId, Frame>) -> std::io::Result<File> {
    let tmp = dir.join(format!(".{JOURNAL}.tmp"));
    let mut text = String::new();
    for (id, (boot, frame)) in live {
        // A record from before boot ids has `-` for its boot.
        match boot {
            Some(boot) => text.push_str(&format!("+ {id} {boot} {frame}\n")),
            None => text.push_str(&format!("+ {id} - {frame}\n")),
        }
    }
    let mut file = File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(JOURNAL))?;
    File::open(dir)?.sync_all()?;
    OpenOptions::new().append(true).open(dir.join(JOURNAL))
}

/// `"{boot} {frame}"`, or `"{frame}"` from before boot ids.
fn parse(text: &str) -> Option<Frame> {
    let mut parts = text.split_whitespace();
    let first = parts.next()?.parse().ok()?;
    match parts.next() {
        Some(frame) => Some((Some(first), frame.parse().ok()?)),
        None => Some((None, first)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_a_reopen_and_are_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let id = MessageId::random();
        FrameMap::open(dir.path())
            .unwrap()
            .insert(id, 7, 42)
            .unwrap();
        let mut map = FrameMap::open(dir.path()).unwrap();
        assert_eq!(map.frame(&id), Some((Some(7), 42)));
        assert!(map.has_frame(7, 42) && !map.has_frame(7, 41));
        // The same frame number after the sensor restarted is another frame.
        assert!(!map.has_frame(8, 42));
        map.forget(&id);
        assert_eq!(map.frame(&id), None);
        assert_eq!(map.frame(&MessageId::random()), None);
        drop(map);
        assert_eq!(FrameMap::open(dir.path()).unwrap().frame(&id), None);
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_skipped_and_later_lines_still_count() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, cut) = (MessageId::random(), MessageId::random());
        FrameMap::open(dir.path())
            .unwrap()
            .insert(kept, 1, 5)
            .unwrap();
        // A crash in the middle of the next record.
        let mut journal = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .unwrap();
        // Cut inside the frame number: "+ {cut} 1 4" of "+ {cut} 1 42".
        write!(journal, "+ {cut} 1 4").unwrap();
        drop(journal);
        let mut map = FrameMap::open(dir.path()).unwrap();
        assert_eq!(map.frame(&kept), Some((Some(1), 5)));
        assert_eq!(map.frame(&cut), None);
        // The reopen rewrote the journal, so a new record is not glued to
        // the torn line.
        let next = MessageId::random();
        map.insert(next, 1, 6).unwrap();
        drop(map);
        let map = FrameMap::open(dir.path()).unwrap();
        assert_eq!(map.frame(&next), Some((Some(1), 6)));
        assert_eq!(map.frame(&kept), Some((Some(1), 5)));
    }

    #[test]
    fn records_of_the_file_per_image_layout_are_folded_into_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (with_boot, without_boot) = (MessageId::random(), MessageId::random());
        fs::write(dir.path().join(with_boot.to_string()), "3 9\n").unwrap();
        fs::write(dir.path().join(without_boot.to_string()), "4\n").unwrap();
        let map = FrameMap::open(dir.path()).unwrap();
        assert_eq!(map.frame(&with_boot), Some((Some(3), 9)));
        assert!(map.has_frame(3, 9));
        // Routed by message id; never taken for a frame offered again.
        assert_eq!(map.frame(&without_boot), Some((None, 4)));
        assert!(!map.has_frame(0, 4));
        drop(map);
        assert!(!dir.path().join(with_boot.to_string()).exists());
        let map = FrameMap::open(dir.path()).unwrap();
        assert_eq!(map.frame(&with_boot), Some((Some(3), 9)));
        assert_eq!(map.frame(&without_boot), Some((None, 4)));
    }

    #[test]
    fn the_journal_stays_small_however_many_frames_pass() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = FrameMap::open(dir.path()).unwrap();
        let waiting = MessageId::random();
        map.insert(waiting, 2, 0).unwrap();
        for frame in 1..=3 * COMPACT_SLACK as u32 {
            let id = MessageId::random();
            map.insert(id, 2, frame).unwrap();
            map.forget(&id);
        }
        assert!(map.lines <= 2 + COMPACT_SLACK + 2, "{} lines", map.lines);
        let text = fs::read_to_string(dir.path().join(JOURNAL)).unwrap();
        assert_eq!(text.lines().count(), map.lines);
        drop(map);
        let map = FrameMap::open(dir.path()).unwrap();
        assert_eq!(map.frame(&waiting), Some((Some(2), 0)));
        assert_eq!(map.live.len(), 1);
    }
}
