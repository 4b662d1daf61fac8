//! Blob reads and uploads: sessions bound to their caller, chunks appended by compare-and-set,
//! monolithic pushes, mounts, and the commit that publishes only verified bytes.
//!
//! A blob is hashed while it streams in and is committed to the blob store only once its
//! digest is verified. Upload progress (offset and hasher state) lives in the tag store after
//! every chunk, so an upload can continue on another replica or after a restart.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use pierone_blobstore::{BlobRead, Error as BlobError};
use pierone_protocol::{Algorithm, Digest, Hasher, RepoName, UploadId, UploadPart};
use pierone_tagstore::{UploadSession, now_millis};

use crate::{Caller, Error, Service};

/// The shared progress of a body being streamed into the blob store.
#[derive(Debug)]
struct Progress {
    hasher: Option<Hasher>,
    received: u64,
    limit: u64,
    too_large: bool,
}

/// An open upload session, found for the caller that started it: what a chunk is appended
/// to or the upload closed with. Obtained from [`Service::upload`].
#[derive(Debug, Clone)]
pub struct Upload {
    session: UploadSession,
}

impl Upload {
    /// The session's id.
    pub fn id(&self) -> &UploadId {
        &self.session.id
    }

    /// Bytes received so far: where the next chunk starts.
    pub fn offset(&self) -> u64 {
        self.session.received
    }
}

fn new_upload_id() -> UploadId {
    UploadId::from_random(*uuid::Uuid::new_v4().as_bytes())
}

