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
    /// The user or service (`created_by`, the audit log).
    pub uid: String,
    /// `/employees`, `/services`, or whatever the identity provider uses.
    pub realm: String,
    /// What the token allows (`application.write`, `application.write_all`, ...).
    pub scopes: BTreeSet<String>,
    /// Seconds the token stays valid, when the endpoint says.
    pub expires_in: Option<u64>,
    /// The teams the token itself vouches for (an OIDC issuer's team claim), used by the push
    /// rules instead of the team directory; `None` (token-info, introspection, OIDC without a
    /// team claim): ask the team directory.
    pub teams: Option<BTreeSet<String>>,
}

impl TokenInfo {
    /// Whether the token holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

/// Checks tokens. `Ok(None)` means the token is not valid (unknown, expired, revoked);
/// `Err(Error::Unavailable)` means the question could not be answered.
#[async_trait]
pub trait TokenValidator: Send + Sync + std::fmt::Debug + 'static {
    /// What `token` says about its bearer, `Ok(None)` or [`Error::Unauthorized`] when it is
    /// not valid, [`Error::Unavailable`] when that cannot be found out now.
    async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, Error>;

    /// How a caching validator has fared, for metrics; `None` for one that does not cache.
    fn cache_stats(&self) -> Option<CacheStats> {
        None
    }
}

/// Answers served from a validator's cache and answers it had to ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers served from the cache.
    pub hits: u64,
    /// Answers the cache had to ask for.
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
fn classify(status: reqwest::StatusCode, what: &'static str) -> Result<bool, Error> {
    if status.is_success() {
        Ok(true)
    } else if matches!(status.as_u16(), 400 | 401 | 403 | 404) {
        Ok(false)
    } else {
        Err(crate::unavailable(what, format!("it answered {status}")))
    }
}

/// Zalando-style token-info: `GET <url>` with `Authorization: Bearer <token>`, answering
/// `{"uid":..,"realm":..,"scope":[..],"expires_in":..}`. The STUPS endpoint takes the token as
/// this header or as an `access_token` query parameter; the header keeps it out of URLs, and
/// so out of access logs, proxies and error messages.
#[derive(Debug, Clone)]
pub struct TokenInfoValidator {
    url: String,
    http: reqwest::Client,
}

impl TokenInfoValidator {
    /// Ask `url`, waiting at most `timeout`.
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
        let what = "token-info service";
        let resp = self
            .http
            .get(&self.url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| {
                crate::unavailable(what, format!("it {}", crate::describe(e, &[token])))
            })?;
        if !classify(resp.status(), what)? {
            return Ok(None);
        }
        let body: TokenInfoBody = crate::read_json(resp, what, "token info", &[token]).await?;
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
            teams: None,
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
    /// Ask `url` as client `client_id`, waiting at most `timeout`.
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
        let what = "token introspection endpoint";
        let secrets = [token, self.client_secret.as_str()];
        let resp = self
            .http
            .post(&self.url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&[("token", token)])
            .send()
            .await
            .map_err(|e| {
                crate::unavailable(what, format!("it {}", crate::describe(e, &secrets)))
            })?;
        // The introspection endpoint refusing *us* is a configuration fault, not a bad token.
        if matches!(resp.status().as_u16(), 401 | 403) {
            return Err(crate::unavailable(
                what,
                format!(
                    "it refused the server's client credentials ({})",
                    resp.status()
                ),
            ));
        }
        if !classify(resp.status(), what)? {
            return Ok(None);
        }
        let body: IntrospectionBody = crate::read_json(resp, what, "RFC 7662", &secrets).await?;
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
            teams: None,
        }))
    }
}

/// A fixed table of tokens: the in-memory validator, for tests and for embedding.
#[derive(Debug, Clone, Default)]
pub struct StaticValidator {
    tokens: HashMap<String, TokenInfo>,
}

