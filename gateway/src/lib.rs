//! The medgate gateway: captures images from sensors and hot folders, seals
//! them with [`medgate_shared`], keeps them in a durable spool and publishes
//! them over MQTT/TLS, then routes results back to the capturing device.
//!
//! # Layout
//! - [`config`]: the config file and its check into typed settings.
//! - [`capture`]: decoding and preparing captured images.
//! - [`dicom`]: DICOM input (so far: the structural check before parsing).
//! - [`sources`]: image sources behind one trait (hot folders, SPI sensors).
//! - [`messages`]: what intake, the publisher and the sources tell each
//!   other (a leaf module, so that they do not depend on each other).
//! - [`intake`]: captures become sealed, spooled images, or are refused.
//! - [`sequence`]: per-device sequence numbers that survive restarts.
//! - [`spool`]: the durable, bounded spool of sealed images.
//! - [`publisher`]: the broker link and the core's state machine:
//!   publication, acknowledgement, re-publication, results.
//! - [`metrics`]: the Prometheus metrics.
//! - [`service`]: `run`, which ties them together, with systemd notifications.
//! - [`cli`]: the `medgate-gateway` command line.
pub mod capture;
pub mod cli;
pub mod config;
pub mod dicom;
pub mod intake;
pub mod messages;
pub mod metrics;
pub mod publisher;
pub mod sequence;
pub mod service;
pub mod sources;
pub mod spool;

/// The version reported by `medgate-gateway --version` and in its status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
