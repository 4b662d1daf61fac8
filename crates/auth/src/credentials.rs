//! Reading a bearer token out of an `Authorization` header value.

use base64::Engine;

use crate::Error;

/// The token in `Authorization: Bearer <token>`, `Token <token>` (Pier One's CLI), or
/// `Basic base64(oauth2:<token>)` (what `docker login -u oauth2 -p <token>`, podman and skopeo
/// send). Any other Basic user is refused: passwords are not tokens.
pub fn parse_authorization(value: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::Unauthorized(why.to_owned());
    let (scheme, rest) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| bad("malformed Authorization header"))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        if rest.is_empty() {
            return Err(bad("empty bearer token"));
        }
        return Ok(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| bad("Basic credentials are not valid base64"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| bad("Basic credentials are not UTF-8"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad("Basic credentials lack a ':'"))?;
        if user != "oauth2" {
            return Err(bad(
                "log in with user \"oauth2\" and an OAuth 2.0 access token as the password",
            ));
        }
        if password.is_empty() {
            return Err(bad("empty token in Basic credentials"));
        }
        return Ok(password.to_owned());
    }
    Err(bad(
        "unsupported Authorization scheme; use Bearer or Basic oauth2:<token>",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(parse_authorization("Bearer abc").unwrap(), "abc");
        assert_eq!(parse_authorization("bearer  abc ").unwrap(), "abc");
        assert_eq!(parse_authorization("Token abc").unwrap(), "abc");
        assert_eq!(parse_authorization(&basic("oauth2:abc")).unwrap(), "abc");
        assert_eq!(parse_authorization(&basic("oauth2:a:b")).unwrap(), "a:b");
    }

    #[test]
    fn refused_forms() {
        for v in [
            "",
            "Bearer",
            "Bearer ",
            "Digest abc",
            "Basic !!!",
            &basic("alice:secret"),
            &basic("oauth2:"),
            &basic("oauth2"),
        ] {
            assert!(
                matches!(parse_authorization(v), Err(Error::Unauthorized(_))),
                "{v:?}"
            );
        }
    }
}
