//! The medgate cloud receiver: consumes sealed images from a shared MQTT
//! subscription, opens and verifies them with [`medgate_shared`], classifies
//! them with a Burn CNN on a GPU (wgpu) or the CPU, and publishes results
//! and clinician notifications. It also trains and evaluates the model.
//!
//! # Layout
//! - [`keys`]: the receiver's key pair (`medgate-receiver keygen`).
//! - [`model`]: the classifier, its card, backends, data, metrics,
//!   `train` and `evaluate`.
//! - [`daemon`]: the MQTT service (`medgate-receiver run`): its config,
//!   batching, de-duplication, replay protection, notification rules,
//!   metrics.
//! - [`plotting`]: the font for report plots.
//! - [`cli`]: the `medgate-receiver` command line.
pub mod cli;
pub mod daemon;
pub mod keys;
pub mod model;
pub mod plotting;
