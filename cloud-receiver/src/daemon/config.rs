//! The receiver's configuration: the TOML file (`configs/receiver.toml` is
//! the shipped, commented example and what `print-default-config` prints),
//! `MEDGATE_<SECTION>__<KEY>` overrides, and the check that turns it into
//! typed [`Settings`] once, at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use medgate_daemon::mqtt::{BrokerSettings, ClientTls};
use medgate_daemon::settings::{self, SettingsError};
use medgate_daemon::trust::TrustFile;
use medgate_shared::ids::Name;
use medgate_shared::keys::ReceiverPrivateKey;
use serde::{Deserialize, Serialize};

use super::batcher::BatchLimits;
use super::rules::{self, Rule, RuleError};
use crate::model::LoadedModel;
use crate::model::backend::BackendChoice;

/// The shipped, commented configuration.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/receiver.toml");

/// The file's top-level sections.
const SECTIONS: &[&str] = &["receiver", "mqtt", "model", "limits", "metrics"];

/// The configuration file as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Identity and keys.
    pub receiver: ReceiverSection,
    /// The broker.
    pub mqtt: BrokerSettings,
    /// The model and batching.
    #[serde(default)]
    pub model: ModelSection,
    /// Memory bounds and shutdown.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Notification rules.
    #[serde(default)]
    pub notify: Vec<Rule>,
}

impl ReceiverConfig {
    /// A configuration for receiver `name` with its private key and broker,
    /// every other value at its default and no notification rules, as a
    /// file naming only these keys would give.
    pub fn new(
        name: &str,
        private_key: PathBuf,
        trusted_gateways: PathBuf,
        mqtt: BrokerSettings,
    ) -> Self {
        Self {
            receiver: ReceiverSection {
                name: name.to_owned(),
                group: default_group(),
                private_key,
                trusted_gateways,
                audit_site: default_audit_site(),
                state_dir: None,
            },
            mqtt,
            model: ModelSection::default(),
            limits: LimitsSection::default(),
            metrics: MetricsSection::default(),
            notify: Vec::new(),
        }
    }
}

/// `[receiver]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverSection {
    /// This receiver's name.
    pub name: String,
    /// The shared-subscription group.
    #[serde(default = "default_group")]
    pub group: String,
    /// The RSA private key (PEM).
    pub private_key: PathBuf,
    /// The trust list: gateways whose images are accepted (reloaded when
    /// the file changes).
    pub trusted_gateways: PathBuf,
    /// Site for audit records of messages that name no valid site.
    #[serde(default = "default_audit_site")]
    pub audit_site: String,
    /// Where answers are kept across restarts (`answers.jsonl`); without
    /// it they live in memory only.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A model folder; the built-in model when absent (and `dirs` too).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Several model folders, served together: each image goes to the
    /// first whose card accepts it (see `model::routing`).
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Where inference runs.
    #[serde(default = "default_backend")]
    pub backend: BackendChoice,
    /// Images per inference call at most.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Longest wait of a batch's first image, ms.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Opened images waiting for inference.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            dir: None,
            dirs: Vec::new(),
            backend: default_backend(),
            max_batch: default_max_batch(),
            max_wait_ms: default_max_wait_ms(),
            queue: default_queue(),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Replay window per device, in sequence numbers.
    #[serde(default = "default_replay_window")]
    pub replay_window: u64,
    /// Devices with a replay window.
    #[serde(default = "default_replay_devices")]
    pub replay_devices: usize,
    /// Of those, at most this many per gateway.
    #[serde(default = "default_replay_devices_per_gateway")]
    pub replay_devices_per_gateway: usize,
    /// Results remembered by message id.
    #[serde(default = "default_remember")]
    pub remember_results: usize,
    /// Cached session keys.
    #[serde(default = "default_session_keys")]
    pub session_keys: usize,
    /// Shutdown grace, seconds.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            replay_window: default_replay_window(),
            replay_devices: default_replay_devices(),
            replay_devices_per_gateway: default_replay_devices_per_gateway(),
            remember_results: default_remember(),
            session_keys: default_session_keys(),
            shutdown_grace_secs: default_grace(),
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Serve the endpoint at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address to listen on (port 0 picks a free one).
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen(),
        }
    }
}

fn default_group() -> String {
    "receivers".into()
}
fn default_audit_site() -> String {
    "medgate".into()
}
fn default_backend() -> BackendChoice {
    BackendChoice::Auto
}
fn default_max_batch() -> usize {
    32
}
fn default_max_wait_ms() -> u64 {
    5
}
fn default_queue() -> usize {
    256
}
fn default_replay_window() -> u64 {
    4096
}
fn default_replay_devices() -> usize {
    100_000
}
fn default_replay_devices_per_gateway() -> usize {
    1024
}
fn default_remember() -> usize {
    100_000
}
fn default_session_keys() -> usize {
    1024
}
fn default_grace() -> u64 {
    20
}
fn default_true() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:9464".into()
}

