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

use crate::{BlobStore, ByteStream, Error, UploadPart};

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
    store.create_upload(&id).await.expect("create");
    let part = store
        .write_part(&id, stream_of(&[data]))
        .await
        .expect("write");
    assert_eq!(part.len, data.len() as u64);
    store
        .commit_upload(&id, &[part], &digest)
        .await
        .expect("commit");
    digest
}

/// Everything a stream yields, concatenated.
pub async fn collect(mut body: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("read chunk"));
    }
    out
}

async fn part(store: &dyn BlobStore, id: &UploadId, data: &[u8]) -> UploadPart {
    let p = store.write_part(id, stream_of(&[data])).await.unwrap();
    assert_eq!(p.len, data.len() as u64);
    p
}

/// Declares the conformance checks and generates [`conformance_tests!`](crate::conformance_tests)
/// from the same list. Its input is `$` (so that the macro it emits can have metavariables of
/// its own) followed by the checks, each a `pub async fn NAME(store: &dyn BlobStore)`.
macro_rules! checks {
    (
        $d:tt
        $(
            $(#[$meta:meta])*
            pub async fn $name:ident($store:ident: &dyn BlobStore) $body:block
        )*
    ) => {
        $(
            $(#[$meta])*
            pub async fn $name($store: &dyn BlobStore) $body
        )*

        /// Generates one `#[tokio::test]` per conformance check, in a module `conformance`.
        /// `$make` is an async block yielding `(store, guard)`: a fresh store for each test, and
        /// whatever must live as long as it (a temporary directory, a server).
        ///
        /// The list of checks is the one they are declared in, so every check runs against
        /// every implementation that invokes this.
        #[macro_export]
        macro_rules! conformance_tests {
            ($d make:expr) => {
                mod conformance {
                    #[allow(unused_imports)]
                    use super::*;
                    $(
                        #[tokio::test]
                        async fn $name() {
                            #[allow(clippy::unwrap_used)]
                            let (store, _guard) = $d make.await;
                            $d crate::conformance::$name(&store).await;
                        }
                    )*
                }
            };
        }
    };
}

// The checks, declared inside `checks!`, which emits each function and `conformance_tests!`
// running all of them: a check cannot be left out of the list, because there is no list.
// (rustfmt does not format inside the braces: keep the code as it would.)
checks! {
$

/// A digest never stored has neither a size nor a body.
pub async fn missing_blob_is_none(store: &dyn BlobStore) {
    let d = Digest::sha256_of(b"never stored");
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert!(store.get(&d, None).await.unwrap().is_none());
}

/// A committed upload reads back byte for byte under its digest.
pub async fn upload_then_read(store: &dyn BlobStore) {
    let data = b"hello, registry".repeat(1000);
    let d = put(store, &data).await;
    assert_eq!(store.stat(&d).await.unwrap(), Some(data.len() as u64));
    assert_eq!(read_all(store, &d, None).await.unwrap(), data);
    let empty = put(store, b"").await;
    assert_eq!(store.stat(&empty).await.unwrap(), Some(0));
    assert_eq!(read_all(store, &empty, None).await.unwrap(), b"");
}

/// A range of a blob reads exactly those bytes.
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

/// An upload is the concatenation of exactly the parts its commit names, in order: a part
/// that was written but never recorded (a request that lost a race, or whose progress was
/// never stored) is not published, wherever it lies.
pub async fn commit_publishes_exactly_the_recorded_parts(store: &dyn BlobStore) {
    let id = uid("parts");
    store.create_upload(&id).await.unwrap();
    let p1 = store
        .write_part(&id, stream_of(&[b"abc", b"def"]))
        .await
        .unwrap();
    assert_eq!(p1.len, 6);
    let p2 = part(store, &id, b"ghi").await;
    let _unrecorded = part(store, &id, b"XXXX").await;
    let p4 = part(store, &id, b"jk").await;
    let keys = [&p1.key, &p2.key, &p4.key, &_unrecorded.key];
    for (i, k) in keys.iter().enumerate() {
        assert!(!keys[..i].contains(k), "part keys are unique");
    }
    let recorded = [p1, p2, p4];
    let read = store.read_upload(&id, &recorded).await.unwrap();
    assert_eq!(collect(read).await, b"abcdefghijk");
    let d = Digest::sha256_of(b"abcdefghijk");
    store.commit_upload(&id, &recorded, &d).await.unwrap();
    assert_eq!(read_all(store, &d, None).await.unwrap(), b"abcdefghijk");
    // The upload is gone with every part, recorded or not.
    assert!(matches!(
        store.commit_upload(&id, &recorded, &d).await,
        Err(Error::UploadUnknown(_))
    ));
}

/// A refused part can be discarded, and the upload goes on as if it had never been sent.
pub async fn discarded_part_is_not_published(store: &dyn BlobStore) {
    let id = uid("discard");
    store.create_upload(&id).await.unwrap();
    let p1 = part(store, &id, b"abc").await;
    let refused = part(store, &id, b"ZZZZZZ").await;
    store.discard_part(&id, &refused).await.unwrap();
    // Discarding twice, or a part that is gone, is harmless.
    store.discard_part(&id, &refused).await.unwrap();
    let p3 = part(store, &id, b"def").await;
    let d = Digest::sha256_of(b"abcdef");
    store.commit_upload(&id, &[p1, p3], &d).await.unwrap();
    assert_eq!(read_all(store, &d, None).await.unwrap(), b"abcdef");
}

/// Commit checks every part against its record and publishes nothing when one differs.
pub async fn parts_must_match_their_record(store: &dyn BlobStore) {
    let id = uid("record");
    store.create_upload(&id).await.unwrap();
    let p = part(store, &id, b"abc").await;
    let d = Digest::sha256_of(b"abcd");
    let longer = UploadPart {
        key: p.key.clone(),
        len: 4,
    };
    assert!(matches!(
        store
            .commit_upload(&id, std::slice::from_ref(&longer), &d)
            .await,
        Err(Error::PartSizeMismatch { .. })
    ));
    assert!(store.read_upload(&id, &[longer]).await.is_err());
    let unknown = UploadPart {
        key: "999999".into(),
        len: 3,
    };
    assert!(matches!(
        store.commit_upload(&id, &[unknown], &d).await,
        Err(Error::PartUnknown { .. } | Error::PartSizeMismatch { .. })
    ));
    assert_eq!(store.stat(&d).await.unwrap(), None);
    // The upload is intact after the refusals.
    let abc = Digest::sha256_of(b"abc");
    store.commit_upload(&id, &[p], &abc).await.unwrap();
    assert_eq!(read_all(store, &abc, None).await.unwrap(), b"abc");

    // A store that keeps no per-upload state (S3) cannot tell an upload that was never
    // created; the caller's session is what makes one real. Either way nothing is published.
    let never = uid("nosuch");
    let stray = store.write_part(&never, stream_of(&[b"x"])).await;
    assert!(
        matches!(stray, Ok(_) | Err(Error::UploadUnknown(_))),
        "{stray:?}"
    );
    assert_eq!(store.stat(&Digest::sha256_of(b"x")).await.unwrap(), None);
    store.abort_upload(&never).await.unwrap();
}

/// A request body that fails mid-stream publishes nothing.
pub async fn failed_body_publishes_nothing(store: &dyn BlobStore) {
    let id = uid("broken");
    store.create_upload(&id).await.unwrap();
    let r = store.write_part(&id, failing_stream(&[b"part"])).await;
    assert!(matches!(r, Err(Error::Body(_))), "{r:?}");
    let d = Digest::sha256_of(b"part");
    assert_eq!(store.stat(&d).await.unwrap(), None);
    // The next request's part holds its own bytes only.
    let p = part(store, &id, b"whole").await;
    let whole = Digest::sha256_of(b"whole");
    store
        .commit_upload(&id, std::slice::from_ref(&p), &whole)
        .await
        .unwrap();
    assert_eq!(read_all(store, &whole, None).await.unwrap(), b"whole");
    store.abort_upload(&id).await.unwrap();
    // Abort is idempotent, and an aborted upload cannot be committed.
    let id = uid("aborted");
    store.create_upload(&id).await.unwrap();
    let p = part(store, &id, b"gone").await;
    store.abort_upload(&id).await.unwrap();
    store.abort_upload(&id).await.unwrap();
    assert!(
        store
            .commit_upload(&id, &[p], &Digest::sha256_of(b"gone"))
            .await
            .is_err()
    );
}

/// Two requests on one upload at once, one of them stalled mid-body while the other
/// completes (a hostile client racing its own session): each part holds exactly its own
/// request's bytes, or the store refused the second request while the first was writing.
pub async fn racing_parts_keep_their_own_bytes(store: &dyn BlobStore) {
    let id = uid("race");
    store.create_upload(&id).await.unwrap();
    let a_bytes = [b"A".repeat(70_000), b"a".repeat(70_000)].concat();
    let b_bytes = b"B".repeat(100_000);
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let first = Bytes::copy_from_slice(&a_bytes[..70_000]);
    let rest = Bytes::copy_from_slice(&a_bytes[70_000..]);
    let stalled: ByteStream = Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(
        futures_util::stream::once(async move {
            let _ = wait.await;
            Ok(rest)
        }),
    ));
    let a = store.write_part(&id, stalled);
    let b = async {
        // Let the stalled request start writing first.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let r = store.write_part(&id, stream_of(&[&b_bytes])).await;
        let _ = go.send(());
        r
    };
    let (a, b) = tokio::join!(a, b);
    let a = a.unwrap();
    assert_eq!(
        collect(
            store
                .read_upload(&id, std::slice::from_ref(&a))
                .await
                .unwrap()
        )
        .await,
        a_bytes
    );
    match b {
        Ok(b) => {
            assert_ne!(a.key, b.key);
            assert_eq!(
                collect(
                    store
                        .read_upload(&id, std::slice::from_ref(&b))
                        .await
                        .unwrap()
                )
                .await,
                b_bytes
            );
        }
        Err(Error::UploadBusy(_)) => {}
        Err(e) => panic!("second request: {e}"),
    }
    let d = Digest::sha256_of(&a_bytes);
    store.commit_upload(&id, &[a], &d).await.unwrap();
    assert_eq!(read_all(store, &d, None).await.unwrap(), a_bytes);
}

/// Committing a digest that is already stored keeps one blob with the same bytes.
pub async fn commit_is_idempotent_per_digest(store: &dyn BlobStore) {
    let data = b"same content twice";
    // The first commit stores the bytes; the second finds them stored.
    for first in [true, false] {
        let id = uid("twice");
        store.create_upload(&id).await.unwrap();
        let p = part(store, &id, b"stored or found").await;
        let d = Digest::sha256_of(b"stored or found");
        assert_eq!(store.commit_upload(&id, &[p], &d).await.unwrap(), first);
    }
    let d1 = put(store, data).await;
    let d2 = put(store, data).await;
    assert_eq!(d1, d2);
    assert_eq!(read_all(store, &d1, None).await.unwrap(), data);
}

/// Uploads in progress at the same time do not see each other's bytes.
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

/// Blobs are stored and read under sha512 digests too.
pub async fn sha512_blobs(store: &dyn BlobStore) {
    let mut h = pierone_protocol::Hasher::new(pierone_protocol::Algorithm::Sha512);
    h.update(b"512");
    let d = h.finish();
    let id = uid("sha512");
    store.create_upload(&id).await.unwrap();
    let p = part(store, &id, b"512").await;
    store.commit_upload(&id, &[p], &d).await.unwrap();
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
        store.create_upload(&id).await.unwrap();
        let p = store
            .write_part(&id, Box::pin(futures_util::stream::iter(chunks)))
            .await
            .unwrap();
        let n = p.len;
        assert_eq!(n, 48 * MIB as u64);
        store.commit_upload(&id, &[p], &d).await.unwrap();
        assert_eq!(store.stat(&d).await.unwrap(), Some(n));
    }
}

/// An upload sent as several large requests (what chunked clients do with big layers) is
/// assembled in order, including when a large request between them was never recorded.
pub async fn large_chunks_assemble_in_order(store: &dyn BlobStore) {
    const MIB: usize = 1 << 20;
    let id = uid("big-chunks");
    store.create_upload(&id).await.unwrap();
    let chunks: Vec<Vec<u8>> = (0..4u8)
        .map(|i| vec![i + 1; 6 * MIB + usize::from(i)])
        .collect();
    let mut parts = Vec::new();
    for c in &chunks {
        parts.push(part(store, &id, c).await);
    }
    // The third request lost a race: its part stays unrecorded.
    parts.remove(2);
    let all: Vec<u8> = [&chunks[0][..], &chunks[1], &chunks[3]].concat();
    let d = Digest::sha256_of(&all);
    store.commit_upload(&id, &parts, &d).await.unwrap();
    let got = read_all(store, &d, None).await.unwrap();
    assert_eq!(got.len(), all.len());
    assert!(got == all, "bytes assembled in order");
}

/// Blobs are listed in digest order, in pages, with their commit time; a deleted blob is
/// gone.
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

/// A quarantined blob leaves service but not the store; the digest can be stored again.
pub async fn quarantine_takes_a_blob_out_of_service(store: &dyn BlobStore) {
    let data = b"quarantined blob".repeat(100);
    let other = put(store, b"a neighbour stays").await;
    let d = put(store, &data).await;
    let kept = store.quarantine_blob(&d).await.unwrap();
    assert!(
        kept.as_deref().is_some_and(|k| k.contains("quarantine")),
        "{kept:?}"
    );
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert!(store.get(&d, None).await.unwrap().is_none());
    let listed = store.list_blobs(None, 10_000).await.unwrap();
    assert!(!listed.iter().any(|e| e.digest == d), "not listed");
    assert!(listed.iter().any(|e| e.digest == other));
    assert_eq!(store.quarantine_blob(&d).await.unwrap(), None);
    assert_eq!(
        store
            .quarantine_blob(&Digest::sha256_of(b"never"))
            .await
            .unwrap(),
        None
    );
    // The honest owner pushes the bytes again: a first store, not a deduplicated one.
    put(store, &data).await;
    assert_eq!(read_all(store, &d, None).await.unwrap(), data);
    assert!(
        store
            .list_blobs(None, 10_000)
            .await
            .unwrap()
            .iter()
            .any(|e| e.digest == d)
    );
}
}
