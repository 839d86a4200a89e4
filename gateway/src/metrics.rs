//! The gateway's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric the gateway exports; clones share values.
#[derive(Clone)]
pub struct Metrics {
    /// Images taken from a source.
    pub captured: Counter,
    /// Images sealed and durably spooled.
    pub sealed: Counter,
    /// Captures refused because the spool was full.
    pub refused_full: Counter,
    /// Captures refused because the disk was full (ENOSPC).
    pub refused_disk_full: Counter,
    /// Files refused (moved to `rejected/`), by reason: unreadable,
    /// file_too_large, decoded_too_large, too_large_for_link.
    pub rejected_files: Family<Labels, Counter>,
    /// Sensor frames refused (released with a REJECTED result), by reason.
    pub rejected_frames: Family<Labels, Counter>,
    /// Bytes in the spool.
    pub spool_bytes: Gauge,
    /// Entries in the spool.
    pub spool_entries: Gauge,
    /// Publications of images (first and repeated).
    pub published: Counter,
    /// Publications repeated after a result timeout or reconnect.
    pub republished: Counter,
    /// PUBACKs received for images.
    pub acknowledged: Counter,
    /// Results received for spooled images.
    pub results: Counter,
    /// Verified images a receiver deliberately gave no class, by reason
    /// (`no_model`, `out_of_distribution`).
    pub not_classified: Family<Labels, Counter>,
    /// Capture to result, seconds.
    pub result_latency_seconds: Histogram,
    /// Answers refused as unauthenticated or not matching the spooled
    /// image, by reason.
    pub answers_refused: Family<Labels, Counter>,
    /// Images moved to the spool's quarantine, by cause.
    pub quarantined: Family<Labels, Counter>,
    /// Errors by kind.
    pub errors: Family<Labels, Counter>,
    /// Whether the broker connection is up (1) or not (0).
    pub connected: Gauge,
    /// Captured hot-folder files that could not be moved to `done/`, by
    /// device (non-zero: the folder is broken).
    pub hot_folder_stuck: Family<Labels, Gauge>,
    /// DICOM associations, by outcome: accepted, rejected (a calling AE
    /// title not allowed, or a request the node does not serve), busy
    /// (over `dicom.max_associations`), aborted.
    pub dicom_associations: Family<Labels, Counter>,
    /// C-STORE requests answered, by status: stored, out_of_resources,
    /// or the refusal's reason.
    pub dicom_stores: Family<Labels, Counter>,
    /// Structured Reports stored in the PACS.
    pub dicom_reports_stored: Counter,
    /// Failed attempts to store a report (each is retried).
    pub dicom_report_attempts_failed: Counter,
    /// Reports the PACS refused for good (kept in `outbox/refused/`).
    pub dicom_reports_refused: Counter,
    /// Reports waiting in the outbox.
    pub dicom_outbox: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            captured: Counter::default(),
            sealed: Counter::default(),
            refused_full: Counter::default(),
            refused_disk_full: Counter::default(),
            rejected_files: Family::default(),
            rejected_frames: Family::default(),
            spool_bytes: Gauge::default(),
            spool_entries: Gauge::default(),
            published: Counter::default(),
            republished: Counter::default(),
            acknowledged: Counter::default(),
            results: Counter::default(),
            not_classified: Family::default(),
            result_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            answers_refused: Family::default(),
            quarantined: Family::default(),
            errors: Family::default(),
            connected: Gauge::default(),
            hot_folder_stuck: Family::default(),
            dicom_associations: Family::default(),
            dicom_stores: Family::default(),
            dicom_reports_stored: Counter::default(),
            dicom_report_attempts_failed: Counter::default(),
            dicom_reports_refused: Counter::default(),
            dicom_outbox: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("medgate_gateway");
        r.register("captured", "Images taken from a source", m.captured.clone());
        r.register(
            "sealed",
            "Images sealed and durably spooled",
            m.sealed.clone(),
        );
        r.register(
            "refused_full",
            "Captures refused because the spool was full",
            m.refused_full.clone(),
        );
        r.register(
            "refused_disk_full",
            "Captures refused because the disk was full (the source keeps them)",
            m.refused_disk_full.clone(),
        );
        r.register(
            "rejected_files",
            "Files refused and moved to rejected/, by reason",
            m.rejected_files.clone(),
        );
        r.register(
            "rejected_frames",
            "Sensor frames refused and released with a REJECTED result, by reason",
            m.rejected_frames.clone(),
        );
        r.register("spool_bytes", "Bytes in the spool", m.spool_bytes.clone());
        r.register(
            "spool_entries",
            "Images in the spool",
            m.spool_entries.clone(),
        );
        r.register("published", "Image publications", m.published.clone());
        r.register(
            "republished",
            "Image publications repeated after a timeout or reconnect",
            m.republished.clone(),
        );
        r.register(
            "acknowledged",
            "Broker acknowledgements of images",
            m.acknowledged.clone(),
        );
        r.register(
            "results",
            "Results received for spooled images",
            m.results.clone(),
        );
        r.register(
            "not_classified",
            "Verified images a receiver gave no class (no model accepts them, or out of distribution)",
            m.not_classified.clone(),
        );
        r.register(
            "result_latency_seconds",
            "Capture to result",
            m.result_latency_seconds.clone(),
        );
        r.register(
            "answers_refused",
            "Results and refusals not authenticated or not matching their image",
            m.answers_refused.clone(),
        );
        r.register(
            "quarantined",
            "Images moved to the spool's quarantine",
            m.quarantined.clone(),
        );
        r.register("errors", "Errors by kind", m.errors.clone());
        r.register("connected", "Broker connection up", m.connected.clone());
        r.register(
            "hot_folder_stuck_files",
            "Captured hot-folder files that cannot be moved to done/ (the folder is broken)",
            m.hot_folder_stuck.clone(),
        );
        r.register(
            "dicom_associations",
            "DICOM associations, by outcome (accepted, rejected, busy, aborted)",
            m.dicom_associations.clone(),
        );
        r.register(
            "dicom_stores",
            "C-STORE requests answered, by status (stored, out_of_resources, or the refusal's reason)",
            m.dicom_stores.clone(),
        );
        r.register(
            "dicom_reports_stored",
            "Structured Reports stored in the PACS",
            m.dicom_reports_stored.clone(),
        );
        r.register(
            "dicom_report_attempts_failed",
            "Failed attempts to store a Structured Report in the PACS (retried)",
            m.dicom_report_attempts_failed.clone(),
        );
        r.register(
            "dicom_reports_refused",
            "Structured Reports the PACS refused for good (kept in the outbox's refused/ folder)",
            m.dicom_reports_refused.clone(),
        );
        r.register(
            "dicom_outbox_reports",
            "Structured Reports waiting in the outbox for the PACS",
            m.dicom_outbox.clone(),
        );
        m
    }

    /// Counts a DICOM association by outcome.
    pub fn dicom_association(&self, outcome: &str) {
        self.dicom_associations
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    /// Counts a C-STORE answer by status.
    pub fn dicom_store(&self, status: &str) {
        self.dicom_stores
            .get_or_create(&vec![("status", status.to_owned())])
            .inc();
    }

    /// Sets the spool gauges from `spool`.
    pub fn spool(&self, spool: &crate::spool::Spool) {
        self.spool_bytes
            .set(i64::try_from(spool.used_bytes()).unwrap_or(i64::MAX));
        self.spool_entries
            .set(i64::try_from(spool.len()).unwrap_or(i64::MAX));
    }

    /// Counts a refused file.
    pub fn rejected_file(&self, reason: &str) {
        self.rejected_files
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// Counts a refused sensor frame.
    pub fn rejected_frame(&self, reason: &str) {
        self.rejected_frames
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }
}
