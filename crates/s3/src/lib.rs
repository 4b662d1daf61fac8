//! Blobs in an S3 bucket: the [`BlobStore`] of production deployments, where several stateless
//! `pierone-server` replicas share one bucket.
//!
//! # Layout
//!
//! - `<prefix>blobs/<alg>/<2 hex>/<hex>`: published blobs, written once, never modified.
//! - `<prefix>uploads/<id>/<random>`: one *segment* object per request of an upload, under a
//!   key of its own that no other request writes (the key is the [`UploadPart`] key). Each
//!   request streams its body into an S3 multipart upload (parts of [`S3Config::part_size`],
//!   at least 5 MiB), completed only when the body ends, so a segment is visible whole or not
//!   at all.
//! - `<prefix>quarantine/<alg>/<hex>.<millis>`: blobs the scrub found corrupt, copied here
//!   before their blob key is deleted, as evidence.
//!
//! # Guarantees (those of [`BlobStore`])
//!
//! - A blob appears under its digest only through [`BlobStore::commit_upload`], by one
//!   `CopyObject` (a single segment) or one `CompleteMultipartUpload` (several), each atomic in
//!   S3: no reader ever sees part of a blob.
//! - Upload state lives in the bucket (segments) and, with the caller, in the database (which
//!   segments make the upload, and the hash state): any replica can continue an upload. A
//!   commit assembles exactly the segments it is given, each checked against its recorded
//!   size, so a segment written by a request that lost a race (on any replica) is never
//!   published; it is deleted with its upload.
//! - Memory per upload is bounded by two parts (one filling, one in flight), whatever the blob
//!   size.
//!
//! S3 errors are classified: missing objects are `None` or `UploadUnknown`, throttling
//! (`SlowDown`, 429, 503) is [`Error::Throttled`], network failures and 5xx are
//! [`Error::Unavailable`]; nothing is ever reported as success that S3 did not confirm.

#![warn(missing_docs)]

#[cfg(any(test, feature = "test-server"))]
pub mod test_server;

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use pierone_blobstore::{
    BlobEntry, BlobRead, BlobStore, ByteStream, Error, UploadPart, checked_range,
};
use pierone_protocol::{Digest, UploadId};

/// Settings of an [`S3BlobStore`].
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The bucket holding blobs and uploads.
    pub bucket: String,
    /// Prepended to every key, e.g. `pierone/`.
    pub prefix: String,
    /// Size of multipart parts; S3 requires at least 5 MiB for all but the last.
    pub part_size: usize,
    /// How long presigned download URLs stay valid, when redirects are enabled.
    pub redirect_ttl: Option<Duration>,
}

impl S3Config {
    /// The defaults for `bucket`: no prefix, 8 MiB parts, no redirects.
    pub fn new(bucket: impl Into<String>) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: String::new(),
            part_size: 8 << 20,
            redirect_ttl: None,
        }
    }
}

/// Where the AWS SDK finds the bucket, beyond what the standard AWS chain says.
#[derive(Debug, Clone, Default)]
pub struct S3Endpoint {
    /// The bucket's region; otherwise the AWS chain's, else `us-east-1`.
    pub region: Option<String>,
    /// An S3-compatible server instead of AWS (then with path-style addressing).
    pub url: Option<String>,
}

