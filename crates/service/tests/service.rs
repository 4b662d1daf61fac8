//! The service's rules on the in-memory stores, in process: uploads, manifests, immutable
//! tags, `latest`, mutable patterns and garbage collection. No socket, no database.

// Helpers of tests panic on what a test would: a failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use pierone_service::protocol::{Digest, Reference, RepoName, media_types};
use pierone_service::tagstore::Error as TagError;
use pierone_service::{
    Algorithm, Caller, Config, Error, GcConfig, MemoryBlobStore, MemoryTagStore, Service,
    TagOutcome, TagPolicy,
};

#[path = "../examples/embedded.rs"]
#[allow(dead_code)]
mod embedded;

type Body = futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>>;

fn body(bytes: &[u8]) -> Body {
    futures_util::stream::iter(vec![Ok(Bytes::copy_from_slice(bytes))])
}

fn service_with(config: Config) -> Arc<Service> {
    Arc::new(Service::new(
        Arc::new(MemoryBlobStore::new()),
        Arc::new(MemoryTagStore::new()),
        config,
    ))
}

fn service() -> Arc<Service> {
    service_with(Config::default())
}

fn repo() -> RepoName {
    "team/app".parse().unwrap()
}

fn alice() -> Caller {
    Caller::new("/employees", "alice")
}

fn reference(r: &str) -> Reference {
    r.parse().unwrap()
}

async fn read(service: &Service, digest: &Digest) -> Vec<u8> {
    let mut read = service.blob(digest, None).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = read.body.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

async fn push(service: &Service, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256_of(bytes);
    service
        .push_blob(&repo(), &digest, Some(bytes.len() as u64), body(bytes))
        .await
        .unwrap()
}

/// An image manifest over `layers` (each pushed before), told apart by `seed`.
fn manifest(layers: &[(&Digest, usize)], seed: &str) -> Bytes {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, size)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d.as_str(),
                "size": size,
            })
        })
        .collect();
    let config = Digest::sha256_of(b"{}");
    Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.as_str(),
                "size": 2,
            },
            "layers": layers,
            "annotations": { "seed": seed },
        })
        .to_string(),
    )
}

/// A manifest whose every referenced blob is stored.
async fn image(service: &Service, seed: &str) -> Bytes {
    push(service, b"{}").await;
    let layer = format!("layer of {seed}");
    let d = push(service, layer.as_bytes()).await;
    manifest(&[(&d, layer.len())], seed)
}

async fn put(
    service: &Service,
    r: &str,
    body: Bytes,
) -> Result<pierone_service::PutOutcome, Error> {
    service
        .put_manifest(
            &repo(),
            &reference(r),
            &alice(),
            Some(media_types::OCI_MANIFEST),
            body,
            None,
        )
        .await
}

#[tokio::test]
async fn the_embedded_example_runs() {
    embedded::run().await.unwrap();
}

#[tokio::test]
async fn chunked_and_monolithic_uploads_store_what_was_sent() {
    let s = service();
    let id = s
        .start_upload(&repo(), &alice(), Algorithm::Sha256)
        .await
        .unwrap();
    assert_eq!(
        s.append(&repo(), &id, &alice(), Some(0), body(b"hello "))
            .await
            .unwrap(),
        6
    );
    assert_eq!(
        s.append(&repo(), &id, &alice(), None, body(b"wide "))
            .await
            .unwrap(),
        11
    );
    assert_eq!(s.upload_status(&repo(), &id, &alice()).await.unwrap(), 11);
    let digest = Digest::sha256_of(b"hello wide world");
    let stored = s
        .finish(&repo(), &id, &alice(), &digest, Some(body(b"world")))
        .await
        .unwrap();
    assert_eq!(stored, digest);
    assert_eq!(read(&s, &digest).await, b"hello wide world");
    // A finished upload is gone.
    assert!(matches!(
        s.upload_status(&repo(), &id, &alice()).await,
        Err(Error::UploadUnknown)
    ));

    let mono = push(&s, b"all at once").await;
    assert_eq!(read(&s, &mono).await, b"all at once");
    assert_eq!(s.blob_size(&mono).await.unwrap(), 11);
}

