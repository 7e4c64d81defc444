//! `/api/v1/session`: the web view's login (`POST`), who is logged in with the CSRF token
//! (`GET`), and logout (`DELETE`). See [`crate::session`] for the cookie and CSRF rules.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use super::{ApiError, Caller};
use crate::AppState;
use crate::session::{COOKIE, SESSION_TTL, cookie};

/// The session routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/session", get(me).post(login).delete(logout))
}

/// Body of a login.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    name: String,
    password: String,
}

/// `POST /api/v1/session` `{name,password}`: sets the session cookie and answers
/// `{user:{name,role},csrf}`; 401 for a wrong name or password, 429 with `Retry-After` after too
/// many failures (see [`crate::lockout`]).
async fn login(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let peer = crate::client_ip(&s.ui.trusted_proxies, &headers, peer.ip());
    let b: Login = super::json_body(&body)?;
    if b.name.is_empty() {
        return Err(ApiError::invalid("name", "must not be empty"));
    }
    let ip = Some(peer);
    if let Some(wait) = s.lockout.retry_after(Some(&b.name), ip) {
        warn!(name = %b.name, %peer, "login refused: too many failures");
        return Ok(super::rate_limited(wait));
    }
    let Some(user) = s.store.verify_user(&b.name, &b.password).await? else {
        s.lockout.failed(Some(&b.name), ip);
        warn!(name = %b.name, %peer, "login failed");
        return Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: "wrong name or password".into(),
            field: None,
        });
    };
    s.lockout.succeeded(&b.name, ip);
    let (id, session) = s.sessions.create(user);
    info!(user = %session.user.name, role = %session.user.role, %peer, "logged in");
    let set = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_TTL.as_secs());
    let body = json!({"user": {"name": session.user.name, "role": session.user.role}, "csrf": session.csrf});
    let mut resp = (StatusCode::OK, Json(body)).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&set).map_err(ApiError::internal)?);
    Ok(resp)
}

/// `GET /api/v1/session`: `{user:{name,role},csrf}` of the cookie's session (`csrf` is null for
/// Basic or Bearer callers, who need none).
async fn me(
    caller: Caller,
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let csrf = session_id(&headers).and_then(|id| s.sessions.get(id)).map(|s| s.csrf);
    Ok(Json(json!({"user": {"name": caller.name(), "role": caller.role()}, "csrf": csrf})))
}

/// `DELETE /api/v1/session`: ends the session and clears the cookie (needs the CSRF token).
async fn logout(caller: Caller, State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(id) = session_id(&headers) {
        s.sessions.remove(id);
    }
    info!(user = caller.name(), "logged out");
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("jd_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(resp)
}

/// The session cookie of a request, if any.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| cookie(v, COOKIE))
}
