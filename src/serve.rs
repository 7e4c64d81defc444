//! `jiandu serve`: starts the chosen roles on one configuration and runs them until SIGINT or
//! SIGTERM, then shuts them down in order (the roles first, so in-flight work is flushed, then
//! the broker and its connections).
//!
//! Every long-running role task is supervised ([`supervise`]): a task that fails (error or
//! panic) is restarted with exponential backoff and shows in `/healthz` (state, restarts, last
//! error) and `/metrics` (`jiandu_role_up{role}`, `jiandu_role_restarts_total{role}`). A task
//! that fails `max_failures` times within `window_s` ends `serve` with a non-zero exit naming
//! the role and the reason; so does a role that cannot start (a listener, the database).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jiandu_broker::client::Ready;
use jiandu_broker::{BrokerConfig, BrokerEndpoint};
use jiandu_web::health::{RoleBoard, RoleState};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::accounts::open_store;
use crate::config::{Config, parse_mqtt_url};

/// A role `serve` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The embedded MQTT broker with device authentication and topic ACL.
    Broker,
    /// Heartbeats into live positions and history (and evidence uploads).
    Ingest,
    /// Dispatch: the live index of inspectors, offers, re-dispatch and escalation.
    Dispatcher,
    /// Registry look-ups from phones, the case deadline scheduler and the integrity index.
    Oversight,
    /// HTTP: the web view, REST API, Server-Sent Events, health and metrics.
    Web,
}

/// Internal service account the embedded roles log in with.
pub(crate) const SERVICE_ACCOUNT: &str = "jiandu";

/// Addresses the roles actually bound, written to `{data_dir}/serve.json` for scripts and tests.
#[derive(Debug, Clone)]
pub struct Bound {
    /// MQTT address (embedded broker) or the external broker URL; empty when plaintext is off.
    pub mqtt: String,
    /// HTTP address, when the web role runs.
    pub http: Option<SocketAddr>,
    /// MQTTS address of the embedded broker, when TLS is on.
    pub mqtts: Option<SocketAddr>,
    /// HTTPS address, when the web role runs with TLS.
    pub https: Option<SocketAddr>,
    /// MQTT-over-WebSocket listener of the embedded broker (`--ws-listen`), when on.
    pub ws: Option<SocketAddr>,
}

/// How `serve` restarts failing roles (`[supervise]` in the TOML file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SuperviseConfig {
    /// This many failures of one role within `window_s` end `serve` (non-zero exit).
    pub max_failures: u32,
    /// The window failures are counted in (seconds).
    pub window_s: u64,
    /// Wait before the first restart (milliseconds); doubled after each failure.
    pub backoff_initial_ms: u64,
    /// Longest wait between restarts (milliseconds).
    pub backoff_max_ms: u64,
}

impl Default for SuperviseConfig {
    fn default() -> Self {
        SuperviseConfig { max_failures: 5, window_s: 300, backoff_initial_ms: 500, backoff_max_ms: 30_000 }
    }
}

/// A role that failed too often: `serve` stops and exits non-zero with this.
#[derive(Debug, Clone)]
pub struct RoleFailure {
    /// The supervised task, e.g. `ingest.heartbeat`.
    pub role: &'static str,
    /// Its last error or panic message.
    pub reason: String,
    /// Failures counted within the window.
    pub failures: usize,
}

/// Runs until a shutdown signal, or until a role keeps failing (then an error naming it).
pub async fn run(config: Config, roles: &[Role]) -> Result<()> {
    let shutdown = CancellationToken::new();
    let mut running = start(&config, roles, shutdown.clone()).await?;
    let failure = tokio::select! {
        _ = wait_for_signal() => None,
        f = running.failure() => Some(f),
    };
    info!("shutting down");
    shutdown.cancel();
    running.stopped().await;
    match failure {
        None => Ok(()),
        Some(f) => bail!(
            "role {} failed {} times within {} s, last: {}",
            f.role,
            f.failures,
            config.supervise.window_s,
            f.reason
        ),
    }
}

/// A supervised task's body: started again after each failure, and told through [`Ready`] when
/// to show as up.
type RoleBody = Box<dyn FnMut(Ready) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send>;

