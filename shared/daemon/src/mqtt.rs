//! The broker connection both daemons make: MQTT v5 over mutual TLS
//! (rustls with the ring provider), QoS 1, explicit packet-size limits.
//!
//! MQTT v5 matters: a broker that refuses a publish (too large, not allowed
//! by its ACL) says so in the PUBACK, where v3.1.1 acknowledges and drops.
//! rumqttc's default incoming limit (10 KiB) is far below an image, so the
//! limit is always set here and named in errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::{AsyncClient, MqttOptions};
use rumqttc::{NetworkOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::settings::{self, SettingsError};

/// Default TLS port of MQTT.
pub const DEFAULT_PORT: u16 = 8883;
/// Default packet limit: 16 MiB, room for a 2048×2048 16-bit image and its
/// envelope. Brokers need at least the same (`max_packet_size` in mosquitto).
pub const DEFAULT_MAX_PACKET_BYTES: u32 = 16 * 1024 * 1024;

/// The `[mqtt]` section of a daemon's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// Broker host name or IP address; also the name its certificate must
    /// carry unless `server_name` says otherwise.
    pub host: String,
    /// Broker TLS port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// CA certificate(s) (PEM) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// This client's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// This client's private key (PEM).
    pub key_file: PathBuf,
    /// Name to expect in the broker certificate, if not `host`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// MQTT client id; defaults to the program's own name from its config.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Keep-alive interval in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
    /// Largest MQTT packet this client accepts, in bytes.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: u32,
    /// Unacknowledged QoS 1 messages the broker may send at once.
    #[serde(default = "default_receive_maximum")]
    pub receive_maximum: u16,
    /// Our QoS 1 publications the broker has not acknowledged yet, at most.
    /// Also bounds memory: rumqttc keeps a slot per allowed publication,
    /// and a broker may allow 65535.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// How long the broker keeps this client's session (subscriptions and
    /// unacknowledged messages) after a disconnect, in seconds.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
}

fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_keep_alive() -> u16 {
    30
}
fn default_max_packet() -> u32 {
    DEFAULT_MAX_PACKET_BYTES
}
fn default_receive_maximum() -> u16 {
    32
}
fn default_max_inflight() -> u16 {
    32
}
fn default_session_expiry() -> u32 {
    3600
}

/// Why the TLS set-up failed. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the combination (e.g. key does not match certificate).
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A checked TLS client set-up (CA, certificate and key), ready for
/// [`BrokerSettings::options`]. Its `Debug` shows nothing of it, so that a
/// daemon's settings can be printed whole without the key.
#[derive(Clone)]
pub struct ClientTls(Arc<ClientConfig>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls(..)")
    }
}

impl BrokerSettings {
    /// Settings for the broker at `host:port` with the TLS files given and
    /// every other value at its documented default, as a file naming only
    /// these keys would give.
    pub fn new(
        host: &str,
        port: u16,
        ca_file: PathBuf,
        cert_file: PathBuf,
        key_file: PathBuf,
    ) -> Self {
        Self {
            host: host.to_owned(),
            port,
            ca_file,
            cert_file,
            key_file,
            server_name: None,
            client_id: None,
            keep_alive_secs: default_keep_alive(),
            max_packet_bytes: default_max_packet(),
            receive_maximum: default_receive_maximum(),
            max_inflight: default_max_inflight(),
            session_expiry_secs: default_session_expiry(),
        }
    }

    /// Checks the values that serde cannot: a usable port, sane limits and
    /// TLS files that exist and parse. `section` is the config section's
    /// name, for the error's key.
    ///
    /// # Errors
    /// [`SettingsError`] naming `file` and the offending key.
    pub fn check(&self, file: &Path, section: &str) -> Result<ClientTls, SettingsError> {
        let key = |k: &str| format!("{section}.{k}");
        if self.host.trim().is_empty() {
            return Err(SettingsError::key(file, key("host"), "must not be empty"));
        }
        if self.port == 0 {
            return Err(SettingsError::key(
                file,
                key("port"),
                "0 is not a usable port",
            ));
        }
        if self.max_packet_bytes < 64 * 1024 {
            return Err(SettingsError::key(
                file,
                key("max_packet_bytes"),
                format!(
                    "{} bytes cannot carry an image; use at least 65536",
                    self.max_packet_bytes
                ),
            ));
        }
        settings::in_range(file, &key("receive_maximum"), self.receive_maximum, 1..)?;
        let roots =
            read_roots(&self.ca_file).map_err(|e| SettingsError::key(file, key("ca_file"), e))?;
        let chain = read_chain(&self.cert_file)
            .map_err(|e| SettingsError::key(file, key("cert_file"), e))?;
        let private =
            read_key(&self.key_file).map_err(|e| SettingsError::key(file, key("key_file"), e))?;
        client_config(roots, chain, private)
            .map(|config| ClientTls(Arc::new(config)))
            .map_err(|e| SettingsError::key(file, key("key_file"), e))
    }

