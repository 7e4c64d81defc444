//! REST API foundations (DESIGN §6): the error shape, the authenticated caller and its role
//! checks, and pagination. Each resource lives in its own module under `api/` and contributes
//! a `routes() -> Router<AppState>` merged in [`router`].
//!
//! Authentication: HTTP Basic with a web user's name and password (argon2-verified, cached for a
//! minute so API clients do not pay the hash on every call), or `Authorization: Bearer <token>`
//! of an integration account, or the web view's session cookie (`api/session.rs`), whose
//! state-changing requests must carry the session's CSRF token (`X-CSRF-Token`). Failed Basic
//! and Bearer attempts count in [`crate::lockout`] like failed logins and are answered 429 with
//! `Retry-After` once a limit is reached.

pub mod cases;
pub mod departments;
pub mod devices;
pub mod evidence;
pub mod index;
pub mod lookups;
pub mod mqtt_hooks;
pub mod public;
pub mod reports;
pub mod session;
pub mod stream;
pub mod users;
pub mod view;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiandu_store::{Account, Role, StoreError, User};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{error, warn};

use crate::AppState;

/// All `/api/v1` routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(devices::routes())
        .merge(reports::routes())
        .merge(evidence::routes())
        .merge(lookups::routes())
        .merge(mqtt_hooks::routes())
        .merge(cases::routes())
        .merge(departments::routes())
        .merge(index::routes())
        .merge(session::routes())
        .merge(stream::routes())
        .merge(users::routes())
        .merge(view::routes())
        .merge(public::routes())
}

/// An API error rendered as `{"error":{"code","message","field"}}` (DESIGN §6).
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `not_found`, `invalid`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The offending field, for 422.
    pub field: Option<String>,
}

impl ApiError {
    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code: "bad_request", message: message.into(), field: None }
    }
    /// 401: no or wrong credentials.
    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: "log in: HTTP Basic with a user's name and password, or Bearer with an integration token".into(),
            field: None,
        }
    }
    /// 403: authenticated, but the role may not do this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::FORBIDDEN, code: "forbidden", message: message.into(), field: None }
    }
    /// 404 for a named thing.
    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: format!("no {what} '{id}'"), field: None }
    }
    /// 409: conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::CONFLICT, code: "conflict", message: message.into(), field: None }
    }
    /// 422 naming the field that is wrong.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid",
            message: message.into(),
            field: Some(field.into()),
        }
    }
    /// 500; the detail goes to the log, not to the caller.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        error!(error = %detail, "request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error; see the server log".into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(f) = self.field {
            body["field"] = json!(f);
        }
        let mut resp = (self.status, axum::Json(json!({ "error": body }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"jiandu\""));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { what, id } => ApiError::not_found(what, &id),
            StoreError::DuplicateName { name } => ApiError::conflict(format!("'{name}' exists already")),
            StoreError::InvalidInput { field, reason } => ApiError::invalid(field, reason),
            StoreError::Conflict { reason } => ApiError::conflict(reason),
            other => ApiError::internal(other),
        }
    }
}

impl From<jiandu_schemas::PayloadError> for ApiError {
    fn from(e: jiandu_schemas::PayloadError) -> ApiError {
        ApiError::invalid(e.field, e.message)
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A web user (dispatcher, leader, admin, auditor).
    User(User),
    /// An integration account (Bearer token).
    Integration(Account),
}

impl Caller {
    /// Name for audit records: the user name or the account name.
    pub fn name(&self) -> &str {
        match self {
            Caller::User(u) => &u.name,
            Caller::Integration(a) => &a.name,
        }
    }

    /// The user's role, if a user.
    pub fn role(&self) -> Option<Role> {
        match self {
            Caller::User(u) => Some(u.role),
            Caller::Integration(_) => None,
        }
    }

    /// Allows users with one of `roles`; integrations only when `integrations` is true.
    pub fn require(&self, roles: &[Role], integrations: bool) -> Result<(), ApiError> {
        match self {
            Caller::User(u) if roles.contains(&u.role) => Ok(()),
            Caller::Integration(_) if integrations => Ok(()),
            Caller::User(u) => Err(ApiError::forbidden(format!(
                "role {} may not do this; needs one of: {}",
                u.role,
                roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            ))),
            Caller::Integration(a) => Err(ApiError::forbidden(format!("integration '{}' may not do this", a.name))),
        }
    }
}

/// Basic-auth results cached for a minute, keyed by name and a hash of the password.
#[derive(Default)]
pub struct LoginCache {
    entries: Mutex<HashMap<LoginKey, (User, Instant)>>,
}

/// User name and SHA-256 of the password tried.
type LoginKey = (String, [u8; 32]);

const LOGIN_CACHE_TTL: Duration = Duration::from_secs(60);

impl LoginCache {
    fn get(&self, name: &str, pw: &[u8; 32]) -> Option<User> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(name.to_owned(), *pw)).filter(|(_, t)| t.elapsed() < LOGIN_CACHE_TTL).map(|(u, _)| u.clone())
    }
    /// Drops every cached login of `name` (its user was disabled).
    pub fn forget(&self, name: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|(n, _), _| n != name);
    }
    fn put(&self, name: &str, pw: [u8; 32], user: User) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (_, t)| t.elapsed() < LOGIN_CACHE_TTL);
        }
        map.insert((name.to_owned(), pw), (user, Instant::now()));
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).map(str::trim)
}

