//! The scrub: re-hash every stored blob, name the manifests, repositories and tags that need
//! the ones whose bytes do not hash to their digest, and optionally quarantine those.
//!
//! It exists because a bug once let racing uploads publish bytes under a digest they do not
//! hash to, and the blob store trusts its caller's digest: only reading everything finds what
//! was planted. Blobs are streamed, so memory stays bounded whatever their size.

use std::collections::{BTreeSet, HashSet};

use futures_util::StreamExt;
use pierone_blobstore::{BlobStore, Error as BlobError};
use pierone_protocol::{Digest, Hasher};
use pierone_tagstore::{BlobUser, Quarantine, QuarantineRecord, TagStore, now_millis};

use crate::Error;

/// Blobs listed per page.
const PAGE: usize = 1000;
/// How many index levels above a manifest are followed to find the tags that need a blob.
const MAX_NESTING: usize = 4;

/// What the scrub does besides reading.
#[derive(Debug, Clone)]
pub struct ScrubOptions {
    /// Take mismatching blobs out of service (their bytes are kept aside as evidence) and
    /// record that in the audit log.
    pub quarantine: bool,
    /// Who the audit log says quarantined them.
    pub principal: String,
    /// The realm of that principal.
    pub realm: String,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        ScrubOptions {
            quarantine: false,
            principal: "scrub".into(),
            realm: "/operator".into(),
        }
    }
}

/// Told about the scrub's progress as it goes, to draw a progress bar or stream findings.
pub trait ScrubProgress: Send + Sync {
    /// Before hashing starts: how much there is to read.
    fn total(&self, blobs: u64, bytes: u64) {
        let _ = (blobs, bytes);
    }
    /// `n` more bytes were hashed.
    fn bytes(&self, n: u64) {
        let _ = n;
    }
    /// One more blob was checked.
    fn blob_done(&self) {}
    /// A blob whose bytes do not match (after its quarantine, if asked for).
    fn mismatch(&self, mismatch: &Mismatch) {
        let _ = mismatch;
    }
}

/// Progress nobody watches.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl ScrubProgress for NoProgress {}

/// A blob whose stored bytes do not hash to its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The blob's digest.
    pub digest: Digest,
    /// What the stored bytes hash to.
    pub actual: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The manifests that need it, directly or through an index, with their repositories
    /// and tags.
    pub users: Vec<BlobUser>,
    /// Where its bytes were moved, when it was quarantined.
    pub quarantined: Option<String>,
}

impl Mismatch {
    /// The `(repository, tag)` pairs that need the blob; an untagged manifest counts with an
    /// empty tag, so its repository is named too.
    pub fn affected(&self) -> Vec<(String, String)> {
        let mut out = BTreeSet::new();
        for u in &self.users {
            if u.tags.is_empty() {
                out.insert((u.repository.clone(), String::new()));
            }
            for t in &u.tags {
                out.insert((u.repository.clone(), t.clone()));
            }
        }
        out.into_iter().collect()
    }
}

/// What a scrub found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Blobs read and hashed.
    pub blobs_checked: u64,
    /// Bytes read and hashed.
    pub bytes_checked: u64,
    /// Listed, then gone before they could be read (garbage collection ran meanwhile).
    pub blobs_vanished: u64,
    /// The blobs whose bytes do not match their digest.
    pub mismatches: Vec<Mismatch>,
}

impl ScrubReport {
    /// Whether every blob matched.
    pub fn clean(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Re-hash every blob in `blobs`; name what in `tags` needs each that does not match, and
/// quarantine it when `options` say so. A store error ends the scrub: a report that skipped
/// blobs would read as clean.
pub async fn scrub(
    blobs: &dyn BlobStore,
    tags: &dyn TagStore,
    options: &ScrubOptions,
    progress: &dyn ScrubProgress,
) -> Result<ScrubReport, Error> {
    // A first pass over the listing only (cheap next to reading) gives the progress bar its
    // end, without holding the whole listing in memory.
    let (mut total_blobs, mut total_bytes) = (0u64, 0u64);
    let mut after: Option<Digest> = None;
    loop {
        let page = blobs.list_blobs(after.as_ref(), PAGE).await?;
        total_blobs += page.len() as u64;
        total_bytes += page.iter().map(|b| b.size).sum::<u64>();
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.digest.clone()),
            _ => break,
        }
    }
    progress.total(total_blobs, total_bytes);

