//! The receiver's RSA key pair and the wrapping of session keys.
//!
//! The receiver owns an RSA key pair (3072 bits or more). A gateway wraps each
//! random session key with the receiver's public key (RSA-OAEP with SHA-256
//! and the label [`OAEP_LABEL`]) and sends the wrapped key in every message,
//! so any receiver holding the private key can open any message.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

use crate::ids::{KeyId, RecipientId};
use crate::kdf::SessionKey;

/// The OAEP label that binds a wrapped key to its use.
pub const OAEP_LABEL: &str = "medgate/v1 session key";
/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 3072;
/// The largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: usize = 8192;
/// The modulus size `keygen` writes.
pub const DEFAULT_RSA_BITS: usize = 3072;
/// File name of the private key written by [`write_key_pair`].
pub const PRIVATE_KEY_FILE: &str = "receiver.pem";
/// File name of the public key written by [`write_key_pair`].
pub const PUBLIC_KEY_FILE: &str = "receiver.pub.pem";

/// Why a key could not be loaded, made or used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The text is not a PEM RSA key of the expected kind.
    #[error("{what}: not a PEM {kind} (expected PKCS#8 or PKCS#1 RSA)")]
    NotPem {
        /// Where the text came from.
        what: String,
        /// "private key" or "public key".
        kind: &'static str,
    },
    /// The key is smaller or larger than accepted.
    #[error("{what}: RSA key of {bits} bits, medgate accepts {MIN_RSA_BITS} to {MAX_RSA_BITS}")]
    BadSize {
        /// Where the key came from.
        what: String,
        /// Its modulus size.
        bits: usize,
    },
    /// A key file already exists and would be overwritten.
    #[error("{0} already exists; refusing to overwrite a key (remove it first)")]
    Exists(PathBuf),
    /// A key could not be encoded as PEM.
    #[error("could not encode the key as PEM")]
    Encode,
    /// The RSA operation failed (key generation, wrapping).
    #[error("RSA operation failed: {0}")]
    Rsa(rsa::Error),
    /// The wrapped key does not open with this private key: it was made for
    /// another key pair, or it was altered.
    #[error("the wrapped session key does not open with this receiver's private key")]
    Unwrap,
}

/// A receiver's public key, as gateways hold it.
#[derive(Clone, Debug)]
pub struct ReceiverPublicKey {
    key: RsaPublicKey,
    id: RecipientId,
}

impl ReceiverPublicKey {
    fn new(key: RsaPublicKey, what: &str) -> Result<Self, KeyError> {
        check_size(key.size() * 8, what)?;
        let der = key.to_public_key_der().map_err(|_| KeyError::NotPem {
            what: what.to_owned(),
            kind: "public key",
        })?;
        let digest = Sha256::digest(der.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Ok(Self {
            key,
            id: RecipientId(id),
        })
    }

    /// Parses PEM text (`PUBLIC KEY` or `RSA PUBLIC KEY`). `what` names the
    /// source in errors.
    ///
    /// # Errors
    /// [`KeyError::NotPem`] or [`KeyError::BadSize`].
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, KeyError> {
        let key = RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::NotPem {
                what: what.to_owned(),
                kind: "public key",
            })?;
        Self::new(key, what)
    }

    /// Reads and parses a PEM file.
    ///
    /// # Errors
    /// [`KeyError::Io`], [`KeyError::NotPem`] or [`KeyError::BadSize`].
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = read_text(path)?;
        Self::from_pem(&text, &path.display().to_string())
    }

    /// The key as SubjectPublicKeyInfo PEM.
    ///
    /// # Errors
    /// [`KeyError::Encode`] if encoding fails (it does not for valid keys).
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| KeyError::Encode)
    }

    /// The recipient id carried in message headers.
    pub fn id(&self) -> RecipientId {
        self.id
    }

    /// Wraps a session key (RSA-OAEP-SHA-256; randomised, so two wraps of the
    /// same key differ).
    ///
    /// # Errors
    /// [`KeyError::Rsa`] if the RSA operation fails.
    pub fn wrap(&self, session: &SessionKey) -> Result<WrappedKey, KeyError> {
        let padding = Oaep::new_with_label::<Sha256, _>(OAEP_LABEL);
        let bytes = self
            .key
            .encrypt(&mut rand::rngs::OsRng, padding, session.as_bytes())
            .map_err(KeyError::Rsa)?;
        Ok(WrappedKey {
            recipient: self.id,
            bytes,
        })
    }
}

/// A session key wrapped for one receiver key pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    /// The key pair it was wrapped for.
    pub recipient: RecipientId,
    /// The RSA-OAEP ciphertext.
    pub bytes: Vec<u8>,
}

impl WrappedKey {
    /// The session key's id: the first 16 bytes of SHA-256 of the wrapped bytes.
    pub fn key_id(&self) -> KeyId {
        key_id_of(&self.bytes)
    }
}

/// The id of a wrapped key's bytes.
pub fn key_id_of(wrapped: &[u8]) -> KeyId {
    let digest = Sha256::digest(wrapped);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    KeyId(id)
}

/// A receiver's private key.
pub struct ReceiverPrivateKey {
    key: RsaPrivateKey,
    public: ReceiverPublicKey,
}

impl std::fmt::Debug for ReceiverPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverPrivateKey")
            .field("recipient", &self.public.id)
            .finish_non_exhaustive()
    }
}

