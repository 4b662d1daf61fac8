//! The `pierone` CLI and `docker-credential-pierone`, run as built binaries against a real
//! server, a real token-info endpoint and a real OAuth 2.0 token endpoint.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pierone_auth::{AuthConfig, Authorizer, MemoryTeams, TokenInfoValidator};
use pierone_protocol::Digest;
use pierone_protocol::audit::AuditSigner;
use pierone_registry::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::util::{
    FakeTokenInfo, OCI_INDEX, OCI_MANIFEST, Seen, TestServer, fake_service, token_json,
};

/// An Ed25519 signing key (PKCS#8 PEM), made by openssl as operators make one.
fn audit_key() -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::read_to_string(crate::audit::ed25519_key(dir.path())).unwrap()
}

/// A binary of the `pierone-cli` package.
///
/// Cargo hands these tests only the binaries of their own package (`pierone-server`), so the
/// CLI's are looked up in the same target directory, next to the server's. This assumes they
/// were built by the same cargo invocation, as `cargo test --workspace` does (tests/run.sh):
/// it builds every package's binaries before any test runs, the CLI's for the integration test
/// of `pierone-cli` (crates/cli/tests/binaries.rs). `cargo test -p pierone-server` alone does
/// not; build them first with `cargo build -p pierone-cli`.
fn bin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_pierone-server")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p pierone-cli` (or `cargo test --workspace`), which \
         builds the CLI binaries these tests run",
        path.display()
    );
    path
}

pub struct Run {
    pub ok: bool,
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `pierone args...` in an isolated home, with `env`.
pub async fn pierone(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    run(bin("pierone"), home, env, args, None).await
}

async fn run(
    program: PathBuf,
    home: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: Option<&str>,
) -> Run {
    let home = home.to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .env_clear()
            .env("HOME", &home)
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().unwrap();
        Run {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// A registry with token-info auth where `alice` and the service `ci-bot` push to `myteam`,
/// seeded with myteam/app:1.0 and 2.0 (a layer holding hello.txt).
async fn seeded() -> (TestServer, FakeTokenInfo) {
    let ti = FakeTokenInfo::start(vec![
        ("alice", token_json("alice", "/employees", &["uid"], 3600)),
        (
            "ci-bot-token",
            token_json(
                "stups_ci-bot",
                "/services",
                &["uid", "application.write"],
                3600,
            ),
        ),
    ])
    .await;
    let key = audit_key();
    let s = TestServer::start_with(Config {
        audit_signer: Some(Arc::new(AuditSigner::from_pem(&key).unwrap())),
        checkpoint_interval: Duration::from_millis(100),
        auth: Authorizer::new(
            Arc::new(TokenInfoValidator::new(&ti.url, Duration::from_secs(2)).unwrap()),
            Arc::new(MemoryTeams::new([(
                "myteam",
                &["alice"][..],
                &["ci-bot"][..],
            )])),
            AuthConfig::default(),
        ),
        ..Config::default()
    })
    .await;
    let c = s.client();
    let layer = pierone_protocol::tar_with(&[("hello.txt", "hi")]);
    for tag in ["1.0", "2.0"] {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","t":"{tag}"}}"#);
        for blob in [config.as_bytes(), &layer[..]] {
            let d = Digest::sha256_of(blob);
            c.req(
                Method::POST,
                &format!("/v2/myteam/app/blobs/uploads/?digest={d}"),
            )
            .header("Authorization", "Bearer alice")
            .body(blob.to_vec())
            .send()
            .await
            .unwrap();
        }
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::sha256_of(config.as_bytes()).as_str(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::sha256_of(&layer).as_str(), "size": layer.len()}],
        }))
        .unwrap();
        let r = c
            .req(Method::PUT, &format!("/v2/myteam/app/manifests/{tag}"))
            .header("Authorization", "Bearer alice")
            .header("Content-Type", OCI_MANIFEST)
            .body(m)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (s, ti)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_in_every_format() {
    let (s, _ti) = seeded().await;
    let home = tempfile::tempdir().unwrap();
    let env = [("PIERONE_URL", s.url.as_str()), ("PIERONE_TOKEN", "alice")];

    let r = pierone(home.path(), &env, &["teams"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, "NAME\nmyteam\n");
    let r = pierone(home.path(), &env, &["artifacts", "myteam", "-o", "tsv"]).await;
    assert_eq!(r.stdout, "team\tartifact\nmyteam\tapp\n");

    let r = pierone(home.path(), &env, &["tags", "myteam", "app"]).await;
    assert!(r.ok, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("TEAM") && lines[0].contains("CREATED") && lines[0].contains("BY"),
        "{}",
        r.stdout
    );
    // Relative times in text output ("just now" here; "5d ago" later), never raw timestamps.
    let relative = lines[1].contains("just now") || lines[1].contains(" ago");
    assert!(
        lines[1].contains("1.0") && relative && lines[1].contains("alice"),
        "{}",
        r.stdout
    );
    assert!(lines[2].contains("2.0"));
    let r = pierone(
        home.path(),
        &env,
        &["tags", "myteam", "-o", "json", "--limit", "1"],
    )
    .await;
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "the newest one");
    // The API's field names.
    assert_eq!(v[0]["name"], "2.0");
    assert_eq!(v[0]["created_by"], "alice");
    assert!(v[0]["created"].as_str().unwrap().ends_with('Z'));

    let r = pierone(home.path(), &env, &["latest", "myteam", "app"]).await;
    assert_eq!(r.stdout, "2.0\n");
    // -o json: the API's object, field for field.
    let r = pierone(
        home.path(),
        &env,
        &["latest", "myteam", "app", "-o", "json"],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    let api: Value = s
        .client()
        .req(Method::GET, "/teams/myteam/artifacts/app/latest")
        .header("Authorization", "Bearer alice")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&r.stdout).unwrap(), api);
    assert_eq!(api["name"], "2.0");
    assert!(api["size"].is_u64(), "{api}");

