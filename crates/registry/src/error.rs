//! Everything a request can fail with, and the one place that turns it into an OCI error.

use hyper::StatusCode;
use hyper::StatusCode as St;
use pierone_protocol::ErrorCode as C;
use pierone_protocol::{ErrorCode, RepoName};
use pierone_service::Error as S;
use pierone_service::blobstore::Error as B;
use pierone_service::tagstore::Error as T;

/// Why a request failed: what the service says, or what only HTTP can get wrong.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The operation failed (see [`pierone_service::Error`]).
    #[error(transparent)]
    Service(#[from] S),
    /// Authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] pierone_auth::Error),
    /// A reference in the path that is neither a tag nor a digest.
    #[error("{1:?} is neither a tag nor a digest, so repository {0} has no such manifest")]
    ManifestReferenceUnknown(RepoName, String),
    /// A closing PUT without `?digest=`.
    #[error("the digest query parameter is required to close an upload")]
    DigestMissing,
    /// A `Content-Range` that cannot be read.
    #[error("Content-Range {0:?} is malformed; expected <start>-<end>")]
    ContentRangeInvalid(String),
    /// A `Range` outside the blob.
    #[error("requested range is outside the blob of {size} bytes")]
    RangeNotSatisfiable {
        /// The blob's size.
        size: u64,
    },
    /// The request body could not be read.
    #[error("the request body failed: {0}")]
    RequestBody(String),
    /// A query parameter that cannot be used. `value` is the value and what is wrong with it
    /// (`abc, not a number`), or `required`; it is shown as it is, never quoted.
    #[error("query parameter {name}: {value}")]
    InvalidQuery {
        /// The parameter.
        name: &'static str,
        /// The value and what is wrong with it.
        value: String,
    },
    /// A DELETE, which Pier One never does.
    #[error(
        "{0} is not supported: Pier One never deletes through the API, so that deployed artifacts stay auditable"
    )]
    DeleteRefused(&'static str),
    /// A method the endpoint does not have.
    #[error("method {0} is not supported on this endpoint")]
    MethodNotAllowed(hyper::Method),
    /// No endpoint has that path.
    #[error("no such endpoint")]
    NoRoute,
    /// An `X-SCM-Source` header that cannot be read.
    #[error("X-SCM-Source {0}")]
    ScmSourceInvalid(String),
    /// The principal has too many upload requests in flight.
    #[error("too many uploads in flight: at most {limit} per principal; retry when one finishes")]
    TooManyUploads {
        /// Upload requests one principal may stream at once.
        limit: usize,
    },
    /// A request head over the limit.
    #[error("request line and headers of {size} bytes exceed the limit of {limit} bytes")]
    HeadTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A certificate or key that cannot be used (at start-up).
    #[error("TLS: {path}: {why}")]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

impl From<pierone_protocol::Error> for RegistryError {
    fn from(e: pierone_protocol::Error) -> Self {
        RegistryError::Service(S::Protocol(e))
    }
}

impl From<T> for RegistryError {
    fn from(e: T) -> Self {
        RegistryError::Service(S::Tags(e))
    }
}

/// Extra data some errors put in response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorHeaders {
    /// Nothing extra.
    None,
    /// `Range: 0-<received-1>` so the client can resume.
    UploadRange(u64),
    /// `Content-Range: bytes */<size>` for an unsatisfiable read.
    BlobSize(u64),
    /// `WWW-Authenticate: Basic realm=...`, so docker, podman and skopeo send credentials.
    Challenge,
    /// `Retry-After: <seconds>`.
    RetryAfter(u64),
}

