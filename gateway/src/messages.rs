//! The messages between the gateway's parts: intake tells the publisher's
//! core what it spooled, the link tells it what the broker did, and the
//! core hands each result to the source of its device. A leaf module: it
//! uses none of those parts, so that they depend on it and not on each other.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use medgate_shared::ids::{MessageId, Name};
use medgate_shared::messages::{NotClassifiedMessage, ResultMessage};
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use tokio::sync::oneshot;

/// The largest packet the broker link carries now: `mqtt.max_packet_bytes`,
/// or the broker's own maximum once a CONNACK has named a lower one. The
/// core learns it; intake and the sources check every capture against it,
/// so that nothing is spooled that could never be published. Clones share
/// the value.
#[derive(Debug, Clone)]
pub struct LinkLimit {
    configured: u32,
    current: Arc<AtomicU32>,
}

impl LinkLimit {
    /// A limit of `configured` bytes until the broker says otherwise.
    pub fn new(configured: u32) -> Self {
        Self {
            configured,
            current: Arc::new(AtomicU32::new(configured)),
        }
    }

    /// The packet limit now, in bytes.
    pub fn get(&self) -> u32 {
        self.current.load(Ordering::Relaxed)
    }

    /// What the broker's CONNACK said (`None`: no limit of its own); the
    /// lower of it and the configured one applies.
    pub fn broker_says(&self, maximum: Option<u32>) -> u32 {
        let limit = maximum.map_or(self.configured, |m| m.min(self.configured));
        self.current.store(limit, Ordering::Relaxed);
        limit
    }
}

/// When the publisher's core last turned its loop: the systemd watchdog
/// is fed only while it does, so that a frozen core (a disk that hangs, a
/// deadlock) gets the service restarted. Clones share the value.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The loop turned.
    pub fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

/// What is wrong with each source now (a hot folder it cannot move files
/// out of, …), by device: the retained status names it until it is fixed.
/// Clones share the value.
#[derive(Debug, Clone, Default)]
pub struct Health {
    problems: Arc<Mutex<BTreeMap<String, String>>>,
    version: Arc<AtomicU64>,
}

impl Health {
    /// Records `problem` for `device` (`None`: it works); true when that
    /// changed something.
    pub fn set(&self, device: &Name, problem: Option<String>) -> bool {
        let mut problems = self.problems.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = match problem {
            Some(problem) => problems.insert(device.to_string(), problem.clone()) != Some(problem),
            None => problems.remove(device.as_str()).is_some(),
        };
        if changed {
            self.version.fetch_add(1, Ordering::Relaxed);
        }
        changed
    }

    /// The problems now.
    pub fn problems(&self) -> BTreeMap<String, String> {
        self.problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes so far (the core republishes its status when it moves).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }
}

/// What the publisher's core hears about.
pub enum Event {
    /// Intake spooled a new image.
    Spooled(Spooled),
    /// The broker accepted the connection.
    Connected {
        /// Whether it kept our session (subscriptions).
        session_present: bool,
        /// The broker's Maximum Packet Size, if it named one.
        max_packet_bytes: Option<u32>,
    },
    /// The connection dropped.
    Disconnected,
    /// A publication went out with this packet id.
    Sent(u16),
    /// The broker acknowledged (or refused) a publication.
    Acked {
        /// Packet id.
        pkid: u16,
        /// The broker's verdict.
        reason: PubAckReason,
    },
    /// A result reached its device (`true`) or could not be delivered.
    Delivered {
        /// The image.
        id: MessageId,
        /// Whether the device has it (and the spool let go of the image).
        delivered: bool,
        /// Whether the image went to quarantine.
        quarantined: bool,
    },
    /// A message on our results topics.
    Result {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Vec<u8>,
    },
}

/// A spooled image, as intake reports it to the publisher.
#[derive(Debug, Clone)]
pub struct Spooled {
    /// Its id.
    pub id: MessageId,
    /// Its device.
    pub device: Name,
    /// Capture time.
    pub captured_at_ms: u64,
}

/// What the device learns about its image.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// A receiver classified it.
    Classified(Box<ResultMessage>),
    /// A receiver opened and verified it but gave it no class on purpose
    /// (no model accepts it, or it is unlike the model's training data);
    /// the spool lets go of it as after a result.
    NotClassified(Box<NotClassifiedMessage>),
    /// It will not be classified: a receiver refused it (authenticated), or
    /// nobody answered it; it is kept in the spool's quarantine.
    Rejected(Rejection),
}

/// Why an image was quarantined, as its device is told.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// The image's message id (hex).
    pub message_id: String,
    /// `refused` or `unanswered`.
    pub cause: String,
    /// The receiver's reason (`aead`, `tag_mismatch`, `replay`), or how
    /// many publications went unanswered.
    pub reason: String,
    /// The receiver that refused it, if any.
    pub receiver: Option<String>,
}

impl Verdict {
    /// The message id it concerns (hex).
    pub fn message_id(&self) -> &str {
        match self {
            Self::Classified(result) => &result.message_id,
            Self::NotClassified(answer) => &answer.message_id,
            Self::Rejected(rejection) => &rejection.message_id,
        }
    }
}

/// A verdict on its way to the device that captured the image. The source
/// answers on `done` once the device has it (register written, file
/// written); only then does the spool let go of the image (deleted after a
/// result, moved to quarantine after a rejection). A delivery dropped
/// without an answer leaves the image spooled, to be published and
/// answered again.
pub struct Delivery {
    /// The verdict.
    pub verdict: Verdict,
    /// Answered when delivered.
    pub done: oneshot::Sender<()>,
}
