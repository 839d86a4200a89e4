//! Authenticated answers (format version 2): a receiver's result or refusal
//! carries an HMAC-SHA-256 keyed from the image's session key, so only a
//! party that opened that exact image could have written it. The gateway
//! keeps the per-image [`AnswerKey`] with the spooled image (it cannot
//! unwrap session keys itself) and checks every answer against it before
//! anything reaches a device.
//!
//! The MAC covers a fixed binary encoding of the answer's fields, not the
//! JSON text, so any JSON library can carry it; `shared/FORMAT.md` section 8
//! gives the encoding.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::ids::MessageId;
use crate::kdf::SessionKey;

/// HKDF `info` for the answer key.
pub const ANSWER_INFO: &[u8] = b"medgate/v2 answer key";
/// Prefix of every MAC input.
pub const ANSWER_CONTEXT: &[u8] = b"medgate/v2 answer\0";

/// The key that authenticates answers about one image. Wiped when dropped;
/// `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct AnswerKey([u8; 32]);

impl AnswerKey {
    /// HKDF-SHA-256 with salt = message id, input = session key.
    pub fn derive(session: &SessionKey, id: &MessageId) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(id.as_bytes()), session.as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is always a valid HKDF-SHA-256 output length.
        #[allow(clippy::expect_used)]
        hkdf.expand(ANSWER_INFO, &mut key)
            .expect("32 bytes is a valid HKDF length");
        Self(key)
    }

    /// From raw bytes (the spool, test vectors).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes (the spool keeps them beside the sealed image).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The MAC of `fields`.
    pub fn mac(&self, fields: &AnswerFields<'_>) -> [u8; 32] {
        let mut mac = self.hmac();
        mac.update(&fields.encode());
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `fields` (constant-time comparison).
    pub fn verify(&self, fields: &AnswerFields<'_>, tag: &[u8]) -> bool {
        let mut mac = self.hmac();
        mac.update(&fields.encode());
        mac.verify_slice(tag).is_ok()
    }

    fn hmac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        #[allow(clippy::expect_used)]
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

impl std::fmt::Debug for AnswerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswerKey(<redacted>)")
    }
}

/// What an answer says, as the MAC sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<'a> {
    /// The image was classified.
    Classified {
        /// The decided class.
        label: &'a str,
        /// Class → probability, in ascending class-name order.
        probabilities: Vec<(&'a str, f32)>,
        /// The decision threshold.
        threshold: f32,
        /// The model version.
        model_version: &'a str,
        /// The verified SHA-512 tag of the image.
        sha512: [u8; 64],
    },
    /// The image was refused, for a stable reason.
    Refused {
        /// The reason name (`tag_mismatch`, `replay`, …).
        reason: &'a str,
    },
    /// The image was opened and verified but no model gave it a class: no
    /// model accepts it, or it is unlike the chosen model's training data.
    NotClassified {
        /// `no_model` or `out_of_distribution`.
        reason: &'a str,
        /// What the device is told, e.g. "no model for MR/SHOULDER".
        detail: &'a str,
        /// The out-of-distribution score, when the gate computed one.
        score: Option<f32>,
        /// The model whose gate refused it; empty when no model fits.
        model_version: &'a str,
        /// The verified SHA-512 tag of the image.
        sha512: [u8; 64],
    },
}

/// The authenticated fields of a result or refusal.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerFields<'a> {
    /// The image's message id.
    pub message_id: MessageId,
    /// Site, gateway and device from its header.
    pub site: &'a str,
    /// Gateway.
    pub gateway: &'a str,
    /// Device.
    pub device: &'a str,
    /// The device's sequence number of the image.
    pub sequence: u64,
    /// The answering receiver.
    pub receiver: &'a str,
    /// What it says.
    pub outcome: Outcome<'a>,
}

