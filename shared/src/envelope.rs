//! The sealed-image envelope, versions 2 to 4: layout, parsing of untrusted
//! bytes, sealing and opening. `shared/FORMAT.md` is the normative
//! description. Version 3 adds what the image shows to the header (see
//! [`crate::header`]); version 4 keeps version 3's header layout and uses
//! the Henon cipher's whitened variant ([`henon::Variant`]). Gateways write
//! version 4; receivers read all three.
//!
//! ```text
//! offset    size  field
//! 0         4     magic "MGSI"
//! 4         1     format version (2, 3 or 4)
//! 5         2     header length H, u16 little-endian, 1..=1024
//! 7         H     header (postcard, see header.rs)
//! 7+H       2     wrapped-key length K, u16 little-endian, 384..=1024
//! 9+H       K     wrapped session key (RSA-OAEP-SHA-256)
//! 9+H+K     64    Ed25519 signature of the gateway over ORIGIN_CONTEXT ‖ bytes 0..9+H+K
//! 73+H+K    N+80  body: ChaCha20-Poly1305(Henon(pixels) ‖ SHA-512 tag) ‖ Poly1305 tag (16)
//! ```
//!
//! Everything before the body is the AEAD's associated data. The SHA-512 tag
//! covers the canonical header (bytes 4 .. 7+H: version, length, header) and
//! the plaintext pixels. N is the pixel byte count the header implies; any
//! other body length is refused before any allocation or crypto.
//!
//! The signature covers the header and the wrapped key, not the body: the
//! AEAD binds the body to the session key, which only the signing gateway
//! (and the receivers) know, so one signature per image costs the same for
//! a 1 KiB and a 64 MiB image, and a receiver checks it before any RSA work.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};
use sha2::{Digest, Sha512};

use crate::answer::AnswerKey;
use crate::header::{Header, HeaderError, ImageMeta};
use crate::henon;
use crate::identity::{GatewayIdentity, GatewayPublicKey, SIGNATURE_LEN};
use crate::ids::{KeyId, Name, RecipientId, SignerId};
use crate::kdf::{MessageKeys, SessionKey};
use crate::keys::{WrappedKey, key_id_of};
use crate::pixels::{self, Pixels, PixelsError};

/// The most bytes an envelope adds to its pixels: prefix, the largest
/// header and wrapped key, signature, SHA-512 tag and Poly1305 tag. A
/// gateway uses it to know, before sealing, whether an image can travel.
pub const MAX_OVERHEAD: usize =
    PREFIX_LEN + MAX_HEADER_LEN + 2 + MAX_WRAPPED_KEY_LEN + SIGNATURE_LEN + TAG_LEN + AEAD_TAG_LEN;

/// The first four bytes of every sealed image.
pub const MAGIC: [u8; 4] = *b"MGSI";
/// The newest format version this code reads, and the one it writes.
pub const VERSION: u8 = 4;
/// The oldest format version this code reads (test vectors are still
/// written in it).
pub const OLDEST_VERSION: u8 = 2;
/// The largest encoded header accepted.
pub const MAX_HEADER_LEN: usize = 1024;
/// The smallest wrapped key accepted (RSA-3072).
pub const MIN_WRAPPED_KEY_LEN: usize = 384;
/// The largest wrapped key accepted (RSA-8192).
pub const MAX_WRAPPED_KEY_LEN: usize = 1024;
/// Length of the SHA-512 integrity tag.
pub const TAG_LEN: usize = 64;
/// Length of the Poly1305 authentication tag.
pub const AEAD_TAG_LEN: usize = 16;
/// What the gateway's signature covers, before the envelope's first bytes.
pub const ORIGIN_CONTEXT: &[u8] = b"medgate/v2 origin\0";

const PREFIX_LEN: usize = 7;

