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
use crate::output::{Cell, Format, in_context, print, print_items};
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
    /// Obtain a token from the first source set up, check it against the registry, store it
    /// (owner-only) for later commands, save the registry URL, and configure Docker to use
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
        /// The team.
        team: String,
        /// Show at most this many; 0 shows all.
        #[arg(short = 'l', long)]
        limit: Option<usize>,
    },
    /// List tags (the newest N per artifact, shown oldest first).
    Tags {
        /// The team.
        team: String,
        /// Artifacts of the team; all of them when none is given.
        artifacts: Vec<String>,
        /// Tags per artifact: default 3 without ARTIFACT, 20 with; 0 shows all.
        #[arg(short = 'l', long)]
        limit: Option<usize>,
    },
    /// Print the most recently created tag of an artifact.
    Latest {
        /// The team.
        team: String,
        /// The artifact.
        artifact: String,
    },
    /// Show where tags were built from.
    ScmSource {
        /// The team.
        team: String,
        /// The artifact.
        artifact: String,
        /// Tags of the artifact; all of them when none is given.
        tags: Vec<String>,
    },
    /// Find the tags carrying an image, by a prefix of its config or manifest digest.
    Image {
        /// A config digest (the image id `docker images` shows) or manifest digest, whole or a
        /// prefix, with or without `sha256:`.
        prefix: String,
        /// Show at most this many tags; 0 shows all.
        #[arg(short = 'l', long)]
        limit: Option<usize>,
    },
    /// List the files in an image's layers. For a multi-platform image (an image index), the
    /// image of --platform, by default the host's platform.
    InspectContents {
        /// The team.
        team: String,
        /// The artifact.
        artifact: String,
        /// Tags of the artifact.
        #[arg(required = true)]
        tags: Vec<String>,
        /// Which image of an image index: os/architecture[/variant], as in linux/arm64/v8.
        /// An image that is not an index must be of this platform.
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<Platform>,
    },
    /// Check or read the tamper-evident log of tag assignments.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a shell completion script on standard output, e.g.
    /// `pierone completions bash > /etc/bash_completion.d/pierone`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages of pierone and every subcommand (pierone.1,
    /// pierone-audit-verify.1, ...) into a directory, and list the files written.
    Man {
        /// The directory, created if it does not exist (e.g. /usr/local/share/man/man1).
        dir: std::path::PathBuf,
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
        /// The team.
        team: String,
        /// The artifact.
        artifact: String,
        /// The tag.
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
        /// The team.
        team: String,
        /// The artifact.
        artifact: String,
        /// The tag.
        tag: String,
    },
}

/// Milliseconds since the epoch, as the audit endpoints send them, in RFC 3339 like every
/// other time the CLI prints.
fn rfc3339(ms: i64) -> String {
    pierone_api::Timestamp::from_millis(ms).to_string()
}

/// `value` (an audit entry or checkpoint as the API sends it) as the CLI prints it: `at` in
/// RFC 3339 instead of epoch milliseconds, and an entry's `kind` always present.
fn audit_json(value: &impl serde::Serialize) -> Value {
    let mut v = serde_json::to_value(value).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        if let Some(at) = m.get("at").and_then(Value::as_i64) {
            m.insert("at".into(), Value::String(rfc3339(at)));
        }
        if m.contains_key("prev_hash") && !m.contains_key("kind") {
            // Omitted on the wire for tag assignments, whose encoding predates kinds.
            m.insert("kind".into(), Value::String(AuditKind::Tag.as_str().into()));
        }
    }
    v
}

