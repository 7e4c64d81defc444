//! Reports and assignments: the persisted half of dispatch (DESIGN §2).
//!
//! Reports arrive from phones, integrations and the web and end up in one `reports` table with
//! their source; each is offered to inspectors through `assignments`, whose state machine is
//! offered → accepted → arrived → completed, or declined / expired / cancelled. The dispatcher
//! keeps its spatial index in memory and decides *whom* to offer; this module makes each
//! decision durable and consistent: every change commits together with its outbox event
//! (`jd/v1/events/report`, `…/assignment`, `…/alarm`), its line in the report's timeline
//! (`assignment_log`) and its ledger entry, inside one transaction.
//!
//! Consistency rules live in the schema, so they hold however many processes write: a device is
//! offered a report at most once (`UNIQUE (report_id, device_id)`) and holds at most one open
//! assignment (a partial unique index), and every transaction starts by locking the report's
//! row, which serialises the changes to one report on both databases (on SQLite it also takes the
//! write lock up front, so a transaction never has to upgrade a read lock).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tracing::{debug, info};

use crate::BindOptF64;
use crate::{Backend, NewEvent, NewLedgerEntry, PhoneMessage, Store, StoreError, now_ms};

/// Where a report came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportSource {
    /// A phone, on `jd/v1/dev/{dev}/report`.
    Device,
    /// Another system, on `jd/v1/reports`.
    Integration,
    /// The web view or REST API.
    Web,
    /// A citizen, through the public tip page or `POST /api/v1/public/tips` (no account).
    Public,
}

impl ReportSource {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportSource::Device => "device",
            ReportSource::Integration => "integration",
            ReportSource::Web => "web",
            ReportSource::Public => "public",
        }
    }

    fn parse(s: &str) -> Result<ReportSource, StoreError> {
        match s {
            "device" => Ok(ReportSource::Device),
            "integration" => Ok(ReportSource::Integration),
            "web" => Ok(ReportSource::Web),
            "public" => Ok(ReportSource::Public),
            other => Err(StoreError::Corrupt { what: "report source", reason: format!("unknown value {other:?}") }),
        }
    }
}

stored_enum! {
    /// Where a report stands.
    pub enum ReportStatus {
        /// Stored; waiting for the dispatcher to offer it (again).
        New => "new",
        /// Offers are out and not every slot is accepted yet.
        Dispatching => "dispatching",
        /// Every slot is accepted.
        Assigned => "assigned",
        /// Escalated: nobody was left within the radius; staff must act.
        Unassigned => "unassigned",
        /// Every slot completed.
        Completed => "completed",
        /// Cancelled by staff.
        Cancelled => "cancelled",
    }
}

impl ReportStatus {
    /// True once nothing more will happen to the report.
    pub fn is_final(self) -> bool {
        matches!(self, ReportStatus::Completed | ReportStatus::Cancelled)
    }
}

/// Why a report goes to the desk instead of to an inspector (see [`Store::escalate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Escalation {
    /// Nobody available was left within the dispatch radius, in metres.
    NobodyWithin {
        /// The dispatcher's radius.
        radius_m: f64,
    },
    /// The report has no point yet: a public tip that named its place in words; the desk
    /// places it (`POST /api/v1/reports/{id}/location`).
    NoLocation,
}

impl Escalation {
    /// The alarm's `reason`: `nobody_within` or `no_location`.
    pub fn reason(self) -> &'static str {
        match self {
            Escalation::NobodyWithin { .. } => "nobody_within",
            Escalation::NoLocation => "no_location",
        }
    }

    /// What the desk reads in the alarm.
    pub fn message(self) -> String {
        match self {
            Escalation::NobodyWithin { radius_m } => format!("no available inspector within {radius_m:.0} m"),
            Escalation::NoLocation => "no location: the tip names a place in words; place it on the map".into(),
        }
    }
}

/// The refusal for dispatching a report that has no point yet.
fn unlocated(id: &str) -> String {
    format!("report '{id}' has no location yet; place it first (POST /api/v1/reports/{id}/location)")
}

stored_enum! {
    /// Where an assignment stands.
    pub enum AssignmentState {
        /// Offered to the device, waiting for an answer until `respond_by`.
        Offered => "offered",
        /// The inspector took it.
        Accepted => "accepted",
        /// The inspector is on site.
        Arrived => "arrived",
        /// Done.
        Completed => "completed",
        /// The inspector refused.
        Declined => "declined",
        /// No answer in time.
        Expired => "expired",
        /// Withdrawn by staff (cancel or reassign).
        Cancelled => "cancelled",
    }
}

