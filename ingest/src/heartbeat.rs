//! Heartbeat ingest: GPS points from phones (and OwnTracks apps) into the live and history
//! tables, fast and without losing a point.
//!
//! The role holds a shared subscription (`$share/ingest/…`, so several ingest processes split the
//! load) with manual QoS 1 acknowledgement. Valid points are batched by size and time into one
//! transaction ([`Store::store_heartbeats`]); only after the commit are the MQTT messages acked
//! and each device told `inbox/ack {"hb_upto": ts}` (at most about once a second), so a crash at
//! any moment loses nothing a phone following the protocol keeps: whatever was not acked is
//! re-sent, and re-sent points are stored once. A malformed message costs only itself: the
//! device gets one field-level `inbox/error` (rate-limited), the rejection is counted, and the
//! valid messages around it are stored. Presence (last will) flips online/offline with a
//! `jd/v1/events/device`; background tasks mark silent devices stale and prune old history.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use jiandu_broker::BrokerEndpoint;
use jiandu_broker::client::{PhoneInbox, RoleSession};
use jiandu_schemas::Heartbeat;
use jiandu_schemas::topic::{self, InboxKind, Topic};
use jiandu_store::{PositionRow, REVOCATION_LOOKBACK_MS, Store, now_ms};
use rumqttc::{AsyncClient, Publish, QoS};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::IngestError;

/// Settings of heartbeat ingest (`[ingest]` in the TOML file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Most points in one commit. A batch is committed as soon as no further message is waiting
    /// (so latency stays low when quiet and batches grow under load) or when it is this full.
    pub batch_points: usize,
    /// Least time between two `inbox/ack` to one device (milliseconds).
    pub ack_interval_ms: u64,
    /// An online device silent for this long is marked stale (seconds).
    pub stale_after_s: u64,
    /// History older than this is pruned (days; 0 keeps everything).
    pub retention_days: u64,
    /// Least time between two `inbox/error` to one device (seconds).
    pub error_interval_s: u64,
    /// Least time between two sampled `jd/v1/events/position` per device (seconds).
    pub position_event_interval_s: u64,
    /// Commits failing for this long end the role with an error, so `serve` restarts it and
    /// reports it failing (seconds).
    pub commit_give_up_s: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            batch_points: 4000,
            ack_interval_ms: 1000,
            stale_after_s: 600,
            retention_days: 365,
            error_interval_s: 10,
            position_event_interval_s: 30,
            commit_give_up_s: 60,
        }
    }
}

/// What a message on one of our topics turned out to be.
enum Parsed {
    Points { device: String, points: Vec<Heartbeat> },
    Presence { device: String, online: bool },
    Ignored,
    Rejected { device: Option<String>, reason: &'static str, error: String },
}

/// Runs heartbeat ingest until `shutdown`; the batch in hand is committed before returning.
pub async fn run(
    store: Store,
    broker: BrokerEndpoint,
    config: HeartbeatConfig,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    // The session outlives the loop, so the last batch's acks still go out before it closes.
    let session_stop = CancellationToken::new();
    let mut session = RoleSession::start(
        &broker,
        "ingest",
        vec![topic::SHARED_HEARTBEATS.into(), topic::SHARED_OWNTRACKS.into(), topic::SHARED_PRESENCE.into()],
        true,
        16_384,
        session_stop.clone(),
    );
    let background = tokio::spawn(background_tasks(store.clone(), config.clone(), shutdown.clone()));
    let mut ingest = match Ingest::new(store, session.client.clone(), config).await {
        Ok(ingest) => ingest,
        Err(e) => {
            // Leave nothing running behind: a supervisor may start the role again.
            background.abort();
            session_stop.cancel();
            session.stopped().await;
            return Err(e);
        }
    };
    let mut incoming = std::mem::replace(&mut session.incoming, tokio::sync::mpsc::channel(1).1);
    info!("heartbeat ingest running");
    let mut ack_tick = tokio::time::interval(Duration::from_millis(ingest.config.ack_interval_ms.max(10)));
    let mut failure = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            p = incoming.recv() => {
                let Some(p) = p else { break };
                ingest.handle(p).await;
                // Take everything already waiting, then commit: the broker holds back further
                // messages until these are acknowledged (rumqttd allows 100 in flight), so
                // waiting for more would only add latency.
                while ingest.batch.len() < ingest.config.batch_points {
                    match incoming.try_recv() {
                        Ok(p) => ingest.handle(p).await,
                        Err(_) => break,
                    }
                }
                if let Err(e) = ingest.flush(&shutdown).await {
                    failure = Some(e);
                    break;
                }
            }
            _ = ack_tick.tick() => ingest.send_due_acks(false).await,
        }
    }
    if failure.is_none() {
        failure = ingest.flush(&shutdown).await.err();
        ingest.send_due_acks(true).await;
    }
    background.abort();
    session_stop.cancel();
    session.stopped().await;
    match failure {
        None => {
            info!("heartbeat ingest stopped");
            Ok(())
        }
        Some(e) => Err(e),
    }
}