impl AnswerFields<'_> {
    /// `self` if every string fits its u16 length and the class count its
    /// u16 count; `None` otherwise (such an answer has no MAC input: it is
    /// never answered, and refused as unreadable when received).
    pub fn checked(self) -> Option<Self> {
        let fits = |s: &str| s.len() <= usize::from(u16::MAX);
        let strings = [self.site, self.gateway, self.device, self.receiver];
        let outcome_fits = match &self.outcome {
            Outcome::Classified {
                label,
                probabilities,
                model_version,
                ..
            } => {
                fits(label)
                    && fits(model_version)
                    && probabilities.len() <= usize::from(u16::MAX)
                    && probabilities.iter().all(|(class, _)| fits(class))
            }
            Outcome::Refused { reason } => fits(reason),
            Outcome::NotClassified {
                reason,
                detail,
                model_version,
                ..
            } => fits(reason) && fits(detail) && fits(model_version),
        };
        (strings.iter().all(|s| fits(s)) && outcome_fits).then_some(self)
    }

    /// The MAC input: [`ANSWER_CONTEXT`], then the fields; strings as a u16
    /// little-endian byte length and UTF-8, integers and floats
    /// little-endian.
    pub fn encode(&self) -> Vec<u8> {
        fn put_str(out: &mut Vec<u8>, s: &str) {
            // Fields from `answer_fields` are `checked`: nothing is cut.
            // A longer string built by hand is cut to its 65 535-byte
            // prefix rather than overflow the length.
            let len = s.len().min(usize::from(u16::MAX));
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&s.as_bytes()[..len]);
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(ANSWER_CONTEXT);
        out.extend_from_slice(self.message_id.as_bytes());
        put_str(&mut out, self.site);
        put_str(&mut out, self.gateway);
        put_str(&mut out, self.device);
        out.extend_from_slice(&self.sequence.to_le_bytes());
        put_str(&mut out, self.receiver);
        match &self.outcome {
            Outcome::Classified {
                label,
                probabilities,
                threshold,
                model_version,
                sha512,
            } => {
                out.push(0);
                put_str(&mut out, label);
                let count = probabilities.len().min(usize::from(u16::MAX));
                out.extend_from_slice(&(count as u16).to_le_bytes());
                for (class, p) in probabilities.iter().take(count) {
                    put_str(&mut out, class);
                    out.extend_from_slice(&p.to_le_bytes());
                }
                out.extend_from_slice(&threshold.to_le_bytes());
                put_str(&mut out, model_version);
                out.extend_from_slice(sha512);
            }
            Outcome::Refused { reason } => {
                out.push(1);
                put_str(&mut out, reason);
            }
            Outcome::NotClassified {
                reason,
                detail,
                score,
                model_version,
                sha512,
            } => {
                out.push(2);
                put_str(&mut out, reason);
                put_str(&mut out, detail);
                match score {
                    Some(score) => {
                        out.push(1);
                        out.extend_from_slice(&score.to_le_bytes());
                    }
                    None => out.push(0),
                }
                put_str(&mut out, model_version);
                out.extend_from_slice(sha512);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(label: &str) -> AnswerFields<'_> {
        AnswerFields {
            message_id: MessageId([7; 16]),
            site: "s",
            gateway: "g",
            device: "d",
            sequence: 9,
            receiver: "r",
            outcome: Outcome::Classified {
                label,
                probabilities: vec![("normal", 0.25), ("pneumonia", 0.75)],
                threshold: 0.5,
                model_version: "m1",
                sha512: [1; 64],
            },
        }
    }

    #[test]
    fn a_mac_holds_only_for_its_key_and_fields() {
        let key = AnswerKey::derive(&SessionKey::from_bytes([3; 32]), &MessageId([7; 16]));
        let other = AnswerKey::derive(&SessionKey::from_bytes([3; 32]), &MessageId([8; 16]));
        let tag = key.mac(&fields("pneumonia"));
        assert!(key.verify(&fields("pneumonia"), &tag));
        assert!(!key.verify(&fields("normal"), &tag));
        assert!(!other.verify(&fields("pneumonia"), &tag));
        assert!(!key.verify(&fields("pneumonia"), &tag[..31]));
        let refusal = AnswerFields {
            outcome: Outcome::Refused { reason: "replay" },
            ..fields("x")
        };
        assert!(!key.verify(&refusal, &tag));
        let unclassified = |score| AnswerFields {
            outcome: Outcome::NotClassified {
                reason: "out_of_distribution",
                detail: "unlike the training images",
                score,
                model_version: "m1",
                sha512: [1; 64],
            },
            ..fields("x")
        };
        let tag = key.mac(&unclassified(Some(3.5)));
        assert!(key.verify(&unclassified(Some(3.5)), &tag));
        assert!(!key.verify(&unclassified(Some(3.0)), &tag));
        assert!(!key.verify(&unclassified(None), &tag));
        assert_eq!(format!("{key:?}"), "AnswerKey(<redacted>)");
    }

    #[test]
    fn fields_too_long_to_encode_are_refused_not_cut() {
        assert!(fields("normal").checked().is_some());
        let long = "x".repeat(usize::from(u16::MAX) + 1);
        assert!(fields(&long).checked().is_none());
        let mut too_many = fields("normal");
        if let Outcome::Classified { probabilities, .. } = &mut too_many.outcome {
            *probabilities = vec![("c", 0.0); usize::from(u16::MAX) + 1];
        }
        assert!(too_many.checked().is_none());
    }
}