#[tokio::test]
async fn a_sha512_close_of_a_sha256_upload_is_hashed_again() {
    let s = service();
    let id = s
        .start_upload(&repo(), &alice(), Algorithm::Sha256)
        .await
        .unwrap();
    s.append(&repo(), &id, &alice(), None, body(b"bytes"))
        .await
        .unwrap();
    let mut h = pierone_service::protocol::Hasher::new(Algorithm::Sha512);
    h.update(b"bytes");
    let digest = h.finish();
    let none: Option<Body> = None;
    assert_eq!(
        s.finish(&repo(), &id, &alice(), &digest, none)
            .await
            .unwrap(),
        digest
    );
    assert_eq!(read(&s, &digest).await, b"bytes");
}

#[tokio::test]
async fn a_chunk_at_the_wrong_offset_is_refused_and_a_lost_race_discards_its_part() {
    let s = service();
    let id = s
        .start_upload(&repo(), &alice(), Algorithm::Sha256)
        .await
        .unwrap();
    s.append(&repo(), &id, &alice(), None, body(b"abc"))
        .await
        .unwrap();
    match s
        .append(&repo(), &id, &alice(), Some(1), body(b"zzz"))
        .await
    {
        Err(Error::ChunkOutOfOrder {
            start: 1,
            received: 3,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(s.upload_status(&repo(), &id, &alice()).await.unwrap(), 3);

    // Two requests read the session at offset 3; the second to write loses the
    // compare-and-set and its part is not the upload's.
    let first = s.upload(&repo(), &id, &alice()).await.unwrap();
    let second = s.upload(&repo(), &id, &alice()).await.unwrap();
    assert_eq!(s.write_chunk(&first, None, body(b"def")).await.unwrap(), 6);
    match s.write_chunk(&second, None, body(b"XYZ")).await {
        Err(Error::Tags(TagError::UploadOffsetConflict { .. })) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(s.upload_status(&repo(), &id, &alice()).await.unwrap(), 6);
    let none: Option<Body> = None;
    let digest = Digest::sha256_of(b"abcdef");
    s.finish(&repo(), &id, &alice(), &digest, none)
        .await
        .unwrap();
    assert_eq!(read(&s, &digest).await, b"abcdef");
}

#[tokio::test]
async fn a_chunk_of_another_length_than_declared_is_refused() {
    let s = service();
    let id = s
        .start_upload(&repo(), &alice(), Algorithm::Sha256)
        .await
        .unwrap();
    let upload = s.upload(&repo(), &id, &alice()).await.unwrap();
    match s.write_chunk(&upload, Some(5), body(b"abc")).await {
        Err(Error::ChunkLengthMismatch {
            declared: 5,
            actual: 3,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(s.upload_status(&repo(), &id, &alice()).await.unwrap(), 0);
}

#[tokio::test]
async fn a_digest_mismatch_publishes_nothing() {
    let s = service();
    let id = s
        .start_upload(&repo(), &alice(), Algorithm::Sha256)
        .await
        .unwrap();
    s.append(&repo(), &id, &alice(), None, body(b"real bytes"))
        .await
        .unwrap();
    let claimed = Digest::sha256_of(b"other bytes");
    let none: Option<Body> = None;
    match s.finish(&repo(), &id, &alice(), &claimed, none).await {
        Err(Error::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, claimed);
            assert_eq!(actual, Digest::sha256_of(b"real bytes"));
        }
        other => panic!("{other:?}"),
    }
    for d in [claimed, Digest::sha256_of(b"real bytes")] {
        assert!(
            matches!(s.blob_size(&d).await, Err(Error::BlobUnknown(_))),
            "{d}"
        );
    }
    // The upload is discarded with it.
    assert!(matches!(
        s.upload_status(&repo(), &id, &alice()).await,
        Err(Error::UploadUnknown)
    ));
    // A monolithic push that lies is refused the same way.
    let lie = Digest::sha256_of(b"x");
    assert!(matches!(
        s.push_blob(&repo(), &lie, None, body(b"y")).await,
        Err(Error::DigestMismatch { .. })
    ));
    assert!(matches!(
        s.blob_size(&lie).await,
        Err(Error::BlobUnknown(_))
    ));
}

#[tokio::test]
async fn another_principals_session_is_unknown() {
    let s = service();
    let id = s
        .start_upload(&repo(), &alice(), Algorithm::Sha256)
        .await
        .unwrap();
    let mallory = Caller::new("/employees", "mallory");
    // The same uid in another realm is another owner.
    let service_alice = Caller::new("/services", "alice");
    for who in [&mallory, &service_alice] {
        assert!(matches!(
            s.upload_status(&repo(), &id, who).await,
            Err(Error::UploadUnknown)
        ));
        assert!(matches!(
            s.append(&repo(), &id, who, None, body(b"evil")).await,
            Err(Error::UploadUnknown)
        ));
        assert!(matches!(
            s.cancel_upload(&repo(), &id, who).await,
            Err(Error::UploadUnknown)
        ));
    }
    // Nor is it a session of another repository.
    let other: RepoName = "team/other".parse().unwrap();
    assert!(matches!(
        s.upload_status(&other, &id, &alice()).await,
        Err(Error::UploadUnknown)
    ));
    assert_eq!(s.upload_status(&repo(), &id, &alice()).await.unwrap(), 0);
    s.cancel_upload(&repo(), &id, &alice()).await.unwrap();
    assert!(matches!(
        s.upload_status(&repo(), &id, &alice()).await,
        Err(Error::UploadUnknown)
    ));
}

#[tokio::test]
async fn a_blob_over_the_size_limit_is_refused() {
    let s = service_with(Config {
        max_blob_size: 4,
        ..Config::default()
    });
    assert!(matches!(
        s.check_size(2, Some(3)),
        Err(Error::BodyTooLarge { size: 5, limit: 4 })
    ));
    let d = Digest::sha256_of(b"too long");
    assert!(matches!(
        s.push_blob(&repo(), &d, None, body(b"too long")).await,
        Err(Error::BodyTooLarge { limit: 4, .. })
    ));
    assert!(matches!(s.blob_size(&d).await, Err(Error::BlobUnknown(_))));
}

#[tokio::test]
async fn a_mount_of_a_stored_blob_succeeds_and_of_a_missing_one_does_not() {
    let s = service();
    let d = push(&s, b"shared layer").await;
    assert!(s.mount(&d).await.unwrap());
    assert!(!s.mount(&Digest::sha256_of(b"never pushed")).await.unwrap());
}

#[tokio::test]
async fn a_manifest_naming_an_unknown_blob_is_refused_and_nothing_is_written() {
    let s = service();
    push(&s, b"{}").await;
    let missing = Digest::sha256_of(b"not here");
    let m = manifest(&[(&missing, 8)], "x");
    match put(&s, "1.0", m.clone()).await {
        Err(Error::ManifestBlobUnknown(d)) => assert_eq!(d, missing),
        other => panic!("{other:?}"),
    }
    for r in ["1.0".to_owned(), Digest::sha256_of(&m).to_string()] {
        assert!(matches!(
            s.get_manifest(&repo(), &reference(&r)).await,
            Err(Error::ManifestUnknown(..))
        ));
    }
    assert!(matches!(
        s.list_tags(&repo(), None, 10).await,
        Err(Error::NameUnknown(_))
    ));
    // A wrong size is refused too.
    let d = push(&s, b"eight b.").await;
    assert!(matches!(
        put(&s, "1.0", manifest(&[(&d, 9)], "y")).await,
        Err(Error::DescriptorSizeMismatch {
            declared: 9,
            actual: 8,
            ..
        })
    ));
}

#[tokio::test]
async fn an_immutable_tag_refuses_another_digest_naming_both_and_accepts_the_same_again() {
    let s = service();
    let first = image(&s, "first").await;
    let second = image(&s, "second").await;
    let pushed = put(&s, "1.0", first.clone()).await.unwrap();
    assert_eq!(pushed.tag, Some(TagOutcome::Created));
    assert_eq!(pushed.digest, Digest::sha256_of(&first));

    let again = put(&s, "1.0", first.clone()).await.unwrap();
    assert_eq!(again.tag, Some(TagOutcome::Unchanged));

    match put(&s, "1.0", second.clone()).await {
        Err(Error::Tags(e @ TagError::TagImmutable { .. })) => {
            let TagError::TagImmutable {
                existing, pushed, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(existing, &Digest::sha256_of(&first));
            assert_eq!(pushed, &Digest::sha256_of(&second));
            let message = e.to_string();
            assert!(message.contains(existing.as_str()), "{message}");
            assert!(message.contains(pushed.as_str()), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let m = s.get_manifest(&repo(), &reference("1.0")).await.unwrap();
    assert_eq!(m.body, first);
}

#[tokio::test]
async fn a_snapshot_tag_moves() {
    let s = service();
    let first = image(&s, "first").await;
    let second = image(&s, "second").await;
    put(&s, "1.0-SNAPSHOT", first.clone()).await.unwrap();
    // Read once, so that a cache would hold it.
    s.get_manifest(&repo(), &reference("1.0-SNAPSHOT"))
        .await
        .unwrap();
    let moved = put(&s, "1.0-SNAPSHOT", second.clone()).await.unwrap();
    assert_eq!(
        moved.tag,
        Some(TagOutcome::Moved {
            previous: Digest::sha256_of(&first)
        })
    );
    let m = s
        .get_manifest(&repo(), &reference("1.0-SNAPSHOT"))
        .await
        .unwrap();
    assert_eq!(m.body, second);
}

#[tokio::test]
async fn latest_is_the_newest_tag_and_cannot_be_pushed_by_default() {
    let s = service();
    let first = image(&s, "first").await;
    let second = image(&s, "second").await;
    assert!(matches!(
        put(&s, "latest", first.clone()).await,
        Err(Error::Tags(TagError::LatestNotAllowed))
    ));
    assert!(matches!(
        s.check_reference(&reference("latest")),
        Err(Error::Tags(TagError::LatestNotAllowed))
    ));
    put(&s, "1.0", first.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    put(&s, "2.0", second.clone()).await.unwrap();
    let latest = s.get_manifest(&repo(), &reference("latest")).await.unwrap();
    assert_eq!(latest.body, second);
    assert_eq!(s.latest(&repo()).await.unwrap().name, "2.0");

    // Where the policy allows it, `latest` is an ordinary (mutable) tag.
    let s = service_with(Config {
        tag_policy: TagPolicy::new(["*-SNAPSHOT"], true),
        ..Config::default()
    });
    let first = image(&s, "first").await;
    put(&s, "latest", first.clone()).await.unwrap();
    assert_eq!(
        s.get_manifest(&repo(), &reference("latest"))
            .await
            .unwrap()
            .body,
        first
    );
}

#[tokio::test]
async fn garbage_collection_takes_unreferenced_old_blobs_and_keeps_referenced_ones() {
    let s = service_with(Config {
        gc: GcConfig {
            interval: Duration::ZERO,
            grace: Duration::ZERO,
        },
        ..Config::default()
    });
    let garbage = push(&s, b"nobody needs me").await;
    let m = image(&s, "kept").await;
    put(&s, "1.0", m).await.unwrap();
    let kept = Digest::sha256_of(b"layer of kept");
    // Stores may keep whole seconds: a blob is old only after one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut deleted = 0;
    for _ in 0..3 {
        deleted += s.collect_garbage().await.unwrap().blobs_deleted;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(deleted, 1);
    assert!(matches!(
        s.blob_size(&garbage).await,
        Err(Error::BlobUnknown(_))
    ));
    assert_eq!(read(&s, &kept).await, b"layer of kept");
    assert!(s.blob_size(&Digest::sha256_of(b"{}")).await.is_ok());
}

#[tokio::test]
async fn background_work_starts_and_stops_on_its_own() {
    let s = service_with(Config {
        gc: GcConfig {
            interval: Duration::from_millis(10),
            grace: Duration::ZERO,
        },
        ..Config::default()
    });
    let garbage = push(&s, b"collected in the background").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let background = s.spawn_background();
    let mut gone = false;
    for _ in 0..200 {
        if s.blob_size(&garbage).await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    background.stop(Duration::from_secs(1)).await;
    assert!(gone, "the collector never ran");
}
