//! The server certificate and key as files on disk: loaded once at start, then re-read whenever
//! their modification time or size changes (a renewal by `jiandu tls init`, certbot or an
//! operator), and swapped in atomically for new handshakes. A half-written or mismatched pair is
//! refused and the certificate in use stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// Largest PEM file read (a chain of a few certificates, or one key, is a few KiB).
pub const MAX_PEM_BYTES: u64 = 256 * 1024;

/// Most certificates accepted in one chain or CA file.
pub const MAX_CERTIFICATES: usize = 64;

/// What identifies one version of the files on disk.
type Stamp = Option<(SystemTime, u64, SystemTime, u64)>;

/// The server's certificate chain and key, kept current with the files they came from; serves as
/// the rustls certificate resolver of every TLS listener.
#[derive(Debug)]
pub struct CertificateFiles {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    stamp: Mutex<Stamp>,
}

impl CertificateFiles {
    /// Loads the pair; fails when either file is unreadable or they do not belong together.
    pub fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<CertificateFiles, TlsError> {
        let stamp = stamp(cert, key);
        let certified = load_pair(cert, key, &provider)?;
        Ok(CertificateFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: ArcSwap::from_pointee(certified),
            stamp: Mutex::new(stamp),
        })
    }

    /// Re-reads the files if they changed since the last load; `Ok(true)` when a new certificate
    /// is now served. On error the previous certificate stays and the next call tries again.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.cert, &self.key);
        if now == *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Re-reads the files unconditionally (SIGHUP).
    pub fn reload(&self) -> Result<(), TlsError> {
        let now = stamp(&self.cert, &self.key);
        let certified = load_pair(&self.cert, &self.key, &self.provider)?;
        self.current.store(Arc::new(certified));
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(())
    }

    /// The end-entity certificate served now.
    pub fn end_entity(&self) -> CertificateDer<'static> {
        self.current.load().cert[0].clone()
    }

    /// The certificate file's path (for log lines).
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

impl ResolvesServerCert for CertificateFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let c = std::fs::metadata(cert).ok()?;
    let k = std::fs::metadata(key).ok()?;
    Some((c.modified().ok()?, c.len(), k.modified().ok()?, k.len()))
}

/// Reads a PEM file of at most [`MAX_PEM_BYTES`].
pub fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read { path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge { path: path.to_path_buf(), limit: MAX_PEM_BYTES });
    }
    std::fs::read(path).map_err(read)
}

/// The certificates of a PEM file, in order (at least one, at most [`MAX_CERTIFICATES`]).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let mut certs = Vec::new();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| TlsError::Pem { path: path.to_path_buf(), what: format!("malformed PEM: {e}") })?;
        if certs.len() == MAX_CERTIFICATES {
            return Err(TlsError::Pem {
                path: path.to_path_buf(),
                what: format!("more than {MAX_CERTIFICATES} certificates"),
            });
        }
        certs.push(c);
    }
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(cert)?;
    let key_der = PrivateKeyDer::from_pem_slice(&read_pem(key)?).map_err(|e| TlsError::Pem {
        path: key.to_path_buf(),
        what: format!("no private key (expected -----BEGIN PRIVATE KEY-----): {e}"),
    })?;
    CertifiedKey::from_der(chain, key_der, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            TlsError::KeyMismatch { cert: cert.to_path_buf(), key: key.to_path_buf() }
        }
        other => TlsError::Rustls(other),
    })
}
