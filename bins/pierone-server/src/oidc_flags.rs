//! The `--oidc-*` flags: which OpenID Connect issuers' JWTs the server accepts and how their
//! claims map onto Pier One's principals (docs/AUTHENTICATION.md, "OIDC").

use std::sync::Arc;
use std::time::Duration;

use pierone_auth::{OidcIssuer, OidcRealm, OidcRefresh, OidcValidator};

/// Every per-issuer flag is given once (it applies to every issuer) or once per
/// `--oidc-issuer`, in the same order.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OidcArgs {
    /// Accept JWTs from this OpenID Connect issuer (repeatable), e.g.
    /// https://token.actions.githubusercontent.com. Its keys are found through
    /// <issuer>/.well-known/openid-configuration.
    #[arg(
        long = "oidc-issuer",
        env = "PIERONE_OIDC_ISSUER",
        value_delimiter = ','
    )]
    pub issuers: Vec<String>,

    /// The `aud` the issuer's tokens must carry (required with --oidc-issuer).
    #[arg(
        long = "oidc-audience",
        env = "PIERONE_OIDC_AUDIENCE",
        value_delimiter = ','
    )]
    pub audiences: Vec<String>,

    /// The claim naming the user or service [default: sub].
    #[arg(
        long = "oidc-uid-claim",
        env = "PIERONE_OIDC_UID_CLAIM",
        value_delimiter = ','
    )]
    pub uid_claims: Vec<String>,

    /// `employees` or `services`: which push rule the issuer's tokens fall under
    /// [default: services].
    #[arg(long = "oidc-realm", env = "PIERONE_OIDC_REALM", value_delimiter = ',')]
    pub realms: Vec<String>,

    /// The claim listing the principal's teams (a string or an array), e.g. repository_owner
    /// (GitHub Actions) or namespace_path (GitLab); `-` for none: the teams file or team
    /// service decides [default: none].
    #[arg(
        long = "oidc-team-claim",
        env = "PIERONE_OIDC_TEAM_CLAIM",
        value_delimiter = ','
    )]
    pub team_claims: Vec<String>,

    /// Scopes every token of the issuer holds besides its scope/scp claim, space-separated,
    /// e.g. "application.write" for CI tokens, which carry none; `-` for none [default: none].
    #[arg(
        long = "oidc-scopes",
        env = "PIERONE_OIDC_SCOPES",
        value_delimiter = ','
    )]
    pub scopes: Vec<String>,
}

/// The value of a per-issuer flag for issuer `i` of `n`.
fn nth<'a>(
    flag: &str,
    values: &'a [String],
    i: usize,
    n: usize,
) -> Result<Option<&'a str>, String> {
    match values.len() {
        0 => Ok(None),
        1 => Ok(Some(&values[0])),
        len if len == n => Ok(Some(&values[i])),
        len => Err(format!(
            "--{flag} is given {len} times for {n} --oidc-issuer: give it once, or once per issuer"
        )),
    }
}

/// A per-issuer value, `None` when absent or `-`.
fn unless_dash(v: Option<&str>) -> Option<&str> {
    v.filter(|v| !v.is_empty() && *v != "-")
}

/// The issuers the flags describe, or `None` without `--oidc-issuer`.
pub fn issuers(args: &OidcArgs) -> Result<Option<Vec<OidcIssuer>>, String> {
    let n = args.issuers.len();
    if n == 0 {
        let stray = [
            ("oidc-audience", &args.audiences),
            ("oidc-uid-claim", &args.uid_claims),
            ("oidc-realm", &args.realms),
            ("oidc-team-claim", &args.team_claims),
            ("oidc-scopes", &args.scopes),
        ];
        if let Some((flag, _)) = stray.iter().find(|(_, v)| !v.is_empty()) {
            return Err(format!("--{flag} needs --oidc-issuer"));
        }
        return Ok(None);
    }
    let mut out = Vec::with_capacity(n);
    for (i, url) in args.issuers.iter().enumerate() {
        let audience = nth("oidc-audience", &args.audiences, i, n)?
            .ok_or_else(|| format!("--oidc-issuer {url} needs --oidc-audience"))?;
        let mut issuer = OidcIssuer::new(url, audience);
        if let Some(c) = nth("oidc-uid-claim", &args.uid_claims, i, n)? {
            issuer.uid_claim = c.to_owned();
        }
        if let Some(r) = nth("oidc-realm", &args.realms, i, n)? {
            issuer.realm = r.parse::<OidcRealm>().map_err(|e| e.to_string())?;
        }
        issuer.team_claim =
            unless_dash(nth("oidc-team-claim", &args.team_claims, i, n)?).map(str::to_owned);
        issuer.scopes = unless_dash(nth("oidc-scopes", &args.scopes, i, n)?)
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        out.push(issuer);
    }
    Ok(Some(out))
}

/// The validator the flags describe, or `None` without `--oidc-issuer`.
pub fn validator(args: &OidcArgs, timeout: Duration) -> Result<Option<Arc<OidcValidator>>, String> {
    let Some(issuers) = issuers(args)? else {
        return Ok(None);
    };
    for i in &issuers {
        tracing::info!(
            issuer = %i.issuer,
            audience = %i.audience,
            realm = i.realm.as_str(),
            uid_claim = %i.uid_claim,
            team_claim = i.team_claim.as_deref().unwrap_or("-"),
            "accepting OIDC tokens"
        );
    }
    OidcValidator::new(issuers, timeout, OidcRefresh::default())
        .map(|v| Some(Arc::new(v)))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(issuers: &[&str]) -> OidcArgs {
        OidcArgs {
            issuers: issuers.iter().map(|s| s.to_string()).collect(),
            ..OidcArgs::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_value_applies_to_every_issuer_and_n_values_one_each() {
        let mut a = args(&["https://a.example", "https://b.example"]);
        a.audiences = strings(&["pierone"]);
        a.realms = strings(&["employees", "services"]);
        a.team_claims = strings(&["-", "repository_owner"]);
        a.scopes = strings(&["application.write"]);
        let got = issuers(&a).unwrap().unwrap();
        assert_eq!(got[0].audience, "pierone");
        assert_eq!(got[1].audience, "pierone");
        assert_eq!(got[0].realm, OidcRealm::Employees);
        assert_eq!(got[1].realm, OidcRealm::Services);
        assert_eq!(got[0].team_claim, None);
        assert_eq!(got[1].team_claim.as_deref(), Some("repository_owner"));
        assert_eq!(got[0].uid_claim, "sub");
        assert!(got[1].scopes.contains("application.write"));
    }

    #[test]
    fn mismatched_or_stray_flags_are_refused() {
        let mut a = args(&["https://a.example", "https://b.example"]);
        a.audiences = strings(&["x", "y", "z"]);
        assert!(issuers(&a).unwrap_err().contains("3 times"));
        let a = args(&["https://a.example"]);
        assert!(issuers(&a).unwrap_err().contains("--oidc-audience"));
        let mut a = args(&[]);
        a.realms = strings(&["services"]);
        assert!(issuers(&a).unwrap_err().contains("needs --oidc-issuer"));
        let mut a = args(&["https://a.example"]);
        a.audiences = strings(&["x"]);
        a.realms = strings(&["partners"]);
        assert!(issuers(&a).is_err());
        assert_eq!(issuers(&args(&[])).unwrap(), None);
    }
}
