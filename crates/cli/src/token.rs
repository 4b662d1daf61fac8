//! Where an OAuth 2.0 access token comes from, first match wins:
//!
//! 1. `--token` / `PIERONE_TOKEN`;
//! 2. `OAUTH2_ACCESS_TOKENS` (`name=token,...`, the name `pierone`);
//! 3. `$CREDENTIALS_DIR/pierone-token-secret`;
//! 4. with `OAUTH2_ACCESS_TOKEN_URL`: the password grant for the service user in
//!    `$CREDENTIALS_DIR/user.json` and `client.json`, cached until shortly before it expires.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oauth2::basic::BasicClient;
use oauth2::{
    ClientId, ClientSecret, ResourceOwnerPassword, ResourceOwnerUsername, Scope, TokenResponse,
    TokenUrl,
};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Which source a token came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Explicit,
    NamedTokens,
    SecretFile(PathBuf),
    PasswordGrant { cached: bool },
}

#[derive(Debug, Deserialize)]
struct UserJson {
    application_username: String,
    application_password: String,
}

#[derive(Debug, Deserialize)]
struct ClientJson {
    client_id: String,
    client_secret: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedToken {
    /// Which endpoint and credentials it was issued for: a cache never crosses identities.
    key: String,
    access_token: String,
    expires_at: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, Error> {
    let err = |why: String| Error::File {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(json_problem(&e)))
}

/// What is wrong with a JSON file, without quoting it: serde repeats the values it rejects,
/// and these files hold passwords, client secrets and tokens.
fn json_problem(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.starts_with("missing field") {
        return msg;
    }
    format!(
        "not the JSON expected ({:?} error at line {} column {})",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// The token endpoint as shown in messages: without user info or query, which may hold
/// credentials.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "OAUTH2_ACCESS_TOKEN_URL".to_owned(),
    }
}

/// `msg` with every occurrence of each secret replaced.
fn redact(mut msg: String, secrets: &[&str]) -> String {
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if msg.contains(s) {
            msg = msg.replace(s, "[redacted]");
        }
    }
    msg
}

type GrantError = oauth2::RequestTokenError<
    oauth2::HttpClientError<oauth2::reqwest::Error>,
    oauth2::basic::BasicErrorResponse,
>;

/// Why the password grant failed, with neither the request (credentials) nor the answer
/// (which may echo them, or hold a token) quoted, and with the secrets scrubbed from whatever
/// else a layer below put into words.
fn grant_failure(e: &GrantError, endpoint: &str, secrets: &[&str]) -> String {
    let msg = match e {
        oauth2::RequestTokenError::ServerResponse(r) => {
            // The code is the server's text: shown only when it looks like an RFC 6749 code,
            // since a server may put anything there, the request it was sent included.
            let code = r.error().to_string();
            let plain = code.len() <= 64
                && code
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            let code = if plain {
                code.as_str()
            } else {
                "an unrecognized error code"
            };
            format!("{endpoint} refused the service user's credentials: {code}")
        }
        oauth2::RequestTokenError::Request(oauth2::HttpClientError::Reqwest(e)) => {
            let kind = if e.is_timeout() {
                "it timed out"
            } else if e.is_connect() {
                "it cannot be reached"
            } else {
                "the request failed"
            };
            let mut why = kind.to_owned();
            let mut source = std::error::Error::source(e.as_ref());
            while let Some(s) = source {
                why.push_str(": ");
                why.push_str(&s.to_string());
                source = s.source();
            }
            format!("cannot get a token from {endpoint}: {why}")
        }
        oauth2::RequestTokenError::Request(other) => {
            format!("cannot get a token from {endpoint}: {other}")
        }
        oauth2::RequestTokenError::Parse(e, _) => format!(
            "cannot get a token from {endpoint}: it answered something that is not an OAuth \
             2.0 token response (at {})",
            e.path()
        ),
        oauth2::RequestTokenError::Other(why) => {
            format!("cannot get a token from {endpoint}: {why}")
        }
    };
    redact(msg, secrets)
}

fn cache_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| crate::config::home().map(|h| h.join(".cache")))
        .map(|d| d.join("pierone").join("token.json"))
}

/// Renew when less than this much validity is left (or half the lifetime, if shorter).
const RENEW_BEFORE: u64 = 5 * 60;

fn cached(key: &str) -> Option<String> {
    let c: CachedToken = read_json(&cache_path()?).ok()?;
    (c.key == key && c.expires_at > now()).then_some(c.access_token)
}

