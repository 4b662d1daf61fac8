//! The audit log, its checkpoints and inclusion proofs, and the readiness of the stores.

use std::time::Duration;

use pierone_protocol::audit::InclusionBuilder;
use pierone_protocol::{Digest, RepoName, Tag};
use pierone_tagstore::{AuditEntry, Checkpoint};

use crate::{Error, Service};

/// Entries per page of the audit log unless the client asks for fewer.
const MAX_PAGE: usize = 10_000;
/// How long each readiness probe of a backend may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl Service {
    /// Entries after `since`, in order, at most `limit` (clamped to 1..=10 000), only those of
    /// one tag when given; with the log's size and head.
    pub async fn audit_log(
        &self,
        since: u64,
        limit: Option<usize>,
        tag: Option<(&RepoName, &Tag)>,
    ) -> Result<pierone_api::AuditLog<AuditEntry>, Error> {
        let limit = limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
        let entries = self.tags.audit_entries(since, limit, tag).await?;
        let (size, head) = self.tags.audit_head().await?;
        Ok(pierone_api::AuditLog {
            entries,
            size,
            head,
        })
    }

    /// The latest signed checkpoint, with how often checkpoints are signed here (so that a
    /// client waiting for an entry to be checkpointed can say how long it will be).
    pub async fn audit_checkpoint(
        &self,
    ) -> Result<pierone_api::AuditCheckpoint<Checkpoint>, Error> {
        let cp = self
            .tags
            .latest_checkpoint()
            .await?
            .ok_or(Error::CheckpointUnknown)?;
        let interval_ms = self.config.audit_signer.as_ref().map(|_| {
            u64::try_from(self.config.checkpoint_interval.as_millis()).unwrap_or(u64::MAX)
        });
        Ok(pierone_api::AuditCheckpoint {
            checkpoint: cp,
            interval_ms,
        })
    }

    /// The inclusion proof of entry `seq` in the tree of the first `size` entries (default:
    /// the latest checkpoint's size), with the entry. Reads the log's hashes once, in order,
    /// in O(log size) memory.
    pub async fn audit_proof(
        &self,
        seq: u64,
        size: Option<u64>,
    ) -> Result<pierone_api::AuditProof<AuditEntry>, Error> {
        let size = match size {
            Some(s) => s,
            None => {
                self.tags
                    .latest_checkpoint()
                    .await?
                    .ok_or(Error::CheckpointUnknown)?
                    .size
            }
        };
        let (logged, _) = self.tags.audit_head().await?;
        let mut builder = match InclusionBuilder::new(seq, size) {
            Some(b) if size <= logged => b,
            _ if size > logged => {
                return Err(Error::InvalidQuery {
                    name: "size",
                    value: format!("{size}, more than the log's {logged} entries"),
                });
            }
            _ => {
                return Err(Error::InvalidQuery {
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
        Ok(pierone_api::AuditProof {
            seq: proof.seq,
            size: proof.size,
            path: proof.path,
            entry,
        })
    }

    /// Hand entries `since + 1 ..= until` to `each`, in order, a page at a time.
    pub(crate) async fn each_audit_entry(
        &self,
        since: u64,
        until: u64,
        mut each: impl FnMut(AuditEntry) -> Result<(), Error>,
    ) -> Result<(), Error> {
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

    /// Whether the database and the blob store both answer (each within 5 seconds), naming
    /// what failed.
    pub async fn ready(&self) -> pierone_api::Readiness {
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
        pierone_api::Readiness {
            ready: db == "ok" && blobs == "ok",
            database: db,
            blob_store: blobs,
        }
    }
}
