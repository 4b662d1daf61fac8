//! The metadata store of pierone: manifests, immutable tags and upload sessions.
//!
//! [`TagStore`] is what the registry holds (`Arc<dyn TagStore>`): the sum of six small traits,
//! [`Manifests`], [`Catalog`], [`Uploads`], [`AuditLog`], [`Collector`] and [`Ping`], which each
//! backend ([`MemoryTagStore`], `SqlTagStore`) implements. Whether a tag write may proceed is
//! decided in one place, [`decide`], which every backend calls inside its transaction.
//!
//! # Rules every implementation enforces
//!
//! - **A tag never changes its mind.** Once `repo:tag` names a digest it names it forever, unless
//!   the caller declares the tag mutable ([`TagPolicy`] decides that). Writing the same digest
//!   again is [`TagOutcome::Unchanged`], not an error, so CI re-runs succeed.
//! - **The store decides races.** Two writers putting different digests on one tag at once end
//!   with exactly one [`TagOutcome::Created`] and one [`Error::TagImmutable`]; the decision is a
//!   unique constraint inside one transaction, never an in-process lock, so it holds across
//!   replicas sharing a database.
//! - **A tag never points at a missing manifest.** The manifest row, its link to the repository
//!   and the tag are written in one transaction.
//! - **Every tag creation and move is recorded** in the audit log, in the same transaction: a
//!   hash chain ([`AuditEntry`]) whose entries are numbered without gaps and never change.
//!   Appends queue on one head row, so replicas sharing a database extend one chain.
//! - **Events are never lost.** A tag write also queues one outbox row per webhook in its
//!   transaction; [`AuditLog::claim_outbox`] hands each to one deliverer at a time (a lease),
//!   and only [`AuditLog::outbox_delivered`] removes it from the queue.
//! - **Garbage collection cannot race a push.** A blob is deleted only after it was marked
//!   unreferenced ([`Collector::gc_mark`]) and then claimed ([`Collector::gc_claim`]) while still
//!   unreferenced; a manifest write that references a marked blob removes the mark in its
//!   transaction, and one that finds it claimed, or deleted ([`Collector::gc_deleted`] keeps a
//!   tombstone for [`GC_TOMBSTONE_MS`]), is refused with [`Error::BlobCollected`]. A manifest
//!   write whose caller checked its blobs more than [`MAX_CHECK_AGE_MS`] before is refused
//!   ([`Error::StaleCheck`]), so no write can outlive the tombstone of a blob it checked.
//! - **A quarantine is recorded with its audit entries.** [`Collector::record_quarantine`]
//!   writes the quarantine record and one audit entry per tag that needs the blob in one
//!   transaction, on the same chain as tag writes.
//! - **Upload progress is compare-and-set.** [`Uploads::advance_upload`] succeeds only from the
//!   offset the caller read, so two requests racing on one upload cannot both advance it, and
//!   it records the request's blob-store part in the same step: the recorded parts are always
//!   exactly those whose progress (and hash) was accepted.
//!
//! The conformance suite (feature `conformance`) checks these for every implementation.
//!
//! # Features
//!
//! - `sqlite` and `postgres` (both default): `SqlTagStore` on those databases. Without either
//!   there is no `SqlTagStore`, and no C library is built; [`MemoryTagStore`] is always there.
//! - `conformance`: the suite every implementation runs (`conformance`, `conformance_tests!`)
//!   and `create_test_database`, for tests only.

#![warn(missing_docs)]

// `macro_use` puts the `conformance_tests!` it generates in scope for the tests of the
// modules below: a macro-generated exported macro cannot be named by its path in its crate.
#[cfg(any(test, feature = "conformance"))]
#[macro_use]
pub mod conformance;
mod memory;
mod policy;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

use bytes::Bytes;
use pierone_protocol::{Digest, RepoName, Tag, UploadId, UploadPart};

pub use pierone_protocol::audit::{AuditEntry, AuditKind, Checkpoint};

pub use memory::MemoryTagStore;
pub use policy::{Decision, Mutability, TagPolicy, decide};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::SqlTagStore;
#[cfg(all(feature = "postgres", any(test, feature = "conformance")))]
pub use sql::create_test_database;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// How long a deleted blob's tombstone stays, refusing manifest writes that checked the blob
/// before it was deleted.
pub const GC_TOMBSTONE_MS: Millis = 3_600_000;

