//! The medgate cloud receiver: consumes sealed images from a shared MQTT
//! subscription, opens and verifies them with [`medgate_shared`], classifies
//! them, and publishes results and clinician notifications.
//!
//! # Layout
//! - [`keys`]: the receiver's key pair (`medgate-receiver keygen`).
//!
//! The daemon, the model (train, evaluate, infer) and result publishing are
//! the receiver issue's work.
pub mod keys;
