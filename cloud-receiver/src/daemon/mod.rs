//! The receiver daemon (`medgate-receiver run`).
//!
//! - [`config`]: the config file and its check into typed settings.
//! - [`service`]: the MQTT service: event loop, intake, shutdown.
//! - [`handler`]: one sealed image from receipt to acknowledgement.
//! - [`acks`]: acknowledgements in arrival order (MQTT 4.6).
//! - [`batcher`]: dynamic batching on a dedicated inference thread.
//! - [`dedupe`]: one classification per message id; repeats get the cached result.
//! - [`replay`]: per-device sequence windows against replayed or forged messages.
//! - [`journal`]: answers on disk, so a restart remembers them.
//! - [`rules`]: which results notify which ward.
//! - [`metrics`]: the Prometheus metrics.
pub mod acks;
pub mod batcher;
pub mod config;
pub mod dedupe;
pub mod handler;
pub mod journal;
pub mod metrics;
pub mod replay;
pub mod rules;
pub mod service;
