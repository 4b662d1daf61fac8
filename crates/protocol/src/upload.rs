//! Upload session identifiers, and the parts an upload is made of.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The opaque id of a blob upload session, as it appears in `/blobs/uploads/<id>`.
///
/// Restricted to `[A-Za-z0-9-]{1,64}` so that it can name files and database rows without
/// escaping, whichever backend stores it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    /// Wraps a freshly generated id; callers supply the randomness so this crate stays pure.
    pub fn from_random(bytes: [u8; 16]) -> UploadId {
        let mut s = String::with_capacity(32);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        UploadId(s)
    }

    /// The id as it appears in upload URLs.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UploadId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            Ok(UploadId(s.to_owned()))
        } else {
            Err(Error::InvalidUploadId(s.to_owned()))
        }
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({})", self.0)
    }
}

/// One request's bytes of an upload, as a blob store wrote them.
///
/// Every request that carries upload data writes a part of its own; the upload session records
/// the parts whose progress it accepted, in order, and only those parts are ever published.
/// `key` is the store's name for the part (opaque to everyone else), `len` its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadPart {
    /// The store's name for the part.
    pub key: String,
    /// Its size in bytes.
    pub len: u64,
}

impl UploadPart {
    /// The total size of `parts`, or `None` if it overflows (which no real store can hold).
    pub fn total(parts: &[UploadPart]) -> Option<u64> {
        parts.iter().try_fold(0u64, |sum, p| sum.checked_add(p.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let id = UploadId::from_random([0xab; 16]);
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(id.as_str().parse::<UploadId>().unwrap(), id);
        for bad in ["", "../x", "a/b", "a.b", &"a".repeat(65)] {
            assert!(bad.parse::<UploadId>().is_err(), "{bad:?}");
        }
    }
}
