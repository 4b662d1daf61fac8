//! Test harness: registries started for real (in-process or as the built binary) on
//! 127.0.0.1:0, and a small client for the distribution API.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pierone_blobstore::FsBlobStore;
use pierone_protocol::Digest;
use pierone_registry::{Config, Registry};
use pierone_tagstore::SqlTagStore;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A registry served in-process by the library, with filesystem blobs and SQLite metadata in
/// a temporary directory.
pub struct TestServer {
    pub url: String,
    root: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TestServer::start_in(dir.path(), config).await;
        s._dir = Some(dir);
        s
    }

    /// A server on the stores under `root`, which outlive it: start another on the same
    /// directory to restart.
    pub async fn start_in(root: &std::path::Path, config: Config) -> TestServer {
        let blobs = FsBlobStore::open(root.join("data")).await.unwrap();
        let db = root.join("meta.db");
        let tags = SqlTagStore::open(db.to_str().unwrap()).await.unwrap();
        let registry = Arc::new(Registry::new(Arc::new(blobs), Arc::new(tags), config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(pierone_registry::run(listener, registry, async {
            let _ = rx.await;
        }));
        TestServer {
            url,
            root: root.to_owned(),
            _dir: None,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }

    /// Stop accepting, wait for in-flight requests, and return once the server has stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    /// The SQLite metadata database the server writes.
    pub fn db_path(&self) -> std::path::PathBuf {
        self.root.join("meta.db")
    }

    /// The host:port, as container tools want it.
    pub fn host(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

/// The real `pierone-server` executable, started on a free port.
pub struct Process {
    pub child: Child,
    pub url: String,
    /// Everything the server has logged so far, one line each.
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Process {
    pub fn start(data_dir: &std::path::Path, extra: &[&str]) -> Process {
        Process::start_with_env(data_dir, extra, &[])
    }

    pub fn start_with_env(
        data_dir: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pierone-server"))
            .envs(env.iter().copied())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("PIERONE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pierone-server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("listen="))
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.to_owned());
                }
                // Keep draining so the server never blocks on a full pipe.
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("pierone-server did not report its address");
        Process {
            child,
            url: format!("http://{addr}"),
            log,
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Current resident memory in KiB (VmRSS) of the server process.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Peak resident memory in KiB (VmHWM) of the server process.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }
}

/// A `kB` field of `/proc/<pid>/status`.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A distribution-API client for tests.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

/// An OCI error response, checked to be the spec's envelope.
#[derive(Debug)]
pub struct OciError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub detail: Value,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{}", self.base, path)
        };
        self.http.request(method, url)
    }

    /// Monolithic push in one POST.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let d = Digest::sha256_of(data);
        let r = self
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            )
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "push blob: {:?}",
            r.text().await
        );
        d
    }

    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        location(&r)
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Push a config and a layer derived from `seed` and return an OCI image manifest that
    /// references them.
    pub async fn image(&self, repo: &str, seed: &str) -> Vec<u8> {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
        let layer = format!("layer of {seed}").repeat(100);
        let c = self.push_blob(repo, config.as_bytes()).await;
        let l = self.push_blob(repo, layer.as_bytes()).await;
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c.as_str(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.as_str(), "size": layer.len()}],
        }))
        .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.req(Method::GET, path).send().await.unwrap()
    }
}

pub fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("Location")
        .expect("Location header")
        .to_str()
        .unwrap()
        .to_owned()
}

pub fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Read an error response, asserting the envelope, the registry header and the status.
pub async fn oci_error(r: reqwest::Response, status: StatusCode, code: &str) -> OciError {
    assert_eq!(
        header(&r, "Docker-Distribution-API-Version").as_deref(),
        Some("registry/2.0")
    );
    let got = r.status();
    let body: Bytes = r.bytes().await.unwrap();
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    let e = &v["errors"][0];
    let err = OciError {
        status: got,
        code: e["code"].as_str().unwrap_or_default().to_owned(),
        message: e["message"].as_str().unwrap_or_default().to_owned(),
        detail: e["detail"].clone(),
    };
    assert_eq!((err.status, err.code.as_str()), (status, code), "{err:?}");
    err
}