/// An OS/architecture\[/variant\] pair, as in an image index's `platform`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty();
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: Some((*variant).to_owned()),
            }),
            _ => Err(format!(
                "{s:?} is not os/architecture[/variant], such as linux/amd64 or linux/arm/v7"
            )),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// The platform of an index entry's or image config's JSON (`os`, `architecture`,
    /// `variant`).
    fn of(v: &Value) -> Option<Platform> {
        let os = v["os"].as_str().filter(|s| !s.is_empty())?;
        let architecture = v["architecture"].as_str().filter(|s| !s.is_empty())?;
        Some(Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: v["variant"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        })
    }

    /// Whether an image of `other` is what was asked for: a request without a variant takes
    /// any variant, and arm64's only variant `v8` may be left out on either side.
    fn accepts(&self, other: &Platform) -> bool {
        let variant = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_owned),
        };
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || variant(self) == variant(other))
    }

    /// The platform this program runs on, in the OCI (Go) names.
    fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }
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
            "checkpoint": cp.map(audit_json),
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
        "entry": audit_json(&entry),
        "checkpoint": audit_json(&cp),
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
            let mut items = Vec::new();
            audit_pages(api, 0, &filter, |entries| {
                for e in entries {
                    items.push(audit_json(&e));
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
            print_items(
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
                items,
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
///
/// ```
/// use clap::Parser;
///
/// let cli = pierone_cli::Cli::parse_from(["pierone", "completions", "bash"]);
/// let mut out = Vec::new();
/// tokio::runtime::Runtime::new()
///     .unwrap()
///     .block_on(pierone_cli::run(cli, &mut out))
///     .unwrap();
/// let script = String::from_utf8(out).unwrap();
/// assert!(script.contains("pierone") && script.contains("inspect-contents"));
/// ```
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    // Commands that need no registry URL or token.
    match &cli.command {
        Command::Audit {
            command: AuditCommand::PublicKey { key },
        } => return print_public_key(key, cli.output, out),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "pierone", out);
            return Ok(());
        }
        Command::Man { dir } => return write_man_pages(dir, cli.output, out),
        _ => {}
    }
    let url = config::resolve_url(cli.url.as_deref())?;
    let host = url.split("://").nth(1).unwrap_or(&url).to_owned();
    let fmt = cli.output;
    if let Command::Login = cli.command {
        return login(
            &url,
            &host,
            cli.url.is_some(),
            cli.token.as_deref(),
            fmt,
            out,
        )
        .await;
    }
    let token = match obtain_token(cli.token.as_deref(), Some(host.as_str())).await {
        Ok(t) => Some(t),
        // No source is set up: listings try without a token (the registry may allow public
        // reads) and a 401 says what to set up. A source that is set up and fails is
        // reported as such, never silently replaced by no token.
        Err(Error::NoToken(_)) => None,
        Err(e) => return Err(e),
    };
    let api = Api::new(&url, token)?;
    match cli.command {
        Command::Login | Command::Completions { .. } | Command::Man { .. } => Ok(()),
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
            let mut items = Vec::new();
            for artifact in artifacts {
                let tags = artifact_tags(&api, &team, &artifact).await?;
                let skip = if limit == 0 {
                    0
                } else {
                    tags.len().saturating_sub(limit)
                };
                for t in tags.into_iter().skip(skip) {
                    items.push(in_context(
                        &[("team", team.as_str()), ("artifact", artifact.as_str())],
                        &t,
                    ));
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
            // The API's field names, so that every format reads like the API.
            print_items(
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
                items,
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
            let mut items = Vec::new();
            for tag in tags {
                let path = format!(
                    "/teams/{team}/artifacts/{}/tags/{tag}/scm-source",
                    enc(&artifact)
                );
                let context = [
                    ("team", team.as_str()),
                    ("artifact", artifact.as_str()),
                    ("tag", tag.as_str()),
                ];
                match api
                    .json::<ScmSource>(&path, &format!("scm-source of {team}/{artifact}:{tag}"))
                    .await
                {
                    Ok(s) => {
                        items.push(in_context(&context, &s));
                        rows.push(vec![
                            text(&team),
                            text(&artifact),
                            text(&tag),
                            text(s.url),
                            text(s.revision),
                            text(s.author),
                            text(s.status),
                        ]);
                    }
                    Err(Error::NotFound(_)) => {
                        // The API's fields, empty, so that every element has the same shape.
                        items.push(in_context(
                            &context,
                            &serde_json::json!({
                                "url": null, "revision": null, "author": null,
                                "status": "unknown", "created": null,
                            }),
                        ));
                        rows.push(vec![
                            text(&team),
                            text(&artifact),
                            text(&tag),
                            text(""),
                            text(""),
                            text(""),
                            text("unknown"),
                        ]);
                    }
                    Err(e) => return Err(e),
                }
            }
            print_items(
                out,
                fmt,
                &[
                    "team", "artifact", "tag", "url", "revision", "author", "status",
                ],
                &rows,
                items,
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
            let items = found.iter().map(|m| in_context(&[], m)).collect();
            let rows: Vec<Vec<Cell>> = found
                .into_iter()
                .map(|m| vec![text(m.team), text(m.artifact), text(m.name)])
                .collect();
            print_items(out, fmt, &["team", "artifact", "name"], &rows, items).map_err(io)
        }
        Command::InspectContents {
            team,
            artifact,
            tags,
            platform,
        } => {
            let mut rows = Vec::new();
            let mut items = Vec::new();
            for tag in tags {
                let (chosen, files) =
                    layer_files(&api, &team, &artifact, &tag, platform.as_ref()).await?;
                let shown = chosen.to_string();
                for (layer, path) in files {
                    items.push(serde_json::json!({
                        "tag": tag, "platform": shown, "layer": layer, "path": path,
                    }));
                    rows.push(vec![text(&tag), text(&shown), text(layer), text(path)]);
                }
            }
            print_items(
                out,
                fmt,
                &["tag", "platform", "layer", "path"],
                &rows,
                items,
            )
            .map_err(io)
        }
    }
}

/// `pierone login`: a token from the first source set up, checked against the registry and
/// stored for later commands; the URL saved; Docker pointed at the credential helper.
/// Nothing is written unless the registry accepts the token.
async fn login(
    url: &str,
    host: &str,
    save_url: bool,
    explicit: Option<&str>,
    fmt: Format,
    out: &mut dyn Write,
) -> Result<(), Error> {
    // The token stored by an earlier login is not a source here: it is what gets replaced.
    let token = match obtain_token(explicit, None).await {
        Ok(t) => t,
        Err(Error::NoToken(why)) => {
            return Err(Error::NoToken(format!(
                "nothing to log in with: {why}; then run `pierone login` again"
            )));
        }
        Err(e) => return Err(e),
    };
    let source = token.source.to_string();
    let api = Api::new(url, Some(token.clone()))?;
    api.get("/v2/", None, "the registry").await?;
    let cache = crate::token::store_login_token(host, &token)?;
    if save_url {
        config::save_url(url)?;
    }
    let path = docker::docker_config_path()
        .ok_or_else(|| Error::Usage("cannot find the home directory".into()))?;
    docker::register_helper(&path, host)?;
    let helper_found = on_path(HELPER);
    if !helper_found {
        eprintln!(
            "pierone: warning: {HELPER} is not on PATH: Docker cannot get tokens for {host} \
             until it is (it is installed next to pierone)"
        );
    }
    let expires = token
        .expires_at
        .and_then(|s| i64::try_from(s).ok())
        .map(|s| rfc3339(s.saturating_mul(1000)));
    let report = format!(
        "Logged in to {url} with {source}.\nStored the token in {} (owner-only) for later \
         commands{}.\nDocker uses {HELPER} for {host} ({}).\n",
        cache.display(),
        expires
            .as_deref()
            .map_or(String::new(), |e| format!(", until {e}")),
        path.display()
    );
    show(
        out,
        fmt,
        &report,
        &serde_json::json!({
            "url": url,
            "token_source": source,
            "token_cache": cache.display().to_string(),
            "token_expires": expires,
            "docker_config": path.display().to_string(),
            "credential_helper_on_path": helper_found,
        }),
    )
}

const HELPER: &str = "docker-credential-pierone";

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `pierone man DIR`: a page for pierone and one for each subcommand, at any depth.
fn write_man_pages(dir: &std::path::Path, fmt: Format, out: &mut dyn Write) -> Result<(), Error> {
    fn pages(
        cmd: clap::Command,
        dir: &std::path::Path,
        written: &mut Vec<std::path::PathBuf>,
    ) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub.clone(), dir, written)?;
        }
        let man = clap_mangen::Man::new(cmd)
            .source(format!("pierone {}", env!("CARGO_PKG_VERSION")))
            .manual("pierone");
        written.push(man.generate_to(dir)?);
        Ok(())
    }
    std::fs::create_dir_all(dir).map_err(|e| state_error(dir, e))?;
    let mut cmd = <Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
    // Built once, so that each subcommand carries its full name (pierone-audit-verify).
    cmd.build();
    let mut written = Vec::new();
    pages(cmd, dir, &mut written).map_err(|e| state_error(dir, e))?;
    written.sort();
    let shown: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    let rows: Vec<Vec<Cell>> = shown.iter().map(|p| vec![text(p)]).collect();
    let items = shown
        .iter()
        .map(|p| serde_json::json!({"path": p}))
        .collect();
    print_items(out, fmt, &["path"], &rows, items).map_err(io)
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

/// The platform chosen and every file path in the layers of `team/artifact:tag`, streamed:
/// layers are never held in memory. Of an image index, the image of `wanted`, else of the
/// host's platform (said on standard error); never some other one silently.
async fn layer_files(
    api: &Api,
    team: &str,
    artifact: &str,
    tag: &str,
    wanted: Option<&Platform>,
) -> Result<(Platform, Vec<(String, String)>), Error> {
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
    let chosen = if let Some(children) = image["manifests"].as_array() {
        // Attestations and other artifacts in an index have no platform, or "unknown".
        let images: Vec<(Platform, &Value)> = children
            .iter()
            .filter_map(|m| Platform::of(&m["platform"]).map(|p| (p, m)))
            .filter(|(p, _)| p.os != "unknown")
            .collect();
        let listed = || {
            let all: Vec<String> = images.iter().map(|(p, _)| p.to_string()).collect();
            if all.is_empty() {
                "none".to_owned()
            } else {
                all.join(", ")
            }
        };
        let (want, by_default) = match wanted {
            Some(p) => (p.clone(), false),
            None => (Platform::host(), true),
        };
        let Some((platform, pick)) = images.iter().find(|(p, _)| want.accepts(p)) else {
            return Err(Error::Usage(format!(
                "the image index {what} has no image for {want}{} (it has: {}); choose one \
                 with --platform",
                if by_default {
                    ", this host's platform"
                } else {
                    ""
                },
                listed()
            )));
        };
        if by_default && images.len() > 1 {
            eprintln!(
                "pierone: {what} is an image index; showing {platform}, this host's platform \
                 (of {}; choose with --platform)",
                listed()
            );
        }
        let platform = platform.clone();
        image = manifest(str_of(pick, "digest")).await?;
        platform
    } else {
        // A single image: its platform is in its config.
        let config = str_of(&image["config"], "digest");
        let config: Value = api
            .get(
                &format!("/v2/{repo}/blobs/{config}"),
                None,
                &format!("the config of {what}"),
            )
            .await?
            .json()
            .await
            .unwrap_or(Value::Null);
        let platform = Platform::of(&config).unwrap_or(Platform {
            os: "unknown".into(),
            architecture: "unknown".into(),
            variant: None,
        });
        if let Some(want) = wanted
            && !want.accepts(&platform)
        {
            return Err(Error::Usage(format!(
                "{what} is a single image for {platform}, not for {want} (and not an image \
                 index)"
            )));
        }
        platform
    };
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
    Ok((chosen, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn platforms_parse_and_print() {
        assert_eq!(p("linux/arm/v7").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/amd64").variant, None);
        for bad in ["linux", "linux/", "/amd64", "linux/arm/v7/x", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms_match_as_docker_does() {
        assert!(p("linux/amd64").accepts(&p("linux/amd64")));
        assert!(!p("linux/amd64").accepts(&p("linux/arm64")));
        assert!(!p("linux/amd64").accepts(&p("windows/amd64")));
        // No variant asked for: any will do; one asked for: only that one.
        assert!(p("linux/arm").accepts(&p("linux/arm/v7")));
        assert!(p("linux/arm/v7").accepts(&p("linux/arm/v7")));
        assert!(!p("linux/arm/v7").accepts(&p("linux/arm/v6")));
        assert!(!p("linux/arm/v7").accepts(&p("linux/arm")));
        // arm64 has one variant, v8, which may be left out.
        assert!(p("linux/arm64/v8").accepts(&p("linux/arm64")));
    }

    #[test]
    fn audit_times_are_rfc3339() {
        let entry = AuditEntry {
            kind: AuditKind::Tag,
            seq: 3,
            at: 1_434_039_209_152,
            principal: "alice".into(),
            realm: "/employees".into(),
            repository: "t/a".into(),
            tag: "1.0".into(),
            digest: "sha256:ab".into(),
            previous_digest: None,
            prev_hash: "00".into(),
            hash: "11".into(),
        };
        let v = audit_json(&entry);
        assert_eq!(v["at"], "2015-06-11T16:13:29.152Z");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["kind"], "tag");
    }
}
