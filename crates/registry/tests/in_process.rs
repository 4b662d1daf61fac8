//! The HTTP handler called in process, with in-memory bodies and no socket: directly, and as a
//! tower `Service`.

// Helpers of tests panic on what a test would: a failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use pierone_registry::{Config, Registry};
use pierone_service::protocol::Digest;
use pierone_service::{MemoryBlobStore, MemoryTagStore};
use tower_service::Service as _;

fn registry() -> Arc<Registry> {
    Arc::new(Registry::new(
        Arc::new(MemoryBlobStore::new()),
        Arc::new(MemoryTagStore::new()),
        Config::default(),
    ))
}

fn request(method: Method, uri: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

#[tokio::test]
async fn a_blob_pushed_in_process_reads_back() {
    let r = registry();
    let digest = Digest::sha256_of(b"in process");
    let push = r
        .handle(request(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={digest}"),
            b"in process",
        ))
        .await;
    assert_eq!(push.status(), StatusCode::CREATED);
    assert_eq!(
        push.headers()["Location"],
        format!("/v2/team/app/blobs/{digest}").as_str()
    );
    let get = r
        .handle(request(
            Method::GET,
            &format!("/v2/team/app/blobs/{digest}"),
            b"",
        ))
        .await;
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.headers()["Docker-Content-Digest"], digest.as_str());
    let body = get.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"in process");

    // A digest the body does not hash to is refused with the OCI error envelope.
    let wrong = Digest::sha256_of(b"something else");
    let refused = r
        .handle(request(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={wrong}"),
            b"in process",
        ))
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["errors"][0]["code"], "DIGEST_INVALID");
}

#[tokio::test]
async fn the_registry_answers_as_a_tower_service() {
    let mut svc = registry().tower();
    std::future::poll_fn(|cx| {
        tower_service::Service::<Request<Full<Bytes>>>::poll_ready(&mut svc, cx)
    })
    .await
    .unwrap();
    let resp = svc.call(request(Method::GET, "/v2/", b"")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["Docker-Distribution-API-Version"],
        "registry/2.0"
    );
    let missing = svc
        .call(request(Method::GET, "/v2/team/app/manifests/1.0", b""))
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