/// Blobs in S3 (or an S3-compatible server).
///
/// [`S3BlobStore::connect`] builds the client from the standard AWS configuration;
/// [`S3BlobStore::new`] takes one the caller built:
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
/// use pierone_blobstore::BlobStore;
/// use pierone_protocol::Digest;
/// use pierone_s3::{S3BlobStore, S3Config};
///
/// let client = aws_sdk_s3::Client::from_conf(
///     aws_sdk_s3::config::Builder::new()
///         .behavior_version(BehaviorVersion::latest())
///         .credentials_provider(Credentials::new("access", "secret", None, None, "example"))
///         .region(Region::new("eu-central-1"))
///         .endpoint_url("http://127.0.0.1:9000")
///         .force_path_style(true)
///         .build(),
/// );
/// let mut config = S3Config::new("images");
/// config.prefix = "registry/".into();
/// config.redirect_ttl = Some(Duration::from_secs(300));
/// let store = S3BlobStore::new(client, config);
/// // A presigned download URL is made without a request: clients fetch the blob from the
/// // bucket directly.
/// let d = Digest::sha256_of(b"layer");
/// let url = store.redirect_url(&d).await.unwrap().unwrap();
/// let key = format!("images/registry/blobs/sha256/{}/{}", &d.hex()[..2], d.hex());
/// assert!(url.starts_with(&format!("http://127.0.0.1:9000/{key}?")), "{url}");
/// assert!(url.contains("X-Amz-Expires=300"), "{url}");
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    client: Client,
    config: S3Config,
}

/// The smallest part S3 accepts (except for the last).
const MIN_PART: usize = 5 << 20;

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// Map an SDK error to a blob-store error by what it means for the caller.
fn classify<E>(op: &str, e: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().unwrap_or_default().to_owned();
    let transport = matches!(
        e,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
    );
    let text = format!("{op}: {}", aws_sdk_s3::error::DisplayErrorContext(&e));
    let throttled = matches!(
        code.as_str(),
        "SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded"
    ) || matches!(status, Some(429 | 503));
    if throttled {
        Error::Throttled(text)
    } else if transport || status.is_some_and(|s| s >= 500) {
        Error::Unavailable(text)
    } else {
        Error::Backend(text)
    }
}

/// A segment of an upload: its key and length.
#[derive(Debug, Clone)]
struct Segment {
    key: String,
    len: u64,
}

impl S3BlobStore {
    /// A store on `client`, whose set-up (endpoint, credentials, region) is the caller's.
    pub fn new(client: Client, config: S3Config) -> S3BlobStore {
        S3BlobStore { client, config }
    }

    /// A store whose client takes its credentials from the standard AWS chain (environment,
    /// profile, instance role) and `endpoint`, and which has checked that the bucket answers,
    /// so that a wrong bucket fails at start-up rather than at the first push.
    ///
    /// Checksums are computed only where S3 requires them: the registry verifies every byte
    /// itself, and S3-compatible servers mishandle the default `aws-chunked` trailers.
    pub async fn connect(config: S3Config, endpoint: S3Endpoint) -> Result<S3BlobStore, Error> {
        use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = endpoint.region {
            loader = loader.region(Region::new(region));
        }
        let sdk = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if sdk.region().is_none() {
            conf = conf.region(Region::new("us-east-1"));
        }
        if let Some(url) = endpoint.url {
            conf = conf.endpoint_url(url).force_path_style(true);
        }
        let store = S3BlobStore::new(Client::from_conf(conf.build()), config);
        store.stat(&Digest::sha256_of(b"")).await?;
        Ok(store)
    }

    /// The bucket this store writes to.
    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    fn blob_key(&self, digest: &Digest) -> String {
        let hex = digest.hex();
        format!(
            "{}blobs/{}/{}/{}",
            self.config.prefix,
            digest.algorithm().as_str(),
            &hex[..2],
            hex
        )
    }

    fn quarantine_key(&self, digest: &Digest) -> String {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!(
            "{}quarantine/{}/{}.{stamp}",
            self.config.prefix,
            digest.algorithm().as_str(),
            digest.hex()
        )
    }

