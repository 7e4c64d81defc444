//! `/api/v1/reports`: tips from the web and the desk's view of dispatch.
//!
//! Staff and integrations submit reports here; they are stored with source `web` and the
//! dispatcher picks them up from their `report.created` event, exactly as it dispatches reports
//! from phones. Staff can also act by hand: send a chosen device (the offer goes out from here,
//! the dispatcher arms its deadline from the `assignment.offered` event), ask the dispatcher for
//! the nearest again, reassign, or cancel. Every such change is stored with the caller's name,
//! lands in the report's timeline and in the ledger (through the store).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiandu_schemas::topic::inbox;
use jiandu_schemas::{InboxKind, Notice};
use jiandu_store::{Assignment, AssignmentState, NewOffer, NewReport, ReportSource, ReportStatus, Role, now_ms};
use rumqttc::QoS;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{ApiError, Caller, Page};
use crate::AppState;

/// Roles that may read reports.
const READERS: &[Role] = &[Role::Dispatcher, Role::Leader, Role::Admin, Role::Auditor];
/// Roles that may submit reports and dispatch by hand.
const DISPATCHERS: &[Role] = &[Role::Dispatcher, Role::Admin];
/// Seconds a hand-made offer waits for an answer unless the request says otherwise.
const DEFAULT_RESPOND_WITHIN_S: i64 = 60;

/// The report routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/reports", get(list).post(create))
        .route("/reports/{id}", get(detail))
        .route("/reports/{id}/dispatch", post(dispatch))
        .route("/reports/{id}/cancel", post(cancel))
        .route("/reports/{id}/reassign", post(reassign))
}

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
    Ok(json!({"report": report, "assignments": assignments, "timeline": timeline}))
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
    obj.entry("id").or_insert_with(|| json!(ulid_like()));
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
        lat: r.lat,
        lon: r.lon,
        ts: r.ts,
        plate: r.plate,
        needs,
    };
    let (report, created) = s.store.insert_report(new).await?;
    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((code, Json(json!({"report": report}))).into_response())
}

/// A fresh report id from the time and randomness, valid wherever ids go (topics, payloads).
fn ulid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    format!("web-{:013x}-{:016x}", now_ms(), h.finish())
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

