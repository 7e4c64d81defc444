//! The HTTP face of jiandu (axum): health, Prometheus metrics, the REST API under `/api/v1`
//! (see [`api`]); Server-Sent Events and the embedded browser UI as later issues land.
//!
//! Like every role, `web` reaches the rest of the platform only through the broker, as an MQTT
//! client (it subscribes to `jd/v1/events/#`, which will feed the SSE stream), and reads the
//! database through `store`.

pub mod api;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use jiandu_broker::BrokerEndpoint;
use jiandu_broker::client::RoleSession;
use jiandu_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use rumqttc::AsyncClient;
use serde_json::json;
use tokio::sync::watch;
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
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The web role's MQTT client, for publishing on behalf of a web user.
    pub mqtt: AsyncClient,
    /// Whether the MQTT session is up.
    pub mqtt_up: watch::Receiver<bool>,
    /// Prometheus exposition.
    pub metrics: PrometheusHandle,
    /// Recently verified Basic-auth logins.
    pub logins: Arc<api::LoginCache>,
}

/// A running web role.
pub struct RunningWeb {
    /// The bound HTTP address (the real port when configured with port 0).
    pub local_addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    mqtt: RoleSession,
}

impl RunningWeb {
    /// Waits until the server has drained after shutdown.
    pub async fn stopped(self) {
        self.server.await.ok();
        self.mqtt.stopped().await;
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
    let mut session = RoleSession::start(
        &broker,
        "web",
        vec![jiandu_schemas::topic::EVENTS_ALL.to_owned()],
        false,
        1024,
        shutdown.clone(),
    );
    let state = AppState {
        store,
        mqtt: session.client.clone(),
        mqtt_up: session.connected.clone(),
        metrics,
        logins: Arc::default(),
    };
    // Live events arrive here; the web view's SSE stream reads them from the outbox by seq.
    let mut incoming = std::mem::replace(&mut session.incoming, tokio::sync::mpsc::channel(1).1);
    tokio::spawn(async move {
        while let Some(p) = incoming.recv().await {
            debug!(topic = %p.topic, "event");
        }
    });
    let mqtt = session;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .nest("/api/v1", api::router())
        .with_state(state);
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
    let mqtt = *s.mqtt_up.borrow();
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
