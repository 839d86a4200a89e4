//! The gateway's configuration: the TOML file (`configs/gateway.toml` is
//! the shipped, commented example and what `print-default-config` prints),
//! `MEDGATE_<SECTION>__<KEY>` overrides, and the check that turns it into
//! typed [`Settings`] once, at start, with errors that name the file, the
//! key and the reason.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use medgate_daemon::mqtt::{BrokerSettings, ClientTls};
use medgate_daemon::settings::{self, SettingsError};
use medgate_shared::header::{Anatomy, Modality};
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::ids::Name;
use medgate_shared::keys::ReceiverPublicKey;
use medgate_shared::pixels::PixelFormat;
use medgate_shared::seal::RotationPolicy;
use serde::{Deserialize, Serialize};

use crate::capture::{self, Oversize, Preparation};
use crate::dicom::node::{AeTitle, DicomNode, Pacs};
use crate::sources::hot_folder::HotFolder;
use crate::sources::spi::{SensorBus, SpiSensorConfig};

/// The shipped, commented configuration.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/gateway.toml");

const SECTIONS: &[&str] = &["gateway", "mqtt", "spool", "preprocess", "metrics", "dicom"];

/// The file as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Identity and keys.
    pub gateway: GatewaySection,
    /// The broker.
    pub mqtt: BrokerSettings,
    /// The spool.
    pub spool: SpoolSection,
    /// Image preparation.
    #[serde(default)]
    pub preprocess: PreprocessSection,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Hot folders.
    #[serde(default)]
    pub hot_folder: Vec<HotFolderSection>,
    /// SPI image sensors.
    #[serde(default)]
    pub spi_sensor: Vec<SpiSensorSection>,
    /// The gateway as a DICOM node (modalities store to it, its reports
    /// go to the PACS).
    #[serde(default)]
    pub dicom: Option<DicomSection>,
}

impl GatewayConfig {
    /// A configuration for gateway `name` of `site` with the receivers'
    /// public key, its state and spool folders and its broker, every other
    /// value at its default and no source yet, as a file naming only these
    /// keys would give.
    pub fn new(
        site: &str,
        name: &str,
        receiver_public_key: PathBuf,
        identity_key: PathBuf,
        state_dir: PathBuf,
        spool_dir: PathBuf,
        mqtt: BrokerSettings,
    ) -> Self {
        Self {
            gateway: GatewaySection {
                site: site.to_owned(),
                name: name.to_owned(),
                receiver_public_key,
                identity_key,
                rotate_after_images: default_rotate_images(),
                rotate_after_secs: default_rotate_secs(),
                state_dir,
            },
            mqtt,
            spool: SpoolSection {
                dir: spool_dir,
                max_bytes: default_spool_bytes(),
                result_timeout_secs: default_result_timeout(),
                max_publications: default_max_publications(),
            },
            preprocess: PreprocessSection::default(),
            metrics: MetricsSection::default(),
            hot_folder: Vec::new(),
            spi_sensor: Vec::new(),
            dicom: None,
        }
    }
}

/// `[dicom]`: a C-STORE SCP that modalities send to, and the PACS that
/// receives the Structured Reports of its images' results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomSection {
    /// The device name its images carry.
    pub device: String,
    /// This node's AE title (what modalities call).
    #[serde(default = "default_ae_title")]
    pub ae_title: String,
    /// Address and port it listens on.
    #[serde(default = "default_dicom_listen")]
    pub listen: String,
    /// The calling AE titles that may store images; others are rejected
    /// at association.
    pub allowed_calling_ae_titles: Vec<String>,
    /// Associations served at once; more are rejected (transient).
    #[serde(default = "default_max_associations")]
    pub max_associations: u32,
    /// Seconds without a PDU before an association is aborted.
    #[serde(default = "default_dicom_timeout")]
    pub timeout_secs: u64,
    /// Modality for objects whose Modality (0008,0060) the gateway does
    /// not know.
    #[serde(default = "default_dicom_modality")]
    pub modality: String,
    /// Body Part Examined for objects that do not name one, e.g.
    /// `"CHEST"` for a chest room's modality; receivers route on it.
    #[serde(default)]
    pub body_part: Option<String>,
    /// View Position for objects that do not name one, e.g. `"PA"`.
    #[serde(default)]
    pub view_position: Option<String>,
    /// Where reports go.
    pub pacs: PacsSection,
}

