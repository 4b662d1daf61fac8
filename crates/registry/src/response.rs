//! Building responses: bodies, the error envelope and the headers every answer carries.

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use hyper::header::{
    CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderValue, RANGE, WWW_AUTHENTICATE,
};
use hyper::{Response, StatusCode};
use pierone_protocol::error_body;
use pierone_service::ByteStream;

use crate::error::{ErrorHeaders, RegistryError};

/// The body of every response: bytes in memory or streamed from the blob store.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
pub type Resp = Response<Body>;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn stream(s: ByteStream) -> Body {
    StreamBody::new(s.map_ok(Frame::data)).boxed_unsync()
}

/// A response with a JSON body.
pub fn json(status: StatusCode, content_type: &'static str, value: &impl serde::Serialize) -> Resp {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The spec's JSON error envelope for `err`, with its status and headers.
pub fn error(err: &RegistryError, request_id: &str) -> Resp {
    let (status, code) = err.status_and_code();
    let body = error_body(code, &err.to_string(), err.detail(), Some(request_id));
    let len = body.len();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    match err.headers() {
        ErrorHeaders::None => {}
        ErrorHeaders::UploadRange(received) => {
            h.insert(RANGE, range_header(received));
        }
        ErrorHeaders::Challenge => {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Pier One Docker Registry\""),
            );
        }
        ErrorHeaders::RetryAfter(secs) => {
            h.insert(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        ErrorHeaders::BlobSize(size) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                h.insert(CONTENT_RANGE, v);
            }
        }
    }
    r
}

/// `Range: 0-<last byte>` for an upload holding `received` bytes. Distribution answers
/// `0-0` for an empty upload and clients expect that, so we do too.
pub fn range_header(received: u64) -> HeaderValue {
    header_value(&format!("0-{}", received.saturating_sub(1)))
}

pub fn header_value(s: &str) -> HeaderValue {
    // Every value we build is ASCII (paths of validated names, digests, numbers).
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}
