//! Blob reads and the upload protocol: sessions, chunks, monolithic pushes and mounts.
//!
//! A blob is hashed while it streams in and is committed to the blob store only once its
//! digest is verified. Upload progress (offset and hasher state) lives in the tag store after
//! every request, so an upload can continue on another replica or after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::BodyStream;
use hyper::body::Incoming;
use hyper::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use hyper::{Request, Response, StatusCode};
use pierone_blobstore::Error as BlobError;
use pierone_protocol::{Algorithm, Digest, Hasher, RepoName, UploadId, UploadPart};
use pierone_tagstore::{UploadSession, now_millis};

use crate::Registry;
use crate::error::RegistryError;
use crate::response::{self, Resp, header_value, range_header};
use pierone_auth::{Access, Principal};

pub(crate) fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Query parameter `name` as a number; `None` when absent, `InvalidQuery` when not a number.
pub(crate) fn query_number<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<T>, RegistryError> {
    q.get(name)
        .map(|v| {
            v.parse().map_err(|_| RegistryError::InvalidQuery {
                name,
                value: if v.is_empty() {
                    "empty, not a number".to_owned()
                } else {
                    format!("{v}, not a number")
                },
            })
        })
        .transpose()
}

pub(crate) fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Parse a blob `Range: bytes=a-b` (also `a-` and `-n`) against `size`.
fn parse_range(value: &str, size: u64) -> Result<Option<std::ops::Range<u64>>, RegistryError> {
    let bad = || RegistryError::RangeNotSatisfiable { size };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        // Unknown units are ignored, as RFC 9110 asks.
        return Ok(None);
    };
    if spec.contains(',') {
        // Multiple ranges would need multipart responses; serving the whole blob is allowed.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| bad())?;
            (size.saturating_sub(n), size)
        }
        (s, "") => (s.parse().map_err(|_| bad())?, size),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| bad())?;
            let e: u64 = e.parse().map_err(|_| bad())?;
            if e < s {
                return Err(bad());
            }
            (s, e.saturating_add(1).min(size))
        }
    };
    if start >= size || start >= end {
        return Err(bad());
    }
    Ok(Some(start..end))
}

/// Parse an upload `Content-Range: <start>-<end>` (tolerating a `bytes ` prefix and `/total`).
fn parse_content_range(value: &str) -> Result<(u64, u64), RegistryError> {
    let bad = || RegistryError::ContentRangeInvalid(value.to_owned());
    let v = value.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v);
    let v = v.split('/').next().unwrap_or(v);
    let (s, e) = v.split_once('-').ok_or_else(bad)?;
    let s: u64 = s.trim().parse().map_err(|_| bad())?;
    let e: u64 = e.trim().parse().map_err(|_| bad())?;
    // The span (e - s + 1) must be a number too: `0-18446744073709551615` is not a chunk.
    if e < s || e.checked_add(1).is_none() {
        return Err(bad());
    }
    Ok((s, e))
}

/// The shared progress of a body being streamed into the blob store.
#[derive(Debug)]
struct Progress {
    hasher: Option<Hasher>,
    received: u64,
    limit: u64,
    too_large: bool,
}

fn blob_location(repo: &RepoName, digest: &Digest) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

fn upload_location(repo: &RepoName, id: &UploadId) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// The answer to a blob GET or HEAD: the whole blob of `size` bytes, or `range` of it.
fn blob_response(
    digest: &Digest,
    size: u64,
    range: Option<std::ops::Range<u64>>,
    body: response::Body,
) -> Resp {
    let (status, len) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.end - r.start),
        None => (StatusCode::OK, size),
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_LENGTH, len.into());
    h.insert(CONTENT_TYPE, header_value("application/octet-stream"));
    h.insert("Docker-Content-Digest", header_value(digest.as_str()));
    h.insert(ACCEPT_RANGES, header_value("bytes"));
    h.insert("ETag", header_value(&format!("\"{digest}\"")));
    if let Some(r) = range {
        h.insert(
            CONTENT_RANGE,
            header_value(&format!("bytes {}-{}/{size}", r.start, r.end - 1)),
        );
    }
    r
}

