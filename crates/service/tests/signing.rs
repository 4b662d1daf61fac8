//! Signed releases at tag time (issue #14) on the in-memory stores: a protected tag is only
//! written for a manifest signed by one of the team's keys (cosign's tag scheme or an OCI 1.1
//! referrer), with signatures made here by aws-lc-rs P-256 keys in cosign's format.

// Helpers of tests panic on what a test would: a failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use pierone_service::protocol::{Digest, Reference, RepoName, media_types};
use pierone_service::trust::TrustPolicyFile;
use pierone_service::{
    Caller, Config, Error, MemoryBlobStore, MemoryTagStore, Service, TagOutcome,
};

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const COSIGN_SIG_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

struct Key {
    name: &'static str,
    pair: EcdsaKeyPair,
}

impl Key {
    fn new(name: &'static str) -> Key {
        Key {
            name,
            pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap(),
        }
    }

    fn pem(&self) -> String {
        let der = self.pair.public_key().as_der().unwrap();
        let b64 = STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    fn sign_b64(&self, message: &[u8]) -> String {
        let sig = self.pair.sign(&SystemRandom::new(), message).unwrap();
        STANDARD.encode(sig.as_ref())
    }
}

fn policy_yaml(keys: &[&Key]) -> String {
    let mut y = String::from("teams:\n  team:\n    signed-tags: [\"v*\"]\n    keys:\n");
    for k in keys {
        y.push_str(&format!("      - name: {}\n        pem: |\n", k.name));
        for line in k.pem().lines() {
            y.push_str(&format!("          {line}\n"));
        }
    }
    y
}

/// A service whose trust policy (in `dir`) protects `v*` of team `team` with `keys`.
fn service(dir: &Path, keys: &[&Key]) -> Service {
    let path = dir.join("trust-policy.yaml");
    std::fs::write(&path, policy_yaml(keys)).unwrap();
    Service::new(
        Arc::new(MemoryBlobStore::new()),
        Arc::new(MemoryTagStore::new()),
        Config {
            trust_policy: Some(Arc::new(TrustPolicyFile::open(&path).unwrap())),
            ..Config::default()
        },
    )
}

fn repo() -> RepoName {
    "team/app".parse().unwrap()
}

async fn push(service: &Service, bytes: &[u8]) -> (Digest, usize) {
    let digest = Digest::sha256_of(bytes);
    let body =
        futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::copy_from_slice(bytes))]);
    service
        .push_blob(&repo(), &digest, Some(bytes.len() as u64), body)
        .await
        .unwrap();
    (digest, bytes.len())
}

/// An OCI image manifest over stored blobs, with a subject and artifact type when given.
async fn manifest(
    service: &Service,
    layers: &[serde_json::Value],
    subject: Option<&Digest>,
    artifact_type: Option<&str>,
) -> Bytes {
    let (config, size) = push(service, b"{}").await;
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.as_str(),
            "size": size,
        },
        "layers": layers,
    });
    if let Some(s) = subject {
        m["subject"] = serde_json::json!({
            "mediaType": media_types::OCI_MANIFEST,
            "digest": s.as_str(),
            "size": 1,
        });
    }
    if let Some(a) = artifact_type {
        m["artifactType"] = a.into();
    }
    Bytes::from(m.to_string())
}

async fn image(service: &Service, seed: &str) -> Bytes {
    let layer = format!("layer of {seed}");
    let (d, size) = push(service, layer.as_bytes()).await;
    manifest(
        service,
        &[serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d.as_str(),
            "size": size,
        })],
        None,
        None,
    )
    .await
}

/// cosign's simple-signing layer for `image`, signed by `key`, its payload stored.
async fn signed_layer(service: &Service, key: &Key, image: &Digest) -> serde_json::Value {
    let payload = serde_json::json!({
        "critical": {
            "identity": {"docker-reference": "127.0.0.1:5000/team/app"},
            "image": {"docker-manifest-digest": image.as_str()},
            "type": "cosign container image signature",
        },
        "optional": null,
    })
    .to_string();
    let (d, size) = push(service, payload.as_bytes()).await;
    serde_json::json!({
        "mediaType": SIMPLE_SIGNING,
        "digest": d.as_str(),
        "size": size,
        "annotations": {"dev.cosignproject.cosign/signature": key.sign_b64(payload.as_bytes())},
    })
}

async fn put(
    service: &Service,
    r: &str,
    body: Bytes,
) -> Result<pierone_service::PutOutcome, Error> {
    let reference: Reference = r.parse().unwrap();
    service
        .put_manifest(
            &repo(),
            &reference,
            &Caller::new("/services", "ci"),
            Some(media_types::OCI_MANIFEST),
            body,
            None,
        )
        .await
}

/// Push `image` by digest and its tag-scheme signature by `key`.
async fn sign_with_tag(service: &Service, key: &Key, image: &Bytes) -> Digest {
    let digest = Digest::sha256_of(image);
    put(service, digest.as_str(), image.clone()).await.unwrap();
    let layer = signed_layer(service, key, &digest).await;
    let sig = manifest(service, &[layer], None, None).await;
    let sig_tag = format!("sha256-{}.sig", digest.hex());
    assert_eq!(
        put(service, &sig_tag, sig).await.unwrap().tag,
        Some(TagOutcome::Created)
    );
    digest
}

