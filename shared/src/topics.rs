//! The MQTT topic tree (all names are [`Name`]s, so no level can hold `/`,
//! `+` or `#`).
//!
//! ```text
//! medgate/v1/{site}/{gateway}/images/{device}     sealed images (gateway → receivers)
//! medgate/v1/{site}/{gateway}/results/{device}    results (receiver → gateway)
//! medgate/v1/{site}/{gateway}/status              retained gateway status, last will
//! medgate/v1/{site}/notify/{ward}                 clinician notifications
//! medgate/v1/{site}/audit/{receiver}              receiver audit (rejections)
//! ```

use crate::ids::Name;

/// The root of every medgate topic.
pub const ROOT: &str = "medgate/v1";

/// Where a gateway publishes images from `device`.
pub fn images(site: &Name, gateway: &Name, device: &Name) -> String {
    format!("{ROOT}/{site}/{gateway}/images/{device}")
}

/// Where results for `device` go.
pub fn results(site: &Name, gateway: &Name, device: &Name) -> String {
    format!("{ROOT}/{site}/{gateway}/results/{device}")
}

/// The filter a gateway subscribes to for all of its results.
pub fn results_filter(site: &Name, gateway: &Name) -> String {
    format!("{ROOT}/{site}/{gateway}/results/+")
}

/// A gateway's retained status topic (also its last will).
pub fn status(site: &Name, gateway: &Name) -> String {
    format!("{ROOT}/{site}/{gateway}/status")
}

/// Clinician notifications for `ward`.
pub fn notify(site: &Name, ward: &Name) -> String {
    format!("{ROOT}/{site}/notify/{ward}")
}

/// A receiver's audit topic.
pub fn audit(site: &Name, receiver: &Name) -> String {
    format!("{ROOT}/{site}/audit/{receiver}")
}

/// The MQTT v5 shared subscription receivers of `group` use for images of
/// every site and gateway.
pub fn images_shared_subscription(group: &Name) -> String {
    format!("$share/{group}/{ROOT}/+/+/images/+")
}

/// The site, gateway and device of an images topic, or `None` for any other
/// topic (including one whose levels are not valid names).
pub fn parse_images(topic: &str) -> Option<(Name, Name, Name)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let mut levels = rest.split('/');
    let (site, gateway, kind, device) = (
        levels.next()?,
        levels.next()?,
        levels.next()?,
        levels.next()?,
    );
    if kind != "images" || levels.next().is_some() {
        return None;
    }
    Some((
        site.parse().ok()?,
        gateway.parse().ok()?,
        device.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        s.parse().unwrap()
    }

    #[test]
    fn topics_follow_the_design() {
        let (s, g, d) = (n("st-mary"), n("gw1"), n("xr-2"));
        assert_eq!(images(&s, &g, &d), "medgate/v1/st-mary/gw1/images/xr-2");
        assert_eq!(results(&s, &g, &d), "medgate/v1/st-mary/gw1/results/xr-2");
        assert_eq!(status(&s, &g), "medgate/v1/st-mary/gw1/status");
        assert_eq!(notify(&s, &n("icu")), "medgate/v1/st-mary/notify/icu");
        assert_eq!(audit(&s, &n("rx1")), "medgate/v1/st-mary/audit/rx1");
        assert_eq!(
            images_shared_subscription(&n("cls")),
            "$share/cls/medgate/v1/+/+/images/+"
        );
        assert_eq!(parse_images(&images(&s, &g, &d)), Some((s, g, d)));
    }

    #[test]
    fn other_topics_do_not_parse_as_images() {
        for t in [
            "medgate/v1/s/g/results/d",
            "medgate/v1/s/g/images",
            "medgate/v1/s/g/images/d/extra",
            "medgate/v2/s/g/images/d",
            "medgate/v1/s/g/images/bad$name",
        ] {
            assert_eq!(parse_images(t), None, "{t}");
        }
    }
}