/// The batching state of one ingest process.
struct Ingest {
    store: Store,
    client: AsyncClient,
    config: HeartbeatConfig,
    /// Points waiting for the next commit.
    batch: Vec<PositionRow>,
    /// Every message not yet acknowledged, in arrival order: MQTT requires PUBACKs in the order
    /// the PUBLISHes arrived (rumqttd drops a client that acks out of order), so a message
    /// finished early (rejected, presence) waits behind the batch it arrived after.
    unacked: Vec<Publish>,
    /// Newest committed point per device not yet confirmed by `inbox/ack`.
    ack_due: HashMap<String, i64>,
    /// When each device was last sent an `inbox/ack`.
    last_ack: HashMap<String, Instant>,
    /// When each device was last sent an `inbox/error`.
    last_error: HashMap<String, Instant>,
    /// When each device's position was last published as an event.
    last_position_event: HashMap<String, Instant>,
    /// Devices allowed to report (refreshed on a miss).
    known: HashSet<String>,
    /// Unknown ids recently looked up, so a flood of them does not hit the database.
    unknown: HashMap<String, Instant>,
    /// When revocations were last read (Unix ms).
    revocations_seen: i64,
}

impl Ingest {
    async fn new(store: Store, client: AsyncClient, config: HeartbeatConfig) -> Result<Ingest, IngestError> {
        let known = store.active_device_ids().await?.into_iter().collect();
        Ok(Ingest {
            store,
            client,
            config,
            batch: Vec::new(),
            unacked: Vec::new(),
            ack_due: HashMap::new(),
            last_ack: HashMap::new(),
            last_error: HashMap::new(),
            last_position_event: HashMap::new(),
            known,
            unknown: HashMap::new(),
            revocations_seen: now_ms(),
        })
    }

    async fn handle(&mut self, p: Publish) {
        match self.parse(&p).await {
            Parsed::Points { device, points } => {
                metrics::counter!("jiandu_ingest_points_received_total").increment(points.len() as u64);
                self.batch.extend(points.into_iter().map(|h| PositionRow {
                    device_id: device.clone(),
                    ts: h.ts,
                    lat: h.lat,
                    lon: h.lon,
                    acc: h.acc,
                    spd: h.spd,
                    hdg: h.hdg,
                    alt: h.alt,
                    bat: h.bat,
                    duty: h.duty.map(|d| d.as_str().to_owned()),
                }));
                self.unacked.push(p);
            }
            Parsed::Presence { device, online } => {
                let at = now_ms();
                for attempt in 1..=5 {
                    match self.store.set_presence(&device, online, at).await {
                        Ok(Some(change)) => {
                            info!(device = %change.device_id, online = change.online, "presence changed");
                            break;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            warn!(device = %device, error = %e, attempt, "recording presence failed");
                            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                        }
                    }
                }
                self.ack(&p).await;
            }
            Parsed::Ignored => self.ack(&p).await,
            Parsed::Rejected { device, reason, error } => {
                metrics::counter!("jiandu_ingest_rejected_total", "reason" => reason).increment(1);
                debug!(topic = %p.topic, device = ?device, reason, error = %error, "message rejected");
                if let Some(device) = device {
                    self.tell_error(&device, &p.topic, &error).await;
                }
                self.ack(&p).await;
            }
        }
    }