impl AssignmentState {
    /// Counts the slots of a report these assignments fill: every open one and every completed
    /// one (declined, expired and cancelled free their slot). The one count the store's offer
    /// and escalation checks and the dispatcher's top-up all use.
    pub fn filled_slots(assignments: &[Assignment]) -> i64 {
        assignments.iter().filter(|a| a.status.is_open() || a.status == AssignmentState::Completed).count() as i64
    }

    /// True while the assignment keeps its device busy (offered, accepted, arrived).
    pub fn is_open(self) -> bool {
        matches!(self, AssignmentState::Offered | AssignmentState::Accepted | AssignmentState::Arrived)
    }

    /// Whether the state machine allows going from `self` to `to`.
    pub fn may_become(self, to: AssignmentState) -> bool {
        use AssignmentState::*;
        matches!(
            (self, to),
            (Offered, Accepted | Declined | Expired | Cancelled)
                | (Accepted, Arrived | Completed | Cancelled)
                | (Arrived, Completed | Cancelled)
        )
    }
}

/// A report to store (see [`Store::insert_report`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewReport {
    /// Client-chosen id; a second report with the same id is a re-send.
    pub id: String,
    /// Where it came from.
    pub source: ReportSource,
    /// Who sent it: the device id, the integration's `source` name, or the web user.
    pub origin: String,
    /// Category, e.g. `official-car`.
    pub kind: String,
    /// Free text.
    pub text: String,
    /// Latitude, WGS-84 degrees; `None` (with `lon`) only for a public tip that named the place
    /// in words, which the desk places later.
    pub lat: Option<f64>,
    /// Longitude, WGS-84 degrees; `None` exactly when `lat` is.
    pub lon: Option<f64>,
    /// When it was made (Unix ms).
    pub ts: i64,
    /// Licence plate involved, if any.
    pub plate: Option<String>,
    /// How many inspectors it takes (1 or 2).
    pub needs: i64,
}

/// A stored report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredReport {
    /// Its id.
    pub id: String,
    /// Where it came from.
    pub source: ReportSource,
    /// Who sent it (device id, integration source, web user).
    pub origin: String,
    /// Category.
    pub kind: String,
    /// Free text.
    pub text: String,
    /// Latitude; `None` for a public tip not placed yet.
    pub lat: Option<f64>,
    /// Longitude; `None` exactly when `lat` is.
    pub lon: Option<f64>,
    /// When it was made (Unix ms).
    pub ts: i64,
    /// Licence plate, if any.
    pub plate: Option<String>,
    /// Inspectors it takes.
    pub needs: i64,
    /// Where it stands.
    pub status: ReportStatus,
    /// When it was stored (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

impl StoredReport {
    /// Where to send an inspector, once the report has a point (`None`: the desk must place it).
    pub fn point(&self) -> Option<(f64, f64)> {
        self.lat.zip(self.lon)
    }

    /// The report as the wire shows it (`{id,kind,text,lat,lon,ts,plate?}`, `lat`/`lon` null for
    /// a public tip not placed yet), for events.
    pub fn wire(&self) -> Value {
        let mut v = json!({"id": self.id, "kind": self.kind, "text": self.text, "lat": self.lat, "lon": self.lon,
            "ts": self.ts});
        if let Some(p) = &self.plate {
            v["plate"] = json!(p);
        }
        v
    }
}

/// One offer of a report to a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Its id (ULID); the phone answers on `asg/{id}`.
    pub id: String,
    /// The report.
    pub report_id: String,
    /// The device it was offered to.
    pub device_id: String,
    /// Where it stands.
    pub status: AssignmentState,
    /// Great-circle distance from the device to the report when offered, metres.
    pub distance_m: f64,
    /// When it was offered (Unix ms).
    pub offered_at: i64,
    /// Answer deadline of the offer (Unix ms).
    pub respond_by: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
    /// Who offered it: the dispatcher's service name or a web user.
    pub actor: String,
}

/// One line of a report's timeline: an assignment entering a state, and who caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Order of the line.
    pub seq: i64,
    /// The assignment.
    pub assignment_id: String,
    /// The state it entered.
    pub status: AssignmentState,
    /// Who made the change (device id, user name, dispatcher).
    pub actor: String,
    /// Optional note (e.g. why declined).
    pub note: Option<String>,
    /// When (Unix ms).
    pub ts: i64,
}

/// An offer to record (see [`Store::offer`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewOffer {
    /// The report.
    pub report_id: String,
    /// The device.
    pub device_id: String,
    /// Distance device → report, metres.
    pub distance_m: f64,
    /// Answer deadline (Unix ms).
    pub respond_by: i64,
    /// Who offers: the dispatcher or a web user.
    pub actor: String,
}

