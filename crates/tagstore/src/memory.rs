//! The in-memory metadata store, for tests and embedding; one mutex makes each call a
//! transaction.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use pierone_protocol::{Digest, RepoName, Tag, UploadId, UploadPart};

use crate::{
    AuditEntry, AuditLog, BlobUser, Catalog, Checkpoint, Collector, Error, ImageMatch,
    ManifestRecord, Manifests, Millis, NewManifest, OutboxItem, Ping, Quarantine, QuarantineRecord,
    Referrer, ScmSource, TagOutcome, TagRecord, TagWrite, TeamStats, UploadSession, Uploads,
    decide, digest_has_prefix, now_millis, tag_record,
};

#[derive(Debug, Default)]
struct State {
    repositories: BTreeMap<String, ()>,
    manifests: HashMap<Digest, NewManifest>,
    links: HashSet<(String, Digest)>,
    /// (repository, tag) -> (record, creation sequence for "latest" ordering)
    tags: BTreeMap<(String, String), (TagRecord, u64)>,
    seq: u64,
    audit: Vec<AuditEntry>,
    checkpoints: BTreeMap<u64, Checkpoint>,
    /// By id, which grows like the SQL store's serial.
    outbox: BTreeMap<i64, OutboxRow>,
    /// digest -> (marked at, claimed for deletion)
    /// Garbage candidates: since when, and how far collection got.
    gc: HashMap<Digest, (Millis, Gc)>,
    uploads: HashMap<UploadId, UploadSession>,
    scm: HashMap<(String, String), (ScmSource, Millis)>,
    quarantined: HashMap<Digest, QuarantineRecord>,
}

#[derive(Debug)]
struct OutboxRow {
    target: String,
    seq: u64,
    attempts: u32,
    next_attempt_at: Millis,
    locked_until: Millis,
    delivered: Option<Millis>,
}

/// How far garbage collection got with a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gc {
    Marked,
    Claimed,
    Deleted,
}

impl State {
    /// Drop `digest`'s mark unless a collector has already claimed it.
    fn unmark(&mut self, digest: &Digest) {
        if self.gc.get(digest).is_some_and(|(_, g)| *g == Gc::Marked) {
            self.gc.remove(digest);
        }
    }

    /// The last entry's number and hash, as the next entry links to it.
    fn audit_tip(&self) -> (u64, &str) {
        self.audit
            .last()
            .map_or((0, pierone_protocol::audit::GENESIS), |e| {
                (e.seq, e.hash.as_str())
            })
    }

    fn is_referenced(&self, digest: &Digest) -> bool {
        self.manifests.contains_key(digest)
            || self
                .manifests
                .values()
                .any(|m| m.references.iter().any(|(r, _)| r == digest))
    }
}

/// Metadata held in process memory. Cloning shares the same store.
#[derive(Debug, Clone, Default)]
pub struct MemoryTagStore {
    state: Arc<Mutex<State>>,
}

