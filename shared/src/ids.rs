//! Identifiers carried in sealed-image headers and MQTT topics.
//!
//! Names (site, gateway, device, ward, model hint) become MQTT topic levels,
//! so they are restricted to a small, topic-safe alphabet and a bounded
//! length; the 128-bit ids are fixed-size byte strings printed as hex.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Why a string is not a valid [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The string is empty.
    #[error("a name cannot be empty")]
    Empty,
    /// The string is longer than [`MAX_NAME_LEN`] bytes.
    #[error("a name is at most {MAX_NAME_LEN} bytes, this one has {0}")]
    TooLong(usize),
    /// The string holds a character outside `A-Z a-z 0-9 - _ .`.
    #[error("a name may hold only letters, digits, '-', '_' and '.', not {0:?}")]
    BadCharacter(char),
}

/// A site, gateway, device or ward name: 1 to 64 bytes of `A-Z a-z 0-9 - _ .`.
///
/// These become MQTT topic levels, so `/`, `+`, `#` and `$` must never appear.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Checks `value` and wraps it.
    ///
    /// # Errors
    /// [`NameError`] when the string is empty, too long or holds a character
    /// that is not topic-safe.
    pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
        let value = value.into();
        if value.is_empty() {
            return Err(NameError::Empty);
        }
        if value.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(value.len()));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(NameError::BadCharacter(bad));
        }
        Ok(Self(value))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::new(raw).map_err(serde::de::Error::custom)
    }
}

macro_rules! id128 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// The raw 16 bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }

        impl FromStr for $name {
            type Err = hex::FromHexError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 16];
                hex::decode_to_slice(s, &mut out)?;
                Ok(Self(out))
            }
        }
    };
}

id128!(
    /// A sealed image's unique 128-bit id, random per captured image. A
    /// re-publication of the same image keeps its id, which is how receivers
    /// recognise duplicates.
    MessageId
);
id128!(
    /// Names a session key: the first 16 bytes of SHA-256 of the wrapped key,
    /// so a receiver can check that a cached key really belongs to a message.
    KeyId
);
id128!(
    /// Names a receiver key pair: the first 16 bytes of SHA-256 of the public
    /// key's DER (SubjectPublicKeyInfo) encoding.
    RecipientId
);

id128!(
    /// Names a gateway's signing key: the first 16 bytes of SHA-256 of its
    /// 32-byte Ed25519 public key.
    SignerId
);

impl MessageId {
    /// A fresh random id from the operating system's generator.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_topic_safe_strings() {
        assert_eq!(Name::new("ward-3.B_x").unwrap().as_str(), "ward-3.B_x");
    }

    #[test]
    fn names_refuse_topic_syntax_and_bad_lengths() {
        for bad in ["a/b", "+", "#", "$SYS", "a b", "é"] {
            assert!(
                matches!(Name::new(bad), Err(NameError::BadCharacter(_))),
                "{bad}"
            );
        }
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("x".repeat(65)), Err(NameError::TooLong(65)));
        assert!(Name::new("x".repeat(64)).is_ok());
    }

    #[test]
    fn ids_print_and_parse_as_hex() {
        let id = MessageId([0xab; 16]);
        let text = id.to_string();
        assert_eq!(text, "ab".repeat(16));
        assert_eq!(text.parse::<MessageId>().unwrap(), id);
        assert!("zz".parse::<MessageId>().is_err());
    }
}