    async fn parse(&mut self, p: &Publish) -> Parsed {
        let topic = match Topic::parse(&p.topic) {
            Ok(t) => t,
            Err(e) => return Parsed::Rejected { device: None, reason: "topic", error: e.to_string() },
        };
        let (device, result) = match topic {
            Topic::Heartbeat { device } => {
                let r = jiandu_schemas::parse_heartbeats(&p.payload);
                (device, r.map(Some))
            }
            Topic::OwnTracks { user, .. } => {
                let r = jiandu_schemas::parse_owntracks(&p.payload).map(|o| o.map(|h| vec![h]));
                (user, r)
            }
            Topic::Presence { device } => {
                if !self.is_known(&device).await {
                    return Parsed::Rejected {
                        device: None,
                        reason: "unknown_device",
                        error: format!("unknown device {device}"),
                    };
                }
                return match jiandu_schemas::parse_presence(&p.payload) {
                    Ok(presence) => Parsed::Presence { device, online: presence.online },
                    Err(e) => Parsed::Rejected { device: Some(device), reason: "invalid", error: e.to_string() },
                };
            }
            _ => return Parsed::Ignored,
        };
        if !self.is_known(&device).await {
            return Parsed::Rejected {
                device: None,
                reason: "unknown_device",
                error: format!("unknown device {device}"),
            };
        }
        match result {
            Ok(Some(points)) => Parsed::Points { device, points },
            Ok(None) => Parsed::Ignored,
            Err(e) => Parsed::Rejected { device: Some(device), reason: "invalid", error: e.to_string() },
        }
    }

    /// Right before a commit, learns which devices were revoked since the last look and drops
    /// their points: a revoked phone's messages already queued at the broker are not stored.
    async fn drop_revoked(&mut self) {
        let now = now_ms();
        match self.store.revoked_since(self.revocations_seen - REVOCATION_LOOKBACK_MS).await {
            Ok(revoked) => {
                self.revocations_seen = now;
                for device in revoked.devices {
                    self.known.remove(&device);
                    self.unknown.insert(device, Instant::now());
                }
            }
            // The login check still holds; the next commit looks again.
            Err(e) => warn!(error = %e, "cannot read revocations"),
        }
        let before = self.batch.len();
        let unknown = &self.unknown;
        self.batch.retain(|row| !unknown.contains_key(&row.device_id));
        if self.batch.len() < before {
            metrics::counter!("jiandu_ingest_rejected_total", "reason" => "revoked")
                .increment((before - self.batch.len()) as u64);
            info!(points = before - self.batch.len(), "points of revoked devices dropped");
        }
    }

