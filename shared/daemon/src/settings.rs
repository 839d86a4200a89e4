//! Config files, layered: the defaults written into each program's serde
//! structs, then the TOML file, then `MEDGATE_{SECTION}__{KEY}` environment
//! variables (e.g. `MEDGATE_MQTT__PORT=8884`). Errors name the file, the key
//! and the reason, because a field technician has to fix them by hand.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use serde::de::DeserializeOwned;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "MEDGATE";

/// Why a config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SettingsError {
    /// The file the config came from.
    pub file: PathBuf,
    /// The offending key (`section.key`), when one is to blame.
    pub key: Option<String>,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{key}`: {}", self.file.display(), self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

impl SettingsError {
    /// An error about one key of `file`.
    pub fn key(file: &Path, key: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            file: file.to_path_buf(),
            key: Some(key.into()),
            reason: reason.to_string(),
        }
    }

    /// An error about the file as a whole.
    pub fn file(file: &Path, reason: impl fmt::Display) -> Self {
        Self {
            file: file.to_path_buf(),
            key: None,
            reason: reason.to_string(),
        }
    }
}

/// Reads `file` as TOML, applies the environment overrides of the given
/// top-level `sections`, and deserialises the result.
///
/// Only variables naming one of `sections` are applied, so unrelated
/// `MEDGATE_…` variables (such as `MEDGATE_DATA_DIR`) are not mistaken for
/// unknown keys.
///
/// # Errors
/// [`SettingsError`] naming the file and, where serde can tell, the key.
pub fn load<T: DeserializeOwned>(file: &Path, sections: &[&str]) -> Result<T, SettingsError> {
    load_with_env(file, sections, std::env::vars())
}

/// [`load`] with the environment given explicitly (tests).
///
/// # Errors
/// As [`load`].
pub fn load_with_env<T: DeserializeOwned>(
    file: &Path,
    sections: &[&str],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, SettingsError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| SettingsError::file(file, format!("cannot read the file: {e}")))?;
    let overrides: HashMap<String, String> = env
        .into_iter()
        .filter(|(name, _)| override_section(name).is_some_and(|s| sections.contains(&s.as_str())))
        .collect();
    let built = Config::builder()
        .add_source(File::from_str(&text, FileFormat::Toml))
        .add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        )
        .build()
        .map_err(|e| SettingsError::file(file, e))?;
    serde_path_to_error::deserialize(built).map_err(|e| {
        let key = e.path().to_string();
        let mut reason = e.into_inner().to_string();
        // The config crate appends the key itself; it is named already.
        if let Some(at) = reason.rfind(" for key `") {
            reason.truncate(at);
        }
        if key == "." || key.is_empty() {
            SettingsError::file(file, reason)
        } else {
            SettingsError::key(file, key, reason)
        }
    })
}

/// Parses a name (site, gateway, device, ward …) at `key`.
///
/// # Errors
/// [`SettingsError`] naming `file` and `key`.
pub fn name(
    file: &Path,
    key: &str,
    value: &str,
) -> Result<medgate_shared::ids::Name, SettingsError> {
    value.parse().map_err(|e| SettingsError::key(file, key, e))
}

/// Parses a socket address such as `127.0.0.1:9464` at `key`.
///
/// # Errors
/// [`SettingsError`] naming `file` and `key`.
pub fn socket_address(
    file: &Path,
    key: &str,
    value: &str,
) -> Result<std::net::SocketAddr, SettingsError> {
    value.parse().map_err(|e| {
        SettingsError::key(
            file,
            key,
            format!("{value:?} is not an address such as 127.0.0.1:9464: {e}"),
        )
    })
}

