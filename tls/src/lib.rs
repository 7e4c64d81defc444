//! TLS for jiandu's public listeners (MQTT on 8883, HTTPS): certificates and keys read from PEM
//! files, served through a resolver that swaps in a renewed certificate without a restart, the
//! optional client-certificate check for phones (mTLS), and the small private certificate
//! authority `jiandu tls init` / `jiandu tls device` use when an office has no public CA.
//!
//! Layout: [`files`] loads and reloads the server certificate, [`server`] builds the rustls
//! configurations and accepts connections (handshake with a timeout), [`issue`] makes
//! certificates. rustls runs on the aws-lc-rs provider, chosen explicitly everywhere, so the
//! process never depends on a process-wide default provider.

pub mod files;
pub mod issue;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;

pub use files::CertificateFiles;
pub use rustls;
pub use server::{ClientAuth, ClientCert, ServerTls, TlsSettings};

/// What went wrong with a certificate, a key or a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file is larger than any certificate chain or key we accept.
    #[error("{path} is larger than {limit} bytes: not a certificate or key file")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// A file holds no usable PEM object of the kind expected.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or malformed.
        what: String,
    },
    /// The private key is not the one the certificate was issued for.
    #[error("the key {key} does not belong to the certificate {cert}")]
    KeyMismatch {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
    },
    /// rustls refused the configuration (e.g. an unsupported key type).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA file cannot be used to verify phones' certificates.
    #[error("client CA {path}: {reason}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A certificate could not be made (bad host name, signing failure).
    #[error("making a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    /// A handshake did not finish in time or failed.
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
}

/// The crypto provider every configuration of this crate is built on.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