/// The longest a manifest write may take from its caller's check that the blobs exist
/// ([`NewManifest::checked_at`]) to its transaction: well under [`GC_TOMBSTONE_MS`], with room
/// for clocks of replicas that disagree.
pub const MAX_CHECK_AGE_MS: Millis = 600_000;

/// The current time as stored in the metadata (upload sessions, tags).
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The record of a tag named `name` on manifest `m`.
pub(crate) fn tag_record(
    m: &NewManifest,
    name: &str,
    created_at: Millis,
    created_by: &str,
) -> TagRecord {
    TagRecord {
        name: name.to_owned(),
        digest: m.digest.clone(),
        created_at,
        created_by: created_by.to_owned(),
        media_type: m.media_type.clone(),
        image: m.config_digest.clone(),
        size: m.body.len() as u64 + m.references.iter().map(|(_, s)| s).sum::<u64>(),
    }
}

/// Whether `prefix` (with or without an algorithm) starts `digest`.
pub(crate) fn digest_has_prefix(digest: &Digest, prefix: &str) -> bool {
    !prefix.is_empty() && (digest.as_str().starts_with(prefix) || digest.hex().starts_with(prefix))
}

/// What went wrong in the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An immutable tag names another digest; the write was refused and changed nothing.
    #[error(
        "tag {repo}:{tag} already names {existing}; it is immutable, so it cannot name {pushed} (push a new tag)"
    )]
    TagImmutable {
        /// The repository of the tag.
        repo: RepoName,
        /// The tag.
        tag: Tag,
        /// What the tag names, and will keep naming.
        existing: Digest,
        /// What the refused write asked it to name.
        pushed: Digest,
    },
    /// A push of the tag `latest`, which the policy does not allow.
    #[error("pushing the tag \"latest\" is not allowed: it always means the newest tag")]
    LatestNotAllowed,
    /// No upload session has this id (never started, finished, cancelled or expired).
    #[error("upload {0} is unknown or has expired")]
    UploadUnknown(UploadId),
    /// The upload moved on since the caller read it: another request recorded its part first.
    #[error("upload {id} is at offset {actual}, not {expected}")]
    UploadOffsetConflict {
        /// The upload.
        id: UploadId,
        /// The offset the caller read.
        expected: u64,
        /// The offset the upload is at.
        actual: u64,
    },
    /// A manifest references a blob that garbage collection has claimed or deleted.
    #[error("blob {0} is being garbage-collected; push it again")]
    BlobCollected(Digest),
    /// The manifest's blobs were checked too long before its write (see [`MAX_CHECK_AGE_MS`]).
    #[error(
        "the manifest's blobs were checked {age_ms} ms before its write, longer than garbage collection allows; retry"
    )]
    StaleCheck {
        /// How long before the write the check was.
        age_ms: Millis,
    },
    /// The database cannot be reached (connection, pool timeout).
    #[error("the metadata database is unavailable: {0}")]
    Unavailable(String),
    /// A database URL of a kind no backend speaks (`mysql://...`).
    #[error("unsupported database URL scheme {0}: use postgres://, postgresql:// or sqlite://")]
    UnsupportedScheme(String),
    /// The database answered with an error.
    #[error("metadata database query failed: {0}")]
    Query(String),
    /// A stored value does not parse (a digest, a hash state, a name).
    #[error("stored metadata is corrupt: {0}")]
    Corrupt(String),
}

/// A manifest about to be stored, with what the registry learnt when validating it.
#[derive(Debug, Clone)]
pub struct NewManifest {
    /// The digest of `body`.
    pub digest: Digest,
    /// The manifest's media type (from its `mediaType`, or the request's `Content-Type`).
    pub media_type: String,
    /// The manifest, byte for byte as pushed.
    pub body: Bytes,
    /// The manifest it refers to (`subject`), for the referrers API.
    pub subject: Option<Digest>,
    /// Its `artifactType`, for the referrers API.
    pub artifact_type: Option<String>,
    /// The config blob of an image manifest (Docker's image id).
    pub config_digest: Option<Digest>,
    /// The annotations as a JSON object, kept for the referrers API.
    pub annotations: Option<String>,
    /// Blobs and child manifests it references, with the sizes their descriptors give.
    pub references: Vec<(Digest, u64)>,
    /// When the caller checked that the references exist (see [`MAX_CHECK_AGE_MS`]).
    pub checked_at: Millis,
}

