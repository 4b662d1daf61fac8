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
//! This crate is an HTTP *client* of identity services; serving HTTP is the registry crate's
//! business.

mod credentials;
#[cfg(test)]
mod http_tests;
mod rules;
mod teams;
mod token;

pub use credentials::parse_authorization;
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
        team: String,
        uid: String,
        why: String,
    },
    /// The token or team service could not be asked; we never guess.
    #[error("cannot check credentials right now: {0}")]
    Unavailable(String),
    /// Configuration that cannot work (unreadable teams file, bad URL).
    #[error("authorization is misconfigured: {0}")]
    Config(String),
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