async fn tag_of(service: &Service, tag: &str) -> Option<Digest> {
    service
        .resolve_tag(&repo(), &tag.parse().unwrap())
        .await
        .unwrap()
}

fn refusal_message(e: Error) -> String {
    match e {
        Error::SignatureRequired(r) => r.to_string(),
        other => panic!("expected a refusal for lack of a signature, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unsigned_manifest_under_a_protected_tag_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (ci, release) = (Key::new("team-ci"), Key::new("team-release"));
    let s = service(dir.path(), &[&ci, &release]);
    let img = image(&s, "unsigned").await;
    let digest = Digest::sha256_of(&img);
    let message = refusal_message(put(&s, "v1.0", img).await.unwrap_err());
    for part in ["v1.0", digest.as_str(), "team-ci", "team-release"] {
        assert!(message.contains(part), "{part} not in {message}");
    }
    assert_eq!(tag_of(&s, "v1.0").await, None);
    assert!(matches!(
        s.get_manifest(&repo(), &Reference::Digest(digest)).await,
        Err(Error::ManifestUnknown(..))
    ));
}

#[tokio::test]
async fn a_tag_scheme_signature_by_a_listed_key_allows_the_protected_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (ci, release) = (Key::new("team-ci"), Key::new("team-release"));
    let s = service(dir.path(), &[&ci, &release]);
    let img = image(&s, "signed").await;
    let digest = sign_with_tag(&s, &release, &img).await;
    let out = put(&s, "v1.0", img).await.unwrap();
    assert_eq!(out.tag, Some(TagOutcome::Created));
    assert_eq!(tag_of(&s, "v1.0").await, Some(digest));
}

#[tokio::test]
async fn an_oci_referrer_signature_by_a_listed_key_allows_the_protected_tag() {
    let dir = tempfile::tempdir().unwrap();
    let ci = Key::new("team-ci");
    let s = service(dir.path(), &[&ci]);
    let img = image(&s, "referred").await;
    let digest = Digest::sha256_of(&img);
    put(&s, digest.as_str(), img.clone()).await.unwrap();
    let layer = signed_layer(&s, &ci, &digest).await;
    let sig = manifest(&s, &[layer], Some(&digest), Some(COSIGN_SIG_TYPE)).await;
    let sig_digest = Digest::sha256_of(&sig);
    put(&s, sig_digest.as_str(), sig).await.unwrap();
    assert_eq!(
        put(&s, "v2", img).await.unwrap().tag,
        Some(TagOutcome::Created)
    );
    assert_eq!(tag_of(&s, "v2").await, Some(digest));
}

#[tokio::test]
async fn a_signature_by_a_key_not_in_the_policy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ci, stranger) = (Key::new("team-ci"), Key::new("stranger"));
    let s = service(dir.path(), &[&ci]);
    let img = image(&s, "stranger").await;
    let digest = sign_with_tag(&s, &stranger, &img).await;
    let message = refusal_message(put(&s, "v1.0", img).await.unwrap_err());
    assert!(message.contains("team-ci"), "{message}");
    assert!(message.contains(digest.as_str()), "{message}");
    assert!(!message.contains("stranger"), "{message}");
    assert_eq!(tag_of(&s, "v1.0").await, None);
}

#[tokio::test]
async fn unprotected_tags_and_pushes_by_digest_need_no_signature() {
    let dir = tempfile::tempdir().unwrap();
    let ci = Key::new("team-ci");
    let s = service(dir.path(), &[&ci]);
    let img = image(&s, "build").await;
    let digest = Digest::sha256_of(&img);
    assert_eq!(
        put(&s, digest.as_str(), img.clone()).await.unwrap().tag,
        None
    );
    assert_eq!(
        put(&s, "build-17", img).await.unwrap().tag,
        Some(TagOutcome::Created)
    );
    assert_eq!(tag_of(&s, "build-17").await, Some(digest));
    // Another team's repository: its team is not in the policy.
    let other: RepoName = "blue/app".parse().unwrap();
    let img = image(&s, "blue").await;
    let out = s
        .put_manifest(
            &other,
            &"v1.0".parse().unwrap(),
            &Caller::anonymous(),
            Some(media_types::OCI_MANIFEST),
            img,
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.tag, Some(TagOutcome::Created));
}

#[tokio::test]
async fn an_identical_re_push_of_a_protected_tag_passes_after_its_key_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (ci, next) = (Key::new("team-ci"), Key::new("team-next"));
    let s = service(dir.path(), &[&ci]);
    let img = image(&s, "again").await;
    sign_with_tag(&s, &ci, &img).await;
    assert_eq!(
        put(&s, "v1.0", img.clone()).await.unwrap().tag,
        Some(TagOutcome::Created)
    );

    // The policy now trusts another key only: the signature that allowed v1.0 no longer
    // counts. The file's time is set ahead so the change is seen whatever the clock's grain.
    let path = dir.path().join("trust-policy.yaml");
    std::fs::write(&path, policy_yaml(&[&next])).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(10))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let message = refusal_message(put(&s, "v1.1", img.clone()).await.unwrap_err());
    assert!(message.contains("team-next"), "{message}");
    assert_eq!(
        put(&s, "v1.0", img).await.unwrap().tag,
        Some(TagOutcome::Unchanged)
    );
}
