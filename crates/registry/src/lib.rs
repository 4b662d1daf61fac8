//! The pierone HTTP server: the OCI distribution API on hyper 1, composed from the protocol,
//! blob store and tag store crates.
//!
//! This is the only crate that knows HTTP. It chooses no backend: whoever embeds it hands
//! [`Registry::new`] a [`BlobStore`] and a [`TagStore`] and serves it with [`run`].

//! The pierone HTTP server: the OCI distribution API and the Pier One API on hyper 1, over
//! the transport-free [`pierone_service::Service`].
//!
//! This crate knows HTTP and nothing else: routes, the auth gate, request parsing, responses,
//! the one mapping of errors to statuses and OCI codes, metrics, TLS and connection limits.
//! What a request does is the service's. It reaches the stores only through the service and
//! chooses no backend: whoever embeds it builds a [`Registry`] and serves it with [`run`], or
//! mounts [`Registry::tower`] in a tower stack, or calls [`Registry::handle`] in process.
//!
//! ```no_run
//! use std::sync::Arc;
//! use pierone_registry::{Config, Registry};
//! use pierone_service::{MemoryBlobStore, MemoryTagStore};
//!
//! # async fn serve() -> std::io::Result<()> {
//! let registry = Arc::new(Registry::new(
//!     Arc::new(MemoryBlobStore::new()),
//!     Arc::new(MemoryTagStore::new()),
//!     Config::default(),
//! ));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! pierone_registry::run(listener, registry, std::future::pending()).await
//! # }
//! ```

#![warn(missing_docs)]

mod api;
mod audit;
mod blobs;
mod conn;
mod error;
mod listing;
mod manifests;
mod metrics;
mod response;
mod routes;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use pierone_auth::{Access, Authorizer, Principal};
use pierone_protocol::RepoName;
use pierone_service::{BlobStore, Caller, Service, TagPolicy, TagStore};
use tokio::net::TcpListener;

pub use error::{ErrorHeaders, RegistryError};
pub use pierone_service::{AuditSigner, GcConfig, GcReport, cloud_event};
pub use response::Body;
use response::Resp;
use routes::Route;

/// A request body the handler can read: any [`hyper::body::Body`] of [`Bytes`] whose error
/// converts into a boxed error (hyper's `Incoming`, `Full<Bytes>`, axum's body...).
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send>
    + Send
    + 'static
{
}

impl<B> RequestBody for B where
    B: hyper::body::Body<
            Data = Bytes,
            Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
        > + Send
        + 'static
{
}

/// What the HTTP front door is configured with; the service's part is in
/// [`pierone_service::Config`].
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// How long in-flight requests may take to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Who may do what; by default nothing is checked.
    pub auth: Authorizer,
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

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            shutdown_grace: Duration::from_secs(30),
            auth: Authorizer::unchecked(),
            max_uploads_per_principal: 64,
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            metrics_on_main_listener: true,
        }
    }
}

/// Everything a registry may be configured with beyond its stores, in one place: the
/// service's settings and the HTTP ones ([`Config::split`] parts them).
#[derive(Debug, Clone)]
pub struct Config {
    /// Which tags are immutable, and whether `latest` may be pushed.
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
    /// How often a checkpoint is signed.
    pub checkpoint_interval: Duration,
    /// Garbage collection; an interval of zero turns it off.
    pub gc: GcConfig,
    /// Which tags may only name manifests signed by the team's keys; without it none.
    pub trust_policy: Option<Arc<pierone_service::trust::TrustPolicyFile>>,
    /// Upload requests one principal may stream at once; more get 429.
    pub max_uploads_per_principal: usize,
    /// Largest request head (request line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head before the connection is closed.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open without a request in flight (see
    /// [`HttpConfig::idle_timeout`]).
    pub idle_timeout: Duration,
    /// Connections one listener keeps open at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Whether `/metrics` is served by [`run`]; turn off when [`run_operations`] serves it on
    /// an internal address.
    pub metrics_on_main_listener: bool,
}

