//! Tests of policy parsing and of verification in each format with each key type, against an
//! in-memory [`Evidence`], with signatures made here by aws-lc-rs private keys.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use pierone_protocol::{Digest, Reference, RepoName, Tag};
use spki::der::pem::LineEnding;

use crate::*;

// ---------------------------------------------------------------------------------------------
// Keys

pub(crate) enum Private {
    P256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair, bool),
}

pub(crate) struct Signer {
    pub name: &'static str,
    pub key: Private,
}

pub(crate) fn pem_of_spki(der: &[u8]) -> String {
    spki::der::pem::encode_string("PUBLIC KEY", LineEnding::LF, der).unwrap()
}

impl Signer {
    pub fn p256(name: &'static str) -> Signer {
        let k = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        Signer {
            name,
            key: Private::P256(k),
        }
    }
    pub fn ed25519(name: &'static str) -> Signer {
        Signer {
            name,
            key: Private::Ed25519(Ed25519KeyPair::generate().unwrap()),
        }
    }
    pub fn rsa(name: &'static str, pss: bool) -> Signer {
        Signer {
            name,
            key: Private::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap(), pss),
        }
    }
    pub fn spki_der(&self) -> Vec<u8> {
        match &self.key {
            Private::P256(k) => k.public_key().as_der().unwrap().as_ref().to_vec(),
            Private::Ed25519(k) => k.public_key().as_der().unwrap().as_ref().to_vec(),
            Private::Rsa(k, _) => k.public_key().as_der().unwrap().as_ref().to_vec(),
        }
    }
    pub fn pem(&self) -> String {
        pem_of_spki(&self.spki_der())
    }
    pub fn hint(&self) -> String {
        STANDARD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &self.spki_der(),
        ))
    }
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.key {
            Private::P256(k) => k.sign(&rng, message).unwrap().as_ref().to_vec(),
            Private::Ed25519(k) => k.sign(message).as_ref().to_vec(),
            Private::Rsa(k, pss) => {
                let mut sig = vec![0; k.public_modulus_len()];
                let alg: &'static dyn aws_lc_rs::signature::RsaEncoding = if *pss {
                    &RSA_PSS_SHA256
                } else {
                    &RSA_PKCS1_SHA256
                };
                k.sign(alg, &rng, message, &mut sig).unwrap();
                sig
            }
        }
    }
    pub fn sign_b64(&self, message: &[u8]) -> String {
        STANDARD.encode(self.sign(message))
    }
    pub fn scheme(&self) -> Scheme {
        match &self.key {
            Private::P256(_) => Scheme::EcdsaP256Sha256,
            Private::Ed25519(_) => Scheme::Ed25519,
            Private::Rsa(_, false) => Scheme::RsaPkcs1Sha256,
            Private::Rsa(_, true) => Scheme::RsaPssSha256,
        }
    }
}

