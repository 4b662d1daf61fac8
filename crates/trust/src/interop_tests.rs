//! Interoperability with real tooling: keys generated and signatures made by the `openssl`
//! command line (as a cosign user would with `openssl dgst -sha256 -sign`), in cosign's
//! on-registry formats, verified by this crate.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tests::{
    Layer, MemEvidence, REPO, bundle, check, image, manifest, only_reason, payload, policy_yaml,
    refusal, statement,
};
use crate::*;

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A private key made by openssl, and its `PUBLIC KEY` PEM.
struct OpensslKey {
    dir: PathBuf,
    private: String,
    kind: &'static str,
}

impl OpensslKey {
    fn generate(dir: &Path, kind: &'static str) -> OpensslKey {
        let private = format!("{kind}.key");
        match kind {
            // Two ways a cosign user might make a P-256 key.
            "ecparam" => {
                openssl(
                    dir,
                    &[
                        "ecparam",
                        "-name",
                        "prime256v1",
                        "-genkey",
                        "-noout",
                        "-out",
                        &private,
                    ],
                );
            }
            "p256" => {
                openssl(
                    dir,
                    &[
                        "genpkey",
                        "-algorithm",
                        "EC",
                        "-pkeyopt",
                        "ec_paramgen_curve:P-256",
                        "-out",
                        &private,
                    ],
                );
            }
            "ed25519" => {
                openssl(dir, &["genpkey", "-algorithm", "ed25519", "-out", &private]);
            }
            "rsa" | "rsa-pss" => {
                openssl(
                    dir,
                    &[
                        "genpkey",
                        "-algorithm",
                        "RSA",
                        "-pkeyopt",
                        "rsa_keygen_bits:2048",
                        "-out",
                        &private,
                    ],
                );
            }
            "rsa1024" => {
                openssl(
                    dir,
                    &[
                        "genpkey",
                        "-algorithm",
                        "RSA",
                        "-pkeyopt",
                        "rsa_keygen_bits:1024",
                        "-out",
                        &private,
                    ],
                );
            }
            "p384" => {
                openssl(
                    dir,
                    &[
                        "genpkey",
                        "-algorithm",
                        "EC",
                        "-pkeyopt",
                        "ec_paramgen_curve:P-384",
                        "-out",
                        &private,
                    ],
                );
            }
            other => panic!("{other}"),
        }
        OpensslKey {
            dir: dir.to_owned(),
            private,
            kind,
        }
    }

    fn public_pem(&self) -> String {
        String::from_utf8(openssl(
            &self.dir,
            &["pkey", "-in", &self.private, "-pubout"],
        ))
        .unwrap()
    }

    /// The base64 signature of `message`, as `openssl dgst -sha256 -sign key | base64` gives it.
    fn sign_b64(&self, message: &[u8]) -> String {
        let input = format!("{}.msg", self.kind);
        let sig = format!("{}.sig", self.kind);
        std::fs::write(self.dir.join(&input), message).unwrap();
        match self.kind {
            // Ed25519 signs the message itself: no digest step.
            "ed25519" => {
                openssl(
                    &self.dir,
                    &[
                        "pkeyutl",
                        "-sign",
                        "-inkey",
                        &self.private,
                        "-rawin",
                        "-in",
                        &input,
                        "-out",
                        &sig,
                    ],
                );
            }
            "rsa-pss" => {
                openssl(
                    &self.dir,
                    &[
                        "dgst",
                        "-sha256",
                        "-sign",
                        &self.private,
                        "-sigopt",
                        "rsa_padding_mode:pss",
                        "-sigopt",
                        "rsa_pss_saltlen:digest",
                        "-out",
                        &sig,
                        &input,
                    ],
                );
            }
            _ => {
                openssl(
                    &self.dir,
                    &[
                        "dgst",
                        "-sha256",
                        "-sign",
                        &self.private,
                        "-out",
                        &sig,
                        &input,
                    ],
                );
            }
        }
        let b64 = openssl(&self.dir, &["base64", "-A", "-in", &sig]);
        String::from_utf8(b64).unwrap().trim().to_owned()
    }

    /// base64(SHA-256(DER SubjectPublicKeyInfo)), computed by openssl.
    fn hint(&self) -> String {
        let der = format!("{}.pub.der", self.kind);
        openssl(
            &self.dir,
            &[
                "pkey",
                "-in",
                &self.private,
                "-pubout",
                "-outform",
                "DER",
                "-out",
                &der,
            ],
        );
        let hash = format!("{}.pub.sha256", self.kind);
        openssl(
            &self.dir,
            &["dgst", "-sha256", "-binary", "-out", &hash, &der],
        );
        String::from_utf8(openssl(&self.dir, &["base64", "-A", "-in", &hash]))
            .unwrap()
            .trim()
            .to_owned()
    }
}

