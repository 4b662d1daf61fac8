//! Signed releases at tag time (issue #14): the trust crate's [`Evidence`] on the service's
//! stores, and the check a manifest PUT makes before it lets a protected tag name a digest.

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use pierone_protocol::{Digest, Reference, RepoName, Tag};
use pierone_trust::{Evidence, ReferrerInfo, Verified};

use crate::{Error, Service};

/// The service's stores as the verifier sees them. A store failure is kept whole, so the
/// client is answered as for any other store failure (503 when the store is unavailable),
/// not with the string the trust crate carries.
struct StoreEvidence<'a> {
    service: &'a Service,
    failure: Mutex<Option<Error>>,
}

impl StoreEvidence<'_> {
    fn failed(&self, e: impl Into<Error>) -> pierone_trust::Error {
        let e = e.into();
        let message = e.to_string();
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert(e);
        pierone_trust::Error::Evidence(message)
    }
}

#[async_trait]
impl Evidence for StoreEvidence<'_> {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Bytes>, pierone_trust::Error> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match self.service.resolve_tag(repo, t).await {
                Ok(Some(d)) => d,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.failed(e)),
            },
        };
        match self.service.manifest(repo, &digest).await {
            Ok(m) => Ok(m.map(|m| m.body)),
            Err(e) => Err(self.failed(e)),
        }
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<ReferrerInfo>, pierone_trust::Error> {
        match self.service.tags.referrers(repo, subject).await {
            Ok(rs) => Ok(rs
                .into_iter()
                .map(|r| ReferrerInfo {
                    digest: r.digest,
                    artifact_type: r.artifact_type,
                })
                .collect()),
            Err(e) => Err(self.failed(e)),
        }
    }

    async fn blob(
        &self,
        _repo: &RepoName,
        digest: &Digest,
        max_len: u64,
    ) -> Result<Option<Bytes>, pierone_trust::Error> {
        // Blobs are content-addressed and shared by all repositories, as for pulls; the
        // verifier hashes what is returned against the digest.
        let size = match self.service.blobs.stat(digest).await {
            Ok(Some(size)) => size,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.failed(e)),
        };
        if size > max_len {
            return Ok(None);
        }
        let read = match self.service.blobs.get(digest, None).await {
            Ok(Some(read)) => read,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.failed(e)),
        };
        let mut body = read.body;
        let mut buf = BytesMut::with_capacity(size as usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                self.failed(pierone_blobstore::Error::Io {
                    op: "reading a signature's blob",
                    source: e,
                })
            })?;
            // The size may have changed since the stat (another backend's answer): never
            // hold more than the limit.
            if (buf.len() + chunk.len()) as u64 > max_len {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(buf.freeze()))
    }
}

impl Service {
    /// Before `tag` is pointed at `digest` in `repo`: when the trust policy protects the tag
    /// for the repository's team, a valid signature by one of the team's keys must be in the
    /// repository. `Ok(None)`: nothing to check (no policy, an unprotected tag, or the tag
    /// already names this very digest, so an identical re-push changes nothing);
    /// `Ok(Some)`: the signature that allows it.
    pub(crate) async fn check_signed(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<Option<Verified>, Error> {
        let Some(policy_file) = &self.config.trust_policy else {
            return Ok(None);
        };
        let policy = policy_file.current();
        let Some(team) = policy.protected(repo.team(), tag) else {
            return Ok(None);
        };
        // The tag store still decides races: this only spares the identical re-push, which
        // the tag store accepts unchanged, from needing a signature that may be gone.
        if self.tags.resolve_tag(repo, tag).await?.as_ref() == Some(digest) {
            return Ok(None);
        }
        let evidence = StoreEvidence {
            service: self,
            failure: Mutex::new(None),
        };
        match pierone_trust::verify(team, repo, Some(tag), digest, &evidence).await {
            Ok(v) => Ok(Some(v)),
            Err(pierone_trust::Error::Refused(refusal)) => {
                tracing::info!(%repo, %tag, %digest, reason = %refusal, "protected tag refused: no valid signature");
                Err(Error::SignatureRequired(refusal))
            }
            Err(e) => {
                let kept = evidence
                    .failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                Err(kept.unwrap_or_else(|| Error::SignatureCheck(e.to_string())))
            }
        }
    }
}
