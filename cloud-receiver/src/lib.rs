//! The medgate cloud receiver: consumes sealed images from a shared MQTT
//! subscription, opens and verifies them with [`medgate_shared`], classifies
//! them, and publishes results and clinician notifications.
//!
//! # Layout
//! - [`keys`]: the receiver's key pair (`medgate-receiver keygen`).
//! - [`daemon`]: batching, de-duplication, replay windows, notification
//!   rules. The MQTT service and the model are the receiver issue's next steps.
pub mod daemon;
pub mod keys;
