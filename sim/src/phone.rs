//! One simulated work phone: a real MQTT client (rumqttc) that logs in as its device, keeps its
//! presence (with a last will), moves, sends heartbeats, reports what it sees, answers
//! assignment offers, uploads a photo as evidence and completes the job, following the v1
//! contract's end-to-end delivery rules (DESIGN §3): every heartbeat carries `seq` and is kept
//! until an `inbox/ack` `hb_seq` range names it, and is re-sent as a backlog array after an
//! outage or when unconfirmed for a few seconds; reports and assignment
//! statuses are re-sent until acknowledged; an upload is resumed from its `partial` receipts.
//!
//! Everything runs in one task per phone: the event loop is polled in the same `select!` as the
//! clock, and publishes use `try_publish`, so the phone never waits on itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiandu_schemas::topic::{self, Topic};
use jiandu_schemas::{
    Ack, AsgStatus, AssignmentOffer, AssignmentStatus, Duty, ErrorNotice, EvidenceMeta, Heartbeat, InboxKind,
    LookupKind, LookupRequest, MAX_BACKLOG, Presence, Receipt, Report,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::county::Walker;
use super::{Credential, SimStats, now_ms, photo};

/// Most points a phone keeps while out of coverage (the oldest are dropped beyond it).
const BACKLOG_CAP: usize = 20_000;
/// Unconfirmed messages are sent again after this long.
const RESEND_AFTER: Duration = Duration::from_secs(15);
/// Bytes per evidence chunk (the photo is about 57 KiB: four chunks).
const CHUNK: usize = 16 * 1024;
/// Close enough to the spot to say "arrived", metres.
const ARRIVED_WITHIN_M: f64 = 30.0;

/// Something the simulator's dispatcher of tips asks a phone to do.
#[derive(Debug)]
pub enum Command {
    /// Report this (an inspector noticed something where they stand).
    Report { kind: &'static str, text: String, plate: Option<String> },
}

/// Where the phones log in and how they behave (shared by all phones of a run).
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Heartbeats per second of real time.
    pub rate_hz: f64,
    /// Simulated seconds per real second (movement, pauses, time on site).
    pub speed: f64,
    /// Mean real seconds between coverage drop-outs (0: never).
    pub mean_coverage_s: f64,
}

/// An assignment the phone holds.
#[derive(Debug)]
struct Job {
    id: String,
    report: Report,
    stage: Stage,
    upload: Option<Upload>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// On the way (accepted).
    Travelling,
    /// Arrived; photo being uploaded; finishes after `until` once the photo is stored.
    OnSite { until: Instant },
}

/// An evidence upload in progress.
#[derive(Debug)]
struct Upload {
    evid: String,
    meta: EvidenceMeta,
    data: Vec<u8>,
    /// `meta` messages whose `partial` answer has not arrived yet; the answer to the last one
    /// lists what really is missing.
    metas_out: u32,
    stored: bool,
    last_sent: Instant,
}

/// Runs one phone until `shutdown`.
pub async fn run(
    cred: Credential,
    seed: u64,
    behaviour: Behaviour,
    stats: Arc<SimStats>,
    mut commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let mut phone = Phone::new(cred, seed, behaviour, stats);
    let tick_every = Duration::from_secs_f64(1.0 / phone.behaviour.rate_hz.clamp(0.001, 100.0));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            polled = poll(&mut phone.events) => phone.on_event(polled),
            _ = tick.tick() => {
                let now = Instant::now();
                let dt = now.duration_since(last_tick).as_secs_f64();
                last_tick = now;
                phone.on_tick(dt);
            }
            Some(cmd) = commands.recv() => phone.on_command(cmd),
        }
    }
    phone.goodbye().await;
}

/// Polls the event loop if connected; otherwise waits forever (the clock decides when to
/// reconnect).
async fn poll(events: &mut Option<EventLoop>) -> Option<Result<Event, rumqttc::ConnectionError>> {
    match events {
        Some(e) => Some(e.poll().await),
        None => std::future::pending().await,
    }
}