/// Runs `body` until shutdown, restarting it with backoff when it fails (returns an error,
/// panics, or ends on its own before shutdown); reports each state on `board` and in metrics,
/// and sends a [`RoleFailure`] on `fatal` when it failed `max_failures` times within the window.
pub fn supervise(
    role: &'static str,
    mut body: RoleBody,
    settings: SuperviseConfig,
    board: RoleBoard,
    fatal: mpsc::UnboundedSender<RoleFailure>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let initial = Duration::from_millis(settings.backoff_initial_ms.max(1));
        let longest = Duration::from_millis(settings.backoff_max_ms.max(settings.backoff_initial_ms).max(1));
        let window = Duration::from_secs(settings.window_s);
        let mut backoff = initial;
        let mut failures: VecDeque<Instant> = VecDeque::new();
        let mut restarts = 0u64;
        metrics::counter!("jiandu_role_restarts_total", "role" => role).absolute(0);
        loop {
            board.starting(role);
            let started = Instant::now();
            let (ready, is_ready) = Ready::new();
            let mut task = tokio::spawn(body(ready));
            // Up once the body says it does its work; a body that drops its `Ready` unsent
            // stays `starting` until it ends.
            let outcome = tokio::select! {
                outcome = &mut task => outcome,
                Ok(()) = is_ready => {
                    board.up(role);
                    metrics::gauge!("jiandu_role_up", "role" => role).set(1.0);
                    task.await
                }
            };
            metrics::gauge!("jiandu_role_up", "role" => role).set(0.0);
            if shutdown.is_cancelled() {
                if let Ok(Err(e)) = &outcome {
                    warn!(role, error = %e, "role ended with an error at shutdown");
                }
                board.stopped(role);
                return;
            }
            let reason = match outcome {
                Ok(Ok(())) => "stopped on its own before shutdown".to_owned(),
                Ok(Err(e)) => e,
                Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
                Err(e) => format!("task ended: {e}"),
            };
            let now = Instant::now();
            if now.duration_since(started) > longest * 2 {
                // It ran well for a while: this is a new episode, not the same fault again.
                backoff = initial;
            }
            failures.push_back(now);
            while failures.front().is_some_and(|t| now.duration_since(*t) > window) {
                failures.pop_front();
            }
            if failures.len() >= settings.max_failures.max(1) as usize {
                error!(role, error = %reason, failures = failures.len(), "role keeps failing; serve stops");
                board.failed(role, &reason, RoleState::Failed, restarts, jiandu_store::now_ms());
                fatal.send(RoleFailure { role, reason, failures: failures.len() }).ok();
                return;
            }
            restarts += 1;
            metrics::counter!("jiandu_role_restarts_total", "role" => role).increment(1);
            board.failed(role, &reason, RoleState::Restarting, restarts, jiandu_store::now_ms());
            warn!(role, error = %reason, restart_in_ms = backoff.as_millis() as u64, restarts, "role failed; restarting");
            tokio::select! {
                _ = shutdown.cancelled() => {
                    board.stopped(role);
                    return;
                }
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(longest);
        }
    })
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p.downcast_ref::<&str>().map(|s| (*s).to_owned()).unwrap_or_else(|| "(no message)".to_owned()),
    }
}

/// The started roles.
pub struct Running {
    /// Where they listen.
    pub bound: Bound,
    broker: Option<jiandu_broker::RunningBroker>,
    web: Option<jiandu_web::RunningWeb>,
    relay: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    store: jiandu_store::Store,
    failures: mpsc::UnboundedReceiver<RoleFailure>,
    broker_stop: CancellationToken,
}

impl Running {
    /// Resolves when a supervised role failed too often (never, while all is well).
    pub async fn failure(&mut self) -> RoleFailure {
        match self.failures.recv().await {
            Some(f) => f,
            None => std::future::pending().await,
        }
    }

    /// Waits for every role to finish after the shutdown token was cancelled, then stops the
    /// broker (listener and connections) so the roles' last acknowledgements still get through.
    pub async fn stopped(self) {
        if let Some(w) = self.web {
            w.stopped().await;
        }
        for t in self.tasks {
            t.await.ok();
        }
        self.relay.await.ok();
        self.broker_stop.cancel();
        if let Some(b) = self.broker {
            b.stopped().await;
        }
        self.store.close().await;
        info!("stopped");
    }
}

