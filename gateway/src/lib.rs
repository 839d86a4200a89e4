//! The medgate gateway: captures images from sensors and hot folders, seals
//! them with [`medgate_shared`], keeps them in a durable spool and publishes
//! them over MQTT/TLS, then routes results back to the capturing device.
//!
//! # Layout
//! - [`spool`]: the durable, bounded spool of sealed images.
//!
//! The rest of the daemon (sources, publisher, results router, systemd
//! integration, metrics) is the gateway issue's work in progress. What it
//! relies on lives in `medgate-shared`: the sealed image format,
//! [`medgate_shared::seal::Sealer`] and the topic tree.

pub mod spool;

/// The version reported by `medgate-gateway --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