struct Phone {
    cred: Credential,
    behaviour: Behaviour,
    stats: Arc<SimStats>,
    rng: StdRng,
    walker: Walker,
    client: Option<AsyncClient>,
    events: Option<EventLoop>,
    connected: bool,
    /// When the current coverage gap ends (None: in coverage).
    outage_until: Option<Instant>,
    next_outage: Instant,
    /// Points not yet confirmed by `hb_seq`, in `seq` order.
    backlog: VecDeque<Heartbeat>,
    last_ts: i64,
    /// The `seq` of the last point; starts at the start time × 1000, so it keeps increasing
    /// across runs of the simulator as a real app keeps it across restarts.
    last_seq: u64,
    last_backlog_send: Instant,
    on_duty: bool,
    next_shift_change: Instant,
    battery: f64,
    /// Reports sent and not yet acknowledged, by id.
    reports: HashMap<String, (Report, Instant)>,
    /// Assignment statuses sent and not yet acknowledged.
    statuses: Vec<(String, AssignmentStatus, Instant)>,
    job: Option<Job>,
    /// Wait before reconnecting after a failed connection (doubles up to 10 s).
    reconnect_backoff: Duration,
}

impl Phone {
    fn new(cred: Credential, seed: u64, behaviour: Behaviour, stats: Arc<SimStats>) -> Phone {
        let mut rng = StdRng::seed_from_u64(seed);
        let home = rng.random_range(0..super::county::TOWNSHIPS.len());
        let walker = Walker::new(&mut rng, home);
        let now = Instant::now();
        let on_duty = rng.random_bool(0.85);
        let next_outage = now + exp_delay(&mut rng, behaviour.mean_coverage_s);
        let next_shift_change = now + exp_delay(&mut rng, 4.0 * 3600.0 / behaviour.speed.max(0.001));
        let mut phone = Phone {
            cred,
            stats,
            walker,
            client: None,
            events: None,
            connected: false,
            outage_until: None,
            next_outage,
            backlog: VecDeque::new(),
            last_ts: 0,
            last_seq: (now_ms().max(0) as u64).saturating_mul(1000),
            last_backlog_send: now,
            on_duty,
            next_shift_change,
            battery: rng.random_range(55.0..100.0),
            reports: HashMap::new(),
            statuses: Vec::new(),
            job: None,
            reconnect_backoff: Duration::from_millis(500),
            behaviour,
            rng,
        };
        phone.connect();
        phone
    }

    fn device(&self) -> &str {
        &self.cred.device
    }

    fn presence_topic(&self) -> String {
        Topic::Presence { device: self.cred.device.clone() }.to_string()
    }

    /// Opens a new connection with the offline presence as last will.
    fn connect(&mut self) {
        let mut o = MqttOptions::new(self.cred.device.clone(), self.behaviour.host.clone(), self.behaviour.port);
        o.set_credentials(self.cred.device.clone(), self.cred.password.clone());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(true);
        o.set_max_packet_size(512 * 1024, 512 * 1024);
        o.set_inflight(100);
        let will = serde_json::to_vec(&Presence { online: false, ts: now_ms() }).unwrap_or_default();
        o.set_last_will(LastWill::new(self.presence_topic(), will, QoS::AtLeastOnce, true));
        let (client, events) = AsyncClient::new(o, 4096);
        self.client = Some(client);
        self.events = Some(events);
        self.connected = false;
    }

    /// Leaves coverage: the connection just dies (no DISCONNECT), so the broker sends the will.
    fn drop_out(&mut self) {
        let real = self.rng.random_range(10.0..60.0) / self.behaviour.speed.max(1.0);
        debug!(device = %self.cred.device, seconds = real, "out of coverage");
        self.client = None;
        self.events = None;
        self.connected = false;
        self.outage_until = Some(Instant::now() + Duration::from_secs_f64(real.max(2.0)));
        self.stats.outages.fetch_add(1, Ordering::Relaxed);
    }

    fn publish(&mut self, topic: String, payload: Vec<u8>, retain: bool) -> bool {
        if !self.connected {
            return false;
        }
        let Some(client) = &self.client else { return false };
        client.try_publish(topic, QoS::AtLeastOnce, retain, payload).is_ok()
    }

    fn publish_json(&mut self, topic: String, body: &impl serde::Serialize) -> bool {
        match serde_json::to_vec(body) {
            Ok(bytes) => self.publish(topic, bytes, false),
            Err(_) => false,
        }
    }

