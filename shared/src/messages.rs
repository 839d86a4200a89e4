//! The JSON messages that travel beside sealed images: results (receiver →
//! gateway → device), clinician notifications and audit records. Gateways,
//! receivers and whatever MQTT client a clinician uses all read these, so
//! their field names are part of the contract. None carries pixels, keys or
//! patient identity.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::answer::{AnswerFields, Outcome};
use crate::ids::MessageId;

/// A classification, published on the device's results topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    /// The sealed image's message id (hex).
    pub message_id: String,
    /// Site of the capturing gateway.
    pub site: String,
    /// Gateway that sealed the image.
    pub gateway: String,
    /// Device that captured it.
    pub device: String,
    /// The device's sequence number of the image.
    pub sequence: u64,
    /// Capture time from the header, ms since the Unix epoch.
    pub captured_at_ms: u64,
    /// The decided class.
    pub label: String,
    /// Probability of each class.
    pub probabilities: BTreeMap<String, f32>,
    /// The decision threshold on the positive class the label came from.
    pub threshold: f32,
    /// Version of the model that classified it.
    pub model_version: String,
    /// The verified SHA-512 integrity tag of the image (hex).
    pub sha512: String,
    /// The receiver that classified it.
    pub receiver: String,
    /// Where the time went (not authenticated: informational).
    pub timings: Timings,
    /// HMAC-SHA-256 of [`Self::answer_fields`] under the image's answer key
    /// (hex): only a party that opened the image could compute it.
    pub mac: String,
}

impl ResultMessage {
    /// The authenticated fields, or `None` when the ids are not hex of the
    /// right length.
    pub fn answer_fields(&self) -> Option<AnswerFields<'_>> {
        let sha512 = sha512_bytes(&self.sha512)?;
        AnswerFields {
            message_id: self.message_id.parse::<MessageId>().ok()?,
            site: &self.site,
            gateway: &self.gateway,
            device: &self.device,
            sequence: self.sequence,
            receiver: &self.receiver,
            outcome: Outcome::Classified {
                label: &self.label,
                probabilities: self
                    .probabilities
                    .iter()
                    .map(|(k, v)| (k.as_str(), *v))
                    .collect(),
                threshold: self.threshold,
                model_version: &self.model_version,
                sha512,
            },
        }
        .checked()
    }
}

/// A SHA-512 tag from its hex form.
fn sha512_bytes(hex_text: &str) -> Option<[u8; 64]> {
    let mut sha512 = [0u8; 64];
    hex::decode_to_slice(hex_text, &mut sha512).ok()?;
    Some(sha512)
}

/// A receiver's refusal of an image it could attribute (it recovered the
/// session key), on the device's results topic: the gateway stops
/// re-publishing it and quarantines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalMessage {
    /// The sealed image's message id (hex).
    pub message_id: String,
    /// Site of the capturing gateway.
    pub site: String,
    /// Gateway that sealed the image.
    pub gateway: String,
    /// Device that captured it.
    pub device: String,
    /// The device's sequence number of the image.
    pub sequence: u64,
    /// Stable reason: `aead`, `tag_mismatch`, `topic_mismatch`, `replay`.
    pub reason: String,
    /// Human-readable detail (not authenticated; no key or pixel material).
    pub detail: String,
    /// The receiver that refused it.
    pub receiver: String,
    /// HMAC-SHA-256 of [`Self::answer_fields`] under the answer key (hex).
    pub mac: String,
}

impl RefusalMessage {
    /// The authenticated fields, or `None` when the message id is not hex.
    pub fn answer_fields(&self) -> Option<AnswerFields<'_>> {
        AnswerFields {
            message_id: self.message_id.parse::<MessageId>().ok()?,
            site: &self.site,
            gateway: &self.gateway,
            device: &self.device,
            sequence: self.sequence,
            receiver: &self.receiver,
            outcome: Outcome::Refused {
                reason: &self.reason,
            },
        }
        .checked()
    }
}

/// Why a verified image got no class ([`NotClassifiedMessage::reason`]).
pub mod not_classified {
    /// No model served by the receiver accepts the image's modality, body
    /// part, pixel format or model hint.
    pub const NO_MODEL: &str = "no_model";
    /// The chosen model's gate found the image unlike its training data.
    pub const OUT_OF_DISTRIBUTION: &str = "out_of_distribution";
}