    let digest: String = {
        let r = pierone(home.path(), &env, &["tags", "myteam", "app", "-o", "json"]).await;
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        v[0]["digest"].as_str().unwrap().to_owned()
    };
    let r = pierone(home.path(), &env, &["image", &digest[7..19], "-o", "tsv"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, "team\tartifact\tname\nmyteam\tapp\t1.0\n");
    let r = pierone(home.path(), &env, &["image", "ffffffffffff"]).await;
    assert!(
        !r.ok && r.stderr.trim() == "pierone: image ffffffffffff not found",
        "{}",
        r.stderr
    );

    let r = pierone(
        home.path(),
        &env,
        &["scm-source", "myteam", "app", "1.0", "-o", "json"],
    )
    .await;
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["status"], "unknown");

    let r = pierone(
        home.path(),
        &env,
        &["inspect-contents", "myteam", "app", "1.0", "-o", "tsv"],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("1.0\tlinux/amd64\tsha256:") && l.ends_with("\thello.txt")),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_clear_line() {
    let (s, _ti) = seeded().await;
    let home = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Env, &[&str], &str); 5] = [
        (
            &[("PIERONE_URL", dead.as_str()), ("PIERONE_TOKEN", "alice")],
            &["teams"],
            "cannot reach",
        ),
        (
            &[("PIERONE_URL", s.url.as_str()), ("PIERONE_TOKEN", "wrong")],
            &["teams"],
            "refused the token of --token/PIERONE_TOKEN (401)",
        ),
        (&[("PIERONE_URL", s.url.as_str())], &["teams"], "(401)"),
        (
            &[("PIERONE_URL", s.url.as_str()), ("PIERONE_TOKEN", "alice")],
            &["artifacts", "nobody"],
            "team nobody not found",
        ),
        (&[("PIERONE_TOKEN", "alice")], &["teams"], "no registry URL"),
    ];
    for (env, args, want) in cases {
        let r = pierone(home.path(), env, args).await;
        assert!(!r.ok, "{args:?} should fail");
        assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
        assert!(
            r.stderr.starts_with("pierone: ") && r.stderr.contains(want),
            "{args:?}: {}",
            r.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_keeps_the_docker_config_and_saves_the_url() {
    let (s, _ti) = seeded().await;
    let home = tempfile::tempdir().unwrap();
    let docker = home.path().join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    let before = json!({
        "auths": {"other.example": {"auth": "dXNlcjpwYXNz"}},
        "credsStore": "secretservice",
        "credHelpers": {"gcr.io": "gcloud"},
        "HttpHeaders": {"User-Agent": "x"},
    });
    std::fs::write(
        docker.join("config.json"),
        serde_json::to_vec_pretty(&before).unwrap(),
    )
    .unwrap();

    let r = pierone(
        home.path(),
        &[("PIERONE_TOKEN", "alice")],
        &["login", "--url", &s.url],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    let after: Value =
        serde_json::from_slice(&std::fs::read(docker.join("config.json")).unwrap()).unwrap();
    for key in ["auths", "credsStore", "HttpHeaders"] {
        assert_eq!(after[key], before[key], "{key} kept");
    }
    assert_eq!(after["credHelpers"]["gcr.io"], "gcloud");
    assert_eq!(after["credHelpers"][s.host()], "pierone");
    // The URL is remembered for later commands.
    let saved = std::fs::read_to_string(home.path().join(".config/pierone/pierone.yaml")).unwrap();
    assert!(saved.contains(&s.url), "{saved}");
    let r = pierone(
        home.path(),
        &[("PIERONE_TOKEN", "alice")],
        &["teams", "-o", "tsv"],
    )
    .await;
    assert_eq!(r.stdout, "name\nmyteam\n", "{}", r.stderr);
    // A bad token does not log in, and leaves the file alone.
    let r = pierone(home.path(), &[("PIERONE_TOKEN", "wrong")], &["login"]).await;
    assert!(!r.ok);
    let again: Value =
        serde_json::from_slice(&std::fs::read(docker.join("config.json")).unwrap()).unwrap();
    assert_eq!(again, after);
}

/// An OAuth 2.0 token endpoint that grants `ci-bot-token` for the service user's password.
async fn token_endpoint() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let (base, calls) = fake_service(Arc::new(|seen: &Seen| {
        // Basic base64("client-id:client-secret")
        let client_ok = seen.authorization == "Basic Y2xpZW50LWlkOmNsaWVudC1zZWNyZXQ=";
        let form: std::collections::HashMap<String, String> =
            form_urlencoded::parse(seen.body.as_bytes())
                .into_owned()
                .collect();
        let user_ok = form.get("grant_type").map(String::as_str) == Some("password")
            && form.get("username").map(String::as_str) == Some("stups_ci-bot")
            && form.get("password").map(String::as_str) == Some("hunter2");
        if seen.path == "/oauth2/token" && client_ok && user_ok {
            (
                200,
                json!({"access_token": "ci-bot-token", "token_type": "Bearer", "expires_in": 3600})
                    .to_string(),
                Duration::ZERO,
            )
        } else {
            (
                400,
                json!({"error": "invalid_grant"}).to_string(),
                Duration::ZERO,
            )
        }
    }))
    .await;
    (format!("{base}/oauth2/token"), calls)
}

fn credentials_dir(dir: &Path, password: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("user.json"),
        json!({"application_username": "stups_ci-bot", "application_password": password})
            .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("client.json"),
        json!({"client_id": "client-id", "client_secret": "client-secret"}).to_string(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_helper_token_sources() {
    let home = tempfile::tempdir().unwrap();
    let helper = || bin("docker-credential-pierone");
    let r = run(
        helper(),
        home.path(),
        &[("OAUTH2_ACCESS_TOKENS", "other=x,pierone=from-list")],
        &["get"],
        Some("registry.example\n"),
    )
    .await;
    assert!(r.ok, "{}", r.stdout);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["Username"].clone(), v["Secret"].clone()),
        (json!("oauth2"), json!("from-list"))
    );

    let creds = home.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("pierone-token-secret"), "from-file\n").unwrap();
    let cd = creds.to_str().unwrap();
    let r = run(
        helper(),
        home.path(),
        &[("CREDENTIALS_DIR", cd)],
        &["get"],
        Some("registry.example"),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap()["Secret"],
        "from-file"
    );

    // The password grant, cached until shortly before expiry.
    let (url, calls) = token_endpoint().await;
    let grant = home.path().join("service-user");
    credentials_dir(&grant, "hunter2");
    let gd = grant.to_str().unwrap();
    let env = [
        ("CREDENTIALS_DIR", gd),
        ("OAUTH2_ACCESS_TOKEN_URL", url.as_str()),
    ];
    for _ in 0..3 {
        let r = run(
            helper(),
            home.path(),
            &env,
            &["get"],
            Some("registry.example"),
        )
        .await;
        assert!(r.ok, "{}", r.stdout);
        assert_eq!(
            serde_json::from_str::<Value>(&r.stdout).unwrap()["Secret"],
            "ci-bot-token"
        );
    }
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "cached after the first grant"
    );
    let cache = home.path().join(".cache/pierone/token.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // A wrong password is one clear failure, not a token.
    let bad = home.path().join("bad-user");
    credentials_dir(&bad, "wrong");
    let bd = bad.to_str().unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let r = run(
        helper(),
        fresh.path(),
        &[
            ("CREDENTIALS_DIR", bd),
            ("OAUTH2_ACCESS_TOKEN_URL", url.as_str()),
        ],
        &["get"],
        Some("r"),
    )
    .await;
    assert!(!r.ok);
    assert!(r.stdout.contains("invalid_grant"), "{}", r.stdout);
    let r = run(helper(), fresh.path(), &[], &["get"], Some("r")).await;
    assert!(
        !r.ok && r.stdout.contains("no OAuth 2.0 token"),
        "{}",
        r.stdout
    );
}

/// What a CI job does: a service user logs in, podman pushes through the credential helper,
/// and the CLI shows the push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_service_user_pushes_with_podman_through_the_helper() {
    let (s, _ti) = seeded().await;
    let (token_url, _) = token_endpoint().await;
    let home = tempfile::tempdir().unwrap();
    let creds = home.path().join("credentials");
    credentials_dir(&creds, "hunter2");
    let bin_dir = bin("pierone").parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let runtime = home.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let env = [
        ("CREDENTIALS_DIR", creds.to_str().unwrap()),
        ("OAUTH2_ACCESS_TOKEN_URL", token_url.as_str()),
        ("PATH", path.as_str()),
        ("XDG_RUNTIME_DIR", runtime.to_str().unwrap()),
    ];
    let r = pierone(home.path(), &env, &["login", "--url", &s.url]).await;
    assert!(r.ok, "{}", r.stderr);

    let host = s.host().to_owned();
    let podman = |args: Vec<String>| {
        let env = env.map(|(k, v)| (k, v.to_owned()));
        let home = home.path().to_owned();
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(PathBuf::from("podman"), &home, &env, &args, None).await
        }
    };
    let seed = format!("{host}/myteam/app:1.0");
    let pushed = format!("{host}/myteam/ci-built:7");
    let r = podman(vec![
        "pull".into(),
        "--tls-verify=false".into(),
        seed.clone(),
    ])
    .await;
    assert!(r.ok, "pull through the helper: {}", r.stderr);
    let r = podman(vec!["tag".into(), seed.clone(), pushed.clone()]).await;
    assert!(r.ok, "{}", r.stderr);
    let r = podman(vec![
        "push".into(),
        "--tls-verify=false".into(),
        pushed.clone(),
    ])
    .await;
    assert!(r.ok, "push through the helper: {}", r.stderr);

    let r = pierone(
        home.path(),
        &env,
        &["tags", "myteam", "ci-built", "-o", "json"],
    )
    .await;
    let v: Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|_| panic!("{} {}", r.stdout, r.stderr));
    assert_eq!(v[0]["name"], "7");
    assert_eq!(
        v[0]["created_by"], "stups_ci-bot",
        "recorded as the service user"
    );
    let r = pierone(home.path(), &env, &["latest", "myteam", "ci-built"]).await;
    assert_eq!(r.stdout, "7\n");
    for image in [seed, pushed] {
        let _ = podman(vec!["rmi".into(), "-f".into(), image]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_json_service_is_not_taken_for_a_pier_one_api() {
    let (url, calls) = fake_service(Arc::new(|seen: &Seen| {
        if seen.path.starts_with("/teams/gone") {
            (404, "<html>Not Found</html>".into(), Duration::ZERO)
        } else if seen.path.starts_with("/teams/numbers") {
            (200, "[1, 2, 3]".into(), Duration::ZERO)
        } else {
            (
                200,
                json!({"service": "something else", "items": []}).to_string(),
                Duration::ZERO,
            )
        }
    }))
    .await;
    let home = tempfile::tempdir().unwrap();
    let env = [("PIERONE_URL", url.as_str()), ("PIERONE_TOKEN", "alice")];
    let commands: [&[&str]; 7] = [
        &["teams"],
        &["artifacts", "myteam"],
        &["artifacts", "numbers"],
        &["tags", "myteam", "app"],
        &["latest", "myteam", "app"],
        &["image", "abcdef"],
        &["artifacts", "gone"],
    ];
    for args in commands {
        let r = pierone(home.path(), &env, args).await;
        assert!(!r.ok, "{args:?} should fail: {}", r.stdout);
        assert_eq!(
            r.stdout, "",
            "{args:?}: nothing printed, not an empty table"
        );
        assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
        assert!(
            r.stderr.starts_with(&format!(
                "pierone: this is not a Pier One API at {url} (GET /"
            )),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= commands.len());
}

/// A registry that cannot be reached is named with the cause: refused, DNS, or TLS against a
/// plain-HTTP server (with the `http://` URL to use instead), not reqwest's "client error
/// (Connect)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_name_their_cause() {
    let home = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind one, then close it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let refused = format!("http://127.0.0.1:{closed}");
    let r = pierone(home.path(), &[("PIERONE_URL", &refused)], &["teams"]).await;
    assert!(!r.ok);
    assert_eq!(
        r.stderr.trim(),
        format!(
            "pierone: cannot reach {refused}: connection refused (is the registry running, and on this port?)"
        )
    );
    let r = pierone(
        home.path(),
        &[("PIERONE_URL", "http://registry.invalid")],
        &["teams"],
    )
    .await;
    assert!(
        r.stderr
            .starts_with("pierone: cannot reach http://registry.invalid: DNS lookup failed: "),
        "{}",
        r.stderr
    );
    let s = TestServer::start().await;
    let tls = s.url.replacen("http://", "https://", 1);
    let r = pierone(home.path(), &[("PIERONE_URL", &tls)], &["teams"]).await;
    assert_eq!(
        r.stderr.trim(),
        format!(
            "pierone: cannot reach {tls}: TLS handshake failed: this looks like plain HTTP: use --url {}",
            s.url
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_follow_every_page_and_limit_stops_early() {
    let (s, _ti) = seeded().await;
    let c = s.client();
    let r = c
        .req(Method::GET, "/v2/myteam/app/manifests/1.0")
        .header("Authorization", "Bearer alice")
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let manifest = r.bytes().await.unwrap();
    let digest = Digest::sha256_of(&manifest);
    // 1.0 and 2.0, then 248 more tags of 1.0's manifest: 250 tags, 249 of one image.
    let extra: Vec<String> = (2..250).map(|i| format!("t{i:03}")).collect();
    for tag in &extra {
        let r = c
            .req(Method::PUT, &format!("/v2/myteam/app/manifests/{tag}"))
            .header("Authorization", "Bearer alice")
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let home = tempfile::tempdir().unwrap();
    let env = [("PIERONE_URL", s.url.as_str()), ("PIERONE_TOKEN", "alice")];
    let column = |stdout: &str, i: usize| -> Vec<String> {
        stdout
            .lines()
            .skip(1)
            .map(|l| l.split('\t').nth(i).unwrap().to_owned())
            .collect()
    };

    // The server's pages hold 100: all 250 tags take three, in order, none twice.
    let r = pierone(
        home.path(),
        &env,
        &["tags", "myteam", "app", "--limit", "0", "-o", "tsv"],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    let mut want = vec!["1.0".to_owned(), "2.0".to_owned()];
    want.extend(extra.iter().cloned());
    assert_eq!(column(&r.stdout, 2), want);

    // --limit 10: the newest ten.
    let r = pierone(
        home.path(),
        &env,
        &["tags", "myteam", "app", "--limit", "10", "-o", "tsv"],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(column(&r.stdout, 2), want[240..].to_vec());

    // The image search follows pages too, and --limit stops after ten.
    let prefix = &digest.hex()[..12];
    let r = pierone(home.path(), &env, &["image", prefix, "-o", "tsv"]).await;
    assert!(r.ok, "{}", r.stderr);
    let found = column(&r.stdout, 2);
    assert_eq!(found.len(), 249, "{}", r.stdout);
    let mut unique = found.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 249, "no tag twice");
    let r = pierone(
        home.path(),
        &env,
        &["image", prefix, "--limit", "10", "-o", "json"],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 10, "{}", r.stdout);
    assert_eq!(v[0]["name"], "1.0");
    let r = pierone(home.path(), &env, &["teams", "--limit", "1", "-o", "tsv"]).await;
    assert_eq!(r.stdout, "name\nmyteam\n", "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_config_digest_names_every_manifest_that_shares_it() {
    let (s, _ti) = seeded().await;
    let c = s.client();
    // What podman does when it re-compresses on push: new manifests, the same config (1.0's).
    let config = r#"{"architecture":"amd64","os":"linux","t":"1.0"}"#;
    let image = Digest::sha256_of(config.as_bytes());
    let layer = pierone_protocol::tar_with(&[("hello.txt", "hi")]);
    for tag in ["shared-a", "shared-b"] {
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": image.as_str(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::sha256_of(&layer).as_str(), "size": layer.len()}],
            "annotations": {"pushed-as": tag},
        }))
        .unwrap();
        let r = c
            .req(Method::PUT, &format!("/v2/myteam/app/manifests/{tag}"))
            .header("Authorization", "Bearer alice")
            .header("Content-Type", OCI_MANIFEST)
            .body(m)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let home = tempfile::tempdir().unwrap();
    let env = [("PIERONE_URL", s.url.as_str()), ("PIERONE_TOKEN", "alice")];
    let every =
        "team\tartifact\tname\nmyteam\tapp\t1.0\nmyteam\tapp\tshared-a\nmyteam\tapp\tshared-b\n";
    // The full digest, with and without the algorithm, and a short prefix of it: one image.
    for arg in [image.as_str(), image.hex(), &image.hex()[..12]] {
        let r = pierone(home.path(), &env, &["image", arg, "-o", "tsv"]).await;
        assert!(r.ok, "{arg}: {}", r.stderr);
        assert_eq!(r.stdout, every, "{arg}");
    }

    // An empty prefix would match everything: 400, not 404.
    for arg in ["", "sha256:"] {
        let r = pierone(home.path(), &env, &["image", arg]).await;
        assert!(!r.ok);
        assert_eq!(
            r.stderr,
            "pierone: the registry answered 400: an empty prefix matches every image; give a digest or a prefix of one\n",
            "{arg:?}"
        );
    }
    let r = c
        .req(Method::GET, "/tags/")
        .header("Authorization", "Bearer alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// An OAuth 2.0 token endpoint that knows one client (`client-id`/`client-secret`) and one
/// service user (`stups_ci-bot`/`hunter2`), and answers as RFC 6749 says: 401
/// `invalid_client` for a wrong client, 400 `invalid_grant` for a wrong password.
async fn strict_token_endpoint() -> String {
    let (base, _) = fake_service(Arc::new(|seen: &Seen| {
        let form: std::collections::HashMap<String, String> =
            form_urlencoded::parse(seen.body.as_bytes())
                .into_owned()
                .collect();
        if seen.authorization != "Basic Y2xpZW50LWlkOmNsaWVudC1zZWNyZXQ=" {
            let body = json!({"error": "invalid_client"}).to_string();
            return (401, body, Duration::ZERO);
        }
        if form.get("password").map(String::as_str) != Some("hunter2") {
            let body = json!({"error": "invalid_grant"}).to_string();
            return (400, body, Duration::ZERO);
        }
        let body =
            json!({"access_token": "ci-bot-token", "token_type": "Bearer", "expires_in": 3600});
        (200, body.to_string(), Duration::ZERO)
    }))
    .await;
    format!("{base}/oauth2/token")
}

/// A token source that is set up but fails is reported with the source and the cause, not
/// swallowed into an anonymous request; "run `pierone login`" is said only where logging in
/// changes which token is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_source_is_named_with_its_cause() {
    let (s, _ti) = seeded().await;
    let token_url = strict_token_endpoint().await;
    let home = tempfile::tempdir().unwrap();
    let root = home.path();
    let url = s.url.as_str();

    // A wrong client secret: the endpoint's invalid_client, and which file holds the client.
    let wrong_client = root.join("wrong-client");
    credentials_dir(&wrong_client, "hunter2");
    std::fs::write(
        wrong_client.join("client.json"),
        json!({"client_id": "client-id", "client_secret": "not-it"}).to_string(),
    )
    .unwrap();
    let wrong_password = root.join("denied-user");
    credentials_dir(&wrong_password, "wrong");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/oauth2/token", l.local_addr().unwrap())
    };
    let right = root.join("right");
    credentials_dir(&right, "hunter2");
    // A token file that cannot be read (a directory: root reads any file), and an empty one.
    let unreadable = root.join("unreadable");
    std::fs::create_dir_all(unreadable.join("pierone-token-secret")).unwrap();
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("pierone-token-secret"), "\n").unwrap();
    let bad_file = root.join("bad-file");
    std::fs::create_dir_all(&bad_file).unwrap();
    std::fs::write(bad_file.join("pierone-token-secret"), "stale\n").unwrap();

    let dir = |p: &Path| p.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<(&str, String)>, String)> = vec![
        (
            vec![
                ("CREDENTIALS_DIR", dir(&wrong_client)),
                ("OAUTH2_ACCESS_TOKEN_URL", token_url.clone()),
            ],
            format!(
                "cannot get an OAuth 2.0 token from the password grant at {token_url}: it \
                 refused the client credentials of {}/client.json (invalid_client)",
                wrong_client.display()
            ),
        ),
        (
            vec![
                ("CREDENTIALS_DIR", dir(&wrong_password)),
                ("OAUTH2_ACCESS_TOKEN_URL", token_url.clone()),
            ],
            format!(
                "cannot get an OAuth 2.0 token from the password grant at {token_url}: it \
                 refused the service user's credentials of {}/user.json (invalid_grant)",
                wrong_password.display()
            ),
        ),
        (
            vec![
                ("CREDENTIALS_DIR", dir(&right)),
                ("OAUTH2_ACCESS_TOKEN_URL", closed.clone()),
            ],
            format!(
                "cannot get an OAuth 2.0 token from the password grant at {closed}: connection \
                 refused (is OAUTH2_ACCESS_TOKEN_URL right?)"
            ),
        ),
        (
            vec![("OAUTH2_ACCESS_TOKEN_URL", token_url.clone())],
            "cannot get an OAuth 2.0 token from the password grant: OAUTH2_ACCESS_TOKEN_URL is \
             set but CREDENTIALS_DIR (the directory of user.json and client.json) is not"
                .to_owned(),
        ),
        (
            vec![("CREDENTIALS_DIR", dir(&empty))],
            format!(
                "cannot get an OAuth 2.0 token from the token file {}/pierone-token-secret: it \
                 is empty",
                empty.display()
            ),
        ),
        (
            vec![("CREDENTIALS_DIR", dir(&unreadable))],
            format!(
                "cannot get an OAuth 2.0 token from the token file {}/pierone-token-secret: \
                 cannot read it: Is a directory (os error 21)",
                unreadable.display()
            ),
        ),
        // Tokens the registry refuses: named by their source, with what would help.
        (
            vec![("PIERONE_TOKEN", "wrong".to_owned())],
            format!(
                "{url} refused the token of --token/PIERONE_TOKEN (401): pass a valid token \
                 (--token and PIERONE_TOKEN come before every other source, so `pierone login` \
                 cannot replace it)"
            ),
        ),
        (
            vec![("CREDENTIALS_DIR", dir(&bad_file))],
            format!(
                "{url} refused the token in {0}/pierone-token-secret (401): renew \
                 {0}/pierone-token-secret (it comes before the password grant and `pierone \
                 login`)",
                bad_file.display()
            ),
        ),
    ];
    for (env, want) in cases {
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.push(("PIERONE_URL", url));
        let r = pierone(root, &env, &["teams"]).await;
        assert_eq!(r.code, Some(1), "{env:?}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.stdout, "", "{env:?}");
        assert_eq!(r.stderr, format!("pierone: {want}\n"), "{env:?}");
    }

    // A token endpoint that does not answer in time.
    let (slow, _) = fake_service(Arc::new(|_: &Seen| {
        (200, "{}".to_owned(), Duration::from_secs(10))
    }))
    .await;
    let r = pierone(
        root,
        &[
            ("PIERONE_URL", url),
            ("CREDENTIALS_DIR", right.to_str().unwrap()),
            ("OAUTH2_ACCESS_TOKEN_URL", &slow),
            ("PIERONE_OAUTH2_TIMEOUT", "1"),
        ],
        &["teams"],
    )
    .await;
    assert_eq!(
        r.stderr,
        format!(
            "pierone: cannot get an OAuth 2.0 token from the password grant at {slow}/: it did \
             not answer within 1 s (timed out)\n"
        )
    );

    // Without any source, the request goes without a token, and the 401 says what to set up.
    let r = pierone(root, &[("PIERONE_URL", url)], &["teams"]).await;
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr,
        format!(
            "pierone: {url} refused the request without a token (401): no token source is set \
             up: pass --token or set PIERONE_TOKEN, OAUTH2_ACCESS_TOKENS=pierone=<token>, \
             $CREDENTIALS_DIR/pierone-token-secret, or OAUTH2_ACCESS_TOKEN_URL with user.json \
             and client.json in $CREDENTIALS_DIR; then run `pierone login`\n"
        )
    );
    // The right credentials work, so the failures above were the sources' own.
    let r = pierone(
        root,
        &[
            ("PIERONE_URL", url),
            ("CREDENTIALS_DIR", right.to_str().unwrap()),
            ("OAUTH2_ACCESS_TOKEN_URL", &token_url),
        ],
        &["teams", "-o", "tsv"],
    )
    .await;
    assert_eq!(r.stdout, "name\nmyteam\n", "{}", r.stderr);
}

/// `pierone login` obtains a token, checks it, stores it owner-only, and later commands (and
/// the credential helper) use it with no source set up; without a source it says what to set
/// and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_stores_a_token_that_later_commands_use() {
    let (s, _ti) = seeded().await;
    let home = tempfile::tempdir().unwrap();
    let root = home.path();

    // No source: a plain message, and nothing written.
    let r = pierone(root, &[], &["login", "--url", &s.url]).await;
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr,
        "pierone: no OAuth 2.0 token: nothing to log in with: no token source is set up: pass \
         --token or set PIERONE_TOKEN, OAUTH2_ACCESS_TOKENS=pierone=<token>, \
         $CREDENTIALS_DIR/pierone-token-secret, or OAUTH2_ACCESS_TOKEN_URL with user.json and \
         client.json in $CREDENTIALS_DIR; then run `pierone login` again\n"
    );
    assert!(!root.join(".docker").exists());
    assert!(!root.join(".config").exists());
    assert!(!root.join(".cache").exists());

    // Without the credential helper on PATH, Docker could not use the login: said, not fatal.
    let r = pierone(
        root,
        &[("PIERONE_TOKEN", "alice"), ("PATH", "/nonexistent")],
        &["login", "--url", &s.url],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        r.stderr,
        format!(
            "pierone: warning: docker-credential-pierone is not on PATH: Docker cannot get \
             tokens for {} until it is (it is installed next to pierone)\n",
            s.host()
        )
    );
    let cache = root.join(".cache/pierone/token.json");
    assert_eq!(
        r.stdout,
        format!(
            "Logged in to {} with the token of --token/PIERONE_TOKEN.\nStored the token in {} \
             (owner-only) for later commands.\nDocker uses docker-credential-pierone for {} \
             ({}).\n",
            s.url,
            cache.display(),
            s.host(),
            root.join(".docker/config.json").display()
        )
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cache), 0o600);
        assert_eq!(mode(cache.parent().unwrap()), 0o700);
    }
    assert!(std::fs::read_to_string(&cache).unwrap().contains("alice"));

    // No token source now: the stored token is used, against the saved URL.
    let r = pierone(root, &[], &["teams", "-o", "tsv"]).await;
    assert_eq!(r.stdout, "name\nmyteam\n", "{}", r.stderr);
    // So does the credential helper, for that registry only.
    let helper = bin("docker-credential-pierone");
    let r = run(helper.clone(), root, &[], &["get"], Some(s.host())).await;
    assert!(r.ok, "{}", r.stdout);
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap()["Secret"],
        "alice"
    );
    let r = run(helper, root, &[], &["get"], Some("other.example")).await;
    assert!(
        !r.ok && r.stdout.contains("no OAuth 2.0 token"),
        "{}",
        r.stdout
    );

    // A stored token the registry refuses: here logging in again is what helps.
    let cached: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    let stale = cached.to_string().replace("\"alice\"", "\"revoked\"");
    std::fs::write(&cache, stale).unwrap();
    let r = pierone(root, &[], &["teams"]).await;
    assert_eq!(
        r.stderr,
        format!(
            "pierone: {} refused the token `pierone login` stored for {} ({}) (401): it has \
             probably expired: run `pierone login` again\n",
            s.url,
            s.host(),
            cache.display()
        )
    );

    // The password grant: the token it issued is stored with its expiry.
    let (token_url, _) = token_endpoint().await;
    let creds = root.join("credentials");
    credentials_dir(&creds, "hunter2");
    let bin_dir = bin("docker-credential-pierone")
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let r = pierone(
        root,
        &[
            ("CREDENTIALS_DIR", creds.to_str().unwrap()),
            ("OAUTH2_ACCESS_TOKEN_URL", &token_url),
            ("PATH", &bin_dir),
        ],
        &["login", "-o", "json"],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stderr, "", "the helper is on PATH: no warning");
    assert_eq!(v_bool(&r.stdout, "credential_helper_on_path"), Some(true));
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["token_source"],
        format!("the token the password grant at {token_url} issued")
    );
    assert_eq!(v["url"], s.url.as_str());
    assert_eq!(v["token_cache"], cache.to_str().unwrap());
    assert!(v["token_expires"].as_str().unwrap().ends_with('Z'), "{v}");
    let r = pierone(root, &[], &["tags", "myteam", "app", "-o", "tsv"]).await;
    assert!(r.ok, "with the service user's stored token: {}", r.stderr);
}

