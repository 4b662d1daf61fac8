//! The crate graph of docs/ARCHITECTURE.md ("Dependencies between crates"), checked against
//! what Cargo resolves, so that a dependency that breaks a written invariant fails CI.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The pierone crates each workspace member depends on directly (normal dependencies): the
/// table of docs/ARCHITECTURE.md. A new member must be added there and here.
const TABLE: &[(&str, &[&str])] = &[
    ("pierone-protocol", &[]),
    ("pierone-api", &[]),
    ("pierone-blobstore", &["pierone-protocol"]),
    ("pierone-s3", &["pierone-blobstore", "pierone-protocol"]),
    ("pierone-tagstore", &["pierone-protocol"]),
    ("pierone-auth", &[]),
    (
        "pierone-service",
        &[
            "pierone-api",
            "pierone-blobstore",
            "pierone-protocol",
            "pierone-tagstore",
            "pierone-trust",
        ],
    ),
    (
        "pierone-registry",
        &[
            "pierone-api",
            "pierone-auth",
            "pierone-protocol",
            "pierone-service",
        ],
    ),
    ("pierone-cli", &["pierone-api", "pierone-protocol"]),
    ("pierone-trust", &["pierone-protocol"]),
    (
        "pierone-server",
        &[
            "pierone-auth",
            "pierone-blobstore",
            "pierone-protocol",
            "pierone-registry",
            "pierone-s3",
            "pierone-service",
            "pierone-tagstore",
        ],
    ),
];

