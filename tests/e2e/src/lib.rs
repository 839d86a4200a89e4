//! medgate's end-to-end tests live in `tests/` of this crate; they start real
//! brokers with the shipped configuration's access rules
//! (`configs/mosquitto/medgate.acl`, `configs/rmqtt/`) and real clients. This
//! library holds what their rigs share: the workspace's binaries, the X-ray
//! data, keys and broker rules made by the shipped CLIs, simulated sensors
//! attached to a gateway, and the checks on what the sensors got back.
//!
//! # Layout
//! - `tests/security.rs`: who may publish and read what, and who may connect.
//! - `tests/system.rs`: sensors → gateway → mosquitto → two receivers → sensors and
//!   clinicians, with a receiver killed mid-stream.
//! - `tests/cluster.rs`: the same on a three-node rmqtt cluster, a node killed
//!   mid-stream, and a site broker bridged to the cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support fails loudly by design.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use medgate_gateway::config::{GatewayConfig, SpiSensorSection};
use medgate_gateway::sources::spi::registers::FLAG_REJECTED;
use medgate_sim::sensor::{Feed, Sensor};

/// How long an end-to-end test waits for anything.
pub const WAIT: Duration = Duration::from_secs(180);

/// A workspace binary built beside the running test (`cargo test --workspace`).
///
/// # Panics
/// If it was not built.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built (run cargo test --workspace)",
        path.display()
    );
    path
}

/// The MedMNIST file the sensors' X-rays come from (`MEDGATE_DATA_DIR`).
pub fn data_file() -> PathBuf {
    std::env::var_os("MEDGATE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
        .join("pneumoniamnist.npz")
}

/// Keys made with the shipped CLIs, as an installer makes them: a receiver
/// key pair in `keys/` and enrolled gateways of site-a, with the trust list
/// naming them.
pub struct Enrolment {
    /// The folder of the keys.
    pub keys: PathBuf,
    /// The trust list (`gateways.toml`).
    pub trust: PathBuf,
}

impl Enrolment {
    /// Keys in `dir/keys` for gateways `gateways` of site-a; the trust list
    /// at `dir/gateways.toml`.
    ///
    /// # Panics
    /// If a CLI fails.
    pub fn new(dir: &Path, gateways: &[&str]) -> Self {
        let keys = dir.join("keys");
        let made = Command::new(binary("medgate-receiver"))
            .arg("keygen")
            .arg("--out")
            .arg(&keys)
            .output()
            .unwrap();
        assert!(made.status.success(), "receiver keygen failed");
        let mut trust_text = Vec::new();
        for name in gateways {
            let enrolled = Command::new(binary("medgate-gateway"))
                .args(["keygen", "--site", "site-a", "--name", name, "--out"])
                .arg(keys.join(format!("{name}.identity.pem")))
                .output()
                .unwrap();
            assert!(enrolled.status.success(), "gateway keygen {name} failed");
            if !trust_text.is_empty() {
                trust_text.push(b'\n');
            }
            trust_text.extend(enrolled.stdout);
        }
        let trust = dir.join("gateways.toml");
        std::fs::write(&trust, trust_text).unwrap();
        Self { keys, trust }
    }

    /// The receiver's private key.
    pub fn receiver_private(&self) -> PathBuf {
        self.keys.join("receiver.pem")
    }

    /// The receiver's public key, which gateways seal to.
    pub fn receiver_public(&self) -> PathBuf {
        self.keys.join("receiver.pub.pem")
    }

    /// The signing identity of gateway `name`.
    pub fn identity(&self, name: &str) -> PathBuf {
        self.keys.join(format!("{name}.identity.pem"))
    }

    /// The broker rules `medgate-receiver broker-acl` writes for this trust
    /// list and `args`.
    ///
    /// # Panics
    /// If the CLI fails.
    pub fn broker_acl(&self, args: &[&str]) -> String {
        let acl = Command::new(binary("medgate-receiver"))
            .arg("broker-acl")
            .arg("--trust")
            .arg(&self.trust)
            .args(args)
            .output()
            .unwrap();
        assert!(
            acl.status.success(),
            "{}",
            String::from_utf8_lossy(&acl.stderr)
        );
        String::from_utf8(acl.stdout).unwrap()
    }
}

/// Starts simulated sensors `names` on sockets in `dir`, each offering
/// `frames` frames of `feed` one `period` apart, and attaches them to
/// `gateway` over the virtual SPI bus.
///
/// # Panics
/// If a sensor cannot start.
pub fn attach_sensors(
    dir: &Path,
    gateway: &mut GatewayConfig,
    names: &[&str],
    feed: &Feed,
    period: Duration,
    frames: u32,
) -> Vec<Sensor> {
    names
        .iter()
        .map(|name| {
            let socket = dir.join(format!("{name}.sock"));
            let sensor =
                Sensor::start_limited(name, &socket, feed.clone(), period, Some(frames)).unwrap();
            gateway.spi_sensor.push(SpiSensorSection::new(
                name,
                &format!("unix:{}", socket.display()),
            ));
            sensor
        })
        .collect()
}

/// Waits until `sensor` has `count` results.
///
/// # Panics
/// If they do not come within [`WAIT`].
pub fn results_flow(sensor: &Sensor, count: usize) {
    let results = sensor.wait_for_results(count, WAIT);
    assert!(
        results.len() >= count,
        "results flow: {} of {count}",
        results.len()
    );
}

/// Every frame (1 to `frames`) of every sensor answered exactly once, and
/// none of them refused by the gateway.
///
/// # Panics
/// Otherwise, naming the sensor and the frames.
pub fn every_frame_answered_once(sensors: &[Sensor], frames: u32) {
    for sensor in sensors {
        let results = sensor.wait_for_results(frames as usize, WAIT);
        let got: Vec<u32> = results.iter().map(|r| r.frame).collect();
        let unique: BTreeSet<u32> = got.iter().copied().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "{}: a frame answered twice: {got:?}",
            sensor.name()
        );
        assert_eq!(
            unique,
            (1..=frames).collect(),
            "{}: every frame answered",
            sensor.name()
        );
        assert_eq!(sensor.log().released, frames);
        assert!(
            results.iter().all(|r| r.flags & FLAG_REJECTED == 0),
            "{}: every frame classified, none rejected",
            sensor.name()
        );
    }
}

