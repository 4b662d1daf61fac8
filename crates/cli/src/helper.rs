//! `docker-credential-pierone`: the Docker credential-helper protocol, handing out a fresh
//! OAuth 2.0 token as the password of user `oauth2`.
//!
//! Nothing is stored: `store` and `erase` succeed without keeping anything, because the
//! token is obtained anew from the configured sources each time Docker asks.

use std::io::{Read, Write};

use crate::obtain_token;

/// Run the helper for `action` (`get`, `store`, `erase`, `list`), reading Docker's request
/// from `input` and answering on `output`. Returns the process exit code.
pub async fn credential_helper(action: &str, input: &mut dyn Read, output: &mut dyn Write) -> i32 {
    let mut request = String::new();
    if input.read_to_string(&mut request).is_err() {
        let _ = writeln!(output, "cannot read the request from standard input");
        return 1;
    }
    match action {
        "get" => {
            let server = request.trim();
            match obtain_token(std::env::var("PIERONE_TOKEN").ok().as_deref()).await {
                Ok((token, _)) => {
                    let answer = serde_json::json!({
                        "ServerURL": server,
                        "Username": "oauth2",
                        "Secret": token,
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
                "unknown action {other:?}: expected get, store, erase or list"
            );
            1
        }
    }
}

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
}
