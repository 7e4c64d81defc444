//! The MQTTS listener's part of the front: what the TLS layer learnt about a connection
//! ([`Transport`]) and the rule that ties a phone's client certificate to its account.
//!
//! Rule (DESIGN §3, TLS): a certificate, when shown, must chain to the client CA (checked in the
//! handshake) and its subject CN must equal the account name (the device id for phones); with
//! `client_auth = "required"` a device account is refused without one, on every listener, so the
//! plaintext port is no way around it. Service and integration accounts log in with their token.

use jiandu_store::Principal;
use jiandu_tls::ClientCert;

/// How a connection reached the front.
#[derive(Debug, Clone)]
pub struct Transport {
    /// Whether it came over TLS.
    pub tls: bool,
    /// The client certificate it presented.
    pub cert: ClientCert,
    /// Whether device accounts must have presented one.
    pub device_cert_required: bool,
}

impl Transport {
    /// A plaintext TCP connection.
    pub fn plaintext(device_cert_required: bool) -> Transport {
        Transport { tls: false, cert: ClientCert::None, device_cert_required }
    }

    /// Whether `principal` may log in over this connection; the refusal reason otherwise.
    pub fn admits(&self, principal: &Principal) -> Result<(), &'static str> {
        let (name, device) = match principal {
            Principal::Device { id } => (id.as_str(), true),
            Principal::Integration { name, .. } | Principal::Service { name } => (name.as_str(), false),
        };
        match &self.cert {
            ClientCert::Named(cn) if cn == name => Ok(()),
            ClientCert::Named(_) => Err("certificate CN is another account"),
            ClientCert::Unnamed => Err("certificate has no single subject CN"),
            ClientCert::None if device && self.device_cert_required => Err("device without a client certificate"),
            ClientCert::None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> Principal {
        Principal::Device { id: id.into() }
    }

    #[test]
    fn certificate_names_must_match_the_account() {
        let named =
            |n: &str, req| Transport { tls: true, cert: ClientCert::Named(n.into()), device_cert_required: req };
        assert!(named("dev-1", true).admits(&device("dev-1")).is_ok());
        assert!(named("dev-2", false).admits(&device("dev-1")).is_err());
        let unnamed = Transport { tls: true, cert: ClientCert::Unnamed, device_cert_required: false };
        assert!(unnamed.admits(&device("dev-1")).is_err());
        assert!(Transport::plaintext(true).admits(&device("dev-1")).is_err());
        assert!(Transport::plaintext(false).admits(&device("dev-1")).is_ok());
        assert!(Transport::plaintext(true).admits(&Principal::Service { name: "jiandu".into() }).is_ok());
    }
}
