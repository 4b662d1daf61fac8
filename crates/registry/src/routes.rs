//! Mapping request paths to typed routes.
//!
//! Repository names may contain `/`, so a path is split at the last marker segment
//! (`/manifests/`, `/blobs/`, ...) whose tail has no further `/`.

use pierone_protocol::{Digest, Reference, RepoName, Tag, UploadId};

use crate::error::RegistryError;

/// A parsed `/v2/...` endpoint with typed parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, Reference),
    /// A manifest path whose reference is neither a tag nor a digest. Reading it is a miss
    /// (404 `MANIFEST_UNKNOWN`, as the OCI conformance suite expects); writing it is invalid.
    ManifestBadReference(RepoName, String),
    Blob(RepoName, Digest),
    UploadStart(RepoName),
    Upload(RepoName, UploadId),
    Referrers(RepoName, Digest),
    // The Pier One API.
    Teams,
    Artifacts(String),
    ArtifactTags(RepoName),
    ArtifactTag(RepoName, Tag),
    Latest(RepoName),
    ScmSource(RepoName, Tag),
    Image(String),
    Stats,
    TeamStats,
    Health,
    Ready,
    Metrics,
    OpenApi,
    AuditLog,
    AuditCheckpoint,
    AuditProof,
}

impl Route {
    /// A fixed name for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags_list",
            Route::Manifest(..) | Route::ManifestBadReference(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) => "upload_start",
            Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
            Route::Teams => "api_teams",
            Route::Artifacts(_) => "api_artifacts",
            Route::ArtifactTags(_) => "api_tags",
            Route::ArtifactTag(..) => "api_tag",
            Route::Latest(_) => "api_latest",
            Route::ScmSource(..) => "api_scm_source",
            Route::Image(_) => "api_image",
            Route::Stats => "api_stats",
            Route::TeamStats => "api_team_stats",
            Route::Health => "health",
            Route::Ready => "ready",
            Route::Metrics => "metrics",
            Route::OpenApi => "openapi",
            Route::AuditLog => "audit_log",
            Route::AuditCheckpoint => "audit_checkpoint",
            Route::AuditProof => "audit_proof",
        }
    }
}

fn split_marker<'a>(path: &'a str, marker: &str) -> Option<(&'a str, &'a str)> {
    let at = path.rfind(marker)?;
    let (name, tail) = (&path[..at], &path[at + marker.len()..]);
    (!tail.contains('/')).then_some((name, tail))
}

fn repo(name: &str) -> Result<RepoName, RegistryError> {
    name.parse().map_err(RegistryError::from)
}

/// A team name from the Pier One API must be a valid first name component.
fn team(name: &str) -> Result<String, RegistryError> {
    repo(&format!("{name}/x")).map(|r| r.team().to_owned())
}

/// `/teams/{team}/artifacts/{artifact}/...`: the artifact may be percent-encoded (`%2F`) when
/// it is nested.
fn api_repo(team: &str, artifact: &str) -> Result<RepoName, RegistryError> {
    let artifact = percent_encoding::percent_decode_str(artifact).decode_utf8_lossy();
    repo(&format!("{team}/{artifact}"))
}

