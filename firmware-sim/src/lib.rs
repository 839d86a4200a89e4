//! medgate's simulator and tool box: simulated sensor firmware, the
//! one-command demo of the whole system, the load generator, cipher reports
//! and benchmarks, key and envelope tools.
//!
//! # Layout
//! - [`imageio`]: image files in, PNG out, bounded decoding, atomic writes.
//! - [`report`]: `cipher-report` text and plot.
//! - [`bench`]: `bench-cipher`, Henon beside ChaCha20-Poly1305 and SHA-512.
//! - [`tools`]: `keygen`, `seal`, `open`, `xray`.
//! - [`sensor`]: the simulated SPI image sensor.
//! - [`fleet`]: `sensor`, simulated sensors for a real gateway.
//! - [`broker`]: the embedded MQTT broker (rumqttd) of the demo.
//! - [`system`]: a whole system on one machine: PKI, broker, receivers,
//!   gateway, sensors.
//! - [`demo`]: `demo`, one line per result and a summary.
//! - [`load`]: `load`, the load generator and its ceiling.
//! - [`stats`]: latency percentiles.
//! - [`cli`]: the `medgate-sim` command line.
pub mod bench;
pub mod broker;
pub mod cli;
pub mod demo;
pub mod fleet;
pub mod imageio;
pub mod load;
pub mod report;
pub mod sensor;
pub mod stats;
pub mod system;
pub mod tools;
