//! Disciplinary cases (issue 10): the workflow from clue handling to execution and appeal, with
//! approvals, working-day deadlines, reminders, overdue alarms and negative records.
//!
//! How it fits: the rules are data — [`stages`] (the stage template) and [`calendar`] (the
//! official working-day calendar per year), both kept in the database so every process (the web
//! role opening and approving cases, the oversight role's scheduler) uses the same version. A
//! [`Workflow`] turns a request into deadlines and timers and checks who may do it; `store`
//! applies the change atomically with its `jd/v1/events/case` event and ledger entry. The
//! scheduler ([`run`]) fires the timers from the database, each exactly once (a row state
//! transition is the guard), so reminders and alarms survive restarts and never repeat.

pub mod calendar;
pub mod stages;

use std::path::PathBuf;
use std::time::Duration;

use jiandu_store::{
    Approval, Case, CaseOrigin, CaseTimer, NewCase, NewCaseTimer, NewNegativeRecord, Role, StageStart, Store,
    StoreError, TimerEffects, TimerKind, now_ms,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use calendar::{CalendarYear, Day, WorkCalendar};
pub use stages::{DEFAULT_STAGES, DayKind, Stage, Template, parse_template};

use crate::OversightError;

/// Settings of the case workflow (`[cases]` in `jiandu.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct CaseConfig {
    /// How often the scheduler looks for due timers.
    pub tick: Duration,
    /// Shifts the scheduler's clock (ms); for drills and tests of deadlines without waiting.
    pub clock_offset_ms: i64,
    /// A stage template to load at start (default `{data_dir}/stages.toml` when it exists).
    pub stages_file: Option<PathBuf>,
}

impl Default for CaseConfig {
    fn default() -> Self {
        CaseConfig { tick: Duration::from_secs(5), clock_offset_ms: 0, stages_file: None }
    }
}

/// A case to open, as asked by a person.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenCase {
    /// Title.
    pub title: String,
    /// Where it came from.
    pub origin: CaseOrigin,
    /// The origin's id (absent for `manual`).
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
}

/// The rules in force: the stage template for new cases, the calendar and reminder points.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// Stages for new cases.
    pub stages: Vec<Stage>,
    /// The working-day calendar.
    pub calendar: WorkCalendar,
    /// Reminder points, working days before a deadline.
    pub remind_working_days: Vec<u32>,
}

fn invalid(field: &str, reason: impl Into<String>) -> OversightError {
    OversightError::Invalid { field: field.to_owned(), reason: reason.into() }
}

/// The leaders who are told of escalations (case alarms, red index units): enabled users with
/// the leader role.
pub async fn active_leaders(store: &Store) -> Result<Vec<String>, OversightError> {
    Ok(store
        .list_users()
        .await?
        .into_iter()
        .filter(|u| u.role == Role::Leader && u.disabled_at.is_none())
        .map(|u| u.name)
        .collect())
}

fn forbidden(who: &str, role: Role, what: &str, allowed: &[Role]) -> OversightError {
    let allowed: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
    OversightError::Forbidden { reason: format!("{who} ({role}) may not {what}; needs one of: {}", allowed.join(", ")) }
}

impl Workflow {
    /// The rules as stored (the newest template and calendars), over the embedded defaults.
    pub async fn load(store: &Store) -> Result<Workflow, OversightError> {
        let template = match store.stage_template().await? {
            Some(text) => parse_template(&text)?,
            None => parse_template(DEFAULT_STAGES)?,
        };
        let mut calendar = WorkCalendar::embedded()?;
        for (_, text) in store.calendars().await? {
            calendar.insert(CalendarYear::parse(&text)?);
        }
        Ok(Workflow { stages: template.stage, calendar, remind_working_days: template.remind_working_days })
    }

    /// The deadline day of a limit of `days` counted from `from` (the day after it is day 1).
    pub fn deadline_day(&self, from: Day, days: u32, kind: DayKind) -> Result<Day, OversightError> {
        match kind {
            DayKind::Working => self.calendar.add_working_days(from, days),
            DayKind::Calendar => Ok(from.plus(days as i64)),
        }
    }