/// A stored manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    /// The digest of `body`.
    pub digest: Digest,
    /// The media type it was stored with.
    pub media_type: String,
    /// The manifest, byte for byte as pushed.
    pub body: Bytes,
}

/// A manifest whose `subject` is some other manifest, as the referrers API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    /// The referring manifest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its `artifactType`.
    pub artifact_type: Option<String>,
    /// Its annotations, as a JSON object.
    pub annotations: Option<String>,
}

/// The request to point a tag at the manifest being stored.
#[derive(Debug, Clone)]
pub struct TagWrite {
    /// The tag to point at the manifest.
    pub tag: Tag,
    /// Whether the tag may move ([`TagPolicy::classify`]); the store [`decide`]s with it.
    pub mutability: Mutability,
    /// Who pushed it, recorded as `created_by`.
    pub principal: String,
    /// The principal's realm (`/employees`, `/services`), for the audit log.
    pub realm: String,
    /// Where the image was built from, when the pusher may say so.
    pub scm_source: Option<ScmSource>,
    /// Webhook URLs to tell about a new or moved tag, through the outbox.
    pub notify: Vec<String>,
}

/// An event waiting in the outbox, claimed by one deliverer until its lease ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// The queue's id of the event, for [`AuditLog::outbox_delivered`] and
    /// [`AuditLog::outbox_retry`].
    pub id: i64,
    /// The webhook URL to deliver to.
    pub target: String,
    /// Failed deliveries so far.
    pub attempts: u32,
    /// The audit entry the event tells about.
    pub entry: AuditEntry,
}

/// Where an image was built from (Pier One's `scm-source`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScmSource {
    /// The repository's URL.
    pub url: String,
    /// The commit built.
    pub revision: String,
    /// Who made the commit.
    #[serde(default)]
    pub author: String,
    /// Whether the working tree had changes not committed (empty when clean).
    #[serde(default)]
    pub status: String,
}

/// What a tag write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagOutcome {
    /// No tag was asked for (a push by digest).
    Untagged,
    /// The tag was created.
    Created,
    /// The tag already named this digest.
    Unchanged,
    /// A mutable tag moved from `previous`.
    Moved {
        /// What the tag named before.
        previous: Digest,
    },
}

/// A tag with its provenance and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    /// The tag.
    pub name: String,
    /// The manifest it names.
    pub digest: Digest,
    /// When it was created or last moved.
    pub created_at: Millis,
    /// Who pushed it.
    pub created_by: String,
    /// The manifest's media type.
    pub media_type: String,
    /// The config digest (Docker's image id), for image manifests.
    pub image: Option<Digest>,
    /// The manifest plus everything it references, in bytes.
    pub size: u64,
}

/// A tag whose manifest or config digest matched a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMatch {
    /// The repository of the tag.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest it names.
    pub digest: Digest,
    /// The manifest's config digest (Docker's image id).
    pub image: Option<Digest>,
}

/// Counts for one team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamStats {
    /// The team.
    pub team: String,
    /// Its repositories with at least one tag.
    pub artifacts: u64,
    /// Its tags.
    pub tags: u64,
}

/// A manifest that references a blob (or a child manifest), in one repository it was pushed
/// to, with the tags of that repository that name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUser {
    /// The manifest referencing the blob.
    pub manifest: Digest,
    /// A repository it was pushed to.
    pub repository: String,
    /// Sorted; empty when the manifest is untagged there.
    pub tags: Vec<String>,
}

/// A blob taken out of service because its stored bytes do not hash to its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRecord {
    /// The blob quarantined.
    pub digest: Digest,
    /// When.
    pub at: Millis,
    /// Who quarantined it (the scrub).
    pub principal: String,
    /// What the stored bytes hash to.
    pub actual: Digest,
}

