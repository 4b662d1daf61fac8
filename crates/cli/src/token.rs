//! Where an OAuth 2.0 access token comes from, first match wins:
//!
//! 1. `--token` / `PIERONE_TOKEN`;
//! 2. `OAUTH2_ACCESS_TOKENS` (`name=token,...`, the name `pierone`);
//! 3. `$CREDENTIALS_DIR/pierone-token-secret`;
//! 4. with `OAUTH2_ACCESS_TOKEN_URL`: the password grant for the service user in
//!    `$CREDENTIALS_DIR/user.json` and `client.json`, cached until shortly before it expires;
//! 5. the token `pierone login` stored for the registry.
//!
//! A source that is set up but fails (a file that cannot be read, a token endpoint that refuses
//! or cannot be reached) is reported as that source's failure; only when no source is set up
//! at all do commands go on without a token.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oauth2::basic::BasicClient;
use oauth2::{
    ClientId, ClientSecret, ResourceOwnerPassword, ResourceOwnerUsername, Scope, TokenResponse,
    TokenUrl,
};
use serde::{Deserialize, Serialize};

use crate::Error;

/// How long the token endpoint may take to answer: `PIERONE_OAUTH2_TIMEOUT` seconds, else 30.
fn grant_timeout() -> Duration {
    let secs = std::env::var("PIERONE_OAUTH2_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// Which source a token came from: named in messages, so that a refused token can be traced
/// to where it was configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token` or `PIERONE_TOKEN`.
    Explicit,
    /// `OAUTH2_ACCESS_TOKENS`.
    NamedTokens,
    /// `$CREDENTIALS_DIR/pierone-token-secret`.
    SecretFile(PathBuf),
    /// The password grant at `endpoint`; `cached` when the token came from the cache.
    PasswordGrant {
        /// The token endpoint.
        endpoint: String,
        /// Whether the token came from the cache rather than the endpoint.
        cached: bool,
    },
    /// The token `pierone login` stored for `host`.
    Login {
        /// The registry host it is for.
        host: String,
    },
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Explicit => f.write_str("the token of --token/PIERONE_TOKEN"),
            TokenSource::NamedTokens => {
                f.write_str("the token named pierone in OAUTH2_ACCESS_TOKENS")
            }
            TokenSource::SecretFile(p) => write!(f, "the token in {}", p.display()),
            TokenSource::PasswordGrant {
                endpoint,
                cached: false,
            } => write!(f, "the token the password grant at {endpoint} issued"),
            TokenSource::PasswordGrant {
                endpoint,
                cached: true,
            } => write!(
                f,
                "the cached token the password grant at {endpoint} issued ({})",
                shown_path(cache_path())
            ),
            TokenSource::Login { host } => write!(
                f,
                "the token `pierone login` stored for {host} ({})",
                shown_path(cache_path())
            ),
        }
    }
}

impl TokenSource {
    /// What to do when the registry refuses this source's token: "run `pierone login`" only
    /// where logging in would change which token is sent.
    pub fn refused_hint(&self) -> String {
        match self {
            TokenSource::Explicit => "pass a valid token (--token and PIERONE_TOKEN come before \
                 every other source, so `pierone login` cannot replace it)"
                .to_owned(),
            TokenSource::NamedTokens => {
                "renew the pierone entry of OAUTH2_ACCESS_TOKENS (it comes before every other \
                 source)"
                    .to_owned()
            }
            TokenSource::SecretFile(p) => format!(
                "renew {} (it comes before the password grant and `pierone login`)",
                p.display()
            ),
            TokenSource::PasswordGrant { cached: true, .. } => format!(
                "delete {} to have the password grant issue a new one; if that is refused too, \
                 the service user may not use this registry",
                shown_path(cache_path())
            ),
            TokenSource::PasswordGrant { cached: false, .. } => {
                "the registry does not accept what this token endpoint issues: check that \
                 OAUTH2_ACCESS_TOKEN_URL is the identity service the registry trusts, and the \
                 service user's scopes (PIERONE_OAUTH2_SCOPES)"
                    .to_owned()
            }
            TokenSource::Login { .. } => {
                "it has probably expired: run `pierone login` again".to_owned()
            }
        }
    }
}