/// 429 with `Retry-After`: too many failed logins, Basic or Bearer attempts (see
/// [`crate::lockout`]).
pub fn rate_limited(wait: u64) -> Response {
    let mut resp = ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "rate_limited",
        message: format!("too many failed logins from here or for this name; try again in {wait} s"),
        field: None,
    }
    .into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(wait));
    resp
}

/// The client's address (through trusted proxies, see [`crate::client_ip`]); none when the
/// listener does not record it.
fn peer_ip(parts: &Parts, state: &AppState) -> Option<IpAddr> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())?;
    Some(crate::client_ip(&state.ui.trusted_proxies, &parts.headers, peer))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, Response> {
        let ip = peer_ip(parts, state);
        if let Some((name, password)) = basic_credentials(&parts.headers) {
            // Refused before the password is looked at, right or wrong, like the login form.
            if let Some(wait) = state.lockout.retry_after(Some(&name), ip) {
                warn!(name = %name, ip = ?ip, "Basic login refused: too many failures");
                return Err(rate_limited(wait));
            }
            let pw: [u8; 32] = Sha256::digest(password.as_bytes()).into();
            if let Some(user) = state.logins.get(&name, &pw) {
                // Disabled or re-roled since it was cached: as stored now, or refused.
                return match still_enabled(state, &user).await? {
                    Some(user) => Ok(Caller::User(user)),
                    None => {
                        state.logins.forget(&name);
                        Err(ApiError::unauthorized().into_response())
                    }
                };
            }
            return match state
                .store
                .verify_user(&name, &password)
                .await
                .map_err(|e| ApiError::from(e).into_response())?
            {
                Some(user) => {
                    state.lockout.succeeded(&name, ip);
                    state.logins.put(&name, pw, user.clone());
                    Ok(Caller::User(user))
                }
                None => {
                    state.lockout.failed(Some(&name), ip);
                    warn!(name = %name, ip = ?ip, "Basic login failed");
                    Err(ApiError::unauthorized().into_response())
                }
            };
        }
        if let Some(token) = bearer_token(&parts.headers) {
            if let Some(wait) = state.lockout.retry_after(None, ip) {
                warn!(ip = ?ip, "Bearer refused: too many failures from this address");
                return Err(rate_limited(wait));
            }
            return match state.store.authenticate_bearer(token).await.map_err(|e| ApiError::from(e).into_response())? {
                Some(account) => Ok(Caller::Integration(account)),
                None => {
                    state.lockout.failed(None, ip);
                    warn!(ip = ?ip, "Bearer token refused");
                    Err(ApiError::unauthorized().into_response())
                }
            };
        }
        if let Some(id) = session::session_id(&parts.headers) {
            let Some(s) = state.sessions.get(id) else { return Err(ApiError::unauthorized().into_response()) };
            if !parts.method.is_safe() {
                let sent = parts.headers.get(crate::session::CSRF_HEADER).and_then(|v| v.to_str().ok());
                if !sent.is_some_and(|t| crate::session::same_token(t, &s.csrf)) {
                    return Err(ApiError {
                        status: StatusCode::FORBIDDEN,
                        code: "csrf",
                        message: "missing or wrong X-CSRF-Token header (GET /api/v1/session gives it)".into(),
                        field: Some("X-CSRF-Token".into()),
                    }
                    .into_response());
                }
            }
            return match still_enabled(state, &s.user).await? {
                Some(user) => Ok(Caller::User(user)),
                None => {
                    state.sessions.remove(id);
                    Err(ApiError::unauthorized().into_response())
                }
            };
        }
        Err(ApiError::unauthorized().into_response())
    }
}

