//! The audit trail end to end: the server signs checkpoints, `pierone audit verify` checks
//! the chain and the signature, and catches rows edited directly in the database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::{Connection, RunQueryDsl, SqliteConnection};
use pierone_protocol::audit::{AuditEntry, next_entry};
use reqwest::StatusCode;
use serde_json::Value;

use crate::cli::pierone;
use crate::util::{Client, OCI_MANIFEST, Process};

/// An Ed25519 key as operators make one.
pub fn ed25519_key(dir: &Path) -> PathBuf {
    let path = dir.join("audit.pem");
    let out = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&path)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// `ms` after the epoch as the CLI prints times: RFC 3339 in UTC with milliseconds (by
/// coreutils' `date`, a second opinion on the CLI's own conversion).
fn rfc3339_of(ms: i64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{}", ms / 1000), "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .expect("run date");
    let secs = String::from_utf8(out.stdout).unwrap();
    format!("{}.{:03}Z", secs.trim(), ms % 1000)
}

/// An audit entry or checkpoint as the API sends it, as `pierone -o json` prints it: `at` in
/// RFC 3339 (which the API sends too; coreutils' `date` is the second opinion on the
/// conversion), and an entry's kind always named.
fn as_printed(mut v: Value) -> Value {
    let at = v["at"].as_str().expect("the API sends `at` in RFC 3339");
    let ms = pierone_protocol::audit::rfc3339_millis::parse(at).expect("RFC 3339 with millis");
    assert_eq!(at, rfc3339_of(ms), "the API's time and date(1)'s disagree");
    if v.get("prev_hash").is_some() && v.get("kind").is_none() {
        v["kind"] = Value::String("tag".into());
    }
    v
}

