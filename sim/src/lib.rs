//! `jiandu-sim`: the simulated county and the benchmark harness, kept out of the binary.
//!
//! It owns two things the platform itself never needs at run time:
//! - the phone simulator behind `jiandu demo` and `jiandu sim`: many work phones as real MQTT
//!   clients of any jiandu deployment, plus a hotline integration sending tips;
//! - [`bench`], the harness behind `jiandu bench …` (start a system under test, measure, print
//!   our figure beside a reference run).
//!
//! Each phone ([`phone`]) logs in with its own device credentials and speaks only the v1 wire
//! contract (`jiandu_schemas` types and topic builders), so what it exercises is exactly what a
//! real phone would: the broker's authentication and ACL, heartbeat ingest and its `hb_seq`
//! acknowledgements, dispatch offers, assignment statuses, chunked evidence with receipts, and
//! registry look-ups. It is equally a load generator (`--devices`, `--rate`) against a remote
//! deployment. Time can be fast-forwarded (`speed`): inspectors move and work that many times
//! faster, while timestamps stay real so the platform sees live positions.
//!
//! The crate does not know the binary's configuration: callers hand it a broker address,
//! credentials, a store and a shutdown token as plain values.

pub mod bench;
pub mod county;
mod error;
mod phone;
mod photo;

use error::Context;
pub use error::{Error, Result};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiandu_schemas::{IntegrationReport, Topic};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use county::TOWNSHIPS;
use phone::{Behaviour, Command};

/// A phone's login: device id (also username and client id) and token.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Device id.
    pub device: String,
    /// Token printed by `jiandu device add`.
    pub password: String,
}

/// An integration account allowed to publish on `jd/v1/reports`.
#[derive(Debug, Clone)]
pub struct Hotline {
    /// Account name (username; client ids are `{name}-…`).
    pub username: String,
    /// Its token.
    pub password: String,
}

/// What a credentials file holds.
#[derive(Debug, Default)]
pub struct Credentials {
    /// Phones, in file order.
    pub phones: Vec<Credential>,
    /// The first integration account in the file, if any.
    pub hotline: Option<Hotline>,
    /// The first `mqtt` URL in the file, if any.
    pub mqtt: Option<String>,
}

/// One line of `jiandu device add` / `integration add` output.
#[derive(Debug, Deserialize)]
struct CredentialLine {
    device: Option<String>,
    username: Option<String>,
    password: String,
    mqtt: Option<String>,
}

/// Reads credentials: JSON lines as printed by `jiandu device add` (and `integration add`), or
/// one JSON array of such objects. Objects with `device` are phones; others integrations.
pub fn parse_credentials(text: &str) -> Result<Credentials> {
    let lines: Vec<CredentialLine> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text).context("credentials: not a JSON array of {device,username,password}")?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).with_context(|| format!("credentials line {}: not {{device,password}}", i + 1))
            })
            .collect::<Result<_>>()?
    };
    let mut out = Credentials::default();
    for line in lines {
        if out.mqtt.is_none() {
            out.mqtt = line.mqtt;
        }
        match (line.device, line.username) {
            (Some(device), _) => out.phones.push(Credential { device, password: line.password }),
            (None, Some(username)) if out.hotline.is_none() => {
                out.hotline = Some(Hotline { username, password: line.password })
            }
            (None, Some(_)) => {}
            (None, None) => {
                return Err(Error::Invalid("credentials: an entry has neither \"device\" nor \"username\"".into()));
            }
        }
    }
    Ok(out)
}

/// Counters of what the simulated phones did, for progress lines and the final summary.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Successful logins (first ones and after coverage gaps).
    pub connects: AtomicU64,
    /// Live heartbeats published.
    pub heartbeats: AtomicU64,
    /// Heartbeats confirmed by `hb_seq`.
    pub heartbeats_acked: AtomicU64,
    /// Points re-sent in backlog arrays.
    pub backlog_points: AtomicU64,
    /// Coverage gaps simulated.
    pub outages: AtomicU64,
    /// Reports sent by phones.
    pub reports: AtomicU64,
    /// Reports confirmed by `inbox/ack`.
    pub reports_acked: AtomicU64,
    /// Tips sent by the hotline integration.
    pub tips: AtomicU64,
    /// Assignment offers received.
    pub offers: AtomicU64,
    /// Offers accepted.
    pub accepted: AtomicU64,
    /// Offers declined.
    pub declined: AtomicU64,
    /// Offers left unanswered on purpose.
    pub ignored: AtomicU64,
    /// Arrivals on site.
    pub arrived: AtomicU64,
    /// Assignments completed.
    pub completed: AtomicU64,
    /// Photos stored (receipt received).
    pub evidence_stored: AtomicU64,
    /// Photos refused.
    pub evidence_rejected: AtomicU64,
    /// Plate look-ups sent.
    pub lookups: AtomicU64,
}

