//! Manifests, immutable tags, listings and referrers over HTTP.

use pierone_protocol::Digest;
use pierone_registry::Config;
use pierone_tagstore::TagPolicy;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::util::{
    DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, TestServer, header, oci_error,
};

#[tokio::test]
async fn manifests_are_served_byte_for_byte_by_tag_and_digest() {
    let s = TestServer::start().await;
    let c = s.client();
    // Unusual formatting on purpose: a registry that re-serialises would change the digest.
    let m = c.image("team/app", "bytes").await;
    let pretty = serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&m).unwrap()).unwrap();
    let d = Digest::sha256_of(&pretty);
    let r = c
        .put_manifest("team/app", "1.0", OCI_MANIFEST, &pretty)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "Docker-Content-Digest").as_deref(),
        Some(d.as_str())
    );
    assert_eq!(
        header(&r, "Location"),
        Some(format!("/v2/team/app/manifests/{d}"))
    );

    for reference in ["1.0".to_owned(), d.to_string()] {
        let r = c.get(&format!("/v2/team/app/manifests/{reference}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "Content-Type").as_deref(), Some(OCI_MANIFEST));
        assert_eq!(
            header(&r, "Docker-Content-Digest").as_deref(),
            Some(d.as_str())
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), &pretty[..]);
        let r = c
            .req(Method::HEAD, &format!("/v2/team/app/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "Content-Length"), Some(pretty.len().to_string()));
        assert_eq!(
            header(&r, "Docker-Content-Digest").as_deref(),
            Some(d.as_str())
        );
    }
    // Pushed to team/app only.
    let r = c.get(&format!("/v2/team/other/manifests/{d}")).await;
    oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = c.get("/v2/team/app/manifests/2.0").await;
    oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn docker_schema2_and_push_by_digest() {
    let s = TestServer::start().await;
    let c = s.client();
    let m = c.image("team/app", "docker").await;
    let mut v: Value = serde_json::from_slice(&m).unwrap();
    v["mediaType"] = DOCKER_MANIFEST.into();
    v["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json".into();
    let body = serde_json::to_vec(&v).unwrap();
    let d = Digest::sha256_of(&body);
    let r = c
        .put_manifest("team/app", &d.to_string(), DOCKER_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c.get(&format!("/v2/team/app/manifests/{d}")).await;
    assert_eq!(header(&r, "Content-Type").as_deref(), Some(DOCKER_MANIFEST));

    // By digest, the body must hash to the digest in the URL.
    let wrong = Digest::sha256_of(b"not it");
    let r = c
        .put_manifest("team/app", &wrong.to_string(), DOCKER_MANIFEST, &body)
        .await;
    oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn indexes_need_their_children() {
    let s = TestServer::start().await;
    let c = s.client();
    let amd = c.image("team/multi", "amd64").await;
    let arm = c.image("team/multi", "arm64").await;
    let (da, db) = (Digest::sha256_of(&amd), Digest::sha256_of(&arm));
    let index = |mt: &str, child: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "manifests": [
                {"mediaType": child, "digest": da.as_str(), "size": amd.len(), "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": child, "digest": db.as_str(), "size": arm.len(), "platform": {"architecture": "arm64", "os": "linux"}},
            ],
        }))
        .unwrap()
    };
    let oci = index(OCI_INDEX, OCI_MANIFEST);
    let r = c.put_manifest("team/multi", "1.0", OCI_INDEX, &oci).await;
    let e = oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    assert_eq!(e.detail["digest"], da.as_str());
    assert_eq!(
        c.get("/v2/team/multi/manifests/1.0").await.status(),
        StatusCode::NOT_FOUND
    );

    for (d, m) in [(&da, &amd), (&db, &arm)] {
        let r = c
            .put_manifest("team/multi", &d.to_string(), OCI_MANIFEST, m)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = c.put_manifest("team/multi", "1.0", OCI_INDEX, &oci).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c.get("/v2/team/multi/manifests/1.0").await;
    assert_eq!(header(&r, "Content-Type").as_deref(), Some(OCI_INDEX));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &oci[..]);

    // A Docker manifest list is accepted too (children are OCI here; only existence matters).
    let list = index(DOCKER_LIST, OCI_MANIFEST);
    let r = c
        .put_manifest("team/multi", "1.0-list", DOCKER_LIST, &list)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn invalid_manifests_change_nothing() {
    let s = TestServer::start().await;
    let c = s.client();
    let good = c.image("team/app", "valid").await;
    let mut missing_layer: Value = serde_json::from_slice(&good).unwrap();
    let ghost = Digest::sha256_of(b"ghost layer");
    missing_layer["layers"][0]["digest"] = ghost.as_str().into();
    let missing_layer = serde_json::to_vec(&missing_layer).unwrap();

    let r = c
        .put_manifest("team/app", "1.0", OCI_MANIFEST, &missing_layer)
        .await;
    let e = oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    assert_eq!(e.detail["digest"], ghost.as_str());

    let mut wrong_size: Value = serde_json::from_slice(&good).unwrap();
    wrong_size["layers"][0]["size"] = 1.into();
    let wrong_size = serde_json::to_vec(&wrong_size).unwrap();
    for (ct, body) in [
        (OCI_MANIFEST, &wrong_size[..]),
        (OCI_MANIFEST, b"{not json"),
        (OCI_MANIFEST, br#"{"schemaVersion":2}"#),
        (OCI_MANIFEST, br#"{"schemaVersion":1,"config":{}}"#),
        (OCI_INDEX, &good[..]),
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            br#"{"schemaVersion":1}"#,
        ),
    ] {
        let r = c.put_manifest("team/app", "1.0", ct, body).await;
        oci_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    }
    let r = c
        .put_manifest("team/app", "bad:tag", OCI_MANIFEST, &good)
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Over 4 MiB, refused from Content-Length before reading it all.
    let huge = vec![b' '; 4 * 1024 * 1024 + 1];
    let r = c.put_manifest("team/app", "1.0", OCI_MANIFEST, &huge).await;
    oci_error(r, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;

    // None of that left a trace: no tag, no repository in the catalog.
    let r = c.get("/v2/team/app/manifests/1.0").await;
    oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = c.get("/v2/team/app/tags/list").await;
    oci_error(r, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    let cat: Value = c.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(cat["repositories"], json!([]));
}

#[tokio::test]
async fn tags_are_immutable_but_identical_repushes_succeed() {
    let s = TestServer::start().await;
    let c = s.client();
    let m1 = c.image("team/app", "first").await;
    let m2 = c.image("team/app", "second").await;
    let (d1, d2) = (Digest::sha256_of(&m1), Digest::sha256_of(&m2));
    assert_eq!(
        c.put_manifest("team/app", "1.0", OCI_MANIFEST, &m1)
            .await
            .status(),
        StatusCode::CREATED
    );
    // CI re-runs: the identical manifest is fine, with the same digest.
    let r = c.put_manifest("team/app", "1.0", OCI_MANIFEST, &m1).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "Docker-Content-Digest").as_deref(),
        Some(d1.as_str())
    );

    let r = c.put_manifest("team/app", "1.0", OCI_MANIFEST, &m2).await;
    let e = oci_error(r, StatusCode::CONFLICT, "DENIED").await;
    assert_eq!(
        e.message,
        format!(
            "tag team/app:1.0 already names {d1}; it is immutable, so it cannot name {d2} (push a new tag)"
        )
    );
    assert_eq!(e.detail["digest"], d1.as_str());
    assert_eq!(e.detail["pushed"], d2.as_str());
    assert_eq!(e.detail["tag"], "1.0");

    let r = c.get("/v2/team/app/manifests/1.0").await;
    assert_eq!(
        header(&r, "Docker-Content-Digest").as_deref(),
        Some(d1.as_str())
    );
    // The refused manifest was not stored either.
    let r = c.get(&format!("/v2/team/app/manifests/{d2}")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn snapshot_tags_move() {
    let s = TestServer::start().await;
    let c = s.client();
    let m1 = c.image("team/app", "snap-a").await;
    let m2 = c.image("team/app", "snap-b").await;
    assert_eq!(
        c.put_manifest("team/app", "1.1-SNAPSHOT", OCI_MANIFEST, &m1)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = c.get("/v2/team/app/manifests/1.1-SNAPSHOT").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &m1[..]);
    assert_eq!(
        c.put_manifest("team/app", "1.1-SNAPSHOT", OCI_MANIFEST, &m2)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = c.get("/v2/team/app/manifests/1.1-SNAPSHOT").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &m2[..]);
    // Case-sensitive, as in Pier One.
    assert_eq!(
        c.put_manifest("team/app", "1.1-snapshot", OCI_MANIFEST, &m1)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = c
        .put_manifest("team/app", "1.1-snapshot", OCI_MANIFEST, &m2)
        .await;
    oci_error(r, StatusCode::CONFLICT, "DENIED").await;
}

#[tokio::test]
async fn configured_patterns_replace_the_default() {
    let s = TestServer::start_with(Config {
        tag_policy: TagPolicy::new(["dev-*"], true),
        ..Config::default()
    })
    .await;
    let c = s.client();
    let m1 = c.image("team/app", "p1").await;
    let m2 = c.image("team/app", "p2").await;
    for t in ["dev-x", "latest"] {
        assert_eq!(
            c.put_manifest("team/app", t, OCI_MANIFEST, &m1)
                .await
                .status(),
            StatusCode::CREATED
        );
        assert_eq!(
            c.put_manifest("team/app", t, OCI_MANIFEST, &m2)
                .await
                .status(),
            StatusCode::CREATED,
            "{t}"
        );
    }
    assert_eq!(
        c.put_manifest("team/app", "1-SNAPSHOT", OCI_MANIFEST, &m1)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = c
        .put_manifest("team/app", "1-SNAPSHOT", OCI_MANIFEST, &m2)
        .await;
    oci_error(r, StatusCode::CONFLICT, "DENIED").await;
    // latest was pushed explicitly, so it names what was pushed, not the newest tag.
    let r = c.get("/v2/team/app/manifests/latest").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &m2[..]);
}

#[tokio::test]
async fn latest_is_refused_and_resolves_to_the_newest_tag() {
    let s = TestServer::start().await;
    let c = s.client();
    let r = c.get("/v2/team/app/manifests/latest").await;
    oci_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let m1 = c.image("team/app", "old").await;
    let m2 = c.image("team/app", "new").await;
    let r = c
        .put_manifest("team/app", "latest", OCI_MANIFEST, &m1)
        .await;
    let e = oci_error(r, StatusCode::CONFLICT, "DENIED").await;
    assert!(e.message.contains("latest"));
    // "b" sorts before "z" but is created later: newest by creation, not by name.
    c.put_manifest("team/app", "z", OCI_MANIFEST, &m1).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    c.put_manifest("team/app", "b", OCI_MANIFEST, &m2).await;
    let r = c.get("/v2/team/app/manifests/latest").await;
    assert_eq!(
        header(&r, "Docker-Content-Digest"),
        Some(Digest::sha256_of(&m2).to_string())
    );
}

#[tokio::test]
async fn tag_list_and_catalog_paginate_with_link_headers() {
    let s = TestServer::start().await;
    let c = s.client();
    let m = c.image("team/app", "list").await;
    for t in ["c", "a", "d", "b", "e"] {
        assert_eq!(
            c.put_manifest("team/app", t, OCI_MANIFEST, &m)
                .await
                .status(),
            StatusCode::CREATED
        );
    }
    let r = c.get("/v2/team/app/tags/list").await;
    assert!(header(&r, "Link").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"name": "team/app", "tags": ["a", "b", "c", "d", "e"]})
    );

    let mut seen = vec![];
    let mut next = Some("/v2/team/app/tags/list?n=2".to_owned());
    while let Some(url) = next.take() {
        let r = c.get(&url).await;
        next = header(&r, "Link").map(|l| {
            l.trim_start_matches('<')
                .split('>')
                .next()
                .unwrap()
                .to_owned()
        });
        let v: Value = r.json().await.unwrap();
        for t in v["tags"].as_array().unwrap() {
            seen.push(t.as_str().unwrap().to_owned());
        }
        assert!(seen.len() <= 6, "pagination must end");
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    let v: Value = c
        .get("/v2/team/app/tags/list?n=0")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], json!([]));
    let r = c.get("/v2/team/app/tags/list?n=abc").await;
    let e = oci_error(r, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
    assert_eq!(e.message, "query parameter n: abc, not a number");

    for repo in ["team/zz", "team/b/nested", "other/x"] {
        let m = c.image(repo, "cat").await;
        c.put_manifest(repo, "1", OCI_MANIFEST, &m).await;
    }
    let v: Value = c.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        v["repositories"],
        json!(["other/x", "team/app", "team/b/nested", "team/zz"])
    );
    let r = c.get("/v2/_catalog?n=2&last=other/x").await;
    assert_eq!(
        header(&r, "Link").as_deref(),
        Some("</v2/_catalog?n=2&last=team%2Fb%2Fnested>; rel=\"next\"")
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!(["team/app", "team/b/nested"]));
}

#[tokio::test]
async fn referrers_with_subject_and_artifact_type_filter() {
    let s = TestServer::start().await;
    let c = s.client();
    let subject = c.image("team/app", "subject").await;
    let sd = Digest::sha256_of(&subject);
    c.put_manifest("team/app", "1.0", OCI_MANIFEST, &subject)
        .await;
    let empty = c.push_blob("team/app", b"{}").await;
    let mut digests = vec![];
    for (i, at) in [
        "application/vnd.example.sig",
        "application/vnd.example.sbom",
    ]
    .iter()
    .enumerate()
    {
        let art = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": at,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.as_str(), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.as_str(), "size": 2}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": sd.as_str(), "size": subject.len()},
            "annotations": {"n": i.to_string()},
        }))
        .unwrap();
        let d = Digest::sha256_of(&art);
        let r = c
            .put_manifest("team/app", &d.to_string(), OCI_MANIFEST, &art)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(header(&r, "OCI-Subject").as_deref(), Some(sd.as_str()));
        digests.push(d);
    }
    let r = c.get(&format!("/v2/team/app/referrers/{sd}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "Content-Type").as_deref(), Some(OCI_INDEX));
    assert!(header(&r, "OCI-Filters-Applied").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["mediaType"], OCI_INDEX);
    let mut got: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    got.sort();
    let mut want: Vec<&str> = digests.iter().map(|d| d.as_str()).collect();
    want.sort();
    assert_eq!(got, want);

    let r = c
        .get(&format!(
            "/v2/team/app/referrers/{sd}?artifactType=application/vnd.example.sbom"
        ))
        .await;
    assert_eq!(
        header(&r, "OCI-Filters-Applied").as_deref(),
        Some("artifactType")
    );
    let v: Value = r.json().await.unwrap();
    let ms = v["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["digest"], digests[1].as_str());
    assert_eq!(ms[0]["artifactType"], "application/vnd.example.sbom");
    assert_eq!(ms[0]["annotations"]["n"], "1");

    // Unknown subjects have no referrers (an empty index, not an error).
    let r = c
        .get(&format!(
            "/v2/team/app/referrers/{}",
            Digest::sha256_of(b"x")
        ))
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));
    let r = c.get("/v2/team/app/referrers/sha256:nothex").await;
    oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}
