//! The `pierone` command-line client and the `docker-credential-pierone` helper.
//!
//! Employees and CI service users drive the Pier One API with it: list teams, artifacts and
//! tags, find images, read scm-source, and log Docker in through a credential helper that
//! hands out fresh OAuth 2.0 tokens. The binaries in `bins/` only call [`run`] and
//! [`credential_helper`].

#![warn(missing_docs)]

mod client;
mod commands;
mod config;
mod docker;
mod helper;
mod output;
mod token;

pub use commands::{Cli, run};
pub use docker::register_helper;
pub use helper::credential_helper;
pub use output::relative_time;
pub use token::{Token, TokenSource, obtain_token};

/// Everything that can go wrong, each worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No registry URL is configured anywhere.
    #[error("no registry URL: pass --url, set PIERONE_URL, or run `pierone login --url URL`")]
    NoUrl,
    /// The registry could not be reached; `why` names the cause (refused, DNS, TLS, ...).
    #[error("cannot reach {url}: {why}")]
    Unreachable {
        /// The registry's URL.
        url: String,
        /// The cause, worded for a terminal.
        why: String,
    },
    /// The registry refused the credentials.
    #[error("{url} refused {what} (401): {hint}")]
    Unauthorized {
        /// The registry's URL.
        url: String,
        /// The token sent and where it came from.
        what: String,
        /// What would help.
        hint: String,
    },
    /// The principal may not do this.
    #[error("access denied (403): {0}")]
    Forbidden(String),
    /// What was asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// An image prefix matches several images; the message lists them.
    #[error("{0}")]
    Ambiguous(String),
    /// The answer does not fit the Pier One API's types.
    #[error("this is not a Pier One API at {url} ({why})")]
    NotPierOne {
        /// The URL asked.
        url: String,
        /// What did not fit.
        why: String,
    },
    /// Any other answer the CLI cannot use.
    #[error("the registry answered {status}: {body}")]
    Unexpected {
        /// The HTTP status.
        status: u16,
        /// The message of the answer (or its start).
        body: String,
    },
    /// No token source is set up at all.
    #[error("no OAuth 2.0 token: {0}")]
    NoToken(String),
    /// A token source is set up but did not yield a token: `from` names it.
    #[error("cannot get an OAuth 2.0 token from {from}: {why}")]
    TokenSourceFailed {
        /// The source tried.
        from: String,
        /// Why it failed (`invalid_grant`, connection refused, timeout, ...).
        why: String,
    },
    /// A local file (configuration, token cache, Docker's config) could not be used.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// The command line asks for something impossible.
    #[error("{0}")]
    Usage(String),
    /// The audit log or a proof does not verify.
    #[error("audit verification FAILED: {0}")]
    AuditFailed(String),
    /// Not a failure: the entry is newer than the newest signed checkpoint.
    #[error("{0}")]
    NotCheckpointed(String),
}

impl Error {
    /// The process's exit code for this error: [`EXIT_NOT_CHECKPOINTED`] for an entry that is
    /// not checkpointed yet, so that scripts can retry it, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NotCheckpointed(_) => EXIT_NOT_CHECKPOINTED,
            _ => 1,
        }
    }
}

/// Exit code of `pierone audit prove` when the tag's assignment is not in a signed checkpoint
/// yet (clap's usage errors are 2).
pub const EXIT_NOT_CHECKPOINTED: u8 = 3;
