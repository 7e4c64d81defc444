//! The server side: one [`ServerTls`] per process holds the reloading certificate and the two
//! rustls configurations built on it (MQTT, with the optional client-certificate verifier, and
//! HTTPS), accepts connections with a handshake deadline, and reports the phone's certificate
//! name so the broker can hold it against the account that logs in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::files::{CertificateFiles, read_certificates};
use crate::{TlsError, provider};

/// Whether a phone on the MQTTS port must show a client certificate (when a client CA is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// A device account is refused at CONNECT without a certificate from the client CA.
    #[default]
    Required,
    /// A certificate is checked when shown; a device may also log in with its token alone.
    Optional,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "required" => Ok(ClientAuth::Required),
            "optional" => Ok(ClientAuth::Optional),
            other => Err(format!("client_auth must be \"required\" or \"optional\", got {other:?}")),
        }
    }
}

impl std::fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientAuth::Required => "required",
            ClientAuth::Optional => "optional",
        })
    }
}

/// The `[tls]` settings as the listeners need them.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Server certificate chain (PEM, end-entity first).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA whose certificates phones may present on the MQTTS port (mTLS); none: no client certs.
    pub client_ca: Option<PathBuf>,
    /// Whether devices must present one when `client_ca` is set.
    pub client_auth: ClientAuth,
    /// How often the certificate files are checked for a renewal.
    pub reload_interval: Duration,
    /// Time a new connection has to finish the TLS handshake.
    pub handshake_timeout: Duration,
}

/// The client certificate a connection presented, as the broker judges it at CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCert {
    /// No certificate (or a plaintext connection).
    None,
    /// A certificate chaining to the client CA, with this subject common name.
    Named(String),
    /// A certificate chaining to the client CA, but without a usable common name.
    Unnamed,
}

/// TLS for the public listeners of one process.
#[derive(Debug, Clone)]
pub struct ServerTls {
    certs: Arc<CertificateFiles>,
    mqtt: Arc<ServerConfig>,
    https: Arc<ServerConfig>,
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
}

impl ServerTls {
    /// Loads the certificate, key and client CA and builds the listener configurations.
    pub fn load(settings: TlsSettings) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let certs = Arc::new(CertificateFiles::load(&settings.cert, &settings.key, provider.clone())?);
        let versions = rustls::ALL_VERSIONS;
        let mqtt = ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
        let mqtt = match &settings.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for c in read_certificates(path)? {
                    roots
                        .add(c)
                        .map_err(|e| TlsError::ClientCa { path: path.clone(), reason: format!("not a CA: {e}") })?;
                }
                // The TLS layer checks any certificate shown; whether a device must show one is
                // decided at CONNECT, where the account is known (service accounts have none).
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::ClientCa { path: path.clone(), reason: e.to_string() })?;
                mqtt.with_client_cert_verifier(verifier)
            }
            None => mqtt.with_no_client_auth(),
        };
        let mqtt = mqtt.with_cert_resolver(certs.clone());
        let mut https = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls { certs, mqtt: Arc::new(mqtt), https: Arc::new(https), settings, provider })
    }

    /// The certificate files being served.
    pub fn certificates(&self) -> &Arc<CertificateFiles> {
        &self.certs
    }

    /// Whether a device account must present a client certificate at CONNECT.
    pub fn device_cert_required(&self) -> bool {
        self.settings.client_ca.is_some() && self.settings.client_auth == ClientAuth::Required
    }

    /// Completes the server side of an MQTTS handshake within the deadline, and reports the
    /// client certificate it carried.
    pub async fn accept_mqtt<S>(&self, stream: S) -> Result<(TlsStream<S>, ClientCert), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = self.handshake(&self.mqtt, stream).await?;
        let cert = client_cert(tls.get_ref().1.peer_certificates());
        Ok((tls, cert))
    }

    /// Completes the server side of an HTTPS handshake within the deadline.
    pub async fn accept_https<S>(&self, stream: S) -> Result<TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.handshake(&self.https, stream).await
    }

    async fn handshake<S>(&self, config: &Arc<ServerConfig>, stream: S) -> Result<TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let accept = TlsAcceptor::from(config.clone()).accept(stream);
        match tokio::time::timeout(self.settings.handshake_timeout, accept).await {
            Ok(r) => r.map_err(TlsError::Handshake),
            Err(_) => Err(TlsError::Handshake(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("not finished within {:?}", self.settings.handshake_timeout),
            ))),
        }
    }

    /// Checks the certificate files every `reload_interval` and on SIGHUP until `shutdown`,
    /// serving a renewed certificate to new connections.
    pub fn spawn_reloader(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let certs = self.certs.clone();
        let every = self.settings.reload_interval;
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<Option<()>>();
                let forced = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => false,
                    _ = hangup => true,
                };
                let result = if forced { certs.reload().map(|()| true) } else { certs.reload_if_changed() };
                match result {
                    Ok(true) => info!(cert = %certs.cert_path().display(), "TLS certificate reloaded"),
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "TLS certificate not reloaded; the previous one stays in use"),
                }
            }
        })
    }

    /// A client configuration for this process's own roles on the loopback MQTTS port: it
    /// accepts exactly the certificate this process serves at that moment (no CA, no host name),
    /// so the roles keep working with the plaintext listener turned off.
    pub fn loopback_client_config(&self) -> Arc<ClientConfig> {
        let verifier = Arc::new(OwnCertificate { certs: self.certs.clone(), provider: self.provider.clone() });
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("the provider supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Arc::new(config)
    }
}

/// The name in a client certificate chain (the end-entity's subject CN).
fn client_cert(chain: Option<&[CertificateDer<'static>]>) -> ClientCert {
    let Some(end) = chain.and_then(|c| c.first()) else { return ClientCert::None };
    match common_name(end) {
        Some(name) => ClientCert::Named(name),
        None => ClientCert::Unnamed,
    }
}

/// The subject common name of a DER certificate, when it has exactly one UTF-8 CN.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let first = names.next()?.as_str().ok()?.to_owned();
    names.next().is_none().then_some(first)
}

/// Verifies the server by identity with the certificate this process itself serves.
#[derive(Debug)]
struct OwnCertificate {
    certs: Arc<CertificateFiles>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for OwnCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.certs.end_entity().as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
