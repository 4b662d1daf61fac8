//! The OIDC validator against an in-test issuer on 127.0.0.1: what it accepts, what it
//! refuses and why, how often it asks the issuer for keys, and how it routes tokens.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::test_issuer::{SigningKey, TestIssuer, b64url, compact};
use crate::{
    Access, AuthConfig, Authorizer, Error, MemoryTeams, OidcIssuer, OidcRealm, OidcRefresh,
    OidcRouter, OidcValidator, StaticValidator, TokenInfo, TokenValidator,
};

const AUD: &str = "https://registry.example";

fn validator(issuers: Vec<OidcIssuer>, refresh: OidcRefresh) -> OidcValidator {
    OidcValidator::new(issuers, Duration::from_secs(2), refresh).unwrap()
}

fn quick_refresh() -> OidcRefresh {
    OidcRefresh {
        max_age: Duration::from_secs(3600),
        min_interval: Duration::from_millis(300),
        retry_interval: Duration::from_millis(300),
    }
}

/// The reason a token was refused; the message never holds the token.
async fn refusal(v: &OidcValidator, token: &str) -> String {
    match v.validate(token).await {
        Err(Error::Unauthorized(why)) => {
            assert!(!why.contains(token), "the token is echoed: {why}");
            why
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn valid_tokens_of_each_algorithm_are_accepted_with_their_claims_mapped() {
    let keys = [
        SigningKey::rs256("r1"),
        SigningKey::es256("e1"),
        SigningKey::ed25519("d1"),
    ];
    let idp = TestIssuer::start(&keys.iter().collect::<Vec<_>>()).await;
    let mut issuer = OidcIssuer::new(&idp.url, AUD);
    issuer.uid_claim = "repository".into();
    issuer.team_claim = Some("repository_owner".into());
    issuer.scopes = BTreeSet::from(["application.write".to_owned()]);
    let v = validator(vec![issuer], OidcRefresh::default());
    for key in &keys {
        let claims = idp.claims(
            AUD,
            "repo:myteam/app:ref:refs/heads/main",
            300,
            json!({"repository": "myteam/app", "repository_owner": "myteam", "scope": "uid extra"}),
        );
        let info = v
            .validate(&key.sign(&claims))
            .await
            .unwrap_or_else(|e| panic!("{key:?}: {e}"))
            .unwrap();
        assert_eq!(info.uid, "myteam/app", "{key:?}");
        assert_eq!(info.realm, "/services");
        assert_eq!(
            info.scopes,
            ["application.write", "extra", "uid"]
                .map(str::to_owned)
                .into()
        );
        assert_eq!(info.teams, Some(BTreeSet::from(["myteam".to_owned()])));
        assert!(
            (290..=300).contains(&info.expires_in.unwrap()),
            "{:?}",
            info.expires_in
        );
    }
    assert_eq!(idp.jwks_requests(), 1, "the keys were fetched once");
    assert_eq!(v.stats().accepted, 3);
}

#[tokio::test]
async fn team_and_scope_claims_in_both_shapes() {
    let key = SigningKey::es256("k");
    let idp = TestIssuer::start(&[&key]).await;
    let mut issuer = OidcIssuer::new(&idp.url, AUD);
    issuer.realm = OidcRealm::Employees;
    issuer.team_claim = Some("groups".into());
    let v = validator(vec![issuer], OidcRefresh::default());
    let info = |extra| {
        let token = key.sign(&idp.claims(AUD, "alice", 60, extra));
        let v = &v;
        async move { v.validate(&token).await.unwrap().unwrap() }
    };
    let a = info(json!({"groups": ["a", "b", 7], "scp": ["s1", "s2"]})).await;
    assert_eq!(a.realm, "/employees");
    assert_eq!(a.uid, "alice");
    assert_eq!(a.teams, Some(["a", "b"].map(str::to_owned).into()));
    assert_eq!(a.scopes, ["s1", "s2"].map(str::to_owned).into());
    let b = info(json!({"groups": "a", "scp": "s1 s2"})).await;
    assert_eq!(b.teams, Some(["a".to_owned()].into()));
    assert_eq!(b.scopes, a.scopes);
    // Without the claim the token vouches for no team; it does not fall back.
    let c = info(json!({})).await;
    assert_eq!(c.teams, Some(BTreeSet::new()));
    assert!(c.scopes.is_empty());
}

#[tokio::test]
async fn claims_that_do_not_hold_are_refused_by_name() {
    let key = SigningKey::rs256("k");
    let idp = TestIssuer::start(&[&key]).await;
    let v = validator(vec![OidcIssuer::new(&idp.url, AUD)], OidcRefresh::default());
    let now = idp.claims(AUD, "x", 0, json!({}))["exp"].as_i64().unwrap();
    let cases: Vec<(Value, &str)> = vec![
        (idp.claims(AUD, "alice", -120, json!({})), "expired"),
        (
            idp.claims(AUD, "alice", 600, json!({"nbf": now + 300})),
            "not valid yet",
        ),
        (
            idp.claims(AUD, "alice", 600, json!({"iat": now + 300})),
            "issued in the future",
        ),
        (
            idp.claims("https://other.example", "alice", 600, json!({})),
            "another audience",
        ),
        (
            idp.claims(AUD, "alice", 600, json!({"aud": ["a", "b"]})),
            "another audience",
        ),
        (
            idp.claims(AUD, "alice", 600, json!({"iss": "https://evil.example"})),
            "issuer is not trusted",
        ),
        (
            idp.claims(AUD, "alice", 600, json!({"iss": format!("{}/", idp.url)})),
            "issuer is not trusted",
        ),
        (
            json!({"iss": idp.url, "aud": AUD, "sub": "alice"}),
            "lacks the claim exp",
        ),
        (
            json!({"iss": idp.url, "sub": "alice", "exp": now + 60}),
            "lacks the claim aud",
        ),
        (
            json!({"aud": AUD, "sub": "alice", "exp": now + 60}),
            "lacks the claim iss",
        ),
        (idp.claims(AUD, "", 600, json!({})), "lacks the claim sub"),
    ];
    for (claims, reason) in cases {
        let why = refusal(&v, &key.sign(&claims)).await;
        assert!(why.contains(reason), "{claims}: {why}");
    }
    // Within the leeway, a just-expired token still passes: clocks differ.
    let fresh = idp.claims(AUD, "alice", -30, json!({}));
    assert!(v.validate(&key.sign(&fresh)).await.unwrap().is_some());
    // Tokens of issuers not configured are refused before any issuer is asked.
    assert_eq!(idp.jwks_requests(), 1);
}

#[tokio::test]
async fn unsigned_hmac_mismatched_and_tampered_tokens_are_refused() {
    let rsa = SigningKey::rs256("rsa");
    let ec = SigningKey::es256("ec");
    let idp = TestIssuer::start(&[&rsa, &ec]).await;
    let v = validator(vec![OidcIssuer::new(&idp.url, AUD)], OidcRefresh::default());
    let claims = idp.claims(AUD, "alice", 600, json!({}));

    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "kid": "rsa"});
        for token in [
            compact(&header, &claims, b""),
            compact(&header, &claims, b"sig"),
        ] {
            let why = refusal(&v, &token).await;
            assert!(why.contains("alg none"), "{why}");
        }
    }

    // HS256 with the RSA public key as the shared secret: the classic key-confusion attack.
    let n = rsa.jwk()["n"].as_str().unwrap().to_owned();
    for (alg, hmac_alg) in [
        ("HS256", aws_lc_rs::hmac::HMAC_SHA256),
        ("HS512", aws_lc_rs::hmac::HMAC_SHA512),
    ] {
        let header = json!({"alg": alg, "kid": "rsa"});
        let message = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        for secret in [n.as_bytes(), rsa.jwk().to_string().as_bytes()] {
            let key = aws_lc_rs::hmac::Key::new(hmac_alg, secret);
            let tag = aws_lc_rs::hmac::sign(&key, message.as_bytes());
            let why = refusal(&v, &format!("{message}.{}", b64url(tag.as_ref()))).await;
            assert!(why.contains("HMAC"), "{why}");
        }
    }

    // An alg other than the key's: ES256 claimed with the RSA key's kid, and the reverse.
    let why = refusal(
        &v,
        &ec.sign_with_header(&json!({"alg": "ES256", "kid": "rsa"}), &claims),
    )
    .await;
    assert!(why.contains("does not match its key"), "{why}");
    let why = refusal(
        &v,
        &rsa.sign_with_header(&json!({"alg": "RS256", "kid": "ec"}), &claims),
    )
    .await;
    assert!(why.contains("does not match its key"), "{why}");
    for alg in ["RS512", "PS256", "ES384", "ES256K"] {
        let why = refusal(
            &v,
            &rsa.sign_with_header(&json!({"alg": alg, "kid": "rsa"}), &claims),
        )
        .await;
        assert!(why.contains("not supported"), "{alg}: {why}");
    }
    let why = refusal(
        &v,
        &rsa.sign_with_header(
            &json!({"alg": "RS256", "kid": "rsa", "crit": ["exp"]}),
            &claims,
        ),
    )
    .await;
    assert!(why.contains("crit"), "{why}");

    // A payload changed after signing: the uid swapped for someone else's.
    let token = rsa.sign(&claims);
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut forged = claims.clone();
    forged["sub"] = json!("admin");
    parts[1] = b64url(forged.to_string().as_bytes());
    let why = refusal(&v, &parts.join(".")).await;
    assert!(why.contains("signature is not valid"), "{why}");
    // A signature of another key under this key's kid.
    let other = SigningKey::rs256("rsa");
    let why = refusal(&v, &other.sign(&claims)).await;
    assert!(why.contains("signature is not valid"), "{why}");
    // The genuine token passes.
    assert_eq!(v.validate(&token).await.unwrap().unwrap().uid, "alice");
}

