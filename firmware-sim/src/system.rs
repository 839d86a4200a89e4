//! A whole medgate system on one machine, for the demo and the load
//! generator: a throwaway PKI, the embedded broker with mutual TLS, receivers
//! and a gateway configured by real config files (written into a temporary
//! folder and loaded the way the daemons load theirs), and simulated SPI
//! sensors on the gateway's virtual bus.
//!
//! The receivers always run in this process. The gateway runs here too, or
//! as a child process (the load generator measures its memory and CPU).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use medgate_daemon::mqtt::{BrokerSettings, ClientTls};
use medgate_daemon::signals;
use medgate_daemon::trust::TrustList;
use medgate_gateway::config::{GatewayConfig, SpiSensorSection};
use medgate_receiver::daemon::config::ReceiverConfig;
use medgate_receiver::daemon::rules::{Priority, Rule};
use medgate_receiver::model::backend::BackendChoice;
use medgate_shared::keys::{self, DEFAULT_RSA_BITS};
use medgate_testkit::identity;
use medgate_testkit::pki::{CertFiles, Pki};
use medgate_testkit::write_config;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerKind};
use crate::sensor::{Feed, Sensor};

/// The demo site's name in topics.
pub const SITE: &str = "demo-site";
/// The demo gateway's name (and MQTT identity).
pub const GATEWAY: &str = "gw-demo";
/// A second enrolled gateway whose certificate and signing key the load
/// generator's junk stream plays as stolen.
pub const JUNK_GATEWAY: &str = "gw-junk";

/// The gateway's result timeout: longer than the load generator's drain,
/// so that an image the broker dropped shows as unanswered instead of being
/// answered late through the gateway's re-publication.
pub const RESULT_TIMEOUT_SECS: u64 = 30;

/// How long a receiver may take to connect and subscribe.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the gateway runs.
#[derive(Debug, Clone)]
pub enum GatewayMode {
    /// In this process, on its own runtime.
    InProcess,
    /// As a child process: `program` followed by `args`, then
    /// `run --config FILE`.
    Process {
        /// The program.
        program: PathBuf,
        /// Arguments before `run`.
        args: Vec<String>,
    },
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Simulated sensors.
    pub sensors: usize,
    /// Frames per second of each sensor.
    pub rate: f64,
    /// What the sensors capture.
    pub feed: Feed,
    /// Receivers in the shared subscription group.
    pub receivers: usize,
    /// The receivers' model backend.
    pub backend: BackendChoice,
    /// Largest inference batch of a receiver.
    pub max_batch: usize,
    /// Where the gateway runs.
    pub gateway: GatewayMode,
    /// The broker.
    pub broker: BrokerKind,
    /// Sensors start without capturing (until each is told
    /// [`Sensor::start_capturing`]).
    pub paused: bool,
    /// Also enrol [`JUNK_GATEWAY`] (for the load generator's junk).
    pub junk_gateway: bool,
}