    /// Copy object `source` of `size` bytes to `target` server-side: one `CopyObject` up to
    /// its 5 GiB limit, a multipart copy beyond.
    async fn copy(&self, source: &str, target: &str, size: u64) -> Result<(), Error> {
        if size <= 5 << 30 {
            self.client
                .copy_object()
                .bucket(&self.config.bucket)
                .key(target)
                .copy_source(format!("{}/{}", self.config.bucket, source))
                .send()
                .await
                .map_err(|e| classify("copy object", e))?;
            return Ok(());
        }
        let mut m = Multipart::start(self, target).await?;
        let copied: Result<(), Error> = async {
            let pieces = size.div_ceil(4 << 30);
            let piece = size.div_ceil(pieces);
            for k in 0..pieces {
                m.copy_part(self, source, k * piece..((k + 1) * piece).min(size))
                    .await?;
            }
            m.complete(self).await
        }
        .await;
        if let Err(e) = copied {
            m.abort(self).await;
            return Err(e);
        }
        Ok(())
    }

    fn upload_prefix(&self, id: &UploadId) -> String {
        format!("{}uploads/{}/", self.config.prefix, id.as_str())
    }

    fn segment_key(&self, id: &UploadId, part: &str) -> String {
        format!("{}{part}", self.upload_prefix(id))
    }

