//! Who may push where: OAuth 2.0 bearer tokens checked against a token-info or RFC 7662
//! introspection endpoint, team membership from a file or from HTTP services, and Pier One's
//! rules that combine them.
//!
//! # Rules
//!
//! A push to team T is allowed when any of these holds:
//! 1. the token's scope includes `application.write_all`;
//! 2. the realm is `/employees` and the user is a member of T;
//! 3. the realm is `/services`, the scope includes `application.write`, and the service's
//!    application (its uid without the configured prefix, default `stups_`) is assigned to T.
//!
//! Any valid token with a `uid` may pull; with `public_read`, so may anonymous clients.
//!
//! # Failing closed
//!
//! When a token cannot be checked (the endpoint is down, slow, or answers nonsense), the
//! answer is [`Error::Unavailable`], never an allow. Answers are cached briefly, positive and
//! negative alike, never past a token's expiry; unavailability is never cached.
//!
//! # OIDC
//!
//! JWTs of configured OpenID Connect issuers (CI systems' tokens among them) are verified
//! locally by [`OidcValidator`] with the keys each issuer publishes; [`OidcRouter`] sends them
//! there and every other token to token-info or introspection, so both work on one server.
//!
//! This crate is an HTTP *client* of identity services; serving HTTP is the registry crate's
//! business.

#![warn(missing_docs)]

mod credentials;
#[cfg(test)]
mod http_tests;
mod oidc;
#[cfg(test)]
mod oidc_tests;
mod rules;
mod teams;
#[cfg(any(test, feature = "test-issuer"))]
pub mod test_issuer;
mod token;

pub use credentials::{MAX_TOKEN_LEN, parse_authorization};
pub use oidc::{
    LEEWAY_SECS, MAX_JWKS_KEYS, OidcIssuer, OidcRealm, OidcRefresh, OidcRouter, OidcStats,
    OidcValidator, unverified_issuer,
};
pub use rules::{Access, AuthConfig, Authorizer, Principal};
pub use teams::{FileTeams, HttpTeams, MemoryTeams, TeamDirectory};
pub use token::{
    CacheStats, CachingValidator, IntrospectionValidator, StaticValidator, TokenInfo,
    TokenInfoValidator, TokenValidator,
};

/// Why a request is not allowed, or could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No usable credentials: missing where required, malformed, unknown or expired.
    #[error("authentication required: {0}")]
    Unauthorized(String),
    /// Valid credentials without the right to do this.
    #[error("{uid} may not push to team {team}: {why}")]
    Denied {
        /// The team pushed to.
        team: String,
        /// Who tried.
        uid: String,
        /// Which rule failed, in words.
        why: String,
    },
    /// The token or team service could not be asked; we never guess. `why` completes "the
    /// SERVICE is unavailable: ...", starting with "it".
    #[error("the {service} is unavailable: {why}; retry later")]
    Unavailable {
        /// Which service: "token-info service", "OIDC issuer", ...
        service: &'static str,
        /// How it failed, starting with "it"; never quoting a secret.
        why: String,
    },
    /// Configuration that cannot work (unreadable teams file, bad URL).
    #[error("authorization is misconfigured: {0}")]
    Config(String),
}

/// A failed request to an identity service, in words that carry no secret: reqwest's own text
/// names the URL (which may hold a token or credentials), and a decoding error's source
/// quotes the answer (which may echo the token), so neither is used. What is left (the kind
/// of failure and the transport's reasons, such as "Connection refused") is then scrubbed of
/// `secrets` in case some layer quoted one anyway.
pub(crate) fn describe(e: reqwest::Error, secrets: &[&str]) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot be reached"
    } else {
        "failed"
    };
    let e = e.without_url();
    let mut msg = format!("{kind}: {e}");
    if !e.is_decode() {
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
    }
    redact(msg, secrets)
}

/// `msg` with every occurrence of each secret replaced.
pub(crate) fn redact(mut msg: String, secrets: &[&str]) -> String {
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if msg.contains(s) {
            msg = msg.replace(s, "[redacted]");
        }
    }
    msg
}

/// The largest answer read from an identity service: theirs are a few hundred bytes, and a
/// misbehaving one must not make us buffer without end.
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// Read a JSON answer of an identity service. A body that is not what we expect is described
/// by where it went wrong, never by quoting it: it may echo the token.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    mut resp: reqwest::Response,
    what: &'static str,
    expected: &str,
    secrets: &[&str],
) -> Result<T, Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| unavailable(what, format!("it {}", describe(e, secrets))))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(unavailable(
                what,
                format!("it answered more than {MAX_ANSWER_BYTES} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| {
        unavailable(
            what,
            format!(
                "it answered something that is not {expected} ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })
}

/// [`Error::Unavailable`] for `service`.
pub(crate) fn unavailable(service: &'static str, why: String) -> Error {
    Error::Unavailable { service, why }
}

/// The HTTP client used for identity services: bounded time, no redirects to follow blindly.
pub(crate) fn http_client(timeout: std::time::Duration) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
}
