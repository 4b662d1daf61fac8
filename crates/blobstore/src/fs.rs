//! The filesystem blob store: blobs under `blobs/<alg>/<2 hex>/<hex>`, uploads under `uploads/`.
//!
//! A blob appears by `rename(2)` of a fully written, fsynced upload file, which is atomic on
//! POSIX filesystems: a reader opens either nothing or the whole blob, and a crash leaves at
//! worst an upload file that the session's recorded offset still describes.

use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use pierone_protocol::{Digest, UploadId};

use crate::{BlobEntry, BlobRead, BlobStore, ByteStream, Error, checked_range};

/// Size of the chunks a read is streamed in: large enough to keep syscalls off the profile,
/// small enough that many concurrent pulls stay cheap in memory.
const READ_CHUNK: usize = 512 * 1024;

/// Chunks read ahead of the client, per pull.
const READ_AHEAD: usize = 4;

/// Request-body chunks queued for the writer thread, per upload.
const WRITE_QUEUE: usize = 32;

/// Start writeback of an upload every this many bytes, so that the fsync before a blob is
/// published finds little left to write: disk time then overlaps network time.
const FLUSH_EVERY: u64 = 32 << 20;

/// Blobs and upload data in a directory tree on the local filesystem.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
    fsync: bool,
}

impl FsBlobStore {
    /// Open (creating if needed) a store rooted at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<FsBlobStore, Error> {
        let root = root.into();
        for sub in ["blobs", "uploads"] {
            tokio::fs::create_dir_all(root.join(sub))
                .await
                .map_err(Error::io("create the store directories"))?;
        }
        Ok(FsBlobStore { root, fsync: true })
    }

    /// Whether blobs are fsynced before they become visible (the default). Turning it off
    /// trades durability across power loss for speed; atomicity across crashes is kept.
    pub fn with_fsync(mut self, fsync: bool) -> FsBlobStore {
        self.fsync = fsync;
        self
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }
}

fn not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// Open an upload file for writing and take an exclusive lock on it, so that two requests
/// for one upload (even from two processes) cannot interleave their bytes.
fn open_locked(path: &Path, id: &UploadId, create: bool) -> Result<std::fs::File, Error> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(|e| {
            if not_found(&e) {
                Error::UploadUnknown(id.clone())
            } else {
                Error::Io {
                    op: "open upload file",
                    source: e,
                }
            }
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::UploadBusy(id.clone())),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Io {
            op: "lock upload file",
            source: e,
        }),
    }
}

/// Flushes a file's dirty pages on its own thread whenever kicked, coalescing kicks that
/// arrive while a flush runs. The thread holds a duplicate of the file descriptor, and with it
/// the upload's lock, so [`Flusher::finish`] joins it before the upload is released.
struct Flusher {
    kick: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Flusher {
    fn start(file: &std::fs::File) -> Result<Flusher, Error> {
        let file = file.try_clone().map_err(Error::io("clone upload file"))?;
        let (kick, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("pierone-flush".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Best effort: the fsync at commit is the one that counts and reports
                    // errors.
                    let _ = file.sync_data();
                }
            })
            .map_err(Error::io("start flush thread"))?;
        Ok(Flusher { kick, thread })
    }

    fn kick(&self) {
        let _ = self.kick.try_send(());
    }

    fn finish(self) {
        drop(self.kick);
        let _ = self.thread.join();
    }
}

