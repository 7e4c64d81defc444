//! Heartbeat ingest: GPS points from phones (and OwnTracks apps) into the live and history
//! tables, at the speed of the database and without losing a point.
//!
//! The role holds a shared subscription (`$share/ingest/…`, so several ingest processes split the
//! load) with manual QoS 1 acknowledgement, and runs as two tasks joined by one bounded batch:
//! the *receiver* parses messages into the batch and the *writer* commits whatever the batch
//! holds in one transaction ([`Store::store_heartbeats`]) while the next one fills (group
//! commit). When the batch is full the receiver stops taking messages, so a slow database slows
//! the broker instead of growing memory (the broker then drops the oldest messages of its log,
//! which the phones re-send).
//!
//! Points carrying `seq` are acknowledged to the broker on receipt and confirmed to the phone
//! after the commit with exactly the committed numbers (`inbox/ack {"hb_seq": [[from, to], …]}`,
//! coalesced, at most one ack per device every `ack_interval_ms`): whatever is lost on the way
//! (a crash, a broker log overflow, another ingest process killed) is simply never confirmed and
//! is re-sent by the phone. Points without `seq` keep the v1 watermark: their messages are
//! acknowledged to the broker only after the commit, and the device is told `inbox/ack
//! {"hb_upto": ts}`. A malformed message costs only itself: the device gets one field-level
//! `inbox/error` (rate-limited), the rejection is counted, and the valid messages around it are
//! stored. Presence (last will) flips online/offline with a `jd/v1/events/device`; background
//! tasks mark silent devices stale and prune old history.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiandu_broker::BrokerEndpoint;
use jiandu_broker::client::{Ready, RoleSession};
use jiandu_schemas::topic::{self, InboxKind, Topic};
use jiandu_schemas::{Heartbeat, MAX_ACK_RANGES};
use jiandu_store::{PositionRow, REVOCATION_LOOKBACK_MS, Store, now_ms};
use rumqttc::{AsyncClient, Publish, QoS};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::IngestError;
use crate::seq_ranges::SeqRanges;

/// Settings of heartbeat ingest (`[ingest]` in the TOML file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Most points in one commit, and most waiting for it: the writer commits whatever arrived
    /// while it was busy (so latency stays low when quiet and batches grow under load); when
    /// this many wait, ingest takes nothing more from the broker until the commit is done.
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
            batch_points: 16_000,
            ack_interval_ms: 1000,
            stale_after_s: 600,
            retention_days: 365,
            error_interval_s: 10,
            position_event_interval_s: 30,
            commit_give_up_s: 60,
        }
    }
}