impl SimStats {
    /// All counters as one JSON object.
    pub fn snapshot(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "connects": g(&self.connects), "heartbeats": g(&self.heartbeats),
            "heartbeats_acked": g(&self.heartbeats_acked), "backlog_points": g(&self.backlog_points),
            "outages": g(&self.outages), "reports": g(&self.reports), "reports_acked": g(&self.reports_acked),
            "tips": g(&self.tips), "offers": g(&self.offers), "accepted": g(&self.accepted),
            "declined": g(&self.declined), "ignored": g(&self.ignored), "arrived": g(&self.arrived),
            "completed": g(&self.completed), "evidence_stored": g(&self.evidence_stored),
            "evidence_rejected": g(&self.evidence_rejected), "lookups": g(&self.lookups),
        })
    }
}

/// How a simulation runs.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// The phones to simulate.
    pub phones: Vec<Credential>,
    /// The integration that sends tips on `jd/v1/reports` (else only phones report).
    pub hotline: Option<Hotline>,
    /// Heartbeats per second per phone.
    pub rate_hz: f64,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Real time between tips (from the hotline or a phone).
    pub tip_every: Duration,
    /// Mean real seconds a phone stays in coverage (0: never drops out).
    pub mean_coverage_s: f64,
    /// Official plates to mention in tips (e.g. from the vehicle registry); empty: made up.
    pub plates: Vec<String>,
    /// Random seed (same seed, same county).
    pub seed: u64,
}

/// A running simulation.
pub struct Simulator {
    /// Live counters.
    pub stats: Arc<SimStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Simulator {
    /// Starts every phone (logins spread over the first seconds) and the tip source.
    pub fn start(options: SimOptions, shutdown: CancellationToken) -> Simulator {
        let stats = Arc::new(SimStats::default());
        let behaviour = Behaviour {
            host: options.host.clone(),
            port: options.port,
            rate_hz: options.rate_hz,
            speed: options.speed,
            mean_coverage_s: options.mean_coverage_s,
        };
        let mut tasks = Vec::new();
        let mut senders = Vec::new();
        let spread = Duration::from_millis((2_000 / options.phones.len().max(1) as u64).min(50));
        for (i, cred) in options.phones.iter().cloned().enumerate() {
            let (tx, rx) = mpsc::channel(16);
            senders.push(tx);
            let (behaviour, stats, stop) = (behaviour.clone(), stats.clone(), shutdown.clone());
            let seed = options.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(spread * i as u32).await;
                phone::run(cred, seed, behaviour, stats, rx, stop).await
            }));
        }
        tasks.push(tokio::spawn(tips(options.clone(), senders, stats.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(progress(stats.clone(), shutdown)));
        info!(phones = options.phones.len(), rate_hz = options.rate_hz, speed = options.speed, "simulator started");
        Simulator { stats, tasks }
    }

    /// Waits for every phone to say goodbye after shutdown.
    pub async fn stopped(self) {
        for t in self.tasks {
            t.await.ok();
        }
    }
}

/// Logs the counters every ten seconds.
async fn progress(stats: Arc<SimStats>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(10));
    every.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        info!(
            heartbeats = g(&stats.heartbeats),
            acked = g(&stats.heartbeats_acked),
            outages = g(&stats.outages),
            reports = g(&stats.reports) + g(&stats.tips),
            offers = g(&stats.offers),
            accepted = g(&stats.accepted),
            completed = g(&stats.completed),
            photos = g(&stats.evidence_stored),
            "simulated county"
        );
    }
}

/// What is reported in the county, by kind: (kind, text template with `{town}`, mentions a plate).
const TIP_KINDS: &[(&str, &str, bool)] = &[
    ("banquet", "群众反映{town}一饭店包间内有公职人员工作日中午饮酒", false),
    ("official-car", "{town}一农家乐门口停有公务用车，疑似公车私用", true),
    ("gift", "{town}某单位节前疑似收受购物卡、礼品", false),
    ("absence", "{town}便民服务中心上班时间窗口无人值守", false),
    ("fees", "{town}村民反映办理证明时被收取不合理费用", false),
    ("official-car", "{town}加油站一公务用车在非工作时间加油", true),
];

