//! Which sensor frame each spooled image came from, kept on disk so that a
//! result arriving after a gateway restart still reaches the sensor's
//! RESULT register.
//!
//! One small file per image (`{message_id}` holding the sensor's boot id
//! and the frame number: a frame counter restarts when the sensor does, so
//! only the pair names one frame),
//! written durably before the sensor is told FRAME_DONE and removed when
//! the result has been written into the sensor. A crash between spooling and writing
//! the file leaves the frame with the sensor, which offers it again: the
//! image is then spooled twice, and only the copy with a file reaches the
//! register, so the sensor still sees exactly one result per frame.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use medgate_shared::ids::MessageId;

/// The frame map of one sensor.
#[derive(Debug, Clone)]
pub struct FrameMap {
    dir: PathBuf,
}

impl FrameMap {
    /// Uses (creating it) `dir`.
    ///
    /// # Errors
    /// If the folder cannot be created.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Records durably that image `id` is frame `frame` of boot `boot`.
    ///
    /// # Errors
    /// If the file cannot be written and flushed.
    pub fn insert(&self, id: MessageId, boot: u32, frame: u32) -> std::io::Result<()> {
        let path = self.dir.join(id.to_string());
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let mut file = File::create(&tmp)?;
        writeln!(file, "{boot} {frame}")?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()
    }

    /// The boot and frame of image `id`, if recorded (a record from before
    /// boot ids has no boot).
    pub fn frame(&self, id: &MessageId) -> Option<(Option<u32>, u32)> {
        parse(&fs::read_to_string(self.dir.join(id.to_string())).ok()?)
    }

    /// Whether some recorded image is frame `frame` of boot `boot` (a
    /// frame taken just before a crash, whose FRAME_DONE may not have
    /// reached the sensor).
    pub fn has_frame(&self, boot: u32, frame: u32) -> bool {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return false;
        };
        entries.filter_map(Result::ok).any(|e| {
            e.file_type().is_ok_and(|t| t.is_file())
                && !e.file_name().to_string_lossy().starts_with('.')
                && fs::read_to_string(e.path()).ok().as_deref().and_then(parse)
                    == Some((Some(boot), frame))
        })
    }

    /// Keeps a verdict that can no longer reach its frame (the sensor
    /// restarted since), as `orphaned/{id}.json`, and forgets the image.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn orphan(&self, id: &MessageId, verdict: &[u8]) -> std::io::Result<PathBuf> {
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

    /// Forgets image `id` (its result is in the sensor).
    pub fn forget(&self, id: &MessageId) {
        let _ = fs::remove_file(self.dir.join(id.to_string()));
    }
}

/// `"{boot} {frame}"`, or `"{frame}"` from before boot ids.
fn parse(text: &str) -> Option<(Option<u32>, u32)> {
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
        let map = FrameMap::open(dir.path()).unwrap();
        assert_eq!(map.frame(&id), Some((Some(7), 42)));
        assert!(map.has_frame(7, 42) && !map.has_frame(7, 41));
        // The same frame number after the sensor restarted is another frame.
        assert!(!map.has_frame(8, 42));
        map.forget(&id);
        assert_eq!(map.frame(&id), None);
        assert_eq!(map.frame(&MessageId::random()), None);
    }
}
