//! Per-device sequence numbers that keep increasing across restarts.
//!
//! The receiver refuses a (device, sequence) pair it has seen, so numbers
//! must never repeat, not even after a crash. Writing every number to disk
//! would cost one more `fsync` per image; instead a block of numbers is
//! reserved durably (the file holds the first number not yet reserved) and
//! handed out from memory. A crash skips at most the rest of a block; gaps
//! are harmless to the receiver's replay window.
//!
//! Numbers count within an *epoch*: a random 64-bit value drawn when the
//! state folder is first used (file `epoch`) and carried in every header.
//! A gateway whose state folder was wiped or replaced starts at 0 again
//! under a new epoch, so its new images are new to the receivers rather
//! than replays of the old epoch's numbers.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use medgate_shared::ids::Name;

/// Numbers reserved per disk write.
const BLOCK: u64 = 1024;

/// Why a number could not be reserved.
#[derive(Debug, thiserror::Error)]
#[error("sequence state {path}: {source}")]
pub struct SequenceError {
    /// The state file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

#[derive(Debug)]
struct Counter {
    next: u64,
    reserved_until: u64,
}

/// Sequence numbers of every device, backed by `dir`.
#[derive(Debug)]
pub struct Sequences {
    dir: PathBuf,
    epoch: u64,
    counters: HashMap<Name, Counter>,
}

impl Sequences {
    /// Uses (creating if needed) `dir` for the state files.
    ///
    /// # Errors
    /// [`SequenceError`] when the folder cannot be created.
    pub fn open(dir: &Path) -> Result<Self, SequenceError> {
        fs::create_dir_all(dir).map_err(|source| SequenceError {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("epoch");
        let epoch = match fs::read_to_string(&path) {
            Ok(text) => u64::from_str_radix(text.trim(), 16).map_err(|e| SequenceError {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let epoch = rand::random::<u64>();
                write_durably(dir, &path, &format!("{epoch:016x}")).map_err(|source| {
                    SequenceError {
                        path: path.clone(),
                        source,
                    }
                })?;
                epoch
            }
            Err(source) => return Err(SequenceError { path, source }),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            epoch,
            counters: HashMap::new(),
        })
    }

    /// This installation's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The next number for `device`, never handed out before.
    ///
    /// # Errors
    /// [`SequenceError`] when the reservation cannot be made durable; no
    /// number is handed out then.
    pub fn next(&mut self, device: &Name) -> Result<u64, SequenceError> {
        if !self.counters.contains_key(device) {
            let start = self.stored(device)?;
            self.counters.insert(
                device.clone(),
                Counter {
                    next: start,
                    reserved_until: start,
                },
            );
        }
        let path = self.path_of(device);
        let Some(counter) = self.counters.get_mut(device) else {
            return Err(SequenceError {
                path,
                source: std::io::Error::other("counter vanished"),
            });
        };
        if counter.next >= counter.reserved_until {
            let until = counter.next + BLOCK;
            write_durably(&self.dir, &path, &until.to_string()).map_err(|source| {
                SequenceError {
                    path: path.clone(),
                    source,
                }
            })?;
            counter.reserved_until = until;
        }
        let number = counter.next;
        counter.next += 1;
        Ok(number)
    }

    fn stored(&self, device: &Name) -> Result<u64, SequenceError> {
        let path = self.path_of(device);
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| SequenceError {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(SequenceError { path, source }),
        }
    }

    fn path_of(&self, device: &Name) -> PathBuf {
        self.dir.join(format!("{device}.seq"))
    }
}

fn write_durably(dir: &Path, path: &Path, value: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    writeln!(file, "{value}")?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_increase_across_restarts_and_devices_are_independent() {
        let dir = tempfile::tempdir().unwrap();
        let a: Name = "a".parse().unwrap();
        let b: Name = "b".parse().unwrap();
        let mut seq = Sequences::open(dir.path()).unwrap();
        let first: Vec<u64> = (0..5).map(|_| seq.next(&a).unwrap()).collect();
        assert_eq!(first, [0, 1, 2, 3, 4]);
        assert_eq!(seq.next(&b).unwrap(), 0);
        drop(seq);
        // A restart (or crash) continues above everything handed out.
        let mut seq = Sequences::open(dir.path()).unwrap();
        let after = seq.next(&a).unwrap();
        assert!(after > 4, "{after}");
        for _ in 0..(2 * BLOCK) {
            seq.next(&a).unwrap();
        }
        let last = seq.next(&a).unwrap();
        drop(seq);
        let mut seq = Sequences::open(dir.path()).unwrap();
        assert!(seq.next(&a).unwrap() > last);
    }

    #[test]
    fn the_epoch_stays_across_restarts_and_changes_when_the_state_is_wiped() {
        let dir = tempfile::tempdir().unwrap();
        let epoch = Sequences::open(dir.path()).unwrap().epoch();
        assert_eq!(Sequences::open(dir.path()).unwrap().epoch(), epoch);
        fs::remove_dir_all(dir.path()).unwrap();
        assert_ne!(Sequences::open(dir.path()).unwrap().epoch(), epoch);
    }
}
