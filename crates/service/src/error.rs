//! Everything an operation of the service can fail with, in the service's own words: what
//! happened, never how a transport should answer it.

use pierone_protocol::{Digest, Reference, RepoName};

/// Why an operation of the [`Service`](crate::Service) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Client input that the protocol rules refuse (a name, tag, digest or manifest).
    #[error(transparent)]
    Protocol(#[from] pierone_protocol::Error),
    /// The blob store failed or refused.
    #[error(transparent)]
    Blobs(#[from] pierone_blobstore::Error),
    /// The tag store failed or refused (an immutable tag among others).
    #[error(transparent)]
    Tags(#[from] pierone_tagstore::Error),
    /// No blob of that digest is stored.
    #[error("blob {0} is not stored in this registry")]
    BlobUnknown(Digest),
    /// The blob was taken out of service by a scrub.
    #[error(
        "blob {digest} was quarantined at {at} by {by}: its stored bytes did not match its digest; push the correct bytes again to restore it"
    )]
    BlobQuarantined {
        /// The quarantined blob.
        digest: Digest,
        /// When, RFC 3339.
        at: String,
        /// Who quarantined it.
        by: String,
    },
    /// The repository has no manifest under that reference.
    #[error("manifest {1} is not in repository {0}")]
    ManifestUnknown(RepoName, Reference),
    /// The repository has no tags.
    #[error("repository {0} is not known")]
    NameUnknown(RepoName),
    /// The upload session does not exist, is another principal's, or expired.
    #[error("blob upload is unknown, finished or expired; start a new one")]
    UploadUnknown,
    /// A manifest names a blob that is not stored.
    #[error("the manifest references {0}, which is not in this registry (push it first)")]
    ManifestBlobUnknown(Digest),
    /// An index names a manifest that is not in the repository.
    #[error("the manifest references {0}, which is not a manifest in this repository")]
    ManifestChildUnknown(Digest),
    /// A manifest declares a blob's size wrongly.
    #[error("the manifest says {digest} has {declared} bytes, but it has {actual}")]
    DescriptorSizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size the manifest gives.
        declared: u64,
        /// The size stored.
        actual: u64,
    },
    /// Content does not hash to the digest it was pushed under.
    #[error("content hashes to {actual}, not to the digest given, {expected}")]
    DigestMismatch {
        /// The digest given.
        expected: Digest,
        /// The digest of the content.
        actual: Digest,
    },
    /// A chunk that does not start where the upload ends.
    #[error(
        "chunk starts at byte {start} but the upload has {received} bytes; send chunks in order"
    )]
    ChunkOutOfOrder {
        /// Where the chunk says it starts.
        start: u64,
        /// What the upload holds.
        received: u64,
    },
    /// A chunk whose length is not the one declared for it.
    #[error("the chunk's Content-Range names {declared} bytes, but its body has {actual}")]
    ChunkLengthMismatch {
        /// The length declared.
        declared: u64,
        /// The length sent.
        actual: u64,
    },
    /// A blob larger than the configured maximum.
    #[error("body of {size} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The size reached or declared.
        size: u64,
        /// The configured maximum.
        limit: u64,
    },
    /// A parameter of a query that cannot be used. `value` is the value and what is wrong
    /// with it (`abc, not a number`), or `required`; it is shown as it is, never quoted.
    #[error("query parameter {name}: {value}")]
    InvalidQuery {
        /// The parameter.
        name: &'static str,
        /// The value and what is wrong with it.
        value: String,
    },
    /// A team without artifacts.
    #[error("team {0} has no artifacts")]
    TeamUnknown(String),
    /// No image matches a prefix.
    #[error("no image matches {0}")]
    ImageUnknown(String),
    /// Several images match a prefix.
    #[error("{prefix} matches {} different images: {}; give a longer prefix", candidates.len(), candidate_list(candidates))]
    ImageAmbiguous {
        /// The prefix.
        prefix: String,
        /// Each image's digest with the `team/artifact:tag`s that carry it.
        candidates: Vec<(String, Vec<String>)>,
    },
    /// An empty prefix, which would list every image.
    #[error("an empty prefix matches every image; give a digest or a prefix of one")]
    ImagePrefixEmpty,
    /// No scm-source is recorded or found in the image.
    #[error("no scm-source is recorded for this tag, and none was found in its layers")]
    ScmSourceUnknown,
    /// Every scan slot stayed busy.
    #[error(
        "too many scm-source scans are running; retry in a few seconds (scans read whole image layers, so only a few run at once)"
    )]
    ScanBusy,
    /// A protected tag would name a manifest that no key of the team's trust policy signed:
    /// the message names the tag, the digest, the keys accepted and why each signature
    /// found failed.
    #[error("{0}")]
    SignatureRequired(Box<pierone_trust::Refusal>),
    /// Checking a protected tag's signature failed for another reason than a store failure
    /// (which keeps its own variant): nothing was decided about the signature.
    #[error("checking the signature of a protected tag failed: {0}")]
    SignatureCheck(String),
    /// No audit checkpoint exists.
    #[error("no audit checkpoint has been signed (the server needs --audit-signing-key)")]
    CheckpointUnknown,
}

/// The images of an ambiguous prefix, as git lists the candidates of an ambiguous object
/// name: a short prefix can match thousands, so the message is cut after ten (the error's
/// detail has them all) and each image shows at most three of its tags.
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
