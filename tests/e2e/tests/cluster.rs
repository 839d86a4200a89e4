//! medgate on a real clustered broker: three rmqtt nodes (rmqttd with the
//! rmqtt-cluster-raft plugin, `scripts/install-rmqtt`) on 127.0.0.1, .2 and
//! .3, each running the shipped `configs/rmqtt/` files with TLS, client
//! certificates and the access rules `medgate-receiver broker-acl --broker
//! rmqtt` writes. The gateway (a process) connects to node 1, the two
//! receivers (processes) to nodes 2 and 3, in one shared-subscription
//! group; images and results cross the cluster. Node 2 killed with SIGKILL
//! mid-stream and started again: every frame of every sensor still gets
//! exactly one result, none lost, none twice. A site's mosquitto (the
//! shipped `medgate.conf` and `bridge-to-cloud.conf`) bridged to the
//! cluster, the gateway on the site broker: the link cut for 60 s while the
//! sensors keep capturing loses nothing either.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use medgate_daemon::mqtt::BrokerSettings;
use medgate_e2e::{Enrolment, WAIT, attach_sensors, binary, data_file};
use medgate_gateway::config::GatewayConfig;
use medgate_medmnist::SplitName;
use medgate_receiver::daemon::config::ReceiverConfig;
use medgate_receiver::model::backend::BackendChoice;
use medgate_sim::sensor::{Feed, Sensor};
use medgate_testkit::link::Link;
use medgate_testkit::logs::ProcessLog;
use medgate_testkit::mosquitto::{Bridge, BrokerOptions, Mosquitto};
use medgate_testkit::pki::Pki;
use medgate_testkit::rmqtt::{self, RmqttCluster};
use medgate_testkit::{free_port, metrics, write_config};

/// A daemon process, killed when dropped, whose log the test reads.
struct Daemon {
    child: Child,
    log: ProcessLog,
}

impl Daemon {
    fn start(program: &str, config: &Path) -> Daemon {
        let mut child = Command::new(binary(program))
            .args(["run", "--config", config.to_str().unwrap()])
            // The receivers' subscription acknowledgements are what the
            // test waits on.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = ProcessLog::attach(&mut child);
        Daemon { child, log }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sensors, a three-node cluster, a receiver on each of nodes 2 and 3 and
/// the gateway on node 1.
struct Rig {
    /// With a bridged site: the site's broker and its link to node 1.
    site: Option<(Mosquitto, Link)>,
    cluster: RmqttCluster,
    receivers: Vec<Daemon>,
    receiver_configs: Vec<PathBuf>,
    receiver_metrics: Vec<SocketAddr>,
    _gateway: Daemon,
    sensors: Vec<Sensor>,
    frames: u32,
    // Last: the processes above are gone before their files are.
    _dir: tempfile::TempDir,
}

fn settings(pki: &Pki, cluster: &RmqttCluster, node: usize, name: &str) -> BrokerSettings {
    let files = pki.client(name).unwrap();
    BrokerSettings::new(
        &cluster.host(node).to_string(),
        cluster.port(node),
        pki.ca_file(),
        files.cert,
        files.key,
    )
}

/// Lines of each log a failed test shows (`MEDGATE_TEST_LOG_LINES`).
static TAIL: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::env::var("MEDGATE_TEST_LOG_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
});

impl Drop for Rig {
    /// A failed test shows what every broker node and daemon said last.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let tail = |text: String| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(*TAIL)..].join("\n")
        };
        for node in 0..self.cluster.len() {
            eprintln!(
                "--- rmqtt node {}:\n{}",
                node + 1,
                tail(self.cluster.log_text(node))
            );
        }
        if let Some((site, _)) = &self.site {
            eprintln!("--- site mosquitto:\n{}", tail(site.log_text()));
        }
        for (index, receiver) in self.receivers.iter().enumerate() {
            eprintln!("--- receiver-{}:\n{}", index + 1, tail(receiver.log.text()));
        }
        eprintln!("--- gateway:\n{}", tail(self._gateway.log.text()));
    }
}