impl DicomSection {
    /// A node for `device` listening on `listen`, accepting `callers`,
    /// reporting to the PACS `pacs_ae` at `pacs_address`, every other
    /// value at its default.
    pub fn new(
        device: &str,
        listen: &str,
        callers: &[&str],
        pacs_ae: &str,
        pacs_address: &str,
    ) -> Self {
        Self {
            device: device.to_owned(),
            ae_title: default_ae_title(),
            listen: listen.to_owned(),
            allowed_calling_ae_titles: callers.iter().map(|c| (*c).to_owned()).collect(),
            max_associations: default_max_associations(),
            timeout_secs: default_dicom_timeout(),
            modality: default_dicom_modality(),
            body_part: None,
            view_position: None,
            pacs: PacsSection {
                ae_title: pacs_ae.to_owned(),
                address: pacs_address.to_owned(),
                retry_max_secs: default_pacs_retry(),
            },
        }
    }
}

/// `[dicom.pacs]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacsSection {
    /// The PACS's AE title.
    pub ae_title: String,
    /// `host:port`.
    pub address: String,
    /// Longest wait between two attempts to store a report, seconds.
    #[serde(default = "default_pacs_retry")]
    pub retry_max_secs: u64,
}

/// One `[[spi_sensor]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpiSensorSection {
    /// The device name its images carry.
    pub device: String,
    /// DICOM modality code.
    #[serde(default = "default_sensor_modality")]
    pub modality: String,
    /// DICOM Body Part Examined of its images, e.g. `"CHEST"`; receivers
    /// route on it (no model for `SHOULDER` answers "not classified").
    #[serde(default)]
    pub body_part: Option<String>,
    /// DICOM View Position of its images, e.g. `"PA"`.
    #[serde(default)]
    pub view_position: Option<String>,
    /// `unix:/path` for firmware-sim's simulated sensor, or
    /// `spidev:/dev/spidevB.C` for a real one (with `data_ready`).
    pub bus: String,
    /// Data-ready line of a real sensor: `/dev/gpiochipN:LINE`.
    #[serde(default)]
    pub data_ready: Option<String>,
    /// SPI clock of a real sensor, Hz.
    #[serde(default = "default_speed_hz")]
    pub speed_hz: u32,
    /// The longest the gateway goes without reading the data-ready level,
    /// ms, should an edge be lost (each rise of the line wakes it at once).
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

impl SpiSensorSection {
    /// A sensor for `device` on `bus`, every other value at its default.
    pub fn new(device: &str, bus: &str) -> Self {
        Self {
            device: device.to_owned(),
            modality: default_sensor_modality(),
            body_part: None,
            view_position: None,
            bus: bus.to_owned(),
            data_ready: None,
            speed_hz: default_speed_hz(),
            poll_ms: default_poll_ms(),
        }
    }
}

/// `[gateway]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Site name.
    pub site: String,
    /// This gateway's name.
    pub name: String,
    /// The receivers' public key (PEM).
    pub receiver_public_key: PathBuf,
    /// This gateway's Ed25519 signing key (PKCS#8 PEM, from
    /// `medgate-gateway keygen`); receivers trust its public half.
    pub identity_key: PathBuf,
    /// Session key rotation by count.
    #[serde(default = "default_rotate_images")]
    pub rotate_after_images: u64,
    /// Session key rotation by age, seconds.
    #[serde(default = "default_rotate_secs")]
    pub rotate_after_secs: u64,
    /// Folder for per-device sequence numbers.
    pub state_dir: PathBuf,
}

/// `[spool]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// The spool folder.
    pub dir: PathBuf,
    /// Bound in bytes.
    #[serde(default = "default_spool_bytes")]
    pub max_bytes: u64,
    /// Re-publication after this many seconds without a result.
    #[serde(default = "default_result_timeout")]
    pub result_timeout_secs: u64,
    /// Publications without any answer before an image is quarantined.
    #[serde(default = "default_max_publications")]
    pub max_publications: u32,
}

