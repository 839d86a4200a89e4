//! The key and envelope tools: `keygen`, `seal`, `open`, `keystream` (the
//! raw Henon keystream, for test batteries) and `xray` (export a real chest
//! X-ray from a MedMNIST file as PNG).

use std::convert::Infallible;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use image::imageops::FilterType;
use medgate_daemon::trust::TrustList;
use medgate_medmnist::{self as dataset, SplitName};
use medgate_shared::envelope::OpenError;
use medgate_shared::header::{ImageMeta, Modality};
use medgate_shared::henon::{HenonKey, Keystream, Variant};
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::ids::{MessageId, Name};
use medgate_shared::keys::{self, ReceiverPrivateKey, ReceiverPublicKey};
use medgate_shared::pixels::{PixelFormat, Pixels};
use medgate_shared::quality::{BiasReport, StreamBias};
use medgate_shared::seal::{Opener, RotationPolicy, Sealer};

use crate::imageio::{self, Depth};

/// What `seal` needs to know.
#[derive(Debug, Clone)]
pub struct SealRequest {
    /// The image file.
    pub image: PathBuf,
    /// The receiver's public key.
    pub receiver_key: PathBuf,
    /// The sealing gateway's signing key (`medgate-gateway keygen`).
    pub identity: PathBuf,
    /// Site name.
    pub site: Name,
    /// Gateway name.
    pub gateway: Name,
    /// Device name.
    pub device: Name,
    /// Modality.
    pub modality: Modality,
    /// Per-device sequence number.
    pub sequence: u64,
    /// Where to write the sealed image.
    pub out: PathBuf,
}

/// The per-position bias of the first `bytes` bytes of `key`'s keystream.
pub fn keystream_bias(key: &HenonKey, variant: Variant, bytes: u64) -> BiasReport {
    let mut bias = StreamBias::default();
    let Ok(()) = each_keystream_piece(key, variant, Some(bytes), |piece| {
        bias.update(piece);
        Ok::<(), Infallible>(())
    });
    bias.report()
}

/// Writes `limit` bytes (without one, an endless stream) of the Henon
/// keystream of `key` to `out`. A reader that closes the pipe, as dieharder
/// does when its tests are done, ends it without an error.
///
/// # Errors
/// Any other write error.
pub fn write_keystream(
    key: &HenonKey,
    variant: Variant,
    limit: Option<u64>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let written = each_keystream_piece(key, variant, limit, |piece| out.write_all(piece))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing the keystream"))
        }
        _ => Ok(()),
    }
}