/// A token and where it came from.
#[derive(Debug, Clone)]
pub struct Token {
    /// The bearer token itself; never printed.
    pub secret: String,
    /// Where it came from.
    pub source: TokenSource,
    /// When it stops being valid (seconds since the epoch), where the source says.
    pub expires_at: Option<u64>,
}

fn shown_path(p: Option<PathBuf>) -> String {
    p.map_or_else(|| "the token cache".to_owned(), |p| p.display().to_string())
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

/// The owner-only token cache: the password grant's tokens and those `pierone login` stored.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenCache {
    tokens: Vec<CachedToken>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedToken {
    /// Which endpoint and credentials it was issued for, or which registry it was stored for
    /// by `pierone login`: a cache never crosses identities.
    key: String,
    access_token: String,
    /// Seconds since the epoch; `None` when the source did not say.
    expires_at: Option<u64>,
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

/// Why the token endpoint could not be asked, in words: reqwest's own text says only "error
/// sending request", the cause is down its chain of sources.
fn request_failure(e: &oauth2::reqwest::Error) -> String {
    if e.is_timeout() {
        return format!(
            "it did not answer within {} s (timed out)",
            grant_timeout().as_secs()
        );
    }
    let mut chain = Vec::new();
    let mut refused = false;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            refused = true;
        }
        chain.push(s.to_string());
        source = s.source();
    }
    let all = chain.join(": ").to_lowercase();
    let innermost = chain.last().cloned().unwrap_or_else(|| e.to_string());
    if refused || all.contains("connection refused") {
        "connection refused (is OAUTH2_ACCESS_TOKEN_URL right?)".to_owned()
    } else if all.contains("dns error") || all.contains("failed to lookup address") {
        format!("DNS lookup failed: {innermost}")
    } else if e.is_connect() {
        format!("it cannot be reached: {innermost}")
    } else {
        format!("the request failed: {innermost}")
    }
}

/// Why the password grant failed, with neither the request (credentials) nor the answer
/// (which may echo them, or hold a token) quoted, and with the secrets scrubbed from whatever
/// else a layer below put into words.
fn grant_failure(e: &GrantError, dir: &Path, secrets: &[&str]) -> String {
    let msg = match e {
        oauth2::RequestTokenError::ServerResponse(r) => {
            // The code is the server's text: shown only when it looks like an RFC 6749 code,
            // since a server may put anything there, the request it was sent included.
            let code = r.error().to_string();
            let plain = code.len() <= 64
                && code
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            match code.as_str() {
                "invalid_client" => format!(
                    "it refused the client credentials of {} (invalid_client)",
                    dir.join("client.json").display()
                ),
                "invalid_grant" => format!(
                    "it refused the service user's credentials of {} (invalid_grant)",
                    dir.join("user.json").display()
                ),
                "invalid_scope" => "it refused the scopes asked for (invalid_scope): check \
                     PIERONE_OAUTH2_SCOPES"
                    .to_owned(),
                _ if plain => format!("it refused the request ({code})"),
                _ => "it refused the request (with an unrecognized error code)".to_owned(),
            }
        }
        oauth2::RequestTokenError::Request(oauth2::HttpClientError::Reqwest(e)) => {
            request_failure(e)
        }
        oauth2::RequestTokenError::Request(other) => other.to_string(),
        oauth2::RequestTokenError::Parse(e, _) => format!(
            "it answered something that is not an OAuth 2.0 token response (at {})",
            e.path()
        ),
        oauth2::RequestTokenError::Other(why) => why.clone(),
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

/// When a token of `lifetime` seconds issued now is to be renewed.
fn renew_at(lifetime: u64) -> u64 {
    now() + lifetime.saturating_sub(RENEW_BEFORE.min(lifetime / 2))
}

fn read_cache() -> TokenCache {
    // A cache that cannot be read (or is in an older layout) is a cache miss, never a failure.
    cache_path()
        .and_then(|p| read_json(&p).ok())
        .unwrap_or_default()
}

fn cached(key: &str) -> Option<(String, Option<u64>)> {
    read_cache()
        .tokens
        .into_iter()
        .find(|c| c.key == key && c.expires_at.is_none_or(|t| t > now()))
        .map(|c| (c.access_token, c.expires_at))
}

/// Put `token` into the cache under `key`, replacing what was there under it and dropping
/// expired tokens. Returns the cache's path.
fn store_cache(key: &str, token: &str, expires_at: Option<u64>) -> Result<PathBuf, Error> {
    let path = cache_path().ok_or_else(|| Error::Usage("cannot find the home directory".into()))?;
    let err = |why: String| Error::File {
        path: path.display().to_string(),
        why,
    };
    let mut cache = read_cache();
    let t = now();
    cache
        .tokens
        .retain(|c| c.key != key && c.expires_at.is_none_or(|e| e > t));
    cache.tokens.push(CachedToken {
        key: key.to_owned(),
        access_token: token.to_owned(),
        expires_at,
    });
    let text = serde_json::to_vec(&cache).map_err(|e| err(e.to_string()))?;
    if let Some(dir) = path.parent() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir).map_err(|e| err(e.to_string()))?;
    }
    // A token is a secret: owner-only, written whole before it is visible.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = opts
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &text))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e.to_string()));
    }
    Ok(path)
}

