//! The C-STORE SCP modalities send to.
//!
//! - **Who**: associations are accepted only when they call this node's AE
//!   title from an allowed calling AE title; others get A-ASSOCIATE-RJ
//!   (permanent, "calling AE title not recognised"). At most
//!   `dicom.max_associations` are served at once; more get A-ASSOCIATE-RJ
//!   (transient, local limit exceeded), so a modality tries again later.
//! - **What**: C-ECHO, and C-STORE of the [`STORAGE_CLASSES`] in the
//!   [`TRANSFER_SYNTAXES`]. Every PDU is bounded by the maximum this node
//!   announces, the command set by [`dimse::MAX_COMMAND_BYTES`], an object
//!   by the same size limit as a hot-folder file (`preprocess.
//!   max_decoded_bytes` + 1 MiB; the rest of a larger one is read and
//!   dropped, then refused). A silent peer is aborted after
//!   `dicom.timeout_secs`.
//! - **When success**: a C-STORE is answered success (0000) only once the
//!   image is sealed and durably in the spool and its references are
//!   recorded. A full spool or disk answers A700 (out of resources): the
//!   modality keeps the image and sends it again. An object the gateway
//!   cannot read answers C000, one it refuses by rule (colour, burned-in
//!   annotation, too large) C001, both with an Error Comment and a log
//!   line naming the reason (never an attribute value).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dicom_dictionary_std::{tags, uids};
use dicom_object::FileMetaTableBuilder;
use dicom_ul::association::Association;
use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason,
    AssociationRJSource, PDataValueType, PresentationContextResultReason, UserIdentity,
};
use dicom_ul::{Pdu, ServerAssociationOptions};
use medgate_shared::ids::MessageId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dimse::{self, status};
use super::node::{AeTitle, DicomNode};
use super::read;
use super::references::ReferenceStore;
use crate::capture::{self, Capture, DecodeError, Preparation};
use crate::intake::{Intake, Refusal};
use crate::messages::LinkLimit;
use crate::metrics::Metrics;

/// The storage SOP classes accepted (grayscale images a site would route
/// to a classifier).
pub const STORAGE_CLASSES: &[&str] = &[
    uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::DIGITAL_MAMMOGRAPHY_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_MAMMOGRAPHY_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::DIGITAL_INTRA_ORAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::CT_IMAGE_STORAGE,
    uids::MR_IMAGE_STORAGE,
    uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_BYTE_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE_IMAGE_STORAGE,
];

/// The transfer syntaxes accepted, in the order this node prefers them
/// when a modality proposes several: uncompressed, then lossless, then
/// lossy (all decoded in pure Rust).
pub const TRANSFER_SYNTAXES: &[&str] = &[
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
    uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    uids::RLE_LOSSLESS,
    uids::JPEG_LOSSLESS_SV1,
    uids::JPEG_LOSSLESS,
    uids::JPEG_BASELINE8_BIT,
    uids::JPEG_EXTENDED12_BIT,
];

/// The largest PDU this node receives.
pub const MAX_PDU: u32 = 64 << 10;

/// What the SCP needs from the rest of the gateway.
pub struct Scp {
    /// The node's config.
    pub node: DicomNode,
    /// Where images go.
    pub intake: Intake,
    /// How they are prepared.
    pub preparation: Preparation,
    /// The broker link's packet limit now.
    pub link: LinkLimit,
    /// Where each image's references are kept.
    pub references: ReferenceStore,
    /// Counters.
    pub metrics: Metrics,
}

