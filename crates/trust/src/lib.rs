//! Signed releases: which tags of a team may only name manifests signed by the team's keys
//! (the trust policy), and the verification of cosign's signatures of a manifest digest.
//!
//! The service hooks this into a manifest PUT in a few lines:
//!
//! ```
//! use pierone_protocol::{Digest, RepoName, Tag};
//! use pierone_trust::{Error, Evidence, TrustPolicyFile, Verified};
//!
//! /// `Ok(None)`: the tag is not protected; `Ok(Some)`: record it in the tag's audit entry.
//! async fn before_tagging(
//!     policy: &TrustPolicyFile,
//!     evidence: &dyn Evidence,
//!     repo: &RepoName,
//!     tag: &Tag,
//!     digest: &Digest,
//! ) -> Result<Option<Verified>, Error> {
//!     let policy = policy.current();
//!     match policy.protected(repo.team(), tag) {
//!         Some(team) => pierone_trust::verify(team, repo, Some(tag), digest, evidence)
//!             .await
//!             .map(Some),
//!         None => Ok(None),
//!     }
//! }
//! ```
//!
//! where `evidence` implements [`Evidence`] on the stores, and [`Error::Refused`] becomes
//! 403 `DENIED` with the refusal's message. docs/SIGNING.md describes the formats and checks.
//!
//! No I/O of its own apart from reading the policy file: it knows nothing of HTTP, async
//! runtimes or storage.

#![warn(missing_docs)]

mod formats;
mod key;
mod policy;
mod verify;

#[cfg(test)]
mod interop_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use formats::{
    COSIGN_SIGN_PREDICATE_TYPE, COSIGN_SIGNATURE_ARTIFACT_TYPE, IN_TOTO_PAYLOAD_TYPE,
    IN_TOTO_STATEMENT_V1, MAX_DSSE_SIGNATURES, SIGNATURE_ANNOTATION, SIGSTORE_BUNDLE_MEDIA_TYPE,
    SIMPLE_SIGNING_MEDIA_TYPE, SIMPLE_SIGNING_TYPE, SignedBy, check_bundle, check_signed_blob,
    check_simple_signing_payload, check_statement, decode_signature_annotation, pae,
};
pub use key::{KeyType, MAX_RSA_BITS, MIN_RSA_BITS, Scheme, TrustedKey};
pub use policy::{TeamPolicy, TrustPolicy, TrustPolicyFile, is_cosign_tag};
pub use verify::{
    Candidate, Evidence, Format, Limits, Reason, ReferrerInfo, Refusal, Source, Verified,
    signature_tag, verify, verify_with,
};

/// What went wrong: a policy that cannot be used, evidence that cannot be read, or a digest
/// without a valid signature.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy file cannot be read.
    #[error("trust policy {}: {reason}", path.display())]
    PolicyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The policy is not valid YAML or not of the policy's shape.
    #[error("trust policy: {0}")]
    PolicySyntax(String),
    /// A `signed-tags` pattern that can match no tag.
    #[error("trust policy, team {team}: signed-tags pattern {pattern:?}: {reason}")]
    PolicyPattern {
        /// The team.
        team: String,
        /// The pattern as written.
        pattern: String,
        /// Why it is refused.
        reason: String,
    },
    /// A key that cannot be used.
    #[error("trust policy, team {team}, key {key}: {reason}")]
    PolicyKey {
        /// The team.
        team: String,
        /// The key's name.
        key: String,
        /// Why: not PEM, not a public key, unsupported type, too short, duplicate name.
        reason: String,
    },
    /// A team's entry that cannot work as written.
    #[error("trust policy, team {team}: {reason}")]
    PolicyTeam {
        /// The team.
        team: String,
        /// Why.
        reason: String,
    },
    /// The evidence (the service's stores) failed; not a verdict on the signature.
    #[error("reading the signatures failed: {0}")]
    Evidence(String),
    /// No valid signature by one of the team's keys.
    #[error("{0}")]
    Refused(Box<Refusal>),
}