/// A quarantine to record: the record, and the `(repository, tag)` pairs that need the blob,
/// each of which gets an audit entry (one entry with both empty when the list is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// The record to keep.
    pub record: QuarantineRecord,
    /// The realm of the quarantining principal, for the audit entries.
    pub realm: String,
    /// The `(repository, tag)` pairs that need the blob.
    pub affected: Vec<(String, String)>,
}

/// An upload session: how far the client has got, which parts of the blob store hold what it
/// sent, and the hash of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSession {
    /// The session's id, as in its `Location`.
    pub id: UploadId,
    /// The repository the blob is pushed to.
    pub repo: RepoName,
    /// Who started it (the principal's uid); only they may continue or cancel it.
    pub owner: String,
    /// Bytes accepted so far: the sum of `parts`.
    pub received: u64,
    /// The blob store's parts that make the upload, in order. Only these are ever published.
    pub parts: Vec<UploadPart>,
    /// Serialised [`pierone_protocol::Hasher`] over those bytes.
    pub hash_state: Vec<u8>,
    /// When it started.
    pub created_at: Millis,
    /// When it last advanced; idle sessions expire.
    pub updated_at: Millis,
}

/// The whole metadata store: everything the registry asks of it, as one trait object
/// (`Arc<dyn TagStore>`).
///
/// It is the sum of the parts below, each small enough to read on its own; every type that
/// implements all of them is a `TagStore` (a blanket implementation), and their methods are
/// callable on a `dyn TagStore` without importing the parts. An implementation is one type per
/// backend implementing each part ([`MemoryTagStore`], `SqlTagStore`).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use pierone_protocol::Digest;
/// use pierone_tagstore::{MemoryTagStore, Mutability, NewManifest, TagOutcome, TagStore, TagWrite};
///
/// let store: Arc<dyn TagStore> = Arc::new(MemoryTagStore::new());
/// let repo = "team/app".parse().unwrap();
/// let body = br#"{"schemaVersion":2}"#;
/// let manifest = NewManifest {
///     digest: Digest::sha256_of(body),
///     media_type: "application/vnd.oci.image.manifest.v1+json".into(),
///     body: body.to_vec().into(),
///     subject: None,
///     artifact_type: None,
///     config_digest: None,
///     annotations: None,
///     references: Vec::new(),
///     checked_at: pierone_tagstore::now_millis(),
/// };
/// let write = TagWrite {
///     tag: "1.0".parse().unwrap(),
///     mutability: Mutability::Immutable,
///     principal: "alice".into(),
///     realm: "/employees".into(),
///     scm_source: None,
///     notify: Vec::new(),
/// };
/// let digest = manifest.digest.clone();
/// let outcome = store.put_manifest(&repo, manifest, Some(write)).await.unwrap();
/// assert_eq!(outcome, TagOutcome::Created);
/// let tag = "1.0".parse().unwrap();
/// assert_eq!(store.resolve_tag(&repo, &tag).await.unwrap(), Some(digest));
/// # });
/// ```
pub trait TagStore: Manifests + Catalog + Uploads + AuditLog + Collector + Ping {}

impl<T: Manifests + Catalog + Uploads + AuditLog + Collector + Ping + ?Sized> TagStore for T {}

