//! The embedded MQTT broker: rumqttd in-process, behind our own public listener that
//! authenticates every login against the store and enforces the topic ACL of DESIGN §3.
//!
//! Layout: [`wire`] knows the handful of MQTT packet shapes the front must read or build,
//! [`acl`] decides what an account may publish and subscribe, `front` runs each client
//! connection, and [`start`] wires rumqttd (loopback-only, reachable only with a per-process
//! secret) to the public listener. Only this crate knows rumqttd.

pub mod acl;
pub mod client;
mod front;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jiandu_store::Store;
use rand::Rng;
use rumqttd::{ConnectionSettings, RouterConfig, ServerSettings};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use acl::Acl;
pub use client::BrokerEndpoint;

/// What went wrong starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The public MQTT address is taken or not ours to bind.
    #[error("cannot listen for MQTT on {addr}: {source} (choose another address with --mqtt-listen)")]
    Listen {
        /// Address we tried.
        addr: SocketAddr,
        /// Why the bind failed.
        source: std::io::Error,
    },
    /// rumqttd could not be set up.
    #[error("embedded broker failed to start: {0}")]
    Embedded(String),
    /// Other I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Settings of the embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Public MQTT address (MQTT 3.1.1 and 5 on one port).
    pub listen: SocketAddr,
    /// Largest MQTT packet accepted from a client, in bytes (an evidence chunk is 256 KiB).
    pub max_packet_bytes: usize,
    /// Most client connections served at once.
    pub max_connections: usize,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_packet_bytes: 300 * 1024,
            max_connections: 100_000,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A running embedded broker.
#[derive(Debug)]
pub struct RunningBroker {
    /// The bound public address (the real port when configured with port 0).
    pub local_addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl RunningBroker {
    /// Waits until the accept loop has stopped (after shutdown).
    pub async fn stopped(self) {
        self.accept.await.ok();
    }
}

/// Starts rumqttd on loopback and the authenticating, ACL-enforcing public listener.
pub async fn start(
    config: BrokerConfig,
    store: Store,
    shutdown: CancellationToken,
) -> Result<RunningBroker, BrokerError> {
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| BrokerError::Listen { addr: config.listen, source })?;
    let local_addr = listener.local_addr()?;

    let secret: String = {
        let bytes: [u8; 32] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let internal_v4 = free_loopback_port()?;
    let internal_v5 = free_loopback_port()?;
    let rumqttd_config = rumqttd_config(&config, internal_v4, internal_v5, &secret);
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(rumqttd_config);
            if let Err(e) = broker.start() {
                error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| BrokerError::Embedded(e.to_string()))?;
    wait_until_listening(internal_v4).await?;
    wait_until_listening(internal_v5).await?;

    let front = Arc::new(front::Front {
        store,
        internal_v4,
        internal_v5,
        internal_secret: secret,
        max_packet_bytes: config.max_packet_bytes,
        connect_timeout: config.connect_timeout,
    });
    let permits = Arc::new(Semaphore::new(config.max_connections));
    info!(addr = %local_addr, "MQTT listening (3.1.1 and 5)");
    let accept = tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let front = front.clone();
            tokio::spawn(async move {
                front.serve(stream, peer).await;
                drop(permit);
            });
        }
        info!("MQTT listener stopped");
    });
    Ok(RunningBroker { local_addr, accept })
}

fn rumqttd_config(config: &BrokerConfig, v4: SocketAddr, v5: SocketAddr, secret: &str) -> rumqttd::Config {
    let server = |name: &str, listen: SocketAddr| {
        let mut connections = ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: config.max_packet_bytes,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let secret = secret.to_owned();
        connections.set_auth_handler(move |_client, _user, pass: String| {
            let ok = pass == secret;
            async move { ok }
        });
        ServerSettings { name: name.into(), listen, tls: None, next_connection_delay_ms: 0, connections }
    };
    rumqttd::Config {
        id: 0,
        router: RouterConfig {
            max_connections: config.max_connections + 64,
            max_outgoing_packet_count: 500,
            // One commit log per subscription filter (one inbox filter per phone): keep them small.
            max_segment_size: 1024 * 1024,
            max_segment_count: 8,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("internal-v4".to_owned(), server("internal-v4", v4))])),
        v5: Some(HashMap::from([("internal-v5".to_owned(), server("internal-v5", v5))])),
        ..Default::default()
    }
}

/// Picks a free loopback port for rumqttd's internal listeners.
fn free_loopback_port() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

async fn wait_until_listening(addr: SocketAddr) -> Result<(), BrokerError> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(BrokerError::Embedded(format!("internal listener {addr} did not come up")))
}
