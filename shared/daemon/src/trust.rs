//! The trust list: which gateways a receiver accepts images from. Hospital IT
//! keeps it as one TOML file (enrolling a gateway is adding three lines,
//! from `medgate-gateway keygen`); a running receiver reloads it when the
//! file changes, and keeps the last good list when an edit does not parse.
//!
//! ```toml
//! [[gateway]]
//! site = "st-mary"
//! name = "gw-1"
//! public_key = "5b0c…"   # 64 hex digits: the gateway's Ed25519 public key
//! ```
//!
//! A gateway may be listed more than once (a key being rotated); an image
//! names the key it was signed with by id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use medgate_shared::identity::GatewayPublicKey;
use medgate_shared::ids::{Name, SignerId};
use medgate_shared::seal::TrustedGateways;
use serde::{Deserialize, Serialize};

/// One enrolled gateway key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolled {
    /// Its site.
    pub site: Name,
    /// Its name.
    pub name: Name,
    /// Its Ed25519 public key, 64 hex digits.
    #[serde(with = "hex_key")]
    pub public_key: GatewayPublicKey,
}

mod hex_key {
    use medgate_shared::identity::GatewayPublicKey;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &GatewayPublicKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&key.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<GatewayPublicKey, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    gateway: Vec<Enrolled>,
}

/// Why a trust list was not read.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be read.
    #[error("trust list {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid trust list.
    #[error("trust list {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
}

/// The enrolled gateways, by signing key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustList {
    by_signer: HashMap<SignerId, Enrolled>,
}

impl TrustList {
    /// A list of `entries`.
    pub fn new(entries: impl IntoIterator<Item = Enrolled>) -> Self {
        Self {
            by_signer: entries
                .into_iter()
                .map(|e| (e.public_key.id(), e))
                .collect(),
        }
    }

    /// Parses the TOML text of a trust list read from `path`.
    ///
    /// # Errors
    /// [`TrustError::Invalid`] naming the line and what is wrong.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TrustError> {
        let file: File = toml::from_str(text).map_err(|e| TrustError::Invalid {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut seen = HashMap::new();
        for entry in &file.gateway {
            if let Some(other) = seen.insert(entry.public_key.id(), entry)
                && (&other.site, &other.name) != (&entry.site, &entry.name)
            {
                return Err(TrustError::Invalid {
                    path: path.to_owned(),
                    message: format!(
                        "one public key is enrolled for both {}/{} and {}/{}",
                        other.site, other.name, entry.site, entry.name
                    ),
                });
            }
        }
        Ok(Self::new(file.gateway))
    }

    /// Reads the file at `path`.
    ///
    /// # Errors
    /// [`TrustError`].
    pub fn read(path: &Path) -> Result<Self, TrustError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrustError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The TOML text of this list, entries sorted by site, name and key.
    pub fn to_toml(&self) -> String {
        let mut gateway: Vec<Enrolled> = self.by_signer.values().cloned().collect();
        gateway.sort_by_key(|e| (e.site.clone(), e.name.clone(), e.public_key.to_string()));
        let body = toml::to_string(&File { gateway }).unwrap_or_default();
        format!(
            "# medgate trust list: the gateways whose images receivers accept.\n\
             # One [[gateway]] per signing key (see `medgate-gateway keygen`).\n\n{body}"
        )
    }

    /// The enrolled entries, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &Enrolled> {
        self.by_signer.values()
    }

    /// How many keys are enrolled.
    pub fn len(&self) -> usize {
        self.by_signer.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_signer.is_empty()
    }
}

impl TrustedGateways for TrustList {
    fn key_for(&self, site: &Name, gateway: &Name, signer: &SignerId) -> Option<GatewayPublicKey> {
        self.by_signer
            .get(signer)
            .filter(|e| &e.site == site && &e.name == gateway)
            .map(|e| e.public_key)
    }
}

/// A trust list file that a running receiver keeps up to date: [`refresh`]
/// rereads it when its modification time or size changed, and keeps the
/// previous list when the new text does not parse (and says so).
///
/// [`refresh`]: TrustFile::refresh
#[derive(Debug)]
pub struct TrustFile {
    path: PathBuf,
    stamp: RwLock<Option<(SystemTime, u64)>>,
    list: RwLock<Arc<TrustList>>,
}

