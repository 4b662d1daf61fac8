//! Webhook events through the outbox, and garbage collection, with real servers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pierone_registry::{Config, GcConfig};
use pierone_tagstore::{AuditLog, SqlTagStore};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::util::{Client, OCI_MANIFEST, Seen, TestServer, fake_service, header, metric};

/// A webhook receiver answering `status(n)` to its n-th request (from 1), keeping the bodies
/// it accepted with 2xx.
pub async fn receiver(
    status: impl Fn(usize) -> u16 + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<Value>>>) {
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (d, n) = (delivered.clone(), calls.clone());
    let (url, _) = fake_service(Arc::new(move |seen: &Seen| {
        let call = n.fetch_add(1, Ordering::SeqCst) + 1;
        let code = status(call);
        if (200..300).contains(&code) {
            d.lock()
                .unwrap()
                .push(serde_json::from_str(&seen.body).unwrap());
        }
        (code, String::new(), Duration::ZERO)
    }))
    .await;
    (format!("{url}/hook"), calls, delivered)
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn webhook_config(url: &str) -> Config {
    Config {
        webhooks: vec![url.to_owned()],
        webhook_retry_base: Duration::from_millis(50),
        outbox_poll: Duration::from_millis(50),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_three_times_gets_the_event_once() {
    let (url, calls, delivered) = receiver(|n| if n <= 3 { 500 } else { 200 }).await;
    let s = TestServer::start_with(webhook_config(&url)).await;
    let c = s.client();
    let m = c.image("team/app", "hook").await;
    let r = c.put_manifest("team/app", "1.0", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let digest = header(&r, "Docker-Content-Digest").unwrap();
    wait_for("the delivery", Duration::from_secs(20), || {
        !delivered.lock().unwrap().is_empty()
    })
    .await;
    // Backoff after failures is 50, 100, 200 ms: wait longer than that for stray retries.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4, "3 failures, 1 success");
    let events = delivered.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["specversion"], "1.0");
    assert_eq!(e["type"], "io.pierone.tag.created");
    assert_eq!(e["source"], "/pierone");
    assert_eq!(e["id"], "tag-1");
    assert_eq!(e["subject"], "team/app:1.0");
    assert_eq!(e["data"]["team"], "team");
    assert_eq!(e["data"]["artifact"], "app");
    assert_eq!(e["data"]["tag"], "1.0");
    assert_eq!(e["data"]["digest"], digest.as_str());
    assert_eq!(e["data"]["principal"], "anonymous");
    assert!(e["time"].as_str().unwrap().ends_with('Z'));
    // An identical re-push is no new event.
    let r = c.put_manifest("team/app", "1.0", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_events_survive_a_restart() {
    let up = Arc::new(AtomicBool::new(false));
    let u = up.clone();
    let (url, calls, delivered) =
        receiver(move |_| if u.load(Ordering::SeqCst) { 200 } else { 503 }).await;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path(), webhook_config(&url)).await;
    let c = s.client();
    let m = c.image("team/app", "restart").await;
    let r = c.put_manifest("team/app", "2.0", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    wait_for("a failed attempt", Duration::from_secs(20), || {
        calls.load(Ordering::SeqCst) >= 2
    })
    .await;
    s.stop().await;
    let db = dir.path().join("meta.db");
    let store = SqlTagStore::open(db.to_str().unwrap()).await.unwrap();
    assert_eq!(store.outbox_pending().await.unwrap(), 1, "still queued");
    assert!(delivered.lock().unwrap().is_empty());

    // The receiver comes back while the registry is down; a new process delivers.
    up.store(true, Ordering::SeqCst);
    let s = TestServer::start_in(dir.path(), webhook_config(&url)).await;
    wait_for(
        "the delivery after restart",
        Duration::from_secs(30),
        || !delivered.lock().unwrap().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = delivered.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["subject"], "team/app:2.0");
    assert_eq!(store.outbox_pending().await.unwrap(), 0);
    s.stop().await;
}

async fn blob_exists(c: &Client, digest: &str) -> bool {
    let r = c
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    match r.status() {
        StatusCode::OK => true,
        StatusCode::NOT_FOUND => false,
        other => panic!("HEAD blob: {other}"),
    }
}

fn referenced(manifest: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(manifest).unwrap();
    let mut out = vec![v["config"]["digest"].as_str().unwrap().to_owned()];
    for l in v["layers"].as_array().unwrap() {
        out.push(l["digest"].as_str().unwrap().to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_takes_only_old_unreferenced_blobs_while_pushes_run() {
    // Long enough that a push on a loaded CI machine (blobs, then its manifest) never
    // spans grace + marking delay.
    let grace = Duration::from_secs(3);
    let s = TestServer::start_with(Config {
        gc: GcConfig {
            interval: Duration::from_millis(100),
            grace,
        },
        ..Config::default()
    })
    .await;
    let c = s.client();
    let orphan = c.push_blob("team/app", b"nobody references me").await;
    let kept = c.image("team/app", "kept").await;
    let r = c.put_manifest("team/app", "1.0", OCI_MANIFEST, &kept).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // An untagged manifest protects its blobs too.
    let untagged = c.image("team/app", "untagged").await;
    let d = pierone_protocol::Digest::sha256_of(&untagged);
    let r = c
        .put_manifest("team/app", d.as_str(), OCI_MANIFEST, &untagged)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // Pushes keep running while the collector works: blobs first, the manifest a little
    // later, as clients do. Every one must succeed.
    let started = Instant::now();
    let pushers: Vec<_> = (0..4)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut manifests = Vec::new();
                let mut i = 0;
                while started.elapsed() < Duration::from_secs(5) {
                    let m = c.image("team/app", &format!("push-{w}-{i}")).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let r = c
                        .put_manifest("team/app", &format!("p{w}.{i}"), OCI_MANIFEST, &m)
                        .await;
                    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
                    manifests.push(m);
                    i += 1;
                }
                manifests
            })
        })
        .collect();
    let mut manifests = vec![kept, untagged];
    for p in pushers {
        manifests.extend(p.await.unwrap());
    }
    wait_for_async_orphan(&c, orphan.as_str()).await;

    for m in &manifests {
        for d in referenced(m) {
            assert!(
                blob_exists(&c, &d).await,
                "referenced blob {d} was collected"
            );
        }
    }
    // A fresh unreferenced blob is inside its grace period: untouched however many runs pass.
    let young = c.push_blob("team/app", b"just uploaded").await;
    tokio::time::sleep(grace / 2).await;
    assert!(
        blob_exists(&c, young.as_str()).await,
        "a young blob was collected"
    );
    assert!(metric(&c, "pierone_gc_blobs_deleted_total").await >= 1.0);
    assert!(metric(&c, "pierone_gc_freed_bytes_total").await >= 20.0);
    s.stop().await;
}

async fn wait_for_async_orphan(c: &Client, orphan: &str) {
    let start = Instant::now();
    while blob_exists(c, orphan).await {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the orphan blob was never collected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_expired_upload_sessions() {
    let s = TestServer::start_with(Config {
        upload_ttl: Duration::from_millis(300),
        gc: GcConfig {
            interval: Duration::from_millis(100),
            grace: Duration::from_secs(3600),
        },
        ..Config::default()
    })
    .await;
    let c = s.client();
    let loc = c.start_upload("team/app").await;
    let r = c
        .req(Method::PATCH, &loc)
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = crate::util::location(&r);
    let start = Instant::now();
    while metric(&c, "pierone_gc_uploads_expired_total").await < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the upload was never collected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = c.req(Method::GET, &loc).send().await.unwrap();
    crate::util::oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    s.stop().await;
}