/// Manifests and the tags that name them: the write that stores a manifest and points a tag at
/// it (one transaction, with its audit entry and outbox rows), and the reads of the
/// distribution API (manifests, tags, repositories, referrers) and of a tag's SCM source.
#[async_trait::async_trait]
pub trait Manifests: Send + Sync + std::fmt::Debug + 'static {
    /// Store `manifest` in `repo` and, if asked, point a tag at it, all in one transaction.
    /// Storing a manifest that is already there is not an error.
    async fn put_manifest(
        &self,
        repo: &RepoName,
        manifest: NewManifest,
        tag: Option<TagWrite>,
    ) -> Result<TagOutcome, Error>;

    /// A manifest pushed to `repo`.
    async fn get_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, Error>;

    /// The digest `repo:tag` names.
    async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, Error>;

    /// The most recently created tag of `repo`.
    async fn latest_tag(&self, repo: &RepoName) -> Result<Option<TagRecord>, Error>;

    /// Tags of `repo` sorted by name, after `last`, at most `limit`. `None` when the repository
    /// does not exist.
    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<String>>, Error>;

    /// Every tag of `repo` with provenance, oldest first.
    async fn tag_records(&self, repo: &RepoName) -> Result<Vec<TagRecord>, Error>;

    /// Repository names sorted, after `last`, at most `limit`.
    async fn list_repositories(
        &self,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, Error>;

    /// Manifests in `repo` whose subject is `subject`.
    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Referrer>, Error>;

    /// The recorded source of `repo:tag`.
    async fn scm_source(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(ScmSource, Millis)>, Error>;

    /// Record the source of `repo:tag` unless one is recorded already (a source found later in
    /// the layers never overrides what the pusher declared).
    async fn record_scm_source(
        &self,
        repo: &RepoName,
        tag: &Tag,
        source: ScmSource,
    ) -> Result<(), Error>;
}

/// Pier One's read-only views over all repositories: teams, artifacts, image search and
/// statistics.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync + std::fmt::Debug + 'static {
    /// Teams with at least one tag, sorted.
    async fn teams(&self) -> Result<Vec<String>, Error>;

    /// Artifacts of `team` with at least one tag, sorted.
    async fn artifacts(&self, team: &str) -> Result<Vec<String>, Error>;

    /// Tags whose manifest digest or config digest (with or without `sha256:`) starts with
    /// `prefix`.
    async fn find_images(&self, prefix: &str) -> Result<Vec<ImageMatch>, Error>;

    /// Per-team counts, sorted by team.
    async fn team_stats(&self) -> Result<Vec<TeamStats>, Error>;

    /// Bytes of all distinct manifests and the blobs they reference.
    async fn storage_bytes(&self) -> Result<u64, Error>;
}

/// Upload sessions: how far each upload got, which blob-store parts hold its bytes and the hash
/// state over them, advanced by compare-and-set.
#[async_trait::async_trait]
pub trait Uploads: Send + Sync + std::fmt::Debug + 'static {
    /// Start recording a new upload session.
    async fn create_upload(&self, session: UploadSession) -> Result<(), Error>;

    /// The session `id`, if it is still there.
    async fn get_upload(&self, id: &UploadId) -> Result<Option<UploadSession>, Error>;

    /// Append `part` to upload `id` and store the hash state over everything up to its end,
    /// only if the upload is still at `expected` bytes (compare-and-set): of two requests that
    /// read the same session, exactly one records its part. `None` records no part (an empty
    /// request) and only refreshes the session.
    async fn advance_upload(
        &self,
        id: &UploadId,
        expected: u64,
        part: Option<UploadPart>,
        hash_state: Vec<u8>,
    ) -> Result<(), Error>;

    /// Forget an upload session; `false` when there was none.
    async fn delete_upload(&self, id: &UploadId) -> Result<bool, Error>;

    /// Sessions untouched since before `idle_before`, oldest first.
    async fn expired_uploads(
        &self,
        idle_before: Millis,
        limit: usize,
    ) -> Result<Vec<UploadSession>, Error>;
}

/// The audit log (a hash chain of every tag assignment and quarantine), its signed
/// checkpoints, and the outbox of events for webhooks.
#[async_trait::async_trait]
pub trait AuditLog: Send + Sync + std::fmt::Debug + 'static {
    /// Audit entries after `since`, in order, at most `limit`; only those of one tag when
    /// `tag` is given.
    async fn audit_entries(
        &self,
        since: u64,
        limit: usize,
        tag: Option<(&RepoName, &Tag)>,
    ) -> Result<Vec<AuditEntry>, Error>;

    /// The number of audit entries and the hash of the last.
    async fn audit_head(&self) -> Result<(u64, String), Error>;

    /// Keep a signed checkpoint (a second one for the same size is ignored).
    async fn put_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error>;

    /// The checkpoint of the largest size.
    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, Error>;

    /// Take up to `limit` undelivered events for `targets` that are due at `now` and not
    /// leased, leasing them for `lease_ms`. Events for other targets (webhooks no longer
    /// configured) stay queued untouched.
    async fn claim_outbox(
        &self,
        now: Millis,
        limit: usize,
        lease_ms: i64,
        targets: &[String],
    ) -> Result<Vec<OutboxItem>, Error>;

    /// The event was delivered at `now`; it leaves the queue.
    async fn outbox_delivered(&self, id: i64, now: Millis) -> Result<(), Error>;

    /// Delivery failed; try again at `next_attempt_at`.
    async fn outbox_retry(
        &self,
        id: i64,
        next_attempt_at: Millis,
        error: &str,
    ) -> Result<(), Error>;

    /// Events not yet delivered.
    async fn outbox_pending(&self) -> Result<u64, Error>;

    /// Forget events delivered before `delivered_before`; returns how many. (The audit log
    /// keeps what they said.)
    async fn outbox_prune(&self, delivered_before: Millis) -> Result<u64, Error>;
}