    fn on_event(&mut self, polled: Option<Result<Event, rumqttc::ConnectionError>>) {
        match polled {
            Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => self.on_connected(),
            Some(Ok(Event::Incoming(Packet::Publish(p)))) => self.on_inbox(&p.topic, &p.payload),
            Some(Ok(_)) | None => {}
            Some(Err(e)) => {
                if self.connected {
                    debug!(device = %self.cred.device, error = %e, "connection lost");
                }
                self.connected = false;
                // The next poll reconnects; wait a little first so a refused login is not a busy loop.
                self.outage_until = Some(Instant::now() + self.reconnect_backoff);
                self.reconnect_backoff = (self.reconnect_backoff * 2).min(Duration::from_secs(10));
                if matches!(e, rumqttc::ConnectionError::ConnectionRefused(_)) {
                    warn!(device = %self.cred.device, error = %e, "the broker refused this phone's login");
                }
                self.client = None;
                self.events = None;
            }
        }
    }

    fn on_connected(&mut self) {
        self.connected = true;
        self.reconnect_backoff = Duration::from_millis(500);
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = &self.client {
            c.try_subscribe(topic::inbox_filter(self.device()), QoS::AtLeastOnce).ok();
        }
        let presence = serde_json::to_vec(&Presence { online: true, ts: now_ms() }).unwrap_or_default();
        let topic = self.presence_topic();
        self.publish(topic, presence, true);
        self.send_backlog();
        self.resend(true);
    }