/// `[preprocess]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSection {
    /// 8 or 16.
    #[serde(default = "default_bit_depth")]
    pub bit_depth: u8,
    /// Optional `[width, height]`.
    #[serde(default)]
    pub resize: Option<[u32; 2]>,
    /// Largest decoded source image (before conversion), bytes.
    #[serde(default = "default_max_decoded_bytes")]
    pub max_decoded_bytes: u64,
    /// An image too large for the broker link: `refuse` or `downscale`.
    #[serde(default)]
    pub too_large: Oversize,
}

impl Default for PreprocessSection {
    fn default() -> Self {
        Self {
            bit_depth: default_bit_depth(),
            resize: None,
            max_decoded_bytes: default_max_decoded_bytes(),
            too_large: Oversize::default(),
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
    /// Address (port 0 picks a free one).
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

/// One `[[hot_folder]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotFolderSection {
    /// The device name its images carry.
    pub device: String,
    /// The watched folder.
    pub path: PathBuf,
    /// DICOM modality code.
    #[serde(default = "default_modality")]
    pub modality: String,
    /// DICOM Body Part Examined of its images, e.g. `"CHEST"`; receivers
    /// route on it (no model for `SHOULDER` answers "not classified").
    #[serde(default)]
    pub body_part: Option<String>,
    /// DICOM View Position of its images, e.g. `"PA"`.
    #[serde(default)]
    pub view_position: Option<String>,
    /// How often the folder is scanned, ms.
    #[serde(default = "default_scan_ms")]
    pub scan_interval_ms: u64,
    /// How long a file must stay unchanged before it is taken, ms.
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
}

impl HotFolderSection {
    /// A hot folder at `path` for `device`, every other value at its default.
    pub fn new(device: &str, path: PathBuf) -> Self {
        Self {
            device: device.to_owned(),
            path,
            modality: default_modality(),
            body_part: None,
            view_position: None,
            scan_interval_ms: default_scan_ms(),
            settle_ms: default_settle_ms(),
        }
    }
}

fn default_rotate_images() -> u64 {
    10_000
}
fn default_rotate_secs() -> u64 {
    3600
}
fn default_spool_bytes() -> u64 {
    1 << 30
}
fn default_max_publications() -> u32 {
    20
}

fn default_result_timeout() -> u64 {
    60
}
fn default_bit_depth() -> u8 {
    8
}
fn default_max_decoded_bytes() -> u64 {
    32 << 20
}
fn default_true() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:9465".into()
}
fn default_modality() -> String {
    "SC".into()
}
fn default_sensor_modality() -> String {
    "DX".into()
}
fn default_speed_hz() -> u32 {
    8_000_000
}
fn default_poll_ms() -> u64 {
    1000
}
fn default_ae_title() -> String {
    "MEDGATE".into()
}
fn default_dicom_listen() -> String {
    "0.0.0.0:11112".into()
}
fn default_max_associations() -> u32 {
    4
}
fn default_dicom_timeout() -> u64 {
    30
}
fn default_dicom_modality() -> String {
    "OT".into()
}
fn default_pacs_retry() -> u64 {
    300
}
fn default_scan_ms() -> u64 {
    500
}
fn default_settle_ms() -> u64 {
    1000
}

/// A checked configuration. Its `Debug` leaves out the TLS key.
#[derive(Debug)]
pub struct Settings {
    /// Where it came from.
    pub file: PathBuf,
    /// Site.
    pub site: Name,
    /// Gateway name.
    pub name: Name,
    /// Receivers' public key.
    pub receiver_key: ReceiverPublicKey,
    /// This gateway's signing identity.
    pub identity: GatewayIdentity,
    /// Session key rotation.
    pub rotation: RotationPolicy,
    /// Sequence state folder.
    pub state_dir: PathBuf,
    /// Broker.
    pub mqtt: BrokerSettings,
    /// TLS.
    pub tls: ClientTls,
    /// Spool folder.
    pub spool_dir: PathBuf,
    /// Spool bound.
    pub spool_bytes: u64,
    /// Result timeout.
    pub result_timeout: Duration,
    /// Publications without an answer before quarantine.
    pub max_publications: u32,
    /// How images are prepared, and the input limits.
    pub preparation: Preparation,
    /// What `check-config` and the start-up log warn about: settings that
    /// work but refuse some images.
    pub warnings: Vec<String>,
    /// Metrics address.
    pub metrics: Option<SocketAddr>,
    /// Hot folders.
    pub hot_folders: Vec<HotFolder>,
    /// SPI sensors.
    pub spi_sensors: Vec<SpiSensorConfig>,
    /// The DICOM node, if configured.
    pub dicom: Option<DicomNode>,
}

/// Reads and checks the file at `path` with the process environment.
///
/// # Errors
/// The first problem, naming the file, the key and the reason.
pub fn load(path: &Path) -> Result<Settings, SettingsError> {
    let raw: GatewayConfig = settings::load(path, SECTIONS)?;
    check(raw, path)
}

/// Turns a parsed file into [`Settings`].
///
/// # Errors
/// [`SettingsError`] naming `file`, the key and the reason.
pub fn check(raw: GatewayConfig, file: &Path) -> Result<Settings, SettingsError> {
    let name_at = |key: &str, value: &str| settings::name(file, key, value);
    let site = name_at("gateway.site", &raw.gateway.site)?;
    let name = name_at("gateway.name", &raw.gateway.name)?;
    let receiver_key = ReceiverPublicKey::read(&raw.gateway.receiver_public_key)
        .map_err(|e| SettingsError::key(file, "gateway.receiver_public_key", e))?;
    let identity = GatewayIdentity::read(&raw.gateway.identity_key)
        .map_err(|e| SettingsError::key(file, "gateway.identity_key", e))?;
    settings::in_range(
        file,
        "gateway.rotate_after_images",
        raw.gateway.rotate_after_images,
        1..,
    )?;
    settings::in_range(
        file,
        "gateway.rotate_after_secs",
        raw.gateway.rotate_after_secs,
        1..,
    )?;
    let tls = raw.mqtt.check(file, "mqtt")?;
    if raw.spool.max_bytes < 1 << 20 {
        return Err(SettingsError::key(
            file,
            "spool.max_bytes",
            format!(
                "{} bytes cannot hold an image; use at least 1048576",
                raw.spool.max_bytes
            ),
        ));
    }
    settings::in_range(
        file,
        "spool.result_timeout_secs",
        raw.spool.result_timeout_secs,
        1..,
    )?;
    settings::in_range(
        file,
        "spool.max_publications",
        raw.spool.max_publications,
        1..,
    )?;
    let pixel_format = match raw.preprocess.bit_depth {
        8 => PixelFormat::Gray8,
        16 => PixelFormat::Gray16,
        other => {
            return Err(SettingsError::key(
                file,
                "preprocess.bit_depth",
                format!("{other} is not 8 or 16"),
            ));
        }
    };
    let resize = match raw.preprocess.resize {
        Some([w, h]) => {
            for side in [w, h] {
                settings::in_range(file, "preprocess.resize", side, 1..=16_384)?;
            }
            Some((w, h))
        }
        None => None,
    };
    settings::in_range(
        file,
        "preprocess.max_decoded_bytes",
        raw.preprocess.max_decoded_bytes,
        (1 << 20)..=(1 << 30),
    )?;
    let preparation = Preparation {
        format: pixel_format,
        resize,
        max_decoded_bytes: raw.preprocess.max_decoded_bytes,
        oversize: raw.preprocess.too_large,
    };
    let warnings = link_check(file, &preparation, raw.mqtt.max_packet_bytes)?;
    let metrics = if raw.metrics.enabled {
        Some(settings::socket_address(
            file,
            "metrics.listen",
            &raw.metrics.listen,
        )?)
    } else {
        None
    };
    let mut devices = HashSet::new();
    let mut hot_folders = Vec::new();
    for (i, folder) in raw.hot_folder.iter().enumerate() {
        let key = |k: &str| format!("hot_folder[{i}].{k}");
        let device = name_at(&key("device"), &folder.device)?;
        if !devices.insert(device.clone()) {
            return Err(SettingsError::key(
                file,
                key("device"),
                format!("device {device} is configured twice"),
            ));
        }
        let modality = Modality::from_code(&folder.modality).ok_or_else(|| {
            SettingsError::key(
                file,
                key("modality"),
                format!(
                    "{:?} is not a DICOM modality code such as DX, CR, SC",
                    folder.modality
                ),
            )
        })?;
        if !folder.path.is_dir() {
            return Err(SettingsError::key(
                file,
                key("path"),
                format!("{} is not a folder", folder.path.display()),
            ));
        }
        settings::in_range(file, &key("scan_interval_ms"), folder.scan_interval_ms, 1..)?;
        let anatomy = anatomy_at(
            file,
            (key("body_part").as_str(), folder.body_part.as_deref()),
            (
                key("view_position").as_str(),
                folder.view_position.as_deref(),
            ),
        )?;
        hot_folders.push(HotFolder {
            path: folder.path.clone(),
            modality,
            anatomy,
            scan_interval: Duration::from_millis(folder.scan_interval_ms),
            settle: Duration::from_millis(folder.settle_ms),
            state_dir: raw
                .gateway
                .state_dir
                .join("hot_folders")
                .join(device.as_str()),
            device,
        });
    }
    let mut spi_sensors = Vec::new();
    for (i, sensor) in raw.spi_sensor.iter().enumerate() {
        let key = |k: &str| format!("spi_sensor[{i}].{k}");
        let device = name_at(&key("device"), &sensor.device)?;
        if !devices.insert(device.clone()) {
            return Err(SettingsError::key(
                file,
                key("device"),
                format!("device {device} is configured twice"),
            ));
        }
        let modality = modality_at(file, &key("modality"), &sensor.modality)?;
        let bus = match sensor.bus.split_once(':') {
            Some(("unix", path)) if !path.is_empty() => SensorBus::Virtual(PathBuf::from(path)),
            Some(("spidev", path)) if !path.is_empty() => {
                if !cfg!(feature = "linux-spi") {
                    return Err(SettingsError::key(
                        file,
                        key("bus"),
                        "spidev needs a build with the `linux-spi` feature, which this one lacks",
                    ));
                }
                let Some((chip, line)) = sensor
                    .data_ready
                    .as_deref()
                    .and_then(|d| d.rsplit_once(':'))
                    .and_then(|(chip, line)| Some((chip, line.parse::<u32>().ok()?)))
                else {
                    return Err(SettingsError::key(
                        file,
                        key("data_ready"),
                        "a spidev sensor needs data_ready = \"/dev/gpiochipN:LINE\"",
                    ));
                };
                SensorBus::Spidev {
                    device: PathBuf::from(path),
                    chip: PathBuf::from(chip),
                    line,
                    speed_hz: sensor.speed_hz,
                }
            }
            _ => {
                return Err(SettingsError::key(
                    file,
                    key("bus"),
                    format!(
                        "{:?} is neither `unix:/path/to/sensor.sock` (a simulated sensor) nor `spidev:/dev/spidevB.C`",
                        sensor.bus
                    ),
                ));
            }
        };
        settings::in_range(file, &key("poll_ms"), sensor.poll_ms, 1..=60_000)?;
        let frames_dir = raw.gateway.state_dir.join("frames").join(device.as_str());
        let anatomy = anatomy_at(
            file,
            (key("body_part").as_str(), sensor.body_part.as_deref()),
            (
                key("view_position").as_str(),
                sensor.view_position.as_deref(),
            ),
        )?;
        spi_sensors.push(SpiSensorConfig {
            frames_dir,
            device,
            modality,
            anatomy,
            bus,
            poll: Duration::from_millis(sensor.poll_ms),
        });
    }
    let dicom = match &raw.dicom {
        Some(section) => {
            let node = dicom_check(file, section, &raw.gateway.state_dir)?;
            if !devices.insert(node.device.clone()) {
                return Err(SettingsError::key(
                    file,
                    "dicom.device",
                    format!("device {} is configured twice", node.device),
                ));
            }
            Some(node)
        }
        None => None,
    };
    if hot_folders.is_empty() && spi_sensors.is_empty() && dicom.is_none() {
        return Err(SettingsError::file(
            file,
            "no image source: add at least one [[hot_folder]], [[spi_sensor]] or [dicom]",
        ));
    }
    Ok(Settings {
        file: file.to_path_buf(),
        site,
        name,
        receiver_key,
        identity,
        rotation: RotationPolicy {
            max_messages: raw.gateway.rotate_after_images,
            max_age: Duration::from_secs(raw.gateway.rotate_after_secs),
        },
        state_dir: raw.gateway.state_dir.clone(),
        tls,
        spool_dir: raw.spool.dir.clone(),
        spool_bytes: raw.spool.max_bytes,
        result_timeout: Duration::from_secs(raw.spool.result_timeout_secs),
        max_publications: raw.spool.max_publications,
        preparation,
        warnings,
        metrics,
        hot_folders,
        spi_sensors,
        dicom,
        mqtt: raw.mqtt,
    })
}

fn dicom_check(
    file: &Path,
    section: &DicomSection,
    state_dir: &Path,
) -> Result<DicomNode, SettingsError> {
    let ae = |key: &str, value: &str| {
        value
            .parse::<AeTitle>()
            .map_err(|e| SettingsError::key(file, key, e))
    };
    let device = settings::name(file, "dicom.device", &section.device)?;
    let ae_title = ae("dicom.ae_title", &section.ae_title)?;
    let listen = settings::socket_address(file, "dicom.listen", &section.listen)?;
    if section.allowed_calling_ae_titles.is_empty() {
        return Err(SettingsError::key(
            file,
            "dicom.allowed_calling_ae_titles",
            "is empty: list the AE titles of the modalities that may store images, e.g. [\"CR_ROOM1\"]",
        ));
    }
    let mut callers = Vec::new();
    for (i, caller) in section.allowed_calling_ae_titles.iter().enumerate() {
        callers.push(ae(
            &format!("dicom.allowed_calling_ae_titles[{i}]"),
            caller,
        )?);
    }
    settings::in_range(
        file,
        "dicom.max_associations",
        section.max_associations,
        1..=64,
    )?;
    settings::in_range(file, "dicom.timeout_secs", section.timeout_secs, 1..=3600)?;
    let modality = modality_at(file, "dicom.modality", &section.modality)?;
    let anatomy = anatomy_at(
        file,
        ("dicom.body_part", section.body_part.as_deref()),
        ("dicom.view_position", section.view_position.as_deref()),
    )?;
    let pacs_ae = ae("dicom.pacs.ae_title", &section.pacs.ae_title)?;
    match section.pacs.address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
        _ => {
            return Err(SettingsError::key(
                file,
                "dicom.pacs.address",
                format!(
                    "{:?} is not host:port, such as pacs.hospital.local:4242",
                    section.pacs.address
                ),
            ));
        }
    }
    settings::in_range(
        file,
        "dicom.pacs.retry_max_secs",
        section.pacs.retry_max_secs,
        1..=86_400,
    )?;
    Ok(DicomNode {
        device,
        ae_title,
        listen,
        callers,
        max_associations: section.max_associations as usize,
        timeout: Duration::from_secs(section.timeout_secs),
        modality,
        anatomy,
        pacs: Pacs {
            ae_title: pacs_ae,
            address: section.pacs.address.clone(),
            retry_max: Duration::from_secs(section.pacs.retry_max_secs),
        },
        state_dir: state_dir.join("dicom"),
    })
}

