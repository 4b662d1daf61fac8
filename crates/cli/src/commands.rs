//! The `pierone` commands.

use std::io::Write;
use std::ops::ControlFlow;

use clap::{Parser, Subcommand};
use futures_util::TryStreamExt;
use serde_json::Value;
use tokio_util::io::{StreamReader, SyncIoBridge};

use pierone_api::{AuditCheckpoint, AuditLog, AuditProof, ImageMatch, ScmSource, TeamName};
use pierone_protocol::audit::{self, AuditEntry, AuditKind, ChainVerifier, Checkpoint};

use crate::client::{Api, MANIFEST_ACCEPT};
use crate::output::{Cell, Format, print};
use crate::{Error, config, docker, obtain_token};

/// Pier One: list teams, artifacts and tags of a pierone registry, and log Docker in.
#[derive(Debug, Parser)]
#[command(name = "pierone", version, about)]
pub struct Cli {
    /// Registry URL (without a scheme, https is assumed). Defaults to the one saved by
    /// `pierone login` in ~/.config/pierone/pierone.yaml.
    #[arg(long, env = "PIERONE_URL", global = true)]
    url: Option<String>,

    /// OAuth 2.0 access token. Otherwise OAUTH2_ACCESS_TOKENS, $CREDENTIALS_DIR, or the
    /// password grant with OAUTH2_ACCESS_TOKEN_URL are tried.
    #[arg(long, env = "PIERONE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,

