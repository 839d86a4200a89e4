//! Gateway signing identities (format version 2): every gateway holds its own
//! Ed25519 key pair and signs each sealed image with it; receivers keep a
//! trust list of the public halves (see `trust.rs` in the receiver) and
//! refuse anything not signed by the gateway its header names.
//!
//! Files: the private key is PKCS#8 PEM (`PRIVATE KEY`), written mode 0600;
//! the public key travels as 64 hex digits (32 bytes), which is what a trust
//! list entry holds.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::ids::SignerId;
use crate::keys::KeyError;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A gateway's public key as a trust list holds it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GatewayPublicKey(VerifyingKey);

/// Why text is not a gateway public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    /// Not 64 hex digits.
    #[error("a gateway public key is 64 hex digits (32 bytes)")]
    NotHex,
    /// 32 bytes that are not a valid Ed25519 point.
    #[error("not a valid Ed25519 public key")]
    NotAKey,
}

impl GatewayPublicKey {
    /// From the 32 raw bytes.
    ///
    /// # Errors
    /// [`PublicKeyError::NotAKey`] when the bytes are not a curve point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, PublicKeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| PublicKeyError::NotAKey)
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The id a sealed header names this key by: the first 16 bytes of
    /// SHA-256 of the 32 public key bytes.
    pub fn id(&self) -> SignerId {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        SignerId(id)
    }

    /// Checks `signature` over `message` (strict verification: no malleable
    /// or small-order encodings).
    pub fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Display for GatewayPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for GatewayPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GatewayPublicKey({self})")
    }
}

impl FromStr for GatewayPublicKey {
    type Err = PublicKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut bytes).map_err(|_| PublicKeyError::NotHex)?;
        Self::from_bytes(&bytes)
    }
}

/// A gateway's private signing key. `Debug` shows only the public half; the
/// secret is wiped when dropped.
#[derive(Clone)]
pub struct GatewayIdentity {
    key: SigningKey,
}

impl GatewayIdentity {
    /// A fresh identity from the operating system's generator.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// From 32 secret bytes (test vectors).
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(secret),
        }
    }

    /// Parses a PKCS#8 PEM private key.
    ///
    /// # Errors
    /// [`KeyError::NotPem`] naming `what`; the text is never echoed.
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Self { key })
            .map_err(|_| KeyError::NotPem {
                what: what.to_owned(),
                kind: "Ed25519 private key",
            })
    }

    /// Reads a PKCS#8 PEM private key file.
    ///
    /// # Errors
    /// [`KeyError::Io`] or [`KeyError::NotPem`].
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&text, &path.display().to_string())
    }

    /// The PKCS#8 PEM text (secret: keep it out of logs).
    ///
    /// # Errors
    /// [`KeyError::Encode`].
    pub fn to_pem(&self) -> Result<zeroize::Zeroizing<String>, KeyError> {
        self.key
            .to_pkcs8_pem(Default::default())
            .map_err(|_| KeyError::Encode)
    }

    /// Writes a new identity to `path` (mode 0600), refusing to overwrite.
    ///
    /// # Errors
    /// [`KeyError::Exists`], [`KeyError::Io`] or [`KeyError::Encode`].
    pub fn write_new(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            return Err(KeyError::Exists(path.to_owned()));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let identity = Self::generate();
        crate::keys::write_new(path, identity.to_pem()?.as_bytes(), 0o600)?;
        Ok(identity)
    }

    /// The public half.
    pub fn public(&self) -> GatewayPublicKey {
        GatewayPublicKey(self.key.verifying_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(message).to_bytes()
    }
}

impl fmt::Debug for GatewayIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GatewayIdentity(public {})", self.public())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let a = GatewayIdentity::generate();
        let b = GatewayIdentity::generate();
        let signature = a.sign(b"hello");
        assert!(a.public().verify(b"hello", &signature));
        assert!(!a.public().verify(b"hellp", &signature));
        assert!(!b.public().verify(b"hello", &signature));
        assert_ne!(a.public().id(), b.public().id());
    }

    #[test]
    fn keys_survive_pem_and_hex_and_debug_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/identity.pem");
        let written = GatewayIdentity::write_new(&path).unwrap();
        assert!(matches!(
            GatewayIdentity::write_new(&path),
            Err(KeyError::Exists(_))
        ));
        let read = GatewayIdentity::read(&path).unwrap();
        assert_eq!(read.public(), written.public());
        let text = written.public().to_string();
        assert_eq!(text.parse::<GatewayPublicKey>().unwrap(), written.public());
        assert_eq!(
            "00".parse::<GatewayPublicKey>(),
            Err(PublicKeyError::NotHex)
        );
        let debug = format!("{read:?}");
        assert!(debug.contains(&text), "{debug}");
        assert!(!debug.contains(&hex::encode(read.key.to_bytes())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
