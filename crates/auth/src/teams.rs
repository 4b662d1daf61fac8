//! Where team membership comes from: the [`TeamDirectory`] trait, an in-memory table, a YAML
//! file reloaded when it changes, and the HTTP team service and application registry.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use crate::Error;

/// Which teams an employee belongs to and which teams an application is assigned to.
#[async_trait]
pub trait TeamDirectory: Send + Sync + std::fmt::Debug + 'static {
    /// Teams the employee `uid` is a member of.
    async fn teams_of_user(&self, uid: &str) -> Result<BTreeSet<String>, Error>;
    /// Teams the application `app` (a service user's uid without its prefix) belongs to.
    async fn teams_of_application(&self, app: &str) -> Result<BTreeSet<String>, Error>;
}

/// The file format, also the in-memory model:
///
/// ```yaml
/// teams:
///   myteam:
///     members: [alice, bob]
///     applications: [ci-bot]
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsDocument {
    #[serde(default)]
    pub teams: BTreeMap<String, TeamEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamEntry {
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub applications: Vec<String>,
}

impl TeamsDocument {
    fn of_user(&self, uid: &str) -> BTreeSet<String> {
        self.teams
            .iter()
            .filter(|(_, t)| t.members.iter().any(|m| m == uid))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn of_application(&self, app: &str) -> BTreeSet<String> {
        self.teams
            .iter()
            .filter(|(_, t)| t.applications.iter().any(|a| a == app))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// A fixed table of teams, for tests and embedding.
#[derive(Debug, Clone, Default)]
pub struct MemoryTeams {
    doc: TeamsDocument,
}

impl MemoryTeams {
    /// `teams` is `(team, members, applications)`.
    pub fn new<'a>(
        teams: impl IntoIterator<Item = (&'a str, &'a [&'a str], &'a [&'a str])>,
    ) -> MemoryTeams {
        let teams = teams
            .into_iter()
            .map(|(name, members, apps)| {
                (
                    name.to_owned(),
                    TeamEntry {
                        members: members.iter().map(|s| s.to_string()).collect(),
                        applications: apps.iter().map(|s| s.to_string()).collect(),
                    },
                )
            })
            .collect();
        MemoryTeams {
            doc: TeamsDocument { teams },
        }
    }
}

#[async_trait]
impl TeamDirectory for MemoryTeams {
    async fn teams_of_user(&self, uid: &str) -> Result<BTreeSet<String>, Error> {
        Ok(self.doc.of_user(uid))
    }

    async fn teams_of_application(&self, app: &str) -> Result<BTreeSet<String>, Error> {
        Ok(self.doc.of_application(app))
    }
}

/// Teams from a YAML file, re-read when its modification time changes (checked at most once a
/// second). A file that stops parsing keeps the last good contents and logs why.
#[derive(Debug)]
pub struct FileTeams {
    path: PathBuf,
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    doc: Arc<TeamsDocument>,
    modified: Option<SystemTime>,
    checked: Instant,
}

fn read_teams(path: &PathBuf) -> Result<(TeamsDocument, Option<SystemTime>), Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("teams file {}: {e}", path.display())))?;
    let doc: TeamsDocument = serde_yaml_ng::from_str(&text)
        .map_err(|e| Error::Config(format!("teams file {}: {e}", path.display())))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((doc, modified))
}

impl FileTeams {
    /// Load the file now; a missing or malformed file is an error at start-up.
    pub fn open(path: impl Into<PathBuf>) -> Result<FileTeams, Error> {
        let path = path.into();
        let (doc, modified) = read_teams(&path)?;
        Ok(FileTeams {
            path,
            state: Mutex::new(FileState {
                doc: Arc::new(doc),
                modified,
                checked: Instant::now(),
            }),
        })
    }

    fn current(&self) -> Arc<TeamsDocument> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() >= Duration::from_secs(1) {
            st.checked = Instant::now();
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != st.modified {
                match read_teams(&self.path) {
                    Ok((doc, modified)) => {
                        tracing::info!(path = %self.path.display(), teams = doc.teams.len(), "teams file reloaded");
                        st.doc = Arc::new(doc);
                        st.modified = modified;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "teams file changed but cannot be read; keeping the previous contents");
                        st.modified = modified;
                    }
                }
            }
        }
        st.doc.clone()
    }
}

#[async_trait]
impl TeamDirectory for FileTeams {
    async fn teams_of_user(&self, uid: &str) -> Result<BTreeSet<String>, Error> {
        Ok(self.current().of_user(uid))
    }

    async fn teams_of_application(&self, app: &str) -> Result<BTreeSet<String>, Error> {
        Ok(self.current().of_application(app))
    }
}

/// The production providers: a team service for employees
/// (`GET <team-service>/api/teams?member=<uid>` answering `[{"id":"team"},...]`) and an
/// application registry for services (`GET <registry>/apps/<id>` answering
/// `{"id":..,"team_id":..}`), each answer cached for a minute.
#[derive(Debug)]
pub struct HttpTeams {
    team_service: Option<String>,
    application_registry: Option<String>,
    token: Option<String>,
    http: reqwest::Client,
    users: quick_cache::sync::Cache<String, (BTreeSet<String>, Instant)>,
    apps: quick_cache::sync::Cache<String, (BTreeSet<String>, Instant)>,
    ttl: Duration,
}

#[derive(Debug, Deserialize)]
struct TeamRef {
    id: String,
}

#[derive(Debug, Deserialize)]
struct Application {
    team_id: Option<String>,
}

impl HttpTeams {
    /// Either URL may be absent: then nobody of that kind belongs to any team. `token` is the
    /// server's own bearer token for these services, when they need one.
    pub fn new(
        team_service: Option<&str>,
        application_registry: Option<&str>,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<HttpTeams, Error> {
        for url in [team_service, application_registry].into_iter().flatten() {
            reqwest::Url::parse(url).map_err(|e| Error::Config(format!("URL {url:?}: {e}")))?;
        }
        Ok(HttpTeams {
            team_service: team_service.map(|u| u.trim_end_matches('/').to_owned()),
            application_registry: application_registry.map(|u| u.trim_end_matches('/').to_owned()),
            token: token.map(str::to_owned),
            http: crate::http_client(timeout)?,
            users: quick_cache::sync::Cache::new(10_000),
            apps: quick_cache::sync::Cache::new(10_000),
            ttl: Duration::from_secs(60),
        })
    }

    async fn get(&self, url: &str, what: &'static str) -> Result<Option<reqwest::Response>, Error> {
        let mut req = self.http.get(url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            crate::unavailable(what, format!("it {}", crate::describe(e, &self.secrets())))
        })?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(crate::unavailable(
                what,
                format!("it answered {}", resp.status()),
            ));
        }
        Ok(Some(resp))
    }

    /// What must never appear in an error: the server's own token.
    fn secrets(&self) -> [&str; 1] {
        [self.token.as_deref().unwrap_or_default()]
    }

    fn cached(
        cache: &quick_cache::sync::Cache<String, (BTreeSet<String>, Instant)>,
        key: &str,
    ) -> Option<BTreeSet<String>> {
        cache
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(teams, _)| teams)
    }
}

