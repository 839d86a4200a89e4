//! The demo's embedded MQTT broker: rumqttd with an MQTT v5 listener on
//! 127.0.0.1, TLS with client certificates checked against the demo's
//! throwaway CA. It lives in the simulator only; the gateway and receiver
//! binaries talk to whatever broker the hospital runs (mosquitto, EMQX).
//!
//! rumqttd has no access-control lists, so inside the demo any client with
//! a certificate of the demo CA may use any topic; the access rules a site
//! runs are in `configs/mosquitto/` and tested in `tests/e2e`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use medgate_shared::pki::CertFiles;
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

/// Largest publication the broker accepts: the daemons' default packet limit.
const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// How long the broker may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No free port, or the thread could not start.
    #[error("embedded broker: {0}")]
    Io(#[from] std::io::Error),
    /// A certificate path is not valid UTF-8 (rumqttd takes strings).
    #[error("embedded broker: certificate path {0} is not UTF-8")]
    Path(String),
    /// It did not listen in time (its own error is in the log).
    #[error("embedded broker did not listen on {0} within {START_TIMEOUT:?}")]
    NotListening(SocketAddr),
}

/// A running embedded broker; it stops with the process.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBroker {
    address: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts rumqttd on a free port of 127.0.0.1 with `server` as its
    /// certificate and `ca` as the only issuer of client certificates, and
    /// returns once it accepts connections.
    ///
    /// # Errors
    /// [`BrokerError`].
    pub fn start(ca: &Path, server: &CertFiles) -> Result<Self, BrokerError> {
        let text = |path: &Path| {
            path.to_str()
                .map(str::to_owned)
                .ok_or_else(|| BrokerError::Path(path.display().to_string()))
        };
        let address = free_address()?;
        let listener = ServerSettings {
            name: "medgate-demo".to_owned(),
            listen: address,
            tls: Some(TlsConfig::Rustls {
                capath: Some(text(ca)?),
                certpath: text(&server.cert)?,
                keypath: text(&server.key)?,
            }),
            next_connection_delay_ms: 0,
            connections: ConnectionSettings {
                connection_timeout_ms: 10_000,
                max_payload_size: MAX_PACKET_BYTES,
                max_inflight_count: 256,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 1024,
                max_outgoing_packet_count: 256,
                // Each topic keeps at most three segments in memory.
                max_segment_size: 4 * MAX_PACKET_BYTES,
                max_segment_count: 3,
                ..RouterConfig::default()
            },
            v5: Some(HashMap::from([("1".to_owned(), listener)])),
            ..Config::default()
        };
        std::thread::Builder::new()
            .name("embedded-broker".to_owned())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(cause = %e, "embedded broker stopped");
                }
            })?;
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline {
                return Err(BrokerError::NotListening(address));
            }
            // Polling a port that is about to open: nothing to wait on instead.
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Self { address })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_address() -> std::io::Result<SocketAddr> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()
}
