//! A structural check of a DICOM file (PS3.10 file format, PS3.5 data
//! encoding) before any DICOM library reads it: every element's length
//! must fit the bytes that are really there, sequences and items must nest
//! and close within their parents, and nesting is bounded.
//!
//! It exists because a parser trusts the lengths it reads: dicom-object
//! 0.10, given pydicom's 7 KB `SC_rgb_jpeg.dcm` (whose data set it misreads),
//! allocates 1.2 GB for one value whose "length" is four ASCII letters.
//! Once this check passes, no value a parser reads can be longer than the
//! file.
//!
//! It reads the file meta group (explicit VR little endian) for the
//! transfer syntax, then walks the data set in that encoding: implicit VR
//! little endian, explicit VR little endian (also the data set of every
//! compressed syntax, with encapsulated pixel data). Deflated data sets
//! are reported as such (the caller inflates them with a bound); explicit
//! VR big endian, retired, is refused.

/// Deepest nesting of sequences accepted (real objects use 3 or 4).
pub const MAX_DEPTH: usize = 16;

/// The implicit VR little endian transfer syntax.
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
/// The explicit VR little endian transfer syntax.
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// The deflated explicit VR little endian transfer syntax.
pub const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";
/// The explicit VR big endian transfer syntax (retired).
pub const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";

const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The transfer syntax UID from the file meta group.
    pub transfer_syntax: String,
    /// Where the data set starts.
    pub data_set: usize,
    /// Whether the data set is deflated (not walked: inflate it, with a
    /// bound, and check the result with [`check_data_set`]).
    pub deflated: bool,
}

/// Why the bytes are not a well-formed DICOM file. Quotes no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// No `DICM` marker after a 128-byte preamble.
    #[error("not a DICOM file: no \"DICM\" marker after the 128-byte preamble")]
    NotDicom,
    /// The file meta group is missing or has no transfer syntax.
    #[error("the file meta information has no transfer syntax UID (0002,0010)")]
    NoTransferSyntax,
    /// A transfer syntax this gateway does not read.
    #[error("transfer syntax {0} is not accepted (explicit VR big endian is retired)")]
    Unsupported(String),
    /// An element runs past the end of its container.
    #[error(
        "element ({group:04X},{element:04X}) at byte {at} claims {length} bytes; {available} are left"
    )]
    Overrun {
        /// Its group.
        group: u16,
        /// Its element.
        element: u16,
        /// Its offset in the file.
        at: usize,
        /// The length it claims.
        length: u64,
        /// What its container has left.
        available: usize,
    },
    /// The bytes end inside an element header.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// An explicit VR that PS3.5 does not define.
    #[error("element ({group:04X},{element:04X}) at byte {at} has an unknown VR")]
    UnknownVr {
        /// Its group.
        group: u16,
        /// Its element.
        element: u16,
        /// Its offset.
        at: usize,
    },
    /// Undefined length where PS3.5 does not allow it, an item outside a
    /// sequence, or a sequence that never closes.
    #[error("malformed nesting at byte {0}")]
    Nesting(usize),
    /// Sequences nested deeper than [`MAX_DEPTH`].
    #[error("sequences nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Checks a whole file (preamble, meta group, data set).
