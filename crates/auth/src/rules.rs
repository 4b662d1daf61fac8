//! Pier One's authorization rules: who is asking ([`Principal`]) and what they may do
//! ([`Authorizer::authorize`]).

use std::sync::Arc;

use crate::{Error, TeamDirectory, TokenInfo, TokenValidator, parse_authorization};

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials were sent.
    Anonymous,
    /// Authentication is switched off (a registry on loopback without token validation):
    /// everyone may do everything.
    Unchecked,
    /// A validated token.
    Token(TokenInfo),
}

impl Principal {
    /// Whether the principal holds `scope`. Without authentication everything is allowed, so
    /// an unchecked principal holds every scope.
    pub fn has_scope(&self, scope: &str) -> bool {
        match self {
            Principal::Anonymous => false,
            Principal::Unchecked => true,
            Principal::Token(t) => t.has_scope(scope),
        }
    }

    /// The name recorded as `created_by`.
    pub fn uid(&self) -> &str {
        match self {
            Principal::Anonymous | Principal::Unchecked => "anonymous",
            Principal::Token(t) => &t.uid,
        }
    }

    /// The realm recorded in the audit log; empty without a token.
    pub fn realm(&self) -> &str {
        match self {
            Principal::Anonymous | Principal::Unchecked => "",
            Principal::Token(t) => &t.realm,
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials (health probes, the API description).
    Public,
    /// `GET /v2/`: any authenticated client (or anyone with public read).
    Ping,
    /// Reading from a team's repositories, or listing repositories (`team` is `None`).
    Read {
        /// The team read from; `None` for listings across teams.
        team: Option<String>,
    },
    /// Pushing into a team's repositories.
    Write {
        /// The team pushed to.
        team: String,
    },
}

/// Settings of the rules.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Let anonymous clients pull.
    pub public_read: bool,
    /// Prefix of service-user uids, stripped to get the application id.
    pub service_uid_prefix: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            public_read: false,
            service_uid_prefix: "stups_".to_owned(),
        }
    }
}

/// Authenticates requests and applies the rules.
#[derive(Debug, Clone)]
pub struct Authorizer {
    validator: Option<Arc<dyn TokenValidator>>,
    teams: Arc<dyn TeamDirectory>,
    config: AuthConfig,
}

impl Authorizer {
    /// Token cache statistics, when tokens are validated through a cache.
    pub fn cache_stats(&self) -> Option<crate::CacheStats> {
        self.validator.as_ref().and_then(|v| v.cache_stats())
    }

    /// No authentication at all: every request is allowed and recorded as `anonymous`.
    pub fn unchecked() -> Authorizer {
        Authorizer {
            validator: None,
            teams: Arc::new(crate::MemoryTeams::default()),
            config: AuthConfig::default(),
        }
    }

    /// Tokens checked by `validator`, teams from `teams`, rules set by `config`.
    pub fn new(
        validator: Arc<dyn TokenValidator>,
        teams: Arc<dyn TeamDirectory>,
        config: AuthConfig,
    ) -> Authorizer {
        Authorizer {
            validator: Some(validator),
            teams,
            config,
        }
    }

    /// Whether authentication is switched off.
    pub fn is_unchecked(&self) -> bool {
        self.validator.is_none()
    }

