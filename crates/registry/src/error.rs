//! Everything a request can fail with, and the one place that turns it into an OCI error.

use hyper::StatusCode;
use pierone_protocol::{Digest, ErrorCode, Reference, RepoName};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Protocol(pierone_protocol::Error),
    #[error(transparent)]
    Blobs(#[from] pierone_blobstore::Error),
    #[error(transparent)]
    Tags(#[from] pierone_tagstore::Error),
    #[error(transparent)]
    Auth(#[from] pierone_auth::Error),
    #[error("blob {0} is not stored in this registry")]
    BlobUnknown(Digest),
    #[error(
        "blob {digest} was quarantined at {at} by {by}: its stored bytes did not match its digest; push the correct bytes again to restore it"
    )]
    BlobQuarantined {
        digest: Digest,
        /// RFC 3339.
        at: String,
        by: String,
    },
    #[error("manifest {1} is not in repository {0}")]
    ManifestUnknown(RepoName, Reference),
    #[error("{1:?} is neither a tag nor a digest, so repository {0} has no such manifest")]
    ManifestReferenceUnknown(RepoName, String),
    #[error("repository {0} is not known")]
    NameUnknown(RepoName),
    #[error("blob upload is unknown, finished or expired; start a new one")]
    UploadUnknown,
    #[error("the manifest references {0}, which is not in this registry (push it first)")]
    ManifestBlobUnknown(Digest),
    #[error("the manifest references {0}, which is not a manifest in this repository")]
    ManifestChildUnknown(Digest),
    #[error("the manifest says {digest} has {declared} bytes, but it has {actual}")]
    DescriptorSizeMismatch {
        digest: Digest,
        declared: u64,
        actual: u64,
    },
    #[error("content hashes to {actual}, not to the digest given, {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("the digest query parameter is required to close an upload")]
    DigestMissing,
    #[error(
        "chunk starts at byte {start} but the upload has {received} bytes; send chunks in order"
    )]
    ChunkOutOfOrder { start: u64, received: u64 },
    #[error("Content-Range {0:?} is malformed; expected <start>-<end>")]
    ContentRangeInvalid(String),
    #[error("the chunk's Content-Range names {declared} bytes, but its body has {actual}")]
    ChunkLengthMismatch { declared: u64, actual: u64 },
    #[error("requested range is outside the blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("body of {size} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge { size: u64, limit: u64 },
    #[error("the request body failed: {0}")]
    RequestBody(String),
    /// A query parameter that cannot be used. `value` is the value and what is wrong with it
    /// (`abc, not a number`), or `required`; it is shown as it is, never quoted.
    #[error("query parameter {name}: {value}")]
    InvalidQuery { name: &'static str, value: String },
    #[error(
        "{0} is not supported: Pier One never deletes through the API, so that deployed artifacts stay auditable"
    )]
    DeleteRefused(&'static str),
    #[error("method {0} is not supported on this endpoint")]
    MethodNotAllowed(hyper::Method),
    #[error("no such endpoint")]
    NoRoute,
    #[error("team {0} has no artifacts")]
    TeamUnknown(String),
    #[error("no image matches {0}")]
    ImageUnknown(String),
    #[error("{prefix} matches {} different images: {}; give a longer prefix", candidates.len(), candidate_list(candidates))]
    ImageAmbiguous {
        prefix: String,
        /// Each image's digest with the `team/artifact:tag`s that carry it.
        candidates: Vec<(String, Vec<String>)>,
    },
    #[error("an empty prefix matches every image; give a digest or a prefix of one")]
    ImagePrefixEmpty,
    #[error("no scm-source is recorded for this tag, and none was found in its layers")]
    ScmSourceUnknown,
    #[error("X-SCM-Source {0}")]
    ScmSourceInvalid(String),
    #[error("too many uploads in flight: at most {limit} per principal; retry when one finishes")]
    TooManyUploads { limit: usize },
    #[error(
        "too many scm-source scans are running; retry in a few seconds (scans read whole image layers, so only a few run at once)"
    )]
    ScanBusy,
    #[error("no audit checkpoint has been signed (the server needs --audit-signing-key)")]
    CheckpointUnknown,
    #[error("request line and headers of {size} bytes exceed the limit of {limit} bytes")]
    HeadTooLarge { size: usize, limit: usize },
    #[error("TLS: {path}: {why}")]
    Tls {
        path: std::path::PathBuf,
        why: String,
    },
}

