//! Gateway signing identities and the receivers' trust list, for tests, the
//! demo and the load generator: what `medgate-gateway keygen` and hospital
//! IT do at enrolment.

use std::path::{Path, PathBuf};

use medgate_daemon::trust::{Enrolled, TrustList};
use medgate_shared::identity::GatewayIdentity;
use medgate_shared::keys::KeyError;

/// Writes a new identity for a gateway to `dir/{site}.{name}.identity.pem`.
///
/// # Errors
/// If the file exists or cannot be written.
pub fn gateway_identity(
    dir: &Path,
    site: &str,
    name: &str,
) -> Result<(PathBuf, Enrolled), KeyError> {
    let path = dir.join(format!("{site}.{name}.identity.pem"));
    let identity = GatewayIdentity::write_new(&path)?;
    Ok((path, enrolled(site, name, &identity)))
}

/// The trust-list entry of `identity` for `site`/`name`.
///
/// # Panics
/// When a name is not a valid medgate name (a test's own mistake).
pub fn enrolled(site: &str, name: &str, identity: &GatewayIdentity) -> Enrolled {
    #[allow(clippy::expect_used)] // names come from the test itself
    Enrolled {
        site: site.parse().expect("a valid site name"),
        name: name.parse().expect("a valid gateway name"),
        public_key: identity.public(),
    }
}

/// Writes a trust list of `entries` to `path` (replacing it).
///
/// # Errors
/// If the file cannot be written.
pub fn write_trust_list(
    path: &Path,
    entries: impl IntoIterator<Item = Enrolled>,
) -> std::io::Result<()> {
    let text = TrustList::new(entries).to_toml();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
