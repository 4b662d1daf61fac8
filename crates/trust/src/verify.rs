//! Whether a manifest digest is signed by one of a team's keys: the signatures are found
//! through a small [`Evidence`] trait the service implements on its stores, within
//! [`Limits`], and the answer is either [`Verified`] (what the audit log records) or a
//! [`Refusal`] saying what was found and why each candidate failed.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use pierone_protocol::{Digest, ManifestKind, Reference, RepoName, Tag, parse_manifest};
use serde::Deserialize;

use crate::Error;
use crate::formats::{
    COSIGN_SIGNATURE_ARTIFACT_TYPE, SIGNATURE_ANNOTATION, SIGSTORE_BUNDLE_MEDIA_TYPE,
    SIMPLE_SIGNING_MEDIA_TYPE, check_signed_blob, decode_signature_annotation,
};
use crate::key::Scheme;
use crate::policy::TeamPolicy;

/// A manifest of `repo` whose `subject` is the image, as the referrers API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferrerInfo {
    /// The referrer manifest's digest.
    pub digest: Digest,
    /// Its `artifactType`, or its config media type when it has none. Only used to skip
    /// unrelated referrers without reading them: the verifier derives the type again from the
    /// manifest itself.
    pub artifact_type: Option<String>,
}

/// Where the verifier reads signatures from: the service implements this on its stores.
/// Everything is scoped to one repository, so a signature in another repository never counts.
/// The verifier hashes every manifest fetched by digest and every blob against its digest, so
/// an implementation need not.
#[async_trait]
pub trait Evidence: Send + Sync {
    /// The manifest `reference` names in `repo`, byte for byte as pushed.
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Bytes>, Error>;

    /// The manifests of `repo` whose subject is `subject`.
    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<ReferrerInfo>, Error>;

    /// The blob `digest` if `repo` may read it and it is at most `max_len` bytes long
    /// (a longer blob may be answered `None` or be returned, and is then refused unread).
    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        max_len: u64,
    ) -> Result<Option<Bytes>, Error>;
}

/// Bounds on the work one verification may do, so that a repository full of junk signatures
/// cannot make a tag write expensive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Signature manifests read: the `.sig` tag's and the referrers'.
    pub max_manifests: usize,
    /// Signatures checked (simple-signing layers and bundle layers), over all manifests.
    pub max_signatures: usize,
    /// The largest payload or bundle blob read.
    pub max_blob_size: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_manifests: 16,
            max_signatures: 64,
            max_blob_size: 64 * 1024,
        }
    }
}

/// The on-registry form a signature was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// cosign's tag scheme: a simple-signing layer of the manifest tagged `sha256-<hex>.sig`.
    CosignTag,
    /// A simple-signing layer of an OCI 1.1 referrer of cosign's signature artifact type.
    CosignReferrer,
    /// A Sigstore bundle v0.3 referrer (DSSE over an in-toto statement): cosign 3's default.
    SigstoreBundle,
}

impl Format {
    /// A stable name for logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::CosignTag => "cosign-tag",
            Format::CosignReferrer => "cosign-referrer",
            Format::SigstoreBundle => "sigstore-bundle-v0.3",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The signature that allowed a protected tag: what the audit log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The image manifest digest that is signed.
    pub digest: Digest,
    /// The name of the team's key that verified it.
    pub key_name: String,
    /// base64(SHA-256(SubjectPublicKeyInfo)) of that key, which identifies it even if it is
    /// renamed or removed from the policy later.
    pub key_hint: String,
    /// The scheme the signature verified under.
    pub scheme: Scheme,
    /// Where it was found.
    pub format: Format,
    /// The digest of the signature manifest (the `.sig` tag's manifest, or the referrer).
    pub signature_manifest: Digest,
    /// The `.sig` tag, for [`Format::CosignTag`].
    pub signature_tag: Option<Tag>,
    /// The index of the layer in the signature manifest.
    pub layer: usize,
    /// The digest of the signed blob (the simple-signing payload, or the bundle).
    pub payload: Digest,
    /// The signature, base64 as found (annotation or DSSE signature).
    pub signature: String,
}

