//! The receiver's RSA key pair: gateways wrap session keys with the public
//! half, and only this receiver (or its group) can open what they seal.

use std::path::{Path, PathBuf};

use medgate_shared::keys::{self, KeyError};

/// Writes `dir/receiver.pem` (mode 0600) and `dir/receiver.pub.pem`.
///
/// # Errors
/// [`KeyError`] if a file exists already or cannot be written.
pub fn generate(dir: &Path, bits: usize) -> Result<(PathBuf, PathBuf), KeyError> {
    keys::write_key_pair(dir, bits)
}
