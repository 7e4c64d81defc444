//! The HTTP face of jiandu (axum): health, Prometheus metrics, the REST API under `/api/v1`
//! (see [`api`]), Server-Sent Events of the event outbox, and the browser view for the 24-hour
//! desk, leaders, auditors and admins (built from `web/ui/` and embedded, see [`assets`]),
//! including the inspectors' field app at `/app/`, and `/mqtt`, where MQTT over WebSocket is
//! handed to the embedded broker's front (so a phone needs only the HTTPS port).
//!
//! Like every role, `web` reaches the rest of the platform only through the broker, as an MQTT
//! client (its subscription to `jd/v1/events/#` wakes the SSE streams), and reads the database
//! through `store`.

pub mod abuse;
pub mod api;
pub mod assets;
pub mod health;
pub mod lockout;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
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
    /// The HTTPS address is taken or not ours to bind.
    #[error("cannot listen for HTTPS on {addr}: {source} (choose another address with --https-listen)")]
    ListenTls {
        /// Address we tried.
        addr: SocketAddr,
        /// Why the bind failed.
        source: std::io::Error,
    },
    /// Neither HTTP nor HTTPS is configured.
    #[error("no HTTP listener: set --http-listen or --https-listen (with a TLS certificate)")]
    NoListener,
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
    /// Browser sessions.
    pub sessions: Arc<session::Sessions>,
    /// Failed login, Basic and Bearer attempts per name and client address.
    pub lockout: Arc<lockout::Lockout>,
    /// Bumped for every event seen on `jd/v1/events/#`; wakes the SSE streams.
    pub events: watch::Receiver<u64>,
    /// Sampled positions from `jd/v1/events/position` (not in the outbox), as JSON text.
    pub positions: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Settings of the browser view.
    pub ui: Arc<ViewSettings>,
    /// Ends long-lived responses (SSE) at shutdown.
    pub shutdown: CancellationToken,
    /// The view's Content-Security-Policy (allows the configured tile server).
    pub view_csp: HeaderValue,
    /// The embedded broker's door for MQTT over WebSocket (`/mqtt`); none with an external broker.
    pub mqtt_ws: Option<jiandu_broker::WebSocketEntry>,
    /// Rate limits and proof-of-work challenges of the public tip endpoints.
    pub tips: Arc<abuse::TipLimiter>,
    /// The external broker's authentication and ACL hooks (`/api/v1/mqtt/…`).
    pub hooks: Arc<api::mqtt_hooks::Hooks>,
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
    /// Base URL of the field app's provisioning links (`[web] public_url`); none: the address
    /// the admin's browser used.
    pub public_url: Option<String>,
    /// The field app's heartbeat interval in seconds (`[web] app_heartbeat_s`), set by its link.
    pub app_heartbeat_s: u32,
    /// Reverse proxies whose `X-Forwarded-For` is believed (see [`client_ip`]).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Health of the roles `serve` supervises, reported by `/healthz`.
    pub roles: health::RoleBoard,
    /// Signs the receipts of photos sent with public tips (none: tips with photos are refused).
    pub platform_key: Option<jiandu_store::PlatformKey>,
    /// Abuse limits of the public tip endpoints (`[public]`).
    pub tip_limits: abuse::TipLimits,
    /// The secret an external broker presents to `/api/v1/mqtt/auth` and `/acl`; none: off.
    pub mqtt_hook_secret: Option<jiandu_store::Secret>,
}

/// Where the web role listens: plaintext HTTP and/or HTTPS.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    /// Plaintext HTTP address.
    pub http: Option<SocketAddr>,
    /// HTTPS address and certificates.
    pub https: Option<(SocketAddr, jiandu_tls::ServerTls)>,
    /// MQTT over WebSocket at `/mqtt` on both, into the embedded broker (none: `/mqtt` is 404).
    pub mqtt_ws: Option<jiandu_broker::WebSocketEntry>,
}

/// A running web role.
pub struct RunningWeb {
    /// The bound HTTP address (the real port when configured with port 0), if any.
    pub local_addr: Option<SocketAddr>,
    /// The bound HTTPS address, if any.
    pub tls_addr: Option<SocketAddr>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    mqtt: RoleSession,
}

