//! `/api/v1/cases`: the disciplinary case workflow for staff and leaders (issue 10).
//!
//! Dispatchers and admins open cases and ask to move them on; leaders approve and grant
//! extensions (per the stage template the case runs under, see `oversight::cases`). Every change
//! goes through [`Workflow`], which checks roles and computes working-day deadlines, and lands in
//! the case's timeline, the ledger and `jd/v1/events/case`. Leaders also get the overview per
//! unit and stage, the approvals inbox, the overdue list and the negative records.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiandu_oversight::cases::{Day, OpenCase, WorkCalendar, Workflow};
use jiandu_store::{Case, CaseOrigin, CaseStatus, Role, now_ms};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Caller, Page, json_body, json_body_or_default, non_blank};
use crate::AppState;

/// Roles that may read cases.
const READERS: &[Role] = &[Role::Dispatcher, Role::Leader, Role::Admin, Role::Auditor];

/// The case routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/cases", get(list).post(create))
        .route("/cases/overview", get(overview))
        .route("/cases/approvals", get(approvals_inbox))
        .route("/cases/{id}", get(detail))
        .route("/cases/{id}/advance", post(advance))
        .route("/cases/{id}/approve", post(approve))
        .route("/cases/{id}/extend", post(extend))
        .route("/negative-records", get(negative_records))
}

/// The caller as a user with a role; integrations may read but not work cases.
fn user_role(caller: &Caller) -> Result<Role, ApiError> {
    caller.role().ok_or_else(|| ApiError::forbidden("integrations may not change cases"))
}

/// Body of `POST /api/v1/cases`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    title: String,
    origin: Option<OriginBody>,
    #[serde(default)]
    parties: Vec<String>,
    #[serde(default)]
    evidence: Vec<String>,
    handler: String,
    unit: String,
    unit_head: Option<String>,
}

/// Where a case came from, in a request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginBody {
    kind: String,
    id: Option<String>,
}

/// Body of `advance` and `approve`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepBody {
    /// The stage the change is aimed at; default the current one (a stale page's click on a
    /// stage that has moved on is refused).
    stage_index: Option<i64>,
    note: Option<String>,
}

/// Body of `extend`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    stage_index: Option<i64>,
    days: Option<u32>,
    reason: String,
}

async fn workflow(s: &AppState) -> Result<Workflow, ApiError> {
    Workflow::load(&s.store).await.map_err(ApiError::from)
}

/// The countdown in working days on the official calendar: the working days after today (UTC+8)
/// up to and including the deadline's day, so a fresh 15-working-day stage shows 15 and the last
/// day 0; once past the deadline, minus the working days since. `None` when the calendar lacks a
/// year in between.
fn working_days_left(cal: &WorkCalendar, deadline_at: i64, now: i64) -> Option<i64> {
    let (today, last) = (Day::of_ms(now), Day::of_ms(deadline_at));
    let (from, to, sign) = if now > deadline_at { (last, today, -1) } else { (today, last, 1) };
    if to.0 - from.0 > 3660 {
        return None;
    }
    let mut n = 0;
    for d in from.0 + 1..=to.0 {
        n += i64::from(cal.is_working_day(Day(d)).ok()?);
    }
    Some(sign * n)
}