/// What a fake HTTP service sees of a request: path with query, the Authorization header,
/// and the body.
pub struct Seen {
    pub path: String,
    pub authorization: String,
    pub body: String,
}

/// The answer of a fake service: status, body, and a delay before answering.
pub type Answer = (u16, String, Duration);

/// A small HTTP service on 127.0.0.1:0 answering with `handler`; returns its base URL and a
/// request counter.
pub async fn fake_service(
    handler: Arc<dyn Fn(&Seen) -> Answer + Send + Sync>,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async move {
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let authorization = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                path,
                                authorization,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            };
                            let (status, body, delay) = handler(&seen);
                            tokio::time::sleep(delay).await;
                            let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, calls)
}

/// A token-info endpoint answering from a fixed table: `GET /tokeninfo` with
/// `Authorization: Bearer <token>` gives the token's JSON, or 400 for unknown tokens. Special tokens: `slow` answers after
/// 3 s, `garbage` answers HTML, `boom` answers 503.
pub struct FakeTokenInfo {
    pub url: String,
    pub calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeTokenInfo {
    pub async fn start(tokens: Vec<(&str, Value)>) -> FakeTokenInfo {
        let table: std::collections::HashMap<String, Value> =
            tokens.into_iter().map(|(t, v)| (t.to_owned(), v)).collect();
        let (base, calls) = fake_service(Arc::new(move |seen: &Seen| {
            // As STUPS token-info takes it; pierone never puts the token in the URL.
            let token = seen
                .authorization
                .strip_prefix("Bearer ")
                .filter(|_| seen.path == "/tokeninfo")
                .unwrap_or("");
            let now = Duration::ZERO;
            match token {
                "slow" => (
                    200,
                    json!({"uid": "slow"}).to_string(),
                    Duration::from_secs(3),
                ),
                "garbage" => (200, "<html>not json</html>".to_owned(), now),
                "boom" => (503, "down".to_owned(), now),
                t => match table.get(t) {
                    Some(v) => (200, v.to_string(), now),
                    None => (400, json!({"error": "invalid_token"}).to_string(), now),
                },
            }
        }))
        .await;
        FakeTokenInfo {
            url: format!("{base}/tokeninfo"),
            calls,
        }
    }
}

/// Token-info JSON for a token.
pub fn token_json(uid: &str, realm: &str, scopes: &[&str], expires_in: i64) -> Value {
    json!({"uid": uid, "realm": realm, "scope": scopes, "expires_in": expires_in})
}

/// Deterministic pseudo-random bytes, generated in chunks so tests never hold a big blob.
pub fn chunk(seed: u64, index: u64, len: usize) -> Bytes {
    let mut x = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// The digest of chunks `0..n` of `seed`.
pub fn digest_of_chunks(seed: u64, n: u64, len: usize) -> Digest {
    let mut h = pierone_protocol::Hasher::new(pierone_protocol::Algorithm::Sha256);
    for i in 0..n {
        h.update(&chunk(seed, i, len));
    }
    h.finish()
}

/// A request body of chunks `0..n` of `seed`, each sent `gap` after the one before: a client
/// still uploading while the test does something else.
pub fn trickle(seed: u64, n: u64, len: usize, gap: Duration) -> reqwest::Body {
    let s = futures_util::stream::unfold(0u64, move |i| async move {
        if i == n {
            return None;
        }
        tokio::time::sleep(gap).await;
        Some((Ok::<_, std::io::Error>(chunk(seed, i, len)), i + 1))
    });
    reqwest::Body::wrap_stream(s)
}

/// The sum of the samples of `name` whose labels include `labels`, in a Prometheus text
/// scrape (which must parse); `None` when there is no such sample.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{text}"));
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is {other:?}"),
        })
        .collect();
    (!found.is_empty()).then(|| found.iter().sum())
}

/// The current value of the counter or gauge `name` (0 when it has no sample yet).
pub async fn metric(c: &Client, name: &str) -> f64 {
    let text = c.get("/metrics").await.text().await.unwrap();
    metric_in(&text, name, &[]).unwrap_or(0.0)
}