/// Stream `len` bytes of `file` from `start`, read ahead on a blocking thread.
fn spawn_reader(mut file: std::fs::File, start: u64, len: u64) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = file.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut remaining = len;
        while remaining > 0 {
            let want = remaining.min(READ_CHUNK as u64) as usize;
            let mut buf = BytesMut::zeroed(want);
            let mut filled = 0;
            while filled < want {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => {
                        let _ = tx.blocking_send(Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "blob shorter than its recorded size",
                        )));
                        return;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            remaining -= want as u64;
            if tx.blocking_send(Ok(buf.freeze())).is_err() {
                // The client went away.
                return;
            }
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Error::Io {
                op: "stat blob",
                source: e,
            }),
        }
    }

    async fn get(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobRead>, Error> {
        let file = match tokio::fs::File::open(self.blob_path(digest)).await {
            Ok(f) => f,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => {
                return Err(Error::Io {
                    op: "open blob",
                    source: e,
                });
            }
        };
        let total_size = file.metadata().await.map_err(Error::io("stat blob"))?.len();
        let range = checked_range(range, total_size)?;
        let file = file.into_std().await;
        let body = spawn_reader(file, range.start, range.end - range.start);
        Ok(Some(BlobRead { total_size, body }))
    }

    async fn write_upload(
        &self,
        id: &UploadId,
        offset: u64,
        mut data: ByteStream,
    ) -> Result<u64, Error> {
        let path = self.upload_path(id);
        let id = id.clone();
        let fsync = self.fsync;
        // One blocking thread owns the file for the whole request: the async side only moves
        // `Bytes` handles, so hashing (in the stream) and writing run in parallel, and there is
        // no per-chunk hop through the blocking pool.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || -> Result<u64, Error> {
            let mut file = open_locked(&path, &id, offset == 0)?;
            let stored = file
                .metadata()
                .map_err(Error::io("stat upload file"))?
                .len();
            if stored < offset {
                return Err(Error::UploadTruncated {
                    id,
                    stored,
                    expected: offset,
                });
            }
            if stored > offset {
                file.set_len(offset)
                    .map_err(Error::io("truncate upload file"))?;
            }
            file.seek(SeekFrom::Start(offset))
                .map_err(Error::io("seek in upload file"))?;
            // Started at the first kick: most uploads are small and never need it.
            let mut flusher: Option<Flusher> = None;
            let mut written = 0u64;
            let mut unflushed = 0u64;
            let result = (|| {
                while let Some(chunk) = rx.blocking_recv() {
                    file.write_all(&chunk)
                        .map_err(Error::io("write upload file"))?;
                    written += chunk.len() as u64;
                    unflushed += chunk.len() as u64;
                    if fsync && unflushed >= FLUSH_EVERY {
                        if flusher.is_none() {
                            flusher = Some(Flusher::start(&file)?);
                        }
                        if let Some(f) = &flusher {
                            f.kick();
                        }
                        unflushed = 0;
                    }
                }
                Ok::<(), Error>(())
            })();
            if let Some(f) = flusher {
                f.finish();
            }
            result?;
            Ok(written)
        });
        let mut body_error = None;
        while let Some(chunk) = data.next().await {
            match chunk {
                Ok(chunk) => {
                    if tx.send(chunk).await.is_err() {
                        // The writer stopped early; its own error explains why.
                        break;
                    }
                }
                Err(e) => {
                    body_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| Error::Backend(format!("blocking task failed: {e}")))??;
        match body_error {
            Some(e) => Err(Error::Body(e)),
            None => Ok(written),
        }
    }

    async fn commit_upload(&self, id: &UploadId, size: u64, digest: &Digest) -> Result<(), Error> {
        let upload = self.upload_path(id);
        let target = self.blob_path(digest);
        let id = id.clone();
        let fsync = self.fsync;
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            let file = open_locked(&upload, &id, false)?;
            let stored = file
                .metadata()
                .map_err(Error::io("stat upload file"))?
                .len();
            if stored < size {
                return Err(Error::UploadTruncated {
                    id,
                    stored,
                    expected: size,
                });
            }
            if target.exists() {
                // Same digest, same content: keep the blob readers may already be streaming,
                // but restart its age, which garbage collection reads from the mtime.
                drop(file);
                let _ = std::fs::File::options()
                    .write(true)
                    .open(&target)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                return std::fs::remove_file(&upload).map_err(Error::io("remove upload file"));
            }
            if stored > size {
                file.set_len(size)
                    .map_err(Error::io("truncate upload file"))?;
            }
            if fsync {
                file.sync_all().map_err(Error::io("fsync upload file"))?;
            }
            let dir = target.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(Error::io("create blob directory"))?;
            std::fs::rename(&upload, &target).map_err(Error::io("publish blob"))?;
            if fsync {
                // Persist the new directory entry too; without this a power loss could forget
                // a blob that a manifest, committed afterwards, already references.
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(Error::io("fsync blob directory"))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Backend(format!("blocking task failed: {e}")))?
    }

    async fn abort_upload(&self, id: &UploadId) -> Result<(), Error> {
        match tokio::fs::remove_file(self.upload_path(id)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(Error::Io {
                op: "remove upload file",
                source: e,
            }),
        }
    }

    async fn list_blobs(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<BlobEntry>, Error> {
        let root = self.root.join("blobs");
        let after = after.map(|d| (d.algorithm().as_str().to_owned(), d.hex().to_owned()));
        tokio::task::spawn_blocking(move || list_blobs(&root, after, limit))
            .await
            .map_err(|e| Error::Backend(format!("listing task failed: {e}")))?
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<bool, Error> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(Error::Io {
                op: "delete blob",
                source: e,
            }),
        }
    }
}