impl Default for Config {
    fn default() -> Self {
        let (service, http) = (pierone_service::Config::default(), HttpConfig::default());
        Config {
            tag_policy: service.tag_policy,
            max_blob_size: service.max_blob_size,
            upload_ttl: service.upload_ttl,
            shutdown_grace: http.shutdown_grace,
            auth: http.auth,
            webhooks: service.webhooks,
            event_source: service.event_source,
            webhook_retry_base: service.webhook_retry_base,
            outbox_poll: service.outbox_poll,
            audit_signer: service.audit_signer,
            checkpoint_interval: service.checkpoint_interval,
            gc: service.gc,
            trust_policy: service.trust_policy,
            max_uploads_per_principal: http.max_uploads_per_principal,
            max_header_bytes: http.max_header_bytes,
            header_read_timeout: http.header_read_timeout,
            idle_timeout: http.idle_timeout,
            max_connections: http.max_connections,
            metrics_on_main_listener: http.metrics_on_main_listener,
        }
    }
}

impl Config {
    /// The service's settings and the HTTP ones.
    pub fn split(self) -> (pierone_service::Config, HttpConfig) {
        (
            pierone_service::Config {
                tag_policy: self.tag_policy,
                max_blob_size: self.max_blob_size,
                upload_ttl: self.upload_ttl,
                webhooks: self.webhooks,
                event_source: self.event_source,
                webhook_retry_base: self.webhook_retry_base,
                outbox_poll: self.outbox_poll,
                audit_signer: self.audit_signer,
                checkpoint_interval: self.checkpoint_interval,
                gc: self.gc,
                trust_policy: self.trust_policy,
            },
            HttpConfig {
                shutdown_grace: self.shutdown_grace,
                auth: self.auth,
                max_uploads_per_principal: self.max_uploads_per_principal,
                max_header_bytes: self.max_header_bytes,
                header_read_timeout: self.header_read_timeout,
                idle_timeout: self.idle_timeout,
                max_connections: self.max_connections,
                metrics_on_main_listener: self.metrics_on_main_listener,
            },
        )
    }
}

/// Posts webhook events with an HTTP client: 10 s timeout, no redirects followed.
#[derive(Debug)]
pub struct HttpWebhooks {
    client: reqwest::Client,
}

