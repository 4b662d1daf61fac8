//! Reading inside image layers: finding `scm-source.json` for the Pier One API.
//!
//! Layers are streamed from the blob store through a gzip decoder and a bounded tar walker on
//! a blocking thread; nothing is buffered whole, whatever the layer size. Anyone who may read
//! a repository can ask for a scan, so a scan is bounded in every dimension an image controls:
//! tar metadata (GNU long names, PAX headers) is capped at [`MAX_TAR_METADATA`], each layer at
//! [`MAX_SCAN_BYTES`] after gzip, each image at [`MAX_SCAN_TIME`], and at most
//! [`MAX_CONCURRENT_SCANS`] run at once. A scan that hits a limit counts as "no
//! `scm-source.json`" and is logged. Misses are remembered per manifest digest (in process;
//! hits are recorded in the tag store), so asking again does not scan again.

use std::io::Read;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pierone_protocol::{
    Digest, ManifestKind, RepoName, WalkLimits, parse_manifest, walk_layer_with,
};
use pierone_tagstore::ScmSource;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::{Error, Service};

/// Largest `scm-source.json` read; anything bigger is not what we are looking for.
const MAX_SCM_SOURCE: u64 = 64 * 1024;

/// Largest GNU long-name or PAX header a scan reads; real ones are a few hundred bytes.
pub(crate) const MAX_TAR_METADATA: u64 = 64 << 10;

/// Most tar bytes (after gzip) read from one layer.
pub(crate) const MAX_SCAN_BYTES: u64 = 2 << 30;

/// Longest one image's scan may take, all layers together.
pub(crate) const MAX_SCAN_TIME: Duration = Duration::from_secs(20);

/// Scans running at once. Each is a CPU-bound gunzip on a blocking thread.
pub(crate) const MAX_CONCURRENT_SCANS: usize = 4;

/// How long a request waits for a scan slot before it is answered 503 with `Retry-After`.
/// Waiting briefly absorbs a burst; answering rather than queueing without end keeps a flood
/// of requests from holding connections and memory.
pub(crate) const SCAN_QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Manifest digests remembered as having no `scm-source.json`.
const REMEMBERED_MISSES: usize = 16_384;

/// The state scans share: the slots, and the misses already found.
#[derive(Debug)]
pub(crate) struct Scans {
    slots: Arc<tokio::sync::Semaphore>,
    /// Content-addressed, so a miss never goes stale: the image's layers cannot change.
    misses: quick_cache::sync::Cache<Digest, ()>,
}

impl Scans {
    pub(crate) fn new() -> Scans {
        Scans {
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SCANS)),
            misses: quick_cache::sync::Cache::new(REMEMBERED_MISSES),
        }
    }
}

/// How one layer's scan ended.
enum Scanned {
    Found(ScmSource),
    Absent,
    /// The layer exceeded a limit (size, metadata, time); treated as absent.
    Limit(std::io::Error),
    /// Not a readable (gzipped) tar; treated as absent.
    Unreadable(std::io::Error),
}

fn is_root_scm_source(path: &std::path::Path) -> bool {
    let s = path.to_string_lossy();
    let s = s.trim_start_matches("./").trim_start_matches('/');
    s == "scm-source.json"
}

/// The blob reader of a scan: fails with `TimedOut` once `deadline` has passed, so a scan
/// stops between two reads however long the layer is, and notes a failure of the store itself,
/// which is not a fact about the image and must not be remembered as a miss.
struct ScanReader<R> {
    inner: R,
    deadline: Instant,
    store_failed: Arc<AtomicBool>,
}

impl<R: Read> Read for ScanReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("scan took longer than {MAX_SCAN_TIME:?}"),
            ));
        }
        self.inner.read(buf).inspect_err(|_| {
            self.store_failed.store(true, Ordering::Relaxed);
        })
    }
}

/// Scan one layer (plain or gzipped tar) for `/scm-source.json`.
fn scan_layer(reader: impl Read, limits: WalkLimits) -> Scanned {
    let walked = walk_layer_with(reader, limits, |path, entry| {
        if !is_root_scm_source(path) {
            return ControlFlow::Continue(());
        }
        let mut text = String::new();
        match entry.take(MAX_SCM_SOURCE).read_to_string(&mut text) {
            Ok(_) => ControlFlow::Break(serde_json::from_str::<ScmSource>(&text).ok()),
            Err(_) => ControlFlow::Break(None),
        }
    });
    match walked {
        Ok(Some(Some(found))) => Scanned::Found(found),
        Ok(Some(None) | None) => Scanned::Absent,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::FileTooLarge | std::io::ErrorKind::TimedOut
            ) =>
        {
            Scanned::Limit(e)
        }
        Err(e) => Scanned::Unreadable(e),
    }
}

/// How a look into an image's layers for `scm-source.json` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanOutcome {
    /// Found in a layer.
    Found,
    /// No layer has one.
    Absent,
    /// Not scanned again: an earlier scan of the image found none.
    RememberedAbsent,
    /// A scan stopped at a limit (size, metadata, time); answered as absent.
    Limit,
    /// Every scan slot stayed busy; the request was refused.
    Busy,
}

