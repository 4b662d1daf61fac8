//! Real clients against the real server: skopeo and podman from Debian, and the `oras` Python
//! SDK. These are not optional: `.ci/run` installs the tools, and a missing tool fails here.

use std::path::Path;
use std::process::Command;

use pierone_protocol::Digest;
use serde_json::{Value, json};

use crate::util::{OCI_INDEX, OCI_MANIFEST, TestServer};

/// Run a command to completion off the async workers; returns (success, stdout, stderr).
async fn run(cmd: &str, args: Vec<String>) -> (bool, String, String) {
    let cmd = cmd.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(&cmd).args(&args).output().unwrap_or_else(|e| {
            panic!("cannot run {cmd} (is it installed? .ci/run installs it): {e}")
        });
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

async fn ok(cmd: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = run(cmd, args.iter().map(|s| s.to_string()).collect()).await;
    assert!(success, "{cmd} {args:?} failed:\n{stderr}");
    stdout
}

fn write_blob(layout: &Path, data: &[u8]) -> (Digest, usize) {
    let d = Digest::sha256_of(data);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(d.hex()), data).unwrap();
    (d, data.len())
}

/// A one-layer image for `arch` whose single file says `content`; returns the manifest
/// descriptor as JSON.
fn image(layout: &Path, arch: &str, content: &str) -> Value {
    let layer = pierone_protocol::tar_with(&[("hello.txt", content)]);
    let (ld, ls) = write_blob(layout, &layer);
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [ld.as_str()]},
    }))
    .unwrap();
    let (cd, cs) = write_blob(layout, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.as_str(), "size": ls}],
    }))
    .unwrap();
    let (md, ms) = write_blob(layout, &manifest);
    json!({"mediaType": OCI_MANIFEST, "digest": md.as_str(), "size": ms,
           "platform": {"architecture": arch, "os": "linux"}})
}