/// What garbage collection and the scrub need: which blobs manifests reference, the
/// mark/claim/tombstone steps of deleting one, who uses a blob, and quarantine records.
#[async_trait::async_trait]
pub trait Collector: Send + Sync + std::fmt::Debug + 'static {
    /// Which of `digests` a manifest references (or is): one query for a whole page of
    /// blobs, so garbage collection touches only the few that may be garbage.
    async fn referenced(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error>;

    /// Mark `digest` as a garbage candidate unless a manifest references it (or is it). Returns
    /// when it was first marked, `None` when it is referenced (and then unmarked).
    async fn gc_mark(&self, digest: &Digest, now: Millis) -> Result<Option<Millis>, Error>;

    /// Claim a candidate marked no later than `marked_before` for deletion at `now`, if it is
    /// still unreferenced. After `true` the caller deletes the blob and then calls
    /// [`Collector::gc_deleted`].
    async fn gc_claim(
        &self,
        digest: &Digest,
        marked_before: Millis,
        now: Millis,
    ) -> Result<bool, Error>;

    /// Claims made before `claimed_before` and never finished (the collector died between
    /// claim and delete): the next run deletes those blobs, since no manifest may reference
    /// them any more.
    async fn gc_stale_claims(&self, claimed_before: Millis) -> Result<Vec<Digest>, Error>;

    /// The claimed blob is gone: its candidate row becomes a tombstone, dated `now`, which
    /// refuses manifest writes referencing it until [`Collector::gc_prune`] drops it (or the
    /// blob is stored again). Without it, a manifest write that checked the blob just before
    /// the claim would find no trace of the deletion.
    async fn gc_deleted(&self, digest: &Digest, now: Millis) -> Result<(), Error>;

    /// Drop tombstones of blobs deleted before `deleted_before`; how many.
    async fn gc_prune(&self, deleted_before: Millis) -> Result<u64, Error>;

    /// A blob was just stored or mounted: it is wanted, drop its mark unless a collector has
    /// claimed it. `stored_again` (bytes stored by this push, after any deletion) drops a
    /// deletion's tombstone too; a push that merely found the blob must not, since it may have
    /// found it just before the collector deleted it.
    async fn gc_unmark(&self, digest: &Digest, stored_again: bool) -> Result<(), Error>;

    /// The manifests that reference `digest` (directly, not through an index), once per
    /// repository they were pushed to, sorted by manifest and repository.
    async fn blob_users(&self, digest: &Digest) -> Result<Vec<BlobUser>, Error>;

    /// Record that a blob was quarantined, and append its audit entries, in one transaction.
    /// Replaces an earlier record of the same digest. Returns the entries appended.
    async fn record_quarantine(&self, q: Quarantine) -> Result<Vec<AuditEntry>, Error>;

    /// The quarantine of `digest`, if it is quarantined. Read only when a blob is missing.
    async fn quarantine_record(&self, digest: &Digest) -> Result<Option<QuarantineRecord>, Error>;

    /// Correct bytes of `digest` were stored again: it is back in service. `false` when it
    /// was not quarantined. (The audit entries of the quarantine stay.)
    async fn release_quarantine(&self, digest: &Digest) -> Result<bool, Error>;
}

/// Whether the database answers, for readiness.
#[async_trait::async_trait]
pub trait Ping: Send + Sync + std::fmt::Debug + 'static {
    /// Whether the database answers (readiness).
    async fn ping(&self) -> Result<(), Error>;
}