/// Hands `limit` bytes (without one, until `use_piece` fails) of `key`'s
/// keystream to `use_piece`, 64 KiB at a time.
fn each_keystream_piece<E>(
    key: &HenonKey,
    variant: Variant,
    limit: Option<u64>,
    mut use_piece: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut stream = Keystream::new(key, variant);
    let mut buffer = vec![0u8; 1 << 16];
    let mut left = limit.unwrap_or(u64::MAX);
    while left > 0 {
        let n = buffer
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        stream.fill(&mut buffer[..n]);
        use_piece(&buffer[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Writes a new receiver key pair into `dir`.
///
/// # Errors
/// If a key file exists already or cannot be written.
pub fn keygen(dir: &Path, bits: usize) -> anyhow::Result<(PathBuf, PathBuf)> {
    Ok(keys::write_key_pair(dir, bits)?)
}

/// Seals an image file for a receiver, keeping 16-bit depth when the file has it.
///
/// # Errors
/// If a file cannot be read, decoded or written, or the key is unusable.
pub fn seal(request: &SealRequest) -> anyhow::Result<MessageId> {
    let public = ReceiverPublicKey::read(&request.receiver_key)?;
    let pixels = imageio::read_gray(&request.image, Depth::Native)?;
    let captured_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let meta = ImageMeta {
        message_id: MessageId::random(),
        site: request.site.clone(),
        gateway: request.gateway.clone(),
        device: request.device.clone(),
        epoch: 0,
        sequence: request.sequence,
        captured_at_ms,
        modality: request.modality,
        model_hint: None,
        anatomy: Default::default(),
    };
    let identity = GatewayIdentity::read(&request.identity)?;
    let sealed = Sealer::new(public, identity, RotationPolicy::default()).seal(&meta, &pixels)?;
    imageio::write_atomically(&request.out, &sealed.bytes)?;
    Ok(meta.message_id)
}

/// Why `open` failed: the input was refused, or something else went wrong.
#[derive(Debug, thiserror::Error)]
pub enum OpenFileError {
    /// The sealed image was rejected (tampered, truncated, wrong key…).
    #[error("{path}: rejected ({reason}): {source}")]
    Rejected {
        /// The file.
        path: PathBuf,
        /// The short reason name.
        reason: &'static str,
        /// The rejection.
        source: OpenError,
    },
    /// Anything else: unreadable files, a bad key file, a failed write.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Opens a sealed image and writes it as PNG. Nothing is written unless the
/// image verifies completely.
///
/// # Errors
/// [`OpenFileError::Rejected`] for a refused input, else `Other`.
pub fn open(
    key: &Path,
    trust: &Path,
    input: &Path,
    out: &Path,
) -> Result<medgate_shared::header::Header, OpenFileError> {
    let private = ReceiverPrivateKey::read(key).map_err(anyhow::Error::from)?;
    let trust = TrustList::read(trust).map_err(anyhow::Error::from)?;
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let opened = Opener::new(private, 1)
        .open(&bytes, &trust)
        .map_err(|rejected| OpenFileError::Rejected {
            path: input.to_owned(),
            reason: rejected.error.reason(),
            source: rejected.error,
        })?;
    let png = imageio::encode_png(&opened.pixels)
        .map_err(|e| anyhow::anyhow!("encoding {}: {e}", out.display()))?;
    imageio::write_atomically(out, &png).map_err(anyhow::Error::from)?;
    Ok(opened.header)
}

/// The data file's name in a data folder.
pub const DATA_FILE: &str = "pneumoniamnist.npz";

/// Where `scripts/fetch-data` puts the data file when `MEDGATE_DATA_DIR` is
/// not set: `~/.cache/medgate/data`.
pub fn default_data_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/medgate/data"))
}

/// Where the PneumoniaMNIST file is: `--data`, else
/// `$MEDGATE_DATA_DIR/pneumoniamnist.npz`, else the file `scripts/fetch-data`
/// downloaded into [`default_data_dir`].
///
/// # Errors
/// When none is given or found.
pub fn dataset_path(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    if let Some(dir) = std::env::var_os("MEDGATE_DATA_DIR") {
        return Ok(PathBuf::from(dir).join(DATA_FILE));
    }
    match default_data_dir().map(|dir| dir.join(DATA_FILE)) {
        Some(path) if path.exists() => Ok(path),
        _ => anyhow::bail!(
            "no data file: pass --data FILE.npz, set MEDGATE_DATA_DIR to the folder holding {DATA_FILE}, or run scripts/fetch-data"
        ),
    }
}

/// Exports image `index` of a split as a `size × size` PNG (Lanczos
/// upscaling), and returns its label.
///
/// # Errors
/// If the file lacks the split or the index, or the PNG cannot be written.
pub fn export_xray(
    data: &Path,
    split: SplitName,
    index: usize,
    size: u32,
    out: &Path,
) -> anyhow::Result<u8> {
    let set = dataset::read_split(data, split)?;
    let pixels = set.image(index).with_context(|| {
        format!(
            "{}: the {} split has {} images, no index {index}",
            data.display(),
            split.as_str(),
            set.len
        )
    })?;
    let small = image::GrayImage::from_raw(set.width as u32, set.height as u32, pixels.to_vec())
        .context("image size does not match its pixels")?;
    let big = image::imageops::resize(&small, size, size, FilterType::Lanczos3);
    let px = Pixels::new(size, size, PixelFormat::Gray8, big.into_raw())?;
    let png = imageio::encode_png(&px).map_err(|e| anyhow::anyhow!("encoding: {e}"))?;
    imageio::write_atomically(out, &png)?;
    Ok(set.labels[index])
}
