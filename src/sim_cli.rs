//! `jiandu sim` and `jiandu device add-bulk`: the command-line edge of the phone simulator
//! (`jiandu_sim`), resolving the configuration into the plain values the simulator takes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jiandu_sim::{SimOptions, Simulator, parse_credentials, write_private};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::accounts::open_store;
use crate::config::{Config, parse_mqtt_url};

/// `jiandu sim`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Number of phones to simulate (the first N in the credentials file)
    #[arg(long)]
    pub devices: usize,
    /// Phone credentials: JSON lines as printed by `jiandu device add` / `device add-bulk`, or a
    /// JSON array; an `integration add` line (publishing jd/v1/reports) also sends hotline tips.
    /// The broker is --broker, else the file's "mqtt" URL
    #[arg(long, value_name = "FILE")]
    pub credentials: PathBuf,
    /// Heartbeats per second per phone
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Simulated seconds per real second (inspectors move and work this much faster)
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Seconds between tips
    #[arg(long, default_value_t = 5.0)]
    pub tip_every: f64,
    /// Mean seconds a phone stays in coverage before a gap (0: never drops out)
    #[arg(long, default_value_t = 600.0)]
    pub coverage: f64,
    /// Stop after this many seconds and print the counters [default: run until Ctrl-C]
    #[arg(long)]
    pub duration: Option<f64>,
    /// Random seed
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `jiandu sim`: runs the phones of a credentials file against a broker until Ctrl-C (or
/// `--duration`), then prints the counters as one JSON object.
pub async fn run_cli(config: &Config, args: SimArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.credentials)
        .with_context(|| format!("reading --credentials {}", args.credentials.display()))?;
    let creds = parse_credentials(&text).with_context(|| format!("--credentials {}", args.credentials.display()))?;
    if args.devices == 0 {
        bail!("--devices: must be at least 1");
    }
    if creds.phones.len() < args.devices {
        bail!(
            "--devices {}: {} holds only {} phones (make more with `jiandu device add-bulk N --out FILE`)",
            args.devices,
            args.credentials.display(),
            creds.phones.len()
        );
    }
    if !(args.rate > 0.0 && args.rate <= 100.0) {
        bail!("--rate: must be within (0, 100] heartbeats per second, got {}", args.rate);
    }
    if !(args.speed > 0.0 && args.speed <= 1000.0) {
        bail!("--speed: must be within (0, 1000], got {}", args.speed);
    }
    let url = config.broker.clone().or(creds.mqtt.clone()).unwrap_or_else(|| config.public_mqtt_url());
    let (host, port) = parse_mqtt_url(&url).context("--broker")?;
    let shutdown = CancellationToken::new();
    let sim = Simulator::start(
        SimOptions {
            host,
            port,
            phones: creds.phones.into_iter().take(args.devices).collect(),
            hotline: creds.hotline,
            rate_hz: args.rate,
            speed: args.speed,
            tip_every: Duration::from_secs_f64(args.tip_every.max(0.1)),
            mean_coverage_s: args.coverage.max(0.0),
            plates: Vec::new(),
            seed: args.seed,
        },
        shutdown.clone(),
    );
    eprintln!("simulating {} phones against {url}; Ctrl-C to stop", args.devices);
    match args.duration {
        Some(s) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))) => {}
                _ = crate::serve::wait_for_signal() => {}
            }
        }
        None => crate::serve::wait_for_signal().await,
    }
    shutdown.cancel();
    let stats = sim.stats.clone();
    sim.stopped().await;
    println!("{}", stats.snapshot());
    Ok(())
}

/// `jiandu device add-bulk N --out FILE`: registers N phones in one transaction and writes
/// their credentials (JSON lines, mode 0600) for `jiandu sim`.
pub async fn add_bulk(config: &Config, count: usize, prefix: &str, out: &Path) -> Result<()> {
    if count == 0 {
        bail!("N: must be at least 1");
    }
    let store = open_store(config).await?;
    let phones: Vec<(String, Option<String>)> = (1..=count).map(|i| (format!("{prefix} {i}"), None)).collect();
    let created = store.create_devices(&phones).await;
    store.close().await;
    let created = created?;
    let mqtt = config.public_mqtt_url();
    let mut text = String::new();
    for (device, token) in &created {
        let line = json!({"device": device.id, "username": device.id, "password": token.expose(), "mqtt": mqtt});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    write_private(out, text.as_bytes())?;
    println!("{}", json!({"devices": created.len(), "credentials": out.display().to_string(), "mqtt": mqtt}));
    Ok(())
}