/// Where the gateway connects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GatewayOn {
    /// Node 1 of the cluster.
    Node1,
    /// The site's own mosquitto, bridged to node 1 through a [`Link`].
    BridgedSite,
}

impl Rig {
    fn start(frames: u32, period: Duration, gateway_on: GatewayOn) -> Rig {
        assert!(
            rmqtt::installed(),
            "rmqttd is missing at {}: run scripts/install-rmqtt (scripts/test does)",
            rmqtt::binary().display()
        );
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "site CA").unwrap();
        let enrolment = Enrolment::new(dir.path(), &["gw-1"]);
        let acl = enrolment.broker_acl(&[
            "--broker",
            "rmqtt",
            "--receivers",
            "receiver-1,receiver-2",
            "--clinician-wards",
            "radiology",
            "--security",
            "security",
            "--bridged-sites",
            "site-a",
        ]);
        let cluster = RmqttCluster::start(&pki, dir.path(), 3, &acl).unwrap();
        let site = (gateway_on == GatewayOn::BridgedSite).then(|| {
            let link = Link::start(SocketAddr::new(cluster.host(0), cluster.port(0))).unwrap();
            // The site's own rules: its gateway only (no receiver there).
            let site_acl = enrolment.broker_acl(&[]);
            let site_dir = dir.path().join("site");
            std::fs::create_dir_all(&site_dir).unwrap();
            let options = BrokerOptions {
                acl: Some(site_acl),
                shipped_config: true,
                bridge: Some(Bridge {
                    address: link.address(),
                    ca: pki.ca_file(),
                    client: pki.client("bridge-site-a").unwrap(),
                }),
                ..BrokerOptions::default()
            };
            (Mosquitto::start(&pki, &site_dir, &options).unwrap(), link)
        });

        // receiver-1 on node 2, receiver-2 on node 3.
        let mut receivers = Vec::new();
        let mut receiver_configs = Vec::new();
        let mut receiver_metrics = Vec::new();
        for (index, name) in ["receiver-1", "receiver-2"].into_iter().enumerate() {
            let node = index + 1;
            let at = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
            let mut mqtt = settings(&pki, &cluster, node, name);
            mqtt.receive_maximum = 8;
            let mut receiver = ReceiverConfig::new(
                name,
                enrolment.receiver_private(),
                enrolment.trust.clone(),
                mqtt,
            );
            receiver.model.backend = BackendChoice::Cpu;
            receiver.model.max_batch = 8;
            receiver.model.max_wait_ms = 5;
            receiver.metrics.listen = at.to_string();
            receiver.receiver.state_dir = Some(dir.path().join(format!("{name}-state")));
            let config = dir.path().join(format!("{name}.toml"));
            write_config(&config, &receiver).unwrap();
            let daemon = Daemon::start("medgate-receiver", &config);
            daemon
                .log
                .wait_for("subscribed", 0, WAIT)
                .unwrap_or_else(|e| panic!("{name} on node {}: {e}", node + 1));
            receivers.push(daemon);
            receiver_configs.push(config);
            receiver_metrics.push(at);
        }

