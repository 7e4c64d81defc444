//! `POST /api/v1/mqtt/auth` and `POST /api/v1/mqtt/acl`: the HTTP authentication and
//! authorisation hooks an external broker cluster (EMQX 5, rmqtt) calls, so it enforces the
//! same accounts and topic ACL as the embedded front (DESIGN §3 "External brokers").
//!
//! The decisions are `jiandu_broker::acl`'s, the one implementation the embedded front uses:
//! the login is [`Store::authenticate_mqtt`] plus [`acl::client_id_fits`], a topic is
//! [`Acl::allows`]. Only the broker may ask: every request carries the configured hook secret
//! (`Authorization: Bearer <secret>`, or Basic with the secret as password); without a
//! configured secret the hooks answer 503 and decide nothing. Answers are EMQX 5's: HTTP 200
//! with `{"result":"allow"|"deny","is_superuser":false}`; a malformed request is a 422 naming
//! the field (EMQX reads any status but 200/204 as "ignore", so the broker must be set to deny
//! what no source allows). Verified logins are cached for [`LOGIN_TTL`] keyed by SHA-256 of
//! name, client id and password, principals for the ACL for [`PRINCIPAL_TTL`]; both are purged
//! within a second of a revocation, which the hooks read from the store like the embedded
//! broker does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use jiandu_broker::acl::{self, Acl, Action};
use jiandu_store::{Principal, REVOCATION_LOOKBACK_MS, Secret, Store, now_ms};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::AppState;
use crate::api::{ApiError, json_object};

/// Largest hook request body: the broker sends a handful of short placeholders.
pub const MAX_HOOK_BODY_BYTES: usize = 8 * 1024;
/// How long a verified login is remembered (a reconnect storm costs no database round trips).
pub const LOGIN_TTL: Duration = Duration::from_secs(30);
/// How long an account's topic rights are remembered between ACL questions.
pub const PRINCIPAL_TTL: Duration = Duration::from_secs(5);
/// How often the hooks look for revocations (the embedded broker looks every second too).
const REVOCATION_POLL: Duration = Duration::from_secs(1);
/// Longest username, client id, password or topic accepted in a hook request.
const MAX_FIELD_CHARS: usize = 1024;
/// Most entries of each cache; beyond it, expired entries are dropped, then everything.
const MAX_CACHE_ENTRIES: usize = 100_000;

/// Routes of the hooks.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/mqtt/auth", post(authenticate))
        .route("/mqtt/acl", post(authorise))
        .layer(DefaultBodyLimit::max(MAX_HOOK_BODY_BYTES))
}

/// The hooks' secret and caches, shared by the web role's handlers.
pub struct Hooks {
    secret: Option<Secret>,
    logins: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    principals: Mutex<HashMap<String, (Option<Principal>, Instant)>>,
    revocations: tokio::sync::Mutex<(Instant, i64)>,
}

impl Hooks {
    /// Hooks that answer only callers presenting `secret`; `None` turns them off (503).
    pub fn new(secret: Option<Secret>) -> Hooks {
        Hooks {
            secret: secret.filter(|s| !s.expose().is_empty()),
            logins: Mutex::default(),
            principals: Mutex::default(),
            revocations: tokio::sync::Mutex::new((Instant::now() - REVOCATION_POLL * 2, now_ms())),
        }
    }

    /// Checks the caller is the broker: 503 when no secret is configured, 401 for a wrong one.
    fn admit(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(secret) = &self.secret else {
            return Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "hooks_disabled",
                message:
                    "the MQTT hooks are off: set mqtt_hook_secret (JIANDU_MQTT_HOOK_SECRET) and give it to the broker"
                        .into(),
                field: None,
            });
        };
        let presented = presented_secret(headers);
        let ok = presented.as_deref().is_some_and(|p| {
            let (a, b) = (Sha256::digest(p.as_bytes()), Sha256::digest(secret.expose().as_bytes()));
            a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
        });
        if ok {
            Ok(())
        } else {
            warn!(presented = presented.is_some(), "MQTT hook called without the right secret");
            Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthorized",
                message: "the MQTT hooks answer only the broker: send Authorization: Bearer <mqtt_hook_secret>".into(),
                field: None,
            })
        }
    }

    /// Reads revocations at most once a second and forgets every cached right of the revoked.
    async fn purge_revoked(&self, store: &Store) {
        let mut last = self.revocations.lock().await;
        if last.0.elapsed() < REVOCATION_POLL {
            return;
        }
        let now = now_ms();
        match store.revoked_since(last.1 - REVOCATION_LOOKBACK_MS).await {
            Ok(r) => {
                *last = (Instant::now(), now);
                if r.devices.is_empty() && r.accounts.is_empty() {
                    return;
                }
                let gone: std::collections::HashSet<&str> =
                    r.devices.iter().chain(r.accounts.iter()).map(String::as_str).collect();
                lock(&self.logins).retain(|_, (p, _)| !gone.contains(acl::principal_name(p)));
                lock(&self.principals).retain(|name, _| !gone.contains(name.as_str()));
                debug!(revoked = gone.len(), "MQTT hook caches purged of revoked accounts");
            }
            Err(e) => warn!(error = %e, "cannot read revocations for the MQTT hooks"),
        }
    }

    async fn login(&self, store: &Store, username: &str, client_id: &str, password: &str) -> Result<bool, ApiError> {
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            for part in [username, client_id, password] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part.as_bytes());
            }
            h.finalize().into()
        };
        if lock(&self.logins).get(&key).is_some_and(|(_, t)| t.elapsed() < LOGIN_TTL) {
            return Ok(true);
        }
        let Some(principal) = store.authenticate_mqtt(username, password.as_bytes()).await? else {
            return Ok(false);
        };
        if !acl::client_id_fits(acl::principal_name(&principal), client_id) {
            return Ok(false);
        }
        let mut logins = lock(&self.logins);
        if logins.len() >= MAX_CACHE_ENTRIES {
            logins.retain(|_, (_, t)| t.elapsed() < LOGIN_TTL);
            if logins.len() >= MAX_CACHE_ENTRIES {
                logins.clear();
            }
        }
        logins.insert(key, (principal, Instant::now()));
        Ok(true)
    }

    async fn principal(&self, store: &Store, username: &str) -> Result<Option<Principal>, ApiError> {
        if let Some((p, _)) = lock(&self.principals).get(username).filter(|(_, t)| t.elapsed() < PRINCIPAL_TTL) {
            return Ok(p.clone());
        }
        let p = store.mqtt_principal(username).await?;
        let mut principals = lock(&self.principals);
        if principals.len() >= MAX_CACHE_ENTRIES {
            principals.retain(|_, (_, t)| t.elapsed() < PRINCIPAL_TTL);
            if principals.len() >= MAX_CACHE_ENTRIES {
                principals.clear();
            }
        }
        principals.insert(username.to_owned(), (p.clone(), Instant::now()));
        Ok(p)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The secret from `Authorization: Bearer …` or the password of `Authorization: Basic …`.
fn presented_secret(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) {
        return Some(token.trim().to_owned());
    }
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, pw)| pw.to_owned())
}