/// Where a candidate signature was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The manifest under cosign's `.sig` tag.
    Tag(Tag),
    /// A referrer of the image.
    Referrer(Digest),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Tag(t) => write!(f, "tag {t}"),
            Source::Referrer(d) => write!(f, "referrer {d}"),
        }
    }
}

/// Why a candidate signature did not count.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The signature manifest is listed but cannot be read.
    ManifestMissing,
    /// The bytes read for a manifest digest do not hash to it.
    ManifestDigestMismatch,
    /// Not an image manifest, or not of the expected type or subject.
    ManifestInvalid(String),
    /// The signature manifest has no layer of the format's media type.
    NoSignatureLayers,
    /// A simple-signing layer without the signature annotation.
    NoSignatureAnnotation,
    /// A signature (or DSSE payload) that is not valid base64.
    BadBase64(String),
    /// The payload or bundle blob is not in the repository.
    BlobMissing(Digest),
    /// The blob is larger than [`Limits::max_blob_size`].
    BlobTooLarge {
        /// Its size, as its descriptor or the store says.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The blob's bytes do not hash to the digest that names them, or are not as long as
    /// the descriptor says.
    BlobDigestMismatch(Digest),
    /// The signature verifies under none of the team's keys.
    NoKeyVerifies,
    /// A bundle's key hint names none of the team's keys.
    UnknownKeyHint(String),
    /// A bundle with a certificate (keyless signing) instead of a public key hint.
    Keyless,
    /// A signed payload that is malformed or not of cosign's type.
    PayloadInvalid(String),
    /// A signed payload naming another manifest digest.
    OtherDigest(String),
    /// A signed payload naming another repository.
    OtherRepository(String),
    /// A bundle that is malformed.
    BundleInvalid(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ManifestMissing => f.write_str("the manifest cannot be read"),
            Reason::ManifestDigestMismatch => {
                f.write_str("the manifest's bytes do not match its digest")
            }
            Reason::ManifestInvalid(why) => write!(f, "not a signature manifest: {why}"),
            Reason::NoSignatureLayers => f.write_str("no signature layers"),
            Reason::NoSignatureAnnotation => {
                write!(f, "no {SIGNATURE_ANNOTATION} annotation")
            }
            Reason::BadBase64(why) => write!(f, "signature is not valid base64: {why}"),
            Reason::BlobMissing(d) => write!(f, "blob {d} is not in the repository"),
            Reason::BlobTooLarge { size, limit } => {
                write!(f, "blob of {size} bytes exceeds the limit of {limit}")
            }
            Reason::BlobDigestMismatch(d) => write!(f, "blob bytes do not match {d}"),
            Reason::NoKeyVerifies => f.write_str("signed by none of the team's keys"),
            Reason::UnknownKeyHint(h) => write!(f, "key hint {h} names none of the team's keys"),
            Reason::Keyless => f.write_str(
                "a keyless (certificate) bundle; only the team's public keys are trusted",
            ),
            Reason::PayloadInvalid(why) => write!(f, "signed payload: {why}"),
            Reason::OtherDigest(d) => write!(f, "signed payload names another digest, {d}"),
            Reason::OtherRepository(r) => {
                write!(f, "signed payload names another repository, {r}")
            }
            Reason::BundleInvalid(why) => write!(f, "bundle: {why}"),
        }
    }
}

