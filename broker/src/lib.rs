//! The embedded MQTT broker: rumqttd's router in-process, behind our own public listener that
//! authenticates every login against the store and enforces the topic ACL of DESIGN §3.
//!
//! Layout: [`wire`] knows the handful of MQTT frame shapes the front must read or build itself,
//! [`acl`] decides what an account may publish and subscribe, `front` serves each client
//! connection over an in-process link into the router, [`client`] is how the platform's own
//! roles connect as MQTT clients, `sessions` counts each account's live sessions (caps, and
//! ending them on revocation), `delivery` and `saved` make delivery and session lifetimes behave
//! as MQTT 5 requires over rumqttd's router, [`tls`] what the MQTTS listener adds (client
//! certificates), [`websocket`] how MQTT over WebSocket (a browser, the field app) enters the
//! same front, and [`start`] wires it together, including the watcher that ends a revoked
//! account's sessions within a second. Only this crate knows rumqttd.

pub mod acl;
pub mod client;
mod delivery;
pub mod dynsec;
mod front;
mod gate;
mod saved;
mod sessions;
pub mod tls;
pub mod websocket;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jiandu_store::Store;
use jiandu_tls::ServerTls;
use rumqttd::RouterConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use acl::Acl;
pub use client::BrokerEndpoint;
pub use front::TOPIC_ALIAS_MAX;
pub use websocket::WebSocketEntry;

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
    /// The MQTTS address is taken or not ours to bind.
    #[error("cannot listen for MQTTS on {addr}: {source} (choose another address with --mqtts-listen)")]
    ListenTls {
        /// Address we tried.
        addr: SocketAddr,
        /// Why the bind failed.
        source: std::io::Error,
    },
    /// The MQTT-over-WebSocket address is taken or not ours to bind.
    #[error("cannot listen for MQTT over WebSocket on {addr}: {source} (choose another address with --ws-listen)")]
    ListenWs {
        /// Address we tried.
        addr: SocketAddr,
        /// Why the bind failed.
        source: std::io::Error,
    },
    /// Neither a plaintext nor a TLS listener is configured.
    #[error("no MQTT listener: set --mqtt-listen or --mqtts-listen (with a TLS certificate)")]
    NoListener,
    /// Mosquitto's dynamic-security plugin refused or did not answer.
    #[error("Mosquitto dynamic security: {reason} (check the broker's dynsec admin user and password)")]
    Dynsec {
        /// What went wrong.
        reason: String,
    },
    /// The database could not be read.
    #[error(transparent)]
    Store(#[from] jiandu_store::StoreError),
    /// Other I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Settings of the embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Public plaintext MQTT address (MQTT 3.1.1 and 5 on one port); `None`: no plaintext listener.
    pub listen: Option<SocketAddr>,
    /// MQTT over TLS: its address and the certificates (default port 8883).
    pub tls: Option<(SocketAddr, ServerTls)>,
    /// MQTT over plain WebSocket on its own port (path `/mqtt`); the web role also offers
    /// `/mqtt` on its HTTP(S) ports through [`RunningBroker::websocket`].
    pub ws_listen: Option<SocketAddr>,
    /// Largest MQTT packet accepted from a client, in bytes (an evidence chunk is 256 KiB).
    pub max_packet_bytes: usize,
    /// Most client connections served at once.
    pub max_connections: usize,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Most distinct client ids one device may hold connected at once (a phone app and a tool
    /// or two); more is refused with CONNACK 0x97 (MQTT 5) / 3 (3.1.1).
    pub max_sessions_per_device: usize,
    /// Most distinct client ids one integration account may hold connected at once.
    pub max_sessions_per_integration: usize,
    /// How often the store is asked which accounts were revoked (their sessions are ended).
    pub revocation_poll: Duration,
    /// After start, device and integration logins wait until service accounts have subscribed
    /// to these filters (the local ingest role's), so nothing a reconnecting phone re-sends is
    /// dropped for want of a subscriber. Empty: no wait.
    pub hold_logins_for: Vec<String>,
    /// The longest such a wait lasts.
    pub hold_logins_max: Duration,
    /// Longest keep-alive accepted, in seconds: an MQTT 5 client asking for 0 or more is given
    /// this one as Server Keep Alive.
    pub max_keep_alive_secs: u16,
    /// Longest MQTT 5 Session Expiry Interval granted, in seconds (sessions live in memory).
    pub max_session_expiry_secs: u32,
    /// Bytes of heartbeats the router keeps for a lagging ingest before it drops the oldest
    /// (although their publishers were acknowledged: phones re-send what is never confirmed).
    pub heartbeat_log_bytes: usize,
    /// Bytes of evidence chunks admitted from phones and not yet staged by ingest, all phones
    /// together; a phone's further chunks wait (its socket unread) until ingest catches up, so
    /// memory stays flat however many phones upload. The router's evidence log holds this plus
    /// two 1 MiB segments.
    pub evidence_inflight_bytes: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            tls: None,
            ws_listen: None,
            max_packet_bytes: 300 * 1024,
            max_connections: 100_000,
            connect_timeout: Duration::from_secs(10),
            max_sessions_per_device: 3,
            max_sessions_per_integration: 16,
            revocation_poll: Duration::from_secs(1),
            hold_logins_for: Vec::new(),
            hold_logins_max: Duration::from_secs(15),
            max_keep_alive_secs: 300,
            max_session_expiry_secs: 24 * 3600,
            heartbeat_log_bytes: 64 * 1024 * 1024,
            // 12 MiB: ingest acknowledges a synced batch within about 10 ms, so this carries
            // about 500 MiB/s; server RSS growth per 1 GiB upload 43–53 MiB (8 MiB: 32–37 at
            // 456–482 MiB/s; 16 MiB: 53–59 at 479–526; bench evidence, 2026-12-02).
            evidence_inflight_bytes: 12 * 1024 * 1024,
        }
    }
}

