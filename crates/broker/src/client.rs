//! How the platform's own roles reach the broker as ordinary MQTT clients (rumqttc), whether it
//! is the embedded one or an external cluster, so any role can later run in its own process.

use std::time::Duration;

use rand::Rng;
use rumqttc::{MqttOptions, Transport};

/// Address and service credentials of the broker the roles connect to.
#[derive(Clone)]
pub struct BrokerEndpoint {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Service account name (also the client-id prefix).
    pub username: String,
    /// Service account token.
    pub password: String,
}

impl std::fmt::Debug for BrokerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl BrokerEndpoint {
    /// MQTT 3.1.1 options for one role; the client id is `{username}-{role}-{random}` so several
    /// processes of the same role can share a subscription group.
    pub fn options(&self, role: &str) -> MqttOptions {
        let suffix: u32 = rand::rng().random();
        let mut o = MqttOptions::new(format!("{}-{role}-{suffix:08x}", self.username), &self.host, self.port);
        o.set_credentials(&self.username, &self.password);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        o.set_clean_session(true);
        o.set_transport(Transport::Tcp);
        o
    }
}
