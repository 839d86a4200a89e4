//! Untrusted sealed-image bytes: parsing must never panic, and opening a
//! parsed envelope with some session key must fail cleanly (or, for inputs
//! sealed under that key, succeed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_shared::envelope;
use medgate_shared::kdf::SessionKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = envelope::parse(data) {
        let _ = envelope::open_with(&parsed, &SessionKey::from_bytes([0; 32]));
    }
});