/// A running embedded broker.
#[derive(Debug)]
pub struct RunningBroker {
    /// The bound plaintext address (the real port when configured with port 0), if any.
    pub local_addr: Option<SocketAddr>,
    /// The bound MQTTS address, if any.
    pub tls_addr: Option<SocketAddr>,
    /// The bound MQTT-over-WebSocket address (`--ws-listen`), if any.
    pub ws_addr: Option<SocketAddr>,
    /// Where other HTTP servers (the web role's `/mqtt`) hand WebSocket connections to the front.
    pub websocket: WebSocketEntry,
    accept: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningBroker {
    /// Waits until the accept loops have stopped (after shutdown).
    pub async fn stopped(self) {
        for a in self.accept {
            a.await.ok();
        }
    }
}

/// Starts rumqttd on loopback and the authenticating, ACL-enforcing public listeners (plaintext
/// and/or TLS, sharing one connection limit).
pub async fn start(
    config: BrokerConfig,
    store: Store,
    shutdown: CancellationToken,
) -> Result<RunningBroker, BrokerError> {
    if config.listen.is_none() && config.tls.is_none() {
        return Err(BrokerError::NoListener);
    }
    let plain = match config.listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| BrokerError::Listen { addr, source })?),
        None => None,
    };
    let secure = match &config.tls {
        Some((addr, tls)) => {
            let l = TcpListener::bind(addr).await.map_err(|source| BrokerError::ListenTls { addr: *addr, source })?;
            Some((l, tls.clone()))
        }
        None => None,
    };

    let ws = match config.ws_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| BrokerError::ListenWs { addr, source })?),
        None => None,
    };

    let router_tx = rumqttd::Router::new(0, router_config(&config)).spawn();
    let links: front::LinkFactory = Arc::new(move |client_id: &str, clean: bool, alias_max: u16| {
        rumqttd::local::LinkBuilder::new(client_id, router_tx.clone())
            .clean_session(clean)
            .dynamic_filters(true)
            .topic_alias_max(alias_max)
            .build()
            .map_err(|e| e.to_string())
    });

    let evidence_gate = gate::EvidenceGate::new(config.evidence_inflight_bytes);
    tokio::spawn(sweep_evidence_gate(evidence_gate.clone(), shutdown.clone()));
    let sessions = Arc::new(sessions::Sessions::default());
    tokio::spawn(watch_revocations(store.clone(), sessions.clone(), config.revocation_poll, shutdown.clone()));
    let front = Arc::new(front::Front {
        store,
        saved: saved::SavedSessions::new(links.clone()),
        links,
        max_packet_bytes: config.max_packet_bytes,
        connect_timeout: config.connect_timeout,
        sessions,
        max_sessions_per_device: config.max_sessions_per_device,
        max_sessions_per_integration: config.max_sessions_per_integration,
        awaited: Arc::new(front::Awaited::new(config.hold_logins_for.clone())),
        hold_logins_until: std::time::Instant::now() + config.hold_logins_max,
        max_keep_alive: config.max_keep_alive_secs.max(1),
        max_session_expiry: config.max_session_expiry_secs,
        epoch: std::time::Instant::now(),
        evidence_gate: evidence_gate.clone(),
    });
    let device_cert_required = config.tls.as_ref().is_some_and(|(_, t)| t.device_cert_required());
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let websocket =
        websocket::WebSocketEntry::new(front.clone(), permits.clone(), shutdown.clone(), device_cert_required);
    let mut running = RunningBroker {
        local_addr: None,
        tls_addr: None,
        ws_addr: None,
        websocket: websocket.clone(),
        accept: Vec::new(),
    };
    if let Some(listener) = ws {
        let addr = listener.local_addr()?;
        info!(%addr, "MQTT over WebSocket listening (path /mqtt, subprotocol mqtt)");
        running.ws_addr = Some(addr);
        running.accept.push(tokio::spawn(websocket::serve_listener(listener, websocket)));
    }
    if let Some(listener) = plain {
        let addr = listener.local_addr()?;
        info!(%addr, "MQTT listening (3.1.1 and 5, plaintext)");
        running.local_addr = Some(addr);
        let listening =
            Listening { listener, front: front.clone(), permits: permits.clone(), shutdown: shutdown.clone() };
        running.accept.push(tokio::spawn(listening.run(None, device_cert_required)));
    }
    if let Some((listener, tls)) = secure {
        let addr = listener.local_addr()?;
        info!(%addr, device_cert_required, "MQTTS listening (3.1.1 and 5 over TLS)");
        running.tls_addr = Some(addr);
        let listening = Listening { listener, front, permits, shutdown };
        running.accept.push(tokio::spawn(listening.run(Some(tls), device_cert_required)));
    }
    Ok(running)
}