/// Why bytes are not a well-formed sealed image. Checked before any crypto.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The input ends before a field it must hold.
    #[error("sealed image truncated: {field} needs {needed} bytes, {available} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// The input does not start with [`MAGIC`].
    #[error("not a medgate sealed image (bad magic)")]
    BadMagic,
    /// A format version this code does not read.
    #[error("{}", version_message(*.0))]
    UnsupportedVersion(u8),
    /// The header length is zero or over [`MAX_HEADER_LEN`].
    #[error("header length {0} is outside 1..={MAX_HEADER_LEN}")]
    HeaderLength(usize),
    /// The header bytes do not decode.
    #[error("header does not decode: {0}")]
    Header(String),
    /// The header decodes but is not in its one canonical encoding (a
    /// version-3 header without anatomy is one).
    #[error("header is not canonically encoded")]
    NonCanonicalHeader,
    /// The header describes an impossible image.
    #[error("header describes an invalid image: {0}")]
    Image(PixelsError),
    /// The wrapped-key length is outside the accepted range.
    #[error("wrapped key length {0} is outside {MIN_WRAPPED_KEY_LEN}..={MAX_WRAPPED_KEY_LEN}")]
    WrappedKeyLength(usize),
    /// The header's key id is not the id of the wrapped key it carries.
    #[error("key id in the header does not match the wrapped key")]
    KeyIdMismatch,
    /// The body is not as long as the header implies.
    #[error("body has {actual} bytes, the header implies {expected}")]
    BodyLength {
        /// Bytes implied by the header.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
}

fn version_message(version: u8) -> String {
    if version == 1 {
        format!(
            "sealed-image format version 1 carries no gateway signature and is no longer accepted; \
             upgrade the gateway (this build reads versions {OLDEST_VERSION} to {VERSION})"
        )
    } else {
        format!(
            "sealed-image format version {version} is not supported (this build reads versions \
             {OLDEST_VERSION} to {VERSION}; a newer gateway needs a newer receiver)"
        )
    }
}

/// A sealed image split into its parts, checked for form but not opened.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The format version.
    pub version: u8,
    /// The decoded header.
    pub header: Header,
    /// The canonical header bytes covered by the SHA-512 tag.
    pub canonical_header: &'a [u8],
    /// The wrapped session key.
    pub wrapped_key: &'a [u8],
    /// The bytes the gateway signed (after [`ORIGIN_CONTEXT`]).
    pub signed: &'a [u8],
    /// The gateway's signature.
    pub signature: [u8; SIGNATURE_LEN],
    /// The AEAD associated data (everything before the body).
    pub associated_data: &'a [u8],
    /// The AEAD ciphertext and tag.
    pub body: &'a [u8],
}

/// Takes `n` bytes at `at`, or says which field was cut short.
fn take<'a>(
    bytes: &'a [u8],
    at: usize,
    n: usize,
    field: &'static str,
) -> Result<&'a [u8], FormatError> {
    bytes
        .get(at..)
        .and_then(|rest| rest.get(..n))
        .ok_or(FormatError::Truncated {
            field,
            needed: n,
            available: bytes.len().saturating_sub(at),
        })
}

fn read_u16(bytes: &[u8], at: usize, field: &'static str) -> Result<usize, FormatError> {
    let raw = take(bytes, at, 2, field)?;
    Ok(usize::from(u16::from_le_bytes([raw[0], raw[1]])))
}

