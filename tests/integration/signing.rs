//! Signed releases at tag time (issue #14) through the real server binary: `--trust-policy`
//! with a P-256 key made by `openssl`, a cosign tag-scheme signature made by
//! `openssl dgst -sha256 -sign` over the simple-signing payload, and the policy's reload.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use pierone_protocol::Digest;
use pierone_protocol::media_types::OCI_MANIFEST;
use reqwest::StatusCode;
use serde_json::json;

use crate::util::{Client, Process, oci_error};

/// Run `openssl` with `args`, failing the test with its stderr if it fails.
fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A P-256 key pair in `dir` as `<name>.key` and its public half as PEM text.
fn p256_key(dir: &Path, name: &str) -> String {
    let key = dir.join(format!("{name}.key"));
    let key = key.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        key,
    ]);
    String::from_utf8(openssl(&["pkey", "-in", key, "-pubout"])).unwrap()
}

fn policy_yaml(keys: &[(&str, &str)]) -> String {
    let mut y = String::from("teams:\n  red:\n    signed-tags: [\"v*\"]\n    keys:\n");
    for (name, pem) in keys {
        y.push_str(&format!("      - name: {name}\n        pem: |\n"));
        for line in pem.lines() {
            y.push_str(&format!("          {line}\n"));
        }
    }
    y
}

/// Write the policy file with a modification time ahead of the last, so a reload sees it
/// whatever the file system's time grain.
fn write_policy(path: &Path, text: &str, ahead: u64) {
    std::fs::write(path, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(ahead))
        .unwrap();
}

/// cosign's tag-scheme signature manifest for `image` in `repo`, signed with `<key>.key`
/// in `dir` by openssl; its blobs are pushed.
async fn cosign_signature(
    c: &Client,
    dir: &Path,
    key: &str,
    repo: &str,
    image: &Digest,
) -> Vec<u8> {
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": format!("127.0.0.1:5000/{repo}")},
            "image": {"docker-manifest-digest": image.as_str()},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap();
    let payload_path = dir.join("payload.json");
    std::fs::write(&payload_path, &payload).unwrap();
    let key_path = dir.join(format!("{key}.key"));
    let der = openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        key_path.to_str().unwrap(),
        payload_path.to_str().unwrap(),
    ]);
    let signature = base64::engine::general_purpose::STANDARD.encode(der);
    let config = c.push_blob(repo, b"{}").await;
    let layer = c.push_blob(repo, &payload).await;
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.as_str(), "size": 2},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": layer.as_str(),
            "size": payload.len(),
            "annotations": {"dev.cosignproject.cosign/signature": signature},
        }],
    }))
    .unwrap()
}

#[tokio::test]
async fn a_protected_tag_needs_a_signature_by_a_listed_key_and_a_broken_edit_keeps_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (ci, release) = (
        p256_key(dir.path(), "red-ci"),
        p256_key(dir.path(), "red-release"),
    );
    let policy = dir.path().join("trust-policy.yaml");
    write_policy(
        &policy,
        &policy_yaml(&[("red-ci", &ci), ("red-release", &release)]),
        0,
    );
    let data = dir.path().join("data");
    let server = Process::start(&data, &["--trust-policy", policy.to_str().unwrap()]);
    let c = Client::new(&server.url);
    let repo = "red/app";

    let image = c.image(repo, "release").await;
    let digest = Digest::sha256_of(&image);
    let r = c
        .put_manifest(repo, digest.as_str(), OCI_MANIFEST, &image)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let r = c.put_manifest(repo, "v1.0", OCI_MANIFEST, &image).await;
    let e = oci_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    for part in ["v1.0", digest.as_str(), "red-ci", "red-release"] {
        assert!(e.message.contains(part), "{part} not in {}", e.message);
    }
    assert_eq!(e.detail["accepted_keys"], json!(["red-ci", "red-release"]));
    assert_eq!(e.detail["digest"], json!(digest.as_str()));
    assert_eq!(
        c.get(&format!("/v2/{repo}/manifests/v1.0")).await.status(),
        StatusCode::NOT_FOUND
    );

    // cosign's tag scheme, signed by openssl with the release key.
    let sig = cosign_signature(&c, dir.path(), "red-release", repo, &digest).await;
    let sig_tag = format!("sha256-{}.sig", digest.hex());
    let r = c.put_manifest(repo, &sig_tag, OCI_MANIFEST, &sig).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let r = c.put_manifest(repo, "v1.0", OCI_MANIFEST, &image).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let sig_digest = Digest::sha256_of(&sig);
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("tag written") && l.contains("tag=v1.0"))
        .unwrap_or_else(|| panic!("no log line of v1.0:\n{log}"));
    assert!(line.contains("signed_by=red-release"), "{line}");
    assert!(line.contains(sig_digest.as_str()), "{line}");
    // Identical re-push: unchanged, still 201.
    let r = c.put_manifest(repo, "v1.0", OCI_MANIFEST, &image).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // A broken edit: the last good policy stays, so an unsigned v2.0 is still refused.
    write_policy(&policy, "teams:\n  red:\n    signed-tags: [\"v*\"\n", 10);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unsigned = c.image(repo, "next").await;
    let r = c.put_manifest(repo, "v2.0", OCI_MANIFEST, &unsigned).await;
    let e = oci_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert!(e.message.contains("v2.0"), "{}", e.message);
    assert!(e.message.contains("red-ci"), "{}", e.message);
    assert!(
        server
            .log()
            .contains("trust policy changed but is not valid"),
        "{}",
        server.log()
    );
    // An unprotected tag of the same manifest is unaffected.
    let r = c
        .put_manifest(repo, "build-2", OCI_MANIFEST, &unsigned)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[test]
fn a_broken_policy_at_start_up_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("trust-policy.yaml");
    std::fs::write(
        &policy,
        "teams:\n  red:\n    signed-tags: [\"v*\"]\n    keys:\n      - name: red-ci\n        pem: not a key\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pierone-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--trust-policy")
        .arg(&policy)
        .env("PIERONE_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started:\n{stderr}");
    assert!(!stderr.contains("pierone-server ready"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("red-ci"), "{last}");
}
