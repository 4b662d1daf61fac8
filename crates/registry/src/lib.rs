//! The pierone HTTP server: the OCI distribution API on hyper 1, composed from the protocol,
//! blob store and tag store crates.
//!
//! This is the only crate that knows HTTP. It chooses no backend: whoever embeds it hands
//! [`Registry::new`] a [`BlobStore`] and a [`TagStore`] and serves it with [`run`].

mod api;
mod audit;
mod blobs;
mod conn;
mod error;
mod layers;
mod listing;
mod maintenance;
mod manifests;
mod metrics;
mod response;
mod routes;
pub mod scrub;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use pierone_auth::{Access, Authorizer, Principal};
use pierone_blobstore::BlobStore;
use pierone_protocol::{Digest, RepoName, Tag};
use pierone_tagstore::{ManifestRecord, TagPolicy, TagStore};
use tokio::net::TcpListener;

pub use error::RegistryError;
pub use maintenance::{GcConfig, GcReport, cloud_event};
pub use pierone_protocol::audit::AuditSigner;
use response::Resp;
use routes::Route;

/// What a registry may be configured with beyond its stores.
#[derive(Debug, Clone)]
pub struct Config {
    pub tag_policy: TagPolicy,
    /// Largest blob accepted, in bytes.
    pub max_blob_size: u64,
    /// An upload session untouched for this long is forgotten.
    pub upload_ttl: Duration,
    /// How long in-flight requests may take to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Who may do what; by default nothing is checked.
    pub auth: Authorizer,
    /// Webhook URLs told about every new or moved tag (CloudEvents, at least once).
    pub webhooks: Vec<String>,
    /// The CloudEvents `source` of those events.
    pub event_source: String,
    /// The wait after a failed delivery; it doubles with every failure, up to 5 minutes.
    pub webhook_retry_base: Duration,
    /// How often the outbox is checked when nothing woke the deliverer.
    pub outbox_poll: Duration,
    /// Signs audit checkpoints; without it none are made.
    pub audit_signer: Option<Arc<AuditSigner>>,
    pub checkpoint_interval: Duration,
    /// Garbage collection; an interval of zero turns it off.
    pub gc: GcConfig,
    /// Upload requests one principal may stream at once; more get 429.
    pub max_uploads_per_principal: usize,
    /// Largest request head (request line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head before the connection is closed.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open without a request in flight: from accept to the
    /// first request, and between requests (HTTP/1 keep-alive, HTTP/2). Requests themselves,
    /// however long, are not limited by it.
    pub idle_timeout: Duration,
    /// Connections one listener keeps open at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Whether `/metrics` is served by [`run`]; turn off when [`run_operations`] serves it on
    /// an internal address.
    pub metrics_on_main_listener: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tag_policy: TagPolicy::default(),
            max_blob_size: 64 << 30,
            upload_ttl: Duration::from_secs(24 * 3600),
            shutdown_grace: Duration::from_secs(30),
            auth: Authorizer::unchecked(),
            webhooks: Vec::new(),
            event_source: "/pierone".into(),
            webhook_retry_base: Duration::from_secs(1),
            outbox_poll: Duration::from_secs(1),
            audit_signer: None,
            checkpoint_interval: Duration::from_secs(60),
            gc: GcConfig::default(),
            max_uploads_per_principal: 64,
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            metrics_on_main_listener: true,
        }
    }
}

/// The registry: stores, configuration and caches. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Registry {
    blobs: Arc<dyn BlobStore>,
    tags: Arc<dyn TagStore>,
    config: Config,
    /// Manifests by repository and digest: content-addressed, so never stale.
    manifest_cache: quick_cache::sync::Cache<(RepoName, Digest), ManifestRecord, ManifestWeight>,
    /// Immutable tags only: once set they never change, so caching them is always correct,
    /// even with other replicas writing to the same database.
    tag_cache: quick_cache::sync::Cache<(RepoName, Tag), Digest>,
    metrics: metrics::Metrics,
    /// Upload requests in flight per principal.
    uploads: Mutex<HashMap<String, usize>>,
    /// Woken when a tag write queued events, so they go out at once rather than at the next
    /// poll.
    events_waiting: tokio::sync::Notify,
    /// For webhook deliveries.
    http: reqwest::Client,
    /// Scans of image layers for `scm-source.json`: their slots and remembered misses.
    scans: layers::Scans,
}

