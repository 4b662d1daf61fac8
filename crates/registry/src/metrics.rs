//! What the registry counts, and `/metrics` in the Prometheus text format.
//!
//! Labels are route names, methods and statuses only: never repository names, tags or users,
//! so the number of series stays fixed however many repositories there are.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as PromRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// The metrics, each with its field, type, constructor, name and help, in exposition order:
/// one line each, so the list reads as the table it is.
macro_rules! metrics {
    ($($(#[$doc:meta])* $field:ident: $ty:ty = $init:expr, $name:literal, $help:literal;)*) => {
        /// Every metric the registry keeps. Cheap to update from any task.
        #[derive(Debug)]
        pub struct Metrics {
            registry: PromRegistry,
            $($(#[$doc])* pub $field: $ty,)*
        }

        impl Metrics {
            fn registered(mut registry: PromRegistry) -> Metrics {
                $(let $field: $ty = $init; registry.register($name, $help, $field.clone());)*
                Metrics { registry, $($field,)* }
            }
        }
    };
}

metrics! {
    requests: Family<RequestLabels, Counter> = Family::default(), "pierone_http_requests", "HTTP requests answered, by route, method and status";
    /// 1 ms to ~65 s: manifest reads take microseconds to milliseconds, blob transfers seconds.
    latency: Family<RouteLabels, Histogram, fn() -> Histogram> = Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 17))), "pierone_http_request_duration_seconds", "Time from receiving a request to sending its response headers";
    bytes_in: Counter = Counter::default(), "pierone_received_bytes", "Blob and manifest bytes received";
    bytes_out: Counter = Counter::default(), "pierone_sent_bytes", "Response body bytes sent.";
    uploads_in_flight: Gauge = Gauge::default(), "pierone_uploads_in_flight", "Upload requests currently streaming";
    uploads_refused: Counter = Counter::default(), "pierone_uploads_refused", "Upload requests refused with 429 because the principal had too many in flight";
    /// Failures of the metadata database, by kind (unavailable, query, corrupt).
    database_errors: Family<KindLabels, Counter> = Family::default(), "pierone_database_errors", "Metadata database failures";
    /// Failures of the blob store, by kind (io, backend, throttled, unavailable).
    blob_store_errors: Family<KindLabels, Counter> = Family::default(), "pierone_blob_store_errors", "Blob store failures";
    audit_checkpoints: Counter = Counter::default(), "pierone_audit_checkpoints", "Audit checkpoints signed by this process";
    /// Checkpoints not signed because the log no longer extends the last one (tampering) or
    /// could not be read.
    audit_refusals: Counter = Counter::default(), "pierone_audit_checkpoint_refusals", "Checkpoints not signed: the log does not extend the last checkpoint, or could not be read";
    events_delivered: Counter = Counter::default(), "pierone_events_delivered", "Webhook events delivered";
    event_delivery_failures: Counter = Counter::default(), "pierone_event_delivery_failures", "Webhook deliveries that failed and will be retried";
    events_pending: Gauge = Gauge::default(), "pierone_events_pending", "Webhook events not yet delivered, as of the last delivery round";
    gc_runs: Counter = Counter::default(), "pierone_gc_runs", "Garbage collection runs.";
    gc_blobs_deleted: Counter = Counter::default(), "pierone_gc_blobs_deleted", "Unreferenced blobs deleted by garbage collection";
    gc_bytes_freed: Counter = Counter::default(), "pierone_gc_freed_bytes", "Bytes of blobs deleted by garbage collection";
    gc_uploads_expired: Counter = Counter::default(), "pierone_gc_uploads_expired", "Abandoned upload sessions removed by garbage collection";
    /// Looks into image layers for `scm-source.json`, by outcome (found, absent,
    /// remembered_absent, limit, busy).
    scm_scans: Family<KindLabels, Counter> = Family::default(), "pierone_scm_source_scans", "Looks into image layers for scm-source.json, by outcome";
    /// Connections open now, on every listener.
    connections_open: Gauge = Gauge::default(), "pierone_connections_open", "Client connections open now";
    /// Connections closed at once because `max_connections` were open.
    connections_refused: Counter = Counter::default(), "pierone_connections_refused", "Connections closed at once because the connection limit was reached";
    /// Connections closed after `idle_timeout` without a request.
    connections_idle_closed: Counter = Counter::default(), "pierone_connections_idle_closed", "Connections closed after the idle timeout without a request in flight";
    /// Times accepting failed for want of file descriptors (counted per failed accept).
    accept_fd_exhausted: Counter = Counter::default(), "pierone_accept_fd_exhausted", "Accepts that failed because the process or system ran out of file descriptors";
}

/// Token-cache counters live in the auth crate; they are read at scrape time.
type CacheStatsFn = dyn Fn() -> Option<pierone_auth::CacheStats> + Send + Sync;

struct TokenCache(Arc<CacheStatsFn>);

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache")
    }
}

impl Collector for TokenCache {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = (self.0)() else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "pierone_token_cache_hits",
                "Token validations answered from the cache",
                stats.hits,
            ),
            (
                "pierone_token_cache_misses",
                "Token validations that asked the token-info endpoint",
                stats.misses,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Every metric registered, and the token cache's counters read at scrape time.
    pub fn new(
        token_cache: impl Fn() -> Option<pierone_auth::CacheStats> + Send + Sync + 'static,
    ) -> Metrics {
        let mut registry = PromRegistry::default();
        registry.register_collector(Box::new(TokenCache(Arc::new(token_cache))));
        Metrics::registered(registry)
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The service's counts, as the metrics they always were.
impl pierone_service::Observer for Metrics {
    fn bytes_received(&self, n: u64) {
        self.bytes_in.inc_by(n);
    }
    fn checkpoint_signed(&self) {
        self.audit_checkpoints.inc();
    }
    fn checkpoint_refused(&self) {
        self.audit_refusals.inc();
    }
    fn event_delivered(&self) {
        self.events_delivered.inc();
    }
    fn event_delivery_failed(&self) {
        self.event_delivery_failures.inc();
    }
    fn events_pending(&self, n: u64) {
        self.events_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    fn gc_finished(&self, report: &pierone_service::GcReport) {
        self.gc_runs.inc();
        self.gc_blobs_deleted.inc_by(report.blobs_deleted);
        self.gc_bytes_freed.inc_by(report.bytes_freed);
        self.gc_uploads_expired.inc_by(report.uploads_expired);
    }
    fn scm_scan(&self, outcome: pierone_service::ScanOutcome) {
        self.scm_scans
            .get_or_create(&KindLabels {
                kind: outcome.as_str(),
            })
            .inc();
    }
}

/// A method as a label: the standard ones by name, anything else as `other`, so that a
/// client inventing methods cannot create series.
pub fn method_label(m: &hyper::Method) -> &'static str {
    use hyper::Method as M;
    match *m {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::PUT => "PUT",
        M::POST => "POST",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
