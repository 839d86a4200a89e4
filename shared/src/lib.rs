//! The contract between the medgate gateway and receiver: everything the two
//! must agree on byte for byte, and nothing that only one of them needs.
//!
//! # Layout
//! - [`ids`]: topic-safe names and 128-bit message, key and recipient ids.
//! - [`pixels`]: grayscale pixel buffers (8- and 16-bit) and their limits.
//! - [`henon`]: the Henon-map image cipher (permutation + diffusion).
//! - [`kdf`]: session keys and the per-message HKDF derivation.
//! - [`keys`]: the receiver's RSA key pair, wrapping of session keys.
//! - [`identity`]: gateways' Ed25519 signing identities.
//! - [`answer`]: authenticated results and refusals (HMAC from the session key).
//! - [`header`]: the sealed-image header and modalities.
//! - [`envelope`]: the sealed-image byte format: parse, seal, open.
//! - [`seal`]: the gateway's rotating [`seal::Sealer`] and the receiver's
//!   caching [`seal::Opener`].
//! - [`topics`]: the MQTT topic tree.
//! - [`messages`]: the JSON results, notifications and audit records.
//! - [`quality`]: NPCR, UACI, entropy, correlation, MSE/PSNR and the cipher report.
//!
//! The daemons' plumbing (config files, MQTT/TLS, metrics, the command-line
//! skeleton) is the `medgate-daemon` crate in `daemon/` beside this one.
//!
//! `FORMAT.md` beside this crate describes the sealed image for a second
//! implementation; `tests/vectors/` holds the test vectors that pin it.
pub mod answer;
pub mod envelope;
pub mod header;
pub mod henon;
pub mod identity;
pub mod ids;
pub mod kdf;
pub mod keys;
pub mod messages;
pub mod pixels;
pub mod quality;
pub mod seal;
pub mod topics;
