//! The embedded in-memory registry served over HTTP on 127.0.0.1 (a free port) until Ctrl-C.
use std::sync::Arc;

use pierone_registry::{Config, Registry};
use pierone_service::{MemoryBlobStore, MemoryTagStore};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (blobs, tags) = (MemoryBlobStore::new(), MemoryTagStore::new());
    let registry = Arc::new(Registry::new(
        Arc::new(blobs),
        Arc::new(tags),
        Config::default(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("serving on http://{}", listener.local_addr()?);
    let stop = async { tokio::signal::ctrl_c().await.unwrap_or(()) };
    pierone_registry::run(listener, registry, stop).await
}
