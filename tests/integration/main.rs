//! The integration tests of pierone: the real server driven over HTTP on 127.0.0.1, by this
//! crate's client and by real container tools (skopeo, podman, oras).

mod blobs;
mod clients;
mod manifests;
mod robustness;
mod util;