pub(crate) fn policy_yaml(team: &str, patterns: &[&str], keys: &[(&str, String)]) -> String {
    let mut y = format!("teams:\n  {team}:\n    signed-tags: [");
    y.push_str(
        &patterns
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    y.push_str("]\n    keys:\n");
    for (name, pem) in keys {
        y.push_str(&format!("      - name: {name}\n        pem: |\n"));
        for line in pem.lines() {
            y.push_str(&format!("          {line}\n"));
        }
    }
    y
}

pub(crate) fn policy_of(signers: &[&Signer]) -> TrustPolicy {
    let keys: Vec<(&str, String)> = signers.iter().map(|s| (s.name, s.pem())).collect();
    TrustPolicy::parse(&policy_yaml("red", &["v*", "release-*"], &keys)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Evidence in memory

#[derive(Default)]
pub(crate) struct MemEvidence {
    tags: HashMap<(String, String), Bytes>,
    manifests: HashMap<(String, String), Bytes>,
    referrers: HashMap<(String, String), Vec<ReferrerInfo>>,
    blobs: HashMap<(String, String), Bytes>,
    pub blob_reads: AtomicUsize,
    pub manifest_reads: AtomicUsize,
    pub fail: Mutex<bool>,
}

impl MemEvidence {
    pub fn put_blob(&mut self, repo: &str, data: &[u8]) -> (Digest, u64) {
        let d = Digest::sha256_of(data);
        self.blobs
            .insert((repo.into(), d.to_string()), Bytes::copy_from_slice(data));
        (d, data.len() as u64)
    }
    /// Store a blob under a digest that is not its own (a corrupted store).
    pub fn blob_as(&mut self, repo: &str, digest: &Digest, data: &[u8]) {
        self.blobs.insert(
            (repo.into(), digest.to_string()),
            Bytes::copy_from_slice(data),
        );
    }
    pub fn tag(&mut self, repo: &str, tag: &str, manifest: &[u8]) -> Digest {
        let d = Digest::sha256_of(manifest);
        self.tags
            .insert((repo.into(), tag.into()), Bytes::copy_from_slice(manifest));
        self.manifests.insert(
            (repo.into(), d.to_string()),
            Bytes::copy_from_slice(manifest),
        );
        d
    }
    pub fn referrer(
        &mut self,
        repo: &str,
        subject: &Digest,
        manifest: &[u8],
        artifact_type: &str,
    ) -> Digest {
        let d = Digest::sha256_of(manifest);
        self.manifests.insert(
            (repo.into(), d.to_string()),
            Bytes::copy_from_slice(manifest),
        );
        self.referrers
            .entry((repo.into(), subject.to_string()))
            .or_default()
            .push(ReferrerInfo {
                digest: d.clone(),
                artifact_type: Some(artifact_type.to_owned()),
            });
        d
    }
    /// List a referrer whose stored bytes are other than its digest names.
    pub fn forged_referrer(&mut self, repo: &str, subject: &Digest, digest: &Digest, body: &[u8]) {
        self.manifests.insert(
            (repo.into(), digest.to_string()),
            Bytes::copy_from_slice(body),
        );
        self.referrers
            .entry((repo.into(), subject.to_string()))
            .or_default()
            .push(ReferrerInfo {
                digest: digest.clone(),
                artifact_type: Some(COSIGN_SIGNATURE_ARTIFACT_TYPE.to_owned()),
            });
    }
    fn check(&self) -> Result<(), Error> {
        if *self.fail.lock().unwrap() {
            return Err(Error::Evidence("metadata store unavailable".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Evidence for MemEvidence {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Bytes>, Error> {
        self.check()?;
        self.manifest_reads.fetch_add(1, Ordering::SeqCst);
        let key = (repo.to_string(), reference.to_string());
        Ok(match reference {
            Reference::Tag(_) => self.tags.get(&key).cloned(),
            Reference::Digest(_) => self.manifests.get(&key).cloned(),
        })
    }
    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<ReferrerInfo>, Error> {
        self.check()?;
        Ok(self
            .referrers
            .get(&(repo.to_string(), subject.to_string()))
            .cloned()
            .unwrap_or_default())
    }
    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        _max_len: u64,
    ) -> Result<Option<Bytes>, Error> {
        self.check()?;
        self.blob_reads.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .blobs
            .get(&(repo.to_string(), digest.to_string()))
            .cloned())
    }
}

// ---------------------------------------------------------------------------------------------
// cosign's documents

pub(crate) const REPO: &str = "red/app";

pub(crate) fn repo() -> RepoName {
    REPO.parse().unwrap()
}

pub(crate) fn image(n: u8) -> Digest {
    Digest::sha256_of(format!("image manifest {n}").as_bytes())
}

/// The simple-signing payload exactly as cosign (Go) marshals it.
pub(crate) fn payload(digest: &str, reference: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

pub(crate) struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub signature: Option<String>,
    pub media_type: &'static str,
}

impl Layer {
    pub fn simple(digest: Digest, size: u64, signature: String) -> Layer {
        Layer {
            digest,
            size,
            signature: Some(signature),
            media_type: SIMPLE_SIGNING_MEDIA_TYPE,
        }
    }
}

const CONFIG_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// A signature manifest as cosign writes it: tag scheme (no subject), OCI 1.1 referrer with or
/// without the top-level artifact type, or a bundle referrer.
pub(crate) fn manifest(
    layers: &[Layer],
    subject: Option<&Digest>,
    config_media_type: &str,
    artifact_type: Option<&str>,
) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| {
            let ann = l
                .signature
                .as_ref()
                .map(|s| {
                    format!(r#","annotations":{{"{SIGNATURE_ANNOTATION}":"{s}","dev.sigstore.cosign/bundle":"{{}}"}}"#)
                })
                .unwrap_or_default();
            format!(
                r#"{{"mediaType":"{}","size":{},"digest":"{}"{ann}}}"#,
                l.media_type, l.size, l.digest
            )
        })
        .collect();
    let subject = subject
        .map(|s| {
            format!(
                r#","subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1234,"digest":"{s}"}}"#
            )
        })
        .unwrap_or_default();
    let artifact = artifact_type
        .map(|a| format!(r#","artifactType":"{a}""#))
        .unwrap_or_default();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"{artifact},"config":{{"mediaType":"{config_media_type}","size":233,"digest":"{CONFIG_DIGEST}"}},"layers":[{}]{subject}}}"#,
        layers.join(",")
    )
    .into_bytes()
}

/// The in-toto statement cosign 3 signs.
pub(crate) fn statement(digest: &Digest) -> Vec<u8> {
    format!(
        r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha256":"{}"}}}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{{}}}}"#,
        digest.hex()
    )
    .into_bytes()
}

/// A Sigstore bundle v0.3 as cosign 3 writes it (protojson), with a DSSE signature.
pub(crate) fn bundle(hint: &str, statement: &[u8], sig_b64: &str) -> Vec<u8> {
    format!(
        r#"{{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{{"publicKey":{{"hint":"{hint}"}}}},"dsseEnvelope":{{"payload":"{}","payloadType":"application/vnd.in-toto+json","signatures":[{{"sig":"{sig_b64}"}}]}}}}"#,
        STANDARD.encode(statement)
    )
    .into_bytes()
}

pub(crate) fn signed_bundle(signer: &Signer, digest: &Digest) -> Vec<u8> {
    let st = statement(digest);
    let sig = signer.sign_b64(&pae(IN_TOTO_PAYLOAD_TYPE, &st));
    bundle(&signer.hint(), &st, &sig)
}

/// Push a tag-scheme signature of `image` by `signer` over `payload` into `repo`.
pub(crate) fn push_tag_signature(
    ev: &mut MemEvidence,
    repo: &str,
    image: &Digest,
    layers: &[Layer],
) -> Digest {
    let m = manifest(
        layers,
        None,
        "application/vnd.oci.image.config.v1+json",
        None,
    );
    ev.tag(repo, signature_tag(image).unwrap().as_str(), &m)
}

pub(crate) fn signed_layer(
    ev: &mut MemEvidence,
    repo: &str,
    signer: &Signer,
    payload: &[u8],
) -> Layer {
    let (d, size) = ev.put_blob(repo, payload);
    Layer::simple(d, size, signer.sign_b64(payload))
}

pub(crate) fn refusal(e: Error) -> Refusal {
    match e {
        Error::Refused(r) => *r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub(crate) async fn check(
    policy: &TrustPolicy,
    ev: &MemEvidence,
    image: &Digest,
) -> Result<Verified, Error> {
    let tag: Tag = "v1".parse().unwrap();
    let team = policy.protected("red", &tag).unwrap();
    verify(team, &repo(), Some(&tag), image, ev).await
}

pub(crate) fn only_reason(r: &Refusal) -> &Reason {
    assert_eq!(r.candidates.len(), 1, "{r}");
    &r.candidates[0].reason
}

fn all_signers() -> Vec<Signer> {
    vec![
        Signer::p256("p256"),
        Signer::ed25519("ed"),
        Signer::rsa("rsa-pkcs1", false),
        Signer::rsa("rsa-pss", true),
    ]
}

// ---------------------------------------------------------------------------------------------
// Each format with each key type

#[tokio::test]
async fn tag_scheme_signature_by_each_key_type_passes_and_names_the_key() {
    let signers = all_signers();
    let policy = policy_of(&signers.iter().collect::<Vec<_>>());
    for (n, s) in signers.iter().enumerate() {
        let img = image(n as u8);
        let mut ev = MemEvidence::default();
        let p = payload(img.as_str(), &format!("127.0.0.1:5180/{REPO}"));
        let layer = signed_layer(&mut ev, REPO, s, &p);
        let payload_digest = layer.digest.clone();
        let sig_manifest = push_tag_signature(&mut ev, REPO, &img, &[layer]);
        let v = check(&policy, &ev, &img).await.unwrap();
        assert_eq!(v.key_name, s.name);
        assert_eq!(v.key_hint, s.hint());
        assert_eq!(v.scheme, s.scheme());
        assert_eq!(v.format, Format::CosignTag);
        assert_eq!(v.signature_manifest, sig_manifest);
        assert_eq!(v.signature_tag, signature_tag(&img));
        assert_eq!((v.layer, &v.payload, &v.digest), (0, &payload_digest, &img));
    }
}

#[tokio::test]
async fn referrer_signature_by_each_key_type_passes_with_or_without_artifact_type() {
    let signers = all_signers();
    let policy = policy_of(&signers.iter().collect::<Vec<_>>());
    for (n, s) in signers.iter().enumerate() {
        // cosign 3.1.2+ sets artifactType; older cosign only the config media type.
        for artifact_type in [Some(COSIGN_SIGNATURE_ARTIFACT_TYPE), None] {
            let img = image(n as u8);
            let mut ev = MemEvidence::default();
            let p = payload(img.as_str(), REPO);
            let layer = signed_layer(&mut ev, REPO, s, &p);
            let m = manifest(
                &[layer],
                Some(&img),
                COSIGN_SIGNATURE_ARTIFACT_TYPE,
                artifact_type,
            );
            let d = ev.referrer(REPO, &img, &m, COSIGN_SIGNATURE_ARTIFACT_TYPE);
            let v = check(&policy, &ev, &img).await.unwrap();
            assert_eq!(
                (
                    v.key_name.as_str(),
                    v.format,
                    &v.signature_manifest,
                    &v.signature_tag
                ),
                (s.name, Format::CosignReferrer, &d, &None)
            );
        }
    }
}

#[tokio::test]
async fn sigstore_bundle_by_each_key_type_passes() {
    let signers = all_signers();
    let policy = policy_of(&signers.iter().collect::<Vec<_>>());
    for (n, s) in signers.iter().enumerate() {
        let img = image(n as u8);
        let mut ev = MemEvidence::default();
        let (bd, bsize) = ev.put_blob(REPO, &signed_bundle(s, &img));
        let layer = Layer {
            digest: bd.clone(),
            size: bsize,
            signature: None,
            media_type: SIGSTORE_BUNDLE_MEDIA_TYPE,
        };
        let m = manifest(
            &[layer],
            Some(&img),
            "application/vnd.oci.empty.v1+json",
            Some(SIGSTORE_BUNDLE_MEDIA_TYPE),
        );
        let d = ev.referrer(REPO, &img, &m, SIGSTORE_BUNDLE_MEDIA_TYPE);
        let v = check(&policy, &ev, &img).await.unwrap();
        assert_eq!(
            (
                v.key_name.as_str(),
                v.format,
                &v.signature_manifest,
                &v.payload,
                v.scheme
            ),
            (s.name, Format::SigstoreBundle, &d, &bd, s.scheme())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[tokio::test]
async fn unsigned_digest_is_refused_naming_tag_digest_and_keys() {
    let (a, b) = (Signer::p256("red-ci"), Signer::ed25519("red-release"));
    let policy = policy_of(&[&a, &b]);
    let ev = MemEvidence::default();
    let img = image(1);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert!(r.candidates.is_empty());
    assert_eq!(r.accepted_keys, ["red-ci", "red-release"]);
    let msg = r.to_string();
    for needle in [
        "tag v1",
        REPO,
        img.as_str(),
        "red-ci, red-release",
        "no signature found",
    ] {
        assert!(msg.contains(needle), "{needle} not in {msg}");
    }
}

#[tokio::test]
async fn signature_by_an_unlisted_key_is_refused() {
    let (trusted, other) = (Signer::p256("red-ci"), Signer::p256("mallory"));
    let policy = policy_of(&[&trusted]);
    let img = image(1);
    let mut ev = MemEvidence::default();
    let layer = signed_layer(&mut ev, REPO, &other, &payload(img.as_str(), REPO));
    push_tag_signature(&mut ev, REPO, &img, &[layer]);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert_eq!(only_reason(&r), &Reason::NoKeyVerifies);
    assert_eq!(r.candidates[0].layer, Some(0));
    assert!(
        r.to_string().contains("signed by none of the team's keys"),
        "{r}"
    );
}

#[tokio::test]
async fn signature_over_another_payload_is_refused() {
    let s = Signer::p256("red-ci");
    let policy = policy_of(&[&s]);
    let img = image(1);
    let mut ev = MemEvidence::default();
    // A real signature of image 2's payload, attached to a payload naming image 1.
    let sig = s.sign_b64(&payload(image(2).as_str(), REPO));
    let (d, size) = ev.put_blob(REPO, &payload(img.as_str(), REPO));
    push_tag_signature(&mut ev, REPO, &img, &[Layer::simple(d, size, sig)]);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert_eq!(only_reason(&r), &Reason::NoKeyVerifies);
}

#[tokio::test]
async fn signed_payload_naming_another_digest_is_refused() {
    let s = Signer::p256("red-ci");
    let policy = policy_of(&[&s]);
    let img = image(1);
    let other = image(2);
    let mut ev = MemEvidence::default();
    // Someone copies image 2's valid signature manifest under image 1's .sig tag.
    let layer = signed_layer(&mut ev, REPO, &s, &payload(other.as_str(), REPO));
    push_tag_signature(&mut ev, REPO, &img, &[layer]);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert_eq!(only_reason(&r), &Reason::OtherDigest(other.to_string()));
}

#[tokio::test]
async fn signed_payload_naming_another_repository_is_refused() {
    let s = Signer::p256("red-ci");
    let policy = policy_of(&[&s]);
    let img = image(1);
    for reference in [
        "127.0.0.1:5180/blue/app",
        "blue/app",
        "red/app2:v1",
        "registry.example.com/red/app/sub",
        "red",
    ] {
        let mut ev = MemEvidence::default();
        let layer = signed_layer(&mut ev, REPO, &s, &payload(img.as_str(), reference));
        push_tag_signature(&mut ev, REPO, &img, &[layer]);
        let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
        assert_eq!(
            only_reason(&r),
            &Reason::OtherRepository(reference.to_owned())
        );
    }
}

#[tokio::test]
async fn docker_reference_is_compared_without_host_tag_or_digest() {
    let s = Signer::p256("red-ci");
    let policy = policy_of(&[&s]);
    let img = image(1);
    for reference in [
        "red/app".to_owned(),
        "127.0.0.1:5180/red/app".to_owned(),
        "localhost/red/app".to_owned(),
        "pierone.example.com/red/app:v1".to_owned(),
        format!("pierone.example.com:443/red/app@{img}"),
        format!("red/app:v1@{img}"),
    ] {
        let mut ev = MemEvidence::default();
        let layer = signed_layer(&mut ev, REPO, &s, &payload(img.as_str(), &reference));
        push_tag_signature(&mut ev, REPO, &img, &[layer]);
        check(&policy, &ev, &img)
            .await
            .unwrap_or_else(|e| panic!("{reference}: {e}"));
    }
}

#[tokio::test]
async fn a_signature_in_another_repository_does_not_count() {
    let s = Signer::p256("red-ci");
    let policy = policy_of(&[&s]);
    let img = image(1);
    let mut ev = MemEvidence::default();
    // Valid in every respect, even naming red/app, but stored in red/other.
    let layer = signed_layer(&mut ev, "red/other", &s, &payload(img.as_str(), REPO));
    push_tag_signature(&mut ev, "red/other", &img, &[layer]);
    let st = signed_bundle(&s, &img);
    let (bd, bs) = ev.put_blob("red/other", &st);
    let m = manifest(
        &[Layer {
            digest: bd,
            size: bs,
            signature: None,
            media_type: SIGSTORE_BUNDLE_MEDIA_TYPE,
        }],
        Some(&img),
        "application/vnd.oci.empty.v1+json",
        Some(SIGSTORE_BUNDLE_MEDIA_TYPE),
    );
    ev.referrer("red/other", &img, &m, SIGSTORE_BUNDLE_MEDIA_TYPE);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert!(r.candidates.is_empty(), "{r}");
    // In its own repository the bundle counts (it names no repository: being a referrer there
    // is what ties it to one), and the tag-scheme payload naming red/app does not.
    let other: RepoName = "red/other".parse().unwrap();
    let team = policy.team("red").unwrap();
    let v = verify(team, &other, None, &img, &ev).await.unwrap();
    assert_eq!(v.format, Format::SigstoreBundle);
    let mut ev = MemEvidence::default();
    let layer = signed_layer(&mut ev, "red/other", &s, &payload(img.as_str(), REPO));
    push_tag_signature(&mut ev, "red/other", &img, &[layer]);
    let r = refusal(verify(team, &other, None, &img, &ev).await.unwrap_err());
    assert_eq!(only_reason(&r), &Reason::OtherRepository(REPO.to_owned()));
}

#[tokio::test]
async fn tampered_payload_is_refused_before_its_signature_is_checked() {
    let s = Signer::p256("red-ci");
    let policy = policy_of(&[&s]);
    let img = image(1);
    let mut ev = MemEvidence::default();
    let good = payload(img.as_str(), REPO);
    let layer = signed_layer(&mut ev, REPO, &s, &good);
    // The store answers other bytes for the payload's digest (same length, one byte changed).
    let mut bad = good.clone();
    bad[10] ^= 1;
    ev.blob_as(REPO, &layer.digest, &bad);
    let d = layer.digest.clone();
    push_tag_signature(&mut ev, REPO, &img, &[layer]);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert_eq!(only_reason(&r), &Reason::BlobDigestMismatch(d));
}

#[tokio::test]
async fn bad_base64_and_missing_annotations_are_refused() {
    // Ed25519: 64-byte signatures, so the base64 always ends in "==".
    let s = Signer::ed25519("red-ci");
    let policy = policy_of(&[&s]);
    let img = image(1);
    let p = payload(img.as_str(), REPO);
    let sig = s.sign_b64(&p);
    for bad in [
        sig[..sig.len() - 3].to_owned(),      // truncated
        sig.trim_end_matches('=').to_owned(), // padding dropped: Go's StdEncoding refuses it
        "not base64 at all!".to_owned(),
        String::new(),
    ] {
        let mut ev = MemEvidence::default();
        let (d, size) = ev.put_blob(REPO, &p);
        push_tag_signature(&mut ev, REPO, &img, &[Layer::simple(d, size, bad.clone())]);
        let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
        assert!(
            matches!(only_reason(&r), Reason::BadBase64(_)),
            "{bad:?}: {r}"
        );
    }
    let mut ev = MemEvidence::default();
    let (d, size) = ev.put_blob(REPO, &p);
    let layer = Layer {
        digest: d,
        size,
        signature: None,
        media_type: SIMPLE_SIGNING_MEDIA_TYPE,
    };
    push_tag_signature(&mut ev, REPO, &img, &[layer]);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert_eq!(only_reason(&r), &Reason::NoSignatureAnnotation);
}

#[tokio::test]
async fn oversize_payloads_are_refused_without_being_read() {
    let s = Signer::p256("red-ci");
    let policy = policy_of(&[&s]);
    let img = image(1);
    let mut ev = MemEvidence::default();
    // A payload padded past 64 KiB with JSON whitespace: valid, signed, and too large.
    let mut p = payload(img.as_str(), REPO);
    p.splice(1..1, std::iter::repeat_n(b' ', 70 * 1024));
    let layer = signed_layer(&mut ev, REPO, &s, &p);
    push_tag_signature(&mut ev, REPO, &img, &[layer]);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert_eq!(
        only_reason(&r),
        &Reason::BlobTooLarge {
            size: p.len() as u64,
            limit: 64 * 1024
        }
    );
    assert_eq!(ev.blob_reads.load(Ordering::SeqCst), 0);

    // A descriptor that understates the size is caught on the bytes returned.
    let mut ev = MemEvidence::default();
    let mut layer = signed_layer(&mut ev, REPO, &s, &p);
    layer.size = 100;
    push_tag_signature(&mut ev, REPO, &img, &[layer]);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert!(
        matches!(only_reason(&r), Reason::BlobTooLarge { .. }),
        "{r}"
    );
}

#[tokio::test]
async fn too_many_candidates_are_cut_off_and_said_so() {
    let s = Signer::p256("red-ci");
    let other = Signer::p256("mallory");
    let policy = policy_of(&[&s]);
    let img = image(1);
    let p = payload(img.as_str(), REPO);
    let mut ev = MemEvidence::default();
    // 100 junk signatures appended before the valid one.
    let mut layers: Vec<Layer> = (0..100)
        .map(|_| signed_layer(&mut ev, REPO, &other, &p))
        .collect();
    layers.push(signed_layer(&mut ev, REPO, &s, &p));
    push_tag_signature(&mut ev, REPO, &img, &layers);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert_eq!(r.candidates.len(), 64);
    assert_eq!(r.not_examined, 37);
    assert_eq!(ev.blob_reads.load(Ordering::SeqCst), 64);
    assert!(r.to_string().contains("37 more not examined"), "{r}");

    // With a higher limit the valid one is found.
    let tag: Tag = "v1".parse().unwrap();
    let team = policy.protected("red", &tag).unwrap();
    let limits = Limits {
        max_signatures: 200,
        ..Limits::default()
    };
    let v = verify_with(team, &repo(), None, &img, &ev, &limits)
        .await
        .unwrap();
    assert_eq!(v.layer, 100);

    // Referrers are capped by manifests.
    let mut ev = MemEvidence::default();
    for _ in 0..20 {
        let layer = signed_layer(&mut ev, REPO, &other, &p);
        let m = manifest(&[layer], Some(&img), COSIGN_SIGNATURE_ARTIFACT_TYPE, None);
        ev.referrer(REPO, &img, &m, COSIGN_SIGNATURE_ARTIFACT_TYPE);
    }
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert_eq!((r.candidates.len(), r.not_examined), (16, 4));
    assert_eq!(ev.manifest_reads.load(Ordering::SeqCst), 1 + 16);
}

#[tokio::test]
async fn a_verified_record_can_be_rechecked_offline_and_a_tampered_one_fails() {
    let s = Signer::p256("red-ci");
    let other = Signer::p256("mallory");
    let policy = policy_of(&[&s]);
    let keys = policy.team("red").unwrap().keys();
    let img = image(1);
    let p = payload(img.as_str(), REPO);

    let mut ev = MemEvidence::default();
    let layer = signed_layer(&mut ev, REPO, &s, &p);
    push_tag_signature(&mut ev, REPO, &img, &[layer]);
    let v = check(&policy, &ev, &img).await.unwrap();
    assert!(v.payload.matches(&p));
    let again = check_signed_blob(v.format, &p, Some(&v.signature), keys, &img, &repo()).unwrap();
    assert_eq!(
        (again.key.name(), again.key.hint(), again.scheme),
        ("red-ci", v.key_hint.as_str(), v.scheme)
    );
    // A record whose signature was swapped, or that claims another digest, fails.
    let forged = other.sign_b64(&p);
    assert_eq!(
        check_signed_blob(v.format, &p, Some(&forged), keys, &img, &repo()).unwrap_err(),
        Reason::NoKeyVerifies
    );
    assert_eq!(
        check_signed_blob(v.format, &p, Some(&v.signature), keys, &image(2), &repo()).unwrap_err(),
        Reason::OtherDigest(img.to_string())
    );

    let b = signed_bundle(&s, &img);
    let mut ev = MemEvidence::default();
    bundle_layer(&mut ev, &img, &b);
    let v = check(&policy, &ev, &img).await.unwrap();
    assert!(v.payload.matches(&b));
    let again = check_signed_blob(v.format, &b, None, keys, &img, &repo()).unwrap();
    assert_eq!(
        (again.key.name(), again.signature.as_str()),
        ("red-ci", v.signature.as_str())
    );
    assert!(check_signed_blob(v.format, &b, None, keys, &image(2), &repo()).is_err());
}

#[tokio::test]
async fn docker_media_types_and_index_signature_manifests() {
    let s = Signer::p256("red-ci");
    let policy = policy_of(&[&s]);
    let img = image(1);
    let p = payload(img.as_str(), REPO);
    // COSIGN_DOCKER_MEDIA_TYPES=1: a Docker schema2 manifest with the same layers.
    let mut ev = MemEvidence::default();
    let layer = signed_layer(&mut ev, REPO, &s, &p);
    let m = String::from_utf8(manifest(
        &[layer],
        None,
        "application/vnd.docker.container.image.v1+json",
        None,
    ))
    .unwrap()
    .replace(
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    );
    ev.tag(REPO, signature_tag(&img).unwrap().as_str(), m.as_bytes());
    let v = check(&policy, &ev, &img).await.unwrap();
    assert_eq!(v.format, Format::CosignTag);

    // An index under the .sig tag is not a signature manifest.
    let mut ev = MemEvidence::default();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{img}","size":10}}]}}"#
    );
    ev.tag(
        REPO,
        signature_tag(&img).unwrap().as_str(),
        index.as_bytes(),
    );
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert!(
        matches!(only_reason(&r), Reason::ManifestInvalid(m) if m.contains("index")),
        "{r}"
    );

    // A .sig manifest without simple-signing layers.
    let mut ev = MemEvidence::default();
    let (d, size) = ev.put_blob(REPO, b"layer");
    let layer = Layer {
        digest: d,
        size,
        signature: Some(s.sign_b64(b"layer")),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
    };
    push_tag_signature(&mut ev, REPO, &img, &[layer]);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert_eq!(only_reason(&r), &Reason::NoSignatureLayers);
    assert_eq!(ev.blob_reads.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn any_one_valid_signature_among_failing_ones_suffices() {
    let s = Signer::p256("red-ci");
    let other = Signer::p256("mallory");
    let policy = policy_of(&[&s]);
    let img = image(1);
    let p = payload(img.as_str(), REPO);
    let mut ev = MemEvidence::default();
    // cosign appends: the first signer is someone else, the second is the team's.
    let layers = [
        signed_layer(&mut ev, REPO, &other, &p),
        signed_layer(&mut ev, REPO, &s, &p),
    ];
    push_tag_signature(&mut ev, REPO, &img, &layers);
    let v = check(&policy, &ev, &img).await.unwrap();
    assert_eq!((v.key_name.as_str(), v.layer), ("red-ci", 1));
}

#[tokio::test]
async fn payload_checks_follow_cosign_and_are_stricter_where_it_ignores_fields() {
    let s = Signer::p256("red-ci");
    let policy = policy_of(&[&s]);
    let img = image(1);
    let d = img.as_str();
    let ok = [
        // SIGNATURE_SPEC's own example spelling; Go decodes keys case-insensitively.
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"red/app"}},"image":{{"Docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
        ),
        // Annotations given with -a.
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"red/app"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":{{"commit":"abc"}}}}"#
        ),
    ];
    for p in ok {
        let mut ev = MemEvidence::default();
        let layer = signed_layer(&mut ev, REPO, &s, p.as_bytes());
        push_tag_signature(&mut ev, REPO, &img, &[layer]);
        check(&policy, &ev, &img)
            .await
            .unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    let bad = [
        (
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"red/app"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"something else"}}}}"#
            ),
            "critical.type",
        ),
        (
            format!(
                r#"{{"critical":{{"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}}}}"#
            ),
            "no critical.identity",
        ),
        (
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"red/app"}},"image":{{"docker-manifest-digest":"{d}","Docker-Manifest-Digest":"{d}"}},"type":"cosign container image signature"}}}}"#
            ),
            "differ only in case",
        ),
        (
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"red/app"}},"image":{{"docker-manifest-digest":["{d}"]}},"type":"cosign container image signature"}}}}"#
            ),
            "not a string",
        ),
        ("[]".to_owned(), "not a JSON object"),
        ("{\"critical\":".to_owned(), "not JSON"),
    ];
    for (p, why) in bad {
        let mut ev = MemEvidence::default();
        let layer = signed_layer(&mut ev, REPO, &s, p.as_bytes());
        push_tag_signature(&mut ev, REPO, &img, &[layer]);
        let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
        match only_reason(&r) {
            Reason::PayloadInvalid(msg) => assert!(msg.contains(why), "{why}: {msg}"),
            other => panic!("{p}: {other:?}"),
        }
    }
}

