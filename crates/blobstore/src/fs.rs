//! The filesystem blob store: blobs under `blobs/<alg>/<2 hex>/<hex>`, uploads under `uploads/`.
//!
//! A blob appears by `rename(2)` of a fully written, fsynced upload file, which is atomic on
//! POSIX filesystems: a reader opens either nothing or the whole blob, and a crash leaves at
//! worst an upload file that the session's recorded offset still describes.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::BytesMut;
use futures_util::StreamExt;
use pierone_protocol::{Digest, UploadId};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::{BlobRead, BlobStore, ByteStream, Error};

/// Size of the chunks a read is streamed in: large enough to keep syscalls off the profile,
/// small enough that many concurrent pulls stay cheap in memory.
const READ_CHUNK: usize = 256 * 1024;

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
        let mut file = match tokio::fs::File::open(self.blob_path(digest)).await {
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
        let range = range.unwrap_or(0..total_size);
        if range.start > range.end || range.end > total_size {
            return Err(Error::RangeNotSatisfiable {
                start: range.start,
                end: range.end,
                size: total_size,
            });
        }
        if range.start > 0 {
            file.seek(SeekFrom::Start(range.start))
                .await
                .map_err(Error::io("seek in blob"))?;
        }
        let remaining = range.end - range.start;
        let body = futures_util::stream::try_unfold(
            (file, remaining),
            |(mut file, remaining)| async move {
                if remaining == 0 {
                    return Ok(None);
                }
                let want = remaining.min(READ_CHUNK as u64) as usize;
                let mut buf = BytesMut::with_capacity(want);
                while buf.len() < want {
                    let n = (&mut file)
                        .take((want - buf.len()) as u64)
                        .read_buf(&mut buf)
                        .await?;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "blob shorter than its recorded size",
                        ));
                    }
                }
                let n = buf.len() as u64;
                Ok(Some((buf.freeze(), (file, remaining - n))))
            },
        );
        Ok(Some(BlobRead {
            total_size,
            body: Box::pin(body),
        }))
    }

    async fn write_upload(
        &self,
        id: &UploadId,
        offset: u64,
        mut data: ByteStream,
    ) -> Result<u64, Error> {
        let path = self.upload_path(id);
        let id2 = id.clone();
        let std_file = tokio::task::spawn_blocking(move || -> Result<std::fs::File, Error> {
            let file = open_locked(&path, &id2, offset == 0)?;
            let stored = file
                .metadata()
                .map_err(Error::io("stat upload file"))?
                .len();
            if stored < offset {
                return Err(Error::UploadTruncated {
                    id: id2,
                    stored,
                    expected: offset,
                });
            }
            if stored > offset {
                file.set_len(offset)
                    .map_err(Error::io("truncate upload file"))?;
            }
            Ok(file)
        })
        .await
        .map_err(|e| Error::Backend(format!("blocking task failed: {e}")))??;
        let mut file = tokio::fs::File::from_std(std_file);
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(Error::io("seek in upload file"))?;
        let mut written = 0u64;
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(Error::Body)?;
            file.write_all(&chunk)
                .await
                .map_err(Error::io("write upload file"))?;
            written += chunk.len() as u64;
        }
        file.flush().await.map_err(Error::io("write upload file"))?;
        Ok(written)
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
                // Same digest, same content: keep the blob readers may already be streaming.
                drop(file);
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