#[tokio::test]
async fn openssl_keys_and_signatures_verify_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let kinds = ["ecparam", "p256", "ed25519", "rsa", "rsa-pss"];
    let keys: Vec<OpensslKey> = kinds
        .iter()
        .map(|k| OpensslKey::generate(dir.path(), k))
        .collect();
    let entries: Vec<(&str, String)> = keys.iter().map(|k| (k.kind, k.public_pem())).collect();
    let policy = TrustPolicy::parse(&policy_yaml("red", &["v*"], &entries)).unwrap();
    for (n, key) in keys.iter().enumerate() {
        assert_eq!(
            policy.team("red").unwrap().keys()[n].hint(),
            key.hint(),
            "{}",
            key.kind
        );
        let img = image(n as u8);

        // Tag scheme: the payload signed by `openssl dgst -sha256 -sign`.
        let p = payload(img.as_str(), &format!("localhost:5000/{REPO}"));
        let mut ev = MemEvidence::default();
        let (d, size) = ev.put_blob(REPO, &p);
        let m = manifest(
            &[Layer::simple(d, size, key.sign_b64(&p))],
            None,
            "application/vnd.oci.image.config.v1+json",
            None,
        );
        ev.tag(REPO, signature_tag(&img).unwrap().as_str(), &m);
        let v = check(&policy, &ev, &img).await.unwrap();
        assert_eq!(
            (v.key_name.as_str(), v.format),
            (key.kind, Format::CosignTag)
        );

        // OCI 1.1 referrer.
        let mut ev = MemEvidence::default();
        let (d, size) = ev.put_blob(REPO, &p);
        let m = manifest(
            &[Layer::simple(d, size, key.sign_b64(&p))],
            Some(&img),
            COSIGN_SIGNATURE_ARTIFACT_TYPE,
            Some(COSIGN_SIGNATURE_ARTIFACT_TYPE),
        );
        ev.referrer(REPO, &img, &m, COSIGN_SIGNATURE_ARTIFACT_TYPE);
        let v = check(&policy, &ev, &img).await.unwrap();
        assert_eq!(
            (v.key_name.as_str(), v.format),
            (key.kind, Format::CosignReferrer)
        );

        // Sigstore bundle: openssl signs the PAE; the hint is openssl's hash of the key.
        let st = statement(&img);
        let b = bundle(
            &key.hint(),
            &st,
            &key.sign_b64(&pae(IN_TOTO_PAYLOAD_TYPE, &st)),
        );
        let mut ev = MemEvidence::default();
        let (d, size) = ev.put_blob(REPO, &b);
        let layer = Layer {
            digest: d,
            size,
            signature: None,
            media_type: SIGSTORE_BUNDLE_MEDIA_TYPE,
        };
        let m = manifest(
            &[layer],
            Some(&img),
            "application/vnd.oci.empty.v1+json",
            Some(SIGSTORE_BUNDLE_MEDIA_TYPE),
        );
        ev.referrer(REPO, &img, &m, SIGSTORE_BUNDLE_MEDIA_TYPE);
        let v = check(&policy, &ev, &img).await.unwrap();
        assert_eq!(
            (v.key_name.as_str(), v.format),
            (key.kind, Format::SigstoreBundle)
        );
    }

    // An openssl signature by a key the policy does not list is refused.
    let outsider = OpensslKey::generate(&dir.path().join("."), "p384");
    let img = image(1);
    let p = payload(img.as_str(), REPO);
    let mut ev = MemEvidence::default();
    let (d, size) = ev.put_blob(REPO, &p);
    let m = manifest(
        &[Layer::simple(d, size, outsider.sign_b64(&p))],
        None,
        "application/vnd.oci.image.config.v1+json",
        None,
    );
    ev.tag(REPO, signature_tag(&img).unwrap().as_str(), &m);
    let r = refusal(check(&policy, &ev, &img).await.unwrap_err());
    assert_eq!(only_reason(&r), &Reason::NoKeyVerifies);
}

#[test]
fn openssl_keys_the_policy_refuses() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, why) in [
        ("rsa1024", "RSA key of 1024 bits"),
        ("p384", "unsupported key type: ECDSA on curve P-384"),
    ] {
        let key = OpensslKey::generate(dir.path(), kind);
        let e = TrustPolicy::parse(&policy_yaml("red", &["v*"], &[("k", key.public_pem())]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("team red, key k: {why}")), "{e}");
    }
    // The private key itself, pasted instead of the public one.
    let key = OpensslKey::generate(dir.path(), "p256");
    let private = std::fs::read_to_string(dir.path().join(&key.private)).unwrap();
    let e = TrustPolicy::parse(&policy_yaml("red", &["v*"], &[("k", private)]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("key k: a PEM \"PRIVATE KEY\" block"), "{e}");
}
