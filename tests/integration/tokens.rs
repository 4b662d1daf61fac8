//! Tokens as an attacker sends them, against the built binaries: identity services failing
//! in every way must not put a secret into a response, a log line or a metric, and floods of
//! large bogus tokens must not grow the server's memory.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::cli::{Run, pierone};
use crate::util::{Answer, Client, Process, Seen, fake_service};

/// Every secret in these tests holds this, so one search finds any of them.
const MARKER: &str = "s3cr3t";

/// An answer that quotes `secret` in the way `mode` names: too late (the server gives
/// identity services 5 s), in a 5xx body, in JSON of the wrong shape (serde's messages repeat
/// the values they reject), as a bare JSON string, or in HTML.
fn echoing(secret: &str, mode: &str) -> Answer {
    let now = Duration::ZERO;
    match mode {
        "slow" => (
            200,
            json!({"uid": secret}).to_string(),
            Duration::from_secs(6),
        ),
        "5xx" => (502, format!("upstream refused {secret}"), now),
        "json" => (
            200,
            json!({"uid": "x", "active": secret, "expires_in": secret, "team_id": [secret]})
                .to_string(),
            now,
        ),
        "string" => (200, json!(secret).to_string(), now),
        _ => (200, format!("<html>{secret}</html>"), now),
    }
}

const MODES: [&str; 5] = ["slow", "5xx", "json", "string", "html"];

/// The mode a token, uid or path names: its first `-`-separated word after any prefix.
fn mode_of(s: &str) -> &str {
    s.rsplit(['/', '=', '_'])
        .next()
        .unwrap_or("")
        .split('-')
        .next()
        .unwrap_or("")
}