fn v_bool(json: &str, key: &str) -> Option<bool> {
    serde_json::from_str::<Value>(json).ok()?[key].as_bool()
}

/// `-o json` on every command: the API's objects and field names, numbers as JSON numbers,
/// times in RFC 3339 (the audit endpoints' epoch milliseconds converted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_speaks_the_apis_json() {
    let (s, _ti) = seeded().await;
    let home = tempfile::tempdir().unwrap();
    let root = home.path();
    let env = [("PIERONE_URL", s.url.as_str()), ("PIERONE_TOKEN", "alice")];
    let json = |args: &'static [&'static str]| {
        let root = root.to_owned();
        async move {
            let mut all = args.to_vec();
            all.extend(["-o", "json"]);
            let r = pierone(&root, &env, &all).await;
            assert!(r.ok, "{args:?}: {}", r.stderr);
            serde_json::from_str::<Value>(&r.stdout)
                .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", r.stdout))
        }
    };
    let rfc3339 = |v: &Value| {
        let t = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
        let b = t.as_bytes();
        assert!(
            t.len() == 24 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && t.ends_with('Z'),
            "not RFC 3339: {t}"
        );
    };

    assert_eq!(json(&["teams"]).await, json!([{"name": "myteam"}]));
    assert_eq!(
        json(&["artifacts", "myteam"]).await,
        json!([{"team": "myteam", "artifact": "app"}])
    );

    let tags = json(&["tags", "myteam", "app"]).await;
    let api: Value = s
        .client()
        .req(Method::GET, "/teams/myteam/artifacts/app/tags")
        .header("Authorization", "Bearer alice")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags.as_array().unwrap().len(), 2);
    for (cli, api) in tags.as_array().unwrap().iter().zip(api.as_array().unwrap()) {
        // The API's tag, every field, in context.
        let mut want = json!({"team": "myteam", "artifact": "app"});
        want.as_object_mut()
            .unwrap()
            .extend(api.as_object().unwrap().clone());
        assert_eq!(cli, &want);
        assert!(cli["size"].is_u64(), "{cli}");
        assert!(cli["image"].as_str().unwrap().starts_with("sha256:"));
        rfc3339(&cli["created"]);
    }
    let latest = json(&["latest", "myteam", "app"]).await;
    assert_eq!(latest, api[1]);

    let digest = tags[0]["digest"].as_str().unwrap().to_owned();
    let image = tags[0]["image"].as_str().unwrap().to_owned();
    let r = pierone(root, &env, &["image", &image, "-o", "json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap(),
        json!([{"name": "1.0", "team": "myteam", "artifact": "app", "digest": digest}]),
        "{}",
        r.stderr
    );

    let scm = json(&["scm-source", "myteam", "app", "1.0"]).await;
    assert_eq!(
        scm,
        json!([{"team": "myteam", "artifact": "app", "tag": "1.0", "url": null,
                "revision": null, "author": null, "status": "unknown", "created": null}])
    );

    let files = json(&["inspect-contents", "myteam", "app", "1.0"]).await;
    let layer = Digest::sha256_of(&pierone_protocol::tar_with(&[("hello.txt", "hi")]));
    assert_eq!(
        files,
        json!([{"tag": "1.0", "platform": "linux/amd64", "layer": layer.as_str(), "path": "hello.txt"}])
    );

    let history = json(&["audit", "history", "myteam", "app", "2.0"]).await;
    let h = &history[0];
    assert_eq!(h["seq"], 2, "a number: {h}");
    assert_eq!(h["kind"], "tag");
    assert_eq!(h["repository"], "myteam/app");
    assert_eq!(h["tag"], "2.0");
    assert_eq!(h["digest"], tags[1]["digest"]);
    assert_eq!(h["principal"], "alice");
    rfc3339(&h["at"]);

    // Wait for the checkpoint of both assignments.
    let mut verified = Value::Null;
    for _ in 0..100 {
        verified = json(&["audit", "verify"]).await;
        if verified["checkpoint"]["size"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(verified["size"], 2, "{verified}");
    assert_eq!(verified["verified_before"], 0);
    assert_eq!(verified["key_pinned"], false);
    rfc3339(&verified["checkpoint"]["at"]);
    assert!(verified["checkpoint"]["signature"].is_string());

    let proven = json(&["audit", "prove", "myteam", "app", "1.0"]).await;
    assert_eq!(proven["digest"], digest.as_str());
    assert_eq!(proven["entry"]["seq"], 1);
    rfc3339(&proven["entry"]["at"]);
    rfc3339(&proven["checkpoint"]["at"]);
    assert_eq!(proven["proof"]["size"], 2);
    assert!(proven["proof"]["path"].is_array());

    let key_dir = tempfile::tempdir().unwrap();
    let key = crate::audit::ed25519_key(key_dir.path());
    let r = pierone(
        root,
        &[],
        &[
            "audit",
            "public-key",
            "--key",
            key.to_str().unwrap(),
            "-o",
            "json",
        ],
    )
    .await;
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["public_key"].as_str().unwrap().len(), 44, "{v}");
    assert!(
        v["pem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );

    let man = root.join("man");
    let r = pierone(root, &[], &["man", man.to_str().unwrap(), "-o", "json"]).await;
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .contains(&json!({"path": man.join("pierone.1").to_str().unwrap()})),
        "{v}"
    );
}

/// Completion scripts for every shell clap_complete knows, man pages for every subcommand,
/// and a credential helper that answers --help and --version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_man_pages_and_helper_help() {
    let home = tempfile::tempdir().unwrap();
    let root = home.path();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let r = pierone(root, &[], &["completions", shell]).await;
        assert!(r.ok, "{shell}: {}", r.stderr);
        for word in ["inspect-contents", "scm-source", "public-key", "platform"] {
            assert!(r.stdout.contains(word), "{shell} completes {word}");
        }
    }
    let r = pierone(root, &[], &["completions", "tcsh"]).await;
    assert_eq!(r.code, Some(2), "a usage error: {}", r.stderr);

    let dir = root.join("man1");
    let r = pierone(root, &[], &["man", dir.to_str().unwrap()]).await;
    assert!(r.ok, "{}", r.stderr);
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    for page in [
        "pierone.1",
        "pierone-login.1",
        "pierone-teams.1",
        "pierone-inspect-contents.1",
        "pierone-audit.1",
        "pierone-audit-verify.1",
        "pierone-audit-public-key.1",
        "pierone-completions.1",
    ] {
        assert!(pages.contains(&page.to_owned()), "{page} in {pages:?}");
    }
    // The listing names every file written, one per line after the header.
    assert_eq!(r.stdout.lines().count(), pages.len() + 1, "{}", r.stdout);
    let page = std::fs::read_to_string(dir.join("pierone-inspect-contents.1")).unwrap();
    assert!(page.contains(".TH pierone-inspect-contents 1"), "{page}");
    assert!(page.contains("platform"), "{page}");

    let helper = bin("docker-credential-pierone");
    let r = run(helper.clone(), root, &[], &["--help"], None).await;
    assert!(r.ok);
    assert!(
        r.stdout
            .contains("Usage: docker-credential-pierone <get|store|erase|list>"),
        "{}",
        r.stdout
    );
    for flag in ["--version", "version"] {
        let r = run(helper.clone(), root, &[], &[flag], None).await;
        assert!(r.ok);
        assert_eq!(
            r.stdout,
            format!("docker-credential-pierone {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
    let r = run(helper.clone(), root, &[], &[], None).await;
    assert_eq!(r.code, Some(1));
    assert!(r.stdout.contains("Usage:"), "{}", r.stdout);
    // The protocol still works.
    let r = run(helper, root, &[], &["list"], Some("")).await;
    assert_eq!((r.ok, r.stdout.as_str()), (true, "{}\n"));
}

/// Push `files` as a one-layer image for `platform` (os/arch[/variant]) into myteam/app; its
/// manifest's bytes.
async fn push_image(s: &TestServer, platform: &str, file: &str) -> Vec<u8> {
    let c = s.client();
    let parts: Vec<&str> = platform.split('/').collect();
    let mut config = json!({"os": parts[0], "architecture": parts[1]});
    if let Some(v) = parts.get(2) {
        config["variant"] = json!(v);
    }
    let config = config.to_string();
    let layer = pierone_protocol::tar_with(&[(file, "x")]);
    for blob in [config.as_bytes(), &layer[..]] {
        let d = Digest::sha256_of(blob);
        let r = c
            .req(
                Method::POST,
                &format!("/v2/myteam/app/blobs/uploads/?digest={d}"),
            )
            .header("Authorization", "Bearer alice")
            .body(blob.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::sha256_of(config.as_bytes()).as_str(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::sha256_of(&layer).as_str(), "size": layer.len()}],
    }))
    .unwrap()
}

/// `inspect-contents` of an image index shows the image of --platform, by default the host's
/// (and says so), never silently another; a single image must be of the platform asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_contents_picks_the_platform_of_an_index() {
    let (s, _ti) = seeded().await;
    let c = s.client();
    let mut entries = Vec::new();
    for (platform, file, tag) in [
        ("linux/amd64", "amd64.txt", "multi-amd64"),
        ("linux/arm64/v8", "arm64.txt", "multi-arm64"),
    ] {
        let m = push_image(&s, platform, file).await;
        let r = c
            .req(Method::PUT, &format!("/v2/myteam/app/manifests/{tag}"))
            .header("Authorization", "Bearer alice")
            .header("Content-Type", OCI_MANIFEST)
            .body(m.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let parts: Vec<&str> = platform.split('/').collect();
        let mut p = json!({"os": parts[0], "architecture": parts[1]});
        if let Some(v) = parts.get(2) {
            p["variant"] = json!(v);
        }
        entries.push(json!({"mediaType": OCI_MANIFEST, "digest": Digest::sha256_of(&m).as_str(), "size": m.len(), "platform": p}));
    }
    // An attestation, as buildx adds one: not an image anyone runs.
    let mut attestation = entries[0].clone();
    attestation["platform"] = json!({"os": "unknown", "architecture": "unknown"});
    entries.push(attestation);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
    }))
    .unwrap();
    let r = c
        .req(Method::PUT, "/v2/myteam/app/manifests/multi")
        .header("Authorization", "Bearer alice")
        .header("Content-Type", OCI_INDEX)
        .body(index)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let home = tempfile::tempdir().unwrap();
    let env = [("PIERONE_URL", s.url.as_str()), ("PIERONE_TOKEN", "alice")];
    let inspect = |extra: &'static [&'static str]| {
        let root = home.path().to_owned();
        async move {
            let mut args = vec!["inspect-contents", "myteam", "app", "multi", "-o", "tsv"];
            args.extend(extra);
            pierone(&root, &env, &args).await
        }
    };
    let paths = |stdout: &str| -> Vec<(String, String)> {
        stdout
            .lines()
            .skip(1)
            .map(|l| {
                let cells: Vec<&str> = l.split('\t').collect();
                (cells[1].to_owned(), cells[3].to_owned())
            })
            .collect()
    };
    for (platform, want) in [
        ("linux/arm64", ("linux/arm64/v8", "arm64.txt")),
        ("linux/arm64/v8", ("linux/arm64/v8", "arm64.txt")),
        ("linux/amd64", ("linux/amd64", "amd64.txt")),
    ] {
        let r = pierone(
            home.path(),
            &env,
            &[
                "inspect-contents",
                "myteam",
                "app",
                "multi",
                "--platform",
                platform,
                "-o",
                "tsv",
            ],
        )
        .await;
        assert!(r.ok, "{platform}: {}", r.stderr);
        assert_eq!(r.stderr, "", "asked for, so nothing to say");
        assert_eq!(
            paths(&r.stdout),
            vec![(want.0.to_owned(), want.1.to_owned())],
            "{platform}"
        );
    }

    // No --platform: the host's, said on standard error.
    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let r = inspect(&[]).await;
    if host == "amd64" || host == "arm64" {
        assert!(r.ok, "{}", r.stderr);
        let (shown, file) = if host == "amd64" {
            ("linux/amd64", "amd64.txt")
        } else {
            ("linux/arm64/v8", "arm64.txt")
        };
        assert_eq!(paths(&r.stdout), vec![(shown.to_owned(), file.to_owned())]);
        assert_eq!(
            r.stderr,
            format!(
                "pierone: myteam/app:multi is an image index; showing {shown}, this host's \
                 platform (of linux/amd64, linux/arm64/v8; choose with --platform)\n"
            )
        );
    }

    // A platform the index does not have: refused, with the ones it has.
    let r = inspect(&["--platform", "linux/s390x"]).await;
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        "pierone: the image index myteam/app:multi has no image for linux/s390x (it has: \
         linux/amd64, linux/arm64/v8); choose one with --platform\n"
    );
    let r = inspect(&["--platform", "linux"]).await;
    assert_eq!(r.code, Some(2), "a usage error: {}", r.stderr);

    // A single image: shown with its platform, and refused for another.
    let single = |platform: &'static str| {
        let root = home.path().to_owned();
        async move {
            pierone(
                &root,
                &env,
                &[
                    "inspect-contents",
                    "myteam",
                    "app",
                    "multi-arm64",
                    "--platform",
                    platform,
                    "-o",
                    "tsv",
                ],
            )
            .await
        }
    };
    let r = single("linux/arm64").await;
    assert_eq!(
        paths(&r.stdout),
        vec![("linux/arm64/v8".to_owned(), "arm64.txt".to_owned())],
        "{}",
        r.stderr
    );
    let r = single("linux/amd64").await;
    assert_eq!(
        r.stderr,
        "pierone: myteam/app:multi-arm64 is a single image for linux/arm64/v8, not for \
         linux/amd64 (and not an image index)\n"
    );
}