fn new_upload_id() -> UploadId {
    UploadId::from_random(*uuid::Uuid::new_v4().as_bytes())
}

impl Registry {
    pub(crate) async fn get_blob(
        &self,
        _repo: &RepoName,
        digest: &Digest,
        req: &Request<Incoming>,
        with_body: bool,
    ) -> Result<Resp, RegistryError> {
        let ranged = req.headers().contains_key(RANGE);
        // A whole-blob GET is one store read, which also reports the size: no stat first
        // (on S3 that saves a HEAD request per pull).
        if with_body && !ranged && self.blobs.redirect_url(digest).await?.is_none() {
            let Some(read) = self.blobs.get(digest, None).await? else {
                return Err(self.missing_blob(digest).await);
            };
            return Ok(blob_response(
                digest,
                read.total_size,
                None,
                response::stream(read.body),
            ));
        }
        let Some(size) = self.blobs.stat(digest).await? else {
            return Err(self.missing_blob(digest).await);
        };
        if with_body && let Some(url) = self.blobs.redirect_url(digest).await? {
            // The store serves the bytes itself (a presigned S3 URL): pull traffic bypasses
            // the registry, which still decided who may read.
            let mut r = Response::new(response::empty());
            *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            r.headers_mut().insert(LOCATION, header_value(&url));
            r.headers_mut()
                .insert("Docker-Content-Digest", header_value(digest.as_str()));
            return Ok(r);
        }
        let range = match req.headers().get(RANGE).and_then(|v| v.to_str().ok()) {
            Some(v) => parse_range(v, size)?,
            None => None,
        };
        let body = if with_body {
            let Some(read) = self.blobs.get(digest, range.clone()).await? else {
                return Err(self.missing_blob(digest).await);
            };
            response::stream(read.body)
        } else {
            response::empty()
        };
        Ok(blob_response(digest, size, range, body))
    }

