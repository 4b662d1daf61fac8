//! Content-addressed blob storage: the [`BlobStore`] trait and its guarantees.
//!
//! # Guarantees every implementation gives
//!
//! - **No reader observes a partial blob.** A blob becomes visible under its digest only through
//!   [`BlobStore::commit_upload`], atomically, after the caller has verified the digest.
//! - **Every request writes a part of its own.** [`BlobStore::write_part`] stores one request's
//!   bytes under a new key that no other request can write to, and returns it as an
//!   [`UploadPart`]. Two requests racing on one upload can never change each other's bytes
//!   (a store may also refuse the second with [`Error::UploadBusy`]). A part's bytes never
//!   change once written; only [`BlobStore::discard_part`] and the end of the upload remove
//!   them.
//! - **Commit publishes exactly the parts it is given.** The caller records in its upload
//!   session which parts it accepted (compare-and-set in the metadata store) and hands exactly
//!   those to [`BlobStore::commit_upload`], which publishes their concatenation, in order, after
//!   checking that each is stored with its recorded length. Bytes of refused, failed or
//!   unrecorded requests are never part of a blob. So the bytes published under a digest are
//!   exactly the bytes the caller hashed.
//! - **Commit is idempotent and deduplicating.** Committing content whose digest is already
//!   stored discards the upload and keeps the existing blob.
//! - **Nothing is buffered whole.** Reads and writes are streams of bounded chunks.
//! - **A blob's age restarts when it is stored again.** [`BlobEntry::stored_at`] is the time
//!   of the latest commit of that digest, so garbage collection's grace period counts from the
//!   last push that needed the blob.
//! - **Only garbage collection and quarantine delete.** [`BlobStore::delete_blob`] exists for
//!   garbage collection alone, [`BlobStore::quarantine_blob`] for the scrub; no API request
//!   reaches either.
//! - **Quarantine keeps the evidence.** A quarantined blob leaves service (not read, listed or
//!   stat-ed under its digest) but its bytes are moved aside, never destroyed; storing the
//!   digest again afterwards works like a first store.
//!
//! The store does not hash: verification belongs to the caller, which hashes while it receives
//! and only then commits. The conformance suite (feature `conformance`: the `conformance`
//! module and `conformance_tests!`) checks all of this, and every implementation runs it.

#![warn(missing_docs)]

// `macro_use` puts the `conformance_tests!` it generates in scope for the tests of the
// modules below: a macro-generated exported macro cannot be named by its path in its crate.
#[cfg(any(test, feature = "conformance"))]
#[macro_use]
pub mod conformance;
mod fs;
mod memory;

use std::fmt::Debug;
use std::ops::Range;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
pub use pierone_protocol::UploadPart;
use pierone_protocol::{Digest, UploadId};

pub use fs::FsBlobStore;
pub use memory::MemoryBlobStore;

/// A stream of byte chunks, as written to or read from a store.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Content being read from the store.
pub struct BlobRead {
    /// The size of the whole blob, whatever range was asked for.
    pub total_size: u64,
    /// The requested bytes.
    pub body: ByteStream,
}

impl Debug for BlobRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRead")
            .field("total_size", &self.total_size)
            .finish()
    }
}

/// What went wrong in a blob store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("blob store I/O failed while trying to {op}: {source}")]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The stream being written failed (the client went away mid-body).
    #[error("the client's request body failed: {0}")]
    Body(#[source] std::io::Error),
    /// The store holds nothing for this upload.
    #[error("upload {0} has no data in the blob store")]
    UploadUnknown(UploadId),
    /// A part the caller recorded is not in the store.
    #[error("part {key} of upload {id} is not stored")]
    PartUnknown {
        /// The upload.
        id: UploadId,
        /// The part's key.
        key: String,
    },
    /// A part holds another number of bytes than the caller recorded.
    #[error(
        "part {key} of upload {id} holds {stored} bytes, not the {expected} its session recorded"
    )]
    PartSizeMismatch {
        /// The upload.
        id: UploadId,
        /// The part's key.
        key: String,
        /// What the store holds.
        stored: u64,
        /// What the caller recorded.
        expected: u64,
    },
    /// Another request is writing to this upload.
    #[error("upload {0} is being written by another request")]
    UploadBusy(UploadId),
    /// The range asked for does not lie within the blob.
    #[error("range {start}..{end} is outside the blob of {size} bytes")]
    RangeNotSatisfiable {
        /// The first byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// The blob's size.
        size: u64,
    },
    /// The backend answered with an error.
    #[error("blob store backend failed: {0}")]
    Backend(String),
    /// The backend asks us to slow down.
    #[error("blob store is throttling requests: {0}")]
    Throttled(String),
    /// The backend cannot be reached.
    #[error("blob store is unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { op, source }
    }
}

