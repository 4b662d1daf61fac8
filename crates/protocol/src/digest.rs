//! Content digests (`algorithm:hex`) and the streaming hashers that produce them.
//!
//! Hashers can be serialised mid-stream so that a chunked upload can resume on another
//! replica, or after a restart, without re-reading what was already received.

use std::fmt;
use std::str::FromStr;

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256, Sha512};

use crate::Error;

/// A digest algorithm the registry can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the default.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// The name before the colon (`sha256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the lowercase hex encoding.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest such as `sha256:e3b0c442...`.
///
/// Only algorithms the registry can verify are representable: accepting a digest we cannot
/// check would let a client store content under an address it does not hash to.
///
/// ```
/// use pierone_protocol::{Algorithm, Digest};
///
/// let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
///     .parse()
///     .unwrap();
/// assert_eq!(d.algorithm(), Algorithm::Sha256);
/// assert_eq!(d, Digest::sha256_of(b""));
/// assert!(d.matches(b""));
/// // Upper case, a wrong length and algorithms we cannot verify are refused.
/// assert!("sha256:E3B0".parse::<Digest>().is_err());
/// assert!("md5:d41d8cd98f00b204e9800998ecf8427e".parse::<Digest>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    // Kept as the full string so that `as_str` is free; `algorithm` is derived at parse time.
    full: String,
    algorithm: Algorithm,
}

impl Digest {
    /// The algorithm before the colon.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part after the colon.
    pub fn hex(&self) -> &str {
        &self.full[self.algorithm.as_str().len() + 1..]
    }

    /// The whole digest, `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The sha256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Digest {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(data);
        h.finish()
    }

    /// The digest of `data` under this digest's algorithm, for verifying content against it.
    pub fn matches(&self, data: &[u8]) -> bool {
        let mut h = Hasher::new(self.algorithm);
        h.update(data);
        h.finish() == *self
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| Error::InvalidDigest(s.to_owned()))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            // The grammar allows other algorithms; we refuse them explicitly rather than store
            // content we cannot verify.
            other
                if !other.is_empty()
                    && other.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b)
                    }) =>
            {
                return Err(Error::UnsupportedDigestAlgorithm(other.to_owned()));
            }
            _ => return Err(Error::InvalidDigest(s.to_owned())),
        };
        if hex.len() != algorithm.hex_len()
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::InvalidDigest(s.to_owned()));
        }
        Ok(Digest {
            full: s.to_owned(),
            algorithm,
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.full)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

/// A running hash over a byte stream, for one of the supported algorithms.
#[derive(Clone)]
pub enum Hasher {
    /// Hashing with SHA-256.
    Sha256(Sha256),
    /// Hashing with SHA-512.
    Sha512(Sha512),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algorithm().as_str())
    }
}

impl Hasher {
    /// A hasher that has seen nothing yet.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// The algorithm it hashes with.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Hash `data`, after everything before it.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything hashed.
    pub fn finish(self) -> Digest {
        let algorithm = self.algorithm();
        let bytes: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        let mut full = String::with_capacity(algorithm.as_str().len() + 1 + bytes.len() * 2);
        full.push_str(algorithm.as_str());
        full.push(':');
        for b in bytes {
            full.push(char::from(HEX[usize::from(b >> 4)]));
            full.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        Digest { full, algorithm }
    }

    /// The hasher's internal state, prefixed by the algorithm, so it can be stored with an
    /// upload session and resumed elsewhere with [`Hasher::restore`].
    pub fn save(&self) -> Vec<u8> {
        let (tag, state) = match self {
            Hasher::Sha256(h) => (1u8, h.serialize().to_vec()),
            Hasher::Sha512(h) => (2u8, h.serialize().to_vec()),
        };
        let mut out = Vec::with_capacity(1 + state.len());
        out.push(tag);
        out.extend_from_slice(&state);
        out
    }

    /// Resume a hasher saved with [`Hasher::save`].
    pub fn restore(saved: &[u8]) -> Result<Hasher, Error> {
        let bad = || Error::CorruptHashState;
        let (&tag, state) = saved.split_first().ok_or_else(bad)?;
        match tag {
            1 => {
                let arr = state.try_into().map_err(|_| bad())?;
                Ok(Hasher::Sha256(Sha256::deserialize(arr).map_err(|_| bad())?))
            }
            2 => {
                let arr = state.try_into().map_err(|_| bad())?;
                Ok(Hasher::Sha512(Sha512::deserialize(arr).map_err(|_| bad())?))
            }
            _ => Err(bad()),
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_sha256() {
        let d: Digest = EMPTY_SHA256.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert_eq!(d.hex().len(), 64);
        assert_eq!(Digest::sha256_of(b""), d);
    }

    #[test]
    fn sha512_round_trip() {
        let mut h = Hasher::new(Algorithm::Sha512);
        h.update(b"abc");
        let d = h.finish();
        assert!(d.as_str().starts_with("sha512:ddaf35a193617aba"));
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
        assert!(d.matches(b"abc"));
        assert!(!d.matches(b"abd"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            &EMPTY_SHA256.to_uppercase(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
            ":e3b0",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(
                matches!(bad.parse::<Digest>(), Err(Error::InvalidDigest(_))),
                "{bad:?} should be invalid"
            );
        }
        assert!(matches!(
            "md5:d41d8cd98f00b204e9800998ecf8427e".parse::<Digest>(),
            Err(Error::UnsupportedDigestAlgorithm(a)) if a == "md5"
        ));
    }

    #[test]
    fn hasher_state_survives_save_and_restore() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut h = Hasher::new(alg);
            h.update(b"hello ");
            let saved = h.save();
            let mut resumed = Hasher::restore(&saved).unwrap();
            resumed.update(b"world");
            let mut whole = Hasher::new(alg);
            whole.update(b"hello world");
            assert_eq!(resumed.finish(), whole.finish());
        }
        assert!(Hasher::restore(&[]).is_err());
        assert!(Hasher::restore(&[1, 2, 3]).is_err());
        assert!(Hasher::restore(&[9; 105]).is_err());
    }
}