/// An upload request's place in its principal's allowance, given back on drop.
struct UploadSlot<'a> {
    registry: &'a Registry,
    who: String,
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        let mut m = self
            .registry
            .uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.who);
            }
        }
        self.registry.metrics.uploads_in_flight.dec();
    }
}

/// Bytes of the request line and headers, as sent.
fn head_size(req: &Request<Incoming>) -> usize {
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    req.method().as_str().len() + uri + 12 + headers
}

/// The client's `X-Request-Id` when it is a sane token, else a fresh one.
fn request_id(headers: &hyper::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

#[derive(Debug, Clone)]
struct ManifestWeight;

impl quick_cache::Weighter<(RepoName, Digest), ManifestRecord> for ManifestWeight {
    fn weight(&self, _key: &(RepoName, Digest), val: &ManifestRecord) -> u64 {
        val.body.len() as u64 + 256
    }
}

/// Bytes of manifests kept in memory: small, so the server's footprint stays bounded.
const MANIFEST_CACHE_BYTES: u64 = 8 << 20;

impl Registry {
    pub fn new(blobs: Arc<dyn BlobStore>, tags: Arc<dyn TagStore>, config: Config) -> Registry {
        let auth = config.auth.clone();
        Registry {
            blobs,
            tags,
            metrics: metrics::Metrics::new(move || auth.cache_stats()),
            uploads: Mutex::new(HashMap::new()),
            events_waiting: tokio::sync::Notify::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            config,
            manifest_cache: quick_cache::sync::Cache::with_weighter(
                8192,
                MANIFEST_CACHE_BYTES,
                ManifestWeight,
            ),
            tag_cache: quick_cache::sync::Cache::new(65536),
            scans: layers::Scans::new(),
        }
    }

    /// Answer one request. Every response carries `Docker-Distribution-API-Version`, errors
    /// included, or Docker clients fall back to the v1 protocol, and `X-Request-Id`, which
    /// also appears in error bodies and in the request's log line.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<response::Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let id = request_id(req.headers());
        let route = routes::parse(&path);
        let route_name = match &route {
            Ok(Some(r)) => r.name(),
            _ => "unknown",
        };
        let mut principal = String::new();
        let head = head_size(&req);
        let limit = self.config.max_header_bytes;
        let route = if head > limit {
            Err(RegistryError::HeadTooLarge { size: head, limit })
        } else {
            route
        };
        let mut resp = match self.dispatch(route, req, &mut principal).await {
            Ok(r) => r,
            Err(e) => {
                self.count_fault(&e);
                if e.status_and_code().0.is_server_error() {
                    tracing::error!(request_id = %id, %method, %path, error = %e, "request failed");
                }
                response::error(&e, &id)
            }
        };
        let h = resp.headers_mut();
        h.insert(
            "Docker-Distribution-API-Version",
            HeaderValue::from_static("registry/2.0"),
        );
        h.insert("X-Request-Id", response::header_value(&id));
        let status = resp.status().as_u16();
        let method_label = metrics::method_label(&method);
        self.metrics
            .requests
            .get_or_create(&metrics::RequestLabels {
                route: route_name,
                method: method_label,
                status,
            })
            .inc();
        self.metrics
            .latency
            .get_or_create(&metrics::RouteLabels {
                route: route_name,
                method: method_label,
            })
            .observe(started.elapsed().as_secs_f64());
        let sent = self.metrics.bytes_out.clone();
        let resp = resp.map(|b| {
            b.map_frame(move |f| {
                if let Some(d) = f.data_ref() {
                    sent.inc_by(d.len() as u64);
                }
                f
            })
            .boxed_unsync()
        });
        tracing::info!(
            request_id = %id,
            %method,
            %path,
            route = route_name,
            status,
            principal = %principal,
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        resp
    }

    /// Answer a request on the operations listener: metrics, liveness and readiness only,
    /// without credentials, logs or counting (scrapes would drown both).
    pub async fn handle_operations(&self, req: Request<Incoming>) -> Response<response::Body> {
        let id = request_id(req.headers());
        let answer = match (routes::parse(req.uri().path()), req.method()) {
            (Ok(Some(Route::Metrics)), &Method::GET) => Ok(self.metrics_response()),
            (Ok(Some(Route::Health)), &Method::GET) => Ok(self.api_health()),
            (Ok(Some(Route::Ready)), &Method::GET) => self.ready().await,
            _ => Err(RegistryError::NoRoute),
        };
        let mut resp = answer.unwrap_or_else(|e| response::error(&e, &id));
        resp.headers_mut().insert(
            "Docker-Distribution-API-Version",
            HeaderValue::from_static("registry/2.0"),
        );
        resp
    }

    /// Count failures of the backends for `/metrics`.
    fn count_fault(&self, e: &RegistryError) {
        use pierone_blobstore::Error as B;
        use pierone_tagstore::Error as T;
        let m = &self.metrics;
        let (family, kind) = match e {
            RegistryError::Tags(T::Unavailable(_)) => (&m.database_errors, "unavailable"),
            RegistryError::Tags(T::Query(_)) => (&m.database_errors, "query"),
            RegistryError::Tags(T::Corrupt(_)) => (&m.database_errors, "corrupt"),
            RegistryError::Blobs(B::Io { .. }) => (&m.blob_store_errors, "io"),
            RegistryError::Blobs(B::Backend(_)) => (&m.blob_store_errors, "backend"),
            RegistryError::Blobs(B::Throttled(_)) => (&m.blob_store_errors, "throttled"),
            RegistryError::Blobs(B::Unavailable(_)) => (&m.blob_store_errors, "unavailable"),
            // Client mistakes and refusals are not faults of a backend.
            _ => return,
        };
        family.get_or_create(&metrics::KindLabels { kind }).inc();
    }

    /// Take one of `principal`'s upload slots, or refuse with 429.
    fn upload_slot(&self, principal: &Principal) -> Result<UploadSlot<'_>, RegistryError> {
        let who = principal.uid().to_owned();
        let mut m = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(who.clone()).or_insert(0);
        if *n >= self.config.max_uploads_per_principal {
            self.metrics.uploads_refused.inc();
            return Err(RegistryError::TooManyUploads {
                limit: self.config.max_uploads_per_principal,
            });
        }
        *n += 1;
        self.metrics.uploads_in_flight.inc();
        Ok(UploadSlot {
            registry: self,
            who,
        })
    }

    async fn dispatch(
        &self,
        route: Result<Option<Route>, RegistryError>,
        req: Request<Incoming>,
        who: &mut String,
    ) -> Result<Resp, RegistryError> {
        let route = route?.ok_or(RegistryError::NoRoute)?;
        let m = req.method().clone();
        let auth = &self.config.auth;
        let header = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let access = access(&route, &m);
        let principal = if access == Access::Public {
            Principal::Anonymous
        } else {
            auth.authenticate(header).await?
        };
        who.push_str(principal.uid());
        auth.authorize(&principal, &access).await?;
        // Upload requests stream bodies; each principal gets a bounded number at once.
        let _slot = match (&route, &m) {
            (Route::UploadStart(_), &Method::POST)
            | (Route::Upload(..), &Method::PATCH | &Method::PUT) => {
                Some(self.upload_slot(&principal)?)
            }
            _ => None,
        };
        match route {
            Route::Base => match m {
                Method::GET | Method::HEAD => Ok(response::json(
                    hyper::StatusCode::OK,
                    "application/json",
                    &serde_json::json!({}),
                )),
                other => Err(RegistryError::MethodNotAllowed(other)),
            },
            Route::Catalog => match m {
                Method::GET => self.catalog(&req).await,
                other => Err(RegistryError::MethodNotAllowed(other)),
            },
            Route::Tags(repo) => match m {
                Method::GET => self.tags_list(&repo, &req).await,
                other => Err(RegistryError::MethodNotAllowed(other)),
            },
            Route::Referrers(repo, digest) => match m {
                Method::GET => self.referrers(&repo, &digest, &req).await,
                other => Err(RegistryError::MethodNotAllowed(other)),
            },
            Route::Manifest(repo, reference) => match m {
                Method::GET => self.get_manifest(&repo, &reference, true).await,
                Method::HEAD => self.get_manifest(&repo, &reference, false).await,
                Method::PUT => self.put_manifest(&repo, &reference, &principal, req).await,
                Method::DELETE => Err(RegistryError::DeleteRefused("deleting a manifest or tag")),
                other => Err(RegistryError::MethodNotAllowed(other)),
            },
            Route::ManifestBadReference(repo, reference) => match m {
                Method::GET | Method::HEAD => {
                    Err(RegistryError::ManifestReferenceUnknown(repo, reference))
                }
                Method::PUT => Err(RegistryError::Protocol(
                    pierone_protocol::Error::InvalidTag(reference),
                )),
                Method::DELETE => Err(RegistryError::DeleteRefused("deleting a manifest or tag")),
                other => Err(RegistryError::MethodNotAllowed(other)),
            },
            Route::Blob(repo, digest) => match m {
                Method::GET => self.get_blob(&repo, &digest, &req, true).await,
                Method::HEAD => self.get_blob(&repo, &digest, &req, false).await,
                Method::DELETE => Err(RegistryError::DeleteRefused("deleting a blob")),
                other => Err(RegistryError::MethodNotAllowed(other)),
            },
            Route::UploadStart(repo) => match m {
                Method::POST => self.start_upload(&repo, &principal, req).await,
                other => Err(RegistryError::MethodNotAllowed(other)),
            },
            Route::Teams => self.api_get(&m, self.api_teams(&req)).await,
            Route::Artifacts(t) => self.api_get(&m, self.api_artifacts(&t, &req)).await,
            Route::ArtifactTags(repo) => self.api_get(&m, self.api_tags(&repo, &req)).await,
            Route::ArtifactTag(repo, tag) => self.api_get(&m, self.api_tag(&repo, &tag)).await,
            Route::Latest(repo) => self.api_get(&m, self.api_latest(&repo)).await,
            Route::ScmSource(repo, tag) => self.api_get(&m, self.api_scm_source(&repo, &tag)).await,
            Route::Image(prefix) => self.api_get(&m, self.api_image(&prefix, &req)).await,
            Route::Stats => self.api_get(&m, self.api_stats()).await,
            Route::TeamStats => self.api_get(&m, self.api_team_stats()).await,
            Route::Health => self.api_get(&m, async { Ok(self.api_health()) }).await,
            Route::Ready => self.api_get(&m, self.ready()).await,
            // With a separate metrics listener, the public one does not expose them.
            Route::Metrics if !self.config.metrics_on_main_listener => Err(RegistryError::NoRoute),
            Route::Metrics => {
                self.api_get(&m, async { Ok(self.metrics_response()) })
                    .await
            }
            Route::AuditLog => self.api_get(&m, self.audit_log(&req)).await,
            Route::AuditCheckpoint => self.api_get(&m, self.audit_checkpoint()).await,
            Route::AuditProof => self.api_get(&m, self.audit_proof(&req)).await,
            Route::OpenApi => self.api_get(&m, async { Ok(self.api_openapi()) }).await,
            Route::Upload(repo, id) => match m {
                Method::GET => self.upload_status(&repo, &id, &principal).await,
                Method::PATCH => self.upload_chunk(&repo, &id, &principal, req).await,
                Method::PUT => self.finish_upload(&repo, &id, &principal, req).await,
                Method::DELETE => self.cancel_upload(&repo, &id, &principal).await,
                other => Err(RegistryError::MethodNotAllowed(other)),
            },
        }
    }
}

