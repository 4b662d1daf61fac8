//! Work the registry does on its own: signing audit checkpoints, delivering webhook events
//! from the outbox, and collecting garbage. Every replica runs all three; the metadata store's
//! leases and claims make that safe.

use std::sync::Arc;
use std::time::Duration;

use pierone_protocol::Digest;
use pierone_protocol::audit::ChainVerifier;
use pierone_tagstore::{Checkpoint, GC_TOMBSTONE_MS, Millis, OutboxItem, now_millis};
use serde_json::json;

use crate::{Error, Service};

/// How long a deliverer owns a claimed event before another may retry it: longer than a
/// delivery may take (10 s timeout), short enough that a crashed deliverer's events are soon
/// retried by another replica or after a restart.
const DELIVERY_LEASE_MS: i64 = 15_000;
/// Events delivered concurrently per round.
const DELIVERY_BATCH: usize = 32;
/// A claim older than this whose blob still exists was abandoned by a collector that died.
const STALE_CLAIM_MS: i64 = 600_000;
/// How long delivered events stay in the outbox (for operators looking into a delivery).
const DELIVERED_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;
/// How coarse a blob store's `stored_at` may be.
const STORED_AT_PRECISION_MS: i64 = 1000;
/// The longest wait between two attempts to deliver one event.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What one garbage collection run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Abandoned upload sessions removed, with their data.
    pub uploads_expired: u64,
    /// Blobs looked at.
    pub blobs_scanned: u64,
    /// Blobs found unreferenced and old enough (deleted on a later run if they stay so).
    pub blobs_marked: u64,
    /// Blobs deleted.
    pub blobs_deleted: u64,
    /// Bytes of the blobs deleted.
    pub bytes_freed: u64,
    /// Delivered events older than a week dropped from the outbox.
    pub events_pruned: u64,
}

/// When garbage collection runs and what it spares.
#[derive(Debug, Clone)]
pub struct GcConfig {
    /// Time between two runs; zero turns collection off.
    pub interval: Duration,
    /// A blob stored more recently than this is never touched, so that the blobs of a push
    /// in progress (uploaded, manifest not yet written) are safe.
    pub grace: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: Duration::from_secs(3600),
            grace: Duration::from_secs(24 * 3600),
        }
    }
}

/// The CloudEvents 1.0 structured-mode JSON for a tag assignment.
pub fn cloud_event(source: &str, e: &pierone_tagstore::AuditEntry) -> serde_json::Value {
    let (team, artifact) = e.repository.split_once('/').unwrap_or((&e.repository, ""));
    let kind = if e.previous_digest.is_some() {
        "moved"
    } else {
        "created"
    };
    json!({
        "specversion": "1.0",
        // The audit sequence number: unique per registry, stable across redeliveries, so a
        // receiver deduplicates on (source, id).
        "id": format!("tag-{}", e.seq),
        "source": source,
        "type": format!("io.pierone.tag.{kind}"),
        "time": crate::queries::rfc3339(e.at),
        "subject": format!("{}:{}", e.repository, e.tag),
        "datacontenttype": "application/json",
        "data": {
            "team": team,
            "artifact": artifact,
            "repository": e.repository,
            "tag": e.tag,
            "digest": e.digest,
            "previous_digest": e.previous_digest,
            "principal": e.principal,
            "realm": e.realm,
            "audit_seq": e.seq,
            "audit_hash": e.hash,
        },
    })
}

impl Service {
    /// Sign the current head of the audit log unless it is signed already. `None` without a
    /// signing key or when nothing changed.
    pub async fn sign_checkpoint(&self) -> Result<Option<Checkpoint>, Error> {
        let Some(signer) = &self.config.audit_signer else {
            return Ok(None);
        };
        let (size, head) = self.tags.audit_head().await?;
        let last = self.tags.latest_checkpoint().await?;
        if last
            .as_ref()
            .is_some_and(|l| l.size == size && l.head == head)
        {
            return Ok(None);
        }
        // Sign only an extension of what was signed before: someone who rewrote rows in the
        // database must not get a signature over the rewritten log.
        let mut v = match &last {
            Some(l) => ChainVerifier::resume(l)?,
            None => ChainVerifier::new(),
        };
        // Up to the head read above only: pushes go on appending meanwhile.
        let from = v.head().0;
        self.each_audit_entry(from, size, |e| Ok(v.push(&e)?))
            .await?;
        if v.head() != (size, head.as_str()) {
            return Err(pierone_protocol::Error::AuditChainBroken {
                seq: size,
                why: format!(
                    "the log's head is entry {size} with hash {head}, but the chain from the last checkpoint ends at entry {} with {}",
                    v.head().0,
                    v.head().1
                ),
            }
            .into());
        }
        let cp = signer.sign(&v, now_millis());
        self.tags.put_checkpoint(cp.clone()).await?;
        self.observer.checkpoint_signed();
        Ok(Some(cp))
    }

