//! The receiver daemon's building blocks. The MQTT service that ties them
//! together (`medgate-receiver run`) is the next step of the receiver issue.
//!
//! - [`batcher`]: dynamic batching on a dedicated inference thread.
//! - [`dedupe`]: one classification per message id; repeats get the cached result.
//! - [`replay`]: per-device sequence windows against replayed or forged messages.
//! - [`rules`]: which results notify which ward.
pub mod batcher;
pub mod dedupe;
pub mod replay;
pub mod rules;
