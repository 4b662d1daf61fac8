//! `pierone-server scrub` as operators run it: against the stores of a running server (the
//! filesystem and SQLite, or S3), after bytes under a digest were replaced behind the
//! registry's back; with `--quarantine`, the pull answer, the audit log and the repair.

use std::process::Command;

use pierone_protocol::Digest;
use pierone_s3::test_server::{ACCESS_KEY, SECRET_KEY, TestS3};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::audit::{checkpoint_of, ed25519_key};
use crate::cli::pierone;
use crate::util::{Client, OCI_MANIFEST, Process, oci_error};

struct Scrub {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `pierone-server scrub <args>` to its end.
async fn scrub(args: &[&str], env: &[(&str, &str)]) -> Scrub {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_pierone-server"))
            .arg("scrub")
            .args(&args)
            .envs(env)
            .output()
            .unwrap();
        Scrub {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// The bytes `Client::image` pushes as the layer of `seed`.
fn layer_of(seed: &str) -> Vec<u8> {
    format!("layer of {seed}").repeat(100).into_bytes()
}

/// Push `team/app:1.0` (seed a) and `team/app:2.0` (seed b); returns the manifest digest
/// of 1.0.
async fn push_two_images(c: &Client) -> String {
    let mut digests = Vec::new();
    for (tag, seed) in [("1.0", "a"), ("2.0", "b")] {
        let m = c.image("team/app", seed).await;
        let r = c.put_manifest("team/app", tag, OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        digests.push(crate::util::header(&r, "Docker-Content-Digest").unwrap());
    }
    digests.swap_remove(0)
}

/// A pull of `digest` is refused with the quarantine's explanation.
async fn pull_is_quarantined(c: &Client, digest: &Digest) {
    let path = format!("/v2/team/app/blobs/{digest}");
    let err = oci_error(c.get(&path).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert!(
        err.message.contains("quarantined")
            && err.message.contains("by scrub")
            && err.message.contains("did not match its digest"),
        "{err:?}"
    );
    assert_eq!(err.detail["digest"], digest.as_str());
    let head = c.req(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
}

/// The honest owner pushes the correct bytes again: the digest is served again.
async fn repush_restores(c: &Client, layer: &[u8]) {
    let digest = c.push_blob("team/app", layer).await;
    let r = c.get(&format!("/v2/team/app/blobs/{digest}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(&r.bytes().await.unwrap()[..], layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_finds_quarantines_and_a_repush_repairs_on_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_key(dir.path());
    let data = dir.path().join("data");
    let p = Process::start(
        &data,
        &[
            "--audit-signing-key",
            key.to_str().unwrap(),
            "--audit-checkpoint-interval",
            "100ms",
        ],
    );
    let c = Client::new(&p.url);
    let manifest = push_two_images(&c).await;
    let data_dir = data.to_str().unwrap();

    let clean = scrub(&["--data-dir", data_dir], &[]).await;
    assert_eq!(clean.code, Some(0), "{}{}", clean.stdout, clean.stderr);
    assert!(
        clean
            .stdout
            .contains("scrub: 4 blobs checked, 2096 bytes, 0 mismatches"),
        "{}",
        clean.stdout
    );

    // Someone (the upload race, or a disk) replaced the bytes of layer a.
    let layer = layer_of("a");
    let digest = Digest::sha256_of(&layer);
    let file = data
        .join("blobs/sha256")
        .join(&digest.hex()[..2])
        .join(digest.hex());
    let planted = b"not the layer the digest promises".to_vec();
    std::fs::write(&file, &planted).unwrap();

    let found = scrub(&["--data-dir", data_dir], &[]).await;
    assert_eq!(found.code, Some(1), "{}{}", found.stdout, found.stderr);
    assert!(
        found.stdout.contains(&format!(
            "MISMATCH {digest} ({} bytes): the stored bytes hash to {}",
            planted.len(),
            Digest::sha256_of(&planted)
        )) && found.stdout.contains(&format!(
            "needed by team/app@{manifest} (tags team/app:1.0)"
        )) && found.stdout.contains("1 mismatches"),
        "{}",
        found.stdout
    );
    assert!(!found.stdout.contains("team/app:2.0"), "{}", found.stdout);
    // Only reported: still stored, nothing logged.
    assert!(file.exists());

    let quarantined = scrub(&["--data-dir", data_dir, "--quarantine"], &[]).await;
    assert_eq!(
        quarantined.code,
        Some(1),
        "{}{}",
        quarantined.stdout,
        quarantined.stderr
    );
    assert!(
        quarantined.stdout.contains("1 mismatches, 1 quarantined")
            && quarantined.stdout.contains("quarantined: moved to"),
        "{}",
        quarantined.stdout
    );
    assert!(!file.exists());
    // The evidence is kept.
    let kept: Vec<_> = std::fs::read_dir(data.join("quarantine/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(digest.hex())
    );
    assert_eq!(std::fs::read(&kept[0]).unwrap(), planted);

    pull_is_quarantined(&c, &digest).await;
    let again = scrub(&["--data-dir", data_dir], &[]).await;
    assert_eq!(again.code, Some(0), "{}", again.stdout);

    // The audit log records the quarantine after the two assignments, and still verifies.
    let log: Value = c.get("/audit/log").await.json().await.unwrap();
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{log}");
    assert!(
        entries[0].get("kind").is_none(),
        "assignments look as before"
    );
    let q = &entries[2];
    assert_eq!(
        (
            &q["kind"],
            &q["repository"],
            &q["tag"],
            &q["digest"],
            &q["principal"]
        ),
        (
            &Value::from("quarantine"),
            &Value::from("team/app"),
            &Value::from("1.0"),
            &Value::from(digest.as_str()),
            &Value::from("scrub")
        )
    );
    let cp = checkpoint_of(&c, 3).await;
    let key = cp["public_key"].as_str().unwrap().to_owned();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let verify = pierone(
        &home,
        &[],
        &["--url", &p.url, "audit", "verify", "--public-key", &key],
    )
    .await;
    assert!(verify.ok, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains("3 entries verified") && verify.stdout.contains("signature valid"),
        "{}",
        verify.stdout
    );
    let history = pierone(
        &home,
        &[],
        &[
            "--url", &p.url, "-o", "json", "audit", "history", "team", "app", "1.0",
        ],
    )
    .await;
    assert!(history.ok, "{}", history.stderr);
    let rows: Vec<Value> = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (&rows[0]["kind"], &rows[1]["kind"]),
        (&Value::from("tag"), &Value::from("quarantine"))
    );
    // What the tag names is still proven by its assignment, not by the quarantine.
    let proven = pierone(
        &home,
        &[],
        &[
            "--url",
            &p.url,
            "audit",
            "prove",
            "team",
            "app",
            "1.0",
            "--public-key",
            &key,
        ],
    )
    .await;
    assert!(proven.ok, "{}", proven.stderr);
    assert!(
        proven
            .stdout
            .contains(&format!("team/app:1.0 = {manifest}"))
            && proven.stdout.contains("(entry 1)"),
        "{}",
        proven.stdout
    );

    repush_restores(&c, &layer).await;
    let repaired = scrub(&["--data-dir", data_dir], &[]).await;
    assert_eq!(repaired.code, Some(0), "{}", repaired.stdout);
    assert!(
        repaired.stdout.contains("4 blobs checked"),
        "{}",
        repaired.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_finds_and_quarantines_on_s3() {
    let s3 = TestS3::start("scrub").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stores = [
        "--data-dir",
        data.to_str().unwrap(),
        "--blob-store",
        "s3",
        "--s3-bucket",
        &s3.bucket,
        "--s3-endpoint",
        &s3.endpoint,
        "--s3-prefix",
        "registry/",
    ];
    let env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
    ];
    let p = Process::start_with_env(&data, &stores[2..], &env);
    let c = Client::new(&p.url);
    let manifest = push_two_images(&c).await;

    let layer = layer_of("b");
    let digest = Digest::sha256_of(&layer);
    let key = format!(
        "registry/blobs/sha256/{}/{}",
        &digest.hex()[..2],
        digest.hex()
    );
    let planted = b"planted in the bucket".to_vec();
    s3.client
        .put_object()
        .bucket(&s3.bucket)
        .key(&key)
        .body(planted.clone().into())
        .send()
        .await
        .unwrap();

    let found = scrub(&stores, &env).await;
    assert_eq!(found.code, Some(1), "{}{}", found.stdout, found.stderr);
    assert!(
        found.stdout.contains(&format!("MISMATCH {digest}"))
            && found.stdout.contains("(tags team/app:2.0)")
            && found.stdout.contains("4 blobs checked"),
        "{}",
        found.stdout
    );
    assert!(
        !found.stdout.contains(&manifest),
        "1.0 does not need it: {}",
        found.stdout
    );

    let mut with_quarantine = stores.to_vec();
    with_quarantine.push("--quarantine");
    let quarantined = scrub(&with_quarantine, &env).await;
    assert_eq!(
        quarantined.code,
        Some(1),
        "{}{}",
        quarantined.stdout,
        quarantined.stderr
    );
    assert!(
        quarantined.stdout.contains(&format!(
            "quarantined: moved to s3://{}/registry/quarantine/sha256/{}.",
            s3.bucket,
            digest.hex()
        )),
        "{}",
        quarantined.stdout
    );
    let listed = s3
        .client
        .list_objects_v2()
        .bucket(&s3.bucket)
        .prefix("registry/quarantine/")
        .send()
        .await
        .unwrap();
    let kept: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let body = s3
        .client
        .get_object()
        .bucket(&s3.bucket)
        .key(kept[0])
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(&body[..], &planted[..], "the evidence is kept");

    pull_is_quarantined(&c, &digest).await;
    repush_restores(&c, &layer).await;
    let repaired = scrub(&stores, &env).await;
    assert_eq!(
        repaired.code,
        Some(0),
        "{}{}",
        repaired.stdout,
        repaired.stderr
    );
}