/// Store `token` as the one `pierone login` obtained for `host`, for later commands and the
/// credential helper. Returns the cache's path.
pub fn store_login_token(host: &str, token: &Token) -> Result<PathBuf, Error> {
    store_cache(&login_key(host), &token.secret, token.expires_at)
}

fn login_key(host: &str) -> String {
    format!("login {host}")
}

fn failed(from: &str, why: impl Into<String>) -> Error {
    Error::TokenSourceFailed {
        from: from.to_owned(),
        why: why.into(),
    }
}

async fn password_grant(token_url: &str, dir: &Path) -> Result<Token, Error> {
    let endpoint = shown_url(token_url);
    let from = format!("the password grant at {endpoint}");
    let user: UserJson =
        read_json(&dir.join("user.json")).map_err(|e| failed(&from, e.to_string()))?;
    let client: ClientJson =
        read_json(&dir.join("client.json")).map_err(|e| failed(&from, e.to_string()))?;
    let key = format!(
        "grant {token_url} {} {}",
        user.application_username, client.client_id
    );
    if let Some((secret, expires_at)) = cached(&key) {
        return Ok(Token {
            secret,
            source: TokenSource::PasswordGrant {
                endpoint,
                cached: true,
            },
            expires_at,
        });
    }
    let secrets = [
        client.client_secret.clone(),
        user.application_password.clone(),
    ];
    let secrets = secrets.each_ref().map(String::as_str);
    let oauth = BasicClient::new(ClientId::new(client.client_id))
        .set_client_secret(ClientSecret::new(client.client_secret.clone()))
        .set_token_uri(
            TokenUrl::new(token_url.to_owned())
                .map_err(|_| failed(&from, "OAUTH2_ACCESS_TOKEN_URL is not a URL"))?,
        );
    let http = oauth2::reqwest::ClientBuilder::new()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .timeout(grant_timeout())
        .build()
        .map_err(|e| failed(&from, redact(e.to_string(), &secrets)))?;
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
        .map_err(|e| failed(&from, grant_failure(&e, dir, &secrets)))?;
    let secret = tok.access_token().secret().clone();
    let expires_at = renew_at(tok.expires_in().map_or(3600, |d| d.as_secs()));
    // Caching is an optimisation: a cache that cannot be written costs a grant next time.
    let _ = store_cache(&key, &secret, Some(expires_at));
    Ok(Token {
        secret,
        source: TokenSource::PasswordGrant {
            endpoint,
            cached: false,
        },
        expires_at: Some(expires_at),
    })
}

