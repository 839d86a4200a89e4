//! The medgate cloud receiver: consumes sealed images from a shared MQTT
//! subscription, opens and verifies them with [`medgate_shared`], classifies
//! them with a Burn CNN on a GPU (wgpu) or the CPU, and publishes results
//! and clinician notifications. It also trains and evaluates the model.
//!
//! # Layout
//! - [`config`]: the config file and its check into typed settings.
//! - [`keys`]: the receiver's key pair (`medgate-receiver keygen`).
//! - [`model`]: the classifier, its card, backends, data, metrics,
//!   `train` and `evaluate`.
//! - [`daemon`]: the MQTT service (`medgate-receiver run`): batching,
//!   de-duplication, replay protection, notification rules, metrics.
pub mod config;
pub mod daemon;
pub mod keys;
pub mod model;
