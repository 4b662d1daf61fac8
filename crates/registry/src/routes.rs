//! Mapping request paths to typed routes.
//!
//! Repository names may contain `/`, so a path is split at the last marker segment
//! (`/manifests/`, `/blobs/`, ...) whose tail has no further `/`.

use pierone_protocol::{Digest, Reference, RepoName, UploadId};

use crate::error::RegistryError;

/// A parsed `/v2/...` endpoint with typed parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, Reference),
    Blob(RepoName, Digest),
    UploadStart(RepoName),
    Upload(RepoName, UploadId),
    Referrers(RepoName, Digest),
}

fn split_marker<'a>(path: &'a str, marker: &str) -> Option<(&'a str, &'a str)> {
    let at = path.rfind(marker)?;
    let (name, tail) = (&path[..at], &path[at + marker.len()..]);
    (!tail.contains('/')).then_some((name, tail))
}

fn repo(name: &str) -> Result<RepoName, RegistryError> {
    name.parse().map_err(RegistryError::Protocol)
}

/// Parse a request path; `Ok(None)` when it is not a registry endpoint at all.
pub fn parse(path: &str) -> Result<Option<Route>, RegistryError> {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Ok((path == "/v2").then_some(Route::Base));
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
        let reference = tail.parse().map_err(RegistryError::Protocol)?;
        return Ok(Some(Route::Manifest(repo(name)?, reference)));
    }
    if let Some((name, tail)) = split_marker(rest, "/blobs/uploads/") {
        let repo = repo(name)?;
        return Ok(Some(if tail.is_empty() {
            Route::UploadStart(repo)
        } else {
            Route::Upload(
                repo,
                tail.parse().map_err(|_| RegistryError::UploadUnknown)?,
            )
        }));
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads") {
        return Ok(Some(Route::UploadStart(repo(name)?)));
    }
    if let Some((name, tail)) = split_marker(rest, "/blobs/") {
        let digest = tail.parse().map_err(RegistryError::Protocol)?;
        return Ok(Some(Route::Blob(repo(name)?, digest)));
    }
    if let Some((name, tail)) = split_marker(rest, "/referrers/") {
        let digest = tail.parse().map_err(RegistryError::Protocol)?;
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
        assert_eq!(parse("/other").unwrap(), None);
        assert_eq!(parse("/v2/t/a/unknown").unwrap(), None);
    }

    #[test]
    fn bad_parameters() {
        assert!(matches!(
            parse("/v2/Team/a/tags/list"),
            Err(RegistryError::Protocol(
                pierone_protocol::Error::InvalidName { .. }
            ))
        ));
        assert!(matches!(
            parse("/v2/single/tags/list"),
            Err(RegistryError::Protocol(
                pierone_protocol::Error::InvalidName { .. }
            ))
        ));
        assert!(matches!(
            parse("/v2/t/a/blobs/sha256:abc"),
            Err(RegistryError::Protocol(
                pierone_protocol::Error::InvalidDigest(_)
            ))
        ));
        assert!(matches!(
            parse("/v2/t/a/manifests/-bad"),
            Err(RegistryError::Protocol(
                pierone_protocol::Error::InvalidTag(_)
            ))
        ));
    }
}
