//! OpenID Connect: JWT access tokens (CI systems' OIDC tokens among them) verified against the
//! keys their issuer publishes, and [`OidcRouter`], which lets them share a server with
//! token-info or introspection tokens.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{Error, TokenInfo, TokenValidator};

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// The most keys taken from one JWK set: issuers publish two or three (the current key and
/// the next or previous one); more is a misbehaving issuer, and each key costs a parse.
pub const MAX_JWKS_KEYS: usize = 32;

/// The smallest RSA modulus accepted, in bits: shorter keys can be factored.
const MIN_RSA_BITS: usize = 2048;

/// The service named in [`Error::Unavailable`].
const SERVICE: &str = "OIDC issuer";

/// The realm an issuer's tokens belong to, which decides which push rule applies to them
/// (docs/AUTHENTICATION.md, "Rules").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OidcRealm {
    /// People: a push needs membership of the team.
    Employees,
    /// Machines (CI jobs): a push needs the scope `application.write` and the team.
    Services,
}

impl OidcRealm {
    /// The realm as [`TokenInfo::realm`] carries it: `/employees` or `/services`.
    pub fn as_str(self) -> &'static str {
        match self {
            OidcRealm::Employees => "/employees",
            OidcRealm::Services => "/services",
        }
    }
}

impl std::str::FromStr for OidcRealm {
    type Err = Error;

    fn from_str(s: &str) -> Result<OidcRealm, Error> {
        match s.trim_start_matches('/') {
            "employees" => Ok(OidcRealm::Employees),
            "services" => Ok(OidcRealm::Services),
            other => Err(Error::Config(format!(
                "OIDC realm {other:?}: use employees or services"
            ))),
        }
    }
}

/// One trusted issuer and how its tokens map onto a [`TokenInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIssuer {
    /// The issuer URL, exactly as the tokens' `iss` claim and the discovery document's
    /// `issuer` spell it.
    pub issuer: String,
    /// The `aud` a token must carry: tokens minted for another service are refused.
    pub audience: String,
    /// The claim that names the principal (default `sub`).
    pub uid_claim: String,
    /// The realm of every token of this issuer.
    pub realm: OidcRealm,
    /// The claim listing the principal's teams (a string or an array of strings), e.g.
    /// `repository_owner` (GitHub Actions) or `namespace_path` (GitLab CI). Without it the
    /// team directory is asked, as for token-info tokens.
    pub team_claim: Option<String>,
    /// Scopes every token of this issuer holds, in addition to its `scope` or `scp` claim
    /// (CI tokens carry none; `application.write` lets a services-realm issuer push).
    pub scopes: BTreeSet<String>,
}

impl OidcIssuer {
    /// An issuer whose tokens must name `audience`, with the defaults: uid from `sub`, realm
    /// services, teams from the team directory, no granted scopes.
    pub fn new(issuer: &str, audience: &str) -> OidcIssuer {
        OidcIssuer {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            uid_claim: "sub".to_owned(),
            realm: OidcRealm::Services,
            team_claim: None,
            scopes: BTreeSet::new(),
        }
    }
}

/// How often keys are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OidcRefresh {
    /// Keys older than this are fetched again (an issuer rotating keys publishes the new one
    /// ahead of using it).
    pub max_age: Duration,
    /// After a successful fetch, the next one waits at least this long, however many tokens
    /// with unknown key ids arrive: a flood of bogus `kid`s must not hammer the issuer.
    pub min_interval: Duration,
    /// After a failed fetch, the next one waits at least this long (the `Retry-After` the
    /// client is given).
    pub retry_interval: Duration,
}

impl Default for OidcRefresh {
    fn default() -> Self {
        OidcRefresh {
            max_age: Duration::from_secs(3600),
            min_interval: Duration::from_secs(30),
            retry_interval: Duration::from_secs(5),
        }
    }
}

/// Verifications by outcome, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OidcStats {
    /// Tokens accepted.
    pub accepted: u64,
    /// Tokens refused (expired, wrong audience, bad signature, ...).
    pub refused: u64,
    /// Tokens that could not be checked because the issuer could not be asked for keys.
    pub unavailable: u64,
    /// Requests for JWK sets sent to issuers, successful or not.
    pub key_fetches: u64,
}

