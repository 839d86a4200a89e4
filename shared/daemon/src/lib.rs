//! What medgate's two daemons (the gateway and the receiver) and the
//! simulator's demo run on besides the contract in `medgate-shared`: the
//! same config loading, broker connection, metrics endpoint, logging and
//! command line, so that both programs behave alike for the people who
//! install and operate them.
//!
//! # Layout
//! - [`settings`]: config files with `MEDGATE_…` overrides, range checks and
//!   errors that name the file, the key and the reason.
//! - [`mqtt`]: broker settings, mutual TLS (rustls, ring) and MQTT v5 options
//!   with explicit packet-size limits ([`mqtt::DEFAULT_MAX_PACKET_BYTES`]).
//! - [`metrics`]: a Prometheus text endpoint.
//! - [`logging`]: the `tracing` subscriber every binary installs, and
//!   ending the process on a panic.
//! - [`signals`]: the shutdown signal of a daemon (SIGTERM or Ctrl-C).
//! - [`cli`]: the `run` / `check-config` / `print-default-config` skeleton
//!   and its exit codes.
pub mod acl;
pub mod cli;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod settings;
pub mod signals;
pub mod trust;
