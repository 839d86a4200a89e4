//! Support for medgate's tests, the simulator's demo and its load generator:
//! real components, started the way a hospital would run them, on free
//! ports of 127.0.0.1. Nothing here is part of a production daemon.
//!
//! # Layout
//! - [`pki`]: a throwaway certificate authority and client certificates.
//! - [`mosquitto`]: a real mosquitto broker (mutual TLS, optional ACLs, a
//!   log tests wait on instead of sleeping) and the shipped production ACL.
//! - [`client`]: an MQTT v5 client with a certificate identity that collects
//!   what it receives, for assertions.
//! - [`forge`]: hostile variants of sealed images.
//! - [`metrics`]: reading a daemon's Prometheus endpoint.
//! - [`procstat`]: a process's memory and CPU time from `/proc`, for
//!   benchmarks.
//! - [`write_config`]: a daemon's config file from its typed config struct.
pub mod client;
pub mod forge;
pub mod identity;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod mosquitto;
pub mod orthanc;
pub mod pki;
pub mod procstat;
pub mod rmqtt;

/// Why a config file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The value has no TOML form.
    #[error("{path}: cannot write as TOML: {source}")]
    Toml {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: toml::ser::Error,
    },
    /// The file could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Writes `config` (a daemon's typed config, such as the gateway's
/// `GatewayConfig`) to `path` as the TOML file the daemon loads, so that
/// tests, the demo and the load generator cannot drift from the keys the
/// daemons read.
///
/// # Errors
/// [`ConfigFileError`].
pub fn write_config(
    path: &std::path::Path,
    config: &impl serde::Serialize,
) -> Result<(), ConfigFileError> {
    let text = toml::to_string(config).map_err(|source| ConfigFileError::Toml {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text).map_err(|source| ConfigFileError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// A port on 127.0.0.1 that was free a moment ago.
///
/// # Errors
/// If no socket can be bound.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