/// Verifies JWTs of the configured issuers: signature (RS256, ES256 or EdDSA, with the key
/// the issuer publishes under the token's `kid`), `iss`, `aud`, `exp`, `nbf` and `iat` (with
/// [`LEEWAY_SECS`] of skew). A refused token is [`Error::Unauthorized`] naming why, never
/// quoting the token; an issuer that cannot be asked for keys is [`Error::Unavailable`].
#[derive(Debug)]
pub struct OidcValidator {
    issuers: HashMap<String, IssuerState>,
    http: reqwest::Client,
    refresh: OidcRefresh,
    accepted: AtomicU64,
    refused: AtomicU64,
    unavailable: AtomicU64,
    key_fetches: AtomicU64,
}

#[derive(Debug)]
struct IssuerState {
    config: OidcIssuer,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching, so that concurrent requests wait for one fetch instead of each
    /// starting their own; remembers when the last one ended and how.
    fetch: tokio::sync::Mutex<Option<(Instant, Result<(), Error>)>>,
}

#[derive(Debug)]
struct KeySet {
    keys: Vec<Key>,
    fetched: Instant,
}

struct Key {
    kid: Option<String>,
    /// The one algorithm this key verifies, from its `kty` and `crv` (and its `alg`, when the
    /// issuer states it).
    alg: Algorithm,
    decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Debug, Deserialize)]
struct JwkSet {
    keys: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

fn refused(why: impl Into<String>) -> Error {
    Error::Unauthorized(why.into())
}

fn b64url(part: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()
}

/// The three parts of a compact JWS, when `token` has that shape: three base64url parts
/// separated by dots, of which only the signature may be empty (an unsigned token, refused
/// later by name).
fn jwt_parts(token: &str) -> Option<[&str; 3]> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts[..] else { return None };
    let b64 = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (!h.is_empty() && !p.is_empty() && b64(h) && b64(p) && b64(s)).then_some([h, p, s])
}

/// The `iss` claim of a JWT-shaped token, read without verifying anything: only to route the
/// token to the validator that can verify it.
pub fn unverified_issuer(token: &str) -> Option<String> {
    let [_, payload, _] = jwt_parts(token)?;
    let claims: Map<String, Value> = serde_json::from_slice(&b64url(payload)?).ok()?;
    match claims.get("iss") {
        Some(Value::String(iss)) => Some(iss.clone()),
        _ => None,
    }
}

/// Whether `url` may serve keys: HTTPS, or plain HTTP to the machine itself (tests, a
/// sidecar). Keys fetched over plain HTTP from elsewhere could be swapped on the way.
fn trusted_transport(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host_str() {
            Some("localhost") => true,
            Some(host) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        },
        _ => false,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A verification key from one JWK, or `None` for a key this validator does not use
/// (encryption keys, symmetric keys, other curves, short RSA moduli, unsupported `alg`s).
fn key_from_jwk(jwk: &Value) -> Option<Key> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    if field("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let (alg, decoding) = match (field("kty")?, field("crv")) {
        ("RSA", _) => {
            let n = b64url(field("n")?)?;
            let e = b64url(field("e")?)?;
            let bits = n
                .iter()
                .position(|b| *b != 0)
                .map_or(0, |i| (n.len() - i) * 8);
            if bits < MIN_RSA_BITS || e.is_empty() {
                return None;
            }
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_raw_components(&n, &e),
            )
        }
        ("EC", Some("P-256")) => {
            let (x, y) = (field("x")?, field("y")?);
            if b64url(x)?.len() != 32 || b64url(y)?.len() != 32 {
                return None;
            }
            (
                Algorithm::ES256,
                DecodingKey::from_ec_components(x, y).ok()?,
            )
        }
        ("OKP", Some("Ed25519")) => {
            let x = field("x")?;
            if b64url(x)?.len() != 32 {
                return None;
            }
            (Algorithm::EdDSA, DecodingKey::from_ed_components(x).ok()?)
        }
        _ => return None,
    };
    let name = match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "EdDSA",
    };
    if field("alg").is_some_and(|a| a != name) {
        return None;
    }
    Some(Key {
        kid: field("kid").map(str::to_owned),
        alg,
        decoding,
    })
}

