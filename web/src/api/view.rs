//! What the browser view needs besides the resources: its settings (`GET /api/v1/ui`: map tiles,
//! GCJ-02 display, the MQTT address phones are given) and the API's own description
//! (`GET /api/v1/openapi.json`, rendered by the view's "API" page).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use jiandu_store::Role;
use serde_json::{Value, json};

use super::{ApiError, Caller};
use crate::AppState;

/// The view routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/ui", get(ui)).route("/openapi.json", get(openapi))
}

/// `GET /api/v1/ui`: the map and display settings of the web view (any logged-in user).
async fn ui(caller: Caller, State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    caller.require(&Role::ALL, false)?;
    Ok(Json(json!({
        "tile_url": s.ui.tile_url,
        "tile_attribution": s.ui.tile_attribution,
        "gcj02": s.ui.gcj02,
        "mqtt": s.ui.mqtt_url,
        "user": {"name": caller.name(), "role": caller.role()},
    })))
}

/// `GET /api/v1/openapi.json`: needs no login, so tools can read it.
async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

/// An operation anyone may call (the public tip endpoints): no security, and the abuse answers.
fn public_op(summary: &str, params: &[(&str, &str, &str)], body: Option<&str>) -> Value {
    let mut o = op(summary, "anyone (no login)", params, body);
    o["security"] = json!([]);
    if let Some(r) = o["responses"].as_object_mut() {
        r.remove("401");
        r.remove("403");
        for code in ["404", "428", "429"] {
            r.insert(code.into(), json!({"$ref": "#/components/responses/Error"}));
        }
    }
    o
}

/// One operation: summary, who may call it, and its parameters.
fn op(summary: &str, roles: &str, params: &[(&str, &str, &str)], body: Option<&str>) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|(name, place, desc)| {
            json!({"name": name, "in": place, "required": *place == "path", "description": desc,
                   "schema": {"type": "string"}})
        })
        .collect();
    let mut o = json!({
        "summary": summary,
        "description": format!("Allowed: {roles}."),
        "parameters": parameters,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {}}},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
            "422": {"$ref": "#/components/responses/Error"},
        },
    });
    if let Some(b) = body {
        o["requestBody"] = json!({"description": b, "content": {"application/json": {"schema": {"type": "object"}}}});
    }
    o
}