/// What a refusal's one reason must satisfy.
type Expect = Box<dyn Fn(&Reason) -> bool>;

fn bundle_layer(ev: &mut MemEvidence, img: &Digest, bundle: &[u8]) -> Digest {
    let (bd, bs) = ev.put_blob(REPO, bundle);
    let layer = Layer {
        digest: bd,
        size: bs,
        signature: None,
        media_type: SIGSTORE_BUNDLE_MEDIA_TYPE,
    };
    let m = manifest(
        &[layer],
        Some(img),
        "application/vnd.oci.empty.v1+json",
        Some(SIGSTORE_BUNDLE_MEDIA_TYPE),
    );
    ev.referrer(REPO, img, &m, SIGSTORE_BUNDLE_MEDIA_TYPE)
}

#[tokio::test]
async fn bundle_refusals() {
    let s = Signer::p256("red-ci");
    let other = Signer::p256("mallory");
    let policy = policy_of(&[&s]);
    let img = image(1);
    let st = statement(&img);
    let pae_sig = s.sign_b64(&pae(IN_TOTO_PAYLOAD_TYPE, &st));
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        // Signed by another key, which the hint names.
        (signed_bundle(&other, &img), Box::new(|r| matches!(r, Reason::UnknownKeyHint(_)))),
        // Another key's signature under our key's hint.
        (
            bundle(&s.hint(), &st, &other.sign_b64(&pae(IN_TOTO_PAYLOAD_TYPE, &st))),
            Box::new(|r| *r == Reason::NoKeyVerifies),
        ),
        // A signature over the bare statement instead of its PAE.
        (bundle(&s.hint(), &st, &s.sign_b64(&st)), Box::new(|r| *r == Reason::NoKeyVerifies)),
        // A valid signature of another image's statement.
        (
            signed_bundle(&s, &image(2)),
            Box::new(|r| matches!(r, Reason::OtherDigest(d) if *d == image(2).to_string())),
        ),
        // The right signature, a statement swapped in afterwards.
        (bundle(&s.hint(), &statement(&image(2)), &pae_sig), Box::new(|r| *r == Reason::NoKeyVerifies)),
        (bundle(&s.hint(), &st, "!!"), Box::new(|r| matches!(r, Reason::BadBase64(_)))),
        (
            br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":"AA=="}},"dsseEnvelope":{}}"#.to_vec(),
            Box::new(|r| *r == Reason::Keyless),
        ),
        (
            String::from_utf8(bundle(&s.hint(), &st, &pae_sig)).unwrap().replace("v0.3+json", "v0.2+json").into_bytes(),
            Box::new(|r| matches!(r, Reason::BundleInvalid(m) if m.contains("mediaType"))),
        ),
        (
            String::from_utf8(bundle(&s.hint(), &st, &pae_sig)).unwrap().replace("dsseEnvelope", "messageSignature").into_bytes(),
            Box::new(|r| matches!(r, Reason::BundleInvalid(m) if m.contains("messageSignature"))),
        ),
    ];
    for (i, (b, expected)) in cases.into_iter().enumerate() {
        let mut ev = MemEvidence::default();
        bundle_layer(&mut ev, &img, &b);
        let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
        assert!(expected(only_reason(&r)), "case {i}: {r}");
    }
    // Statements of the wrong type or predicate, validly signed.
    for (from, to) in [
        (
            "https://in-toto.io/Statement/v1",
            "https://in-toto.io/Statement/v0.1",
        ),
        (
            "https://sigstore.dev/cosign/sign/v1",
            "https://slsa.dev/provenance/v1",
        ),
    ] {
        let st2 = String::from_utf8(st.clone())
            .unwrap()
            .replace(from, to)
            .into_bytes();
        let sig = s.sign_b64(&pae(IN_TOTO_PAYLOAD_TYPE, &st2));
        let mut ev = MemEvidence::default();
        bundle_layer(&mut ev, &img, &bundle(&s.hint(), &st2, &sig));
        let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
        assert!(
            matches!(only_reason(&r), Reason::PayloadInvalid(m) if m.contains(to)),
            "{r}"
        );
    }
}