/// An OCI layout with images `one` and `two` (single-arch) and `multi` (an index).
fn layout(dir: &Path, salt: &str) {
    let one = image(dir, "amd64", &format!("one {salt}"));
    let two = image(dir, "amd64", &format!("two {salt}"));
    let amd = image(dir, "amd64", &format!("multi amd64 {salt}"));
    let arm = image(dir, "arm64", &format!("multi arm64 {salt}"));
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd, arm],
    }))
    .unwrap();
    let (xd, xs) = write_blob(dir, &index);
    let named = |mut d: Value, name: &str| {
        d["annotations"] = json!({"org.opencontainers.image.ref.name": name});
        d
    };
    let top = json!({
        "schemaVersion": 2,
        "manifests": [
            named(one, "one"),
            named(two, "two"),
            named(json!({"mediaType": OCI_INDEX, "digest": xd.as_str(), "size": xs}), "multi"),
        ],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn no_tls() -> [&'static str; 2] {
    ["--src-tls-verify=false", "--dest-tls-verify=false"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_pulls_copies_and_respects_immutability() {
    let s = TestServer::start().await;
    let host = s.host().to_owned();
    let work = tempfile::tempdir().unwrap();
    let lay = work.path().join("layout");
    layout(&lay, "skopeo");
    let src = |name: &str| format!("oci:{}:{name}", lay.display());
    let dst = |repo: &str| format!("docker://{host}/{repo}");
    let [a, b] = no_tls();

    // OCI push, then the identical push again (a CI re-run) succeeds.
    ok("skopeo", &["copy", a, b, &src("one"), &dst("team/app:1.0")]).await;
    ok("skopeo", &["copy", a, b, &src("one"), &dst("team/app:1.0")]).await;
    // A different image on the same tag is refused, and the user sees why.
    let (success, _, stderr) = run(
        "skopeo",
        ["copy", a, b, &src("two"), &dst("team/app:1.0")]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    )
    .await;
    assert!(!success, "re-tagging must fail");
    assert!(
        stderr.contains("immutable") || stderr.contains("already names"),
        "{stderr}"
    );

    // Docker schema2 conversion, and a multi-arch index with all its children.
    ok(
        "skopeo",
        &[
            "copy",
            a,
            b,
            "--format",
            "v2s2",
            &src("two"),
            &dst("team/docker:1.0"),
        ],
    )
    .await;
    let raw = ok(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &dst("team/docker:1.0"),
        ],
    )
    .await;
    assert!(
        raw.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{raw}"
    );
    ok(
        "skopeo",
        &["copy", a, b, "--all", &src("multi"), &dst("team/multi:1.0")],
    )
    .await;
    let raw = ok(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &dst("team/multi:1.0"),
        ],
    )
    .await;
    let idx: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 2);
    let arm = ok(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            "arm64",
            &dst("team/multi:1.0"),
        ],
    )
    .await;
    assert!(arm.contains("arm64"), "{arm}");

    // Registry to registry, across repositories (blob mounts), and back to disk intact.
    ok(
        "skopeo",
        &[
            "copy",
            a,
            b,
            "--all",
            &dst("team/multi:1.0"),
            &dst("team/multi-copy:1.0"),
        ],
    )
    .await;
    let out = work.path().join("out");
    ok(
        "skopeo",
        &[
            "copy",
            a,
            b,
            "--all",
            &dst("team/multi-copy:1.0"),
            &format!("oci:{}:x", out.display()),
        ],
    )
    .await;
    for entry in std::fs::read_dir(out.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(
            Digest::sha256_of(&data).hex(),
            path.file_name().unwrap().to_str().unwrap()
        );
    }
    let tags = ok(
        "skopeo",
        &["list-tags", "--tls-verify=false", &dst("team/app")],
    )
    .await;
    assert!(tags.contains("\"1.0\""), "{tags}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_and_pushes() {
    let s = TestServer::start().await;
    let host = s.host().to_owned();
    let work = tempfile::tempdir().unwrap();
    let lay = work.path().join("layout");
    let salt = format!("podman-{}", std::process::id());
    layout(&lay, &salt);
    let [a, b] = no_tls();
    ok(
        "skopeo",
        &[
            "copy",
            a,
            b,
            &format!("oci:{}:one", lay.display()),
            &format!("docker://{host}/team/seed:1.0"),
        ],
    )
    .await;
    ok(
        "skopeo",
        &[
            "copy",
            a,
            b,
            &format!("oci:{}:two", lay.display()),
            &format!("docker://{host}/team/seed:2.0"),
        ],
    )
    .await;

    let image = |r: &str| format!("{host}/{r}");
    ok(
        "podman",
        &["pull", "--tls-verify=false", &image("team/seed:1.0")],
    )
    .await;
    ok(
        "podman",
        &["tag", &image("team/seed:1.0"), &image("team/pod:1.0")],
    )
    .await;
    ok(
        "podman",
        &["push", "--tls-verify=false", &image("team/pod:1.0")],
    )
    .await;
    // Identical again: fine.
    ok(
        "podman",
        &["push", "--tls-verify=false", &image("team/pod:1.0")],
    )
    .await;
    // A different image under the same tag: refused with the registry's message.
    ok(
        "podman",
        &["pull", "--tls-verify=false", &image("team/seed:2.0")],
    )
    .await;
    ok(
        "podman",
        &["tag", &image("team/seed:2.0"), &image("team/pod:1.0")],
    )
    .await;
    let (success, _, stderr) = run(
        "podman",
        ["push", "--tls-verify=false", &image("team/pod:1.0")]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    )
    .await;
    assert!(!success, "podman must not move an immutable tag");
    assert!(
        stderr.contains("immutable") || stderr.contains("already names"),
        "{stderr}"
    );

    let inspect = ok(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}", image("team/pod:1.0")),
        ],
    )
    .await;
    let seed = ok(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}", image("team/seed:1.0")),
        ],
    )
    .await;
    let layers = |s: &str| serde_json::from_str::<Value>(s).unwrap()["Layers"].clone();
    assert_eq!(
        layers(&inspect),
        layers(&seed),
        "pushed layers are the pulled ones"
    );
    for r in ["team/seed:1.0", "team/seed:2.0", "team/pod:1.0"] {
        let _ = run("podman", vec!["rmi".into(), "-f".into(), image(r)]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_python_sdk_pushes_artifacts_with_subject_and_finds_referrers() {
    let s = TestServer::start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/oras_check.py"
    );
    let work = tempfile::tempdir().unwrap();
    let (success, stdout, stderr) = run(
        "python3",
        vec![
            script.to_owned(),
            s.host().to_owned(),
            work.path().display().to_string(),
        ],
    )
    .await;
    assert!(success, "oras check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ORAS OK"), "{stdout}");
}