        let feed = Feed::from_npz(&data_file(), SplitName::Val, 64, 64).unwrap();
        let mut gateway = GatewayConfig::new(
            "site-a",
            "gw-1",
            enrolment.receiver_public(),
            enrolment.identity("gw-1"),
            dir.path().join("state"),
            dir.path().join("spool"),
            match &site {
                None => settings(&pki, &cluster, 0, "gw-1"),
                Some((broker, _)) => {
                    let files = pki.client("gw-1").unwrap();
                    BrokerSettings::new(
                        "127.0.0.1",
                        broker.port(),
                        pki.ca_file(),
                        files.cert,
                        files.key,
                    )
                }
            },
        );
        // Re-published after 3 s without a result; behind a bridge, after
        // 10 s, so that a 60 s cut costs 6 of its 20 publications, not all
        // (the default, 60 s, costs one).
        gateway.spool.result_timeout_secs = match gateway_on {
            GatewayOn::Node1 => 3,
            GatewayOn::BridgedSite => 10,
        };
        gateway.metrics.enabled = false;
        let sensors = attach_sensors(
            dir.path(),
            &mut gateway,
            &["xr-1", "xr-2"],
            &feed,
            period,
            frames,
        );
        let gateway_config = dir.path().join("gateway.toml");
        write_config(&gateway_config, &gateway).unwrap();
        let gateway = Daemon::start("medgate-gateway", &gateway_config);
        Rig {
            site,
            cluster,
            receivers,
            receiver_configs,
            receiver_metrics,
            _gateway: gateway,
            sensors,
            frames,
            _dir: dir,
        }
    }

    /// Waits until the first sensor has `count` results.
    fn results_flow(&self, count: usize) {
        medgate_e2e::results_flow(&self.sensors[0], count);
    }

    /// Every frame of every sensor answered exactly once.
    fn every_frame_answered_once(&self) {
        medgate_e2e::every_frame_answered_once(&self.sensors, self.frames);
    }

    /// Sealed images each receiver has received.
    fn images_per_receiver(&self) -> Vec<f64> {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        self.receiver_metrics
            .iter()
            .map(|at| {
                let text = runtime.block_on(metrics::scrape(*at)).unwrap();
                metrics::value(&text, "medgate_receiver_received_total").unwrap_or(0.0)
            })
            .collect()
    }
}

#[test]
fn a_gateway_on_node_1_is_answered_by_receivers_on_nodes_2_and_3() {
    let rig = Rig::start(20, Duration::from_millis(30), GatewayOn::Node1);
    rig.every_frame_answered_once();
    let per_receiver = rig.images_per_receiver();
    assert!(
        per_receiver.iter().all(|&n| n > 0.0),
        "both receivers, on two other nodes, had images: {per_receiver:?}"
    );
    assert!(
        per_receiver.iter().sum::<f64>() >= f64::from(2 * rig.frames),
        "every image reached a receiver: {per_receiver:?}"
    );
}

#[test]
fn node_2_killed_mid_stream_and_started_again_loses_nothing() {
    let mut rig = Rig::start(60, Duration::from_millis(50), GatewayOn::Node1);
    rig.results_flow(5);
    // receiver-1's node dies with whatever was in flight through it.
    let mark = rig.receivers[0].log.len();
    rig.cluster.kill(1);
    // The stream goes on through node 3 meanwhile.
    rig.results_flow(15);
    rig.cluster.restart(1).unwrap();
    // receiver-1 comes back through its own node.
    rig.receivers[0]
        .log
        .wait_for("subscribed", mark, WAIT)
        .unwrap_or_else(|e| {
            panic!(
                "receiver-1 did not subscribe again ({}): {e}",
                rig.receiver_configs[0].display()
            )
        });
    rig.every_frame_answered_once();
}

#[test]
fn a_site_bridged_to_the_cluster_loses_nothing_when_the_link_is_cut_for_60_s() {
    // 120 frames at 5 per second: most are captured while the link is cut.
    let rig = Rig::start(120, Duration::from_millis(200), GatewayOn::BridgedSite);
    let (_, link) = rig.site.as_ref().unwrap();
    // Results come back down the bridge.
    rig.results_flow(3);
    link.cut();
    // The cut itself (the scenario, not a synchronisation).
    std::thread::sleep(Duration::from_secs(60));
    let released_meanwhile = rig.sensors[0].log().released;
    assert!(
        released_meanwhile > 60,
        "capture went on: {released_meanwhile} frames"
    );
    link.restore();
    // The site broker's bridge reconnects by itself and sends what it kept.
    rig.every_frame_answered_once();
    assert!(link.connections() >= 2, "the bridge connected again");
}