/// A case with its stage name, deadline countdown and (for the detail) timeline.
async fn case_view(s: &AppState, cal: &WorkCalendar, case: &Case, full: bool) -> Result<Value, ApiError> {
    let now = now_ms();
    let stages = Workflow::case_stages(case).map_err(ApiError::from)?;
    let stage = stages.get(case.stage_index as usize);
    let mut v = json!({
        "id": case.id, "title": case.title, "status": case.status,
        "origin": {"kind": case.origin.as_str(), "id": case.origin_id},
        "parties": case.parties, "evidence": case.evidence,
        "handler": case.handler, "unit": case.unit, "unit_head": case.unit_head,
        "stage": {
            "index": case.stage_index, "key": case.stage, "name": stage.map(|s| s.name.clone()),
            "started_at": case.stage_started_at, "approvals_required": stage.map(|s| s.approvals),
            "submitted_by": case.submitted_by, "submitted_at": case.submitted_at,
        },
        "deadline_at": case.deadline_at,
        "remaining_ms": if case.status == CaseStatus::Open { Some(case.deadline_at - now) } else { None },
        "remaining_working_days": if case.status == CaseStatus::Open { working_days_left(cal, case.deadline_at, now) } else { None },
        "overdue": case.overdue_at.is_some() || (case.status == CaseStatus::Open && now > case.deadline_at),
        "overdue_at": case.overdue_at, "extensions": case.extensions,
        "created_by": case.created_by, "created_at": case.created_at, "updated_at": case.updated_at,
    });
    if full {
        v["stages"] = json!(
            stages
                .iter()
                .map(|s| json!({
                    "key": s.key, "name": s.name, "limit_days": s.limit_days, "day_kind": s.day_kind,
                    "approvals": s.approvals, "max_extensions": s.max_extensions,
                }))
                .collect::<Vec<_>>()
        );
        v["timeline"] = json!(s.store.case_timeline(&case.id).await?);
        v["approvals"] = json!(s.store.case_approvals(&case.id).await?);
        v["timers"] = json!(s.store.case_timers(&case.id).await?);
    }
    Ok(v)
}

/// `POST /api/v1/cases` `{title, origin:{kind,id}?, parties?, evidence?, handler, unit, unit_head?}`.
async fn create(caller: Caller, State(s): State<AppState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let role = user_role(&caller)?;
    let b: CreateBody = json_body(&body)?;
    let (origin, origin_id) = match b.origin {
        None => (CaseOrigin::Manual, None),
        Some(o) => {
            let origin = CaseOrigin::parse(&o.kind).ok_or_else(|| {
                ApiError::invalid("origin.kind", format!("one of report, lookup, evidence, manual; got {:?}", o.kind))
            })?;
            (origin, o.id)
        }
    };
    let open = OpenCase {
        title: non_blank("title", b.title)?,
        origin,
        origin_id,
        parties: b.parties,
        evidence: b.evidence,
        handler: non_blank("handler", b.handler)?,
        unit: non_blank("unit", b.unit)?,
        unit_head: b.unit_head,
    };
    let wf = workflow(&s).await?;
    let case = wf.open(&s.store, open, caller.name(), role, now_ms()).await.map_err(ApiError::from)?;
    Ok((StatusCode::CREATED, Json(case_view(&s, &wf.calendar, &case, true).await?)).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    unit: Option<String>,
    overdue: Option<bool>,
    limit: Option<i64>,
    after: Option<String>,
}

/// `GET /api/v1/cases?unit=&overdue=true&limit=&after=`: newest first.
async fn list(caller: Caller, State(s): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, false)?;
    let page = Page { limit: q.limit, after: q.after };
    let cases = s
        .store
        .cases(
            q.unit.as_deref().filter(|u| !u.is_empty()),
            q.overdue.unwrap_or(false),
            page.limit(),
            page.after.as_deref(),
        )
        .await?;
    let wf = workflow(&s).await?;
    let mut items = Vec::with_capacity(cases.len());
    for c in &cases {
        items.push(case_view(&s, &wf.calendar, c, false).await?);
    }
    let next = (cases.len() as i64 == page.limit()).then(|| cases.last().map(|c| c.id.clone())).flatten();
    Ok(Json(json!({"items": items, "next": next})))
}

/// `GET /api/v1/cases/{id}`: the case, its stages, timeline, approvals and timers.
async fn detail(caller: Caller, State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, false)?;
    let case = s.store.case(&id).await?;
    let wf = workflow(&s).await?;
    Ok(Json(case_view(&s, &wf.calendar, &case, true).await?))
}