///
/// # Errors
/// [`ScanError`] for the first problem found.
pub fn check_file(bytes: &[u8]) -> Result<Layout, ScanError> {
    if bytes.get(128..132) != Some(b"DICM") {
        return Err(ScanError::NotDicom);
    }
    let mut at = 132;
    let mut transfer_syntax = None;
    // The meta group: explicit VR little endian, group 0002 only.
    while bytes.len() >= at + 2 && u16::from_le_bytes([bytes[at], bytes[at + 1]]) == 0x0002 {
        let element = read_header(bytes, at, bytes.len(), true)?;
        if element.length == UNDEFINED {
            return Err(ScanError::Nesting(at));
        }
        let value = bytes
            .get(element.value..element.value + element.length as usize)
            .ok_or(ScanError::Truncated(at))?;
        if (element.group, element.element) == (0x0002, 0x0010) {
            let uid = String::from_utf8_lossy(value);
            transfer_syntax = Some(uid.trim_end_matches(['\0', ' ']).to_owned());
        }
        at = element.value + element.length as usize;
    }
    let transfer_syntax = transfer_syntax.ok_or(ScanError::NoTransferSyntax)?;
    let layout = Layout {
        deflated: transfer_syntax == DEFLATED_LE,
        transfer_syntax,
        data_set: at,
    };
    if layout.transfer_syntax == EXPLICIT_BE {
        return Err(ScanError::Unsupported(layout.transfer_syntax));
    }
    if !layout.deflated {
        check_data_set(&bytes[at..], layout.transfer_syntax != IMPLICIT_LE)
            .map_err(|e| e.shifted(at))?;
    }
    Ok(layout)
}

/// Checks a data set (after the meta group, or inflated), `explicit` VR or
/// implicit, little endian.
///
/// # Errors
/// [`ScanError`] for the first problem found; offsets count from the start
/// of `bytes`.
pub fn check_data_set(bytes: &[u8], explicit: bool) -> Result<(), ScanError> {
    let mut walker = Walker { bytes, explicit };
    let end = walker.elements(0, bytes.len(), 0, false)?;
    debug_assert_eq!(end, bytes.len());
    Ok(())
}

impl ScanError {
    /// The same error with offsets moved by `by` (a data set inside a file).
    fn shifted(self, by: usize) -> Self {
        match self {
            Self::Overrun {
                group,
                element,
                at,
                length,
                available,
            } => Self::Overrun {
                group,
                element,
                at: at + by,
                length,
                available,
            },
            Self::Truncated(at) => Self::Truncated(at + by),
            Self::UnknownVr { group, element, at } => Self::UnknownVr {
                group,
                element,
                at: at + by,
            },
            Self::Nesting(at) => Self::Nesting(at + by),
            other => other,
        }
    }
}

struct Header {
    group: u16,
    element: u16,
    /// Sequence (SQ), or unknown (UN), whose undefined length nests items.
    nests: bool,
    /// An explicit SQ: a defined-length value holds items too.
    sequence: bool,
    /// An explicit UN: of undefined length, its items are encoded in
    /// implicit VR (PS3.5 6.2.2).
    unknown: bool,
    length: u32,
    /// Where the value starts.
    value: usize,
}

/// Reads an element header at `at`, ending before `end`.
fn read_header(bytes: &[u8], at: usize, end: usize, explicit: bool) -> Result<Header, ScanError> {
    let field = |from: usize, n: usize| {
        bytes
            .get(from..from + n)
            .filter(|_| from + n <= end)
            .ok_or(ScanError::Truncated(at))
    };
    let tag = field(at, 4)?;
    let group = u16::from_le_bytes([tag[0], tag[1]]);
    let element = u16::from_le_bytes([tag[2], tag[3]]);
    let u32_at = |from: usize| -> Result<u32, ScanError> {
        let raw = field(from, 4)?;
        Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
    };
    // Items and delimiters have no VR in either encoding.
    if group == 0xFFFE || !explicit {
        return Ok(Header {
            group,
            element,
            nests: true,
            sequence: false,
            unknown: false,
            length: u32_at(at + 4)?,
            value: at + 8,
        });
    }
    let vr = field(at + 4, 2)?;
    let vr = [vr[0], vr[1]];
    match &vr {
        b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR"
        | b"UT" | b"UV" => Ok(Header {
            group,
            element,
            nests: matches!(&vr, b"SQ" | b"UN"),
            sequence: &vr == b"SQ",
            unknown: &vr == b"UN",
            length: u32_at(at + 8)?,
            value: at + 12,
        }),
        b"AE" | b"AS" | b"AT" | b"CS" | b"DA" | b"DS" | b"DT" | b"FD" | b"FL" | b"IS" | b"LO"
        | b"LT" | b"PN" | b"SH" | b"SL" | b"SS" | b"ST" | b"TM" | b"UI" | b"UL" | b"US" => {
            let raw = field(at + 6, 2)?;
            Ok(Header {
                group,
                element,
                nests: false,
                sequence: false,
                unknown: false,
                length: u32::from(u16::from_le_bytes([raw[0], raw[1]])),
                value: at + 8,
            })
        }
        _ => Err(ScanError::UnknownVr { group, element, at }),
    }
}

