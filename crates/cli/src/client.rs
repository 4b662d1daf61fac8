//! A small client for the Pier One API and the parts of the registry API the CLI reads.
//!
//! Every Pier One answer is read into the `pierone-api` types: an answer that does not fit
//! them is not from a Pier One API, and is reported as such rather than shown as an empty
//! list.

use pierone_api::ErrorBody;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::token::{NO_SOURCE, Token};

pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Pages followed at most in one listing, so that a server whose links go round in circles
/// cannot keep the CLI busy forever (a million items at the largest page size).
const MAX_PAGES: usize = 1000;

#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    token: Option<Token>,
    http: reqwest::Client,
}

/// The message of an OCI error body, when there is one.
fn message(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body)
        .ok()
        .and_then(|e| e.errors.into_iter().next().map(|e| e.message))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// Why a request never got an answer, in words a user can act on: reqwest's own text says
/// only "client error (Connect)", the cause is somewhere down its chain of sources.
pub(crate) fn connection_cause(e: &reqwest::Error, base: &str) -> String {
    if e.is_timeout() {
        return "the registry did not answer in time (timed out)".into();
    }
    let mut chain: Vec<String> = Vec::new();
    let mut refused = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            refused = true;
        }
        chain.push(s.to_string());
        source = s.source();
    }
    let all = chain.join(": ").to_lowercase();
    let innermost = chain.last().cloned().unwrap_or_else(|| e.to_string());
    if refused || all.contains("connection refused") {
        return "connection refused (is the registry running, and on this port?)".into();
    }
    if all.contains("dns error") || all.contains("failed to lookup address") {
        return format!("DNS lookup failed: {innermost}");
    }
    let tls = all.contains("certificate")
        || all.contains("tls")
        || all.contains("handshake")
        || all.contains("corrupt message")
        || all.contains("invalidcontenttype");
    if tls {
        if base.starts_with("https://")
            && (all.contains("invalidcontenttype") || all.contains("corrupt message"))
        {
            let plain = base.replacen("https://", "http://", 1);
            return format!("TLS handshake failed: this looks like plain HTTP: use --url {plain}");
        }
        return format!("TLS handshake failed: {innermost}");
    }
    innermost
}

impl Api {
    pub fn new(base: &str, token: Option<Token>) -> Result<Api, Error> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| Error::Unreachable {
                url: base.to_owned(),
                why: e.to_string(),
            })?;
        Ok(Api {
            base: base.to_owned(),
            token,
            http,
        })
    }

    /// A 401, naming the token that was refused and where it came from.
    pub fn unauthorized(&self) -> Error {
        let url = self.base.clone();
        match &self.token {
            Some(t) => Error::Unauthorized {
                url,
                what: t.source.to_string(),
                hint: t.source.refused_hint(),
            },
            None => Error::Unauthorized {
                url,
                what: "the request without a token".to_owned(),
                hint: format!("{NO_SOURCE}; then run `pierone login`"),
            },
        }
    }

    fn not_pier_one(&self, path: &str, why: impl std::fmt::Display) -> Error {
        Error::NotPierOne {
            url: self.base.clone(),
            why: format!("GET {path}: {why}"),
        }
    }

    /// GET `path`; `what` names the thing for a 404 message.
    pub async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(&t.secret);
        }
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let resp = req.send().await.map_err(|e| Error::Unreachable {
            url: self.base.clone(),
            why: connection_cause(&e, &self.base),
        })?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(match status {
            401 => self.unauthorized(),
            403 => Error::Forbidden(message(&body)),
            // Every "not found" of the registry carries the error envelope; a 404 without
            // one is some other service's.
            404 if serde_json::from_str::<ErrorBody>(&body).is_err() => {
                self.not_pier_one(path, "404 without an OCI error body")
            }
            404 => Error::NotFound(what.to_owned()),
            412 => Error::Ambiguous(message(&body)),
            _ => Error::Unexpected {
                status,
                body: message(&body),
            },
        })
    }

    /// GET `path` and read the answer as a `T` of the Pier One API.
    pub async fn json<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T, Error> {
        Ok(self.json_page(path, what).await?.0)
    }

    /// GET `path` as a `T`, with the path of the next page when the answer links one.
    async fn json_page<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<(T, Option<String>), Error> {
        let resp = self.get(path, None, what).await?;
        let next = resp
            .headers()
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(pierone_api::next_link)
            .map(str::to_owned);
        let body = resp.bytes().await.map_err(|e| Error::Unreachable {
            url: self.base.clone(),
            why: e.to_string(),
        })?;
        let value = serde_json::from_slice(&body).map_err(|e| self.not_pier_one(path, e))?;
        let next = match next {
            None => None,
            // The registry links pages by path; a full URL must stay on this registry.
            Some(link) if link.starts_with('/') => Some(link),
            Some(link) => match link.strip_prefix(&self.base) {
                Some(rest) if rest.starts_with('/') => Some(rest.to_owned()),
                _ => {
                    return Err(self.not_pier_one(path, format!("next page at {link}")));
                }
            },
        };
        Ok((value, next))
    }

    /// Every item of the list at `path`, following `Link: <...>; rel="next"` from page to
    /// page; with `limit` (other than 0), stops once it has that many.
    pub async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
        limit: Option<usize>,
    ) -> Result<Vec<T>, Error> {
        // As for `tags --limit`, 0 asks for everything.
        let limit = limit.filter(|&n| n > 0);
        let mut items = Vec::new();
        let mut next = Some(match limit {
            // A small limit needs only a small page.
            Some(n) if (1..pierone_api::DEFAULT_PAGE_SIZE).contains(&n) => {
                format!("{path}?n={n}")
            }
            _ => path.to_owned(),
        });
        let mut pages = 0;
        while let Some(page) = next.take() {
            if limit.is_some_and(|n| items.len() >= n) {
                break;
            }
            pages += 1;
            if pages > MAX_PAGES {
                return Err(self.not_pier_one(path, format!("more than {MAX_PAGES} pages")));
            }
            let (got, link): (Vec<T>, _) = self.json_page(&page, what).await?;
            if link.as_deref() == Some(page.as_str()) {
                return Err(self.not_pier_one(&page, "the next page is this page"));
            }
            items.extend(got);
            next = link;
        }
        if let Some(n) = limit {
            items.truncate(n);
        }
        Ok(items)
    }
}