/// The OpenAPI 3.1 description of every `/api/v1` endpoint.
pub fn openapi_document() -> Value {
    const READ: &str = "dispatcher, leader, admin, integrations";
    const DESK: &str = "dispatcher, admin";
    const STAFF: &str = "dispatcher, leader, admin, auditor";
    let page = [("limit", "query", "page size"), ("after", "query", "last id of the previous page")];
    let id = ("id", "path", "identifier");
    let mut paths = json!({
            "/session": {
                "get": op("Who is logged in, with the session's CSRF token", "any user", &[], None),
                "post": op("Log in; sets the HttpOnly session cookie (failed logins are rate-limited)", "anyone",
                           &[], Some("{name,password}")),
                "delete": op("Log out", "any user", &[], None),
            },
            "/ui": {"get": op("Settings of the web view (tiles, GCJ-02)", "any user", &[], None)},
            "/openapi.json": {"get": op("This document", "anyone", &[], None)},
            "/events": {"get": op("Server-Sent Events from the event outbox; id is the seq, Last-Event-ID resumes",
                                  "any user, integrations", &[("after", "query", "seq to start after")], None)},
            "/devices": {
                "get": op("Devices with live position, presence and state", READ,
                          &[("limit", "query", "1..=5000"), ("after", "query", "last device id")], None),
                "post": op("Register a phone; the token and the field app's link (app_url) are shown once", "admin", &[], Some("{name,staff?}")),
            },
            "/devices/{id}/track": {"get": op("A device's track as a GeoJSON LineString", READ,
                &[id, ("from", "query", "epoch ms"), ("to", "query", "epoch ms")], None)},
            "/devices/{id}/revoke": {"post": op("Revoke a phone", "admin", &[id], None)},
            "/reports": {
                "get": op("Reports, newest first", "dispatcher, leader, admin, auditor, integrations",
                          &[("status", "query", "filter by status"), page[0], page[1]], None),
                "post": op("Submit a report (tip)", "dispatcher, admin, integrations", &[],
                           Some("{id?,kind,text,lat,lon,ts?,plate?,needs?}")),
            },
            "/reports/{id}": {"get": op("A report with its assignments and timeline",
                "dispatcher, leader, admin, auditor, integrations", &[id], None)},
            "/reports/{id}/dispatch": {"post": op("Offer to a device, or ask for the nearest", DESK, &[id],
                Some("{device?,respond_within_s?,note?}"))},
            "/reports/{id}/cancel": {"post": op("Cancel a report and withdraw its offers", DESK, &[id], Some("{note?}"))},
            "/reports/{id}/reassign": {"post": op("Withdraw and offer again", DESK, &[id],
                Some("{assignment?,device?,respond_within_s?,note?}"))},
            "/reports/{id}/location": {"post": op("Place a report that has no location (a public tip naming its place \
                in words; lat and lon are null until then): ledgered, then dispatched to the nearest inspector. 409 when \
                it has a location already or is finished", DESK, &[id], Some("{lat,lon}"))},
            "/evidence": {"get": op("Evidence items, newest first", "dispatcher, leader, admin, auditor",
                &[("report", "query", "report id"), page[0], page[1]], None)},
            "/evidence/{id}": {"get": op("An evidence item with its receipt and chain of custody (audited)",
                "dispatcher, leader, admin, auditor", &[id], None)},
            "/evidence/{id}/content": {"get": op("The bytes; honours Range (audited)",
                "dispatcher, leader, admin, auditor", &[id, ("Range", "header", "bytes=start-end")], None)},
            "/ledger/key": {"get": op("The platform's Ed25519 public key", "any caller", &[], None)},
            "/ledger": {"get": op("The hash-chained ledger, newest first", "auditor, admin",
                &[("before", "query", "seq cursor"), ("limit", "query", "1..=500")], None)},
            "/lookup/{kind}": {"get": op("Registry look-up (vehicle, person, department), audited",
                "dispatcher, leader, admin, integrations",
                &[("kind", "path", "vehicle|person|department"), ("q", "query", "plate, name, id number or code"),
                  ("at", "query", "epoch ms or YYYY-MM-DD"), ("reveal", "query", "admin only: full id numbers")], None)},
            "/lookups": {"get": op("The look-up audit, newest first", "auditor",
                &[("device", "query", "device id"), page[0], page[1]], None)},
    });
    let more = json!({
            "/cases": {
                "get": op("Cases, newest first", STAFF, &[("unit", "query", "unit"),
                    ("overdue", "query", "true: only overdue"), page[0], page[1]], None),
                "post": op("Open a case", "users by role (see cases)", &[],
                    Some("{title,origin:{kind,id}?,parties?,evidence?,handler,unit,unit_head?}")),
            },
            "/cases/overview": {"get": op("Open and overdue cases per unit and stage", STAFF, &[], None)},
            "/departments": {"get": op("Units of the departments registry in force (code, name), for forms", STAFF, &[], None)},
            "/cases/approvals": {"get": op("Cases waiting for an approval the caller may give", STAFF, &[], None)},
            "/cases/{id}": {"get": op("A case with stages, timeline, approvals and timers", STAFF, &[id], None)},
            "/cases/{id}/advance": {"post": op("Ask to move a case to its next stage", "users by role", &[id],
                Some("{stage_index?,note?}"))},
            "/cases/{id}/approve": {"post": op("Approve moving on", "users by role", &[id], Some("{stage_index?,note?}"))},
            "/cases/{id}/extend": {"post": op("Extend a stage's deadline", "users by role", &[id],
                Some("{stage_index?,days?,reason}"))},
            "/negative-records": {"get": op("Negative records, newest first", STAFF,
                &[("unit", "query", "unit"), ("handler", "query", "handler")], None)},
            "/index": {"get": op("Integrity index of every unit for a period", STAFF,
                &[("period", "query", "e.g. 2026-Q4")], None)},
            "/index/{unit}": {"get": op("A unit's index trend, explanation and history", STAFF,
                &[("unit", "path", "unit code")], None)},
            "/index/compute": {"post": op("Recompute a period now", "leader, admin", &[], Some("{period?}"))},
            "/index/indicators": {"post": op("Record indicator values", "leader, admin", &[],
                Some("{rows:[{unit,period,indicator,value}]}"))},
            "/index/formula": {"get": op("Every formula version", STAFF, &[], None)},
            "/index/notices": {
                "get": op("Circulation notices, newest first", STAFF, &[("period", "query", "period")], None),
                "post": op("Issue a circulation notice", "leader, admin", &[], Some("{period,units?,title,body}")),
            },
            "/index/assessment.csv": {"get": op("Annual assessment as CSV", STAFF, &[("year", "query", "year")], None)},
            "/index/assessment.html": {"get": op("Annual assessment as a printable page", STAFF,
                &[("year", "query", "year")], None)},
            "/reports/{id}/feedback": {"post": op("Feedback to the reporters of a public tip (ledgered); they read it with \
                their code", "dispatcher, leader, admin", &[id], Some("{text}"))},
            "/reports/{id}/contacts": {"get": op("The public reporters' contacts (each view audited as a look-up of kind \
                tip-contact)", "leader, admin", &[id], None)},
            "/public/tips": {"post": public_op(
                "A citizen's tip, without an account. JSON, or multipart/form-data with the same fields and up to 3 \
                 `photo` parts (image/jpeg|png|webp, 8 MiB each, content must match the type; EXIF, XMP, IPTC and \
                 text metadata are removed before the photo is hashed and stored). Say where with lat and lon, or \
                 place in words, or both (neither: 422 on place). 201 \
                 {code,secret,status,photos}: the secret is shown only here. Limits per address and overall: 429 with \
                 Retry-After; when the rate is high, 428 with {challenge:{token,difficulty}} (also in X-Tip-Challenge): \
                 send again with X-Tip-Proof: {token}:{nonce}, where SHA-256 of that text starts with `difficulty` \
                 zero bits.",
                &[("X-Tip-Proof", "header", "{challenge}:{nonce}, when a challenge was given")],
                Some("{kind: official-car|banquet|gift|other, text, lat?, lon?, place?, plate?, contact?, anonymous?}"))},
            "/public/tips/challenge": {"get": public_op("A fresh proof-of-work challenge {token,difficulty}", &[], None)},
            "/public/tips/{code}": {"get": public_op(
                "Where a tip stands {code,status: received|being_handled|closed,submitted_at,feedback:[{text,ts}]}; \
                 an unknown code and a wrong secret are the same 404, and failed tries are limited per address (429)",
                &[("code", "path", "the follow-up code"), ("X-Tip-Secret", "header", "the secret (never in the URL)")],
                None)},
            "/users": {
                "get": op("Web users", "admin", &[], None),
                "post": op("Add a web user; the password is shown once", "admin", &[], Some("{name,role,password?}")),
            },
            "/users/{name}/disable": {"post": op("Disable a user: no logins, open sessions end (ledgered)", "admin",
                &[("name", "path", "login name")], None)},
            "/users/{name}/enable": {"post": op("Let a disabled user log in again (ledgered)", "admin",
                &[("name", "path", "login name")], None)},
            "/users/{name}/role": {"post": op("Change a user's role, effective at their next request (ledgered)",
                "admin", &[("name", "path", "login name")], Some("{role}"))},
            "/integrations": {"get": op("Integration accounts and their topic filters (never tokens)", "admin", &[], None)},
            "/integrations/{name}/disable": {"post": op("Disable an integration: no logins, MQTT sessions end (ledgered)",
                "admin", &[("name", "path", "account name")], None)},
    });
    if let (Some(p), Value::Object(m)) = (paths.as_object_mut(), more) {
        p.extend(m);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "jiandu REST API",
            "version": "1",
            "description": "Field supervision platform (DESIGN §6). Authenticate with the web view's session cookie \
                (state-changing requests also need the X-CSRF-Token header from GET /session), HTTP Basic with a \
                user's name and password, or Bearer with an integration token. Errors are \
                {\"error\":{\"code\",\"message\",\"field\"}}. Lists are newest first with ?limit=&after=.",
        },
        "servers": [{"url": "/api/v1"}],
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "jd_session"},
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "responses": {"Error": {"description": "{\"error\":{\"code\",\"message\",\"field\"}}"}},
        },
        "security": [{"session": []}, {"basic": []}, {"bearer": []}],
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_the_main_endpoints() {
        let doc = openapi_document();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/devices",
            "/reports/{id}/dispatch",
            "/evidence/{id}/content",
            "/lookup/{kind}",
            "/events",
            "/users",
            "/public/tips",
            "/public/tips/{code}",
            "/reports/{id}/feedback",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        assert_eq!(doc["paths"]["/session"]["post"]["requestBody"]["description"], "{name,password}");
        assert_eq!(doc["paths"]["/public/tips"]["post"]["security"], json!([]), "no login for citizens");
    }
}