/// What the packet limit allows at this preparation: an error when no
/// image at all could be published (a resize the link cannot carry), a
/// warning when large images will be refused.
fn link_check(
    file: &Path,
    preparation: &Preparation,
    packet_bytes: u32,
) -> Result<Vec<String>, SettingsError> {
    let budget = capture::pixel_budget(packet_bytes);
    let per_pixel = preparation.format.bytes_per_pixel() as u64;
    let bits = per_pixel * 8;
    if let Some((w, h)) = preparation.resize {
        let bytes = u64::from(w) * u64::from(h) * per_pixel;
        if bytes > budget && preparation.oversize == Oversize::Refuse {
            return Err(SettingsError::key(
                file,
                "preprocess.resize",
                format!(
                    "{w}x{h} at {bits} bits is {bytes} bytes of pixels, more than a {packet_bytes}-byte packet (mqtt.max_packet_bytes) carries ({budget}): every capture would be refused; resize smaller, use bit_depth = 8, or raise mqtt.max_packet_bytes and the broker's max_packet_size"
                ),
            ));
        }
        return Ok(Vec::new());
    }
    // Images of a typical detector (3000 x 3000) should fit.
    let side = ((budget / per_pixel) as f64).sqrt() as u64;
    if side >= TYPICAL_SIDE || preparation.oversize == Oversize::Downscale {
        return Ok(Vec::new());
    }
    Ok(vec![format!(
        "images over about {side}x{side} at {bits} bits ({budget} bytes of pixels) will be refused: mqtt.max_packet_bytes = {packet_bytes} cannot carry them; set preprocess.resize, preprocess.too_large = \"downscale\", bit_depth = 8, or raise mqtt.max_packet_bytes and the broker's max_packet_size"
    )])
}