/// A base URL where nothing listens.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// Send every request at once (the slow ones take 5 s each), and return status and body of
/// each, together with the server's metrics and log afterwards.
async fn exercise(p: &Process, requests: Vec<(Method, &str, String)>) -> Vec<(StatusCode, String)> {
    let c = Client::new(&p.url);
    let futs = requests.into_iter().map(|(m, path, token)| {
        let r = c
            .req(m, path)
            .header("Authorization", format!("Bearer {token}"));
        async move {
            let r = r.send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    });
    let mut out = futures_util::future::join_all(futs).await;
    let metrics = c.get("/metrics").await.text().await.unwrap();
    out.push((StatusCode::OK, metrics));
    out
}

/// No answer, log line or metric holds the marker, and every request was answered 503 and
/// logged as a failure (so the search had something to search).
async fn assert_no_secret(p: &Process, answers: &[(StatusCode, String)], case: &str) {
    let (requests, metrics) = answers.split_at(answers.len() - 1);
    for (status, body) in requests {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{case}: {body}");
        assert!(
            !body.contains(MARKER),
            "{case}: the answer holds a secret: {body}"
        );
    }
    assert!(
        !metrics[0].1.contains(MARKER),
        "{case}: the metrics hold a secret"
    );
    // The log is read from a pipe by another thread: give it a moment to catch up.
    let mut log = String::new();
    for _ in 0..50 {
        log = p.log();
        if log.matches("request failed").count() >= requests.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log.matches("request failed").count() >= requests.len(),
        "{case}: not every failure was logged:\n{log}"
    );
    let leaked: Vec<&str> = log.lines().filter(|l| l.contains(MARKER)).collect();
    assert!(
        leaked.is_empty(),
        "{case}: the log holds a secret: {leaked:#?}"
    );
}

fn v2(token: String) -> (Method, &'static str, String) {
    (Method::GET, "/v2/", token)
}

fn push(token: String) -> (Method, &'static str, String) {
    (Method::POST, "/v2/myteam/app/blobs/uploads/", token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_info_and_team_service_failures_leak_no_secret() {
    // Token-info: `leak-<mode>-...` fails in that mode; `employee-<mode>-...` and
    // `service-<mode>-...` are valid and name the mode their team lookup fails in.
    let (tokeninfo, _) = fake_service(Arc::new(|seen: &Seen| {
        let token = seen.authorization.strip_prefix("Bearer ").unwrap_or("");
        let mut words = token.splitn(3, '-');
        let (kind, mode) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let valid = |uid: String, realm: &str| {
            let info = json!({"uid": uid, "realm": realm, "scope": ["uid", "application.write"], "expires_in": 3600});
            (200, info.to_string(), Duration::ZERO)
        };
        match kind {
            "employee" => valid(mode.to_owned(), "/employees"),
            "service" => valid(format!("stups_{mode}"), "/services"),
            _ => echoing(token, mode),
        }
    }))
    .await;
    // Team service and application registry: fail as the uid or application names, quoting
    // the server's own token they were sent.
    let (teams, _) = fake_service(Arc::new(|seen: &Seen| {
        echoing(&seen.authorization, mode_of(&seen.path))
    }))
    .await;
    let service_token = format!("service-token-{MARKER}");
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(
        &dir.path().join("data"),
        &[
            "--tokeninfo-url",
            &format!("{tokeninfo}/tokeninfo"),
            "--team-service-url",
            &teams,
            "--application-registry-url",
            &teams,
            "--service-token",
            &service_token,
        ],
    );
    let mut requests = Vec::new();
    for mode in MODES {
        requests.push(v2(format!("leak-{mode}-{MARKER}-{}", "t".repeat(100))));
        requests.push(push(format!("employee-{mode}-{MARKER}")));
        requests.push(push(format!("service-{mode}-{MARKER}")));
    }
    let answers = exercise(&p, requests).await;
    assert_no_secret(&p, &answers, "token-info and team services").await;

    // Nothing listening at all: the token-info URL, then the team services.
    let p = Process::start(
        &dir.path().join("data2"),
        &["--tokeninfo-url", &format!("{}/tokeninfo", refused_url())],
    );
    let answers = exercise(&p, vec![v2(format!("refused-{MARKER}"))]).await;
    assert_no_secret(&p, &answers, "token-info unreachable").await;
    let down = refused_url();
    let p = Process::start(
        &dir.path().join("data3"),
        &[
            "--tokeninfo-url",
            &format!("{tokeninfo}/tokeninfo"),
            "--team-service-url",
            &down,
            "--application-registry-url",
            &down,
            "--service-token",
            &service_token,
        ],
    );
    let answers = exercise(
        &p,
        vec![
            push(format!("employee-alice-{MARKER}")),
            push(format!("service-bot-{MARKER}")),
        ],
    )
    .await;
    assert_no_secret(&p, &answers, "team services unreachable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_failures_leak_neither_token_nor_client_secret() {
    let client_secret = format!("client-{MARKER}");
    let quoted = client_secret.clone();
    let (url, _) = fake_service(Arc::new(move |seen: &Seen| {
        let token = seen.body.strip_prefix("token=").unwrap_or("");
        let mode = mode_of(token);
        // As if the service quoted both the token and the client credentials it was sent.
        let echo = format!("{token} {} {quoted}", seen.authorization);
        if mode == "refuse" {
            return (401, format!("who are you? {echo}"), Duration::ZERO);
        }
        echoing(&echo, mode)
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(
        &dir.path().join("data"),
        &[
            "--introspection-url",
            &url,
            "--introspection-client-id",
            "pierone",
            "--introspection-client-secret",
            &client_secret,
        ],
    );
    let requests = MODES
        .iter()
        .chain(&["refuse"])
        .map(|mode| v2(format!("{mode}-{MARKER}")))
        .collect();
    let answers = exercise(&p, requests).await;
    assert_no_secret(&p, &answers, "introspection").await;

    let p = Process::start(
        &dir.path().join("data2"),
        &[
            "--introspection-url",
            &refused_url(),
            "--introspection-client-id",
            "pierone",
            "--introspection-client-secret",
            &client_secret,
        ],
    );
    let answers = exercise(&p, vec![v2(format!("refused-{MARKER}"))]).await;
    assert_no_secret(&p, &answers, "introspection unreachable").await;
}

/// A service user's credentials for the password grant, both holding the marker.
fn credentials(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("user.json"),
        json!({"application_username": "stups_ci-bot", "application_password": format!("password-{MARKER}")})
            .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("client.json"),
        json!({"client_id": "client-id", "client_secret": format!("client-{MARKER}")}).to_string(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_no_secret_when_the_token_endpoint_fails() {
    // The token endpoint fails as its path says, quoting the form it was sent (which holds
    // the password), the client secret, and a token it issued.
    let (base, calls) = fake_service(Arc::new(|seen: &Seen| {
        let echo = format!("{} client-{MARKER} issued-{MARKER}", seen.body);
        let now = Duration::ZERO;
        match mode_of(seen.path.split('?').next().unwrap_or("")) {
            "refuse" => (
                400,
                json!({"error": echo, "error_description": echo}).to_string(),
                now,
            ),
            "5xx" => (500, echo, now),
            "json" => (
                200,
                json!({"access_token": format!("issued-{MARKER}"), "token_type": echo, "expires_in": echo})
                    .to_string(),
                now,
            ),
            _ => (200, format!("<html>{echo}</html>"), now),
        }
    }))
    .await;
    let home = tempfile::tempdir().unwrap();
    let creds = home.path().join("credentials");
    credentials(&creds);
    let host = base.trim_start_matches("http://");
    let urls = [
        format!("{base}/oauth2/refuse"),
        format!("{base}/oauth2/5xx"),
        format!("{base}/oauth2/json"),
        format!("{base}/oauth2/html"),
        // Credentials in the URL itself are not shown either.
        format!("http://user:{MARKER}@{host}/oauth2/refuse?key={MARKER}"),
        format!("{}/oauth2/token", refused_url()),
    ];
    for url in &urls {
        let env = [
            ("CREDENTIALS_DIR", creds.to_str().unwrap()),
            ("OAUTH2_ACCESS_TOKEN_URL", url.as_str()),
        ];
        let r: Run = pierone(home.path(), &env, &["login", "--url", "http://127.0.0.1:9"]).await;
        assert!(!r.ok, "{url}: {}", r.stdout);
        assert!(r.stderr.contains("token"), "{url}: {}", r.stderr);
        assert!(
            !r.stderr.contains(MARKER) && !r.stdout.contains(MARKER),
            "{url}: a secret in\n{}{}",
            r.stdout,
            r.stderr
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), urls.len() - 1);
}

/// Resident memory after `n` requests, each with a distinct bogus token of `len` bytes.
async fn flood(p: &Process, seed: &str, n: usize, len: usize) -> u64 {
    let c = Client::new(&p.url);
    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..n)
        .map(|i| {
            let mut token = format!("{seed}-{i:08}-");
            token.push_str(&"b".repeat(len - token.len()));
            let r = c
                .req(Method::GET, "/v2/")
                .header("Authorization", format!("Bearer {token}"));
            async move { r.send().await.unwrap().status() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    p.rss_kib()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_bogus_tokens_do_not_grow_memory() {
    let (tokeninfo, calls) = fake_service(Arc::new(|_: &Seen| {
        (
            400,
            json!({"error": "invalid_token"}).to_string(),
            Duration::ZERO,
        )
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(
        &dir.path().join("data"),
        &["--tokeninfo-url", &format!("{tokeninfo}/tokeninfo")],
    );
    const HUGE: usize = 60_000;
    const LONGEST: usize = pierone_auth::MAX_TOKEN_LEN;
    // Warm up: buffers, allocator arenas and connections reach their working size.
    flood(&p, "warm-huge", 500, HUGE).await;
    let before = flood(&p, "warm-longest", 500, LONGEST).await;
    // 3,000 tokens of 60 KB were 180 MB when cached by value; 3,000 of 8 KiB, 24 MB.
    flood(&p, "huge", 3000, HUGE).await;
    let after = flood(&p, "longest", 3000, LONGEST).await;
    assert!(
        after <= before + 6 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // Only tokens of an acceptable length were ever sent to token-info.
    assert_eq!(calls.load(Ordering::SeqCst), 3500);
}
