//! The blob endpoints: reads with ranges and redirects, and the upload protocol (sessions,
//! chunks with `Content-Range`, monolithic pushes, mounts) over the service's uploads.

use std::collections::HashMap;

use futures_util::TryStreamExt;
use http_body_util::BodyStream;
use hyper::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use hyper::{Request, Response, StatusCode};
use pierone_auth::{Access, Principal};
use pierone_protocol::{Algorithm, Digest, RepoName, UploadId};
use pierone_service::Error as S;

use crate::error::RegistryError;
use crate::response::{self, Resp, header_value, range_header};
use crate::{Registry, RequestBody, caller};

pub(crate) fn query<B>(req: &Request<B>) -> HashMap<String, String> {
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

pub(crate) fn content_length<B>(req: &Request<B>) -> Option<u64> {
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

/// A request body as the stream of its data frames (trailers are not data).
fn data<B: RequestBody>(
    body: B,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, B::Error>> + Send + 'static {
    BodyStream::new(body).try_filter_map(|frame| std::future::ready(Ok(frame.into_data().ok())))
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

impl Registry {
    pub(crate) async fn get_blob<B>(
        &self,
        digest: &Digest,
        req: &Request<B>,
        with_body: bool,
    ) -> Result<Resp, RegistryError> {
        let svc = &self.service;
        let ranged = req.headers().contains_key(RANGE);
        // A whole-blob GET is one store read, which also reports the size: no stat first
        // (on S3 that saves a HEAD request per pull).
        if with_body && !ranged && svc.blob_redirect(digest).await?.is_none() {
            let read = svc.blob(digest, None).await?;
            return Ok(blob_response(
                digest,
                read.total_size,
                None,
                response::stream(read.body),
            ));
        }
        let size = svc.blob_size(digest).await?;
        if with_body && let Some(url) = svc.blob_redirect(digest).await? {
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
            response::stream(svc.blob(digest, range.clone()).await?.body)
        } else {
            response::empty()
        };
        Ok(blob_response(digest, size, range, body))
    }

    pub(crate) async fn start_upload<B: RequestBody>(
        &self,
        repo: &RepoName,
        principal: &Principal,
        req: Request<B>,
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
                if self.service.mount(&digest).await? {
                    return Ok(created(&blob_location(repo, &digest), &digest));
                }
            }
        }
        if let Some(d) = q.get("digest") {
            let digest: Digest = d.parse()?;
            let len = content_length(&req);
            let stored = self
                .service
                .push_blob(repo, &digest, len, data(req.into_body()))
                .await?;
            return Ok(created(&blob_location(repo, &stored), &stored));
        }
        let algorithm = match q.get("digest-algorithm").map(String::as_str) {
            None | Some("sha256") => Algorithm::Sha256,
            Some("sha512") => Algorithm::Sha512,
            Some(other) => {
                return Err(
                    pierone_protocol::Error::UnsupportedDigestAlgorithm(other.to_owned()).into(),
                );
            }
        };
        let id = self
            .service
            .start_upload(repo, &caller(principal), algorithm)
            .await?;
        Ok(accepted(StatusCode::ACCEPTED, repo, &id, 0))
    }

    pub(crate) async fn upload_status(
        &self,
        repo: &RepoName,
        id: &UploadId,
        principal: &Principal,
    ) -> Result<Resp, RegistryError> {
        let received = self
            .service
            .upload_status(repo, id, &caller(principal))
            .await?;
        Ok(accepted(StatusCode::NO_CONTENT, repo, id, received))
    }

    /// Check a chunk's `Content-Range` against the upload's offset and the declared length;
    /// the length the range names, when there is one, to hold the received part to afterwards.
    fn chunk_len<B>(req: &Request<B>, received: u64) -> Result<Option<u64>, RegistryError> {
        let Some(cr) = req.headers().get(CONTENT_RANGE) else {
            return Ok(None);
        };
        let (start, end) = parse_content_range(cr.to_str().unwrap_or("?"))?;
        if start != received {
            return Err(S::ChunkOutOfOrder { start, received }.into());
        }
        let span = end - start + 1;
        if let Some(len) = content_length(req)
            && len != span
        {
            return Err(S::ChunkLengthMismatch {
                declared: span,
                actual: len,
            }
            .into());
        }
        Ok(Some(span))
    }

    pub(crate) async fn upload_chunk<B: RequestBody>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        principal: &Principal,
        req: Request<B>,
    ) -> Result<Resp, RegistryError> {
        let upload = self.service.upload(repo, id, &caller(principal)).await?;
        let declared = Self::chunk_len(&req, upload.offset())?;
        self.service
            .check_size(upload.offset(), content_length(&req))?;
        let received = self
            .service
            .write_chunk(&upload, declared, data(req.into_body()))
            .await?;
        Ok(accepted(StatusCode::ACCEPTED, repo, id, received))
    }

    pub(crate) async fn finish_upload<B: RequestBody>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        principal: &Principal,
        req: Request<B>,
    ) -> Result<Resp, RegistryError> {
        let q = query(&req);
        let digest: Digest = q
            .get("digest")
            .ok_or(RegistryError::DigestMissing)?
            .parse()?;
        let upload = self.service.upload(repo, id, &caller(principal)).await?;
        let declared = Self::chunk_len(&req, upload.offset())?;
        self.service
            .check_size(upload.offset(), content_length(&req))?;
        // Without Content-Length or Transfer-Encoding, HTTP/1 has no body: the usual close.
        let last = (!req.body().is_end_stream()).then(|| data(req.into_body()));
        let digest = self
            .service
            .close_upload(upload, declared, last, &digest)
            .await?;
        Ok(created(&blob_location(repo, &digest), &digest))
    }

    pub(crate) async fn cancel_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        principal: &Principal,
    ) -> Result<Resp, RegistryError> {
        self.service
            .cancel_upload(repo, id, &caller(principal))
            .await?;
        let mut r = Response::new(response::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        Ok(r)
    }
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
