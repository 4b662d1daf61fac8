//! What operators rely on: metrics, readiness, request ids in logs and error bodies, limits,
//! and a graceful stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pierone_auth::{
    AuthConfig, Authorizer, CachingValidator, MemoryTeams, StaticValidator, TokenInfo,
};
use pierone_registry::Config;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::util::{
    Client, OCI_MANIFEST, Process, TestServer, digest_of_chunks, header, metric_in, oci_error,
    trickle,
};

/// A monolithic blob push whose body trickles in over `n` tenths of a second.
fn slow_push(
    c: &Client,
    n: u64,
    len: usize,
) -> (
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    pierone_protocol::Digest,
) {
    let body = trickle(5, n, len, Duration::from_millis(100));
    let digest = digest_of_chunks(5, n, len);
    let url = format!("/v2/team/app/blobs/uploads/?digest={digest}");
    let req = c.req(Method::POST, &url).body(body);
    (tokio::spawn(req.send()), digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let info = TokenInfo {
        uid: "ci-bot".into(),
        realm: "/services".into(),
        scopes: ["uid", "application.write_all"]
            .into_iter()
            .map(str::to_owned)
            .collect(),
        expires_in: None,
        teams: None,
    };
    let validator = CachingValidator::new(
        Arc::new(StaticValidator::new([("secret".to_owned(), info)])),
        64 << 10,
        Duration::from_secs(60),
        Duration::from_secs(10),
    );
    let auth = Authorizer::new(
        Arc::new(validator),
        Arc::new(MemoryTeams::default()),
        AuthConfig::default(),
    );
    let s = TestServer::start_with(Config {
        auth,
        ..Config::default()
    })
    .await;
    let mut c = s.client();
    c.http = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                "Bearer secret".parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let m = c.image("team/app", "metrics").await;
    let r = c.put_manifest("team/app", "1.0", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c.get("/v2/team/app/manifests/1.0").await;
    assert_eq!(r.bytes().await.unwrap().len(), m.len());
    let r = c.get("/v2/team/app/manifests/nope").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Scraping needs no token.
    let r = reqwest::get(format!("{}/metrics", s.url)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        header(&r, "Content-Type")
            .unwrap()
            .contains("openmetrics-text")
    );
    let text = r.text().await.unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        metric_in(&text, name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{text}"))
    };
    let requests = "pierone_http_requests_total";
    assert_eq!(
        value(
            requests,
            &[("route", "manifest"), ("method", "PUT"), ("status", "201")]
        ),
        1.0
    );
    assert_eq!(
        value(
            requests,
            &[("route", "manifest"), ("method", "GET"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        value(
            requests,
            &[
                ("route", "upload_start"),
                ("method", "POST"),
                ("status", "201")
            ]
        ),
        2.0
    );
    // Histograms, which the scalar reader above refuses, are checked on the parsed scrape.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let latency = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "pierone_http_request_duration_seconds"
                && s.labels.get("route") == Some("manifest")
        })
        .unwrap_or_else(|| panic!("no latency histogram in\n{text}"));
    assert!(
        matches!(&latency.value, prometheus_parse::Value::Histogram(b) if !b.is_empty()),
        "{:?}",
        latency.value
    );
    assert!(value("pierone_received_bytes_total", &[]) >= m.len() as f64 + 1000.0);
    assert!(value("pierone_sent_bytes_total", &[]) >= m.len() as f64);
    assert_eq!(value("pierone_uploads_in_flight", &[]), 0.0);
    // Five authenticated requests, one token-info lookup.
    assert_eq!(value("pierone_token_cache_misses_total", &[]), 1.0);
    assert_eq!(value("pierone_token_cache_hits_total", &[]), 4.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_move_to_an_internal_listener() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ops = free.local_addr().unwrap().to_string();
    drop(free);
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(dir.path(), &["--metrics-listen", &ops]);
    let c = Client::new(&p.url);
    assert_eq!(c.get("/v2/").await.status(), StatusCode::OK);
    let r = c.get("/metrics").await;
    oci_error(r, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    let internal = Client::new(&format!("http://{ops}"));
    let text = internal.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(r#"pierone_http_requests_total{route="base",method="GET",status="200"} 1"#),
        "{text}"
    );
    assert_eq!(
        internal.get("/.well-known/ready").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        internal.get("/.well-known/health").await.status(),
        StatusCode::OK
    );
    let r = internal.get("/v2/").await;
    oci_error(r, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_tie_error_bodies_to_log_lines() {
    let s = TestServer::start().await;
    let c = s.client();
    let r = c.get("/v2/team/app/manifests/nope").await;
    let id = header(&r, "X-Request-Id").expect("X-Request-Id");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
    // A caller's own id is kept, so a trace spans the proxy and the registry.
    let r = c
        .req(Method::GET, "/v2/team/app/manifests/nope")
        .header("X-Request-Id", "lb-7f3a.1")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "X-Request-Id").as_deref(), Some("lb-7f3a.1"));
    // ...unless it is not a sane token.
    let r = c
        .req(Method::GET, "/v2/")
        .header("X-Request-Id", "x".repeat(300))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "X-Request-Id").unwrap().len(), 32);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_speaks_http2_with_prior_knowledge() {
    let s = TestServer::start().await;
    let url = format!("{}/v2/", s.url);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                &url,
            ])
            .output()
            .expect("run curl")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_request_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pierone-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("PIERONE_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
            let _ = tx.send(v);
        }
    });
    let next = |what: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line for {what}"));
            if pred(&v) {
                return v;
            }
        }
    };
    // A fresh start logs no errors (a new SQLite database once logged "database is locked"
    // while the pool's connections raced to switch it to WAL).
    let ready = next("start-up", &|v| {
        assert_ne!(v["level"], "ERROR", "error at start-up: {v}");
        v["message"] == "pierone-server ready"
    });
    let url = format!("http://{}", ready["listen"].as_str().unwrap());
    let r = Client::new(&url)
        .req(Method::GET, "/v2/team/app/manifests/nope")
        .header("X-Request-Id", "json-log-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let line = next("the request", &|v| v["request_id"] == "json-log-1");
    assert_eq!(line["message"], "request");
    assert_eq!(line["status"], 404);
    assert_eq!(line["route"], "manifest");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/v2/team/app/manifests/nope");
    assert_eq!(line["level"], "INFO");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_per_principal_limit_get_429() {
    let s = TestServer::start_with(Config {
        max_uploads_per_principal: 1,
        ..Config::default()
    })
    .await;
    let c = s.client();
    let (first, _) = slow_push(&c, 6, 16 * 1024);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = c
        .req(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "Retry-After").as_deref(), Some("1"));
    let e = oci_error(r, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    assert!(e.message.contains("at most 1"), "{}", e.message);
    // Reads are not limited, and the slot comes back when the upload ends.
    assert_eq!(c.get("/v2/").await.status(), StatusCode::OK);
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::CREATED);
    let r = c
        .req(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_refused() {
    let s = TestServer::start_with(Config {
        max_header_bytes: 16 * 1024,
        ..Config::default()
    })
    .await;
    let c = s.client();
    let r = c
        .req(Method::GET, "/v2/")
        .header("X-Padding", "p".repeat(32 * 1024))
        .send()
        .await
        .unwrap();
    let e = oci_error(
        r,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "SIZE_INVALID",
    )
    .await;
    assert!(e.message.contains("16384"), "{}", e.message);
    // Past what even the connection buffers, hyper itself refuses.
    let r = c
        .req(Method::GET, "/v2/")
        .header("X-Padding", "p".repeat(1024 * 1024))
        .send()
        .await;
    assert!(
        r.as_ref().map_or(true, |r| r.status()
            == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        "{r:?}"
    );
    let r = c
        .req(Method::GET, "/v2/")
        .header("X-Padding", "p".repeat(4 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(Config {
        header_read_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(s.host()).await.unwrap();
    conn.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(400));
    // A client that sends its head in time is served as usual.
    assert_eq!(s.client().get("/v2/").await.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_checks_the_backends() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path(), Config::default()).await;
    let c = s.client();
    let r = c.get("/.well-known/ready").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ready": true, "database": "ok", "blob_store": "ok"})
    );
    // The blob directory disappears (a lost mount): not ready, but alive.
    let data = dir.path().join("data");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::write(&data, b"not a directory").unwrap();
    let r = c.get("/.well-known/ready").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["database"], "ok");
    assert_ne!(v["blob_store"], "ok", "{v}");
    assert_eq!(c.get("/.well-known/health").await.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_push_finish_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start(dir.path(), &[]);
    let c = Client::new(&p.url);
    let (push, digest) = slow_push(&c, 8, 64 * 1024);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let r = push.await.unwrap().unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "the accepted push completed"
    );
    let start = Instant::now();
    let status = loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    // What was acknowledged is there after a restart.
    let p2 = Process::start(dir.path(), &[]);
    let r = Client::new(&p2.url)
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Read until the server closes `conn` (or `limit` passes); returns what was read and when
/// the connection ended, or `None` if it stayed open.
async fn read_until_closed(
    conn: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Option<(Vec<u8>, Instant)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    match tokio::time::timeout(limit, conn.read_to_end(&mut buf)).await {
        // A reset is a close too.
        Ok(_) => Some((buf, Instant::now())),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(dir.path(), &["--idle-timeout", "500ms"]);
    let host = p.url.trim_start_matches("http://").to_owned();
    let mut silent = tokio::net::TcpStream::connect(&host).await.unwrap();
    let opened = Instant::now();
    let (read, closed) = read_until_closed(&mut silent, Duration::from_secs(10))
        .await
        .expect("a silent connection stayed open");
    assert!(read.is_empty(), "{read:?}");
    let after = closed - opened;
    assert!(
        after >= Duration::from_millis(400) && after < Duration::from_secs(5),
        "closed after {after:?}"
    );
    // Others are served as usual, and the close was counted.
    let text = Client::new(&p.url)
        .get("/metrics")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric_in(&text, "pierone_connections_idle_closed_total", &[]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_but_a_busy_one_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(Config {
        idle_timeout: Duration::from_millis(600),
        ..Config::default()
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(s.host()).await.unwrap();
    // Requests 300 ms apart: the idle time restarts after each, so the connection lives
    // longer than the timeout while it is used.
    for _ in 0..4 {
        conn.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        // The body is `{}`, sent chunked.
        while !got.ends_with(b"\r\n0\r\n\r\n") {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
                .await
                .expect("answered")
                .unwrap();
            assert!(
                n > 0,
                "closed while in use: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let idle_from = Instant::now() - Duration::from_millis(300);
    let (rest, closed) = read_until_closed(&mut conn, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection stayed open");
    assert!(rest.is_empty());
    assert!(closed - idle_from >= Duration::from_millis(500));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_sent_only_its_preface_is_closed() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start_with(Config {
        idle_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(s.host()).await.unwrap();
    let opened = Instant::now();
    // The client preface and an empty SETTINGS frame; then nothing.
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let (read, closed) = read_until_closed(&mut conn, Duration::from_secs(10))
        .await
        .expect("an HTTP/2 connection without streams stayed open");
    // The server spoke HTTP/2 (its SETTINGS frame) before closing.
    assert_eq!(read.get(3), Some(&4), "{read:?}");
    assert!(closed - opened >= Duration::from_millis(400));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once_and_counted() {
    let s = TestServer::start_with(Config {
        max_connections: 3,
        ..Config::default()
    })
    .await;
    let mut held = vec![];
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(s.host()).await.unwrap());
    }
    // Let the server accept them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = tokio::net::TcpStream::connect(s.host()).await.unwrap();
    let opened = Instant::now();
    let (read, closed) = read_until_closed(&mut extra, Duration::from_secs(5))
        .await
        .expect("the connection over the limit stayed open");
    assert!(read.is_empty());
    assert!(closed - opened < Duration::from_secs(1));
    // A slot frees when a connection closes.
    held.pop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = s.client().get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric_in(&text, "pierone_connections_refused_total", &[]),
        Some(1.0)
    );
    assert_eq!(metric_in(&text, "pierone_connections_open", &[]), Some(3.0));
    drop(held);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_and_downloads_outlast_the_idle_timeout() {
    let s = TestServer::start_with(Config {
        idle_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let c = s.client();
    // 12 chunks 100 ms apart: four times the idle timeout.
    let (push, digest) = slow_push(&c, 12, 64 * 1024);
    assert_eq!(push.await.unwrap().unwrap().status(), StatusCode::CREATED);

    // A download read slowly for longer than the idle timeout, large enough that the server
    // is still sending when it ends.
    let big = crate::util::chunk(17, 0, 32 << 20);
    let d = c.push_blob("team/app", &big).await;
    let mut r = c.get(&format!("/v2/team/app/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut got = Vec::with_capacity(big.len());
    let started = Instant::now();
    while let Some(b) = r.chunk().await.unwrap() {
        got.extend_from_slice(&b);
        if started.elapsed() < Duration::from_millis(1200) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(1200));
    assert_eq!(got.len(), big.len());
    assert_eq!(pierone_protocol::Digest::sha256_of(&got), d);
    let r = c
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.stop().await;
}
