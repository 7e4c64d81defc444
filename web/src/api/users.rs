//! Administration from the web view: users (`GET/POST /api/v1/users`, and
//! `POST /api/v1/users/{name}/disable|enable|role`, admins), registering and revoking phones
//! (`POST /api/v1/devices`, `POST /api/v1/devices/{id}/revoke`, admins), integration accounts
//! (`GET /api/v1/integrations`, `POST /api/v1/integrations/{name}/disable`, admins), and the
//! evidence ledger for auditors (`GET /api/v1/ledger`). Every change names the admin in its
//! ledger entry.
//!
//! Everything here calls the same `Store` methods as `jiandu user add` and `jiandu device add`,
//! so a phone registered in the browser is indistinguishable from one added on the command line;
//! its token is in the answer once and stored only hashed.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiandu_store::{AccountKind, Role};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::{ApiError, Caller, json_body};
use crate::AppState;

/// The administration routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(list_users).post(add_user))
        .route("/users/{name}/disable", post(disable_user))
        .route("/users/{name}/enable", post(enable_user))
        .route("/users/{name}/role", post(set_role))
        .route("/integrations", get(list_integrations))
        .route("/integrations/{name}/disable", post(disable_integration))
        .route("/devices", post(add_device))
        .route("/devices/{id}/revoke", post(revoke_device))
        .route("/ledger", get(ledger))
}

async fn list_users(caller: Caller, State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin], false)?;
    Ok(Json(json!({"items": s.store.list_users().await?})))
}

/// Body of `POST /api/v1/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    role: String,
    password: Option<String>,
}

/// `POST /api/v1/users` `{name,role,password?}` → 201 `{user,username,password}`; the password
/// (generated when absent) is shown this once.
async fn add_user(caller: Caller, State(s): State<AppState>, bytes: axum::body::Bytes) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin], false)?;
    let b: NewUser = json_body(&bytes)?;
    let role: Role = b.role.parse()?;
    let (user, password) = s.store.create_user(&b.name, role, b.password.as_deref(), caller.name()).await?;
    info!(user = %user.name, %role, by = caller.name(), "user added in the web view");
    let out = json!({"user": user, "username": user.name, "password": password.expose()});
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `POST /api/v1/users/{name}/disable`: no more logins; the user's open sessions and cached
/// API logins are refused from their next request. 409 for the last enabled admin.
async fn disable_user(
    caller: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin], false)?;
    let user = s.store.disable_user(&name, caller.name()).await?;
    s.logins.forget(&user.name);
    s.sessions.end_user(&user.id);
    info!(user = %user.name, by = caller.name(), "user disabled in the web view");
    Ok(Json(json!({"user": user})))
}

/// `POST /api/v1/users/{name}/enable`: the user may log in again.
async fn enable_user(
    caller: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin], false)?;
    let user = s.store.enable_user(&name, caller.name()).await?;
    info!(user = %user.name, by = caller.name(), "user enabled in the web view");
    Ok(Json(json!({"user": user})))
}

/// Body of `POST /api/v1/users/{name}/role`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRole {
    role: String,
}

/// `POST /api/v1/users/{name}/role` `{role}`: effective from the user's next request.
async fn set_role(
    caller: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin], false)?;
    let b: NewRole = json_body(&bytes)?;
    let role: Role = b.role.parse()?;
    let user = s.store.set_user_role(&name, role, caller.name()).await?;
    info!(user = %user.name, %role, by = caller.name(), "user role changed in the web view");
    Ok(Json(json!({"user": user})))
}

/// `GET /api/v1/integrations`: integration accounts with their filters (never tokens).
async fn list_integrations(caller: Caller, State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin], false)?;
    let items: Vec<_> =
        s.store.list_accounts().await?.into_iter().filter(|a| a.kind == AccountKind::Integration).collect();
    Ok(Json(json!({"items": items})))
}

/// `POST /api/v1/integrations/{name}/disable`: the account can no longer log in (MQTT or
/// Bearer); the broker ends its live sessions within seconds.
async fn disable_integration(
    caller: Caller,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin], false)?;
    match s.store.account(&name).await? {
        Some(a) if a.kind == AccountKind::Integration => {}
        _ => return Err(ApiError::not_found("integration", &name)),
    }
    let account = s.store.revoke_account(&name, caller.name()).await?;
    info!(account = %name, by = caller.name(), "integration disabled in the web view");
    Ok(Json(json!({"integration": account})))
}

/// Body of `POST /api/v1/devices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    name: String,
    staff: Option<String>,
}

/// `POST /api/v1/devices` `{name,staff?}` → 201 `{device,username,password,mqtt,app_url}`, the
/// same shape as `jiandu device add`; the token is shown this once. `app_url` opens the field app
/// provisioned (`[web] public_url`, else the address this request was sent to).
async fn add_device(
    caller: Caller,
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    over_tls: Option<axum::Extension<crate::tls::OverTls>>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin], false)?;
    let b: NewDevice = json_body(&bytes)?;
    let staff = b.staff.as_deref().map(str::trim).filter(|v| !v.is_empty());
    let (device, token) = s.store.create_device(&b.name, staff).await?;
    info!(device = %device.id, name = %device.name, by = caller.name(), "device added in the web view");
    let base = s.ui.public_url.clone().or_else(|| {
        // The Host the admin's browser used (a host name or address with an optional port).
        let host = headers.get(axum::http::header::HOST)?.to_str().ok()?;
        let plain = !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
        plain.then(|| format!("{}://{host}", if over_tls.is_some() { "https" } else { "http" }))
    });
    let app_url = base.map(|b| crate::app_url(&b, &device.id, token.expose(), s.ui.app_heartbeat_s.max(1)));
    let out = json!({"device": device.id, "username": device.id, "password": token.expose(), "mqtt": s.ui.mqtt_url,
                     "app_url": app_url});
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `POST /api/v1/devices/{id}/revoke`: the phone can no longer log in.
async fn revoke_device(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin], false)?;
    let device = s.store.revoke_device(&id, caller.name()).await?;
    info!(device = %id, by = caller.name(), "device revoked in the web view");
    Ok(Json(json!({"device": device})))
}

/// `?before=&limit=` of the ledger: entries with `seq < before`, newest first.
#[derive(Debug, Deserialize)]
struct LedgerQuery {
    before: Option<i64>,
    limit: Option<i64>,
}

/// `GET /api/v1/ledger`: the hash-chained ledger, newest first (auditors and admins);
/// `next` is the `before` of the following page.
async fn ledger(
    caller: Caller,
    State(s): State<AppState>,
    Query(q): Query<LedgerQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Auditor, Role::Admin], false)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be within 1..=500, got {limit}")));
    }
    let (head, head_hash) = s.store.ledger_head().await?;
    let before = match q.before {
        Some(b) if b < 1 => return Err(ApiError::invalid("before", format!("must be at least 1, got {b}"))),
        Some(b) => b.min(head + 1),
        None => head + 1,
    };
    let after = (before - 1 - limit).max(0);
    let mut items = s.store.ledger_entries(after, before - 1 - after).await?;
    items.reverse();
    let next = (after > 0).then_some(after + 1);
    Ok(Json(json!({"items": items, "next": next, "head": {"seq": head, "hash": head_hash}})))
}
