//! The DICOM Structured Report of a result: an Enhanced SR document
//! (PS3.3 A.35.2) in the source image's study, for the same patient, that
//! references the source instance and says what the software found, with
//! which probability and model, or why it did not classify the image, and
//! that this is not a diagnosis.
//!
//! Content tree (all items CONTAINS, under a CONTAINER titled LOINC
//! 18748-4 "Diagnostic imaging report"):
//!
//! | item | concept | value |
//! |---|---|---|
//! | TEXT | DCM 121071 Finding | the label, or `not classified` |
//! | NUM | 99MEDGATE PROB "Probability of finding" | percent (UCUM `%`), classified only |
//! | TEXT | DCM 111001 Algorithm Name | `medgate classifier` |
//! | TEXT | DCM 111003 Algorithm Version | the model version, classified only |
//! | TEXT | DCM 121106 Comment | why not classified, the threshold, and "produced by software, not a diagnosis" |
//! | IMAGE | — | the source SOP instance |
//!
//! The report's UIDs derive from the message id (`2.25.` and a 128-bit
//! number, PS3.5 B.2), so a report built twice for one image is one
//! instance to the PACS, not two.

use std::time::{SystemTime, UNIX_EPOCH};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use medgate_shared::ids::MessageId;
use sha2::{Digest, Sha256};

use super::dimse;
use super::references::{self, References};
use crate::messages::Verdict;

/// Enhanced SR Storage.
pub const ENHANCED_SR: &str = uids::ENHANCED_SR_STORAGE;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
#[error("building the Structured Report: {0}")]
pub struct ReportError(String);

/// Who wrote the report.
#[derive(Debug, Clone)]
pub struct Author<'a> {
    /// The gateway's name (Station Name).
    pub gateway: &'a str,
}