/// What to set up when no source has a token.
pub const NO_SOURCE: &str = "no token source is set up: pass --token or set PIERONE_TOKEN, \
     OAUTH2_ACCESS_TOKENS=pierone=<token>, $CREDENTIALS_DIR/pierone-token-secret, or \
     OAUTH2_ACCESS_TOKEN_URL with user.json and client.json in $CREDENTIALS_DIR";

/// An access token from the first source that is set up. `registry` is the registry's host
/// (`host[:port]`) whose `pierone login` token is the last source; `None` skips it (`login`
/// itself, which is there to replace it).
///
/// A source that is set up but fails is an [`Error::TokenSourceFailed`] naming it, not a
/// fall-through to the next: the user meant that one. No source at all is
/// [`Error::NoToken`].
pub async fn obtain_token(explicit: Option<&str>, registry: Option<&str>) -> Result<Token, Error> {
    let plain = |secret: &str, source| Token {
        secret: secret.to_owned(),
        source,
        expires_at: None,
    };
    if let Some(t) = explicit.filter(|t| !t.is_empty()) {
        return Ok(plain(t, TokenSource::Explicit));
    }
    if let Ok(list) = std::env::var("OAUTH2_ACCESS_TOKENS") {
        for pair in list.split(',') {
            if let Some(("pierone", t)) = pair.trim().split_once('=')
                && !t.is_empty()
            {
                return Ok(plain(t, TokenSource::NamedTokens));
            }
        }
    }
    let dir = std::env::var_os("CREDENTIALS_DIR").map(PathBuf::from);
    if let Some(dir) = &dir {
        let secret = dir.join("pierone-token-secret");
        let from = format!("the token file {}", secret.display());
        match std::fs::read_to_string(&secret) {
            Ok(t) if t.trim().is_empty() => return Err(failed(&from, "it is empty")),
            Ok(t) => return Ok(plain(t.trim(), TokenSource::SecretFile(secret))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(&from, format!("cannot read it: {e}"))),
        }
    }
    if let Ok(url) = std::env::var("OAUTH2_ACCESS_TOKEN_URL") {
        let dir = dir.ok_or_else(|| {
            failed(
                "the password grant",
                "OAUTH2_ACCESS_TOKEN_URL is set but CREDENTIALS_DIR (the directory of \
                 user.json and client.json) is not",
            )
        })?;
        return password_grant(&url, &dir).await;
    }
    if let Some(host) = registry
        && let Some((secret, expires_at)) = cached(&login_key(host))
    {
        return Ok(Token {
            secret,
            source: TokenSource::Login {
                host: host.to_owned(),
            },
            expires_at,
        });
    }
    let mut why = NO_SOURCE.to_owned();
    if let Some(dir) = &dir
        && dir.join("user.json").is_file()
    {
        why.push_str(&format!(
            " ({} has user.json, but OAUTH2_ACCESS_TOKEN_URL is not set)",
            dir.display()
        ));
    }
    Err(Error::NoToken(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_pierone_login_only_where_it_helps() {
        let login = TokenSource::Login {
            host: "r.example".into(),
        };
        assert!(login.refused_hint().contains("run `pierone login` again"));
        for s in [
            TokenSource::Explicit,
            TokenSource::NamedTokens,
            TokenSource::SecretFile("/c/pierone-token-secret".into()),
            TokenSource::PasswordGrant {
                endpoint: "https://id.example/token".into(),
                cached: false,
            },
        ] {
            assert!(
                !s.refused_hint().contains("run `pierone login`"),
                "{s}: {}",
                s.refused_hint()
            );
        }
    }

    #[test]
    fn renewal_leaves_a_margin() {
        let t = now();
        assert!((t + 3600 - RENEW_BEFORE..=t + 3600 - RENEW_BEFORE + 2).contains(&renew_at(3600)));
        // A short-lived token is renewed halfway.
        assert!((t + 30..=t + 32).contains(&renew_at(60)));
    }
}
