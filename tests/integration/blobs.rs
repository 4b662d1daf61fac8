//! Blob reads and the upload protocol over HTTP.

use pierone_protocol::Digest;
use reqwest::{Method, StatusCode};

use crate::util::{TestServer, header, location, oci_error};

#[tokio::test]
async fn ping_answers_with_the_api_version() {
    let s = TestServer::start().await;
    let r = s.client().get("/v2/").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "Docker-Distribution-API-Version").as_deref(),
        Some("registry/2.0")
    );
    // Unknown endpoints still carry the header and the envelope.
    let r = s.client().get("/v2/team/app/nothing").await;
    oci_error(r, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn monolithic_push_then_get_head_and_ranges() {
    let s = TestServer::start().await;
    let c = s.client();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let d = c.push_blob("team/app", &data).await;

    let r = c
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "Content-Length").as_deref(), Some("100000"));
    assert_eq!(
        header(&r, "Docker-Content-Digest").as_deref(),
        Some(d.as_str())
    );

    let r = c.get(&format!("/v2/team/app/blobs/{d}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);

    let r = c
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&r, "Content-Range").as_deref(),
        Some("bytes 10-19/100000")
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);

    let r = c
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .header("Range", "bytes=200000-")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "Content-Range").as_deref(),
        Some("bytes */100000")
    );
    oci_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "SIZE_INVALID").await;

    // Blobs are global and deduplicated: the same digest reads from any repository.
    let r = c
        .req(Method::HEAD, &format!("/v2/team/other/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_blob() {
    let s = TestServer::start().await;
    let d = Digest::sha256_of(b"nope");
    let r = s.client().get(&format!("/v2/team/app/blobs/{d}")).await;
    oci_error(r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let r = s
        .client()
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn chunked_upload_in_order_with_status_and_resume() {
    let s = TestServer::start().await;
    let c = s.client();
    let loc = c.start_upload("team/app").await;
    let r = c.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "Range").as_deref(), Some("0-0"));

    let r = c
        .req(Method::PATCH, &loc)
        .header("Content-Range", "0-4")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "Range").as_deref(), Some("0-4"));
    let loc = location(&r);

    // Out of order: the client claims byte 10, the upload has 5.
    let r = c
        .req(Method::PATCH, &loc)
        .header("Content-Range", "10-14")
        .body("XXXXX")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "Range").as_deref(), Some("0-4"));
    oci_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;

    // A streamed chunk without Content-Range (what docker sends).
    let r = c
        .req(Method::PATCH, &loc)
        .body(", world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "Range").as_deref(), Some("0-11"));

    let r = c.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(header(&r, "Range").as_deref(), Some("0-11"));

    // Close with a final chunk in the PUT body.
    let d = Digest::sha256_of(b"hello, world!");
    let r = c
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .body("!")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(location(&r), format!("/v2/team/app/blobs/{d}"));
    let body = c
        .get(&format!("/v2/team/app/blobs/{d}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.as_ref(), b"hello, world!");

    // The session is gone once closed.
    let r = c.req(Method::GET, &loc).send().await.unwrap();
    oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn chunk_length_must_match_its_range() {
    let s = TestServer::start().await;
    let c = s.client();
    let loc = c.start_upload("team/app").await;
    let r = c
        .req(Method::PATCH, &loc)
        .header("Content-Range", "0-9")
        .body("short")
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;
    let r = c.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(
        header(&r, "Range").as_deref(),
        Some("0-0"),
        "nothing was accepted"
    );
}

#[tokio::test]
async fn digest_mismatch_publishes_nothing() {
    let s = TestServer::start().await;
    let c = s.client();
    let claimed = Digest::sha256_of(b"what the client claims");
    let r = c
        .req(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={claimed}"),
        )
        .body("something else")
        .send()
        .await
        .unwrap();
    let e = oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_eq!(e.detail["expected"], claimed.as_str());
    for d in [claimed, Digest::sha256_of(b"something else")] {
        let r = c
            .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{d} must not be visible");
    }

    // Same through a chunked upload closed with the wrong digest.
    let loc = c.start_upload("team/app").await;
    let r = c
        .req(Method::PATCH, &loc)
        .body("chunked data")
        .send()
        .await
        .unwrap();
    let loc = location(&r);
    let wrong = Digest::sha256_of(b"other");
    let r = c
        .req(Method::PUT, &format!("{loc}?digest={wrong}"))
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let r = c
        .req(
            Method::HEAD,
            &format!("/v2/team/app/blobs/{}", Digest::sha256_of(b"chunked data")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Malformed and unsupported digests.
    let r = c
        .req(
            Method::POST,
            "/v2/team/app/blobs/uploads/?digest=sha256:xyz",
        )
        .body("x")
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let r = c
        .req(
            Method::POST,
            "/v2/team/app/blobs/uploads/?digest=md5:d41d8cd98f00b204e9800998ecf8427e",
        )
        .body("x")
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let r = c
        .req(
            Method::PUT,
            &format!("{}?digest=", c.start_upload("team/app").await),
        )
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn sha512_uploads() {
    let s = TestServer::start().await;
    let c = s.client();
    let mut h = pierone_protocol::Hasher::new(pierone_protocol::Algorithm::Sha512);
    h.update(b"five-twelve");
    let d = h.finish();
    let r = c
        .req(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={d}"),
        )
        .body("five-twelve")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        c.get(&format!("/v2/team/app/blobs/{d}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"five-twelve"
    );

    // Chunked: the algorithm is chosen when the session starts.
    let r = c
        .req(
            Method::POST,
            "/v2/team/app/blobs/uploads/?digest-algorithm=sha512",
        )
        .send()
        .await
        .unwrap();
    let loc = location(&r);
    let r = c
        .req(Method::PATCH, &loc)
        .body("five-")
        .send()
        .await
        .unwrap();
    let r = c
        .req(Method::PUT, &format!("{}?digest={d}", location(&r)))
        .body("twelve")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // A plain session (hashed with sha256 while streaming) closed with a sha512 digest: the
    // stored bytes are hashed again before anything is published (OCI conformance, main).
    let mut h = pierone_protocol::Hasher::new(pierone_protocol::Algorithm::Sha512);
    h.update(b"plain then sha512");
    let d = h.finish();
    let loc = c.start_upload("team/app").await;
    let r = c
        .req(Method::PATCH, &loc)
        .body("plain then ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .req(Method::PUT, &format!("{}?digest={d}", location(&r)))
        .body("sha512")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c.get(&format!("/v2/team/app/blobs/{d}")).await;
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"plain then sha512");
    // ... and a wrong sha512 digest publishes nothing.
    let mut h = pierone_protocol::Hasher::new(pierone_protocol::Algorithm::Sha512);
    h.update(b"something else");
    let wrong = h.finish();
    let loc = c.start_upload("team/app").await;
    let r = c
        .req(Method::PUT, &format!("{loc}?digest={wrong}"))
        .body("not something else")
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let r = c
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{wrong}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cross_repository_mount() {
    let s = TestServer::start().await;
    let c = s.client();
    let d = c.push_blob("team/source", b"shared layer").await;
    let r = c
        .req(
            Method::POST,
            &format!("/v2/team/target/blobs/uploads/?mount={d}&from=team/source"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(location(&r), format!("/v2/team/target/blobs/{d}"));
    assert_eq!(
        header(&r, "Docker-Content-Digest").as_deref(),
        Some(d.as_str())
    );

    // Mounting something absent falls back to a fresh upload session.
    let missing = Digest::sha256_of(b"absent");
    let r = c
        .req(
            Method::POST,
            &format!("/v2/team/target/blobs/uploads/?mount={missing}&from=team/source"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(location(&r).starts_with("/v2/team/target/blobs/uploads/"));
}

#[tokio::test]
async fn cancelled_upload_is_gone() {
    let s = TestServer::start().await;
    let c = s.client();
    let loc = c.start_upload("team/app").await;
    let r = c.req(Method::PATCH, &loc).body("abc").send().await.unwrap();
    let loc = location(&r);
    let r = c.req(Method::DELETE, &loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c.req(Method::PATCH, &loc).body("def").send().await.unwrap();
    oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    // An upload is only reachable through the repository that started it.
    let loc = c.start_upload("team/app").await;
    let other = loc.replace("team/app", "team/other");
    let r = c.req(Method::GET, &other).send().await.unwrap();
    oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let r = c
        .req(Method::GET, "/v2/team/app/blobs/uploads/no-such-upload")
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn nothing_is_deleted_through_the_api() {
    let s = TestServer::start().await;
    let c = s.client();
    let d = c.push_blob("team/app", b"keep me").await;
    let r = c
        .req(Method::DELETE, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    let m = c.image("team/app", "del").await;
    let r = c
        .put_manifest("team/app", "1.0", crate::util::OCI_MANIFEST, &m)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let md = Digest::sha256_of(&m);
    for path in [
        "/v2/team/app/manifests/1.0".to_owned(),
        format!("/v2/team/app/manifests/{md}"),
    ] {
        let r = c.req(Method::DELETE, &path).send().await.unwrap();
        oci_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    }
    assert_eq!(
        c.get("/v2/team/app/manifests/1.0").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        c.get(&format!("/v2/team/app/blobs/{d}")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn bad_names_are_name_invalid() {
    let s = TestServer::start().await;
    let c = s.client();
    for path in [
        "/v2/app/tags/list",
        "/v2/Team/app/tags/list",
        "/v2/team/app%20x/tags/list",
        "/v2/team/../x/tags/list",
        "/v2/team/-app/blobs/uploads/",
    ] {
        let r = c.req(Method::GET, path).send().await.unwrap();
        let e = oci_error(r, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
        assert!(!e.message.is_empty());
    }
    let r = c
        .req(Method::POST, "/v2/single/blobs/uploads/")
        .send()
        .await
        .unwrap();
    oci_error(r, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    assert!(
        c.get("/v2/_catalog")
            .await
            .json::<serde_json::Value>()
            .await
            .unwrap()["repositories"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