impl Default for HttpWebhooks {
    fn default() -> Self {
        HttpWebhooks {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }
}

#[async_trait::async_trait]
impl pierone_service::WebhookClient for HttpWebhooks {
    async fn post(&self, target: &str, event: String) -> Result<(), String> {
        match self
            .client
            .post(target)
            .header("Content-Type", "application/cloudevents+json")
            .body(event)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The HTTP front door of a [`Service`]: its configuration, metrics and upload allowances.
/// Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Registry {
    service: Arc<Service>,
    config: HttpConfig,
    metrics: Arc<metrics::Metrics>,
    /// Upload requests in flight per principal.
    uploads: Mutex<HashMap<String, usize>>,
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
fn head_size<B>(req: &Request<B>) -> usize {
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

/// Who the service is told asks: the principal's realm and uid.
fn caller(principal: &Principal) -> Caller {
    Caller::new(principal.realm(), principal.uid())
}

impl Registry {
    /// A registry on `blobs` and `tags`: a [`Service`] reporting to this registry's metrics
    /// and posting webhooks with [`HttpWebhooks`], behind the HTTP front door.
    pub fn new(blobs: Arc<dyn BlobStore>, tags: Arc<dyn TagStore>, config: Config) -> Registry {
        let (service, http) = config.split();
        let metrics = Registry::new_metrics(&http);
        let service = Service::new(blobs, tags, service)
            .with_observer(metrics.clone())
            .with_webhook_client(Arc::new(HttpWebhooks::default()));
        Registry::assemble(Arc::new(service), http, metrics)
    }

    /// The HTTP front door of an existing `service`, shared with other front doors. The
    /// service's own counts (garbage collection, events, checkpoints, scans, received blob
    /// bytes) reach `/metrics` only when it reports to this registry's metrics, which
    /// [`Registry::new`] arranges.
    pub fn with_service(service: Arc<Service>, config: HttpConfig) -> Registry {
        let metrics = Registry::new_metrics(&config);
        Registry::assemble(service, config, metrics)
    }

    fn new_metrics(config: &HttpConfig) -> Arc<metrics::Metrics> {
        let auth = config.auth.clone();
        Arc::new(metrics::Metrics::new(move || auth.cache_stats()))
    }

    fn assemble(
        service: Arc<Service>,
        config: HttpConfig,
        metrics: Arc<metrics::Metrics>,
    ) -> Registry {
        Registry {
            service,
            config,
            metrics,
            uploads: Mutex::new(HashMap::new()),
        }
    }

    /// The service behind this front door.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// The HTTP configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// A cheap, clonable handle that answers requests as a [`tower_service::Service`].
    pub fn tower(self: &Arc<Self>) -> RegistryService {
        RegistryService(self.clone())
    }

    /// Answer one request. Every response carries `Docker-Distribution-API-Version`, errors
    /// included, or Docker clients fall back to the v1 protocol, and `X-Request-Id`, which
    /// also appears in error bodies and in the request's log line.
    pub async fn handle<B: RequestBody>(&self, req: Request<B>) -> Response<Body> {
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
    pub async fn handle_operations<B>(&self, req: Request<B>) -> Response<Body> {
        // The body is never read; dropping it keeps the future `Send` for any body type.
        let req = req.map(drop);
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
        use pierone_service::Error as S;
        use pierone_service::blobstore::Error as B;
        use pierone_service::tagstore::Error as T;
        let m = &self.metrics;
        let (family, kind) = match e {
            RegistryError::Service(S::Tags(T::Unavailable(_))) => {
                (&m.database_errors, "unavailable")
            }
            RegistryError::Service(S::Tags(T::Query(_))) => (&m.database_errors, "query"),
            RegistryError::Service(S::Tags(T::Corrupt(_))) => (&m.database_errors, "corrupt"),
            RegistryError::Service(S::Blobs(B::Io { .. })) => (&m.blob_store_errors, "io"),
            RegistryError::Service(S::Blobs(B::Backend(_))) => (&m.blob_store_errors, "backend"),
            RegistryError::Service(S::Blobs(B::Throttled(_))) => {
                (&m.blob_store_errors, "throttled")
            }
            RegistryError::Service(S::Blobs(B::Unavailable(_))) => {
                (&m.blob_store_errors, "unavailable")
            }
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

    async fn dispatch<B: RequestBody>(
        &self,
        route: Result<Option<Route>, RegistryError>,
        req: Request<B>,
        who: &mut String,
    ) -> Result<Resp, RegistryError> {
        let route = route?.ok_or(RegistryError::NoRoute)?;
        let m = req.method().clone();
        // Only uploads and manifest pushes read the body; every other request is read as its
        // head alone, which can be borrowed across awaits whatever the body type.
        let (head, body) = req.into_parts();
        let req = Request::from_parts(head, ());
        let with_body = |req: Request<()>| {
            let (head, ()) = req.into_parts();
            Request::from_parts(head, body)
        };
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
                Method::PUT => {
                    self.put_manifest(&repo, &reference, &principal, with_body(req))
                        .await
                }
                Method::DELETE => Err(RegistryError::DeleteRefused("deleting a manifest or tag")),
                other => Err(RegistryError::MethodNotAllowed(other)),
            },
            Route::ManifestBadReference(repo, reference) => match m {
                Method::GET | Method::HEAD => {
                    Err(RegistryError::ManifestReferenceUnknown(repo, reference))
                }
                Method::PUT => Err(pierone_protocol::Error::InvalidTag(reference).into()),
                Method::DELETE => Err(RegistryError::DeleteRefused("deleting a manifest or tag")),
                other => Err(RegistryError::MethodNotAllowed(other)),
            },
            Route::Blob(_, digest) => match m {
                Method::GET => self.get_blob(&digest, &req, true).await,
                Method::HEAD => self.get_blob(&digest, &req, false).await,
                Method::DELETE => Err(RegistryError::DeleteRefused("deleting a blob")),
                other => Err(RegistryError::MethodNotAllowed(other)),
            },
            Route::UploadStart(repo) => match m {
                Method::POST => self.start_upload(&repo, &principal, with_body(req)).await,
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
                Method::PATCH => {
                    self.upload_chunk(&repo, &id, &principal, with_body(req))
                        .await
                }
                Method::PUT => {
                    self.finish_upload(&repo, &id, &principal, with_body(req))
                        .await
                }
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
    let background = (kind == Listener::Main).then(|| registry.service.spawn_background());
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

/// A [`Registry`] as a [`tower_service::Service`]: clone it freely (it is one `Arc`), mount it
/// in a tower or axum stack. It is always ready and never fails: errors are answers.
#[derive(Debug, Clone)]
pub struct RegistryService(Arc<Registry>);

impl<B: RequestBody> tower_service::Service<Request<B>> for RegistryService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let registry = self.0.clone();
        Box::pin(async move { Ok(registry.handle(req).await) })
    }
}
