//! The conformance suite: the guarantees of [`BlobStore`], checked the same way for every
//! implementation.
//!
//! A backend runs it with [`conformance_tests!`](crate::conformance_tests), passing an async
//! block that yields `(store, guard)`; the guard (a temporary directory, a server handle) lives
//! as long as the test.

// This module is a test suite shipped as library code: a failed unwrap is a failed check.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use futures_util::StreamExt;
use pierone_protocol::{Digest, UploadId};

use crate::{BlobStore, ByteStream, Error};

/// A [`ByteStream`] of the given chunks.
pub fn stream_of(chunks: &[&[u8]]) -> ByteStream {
    let v: Vec<Result<Bytes, std::io::Error>> = chunks
        .iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures_util::stream::iter(v))
}

/// A stream that yields `chunks` and then fails, like a client that disconnects mid-body.
pub fn failing_stream(chunks: &[&[u8]]) -> ByteStream {
    let mut v: Vec<Result<Bytes, std::io::Error>> = chunks
        .iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    v.push(Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "client went away",
    )));
    Box::pin(futures_util::stream::iter(v))
}

/// Read a whole blob (or range) into memory; test data is small.
pub async fn read_all(
    store: &dyn BlobStore,
    digest: &Digest,
    range: Option<std::ops::Range<u64>>,
) -> Option<Vec<u8>> {
    let read = store.get(digest, range).await.expect("get")?;
    let mut body = read.body;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("read chunk"));
    }
    Some(out)
}

fn uid(s: &str) -> UploadId {
    // Unique per test run, so that suites against a shared backend (a bucket) never collide.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{s}-{nanos:x}").parse().expect("valid upload id")
}

/// Upload `data` in one request and commit it.
pub async fn put(store: &dyn BlobStore, data: &[u8]) -> Digest {
    let id = uid("put");
    let digest = Digest::sha256_of(data);
    store
        .write_upload(&id, 0, stream_of(&[data]))
        .await
        .expect("write");
    store
        .commit_upload(&id, data.len() as u64, &digest)
        .await
        .expect("commit");
    digest
}

pub async fn missing_blob_is_none(store: &dyn BlobStore) {
    let d = Digest::sha256_of(b"never stored");
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert!(store.get(&d, None).await.unwrap().is_none());
}

pub async fn upload_then_read(store: &dyn BlobStore) {
    let data = b"hello, registry".repeat(1000);
    let d = put(store, &data).await;
    assert_eq!(store.stat(&d).await.unwrap(), Some(data.len() as u64));
    assert_eq!(read_all(store, &d, None).await.unwrap(), data);
    let empty = put(store, b"").await;
    assert_eq!(store.stat(&empty).await.unwrap(), Some(0));
    assert_eq!(read_all(store, &empty, None).await.unwrap(), b"");
}

pub async fn ranges(store: &dyn BlobStore) {
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let d = put(store, &data).await;
    assert_eq!(
        read_all(store, &d, Some(10..20)).await.unwrap(),
        &data[10..20]
    );
    assert_eq!(
        read_all(store, &d, Some(1000..300_000)).await.unwrap(),
        &data[1000..]
    );
    assert_eq!(read_all(store, &d, Some(5..5)).await.unwrap(), b"");
    let read = store.get(&d, Some(0..1)).await.unwrap().unwrap();
    assert_eq!(read.total_size, 300_000);
    assert!(matches!(
        store.get(&d, Some(10..300_001)).await,
        Err(Error::RangeNotSatisfiable { .. })
    ));
}

pub async fn chunked_upload_resumes_at_offset(store: &dyn BlobStore) {
    let id = uid("chunks");
    assert_eq!(
        store
            .write_upload(&id, 0, stream_of(&[b"abc", b"def"]))
            .await
            .unwrap(),
        6
    );
    assert_eq!(
        store
            .write_upload(&id, 6, stream_of(&[b"ghi"]))
            .await
            .unwrap(),
        3
    );
    // A request whose progress was never recorded: the next write starts again at 9.
    assert_eq!(
        store
            .write_upload(&id, 9, stream_of(&[b"XXXX"]))
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        store
            .write_upload(&id, 9, stream_of(&[b"jk"]))
            .await
            .unwrap(),
        2
    );
    let d = Digest::sha256_of(b"abcdefghijk");
    store.commit_upload(&id, 11, &d).await.unwrap();
    assert_eq!(read_all(store, &d, None).await.unwrap(), b"abcdefghijk");
}