/// A running system.
pub struct System {
    sensors: Vec<Sensor>,
    broker: Broker,
    ca: PathBuf,
    pki: Pki,
    runtime: tokio::runtime::Runtime,
    stop: CancellationToken,
    daemons: Vec<(String, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    gateway_child: Option<Child>,
    receiver_public_key: PathBuf,
    /// The gateway's signing key file.
    gateway_identity: PathBuf,
    /// [`JUNK_GATEWAY`]'s signing key file, when enrolled.
    junk_identity: Option<PathBuf>,
    /// The receivers' trust list.
    trust_list: PathBuf,
    backend: String,
    interrupted: Arc<AtomicBool>,
    // Last: everything above is gone before its files are.
    dir: tempfile::TempDir,
}

impl System {
    /// Starts broker, receivers, gateway and sensors, in that order, and
    /// returns once the receivers are subscribed and the gateway runs.
    ///
    /// # Errors
    /// If any part cannot start; what did start is stopped again.
    pub fn start(options: &Options) -> anyhow::Result<Self> {
        anyhow::ensure!(options.sensors > 0, "at least one sensor");
        anyhow::ensure!(options.receivers > 0, "at least one receiver");
        anyhow::ensure!(
            options.rate > 0.0 && options.rate <= 10_000.0,
            "a sensor's rate must be in (0, 10000] frames/s"
        );
        let dir = tempfile::Builder::new()
            .prefix("medgate-demo-")
            .tempdir()
            .context("temporary folder")?;
        let root = dir.path();
        let pki = Pki::new(root, "medgate demo CA (throwaway)")?;
        let ca = pki.ca_file();
        // Enrolment: the gateway's signing key, and the receivers' trust
        // list naming it (which the broker's access rules come from too).
        let (gateway_identity, enrolled) =
            identity::gateway_identity(&root.join("gateway-keys"), SITE, GATEWAY)?;
        let mut enrolled = vec![enrolled];
        let junk_identity = if options.junk_gateway {
            let (path, junk) =
                identity::gateway_identity(&root.join("gateway-keys"), SITE, JUNK_GATEWAY)?;
            enrolled.push(junk);
            Some(path)
        } else {
            None
        };
        let trust_list = root.join("trusted-gateways.toml");
        identity::write_trust_list(&trust_list, enrolled.clone())?;
        let broker = Broker::start(
            options.broker,
            &pki,
            root,
            &TrustList::new(enrolled),
            options.receivers,
        )?;
        let (private_key, receiver_public_key) =
            keys::write_key_pair(&root.join("receiver-keys"), DEFAULT_RSA_BITS)?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("medgate-demo")
            .enable_all()
            .build()
            .context("async runtime")?;
        let mut system = Self {
            sensors: Vec::new(),
            broker,
            ca,
            pki,
            runtime,
            stop: CancellationToken::new(),
            daemons: Vec::new(),
            gateway_child: None,
            receiver_public_key,
            gateway_identity,
            junk_identity,
            trust_list,
            backend: String::new(),
            interrupted: Arc::new(AtomicBool::new(false)),
            dir,
        };
        // From here on Ctrl-C and SIGTERM end the run through its owner,
        // which stops everything in order.
        let flag = system.interrupted.clone();
        system.runtime.spawn(async move {
            signals::terminated().await;
            flag.store(true, Ordering::SeqCst);
        });
        for k in 1..=options.receivers {
            system.start_receiver(&format!("receiver-{k}"), &private_key, options)?;
        }
        let mut sensors = Vec::new();
        for k in 1..=options.sensors {
            let name = format!("xr-{k}");
            let socket = system.dir.path().join(format!("{name}.sock"));
            let period = Duration::from_secs_f64(1.0 / options.rate);
            // Spread over the feed and over the frame period.
            let feed = options.feed.clone().starting_at(k * 37);
            let phase = period.mul_f64((k - 1) as f64 / options.sensors as f64);
            let sensor =
                Sensor::start_phased(&name, &socket, feed, period, phase, None, !options.paused)
                    .with_context(|| format!("sensor {name} on {}", socket.display()))?;
            system.sensors.push(sensor);
            sensors.push(SpiSensorSection {
                modality: "DX".to_owned(),
                body_part: Some("CHEST".to_owned()),
                ..SpiSensorSection::new(&name, &format!("unix:{}", socket.display()))
            });
        }
        system.start_gateway(sensors, &options.gateway)?;
        Ok(system)
    }

    /// Settings for the demo broker (the node `identity` uses, on a
    /// cluster) with `identity`'s certificate, every other value at its
    /// default.
    fn mqtt(&self, identity: &str) -> anyhow::Result<BrokerSettings> {
        let CertFiles { cert, key } = self.pki.client(identity)?;
        let address = self.broker.address_for(identity);
        Ok(BrokerSettings::new(
            &address.ip().to_string(),
            address.port(),
            self.ca.clone(),
            cert,
            key,
        ))
    }

    fn start_receiver(
        &mut self,
        name: &str,
        private_key: &Path,
        options: &Options,
    ) -> anyhow::Result<()> {
        let mut receiver = ReceiverConfig::new(
            name,
            private_key.to_path_buf(),
            self.trust_list.clone(),
            self.mqtt(name)?,
        );
        receiver.model.backend = options.backend;
        receiver.model.max_batch = options.max_batch.max(1);
        receiver.model.max_wait_ms = 2;
        receiver.metrics.enabled = false;
        receiver.notify.push(Rule::new(
            "pneumonia",
            0.5,
            "radiology".parse()?,
            Priority::Routine,
        ));
        let file = self.dir.path().join(format!("{name}.toml"));
        write_config(&file, &receiver)?;
        let settings = medgate_receiver::daemon::config::load(&file)?;
        let stop = self.stop.clone();
        let (started, ready) = tokio::sync::oneshot::channel();
        let task = self.runtime.spawn(async move {
            medgate_receiver::daemon::service::run(settings, stop.cancelled_owned(), Some(started))
                .await
                .map_err(anyhow::Error::from)
        });
        match self.runtime.block_on(ready) {
            Ok(started) => {
                self.backend = started.backend;
                let mut subscribed = started.subscribed;
                let waited = self.runtime.block_on(async {
                    tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribed.wait_for(|done| *done))
                        .await
                        .map(|r| r.is_ok())
                });
                anyhow::ensure!(
                    waited == Ok(true),
                    "{name} did not subscribe within {SUBSCRIBE_TIMEOUT:?}"
                );
            }
            Err(_) => return Err(self.why_not_started(name, task)),
        }
        self.daemons.push((name.to_owned(), task));
        Ok(())
    }