impl Registry {
    /// The Pier One API is read-only: GET (and HEAD) only.
    async fn api_get(
        &self,
        method: &Method,
        handler: impl Future<Output = Result<Resp, RegistryError>>,
    ) -> Result<Resp, RegistryError> {
        match *method {
            Method::GET | Method::HEAD => handler.await,
            ref other => Err(RegistryError::MethodNotAllowed(other.clone())),
        }
    }
}

/// What `method` on `route` needs: reads are GET and HEAD, anything else on a repository is a
/// write (so an anonymous DELETE gets 401, and an authorised one the 405 that says why not).
fn access(route: &Route, method: &Method) -> Access {
    let read = matches!(*method, Method::GET | Method::HEAD);
    let team = |repo: &RepoName| repo.team().to_owned();
    match route {
        Route::Base => Access::Ping,
        Route::Catalog => Access::Read { team: None },
        Route::Tags(repo)
        | Route::Referrers(repo, _)
        | Route::Manifest(repo, _)
        | Route::ManifestBadReference(repo, _)
        | Route::Blob(repo, _) => {
            if read {
                Access::Read {
                    team: Some(team(repo)),
                }
            } else {
                Access::Write { team: team(repo) }
            }
        }
        Route::UploadStart(repo) | Route::Upload(repo, _) => Access::Write { team: team(repo) },
        Route::Teams
        | Route::Image(_)
        | Route::Stats
        | Route::TeamStats
        | Route::AuditLog
        | Route::AuditCheckpoint
        | Route::AuditProof => Access::Read { team: None },
        Route::Artifacts(t) => Access::Read {
            team: Some(t.clone()),
        },
        Route::ArtifactTags(repo)
        | Route::ArtifactTag(repo, _)
        | Route::Latest(repo)
        | Route::ScmSource(repo, _) => Access::Read {
            team: Some(team(repo)),
        },
        // Probes, metrics (labelled by route only) and the API description need no
        // credentials.
        Route::Health | Route::Ready | Route::Metrics | Route::OpenApi => Access::Public,
    }
}

