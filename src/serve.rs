//! `jiandu serve`: starts the chosen roles on one configuration and runs them until SIGINT or
//! SIGTERM, then shuts them down in order (listeners first, so in-flight work is flushed).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jiandu_broker::{BrokerConfig, BrokerEndpoint};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::info;

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
const SERVICE_ACCOUNT: &str = "jiandu";

/// Addresses the roles actually bound, written to `{data_dir}/serve.json` for scripts and tests.
#[derive(Debug, Clone)]
pub struct Bound {
    /// MQTT address (embedded broker) or the external broker URL.
    pub mqtt: String,
    /// HTTP address, when the web role runs.
    pub http: Option<SocketAddr>,
}

/// Runs until a shutdown signal.
pub async fn run(config: Config, roles: &[Role]) -> Result<()> {
    let shutdown = CancellationToken::new();
    let running = start(&config, roles, shutdown.clone()).await?;
    wait_for_signal().await;
    info!("shutting down");
    shutdown.cancel();
    running.stopped().await;
    Ok(())
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
}

impl Running {
    /// Waits for every role to finish after the shutdown token was cancelled.
    pub async fn stopped(self) {
        if let Some(w) = self.web {
            w.stopped().await;
        }
        for t in self.tasks {
            t.await.ok();
        }
        self.relay.await.ok();
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
    let store = open_store(config).await?;
    let blobs = jiandu_store::Blobs::open(&config.object_store, &config.s3_settings())
        .with_context(|| format!("opening the evidence store {} (--object-store)", config.object_store))?;
    let store = store.with_blobs(blobs);

    let run_broker = roles.contains(&Role::Broker);
    if run_broker && config.broker.is_some() {
        bail!("--roles broker runs the embedded broker; drop it when --broker points at an external one");
    }
    let mut broker = None;
    let endpoint = if let Some(url) = &config.broker {
        let (host, port) = parse_mqtt_url(url)?;
        let (Some(username), Some(password)) = (&config.broker_username, &config.broker_password) else {
            bail!(
                "with --broker, set broker_username and broker_password (or JIANDU_BROKER_USERNAME/JIANDU_BROKER_PASSWORD)"
            );
        };
        BrokerEndpoint { host, port, username: username.clone(), password: password.clone() }
    } else if run_broker {
        let b = jiandu_broker::start(
            BrokerConfig {
                listen: config.mqtt_listen,
                max_packet_bytes: config.max_packet_bytes,
                max_connections: config.max_connections,
                heartbeat_log_bytes: config.heartbeat_log_bytes,
                // Phones wait until this process's ingest has subscribed (it would miss
                // whatever they sent before).
                devices_wait_for_gate: roles.contains(&Role::Ingest),
                ..Default::default()
            },
            store.clone(),
            shutdown.clone(),
        )
        .await?;
        // The roles of this process log in through the same front as everyone else, as the
        // internal service account, whose token is rotated at every start.
        let token = store.ensure_service_account(SERVICE_ACCOUNT).await?;
        let addr = b.local_addr;
        broker = Some(b);
        let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
        BrokerEndpoint { host, port: addr.port(), username: SERVICE_ACCOUNT.into(), password: token.into_inner() }
    } else {
        bail!("no broker: run the broker role or point --broker at an external broker");
    };

    // Every process that may write events also relays the outbox (at-least-once, de-duplicated
    // by event id downstream).
    let relay =
        tokio::spawn(jiandu_broker::client::run_outbox_relay(store.clone(), endpoint.clone(), shutdown.clone()));

    let mut tasks = Vec::new();
    let ingest_subscribed = CancellationToken::new();
    if roles.contains(&Role::Ingest) {
        let (store, endpoint, config, stop) =
            (store.clone(), endpoint.clone(), config.ingest.clone(), shutdown.clone());
        let subscribed = ingest_subscribed.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = jiandu_ingest::heartbeat::run(store, endpoint, config, subscribed, stop).await {
                tracing::error!(error = %e, "heartbeat ingest stopped");
            }
        }));
    }
    if roles.contains(&Role::Ingest) {
        let (key, _) = jiandu_store::PlatformKey::load_or_create(&config.platform_key_path())
            .context("loading the platform signing key (created by `jiandu init`)")?;
        let (store, endpoint, evidence, stop) =
            (store.clone(), endpoint.clone(), config.evidence.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = jiandu_ingest::evidence::run(store, endpoint, evidence, key, stop).await {
                tracing::error!(error = %e, "evidence ingest stopped");
            }
        }));
    }

    if roles.contains(&Role::Dispatcher) {
        let mut dispatcher =
            jiandu_dispatcher::spawn(store.clone(), endpoint.clone(), config.dispatch.clone(), shutdown.clone());
        // Ready means subscribed (or on standby behind another process), so nothing sent after
        // serve.json appears is missed.
        let state = dispatcher.settled(std::time::Duration::from_secs(30)).await;
        info!(?state, "dispatcher started");
        tasks.push(tokio::spawn(async move {
            if let Err(e) = dispatcher.stopped().await {
                tracing::error!(error = %e, "dispatcher stopped");
            }
        }));
    }

    if roles.contains(&Role::Oversight) {
        let (store, endpoint, lookup, stop) =
            (store.clone(), endpoint.clone(), config.lookup.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = jiandu_oversight::run(store, endpoint, lookup, stop).await {
                tracing::error!(error = %e, "look-up role stopped");
            }
        }));
    }
    if roles.contains(&Role::Oversight) {
        let (store, cases, stop) = (store.clone(), config.cases.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = jiandu_oversight::cases::run(store, cases, stop).await {
                tracing::error!(error = %e, "case scheduler stopped");
            }
        }));
    }
    if roles.contains(&Role::Oversight) {
        let (store, index, stop) = (store.clone(), config.index.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = jiandu_oversight::integrity::run(store, index, stop).await {
                tracing::error!(error = %e, "integrity index scheduler stopped");
            }
        }));
    }

    let web = if roles.contains(&Role::Web) {
        let ui = jiandu_web::ViewSettings {
            tile_url: config.web.tile_url.clone(),
            tile_attribution: config.web.tile_attribution.clone(),
            gcj02: config.web.gcj02,
            mqtt_url: match &broker {
                Some(b) if !config.mqtt_listen.ip().is_unspecified() => format!("mqtt://{}", b.local_addr),
                _ => config.public_mqtt_url(),
            },
        };
        Some(
            jiandu_web::start_with(config.http_listen, store.clone(), endpoint.clone(), metrics, ui, shutdown.clone())
                .await?,
        )
    } else {
        None
    };

    if let Some(b) = &broker {
        if roles.contains(&Role::Ingest) {
            // Admit phones anyway if the subscription takes implausibly long.
            tokio::select! {
                _ = ingest_subscribed.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(30)) => {
                    tracing::warn!("heartbeat ingest not subscribed after 30 s; admitting devices anyway");
                }
            }
        }
        b.device_gate().open();
    }

    let bound = Bound {
        mqtt: match &broker {
            Some(b) => format!("mqtt://{}", b.local_addr),
            None => config.broker.clone().unwrap_or_default(),
        },
        http: web.as_ref().map(|w| w.local_addr),
    };
    let state =
        json!({"pid": std::process::id(), "mqtt": bound.mqtt, "http": bound.http.map(|a| format!("http://{a}"))});
    let path = config.data_dir.join("serve.json");
    std::fs::create_dir_all(&config.data_dir)?;
    std::fs::write(&path, serde_json::to_vec_pretty(&state)?).with_context(|| format!("writing {}", path.display()))?;
    info!(mqtt = %bound.mqtt, http = ?bound.http, "jiandu running");
    Ok(Running { bound, broker, web, relay, tasks, store })
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
