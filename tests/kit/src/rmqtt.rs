//! A real rmqtt cluster (rmqttd with the rmqtt-cluster-raft plugin) started
//! for a test: one node per loopback address (127.0.0.1, 127.0.0.2, ...),
//! every port free, each node running the shipped `configs/rmqtt/` files
//! with only addresses, ports, certificate paths and the access rules
//! changed. Each node's log goes to a pipe that a thread reads, so callers
//! wait for what a node says instead of sleeping.
//!
//! rmqttd comes from `scripts/install-rmqtt` (`$RMQTTD`, or its cache under
//! `~/.cache/medgate`).

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::logs::ProcessLog;
use crate::mosquitto::BrokerError;
use crate::pki::Pki;

/// How long a node may take to start, or a cluster to form.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The rmqttd version `scripts/install-rmqtt` builds.
pub const VERSION: &str = "0.24.0";

/// One node's addresses.
#[derive(Debug, Clone, Copy)]
struct Addresses {
    host: Ipv4Addr,
    mqtt: u16,
    grpc: u16,
    raft: u16,
}

struct Node {
    id: usize,
    addresses: Addresses,
    config: PathBuf,
    child: Option<Child>,
    log: ProcessLog,
}

/// A running rmqtt cluster; every node is killed when it is dropped.
pub struct RmqttCluster {
    nodes: Vec<Node>,
}

impl RmqttCluster {
    /// Writes each node's config into `dir/node-N` (a server certificate
    /// for the node's address from `pki`, the access rules `acl` as
    /// `plugins/rmqtt-acl.toml`) and starts `size` nodes, returning once
    /// every one has joined the cluster.
    ///
    /// # Errors
    /// [`BrokerError`], with the logs when a node did not come up.
    pub fn start(pki: &Pki, dir: &Path, size: usize, acl: &str) -> Result<Self, BrokerError> {
        let io = |what: String| move |source| BrokerError::Io { what, source };
        let addresses = (1..=size)
            .map(|id| {
                let host = Ipv4Addr::new(127, 0, 0, id as u8);
                Ok(Addresses {
                    host,
                    mqtt: free_port_on(host)?,
                    grpc: free_port_on(host)?,
                    raft: free_port_on(host)?,
                })
            })
            .collect::<Result<Vec<_>, std::io::Error>>()
            .map_err(io("finding free ports".into()))?;
        let mut nodes = Vec::new();
        for (index, own) in addresses.iter().enumerate() {
            let id = index + 1;
            let node_dir = dir.join(format!("node-{id}"));
            let plugins = node_dir.join("plugins");
            std::fs::create_dir_all(&plugins)
                .map_err(io(format!("creating {}", plugins.display())))?;
            let server = pki.server_for(&format!("rmqtt-node-{id}"), &[&own.host.to_string()])?;
            let config = write_node_config(&node_dir, id, own, &addresses, pki, &server, acl)?;
            nodes.push(Node {
                id,
                addresses: *own,
                config,
                child: None,
                log: ProcessLog::default(),
            });
        }
        let mut cluster = Self { nodes };
        for index in 0..size {
            cluster.launch(index)?;
        }
        for index in 0..size {
            cluster.wait_until_ready(index, index > 0)?;
        }
        Ok(cluster)
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `index`'s address (127.0.0.`index + 1`).
    pub fn host(&self, index: usize) -> IpAddr {
        IpAddr::V4(self.nodes[index].addresses.host)
    }

    /// Node `index`'s MQTT/TLS port.
    pub fn port(&self, index: usize) -> u16 {
        self.nodes[index].addresses.mqtt
    }

    /// Node `index`'s process id while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.nodes[index].child.as_ref().map(Child::id)
    }

    /// Kills node `index` (SIGKILL): its clients see their connections drop
    /// and the other nodes lose a peer.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `index` again with the same config and ports; returns
    /// once it is back in the cluster.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&mut self, index: usize) -> Result<(), BrokerError> {
        self.kill(index);
        self.launch(index)?;
        // The others run on: it must join them, not found a cluster.
        self.wait_until_ready(index, true)
    }

    /// Waits until a line of node `index`'s log (after line `from`) contains
    /// `needle`; returns that line's index.
    ///
    /// # Errors
    /// [`BrokerError::Timeout`] with the node's whole log.
    pub fn wait_for_log(
        &self,
        index: usize,
        needle: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<usize, BrokerError> {
        self.nodes[index]
            .log
            .wait_for(needle, from, timeout)
            .map_err(|e| BrokerError::Timeout {
                needle: format!("node {}: {}", index + 1, e.needle),
                timeout,
                log: e.log,
            })
    }

    /// Number of lines node `index` has logged (a start for `wait_for_log`).
    pub fn log_len(&self, index: usize) -> usize {
        self.nodes[index].log.len()
    }

    /// Everything node `index` has logged since it was last started.
    pub fn log_text(&self, index: usize) -> String {
        self.nodes[index].log.text()
    }

    fn launch(&mut self, index: usize) -> Result<(), BrokerError> {
        let node = &mut self.nodes[index];
        let dir = node
            .config
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut child = Command::new(binary())
            .arg("-f")
            .arg(&node.config)
            .args(["--id", &node.id.to_string()])
            // Its own folder: rmqttd also reads ./rmqtt.toml when there is one.
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| BrokerError::Io {
                what: format!(
                    "starting {} (scripts/install-rmqtt builds it; or set RMQTTD)",
                    binary().display()
                ),
                source,
            })?;
        node.log = ProcessLog::attach(&mut child);
        node.child = Some(child);
        Ok(())
    }

    /// Waits until node `index` listens (which it does only once its raft
    /// plugin runs) and, for a node that must join a running cluster, that
    /// it joined as a follower.
    fn wait_until_ready(&mut self, index: usize, joins: bool) -> Result<(), BrokerError> {
        let mut result = self.wait_for_log(index, READY, 0, START_TIMEOUT);
        if joins && result.is_ok() {
            result = self.wait_for_log(index, JOINED, 0, START_TIMEOUT);
        }
        if result.is_err() {
            self.kill(index);
        }
        result.map(|_| ())
    }
}

