//! The trust policy: which tags of which team may only name signed manifests, and whose keys
//! count; parsed from YAML with errors that name the team and key, and reloaded from its file
//! when it changes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pierone_protocol::Tag;
use serde::Deserialize;
use wildmatch::WildMatch;

use crate::Error;
use crate::key::TrustedKey;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDocument {
    #[serde(default)]
    teams: BTreeMap<String, TeamDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TeamDocument {
    #[serde(default)]
    signed_tags: Vec<String>,
    #[serde(default)]
    keys: Vec<KeyDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDocument {
    name: String,
    pem: String,
}

/// The parsed trust policy: for each team listed, its protected tag patterns and keys.
/// Teams not listed have no protected tags.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    teams: BTreeMap<String, TeamPolicy>,
}

/// One team's part of the policy.
#[derive(Debug, Clone)]
pub struct TeamPolicy {
    team: String,
    signed_tags: Vec<(String, WildMatch)>,
    keys: Vec<TrustedKey>,
}

/// Whether a pattern can ever match a tag (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`), given that
/// `*` and `?` are its only wildcards: a pattern with other characters is a typo that would
/// silently protect nothing.
fn glob_problem(pattern: &str) -> Option<String> {
    if pattern.is_empty() {
        return Some("empty pattern".to_owned());
    }
    if let Some(c) = pattern
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?')))
    {
        return Some(format!(
            "{c:?} cannot occur in a tag; patterns are tag characters with * and ? as wildcards"
        ));
    }
    if pattern.starts_with(['.', '-']) {
        return Some("a tag cannot start with '.' or '-', so this matches nothing".to_owned());
    }
    None
}

/// Whether `tag` is one of cosign's tag-scheme tags: `sha256-<64 lower-case hex>` followed by
/// `.sig`, `.att` or `.sbom`.
pub fn is_cosign_tag(tag: &Tag) -> bool {
    let Some(rest) = tag.as_str().strip_prefix("sha256-") else {
        return false;
    };
    let Some((hex, suffix)) = rest.split_once('.') else {
        return false;
    };
    hex.len() == 64
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && matches!(suffix, "sig" | "att" | "sbom")
}

impl TrustPolicy {
    /// Parse the YAML policy document.
    ///
    /// ```
    /// use pierone_trust::TrustPolicy;
    /// let policy = TrustPolicy::parse(r#"
    /// teams:
    ///   red:
    ///     signed-tags: ["v*", "release-*"]
    ///     keys:
    ///       - name: red-ci
    ///         pem: |
    ///           -----BEGIN PUBLIC KEY-----
    ///           MCowBQYDK2VwAyEADtyS4eN1maUj49sQxUvhRPFdSeHu1aSiEnad5J7C1iI=
    ///           -----END PUBLIC KEY-----
    /// "#).unwrap();
    /// let v1 = "v1.2".parse().unwrap();
    /// let team = policy.protected("red", &v1).unwrap();
    /// assert_eq!(team.key_names(), ["red-ci"]);
    /// assert!(policy.protected("red", &"nightly".parse().unwrap()).is_none());
    /// assert!(policy.protected("blue", &v1).is_none());
    ///
    /// let err = TrustPolicy::parse("teams:\n  red:\n    signed-tags: ['v*']\n    keys:\n      \
    ///     - name: k\n        pem: nonsense\n").unwrap_err();
    /// assert!(err.to_string().contains("team red, key k: not a PEM block"), "{err}");
    /// ```
    pub fn parse(yaml: &str) -> Result<TrustPolicy, Error> {
        let doc: PolicyDocument =
            serde_yaml_ng::from_str(yaml).map_err(|e| Error::PolicySyntax(e.to_string()))?;
        let mut teams = BTreeMap::new();
        for (team, t) in doc.teams {
            let mut signed_tags = Vec::new();
            for pattern in t.signed_tags {
                if let Some(reason) = glob_problem(&pattern) {
                    return Err(Error::PolicyPattern {
                        team,
                        pattern,
                        reason,
                    });
                }
                let m = WildMatch::new(&pattern);
                signed_tags.push((pattern, m));
            }
            let mut keys = Vec::new();
            let mut names = BTreeSet::new();
            for k in t.keys {
                if k.name.trim().is_empty() {
                    return Err(Error::PolicyKey {
                        team,
                        key: k.name,
                        reason: "a key needs a name: audit records carry it".to_owned(),
                    });
                }
                if !names.insert(k.name.clone()) {
                    return Err(Error::PolicyKey {
                        team,
                        key: k.name,
                        reason: "listed twice: audit records name keys, so names must be unique \
                                 within a team"
                            .to_owned(),
                    });
                }
                let key =
                    TrustedKey::from_pem(&k.name, &k.pem).map_err(|reason| Error::PolicyKey {
                        team: team.clone(),
                        key: k.name.clone(),
                        reason,
                    })?;
                keys.push(key);
            }
            if keys.is_empty() && !signed_tags.is_empty() {
                return Err(Error::PolicyTeam {
                    team,
                    reason: "protects tags but lists no keys, so no such tag could ever be \
                             written"
                        .to_owned(),
                });
            }
            teams.insert(
                team.clone(),
                TeamPolicy {
                    team,
                    signed_tags,
                    keys,
                },
            );
        }
        Ok(TrustPolicy { teams })
    }

    /// Read and parse a policy file.
    pub fn load(path: &Path) -> Result<TrustPolicy, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::PolicyFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        TrustPolicy::parse(&text)
    }

    /// The team's policy if `tag` is one of its protected tags. cosign's own tags
    /// (`sha256-<hex>.sig`, `.att`, `.sbom`) are never protected, even by `*`: they hold the
    /// signatures, and requiring a signature of the signature would make signing impossible.
    pub fn protected(&self, team: &str, tag: &Tag) -> Option<&TeamPolicy> {
        if is_cosign_tag(tag) {
            return None;
        }
        self.teams
            .get(team)
            .filter(|t| t.protecting_pattern(tag).is_some())
    }

    /// The team's policy, protected tags or not (`pierone verify` checks any tag against the
    /// team's keys).
    pub fn team(&self, team: &str) -> Option<&TeamPolicy> {
        self.teams.get(team)
    }

    /// The teams listed, sorted.
    pub fn teams(&self) -> impl Iterator<Item = &TeamPolicy> {
        self.teams.values()
    }
}

