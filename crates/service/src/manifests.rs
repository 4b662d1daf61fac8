//! Manifest push and pull, tag resolution (including Pier One's `latest`), and referrers.

use bytes::Bytes;
use pierone_protocol::{
    Digest, Hasher, ManifestKind, Reference, RepoName, Tag, media_types, parse_manifest,
};
use pierone_tagstore::{
    ManifestRecord, Mutability, NewManifest, ScmSource, TagOutcome, TagWrite, now_millis,
};

use crate::{Caller, Error, Service};

/// A manifest as stored.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its bytes, exactly as pushed.
    pub body: Bytes,
}

/// What a manifest push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// The manifest's digest.
    pub digest: Digest,
    /// The manifest it refers to (OCI `subject`), if any.
    pub subject: Option<Digest>,
    /// What happened to the tag, when pushed by tag.
    pub tag: Option<TagOutcome>,
}

/// The first failure in manifest order, whatever order the concurrent checks finished in, so
/// a client always hears about the same missing reference.
fn first_error(results: Vec<Result<(), Error>>) -> Result<(), Error> {
    results.into_iter().collect()
}

/// Layers that by definition live elsewhere and are never pushed to a registry.
fn is_foreign(media_type: &str) -> bool {
    media_type.contains("nondistributable") || media_type.contains(".foreign.")
}

impl Service {
    /// The digest a tag names. `latest`, unless pushed explicitly (where allowed), means the
    /// most recently created tag of the repository, as in Pier One.
    pub async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, Error> {
        let key = (repo.clone(), tag.clone());
        if let Some(d) = self.tag_cache.get(&key) {
            return Ok(Some(d));
        }
        if let Some(d) = self.tags.resolve_tag(repo, tag).await? {
            if matches!(
                self.config.tag_policy.classify(tag),
                Ok(Mutability::Immutable)
            ) {
                self.tag_cache.insert(key, d.clone());
            }
            return Ok(Some(d));
        }
        if tag.as_str() == "latest" {
            return Ok(self.tags.latest_tag(repo).await?.map(|t| t.digest));
        }
        Ok(None)
    }

    pub(crate) async fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, Error> {
        let key = (repo.clone(), digest.clone());
        if let Some(m) = self.manifest_cache.get(&key) {
            return Ok(Some(m));
        }
        let m = self.tags.get_manifest(repo, digest).await?;
        if let Some(m) = &m {
            self.manifest_cache.insert(key, m.clone());
        }
        Ok(m)
    }

