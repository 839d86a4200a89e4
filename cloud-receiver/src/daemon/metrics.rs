//! The receiver's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of one metric: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric the receiver exports; clones share the same values.
#[derive(Clone)]
pub struct Metrics {
    /// Sealed images received.
    pub received: Counter,
    /// Refused messages, by `reason`.
    pub rejected: Family<Labels, Counter>,
    /// Repeated message ids answered from memory.
    pub duplicates: Counter,
    /// Results published, by `label`.
    pub results: Family<Labels, Counter>,
    /// Verified images answered "not classified", by `reason`.
    pub not_classified: Family<Labels, Counter>,
    /// Notifications published, by `priority`.
    pub notifications: Family<Labels, Counter>,
    /// Images per inference call.
    pub batch_size: Histogram,
    /// Seconds per inference call.
    pub inference_seconds: Histogram,
    /// Seconds from receipt to published result.
    pub processing_seconds: Histogram,
    /// Images being worked on.
    pub in_flight: Gauge,
    /// Messages left unacknowledged because intake was full.
    pub overloaded: Counter,
    /// Refusals answered to gateways (authenticated).
    pub refusals_answered: Counter,
    /// Refusals counted but not each audited (over the audit allowance).
    pub audits_suppressed: Counter,
    /// Broker connection errors.
    pub connection_errors: Counter,
    /// Completed broker connections.
    pub connections: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            received: Counter::default(),
            rejected: Family::default(),
            duplicates: Counter::default(),
            results: Family::default(),
            not_classified: Family::default(),
            notifications: Family::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            inference_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            processing_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            in_flight: Gauge::default(),
            overloaded: Counter::default(),
            refusals_answered: Counter::default(),
            audits_suppressed: Counter::default(),
            connection_errors: Counter::default(),
            connections: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("medgate_receiver");
        r.register(
            "received",
            "Sealed images received",
            metrics.received.clone(),
        );
        r.register(
            "rejected",
            "Refused messages by reason",
            metrics.rejected.clone(),
        );
        r.register(
            "duplicates",
            "Repeated message ids answered with the earlier result",
            metrics.duplicates.clone(),
        );
        r.register(
            "results",
            "Results published by label",
            metrics.results.clone(),
        );
        r.register(
            "not_classified",
            "Verified images answered not classified (no model, out of distribution), by reason",
            metrics.not_classified.clone(),
        );
        r.register(
            "notifications",
            "Clinician notifications published by priority",
            metrics.notifications.clone(),
        );
        r.register(
            "batch_size",
            "Images per inference call",
            metrics.batch_size.clone(),
        );
        r.register(
            "inference_seconds",
            "Duration of one inference call",
            metrics.inference_seconds.clone(),
        );
        r.register(
            "processing_seconds",
            "Receipt to published result",
            metrics.processing_seconds.clone(),
        );
        r.register(
            "in_flight",
            "Images being worked on",
            metrics.in_flight.clone(),
        );
        r.register(
            "overloaded",
            "Messages left unacknowledged because intake was full",
            metrics.overloaded.clone(),
        );
        r.register(
            "audits_suppressed",
            "Refusals counted in rejected_total but not each published as an audit record",
            metrics.audits_suppressed.clone(),
        );
        r.register(
            "refusals_answered",
            "Refusals answered to the gateway, authenticated",
            metrics.refusals_answered.clone(),
        );
        r.register(
            "connection_errors",
            "Broker connection errors",
            metrics.connection_errors.clone(),
        );
        r.register(
            "connections",
            "Completed broker connections",
            metrics.connections.clone(),
        );
        metrics
    }

    /// Counts a refusal.
    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }
}