fn made_up_plate(rng: &mut StdRng) -> String {
    format!("鲁G{:05}", rng.random_range(0..100_000))
}

/// Sends a tip every `tip_every`: from the hotline on `jd/v1/reports`, or by asking a random
/// phone to report where it stands.
async fn tips(
    options: SimOptions,
    phones: Vec<mpsc::Sender<Command>>,
    stats: Arc<SimStats>,
    shutdown: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(options.seed ^ 0x7135);
    let hotline = options.hotline.as_ref().map(|h| {
        let mut o = MqttOptions::new(format!("{}-sim", h.username), options.host.clone(), options.port);
        o.set_credentials(h.username.clone(), h.password.clone());
        o.set_keep_alive(Duration::from_secs(30));
        (AsyncClient::new(o, 64), h.username.clone())
    });
    let (client, mut events, source) = match hotline {
        Some(((c, e), name)) => (Some(c), Some(e), name),
        None => (None, None, String::new()),
    };
    let mut every = tokio::time::interval(options.tip_every.max(Duration::from_millis(100)));
    every.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            polled = async { match events.as_mut() { Some(e) => e.poll().await, None => std::future::pending().await } } => {
                if let Err(e) = polled {
                    warn!(error = %e, "hotline connection lost; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            _ = every.tick() => {
                let (kind, template, with_plate) = *TIP_KINDS.choose(&mut rng).unwrap_or(&TIP_KINDS[0]);
                let town = TOWNSHIPS.choose(&mut rng).unwrap_or(&TOWNSHIPS[0]);
                let plate = with_plate.then(|| {
                    options.plates.choose(&mut rng).cloned().unwrap_or_else(|| made_up_plate(&mut rng))
                });
                let mut text = template.replace("{town}", town.name);
                if let Some(p) = &plate {
                    text.push_str(&format!("（车牌{p}）"));
                }
                match &client {
                    Some(c) if rng.random_bool(0.5) || phones.is_empty() => {
                        let (lat, lon) = county::near(&mut rng, town, 2_000.0);
                        let tip = IntegrationReport {
                            id: format!("t{}", ulid::Ulid::new().to_string().to_lowercase()),
                            kind: kind.to_owned(), text, lat, lon, ts: now_ms(), source: source.clone(),
                        };
                        if let Ok(bytes) = serde_json::to_vec(&tip)
                            && c.try_publish(Topic::IntegrationReport.to_string(), QoS::AtLeastOnce, false, bytes).is_ok()
                        {
                            stats.tips.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        if let Some(phone) = phones.choose(&mut rng) {
                            phone.try_send(Command::Report { kind, text, plate }).ok();
                        }
                    }
                }
            }
        }
    }
    if let (Some(c), Some(mut e)) = (client, events) {
        c.try_disconnect().ok();
        let _ = tokio::time::timeout(Duration::from_secs(1), async { while e.poll().await.is_ok() {} }).await;
    }
}

/// Now, Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    jiandu_store::now_ms()
}

/// Writes a file readable by its owner only (it holds tokens).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_lines_or_an_array() {
        let lines = r#"{"device":"d1","username":"d1","password":"p1","mqtt":"mqtt://h:1884"}

{"username":"hotline","password":"ph","mqtt":"mqtt://h:1884"}
{"device":"d2","username":"d2","password":"p2"}"#;
        let c = parse_credentials(lines).unwrap();
        assert_eq!(c.phones.iter().map(|p| p.device.as_str()).collect::<Vec<_>>(), ["d1", "d2"]);
        assert_eq!(c.phones[1].password, "p2");
        assert_eq!(c.hotline.as_ref().map(|h| h.username.as_str()), Some("hotline"));
        assert_eq!(c.mqtt.as_deref(), Some("mqtt://h:1884"));
        let array = parse_credentials(r#"[{"device":"d9","password":"x"}]"#).unwrap();
        assert_eq!(array.phones[0].device, "d9");
        assert!(array.hotline.is_none() && array.mqtt.is_none());
        let err = parse_credentials("{\"device\":\"d1\"}\n").unwrap_err();
        assert!(format!("{err:#}").contains("credentials line 1"), "{err:#}");
        let err = parse_credentials(r#"[{"password":"x"}]"#).unwrap_err();
        assert!(format!("{err:#}").contains("neither"), "{err:#}");
    }
}
