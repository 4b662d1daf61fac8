//! The audit endpoints (`/audit/log`, `/audit/checkpoint`) and the operational ones
//! (`/.well-known/ready`, `/metrics`).

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use pierone_protocol::{Digest, RepoName, Tag};

use crate::Registry;
use crate::blobs::{query, query_number};
use crate::error::RegistryError;
use crate::response::{self, Resp};
use pierone_protocol::audit::InclusionBuilder;
use pierone_tagstore::AuditEntry;

/// Entries per page of `/audit/log` unless the client asks for fewer.
const MAX_PAGE: usize = 10_000;
/// How long each readiness probe of a backend may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl Registry {
    /// `GET /audit/log?since=N&limit=M[&repository=R&tag=T]`: entries after `since`, in order.
    pub(crate) async fn audit_log(&self, req: &Request<Incoming>) -> Result<Resp, RegistryError> {
        let q = query(req);
        let since = query_number(&q, "since")?.unwrap_or(0);
        let limit = query_number(&q, "limit")?
            .unwrap_or(MAX_PAGE)
            .clamp(1, MAX_PAGE);
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
        let entries = self
            .tags
            .audit_entries(since, limit, tag.as_ref().map(|(r, t)| (r, t)))
            .await?;
        let (size, head) = self.tags.audit_head().await?;
        Ok(response::json(
            StatusCode::OK,
            "application/json",
            &pierone_api::AuditLog {
                entries,
                size,
                head,
            },
        ))
    }

    /// `GET /audit/checkpoint`: the latest signed checkpoint.
    pub(crate) async fn audit_checkpoint(&self) -> Result<Resp, RegistryError> {
        let cp = self
            .tags
            .latest_checkpoint()
            .await?
            .ok_or(RegistryError::CheckpointUnknown)?;
        // Lets a client that waits for an entry to be checkpointed say how long it will be.
        let interval_ms = self.config.audit_signer.as_ref().map(|_| {
            u64::try_from(self.config.checkpoint_interval.as_millis()).unwrap_or(u64::MAX)
        });
        Ok(response::json(
            StatusCode::OK,
            "application/json",
            &pierone_api::AuditCheckpoint {
                checkpoint: cp,
                interval_ms,
            },
        ))
    }

    /// `GET /audit/proof?seq=N[&size=M]`: the inclusion proof of entry N in the tree of the
    /// first M entries (default: the latest checkpoint's size), with the entry. Reads the
    /// log's hashes once, in order, in O(log M) memory.
    pub(crate) async fn audit_proof(&self, req: &Request<Incoming>) -> Result<Resp, RegistryError> {
        let q = query(req);
        let seq: u64 = query_number(&q, "seq")?.ok_or(RegistryError::InvalidQuery {
            name: "seq",
            value: "required".into(),
        })?;
        let size = match query_number(&q, "size")? {
            Some(s) => s,
            None => {
                self.tags
                    .latest_checkpoint()
                    .await?
                    .ok_or(RegistryError::CheckpointUnknown)?
                    .size
            }
        };
        let (logged, _) = self.tags.audit_head().await?;
        let mut builder = match InclusionBuilder::new(seq, size) {
            Some(b) if size <= logged => b,
            _ if size > logged => {
                return Err(RegistryError::InvalidQuery {
                    name: "size",
                    value: format!("{size}, more than the log's {logged} entries"),
                });
            }
            _ => {
                return Err(RegistryError::InvalidQuery {
                    name: "seq",
                    value: format!("{seq}, not between 1 and size ({size})"),
                });
            }
        };
        let mut entry = None;
        self.each_audit_entry(0, size, |e| {
            builder.push(&e.hash)?;
            if e.seq == seq {
                entry = Some(e);
            }
            Ok(())
        })
        .await?;
        let proof = builder.finish()?;
        Ok(response::json(
            StatusCode::OK,
            "application/json",
            &pierone_api::AuditProof {
                seq: proof.seq,
                size: proof.size,
                path: proof.path,
                entry,
            },
        ))
    }

    /// Hand entries `since + 1 ..= until` to `each`, in order, a page at a time.
    pub(crate) async fn each_audit_entry(
        &self,
        since: u64,
        until: u64,
        mut each: impl FnMut(AuditEntry) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let mut since = since;
        while since < until {
            let want = (until - since).min(MAX_PAGE as u64) as usize;
            let page = self.tags.audit_entries(since, want, None).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            since = last.seq;
            page.into_iter().try_for_each(&mut each)?;
        }
        Ok(())
    }

    /// `GET /.well-known/ready`: 200 when the database and the blob store both answer, else
    /// 503 naming what failed. Liveness stays `/.well-known/health`, which checks nothing, so
    /// an outage of a backend takes replicas out of rotation without restarting them.
    pub(crate) async fn ready(&self) -> Result<Resp, RegistryError> {
        let db = tokio::time::timeout(PROBE_TIMEOUT, self.tags.ping()).await;
        let blobs =
            tokio::time::timeout(PROBE_TIMEOUT, self.blobs.stat(&Digest::sha256_of(b""))).await;
        let verdict = |r: Result<Result<(), String>, tokio::time::error::Elapsed>| match r {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => e,
            Err(_) => "timed out".to_owned(),
        };
        let db = verdict(db.map(|r| r.map_err(|e| e.to_string())));
        let blobs = verdict(blobs.map(|r| r.map(drop).map_err(|e| e.to_string())));
        let status = if db == "ok" && blobs == "ok" {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        Ok(response::json(
            status,
            "application/json",
            &pierone_api::Readiness {
                ready: status == StatusCode::OK,
                database: db,
                blob_store: blobs,
            },
        ))
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