/// `POST /api/v1/cases/{id}/advance` `{stage_index?, note?}`: ask to move on.
async fn advance(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let role = user_role(&caller)?;
    let b: StepBody = json_body_or_default(&body)?;
    let case = s.store.case(&id).await?;
    let index = b.stage_index.unwrap_or(case.stage_index);
    let note = b.note;
    let wf = workflow(&s).await?;
    let case = wf
        .advance(&s.store, &id, index, caller.name(), role, note.as_deref(), now_ms())
        .await
        .map_err(ApiError::from)?;
    Ok(Json(case_view(&s, &wf.calendar, &case, true).await?))
}

/// `POST /api/v1/cases/{id}/approve` `{stage_index?, note?}`: approve moving on.
async fn approve(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let role = user_role(&caller)?;
    let b: StepBody = json_body_or_default(&body)?;
    let case = s.store.case(&id).await?;
    let index = b.stage_index.unwrap_or(case.stage_index);
    let note = b.note;
    let wf = workflow(&s).await?;
    let a = wf
        .approve(&s.store, &id, index, caller.name(), role, note.as_deref(), now_ms())
        .await
        .map_err(ApiError::from)?;
    let mut v = case_view(&s, &wf.calendar, &a.case, true).await?;
    v["approval"] = json!({"approvals": a.approvals, "moved": a.moved});
    Ok(Json(v))
}

/// `POST /api/v1/cases/{id}/extend` `{stage_index?, days?, reason}`: extend the deadline.
async fn extend(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let role = user_role(&caller)?;
    let b: ExtendBody = json_body(&body)?;
    let case = s.store.case(&id).await?;
    let index = b.stage_index.unwrap_or(case.stage_index);
    let reason = non_blank("reason", b.reason)?;
    let days = b.days;
    let wf = workflow(&s).await?;
    let case =
        wf.extend(&s.store, &id, index, days, &reason, caller.name(), role, now_ms()).await.map_err(ApiError::from)?;
    Ok(Json(case_view(&s, &wf.calendar, &case, true).await?))
}

/// `GET /api/v1/cases/overview`: open and overdue cases per unit and stage (leaders' view).
async fn overview(caller: Caller, State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, false)?;
    Ok(Json(json!({"items": s.store.case_overview().await?})))
}

/// `GET /api/v1/cases/approvals`: cases waiting for an approval the caller's role may give.
async fn approvals_inbox(caller: Caller, State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, false)?;
    let role = user_role(&caller)?;
    let wf = workflow(&s).await?;
    let mut items = Vec::new();
    for case in s.store.cases_awaiting_approval(500).await? {
        let stages = Workflow::case_stages(&case).map_err(ApiError::from)?;
        let may = stages.get(case.stage_index as usize).is_some_and(|st| st.approve.contains(&role));
        let already = s
            .store
            .case_approvals(&case.id)
            .await?
            .iter()
            .any(|a| a.stage_index == case.stage_index && a.approver == caller.name());
        if may && !already {
            items.push(case_view(&s, &wf.calendar, &case, false).await?);
        }
    }
    Ok(Json(json!({"items": items})))
}

#[derive(Debug, Deserialize)]
struct RecordsQuery {
    unit: Option<String>,
    handler: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/v1/negative-records?unit=|handler=`: negative records, newest first.
async fn negative_records(
    caller: Caller,
    State(s): State<AppState>,
    Query(q): Query<RecordsQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, false)?;
    let (kind, subject) = match (q.unit.filter(|u| !u.is_empty()), q.handler.filter(|h| !h.is_empty())) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("handler", "ask for a unit or a handler, not both")),
        (Some(u), None) => (Some("unit"), Some(u)),
        (None, Some(h)) => (Some("handler"), Some(h)),
        (None, None) => (None, None),
    };
    let limit = Page { limit: q.limit, after: None }.limit();
    Ok(Json(json!({"items": s.store.negative_records(kind, subject.as_deref(), limit).await?})))
}