/// What a [`TrustFile::refresh`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The file did not change.
    Unchanged,
    /// A new list is in force, with this many keys.
    Reloaded(usize),
    /// The file changed but was not read; the previous list stays.
    Kept(String),
}

impl TrustFile {
    /// Reads `path` now.
    ///
    /// # Errors
    /// [`TrustError`] when the file is missing or invalid at start.
    pub fn open(path: &Path) -> Result<Self, TrustError> {
        let stamp = stamp_of(path);
        let list = TrustList::read(path)?;
        Ok(Self {
            path: path.to_owned(),
            stamp: RwLock::new(stamp),
            list: RwLock::new(Arc::new(list)),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The list in force.
    pub fn current(&self) -> Arc<TrustList> {
        self.list
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Rereads the file if it changed.
    pub fn refresh(&self) -> Refresh {
        let now = stamp_of(&self.path);
        {
            let mut stamp = self
                .stamp
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *stamp == now {
                return Refresh::Unchanged;
            }
            *stamp = now;
        }
        match TrustList::read(&self.path) {
            Ok(list) => {
                let count = list.len();
                *self
                    .list
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(list);
                Refresh::Reloaded(count)
            }
            Err(e) => Refresh::Kept(e.to_string()),
        }
    }
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use medgate_shared::identity::GatewayIdentity;

    use super::*;

    fn enrolled(site: &str, name: &str, key: &GatewayIdentity) -> Enrolled {
        Enrolled {
            site: site.parse().unwrap(),
            name: name.parse().unwrap(),
            public_key: key.public(),
        }
    }

    #[test]
    fn a_key_is_trusted_only_for_its_own_site_and_gateway() {
        let key = GatewayIdentity::generate();
        let list = TrustList::new([enrolled("st-mary", "gw-1", &key)]);
        let id = key.public().id();
        let (site, gw) = ("st-mary".parse().unwrap(), "gw-1".parse().unwrap());
        assert_eq!(list.key_for(&site, &gw, &id), Some(key.public()));
        assert_eq!(list.key_for(&"other".parse().unwrap(), &gw, &id), None);
        assert_eq!(list.key_for(&site, &"gw-2".parse().unwrap(), &id), None);
        let stranger = GatewayIdentity::generate().public().id();
        assert_eq!(list.key_for(&site, &gw, &stranger), None);
    }

    #[test]
    fn the_file_round_trips_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateways.toml");
        let a = GatewayIdentity::generate();
        let b = GatewayIdentity::generate();
        let list = TrustList::new([enrolled("s", "gw-1", &a), enrolled("s", "gw-2", &b)]);
        std::fs::write(&path, list.to_toml()).unwrap();
        assert_eq!(TrustList::read(&path).unwrap(), list);

        let bad = "[[gateway]]\nsite = \"s\"\nname = \"gw/1\"\npublic_key = \"00\"\n";
        let e = TrustList::parse(bad, &path).unwrap_err().to_string();
        assert!(e.contains("gateways.toml") && e.contains("line 3"), "{e}");
        let twice = format!(
            "{}\n[[gateway]]\nsite = \"s\"\nname = \"gw-9\"\npublic_key = \"{}\"\n",
            list.to_toml(),
            a.public()
        );
        let e = TrustList::parse(&twice, &path).unwrap_err().to_string();
        assert!(e.contains("both s/gw-1 and s/gw-9"), "{e}");
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_edit_keeps_the_old_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateways.toml");
        let a = GatewayIdentity::generate();
        std::fs::write(&path, TrustList::new([enrolled("s", "a", &a)]).to_toml()).unwrap();
        let file = TrustFile::open(&path).unwrap();
        assert_eq!(file.refresh(), Refresh::Unchanged);
        let b = GatewayIdentity::generate();
        let both = TrustList::new([enrolled("s", "a", &a), enrolled("s", "bb", &b)]);
        std::fs::write(&path, both.to_toml()).unwrap();
        assert_eq!(file.refresh(), Refresh::Reloaded(2));
        assert_eq!(*file.current(), both);
        std::fs::write(&path, "[[gateway]]\nsite = 3\n").unwrap();
        assert!(matches!(file.refresh(), Refresh::Kept(_)));
        assert_eq!(*file.current(), both);
    }
}