#[tokio::test]
async fn referrers_are_checked_against_their_digest_subject_and_type() {
    let s = Signer::p256("red-ci");
    let policy = policy_of(&[&s]);
    let img = image(1);
    let p = payload(img.as_str(), REPO);

    // Listed under this image, but its subject is another.
    let mut ev = MemEvidence::default();
    let layer = signed_layer(&mut ev, REPO, &s, &p);
    let m = manifest(
        &[layer],
        Some(&image(2)),
        COSIGN_SIGNATURE_ARTIFACT_TYPE,
        None,
    );
    ev.referrer(REPO, &img, &m, COSIGN_SIGNATURE_ARTIFACT_TYPE);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert!(
        matches!(only_reason(&r), Reason::ManifestInvalid(m) if m.contains("subject")),
        "{r}"
    );

    // Listed as a signature, but it is not one.
    let mut ev = MemEvidence::default();
    let layer = signed_layer(&mut ev, REPO, &s, &p);
    let m = manifest(
        &[layer],
        Some(&img),
        "application/vnd.oci.image.config.v1+json",
        None,
    );
    ev.referrer(REPO, &img, &m, COSIGN_SIGNATURE_ARTIFACT_TYPE);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert!(
        matches!(only_reason(&r), Reason::ManifestInvalid(m) if m.contains("artifact type")),
        "{r}"
    );

    // A referrer whose bytes are not what its digest names.
    let mut ev = MemEvidence::default();
    let layer = signed_layer(&mut ev, REPO, &s, &p);
    let m = manifest(&[layer], Some(&img), COSIGN_SIGNATURE_ARTIFACT_TYPE, None);
    ev.forged_referrer(REPO, &img, &image(9), &m);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert_eq!(only_reason(&r), &Reason::ManifestDigestMismatch);

    // Referrers of other types are not candidates at all.
    let mut ev = MemEvidence::default();
    let layer = signed_layer(&mut ev, REPO, &s, &p);
    let m = manifest(&[layer], Some(&img), "application/spdx+json", None);
    ev.referrer(REPO, &img, &m, "application/spdx+json");
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert!(r.candidates.is_empty());
}