    let mut report = ScrubReport::default();
    let mut after: Option<Digest> = None;
    loop {
        let page = blobs.list_blobs(after.as_ref(), PAGE).await?;
        for b in &page {
            let Some((actual, read)) = hash_blob(blobs, &b.digest, progress).await? else {
                report.blobs_vanished += 1;
                continue;
            };
            report.blobs_checked += 1;
            report.bytes_checked += read;
            progress.blob_done();
            if actual == b.digest {
                continue;
            }
            let mut m = Mismatch {
                digest: b.digest.clone(),
                actual,
                size: read,
                users: users_of(tags, &b.digest).await?,
                quarantined: None,
            };
            if options.quarantine {
                m.quarantined = quarantine(blobs, tags, options, &m).await?;
            }
            progress.mismatch(&m);
            report.mismatches.push(m);
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.digest.clone()),
            _ => break,
        }
    }
    Ok(report)
}

/// What the stored bytes of `digest` hash to (with its algorithm) and how many there were;
/// `None` when the blob is gone.
async fn hash_blob(
    blobs: &dyn BlobStore,
    digest: &Digest,
    progress: &dyn ScrubProgress,
) -> Result<Option<(Digest, u64)>, Error> {
    let Some(read) = blobs.get(digest, None).await? else {
        return Ok(None);
    };
    let mut body = read.body;
    let mut h = Hasher::new(digest.algorithm());
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| BlobError::Io {
            op: "read blob to scrub it",
            source,
        })?;
        h.update(&chunk);
        n += chunk.len() as u64;
        progress.bytes(chunk.len() as u64);
    }
    Ok(Some((h.finish(), n)))
}