impl TeamPolicy {
    /// The team's name.
    pub fn team(&self) -> &str {
        &self.team
    }

    /// The first `signed-tags` pattern that matches `tag`.
    pub fn protecting_pattern(&self, tag: &Tag) -> Option<&str> {
        self.signed_tags
            .iter()
            .find(|(_, m)| m.matches(tag.as_str()))
            .map(|(p, _)| p.as_str())
    }

    /// The `signed-tags` patterns as written.
    pub fn signed_tags(&self) -> impl Iterator<Item = &str> {
        self.signed_tags.iter().map(|(p, _)| p.as_str())
    }

    /// The keys, in the policy's order.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// The names of the keys, in the policy's order: what a refusal says it would accept.
    pub fn key_names(&self) -> Vec<&str> {
        self.keys.iter().map(TrustedKey::name).collect()
    }
}

/// How often the file's modification time is looked at, at most.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A policy file, reloaded when its modification time changes (checked at most once a second,
/// when the policy is asked for). A change that does not parse keeps the last good policy and
/// is logged with the reason, so a typo cannot drop every protection, nor stop pushes.
#[derive(Debug)]
pub struct TrustPolicyFile {
    path: PathBuf,
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    policy: Arc<TrustPolicy>,
    modified: Option<SystemTime>,
    checked: Instant,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl TrustPolicyFile {
    /// Load the file now: a missing or invalid policy is an error at start-up.
    pub fn open(path: impl Into<PathBuf>) -> Result<TrustPolicyFile, Error> {
        let path = path.into();
        // The time is taken before reading, so an edit during the read is seen next time.
        let modified = modified(&path);
        let policy = TrustPolicy::load(&path)?;
        Ok(TrustPolicyFile {
            path,
            state: Mutex::new(FileState {
                policy: Arc::new(policy),
                modified,
                checked: Instant::now(),
            }),
        })
    }

    /// The path the policy is read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current policy.
    pub fn current(&self) -> Arc<TrustPolicy> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() >= CHECK_INTERVAL {
            st.checked = Instant::now();
            let now = modified(&self.path);
            if now != st.modified {
                st.modified = now;
                match TrustPolicy::load(&self.path) {
                    Ok(policy) => {
                        tracing::info!(
                            path = %self.path.display(),
                            teams = policy.teams.len(),
                            "trust policy reloaded"
                        );
                        st.policy = Arc::new(policy);
                    }
                    Err(e) => {
                        tracing::warn!(
                            path = %self.path.display(),
                            error = %e,
                            "trust policy changed but is not valid; keeping the previous policy"
                        );
                    }
                }
            }
        }
        st.policy.clone()
    }
}
