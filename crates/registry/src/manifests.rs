//! The manifest endpoints: pull by tag or digest, push (with `X-SCM-Source`), and referrers.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use hyper::{Request, Response, StatusCode};
use pierone_auth::Principal;
use pierone_protocol::{Digest, MAX_MANIFEST_SIZE, Reference, RepoName, media_types};
use pierone_service::ScmSource;

use crate::blobs::{content_length, query};
use crate::error::RegistryError;
use crate::response::{self, Resp, header_value};
use crate::{Registry, RequestBody, caller};

/// The `X-SCM-Source` header (URL-encoded JSON), which only trusted pushers may set: it is
/// what auditors read to learn where an image came from.
fn scm_source<B>(
    repo: &RepoName,
    principal: &Principal,
    req: &Request<B>,
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

impl Registry {
    pub(crate) async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        with_body: bool,
    ) -> Result<Resp, RegistryError> {
        let m = self.service.get_manifest(repo, reference).await?;
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
        h.insert("Docker-Content-Digest", header_value(m.digest.as_str()));
        h.insert("ETag", header_value(&format!("\"{}\"", m.digest)));
        Ok(r)
    }

    pub(crate) async fn put_manifest<B: RequestBody>(
        &self,
        repo: &RepoName,
        reference: &Reference,
        principal: &Principal,
        req: Request<B>,
    ) -> Result<Resp, RegistryError> {
        // Refuse a forbidden tag, or a source the pusher may not declare, before reading a
        // byte.
        let scm_source = scm_source(repo, principal, &req)?;
        self.service.check_reference(reference)?;
        let too_large = |size| -> RegistryError {
            pierone_protocol::Error::ManifestTooLarge {
                size,
                limit: MAX_MANIFEST_SIZE,
            }
            .into()
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
        let pushed = self
            .service
            .put_manifest(
                repo,
                reference,
                &caller(principal),
                content_type.as_deref(),
                body,
                scm_source,
            )
            .await?;
        let digest = pushed.digest;
        let mut r = Response::new(response::empty());
        *r.status_mut() = StatusCode::CREATED;
        let h = r.headers_mut();
        h.insert(
            LOCATION,
            header_value(&format!("/v2/{repo}/manifests/{digest}")),
        );
        h.insert("Docker-Content-Digest", header_value(digest.as_str()));
        h.insert(CONTENT_LENGTH, 0.into());
        if let Some(s) = pushed.subject {
            h.insert("OCI-Subject", header_value(s.as_str()));
        }
        Ok(r)
    }

    pub(crate) async fn referrers<B>(
        &self,
        repo: &RepoName,
        subject: &Digest,
        req: &Request<B>,
    ) -> Result<Resp, RegistryError> {
        let q = query(req);
        let filter = q.get("artifactType");
        let index = self
            .service
            .referrers(repo, subject, filter.map(String::as_str))
            .await?;
        let mut r = response::json(StatusCode::OK, media_types::OCI_INDEX, &index);
        if filter.is_some() {
            r.headers_mut()
                .insert("OCI-Filters-Applied", header_value("artifactType"));
        }
        Ok(r)
    }
}
