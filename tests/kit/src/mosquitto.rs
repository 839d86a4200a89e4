//! A real mosquitto broker started for a test or a benchmark: mutual TLS on
//! a free port of 127.0.0.1, client identities from certificates, optional
//! ACL file, `set_tcp_nodelay`, a packet limit for images. Its log goes to a
//! pipe that a thread reads, so callers wait for what the broker says
//! ("... running", "... subscribed") instead of sleeping.
//!
//! Not a way to run a production broker: that is `configs/mosquitto/`, whose
//! access rules [`shipped_acl`] reads for tests that run them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use medgate_daemon::mqtt::DEFAULT_MAX_PACKET_BYTES;

use crate::free_port;
use crate::logs::ProcessLog;
use crate::pki::{CertFiles, Pki};

/// How long a broker may take to start before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the broker could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A file could not be written or the process not started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A certificate could not be made.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The broker did not log what was waited for.
    #[error("the broker did not log {needle:?} within {timeout:?}; its log:\n{log}")]
    Timeout {
        /// The awaited text.
        needle: String,
        /// The wait.
        timeout: Duration,
        /// Everything it logged.
        log: String,
    },
}

/// Broker settings a test may change.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// ACL file content (mosquitto syntax); none: every identity may do anything.
    pub acl: Option<String>,
    /// `max_packet_size`.
    pub max_packet_bytes: u32,
    /// Run the shipped `configs/mosquitto/medgate.conf` (only its paths,
    /// port and logging changed) instead of a minimal test config.
    pub shipped_config: bool,
    /// With `shipped_config`: the shipped site→cloud bridge too
    /// (`configs/mosquitto/bridge-to-cloud.conf`), to this address.
    pub bridge: Option<Bridge>,
}

/// Where the shipped bridge connects, and with which files.
#[derive(Debug, Clone)]
pub struct Bridge {
    /// The cloud broker (or a [`Link`](crate::link::Link) to it).
    pub address: std::net::SocketAddr,
    /// The CA of the cloud's certificates.
    pub ca: PathBuf,
    /// The site broker's own client certificate (`bridge-{site}`) and key.
    pub client: CertFiles,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            acl: None,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            shipped_config: false,
            bridge: None,
        }
    }
}

/// A running mosquitto; killed when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
    log: ProcessLog,
}

impl Mosquitto {
    /// Writes a config into `dir` (server certificate from `pki`) and starts
    /// the broker on a free port.
    ///
    /// # Errors
    /// [`BrokerError`], with the broker's log when it did not come up.
    pub fn start(pki: &Pki, dir: &Path, options: &BrokerOptions) -> Result<Self, BrokerError> {
        let server = pki.server("broker")?;
        let mut last = None;
        // The free port can be taken between probing and binding; try again.
        for _ in 0..3 {
            let port = free_port().map_err(|source| BrokerError::Io {
                what: "finding a free port".into(),
                source,
            })?;
            let config = write_config(dir, port, &pki.ca_file(), &server, options)?;
            let mut broker = Self {
                child: None,
                port,
                config,
                log: ProcessLog::default(),
            };
            match broker.launch() {
                Ok(()) => return Ok(broker),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| BrokerError::Io {
            what: "starting mosquitto".into(),
            source: std::io::Error::other("no attempt made"),
        }))
    }

    /// The TLS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker (SIGKILL): clients see the connection drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port with the same config.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        self.kill();
        self.launch()
    }

    /// Waits until a log line (after `from`, an index into the log) contains
    /// `needle`; returns that line's index.
    ///
    /// # Errors
    /// [`BrokerError::Timeout`] with the whole log.
    pub fn wait_for_log(
        &self,
        needle: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<usize, BrokerError> {
        self.log
            .wait_for(needle, from, timeout)
            .map_err(|e| BrokerError::Timeout {
                needle: e.needle,
                timeout,
                log: e.log,
            })
    }

    /// Number of log lines so far (a starting point for `wait_for_log`).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        self.log.text()
    }

    fn launch(&mut self) -> Result<(), BrokerError> {
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| BrokerError::Io {
                what: format!(
                    "starting {} (install mosquitto >= 2.0.13; scripts/install-deps does)",
                    binary()
                ),
                source,
            })?;
        self.log = ProcessLog::attach(&mut child);
        self.child = Some(child);
        match self.wait_for_log(" running", 0, START_TIMEOUT) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.kill();
                Err(e)
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a mosquitto program is at hand: `$MOSQUITTO`, Debian's
/// `/usr/sbin/mosquitto`, or `mosquitto` on `PATH`.
pub fn installed() -> bool {
    let program = binary();
    let path = Path::new(&program);
    if path.components().count() > 1 {
        return path.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|dirs| std::env::split_paths(&dirs).any(|dir| dir.join(path).is_file()))
}

