//! The dispatcher's loop: one task owns the spatial index and the offer timers and handles, in
//! order, everything the broker hands it (heartbeats, presence, reports, assignment answers,
//! report and assignment events written by the web), the offer deadlines, and a periodic sweep
//! that re-checks the dispatch lock and the database.
//!
//! Keeping it one task makes every decision see the index exactly as it was left by the one
//! before (a device offered one report is busy for the next), with no locks; the database work
//! per decision is a couple of short transactions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use jiandu_broker::BrokerEndpoint;
use jiandu_broker::client::{PhoneInbox, RoleSession};
use jiandu_schemas::topic::{
    self, SHARED_ASSIGNMENT_STATUS, SHARED_DISPATCH_HEARTBEATS, SHARED_DISPATCH_PRESENCE, SHARED_INTEGRATION_REPORTS,
    SHARED_REPORTS,
};
use jiandu_schemas::{
    Ack, AsgStatus, AssignmentOffer, Duty, ErrorNotice, EventKind, InboxKind, Notice, PayloadError, Report, Topic,
};
use jiandu_store::{
    Assignment, AssignmentState, DispatchLock, Escalation, NewOffer, NewReport, PhoneMessage, ReportSource,
    ReportStatus, RevokedDevices, Store, StoreError, StoredReport, now_ms,
};
use rumqttc::{AsyncClient, Publish, QoS};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::index::SpatialIndex;
use crate::{DispatchConfig, DispatchError, DispatchState, validate};

/// The name the dispatcher's own decisions are recorded under (timeline, events, ledger).
pub const ACTOR: &str = "dispatcher";

/// How often the lock, missed deadlines and waiting reports are re-checked.
const SWEEP: Duration = Duration::from_secs(1);
/// Every this many sweeps, the index drops stale points and re-reads who is busy.
const RESYNC_EVERY: u32 = 15;

/// Waits for the lock, dispatches while holding it, and stands by again if it is lost.
pub(crate) async fn run(
    store: Store,
    broker: BrokerEndpoint,
    config: DispatchConfig,
    shutdown: CancellationToken,
    state: watch::Sender<DispatchState>,
) -> Result<(), DispatchError> {
    let result = supervise(&store, &broker, &config, &shutdown, &state).await;
    if let Err(e) = &result {
        warn!(error = %e, "dispatcher stopped");
    }
    state.send_replace(DispatchState::Stopped);
    result
}

