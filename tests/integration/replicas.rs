//! Several `pierone-server` processes sharing one PostgreSQL database and one S3 bucket: the
//! production shape, with real servers (a throwaway PostgreSQL cluster, s3s-fs in-process).

use std::time::Duration;

use pierone_protocol::{Digest, Hasher};
use pierone_s3::test_server::{ACCESS_KEY, SECRET_KEY, TestS3};
use reqwest::{Method, StatusCode};

use crate::util::{Client, OCI_MANIFEST, Process, header, location, oci_error};

fn postgres_url() -> String {
    std::env::var("PIERONE_TEST_POSTGRES_URL")
        .expect("PIERONE_TEST_POSTGRES_URL must name a PostgreSQL server; tests/run.sh starts one")
}

/// A shared database and bucket, and a way to start replicas on them.
struct Cluster {
    s3: TestS3,
    database: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn new() -> Cluster {
        Cluster::on(&postgres_url()).await
    }

    async fn on(postgres: &str) -> Cluster {
        let s3 = TestS3::start("pierone").await;
        let database = pierone_tagstore::create_test_database(postgres)
            .await
            .unwrap();
        Cluster {
            s3,
            database,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn replica(&self, name: &str) -> Process {
        self.replica_with(name, &[])
    }

    fn replica_with(&self, name: &str, extra: &[&str]) -> Process {
        let mut args = vec![
            "--blob-store",
            "s3",
            "--s3-bucket",
            &self.s3.bucket,
            "--s3-endpoint",
            &self.s3.endpoint,
            "--s3-prefix",
            "registry/",
            "--database-url",
            &self.database,
        ];
        args.extend_from_slice(extra);
        Process::start_with_env(
            &self.dir.path().join(name),
            &args,
            &[
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                ("AWS_REGION", "us-east-1"),
            ],
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_through_one_replica_pull_through_the_other() {
    let cluster = Cluster::new().await;
    let (a, b) = (cluster.replica("a"), cluster.replica("b"));
    let (ca, cb) = (Client::new(&a.url), Client::new(&b.url));
    let m = ca.image("team/app", "replicated").await;
    assert_eq!(
        ca.put_manifest("team/app", "1.0", OCI_MANIFEST, &m)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = cb.get("/v2/team/app/manifests/1.0").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &m[..]);
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let layer = v["layers"][0]["digest"].as_str().unwrap();
    let r = cb.get(&format!("/v2/team/app/blobs/{layer}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(Digest::sha256_of(&r.bytes().await.unwrap()).as_str(), layer);
    // The tag is immutable for both.
    let other = cb.image("team/app", "different").await;
    let r = cb
        .put_manifest("team/app", "1.0", OCI_MANIFEST, &other)
        .await;
    oci_error(r, StatusCode::CONFLICT, "DENIED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunked_upload_alternates_between_replicas() {
    let cluster = Cluster::new().await;
    let (a, b) = (cluster.replica("a"), cluster.replica("b"));
    let (ca, cb) = (Client::new(&a.url), Client::new(&b.url));
    let chunk = |i: u8| vec![i; 6 * 1024 * 1024 + usize::from(i)];
    let loc = ca.start_upload("team/app").await;
    let mut h = Hasher::new(pierone_protocol::Algorithm::Sha256);
    let mut offset = 0usize;
    for (i, client) in [&cb, &ca, &cb].into_iter().enumerate() {
        let data = chunk(i as u8);
        h.update(&data);
        let r = client
            .req(Method::PATCH, &loc)
            .header(
                "Content-Range",
                format!("{}-{}", offset, offset + data.len() - 1),
            )
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
        offset += data.len();
        assert_eq!(header(&r, "Range"), Some(format!("0-{}", offset - 1)));
    }
    // Out of order is refused by whichever replica sees it.
    let r = ca
        .req(Method::PATCH, &loc)
        .header("Content-Range", "0-9")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;
    let d = h.finish();
    let r = ca
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let got = cb
        .get(&format!("/v2/team/app/blobs/{d}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!((got.len(), Digest::sha256_of(&got)), (offset, d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_across_replicas_have_one_winner() {
    let cluster = Cluster::new().await;
    let (a, b) = (cluster.replica("a"), cluster.replica("b"));
    let clients = [Client::new(&a.url), Client::new(&b.url)];
    let mut manifests = vec![];
    for i in 0..32 {
        manifests.push(
            clients[i % 2]
                .image("team/race", &format!("racer-{i}"))
                .await,
        );
    }
    let futs = manifests.iter().enumerate().map(|(i, m)| {
        let c = clients[i % 2].clone();
        let m = m.clone();
        tokio::spawn(async move { c.put_manifest("team/race", "1.0", OCI_MANIFEST, &m).await })
    });
    let mut created = 0;
    let mut denied = 0;
    for r in futures_util::future::join_all(futs).await {
        let r = r.unwrap();
        match r.status() {
            StatusCode::CREATED => created += 1,
            _ => {
                oci_error(r, StatusCode::CONFLICT, "DENIED").await;
                denied += 1;
            }
        }
    }
    assert_eq!((created, denied), (1, 31));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_replica_mid_push_leaves_nothing_half_visible() {
    let cluster = Cluster::new().await;
    let mut a = cluster.replica("a");
    let b = cluster.replica("b");
    let (ca, cb) = (Client::new(&a.url), Client::new(&b.url));
    let m = ca.image("team/app", "acknowledged").await;
    assert_eq!(
        ca.put_manifest("team/app", "1.0", OCI_MANIFEST, &m)
            .await
            .status(),
        StatusCode::CREATED
    );

    let total = 24u64;
    let part = |i: u64| vec![(i * 7) as u8; 1 << 20];
    let mut h = Hasher::new(pierone_protocol::Algorithm::Sha256);
    for i in 0..total {
        h.update(&part(i));
    }
    let d = h.finish();
    let body = futures_util::stream::unfold(0u64, move |i| async move {
        if i == total {
            return None;
        }
        if i == 12 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(part(i))), i + 1))
    });
    let url = format!("/v2/team/app/blobs/uploads/?digest={d}");
    let c2 = ca.clone();
    let push = tokio::spawn(async move {
        c2.req(Method::POST, &url)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.kill9();
    assert!(push.await.unwrap().is_err());

    let r = cb
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "nothing half-pushed is visible"
    );
    let r = cb.get("/v2/team/app/manifests/1.0").await;
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &m[..],
        "everything acknowledged is served"
    );
    let blobs = cluster
        .s3
        .client
        .list_objects_v2()
        .bucket(&cluster.s3.bucket)
        .prefix("registry/blobs/")
        .send()
        .await
        .unwrap();
    for o in blobs.contents() {
        assert!(
            !o.key().unwrap_or_default().ends_with(d.hex()),
            "no blob object for the killed push"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_outage_is_503_and_the_server_recovers() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/postgres.sh");
    let out = std::process::Command::new(script)
        .arg("start")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vars = String::from_utf8_lossy(&out.stdout).into_owned();
    let var = |name: &str| {
        vars.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap()
            .to_owned()
    };
    let (url, pgdata) = (var("PIERONE_TEST_POSTGRES_URL"), var("PIERONE_TEST_PGDATA"));
    struct StopCluster(String, &'static str);
    impl Drop for StopCluster {
        fn drop(&mut self) {
            let _ = std::process::Command::new(self.1)
                .args(["stop", &self.0])
                .output();
        }
    }
    let _guard = StopCluster(pgdata.clone(), script);

    let cluster = Cluster::on(&url).await;
    let a = cluster.replica("a");
    let c = Client::new(&a.url);
    let m = c.image("team/app", "before-outage").await;
    assert_eq!(
        c.put_manifest("team/app", "1.0", OCI_MANIFEST, &m)
            .await
            .status(),
        StatusCode::CREATED
    );

    let ok = std::process::Command::new(script)
        .args(["pause", &pgdata])
        .status()
        .unwrap();
    assert!(ok.success());
    let r = c.get("/v2/team/app/tags/list").await;
    let e = oci_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNSUPPORTED").await;
    assert!(e.message.contains("unavailable"), "{}", e.message);
    let r = c.put_manifest("team/app", "2.0", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Readiness takes the replica out of rotation; liveness keeps it running.
    let r = c.get("/.well-known/ready").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_ne!(v["database"], "ok", "{v}");
    assert_eq!(v["blob_store"], "ok", "{v}");
    assert_eq!(c.get("/.well-known/health").await.status(), StatusCode::OK);

    let ok = std::process::Command::new(script)
        .args(["resume", &pgdata])
        .status()
        .unwrap();
    assert!(ok.success());
    let mut recovered = false;
    for _ in 0..50 {
        if c.get("/v2/team/app/tags/list").await.status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "the server recovers by itself when the database returns"
    );
    assert_eq!(c.get("/.well-known/ready").await.status(), StatusCode::OK);
    assert_eq!(
        c.put_manifest("team/app", "2.0", OCI_MANIFEST, &m)
            .await
            .status(),
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presigned_redirects_serve_pulls_from_the_bucket() {
    let cluster = Cluster::new().await;
    let p = Process::start_with_env(
        &cluster.dir.path().join("redirect"),
        &[
            "--blob-store",
            "s3",
            "--s3-bucket",
            &cluster.s3.bucket,
            "--s3-endpoint",
            &cluster.s3.endpoint,
            "--database-url",
            &cluster.database,
            "--s3-redirect",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let c = Client::new(&p.url);
    let d = c.push_blob("team/app", b"served by the bucket").await;
    let r = c.get(&format!("/v2/team/app/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let target = location(&r);
    assert!(target.starts_with(&cluster.s3.endpoint), "{target}");
    let body = reqwest::get(&target).await.unwrap().bytes().await.unwrap();
    assert_eq!(body.as_ref(), b"served by the bucket");
    let r = c
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "HEAD is answered directly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_outage_is_503_never_success() {
    let cluster = Cluster::new().await;
    let a = cluster.replica("a");
    let c = Client::new(&a.url);
    let d = c.push_blob("team/app", b"stored before the outage").await;
    cluster.s3.stop();
    let r = c
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = c.get(&format!("/v2/team/app/blobs/{d}")).await;
    oci_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNSUPPORTED").await;
    let fresh = Digest::sha256_of(b"pushed during the outage");
    let r = c
        .req(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={fresh}"),
        )
        .body("pushed during the outage")
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNSUPPORTED").await;
}

/// Two replicas with every background duty switched on: they extend one audit chain, deliver
/// each event once between them, and collect garbage without taking anything a push needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_audit_chain_one_outbox_and_collect_garbage_safely() {
    let cluster = Cluster::new().await;
    let key = crate::audit::ed25519_key(cluster.dir.path());
    let (hook, _calls, delivered) = crate::events::receiver(|_| 200).await;
    let extra = [
        "--audit-signing-key",
        key.to_str().unwrap(),
        "--audit-checkpoint-interval",
        "200ms",
        "--webhook",
        &hook,
        "--gc-interval",
        "200ms",
        "--gc-grace",
        "4s",
    ];
    let (a, b) = (
        cluster.replica_with("a", &extra),
        cluster.replica_with("b", &extra),
    );
    let (ca, cb) = (Client::new(&a.url), Client::new(&b.url));
    let orphan = ca.push_blob("team/app", b"an orphan in the bucket").await;

    // Sixteen tags pushed through both replicas at once, and eight pushes racing for one tag.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        tasks.push(tokio::spawn(async move {
            let m = c.image("team/app", &format!("shared-{i}")).await;
            let tag = if i < 16 {
                format!("1.{i}")
            } else {
                "race".to_owned()
            };
            let status = c
                .put_manifest("team/app", &tag, OCI_MANIFEST, &m)
                .await
                .status();
            (status, m)
        }));
    }
    let mut manifests = Vec::new();
    let mut created = 0;
    for t in tasks {
        let (status, m) = t.await.unwrap();
        match status {
            StatusCode::CREATED => {
                created += 1;
                manifests.push(m);
            }
            // The race's losers: their blobs are referenced by no manifest and are garbage
            // once the grace period has passed.
            StatusCode::CONFLICT => {}
            other => panic!("push: {other}"),
        }
    }
    assert_eq!(created, 17, "16 tags and one winner of the race");

    // One chain, whichever replica wrote: verified entry by entry.
    let log: serde_json::Value = cb.get("/audit/log").await.json().await.unwrap();
    let entries: Vec<pierone_protocol::audit::AuditEntry> =
        serde_json::from_value(log["entries"].clone()).unwrap();
    assert_eq!(entries.len(), 17);
    let mut v = pierone_protocol::audit::ChainVerifier::new();
    for e in &entries {
        v.push(e).unwrap();
    }
    // Both replicas signed checkpoints while the pushes ran; every one extends the last,
    // and none was refused as tampering.
    let start = std::time::Instant::now();
    loop {
        let cp: serde_json::Value = ca.get("/audit/checkpoint").await.json().await.unwrap();
        if cp["size"] == 17 {
            assert_eq!(cp["root"].as_str().unwrap(), v.root());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no checkpoint of 17: {cp}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in [&ca, &cb] {
        let refused = crate::util::metric(c, "pierone_audit_checkpoint_refusals_total").await;
        assert_eq!(
            refused, 0.0,
            "a checkpoint was refused during concurrent pushes"
        );
    }
    // Each event delivered, once, though both replicas deliver.
    let start = std::time::Instant::now();
    while delivered.lock().unwrap().len() < 17 {
        assert!(start.elapsed() < Duration::from_secs(30), "events missing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids: Vec<String> = delivered
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!((n, ids.len()), (17, 17), "each event exactly once");

    // The orphan goes; nothing any manifest references does.
    let start = std::time::Instant::now();
    loop {
        let r = cb
            .req(Method::HEAD, &format!("/v2/team/app/blobs/{orphan}"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "orphan never collected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for m in &manifests {
        let v: serde_json::Value = serde_json::from_slice(m).unwrap();
        let mut refs = vec![v["config"]["digest"].as_str().unwrap().to_owned()];
        refs.push(v["layers"][0]["digest"].as_str().unwrap().to_owned());
        for d in refs {
            let r = ca
                .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{d} was collected");
        }
    }
}

/// The upload race of issue 10 across replicas: a PATCH through replica A pauses mid-body
/// while a PATCH with other bytes on the same session completes through replica B. No lock
/// spans the two processes; the session's compare-and-set in PostgreSQL and the per-request
/// segments in the bucket keep every digest naming its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_patches_across_replicas_never_poison_a_digest() {
    let cluster = Cluster::new().await;
    let (a, b) = (cluster.replica("a"), cluster.replica("b"));
    let (ca, cb) = (Client::new(&a.url), Client::new(&b.url));
    crate::integrity::racing_patches_round(&ca, &cb, true).await;
    crate::integrity::racing_patches_round(&ca, &cb, false).await;
    crate::integrity::racing_patches_round(&cb, &ca, true).await;
}

/// Blobs in S3 with the default SQLite metadata: the server creates its data directory for
/// `pierone.db` itself (it used to refuse to start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_blobs_with_default_sqlite_metadata() {
    let s3 = TestS3::start("pierone").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("not/yet/there");
    let p = Process::start_with_env(
        &data,
        &[
            "--blob-store",
            "s3",
            "--s3-bucket",
            &s3.bucket,
            "--s3-endpoint",
            &s3.endpoint,
        ],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let c = Client::new(&p.url);
    let d = c.push_blob("team/app", b"in the bucket").await;
    assert_eq!(
        c.get(&format!("/v2/team/app/blobs/{d}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"in the bucket"
    );
    assert!(data.join("pierone.db").exists());
}