struct Walker<'a> {
    bytes: &'a [u8],
    explicit: bool,
}

impl Walker<'_> {
    /// Walks elements from `at` to `end`; with `delimited`, stops after an
    /// item delimiter instead. Returns where it stopped.
    fn elements(
        &mut self,
        mut at: usize,
        end: usize,
        depth: usize,
        delimited: bool,
    ) -> Result<usize, ScanError> {
        while at < end {
            let header = read_header(self.bytes, at, end, self.explicit)?;
            let tag = (header.group, header.element);
            if tag == ITEM_END {
                return if delimited {
                    Ok(header.value)
                } else {
                    Err(ScanError::Nesting(at))
                };
            }
            if tag == ITEM || tag == SEQUENCE_END {
                return Err(ScanError::Nesting(at));
            }
            if header.length == UNDEFINED {
                let pixel_data = tag == (0x7FE0, 0x0010);
                if !header.nests && !pixel_data {
                    return Err(ScanError::Nesting(at));
                }
                let explicit = self.explicit;
                if header.unknown {
                    self.explicit = false;
                }
                let after = self.items(header.value, end, depth + 1, pixel_data);
                self.explicit = explicit;
                at = after?;
                continue;
            }
            let value_end = self.fit(&header, at, end)?;
            if header.sequence && header.length > 0 {
                self.items_within(header.value, value_end, depth + 1)?;
            }
            at = value_end;
        }
        if delimited {
            return Err(ScanError::Nesting(at));
        }
        Ok(at)
    }

    /// Items of an undefined-length sequence (or fragments of encapsulated
    /// pixel data) from `at` until the sequence delimiter.
    fn items(
        &mut self,
        mut at: usize,
        end: usize,
        depth: usize,
        fragments: bool,
    ) -> Result<usize, ScanError> {
        if depth > MAX_DEPTH {
            return Err(ScanError::TooDeep);
        }
        loop {
            let header = read_header(self.bytes, at, end, false)?;
            match (header.group, header.element) {
                SEQUENCE_END => return Ok(header.value),
                ITEM if header.length == UNDEFINED && !fragments => {
                    at = self.elements(header.value, end, depth, true)?;
                }
                ITEM if header.length != UNDEFINED => {
                    let item_end = self.fit(&header, at, end)?;
                    if !fragments {
                        self.elements(header.value, item_end, depth, false)?;
                    }
                    at = item_end;
                }
                _ => return Err(ScanError::Nesting(at)),
            }
        }
    }

    /// Items of a defined-length sequence, which must end exactly at `end`.
    fn items_within(&mut self, mut at: usize, end: usize, depth: usize) -> Result<(), ScanError> {
        if depth > MAX_DEPTH {
            return Err(ScanError::TooDeep);
        }
        while at < end {
            let header = read_header(self.bytes, at, end, false)?;
            if (header.group, header.element) != ITEM {
                return Err(ScanError::Nesting(at));
            }
            if header.length == UNDEFINED {
                at = self.elements(header.value, end, depth, true)?;
            } else {
                let item_end = self.fit(&header, at, end)?;
                self.elements(header.value, item_end, depth, false)?;
                at = item_end;
            }
        }
        Ok(())
    }

    /// Where a defined-length value ends, if it fits before `end`.
    fn fit(&self, header: &Header, at: usize, end: usize) -> Result<usize, ScanError> {
        let available = end.saturating_sub(header.value);
        if header.length as usize > available {
            return Err(ScanError::Overrun {
                group: header.group,
                element: header.element,
                at,
                length: u64::from(header.length),
                available,
            });
        }
        Ok(header.value + header.length as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An explicit VR little endian element with a short length.
    fn short(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    /// An explicit VR little endian element with a long length.
    fn long(group: u16, element: u16, vr: &[u8; 2], length: u32, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn tag_only(group: u16, element: u16, length: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
        out
    }

    fn file(transfer_syntax: &str, data_set: &[u8]) -> Vec<u8> {
        let mut uid = transfer_syntax.as_bytes().to_vec();
        if uid.len() % 2 == 1 {
            uid.push(0);
        }
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        out.extend(short(0x0002, 0x0010, b"UI", &uid));
        out.extend_from_slice(data_set);
        out
    }

    fn sample_data_set() -> Vec<u8> {
        let mut ds = short(0x0008, 0x0060, b"CS", b"CR");
        // A sequence of undefined length with one undefined-length item.
        ds.extend(long(0x0008, 0x1140, b"SQ", UNDEFINED, &[]));
        ds.extend(tag_only(0xFFFE, 0xE000, UNDEFINED));
        ds.extend(short(0x0008, 0x1155, b"UI", b"1.2.3.4\0"));
        ds.extend(tag_only(0xFFFE, 0xE00D, 0));
        ds.extend(tag_only(0xFFFE, 0xE0DD, 0));
        // A defined-length sequence with one defined-length item.
        let inner = short(0x0008, 0x0100, b"SH", b"T-D3000\0");
        let mut item = tag_only(0xFFFE, 0xE000, inner.len() as u32);
        item.extend(&inner);
        ds.extend(long(0x0008, 0x2218, b"SQ", item.len() as u32, &item));
        ds.extend(short(0x0028, 0x0010, b"US", &4u16.to_le_bytes()));
        // Encapsulated pixel data: offset table and one fragment.
        ds.extend(long(0x7FE0, 0x0010, b"OB", UNDEFINED, &[]));
        ds.extend(tag_only(0xFFFE, 0xE000, 0));
        ds.extend(tag_only(0xFFFE, 0xE000, 4));
        ds.extend_from_slice(&[1, 2, 3, 4]);
        ds.extend(tag_only(0xFFFE, 0xE0DD, 0));
        ds
    }

    #[test]
    fn a_well_formed_file_passes_with_its_transfer_syntax() {
        let bytes = file("1.2.840.10008.1.2.4.50", &sample_data_set());
        let layout = check_file(&bytes).unwrap();
        assert_eq!(layout.transfer_syntax, "1.2.840.10008.1.2.4.50");
        assert!(!layout.deflated);
        let deflated = check_file(&file(DEFLATED_LE, b"\x01\x02")).unwrap();
        assert!(deflated.deflated, "not walked: the caller inflates it");
    }

    #[test]
    fn a_length_beyond_the_file_is_refused_before_any_parser_trusts_it() {
        let mut ds = sample_data_set();
        // OB value claiming 1.2 GB: the dicom-object allocation bomb.
        ds.extend(long(0x0009, 0x0010, b"OB", 1_230_128_452, b"ORIGINAL"));
        let e = check_file(&file(EXPLICIT_LE, &ds)).unwrap_err();
        assert!(
            matches!(
                e,
                ScanError::Overrun {
                    length: 1_230_128_452,
                    ..
                }
            ),
            "{e}"
        );
        // Inside a defined-length item, the item is the container.
        let inner = short(0x0008, 0x0100, b"SH", &[b'x'; 40]);
        let mut item = tag_only(0xFFFE, 0xE000, 10);
        item.extend(&inner);
        let ds = long(0x0008, 0x2218, b"SQ", item.len() as u32, &item);
        assert!(matches!(
            check_file(&file(EXPLICIT_LE, &ds)),
            Err(ScanError::Overrun { .. })
        ));
    }

    #[test]
    fn truncation_bad_vrs_bad_nesting_and_depth_are_refused() {
        let good = file(EXPLICIT_LE, &sample_data_set());
        for cut in [good.len() - 1, good.len() - 9, 140, 133] {
            assert!(check_file(&good[..cut]).is_err(), "cut at {cut}");
        }
        let bad_vr = short(0x0008, 0x0060, b"ZZ", b"CR");
        assert!(matches!(
            check_file(&file(EXPLICIT_LE, &bad_vr)),
            Err(ScanError::UnknownVr { .. })
        ));
        // An undefined length on a plain string, an item outside a sequence.
        let undefined = long(0x0008, 0x0060, b"UT", UNDEFINED, &[]);
        assert!(matches!(
            check_file(&file(EXPLICIT_LE, &undefined)),
            Err(ScanError::Nesting(_))
        ));
        let stray = tag_only(0xFFFE, 0xE000, 0);
        assert!(check_file(&file(EXPLICIT_LE, &stray)).is_err());
        // A sequence that never closes.
        let open = long(
            0x0008,
            0x1140,
            b"SQ",
            UNDEFINED,
            &tag_only(0xFFFE, 0xE000, 0),
        );
        assert!(check_file(&file(EXPLICIT_LE, &open)).is_err());
        // Nested deeper than allowed.
        let mut deep = Vec::new();
        for _ in 0..=MAX_DEPTH {
            deep.extend(long(0x0008, 0x1140, b"SQ", UNDEFINED, &[]));
            deep.extend(tag_only(0xFFFE, 0xE000, UNDEFINED));
        }
        assert_eq!(
            check_file(&file(EXPLICIT_LE, &deep)),
            Err(ScanError::TooDeep)
        );
        assert_eq!(check_file(&[0u8; 200]), Err(ScanError::NotDicom));
        assert!(matches!(
            check_file(&file(EXPLICIT_BE, &[])),
            Err(ScanError::Unsupported(_))
        ));
    }

    #[test]
    fn an_undefined_length_un_sequence_holds_implicit_vr_items() {
        let mut ds = long(0x0008, 0x1115, b"UN", UNDEFINED, &[]);
        ds.extend(tag_only(0xFFFE, 0xE000, UNDEFINED));
        ds.extend(tag_only(0x0008, 0x1199, UNDEFINED));
        ds.extend(tag_only(0xFFFE, 0xE000, UNDEFINED));
        ds.extend(tag_only(0x0008, 0x1150, 8));
        ds.extend_from_slice(b"1.2.3.4\0");
        ds.extend(tag_only(0xFFFE, 0xE00D, 0));
        ds.extend(tag_only(0xFFFE, 0xE0DD, 0));
        ds.extend(tag_only(0xFFFE, 0xE00D, 0));
        ds.extend(tag_only(0xFFFE, 0xE0DD, 0));
        // Back in explicit VR after it.
        ds.extend(short(0x0008, 0x0060, b"CS", b"CR"));
        check_file(&file(EXPLICIT_LE, &ds)).unwrap();
    }

    #[test]
    fn implicit_vr_data_sets_are_walked_with_four_byte_lengths() {
        let mut ds = tag_only(0x0008, 0x0060, 2);
        ds.extend_from_slice(b"CR");
        ds.extend(tag_only(0x0008, 0x1140, UNDEFINED));
        ds.extend(tag_only(0xFFFE, 0xE000, UNDEFINED));
        ds.extend(tag_only(0x0008, 0x1155, 8));
        ds.extend_from_slice(b"1.2.3.4\0");
        ds.extend(tag_only(0xFFFE, 0xE00D, 0));
        ds.extend(tag_only(0xFFFE, 0xE0DD, 0));
        check_file(&file(IMPLICIT_LE, &ds)).unwrap();
        let mut over = tag_only(0x0010, 0x0010, 1000);
        over.extend_from_slice(b"short");
        assert!(matches!(
            check_file(&file(IMPLICIT_LE, &over)),
            Err(ScanError::Overrun { .. })
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let good = file(EXPLICIT_LE, &sample_data_set());
        for i in 132..good.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut bytes = good.clone();
                bytes[i] ^= flip;
                let _ = check_file(&bytes);
            }
        }
    }
}
