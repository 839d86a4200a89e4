//! DICOM objects as gateway input (issue 14, in progress).
//!
//! - [`scan`]: the structural check every DICOM file passes before a DICOM
//!   library parses it, so that no length read from the file can make the
//!   gateway allocate more than the file holds.
//! - [`read`]: a DICOM file's first frame to the grayscale pixels the
//!   gateway seals (hot-folder `.dcm` files go through it).
pub mod read;
pub mod scan;