    /// A stage's deadline and timers when it ends on `deadline`: reminders at the start of the
    /// working days `remind_working_days` before it (those still ahead of `now`) and the alarm
    /// just after it.
    pub fn stage_start(&self, index: usize, key: &str, deadline: Day, now: i64) -> Result<StageStart, OversightError> {
        let deadline_at = deadline.end_ms();
        let mut timers = Vec::new();
        for &k in &self.remind_working_days {
            let due_at = self.calendar.working_days_before(deadline, k)?.start_ms();
            if due_at > now {
                timers.push(NewCaseTimer { kind: TimerKind::Reminder, working_days: k as i64, due_at });
            }
        }
        timers.push(NewCaseTimer { kind: TimerKind::Overdue, working_days: 0, due_at: deadline_at + 1 });
        Ok(StageStart { index: index as i64, key: key.to_owned(), deadline_at, timers })
    }

    fn start_of(&self, stages: &[Stage], index: usize, now: i64) -> Result<Option<StageStart>, OversightError> {
        let Some(stage) = stages.get(index) else { return Ok(None) };
        let deadline = self.deadline_day(Day::of_ms(now), stage.limit_days, stage.day_kind)?;
        self.stage_start(index, &stage.key, deadline, now).map(Some)
    }

    /// Opens a case in the first stage; dispatchers and admins may.
    pub async fn open(
        &self,
        store: &Store,
        c: OpenCase,
        actor: &str,
        role: Role,
        now: i64,
    ) -> Result<Case, OversightError> {
        let allowed = [Role::Dispatcher, Role::Admin];
        if !allowed.contains(&role) {
            return Err(forbidden(actor, role, "open a case", &allowed));
        }
        if c.title.trim().is_empty() {
            return Err(invalid("title", "must not be empty"));
        }
        if c.handler.trim().is_empty() {
            return Err(invalid("handler", "must name the responsible handler"));
        }
        if c.unit.trim().is_empty() {
            return Err(invalid("unit", "must name the responsible unit"));
        }
        match (c.origin, &c.origin_id) {
            (CaseOrigin::Manual, _) => {}
            (_, None) => return Err(invalid("origin.id", "a report, look-up or evidence origin needs its id")),
            (CaseOrigin::Report, Some(id)) => {
                store.report(id).await.map_err(|_| invalid("origin.id", format!("no report '{id}'")))?;
            }
            (CaseOrigin::Evidence, Some(id)) => {
                store.evidence_get(id).await.map_err(|_| invalid("origin.id", format!("no evidence '{id}'")))?;
            }
            (CaseOrigin::Lookup, Some(id)) if id.parse::<i64>().is_err() => {
                return Err(invalid("origin.id", format!("a look-up audit id is a number, got {id:?}")));
            }
            (CaseOrigin::Lookup, Some(_)) => {}
        }
        for (i, evid) in c.evidence.iter().enumerate() {
            if store.evidence_find(evid).await?.is_none() {
                return Err(OversightError::Invalid {
                    field: format!("evidence[{i}]"),
                    reason: format!("no evidence '{evid}'"),
                });
            }
        }
        let first = self.start_of(&self.stages, 0, now)?.ok_or_else(|| invalid("stages", "the template is empty"))?;
        let template = serde_json::to_value(&self.stages).map_err(|e| invalid("stages", e.to_string()))?;
        let case = store
            .insert_case(NewCase {
                title: c.title,
                origin: c.origin,
                origin_id: c.origin_id,
                parties: c.parties,
                evidence: c.evidence,
                handler: c.handler,
                unit: c.unit,
                unit_head: c.unit_head,
                template,
                first,
                actor: actor.to_owned(),
                now,
            })
            .await?;
        Ok(case)
    }

    /// The stages a case runs under (the template it was opened with).
    pub fn case_stages(case: &Case) -> Result<Vec<Stage>, OversightError> {
        serde_json::from_value(case.template.clone())
            .map_err(|e| OversightError::Store(StoreError::Corrupt { what: "case template", reason: e.to_string() }))
    }

