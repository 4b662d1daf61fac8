//! A small client for the Pier One API and the parts of the registry API the CLI reads.

use serde_json::Value;

use crate::Error;

pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// The message of an OCI error body, when there is one.
fn message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Result<Api, Error> {
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
            req = req.bearer_auth(t);
        }
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let resp = req.send().await.map_err(|e| Error::Unreachable {
            url: self.base.clone(),
            why: match std::error::Error::source(&e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            },
        })?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(match status {
            401 => Error::Unauthorized {
                url: self.base.clone(),
            },
            403 => Error::Forbidden(message(&body)),
            404 => Error::NotFound(what.to_owned()),
            412 => Error::Ambiguous(message(&body)),
            _ => Error::Unexpected {
                status,
                body: message(&body),
            },
        })
    }

    pub async fn json(&self, path: &str, what: &str) -> Result<Value, Error> {
        let resp = self.get(path, None, what).await?;
        resp.json().await.map_err(|e| Error::Unexpected {
            status: 200,
            body: format!("not JSON: {e}"),
        })
    }
}
