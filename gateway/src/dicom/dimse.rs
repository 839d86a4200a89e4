//! The few DIMSE messages the gateway speaks (PS3.7): C-ECHO and C-STORE,
//! as requester and as performer. Command sets are always Implicit VR
//! Little Endian, with their group length first.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use dicom_ul::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};

/// C-STORE-RQ.
pub const C_STORE_RQ: u16 = 0x0001;
/// C-STORE-RSP.
pub const C_STORE_RSP: u16 = 0x8001;
/// C-ECHO-RQ.
pub const C_ECHO_RQ: u16 = 0x0030;
/// C-ECHO-RSP.
pub const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type: no data set follows.
pub const NO_DATASET: u16 = 0x0101;

/// The largest command set accepted (real ones are a few hundred bytes).
pub const MAX_COMMAND_BYTES: usize = 64 << 10;

/// C-STORE statuses the gateway answers (PS3.4 B.2.3, PS3.7 C).
pub mod status {
    /// Stored (here: durably in the spool).
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources (spool or disk full, stopping). The
    /// modality's retry is the recovery.
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: cannot understand (malformed, undecodable).
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Error: refused by the gateway's rules (colour, burned-in
    /// annotation, too large). Resending does not help.
    pub const REFUSED: u16 = 0xC001;
    /// The SOP class was not negotiated on this presentation context.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Unrecognised operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
}

/// Why a command set could not be read.
#[derive(Debug, thiserror::Error)]
#[error("DIMSE command: {0}")]
pub struct CommandError(pub String);

/// Encodes a command set from its elements (group length added).
///
/// # Errors
/// [`CommandError`] when an element cannot be encoded.
pub fn encode(elements: Vec<DataElement<InMemDicomObject>>) -> Result<Vec<u8>, CommandError> {
    let object = InMemDicomObject::from_element_iter(elements);
    let ts = implicit()?;
    let mut body = Vec::new();
    object
        .write_dataset_with_ts(&mut body, ts)
        .map_err(|e| CommandError(e.to_string()))?;
    let length = u32::try_from(body.len()).map_err(|e| CommandError(e.to_string()))?;
    let mut bytes = Vec::with_capacity(body.len() + 12);
    // (0000,0000) UL, implicit: tag, length 4, value.
    bytes.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Reads a command set.
///
/// # Errors
/// [`CommandError`] when it is not a readable Implicit VR data set.
pub fn decode(bytes: &[u8]) -> Result<InMemDicomObject, CommandError> {
    InMemDicomObject::read_dataset_with_ts(bytes, implicit()?)
        .map_err(|e| CommandError(e.to_string()))
}

fn implicit() -> Result<&'static dicom_transfer_syntax_registry::TransferSyntax, CommandError> {
    TransferSyntaxRegistry
        .get(uids::IMPLICIT_VR_LITTLE_ENDIAN)
        .ok_or_else(|| CommandError("no Implicit VR Little Endian codec".into()))
}

/// A command field's integer value, if present.
pub fn int(command: &InMemDicomObject, tag: Tag) -> Option<u16> {
    command.element(tag).ok()?.to_int::<u16>().ok()
}

/// A command field's text, trimmed of padding.
pub fn text(command: &InMemDicomObject, tag: Tag) -> Option<String> {
    let value = command.element(tag).ok()?.to_str().ok()?;
    Some(value.trim_end_matches([' ', '\0']).to_owned())
}

/// An element of a command set.
pub fn element(
    tag: Tag,
    vr: VR,
    value: impl Into<PrimitiveValue>,
) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, value.into())
}

/// The response to a C-STORE-RQ or C-ECHO-RQ.
///
/// # Errors
/// [`CommandError`] when it cannot be encoded.
pub fn response(
    field: u16,
    request_id: u16,
    class: &str,
    instance: Option<&str>,
    code: u16,
    comment: Option<&str>,
) -> Result<Vec<u8>, CommandError> {
    let mut elements = vec![
        element(tags::AFFECTED_SOP_CLASS_UID, VR::UI, class),
        element(tags::COMMAND_FIELD, VR::US, field),
        element(tags::MESSAGE_ID_BEING_RESPONDED_TO, VR::US, request_id),
        element(tags::COMMAND_DATA_SET_TYPE, VR::US, NO_DATASET),
        element(tags::STATUS, VR::US, code),
    ];
    if let Some(instance) = instance {
        elements.push(element(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, instance));
    }
    if let Some(comment) = comment {
        // Error Comment is LO: at most 64 characters.
        let comment: String = comment.chars().take(64).collect();
        elements.push(element(tags::ERROR_COMMENT, VR::LO, comment));
    }
    encode(elements)
}

/// A C-STORE-RQ for `instance` of `class`.
///
/// # Errors
/// [`CommandError`] when it cannot be encoded.
pub fn store_request(
    message_id: u16,
    class: &str,
    instance: &str,
) -> Result<Vec<u8>, CommandError> {
    encode(vec![
        element(tags::AFFECTED_SOP_CLASS_UID, VR::UI, class),
        element(tags::COMMAND_FIELD, VR::US, C_STORE_RQ),
        element(tags::MESSAGE_ID, VR::US, message_id),
        element(tags::PRIORITY, VR::US, 0u16),
        element(tags::COMMAND_DATA_SET_TYPE, VR::US, 0x0000u16),
        element(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, instance),
    ])
}

