//! The filesystem blob store: blobs under `blobs/<alg>/<2 hex>/<hex>`, uploads under `uploads/`,
//! quarantined blobs under `quarantine/<alg>/<hex>.<millis>`.
//!
//! An upload is one file that only ever grows by whole parts: a request takes the file's
//! exclusive lock, appends its body at the end, and names its part by the position it started
//! at. Nothing below a part's end is ever rewritten while the upload lives (a failed or refused
//! request only cuts its own bytes off the end, under the lock), so a recorded part keeps its
//! bytes. Commit checks the recorded parts against the file: when they cover it from byte 0
//! without gaps (every sequential push) the file itself is cut to their end, fsynced and
//! renamed into place; otherwise exactly the recorded ranges are copied into a new file, which
//! is published instead. `rename(2)` is atomic on POSIX filesystems: a reader opens either
//! nothing or the whole blob.

use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use pierone_protocol::{Digest, UploadId};

use crate::{BlobEntry, BlobRead, BlobStore, ByteStream, Error, UploadPart, checked_range};

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

    fn quarantine_dir(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("quarantine")
            .join(digest.algorithm().as_str())
    }

    fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }
}

fn not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// Open an upload file and take an exclusive lock on it, so that two requests for one upload
/// (even from two processes) cannot interleave their bytes.
///
/// The lock is only good while the path still names the locked file: a commit renames the
/// file into place as the blob, and a request that opened it just before must not append to
/// a published blob. So after locking, the path is checked to be the same inode.
fn open_locked(path: &Path, id: &UploadId) -> Result<std::fs::File, Error> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
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
    lock_checked(file, path, id)
}

/// Lock `file`, opened from `path`, and check that `path` still names it.
fn lock_checked(file: std::fs::File, path: &Path, id: &UploadId) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::MetadataExt;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(Error::UploadBusy(id.clone())),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::Io {
                op: "lock upload file",
                source: e,
            });
        }
    }
    let locked = file.metadata().map_err(Error::io("stat upload file"))?;
    match std::fs::metadata(path) {
        Ok(m) if m.ino() == locked.ino() && m.dev() == locked.dev() => Ok(file),
        Ok(_) => Err(Error::UploadUnknown(id.clone())),
        Err(e) if not_found(&e) => Err(Error::UploadUnknown(id.clone())),
        Err(e) => Err(Error::Io {
            op: "stat upload file",
            source: e,
        }),
    }
}

/// Whether the recorded `ranges` are exactly the `stored` bytes of the upload file, in order
/// from byte 0, so that the file itself can be published.
fn in_place(ranges: &[Range<u64>], stored: u64) -> bool {
    let mut next = 0;
    ranges.iter().all(|r| {
        let follows = r.start == next;
        next = r.end;
        follows
    }) && next == stored
}

/// Where a commit assembles the recorded parts of an upload that cannot be published in place.
fn assembly_path(upload: &Path) -> PathBuf {
    upload.with_extension("assemble")
}

/// Defence in depth before publishing: the file holds exactly the bytes the parts add up to.
fn check_size(file: &std::fs::File, size: u64) -> Result<(), Error> {
    let len = file
        .metadata()
        .map_err(Error::io("stat upload file"))?
        .len();
    if len != size {
        return Err(Error::Backend(format!(
            "upload file holds {len} bytes where its parts add up to {size}"
        )));
    }
    Ok(())
}

/// Where part `part` starts in its upload file: the key is that position.
fn part_start(id: &UploadId, part: &UploadPart) -> Result<u64, Error> {
    part.key.parse().map_err(|_| Error::PartUnknown {
        id: id.clone(),
        key: part.key.clone(),
    })
}