#[async_trait]
impl TeamDirectory for HttpTeams {
    async fn teams_of_user(&self, uid: &str) -> Result<BTreeSet<String>, Error> {
        let Some(base) = &self.team_service else {
            return Ok(BTreeSet::new());
        };
        if let Some(t) = Self::cached(&self.users, uid) {
            return Ok(t);
        }
        let url = reqwest::Url::parse_with_params(&format!("{base}/api/teams"), &[("member", uid)])
            .map_err(|e| Error::Config(e.to_string()))?;
        let teams = match self.get(url.as_str(), "team service").await? {
            None => BTreeSet::new(),
            Some(resp) => crate::read_json::<Vec<TeamRef>>(
                resp,
                "team service",
                "a list of teams",
                &self.secrets(),
            )
            .await?
            .into_iter()
            .map(|t| t.id)
            .collect(),
        };
        self.users
            .insert(uid.to_owned(), (teams.clone(), Instant::now() + self.ttl));
        Ok(teams)
    }

    async fn teams_of_application(&self, app: &str) -> Result<BTreeSet<String>, Error> {
        let Some(base) = &self.application_registry else {
            return Ok(BTreeSet::new());
        };
        if let Some(t) = Self::cached(&self.apps, app) {
            return Ok(t);
        }
        let mut url = reqwest::Url::parse(&format!("{base}/apps/"))
            .map_err(|e| Error::Config(e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| Error::Config("application registry URL cannot have a path".into()))?
            .pop_if_empty()
            .push(app);
        let teams = match self.get(url.as_str(), "application registry").await? {
            None => BTreeSet::new(),
            Some(resp) => crate::read_json::<Application>(
                resp,
                "application registry",
                "an application",
                &self.secrets(),
            )
            .await?
            .team_id
            .into_iter()
            .collect(),
        };
        self.apps
            .insert(app.to_owned(), (teams.clone(), Instant::now() + self.ttl));
        Ok(teams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_teams_reload_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("teams.yaml");
        std::fs::write(
            &path,
            "teams:\n  a:\n    members: [alice]\n    applications: [bot]\n",
        )
        .unwrap();
        let t = FileTeams::open(&path).unwrap();
        assert_eq!(
            t.teams_of_user("alice").await.unwrap(),
            BTreeSet::from(["a".to_owned()])
        );
        assert_eq!(
            t.teams_of_application("bot").await.unwrap(),
            BTreeSet::from(["a".to_owned()])
        );
        assert!(t.teams_of_user("bob").await.unwrap().is_empty());

        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(&path, "teams:\n  b:\n    members: [bob, alice]\n").unwrap();
        // Make the change visible even on filesystems with coarse timestamps.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(
            t.teams_of_user("bob").await.unwrap(),
            BTreeSet::from(["b".to_owned()])
        );
        assert!(t.teams_of_application("bot").await.unwrap().is_empty());

        // A broken edit keeps the last good contents.
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(&path, "teams: [not, a, map").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later + Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            t.teams_of_user("bob").await.unwrap(),
            BTreeSet::from(["b".to_owned()])
        );
    }

    #[test]
    fn bad_files_fail_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("teams.yaml");
        assert!(matches!(FileTeams::open(&path), Err(Error::Config(_))));
        std::fs::write(&path, "teams:\n  a:\n    member: [typo]\n").unwrap();
        assert!(matches!(FileTeams::open(&path), Err(Error::Config(_))));
    }
}
