//! pierone as a library: the registry's rules and operations over the [`BlobStore`] and
//! [`TagStore`] traits, with no transport.
//!
//! A [`Service`] owns the stores, the tag policy, the caches and upload coordination. Its
//! operations take typed arguments ([`RepoName`], [`Reference`], [`Digest`], [`UploadId`],
//! a [`Caller`]) and bodies as any [`Stream`](futures_util::Stream) of [`Bytes`], and fail
//! with this crate's [`Error`]. The HTTP crate (`pierone-registry`) is one front door; a test
//! or another tool can call the same operations in process.
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use pierone_service::{Caller, Config, MemoryBlobStore, MemoryTagStore, Service};
//! use pierone_service::protocol::{Digest, RepoName};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let service = Service::new(
//!     Arc::new(MemoryBlobStore::new()),
//!     Arc::new(MemoryTagStore::new()),
//!     Config::default(),
//! );
//! let repo: RepoName = "team/app".parse().unwrap();
//! let bytes = Bytes::from_static(b"hello");
//! let digest = Digest::sha256_of(&bytes);
//! let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes)]);
//! let stored = service
//!     .push_blob(&repo, &digest, None, body)
//!     .await
//!     .unwrap();
//! assert_eq!(stored, digest);
//! assert_eq!(service.blob_size(&digest).await.unwrap(), 5);
//! # let _ = Caller::anonymous();
//! # });
//! ```

#![warn(missing_docs)]

mod audit;
mod error;
mod layers;
mod maintenance;
mod manifests;
mod queries;
pub mod scrub;
mod signing;
mod uploads;

use std::sync::Arc;
use std::time::Duration;

use pierone_protocol::{Digest, RepoName, Tag};
use pierone_tagstore::ManifestRecord;

pub use error::Error;
pub use layers::ScanOutcome;
pub use maintenance::{Background, GcConfig, GcReport, cloud_event};
pub use manifests::{Manifest, PutOutcome};
pub use queries::{Page, PageRequest};
pub use uploads::Upload;

/// The blob store crate, for embedders that choose a backend.
pub use pierone_blobstore as blobstore;
/// The protocol crate: names, references, digests, manifests.
pub use pierone_protocol as protocol;
/// The tag store crate, for embedders that choose a backend.
pub use pierone_tagstore as tagstore;
/// The trust crate: the signed-tags policy and the signature verifier.
pub use pierone_trust as trust;

pub use bytes::Bytes;
pub use pierone_blobstore::{BlobRead, BlobStore, ByteStream, MemoryBlobStore};
pub use pierone_protocol::audit::AuditSigner;
pub use pierone_protocol::{Algorithm, Reference, UploadId};
pub use pierone_tagstore::{MemoryTagStore, ScmSource, TagOutcome, TagPolicy, TagStore};

/// What a service is configured with beyond its stores.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which tags are immutable, and whether `latest` may be pushed.
    pub tag_policy: TagPolicy,
    /// Largest blob accepted, in bytes.
    pub max_blob_size: u64,
    /// An upload session untouched for this long is forgotten.
    pub upload_ttl: Duration,
    /// Webhook URLs told about every new or moved tag (CloudEvents, at least once).
    pub webhooks: Vec<String>,
    /// The CloudEvents `source` of those events.
    pub event_source: String,
    /// The wait after a failed delivery; it doubles with every failure, up to 5 minutes.
    pub webhook_retry_base: Duration,
    /// How often the outbox is checked when nothing woke the deliverer.
    pub outbox_poll: Duration,
    /// Signs audit checkpoints; without it none are made.
    pub audit_signer: Option<Arc<AuditSigner>>,
    /// How often a checkpoint is signed.
    pub checkpoint_interval: Duration,
    /// Garbage collection; an interval of zero turns it off.
    pub gc: GcConfig,
    /// Which tags may only name manifests signed by the team's keys (issue #14); without
    /// it no tag is protected.
    pub trust_policy: Option<Arc<pierone_trust::TrustPolicyFile>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tag_policy: TagPolicy::default(),
            max_blob_size: 64 << 30,
            upload_ttl: Duration::from_secs(24 * 3600),
            webhooks: Vec::new(),
            event_source: "/pierone".into(),
            webhook_retry_base: Duration::from_secs(1),
            outbox_poll: Duration::from_secs(1),
            audit_signer: None,
            checkpoint_interval: Duration::from_secs(60),
            gc: GcConfig::default(),
            trust_policy: None,
        }
    }
}

/// Who asks: the identity an upload session is bound to and a tag write is recorded with.
/// Authentication and authorization happen before the service is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    realm: String,
    uid: String,
}

impl Caller {
    /// `uid` of `realm` (`/employees`, `/services`, ...).
    pub fn new(realm: impl Into<String>, uid: impl Into<String>) -> Caller {
        Caller {
            realm: realm.into(),
            uid: uid.into(),
        }
    }

