//! Authentication and team permissions over HTTP, with a real token-info endpoint.

use std::sync::Arc;
use std::time::Duration;

use pierone_auth::{AuthConfig, Authorizer, CachingValidator, MemoryTeams, TokenInfoValidator};
use pierone_protocol::Digest;
use pierone_registry::Config;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::util::{Client, FakeTokenInfo, OCI_MANIFEST, TestServer, header, location, token_json};

/// Every kind of caller the matrix exercises, with the header it sends.
const PRINCIPALS: [(&str, Option<&str>); 11] = [
    ("anonymous", None),
    ("malformed header", Some("Bearer")),
    ("basic with a real user", Some("Basic YWxpY2U6c2VjcmV0")),
    ("unknown token", Some("Bearer nobody-knows-me")),
    ("expired token", Some("Bearer expired")),
    ("employee in team", Some("Bearer alice")),
    ("employee not in team", Some("Bearer bob")),
    ("service assigned to team", Some("Bearer ci-bot")),
    ("service assigned elsewhere", Some("Bearer other-bot")),
    (
        "service without write scope",
        Some("Bearer ci-bot-readonly"),
    ),
    ("write_all", Some("Basic b2F1dGgyOmFkbWlu")), // oauth2:admin, as docker login sends it
];

async fn token_info() -> FakeTokenInfo {
    FakeTokenInfo::start(vec![
        ("expired", token_json("alice", "/employees", &["uid"], 0)),
        ("alice", token_json("alice", "/employees", &["uid"], 3600)),
        ("bob", token_json("bob", "/employees", &["uid"], 3600)),
        (
            "ci-bot",
            token_json(
                "stups_ci-bot",
                "/services",
                &["uid", "application.write"],
                3600,
            ),
        ),
        (
            "other-bot",
            token_json(
                "stups_other-bot",
                "/services",
                &["uid", "application.write"],
                3600,
            ),
        ),
        (
            "ci-bot-readonly",
            token_json("stups_ci-bot", "/services", &["uid"], 3600),
        ),
        (
            "admin",
            token_json(
                "robot",
                "/services",
                &["uid", "application.write_all"],
                3600,
            ),
        ),
    ])
    .await
}

fn teams() -> MemoryTeams {
    MemoryTeams::new([
        ("myteam", &["alice"][..], &["ci-bot"][..]),
        ("other", &["bob"][..], &["other-bot"][..]),
    ])
}

async fn server(tokeninfo_url: &str, public_read: bool, timeout: Duration) -> TestServer {
    let validator = TokenInfoValidator::new(tokeninfo_url, timeout).unwrap();
    let cached = CachingValidator::new(
        Arc::new(validator),
        1 << 20,
        Duration::from_secs(60),
        Duration::from_secs(10),
    );
    TestServer::start_with(Config {
        auth: Authorizer::new(
            Arc::new(cached),
            Arc::new(teams()),
            AuthConfig {
                public_read,
                ..AuthConfig::default()
            },
        ),
        ..Config::default()
    })
    .await
}

fn with(c: &Client, method: Method, path: &str, auth: Option<&str>) -> reqwest::RequestBuilder {
    let r = c.req(method, path);
    match auth {
        Some(a) => r.header("Authorization", a),
        None => r,
    }
}