/// The user behind a session or a cached login as stored now: `None` once disabled or deleted,
/// with the current role otherwise. Read on every request (one primary-key look-up), so
/// `jiandu user disable` in another process ends a session at its next request.
async fn still_enabled(state: &AppState, user: &User) -> Result<Option<User>, Response> {
    let now = state.store.user_by_id(&user.id).await.map_err(|e| ApiError::from(e).into_response())?;
    Ok(now.filter(|u| u.disabled_at.is_none()))
}

impl Caller {
    /// Whether the caller may still act: the user still enabled, the integration still not
    /// revoked. Long-lived responses (the event stream) ask this now and then and end when not.
    pub async fn still_allowed(&self, store: &jiandu_store::Store) -> bool {
        match self {
            Caller::User(u) => matches!(store.user_by_id(&u.id).await, Ok(Some(now)) if now.disabled_at.is_none()),
            Caller::Integration(a) => {
                matches!(store.account(&a.name).await, Ok(Some(now)) if now.revoked_at.is_none())
            }
        }
    }
}

/// `?limit=&after=` of list endpoints: newest first, `after` is the last id of the previous page.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Page {
    /// Page size, 1..=500 (default 50).
    pub limit: Option<i64>,
    /// Cursor: the last id of the previous page.
    pub after: Option<String>,
}

impl Page {
    /// The page size, clamped to 1..=500.
    pub fn limit(&self) -> i64 {
        self.limit.unwrap_or(50).clamp(1, 500)
    }
}

/// Reads a JSON request body into `T`: the one typed body reader of the API. A wrong value is a
/// 422 naming its path (`origin.kind`, `evidence[0]`, `rows[2].value`), a missing or unknown
/// field names that field.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        ApiError::invalid(error_field(&path, &msg), msg)
    })
}

/// Like [`json_body`], with an empty (or blank) body read as `T::default()`.
pub(crate) fn json_body_or_default<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    json_body(bytes)
}

/// A required text field that must not be blank (serde accepts `""`), trimmed.
pub(crate) fn non_blank(field: &str, value: String) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::invalid(field, "is required (a non-empty string)"));
    }
    Ok(v.to_owned())
}

/// The field a serde error is about: the path where it happened, and for a missing or unknown
/// field the field's own name under that path; `body` when the whole body is wrong.
fn error_field(path: &str, msg: &str) -> String {
    let named =
        if msg.starts_with("missing field") || msg.starts_with("unknown field") { msg.split('`').nth(1) } else { None };
    match (path, named) {
        (".", Some(n)) => n.to_owned(),
        (".", None) => "body".to_owned(),
        // A struct read from a JSON array: the body's shape is wrong, not one field.
        (p, _) if p.starts_with('[') => "body".to_owned(),
        (p, Some(n)) if !p.ends_with(n) => format!("{p}.{n}"),
        (p, _) => p.to_owned(),
    }
}

/// A request body as a loose JSON object (an empty body is an empty object), for endpoints that
/// must tolerate fields they do not know (the external broker's hook requests) and name the
/// offending field themselves.
pub(crate) fn json_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("body", "must be a JSON object")),
        Err(e) => Err(ApiError::invalid("body", format!("not valid JSON: {e}"))),
    }
}

/// An optional string field of a JSON object body; another type is a 422 naming the field.
pub(crate) fn opt_str(m: &serde_json::Map<String, serde_json::Value>, field: &str) -> Result<Option<String>, ApiError> {
    match m.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::invalid(field, format!("must be a string, got {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        title: String,
        #[serde(default)]
        tags: Vec<String>,
        inner: Option<Inner>,
        #[serde(default)]
        rows: Vec<Inner>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        kind: String,
        value: Option<f64>,
    }

    fn field(body: &str) -> String {
        json_body::<Outer>(body.as_bytes()).unwrap_err().field.unwrap()
    }

    #[test]
    fn body_errors_name_the_field_by_its_path() {
        assert_eq!(field(r#"{}"#), "title");
        assert_eq!(field(r#"{"title":"t","colour":1}"#), "colour");
        assert_eq!(field(r#"{"title":7}"#), "title");
        assert_eq!(field(r#"{"title":"t","tags":["a",3]}"#), "tags[1]");
        assert_eq!(field(r#"{"title":"t","inner":{}}"#), "inner.kind");
        assert_eq!(field(r#"{"title":"t","inner":{"kind":"k","x":1}}"#), "inner.x");
        assert_eq!(field(r#"{"title":"t","rows":[{"kind":"k"},{"kind":"k","value":"high"}]}"#), "rows[1].value");
        assert_eq!(field("not json"), "body");
        assert_eq!(field("[1]"), "body");
        assert!(json_body_or_default::<Outer>(b"  ").is_ok());
        assert_eq!(non_blank("title", "  ".into()).unwrap_err().field.as_deref(), Some("title"));
    }
}