/// An image that was opened and verified but deliberately given no class,
/// on the device's results topic: the gateway lets go of it (it is not
/// damaged, and publishing it again would get the same answer) and tells
/// the device why. Nobody is notified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotClassifiedMessage {
    /// The sealed image's message id (hex).
    pub message_id: String,
    /// Site of the capturing gateway.
    pub site: String,
    /// Gateway that sealed the image.
    pub gateway: String,
    /// Device that captured it.
    pub device: String,
    /// The device's sequence number of the image.
    pub sequence: u64,
    /// Capture time from the header, ms since the Unix epoch.
    pub captured_at_ms: u64,
    /// Stable reason: [`not_classified::NO_MODEL`] or
    /// [`not_classified::OUT_OF_DISTRIBUTION`].
    pub reason: String,
    /// What the device is told, e.g. "no model for MR/SHOULDER".
    pub detail: String,
    /// The out-of-distribution score, when a gate computed one (higher is
    /// more unlike the training data; the model card gives the limit).
    pub score: Option<f32>,
    /// The model whose gate refused the image; empty when no model fits.
    pub model_version: String,
    /// The verified SHA-512 integrity tag of the image (hex).
    pub sha512: String,
    /// The receiver that answered.
    pub receiver: String,
    /// HMAC-SHA-256 of [`Self::answer_fields`] under the answer key (hex).
    pub mac: String,
}

impl NotClassifiedMessage {
    /// The authenticated fields, or `None` when the ids are not hex of the
    /// right length.
    pub fn answer_fields(&self) -> Option<AnswerFields<'_>> {
        let sha512 = sha512_bytes(&self.sha512)?;
        AnswerFields {
            message_id: self.message_id.parse::<MessageId>().ok()?,
            site: &self.site,
            gateway: &self.gateway,
            device: &self.device,
            sequence: self.sequence,
            receiver: &self.receiver,
            outcome: Outcome::NotClassified {
                reason: &self.reason,
                detail: &self.detail,
                score: self.score,
                model_version: &self.model_version,
                sha512,
            },
        }
        .checked()
    }
}

/// What a results topic carries: `{"kind": "result", …}`,
/// `{"kind": "not_classified", …}` or `{"kind": "refusal", …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    /// A classification.
    Result(ResultMessage),
    /// A verified image given no class, on purpose.
    NotClassified(NotClassifiedMessage),
    /// A refusal.
    Refusal(RefusalMessage),
}

impl Answer {
    /// The message id it answers (hex).
    pub fn message_id(&self) -> &str {
        match self {
            Self::Result(r) => &r.message_id,
            Self::NotClassified(r) => &r.message_id,
            Self::Refusal(r) => &r.message_id,
        }
    }

    /// The authenticated fields.
    pub fn answer_fields(&self) -> Option<AnswerFields<'_>> {
        match self {
            Self::Result(r) => r.answer_fields(),
            Self::NotClassified(r) => r.answer_fields(),
            Self::Refusal(r) => r.answer_fields(),
        }
    }

    /// The MAC it carries (hex).
    pub fn mac(&self) -> &str {
        match self {
            Self::Result(r) => &r.mac,
            Self::NotClassified(r) => &r.mac,
            Self::Refusal(r) => &r.mac,
        }
    }
}

/// Receiver-side timings of one result, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Opening: key unwrap (when not cached), AEAD, Henon, SHA-512, resize.
    pub open_ms: f64,
    /// Waiting for a batch.
    pub queue_ms: f64,
    /// The inference call of the batch.
    pub inference_ms: f64,
    /// Images in that batch.
    pub batch_size: usize,
    /// Receipt to result, at the receiver.
    pub total_ms: f64,
}

/// How urgent a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Read when convenient.
    Routine,
    /// Read soon.
    Urgent,
    /// Read now.
    Critical,
}

/// A clinician notification on `notify/{ward}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The image's message id (hex), to look the study up.
    pub message_id: String,
    /// Site.
    pub site: String,
    /// Gateway.
    pub gateway: String,
    /// Capturing device.
    pub device: String,
    /// Ward notified.
    pub ward: String,
    /// Priority from the matching rule.
    pub priority: Priority,
    /// The class that matched.
    pub label: String,
    /// Its probability.
    pub probability: f32,
    /// Model version.
    pub model_version: String,
    /// Capture time, ms since the Unix epoch.
    pub captured_at_ms: u64,
}

/// A refused message, on the receiver's audit topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The receiver that refused it.
    pub receiver: String,
    /// Stable reason: `malformed`, `unknown_gateway`, `bad_signature`,
    /// `unknown_recipient`, `unknown_key`, `aead`, `tag_mismatch`,
    /// `topic_mismatch`, `replay`.
    pub reason: String,
    /// Human-readable detail (no key or pixel material).
    pub detail: String,
    /// The topic it arrived on.
    pub topic: String,
    /// Its size in bytes.
    pub bytes: usize,
    /// Header fields, when the header could be read and authenticated.
    pub message_id: Option<String>,
    /// Device from the header, when authenticated.
    pub device: Option<String>,
    /// Sequence from the header, when authenticated.
    pub sequence: Option<u64>,
    /// When it was refused, ms since the Unix epoch.
    pub at_ms: u64,
}
