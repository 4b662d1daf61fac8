//! A digest always names its bytes, whatever clients race or send: hostile uploads against
//! every blob store (filesystem, memory, S3), and input that must be refused without a trace.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pierone_auth::{AuthConfig, Authorizer, MemoryTeams, StaticValidator, TokenInfo};
use pierone_blobstore::{BlobStore, FsBlobStore, MemoryBlobStore};
use pierone_protocol::Digest;
use pierone_registry::{Config, Registry};
use pierone_s3::test_server::TestS3;
use pierone_s3::{S3BlobStore, S3Config};
use pierone_tagstore::{MemoryTagStore, SqlTagStore, TagStore};
use reqwest::{Method, StatusCode};

use crate::util::{Client, TestServer, header, location, oci_error};

/// A registry served in-process on the given stores; stops when dropped.
pub struct Served {
    pub url: String,
    _guard: Box<dyn std::any::Any + Send>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(
    blobs: Arc<dyn BlobStore>,
    tags: Arc<dyn TagStore>,
    guard: Box<dyn std::any::Any + Send>,
) -> Served {
    let registry = Arc::new(Registry::new(blobs, tags, Config::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(pierone_registry::run(
        listener,
        registry,
        std::future::pending(),
    ));
    Served {
        url,
        _guard: guard,
        task,
    }
}

async fn on_memory() -> Served {
    serve(
        Arc::new(MemoryBlobStore::new()),
        Arc::new(MemoryTagStore::new()),
        Box::new(()),
    )
    .await
}

/// S3 blobs (s3s-fs in-process) with SQLite metadata.
async fn on_s3() -> Served {
    let s3 = TestS3::start("integrity").await;
    let mut config = S3Config::new(&s3.bucket);
    config.prefix = "registry/".into();
    let blobs = S3BlobStore::new(s3.client.clone(), config);
    let dir = tempfile::tempdir().unwrap();
    let tags = SqlTagStore::open(dir.path().join("meta.db").to_str().unwrap())
        .await
        .unwrap();
    serve(Arc::new(blobs), Arc::new(tags), Box::new((s3, dir))).await
}

async fn on_fs_memory_tags() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let blobs = FsBlobStore::open(dir.path()).await.unwrap();
    serve(
        Arc::new(blobs),
        Arc::new(MemoryTagStore::new()),
        Box::new(dir),
    )
    .await
}

/// A request body that sends `first`, then waits until `go` fires, then sends `rest`: a
/// client that pauses mid-body.
fn stalled_body(
    first: Vec<u8>,
    rest: Vec<u8>,
    go: tokio::sync::oneshot::Receiver<()>,
) -> reqwest::Body {
    let head =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) });
    let tail = futures_util::stream::once(async move {
        let _ = go.await;
        Ok::<_, std::io::Error>(Bytes::from(rest))
    });
    reqwest::Body::wrap_stream(futures_util::StreamExt::chain(head, tail))
}

