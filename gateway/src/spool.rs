//! The durable spool: every sealed image the gateway accepted, on disk,
//! until its result arrives.
//!
//! One file per image, `{order:016x}-{message_id}.mgsi`: the magic `MGSP`,
//! a version byte (1), the image's 32-byte answer key (which authenticates
//! answers about this one image and opens nothing), its 64-byte SHA-512 tag,
//! then the sealed bytes (no pixels in the clear, no session or private
//! keys). A file is written under
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
//!
//! An image a receiver refused, or that nobody answered after the configured
//! number of publications, moves to `quarantine/` with a `.json` note of why:
//! kept for hospital IT, never published again.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use medgate_shared::answer::AnswerKey;
use medgate_shared::envelope::{self, Sealed, TAG_LEN};
use medgate_shared::ids::{MessageId, Name};

/// File name suffix of a spooled image.
const SUFFIX: &str = ".mgsi";
/// The first bytes of a spool file.
const FILE_MAGIC: [u8; 5] = *b"MGSP\x01";
/// Magic, answer key, SHA-512 tag.
const FILE_PREFIX: usize = 5 + 32 + TAG_LEN;
/// Folder of quarantined images, inside the spool folder.
pub const QUARANTINE: &str = "quarantine";

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
    /// Site, gateway and device from its header.
    pub site: Name,
    /// Gateway.
    pub gateway: Name,
    /// The capturing device.
    pub device: Name,
    /// The device's sequence number.
    pub sequence: u64,
    /// The image's SHA-512 tag, which a result must name.
    pub sha512: [u8; TAG_LEN],
    /// Authenticates answers about it.
    pub answer_key: AnswerKey,
    /// Size of the file.
    pub bytes: u64,
    order: u64,
}

impl Entry {
    /// Size of the sealed image it holds (what is published).
    pub fn sealed_bytes(&self) -> u64 {
        self.bytes.saturating_sub(FILE_PREFIX as u64)
    }

    fn from_file(contents: &[u8], order: u64) -> Option<Self> {
        let (prefix, sealed) = contents.split_at_checked(FILE_PREFIX)?;
        Self::from_parts(prefix, sealed, order)
    }

    /// An entry from a file's prefix and the sealed image after it.
    fn from_parts(prefix: &[u8], sealed: &[u8], order: u64) -> Option<Self> {
        if prefix.len() != FILE_PREFIX || prefix[..5] != FILE_MAGIC {
            return None;
        }
        let header = envelope::parse(sealed).ok()?.header;
        let mut key = [0u8; 32];
        key.copy_from_slice(&prefix[5..37]);
        let mut sha512 = [0u8; TAG_LEN];
        sha512.copy_from_slice(&prefix[37..]);
        Some(Self {
            id: header.meta.message_id,
            site: header.meta.site,
            gateway: header.meta.gateway,
            device: header.meta.device,
            sequence: header.meta.sequence,
            sha512,
            answer_key: AnswerKey::from_bytes(key),
            bytes: (prefix.len() + sealed.len()) as u64,
            order,
        })
    }
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
    /// Files that do not parse as spooled images, moved to `corrupt/`.
    pub quarantined: usize,
}

