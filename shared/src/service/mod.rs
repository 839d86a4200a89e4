//! What both daemons (and the simulator's demo) need around the contract,
//! so that gateway and receiver configure MQTT, read config files, log and
//! expose metrics the same way. Behind the `service` feature.
//!
//! - [`settings`]: config files with `MEDGATE_…` overrides and errors that
//!   name the file, the key and the reason.
//! - [`mqtt`]: broker settings, mutual TLS (rustls, ring) and MQTT v5 options
//!   with explicit packet-size limits.
//! - [`metrics`]: a Prometheus text endpoint.
//! - [`logging`]: the `tracing` subscriber every binary installs.
//! - [`signals`]: the shutdown signal of a daemon (SIGTERM or Ctrl-C).
//! - [`procstat`]: a process's memory and CPU time, for benchmarks.
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod procstat;
pub mod settings;
pub mod signals;
