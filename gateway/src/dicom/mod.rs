//! The gateway as a DICOM node (see `gateway/DICOM.md`).
//!
//! - [`scan`]: the structural check every DICOM object passes before a
//!   DICOM library parses it, so that no length read from it can make the
//!   gateway allocate more than the object holds.
//! - [`read`]: a DICOM object's first frame to the grayscale pixels the
//!   gateway seals, and its references apart (hot-folder `.dcm` files and
//!   C-STORE objects go through it).
//! - [`node`]: the checked `[dicom]` config.
//! - [`dimse`]: the C-ECHO and C-STORE messages.
//! - [`scp`]: the C-STORE SCP modalities send to.
//! - [`references`]: what each message's image is in the hospital, kept
//!   locally until its report is written.
//! - [`sr`]: a result as a DICOM Structured Report.
//! - [`outbox`]: reports waiting for the PACS, and their sender.
pub mod dimse;
pub mod node;
pub mod outbox;
pub mod read;
pub mod references;
pub mod scan;
pub mod scp;
pub mod sr;
