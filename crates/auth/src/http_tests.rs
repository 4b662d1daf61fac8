//! The HTTP validators and team providers against small real servers on 127.0.0.1:0.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::{
    Error, HttpTeams, IntrospectionValidator, TeamDirectory, TokenInfoValidator, TokenValidator,
};

type Handler = Arc<dyn Fn(&str, &str, &str) -> (u16, String, u64) + Send + Sync>;

/// Serve `handler(method, path?query, body) -> (status, body, delay_ms)`; returns the base URL
/// and a request counter.
async fn serve(handler: Handler) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    let c = c.clone();
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        let method = req.method().to_string();
                        let pq = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let auth = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap_or("").to_owned())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let body = format!("{}|{auth}", String::from_utf8_lossy(&body));
                        let (status, text, delay) = handler(&method, &pq, &body);
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let mut r = Response::new(Full::new(Bytes::from(text)));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, count)
}

/// Token-info as STUPS serves it, reading the token from `Authorization: Bearer`; a token in
/// the query string is refused, so that a validator putting it in the URL fails here.
fn tokeninfo_handler() -> Handler {
    Arc::new(|_, pq, body| {
        let token = body
            .rsplit_once("|Bearer ")
            .map(|(_, t)| t)
            .unwrap_or_default();
        if pq != "/tokeninfo" {
            return (400, r#"{"error":"token in the URL"}"#.into(), 0);
        }
        match token {
            "good" => (
                200,
                r#"{"uid":"alice","realm":"/employees","scope":["uid","application.write"],"expires_in":3599}"#.into(),
                0,
            ),
            "expired" => (200, r#"{"uid":"alice","expires_in":0}"#.into(), 0),
            "nouid" => (200, r#"{"realm":"/employees"}"#.into(), 0),
            "garbage" => (200, "<html>oops</html>".into(), 0),
            "boom" => (502, "bad gateway".into(), 0),
            "slow" => (200, r#"{"uid":"alice"}"#.into(), 3000),
            _ => (400, r#"{"error":"invalid_token"}"#.into(), 0),
        }
    })
}

#[tokio::test]
async fn tokeninfo_answers() {
    let (url, _) = serve(tokeninfo_handler()).await;
    let v =
        TokenInfoValidator::new(&format!("{url}/tokeninfo"), Duration::from_millis(500)).unwrap();
    let info = v.validate("good").await.unwrap().unwrap();
    assert_eq!(
        (info.uid.as_str(), info.realm.as_str()),
        ("alice", "/employees")
    );
    assert!(info.has_scope("application.write"));
    assert_eq!(info.expires_in, Some(3599));
    for invalid in ["unknown", "expired", "nouid"] {
        assert_eq!(v.validate(invalid).await.unwrap(), None, "{invalid}");
    }
    for down in ["garbage", "boom", "slow"] {
        assert!(
            matches!(v.validate(down).await, Err(Error::Unavailable { .. })),
            "{down}"
        );
    }
    // The message says the service is unavailable (not that the credentials are wrong) and
    // why, for the operator.
    assert_eq!(
        v.validate("boom").await.unwrap_err().to_string(),
        "the token-info service is unavailable: it answered 502 Bad Gateway; retry later"
    );
}

#[tokio::test]
async fn tokeninfo_unreachable_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/tokeninfo", listener.local_addr().unwrap());
    drop(listener);
    let v = TokenInfoValidator::new(&url, Duration::from_millis(500)).unwrap();
    assert!(matches!(
        v.validate("good").await,
        Err(Error::Unavailable { .. })
    ));
}

#[tokio::test]
async fn introspection_answers() {
    let (url, _) = serve(Arc::new(|method, _, body| {
        assert_eq!(method, "POST");
        // Basic base64("client:secret")
        if !body.ends_with("|Basic Y2xpZW50OnNlY3JldA==") {
            return (401, "who are you".into(), 0);
        }
        match body.split('|').next().unwrap_or("") {
            "token=good" => (200, r#"{"active":true,"sub":"ci-bot","realm":"/services","scope":"uid application.write"}"#.into(), 0),
            "token=inactive" => (200, r#"{"active":false}"#.into(), 0),
            "token=old" => (200, r#"{"active":true,"sub":"x","exp":1000}"#.into(), 0),
            _ => (200, r#"{"active":false}"#.into(), 0),
        }
    }))
    .await;
    let v = IntrospectionValidator::new(&url, "client", "secret", Duration::from_secs(2)).unwrap();
    let info = v.validate("good").await.unwrap().unwrap();
    assert_eq!(
        (info.uid.as_str(), info.realm.as_str()),
        ("ci-bot", "/services")
    );
    assert!(info.has_scope("application.write"));
    assert_eq!(v.validate("inactive").await.unwrap(), None);
    assert_eq!(v.validate("old").await.unwrap(), None);
    let wrong =
        IntrospectionValidator::new(&url, "client", "nope", Duration::from_secs(2)).unwrap();
    assert!(matches!(
        wrong.validate("good").await,
        Err(Error::Unavailable { .. })
    ));
}

#[tokio::test]
async fn team_service_and_application_registry() {
    let (url, count) = serve(Arc::new(|_, pq, body| {
        if !body.ends_with("|Bearer server-token") {
            return (401, "".into(), 0);
        }
        match pq {
            "/api/teams?member=alice" => (200, r#"[{"id":"myteam"},{"id":"other"}]"#.into(), 0),
            "/api/teams?member=nobody" => (200, "[]".into(), 0),
            "/apps/ci-bot" => (200, r#"{"id":"ci-bot","team_id":"myteam"}"#.into(), 0),
            "/api/teams?member=broken" => (500, "".into(), 0),
            _ => (404, "".into(), 0),
        }
    }))
    .await;
    let t = HttpTeams::new(
        Some(&url),
        Some(&url),
        Some("server-token"),
        Duration::from_secs(2),
    )
    .unwrap();
    let alice = t.teams_of_user("alice").await.unwrap();
    assert!(alice.contains("myteam") && alice.contains("other"));
    assert!(t.teams_of_user("nobody").await.unwrap().is_empty());
    assert_eq!(
        t.teams_of_application("ci-bot")
            .await
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        ["myteam"]
    );
    assert!(
        t.teams_of_application("unknown-app")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        t.teams_of_user("broken").await,
        Err(Error::Unavailable { .. })
    ));
    // Cached: asking again costs nothing.
    let before = count.load(Ordering::SeqCst);
    t.teams_of_user("alice").await.unwrap();
    t.teams_of_application("ci-bot").await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), before);
}

/// The failures an identity service can produce, each made to echo whatever secret it was
/// sent: an answer after the timeout, a 5xx whose body quotes the secret, JSON of the wrong
/// shape that quotes it (serde's messages repeat the values they reject), and HTML.
fn echoing(secret: &str, mode: &str) -> (u16, String, u64) {
    match mode {
        "slow" => (200, format!(r#"{{"uid":"{secret}"}}"#), 1500),
        "5xx" => (503, format!("upstream said no to {secret}"), 0),
        "json" => (
            200,
            format!(
                r#"{{"uid":"alice","active":"{secret}","expires_in":"{secret}","team_id":["{secret}"]}}"#
            ),
            0,
        ),
        "string" => (200, format!(r#""{secret}""#), 0),
        _ => (200, format!("<html>{secret}</html>"), 0),
    }
}

const MODES: [&str; 5] = ["slow", "5xx", "json", "string", "html"];

/// A base URL where nothing listens.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// `result` is `Unavailable`, and neither its message nor its debug form holds any secret.
fn assert_clean<T: std::fmt::Debug>(result: Result<T, Error>, secrets: &[&str], case: &str) {
    let e = match result {
        Err(e @ Error::Unavailable { .. }) => e,
        other => panic!("{case}: {other:?}"),
    };
    let shown = format!("{e} {e:?}");
    for s in secrets {
        assert!(!shown.contains(s), "{case}: {s:?} in {shown}");
    }
}

#[tokio::test]
async fn token_info_failures_never_show_the_token() {
    let (url, _) = serve(Arc::new(|_, _, body| {
        let token = body.rsplit_once("|Bearer ").map(|(_, t)| t).unwrap_or("");
        let mode = token.split('-').next().unwrap_or("");
        echoing(token, mode)
    }))
    .await;
    let v =
        TokenInfoValidator::new(&format!("{url}/tokeninfo"), Duration::from_millis(500)).unwrap();
    for mode in MODES {
        let token = format!("{mode}-token-s3cr3t-{}", "z".repeat(40));
        assert_clean(v.validate(&token).await, &[&token, "s3cr3t"], mode);
    }
    let v = TokenInfoValidator::new(
        &format!("{}/tokeninfo", refused_url()),
        Duration::from_millis(500),
    )
    .unwrap();
    let token = "refused-token-s3cr3t";
    assert_clean(v.validate(token).await, &[token, "s3cr3t"], "refused");
}

#[tokio::test]
async fn introspection_failures_never_show_the_token_or_the_client_secret() {
    let (url, _) = serve(Arc::new(|_, _, body| {
        let token = body
            .split('|')
            .next()
            .and_then(|b| b.strip_prefix("token="))
            .unwrap_or("");
        let mode = token.split('-').next().unwrap_or("");
        // As if the service quoted the client secret it was sent, too.
        let quoted = format!("{token} client-s3cr3t-xyz");
        if mode == "refuse" {
            return (401, format!("bad client {quoted}"), 0);
        }
        echoing(&quoted, mode)
    }))
    .await;
    let secret = "client-s3cr3t-xyz";
    let v =
        IntrospectionValidator::new(&url, "client", secret, Duration::from_millis(500)).unwrap();
    for mode in MODES.iter().chain(&["refuse"]) {
        let token = format!("{mode}-token-t0k3n-{}", "z".repeat(40));
        assert_clean(
            v.validate(&token).await,
            &[&token, "t0k3n", secret, "s3cr3t"],
            mode,
        );
    }
    let v =
        IntrospectionValidator::new(&refused_url(), "client", secret, Duration::from_millis(500))
            .unwrap();
    assert_clean(
        v.validate("refused-token-t0k3n").await,
        &["t0k3n", secret],
        "refused",
    );
}

#[tokio::test]
async fn team_service_failures_never_show_the_service_token() {
    let (url, _) = serve(Arc::new(|_, pq, body| {
        let auth = body.rsplit_once('|').map(|(_, a)| a).unwrap_or("");
        // The user or application names the failure: /api/teams?member=<mode>, /apps/<mode>.
        let mode = pq.rsplit(['=', '/']).next().unwrap_or("");
        echoing(auth, mode)
    }))
    .await;
    let token = "service-t0k3n-s3cr3t";
    let t = HttpTeams::new(
        Some(&url),
        Some(&url),
        Some(token),
        Duration::from_millis(500),
    )
    .unwrap();
    for mode in MODES {
        assert_clean(t.teams_of_user(mode).await, &[token, "s3cr3t"], mode);
        assert_clean(t.teams_of_application(mode).await, &[token, "s3cr3t"], mode);
    }
    let down = refused_url();
    let t = HttpTeams::new(
        Some(&down),
        Some(&down),
        Some(token),
        Duration::from_millis(500),
    )
    .unwrap();
    assert_clean(t.teams_of_user("alice").await, &[token], "refused");
    assert_clean(t.teams_of_application("bot").await, &[token], "refused");
}
