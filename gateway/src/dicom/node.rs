//! The gateway as a DICOM node, as the config check makes it: who may
//! store to it, where it listens, and the PACS its reports go to.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use medgate_shared::header::{Anatomy, Modality};
use medgate_shared::ids::Name;

/// An application entity title: 1 to 16 characters of printable ASCII
/// without `\`, not all spaces (PS3.5 §6.2, VR AE). Leading and trailing
/// spaces are not significant and are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AeTitle(String);

/// Why a text is not an AE title.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AeTitleError {
    /// Empty or only spaces.
    #[error("an AE title cannot be empty")]
    Empty,
    /// Over 16 characters.
    #[error("{0:?} is longer than the 16 characters an AE title allows")]
    TooLong(String),
    /// A control character, a backslash or non-ASCII.
    #[error("{0:?} holds a character an AE title cannot (printable ASCII without \\ only)")]
    Character(String),
}

impl FromStr for AeTitle {
    type Err = AeTitleError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let trimmed = value.trim_matches(|c| c == ' ' || c == '\0');
        if trimmed.is_empty() {
            return Err(AeTitleError::Empty);
        }
        if trimmed.len() > 16 {
            return Err(AeTitleError::TooLong(trimmed.to_owned()));
        }
        if !trimmed
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
        {
            return Err(AeTitleError::Character(trimmed.to_owned()));
        }
        Ok(Self(trimmed.to_owned()))
    }
}

impl AeTitle {
    /// The title without padding.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other`, as it came over the wire (padded with spaces or
    /// NULs), names this title.
    pub fn matches(&self, other: &str) -> bool {
        other.trim_matches(|c| c == ' ' || c == '\0') == self.0
    }
}

impl fmt::Display for AeTitle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The PACS the Structured Reports go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pacs {
    /// Its AE title.
    pub ae_title: AeTitle,
    /// `host:port`.
    pub address: String,
    /// Longest wait between two attempts.
    pub retry_max: Duration,
}

/// A checked `[dicom]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomNode {
    /// The device name its images carry.
    pub device: Name,
    /// This node's AE title.
    pub ae_title: AeTitle,
    /// Where it listens (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Calling AE titles allowed to associate.
    pub callers: Vec<AeTitle>,
    /// Associations served at once.
    pub max_associations: usize,
    /// Silence after which an association is aborted.
    pub timeout: Duration,
    /// Modality of objects whose own code the gateway does not know.
    pub modality: Modality,
    /// Body part and view of objects that do not name their own.
    pub anatomy: Anatomy,
    /// Where reports go.
    pub pacs: Pacs,
    /// `{state_dir}/dicom`: the references and the report outbox.
    pub state_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ae_titles_follow_the_standard() {
        let title: AeTitle = " CR_ROOM1 ".parse().unwrap();
        assert_eq!(title.as_str(), "CR_ROOM1");
        assert!(title.matches("CR_ROOM1        "));
        assert!(title.matches("CR_ROOM1\0"));
        assert!(!title.matches("CR_ROOM2"));
        assert_eq!("   ".parse::<AeTitle>(), Err(AeTitleError::Empty));
        assert!(matches!(
            "A_TITLE_OF_17_CHR".parse::<AeTitle>(),
            Err(AeTitleError::TooLong(_))
        ));
        assert!(matches!(
            "BACK\\SLASH".parse::<AeTitle>(),
            Err(AeTitleError::Character(_))
        ));
        assert!(matches!(
            "ÜBER".parse::<AeTitle>(),
            Err(AeTitleError::Character(_))
        ));
    }
}
