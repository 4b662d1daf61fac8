//! The Pier One API over HTTP: teams, artifacts, tags with provenance, latest, scm-source,
//! image search, statistics and health, as JSON of the `pierone-api` types. Lists are paged
//! with `n` and `last` like the `/v2/` listings, with a `Link` to the next page.

use hyper::header::LINK;
use hyper::{Request, StatusCode};
use pierone_protocol::{RepoName, Tag};
use pierone_service::{Page, PageRequest};
use serde::Serialize;

use crate::Registry;
use crate::blobs::{query, query_number};
use crate::error::RegistryError;
use crate::response::{self, Resp, header_value};

/// The OpenAPI description of this API, served at `/openapi.yaml`.
const OPENAPI: &str = include_str!("../openapi.yaml");

fn ok(v: &impl Serialize) -> Resp {
    response::json(StatusCode::OK, "application/json", v)
}

/// What a request asks of a list: `n` and `last`.
fn page_request<B>(req: &Request<B>) -> Result<PageRequest, RegistryError> {
    let q = query(req);
    Ok(PageRequest::new(
        query_number::<usize>(&q, "n")?,
        q.get("last").cloned(),
    )?)
}

/// A page as JSON, with `Link: <...>; rel="next"` when more follow; the link repeats the
/// request's path.
fn paged<T: Serialize, B>(req: &Request<B>, n: usize, page: &Page<T>) -> Resp {
    let mut r = ok(&page.items);
    if let Some(last) = &page.next {
        let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        r.headers_mut().insert(
            LINK,
            header_value(&format!(
                "<{}?n={n}&last={last}>; rel=\"next\"",
                req.uri().path()
            )),
        );
    }
    r
}

impl Registry {
    pub(crate) async fn api_teams<B>(&self, req: &Request<B>) -> Result<Resp, RegistryError> {
        let p = page_request(req)?;
        let page = self.service.teams(&p).await?;
        Ok(paged(req, p.n(), &page))
    }

    pub(crate) async fn api_artifacts<B>(
        &self,
        team: &str,
        req: &Request<B>,
    ) -> Result<Resp, RegistryError> {
        let p = page_request(req)?;
        let page = self.service.artifacts(team, &p).await?;
        Ok(paged(req, p.n(), &page))
    }

    pub(crate) async fn api_tags<B>(
        &self,
        repo: &RepoName,
        req: &Request<B>,
    ) -> Result<Resp, RegistryError> {
        let p = page_request(req)?;
        let page = self.service.artifact_tags(repo, &p).await?;
        Ok(paged(req, p.n(), &page))
    }

    pub(crate) async fn api_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Resp, RegistryError> {
        Ok(ok(&self.service.artifact_tag(repo, tag).await?))
    }

    pub(crate) async fn api_latest(&self, repo: &RepoName) -> Result<Resp, RegistryError> {
        Ok(ok(&self.service.latest(repo).await?))
    }

    pub(crate) async fn api_scm_source(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Resp, RegistryError> {
        Ok(ok(&self.service.scm_source(repo, tag).await?))
    }

    pub(crate) async fn api_image<B>(
        &self,
        prefix: &str,
        req: &Request<B>,
    ) -> Result<Resp, RegistryError> {
        let p = page_request(req)?;
        let page = self.service.image(prefix, &p).await?;
        Ok(paged(req, p.n(), &page))
    }

    pub(crate) async fn api_stats(&self) -> Result<Resp, RegistryError> {
        Ok(ok(&self.service.stats().await?))
    }

    pub(crate) async fn api_team_stats(&self) -> Result<Resp, RegistryError> {
        Ok(ok(&self.service.team_stats().await?))
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
    fn the_openapi_document_is_served_whole() {
        assert!(OPENAPI.starts_with("openapi: 3"));
        for path in ["/teams:", "/stats:", "/tags/{image}:", "/scm-source:"] {
            assert!(OPENAPI.contains(path), "{path}");
        }
    }
}
