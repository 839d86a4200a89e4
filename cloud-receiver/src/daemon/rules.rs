//! Clinician notifications: which results notify which ward, by rules from
//! the config. A notification carries the finding, never pixels and never
//! patient identity.

use medgate_shared::ids::Name;
pub use medgate_shared::messages::Priority;
use serde::{Deserialize, Serialize};

/// One rule: results with `label` at or above `min_probability` notify `ward`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The class name the rule matches (e.g. `pneumonia`).
    pub label: String,
    /// The smallest probability of that class that matches (0–1).
    pub min_probability: f32,
    /// The ward to notify.
    pub ward: Name,
    /// The notification's priority.
    pub priority: Priority,
    /// Only results from these sites (all sites when empty).
    #[serde(default)]
    pub sites: Vec<Name>,
}

impl Rule {
    /// A rule for results from every site.
    pub fn new(label: &str, min_probability: f32, ward: Name, priority: Priority) -> Self {
        Self {
            label: label.to_owned(),
            min_probability,
            ward,
            priority,
            sites: Vec::new(),
        }
    }
}

/// Why a set of rules is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// A probability outside 0–1.
    #[error("notify rule {index}: min_probability {value} is outside 0..=1")]
    Probability {
        /// 0-based rule index.
        index: usize,
        /// The value given.
        value: f32,
    },
    /// A label the model does not produce.
    #[error("notify rule {index}: label {label:?} is not one of the model's classes ({known})")]
    UnknownLabel {
        /// 0-based rule index.
        index: usize,
        /// The label given.
        label: String,
        /// The model's classes.
        known: String,
    },
}

/// Checks rules against the model's class names.
///
/// # Errors
/// The first [`RuleError`].
pub fn validate(rules: &[Rule], classes: &[String]) -> Result<(), RuleError> {
    for (index, rule) in rules.iter().enumerate() {
        if !(0.0..=1.0).contains(&rule.min_probability) {
            return Err(RuleError::Probability {
                index,
                value: rule.min_probability,
            });
        }
        if !classes.contains(&rule.label) {
            return Err(RuleError::UnknownLabel {
                index,
                label: rule.label.clone(),
                known: classes.join(", "),
            });
        }
    }
    Ok(())
}

/// The wards to notify for a result, each once, at the highest priority any
/// matching rule gives it.
pub fn matches<'a>(
    rules: &'a [Rule],
    site: &Name,
    probability_of: impl Fn(&str) -> Option<f32>,
) -> Vec<(&'a Name, Priority)> {
    let mut out: Vec<(&Name, Priority)> = Vec::new();
    for rule in rules {
        let site_ok = rule.sites.is_empty() || rule.sites.contains(site);
        let hit = probability_of(&rule.label).is_some_and(|p| p >= rule.min_probability);
        if !(site_ok && hit) {
            continue;
        }
        match out.iter_mut().find(|(ward, _)| *ward == &rule.ward) {
            Some(existing) => existing.1 = existing.1.max(rule.priority),
            None => out.push((&rule.ward, rule.priority)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(label: &str, p: f32, ward: &str, priority: Priority) -> Rule {
        Rule {
            label: label.into(),
            min_probability: p,
            ward: ward.parse().unwrap(),
            priority,
            sites: Vec::new(),
        }
    }

    #[test]
    fn rules_match_by_label_threshold_and_site() {
        let mut rules = vec![
            rule("pneumonia", 0.5, "radiology", Priority::Routine),
            rule("pneumonia", 0.9, "radiology", Priority::Urgent),
            rule("pneumonia", 0.9, "icu", Priority::Critical),
        ];
        rules[2].sites = vec!["north".parse().unwrap()];
        let site: Name = "south".parse().unwrap();
        let probs = |p: f32| move |label: &str| (label == "pneumonia").then_some(p);
        assert!(matches(&rules, &site, probs(0.4)).is_empty());
        let hits = matches(&rules, &site, probs(0.95));
        assert_eq!(hits.len(), 1);
        assert_eq!(
            (hits[0].0.as_str(), hits[0].1),
            ("radiology", Priority::Urgent)
        );
        let north: Name = "north".parse().unwrap();
        assert_eq!(matches(&rules, &north, probs(0.95)).len(), 2);
    }

    #[test]
    fn rules_are_validated_against_the_model() {
        let classes = vec!["normal".to_string(), "pneumonia".to_string()];
        assert!(validate(&[rule("pneumonia", 0.5, "w", Priority::Routine)], &classes).is_ok());
        assert!(matches!(
            validate(&[rule("covid", 0.5, "w", Priority::Routine)], &classes),
            Err(RuleError::UnknownLabel { .. })
        ));
        assert!(matches!(
            validate(&[rule("pneumonia", 1.5, "w", Priority::Routine)], &classes),
            Err(RuleError::Probability { .. })
        ));
    }
}
