//! Which sensor frame each spooled image came from, kept on disk so that a
//! result arriving after a gateway restart still reaches the sensor's
//! RESULT register.
//!
//! One small file per image (`{message_id}` holding the frame number),
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

    /// Records durably that image `id` is frame `frame`.
    ///
    /// # Errors
    /// If the file cannot be written and flushed.
    pub fn insert(&self, id: MessageId, frame: u32) -> std::io::Result<()> {
        let path = self.dir.join(id.to_string());
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let mut file = File::create(&tmp)?;
        writeln!(file, "{frame}")?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()
    }

    /// The frame of image `id`, if recorded.
    pub fn frame(&self, id: &MessageId) -> Option<u32> {
        let path = self.dir.join(id.to_string());
        fs::read_to_string(&path).ok()?.trim().parse().ok()
    }

    /// Whether some recorded image is frame `frame` (a frame taken just
    /// before a crash, whose FRAME_DONE may not have reached the sensor).
    pub fn has_frame(&self, frame: u32) -> bool {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return false;
        };
        entries.filter_map(Result::ok).any(|e| {
            !e.file_name().to_string_lossy().starts_with('.')
                && fs::read_to_string(e.path())
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    == Some(frame)
        })
    }

    /// Forgets image `id` (its result is in the sensor).
    pub fn forget(&self, id: &MessageId) {
        let _ = fs::remove_file(self.dir.join(id.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_a_reopen_and_are_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let id = MessageId::random();
        FrameMap::open(dir.path()).unwrap().insert(id, 42).unwrap();
        let map = FrameMap::open(dir.path()).unwrap();
        assert_eq!(map.frame(&id), Some(42));
        assert!(map.has_frame(42) && !map.has_frame(41));
        map.forget(&id);
        assert_eq!(map.frame(&id), None);
        assert_eq!(map.frame(&MessageId::random()), None);
    }
}
