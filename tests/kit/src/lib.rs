//! Test support shared by medgate's integration and end-to-end tests: real
//! components, started the way a hospital would run them, on free ports of
//! 127.0.0.1.
//!
//! # Layout
//! - [`pki`]: the throwaway certificate authority of `medgate_shared::pki`.
//! - [`mosquitto`]: the real mosquitto broker of `medgate_shared::mosquitto`
//!   (mutual TLS, optional ACLs, a log tests wait on instead of sleeping)
//!   and the shipped production ACL.
//! - [`client`]: an MQTT v5 client with a certificate identity that collects
//!   what it receives, for assertions.
//! - [`forge`]: hostile variants of sealed images.
//! - [`metrics`]: reading a daemon's Prometheus endpoint.
pub mod client;
pub mod forge;
pub mod metrics;
pub mod mosquitto;
pub use medgate_shared::pki;

/// A port on 127.0.0.1 that was free a moment ago.
///
/// # Errors
/// If no socket can be bound.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