/// The EMQX answer.
fn decision(allow: bool) -> Response {
    let result = if allow { "allow" } else { "deny" };
    (StatusCode::OK, Json(json!({"result": result, "is_superuser": false}))).into_response()
}

/// A string placeholder; EMQX sends every placeholder as a string, so a missing one is a 422.
fn field<'a>(m: &'a Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    match m.get(name) {
        Some(Value::String(s)) if s.chars().count() <= MAX_FIELD_CHARS => Ok(s),
        Some(Value::String(_)) => Err(ApiError::invalid(name, format!("longer than {MAX_FIELD_CHARS} characters"))),
        None | Some(Value::Null) => Err(ApiError::invalid(name, "missing; configure the broker to send it")),
        Some(other) => Err(ApiError::invalid(name, format!("must be a string, got {other}"))),
    }
}

/// An optional flag sent as `true`/`false`, `"true"`/`"false"` or `"1"`/`"0"`.
fn flag(m: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if matches!(s.as_str(), "true" | "1") => Ok(true),
        Some(Value::String(s)) if matches!(s.as_str(), "false" | "0" | "") => Ok(false),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(true),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(false),
        Some(other) => Err(ApiError::invalid(name, format!("must be true or false, got {other}"))),
    }
}

/// `${action}` (EMQX 5: `publish`, `subscribe`) or rmqtt's / EMQX 4's `${access}` (`1`
/// subscribe, `2` publish).
fn action(m: &Map<String, Value>) -> Result<Action, ApiError> {
    let retain = flag(m, "retain")?;
    if m.contains_key("action") {
        return match field(m, "action")?.to_ascii_lowercase().as_str() {
            "publish" => Ok(Action::Publish { retain }),
            "subscribe" => Ok(Action::Subscribe),
            other => Err(ApiError::invalid("action", format!("'{other}' is not publish or subscribe"))),
        };
    }
    match m.get("access") {
        Some(Value::String(s)) if s == "1" => Ok(Action::Subscribe),
        Some(Value::String(s)) if s == "2" => Ok(Action::Publish { retain }),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(Action::Subscribe),
        Some(Value::Number(n)) if n.as_u64() == Some(2) => Ok(Action::Publish { retain }),
        None => Err(ApiError::invalid("action", "missing; send action (publish|subscribe) or access (1|2)")),
        Some(other) => Err(ApiError::invalid("access", format!("must be 1 (subscribe) or 2 (publish), got {other}"))),
    }
}

/// The phone's address, for the log only.
fn peerhost(m: &Map<String, Value>) -> Option<IpAddr> {
    m.get("peerhost").and_then(Value::as_str).and_then(|s| s.parse().ok())
}

/// `POST /api/v1/mqtt/auth` `{clientid, username, password, peerhost?}`: the same login check as
/// the embedded front's CONNECT (token, not revoked, client id the name or `{name}-…`).
async fn authenticate(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    s.hooks.admit(&headers)?;
    let m = json_object(&body)?;
    let client_id = field(&m, "clientid")?;
    let username = field(&m, "username")?;
    let password = field(&m, "password")?;
    s.hooks.purge_revoked(&s.store).await;
    let ok = !username.is_empty() && s.hooks.login(&s.store, username, client_id, password).await?;
    if ok {
        debug!(user = %username, client = %client_id, "MQTT hook: login allowed");
    } else {
        info!(user = %username, client = %client_id, peer = ?peerhost(&m), "MQTT hook: login refused");
    }
    Ok(decision(ok))
}

/// `POST /api/v1/mqtt/acl` `{clientid, username, topic, action, retain?, qos?}`: whether the
/// account may publish to or subscribe to `topic`, by the embedded front's ACL.
async fn authorise(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    s.hooks.admit(&headers)?;
    let m = json_object(&body)?;
    let client_id = field(&m, "clientid")?;
    let username = field(&m, "username")?;
    let topic = field(&m, "topic")?;
    let action = action(&m)?;
    s.hooks.purge_revoked(&s.store).await;
    let allow = match s.hooks.principal(&s.store, username).await? {
        Some(p) if acl::client_id_fits(acl::principal_name(&p), client_id) => {
            Acl::for_principal(&p).allows(action, topic)
        }
        _ => false,
    };
    if !allow {
        info!(user = %username, client = %client_id, topic = %topic, action = ?action, "MQTT hook: refused");
    }
    Ok(decision(allow))
}
