//! The OCI distribution protocol as plain values: repository names, references, digests,
//! manifests and error codes.
//!
//! This crate does no I/O of its own and knows nothing of HTTP, async runtimes or storage.
//! Everything in it is a pure function of its input (at most a `Read` the caller supplies), so
//! it can be unit-tested exhaustively and embedded anywhere.

#![warn(missing_docs)]

pub mod audit;
mod digest;
mod error;
mod layer;
mod manifest;
mod name;
mod reference;
mod upload;

#[cfg(test)]
mod proptests;

pub use digest::{Algorithm, Digest, Hasher};
pub use error::{Error, ErrorCode, ErrorInfo, error_body};
pub use layer::{WalkLimits, walk_layer, walk_layer_with};
#[cfg(any(test, feature = "test-util"))]
pub use layer::{tar_header, tar_with};
pub use manifest::{
    Descriptor, MAX_MANIFEST_SIZE, Manifest, ManifestKind, media_types, parse_manifest,
};
pub use name::RepoName;
pub use reference::{Reference, Tag};
pub use upload::{UploadId, UploadPart};
