//! OIDC tokens against the real server: `pierone-server --oidc-issuer` verifying JWTs of an
//! issuer run by the test on 127.0.0.1, next to a token-info service, pushed with this
//! crate's HTTP client and with skopeo (`--dest-creds oauth2:<jwt>`, as `docker login` does).

use std::path::Path;
use std::process::Command;

use pierone_auth::test_issuer::{SigningKey, TestIssuer};
use pierone_protocol::Digest;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::util::{Client, FakeTokenInfo, OCI_MANIFEST, Process, header, oci_error, token_json};

const AUD: &str = "https://pierone.test";

/// A GitHub-Actions-shaped token of `idp` for a workflow of `owner/app`.
fn ci_token(idp: &TestIssuer, key: &SigningKey, owner: &str, lifetime: i64) -> String {
    key.sign(&idp.claims(
        AUD,
        &format!("repo:{owner}/app:ref:refs/heads/main"),
        lifetime,
        json!({"repository": format!("{owner}/app"), "repository_owner": owner}),
    ))
}

fn server(idp: &str, data: &Path, extra: &[&str]) -> Process {
    let mut args = vec![
        "--oidc-issuer",
        idp,
        "--oidc-audience",
        AUD,
        "--oidc-uid-claim",
        "repository",
        "--oidc-team-claim",
        "repository_owner",
        "--oidc-scopes",
        "application.write",
    ];
    args.extend_from_slice(extra);
    Process::start(data, &args)
}

async fn post_upload(c: &Client, repo: &str, authorization: &str) -> reqwest::Response {
    c.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .header("Authorization", authorization)
        .send()
        .await
        .unwrap()
}

fn basic(token: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("oauth2:{token}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_push_where_their_team_claim_says_and_are_refused_by_reason() {
    let key = SigningKey::es256("ci-2026");
    let idp = TestIssuer::start(&[&key]).await;
    // Token-info on the same server, for the tokens that are not the issuer's.
    let ti = FakeTokenInfo::start(vec![(
        "opaque",
        token_json("robot", "/services", &["application.write_all"], 3600),
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = server(&idp.url, dir.path(), &["--tokeninfo-url", &ti.url]);
    let c = Client::new(&p.url);

    let mine = ci_token(&idp, &key, "myteam", 600);
    // A whole image, blobs then manifest, with the token as a bearer token.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let mut digests = Vec::new();
    for blob in [&config[..], b"a layer"] {
        let d = Digest::sha256_of(blob);
        let r = c
            .req(
                Method::POST,
                &format!("/v2/myteam/app/blobs/uploads/?digest={d}"),
            )
            .bearer_auth(&mine)
            .body(blob.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        digests.push((d, blob.len()));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digests[0].0.as_str(), "size": digests[0].1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digests[1].0.as_str(), "size": digests[1].1}],
    }))
    .unwrap();
    let r = c
        .req(Method::PUT, "/v2/myteam/app/manifests/1.0")
        .bearer_auth(&mine)
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    // As `docker login -u oauth2 -p <jwt>` sends it.
    assert_eq!(
        post_upload(&c, "myteam/app", &basic(&mine)).await.status(),
        StatusCode::ACCEPTED
    );

    // Another team's repository: 403 DENIED naming the workflow and the team.
    let e = oci_error(
        post_upload(&c, "other/app", &format!("Bearer {mine}")).await,
        StatusCode::FORBIDDEN,
        "DENIED",
    )
    .await;
    assert!(
        e.message.contains("myteam/app") && e.message.contains("other"),
        "{e:?}"
    );
    let theirs = ci_token(&idp, &key, "other", 600);
    assert_eq!(
        post_upload(&c, "other/app", &format!("Bearer {theirs}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    // Any valid token may pull.
    let r = c
        .req(Method::GET, "/v2/myteam/app/manifests/1.0")
        .bearer_auth(&theirs)
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Refusals are 401 with the reason, never the token.
    let expired = ci_token(&idp, &key, "myteam", -600);
    let wrong_aud = key.sign(&idp.claims(
        "https://elsewhere.test",
        "x",
        600,
        json!({"repository": "myteam/app", "repository_owner": "myteam"}),
    ));
    let forged = SigningKey::es256("ci-2026").sign(&idp.claims(
        AUD,
        "x",
        600,
        json!({"repository": "myteam/app", "repository_owner": "myteam"}),
    ));
    for (token, reason) in [
        (&expired, "expired"),
        (&wrong_aud, "audience"),
        (&forged, "signature"),
    ] {
        let r = post_upload(&c, "myteam/app", &format!("Bearer {token}")).await;
        assert!(header(&r, "WWW-Authenticate").is_some());
        let e = oci_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        assert!(e.message.contains(reason), "{reason}: {e:?}");
        assert!(!e.message.contains(token.as_str()), "{e:?}");
    }

    // The token-info service still answers for its own tokens on the same server.
    assert_eq!(
        post_upload(&c, "other/app", "Bearer opaque").await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(idp.jwks_requests(), 1, "keys fetched once, then cached");
    let log = p.log();
    for token in [&mine, &theirs, &expired, &forged] {
        assert!(!log.contains(token.as_str()), "a token is in the log");
    }
    assert!(log.contains("accepting OIDC tokens"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_issuer_is_503_with_retry_after_not_an_allow() {
    let key = SigningKey::rs256("k");
    let idp = TestIssuer::start(&[&key]).await;
    let url = idp.url.clone();
    let token = ci_token(&idp, &key, "myteam", 600);
    drop(idp);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    // The server starts although the issuer is down: keys are fetched when needed.
    let p = server(&url, dir.path(), &[]);
    let c = Client::new(&p.url);
    for _ in 0..2 {
        let r = post_upload(&c, "myteam/app", &format!("Bearer {token}")).await;
        assert_eq!(header(&r, "Retry-After").as_deref(), Some("5"));
        let e = oci_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNSUPPORTED").await;
        assert!(e.message.contains("OIDC issuer is unavailable"), "{e:?}");
        assert!(!e.message.contains(&url), "{e:?}");
    }
    // Without token-info, other tokens are refused rather than waved through.
    let r = post_upload(&c, "myteam/app", "Bearer opaque").await;
    oci_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
}

fn write_blob(layout: &Path, data: &[u8]) -> (Digest, usize) {
    let d = Digest::sha256_of(data);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(d.hex()), data).unwrap();
    (d, data.len())
}

/// An OCI layout holding one single-layer image tagged `img`.
fn layout(dir: &Path) {
    let layer = pierone_protocol::tar_with(&[("hello.txt", "pushed with an OIDC token")]);
    let (ld, ls) = write_blob(dir, &layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [ld.as_str()]},
    }))
    .unwrap();
    let (cd, cs) = write_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.as_str(), "size": ls}],
    }))
    .unwrap();
    let (md, ms) = write_blob(dir, &manifest);
    let index: Value = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": md.as_str(), "size": ms,
        "annotations": {"org.opencontainers.image.ref.name": "img"},
    }]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

