//! A DICOM file to the grayscale pixels the gateway seals, within the same
//! limits as any other image (see [`crate::capture`]).
//!
//! Order, cheapest first: the file size; the structure ([`super::scan`]);
//! the attributes that decide whether and how large (one sample per pixel,
//! MONOCHROME1 or MONOCHROME2, 8 or 16 bits allocated, no burned-in
//! annotation, the first frame's decoded bytes within
//! `preprocess.max_decoded_bytes`, the sealed size within the link); only
//! then the first frame is decoded.
//!
//! Pixels: stored values (bits stored, signed or not) → Modality LUT
//! (Rescale Slope/Intercept) → VOI: the object's first window (linear,
//! PS3.3 C.11.2.1.2.1), or when it has none the range of its own values
//! (pixel padding left out) → the sealed depth, MONOCHROME1 inverted so
//! that white is always high; padding pixels become black. A multi-frame
//! object contributes its first frame.
//!
//! What is sealed comes out of this module as [`DicomImage::pixels`],
//! [`DicomImage::modality`] and [`DicomImage::anatomy`] (Body Part Examined
//! and View Position, which receivers route on). The object's references (UIDs, and the patient
//! and study attributes a report repeats) come out separately, as
//! [`DicomImage::references`], for the gateway's local store only.

use dicom_dictionary_std::{tags, uids};
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, FileMetaTable, OpenFileOptions};
use dicom_pixeldata::{PixelDecoder, PixelRepresentation};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use image::{DynamicImage, GrayImage, ImageBuffer, Luma};
use medgate_shared::header::{Anatomy, Modality};
use medgate_shared::pixels::{PixelFormat, Pixels};

use super::references::{self, References};
use super::scan;
use crate::capture::{self, DecodeError, Limits, Preparation};

/// A DICOM image ready for sealing.
#[derive(Debug)]
pub struct DicomImage {
    /// The pixels, prepared as the config asks.
    pub pixels: Pixels,
    /// Its Modality (0008,0060), when it is a code the gateway knows.
    pub modality: Option<Modality>,
    /// Its Body Part Examined (0018,0015) and View Position (0018,5101),
    /// where present (a value no code string holds counts as absent).
    pub anatomy: Anatomy,
    /// Where it belongs in the hospital (never sealed), when it names its
    /// SOP instance, series and study.
    pub references: Option<References>,
}

/// Whether `bytes` (of a file called `name`) are DICOM: a `.dcm` name or
/// the `DICM` marker after the preamble.
pub fn is_dicom(name: &str, bytes: &[u8]) -> bool {
    name.to_ascii_lowercase().ends_with(".dcm") || bytes.get(128..132) == Some(b"DICM")
}

fn refused(label: &'static str, reason: String) -> DecodeError {
    DecodeError::Refused { label, reason }
}

