//! The Pier One queries: teams, artifacts, tags with provenance, latest, scm-source, image
//! search and statistics, as `pierone-api` types. Lists are paged by `n` and `last` like the
//! `/v2/` listings; the stores answer them whole, so the page is cut here.

use pierone_api::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Timestamp};
use pierone_protocol::{RepoName, Tag};
use pierone_tagstore::{ScmSource, TagRecord};

use crate::{Error, Service, layers};

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

/// What a query asks of a list: at most `n` items after the one named `last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    n: usize,
    last: Option<String>,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            n: DEFAULT_PAGE_SIZE,
            last: None,
        }
    }
}

impl PageRequest {
    /// `n` items (the default page size when `None`; between 1 and the maximum) after `last`.
    pub fn new(n: Option<usize>, last: Option<String>) -> Result<PageRequest, Error> {
        let n = match n {
            None => DEFAULT_PAGE_SIZE,
            Some(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            Some(n) => {
                return Err(Error::InvalidQuery {
                    name: "n",
                    value: format!("{n}, not between 1 and {MAX_PAGE_SIZE}"),
                });
            }
        };
        Ok(PageRequest { n, last })
    }

    /// The page size.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Where the page starts in `items`, sorted by `key`: after every item up to `last`.
    fn start_sorted<T>(&self, items: &[T], key: impl Fn(&T) -> &str) -> usize {
        match &self.last {
            Some(last) => items.partition_point(|i| key(i) <= last.as_str()),
            None => 0,
        }
    }

    /// The page of `items` from `start`; `key(i)` is what `last` names item `i` by.
    fn cut<T>(&self, mut items: Vec<T>, start: usize, key: impl Fn(&T) -> String) -> Page<T> {
        let start = start.min(items.len());
        let end = start.saturating_add(self.n).min(items.len());
        let next = (start < end && end < items.len()).then(|| key(&items[end - 1]));
        items.truncate(end);
        items.drain(..start);
        Page { items, next }
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// When more follow, what names the last item of this page (the next page's `last`).
    pub next: Option<String>,
}

/// Whether `digest` (`sha256:...`) starts with `prefix`, given with or without `sha256:`.
fn digest_has_prefix(digest: &str, prefix: &str) -> bool {
    digest.starts_with(prefix)
        || digest
            .split_once(':')
            .is_some_and(|(_, hex)| hex.starts_with(prefix))
}

impl Service {
    /// Tags of `repo`, or `NameUnknown` when it has none.
    async fn known_tags(&self, repo: &RepoName) -> Result<Vec<TagRecord>, Error> {
        let tags = self.tags.tag_records(repo).await?;
        if tags.is_empty() {
            return Err(Error::NameUnknown(repo.clone()));
        }
        Ok(tags)
    }

    /// Teams with artifacts, by name.
    pub async fn teams(&self, page: &PageRequest) -> Result<Page<String>, Error> {
        let teams = self.tags.teams().await?;
        let start = page.start_sorted(&teams, String::as_str);
        Ok(page.cut(teams, start, String::clone))
    }

    /// Artifacts of `team`, by name; `TeamUnknown` when it has none.
    pub async fn artifacts(&self, team: &str, page: &PageRequest) -> Result<Page<String>, Error> {
        let arts = self.tags.artifacts(team).await?;
        if arts.is_empty() {
            return Err(Error::TeamUnknown(team.to_owned()));
        }
        let start = page.start_sorted(&arts, String::as_str);
        Ok(page.cut(arts, start, String::clone))
    }

    /// Tags of `repo`, oldest first; `last` names the last tag of the previous page, which
    /// must exist (tags are in creation order, not by name, so there is no place for a name
    /// that is not there).
    pub async fn artifact_tags(
        &self,
        repo: &RepoName,
        page: &PageRequest,
    ) -> Result<Page<pierone_api::Tag>, Error> {
        let tags: Vec<pierone_api::Tag> =
            self.known_tags(repo).await?.iter().map(tag_json).collect();
        let start = match &page.last {
            None => 0,
            Some(last) => {
                tags.iter()
                    .position(|t| &t.name == last)
                    .ok_or_else(|| Error::InvalidQuery {
                        name: "last",
                        value: format!("{last}, which is not a tag of {repo}"),
                    })?
                    + 1
            }
        };
        Ok(page.cut(tags, start, |t| t.name.clone()))
    }

    /// Tag `tag` of `repo`, with who pushed it when.
    pub async fn artifact_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<pierone_api::Tag, Error> {
        let tags = self.known_tags(repo).await?;
        let t = tags
            .iter()
            .find(|t| t.name == tag.as_str())
            .ok_or_else(|| {
                Error::ManifestUnknown(repo.clone(), pierone_protocol::Reference::Tag(tag.clone()))
            })?;
        Ok(tag_json(t))
    }

    /// The most recently created tag of `repo`.
    pub async fn latest(&self, repo: &RepoName) -> Result<pierone_api::Tag, Error> {
        let t = self
            .tags
            .latest_tag(repo)
            .await?
            .ok_or_else(|| Error::NameUnknown(repo.clone()))?;
        Ok(tag_json(&t))
    }

    /// Where tag `tag` of `repo` was built from: as declared at push time, or else found in
    /// the image's layers (and then recorded).
    pub async fn scm_source(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<pierone_api::ScmSource, Error> {
        let unknown =
            || Error::ManifestUnknown(repo.clone(), pierone_protocol::Reference::Tag(tag.clone()));
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
                let source = found.ok_or(Error::ScmSourceUnknown)?;
                self.tags.record_scm_source(repo, tag, source).await?;
                self.tags
                    .scm_source(repo, tag)
                    .await?
                    .ok_or(Error::ScmSourceUnknown)?
            }
        };
        Ok(pierone_api::ScmSource {
            url: source.url,
            revision: source.revision,
            author: source.author,
            status: source.status,
            created: Timestamp::from_millis(created),
        })
    }

    /// Tags of the one image a prefix names, sorted by `team/artifact:tag`, which is also
    /// what `last` names.
    ///
    /// An image is the digest the prefix matched: the config digest where it matches (podman
    /// re-compresses layers on push, so several manifests share one config, and the config
    /// digest is the image id `podman images` shows), else the manifest digest. A full digest
    /// therefore names one image however many manifests carry it.
    pub async fn image(
        &self,
        prefix: &str,
        page: &PageRequest,
    ) -> Result<Page<pierone_api::ImageMatch>, Error> {
        // Every digest starts with the empty prefix: it would list the whole registry.
        if prefix.is_empty() || prefix == "sha256:" {
            return Err(Error::ImagePrefixEmpty);
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
            0 => Err(Error::ImageUnknown(prefix.to_owned())),
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
                let cut = page.cut(found, start, |(k, _)| k.clone());
                Ok(Page {
                    items: cut.items.into_iter().map(|(_, i)| i).collect(),
                    next: cut.next,
                })
            }
            _ => Err(Error::ImageAmbiguous {
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

    /// Counts over the whole registry.
    pub async fn stats(&self) -> Result<pierone_api::Stats, Error> {
        let stats = self.tags.team_stats().await?;
        let storage = self.tags.storage_bytes().await?;
        Ok(pierone_api::Stats {
            teams: stats.len() as u64,
            artifacts: stats.iter().map(|s| s.artifacts).sum(),
            tags: stats.iter().map(|s| s.tags).sum(),
            storage,
        })
    }

    /// Counts per team.
    pub async fn team_stats(&self) -> Result<Vec<pierone_api::TeamStats>, Error> {
        let stats = self.tags.team_stats().await?;
        Ok(stats
            .into_iter()
            .map(|s| pierone_api::TeamStats {
                team: s.team,
                stats: pierone_api::TeamCounts {
                    artifacts: s.artifacts,
                    tags: s.tags,
                },
            })
            .collect())
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
    fn pages_are_cut_after_last_with_the_next_cursor() {
        let page = PageRequest::new(Some(2), Some("b".into())).unwrap();
        let items: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let start = page.start_sorted(&items, String::as_str);
        let cut = page.cut(items, start, String::clone);
        assert_eq!(cut.items, ["c", "d"]);
        assert_eq!(cut.next.as_deref(), Some("d"));
        assert!(PageRequest::new(Some(0), None).is_err());
        assert!(PageRequest::new(Some(MAX_PAGE_SIZE + 1), None).is_err());
    }
}