pub async fn offset_past_stored_data_is_refused(store: &dyn BlobStore) {
    let id = uid("gap");
    store
        .write_upload(&id, 0, stream_of(&[b"abc"]))
        .await
        .unwrap();
    assert!(matches!(
        store.write_upload(&id, 10, stream_of(&[b"x"])).await,
        Err(Error::UploadTruncated {
            stored: 3,
            expected: 10,
            ..
        })
    ));
    let unknown = uid("nosuch");
    assert!(matches!(
        store.write_upload(&unknown, 5, stream_of(&[b"x"])).await,
        Err(Error::UploadUnknown(_))
    ));
    assert!(matches!(
        store
            .commit_upload(&unknown, 0, &Digest::sha256_of(b""))
            .await,
        Err(Error::UploadUnknown(_))
    ));
}

pub async fn failed_body_publishes_nothing(store: &dyn BlobStore) {
    let id = uid("broken");
    let r = store.write_upload(&id, 0, failing_stream(&[b"part"])).await;
    assert!(matches!(r, Err(Error::Body(_))), "{r:?}");
    let d = Digest::sha256_of(b"part");
    assert_eq!(store.stat(&d).await.unwrap(), None);
    store.abort_upload(&id).await.unwrap();
    // Abort is idempotent, and an aborted upload cannot be committed.
    store.abort_upload(&id).await.unwrap();
    assert!(
        store
            .commit_upload(&id, 0, &Digest::sha256_of(b""))
            .await
            .is_err()
    );
}

pub async fn commit_shorter_than_stored_uses_prefix(store: &dyn BlobStore) {
    let id = uid("prefix");
    store
        .write_upload(&id, 0, stream_of(&[b"abcdef"]))
        .await
        .unwrap();
    let d = Digest::sha256_of(b"abc");
    store.commit_upload(&id, 3, &d).await.unwrap();
    assert_eq!(read_all(store, &d, None).await.unwrap(), b"abc");
    assert!(matches!(
        store.commit_upload(&id, 3, &d).await,
        Err(Error::UploadUnknown(_))
    ));
}

pub async fn commit_is_idempotent_per_digest(store: &dyn BlobStore) {
    let data = b"same content twice";
    let d1 = put(store, data).await;
    let d2 = put(store, data).await;
    assert_eq!(d1, d2);
    assert_eq!(read_all(store, &d1, None).await.unwrap(), data);
}

pub async fn concurrent_uploads_are_independent(store: &dyn BlobStore) {
    let mut digests = Vec::new();
    let futs = (0..16u8).map(|i| {
        let data = vec![i; 10_000 + usize::from(i)];
        digests.push(Digest::sha256_of(&data));
        async move { put(store, &data).await }
    });
    let got = futures_util::future::join_all(futs).await;
    assert_eq!(got, digests);
    for (i, d) in digests.iter().enumerate() {
        assert_eq!(store.stat(d).await.unwrap(), Some(10_000 + i as u64));
    }
}

pub async fn sha512_blobs(store: &dyn BlobStore) {
    let mut h = pierone_protocol::Hasher::new(pierone_protocol::Algorithm::Sha512);
    h.update(b"512");
    let d = h.finish();
    let id = uid("sha512");
    store
        .write_upload(&id, 0, stream_of(&[b"512"]))
        .await
        .unwrap();
    store.commit_upload(&id, 3, &d).await.unwrap();
    assert_eq!(read_all(store, &d, None).await.unwrap(), b"512");
}