/// A checked configuration, ready to run. Its `Debug` leaves out the
/// private key and the TLS key.
#[derive(Debug)]
pub struct Settings {
    /// Where it came from.
    pub file: PathBuf,
    /// This receiver's name.
    pub name: Name,
    /// Its shared-subscription group.
    pub group: Name,
    /// Site for unattributable audit records.
    pub audit_site: Name,
    /// The answer journal's folder, if any.
    pub state_dir: Option<PathBuf>,
    /// Broker settings.
    pub mqtt: BrokerSettings,
    /// TLS client configuration built from them.
    pub tls: ClientTls,
    /// The private key.
    pub private_key: ReceiverPrivateKey,
    /// The trust list file, read once here and watched while running.
    pub trust: Arc<TrustFile>,
    /// Model folders in routing order; the built-in model when empty.
    pub model_dirs: Vec<PathBuf>,
    /// Backend choice.
    pub backend: BackendChoice,
    /// Batching.
    pub batch: BatchLimits,
    /// Memory bounds.
    pub limits: LimitsSection,
    /// Metrics address, when enabled.
    pub metrics: Option<SocketAddr>,
    /// Notification rules, checked against the model's classes.
    pub rules: Vec<Rule>,
}

/// Reads and checks the file at `path` with the process environment.
///
/// # Errors
/// The first problem found, naming the file, the key and the reason.
pub fn load(path: &Path) -> Result<Settings, SettingsError> {
    let raw: ReceiverConfig = settings::load(path, SECTIONS)?;
    check(raw, path)
}

/// Turns a parsed file into [`Settings`]: names, files, keys, the model
/// card and the rules are all checked here, once.
///
/// # Errors
/// [`SettingsError`] naming `file`, the key and the reason.
pub fn check(raw: ReceiverConfig, file: &Path) -> Result<Settings, SettingsError> {
    let name_at = |key: &str, value: &str| settings::name(file, key, value);
    let name = name_at("receiver.name", &raw.receiver.name)?;
    let group = name_at("receiver.group", &raw.receiver.group)?;
    let audit_site = name_at("receiver.audit_site", &raw.receiver.audit_site)?;
    let tls = raw.mqtt.check(file, "mqtt")?;
    let private_key = ReceiverPrivateKey::read(&raw.receiver.private_key)
        .map_err(|e| SettingsError::key(file, "receiver.private_key", e))?;
    let trust = TrustFile::open(&raw.receiver.trusted_gateways)
        .map_err(|e| SettingsError::key(file, "receiver.trusted_gateways", e))?;
    let model_dirs = match (&raw.model.dir, raw.model.dirs.as_slice()) {
        (Some(_), [_, ..]) => {
            return Err(SettingsError::key(
                file,
                "model.dirs",
                "give model.dir (one model) or model.dirs (several), not both",
            ));
        }
        (Some(dir), []) => vec![dir.clone()],
        (None, dirs) => dirs.to_vec(),
    };
    let mut classes: Vec<String> = Vec::new();
    if model_dirs.is_empty() {
        classes = LoadedModel::card(None)
            .map_err(|e| SettingsError::key(file, "model.dir", e))?
            .classes;
    }
    for (index, dir) in model_dirs.iter().enumerate() {
        let key = if raw.model.dir.is_some() {
            "model.dir".to_owned()
        } else {
            format!("model.dirs[{index}]")
        };
        let card = LoadedModel::card(Some(dir)).map_err(|e| SettingsError::key(file, key, e))?;
        for class in card.classes {
            if !classes.contains(&class) {
                classes.push(class);
            }
        }
    }
    rules::validate(&raw.notify, &classes).map_err(|e| {
        let index = match &e {
            RuleError::Probability { index, .. } | RuleError::UnknownLabel { index, .. } => *index,
        };
        SettingsError::key(file, format!("notify[{index}]"), e)
    })?;
    let model = &raw.model;
    settings::in_range(file, "model.max_batch", model.max_batch, 1..=1024)?;
    settings::in_range(file, "model.max_wait_ms", model.max_wait_ms, ..=10_000)?;
    settings::in_range(file, "model.queue", model.queue, 1..)?;
    let limits = &raw.limits;
    settings::in_range(
        file,
        "limits.replay_window",
        limits.replay_window,
        1..=1 << 20,
    )?;
    settings::in_range(
        file,
        "limits.replay_devices_per_gateway",
        limits.replay_devices_per_gateway,
        1..,
    )?;
    let metrics = if raw.metrics.enabled {
        Some(settings::socket_address(
            file,
            "metrics.listen",
            &raw.metrics.listen,
        )?)
    } else {
        None
    };
    Ok(Settings {
        file: file.to_path_buf(),
        name,
        group,
        audit_site,
        state_dir: raw.receiver.state_dir.clone(),
        tls,
        private_key,
        trust: Arc::new(trust),
        model_dirs,
        backend: raw.model.backend,
        batch: BatchLimits {
            max_batch: model.max_batch,
            max_wait: Duration::from_millis(model.max_wait_ms),
            queue: model.queue,
        },
        limits: raw.limits.clone(),
        metrics,
        rules: raw.notify,
        mqtt: raw.mqtt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses_and_names_its_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receiver.toml");
        std::fs::write(&path, DEFAULT_CONFIG).unwrap();
        let raw: ReceiverConfig = settings::load_with_env(&path, SECTIONS, Vec::new()).unwrap();
        assert_eq!(raw.notify.len(), 2);
        assert_eq!(raw.model.backend, BackendChoice::Auto);
        // The shipped paths do not exist here: the check says which key.
        let e = check(raw, &path).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("mqtt.ca_file"), "{e}");
    }
}