#[tokio::test]
async fn oversize_and_malformed_tokens_are_refused_without_asking_the_issuer() {
    let key = SigningKey::ed25519("k");
    let idp = TestIssuer::start(&[&key]).await;
    let v = validator(vec![OidcIssuer::new(&idp.url, AUD)], OidcRefresh::default());
    let padding = "x".repeat(crate::MAX_TOKEN_LEN);
    let big = key.sign(&idp.claims(AUD, "alice", 600, json!({ "pad": padding })));
    let why = refusal(&v, &big).await;
    assert!(why.contains("longer than"), "{why}");
    for token in ["abc", "a.b", "a.b.c.d", "a!.b.c", ".b.c", "e30.e30.c2ln"] {
        refusal(&v, token).await;
    }
    assert_eq!(idp.discovery_requests() + idp.jwks_requests(), 0);
}

#[tokio::test]
async fn an_unknown_kid_refreshes_the_keys_at_most_once_per_interval() {
    let old = SigningKey::rs256("2025");
    let new = SigningKey::es256("2026");
    let idp = TestIssuer::start(&[&old]).await;
    let v = validator(vec![OidcIssuer::new(&idp.url, AUD)], quick_refresh());
    let claims = idp.claims(AUD, "alice", 600, json!({}));
    assert!(v.validate(&old.sign(&claims)).await.unwrap().is_some());
    assert_eq!(idp.jwks_requests(), 1);

    // A flood of made-up key ids right after a fetch costs the issuer nothing.
    for i in 0..50 {
        let bogus = SigningKey::ed25519(&format!("bogus-{i}"));
        let why = refusal(&v, &bogus.sign(&claims)).await;
        assert!(why.contains("does not publish"), "{why}");
    }
    assert_eq!(idp.jwks_requests(), 1);

    // The issuer rotates: the new key is fetched when a token first names it.
    idp.publish(&[&new]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let info = v.validate(&new.sign(&claims)).await.unwrap().unwrap();
    assert_eq!(info.uid, "alice");
    assert_eq!(idp.jwks_requests(), 2);
    // The retired key is gone with the old key set.
    let why = refusal(&v, &old.sign(&claims)).await;
    assert!(why.contains("does not publish"), "{why}");
    for i in 0..50 {
        refusal(&v, &SigningKey::es256(&format!("b{i}")).sign(&claims)).await;
    }
    assert_eq!(idp.jwks_requests(), 2);
    // Concurrent tokens with unknown kids after the interval: still one fetch.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let bogus = SigningKey::es256("concurrent");
    let token = bogus.sign(&claims);
    let answers = futures_join_all((0..20).map(|_| v.validate(&token)).collect::<Vec<_>>()).await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(Error::Unauthorized(_))))
    );
    assert_eq!(idp.jwks_requests(), 3);
}

