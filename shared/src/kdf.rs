//! Per-message key derivation: HKDF-SHA-256 from the session key, salted
//! with the message id, gives the AEAD key and nonce and the Henon key.
//!
//! Message ids are random 128-bit values, so no two messages share an AEAD
//! key/nonce pair or a Henon keystream; a re-publication of the same image
//! under the same id is the same message and gives the same bytes.

use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::henon::HenonKey;
use crate::ids::MessageId;

/// HKDF `info` for the 32-byte ChaCha20-Poly1305 key followed by the 12-byte nonce.
pub const AEAD_INFO: &[u8] = b"medgate/v1 aead key+nonce";
/// HKDF `info` for the 32-byte Henon key.
pub const HENON_INFO: &[u8] = b"medgate/v1 henon key";

/// A random 256-bit session key. Wiped when dropped; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// A fresh key from the operating system's generator.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Wraps raw bytes (unwrapped keys, test vectors).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

/// The keys of one message.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MessageKeys {
    /// ChaCha20-Poly1305 key.
    pub aead_key: [u8; 32],
    /// ChaCha20-Poly1305 nonce.
    pub nonce: [u8; 12],
    /// Henon cipher key.
    #[zeroize(skip)] // HenonKey wipes itself.
    pub henon: HenonKey,
}

impl MessageKeys {
    /// Derives the keys of message `id` under `session`.
    pub fn derive(session: &SessionKey, id: &MessageId) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(id.as_bytes()), session.as_bytes());
        let mut aead = [0u8; 44];
        let mut henon = [0u8; 32];
        // HKDF-SHA-256 refuses only outputs over 255 × 32 bytes; these are 44 and 32.
        #[allow(clippy::expect_used)]
        {
            hkdf.expand(AEAD_INFO, &mut aead)
                .expect("44 bytes is a valid HKDF length");
            hkdf.expand(HENON_INFO, &mut henon)
                .expect("32 bytes is a valid HKDF length");
        }
        let mut aead_key = [0u8; 32];
        let mut nonce = [0u8; 12];
        aead_key.copy_from_slice(&aead[..32]);
        nonce.copy_from_slice(&aead[32..]);
        aead.zeroize();
        let keys = Self {
            aead_key,
            nonce,
            henon: HenonKey::from_bytes(henon),
        };
        henon.zeroize();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_per_message_and_repeat_per_id() {
        let session = SessionKey::from_bytes([1; 32]);
        let a = MessageKeys::derive(&session, &MessageId([1; 16]));
        let b = MessageKeys::derive(&session, &MessageId([2; 16]));
        let a_again = MessageKeys::derive(&session, &MessageId([1; 16]));
        assert_ne!(a.aead_key, b.aead_key);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.henon, b.henon);
        assert_eq!(a.aead_key, a_again.aead_key);
        assert_ne!(&a.aead_key[..], &a.henon.as_bytes()[..]);
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(
            format!("{:?}", SessionKey::from_bytes([3; 32])),
            "SessionKey(<redacted>)"
        );
    }
}