/// How the service's errors are answered. Exhaustive: a new service error must decide here.
fn service_status(e: &S) -> (StatusCode, ErrorCode) {
    use pierone_protocol::Error as P;
    match e {
        S::Protocol(e) => match e {
            P::InvalidName { .. } => (St::BAD_REQUEST, C::NameInvalid),
            P::InvalidTag(_) => (St::BAD_REQUEST, C::ManifestInvalid),
            P::InvalidDigest(_) | P::UnsupportedDigestAlgorithm(_) => {
                (St::BAD_REQUEST, C::DigestInvalid)
            }
            P::InvalidUploadId(_) => (St::NOT_FOUND, C::BlobUploadUnknown),
            P::CorruptHashState => (St::INTERNAL_SERVER_ERROR, C::Unsupported),
            P::ManifestInvalid(_) => (St::BAD_REQUEST, C::ManifestInvalid),
            P::ManifestTooLarge { .. } => (St::PAYLOAD_TOO_LARGE, C::SizeInvalid),
            P::AuditChainBroken { .. } | P::AuditCheckpointInvalid(_) | P::AuditKeyInvalid(_) => {
                (St::INTERNAL_SERVER_ERROR, C::Unsupported)
            }
        },
        S::Blobs(e) => match e {
            B::Io { .. } | B::Backend(_) => (St::INTERNAL_SERVER_ERROR, C::Unsupported),
            B::Throttled(_) => (St::SERVICE_UNAVAILABLE, C::TooManyRequests),
            B::Unavailable(_) => (St::SERVICE_UNAVAILABLE, C::Unsupported),
            B::Body(_) => (St::BAD_REQUEST, C::BlobUploadInvalid),
            // Parts that are not stored as recorded: the upload can never be finished, and
            // the client must start again.
            B::UploadUnknown(_) | B::PartUnknown { .. } | B::PartSizeMismatch { .. } => {
                (St::NOT_FOUND, C::BlobUploadUnknown)
            }
            B::UploadBusy(_) => (St::RANGE_NOT_SATISFIABLE, C::BlobUploadInvalid),
            B::RangeNotSatisfiable { .. } => (St::RANGE_NOT_SATISFIABLE, C::SizeInvalid),
        },
        S::Tags(e) => match e {
            T::TagImmutable { .. } | T::LatestNotAllowed => (St::CONFLICT, C::Denied),
            T::UploadUnknown(_) => (St::NOT_FOUND, C::BlobUploadUnknown),
            T::BlobCollected(_) => (St::BAD_REQUEST, C::ManifestBlobUnknown),
            // Only when a write stalled for minutes: the client retries.
            T::StaleCheck { .. } => (St::SERVICE_UNAVAILABLE, C::Unsupported),
            T::UploadOffsetConflict { .. } => (St::RANGE_NOT_SATISFIABLE, C::BlobUploadInvalid),
            T::Unavailable(_) => (St::SERVICE_UNAVAILABLE, C::Unsupported),
            // Only when opening the store at start-up, never an answer; mapped for
            // completeness.
            T::UnsupportedScheme(_) => (St::INTERNAL_SERVER_ERROR, C::Unsupported),
            T::Query(_) | T::Corrupt(_) => (St::INTERNAL_SERVER_ERROR, C::Unsupported),
        },
        S::BlobUnknown(_) => (St::NOT_FOUND, C::BlobUnknown),
        // Out of service like a missing blob; the message says why.
        S::BlobQuarantined { .. } => (St::NOT_FOUND, C::BlobUnknown),
        S::ManifestUnknown(..) => (St::NOT_FOUND, C::ManifestUnknown),
        S::NameUnknown(_) => (St::NOT_FOUND, C::NameUnknown),
        S::UploadUnknown => (St::NOT_FOUND, C::BlobUploadUnknown),
        S::ManifestBlobUnknown(_) | S::ManifestChildUnknown(_) => {
            (St::BAD_REQUEST, C::ManifestBlobUnknown)
        }
        S::DescriptorSizeMismatch { .. } => (St::BAD_REQUEST, C::ManifestInvalid),
        S::DigestMismatch { .. } => (St::BAD_REQUEST, C::DigestInvalid),
        S::ChunkOutOfOrder { .. } => (St::RANGE_NOT_SATISFIABLE, C::BlobUploadInvalid),
        // The chunk does not fit the range it claims: like an out-of-order chunk, nothing of
        // it was recorded.
        S::ChunkLengthMismatch { .. } => (St::RANGE_NOT_SATISFIABLE, C::BlobUploadInvalid),
        S::BodyTooLarge { .. } => (St::PAYLOAD_TOO_LARGE, C::SizeInvalid),
        S::InvalidQuery { .. } => (St::BAD_REQUEST, C::Unsupported),
        S::TeamUnknown(_) => (St::NOT_FOUND, C::NameUnknown),
        S::ImageUnknown(_) | S::ScmSourceUnknown => (St::NOT_FOUND, C::ManifestUnknown),
        // Not MANIFEST_UNKNOWN: several images were found. UNSUPPORTED is the code for "an
        // invalid set of parameters", which a prefix that selects no single image is. The
        // status stays 412, which the CLI and the API description promise for this case.
        S::ImageAmbiguous { .. } => (St::PRECONDITION_FAILED, C::Unsupported),
        S::ImagePrefixEmpty => (St::BAD_REQUEST, C::Unsupported),
        S::ScanBusy => (St::SERVICE_UNAVAILABLE, C::TooManyRequests),
        S::CheckpointUnknown => (St::NOT_FOUND, C::NameUnknown),
        // The client may push, but not this manifest under this tag until it is signed.
        S::SignatureRequired(_) => (St::FORBIDDEN, C::Denied),
        S::SignatureCheck(_) => (St::INTERNAL_SERVER_ERROR, C::Unsupported),
    }
}

