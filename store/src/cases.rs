//! Disciplinary cases (issue 10): the rows behind `oversight::cases`.
//!
//! The workflow's rules (stage templates, working-day deadlines, who may act and approve) live in
//! `oversight`; this module only keeps the state and makes each change atomic: the case row, its
//! timeline line (`case_log`), the `jd/v1/events/case` (or `alarm`) event and the ledger entry
//! commit in one transaction. Every change first bumps the case's `updated_at`, which takes the
//! row's write lock, so concurrent approvals of one case are serialised. Deadline timers are rows
//! too; [`Store::fire_case_timer`] fires one by moving it from `pending` to `fired`, the guard
//! that makes each reminder and alarm happen exactly once across restarts and racing schedulers.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tracing::{debug, info};

use crate::{NewEvent, NewLedgerEntry, Store, StoreError, now_ms};

stored_enum! {
    /// Whether a case still runs against its deadlines.
    pub enum CaseStatus {
        /// In one of its stages, with a deadline.
        Open => "open",
        /// Past its last stage; no more deadlines.
        Closed => "closed",
    }
}

stored_enum! {
    /// What a case timer does when due.
    pub enum TimerKind {
        /// Tells the handler some working days before the deadline.
        Reminder => "reminder",
        /// The deadline passed: alarm, negative record.
        Overdue => "overdue",
    }
}

stored_enum! {
    /// Where a case timer stands.
    pub enum TimerState {
        /// Waiting for its time.
        Pending => "pending",
        /// Went off.
        Fired => "fired",
        /// The stage ended before it was due.
        Cancelled => "cancelled",
    }
}

stored_enum! {
    /// Where a case came from.
    pub enum CaseOrigin {
        /// A report (tip) from a phone, an integration or the web.
        Report => "report",
        /// A registry look-up (its audit id).
        Lookup => "lookup",
        /// An evidence item.
        Evidence => "evidence",
        /// Entered by hand.
        Manual => "manual",
    }
}

/// A deadline timer to schedule for a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewCaseTimer {
    /// Reminder or alarm.
    pub kind: TimerKind,
    /// For a reminder, how many working days before the deadline it is; 0 for the alarm.
    pub working_days: i64,
    /// When it is due (Unix ms).
    pub due_at: i64,
}

/// The start of a stage: which one, its deadline and its timers (computed by `oversight`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStart {
    /// Index into the case's stage list.
    pub index: i64,
    /// The stage's key, e.g. `clue_handling`.
    pub key: String,
    /// The stage's deadline (Unix ms).
    pub deadline_at: i64,
    /// Reminders and the overdue alarm.
    pub timers: Vec<NewCaseTimer>,
}

/// A case to open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewCase {
    /// Title.
    pub title: String,
    /// Where it came from.
    pub origin: CaseOrigin,
    /// The origin's id (report, look-up audit or evidence id), absent for `manual`.
    pub origin_id: Option<String>,
    /// Parties: registry person ids.
    pub parties: Vec<String>,
    /// Attached evidence ids (read-only references).
    pub evidence: Vec<String>,
    /// The responsible handler (user name).
    pub handler: String,
    /// The responsible unit (department code).
    pub unit: String,
    /// The unit head (user name) who gets reminders too.
    pub unit_head: Option<String>,
    /// The stage list the case runs under (JSON).
    pub template: Value,
    /// The first stage.
    pub first: StageStart,
    /// Who opened it.
    pub actor: String,
    /// When the first stage starts (Unix ms).
    pub now: i64,
}

