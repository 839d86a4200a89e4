//! Helpers shared by the integration tests: the published test key and the
//! vector file.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test binary uses a subset.

use medgate_shared::identity::{GatewayIdentity, GatewayPublicKey};
use medgate_shared::ids::Name;
use medgate_shared::keys::ReceiverPrivateKey;
use serde_json::Value;

/// The version-2 vector document, which holds the published test keys.
pub fn vectors() -> Value {
    serde_json::from_str(include_str!("../vectors/v2.json")).unwrap()
}

/// Every vector document with its format version: 2 (headers without
/// anatomy), 3 (with) and 4 (the whitened Henon variant). All use the same
/// test keys.
pub fn vector_documents() -> Vec<(u8, Value)> {
    vec![
        (2, vectors()),
        (
            3,
            serde_json::from_str(include_str!("../vectors/v3.json")).unwrap(),
        ),
        (
            4,
            serde_json::from_str(include_str!("../vectors/v4.json")).unwrap(),
        ),
    ]
}

/// The published test gateway identity from the vector file.
pub fn test_identity() -> GatewayIdentity {
    GatewayIdentity::from_secret(&bytes(&vectors(), "gateway_secret_key").try_into().unwrap())
}

/// A trust list holding the test gateway for `site`/`gateway`.
pub fn trust(site: &str, gateway: &str) -> Vec<(Name, Name, GatewayPublicKey)> {
    vec![(
        site.parse().unwrap(),
        gateway.parse().unwrap(),
        test_identity().public(),
    )]
}

/// The published test receiver key from the vector file.
pub fn test_key() -> ReceiverPrivateKey {
    let doc = vectors();
    ReceiverPrivateKey::from_pem(
        doc["receiver_private_key_pem"].as_str().unwrap(),
        "test vectors",
    )
    .unwrap()
}

/// A string field of a vector.
pub fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {field} missing"))
}

/// A hex field of a vector, decoded.
pub fn bytes(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(text(v, field)).unwrap()
}
