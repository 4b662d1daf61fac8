//! Token validation: the [`TokenValidator`] trait, the token-info and RFC 7662 introspection
//! styles, a fixed table for tests and embedding, and the cache in front of them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Deserialize;

use crate::Error;

/// What a valid token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub uid: String,
    /// `/employees`, `/services`, or whatever the identity provider uses.
    pub realm: String,
    pub scopes: BTreeSet<String>,
    /// Seconds the token stays valid, when the endpoint says.
    pub expires_in: Option<u64>,
}

impl TokenInfo {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

/// Checks tokens. `Ok(None)` means the token is not valid (unknown, expired, revoked);
/// `Err(Error::Unavailable)` means the question could not be answered.
#[async_trait]
pub trait TokenValidator: Send + Sync + std::fmt::Debug + 'static {
    async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, Error>;

    /// How a caching validator has fared, for metrics; `None` for one that does not cache.
    fn cache_stats(&self) -> Option<CacheStats> {
        None
    }
}

/// Answers served from a validator's cache and answers it had to ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// Scopes arrive as a JSON array (token-info) or a space-separated string (RFC 7662).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scopes {
    List(Vec<String>),
    Spaced(String),
}

impl Scopes {
    fn into_set(self) -> BTreeSet<String> {
        match self {
            Scopes::List(v) => v.into_iter().collect(),
            Scopes::Spaced(s) => s.split_whitespace().map(str::to_owned).collect(),
        }
    }
}

/// Classify a response from an identity endpoint: 2xx is an answer, 400/401/403/404 mean
/// "this token is not valid", anything else means the endpoint cannot answer now.
fn classify(status: reqwest::StatusCode, what: &str) -> Result<bool, Error> {
    if status.is_success() {
        Ok(true)
    } else if matches!(status.as_u16(), 400 | 401 | 403 | 404) {
        Ok(false)
    } else {
        Err(Error::Unavailable(format!("{what} answered {status}")))
    }
}

fn unavailable(what: &str) -> impl Fn(reqwest::Error) -> Error + '_ {
    move |e| {
        let kind = if e.is_timeout() {
            "timed out"
        } else {
            "failed"
        };
        Error::Unavailable(format!("{what} {kind}: {e}"))
    }
}

/// Zalando-style token-info: `GET <url>?access_token=<token>` answering
/// `{"uid":..,"realm":..,"scope":[..],"expires_in":..}`.
#[derive(Debug, Clone)]
pub struct TokenInfoValidator {
    url: String,
    http: reqwest::Client,
}

impl TokenInfoValidator {
    pub fn new(url: &str, timeout: Duration) -> Result<TokenInfoValidator, Error> {
        reqwest::Url::parse(url)
            .map_err(|e| Error::Config(format!("token-info URL {url:?}: {e}")))?;
        Ok(TokenInfoValidator {
            url: url.to_owned(),
            http: crate::http_client(timeout)?,
        })
    }
}

#[derive(Debug, Deserialize)]
struct TokenInfoBody {
    uid: Option<String>,
    realm: Option<String>,
    scope: Option<Scopes>,
    expires_in: Option<i64>,
}

#[async_trait]
impl TokenValidator for TokenInfoValidator {
    async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, Error> {
        let what = "token-info";
        let resp = self
            .http
            .get(&self.url)
            .query(&[("access_token", token)])
            .send()
            .await
            .map_err(unavailable(what))?;
        if !classify(resp.status(), what)? {
            return Ok(None);
        }
        let body: TokenInfoBody = resp.json().await.map_err(|e| {
            Error::Unavailable(format!(
                "{what} answered something that is not token info: {e}"
            ))
        })?;
        let Some(uid) = body.uid.filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        if body.expires_in.is_some_and(|e| e <= 0) {
            return Ok(None);
        }
        Ok(Some(TokenInfo {
            uid,
            realm: body.realm.unwrap_or_default(),
            scopes: body.scope.map(Scopes::into_set).unwrap_or_default(),
            expires_in: body.expires_in.map(|e| e as u64),
        }))
    }
}

/// RFC 7662 token introspection: `POST <url>` with form `token=<token>`, authenticated with
/// the server's client credentials, answering `{"active":true,"sub":..,"scope":"a b",..}`.
/// `uid` and `realm` claims are used when present; otherwise the uid is `sub`.
#[derive(Debug, Clone)]
pub struct IntrospectionValidator {
    url: String,
    client_id: String,
    client_secret: String,
    http: reqwest::Client,
}

impl IntrospectionValidator {
    pub fn new(
        url: &str,
        client_id: &str,
        client_secret: &str,
        timeout: Duration,
    ) -> Result<IntrospectionValidator, Error> {
        reqwest::Url::parse(url)
            .map_err(|e| Error::Config(format!("introspection URL {url:?}: {e}")))?;
        Ok(IntrospectionValidator {
            url: url.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            http: crate::http_client(timeout)?,
        })
    }
}

#[derive(Debug, Deserialize)]
struct IntrospectionBody {
    active: bool,
    sub: Option<String>,
    uid: Option<String>,
    realm: Option<String>,
    scope: Option<Scopes>,
    exp: Option<i64>,
}

