//! Manifest references: a tag or a digest.

use std::fmt;
use std::str::FromStr;

use crate::{Digest, Error};

/// A tag, `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}` by the distribution-spec.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-');
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(Error::InvalidTag(s.to_owned()))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

/// What follows `/manifests/` in a URL: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag, which the registry resolves to a digest.
    Tag(Tag),
    /// A digest, naming the manifest's bytes.
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        // A tag cannot contain ':', so its presence decides which grammar applies.
        if s.contains(':') {
            s.parse().map(Reference::Digest)
        } else {
            s.parse().map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        for ok in ["1.0", "latest", "_x", "A-B_c.d", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok:?}");
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", "a b", &"a".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn references() {
        assert!(matches!("1.0".parse::<Reference>(), Ok(Reference::Tag(_))));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(matches!(d.parse::<Reference>(), Ok(Reference::Digest(_))));
        assert!(matches!(
            "sha256:xyz".parse::<Reference>(),
            Err(Error::InvalidDigest(_))
        ));
    }
}