/// `bytes` as P-DATA-TF PDUs of at most `max_pdu` bytes each (the peer's
/// maximum; 0 means unlimited), the last fragment marked.
pub fn pdata(context: u8, kind: PDataValueType, bytes: &[u8], max_pdu: u32) -> Vec<Pdu> {
    // A PDU of one PDV item: 4 bytes item length, 1 context id, 1 header.
    let room = if max_pdu == 0 {
        usize::MAX
    } else {
        (max_pdu as usize).saturating_sub(6).max(1)
    };
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![bytes]
    } else {
        bytes.chunks(room).collect()
    };
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context,
                value_type: kind.clone(),
                is_last: i == last,
                data: chunk.to_vec(),
            }],
        })
        .collect()
}

/// A peer to store to.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// This node's AE title.
    pub calling: &'a str,
    /// The peer's.
    pub called: &'a str,
    /// `host:port`.
    pub address: &'a str,
    /// Limit for connecting, and for each read and write.
    pub timeout: std::time::Duration,
}

/// One C-STORE as requester: proposes `class` in `syntaxes`, encodes the
/// data set for the one accepted with `encode`, and returns the status and
/// error comment, or `None` when the peer accepted no presentation context.
///
/// # Errors
/// A network or protocol failure, as text.
pub async fn store(
    peer: &Peer<'_>,
    class: &str,
    instance: &str,
    syntaxes: &[&str],
    encode: impl FnOnce(&str) -> Result<Vec<u8>, String>,
) -> Result<Option<(u16, Option<String>)>, String> {
    let established = tokio::time::timeout(
        peer.timeout,
        ClientAssociationOptions::new()
            .calling_ae_title(peer.calling)
            .called_ae_title(peer.called)
            .with_presentation_context(class, syntaxes.to_vec())
            .read_timeout(peer.timeout)
            .write_timeout(peer.timeout)
            .establish_async(peer.address),
    )
    .await
    .map_err(|_| "no answer to the association request".to_owned())?;
    let mut association = match established {
        Ok(association) => association,
        Err(dicom_ul::association::Error::NoAcceptedPresentationContexts { .. }) => {
            return Ok(None);
        }
        Err(e) => return Err(e.to_string()),
    };
    let Some(context) = association
        .presentation_contexts()
        .iter()
        .find(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .cloned()
    else {
        let _ = association.abort().await;
        return Ok(None);
    };
    let data = encode(&context.transfer_syntax)?;
    let command = store_request(1, class, instance).map_err(|e| e.to_string())?;
    let limit = association.acceptor_max_pdu_length();
    let pdus = pdata(context.id, PDataValueType::Command, &command, limit)
        .into_iter()
        .chain(pdata(context.id, PDataValueType::Data, &data, limit));
    for pdu in pdus {
        association.send(&pdu).await.map_err(|e| e.to_string())?;
    }
    drop(data);
    let mut response = Vec::new();
    let answer = loop {
        match association.receive().await.map_err(|e| e.to_string())? {
            Pdu::PData { data } => {
                let mut whole = false;
                for pdv in data {
                    if pdv.value_type == PDataValueType::Command {
                        if response.len() + pdv.data.len() > MAX_COMMAND_BYTES {
                            return Err("an oversized response".into());
                        }
                        response.extend_from_slice(&pdv.data);
                        whole |= pdv.is_last;
                    }
                }
                if whole {
                    let command = decode(&response).map_err(|e| e.to_string())?;
                    break (
                        int(&command, tags::STATUS).ok_or("a response without status")?,
                        text(&command, tags::ERROR_COMMENT),
                    );
                }
            }
            Pdu::AbortRQ { .. } => return Err("the peer aborted the association".into()),
            _ => return Err("an unexpected answer to C-STORE".into()),
        }
    };
    let _ = association.release().await;
    Ok(Some(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_reads_back_with_its_group_length() {
        let bytes = response(
            C_STORE_RSP,
            7,
            "1.2.840.10008.5.1.4.1.1.1",
            Some("1.2.3"),
            status::OUT_OF_RESOURCES,
            Some("the spool is full"),
        )
        .unwrap();
        let command = decode(&bytes).unwrap();
        assert_eq!(
            int(&command, tags::COMMAND_GROUP_LENGTH).map(u32::from),
            Some(bytes.len() as u32 - 12)
        );
        assert_eq!(int(&command, tags::COMMAND_FIELD), Some(C_STORE_RSP));
        assert_eq!(int(&command, tags::MESSAGE_ID_BEING_RESPONDED_TO), Some(7));
        assert_eq!(int(&command, tags::STATUS), Some(0xA700));
        assert_eq!(
            text(&command, tags::ERROR_COMMENT).as_deref(),
            Some("the spool is full")
        );
    }

    #[test]
    fn data_is_split_to_the_peers_pdu_size() {
        let pdus = pdata(3, PDataValueType::Data, &[7; 100], 46);
        assert_eq!(pdus.len(), 3);
        let Pdu::PData { data } = &pdus[2] else {
            panic!()
        };
        assert!(data[0].is_last);
        assert_eq!(data[0].data.len(), 20);
    }
}
