//! The Pier One API: teams, artifacts, tags with provenance, latest, scm-source, image search,
//! statistics and health, as JSON of the `pierone-api` types. Lists are paged with `n` and
//! `last` like the `/v2/` listings.

use hyper::body::Incoming;
use hyper::header::LINK;
use hyper::{Request, StatusCode};
use pierone_api::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Timestamp};
use pierone_protocol::{RepoName, Tag};
use pierone_tagstore::{ScmSource, TagRecord};
use serde::Serialize;

use crate::blobs::{query, query_number};
use crate::error::RegistryError;
use crate::response::{self, Resp, header_value};
use crate::{Registry, layers};

/// The OpenAPI description of this API, served at `/openapi.yaml`.
const OPENAPI: &str = include_str!("../openapi.yaml");

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds, like Pier One's
/// `2015-06-11T16:13:29.152Z`.
pub(crate) fn rfc3339(ms: i64) -> String {
    Timestamp::from_millis(ms).as_str().to_owned()
}

fn tag_json(t: &TagRecord) -> pierone_api::Tag {
    pierone_api::Tag {
        name: t.name.clone(),
        digest: t.digest.as_str().to_owned(),
        image: t.image.as_ref().map(|d| d.as_str().to_owned()),
        created: Timestamp::from_millis(t.created_at),
        created_by: t.created_by.clone(),
        media_type: t.media_type.clone(),
        size: t.size,
    }
}

fn ok(v: &impl Serialize) -> Resp {
    response::json(StatusCode::OK, "application/json", v)
}

/// What a request asks of a list: at most `n` items after the one named `last`.
struct Page<'r> {
    n: usize,
    last: Option<String>,
    /// The request's path, which the `Link` to the next page repeats.
    path: &'r str,
}

