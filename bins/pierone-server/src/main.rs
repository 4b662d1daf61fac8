//! `pierone-server`: parse flags, open the chosen backends, serve until SIGTERM or Ctrl-C; or,
//! as `pierone-server scrub`, re-hash every stored blob on the same backends.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use pierone_auth::{
    AuthConfig, Authorizer, CachingValidator, FileTeams, HttpTeams, IntrospectionValidator,
    MemoryTeams, OidcRouter, TeamDirectory, TokenInfoValidator, TokenValidator,
};
use pierone_blobstore::{BlobStore, FsBlobStore};
use pierone_registry::{AuditSigner, Config, GcConfig, Registry};
use pierone_s3::{S3BlobStore, S3Config, S3Endpoint};
use pierone_service::scrub::{Mismatch, ScrubOptions, ScrubProgress};
use pierone_tagstore::{SqlTagStore, TagPolicy};

mod oidc_flags;

/// Pier One: a Docker/OCI registry with immutable tags.
///
/// With no flags it serves on 127.0.0.1:5000 and keeps blobs and its SQLite metadata under
/// ./pierone-data. Every flag can also be set as an environment variable PIERONE_<NAME>.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    stores: StoreArgs,

    /// Address to listen on.
    #[arg(long, env = "PIERONE_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,

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

    /// Largest blob accepted: bytes, or a number with a unit (`512MiB`, `64GiB`, `10MB`).
    #[arg(long, env = "PIERONE_MAX_BLOB_SIZE", default_value = "64GiB", value_parser = byte_size)]
    max_blob_size: u64,

    /// Validate bearer tokens with this token-info endpoint
    /// (`GET <url>` with `Authorization: Bearer <token>`).
    #[arg(
        long,
        env = "PIERONE_TOKENINFO_URL",
        conflicts_with = "introspection_url"
    )]
    tokeninfo_url: Option<String>,

    /// Validate bearer tokens with this RFC 7662 introspection endpoint instead.
    #[arg(long, env = "PIERONE_INTROSPECTION_URL", requires_all = ["introspection_client_id", "introspection_client_secret"])]
    introspection_url: Option<String>,

    /// Client id the server authenticates to the introspection endpoint with.
    #[arg(long, env = "PIERONE_INTROSPECTION_CLIENT_ID")]
    introspection_client_id: Option<String>,

    /// Client secret the server authenticates to the introspection endpoint with.
    #[arg(
        long,
        env = "PIERONE_INTROSPECTION_CLIENT_SECRET",
        hide_env_values = true
    )]
    introspection_client_secret: Option<String>,

    /// YAML file of teams, their members (employee uids) and applications; reloaded when it
    /// changes. Takes precedence over the HTTP services below.
    #[arg(long, env = "PIERONE_TEAMS_FILE")]
    teams_file: Option<PathBuf>,

    /// Team service for employees: `GET <url>/api/teams?member=<uid>`.
    #[arg(long, env = "PIERONE_TEAM_SERVICE_URL")]
    team_service_url: Option<String>,

    /// Application registry for service users: `GET <url>/apps/<application-id>`.
    #[arg(long, env = "PIERONE_APPLICATION_REGISTRY_URL")]
    application_registry_url: Option<String>,

    /// The server's own bearer token for the team service and application registry.
    #[arg(long, env = "PIERONE_SERVICE_TOKEN", hide_env_values = true)]
    service_token: Option<String>,

    /// Let anonymous clients pull (pushes still need a token).
    #[arg(long, env = "PIERONE_PUBLIC_READ")]
    public_read: bool,

    /// Prefix of service-user uids; the rest is the application id.
    #[arg(long, env = "PIERONE_SERVICE_UID_PREFIX", default_value = "stups_")]
    service_uid_prefix: String,

    /// Serve without any token validation on a non-loopback address. Everyone may push.
    #[arg(long, env = "PIERONE_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,

    #[command(flatten)]
    oidc: oidc_flags::OidcArgs,

    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with this PEM certificate chain; reloaded when the
    /// file changes.
    #[arg(long, env = "PIERONE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert; reloaded when the file changes.
    #[arg(long, env = "PIERONE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Serve `/metrics` (and the health and readiness probes) on this internal address only,
    /// instead of on --listen.
    #[arg(long, env = "PIERONE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,

    /// Log format on stderr: `text`, or `json` (one object per line).
    #[arg(
        long,
        env = "PIERONE_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,

    /// Ed25519 private key (PKCS#8 PEM, e.g. `openssl genpkey -algorithm ed25519`) that signs
    /// audit checkpoints. Its public key is logged at start-up; publish it for verifiers.
    #[arg(long, env = "PIERONE_AUDIT_SIGNING_KEY")]
    audit_signing_key: Option<PathBuf>,

    /// YAML trust policy (docs/SIGNING.md): which tags of a team may only name manifests
    /// signed by one of the team's keys. Reloaded when it changes; a broken edit keeps the
    /// last good policy, a broken file at start-up refuses to start.
    #[arg(long, env = "PIERONE_TRUST_POLICY")]
    trust_policy: Option<PathBuf>,

    /// How often the audit log's head is signed when it changed (e.g. `60s`, `5m`).
    #[arg(long, env = "PIERONE_AUDIT_CHECKPOINT_INTERVAL", default_value = "60s", value_parser = duration)]
    audit_checkpoint_interval: Duration,

    /// Webhook URL told about every new or moved tag with a CloudEvents JSON POST, at least
    /// once. Repeatable; comma-separated in the environment variable.
    #[arg(long = "webhook", env = "PIERONE_WEBHOOKS", value_delimiter = ',')]
    webhooks: Vec<String>,

    /// The CloudEvents `source` attribute of those events.
    #[arg(long, env = "PIERONE_EVENT_SOURCE", default_value = "/pierone")]
    event_source: String,

    /// How often garbage collection runs (`0` turns it off).
    #[arg(long, env = "PIERONE_GC_INTERVAL", default_value = "1h", value_parser = duration)]
    gc_interval: Duration,

    /// Blobs stored more recently than this are never collected, so a push in progress is
    /// safe. Unreferenced older blobs are deleted on the run after the one that marks them.
    #[arg(long, env = "PIERONE_GC_GRACE", default_value = "24h", value_parser = duration)]
    gc_grace: Duration,

    /// An upload session untouched for this long is removed (with its data) by garbage
    /// collection.
    #[arg(long, env = "PIERONE_UPLOAD_TTL", default_value = "24h", value_parser = duration)]
    upload_ttl: Duration,

    /// Upload requests one principal may stream at once; more get 429 TOOMANYREQUESTS.
    #[arg(long, env = "PIERONE_MAX_UPLOADS_PER_PRINCIPAL", default_value_t = 64)]
    max_uploads_per_principal: usize,

    /// Largest request head (request line and headers) accepted, in bytes or with a unit
    /// (`64KiB`); longer gets 431.
    #[arg(long, env = "PIERONE_MAX_HEADER_BYTES", default_value = "64KiB", value_parser = byte_size_usize)]
    max_header_bytes: usize,

    /// How long a client may take to send a request head before it is disconnected.
    #[arg(long, env = "PIERONE_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = duration)]
    header_read_timeout: Duration,

    /// How long a connection may stay open with no request in flight: from accept to its
    /// first request, and between requests (HTTP/1 keep-alive, HTTP/2). A request in progress,
    /// however long, is not cut.
    #[arg(long, env = "PIERONE_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    idle_timeout: Duration,

    /// Connections each listener keeps open at once; more are accepted and closed at once
    /// (counted in pierone_connections_refused_total). Keep it below `ulimit -n`.
    #[arg(long, env = "PIERONE_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
}