/// A registry with token-info authentication, for the login tests.
async fn authenticated_server() -> (TestServer, crate::util::FakeTokenInfo) {
    use std::sync::Arc;
    use std::time::Duration;

    use pierone_auth::{AuthConfig, Authorizer, MemoryTeams, TokenInfoValidator};

    let ti = crate::util::FakeTokenInfo::start(vec![(
        "alice-token",
        crate::util::token_json("alice", "/employees", &["uid"], 3600),
    )])
    .await;
    let validator = TokenInfoValidator::new(&ti.url, Duration::from_secs(2)).unwrap();
    let s = TestServer::start_with(pierone_registry::Config {
        auth: Authorizer::new(
            Arc::new(validator),
            Arc::new(MemoryTeams::new([("myteam", &["alice"][..], &[][..])])),
            AuthConfig::default(),
        ),
        ..Default::default()
    })
    .await;
    (s, ti)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_podman_log_in_with_oauth2_tokens() {
    let (s, _ti) = authenticated_server().await;
    let host = s.host().to_owned();
    let work = tempfile::tempdir().unwrap();
    let lay = work.path().join("layout");
    layout(&lay, &format!("login-{}", std::process::id()));
    let authfile = work.path().join("auth.json");
    let authfile = authfile.to_str().unwrap();
    let src = format!("oci:{}:one", lay.display());

    // Without credentials: refused with 401, and the tools say so.
    let (success, _, stderr) = run(
        "skopeo",
        [
            "copy",
            "--dest-tls-verify=false",
            &src,
            &format!("docker://{host}/myteam/app:1.0"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .await;
    assert!(!success);
    assert!(
        stderr.contains("authentication required") || stderr.contains("unauthorized"),
        "{stderr}"
    );

    // skopeo with oauth2:<token> credentials: own team yes, other team no (403 shown).
    ok(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "oauth2:alice-token",
            &src,
            &format!("docker://{host}/myteam/app:1.0"),
        ],
    )
    .await;
    let (success, _, stderr) = run(
        "skopeo",
        [
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "oauth2:alice-token",
            &src,
            &format!("docker://{host}/other/app:1.0"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .await;
    assert!(!success, "alice is not in team other");
    assert!(
        stderr.contains("denied") && stderr.contains("other"),
        "{stderr}"
    );

    // podman login stores Basic oauth2:<token>; pull and push use it.
    ok(
        "podman",
        &[
            "login",
            "--tls-verify=false",
            "--authfile",
            authfile,
            "-u",
            "oauth2",
            "-p",
            "alice-token",
            &host,
        ],
    )
    .await;
    let (success, _, _) = run(
        "podman",
        [
            "login",
            "--tls-verify=false",
            "--authfile",
            authfile,
            "-u",
            "oauth2",
            "-p",
            "wrong",
            &host,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .await;
    assert!(!success, "a bad token must not log in");
    let image = format!("{host}/myteam/app:1.0");
    ok(
        "podman",
        &["pull", "--tls-verify=false", "--authfile", authfile, &image],
    )
    .await;
    ok(
        "podman",
        &["tag", &image, &format!("{host}/myteam/pushed:1.0")],
    )
    .await;
    ok(
        "podman",
        &[
            "push",
            "--tls-verify=false",
            "--authfile",
            authfile,
            &format!("{host}/myteam/pushed:1.0"),
        ],
    )
    .await;
    ok(
        "podman",
        &["tag", &image, &format!("{host}/other/pushed:1.0")],
    )
    .await;
    let (success, _, stderr) = run(
        "podman",
        [
            "push",
            "--tls-verify=false",
            "--authfile",
            authfile,
            &format!("{host}/other/pushed:1.0"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .await;
    assert!(!success, "podman must be refused for another team");
    assert!(stderr.contains("denied"), "{stderr}");
    for r in ["myteam/app:1.0", "myteam/pushed:1.0", "other/pushed:1.0"] {
        let _ = run(
            "podman",
            vec!["rmi".into(), "-f".into(), format!("{host}/{r}")],
        )
        .await;
    }
}

/// The production configuration, PostgreSQL metadata and S3 blobs, with the real clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_podman_on_s3_and_postgres() {
    use pierone_s3::test_server::{ACCESS_KEY, SECRET_KEY, TestS3};

    let s3 = TestS3::start("pierone").await;
    let postgres = std::env::var("PIERONE_TEST_POSTGRES_URL")
        .expect("PIERONE_TEST_POSTGRES_URL must name a PostgreSQL server; tests/run.sh starts one");
    let database = pierone_tagstore::create_test_database(&postgres)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let p = crate::util::Process::start_with_env(
        &work.path().join("data"),
        &[
            "--blob-store",
            "s3",
            "--s3-bucket",
            &s3.bucket,
            "--s3-endpoint",
            &s3.endpoint,
            "--database-url",
            &database,
        ],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let host = p.url.trim_start_matches("http://").to_owned();
    let lay = work.path().join("layout");
    layout(&lay, &format!("s3-{}", std::process::id()));
    let [a, b] = no_tls();
    let src = |name: &str| format!("oci:{}:{name}", lay.display());
    ok(
        "skopeo",
        &[
            "copy",
            a,
            b,
            &src("one"),
            &format!("docker://{host}/team/app:1.0"),
        ],
    )
    .await;
    ok(
        "skopeo",
        &[
            "copy",
            a,
            b,
            "--all",
            &src("multi"),
            &format!("docker://{host}/team/multi:1.0"),
        ],
    )
    .await;
    let (success, _, stderr) = run(
        "skopeo",
        [
            "copy",
            a,
            b,
            &src("two"),
            &format!("docker://{host}/team/app:1.0"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .await;
    assert!(!success && stderr.contains("already names"), "{stderr}");

    let image = format!("{host}/team/app:1.0");
    ok("podman", &["pull", "--tls-verify=false", &image]).await;
    ok(
        "podman",
        &["tag", &image, &format!("{host}/team/from-podman:1.0")],
    )
    .await;
    ok(
        "podman",
        &[
            "push",
            "--tls-verify=false",
            &format!("{host}/team/from-podman:1.0"),
        ],
    )
    .await;
    let out = work.path().join("out");
    ok(
        "skopeo",
        &[
            "copy",
            a,
            b,
            &format!("docker://{host}/team/from-podman:1.0"),
            &format!("oci:{}:x", out.display()),
        ],
    )
    .await;
    for entry in std::fs::read_dir(out.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(
            Digest::sha256_of(&data).hex(),
            path.file_name().unwrap().to_str().unwrap()
        );
    }
    for r in ["team/app:1.0", "team/from-podman:1.0"] {
        let _ = run(
            "podman",
            vec!["rmi".into(), "-f".into(), format!("{host}/{r}")],
        )
        .await;
    }
}

/// A fresh CA and a certificate for 127.0.0.1 it signed, as `<dir>/<name>-{ca,cert,key}.pem`.
fn certificate(dir: &Path, name: &str) -> (String, String, String) {
    let path = |what: &str| dir.join(format!("{name}-{what}.pem")).display().to_string();
    let (ca, ca_key, cert, key, csr) = (
        path("ca"),
        path("ca-key"),
        path("cert"),
        path("key"),
        path("csr"),
    );
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for args in [
        [
            &["req", "-x509"][..],
            &ec[..],
            &[
                "-keyout",
                &ca_key,
                "-out",
                &ca,
                "-days",
                "2",
                "-subj",
                &format!("/CN=pierone test CA {name}"),
            ][..],
        ]
        .concat(),
        [
            &["req"][..],
            &ec[..],
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN=pierone {name}"),
            ][..],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            ext.to_str().unwrap(),
        ],
    ] {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (ca, cert, key)
}

/// Replace `target` with a copy of `source` in one rename, as certificate tooling does.
fn install(source: &str, target: &Path) {
    let tmp = target.with_extension("new");
    std::fs::copy(source, &tmp).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http2_to_curl_and_skopeo_and_reloads_a_renewed_certificate() {
    let work = tempfile::tempdir().unwrap();
    let (ca1, cert1, key1) = certificate(work.path(), "one");
    let (live_cert, live_key) = (work.path().join("tls.crt"), work.path().join("tls.key"));
    install(&cert1, &live_cert);
    install(&key1, &live_key);
    let p = crate::util::Process::start(
        &work.path().join("data"),
        &[
            "--tls-cert",
            live_cert.to_str().unwrap(),
            "--tls-key",
            live_key.to_str().unwrap(),
        ],
    );
    let host = p.url.trim_start_matches("http://").to_owned();
    let base = format!("https://{host}/v2/");
    let curl = |ca: &str, extra: &'static str| {
        let (ca, base) = (ca.to_owned(), base.clone());
        async move {
            run(
                "curl",
                [
                    "-sS",
                    "--cacert",
                    &ca,
                    extra,
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_version}",
                    &base,
                ]
                .iter()
                .filter(|a| !a.is_empty())
                .map(|s| s.to_string())
                .collect(),
            )
            .await
        }
    };
    let (success, version, stderr) = curl(&ca1, "").await;
    assert!(success, "{stderr}");
    assert_eq!(version, "2", "HTTP/2 by ALPN");
    let (success, version, _) = curl(&ca1, "--http1.1").await;
    assert!(success);
    assert_eq!(version, "1.1");

    // skopeo trusts the CA from a certificate directory and verifies TLS.
    let certs = work.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&ca1, certs.join("ca.crt")).unwrap();
    let lay = work.path().join("layout");
    layout(&lay, "tls");
    let certs = certs.to_str().unwrap();
    ok(
        "skopeo",
        &[
            "copy",
            "--dest-cert-dir",
            certs,
            &format!("oci:{}:one", lay.display()),
            &format!("docker://{host}/team/tls:1.0"),
        ],
    )
    .await;
    let inspect = ok(
        "skopeo",
        &[
            "inspect",
            "--cert-dir",
            certs,
            &format!("docker://{host}/team/tls:1.0"),
        ],
    )
    .await;
    assert!(inspect.contains("\"Digest\""), "{inspect}");

    // The certificate is renewed under the server: new connections get the new one.
    let (ca2, cert2, key2) = certificate(work.path(), "two");
    install(&key2, &live_key);
    install(&cert2, &live_cert);
    let start = std::time::Instant::now();
    while !curl(&ca2, "").await.0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "the renewed certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(!curl(&ca1, "").await.0, "the old certificate is gone");
}