/// Why an image was quarantined, as its `.json` note records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuarantineNote {
    /// The image's message id.
    pub message_id: String,
    /// Its device.
    pub device: String,
    /// Its sequence number.
    pub sequence: u64,
    /// `refused` (a receiver's authenticated refusal) or `unanswered`.
    pub cause: String,
    /// The receiver's reason (`aead`, `tag_mismatch`, `replay`, …), or the
    /// number of publications without an answer.
    pub reason: String,
    /// The receiver that refused it, if any.
    pub receiver: Option<String>,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
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
            // One unreadable file must not stop the gateway: it is set
            // aside like any other that is not a spool file.
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!(file = %path.display(), cause = %e, "spool file cannot be read");
                    if let Err(e) = spool.quarantine(&path) {
                        tracing::error!(cause = %e, "and cannot be moved aside; it is skipped");
                    }
                    recovery.quarantined += 1;
                    spool.next = spool.next.max(order + 1);
                    continue;
                }
            };
            match Entry::from_file(&bytes, order) {
                Some(entry) if !spool.by_id.contains_key(&entry.id) => {
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
    pub fn put(&mut self, sealed: &Sealed) -> Result<MessageId, SpoolError> {
        // The prefix and the image are written one after the other, so
        // that a large image is not copied once more.
        let mut prefix = Vec::with_capacity(FILE_PREFIX);
        prefix.extend_from_slice(&FILE_MAGIC);
        prefix.extend_from_slice(sealed.answer_key.as_bytes());
        prefix.extend_from_slice(&sealed.sha512);
        let order = self.next;
        let Some(entry) = Entry::from_parts(&prefix, &sealed.bytes, order) else {
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a sealed image"),
            });
        };
        let id = entry.id;
        if self.by_id.contains_key(&id) {
            return Ok(id);
        }
        let wanted = entry.bytes;
        if self.used + wanted > self.limit {
            return Err(SpoolError::Full {
                used: self.used,
                limit: self.limit,
                wanted,
            });
        }
        let name = format!("{order:016x}-{id}{SUFFIX}");
        let tmp = self.dir.join("tmp").join(&name);
        let path = self.dir.join(&name);
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&prefix)?;
            file.write_all(&sealed.bytes)?;
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
        self.index(entry);
        Ok(id)
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
        let mut contents = fs::read(&path).map_err(io(&path))?;
        if contents.len() < FILE_PREFIX {
            return Err(SpoolError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "truncated"),
            });
        }
        contents.drain(..FILE_PREFIX);
        Ok(Some(contents))
    }

    /// The entry of `id`, if held.
    pub fn get(&self, id: &MessageId) -> Option<&Entry> {
        self.by_id.get(id).and_then(|o| self.by_order.get(o))
    }

    /// Moves an entry to `quarantine/` beside a `.json` note of why; it is
    /// never published again. Returns the entry if it was held.
    ///
    /// # Errors
    /// [`SpoolError::Io`] when the file cannot be moved or the note written.
    pub fn quarantine_entry(
        &mut self,
        id: &MessageId,
        note: &QuarantineNote,
    ) -> Result<Option<Entry>, SpoolError> {
        let Some(entry) = self.get(id).cloned() else {
            return Ok(None);
        };
        let folder = self.dir.join(QUARANTINE);
        fs::create_dir_all(&folder).map_err(io(&folder))?;
        let from = self.path_of(&entry);
        let name = format!("{:016x}-{}", entry.order, entry.id);
        let note_path = folder.join(format!("{name}.json"));
        let body = serde_json::to_vec_pretty(note).unwrap_or_default();
        fs::write(&note_path, body).map_err(io(&note_path))?;
        let to = folder.join(format!("{name}{SUFFIX}"));
        fs::rename(&from, &to).map_err(io(&from))?;
        sync_dir(&folder).map_err(io(&folder))?;
        sync_dir(&self.dir).map_err(io(&self.dir))?;
        self.by_id.remove(id);
        self.by_order.remove(&entry.order);
        self.used -= entry.bytes;
        Ok(Some(entry))
    }

    /// How many images are in `quarantine/`, and the notes of the `recent`
    /// latest, newest first.
    pub fn quarantine_summary(&self, recent: usize) -> (usize, Vec<QuarantineNote>) {
        let Ok(items) = fs::read_dir(self.dir.join(QUARANTINE)) else {
            return (0, Vec::new());
        };
        let mut notes: Vec<PathBuf> = Vec::new();
        let mut count = 0;
        for item in items.filter_map(Result::ok) {
            let name = item.file_name().to_string_lossy().into_owned();
            if name.ends_with(SUFFIX) {
                count += 1;
            } else if name.ends_with(".json") {
                notes.push(item.path());
            }
        }
        // Names start with the spool order, so they sort by age.
        notes.sort_unstable_by(|a, b| b.cmp(a));
        let recent = notes
            .iter()
            .take(recent)
            .filter_map(|path| serde_json::from_slice(&fs::read(path).ok()?).ok())
            .collect();
        (count, recent)
    }

    /// How many images are in `quarantine/`.
    pub fn quarantined(&self) -> usize {
        fs::read_dir(self.dir.join(QUARANTINE)).map_or(0, |items| {
            items
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(SUFFIX))
                .count()
        })
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
    use medgate_shared::identity::GatewayIdentity;
    use medgate_shared::keys::ReceiverPrivateKey;
    use medgate_shared::pixels::{PixelFormat, Pixels};
    use medgate_shared::seal::{RotationPolicy, Sealer};

    use super::*;

    fn key() -> &'static ReceiverPrivateKey {
        static KEY: OnceLock<ReceiverPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| ReceiverPrivateKey::generate(3072).unwrap())
    }

    fn sealed(device: &str, sequence: u64) -> (MessageId, Sealed) {
        let meta = ImageMeta {
            message_id: MessageId::random(),
            site: "s".parse().unwrap(),
            gateway: "g".parse().unwrap(),
            device: device.parse().unwrap(),
            epoch: 1,
            sequence,
            captured_at_ms: 0,
            modality: Modality::Sc,
            model_hint: None,
            anatomy: Default::default(),
        };
        let pixels = Pixels::new(16, 16, PixelFormat::Gray8, vec![sequence as u8; 256]).unwrap();
        let mut sealer = Sealer::new(
            key().public().clone(),
            GatewayIdentity::generate(),
            RotationPolicy::default(),
        );
        (meta.message_id, sealer.seal(&meta, &pixels).unwrap())
    }

    #[test]
    fn entries_survive_a_reopen_in_order_and_leave_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery, Recovery::default());
        let items: Vec<_> = (0..5).map(|i| sealed("cam-1", i)).collect();
        for (id, sealed) in &items {
            assert_eq!(spool.put(sealed).unwrap(), *id);
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
        assert_eq!(spool.read(&items[3].0).unwrap().unwrap(), items[3].1.bytes);
        assert_eq!(spool.read(&items[1].0).unwrap(), None);
        let entry = spool.get(&items[3].0).unwrap();
        assert_eq!(entry.sha512, items[3].1.sha512);
        assert_eq!(entry.answer_key, items[3].1.answer_key);
        assert_eq!(entry.sequence, 3);
    }

    #[test]
    fn a_full_spool_refuses_without_dropping_anything() {
        let dir = tempfile::tempdir().unwrap();
        let (id, first) = sealed("cam-1", 1);
        let limit = (first.bytes.len() + FILE_PREFIX) as u64 * 2;
        let (mut spool, _) = Spool::open(dir.path(), limit).unwrap();
        spool.put(&first).unwrap();
        let (_, second) = sealed("cam-1", 2);
        spool.put(&second).unwrap();
        let (_, third) = sealed("cam-1", 3);
        let refused = spool.put(&third).unwrap_err();
        assert!(matches!(refused, SpoolError::Full { .. }), "{refused}");
        assert!(refused.to_string().contains("spool.max_bytes"));
        assert_eq!(spool.len(), 2);
        spool.remove(&id).unwrap();
        spool.put(&third).unwrap();
        assert_eq!(spool.len(), 2);
    }

    #[test]
    fn interrupted_writes_and_foreign_files_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let (id, first) = sealed("cam-1", 1);
        spool.put(&first).unwrap();
        drop(spool);
        // A crash between write and rename leaves a file in tmp/; a torn or
        // foreign file in the folder is not a sealed image.
        fs::write(dir.path().join("tmp/0000000000000009-x.mgsi"), b"half").unwrap();
        fs::write(
            dir.path().join("0000000000000005-y.mgsi"),
            &first.bytes[..40],
        )
        .unwrap();
        // A bare sealed image (no answer key and tag) is not a spool file,
        // and one that cannot even be read does not stop the start.
        fs::write(dir.path().join("0000000000000006-z.mgsi"), &first.bytes).unwrap();
        fs::create_dir(dir.path().join("0000000000000007-w.mgsi")).unwrap();
        let (spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery.entries, 1);
        assert_eq!(recovery.discarded_partial, 1);
        assert_eq!(recovery.quarantined, 3);
        assert!(spool.contains(&id));
        assert!(dir.path().join("corrupt/0000000000000007-w.mgsi").exists());
        assert!(dir.path().join("corrupt/0000000000000005-y.mgsi").exists());
    }

    #[test]
    fn a_quarantined_image_leaves_the_spool_with_its_note() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let (id, first) = sealed("cam-1", 1);
        spool.put(&first).unwrap();
        let note = QuarantineNote {
            message_id: id.to_string(),
            device: "cam-1".into(),
            sequence: 1,
            cause: "refused".into(),
            reason: "aead".into(),
            receiver: Some("receiver-1".into()),
            at_ms: 5,
        };
        assert!(spool.quarantine_entry(&id, &note).unwrap().is_some());
        assert!(spool.is_empty());
        assert_eq!(spool.used_bytes(), 0);
        assert_eq!(spool.quarantined(), 1);
        drop(spool);
        let (spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery.entries, 0);
        assert_eq!(spool.quarantined(), 1);
        let written = fs::read_dir(dir.path().join(QUARANTINE))
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .unwrap();
        let read: QuarantineNote =
            serde_json::from_slice(&fs::read(written.path()).unwrap()).unwrap();
        assert_eq!(read, note);
    }
}