/// Which key verifies a token: `Ok(None)` when the issuer publishes none under its `kid`.
fn find_key<'k>(
    keys: &'k KeySet,
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<Option<&'k Key>, Error> {
    match kid {
        Some(kid) => match keys.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
            Some(k) if k.alg == alg => Ok(Some(k)),
            Some(k) => Err(refused(format!(
                "the token's alg {alg:?} does not match its key, which is for {:?}",
                k.alg
            ))),
            None => Ok(None),
        },
        None => {
            let mut fitting = keys.keys.iter().filter(|k| k.alg == alg);
            match (fitting.next(), fitting.next()) {
                (Some(k), None) => Ok(Some(k)),
                (None, _) => Ok(None),
                (Some(_), Some(_)) => Err(refused(
                    "the token names no key id (kid) and its issuer publishes several keys",
                )),
            }
        }
    }
}

/// A string or an array of strings (`aud`, `scp`, team claims); other array elements are
/// ignored.
fn strings(v: &Value) -> BTreeSet<String> {
    match v {
        Value::String(s) => BTreeSet::from([s.clone()]),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// Why `jsonwebtoken` refused a token, in words for the client.
fn describe_jwt_error(e: &jsonwebtoken::errors::Error, cfg: &OidcIssuer) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired (exp)".to_owned(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        K::InvalidAudience => format!(
            "the token is for another audience (aud); this registry accepts {:?}",
            cfg.audience
        ),
        K::InvalidIssuer => "the token's issuer is not trusted (iss)".to_owned(),
        K::InvalidSignature => "the token's signature is not valid".to_owned(),
        K::MissingRequiredClaim(c) => format!("the token lacks the claim {c}"),
        K::InvalidClaimFormat(c) => format!("the token's claim {c} is malformed"),
        K::InvalidAlgorithm => "the token's alg does not match its key".to_owned(),
        _ => "the token is not a well-formed JWT".to_owned(),
    }
}

impl OidcValidator {
    /// A validator trusting `issuers`, asking them with `timeout`, fetching keys as
    /// `refresh` says. Nothing is fetched until the first token arrives: a server whose
    /// issuer is down starts, and answers 503 until the issuer is back.
    pub fn new(
        issuers: Vec<OidcIssuer>,
        timeout: Duration,
        refresh: OidcRefresh,
    ) -> Result<OidcValidator, Error> {
        let mut map = HashMap::new();
        for config in issuers {
            let url = reqwest::Url::parse(&config.issuer)
                .map_err(|e| Error::Config(format!("OIDC issuer {:?}: {e}", config.issuer)))?;
            if !trusted_transport(&url) {
                return Err(Error::Config(format!(
                    "OIDC issuer {:?}: keys must come over https (plain http only on loopback)",
                    config.issuer
                )));
            }
            if config.audience.is_empty() {
                return Err(Error::Config(format!(
                    "OIDC issuer {:?}: an audience is required",
                    config.issuer
                )));
            }
            if config.uid_claim.is_empty() || config.team_claim.as_deref() == Some("") {
                return Err(Error::Config(format!(
                    "OIDC issuer {:?}: empty claim name",
                    config.issuer
                )));
            }
            let issuer = config.issuer.clone();
            let state = IssuerState {
                config,
                keys: RwLock::new(None),
                fetch: tokio::sync::Mutex::new(None),
            };
            if map.insert(issuer.clone(), state).is_some() {
                return Err(Error::Config(format!(
                    "OIDC issuer {issuer:?} is configured twice"
                )));
            }
        }
        Ok(OidcValidator {
            issuers: map,
            http: crate::http_client(timeout)?,
            refresh,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            key_fetches: AtomicU64::new(0),
        })
    }

    /// Whether tokens claiming to come from `iss` are this validator's to check.
    pub fn trusts(&self, iss: &str) -> bool {
        self.issuers.contains_key(iss)
    }

