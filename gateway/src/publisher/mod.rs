//! The publisher: everything between the spool and the broker.
//!
//! Two tasks. The *link* ([`link`]) owns the rumqttc event loop and only
//! polls it, forwarding what matters to the *core* ([`core`]). The core owns
//! the publication state: it publishes each spooled image (QoS 1), marks it
//! acknowledged on PUBACK, publishes it again with the same message id when
//! no result came within the timeout or the connection was re-established,
//! and deletes it from the spool only when the source that captured the
//! image confirms its device has the result.
//!
//! The core never waits on the client's request queue (it uses
//! `try_publish`; what does not fit is published on a later tick), so the
//! link can always hand it events: no cycle can block both.

pub mod core;
pub mod link;

use std::collections::BTreeMap;

use medgate_shared::ids::Name;
use serde::Serialize;

use crate::capture::now_ms;
use crate::spool::QuarantineNote;

/// Quarantined images the retained status names, newest first.
pub const STATUS_RECENT_QUARANTINED: usize = 20;

/// The gateway's retained status message.
#[derive(Debug, Serialize)]
struct Status<'a> {
    state: &'a str,
    gateway: &'a str,
    version: &'a str,
    at_ms: u64,
    /// Images in the spool's quarantine (refused or never answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    quarantined: Option<usize>,
    /// The latest of them, newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    recently_quarantined: Option<&'a [QuarantineNote]>,
    /// What is wrong with a source now, by device.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    problems: BTreeMap<String, String>,
}

/// The retained status payload for `state` ("online" / "offline"), with
/// the quarantine's count and latest notes when known, and the sources'
/// problems.
pub fn status_payload(
    gateway: &Name,
    state: &str,
    quarantine: Option<&(usize, Vec<QuarantineNote>)>,
    problems: BTreeMap<String, String>,
) -> Vec<u8> {
    serde_json::to_vec(&Status {
        state,
        gateway: gateway.as_str(),
        version: crate::VERSION,
        at_ms: now_ms(),
        quarantined: quarantine.map(|(count, _)| *count),
        recently_quarantined: quarantine.map(|(_, notes)| notes.as_slice()),
        problems,
    })
    .unwrap_or_default()
}