/// Splits and checks untrusted bytes. Never panics, and allocates only for the
/// header's strings, whose lengths are bounded by the header length.
///
/// # Errors
/// [`FormatError`] naming the first thing wrong.
pub fn parse(bytes: &[u8]) -> Result<Envelope<'_>, FormatError> {
    let magic = take(bytes, 0, 4, "magic")?;
    if magic != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = take(bytes, 4, 1, "version")?[0];
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let header_len = read_u16(bytes, 5, "header length")?;
    if header_len == 0 || header_len > MAX_HEADER_LEN {
        return Err(FormatError::HeaderLength(header_len));
    }
    let header_bytes = take(bytes, PREFIX_LEN, header_len, "header")?;
    let header = Header::decode(version, header_bytes).map_err(|e| match e {
        HeaderError::Decode(reason) => FormatError::Header(reason),
        HeaderError::NonCanonical | HeaderError::Version(_) => FormatError::NonCanonicalHeader,
    })?;
    let pixel_len = pixels::byte_len(header.width, header.height, header.pixel_format)
        .map_err(FormatError::Image)?;

    let key_at = PREFIX_LEN + header_len;
    let key_len = read_u16(bytes, key_at, "wrapped key length")?;
    if !(MIN_WRAPPED_KEY_LEN..=MAX_WRAPPED_KEY_LEN).contains(&key_len) {
        return Err(FormatError::WrappedKeyLength(key_len));
    }
    let wrapped_key = take(bytes, key_at + 2, key_len, "wrapped key")?;
    if key_id_of(wrapped_key) != header.key_id {
        return Err(FormatError::KeyIdMismatch);
    }

    let signature_at = key_at + 2 + key_len;
    let mut signature = [0u8; SIGNATURE_LEN];
    signature.copy_from_slice(take(bytes, signature_at, SIGNATURE_LEN, "signature")?);

    let body_at = signature_at + SIGNATURE_LEN;
    let expected = pixel_len + TAG_LEN + AEAD_TAG_LEN;
    let actual = bytes.len() - body_at;
    if actual != expected {
        return Err(FormatError::BodyLength { expected, actual });
    }
    Ok(Envelope {
        version,
        header,
        canonical_header: &bytes[4..key_at],
        wrapped_key,
        signed: &bytes[..signature_at],
        signature,
        associated_data: &bytes[..body_at],
        body: &bytes[body_at..],
    })
}

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The format version cannot carry this header (version 2 with a body
    /// part or view, version 3 without), or is not one this code writes.
    #[error("a sealed image of format version {0} cannot carry this header")]
    Version(u8),
    /// The header could not be encoded within [`MAX_HEADER_LEN`].
    #[error("header encodes to {0} bytes, over the {MAX_HEADER_LEN}-byte limit")]
    HeaderTooLong(usize),
    /// The header could not be encoded.
    #[error("header does not encode: {0}")]
    Encode(String),
    /// The wrapped key has a length the format does not carry.
    #[error("wrapped key length {0} is outside {MIN_WRAPPED_KEY_LEN}..={MAX_WRAPPED_KEY_LEN}")]
    WrappedKeyLength(usize),
    /// The AEAD refused the input (only for inputs far beyond the pixel limit).
    #[error("AEAD encryption failed")]
    Aead,
    /// Wrapping a new session key failed.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
}

/// A sealed image and what its gateway keeps to check answers about it.
#[derive(Debug)]
pub struct Sealed {
    /// The envelope bytes to publish.
    pub bytes: Vec<u8>,
    /// Its SHA-512 integrity tag, which a result must name.
    pub sha512: [u8; TAG_LEN],
    /// The key that authenticates answers about it.
    pub answer_key: AnswerKey,
}

/// Seals `image` in format [`VERSION`] under an already wrapped session key
/// and signs it as `identity`. Deterministic: the same inputs give the same
/// bytes (used for test vectors); see [`crate::seal::Sealer`] for the
/// rotating front end.
///
/// # Errors
/// [`SealError`] if the header or wrapped key do not fit the format.
pub fn seal_with(
    session: &SessionKey,
    wrapped: &WrappedKey,
    identity: &GatewayIdentity,
    meta: &ImageMeta,
    image: &Pixels,
) -> Result<Sealed, SealError> {
    seal_as(VERSION, session, wrapped, identity, meta, image)
}

