//! The two ends of the contract: the [`Sealer`] a gateway keeps (session
//! keys rotated by count and age) and the [`Opener`] a receiver keeps
//! (session keys unwrapped once and cached by id).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::envelope::{self, OpenError, Opened, SealError};
use crate::header::ImageMeta;
use crate::ids::KeyId;
use crate::kdf::SessionKey;
use crate::keys::{ReceiverPrivateKey, ReceiverPublicKey, WrappedKey};
use crate::pixels::Pixels;

/// When a gateway replaces its session key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// After this many messages.
    pub max_messages: u64,
    /// After this much time.
    pub max_age: Duration,
}

impl Default for RotationPolicy {
    /// 10 000 messages or one hour, whichever comes first.
    fn default() -> Self {
        Self {
            max_messages: 10_000,
            max_age: Duration::from_secs(3600),
        }
    }
}

struct ActiveSession {
    key: SessionKey,
    wrapped: WrappedKey,
    started: Instant,
    messages: u64,
}

/// Seals images for one receiver key pair, rotating the session key.
pub struct Sealer {
    recipient: ReceiverPublicKey,
    policy: RotationPolicy,
    session: Option<ActiveSession>,
}

impl Sealer {
    /// A sealer for `recipient`; the first seal creates a session key.
    pub fn new(recipient: ReceiverPublicKey, policy: RotationPolicy) -> Self {
        Self {
            recipient,
            policy,
            session: None,
        }
    }

    /// Seals `image` now.
    ///
    /// # Errors
    /// [`SealError`] if wrapping a new session key or encoding fails.
    pub fn seal(&mut self, meta: &ImageMeta, image: &Pixels) -> Result<Vec<u8>, SealError> {
        self.seal_at(meta, image, Instant::now())
    }

    /// Seals `image` as of `now` (lets tests drive time).
    ///
    /// # Errors
    /// [`SealError`] if wrapping a new session key or encoding fails.
    pub fn seal_at(
        &mut self,
        meta: &ImageMeta,
        image: &Pixels,
        now: Instant,
    ) -> Result<Vec<u8>, SealError> {
        let current = match self.session.take() {
            Some(s)
                if s.messages < self.policy.max_messages
                    && now.saturating_duration_since(s.started) < self.policy.max_age =>
            {
                s
            }
            _ => {
                let key = SessionKey::random();
                let wrapped = self.recipient.wrap(&key)?;
                ActiveSession {
                    key,
                    wrapped,
                    started: now,
                    messages: 0,
                }
            }
        };
        let session = self.session.insert(current);
        session.messages += 1;
        envelope::seal_with(&session.key, &session.wrapped, meta, image)
    }

    /// The id of the session key in use, if any.
    pub fn current_key_id(&self) -> Option<KeyId> {
        self.session.as_ref().map(|s| s.wrapped.key_id())
    }
}

/// Opens sealed images for one receiver key pair, unwrapping each session key
/// once and caching it by id (RSA costs milliseconds, an open of a small
/// image microseconds).
pub struct Opener {
    key: ReceiverPrivateKey,
    cache: HashMap<KeyId, SessionKey>,
    order: VecDeque<KeyId>,
    capacity: usize,
}

impl Opener {
    /// An opener that caches up to `capacity` session keys (oldest evicted).
    pub fn new(key: ReceiverPrivateKey, capacity: usize) -> Self {
        Self {
            key,
            cache: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The receiver key pair's public half.
    pub fn public(&self) -> &ReceiverPublicKey {
        self.key.public()
    }

    /// Parses, unwraps (or finds the cached key), authenticates, decrypts and
    /// checks one sealed image.
    ///
    /// # Errors
    /// [`OpenError`], whose [`reason`](OpenError::reason) names the rejection.
    pub fn open(&mut self, bytes: &[u8]) -> Result<Opened, OpenError> {
        let envelope = envelope::parse(bytes)?;
        let header = &envelope.header;
        if header.recipient != self.key.public().id() {
            return Err(OpenError::UnknownRecipient(header.recipient));
        }
        // parse() checked that key_id is the hash of these wrapped bytes, so
        // a cached key under this id was unwrapped from the same bytes.
        if !self.cache.contains_key(&header.key_id) {
            let session = self
                .key
                .unwrap_key(envelope.wrapped_key)
                .map_err(|_| OpenError::UnknownKey(header.key_id))?;
            if self.order.len() == self.capacity
                && let Some(old) = self.order.pop_front()
            {
                self.cache.remove(&old);
            }
            self.order.push_back(header.key_id);
            self.cache.insert(header.key_id, session);
        }
        // Inserted above when missing; an absent key can only mean the same.
        let session = self
            .cache
            .get(&header.key_id)
            .ok_or(OpenError::UnknownKey(header.key_id))?;
        envelope::open_with(&envelope, session)
    }

    /// How many session keys are cached.
    pub fn cached_keys(&self) -> usize {
        self.cache.len()
    }
}