async fn supervise(
    store: &Store,
    broker: &BrokerEndpoint,
    config: &DispatchConfig,
    shutdown: &CancellationToken,
    state: &watch::Sender<DispatchState>,
) -> Result<(), DispatchError> {
    validate(config)?;
    loop {
        match store.try_dispatch_lock().await {
            Ok(Some(lock)) => {
                match active(store.clone(), broker, config.clone(), shutdown, lock, state).await {
                    Ok(()) => return Ok(()),
                    Err(e) => warn!(error = %e, "dispatcher lost the database or its lock; standing by"),
                }
                state.send_replace(DispatchState::Standby);
            }
            Ok(None) => {
                if *state.borrow() != DispatchState::Standby {
                    info!("another dispatcher is active; standing by to take over");
                    state.send_replace(DispatchState::Standby);
                }
            }
            Err(e) => warn!(error = %e, "cannot ask for the dispatch lock; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The active dispatcher: subscribes, rebuilds, then serves until shutdown or a lost lock.
async fn active(
    store: Store,
    broker: &BrokerEndpoint,
    config: DispatchConfig,
    shutdown: &CancellationToken,
    mut lock: DispatchLock,
    state: &watch::Sender<DispatchState>,
) -> Result<(), DispatchError> {
    let session_stop = shutdown.child_token();
    // A topic only this session subscribes to: when our own publish on it comes back, every
    // filter of the same SUBSCRIBE is in place and nothing sent from now on is missed.
    let probe = format!("jd/v1/internal/dispatcher/{}-{}", std::process::id(), now_ms());
    let filters = vec![
        SHARED_REPORTS.to_owned(),
        SHARED_INTEGRATION_REPORTS.to_owned(),
        SHARED_ASSIGNMENT_STATUS.to_owned(),
        SHARED_DISPATCH_HEARTBEATS.to_owned(),
        SHARED_DISPATCH_PRESENCE.to_owned(),
        topic::event(EventKind::Report),
        topic::event(EventKind::Assignment),
        probe.clone(),
    ];
    let mut session = RoleSession::start(broker, "dispatcher", filters, false, 8192, session_stop.clone());
    let mut engine = Engine::restore(store, config, session.client.clone()).await?;
    let mut connected = session.connected.clone();
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeps = 0u32;
    let outcome = loop {
        let next_deadline = engine.next_deadline();
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            changed = connected.changed() => {
                if changed.is_ok() && *connected.borrow() {
                    engine.client.publish(probe.clone(), QoS::AtLeastOnce, false, Vec::new()).await.ok();
                }
            }
            msg = session.incoming.recv() => match msg {
                Some(p) if p.topic == probe => {
                    if *state.borrow() != DispatchState::Active {
                        info!(devices = engine.index.len(), "dispatcher active");
                        state.send_replace(DispatchState::Active);
                    }
                }
                Some(p) => engine.handle(p).await,
                None => break Ok(()),
            },
            _ = sleep_until_ms(next_deadline), if next_deadline.is_some() => engine.fire_due().await,
            _ = sweep.tick() => {
                if let Err(e) = lock.check().await {
                    break Err(DispatchError::Store(e));
                }
                sweeps = sweeps.wrapping_add(1);
                engine.sweep(sweeps.is_multiple_of(RESYNC_EVERY)).await;
            }
        }
    };
    session_stop.cancel();
    session.stopped().await;
    drop(lock);
    outcome
}

async fn sleep_until_ms(deadline: Option<i64>) {
    let wait = deadline.map_or(0, |d| d.saturating_sub(now_ms()).max(0));
    tokio::time::sleep_until(Instant::now() + Duration::from_millis(wait as u64)).await;
}

/// The dispatcher's state while active.
struct Engine {
    store: Store,
    config: DispatchConfig,
    client: AsyncClient,
    index: SpatialIndex,
    /// Offer deadlines, soonest first: (respond_by, assignment id).
    timers: BinaryHeap<Reverse<(i64, String)>>,
    /// Offers with a timer, by assignment id (so each is scheduled once).
    pending: HashMap<String, i64>,
    /// Revoked devices: their reports and assignment updates still queued at the broker are
    /// dropped.
    revoked: RevokedDevices,
}

impl Engine {
    /// Rebuilds the index from the stored positions and open assignments, reloads the offer
    /// deadlines, and dispatches whatever was left waiting.
    async fn restore(store: Store, config: DispatchConfig, client: AsyncClient) -> Result<Engine, DispatchError> {
        let positions = store.live_positions().await?;
        let busy: HashSet<String> = store.busy_devices().await?.into_iter().collect();
        let index = SpatialIndex::bulk(positions.into_iter().filter_map(|p| {
            let pos = p.position?;
            let duty = match pos.duty.as_deref() {
                Some("on") => Some(Duty::On),
                Some("off") => Some(Duty::Off),
                Some("busy") => Some(Duty::Busy),
                _ => None,
            };
            let state =
                SpatialIndex::state(pos.lat, pos.lon, pos.ts, p.online && !p.stale, duty, busy.contains(&p.device_id));
            Some((p.device_id, state))
        }));
        let mut engine = Engine {
            store,
            config,
            client,
            index,
            timers: BinaryHeap::new(),
            pending: HashMap::new(),
            revoked: RevokedDevices::default(),
        };
        for a in engine.store.open_offers().await? {
            engine.schedule(&a.id, a.respond_by);
        }
        let waiting = engine.store.reports_to_dispatch().await?;
        info!(
            devices = engine.index.len(),
            available = engine.index.available_len(),
            offers = engine.pending.len(),
            reports = waiting.len(),
            "dispatch state restored"
        );
        engine.fire_due().await;
        for r in waiting {
            engine.fill_logged(&r.id).await;
        }
        Ok(engine)
    }

    fn next_deadline(&self) -> Option<i64> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn schedule(&mut self, assignment: &str, respond_by: i64) {
        if self.pending.insert(assignment.to_owned(), respond_by).is_none() {
            self.timers.push(Reverse((respond_by, assignment.to_owned())));
        }
    }

    /// Expires every offer whose deadline has passed and offers those reports onward.
    async fn fire_due(&mut self) {
        let now = now_ms();
        while let Some(Reverse((t, _))) = self.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, id))) = self.timers.pop() else { break };
            if self.pending.remove(&id).is_none() {
                continue;
            }
            self.expire(&id).await;
        }
    }

    async fn expire(&mut self, assignment: &str) {
        let device = match self.store.assignment(assignment).await {
            Ok(a) => a.device_id,
            Err(StoreError::NotFound { .. }) => return,
            Err(e) => return warn!(assignment, error = %e, "expiring an offer failed; the sweep retries"),
        };
        let tell = match notice_message(&device, format!("assignment {assignment} expired: no answer in time")) {
            Ok(m) => m,
            Err(e) => return warn!(assignment, error = %e, "cannot encode the expiry notice"),
        };
        match self.store.transition(assignment, None, AssignmentState::Expired, ACTOR, None, Some(tell)).await {
            Ok(t) if t.changed => {
                info!(assignment, device = %t.assignment.device_id, report = %t.report.id, "offer expired");
                metrics::counter!("jiandu_dispatch_offers_expired_total").increment(1);
                self.index.set_busy(&t.assignment.device_id, false, t.assignment.updated_at);
                self.fill_logged(&t.report.id).await;
            }
            Ok(_) => {}
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
            Err(e) => warn!(assignment, error = %e, "expiring an offer failed; the sweep retries"),
        }
    }

    /// The periodic check: missed deadlines (offers made by another process), reports nobody
    /// picked up, and now and then the index's busy flags against the database.
    async fn sweep(&mut self, resync: bool) {
        let now = now_ms();
        match self.store.due_offers(now).await {
            Ok(due) => {
                for a in due {
                    self.pending.remove(&a.id);
                    self.expire(&a.id).await;
                }
            }
            Err(e) => warn!(error = %e, "checking offer deadlines failed"),
        }
        match self.store.reports_waiting(now - 2_000).await {
            Ok(waiting) => {
                for r in waiting {
                    self.fill_logged(&r.id).await;
                }
            }
            Err(e) => warn!(error = %e, "checking waiting reports failed"),
        }
        if resync {
            let dropped = self.index.drop_stale(now - self.freshness_ms());
            if dropped > 0 {
                debug!(dropped, "stale positions left the index");
            }
            match self.store.busy_devices().await {
                Ok(busy) => {
                    let busy: HashSet<String> = busy.into_iter().collect();
                    self.index.resync_busy(&busy, now);
                }
                Err(e) => warn!(error = %e, "re-reading busy devices failed"),
            }
        }
    }

    fn freshness_ms(&self) -> i64 {
        (self.config.freshness_s as i64).saturating_mul(1000)
    }

    /// Handles one message from the broker.
    async fn handle(&mut self, p: Publish) {
        let name = p.topic.as_str();
        let Ok(topic) = Topic::parse(name) else {
            debug!(topic = name, "ignoring a message on an unknown topic");
            return;
        };
        match topic {
            Topic::Heartbeat { device } => {
                // Ingest answers malformed heartbeats on inbox/error; here they are just skipped.
                if let Ok(hbs) = jiandu_schemas::parse_heartbeats(&p.payload)
                    && let Some(newest) = hbs.iter().max_by_key(|h| h.ts)
                {
                    let duty = hbs.iter().rev().find_map(|h| h.duty);
                    self.index.update_position(&device, newest.lat, newest.lon, newest.ts, duty);
                }
            }
            Topic::Presence { device } => {
                if let Ok(presence) = jiandu_schemas::parse_presence(&p.payload) {
                    self.index.set_online(&device, presence.online);
                }
            }
            Topic::Report { device } | Topic::AssignmentStatus { device, .. }
                if self.revoked.is_revoked(&self.store, &device).await =>
            {
                metrics::counter!("jiandu_dispatch_revoked_dropped_total").increment(1);
                info!(device = %device, topic = name, "message of a revoked device dropped");
            }
            Topic::Report { device } => self.device_report(name, &device, &p.payload).await,
            Topic::IntegrationReport => self.integration_report(&p.payload).await,
            Topic::AssignmentStatus { device, assignment } => {
                self.assignment_status(name, &device, &assignment, &p.payload).await
            }
            Topic::Event { kind: EventKind::Assignment } => self.assignment_event(&p.payload),
            Topic::Event { kind: EventKind::Report } => self.report_event(&p.payload).await,
            other => debug!(topic = %other, "ignoring"),
        }
    }

    async fn device_report(&mut self, topic: &str, device: &str, payload: &[u8]) {
        let r = match jiandu_schemas::parse_report(payload) {
            Ok(r) => r,
            Err(e) => return self.reject(device, topic, &e).await,
        };
        let new = NewReport {
            needs: self.config.needs(&r.kind),
            id: r.id,
            source: ReportSource::Device,
            origin: device.to_owned(),
            kind: r.kind,
            text: r.text,
            lat: Some(r.lat),
            lon: Some(r.lon),
            ts: r.ts,
            plate: r.plate,
        };
        match self.store.insert_report(new).await {
            Ok((report, created)) => {
                // The offer is made first: it is what someone is waiting for; the ack only lets
                // the phone drop its copy (it is committed already either way). The offer leaves
                // through the phone outbox, so the phone may see the two in either order.
                if created {
                    metrics::counter!("jiandu_dispatch_reports_total", "source" => "device").increment(1);
                    self.fill_logged(&report.id).await;
                }
                let ack = Ack { report: Some(report.id.clone()), ..Ack::default() };
                self.send(device, InboxKind::Ack, &ack).await;
            }
            Err(e) => warn!(device, error = %e, "storing a report failed; the phone will re-send it"),
        }
    }

    async fn integration_report(&mut self, payload: &[u8]) {
        let r = match jiandu_schemas::parse_integration_report(payload) {
            Ok(r) => r,
            Err(e) => {
                warn!(field = %e.field, error = %e.message, "refused an integration report");
                return;
            }
        };
        let new = NewReport {
            needs: self.config.needs(&r.kind),
            id: r.id,
            source: ReportSource::Integration,
            origin: r.source,
            kind: r.kind,
            text: r.text,
            lat: Some(r.lat),
            lon: Some(r.lon),
            ts: r.ts,
            plate: None,
        };
        match self.store.insert_report(new).await {
            Ok((report, true)) => {
                metrics::counter!("jiandu_dispatch_reports_total", "source" => "integration").increment(1);
                self.fill_logged(&report.id).await;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "storing an integration report failed"),
        }
    }

    async fn assignment_status(&mut self, topic: &str, device: &str, assignment: &str, payload: &[u8]) {
        let status = match jiandu_schemas::parse_assignment_status(payload) {
            Ok(s) => s,
            Err(e) => return self.reject(device, topic, &e).await,
        };
        let to = match status.status {
            AsgStatus::Accepted => AssignmentState::Accepted,
            AsgStatus::Declined => AssignmentState::Declined,
            AsgStatus::Arrived => AssignmentState::Arrived,
            AsgStatus::Completed => AssignmentState::Completed,
        };
        match self.store.transition(assignment, Some(device), to, device, status.note.as_deref(), None).await {
            Ok(t) => {
                let ack = Ack { asg: Some(assignment.to_owned()), status: Some(status.status), ..Ack::default() };
                self.send(device, InboxKind::Ack, &ack).await;
                if !t.changed {
                    return;
                }
                info!(assignment, device, status = to.as_str(), report = %t.report.id, "assignment answered");
                if !to.is_open() {
                    self.index.set_busy(device, false, t.assignment.updated_at);
                }
                if to != AssignmentState::Offered {
                    self.pending.remove(assignment);
                }
                if to == AssignmentState::Declined {
                    self.fill_logged(&t.report.id).await;
                }
            }
            Err(StoreError::NotFound { .. }) => {
                let e = PayloadError::new("asg", format!("no assignment '{assignment}' was offered to this device"));
                self.reject(device, topic, &e).await;
            }
            Err(StoreError::Conflict { reason }) => {
                self.reject(device, topic, &PayloadError::new("asg.status", reason)).await;
            }
            Err(e) => {
                warn!(device, assignment, error = %e, "storing an assignment status failed; the phone will re-send")
            }
        }
    }

    /// Keeps the busy flags in step with changes made elsewhere (the web), and arms the timers
    /// of offers made there. The change time in the event stops late events undoing newer ones.
    fn assignment_event(&mut self, payload: &[u8]) {
        let Ok(event) = serde_json::from_slice::<Value>(payload) else { return };
        let data = &event["data"];
        let (Some(id), Some(device), Some(status), Some(at)) = (
            data["id"].as_str(),
            data["device"].as_str(),
            data["status"].as_str().and_then(AssignmentState::parse),
            data["at"].as_i64(),
        ) else {
            return;
        };
        self.index.set_busy(device, status.is_open(), at);
        if status == AssignmentState::Offered
            && let Some(respond_by) = data["respond_by"].as_i64()
        {
            self.schedule(id, respond_by);
        } else if status != AssignmentState::Offered {
            self.pending.remove(id);
        }
    }

    /// Reports stored by the web and the public tip page, and staff asking for "nearest" again
    /// (or placing a tip that had no point), are dispatched here.
    async fn report_event(&mut self, payload: &[u8]) {
        let Ok(event) = serde_json::from_slice::<Value>(payload) else { return };
        let report = match event["type"].as_str() {
            Some("report.created") if matches!(event["data"]["source"].as_str(), Some("web" | "public")) => {
                event["data"]["report"]["id"].as_str()
            }
            Some("report.dispatch_requested") => event["data"]["id"].as_str(),
            _ => None,
        };
        if let Some(id) = report {
            let id = id.to_owned();
            self.fill_logged(&id).await;
        }
    }

    async fn fill_logged(&mut self, report: &str) {
        if let Err(e) = self.fill(report).await {
            warn!(report, error = %e, "dispatching a report failed; the sweep retries");
        }
    }

    /// Offers the report to the nearest available devices not tried yet until every slot it
    /// needs is offered or taken; escalates when nobody is left within the radius, and at once
    /// when the report has no point (a public tip naming its place in words: the desk places it).
    async fn fill(&mut self, report_id: &str) -> Result<(), StoreError> {
        let mut report = self.store.report(report_id).await?;
        let needs = self.config.needs(&report.kind);
        if needs > report.needs && !report.status.is_final() {
            report = self.store.raise_needs(report_id, needs).await?;
        }
        let mut tried: HashSet<String> = HashSet::new();
        loop {
            if !matches!(report.status, ReportStatus::New | ReportStatus::Dispatching) {
                return Ok(());
            }
            let existing = self.store.report_assignments(report_id).await?;
            let live = AssignmentState::filled_slots(&existing);
            if live >= report.needs {
                return Ok(());
            }
            tried.extend(existing.into_iter().map(|a| a.device_id));
            let Some((lat, lon)) = report.point() else {
                if self.store.escalate(report_id, Escalation::NoLocation, ACTOR).await? {
                    metrics::counter!("jiandu_dispatch_escalations_total").increment(1);
                    info!(report = report_id, "no location; escalated to the desk to place it");
                }
                return Ok(());
            };
            let fresh_since = now_ms() - self.freshness_ms();
            let Some(candidate) = self.index.nearest(lat, lon, fresh_since, self.config.radius_m, &tried) else {
                let why = Escalation::NobodyWithin { radius_m: self.config.radius_m };
                if self.store.escalate(report_id, why, ACTOR).await? {
                    metrics::counter!("jiandu_dispatch_escalations_total").increment(1);
                    warn!(report = report_id, radius_m = self.config.radius_m, "no inspector left; escalated");
                }
                return Ok(());
            };
            let device = candidate.device.to_string();
            tried.insert(device.clone());
            if self.revoked.is_revoked(&self.store, &device).await {
                // The broker cuts a revoked phone off without its will, so its last position
                // still looks available here: take it out instead of offering it the report.
                self.index.set_online(&device, false);
                continue;
            }
            let respond_by = now_ms() + self.config.offer_timeout().as_millis() as i64;
            let offer = NewOffer {
                report_id: report_id.to_owned(),
                device_id: device.clone(),
                distance_m: candidate.distance_m,
                respond_by,
                actor: ACTOR.to_owned(),
            };
            match self.store.offer(offer, offer_message).await {
                Ok((assignment, updated)) => {
                    self.index.set_busy(&device, true, assignment.offered_at);
                    self.schedule(&assignment.id, assignment.respond_by);
                    metrics::counter!("jiandu_dispatch_offers_total").increment(1);
                    info!(report = report_id, device = %device, distance_m = candidate.distance_m.round(), "offered");
                    report = updated;
                }
                Err(StoreError::Conflict { reason }) => {
                    // Someone else (staff on the web) got there first; look again.
                    debug!(report = report_id, device = %device, %reason, "offer refused; trying the next device");
                    report = self.store.report(report_id).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Tells a phone why its message was refused, on `inbox/error`.
    async fn reject(&self, device: &str, topic: &str, e: &PayloadError) {
        debug!(device, field = %e.field, error = %e.message, "refused a message");
        let notice = ErrorNotice { topic: topic.to_owned(), error: e.to_string() };
        self.send(device, InboxKind::Error, &notice).await;
    }

    async fn send(&self, device: &str, kind: InboxKind, body: &impl serde::Serialize) {
        PhoneInbox::new(self.client.clone()).send(device, kind, body).await;
    }
}

/// The phone outbox message that offers `a` (`inbox/assignment`), recorded with the offer. A
/// report without a point cannot be offered (the store refuses that before it gets here).
pub fn offer_message(report: &StoredReport, a: &Assignment) -> Result<PhoneMessage, StoreError> {
    let payload = offer_payload(report, a).ok_or_else(|| StoreError::Conflict {
        reason: format!("report '{}' has no location to send an inspector to", report.id),
    })?;
    PhoneMessage::new(&a.device_id, InboxKind::Assignment.as_str(), &payload)
}

/// The phone outbox message of a notice (`inbox/notice`), recorded with the change it tells of.
pub fn notice_message(device: &str, text: String) -> Result<PhoneMessage, StoreError> {
    PhoneMessage::new(device, InboxKind::Notice.as_str(), &Notice { ts: now_ms(), text })
}

/// The `inbox/assignment` payload of an offer; `None` for a report without a point (a phone is
/// only ever sent to one).
pub fn offer_payload(report: &StoredReport, a: &Assignment) -> Option<AssignmentOffer> {
    let (lat, lon) = report.point()?;
    Some(AssignmentOffer {
        assignment_id: a.id.clone(),
        report: Report {
            id: report.id.clone(),
            kind: report.kind.clone(),
            text: report.text.clone(),
            lat,
            lon,
            ts: report.ts,
            plate: report.plate.clone(),
        },
        distance_m: a.distance_m,
        respond_by: a.respond_by,
    })
}
