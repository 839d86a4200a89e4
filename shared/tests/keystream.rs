//! The quick bias check of the keystream that images are sealed with
//! (issue 16): per-bit, per-byte-position and per-32-bit-half means over
//! 64 MB, each within |z| < 4. The full check (a gigabyte, dieharder) is
//! `medgate-sim keystream`; see the README.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design.

use medgate_shared::henon::{HenonKey, Keystream, Variant};
use medgate_shared::quality::StreamBias;

#[test]
fn the_whitened_keystream_has_no_measurable_bias_over_64_mb() {
    let key = HenonKey::from_bytes(std::array::from_fn(|i| i as u8 ^ 0x5a));
    let mut stream = Keystream::new(&key, Variant::CURRENT);
    let mut bias = StreamBias::default();
    let mut buffer = vec![0u8; 1 << 20];
    for _ in 0..64 {
        stream.fill(&mut buffer);
        bias.update(&buffer);
    }
    let report = bias.report();
    assert_eq!(report.bytes, 64 << 20);
    assert!(report.max_abs_z < 4.0, "{report:?}");
}
