//! The DICOM node as a source: modalities store images to its C-STORE SCP
//! ([`crate::dicom::scp`]); each result comes back as a Structured Report
//! ([`crate::dicom::sr`]) in the report outbox ([`crate::dicom::outbox`]),
//! which stores it in the PACS.
//!
//! A result is delivered (and the spool lets go of its image) once its
//! report is durably in the outbox; the image's references are forgotten
//! then (the report carries them until the PACS has it). A result whose
//! image has no references left was delivered before (its report is in
//! the outbox or the PACS): it is acknowledged and nothing else happens.

use std::sync::Arc;
use std::time::SystemTime;

use medgate_shared::ids::{MessageId, Name};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Source, SourceTask};
use crate::capture::Preparation;
use crate::dicom::node::DicomNode;
use crate::dicom::outbox::{Outbox, Sender};
use crate::dicom::references::ReferenceStore;
use crate::dicom::scp::Scp;
use crate::dicom::sr;
use crate::intake::Intake;
use crate::messages::{Delivery, Health, LinkLimit};
use crate::metrics::Metrics;

/// Why the DICOM node could not start.
#[derive(Debug, thiserror::Error)]
pub enum DicomStartError {
    /// Its port.
    #[error("DICOM node cannot listen on {address} (dicom.listen): {source}")]
    Listen {
        /// Where.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Its state folders.
    #[error("DICOM node state in {dir}: {cause}")]
    State {
        /// Where.
        dir: std::path::PathBuf,
        /// Why.
        cause: String,
    },
}

/// The DICOM source.
pub struct DicomSource {
    node: DicomNode,
    gateway: Name,
    listener: TcpListener,
    references: ReferenceStore,
    outbox: Outbox,
    preparation: Preparation,
    link: LinkLimit,
    health: Health,
    metrics: Metrics,
}

impl DicomSource {
    /// Opens the node's state and binds its port (so that the address is
    /// known, and a port in use is an error at start).
    ///
    /// # Errors
    /// [`DicomStartError`].
    pub async fn bind(
        node: DicomNode,
        gateway: Name,
        preparation: Preparation,
        link: LinkLimit,
        health: Health,
        metrics: Metrics,
    ) -> Result<Self, DicomStartError> {
        let state = |cause: String| DicomStartError::State {
            dir: node.state_dir.clone(),
            cause,
        };
        let references = ReferenceStore::open(&node.state_dir.join("references"))
            .map_err(|e| state(e.to_string()))?;
        let outbox =
            Outbox::open(&node.state_dir.join("outbox")).map_err(|e| state(e.to_string()))?;
        let listener =
            TcpListener::bind(node.listen)
                .await
                .map_err(|source| DicomStartError::Listen {
                    address: node.listen,
                    source,
                })?;
        Ok(Self {
            node,
            gateway,
            listener,
            references,
            outbox,
            preparation,
            link,
            health,
            metrics,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    async fn serve(
        self,
        intake: Intake,
        mut results: mpsc::Receiver<Delivery>,
        stop: CancellationToken,
    ) {
        let Self {
            node,
            gateway,
            listener,
            references,
            outbox,
            preparation,
            link,
            health,
            metrics,
        } = self;
        tracing::info!(ae_title = %node.ae_title, listen = %listener.local_addr().map_or_else(|_| node.listen.to_string(), |a| a.to_string()), pacs = %node.pacs.ae_title, "DICOM node listening");
        let scp = Arc::new(Scp {
            node: node.clone(),
            intake,
            preparation,
            link,
            references: references.clone(),
            metrics: metrics.clone(),
        });
        let scp_task = tokio::spawn(scp.serve(listener, stop.clone()));
        let sender = Sender {
            outbox: outbox.clone(),
            pacs: node.pacs.clone(),
            calling: node.ae_title.clone(),
            timeout: node.timeout,
            device: node.device.clone(),
            health,
            metrics: metrics.clone(),
        };
        let sender_task = tokio::spawn(sender.run(stop.clone()));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                delivery = results.recv() => match delivery {
                    Some(delivery) => {
                        if deliver(&delivery, &gateway, &references, &outbox, &metrics).await {
                            let _ = delivery.done.send(());
                        }
                    }
                    None => break,
                },
            }
        }
        let _ = scp_task.await;
        let _ = sender_task.await;
    }
}

/// Writes the report of `delivery` to the outbox; true once it is there
/// (or was before).
async fn deliver(
    delivery: &Delivery,
    gateway: &Name,
    references: &ReferenceStore,
    outbox: &Outbox,
    metrics: &Metrics,
) -> bool {
    let Ok(id) = delivery.verdict.message_id().parse::<MessageId>() else {
        return true;
    };
    let verdict = delivery.verdict.clone();
    let (references, outbox, gateway) = (references.clone(), outbox.clone(), gateway.clone());
    let written = tokio::task::spawn_blocking(move || {
        let Some(refs) = references.get(&id) else {
            return Ok(false);
        };
        let report = sr::build(
            &id,
            &refs,
            &verdict,
            &sr::Author {
                gateway: gateway.as_str(),
            },
            SystemTime::now(),
        )
        .map_err(|e| e.to_string())?;
        outbox.put(&id, &report).map_err(|e| e.to_string())?;
        references.remove(&id).map_err(|e| e.to_string())?;
        Ok::<bool, String>(true)
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match written {
        Ok(true) => {
            tracing::info!(message_id = %id, "result written as a Structured Report to the outbox");
            true
        }
        Ok(false) => {
            tracing::info!(message_id = %id, "a result for an image whose report was already written");
            true
        }
        Err(e) => {
            metrics.error("dicom_report");
            tracing::error!(message_id = %id, cause = %e, "cannot write the Structured Report; the image stays spooled and its result will come again");
            false
        }
    }
}

impl Source for DicomSource {
    fn device(&self) -> &Name {
        &self.node.device
    }

    fn run(
        self: Box<Self>,
        intake: Intake,
        results: mpsc::Receiver<Delivery>,
        stop: CancellationToken,
    ) -> SourceTask {
        Box::pin(self.serve(intake, results, stop))
    }
}