    fn start_gateway(
        &mut self,
        sensors: Vec<SpiSensorSection>,
        mode: &GatewayMode,
    ) -> anyhow::Result<()> {
        let root = self.dir.path();
        let mut gateway = GatewayConfig::new(
            SITE,
            GATEWAY,
            self.receiver_public_key.clone(),
            self.gateway_identity.clone(),
            root.join("gateway-state"),
            root.join("gateway-spool"),
            self.mqtt(GATEWAY)?,
        );
        gateway.spool.result_timeout_secs = RESULT_TIMEOUT_SECS;
        gateway.metrics.enabled = false;
        gateway.spi_sensor = sensors;
        let file = root.join("gateway.toml");
        write_config(&file, &gateway)?;
        match mode {
            GatewayMode::InProcess => {
                let settings = medgate_gateway::config::load(&file)?;
                let stop = self.stop.clone();
                let (started, ready) = tokio::sync::oneshot::channel();
                let task = self.runtime.spawn(async move {
                    medgate_gateway::service::run(settings, stop.cancelled_owned(), Some(started))
                        .await
                        .map_err(anyhow::Error::from)
                });
                if self.runtime.block_on(ready).is_err() {
                    return Err(self.why_not_started("the gateway", task));
                }
                self.daemons.push(("gateway".to_owned(), task));
            }
            GatewayMode::Process { program, args } => {
                let child = Command::new(program)
                    .args(args)
                    .arg("run")
                    .arg("--config")
                    .arg(&file)
                    .env("RUST_LOG", "warn")
                    .env("MALLOC_ARENA_MAX", "1")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .with_context(|| format!("starting the gateway {}", program.display()))?;
                self.gateway_child = Some(child);
            }
        }
        Ok(())
    }

    /// Whether Ctrl-C or SIGTERM arrived.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// A daemon `task` ended before it reported that it started: its own
    /// error says why.
    fn why_not_started(
        &self,
        name: &str,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    ) -> anyhow::Error {
        match self.runtime.block_on(task) {
            Ok(Err(e)) => e.context(format!("{name} did not start")),
            Ok(Ok(())) => anyhow::anyhow!("{name} stopped at once"),
            Err(e) => anyhow::anyhow!("{name}: {e}"),
        }
    }

    /// The sensors, in name order (`xr-1`, `xr-2`, …).
    pub fn sensors(&self) -> &[Sensor] {
        &self.sensors
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The receivers' backend, as they reported it.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The gateway child's process id, when it runs as one.
    pub fn gateway_pid(&self) -> Option<u32> {
        self.gateway_child.as_ref().map(Child::id)
    }

    /// The receivers' public key file.
    pub fn receiver_public_key(&self) -> &Path {
        &self.receiver_public_key
    }

    /// The gateway's signing key file.
    pub fn gateway_identity(&self) -> &Path {
        &self.gateway_identity
    }

    /// [`JUNK_GATEWAY`]'s signing key file, when enrolled.
    pub fn junk_identity(&self) -> Option<&Path> {
        self.junk_identity.as_deref()
    }

    /// Stops the sensors capturing and kills the gateway child process (a
    /// benchmark's gateway: its spool goes with the temporary folder).
    pub fn stop_gateway_process(&mut self) {
        for sensor in &self.sensors {
            sensor.stop_capturing();
        }
        if let Some(mut child) = self.gateway_child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The folder holding the demo's certificates, keys and config files.
    pub fn folder(&self) -> &Path {
        self.dir.path()
    }

    /// The async runtime the daemons run on (for extra clients).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// Broker settings for another client of the demo CA, named `identity`.
    ///
    /// # Errors
    /// If its certificate cannot be made.
    pub fn client(&self, identity: &str) -> anyhow::Result<(BrokerSettings, ClientTls)> {
        let mut settings = self.mqtt(identity)?;
        settings.session_expiry_secs = 600;
        let tls = settings.check(&self.dir.path().join(format!("{identity}.toml")), "mqtt")?;
        Ok((settings, tls))
    }

    /// Whether an in-process daemon has ended (it only ends on error before
    /// [`shutdown`](Self::shutdown)), or the gateway child has exited.
    pub fn failed(&mut self) -> Option<String> {
        if let Some((name, _)) = self.daemons.iter().find(|(_, task)| task.is_finished()) {
            return Some(format!("{name} stopped"));
        }
        match self.gateway_child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(format!("the gateway exited ({status})")),
            _ => None,
        }
    }

    /// Stops capturing, then the gateway and receivers (they finish what
    /// they hold, as on SIGTERM), and removes the temporary folder.
    ///
    /// # Errors
    /// The first daemon error.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop_gateway_process();
        self.stop.cancel();
        let mut first = Ok(());
        for (name, task) in std::mem::take(&mut self.daemons) {
            let result = match self.runtime.block_on(task) {
                Ok(result) => result.with_context(|| format!("{name} stopped with an error")),
                Err(e) => Err(anyhow::anyhow!("{name}: {e}")),
            };
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if let Some(mut child) = self.gateway_child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stop.cancel();
    }
}