/// Serve `registry` on `listener` until `shutdown` completes, then stop accepting, let
/// in-flight requests finish (up to the configured grace period) and return. Background work
/// (checkpoints, event delivery, garbage collection) runs for as long.
pub async fn run(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve(listener, registry, None, Listener::Main, shutdown).await
}

/// Serve only `/metrics`, `/.well-known/health` and `/.well-known/ready` on `listener` (an
/// internal address for scrapers and probes) until `shutdown` completes. Runs no background
/// work: [`run`] does that.
pub async fn run_operations(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve(listener, registry, None, Listener::Operations, shutdown).await
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// The registry and the Pier One API; runs the background work.
    Main,
    /// Metrics and probes only.
    Operations,
}

/// [`run`] over TLS with `tls` (see [`tls::server_config`]); HTTP/2 and HTTP/1.1 by ALPN.
pub async fn run_tls(
    listener: TcpListener,
    registry: Arc<Registry>,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve(
        listener,
        registry,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        Listener::Main,
        shutdown,
    )
    .await
}

/// hyper's default HTTP/1 read buffer limit (8 KiB + 100 x 4 KiB).
const HYPER_DEFAULT_BUF: usize = 8192 + 4096 * 100;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    kind: Listener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The read buffer bounds the request head hyper will parse (a longer one gets 431), but
    // it is also the size of body reads: below hyper's default (~400 KiB) pushes cost ~10%
    // more CPU. So the buffer stays at least that large and `handle` enforces smaller limits.
    builder
        .http1()
        .max_buf_size(registry.config.max_header_bytes.max(HYPER_DEFAULT_BUF));
    // A client gets this long to send its request head: a slow-loris connection cannot hold
    // a slot forever.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(registry.config.header_read_timeout);
    // Adaptive flow-control windows: with hyper's fixed 1 MiB window a blob push over HTTP/2
    // is capped at 1 MiB per round trip, which is slow over a WAN.
    // Pings find HTTP/2 peers that vanished while a request was in flight; idle ones are
    // closed by the idle timeout.
    let idle_timeout = registry.config.idle_timeout;
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(idle_timeout))
        .keep_alive_timeout(idle_timeout.min(Duration::from_secs(20)))
        .adaptive_window(true)
        .max_header_list_size(u32::try_from(registry.config.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let grace = registry.config.shutdown_grace;
    let background = (kind == Listener::Main).then(|| maintenance::spawn(&registry));
    tokio::pin!(shutdown);
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut accept_errors = conn::AcceptErrors::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tokio::time::sleep(accept_errors.failed(&e, &registry.metrics)).await;
                        continue;
                    }
                };
                accept_errors.accepted();
                // Beyond the limit, closing at once costs one descriptor for an instant;
                // keeping it in the backlog would leave the client hanging instead.
                let Some(slot) = conn::Slot::take(&open, registry.config.max_connections, &registry) else {
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let idle = conn::Idle::new();
                let svc = service_fn({
                    let registry = registry.clone();
                    let idle = idle.clone();
                    move |req| {
                        let registry = registry.clone();
                        let busy = idle.busy();
                        async move {
                            let resp = match kind {
                                Listener::Main => registry.handle(req).await,
                                Listener::Operations => registry.handle_operations(req).await,
                            };
                            Ok::<_, Infallible>(resp.map(|b| conn::hold(b, busy)))
                        }
                    }
                });
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let tls = tls.clone();
                let registry = registry.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let metrics = &registry.metrics;
                    let result = match tls {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            conn::until_idle(watcher.watch(conn.into_owned()), &idle, idle_timeout, metrics).await
                        }
                        Some(acceptor) => {
                            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            conn::until_idle(watcher.watch(conn.into_owned()), &idle, idle_timeout, metrics).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; dropping connections"),
    }
    if let Some(b) = background {
        b.stop(grace).await;
    }
    Ok(())
}