/// The byte ranges of the upload file that `parts` name, each checked to lie within the
/// `stored` bytes of the file and not to overlap one another.
fn recorded_ranges(
    id: &UploadId,
    parts: &[UploadPart],
    stored: u64,
) -> Result<Vec<Range<u64>>, Error> {
    let mut ranges: Vec<Range<u64>> = Vec::with_capacity(parts.len());
    for p in parts {
        let start = part_start(id, p)?;
        let end = start.checked_add(p.len).filter(|e| *e <= stored);
        let Some(end) = end else {
            return Err(Error::PartSizeMismatch {
                id: id.clone(),
                key: p.key.clone(),
                stored: stored.saturating_sub(start),
                expected: p.len,
            });
        };
        ranges.push(start..end);
    }
    // Parts are appended in turn and never overlap; two recorded parts that do were not
    // written by this store, and publishing them would repeat bytes.
    let mut sorted: Vec<&Range<u64>> = ranges.iter().filter(|r| !r.is_empty()).collect();
    sorted.sort_by_key(|r| r.start);
    if sorted.windows(2).any(|w| w[0].end > w[1].start) {
        return Err(Error::Backend(format!(
            "recorded parts of upload {id} overlap"
        )));
    }
    Ok(ranges)
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

    async fn create_upload(&self, id: &UploadId) -> Result<(), Error> {
        let path = self.upload_path(id);
        tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map(drop)
                .map_err(Error::io("create upload file"))
        })
        .await
        .map_err(|e| Error::Backend(format!("blocking task failed: {e}")))?
    }

    async fn write_part(&self, id: &UploadId, mut data: ByteStream) -> Result<UploadPart, Error> {
        let path = self.upload_path(id);
        let id = id.clone();
        let fsync = self.fsync;
        // Set once the whole body has been handed over. A writer that finds the channel closed
        // without it (the body failed, or the request was dropped mid-body) cuts its bytes off
        // again while it still holds the lock, so a partial part never stays in the file.
        let complete = Arc::new(AtomicBool::new(false));
        let done = complete.clone();
        // One blocking thread owns the file for the whole request: the async side only moves
        // `Bytes` handles, so hashing (in the stream) and writing run in parallel, and there is
        // no per-chunk hop through the blocking pool.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || -> Result<UploadPart, Error> {
            let mut file = open_locked(&path, &id)?;
            let start = file
                .seek(SeekFrom::End(0))
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
                if done.load(Ordering::Acquire) {
                    Ok(())
                } else {
                    Err(Error::Body(std::io::Error::other(
                        "request body ended early",
                    )))
                }
            })();
            if let Some(f) = flusher {
                f.finish();
            }
            if result.is_err() {
                file.set_len(start)
                    .map_err(Error::io("cut a failed part off the upload file"))?;
            }
            result?;
            Ok(UploadPart {
                key: start.to_string(),
                len: written,
            })
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
        if body_error.is_none() {
            complete.store(true, Ordering::Release);
        }
        drop(tx);
        let part = writer
            .await
            .map_err(|e| Error::Backend(format!("blocking task failed: {e}")))?;
        match body_error {
            Some(e) => Err(Error::Body(e)),
            None => part,
        }
    }

    async fn discard_part(&self, id: &UploadId, part: &UploadPart) -> Result<(), Error> {
        let path = self.upload_path(id);
        let id = id.clone();
        let part = part.clone();
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            let file = match open_locked(&path, &id) {
                Ok(f) => f,
                // Gone with its upload, or another request is appending after it: the bytes
                // stay unrecorded, which is all that matters.
                Err(Error::UploadUnknown(_) | Error::UploadBusy(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            let start = part_start(&id, &part)?;
            let stored = file
                .metadata()
                .map_err(Error::io("stat upload file"))?
                .len();
            // Only the last part may go: below the end, cutting would take recorded parts with
            // it.
            if start.checked_add(part.len) == Some(stored) {
                file.set_len(start)
                    .map_err(Error::io("cut a refused part off the upload file"))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Backend(format!("blocking task failed: {e}")))?
    }

    async fn read_upload(&self, id: &UploadId, parts: &[UploadPart]) -> Result<ByteStream, Error> {
        let path = self.upload_path(id);
        let id = id.clone();
        let parts = parts.to_vec();
        // Read under the lock so that the ranges are checked against the file they are read
        // from; the reader threads keep their own descriptors.
        let ranges = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let file = open_locked(&path, &id)?;
            let stored = file
                .metadata()
                .map_err(Error::io("stat upload file"))?
                .len();
            let ranges = recorded_ranges(&id, &parts, stored)?;
            Ok((file, ranges))
        })
        .await
        .map_err(|e| Error::Backend(format!("blocking task failed: {e}")))??;
        let (file, ranges) = ranges;
        // One range at a time: the readers share the descriptor's file offset (and with it
        // the lock), so the next starts only once the one before has finished.
        let streams = futures_util::stream::iter(ranges).map(move |r| match file.try_clone() {
            Ok(f) => spawn_reader(f, r.start, r.end - r.start),
            Err(e) => Box::pin(futures_util::stream::iter([Err(e)])) as ByteStream,
        });
        Ok(Box::pin(streams.flatten()))
    }

    async fn commit_upload(
        &self,
        id: &UploadId,
        parts: &[UploadPart],
        digest: &Digest,
    ) -> Result<bool, Error> {
        let upload = self.upload_path(id);
        let target = self.blob_path(digest);
        let id = id.clone();
        let parts = parts.to_vec();
        let fsync = self.fsync;
        tokio::task::spawn_blocking(move || -> Result<bool, Error> {
            let mut file = open_locked(&upload, &id)?;
            let stored = file
                .metadata()
                .map_err(Error::io("stat upload file"))?
                .len();
            let ranges = recorded_ranges(&id, &parts, stored)?;
            let size: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            if target.exists() {
                // Same digest, same content: keep the blob readers may already be streaming,
                // but restart its age, which garbage collection reads from the mtime.
                drop(file);
                let _ = std::fs::File::options()
                    .write(true)
                    .open(&target)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                std::fs::remove_file(&upload).map_err(Error::io("remove upload file"))?;
                return Ok(false);
            }
            let in_place = in_place(&ranges, stored);
            let dir = target.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(Error::io("create blob directory"))?;
            if in_place {
                // Every sequential push: the parts are exactly the file. The file is never cut
                // here: a commit that fails after a cut would let the next append take the key
                // (the position) of a part another request may still record.
                if fsync {
                    file.sync_all().map_err(Error::io("fsync upload file"))?;
                }
                check_size(&file, size)?;
                std::fs::rename(&upload, &target).map_err(Error::io("publish blob"))?;
            } else {
                // Bytes of a refused or unrecorded request lie between or after the recorded
                // parts: copy exactly the recorded ranges into a new file and publish that,
                // leaving the upload file as it was until the blob is in place. One assembler
                // at a time: this runs under the upload's lock.
                let assembled = assembly_path(&upload);
                let result = (|| {
                    let mut out = std::fs::File::create(&assembled)
                        .map_err(Error::io("create assembled upload"))?;
                    for r in &ranges {
                        file.seek(SeekFrom::Start(r.start))
                            .map_err(Error::io("seek in upload file"))?;
                        let copied = std::io::copy(&mut (&file).take(r.end - r.start), &mut out)
                            .map_err(Error::io("assemble upload"))?;
                        if copied != r.end - r.start {
                            return Err(Error::Backend(format!(
                                "upload {id} ended inside a recorded part"
                            )));
                        }
                    }
                    if fsync {
                        out.sync_all()
                            .map_err(Error::io("fsync assembled upload"))?;
                    }
                    check_size(&out, size)?;
                    std::fs::rename(&assembled, &target).map_err(Error::io("publish blob"))
                })();
                if result.is_err() {
                    let _ = std::fs::remove_file(&assembled);
                }
                result?;
                std::fs::remove_file(&upload).map_err(Error::io("remove upload file"))?;
            }
            if fsync {
                // Persist the new directory entry too; without this a power loss could forget
                // a blob that a manifest, committed afterwards, already references.
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(Error::io("fsync blob directory"))?;
            }
            Ok(true)
        })
        .await
        .map_err(|e| Error::Backend(format!("blocking task failed: {e}")))?
    }

    async fn abort_upload(&self, id: &UploadId) -> Result<(), Error> {
        // What a commit that died while assembling left behind.
        let _ = tokio::fs::remove_file(assembly_path(&self.upload_path(id))).await;
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

    async fn quarantine_blob(&self, digest: &Digest) -> Result<Option<String>, Error> {
        let source = self.blob_path(digest);
        let dir = self.quarantine_dir(digest);
        // The time keeps every quarantine of one digest apart (it could be corrupted again
        // after a repair).
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let target = dir.join(format!("{}.{stamp}", digest.hex()));
        let fsync = self.fsync;
        tokio::task::spawn_blocking(move || -> Result<Option<String>, Error> {
            if !source.exists() {
                return Ok(None);
            }
            std::fs::create_dir_all(&dir).map_err(Error::io("create quarantine directory"))?;
            // One rename within the store: readers open the blob whole or not at all, and the
            // bytes are never copied, so nothing of the evidence can be lost on the way.
            match std::fs::rename(&source, &target) {
                Ok(()) => {}
                Err(e) if not_found(&e) => return Ok(None),
                Err(e) => {
                    return Err(Error::Io {
                        op: "move blob to quarantine",
                        source: e,
                    });
                }
            }
            if fsync {
                for d in [dir.as_path(), source.parent().unwrap_or(Path::new("."))] {
                    std::fs::File::open(d)
                        .and_then(|d| d.sync_all())
                        .map_err(Error::io("fsync quarantine directory"))?;
                }
            }
            Ok(Some(target.display().to_string()))
        })
        .await
        .map_err(|e| Error::Backend(format!("blocking task failed: {e}")))?
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

    conformance_tests!(async {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        (store, dir)
    });

    #[tokio::test]
    async fn a_stale_request_cannot_append_to_a_published_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let id: UploadId = "stale".parse().unwrap();
        store.create_upload(&id).await.unwrap();
        // A request opened the upload file just before a commit renamed it into place.
        let stale = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("uploads/stale"))
            .unwrap();
        let part = store
            .write_part(&id, crate::conformance::stream_of(&[b"abc"]))
            .await
            .unwrap();
        let digest = Digest::sha256_of(b"abc");
        store.commit_upload(&id, &[part], &digest).await.unwrap();
        // The lock is free now, but the path no longer names the file.
        assert!(matches!(
            lock_checked(stale, &dir.path().join("uploads/stale"), &id),
            Err(Error::UploadUnknown(_))
        ));
        assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), b"abc");
    }

    #[tokio::test]
    async fn quarantine_moves_the_bytes_under_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let digest = crate::conformance::put(&store, b"evidence").await;
        let kept = store.quarantine_blob(&digest).await.unwrap().unwrap();
        let kept = std::path::Path::new(&kept);
        assert!(
            kept.starts_with(dir.path().join("quarantine/sha256")),
            "{}",
            kept.display()
        );
        assert_eq!(std::fs::read(kept).unwrap(), b"evidence");
        assert!(!store.blob_path(&digest).exists());
    }

    #[test]
    fn only_a_file_of_exactly_the_recorded_parts_is_published_in_place() {
        assert!(in_place(&[0..5, 5..9], 9));
        assert!(in_place(&[], 0));
        // Bytes after the parts (a refused request's, a crash's): copy, never cut the file.
        assert!(!in_place(&[0..5, 5..9], 12));
        assert!(!in_place(&[], 3));
        // A gap between parts.
        assert!(!in_place(&[0..5, 7..9], 9));
    }

    /// The attack found in review: a commit must not cut the upload file, or a part appended
    /// afterwards could take the key of a part another request is about to record.
    #[tokio::test]
    async fn a_commit_never_cuts_the_parts_of_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let id: UploadId = "nocut".parse().unwrap();
        store.create_upload(&id).await.unwrap();
        let stream = crate::conformance::stream_of;
        let p = store.write_part(&id, stream(&[b"PPPPPP"])).await.unwrap();
        let y = store.write_part(&id, stream(&[b"YY"])).await.unwrap();
        // A racing PATCH's part, written after the PUT's final part, not yet recorded.
        let z = store.write_part(&id, stream(&[b"ZZZZ"])).await.unwrap();
        // The commit of [p, y] must copy (z follows the parts); make that copy fail.
        std::fs::create_dir(assembly_path(&store.upload_path(&id))).unwrap();
        let d = Digest::sha256_of(b"PPPPPPYY");
        assert!(store.commit_upload(&id, &[p, y], &d).await.is_err());
        assert_eq!(store.stat(&d).await.unwrap(), None);
        // Every part is where it was: z still holds its own bytes, and a part appended now
        // gets a key of its own.
        let upload = store.upload_path(&id);
        assert_eq!(std::fs::metadata(&upload).unwrap().len(), 12);
        let read = store
            .read_upload(&id, std::slice::from_ref(&z))
            .await
            .unwrap();
        assert_eq!(crate::conformance::collect(read).await, b"ZZZZ");
        let v = store.write_part(&id, stream(&[b"EVIL"])).await.unwrap();
        assert_ne!(v.key, z.key);
    }

    #[tokio::test]
    async fn recorded_parts_must_not_overlap() {
        let id: UploadId = "overlap".parse().unwrap();
        let p = |key: &str, len| UploadPart {
            key: key.into(),
            len,
        };
        assert!(recorded_ranges(&id, &[p("0", 5), p("5", 5)], 10).is_ok());
        assert!(recorded_ranges(&id, &[p("0", 6), p("5", 5)], 10).is_err());
        assert!(recorded_ranges(&id, &[p("0", 5), p("0", 5)], 10).is_err());
        assert!(recorded_ranges(&id, &[p("8", 5)], 10).is_err());
        assert!(recorded_ranges(&id, &[p("x", 1)], 10).is_err());
        assert!(recorded_ranges(&id, &[p("18446744073709551615", 2)], 10).is_err());
    }
}
