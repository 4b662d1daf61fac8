//! Content-addressed blob storage: the [`BlobStore`] trait and its guarantees.
//!
//! # Guarantees every implementation gives
//!
//! - **No reader observes a partial blob.** A blob becomes visible under its digest only through
//!   [`BlobStore::commit_upload`], atomically, after the caller has verified the digest.
//! - **Uploads are resumable by offset.** The caller records how many bytes of an upload it has
//!   accepted (in the metadata store). [`BlobStore::write_upload`] starts at that offset and
//!   discards anything stored beyond it, so bytes from a request that died before its progress
//!   was recorded can never leak into a blob.
//! - **Commit is idempotent and deduplicating.** Committing content whose digest is already
//!   stored discards the upload and keeps the existing blob.
//! - **Nothing is buffered whole.** Reads and writes are streams of bounded chunks.
//! - **A blob's age restarts when it is stored again.** [`BlobEntry::stored_at`] is the time
//!   of the latest commit of that digest, so garbage collection's grace period counts from the
//!   last push that needed the blob.
//! - **Only garbage collection deletes.** [`BlobStore::delete_blob`] exists for it alone; no
//!   API request reaches it.
//!
//! The store does not hash: verification belongs to the caller, which hashes while it receives
//! and only then commits. [`conformance`] checks all of this, and every implementation runs it.

pub mod conformance;
mod fs;
mod memory;

use std::fmt::Debug;
use std::ops::Range;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
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
    #[error("blob store I/O failed while trying to {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the client's request body failed: {0}")]
    Body(#[source] std::io::Error),
    #[error("upload {0} has no data in the blob store")]
    UploadUnknown(UploadId),
    #[error("upload {id} holds {stored} bytes, fewer than the {expected} its session recorded")]
    UploadTruncated {
        id: UploadId,
        stored: u64,
        expected: u64,
    },
    #[error("upload {0} is being written by another request")]
    UploadBusy(UploadId),
    #[error("range {start}..{end} is outside the blob of {size} bytes")]
    RangeNotSatisfiable { start: u64, end: u64, size: u64 },
    #[error("blob store backend failed: {0}")]
    Backend(String),
    #[error("blob store is throttling requests: {0}")]
    Throttled(String),
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
    pub digest: Digest,
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

    /// Write `data` to upload `id` starting at byte `offset`, creating the upload when `offset`
    /// is 0. Data previously stored at or beyond `offset` is discarded first. Returns the
    /// number of bytes written. On error, the upload may hold any prefix of `data`; the caller's
    /// recorded offset stays authoritative.
    async fn write_upload(
        &self,
        id: &UploadId,
        offset: u64,
        data: ByteStream,
    ) -> Result<u64, Error>;

    /// Publish the first `size` bytes of upload `id` as blob `digest`, atomically, and forget
    /// the upload. The caller must already have verified that those bytes hash to `digest`.
    async fn commit_upload(&self, id: &UploadId, size: u64, digest: &Digest) -> Result<(), Error>;

    /// Forget an upload's data. Succeeds when there is none.
    async fn abort_upload(&self, id: &UploadId) -> Result<(), Error>;

    /// Stored blobs in order of their digest string, after `after`, at most `limit`.
    async fn list_blobs(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<BlobEntry>, Error>;

    /// Remove a blob; `false` when it was not stored. Only garbage collection calls this, after
    /// the metadata store has claimed the digest.
    async fn delete_blob(&self, digest: &Digest) -> Result<bool, Error>;

    /// A URL from which a client may download the blob directly, bypassing the registry, when
    /// the store offers one (a presigned S3 URL). `None` means: stream it through the registry.
    async fn redirect_url(&self, digest: &Digest) -> Result<Option<String>, Error> {
        let _ = digest;
        Ok(None)
    }
}