/// The report for `verdict` on the image `references` describe, as a
/// DICOM file (Explicit VR Little Endian).
///
/// # Errors
/// [`ReportError`] when the object cannot be encoded.
pub fn build(
    id: &MessageId,
    references: &References,
    verdict: &Verdict,
    author: &Author<'_>,
    now: SystemTime,
) -> Result<Vec<u8>, ReportError> {
    let (date, time) = date_time(now);
    let mut report = InMemDicomObject::new_empty();
    let mut put = |tag: Tag, vr: VR, value: PrimitiveValue| {
        report.put(DataElement::new(tag, vr, value));
    };
    let instance = uid(id, "instance");
    put(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192".into());
    put(tags::SOP_CLASS_UID, VR::UI, ENHANCED_SR.into());
    put(tags::SOP_INSTANCE_UID, VR::UI, instance.as_str().into());
    put(tags::INSTANCE_CREATION_DATE, VR::DA, date.as_str().into());
    put(tags::INSTANCE_CREATION_TIME, VR::TM, time.as_str().into());
    // Patient and General Study: the image's own values, empty (type 2)
    // when it had none.
    for (tag, keyword) in references::CONTEXT {
        let value = references.context.get(*keyword).cloned();
        let vr = context_vr(*tag);
        match value {
            Some(value) => put(*tag, vr, value.into()),
            None if is_type2(*tag) => put(*tag, vr, PrimitiveValue::Empty),
            None => {}
        }
    }
    put(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        references.study_instance_uid.as_str().into(),
    );
    // SR Document Series and General Equipment.
    put(tags::MODALITY, VR::CS, "SR".into());
    put(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        uid(id, "series").as_str().into(),
    );
    put(tags::SERIES_NUMBER, VR::IS, "9901".into());
    put(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "medgate software result".into(),
    );
    put(tags::MANUFACTURER, VR::LO, "medgate".into());
    put(tags::STATION_NAME, VR::SH, clip(author.gateway, 16).into());
    // SR Document General.
    put(tags::INSTANCE_NUMBER, VR::IS, "1".into());
    put(tags::CONTENT_DATE, VR::DA, date.as_str().into());
    put(tags::CONTENT_TIME, VR::TM, time.as_str().into());
    put(tags::COMPLETION_FLAG, VR::CS, "COMPLETE".into());
    put(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED".into());
    // SR Document Content: the root container.
    put(tags::VALUE_TYPE, VR::CS, "CONTAINER".into());
    put(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE".into());
    report.put(sequence(
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        Vec::new(),
    ));
    report.put(sequence(
        tags::PERFORMED_PROCEDURE_CODE_SEQUENCE,
        Vec::new(),
    ));
    report.put(sequence(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code("18748-4", "LN", "Diagnostic imaging report")],
    ));
    report.put(sequence(
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![evidence(references)],
    ));
    report.put(sequence(
        tags::CONTENT_SEQUENCE,
        content(references, verdict),
    ));

    let file = report
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(ENHANCED_SR)
                .media_storage_sop_instance_uid(instance.as_str()),
        )
        .map_err(|e| ReportError(e.to_string()))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .map_err(|e| ReportError(e.to_string()))?;
    Ok(bytes)
}

fn content(references: &References, verdict: &Verdict) -> Vec<InMemDicomObject> {
    let mut items = Vec::new();
    let notice =
        "Produced by software (medgate), not a diagnosis: to be read and confirmed by a clinician.";
    match verdict {
        Verdict::Classified(result) => {
            items.push(text("121071", "DCM", "Finding", &result.label));
            if let Some(p) = result.probabilities.get(&result.label) {
                items.push(number(
                    ("PROB", "99MEDGATE", "Probability of finding"),
                    f64::from(*p) * 100.0,
                ));
            }
            items.push(text(
                "111001",
                "DCM",
                "Algorithm Name",
                "medgate classifier",
            ));
            items.push(text(
                "111003",
                "DCM",
                "Algorithm Version",
                &result.model_version,
            ));
            items.push(text(
                "121106",
                "DCM",
                "Comment",
                &format!(
                    "{notice} Decision threshold {:.3} on the positive class.",
                    result.threshold
                ),
            ));
        }
        Verdict::NotClassified(answer) => {
            not_classified(&mut items);
            if !answer.model_version.is_empty() {
                items.push(text(
                    "111003",
                    "DCM",
                    "Algorithm Version",
                    &answer.model_version,
                ));
            }
            let why = match answer.score {
                Some(score) => format!(
                    "Not classified ({}: {}; score {score:.2}).",
                    answer.reason, answer.detail
                ),
                None => format!("Not classified ({}: {}).", answer.reason, answer.detail),
            };
            items.push(text("121106", "DCM", "Comment", &format!("{why} {notice}")));
        }
        Verdict::Rejected(rejection) => {
            not_classified(&mut items);
            let why = match rejection.cause.as_str() {
                "unanswered" => format!(
                    "Not classified: no receiver answered the image ({}).",
                    rejection.reason
                ),
                cause => format!("Not classified ({cause}: {}).", rejection.reason),
            };
            items.push(text("121106", "DCM", "Comment", &format!("{why} {notice}")));
        }
    }
    let mut image = item("CONTAINS", "IMAGE");
    image.put(sequence(
        tags::REFERENCED_SOP_SEQUENCE,
        vec![sop_reference(references)],
    ));
    items.push(image);
    items
}

/// The finding "not classified" and the algorithm's name, with which
/// every report of an image without a class begins.
fn not_classified(items: &mut Vec<InMemDicomObject>) {
    items.push(text("121071", "DCM", "Finding", "not classified"));
    items.push(text(
        "111001",
        "DCM",
        "Algorithm Name",
        "medgate classifier",
    ));
}

fn item(relationship: &str, value_type: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    item.put(dimse::element(
        tags::RELATIONSHIP_TYPE,
        VR::CS,
        relationship,
    ));
    item.put(dimse::element(tags::VALUE_TYPE, VR::CS, value_type));
    item
}

fn text(value: &str, scheme: &str, meaning: &str, text: &str) -> InMemDicomObject {
    let mut item = item("CONTAINS", "TEXT");
    item.put(sequence(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code(value, scheme, meaning)],
    ));
    item.put(dimse::element(tags::TEXT_VALUE, VR::UT, text));
    item
}

fn number((value, scheme, meaning): (&str, &str, &str), percent: f64) -> InMemDicomObject {
    let mut item = item("CONTAINS", "NUM");
    item.put(sequence(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code(value, scheme, meaning)],
    ));
    let mut measured = InMemDicomObject::new_empty();
    measured.put(sequence(
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![code("%", "UCUM", "percent")],
    ));
    measured.put(dimse::element(
        tags::NUMERIC_VALUE,
        VR::DS,
        format!("{percent:.1}"),
    ));
    item.put(sequence(tags::MEASURED_VALUE_SEQUENCE, vec![measured]));
    item
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut code = InMemDicomObject::new_empty();
    code.put(dimse::element(tags::CODE_VALUE, VR::SH, value));
    code.put(dimse::element(
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        scheme,
    ));
    code.put(dimse::element(tags::CODE_MEANING, VR::LO, meaning));
    code
}