    fn current<'a>(case: &Case, stages: &'a [Stage]) -> Result<&'a Stage, OversightError> {
        stages.get(case.stage_index as usize).ok_or_else(|| {
            OversightError::Store(StoreError::Corrupt { what: "case stage", reason: case.stage_index.to_string() })
        })
    }

    /// Asks to move a case on from its current stage (`stage_index` must be current); a stage
    /// needing no approval moves at once.
    #[allow(clippy::too_many_arguments)]
    pub async fn advance(
        &self,
        store: &Store,
        id: &str,
        stage_index: i64,
        actor: &str,
        role: Role,
        note: Option<&str>,
        now: i64,
    ) -> Result<Case, OversightError> {
        let case = store.case(id).await?;
        let stages = Workflow::case_stages(&case)?;
        let stage = Workflow::current(&case, &stages)?;
        if !stage.act.contains(&role) {
            return Err(forbidden(actor, role, &format!("work stage {}", stage.key), &stage.act));
        }
        let next = self.start_of(&stages, stage_index as usize + 1, now)?;
        Ok(store.case_submit(id, stage_index, actor, note, stage.approvals as i64, next, now).await?)
    }

    /// Approves moving a case on from its current stage; the case moves once the stage's
    /// number of distinct approvers is reached.
    #[allow(clippy::too_many_arguments)]
    pub async fn approve(
        &self,
        store: &Store,
        id: &str,
        stage_index: i64,
        approver: &str,
        role: Role,
        note: Option<&str>,
        now: i64,
    ) -> Result<Approval, OversightError> {
        let case = store.case(id).await?;
        let stages = Workflow::case_stages(&case)?;
        let stage = Workflow::current(&case, &stages)?;
        if !stage.approve.contains(&role) {
            return Err(forbidden(approver, role, &format!("approve stage {}", stage.key), &stage.approve));
        }
        let next = self.start_of(&stages, stage_index as usize + 1, now)?;
        let required = stage.approvals.max(1) as i64;
        Ok(store.case_approve(id, stage_index, approver, note, required, next, now).await?)
    }

    /// Grants an extension of `days` (at most the stage's `extension_days`) before the deadline.
    #[allow(clippy::too_many_arguments)]
    pub async fn extend(
        &self,
        store: &Store,
        id: &str,
        stage_index: i64,
        days: Option<u32>,
        reason: &str,
        actor: &str,
        role: Role,
        now: i64,
    ) -> Result<Case, OversightError> {
        let case = store.case(id).await?;
        let stages = Workflow::case_stages(&case)?;
        let stage = Workflow::current(&case, &stages)?;
        if !stage.extension_approvers.contains(&role) {
            return Err(forbidden(actor, role, &format!("extend stage {}", stage.key), &stage.extension_approvers));
        }
        let days = days.unwrap_or(stage.extension_days);
        if days == 0 || days > stage.extension_days {
            return Err(invalid(
                "days",
                format!("stage {} allows extensions of 1..={} days, got {days}", stage.key, stage.extension_days),
            ));
        }
        let deadline = self.deadline_day(Day::of_ms(case.deadline_at), days, stage.day_kind)?;
        let new = self.stage_start(case.stage_index as usize, &stage.key, deadline, now)?;
        if new.index != stage_index {
            return Err(OversightError::Store(StoreError::Conflict {
                reason: format!("case '{id}' is in stage {}, not {stage_index}", case.stage_index),
            }));
        }
        Ok(store.case_extend(id, new, actor, reason, stage.max_extensions as i64, now).await?)
    }
}

/// Loads a year's calendar file into the database after checking it; returns the year.
pub async fn load_calendar(store: &Store, text: &str, actor: &str) -> Result<CalendarYear, OversightError> {
    let year = CalendarYear::parse(text)?;
    store.calendar_load(year.year, text, actor).await?;
    info!(year = year.year, provisional = year.provisional, "calendar loaded");
    Ok(year)
}

/// Loads a stage template into the database after checking it, unless it is the one in force.
pub async fn load_stages(store: &Store, text: &str, actor: &str) -> Result<bool, OversightError> {
    parse_template(text)?;
    let current = store.stage_template().await?;
    if current.as_deref().unwrap_or(DEFAULT_STAGES) == text {
        return Ok(false);
    }
    store.stage_template_load(text, actor).await?;
    info!("stage template loaded");
    Ok(true)
}