/// Reads a DICOM file's first frame into sealed-ready pixels.
///
/// # Errors
/// [`DecodeError`]: unreadable or malformed, refused (colour, burned-in
/// annotation, deflated), or too large, all before the pixels are decoded.
pub fn read(
    bytes: Vec<u8>,
    preparation: Preparation,
    limits: &Limits,
) -> Result<DicomImage, DecodeError> {
    limits.check_file_len(bytes.len() as u64)?;
    let layout = scan::check_file(&bytes).map_err(|e| refused("malformed_dicom", e.to_string()))?;
    let bytes = if layout.deflated {
        let inflated = inflate(&bytes, layout.data_set, limits.max_file_bytes())?;
        drop(bytes);
        scan::check_file(&inflated).map_err(|e| refused("malformed_dicom", e.to_string()))?;
        inflated
    } else {
        bytes
    };
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes.as_slice())
        .map_err(|e| refused("malformed_dicom", e.to_string()))?;
    // The object holds its own copy of every value.
    drop(bytes);

    let text = |tag| {
        object
            .element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim().to_ascii_uppercase())
    };
    let number = |tag| {
        object
            .element(tag)
            .ok()
            .and_then(|e| e.to_int::<u32>().ok())
    };
    if text(tags::BURNED_IN_ANNOTATION).as_deref() == Some("YES") {
        return Err(refused(
            "burned_in_annotation",
            "Burned In Annotation is YES: the pixels may show patient identity".into(),
        ));
    }
    let photometric = text(tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let samples = number(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    if samples != 1 || !matches!(photometric.as_str(), "MONOCHROME1" | "MONOCHROME2") {
        return Err(refused(
            "not_grayscale",
            format!(
                "photometric interpretation {photometric:?} with {samples} samples per pixel; only MONOCHROME1/2 grayscale is accepted"
            ),
        ));
    }
    let (Some(rows), Some(columns), Some(allocated)) = (
        number(tags::ROWS),
        number(tags::COLUMNS),
        number(tags::BITS_ALLOCATED),
    ) else {
        return Err(refused(
            "malformed_dicom",
            "Rows, Columns or Bits Allocated missing".into(),
        ));
    };
    if !matches!(allocated, 8 | 16) || rows == 0 || columns == 0 {
        return Err(refused(
            "unsupported_dicom",
            format!("{columns}x{rows} at {allocated} bits allocated; 8 or 16 bits are accepted"),
        ));
    }
    let decoded = u64::from(rows) * u64::from(columns) * u64::from(allocated / 8);
    if decoded > limits.max_decoded_bytes {
        return Err(DecodeError::DecodedTooLarge {
            width: columns,
            height: rows,
            color: format!("{allocated}-bit grayscale"),
            bytes: decoded,
            limit: limits.max_decoded_bytes,
        });
    }
    let target = capture::sealed_size(columns, rows, preparation, limits)?;
    let modality = text(tags::MODALITY).and_then(|m| Modality::from_code(&m));
    let code = |tag| text(tag).and_then(|value| Anatomy::code(&value).ok().flatten());
    let anatomy = Anatomy {
        body_part: code(tags::BODY_PART_EXAMINED),
        view_position: code(tags::VIEW_POSITION),
    };
    let references = references_of(&object);
    let image = to_gray(&object, preparation.format, photometric == "MONOCHROME1")?;
    drop(object);
    Ok(DicomImage {
        pixels: capture::prepare(image, preparation.format, target)?,
        modality,
        anatomy,
        references,
    })
}

/// The object's UIDs and the [`references::CONTEXT`] attributes it has.
fn references_of(object: &DefaultDicomObject) -> Option<References> {
    let text = |tag| {
        object
            .element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches([' ', '\0']).to_owned())
    };
    let uid = |tag| text(tag).filter(|u| !u.is_empty());
    let context = references::CONTEXT
        .iter()
        .filter_map(|(tag, keyword)| Some(((*keyword).to_owned(), text(*tag)?)))
        .collect();
    Some(References {
        sop_class_uid: uid(tags::SOP_CLASS_UID)?,
        sop_instance_uid: uid(tags::SOP_INSTANCE_UID)?,
        series_instance_uid: uid(tags::SERIES_INSTANCE_UID)?,
        study_instance_uid: uid(tags::STUDY_INSTANCE_UID)?,
        context,
    })
}

/// A deflated file as the same file in Explicit VR Little Endian: its data
/// set (from `data_set`) inflated, at most `limit` bytes of it, so that a
/// deflate bomb costs no more than the largest file accepted.
fn inflate(bytes: &[u8], data_set: usize, limit: u64) -> Result<Vec<u8>, DecodeError> {
    use std::io::Read;
    let mut meta = FileMetaTable::from_reader(&bytes[128..data_set])
        .map_err(|e| refused("malformed_dicom", e.to_string()))?;
    let explicit = TransferSyntaxRegistry
        .get(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .ok_or_else(|| refused("unsupported_dicom", "no explicit VR codec".into()))?;
    meta.set_transfer_syntax(explicit);
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out)
        .map_err(|e| refused("malformed_dicom", e.to_string()))?;
    let start = out.len();
    flate2::read::DeflateDecoder::new(&bytes[data_set..])
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| refused("malformed_dicom", format!("the deflated data set: {e}")))?;
    let inflated = (out.len() - start) as u64;
    if inflated > limit {
        return Err(DecodeError::FileTooLarge {
            bytes: inflated,
            limit,
        });
    }
    Ok(out)
}