/// Sorted names in `dir`; none when it does not exist.
fn sorted_names(dir: &Path) -> Result<Vec<String>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if not_found(&e) => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Io {
                op: "list blob directory",
                source: e,
            });
        }
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(Error::io("list blob directory"))?;
        if let Ok(n) = e.file_name().into_string() {
            names.push(n);
        }
    }
    names.sort();
    Ok(names)
}

/// Walk `blobs/<alg>/<2 hex>/<hex>` in digest order, skipping whole directories that sort
/// before `after`, so each page costs about one directory's listing.
fn list_blobs(
    root: &Path,
    after: Option<(String, String)>,
    limit: usize,
) -> Result<Vec<BlobEntry>, Error> {
    let mut out = Vec::new();
    for alg in sorted_names(root)? {
        let same_alg = after.as_ref().filter(|(a, _)| *a == alg);
        if after.as_ref().is_some_and(|(a, _)| alg < *a) {
            continue;
        }
        for prefix in sorted_names(&root.join(&alg))? {
            if same_alg.is_some_and(|(_, h)| prefix.as_str() < h.get(..2).unwrap_or("")) {
                continue;
            }
            for name in sorted_names(&root.join(&alg).join(&prefix))? {
                if same_alg.is_some_and(|(_, h)| name <= *h) {
                    continue;
                }
                // Anything else in the tree is not a blob.
                let Ok(digest) = format!("{alg}:{name}").parse::<Digest>() else {
                    continue;
                };
                let meta = match std::fs::metadata(root.join(&alg).join(&prefix).join(&name)) {
                    Ok(m) => m,
                    // Deleted since the listing.
                    Err(e) if not_found(&e) => continue,
                    Err(e) => {
                        return Err(Error::Io {
                            op: "stat blob",
                            source: e,
                        });
                    }
                };
                let stored_at = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as i64);
                out.push(BlobEntry {
                    digest,
                    size: meta.len(),
                    stored_at,
                });
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::conformance_tests!(async {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        (store, dir)
    });

    #[tokio::test]
    async fn leftover_bytes_past_the_offset_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let id: UploadId = "crashy".parse().unwrap();
        // Simulate a crash: bytes on disk beyond what the session recorded (3).
        std::fs::write(dir.path().join("uploads/crashy"), b"abcGARBAGE").unwrap();
        store
            .write_upload(&id, 3, crate::conformance::stream_of(&[b"def"]))
            .await
            .unwrap();
        let digest = Digest::sha256_of(b"abcdef");
        store.commit_upload(&id, 6, &digest).await.unwrap();
        assert_eq!(
            std::fs::read(store.blob_path(&digest)).unwrap(),
            b"abcdef".to_vec()
        );
        assert!(!dir.path().join("uploads/crashy").exists());
    }
}
