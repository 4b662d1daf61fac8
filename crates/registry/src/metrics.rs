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

/// Every metric the registry keeps. Cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    registry: PromRegistry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub uploads_in_flight: Gauge,
    pub uploads_refused: Counter,
    /// Failures of the metadata database, by kind (unavailable, query, corrupt).
    pub database_errors: Family<KindLabels, Counter>,
    /// Failures of the blob store, by kind (io, backend, throttled, unavailable).
    pub blob_store_errors: Family<KindLabels, Counter>,
    pub audit_checkpoints: Counter,
    /// Checkpoints not signed because the log no longer extends the last one (tampering) or
    /// could not be read.
    pub audit_refusals: Counter,
    pub events_delivered: Counter,
    pub event_delivery_failures: Counter,
    pub events_pending: Gauge,
    pub gc_runs: Counter,
    pub gc_blobs_deleted: Counter,
    pub gc_bytes_freed: Counter,
    pub gc_uploads_expired: Counter,
    /// Looks into image layers for `scm-source.json`, by outcome (found, absent,
    /// remembered_absent, limit, busy).
    pub scm_scans: Family<KindLabels, Counter>,
    /// Connections open now, on every listener.
    pub connections_open: Gauge,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: Counter,
    /// Connections closed after `idle_timeout` without a request.
    pub connections_idle_closed: Counter,
    /// Times accepting failed for want of file descriptors (counted per failed accept).
    pub accept_fd_exhausted: Counter,
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
    pub fn new(
        token_cache: impl Fn() -> Option<pierone_auth::CacheStats> + Send + Sync + 'static,
    ) -> Metrics {
        let mut r = PromRegistry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "pierone_http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        // 1 ms to ~65 s: manifest reads take microseconds to milliseconds, blob transfers
        // seconds.
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 17))
        });
        r.register(
            "pierone_http_request_duration_seconds",
            "Time from receiving a request to sending its response headers",
            latency.clone(),
        );
        let counter = |r: &mut PromRegistry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let gauge = |r: &mut PromRegistry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let bytes_in = counter(
            &mut r,
            "pierone_received_bytes",
            "Blob and manifest bytes received",
        );
        let bytes_out = counter(&mut r, "pierone_sent_bytes", "Response body bytes sent.");
        let uploads_in_flight = gauge(
            &mut r,
            "pierone_uploads_in_flight",
            "Upload requests currently streaming",
        );
        let uploads_refused = counter(
            &mut r,
            "pierone_uploads_refused",
            "Upload requests refused with 429 because the principal had too many in flight",
        );
        let database_errors = Family::<KindLabels, Counter>::default();
        r.register(
            "pierone_database_errors",
            "Metadata database failures",
            database_errors.clone(),
        );
        let blob_store_errors = Family::<KindLabels, Counter>::default();
        r.register(
            "pierone_blob_store_errors",
            "Blob store failures",
            blob_store_errors.clone(),
        );
        let audit_checkpoints = counter(
            &mut r,
            "pierone_audit_checkpoints",
            "Audit checkpoints signed by this process",
        );
        let audit_refusals = counter(
            &mut r,
            "pierone_audit_checkpoint_refusals",
            "Checkpoints not signed: the log does not extend the last checkpoint, or could not be read",
        );
        let events_delivered = counter(
            &mut r,
            "pierone_events_delivered",
            "Webhook events delivered",
        );
        let event_delivery_failures = counter(
            &mut r,
            "pierone_event_delivery_failures",
            "Webhook deliveries that failed and will be retried",
        );
        let events_pending = gauge(
            &mut r,
            "pierone_events_pending",
            "Webhook events not yet delivered, as of the last delivery round",
        );
        let gc_runs = counter(&mut r, "pierone_gc_runs", "Garbage collection runs.");
        let gc_blobs_deleted = counter(
            &mut r,
            "pierone_gc_blobs_deleted",
            "Unreferenced blobs deleted by garbage collection",
        );
        let gc_bytes_freed = counter(
            &mut r,
            "pierone_gc_freed_bytes",
            "Bytes of blobs deleted by garbage collection",
        );
        let gc_uploads_expired = counter(
            &mut r,
            "pierone_gc_uploads_expired",
            "Abandoned upload sessions removed by garbage collection",
        );
        let scm_scans = Family::<KindLabels, Counter>::default();
        r.register(
            "pierone_scm_source_scans",
            "Looks into image layers for scm-source.json, by outcome",
            scm_scans.clone(),
        );
        let connections_open = gauge(
            &mut r,
            "pierone_connections_open",
            "Client connections open now",
        );
        let connections_refused = counter(
            &mut r,
            "pierone_connections_refused",
            "Connections closed at once because the connection limit was reached",
        );
        let connections_idle_closed = counter(
            &mut r,
            "pierone_connections_idle_closed",
            "Connections closed after the idle timeout without a request in flight",
        );
        let accept_fd_exhausted = counter(
            &mut r,
            "pierone_accept_fd_exhausted",
            "Accepts that failed because the process or system ran out of file descriptors",
        );
        r.register_collector(Box::new(TokenCache(Arc::new(token_cache))));
        Metrics {
            registry: r,
            requests,
            latency,
            bytes_in,
            bytes_out,
            uploads_in_flight,
            uploads_refused,
            database_errors,
            blob_store_errors,
            audit_checkpoints,
            audit_refusals,
            events_delivered,
            event_delivery_failures,
            events_pending,
            gc_runs,
            gc_blobs_deleted,
            gc_bytes_freed,
            gc_uploads_expired,
            scm_scans,
            connections_open,
            connections_refused,
            connections_idle_closed,
            accept_fd_exhausted,
        }
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
