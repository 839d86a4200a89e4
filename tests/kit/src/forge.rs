//! Hostile variants of a sealed image, for tests that the receiver refuses
//! them with the right reason.

use medgate_shared::envelope::{self, FormatError};
use medgate_shared::identity::{GatewayIdentity, SIGNATURE_LEN};
use medgate_shared::keys::key_id_of;

/// One bit of the ciphertext flipped (refused as `aead`).
pub fn tampered(sealed: &[u8]) -> Vec<u8> {
    let mut bad = sealed.to_vec();
    let at = bad.len().saturating_sub(40);
    if let Some(byte) = bad.get_mut(at) {
        *byte ^= 1;
    }
    bad
}

/// Another wrapped session key under a matching key id, signed again by
/// `identity` (the enrolled gateway, or a stranger), so the envelope parses
/// and its origin checks but the key does not unwrap (refused as
/// `unknown_key`).
///
/// # Errors
/// If `sealed` is not a well-formed sealed image.
pub fn with_unknown_key(sealed: &[u8], identity: &GatewayIdentity) -> Result<Vec<u8>, FormatError> {
    let len = envelope::parse(sealed)?.wrapped_key.len();
    with_wrapped_key(sealed, identity, &vec![0x5a; len])
}

/// `sealed` with `wrapped` (as long as its own wrapped key) in place of its
/// wrapped key, the key id to match, signed again by `identity`.
///
/// # Errors
/// If `sealed` is not a well-formed sealed image.
///
/// # Panics
/// When `wrapped` is not as long as the wrapped key it replaces.
pub fn with_wrapped_key(
    sealed: &[u8],
    identity: &GatewayIdentity,
    wrapped: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let parsed = envelope::parse(sealed)?;
    let body_at = parsed.associated_data.len() - SIGNATURE_LEN;
    let key_at = body_at - parsed.wrapped_key.len();
    let old_id = parsed.header.key_id;
    let mut bad = sealed.to_vec();
    bad[key_at..body_at].copy_from_slice(wrapped);
    let forged_id = key_id_of(&bad[key_at..body_at]);
    // The key id sits in the header, before the wrapped key.
    if let Some(id_at) = bad[..key_at]
        .windows(16)
        .position(|w| w == old_id.as_bytes())
    {
        bad[id_at..id_at + 16].copy_from_slice(forged_id.as_bytes());
    }
    let signature = identity.sign(&envelope::origin_message(&bad[..body_at]));
    bad[body_at..body_at + SIGNATURE_LEN].copy_from_slice(&signature);
    Ok(bad)
}
