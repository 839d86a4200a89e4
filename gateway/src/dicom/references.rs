//! What each DICOM image's message refers to in the hospital: its SOP
//! instance, series and study, and the patient and study attributes a
//! report must repeat so that the PACS files it beside the image.
//!
//! None of it is sealed or published (the sealed image carries pixels and
//! the allow-listed attributes only, see `DICOM.md`), logged, or counted.
//! It is kept in `{state_dir}/dicom/references/{message_id}.json`, readable
//! by the gateway's user only, from the moment the image is spooled until
//! its result is in the report outbox (the report then carries it, and is
//! deleted once the PACS has stored it).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use medgate_shared::ids::MessageId;
use serde::{Deserialize, Serialize};

/// The attributes copied from the image into its report, beyond the UIDs:
/// Patient (PS3.3 C.7.1.1) and General Study (C.7.2.1) attributes.
pub const CONTEXT: &[(Tag, &str)] = &[
    (tags::PATIENT_NAME, "PatientName"),
    (tags::PATIENT_ID, "PatientID"),
    (tags::ISSUER_OF_PATIENT_ID, "IssuerOfPatientID"),
    (tags::PATIENT_BIRTH_DATE, "PatientBirthDate"),
    (tags::PATIENT_SEX, "PatientSex"),
    (tags::STUDY_DATE, "StudyDate"),
    (tags::STUDY_TIME, "StudyTime"),
    (tags::ACCESSION_NUMBER, "AccessionNumber"),
    (tags::REFERRING_PHYSICIAN_NAME, "ReferringPhysicianName"),
    (tags::STUDY_ID, "StudyID"),
];

/// One image's references. Its `Debug` shows none of them, so that no log
/// line can carry them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct References {
    /// SOP Class UID (0008,0016).
    pub sop_class_uid: String,
    /// SOP Instance UID (0008,0018).
    pub sop_instance_uid: String,
    /// Series Instance UID (0020,000E).
    pub series_instance_uid: String,
    /// Study Instance UID (0020,000D).
    pub study_instance_uid: String,
    /// [`CONTEXT`] attributes present in the image, by keyword.
    pub context: BTreeMap<String, String>,
}

impl std::fmt::Debug for References {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "References {{ {} attributes, withheld }}",
            self.context.len() + 4
        )
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[error("DICOM references at {path}: {source}")]
pub struct StoreError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The folder of references.
#[derive(Debug, Clone)]
pub struct ReferenceStore {
    dir: PathBuf,
}

impl ReferenceStore {
    /// The store in `dir`, created (mode 0700) if missing.
    ///
    /// # Errors
    /// [`StoreError`] when the folder cannot be created.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(dir).map_err(|source| StoreError {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &MessageId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Records `references` for `id`, durably.
    ///
    /// # Errors
    /// [`StoreError`] when it cannot be written.
    pub fn put(&self, id: &MessageId, references: &References) -> Result<(), StoreError> {
        let path = self.path(id);
        let body = serde_json::to_vec(references).map_err(|e| StoreError {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_private(&self.dir, &path, &body).map_err(|source| StoreError { path, source })
    }

    /// The references of `id`, if any (unreadable ones count as none).
    pub fn get(&self, id: &MessageId) -> Option<References> {
        let bytes = std::fs::read(self.path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Forgets `id`.
    ///
    /// # Errors
    /// [`StoreError`] when the file exists and cannot be removed.
    pub fn remove(&self, id: &MessageId) -> Result<(), StoreError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError { path, source }),
        }
    }

    /// How many images' references are kept.
    pub fn len(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Creates `dir` and its parents, the last with mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `body` to `path` in `dir` (mode 0600): a temporary file, flushed,
/// renamed into place, the folder flushed.
pub(crate) fn write_private(dir: &Path, path: &Path, body: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(body)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn references_are_private_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReferenceStore::open(&dir.path().join("refs")).unwrap();
        let id = MessageId::random();
        let references = References {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
            sop_instance_uid: "1.2.3.4".into(),
            series_instance_uid: "1.2.3".into(),
            study_instance_uid: "1.2".into(),
            context: [("PatientID".to_owned(), "P-1".to_owned())].into(),
        };
        assert!(store.get(&id).is_none());
        store.put(&id, &references).unwrap();
        assert_eq!(store.get(&id), Some(references));
        assert_eq!(store.len(), 1);
        let mode = std::fs::metadata(dir.path().join("refs").join(format!("{id}.json")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(dir.path().join("refs"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        store.remove(&id).unwrap();
        store.remove(&id).unwrap();
        assert!(store.is_empty());
    }
}
