//! The durable spool: every sealed image the gateway accepted, on disk,
//! until its result arrives.
//!
//! One file per image, `{order:016x}-{message_id}.mgsi`, holding only the
//! sealed bytes (no pixels in the clear, no keys). A file is written under
//! `tmp/`, flushed to disk (`fsync`), renamed into place and the directory
//! flushed, so after a `kill -9` or a power cut an image is either wholly in
//! the spool or was never accepted; leftovers in `tmp/` are discarded at
//! start. Plain files rather than an embedded database: images are large
//! blobs written once and deleted once, which a copy-on-write B-tree would
//! write twice, and hospital IT can inspect, count and back up a folder.
//!
//! The spool is bounded in bytes. When an image does not fit, [`Spool::put`]
//! refuses it with [`SpoolError::Full`]; the caller refuses the capture at
//! its source (the sensor keeps its frame, the hot-folder file stays put) —
//! nothing already accepted is ever dropped to make room.
//!
//! Whether an entry was published is kept in memory only: after a restart
//! every entry is published again with its original message id, and the
//! receiver answers a repeat with the result it already gave.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use medgate_shared::envelope;
use medgate_shared::ids::{MessageId, Name};

/// File name suffix of a spooled image.
const SUFFIX: &str = ".mgsi";

/// Why the spool refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The image does not fit in the configured bound.
    #[error(
        "spool full: {used} of {limit} bytes used, an image of {wanted} bytes does not fit (spool.max_bytes)"
    )]
    Full {
        /// Bytes in use.
        used: u64,
        /// The bound.
        limit: u64,
        /// The refused image's size.
        wanted: u64,
    },
    /// A file operation failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One spooled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its message id.
    pub id: MessageId,
    /// The capturing device (from its header).
    pub device: Name,
    /// Size of the sealed bytes.
    pub bytes: u64,
    order: u64,
}

/// The spool folder and its index.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limit: u64,
    used: u64,
    next: u64,
    by_order: BTreeMap<u64, Entry>,
    by_id: HashMap<MessageId, u64>,
}