    /// MQTT v5 options for this broker: TLS with `tls`, the limits above,
    /// manual acknowledgement as asked.
    pub fn options(&self, client_id: &str, tls: &ClientTls) -> MqttOptions {
        let id = self
            .client_id
            .clone()
            .unwrap_or_else(|| client_id.to_owned());
        let host = self
            .server_name
            .clone()
            .unwrap_or_else(|| self.host.clone());
        // rumqttc takes the TLS server name from the host it dials; an
        // explicit server name therefore replaces the host, and must resolve.
        let mut options = MqttOptions::new(id, host, self.port);
        // MQTT writes whole packets; Nagle's algorithm would only hold a
        // small one (an acknowledgement, a result) back behind a delayed ACK.
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        options
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.0.clone(),
            )))
            .set_keep_alive(Duration::from_secs(u64::from(self.keep_alive_secs.max(5))))
            .set_max_packet_size(Some(self.max_packet_bytes))
            .set_receive_maximum(Some(self.receive_maximum))
            .set_outgoing_inflight_upper_limit(self.max_inflight)
            .set_clean_start(false)
            .set_session_expiry_interval(Some(self.session_expiry_secs));
        options
    }
}

/// The pause before polling a failed connection's event loop again (which
/// is how rumqttc reconnects): 100 ms, doubling up to 30 s, back to 100 ms
/// once the broker accepts the connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first pause.
    pub const FIRST: Duration = Duration::from_millis(100);
    /// The longest pause.
    pub const LONGEST: Duration = Duration::from_secs(30);

    /// A backoff at its first pause.
    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The connection is up: the next failure waits the first pause again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The pause the next [`wait`](Self::wait) takes.
    pub fn delay(&self) -> Duration {
        self.next
    }

    /// Waits the pause, then doubles it; false when `stop` came first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let waited = tokio::select! {
            () = tokio::time::sleep(self.next) => true,
            () = stop.cancelled() => false,
        };
        self.next = (self.next * 2).min(Self::LONGEST);
        waited
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// How long a daemon waits for its DISCONNECT to go out at shutdown.
pub const DISCONNECT_WAIT: Duration = Duration::from_secs(5);

/// Asks `client` to disconnect and waits, at most [`DISCONNECT_WAIT`], for
/// `poller` (the task that polls the client's event loop and ends once the
/// DISCONNECT is sent) to finish. False, with a warning, when it did not in
/// time: the caller then stops the poller itself.
pub async fn disconnect(client: &AsyncClient, poller: JoinHandle<()>) -> bool {
    let _ = client.disconnect().await;
    let confirmed = tokio::time::timeout(DISCONNECT_WAIT, poller).await.is_ok();
    if !confirmed {
        tracing::warn!("the broker did not confirm the disconnect in time");
    }
    confirmed
}

/// A rustls client configuration with the ring provider and a client
/// certificate.
///
/// # Errors
/// If rustls refuses the key or the protocol set-up.
pub fn client_config(
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

/// CA certificates from a PEM file.
///
/// # Errors
/// [`TlsError::File`] when the file is unreadable or holds no certificate.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_chain(path)? {
        roots.add(cert).map_err(|e| file_error(path, e))?;
    }
    Ok(roots)
}

/// A certificate chain from a PEM file.
///
/// # Errors
/// [`TlsError::File`] when the file is unreadable or holds no certificate.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if chain.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(chain)
}

/// A private key from a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// [`TlsError::File`] when unreadable or without a key; the message never
/// quotes the file's content.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_its_limit_and_starts_over_on_reset() {
        let stop = CancellationToken::new();
        let mut backoff = Backoff::new();
        let mut pauses = Vec::new();
        for _ in 0..12 {
            pauses.push(backoff.delay());
            let before = tokio::time::Instant::now();
            assert!(backoff.wait(&stop).await);
            assert_eq!(before.elapsed(), *pauses.last().unwrap());
        }
        assert_eq!(pauses[0], Backoff::FIRST);
        assert_eq!(pauses[1], Duration::from_millis(200));
        assert_eq!(pauses[11], Backoff::LONGEST);
        backoff.reset();
        assert_eq!(backoff.delay(), Backoff::FIRST);
        stop.cancel();
        assert!(!backoff.wait(&stop).await, "a stop ends the wait");
    }
}