impl Scp {
    /// Serves associations on `listener` until `stop`; then waits for the
    /// associations in progress (each aborts once idle).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.node.max_associations));
        let tasks = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (socket, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause, so that
                    // the loop does not spin, and go on.
                    tracing::warn!(cause = %e, "cannot accept a DICOM connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    let scp = self.clone();
                    let stop = stop.clone();
                    tasks.spawn(async move {
                        scp.association(socket, peer, stop).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    self.metrics.dicom_association("busy");
                    tracing::warn!(%peer, limit = self.node.max_associations, "DICOM association refused: all slots are in use (dicom.max_associations)");
                    tasks.spawn(reject_busy(socket, self.node.timeout));
                }
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    async fn association(
        &self,
        socket: TcpStream,
        peer: std::net::SocketAddr,
        stop: CancellationToken,
    ) {
        let access = Callers {
            me: self.node.ae_title.clone(),
            callers: self.node.callers.clone(),
            refused: Mutex::new(None),
        };
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(&access)
            .ae_title(self.node.ae_title.as_str())
            .strict(true)
            .max_pdu_length(MAX_PDU)
            .read_timeout(self.node.timeout)
            .write_timeout(self.node.timeout)
            .with_abstract_syntax(uids::VERIFICATION);
        for class in STORAGE_CLASSES {
            options = options.with_abstract_syntax(*class);
        }
        for ts in TRANSFER_SYNTAXES {
            options = options.with_transfer_syntax(*ts);
        }
        let mut association = match options.establish_async(socket).await {
            Ok(association) => association,
            Err(e) => {
                self.metrics.dicom_association("rejected");
                let refused = access
                    .refused
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                match refused {
                    Some(reason) => {
                        tracing::warn!(%peer, "DICOM association rejected: {reason}");
                    }
                    None => tracing::warn!(%peer, cause = %e, "DICOM association failed"),
                }
                return;
            }
        };
        self.metrics.dicom_association("accepted");
        let caller = association.peer_ae_title().trim().to_owned();
        tracing::debug!(%peer, caller = %caller, "DICOM association accepted");
        let contexts: Vec<(u8, String, String)> = association
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| {
                (
                    pc.id,
                    pc.abstract_syntax.clone(),
                    pc.transfer_syntax.clone(),
                )
            })
            .collect();
        let peer_pdu = association.requestor_max_pdu_length();
        let mut state = Receiving::Idle;
        loop {
            let pdu = tokio::select! {
                () = stop.cancelled(), if matches!(state, Receiving::Idle) => {
                    let _ = association.abort().await;
                    self.metrics.dicom_association("aborted");
                    return;
                }
                pdu = association.receive() => pdu,
            };
            let data = match pdu {
                Ok(Pdu::PData { data }) => data,
                Ok(Pdu::ReleaseRQ) => {
                    let _ = association.send(&Pdu::ReleaseRP).await;
                    return;
                }
                Ok(Pdu::AbortRQ { .. }) => {
                    self.metrics.dicom_association("aborted");
                    tracing::info!(%peer, caller = %caller, "the modality aborted the association");
                    return;
                }
                Ok(_) => {
                    self.metrics.dicom_association("aborted");
                    tracing::warn!(%peer, caller = %caller, "unexpected PDU; aborting the association");
                    let _ = association.abort().await;
                    return;
                }
                Err(e) => {
                    self.metrics.dicom_association("aborted");
                    tracing::warn!(%peer, caller = %caller, cause = %e, "DICOM association ended without release");
                    let _ = association.abort().await;
                    return;
                }
            };
            for pdv in data {
                let answer = match step(&mut state, pdv, &contexts, self.limit()) {
                    Ok(Some(message)) => self.answer(message, &caller).await,
                    Ok(None) => None,
                    Err(why) => {
                        self.metrics.dicom_association("aborted");
                        tracing::warn!(%peer, caller = %caller, "aborting the association: {why}");
                        let _ = association
                            .send(&Pdu::AbortRQ {
                                source: AbortRQSource::ServiceProvider(
                                    AbortRQServiceProviderReason::UnexpectedPdu,
                                ),
                            })
                            .await;
                        return;
                    }
                };
                if let Some((context, bytes)) = answer {
                    for pdu in dimse::pdata(context, PDataValueType::Command, &bytes, peer_pdu) {
                        if let Err(e) = association.send(&pdu).await {
                            tracing::warn!(%peer, caller = %caller, cause = %e, "cannot answer the modality");
                            return;
                        }
                    }
                }
            }
        }
    }

    fn limit(&self) -> u64 {
        self.preparation.limits(self.link.get()).max_file_bytes()
    }

    /// The response to a complete message: (context, command bytes).
    async fn answer(&self, message: Message, caller: &str) -> Option<(u8, Vec<u8>)> {
        match message {
            Message::Echo {
                context,
                message_id,
            } => dimse::response(
                dimse::C_ECHO_RSP,
                message_id,
                uids::VERIFICATION,
                None,
                status::SUCCESS,
                None,
            )
            .ok()
            .map(|bytes| (context, bytes)),
            Message::Store(Store {
                context,
                message_id,
                class,
                instance,
                bytes,
            }) => {
                let (code, label, comment) = self.store(bytes, &class, caller).await;
                self.metrics.dicom_store(label);
                dimse::response(
                    dimse::C_STORE_RSP,
                    message_id,
                    &class,
                    Some(&instance),
                    code,
                    comment.as_deref(),
                )
                .ok()
                .map(|bytes| (context, bytes))
            }
            Message::Unsupported {
                context,
                message_id,
                field,
            } => {
                tracing::warn!(caller = %caller, field = format!("{field:#06x}"), "unsupported DIMSE operation");
                dimse::response(
                    field | 0x8000,
                    message_id,
                    "",
                    None,
                    status::UNRECOGNIZED_OPERATION,
                    None,
                )
                .ok()
                .map(|bytes| (context, bytes))
            }
        }
    }

    /// Stores one object: (status, metric label, error comment).
    async fn store(
        &self,
        received: Received,
        class: &str,
        caller: &str,
    ) -> (u16, &'static str, Option<String>) {
        let bytes = match received {
            Received::Whole(bytes) => bytes,
            Received::TooLarge(bytes) => {
                let reason = format!(
                    "an object of {bytes} bytes or more; the limit is {} (preprocess.max_decoded_bytes + 1 MiB)",
                    self.limit()
                );
                tracing::warn!(caller = %caller, reason = "file_too_large", "C-STORE refused: {reason}");
                return (status::REFUSED, "file_too_large", Some(reason));
            }
        };
        if !STORAGE_CLASSES.contains(&class) {
            return (
                status::SOP_CLASS_NOT_SUPPORTED,
                "sop_class_not_supported",
                None,
            );
        }
        let preparation = self.preparation;
        let limits = preparation.limits(self.link.get());
        let decoded = tokio::task::spawn_blocking(move || read::read(bytes, preparation, &limits))
            .await
            .unwrap_or_else(|e| Err(DecodeError::Unreadable(format!("decoder failed: {e}"))));
        let image = match decoded {
            Ok(image) => image,
            Err(e) => {
                let label = e.reason();
                let code = match label {
                    "unreadable" | "malformed_dicom" | "undecodable_dicom" => {
                        status::CANNOT_UNDERSTAND
                    }
                    _ => status::REFUSED,
                };
                tracing::warn!(caller = %caller, reason = label, "C-STORE refused: {e}");
                return (code, label, Some(e.to_string()));
            }
        };
        let Some(references) = image.references else {
            let reason = "the object lacks its SOP Instance, Series or Study Instance UID";
            tracing::warn!(caller = %caller, reason = "malformed_dicom", "C-STORE refused: {reason}");
            return (
                status::CANNOT_UNDERSTAND,
                "malformed_dicom",
                Some(reason.into()),
            );
        };
        let id = MessageId::random();
        // Recorded before the image is submitted, so that its result always
        // finds them; forgotten again if the image is refused.
        let store_refs = self.references.clone();
        let recorded = tokio::task::spawn_blocking(move || store_refs.put(&id, &references))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = recorded {
            self.metrics.error("dicom_references");
            tracing::error!(cause = %e, "cannot record an image's DICOM references; C-STORE answered out of resources");
            return (
                status::OUT_OF_RESOURCES,
                "out_of_resources",
                Some("the gateway cannot write its state".into()),
            );
        }
        let capture = Capture {
            message_id: id,
            device: self.node.device.clone(),
            modality: image.modality.unwrap_or(self.node.modality),
            anatomy: image.anatomy.or(&self.node.anatomy),
            captured_at_ms: capture::now_ms(),
            pixels: image.pixels,
        };
        match self.intake.submit(capture).await {
            Ok(_) => {
                tracing::info!(caller = %caller, message_id = %id, "DICOM image stored in the spool");
                (status::SUCCESS, "stored", None)
            }
            Err(refusal) => {
                let _ = self.references.remove(&id);
                match refusal {
                    Refusal::TooLarge(reason) => {
                        tracing::warn!(caller = %caller, reason = "too_large_for_link", "C-STORE refused: {reason}");
                        (status::REFUSED, "too_large_for_link", Some(reason))
                    }
                    Refusal::Full(_) => (
                        status::OUT_OF_RESOURCES,
                        "out_of_resources",
                        Some("the gateway's spool is full; send again later".into()),
                    ),
                    Refusal::DiskFull(_) => (
                        status::OUT_OF_RESOURCES,
                        "out_of_resources",
                        Some("the gateway's disk is full; send again later".into()),
                    ),
                    Refusal::Stopping => (
                        status::OUT_OF_RESOURCES,
                        "out_of_resources",
                        Some("the gateway is stopping; send again later".into()),
                    ),
                    Refusal::Failed(e) => {
                        tracing::error!(caller = %caller, cause = %e, "C-STORE answered out of resources");
                        (
                            status::OUT_OF_RESOURCES,
                            "out_of_resources",
                            Some("the gateway could not spool the image".into()),
                        )
                    }
                }
            }
        }
    }
}

/// Allowed callers, calling this node.
struct Callers {
    me: AeTitle,
    callers: Vec<AeTitle>,
    /// Why the last request was refused, for the log.
    refused: Mutex<Option<String>>,
}

impl AccessControl for &Callers {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let refuse = |reason: String, code| {
            *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
            Err(code)
        };
        if !self.me.matches(called_ae_title) {
            return refuse(
                format!(
                    "called AE title {:?} is not this node's ({})",
                    printable(called_ae_title),
                    self.me
                ),
                AssociationRJServiceUserReason::CalledAETitleNotRecognized,
            );
        }
        if !self.callers.iter().any(|c| c.matches(calling_ae_title)) {
            return refuse(
                format!(
                    "calling AE title {:?} is not in dicom.allowed_calling_ae_titles",
                    printable(calling_ae_title)
                ),
                AssociationRJServiceUserReason::CallingAETitleNotRecognized,
            );
        }
        Ok(())
    }
}

/// An AE title off the wire, safe to log (at most 16 printable characters).
fn printable(title: &str) -> String {
    title
        .trim_matches([' ', '\0'])
        .chars()
        .take(16)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Answers an association request over the limit with A-ASSOCIATE-RJ
/// (transient, local limit exceeded), after reading the request (bounded).
async fn reject_busy(mut socket: TcpStream, timeout: Duration) {
    let mut buffer = vec![0u8; 0];
    let read = tokio::time::timeout(timeout.min(Duration::from_secs(10)), async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Ok(Some(_)) = dicom_ul::read_pdu(&buffer[..], MAX_PDU, true) {
                return true;
            }
            if buffer.len() > MAX_PDU as usize {
                return false;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let reject = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut bytes = Vec::new();
    if dicom_ul::pdu::write_pdu(&mut bytes, &reject).is_ok() {
        let _ = socket.write_all(&bytes).await;
        let _ = socket.shutdown().await;
    }
}

/// One complete DIMSE message from the modality.
enum Message {
    Echo {
        context: u8,
        message_id: u16,
    },
    Store(Store),
    Unsupported {
        context: u8,
        message_id: u16,
        field: u16,
    },
}

/// A C-STORE request and its data set.
struct Store {
    context: u8,
    message_id: u16,
    class: String,
    instance: String,
    bytes: Received,
}

/// A received object: whole (as a DICOM file), or too large (bytes seen).
enum Received {
    Whole(Vec<u8>),
    TooLarge(u64),
}

/// Where the association is in a message.
enum Receiving {
    Idle,
    Command(Vec<u8>),
    Data {
        context: u8,
        message_id: u16,
        class: String,
        instance: String,
        /// The object as a DICOM file: preamble, meta group, data set so far.
        bytes: Vec<u8>,
        /// Data set bytes seen.
        seen: u64,
        /// Over the limit: the rest is read and dropped.
        overflow: bool,
    },
}

/// Feeds one PDV to the message being received; a complete message comes
/// out. An error means the peer broke the protocol (abort).
fn step(
    state: &mut Receiving,
    pdv: dicom_ul::pdu::PDataValue,
    contexts: &[(u8, String, String)],
    limit: u64,
) -> Result<Option<Message>, String> {
    let Some((_, _, ts)) = contexts
        .iter()
        .find(|(id, _, _)| *id == pdv.presentation_context_id)
    else {
        return Err(format!(
            "presentation context {} was not accepted",
            pdv.presentation_context_id
        ));
    };
    match (std::mem::replace(state, Receiving::Idle), pdv.value_type) {
        (Receiving::Idle, PDataValueType::Command) => {
            *state = Receiving::Command(Vec::new());
            step_command(
                state,
                pdv.data,
                pdv.is_last,
                pdv.presentation_context_id,
                ts,
            )
        }
        (Receiving::Command(mut bytes), PDataValueType::Command) => {
            if bytes.len() + pdv.data.len() > dimse::MAX_COMMAND_BYTES {
                return Err("a command set over 64 KiB".into());
            }
            bytes.extend_from_slice(&pdv.data);
            *state = Receiving::Command(bytes);
            step_command(
                state,
                Vec::new(),
                pdv.is_last,
                pdv.presentation_context_id,
                ts,
            )
        }
        (
            Receiving::Data {
                context,
                message_id,
                class,
                instance,
                mut bytes,
                seen,
                mut overflow,
            },
            PDataValueType::Data,
        ) => {
            if context != pdv.presentation_context_id {
                return Err("a data set fragment on another presentation context".into());
            }
            let seen = seen + pdv.data.len() as u64;
            if !overflow && seen > limit {
                overflow = true;
                bytes = Vec::new();
            }
            if !overflow {
                // Grow by an eighth, not double: a large object is held
                // with little slack (the memory budget counts it).
                if bytes.capacity() - bytes.len() < pdv.data.len() {
                    let room = (bytes.len() / 8).max(pdv.data.len()).max(1 << 16);
                    bytes.reserve_exact(room);
                }
                bytes.extend_from_slice(&pdv.data);
            }
            if !pdv.is_last {
                *state = Receiving::Data {
                    context,
                    message_id,
                    class,
                    instance,
                    bytes,
                    seen,
                    overflow,
                };
                return Ok(None);
            }
            Ok(Some(Message::Store(Store {
                context,
                message_id,
                class,
                instance,
                bytes: if overflow {
                    Received::TooLarge(seen)
                } else {
                    Received::Whole(bytes)
                },
            })))
        }
        (Receiving::Idle, PDataValueType::Data) => {
            Err("a data set fragment without a command".into())
        }
        (Receiving::Command(_), PDataValueType::Data) => {
            Err("a data set fragment inside a command set".into())
        }
        (Receiving::Data { .. }, PDataValueType::Command) => {
            Err("a command fragment inside a data set".into())
        }
    }
}

/// Appends `more` to the command being received; once it is whole, reads
/// it and either answers (C-ECHO) or waits for its data set (C-STORE).
fn step_command(
    state: &mut Receiving,
    more: Vec<u8>,
    last: bool,
    context: u8,
    ts: &str,
) -> Result<Option<Message>, String> {
    let Receiving::Command(bytes) = state else {
        return Ok(None);
    };
    if bytes.len() + more.len() > dimse::MAX_COMMAND_BYTES {
        return Err("a command set over 64 KiB".into());
    }
    bytes.extend_from_slice(&more);
    if !last {
        return Ok(None);
    }
    let command = dimse::decode(bytes).map_err(|e| e.to_string())?;
    *state = Receiving::Idle;
    let field = dimse::int(&command, tags::COMMAND_FIELD).ok_or("a command without its field")?;
    let message_id = dimse::int(&command, tags::MESSAGE_ID).unwrap_or(0);
    let has_data = dimse::int(&command, tags::COMMAND_DATA_SET_TYPE) != Some(dimse::NO_DATASET);
    match field {
        dimse::C_ECHO_RQ => Ok(Some(Message::Echo {
            context,
            message_id,
        })),
        dimse::C_STORE_RQ if has_data => {
            let class = dimse::text(&command, tags::AFFECTED_SOP_CLASS_UID).unwrap_or_default();
            let instance =
                dimse::text(&command, tags::AFFECTED_SOP_INSTANCE_UID).unwrap_or_default();
            let meta = FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(class.as_str())
                .media_storage_sop_instance_uid(instance.as_str())
                .transfer_syntax(ts)
                .build()
                .map_err(|e| format!("a C-STORE request the gateway cannot file: {e}"))?;
            let mut bytes = vec![0u8; 128];
            bytes.extend_from_slice(b"DICM");
            meta.write(&mut bytes)
                .map_err(|e| format!("a C-STORE request the gateway cannot file: {e}"))?;
            *state = Receiving::Data {
                context,
                message_id,
                class,
                instance,
                bytes,
                seen: 0,
                overflow: false,
            };
            Ok(None)
        }
        dimse::C_STORE_RQ => Err("a C-STORE request without a data set".into()),
        _ if has_data => Err(format!(
            "unsupported DIMSE operation {field:#06x} with a data set"
        )),
        _ => Ok(Some(Message::Unsupported {
            context,
            message_id,
            field,
        })),
    }
}