/// The images of an ambiguous prefix, as git lists the candidates of an ambiguous object
/// name: a short prefix can match thousands, so the message is cut after ten (the error's
/// `detail` has them all) and each image shows at most three of its tags.
fn candidate_list(candidates: &[(String, Vec<String>)]) -> String {
    const IMAGES: usize = 10;
    const TAGS: usize = 3;
    let mut shown: Vec<String> = candidates
        .iter()
        .take(IMAGES)
        .map(|(digest, tags)| {
            let mut named = tags
                .iter()
                .take(TAGS)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if tags.len() > TAGS {
                named.push_str(&format!(" and {} more", tags.len() - TAGS));
            }
            format!("{digest} ({named})")
        })
        .collect();
    if candidates.len() > IMAGES {
        shown.push(format!("and {} more", candidates.len() - IMAGES));
    }
    shown.join(", ")
}

impl From<pierone_protocol::Error> for RegistryError {
    fn from(e: pierone_protocol::Error) -> Self {
        RegistryError::Protocol(e)
    }
}

/// Extra data some errors put in response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorHeaders {
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
        use pierone_blobstore::Error as B;
        use pierone_protocol::Error as P;
        use pierone_tagstore::Error as T;
        match self {
            RegistryError::Protocol(e) => match e {
                P::InvalidName { .. } => (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
                P::InvalidTag(_) => (StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid),
                P::InvalidDigest(_) | P::UnsupportedDigestAlgorithm(_) => {
                    (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid)
                }
                P::InvalidUploadId(_) => (StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown),
                P::CorruptHashState => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unsupported),
                P::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid),
                P::ManifestTooLarge { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SizeInvalid)
                }
                P::AuditChainBroken { .. }
                | P::AuditCheckpointInvalid(_)
                | P::AuditKeyInvalid(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unsupported)
                }
            },
            RegistryError::Blobs(e) => match e {
                B::Io { .. } | B::Backend(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unsupported)
                }
                B::Throttled(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::TooManyRequests),
                B::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unsupported),
                B::Body(_) => (StatusCode::BAD_REQUEST, ErrorCode::BlobUploadInvalid),
                // Parts that are not stored as recorded: the upload can never be finished, and
                // the client must start again.
                B::UploadUnknown(_) | B::PartUnknown { .. } | B::PartSizeMismatch { .. } => {
                    (StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown)
                }
                B::UploadBusy(_) => (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    ErrorCode::BlobUploadInvalid,
                ),
                B::RangeNotSatisfiable { .. } => {
                    (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::SizeInvalid)
                }
            },
            RegistryError::Tags(e) => match e {
                T::TagImmutable { .. } | T::LatestNotAllowed => {
                    (StatusCode::CONFLICT, ErrorCode::Denied)
                }
                T::UploadUnknown(_) => (StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown),
                T::BlobCollected(_) => (StatusCode::BAD_REQUEST, ErrorCode::ManifestBlobUnknown),
                // Only when a write stalled for minutes: the client retries.
                T::StaleCheck { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unsupported),
                T::UploadOffsetConflict { .. } => (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    ErrorCode::BlobUploadInvalid,
                ),
                T::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unsupported),
                // Only when opening the store at start-up, never an answer; mapped for
                // completeness.
                T::UnsupportedScheme(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unsupported)
                }
                T::Query(_) | T::Corrupt(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unsupported)
                }
            },
            RegistryError::Auth(e) => match e {
                pierone_auth::Error::Unauthorized(_) => {
                    (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
                }
                pierone_auth::Error::Denied { .. } => (StatusCode::FORBIDDEN, ErrorCode::Denied),
                // Not UNAUTHORIZED: the credentials may be fine, and clients would ask the user
                // for new ones.
                pierone_auth::Error::Unavailable { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unsupported)
                }
                pierone_auth::Error::Config(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unsupported)
                }
            },
            RegistryError::BlobUnknown(_) => (StatusCode::NOT_FOUND, ErrorCode::BlobUnknown),
            // Out of service like a missing blob; the message says why.
            RegistryError::BlobQuarantined { .. } => {
                (StatusCode::NOT_FOUND, ErrorCode::BlobUnknown)
            }
            RegistryError::ManifestUnknown(..) | RegistryError::ManifestReferenceUnknown(..) => {
                (StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown)
            }
            RegistryError::NameUnknown(_) => (StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            RegistryError::UploadUnknown => (StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown),
            RegistryError::ManifestBlobUnknown(_) | RegistryError::ManifestChildUnknown(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::ManifestBlobUnknown)
            }
            RegistryError::DescriptorSizeMismatch { .. } => {
                (StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid)
            }
            RegistryError::DigestMismatch { .. } | RegistryError::DigestMissing => {
                (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid)
            }
            RegistryError::ChunkOutOfOrder { .. } => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUploadInvalid,
            ),
            RegistryError::ContentRangeInvalid(_) => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUploadInvalid,
            ),
            // The chunk does not fit the range it claims: like an out-of-order chunk, nothing
            // of it was recorded.
            RegistryError::ChunkLengthMismatch { .. } => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUploadInvalid,
            ),
            RegistryError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::SizeInvalid)
            }
            RegistryError::BodyTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SizeInvalid)
            }
            RegistryError::RequestBody(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::BlobUploadInvalid)
            }
            RegistryError::InvalidQuery { .. } => (StatusCode::BAD_REQUEST, ErrorCode::Unsupported),
            RegistryError::DeleteRefused(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported)
            }
            RegistryError::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported)
            }
            RegistryError::NoRoute => (StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            RegistryError::TeamUnknown(_) => (StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            RegistryError::ImageUnknown(_) | RegistryError::ScmSourceUnknown => {
                (StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown)
            }
            // Not MANIFEST_UNKNOWN: several images were found. UNSUPPORTED is the code for "an
            // invalid set of parameters", which a prefix that selects no single image is. The
            // status stays 412, which the CLI and the API description promise for this case.
            RegistryError::ImageAmbiguous { .. } => {
                (StatusCode::PRECONDITION_FAILED, ErrorCode::Unsupported)
            }
            RegistryError::ImagePrefixEmpty => (StatusCode::BAD_REQUEST, ErrorCode::Unsupported),
            RegistryError::ScmSourceInvalid(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid)
            }
            RegistryError::TooManyUploads { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
            }
            RegistryError::ScanBusy => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::TooManyRequests)
            }
            RegistryError::CheckpointUnknown => (StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            // Only at start-up, never an answer; mapped for completeness.
            RegistryError::Tls { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unsupported)
            }
            RegistryError::HeadTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                ErrorCode::SizeInvalid,
            ),
        }
    }

    /// Structured detail for the error envelope, where there is something a client can use.
    pub fn detail(&self) -> Option<serde_json::Value> {
        match self {
            RegistryError::Tags(pierone_tagstore::Error::TagImmutable {
                repo,
                tag,
                existing,
                pushed,
            }) => Some(serde_json::json!({
                "repository": repo.as_str(),
                "tag": tag.as_str(),
                "digest": existing.as_str(),
                "pushed": pushed.as_str(),
            })),
            RegistryError::Auth(pierone_auth::Error::Denied { team, uid, .. }) => {
                Some(serde_json::json!({ "team": team, "uid": uid }))
            }
            RegistryError::ImageAmbiguous { candidates, .. } => Some(serde_json::json!({
                "candidates": candidates
                    .iter()
                    .map(|(digest, tags)| serde_json::json!({"digest": digest, "tags": tags}))
                    .collect::<Vec<_>>(),
            })),
            RegistryError::DigestMismatch { expected, actual } => Some(serde_json::json!({
                "expected": expected.as_str(),
                "actual": actual.as_str(),
            })),
            RegistryError::BlobQuarantined { digest, at, by } => Some(serde_json::json!({
                "digest": digest.as_str(),
                "quarantined_at": at,
                "quarantined_by": by,
            })),
            RegistryError::ManifestBlobUnknown(d)
            | RegistryError::ManifestChildUnknown(d)
            | RegistryError::Tags(pierone_tagstore::Error::BlobCollected(d)) => {
                Some(serde_json::json!({ "digest": d.as_str() }))
            }
            _ => None,
        }
    }

    pub fn headers(&self) -> ErrorHeaders {
        match self {
            RegistryError::Auth(pierone_auth::Error::Unauthorized(_)) => ErrorHeaders::Challenge,
            RegistryError::TooManyUploads { .. } => ErrorHeaders::RetryAfter(1),
            RegistryError::ScanBusy => ErrorHeaders::RetryAfter(5),
            // Identity services answer again within seconds or not for a while; a client that
            // retries at once only adds load to one that is struggling.
            RegistryError::Auth(pierone_auth::Error::Unavailable { .. }) => {
                ErrorHeaders::RetryAfter(5)
            }
            RegistryError::ChunkOutOfOrder { received, .. } => ErrorHeaders::UploadRange(*received),
            RegistryError::Tags(pierone_tagstore::Error::UploadOffsetConflict {
                actual, ..
            }) => ErrorHeaders::UploadRange(*actual),
            RegistryError::RangeNotSatisfiable { size }
            | RegistryError::Blobs(pierone_blobstore::Error::RangeNotSatisfiable {
                size, ..
            }) => ErrorHeaders::BlobSize(*size),
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
        let e = RegistryError::ImageAmbiguous {
            prefix: "2cf2".into(),
            candidates: vec![
                ("sha256:2cf2aa".into(), vec!["t/a:1".into(), "t/b:2".into()]),
                ("sha256:2cf2bb".into(), vec!["t/a:3".into()]),
            ],
        };
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