    /// Verifications so far, by outcome.
    pub fn stats(&self) -> OidcStats {
        OidcStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            key_fetches: self.key_fetches.load(Ordering::Relaxed),
        }
    }

    /// Verify `token` and map its claims. Everything that can be checked without keys is
    /// checked before any issuer is asked.
    async fn verify(&self, token: &str) -> Result<TokenInfo, Error> {
        if token.len() > crate::MAX_TOKEN_LEN {
            return Err(refused(format!(
                "the token is longer than {} bytes",
                crate::MAX_TOKEN_LEN
            )));
        }
        let [header, payload, _] =
            jwt_parts(token).ok_or_else(|| refused("the token is not a JWT"))?;
        let header: RawHeader = b64url(header)
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or_else(|| refused("the token's header is not valid"))?;
        if header.crit.is_some() {
            return Err(refused(
                "the token's header has critical extensions (crit) this registry does not know",
            ));
        }
        let alg = match header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            a if a.eq_ignore_ascii_case("none") => {
                return Err(refused("unsigned tokens (alg none) are refused"));
            }
            a if a.starts_with("HS") => {
                return Err(refused(
                    "tokens signed with a shared secret (HMAC) are refused",
                ));
            }
            _ => {
                return Err(refused(
                    "the token's alg is not supported; use RS256, ES256 or EdDSA",
                ));
            }
        };
        let claims: Map<String, Value> = b64url(payload)
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(|| refused("the token's claims are not valid"))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| refused("the token lacks the claim iss"))?;
        let issuer = self
            .issuers
            .get(iss)
            .ok_or_else(|| refused("the token's issuer is not trusted (iss)"))?;
        let cfg = &issuer.config;

        let key = self.key(issuer, header.kid.as_deref(), alg).await?;
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_audience(&[&cfg.audience]);
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| refused(describe_jwt_error(&e, cfg)))?
            .claims;

        let now = now_secs();
        if claims
            .get("iat")
            .and_then(Value::as_f64)
            .is_some_and(|iat| iat > (now + LEEWAY_SECS) as f64)
        {
            return Err(refused("the token was issued in the future (iat)"));
        }
        let uid = claims
            .get(&cfg.uid_claim)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| refused(format!("the token lacks the claim {}", cfg.uid_claim)))?;
        let mut scopes = cfg.scopes.clone();
        if let Some(Value::String(s)) = claims.get("scope") {
            scopes.extend(s.split_whitespace().map(str::to_owned));
        }
        match claims.get("scp") {
            Some(Value::String(s)) => scopes.extend(s.split_whitespace().map(str::to_owned)),
            Some(v) => scopes.extend(strings(v)),
            None => {}
        }
        // A token whose team claim is absent vouches for no team: it does not fall back
        // to the team directory, which knows nothing of this issuer's names.
        let teams = cfg
            .team_claim
            .as_ref()
            .map(|c| claims.get(c).map(strings).unwrap_or_default());
        let exp = claims.get("exp").and_then(Value::as_f64).unwrap_or(0.0);
        Ok(TokenInfo {
            uid: uid.to_owned(),
            realm: cfg.realm.as_str().to_owned(),
            scopes,
            expires_in: Some((exp as u64).saturating_sub(now)),
            teams,
        })
    }

    /// The key that verifies a token of `issuer` signed under `kid` with `alg`, fetching the
    /// issuer's keys when none are cached, when they are old, or when `kid` is unknown; each
    /// no more often than [`OidcRefresh`] allows.
    async fn key(
        &self,
        issuer: &IssuerState,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, Error> {
        let cached = issuer.keys.read().ok().and_then(|k| k.clone());
        if let Some(keys) = &cached
            && let Some(key) = find_key(keys, kid, alg)?
        {
            let key = key.decoding.clone();
            if keys.fetched.elapsed() > self.refresh.max_age {
                // A failed periodic refresh keeps the keys in use: they were the issuer's an
                // hour ago, and the failure is logged.
                let _ = self.fetch(issuer).await;
            }
            return Ok(key);
        }
        let fetched = self.fetch(issuer).await;
        let keys = issuer.keys.read().ok().and_then(|k| k.clone());
        if let Some(keys) = &keys
            && let Some(key) = find_key(keys, kid, alg)?
        {
            return Ok(key.decoding.clone());
        }
        fetched?;
        Err(refused(match kid {
            Some(_) => "the token is signed with a key (kid) its issuer does not publish",
            None => "the token names no key id (kid) and its issuer publishes no key for its alg",
        }))
    }

    /// Fetch `issuer`'s keys unless a fetch ended too recently: then the outcome of that one.
    async fn fetch(&self, issuer: &IssuerState) -> Result<(), Error> {
        let mut last = issuer.fetch.lock().await;
        if let Some((at, outcome)) = &*last {
            let wait = match outcome {
                Ok(()) => self.refresh.min_interval,
                Err(_) => self.refresh.retry_interval,
            };
            if at.elapsed() < wait {
                return outcome.clone();
            }
        }
        self.key_fetches.fetch_add(1, Ordering::Relaxed);
        let outcome = match self.fetch_keys(&issuer.config).await {
            Ok(keys) => {
                tracing::info!(
                    issuer = %issuer.config.issuer,
                    keys = keys.len(),
                    "fetched the OIDC issuer's signing keys"
                );
                let set = Arc::new(KeySet {
                    keys,
                    fetched: Instant::now(),
                });
                if let Ok(mut k) = issuer.keys.write() {
                    *k = Some(set);
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer.config.issuer, "{e}");
                Err(e)
            }
        };
        *last = Some((Instant::now(), outcome.clone()));
        outcome
    }

    /// Discovery, then the JWK set it names.
    async fn fetch_keys(&self, cfg: &OidcIssuer) -> Result<Vec<Key>, Error> {
        let unavailable = |why: String| crate::unavailable(SERVICE, why);
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            cfg.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self
            .get_json(&discovery_url, "its discovery document", "OpenID discovery")
            .await?;
        if discovery.issuer != cfg.issuer {
            return Err(unavailable(
                "its discovery document names another issuer: check --oidc-issuer".to_owned(),
            ));
        }
        let jwks_uri = reqwest::Url::parse(&discovery.jwks_uri)
            .map_err(|e| unavailable(format!("its discovery document's jwks_uri: {e}")))?;
        if !trusted_transport(&jwks_uri) {
            return Err(unavailable(
                "its discovery document's jwks_uri is not https".to_owned(),
            ));
        }
        let set: JwkSet = self
            .get_json(jwks_uri.as_str(), "its key set", "a JWK set")
            .await?;
        if set.keys.len() > MAX_JWKS_KEYS {
            return Err(unavailable(format!(
                "its key set has {} keys, more than {MAX_JWKS_KEYS}",
                set.keys.len()
            )));
        }
        Ok(set.keys.iter().filter_map(key_from_jwk).collect())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        what: &str,
        expected: &str,
    ) -> Result<T, Error> {
        let resp = self.http.get(url).send().await.map_err(|e| {
            crate::unavailable(
                SERVICE,
                format!("it did not serve {what}: it {}", crate::describe(e, &[])),
            )
        })?;
        if !resp.status().is_success() {
            return Err(crate::unavailable(
                SERVICE,
                format!("it answered {} for {what}", resp.status()),
            ));
        }
        crate::read_json(resp, SERVICE, expected, &[]).await
    }
}

