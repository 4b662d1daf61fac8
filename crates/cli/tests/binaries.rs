//! The built `pierone` and `docker-credential-pierone` executables start and answer.
//!
//! Besides checking the binaries themselves, this test target makes `cargo test` build them:
//! Cargo builds a package's binaries only for its integration tests, and the server's
//! integration tests (tests/integration/cli.rs) run these same executables from the shared
//! target directory.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(program: &str, args: &[&str], stdin: &str) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn pierone_describes_its_commands() {
    let out = run(env!("CARGO_BIN_EXE_pierone"), &["--help"], "");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("login"), "{help}");
    assert!(help.contains("audit"), "{help}");
}

#[test]
fn the_credential_helper_lists_no_stored_credentials() {
    let out = run(
        env!("CARGO_BIN_EXE_docker-credential-pierone"),
        &["list"],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "{}\n");
}
