//! The two ends of the contract: the [`Sealer`] a gateway keeps (session
//! keys rotated by count and age) and the [`Opener`] a receiver keeps
//! (session keys unwrapped once and cached by id).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::answer::AnswerKey;
use crate::envelope::{self, OpenError, Opened, SealError, Sealed};
use crate::header::{Header, ImageMeta};
use crate::identity::{GatewayIdentity, GatewayPublicKey};
use crate::ids::{KeyId, Name, SignerId};
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

/// Seals and signs images for one receiver key pair, rotating the session
/// key.
pub struct Sealer {
    recipient: ReceiverPublicKey,
    identity: GatewayIdentity,
    policy: RotationPolicy,
    session: Option<ActiveSession>,
}

impl Sealer {
    /// A sealer for `recipient` signing as `identity`; the first seal creates
    /// a session key.
    pub fn new(
        recipient: ReceiverPublicKey,
        identity: GatewayIdentity,
        policy: RotationPolicy,
    ) -> Self {
        Self {
            recipient,
            identity,
            policy,
            session: None,
        }
    }

    /// Seals `image` now.
    ///
    /// # Errors
    /// [`SealError`] if wrapping a new session key or encoding fails.
    pub fn seal(&mut self, meta: &ImageMeta, image: &Pixels) -> Result<Sealed, SealError> {
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
    ) -> Result<Sealed, SealError> {
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
        envelope::seal_with(&session.key, &session.wrapped, &self.identity, meta, image)
    }

    /// The id of the session key in use, if any.
    pub fn current_key_id(&self) -> Option<KeyId> {
        self.session.as_ref().map(|s| s.wrapped.key_id())
    }
}

/// Where an [`Opener`] looks up the enrolled gateways' public keys.
pub trait TrustedGateways {
    /// The key enrolled for `gateway` of `site` under id `signer`, if any.
    fn key_for(&self, site: &Name, gateway: &Name, signer: &SignerId) -> Option<GatewayPublicKey>;
}

/// A fixed list of `(site, gateway, key)`, for tools and tests; the receiver
/// uses the file-backed trust list of `medgate-daemon`.
impl TrustedGateways for [(Name, Name, GatewayPublicKey)] {
    fn key_for(&self, site: &Name, gateway: &Name, signer: &SignerId) -> Option<GatewayPublicKey> {
        self.iter()
            .find(|(s, g, k)| s == site && g == gateway && &k.id() == signer)
            .map(|(_, _, k)| *k)
    }
}

/// A refusal, with what is needed to answer it when the receiver got as far
/// as the session key (a refusal about an image it could not unwrap cannot
/// be authenticated, so it is not answered).
#[derive(Debug)]
pub struct Rejected {
    /// Why.
    pub error: OpenError,
    /// The header and answer key, when the session key was recovered.
    pub answerable: Option<Box<(Header, AnswerKey)>>,
}

impl From<OpenError> for Rejected {
    fn from(error: OpenError) -> Self {
        Self {
            error,
            answerable: None,
        }
    }
}

/// New session keys one gateway signing key may have unwrapped at once...
pub const UNWRAP_BURST: u32 = 32;
/// ...and then one more per this long. A gateway starts a session key after
/// 10 000 images or an hour, and at each restart; a signer asking for far
/// more is an enrolled key in the wrong hands or a broken gateway, and each
/// request would cost an RSA operation. Its excess is refused
/// (`key_rate_limited`) without one; a real image refused so comes back at
/// the gateway's result timeout.
pub const UNWRAP_REFILL: Duration = Duration::from_secs(10);

/// A signer's unwrap allowance.
struct Allowance {
    tokens: f64,
    at: Instant,
}

/// Session keys unwrapped so far, key ids that failed (each costs at most
/// one RSA attempt), both bounded, oldest evicted; and each signer's
/// allowance of new unwraps.
struct KeyCache {
    good: HashMap<KeyId, SessionKey>,
    good_order: VecDeque<KeyId>,
    bad: HashSet<KeyId>,
    bad_order: VecDeque<KeyId>,
    allowances: HashMap<SignerId, Allowance>,
    capacity: usize,
}