    /// Who sent a request with this `Authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Error> {
        let Some(validator) = &self.validator else {
            return Ok(Principal::Unchecked);
        };
        let Some(header) = authorization else {
            return Ok(Principal::Anonymous);
        };
        let token = parse_authorization(header)?;
        match validator.validate(&token).await? {
            Some(info) => Ok(Principal::Token(info)),
            None => Err(Error::Unauthorized(
                "the token is invalid or expired".into(),
            )),
        }
    }

    /// Whether `principal` may do `access`.
    pub async fn authorize(&self, principal: &Principal, access: &Access) -> Result<(), Error> {
        if *access == Access::Public {
            return Ok(());
        }
        let token = match principal {
            Principal::Unchecked => return Ok(()),
            Principal::Anonymous => {
                return match access {
                    Access::Ping | Access::Read { .. } if self.config.public_read => Ok(()),
                    _ => Err(Error::Unauthorized("credentials required".into())),
                };
            }
            Principal::Token(t) => t,
        };
        let team = match access {
            Access::Public | Access::Ping | Access::Read { .. } => return Ok(()),
            Access::Write { team } => team,
        };
        let denied = |why: &str| Error::Denied {
            team: team.clone(),
            uid: token.uid.clone(),
            why: why.to_owned(),
        };
        if token.has_scope("application.write_all") {
            return Ok(());
        }
        match token.realm.as_str() {
            "/employees" => {
                let teams = match &token.teams {
                    Some(teams) => teams.clone(),
                    None => self.teams.teams_of_user(&token.uid).await?,
                };
                if teams.contains(team) {
                    Ok(())
                } else {
                    Err(denied("not a member of the team"))
                }
            }
            "/services" => {
                if !token.has_scope("application.write") {
                    return Err(denied("the token lacks the scope application.write"));
                }
                let app = token
                    .uid
                    .strip_prefix(self.config.service_uid_prefix.as_str())
                    .unwrap_or(&token.uid);
                let teams = match &token.teams {
                    Some(teams) => teams.clone(),
                    None => self.teams.teams_of_application(app).await?,
                };
                if teams.contains(team) {
                    Ok(())
                } else {
                    Err(denied(&format!(
                        "application {app} is not assigned to the team"
                    )))
                }
            }
            other => Err(denied(&format!("realm {other:?} may not push"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{MemoryTeams, StaticValidator};

    fn info(uid: &str, realm: &str, scopes: &[&str]) -> TokenInfo {
        TokenInfo {
            uid: uid.into(),
            realm: realm.into(),
            scopes: scopes
                .iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<_>>(),
            expires_in: Some(3600),
            teams: None,
        }
    }

    fn authorizer(public_read: bool) -> Authorizer {
        let tokens = [
            ("emp-in", info("alice", "/employees", &["uid"])),
            ("emp-out", info("bob", "/employees", &["uid"])),
            (
                "svc-in",
                info("stups_ci-bot", "/services", &["uid", "application.write"]),
            ),
            (
                "svc-elsewhere",
                info(
                    "stups_other-bot",
                    "/services",
                    &["uid", "application.write"],
                ),
            ),
            ("svc-noscope", info("stups_ci-bot", "/services", &["uid"])),
            (
                "all",
                info("robot", "/services", &["application.write_all"]),
            ),
            (
                "weird",
                info("carol", "/partners", &["uid", "application.write"]),
            ),
        ]
        .map(|(t, i)| (t.to_owned(), i));
        Authorizer::new(
            Arc::new(StaticValidator::new(tokens)),
            Arc::new(MemoryTeams::new([
                ("myteam", &["alice"][..], &["ci-bot"][..]),
                ("other", &["bob"][..], &["other-bot"][..]),
            ])),
            AuthConfig {
                public_read,
                ..AuthConfig::default()
            },
        )
    }

    async fn decide(a: &Authorizer, token: Option<&str>, access: Access) -> Result<(), Error> {
        let header = token.map(|t| format!("Bearer {t}"));
        let p = a.authenticate(header.as_deref()).await?;
        a.authorize(&p, &access).await
    }

    #[tokio::test]
    async fn push_rules() {
        let a = authorizer(false);
        let push = || Access::Write {
            team: "myteam".into(),
        };
        for ok in ["emp-in", "svc-in", "all"] {
            assert_eq!(decide(&a, Some(ok), push()).await, Ok(()), "{ok}");
        }
        for denied in ["emp-out", "svc-elsewhere", "svc-noscope", "weird"] {
            match decide(&a, Some(denied), push()).await {
                Err(Error::Denied { team, .. }) => assert_eq!(team, "myteam"),
                other => panic!("{denied}: {other:?}"),
            }
        }
        assert!(matches!(
            decide(&a, Some("unknown"), push()).await,
            Err(Error::Unauthorized(_))
        ));
        assert!(matches!(
            decide(&a, None, push()).await,
            Err(Error::Unauthorized(_))
        ));
    }

    #[tokio::test]
    async fn read_rules() {
        let a = authorizer(false);
        let read = || Access::Read {
            team: Some("myteam".into()),
        };
        for t in ["emp-in", "emp-out", "svc-noscope", "weird"] {
            assert_eq!(decide(&a, Some(t), read()).await, Ok(()));
        }
        assert!(matches!(
            decide(&a, None, read()).await,
            Err(Error::Unauthorized(_))
        ));
        assert!(matches!(
            decide(&a, None, Access::Ping).await,
            Err(Error::Unauthorized(_))
        ));
        let public = authorizer(true);
        assert_eq!(decide(&public, None, read()).await, Ok(()));
        assert_eq!(decide(&public, None, Access::Ping).await, Ok(()));
        assert!(matches!(
            decide(
                &public,
                None,
                Access::Write {
                    team: "myteam".into()
                }
            )
            .await,
            Err(Error::Unauthorized(_))
        ));
    }

    #[tokio::test]
    async fn unchecked_allows_everything_as_anonymous() {
        let a = Authorizer::unchecked();
        let p = a.authenticate(Some("garbage")).await.unwrap();
        assert_eq!(p.uid(), "anonymous");
        assert_eq!(
            a.authorize(&p, &Access::Write { team: "x".into() }).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn denial_names_team_and_user() {
        let a = authorizer(false);
        let e = decide(
            &a,
            Some("emp-out"),
            Access::Write {
                team: "myteam".into(),
            },
        )
        .await
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("bob") && msg.contains("myteam"), "{msg}");
    }

    /// Counts the tokens it is asked about; every token is valid.
    #[derive(Debug, Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl TokenValidator for Counting {
        async fn validate(&self, _token: &str) -> Result<Option<TokenInfo>, Error> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Some(info("alice", "/employees", &["uid"])))
        }
    }

    #[tokio::test]
    async fn overlong_tokens_are_refused_before_validation() {
        let counting = Arc::new(Counting::default());
        let a = Authorizer::new(
            counting.clone(),
            Arc::new(MemoryTeams::default()),
            AuthConfig::default(),
        );
        let over = "t".repeat(crate::MAX_TOKEN_LEN + 1);
        let basic = |t: &str| {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("oauth2:{t}"))
            )
        };
        for header in [
            format!("Bearer {over}"),
            basic(&over),
            format!("Bearer {}", "t".repeat(60_000)),
        ] {
            assert!(
                matches!(
                    a.authenticate(Some(&header)).await,
                    Err(Error::Unauthorized(_))
                ),
                "{} bytes",
                header.len()
            );
        }
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        let longest = "t".repeat(crate::MAX_TOKEN_LEN);
        for header in [format!("Bearer {longest}"), basic(&longest)] {
            assert!(a.authenticate(Some(&header)).await.is_ok());
        }
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