/// What opening an existing spool found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Images recovered, to be published again.
    pub entries: usize,
    /// Half-written files from an interrupted write, removed.
    pub discarded_partial: usize,
    /// Files that do not parse as sealed images, moved to `corrupt/`.
    pub quarantined: usize,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, bounded to `limit`
    /// bytes, and indexes what an earlier run left there.
    ///
    /// # Errors
    /// [`SpoolError::Io`] when the folder cannot be created or read.
    pub fn open(dir: &Path, limit: u64) -> Result<(Self, Recovery), SpoolError> {
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let mut recovery = Recovery::default();
        for leftover in fs::read_dir(&tmp).map_err(io(&tmp))? {
            let path = leftover.map_err(io(&tmp))?.path();
            fs::remove_file(&path).map_err(io(&path))?;
            recovery.discarded_partial += 1;
        }
        let mut spool = Self {
            dir: dir.to_path_buf(),
            limit,
            used: 0,
            next: 0,
            by_order: BTreeMap::new(),
            by_id: HashMap::new(),
        };
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for item in fs::read_dir(dir).map_err(io(dir))? {
            let path = item.map_err(io(dir))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            match stem
                .split_once('-')
                .and_then(|(o, _)| u64::from_str_radix(o, 16).ok())
            {
                Some(order) => found.push((order, path)),
                None => {
                    spool.quarantine(&path)?;
                    recovery.quarantined += 1;
                }
            }
        }
        found.sort();
        for (order, path) in found {
            let bytes = fs::read(&path).map_err(io(&path))?;
            match envelope::parse(&bytes) {
                Ok(parsed) if !spool.by_id.contains_key(&parsed.header.meta.message_id) => {
                    let entry = Entry {
                        id: parsed.header.meta.message_id,
                        device: parsed.header.meta.device.clone(),
                        bytes: bytes.len() as u64,
                        order,
                    };
                    spool.index(entry);
                    recovery.entries += 1;
                }
                _ => {
                    spool.quarantine(&path)?;
                    recovery.quarantined += 1;
                }
            }
            spool.next = spool.next.max(order + 1);
        }
        Ok((spool, recovery))
    }

    /// Stores a sealed image durably: when this returns `Ok`, the image
    /// survives a crash or power loss.
    ///
    /// # Errors
    /// [`SpoolError::Full`] when it does not fit (nothing written);
    /// [`SpoolError::Io`] when the disk fails (nothing kept).
    pub fn put(&mut self, id: MessageId, device: &Name, sealed: &[u8]) -> Result<(), SpoolError> {
        if self.by_id.contains_key(&id) {
            return Ok(());
        }
        let wanted = sealed.len() as u64;
        if self.used + wanted > self.limit {
            return Err(SpoolError::Full {
                used: self.used,
                limit: self.limit,
                wanted,
            });
        }
        let order = self.next;
        let name = format!("{order:016x}-{id}{SUFFIX}");
        let tmp = self.dir.join("tmp").join(&name);
        let path = self.dir.join(&name);
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(sealed)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&self.dir)
        })();
        if let Err(source) = written {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(&path);
            return Err(SpoolError::Io { path, source });
        }
        self.next += 1;
        self.index(Entry {
            id,
            device: device.clone(),
            bytes: wanted,
            order,
        });
        Ok(())
    }

    /// The sealed bytes of an entry.
    ///
    /// # Errors
    /// [`SpoolError::Io`] when the file cannot be read.
    pub fn read(&self, id: &MessageId) -> Result<Option<Vec<u8>>, SpoolError> {
        let Some(entry) = self.by_id.get(id).and_then(|o| self.by_order.get(o)) else {
            return Ok(None);
        };
        let path = self.path_of(entry);
        fs::read(&path).map(Some).map_err(io(&path))
    }

    /// Deletes an entry (its result has arrived). Returns whether it was there.
    ///
    /// # Errors
    /// [`SpoolError::Io`] when the file cannot be removed.
    pub fn remove(&mut self, id: &MessageId) -> Result<Option<Entry>, SpoolError> {
        let Some(order) = self.by_id.get(id).copied() else {
            return Ok(None);
        };
        let Some(entry) = self.by_order.get(&order).cloned() else {
            return Ok(None);
        };
        let path = self.path_of(&entry);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SpoolError::Io { path, source }),
        }
        // Not flushing the folder here is safe: an entry that reappears
        // after a power cut is published again and answered again.
        self.by_id.remove(id);
        self.by_order.remove(&order);
        self.used -= entry.bytes;
        Ok(Some(entry))
    }

    /// Entries, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.by_order.values()
    }

    /// Whether an entry is held.
    pub fn contains(&self, id: &MessageId) -> bool {
        self.by_id.contains_key(id)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.by_order.len()
    }

    /// Whether the spool is empty.
    pub fn is_empty(&self) -> bool {
        self.by_order.is_empty()
    }

    /// Bytes in use.
    pub fn used_bytes(&self) -> u64 {
        self.used
    }

    /// The bound in bytes.
    pub fn limit_bytes(&self) -> u64 {
        self.limit
    }

    fn index(&mut self, entry: Entry) {
        self.used += entry.bytes;
        self.by_id.insert(entry.id, entry.order);
        self.by_order.insert(entry.order, entry);
    }

    fn path_of(&self, entry: &Entry) -> PathBuf {
        self.dir
            .join(format!("{:016x}-{}{SUFFIX}", entry.order, entry.id))
    }

    fn quarantine(&self, path: &Path) -> Result<(), SpoolError> {
        let corrupt = self.dir.join("corrupt");
        fs::create_dir_all(&corrupt).map_err(io(&corrupt))?;
        let target = corrupt.join(path.file_name().unwrap_or_default());
        tracing::warn!(file = %path.display(), "spool file is not a sealed image; moved to corrupt/");
        fs::rename(path, &target).map_err(io(path))
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use medgate_shared::header::{ImageMeta, Modality};
    use medgate_shared::keys::ReceiverPrivateKey;
    use medgate_shared::pixels::{PixelFormat, Pixels};
    use medgate_shared::seal::{RotationPolicy, Sealer};

    use super::*;

    fn key() -> &'static ReceiverPrivateKey {
        static KEY: OnceLock<ReceiverPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| ReceiverPrivateKey::generate(3072).unwrap())
    }

    fn sealed(device: &str, sequence: u64) -> (MessageId, Name, Vec<u8>) {
        let meta = ImageMeta {
            message_id: MessageId::random(),
            site: "s".parse().unwrap(),
            gateway: "g".parse().unwrap(),
            device: device.parse().unwrap(),
            sequence,
            captured_at_ms: 0,
            modality: Modality::Sc,
            model_hint: None,
        };
        let pixels = Pixels::new(16, 16, PixelFormat::Gray8, vec![sequence as u8; 256]).unwrap();
        let mut sealer = Sealer::new(key().public().clone(), RotationPolicy::default());
        let bytes = sealer.seal(&meta, &pixels).unwrap();
        (meta.message_id, meta.device, bytes)
    }

    #[test]
    fn entries_survive_a_reopen_in_order_and_leave_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery, Recovery::default());
        let items: Vec<_> = (0..5).map(|i| sealed("cam-1", i)).collect();
        for (id, device, bytes) in &items {
            spool.put(*id, device, bytes).unwrap();
        }
        spool.remove(&items[1].0).unwrap().unwrap();
        let used = spool.used_bytes();
        drop(spool);

        let (spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery.entries, 4);
        assert_eq!(spool.used_bytes(), used);
        let order: Vec<MessageId> = spool.entries().map(|e| e.id).collect();
        let expected: Vec<MessageId> = [0, 2, 3, 4].iter().map(|&i| items[i].0).collect();
        assert_eq!(order, expected);
        assert_eq!(spool.read(&items[3].0).unwrap().unwrap(), items[3].2);
        assert_eq!(spool.read(&items[1].0).unwrap(), None);
    }

    #[test]
    fn a_full_spool_refuses_without_dropping_anything() {
        let dir = tempfile::tempdir().unwrap();
        let (id, device, bytes) = sealed("cam-1", 1);
        let limit = bytes.len() as u64 * 2;
        let (mut spool, _) = Spool::open(dir.path(), limit).unwrap();
        spool.put(id, &device, &bytes).unwrap();
        let (id2, _, bytes2) = sealed("cam-1", 2);
        spool.put(id2, &device, &bytes2).unwrap();
        let (id3, _, bytes3) = sealed("cam-1", 3);
        let refused = spool.put(id3, &device, &bytes3).unwrap_err();
        assert!(matches!(refused, SpoolError::Full { .. }), "{refused}");
        assert!(refused.to_string().contains("spool.max_bytes"));
        assert_eq!(spool.len(), 2);
        spool.remove(&id).unwrap();
        spool.put(id3, &device, &bytes3).unwrap();
        assert_eq!(spool.len(), 2);
    }

    #[test]
    fn interrupted_writes_and_foreign_files_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let (id, device, bytes) = sealed("cam-1", 1);
        spool.put(id, &device, &bytes).unwrap();
        drop(spool);
        // A crash between write and rename leaves a file in tmp/; a torn or
        // foreign file in the folder is not a sealed image.
        fs::write(dir.path().join("tmp/0000000000000009-x.mgsi"), b"half").unwrap();
        fs::write(dir.path().join("0000000000000005-y.mgsi"), &bytes[..40]).unwrap();
        let (spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery.entries, 1);
        assert_eq!(recovery.discarded_partial, 1);
        assert_eq!(recovery.quarantined, 1);
        assert!(spool.contains(&id));
        assert!(dir.path().join("corrupt/0000000000000005-y.mgsi").exists());
    }
}
