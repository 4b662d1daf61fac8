//! What must hold under races, crashes, restarts, huge bodies and shutdown.

use std::time::Duration;

use pierone_protocol::{Digest, Hasher};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{
    Client, OCI_MANIFEST, Process, TestServer, chunk, digest_of_chunks, header, location,
    metric_in, oci_error, trickle,
};

/// A streamed request body of `n` chunks, optionally pausing after `pause_after` chunks.
fn body_stream(seed: u64, n: u64, len: usize, pause_after: Option<u64>) -> reqwest::Body {
    let s = futures_util::stream::unfold(0u64, move |i| async move {
        if i == n {
            return None;
        }
        if Some(i) == pause_after {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Some((Ok::<_, std::io::Error>(chunk(seed, i, len)), i + 1))
    });
    reqwest::Body::wrap_stream(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_to_one_tag_have_exactly_one_winner() {
    let s = TestServer::start().await;
    let c = s.client();
    let mut manifests = vec![];
    for i in 0..32 {
        manifests.push(c.image("team/race", &format!("racer-{i}")).await);
    }
    let futs = manifests.iter().map(|m| {
        let c = c.clone();
        let m = m.clone();
        tokio::spawn(async move { c.put_manifest("team/race", "1.0", OCI_MANIFEST, &m).await })
    });
    let mut winners = vec![];
    let mut refused = 0;
    for (i, r) in futures_util::future::join_all(futs)
        .await
        .into_iter()
        .enumerate()
    {
        let r = r.unwrap();
        if r.status() == StatusCode::CREATED {
            winners.push(i);
        } else {
            let e = oci_error(r, StatusCode::CONFLICT, "DENIED").await;
            assert!(e.message.contains("team/race:1.0"));
            refused += 1;
        }
    }
    assert_eq!((winners.len(), refused), (1, 31));
    let r = c.get("/v2/team/race/manifests/1.0").await;
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &manifests[winners[0]][..]
    );
}

#[tokio::test]
async fn absurd_content_length_is_refused_before_reading() {
    let s = TestServer::start().await;
    for (path, method) in [
        (
            "/v2/team/app/blobs/uploads/?digest=sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "POST",
        ),
        ("/v2/team/app/manifests/1.0", "PUT"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(s.host()).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: 99999999999999\r\n\r\nabc"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains("SIZE_INVALID"), "{text}");
    }
}

#[tokio::test]
async fn blob_size_limit_is_enforced_while_streaming() {
    let s = TestServer::start_with(pierone_registry::Config {
        max_blob_size: 1000,
        ..Default::default()
    })
    .await;
    let c = s.client();
    let loc = c.start_upload("team/app").await;
    // No Content-Length (chunked transfer): the limit must hold while the bytes arrive.
    let r = c
        .req(Method::PATCH, &loc)
        .body(body_stream(1, 4, 512, None))
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;
    let r = c.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(header(&r, "Range").as_deref(), Some("0-0"));
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_uploads_finish() {
    let s = TestServer::start().await;
    let c = s.client();
    let d = digest_of_chunks(7, 8, 64 * 1024);
    let url = format!("/v2/team/app/blobs/uploads/?digest={d}");
    // A slow body: 8 chunks, 50 ms apart.
    let body = trickle(7, 8, 64 * 1024, Duration::from_millis(50));
    let push = tokio::spawn({
        let c = c.clone();
        async move { c.req(Method::POST, &url).body(body).send().await }
    });
    tokio::time::sleep(Duration::from_millis(120)).await;
    let url = s.url.clone();
    s.stop().await;
    let r = push.await.unwrap().unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "the in-flight push completed"
    );
    assert!(
        Client::new(&url)
            .http
            .get(format!("{url}/v2/"))
            .send()
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_sessions_survive_a_restart_and_a_crash_mid_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start(dir.path(), &[]);
    let c = Client::new(&p.url);
    let loc = c.start_upload("team/app").await;
    let len = 256 * 1024;
    let r = c
        .req(Method::PATCH, &loc)
        .body(chunk(3, 0, len))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = location(&r);

    // The second chunk is half sent when the server dies.
    let c2 = c.clone();
    let loc2 = loc.clone();
    let partial = tokio::spawn(async move {
        c2.req(Method::PATCH, &loc2)
            .body(body_stream(3, 4, len / 4, Some(2)))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.kill9();
    assert!(partial.await.unwrap().is_err());

    let p = Process::start(dir.path(), &[]);
    let c = Client::new(&p.url);
    let r = c.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&r, "Range"),
        Some(format!("0-{}", len - 1)),
        "only the acknowledged chunk counts"
    );

    let r = c
        .req(Method::PATCH, &loc)
        .header("Content-Range", format!("{}-{}", len, 2 * len - 1))
        .body(chunk(3, 1, len))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let mut h = Hasher::new(pierone_protocol::Algorithm::Sha256);
    h.update(&chunk(3, 0, len));
    h.update(&chunk(3, 1, len));
    let d = h.finish();
    let r = c
        .req(Method::PUT, &format!("{}?digest={d}", location(&r)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(&format!("/v2/team/app/blobs/{d}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), 2 * len);
    assert_eq!(Digest::sha256_of(&got), d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_push_leaves_nothing_half_visible() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start(dir.path(), &[]);
    let c = Client::new(&p.url);
    let (n, len) = (16, 1024 * 1024);
    let d = digest_of_chunks(9, n, len);
    let m = c.image("team/app", "before-crash").await;
    assert_eq!(
        c.put_manifest("team/app", "1.0", OCI_MANIFEST, &m)
            .await
            .status(),
        StatusCode::CREATED
    );

    let c2 = c.clone();
    let url = format!("/v2/team/app/blobs/uploads/?digest={d}");
    let push = tokio::spawn(async move {
        c2.req(Method::POST, &url)
            .body(body_stream(9, n, len, Some(8)))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    p.kill9();
    assert!(push.await.unwrap().is_err());

    let p = Process::start(dir.path(), &[]);
    let c = Client::new(&p.url);
    let r = c
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a half-pushed blob is never visible"
    );
    // What was acknowledged before the crash is all there.
    let r = c.get("/v2/team/app/manifests/1.0").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &m[..]);
    // And the same blob can be pushed again from scratch.
    let r = c
        .req(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={d}"),
        )
        .body(body_stream(9, n, len, None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_pushing_and_pulling_a_large_blob() {
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(dir.path(), &["--no-fsync"]);
    let c = Client::new(&p.url);
    let (n, len) = (384u64, 1024 * 1024);
    let d = digest_of_chunks(11, n, len);
    let r = c
        .req(
            Method::POST,
            &format!("/v2/team/big/blobs/uploads/?digest={d}"),
        )
        .body(body_stream(11, n, len, None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut r = c.get(&format!("/v2/team/big/blobs/{d}")).await;
    let mut h = Hasher::new(pierone_protocol::Algorithm::Sha256);
    let mut total = 0u64;
    while let Some(b) = r.chunk().await.unwrap() {
        total += b.len() as u64;
        h.update(&b);
    }
    assert_eq!((total, h.finish()), (n * len as u64, d));
    let peak_mib = p.peak_rss_kib() / 1024;
    assert!(
        peak_mib < 64,
        "peak RSS {peak_mib} MiB while moving a {} MiB blob",
        n
    );
}

#[tokio::test]
async fn idle_upload_sessions_expire() {
    let s = TestServer::start_with(pierone_registry::Config {
        upload_ttl: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let c = s.client();
    let loc = c.start_upload("team/app").await;
    let r = c
        .req(Method::PATCH, &loc)
        .body("kept alive")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let r = c
        .req(Method::PATCH, &loc)
        .body("too late")
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

/// A gzipped layer whose tar starts with a GNU long-name entry of `name_mib` MiB of zeros,
/// then one ordinary file: a few hundred KiB that a tar reader holding long names in memory
/// would inflate into the whole name. Generated in 1 MiB pieces; only the gzip is kept.
fn layer_with_huge_long_name(name_mib: u64) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&pierone_protocol::tar_header(
        "././@LongLink",
        b'L',
        name_mib << 20,
    ))
    .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..name_mib {
        gz.write_all(&zeros).unwrap();
    }
    gz.write_all(&pierone_protocol::tar_with(&[("bin/app", "hi")]))
        .unwrap();
    gz.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_with_a_huge_long_name_is_scanned_in_bounded_memory_and_only_once() {
    let layer = tokio::task::spawn_blocking(|| layer_with_huge_long_name(400))
        .await
        .unwrap();
    assert!(layer.len() < 2 << 20, "layer of {} bytes", layer.len());
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(dir.path(), &["--no-fsync"]);
    let c = Client::new(&p.url);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = c.push_blob("team/app", config).await;
    let ld = c.push_blob("team/app", &layer).await;
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld.as_str(), "size": layer.len()}],
    }))
    .unwrap();
    let r = c.put_manifest("team/app", "1.0", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let before = p.peak_rss_kib();

    let path = "/teams/team/artifacts/app/tags/1.0/scm-source";
    let started = std::time::Instant::now();
    oci_error(c.get(path).await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let first = started.elapsed();
    let peak = p.peak_rss_kib();
    eprintln!(
        "scm-source scan of a 400 MiB long name: {first:?}, peak RSS {before} KiB before, {peak} KiB after"
    );
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB (was {before} KiB)");

    // Asked again (and again): answered from the remembered miss, not by scanning.
    for _ in 0..3 {
        oci_error(c.get(path).await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
    let text = c.get("/metrics").await.text().await.unwrap();
    let scans = |kind| metric_in(&text, "pierone_scm_source_scans_total", &[("kind", kind)]);
    assert_eq!(scans("limit"), Some(1.0), "{text}");
    assert_eq!(scans("remembered_absent"), Some(3.0));
    assert_eq!(scans("absent"), None);
}