/// One examined candidate and why it did not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The format it was read as.
    pub format: Format,
    /// Where it was found.
    pub source: Source,
    /// The layer index within the signature manifest, if the failure is about one layer.
    pub layer: Option<usize>,
    /// Why it did not count.
    pub reason: Reason,
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(l) = self.layer {
            write!(f, " layer {l}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Why a digest is not accepted: everything the 403 message and the logs need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The repository.
    pub repo: RepoName,
    /// The protected tag being written, if the caller said.
    pub tag: Option<Tag>,
    /// The manifest digest that has no valid signature.
    pub digest: Digest,
    /// The names of the keys that would have been accepted.
    pub accepted_keys: Vec<String>,
    /// Every candidate examined, with why it failed.
    pub candidates: Vec<Candidate>,
    /// Candidates (manifests or signatures) not examined because of [`Limits`].
    pub not_examined: usize,
}

/// At most this many candidates are spelled out in the one-line message.
const REASONS_IN_MESSAGE: usize = 3;

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(tag) => write!(
                f,
                "tag {tag} of {} may only name a manifest signed by one of the keys [{}]",
                self.repo,
                self.accepted_keys.join(", ")
            )?,
            None => write!(
                f,
                "{} requires a signature by one of the keys [{}]",
                self.repo,
                self.accepted_keys.join(", ")
            )?,
        }
        write!(f, "; {} has none", self.digest)?;
        if self.candidates.is_empty() && self.not_examined == 0 {
            return write!(
                f,
                " (no signature found: neither the tag {} nor a signature referrer)",
                signature_tag(&self.digest)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "sha256-<hex>.sig".to_owned())
            );
        }
        let n = self.candidates.len();
        write!(f, " ({n} candidate{}:", if n == 1 { "" } else { "s" })?;
        for (i, c) in self.candidates.iter().take(REASONS_IN_MESSAGE).enumerate() {
            write!(f, "{} {c}", if i == 0 { "" } else { ";" })?;
        }
        if self.candidates.len() > REASONS_IN_MESSAGE {
            write!(
                f,
                "; and {} more",
                self.candidates.len() - REASONS_IN_MESSAGE
            )?;
        }
        if self.not_examined > 0 {
            write!(
                f,
                "; {} more not examined: over the limit of what one tag write checks",
                self.not_examined
            )?;
        }
        f.write_str(")")
    }
}

/// cosign's signature tag for `digest`: `<algorithm>-<hex>.sig`. `None` where that is not a
/// valid tag (a sha512 digest makes it longer than 128 characters).
pub fn signature_tag(digest: &Digest) -> Option<Tag> {
    format!("{}-{}.sig", digest.algorithm().as_str(), digest.hex())
        .parse()
        .ok()
}

#[derive(Debug, Deserialize)]
struct WireManifest {
    #[serde(default)]
    layers: Vec<WireDescriptor>,
}

#[derive(Debug, Deserialize)]
struct WireDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

struct Run<'a> {
    team: &'a TeamPolicy,
    repo: &'a RepoName,
    image: &'a Digest,
    evidence: &'a dyn Evidence,
    limits: &'a Limits,
    candidates: Vec<Candidate>,
    manifests: usize,
    signatures: usize,
    not_examined: usize,
}

/// A layer that passed, before it becomes a [`Verified`].
struct Found {
    key_name: String,
    key_hint: String,
    scheme: Scheme,
    payload: Digest,
    signature: String,
}

