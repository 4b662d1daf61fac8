//! Reading a bearer token out of an `Authorization` header value.

use base64::Engine;

use crate::Error;

/// The longest token accepted, in bytes. Real access tokens (JWTs included) are one or two
/// KiB; anything longer is refused as invalid before any identity service is asked or any
/// cache grows, so that bogus tokens cost neither a round trip nor memory.
pub const MAX_TOKEN_LEN: usize = 8 << 10;

/// The longest header value that can carry a token of [`MAX_TOKEN_LEN`]: `Basic` and the
/// base64 of `oauth2:<token>`, with room for whitespace. Longer values are refused before
/// they are decoded.
const MAX_VALUE_LEN: usize =
    "Basic ".len() + (MAX_TOKEN_LEN + "oauth2:".len()).div_ceil(3) * 4 + 64;

/// The token in `Authorization: Bearer <token>`, `Token <token>` (Pier One's CLI), or
/// `Basic base64(oauth2:<token>)` (what `docker login -u oauth2 -p <token>`, podman and skopeo
/// send). Any other Basic user is refused: passwords are not tokens.
///
/// ```
/// use pierone_auth::{Error, parse_authorization};
///
/// assert_eq!(parse_authorization("Bearer eyJhbGciOi.e30.c2ln").unwrap(), "eyJhbGciOi.e30.c2ln");
/// // `docker login -u oauth2 -p tok3n`: Basic base64("oauth2:tok3n").
/// assert_eq!(parse_authorization("Basic b2F1dGgyOnRvazNu").unwrap(), "tok3n");
/// // A user's password is not a token: Basic base64("alice:secret").
/// assert!(matches!(
///     parse_authorization("Basic YWxpY2U6c2VjcmV0"),
///     Err(Error::Unauthorized(_))
/// ));
/// ```
pub fn parse_authorization(value: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::Unauthorized(why.to_owned());
    let too_long = || bad(&format!("the token is longer than {MAX_TOKEN_LEN} bytes"));
    if value.len() > MAX_VALUE_LEN {
        return Err(too_long());
    }
    let (scheme, rest) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| bad("malformed Authorization header"))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        if rest.is_empty() {
            return Err(bad("empty bearer token"));
        }
        if rest.len() > MAX_TOKEN_LEN {
            return Err(too_long());
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
        if password.len() > MAX_TOKEN_LEN {
            return Err(too_long());
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
    fn tokens_up_to_the_limit_only() {
        let longest = "t".repeat(MAX_TOKEN_LEN);
        let over = "t".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            parse_authorization(&format!("Bearer {longest}")).unwrap(),
            longest
        );
        assert_eq!(
            parse_authorization(&basic(&format!("oauth2:{longest}"))).unwrap(),
            longest
        );
        for v in [
            format!("Bearer {over}"),
            format!("Token {over}"),
            basic(&format!("oauth2:{over}")),
            format!("Bearer {}", "t".repeat(64 << 10)),
            basic(&format!("oauth2:{}", "t".repeat(64 << 10))),
        ] {
            match parse_authorization(&v) {
                Err(Error::Unauthorized(why)) => assert!(why.contains("longer than"), "{why}"),
                other => panic!("{} bytes: {other:?}", v.len()),
            }
        }
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
