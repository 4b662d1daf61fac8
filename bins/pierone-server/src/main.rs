//! `pierone-server`: parse flags, open the chosen backends, serve until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use pierone_blobstore::FsBlobStore;
use pierone_registry::{Config, Registry};
use pierone_tagstore::{SqlTagStore, TagPolicy};

/// Pier One: a Docker/OCI registry with immutable tags.
///
/// With no flags it serves on 127.0.0.1:5000 and keeps blobs and its SQLite metadata under
/// ./pierone-data. Every flag can also be set as an environment variable PIERONE_<NAME>.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "PIERONE_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,

    /// Directory for blobs (blobs/, uploads/) and the SQLite metadata database (pierone.db).
    #[arg(long, env = "PIERONE_DATA_DIR", default_value = "./pierone-data")]
    data_dir: PathBuf,

    /// Tags matching this glob may be moved once set (`*` any run, `?` one character).
    /// Repeatable; comma-separated in the environment variable.
    #[arg(
        long = "mutable-tag-pattern",
        env = "PIERONE_MUTABLE_TAG_PATTERN",
        value_delimiter = ',',
        default_value = "*-SNAPSHOT"
    )]
    mutable_tag_patterns: Vec<String>,

    /// Allow pushing the tag `latest` (then mutable). By default it is refused and a pull of
    /// `latest` resolves to the most recently created tag.
    #[arg(long, env = "PIERONE_ALLOW_LATEST_PUSH")]
    allow_latest_push: bool,

    /// Largest blob accepted, in bytes.
    #[arg(long, env = "PIERONE_MAX_BLOB_SIZE", default_value_t = 64 << 30)]
    max_blob_size: u64,

    /// Do not fsync blobs before publishing them: faster, but a power loss may lose blobs
    /// that were acknowledged. Crash atomicity is kept either way.
    #[arg(long, env = "PIERONE_NO_FSYNC")]
    no_fsync: bool,
}

fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PIERONE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pierone-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pierone-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let blobs = FsBlobStore::open(&args.data_dir)
        .await
        .map_err(|e| format!("blob store at {}: {e}", args.data_dir.display()))?
        .with_fsync(!args.no_fsync);
    let db = args.data_dir.join("pierone.db");
    let tags = SqlTagStore::open(&db.to_string_lossy())
        .await
        .map_err(|e| format!("metadata database {}: {e}", db.display()))?;
    let config = Config {
        tag_policy: TagPolicy::new(&args.mutable_tag_patterns, args.allow_latest_push),
        max_blob_size: args.max_blob_size,
        ..Config::default()
    };
    let registry = Arc::new(Registry::new(Arc::new(blobs), Arc::new(tags), config));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    // Tests and scripts read the real address from this line when asked to bind port 0.
    tracing::info!(
        listen = %bound,
        data_dir = %args.data_dir.display(),
        "pierone-server ready"
    );
    pierone_registry::run(listener, registry, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests");
}