#[tokio::test]
async fn a_failing_store_is_an_error_not_a_refusal() {
    let s = Signer::p256("red-ci");
    let policy = policy_of(&[&s]);
    let ev = MemEvidence::default();
    *ev.fail.lock().unwrap() = true;
    assert!(matches!(
        check(&policy, &ev, &image(1)).await,
        Err(Error::Evidence(_))
    ));
}

#[test]
fn pae_matches_the_dsse_specification() {
    // The example of the DSSE protocol document.
    assert_eq!(
        pae("http://example.com/HelloWorld", b"hello world"),
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    );
    assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
}

// ---------------------------------------------------------------------------------------------
// Policy

#[test]
fn protected_tags_follow_the_globs_of_the_team() {
    let s = Signer::p256("red-ci");
    let policy = policy_of(&[&s]);
    let tag = |t: &str| -> Tag { t.parse().unwrap() };
    assert!(policy.protected("red", &tag("v1.2.3")).is_some());
    assert!(policy.protected("red", &tag("release-2026")).is_some());
    assert!(policy.protected("red", &tag("latest")).is_none());
    assert!(policy.protected("red", &tag("nightly-v1")).is_none());
    assert!(policy.protected("blue", &tag("v1")).is_none());
    let team = policy.team("red").unwrap();
    assert_eq!(
        team.protecting_pattern(&tag("release-1")),
        Some("release-*")
    );
    assert_eq!(team.signed_tags().collect::<Vec<_>>(), ["v*", "release-*"]);
    assert_eq!(team.keys()[0].key_type(), KeyType::EcdsaP256);
    // cosign's own tags are never protected, even by "*".
    let everything = TrustPolicy::parse(&policy_yaml("red", &["*"], &[("k", s.pem())])).unwrap();
    assert!(everything.protected("red", &tag("anything")).is_some());
    let sig = signature_tag(&image(1)).unwrap();
    assert!(is_cosign_tag(&sig));
    assert!(everything.protected("red", &sig).is_none());
    for suffix in ["att", "sbom"] {
        let t = tag(&sig.as_str().replace(".sig", &format!(".{suffix}")));
        assert!(everything.protected("red", &t).is_none());
    }
    for not_cosign in ["sha256-abc.sig", "sha256-.sig", "v1.sig"] {
        assert!(
            everything.protected("red", &tag(not_cosign)).is_some(),
            "{not_cosign}"
        );
    }
    let upper = tag(&sig
        .as_str()
        .to_uppercase()
        .replace("SHA256-", "sha256-")
        .replace(".SIG", ".sig"));
    assert!(everything.protected("red", &upper).is_some());
    // An empty document protects nothing.
    assert!(
        TrustPolicy::parse("teams: {}")
            .unwrap()
            .protected("red", &tag("v1"))
            .is_none()
    );
    // Keys without protected tags are allowed (for `pierone verify`).
    let y = policy_yaml("red", &[], &[("k", s.pem())]);
    let p = TrustPolicy::parse(&y).unwrap();
    assert!(p.protected("red", &tag("v1")).is_none());
    assert_eq!(p.team("red").unwrap().key_names(), ["k"]);
}

