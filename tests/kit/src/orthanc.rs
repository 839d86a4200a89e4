//! A real Orthanc (Debian package `orthanc`) as the hospital's PACS in
//! tests: started in the foreground on free ports with a generated config
//! and its own storage folder, reached through its REST API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// The Orthanc binary, as the Debian package installs it.
pub const BINARY: &str = "/usr/sbin/Orthanc";

/// Why Orthanc could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OrthancError {
    /// Starting it, or talking to it.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// It did not answer in time; its log.
    #[error("Orthanc did not come up within {0:?}; its log:\n{1}")]
    Timeout(Duration, String),
    /// An answer that is not what the REST API documents.
    #[error("Orthanc answered {0}")]
    Answer(String),
}

/// A running Orthanc; killed on drop.
pub struct Orthanc {
    child: Option<Child>,
    dir: PathBuf,
    http: u16,
    dicom: u16,
    ae_title: String,
}

impl Orthanc {
    /// Whether the binary is installed (`scripts/install-deps`).
    pub fn installed() -> bool {
        Path::new(BINARY).exists()
    }

    /// Starts Orthanc with AE title `ae_title` on free ports, storing into
    /// `dir`.
    ///
    /// # Errors
    /// [`OrthancError`].
    pub fn start(dir: &Path, ae_title: &str) -> Result<Self, OrthancError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| OrthancError::Io { what, source }
        };
        let dicom = free_port().map_err(io("finding a free port"))?;
        Self::start_on(dir, ae_title, dicom)
    }

    /// As [`start`](Self::start), on DICOM port `dicom` (one reserved
    /// earlier, so that a gateway can be pointed at a PACS that is not up
    /// yet).
    ///
    /// # Errors
    /// [`OrthancError`].
    pub fn start_on(dir: &Path, ae_title: &str, dicom: u16) -> Result<Self, OrthancError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| OrthancError::Io { what, source }
        };
        std::fs::create_dir_all(dir).map_err(io("creating Orthanc's folder"))?;
        let http = free_port().map_err(io("finding a free port"))?;
        let storage = dir.join("storage");
        let config = serde_json::json!({
            "Name": "medgate test PACS",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": http,
            "DicomPort": dicom,
            "DicomAet": ae_title,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomCheckCalledAet": true,
            "DicomAlwaysAllowStore": true,
            "DicomAlwaysAllowEcho": true,
            "UnknownSopClassAccepted": false,
            "Plugins": [],
            "StableAge": 1,
            "SaveJobs": false,
            "HttpThreadsCount": 4,
        });
        let file = dir.join("orthanc.json");
        std::fs::write(&file, config.to_string()).map_err(io("writing Orthanc's config"))?;
        let log = std::fs::File::create(dir.join("orthanc.log")).map_err(io("Orthanc's log"))?;
        let err = log.try_clone().map_err(io("Orthanc's log"))?;
        let child = Command::new(BINARY)
            .arg(&file)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(io("starting Orthanc"))?;
        let orthanc = Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            http,
            dicom,
            ae_title: ae_title.to_owned(),
        };
        orthanc.wait_up(Duration::from_secs(60))?;
        Ok(orthanc)
    }

    fn wait_up(&self, limit: Duration) -> Result<(), OrthancError> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok((200, _)) = self.get("/system") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(OrthancError::Timeout(limit, self.log()))
    }

    /// Its DICOM port on 127.0.0.1.
    pub fn dicom_port(&self) -> u16 {
        self.dicom
    }

    /// Its AE title.
    pub fn ae_title(&self) -> &str {
        &self.ae_title
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("orthanc.log")).unwrap_or_default()
    }

    /// Stops it (SIGKILL): the PACS is down.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `GET path` on its REST API: (status, body).
    ///
    /// # Errors
    /// When it cannot be reached.
    pub fn get(&self, path: &str) -> Result<(u16, Vec<u8>), OrthancError> {
        let io = |source| OrthancError::Io {
            what: format!("GET {path}"),
            source,
        };
        let mut stream = TcpStream::connect(("127.0.0.1", self.http)).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .map_err(io)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(io)?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| OrthancError::Answer("no HTTP header".into()))?;
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| OrthancError::Answer(head.clone()))?;
        Ok((status, answer[split + 4..].to_vec()))
    }

    /// `GET path` as JSON.
    ///
    /// # Errors
    /// When it cannot be reached or does not answer 200 with JSON.
    pub fn json(&self, path: &str) -> Result<serde_json::Value, OrthancError> {
        let (status, body) = self.get(path)?;
        if status != 200 {
            return Err(OrthancError::Answer(format!("{status} to GET {path}")));
        }
        serde_json::from_slice(&body).map_err(|e| OrthancError::Answer(e.to_string()))
    }

    /// The ids of the instances it stores.
    ///
    /// # Errors
    /// As [`json`](Self::json).
    pub fn instances(&self) -> Result<Vec<String>, OrthancError> {
        let list = self.json("/instances")?;
        Ok(list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One instance's tags, simplified (`{"PatientName": …, "ContentSequence": [...]}`).
    ///
    /// # Errors
    /// As [`json`](Self::json).
    pub fn tags(&self, instance: &str) -> Result<serde_json::Value, OrthancError> {
        self.json(&format!("/instances/{instance}/simplified-tags"))
    }

    /// One instance as a DICOM file.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn file(&self, instance: &str) -> Result<Vec<u8>, OrthancError> {
        let (status, body) = self.get(&format!("/instances/{instance}/file"))?;
        if status != 200 {
            return Err(OrthancError::Answer(format!("{status} for the file")));
        }
        Ok(body)
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.kill();
    }
}
