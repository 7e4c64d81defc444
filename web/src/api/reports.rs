//! `/api/v1/reports`: tips from the web and the desk's view of dispatch.
//!
//! Staff and integrations submit reports here; they are stored with source `web` and the
//! dispatcher picks them up from their `report.created` event, exactly as it dispatches reports
//! from phones. Staff can also act by hand: send a chosen device, ask the dispatcher for the
//! nearest again, reassign, or cancel; the rules of each are the dispatcher's
//! (`jiandu_dispatcher::hand`), this module only routes. Every such change is stored with the
//! caller's name, lands in the report's timeline and in the ledger (through the store). A public
//! tip that named its place only in words has no point; the dispatcher escalates it and the desk
//! places it here (`…/location`), after which it is dispatched like any other.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiandu_dispatcher::{DispatchError, hand};
use jiandu_store::{NewReport, ReportSource, ReportStatus, Role, new_id, now_ms};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Caller, Page};
use crate::AppState;

/// Roles that may read reports.
const READERS: &[Role] = &[Role::Dispatcher, Role::Leader, Role::Admin, Role::Auditor];
/// Roles that may submit reports and dispatch by hand.
const DISPATCHERS: &[Role] = &[Role::Dispatcher, Role::Admin];

/// The report routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/reports", get(list).post(create))
        .route("/reports/{id}", get(detail))
        .route("/reports/{id}/dispatch", post(dispatch))
        .route("/reports/{id}/cancel", post(cancel))
        .route("/reports/{id}/reassign", post(reassign))
        .route("/reports/{id}/location", post(locate))
        .route("/reports/{id}/feedback", post(feedback))
        .route("/reports/{id}/contacts", get(contacts))
}

/// Roles that may write feedback to the reporters of a public tip.
const ANSWERERS: &[Role] = &[Role::Dispatcher, Role::Leader, Role::Admin];
/// Roles that may see a public reporter's contact (each view audited).
const CONTACT_READERS: &[Role] = &[Role::Leader, Role::Admin];
/// Longest feedback, in characters.
const MAX_FEEDBACK_CHARS: usize = 1000;

/// `?status=&limit=&after=` of the list (spelled out: serde cannot read numbers from a query
/// string through `#[serde(flatten)]`).
#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
    after: Option<String>,
}

/// `GET /api/v1/reports`: newest first, optionally by status.
async fn list(caller: Caller, State(s): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, true)?;
    let page = Page { limit: q.limit, after: q.after };
    let status = match q.status.as_deref().filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(ReportStatus::parse(v).ok_or_else(|| {
            let all: Vec<&str> = ReportStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::invalid("status", format!("unknown status {v:?}; one of {}", all.join(", ")))
        })?),
    };
    if let Some(after) = &page.after {
        s.store.report(after).await.map_err(|_| ApiError::invalid("after", format!("no report '{after}'")))?;
    }
    let items = s.store.reports(status, page.limit(), page.after.as_deref()).await?;
    let next = (items.len() as i64 == page.limit()).then(|| items.last().map(|r| r.id.clone())).flatten();
    Ok(Json(json!({"items": items, "next": next})))
}

/// `GET /api/v1/reports/{id}`: the report, its assignments and the timeline of every change.
async fn detail(caller: Caller, State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, true)?;
    Ok(Json(report_view(&s, &id).await?))
}

async fn report_view(s: &AppState, id: &str) -> Result<Value, ApiError> {
    let report = s.store.report(id).await?;
    let assignments = s.store.report_assignments(id).await?;
    let timeline = s.store.report_timeline(id).await?;
    let mut view = json!({"report": report, "assignments": assignments, "timeline": timeline});
    // A citizen's tip: where and how many, whether a contact is on file (never the contact
    // itself: that is `GET …/contacts`), and what the office told the reporters.
    if let Some(public) = s.store.public_report(id).await? {
        view["public"] = json!(public);
        view["feedback"] = json!(s.store.report_feedback(id).await?);
    }
    Ok(view)
}

/// `POST /api/v1/reports/{id}/feedback` `{text}`: the office's answer to the reporters of a
/// public tip (ledgered); they read it with their code and secret. 201 with the feedback.
async fn feedback(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(ANSWERERS, false)?;
    let m = super::json_object(&body)?;
    let text = super::opt_str(&m, "text")?.map(|t| t.trim().to_owned()).unwrap_or_default();
    if text.is_empty() {
        return Err(ApiError::invalid("text", "required: what the office tells the reporter"));
    }
    let n = text.chars().count();
    if n > MAX_FEEDBACK_CHARS {
        return Err(ApiError::invalid("text", format!("at most {MAX_FEEDBACK_CHARS} characters, got {n}")));
    }
    let fb = s.store.report_feedback_add(&id, &text, caller.name()).await?;
    Ok((StatusCode::CREATED, Json(json!({"feedback": fb}))).into_response())
}

/// `GET /api/v1/reports/{id}/contacts`: the public reporters' contacts, for leaders and admins.
/// Each call is a personal-data view, audited like a registry look-up (kind `tip-contact`,
/// committed to the ledger before the answer).
async fn contacts(caller: Caller, State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require(CONTACT_READERS, false)?;
    let Some(public) = s.store.public_tip_contacts(&id).await? else {
        return Err(ApiError::not_found("public tip for report", &id));
    };
    let on_file: Vec<&str> = public.tips.iter().filter(|t| t.contact.is_some()).map(|t| t.code.as_str()).collect();
    let row = jiandu_store::NewLookupAudit {
        ts: now_ms(),
        channel: "rest".into(),
        actor: caller.name().to_owned(),
        device: None,
        lat_e6: None,
        lon_e6: None,
        kind: "tip-contact".into(),
        q: id.clone(),
        at: None,
        outcome: if on_file.is_empty() { "not_found".into() } else { "revealed".into() },
        result: (!on_file.is_empty()).then(|| on_file.join(",")),
        candidates: on_file.len() as i64,
    };
    let batch = s.store.record_lookups(caller.name(), &[row]).await?;
    Ok(Json(json!({"public": public, "audit": {"id": batch.first_id, "ledger_seq": batch.ledger_seq}})))
}

