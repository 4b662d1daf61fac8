//! `docker-credential-pierone`: the Docker credential-helper protocol, handing out a fresh
//! OAuth 2.0 token as the password of user `oauth2`.
//!
//! Nothing is stored: `store` and `erase` succeed without keeping anything, because the
//! token is obtained anew from the configured sources each time Docker asks (the last of them
//! the token `pierone login` stored for the registry). `--help` and `--version` answer without
//! reading standard input, so that a person trying them at a terminal is not left waiting.

use std::io::{Read, Write};

use crate::obtain_token;

/// Run the helper for `action` (`get`, `store`, `erase`, `list`), reading Docker's request
/// from `input` and answering on `output`. Returns the process exit code.
pub async fn credential_helper(action: &str, input: &mut dyn Read, output: &mut dyn Write) -> i32 {
    match action {
        "--help" | "-h" | "help" => {
            let _ = write!(output, "{USAGE}");
            return 0;
        }
        "--version" | "-V" | "version" => {
            let _ = writeln!(
                output,
                "docker-credential-pierone {}",
                env!("CARGO_PKG_VERSION")
            );
            return 0;
        }
        // No action: a person at a terminal, not Docker, which always names one.
        "" => {
            let _ = write!(output, "{USAGE}");
            return 1;
        }
        _ => {}
    }
    let mut request = String::new();
    if input.read_to_string(&mut request).is_err() {
        let _ = writeln!(output, "cannot read the request from standard input");
        return 1;
    }
    match action {
        "get" => {
            let server = request.trim();
            let explicit = std::env::var("PIERONE_TOKEN").ok();
            match obtain_token(explicit.as_deref(), Some(registry_host(server).as_str())).await {
                Ok(token) => {
                    let answer = serde_json::json!({
                        "ServerURL": server,
                        "Username": "oauth2",
                        "Secret": token.secret,
                    });
                    let _ = writeln!(output, "{answer}");
                    0
                }
                Err(e) => {
                    let _ = writeln!(output, "{e}");
                    1
                }
            }
        }
        "store" | "erase" => 0,
        "list" => {
            let _ = writeln!(output, "{{}}");
            0
        }
        other => {
            let _ = writeln!(
                output,
                "unknown action {other:?}: expected get, store, erase or list (see --help)"
            );
            1
        }
    }
}

/// `host[:port]` of what Docker sends as the server (a host, or a URL).
fn registry_host(server: &str) -> String {
    let s = server.split_once("://").map_or(server, |(_, rest)| rest);
    s.split('/').next().unwrap_or(s).to_owned()
}

const USAGE: &str = "\
docker-credential-pierone: the Docker credential helper of the pierone registry.

Docker (and podman, skopeo, buildah) run it; `pierone login` registers it in
~/.docker/config.json (credHelpers) for the registry's host.

Usage: docker-credential-pierone <get|store|erase|list>
       docker-credential-pierone --help | --version

  get     read a registry host on standard input, print {\"ServerURL\", \"Username\":
          \"oauth2\", \"Secret\": <OAuth 2.0 token>} as JSON
  store   accepted and ignored: tokens are obtained anew each time
  erase   accepted and ignored
  list    print {}

The token comes from the first source set up: PIERONE_TOKEN; OAUTH2_ACCESS_TOKENS
(pierone=<token>); $CREDENTIALS_DIR/pierone-token-secret; the OAuth 2.0 password grant at
OAUTH2_ACCESS_TOKEN_URL with $CREDENTIALS_DIR/user.json and client.json; the token
`pierone login` stored for the registry.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn protocol_actions() {
        let mut out = Vec::new();
        assert_eq!(
            credential_helper(
                "store",
                &mut &br#"{"ServerURL":"x","Username":"u","Secret":"s"}"#[..],
                &mut out
            )
            .await,
            0
        );
        assert_eq!(
            credential_helper("erase", &mut &b"x"[..], &mut out).await,
            0
        );
        let mut out = Vec::new();
        assert_eq!(credential_helper("list", &mut &b""[..], &mut out).await, 0);
        assert_eq!(String::from_utf8(out).unwrap().trim(), "{}");
        let mut out = Vec::new();
        assert_eq!(
            credential_helper("frobnicate", &mut &b""[..], &mut out).await,
            1
        );
    }

    /// A reader that fails the test if read: `--help` and `--version` must not wait for input.
    struct NoInput;
    impl Read for NoInput {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("read standard input")
        }
    }

    #[tokio::test]
    async fn help_and_version_answer_without_input() {
        for action in ["--help", "-h", "help"] {
            let mut out = Vec::new();
            assert_eq!(credential_helper(action, &mut NoInput, &mut out).await, 0);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("Usage: docker-credential-pierone <get|store|erase|list>"));
        }
        let mut out = Vec::new();
        assert_eq!(
            credential_helper("--version", &mut NoInput, &mut out).await,
            0
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("docker-credential-pierone {}\n", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn hosts_of_servers() {
        assert_eq!(registry_host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(registry_host("https://r.example/v2/"), "r.example");
    }
}
