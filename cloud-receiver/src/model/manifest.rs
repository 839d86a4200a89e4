//! The training data's manifest: one SHA-512 per sample, written by whoever
//! vouches for the data, verified by `train` before it learns anything. A
//! sample whose hash the manifest does not hold (changed pixels, a changed
//! label, a sample added) is refused and counted; a listed sample that is
//! not there is counted as missing. So poisoned data cannot enter a model
//! silently: what was refused is printed, and recorded in the model card.
//!
//! Format (text, one line per sample, in any order):
//!
//! ```text
//! # medgate training manifest 1
//! train 3f5a…(128 hex digits)
//! val 09c1…
//! ```
//!
//! A sample's hash is SHA-512 of `medgate sample\0`, its width and height
//! (u32 little-endian), its label byte and its pixels. The same sample may
//! be listed more than once; each line admits one copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use medgate_medmnist::Split;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

/// The first line of a manifest.
pub const HEADER: &str = "# medgate training manifest 1";

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A line is not `split sha512-hex`, or the header is missing.
    #[error("{path}:{line}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A parsed manifest: per split, each listed hash and how many copies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifest {
    listed: HashMap<String, HashMap<[u8; 64], usize>>,
    /// SHA-256 of the file, for the model card.
    pub sha256: String,
}

/// What verifying one split found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    /// Samples the manifest holds, kept.
    pub kept: usize,
    /// Samples it does not hold (changed or added), refused.
    pub refused: usize,
    /// Listed samples that were not in the data.
    pub missing: usize,
}

/// The manifest check as the model card records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRecord {
    /// SHA-256 of the manifest file.
    pub sha256: String,
    /// The train split's check.
    pub train: Checked,
    /// The val split's check.
    pub val: Checked,
}

/// The hash of one sample.
pub fn sample_hash(width: usize, height: usize, label: u8, pixels: &[u8]) -> [u8; 64] {
    let mut hasher = Sha512::new();
    hasher.update(b"medgate sample\0");
    hasher.update((width as u32).to_le_bytes());
    hasher.update((height as u32).to_le_bytes());
    hasher.update([label]);
    hasher.update(pixels);
    hasher.finalize().into()
}

/// The manifest of `splits` (name, split), as text.
pub fn write(splits: &[(&str, &Split)]) -> String {
    let mut out = format!("{HEADER}\n");
    for (name, split) in splits {
        for i in 0..split.len {
            let pixels = split.image(i).unwrap_or(&[]);
            let label = split.labels.get(i).copied().unwrap_or(0);
            let hash = sample_hash(split.width, split.height, label, pixels);
            out.push_str(&format!("{name} {}\n", hex::encode(hash)));
        }
    }
    out
}

impl Manifest {
    /// Reads and parses the manifest at `path`.
    ///
    /// # Errors
    /// [`ManifestError`] naming the file and, for syntax, the line.
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses manifest text (`path` names it in errors).
    ///
    /// # Errors
    /// [`ManifestError::Syntax`] at the first bad line.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let bad = |line: usize, reason: String| ManifestError::Syntax {
            path: path.to_owned(),
            line,
            reason,
        };
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, first)) if first.trim_end() == HEADER => {}
            _ => return Err(bad(1, format!("the first line must be {HEADER:?}"))),
        }
        let mut manifest = Self {
            listed: HashMap::new(),
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        };
        for (index, line) in lines {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((split, digest)) = line.split_once(' ') else {
                return Err(bad(index + 1, "expected `split sha512-hex`".into()));
            };
            let mut hash = [0u8; 64];
            hex::decode_to_slice(digest.trim(), &mut hash).map_err(|_| {
                bad(
                    index + 1,
                    "the hash must be 128 hexadecimal digits (SHA-512)".into(),
                )
            })?;
            *manifest
                .listed
                .entry(split.to_owned())
                .or_default()
                .entry(hash)
                .or_default() += 1;
        }
        Ok(manifest)
    }

    /// The samples of `split` (named `name` in the manifest) that it holds,
    /// and what was refused or missing.
    pub fn verify(&self, name: &str, split: &Split) -> (Split, Checked) {
        let mut left = self.listed.get(name).cloned().unwrap_or_default();
        let mut kept = Split {
            len: 0,
            height: split.height,
            width: split.width,
            images: Vec::with_capacity(split.images.len()),
            labels: Vec::with_capacity(split.len),
        };
        let mut checked = Checked::default();
        for i in 0..split.len {
            let pixels = split.image(i).unwrap_or(&[]);
            let label = split.labels.get(i).copied().unwrap_or(0);
            let hash = sample_hash(split.width, split.height, label, pixels);
            match left.get_mut(&hash) {
                Some(copies) if *copies > 0 => {
                    *copies -= 1;
                    kept.images.extend_from_slice(pixels);
                    kept.labels.push(label);
                    kept.len += 1;
                    checked.kept += 1;
                }
                _ => checked.refused += 1,
            }
        }
        checked.missing = left.values().sum();
        (kept, checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(images: &[[u8; 4]], labels: &[u8]) -> Split {
        Split {
            len: images.len(),
            height: 2,
            width: 2,
            images: images.concat(),
            labels: labels.to_vec(),
        }
    }

    #[test]
    fn changed_relabelled_and_added_samples_are_refused_and_counted() {
        let original = split(&[[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]], &[0, 1, 1]);
        let text = write(&[("train", &original)]);
        let manifest = Manifest::parse(&text, Path::new("m.txt")).unwrap();
        let (kept, checked) = manifest.verify("train", &original);
        assert_eq!(
            (kept.images, kept.labels),
            (original.images.clone(), original.labels.clone())
        );
        assert_eq!(
            checked,
            Checked {
                kept: 3,
                refused: 0,
                missing: 0
            }
        );
        // One pixel changed, one label flipped, one sample added twice.
        let tampered = split(
            &[
                [1, 2, 3, 5],
                [5, 6, 7, 8],
                [9, 9, 9, 9],
                [0, 0, 0, 0],
                [0, 0, 0, 0],
            ],
            &[0, 0, 1, 1, 1],
        );
        let (kept, checked) = manifest.verify("train", &tampered);
        assert_eq!(kept.len, 1);
        assert_eq!(kept.images, [9, 9, 9, 9]);
        assert_eq!(
            checked,
            Checked {
                kept: 1,
                refused: 4,
                missing: 2
            }
        );
        // Another split's hashes do not admit these.
        assert_eq!(manifest.verify("val", &original).1.refused, 3);
    }

    #[test]
    fn a_bad_manifest_is_refused_with_its_line() {
        let path = Path::new("m.txt");
        let no_header = Manifest::parse("train 00\n", path).unwrap_err();
        assert!(no_header.to_string().contains("m.txt:1"), "{no_header}");
        let short = Manifest::parse(&format!("{HEADER}\n\ntrain abcd\n"), path).unwrap_err();
        assert!(
            short.to_string().contains("m.txt:3: the hash must be 128"),
            "{short}"
        );
    }
}
