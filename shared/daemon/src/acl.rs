//! The broker's access rules, written from the trust list and the site's
//! other roles, so that nobody edits them by hand: `medgate-receiver
//! broker-acl` prints them for mosquitto (`acl_file`), EMQX (file
//! authorization source) or rmqtt (the `rmqtt-acl` plugin's rules).
//!
//! Every client's user name is the common name of its certificate (and, with
//! mosquitto's `use_username_as_clientid`, its client id too; rmqtt cannot
//! set the client id, so its rules let a certificate connect only under its
//! own name as client id):
//! - a gateway's is its gateway name; it may publish only its own images and
//!   status, under its own site, and read only its own results;
//! - a receiver's is its receiver name; it reads images and writes results,
//!   notifications and audit records, and nothing else;
//! - a clinician app's is `clinician-{ward}`; it reads that ward's
//!   notifications only;
//! - security staff read audit records and gateway status only;
//! - a site broker bridged to this one (certificate `bridge-{site}`) carries
//!   its site's images and status up and its site's results and
//!   notifications down, and nothing of another site. Within its site the
//!   site broker's own rules keep gateways apart, and receivers verify each
//!   image's origin signature against the gateway it names.
//!
//! There are no patterns that apply to every user: a certificate not named
//! here can do nothing. Gateway names must therefore be unique on a broker
//! (two sites with a `gw-1` need distinct certificate names).

use std::collections::{BTreeMap, BTreeSet};

use medgate_shared::ids::Name;

use crate::trust::TrustList;

/// The site's clients other than gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles {
    /// Receiver certificate names.
    pub receivers: Vec<Name>,
    /// Wards whose clinician apps (`clinician-{ward}`) read notifications.
    pub clinician_wards: Vec<Name>,
    /// Security staff certificate names.
    pub security: Vec<Name>,
    /// Sites whose brokers bridge to this one (certificates `bridge-{site}`).
    pub bridged_sites: Vec<Name>,
}

/// Which broker the rules are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// mosquitto's `acl_file` syntax.
    Mosquitto,
    /// EMQX 5's file authorization source (`acl.conf`, Erlang terms).
    Emqx,
    /// rmqtt's `plugins/rmqtt-acl.toml` (the `rmqtt-acl` plugin, TOML).
    Rmqtt,
}

/// Why no rules were written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// One certificate name would have two roles or two sites.
    #[error(
        "certificate name {name} is used twice ({first} and {second}); every client needs its own"
    )]
    Duplicate {
        /// The name.
        name: String,
        /// Its first use.
        first: String,
        /// Its second use.
        second: String,
    },
}

/// One client and what it may do.
struct Grant {
    user: String,
    role: String,
    publish: Vec<String>,
    subscribe: Vec<String>,
}

