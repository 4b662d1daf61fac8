//! The Pier One API: teams, artifacts, tags with provenance, latest, scm-source, image search,
//! statistics and health, as JSON.

use hyper::StatusCode;
use pierone_protocol::{RepoName, Tag};
use pierone_tagstore::{ScmSource, TagRecord};
use serde_json::{Value, json};

use crate::error::RegistryError;
use crate::response::{self, Resp};
use crate::{Registry, layers};

/// The OpenAPI description of this API, served at `/openapi.yaml`.
const OPENAPI: &str = include_str!("../openapi.yaml");

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds, like Pier One's
/// `2015-06-11T16:13:29.152Z`.
pub(crate) fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn tag_json(t: &TagRecord) -> Value {
    json!({
        "name": t.name,
        "digest": t.digest.as_str(),
        "image": t.image.as_ref().map(|d| d.as_str()),
        "created": rfc3339(t.created_at),
        "created_by": t.created_by,
        "media_type": t.media_type,
        "size": t.size,
    })
}

fn ok(v: &Value) -> Resp {
    response::json(StatusCode::OK, "application/json", v)
}

impl Registry {
    /// Tags of `repo`, or `NAME_UNKNOWN` when it has none.
    async fn known_tags(&self, repo: &RepoName) -> Result<Vec<TagRecord>, RegistryError> {
        let tags = self.tags.tag_records(repo).await?;
        if tags.is_empty() {
            return Err(RegistryError::NameUnknown(repo.clone()));
        }
        Ok(tags)
    }

    pub(crate) async fn api_teams(&self) -> Result<Resp, RegistryError> {
        Ok(ok(&json!(self.tags.teams().await?)))
    }

    pub(crate) async fn api_artifacts(&self, team: &str) -> Result<Resp, RegistryError> {
        let arts = self.tags.artifacts(team).await?;
        if arts.is_empty() {
            return Err(RegistryError::TeamUnknown(team.to_owned()));
        }
        Ok(ok(&json!(arts)))
    }

    pub(crate) async fn api_tags(&self, repo: &RepoName) -> Result<Resp, RegistryError> {
        let tags = self.known_tags(repo).await?;
        Ok(ok(&Value::Array(tags.iter().map(tag_json).collect())))
    }

    pub(crate) async fn api_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Resp, RegistryError> {
        let tags = self.known_tags(repo).await?;
        let t = tags
            .iter()
            .find(|t| t.name == tag.as_str())
            .ok_or_else(|| {
                RegistryError::ManifestUnknown(
                    repo.clone(),
                    pierone_protocol::Reference::Tag(tag.clone()),
                )
            })?;
        Ok(ok(&tag_json(t)))
    }

    pub(crate) async fn api_latest(&self, repo: &RepoName) -> Result<Resp, RegistryError> {
        let t = self
            .tags
            .latest_tag(repo)
            .await?
            .ok_or_else(|| RegistryError::NameUnknown(repo.clone()))?;
        Ok(ok(&tag_json(&t)))
    }

    pub(crate) async fn api_scm_source(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Resp, RegistryError> {
        let unknown = || {
            RegistryError::ManifestUnknown(
                repo.clone(),
                pierone_protocol::Reference::Tag(tag.clone()),
            )
        };
        let (source, created) = match self.tags.scm_source(repo, tag).await? {
            Some(found) => found,
            None => {
                // Not declared at push time: look for scm-source.json in the image's layers,
                // and remember what we find.
                let digest = self
                    .tags
                    .resolve_tag(repo, tag)
                    .await?
                    .ok_or_else(unknown)?;
                let found: Option<ScmSource> = layers::find_scm_source(self, repo, &digest).await?;
                let source = found.ok_or(RegistryError::ScmSourceUnknown)?;
                self.tags.record_scm_source(repo, tag, source).await?;
                self.tags
                    .scm_source(repo, tag)
                    .await?
                    .ok_or(RegistryError::ScmSourceUnknown)?
            }
        };
        Ok(ok(&json!({
            "url": source.url,
            "revision": source.revision,
            "author": source.author,
            "status": source.status,
            "created": rfc3339(created),
        })))
    }

    pub(crate) async fn api_image(&self, prefix: &str) -> Result<Resp, RegistryError> {
        let matches = self.tags.find_images(prefix).await?;
        let mut images: Vec<&str> = matches.iter().map(|m| m.digest.as_str()).collect();
        images.sort_unstable();
        images.dedup();
        match images.len() {
            0 => Err(RegistryError::ImageUnknown(prefix.to_owned())),
            1 => Ok(ok(&Value::Array(
                matches
                    .iter()
                    .map(|m| {
                        let (team, artifact) = m.repository.split_once('/').unwrap_or(("", ""));
                        json!({"name": m.tag, "team": team, "artifact": artifact, "digest": m.digest.as_str()})
                    })
                    .collect(),
            ))),
            n => Err(RegistryError::ImageAmbiguous(prefix.to_owned(), n)),
        }
    }

    pub(crate) async fn api_stats(&self) -> Result<Resp, RegistryError> {
        let stats = self.tags.team_stats().await?;
        let storage = self.tags.storage_bytes().await?;
        Ok(ok(&json!({
            "teams": stats.len(),
            "artifacts": stats.iter().map(|s| s.artifacts).sum::<u64>(),
            "tags": stats.iter().map(|s| s.tags).sum::<u64>(),
            "storage": storage,
        })))
    }

    pub(crate) async fn api_team_stats(&self) -> Result<Resp, RegistryError> {
        let stats = self.tags.team_stats().await?;
        Ok(ok(&Value::Array(
            stats
                .iter()
                .map(|s| json!({"team": s.team, "stats": {"artifacts": s.artifacts, "tags": s.tags}}))
                .collect(),
        )))
    }

    pub(crate) fn api_health(&self) -> Resp {
        ok(&json!({"health": true}))
    }

    pub(crate) fn api_openapi(&self) -> Resp {
        let mut r = hyper::Response::new(response::full(OPENAPI));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/yaml"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_pier_ones() {
        assert_eq!(rfc3339(1_434_039_209_152), "2015-06-11T16:13:29.152Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn the_openapi_document_is_served_whole() {
        assert!(OPENAPI.starts_with("openapi: 3"));
        for path in ["/teams:", "/stats:", "/tags/{image}:", "/scm-source:"] {
            assert!(OPENAPI.contains(path), "{path}");
        }
    }
}