/// Where blobs and metadata live: shared by serving and the scrub, so that the scrub reads
/// exactly the stores the server writes.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// Directory for blobs (blobs/, uploads/) and, unless --database-url says otherwise, the
    /// SQLite metadata database (pierone.db).
    #[arg(
        long,
        env = "PIERONE_DATA_DIR",
        default_value = "./pierone-data",
        global = true
    )]
    data_dir: PathBuf,

    /// Metadata database: `postgres://user@host/db` for PostgreSQL (several replicas can
    /// share it), or `sqlite://PATH`. Default: SQLite in the data directory.
    #[arg(
        long,
        env = "PIERONE_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    database_url: Option<String>,

    /// Where blobs live: `fs` (the data directory) or `s3`.
    #[arg(
        long,
        env = "PIERONE_BLOB_STORE",
        value_enum,
        default_value = "fs",
        global = true
    )]
    blob_store: BlobBackend,

    /// S3 bucket for blobs (required with --blob-store s3).
    #[arg(long, env = "PIERONE_S3_BUCKET", global = true)]
    s3_bucket: Option<String>,

    /// Prefix for every key in the bucket, e.g. `pierone/`.
    #[arg(long, env = "PIERONE_S3_PREFIX", default_value = "", global = true)]
    s3_prefix: String,

    /// Endpoint of an S3-compatible server (then path-style addressing is used). Default: AWS.
    #[arg(long, env = "PIERONE_S3_ENDPOINT", global = true)]
    s3_endpoint: Option<String>,

    /// AWS region of the bucket. Default: from the AWS configuration, else us-east-1.
    #[arg(long, env = "PIERONE_S3_REGION", global = true)]
    s3_region: Option<String>,

    /// Answer blob GETs with a 307 to a presigned S3 URL, so pull traffic bypasses the server.
    #[arg(long, env = "PIERONE_S3_REDIRECT", global = true)]
    s3_redirect: bool,

    /// Do not fsync blobs before publishing them: faster, but a power loss may lose blobs
    /// that were acknowledged. Crash atomicity is kept either way.
    #[arg(long, env = "PIERONE_NO_FSYNC", global = true)]
    no_fsync: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Re-hash every stored blob and report those whose bytes do not match their digest,
    /// with the repositories, tags and manifests that need them. Exits 0 when all match, 1
    /// when some do not, 2 when the scrub could not finish. Reads every blob.
    Scrub(ScrubArgs),
}

