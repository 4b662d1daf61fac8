//! The in-memory blob store: for tests and for embedding where nothing must persist.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use pierone_protocol::{Digest, UploadId};

use crate::{BlobEntry, BlobRead, BlobStore, ByteStream, Error, checked_range};

#[derive(Debug, Default)]
struct Inner {
    /// By digest string, for ordered listing; with the time of the latest commit.
    blobs: BTreeMap<String, (Digest, Bytes, i64)>,
    uploads: HashMap<UploadId, Upload>,
}

#[derive(Debug, Default)]
struct Upload {
    data: Vec<u8>,
    // Mirrors the file lock of the filesystem store, so both behave alike under the suite.
    writing: bool,
}

/// Blobs held in process memory. Cloning shares the same store.
#[derive(Debug, Clone, Default)]
pub struct MemoryBlobStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryBlobStore {
    pub fn new() -> MemoryBlobStore {
        MemoryBlobStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind, still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        Ok(self
            .lock()
            .blobs
            .get(digest.as_str())
            .map(|b| b.1.len() as u64))
    }

    async fn get(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobRead>, Error> {
        let Some(blob) = self.lock().blobs.get(digest.as_str()).map(|b| b.1.clone()) else {
            return Ok(None);
        };
        let total_size = blob.len() as u64;
        let range = checked_range(range, total_size)?;
        let part = blob.slice(range.start as usize..range.end as usize);
        Ok(Some(BlobRead {
            total_size,
            body: Box::pin(futures_util::stream::iter([Ok(part)])),
        }))
    }

    async fn write_upload(
        &self,
        id: &UploadId,
        offset: u64,
        mut data: ByteStream,
    ) -> Result<u64, Error> {
        {
            let mut inner = self.lock();
            let upload = if offset == 0 {
                inner.uploads.entry(id.clone()).or_default()
            } else {
                inner
                    .uploads
                    .get_mut(id)
                    .ok_or_else(|| Error::UploadUnknown(id.clone()))?
            };
            if upload.writing {
                return Err(Error::UploadBusy(id.clone()));
            }
            let stored = upload.data.len() as u64;
            if stored < offset {
                return Err(Error::UploadTruncated {
                    id: id.clone(),
                    stored,
                    expected: offset,
                });
            }
            upload.data.truncate(offset as usize);
            upload.writing = true;
        }
        // Clears the writing flag however this future ends, including when it is dropped
        // because the client went away.
        struct Writing<'a>(&'a MemoryBlobStore, &'a UploadId);
        impl Drop for Writing<'_> {
            fn drop(&mut self) {
                if let Some(u) = self.0.lock().uploads.get_mut(self.1) {
                    u.writing = false;
                }
            }
        }
        let _writing = Writing(self, id);
        let mut written = 0u64;
        let mut result = Ok(());
        while let Some(chunk) = data.next().await {
            match chunk {
                Ok(chunk) => {
                    written += chunk.len() as u64;
                    if let Some(u) = self.lock().uploads.get_mut(id) {
                        u.data.extend_from_slice(&chunk);
                    }
                }
                Err(e) => {
                    result = Err(Error::Body(e));
                    break;
                }
            }
        }
        result.map(|()| written)
    }

    async fn commit_upload(&self, id: &UploadId, size: u64, digest: &Digest) -> Result<(), Error> {
        let mut inner = self.lock();
        let upload = inner
            .uploads
            .get(id)
            .ok_or_else(|| Error::UploadUnknown(id.clone()))?;
        if upload.writing {
            return Err(Error::UploadBusy(id.clone()));
        }
        let stored = upload.data.len() as u64;
        if stored < size {
            return Err(Error::UploadTruncated {
                id: id.clone(),
                stored,
                expected: size,
            });
        }
        let mut upload = inner.uploads.remove(id).unwrap_or_default();
        upload.data.truncate(size as usize);
        let now = now_millis();
        inner
            .blobs
            .entry(digest.as_str().to_owned())
            .and_modify(|b| b.2 = now)
            .or_insert_with(|| (digest.clone(), Bytes::from(upload.data), now));
        Ok(())
    }

    async fn list_blobs(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<BlobEntry>, Error> {
        use std::ops::Bound;
        let inner = self.lock();
        let start = after.map_or(Bound::Unbounded, |d| Bound::Excluded(d.as_str().to_owned()));
        Ok(inner
            .blobs
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, (digest, data, at))| BlobEntry {
                digest: digest.clone(),
                size: data.len() as u64,
                stored_at: *at,
            })
            .collect())
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<bool, Error> {
        Ok(self.lock().blobs.remove(digest.as_str()).is_some())
    }

    async fn abort_upload(&self, id: &UploadId) -> Result<(), Error> {
        self.lock().uploads.remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::conformance_tests!(async { (MemoryBlobStore::new(), ()) });
}