impl Drop for RmqttCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}

/// What a node logs once its listener is up (after its cluster plugin has
/// joined the raft group: rmqttd binds its listeners only then).
const READY: &str = "MQTT Broker Listening on";

/// What a node logs when it joins a running cluster (one that finds no
/// leader logs "running in leader mode" instead).
const JOINED: &str = "running in follower mode";

/// Whether rmqttd is at hand (`$RMQTTD` or `scripts/install-rmqtt`'s cache).
pub fn installed() -> bool {
    binary().is_file()
}

/// `$RMQTTD`, else where `scripts/install-rmqtt` puts it.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RMQTTD") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(format!(".cache/medgate/rmqtt-{VERSION}/bin/rmqttd"))
}

fn free_port_on(host: Ipv4Addr) -> std::io::Result<u16> {
    let listener = TcpListener::bind((host, 0))?;
    Ok(listener.local_addr()?.port())
}

/// The shipped `configs/rmqtt/` files with what a test must change.
fn write_node_config(
    dir: &Path,
    id: usize,
    own: &Addresses,
    all: &[Addresses],
    pki: &Pki,
    server: &crate::pki::CertFiles,
    acl: &str,
) -> Result<PathBuf, BrokerError> {
    let io = |what: String| move |source| BrokerError::Io { what, source };
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/rmqtt");
    let read = |name: &str| {
        let path = shipped.join(name);
        std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))
    };
    let plugins = dir.join("plugins");
    let main = edit(&read("rmqtt.toml")?, |key| {
        Some(match key {
            "node.id" => id.to_string(),
            "rpc.server_addr" => quote(&format!("{}:{}", own.host, own.grpc)),
            "plugins.dir" => quote(&format!("{}/", plugins.display())),
            "log.dir" => quote(&dir.display().to_string()),
            "listener.tls.external.addr" => quote(&format!("{}:{}", own.host, own.mqtt)),
            "listener.tls.external.client_ca_certs" => quote(&pki.ca_file().display().to_string()),
            "listener.tls.external.cert" => quote(&server.cert.display().to_string()),
            "listener.tls.external.key" => quote(&server.key.display().to_string()),
            _ => return None,
        })
    });
    let list = |port: fn(&Addresses) -> u16| {
        let items: Vec<String> = all
            .iter()
            .enumerate()
            .map(|(i, a)| quote(&format!("{}@{}:{}", i + 1, a.host, port(a))))
            .collect();
        format!("[{}]", items.join(", "))
    };
    let cluster = edit(&read("plugins/rmqtt-cluster-raft.toml")?, |key| {
        Some(match key {
            "node_grpc_addrs" => list(|a| a.grpc),
            "raft_peer_addrs" => list(|a| a.raft),
            _ => return None,
        })
    });
    let files = [
        (dir.join("rmqtt.toml"), main),
        (plugins.join("rmqtt-cluster-raft.toml"), cluster),
        (
            plugins.join("rmqtt-shared-subscription.toml"),
            read("plugins/rmqtt-shared-subscription.toml")?,
        ),
        (
            plugins.join("rmqtt-retainer.toml"),
            read("plugins/rmqtt-retainer.toml")?,
        ),
        (plugins.join("rmqtt-acl.toml"), acl.to_owned()),
    ];
    for (path, text) in files {
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
    }
    Ok(dir.join("rmqtt.toml"))
}

/// `text` with the value of every `key = value` line for which `value_of`
/// gives one replaced; comments and other lines as they are.
fn edit(text: &str, value_of: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let replaced = line
            .split_once(" = ")
            .filter(|(key, _)| !key.starts_with('#'))
            .and_then(|(key, _)| value_of(key.trim()).map(|value| format!("{key} = {value}")));
        out.push_str(replaced.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn quote(value: &str) -> String {
    format!("{value:?}")
}