/// The side of a typical radiography detector, in pixels.
const TYPICAL_SIDE: u64 = 3000;

fn modality_at(file: &Path, key: &str, code: &str) -> Result<Modality, SettingsError> {
    Modality::from_code(code).ok_or_else(|| {
        SettingsError::key(
            file,
            key,
            format!("{code:?} is not a DICOM modality code such as DX, CR, SC"),
        )
    })
}

/// A configured body part and view position, in the form they travel
/// (upper case, spaces as `_`).
fn anatomy_at(
    file: &Path,
    (part_key, part): (&str, Option<&str>),
    (view_key, view): (&str, Option<&str>),
) -> Result<Anatomy, SettingsError> {
    let code = |key: &str, value: Option<&str>, example: &str| {
        let Some(value) = value else {
            return Ok(None);
        };
        match Anatomy::code(value) {
            Ok(Some(code)) => Ok(Some(code)),
            Ok(None) => Err(SettingsError::key(
                file,
                key,
                format!("is empty: give a DICOM code such as {example}, or leave the key out"),
            )),
            Err(e) => Err(SettingsError::key(
                file,
                key,
                format!("{value:?} is not a DICOM code string such as {example}: {e}"),
            )),
        }
    };
    Ok(Anatomy {
        body_part: code(part_key, part, "\"CHEST\"")?,
        view_position: code(view_key, view, "\"PA\"")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses_and_names_its_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, DEFAULT_CONFIG).unwrap();
        let raw: GatewayConfig = settings::load_with_env(&path, SECTIONS, Vec::new()).unwrap();
        assert_eq!(raw.hot_folder.len(), 1);
        let e = check(raw, &path).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("gateway.receiver_public_key"), "{e}");
    }

    #[test]
    fn the_dicom_section_is_checked_key_by_key() {
        let file = Path::new("gateway.toml");
        let state = Path::new("/var/lib/medgate-gateway/state");
        let good = DicomSection::new(
            "modalities",
            "0.0.0.0:11112",
            &["CR_ROOM1"],
            "PACS",
            "pacs.local:104",
        );
        let node = dicom_check(file, &good, state).unwrap();
        assert_eq!(node.callers.len(), 1);
        assert_eq!(node.state_dir, state.join("dicom"));
        assert_eq!(node.modality, Modality::Ot);
        let error = |edit: &dyn Fn(&mut DicomSection)| {
            let mut section = good.clone();
            edit(&mut section);
            let e = dicom_check(file, &section, state).unwrap_err();
            (e.key.clone().unwrap_or_default(), e.to_string())
        };
        let (key, text) = error(&|s| s.allowed_calling_ae_titles.clear());
        assert_eq!(key, "dicom.allowed_calling_ae_titles");
        assert!(text.contains("list the AE titles"), "{text}");
        let (key, text) = error(&|s| s.allowed_calling_ae_titles.push("A_TITLE_OF_17_CHR".into()));
        assert_eq!(key, "dicom.allowed_calling_ae_titles[1]");
        assert!(text.contains("16 characters"), "{text}");
        let (key, _) = error(&|s| s.ae_title = "BAD\\AE".into());
        assert_eq!(key, "dicom.ae_title");
        let (key, _) = error(&|s| s.listen = "11112".into());
        assert_eq!(key, "dicom.listen");
        let (key, text) = error(&|s| s.pacs.address = "pacs.local".into());
        assert_eq!(key, "dicom.pacs.address");
        assert!(text.contains("host:port"), "{text}");
        let (key, _) = error(&|s| s.max_associations = 0);
        assert_eq!(key, "dicom.max_associations");
        let (key, _) = error(&|s| s.modality = "XX".into());
        assert_eq!(key, "dicom.modality");
    }
}