/// The outcome of [`Store::transition`].
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The assignment after the call.
    pub assignment: Assignment,
    /// False when it already was in the requested state (a re-send); nothing was written.
    pub changed: bool,
    /// The report after the call.
    pub report: StoredReport,
}

const REPORT_COLUMNS: &str =
    "id, source, origin, kind, text, lat, lon, ts, plate, needs, status, created_at, updated_at";
const ASSIGNMENT_COLUMNS: &str =
    "id, report_id, device_id, status, distance_m, offered_at, respond_by, updated_at, actor";

fn report_from_row(row: &AnyRow) -> Result<StoredReport, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(StoredReport {
        id: row.try_get("id")?,
        source: ReportSource::parse(&row.try_get::<String, _>("source")?)?,
        origin: row.try_get("origin")?,
        kind: row.try_get("kind")?,
        text: row.try_get("text")?,
        lat: row.try_get("lat")?,
        lon: row.try_get("lon")?,
        ts: row.try_get("ts")?,
        plate: row.try_get("plate")?,
        needs: row.try_get("needs")?,
        status: ReportStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
            what: "report status",
            reason: format!("unknown value {status:?}"),
        })?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn assignment_from_row(row: &AnyRow) -> Result<Assignment, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Assignment {
        id: row.try_get("id")?,
        report_id: row.try_get("report_id")?,
        device_id: row.try_get("device_id")?,
        status: parse_state(&status)?,
        distance_m: row.try_get("distance_m")?,
        offered_at: row.try_get("offered_at")?,
        respond_by: row.try_get("respond_by")?,
        updated_at: row.try_get("updated_at")?,
        actor: row.try_get("actor")?,
    })
}

fn parse_state(s: &str) -> Result<AssignmentState, StoreError> {
    AssignmentState::parse(s)
        .ok_or_else(|| StoreError::Corrupt { what: "assignment status", reason: format!("unknown value {s:?}") })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The advisory-lock key that elects the active dispatcher on PostgreSQL ("jd-dspt").
const DISPATCH_LOCK_KEY: i64 = 0x006a_642d_6473_7074;

/// Proof that this process is the active dispatcher: on PostgreSQL a session-level advisory lock
/// held on a connection taken out of the pool (so dying or dropping it releases the lock); on
/// SQLite, where one process owns the file, nothing to hold.
pub struct DispatchLock {
    conn: Option<AnyConnection>,
}

impl std::fmt::Debug for DispatchLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatchLock").field("postgres", &self.conn.is_some()).finish()
    }
}

impl DispatchLock {
    /// Checks that the lock is still held (its connection still answers); an error means another
    /// dispatcher may take over, so this one must stop.
    pub async fn check(&mut self) -> Result<(), StoreError> {
        if let Some(conn) = &mut self.conn {
            sqlx::query("SELECT 1").execute(&mut *conn).await?;
        }
        Ok(())
    }
}

