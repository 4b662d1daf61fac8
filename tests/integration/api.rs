//! The Pier One API over HTTP, on a registry seeded by real pushes.

use pierone_protocol::tar_with;
use std::sync::Arc;
use std::time::Duration;

use pierone_auth::{AuthConfig, Authorizer, MemoryTeams, TokenInfoValidator};
use pierone_protocol::Digest;
use pierone_registry::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::util::{Client, FakeTokenInfo, OCI_MANIFEST, TestServer, oci_error, token_json};

async fn server() -> (TestServer, FakeTokenInfo) {
    let ti = FakeTokenInfo::start(vec![
        ("alice", token_json("alice", "/employees", &["uid"], 3600)),
        (
            "trusted",
            token_json(
                "ci",
                "/services",
                &[
                    "uid",
                    "application.write_all",
                    "application.write_all_trusted",
                ],
                3600,
            ),
        ),
    ])
    .await;
    let s = TestServer::start_with(Config {
        auth: Authorizer::new(
            Arc::new(TokenInfoValidator::new(&ti.url, Duration::from_secs(2)).unwrap()),
            Arc::new(MemoryTeams::new([
                ("myteam", &["alice"][..], &[][..]),
                ("other", &["alice"][..], &[][..]),
            ])),
            AuthConfig::default(),
        ),
        ..Config::default()
    })
    .await;
    (s, ti)
}

fn authed(c: &Client, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
    c.req(method, path)
        .header("Authorization", format!("Bearer {token}"))
}

async fn get(c: &Client, path: &str) -> (StatusCode, Value) {
    let r = authed(c, Method::GET, path, "alice").send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Push a one-layer image whose layer is `layer` (a tar), tagged `tag`; returns (manifest
/// digest, config digest).
async fn push(
    c: &Client,
    repo: &str,
    tag: &str,
    layer: &[u8],
    token: &str,
    scm: Option<&str>,
) -> (Digest, Digest) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","tag":"{tag}"}}"#);
    let mut digests = vec![];
    for blob in [config.as_bytes(), layer] {
        let d = Digest::sha256_of(blob);
        let r = authed(
            c,
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            token,
        )
        .body(blob.to_vec())
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        digests.push(d);
    }
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0].as_str(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digests[1].as_str(), "size": layer.len()}],
    }))
    .unwrap();
    let mut req = authed(
        c,
        Method::PUT,
        &format!("/v2/{repo}/manifests/{tag}"),
        token,
    )
    .header("Content-Type", OCI_MANIFEST)
    .body(m.clone());
    if let Some(s) = scm {
        req = req.header("X-SCM-Source", s);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    (Digest::sha256_of(&m), digests[0].clone())
}