/// Decodes the first frame and maps it to `format` (see the module text).
fn to_gray(
    object: &DefaultDicomObject,
    format: PixelFormat,
    invert: bool,
) -> Result<DynamicImage, DecodeError> {
    let frame = object
        .decode_pixel_data_frame(0)
        .map_err(|e| refused("undecodable_dicom", e.to_string()))?;
    let (width, height) = (frame.columns(), frame.rows());
    let stored = u32::from(frame.bits_stored().clamp(1, frame.bits_allocated()));
    let signed = frame.pixel_representation() == PixelRepresentation::Signed;
    let (slope, intercept) = frame
        .rescale()
        .ok()
        .and_then(|r| r.first().map(|r| (r.slope, r.intercept)))
        .unwrap_or((1.0, 0.0));
    let padding = object
        .element(tags::PIXEL_PADDING_VALUE)
        .ok()
        .and_then(|e| e.to_int::<i32>().ok());
    let data = frame.data();
    let count = width as usize * height as usize;
    let wide = frame.bits_allocated() == 16;
    if data.len() < count * if wide { 2 } else { 1 } {
        return Err(refused(
            "undecodable_dicom",
            "the decoded frame is shorter than Rows x Columns".into(),
        ));
    }
    let raw = |i: usize| -> i32 {
        let word = if wide {
            u32::from(u16::from_le_bytes([data[2 * i], data[2 * i + 1]]))
        } else {
            u32::from(data[i])
        };
        let value = word & ((1u32 << stored) - 1);
        if signed && value & (1 << (stored - 1)) != 0 {
            value as i32 - (1i32 << stored)
        } else {
            value as i32
        }
    };
    let is_padding = |v: i32| padding == Some(v);
    let real = |v: i32| f64::from(v) * slope + intercept;
    let window = frame
        .window()
        .ok()
        .flatten()
        .and_then(|w| w.first().copied())
        .filter(|w| w.width >= 1.0)
        .map(|w| (w.center, w.width));
    let (center, width_w) = match window {
        Some(window) => window,
        None => {
            let (mut low, mut high) = (f64::MAX, f64::MIN);
            for i in 0..count {
                let v = raw(i);
                if !is_padding(v) {
                    let x = real(v);
                    low = low.min(x);
                    high = high.max(x);
                }
            }
            if low > high {
                (0.0, 1.0)
            } else {
                ((low + high) / 2.0 + 0.5, (high - low).max(0.0) + 1.0)
            }
        }
    };
    let top = match format {
        PixelFormat::Gray8 => 255.0,
        PixelFormat::Gray16 => 65535.0,
    };
    let map = |i: usize| -> f64 {
        let v = raw(i);
        if is_padding(v) {
            return 0.0;
        }
        let x = real(v);
        let level = if width_w <= 1.0 {
            if x < center - 0.5 { 0.0 } else { top }
        } else {
            let lower = center - 0.5 - (width_w - 1.0) / 2.0;
            let upper = center - 0.5 + (width_w - 1.0) / 2.0;
            if x <= lower {
                0.0
            } else if x > upper {
                top
            } else {
                ((x - (center - 0.5)) / (width_w - 1.0) + 0.5) * top
            }
        };
        if invert { top - level } else { level }
    };
    Ok(match format {
        PixelFormat::Gray8 => {
            let out: Vec<u8> = (0..count).map(|i| map(i).round() as u8).collect();
            DynamicImage::ImageLuma8(
                GrayImage::from_raw(width, height, out)
                    .ok_or_else(|| refused("undecodable_dicom", "frame size mismatch".into()))?,
            )
        }
        PixelFormat::Gray16 => {
            let out: Vec<u16> = (0..count).map(|i| map(i).round() as u16).collect();
            DynamicImage::ImageLuma16(
                ImageBuffer::<Luma<u16>, Vec<u16>>::from_raw(width, height, out)
                    .ok_or_else(|| refused("undecodable_dicom", "frame size mismatch".into()))?,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    use super::*;
    use crate::capture::Oversize;

    const CR: &str = "1.2.840.10008.5.1.4.1.1.1";

    fn put(object: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, value: PrimitiveValue) {
        object.put(DataElement::new(tag, vr, value));
    }

    /// A CR object of `width` x `height` 16-bit samples (12 stored), with
    /// extra attributes from `edit`, as a DICOM file.
    fn cr(
        width: u16,
        height: u16,
        samples: &[u16],
        edit: impl FnOnce(&mut InMemDicomObject),
    ) -> Vec<u8> {
        let mut object = InMemDicomObject::new_empty();
        put(&mut object, tags::SOP_CLASS_UID, VR::UI, CR.into());
        put(
            &mut object,
            tags::SOP_INSTANCE_UID,
            VR::UI,
            "1.2.3.4".into(),
        );
        put(&mut object, tags::MODALITY, VR::CS, "CR".into());
        put(&mut object, tags::PATIENT_NAME, VR::PN, "Doe^Jane".into());
        put(&mut object, tags::SAMPLES_PER_PIXEL, VR::US, 1u16.into());
        put(
            &mut object,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2".into(),
        );
        put(&mut object, tags::ROWS, VR::US, height.into());
        put(&mut object, tags::COLUMNS, VR::US, width.into());
        put(&mut object, tags::BITS_ALLOCATED, VR::US, 16u16.into());
        put(&mut object, tags::BITS_STORED, VR::US, 12u16.into());
        put(&mut object, tags::HIGH_BIT, VR::US, 11u16.into());
        put(&mut object, tags::PIXEL_REPRESENTATION, VR::US, 0u16.into());
        let bytes: Vec<u8> = samples.iter().flat_map(|v| v.to_le_bytes()).collect();
        put(&mut object, tags::PIXEL_DATA, VR::OW, bytes.into());
        edit(&mut object);
        let file = object
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(scan::EXPLICIT_LE)
                    .media_storage_sop_class_uid(CR)
                    .media_storage_sop_instance_uid("1.2.3.4"),
            )
            .unwrap();
        let mut out = Vec::new();
        file.write_all(&mut out).unwrap();
        out
    }

    fn eight() -> (Preparation, Limits) {
        let preparation = Preparation {
            format: PixelFormat::Gray8,
            resize: None,
            max_decoded_bytes: 32 << 20,
            oversize: Oversize::Refuse,
        };
        (preparation, preparation.limits(16 << 20))
    }

    /// `file` (explicit VR little endian) with its data set deflated.
    fn deflated(file: &[u8], extra: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let layout = scan::check_file(file).unwrap();
        let mut meta = FileMetaTable::from_reader(&file[128..layout.data_set]).unwrap();
        meta.set_transfer_syntax(
            TransferSyntaxRegistry
                .get(uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
                .unwrap(),
        );
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        meta.write(&mut out).unwrap();
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&file[layout.data_set..]).unwrap();
        encoder.write_all(extra).unwrap();
        out.extend_from_slice(&encoder.finish().unwrap());
        out
    }

    #[test]
    fn deflated_objects_are_inflated_within_the_file_limit() {
        let (preparation, limits) = eight();
        let plain = cr(2, 2, &[0, 4095, 0, 4095], |_| {});
        let expected = read(plain.clone(), preparation, &limits).unwrap();
        let image = read(deflated(&plain, &[]), preparation, &limits).unwrap();
        assert_eq!(image.pixels.data(), expected.pixels.data());
        // 40 MiB of zeros after the data set deflate to about 40 KB: a bomb.
        let bomb = deflated(&plain, &vec![0u8; 40 << 20]);
        assert!(bomb.len() < 100_000);
        let e = read(bomb, preparation, &limits).unwrap_err();
        assert_eq!(e.reason(), "file_too_large", "{e}");
    }

    #[test]
    fn body_part_and_view_position_come_out_as_they_travel() {
        let (preparation, limits) = eight();
        let file = cr(2, 2, &[0, 1, 2, 3], |o| {
            put(o, tags::BODY_PART_EXAMINED, VR::CS, "LOWER LEG ".into());
            put(o, tags::VIEW_POSITION, VR::CS, "ap".into());
        });
        let image = read(file, preparation, &limits).unwrap();
        assert_eq!(image.anatomy.to_string(), "LOWER_LEG/AP");
        let bare = read(cr(2, 2, &[0, 1, 2, 3], |_| {}), preparation, &limits).unwrap();
        assert!(bare.anatomy.is_unknown());
        // A value no code string holds is left out, not sealed.
        let odd = cr(2, 2, &[0, 1, 2, 3], |o| {
            put(o, tags::BODY_PART_EXAMINED, VR::CS, "CHEST/PA".into());
        });
        assert!(
            read(odd, preparation, &limits)
                .unwrap()
                .anatomy
                .is_unknown()
        );
    }

    #[test]
    fn rescale_window_and_monochrome1_map_to_the_sealed_depth() {
        let samples = [0, 100, 200, 300, 400, 500, 4095, 250];
        let file = cr(4, 2, &samples, |o| {
            // Real value = 2 x stored - 100; window 400 wide around 300.
            put(o, tags::RESCALE_SLOPE, VR::DS, "2".into());
            put(o, tags::RESCALE_INTERCEPT, VR::DS, "-100".into());
            put(o, tags::WINDOW_CENTER, VR::DS, "300".into());
            put(o, tags::WINDOW_WIDTH, VR::DS, "401".into());
        });
        assert!(is_dicom("x.bin", &file) && is_dicom("X.DCM", b""));
        let (preparation, limits) = eight();
        let image = read(file, preparation, &limits).unwrap();
        assert_eq!(image.modality, Some(Modality::from_code("CR").unwrap()));
        let p = image.pixels.data();
        // Real values: -100, 100, 300, 500, 700, 900, 8090, 400.
        assert_eq!(p[0], 0, "below the window");
        assert_eq!(p[2], 128, "the centre is mid-grey");
        assert_eq!(p[3], 255, "the window's top");
        assert_eq!(p[6], 255, "above the window");
        assert!(p[1] < p[7] && p[7] < 255, "{p:?}");

        let inverted = cr(4, 2, &samples, |o| {
            put(
                o,
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                "MONOCHROME1".into(),
            );
            put(o, tags::PIXEL_PADDING_VALUE, VR::US, 0u16.into());
        });
        let q = read(inverted, preparation, &limits).unwrap().pixels;
        let q = q.data();
        // No window: the image's own range (padding left out), inverted.
        assert_eq!(q[0], 0, "padding is black");
        assert_eq!(q[6], 0, "the highest stored value is black in MONOCHROME1");
        assert_eq!(q[1], 255, "the lowest non-padding value is white");
    }

    #[test]
    fn colour_burned_in_annotation_and_huge_headers_are_refused_before_decoding() {
        let (preparation, limits) = eight();
        let colour = cr(2, 2, &[0; 4], |o| {
            put(o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB".into());
            put(o, tags::SAMPLES_PER_PIXEL, VR::US, 3u16.into());
        });
        assert_eq!(
            read(colour, preparation, &limits).unwrap_err().reason(),
            "not_grayscale"
        );
        let burned = cr(2, 2, &[0; 4], |o| {
            put(o, tags::BURNED_IN_ANNOTATION, VR::CS, "YES".into());
        });
        assert_eq!(
            read(burned, preparation, &limits).unwrap_err().reason(),
            "burned_in_annotation"
        );
        // The header claims 30000 x 30000; four pixels follow.
        let huge = cr(2, 2, &[0; 4], |o| {
            put(o, tags::ROWS, VR::US, 30000u16.into());
            put(o, tags::COLUMNS, VR::US, 30000u16.into());
        });
        let e = read(huge, preparation, &limits).unwrap_err();
        assert_eq!(e.reason(), "decoded_too_large", "{e}");
        // A length the file does not hold is refused by the scan.
        let mut cut = cr(2, 2, &[0; 4], |_| {});
        cut.truncate(cut.len() - 3);
        assert_eq!(
            read(cut, preparation, &limits).unwrap_err().reason(),
            "malformed_dicom"
        );
    }

    #[test]
    fn references_come_out_apart_from_the_pixels_and_never_in_debug_text() {
        let (preparation, limits) = eight();
        let file = cr(2, 2, &[1, 2, 3, 4], |o| {
            put(o, tags::STUDY_INSTANCE_UID, VR::UI, "1.2.9".into());
            put(o, tags::SERIES_INSTANCE_UID, VR::UI, "1.2.9.1".into());
        });
        let image = read(file, preparation, &limits).unwrap();
        let text = format!("{image:?}");
        assert!(!text.contains("Doe") && !text.contains("1.2.9"), "{text}");
        assert_eq!(image.pixels.data().len(), 4);
        let references = image.references.unwrap();
        assert_eq!(references.sop_instance_uid, "1.2.3.4");
        assert_eq!(references.study_instance_uid, "1.2.9");
        assert_eq!(references.context["PatientName"], "Doe^Jane");
        // Without a study, there is nothing a report could refer to.
        let file = cr(2, 2, &[1, 2, 3, 4], |_| {});
        assert!(
            read(file, preparation, &limits)
                .unwrap()
                .references
                .is_none()
        );
    }
}