/// Reads an optional JSON body (empty means defaults), naming an unknown or missing field.
fn parse_body<T: Default + DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        let named = msg.starts_with("unknown field") || msg.starts_with("missing field");
        let field = if named { msg.split('`').nth(1) } else { None }.unwrap_or("body").to_owned();
        ApiError::invalid(field, msg)
    })
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
    let b: DispatchBody = parse_body(&body)?;
    if b.assignment.is_some() {
        return Err(ApiError::invalid("assignment", "only for reassign"));
    }
    match b.device {
        Some(device) => {
            let a = offer_to(&s, &caller, &id, &device, b.respond_within_s).await?;
            Ok((StatusCode::CREATED, Json(json!({"assignment": a, "view": report_view(&s, &id).await?})))
                .into_response())
        }
        None => {
            let report = s.store.redispatch(&id, caller.name()).await?;
            info!(report = %id, by = caller.name(), "nearest inspector requested");
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
    let b: DispatchBody = parse_body(&body)?;
    let (_, withdrawn) = s.store.cancel_report(&id, caller.name(), b.note.as_deref()).await?;
    for a in &withdrawn {
        tell_withdrawn(&s, a, "the report was cancelled").await;
    }
    info!(report = %id, by = caller.name(), withdrawn = withdrawn.len(), "report cancelled");
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
    let b: DispatchBody = parse_body(&body)?;
    let report = s.store.report(&id).await?;
    if report.status.is_final() {
        return Err(ApiError::conflict(format!("report '{id}' is {}", report.status.as_str())));
    }
    let open: Vec<Assignment> =
        s.store.report_assignments(&id).await?.into_iter().filter(|a| a.status.is_open()).collect();
    let targets: Vec<&Assignment> = match &b.assignment {
        Some(aid) => vec![open.iter().find(|a| &a.id == aid).ok_or_else(|| {
            ApiError::invalid("assignment", format!("'{aid}' is not an open assignment of report '{id}'"))
        })?],
        None => open.iter().collect(),
    };
    let note = b.note.clone().unwrap_or_else(|| "reassigned".to_owned());
    for a in targets {
        let t = s.store.transition(&a.id, None, AssignmentState::Cancelled, caller.name(), Some(&note)).await?;
        tell_withdrawn(&s, &t.assignment, "it was reassigned").await;
    }
    match b.device {
        Some(device) => {
            let a = offer_to(&s, &caller, &id, &device, b.respond_within_s).await?;
            Ok((StatusCode::CREATED, Json(json!({"assignment": a, "view": report_view(&s, &id).await?})))
                .into_response())
        }
        None => {
            let report = s.store.redispatch(&id, caller.name()).await?;
            Ok((StatusCode::ACCEPTED, Json(json!({"report": report}))).into_response())
        }
    }
}

/// Records a hand-made offer and sends it to the phone.
async fn offer_to(
    s: &AppState,
    caller: &Caller,
    report_id: &str,
    device: &str,
    respond_within_s: Option<i64>,
) -> Result<Assignment, ApiError> {
    let within = respond_within_s.unwrap_or(DEFAULT_RESPOND_WITHIN_S);
    if !(1..=86_400).contains(&within) {
        return Err(ApiError::invalid("respond_within_s", format!("must be 1..=86400 seconds, got {within}")));
    }
    if s.store.device(device).await?.is_none_or(|d| d.revoked_at.is_some()) {
        return Err(ApiError::invalid("device", format!("no active device '{device}'")));
    }
    let report = s.store.report(report_id).await?;
    let position = s.store.live_position(device).await?.and_then(|p| p.position);
    let Some(pos) = position else {
        return Err(ApiError::invalid("device", format!("no position is known for device '{device}'")));
    };
    let distance_m = haversine_m(report.lat, report.lon, pos.lat, pos.lon);
    let (a, report) = s
        .store
        .offer(NewOffer {
            report_id: report_id.to_owned(),
            device_id: device.to_owned(),
            distance_m,
            respond_by: now_ms() + within * 1000,
            actor: caller.name().to_owned(),
        })
        .await?;
    let offer = jiandu_dispatcher::offer_payload(&report, &a);
    match serde_json::to_vec(&offer) {
        Ok(bytes) => {
            if let Err(e) = s.mqtt.publish(inbox(device, InboxKind::Assignment), QoS::AtLeastOnce, false, bytes).await {
                warn!(device, error = %e, "cannot queue the offer to the phone");
            }
        }
        Err(e) => warn!(error = %e, "cannot encode an offer"),
    }
    info!(report = %report_id, device, by = caller.name(), "offered by hand");
    Ok(a)
}

/// Tells a phone that an assignment it held was withdrawn.
async fn tell_withdrawn(s: &AppState, a: &Assignment, why: &str) {
    let notice = Notice { ts: now_ms(), text: format!("assignment {} withdrawn: {why}", a.id) };
    if let Ok(bytes) = serde_json::to_vec(&notice)
        && let Err(e) = s.mqtt.publish(inbox(&a.device_id, InboxKind::Notice), QoS::AtLeastOnce, false, bytes).await
    {
        warn!(device = %a.device_id, error = %e, "cannot queue a notice to the phone");
    }
}

/// Great-circle distance in metres (haversine on the mean Earth sphere).
fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let a = ((p2 - p1) / 2.0).sin().powi(2) + p1.cos() * p2.cos() * ((lon2 - lon1).to_radians() / 2.0).sin().powi(2);
    2.0 * 6_371_008.8 * a.sqrt().min(1.0).asin()
}