const ADMIN: Option<&str> = Some("Bearer admin");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix() {
    let ti = token_info().await;
    let s = server(&ti.url, false, Duration::from_secs(2)).await;
    let c = s.client();
    // Seed with the write_all token: a blob, an image tagged 1.0, and a source for mounts.
    let blob = b"a layer".to_vec();
    let bd = Digest::sha256_of(&blob);
    let r = with(
        &c,
        Method::POST,
        &format!("/v2/myteam/app/blobs/uploads/?digest={bd}"),
        ADMIN,
    )
    .body(blob.clone())
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let cd = Digest::sha256_of(&config);
    with(
        &c,
        Method::POST,
        &format!("/v2/myteam/app/blobs/uploads/?digest={cd}"),
        ADMIN,
    )
    .body(config.clone())
    .send()
    .await
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": bd.as_str(), "size": blob.len()}],
    }))
    .unwrap();
    let md = Digest::sha256_of(&manifest);
    let r = with(&c, Method::PUT, "/v2/myteam/app/manifests/1.0", ADMIN)
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let writers = ["employee in team", "service assigned to team", "write_all"];
    let denied = [
        "employee not in team",
        "service assigned elsewhere",
        "service without write scope",
    ];
    let mut cells = 0;
    for (who, auth) in PRINCIPALS {
        let authenticated = writers.contains(&who) || denied.contains(&who);
        // (endpoint, request, success status, is a write)
        // Upload sessions belong to whoever started them: a writer uses its own, the others
        // (refused before any session is looked up) one of the admin's.
        let owner = if writers.contains(&who) { auth } else { ADMIN };
        let session = || async {
            let r = with(&c, Method::POST, "/v2/myteam/app/blobs/uploads/", owner)
                .send()
                .await
                .unwrap();
            location(&r)
        };
        let patch_loc = session().await;
        let put_loc = session().await;
        let fresh = format!("fresh {who}");
        let fd = Digest::sha256_of(fresh.as_bytes());
        let requests: Vec<(&str, reqwest::RequestBuilder, StatusCode, bool)> = vec![
            (
                "ping",
                with(&c, Method::GET, "/v2/", auth),
                StatusCode::OK,
                false,
            ),
            (
                "blob HEAD",
                with(
                    &c,
                    Method::HEAD,
                    &format!("/v2/myteam/app/blobs/{bd}"),
                    auth,
                ),
                StatusCode::OK,
                false,
            ),
            (
                "blob GET",
                with(&c, Method::GET, &format!("/v2/myteam/app/blobs/{bd}"), auth),
                StatusCode::OK,
                false,
            ),
            (
                "upload POST",
                with(&c, Method::POST, "/v2/myteam/app/blobs/uploads/", auth),
                StatusCode::ACCEPTED,
                true,
            ),
            (
                "upload PATCH",
                with(&c, Method::PATCH, &patch_loc, auth).body("chunk"),
                StatusCode::ACCEPTED,
                true,
            ),
            (
                "upload PUT",
                with(&c, Method::PUT, &format!("{put_loc}?digest={fd}"), auth).body(fresh.clone()),
                StatusCode::CREATED,
                true,
            ),
            (
                "mount",
                with(
                    &c,
                    Method::POST,
                    &format!("/v2/myteam/copy/blobs/uploads/?mount={bd}&from=myteam/app"),
                    auth,
                ),
                StatusCode::CREATED,
                true,
            ),
            (
                "manifest PUT",
                with(&c, Method::PUT, "/v2/myteam/app/manifests/1.0", auth)
                    .header("Content-Type", OCI_MANIFEST)
                    .body(manifest.clone()),
                StatusCode::CREATED,
                true,
            ),
            (
                "manifest GET",
                with(&c, Method::GET, "/v2/myteam/app/manifests/1.0", auth),
                StatusCode::OK,
                false,
            ),
            (
                "manifest HEAD",
                with(
                    &c,
                    Method::HEAD,
                    &format!("/v2/myteam/app/manifests/{md}"),
                    auth,
                ),
                StatusCode::OK,
                false,
            ),
            (
                "tags list",
                with(&c, Method::GET, "/v2/myteam/app/tags/list", auth),
                StatusCode::OK,
                false,
            ),
            (
                "catalog",
                with(&c, Method::GET, "/v2/_catalog", auth),
                StatusCode::OK,
                false,
            ),
            (
                "referrers",
                with(
                    &c,
                    Method::GET,
                    &format!("/v2/myteam/app/referrers/{md}"),
                    auth,
                ),
                StatusCode::OK,
                false,
            ),
        ];
        for (endpoint, req, success, write) in requests {
            let head = endpoint.ends_with("HEAD");
            let r = req.send().await.unwrap();
            let status = r.status();
            let www = header(&r, "WWW-Authenticate");
            assert_eq!(
                header(&r, "Docker-Distribution-API-Version").as_deref(),
                Some("registry/2.0"),
                "{who} / {endpoint}"
            );
            let body: Value = if head {
                Value::Null
            } else {
                r.json().await.unwrap_or(Value::Null)
            };
            let code = body["errors"][0]["code"].as_str().unwrap_or("").to_owned();
            let (want_status, want_code) = if !authenticated {
                (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
            } else if write && denied.contains(&who) {
                (StatusCode::FORBIDDEN, "DENIED")
            } else {
                (success, "")
            };
            assert_eq!(status, want_status, "{who} / {endpoint}: {body}");
            if !head {
                assert_eq!(code, want_code, "{who} / {endpoint}: {body}");
            }
            if want_status == StatusCode::UNAUTHORIZED {
                assert_eq!(
                    www.as_deref(),
                    Some("Basic realm=\"Pier One Docker Registry\""),
                    "{who} / {endpoint}"
                );
            }
            if want_status == StatusCode::FORBIDDEN {
                let msg = body["errors"][0]["message"].as_str().unwrap_or("");
                assert!(msg.contains("myteam"), "{who} / {endpoint}: {msg}");
            }
            cells += 1;
        }
    }
    assert_eq!(cells, 11 * 13);
    // 143 requests with 8 distinct tokens cost 8 validations: answers are cached, including
    // the negative ones.
    assert_eq!(ti.calls.load(std::sync::atomic::Ordering::SeqCst), 8);
}