/// Runs heartbeat ingest until `shutdown`; the batch in hand is committed before returning.
/// `ready` is set once the known devices are loaded and the broker confirmed the subscriptions.
pub async fn run(
    store: Store,
    broker: BrokerEndpoint,
    config: HeartbeatConfig,
    ready: Ready,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    // The session outlives both tasks, so the last batch's acks still go out before it closes.
    let session_stop = CancellationToken::new();
    let mut session = RoleSession::start(
        &broker,
        "ingest",
        vec![topic::SHARED_HEARTBEATS.into(), topic::SHARED_OWNTRACKS.into(), topic::SHARED_PRESENCE.into()],
        true,
        INCOMING_CAPACITY,
        session_stop.clone(),
    );
    // Acks to phones, position events and errors go out through a session of their own: the
    // receiving session's request channel then holds only PUBACKs, which the receiver can always
    // queue. Sharing it, a burst of commits for many devices filled it with QoS 0 publishes, the
    // receiver waited to queue a PUBACK, the session waited to hand over the next message, and
    // ingest stalled for good (found by `jiandu bench ingest --broker mosquitto`).
    let outgoing =
        RoleSession::start(&broker, "ingest-out", Vec::new(), false, OUTGOING_CAPACITY, session_stop.clone());
    let background = tokio::spawn(background_tasks(store.clone(), config.clone(), shutdown.clone()));
    let known = match store.active_device_ids().await {
        Ok(ids) => ids.into_iter().collect(),
        Err(e) => {
            // Leave nothing running behind: a supervisor may start the role again.
            background.abort();
            session_stop.cancel();
            session.stopped().await;
            outgoing.stopped().await;
            return Err(e.into());
        }
    };
    let shared = Arc::new(Shared::default());
    let writer = Writer {
        store: store.clone(),
        client: session.client.clone(),
        publisher: outgoing.client.clone(),
        config: config.clone(),
        shared: shared.clone(),
        seq_due: HashMap::new(),
        upto_due: HashMap::new(),
        last_ack: HashMap::new(),
        last_position_event: HashMap::new(),
        revocations_seen: now_ms(),
        revoked: HashSet::new(),
    };
    let mut writer = tokio::spawn(writer.run(shutdown.clone()));
    let mut receiver = Receiver {
        store,
        client: session.client.clone(),
        publisher: outgoing.client.clone(),
        config,
        shared: shared.clone(),
        last_error: HashMap::new(),
        known,
        unknown: HashMap::new(),
    };
    let mut incoming = std::mem::replace(&mut session.incoming, tokio::sync::mpsc::channel(1).1);
    info!("heartbeat ingest running");
    let mut outcome = None;
    // Ready once the broker confirmed the subscriptions: from then on no heartbeat is missed.
    session.ready_when_subscribed(ready);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            done = &mut writer => {
                outcome = Some(done);
                break;
            }
            p = incoming.recv() => {
                let Some(p) = p else { break };
                // A full batch makes this wait; the writer ending (commits failing) must not.
                let handled = tokio::select! {
                    handled = receiver.handle(p, &shutdown) => handled,
                    done = &mut writer => {
                        outcome = Some(done);
                        false
                    }
                };
                if !handled {
                    break;
                }
            }
        }
    }
    shared.close();
    let outcome = match outcome {
        Some(done) => done,
        None => writer.await,
    };
    background.abort();
    session_stop.cancel();
    session.stopped().await;
    outgoing.stopped().await;
    match outcome {
        Ok(Ok(())) => {
            info!("heartbeat ingest stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(e) => Err(IngestError::Config(format!("heartbeat writer task failed: {e}"))),
    }
}

/// Capacity of the channel from the MQTT session to the receiver. The session's request channel
/// (acks, publishes) is larger, so the receiver's acks can always be queued while the session
/// waits for the receiver: the two never wait for each other.
const INCOMING_CAPACITY: usize = 1024;
/// Capacity of the outgoing session (its request channel holds four times this many publishes).
const OUTGOING_CAPACITY: usize = 1024;

/// The batch being filled and what the writer has taken but not yet acknowledged; shared by the
/// receiver and the writer under a short lock.
#[derive(Default)]
struct Shared {
    state: Mutex<Pending>,
    /// Signalled when the batch gains points or messages, or ingest closes.
    filled: Notify,
    /// Signalled when the writer empties the batch.
    emptied: Notify,
}

/// Points and messages waiting for the next commit.
#[derive(Default)]
struct Pending {
    /// Points of the next commit.
    rows: Vec<PositionRow>,
    /// Each point's `seq`, parallel to `rows`.
    seqs: Vec<Option<u64>>,
    /// Messages to acknowledge to the broker after the next commit, in arrival order: MQTT
    /// requires PUBACKs in the order the PUBLISHes arrived (rumqttd drops a client that acks out
    /// of order), so anything arriving behind a message without `seq` waits with it.
    unacked: Vec<Publish>,
    /// Messages the writer has taken and not yet acknowledged.
    held: usize,
    /// No more messages will come.
    closed: bool,
}

impl Shared {
    fn close(&self) {
        self.state.lock().expect("ingest batch lock").closed = true;
        self.filled.notify_one();
    }
}

/// What a message on one of our topics turned out to be, and whether it may be acked at once.
enum Outcome {
    /// Points to commit; `exact` when they carry `seq` (acknowledged to the broker on receipt).
    Points { device: String, points: Vec<Heartbeat>, exact: bool },
    /// Handled already (presence, ignored, rejected).
    Done,
}

/// Parses messages into the shared batch and acknowledges them to the broker as early as
/// allowed; waits (taking nothing more from the broker) while the batch is full.
struct Receiver {
    store: Store,
    /// The receiving session: PUBACKs only.
    client: AsyncClient,
    /// The outgoing session: `inbox/error`.
    publisher: AsyncClient,
    config: HeartbeatConfig,
    shared: Arc<Shared>,
    /// When each device was last sent an `inbox/error`.
    last_error: HashMap<String, Instant>,
    /// Devices allowed to report (refreshed on a miss).
    known: HashSet<String>,
    /// Unknown ids recently looked up, so a flood of them does not hit the database.
    unknown: HashMap<String, Instant>,
}

impl Receiver {
    /// Handles one message; `false` when ingest is shutting down.
    async fn handle(&mut self, p: Publish, shutdown: &CancellationToken) -> bool {
        let outcome = self.outcome(&p).await;
        let Outcome::Points { device, points, exact } = outcome else {
            return self.enqueue(p, Vec::new(), true, shutdown).await;
        };
        metrics::counter!("jiandu_ingest_points_received_total").increment(points.len() as u64);
        let rows: Vec<(PositionRow, Option<u64>)> = points
            .into_iter()
            .map(|h| {
                let row = PositionRow {
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
                };
                (row, h.seq)
            })
            .collect();
        self.enqueue(p, rows, exact, shutdown).await
    }

    /// Adds points to the batch (waiting while it is full) and acknowledges the message now when
    /// `ack_now` and nothing before it waits, else after the commit.
    async fn enqueue(
        &mut self,
        p: Publish,
        mut rows: Vec<(PositionRow, Option<u64>)>,
        ack_now: bool,
        shutdown: &CancellationToken,
    ) -> bool {
        loop {
            let emptied = self.shared.emptied.notified();
            let ack = {
                let mut pending = self.shared.state.lock().expect("ingest batch lock");
                if !rows.is_empty() && pending.rows.len() >= self.config.batch_points.max(1) {
                    None
                } else {
                    let first_points = !rows.is_empty();
                    for (row, seq) in std::mem::take(&mut rows) {
                        pending.rows.push(row);
                        pending.seqs.push(seq);
                    }
                    let ack = ack_now && pending.unacked.is_empty() && pending.held == 0;
                    if !ack {
                        pending.unacked.push(p.clone());
                    }
                    drop(pending);
                    if first_points || !ack {
                        self.shared.filled.notify_one();
                    }
                    Some(ack)
                }
            };
            match ack {
                Some(true) => {
                    if let Err(e) = self.client.ack(&p).await {
                        warn!(error = %e, "ack failed");
                    }
                    return true;
                }
                Some(false) => return true,
                None => {
                    // The batch is full: take nothing more from the broker until the writer
                    // has taken it (backpressure).
                    metrics::counter!("jiandu_ingest_backpressure_waits_total").increment(1);
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = emptied => {}
                    }
                }
            }
        }
    }

    async fn outcome(&mut self, p: &Publish) -> Outcome {
        let rejected = |device: Option<String>, reason: &'static str, error: String| (device, reason, error);
        let topic = match Topic::parse(&p.topic) {
            Ok(t) => t,
            Err(e) => return self.reject(p, rejected(None, "topic", e.to_string())).await,
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
                    let error = format!("unknown device {device}");
                    return self.reject(p, rejected(None, "unknown_device", error)).await;
                }
                return match jiandu_schemas::parse_presence(&p.payload) {
                    Ok(presence) => {
                        self.record_presence(&device, presence.online).await;
                        Outcome::Done
                    }
                    Err(e) => self.reject(p, rejected(Some(device), "invalid", e.to_string())).await,
                };
            }
            _ => return Outcome::Done,
        };
        if !self.is_known(&device).await {
            let error = format!("unknown device {device}");
            return self.reject(p, rejected(None, "unknown_device", error)).await;
        }
        match result {
            Ok(Some(points)) => {
                let exact = points.iter().all(|h| h.seq.is_some());
                Outcome::Points { device, points, exact }
            }
            Ok(None) => Outcome::Done,
            Err(e) => self.reject(p, rejected(Some(device), "invalid", e.to_string())).await,
        }
    }

    async fn reject(
        &mut self,
        p: &Publish,
        (device, reason, error): (Option<String>, &'static str, String),
    ) -> Outcome {
        metrics::counter!("jiandu_ingest_rejected_total", "reason" => reason).increment(1);
        debug!(topic = %p.topic, device = ?device, reason, error = %error, "message rejected");
        if let Some(device) = device {
            self.tell_error(&device, &p.topic, &error).await;
        }
        Outcome::Done
    }

    async fn record_presence(&mut self, device: &str, online: bool) {
        let at = now_ms();
        for attempt in 1..=5 {
            match self.store.set_presence(device, online, at).await {
                Ok(Some(change)) => {
                    info!(device = %change.device_id, online = change.online, "presence changed");
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    warn!(device = %device, error = %e, attempt, "recording presence failed");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
            }
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

    /// Sends one `inbox/error` to a device, at most one per `error_interval_s`.
    async fn tell_error(&mut self, device: &str, topic: &str, error: &str) {
        let interval = Duration::from_secs(self.config.error_interval_s);
        if self.last_error.get(device).is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        self.last_error.insert(device.to_owned(), Instant::now());
        let body = json!({"topic": topic, "error": error});
        if let Err(e) = self.publisher.try_publish(
            topic::inbox(device, InboxKind::Error),
            QoS::AtLeastOnce,
            false,
            body.to_string(),
        ) {
            warn!(device, error = %e, "could not send inbox/error");
        }
    }
}

/// Commits batches, then acknowledges their held messages to the broker and their points to
/// the phones (`hb_seq` / `hb_upto`, throttled per device).
struct Writer {
    store: Store,
    /// The receiving session: PUBACKs only.
    client: AsyncClient,
    /// The outgoing session: `inbox/ack` and position events.
    publisher: AsyncClient,
    config: HeartbeatConfig,
    shared: Arc<Shared>,
    /// Committed `seq`s per device not yet confirmed by `inbox/ack`.
    seq_due: HashMap<String, SeqRanges>,
    /// Newest committed point without `seq` per device not yet confirmed by `inbox/ack`.
    upto_due: HashMap<String, i64>,
    /// When each device was last sent an `inbox/ack`.
    last_ack: HashMap<String, Instant>,
    /// When each device's position was last published as an event.
    last_position_event: HashMap<String, Instant>,
    /// When revocations were last read (Unix ms).
    revocations_seen: i64,
    /// Devices revoked while this process runs: their points still queued are not stored.
    revoked: HashSet<String>,
}

impl Writer {
    async fn run(mut self, shutdown: CancellationToken) -> Result<(), IngestError> {
        let mut ack_tick = tokio::time::interval(Duration::from_millis(self.config.ack_interval_ms.max(10)));
        let shared = self.shared.clone();
        loop {
            let filled = shared.filled.notified();
            let (batch, closed) = {
                let mut pending = shared.state.lock().expect("ingest batch lock");
                let batch = Pending {
                    rows: std::mem::take(&mut pending.rows),
                    seqs: std::mem::take(&mut pending.seqs),
                    unacked: std::mem::take(&mut pending.unacked),
                    held: 0,
                    closed: false,
                };
                pending.held += batch.unacked.len();
                (batch, pending.closed)
            };
            if !batch.rows.is_empty() || !batch.unacked.is_empty() {
                shared.emptied.notify_one();
                self.commit(batch, &shutdown).await?;
                continue;
            }
            if closed {
                break;
            }
            tokio::select! {
                _ = filled => {}
                _ = ack_tick.tick() => self.send_due_acks(false),
            }
        }
        self.send_due_acks(true);
        Ok(())
    }

    /// Right before a commit, learns which devices were revoked since the last look and drops
    /// their points: a revoked phone's messages already queued at the broker are not stored.
    async fn drop_revoked(&mut self, batch: &mut Pending) {
        let now = now_ms();
        match self.store.revoked_since(self.revocations_seen - REVOCATION_LOOKBACK_MS).await {
            Ok(revoked) => {
                self.revocations_seen = now;
                self.revoked.extend(revoked.devices);
            }
            // The login check still holds; the next commit looks again.
            Err(e) => warn!(error = %e, "cannot read revocations"),
        }
        if self.revoked.is_empty() {
            return;
        }
        let before = batch.rows.len();
        let revoked = &self.revoked;
        (batch.rows, batch.seqs) = std::mem::take(&mut batch.rows)
            .into_iter()
            .zip(std::mem::take(&mut batch.seqs))
            .filter(|(row, _)| !revoked.contains(&row.device_id))
            .unzip();
        if batch.rows.len() < before {
            metrics::counter!("jiandu_ingest_rejected_total", "reason" => "revoked")
                .increment((before - batch.rows.len()) as u64);
            info!(points = before - batch.rows.len(), "points of revoked devices dropped");
        }
    }

    /// Commits the batch (retrying with backoff while the database is unavailable), then
    /// acknowledges; fails when commits keep failing for `commit_give_up_s`.
    async fn commit(&mut self, mut batch: Pending, shutdown: &CancellationToken) -> Result<(), IngestError> {
        if !batch.rows.is_empty() {
            self.drop_revoked(&mut batch).await;
        }
        if !batch.rows.is_empty() {
            let started = Instant::now();
            let mut backoff = Duration::from_millis(50);
            loop {
                match self.store.store_heartbeats(&batch.rows, now_ms()).await {
                    Ok(inserted) => {
                        metrics::counter!("jiandu_ingest_points_stored_total").increment(inserted);
                        metrics::histogram!("jiandu_ingest_commit_seconds").record(started.elapsed().as_secs_f64());
                        debug!(points = batch.rows.len(), inserted, "heartbeats committed");
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, points = batch.rows.len(), "committing heartbeats failed; retrying");
                        if shutdown.is_cancelled() {
                            // Not confirmed: the phones still have these points.
                            return Ok(());
                        }
                        if started.elapsed() >= Duration::from_secs(self.config.commit_give_up_s.max(1)) {
                            // Not confirmed either: the phones re-send to the restarted role.
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
        }
        let held = batch.unacked.len();
        for p in &batch.unacked {
            if let Err(e) = self.client.ack(p).await {
                warn!(error = %e, "ack failed");
            }
        }
        // Only now may the receiver ack on receipt again: these acks are queued before its next.
        self.shared.state.lock().expect("ingest batch lock").held -= held;
        let mut newest: HashMap<&str, &PositionRow> = HashMap::new();
        for (row, seq) in batch.rows.iter().zip(&batch.seqs) {
            match seq {
                // Looked up before inserting: no device id copied per point.
                Some(seq) => match self.seq_due.get_mut(&row.device_id) {
                    Some(due) => due.insert(*seq),
                    None => {
                        let mut due = SeqRanges::default();
                        due.insert(*seq);
                        self.seq_due.insert(row.device_id.clone(), due);
                    }
                },
                None => {
                    let due = self.upto_due.entry(row.device_id.clone()).or_insert(row.ts);
                    *due = (*due).max(row.ts);
                }
            }
            newest
                .entry(&row.device_id)
                .and_modify(|e| {
                    if row.ts > e.ts {
                        *e = row
                    }
                })
                .or_insert(row);
        }
        let newest: Vec<PositionRow> = newest.into_values().cloned().collect();
        for row in &newest {
            self.sample_position(row);
        }
        self.send_due_acks(false);
        Ok(())
    }

    /// Sends `inbox/ack` to devices whose last ack is older than the interval (all of them when
    /// `all`): `hb_seq` with the committed ranges and/or `hb_upto`. An ack that cannot be queued
    /// now stays due for the next tick.
    fn send_due_acks(&mut self, all: bool) {
        let interval = Duration::from_millis(self.config.ack_interval_ms);
        let due: Vec<String> = self
            .seq_due
            .keys()
            .chain(self.upto_due.keys())
            .filter(|d| all || self.last_ack.get(*d).is_none_or(|t| t.elapsed() >= interval))
            .cloned()
            .collect::<HashSet<String>>()
            .into_iter()
            .collect();
        for device in due {
            let topic = topic::inbox(&device, InboxKind::Ack);
            let mut sent = false;
            if let Some(ranges) = self.seq_due.get_mut(&device) {
                while !ranges.is_empty() {
                    let chunk = ranges.take(MAX_ACK_RANGES);
                    let body = json!({ "hb_seq": chunk }).to_string();
                    // QoS 0: a lost ack only costs a re-send, which is stored once.
                    if let Err(e) = self.publisher.try_publish(&topic, QoS::AtMostOnce, false, body) {
                        debug!(device = %device, error = %e, "inbox/ack not queued; retrying later");
                        for [from, to] in chunk {
                            ranges.insert_range(from, to);
                        }
                        break;
                    }
                    sent = true;
                }
                if ranges.is_empty() {
                    self.seq_due.remove(&device);
                }
            }
            if let Some(upto) = self.upto_due.remove(&device) {
                let body = json!({ "hb_upto": upto }).to_string();
                match self.publisher.try_publish(&topic, QoS::AtMostOnce, false, body) {
                    Ok(()) => sent = true,
                    Err(e) => {
                        debug!(device = %device, error = %e, "inbox/ack not queued; retrying later");
                        self.upto_due.insert(device.clone(), upto);
                    }
                }
            }
            if sent {
                self.last_ack.insert(device, Instant::now());
            }
        }
    }

    /// Publishes `jd/v1/events/position` for a device at most every `position_event_interval_s`
    /// (best effort, QoS 0: the durable record is the history table).
    fn sample_position(&mut self, row: &PositionRow) {
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
        self.publisher
            .try_publish(topic::event(topic::EventKind::Position), QoS::AtMostOnce, false, event.to_string())
            .ok();
    }
}

/// Points pruned per transaction.
const PRUNE_CHUNK: i64 = 10_000;

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
                let mut total = 0;
                loop {
                    match store.prune_history(before, PRUNE_CHUNK).await {
                        Ok(n) => { total += n; if n < PRUNE_CHUNK as u64 { break; } }
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