#[async_trait]
impl TokenValidator for IntrospectionValidator {
    async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, Error> {
        let what = "token introspection";
        let resp = self
            .http
            .post(&self.url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&[("token", token)])
            .send()
            .await
            .map_err(unavailable(what))?;
        // The introspection endpoint refusing *us* is a configuration fault, not a bad token.
        if matches!(resp.status().as_u16(), 401 | 403) {
            return Err(Error::Unavailable(format!(
                "{what} refused the server's client credentials ({})",
                resp.status()
            )));
        }
        if !classify(resp.status(), what)? {
            return Ok(None);
        }
        let body: IntrospectionBody = resp.json().await.map_err(|e| {
            Error::Unavailable(format!(
                "{what} answered something that is not RFC 7662: {e}"
            ))
        })?;
        if !body.active {
            return Ok(None);
        }
        let Some(uid) = body.uid.or(body.sub).filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let expires_in = body.exp.map(|exp| exp - now);
        if expires_in.is_some_and(|e| e <= 0) {
            return Ok(None);
        }
        Ok(Some(TokenInfo {
            uid,
            realm: body.realm.unwrap_or_default(),
            scopes: body.scope.map(Scopes::into_set).unwrap_or_default(),
            expires_in: expires_in.map(|e| e as u64),
        }))
    }
}

/// A fixed table of tokens: the in-memory validator, for tests and for embedding.
#[derive(Debug, Clone, Default)]
pub struct StaticValidator {
    tokens: HashMap<String, TokenInfo>,
}

impl StaticValidator {
    pub fn new(tokens: impl IntoIterator<Item = (String, TokenInfo)>) -> StaticValidator {
        StaticValidator {
            tokens: tokens.into_iter().collect(),
        }
    }
}

#[async_trait]
impl TokenValidator for StaticValidator {
    async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, Error> {
        Ok(self.tokens.get(token).cloned())
    }
}

/// Remembers answers for a short while so that pulling a 20-layer image costs one validation,
/// not forty. Bounded in entries; an entry never outlives the token; a failure to validate is
/// never remembered.
#[derive(Debug)]
pub struct CachingValidator {
    inner: Arc<dyn TokenValidator>,
    cache: quick_cache::sync::Cache<String, (Option<TokenInfo>, Instant)>,
    positive_ttl: Duration,
    negative_ttl: Duration,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl CachingValidator {
    pub fn new(
        inner: Arc<dyn TokenValidator>,
        capacity: usize,
        positive_ttl: Duration,
        negative_ttl: Duration,
    ) -> CachingValidator {
        CachingValidator {
            inner,
            cache: quick_cache::sync::Cache::new(capacity),
            positive_ttl,
            negative_ttl,
            hits: Default::default(),
            misses: Default::default(),
        }
    }
}

#[async_trait]
impl TokenValidator for CachingValidator {
    async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, Error> {
        let now = Instant::now();
        if let Some((answer, until)) = self.cache.get(token) {
            if until > now {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(answer);
            }
            self.cache.remove(token);
        }
        self.misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answer = self.inner.validate(token).await?;
        let ttl = match &answer {
            Some(info) => info.expires_in.map_or(self.positive_ttl, |e| {
                self.positive_ttl.min(Duration::from_secs(e))
            }),
            None => self.negative_ttl,
        };
        if !ttl.is_zero() {
            self.cache
                .insert(token.to_owned(), (answer.clone(), now + ttl));
        }
        Ok(answer)
    }

    fn cache_stats(&self) -> Option<CacheStats> {
        use std::sync::atomic::Ordering::Relaxed;
        Some(CacheStats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Debug, Default)]
    struct Counting {
        calls: AtomicUsize,
        fail: bool,
    }

    #[async_trait]
    impl TokenValidator for Counting {
        async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(Error::Unavailable("down".into()));
            }
            Ok((token != "bad").then(|| TokenInfo {
                uid: "alice".into(),
                realm: "/employees".into(),
                scopes: BTreeSet::new(),
                expires_in: if token == "short" { Some(0) } else { None },
            }))
        }
    }

    #[tokio::test]
    async fn caches_positive_and_negative_answers() {
        let inner = Arc::new(Counting::default());
        let v = CachingValidator::new(
            inner.clone(),
            100,
            Duration::from_secs(60),
            Duration::from_secs(10),
        );
        for _ in 0..40 {
            assert!(v.validate("good").await.unwrap().is_some());
            assert!(v.validate("bad").await.unwrap().is_none());
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            v.cache_stats(),
            Some(CacheStats {
                hits: 78,
                misses: 2
            })
        );
        // A token about to expire is never cached past its expiry.
        v.validate("short").await.unwrap();
        v.validate("short").await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
        assert_eq!(inner.cache_stats(), None, "only caches keep statistics");
    }

    #[tokio::test]
    async fn expired_entries_are_asked_again() {
        let inner = Arc::new(Counting::default());
        let v = CachingValidator::new(
            inner.clone(),
            100,
            Duration::from_millis(20),
            Duration::from_millis(20),
        );
        v.validate("good").await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        v.validate("good").await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let inner = Arc::new(Counting {
            fail: true,
            ..Default::default()
        });
        let v = CachingValidator::new(
            inner.clone(),
            100,
            Duration::from_secs(60),
            Duration::from_secs(10),
        );
        assert!(v.validate("good").await.is_err());
        assert!(v.validate("good").await.is_err());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn scopes_in_both_shapes() {
        let a: Scopes = serde_json::from_str(r#"["uid","application.write"]"#).unwrap();
        let b: Scopes = serde_json::from_str(r#""uid application.write""#).unwrap();
        assert_eq!(a.into_set(), b.into_set());
    }
}
