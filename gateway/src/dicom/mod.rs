//! DICOM objects as gateway input (issue 14, in progress).
//!
//! - [`scan`]: the structural check every DICOM file passes before a DICOM
//!   library parses it, so that no length read from the file can make the
//!   gateway allocate more than the file holds.
pub mod scan;
