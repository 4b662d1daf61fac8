//! The integration tests of pierone: the real server driven over HTTP on 127.0.0.1, by this
//! crate's client and by real container tools (skopeo, podman, oras).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod api;
mod architecture;
mod audit;
mod auth;
mod blobs;
mod cli;
mod clients;
mod events;
mod integrity;
mod manifests;
mod oidc;
mod operations;
mod replicas;
mod robustness;
mod scrub;
mod signing;
mod startup;
mod tokens;
mod util;
