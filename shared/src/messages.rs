//! The JSON messages that travel beside sealed images: results (receiver →
//! gateway → device), clinician notifications and audit records. Gateways,
//! receivers and whatever MQTT client a clinician uses all read these, so
//! their field names are part of the contract. None carries pixels, keys or
//! patient identity.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// Where the time went.
    pub timings: Timings,
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
    /// Stable reason: `malformed`, `unknown_recipient`, `unknown_key`,
    /// `aead`, `tag_mismatch`, `topic_mismatch`, `replay`.
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