    /// Every object under `prefix`, with sizes.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.config.bucket)
                .prefix(prefix)
                // Segments sit directly under their upload's prefix. The delimiter keeps the
                // listing to that one level, which S3-compatible servers on a filesystem
                // answer without walking the whole bucket.
                .delimiter("/")
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| classify("list upload segments", e))?;
            for o in resp.contents() {
                if let Some(k) = o.key() {
                    out.push((k.to_owned(), o.size().unwrap_or(0).max(0) as u64));
                }
            }
            match resp.next_continuation_token() {
                Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// The stored segments of upload `id` that `parts` name, in the order given, each checked
    /// against its recorded size.
    async fn recorded_segments(
        &self,
        id: &UploadId,
        parts: &[UploadPart],
    ) -> Result<(Vec<Segment>, Vec<String>), Error> {
        let prefix = self.upload_prefix(id);
        let stored: std::collections::HashMap<String, u64> =
            self.list(&prefix).await?.into_iter().collect();
        if stored.is_empty() && !parts.is_empty() {
            return Err(Error::UploadUnknown(id.clone()));
        }
        let mut segs = Vec::with_capacity(parts.len());
        for p in parts {
            let key = self.segment_key(id, &p.key);
            // Keys are ours alone: a key that does not look like one was not recorded by us.
            if !valid_part_key(&p.key) {
                return Err(Error::PartUnknown {
                    id: id.clone(),
                    key: p.key.clone(),
                });
            }
            let Some(&len) = stored.get(&key) else {
                return Err(Error::PartUnknown {
                    id: id.clone(),
                    key: p.key.clone(),
                });
            };
            if len != p.len {
                return Err(Error::PartSizeMismatch {
                    id: id.clone(),
                    key: p.key.clone(),
                    stored: len,
                    expected: p.len,
                });
            }
            segs.push(Segment { key, len });
        }
        Ok((segs, stored.into_keys().collect()))
    }

    /// Stream the bytes of `segs`, one after the other.
    fn stream_segments(&self, segs: Vec<Segment>) -> ByteStream {
        let store = self.clone();
        let stream = futures_util::stream::iter(segs.into_iter().filter(|s| s.len > 0))
            .then(move |s| {
                let store = store.clone();
                async move {
                    let resp = store
                        .client
                        .get_object()
                        .bucket(&store.config.bucket)
                        .key(&s.key)
                        .send()
                        .await
                        .map_err(|e| std::io::Error::other(classify("read segment", e)))?;
                    Ok::<_, std::io::Error>(body_stream(resp.body))
                }
            })
            .try_flatten();
        Box::pin(stream)
    }

    async fn delete_keys(&self, keys: Vec<String>) -> Result<(), Error> {
        for batch in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> = batch
                .iter()
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| Error::Backend(e.to_string()))?;
            self.client
                .delete_objects()
                .bucket(&self.config.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| classify("delete upload segments", e))?;
        }
        Ok(())
    }

    /// Write `data` to `key`: a single PUT when it fits in one part, otherwise a multipart
    /// upload with one part uploading while the next fills. The object appears only when all
    /// of `data` arrived. Returns the bytes written.
    async fn put_stream(&self, key: &str, mut data: ByteStream) -> Result<u64, Error> {
        let part_size = self.config.part_size.max(MIN_PART);
        let mut buf = BytesMut::with_capacity(part_size);
        let mut total = 0u64;
        let mut multipart: Option<Multipart> = None;
        let result: Result<(), Error> = async {
            while let Some(chunk) = data.next().await {
                let chunk = chunk.map_err(Error::Body)?;
                total += chunk.len() as u64;
                let mut rest: &[u8] = &chunk;
                while !rest.is_empty() {
                    let take = rest.len().min(part_size - buf.len());
                    buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if buf.len() == part_size {
                        let part = std::mem::replace(&mut buf, BytesMut::with_capacity(part_size))
                            .freeze();
                        if multipart.is_none() {
                            multipart = Some(Multipart::start(self, key).await?);
                        }
                        if let Some(m) = multipart.as_mut() {
                            m.upload(self, part).await?;
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            if let Some(m) = multipart {
                m.abort(self).await;
            }
            return Err(e);
        }
        match multipart {
            None => {
                self.client
                    .put_object()
                    .bucket(&self.config.bucket)
                    .key(key)
                    .body(S3Body::from(buf.freeze()))
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(|e| classify("put upload segment", e))?;
            }
            Some(mut m) => {
                let done = async {
                    if !buf.is_empty() {
                        m.upload(self, buf.freeze()).await?;
                    }
                    m.complete(self).await
                }
                .await;
                if let Err(e) = done {
                    m.abort(self).await;
                    return Err(e);
                }
            }
        }
        Ok(total)
    }
}

/// A multipart upload in progress, with at most one part in flight.
struct Multipart {
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
    in_flight: Option<tokio::task::JoinHandle<Result<CompletedPart, Error>>>,
}

impl Multipart {
    async fn start(store: &S3BlobStore, key: &str) -> Result<Multipart, Error> {
        let resp = store
            .client
            .create_multipart_upload()
            .bucket(&store.config.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("start multipart upload", e))?;
        Ok(Multipart {
            key: key.to_owned(),
            upload_id: resp.upload_id().unwrap_or_default().to_owned(),
            parts: Vec::new(),
            in_flight: None,
        })
    }

    async fn settle(&mut self) -> Result<(), Error> {
        if let Some(h) = self.in_flight.take() {
            let part = h.await.map_err(|e| Error::Backend(e.to_string()))??;
            self.parts.push(part);
        }
        Ok(())
    }

    async fn upload(&mut self, store: &S3BlobStore, data: Bytes) -> Result<(), Error> {
        self.settle().await?;
        let number = (self.parts.len() + 1) as i32;
        let req = store
            .client
            .upload_part()
            .bucket(&store.config.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(S3Body::from(data));
        self.in_flight = Some(tokio::spawn(async move {
            // The registry hashes every byte it receives and verifies the digest before a blob
            // is published; signing the payload too would hash it a second time (TLS protects
            // it on the way to S3).
            let resp = req
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| classify("upload part", e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(resp.e_tag().map(str::to_owned))
                .build())
        }));
        Ok(())
    }

    /// Copy `range` of the object `source` in as the next part, server-side.
    async fn copy_part(
        &mut self,
        store: &S3BlobStore,
        source: &str,
        range: Range<u64>,
    ) -> Result<(), Error> {
        self.settle().await?;
        let number = (self.parts.len() + 1) as i32;
        let resp = store
            .client
            .upload_part_copy()
            .bucket(&store.config.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .copy_source(format!("{}/{}", store.config.bucket, source))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(|e| classify("copy part", e))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(
                    resp.copy_part_result()
                        .and_then(|r| r.e_tag())
                        .map(str::to_owned),
                )
                .build(),
        );
        Ok(())
    }

    async fn complete(&mut self, store: &S3BlobStore) -> Result<(), Error> {
        self.settle().await?;
        store
            .client
            .complete_multipart_upload()
            .bucket(&store.config.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("complete multipart upload", e))?;
        Ok(())
    }

    /// Best effort: an abandoned multipart upload is invisible anyway, and a bucket lifecycle
    /// rule removes what an abort misses.
    async fn abort(mut self, store: &S3BlobStore) {
        if let Some(h) = self.in_flight.take() {
            let _ = h.await;
        }
        let _ = store
            .client
            .abort_multipart_upload()
            .bucket(&store.config.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
    }
}

/// Whether `key` is a part key this store hands out (32 hex digits), so that no recorded
/// value can reach outside its upload's prefix.
fn valid_part_key(key: &str) -> bool {
    key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

fn body_stream(body: S3Body) -> ByteStream {
    Box::pin(futures_util::stream::unfold(body, |mut b| async move {
        b.next()
            .await
            .map(|r| (r.map_err(std::io::Error::other), b))
    }))
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        match self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(self.blob_key(digest))
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(classify("stat blob", e)),
        }
    }

    async fn get(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobRead>, Error> {
        // One GET tells both the bytes and the blob's size (Content-Range or Content-Length);
        // a HEAD first would cost every pull another round trip. Only what a GET cannot
        // express (an empty or inverted range) or refuses (416) asks for the size separately.
        let mut req = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(self.blob_key(digest));
        match &range {
            Some(r) if r.start >= r.end => {
                let Some(total_size) = self.stat(digest).await? else {
                    return Ok(None);
                };
                checked_range(range, total_size)?;
                return Ok(Some(BlobRead {
                    total_size,
                    body: Box::pin(futures_util::stream::empty()),
                }));
            }
            Some(r) => req = req.range(format!("bytes={}-{}", r.start, r.end - 1)),
            None => {}
        }
        let o = match req.send().await {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                let Some(total_size) = self.stat(digest).await? else {
                    return Ok(None);
                };
                return checked_range(range, total_size).map(|_| None);
            }
            Err(e) => return Err(classify("get blob", e)),
        };
        let total_size = match &range {
            None => o.content_length().unwrap_or(0).max(0) as u64,
            Some(_) => o
                .content_range()
                .and_then(|cr| cr.rsplit('/').next())
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| Error::Backend("ranged GET without Content-Range".into()))?,
        };
        // S3 trims a range that runs past the end; the registry's contract refuses it.
        checked_range(range, total_size)?;
        Ok(Some(BlobRead {
            total_size,
            body: body_stream(o.body),
        }))
    }

    async fn create_upload(&self, _id: &UploadId) -> Result<(), Error> {
        // Segments are objects of their own: there is nothing to prepare.
        Ok(())
    }

    async fn write_part(&self, id: &UploadId, data: ByteStream) -> Result<UploadPart, Error> {
        let key = uuid::Uuid::new_v4().simple().to_string();
        let len = self.put_stream(&self.segment_key(id, &key), data).await?;
        Ok(UploadPart { key, len })
    }

    async fn discard_part(&self, id: &UploadId, part: &UploadPart) -> Result<(), Error> {
        if !valid_part_key(&part.key) {
            return Ok(());
        }
        self.delete_keys(vec![self.segment_key(id, &part.key)])
            .await
    }

    async fn read_upload(&self, id: &UploadId, parts: &[UploadPart]) -> Result<ByteStream, Error> {
        let (segs, _) = self.recorded_segments(id, parts).await?;
        Ok(self.stream_segments(segs))
    }

    async fn commit_upload(
        &self,
        id: &UploadId,
        parts: &[UploadPart],
        digest: &Digest,
    ) -> Result<bool, Error> {
        // An upload without parts is the empty blob (the caller verified its digest).
        let (whole, all_keys) = self.recorded_segments(id, parts).await?;
        let size: u64 = whole.iter().map(|s| s.len).sum();
        let target = self.blob_key(digest);
        let stored = self.stat(digest).await?.is_none();
        if !stored {
            // Stored already: restart its age (garbage collection reads LastModified) by
            // copying it onto itself, as a re-push of the blob must.
            self.client
                .copy_object()
                .bucket(&self.config.bucket)
                .key(&target)
                .copy_source(format!("{}/{}", self.config.bucket, target))
                .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
                .send()
                .await
                .map_err(|e| classify("refresh blob", e))?;
        } else {
            let whole: Vec<Segment> = whole.into_iter().filter(|s| s.len > 0).collect();
            let single = whole.len() == 1;
            if whole.is_empty() {
                // The empty blob: nothing to copy.
                self.put_stream(&target, Box::pin(futures_util::stream::empty()))
                    .await?;
            } else if single && size <= 5 << 30 {
                // One request carried the whole blob (monolithic pushes, docker's single PATCH):
                // a server-side copy publishes it atomically.
                self.client
                    .copy_object()
                    .bucket(&self.config.bucket)
                    .key(&target)
                    .copy_source(format!("{}/{}", self.config.bucket, whole[0].key))
                    .send()
                    .await
                    .map_err(|e| classify("publish blob", e))?;
            } else if whole
                .iter()
                .take(whole.len().saturating_sub(1))
                .all(|s| s.len >= MIN_PART as u64)
            {
                // Several segments, each big enough to be a part: S3 assembles them
                // server-side, and the blob appears when the multipart upload completes.
                let mut m = Multipart::start(self, &target).await?;
                let copied: Result<(), Error> = async {
                    for s in &whole {
                        // A part copy is limited to 5 GiB: split bigger segments evenly.
                        let pieces = s.len.div_ceil(4 << 30).max(1);
                        let piece = s.len.div_ceil(pieces);
                        for k in 0..pieces {
                            let range = k * piece..((k + 1) * piece).min(s.len);
                            m.copy_part(self, &s.key, range).await?;
                        }
                    }
                    m.complete(self).await
                }
                .await;
                if let Err(e) = copied {
                    m.abort(self).await;
                    return Err(e);
                }
            } else {
                // Segments too small to be parts (clients sending chunks under 5 MiB): stream
                // them, in order, into one object that appears when complete.
                let written = self
                    .put_stream(&target, self.stream_segments(whole))
                    .await?;
                if written != size {
                    return Err(Error::Backend(format!(
                        "segments held {written} bytes where {size} were expected"
                    )));
                }
            }
            // Defence in depth: what S3 now holds under the digest is the recorded size.
            match self.stat(digest).await? {
                Some(n) if n == size => {}
                other => {
                    return Err(Error::Backend(format!(
                        "published {other:?} bytes where the parts add up to {size}"
                    )));
                }
            }
        }
        if let Err(e) = self.delete_keys(all_keys).await {
            tracing::warn!(upload = %id, error = %e, "published, but could not delete the segments");
        }
        Ok(stored)
    }

    async fn abort_upload(&self, id: &UploadId) -> Result<(), Error> {
        let keys = self
            .list(&self.upload_prefix(id))
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect::<Vec<_>>();
        if keys.is_empty() {
            return Ok(());
        }
        self.delete_keys(keys).await
    }

    async fn list_blobs(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<BlobEntry>, Error> {
        // Keys sort as blobs/<alg>/<2 hex>/<hex>, which is digest order.
        let prefix = format!("{}blobs/", self.config.prefix);
        let mut start_after = after.map(|d| self.blob_key(d));
        let mut out = Vec::new();
        while out.len() < limit {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.config.bucket)
                .prefix(&prefix)
                .set_start_after(start_after.clone())
                .max_keys(i32::try_from(limit - out.len()).unwrap_or(1000).min(1000))
                .send()
                .await
                .map_err(|e| classify("list blobs", e))?;
            for o in resp.contents() {
                let Some(key) = o.key() else { continue };
                start_after = Some(key.to_owned());
                let mut parts = key.strip_prefix(&prefix).unwrap_or("").split('/');
                let (Some(alg), Some(_), Some(hex), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let Ok(digest) = format!("{alg}:{hex}").parse::<Digest>() else {
                    continue;
                };
                out.push(BlobEntry {
                    digest,
                    size: o.size().unwrap_or(0).max(0) as u64,
                    stored_at: o
                        .last_modified()
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(0),
                });
            }
            if resp.is_truncated() != Some(true) || resp.contents().is_empty() {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<bool, Error> {
        if self.stat(digest).await?.is_none() {
            return Ok(false);
        }
        self.client
            .delete_object()
            .bucket(&self.config.bucket)
            .key(self.blob_key(digest))
            .send()
            .await
            .map_err(|e| classify("delete blob", e))?;
        Ok(true)
    }

    async fn quarantine_blob(&self, digest: &Digest) -> Result<Option<String>, Error> {
        let Some(size) = self.stat(digest).await? else {
            return Ok(None);
        };
        let source = self.blob_key(digest);
        let target = self.quarantine_key(digest);
        self.copy(&source, &target, size).await?;
        // The blob key goes only once the copy is confirmed whole: the evidence is never lost.
        let head = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(&target)
            .send()
            .await
            .map_err(|e| classify("stat quarantined copy", e))?;
        let copied = head.content_length().unwrap_or(-1);
        if u64::try_from(copied).ok() != Some(size) {
            return Err(Error::Backend(format!(
                "the quarantine copy of {digest} holds {copied} bytes, not {size}; the blob stays"
            )));
        }
        self.client
            .delete_object()
            .bucket(&self.config.bucket)
            .key(&source)
            .send()
            .await
            .map_err(|e| classify("delete quarantined blob", e))?;
        Ok(Some(format!("s3://{}/{target}", self.config.bucket)))
    }

    async fn redirect_url(&self, digest: &Digest) -> Result<Option<String>, Error> {
        let Some(ttl) = self.config.redirect_ttl else {
            return Ok(None);
        };
        let presign =
            PresigningConfig::expires_in(ttl).map_err(|e| Error::Backend(e.to_string()))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(self.blob_key(digest))
            .presigned(presign)
            .await
            .map_err(|e| classify("presign blob URL", e))?;
        Ok(Some(req.uri().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pierone_blobstore::conformance_tests!(async {
        let s3 = test_server::TestS3::start("conformance").await;
        let mut config = S3Config::new(&s3.bucket);
        config.prefix = "registry/".into();
        // The smallest part S3 allows, so that the suite's 48 MiB upload spans many parts.
        config.part_size = MIN_PART;
        let store = S3BlobStore::new(s3.client.clone(), config);
        (store, s3)
    });

    #[tokio::test]
    async fn quarantine_copies_the_bytes_under_quarantine() {
        let s3 = test_server::TestS3::start("quarantine").await;
        let mut config = S3Config::new(&s3.bucket);
        config.prefix = "registry/".into();
        let store = S3BlobStore::new(s3.client.clone(), config);
        let d = pierone_blobstore::conformance::put(&store, b"evidence").await;
        let kept = store.quarantine_blob(&d).await.unwrap().unwrap();
        let key = kept.strip_prefix(&format!("s3://{}/", s3.bucket)).unwrap();
        assert!(key.starts_with("registry/quarantine/sha256/"), "{key}");
        let o = s3
            .client
            .get_object()
            .bucket(&s3.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let bytes = o.body.collect().await.unwrap().into_bytes();
        assert_eq!(&bytes[..], b"evidence");
        assert_eq!(store.stat(&d).await.unwrap(), None);
    }
}