fn sop_reference(references: &References) -> InMemDicomObject {
    let mut sop = InMemDicomObject::new_empty();
    sop.put(dimse::element(
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        references.sop_class_uid.as_str(),
    ));
    sop.put(dimse::element(
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        references.sop_instance_uid.as_str(),
    ));
    sop
}

/// The Hierarchical SOP Instance Reference of the source image.
fn evidence(references: &References) -> InMemDicomObject {
    let mut series = InMemDicomObject::new_empty();
    series.put(dimse::element(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        references.series_instance_uid.as_str(),
    ));
    series.put(sequence(
        tags::REFERENCED_SOP_SEQUENCE,
        vec![sop_reference(references)],
    ));
    let mut study = InMemDicomObject::new_empty();
    study.put(dimse::element(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        references.study_instance_uid.as_str(),
    ));
    study.put(sequence(tags::REFERENCED_SERIES_SEQUENCE, vec![series]));
    study
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn context_vr(tag: Tag) -> VR {
    match tag {
        tags::PATIENT_NAME | tags::REFERRING_PHYSICIAN_NAME => VR::PN,
        tags::PATIENT_BIRTH_DATE | tags::STUDY_DATE => VR::DA,
        tags::STUDY_TIME => VR::TM,
        tags::PATIENT_SEX => VR::CS,
        tags::ACCESSION_NUMBER | tags::STUDY_ID => VR::SH,
        _ => VR::LO,
    }
}

/// Type 2 attributes of the Patient and General Study modules: present,
/// if empty.
fn is_type2(tag: Tag) -> bool {
    tag != tags::ISSUER_OF_PATIENT_ID
}

fn clip(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// `2.25.` and 128 bits derived from the message id and `what`.
fn uid(id: &MessageId, what: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"medgate dicom report uid\0")
        .chain_update(what.as_bytes())
        .chain_update(id.as_bytes())
        .finalize();
    let mut bits = [0u8; 16];
    bits.copy_from_slice(&digest[..16]);
    format!("2.25.{}", u128::from_be_bytes(bits))
}

/// DA and TM (UTC) of `now`.
fn date_time(now: SystemTime) -> (String, String) {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}{month:02}{day:02}"),
        format!("{:02}{:02}{:02}", rest / 3600, rest % 3600 / 60, rest % 60),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dicom_object::OpenFileOptions;
    use dicom_object::file::ReadPreamble;
    use medgate_shared::messages::{NotClassifiedMessage, ResultMessage, Timings};

    use super::*;
    use crate::messages::Rejection;

    fn references() -> References {
        References {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
            sop_instance_uid: "1.2.826.0.1.3680043.2.1".into(),
            series_instance_uid: "1.2.826.0.1.3680043.2".into(),
            study_instance_uid: "1.2.826.0.1.3680043".into(),
            context: [
                ("PatientName".to_owned(), "Müller^Jürgen".to_owned()),
                ("PatientID".to_owned(), "P-77".to_owned()),
            ]
            .into(),
        }
    }

    fn classified() -> Verdict {
        Verdict::Classified(Box::new(ResultMessage {
            message_id: String::new(),
            site: "site-a".into(),
            gateway: "gw-1".into(),
            device: "modalities".into(),
            sequence: 1,
            captured_at_ms: 0,
            label: "pneumonia".into(),
            probabilities: [("normal".to_owned(), 0.2), ("pneumonia".to_owned(), 0.8)].into(),
            threshold: 0.329,
            model_version: "pneumonia-cnn 7".into(),
            sha512: String::new(),
            receiver: "r-1".into(),
            timings: Timings {
                open_ms: 0.0,
                queue_ms: 0.0,
                inference_ms: 0.0,
                batch_size: 1,
                total_ms: 0.0,
            },
            mac: String::new(),
        }))
    }

    fn text_of(object: &InMemDicomObject, tag: Tag) -> String {
        object
            .element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            .to_owned()
    }

    #[test]
    fn a_report_references_its_image_and_says_what_was_found() {
        let id = MessageId::random();
        let when = UNIX_EPOCH + Duration::from_secs(1_796_207_445); // 2026-12-02 10:30:45
        let bytes = build(
            &id,
            &references(),
            &classified(),
            &Author { gateway: "gw-1" },
            when,
        )
        .unwrap();
        let file = OpenFileOptions::new()
            .read_preamble(ReadPreamble::Always)
            .from_reader(bytes.as_slice())
            .unwrap();
        assert_eq!(text_of(&file, tags::SOP_CLASS_UID), ENHANCED_SR);
        assert_eq!(text_of(&file, tags::PATIENT_NAME), "Müller^Jürgen");
        assert_eq!(
            text_of(&file, tags::STUDY_INSTANCE_UID),
            "1.2.826.0.1.3680043"
        );
        assert_eq!(text_of(&file, tags::CONTENT_DATE), "20261202");
        assert_eq!(text_of(&file, tags::CONTENT_TIME), "103045");
        // Type 2 attributes the image lacked are present and empty.
        assert_eq!(text_of(&file, tags::ACCESSION_NUMBER), "");
        let items = file
            .element(tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        assert_eq!(text_of(&items[0], tags::TEXT_VALUE), "pneumonia");
        let measured = &items[1]
            .element(tags::MEASURED_VALUE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        assert_eq!(text_of(measured, tags::NUMERIC_VALUE), "80.0");
        assert!(text_of(&items[4], tags::TEXT_VALUE).contains("not a diagnosis"));
        let sop = &items[5]
            .element(tags::REFERENCED_SOP_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        assert_eq!(
            text_of(sop, tags::REFERENCED_SOP_INSTANCE_UID),
            "1.2.826.0.1.3680043.2.1"
        );
        // Built again for the same image: the same instance.
        let again = build(
            &id,
            &references(),
            &classified(),
            &Author { gateway: "gw-1" },
            when,
        )
        .unwrap();
        let again = OpenFileOptions::new()
            .read_preamble(ReadPreamble::Always)
            .from_reader(again.as_slice())
            .unwrap();
        assert_eq!(
            text_of(&again, tags::SOP_INSTANCE_UID),
            text_of(&file, tags::SOP_INSTANCE_UID)
        );
        assert!(text_of(&file, tags::SOP_INSTANCE_UID).starts_with("2.25."));
    }

    #[test]
    fn an_image_not_classified_gets_a_report_that_says_so() {
        let rejected = Verdict::Rejected(Rejection {
            message_id: String::new(),
            cause: "unanswered".into(),
            reason: "20 publications".into(),
            receiver: None,
        });
        let items = content_of(&rejected);
        assert_eq!(text_of(&items[0], tags::TEXT_VALUE), "not classified");
        let comment = text_of(&items[2], tags::TEXT_VALUE);
        assert!(comment.contains("no receiver answered"), "{comment}");
        assert!(comment.contains("not a diagnosis"), "{comment}");
    }

    #[test]
    fn an_image_unlike_the_training_data_gets_a_report_with_the_reason_and_score() {
        let answer = Verdict::NotClassified(Box::new(NotClassifiedMessage {
            message_id: String::new(),
            site: "site-a".into(),
            gateway: "gw-1".into(),
            device: "dx-1".into(),
            sequence: 1,
            captured_at_ms: 0,
            reason: "out_of_distribution".into(),
            detail: "unlike the model's training images".into(),
            score: Some(14.25),
            model_version: "pneumonia-cnn-2".into(),
            sha512: String::new(),
            receiver: "receiver-1".into(),
            mac: String::new(),
        }));
        let items = content_of(&answer);
        assert_eq!(text_of(&items[0], tags::TEXT_VALUE), "not classified");
        assert_eq!(text_of(&items[2], tags::TEXT_VALUE), "pneumonia-cnn-2");
        let comment = text_of(&items[3], tags::TEXT_VALUE);
        assert!(
            comment
                .contains("out_of_distribution: unlike the model's training images; score 14.25"),
            "{comment}"
        );
        assert!(comment.contains("not a diagnosis"), "{comment}");
    }

    /// The content items of the report built for `verdict`, read back.
    fn content_of(verdict: &Verdict) -> Vec<InMemDicomObject> {
        let bytes = build(
            &MessageId::random(),
            &references(),
            verdict,
            &Author { gateway: "gw-1" },
            SystemTime::now(),
        )
        .unwrap();
        let file = OpenFileOptions::new()
            .read_preamble(ReadPreamble::Always)
            .from_reader(bytes.as_slice())
            .unwrap();
        file.element(tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn civil_dates() {
        assert_eq!(date_time(UNIX_EPOCH).0, "19700101");
        assert_eq!(
            date_time(UNIX_EPOCH + Duration::from_secs(951_782_400)).0,
            "20000229"
        );
    }
}