impl StaticValidator {
    /// Exactly these tokens are valid, each with its info.
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
/// not forty. An entry never outlives the token; a failure to validate is never remembered.
///
/// Entries are keyed by the SHA-256 of the token, so a key is 32 bytes however long the token,
/// and the cache is bounded in bytes (an invalid token's entry weighs about 200 bytes, a valid
/// one's that plus its uid, realm and scopes): a flood of distinct bogus tokens evicts older
/// entries instead of growing memory. The token itself is never stored.
#[derive(Debug)]
pub struct CachingValidator {
    inner: Arc<dyn TokenValidator>,
    cache: quick_cache::sync::Cache<TokenKey, CacheEntry, EntryWeight>,
    positive_ttl: Duration,
    negative_ttl: Duration,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

type TokenKey = [u8; 32];
type CacheEntry = (Option<TokenInfo>, Instant);

fn token_key(token: &str) -> TokenKey {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// What an entry costs beyond its strings: the key, the entry's fixed part, and quick_cache's
/// bookkeeping (a generous estimate, so that the budget is an upper bound).
const ENTRY_OVERHEAD: u64 = (size_of::<TokenKey>() + size_of::<CacheEntry>() + 64) as u64;

// The documented bound (about 200 bytes an invalid token, docs/AUTHENTICATION.md) holds.
const _: () = assert!(ENTRY_OVERHEAD <= 256);

/// What a scope costs beyond its bytes: its `String` and a share of a B-tree node.
const SCOPE_OVERHEAD: u64 = (size_of::<String>() + 16) as u64;

/// The bytes an entry holds: [`ENTRY_OVERHEAD`] (about 200 bytes; all of a negative entry)
/// plus, for a valid token, its uid, realm and scopes.
fn entry_weight(answer: &Option<TokenInfo>) -> u64 {
    ENTRY_OVERHEAD
        + answer.as_ref().map_or(0, |info| {
            (info.uid.len() + info.realm.len()) as u64
                + info
                    .scopes
                    .iter()
                    .chain(info.teams.iter().flatten())
                    .map(|s| s.len() as u64 + SCOPE_OVERHEAD)
                    .sum::<u64>()
        })
}

#[derive(Debug, Clone, Copy)]
struct EntryWeight;

impl quick_cache::Weighter<TokenKey, CacheEntry> for EntryWeight {
    fn weight(&self, _key: &TokenKey, val: &CacheEntry) -> u64 {
        entry_weight(&val.0)
    }
}

impl CachingValidator {
    /// A cache holding at most `max_bytes` of answers, as weighed by `entry_weight`.
    pub fn new(
        inner: Arc<dyn TokenValidator>,
        max_bytes: u64,
        positive_ttl: Duration,
        negative_ttl: Duration,
    ) -> CachingValidator {
        let estimated_entries = usize::try_from(max_bytes / ENTRY_OVERHEAD)
            .unwrap_or(usize::MAX)
            .max(1);
        CachingValidator {
            inner,
            cache: quick_cache::sync::Cache::with_weighter(
                estimated_entries,
                max_bytes,
                EntryWeight,
            ),
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
        // No identity service issues such tokens: not worth a round trip or an entry.
        if token.len() > crate::MAX_TOKEN_LEN {
            return Ok(None);
        }
        let key = token_key(token);
        let now = Instant::now();
        if let Some((answer, until)) = self.cache.get(&key) {
            if until > now {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(answer);
            }
            self.cache.remove(&key);
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
            self.cache.insert(key, (answer.clone(), now + ttl));
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
        reject_all: bool,
    }

    #[async_trait]
    impl TokenValidator for Counting {
        async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(crate::unavailable(
                    "token-info service",
                    "it is down".into(),
                ));
            }
            Ok((token != "bad" && !self.reject_all).then(|| TokenInfo {
                uid: "alice".into(),
                realm: "/employees".into(),
                scopes: BTreeSet::new(),
                expires_in: if token == "short" { Some(0) } else { None },
                teams: None,
            }))
        }
    }

    #[tokio::test]
    async fn caches_positive_and_negative_answers() {
        let inner = Arc::new(Counting::default());
        let v = CachingValidator::new(
            inner.clone(),
            64 << 10,
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
            64 << 10,
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
            64 << 10,
            Duration::from_secs(60),
            Duration::from_secs(10),
        );
        assert!(v.validate("good").await.is_err());
        assert!(v.validate("good").await.is_err());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn overlong_tokens_are_refused_without_asking() {
        let inner = Arc::new(Counting::default());
        let v = CachingValidator::new(
            inner.clone(),
            64 << 10,
            Duration::from_secs(60),
            Duration::from_secs(10),
        );
        for len in [crate::MAX_TOKEN_LEN + 1, 64 << 10] {
            assert_eq!(v.validate(&"g".repeat(len)).await.unwrap(), None);
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 0);
        assert_eq!(v.cache.len(), 0, "nothing remembered about them either");
        // The longest acceptable token is still asked about.
        let longest = "g".repeat(crate::MAX_TOKEN_LEN);
        assert!(v.validate(&longest).await.unwrap().is_some());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_cache_is_bounded_in_bytes_whatever_the_token_length() {
        let inner = Arc::new(Counting {
            reject_all: true,
            ..Default::default()
        });
        let budget = 256 << 10;
        let v = CachingValidator::new(
            inner.clone(),
            budget,
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        // 10,000 distinct bogus tokens of 8 KiB: 80 MiB if the cache kept them.
        for i in 0..10_000u32 {
            let mut token = format!("{i:08}");
            token.push_str(&"x".repeat(crate::MAX_TOKEN_LEN - token.len()));
            assert_eq!(v.validate(&token).await.unwrap(), None);
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 10_000);
        assert!(
            v.cache.weight() <= budget,
            "{} > {budget}",
            v.cache.weight()
        );
        assert!(v.cache.len() > 100, "it still caches: {}", v.cache.len());
        assert_eq!(entry_weight(&None), ENTRY_OVERHEAD);
        // What is kept is a 32-byte digest, not the token.
        let key = token_key(&"x".repeat(crate::MAX_TOKEN_LEN));
        assert_eq!(key.len(), 32);
    }

    #[test]
    fn scopes_in_both_shapes() {
        let a: Scopes = serde_json::from_str(r#"["uid","application.write"]"#).unwrap();
        let b: Scopes = serde_json::from_str(r#""uid application.write""#).unwrap();
        assert_eq!(a.into_set(), b.into_set());
    }
}