#[async_trait]
impl TokenValidator for OidcValidator {
    /// Never `Ok(None)`: a refused token is [`Error::Unauthorized`] saying why.
    async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, Error> {
        let outcome = self.verify(token).await;
        let counter = match &outcome {
            Ok(_) => &self.accepted,
            Err(Error::Unavailable { .. }) => &self.unavailable,
            Err(_) => &self.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome.map(Some)
    }
}

/// Sends JWTs whose `iss` is a trusted OIDC issuer to the [`OidcValidator`], and every other
/// token to `other` (token-info or introspection, usually behind a
/// [`CachingValidator`](crate::CachingValidator)), so that both kinds work on one server.
/// Routing reads `iss` unverified; the validator it routes to verifies everything.
#[derive(Debug)]
pub struct OidcRouter {
    oidc: Arc<OidcValidator>,
    other: Option<Arc<dyn TokenValidator>>,
}

impl OidcRouter {
    /// Without `other`, tokens that are not from a trusted issuer are refused.
    pub fn new(oidc: Arc<OidcValidator>, other: Option<Arc<dyn TokenValidator>>) -> OidcRouter {
        OidcRouter { oidc, other }
    }
}

#[async_trait]
impl TokenValidator for OidcRouter {
    async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, Error> {
        let ours = unverified_issuer(token).is_some_and(|iss| self.oidc.trusts(&iss));
        match (&self.other, ours) {
            (_, true) | (None, false) => self.oidc.validate(token).await,
            (Some(other), false) => other.validate(token).await,
        }
    }

    fn cache_stats(&self) -> Option<crate::CacheStats> {
        self.other.as_ref().and_then(|o| o.cache_stats())
    }
}
