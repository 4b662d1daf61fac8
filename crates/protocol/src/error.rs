//! The distribution-spec error codes and their JSON envelope, and this crate's parse errors.

use serde::Serialize;

/// Why a protocol value could not be parsed or validated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A repository name that is not `<team>/<artifact>` in the allowed characters.
    #[error("invalid repository name {name:?}: {why}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// A tag outside the spec's grammar.
    #[error("invalid tag {0:?}: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    InvalidTag(String),
    /// A digest that is not `<algorithm>:<hex>` of the algorithm's length.
    #[error("invalid digest {0:?}: expected sha256:<64 hex> or sha512:<128 hex>")]
    InvalidDigest(String),
    /// A well-formed digest of an algorithm other than sha256 and sha512.
    #[error("unsupported digest algorithm {0:?}: only sha256 and sha512 can be verified")]
    UnsupportedDigestAlgorithm(String),
    /// An upload id outside the characters and length we issue.
    #[error("invalid upload id {0:?}")]
    InvalidUploadId(String),
    /// A serialised [`Hasher`](crate::Hasher) that does not restore.
    #[error("saved hash state is corrupt")]
    CorruptHashState,
    /// A manifest that does not parse or breaks a rule of its media type.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// A manifest larger than [`MAX_MANIFEST_SIZE`](crate::MAX_MANIFEST_SIZE).
    #[error("manifest of {size} bytes exceeds the limit of {limit} bytes")]
    ManifestTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An audit log entry that does not extend the chain (wrong number, link or hash).
    #[error("audit log entry {seq}: {why}")]
    AuditChainBroken {
        /// The entry's number.
        seq: u64,
        /// What is wrong with it.
        why: String,
    },
    /// A checkpoint whose signature, size or root does not verify.
    #[error("audit checkpoint does not verify: {0}")]
    AuditCheckpointInvalid(String),
    /// A signing or verifying key that cannot be read.
    #[error("audit signing key: {0}")]
    AuditKeyInvalid(String),
}

/// The fourteen error codes of the OCI distribution-spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `BLOB_UNKNOWN`: blob unknown to registry.
    BlobUnknown,
    /// `BLOB_UPLOAD_INVALID`: blob upload invalid.
    BlobUploadInvalid,
    /// `BLOB_UPLOAD_UNKNOWN`: blob upload unknown to registry.
    BlobUploadUnknown,
    /// `DIGEST_INVALID`: provided digest did not match uploaded content.
    DigestInvalid,
    /// `MANIFEST_BLOB_UNKNOWN`: manifest references a manifest or blob unknown to registry.
    ManifestBlobUnknown,
    /// `MANIFEST_INVALID`: manifest invalid.
    ManifestInvalid,
    /// `MANIFEST_UNKNOWN`: manifest unknown to registry.
    ManifestUnknown,
    /// `NAME_INVALID`: invalid repository name.
    NameInvalid,
    /// `NAME_UNKNOWN`: repository name not known to registry.
    NameUnknown,
    /// `SIZE_INVALID`: provided length did not match content length.
    SizeInvalid,
    /// `UNAUTHORIZED`: authentication required.
    Unauthorized,
    /// `DENIED`: requested access to the resource is denied.
    Denied,
    /// `UNSUPPORTED`: the operation is unsupported.
    Unsupported,
    /// `TOOMANYREQUESTS`: too many requests.
    TooManyRequests,
}

impl ErrorCode {
    /// Every code, in the spec's order.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::DigestInvalid,
        ErrorCode::ManifestBlobUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::ManifestUnknown,
        ErrorCode::NameInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::SizeInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unsupported,
        ErrorCode::TooManyRequests,
    ];

    /// The code as it appears in the JSON envelope (`BLOB_UNKNOWN`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
        }
    }
}

/// One entry of the error envelope.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorInfo {
    /// One of the fourteen codes ([`ErrorCode::as_str`]).
    pub code: &'static str,
    /// What went wrong, for a human.
    pub message: String,
    /// Anything more, in JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// The spec's JSON envelope: `{"errors":[{"code":..,"message":..,"detail":..}]}`.
pub fn error_body(
    code: ErrorCode,
    message: &str,
    detail: Option<serde_json::Value>,
    request_id: Option<&str>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a> {
        errors: [ErrorInfo; 1],
        // Not in the spec; clients ignore unknown members, and operators find the request's
        // log line by it.
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
    }
    let env = Envelope {
        errors: [ErrorInfo {
            code: code.as_str(),
            message: message.to_owned(),
            detail,
        }],
        request_id,
    };
    // Serialising a struct of strings and an optional JSON value cannot fail.
    serde_json::to_vec(&env).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_upper_case() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()));
            assert!(
                c.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_')
            );
        }
    }

    #[test]
    fn envelope_shape() {
        let body = error_body(
            ErrorCode::Denied,
            "no",
            Some(serde_json::json!({"tag": "1.0"})),
            Some("req-1"),
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "DENIED");
        assert_eq!(v["errors"][0]["message"], "no");
        assert_eq!(v["errors"][0]["detail"]["tag"], "1.0");
        assert_eq!(v["request_id"], "req-1");
    }
}