#[tokio::test]
async fn public_read_lets_anonymous_pull_but_not_push() {
    let ti = token_info().await;
    let s = server(&ti.url, true, Duration::from_secs(2)).await;
    let c = s.client();
    let d = Digest::sha256_of(b"public");
    let r = with(
        &c,
        Method::POST,
        &format!("/v2/myteam/app/blobs/uploads/?digest={d}"),
        ADMIN,
    )
    .body("public")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(c.get("/v2/").await.status(), StatusCode::OK);
    assert_eq!(
        c.get(&format!("/v2/myteam/app/blobs/{d}")).await.status(),
        StatusCode::OK
    );
    assert_eq!(c.get("/v2/_catalog").await.status(), StatusCode::OK);
    let r = c
        .req(Method::POST, "/v2/myteam/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A bad token is still refused, even where anonymous access would be allowed.
    let r = with(
        &c,
        Method::GET,
        "/v2/_catalog",
        Some("Bearer nobody-knows-me"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn token_info_trouble_fails_closed() {
    let ti = token_info().await;
    let s = server(&ti.url, true, Duration::from_millis(500)).await;
    let c = s.client();
    for token in ["slow", "garbage", "boom"] {
        for (m, path) in [
            (Method::GET, "/v2/"),
            (Method::POST, "/v2/myteam/app/blobs/uploads/"),
        ] {
            let r = with(&c, m.clone(), path, Some(&format!("Bearer {token}")))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{token} {m} {path}"
            );
        }
    }
    // The answer says which service is down (not that the credentials are wrong) and when to
    // try again; TOOMANYREQUESTS would tell the client it is being throttled.
    let r = with(&c, Method::GET, "/v2/", Some("Bearer boom"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "Retry-After").as_deref(), Some("5"));
    let e = crate::util::oci_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNSUPPORTED").await;
    assert_eq!(
        e.message,
        "the token-info service is unavailable: it answered 503 Service Unavailable; retry later"
    );
    // Unreachable altogether.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/tokeninfo", closed.local_addr().unwrap());
    drop(closed);
    let s = server(&url, false, Duration::from_millis(500)).await;
    let r = with(&s.client(), Method::GET, "/v2/", Some("Bearer alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = s.client().get("/v2/").await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "no credentials needs no token-info"
    );
}

#[tokio::test]
async fn pushes_record_the_pusher() {
    let ti = token_info().await;
    let s = server(&ti.url, false, Duration::from_secs(2)).await;
    let c = s.client();
    let d = Digest::sha256_of(b"{}");
    with(
        &c,
        Method::POST,
        &format!("/v2/myteam/app/blobs/uploads/?digest={d}"),
        Some("Bearer alice"),
    )
    .body("{}")
    .send()
    .await
    .unwrap();
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": d.as_str(), "size": 2},
        "layers": [],
    }))
    .unwrap();
    let r = with(
        &c,
        Method::PUT,
        "/v2/myteam/app/manifests/2.0",
        Some("Bearer alice"),
    )
    .header("Content-Type", OCI_MANIFEST)
    .body(m)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Read back through the store the server wrote to.
    let db = s.db_path();
    let tags = pierone_tagstore::SqlTagStore::open(db.to_str().unwrap())
        .await
        .unwrap();
    let recs = pierone_tagstore::Manifests::tag_records(&tags, &"myteam/app".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].created_by, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_wires_token_info_and_a_teams_file() {
    let ti = token_info().await;
    let dir = tempfile::tempdir().unwrap();
    let teams = dir.path().join("teams.yaml");
    std::fs::write(
        &teams,
        "teams:\n  myteam:\n    members: [alice]\n    applications: [ci-bot]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let p = crate::util::Process::start(
        &data,
        &[
            "--tokeninfo-url",
            &ti.url,
            "--teams-file",
            teams.to_str().unwrap(),
        ],
    );
    let c = Client::new(&p.url);
    let r = c.get("/v2/").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for (token, want) in [
        ("Bearer alice", StatusCode::ACCEPTED),
        ("Bearer ci-bot", StatusCode::ACCEPTED),
        ("Bearer bob", StatusCode::FORBIDDEN),
    ] {
        let r = with(
            &c,
            Method::POST,
            "/v2/myteam/app/blobs/uploads/",
            Some(token),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), want, "{token}");
    }
}

#[tokio::test]
async fn the_binary_refuses_to_serve_a_network_without_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pierone-server"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without token validation") && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
}