impl KeyCache {
    /// Takes one unwrap from `signer`'s allowance, if it has one left.
    fn allow_unwrap(&mut self, signer: SignerId, now: Instant) -> bool {
        // Signers are enrolled keys whose signature verified, so this map
        // is as small as the trust list; bound it anyway.
        if self.allowances.len() >= self.capacity && !self.allowances.contains_key(&signer) {
            self.allowances.clear();
        }
        let burst = f64::from(UNWRAP_BURST);
        let allowance = self.allowances.entry(signer).or_insert(Allowance {
            tokens: burst,
            at: now,
        });
        let earned =
            now.saturating_duration_since(allowance.at).as_secs_f64() / UNWRAP_REFILL.as_secs_f64();
        allowance.tokens = (allowance.tokens + earned).min(burst);
        allowance.at = now;
        if allowance.tokens >= 1.0 {
            allowance.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn remember_good(&mut self, id: KeyId, key: SessionKey) {
        if self.good.contains_key(&id) {
            return;
        }
        if self.good_order.len() >= self.capacity
            && let Some(old) = self.good_order.pop_front()
        {
            self.good.remove(&old);
        }
        self.good_order.push_back(id);
        self.good.insert(id, key);
    }

    fn remember_bad(&mut self, id: KeyId) {
        if !self.bad.insert(id) {
            return;
        }
        if self.bad_order.len() >= self.capacity
            && let Some(old) = self.bad_order.pop_front()
        {
            self.bad.remove(&old);
        }
        self.bad_order.push_back(id);
    }
}

/// Opens sealed images for one receiver key pair: checks the gateway's
/// signature first, then unwraps each session key once (RSA costs
/// milliseconds, an open of a small image microseconds) and caches it by
/// id. Shared between threads: the cache is locked only to look up and
/// insert, never during RSA or decryption.
pub struct Opener {
    key: ReceiverPrivateKey,
    cache: Mutex<KeyCache>,
}

impl Opener {
    /// An opener that caches up to `capacity` session keys and as many
    /// failed key ids (oldest evicted).
    pub fn new(key: ReceiverPrivateKey, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            key,
            cache: Mutex::new(KeyCache {
                good: HashMap::new(),
                good_order: VecDeque::new(),
                bad: HashSet::new(),
                bad_order: VecDeque::new(),
                allowances: HashMap::new(),
                capacity,
            }),
        }
    }

    /// The receiver key pair's public half.
    pub fn public(&self) -> &ReceiverPublicKey {
        self.key.public()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        // Nothing panics while holding the lock (map inserts only).
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Parses, checks the origin, unwraps (or finds the cached key),
    /// authenticates, decrypts and checks one sealed image. Cheap checks
    /// come first: form, recipient, trust list, signature; only an image
    /// signed by an enrolled gateway costs an RSA operation, and a key id
    /// that failed once is refused from memory.
    ///
    /// # Errors
    /// [`Rejected`], whose error's [`reason`](OpenError::reason) names the
    /// rejection.
    pub fn open<T: TrustedGateways + ?Sized>(
        &self,
        bytes: &[u8],
        trust: &T,
    ) -> Result<Opened, Rejected> {
        let envelope = envelope::parse(bytes).map_err(OpenError::from)?;
        self.open_parsed(&envelope, trust)
    }

    /// As [`open`](Self::open), for an envelope the caller has parsed (and
    /// checked against what it knows, e.g. the topic it came on).
    ///
    /// # Errors
    /// [`Rejected`].
    pub fn open_parsed<T: TrustedGateways + ?Sized>(
        &self,
        envelope: &envelope::Envelope<'_>,
        trust: &T,
    ) -> Result<Opened, Rejected> {
        let header = &envelope.header;
        if header.recipient != self.key.public().id() {
            return Err(OpenError::UnknownRecipient(header.recipient).into());
        }
        let meta = &header.meta;
        let Some(origin) = trust.key_for(&meta.site, &meta.gateway, &header.signer) else {
            return Err(OpenError::UnknownGateway {
                site: meta.site.clone(),
                gateway: meta.gateway.clone(),
                signer: header.signer,
            }
            .into());
        };
        if !envelope::verify_origin(envelope, &origin) {
            return Err(OpenError::BadSignature.into());
        }
        // parse() checked that key_id is the hash of these wrapped bytes, so
        // a cached key under this id was unwrapped from the same bytes.
        let cached = {
            let mut cache = self.cache();
            if cache.bad.contains(&header.key_id) {
                return Err(OpenError::UnknownKey(header.key_id).into());
            }
            let cached = cache.good.get(&header.key_id).cloned();
            if cached.is_none() && !cache.allow_unwrap(header.signer, Instant::now()) {
                return Err(OpenError::KeyRateLimited(header.signer).into());
            }
            cached
        };
        let session = match cached {
            Some(session) => session,
            None => match self.key.unwrap_key(envelope.wrapped_key) {
                Ok(session) => {
                    self.cache().remember_good(header.key_id, session.clone());
                    session
                }
                Err(_) => {
                    self.cache().remember_bad(header.key_id);
                    return Err(OpenError::UnknownKey(header.key_id).into());
                }
            },
        };
        envelope::open_with(envelope, &session).map_err(|error| Rejected {
            error,
            answerable: Some(Box::new((
                header.clone(),
                AnswerKey::derive(&session, &header.meta.message_id),
            ))),
        })
    }

    /// How many session keys are cached.
    pub fn cached_keys(&self) -> usize {
        self.cache().good.len()
    }
}