#[tokio::test]
async fn teams_artifacts_tags_and_latest() {
    let (s, _ti) = server().await;
    let c = s.client();
    assert_eq!(
        get(&c, "/teams").await,
        (StatusCode::OK, json!([])),
        "empty lists are []"
    );
    let layer = tar_with(&[("hello.txt", "hi")]);
    let (d1, img1) = push(&c, "myteam/app", "1.0", &layer, "alice", None).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (d2, _) = push(&c, "myteam/app", "0.9", &layer, "trusted", None).await;
    push(&c, "myteam/tools/cli", "1", &layer, "alice", None).await;
    push(&c, "other/thing", "1", &layer, "alice", None).await;

    assert_eq!(get(&c, "/teams").await.1, json!(["myteam", "other"]));
    assert_eq!(
        get(&c, "/teams/myteam/artifacts").await.1,
        json!(["app", "tools/cli"])
    );
    let (status, tags) = get(&c, "/teams/myteam/artifacts/app/tags").await;
    assert_eq!(status, StatusCode::OK);
    let tags = tags.as_array().unwrap();
    assert_eq!(tags.len(), 2);
    // Oldest first, with who pushed them and what they name.
    assert_eq!(tags[0]["name"], "1.0");
    assert_eq!(tags[0]["created_by"], "alice");
    assert_eq!(tags[0]["digest"], d1.as_str());
    assert_eq!(tags[0]["image"], img1.as_str());
    assert_eq!(tags[0]["media_type"], OCI_MANIFEST);
    assert!(tags[0]["size"].as_u64().unwrap() > layer.len() as u64);
    let created = tags[0]["created"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 24, "{created}");
    assert_eq!(tags[1]["name"], "0.9");
    assert_eq!(tags[1]["created_by"], "ci");

    let (status, one) = get(&c, "/teams/myteam/artifacts/app/tags/0.9").await;
    assert_eq!(
        (status, &one["digest"]),
        (StatusCode::OK, &json!(d2.as_str()))
    );
    let (_, latest) = get(&c, "/teams/myteam/artifacts/app/latest").await;
    assert_eq!(latest["name"], "0.9", "latest is by creation, not by name");
    let (status, nested) = get(&c, "/teams/myteam/artifacts/tools%2Fcli/tags").await;
    assert_eq!(
        (status, nested.as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );

    for path in [
        "/teams/nobody/artifacts",
        "/teams/myteam/artifacts/nothing/tags",
        "/teams/myteam/artifacts/nothing/latest",
        "/teams/myteam/artifacts/app/tags/9.9",
    ] {
        let r = authed(&c, Method::GET, path, "alice").send().await.unwrap();
        oci_error(
            r,
            StatusCode::NOT_FOUND,
            if path.ends_with("9.9") {
                "MANIFEST_UNKNOWN"
            } else {
                "NAME_UNKNOWN"
            },
        )
        .await;
    }
    // The read rule applies: no credentials, no API.
    let r = c.get("/teams").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn image_search_and_stats() {
    let (s, _ti) = server().await;
    let c = s.client();
    let (d1, img1) = push(
        &c,
        "myteam/app",
        "1.0",
        &tar_with(&[("a", "1")]),
        "alice",
        None,
    )
    .await;
    let (d2, _) = push(
        &c,
        "myteam/app",
        "2.0",
        &tar_with(&[("a", "2")]),
        "alice",
        None,
    )
    .await;

    let (status, found) = get(&c, &format!("/tags/{}", &img1.hex()[..12])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        found,
        json!([{"name": "1.0", "team": "myteam", "artifact": "app", "digest": d1.as_str()}])
    );
    let (status, found) = get(&c, &format!("/tags/{}", &d2.as_str()[..20])).await;
    assert_eq!(
        (status, found[0]["name"].clone()),
        (StatusCode::OK, json!("2.0"))
    );
    let r = authed(&c, Method::GET, "/tags/ffffffffffff", "alice")
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    // A prefix short enough to hit both images is ambiguous. Find one that does.
    let common: String = d1
        .hex()
        .chars()
        .zip(d2.hex().chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    if !common.is_empty() {
        let r = authed(&c, Method::GET, &format!("/tags/{common}"), "alice")
            .send()
            .await
            .unwrap();
        // The candidates, like git's ambiguous object names, each with its tags.
        let e = oci_error(r, StatusCode::PRECONDITION_FAILED, "UNSUPPORTED").await;
        let tags: Vec<Value> = e.detail["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["tags"].clone())
            .collect();
        assert_eq!(tags.len(), 2, "{:?}", e.detail);
        assert!(tags.contains(&json!(["myteam/app:1.0"])), "{:?}", e.detail);
        assert!(tags.contains(&json!(["myteam/app:2.0"])), "{:?}", e.detail);
        assert!(
            e.message
                .starts_with(&format!("{common} matches 2 different images: sha256:"))
                && e.message.ends_with("); give a longer prefix"),
            "{}",
            e.message
        );
    }
    // The bare algorithm, or nothing, would match every image.
    for empty in ["/tags/sha256:", "/tags/"] {
        let r = authed(&c, Method::GET, empty, "alice")
            .send()
            .await
            .unwrap();
        let e = oci_error(r, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
        assert_eq!(
            e.message,
            "an empty prefix matches every image; give a digest or a prefix of one"
        );
    }

    let (_, stats) = get(&c, "/stats").await;
    assert_eq!(
        (
            stats["teams"].clone(),
            stats["artifacts"].clone(),
            stats["tags"].clone()
        ),
        (json!(1), json!(1), json!(2))
    );
    assert!(stats["storage"].as_u64().unwrap() > 2048);
    let (_, per_team) = get(&c, "/stats/teams").await;
    assert_eq!(
        per_team,
        json!([{"team": "myteam", "stats": {"artifacts": 1, "tags": 2}}])
    );

    // Health and the API description need no credentials.
    let r = c.get("/.well-known/health").await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"health": true}));
    let r = c.get("/openapi.yaml").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("/teams/{team}/artifacts"));
    let r = authed(&c, Method::POST, "/teams", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn scm_source_from_the_push_or_from_the_layers() {
    let (s, _ti) = server().await;
    let c = s.client();
    let declared =
        r#"{"url":"git:github.com/x/app","revision":"abc123","author":"alice","status":""}"#;
    let encoded: String = form_urlencoded::byte_serialize(declared.as_bytes()).collect();

    // Only trusted pushers may declare it.
    let layer = tar_with(&[("x", "1")]);
    let d = Digest::sha256_of(&layer);
    authed(
        &c,
        Method::POST,
        &format!("/v2/myteam/app/blobs/uploads/?digest={d}"),
        "alice",
    )
    .body(layer.clone())
    .send()
    .await
    .unwrap();
    let r = authed(&c, Method::PUT, "/v2/myteam/app/manifests/1.0", "alice")
        .header("Content-Type", OCI_MANIFEST)
        .header("X-SCM-Source", encoded.clone())
        .body("{}")
        .send()
        .await
        .unwrap();
    let e = oci_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert!(e.message.contains("application.write_all_trusted"));

    push(&c, "myteam/app", "1.0", &layer, "trusted", Some(&encoded)).await;
    let (status, src) = get(&c, "/teams/myteam/artifacts/app/tags/1.0/scm-source").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (src["url"].clone(), src["revision"].clone()),
        (json!("git:github.com/x/app"), json!("abc123"))
    );

    // Not declared: found in the image's layers.
    let in_layer = r#"{"url":"git:github.com/x/other","revision":"def456","author":"bob","status":"modified"}"#;
    push(
        &c,
        "myteam/app",
        "2.0",
        &tar_with(&[("bin/app", "x"), ("scm-source.json", in_layer)]),
        "alice",
        None,
    )
    .await;
    let (status, src) = get(&c, "/teams/myteam/artifacts/app/tags/2.0/scm-source").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (src["revision"].clone(), src["status"].clone()),
        (json!("def456"), json!("modified"))
    );

    // Neither: 404.
    push(
        &c,
        "myteam/app",
        "3.0",
        &tar_with(&[("bin/app", "y")]),
        "alice",
        None,
    )
    .await;
    let r = authed(
        &c,
        Method::GET,
        "/teams/myteam/artifacts/app/tags/3.0/scm-source",
        "alice",
    )
    .send()
    .await
    .unwrap();
    oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = authed(&c, Method::PUT, "/v2/myteam/app/manifests/4.0", "trusted")
        .header("Content-Type", OCI_MANIFEST)
        .header("X-SCM-Source", "%7Bnot-json")
        .body("{}")
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
}

/// Tag `repo:tag` with the manifest `repo:from` names, so that many tags cost one image.
async fn retag(c: &Client, repo: &str, from: &str, tag: &str) {
    let r = authed(
        c,
        Method::GET,
        &format!("/v2/{repo}/manifests/{from}"),
        "alice",
    )
    .header("Accept", OCI_MANIFEST)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let m = r.bytes().await.unwrap();
    let r = authed(
        c,
        Method::PUT,
        &format!("/v2/{repo}/manifests/{tag}"),
        "alice",
    )
    .header("Content-Type", OCI_MANIFEST)
    .body(m)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{tag}");
}

/// GET `path`: the status, the body and the `Link` header.
async fn get_page(c: &Client, path: &str) -> (StatusCode, Value, Option<String>) {
    let r = authed(c, Method::GET, path, "alice").send().await.unwrap();
    let link = crate::util::header(&r, "link");
    (r.status(), r.json().await.unwrap_or(Value::Null), link)
}

#[tokio::test]
async fn every_list_is_paged_with_link_headers() {
    let (s, _ti) = server().await;
    let c = s.client();
    let layer = tar_with(&[("a", "1")]);
    let (_, image) = push(&c, "myteam/app", "t000", &layer, "alice", None).await;
    let names: Vec<String> = (0..250).map(|i| format!("t{i:03}")).collect();
    for name in &names[1..] {
        retag(&c, "myteam/app", "t000", name).await;
    }
    push(&c, "myteam/tools/cli", "1", &layer, "alice", None).await;
    push(&c, "other/thing", "1", &layer, "alice", None).await;

    // 250 tags in pages of 100: three pages, each linking the next, the last linking none.
    let base = "/teams/myteam/artifacts/app/tags";
    let mut seen = Vec::new();
    let mut links = Vec::new();
    let mut next = Some(format!("{base}?n=100"));
    while let Some(path) = next.take() {
        let (status, page, link) = get_page(&c, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        let page = page.as_array().unwrap().clone();
        seen.extend(page.iter().map(|t| t["name"].as_str().unwrap().to_owned()));
        links.push(link.clone());
        next = link.map(|l| {
            l.strip_prefix('<')
                .and_then(|l| l.strip_suffix(">; rel=\"next\""))
                .unwrap_or_else(|| panic!("not a next link: {l}"))
                .to_owned()
        });
        assert!(links.len() <= 3, "more pages than expected: {links:?}");
    }
    assert_eq!(
        links,
        [
            Some(format!("<{base}?n=100&last=t099>; rel=\"next\"")),
            Some(format!("<{base}?n=100&last=t199>; rel=\"next\"")),
            None,
        ]
    );
    assert_eq!(seen, names, "every tag once, oldest first");

    // Without n, pages hold 100; the first one links on.
    let (_, page, link) = get_page(&c, base).await;
    assert_eq!(page.as_array().unwrap().len(), 100);
    assert_eq!(
        link.as_deref(),
        Some(format!("<{base}?n=100&last=t099>; rel=\"next\"").as_str())
    );

    // Teams and artifacts page by name.
    let (_, page, link) = get_page(&c, "/teams?n=1").await;
    assert_eq!(
        (page, link.as_deref()),
        (
            json!(["myteam"]),
            Some("</teams?n=1&last=myteam>; rel=\"next\"")
        )
    );
    let (_, page, link) = get_page(&c, "/teams?n=1&last=myteam").await;
    assert_eq!((page, link), (json!(["other"]), None));
    let (_, page, link) = get_page(&c, "/teams/myteam/artifacts?n=1").await;
    assert_eq!(
        (page, link.as_deref()),
        (
            json!(["app"]),
            Some("</teams/myteam/artifacts?n=1&last=app>; rel=\"next\"")
        )
    );
    let (_, page, link) = get_page(&c, "/teams/myteam/artifacts?n=1&last=app").await;
    assert_eq!((page, link), (json!(["tools/cli"]), None));

    // The image search pages by team/artifact:tag (percent-encoded in the link).
    let prefix = &image.hex()[..12];
    let (_, page, link) = get_page(&c, &format!("/tags/{prefix}?n=100")).await;
    assert_eq!(page.as_array().unwrap().len(), 100);
    assert_eq!(page[99]["name"], "t099");
    assert_eq!(
        link.as_deref(),
        Some(format!("</tags/{prefix}?n=100&last=myteam%2Fapp%3At099>; rel=\"next\"").as_str())
    );
    let (_, page, _) = get_page(
        &c,
        &format!("/tags/{prefix}?n=1000&last=myteam%2Fapp%3At099"),
    )
    .await;
    let rest: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    // The other pushes have a config of their own: only app's tags carry this image.
    assert_eq!(rest.len(), 150, "{rest:?}");
    assert_eq!((rest[0], rest[149]), ("t100", "t249"));

    // A bad page size or cursor is 400, naming the parameter.
    for (path, param) in [
        (format!("{base}?n=0"), "parameter n:"),
        (format!("{base}?n=1001"), "parameter n:"),
        ("/teams?n=many".to_owned(), "parameter n:"),
        (format!("/tags/{prefix}?n=-1"), "parameter n:"),
        (format!("{base}?last=nope"), "parameter last:"),
    ] {
        let r = authed(&c, Method::GET, &path, "alice")
            .send()
            .await
            .unwrap();
        let e = oci_error(r, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
        assert!(e.message.contains(param), "{path}: {}", e.message);
    }
}