impl Run<'_> {
    fn fail(&mut self, format: Format, source: &Source, layer: Option<usize>, reason: Reason) {
        self.candidates.push(Candidate {
            format,
            source: source.clone(),
            layer,
            reason,
        });
    }

    /// The blob a layer names, read within the limit and hashed.
    async fn blob(&self, layer: &WireDescriptor) -> Result<Result<(Digest, Bytes), Reason>, Error> {
        let digest: Digest = match layer.digest.parse() {
            Ok(d) => d,
            Err(e) => return Ok(Err(Reason::ManifestInvalid(format!("layer digest: {e}")))),
        };
        let limit = self.limits.max_blob_size;
        if layer.size > limit {
            return Ok(Err(Reason::BlobTooLarge {
                size: layer.size,
                limit,
            }));
        }
        let Some(bytes) = self.evidence.blob(self.repo, &digest, limit).await? else {
            return Ok(Err(Reason::BlobMissing(digest)));
        };
        if bytes.len() as u64 > limit {
            return Ok(Err(Reason::BlobTooLarge {
                size: bytes.len() as u64,
                limit,
            }));
        }
        if bytes.len() as u64 != layer.size || !digest.matches(&bytes) {
            return Ok(Err(Reason::BlobDigestMismatch(digest)));
        }
        Ok(Ok((digest, bytes)))
    }

    /// Check one signature layer of `format`: read its blob within the limit, hash it, and
    /// verify it.
    async fn layer(
        &self,
        format: Format,
        layer: &WireDescriptor,
    ) -> Result<Result<Found, Reason>, Error> {
        let signature = layer.annotations.get(SIGNATURE_ANNOTATION);
        if format != Format::SigstoreBundle {
            // Refuse a missing or garbled signature before reading anything.
            match signature {
                None => return Ok(Err(Reason::NoSignatureAnnotation)),
                Some(text) => {
                    if let Err(r) = decode_signature_annotation(text) {
                        return Ok(Err(r));
                    }
                }
            }
        }
        let (digest, blob) = match self.blob(layer).await? {
            Ok(b) => b,
            Err(r) => return Ok(Err(r)),
        };
        Ok(check_signed_blob(
            format,
            &blob,
            signature.map(String::as_str),
            self.team.keys(),
            self.image,
            self.repo,
        )
        .map(|s| Found {
            key_name: s.key.name().to_owned(),
            key_hint: s.key.hint().to_owned(),
            scheme: s.scheme,
            payload: digest,
            signature: s.signature,
        }))
    }

    /// Examine one signature manifest; `Some` on the first layer that passes.
    async fn manifest(
        &mut self,
        format: Format,
        source: Source,
        manifest_digest: Digest,
        body: &[u8],
    ) -> Result<Option<Verified>, Error> {
        let parsed = match parse_manifest(None, body) {
            Ok(m) if m.kind == ManifestKind::Image => m,
            Ok(_) => {
                let r = Reason::ManifestInvalid("an index, not an image manifest".to_owned());
                self.fail(format, &source, None, r);
                return Ok(None);
            }
            Err(e) => {
                self.fail(
                    format,
                    &source,
                    None,
                    Reason::ManifestInvalid(e.to_string()),
                );
                return Ok(None);
            }
        };
        if format != Format::CosignTag {
            // A referrer must be about this image and of the type it was listed as.
            let expected = match format {
                Format::SigstoreBundle => SIGSTORE_BUNDLE_MEDIA_TYPE,
                _ => COSIGN_SIGNATURE_ARTIFACT_TYPE,
            };
            if parsed.subject.as_ref().map(|s| &s.digest) != Some(self.image) {
                let r = Reason::ManifestInvalid("its subject is not this image".to_owned());
                self.fail(format, &source, None, r);
                return Ok(None);
            }
            if parsed.artifact_type.as_deref() != Some(expected) {
                let r = Reason::ManifestInvalid(format!(
                    "artifact type {:?}, not {expected}",
                    parsed.artifact_type
                ));
                self.fail(format, &source, None, r);
                return Ok(None);
            }
        }
        let wire: WireManifest = match serde_json::from_slice(body) {
            Ok(w) => w,
            Err(e) => {
                self.fail(
                    format,
                    &source,
                    None,
                    Reason::ManifestInvalid(e.to_string()),
                );
                return Ok(None);
            }
        };
        let layer_type = match format {
            Format::SigstoreBundle => SIGSTORE_BUNDLE_MEDIA_TYPE,
            _ => SIMPLE_SIGNING_MEDIA_TYPE,
        };
        let mut any = false;
        for (i, layer) in wire.layers.iter().enumerate() {
            if layer.media_type != layer_type {
                continue;
            }
            any = true;
            if self.signatures >= self.limits.max_signatures {
                self.not_examined += 1;
                continue;
            }
            self.signatures += 1;
            match self.layer(format, layer).await? {
                Ok(found) => {
                    return Ok(Some(Verified {
                        digest: self.image.clone(),
                        key_name: found.key_name,
                        key_hint: found.key_hint,
                        scheme: found.scheme,
                        format,
                        signature_manifest: manifest_digest,
                        signature_tag: match source {
                            Source::Tag(t) => Some(t),
                            Source::Referrer(_) => None,
                        },
                        layer: i,
                        payload: found.payload,
                        signature: found.signature,
                    }));
                }
                Err(reason) => self.fail(format, &source, Some(i), reason),
            }
        }
        if !any {
            self.fail(format, &source, None, Reason::NoSignatureLayers);
        }
        Ok(None)
    }
}