#[derive(Debug, clap::Args)]
struct ScrubArgs {
    /// Move mismatching blobs out of service (their bytes are kept under quarantine/) and
    /// record that in the audit log. Pulls of them then answer 404 saying why; a push of the
    /// correct bytes restores them.
    #[arg(long)]
    quarantine: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `250ms`, `30s`, `5m`, `24h`, `7d`, or a plain number of seconds.
fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 24h"))?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

/// A size: plain bytes, or a whole number with a unit, `kB`, `MB`, `GB`, `TB` (powers of 1000)
/// or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024), in any case, with or without a space.
/// A bare `K`, `M` or `G` is refused: tools disagree on whether it means 1000 or 1024.
fn byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let unit = unit.trim_start();
    if n.is_empty() {
        return Err(format!(
            "{s} is not a size: give bytes, or a number with a unit such as 512MiB, 64GiB or 10MB"
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "{s}: give a whole number, in a smaller unit if need be (1536MiB, not 1.5GiB)"
        ));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit {unit} in {s}: use B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
            ));
        }
    };
    n.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{s} is too large: at most 16 EiB"))
}

/// [`byte_size`] for limits kept in memory-sized integers.
fn byte_size_usize(s: &str) -> Result<usize, String> {
    usize::try_from(byte_size(s)?)
        .map_err(|_| format!("{} is too large for this machine", s.trim()))
}