fn policy_error(yaml: &str) -> String {
    TrustPolicy::parse(yaml).unwrap_err().to_string()
}

#[test]
fn policy_errors_say_which_team_which_key_and_why() {
    let s = Signer::p256("k");
    let e = policy_error(&policy_yaml(
        "red",
        &["v*"],
        &[("red-ci", "garbage".to_owned())],
    ));
    assert!(e.contains("team red, key red-ci: not a PEM block"), "{e}");

    // A private key pasted by mistake.
    let private =
        spki::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, b"\x30\x00").unwrap();
    let e = policy_error(&policy_yaml("red", &["v*"], &[("red-ci", private)]));
    assert!(e.contains("key red-ci: a PEM \"PRIVATE KEY\" block"), "{e}");

    // A PUBLIC KEY block with garbage inside.
    let junk = pem_of_spki(b"\x01\x02\x03");
    let e = policy_error(&policy_yaml("red", &["v*"], &[("red-ci", junk)]));
    assert!(e.contains("key red-ci: not a SubjectPublicKeyInfo"), "{e}");

    // P-384: unsupported.
    let p384 = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_ASN1_SIGNING).unwrap();
    let pem = pem_of_spki(p384.public_key().as_der().unwrap().as_ref());
    let e = policy_error(&policy_yaml("blue", &["v*"], &[("big", pem)]));
    assert!(
        e.contains("team blue, key big: unsupported key type: ECDSA on curve P-384"),
        "{e}"
    );

    let e = policy_error(&policy_yaml(
        "red",
        &["v*"],
        &[("a", s.pem()), ("a", s.pem())],
    ));
    assert!(e.contains("key a: listed twice"), "{e}");

    let e = policy_error(&policy_yaml("red", &["v*"], &[]));
    assert!(
        e.contains("team red: protects tags but lists no keys"),
        "{e}"
    );

    for (pattern, why) in [
        ("v/*", "'/' cannot occur in a tag"),
        ("[v]*", "'[' cannot occur"),
        ("", "empty pattern"),
        ("-rc*", "a tag cannot start with"),
    ] {
        let e = policy_error(&policy_yaml("red", &[pattern], &[("a", s.pem())]));
        assert!(
            e.contains(&format!("team red: signed-tags pattern {pattern:?}: {why}")),
            "{e}"
        );
    }

    let e = policy_error("teams:\n  red:\n    signed_tags: ['v*']\n");
    assert!(e.contains("unknown field `signed_tags`"), "{e}");
    let e = policy_error("teams: [red]");
    assert!(e.starts_with("trust policy: "), "{e}");
}

