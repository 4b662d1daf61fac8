//! The in-memory blob store: for tests and for embedding where nothing must persist.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use pierone_protocol::{Digest, UploadId};

use crate::{BlobEntry, BlobRead, BlobStore, ByteStream, Error, UploadPart, checked_range};

#[derive(Debug, Default)]
struct Inner {
    /// By digest string, for ordered listing; with the time of the latest commit.
    blobs: BTreeMap<String, (Digest, Bytes, i64)>,
    /// Each upload's parts by key. Requests on one upload may run at once: every part is its
    /// own buffer, so they cannot touch each other's bytes.
    uploads: HashMap<UploadId, HashMap<String, Bytes>>,
    next_part: u64,
    /// Quarantined blobs by the location reported for them.
    quarantined: BTreeMap<String, Bytes>,
}

/// Blobs held in process memory. Cloning shares the same store.
#[derive(Debug, Clone, Default)]
pub struct MemoryBlobStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryBlobStore {
    /// An empty store.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use futures_util::StreamExt;
    /// use pierone_blobstore::{BlobStore, ByteStream, MemoryBlobStore};
    /// use pierone_protocol::{Digest, UploadId};
    ///
    /// let store = MemoryBlobStore::new();
    /// let id: UploadId = "example".parse().unwrap();
    /// store.create_upload(&id).await.unwrap();
    /// // One request's body becomes one part; the caller records the parts it accepted.
    /// let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(b"hello".to_vec().into())]));
    /// let part = store.write_part(&id, body).await.unwrap();
    /// // The caller hashed what it sent; only then does it publish the parts under the digest.
    /// let digest = Digest::sha256_of(b"hello");
    /// assert!(store.commit_upload(&id, &[part], &digest).await.unwrap());
    /// assert_eq!(store.stat(&digest).await.unwrap(), Some(5));
    /// let mut read = store.get(&digest, Some(1..4)).await.unwrap().unwrap();
    /// assert_eq!(read.total_size, 5);
    /// let chunk = read.body.next().await.unwrap().unwrap();
    /// assert_eq!(&chunk[..], b"ell");
    /// # });
    /// ```
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

    async fn create_upload(&self, id: &UploadId) -> Result<(), Error> {
        self.lock().uploads.entry(id.clone()).or_default();
        Ok(())
    }

    async fn write_part(&self, id: &UploadId, mut data: ByteStream) -> Result<UploadPart, Error> {
        let key = {
            let mut inner = self.lock();
            if !inner.uploads.contains_key(id) {
                return Err(Error::UploadUnknown(id.clone()));
            }
            inner.next_part += 1;
            format!("m{}", inner.next_part)
        };
        // Collected outside the lock, so a stalled body blocks nobody; the part becomes
        // visible only whole.
        let mut buf = Vec::new();
        while let Some(chunk) = data.next().await {
            buf.extend_from_slice(&chunk.map_err(Error::Body)?);
        }
        let len = buf.len() as u64;
        let mut inner = self.lock();
        let parts = inner
            .uploads
            .get_mut(id)
            .ok_or_else(|| Error::UploadUnknown(id.clone()))?;
        parts.insert(key.clone(), Bytes::from(buf));
        Ok(UploadPart { key, len })
    }

    async fn discard_part(&self, id: &UploadId, part: &UploadPart) -> Result<(), Error> {
        if let Some(parts) = self.lock().uploads.get_mut(id) {
            parts.remove(&part.key);
        }
        Ok(())
    }

    async fn read_upload(&self, id: &UploadId, parts: &[UploadPart]) -> Result<ByteStream, Error> {
        let chunks = self.recorded(id, parts)?;
        Ok(Box::pin(futures_util::stream::iter(
            chunks.into_iter().map(Ok),
        )))
    }

    async fn commit_upload(
        &self,
        id: &UploadId,
        parts: &[UploadPart],
        digest: &Digest,
    ) -> Result<bool, Error> {
        let chunks = self.recorded(id, parts)?;
        let mut inner = self.lock();
        if inner.uploads.remove(id).is_none() {
            // Committed or aborted by another request since `recorded` looked.
            return Err(Error::UploadUnknown(id.clone()));
        }
        let now = now_millis();
        let stored = !inner.blobs.contains_key(digest.as_str());
        inner
            .blobs
            .entry(digest.as_str().to_owned())
            .and_modify(|b| b.2 = now)
            .or_insert_with(|| (digest.clone(), Bytes::from(chunks.concat()), now));
        Ok(stored)
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

    async fn quarantine_blob(&self, digest: &Digest) -> Result<Option<String>, Error> {
        let mut inner = self.lock();
        let Some((_, bytes, _)) = inner.blobs.remove(digest.as_str()) else {
            return Ok(None);
        };
        let location = format!(
            "quarantine/{}/{}.{}",
            digest.algorithm().as_str(),
            digest.hex(),
            inner.quarantined.len()
        );
        inner.quarantined.insert(location.clone(), bytes);
        Ok(Some(location))
    }

    async fn abort_upload(&self, id: &UploadId) -> Result<(), Error> {
        self.lock().uploads.remove(id);
        Ok(())
    }
}

impl MemoryBlobStore {
    /// The bytes kept at `location` by [`BlobStore::quarantine_blob`].
    pub fn quarantined(&self, location: &str) -> Option<Bytes> {
        self.lock().quarantined.get(location).cloned()
    }

    /// The bytes of `parts`, each checked against its recorded length.
    fn recorded(&self, id: &UploadId, parts: &[UploadPart]) -> Result<Vec<Bytes>, Error> {
        let inner = self.lock();
        let stored = inner
            .uploads
            .get(id)
            .ok_or_else(|| Error::UploadUnknown(id.clone()))?;
        parts
            .iter()
            .map(|p| {
                let bytes = stored.get(&p.key).ok_or_else(|| Error::PartUnknown {
                    id: id.clone(),
                    key: p.key.clone(),
                })?;
                if bytes.len() as u64 != p.len {
                    return Err(Error::PartSizeMismatch {
                        id: id.clone(),
                        key: p.key.clone(),
                        stored: bytes.len() as u64,
                        expected: p.len,
                    });
                }
                Ok(bytes.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    conformance_tests!(async { (MemoryBlobStore::new(), ()) });

    #[tokio::test]
    async fn quarantine_keeps_the_bytes() {
        let store = MemoryBlobStore::new();
        let d = crate::conformance::put(&store, b"evidence").await;
        let kept = store.quarantine_blob(&d).await.unwrap().unwrap();
        assert_eq!(store.quarantined(&kept).unwrap(), &b"evidence"[..]);
    }
}