impl ReceiverPrivateKey {
    /// Generates a new key pair of `bits` bits (seconds of CPU for 3072).
    ///
    /// # Errors
    /// [`KeyError::BadSize`] or [`KeyError::Rsa`].
    pub fn generate(bits: usize) -> Result<Self, KeyError> {
        check_size(bits, "requested key")?;
        let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, bits).map_err(KeyError::Rsa)?;
        Self::new(key, "generated key")
    }

    fn new(key: RsaPrivateKey, what: &str) -> Result<Self, KeyError> {
        let public = ReceiverPublicKey::new(key.to_public_key(), what)?;
        Ok(Self { key, public })
    }

    /// Parses PEM text (`PRIVATE KEY` or `RSA PRIVATE KEY`). `what` names the
    /// source in errors; the key text itself never appears in one.
    ///
    /// # Errors
    /// [`KeyError::NotPem`] or [`KeyError::BadSize`].
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, KeyError> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::NotPem {
                what: what.to_owned(),
                kind: "private key",
            })?;
        Self::new(key, what)
    }

    /// Reads and parses a PEM file.
    ///
    /// # Errors
    /// [`KeyError::Io`], [`KeyError::NotPem`] or [`KeyError::BadSize`].
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = zeroize::Zeroizing::new(read_text(path)?);
        Self::from_pem(&text, &path.display().to_string())
    }

    /// The matching public key.
    pub fn public(&self) -> &ReceiverPublicKey {
        &self.public
    }

    /// Unwraps a session key.
    ///
    /// # Errors
    /// [`KeyError::Unwrap`] when the bytes were not wrapped for this key pair
    /// or were altered.
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<SessionKey, KeyError> {
        let padding = Oaep::new_with_label::<Sha256, _>(OAEP_LABEL);
        let plain = zeroize::Zeroizing::new(
            self.key
                .decrypt(padding, wrapped)
                .map_err(|_| KeyError::Unwrap)?,
        );
        let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| KeyError::Unwrap)?;
        Ok(SessionKey::from_bytes(bytes))
    }

    /// The key as PKCS#8 PEM, in memory that is wiped when dropped.
    ///
    /// # Errors
    /// [`KeyError::Encode`] if encoding fails (it does not for valid keys).
    pub fn to_pem(&self) -> Result<zeroize::Zeroizing<String>, KeyError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| KeyError::Encode)
    }
}

/// Generates a key pair and writes `dir/receiver.pem` (mode 0600) and
/// `dir/receiver.pub.pem`, creating `dir` if needed. Existing files are never
/// overwritten. Returns the two paths.
///
/// # Errors
/// [`KeyError::Exists`], [`KeyError::Io`] or a generation error.
pub fn write_key_pair(dir: &Path, bits: usize) -> Result<(PathBuf, PathBuf), KeyError> {
    let private_path = dir.join(PRIVATE_KEY_FILE);
    let public_path = dir.join(PUBLIC_KEY_FILE);
    for path in [&private_path, &public_path] {
        if path.exists() {
            return Err(KeyError::Exists(path.clone()));
        }
    }
    fs::create_dir_all(dir).map_err(|source| KeyError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let key = ReceiverPrivateKey::generate(bits)?;
    write_new(&private_path, key.to_pem()?.as_bytes(), 0o600)?;
    write_new(&public_path, key.public().to_pem()?.as_bytes(), 0o644)?;
    Ok((private_path, public_path))
}

/// Creates a file that must not exist yet, with `mode` set at creation so the
/// contents are never readable by others, and syncs it.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

fn read_text(path: &Path) -> Result<String, KeyError> {
    fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

fn check_size(bits: usize, what: &str) -> Result<(), KeyError> {
    if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::BadSize {
            what: what.to_owned(),
            bits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pairs_are_written_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = write_key_pair(dir.path(), DEFAULT_RSA_BITS).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&private).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let key = ReceiverPrivateKey::read(&private).unwrap();
        let public = ReceiverPublicKey::read(&public).unwrap();
        assert_eq!(key.public().id(), public.id());
        let session = SessionKey::from_bytes([4; 32]);
        let wrapped = public.wrap(&session).unwrap();
        assert_eq!(wrapped.bytes.len(), 384);
        assert_eq!(key.unwrap_key(&wrapped.bytes).unwrap(), session);
        assert!(matches!(
            write_key_pair(dir.path(), DEFAULT_RSA_BITS),
            Err(KeyError::Exists(_))
        ));
    }

    #[test]
    fn bad_key_files_give_errors_without_their_contents() {
        let err = ReceiverPrivateKey::from_pem("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n", "k.pem")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("k.pem") && !text.contains("c2VjcmV0"),
            "{text}"
        );
        assert!(matches!(
            ReceiverPublicKey::read(Path::new("/nonexistent/key.pem")),
            Err(KeyError::Io { .. })
        ));
        assert!(matches!(
            ReceiverPrivateKey::generate(1024),
            Err(KeyError::BadSize { bits: 1024, .. })
        ));
    }

    #[test]
    fn wrapped_keys_for_another_pair_do_not_unwrap() {
        let pem = include_str!("../tests/vectors/v2.json");
        let doc: serde_json::Value = serde_json::from_str(pem).unwrap();
        let key = ReceiverPrivateKey::from_pem(
            doc["receiver_private_key_pem"].as_str().unwrap(),
            "vectors",
        )
        .unwrap();
        assert!(matches!(key.unwrap_key(&[7u8; 384]), Err(KeyError::Unwrap)));
    }
}
