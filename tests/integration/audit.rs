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