    /// Output format of listings.
    #[arg(short = 'o', long, value_enum, default_value = "text", global = true)]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Save the registry URL, check the token, and configure Docker to use
    /// docker-credential-pierone for the registry.
    Login,
    /// List teams that have artifacts.
    Teams {
        /// Show at most this many; 0 shows all.
        #[arg(short = 'l', long)]
        limit: Option<usize>,
    },
    /// List a team's artifacts.
    Artifacts {
        team: String,
        /// Show at most this many; 0 shows all.
        #[arg(short = 'l', long)]
        limit: Option<usize>,
    },
    /// List tags (the newest N per artifact, shown oldest first).
    Tags {
        team: String,
        artifacts: Vec<String>,
        /// Tags per artifact: default 3 without ARTIFACT, 20 with; 0 shows all.
        #[arg(short = 'l', long)]
        limit: Option<usize>,
    },
    /// Print the most recently created tag of an artifact.
    Latest { team: String, artifact: String },
    /// Show where tags were built from.
    ScmSource {
        team: String,
        artifact: String,
        tags: Vec<String>,
    },
    /// Find the tags carrying an image, by a prefix of its config or manifest digest.
    Image {
        prefix: String,
        /// Show at most this many tags; 0 shows all.
        #[arg(short = 'l', long)]
        limit: Option<usize>,
    },
    /// List the files in an image's layers.
    InspectContents {
        team: String,
        artifact: String,
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Check or read the tamper-evident log of tag assignments.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Fetch the whole log and the latest signed checkpoint, and check every entry's hash,
    /// every link of the chain and the checkpoint's signature. Reports the first bad entry.
    Verify {
        /// The registry's Ed25519 public key (base64 or PEM, or a file holding either), as its
        /// operator publishes it (`pierone audit public-key` prints it). Without
        /// it the key the registry presents is used: that still catches edits to the
        /// database, but not a registry that signs a rewritten log with a new key.
        // PEM starts with dashes, which would otherwise be taken for a flag.
        #[arg(long, env = "PIERONE_AUDIT_PUBLIC_KEY", allow_hyphen_values = true)]
        public_key: Option<String>,
        /// Remember what was verified in this file and, next time, check only what came
        /// since: the new entries must extend the remembered head and the new checkpoint must
        /// be signed by the remembered key. Created on the first run.
        #[arg(long)]
        state: Option<std::path::PathBuf>,
    },
    /// Prove that a tag names what the signed log says, without downloading the log: an
    /// inclusion proof of its latest assignment in the newest signed checkpoint.
    Prove {
        team: String,
        artifact: String,
        tag: String,
        /// The registry's Ed25519 public key (base64 or PEM, or a file holding either); without
        /// it, the presented one is used.
        // PEM starts with dashes, which would otherwise be taken for a flag.
        #[arg(long, env = "PIERONE_AUDIT_PUBLIC_KEY", allow_hyphen_values = true)]
        public_key: Option<String>,
        /// When the tag's assignment is not in a signed checkpoint yet (right after a push),
        /// wait for the next checkpoint instead of exiting with code 3.
        #[arg(long)]
        wait: bool,
        /// With --wait, give up (exit code 3) after this many seconds.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Print the public key of the registry's signing key (the PEM file given to
    /// `pierone-server --audit-signing-key`), as base64 and as PEM: what auditors pin with
    /// --public-key. Needs no registry.
    PublicKey {
        /// The Ed25519 private key (PKCS#8 PEM), or a public key PEM.
        #[arg(long, value_name = "FILE")]
        key: std::path::PathBuf,
    },
    /// Every assignment of one tag, oldest first: when, by whom, to which digest; and every
    /// quarantine of a blob it needs (kind `quarantine`, digest the blob's).
    History {
        team: String,
        artifact: String,
        tag: String,
    },
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn not_json(e: serde_json::Error) -> Error {
    Error::Unexpected {
        status: 200,
        body: format!("unexpected JSON: {e}"),
    }
}

/// Page through `/audit/log` after entry `since` (or only `filter`'s entries), handing each
/// page to `each`.
async fn audit_pages(
    api: &Api,
    since: u64,
    filter: &str,
    mut each: impl FnMut(Vec<AuditEntry>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut since = since;
    loop {
        let page: AuditLog<AuditEntry> = api
            .json(
                &format!("/audit/log?since={since}&limit=10000{filter}"),
                "audit log",
            )
            .await?;
        let entries = page.entries;
        let Some(last) = entries.last() else {
            return Ok(());
        };
        since = last.seq;
        each(entries)?;
    }
}

/// A `--public-key` as base64, whether it was given as base64, as PEM, or as a file holding
/// either: the form the registry presents, compared and remembered (`--state`) as such.
fn pinned_key(arg: Option<String>) -> Result<Option<String>, Error> {
    let Some(arg) = arg else { return Ok(None) };
    let path = std::path::Path::new(&arg);
    // Base64 has no line breaks and PEM has them, so neither is taken for a file name.
    let text = if !arg.contains('\n') && path.is_file() {
        std::fs::read_to_string(path).map_err(|e| state_error(path, e))?
    } else {
        arg
    };
    let raw = audit::decode_public_key(&text).map_err(|e| Error::Usage(e.to_string()))?;
    Ok(Some(audit::encode_public_key(&raw)))
}

/// `pierone audit public-key --key FILE`.
fn print_public_key(path: &std::path::Path, fmt: Format, out: &mut dyn Write) -> Result<(), Error> {
    let pem = std::fs::read_to_string(path).map_err(|e| state_error(path, e))?;
    let b64 = match audit::AuditSigner::from_pem(&pem) {
        Ok(signer) => signer.public_key(),
        // Or the public half already: printed in the other form.
        Err(private) => audit::decode_public_key(&pem)
            .map(|raw| audit::encode_public_key(&raw))
            .map_err(|_| state_error(path, private))?,
    };
    let raw = audit::decode_public_key(&b64).map_err(|e| state_error(path, e))?;
    let public_pem = audit::public_key_pem(&raw);
    show(
        out,
        fmt,
        &format!("{b64}\n{public_pem}"),
        &serde_json::json!({"public_key": b64, "pem": public_pem}),
    )
}

/// `report` as it is, or `object` as JSON with `-o json`.
fn show(out: &mut dyn Write, fmt: Format, report: &str, object: &Value) -> Result<(), Error> {
    match fmt {
        Format::Json => {
            let body = serde_json::to_string_pretty(object).map_err(not_json)?;
            writeln!(out, "{body}")
        }
        Format::Text | Format::Tsv => write!(out, "{report}"),
    }
    .map_err(io)
}

fn state_error(path: &std::path::Path, why: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

async fn verify(
    api: &Api,
    public_key: Option<String>,
    state: Option<&std::path::Path>,
    fmt: Format,
    out: &mut dyn Write,
) -> Result<(), Error> {
    // What was verified last time: the checkpoint itself (size, head, root, frontier, key).
    // The remembered checkpoint, and the verifier resumed from it.
    let (trusted, mut v): (Option<Checkpoint>, ChainVerifier) = match state {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => {
                let cp: Checkpoint =
                    serde_json::from_slice(&bytes).map_err(|e| state_error(path, e))?;
                let v = ChainVerifier::resume(&cp).map_err(|e| state_error(path, e))?;
                (Some(cp), v)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, ChainVerifier::new()),
            Err(e) => return Err(state_error(path, e)),
        },
        None => (None, ChainVerifier::new()),
    };
    // A key given now wins; else the one remembered; else the one the registry presents.
    let pinned = public_key.or_else(|| trusted.as_ref().map(|t| t.public_key.clone()));
    let checkpoint: Option<Checkpoint> = match api
        .json("/audit/checkpoint", "a signed audit checkpoint")
        .await
    {
        Ok(cp) => Some(cp),
        Err(Error::NotFound(_)) if pinned.is_none() && state.is_none() => None,
        Err(e) => return Err(e),
    };
    let key_b64 = pinned
        .clone()
        .or_else(|| checkpoint.as_ref().map(|cp| cp.public_key.clone()));
    let key = key_b64
        .as_deref()
        .map(audit::decode_public_key)
        .transpose()
        .map_err(|e| Error::Usage(e.to_string()))?;
    let failed = |e: pierone_protocol::Error| Error::AuditFailed(e.to_string());
    let start = v.head().0;
    if let Some(cp) = &checkpoint {
        if cp.size < start {
            return Err(Error::AuditFailed(format!(
                "the registry's newest checkpoint covers {} entries, but {start} were verified before: the log shrank",
                cp.size
            )));
        }
        v.watch(cp.size);
    }
    audit_pages(api, start, "", |entries| {
        entries.iter().try_for_each(|e| v.push(e)).map_err(failed)
    })
    .await?;
    let (size, head) = v.head();
    let head = head.to_owned();
    let checked = size - start;
    let mut report = if start > 0 {
        format!(
            "{checked} new entries verified: they extend the {start} verified before; head {head}\n"
        )
    } else {
        format!("{size} entries verified: every hash and every link is intact; head {head}\n")
    };
    // A script reads what was checked from one object, the checkpoint as the API has it.
    let json = |cp: Option<&Checkpoint>| {
        serde_json::json!({
            "size": size,
            "head": head,
            "verified_before": start,
            "checkpoint": cp,
            "key_pinned": pinned.is_some(),
        })
    };
    let (Some(cp), Some(key)) = (&checkpoint, &key) else {
        report.push_str(
            "no signed checkpoint: the chain is consistent, but a rewrite of the whole log would not be detected\n",
        );
        return show(out, fmt, &report, &json(None));
    };
    v.check_checkpoint(cp, key).map_err(failed)?;
    report.push_str(&format!(
        "checkpoint of {} entries signed {} by {}{}: signature valid, matches the log\n",
        cp.size,
        rfc3339(cp.at),
        cp.public_key,
        if pinned.is_some() {
            ""
        } else {
            " (the key the registry presents; pin it with --public-key or --state)"
        }
    ));
    show(out, fmt, &report, &json(Some(cp)))?;
    if let Some(path) = state {
        let mut remembered = cp.clone();
        // Pin the key that verified it, even if the registry presented another.
        remembered.public_key = key_b64.unwrap_or_default();
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(&remembered).map_err(not_json)?;
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| state_error(path, e))?;
    }
    Ok(())
}

/// Seconds until the server's next checkpoint, by its interval counted from the newest one's
/// `at` (a server signs only when the log grew, so whole intervals may have passed since).
fn next_checkpoint_in(at_ms: i64, interval_ms: u64, now_ms: i64) -> u64 {
    let elapsed = u64::try_from(now_ms.saturating_sub(at_ms)).unwrap_or(0);
    let left = interval_ms.max(1) - elapsed % interval_ms.max(1);
    left.div_ceil(1000)
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

/// The newest signed checkpoint if it covers entry `seq`; else, with `wait`, the first one
/// that does, polling once a second for at most `wait`'s duration.
async fn checkpoint_covering(
    api: &Api,
    seq: u64,
    wait: Option<std::time::Duration>,
    what: &str,
) -> Result<Checkpoint, Error> {
    let started = std::time::Instant::now();
    loop {
        let newest: Option<AuditCheckpoint<Checkpoint>> = match api
            .json("/audit/checkpoint", "a signed audit checkpoint")
            .await
        {
            Ok(cp) => Some(cp),
            // A server that signs has signed one at start-up; one that does not never will.
            Err(Error::NotFound(_)) if wait.is_some() => None,
            Err(e) => return Err(e),
        };
        let next = match newest {
            Some(a) if a.checkpoint.size >= seq => return Ok(a.checkpoint),
            Some(a) => a
                .interval_ms
                .map(|i| next_checkpoint_in(a.checkpoint.at, i, now_ms())),
            None => None,
        };
        let left = wait.and_then(|w| w.checked_sub(started.elapsed()));
        match left {
            Some(left) if !left.is_zero() => {
                tokio::time::sleep(left.min(std::time::Duration::from_secs(1))).await;
            }
            _ => {
                let when = match next {
                    Some(n) => format!("next checkpoint within {n} s"),
                    None => "the registry does not say when it signs the next one".to_owned(),
                };
                return Err(Error::NotCheckpointed(match wait {
                    Some(w) => format!(
                        "{what} (audit log entry {seq}) is not checkpointed yet after waiting {} s ({when})",
                        w.as_secs()
                    ),
                    None => format!(
                        "{what} (audit log entry {seq}) is not checkpointed yet ({when}); run again then, or with --wait"
                    ),
                }));
            }
        }
    }
}

/// Prove that `team/artifact:tag` names what the signed log says: find its latest
/// assignment, fetch an inclusion proof into the newest checkpoint, and check the proof, the
/// signature and the tag's current digest.
#[allow(clippy::too_many_arguments)]
async fn prove(
    api: &Api,
    public_key: Option<String>,
    wait: Option<std::time::Duration>,
    team: &str,
    artifact: &str,
    tag: &str,
    fmt: Format,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let failed = |e: pierone_protocol::Error| Error::AuditFailed(e.to_string());
    let mut latest = None;
    audit_pages(
        api,
        0,
        &format!("&repository={team}/{artifact}&tag={tag}"),
        |entries| {
            // A quarantine of a blob the tag needs is logged under the tag too; what the tag
            // names is its last assignment.
            latest = entries
                .into_iter()
                .rfind(|e| e.kind == AuditKind::Tag)
                .or(latest.take());
            Ok(())
        },
    )
    .await?;
    let entry = latest
        .ok_or_else(|| Error::NotFound(format!("{team}/{artifact}:{tag} in the audit log")))?;
    let cp = checkpoint_covering(api, entry.seq, wait, &format!("{team}/{artifact}:{tag}")).await?;
    let key = audit::decode_public_key(public_key.as_deref().unwrap_or(&cp.public_key))
        .map_err(|e| Error::Usage(e.to_string()))?;
    cp.verify_signature(&key).map_err(failed)?;
    let proof: AuditProof<AuditEntry> = api
        .json(
            &format!("/audit/proof?seq={}&size={}", entry.seq, cp.size),
            "an inclusion proof",
        )
        .await?;
    let proof = audit::InclusionProof {
        seq: proof.seq,
        size: proof.size,
        path: proof.path,
    };
    audit::verify_inclusion(&entry, &proof, &cp.root).map_err(failed)?;
    let current: pierone_api::Tag = api
        .json(
            &format!("/teams/{team}/artifacts/{}/tags/{tag}", enc(artifact)),
            &format!("tag {team}/{artifact}:{tag}"),
        )
        .await?;
    if current.digest != entry.digest {
        return Err(Error::AuditFailed(format!(
            "{team}/{artifact}:{tag} names {} but its last logged assignment is {}",
            current.digest, entry.digest
        )));
    }
    let report = format!(
        "{team}/{artifact}:{tag} = {}\nassigned {} by {} (entry {}), included in the log of {} entries signed {} by {}: inclusion proof of {} hashes valid{}\n",
        entry.digest,
        rfc3339(entry.at),
        entry.principal,
        entry.seq,
        cp.size,
        rfc3339(cp.at),
        cp.public_key,
        proof.path.len(),
        if public_key.is_some() {
            ""
        } else {
            " (the key the registry presents; pin it with --public-key)"
        }
    );
    // The entry, checkpoint and proof as the API answers them.
    let object = serde_json::json!({
        "repository": format!("{team}/{artifact}"),
        "tag": tag,
        "digest": entry.digest,
        "entry": entry,
        "checkpoint": cp,
        "proof": {"seq": proof.seq, "size": proof.size, "path": proof.path},
        "key_pinned": public_key.is_some(),
    });
    show(out, fmt, &report, &object)
}

async fn audit(
    api: &Api,
    command: AuditCommand,
    fmt: Format,
    out: &mut dyn Write,
) -> Result<(), Error> {
    match command {
        AuditCommand::Verify { public_key, state } => {
            let public_key = pinned_key(public_key)?;
            verify(api, public_key, state.as_deref(), fmt, out).await
        }
        AuditCommand::PublicKey { key } => print_public_key(&key, fmt, out),
        AuditCommand::Prove {
            public_key,
            wait,
            timeout,
            team,
            artifact,
            tag,
        } => {
            let wait = wait.then(|| std::time::Duration::from_secs(timeout));
            let public_key = pinned_key(public_key)?;
            prove(api, public_key, wait, &team, &artifact, &tag, fmt, out).await
        }
        AuditCommand::History {
            team,
            artifact,
            tag,
        } => {
            let filter = format!("&repository={team}/{artifact}&tag={tag}");
            let mut rows = Vec::new();
            audit_pages(api, 0, &filter, |entries| {
                for e in entries {
                    rows.push(vec![
                        Cell::Number(e.seq),
                        Cell::Time(rfc3339(e.at)),
                        text(e.kind.as_str()),
                        text(e.digest),
                        text(e.previous_digest.unwrap_or_default()),
                        text(e.principal),
                        text(e.realm),
                    ]);
                }
                Ok(())
            })
            .await?;
            if rows.is_empty() {
                return Err(Error::NotFound(format!(
                    "history of {team}/{artifact}:{tag}"
                )));
            }
            print(
                out,
                fmt,
                &[
                    "seq",
                    "at",
                    "kind",
                    "digest",
                    "previous_digest",
                    "principal",
                    "realm",
                ],
                &rows,
            )
            .map_err(io)
        }
    }
}

fn text(s: impl Into<String>) -> Cell {
    Cell::Text(s.into())
}

fn str_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

fn enc(s: &str) -> String {
    // Nested artifacts are one path segment in the API.
    s.replace('/', "%2F")
}

fn io(e: std::io::Error) -> Error {
    Error::Usage(format!("cannot write output: {e}"))
}

/// Run a parsed command line, writing results to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    // Reads a local file only: no registry URL or token is needed.
    if let Command::Audit {
        command: AuditCommand::PublicKey { key },
    } = &cli.command
    {
        return print_public_key(key, cli.output, out);
    }
    let url = config::resolve_url(cli.url.as_deref())?;
    let token = match (&cli.command, obtain_token(cli.token.as_deref()).await) {
        (_, Ok((t, _))) => Some(t),
        // Login needs a token; listings try without one (the registry may allow public
        // reads) and report a 401 clearly if not.
        (Command::Login, Err(e)) => return Err(e),
        (_, Err(Error::NoToken(_))) => None,
        (_, Err(e)) => return Err(e),
    };
    let api = Api::new(&url, token)?;
    let fmt = cli.output;
    match cli.command {
        Command::Login => {
            api.get("/v2/", None, "the registry").await?;
            if cli.url.is_some() {
                config::save_url(&url)?;
            }
            let host = url.split("://").nth(1).unwrap_or(&url).to_owned();
            let path = docker::docker_config_path()
                .ok_or_else(|| Error::Usage("cannot find the home directory".into()))?;
            docker::register_helper(&path, &host)?;
            writeln!(
                out,
                "Logged in to {url}. Docker uses docker-credential-pierone for {host} ({}).",
                path.display()
            )
            .map_err(io)
        }
        Command::Teams { limit } => {
            let teams: Vec<TeamName> = api.list("/teams", "teams", limit).await?;
            let rows: Vec<Vec<Cell>> = teams.into_iter().map(|t| vec![text(t)]).collect();
            print(out, fmt, &["name"], &rows).map_err(io)
        }
        Command::Artifacts { team, limit } => {
            let rows: Vec<Vec<Cell>> = team_artifacts(&api, &team, limit)
                .await?
                .into_iter()
                .map(|a| vec![text(&team), text(a)])
                .collect();
            print(out, fmt, &["team", "artifact"], &rows).map_err(io)
        }
        Command::Tags {
            team,
            artifacts,
            limit,
        } => {
            let limit = limit.unwrap_or(if artifacts.is_empty() { 3 } else { 20 });
            let artifacts = if artifacts.is_empty() {
                team_artifacts(&api, &team, None).await?
            } else {
                artifacts
            };
            let mut rows = Vec::new();
            for artifact in artifacts {
                let tags = artifact_tags(&api, &team, &artifact).await?;
                let skip = if limit == 0 {
                    0
                } else {
                    tags.len().saturating_sub(limit)
                };
                for t in tags.into_iter().skip(skip) {
                    rows.push(vec![
                        text(&team),
                        text(&artifact),
                        text(t.name),
                        Cell::Time(t.created.as_str().to_owned()),
                        text(t.created_by),
                        text(t.digest),
                    ]);
                }
            }
            // The API's field names, so that `-o json` reads like the API.
            print(
                out,
                fmt,
                &[
                    "team",
                    "artifact",
                    "name",
                    "created",
                    "created_by",
                    "digest",
                ],
                &rows,
            )
            .map_err(io)
        }
        Command::Latest { team, artifact } => {
            let t: pierone_api::Tag = api
                .json(
                    &format!("/teams/{team}/artifacts/{}/latest", enc(&artifact)),
                    &format!("artifact {team}/{artifact}"),
                )
                .await?;
            // The API's own object, so that a script reads the same fields from either.
            let shown = match fmt {
                Format::Json => serde_json::to_string_pretty(&t).map_err(not_json)?,
                Format::Text | Format::Tsv => t.name,
            };
            writeln!(out, "{shown}").map_err(io)
        }
        Command::ScmSource {
            team,
            artifact,
            tags,
        } => {
            let tags = if tags.is_empty() {
                artifact_tags(&api, &team, &artifact)
                    .await?
                    .into_iter()
                    .map(|t| t.name)
                    .collect()
            } else {
                tags
            };
            let mut rows = Vec::new();
            for tag in tags {
                let path = format!(
                    "/teams/{team}/artifacts/{}/tags/{tag}/scm-source",
                    enc(&artifact)
                );
                match api
                    .json::<ScmSource>(&path, &format!("scm-source of {team}/{artifact}:{tag}"))
                    .await
                {
                    Ok(s) => rows.push(vec![
                        text(&team),
                        text(&artifact),
                        text(&tag),
                        text(s.url),
                        text(s.revision),
                        text(s.author),
                        text(s.status),
                    ]),
                    Err(Error::NotFound(_)) => rows.push(vec![
                        text(&team),
                        text(&artifact),
                        text(&tag),
                        text(""),
                        text(""),
                        text(""),
                        text("unknown"),
                    ]),
                    Err(e) => return Err(e),
                }
            }
            print(
                out,
                fmt,
                &[
                    "team", "artifact", "tag", "url", "revision", "author", "status",
                ],
                &rows,
            )
            .map_err(io)
        }
        Command::Audit { command } => audit(&api, command, fmt, out).await,
        Command::Image { prefix, limit } => {
            // An ambiguous prefix is refused with the candidates in the registry's message,
            // which is passed on as it is.
            let found: Vec<ImageMatch> = api
                .list(
                    &format!("/tags/{prefix}"),
                    &format!("image {prefix}"),
                    limit,
                )
                .await?;
            let rows: Vec<Vec<Cell>> = found
                .into_iter()
                .map(|m| vec![text(m.team), text(m.artifact), text(m.name)])
                .collect();
            print(out, fmt, &["team", "artifact", "name"], &rows).map_err(io)
        }
        Command::InspectContents {
            team,
            artifact,
            tags,
        } => {
            let mut rows = Vec::new();
            for tag in tags {
                for (layer, path) in layer_files(&api, &team, &artifact, &tag).await? {
                    rows.push(vec![text(&tag), text(layer), text(path)]);
                }
            }
            print(out, fmt, &["tag", "layer", "path"], &rows).map_err(io)
        }
    }
}

/// The artifacts of `team` (the first `limit`).
async fn team_artifacts(
    api: &Api,
    team: &str,
    limit: Option<usize>,
) -> Result<Vec<pierone_api::ArtifactName>, Error> {
    api.list(
        &format!("/teams/{team}/artifacts"),
        &format!("team {team}"),
        limit,
    )
    .await
}

/// Every tag of `team/artifact`, oldest first.
async fn artifact_tags(
    api: &Api,
    team: &str,
    artifact: &str,
) -> Result<Vec<pierone_api::Tag>, Error> {
    api.list(
        &format!("/teams/{team}/artifacts/{}/tags", enc(artifact)),
        &format!("artifact {team}/{artifact}"),
        None,
    )
    .await
}

/// Every file path in the layers of `team/artifact:tag` (the linux/amd64 image of an index),
/// streamed: layers are never held in memory.
async fn layer_files(
    api: &Api,
    team: &str,
    artifact: &str,
    tag: &str,
) -> Result<Vec<(String, String)>, Error> {
    let repo = format!("{team}/{artifact}");
    let what = format!("{repo}:{tag}");
    let manifest = |reference: String| {
        let (repo, what) = (&repo, &what);
        async move {
            api.get(
                &format!("/v2/{repo}/manifests/{reference}"),
                Some(MANIFEST_ACCEPT),
                what,
            )
            .await?
            .json::<Value>()
            .await
            .map_err(|e| Error::Unexpected {
                status: 200,
                body: e.to_string(),
            })
        }
    };
    let mut image = manifest(tag.to_owned()).await?;
    if let Some(children) = image["manifests"].as_array() {
        let pick = children
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
            .or(children.first())
            .ok_or_else(|| Error::NotFound(format!("an image in {what}")))?;
        image = manifest(str_of(pick, "digest")).await?;
    }
    let mut files = Vec::new();
    for layer in image["layers"].as_array().into_iter().flatten() {
        let digest = str_of(layer, "digest");
        let resp = api
            .get(
                &format!("/v2/{repo}/blobs/{digest}"),
                None,
                &format!("layer {digest}"),
            )
            .await?;
        let reader = SyncIoBridge::new(StreamReader::new(
            resp.bytes_stream().map_err(std::io::Error::other),
        ));
        let paths = tokio::task::spawn_blocking(move || {
            let mut paths = Vec::new();
            let r = pierone_protocol::walk_layer(reader, |p, _| {
                paths.push(p.display().to_string());
                ControlFlow::<()>::Continue(())
            });
            r.map(|_| paths)
        })
        .await
        .map_err(|e| Error::Usage(e.to_string()))?
        .map_err(|e| Error::Unexpected {
            status: 200,
            body: format!("layer {digest} is not a tar archive: {e}"),
        })?;
        files.extend(paths.into_iter().map(|p| (digest.clone(), p)));
    }
    Ok(files)
}