fn cargo(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Offline: the build that produced this test has already fetched everything the host
    // needs, and these commands only read the lock file and the manifests.
    let out = Command::new(env!("CARGO"))
        .args(args)
        .args(["--locked", "--offline"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every workspace member with the names of its direct normal dependencies (optional ones
/// included: a feature can turn them on).
fn direct_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let metadata: Value =
        serde_json::from_str(&cargo(&["metadata", "--format-version", "1", "--no-deps"])).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

/// The names of the packages `package` builds with, transitively: its normal dependencies,
/// with the features it turns on itself (`extra` such as `--no-default-features`).
///
/// `cargo tree -p` resolves features for that package alone, as `cargo build -p` or a
/// dependent outside this workspace would; `cargo metadata`'s graph unifies the features of
/// all members (the server turns on the tag store's SQL backends for everyone). It covers the
/// host platform, which is enough for the crates checked here: none is platform-specific.
fn closure(package: &str, extra: &[&str]) -> BTreeSet<String> {
    let mut args = vec![
        "tree", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}",
    ];
    args.extend_from_slice(extra);
    let names: BTreeSet<String> = cargo(&args)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    // Guard against a vacuous pass if the output format ever changes.
    assert!(names.contains(package), "{package}: {names:?}");
    names
}

fn assert_none_of(package: &str, extra: &[&str], banned: &[&str]) {
    let names = closure(package, extra);
    let found: Vec<&&str> = banned.iter().filter(|b| names.contains(**b)).collect();
    assert!(
        found.is_empty(),
        "{package} {extra:?} builds {found:?}; `cargo tree -e normal -p {package}{} -i <crate>` \
         says why",
        extra.iter().map(|e| format!(" {e}")).collect::<String>()
    );
}

#[test]
fn workspace_members_depend_on_the_pierone_crates_of_the_table() {
    let table: BTreeMap<&str, BTreeSet<&str>> = TABLE
        .iter()
        .map(|(name, deps)| (*name, deps.iter().copied().collect()))
        .collect();
    let members = direct_dependencies();
    let names: BTreeSet<&str> = members.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        table.keys().copied().collect(),
        "workspace members and the table of docs/ARCHITECTURE.md differ"
    );
    for (name, deps) in &members {
        let pierone: BTreeSet<&str> = deps
            .iter()
            .map(String::as_str)
            .filter(|d| d.starts_with("pierone-"))
            .collect();
        assert_eq!(
            pierone,
            table[name.as_str()],
            "pierone crates {name} depends on"
        );
    }
}

#[test]
fn only_the_tag_store_speaks_sql_and_only_the_s3_crate_the_aws_sdk() {
    let members = direct_dependencies();
    let users = |krate: &str| -> BTreeSet<&str> {
        members
            .iter()
            .filter(|(_, deps)| deps.contains(krate))
            .map(|(name, _)| name.as_str())
            .collect()
    };
    for sql in ["diesel", "diesel_migrations", "pq-sys", "libsqlite3-sys"] {
        assert_eq!(users(sql), BTreeSet::from(["pierone-tagstore"]), "{sql}");
    }
    for aws in ["aws-sdk-s3", "aws-config"] {
        assert_eq!(users(aws), BTreeSet::from(["pierone-s3"]), "{aws}");
    }
}

#[test]
fn the_protocol_does_no_io() {
    assert_none_of(
        "pierone-protocol",
        &[],
        &["tokio", "hyper", "diesel", "aws-sdk-s3"],
    );
}

#[test]
fn the_api_types_are_plain_data() {
    assert_none_of(
        "pierone-api",
        &[],
        &["tokio", "hyper", "reqwest", "pierone-protocol"],
    );
    // Not vacuous: it does build what it is made of.
    assert!(closure("pierone-api", &[]).contains("serde"));
}

#[test]
fn the_registry_chooses_no_backend() {
    assert_none_of(
        "pierone-registry",
        &[],
        &[
            "pierone-s3",
            "diesel",
            "pq-sys",
            "libsqlite3-sys",
            "aws-sdk-s3",
        ],
    );
}

#[test]
fn the_service_never_sees_http() {
    assert_none_of(
        "pierone-service",
        &[],
        &[
            "hyper",
            "http",
            "hyper-util",
            "http-body",
            "reqwest",
            "pierone-auth",
            "pierone-s3",
            "diesel",
            "pq-sys",
            "libsqlite3-sys",
            "aws-sdk-s3",
        ],
    );
    // Not vacuous: it does build the store traits it works over.
    let built = closure("pierone-service", &[]);
    assert!(built.contains("pierone-tagstore") && built.contains("pierone-blobstore"));
}

#[test]
fn the_http_crate_never_touches_a_store_directly() {
    let members = direct_dependencies();
    let registry = &members["pierone-registry"];
    for store in ["pierone-tagstore", "pierone-blobstore", "pierone-s3"] {
        assert!(
            !registry.contains(store),
            "pierone-registry depends on {store}: it must reach the stores through pierone-service"
        );
    }
    assert!(registry.contains("pierone-service"));
}

#[test]
fn the_cli_builds_without_databases_or_the_aws_sdk() {
    assert_none_of(
        "pierone-cli",
        &[],
        &["diesel", "pq-sys", "libsqlite3-sys", "aws-sdk-s3"],
    );
}

#[test]
fn the_trust_library_verifies_without_a_runtime_http_or_storage() {
    assert_none_of(
        "pierone-trust",
        &[],
        &[
            "tokio",
            "hyper",
            "reqwest",
            "diesel",
            "aws-sdk-s3",
            "pierone-tagstore",
            "pierone-blobstore",
        ],
    );
    // Not vacuous: it does build its verifier.
    assert!(closure("pierone-trust", &[]).contains("aws-lc-rs"));
}

#[test]
fn auth_knows_nothing_of_the_protocol() {
    assert_none_of("pierone-auth", &[], &["pierone-protocol"]);
}

#[test]
fn the_tag_store_without_its_sql_features_builds_no_database_library() {
    assert_none_of(
        "pierone-tagstore",
        &["--no-default-features"],
        &["diesel", "pq-sys", "libsqlite3-sys"],
    );
    // And with them it does: the check above is not vacuous.
    let sql = closure("pierone-tagstore", &[]);
    assert!(sql.contains("diesel") && sql.contains("pq-sys") && sql.contains("libsqlite3-sys"));
}
