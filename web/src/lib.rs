//! The HTTP face of jiandu (axum): health, Prometheus metrics, the REST API under `/api/v1`
//! (see [`api`]), Server-Sent Events of the event outbox, and the browser view for the 24-hour
//! desk, leaders, auditors and admins (built from `web/ui/` and embedded, see [`assets`]).
//!
//! Like every role, `web` reaches the rest of the platform only through the broker, as an MQTT
//! client (its subscription to `jd/v1/events/#` wakes the SSE streams), and reads the database
//! through `store`.

pub mod api;
pub mod assets;
pub mod health;
pub mod session;

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
    /// Browser sessions and failed-login counters.
    pub sessions: Arc<session::Sessions>,
    /// Bumped for every event seen on `jd/v1/events/#`; wakes the SSE streams.
    pub events: watch::Receiver<u64>,
    /// Sampled positions from `jd/v1/events/position` (not in the outbox), as JSON text.
    pub positions: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Settings of the browser view.
    pub ui: Arc<ViewSettings>,
    /// Ends long-lived responses (SSE) at shutdown.
    pub shutdown: CancellationToken,
}

/// Settings of the browser view (`[web]` in the config file).
#[derive(Debug, Clone, Default)]
pub struct ViewSettings {
    /// Raster tile URL template (`https://tiles.example/{z}/{x}/{y}.png`); none: plain background.
    pub tile_url: Option<String>,
    /// Attribution shown for the tiles.
    pub tile_attribution: Option<String>,
    /// The tiles are in GCJ-02 (Chinese tile sets): shift WGS-84 points for display only.
    pub gcj02: bool,
    /// The MQTT address phones are given when registered in the view (`mqtt://host:port`).
    pub mqtt_url: String,
    /// Health of the roles `serve` supervises, reported by `/healthz`.
    pub roles: health::RoleBoard,
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

/// Binds `listen`, connects to the broker and serves until `shutdown`, with default view settings.
pub async fn start(
    listen: SocketAddr,
    store: Store,
    broker: BrokerEndpoint,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<RunningWeb, WebError> {
    start_with(listen, store, broker, metrics, ViewSettings::default(), shutdown).await
}

/// Binds `listen`, connects to the broker and serves the API and the view until `shutdown`.
pub async fn start_with(
    listen: SocketAddr,
    store: Store,
    broker: BrokerEndpoint,
    metrics: PrometheusHandle,
    ui: ViewSettings,
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
    let (tick, events) = watch::channel(0u64);
    let positions = tokio::sync::broadcast::channel(4096).0;
    let state = AppState {
        store,
        mqtt: session.client.clone(),
        mqtt_up: session.connected.clone(),
        metrics,
        logins: Arc::default(),
        sessions: Arc::default(),
        events,
        positions: positions.clone(),
        ui: Arc::new(ui),
        shutdown: shutdown.clone(),
    };
    // Live events arrive here; each wakes the SSE streams, which read the outbox by seq.
    let mut incoming = std::mem::replace(&mut session.incoming, tokio::sync::mpsc::channel(1).1);
    let position_topic = jiandu_schemas::topic::event(jiandu_schemas::topic::EventKind::Position);
    tokio::spawn(async move {
        while let Some(p) = incoming.recv().await {
            debug!(topic = %p.topic, "event");
            if p.topic == position_topic {
                if let Ok(text) = std::str::from_utf8(&p.payload) {
                    positions.send(Arc::from(text)).ok();
                }
            } else {
                tick.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    });
    let mqtt = session;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .nest("/api/v1", api::router())
        .fallback(assets::serve)
        .layer(axum::middleware::from_fn(no_basic_prompt_for_the_view))
        .with_state(state);
    info!(addr = %local_addr, "HTTP listening");
    let server = tokio::spawn(async move {
        let stop = shutdown.clone();
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await {
            warn!(error = %e, "HTTP server stopped");
        }
    });
    Ok(RunningWeb { local_addr, server, mqtt })
}

/// Drops `WWW-Authenticate: Basic` from answers to the browser view (it marks its requests with
/// `X-Requested-With`, and its event stream carries the session cookie): the view shows its own
/// login page, and the header would make the browser pop up its Basic-auth dialog instead.
async fn no_basic_prompt_for_the_view(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let from_view = req.headers().contains_key("x-requested-with") || api::session::session_id(req.headers()).is_some();
    let mut resp = next.run(req).await;
    if from_view {
        resp.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    resp
}

/// `GET /healthz`: 200 when the database answers, the broker connection is up and every
/// supervised role runs, else 503; `roles` gives each role's state, restarts and last error.
async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let db = s.store.ping().await;
    let mqtt = *s.mqtt_up.borrow();
    let roles_up = s.ui.roles.all_up();
    let ok = db.is_ok() && mqtt && roles_up;
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "db": match &db { Ok(()) => "ok".to_owned(), Err(e) => e.to_string() },
        "mqtt": if mqtt { "connected" } else { "disconnected" },
        "roles": s.ui.roles.snapshot(),
    });
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}

/// `GET /metrics`: Prometheus text exposition.
async fn prometheus(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