    /// One round of webhook delivery: claim what is due, post it, record the outcome.
    /// Returns how many events were attempted.
    pub async fn deliver_events(&self) -> Result<usize, Error> {
        let now = now_millis();
        if self.config.webhooks.is_empty() {
            return Ok(0);
        }
        let due = self
            .tags
            .claim_outbox(
                now,
                DELIVERY_BATCH,
                DELIVERY_LEASE_MS,
                &self.config.webhooks,
            )
            .await?;
        let n = due.len();
        let results =
            futures_util::future::join_all(due.into_iter().map(|item| self.deliver(item))).await;
        for r in results {
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not record a delivery outcome");
            }
        }
        if let Ok(pending) = self.tags.outbox_pending().await {
            self.observer.events_pending(pending);
        }
        Ok(n)
    }

    async fn deliver(&self, item: OutboxItem) -> Result<(), Error> {
        let event = cloud_event(&self.config.event_source, &item.entry);
        let outcome = match &self.webhook_client {
            Some(client) => client.post(&item.target, event.to_string()).await,
            None => Err("no webhook client is configured".to_owned()),
        };
        let error = match outcome {
            Ok(()) => {
                self.tags.outbox_delivered(item.id, now_millis()).await?;
                self.observer.event_delivered();
                tracing::info!(target = %item.target, seq = item.entry.seq, attempts = item.attempts + 1, "event delivered");
                return Ok(());
            }
            Err(e) => e,
        };
        self.observer.event_delivery_failed();
        let backoff = self
            .config
            .webhook_retry_base
            .saturating_mul(1u32 << item.attempts.min(16))
            .min(MAX_BACKOFF);
        tracing::warn!(target = %item.target, seq = item.entry.seq, attempts = item.attempts + 1, %error, retry_in_ms = backoff.as_millis() as u64, "event delivery failed");
        self.tags
            .outbox_retry(
                item.id,
                now_millis() + backoff.as_millis() as Millis,
                &error,
            )
            .await?;
        Ok(())
    }

    /// One garbage collection run: remove expired upload sessions, then delete blobs that no
    /// manifest references, were stored before the grace period, and stayed unreferenced since
    /// an earlier run marked them.
    pub async fn collect_garbage(&self) -> Result<GcReport, Error> {
        let mut report = GcReport::default();
        let now = now_millis();
        let ttl = self.config.upload_ttl.as_millis() as Millis;
        loop {
            let expired = self.tags.expired_uploads(now - ttl, 100).await?;
            for s in &expired {
                self.blobs.abort_upload(&s.id).await?;
                self.tags.delete_upload(&s.id).await?;
                report.uploads_expired += 1;
            }
            if expired.len() < 100 {
                break;
            }
        }
        // Finish deletions a collector claimed and never completed. Only old claims: a young
        // one belongs to a collector that is deleting right now.
        for digest in self.tags.gc_stale_claims(now - STALE_CLAIM_MS).await? {
            if let Some(size) = self.blobs.stat(&digest).await?
                && self.blobs.delete_blob(&digest).await?
            {
                report.blobs_deleted += 1;
                report.bytes_freed += size;
            }
            self.tags.gc_deleted(&digest, now_millis()).await?;
        }
        self.tags.gc_prune(now - GC_TOMBSTONE_MS).await?;
        report.events_pruned = self.tags.outbox_prune(now - DELIVERED_KEPT_MS).await?;
        let grace = self.config.gc.grace;
        let old_before = now - grace.as_millis() as Millis;
        // A manifest write that began before the mark must have committed before the claim;
        // transactions are far shorter than this.
        let claim_before = now - grace.min(Duration::from_secs(600)).as_millis() as Millis;
        let mut after: Option<Digest> = None;
        loop {
            let page = self.blobs.list_blobs(after.as_ref(), 500).await?;
            // Most blobs are referenced; one query per page rules them out.
            let digests: Vec<Digest> = page.iter().map(|b| b.digest.clone()).collect();
            let referenced: std::collections::HashSet<Digest> =
                self.tags.referenced(&digests).await?.into_iter().collect();
            for b in &page {
                report.blobs_scanned += 1;
                if referenced.contains(&b.digest) {
                    continue;
                }
                // Some stores keep whole seconds (S3's LastModified): assume the latest
                // moment the reported time could mean.
                let stored_at = b.stored_at + STORED_AT_PRECISION_MS;
                if stored_at > old_before {
                    continue;
                }
                let Some(marked_at) = self.tags.gc_mark(&b.digest, now).await? else {
                    continue;
                };
                if stored_at > marked_at {
                    // Stored again since it was marked: someone wants it; start over.
                    self.tags.gc_unmark(&b.digest, true).await?;
                    continue;
                }
                if marked_at == now {
                    report.blobs_marked += 1;
                }
                if !self.tags.gc_claim(&b.digest, claim_before, now).await? {
                    continue;
                }
                let deleted = self.blobs.delete_blob(&b.digest).await;
                self.tags.gc_deleted(&b.digest, now_millis()).await?;
                if deleted? {
                    report.blobs_deleted += 1;
                    report.bytes_freed += b.size;
                    tracing::info!(digest = %b.digest, size = b.size, "garbage collected");
                }
            }
            match page.last() {
                Some(last) if page.len() == 500 => after = Some(last.digest.clone()),
                _ => break,
            }
        }
        self.observer.gc_finished(&report);
        Ok(report)
    }
}