/// Checks that the number at `key` lies in `range` (`1..`, `..=10000`,
/// `1..=1024`); the error says which range.
///
/// # Errors
/// [`SettingsError`] naming `file` and `key`.
pub fn in_range<T, R>(file: &Path, key: &str, value: T, range: R) -> Result<T, SettingsError>
where
    T: PartialOrd + fmt::Display,
    R: RangeBounds<T>,
{
    if range.contains(&value) {
        return Ok(value);
    }
    let low = match range.start_bound() {
        Bound::Included(low) => format!("{low}"),
        Bound::Excluded(low) => format!("more than {low}"),
        Bound::Unbounded => String::new(),
    };
    let reason = match (low.as_str(), range.end_bound()) {
        (low, Bound::Unbounded) => format!("must be at least {low}"),
        ("", Bound::Included(high)) => format!("must be at most {high}"),
        ("", Bound::Excluded(high)) => format!("must be less than {high}"),
        (low, Bound::Included(high)) => format!("must be {low}..={high}"),
        (low, Bound::Excluded(high)) => format!("must be {low}..{high}"),
    };
    Err(SettingsError::key(file, key, reason))
}

/// The lower-case section an override variable names, if it is one.
fn override_section(name: &str) -> Option<String> {
    let rest = name.strip_prefix(ENV_PREFIX)?.strip_prefix('_')?;
    let (section, key) = rest.split_once("__")?;
    (!section.is_empty() && !key.is_empty()).then(|| section.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Top {
        mqtt: Mqtt,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Mqtt {
        host: String,
        #[serde(default = "port")]
        port: u16,
    }

    fn port() -> u16 {
        8883
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_file_and_environment_layer_in_that_order() {
        let f = file("[mqtt]\nhost = \"broker\"\n");
        let top: Top = load_with_env(f.path(), &["mqtt"], vars(&[])).unwrap();
        assert_eq!(top.mqtt.port, 8883);
        let env = vars(&[
            ("MEDGATE_MQTT__PORT", "8884"),
            ("MEDGATE_DATA_DIR", "/data"),
            ("OTHER_MQTT__HOST", "x"),
        ]);
        let top: Top = load_with_env(f.path(), &["mqtt"], env).unwrap();
        assert_eq!(top.mqtt.port, 8884);
        assert_eq!(top.mqtt.host, "broker");
    }

    #[test]
    fn ranges_are_checked_and_named() {
        let file = Path::new("/etc/medgate/x.toml");
        assert_eq!(in_range(file, "a.b", 5u64, 1..=10).unwrap(), 5);
        let e = in_range(file, "model.max_batch", 0usize, 1..=1024).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("model.max_batch"));
        assert_eq!(e.reason, "must be 1..=1024");
        let e = in_range(file, "a.b", 0u16, 1..).unwrap_err();
        assert_eq!(e.reason, "must be at least 1");
        let e = in_range(file, "a.b", 10_001u64, ..=10_000).unwrap_err();
        assert_eq!(e.reason, "must be at most 10000");
        assert!(
            e.to_string().starts_with("/etc/medgate/x.toml: key `a.b`"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let f = file("[mqtt]\nhost = \"broker\"\nprot = 1\n");
        let e = load_with_env::<Top>(f.path(), &["mqtt"], vars(&[])).unwrap_err();
        assert_eq!(e.file, f.path());
        assert!(e.to_string().contains("prot"), "{e}");
        assert!(e.reason.contains("unknown field"), "{e}");

        let f = file("[mqtt]\nhost = \"broker\"\nport = 70000\n");
        let e = load_with_env::<Top>(f.path(), &["mqtt"], vars(&[])).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("mqtt.port"), "{e}");

        let f = file("[mqtt\nhost = 1");
        let e = load_with_env::<Top>(f.path(), &["mqtt"], vars(&[])).unwrap_err();
        assert!(e.to_string().starts_with(&f.path().display().to_string()));

        let e = load_with_env::<Top>(Path::new("/nonexistent/x.toml"), &[], vars(&[])).unwrap_err();
        assert!(e.reason.contains("cannot read"), "{e}");
    }
}