    async fn is_known(&mut self, device: &str) -> bool {
        if self.known.contains(device) {
            return true;
        }
        if self.unknown.get(device).is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return false;
        }
        match self.store.device(device).await {
            Ok(Some(d)) if d.revoked_at.is_none() => {
                self.unknown.remove(device);
                self.known.insert(device.to_owned());
                true
            }
            Ok(_) => {
                if self.unknown.len() > 100_000 {
                    self.unknown.clear();
                }
                self.unknown.insert(device.to_owned(), Instant::now());
                false
            }
            // The database is the only judge; when it is down, keep the message (it is only
            // stored once the database is back).
            Err(_) => true,
        }
    }

    /// Acknowledges a finished message now if nothing before it is still waiting for a commit.
    async fn ack(&mut self, p: &Publish) {
        if self.unacked.is_empty() {
            if let Err(e) = self.client.ack(p).await {
                warn!(error = %e, "ack failed");
            }
        } else {
            self.unacked.push(p.clone());
        }
    }

    /// Sends one `inbox/error` to a device, at most one per `error_interval_s`.
    async fn tell_error(&mut self, device: &str, topic: &str, error: &str) {
        let interval = Duration::from_secs(self.config.error_interval_s);
        if self.last_error.get(device).is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        self.last_error.insert(device.to_owned(), Instant::now());
        let body = json!({"topic": topic, "error": error});
        PhoneInbox::new(self.client.clone()).send(device, InboxKind::Error, &body).await;
    }

    /// Commits the batch (retrying with backoff), then acknowledges its messages; fails when
    /// commits keep failing for `commit_give_up_s`.
    async fn flush(&mut self, shutdown: &CancellationToken) -> Result<(), IngestError> {
        if self.batch.is_empty() {
            // Nothing waits for a commit, so nothing can be queued for acknowledgement.
            return Ok(());
        }
        self.drop_revoked().await;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        while !self.batch.is_empty() {
            match self.store.store_heartbeats(&self.batch, now_ms()).await {
                Ok(inserted) => {
                    metrics::counter!("jiandu_ingest_points_stored_total").increment(inserted);
                    metrics::histogram!("jiandu_ingest_commit_seconds").record(started.elapsed().as_secs_f64());
                    debug!(points = self.batch.len(), inserted, "heartbeats committed");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, points = self.batch.len(), "committing heartbeats failed; retrying");
                    if shutdown.is_cancelled() {
                        // Not acked: the broker and the phones still have these points.
                        self.batch.clear();
                        self.unacked.clear();
                        return Ok(());
                    }
                    if started.elapsed() >= Duration::from_secs(self.config.commit_give_up_s.max(1)) {
                        // Not acked either: the restarted role gets them again.
                        return Err(IngestError::CommitsFailing {
                            seconds: started.elapsed().as_secs(),
                            last: e.to_string(),
                        });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        for p in std::mem::take(&mut self.unacked) {
            if let Err(e) = self.client.ack(&p).await {
                warn!(error = %e, "ack failed");
            }
        }
        let batch = std::mem::take(&mut self.batch);
        let mut newest: HashMap<&str, &PositionRow> = HashMap::new();
        for row in &batch {
            newest
                .entry(&row.device_id)
                .and_modify(|e| {
                    if row.ts > e.ts {
                        *e = row
                    }
                })
                .or_insert(row);
        }
        for (device, row) in newest {
            let due = self.ack_due.entry(device.to_owned()).or_insert(row.ts);
            *due = (*due).max(row.ts);
            self.sample_position(row).await;
        }
        self.send_due_acks(false).await;
        Ok(())
    }

    /// Sends `inbox/ack {"hb_upto"}` to devices whose last ack is older than the interval (all
    /// of them when `all`).
    async fn send_due_acks(&mut self, all: bool) {
        let interval = Duration::from_millis(self.config.ack_interval_ms);
        let due: Vec<String> = self
            .ack_due
            .keys()
            .filter(|d| all || self.last_ack.get(*d).is_none_or(|t| t.elapsed() >= interval))
            .cloned()
            .collect();
        for device in due {
            let Some(upto) = self.ack_due.remove(&device) else { continue };
            self.last_ack.insert(device.clone(), Instant::now());
            let body = json!({ "hb_upto": upto }).to_string();
            // QoS 0: an ack is superseded by the next one; a lost one only costs a re-send.
            if let Err(e) =
                self.client.publish(topic::inbox(&device, InboxKind::Ack), QoS::AtMostOnce, false, body).await
            {
                warn!(device = %device, error = %e, "could not send inbox/ack");
            }
        }
    }

    /// Publishes `jd/v1/events/position` for a device at most every `position_event_interval_s`
    /// (best effort, QoS 0: the durable record is the history table).
    async fn sample_position(&mut self, row: &PositionRow) {
        let interval = Duration::from_secs(self.config.position_event_interval_s);
        if self.last_position_event.get(&row.device_id).is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        self.last_position_event.insert(row.device_id.clone(), Instant::now());
        let event = json!({
            "type": "position",
            "id": format!("{}-{}", row.device_id, row.ts),
            "ts": now_ms(),
            "data": {"device": row.device_id, "ts": row.ts, "lat": row.lat, "lon": row.lon, "spd": row.spd,
                     "hdg": row.hdg, "duty": row.duty},
        });
        self.client
            .publish(topic::event(topic::EventKind::Position), QoS::AtMostOnce, false, event.to_string())
            .await
            .ok();
    }
}

/// Stale marking every 30 s and history pruning every hour, off the ingest path.
async fn background_tasks(store: Store, config: HeartbeatConfig, shutdown: CancellationToken) {
    let mut stale_tick = tokio::time::interval(Duration::from_secs(30));
    let mut prune_tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = stale_tick.tick() => {
                let cutoff = now_ms() - (config.stale_after_s as i64) * 1000;
                match store.mark_stale(cutoff).await {
                    Ok(ids) if !ids.is_empty() => info!(devices = ids.len(), "devices marked stale"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "stale marking failed"),
                }
            }
            _ = prune_tick.tick(), if config.retention_days > 0 => {
                let before = now_ms() - (config.retention_days as i64) * 86_400_000;
                let mut after = String::new();
                let mut total = 0;
                loop {
                    match store.prune_history(before, &after, 200).await {
                        Ok((n, Some(last))) => { total += n; after = last; }
                        Ok((n, None)) => { total += n; break; }
                        Err(e) => { warn!(error = %e, "pruning history failed"); break; }
                    }
                    if shutdown.is_cancelled() { return; }
                    tokio::task::yield_now().await;
                }
                if total > 0 { info!(points = total, "old history pruned"); }
            }
        }
    }
}