/// The background loops (checkpoint signer, event deliverer, garbage collector), stopped
/// between rounds so that no delivery or collection is cut short by a shutdown.
#[derive(Debug)]
pub struct Background {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Ask every loop to stop after its current round and wait up to `grace` for that.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(grace, t).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// Sleep for `d`, or less if asked to stop; `true` when asked to stop.
async fn pause(stop: &mut tokio::sync::watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = stop.changed() => true,
        () = tokio::time::sleep(d) => *stop.borrow(),
    }
}

impl Service {
    /// Start the background work this service is configured for: the checkpoint signer (with
    /// an audit signer), the event deliverer (with webhooks) and the garbage collector (with
    /// a non-zero interval). It runs until [`Background::stop`].
    pub fn spawn_background(self: &Arc<Self>) -> Background {
        spawn(self)
    }
}

/// Start the background loops of `registry`.
fn spawn(registry: &Arc<Service>) -> Background {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    if registry.config.audit_signer.is_some() {
        let r = registry.clone();
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match r.sign_checkpoint().await {
                    Ok(Some(cp)) => {
                        tracing::info!(size = cp.size, head = %cp.head, "audit checkpoint signed")
                    }
                    Ok(None) => {}
                    Err(e) => {
                        r.observer.checkpoint_refused();
                        tracing::error!(error = %e, "audit checkpoint NOT signed: the log does not extend the last checkpoint, or cannot be read")
                    }
                }
                if pause(&mut stop, r.config.checkpoint_interval).await {
                    return;
                }
            }
        }));
    }
    if !registry.config.webhooks.is_empty() {
        let r = registry.clone();
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if *stop.borrow() {
                    return;
                }
                let attempted = match r.deliver_events().await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "event delivery round failed");
                        0
                    }
                };
                if attempted == 0 {
                    tokio::select! {
                        () = r.events_waiting.notified() => {}
                        stopped = pause(&mut stop, r.config.outbox_poll) => if stopped { return },
                    }
                }
            }
        }));
    }
    if !registry.config.gc.interval.is_zero() {
        let r = registry.clone();
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if pause(&mut stop, r.config.gc.interval).await {
                    return;
                }
                let started = std::time::Instant::now();
                match r.collect_garbage().await {
                    Ok(report) => tracing::info!(
                        millis = started.elapsed().as_millis() as u64,
                        uploads_expired = report.uploads_expired,
                        blobs_scanned = report.blobs_scanned,
                        blobs_marked = report.blobs_marked,
                        blobs_deleted = report.blobs_deleted,
                        bytes_freed = report.bytes_freed,
                        events_pruned = report.events_pruned,
                        "garbage collection finished"
                    ),
                    Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
                }
            }
        }));
    }
    Background {
        stop: stop_tx,
        tasks,
    }
}