impl Store {
    /// Becomes the active dispatcher if no other process is (PostgreSQL advisory lock); `None`
    /// while another holds it. On SQLite always succeeds.
    pub async fn try_dispatch_lock(&self) -> Result<Option<DispatchLock>, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(DispatchLock { conn: None }));
        }
        let mut conn = self.pool.acquire().await?.detach();
        let row =
            sqlx::query("SELECT pg_try_advisory_lock($1) AS held").bind(DISPATCH_LOCK_KEY).fetch_one(&mut conn).await?;
        let held: bool = row.try_get("held")?;
        if held {
            info!("dispatch lock acquired");
            Ok(Some(DispatchLock { conn: Some(conn) }))
        } else {
            drop(conn);
            Ok(None)
        }
    }

    /// Stores a report, or finds the one already stored under its id (a re-send): returns it and
    /// whether it was new. A new report gets a `report.created` event and a ledger entry.
    pub async fn insert_report(&self, r: NewReport) -> Result<(StoredReport, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        let (report, created) = Store::insert_report_in(&mut tx, r).await?;
        tx.commit().await?;
        if created {
            info!(report = %report.id, source = report.source.as_str(), kind = %report.kind, "report stored");
        }
        Ok((report, created))
    }

    /// [`Store::insert_report`] inside the caller's transaction (a public tip stores its report,
    /// its submission and their ledger entries together). Starts with the write, so on SQLite it
    /// takes the write lock at once.
    pub(crate) async fn insert_report_in(
        tx: &mut AnyConnection,
        r: NewReport,
    ) -> Result<(StoredReport, bool), StoreError> {
        if !(1..=2).contains(&r.needs) {
            return Err(StoreError::InvalidInput {
                field: "needs",
                reason: format!("must be 1 or 2, got {}", r.needs),
            });
        }
        match (r.lat, r.lon) {
            (Some(_), Some(_)) => {}
            (None, None) if r.source == ReportSource::Public => {}
            (None, None) => {
                return Err(StoreError::InvalidInput {
                    field: "lat",
                    reason: format!("a report from source {} needs a point", r.source.as_str()),
                });
            }
            (Some(_), None) => {
                return Err(StoreError::InvalidInput {
                    field: "lon",
                    reason: "missing; send lat and lon together".into(),
                });
            }
            (None, Some(_)) => {
                return Err(StoreError::InvalidInput {
                    field: "lat",
                    reason: "missing; send lat and lon together".into(),
                });
            }
        }
        let now = now_ms();
        let inserted = sqlx::query(&format!(
            "INSERT INTO reports ({REPORT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'new', $11, $11) \
             ON CONFLICT (id) DO NOTHING"
        ))
        .bind(&r.id)
        .bind(r.source.as_str())
        .bind(&r.origin)
        .bind(&r.kind)
        .bind(&r.text)
        .bind_opt_f64(r.lat)
        .bind_opt_f64(r.lon)
        .bind(r.ts)
        .bind(&r.plate)
        .bind(r.needs)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let report = fetch_report(&mut *tx, &r.id).await?;
        if inserted == 0 {
            debug!(report = %r.id, "report re-sent; already stored");
            return Ok((report, false));
        }
        Store::append_event_in(
            &mut *tx,
            NewEvent {
                kind: "report".into(),
                r#type: "report.created".into(),
                data: json!({"report": report.wire(), "source": report.source, "origin": report.origin,
                    "needs": report.needs, "status": report.status}),
            },
        )
        .await?;
        Store::ledger_append_in(
            &mut *tx,
            NewLedgerEntry {
                kind: "report.received".into(),
                actor: report.origin.clone(),
                subject: report.id.clone(),
                body: json!({"source": report.source.as_str(), "kind": report.kind, "needs": report.needs}),
            },
        )
        .await?;
        Ok((report, true))
    }

    /// One report by id.
    pub async fn report(&self, id: &str) -> Result<StoredReport, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_report(&mut conn, id).await
    }

    /// Reports newest first, optionally only those in `status`; `after` is the last id of the
    /// previous page.
    pub async fn reports(
        &self,
        status: Option<ReportStatus>,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Vec<StoredReport>, StoreError> {
        let mut sql = format!("SELECT {REPORT_COLUMNS} FROM reports WHERE ($1 = '' OR status = $1)");
        if after.is_some() {
            sql.push_str(
                " AND (created_at < (SELECT created_at FROM reports WHERE id = $3) \
                 OR (created_at = (SELECT created_at FROM reports WHERE id = $3) AND id < $3))",
            );
        }
        sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT $2");
        let mut q = sqlx::query(&sql).bind(status.map_or("", ReportStatus::as_str)).bind(limit.max(0));
        if let Some(a) = after {
            q = q.bind(a);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(report_from_row).collect()
    }

    /// Reports the dispatcher still has to act on (`new` or `dispatching`), oldest first.
    pub async fn reports_to_dispatch(&self) -> Result<Vec<StoredReport>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {REPORT_COLUMNS} FROM reports WHERE status IN ('new', 'dispatching') ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(report_from_row).collect()
    }

    /// Reports still `new` whose last change is at or before `before` (Unix ms): ones the
    /// dispatcher has not picked up, e.g. after a missed event.
    pub async fn reports_waiting(&self, before: i64) -> Result<Vec<StoredReport>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {REPORT_COLUMNS} FROM reports WHERE status = 'new' AND updated_at <= $1 ORDER BY created_at, id"
        ))
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(report_from_row).collect()
    }

    /// One assignment by id.
    pub async fn assignment(&self, id: &str) -> Result<Assignment, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_assignment(&mut conn, id).await
    }

    /// Every assignment of a report, in the order they were offered.
    pub async fn report_assignments(&self, report_id: &str) -> Result<Vec<Assignment>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_report_assignments(&mut conn, report_id).await
    }

    /// The report's timeline: every assignment transition with who made it, oldest first.
    pub async fn report_timeline(&self, report_id: &str) -> Result<Vec<TimelineEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, assignment_id, status, actor, note, ts FROM assignment_log WHERE report_id = $1 ORDER BY seq",
        )
        .bind(report_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(TimelineEntry {
                    seq: row.try_get("seq")?,
                    assignment_id: row.try_get("assignment_id")?,
                    status: parse_state(&row.try_get::<String, _>("status")?)?,
                    actor: row.try_get("actor")?,
                    note: row.try_get("note")?,
                    ts: row.try_get("ts")?,
                })
            })
            .collect()
    }

    /// Every assignment still waiting for an answer, soonest deadline first (the dispatcher's
    /// timers after a restart).
    pub async fn open_offers(&self) -> Result<Vec<Assignment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE status = 'offered' ORDER BY respond_by"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(assignment_from_row).collect()
    }

    /// Offers whose deadline is at or before `now_ms`.
    pub async fn due_offers(&self, now_ms: i64) -> Result<Vec<Assignment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE status = 'offered' AND respond_by <= $1 \
             ORDER BY respond_by"
        ))
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(assignment_from_row).collect()
    }

    /// Devices that hold an open assignment (offered, accepted or arrived), i.e. are busy.
    pub async fn busy_devices(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT device_id FROM assignments WHERE status IN ('offered', 'accepted', 'arrived')")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("device_id")?)).collect()
    }

    /// Records an offer of a report to a device, with its event, timeline line, ledger entry and
    /// the phone's message (`tell` builds it from the stored report and assignment; it goes
    /// through the phone outbox in the same transaction). Refused with [`StoreError::Conflict`]
    /// when the report is finished or already has every inspector it needs, the device was
    /// offered this report before, or the device is busy.
    pub async fn offer(
        &self,
        o: NewOffer,
        tell: impl FnOnce(&StoredReport, &Assignment) -> Result<PhoneMessage, StoreError>,
    ) -> Result<(Assignment, StoredReport), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let report = lock_report(&mut tx, &o.report_id, now).await?;
        if report.status.is_final() {
            return Err(StoreError::Conflict {
                reason: format!("report '{}' is {}; nothing to dispatch", report.id, report.status.as_str()),
            });
        }
        if report.point().is_none() {
            return Err(StoreError::Conflict { reason: unlocated(&report.id) });
        }
        let existing = fetch_report_assignments(&mut tx, &report.id).await?;
        let live = AssignmentState::filled_slots(&existing);
        if live >= report.needs {
            return Err(StoreError::Conflict {
                reason: format!(
                    "report '{}' already has the {} inspector(s) it needs; reassign or cancel one first",
                    report.id, report.needs
                ),
            });
        }
        if existing.iter().any(|a| a.device_id == o.device_id) {
            return Err(StoreError::Conflict {
                reason: format!("device '{}' was already offered report '{}'", o.device_id, report.id),
            });
        }
        let id = crate::new_id();
        let insert = sqlx::query(&format!(
            "INSERT INTO assignments ({ASSIGNMENT_COLUMNS}) VALUES ($1, $2, $3, 'offered', $4, $5, $6, $5, $7)"
        ))
        .bind(&id)
        .bind(&report.id)
        .bind(&o.device_id)
        .bind(o.distance_m)
        .bind(now)
        .bind(o.respond_by)
        .bind(&o.actor)
        .execute(&mut *tx)
        .await;
        if let Err(e) = insert {
            return Err(if is_unique_violation(&e) {
                StoreError::Conflict { reason: format!("device '{}' is busy with another assignment", o.device_id) }
            } else {
                e.into()
            });
        }
        let assignment = Assignment {
            id,
            report_id: report.id.clone(),
            device_id: o.device_id,
            status: AssignmentState::Offered,
            distance_m: o.distance_m,
            offered_at: now,
            respond_by: o.respond_by,
            updated_at: now,
            actor: o.actor.clone(),
        };
        record_change(&mut tx, &assignment, None, &o.actor, None, now).await?;
        let report = refresh_report(&mut tx, report, &o.actor, now).await?;
        Store::append_phone_message_in(&mut tx, &tell(&report, &assignment)?).await?;
        tx.commit().await?;
        self.wake_outbox();
        debug!(assignment = %assignment.id, report = %assignment.report_id, device = %assignment.device_id, "offered");
        Ok((assignment, report))
    }

    /// Moves an assignment to `to` on behalf of `actor`. With `device`, the assignment must be
    /// that device's (a phone answering). Asking for the state it is already in is a re-send and
    /// changes nothing; a move the state machine does not allow is a [`StoreError::Conflict`].
    /// `tell` (a withdrawal or expiry notice) goes through the phone outbox in the same
    /// transaction, only when the state changed.
    pub async fn transition(
        &self,
        assignment_id: &str,
        device: Option<&str>,
        to: AssignmentState,
        actor: &str,
        note: Option<&str>,
        tell: Option<PhoneMessage>,
    ) -> Result<Transition, StoreError> {
        let known = self.assignment(assignment_id).await?;
        if let Some(d) = device
            && known.device_id != d
        {
            return Err(StoreError::NotFound { what: "assignment of this device", id: assignment_id.to_owned() });
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let report = lock_report(&mut tx, &known.report_id, now).await?;
        let mut assignment = fetch_assignment(&mut tx, assignment_id).await?;
        if assignment.status == to {
            tx.commit().await?;
            return Ok(Transition { assignment, changed: false, report });
        }
        if !assignment.status.may_become(to) {
            return Err(StoreError::Conflict {
                reason: format!(
                    "assignment '{}' is {}; it cannot become {}",
                    assignment.id,
                    assignment.status.as_str(),
                    to.as_str()
                ),
            });
        }
        let from = assignment.status;
        sqlx::query("UPDATE assignments SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(to.as_str())
            .bind(now)
            .bind(&assignment.id)
            .execute(&mut *tx)
            .await?;
        assignment.status = to;
        assignment.updated_at = now;
        record_change(&mut tx, &assignment, Some(from), actor, note, now).await?;
        let report = refresh_report(&mut tx, report, actor, now).await?;
        if let Some(m) = &tell {
            Store::append_phone_message_in(&mut tx, m).await?;
        }
        tx.commit().await?;
        if tell.is_some() {
            self.wake_outbox();
        }
        debug!(assignment = %assignment.id, from = from.as_str(), to = to.as_str(), %actor, "assignment changed");
        Ok(Transition { assignment, changed: true, report })
    }

    /// Marks a report `unassigned` and raises an alarm (`jd/v1/events/alarm`, `alarm.unassigned`)
    /// so the desk acts: nobody is left within the radius, or the report has no point to send
    /// anyone to. Returns false when it was not waiting for dispatch (already escalated,
    /// finished, or fully staffed), so each escalation alarms once.
    pub async fn escalate(&self, report_id: &str, why: Escalation, actor: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let report = lock_report(&mut tx, report_id, now).await?;
        if !matches!(report.status, ReportStatus::New | ReportStatus::Dispatching) {
            return Ok(false);
        }
        let existing = fetch_report_assignments(&mut tx, report_id).await?;
        let filled = AssignmentState::filled_slots(&existing);
        if filled >= report.needs {
            return Ok(false);
        }
        let report = set_report_status(&mut tx, report, ReportStatus::Unassigned, actor, now).await?;
        let mut alarm = json!({"report": report.id, "kind": report.kind, "lat": report.lat, "lon": report.lon,
            "needs": report.needs, "filled": filled, "reason": why.reason(), "message": why.message()});
        let mut body = json!({"needs": report.needs, "filled": filled});
        match why {
            Escalation::NobodyWithin { radius_m } => {
                alarm["radius_m"] = json!(radius_m);
                body["radius_m"] = json!(radius_m.round() as i64);
            }
            Escalation::NoLocation => body["reason"] = json!(why.reason()),
        }
        Store::append_event_in(
            &mut tx,
            NewEvent { kind: "alarm".into(), r#type: "alarm.unassigned".into(), data: alarm },
        )
        .await?;
        Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "report.escalated".into(),
                actor: actor.to_owned(),
                subject: report.id.clone(),
                body,
            },
        )
        .await?;
        tx.commit().await?;
        info!(report = %report_id, filled, reason = why.reason(), "report escalated to the desk");
        Ok(true)
    }

    /// Gives a report that has no point (a public tip that named its place in words) the point
    /// the desk found, and puts it back in the dispatcher's queue: the `report.located` event
    /// and ledger entry, status `new` and `report.dispatch_requested`, in one transaction, so the
    /// dispatcher of whichever process is active offers it to the nearest inspector. Refused
    /// with [`StoreError::Conflict`] when the report has a point already or is finished.
    pub async fn place_report(
        &self,
        report_id: &str,
        lat: f64,
        lon: f64,
        actor: &str,
    ) -> Result<StoredReport, StoreError> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(StoreError::InvalidInput {
                field: "lat",
                reason: format!("must be within -90..=90, got {lat}"),
            });
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(StoreError::InvalidInput {
                field: "lon",
                reason: format!("must be within -180..=180, got {lon}"),
            });
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut report = lock_report(&mut tx, report_id, now).await?;
        if report.point().is_some() {
            return Err(StoreError::Conflict { reason: format!("report '{}' has a location already", report.id) });
        }
        if report.status.is_final() {
            return Err(StoreError::Conflict {
                reason: format!("report '{}' is {}; nothing to place", report.id, report.status.as_str()),
            });
        }
        sqlx::query("UPDATE reports SET lat = $1, lon = $2 WHERE id = $3")
            .bind(lat)
            .bind(lon)
            .bind(report_id)
            .execute(&mut *tx)
            .await?;
        report.lat = Some(lat);
        report.lon = Some(lon);
        Store::append_event_in(
            &mut tx,
            NewEvent {
                kind: "report".into(),
                r#type: "report.located".into(),
                data: json!({"id": report.id, "lat": lat, "lon": lon, "actor": actor}),
            },
        )
        .await?;
        // Integers in the ledger: a float's text differs between JSON writers, the hash must not.
        Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "report.located".into(),
                actor: actor.to_owned(),
                subject: report.id.clone(),
                body: json!({"lat_e6": (lat * 1e6).round() as i64, "lon_e6": (lon * 1e6).round() as i64}),
            },
        )
        .await?;
        let report = set_report_status(&mut tx, report, ReportStatus::New, actor, now).await?;
        Store::append_event_in(
            &mut tx,
            NewEvent {
                kind: "report".into(),
                r#type: "report.dispatch_requested".into(),
                data: json!({"id": report.id, "status": report.status, "actor": actor}),
            },
        )
        .await?;
        tx.commit().await?;
        info!(report = %report_id, %actor, "report placed by the desk; back to dispatch");
        Ok(report)
    }

    /// Raises the number of inspectors a report needs (a web report of a kind configured for
    /// two); never lowers it.
    pub async fn raise_needs(&self, report_id: &str, needs: i64) -> Result<StoredReport, StoreError> {
        if !(1..=2).contains(&needs) {
            return Err(StoreError::InvalidInput { field: "needs", reason: format!("must be 1 or 2, got {needs}") });
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut report = lock_report(&mut tx, report_id, now).await?;
        if needs > report.needs {
            sqlx::query("UPDATE reports SET needs = $1 WHERE id = $2")
                .bind(needs)
                .bind(report_id)
                .execute(&mut *tx)
                .await?;
            report.needs = needs;
        }
        tx.commit().await?;
        Ok(report)
    }

    /// Puts an unassigned (or new) report back in the dispatcher's queue, e.g. after staff ask
    /// for "nearest" again; recorded with who asked.
    pub async fn redispatch(&self, report_id: &str, actor: &str) -> Result<StoredReport, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let report = lock_report(&mut tx, report_id, now).await?;
        if report.status.is_final() {
            return Err(StoreError::Conflict {
                reason: format!("report '{}' is {}; nothing to dispatch", report.id, report.status.as_str()),
            });
        }
        if report.point().is_none() {
            return Err(StoreError::Conflict { reason: unlocated(&report.id) });
        }
        let report = set_report_status(&mut tx, report, ReportStatus::New, actor, now).await?;
        Store::append_event_in(
            &mut tx,
            NewEvent {
                kind: "report".into(),
                r#type: "report.dispatch_requested".into(),
                data: json!({"id": report.id, "status": report.status, "actor": actor}),
            },
        )
        .await?;
        Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "report.redispatched".into(),
                actor: actor.to_owned(),
                subject: report.id.clone(),
                body: json!({}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(report)
    }

    /// Cancels a report and withdraws its open assignments (returned); recorded with who did it
    /// and why. `tell` builds each withdrawn phone's notice, which goes through the phone outbox
    /// in the same transaction.
    pub async fn cancel_report(
        &self,
        report_id: &str,
        actor: &str,
        reason: Option<&str>,
        tell: impl Fn(&Assignment) -> Result<PhoneMessage, StoreError>,
    ) -> Result<(StoredReport, Vec<Assignment>), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let report = lock_report(&mut tx, report_id, now).await?;
        if report.status.is_final() {
            return Err(StoreError::Conflict {
                reason: format!("report '{}' is {} already", report.id, report.status.as_str()),
            });
        }
        let mut withdrawn = Vec::new();
        for mut a in fetch_report_assignments(&mut tx, report_id).await? {
            if !a.status.is_open() {
                continue;
            }
            let from = a.status;
            sqlx::query("UPDATE assignments SET status = 'cancelled', updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&a.id)
                .execute(&mut *tx)
                .await?;
            a.status = AssignmentState::Cancelled;
            a.updated_at = now;
            record_change(&mut tx, &a, Some(from), actor, reason, now).await?;
            Store::append_phone_message_in(&mut tx, &tell(&a)?).await?;
            withdrawn.push(a);
        }
        let report = set_report_status(&mut tx, report, ReportStatus::Cancelled, actor, now).await?;
        Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "report.cancelled".into(),
                actor: actor.to_owned(),
                subject: report.id.clone(),
                body: json!({"reason": reason.unwrap_or_default(), "withdrawn": withdrawn.len() as i64}),
            },
        )
        .await?;
        tx.commit().await?;
        if !withdrawn.is_empty() {
            self.wake_outbox();
        }
        info!(report = %report_id, %actor, withdrawn = withdrawn.len(), "report cancelled");
        Ok((report, withdrawn))
    }
}

