//! Reading inside image layers: finding `scm-source.json` for the Pier One API.
//!
//! Layers are streamed from the blob store through a gzip decoder and a tar reader on a
//! blocking thread; nothing is buffered whole, whatever the layer size.

use std::io::Read;
use std::ops::ControlFlow;

use futures_util::TryStreamExt;
use pierone_protocol::{Digest, ManifestKind, RepoName, parse_manifest, walk_layer};
use pierone_tagstore::ScmSource;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::Registry;
use crate::error::RegistryError;

/// Largest `scm-source.json` read; anything bigger is not what we are looking for.
const MAX_SCM_SOURCE: u64 = 64 * 1024;

fn is_root_scm_source(path: &std::path::Path) -> bool {
    let s = path.to_string_lossy();
    let s = s.trim_start_matches("./").trim_start_matches('/');
    s == "scm-source.json"
}

/// Scan one layer (plain or gzipped tar) for `/scm-source.json`.
fn scan_layer(reader: impl Read) -> Option<ScmSource> {
    walk_layer(reader, |path, entry| {
        if !is_root_scm_source(path) {
            return ControlFlow::Continue(());
        }
        let mut text = String::new();
        match entry.take(MAX_SCM_SOURCE).read_to_string(&mut text) {
            Ok(_) => ControlFlow::Break(serde_json::from_str::<ScmSource>(&text).ok()),
            Err(_) => ControlFlow::Break(None),
        }
    })
    .ok()
    .flatten()
    .flatten()
}

/// The `scm-source.json` of the image `digest` in `repo`, searching the top layer first (it
/// is what the image's filesystem shows).
pub(crate) async fn find_scm_source(
    registry: &Registry,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Option<ScmSource>, RegistryError> {
    let Some(m) = registry.tags.get_manifest(repo, digest).await? else {
        return Ok(None);
    };
    let parsed = parse_manifest(Some(&m.media_type), &m.body)?;
    if parsed.kind != ManifestKind::Image {
        return Ok(None);
    }
    for layer in parsed.layers.iter().rev() {
        let Some(read) = registry.blobs.get(&layer.digest, None).await? else {
            continue;
        };
        let reader = StreamReader::new(read.body.map_err(std::io::Error::other));
        let bridge = SyncIoBridge::new(reader);
        let found = tokio::task::spawn_blocking(move || scan_layer(bridge))
            .await
            .map_err(|e| RegistryError::Blobs(pierone_blobstore::Error::Backend(e.to_string())))?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    use pierone_protocol::tar_with;

    #[test]
    fn finds_root_scm_source_in_plain_and_gzipped_layers() {
        let json = r#"{"url":"git:x","revision":"abc","author":"alice","status":""}"#;
        let plain = tar_with(&[("bin/app", "x"), ("scm-source.json", json)]);
        let found = scan_layer(&plain[..]).unwrap();
        assert_eq!(found.revision, "abc");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar_with(&[("./scm-source.json", json)])).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(scan_layer(&gz[..]).unwrap().url, "git:x");
        assert!(scan_layer(&tar_with(&[("app/scm-source.json", json)])[..]).is_none());
        assert!(scan_layer(&b"not a tar at all"[..]).is_none());
    }
}
