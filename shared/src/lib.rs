//! The contract between the medgate gateway and receiver: everything the two
//! must agree on byte for byte, and nothing that only one of them needs.
//!
//! # Layout
//! - [`ids`]: topic-safe names and 128-bit message, key and recipient ids.
//! - [`pixels`]: grayscale pixel buffers (8- and 16-bit) and their limits.
//! - [`henon`]: the Henon-map image cipher (permutation + diffusion).
//! - [`quality`]: NPCR, UACI, entropy, correlation, MSE/PSNR and the cipher report.
pub mod henon;
pub mod ids;
pub mod pixels;
pub mod quality;