impl MemoryTagStore {
    /// An empty store. (An example of its use is at [`TagStore`](crate::TagStore).)
    pub fn new() -> MemoryTagStore {
        MemoryTagStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Manifests for MemoryTagStore {
    async fn put_manifest(
        &self,
        repo: &RepoName,
        manifest: NewManifest,
        tag: Option<TagWrite>,
    ) -> Result<TagOutcome, Error> {
        let mut s = self.lock();
        let now = now_millis();
        let key = tag
            .as_ref()
            .map(|t| (repo.as_str().to_owned(), t.tag.as_str().to_owned()));
        // Decide the tag first, under the lock that also writes it, so that a refusal changes
        // nothing.
        let outcome = match (&tag, &key) {
            (Some(w), Some(k)) => {
                let current = s.tags.get(k).map(|(rec, _)| &rec.digest);
                decide(w.mutability, current, &manifest.digest).into_outcome(
                    repo,
                    &w.tag,
                    &manifest.digest,
                )?
            }
            _ => TagOutcome::Untagged,
        };
        if !s.manifests.contains_key(&manifest.digest) {
            let age_ms = now_millis() - manifest.checked_at;
            if age_ms > crate::MAX_CHECK_AGE_MS {
                return Err(Error::StaleCheck { age_ms });
            }
            for (r, _) in &manifest.references {
                if s.gc.get(r).is_some_and(|(_, g)| *g != Gc::Marked) {
                    return Err(Error::BlobCollected(r.clone()));
                }
            }
            for (r, _) in &manifest.references {
                s.unmark(r);
            }
        }
        s.repositories.entry(repo.as_str().to_owned()).or_insert(());
        let digest = manifest.digest.clone();
        s.manifests.entry(digest.clone()).or_insert(manifest);
        s.links.insert((repo.as_str().to_owned(), digest.clone()));
        if let (Some(w), Some(key)) = (tag, key) {
            let previous = match &outcome {
                TagOutcome::Moved { previous } => Some(previous.clone()),
                _ => None,
            };
            if let Some(src) = w.scm_source.clone()
                && (outcome != TagOutcome::Unchanged || !s.scm.contains_key(&key))
            {
                s.scm.insert(key.clone(), (src, now));
            }
            if outcome != TagOutcome::Unchanged {
                s.seq += 1;
                let seq = s.seq;
                let record = match s.manifests.get(&digest) {
                    Some(m) => tag_record(m, w.tag.as_str(), now, &w.principal),
                    None => return Err(Error::Corrupt("manifest vanished".into())),
                };
                s.tags.insert(key.clone(), (record, seq));
                let e = pierone_protocol::audit::next_entry(
                    Some(s.audit_tip()),
                    now,
                    &w.principal,
                    &w.realm,
                    &key.0,
                    &key.1,
                    digest.as_str(),
                    previous.as_ref().map(|d| d.as_str()),
                );
                for target in &w.notify {
                    let id = s.outbox.keys().next_back().map_or(1, |k| k + 1);
                    s.outbox.insert(
                        id,
                        OutboxRow {
                            target: target.clone(),
                            seq: e.seq,
                            attempts: 0,
                            next_attempt_at: now,
                            locked_until: 0,
                            delivered: None,
                        },
                    );
                }
                s.audit.push(e);
            }
        }
        Ok(outcome)
    }

    async fn get_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, Error> {
        let s = self.lock();
        if !s
            .links
            .contains(&(repo.as_str().to_owned(), digest.clone()))
        {
            return Ok(None);
        }
        Ok(s.manifests.get(digest).map(|m| ManifestRecord {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            body: m.body.clone(),
        }))
    }

    async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, Error> {
        let key = (repo.as_str().to_owned(), tag.as_str().to_owned());
        Ok(self.lock().tags.get(&key).map(|(r, _)| r.digest.clone()))
    }

    async fn latest_tag(&self, repo: &RepoName) -> Result<Option<TagRecord>, Error> {
        let s = self.lock();
        Ok(s.tags
            .iter()
            .filter(|((r, _), _)| r == repo.as_str())
            .max_by_key(|(_, (rec, seq))| (rec.created_at, *seq))
            .map(|(_, (rec, _))| rec.clone()))
    }

    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<String>>, Error> {
        let s = self.lock();
        if !s.repositories.contains_key(repo.as_str()) {
            return Ok(None);
        }
        Ok(Some(
            s.tags
                .keys()
                .filter(|(r, t)| r == repo.as_str() && last.is_none_or(|l| t.as_str() > l))
                .take(limit)
                .map(|(_, t)| t.clone())
                .collect(),
        ))
    }

    async fn tag_records(&self, repo: &RepoName) -> Result<Vec<TagRecord>, Error> {
        let s = self.lock();
        let mut v: Vec<_> = s
            .tags
            .iter()
            .filter(|((r, _), _)| r == repo.as_str())
            .map(|(_, (rec, seq))| (rec.created_at, *seq, rec.clone()))
            .collect();
        v.sort_by_key(|(at, seq, _)| (*at, *seq));
        Ok(v.into_iter().map(|(_, _, r)| r).collect())
    }

    async fn list_repositories(
        &self,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        Ok(self
            .lock()
            .repositories
            .keys()
            .filter(|r| last.is_none_or(|l| r.as_str() > l))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Referrer>, Error> {
        let s = self.lock();
        let mut v: Vec<Referrer> = s
            .manifests
            .values()
            .filter(|m| m.subject.as_ref() == Some(subject))
            .filter(|m| {
                s.links
                    .contains(&(repo.as_str().to_owned(), m.digest.clone()))
            })
            .map(|m| Referrer {
                digest: m.digest.clone(),
                media_type: m.media_type.clone(),
                size: m.body.len() as u64,
                artifact_type: m.artifact_type.clone(),
                annotations: m.annotations.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(v)
    }

    async fn scm_source(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(ScmSource, Millis)>, Error> {
        let key = (repo.as_str().to_owned(), tag.as_str().to_owned());
        Ok(self.lock().scm.get(&key).cloned())
    }

    async fn record_scm_source(
        &self,
        repo: &RepoName,
        tag: &Tag,
        source: ScmSource,
    ) -> Result<(), Error> {
        let key = (repo.as_str().to_owned(), tag.as_str().to_owned());
        self.lock().scm.entry(key).or_insert((source, now_millis()));
        Ok(())
    }
}

#[async_trait]
impl Catalog for MemoryTagStore {
    async fn teams(&self) -> Result<Vec<String>, Error> {
        let s = self.lock();
        let mut teams: Vec<String> = s
            .tags
            .keys()
            .filter_map(|(r, _)| r.split_once('/').map(|(t, _)| t.to_owned()))
            .collect();
        teams.dedup();
        teams.sort();
        teams.dedup();
        Ok(teams)
    }

    async fn artifacts(&self, team: &str) -> Result<Vec<String>, Error> {
        let s = self.lock();
        let mut arts: Vec<String> = s
            .tags
            .keys()
            .filter_map(|(r, _)| r.split_once('/'))
            .filter(|(t, _)| *t == team)
            .map(|(_, a)| a.to_owned())
            .collect();
        arts.sort();
        arts.dedup();
        Ok(arts)
    }

    async fn find_images(&self, prefix: &str) -> Result<Vec<ImageMatch>, Error> {
        let s = self.lock();
        Ok(s.tags
            .iter()
            .filter(|(_, (rec, _))| {
                digest_has_prefix(&rec.digest, prefix)
                    || rec
                        .image
                        .as_ref()
                        .is_some_and(|i| digest_has_prefix(i, prefix))
            })
            .map(|((repo, tag), (rec, _))| ImageMatch {
                repository: repo.clone(),
                tag: tag.clone(),
                digest: rec.digest.clone(),
                image: rec.image.clone(),
            })
            .collect())
    }

    async fn team_stats(&self) -> Result<Vec<TeamStats>, Error> {
        let s = self.lock();
        let mut by_team: BTreeMap<String, (HashSet<String>, u64)> = BTreeMap::new();
        for (repo, _) in s.tags.keys() {
            if let Some((team, artifact)) = repo.split_once('/') {
                let e = by_team.entry(team.to_owned()).or_default();
                e.0.insert(artifact.to_owned());
                e.1 += 1;
            }
        }
        Ok(by_team
            .into_iter()
            .map(|(team, (arts, tags))| TeamStats {
                team,
                artifacts: arts.len() as u64,
                tags,
            })
            .collect())
    }

    async fn storage_bytes(&self) -> Result<u64, Error> {
        let s = self.lock();
        let mut blobs: HashMap<&Digest, u64> = HashMap::new();
        let mut total = 0u64;
        for m in s.manifests.values() {
            total += m.body.len() as u64;
            for (d, size) in &m.references {
                blobs.insert(d, *size);
            }
        }
        // A child manifest is counted as a manifest, not again as a referenced blob.
        Ok(total
            + blobs
                .iter()
                .filter(|(d, _)| !s.manifests.contains_key(**d))
                .map(|(_, s)| s)
                .sum::<u64>())
    }
}

#[async_trait]
impl Uploads for MemoryTagStore {
    async fn create_upload(&self, session: UploadSession) -> Result<(), Error> {
        self.lock().uploads.insert(session.id.clone(), session);
        Ok(())
    }

    async fn get_upload(&self, id: &UploadId) -> Result<Option<UploadSession>, Error> {
        Ok(self.lock().uploads.get(id).cloned())
    }

    async fn advance_upload(
        &self,
        id: &UploadId,
        expected: u64,
        part: Option<UploadPart>,
        hash_state: Vec<u8>,
    ) -> Result<(), Error> {
        let mut s = self.lock();
        let u = s
            .uploads
            .get_mut(id)
            .ok_or_else(|| Error::UploadUnknown(id.clone()))?;
        if u.received != expected {
            return Err(Error::UploadOffsetConflict {
                id: id.clone(),
                expected,
                actual: u.received,
            });
        }
        if let Some(part) = part {
            u.received = expected
                .checked_add(part.len)
                .ok_or_else(|| Error::Corrupt("upload size overflows".into()))?;
            u.parts.push(part);
        }
        u.hash_state = hash_state;
        u.updated_at = now_millis();
        Ok(())
    }

    async fn delete_upload(&self, id: &UploadId) -> Result<bool, Error> {
        Ok(self.lock().uploads.remove(id).is_some())
    }

    async fn expired_uploads(
        &self,
        idle_before: Millis,
        limit: usize,
    ) -> Result<Vec<UploadSession>, Error> {
        let mut out: Vec<UploadSession> = self
            .lock()
            .uploads
            .values()
            .filter(|u| u.updated_at < idle_before)
            .cloned()
            .collect();
        out.sort_by_key(|u| u.updated_at);
        out.truncate(limit);
        Ok(out)
    }
}

#[async_trait]
impl AuditLog for MemoryTagStore {
    async fn audit_entries(
        &self,
        since: u64,
        limit: usize,
        tag: Option<(&RepoName, &Tag)>,
    ) -> Result<Vec<AuditEntry>, Error> {
        Ok(self
            .lock()
            .audit
            .iter()
            .filter(|e| e.seq > since)
            .filter(|e| tag.is_none_or(|(r, t)| e.repository == r.as_str() && e.tag == t.as_str()))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn audit_head(&self) -> Result<(u64, String), Error> {
        Ok(self.lock().audit.last().map_or_else(
            || (0, pierone_protocol::audit::GENESIS.to_owned()),
            |e| (e.seq, e.hash.clone()),
        ))
    }

    async fn put_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        self.lock()
            .checkpoints
            .entry(checkpoint.size)
            .or_insert(checkpoint);
        Ok(())
    }

    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, Error> {
        Ok(self.lock().checkpoints.values().next_back().cloned())
    }

    async fn claim_outbox(
        &self,
        now: Millis,
        limit: usize,
        lease_ms: i64,
        targets: &[String],
    ) -> Result<Vec<OutboxItem>, Error> {
        let mut s = self.lock();
        let mut claimed = Vec::new();
        for (&i, row) in s.outbox.iter_mut() {
            if claimed.len() == limit {
                break;
            }
            if row.delivered.is_none()
                && row.next_attempt_at <= now
                && row.locked_until <= now
                && targets.contains(&row.target)
            {
                row.locked_until = now + lease_ms;
                claimed.push((i, row.target.clone(), row.attempts, row.seq));
            }
        }
        claimed
            .into_iter()
            .map(|(i, target, attempts, seq)| {
                let entry = s
                    .audit
                    .get(seq as usize - 1)
                    .cloned()
                    .ok_or_else(|| Error::Corrupt(format!("outbox names audit entry {seq}")))?;
                Ok(OutboxItem {
                    id: i,
                    target,
                    attempts,
                    entry,
                })
            })
            .collect()
    }

    async fn outbox_delivered(&self, id: i64, now: Millis) -> Result<(), Error> {
        if let Some(row) = self.lock().outbox.get_mut(&id) {
            row.delivered = Some(now);
        }
        Ok(())
    }

    async fn outbox_retry(
        &self,
        id: i64,
        next_attempt_at: Millis,
        _error: &str,
    ) -> Result<(), Error> {
        if let Some(row) = self.lock().outbox.get_mut(&id) {
            row.attempts += 1;
            row.next_attempt_at = next_attempt_at;
            row.locked_until = 0;
        }
        Ok(())
    }

    async fn outbox_pending(&self) -> Result<u64, Error> {
        Ok(self
            .lock()
            .outbox
            .values()
            .filter(|r| r.delivered.is_none())
            .count() as u64)
    }

    async fn outbox_prune(&self, delivered_before: Millis) -> Result<u64, Error> {
        let mut s = self.lock();
        let before = s.outbox.len();
        s.outbox
            .retain(|_, r| r.delivered.is_none_or(|at| at >= delivered_before));
        Ok((before - s.outbox.len()) as u64)
    }
}

#[async_trait]
impl Collector for MemoryTagStore {
    async fn referenced(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let s = self.lock();
        let mut out: Vec<Digest> = digests
            .iter()
            .filter(|d| s.is_referenced(d))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        out.dedup();
        Ok(out)
    }

    async fn gc_mark(&self, digest: &Digest, now: Millis) -> Result<Option<Millis>, Error> {
        let mut s = self.lock();
        if s.is_referenced(digest) {
            s.unmark(digest);
            return Ok(None);
        }
        Ok(Some(
            s.gc.entry(digest.clone()).or_insert((now, Gc::Marked)).0,
        ))
    }

    async fn gc_claim(
        &self,
        digest: &Digest,
        marked_before: Millis,
        now: Millis,
    ) -> Result<bool, Error> {
        let mut s = self.lock();
        if s.is_referenced(digest) {
            return Ok(false);
        }
        match s.gc.get_mut(digest) {
            Some((at, g)) if *g == Gc::Marked && *at <= marked_before => {
                *g = Gc::Claimed;
                *at = now;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn gc_stale_claims(&self, claimed_before: Millis) -> Result<Vec<Digest>, Error> {
        let s = self.lock();
        let mut out: Vec<Digest> =
            s.gc.iter()
                .filter(|(_, (at, g))| *g == Gc::Claimed && *at < claimed_before)
                .map(|(d, _)| d.clone())
                .collect();
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(out)
    }

    async fn gc_deleted(&self, digest: &Digest, now: Millis) -> Result<(), Error> {
        self.lock().gc.insert(digest.clone(), (now, Gc::Deleted));
        Ok(())
    }

    async fn gc_prune(&self, deleted_before: Millis) -> Result<u64, Error> {
        let mut s = self.lock();
        let before = s.gc.len();
        s.gc.retain(|_, (at, g)| !(*g == Gc::Deleted && *at < deleted_before));
        Ok((before - s.gc.len()) as u64)
    }

    async fn gc_unmark(&self, digest: &Digest, stored_again: bool) -> Result<(), Error> {
        let mut s = self.lock();
        let goes = |g: Gc| g == Gc::Marked || (stored_again && g == Gc::Deleted);
        if s.gc.get(digest).is_some_and(|(_, g)| goes(*g)) {
            s.gc.remove(digest);
        }
        Ok(())
    }

    async fn blob_users(&self, digest: &Digest) -> Result<Vec<BlobUser>, Error> {
        let s = self.lock();
        let mut out = Vec::new();
        for m in s.manifests.values() {
            if !m.references.iter().any(|(r, _)| r == digest) {
                continue;
            }
            for (repo, d) in &s.links {
                if d != &m.digest {
                    continue;
                }
                let mut tags: Vec<String> = s
                    .tags
                    .iter()
                    .filter(|((r, _), (rec, _))| r == repo && rec.digest == m.digest)
                    .map(|((_, t), _)| t.clone())
                    .collect();
                tags.sort();
                out.push(BlobUser {
                    manifest: m.digest.clone(),
                    repository: repo.clone(),
                    tags,
                });
            }
        }
        out.sort_by(|a, b| {
            (a.manifest.as_str(), &a.repository).cmp(&(b.manifest.as_str(), &b.repository))
        });
        Ok(out)
    }

    async fn record_quarantine(&self, q: Quarantine) -> Result<Vec<AuditEntry>, Error> {
        let mut s = self.lock();
        let r = &q.record;
        let affected = if q.affected.is_empty() {
            vec![(String::new(), String::new())]
        } else {
            q.affected.clone()
        };
        let mut appended = Vec::new();
        for (repo, tag) in &affected {
            let e = pierone_protocol::audit::next_quarantine_entry(
                Some(s.audit_tip()),
                r.at,
                &r.principal,
                &q.realm,
                repo,
                tag,
                r.digest.as_str(),
            );
            s.audit.push(e.clone());
            appended.push(e);
        }
        s.quarantined.insert(r.digest.clone(), q.record);
        Ok(appended)
    }

    async fn quarantine_record(&self, digest: &Digest) -> Result<Option<QuarantineRecord>, Error> {
        Ok(self.lock().quarantined.get(digest).cloned())
    }

    async fn release_quarantine(&self, digest: &Digest) -> Result<bool, Error> {
        Ok(self.lock().quarantined.remove(digest).is_some())
    }
}

#[async_trait]
impl Ping for MemoryTagStore {
    async fn ping(&self) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    conformance_tests!(async { (MemoryTagStore::new(), ()) });
}
