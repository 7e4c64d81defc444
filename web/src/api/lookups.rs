//! `/api/v1/lookup/{vehicle|person|department}` and `/api/v1/lookups`: registry look-ups from
//! the office and their audit trail.
//!
//! A REST look-up goes the same audited way as a phone's: the same matching
//! (`oversight::lookup_at`, here from the database so `at=` can ask about any past moment) and
//! the same audit table, each look-up a batch of one committed to the ledger before the answer
//! is returned. Office staff see the whole record with identity numbers masked; only an admin
//! asking with `reveal=true` sees them in full, and that is recorded too. Auditors list every
//! look-up, phones' and the office's alike.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use jiandu_schemas::LookupKind;
use jiandu_schemas::payload::MAX_QUERY_CHARS;
use jiandu_store::{NewLookupAudit, Role, now_ms};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Caller, Page};
use crate::AppState;

/// Roles that may look up.
const LOOKERS: &[Role] = &[Role::Dispatcher, Role::Leader, Role::Admin];

/// The look-up routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/lookup/{kind}", get(lookup)).route("/lookups", get(audit_list))
}

/// `?q=&at=&reveal=` of a look-up.
#[derive(Debug, Deserialize)]
struct LookupQuery {
    q: Option<String>,
    at: Option<String>,
    reveal: Option<bool>,
}

/// `GET /api/v1/lookup/{kind}?q=…[&at=…]`: one audited look-up.
async fn lookup(
    caller: Caller,
    State(s): State<AppState>,
    Path(kind): Path<String>,
    Query(query): Query<LookupQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(LOOKERS, true)?;
    let kind = match kind.as_str() {
        "vehicle" => LookupKind::Vehicle,
        "person" => LookupKind::Person,
        "department" => LookupKind::Department,
        other => return Err(ApiError::not_found("look-up kind (vehicle, person, department)", other)),
    };
    let q = query.q.as_deref().map(str::trim).unwrap_or_default();
    if q.is_empty() {
        return Err(ApiError::invalid("q", "required: the plate, name, code or department to look up"));
    }
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::invalid("q", format!("at most {MAX_QUERY_CHARS} characters")));
    }
    let reveal = query.reveal.unwrap_or(false);
    if reveal && caller.role() != Some(Role::Admin) {
        return Err(ApiError::forbidden("only an admin may see identity numbers in full"));
    }
    let now = now_ms();
    let at = match query.at.as_deref().filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => Some(jiandu_oversight::index::parse_as_of(a)?),
    };
    let answer = jiandu_oversight::lookup_at(&s.store, kind, q, at.unwrap_or(now)).await.map_err(|e| match e {
        jiandu_oversight::OversightError::Store(e) => ApiError::from(e),
        other => ApiError::internal(other),
    })?;
    let row = NewLookupAudit {
        ts: now,
        channel: "rest".into(),
        actor: caller.name().to_owned(),
        device: None,
        lat_e6: None,
        lon_e6: None,
        kind: kind.as_str().into(),
        q: q.to_owned(),
        at,
        outcome: if reveal { format!("{}+revealed", answer.outcome()) } else { answer.outcome().to_owned() },
        result: answer.found.as_ref().map(|h| h.key()),
        candidates: answer.candidates.len() as i64,
    };
    let batch = s.store.record_lookups(caller.name(), &[row]).await?;
    let mut body = json!({
        "found": answer.found.is_some(),
        "at": at.unwrap_or(now),
        "audit": {"id": batch.first_id, "ledger_seq": batch.ledger_seq},
    });
    if let Some(h) = &answer.found {
        body["result"] = h.office_view(reveal);
    }
    if !answer.candidates.is_empty() {
        body["candidates"] = answer.candidates.iter().map(|h| h.office_view(reveal)).collect();
    }
    Ok(Json(body))
}

/// `?device=&limit=&after=` of the audit list (not a flattened [`Page`]: flattening makes
/// serde read `limit` as a string).
#[derive(Debug, Deserialize)]
struct AuditQuery {
    device: Option<String>,
    limit: Option<i64>,
    after: Option<String>,
}

/// `GET /api/v1/lookups`: every audited look-up, newest first (auditors only).
async fn audit_list(
    caller: Caller,
    State(s): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Auditor], false)?;
    let page = Page { limit: q.limit, after: q.after };
    let before = match page.after.as_deref() {
        None | Some("") => None,
        Some(a) => Some(a.parse::<i64>().map_err(|_| ApiError::invalid("after", "must be an audit id (integer)"))?),
    };
    let limit = page.limit();
    let items = s.store.lookup_audits(limit, before, q.device.as_deref().filter(|d| !d.is_empty())).await?;
    let next = (items.len() as i64 == limit).then(|| items.last().map(|r| r.id.to_string())).flatten();
    Ok(Json(json!({"items": items, "next": next})))
}