fn parse_api(path: &str) -> Result<Option<Route>, RegistryError> {
    match path {
        "/teams" | "/teams/" => return Ok(Some(Route::Teams)),
        "/stats" => return Ok(Some(Route::Stats)),
        "/stats/teams" => return Ok(Some(Route::TeamStats)),
        "/.well-known/health" => return Ok(Some(Route::Health)),
        "/.well-known/ready" => return Ok(Some(Route::Ready)),
        "/metrics" => return Ok(Some(Route::Metrics)),
        "/audit/log" => return Ok(Some(Route::AuditLog)),
        "/audit/checkpoint" => return Ok(Some(Route::AuditCheckpoint)),
        "/audit/proof" => return Ok(Some(Route::AuditProof)),
        "/openapi.yaml" => return Ok(Some(Route::OpenApi)),
        _ => {}
    }
    if let Some(prefix) = path.strip_prefix("/tags/") {
        // An empty prefix reaches the handler, which refuses it with 400 rather than 404.
        if prefix.contains('/') {
            return Ok(None);
        }
        return Ok(Some(Route::Image(prefix.to_owned())));
    }
    let Some(rest) = path.strip_prefix("/teams/") else {
        return Ok(None);
    };
    let Some((t, rest)) = rest.split_once('/') else {
        return Ok(None);
    };
    if rest == "artifacts" || rest == "artifacts/" {
        return Ok(Some(Route::Artifacts(team(t)?)));
    }
    let Some(rest) = rest.strip_prefix("artifacts/") else {
        return Ok(None);
    };
    if let Some(a) = rest.strip_suffix("/tags") {
        return Ok(Some(Route::ArtifactTags(api_repo(t, a)?)));
    }
    if let Some(a) = rest.strip_suffix("/latest") {
        return Ok(Some(Route::Latest(api_repo(t, a)?)));
    }
    if let Some(r) = rest.strip_suffix("/scm-source")
        && let Some((a, tag)) = split_marker(r, "/tags/")
    {
        return Ok(Some(Route::ScmSource(api_repo(t, a)?, tag.parse()?)));
    }
    if let Some((a, tag)) = split_marker(rest, "/tags/") {
        return Ok(Some(Route::ArtifactTag(api_repo(t, a)?, tag.parse()?)));
    }
    Ok(None)
}

