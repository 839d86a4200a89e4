//! The simulator's MQTT brokers, both on a free port of 127.0.0.1 with TLS
//! and client certificates checked against the run's throwaway CA:
//!
//! - [`EmbeddedBroker`]: rumqttd in this process (the demo's default: no
//!   install needed). It lives in the simulator only; the gateway and
//!   receiver binaries talk to whatever broker the hospital runs. rumqttd
//!   has no access-control lists, so any client with a certificate of the
//!   run's CA may use any topic.
//! - [`Broker::Mosquitto`]: a mosquitto process (installed; `scripts/
//!   install-deps` does) running the shipped `configs/mosquitto/medgate.conf`
//!   with the rules the ACL generator writes for this run's trust list, as a
//!   site runs it.
//! - [`Broker::RmqttCluster`]: three rmqtt nodes (`scripts/install-rmqtt`)
//!   running the shipped `configs/rmqtt/` files with the rules written for
//!   rmqtt; the gateway connects to node 1 and the receivers to the other
//!   nodes in turn, so that every image and result crosses the cluster.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use medgate_daemon::acl::{self, Roles};
use medgate_daemon::mqtt::DEFAULT_MAX_PACKET_BYTES;
use medgate_daemon::trust::TrustList;
use medgate_shared::ids::Name;
use medgate_testkit::mosquitto::{BrokerOptions, Mosquitto};
use medgate_testkit::pki::{CertFiles, Pki};
use medgate_testkit::rmqtt::RmqttCluster;
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

/// Largest publication the broker accepts: the daemons' default packet limit.
const MAX_PACKET_BYTES: usize = DEFAULT_MAX_PACKET_BYTES as usize;

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

/// Which broker a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BrokerKind {
    /// mosquitto when it is installed, else the embedded broker.
    #[default]
    Auto,
    /// rumqttd in this process.
    Embedded,
    /// A mosquitto process with the shipped access rules.
    Mosquitto,
    /// Three rmqtt processes in one raft cluster, the shipped configuration.
    RmqttCluster,
}

/// Nodes of the simulator's rmqtt cluster.
const CLUSTER_NODES: usize = 3;

/// A running broker of either kind.
pub enum Broker {
    /// rumqttd in this process; it stops with the process.
    Embedded(EmbeddedBroker),
    /// A mosquitto child process; killed when dropped.
    Mosquitto(Mosquitto),
    /// rmqtt child processes; killed when dropped.
    RmqttCluster(RmqttCluster),
}

impl Broker {
    /// Starts a broker of `kind` whose server certificate and client CA come
    /// from `pki`, with its files in `dir`. Its access rules are what
    /// `medgate-receiver broker-acl` writes for the gateways of `trust` and
    /// `receivers` receivers (`receiver-1`, …), and the load generator's
    /// ceiling clients (`ceiling-pub` writes and `ceiling-sub` reads
    /// `medgate-bench/#`).
    ///
    /// # Errors
    /// If the broker does not start; for mosquitto, with its log.
    pub fn start(
        kind: BrokerKind,
        pki: &Pki,
        dir: &Path,
        trust: &TrustList,
        receivers: usize,
    ) -> anyhow::Result<Self> {
        if kind == BrokerKind::RmqttCluster {
            let rules = access_rules(trust, receivers, acl::Broker::Rmqtt)?;
            return Ok(Self::RmqttCluster(RmqttCluster::start(
                pki,
                dir,
                CLUSTER_NODES,
                &rules,
            )?));
        }
        let use_mosquitto = match kind {
            BrokerKind::Auto => medgate_testkit::mosquitto::installed(),
            BrokerKind::Embedded => false,
            BrokerKind::Mosquitto | BrokerKind::RmqttCluster => true,
        };
        Ok(if use_mosquitto {
            let options = BrokerOptions {
                acl: Some(access_rules(trust, receivers, acl::Broker::Mosquitto)?),
                shipped_config: true,
                ..BrokerOptions::default()
            };
            Self::Mosquitto(Mosquitto::start(pki, dir, &options)?)
        } else {
            Self::Embedded(EmbeddedBroker::start(
                &pki.ca_file(),
                &pki.server("broker")?,
            )?)
        })
    }