/// `POST /api/v1/reports`: `{id?,kind,text,lat,lon,ts?,plate?,needs?}`, validated like a phone's
/// report; `id` defaults to a new ULID and `ts` to now. A repeated id returns the stored report
/// with 200 instead of 201.
async fn create(caller: Caller, State(s): State<AppState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    caller.require(DISPATCHERS, true)?;
    let mut v: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", format!("invalid JSON: {e}")))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    };
    let needs = match obj.remove("needs") {
        None | Some(Value::Null) => 1,
        Some(n) => match n.as_i64() {
            Some(n @ 1..=2) => n,
            _ => return Err(ApiError::invalid("needs", format!("must be 1 or 2, got {n}"))),
        },
    };
    obj.entry("id").or_insert_with(|| json!(new_id()));
    obj.entry("ts").or_insert_with(|| json!(now_ms()));
    let bytes = serde_json::to_vec(&v).map_err(ApiError::internal)?;
    let r = jiandu_schemas::parse_report(&bytes).map_err(|e| {
        let field = e.field.strip_prefix("report.").unwrap_or(&e.field).to_owned();
        ApiError::invalid(field, e.message)
    })?;
    let new = NewReport {
        id: r.id,
        source: ReportSource::Web,
        origin: caller.name().to_owned(),
        kind: r.kind,
        text: r.text,
        lat: Some(r.lat),
        lon: Some(r.lon),
        ts: r.ts,
        plate: r.plate,
        needs,
    };
    let (report, created) = s.store.insert_report(new).await?;
    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((code, Json(json!({"report": report}))).into_response())
}

/// Body of `…/location`: the point the desk found for a tip that named its place in words.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationBody {
    /// Latitude, WGS-84 degrees.
    lat: f64,
    /// Longitude, WGS-84 degrees.
    lon: f64,
}

/// `POST /api/v1/reports/{id}/location` `{lat, lon}`: places a report that has no point (a
/// public tip naming its place in words); ledgered with the caller, then the dispatcher offers
/// it to the nearest available inspector. 409 when the report has a point already or is
/// finished.
async fn locate(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    caller.require(DISPATCHERS, false)?;
    let b: LocationBody = super::json_body(&body)?;
    s.store.place_report(&id, b.lat, b.lon, caller.name()).await?;
    Ok(Json(report_view(&s, &id).await?))
}

/// Body of `…/dispatch` and `…/reassign`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DispatchBody {
    /// Device to send; absent means "the nearest available", chosen by the dispatcher.
    device: Option<String>,
    /// For `reassign`: the assignment to withdraw; absent means every open one.
    assignment: Option<String>,
    /// Seconds the device has to answer a hand-made offer (default 60).
    respond_within_s: Option<i64>,
    /// Why (kept in the timeline).
    note: Option<String>,
}

/// `POST /api/v1/reports/{id}/dispatch`: `{"device":…}` offers the report to that device now;
/// `{}` asks the dispatcher for the nearest available one (202).
async fn dispatch(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(DISPATCHERS, false)?;
    let b: DispatchBody = super::json_body_or_default(&body)?;
    if b.assignment.is_some() {
        return Err(ApiError::invalid("assignment", "only for reassign"));
    }
    send(&s, &caller, &id, b).await
}

/// Offers the report to the device the body names (201), or asks the dispatcher for the nearest
/// available one not tried yet (202).
async fn send(s: &AppState, caller: &Caller, id: &str, b: DispatchBody) -> Result<Response, ApiError> {
    match b.device {
        Some(device) => {
            let a = hand::offer(&s.store, id, &device, b.respond_within_s, caller.name()).await?;
            Ok((StatusCode::CREATED, Json(json!({"assignment": a, "view": report_view(s, id).await?}))).into_response())
        }
        None => {
            let report = hand::redispatch(&s.store, id, caller.name()).await?;
            Ok((StatusCode::ACCEPTED, Json(json!({"report": report}))).into_response())
        }
    }
}

/// `POST /api/v1/reports/{id}/cancel`: `{"note":…}`; withdraws every open assignment and tells
/// the phones.
async fn cancel(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    caller.require(DISPATCHERS, false)?;
    let b: DispatchBody = super::json_body_or_default(&body)?;
    hand::cancel(&s.store, &id, caller.name(), b.note.as_deref()).await?;
    Ok(Json(report_view(&s, &id).await?))
}

/// `POST /api/v1/reports/{id}/reassign`: withdraws `assignment` (or every open one), then offers
/// the report to `device`, or to the nearest available device not tried yet.
async fn reassign(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(DISPATCHERS, false)?;
    let b: DispatchBody = super::json_body_or_default(&body)?;
    let note = b.note.clone().unwrap_or_else(|| "reassigned".to_owned());
    hand::withdraw(&s.store, &id, b.assignment.as_deref(), caller.name(), &note).await?;
    send(&s, &caller, &id, b).await
}

impl From<DispatchError> for ApiError {
    fn from(e: DispatchError) -> ApiError {
        match e {
            DispatchError::Store(e) => ApiError::from(e),
            DispatchError::Invalid { field, reason } => ApiError::invalid(field, reason),
            DispatchError::Conflict { reason } => ApiError::conflict(reason),
            other => ApiError::internal(other),
        }
    }
}
