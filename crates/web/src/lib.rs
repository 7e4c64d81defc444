//! The HTTP face of jiandu (axum): health and Prometheus metrics now; the REST API under
//! `/api/v1`, Server-Sent Events and the embedded browser UI as later issues land.
//!
//! Like every role, `web` reaches the rest of the platform only through the broker, as an MQTT
//! client (it subscribes to `jd/v1/events/#`, which will feed the SSE stream), and reads the
//! database through `store`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use jiandu_broker::BrokerEndpoint;
use jiandu_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What went wrong starting the web role.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The HTTP address is taken or not ours to bind.
    #[error("cannot listen for HTTP on {addr}: {source} (choose another address with --http-listen)")]
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

/// Shared state of the HTTP handlers.
#[derive(Clone)]
struct AppState {
    store: Store,
    metrics: PrometheusHandle,
    mqtt_up: Arc<AtomicBool>,
}

/// A running web role.
pub struct RunningWeb {
    /// The bound HTTP address (the real port when configured with port 0).
    pub local_addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    mqtt: tokio::task::JoinHandle<()>,
}

impl RunningWeb {
    /// Waits until the server has drained after shutdown.
    pub async fn stopped(self) {
        self.server.await.ok();
        self.mqtt.await.ok();
    }
}

/// Binds `listen`, connects to the broker and serves until `shutdown`.
pub async fn start(
    listen: SocketAddr,
    store: Store,
    broker: BrokerEndpoint,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<RunningWeb, WebError> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|source| WebError::Listen { addr: listen, source })?;
    let local_addr = listener.local_addr()?;
    let mqtt_up = Arc::new(AtomicBool::new(false));
    let mqtt = tokio::spawn(event_subscriber(broker, mqtt_up.clone(), shutdown.clone()));
    let state = AppState { store, metrics, mqtt_up };
    let app = Router::new().route("/healthz", get(healthz)).route("/metrics", get(prometheus)).with_state(state);
    info!(addr = %local_addr, "HTTP listening");
    let server = tokio::spawn(async move {
        let stop = shutdown.clone();
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await {
            warn!(error = %e, "HTTP server stopped");
        }
    });
    Ok(RunningWeb { local_addr, server, mqtt })
}

/// `GET /healthz`: 200 when the database answers and the broker connection is up, else 503.
async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let db = s.store.ping().await;
    let mqtt = s.mqtt_up.load(Ordering::Relaxed);
    let body = json!({
        "status": if db.is_ok() && mqtt { "ok" } else { "degraded" },
        "db": match &db { Ok(()) => "ok".to_owned(), Err(e) => e.to_string() },
        "mqtt": if mqtt { "connected" } else { "disconnected" },
    });
    let code = if db.is_ok() && mqtt { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}

/// `GET /metrics`: Prometheus text exposition.
async fn prometheus(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

/// Keeps an MQTT session subscribed to the event topics, reconnecting with back-off.
async fn event_subscriber(broker: BrokerEndpoint, up: Arc<AtomicBool>, shutdown: CancellationToken) {
    let (client, mut events) = AsyncClient::new(broker.options("web"), 256);
    let mut backoff = Duration::from_millis(200);
    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = events.poll() => e,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                up.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(200);
                if let Err(e) = client.subscribe(jiandu_schemas::topic::EVENTS_ALL, QoS::AtLeastOnce).await {
                    warn!(error = %e, "subscribing to events failed");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => debug!(topic = %p.topic, "event"),
            Ok(_) => {}
            Err(e) => {
                up.store(false, Ordering::Relaxed);
                warn!(error = %e, "broker connection lost; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    client.disconnect().await.ok();
}