fn binary() -> String {
    std::env::var("MOSQUITTO").unwrap_or_else(|_| {
        if Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto".into()
        } else {
            "mosquitto".into()
        }
    })
}

fn write_config(
    dir: &Path,
    port: u16,
    ca: &Path,
    server: &CertFiles,
    options: &BrokerOptions,
) -> Result<PathBuf, BrokerError> {
    let io = |what: String| move |source| BrokerError::Io { what, source };
    if options.shipped_config {
        return write_shipped_config(dir, port, ca, server, options);
    }
    let mut text = format!(
        "# written by medgate (throwaway broker)\n\
         per_listener_settings false\n\
         persistence false\n\
         user root\n\
         log_dest stdout\n\
         log_type error\nlog_type warning\nlog_type notice\nlog_type information\nlog_type subscribe\nlog_type unsubscribe\n\
         connection_messages true\n\
         set_tcp_nodelay true\n\
         max_packet_size {max}\n\
         allow_anonymous false\n\
         listener {port} 127.0.0.1\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate true\n\
         use_identity_as_username true\n",
        max = options.max_packet_bytes,
        ca = ca.display(),
        cert = server.cert.display(),
        key = server.key.display(),
    );
    if let Some(acl) = &options.acl {
        let acl_path = dir.join("acl");
        std::fs::write(&acl_path, acl).map_err(io(format!("writing {}", acl_path.display())))?;
        text.push_str(&format!("acl_file {}\n", acl_path.display()));
    }
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
    Ok(path)
}

/// The shipped `medgate.conf` with what a test must change: the listener
/// on 127.0.0.1 and a free port, the certificate, ACL and persistence paths
/// in `dir`, logging to stdout (with subscriptions, which tests wait on),
/// and `user root` so that mosquitto does not drop to a user that cannot
/// read the test's files. Every other line is as shipped.
fn write_shipped_config(
    dir: &Path,
    port: u16,
    ca: &Path,
    server: &CertFiles,
    options: &BrokerOptions,
) -> Result<PathBuf, BrokerError> {
    let io = |what: String| move |source| BrokerError::Io { what, source };
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/mosquitto/medgate.conf");
    let original =
        std::fs::read_to_string(&shipped).map_err(io(format!("reading {}", shipped.display())))?;
    let acl_path = dir.join("acl");
    std::fs::write(&acl_path, options.acl.as_deref().unwrap_or(""))
        .map_err(io(format!("writing {}", acl_path.display())))?;
    let store = dir.join("mosquitto-store");
    std::fs::create_dir_all(&store).map_err(io(format!("creating {}", store.display())))?;
    let mut text = String::from(
        "# configs/mosquitto/medgate.conf, paths and port changed by medgate-testkit
user root
",
    );
    for line in original.lines() {
        let key = line.split_whitespace().next().unwrap_or("");
        let replaced = match key {
            "listener" => format!("listener {port} 127.0.0.1"),
            "cafile" => format!("cafile {}", ca.display()),
            "certfile" => format!("certfile {}", server.cert.display()),
            "keyfile" => format!("keyfile {}", server.key.display()),
            "acl_file" => format!("acl_file {}", acl_path.display()),
            "persistence_location" => format!("persistence_location {}/", store.display()),
            "max_packet_size" => format!("max_packet_size {}", options.max_packet_bytes),
            "log_dest" => "log_dest stdout\nlog_type subscribe\nlog_type unsubscribe".to_owned(),
            _ => line.to_owned(),
        };
        text.push_str(&replaced);
        text.push('\n');
    }
    if let Some(bridge) = &options.bridge {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs/mosquitto/bridge-to-cloud.conf");
        let original = std::fs::read_to_string(&shipped)
            .map_err(io(format!("reading {}", shipped.display())))?;
        text.push_str("\n# configs/mosquitto/bridge-to-cloud.conf, address and files changed\n");
        for line in original.lines() {
            let key = line.split_whitespace().next().unwrap_or("");
            let replaced = match key {
                "address" => format!("address {}", bridge.address),
                "bridge_cafile" => format!("bridge_cafile {}", bridge.ca.display()),
                "bridge_certfile" => format!("bridge_certfile {}", bridge.client.cert.display()),
                "bridge_keyfile" => format!("bridge_keyfile {}", bridge.client.key.display()),
                _ => line.to_owned(),
            };
            text.push_str(&replaced);
            text.push('\n');
        }
    }
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
    Ok(path)
}

/// The access rules shipped for production, `configs/mosquitto/medgate.acl`.
///
/// # Errors
/// If the file cannot be read.
pub fn shipped_acl() -> Result<String, BrokerError> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/mosquitto/medgate.acl");
    std::fs::read_to_string(&path).map_err(|source| BrokerError::Io {
        what: format!("reading {}", path.display()),
        source,
    })
}