/// A large upload (enough to start background writeback in the filesystem store) can be
/// committed the moment its write returns: nothing of the write outlives it.
pub async fn large_upload_commits_immediately(store: &dyn BlobStore) {
    const MIB: usize = 1 << 20;
    for round in 0..3u8 {
        let id = uid("large");
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..48u8)
            .map(|i| Ok(Bytes::from(vec![i ^ round; MIB])))
            .collect();
        let mut h = pierone_protocol::Hasher::new(pierone_protocol::Algorithm::Sha256);
        for c in chunks.iter().flatten() {
            h.update(c);
        }
        let d = h.finish();
        let n = store
            .write_upload(&id, 0, Box::pin(futures_util::stream::iter(chunks)))
            .await
            .unwrap();
        assert_eq!(n, 48 * MIB as u64);
        store.commit_upload(&id, n, &d).await.unwrap();
        assert_eq!(store.stat(&d).await.unwrap(), Some(n));
    }
}

/// An upload sent as several large requests (what chunked clients do with big layers) is
/// assembled in order, including when it is committed shorter than it was written.
pub async fn large_chunks_assemble_in_order(store: &dyn BlobStore) {
    const MIB: usize = 1 << 20;
    let id = uid("big-chunks");
    let chunks: Vec<Vec<u8>> = (0..3u8)
        .map(|i| vec![i + 1; 6 * MIB + usize::from(i)])
        .collect();
    let mut offset = 0u64;
    for c in &chunks {
        let n = store
            .write_upload(&id, offset, stream_of(&[c]))
            .await
            .unwrap();
        offset += n;
    }
    let all: Vec<u8> = chunks.concat();
    let keep = all.len() - 3;
    let d = Digest::sha256_of(&all[..keep]);
    store.commit_upload(&id, keep as u64, &d).await.unwrap();
    let got = read_all(store, &d, None).await.unwrap();
    assert_eq!(got.len(), keep);
    assert!(got == all[..keep], "bytes assembled in order");
}

pub async fn blobs_are_listed_in_pages_and_deleted(store: &dyn BlobStore) {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut digests = Vec::new();
    for i in 0..5 {
        digests.push(put(store, format!("listed blob {i}").repeat(i + 1).as_bytes()).await);
    }
    let mut listed = Vec::new();
    let mut after: Option<Digest> = None;
    loop {
        let page = store.list_blobs(after.as_ref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.digest.clone());
        listed.extend(page);
    }
    let names: Vec<&str> = listed.iter().map(|e| e.digest.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "pages are in digest order without repeats");
    for (i, d) in digests.iter().enumerate() {
        let e = listed
            .iter()
            .find(|e| &e.digest == d)
            .unwrap_or_else(|| panic!("blob {i} not listed"));
        assert_eq!(
            e.size,
            format!("listed blob {i}").len() as u64 * (i as u64 + 1)
        );
        // Some backends keep whole seconds.
        assert!(
            e.stored_at >= before - 1000,
            "stored_at {} < {before}",
            e.stored_at
        );
    }
    assert!(store.delete_blob(&digests[2]).await.unwrap());
    assert!(!store.delete_blob(&digests[2]).await.unwrap());
    assert_eq!(store.stat(&digests[2]).await.unwrap(), None);
    assert!(store.get(&digests[2], None).await.unwrap().is_none());
    let rest = store.list_blobs(None, 1000).await.unwrap();
    assert!(!rest.iter().any(|e| e.digest == digests[2]));
    assert!(rest.iter().any(|e| e.digest == digests[3]));
    // Stored again after deletion: back, with a new age.
    put(store, "listed blob 2".repeat(3).as_bytes()).await;
    assert_eq!(store.stat(&digests[2]).await.unwrap(), Some(39));
}

/// Generates one `#[tokio::test]` per conformance check. `$make` is an async block yielding
/// `(store, guard)`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            missing_blob_is_none,
            upload_then_read,
            ranges,
            chunked_upload_resumes_at_offset,
            offset_past_stored_data_is_refused,
            failed_body_publishes_nothing,
            commit_shorter_than_stored_uses_prefix,
            commit_is_idempotent_per_digest,
            concurrent_uploads_are_independent,
            sha512_blobs,
            large_upload_commits_immediately,
            large_chunks_assemble_in_order,
            blobs_are_listed_in_pages_and_deleted
        );
    };
    (@each $make:expr; $($name:ident),*) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    #[allow(clippy::unwrap_used)]
                    let (store, _guard) = $make.await;
                    $crate::conformance::$name(&store).await;
                }
            )*
        }
    };
}