fn store_cache(key: &str, token: &str, lifetime: u64) {
    let Some(path) = cache_path() else { return };
    let margin = RENEW_BEFORE.min(lifetime / 2);
    let c = CachedToken {
        key: key.to_owned(),
        access_token: token.to_owned(),
        expires_at: now() + lifetime.saturating_sub(margin),
    };
    let Ok(text) = serde_json::to_vec(&c) else {
        return;
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // A token is a secret: owner-only, written whole before it is visible.
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    if let Ok(mut f) = opts.open(&tmp)
        && std::io::Write::write_all(&mut f, &text).is_ok()
    {
        let _ = std::fs::rename(&tmp, &path);
    }
}

async fn password_grant(token_url: &str, dir: &Path) -> Result<(String, bool), Error> {
    let user: UserJson = read_json(&dir.join("user.json"))?;
    let client: ClientJson = read_json(&dir.join("client.json"))?;
    let key = format!(
        "{token_url} {} {}",
        user.application_username, client.client_id
    );
    if let Some(t) = cached(&key) {
        return Ok((t, true));
    }
    let endpoint = shown_url(token_url);
    let secrets = [
        client.client_secret.clone(),
        user.application_password.clone(),
    ];
    let secrets = secrets.each_ref().map(String::as_str);
    let oauth = BasicClient::new(ClientId::new(client.client_id))
        .set_client_secret(ClientSecret::new(client.client_secret.clone()))
        .set_token_uri(
            TokenUrl::new(token_url.to_owned())
                .map_err(|_| Error::NoToken("OAUTH2_ACCESS_TOKEN_URL is not a URL".to_owned()))?,
        );
    let http = oauth2::reqwest::ClientBuilder::new()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::NoToken(redact(e.to_string(), &secrets)))?;
    let scopes =
        std::env::var("PIERONE_OAUTH2_SCOPES").unwrap_or_else(|_| "uid application.write".into());
    let username = ResourceOwnerUsername::new(user.application_username);
    let password = ResourceOwnerPassword::new(user.application_password.clone());
    let mut req = oauth.exchange_password(&username, &password);
    for s in scopes.split_whitespace() {
        req = req.add_scope(Scope::new(s.to_owned()));
    }
    let tok = req
        .request_async(&http)
        .await
        .map_err(|e| Error::NoToken(grant_failure(&e, &endpoint, &secrets)))?;
    let secret = tok.access_token().secret().clone();
    let lifetime = tok.expires_in().map_or(3600, |d| d.as_secs());
    store_cache(&key, &secret, lifetime);
    Ok((secret, false))
}

/// An access token from the first source that has one.
pub async fn obtain_token(explicit: Option<&str>) -> Result<(String, TokenSource), Error> {
    if let Some(t) = explicit.filter(|t| !t.is_empty()) {
        return Ok((t.to_owned(), TokenSource::Explicit));
    }
    if let Ok(list) = std::env::var("OAUTH2_ACCESS_TOKENS") {
        for pair in list.split(',') {
            if let Some(("pierone", t)) = pair.trim().split_once('=')
                && !t.is_empty()
            {
                return Ok((t.to_owned(), TokenSource::NamedTokens));
            }
        }
    }
    let dir = std::env::var_os("CREDENTIALS_DIR").map(PathBuf::from);
    if let Some(dir) = &dir {
        let secret = dir.join("pierone-token-secret");
        if let Ok(t) = std::fs::read_to_string(&secret) {
            let t = t.trim();
            if !t.is_empty() {
                return Ok((t.to_owned(), TokenSource::SecretFile(secret)));
            }
        }
    }
    if let Ok(url) = std::env::var("OAUTH2_ACCESS_TOKEN_URL") {
        let dir = dir.ok_or_else(|| {
            Error::NoToken("OAUTH2_ACCESS_TOKEN_URL is set but CREDENTIALS_DIR is not".into())
        })?;
        let (t, cached) = password_grant(&url, &dir).await?;
        return Ok((t, TokenSource::PasswordGrant { cached }));
    }
    Err(Error::NoToken(
        "pass --token, or set PIERONE_TOKEN, OAUTH2_ACCESS_TOKENS=pierone=<token>, \
         $CREDENTIALS_DIR/pierone-token-secret, or OAUTH2_ACCESS_TOKEN_URL with CREDENTIALS_DIR"
            .into(),
    ))
}
