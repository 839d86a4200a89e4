//! Untrusted `.npy` bytes (dataset files a user downloads): never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_medmnist::parse_npy;

fuzz_target!(|data: &[u8]| {
    let _ = parse_npy(data);
});
