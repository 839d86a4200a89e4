//! An MQTT v5 test client: connects with a client certificate from the test
//! PKI, subscribes, and hands every message it receives to the test, which
//! waits on them (with a deadline) instead of sleeping.

use std::path::Path;
use std::time::Duration;

use medgate_daemon::mqtt::{BrokerSettings, DEFAULT_MAX_PACKET_BYTES};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::{mpsc, oneshot};

use crate::mosquitto::Mosquitto;
use crate::pki::Pki;

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS files were refused.
    #[error("client set-up: {0}")]
    Setup(String),
    /// The broker connection failed or a request could not be queued.
    #[error("mqtt: {0}")]
    Mqtt(String),
    /// Nothing arrived in time.
    #[error("waited {waited:?} for {wanted} message(s) on {prefix}, got {got}")]
    Timeout {
        /// The topic prefix awaited.
        prefix: String,
        /// How many were wanted.
        wanted: usize,
        /// How many came.
        got: usize,
        /// The wait.
        waited: Duration,
    },
}

/// A connected, subscribed client.
pub struct TestClient {
    /// The rumqttc client, for publishing.
    pub client: AsyncClient,
    inbox: mpsc::UnboundedReceiver<Received>,
    /// Messages received but not yet taken by `expect` (other prefixes).
    held: Vec<Received>,
    /// How many times the connection has failed or been closed so far.
    drops: tokio::sync::watch::Receiver<u64>,
}

/// Broker settings for a client named `name` of `pki` on `broker`.
///
/// # Errors
/// If the client certificate cannot be made.
pub fn settings(pki: &Pki, broker: &Mosquitto, name: &str) -> Result<BrokerSettings, ClientError> {
    settings_at(pki, "127.0.0.1", broker.port(), name)
}

/// Broker settings for a client named `name` of `pki` on the broker at
/// `host` and `port` (a node of a cluster, say).
///
/// # Errors
/// If the client certificate cannot be made.
pub fn settings_at(
    pki: &Pki,
    host: &str,
    port: u16,
    name: &str,
) -> Result<BrokerSettings, ClientError> {
    let files = pki
        .client(name)
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    Ok(BrokerSettings {
        host: host.into(),
        port,
        ca_file: pki.ca_file(),
        cert_file: files.cert,
        key_file: files.key,
        server_name: None,
        client_id: None,
        keep_alive_secs: 30,
        max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
        receive_maximum: 512,
        max_inflight: 256,
        session_expiry_secs: 0,
    })
}

impl TestClient {
    /// Connects as `name` and subscribes to `filters` (QoS 1); returns once
    /// the broker has acknowledged every subscription.
    ///
    /// # Errors
    /// [`ClientError`] when the connection or a subscription fails in time.
    pub async fn connect(
        settings: &BrokerSettings,
        name: &str,
        filters: &[String],
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let tls = settings
            .check(Path::new("<test client>"), "mqtt")
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let (client, mut eventloop) = AsyncClient::new(settings.options(name, &tls), 1024);
        let (tx, inbox) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = oneshot::channel::<Result<(), String>>();
        let (drops_tx, drops) = tokio::sync::watch::channel(0u64);
        let wanted = filters.len();
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            let mut acks = 0;
            if wanted == 0
                && let Some(s) = subscribed_tx.take()
            {
                let _ = s.send(Ok(()));
            }
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let message = Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                        };
                        if tx.send(message).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks += 1;
                        if acks == wanted
                            && let Some(s) = subscribed_tx.take()
                        {
                            let _ = s.send(Ok(()));
                        }
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        drops_tx.send_modify(|n| *n += 1);
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(Err(e.to_string()));
                            return;
                        }
                        // Reconnects on the next poll, as a real client does.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        for filter in filters {
            client
                .subscribe(filter.clone(), QoS::AtLeastOnce)
                .await
                .map_err(|e| ClientError::Mqtt(e.to_string()))?;
        }
        match tokio::time::timeout(timeout, subscribed).await {
            Ok(Ok(Ok(()))) => Ok(Self {
                client,
                inbox,
                held: Vec::new(),
                drops,
            }),
            Ok(Ok(Err(e))) => Err(ClientError::Mqtt(e)),
            _ => Err(ClientError::Mqtt(format!(
                "no subscription acknowledgement within {timeout:?}"
            ))),
        }
    }

    /// Publishes with QoS 1.
    ///
    /// # Errors
    /// [`ClientError::Mqtt`] if the request cannot be queued.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        payload: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.client
            .publish(topic.into(), QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| ClientError::Mqtt(e.to_string()))
    }

    /// Waits for `count` messages whose topic starts with `prefix`; others
    /// are kept for later calls.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when fewer arrive within `timeout`.
    pub async fn expect(
        &mut self,
        prefix: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Received>, ClientError> {
        let mut got = Vec::new();
        let mut kept = Vec::new();
        for message in self.held.drain(..) {
            if got.len() < count && message.topic.starts_with(prefix) {
                got.push(message);
            } else {
                kept.push(message);
            }
        }
        self.held = kept;
        let deadline = tokio::time::Instant::now() + timeout;
        while got.len() < count {
            match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                Ok(Some(message)) if message.topic.starts_with(prefix) => got.push(message),
                Ok(Some(message)) => self.held.push(message),
                _ => {
                    return Err(ClientError::Timeout {
                        prefix: prefix.to_owned(),
                        wanted: count,
                        got: got.len(),
                        waited: timeout,
                    });
                }
            }
        }
        Ok(got)
    }

    /// Waits until the connection has failed or been closed by the broker
    /// `count` times in all (it reconnects after each, as a real client
    /// does).
    ///
    /// # Errors
    /// [`ClientError::Mqtt`] when that does not happen within `timeout`.
    pub async fn wait_for_drops(
        &mut self,
        count: u64,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        match tokio::time::timeout(timeout, self.drops.wait_for(|&n| n >= count)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ClientError::Mqtt(format!(
                "the connection was not closed {count} time(s) within {timeout:?}"
            ))),
        }
    }

    /// Messages that arrived and match `prefix`, without waiting.
    pub fn drain(&mut self, prefix: &str) -> Vec<Received> {
        while let Ok(message) = self.inbox.try_recv() {
            self.held.push(message);
        }
        let (matching, kept) = self
            .held
            .drain(..)
            .partition(|m| m.topic.starts_with(prefix));
        self.held = kept;
        matching
    }
}
