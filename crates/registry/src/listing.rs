//! `GET /v2/<name>/tags/list` and `GET /v2/_catalog`, with `n`/`last` pagination.

use hyper::header::LINK;
use hyper::{Request, StatusCode};
use pierone_protocol::RepoName;

use crate::Registry;
use crate::blobs::{query, query_number};
use crate::error::RegistryError;
use crate::response::{self, Resp, header_value};

/// The page size and cursor of a listing request.
fn page<B>(req: &Request<B>) -> Result<(Option<usize>, Option<String>), RegistryError> {
    let q = query(req);
    Ok((query_number(&q, "n")?, q.get("last").cloned()))
}

/// Add `Link: <...>; rel="next"` when a full page suggests there may be more.
fn with_link(mut r: Resp, path: &str, n: Option<usize>, items: &[String]) -> Resp {
    if let (Some(n), Some(last)) = (n, items.last())
        && n > 0
        && items.len() == n
    {
        let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        r.headers_mut().insert(
            LINK,
            header_value(&format!("<{path}?n={n}&last={last}>; rel=\"next\"")),
        );
    }
    r
}

impl Registry {
    pub(crate) async fn tags_list<B>(
        &self,
        repo: &RepoName,
        req: &Request<B>,
    ) -> Result<Resp, RegistryError> {
        let (n, last) = page(req)?;
        let tags = self
            .service
            .list_tags(repo, last.as_deref(), n.unwrap_or(usize::MAX))
            .await?;
        let r = response::json(
            StatusCode::OK,
            "application/json",
            &serde_json::json!({ "name": repo.as_str(), "tags": tags }),
        );
        Ok(with_link(r, &format!("/v2/{repo}/tags/list"), n, &tags))
    }

    pub(crate) async fn catalog<B>(&self, req: &Request<B>) -> Result<Resp, RegistryError> {
        let (n, last) = page(req)?;
        let repos = self
            .service
            .list_repositories(last.as_deref(), n.unwrap_or(usize::MAX))
            .await?;
        let r = response::json(
            StatusCode::OK,
            "application/json",
            &serde_json::json!({ "repositories": repos }),
        );
        Ok(with_link(r, "/v2/_catalog", n, &repos))
    }
}