impl RunningWeb {
    /// Waits until the servers have drained after shutdown.
    pub async fn stopped(self) {
        for s in self.servers {
            s.await.ok();
        }
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
    let listeners = Listeners { http: Some(listen), https: None, mqtt_ws: None };
    start_with(listeners, store, broker, metrics, ViewSettings::default(), shutdown).await
}

/// Binds the listeners, connects to the broker and serves the API and the view until `shutdown`.
pub async fn start_with(
    listeners: Listeners,
    store: Store,
    broker: BrokerEndpoint,
    metrics: PrometheusHandle,
    ui: ViewSettings,
    shutdown: CancellationToken,
) -> Result<RunningWeb, WebError> {
    if listeners.http.is_none() && listeners.https.is_none() {
        return Err(WebError::NoListener);
    }
    let plain = match listeners.http {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| WebError::Listen { addr, source })?)
        }
        None => None,
    };
    let secure = match listeners.https {
        Some((addr, tls)) => {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|source| WebError::ListenTls { addr, source })?;
            Some((l, tls))
        }
        None => None,
    };
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
    let tiles = ui.tile_url.as_deref().and_then(assets::tile_origin);
    let view_csp = HeaderValue::from_str(&assets::content_security_policy(tiles.as_deref()))
        .unwrap_or(HeaderValue::from_static(API_CSP));
    let tips = Arc::new(abuse::TipLimiter::new(ui.tip_limits.clone()));
    let hooks = Arc::new(api::mqtt_hooks::Hooks::new(ui.mqtt_hook_secret.clone()));
    let state = AppState {
        store,
        mqtt: session.client.clone(),
        mqtt_up: session.connected.clone(),
        metrics,
        logins: Arc::default(),
        sessions: Arc::default(),
        lockout: Arc::default(),
        events,
        positions: positions.clone(),
        ui: Arc::new(ui),
        shutdown: shutdown.clone(),
        view_csp,
        mqtt_ws: listeners.mqtt_ws.clone(),
        tips,
        hooks,
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
        .route("/mqtt", get(mqtt_over_websocket))
        .nest("/api/v1", api::router())
        .fallback(assets::serve)
        .layer(axum::middleware::from_fn(no_basic_prompt_for_the_view))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state);
    let mut running = RunningWeb { local_addr: None, tls_addr: None, servers: Vec::new(), mqtt };
    if let Some(listener) = plain {
        let addr = listener.local_addr()?;
        info!(%addr, "HTTP listening");
        running.local_addr = Some(addr);
        let (app, stop) = (app.clone(), shutdown.clone());
        running.servers.push(tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) =
                axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
            {
                warn!(error = %e, "HTTP server stopped");
            }
        }));
    }
    if let Some((listener, tls)) = secure {
        use axum::serve::ListenerExt;
        let listener = tls::TlsListener::new(listener, tls, shutdown.clone())?;
        let addr = axum::serve::Listener::local_addr(&listener)?;
        info!(%addr, "HTTPS listening");
        running.tls_addr = Some(addr);
        let app = app.layer(axum::middleware::from_fn(tls::secure_cookies)).layer(axum::Extension(tls::OverTls));
        let stop = shutdown.clone();
        running.servers.push(tokio::spawn(async move {
            // tap_io gives the TLS listener axum's ConnectInfo<SocketAddr> (the client address).
            let listener = listener.tap_io(|_| ());
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) =
                axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
            {
                warn!(error = %e, "HTTPS server stopped");
            }
        }));
    }
    Ok(running)
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

/// The Content-Security-Policy of every answer that is not the view itself (JSON, SSE, metrics):
/// nothing in it may run, load or be framed.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Adds the security headers to every answer: `nosniff` (a response is only ever its declared
/// type), no framing (`X-Frame-Options: DENY` besides `frame-ancestors 'none'`), no referrer
/// leaving the platform (URLs carry evidence and case ids), and [`API_CSP`] unless the handler
/// set a stricter or view-specific policy itself.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(API_CSP));
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

/// The field app's provisioning link for a device: `{base}/app/#d={device}&t={token}&i={s}`
/// (`i`: the heartbeat interval in seconds). The credentials ride in the fragment, which browsers
/// never send to a server (so they are in no access log); the app stores them on the phone and
/// clears the fragment.
pub fn app_url(base: &str, device: &str, token: &str, heartbeat_s: u32) -> String {
    fn enc(v: &str) -> String {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    format!("{}/app/#d={}&t={}&i={heartbeat_s}", base.trim_end_matches('/'), enc(device), enc(token))
}

/// `GET /mqtt`: MQTT over WebSocket (subprotocol `mqtt`), served by the embedded broker's front
/// with the same login, ACL and limits as its TCP port; 404 when this process has no broker.
/// Behind a trusted reverse proxy the front logs the forwarded client (see [`client_ip`]).
async fn mqtt_over_websocket(
    State(s): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    over_tls: Option<axum::Extension<tls::OverTls>>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> axum::response::Response {
    let client = SocketAddr::new(client_ip(&s.ui.trusted_proxies, &headers, peer.ip()), peer.port());
    match &s.mqtt_ws {
        Some(entry) => entry.upgrade(ws, client, over_tls.is_some()),
        None => api::ApiError::not_found("endpoint", "/mqtt (this process runs no embedded broker)").into_response(),
    }
}

/// `GET /metrics`: Prometheus text exposition.
async fn prometheus(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_app_link_carries_the_credentials_in_the_fragment() {
        assert_eq!(
            super::app_url("https://j.example:8443/", "d0123456789ab", "a+b/c=", 5),
            "https://j.example:8443/app/#d=d0123456789ab&t=a%2Bb%2Fc%3D&i=5"
        );
    }
}

/// The client's address for login counting and rate limits: the connection's peer, unless that
/// is a configured reverse proxy, in which case the right-most address in `X-Forwarded-For` that
/// is not itself a trusted proxy (addresses further left were written by the client and can be
/// forged). A missing or unreadable header leaves the peer.
pub fn client_ip(
    trusted: &[std::net::IpAddr],
    headers: &axum::http::HeaderMap,
    peer: std::net::IpAddr,
) -> std::net::IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
    let mut client = peer;
    for hop in hops.iter().flat_map(|v| v.split(',')).rev().take(16) {
        match hop.trim().parse::<std::net::IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
mod client_ip_tests {
    use super::client_ip;
    use axum::http::HeaderMap;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [ip("127.0.0.1"), ip("10.0.0.2")];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2".parse().unwrap());
        // From a stranger the header is ignored.
        assert_eq!(client_ip(&trusted, &h, ip("9.9.9.9")), ip("9.9.9.9"));
        // Through the proxies: the first untrusted hop from the right, not the forged left one.
        assert_eq!(client_ip(&trusted, &h, ip("127.0.0.1")), ip("1.2.3.4"));
        assert_eq!(client_ip(&trusted, &HeaderMap::new(), ip("127.0.0.1")), ip("127.0.0.1"));
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(&trusted, &h, ip("127.0.0.1")), ip("127.0.0.1"));
        assert_eq!(client_ip(&[], &h, ip("127.0.0.1")), ip("127.0.0.1"));
    }
}