/// Refuse a metrics address that `--listen` already takes: the second bind would fail only
/// after the server had said it was ready.
fn check_metrics_listen(listen: SocketAddr, metrics: Option<SocketAddr>) -> Result<(), String> {
    let Some(metrics) = metrics else {
        return Ok(());
    };
    // Port 0 asks for a free port, which is never the other listener's.
    if listen.port() == 0 || listen.port() != metrics.port() {
        return Ok(());
    }
    let hint = "give the metrics a port of their own, or leave out --metrics-listen to serve them on --listen";
    if listen == metrics {
        return Err(format!(
            "--metrics-listen {metrics} is the address of --listen: {hint}"
        ));
    }
    // A wildcard address takes the port on every address of its family (IPv6's on IPv4's
    // too, where it is dual-stack).
    let covers = |wide: SocketAddr, narrow: SocketAddr| {
        wide.ip().is_unspecified() && (wide.is_ipv6() || wide.is_ipv4() == narrow.is_ipv4())
    };
    if covers(listen, metrics) || covers(metrics, listen) {
        return Err(format!(
            "--metrics-listen {metrics} and --listen {listen} overlap (both port {}): {hint}",
            listen.port()
        ));
    }
    Ok(())
}

/// A database URL fit for a log or an error: no password (in the user part or the query),
/// nothing after `?`.
fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    match rest.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{user}@{host}"),
        },
        None => format!("{scheme}://{rest}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BlobBackend {
    Fs,
    S3,
}

/// The blob store the flags describe. Credentials for S3 come from the standard AWS chain
/// (environment, profile, instance role).
async fn blob_store(args: &StoreArgs) -> Result<Arc<dyn BlobStore>, String> {
    match args.blob_store {
        BlobBackend::Fs => Ok(Arc::new(
            FsBlobStore::open(&args.data_dir)
                .await
                .map_err(|e| format!("blob store at {}: {e}", args.data_dir.display()))?
                .with_fsync(!args.no_fsync),
        )),
        BlobBackend::S3 => {
            let bucket = args
                .s3_bucket
                .clone()
                .ok_or("--s3-bucket is required with --blob-store s3")?;
            let mut config = S3Config::new(bucket.clone());
            config.prefix = args.s3_prefix.clone();
            if args.s3_redirect {
                config.redirect_ttl = Some(std::time::Duration::from_secs(15 * 60));
            }
            let endpoint = S3Endpoint {
                region: args.s3_region.clone(),
                url: args.s3_endpoint.clone(),
            };
            let store = S3BlobStore::connect(config, endpoint)
                .await
                .map_err(|e| format!("S3 bucket {bucket}: {e}"))?;
            Ok(Arc::new(store))
        }
    }
}

/// How long identity services get to answer before a request fails with 503.
const AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Memory for remembered token answers: an invalid token's entry weighs about 200 bytes
/// whatever the token's length, so this holds some 80,000 of them.
const TOKEN_CACHE_BYTES: u64 = 16 << 20;

