//! A private certificate authority for an office without a public CA: `jiandu tls init` makes the
//! CA and the server certificate, `jiandu tls device` a phone's client certificate. Keys are
//! ECDSA P-256 (every phone and browser in use accepts it); a server certificate lives 800 days,
//! under the 825 days iOS accepts.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::TlsError;

/// Days a server certificate is valid.
pub const SERVER_DAYS: i64 = 800;
/// Days a device certificate is valid.
pub const DEVICE_DAYS: i64 = 800;
/// Days the private CA is valid.
pub const CA_DAYS: i64 = 3650;

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8): keep it mode 0600.
    pub key_pem: String,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A day of slack for phones whose clock is behind.
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(days);
}

/// Makes a new private CA named for the office.
pub fn authority(office: &str) -> Result<Issued, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{office} private CA"));
    dn.push(DnType::OrganizationName, office);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Signs a server certificate for the host names and IP addresses phones and browsers use.
pub fn server(ca: &Issued, hosts: &[String]) -> Result<Issued, TlsError> {
    if hosts.is_empty() {
        return Err(rcgen::Error::CouldNotParseCertificationRequest.into());
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for h in hosts {
        params.subject_alt_names.push(match h.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(h.clone().try_into()?),
        });
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, hosts[0].clone());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, SERVER_DAYS);
    sign(ca, &params)
}

/// Signs a phone's client certificate: the subject CN is the device id, which the broker holds
/// against the MQTT user name at CONNECT.
pub fn device(ca: &Issued, device_id: &str) -> Result<Issued, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, device_id);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, DEVICE_DAYS);
    sign(ca, &params)
}

fn sign(ca: &Issued, params: &CertificateParams) -> Result<Issued, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Base64 of the SHA-256 of the first certificate's SubjectPublicKeyInfo: the pin Chromium's
/// `--ignore-certificate-errors-spki-list` and HPKP-style tools take.
pub fn spki_sha256(cert_pem: &str) -> Result<String, TlsError> {
    use base64::Engine;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| TlsError::Pem { path: "certificate".into(), what: e.to_string() })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| TlsError::Pem { path: "certificate".into(), what: e.to_string() })?;
    let digest = Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(base64::engine::general_purpose::STANDARD.encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::common_name;

    #[test]
    fn device_certificates_carry_the_device_id_and_chain_to_the_ca() {
        let ca = authority("Test office").unwrap();
        let dev = device(&ca, "dev-01ABC").unwrap();
        let der = CertificateDer::from_pem_slice(dev.cert_pem.as_bytes()).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("dev-01ABC"));
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(parsed.issuer(), ca_parsed.subject());
        parsed.verify_signature(Some(ca_parsed.public_key())).unwrap();
    }

    #[test]
    fn server_certificates_name_every_host_and_refuse_bad_names() {
        let ca = authority("Test office").unwrap();
        let s = server(&ca, &["jiandu.example".into(), "10.0.0.5".into()]).unwrap();
        let der = CertificateDer::from_pem_slice(s.cert_pem.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = parsed.subject_alternative_name().unwrap().unwrap().value.general_names.len();
        assert_eq!(sans, 2);
        assert!(server(&ca, &["bad name with spaces".into()]).is_err());
        assert!(server(&ca, &[]).is_err());
        assert_eq!(spki_sha256(&s.cert_pem).unwrap().len(), 44);
    }
}