async fn skopeo(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("skopeo")
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run skopeo (.ci/run installs it): {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_with_an_oidc_token_as_oauth2_password() {
    let key = SigningKey::ed25519("gitlab");
    let idp = TestIssuer::start(&[&key]).await;
    let dir = tempfile::tempdir().unwrap();
    let p = server(&idp.url, &dir.path().join("data"), &[]);
    let host = p.url.trim_start_matches("http://").to_owned();
    let lay = dir.path().join("layout");
    layout(&lay);
    let src = format!("oci:{}:img", lay.display());
    let copy = |token: &str, repo: &str| {
        vec![
            "copy".to_owned(),
            "--dest-tls-verify=false".to_owned(),
            "--dest-creds".to_owned(),
            format!("oauth2:{token}"),
            src.clone(),
            format!("docker://{host}/{repo}:1.0"),
        ]
    };
    let mine = ci_token(&idp, &key, "myteam", 600);
    let (ok, stderr) = skopeo(copy(&mine, "myteam/app")).await;
    assert!(ok, "{stderr}");
    let (ok, stderr) = skopeo(copy(&mine, "other/app")).await;
    assert!(!ok, "myteam's token pushed to team other");
    assert!(
        stderr.contains("denied") || stderr.contains("DENIED"),
        "{stderr}"
    );
    assert!(!stderr.contains(&mine));
    let (ok, stderr) = skopeo(copy(&ci_token(&idp, &key, "myteam", -600), "myteam/app2")).await;
    assert!(!ok);
    assert!(
        stderr.contains("unauthorized") || stderr.contains("authentication required"),
        "{stderr}"
    );
    // What skopeo pushed is there, by digest.
    let c = Client::new(&p.url);
    let r = c
        .req(Method::GET, "/v2/myteam/app/manifests/1.0")
        .bearer_auth(&mine)
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
