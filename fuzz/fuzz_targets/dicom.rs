//! The gateway's DICOM ingest path, as a hot-folder file or a C-STORE
//! object takes it: bytes → the structural scan → (bounded inflate) →
//! dicom-rs → the pixels and the attributes it would seal. Any input must
//! end in an image or a typed refusal, within the memory limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_gateway::capture::{Oversize, Preparation};
use medgate_gateway::dicom::read;
use medgate_shared::pixels::PixelFormat;

fuzz_target!(|data: &[u8]| {
    let preparation = Preparation {
        format: PixelFormat::Gray8,
        resize: None,
        // Small, so that the fuzzer's memory limit holds what is accepted.
        max_decoded_bytes: 4 << 20,
        oversize: Oversize::Downscale,
    };
    let limits = preparation.limits(4 << 20);
    if let Ok(image) = read::read(data.to_vec(), preparation, &limits) {
        assert!(image.pixels.data().len() as u64 <= limits.pixel_budget);
    }
});
