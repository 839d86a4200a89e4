//! Image sources behind one trait. Each source runs as its own task: it
//! submits captures to intake (waiting for the verdict before it lets go of
//! an image) and receives the results for its device.
//!
//! - [`hot_folder`]: image files dropped into a folder.
//! - [`spi`]: an SPI image sensor through embedded-hal.
//! - [`dicom`]: modalities storing images over DICOM.

pub mod dicom;
pub mod hot_folder;
pub mod spi;

use std::future::Future;
use std::pin::Pin;

use medgate_shared::ids::Name;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::intake::Intake;
use crate::messages::Delivery;

/// A boxed source task.
pub type SourceTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Something that captures images for one device.
pub trait Source: Send {
    /// The device its images carry.
    fn device(&self) -> &Name;

    /// The source's task: capture until `stop`, submitting to `intake`;
    /// deliver each result from `results` to the device.
    fn run(
        self: Box<Self>,
        intake: Intake,
        results: mpsc::Receiver<Delivery>,
        stop: CancellationToken,
    ) -> SourceTask;
}