/// [`seal_with`] in an older format `version`, as gateways before version
/// 4 wrote it: what the test vectors of versions 2 and 3 are made with.
///
/// # Errors
/// [`SealError::Version`] for a version this code does not read or that
/// cannot carry the header, else as [`seal_with`].
pub fn seal_as(
    version: u8,
    session: &SessionKey,
    wrapped: &WrappedKey,
    identity: &GatewayIdentity,
    meta: &ImageMeta,
    image: &Pixels,
) -> Result<Sealed, SealError> {
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(SealError::Version(version));
    }
    let header = Header {
        meta: meta.clone(),
        width: image.width(),
        height: image.height(),
        pixel_format: image.format(),
        recipient: wrapped.recipient,
        key_id: wrapped.key_id(),
        signer: identity.public().id(),
    };
    let header_bytes = header.encode(version).map_err(|e| match e {
        HeaderError::Decode(reason) => SealError::Encode(reason),
        HeaderError::NonCanonical | HeaderError::Version(_) => SealError::Version(version),
    })?;
    if header_bytes.len() > MAX_HEADER_LEN {
        return Err(SealError::HeaderTooLong(header_bytes.len()));
    }
    let key_len = wrapped.bytes.len();
    if !(MIN_WRAPPED_KEY_LEN..=MAX_WRAPPED_KEY_LEN).contains(&key_len) {
        return Err(SealError::WrappedKeyLength(key_len));
    }

    let signature_at = PREFIX_LEN + header_bytes.len() + 2 + key_len;
    let body_at = signature_at + SIGNATURE_LEN;
    let pixel_len = image.data().len();
    let mut out = Vec::with_capacity(body_at + pixel_len + TAG_LEN + AEAD_TAG_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(version);
    out.extend_from_slice(&(header_bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&(key_len as u16).to_le_bytes());
    out.extend_from_slice(&wrapped.bytes);
    let signature = identity.sign(&origin_message(&out));
    out.extend_from_slice(&signature);

    let tag = integrity_tag(&out[4..PREFIX_LEN + header_bytes.len()], image.data());
    let keys = MessageKeys::derive(session, &meta.message_id);
    out.resize(body_at + pixel_len, 0);
    henon::encrypt_into(
        henon_variant(version),
        &keys.henon,
        image,
        &mut out[body_at..],
    );
    out.extend_from_slice(&tag);

    let aead = ChaCha20Poly1305::new((&keys.aead_key).into());
    let (associated, body) = out.split_at_mut(body_at);
    let aead_tag = aead
        .encrypt_in_place_detached(Nonce::from_slice(&keys.nonce), associated, body)
        .map_err(|_| SealError::Aead)?;
    out.extend_from_slice(&aead_tag);
    Ok(Sealed {
        bytes: out,
        sha512: tag,
        answer_key: AnswerKey::derive(session, &meta.message_id),
    })
}

/// What the gateway signs: [`ORIGIN_CONTEXT`] then bytes `0 .. 9+H+K`.
pub fn origin_message(signed: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(ORIGIN_CONTEXT.len() + signed.len());
    message.extend_from_slice(ORIGIN_CONTEXT);
    message.extend_from_slice(signed);
    message
}

/// Checks a parsed envelope's signature with `key`.
pub fn verify_origin(envelope: &Envelope<'_>, key: &GatewayPublicKey) -> bool {
    key.verify(&origin_message(envelope.signed), &envelope.signature)
}

/// Why a sealed image was not opened. Each variant is a rejection reason the
/// receiver counts and audits; none carries key or pixel material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The bytes are not a well-formed sealed image.
    #[error("malformed sealed image: {0}")]
    Malformed(#[from] FormatError),
    /// No enrolled gateway key matches the site, gateway and signer the
    /// header names.
    #[error("gateway {site}/{gateway} with signing key {signer} is not in the trust list")]
    UnknownGateway {
        /// Site from the header.
        site: Name,
        /// Gateway from the header.
        gateway: Name,
        /// Signer id from the header.
        signer: SignerId,
    },
    /// The signature does not verify with the enrolled key.
    #[error("the gateway signature does not verify")]
    BadSignature,
    /// The image was sealed for a receiver key pair this receiver lacks.
    #[error("sealed for recipient {0}, which this receiver does not hold")]
    UnknownRecipient(RecipientId),
    /// The wrapped session key does not open with the receiver's private key.
    #[error("session key {0} cannot be unwrapped")]
    UnknownKey(KeyId),
    /// The signing gateway asked for more new session keys than any
    /// gateway needs; this one was not tried.
    #[error("gateway key {0} asked for too many new session keys; refused without trying")]
    KeyRateLimited(SignerId),
    /// The AEAD tag does not verify: the bytes were altered or forged.
    #[error("authentication failed (AEAD tag mismatch)")]
    Aead,
    /// The SHA-512 tag does not match the decrypted pixels.
    #[error("integrity check failed (SHA-512 tag mismatch)")]
    TagMismatch,
}

impl OpenError {
    /// A short, stable name for metrics and audit messages.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownGateway { .. } => "unknown_gateway",
            Self::BadSignature => "bad_signature",
            Self::UnknownRecipient(_) => "unknown_recipient",
            Self::UnknownKey(_) => "unknown_key",
            Self::KeyRateLimited(_) => "key_rate_limited",
            Self::Aead => "aead",
            Self::TagMismatch => "tag_mismatch",
        }
    }
}