/// Build the authorizer the flags describe, refusing configurations that would expose an
/// unauthenticated registry by accident.
fn authorizer(args: &Args) -> Result<Authorizer, String> {
    let other: Option<Arc<dyn TokenValidator>> =
        match (&args.tokeninfo_url, &args.introspection_url) {
            (Some(url), _) => Some(Arc::new(
                TokenInfoValidator::new(url, AUTH_TIMEOUT).map_err(|e| e.to_string())?,
            )),
            (None, Some(url)) => Some(Arc::new(
                IntrospectionValidator::new(
                    url,
                    args.introspection_client_id.as_deref().unwrap_or_default(),
                    args.introspection_client_secret
                        .as_deref()
                        .unwrap_or_default(),
                    AUTH_TIMEOUT,
                )
                .map_err(|e| e.to_string())?,
            )),
            (None, None) => None,
        };
    let validator: Arc<dyn TokenValidator> =
        match (oidc_flags::validator(&args.oidc, AUTH_TIMEOUT)?, other) {
            (Some(oidc), other) => Arc::new(OidcRouter::new(oidc, other)),
            (None, Some(other)) => other,
            (None, None) => {
                if !args.listen.ip().is_loopback() && !args.insecure_no_auth {
                    return Err(format!(
                        "refusing to serve {} without token validation: give --tokeninfo-url, \
                         --introspection-url or --oidc-issuer, or --insecure-no-auth if you \
                         really mean it",
                        args.listen
                    ));
                }
                tracing::warn!(
                    "NO AUTHENTICATION: no --tokeninfo-url, --introspection-url or \
                     --oidc-issuer given; anyone who can reach {} may push and pull",
                    args.listen
                );
                return Ok(Authorizer::unchecked());
            }
        };
    // OIDC answers are cached too: a signature costs 70-210 µs to verify, a hit one SHA-256.
    let validator = Arc::new(CachingValidator::new(
        validator,
        TOKEN_CACHE_BYTES,
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(10),
    ));
    let teams: Arc<dyn TeamDirectory> = if let Some(path) = &args.teams_file {
        Arc::new(FileTeams::open(path).map_err(|e| e.to_string())?)
    } else if args.team_service_url.is_some() || args.application_registry_url.is_some() {
        Arc::new(
            HttpTeams::new(
                args.team_service_url.as_deref(),
                args.application_registry_url.as_deref(),
                args.service_token.as_deref(),
                AUTH_TIMEOUT,
            )
            .map_err(|e| e.to_string())?,
        )
    } else {
        tracing::warn!(
            "no --teams-file, --team-service-url or --application-registry-url: \
             only tokens with the scope application.write_all can push"
        );
        Arc::new(MemoryTeams::default())
    };
    Ok(Authorizer::new(
        validator,
        teams,
        AuthConfig {
            public_read: args.public_read,
            service_uid_prefix: args.service_uid_prefix.clone(),
        },
    ))
}

/// The metadata store the flags describe, migrated to the current schema.
async fn tag_store(args: &StoreArgs) -> Result<SqlTagStore, String> {
    let db = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            // With blobs in S3 nothing else creates the data directory.
            std::fs::create_dir_all(&args.data_dir)
                .map_err(|e| format!("data directory {}: {e}", args.data_dir.display()))?;
            format!("sqlite://{}", args.data_dir.join("pierone.db").display())
        }
    };
    // Name the flag when it was given: the URL alone may not say where it came from.
    let flag = match args.database_url {
        Some(_) => "--database-url",
        None => "metadata database",
    };
    SqlTagStore::open(&db)
        .await
        .map_err(|e| format!("{flag} {}: {e}", shown_url(&db)))
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    init_logging(args.log_format);
    // The AWS SDK and the token-info client bring different rustls crypto providers; choose
    // one for the process, or building a TLS client panics.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pierone-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Scrub(scrub_args)) = args.command.take() {
        return match runtime.block_on(scrub(&args.stores, &scrub_args)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("pierone-server scrub: {e}");
                ExitCode::from(2)
            }
        };
    }
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pierone-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `pierone-server scrub`: 0 when every blob matches its digest, 1 when some do not
/// (quarantined or not), 2 (from `main`) when the scrub could not finish.
async fn scrub(stores: &StoreArgs, args: &ScrubArgs) -> Result<ExitCode, String> {
    let blobs = blob_store(stores).await?;
    let tags = tag_store(stores).await?;
    let options = ScrubOptions {
        quarantine: args.quarantine,
        ..ScrubOptions::default()
    };
    let progress = Progress::new(std::io::stderr().is_terminal());
    let report = pierone_service::scrub::scrub(&*blobs, &tags, &options, &progress)
        .await
        .map_err(|e| e.to_string());
    progress.clear();
    let report = report?;
    let quarantined = report
        .mismatches
        .iter()
        .filter(|m| m.quarantined.is_some())
        .count();
    println!(
        "scrub: {} blobs checked, {} bytes, {} mismatches{}{}",
        report.blobs_checked,
        report.bytes_checked,
        report.mismatches.len(),
        if args.quarantine {
            format!(", {quarantined} quarantined")
        } else {
            String::new()
        },
        if report.blobs_vanished > 0 {
            format!(
                " ({} blobs were deleted while the scrub ran)",
                report.blobs_vanished
            )
        } else {
            String::new()
        }
    );
    if report.clean() {
        Ok(ExitCode::SUCCESS)
    } else {
        if !args.quarantine {
            println!(
                "rerun with --quarantine to take them out of service; the owners can then push the correct bytes again"
            );
        }
        Ok(ExitCode::FAILURE)
    }
}