/// A case as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// ULID.
    pub id: String,
    /// Title.
    pub title: String,
    /// Where it came from.
    pub origin: CaseOrigin,
    /// The origin's id.
    pub origin_id: Option<String>,
    /// Registry person ids.
    pub parties: Vec<String>,
    /// Evidence ids.
    pub evidence: Vec<String>,
    /// Handler (user name).
    pub handler: String,
    /// Unit (department code).
    pub unit: String,
    /// Unit head (user name).
    pub unit_head: Option<String>,
    /// The stage list it runs under.
    pub template: Value,
    /// Current stage index.
    pub stage_index: i64,
    /// Current stage key.
    pub stage: String,
    /// Open or closed.
    pub status: CaseStatus,
    /// When the current stage started.
    pub stage_started_at: i64,
    /// The current stage's deadline.
    pub deadline_at: i64,
    /// Extensions granted in the current stage.
    pub extensions: i64,
    /// Who asked to move on from the current stage, if anyone has.
    pub submitted_by: Option<String>,
    /// When.
    pub submitted_at: Option<i64>,
    /// When the current stage went overdue, if it did.
    pub overdue_at: Option<i64>,
    /// Who opened it.
    pub created_by: String,
    /// When.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
}

/// One line of a case's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseLogEntry {
    /// Order.
    pub seq: i64,
    /// Stage index at the time.
    pub stage_index: i64,
    /// Stage key at the time.
    pub stage: String,
    /// `opened`, `submitted`, `approved`, `advanced`, `closed`, `extended`, `reminder`, `overdue`.
    pub kind: String,
    /// Who (user name, or `scheduler`).
    pub actor: String,
    /// Free text.
    pub note: Option<String>,
    /// Details.
    pub data: Value,
    /// When.
    pub ts: i64,
}

/// An approval to move on from a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseApproval {
    /// Stage index approved.
    pub stage_index: i64,
    /// Who approved.
    pub approver: String,
    /// Free text.
    pub note: Option<String>,
    /// When.
    pub ts: i64,
}

/// A scheduled reminder or alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseTimer {
    /// Id.
    pub id: i64,
    /// The case.
    pub case_id: String,
    /// Stage index it belongs to.
    pub stage_index: i64,
    /// Reminder or alarm.
    pub kind: TimerKind,
    /// Working days before the deadline (0 for the alarm).
    pub working_days: i64,
    /// When due.
    pub due_at: i64,
    /// Pending, fired or cancelled.
    pub state: TimerState,
    /// When it fired.
    pub fired_at: Option<i64>,
}

/// A negative record (负面记录) for a missed deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NegativeRecord {
    /// Id.
    pub id: i64,
    /// The case.
    pub case_id: String,
    /// The stage whose deadline was missed.
    pub stage: String,
    /// `unit` or `handler`.
    pub subject_kind: String,
    /// The unit code or handler name.
    pub subject: String,
    /// Why.
    pub reason: String,
    /// The missed deadline.
    pub deadline_at: i64,
    /// When recorded.
    pub ts: i64,
}

/// A negative record to write when a timer fires (decided by `oversight`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNegativeRecord {
    /// `unit` or `handler`.
    pub subject_kind: String,
    /// The unit code or handler name.
    pub subject: String,
}

/// What a firing timer does, decided by `oversight` from the timer and the case as they are in
/// the firing transaction; [`Store::fire_case_timer`] only records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerEffects {
    /// The stage went overdue: the case is marked overdue and the alarm goes on
    /// `jd/v1/events/alarm` (and `case.overdue` on `…/case`); otherwise it is a reminder.
    pub overdue: bool,
    /// Who is told (user names).
    pub to: Vec<String>,
    /// Who an alarm is escalated to (user names).
    pub escalated_to: Vec<String>,
    /// The timeline note of an alarm.
    pub reason: Option<String>,
    /// Negative records to write.
    pub negative_records: Vec<NewNegativeRecord>,
}

/// One cell of the leaders' overview: open cases of a unit in a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseCount {
    /// Unit.
    pub unit: String,
    /// Stage key.
    pub stage: String,
    /// Open cases.
    pub open: i64,
    /// Of those, overdue.
    pub overdue: i64,
}

/// What [`Store::case_approve`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// The case afterwards.
    pub case: Case,
    /// Distinct approvals of the stage so far.
    pub approvals: i64,
    /// Whether the case moved on (or closed).
    pub moved: bool,
}

/// A timer that fired, with the case as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FiredTimer {
    /// The timer.
    pub timer: CaseTimer,
    /// The case.
    pub case: Case,
    /// The ledger entry recording it.
    pub ledger_seq: i64,
}