/// Await every future (the crate has no futures dependency; tokio's JoinSet wants 'static).
async fn futures_join_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let mut pinned: Vec<_> = fs.into_iter().map(Box::pin).collect();
    // Poll them together so that they contend for the fetch.
    let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, d) in pinned.iter_mut().zip(done.iter_mut()) {
            if d.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *d = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}

#[tokio::test]
async fn keys_are_refreshed_when_old() {
    let key = SigningKey::es256("k");
    let idp = TestIssuer::start(&[&key]).await;
    let v = validator(
        vec![OidcIssuer::new(&idp.url, AUD)],
        OidcRefresh {
            max_age: Duration::from_millis(200),
            min_interval: Duration::from_millis(50),
            retry_interval: Duration::from_millis(50),
        },
    );
    let token = key.sign(&idp.claims(AUD, "alice", 600, json!({})));
    v.validate(&token).await.unwrap();
    v.validate(&token).await.unwrap();
    assert_eq!(idp.jwks_requests(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    v.validate(&token).await.unwrap();
    assert_eq!(idp.jwks_requests(), 2);
    assert_eq!(idp.discovery_requests(), 2, "discovery is asked again too");
}

#[tokio::test]
async fn an_unreachable_issuer_is_unavailable_never_an_allow_and_not_remembered() {
    let key = SigningKey::rs256("k");
    // An issuer that has gone away: its port refuses connections.
    let idp = TestIssuer::start(&[&key]).await;
    let url = idp.url.clone();
    let token = key.sign(&idp.claims(AUD, "alice", 600, json!({})));
    drop(idp);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let v = validator(vec![OidcIssuer::new(&url, AUD)], quick_refresh());
    for _ in 0..3 {
        match v.validate(&token).await {
            Err(Error::Unavailable { service, why }) => {
                assert_eq!(service, "OIDC issuer");
                assert!(why.contains("cannot be reached"), "{why}");
                assert!(!why.contains(&token));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(v.stats().unavailable, 3);
    assert_eq!(
        v.stats().key_fetches,
        1,
        "retried no sooner than the interval"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(v.validate(&token).await.is_err());
    assert_eq!(v.stats().key_fetches, 2, "and retried after it");
}

#[tokio::test]
async fn issuer_misbehaviour_is_unavailable() {
    let key = SigningKey::rs256("k");
    let idp = TestIssuer::start(&[&key]).await;
    let token = key.sign(&idp.claims(AUD, "alice", 600, json!({})));
    let unavailable = |v: OidcValidator| {
        let token = token.clone();
        async move {
            match v.validate(&token).await {
                Err(Error::Unavailable { why, .. }) => why,
                other => panic!("{other:?}"),
            }
        }
    };
    // A discovery document naming another issuer (mix-up): its keys are not this issuer's.
    idp.claim_issuer("https://accounts.example");
    let v = validator(vec![OidcIssuer::new(&idp.url, AUD)], quick_refresh());
    assert!(unavailable(v).await.contains("another issuer"));
    assert_eq!(idp.jwks_requests(), 0);
    idp.claim_issuer(&idp.url);
    // Too many keys.
    idp.publish_jwks((0..=crate::MAX_JWKS_KEYS).map(|_| key.jwk()).collect());
    let v = validator(vec![OidcIssuer::new(&idp.url, AUD)], quick_refresh());
    assert!(unavailable(v).await.contains("more than"));
    // A key set too large to read.
    let mut huge = key.jwk();
    huge["x5c"] = json!(["A".repeat(100 << 10)]);
    idp.publish_jwks(vec![huge]);
    let v = validator(vec![OidcIssuer::new(&idp.url, AUD)], quick_refresh());
    assert!(unavailable(v).await.contains("more than 65536 bytes"));
}

#[tokio::test]
async fn keys_the_validator_cannot_use_are_skipped() {
    let key = SigningKey::rs256("good");
    let idp = TestIssuer::start(&[&key]).await;
    let weak = json!({"kty": "RSA", "kid": "weak", "n": b64url(&[0xc5; 128]), "e": "AQAB"});
    let mut enc = SigningKey::rs256("enc").jwk();
    enc["use"] = json!("enc");
    let mut mislabelled = SigningKey::es256("mislabelled").jwk();
    mislabelled["alg"] = json!("ES384");
    let oct = json!({"kty": "oct", "kid": "oct", "k": b64url(b"shared secret")});
    let secp = json!({"kty": "EC", "crv": "secp256k1", "kid": "k1",
        "x": b64url(&[1; 32]), "y": b64url(&[2; 32])});
    idp.publish_jwks(vec![
        weak,
        enc,
        mislabelled,
        oct.clone(),
        secp,
        json!("not an object"),
        key.jwk(),
    ]);
    let v = validator(vec![OidcIssuer::new(&idp.url, AUD)], quick_refresh());
    let claims = idp.claims(AUD, "alice", 600, json!({}));
    assert!(v.validate(&key.sign(&claims)).await.unwrap().is_some());
    // The symmetric key is not a key, even when the token names it with HS256's sibling.
    for kid in ["oct", "weak", "enc"] {
        let why = refusal(
            &v,
            &key.sign_with_header(&json!({"alg": "RS256", "kid": kid}), &claims),
        )
        .await;
        assert!(why.contains("does not publish"), "{kid}: {why}");
    }
}

#[tokio::test]
async fn without_kid_the_single_fitting_key_is_used() {
    let key = SigningKey::ed25519("only");
    let idp = TestIssuer::start(&[&key]).await;
    let v = validator(vec![OidcIssuer::new(&idp.url, AUD)], quick_refresh());
    let claims = idp.claims(AUD, "alice", 600, json!({}));
    let token = key.sign_with_header(&json!({"alg": "EdDSA"}), &claims);
    assert!(v.validate(&token).await.unwrap().is_some());
    let second = SigningKey::ed25519("second");
    idp.publish(&[&key, &second]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    // Force a refresh with an unknown kid, then the kid-less token is ambiguous.
    refusal(
        &v,
        &second.sign_with_header(&json!({"alg": "EdDSA", "kid": "x"}), &claims),
    )
    .await;
    let why = refusal(&v, &token).await;
    assert!(why.contains("several keys"), "{why}");
}

#[test]
fn configuration_is_checked() {
    let bad = [
        OidcIssuer::new("http://idp.example", AUD),
        OidcIssuer::new("ftp://127.0.0.1", AUD),
        OidcIssuer::new("not a url", AUD),
        OidcIssuer::new("https://idp.example", ""),
    ];
    for issuer in bad {
        assert!(
            matches!(
                OidcValidator::new(
                    vec![issuer.clone()],
                    Duration::from_secs(1),
                    OidcRefresh::default()
                ),
                Err(Error::Config(_))
            ),
            "{issuer:?}"
        );
    }
    let twice = vec![
        OidcIssuer::new("https://idp.example", AUD),
        OidcIssuer::new("https://idp.example", "other"),
    ];
    assert!(OidcValidator::new(twice, Duration::from_secs(1), OidcRefresh::default()).is_err());
    for ok in [
        "https://idp.example",
        "http://127.0.0.1:8080",
        "http://[::1]:1",
        "http://localhost",
    ] {
        OidcValidator::new(
            vec![OidcIssuer::new(ok, AUD)],
            Duration::from_secs(1),
            OidcRefresh::default(),
        )
        .unwrap();
    }
    assert_eq!(
        "employees".parse::<OidcRealm>().unwrap(),
        OidcRealm::Employees
    );
    assert_eq!(
        "/services".parse::<OidcRealm>().unwrap(),
        OidcRealm::Services
    );
    assert!("partners".parse::<OidcRealm>().is_err());
}

fn static_info(uid: &str) -> TokenInfo {
    TokenInfo {
        uid: uid.into(),
        realm: "/employees".into(),
        scopes: BTreeSet::new(),
        expires_in: None,
        teams: None,
    }
}

#[tokio::test]
async fn the_router_sends_only_trusted_issuers_tokens_to_oidc() {
    let key = SigningKey::es256("k");
    let idp = TestIssuer::start(&[&key]).await;
    let oidc = Arc::new(validator(
        vec![OidcIssuer::new(&idp.url, AUD)],
        quick_refresh(),
    ));
    // A JWT of another issuer that the token-info service knows (Zalando's tokens are JWTs).
    let foreign = key.sign(&json!({"iss": "https://identity.example", "sub": "bob"}));
    let other = Arc::new(StaticValidator::new([
        ("opaque-token".to_owned(), static_info("carol")),
        (foreign.clone(), static_info("bob")),
    ]));
    let router = OidcRouter::new(oidc.clone(), Some(other));
    let ours = key.sign(&idp.claims(AUD, "alice", 600, json!({})));
    assert_eq!(router.validate(&ours).await.unwrap().unwrap().uid, "alice");
    assert_eq!(
        router.validate("opaque-token").await.unwrap().unwrap().uid,
        "carol"
    );
    assert_eq!(router.validate(&foreign).await.unwrap().unwrap().uid, "bob");
    assert_eq!(router.validate("unknown").await.unwrap(), None);
    // Our issuer's bad tokens are refused by the OIDC validator, with its reason.
    let expired = key.sign(&idp.claims(AUD, "alice", -600, json!({})));
    assert!(
        matches!(router.validate(&expired).await, Err(Error::Unauthorized(w)) if w.contains("expired"))
    );
    assert_eq!(oidc.stats().accepted, 1);
    assert_eq!(oidc.stats().refused, 1);

    // Alone, the router refuses everything else.
    let alone = OidcRouter::new(oidc, None);
    for t in ["opaque-token", foreign.as_str()] {
        assert!(
            matches!(alone.validate(t).await, Err(Error::Unauthorized(_))),
            "{t}"
        );
    }
    assert!(alone.validate(&ours).await.unwrap().is_some());
}

#[tokio::test]
async fn push_rules_apply_to_oidc_principals() {
    let key = SigningKey::rs256("k");
    let idp = TestIssuer::start(&[&key]).await;
    // Each issuer serves its own discovery document, so each gets its own test issuer.
    let ci_idp = TestIssuer::start(&[&key]).await;
    let mut people = OidcIssuer::new(&idp.url, AUD);
    people.realm = OidcRealm::Employees;
    let mut ci_issuer = OidcIssuer::new(&ci_idp.url, AUD);
    ci_issuer.team_claim = Some("repository_owner".into());
    let mut granted = ci_issuer.clone();
    let granting_idp = TestIssuer::start(&[&key]).await;
    granted.issuer = granting_idp.url.clone();
    granted.scopes = BTreeSet::from(["application.write".to_owned()]);
    let oidc = Arc::new(validator(vec![people, ci_issuer, granted], quick_refresh()));
    let a = Authorizer::new(
        Arc::new(OidcRouter::new(oidc, None)),
        Arc::new(MemoryTeams::new([("myteam", &["alice"][..], &[][..])])),
        AuthConfig::default(),
    );
    let push = |team: &str| Access::Write { team: team.into() };
    let decide = |token: String, team: &'static str| {
        let a = &a;
        async move {
            let p = a.authenticate(Some(&format!("Bearer {token}"))).await?;
            a.authorize(&p, &push(team)).await
        }
    };
    // Employees: the team file decides, as for token-info tokens.
    let alice = key.sign(&idp.claims(AUD, "alice", 600, json!({})));
    assert_eq!(decide(alice.clone(), "myteam").await, Ok(()));
    assert!(matches!(
        decide(alice, "other").await,
        Err(Error::Denied { .. })
    ));
    // Services with a team claim: the claim names the team, the scope is still needed.
    let ci_claims = |idp: &TestIssuer, extra| idp.claims(AUD, "repo:myteam/app", 600, extra);
    let no_scope = key.sign(&ci_claims(&ci_idp, json!({"repository_owner": "myteam"})));
    match decide(no_scope, "myteam").await {
        Err(Error::Denied { why, .. }) => assert!(why.contains("application.write"), "{why}"),
        other => panic!("{other:?}"),
    }
    let scoped = key.sign(&ci_claims(
        &ci_idp,
        json!({"repository_owner": "myteam", "scope": "application.write"}),
    ));
    assert_eq!(decide(scoped, "myteam").await, Ok(()));
    let granted_token = key.sign(&ci_claims(
        &granting_idp,
        json!({"repository_owner": "myteam"}),
    ));
    assert_eq!(decide(granted_token.clone(), "myteam").await, Ok(()));
    match decide(granted_token, "other").await {
        Err(Error::Denied { team, why, .. }) => {
            assert_eq!(team, "other");
            assert!(why.contains("not assigned"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    let write_all = key.sign(&ci_claims(
        &ci_idp,
        json!({"repository_owner": "elsewhere", "scope": "application.write_all"}),
    ));
    assert_eq!(decide(write_all, "other").await, Ok(()));
    // An expired token is a 401 that says so, through the authorizer too.
    let expired = key.sign(&idp.claims(AUD, "alice", -600, json!({})));
    match decide(expired, "myteam").await {
        Err(Error::Unauthorized(why)) => assert!(why.contains("expired"), "{why}"),
        other => panic!("{other:?}"),
    }
}