/// The byte range to read of a blob of `size` bytes: all of it, or `range` when it lies
/// within the blob. Shared by every implementation so they refuse the same ranges.
pub fn checked_range(range: Option<Range<u64>>, size: u64) -> Result<Range<u64>, Error> {
    let range = range.unwrap_or(0..size);
    if range.start > range.end || range.end > size {
        return Err(Error::RangeNotSatisfiable {
            start: range.start,
            end: range.end,
            size,
        });
    }
    Ok(range)
}

/// A stored blob, as [`BlobStore::list_blobs`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last committed, in milliseconds since the Unix epoch (second precision on
    /// some backends).
    pub stored_at: i64,
}

/// Storage for blobs addressed by digest, and for the data of uploads in progress.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + Debug + 'static {
    /// The size of a stored blob, or `None` when it is not stored.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, Error>;

    /// Read a blob, or the byte `range` of it. `None` when it is not stored.
    async fn get(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobRead>, Error>;

    /// Prepare upload `id` to receive parts. Uploads that were never created are unknown to
    /// [`BlobStore::write_part`] on stores that keep per-upload state.
    async fn create_upload(&self, id: &UploadId) -> Result<(), Error>;

    /// Write `data` as a new part of upload `id`, under a key no other request writes to.
    /// On error nothing of `data` is left where a commit could publish it.
    async fn write_part(&self, id: &UploadId, data: ByteStream) -> Result<UploadPart, Error>;

    /// Drop a part whose progress was refused (its request lost a race). Best effort: a part
    /// that stays is never published, and goes with its upload.
    async fn discard_part(&self, id: &UploadId, part: &UploadPart) -> Result<(), Error>;

    /// Stream the concatenation of `parts` of upload `id` (to hash it with another algorithm
    /// before committing, for example). Fails like [`BlobStore::commit_upload`] when a part is
    /// not stored as recorded.
    async fn read_upload(&self, id: &UploadId, parts: &[UploadPart]) -> Result<ByteStream, Error>;

    /// Publish the concatenation of `parts` of upload `id` as blob `digest`, atomically, and
    /// forget the upload with all its parts. The caller must already have verified that those
    /// bytes hash to `digest`. Every part must be stored with its recorded length
    /// ([`Error::PartUnknown`], [`Error::PartSizeMismatch`] otherwise, and nothing is published).
    /// `true` when this commit stored the bytes, `false` when the digest was stored already
    /// (garbage collection needs to know which: only bytes stored now outlive a deletion).
    async fn commit_upload(
        &self,
        id: &UploadId,
        parts: &[UploadPart],
        digest: &Digest,
    ) -> Result<bool, Error>;

    /// Forget an upload's data. Succeeds when there is none.
    async fn abort_upload(&self, id: &UploadId) -> Result<(), Error>;

    /// Stored blobs in order of their digest string, after `after`, at most `limit`.
    async fn list_blobs(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<BlobEntry>, Error>;

    /// Remove a blob; `false` when it was not stored. Only garbage collection (after the
    /// metadata store has claimed the digest) and quarantine call this.
    async fn delete_blob(&self, digest: &Digest) -> Result<bool, Error>;

    /// Take blob `digest` out of service and keep its bytes aside, as evidence (the scrub
    /// found they do not hash to the digest). Returns where they are kept, `None` when the blob
    /// is not stored. Commits of `digest` afterwards publish their own bytes.
    async fn quarantine_blob(&self, digest: &Digest) -> Result<Option<String>, Error>;

    /// A URL from which a client may download the blob directly, bypassing the registry, when
    /// the store offers one (a presigned S3 URL). `None` means: stream it through the registry.
    async fn redirect_url(&self, digest: &Digest) -> Result<Option<String>, Error> {
        let _ = digest;
        Ok(None)
    }
}