/// The manifests that need `digest`: those that reference it, and the indexes above them.
async fn users_of(tags: &dyn TagStore, digest: &Digest) -> Result<Vec<BlobUser>, Error> {
    let mut out = Vec::new();
    let mut seen: HashSet<Digest> = HashSet::new();
    let mut level = vec![digest.clone()];
    for _ in 0..=MAX_NESTING {
        let mut next = Vec::new();
        for d in &level {
            for u in tags.blob_users(d).await? {
                if seen.insert(u.manifest.clone()) {
                    next.push(u.manifest.clone());
                }
                if !out.contains(&u) {
                    out.push(u);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Ok(out)
}

/// Record the quarantine (with its audit entries), then move the blob aside. Recorded first
/// so that the audit log never misses a blob that left service: if the move fails, the next
/// scrub finds the blob again and finishes the job.
async fn quarantine(
    blobs: &dyn BlobStore,
    tags: &dyn TagStore,
    options: &ScrubOptions,
    m: &Mismatch,
) -> Result<Option<String>, Error> {
    tags.record_quarantine(Quarantine {
        record: QuarantineRecord {
            digest: m.digest.clone(),
            at: now_millis(),
            principal: options.principal.clone(),
            actual: m.actual.clone(),
        },
        realm: options.realm.clone(),
        affected: m.affected(),
    })
    .await?;
    let kept = blobs.quarantine_blob(&m.digest).await?;
    tracing::warn!(digest = %m.digest, actual = %m.actual, kept = kept.as_deref().unwrap_or("(already gone)"), "blob quarantined: its bytes do not match its digest");
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pierone_blobstore::MemoryBlobStore;
    use pierone_blobstore::conformance::{put, stream_of};
    use pierone_protocol::{RepoName, UploadId};
    use pierone_tagstore::{
        AuditKind, AuditLog, Collector, Manifests, MemoryTagStore, Mutability, NewManifest,
        TagWrite, conformance,
    };

    /// Store `bytes` under `digest` without checking, as the upload race once did.
    async fn plant(blobs: &MemoryBlobStore, digest: &Digest, bytes: &[u8]) {
        let id: UploadId = format!("plant-{}", &digest.hex()[..12]).parse().unwrap();
        blobs.create_upload(&id).await.unwrap();
        let part = blobs.write_part(&id, stream_of(&[bytes])).await.unwrap();
        blobs.commit_upload(&id, &[part], digest).await.unwrap();
    }

    fn image(layers: &[&Digest], seed: &str) -> NewManifest {
        let body = format!(r#"{{"schemaVersion":2,"seed":"{seed}"}}"#);
        NewManifest {
            digest: Digest::sha256_of(body.as_bytes()),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body: Bytes::from(body),
            subject: None,
            artifact_type: None,
            config_digest: None,
            annotations: None,
            references: layers.iter().map(|d| ((*d).clone(), 10)).collect(),
            checked_at: pierone_tagstore::now_millis(),
        }
    }

    fn tag(t: &str) -> Option<TagWrite> {
        Some(TagWrite {
            tag: t.parse().unwrap(),
            mutability: Mutability::Immutable,
            principal: "alice".into(),
            realm: "/employees".into(),
            scm_source: None,
            notify: Vec::new(),
        })
    }

    #[derive(Default)]
    struct Seen(std::sync::Mutex<(u64, u64, Vec<Digest>)>);

    impl ScrubProgress for Seen {
        fn bytes(&self, n: u64) {
            self.0.lock().unwrap().0 += n;
        }
        fn blob_done(&self) {
            self.0.lock().unwrap().1 += 1;
        }
        fn mismatch(&self, m: &Mismatch) {
            self.0.lock().unwrap().2.push(m.digest.clone());
        }
    }

    #[tokio::test]
    async fn a_planted_blob_is_found_and_named_with_its_tags() {
        let (blobs, tags) = (MemoryBlobStore::new(), MemoryTagStore::new());
        let clean = put(&blobs, b"an honest layer").await;
        let config = put(&blobs, b"{}").await;
        let planted = Digest::sha256_of(b"what the digest promises");
        plant(&blobs, &planted, b"what was stored instead").await;
        let repo: RepoName = conformance::repo("scrub");
        let m = image(&[&config, &clean, &planted], "victim");
        tags.put_manifest(&repo, m.clone(), tag("1.0"))
            .await
            .unwrap();
        tags.put_manifest(&repo, m.clone(), tag("1.1"))
            .await
            .unwrap();
        let other: RepoName = conformance::repo("other");
        tags.put_manifest(&other, m.clone(), None).await.unwrap();
        // An index in a third repository needs it through the manifest.
        let third: RepoName = conformance::repo("third");
        tags.put_manifest(&third, m.clone(), None).await.unwrap();
        let index = image(&[&m.digest], "index");
        tags.put_manifest(&third, index.clone(), tag("multi"))
            .await
            .unwrap();
        // A clean image shares the honest layer only.
        tags.put_manifest(&repo, image(&[&clean], "fine"), tag("2.0"))
            .await
            .unwrap();

        let seen = Seen::default();
        let report = scrub(&blobs, &tags, &ScrubOptions::default(), &seen)
            .await
            .unwrap();
        assert_eq!(report.blobs_checked, 3);
        let stored = [
            b"an honest layer".len(),
            2,
            b"what was stored instead".len(),
        ];
        assert_eq!(report.bytes_checked, stored.iter().sum::<usize>() as u64);
        assert_eq!(report.mismatches.len(), 1, "{report:?}");
        let bad = &report.mismatches[0];
        assert_eq!(bad.digest, planted);
        assert_eq!(bad.actual, Digest::sha256_of(b"what was stored instead"));
        assert_eq!(bad.quarantined, None);
        assert_eq!(
            bad.affected(),
            vec![
                (other.as_str().to_owned(), String::new()),
                (repo.as_str().to_owned(), "1.0".to_owned()),
                (repo.as_str().to_owned(), "1.1".to_owned()),
                (third.as_str().to_owned(), String::new()),
                (third.as_str().to_owned(), "multi".to_owned()),
            ]
        );
        assert!(bad.users.iter().any(|u| u.manifest == index.digest));
        assert!(!bad.users.iter().any(|u| u.tags.contains(&"2.0".to_owned())));
        let (bytes, done, found) = seen.0.lock().unwrap().clone();
        assert_eq!((bytes, done), (report.bytes_checked, 3));
        assert_eq!(found, vec![planted.clone()]);
        // Without --quarantine nothing changed.
        assert!(blobs.stat(&planted).await.unwrap().is_some());
        let log = tags.audit_entries(0, 100, None).await.unwrap();
        assert!(log.iter().all(|e| e.kind == AuditKind::Tag));
        assert_eq!(tags.quarantine_record(&planted).await.unwrap(), None);
    }

    #[tokio::test]
    async fn clean_blobs_pass() {
        let (blobs, tags) = (MemoryBlobStore::new(), MemoryTagStore::new());
        for i in 0..5 {
            put(&blobs, format!("blob {i}").as_bytes()).await;
        }
        let report = scrub(&blobs, &tags, &ScrubOptions::default(), &NoProgress)
            .await
            .unwrap();
        assert!(report.clean());
        assert_eq!(report.blobs_checked, 5);
    }

    #[tokio::test]
    async fn quarantine_takes_the_blob_out_and_logs_it() {
        let (blobs, tags) = (MemoryBlobStore::new(), MemoryTagStore::new());
        let planted = Digest::sha256_of(b"promised");
        plant(&blobs, &planted, b"planted").await;
        let orphan = Digest::sha256_of(b"nobody's");
        plant(&blobs, &orphan, b"nobody's, but wrong").await;
        let repo = conformance::repo("q");
        tags.put_manifest(&repo, image(&[&planted], "q"), tag("1.0"))
            .await
            .unwrap();
        let options = ScrubOptions {
            quarantine: true,
            ..ScrubOptions::default()
        };
        let report = scrub(&blobs, &tags, &options, &NoProgress).await.unwrap();
        assert_eq!(report.mismatches.len(), 2);
        for m in &report.mismatches {
            let kept = m.quarantined.as_deref().unwrap();
            assert!(blobs.quarantined(kept).is_some(), "the evidence is kept");
            assert_eq!(blobs.stat(&m.digest).await.unwrap(), None);
            let q = tags.quarantine_record(&m.digest).await.unwrap().unwrap();
            assert_eq!((q.principal.as_str(), &q.actual), ("scrub", &m.actual));
        }
        let log = tags.audit_entries(0, 100, None).await.unwrap();
        let quarantines: Vec<(&str, &str, &str)> = log
            .iter()
            .filter(|e| e.kind == AuditKind::Quarantine)
            .map(|e| (e.repository.as_str(), e.tag.as_str(), e.digest.as_str()))
            .collect();
        assert_eq!(quarantines.len(), 2);
        assert!(quarantines.contains(&(repo.as_str(), "1.0", planted.as_str())));
        assert!(quarantines.contains(&("", "", orphan.as_str())));
        let mut v = pierone_protocol::audit::ChainVerifier::new();
        log.iter().for_each(|e| v.push(e).unwrap());
        // Nothing is left to find.
        let again = scrub(&blobs, &tags, &options, &NoProgress).await.unwrap();
        assert!(again.clean());
        assert_eq!(again.blobs_checked, 0);
    }
}