fn bytes_of(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// What became of the blob a hostile upload tried to plant under `digest`.
async fn assert_names_its_bytes(c: &Client, digest: &Digest) {
    let r = c.get(&format!("/v2/team/app/blobs/{digest}")).await;
    match r.status() {
        StatusCode::OK => {
            let body = r.bytes().await.unwrap();
            assert_eq!(
                &Digest::sha256_of(&body),
                digest,
                "the blob published under {digest} does not hash to it"
            );
        }
        StatusCode::NOT_FOUND => {}
        other => panic!("GET {digest}: {other}"),
    }
}

/// One round of the attack of issue 10: on one upload session, PATCH A starts and pauses
/// mid-body; PATCH B (through `cb`, maybe another replica) sends other bytes at the same offset
/// and completes; then A finishes. The session is closed with the digest of `close_with`'s
/// bytes. Whatever each request was told, the blob published under that digest hashes to it,
/// and the bytes of the other request are published under no digest but their own.
pub async fn racing_patches_round(ca: &Client, cb: &Client, close_with_first: bool) {
    let loc = ca.start_upload("team/app").await;
    let seed = if close_with_first { 1 } else { 101 };
    let a = bytes_of(seed, 300_000);
    let b = bytes_of(seed + 50, 250_000);
    let (go, wait) = tokio::sync::oneshot::channel();
    let stalled = ca
        .req(Method::PATCH, &loc)
        .body(stalled_body(
            a[..100_000].to_vec(),
            a[100_000..].to_vec(),
            wait,
        ))
        .send();
    let racer = async {
        // Let A's first bytes reach the store before B starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Refused at once (the filesystem store's lock), the answer can come before the body
        // is sent, and the client then sees a broken pipe: a refusal all the same.
        let status = cb
            .req(Method::PATCH, &loc)
            .body(b.clone())
            .send()
            .await
            .map_or(StatusCode::RANGE_NOT_SATISFIABLE, |r| r.status());
        let _ = go.send(());
        status
    };
    let (ra, rb) = tokio::join!(stalled, racer);
    let ra = ra.unwrap().status();
    // Exactly one of them was recorded (the filesystem store refuses B while A writes; the
    // others take both and the session's compare-and-set refuses A).
    assert!(
        (ra == StatusCode::ACCEPTED) != (rb == StatusCode::ACCEPTED),
        "A: {ra}, B: {rb}"
    );
    for st in [ra, rb] {
        assert!(
            st == StatusCode::ACCEPTED || st == StatusCode::RANGE_NOT_SATISFIABLE,
            "{st}"
        );
    }
    // The client closes with the digest of the request that completed first (B), or of A.
    let (claimed, other) = if close_with_first { (&b, &a) } else { (&a, &b) };
    let digest = Digest::sha256_of(claimed);
    let r = ca
        .req(Method::PUT, &format!("{loc}?digest={digest}"))
        .send()
        .await
        .unwrap();
    let recorded = if ra == StatusCode::ACCEPTED { &a } else { &b };
    if claimed == recorded {
        assert_eq!(r.status(), StatusCode::CREATED);
    } else {
        oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    }
    assert_names_its_bytes(ca, &digest).await;
    assert_names_its_bytes(cb, &digest).await;
    assert_names_its_bytes(ca, &Digest::sha256_of(other)).await;
    // Whoever pushes the claimed bytes honestly later gets exactly them back.
    let d = ca.push_blob("team/app", claimed).await;
    assert_eq!(d, digest);
    let got = cb
        .get(&format!("/v2/team/app/blobs/{digest}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert!(got.as_ref() == claimed.as_slice(), "honest push reads back");
}

async fn racing_patches(url: &str) {
    let c = Client::new(url);
    racing_patches_round(&c, &c, true).await;
    racing_patches_round(&c, &c, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_patches_never_poison_a_digest_fs() {
    let s = TestServer::start().await;
    racing_patches(&s.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_patches_never_poison_a_digest_memory() {
    let s = on_memory().await;
    racing_patches(&s.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_patches_never_poison_a_digest_s3() {
    let s = on_s3().await;
    racing_patches(&s.url).await;
}

/// Many sessions, each with two PATCHes racing at offset 0 after deterministic pseudo-random
/// delays, then closed with the digest of the request that was recorded, or (hostile) of the
/// one that was refused: the first must publish, the second must not, and every blob the
/// registry holds under any of the digests re-hashes to it.
async fn stress(url: &str) {
    use futures_util::StreamExt;
    let c = Client::new(url);
    let rounds = (0..24u64).map(|i| {
        let c = c.clone();
        async move {
            let loc = c.start_upload("team/app").await;
            let a = bytes_of(i as u8, 40_000 + i as usize * 997);
            let b = bytes_of(i as u8 ^ 0x5a, 30_000 + i as usize * 1301);
            // Each side trickles its body in pieces with its own gaps.
            let send = |data: Vec<u8>, gap: u64| {
                let c = c.clone();
                let loc = loc.clone();
                async move {
                    let pieces: Vec<Bytes> =
                        data.chunks(8_000).map(Bytes::copy_from_slice).collect();
                    let body = futures_util::stream::iter(pieces).then(move |p| async move {
                        tokio::time::sleep(Duration::from_millis(gap)).await;
                        Ok::<_, std::io::Error>(p)
                    });
                    // A store that refuses the second writer at once answers (and closes) before
                    // the body is sent: the client sees a broken pipe, a refusal all the same.
                    c.req(Method::PATCH, &loc)
                        .body(reqwest::Body::wrap_stream(body))
                        .send()
                        .await
                        .map_or(StatusCode::RANGE_NOT_SATISFIABLE, |r| r.status())
                }
            };
            let (ga, gb) = ((i * 7) % 5 + 1, (i * 3) % 4 + 1);
            let (ra, rb) = tokio::join!(send(a.clone(), ga), send(b.clone(), gb));
            let ok = |s: StatusCode| s == StatusCode::ACCEPTED;
            // When one request started only after the other was recorded, both are, in turn:
            // the upload is then both bodies in an order the test cannot know.
            let (winner, loser) = match (ok(ra), ok(rb)) {
                (true, false) => (a.clone(), b.clone()),
                (false, true) => (b.clone(), a.clone()),
                (true, true) => ([&a[..], &b].concat(), [&b[..], &a].concat()),
                (false, false) => panic!("round {i}: neither PATCH was recorded"),
            };
            let honest = i % 3 == 0;
            let claimed = if honest { &winner } else { &loser };
            let digest = Digest::sha256_of(claimed);
            let r = c
                .req(Method::PUT, &format!("{loc}?digest={digest}"))
                .send()
                .await
                .unwrap();
            let put = r.status();
            if ok(ra) != ok(rb) {
                let want = if honest {
                    StatusCode::CREATED
                } else {
                    StatusCode::BAD_REQUEST
                };
                assert_eq!(put, want, "round {i}: A {ra}, B {rb}");
            }
            vec![
                Digest::sha256_of(&a),
                Digest::sha256_of(&b),
                Digest::sha256_of(&winner),
                Digest::sha256_of(&loser),
            ]
        }
    });
    let digests = futures_util::future::join_all(rounds).await;
    for d in digests.iter().flatten() {
        assert_names_its_bytes(&c, d).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_patch_stress_fs() {
    let s = TestServer::start().await;
    stress(&s.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_patch_stress_fs_memory_tags() {
    let s = on_fs_memory_tags().await;
    stress(&s.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_patch_stress_s3() {
    let s = on_s3().await;
    stress(&s.url).await;
}

fn member(uid: &str) -> TokenInfo {
    TokenInfo {
        uid: uid.into(),
        realm: "/employees".into(),
        scopes: ["uid".to_owned()].into_iter().collect(),
        expires_in: Some(3600),
        teams: None,
    }
}

/// An upload session belongs to whoever started it: another member of the same team cannot
/// read its progress, append to it, close it or cancel it.
#[tokio::test]
async fn upload_sessions_belong_to_their_principal() {
    let validator = StaticValidator::new([
        ("alice-token".to_owned(), member("alice")),
        ("carol-token".to_owned(), member("carol")),
    ]);
    let teams = MemoryTeams::new([("team", &["alice", "carol"][..], &[][..])]);
    let s = TestServer::start_with(Config {
        auth: Authorizer::new(Arc::new(validator), Arc::new(teams), AuthConfig::default()),
        ..Config::default()
    })
    .await;
    let c = s.client();
    let alice = |m: Method, p: &str| c.req(m, p).bearer_auth("alice-token");
    let carol = |m: Method, p: &str| c.req(m, p).bearer_auth("carol-token");
    let r = alice(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = location(&r);
    let r = alice(Method::PATCH, &loc)
        .body("alice's ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let planted = Digest::sha256_of(b"alice's carol's");
    for (m, path) in [
        (Method::GET, loc.clone()),
        (Method::PATCH, loc.clone()),
        (Method::PUT, format!("{loc}?digest={planted}")),
        (Method::DELETE, loc.clone()),
    ] {
        let r = carol(m.clone(), &path)
            .body("carol's")
            .send()
            .await
            .unwrap();
        oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    }
    // Alice's session is untouched.
    let r = alice(Method::GET, &loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "Range").as_deref(), Some("0-7"));
    let d = Digest::sha256_of(b"alice's upload");
    let r = alice(Method::PUT, &format!("{loc}?digest={d}"))
        .body("upload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// A chunk sent without Content-Length whose body disagrees with its Content-Range is refused
/// with 416 and leaves the session where it was; so is a closing PUT whose chunk is out of
/// order.
#[tokio::test]
async fn chunks_must_fit_their_content_range() {
    let s = TestServer::start().await;
    let c = s.client();
    let loc = c.start_upload("team/app").await;
    // Chunked transfer encoding: the length is only known once the body has arrived.
    let body =
        futures_util::stream::iter([Bytes::from(vec![b'x'; 100])].map(Ok::<_, std::io::Error>));
    let r = c
        .req(Method::PATCH, &loc)
        .header("Content-Range", "0-9")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;
    let r = c.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(
        header(&r, "Range").as_deref(),
        Some("0-0"),
        "nothing was accepted"
    );

    let r = c
        .req(Method::PATCH, &loc)
        .header("Content-Range", "0-4")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let d = Digest::sha256_of(b"hello world");
    let r = c
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .header("Content-Range", "9-14")
        .body(" world")
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;
    let r = c
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .header("Content-Range", "5-10")
        .body(" world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// `Range: bytes=0-<u64::MAX>` is the whole blob (206), not an overflow.
#[tokio::test]
async fn range_to_the_largest_end_is_the_whole_blob() {
    let s = TestServer::start().await;
    let c = s.client();
    let d = c.push_blob("team/app", b"0123456789").await;
    let r = c
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .header("Range", "bytes=0-18446744073709551615")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "Content-Range").as_deref(), Some("bytes 0-9/10"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"0123456789");
}

/// OCI conformance (v1.1.1): reading a manifest whose reference is neither a tag nor a digest
/// is a miss, 404 `MANIFEST_UNKNOWN`; pushing to one stays invalid.
#[tokio::test]
async fn manifest_with_an_invalid_reference_is_unknown() {
    let s = TestServer::start().await;
    let c = s.client();
    for m in [Method::GET, Method::HEAD] {
        let r = c
            .req(m.clone(), "/v2/team/app/manifests/.INVALID_MANIFEST_NAME")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{m}");
        if m == Method::GET {
            oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
        }
    }
    let r = c
        .req(Method::PUT, "/v2/team/app/manifests/.INVALID_MANIFEST_NAME")
        .header("Content-Type", crate::util::OCI_MANIFEST)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// A memory blob store whose `stat` of one digest, once it has answered, waits to be
/// released: a manifest PUT held between its check that the blobs exist and its write.
#[derive(Debug)]
struct PausingStat {
    inner: MemoryBlobStore,
    digest: Digest,
    pause: std::sync::Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::sync::oneshot::Receiver<()>,
        )>,
    >,
}

#[async_trait::async_trait]
impl BlobStore for PausingStat {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, pierone_blobstore::Error> {
        let r = self.inner.stat(digest).await;
        if digest == &self.digest {
            let pause = self.pause.lock().unwrap().take();
            if let Some((reached, release)) = pause {
                let _ = reached.send(());
                let _ = release.await;
            }
        }
        r
    }
    async fn get(
        &self,
        digest: &Digest,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<pierone_blobstore::BlobRead>, pierone_blobstore::Error> {
        self.inner.get(digest, range).await
    }
    async fn create_upload(
        &self,
        id: &pierone_protocol::UploadId,
    ) -> Result<(), pierone_blobstore::Error> {
        self.inner.create_upload(id).await
    }
    async fn write_part(
        &self,
        id: &pierone_protocol::UploadId,
        data: pierone_blobstore::ByteStream,
    ) -> Result<pierone_protocol::UploadPart, pierone_blobstore::Error> {
        self.inner.write_part(id, data).await
    }
    async fn discard_part(
        &self,
        id: &pierone_protocol::UploadId,
        part: &pierone_protocol::UploadPart,
    ) -> Result<(), pierone_blobstore::Error> {
        self.inner.discard_part(id, part).await
    }
    async fn read_upload(
        &self,
        id: &pierone_protocol::UploadId,
        parts: &[pierone_protocol::UploadPart],
    ) -> Result<pierone_blobstore::ByteStream, pierone_blobstore::Error> {
        self.inner.read_upload(id, parts).await
    }
    async fn commit_upload(
        &self,
        id: &pierone_protocol::UploadId,
        parts: &[pierone_protocol::UploadPart],
        digest: &Digest,
    ) -> Result<bool, pierone_blobstore::Error> {
        self.inner.commit_upload(id, parts, digest).await
    }
    async fn abort_upload(
        &self,
        id: &pierone_protocol::UploadId,
    ) -> Result<(), pierone_blobstore::Error> {
        self.inner.abort_upload(id).await
    }
    async fn list_blobs(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<pierone_blobstore::BlobEntry>, pierone_blobstore::Error> {
        self.inner.list_blobs(after, limit).await
    }
    async fn delete_blob(&self, digest: &Digest) -> Result<bool, pierone_blobstore::Error> {
        self.inner.delete_blob(digest).await
    }
    async fn quarantine_blob(
        &self,
        digest: &Digest,
    ) -> Result<Option<String>, pierone_blobstore::Error> {
        self.inner.quarantine_blob(digest).await
    }
}

/// Garbage collection against a manifest PUT, deterministically: the PUT has checked that
/// its layer exists, then the collector claims, deletes and records the old unreferenced
/// layer, then the PUT's transaction runs. It must be refused (the client pushes the layer
/// again), never tag a manifest whose layer is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_between_a_manifests_check_and_its_write() {
    let layer = b"a layer nobody references yet".to_vec();
    let layer_digest = Digest::sha256_of(&layer);
    let (reached_tx, reached) = tokio::sync::oneshot::channel();
    let (release, release_rx) = tokio::sync::oneshot::channel();
    let blobs = Arc::new(PausingStat {
        inner: MemoryBlobStore::new(),
        digest: layer_digest.clone(),
        pause: std::sync::Mutex::new(Some((reached_tx, release_rx))),
    });
    let registry = Arc::new(Registry::new(
        blobs,
        Arc::new(MemoryTagStore::new()),
        Config {
            gc: pierone_registry::GcConfig {
                interval: Duration::from_secs(3600),
                grace: Duration::ZERO,
            },
            ..Config::default()
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(pierone_registry::run(
        listener,
        registry.clone(),
        std::future::pending(),
    ));
    let c = Client::new(&url);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_digest = c.push_blob("team/app", &config).await;
    assert_eq!(c.push_blob("team/app", &layer).await, layer_digest);
    // Older than the grace period, to the second some stores keep.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::util::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.as_str(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest.as_str(), "size": layer.len()}],
    })
    .to_string();
    let put = {
        let c = c.clone();
        let manifest = manifest.clone();
        tokio::spawn(async move {
            c.put_manifest(
                "team/app",
                "1.0",
                crate::util::OCI_MANIFEST,
                manifest.as_bytes(),
            )
            .await
        })
    };
    reached.await.unwrap();
    let report = registry.service().collect_garbage().await.unwrap();
    assert!(report.blobs_deleted >= 1, "{report:?}");
    let r = c
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{layer_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "the layer was collected");
    release.send(()).unwrap();
    let r = put.await.unwrap();
    oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    let r = c
        .req(Method::GET, "/v2/team/app/manifests/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "no tag names a missing layer"
    );
    // The client pushes the blobs again, and the same manifest is accepted.
    c.push_blob("team/app", &config).await;
    c.push_blob("team/app", &layer).await;
    let r = c
        .put_manifest(
            "team/app",
            "1.0",
            crate::util::OCI_MANIFEST,
            manifest.as_bytes(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    server.abort();
}
