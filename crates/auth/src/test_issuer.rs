//! An OpenID Connect issuer for tests (feature `test-issuer`): signing keys generated on the
//! spot, JWTs signed with them, and a tiny HTTP server on 127.0.0.1 serving the discovery
//! document and the JWK set, counting how often each is asked for.
//!
//! Tokens are signed here with aws-lc-rs directly, not with the JWT crate the validator uses,
//! so that a bug shared by signing and verifying code cannot make the tests pass.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// base64url without padding, as JWTs and JWKs spell binary.
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT with this header, these claims and these signature bytes, signed or not: for
/// tokens no key could have made (`alg: none`, HMAC with a public key, tampered claims).
pub fn compact(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(signature)
    )
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A private key of a test issuer, with its key id.
pub struct SigningKey {
    /// The key id (`kid`) in the JWK set and in the tokens' headers.
    pub kid: String,
    pair: Pair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} {})", self.alg(), self.kid)
    }
}

impl SigningKey {
    /// A new RSA 2048 key for RS256.
    pub fn rs256(kid: &str) -> SigningKey {
        SigningKey {
            kid: kid.to_owned(),
            pair: Pair::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key")),
        }
    }

    /// A new P-256 key for ES256.
    pub fn es256(kid: &str) -> SigningKey {
        let pair =
            EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key");
        SigningKey {
            kid: kid.to_owned(),
            pair: Pair::Ec(pair),
        }
    }

    /// A new Ed25519 key for EdDSA.
    pub fn ed25519(kid: &str) -> SigningKey {
        SigningKey {
            kid: kid.to_owned(),
            pair: Pair::Ed(Ed25519KeyPair::generate().expect("Ed25519 key")),
        }
    }

    /// The JWS algorithm this key signs with.
    pub fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Rsa(_) => "RS256",
            Pair::Ec(_) => "ES256",
            Pair::Ed(_) => "EdDSA",
        }
    }

    /// The public key as a JWK, as an issuer publishes it.
    pub fn jwk(&self) -> Value {
        match &self.pair {
            Pair::Rsa(k) => json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                "n": b64url(k.public_key().modulus().big_endian_without_leading_zero()),
                "e": b64url(k.public_key().exponent().big_endian_without_leading_zero()),
            }),
            Pair::Ec(k) => {
                // An uncompressed point: 0x04, x, y.
                let point = k.public_key().as_ref();
                json!({
                    "kty": "EC", "crv": "P-256", "use": "sig", "kid": self.kid,
                    "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
                })
            }
            Pair::Ed(k) => json!({
                "kty": "OKP", "crv": "Ed25519", "kid": self.kid,
                "x": b64url(k.public_key().as_ref()),
            }),
        }
    }

    /// The raw signature of `message`.
    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .expect("RSA signature");
                sig
            }
            Pair::Ec(k) => k.sign(&rng, message).expect("ECDSA").as_ref().to_vec(),
            Pair::Ed(k) => k.sign(message).as_ref().to_vec(),
        }
    }

    /// A JWT of `claims` with this key's `alg` and `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }

    /// A JWT of `claims` under `header`, signed with this key whatever the header says.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let message = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self.sign_bytes(message.as_bytes());
        format!("{message}.{}", b64url(&sig))
    }
}

#[derive(Debug, Default)]
struct Shared {
    keys: Mutex<Vec<Value>>,
    /// What the discovery document names as issuer, when not the issuer's own URL.
    claimed_issuer: Mutex<Option<String>>,
    discovery_requests: AtomicUsize,
    jwks_requests: AtomicUsize,
}

/// An issuer serving `/.well-known/openid-configuration` and `/jwks` on 127.0.0.1; stops
/// when dropped (then connections to it are refused).
#[derive(Debug)]
pub struct TestIssuer {
    /// The issuer URL (`http://127.0.0.1:<port>`), also the tokens' `iss`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    /// Start serving, publishing `keys`.
    pub async fn start(keys: &[&SigningKey]) -> TestIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test issuer");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let shared = Arc::new(Shared::default());
        *shared.keys.lock().expect("lock") = keys.iter().map(|k| k.jwk()).collect();
        let (s, base) = (shared.clone(), url.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone(), base.clone()));
            }
        });
        TestIssuer { url, shared, task }
    }

    /// Publish these keys from now on (a key rotation).
    pub fn publish(&self, keys: &[&SigningKey]) {
        self.publish_jwks(keys.iter().map(|k| k.jwk()).collect());
    }

    /// Publish these JWKs, whatever they hold.
    pub fn publish_jwks(&self, jwks: Vec<Value>) {
        *self.shared.keys.lock().expect("lock") = jwks;
    }

    /// Make the discovery document name `issuer` instead of this issuer's URL.
    pub fn claim_issuer(&self, issuer: &str) {
        *self.shared.claimed_issuer.lock().expect("lock") = Some(issuer.to_owned());
    }

    /// How many times the JWK set was asked for.
    pub fn jwks_requests(&self) -> usize {
        self.shared.jwks_requests.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was asked for.
    pub fn discovery_requests(&self) -> usize {
        self.shared.discovery_requests.load(Ordering::SeqCst)
    }

    /// Claims of a token of this issuer for `audience`, about `sub`, valid from a minute
    /// ago for `lifetime_secs` (negative: expired that long ago), with `extra` claims merged.
    pub fn claims(&self, audience: &str, sub: &str, lifetime_secs: i64, extra: Value) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let mut claims = json!({
            "iss": self.url, "aud": audience, "sub": sub,
            "iat": now - 60, "nbf": now - 60, "exp": now + lifetime_secs,
        });
        if let (Some(c), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            c.extend(extra);
        }
        claims
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answer one HTTP/1.1 request and close the connection.
async fn serve(mut conn: tokio::net::TcpStream, shared: Arc<Shared>, base: String) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or_default();
    let (status, body) = match path {
        "/.well-known/openid-configuration" => {
            shared.discovery_requests.fetch_add(1, Ordering::SeqCst);
            let issuer = shared
                .claimed_issuer
                .lock()
                .expect("lock")
                .clone()
                .unwrap_or_else(|| base.clone());
            (
                "200 OK",
                json!({"issuer": issuer, "jwks_uri": format!("{base}/jwks")}),
            )
        }
        "/jwks" => {
            shared.jwks_requests.fetch_add(1, Ordering::SeqCst);
            let keys = shared.keys.lock().expect("lock").clone();
            ("200 OK", json!({ "keys": keys }))
        }
        _ => ("404 Not Found", json!({})),
    };
    let body = body.to_string();
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(answer.as_bytes()).await;
    let _ = conn.shutdown().await;
}