/// One accept loop: plaintext, or TLS (the handshake runs in the connection's task, under its
/// own deadline, never in the loop).
struct Listening {
    listener: TcpListener,
    front: Arc<front::Front>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Listening {
    async fn run(self, tls: Option<ServerTls>, device_cert_required: bool) {
        let Listening { listener, front, permits, shutdown } = self;
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
            let tls = tls.clone();
            // Shutdown reaches every connection, not only the listener.
            let stop = shutdown.child_token();
            tokio::spawn(async move {
                let serve = async {
                    match tls {
                        None => front.serve(stream, peer, tls::Transport::plaintext(device_cert_required)).await,
                        Some(tls) => match tls.accept_mqtt(stream).await {
                            Ok((stream, cert)) => {
                                let transport = tls::Transport { tls: true, cert, device_cert_required };
                                front.serve(stream, peer, transport).await
                            }
                            Err(e) => {
                                metrics::counter!("jiandu_broker_connections_total", "result" => "tls_failed")
                                    .increment(1);
                                info!(%peer, error = %e, "MQTTS handshake failed");
                            }
                        },
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stop.cancelled() => debug!(%peer, "connection closed at shutdown"),
                }
                drop(permit);
            });
        }
        info!("MQTT listener stopped");
    }
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

/// Returns the evidence budget's permits of chunks nobody acknowledged (see `gate`).
async fn sweep_evidence_gate(gate: Arc<gate::EvidenceGate>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let lapsed = gate.sweep();
                if lapsed > 0 {
                    debug!(lapsed, "evidence chunks never acknowledged by ingest; their budget returned");
                }
            }
        }
    }
}

/// Segment size of the router's evidence log (4 evidence chunks).
const EVIDENCE_SEGMENT_BYTES: usize = 1024 * 1024;

fn router_config(config: &BrokerConfig) -> RouterConfig {
    RouterConfig {
        max_connections: config.max_connections + 64,
        max_outgoing_packet_count: 500,
        // One commit log per subscription filter (one inbox filter per phone): keep them small.
        max_segment_size: 1024 * 1024,
        max_segment_count: 8,
        // The router drops the oldest log entries of a filter whose subscriber lags by more than
        // size × count, although their publishers were acknowledged: give the two bulk streams
        // room. A log keeps what it holds until newer entries push it out (read or not), so its
        // size is memory the server keeps after a burst. Evidence is admitted against a budget
        // (`gate`): what ingest has not acknowledged is at most the budget, which spans at most
        // budget / segment + 1 segments, one more for the segment being filled; the log never
        // drops unacknowledged chunks while ingest runs.
        custom_segment: Some(std::collections::HashMap::from([
            (
                "jd/v1/dev/+/ev/#".to_owned(),
                rumqttd::SegmentConfig {
                    max_segment_size: EVIDENCE_SEGMENT_BYTES,
                    max_segment_count: config.evidence_inflight_bytes.div_ceil(EVIDENCE_SEGMENT_BYTES) + 2,
                },
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
