//! Start-up refusals of the real binary: each one line that names the flag and the cause,
//! before the server says it is ready, and a failing exit status.

use std::process::{Command, Output};

use pierone_protocol::Digest;
use reqwest::{Method, StatusCode};

use crate::util::{Process, oci_error};

/// Run `pierone-server` on a fresh data directory (and a free port unless `args` name one)
/// with `args`, and return its output once it exits.
fn run(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pierone-server"));
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .env("PIERONE_LOG", "info")
        .output()
        .unwrap()
}

/// The refusal: the process failed, never said it was ready, and its last line of stderr.
fn refusal(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started:\n{stderr}");
    assert!(
        !stderr.contains("pierone-server ready"),
        "refused only after it was ready:\n{stderr}"
    );
    stderr.lines().last().unwrap_or_default().to_owned()
}

#[test]
fn an_unknown_database_scheme_is_refused_by_name_without_the_password() {
    let out = run(&["--database-url", "mysql://root:SECRET@db.example/pierone"]);
    assert_eq!(
        refusal(&out),
        "pierone-server: --database-url mysql://root:***@db.example/pierone: unsupported database URL scheme mysql: use postgres://, postgresql:// or sqlite://"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("SECRET"));
}

#[test]
fn an_unreachable_postgresql_is_one_error_line() {
    // Port 1 of the loopback refuses at once.
    let out = run(&[
        "--database-url",
        "postgres://pierone:SECRET@127.0.0.1:1/pierone",
    ]);
    assert_eq!(
        refusal(&out),
        "pierone-server: --database-url postgres://pierone:***@127.0.0.1:1/pierone: the metadata database is unavailable: cannot connect: connection to server at \"127.0.0.1\", port 1 failed: Connection refused; Is the server running on that host and accepting TCP/IP connections?"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("Connection refused").count(),
        1,
        "one error, not one per pooled connection:\n{stderr}"
    );
    assert!(!stderr.contains("SECRET"));
}

#[test]
fn metrics_on_the_listen_address_are_refused_before_ready() {
    let out = run(&[
        "--listen",
        "127.0.0.1:45999",
        "--metrics-listen",
        "127.0.0.1:45999",
    ]);
    assert_eq!(
        refusal(&out),
        "pierone-server: --metrics-listen 127.0.0.1:45999 is the address of --listen: give the metrics a port of their own, or leave out --metrics-listen to serve them on --listen"
    );
}

#[test]
fn a_size_with_an_unknown_unit_is_refused() {
    let out = run(&["--max-blob-size", "10G"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().next().unwrap_or_default(),
        "error: invalid value '10G' for '--max-blob-size <MAX_BLOB_SIZE>': unknown unit G in 10G: use B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
    );
}

#[tokio::test]
async fn size_flags_take_units() {
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(dir.path(), &["--max-blob-size", "1KiB"]);
    let c = crate::util::Client::new(&p.url);
    let fits = vec![7u8; 1024];
    c.push_blob("team/app", &fits).await;
    let big = vec![7u8; 1025];
    let r = c
        .req(
            Method::POST,
            &format!(
                "/v2/team/app/blobs/uploads/?digest={}",
                Digest::sha256_of(&big)
            ),
        )
        .body(big)
        .send()
        .await
        .unwrap();
    let e = oci_error(r, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;
    assert_eq!(
        e.message,
        "body of 1025 bytes exceeds the limit of 1024 bytes"
    );
}

/// A key made by `openssl genpkey` with `args`, refused with what it is.
fn key_of_another_kind_is_named(args: &[&str], kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let made = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&key)
        .output()
        .expect("run openssl (tests/run.sh installs it)");
    assert!(made.status.success(), "{made:?}");
    let out = run(&["--audit-signing-key", key.to_str().unwrap()]);
    assert_eq!(
        refusal(&out),
        format!(
            "pierone-server: audit signing key {}: found {kind}, but audit checkpoints need an Ed25519 key (create one with `openssl genpkey -algorithm ed25519`)",
            key.display()
        )
    );
}

#[test]
fn an_rsa_signing_key_is_named() {
    key_of_another_kind_is_named(
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "an RSA key",
    );
}

#[test]
fn a_p256_signing_key_is_named() {
    key_of_another_kind_is_named(
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "an EC P-256 key",
    );
}