impl RegistryError {
    /// The HTTP status and OCI error code. Exhaustive by design: a new error variant must
    /// decide here how clients see it.
    ///
    /// The spec has no code for server faults; 5xx answers use `UNSUPPORTED` (the operation
    /// could not be done now), with 503 and `Retry-After` when a backend or identity service
    /// is unavailable, so that every body still carries one of the fourteen codes.
    /// `TOOMANYREQUESTS` is kept for throttling (of this client, or of us by S3): a client
    /// reading it should slow down, which does not help when a service is down.
    pub fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            RegistryError::Service(e) => service_status(e),
            RegistryError::Auth(e) => match e {
                pierone_auth::Error::Unauthorized(_) => (St::UNAUTHORIZED, C::Unauthorized),
                pierone_auth::Error::Denied { .. } => (St::FORBIDDEN, C::Denied),
                // Not UNAUTHORIZED: the credentials may be fine, and clients would ask the user
                // for new ones.
                pierone_auth::Error::Unavailable { .. } => {
                    (St::SERVICE_UNAVAILABLE, C::Unsupported)
                }
                pierone_auth::Error::Config(_) => (St::INTERNAL_SERVER_ERROR, C::Unsupported),
            },
            RegistryError::ManifestReferenceUnknown(..) => (St::NOT_FOUND, C::ManifestUnknown),
            RegistryError::DigestMissing => (St::BAD_REQUEST, C::DigestInvalid),
            RegistryError::ContentRangeInvalid(_) => {
                (St::RANGE_NOT_SATISFIABLE, C::BlobUploadInvalid)
            }
            RegistryError::RangeNotSatisfiable { .. } => {
                (St::RANGE_NOT_SATISFIABLE, C::SizeInvalid)
            }
            RegistryError::RequestBody(_) => (St::BAD_REQUEST, C::BlobUploadInvalid),
            RegistryError::InvalidQuery { .. } => (St::BAD_REQUEST, C::Unsupported),
            RegistryError::DeleteRefused(_) => (St::METHOD_NOT_ALLOWED, C::Unsupported),
            RegistryError::MethodNotAllowed(_) => (St::METHOD_NOT_ALLOWED, C::Unsupported),
            RegistryError::NoRoute => (St::NOT_FOUND, C::NameUnknown),
            RegistryError::ScmSourceInvalid(_) => (St::BAD_REQUEST, C::ManifestInvalid),
            RegistryError::TooManyUploads { .. } => (St::TOO_MANY_REQUESTS, C::TooManyRequests),
            // Only at start-up, never an answer; mapped for completeness.
            RegistryError::Tls { .. } => (St::INTERNAL_SERVER_ERROR, C::Unsupported),
            RegistryError::HeadTooLarge { .. } => {
                (St::REQUEST_HEADER_FIELDS_TOO_LARGE, C::SizeInvalid)
            }
        }
    }

    /// Structured detail for the error envelope, where there is something a client can use.
    pub fn detail(&self) -> Option<serde_json::Value> {
        match self {
            RegistryError::Service(S::Tags(T::TagImmutable {
                repo,
                tag,
                existing,
                pushed,
            })) => Some(serde_json::json!({
                "repository": repo.as_str(),
                "tag": tag.as_str(),
                "digest": existing.as_str(),
                "pushed": pushed.as_str(),
            })),
            RegistryError::Auth(pierone_auth::Error::Denied { team, uid, .. }) => {
                Some(serde_json::json!({ "team": team, "uid": uid }))
            }
            RegistryError::Service(S::ImageAmbiguous { candidates, .. }) => {
                Some(serde_json::json!({
                    "candidates": candidates
                        .iter()
                        .map(|(digest, tags)| serde_json::json!({"digest": digest, "tags": tags}))
                        .collect::<Vec<_>>(),
                }))
            }
            RegistryError::Service(S::DigestMismatch { expected, actual }) => {
                Some(serde_json::json!({
                    "expected": expected.as_str(),
                    "actual": actual.as_str(),
                }))
            }
            RegistryError::Service(S::BlobQuarantined { digest, at, by }) => {
                Some(serde_json::json!({
                    "digest": digest.as_str(),
                    "quarantined_at": at,
                    "quarantined_by": by,
                }))
            }
            RegistryError::Service(S::SignatureRequired(r)) => Some(serde_json::json!({
                "repository": r.repo.as_str(),
                "tag": r.tag.as_ref().map(|t| t.as_str()),
                "digest": r.digest.as_str(),
                "accepted_keys": r.accepted_keys,
            })),
            RegistryError::Service(
                S::ManifestBlobUnknown(d)
                | S::ManifestChildUnknown(d)
                | S::Tags(T::BlobCollected(d)),
            ) => Some(serde_json::json!({ "digest": d.as_str() })),
            _ => None,
        }
    }

    /// The headers the error's answer carries besides the envelope's.
    pub fn headers(&self) -> ErrorHeaders {
        match self {
            RegistryError::Auth(pierone_auth::Error::Unauthorized(_)) => ErrorHeaders::Challenge,
            RegistryError::TooManyUploads { .. } => ErrorHeaders::RetryAfter(1),
            RegistryError::Service(S::ScanBusy) => ErrorHeaders::RetryAfter(5),
            // Identity services answer again within seconds or not for a while; a client that
            // retries at once only adds load to one that is struggling.
            RegistryError::Auth(pierone_auth::Error::Unavailable { .. }) => {
                ErrorHeaders::RetryAfter(5)
            }
            RegistryError::Service(S::ChunkOutOfOrder { received, .. }) => {
                ErrorHeaders::UploadRange(*received)
            }
            RegistryError::Service(S::Tags(T::UploadOffsetConflict { actual, .. })) => {
                ErrorHeaders::UploadRange(*actual)
            }
            RegistryError::RangeNotSatisfiable { size }
            | RegistryError::Service(S::Blobs(B::RangeNotSatisfiable { size, .. })) => {
                ErrorHeaders::BlobSize(*size)
            }
            _ => ErrorHeaders::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_errors_name_the_parameter_without_quotes() {
        let e = RegistryError::InvalidQuery {
            name: "n",
            value: "abc, not a number".into(),
        };
        assert_eq!(e.to_string(), "query parameter n: abc, not a number");
        assert_eq!(
            e.status_and_code(),
            (StatusCode::BAD_REQUEST, ErrorCode::Unsupported)
        );
    }

    #[test]
    fn an_ambiguous_prefix_is_not_an_unknown_manifest() {
        let e = RegistryError::Service(S::ImageAmbiguous {
            prefix: "2cf2".into(),
            candidates: vec![
                ("sha256:2cf2aa".into(), vec!["t/a:1".into(), "t/b:2".into()]),
                ("sha256:2cf2bb".into(), vec!["t/a:3".into()]),
            ],
        });
        assert_eq!(
            e.to_string(),
            "2cf2 matches 2 different images: sha256:2cf2aa (t/a:1, t/b:2), sha256:2cf2bb (t/a:3); give a longer prefix"
        );
        assert_eq!(
            e.detail(),
            Some(serde_json::json!({"candidates": [
                {"digest": "sha256:2cf2aa", "tags": ["t/a:1", "t/b:2"]},
                {"digest": "sha256:2cf2bb", "tags": ["t/a:3"]},
            ]}))
        );
        assert_eq!(
            e.status_and_code(),
            (StatusCode::PRECONDITION_FAILED, ErrorCode::Unsupported)
        );
    }

    #[test]
    fn an_unsigned_protected_tag_is_denied_naming_tag_digest_and_keys() {
        let digest = pierone_protocol::Digest::sha256_of(b"image");
        let e = RegistryError::Service(S::SignatureRequired(Box::new(
            pierone_service::trust::Refusal {
                repo: "red/app".parse().unwrap(),
                tag: Some("v1.0".parse().unwrap()),
                digest: digest.clone(),
                accepted_keys: vec!["red-ci".into(), "red-release".into()],
                candidates: Vec::new(),
                not_examined: 0,
            },
        )));
        assert_eq!(
            e.status_and_code(),
            (StatusCode::FORBIDDEN, ErrorCode::Denied)
        );
        let message = e.to_string();
        for part in ["v1.0", "red/app", digest.as_str(), "red-ci, red-release"] {
            assert!(message.contains(part), "{part} not in {message}");
        }
        assert_eq!(
            e.detail(),
            Some(serde_json::json!({
                "repository": "red/app",
                "tag": "v1.0",
                "digest": digest.as_str(),
                "accepted_keys": ["red-ci", "red-release"],
            }))
        );
    }

    #[test]
    fn an_identity_service_down_is_unavailable_not_throttling() {
        let e = RegistryError::Auth(pierone_auth::Error::Unavailable {
            service: "token-info service",
            why: "it answered 502 Bad Gateway".into(),
        });
        assert_eq!(
            e.to_string(),
            "the token-info service is unavailable: it answered 502 Bad Gateway; retry later"
        );
        assert_eq!(
            e.status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unsupported)
        );
        assert_eq!(e.headers(), ErrorHeaders::RetryAfter(5));
        let throttled = RegistryError::TooManyUploads { limit: 4 };
        assert_eq!(throttled.status_and_code().1, ErrorCode::TooManyRequests);
    }
}