fn grants(trust: &TrustList, roles: &Roles) -> Result<Vec<Grant>, AclError> {
    // Gateways by name, each with its one site (several keys of one gateway
    // are one client).
    let mut gateways: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in trust.entries() {
        gateways
            .entry(entry.name.to_string())
            .or_default()
            .insert(entry.site.to_string());
    }
    let mut out = Vec::new();
    for (name, sites) in gateways {
        let mut sites = sites.into_iter();
        let Some(site) = sites.next() else { continue };
        if let Some(other) = sites.next() {
            return Err(AclError::Duplicate {
                name,
                first: format!("gateway of site {site}"),
                second: format!("gateway of site {other}"),
            });
        }
        out.push(Grant {
            role: format!("gateway of site {site}"),
            publish: vec![
                format!("medgate/v1/{site}/{name}/images/+"),
                format!("medgate/v1/{site}/{name}/status"),
            ],
            subscribe: vec![format!("medgate/v1/{site}/{name}/results/+")],
            user: name,
        });
    }
    for receiver in &roles.receivers {
        out.push(Grant {
            user: receiver.to_string(),
            role: "receiver".into(),
            publish: vec![
                "medgate/v1/+/+/results/+".into(),
                "medgate/v1/+/notify/+".into(),
                "medgate/v1/+/audit/+".into(),
            ],
            subscribe: vec!["medgate/v1/+/+/images/+".into()],
        });
    }
    for ward in &roles.clinician_wards {
        out.push(Grant {
            user: format!("clinician-{ward}"),
            role: format!("clinician app of ward {ward}"),
            publish: Vec::new(),
            subscribe: vec![format!("medgate/v1/+/notify/{ward}")],
        });
    }
    for name in &roles.security {
        out.push(Grant {
            user: name.to_string(),
            role: "security staff".into(),
            publish: Vec::new(),
            subscribe: vec![
                "medgate/v1/+/audit/+".into(),
                "medgate/v1/+/+/status".into(),
            ],
        });
    }
    for site in &roles.bridged_sites {
        out.push(Grant {
            user: format!("bridge-{site}"),
            role: format!("broker of site {site}, bridged"),
            publish: vec![
                format!("medgate/v1/{site}/+/images/+"),
                format!("medgate/v1/{site}/+/status"),
            ],
            subscribe: vec![
                format!("medgate/v1/{site}/+/results/+"),
                format!("medgate/v1/{site}/notify/+"),
            ],
        });
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for grant in &out {
        if let Some(first) = seen.insert(&grant.user, &grant.role) {
            return Err(AclError::Duplicate {
                name: grant.user.clone(),
                first: first.to_owned(),
                second: grant.role.clone(),
            });
        }
    }
    Ok(out)
}

/// The access rules for `broker`.
///
/// # Errors
/// [`AclError::Duplicate`] when one certificate name would serve twice.
pub fn render(trust: &TrustList, roles: &Roles, broker: Broker) -> Result<String, AclError> {
    let grants = grants(trust, roles)?;
    let mut out = String::new();
    match broker {
        Broker::Mosquitto => {
            out.push_str(
                "# medgate access rules for mosquitto (acl_file), written by\n\
                 # `medgate-receiver broker-acl` from the trust list: do not edit, run it again.\n\
                 # User names are client-certificate common names (use_identity_as_username).\n\
                 # No pattern applies to every user: a name not listed here may do nothing.\n\
                 # Install (and reload mosquitto) BEFORE a new receiver starts: mosquitto\n\
                 # grants the shared subscription of a receiver without a read rule and\n\
                 # drops its turn of the images (they come back only at the gateway's\n\
                 # result timeout).\n",
            );
            for grant in &grants {
                out.push_str(&format!("\n# {}\nuser {}\n", grant.role, grant.user));
                for topic in &grant.publish {
                    out.push_str(&format!("topic write {topic}\n"));
                }
                for topic in &grant.subscribe {
                    out.push_str(&format!("topic read {topic}\n"));
                }
            }
        }
        Broker::Emqx => {
            out.push_str(
                "%% medgate access rules for EMQX 5.x (file authorization source), written by\n\
                 %% `medgate-receiver broker-acl --broker emqx` from the trust list: do not edit.\n\
                 %% User names are client-certificate common names (peer_cert_as_username = cn).\n",
            );
            for grant in &grants {
                let user = &grant.user;
                out.push_str(&format!("\n%% {}\n", grant.role));
                if !grant.publish.is_empty() {
                    out.push_str(&format!(
                        "{{allow, {{username, \"{user}\"}}, publish, [{}]}}.\n",
                        quoted(&grant.publish)
                    ));
                }
                // Receivers read through the shared subscription.
                let subscribe: Vec<String> = if grant.role == "receiver" {
                    grant
                        .subscribe
                        .iter()
                        .map(|t| format!("$share/receivers/{t}"))
                        .collect()
                } else {
                    grant.subscribe.clone()
                };
                out.push_str(&format!(
                    "{{allow, {{username, \"{user}\"}}, subscribe, [{}]}}.\n",
                    quoted(&subscribe)
                ));
            }
            out.push_str("\n{deny, all}.\n");
        }
        Broker::Rmqtt => {
            out.push_str(
                "# medgate access rules for rmqtt (plugins/rmqtt-acl.toml), written by\n\
                 # `medgate-receiver broker-acl --broker rmqtt` from the trust list: do not\n\
                 # edit, run it again. User names are client-certificate common names\n\
                 # (cert_cn_as_username on the TLS listener). rmqtt cannot make the client\n\
                 # id the user name, so a certificate may connect only with its own name as\n\
                 # client id: no certificate can take over another client's session.\n\
                 # Rules are read top to bottom; the first that matches decides, and the\n\
                 # last refuses everything else. A publish outside a client's rules closes\n\
                 # its connection (disconnect_if_pub_rejected).\n\
                 \n\
                 disconnect_if_pub_rejected = true\n\
                 rules = [\n",
            );
            for grant in &grants {
                let user = &grant.user;
                out.push_str(&format!("    # {}\n", grant.role));
                out.push_str(&format!(
                    "    [\"allow\", {{ user = \"{user}\", clientid = \"{user}\" }}, \"connect\"],\n"
                ));
                if !grant.publish.is_empty() {
                    out.push_str(&format!(
                        "    [\"allow\", {{ user = \"{user}\" }}, \"publish\", [{}]],\n",
                        quoted(&grant.publish)
                    ));
                }
                out.push_str(&format!(
                    "    [\"allow\", {{ user = \"{user}\" }}, \"subscribe\", [{}]],\n",
                    quoted(&grant.subscribe)
                ));
            }
            out.push_str("    [\"deny\", \"all\"],\n]\n");
        }
    }
    Ok(out)
}

fn quoted(topics: &[String]) -> String {
    topics
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use medgate_shared::identity::GatewayIdentity;

    use super::*;
    use crate::trust::Enrolled;

    fn enrolled(site: &str, name: &str) -> Enrolled {
        Enrolled {
            site: site.parse().unwrap(),
            name: name.parse().unwrap(),
            public_key: GatewayIdentity::generate().public(),
        }
    }

    fn roles() -> Roles {
        Roles {
            receivers: vec!["receiver-1".parse().unwrap()],
            clinician_wards: vec!["radiology".parse().unwrap()],
            security: vec!["security".parse().unwrap()],
            bridged_sites: Vec::new(),
        }
    }

    #[test]
    fn each_gateway_gets_its_own_site_and_nobody_gets_a_pattern() {
        let trust = TrustList::new([
            enrolled("st-mary", "gw-1"),
            enrolled("st-mary", "gw-1"),
            enrolled("st-mary", "gw-2"),
        ]);
        let acl = render(&trust, &roles(), Broker::Mosquitto).unwrap();
        assert!(!acl.lines().any(|l| l.starts_with("pattern")), "{acl}");
        assert!(acl.contains(
            "user gw-1\ntopic write medgate/v1/st-mary/gw-1/images/+\ntopic write medgate/v1/st-mary/gw-1/status\ntopic read medgate/v1/st-mary/gw-1/results/+\n"
        ));
        assert_eq!(
            acl.matches("user gw-1\n").count(),
            1,
            "one block per gateway"
        );
        assert!(
            acl.contains("user clinician-radiology\ntopic read medgate/v1/+/notify/radiology\n")
        );
        // Only gateways write images.
        let writers: Vec<&str> = acl
            .lines()
            .filter(|l| l.starts_with("topic write") && l.contains("/images/"))
            .collect();
        assert_eq!(writers.len(), 2, "{writers:?}");
        let emqx = render(&trust, &roles(), Broker::Emqx).unwrap();
        assert!(emqx.contains(
            "{allow, {username, \"receiver-1\"}, subscribe, [\"$share/receivers/medgate/v1/+/+/images/+\"]}."
        ));
        assert!(emqx.trim_end().ends_with("{deny, all}."));
        let rmqtt = render(&trust, &roles(), Broker::Rmqtt).unwrap();
        assert!(rmqtt.contains(
            "    [\"allow\", { user = \"gw-2\", clientid = \"gw-2\" }, \"connect\"],\n    [\"allow\", { user = \"gw-2\" }, \"publish\", [\"medgate/v1/st-mary/gw-2/images/+\", \"medgate/v1/st-mary/gw-2/status\"]],\n"
        ), "{rmqtt}");
        assert!(
            rmqtt.trim_end().ends_with("    [\"deny\", \"all\"],\n]"),
            "{rmqtt}"
        );
        let parsed: toml::Table = rmqtt.parse().expect("rmqtt rules are TOML");
        let rules = parsed["rules"].as_array().unwrap();
        // Per client: connect, then publish (not for readers), then subscribe.
        assert_eq!(rules.len(), 3 * 2 + 3 + 2 + 2 + 1, "{rmqtt}");
    }

    #[test]
    fn a_bridged_site_broker_carries_its_own_site_only() {
        let trust = TrustList::new([enrolled("st-mary", "gw-1")]);
        let roles = Roles {
            bridged_sites: vec!["st-mary".parse().unwrap()],
            ..roles()
        };
        let acl = render(&trust, &roles, Broker::Mosquitto).unwrap();
        assert!(
            acl.contains(
                "user bridge-st-mary\n\
             topic write medgate/v1/st-mary/+/images/+\n\
             topic write medgate/v1/st-mary/+/status\n\
             topic read medgate/v1/st-mary/+/results/+\n\
             topic read medgate/v1/st-mary/notify/+\n"
            ),
            "{acl}"
        );
        let rmqtt = render(&trust, &roles, Broker::Rmqtt).unwrap();
        assert!(rmqtt.contains(
            "[\"allow\", { user = \"bridge-st-mary\", clientid = \"bridge-st-mary\" }, \"connect\"]"
        ), "{rmqtt}");
    }

    #[test]
    fn a_name_serving_twice_is_refused() {
        let trust = TrustList::new([enrolled("a", "gw-1"), enrolled("b", "gw-1")]);
        let e = render(&trust, &Roles::default(), Broker::Mosquitto).unwrap_err();
        assert!(e.to_string().contains("gw-1"), "{e}");
        let trust = TrustList::new([enrolled("a", "receiver-1")]);
        assert!(render(&trust, &roles(), Broker::Mosquitto).is_err());
    }
}