    /// Nobody in particular, as when no credentials are checked.
    pub fn anonymous() -> Caller {
        Caller::new("", "anonymous")
    }

    /// The user or service id.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The realm of the id.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Whose an upload session is: realm and uid, so that an employee and a service of the
    /// same name are two owners.
    fn owner(&self) -> String {
        format!("{}/{}", self.realm, self.uid)
    }
}

/// Told what the service does, so that a front door can count it (the HTTP crate turns these
/// into Prometheus metrics). Every method has an empty default; calls are cheap and
/// synchronous, some once per received chunk.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// `n` bytes of blob content were received.
    fn bytes_received(&self, n: u64) {
        let _ = n;
    }
    /// An audit checkpoint was signed.
    fn checkpoint_signed(&self) {}
    /// A checkpoint was not signed: the log does not extend the last one, or cannot be read.
    fn checkpoint_refused(&self) {}
    /// A webhook event was delivered.
    fn event_delivered(&self) {}
    /// A webhook delivery failed and will be retried.
    fn event_delivery_failed(&self) {}
    /// Events not yet delivered, as of the last delivery round.
    fn events_pending(&self, n: u64) {
        let _ = n;
    }
    /// A garbage collection run finished.
    fn gc_finished(&self, report: &GcReport) {
        let _ = report;
    }
    /// A look into image layers for `scm-source.json` ended so.
    fn scm_scan(&self, outcome: ScanOutcome) {
        let _ = outcome;
    }
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// Posts webhook events: the service decides what is sent when, the transport is the
/// embedder's (the HTTP crate posts with an HTTP client).
#[async_trait::async_trait]
pub trait WebhookClient: Send + Sync + std::fmt::Debug {
    /// Post `event` (CloudEvents structured-mode JSON) to `target`; `Err` says why it was not
    /// accepted (`HTTP 500`, a connection error), and the event is retried later.
    async fn post(&self, target: &str, event: String) -> Result<(), String>;
}

#[derive(Debug, Clone)]
struct ManifestWeight;

impl quick_cache::Weighter<(RepoName, Digest), ManifestRecord> for ManifestWeight {
    fn weight(&self, _key: &(RepoName, Digest), val: &ManifestRecord) -> u64 {
        val.body.len() as u64 + 256
    }
}

/// Bytes of manifests kept in memory: small, so the footprint stays bounded.
const MANIFEST_CACHE_BYTES: u64 = 8 << 20;

/// The registry as a library: stores, configuration, caches and upload coordination. Cheap
/// to share behind an `Arc`; the background work needs one ([`Service::spawn_background`]).
#[derive(Debug)]
pub struct Service {
    blobs: Arc<dyn BlobStore>,
    tags: Arc<dyn TagStore>,
    config: Config,
    /// Manifests by repository and digest: content-addressed, so never stale.
    manifest_cache: quick_cache::sync::Cache<(RepoName, Digest), ManifestRecord, ManifestWeight>,
    /// Immutable tags only: once set they never change, so caching them is always correct,
    /// even with other replicas writing to the same database.
    tag_cache: quick_cache::sync::Cache<(RepoName, Tag), Digest>,
    /// Woken when a tag write queued events, so they go out at once rather than at the next
    /// poll.
    events_waiting: tokio::sync::Notify,
    observer: Arc<dyn Observer>,
    webhook_client: Option<Arc<dyn WebhookClient>>,
    /// Scans of image layers for `scm-source.json`: their slots and remembered misses.
    scans: layers::Scans,
}

impl Service {
    /// A service over `blobs` and `tags`, observed by nobody and without a webhook client
    /// (see [`Service::with_observer`] and [`Service::with_webhook_client`]).
    pub fn new(blobs: Arc<dyn BlobStore>, tags: Arc<dyn TagStore>, config: Config) -> Service {
        Service {
            blobs,
            tags,
            config,
            manifest_cache: quick_cache::sync::Cache::with_weighter(
                8192,
                MANIFEST_CACHE_BYTES,
                ManifestWeight,
            ),
            tag_cache: quick_cache::sync::Cache::new(65536),
            events_waiting: tokio::sync::Notify::new(),
            observer: Arc::new(NoObserver),
            webhook_client: None,
            scans: layers::Scans::new(),
        }
    }

    /// Report what the service does to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Service {
        self.observer = observer;
        self
    }

    /// Deliver webhook events with `client`; without one, configured webhooks are not told.
    pub fn with_webhook_client(mut self, client: Arc<dyn WebhookClient>) -> Service {
        self.webhook_client = Some(client);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The blob store.
    pub fn blob_store(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    /// The tag store.
    pub fn tag_store(&self) -> &Arc<dyn TagStore> {
        &self.tags
    }
}