/// An opened, verified image.
#[derive(Debug, Clone)]
pub struct Opened {
    /// Its header.
    pub header: Header,
    /// Its pixels.
    pub pixels: Pixels,
    /// The verified SHA-512 tag, which names the image in results.
    pub sha512: [u8; TAG_LEN],
    /// The key that authenticates answers about it.
    pub answer_key: AnswerKey,
}

/// Opens a parsed envelope with its unwrapped session key: verifies the AEAD
/// tag, decrypts, undoes the Henon cipher and checks the SHA-512 tag.
///
/// # Errors
/// [`OpenError::Aead`] or [`OpenError::TagMismatch`].
pub fn open_with(envelope: &Envelope<'_>, session: &SessionKey) -> Result<Opened, OpenError> {
    let header = &envelope.header;
    let keys = MessageKeys::derive(session, &header.meta.message_id);
    let aead = ChaCha20Poly1305::new((&keys.aead_key).into());
    let (ciphertext, aead_tag) = envelope.body.split_at(envelope.body.len() - AEAD_TAG_LEN);
    let mut plain = ciphertext.to_vec();
    if aead
        .decrypt_in_place_detached(
            Nonce::from_slice(&keys.nonce),
            envelope.associated_data,
            &mut plain,
            Tag::from_slice(aead_tag),
        )
        .is_err()
    {
        return Err(OpenError::Aead);
    }
    let tag_at = plain.len() - TAG_LEN;
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&plain[tag_at..]);
    plain.truncate(tag_at);
    // parse() checked the length against the header, so this cannot fail;
    // map it anyway rather than trust that at a distance.
    let cipher = Pixels::new(header.width, header.height, header.pixel_format, plain)
        .map_err(|e| OpenError::Malformed(FormatError::Image(e)))?;
    let pixels = henon::decrypt_owned(henon_variant(envelope.version), &keys.henon, cipher);
    if integrity_tag(envelope.canonical_header, pixels.data()) != tag {
        return Err(OpenError::TagMismatch);
    }
    Ok(Opened {
        header: header.clone(),
        pixels,
        sha512: tag,
        answer_key: AnswerKey::derive(session, &header.meta.message_id),
    })
}

/// The Henon variant format `version` encrypts with.
pub fn henon_variant(version: u8) -> henon::Variant {
    if version >= 4 {
        henon::Variant::Whitened
    } else {
        henon::Variant::Original
    }
}

/// SHA-512 of the canonical header followed by the plaintext pixels.
pub fn integrity_tag(canonical_header: &[u8], pixels: &[u8]) -> [u8; TAG_LEN] {
    let mut hasher = Sha512::new();
    hasher.update(canonical_header);
    hasher.update(pixels);
    hasher.finalize().into()
}