fn touch(path: &std::path::Path, at: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

#[test]
fn the_policy_file_reloads_on_change_and_keeps_the_last_good_one() {
    let (a, b) = (Signer::p256("a"), Signer::ed25519("b"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trust.yaml");
    assert!(matches!(
        TrustPolicyFile::open(&path),
        Err(Error::PolicyFile { .. })
    ));
    std::fs::write(
        &path,
        policy_yaml("red", &["v*"], &[("a", a.pem()), ("b", b.pem())]),
    )
    .unwrap();
    let file = TrustPolicyFile::open(&path).unwrap();
    let v1: Tag = "v1".parse().unwrap();
    assert_eq!(
        file.current().protected("red", &v1).unwrap().key_names(),
        ["a", "b"]
    );

    // A key removed: seen after the next check.
    std::fs::write(&path, policy_yaml("red", &["v*"], &[("b", b.pem())])).unwrap();
    let later = SystemTime::now() + Duration::from_secs(5);
    touch(&path, later);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        file.current().protected("red", &v1).unwrap().key_names(),
        ["b"]
    );

    // A broken edit keeps the last good policy.
    std::fs::write(&path, "teams: [broken").unwrap();
    touch(&path, later + Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        file.current().protected("red", &v1).unwrap().key_names(),
        ["b"]
    );

    // And a fixed one is picked up again.
    std::fs::write(&path, "teams: {}\n").unwrap();
    touch(&path, later + Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1100));
    assert!(file.current().protected("red", &v1).is_none());
}
