//! The embedded MQTT broker: rumqttd's router in-process, behind our own public listener that
//! authenticates every login against the store and enforces the topic ACL of DESIGN §3.
//!
//! Layout: [`wire`] knows the handful of MQTT frame shapes the front must read or build itself,
//! [`acl`] decides what an account may publish and subscribe, `front` serves each client
//! connection over an in-process link into the router, [`client`] is how the platform's own
//! roles connect as MQTT clients, `sessions` counts each account's live sessions (caps, and
//! ending them on revocation), and [`start`] wires it together, including the watcher that ends
//! a revoked account's sessions within a second. Only this crate knows rumqttd.

pub mod acl;
pub mod client;
mod front;
mod sessions;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jiandu_store::Store;
use rumqttd::RouterConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use acl::Acl;
pub use client::BrokerEndpoint;
pub use front::TOPIC_ALIAS_MAX;

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
    /// Bytes of heartbeats the router keeps for a lagging ingest before it drops the oldest
    /// (although their publishers were acknowledged: phones re-send what is never confirmed).
    pub heartbeat_log_bytes: usize,
    /// Refuse devices (CONNACK "server unavailable", so they retry) until
    /// [`RunningBroker::device_gate`] is opened: the router keeps no messages for a subscriber
    /// that has not subscribed yet, so phones must not publish before ingest is subscribed.
    pub devices_wait_for_gate: bool,
    /// Most distinct client ids one device may hold connected at once (a phone app and a tool
    /// or two); more is refused with CONNACK 0x97 (MQTT 5) / 3 (3.1.1).
    pub max_sessions_per_device: usize,
    /// Most distinct client ids one integration account may hold connected at once.
    pub max_sessions_per_integration: usize,
    /// How often the store is asked which accounts were revoked (their sessions are ended).
    pub revocation_poll: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_packet_bytes: 300 * 1024,
            max_connections: 100_000,
            connect_timeout: Duration::from_secs(10),
            heartbeat_log_bytes: 64 * 1024 * 1024,
            devices_wait_for_gate: false,
            max_sessions_per_device: 3,
            max_sessions_per_integration: 16,
            revocation_poll: Duration::from_secs(1),
        }
    }
}

/// A running embedded broker.
#[derive(Debug)]
pub struct RunningBroker {
    /// The bound public address (the real port when configured with port 0).
    pub local_addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
    gate: DeviceGate,
}

/// Opens the broker to devices once the platform's subscribers are in place.
#[derive(Debug, Clone)]
pub struct DeviceGate(Arc<std::sync::atomic::AtomicBool>);

impl DeviceGate {
    /// Admits devices from now on.
    pub fn open(&self) {
        if !self.0.swap(true, std::sync::atomic::Ordering::AcqRel) {
            info!("devices admitted");
        }
    }
}

impl RunningBroker {
    /// The gate devices wait behind when `devices_wait_for_gate` is set.
    pub fn device_gate(&self) -> DeviceGate {
        self.gate.clone()
    }

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

    let router_tx = rumqttd::Router::new(0, router_config(&config)).spawn();
    let links: front::LinkFactory = Arc::new(move |client_id: &str, clean: bool, alias_max: u16| {
        rumqttd::local::LinkBuilder::new(client_id, router_tx.clone())
            .clean_session(clean)
            .dynamic_filters(true)
            .topic_alias_max(alias_max)
            .build()
            .map_err(|e| e.to_string())
    });

    let devices_admitted = Arc::new(std::sync::atomic::AtomicBool::new(!config.devices_wait_for_gate));
    let sessions = Arc::new(sessions::Sessions::default());
    tokio::spawn(watch_revocations(store.clone(), sessions.clone(), config.revocation_poll, shutdown.clone()));
    let front = Arc::new(front::Front {
        store,
        links,
        max_packet_bytes: config.max_packet_bytes,
        connect_timeout: config.connect_timeout,
        devices_admitted: devices_admitted.clone(),
        sessions,
        max_sessions_per_device: config.max_sessions_per_device,
        max_sessions_per_integration: config.max_sessions_per_integration,
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
            if let Err(e) = stream.set_nodelay(true) {
                debug!(error = %e, "TCP_NODELAY not set");
            }
            let front = front.clone();
            // Shutdown reaches every connection, not only the listener.
            let stop = shutdown.child_token();
            tokio::spawn(async move {
                tokio::select! {
                    _ = front.serve(stream, peer) => {}
                    _ = stop.cancelled() => debug!(%peer, "connection closed at shutdown"),
                }
                drop(permit);
            });
        }
        info!("MQTT listener stopped");
    });
    Ok(RunningBroker { local_addr, accept, gate: DeviceGate(devices_admitted) })
}

/// Ends the live sessions of every device and account revoked since the last look, every
/// `every` until shutdown. The revocation is written to the database by whoever revoked (the
/// CLI needs no broker access); this is how it reaches the connections.
async fn watch_revocations(
    store: Store,
    sessions: Arc<sessions::Sessions>,
    every: Duration,
    shutdown: CancellationToken,
) {
    // Each look goes further back than the last (`REVOCATION_LOOKBACK_MS`): clock skew between
    // hosts, and a session that authenticated just before a revocation but registered just
    // after a look, are both covered; ending a session twice is harmless.
    let mut since = jiandu_store::now_ms();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = jiandu_store::now_ms();
        match store.revoked_since(since - jiandu_store::REVOCATION_LOOKBACK_MS).await {
            Ok(revoked) => {
                let keys = revoked
                    .devices
                    .into_iter()
                    .map(sessions::AccountKey::Device)
                    .chain(revoked.accounts.into_iter().map(sessions::AccountKey::Account));
                for key in keys {
                    let ended = sessions.end(&key);
                    if ended > 0 {
                        metrics::counter!("jiandu_broker_revoked_sessions_total").increment(ended as u64);
                        info!(account = ?key, sessions = ended, "revoked: live sessions ended");
                    }
                }
                since = now;
            }
            Err(e) => warn!(error = %e, "cannot read revocations; retrying"),
        }
    }
}

fn router_config(config: &BrokerConfig) -> RouterConfig {
    RouterConfig {
        max_connections: config.max_connections + 64,
        max_outgoing_packet_count: 500,
        // One commit log per subscription filter (one inbox filter per phone): keep them small.
        max_segment_size: 1024 * 1024,
        max_segment_count: 8,
        // The router drops the oldest log entries of a filter whose subscriber lags by more than
        // size × count, although their publishers were acknowledged: give the two bulk streams
        // room (memory is only used while a subscriber lags).
        custom_segment: Some(std::collections::HashMap::from([
            (
                "jd/v1/dev/+/ev/#".to_owned(),
                rumqttd::SegmentConfig { max_segment_size: 16 * 1024 * 1024, max_segment_count: 16 },
            ),
            (
                "jd/v1/dev/+/hb".to_owned(),
                rumqttd::SegmentConfig {
                    max_segment_size: (config.heartbeat_log_bytes / 4).max(4096),
                    max_segment_count: 4,
                },
            ),
        ])),
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}