impl<'r> Page<'r> {
    fn of(req: &'r Request<Incoming>) -> Result<Page<'r>, RegistryError> {
        let q = query(req);
        let n = match query_number::<usize>(&q, "n")? {
            None => DEFAULT_PAGE_SIZE,
            Some(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            Some(n) => {
                return Err(RegistryError::InvalidQuery {
                    name: "n",
                    value: format!("{n}, not between 1 and {MAX_PAGE_SIZE}"),
                });
            }
        };
        Ok(Page {
            n,
            last: q.get("last").cloned(),
            path: req.uri().path(),
        })
    }

    /// Where the page starts in `items`, sorted by `key`: after every item up to `last`.
    fn start_sorted<T>(&self, items: &[T], key: impl Fn(&T) -> &str) -> usize {
        match &self.last {
            Some(last) => items.partition_point(|i| key(i) <= last.as_str()),
            None => 0,
        }
    }

    /// The page of `items` from `start`, with `Link: <...>; rel="next"` when more follow;
    /// `key(i)` is what `last` names item `i` by.
    ///
    /// The stores answer these lists whole, so the page is cut here; a query per page is
    /// for when a team has more than a few thousand tags.
    fn answer<T: Serialize>(
        &self,
        items: &[T],
        start: usize,
        key: impl Fn(usize) -> String,
    ) -> Resp {
        let start = start.min(items.len());
        let end = start.saturating_add(self.n).min(items.len());
        let mut r = ok(&&items[start..end]);
        if start < end && end < items.len() {
            let last: String = form_urlencoded::byte_serialize(key(end - 1).as_bytes()).collect();
            r.headers_mut().insert(
                LINK,
                header_value(&format!(
                    "<{}?n={}&last={last}>; rel=\"next\"",
                    self.path, self.n
                )),
            );
        }
        r
    }
}

/// Whether `digest` (`sha256:...`) starts with `prefix`, given with or without `sha256:`.
fn digest_has_prefix(digest: &str, prefix: &str) -> bool {
    digest.starts_with(prefix)
        || digest
            .split_once(':')
            .is_some_and(|(_, hex)| hex.starts_with(prefix))
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

    pub(crate) async fn api_teams(&self, req: &Request<Incoming>) -> Result<Resp, RegistryError> {
        let page = Page::of(req)?;
        let teams = self.tags.teams().await?;
        let start = page.start_sorted(&teams, String::as_str);
        Ok(page.answer(&teams, start, |i| teams[i].clone()))
    }

    pub(crate) async fn api_artifacts(
        &self,
        team: &str,
        req: &Request<Incoming>,
    ) -> Result<Resp, RegistryError> {
        let page = Page::of(req)?;
        let arts = self.tags.artifacts(team).await?;
        if arts.is_empty() {
            return Err(RegistryError::TeamUnknown(team.to_owned()));
        }
        let start = page.start_sorted(&arts, String::as_str);
        Ok(page.answer(&arts, start, |i| arts[i].clone()))
    }

    /// Tags oldest first; `last` names the last tag of the previous page, which must exist
    /// (tags are in creation order, not by name, so there is no place for a name that is
    /// not there).
    pub(crate) async fn api_tags(
        &self,
        repo: &RepoName,
        req: &Request<Incoming>,
    ) -> Result<Resp, RegistryError> {
        let page = Page::of(req)?;
        let tags: Vec<pierone_api::Tag> =
            self.known_tags(repo).await?.iter().map(tag_json).collect();
        let start = match &page.last {
            None => 0,
            Some(last) => {
                tags.iter().position(|t| &t.name == last).ok_or_else(|| {
                    RegistryError::InvalidQuery {
                        name: "last",
                        value: format!("{last}, which is not a tag of {repo}"),
                    }
                })? + 1
            }
        };
        Ok(page.answer(&tags, start, |i| tags[i].name.clone()))
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
        Ok(ok(&pierone_api::ScmSource {
            url: source.url,
            revision: source.revision,
            author: source.author,
            status: source.status,
            created: Timestamp::from_millis(created),
        }))
    }

    /// Tags of the one image a prefix names, sorted by `team/artifact:tag`, which is also
    /// what `last` names.
    ///
    /// An image is the digest the prefix matched: the config digest where it matches (podman
    /// re-compresses layers on push, so several manifests share one config, and the config
    /// digest is the image id `podman images` shows), else the manifest digest. A full digest
    /// therefore names one image however many manifests carry it.
    pub(crate) async fn api_image(
        &self,
        prefix: &str,
        req: &Request<Incoming>,
    ) -> Result<Resp, RegistryError> {
        let page = Page::of(req)?;
        // Every digest starts with the empty prefix: it would list the whole registry.
        if prefix.is_empty() || prefix == "sha256:" {
            return Err(RegistryError::ImagePrefixEmpty);
        }
        let matches = self.tags.find_images(prefix).await?;
        let image_of = |m: &pierone_tagstore::ImageMatch| -> String {
            match &m.image {
                Some(i) if digest_has_prefix(i.as_str(), prefix) => i.as_str().to_owned(),
                _ => m.digest.as_str().to_owned(),
            }
        };
        let mut images: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        for m in &matches {
            images
                .entry(image_of(m))
                .or_default()
                .push(format!("{}:{}", m.repository, m.tag));
        }
        match images.len() {
            0 => Err(RegistryError::ImageUnknown(prefix.to_owned())),
            1 => {
                let mut found: Vec<(String, pierone_api::ImageMatch)> = matches
                    .into_iter()
                    .map(|m| {
                        let (team, artifact) = m.repository.split_once('/').unwrap_or(("", ""));
                        let item = pierone_api::ImageMatch {
                            name: m.tag.clone(),
                            team: team.to_owned(),
                            artifact: artifact.to_owned(),
                            digest: m.digest.as_str().to_owned(),
                        };
                        (format!("{}:{}", m.repository, m.tag), item)
                    })
                    .collect();
                found.sort_by(|a, b| a.0.cmp(&b.0));
                let start = page.start_sorted(&found, |(k, _)| k.as_str());
                let (keys, items): (Vec<String>, Vec<pierone_api::ImageMatch>) =
                    found.into_iter().unzip();
                Ok(page.answer(&items, start, |i| keys[i].clone()))
            }
            _ => Err(RegistryError::ImageAmbiguous {
                prefix: prefix.to_owned(),
                candidates: images
                    .into_iter()
                    .map(|(digest, mut tags)| {
                        tags.sort();
                        (digest, tags)
                    })
                    .collect(),
            }),
        }
    }

    pub(crate) async fn api_stats(&self) -> Result<Resp, RegistryError> {
        let stats = self.tags.team_stats().await?;
        let storage = self.tags.storage_bytes().await?;
        Ok(ok(&pierone_api::Stats {
            teams: stats.len() as u64,
            artifacts: stats.iter().map(|s| s.artifacts).sum(),
            tags: stats.iter().map(|s| s.tags).sum(),
            storage,
        }))
    }

    pub(crate) async fn api_team_stats(&self) -> Result<Resp, RegistryError> {
        let stats = self.tags.team_stats().await?;
        let per_team: Vec<pierone_api::TeamStats> = stats
            .into_iter()
            .map(|s| pierone_api::TeamStats {
                team: s.team,
                stats: pierone_api::TeamCounts {
                    artifacts: s.artifacts,
                    tags: s.tags,
                },
            })
            .collect();
        Ok(ok(&per_team))
    }

    pub(crate) fn api_health(&self) -> Resp {
        ok(&pierone_api::Health { health: true })
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