impl ScanOutcome {
    /// The outcome as a metric label: `found`, `absent`, `remembered_absent`, `limit`, `busy`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScanOutcome::Found => "found",
            ScanOutcome::Absent => "absent",
            ScanOutcome::RememberedAbsent => "remembered_absent",
            ScanOutcome::Limit => "limit",
            ScanOutcome::Busy => "busy",
        }
    }
}

fn count(registry: &Service, outcome: ScanOutcome) {
    registry.observer.scm_scan(outcome);
}

/// The `scm-source.json` of the image `digest` in `repo`, searching the top layer first (it
/// is what the image's filesystem shows).
pub(crate) async fn find_scm_source(
    registry: &Service,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Option<ScmSource>, Error> {
    let scans = &registry.scans;
    if scans.misses.get(digest).is_some() {
        count(registry, ScanOutcome::RememberedAbsent);
        return Ok(None);
    }
    let Some(m) = registry.tags.get_manifest(repo, digest).await? else {
        return Ok(None);
    };
    let parsed = parse_manifest(Some(&m.media_type), &m.body)?;
    if parsed.kind != ManifestKind::Image {
        return Ok(None);
    }
    let slot =
        match tokio::time::timeout(SCAN_QUEUE_WAIT, scans.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            // The semaphore is never closed; a timeout is a busy server.
            Ok(Err(_)) | Err(_) => {
                count(registry, ScanOutcome::Busy);
                return Err(Error::ScanBusy);
            }
        };
    let deadline = Instant::now() + MAX_SCAN_TIME;
    let limits = WalkLimits {
        max_metadata: MAX_TAR_METADATA,
        max_bytes: MAX_SCAN_BYTES,
    };
    for layer in parsed.layers.iter().rev() {
        let Some(read) = registry.blobs.get(&layer.digest, None).await? else {
            continue;
        };
        let store_failed = Arc::new(AtomicBool::new(false));
        let reader = ScanReader {
            inner: SyncIoBridge::new(StreamReader::new(read.body)),
            deadline,
            store_failed: store_failed.clone(),
        };
        let scan = tokio::task::spawn_blocking(move || scan_layer(reader, limits));
        // The deadline is checked between reads; a blob store that stalls mid-read is cut off
        // here (the blocking thread then ends at its next read).
        let left = deadline.saturating_duration_since(Instant::now());
        let scanned = match tokio::time::timeout(left + Duration::from_secs(1), scan).await {
            Ok(joined) => joined
                .map_err(|e| Error::Blobs(pierone_blobstore::Error::Backend(e.to_string())))?,
            Err(_) => Scanned::Limit(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the blob store stalled",
            )),
        };
        match scanned {
            Scanned::Found(found) => {
                count(registry, ScanOutcome::Found);
                return Ok(Some(found));
            }
            Scanned::Absent => {}
            Scanned::Limit(e) | Scanned::Unreadable(e) if store_failed.load(Ordering::Relaxed) => {
                return Err(Error::Blobs(pierone_blobstore::Error::Backend(format!(
                    "reading layer {}: {e}",
                    layer.digest
                ))));
            }
            Scanned::Unreadable(e) => {
                tracing::debug!(%repo, image = %digest, layer = %layer.digest, error = %e, "layer is not a readable tar; skipped in the scm-source scan");
            }
            Scanned::Limit(e) => {
                tracing::warn!(%repo, image = %digest, layer = %layer.digest, error = %e, "scm-source scan stopped at a limit; answering as if there were none");
                count(registry, ScanOutcome::Limit);
                scans.misses.insert(digest.clone(), ());
                return Ok(None);
            }
        }
    }
    drop(slot);
    count(registry, ScanOutcome::Absent);
    scans.misses.insert(digest.clone(), ());
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    use pierone_protocol::{tar_header, tar_with};

    fn scan(layer: &[u8]) -> Option<ScmSource> {
        match scan_layer(layer, WalkLimits::default()) {
            Scanned::Found(s) => Some(s),
            Scanned::Absent | Scanned::Limit(_) | Scanned::Unreadable(_) => None,
        }
    }

    #[test]
    fn finds_root_scm_source_in_plain_and_gzipped_layers() {
        let json = r#"{"url":"git:x","revision":"abc","author":"alice","status":""}"#;
        let plain = tar_with(&[("bin/app", "x"), ("scm-source.json", json)]);
        let found = scan(&plain[..]).unwrap();
        assert_eq!(found.revision, "abc");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar_with(&[("./scm-source.json", json)])).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(scan(&gz[..]).unwrap().url, "git:x");
        assert!(scan(&tar_with(&[("app/scm-source.json", json)])[..]).is_none());
        assert!(scan(&b"not a tar at all"[..]).is_none());
    }

    #[test]
    fn limits_end_a_scan_as_a_limit_not_as_garbage() {
        let huge_name = tar_header("././@LongLink", b'L', 400 << 20);
        assert!(matches!(
            scan_layer(&huge_name[..], WalkLimits::default()),
            Scanned::Limit(_)
        ));
        let expired = ScanReader {
            inner: &tar_with(&[("a", "b")])[..],
            deadline: Instant::now(),
            store_failed: Arc::default(),
        };
        assert!(matches!(
            scan_layer(expired, WalkLimits::default()),
            Scanned::Limit(_)
        ));
        assert!(matches!(
            scan_layer(&b"not a tar at all"[..], WalkLimits::default()),
            Scanned::Unreadable(_)
        ));
    }
}
