//! pierone in process, without a socket: a registry on in-memory stores, a blob and a manifest
//! pushed through the service API and read back, and an immutable tag refusing to move.
//!
//! `cargo run -p pierone-service --example embedded`; the crate's tests run it too.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use pierone_service::protocol::{Digest, Reference, RepoName, media_types};
use pierone_service::{Caller, Config, Error, MemoryBlobStore, MemoryTagStore, Service};

/// A body for the service: any stream of bytes.
fn body(bytes: Bytes) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::iter([Ok(bytes)])
}

/// A minimal OCI image manifest whose config is `config` (and that has no layers).
fn manifest(config: &Digest, size: usize, created: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.as_str(),
                "size": size,
            },
            "layers": [],
            "annotations": { "created": created },
        })
        .to_string(),
    )
}

/// The whole walk-through; `Err` names the step that went wrong.
pub async fn run() -> Result<(), String> {
    let service = Arc::new(Service::new(
        Arc::new(MemoryBlobStore::new()),
        Arc::new(MemoryTagStore::new()),
        Config::default(),
    ));
    let repo: RepoName = "team/app".parse().map_err(|e| format!("{e}"))?;
    let alice = Caller::new("/employees", "alice");

    // A blob, in two chunks, then read back.
    let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
    let digest = Digest::sha256_of(&config);
    let id = service
        .start_upload(&repo, &alice, pierone_service::Algorithm::Sha256)
        .await
        .map_err(|e| format!("start upload: {e}"))?;
    let (head, tail) = config.split_at(10);
    let offset = service
        .append(
            &repo,
            &id,
            &alice,
            Some(0),
            body(Bytes::copy_from_slice(head)),
        )
        .await
        .map_err(|e| format!("append: {e}"))?;
    let stored = service
        .finish(
            &repo,
            &id,
            &alice,
            &digest,
            Some(body(Bytes::copy_from_slice(tail))),
        )
        .await
        .map_err(|e| format!("finish: {e}"))?;
    let mut read = service
        .blob(&stored, None)
        .await
        .map_err(|e| format!("read blob: {e}"))?;
    let mut back = Vec::new();
    while let Some(chunk) = read.body.next().await {
        back.extend_from_slice(&chunk.map_err(|e| format!("read blob: {e}"))?);
    }
    if back != config {
        return Err("the blob read back is not the blob pushed".into());
    }
    println!(
        "blob {stored}: {} bytes, {offset} in the first chunk",
        back.len()
    );

    // A manifest under an immutable tag, then read back by tag.
    let tag: Reference = "1.0".parse().map_err(|e| format!("{e}"))?;
    let first = manifest(&digest, config.len(), "first");
    let pushed = service
        .put_manifest(
            &repo,
            &tag,
            &alice,
            Some(media_types::OCI_MANIFEST),
            first.clone(),
            None,
        )
        .await
        .map_err(|e| format!("push manifest: {e}"))?;
    let got = service
        .get_manifest(&repo, &tag)
        .await
        .map_err(|e| format!("read manifest: {e}"))?;
    if got.body != first || got.digest != pushed.digest {
        return Err("the manifest read back is not the manifest pushed".into());
    }
    println!("{repo}:1.0 is {} ({:?})", got.digest, pushed.tag);

    // Another manifest under the same tag: refused, naming both digests.
    let second = manifest(&digest, config.len(), "second");
    match service
        .put_manifest(
            &repo,
            &tag,
            &alice,
            Some(media_types::OCI_MANIFEST),
            second,
            None,
        )
        .await
    {
        Err(Error::Tags(e @ pierone_service::tagstore::Error::TagImmutable { .. })) => {
            println!("refused, as it must be: {e}");
        }
        Ok(outcome) => return Err(format!("an immutable tag moved: {outcome:?}")),
        Err(e) => return Err(format!("refused for the wrong reason: {e}")),
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embedded: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