/// Starts the roles and writes `serve.json`.
pub async fn start(config: &Config, roles: &[Role], shutdown: CancellationToken) -> Result<Running> {
    if roles.is_empty() {
        bail!("--roles: name at least one role");
    }
    let metrics = PrometheusBuilder::new().install_recorder().context("installing the metrics recorder")?;
    let dynsec = config.dynsec()?;
    if dynsec.is_some() && crate::accounts::ensure_broker_key(config)? {
        warn!(key = %config.broker_key_path().display(), "made the broker credential key; copy it to every host that registers phones");
    }
    let store = open_store(config).await?;
    let blobs = jiandu_store::Blobs::open(&config.object_store, &config.s3_settings())
        .with_context(|| format!("opening the evidence store {} (--object-store)", config.object_store))?;
    let store = store.with_blobs(blobs);

    let tls = match &config.tls {
        Some(t) => {
            let tls = jiandu_tls::ServerTls::load(t.settings())
                .with_context(|| format!("loading the TLS certificate {} (see `jiandu tls init`)", t.cert.display()))?;
            // The reloader stops with the others at shutdown; it holds nothing to flush.
            drop(tls.spawn_reloader(shutdown.clone()));
            Some(tls)
        }
        None => None,
    };
    warn_plaintext_beyond_loopback(config, roles);

    let run_broker = roles.contains(&Role::Broker);
    if run_broker && config.broker.is_some() {
        bail!("--roles broker runs the embedded broker; drop it when --broker points at an external one");
    }
    let mut broker = None;
    // The broker outlives the roles at shutdown (see `Running::stopped`).
    let broker_stop = CancellationToken::new();
    let endpoint = if let Some(url) = &config.broker {
        let (host, port) = parse_mqtt_url(url)?;
        let (Some(username), Some(password)) = (&config.broker_username, &config.broker_password) else {
            bail!(
                "with --broker, set broker_username and broker_password (or JIANDU_BROKER_USERNAME/JIANDU_BROKER_PASSWORD)"
            );
        };
        BrokerEndpoint { host, port, username: username.clone(), password: password.clone(), tls: None }
    } else if run_broker {
        let b = jiandu_broker::start(
            BrokerConfig {
                listen: config.mqtt_listen,
                tls: config.mqtts_listen.zip(tls.clone()),
                ws_listen: config.ws_listen,
                max_packet_bytes: config.max_packet_bytes,
                max_connections: config.max_connections,
                heartbeat_log_bytes: config.heartbeat_log_bytes,
                evidence_inflight_bytes: config.evidence_inflight_bytes,
                max_sessions_per_device: config.max_sessions_per_device,
                max_sessions_per_integration: config.max_sessions_per_integration,
                // Phones reconnecting to a restarted server wait for this process's ingest.
                hold_logins_for: if roles.contains(&Role::Ingest) {
                    {
                        use jiandu_schemas::topic::{
                            SHARED_EVIDENCE, SHARED_HEARTBEATS, SHARED_OWNTRACKS, SHARED_PRESENCE,
                        };
                        [SHARED_HEARTBEATS, SHARED_OWNTRACKS, SHARED_PRESENCE, SHARED_EVIDENCE]
                    }
                    .map(String::from)
                    .to_vec()
                } else {
                    Vec::new()
                },
                ..Default::default()
            },
            store.clone(),
            broker_stop.clone(),
        )
        .await
        .context("starting the broker role")?;
        // The roles of this process log in through the same front as everyone else, as the
        // internal service account, whose token is rotated at every start.
        let token = store.ensure_service_account(SERVICE_ACCOUNT).await?;
        // Over the plaintext port when there is one, else over TLS pinned to our own certificate.
        let (addr, client_tls) = match (b.local_addr, b.tls_addr, &tls) {
            (Some(addr), _, _) => (addr, None),
            (None, Some(addr), Some(tls)) => (addr, Some(tls.loopback_client_config())),
            _ => bail!("the embedded broker has no listener the roles can reach"),
        };
        broker = Some(b);
        let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
        BrokerEndpoint {
            host,
            port: addr.port(),
            username: SERVICE_ACCOUNT.into(),
            password: token.into_inner(),
            tls: client_tls,
        }
    } else {
        bail!("no broker: run the broker role or point --broker at an external broker");
    };

    // Every process that may write events also relays the outbox (at-least-once, de-duplicated
    // by event id downstream).
    let relay =
        tokio::spawn(jiandu_broker::client::run_outbox_relay(store.clone(), endpoint.clone(), shutdown.clone()));

    let board = RoleBoard::default();
    let (fatal, failures) = mpsc::unbounded_channel();
    let sup = |role: &'static str, body: RoleBody| {
        supervise(role, body, config.supervise.clone(), board.clone(), fatal.clone(), shutdown.clone())
    };
    let mut tasks = Vec::new();
    if let Some(dynsec) = dynsec {
        let (store, stop) = (store.clone(), shutdown.clone());
        tasks.push(sup(
            "broker.sync",
            Box::new(move |mut ready: Ready| {
                ready.set();
                let (store, dynsec, stop) = (store.clone(), dynsec.clone(), stop.clone());
                Box::pin(
                    async move { jiandu_broker::dynsec::run(store, dynsec, stop).await.map_err(|e| e.to_string()) },
                )
            }),
        ));
    }
    if roles.contains(&Role::Ingest) {
        let (store, endpoint, config, stop) =
            (store.clone(), endpoint.clone(), config.ingest.clone(), shutdown.clone());
        tasks.push(sup(
            "ingest.heartbeat",
            Box::new(move |ready| {
                let (store, endpoint, config, stop) = (store.clone(), endpoint.clone(), config.clone(), stop.clone());
                Box::pin(async move {
                    jiandu_ingest::heartbeat::run(store, endpoint, config, ready, stop).await.map_err(|e| e.to_string())
                })
            }),
        ));
    }
    if roles.contains(&Role::Ingest) {
        let (key, _) = jiandu_store::PlatformKey::load_or_create(&config.platform_key_path())
            .context("loading the platform signing key (created by `jiandu init`)")?;
        let (store, endpoint, evidence, stop) =
            (store.clone(), endpoint.clone(), config.evidence.clone(), shutdown.clone());
        tasks.push(sup(
            "ingest.evidence",
            Box::new(move |ready| {
                let (store, endpoint, evidence, key, stop) =
                    (store.clone(), endpoint.clone(), evidence.clone(), key.clone(), stop.clone());
                Box::pin(async move {
                    jiandu_ingest::evidence::run(store, endpoint, evidence, key, ready, stop)
                        .await
                        .map_err(|e| e.to_string())
                })
            }),
        ));
    }

    if roles.contains(&Role::Dispatcher) {
        let mut first =
            Some(jiandu_dispatcher::spawn(store.clone(), endpoint.clone(), config.dispatch.clone(), shutdown.clone()));
        // Ready means subscribed (or on standby behind another process), so nothing sent after
        // serve.json appears is missed.
        if let Some(d) = first.as_mut() {
            let state = d.settled(Duration::from_secs(30)).await;
            info!(?state, "dispatcher started");
        }
        let (store, endpoint, dispatch, stop) =
            (store.clone(), endpoint.clone(), config.dispatch.clone(), shutdown.clone());
        tasks.push(sup(
            "dispatcher",
            Box::new(move |mut ready: Ready| {
                let dispatcher = first.take().unwrap_or_else(|| {
                    jiandu_dispatcher::spawn(store.clone(), endpoint.clone(), dispatch.clone(), stop.clone())
                });
                Box::pin(async move {
                    // Ready once active or on standby behind another process.
                    let mut state = dispatcher.state.clone();
                    let settled = async move {
                        if state.wait_for(|s| *s != jiandu_dispatcher::DispatchState::Starting).await.is_ok() {
                            ready.set();
                        }
                        std::future::pending::<()>().await
                    };
                    tokio::select! {
                        stopped = dispatcher.stopped() => stopped.map_err(|e| e.to_string()),
                        () = settled => Ok(()),
                    }
                })
            }),
        ));
    }

    if roles.contains(&Role::Oversight) {
        let (db, endpoint, lookup, stop) = (store.clone(), endpoint.clone(), config.lookup.clone(), shutdown.clone());
        tasks.push(sup(
            "oversight.lookup",
            Box::new(move |ready| {
                let (store, endpoint, lookup, stop) = (db.clone(), endpoint.clone(), lookup.clone(), stop.clone());
                Box::pin(async move {
                    jiandu_oversight::run(store, endpoint, lookup, ready, stop).await.map_err(|e| e.to_string())
                })
            }),
        ));
        let (db, cases, stop) = (store.clone(), config.cases.clone(), shutdown.clone());
        tasks.push(sup(
            "oversight.cases",
            Box::new(move |mut ready: Ready| {
                ready.set();
                let (store, cases, stop) = (db.clone(), cases.clone(), stop.clone());
                Box::pin(
                    async move { jiandu_oversight::cases::run(store, cases, stop).await.map_err(|e| e.to_string()) },
                )
            }),
        ));
        let (db, index, stop) = (store.clone(), config.index.clone(), shutdown.clone());
        tasks.push(sup(
            "oversight.index",
            Box::new(move |mut ready: Ready| {
                ready.set();
                let (store, index, stop) = (db.clone(), index.clone(), stop.clone());
                Box::pin(async move {
                    jiandu_oversight::integrity::run(store, index, stop).await.map_err(|e| e.to_string())
                })
            }),
        ));
    }

    let web = if roles.contains(&Role::Web) {
        let ui = jiandu_web::ViewSettings {
            tile_url: config.web.tile_url.clone(),
            tile_attribution: config.web.tile_attribution.clone(),
            gcj02: config.web.gcj02,
            trusted_proxies: config.web.trusted_proxies.clone(),
            mqtt_url: match broker.as_ref().map(|b| (b.tls_addr, b.local_addr)) {
                Some((Some(a), _)) if !a.ip().is_unspecified() => format!("mqtts://{a}"),
                Some((None, Some(a))) if !a.ip().is_unspecified() => format!("mqtt://{a}"),
                _ => config.public_mqtt_url(),
            },
            public_url: config.web.public_url.clone(),
            app_heartbeat_s: config.web.app_heartbeat_s(),
            roles: board.clone(),
            mqtt_hook_secret: config.mqtt_hook_secret.clone().map(jiandu_store::Secret::new),
            platform_key: Some(
                jiandu_store::PlatformKey::load_or_create(&config.platform_key_path())
                    .context("loading the platform signing key (signs receipts of public tips' photos)")?
                    .0,
            ),
            tip_limits: config.public.limits(),
        };
        let listeners = jiandu_web::Listeners {
            http: config.http_listen,
            https: config.https_listen.zip(tls.clone()),
            mqtt_ws: broker.as_ref().map(|b| b.websocket.clone()),
        };
        Some(
            jiandu_web::start_with(listeners, store.clone(), endpoint.clone(), metrics, ui, shutdown.clone())
                .await
                .context("starting the web role")?,
        )
    } else {
        None
    };

    let bound = Bound {
        mqtt: match &broker {
            Some(b) => b.local_addr.map(|a| format!("mqtt://{a}")).unwrap_or_default(),
            None => config.broker.clone().unwrap_or_default(),
        },
        http: web.as_ref().and_then(|w| w.local_addr),
        mqtts: broker.as_ref().and_then(|b| b.tls_addr),
        https: web.as_ref().and_then(|w| w.tls_addr),
        ws: broker.as_ref().and_then(|b| b.ws_addr),
    };
    let state = json!({
        "pid": std::process::id(),
        "mqtt": (!bound.mqtt.is_empty()).then_some(&bound.mqtt),
        "http": bound.http.map(|a| format!("http://{a}")),
        "mqtts": bound.mqtts.map(|a| format!("mqtts://{a}")),
        "https": bound.https.map(|a| format!("https://{a}")),
        "ws": bound.ws.map(|a| format!("ws://{a}/mqtt")),
    });
    let path = config.data_dir.join("serve.json");
    std::fs::create_dir_all(&config.data_dir)?;
    std::fs::write(&path, serde_json::to_vec_pretty(&state)?).with_context(|| format!("writing {}", path.display()))?;
    info!(mqtt = %bound.mqtt, http = ?bound.http, mqtts = ?bound.mqtts, https = ?bound.https, "jiandu running");
    Ok(Running { bound, broker, web, relay, tasks, store, failures, broker_stop })
}

/// Warns about each plaintext listener reachable from beyond this machine: tokens, positions and
/// evidence would cross the network in the clear.
fn warn_plaintext_beyond_loopback(config: &Config, roles: &[Role]) {
    let listeners = [
        (roles.contains(&Role::Broker) && config.broker.is_none(), config.mqtt_listen, "MQTT", "--mqtt-listen"),
        (roles.contains(&Role::Web), config.http_listen, "HTTP", "--http-listen"),
    ];
    for (runs, addr, what, flag) in listeners {
        if let (true, Some(addr)) = (runs, addr)
            && !addr.ip().is_loopback()
        {
            warn!(
                %addr,
                "plaintext {what} listens beyond loopback: credentials and data cross the network unencrypted \
                 (use TLS, see `jiandu tls init`, and set {flag} off or to 127.0.0.1)"
            );
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}