/// The scrub's findings on stdout as they come, and a one-line progress report on stderr
/// when it is a terminal.
struct Progress {
    tty: bool,
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    total_blobs: u64,
    total_bytes: u64,
    blobs: u64,
    bytes: u64,
    drawn: Option<Instant>,
}

impl Progress {
    fn new(tty: bool) -> Progress {
        Progress {
            tty,
            state: Mutex::new(ProgressState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Redraw, at most ten times a second: a terminal write per chunk would cost more than
    /// the hashing.
    fn draw(&self, force: bool) {
        if !self.tty {
            return;
        }
        let mut st = self.lock();
        if !force
            && st
                .drawn
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        st.drawn = Some(Instant::now());
        let percent = (st.bytes * 100).checked_div(st.total_bytes).unwrap_or(100);
        eprint!(
            "\r\x1b[2Kscrub: {}/{} blobs, {}/{} ({percent}%)",
            st.blobs,
            st.total_blobs,
            human(st.bytes),
            human(st.total_bytes)
        );
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
    }
}

impl ScrubProgress for Progress {
    fn total(&self, blobs: u64, bytes: u64) {
        let mut st = self.lock();
        st.total_blobs = blobs;
        st.total_bytes = bytes;
        drop(st);
        self.draw(true);
    }

    fn bytes(&self, n: u64) {
        self.lock().bytes += n;
        self.draw(false);
    }

    fn blob_done(&self) {
        self.lock().blobs += 1;
        self.draw(false);
    }

    fn mismatch(&self, m: &Mismatch) {
        self.clear();
        println!(
            "MISMATCH {} ({} bytes): the stored bytes hash to {}",
            m.digest, m.size, m.actual
        );
        if m.users.is_empty() {
            println!("  referenced by no manifest");
        }
        for u in &m.users {
            let tags = if u.tags.is_empty() {
                "untagged".to_owned()
            } else {
                format!(
                    "tags {}",
                    u.tags
                        .iter()
                        .map(|t| format!("{}:{t}", u.repository))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            println!("  needed by {}@{} ({tags})", u.repository, u.manifest);
        }
        if let Some(kept) = &m.quarantined {
            println!("  quarantined: moved to {kept}");
        }
        self.draw(true);
    }
}

/// Bytes in binary units, for the progress line.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIERONE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

async fn serve(args: Args) -> Result<(), String> {
    check_metrics_listen(args.listen, args.metrics_listen)?;
    let auth = authorizer(&args)?;
    let blobs = blob_store(&args.stores).await?;
    let tags = tag_store(&args.stores).await?;
    let audit_signer = match &args.audit_signing_key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| format!("audit signing key {}: {e}", path.display()))?;
            let signer = AuditSigner::from_pem(&pem).map_err(|e| match e {
                // Its message starts with "audit signing key" already.
                pierone_protocol::Error::AuditKeyInvalid(why) => {
                    format!("audit signing key {}: {why}", path.display())
                }
                other => format!("audit signing key {}: {other}", path.display()),
            })?;
            tracing::info!(public_key = %signer.public_key(), "audit checkpoints are signed; verifiers pin this key");
            Some(Arc::new(signer))
        }
        None => {
            tracing::warn!(
                "no --audit-signing-key: the audit log is hash-chained but no checkpoints are signed"
            );
            None
        }
    };
    let trust_policy = match &args.trust_policy {
        Some(path) => {
            // The error names the file (or the team and key) and why.
            let file =
                pierone_service::trust::TrustPolicyFile::open(path).map_err(|e| e.to_string())?;
            let policy = file.current();
            tracing::info!(
                path = %path.display(),
                teams = policy.teams().filter(|t| t.signed_tags().next().is_some()).count(),
                "trust policy loaded: protected tags need a signature by one of the team's keys"
            );
            Some(Arc::new(file))
        }
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(pierone_registry::tls::server_config(cert, key).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    for hook in &args.webhooks {
        if !(hook.starts_with("http://") || hook.starts_with("https://")) {
            return Err(format!(
                "--webhook {hook:?}: expected an http:// or https:// URL"
            ));
        }
    }
    if args.idle_timeout.is_zero() || args.max_connections == 0 {
        return Err("--idle-timeout and --max-connections must be above zero".into());
    }
    let config = Config {
        tag_policy: TagPolicy::new(&args.mutable_tag_patterns, args.allow_latest_push),
        max_blob_size: args.max_blob_size,
        upload_ttl: args.upload_ttl,
        auth,
        webhooks: args.webhooks.clone(),
        event_source: args.event_source.clone(),
        audit_signer,
        checkpoint_interval: args.audit_checkpoint_interval,
        trust_policy,
        gc: GcConfig {
            interval: args.gc_interval,
            grace: args.gc_grace,
        },
        max_uploads_per_principal: args.max_uploads_per_principal,
        max_header_bytes: args.max_header_bytes,
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
        metrics_on_main_listener: args.metrics_listen.is_none(),
        ..Config::default()
    };
    let registry = Arc::new(Registry::new(blobs, Arc::new(tags), config));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    // Both listeners are bound before "ready", so a failure of either stops the start-up.
    let ops = match args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (--metrics-listen): {e}"))?,
        ),
        None => None,
    };
    // Tests and scripts read the real address from this line when asked to bind port 0.
    tracing::info!(
        listen = %bound,
        tls = tls.is_some(),
        data_dir = %args.stores.data_dir.display(),
        "pierone-server ready"
    );
    // One signal stops both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(ops) = ops {
        tracing::info!(metrics_listen = %ops.local_addr().map_err(|e| e.to_string())?, "metrics and probes served here");
        let (registry, rx) = (registry.clone(), stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = pierone_registry::run_operations(ops, registry, stopped(rx)).await {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
    }
    match tls {
        Some(tls) => pierone_registry::run_tls(listener, registry, tls, stopped(stop_rx)).await,
        None => pierone_registry::run(listener, registry, stopped(stop_rx)).await,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_take_units() {
        for (given, bytes) in [
            ("0", 0),
            ("1048576", 1 << 20),
            ("64GiB", 64 << 30),
            ("512MiB", 512 << 20),
            ("64KiB", 64 << 10),
            ("2TiB", 2 << 40),
            ("10MB", 10_000_000),
            ("3kB", 3_000),
            ("1GB", 1_000_000_000),
            ("5TB", 5_000_000_000_000),
            ("7B", 7),
            ("64 GiB", 64 << 30),
            (" 64gib ", 64 << 30),
            ("10mb", 10_000_000),
        ] {
            assert_eq!(byte_size(given), Ok(bytes), "{given}");
        }
    }

    #[test]
    fn sizes_that_are_not_say_why() {
        for (given, message) in [
            (
                "",
                " is not a size: give bytes, or a number with a unit such as 512MiB, 64GiB or 10MB",
            ),
            (
                "GiB",
                "GiB is not a size: give bytes, or a number with a unit such as 512MiB, 64GiB or 10MB",
            ),
            (
                "-1",
                "-1 is not a size: give bytes, or a number with a unit such as 512MiB, 64GiB or 10MB",
            ),
            (
                "10G",
                "unknown unit G in 10G: use B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)",
            ),
            (
                "10 XB",
                "unknown unit XB in 10 XB: use B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)",
            ),
            (
                "1.5GiB",
                "1.5GiB: give a whole number, in a smaller unit if need be (1536MiB, not 1.5GiB)",
            ),
            ("16777216TiB", "16777216TiB is too large: at most 16 EiB"),
            (
                "99999999999999999999",
                "99999999999999999999 is too large: at most 16 EiB",
            ),
        ] {
            assert_eq!(byte_size(given), Err(message.to_owned()), "{given:?}");
        }
    }

    #[test]
    fn the_defaults_are_what_readme_says() {
        let args = Args::try_parse_from(["pierone-server"]).unwrap();
        assert_eq!(args.max_blob_size, 64 << 30);
        assert_eq!(args.max_header_bytes, 64 << 10);
        let args = Args::try_parse_from(["pierone-server", "--max-blob-size", "512MiB"]).unwrap();
        assert_eq!(args.max_blob_size, 512 << 20);
    }

    const UNITS: [(&str, u64); 10] = [
        ("", 1),
        ("B", 1),
        ("kB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("TB", 1_000_000_000_000),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
    ];

    proptest! {
        /// Every number with every unit, in any case and spacing, is exactly its bytes, or
        /// refused as too large when it does not fit.
        #[test]
        fn every_size_is_its_bytes(n in any::<u64>(), unit in 0..UNITS.len(), upper in any::<bool>(), space in any::<bool>()) {
            let (name, multiplier) = UNITS[unit];
            let name = if upper { name.to_ascii_uppercase() } else { name.to_owned() };
            let given = format!("{n}{}{name}", if space { " " } else { "" });
            match n.checked_mul(multiplier) {
                Some(bytes) => prop_assert_eq!(byte_size(&given), Ok(bytes)),
                None => prop_assert_eq!(
                    byte_size(&given),
                    Err(format!("{} is too large: at most 16 EiB", given.trim()))
                ),
            }
        }

        /// Any text at all gets an answer, never a panic.
        #[test]
        fn any_text_is_answered(s in ".{0,40}") {
            let _ = byte_size(&s);
        }
    }

    #[test]
    fn the_metrics_address_must_differ_from_listen() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let hint = "give the metrics a port of their own, or leave out --metrics-listen to serve them on --listen";
        assert_eq!(
            check_metrics_listen(a("127.0.0.1:5000"), Some(a("127.0.0.1:5000"))),
            Err(format!(
                "--metrics-listen 127.0.0.1:5000 is the address of --listen: {hint}"
            ))
        );
        assert_eq!(
            check_metrics_listen(a("0.0.0.0:5000"), Some(a("127.0.0.1:5000"))),
            Err(format!(
                "--metrics-listen 127.0.0.1:5000 and --listen 0.0.0.0:5000 overlap (both port 5000): {hint}"
            ))
        );
        assert!(check_metrics_listen(a("[::]:5000"), Some(a("10.0.0.1:5000"))).is_err());
        for ok in [
            ("127.0.0.1:5000", Some("127.0.0.1:9090")),
            ("127.0.0.1:0", Some("127.0.0.1:0")),
            ("127.0.0.1:5000", Some("10.0.0.1:5000")),
            ("0.0.0.0:5000", Some("[::1]:5000")),
            ("127.0.0.1:5000", None),
        ] {
            assert_eq!(check_metrics_listen(a(ok.0), ok.1.map(a)), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn database_urls_are_shown_without_passwords() {
        for (url, shown) in [
            (
                "postgres://pierone:SECRET@db:5432/pierone",
                "postgres://pierone:***@db:5432/pierone",
            ),
            (
                "postgres://pierone@db/pierone?password=SECRET",
                "postgres://pierone@db/pierone",
            ),
            ("mysql://root:p@ss@db/x", "mysql://root:***@db/x"),
            ("postgresql://db/pierone", "postgresql://db/pierone"),
            (
                "sqlite:///var/lib/pierone.db",
                "sqlite:///var/lib/pierone.db",
            ),
            ("/var/lib/pierone.db", "/var/lib/pierone.db"),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
    }
}
