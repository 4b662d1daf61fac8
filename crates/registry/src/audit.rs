//! The audit endpoints (`/audit/log`, `/audit/checkpoint`, `/audit/proof`) and the
//! operational ones (`/.well-known/ready`, `/metrics`).

use hyper::{Request, StatusCode};
use pierone_protocol::{RepoName, Tag};

use crate::Registry;
use crate::blobs::{query, query_number};
use crate::error::RegistryError;
use crate::response::{self, Resp};

impl Registry {
    /// `GET /audit/log?since=N&limit=M[&repository=R&tag=T]`: entries after `since`, in order.
    pub(crate) async fn audit_log<B>(&self, req: &Request<B>) -> Result<Resp, RegistryError> {
        let q = query(req);
        let since = query_number(&q, "since")?.unwrap_or(0);
        let limit = query_number(&q, "limit")?;
        let tag = match (q.get("repository"), q.get("tag")) {
            (Some(r), Some(t)) => Some((r.parse::<RepoName>()?, t.parse::<Tag>()?)),
            (None, None) => None,
            _ => {
                return Err(if q.contains_key("repository") {
                    RegistryError::InvalidQuery {
                        name: "repository",
                        value: "given without tag; give both or neither".into(),
                    }
                } else {
                    RegistryError::InvalidQuery {
                        name: "tag",
                        value: "given without repository; give both or neither".into(),
                    }
                });
            }
        };
        let log = self
            .service
            .audit_log(since, limit, tag.as_ref().map(|(r, t)| (r, t)))
            .await?;
        Ok(response::json(StatusCode::OK, "application/json", &log))
    }

    /// `GET /audit/checkpoint`: the latest signed checkpoint.
    pub(crate) async fn audit_checkpoint(&self) -> Result<Resp, RegistryError> {
        let cp = self.service.audit_checkpoint().await?;
        Ok(response::json(StatusCode::OK, "application/json", &cp))
    }

    /// `GET /audit/proof?seq=N[&size=M]`: the inclusion proof of entry N in the tree of the
    /// first M entries (default: the latest checkpoint's size), with the entry.
    pub(crate) async fn audit_proof<B>(&self, req: &Request<B>) -> Result<Resp, RegistryError> {
        let q = query(req);
        let seq: u64 = query_number(&q, "seq")?.ok_or(RegistryError::InvalidQuery {
            name: "seq",
            value: "required".into(),
        })?;
        let size = query_number(&q, "size")?;
        let proof = self.service.audit_proof(seq, size).await?;
        Ok(response::json(StatusCode::OK, "application/json", &proof))
    }

    /// `GET /.well-known/ready`: 200 when the database and the blob store both answer, else
    /// 503 naming what failed. Liveness stays `/.well-known/health`, which checks nothing, so
    /// an outage of a backend takes replicas out of rotation without restarting them.
    pub(crate) async fn ready(&self) -> Result<Resp, RegistryError> {
        let readiness = self.service.ready().await;
        let status = if readiness.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        Ok(response::json(status, "application/json", &readiness))
    }

    pub(crate) fn metrics_response(&self) -> Resp {
        let mut r = hyper::Response::new(response::full(self.metrics.encode()));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        r
    }
}