/// Takes the report's row lock (and on SQLite the write lock) and returns the report.
async fn lock_report(conn: &mut AnyConnection, id: &str, now: i64) -> Result<StoredReport, StoreError> {
    crate::lock_row(conn, "reports", "report", id, now).await?;
    fetch_report(conn, id).await
}

async fn fetch_report(conn: &mut AnyConnection, id: &str) -> Result<StoredReport, StoreError> {
    let row = sqlx::query(&format!("SELECT {REPORT_COLUMNS} FROM reports WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound { what: "report", id: id.to_owned() })?;
    report_from_row(&row)
}

async fn fetch_assignment(conn: &mut AnyConnection, id: &str) -> Result<Assignment, StoreError> {
    let row = sqlx::query(&format!("SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound { what: "assignment", id: id.to_owned() })?;
    assignment_from_row(&row)
}

async fn fetch_report_assignments(conn: &mut AnyConnection, report_id: &str) -> Result<Vec<Assignment>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE report_id = $1 ORDER BY offered_at, id"
    ))
    .bind(report_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(assignment_from_row).collect()
}

/// Writes the timeline line, the `assignment.{status}` event and the ledger entry of a change.
async fn record_change(
    conn: &mut AnyConnection,
    a: &Assignment,
    from: Option<AssignmentState>,
    actor: &str,
    note: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO assignment_log (assignment_id, report_id, status, actor, note, ts) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&a.id)
    .bind(&a.report_id)
    .bind(a.status.as_str())
    .bind(actor)
    .bind(note)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let mut data = json!({"id": a.id, "report": a.report_id, "device": a.device_id, "status": a.status,
        "previous": from, "actor": actor, "distance_m": a.distance_m, "respond_by": a.respond_by, "at": now});
    if let Some(n) = note {
        data["note"] = json!(n);
    }
    Store::append_event_in(
        conn,
        NewEvent { kind: "assignment".into(), r#type: format!("assignment.{}", a.status.as_str()), data },
    )
    .await?;
    Store::ledger_append_in(
        conn,
        NewLedgerEntry {
            kind: "assignment.changed".into(),
            actor: actor.to_owned(),
            subject: a.id.clone(),
            body: json!({"report": a.report_id, "device": a.device_id, "from": from.map_or("", AssignmentState::as_str),
                "to": a.status.as_str(), "distance_m": a.distance_m.round() as i64, "note": note.unwrap_or_default()}),
        },
    )
    .await?;
    Ok(())
}

/// Recomputes a report's status from its assignments after a change.
async fn refresh_report(
    conn: &mut AnyConnection,
    report: StoredReport,
    actor: &str,
    now: i64,
) -> Result<StoredReport, StoreError> {
    if report.status == ReportStatus::Cancelled {
        return Ok(report);
    }
    let all = fetch_report_assignments(conn, &report.id).await?;
    let count = |f: &dyn Fn(AssignmentState) -> bool| all.iter().filter(|a| f(a.status)).count() as i64;
    let done = count(&|s| s == AssignmentState::Completed);
    let taken =
        count(&|s| matches!(s, AssignmentState::Accepted | AssignmentState::Arrived | AssignmentState::Completed));
    let offered = count(&|s| s == AssignmentState::Offered);
    let status = if done >= report.needs {
        ReportStatus::Completed
    } else if taken >= report.needs {
        ReportStatus::Assigned
    } else if offered > 0 {
        ReportStatus::Dispatching
    } else if report.status == ReportStatus::Unassigned {
        ReportStatus::Unassigned
    } else {
        ReportStatus::New
    };
    set_report_status(conn, report, status, actor, now).await
}

/// Sets the status and, when it changed, records `report.updated`.
async fn set_report_status(
    conn: &mut AnyConnection,
    mut report: StoredReport,
    status: ReportStatus,
    actor: &str,
    now: i64,
) -> Result<StoredReport, StoreError> {
    if report.status == status {
        return Ok(report);
    }
    sqlx::query("UPDATE reports SET status = $1, updated_at = $2 WHERE id = $3")
        .bind(status.as_str())
        .bind(now)
        .bind(&report.id)
        .execute(&mut *conn)
        .await?;
    let previous = report.status;
    report.status = status;
    report.updated_at = now;
    Store::append_event_in(
        conn,
        NewEvent {
            kind: "report".into(),
            r#type: "report.updated".into(),
            data: json!({"id": report.id, "status": status, "previous": previous, "actor": actor}),
        },
    )
    .await?;
    Ok(report)
}