impl Service {
    /// The whole blob `digest`, or `range` of it. One store read, which also reports the
    /// size.
    pub async fn blob(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobRead, Error> {
        match self.blobs.get(digest, range).await? {
            Some(read) => Ok(read),
            None => Err(self.missing_blob(digest).await),
        }
    }

    /// The size of blob `digest`.
    pub async fn blob_size(&self, digest: &Digest) -> Result<u64, Error> {
        match self.blobs.stat(digest).await? {
            Some(size) => Ok(size),
            None => Err(self.missing_blob(digest).await),
        }
    }

    /// Where the blob store serves `digest` itself (a presigned URL), if it does.
    pub async fn blob_redirect(&self, digest: &Digest) -> Result<Option<String>, Error> {
        Ok(self.blobs.redirect_url(digest).await?)
    }

    /// Why `digest` cannot be read: quarantined, or simply not stored. Asked only on a miss,
    /// so pulls of stored blobs never pay for it. When the metadata store cannot answer, the
    /// blob is reported unknown: it is not served either way.
    async fn missing_blob(&self, digest: &Digest) -> Error {
        match self.tags.quarantine_record(digest).await {
            Ok(Some(q)) => Error::BlobQuarantined {
                digest: digest.clone(),
                at: crate::queries::rfc3339(q.at),
                by: q.principal,
            },
            Ok(None) => Error::BlobUnknown(digest.clone()),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "could not read the quarantine record of a missing blob");
                Error::BlobUnknown(digest.clone())
            }
        }
    }

    /// Stream `body` into a new part of upload `id`, hashing as it goes; `offset` is where the
    /// part would start (for the size limit). Returns the hasher over everything up to the
    /// part's end, and the part.
    async fn receive<S, E>(
        &self,
        id: &UploadId,
        offset: u64,
        hasher: Hasher,
        body: S,
    ) -> Result<(Hasher, UploadPart), Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let progress = Arc::new(Mutex::new(Progress {
            hasher: Some(hasher),
            received: offset,
            limit: self.config.max_blob_size,
            too_large: false,
        }));
        let p = progress.clone();
        let observer = self.observer.clone();
        let stream = body
            .map_err(std::io::Error::other)
            .and_then(move |chunk: Bytes| {
                observer.bytes_received(chunk.len() as u64);
                let mut st = p.lock().unwrap_or_else(|e| e.into_inner());
                st.received += chunk.len() as u64;
                let r = if st.received > st.limit {
                    st.too_large = true;
                    Err(std::io::Error::other("body exceeds the blob size limit"))
                } else {
                    if let Some(h) = st.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    Ok(chunk)
                };
                std::future::ready(r)
            });
        let part = self.blobs.write_part(id, Box::pin(stream)).await;
        let mut st = progress.lock().unwrap_or_else(|e| e.into_inner());
        if st.too_large {
            return Err(Error::BodyTooLarge {
                size: st.received,
                limit: st.limit,
            });
        }
        let part = part?;
        let hasher = st.hasher.take().ok_or(Error::UploadUnknown)?;
        Ok((hasher, part))
    }

    /// Refuse a body declared `len` bytes long (`Content-Length`) that would take an upload
    /// at `offset` beyond the blob size limit, before a byte of it is read.
    pub fn check_size(&self, offset: u64, len: Option<u64>) -> Result<(), Error> {
        if let Some(len) = len {
            let total = offset.saturating_add(len);
            if total > self.config.max_blob_size {
                return Err(Error::BodyTooLarge {
                    size: total,
                    limit: self.config.max_blob_size,
                });
            }
        }
        Ok(())
    }

    /// Verify that `parts` of upload `id` hash to `expected` and publish them.
    ///
    /// `hasher` covers exactly those parts (each was recorded together with the hash state
    /// over everything up to its end). When the client closes with another algorithm than the
    /// one hashed while streaming, the stored parts are hashed again, streaming, before
    /// anything is published.
    async fn commit(
        &self,
        id: &UploadId,
        hasher: Hasher,
        parts: &[UploadPart],
        expected: &Digest,
    ) -> Result<Digest, Error> {
        let actual = if hasher.algorithm() == expected.algorithm() {
            hasher.finish()
        } else {
            match self.rehash(id, parts, expected.algorithm()).await {
                Ok(d) => d,
                Err(e) => {
                    self.discard(id).await;
                    return Err(e);
                }
            }
        };
        if &actual != expected {
            self.discard(id).await;
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let stored_now = match self.blobs.commit_upload(id, parts, expected).await {
            Ok(stored_now) => stored_now,
            Err(e) => {
                if matches!(
                    e,
                    BlobError::PartUnknown { .. } | BlobError::PartSizeMismatch { .. }
                ) {
                    // The recorded parts are not what the store holds: nothing was published,
                    // and the upload can never be finished.
                    tracing::error!(upload = %id, error = %e, "upload parts do not match their record");
                    self.discard(id).await;
                }
                return Err(e.into());
            }
        };
        self.tags.delete_upload(id).await?;
        self.wanted(expected, stored_now).await;
        Ok(expected.clone())
    }

    /// The digest of the stored `parts` of upload `id` under `algorithm`, read as a stream.
    async fn rehash(
        &self,
        id: &UploadId,
        parts: &[UploadPart],
        algorithm: Algorithm,
    ) -> Result<Digest, Error> {
        let mut body = self.blobs.read_upload(id, parts).await?;
        let mut h = Hasher::new(algorithm);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| {
                Error::Blobs(BlobError::Io {
                    op: "read upload to hash it",
                    source,
                })
            })?;
            h.update(&chunk);
        }
        Ok(h.finish())
    }

    /// A push just stored (`stored_now`) or found or mounted `digest`: take it off garbage
    /// collection's list. Only bytes this push stored may clear a deletion's tombstone: a push
    /// that found the blob may have found it just before the collector deleted it. Failing
    /// only means collection may take it while the push is in its grace period's tail, which
    /// the manifest write then detects, so it is logged, not returned.
    async fn wanted(&self, digest: &Digest, stored_now: bool) {
        if let Err(e) = self.tags.gc_unmark(digest, stored_now).await {
            tracing::warn!(%digest, error = %e, "could not unmark a blob for garbage collection");
        }
        // Verified bytes of a quarantined digest are stored again: it is back in service. A
        // record left behind would only mislabel a later miss, so failing is logged too.
        match self.tags.release_quarantine(digest).await {
            Ok(true) => {
                tracing::info!(%digest, "quarantined blob restored by a push of its correct bytes")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(%digest, error = %e, "could not release a quarantined blob"),
        }
    }

    /// Forget a failed upload entirely; errors only leave garbage for collection, so they are
    /// logged rather than hiding the error the client needs to see.
    async fn discard(&self, id: &UploadId) {
        if let Err(e) = self.blobs.abort_upload(id).await {
            tracing::warn!(upload = %id, error = %e, "could not discard upload data");
        }
        if let Err(e) = self.tags.delete_upload(id).await {
            tracing::warn!(upload = %id, error = %e, "could not discard upload session");
        }
    }

    /// Drop a part that was not recorded; one that stays is never published either.
    async fn discard_part(&self, id: &UploadId, part: &UploadPart) {
        if let Err(e) = self.blobs.discard_part(id, part).await {
            tracing::warn!(upload = %id, error = %e, "could not discard a refused part");
        }
    }

    /// Mount `digest` into a repository: `true` when it is stored (blobs are global, so there
    /// is nothing to copy), `false` when the caller must upload it. Whether the caller may read
    /// the repository it names as the source is for the caller of this to decide first.
    pub async fn mount(&self, digest: &Digest) -> Result<bool, Error> {
        if self.blobs.stat(digest).await?.is_some() {
            self.wanted(digest, false).await;
            return Ok(true);
        }
        Ok(false)
    }

    /// Push a whole blob at once (a monolithic upload): `body` must hash to `digest`, or
    /// nothing is published. `len` is its declared length, if known, checked against the
    /// size limit before reading.
    pub async fn push_blob<S, E>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        len: Option<u64>,
        body: S,
    ) -> Result<Digest, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        // Blobs are global: the repository says where the client pushed, not where the bytes
        // go, so it decides nothing here.
        let _ = repo;
        self.check_size(0, len)?;
        let id = new_upload_id();
        self.blobs.create_upload(&id).await?;
        let (hasher, part) = match self
            .receive(&id, 0, Hasher::new(digest.algorithm()), body)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.discard(&id).await;
                return Err(e);
            }
        };
        self.commit(&id, hasher, &[part], digest).await
    }

    /// Start an upload session in `repo` for `caller`, hashing with `algorithm` as chunks
    /// arrive. Only `caller` can see or continue it.
    pub async fn start_upload(
        &self,
        repo: &RepoName,
        caller: &Caller,
        algorithm: Algorithm,
    ) -> Result<UploadId, Error> {
        let id = new_upload_id();
        let now = now_millis();
        // Prepare the data first: a session row never points at an upload the store lacks.
        self.blobs.create_upload(&id).await?;
        self.tags
            .create_upload(UploadSession {
                id: id.clone(),
                repo: repo.clone(),
                owner: caller.owner(),
                received: 0,
                parts: Vec::new(),
                hash_state: Hasher::new(algorithm).save(),
                created_at: now,
                updated_at: now,
            })
            .await?;
        Ok(id)
    }

    /// The live session `id` of `repo`, if `caller` started it. Anyone else is told it does
    /// not exist, like a session of another repository.
    pub async fn upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        caller: &Caller,
    ) -> Result<Upload, Error> {
        let s = self
            .tags
            .get_upload(id)
            .await?
            .ok_or(Error::UploadUnknown)?;
        if &s.repo != repo || s.owner != caller.owner() {
            return Err(Error::UploadUnknown);
        }
        let ttl = i64::try_from(self.config.upload_ttl.as_millis()).unwrap_or(i64::MAX);
        if now_millis().saturating_sub(s.updated_at) > ttl {
            self.discard(id).await;
            return Err(Error::UploadUnknown);
        }
        if UploadPart::total(&s.parts) != Some(s.received) {
            // A session whose parts do not add up to its offset (one started before parts
            // were recorded) can never be published safely.
            self.discard(id).await;
            return Err(Error::UploadUnknown);
        }
        Ok(Upload { session: s })
    }

    /// Bytes received so far by upload `id`.
    pub async fn upload_status(
        &self,
        repo: &RepoName,
        id: &UploadId,
        caller: &Caller,
    ) -> Result<u64, Error> {
        Ok(self.upload(repo, id, caller).await?.offset())
    }

    /// Receive a chunk of `upload` as a new part, from the session's hash state on. A chunk
    /// with an `exact_len` must be exactly that long (a body of unknown length is only known
    /// once it has arrived); one that is not is discarded.
    async fn receive_chunk<S, E>(
        &self,
        upload: &Upload,
        exact_len: Option<u64>,
        body: S,
    ) -> Result<(Hasher, UploadPart), Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let s = &upload.session;
        let hasher = Hasher::restore(&s.hash_state)?;
        let (hasher, part) = self.receive(&s.id, s.received, hasher, body).await?;
        if let Some(declared) = exact_len
            && part.len != declared
        {
            self.discard_part(&s.id, &part).await;
            return Err(Error::ChunkLengthMismatch {
                declared,
                actual: part.len,
            });
        }
        Ok((hasher, part))
    }

    /// Append `body` to `upload`, exactly `exact_len` bytes when given. The session advances
    /// by compare-and-set on its offset: when another request on it got there first, this
    /// chunk is discarded and refused. Returns the new offset.
    pub async fn write_chunk<S, E>(
        &self,
        upload: &Upload,
        exact_len: Option<u64>,
        body: S,
    ) -> Result<u64, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let (hasher, part) = self.receive_chunk(upload, exact_len, body).await?;
        let id = upload.id();
        let from = upload.offset();
        let received = from + part.len;
        let record = if part.len == 0 {
            self.discard_part(id, &part).await;
            None
        } else {
            Some(part.clone())
        };
        match self
            .tags
            .advance_upload(id, from, record, hasher.save())
            .await
        {
            Ok(()) => Ok(received),
            Err(
                e @ (pierone_tagstore::Error::UploadOffsetConflict { .. }
                | pierone_tagstore::Error::UploadUnknown(_)),
            ) => {
                // Another request on this session got there first: this part is not the
                // upload's, and goes.
                self.discard_part(id, &part).await;
                Err(e.into())
            }
            // Whether the part was recorded is unknown: it stays, and is published only if
            // it was.
            Err(e) => Err(e.into()),
        }
    }

    /// Close `upload` with an optional last chunk (exactly `exact_len` bytes when given) and
    /// publish it as `digest`, if everything received hashes to that; otherwise the upload is
    /// discarded and nothing is published.
    pub async fn close_upload<S, E>(
        &self,
        upload: Upload,
        exact_len: Option<u64>,
        last: Option<S>,
        digest: &Digest,
    ) -> Result<Digest, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let (hasher, last) = match last {
            Some(body) => {
                let (hasher, part) = self.receive_chunk(&upload, exact_len, body).await?;
                (hasher, Some(part))
            }
            None => (Hasher::restore(&upload.session.hash_state)?, None),
        };
        let id = upload.session.id;
        let mut parts = upload.session.parts;
        parts.extend(last);
        self.commit(&id, hasher, &parts, digest).await
    }

    /// Append `body` to upload `id` of `caller`; when `expected_offset` is given, the chunk is
    /// refused unless the upload holds exactly that many bytes. Returns the new offset.
    pub async fn append<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        caller: &Caller,
        expected_offset: Option<u64>,
        body: S,
    ) -> Result<u64, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let upload = self.upload(repo, id, caller).await?;
        if let Some(start) = expected_offset
            && start != upload.offset()
        {
            return Err(Error::ChunkOutOfOrder {
                start,
                received: upload.offset(),
            });
        }
        self.write_chunk(&upload, None, body).await
    }

    /// Finish upload `id` of `caller` with an optional last chunk, publishing it as `digest`.
    pub async fn finish<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        caller: &Caller,
        digest: &Digest,
        last: Option<S>,
    ) -> Result<Digest, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let upload = self.upload(repo, id, caller).await?;
        self.close_upload(upload, None, last, digest).await
    }

    /// Cancel upload `id` of `caller`, discarding what it received.
    pub async fn cancel_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        caller: &Caller,
    ) -> Result<(), Error> {
        self.upload(repo, id, caller).await?;
        self.discard(id).await;
        Ok(())
    }
}