/// Wait until the server has signed a checkpoint of `size` entries; return it.
pub async fn checkpoint_of(c: &Client, size: u64) -> Value {
    for _ in 0..200 {
        let r = c.get("/audit/checkpoint").await;
        if r.status() == StatusCode::OK {
            let cp: Value = r.json().await.unwrap();
            if cp["size"] == size {
                return cp;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no checkpoint of {size} entries was signed");
}

fn execute(db: &Path, sql: &str) {
    let mut conn = SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    diesel::sql_query("PRAGMA busy_timeout = 10000")
        .execute(&mut conn)
        .unwrap();
    diesel::sql_query(sql).execute(&mut conn).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_catches_an_edited_row_and_a_recomputed_chain() {
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
    let mut digests = Vec::new();
    for (tag, seed) in [
        ("1.0", "a"),
        ("1.1", "b"),
        ("dev-SNAPSHOT", "a"),
        ("dev-SNAPSHOT", "b"),
    ] {
        let m = c.image("team/app", seed).await;
        let r = c.put_manifest("team/app", tag, OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        digests.push(crate::util::header(&r, "Docker-Content-Digest").unwrap());
    }
    // Re-pushing the same content is not an assignment.
    let m = c.image("team/app", "a").await;
    let r = c.put_manifest("team/app", "1.0", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let cp = checkpoint_of(&c, 4).await;
    let key = cp["public_key"].as_str().unwrap().to_owned();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let verify = ["--url", &p.url, "audit", "verify", "--public-key", &key];

    let ok = pierone(&home, &[], &verify).await;
    assert!(ok.ok, "{}{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.contains("4 entries verified"), "{}", ok.stdout);
    assert!(ok.stdout.contains("signature valid"), "{}", ok.stdout);

    // One tag proven against the signed log without downloading it.
    let prove = [
        "--url",
        &p.url,
        "audit",
        "prove",
        "team",
        "app",
        "1.1",
        "--public-key",
        &key,
    ];
    let proven = pierone(&home, &[], &prove).await;
    assert!(proven.ok, "{}", proven.stderr);
    assert!(
        proven
            .stdout
            .contains(&format!("team/app:1.1 = {}", digests[1]))
            && proven.stdout.contains("(entry 2)")
            && proven.stdout.contains("inclusion proof of 2 hashes valid"),
        "{}",
        proven.stdout
    );

    let history = pierone(
        &home,
        &[],
        &[
            "--url",
            &p.url,
            "-o",
            "json",
            "audit",
            "history",
            "team",
            "app",
            "dev-SNAPSHOT",
        ],
    )
    .await;
    assert!(history.ok, "{}", history.stderr);
    let rows: Vec<Value> = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    // A number, under the API's field names.
    assert_eq!(rows[0]["seq"], 3);
    assert_eq!(rows[1]["digest"], digests[3].as_str());
    assert_eq!(rows[1]["previous_digest"], digests[2].as_str());
    assert!(rows[1]["at"].as_str().unwrap().ends_with('Z'), "{rows:?}");
    assert_eq!(rows[1]["principal"], "anonymous");

    // An auditor who remembers what was verified checks only what came since.
    let state = dir.path().join("audit-state.json");
    let state = state.to_str().unwrap();
    let incremental = ["--url", &p.url, "audit", "verify", "--state", state];
    let first = pierone(&home, &[], &incremental).await;
    assert!(first.ok, "{}", first.stderr);
    assert!(
        first.stdout.contains("4 entries verified"),
        "{}",
        first.stdout
    );
    let m = c.image("team/app", "e").await;
    let r = c.put_manifest("team/app", "1.2", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    checkpoint_of(&c, 5).await;
    let next = pierone(&home, &[], &incremental).await;
    assert!(next.ok, "{}", next.stderr);
    assert!(
        next.stdout
            .contains("1 new entries verified: they extend the 4 verified before"),
        "{}",
        next.stdout
    );
    let remembered: Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    assert_eq!(remembered["size"], 5);
    assert_eq!(remembered["public_key"], key.as_str());

    // Someone with database access points entry 2 at another digest.
    let db = data.join("pierone.db");
    execute(
        &db,
        &format!(
            "UPDATE audit_log SET digest = '{}' WHERE seq = 2",
            digests[0]
        ),
    );
    let bad = pierone(&home, &[], &verify).await;
    assert!(!bad.ok, "verify must fail: {}", bad.stdout);
    assert!(
        bad.stderr.contains("audit log entry 2") && bad.stderr.contains("altered"),
        "{}",
        bad.stderr
    );
    let unproven = pierone(&home, &[], &prove).await;
    assert!(!unproven.ok, "prove must fail: {}", unproven.stdout);
    assert!(unproven.stderr.contains("altered"), "{}", unproven.stderr);

    // A more careful forger recomputes every hash from entry 2 on: the chain is consistent
    // again, but the signed checkpoint names the old head.
    let r: Value = c.get("/audit/log").await.json().await.unwrap();
    let entries: Vec<AuditEntry> = serde_json::from_value(r["entries"].clone()).unwrap();
    let mut prev = (entries[0].seq, entries[0].hash.clone());
    for e in &entries[1..] {
        let f = next_entry(
            Some((prev.0, &prev.1)),
            e.at,
            &e.principal,
            &e.realm,
            &e.repository,
            &e.tag,
            &e.digest,
            e.previous_digest.as_deref(),
        );
        execute(
            &db,
            &format!(
                "UPDATE audit_log SET prev_hash = '{}', hash = '{}' WHERE seq = {}",
                f.prev_hash, f.hash, f.seq
            ),
        );
        prev = (f.seq, f.hash);
    }
    execute(
        &db,
        &format!("UPDATE audit_head SET hash = '{}' WHERE id = 1", prev.1),
    );
    let forged = pierone(&home, &[], &verify).await;
    assert!(!forged.ok, "verify must fail: {}", forged.stdout);
    assert!(forged.stderr.contains("rewritten"), "{}", forged.stderr);
    // The registry goes on accepting pushes but refuses to sign the forged log, so the newest
    // checkpoint stays the honest one.
    let m = c.image("team/app", "f").await;
    let r = c.put_manifest("team/app", "1.3", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let start = std::time::Instant::now();
    while crate::util::metric(&c, "pierone_audit_checkpoint_refusals_total").await < 2.0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no refusal counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cp: Value = c.get("/audit/checkpoint").await.json().await.unwrap();
    assert_eq!(cp["size"], 5, "a forged log was signed: {cp}");
    // And the auditor who remembers entry 5 sees that entry 6 does not extend it.
    let resumed = pierone(&home, &[], &incremental).await;
    assert!(
        !resumed.ok,
        "incremental verify must fail: {}",
        resumed.stdout
    );
    assert!(
        resumed.stderr.contains("audit log entry 6"),
        "{}",
        resumed.stderr
    );

    // Without a checkpoint key the CLI still checks the chain itself.
    let unpinned = pierone(&home, &[], &["--url", &p.url, "audit", "verify"]).await;
    assert!(!unpinned.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_paged_and_filtered() {
    let s = crate::util::TestServer::start().await;
    let c = s.client();
    for i in 0..5 {
        let m = c.image("team/app", &format!("page-{i}")).await;
        let r = c
            .put_manifest("team/app", &format!("1.{i}"), OCI_MANIFEST, &m)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let page: Value = c
        .get("/audit/log?since=1&limit=2")
        .await
        .json()
        .await
        .unwrap();
    let seqs: Vec<u64> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(page["size"], 5);
    let one: Value = c
        .get("/audit/log?repository=team/app&tag=1.4")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["entries"].as_array().unwrap().len(), 1);
    assert_eq!(one["entries"][0]["seq"], 5);
    let r = c.get("/audit/log?since=x").await;
    let e = crate::util::oci_error(r, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
    assert_eq!(e.message, "query parameter since: x, not a number");
    let r = c.get("/audit/log?repository=team/app").await;
    let e = crate::util::oci_error(r, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
    assert_eq!(
        e.message,
        "query parameter repository: given without tag; give both or neither"
    );
    // No signing key: no checkpoint, and a clear 404.
    let r = c.get("/audit/checkpoint").await;
    crate::util::oci_error(r, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    let r = c.get("/audit/proof?seq=1").await;
    crate::util::oci_error(r, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    // Proofs against an explicit size, checked here with the library clients use.
    let page: Value = c.get("/audit/log").await.json().await.unwrap();
    let entries: Vec<AuditEntry> = serde_json::from_value(page["entries"].clone()).unwrap();
    let mut v = pierone_protocol::audit::ChainVerifier::new();
    entries[..4].iter().for_each(|e| v.push(e).unwrap());
    let r: Value = c
        .get("/audit/proof?seq=3&size=4")
        .await
        .json()
        .await
        .unwrap();
    let proof: pierone_protocol::audit::InclusionProof = serde_json::from_value(r.clone()).unwrap();
    assert_eq!(r["entry"]["seq"], 3);
    pierone_protocol::audit::verify_inclusion(&entries[2], &proof, &v.root()).unwrap();
    for (bad, message) in [
        (
            "seq=0&size=4",
            "query parameter seq: 0, not between 1 and size (4)",
        ),
        (
            "seq=5&size=4",
            "query parameter seq: 5, not between 1 and size (4)",
        ),
        (
            "seq=1&size=99",
            "query parameter size: 99, more than the log's 5 entries",
        ),
        ("seq=x", "query parameter seq: x, not a number"),
        ("seq=", "query parameter seq: empty, not a number"),
        ("size=4", "query parameter seq: required"),
    ] {
        let r = c.get(&format!("/audit/proof?{bad}")).await;
        let e = crate::util::oci_error(r, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
        assert_eq!(e.message, message, "{bad}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prove_right_after_a_push_says_not_checkpointed_yet_and_wait_waits() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = ed25519_key(dir.path());
    let key = key_file.clone();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    // An hour between checkpoints: the one signed at start-up (of the empty log) is all there
    // is while the test runs.
    let slow = Process::start(
        &dir.path().join("slow"),
        &[
            "--audit-signing-key",
            key.to_str().unwrap(),
            "--audit-checkpoint-interval",
            "1h",
        ],
    );
    let c = Client::new(&slow.url);
    checkpoint_of(&c, 0).await;
    let m = c.image("team/app", "a").await;
    let r = c.put_manifest("team/app", "1.0", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let cp: Value = c.get("/audit/checkpoint").await.json().await.unwrap();
    assert_eq!(
        (cp["size"].as_u64(), cp["interval_ms"].as_u64()),
        (Some(0), Some(3_600_000))
    );

    let prove = ["--url", &slow.url, "audit", "prove", "team", "app", "1.0"];
    let r = pierone(&home, &[], &prove).await;
    assert_eq!(r.code, Some(3), "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "");
    // "within N s", N just under the hour.
    let (head, tail) = (
        "pierone: team/app:1.0 (audit log entry 1) is not checkpointed yet (next checkpoint within ",
        " s); run again then, or with --wait\n",
    );
    let n: u64 = r
        .stderr
        .strip_prefix(head)
        .and_then(|s| s.strip_suffix(tail))
        .unwrap_or_else(|| panic!("{}", r.stderr))
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&n), "{}", r.stderr);

    // --wait is bounded by --timeout.
    let mut waiting = prove.to_vec();
    waiting.extend(["--wait", "--timeout", "1"]);
    let r = pierone(&home, &[], &waiting).await;
    assert_eq!(r.code, Some(3), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.starts_with(
            "pierone: team/app:1.0 (audit log entry 1) is not checkpointed yet after waiting 1 s (next checkpoint within "
        ) && r.stderr.ends_with(" s)\n"),
        "{}",
        r.stderr
    );

    // Every 2 s: --wait returns once the next checkpoint covers the push.
    let fast = Process::start(
        &dir.path().join("fast"),
        &[
            "--audit-signing-key",
            key.to_str().unwrap(),
            "--audit-checkpoint-interval",
            "2s",
        ],
    );
    let c = Client::new(&fast.url);
    let m = c.image("team/app", "a").await;
    let r = c.put_manifest("team/app", "1.0", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let digest = crate::util::header(&r, "Docker-Content-Digest").unwrap();
    let r = pierone(
        &home,
        &[],
        &[
            "--url",
            &fast.url,
            "audit",
            "prove",
            "team",
            "app",
            "1.0",
            "--wait",
            "--timeout",
            "30",
        ],
    )
    .await;
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with(&format!("team/app:1.0 = {digest}\n"))
            && r.stdout
                .contains("(entry 1), included in the log of 1 entries"),
        "{}",
        r.stdout
    );

    // -o json: the API's objects under the API's field names, numbers as numbers.
    let mut cp: Value = c.get("/audit/checkpoint").await.json().await.unwrap();
    assert_eq!(cp["size"], 1);
    cp.as_object_mut().unwrap().remove("interval_ms");
    let log: Value = c.get("/audit/log").await.json().await.unwrap();
    let proof: Value = c
        .get("/audit/proof?seq=1&size=1")
        .await
        .json()
        .await
        .unwrap();
    let key = cp["public_key"].as_str().unwrap().to_owned();
    let r = pierone(
        &home,
        &[],
        &[
            "--url",
            &fast.url,
            "-o",
            "json",
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
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap(),
        serde_json::json!({
            "repository": "team/app",
            "tag": "1.0",
            "digest": digest,
            "entry": as_printed(log["entries"][0].clone()),
            "checkpoint": as_printed(cp.clone()),
            "proof": {"seq": 1, "size": 1, "path": proof["path"]},
            "key_pinned": true,
        })
    );
    // The operator prints the public key from the signing key; auditors pin it as base64,
    // as PEM, or as the PEM file, just as openssl writes it.
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let openssl_pem = String::from_utf8(out.stdout).unwrap();
    let r = pierone(
        &home,
        &[],
        &["audit", "public-key", "--key", key_file.to_str().unwrap()],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, format!("{key}\n{openssl_pem}"));
    let pub_file = dir.path().join("audit.pub.pem");
    std::fs::write(&pub_file, &openssl_pem).unwrap();
    let r = pierone(
        &home,
        &[],
        &[
            "-o",
            "json",
            "audit",
            "public-key",
            "--key",
            pub_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap(),
        serde_json::json!({"public_key": key, "pem": openssl_pem}),
        "{}",
        r.stderr
    );
    for pinned in [openssl_pem.as_str(), pub_file.to_str().unwrap()] {
        let r = pierone(
            &home,
            &[],
            &[
                "--url",
                &fast.url,
                "audit",
                "prove",
                "team",
                "app",
                "1.0",
                "--public-key",
                pinned,
            ],
        )
        .await;
        assert!(r.ok, "{}", r.stderr);
        assert!(
            !r.stdout.contains("the key the registry presents"),
            "{}",
            r.stdout
        );
    }
    let r = pierone(
        &home,
        &[],
        &[
            "--url",
            &fast.url,
            "audit",
            "verify",
            "--public-key",
            key_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        r.stderr,
        "pierone: audit signing key: found a private key; give its public key (`pierone audit public-key --key FILE` prints it)\n"
    );

    let r = pierone(
        &home,
        &[],
        &["--url", &fast.url, "-o", "json", "audit", "verify"],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap(),
        serde_json::json!({
            "size": 1,
            "head": log["entries"][0]["hash"],
            "verified_before": 0,
            "checkpoint": as_printed(cp),
            "key_pinned": false,
        })
    );
}