/// Parse a request path; `Ok(None)` when it is not a registry endpoint at all.
pub fn parse(path: &str) -> Result<Option<Route>, RegistryError> {
    let Some(rest) = path.strip_prefix("/v2/") else {
        if path == "/v2" {
            return Ok(Some(Route::Base));
        }
        return parse_api(path);
    };
    if rest.is_empty() {
        return Ok(Some(Route::Base));
    }
    if rest == "_catalog" {
        return Ok(Some(Route::Catalog));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Some(Route::Tags(repo(name)?)));
    }
    if let Some((name, tail)) = split_marker(rest, "/manifests/") {
        let repo = repo(name)?;
        return Ok(Some(match tail.parse() {
            Ok(reference) => Route::Manifest(repo, reference),
            Err(_) => Route::ManifestBadReference(repo, tail.to_owned()),
        }));
    }
    if let Some((name, tail)) = split_marker(rest, "/blobs/uploads/") {
        let repo = repo(name)?;
        return Ok(Some(if tail.is_empty() {
            Route::UploadStart(repo)
        } else {
            Route::Upload(
                repo,
                tail.parse()
                    .map_err(|_| RegistryError::Service(pierone_service::Error::UploadUnknown))?,
            )
        }));
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads") {
        return Ok(Some(Route::UploadStart(repo(name)?)));
    }
    if let Some((name, tail)) = split_marker(rest, "/blobs/") {
        let digest = tail.parse().map_err(RegistryError::from)?;
        return Ok(Some(Route::Blob(repo(name)?, digest)));
    }
    if let Some((name, tail)) = split_marker(rest, "/referrers/") {
        let digest = tail.parse().map_err(RegistryError::from)?;
        return Ok(Some(Route::Referrers(repo(name)?, digest)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/").unwrap(), Some(Route::Base));
        assert_eq!(parse("/v2").unwrap(), Some(Route::Base));
        assert_eq!(parse("/v2/_catalog").unwrap(), Some(Route::Catalog));
        assert!(
            matches!(parse("/v2/t/a/b/tags/list").unwrap(), Some(Route::Tags(r)) if r.as_str() == "t/a/b")
        );
        assert!(
            matches!(parse("/v2/t/a/manifests/1.0").unwrap(), Some(Route::Manifest(r, Reference::Tag(_))) if r.as_str() == "t/a")
        );
        assert!(matches!(
            parse(&format!("/v2/t/a/manifests/{D}")).unwrap(),
            Some(Route::Manifest(_, Reference::Digest(_)))
        ));
        assert!(
            matches!(parse(&format!("/v2/t/blobs/x/blobs/{D}")).unwrap(), Some(Route::Blob(r, _)) if r.as_str() == "t/blobs/x")
        );
        assert!(matches!(
            parse("/v2/t/a/blobs/uploads/").unwrap(),
            Some(Route::UploadStart(_))
        ));
        assert!(
            matches!(parse("/v2/t/a/blobs/uploads/abc-1").unwrap(), Some(Route::Upload(_, id)) if id.as_str() == "abc-1")
        );
        assert!(matches!(
            parse(&format!("/v2/t/a/referrers/{D}")).unwrap(),
            Some(Route::Referrers(..))
        ));
        assert!(
            matches!(parse("/v2/t/a/manifests/.INVALID_MANIFEST_NAME").unwrap(), Some(Route::ManifestBadReference(r, s)) if r.as_str() == "t/a" && s == ".INVALID_MANIFEST_NAME")
        );
        assert_eq!(parse("/other").unwrap(), None);
        assert_eq!(parse("/teams").unwrap(), Some(Route::Teams));
        assert_eq!(
            parse("/teams/t/artifacts").unwrap(),
            Some(Route::Artifacts("t".into()))
        );
        assert!(
            matches!(parse("/teams/t/artifacts/a/tags").unwrap(), Some(Route::ArtifactTags(r)) if r.as_str() == "t/a")
        );
        assert!(
            matches!(parse("/teams/t/artifacts/a%2Fb/tags/1.0").unwrap(), Some(Route::ArtifactTag(r, t)) if r.as_str() == "t/a/b" && t.as_str() == "1.0")
        );
        assert!(matches!(
            parse("/teams/t/artifacts/a/latest").unwrap(),
            Some(Route::Latest(_))
        ));
        assert!(matches!(
            parse("/teams/t/artifacts/a/tags/1.0/scm-source").unwrap(),
            Some(Route::ScmSource(_, _))
        ));
        assert_eq!(
            parse("/tags/abc123").unwrap(),
            Some(Route::Image("abc123".into()))
        );
        assert_eq!(parse("/stats/teams").unwrap(), Some(Route::TeamStats));
        assert_eq!(parse("/.well-known/health").unwrap(), Some(Route::Health));
        assert_eq!(parse("/.well-known/ready").unwrap(), Some(Route::Ready));
        assert_eq!(parse("/metrics").unwrap(), Some(Route::Metrics));
        assert_eq!(parse("/audit/log").unwrap(), Some(Route::AuditLog));
        assert_eq!(
            parse("/audit/checkpoint").unwrap(),
            Some(Route::AuditCheckpoint)
        );
        assert!(parse("/teams/T/artifacts").is_err());
        assert_eq!(parse("/v2/t/a/unknown").unwrap(), None);
    }

    #[test]
    fn bad_parameters() {
        assert!(matches!(
            parse("/v2/Team/a/tags/list"),
            Err(RegistryError::Service(pierone_service::Error::Protocol(
                pierone_protocol::Error::InvalidName { .. }
            )))
        ));
        assert!(matches!(
            parse("/v2/single/tags/list"),
            Err(RegistryError::Service(pierone_service::Error::Protocol(
                pierone_protocol::Error::InvalidName { .. }
            )))
        ));
        assert!(matches!(
            parse("/v2/t/a/blobs/sha256:abc"),
            Err(RegistryError::Service(pierone_service::Error::Protocol(
                pierone_protocol::Error::InvalidDigest(_)
            )))
        ));
        // A bad reference is decided per method (a read misses, a write is invalid).
        assert!(matches!(
            parse("/v2/t/a/manifests/-bad"),
            Ok(Some(Route::ManifestBadReference(_, r))) if r == "-bad"
        ));
    }
}
