//! The `pierone` command-line client and the `docker-credential-pierone` helper.
//!
//! Employees and CI service users drive the Pier One API with it: list teams, artifacts and
//! tags, find images, read scm-source, and log Docker in through a credential helper that
//! hands out fresh OAuth 2.0 tokens. The binaries in `bins/` only call [`run`] and
//! [`credential_helper`].

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
    #[error("no registry URL: pass --url, set PIERONE_URL, or run `pierone login --url URL`")]
    NoUrl,
    #[error("cannot reach {url}: {why}")]
    Unreachable { url: String, why: String },
    /// `what` names the token sent and where it came from; `hint` says what would help.
    #[error("{url} refused {what} (401): {hint}")]
    Unauthorized {
        url: String,
        what: String,
        hint: String,
    },
    #[error("access denied (403): {0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("this is not a Pier One API at {url} ({why})")]
    NotPierOne { url: String, why: String },
    #[error("the registry answered {status}: {body}")]
    Unexpected { status: u16, body: String },
    /// No token source is set up at all.
    #[error("no OAuth 2.0 token: {0}")]
    NoToken(String),
    /// A token source is set up but did not yield a token: `from` names it.
    #[error("cannot get an OAuth 2.0 token from {from}: {why}")]
    TokenSourceFailed { from: String, why: String },
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("{0}")]
    Usage(String),
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