    /// The manifest `reference` names in `repo`.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Manifest, Error> {
        let unknown = || Error::ManifestUnknown(repo.clone(), reference.clone());
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => self.resolve_tag(repo, t).await?.ok_or_else(unknown)?,
        };
        let m = self.manifest(repo, &digest).await?.ok_or_else(unknown)?;
        Ok(Manifest {
            digest,
            media_type: m.media_type,
            body: m.body,
        })
    }

    /// Refuse a push to `reference` that the tag policy forbids, before its body is read.
    /// [`Service::put_manifest`] checks again.
    pub fn check_reference(&self, reference: &Reference) -> Result<(), Error> {
        if let Reference::Tag(t) = reference {
            self.config.tag_policy.classify(t)?;
        }
        Ok(())
    }

    /// Push manifest `body` (of `media_type`, when the client said) to `reference` in `repo`
    /// for `caller`, with the source it was built from when the caller may declare one.
    ///
    /// A manifest pushed by digest must hash to it. Everything it references must be stored
    /// (blobs with the sizes it declares; an index's manifests in this repository), or nothing
    /// is written. A tag is written by the tag policy: an immutable tag that names another
    /// digest is refused with both digests, the same digest again is accepted unchanged.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        caller: &Caller,
        media_type: Option<&str>,
        body: Bytes,
        scm_source: Option<ScmSource>,
    ) -> Result<PutOutcome, Error> {
        let tag = match reference {
            Reference::Tag(t) => Some(TagWrite {
                mutability: self.config.tag_policy.classify(t)?,
                tag: t.clone(),
                principal: caller.uid().to_owned(),
                realm: caller.realm().to_owned(),
                scm_source,
                notify: self.config.webhooks.clone(),
            }),
            Reference::Digest(_) => None,
        };
        let digest = match reference {
            Reference::Digest(expected) => {
                let mut h = Hasher::new(expected.algorithm());
                h.update(&body);
                let actual = h.finish();
                if &actual != expected {
                    return Err(Error::DigestMismatch {
                        expected: expected.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&body),
        };
        let parsed = parse_manifest(media_type, &body)?;

        // Everything the manifest points at must already be here: a pulled tag must never
        // lead to a missing blob. Garbage collection may delete a blob between this check and
        // the write; the write then finds its tombstone, provided it comes within
        // MAX_CHECK_AGE_MS of `checked_at` (the tag store refuses it otherwise).
        let checked_at = now_millis();
        let blob_checks =
            parsed
                .blobs()
                .filter(|d| !is_foreign(&d.media_type))
                .map(|d| async move {
                    match self.blobs.stat(&d.digest).await {
                        Ok(Some(size)) if size == d.size => Ok(()),
                        Ok(Some(size)) => Err(Error::DescriptorSizeMismatch {
                            digest: d.digest.clone(),
                            declared: d.size,
                            actual: size,
                        }),
                        Ok(None) => Err(Error::ManifestBlobUnknown(d.digest.clone())),
                        Err(e) => Err(e.into()),
                    }
                });
        first_error(futures_util::future::join_all(blob_checks).await)?;
        if parsed.kind == ManifestKind::Index {
            let child_checks = parsed.manifests.iter().map(|d| async move {
                match self.manifest(repo, &d.digest).await? {
                    Some(_) => Ok(()),
                    None => Err(Error::ManifestChildUnknown(d.digest.clone())),
                }
            });
            first_error(futures_util::future::join_all(child_checks).await)?;
        }

        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        let annotations = (!parsed.annotations.is_empty())
            .then(|| serde_json::to_string(&parsed.annotations).unwrap_or_default());
        let new = NewManifest {
            digest: digest.clone(),
            media_type: parsed.media_type.clone(),
            body,
            subject: subject.clone(),
            artifact_type: parsed.artifact_type.clone(),
            config_digest: parsed.config.as_ref().map(|c| c.digest.clone()),
            annotations,
            references: parsed
                .blobs()
                .chain(parsed.manifests.iter())
                .map(|d| (d.digest.clone(), d.size))
                .collect(),
            checked_at,
        };
        let tag_name = tag.as_ref().map(|t| t.tag.clone());
        // Last, so that a refusal is only given for a manifest that could otherwise be
        // written; nothing is written when it is refused.
        let verified = match &tag_name {
            Some(t) => self.check_signed(repo, t, &digest).await?,
            None => None,
        };
        let outcome = self.tags.put_manifest(repo, new, tag).await?;
        let tag = match tag_name {
            Some(t) => {
                // The audit entry has no field for the signature yet (docs/SIGNING.md): the
                // log line is where it is recorded for now.
                match &verified {
                    Some(v) => tracing::info!(
                        %repo, tag = %t, %digest, principal = %caller.uid(), ?outcome,
                        signed_by = %v.key_name, key_hint = %v.key_hint,
                        signature_format = %v.format, signature_manifest = %v.signature_manifest,
                        signature_layer = v.layer, "tag written"
                    ),
                    None => {
                        tracing::info!(%repo, tag = %t, %digest, principal = %caller.uid(), ?outcome, "tag written")
                    }
                }
                if matches!(outcome, TagOutcome::Moved { .. }) {
                    self.tag_cache.remove(&(repo.clone(), t));
                }
                if matches!(outcome, TagOutcome::Created | TagOutcome::Moved { .. })
                    && !self.config.webhooks.is_empty()
                {
                    self.events_waiting.notify_one();
                }
                Some(outcome)
            }
            None => None,
        };
        Ok(PutOutcome {
            digest,
            subject,
            tag,
        })
    }

    /// The OCI image index of the manifests in `repo` that refer to `subject`, only those of
    /// `artifact_type` when given.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<serde_json::Value, Error> {
        let manifests: Vec<serde_json::Value> = self
            .tags
            .referrers(repo, subject)
            .await?
            .into_iter()
            .filter(|r| artifact_type.is_none_or(|f| r.artifact_type.as_deref() == Some(f)))
            .map(|r| {
                let mut d = serde_json::json!({
                    "mediaType": r.media_type,
                    "digest": r.digest.as_str(),
                    "size": r.size,
                });
                if let Some(t) = r.artifact_type {
                    d["artifactType"] = t.into();
                }
                if let Some(a) = r
                    .annotations
                    .and_then(|a| serde_json::from_str::<serde_json::Value>(&a).ok())
                {
                    d["annotations"] = a;
                }
                d
            })
            .collect();
        Ok(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_INDEX,
            "manifests": manifests,
        }))
    }

    /// Tags of `repo` in order, at most `n` after `last`; `NameUnknown` for a repository
    /// without tags.
    pub async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<Vec<String>, Error> {
        self.tags
            .list_tags(repo, last, n)
            .await?
            .ok_or_else(|| Error::NameUnknown(repo.clone()))
    }

    /// Repositories in order, at most `n` after `last`.
    pub async fn list_repositories(
        &self,
        last: Option<&str>,
        n: usize,
    ) -> Result<Vec<String>, Error> {
        Ok(self.tags.list_repositories(last, n).await?)
    }
}
