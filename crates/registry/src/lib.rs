//! The pierone HTTP server: the OCI distribution API on hyper 1, composed from the protocol,
//! blob store and tag store crates.
//!
//! This is the only crate that knows HTTP. It chooses no backend: whoever embeds it hands
//! [`Registry::new`] a [`BlobStore`] and a [`TagStore`] and serves it with [`run`].

mod api;
mod blobs;
mod error;
mod layers;
mod listing;
mod manifests;
mod response;
mod routes;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        Registry {
            blobs,
            tags,
            config,
            manifest_cache: quick_cache::sync::Cache::with_weighter(
                8192,
                MANIFEST_CACHE_BYTES,
                ManifestWeight,
            ),
            tag_cache: quick_cache::sync::Cache::new(65536),
        }
    }

    /// Answer one request. Every response carries `Docker-Distribution-API-Version`, errors
    /// included, or Docker clients fall back to the v1 protocol.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<response::Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let mut resp = match self.dispatch(req).await {
            Ok(r) => r,
            Err(e) => {
                if e.status_and_code().0.is_server_error() {
                    tracing::error!(%method, %path, error = %e, "request failed");
                }
                response::error(&e)
            }
        };
        resp.headers_mut().insert(
            "Docker-Distribution-API-Version",
            HeaderValue::from_static("registry/2.0"),
        );
        tracing::info!(
            %method,
            %path,
            status = resp.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        resp
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Result<Resp, RegistryError> {
        let route = routes::parse(req.uri().path())?.ok_or(RegistryError::NoRoute)?;
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
        auth.authorize(&principal, &access).await?;
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
            Route::Teams => self.api_get(&m, self.api_teams()).await,
            Route::Artifacts(t) => self.api_get(&m, self.api_artifacts(&t)).await,
            Route::ArtifactTags(repo) => self.api_get(&m, self.api_tags(&repo)).await,
            Route::ArtifactTag(repo, tag) => self.api_get(&m, self.api_tag(&repo, &tag)).await,
            Route::Latest(repo) => self.api_get(&m, self.api_latest(&repo)).await,
            Route::ScmSource(repo, tag) => self.api_get(&m, self.api_scm_source(&repo, &tag)).await,
            Route::Image(prefix) => self.api_get(&m, self.api_image(&prefix)).await,
            Route::Stats => self.api_get(&m, self.api_stats()).await,
            Route::TeamStats => self.api_get(&m, self.api_team_stats()).await,
            Route::Health => self.api_get(&m, async { Ok(self.api_health()) }).await,
            Route::OpenApi => self.api_get(&m, async { Ok(self.api_openapi()) }).await,
            Route::Upload(repo, id) => match m {
                Method::GET => self.upload_status(&repo, &id).await,
                Method::PATCH => self.upload_chunk(&repo, &id, req).await,
                Method::PUT => self.finish_upload(&repo, &id, req).await,
                Method::DELETE => self.cancel_upload(&repo, &id).await,
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
        Route::Teams | Route::Image(_) | Route::Stats | Route::TeamStats => {
            Access::Read { team: None }
        }
        Route::Artifacts(t) => Access::Read {
            team: Some(t.clone()),
        },
        Route::ArtifactTags(repo)
        | Route::ArtifactTag(repo, _)
        | Route::Latest(repo)
        | Route::ScmSource(repo, _) => Access::Read {
            team: Some(team(repo)),
        },
        // Probes and the API description need no credentials.
        Route::Health | Route::OpenApi => Access::Public,
    }
}

/// Serve `registry` on `listener` until `shutdown` completes, then stop accepting, let
/// in-flight requests finish (up to the configured grace period) and return.
pub async fn run(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let grace = registry.config.shutdown_grace;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let registry = registry.clone();
                let svc = service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(registry.handle(req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
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
    Ok(())
}
