//! A real mosquitto broker for tests (`medgate_shared::mosquitto`), and the
//! access rules shipped for production.

pub use medgate_shared::mosquitto::*;

/// The access rules shipped for production, `configs/mosquitto/medgate.acl`.
///
/// # Errors
/// If the file cannot be read.
pub fn shipped_acl() -> Result<String, BrokerError> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/mosquitto/medgate.acl");
    std::fs::read_to_string(&path).map_err(|source| BrokerError::Io {
        what: format!("reading {}", path.display()),
        source,
    })
}