const CASE_COLUMNS: &str = "id, title, origin_kind, origin_id, parties, evidence, handler, unit, unit_head, template, \
     stage_index, stage, status, stage_started_at, deadline_at, extensions, submitted_by, submitted_at, overdue_at, \
     created_by, created_at, updated_at";
const TIMER_COLUMNS: &str = "id, case_id, stage_index, kind, working_days, due_at, state, fired_at";

fn json_col(row: &AnyRow, col: &str, what: &'static str) -> Result<Value, StoreError> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt { what, reason: e.to_string() })
}

fn strings(v: Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn case_from_row(row: &AnyRow) -> Result<Case, StoreError> {
    Ok(Case {
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        origin: CaseOrigin::from_column(row, "origin_kind")?,
        origin_id: row.try_get("origin_id")?,
        parties: strings(json_col(row, "parties", "case parties")?),
        evidence: strings(json_col(row, "evidence", "case evidence")?),
        handler: row.try_get("handler")?,
        unit: row.try_get("unit")?,
        unit_head: row.try_get("unit_head")?,
        template: json_col(row, "template", "case template")?,
        stage_index: row.try_get("stage_index")?,
        stage: row.try_get("stage")?,
        status: CaseStatus::from_column(row, "status")?,
        stage_started_at: row.try_get("stage_started_at")?,
        deadline_at: row.try_get("deadline_at")?,
        extensions: row.try_get("extensions")?,
        submitted_by: row.try_get("submitted_by")?,
        submitted_at: row.try_get("submitted_at")?,
        overdue_at: row.try_get("overdue_at")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn timer_from_row(row: &AnyRow) -> Result<CaseTimer, StoreError> {
    Ok(CaseTimer {
        id: row.try_get("id")?,
        case_id: row.try_get("case_id")?,
        stage_index: row.try_get("stage_index")?,
        kind: TimerKind::from_column(row, "kind")?,
        working_days: row.try_get("working_days")?,
        due_at: row.try_get("due_at")?,
        state: TimerState::from_column(row, "state")?,
        fired_at: row.try_get("fired_at")?,
    })
}

/// The case's public summary, carried by its events.
fn case_summary(c: &Case) -> Value {
    json!({
        "id": c.id, "title": c.title, "stage": c.stage, "stage_index": c.stage_index, "status": c.status,
        "handler": c.handler, "unit": c.unit, "deadline_at": c.deadline_at,
    })
}

async fn lock_case(conn: &mut AnyConnection, id: &str, now: i64) -> Result<Case, StoreError> {
    crate::lock_row(conn, "cases", "case", id, now).await?;
    fetch_case(conn, id).await
}

async fn fetch_case(conn: &mut AnyConnection, id: &str) -> Result<Case, StoreError> {
    let row = sqlx::query(&format!("SELECT {CASE_COLUMNS} FROM cases WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound { what: "case", id: id.to_owned() })?;
    case_from_row(&row)
}

/// Refuses a change aimed at another stage than the current one, or at a closed case.
fn expect_stage(case: &Case, stage_index: i64) -> Result<(), StoreError> {
    if case.status != CaseStatus::Open {
        return Err(StoreError::Conflict { reason: format!("case '{}' is closed", case.id) });
    }
    if case.stage_index != stage_index {
        return Err(StoreError::Conflict {
            reason: format!(
                "case '{}' is in stage {} ({}), not stage {stage_index}",
                case.id, case.stage_index, case.stage
            ),
        });
    }
    Ok(())
}

/// Appends a timeline line, the `jd/v1/events/{event_kind}` event and the ledger entry.
#[allow(clippy::too_many_arguments)]
async fn record(
    conn: &mut AnyConnection,
    case: &Case,
    kind: &str,
    event_kind: &str,
    actor: &str,
    note: Option<&str>,
    data: Value,
    now: i64,
) -> Result<i64, StoreError> {
    sqlx::query(
        "INSERT INTO case_log (case_id, stage_index, stage, kind, actor, note, data, ts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&case.id)
    .bind(case.stage_index)
    .bind(&case.stage)
    .bind(kind)
    .bind(actor)
    .bind(note)
    .bind(data.to_string())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let mut event = json!({"case": case_summary(case), "actor": actor, "details": data});
    if let Some(n) = note {
        event["note"] = json!(n);
    }
    Store::append_event_in(conn, NewEvent { kind: event_kind.into(), r#type: format!("case.{kind}"), data: event })
        .await?;
    let mut body = json!({"stage": case.stage, "stage_index": case.stage_index, "details": data.to_string()});
    if let Some(n) = note {
        body["note"] = json!(n);
    }
    let entry = Store::ledger_append_in(
        conn,
        NewLedgerEntry { kind: format!("case.{kind}"), actor: actor.into(), subject: case.id.clone(), body },
    )
    .await?;
    Ok(entry.seq)
}

async fn schedule(conn: &mut AnyConnection, case_id: &str, start: &StageStart) -> Result<(), StoreError> {
    sqlx::query("UPDATE case_timers SET state = 'cancelled' WHERE case_id = $1 AND state = 'pending'")
        .bind(case_id)
        .execute(&mut *conn)
        .await?;
    for t in &start.timers {
        sqlx::query(
            "INSERT INTO case_timers (case_id, stage_index, kind, working_days, due_at, state) \
             VALUES ($1, $2, $3, $4, $5, 'pending')",
        )
        .bind(case_id)
        .bind(start.index)
        .bind(t.kind.as_str())
        .bind(t.working_days)
        .bind(t.due_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Moves the locked case into `next` (or closes it when `next` is `None`).
async fn move_on(
    conn: &mut AnyConnection,
    mut case: Case,
    next: Option<&StageStart>,
    actor: &str,
    now: i64,
) -> Result<Case, StoreError> {
    let from = case.stage.clone();
    match next {
        Some(start) => {
            sqlx::query(
                "UPDATE cases SET stage_index = $1, stage = $2, stage_started_at = $3, deadline_at = $4, \
                 extensions = 0, submitted_by = NULL, submitted_at = NULL, overdue_at = NULL WHERE id = $5",
            )
            .bind(start.index)
            .bind(&start.key)
            .bind(now)
            .bind(start.deadline_at)
            .bind(&case.id)
            .execute(&mut *conn)
            .await?;
            schedule(conn, &case.id, start).await?;
            case.stage_index = start.index;
            case.stage = start.key.clone();
            case.stage_started_at = now;
            case.deadline_at = start.deadline_at;
            case.extensions = 0;
            case.submitted_by = None;
            case.submitted_at = None;
            case.overdue_at = None;
            let data = json!({"from": from, "to": start.key, "deadline_at": start.deadline_at});
            record(conn, &case, "advanced", "case", actor, None, data, now).await?;
        }
        None => {
            sqlx::query("UPDATE cases SET status = 'closed' WHERE id = $1").bind(&case.id).execute(&mut *conn).await?;
            sqlx::query("UPDATE case_timers SET state = 'cancelled' WHERE case_id = $1 AND state = 'pending'")
                .bind(&case.id)
                .execute(&mut *conn)
                .await?;
            case.status = CaseStatus::Closed;
            record(conn, &case, "closed", "case", actor, None, json!({"from": from}), now).await?;
        }
    }
    Ok(case)
}

impl Store {
    /// Opens a case in its first stage, scheduling that stage's timers; records `case.opened`.
    pub async fn insert_case(&self, c: NewCase) -> Result<Case, StoreError> {
        if c.title.trim().is_empty() {
            return Err(StoreError::InvalidInput { field: "title", reason: "must not be empty".into() });
        }
        let id = crate::new_id();
        let now = c.now;
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO cases ({CASE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'open', \
             $13, $14, 0, NULL, NULL, NULL, $15, $13, $13)"
        ))
        .bind(&id)
        .bind(&c.title)
        .bind(c.origin.as_str())
        .bind(&c.origin_id)
        .bind(json!(c.parties).to_string())
        .bind(json!(c.evidence).to_string())
        .bind(&c.handler)
        .bind(&c.unit)
        .bind(&c.unit_head)
        .bind(c.template.to_string())
        .bind(c.first.index)
        .bind(&c.first.key)
        .bind(now)
        .bind(c.first.deadline_at)
        .bind(&c.actor)
        .execute(&mut *tx)
        .await?;
        schedule(&mut tx, &id, &c.first).await?;
        let case = fetch_case(&mut tx, &id).await?;
        let data = json!({
            "origin": c.origin.as_str(), "origin_id": c.origin_id, "parties": c.parties.len(),
            "evidence": c.evidence.len(), "deadline_at": c.first.deadline_at,
        });
        record(&mut tx, &case, "opened", "case", &c.actor, None, data, now).await?;
        tx.commit().await?;
        info!(case = %id, unit = %case.unit, handler = %case.handler, "case opened");
        Ok(case)
    }

    /// One case.
    pub async fn case(&self, id: &str) -> Result<Case, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_case(&mut conn, id).await
    }

    /// Cases newest first, optionally of one unit, only open ones, or only overdue ones; after
    /// the case id `after`.
    pub async fn cases(
        &self,
        unit: Option<&str>,
        overdue_only: bool,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Vec<Case>, StoreError> {
        let mut sql = format!("SELECT {CASE_COLUMNS} FROM cases WHERE ($1 = '' OR unit = $1)");
        if overdue_only {
            sql.push_str(" AND status = 'open' AND overdue_at IS NOT NULL");
        }
        sql.push_str(" AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3");
        let rows = sqlx::query(&sql)
            .bind(unit.unwrap_or(""))
            .bind(after.unwrap_or(""))
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(case_from_row).collect()
    }

    /// Open cases waiting for approvals (someone asked to move them on).
    pub async fn cases_awaiting_approval(&self, limit: i64) -> Result<Vec<Case>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CASE_COLUMNS} FROM cases WHERE status = 'open' AND submitted_by IS NOT NULL \
             ORDER BY submitted_at LIMIT $1"
        ))
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(case_from_row).collect()
    }

    /// A case's timeline, oldest first.
    pub async fn case_timeline(&self, id: &str) -> Result<Vec<CaseLogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, stage_index, stage, kind, actor, note, data, ts FROM case_log WHERE case_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CaseLogEntry {
                    seq: r.try_get("seq")?,
                    stage_index: r.try_get("stage_index")?,
                    stage: r.try_get("stage")?,
                    kind: r.try_get("kind")?,
                    actor: r.try_get("actor")?,
                    note: r.try_get("note")?,
                    data: json_col(r, "data", "case log data")?,
                    ts: r.try_get("ts")?,
                })
            })
            .collect()
    }

    /// A case's approvals, all stages, oldest first.
    pub async fn case_approvals(&self, id: &str) -> Result<Vec<CaseApproval>, StoreError> {
        let rows = sqlx::query(
            "SELECT stage_index, approver, note, ts FROM case_approvals WHERE case_id = $1 ORDER BY ts, approver",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CaseApproval {
                    stage_index: r.try_get("stage_index")?,
                    approver: r.try_get("approver")?,
                    note: r.try_get("note")?,
                    ts: r.try_get("ts")?,
                })
            })
            .collect()
    }

    /// A case's timers, all states, in scheduling order.
    pub async fn case_timers(&self, id: &str) -> Result<Vec<CaseTimer>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {TIMER_COLUMNS} FROM case_timers WHERE case_id = $1 ORDER BY id"))
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(timer_from_row).collect()
    }

    /// Records that `actor` asks to move the case on from `stage_index`. With
    /// `required_approvals` 0 the case moves on at once (into `next`, or closes when `None`).
    #[allow(clippy::too_many_arguments)]
    pub async fn case_submit(
        &self,
        id: &str,
        stage_index: i64,
        actor: &str,
        note: Option<&str>,
        required_approvals: i64,
        next: Option<StageStart>,
        now: i64,
    ) -> Result<Case, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut case = lock_case(&mut tx, id, now).await?;
        expect_stage(&case, stage_index)?;
        if case.submitted_by.is_none() {
            sqlx::query("UPDATE cases SET submitted_by = $1, submitted_at = $2 WHERE id = $3")
                .bind(actor)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            case.submitted_by = Some(actor.to_owned());
            case.submitted_at = Some(now);
            let data = json!({"required_approvals": required_approvals});
            record(&mut tx, &case, "submitted", "case", actor, note, data, now).await?;
        }
        if required_approvals <= 0 {
            case = move_on(&mut tx, case, next.as_ref(), actor, now).await?;
        }
        tx.commit().await?;
        Ok(case)
    }

    /// Records `approver`'s approval of moving the case on from `stage_index`; once
    /// `required` distinct approvers have approved, the case moves into `next` (or closes).
    /// Refused when nobody asked to move on, the stage is not current, or this approver
    /// approved this stage already (the two-person rule counts people, not clicks).
    #[allow(clippy::too_many_arguments)]
    pub async fn case_approve(
        &self,
        id: &str,
        stage_index: i64,
        approver: &str,
        note: Option<&str>,
        required: i64,
        next: Option<StageStart>,
        now: i64,
    ) -> Result<Approval, StoreError> {
        let mut tx = self.pool.begin().await?;
        let case = lock_case(&mut tx, id, now).await?;
        expect_stage(&case, stage_index)?;
        if case.submitted_by.is_none() {
            return Err(StoreError::Conflict {
                reason: format!("case '{id}' has not been submitted to move on from stage {}", case.stage),
            });
        }
        let inserted = sqlx::query(
            "INSERT INTO case_approvals (case_id, stage_index, approver, note, ts) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(stage_index)
        .bind(approver)
        .bind(note)
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            return Err(match &e {
                sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
                    reason: format!(
                        "{approver} approved stage {} of case '{id}' already; another person must approve",
                        case.stage
                    ),
                },
                _ => e.into(),
            });
        }
        let row = sqlx::query("SELECT COUNT(*) AS n FROM case_approvals WHERE case_id = $1 AND stage_index = $2")
            .bind(id)
            .bind(stage_index)
            .fetch_one(&mut *tx)
            .await?;
        let approvals: i64 = row.try_get("n")?;
        let data = json!({"approvals": approvals, "required": required});
        record(&mut tx, &case, "approved", "case", approver, note, data, now).await?;
        let moved = approvals >= required;
        let case = if moved { move_on(&mut tx, case, next.as_ref(), approver, now).await? } else { case };
        tx.commit().await?;
        debug!(case = %id, approvals, required, moved, "case approval");
        Ok(Approval { case, approvals, moved })
    }

    /// Extends the current stage's deadline to `new.deadline_at`, rescheduling its timers.
    /// Refused after the deadline has passed or when `max_extensions` have been granted.
    #[allow(clippy::too_many_arguments)]
    pub async fn case_extend(
        &self,
        id: &str,
        new: StageStart,
        actor: &str,
        reason: &str,
        max_extensions: i64,
        now: i64,
    ) -> Result<Case, StoreError> {
        if reason.trim().is_empty() {
            return Err(StoreError::InvalidInput { field: "reason", reason: "an extension needs a reason".into() });
        }
        let mut tx = self.pool.begin().await?;
        let mut case = lock_case(&mut tx, id, now).await?;
        expect_stage(&case, new.index)?;
        if now > case.deadline_at || case.overdue_at.is_some() {
            return Err(StoreError::Conflict {
                reason: format!("the deadline of stage {} has passed; it can no longer be extended", case.stage),
            });
        }
        if case.extensions >= max_extensions {
            return Err(StoreError::Conflict {
                reason: format!("stage {} allows {max_extensions} extension(s), all granted", case.stage),
            });
        }
        if new.deadline_at <= case.deadline_at {
            return Err(StoreError::InvalidInput {
                field: "days",
                reason: "the new deadline must be later than the current one".into(),
            });
        }
        let old = case.deadline_at;
        sqlx::query("UPDATE cases SET deadline_at = $1, extensions = extensions + 1 WHERE id = $2")
            .bind(new.deadline_at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        schedule(&mut tx, id, &new).await?;
        case.deadline_at = new.deadline_at;
        case.extensions += 1;
        let data = json!({"from": old, "to": new.deadline_at, "extension": case.extensions});
        record(&mut tx, &case, "extended", "case", actor, Some(reason), data, now).await?;
        tx.commit().await?;
        Ok(case)
    }

    /// Pending timers due at or before `now`, oldest first.
    pub async fn due_case_timers(&self, now: i64, limit: i64) -> Result<Vec<CaseTimer>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {TIMER_COLUMNS} FROM case_timers WHERE state = 'pending' AND due_at <= $1 ORDER BY due_at, id LIMIT $2"
        ))
        .bind(now)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(timer_from_row).collect()
    }

    /// The earliest pending timer's due time, if any.
    pub async fn next_case_timer(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MIN(due_at) AS due FROM case_timers WHERE state = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("due")?)
    }

    /// Fires a due timer exactly once: the row moves from `pending` to `fired` in the same
    /// transaction as its effects, so a second scheduler (or a restart) finds nothing to do and
    /// gets `None`. `decide` (the domain's rule, in `oversight`) says what the timer does given
    /// the timer and the locked case; this records it: a reminder as `case.reminder`
    /// (`jd/v1/events/case`), an alarm as `case.overdue` on `jd/v1/events/alarm` and `…/case`
    /// with the case marked overdue and the negative records written.
    pub async fn fire_case_timer(
        &self,
        timer_id: i64,
        now: i64,
        decide: impl FnOnce(&CaseTimer, &Case) -> TimerEffects,
    ) -> Result<Option<FiredTimer>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(
            "UPDATE case_timers SET state = 'fired', fired_at = $1 WHERE id = $2 AND state = 'pending' AND due_at <= $1",
        )
        .bind(now)
        .bind(timer_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(None);
        }
        let row = sqlx::query(&format!("SELECT {TIMER_COLUMNS} FROM case_timers WHERE id = $1"))
            .bind(timer_id)
            .fetch_one(&mut *tx)
            .await?;
        let timer = timer_from_row(&row)?;
        let mut case = lock_case(&mut tx, &timer.case_id, now).await?;
        let effects = decide(&timer, &case);
        let ledger_seq = if effects.overdue {
            sqlx::query("UPDATE cases SET overdue_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&case.id)
                .execute(&mut *tx)
                .await?;
            case.overdue_at = Some(now);
            let reason = effects.reason.clone().unwrap_or_default();
            for n in &effects.negative_records {
                sqlx::query(
                    "INSERT INTO negative_records (case_id, stage, subject_kind, subject, reason, deadline_at, ts) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&case.id)
                .bind(&case.stage)
                .bind(&n.subject_kind)
                .bind(&n.subject)
                .bind(&reason)
                .bind(case.deadline_at)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            let kinds: Vec<&str> = effects.negative_records.iter().map(|n| n.subject_kind.as_str()).collect();
            let data = json!({"deadline_at": case.deadline_at, "to": effects.to, "escalated_to": effects.escalated_to,
                              "negative_records": kinds});
            let note = effects.reason.as_deref();
            let seq = record(&mut tx, &case, "overdue", "alarm", "scheduler", note, data.clone(), now).await?;
            Store::append_event_in(
                &mut tx,
                NewEvent {
                    kind: "case".into(),
                    r#type: "case.overdue".into(),
                    data: json!({"case": case_summary(&case), "details": data}),
                },
            )
            .await?;
            seq
        } else {
            let data =
                json!({"deadline_at": case.deadline_at, "working_days_before": timer.working_days, "to": effects.to});
            record(&mut tx, &case, "reminder", "case", "scheduler", None, data, now).await?
        };
        tx.commit().await?;
        info!(case = %case.id, timer = timer.id, kind = %timer.kind, "case timer fired");
        Ok(Some(FiredTimer { timer, case, ledger_seq }))
    }

    /// Negative records, newest first, optionally of one subject kind and subject.
    pub async fn negative_records(
        &self,
        subject_kind: Option<&str>,
        subject: Option<&str>,
        limit: i64,
    ) -> Result<Vec<NegativeRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, case_id, stage, subject_kind, subject, reason, deadline_at, ts FROM negative_records \
             WHERE ($1 = '' OR subject_kind = $1) AND ($2 = '' OR subject = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(subject_kind.unwrap_or(""))
        .bind(subject.unwrap_or(""))
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(NegativeRecord {
                    id: r.try_get("id")?,
                    case_id: r.try_get("case_id")?,
                    stage: r.try_get("stage")?,
                    subject_kind: r.try_get("subject_kind")?,
                    subject: r.try_get("subject")?,
                    reason: r.try_get("reason")?,
                    deadline_at: r.try_get("deadline_at")?,
                    ts: r.try_get("ts")?,
                })
            })
            .collect()
    }

    /// Open cases per unit and stage, with how many are overdue: the leaders' overview.
    pub async fn case_overview(&self) -> Result<Vec<CaseCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT unit, stage, COUNT(*) AS open, \
             CAST(SUM(CASE WHEN overdue_at IS NULL THEN 0 ELSE 1 END) AS BIGINT) AS overdue \
             FROM cases WHERE status = 'open' GROUP BY unit, stage ORDER BY unit, stage",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CaseCount {
                    unit: r.try_get("unit")?,
                    stage: r.try_get("stage")?,
                    open: r.try_get("open")?,
                    overdue: r.try_get("overdue")?,
                })
            })
            .collect()
    }

    /// Stores a year's working-day calendar (TOML text, checked by `oversight`) as the one in
    /// force for that year, with a `calendar.loaded` ledger entry.
    pub async fn calendar_load(&self, year: i64, source: &str, actor: &str) -> Result<i64, StoreError> {
        self.data_file_load("calendar_years", Some(year), source, actor).await
    }

    /// The calendars in force: (year, TOML text), newest version of each year.
    pub async fn calendars(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT year, source FROM calendar_years c WHERE seq = (SELECT MAX(seq) FROM calendar_years d \
             WHERE d.year = c.year) ORDER BY year",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("year")?, r.try_get("source")?))).collect()
    }

    /// Stores a stage template (TOML text, checked by `oversight`) as the one new cases use.
    pub async fn stage_template_load(&self, source: &str, actor: &str) -> Result<i64, StoreError> {
        self.data_file_load("case_templates", None, source, actor).await
    }

    /// The stage template in force (TOML text), if one was loaded.
    pub async fn stage_template(&self) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT source FROM case_templates ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("source")).transpose()?)
    }

    async fn data_file_load(
        &self,
        table: &'static str,
        year: Option<i64>,
        source: &str,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let sha = hex::encode(Sha256::digest(source.as_bytes()));
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let row = match year {
            Some(y) => sqlx::query(
                "INSERT INTO calendar_years (year, source, sha256, loaded_at, loaded_by) VALUES ($1, $2, $3, $4, $5) \
                     RETURNING seq",
            )
            .bind(y)
            .bind(source)
            .bind(&sha)
            .bind(now)
            .bind(actor)
            .fetch_one(&mut *tx)
            .await?,
            None => {
                sqlx::query(
                    "INSERT INTO case_templates (source, sha256, loaded_at, loaded_by) VALUES ($1, $2, $3, $4) \
                     RETURNING seq",
                )
                .bind(source)
                .bind(&sha)
                .bind(now)
                .bind(actor)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        let seq: i64 = row.try_get("seq")?;
        let (kind, subject) = match year {
            Some(y) => ("calendar.loaded", y.to_string()),
            None => ("case_template.loaded", format!("template {seq}")),
        };
        Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: kind.into(),
                actor: actor.into(),
                subject,
                body: json!({"sha256": sha, "table": table}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }
}