    /// Where the gateway connects (node 1 of a cluster).
    pub fn address(&self) -> SocketAddr {
        self.address_for("")
    }

    /// Where the client `identity` connects: on a cluster, `receiver-K` to
    /// node 2, 3, 2, … and the ceiling's reader to node 2; everyone else
    /// (the gateway, the ceiling's publisher) to node 1.
    pub fn address_for(&self, identity: &str) -> SocketAddr {
        match self {
            Self::Embedded(broker) => broker.address(),
            Self::Mosquitto(broker) => SocketAddr::from((Ipv4Addr::LOCALHOST, broker.port())),
            Self::RmqttCluster(cluster) => {
                let others = cluster.len().saturating_sub(1).max(1);
                let node = match identity.strip_prefix("receiver-") {
                    Some(k) => 1 + k.parse::<usize>().unwrap_or(1).saturating_sub(1) % others,
                    None if identity == "ceiling-sub" => 1,
                    None => 0,
                }
                .min(cluster.len() - 1);
                SocketAddr::new(cluster.host(node), cluster.port(node))
            }
        }
    }

    /// Its own processes, named, for a broker that runs as such (mosquitto,
    /// rmqtt's nodes); the embedded broker's CPU counts to this process.
    pub fn processes(&self) -> Vec<(String, u32)> {
        match self {
            Self::Embedded(_) => Vec::new(),
            Self::Mosquitto(broker) => broker
                .pid()
                .map(|pid| (self.describe().to_owned(), pid))
                .into_iter()
                .collect(),
            Self::RmqttCluster(cluster) => (0..cluster.len())
                .filter_map(|node| {
                    cluster
                        .pid(node)
                        .map(|pid| (format!("rmqtt node {}", node + 1), pid))
                })
                .collect(),
        }
    }

    /// What it is, for people.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Embedded(_) => "rumqttd (embedded)",
            Self::Mosquitto(_) => "mosquitto (shipped ACL)",
            Self::RmqttCluster(_) => {
                "rmqtt cluster of 3 nodes (shipped configs/rmqtt; gateway on node 1, receivers on nodes 2 and 3)"
            }
        }
    }
}

/// The rules `medgate-receiver broker-acl` writes for `trust` and the
/// receivers, and the ceiling's clients, in `syntax`.
fn access_rules(
    trust: &TrustList,
    receivers: usize,
    syntax: acl::Broker,
) -> anyhow::Result<String> {
    let roles = Roles {
        receivers: (1..=receivers)
            .map(|k| Name::new(format!("receiver-{k}")))
            .collect::<Result<_, _>>()?,
        ..Roles::default()
    };
    let mut rules = acl::render(trust, &roles, syntax)?;
    match syntax {
        acl::Broker::Rmqtt => {
            // Before the closing "deny all" rule and the array's end.
            let end = rules
                .rfind("    [\"deny\", \"all\"],")
                .ok_or_else(|| anyhow::anyhow!("rmqtt rules without their closing rule"))?;
            rules.insert_str(
                end,
                "    # medgate-sim load: the raw ceiling's clients\n\
                 \x20   [\"allow\", { user = \"ceiling-pub\", clientid = \"ceiling-pub\" }, \"connect\"],\n\
                 \x20   [\"allow\", { user = \"ceiling-pub\" }, \"publish\", [\"medgate-bench/#\"]],\n\
                 \x20   [\"allow\", { user = \"ceiling-sub\", clientid = \"ceiling-sub\" }, \"connect\"],\n\
                 \x20   [\"allow\", { user = \"ceiling-sub\" }, \"subscribe\", [\"medgate-bench/#\"]],\n",
            );
        }
        _ => rules.push_str(
            "\n# medgate-sim load: the raw ceiling's clients\nuser ceiling-pub\ntopic write medgate-bench/#\nuser ceiling-sub\ntopic read medgate-bench/#\n",
        ),
    }
    Ok(rules)
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