/// Verify that `image` in `repo` is signed by one of `team`'s keys, within the default
/// [`Limits`]. `tag` is only used in the refusal's message.
pub async fn verify(
    team: &TeamPolicy,
    repo: &RepoName,
    tag: Option<&Tag>,
    image: &Digest,
    evidence: &dyn Evidence,
) -> Result<Verified, Error> {
    verify_with(team, repo, tag, image, evidence, &Limits::default()).await
}

/// [`verify`] within the given limits.
///
/// Candidates are examined in this order, and the first valid one wins: the layers of the
/// manifest under cosign's `.sig` tag, then each referrer of cosign's signature type or of the
/// Sigstore bundle type, in the order the evidence lists them. `Err(Error::Refused)` when none
/// is valid; `Err(Error::Evidence)` when the evidence cannot be read (not a refusal: the
/// caller should answer as for a store failure).
pub async fn verify_with(
    team: &TeamPolicy,
    repo: &RepoName,
    tag: Option<&Tag>,
    image: &Digest,
    evidence: &dyn Evidence,
    limits: &Limits,
) -> Result<Verified, Error> {
    let mut run = Run {
        team,
        repo,
        image,
        evidence,
        limits,
        candidates: Vec::new(),
        manifests: 0,
        signatures: 0,
        not_examined: 0,
    };
    if let Some(sig_tag) = signature_tag(image)
        && limits.max_manifests > 0
        && let Some(body) = evidence
            .manifest(repo, &Reference::Tag(sig_tag.clone()))
            .await?
    {
        run.manifests += 1;
        let digest = Digest::sha256_of(&body);
        if let Some(v) = run
            .manifest(Format::CosignTag, Source::Tag(sig_tag), digest, &body)
            .await?
        {
            return Ok(v);
        }
    }
    for r in evidence.referrers(repo, image).await? {
        let format = match r.artifact_type.as_deref() {
            Some(COSIGN_SIGNATURE_ARTIFACT_TYPE) => Format::CosignReferrer,
            Some(SIGSTORE_BUNDLE_MEDIA_TYPE) => Format::SigstoreBundle,
            _ => continue,
        };
        if run.manifests >= limits.max_manifests {
            run.not_examined += 1;
            continue;
        }
        run.manifests += 1;
        let source = Source::Referrer(r.digest.clone());
        let Some(body) = evidence
            .manifest(repo, &Reference::Digest(r.digest.clone()))
            .await?
        else {
            run.fail(format, &source, None, Reason::ManifestMissing);
            continue;
        };
        if !r.digest.matches(&body) {
            run.fail(format, &source, None, Reason::ManifestDigestMismatch);
            continue;
        }
        if let Some(v) = run.manifest(format, source, r.digest, &body).await? {
            return Ok(v);
        }
    }
    Err(Error::Refused(Box::new(Refusal {
        repo: repo.clone(),
        tag: tag.cloned(),
        digest: image.clone(),
        accepted_keys: team.key_names().into_iter().map(str::to_owned).collect(),
        candidates: run.candidates,
        not_examined: run.not_examined,
    })))
}
