//! TLS for the listener: rustls with a certificate that is reloaded when its files change, so
//! a renewed certificate takes effect without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::RegistryError;

/// How often a handshake may look at the files' modification times.
const CHECK_EVERY: Duration = Duration::from_secs(1);

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, RegistryError> {
    let file_err = |path: &Path, why: String| RegistryError::Tls {
        path: path.to_owned(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
        .map_err(|e| file_err(key, e.to_string()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| file_err(key, format!("does not match the certificate: {e}")))?;
    Ok(Arc::new(ck))
}

/// Serves the certificate from two PEM files, re-reading them when their modification time
/// changes. A broken edit (half-written file, mismatched key) keeps the previous certificate.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>, Option<SystemTime>)>,
    checked: Mutex<Instant>,
}

impl Reloading {
    fn maybe_reload(&self) {
        {
            let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
            if checked.elapsed() < CHECK_EVERY {
                return;
            }
            *checked = Instant::now();
        }
        let (c, k) = (mtime(&self.cert), mtime(&self.key));
        {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            if cur.1 == c && cur.2 == k {
                return;
            }
        }
        match load(&self.cert, &self.key) {
            Ok(ck) => {
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (ck, c, k);
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate changed but cannot be loaded; keeping the previous one");
                // Do not retry this same broken state on every handshake.
                let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
                cur.1 = c;
                cur.2 = k;
            }
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.maybe_reload();
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .clone(),
        )
    }
}

/// A rustls server configuration for `cert` (PEM chain) and `key` (PEM private key), offering
/// HTTP/2 and HTTP/1.1 by ALPN, reloading both files when they change.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, RegistryError> {
    let (c, k) = (mtime(cert), mtime(key));
    let first = load(cert, key)?;
    let resolver = Reloading {
        cert: cert.to_owned(),
        key: key.to_owned(),
        current: RwLock::new((first, c, k)),
        checked: Mutex::new(Instant::now()),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Tls {
            path: cert.to_owned(),
            why: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