    /// Why `digest` cannot be read: quarantined, or simply not stored. Asked only on a miss,
    /// so pulls of stored blobs never pay for it. When the metadata store cannot answer, the
    /// blob is reported unknown: it is not served either way.
    async fn missing_blob(&self, digest: &Digest) -> RegistryError {
        match self.tags.quarantine_record(digest).await {
            Ok(Some(q)) => RegistryError::BlobQuarantined {
                digest: digest.clone(),
                at: crate::api::rfc3339(q.at),
                by: q.principal,
            },
            Ok(None) => RegistryError::BlobUnknown(digest.clone()),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "could not read the quarantine record of a missing blob");
                RegistryError::BlobUnknown(digest.clone())
            }
        }
    }

    /// Stream `body` into a new part of upload `id`, hashing as it goes; `offset` is where the
    /// part would start (for the size limit). Returns the hasher over everything up to the
    /// part's end, and the part.
    async fn receive(
        &self,
        id: &UploadId,
        offset: u64,
        hasher: Hasher,
        body: Incoming,
    ) -> Result<(Hasher, UploadPart), RegistryError> {
        let progress = Arc::new(Mutex::new(Progress {
            hasher: Some(hasher),
            received: offset,
            limit: self.config.max_blob_size,
            too_large: false,
        }));
        let p = progress.clone();
        let received = self.metrics.bytes_in.clone();
        let stream = BodyStream::new(body)
            .map_err(std::io::Error::other)
            .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) })
            .and_then(move |chunk: Bytes| {
                received.inc_by(chunk.len() as u64);
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
            return Err(RegistryError::BodyTooLarge {
                size: st.received,
                limit: st.limit,
            });
        }
        let part = part?;
        let hasher = st.hasher.take().ok_or(RegistryError::UploadUnknown)?;
        Ok((hasher, part))
    }

    fn check_declared_size(
        &self,
        offset: u64,
        req: &Request<Incoming>,
    ) -> Result<(), RegistryError> {
        if let Some(len) = content_length(req) {
            let total = offset.saturating_add(len);
            if total > self.config.max_blob_size {
                return Err(RegistryError::BodyTooLarge {
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
        repo: &RepoName,
        id: &UploadId,
        hasher: Hasher,
        parts: &[UploadPart],
        expected: &Digest,
    ) -> Result<Resp, RegistryError> {
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
            return Err(RegistryError::DigestMismatch {
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
        Ok(created(&blob_location(repo, expected), expected))
    }

    /// The digest of the stored `parts` of upload `id` under `algorithm`, read as a stream.
    async fn rehash(
        &self,
        id: &UploadId,
        parts: &[UploadPart],
        algorithm: Algorithm,
    ) -> Result<Digest, RegistryError> {
        let mut body = self.blobs.read_upload(id, parts).await?;
        let mut h = Hasher::new(algorithm);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| {
                RegistryError::Blobs(BlobError::Io {
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

    pub(crate) async fn start_upload(
        &self,
        repo: &RepoName,
        principal: &Principal,
        req: Request<Incoming>,
    ) -> Result<Resp, RegistryError> {
        let q = query(&req);
        if let Some(mount) = q.get("mount") {
            // A mount that cannot be satisfied falls back to a new upload session, as the
            // spec requires. Blobs are global, but the client must be allowed to read the
            // source it names.
            let from = q.get("from").and_then(|f| f.parse::<RepoName>().ok());
            if let (Ok(digest), Some(from)) = (mount.parse::<Digest>(), from) {
                let read = Access::Read {
                    team: Some(from.team().to_owned()),
                };
                self.config.auth.authorize(principal, &read).await?;
                if self.blobs.stat(&digest).await?.is_some() {
                    self.wanted(&digest, false).await;
                    return Ok(created(&blob_location(repo, &digest), &digest));
                }
            }
        }
        if let Some(d) = q.get("digest") {
            let digest: Digest = d.parse()?;
            self.check_declared_size(0, &req)?;
            let id = new_upload_id();
            self.blobs.create_upload(&id).await?;
            let (hasher, part) = match self
                .receive(&id, 0, Hasher::new(digest.algorithm()), req.into_body())
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    self.discard(&id).await;
                    return Err(e);
                }
            };
            return self.commit(repo, &id, hasher, &[part], &digest).await;
        }
        let algorithm = match q.get("digest-algorithm").map(String::as_str) {
            None | Some("sha256") => Algorithm::Sha256,
            Some("sha512") => Algorithm::Sha512,
            Some(other) => {
                return Err(RegistryError::Protocol(
                    pierone_protocol::Error::UnsupportedDigestAlgorithm(other.to_owned()),
                ));
            }
        };
        let id = new_upload_id();
        let now = now_millis();
        // Prepare the data first: a session row never points at an upload the store lacks.
        self.blobs.create_upload(&id).await?;
        self.tags
            .create_upload(UploadSession {
                id: id.clone(),
                repo: repo.clone(),
                owner: owner_of(principal),
                received: 0,
                parts: Vec::new(),
                hash_state: Hasher::new(algorithm).save(),
                created_at: now,
                updated_at: now,
            })
            .await?;
        Ok(accepted(StatusCode::ACCEPTED, repo, &id, 0))
    }

    /// The live session `id` of `repo`, if `principal` started it. Anyone else is told it
    /// does not exist, like a session of another repository.
    async fn session(
        &self,
        repo: &RepoName,
        id: &UploadId,
        principal: &Principal,
    ) -> Result<UploadSession, RegistryError> {
        let s = self
            .tags
            .get_upload(id)
            .await?
            .ok_or(RegistryError::UploadUnknown)?;
        if &s.repo != repo || s.owner != owner_of(principal) {
            return Err(RegistryError::UploadUnknown);
        }
        let ttl = i64::try_from(self.config.upload_ttl.as_millis()).unwrap_or(i64::MAX);
        if now_millis().saturating_sub(s.updated_at) > ttl {
            self.discard(id).await;
            return Err(RegistryError::UploadUnknown);
        }
        if UploadPart::total(&s.parts) != Some(s.received) {
            // A session whose parts do not add up to its offset (one started before parts
            // were recorded) can never be published safely.
            self.discard(id).await;
            return Err(RegistryError::UploadUnknown);
        }
        Ok(s)
    }

    pub(crate) async fn upload_status(
        &self,
        repo: &RepoName,
        id: &UploadId,
        principal: &Principal,
    ) -> Result<Resp, RegistryError> {
        let s = self.session(repo, id, principal).await?;
        Ok(accepted(StatusCode::NO_CONTENT, repo, id, s.received))
    }

    /// Check a chunk's `Content-Range` against the session's offset and the declared length;
    /// the length the range names, when there is one, to hold the received part to afterwards.
    fn chunk_len(req: &Request<Incoming>, received: u64) -> Result<Option<u64>, RegistryError> {
        let Some(cr) = req.headers().get(CONTENT_RANGE) else {
            return Ok(None);
        };
        let (start, end) = parse_content_range(cr.to_str().unwrap_or("?"))?;
        if start != received {
            return Err(RegistryError::ChunkOutOfOrder { start, received });
        }
        let span = end - start + 1;
        if let Some(len) = content_length(req)
            && len != span
        {
            return Err(RegistryError::ChunkLengthMismatch {
                declared: span,
                actual: len,
            });
        }
        Ok(Some(span))
    }

    /// Receive a chunk of session `s` as a new part, from the session's hash state on. A chunk
    /// with a `Content-Range` must be exactly as long as it names (a body sent without
    /// `Content-Length` is only known once it has arrived); one that is not is discarded.
    async fn receive_chunk(
        &self,
        s: &UploadSession,
        declared: Option<u64>,
        body: Incoming,
    ) -> Result<(Hasher, UploadPart), RegistryError> {
        let hasher = Hasher::restore(&s.hash_state)?;
        let (hasher, part) = self.receive(&s.id, s.received, hasher, body).await?;
        if let Some(declared) = declared
            && part.len != declared
        {
            self.discard_part(&s.id, &part).await;
            return Err(RegistryError::ChunkLengthMismatch {
                declared,
                actual: part.len,
            });
        }
        Ok((hasher, part))
    }

    pub(crate) async fn upload_chunk(
        &self,
        repo: &RepoName,
        id: &UploadId,
        principal: &Principal,
        req: Request<Incoming>,
    ) -> Result<Resp, RegistryError> {
        let s = self.session(repo, id, principal).await?;
        let declared = Self::chunk_len(&req, s.received)?;
        self.check_declared_size(s.received, &req)?;
        let (hasher, part) = self.receive_chunk(&s, declared, req.into_body()).await?;
        let received = s.received + part.len;
        let record = if part.len == 0 {
            self.discard_part(id, &part).await;
            None
        } else {
            Some(part.clone())
        };
        match self
            .tags
            .advance_upload(id, s.received, record, hasher.save())
            .await
        {
            Ok(()) => Ok(accepted(StatusCode::ACCEPTED, repo, id, received)),
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

    pub(crate) async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        principal: &Principal,
        req: Request<Incoming>,
    ) -> Result<Resp, RegistryError> {
        let q = query(&req);
        let digest: Digest = q
            .get("digest")
            .ok_or(RegistryError::DigestMissing)?
            .parse()?;
        let s = self.session(repo, id, principal).await?;
        let declared = Self::chunk_len(&req, s.received)?;
        self.check_declared_size(s.received, &req)?;
        // Without Content-Length or Transfer-Encoding, HTTP/1 has no body: the usual close.
        let has_body = !hyper::body::Body::is_end_stream(req.body());
        let (hasher, last) = if has_body {
            let (hasher, part) = self.receive_chunk(&s, declared, req.into_body()).await?;
            (hasher, Some(part))
        } else {
            (Hasher::restore(&s.hash_state)?, None)
        };
        let mut parts = s.parts;
        parts.extend(last);
        self.commit(repo, id, hasher, &parts, &digest).await
    }

    pub(crate) async fn cancel_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        principal: &Principal,
    ) -> Result<Resp, RegistryError> {
        self.session(repo, id, principal).await?;
        self.discard(id).await;
        let mut r = Response::new(response::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        Ok(r)
    }
}

/// Whose an upload session is: realm and uid, so that an employee and a service of the same
/// name are two owners.
fn owner_of(principal: &Principal) -> String {
    format!("{}/{}", principal.realm(), principal.uid())
}

fn created(location: &str, digest: &Digest) -> Resp {
    let mut r = Response::new(response::empty());
    *r.status_mut() = StatusCode::CREATED;
    let h = r.headers_mut();
    h.insert(LOCATION, header_value(location));
    h.insert("Docker-Content-Digest", header_value(digest.as_str()));
    h.insert(CONTENT_LENGTH, 0.into());
    r
}

fn accepted(status: StatusCode, repo: &RepoName, id: &UploadId, received: u64) -> Resp {
    let mut r = Response::new(response::empty());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(LOCATION, header_value(&upload_location(repo, id)));
    h.insert(RANGE, range_header(received));
    h.insert("Docker-Upload-UUID", header_value(id.as_str()));
    h.insert(CONTENT_LENGTH, 0.into());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some(0..10));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some(90..100));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some(90..100));
        assert_eq!(parse_range("bytes=50-500", 100).unwrap(), Some(50..100));
        assert_eq!(parse_range("items=0-1", 100).unwrap(), None);
        // The largest end a client can name is the whole blob, not an overflow.
        assert_eq!(
            parse_range("bytes=0-18446744073709551615", 100).unwrap(),
            Some(0..100)
        );
        for bad in ["bytes=100-", "bytes=5-2", "bytes=x-1", "bytes=", "bytes=-0"] {
            assert!(parse_range(bad, 100).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Whatever a client sends, a range is refused or lies within the blob.
        #[test]
        fn any_range_header(value in "(bytes=)?[0-9 -]{0,30}(,[0-9-]{0,10})?", size in 0u64..=u64::MAX) {
            if let Ok(Some(r)) = parse_range(&value, size) {
                proptest::prop_assert!(r.start < r.end && r.end <= size);
            }
        }

        #[test]
        fn numeric_ranges(a in proptest::prelude::any::<u64>(), b in proptest::prelude::any::<u64>(), size in 1u64..1 << 40) {
            let v = format!("bytes={a}-{b}");
            match parse_range(&v, size) {
                Ok(Some(r)) => {
                    proptest::prop_assert_eq!(r.start, a);
                    proptest::prop_assert_eq!(r.end, b.saturating_add(1).min(size));
                }
                Ok(None) => proptest::prop_assert!(false, "a bytes range is never ignored"),
                Err(_) => proptest::prop_assert!(a >= size || b < a),
            }
        }

        #[test]
        fn numeric_content_ranges(a in proptest::prelude::any::<u64>(), b in proptest::prelude::any::<u64>()) {
            if let Ok((s, e)) = parse_content_range(&format!("{a}-{b}")) {
                proptest::prop_assert!(s <= e && (e - s).checked_add(1).is_some());
            }
        }

        #[test]
        fn any_content_range(value in "(bytes )?[0-9a-z -]{0,40}(/[0-9*]{0,8})?") {
            if let Ok((s, e)) = parse_content_range(&value) {
                proptest::prop_assert!(s <= e);
            }
        }

        #[test]
        fn any_page_size(value in ".{0,24}") {
            let q: HashMap<String, String> = [("n".to_owned(), value.clone())].into();
            match query_number::<usize>(&q, "n") {
                Ok(Some(n)) => proptest::prop_assert_eq!(Ok(n), value.parse::<usize>()),
                Ok(None) => proptest::prop_assert!(false, "present parameter read as absent"),
                Err(_) => proptest::prop_assert!(value.parse::<usize>().is_err()),
            }
        }
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99").unwrap(), (0, 99));
        assert_eq!(parse_content_range("bytes 100-199/*").unwrap(), (100, 199));
        assert!(parse_content_range("9-1").is_err());
        assert!(parse_content_range("0-18446744073709551615").is_err());
        assert!(parse_content_range("abc").is_err());
    }
}
