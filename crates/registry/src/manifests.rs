//! Manifest push and pull, tag resolution (including Pier One's `latest`), and referrers.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use hyper::{Request, Response, StatusCode};
use pierone_protocol::{
    Digest, Hasher, MAX_MANIFEST_SIZE, ManifestKind, Reference, RepoName, Tag, media_types,
    parse_manifest,
};
use pierone_tagstore::{
    ManifestRecord, Mutability, NewManifest, ScmSource, TagOutcome, TagWrite, now_millis,
};

use crate::Registry;
use crate::blobs::{content_length, query};
use crate::error::RegistryError;
use crate::response::{self, Resp, header_value};
use pierone_auth::Principal;

/// The `X-SCM-Source` header (URL-encoded JSON), which only trusted pushers may set: it is
/// what auditors read to learn where an image came from.
fn scm_source(
    repo: &RepoName,
    principal: &Principal,
    req: &Request<Incoming>,
) -> Result<Option<ScmSource>, RegistryError> {
    let Some(value) = req.headers().get("X-SCM-Source") else {
        return Ok(None);
    };
    if !principal.has_scope("application.write_all_trusted") {
        return Err(RegistryError::Auth(pierone_auth::Error::Denied {
            team: repo.team().to_owned(),
            uid: principal.uid().to_owned(),
            why: "setting X-SCM-Source needs the scope application.write_all_trusted".into(),
        }));
    }
    let raw = value
        .to_str()
        .map_err(|_| RegistryError::ScmSourceInvalid("is not ASCII".into()))?;
    let json = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    serde_json::from_str(&json)
        .map(Some)
        .map_err(|e| RegistryError::ScmSourceInvalid(format!("is not the expected JSON: {e}")))
}

/// The first failure in manifest order, whatever order the concurrent checks finished in, so
/// a client always hears about the same missing reference.
fn first_error(results: Vec<Result<(), RegistryError>>) -> Result<(), RegistryError> {
    results.into_iter().collect()
}

/// Layers that by definition live elsewhere and are never pushed to a registry.
fn is_foreign(media_type: &str) -> bool {
    media_type.contains("nondistributable") || media_type.contains(".foreign.")
}

impl Registry {
    /// The digest a tag names. `latest`, unless pushed explicitly (where allowed), means the
    /// most recently created tag of the repository, as in Pier One.
    async fn resolve_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Digest>, RegistryError> {
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

    async fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, RegistryError> {
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

    pub(crate) async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        with_body: bool,
    ) -> Result<Resp, RegistryError> {
        let unknown = || RegistryError::ManifestUnknown(repo.clone(), reference.clone());
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => self.resolve_tag(repo, t).await?.ok_or_else(unknown)?,
        };
        let m = self.manifest(repo, &digest).await?.ok_or_else(unknown)?;
        let len = m.body.len();
        let body = if with_body {
            response::full(m.body)
        } else {
            response::empty()
        };
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, header_value(&m.media_type));
        h.insert(CONTENT_LENGTH, len.into());
        h.insert("Docker-Content-Digest", header_value(digest.as_str()));
        h.insert("ETag", header_value(&format!("\"{digest}\"")));
        Ok(r)
    }

    pub(crate) async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        principal: &Principal,
        req: Request<Incoming>,
    ) -> Result<Resp, RegistryError> {
        // Refuse a forbidden tag, or a source the pusher may not declare, before reading a
        // byte.
        let scm_source = scm_source(repo, principal, &req)?;
        let tag = match reference {
            Reference::Tag(t) => Some(TagWrite {
                mutability: self.config.tag_policy.classify(t)?,
                tag: t.clone(),
                principal: principal.uid().to_owned(),
                realm: principal.realm().to_owned(),
                scm_source,
                notify: self.config.webhooks.clone(),
            }),
            Reference::Digest(_) => None,
        };
        let too_large = |size| {
            RegistryError::Protocol(pierone_protocol::Error::ManifestTooLarge {
                size,
                limit: MAX_MANIFEST_SIZE,
            })
        };
        if let Some(len) = content_length(&req)
            && len > MAX_MANIFEST_SIZE
        {
            return Err(too_large(len));
        }
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let body: Bytes = Limited::new(req.into_body(), MAX_MANIFEST_SIZE as usize)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large(MAX_MANIFEST_SIZE + 1)
                } else {
                    RegistryError::RequestBody(e.to_string())
                }
            })?
            .to_bytes();
        self.metrics.bytes_in.inc_by(body.len() as u64);
        let digest = match reference {
            Reference::Digest(expected) => {
                let mut h = Hasher::new(expected.algorithm());
                h.update(&body);
                let actual = h.finish();
                if &actual != expected {
                    return Err(RegistryError::DigestMismatch {
                        expected: expected.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&body),
        };
        let parsed = parse_manifest(content_type.as_deref(), &body)?;

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
                        Ok(Some(size)) => Err(RegistryError::DescriptorSizeMismatch {
                            digest: d.digest.clone(),
                            declared: d.size,
                            actual: size,
                        }),
                        Ok(None) => Err(RegistryError::ManifestBlobUnknown(d.digest.clone())),
                        Err(e) => Err(e.into()),
                    }
                });
        first_error(futures_util::future::join_all(blob_checks).await)?;
        if parsed.kind == ManifestKind::Index {
            let child_checks = parsed.manifests.iter().map(|d| async move {
                match self.manifest(repo, &d.digest).await? {
                    Some(_) => Ok(()),
                    None => Err(RegistryError::ManifestChildUnknown(d.digest.clone())),
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
        let outcome = self.tags.put_manifest(repo, new, tag).await?;
        if let Some(t) = tag_name {
            tracing::info!(%repo, tag = %t, %digest, principal = %principal.uid(), ?outcome, "tag written");
            if matches!(outcome, TagOutcome::Moved { .. }) {
                self.tag_cache.remove(&(repo.clone(), t));
            }
            if matches!(outcome, TagOutcome::Created | TagOutcome::Moved { .. })
                && !self.config.webhooks.is_empty()
            {
                self.events_waiting.notify_one();
            }
        }
        let mut r = Response::new(response::empty());
        *r.status_mut() = StatusCode::CREATED;
        let h = r.headers_mut();
        h.insert(
            LOCATION,
            header_value(&format!("/v2/{repo}/manifests/{digest}")),
        );
        h.insert("Docker-Content-Digest", header_value(digest.as_str()));
        h.insert(CONTENT_LENGTH, 0.into());
        if let Some(s) = subject {
            h.insert("OCI-Subject", header_value(s.as_str()));
        }
        Ok(r)
    }

    pub(crate) async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        req: &Request<Incoming>,
    ) -> Result<Resp, RegistryError> {
        let q = query(req);
        let filter = q.get("artifactType");
        let manifests: Vec<serde_json::Value> = self
            .tags
            .referrers(repo, subject)
            .await?
            .into_iter()
            .filter(|r| filter.is_none_or(|f| r.artifact_type.as_deref() == Some(f.as_str())))
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
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_INDEX,
            "manifests": manifests,
        });
        let mut r = response::json(StatusCode::OK, media_types::OCI_INDEX, &index);
        if filter.is_some() {
            r.headers_mut()
                .insert("OCI-Filters-Applied", header_value("artifactType"));
        }
        Ok(r)
    }
}