    /// Sends every unconfirmed point, as arrays of at most [`MAX_BACKLOG`].
    fn send_backlog(&mut self) {
        self.last_backlog_send = Instant::now();
        if self.backlog.is_empty() {
            return;
        }
        let topic = Topic::Heartbeat { device: self.cred.device.clone() }.to_string();
        let points: Vec<Heartbeat> = self.backlog.iter().cloned().collect();
        for batch in points.chunks(MAX_BACKLOG) {
            if self.publish_json(topic.clone(), &batch) {
                self.stats.backlog_points.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Sends again what was not confirmed: everything after a reconnect, otherwise what has
    /// waited longer than [`RESEND_AFTER`].
    fn resend(&mut self, all: bool) {
        let now = Instant::now();
        let due = |at: Instant| all || now.duration_since(at) >= RESEND_AFTER;
        let reports: Vec<Report> = self.reports.values().filter(|(_, at)| due(*at)).map(|(r, _)| r.clone()).collect();
        for r in reports {
            let topic = Topic::Report { device: self.cred.device.clone() }.to_string();
            self.publish_json(topic, &r);
            if let Some(entry) = self.reports.get_mut(&r.id) {
                entry.1 = now;
            }
        }
        let statuses: Vec<(String, AssignmentStatus)> =
            self.statuses.iter().filter(|(_, _, at)| due(*at)).map(|(a, s, _)| (a.clone(), s.clone())).collect();
        for (asg, s) in statuses {
            self.publish_status_raw(&asg, &s);
        }
        for entry in self.statuses.iter_mut().filter(|e| due(e.2)) {
            entry.2 = now;
        }
        let upload_due =
            self.job.as_ref().and_then(|j| j.upload.as_ref()).is_some_and(|u| !u.stored && due(u.last_sent));
        if upload_due {
            // Answers to earlier `meta`s may be lost with the connection: count afresh.
            if let Some(u) = self.job.as_mut().and_then(|j| j.upload.as_mut()) {
                u.metas_out = 0;
            }
            self.send_meta();
        }
    }

    fn on_tick(&mut self, dt_real: f64) {
        let now = Instant::now();
        let dt = dt_real * self.behaviour.speed;
        // Coverage: leave it now and then, come back after a while.
        match self.outage_until {
            Some(until) if now >= until => {
                self.outage_until = None;
                self.next_outage = now + exp_delay(&mut self.rng, self.behaviour.mean_coverage_s);
                if self.events.is_none() {
                    self.connect();
                }
            }
            None if self.behaviour.mean_coverage_s > 0.0 && now >= self.next_outage && self.connected => {
                self.drop_out()
            }
            _ => {}
        }
        if now >= self.next_shift_change && self.job.is_none() {
            self.on_duty = !self.on_duty;
            self.next_shift_change = now + exp_delay(&mut self.rng, 4.0 * 3600.0 / self.behaviour.speed.max(0.001));
        }
        let free = self.job.is_none();
        self.walker.step(&mut self.rng, dt, free);
        self.battery = (self.battery - dt * 0.0005).max(5.0);
        self.advance_job(now);
        self.heartbeat();
        if now.duration_since(self.last_backlog_send) >= RESEND_AFTER {
            // Points older than a few seconds that no `hb_seq` named: lost on the way (or the
            // ack was).
            let cutoff = now_ms() - 5_000;
            if self.backlog.front().is_some_and(|h| h.ts < cutoff) {
                self.send_backlog();
            } else {
                self.last_backlog_send = now;
            }
            self.resend(false);
        }
    }

    fn duty(&self) -> Duty {
        if self.job.is_some() {
            Duty::Busy
        } else if self.on_duty {
            Duty::On
        } else {
            Duty::Off
        }
    }

    fn heartbeat(&mut self) {
        let ts = now_ms().max(self.last_ts + 1);
        self.last_ts = ts;
        self.last_seq += 1;
        let hb = Heartbeat {
            seq: Some(self.last_seq),
            ts,
            lat: self.walker.lat,
            lon: self.walker.lon,
            acc: Some(self.rng.random_range(4.0..20.0_f64).round()),
            spd: Some((self.walker.speed * 10.0).round() / 10.0),
            hdg: Some(self.walker.heading.round().rem_euclid(360.0)),
            alt: None,
            bat: Some(self.battery.round()),
            duty: Some(self.duty()),
        };
        if self.backlog.len() >= BACKLOG_CAP {
            self.backlog.pop_front();
        }
        self.backlog.push_back(hb.clone());
        let topic = Topic::Heartbeat { device: self.cred.device.clone() }.to_string();
        if self.publish_json(topic, &hb) {
            self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Report { kind, text, plate } => {
                let (lat, lon) = (self.walker.lat, self.walker.lon);
                let report = Report {
                    id: format!("r{}", ulid::Ulid::new().to_string().to_lowercase()),
                    kind: kind.to_owned(),
                    text,
                    lat,
                    lon,
                    ts: now_ms(),
                    plate,
                };
                let topic = Topic::Report { device: self.cred.device.clone() }.to_string();
                self.publish_json(topic, &report);
                self.stats.reports.fetch_add(1, Ordering::Relaxed);
                self.reports.insert(report.id.clone(), (report, Instant::now()));
            }
        }
    }

    fn on_inbox(&mut self, topic_name: &str, payload: &[u8]) {
        let Ok(Topic::Inbox { kind, .. }) = Topic::parse(topic_name) else { return };
        match kind {
            InboxKind::Ack => {
                let Ok(ack) = serde_json::from_slice::<Ack>(payload) else { return };
                if let Some(ranges) = ack.hb_seq {
                    // Exactly the named points are stored; ranges are ascending and disjoint.
                    let before = self.backlog.len();
                    let confirmed = |seq: u64| {
                        let i = ranges.partition_point(|[_, to]| *to < seq);
                        ranges.get(i).is_some_and(|[from, _]| *from <= seq)
                    };
                    self.backlog.retain(|h| !h.seq.is_some_and(confirmed));
                    self.stats.heartbeats_acked.fetch_add((before - self.backlog.len()) as u64, Ordering::Relaxed);
                }
                if let Some(id) = ack.report
                    && self.reports.remove(&id).is_some()
                {
                    self.stats.reports_acked.fetch_add(1, Ordering::Relaxed);
                }
                if let (Some(asg), Some(status)) = (ack.asg, ack.status) {
                    self.statuses.retain(|(a, s, _)| !(a == &asg && s.status == status));
                }
            }
            InboxKind::Assignment => match serde_json::from_slice::<AssignmentOffer>(payload) {
                Ok(offer) => self.on_offer(offer),
                Err(e) => warn!(device = %self.cred.device, error = %e, "unreadable assignment offer"),
            },
            InboxKind::Receipt => {
                if let Ok(r) = serde_json::from_slice::<Receipt>(payload) {
                    self.on_receipt(r);
                }
            }
            InboxKind::Error => {
                let Ok(err) = serde_json::from_slice::<ErrorNotice>(payload) else { return };
                // A status the platform refuses (offer expired, report cancelled) ends the job.
                if let Ok(Topic::AssignmentStatus { assignment, .. }) = Topic::parse(&err.topic) {
                    self.statuses.retain(|(a, _, _)| a != &assignment);
                    if self.job.as_ref().is_some_and(|j| j.id == assignment) {
                        info!(device = %self.cred.device, assignment, error = %err.error, "assignment withdrawn");
                        self.job = None;
                    }
                } else {
                    debug!(device = %self.cred.device, topic = %err.topic, error = %err.error, "message refused");
                }
            }
            InboxKind::Lookup | InboxKind::Notice => {}
        }
    }

    fn on_offer(&mut self, offer: AssignmentOffer) {
        self.stats.offers.fetch_add(1, Ordering::Relaxed);
        if self.job.is_some() {
            // Already on a job: say no.
            self.answer(&offer.assignment_id, AsgStatus::Declined, Some("已有任务在办".into()));
            self.stats.declined.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let roll: f64 = self.rng.random();
        if roll < 0.08 {
            debug!(device = %self.cred.device, assignment = %offer.assignment_id, "ignoring an offer");
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
        } else if roll < 0.18 {
            self.answer(&offer.assignment_id, AsgStatus::Declined, Some("正在处理其他事项".into()));
            self.stats.declined.fetch_add(1, Ordering::Relaxed);
        } else {
            self.answer(&offer.assignment_id, AsgStatus::Accepted, None);
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            self.walker.go_to(&mut self.rng, offer.report.lat, offer.report.lon);
            self.job =
                Some(Job { id: offer.assignment_id, report: offer.report, stage: Stage::Travelling, upload: None });
        }
    }

    /// Publishes an assignment status and keeps it until acknowledged.
    fn answer(&mut self, asg: &str, status: AsgStatus, note: Option<String>) {
        let s = AssignmentStatus { status, ts: now_ms(), note };
        self.publish_status_raw(asg, &s);
        self.statuses.push((asg.to_owned(), s, Instant::now()));
    }

    fn publish_status_raw(&mut self, asg: &str, s: &AssignmentStatus) {
        let topic =
            Topic::AssignmentStatus { device: self.cred.device.clone(), assignment: asg.to_owned() }.to_string();
        self.publish_json(topic, s);
    }

    fn advance_job(&mut self, now: Instant) {
        let Some(job) = &self.job else { return };
        match job.stage {
            Stage::Travelling if self.walker.remaining_m() <= ARRIVED_WITHIN_M => {
                let (id, report) = (job.id.clone(), job.report.clone());
                self.answer(&id, AsgStatus::Arrived, None);
                self.stats.arrived.fetch_add(1, Ordering::Relaxed);
                let on_site = self.rng.random_range(120.0..600.0);
                self.walker.hold(on_site);
                let until = now + Duration::from_secs_f64(on_site / self.behaviour.speed.max(0.001));
                if let Some(plate) = report.plate.clone() {
                    self.lookup_plate(plate);
                }
                let upload = self.take_photo(&report);
                if let Some(job) = &mut self.job {
                    job.stage = Stage::OnSite { until };
                    job.upload = Some(upload);
                }
                self.send_upload();
            }
            Stage::OnSite { until } if now >= until && job.upload.as_ref().is_none_or(|u| u.stored) => {
                let id = job.id.clone();
                self.answer(&id, AsgStatus::Completed, Some("已现场核实并拍照取证".into()));
                self.stats.completed.fetch_add(1, Ordering::Relaxed);
                self.job = None;
            }
            _ => {}
        }
    }

    /// Asks the registry about the plate involved, from where the inspector stands.
    fn lookup_plate(&mut self, plate: String) {
        let q = LookupRequest {
            corr: format!("c{}", self.rng.random::<u32>()),
            kind: LookupKind::Vehicle,
            q: plate,
            lat: Some(self.walker.lat),
            lon: Some(self.walker.lon),
        };
        let topic = Topic::Lookup { device: self.cred.device.clone() }.to_string();
        if self.publish_json(topic, &q) {
            self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn take_photo(&mut self, report: &Report) -> Upload {
        let data = photo::png(160, 120, self.rng.random());
        let evid = ulid::Ulid::new().to_string().to_lowercase();
        let meta = EvidenceMeta {
            sha256: hex::encode(Sha256::digest(&data)),
            size: data.len() as u64,
            mime: "image/png".into(),
            captured_at: now_ms(),
            lat: Some(self.walker.lat),
            lon: Some(self.walker.lon),
            report_id: Some(report.id.clone()),
            chunk_size: CHUNK as u32,
            chunks: data.len().div_ceil(CHUNK) as u32,
        };
        Upload { evid, meta, data, metas_out: 0, stored: false, last_sent: Instant::now() }
    }

    /// The first attempt: `meta`, every chunk, `meta` again (whose answer lists what is missing).
    fn send_upload(&mut self) {
        let Some(u) = self.job.as_ref().and_then(|j| j.upload.as_ref()) else { return };
        let all: Vec<u32> = (0..u.meta.chunks).collect();
        self.send_meta();
        self.send_chunks(&all);
        self.send_meta();
    }

    fn send_meta(&mut self) {
        let Some(u) = self.job.as_ref().and_then(|j| j.upload.as_ref()) else { return };
        let topic = Topic::EvidenceMeta { device: self.cred.device.clone(), evid: u.evid.clone() }.to_string();
        let meta = u.meta.clone();
        if self.publish_json(topic, &meta)
            && let Some(u) = self.job.as_mut().and_then(|j| j.upload.as_mut())
        {
            u.metas_out += 1;
            u.last_sent = Instant::now();
        }
    }

    fn send_chunks(&mut self, which: &[u32]) {
        let Some(u) = self.job.as_ref().and_then(|j| j.upload.as_ref()) else { return };
        let mut out = Vec::with_capacity(which.len());
        for &n in which {
            let start = n as usize * CHUNK;
            if start >= u.data.len() {
                continue;
            }
            let end = (start + CHUNK).min(u.data.len());
            let topic = Topic::EvidenceChunk { device: self.cred.device.clone(), evid: u.evid.clone(), n }.to_string();
            out.push((topic, u.data[start..end].to_vec()));
        }
        for (topic, bytes) in out {
            self.publish(topic, bytes, false);
        }
    }

    fn on_receipt(&mut self, r: Receipt) {
        let Some(u) = self.job.as_mut().and_then(|j| j.upload.as_mut()) else { return };
        if r.evid() != u.evid {
            return;
        }
        match r {
            Receipt::Stored { ledger_seq, .. } => {
                if !u.stored {
                    u.stored = true;
                    self.stats.evidence_stored.fetch_add(1, Ordering::Relaxed);
                    debug!(device = %self.cred.device, evid = %u.evid, ledger_seq, "photo stored");
                }
            }
            Receipt::Partial { missing, .. } => {
                u.metas_out = u.metas_out.saturating_sub(1);
                u.last_sent = Instant::now();
                if u.metas_out == 0 && !missing.is_empty() {
                    self.send_chunks(&missing);
                    self.send_meta();
                }
            }
            Receipt::Rejected { error, .. } => {
                warn!(device = %self.cred.device, evid = %u.evid, error, "photo refused; completing without it");
                self.stats.evidence_rejected.fetch_add(1, Ordering::Relaxed);
                if let Some(job) = &mut self.job {
                    job.upload = None;
                }
            }
        }
    }

    /// On shutdown: say offline (retained) and disconnect cleanly.
    async fn goodbye(mut self) {
        if !self.connected {
            return;
        }
        let (Some(client), Some(mut events)) = (self.client.take(), self.events.take()) else { return };
        let offline = serde_json::to_vec(&Presence { online: false, ts: now_ms() }).unwrap_or_default();
        client.try_publish(self.presence_topic(), QoS::AtLeastOnce, true, offline).ok();
        client.try_disconnect().ok();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(e) = events.poll().await {
                if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// An exponentially distributed delay with the given mean (seconds); far away for 0.
fn exp_delay(rng: &mut StdRng, mean_s: f64) -> Duration {
    if mean_s <= 0.0 || !mean_s.is_finite() {
        return Duration::from_secs(365 * 86_400);
    }
    let u: f64 = rng.random_range(1e-9..1.0);
    Duration::from_secs_f64((-u.ln() * mean_s).min(30.0 * 86_400.0))
}