/// What a firing timer does. A reminder tells the handler and the unit head. The overdue alarm
/// tells them too, is escalated to `leaders`, and writes a negative record (负面记录) against the
/// unit and one against the handler, both citing the missed stage.
pub fn timer_effects(timer: &CaseTimer, case: &Case, leaders: &[String]) -> TimerEffects {
    let mut to = vec![case.handler.clone()];
    to.extend(case.unit_head.clone());
    if timer.kind != TimerKind::Overdue {
        return TimerEffects { overdue: false, to, escalated_to: vec![], reason: None, negative_records: vec![] };
    }
    let negative_records = [("unit", &case.unit), ("handler", &case.handler)]
        .into_iter()
        .map(|(kind, subject)| NewNegativeRecord { subject_kind: kind.into(), subject: subject.clone() })
        .collect();
    TimerEffects {
        overdue: true,
        to,
        escalated_to: leaders.to_vec(),
        reason: Some(format!("deadline of stage {} missed", case.stage)),
        negative_records,
    }
}

/// Fires every timer due at `now` (each at most once, whoever else is firing); returns how many
/// this call fired.
pub async fn fire_due(store: &Store, now: i64) -> Result<usize, OversightError> {
    let due = store.due_case_timers(now, 500).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let leaders = active_leaders(store).await?;
    let mut fired = 0;
    for t in due {
        if store.fire_case_timer(t.id, now, |timer, case| timer_effects(timer, case, &leaders)).await?.is_some() {
            fired += 1;
        }
    }
    Ok(fired)
}

/// The case scheduler (part of the oversight role): loads `stages_file` if given, then fires
/// due reminders and overdue alarms from the database until `shutdown`.
pub async fn run(store: Store, config: CaseConfig, shutdown: CancellationToken) -> Result<(), OversightError> {
    if let Some(path) = &config.stages_file {
        let text = std::fs::read_to_string(path).map_err(|source| OversightError::Io { path: path.clone(), source })?;
        load_stages(&store, &text, "jiandu").await?;
    }
    info!(offset_ms = config.clock_offset_ms, "case scheduler started");
    loop {
        let now = now_ms() + config.clock_offset_ms;
        match fire_due(&store, now).await {
            Ok(0) => {}
            Ok(n) => info!(fired = n, "case timers fired"),
            Err(e) => warn!(error = %e, "case timers could not be fired; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(config.tick) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn case(unit_head: Option<&str>) -> Case {
        Case {
            id: "01CASE".into(),
            title: "公车私用".into(),
            origin: CaseOrigin::Manual,
            origin_id: None,
            parties: vec![],
            evidence: vec![],
            handler: "handler1".into(),
            unit: "D016".into(),
            unit_head: unit_head.map(str::to_owned),
            template: json!([]),
            stage_index: 0,
            stage: "clue_handling".into(),
            status: jiandu_store::CaseStatus::Open,
            stage_started_at: 0,
            deadline_at: 1_000,
            extensions: 0,
            submitted_by: None,
            submitted_at: None,
            overdue_at: None,
            created_by: "desk1".into(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn timer(kind: TimerKind, working_days: i64) -> CaseTimer {
        CaseTimer {
            id: 1,
            case_id: "01CASE".into(),
            stage_index: 0,
            kind,
            working_days,
            due_at: 1_000,
            state: jiandu_store::TimerState::Pending,
            fired_at: None,
        }
    }

    #[test]
    fn an_overdue_alarm_escalates_and_records_the_unit_and_the_handler() {
        let leaders = vec!["lead1".to_owned(), "lead2".to_owned()];
        let e = timer_effects(&timer(TimerKind::Overdue, 0), &case(Some("head1")), &leaders);
        assert!(e.overdue);
        assert_eq!(e.to, ["handler1", "head1"]);
        assert_eq!(e.escalated_to, leaders);
        assert_eq!(e.reason.as_deref(), Some("deadline of stage clue_handling missed"));
        let records: Vec<(&str, &str)> =
            e.negative_records.iter().map(|n| (n.subject_kind.as_str(), n.subject.as_str())).collect();
        assert_eq!(records, [("unit", "D016"), ("handler", "handler1")]);
    }

    #[test]
    fn a_reminder_tells_the_handler_and_unit_head_and_records_nothing() {
        let e = timer_effects(&timer(TimerKind::Reminder, 2), &case(Some("head1")), &["lead1".to_owned()]);
        assert!(!e.overdue);
        assert_eq!(e.to, ["handler1", "head1"]);
        assert!(e.escalated_to.is_empty() && e.negative_records.is_empty() && e.reason.is_none());
        // Without a unit head only the handler is told.
        let e = timer_effects(&timer(TimerKind::Reminder, 2), &case(None), &[]);
        assert_eq!(e.to, ["handler1"]);
    }
}