/// Whether a broker accepts a client: its CONNACK says success, or the TLS
/// handshake or connection fails.
///
/// # Panics
/// If the broker does not answer within [`WAIT`].
pub async fn connects(options: rumqttc::v5::MqttOptions) -> bool {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
    use rumqttc::v5::{AsyncClient, Event};
    let (_client, mut eventloop) = AsyncClient::new(options, 8);
    loop {
        match tokio::time::timeout(WAIT, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                return ack.code == ConnectReturnCode::Success;
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return false,
            Err(_) => panic!("no answer from the broker within {WAIT:?}"),
        }
    }
}

/// Checks that the broker at `host`:`port` refuses a client without a
/// certificate and one whose certificate (named gw-1, a name the rules
/// know) comes from another CA than `pki`'s; `dir` holds the other CA.
///
/// # Panics
/// If either connects.
pub async fn strangers_are_refused(
    pki: &medgate_testkit::pki::Pki,
    dir: &Path,
    host: &str,
    port: u16,
) {
    use std::sync::Arc;

    use medgate_daemon::mqtt;
    use rumqttc::v5::MqttOptions;
    use rumqttc::{TlsConfiguration, Transport};

    let roots = mqtt::read_roots(&pki.ca_file()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let anonymous = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let mut options = MqttOptions::new("anonymous", host, port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(anonymous),
    )));
    assert!(
        !connects(options).await,
        "a client without a certificate connected"
    );

    let other_dir = dir.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = medgate_testkit::pki::Pki::new(&other_dir, "some other CA").unwrap();
    let files = other.client("gw-1").unwrap();
    let foreign = mqtt::client_config(
        roots,
        mqtt::read_chain(&files.cert).unwrap(),
        mqtt::read_key(&files.key).unwrap(),
    )
    .unwrap();
    let mut options = MqttOptions::new("gw-1", host, port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(foreign),
    )));
    assert!(
        !connects(options).await,
        "a client with a foreign certificate connected"
    );
}
