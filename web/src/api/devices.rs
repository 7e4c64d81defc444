//! `GET /api/v1/devices` (each phone with its live position, presence and duty) and
//! `GET /api/v1/devices/{id}/track?from=&to=` (a GeoJSON line of its points), for the web view
//! and integrations.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use axum::{Router, http::header};
use jiandu_store::{Device, LivePosition, Role, now_ms};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{ApiError, Caller};

/// Routes of this resource.
pub fn routes() -> Router<AppState> {
    Router::new().route("/devices", get(list)).route("/devices/{id}/track", get(track))
}

/// Who may read positions: the desk, leaders, admins, and integrations.
const READERS: &[Role] = &[Role::Dispatcher, Role::Leader, Role::Admin];

/// A device as the web view and integrations see it.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    /// Device id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Staff id of the inspector carrying it.
    pub staff: Option<String>,
    /// `available`, `busy`, `off_duty`, `offline`, `stale`, `revoked` or `unknown` (never reported).
    pub state: &'static str,
    /// Presence.
    pub online: bool,
    /// Duty from the newest heartbeat.
    pub duty: Option<String>,
    /// Newest position `{ts, lat, lon, acc, spd, hdg, bat}`.
    pub position: Option<Value>,
    /// When any heartbeat last arrived.
    pub last_seen: Option<i64>,
}

/// The display state of a device from its live row.
pub fn state_of(device: &Device, live: Option<&LivePosition>) -> &'static str {
    if device.revoked_at.is_some() {
        return "revoked";
    }
    let Some(live) = live else { return "unknown" };
    if !live.online {
        return "offline";
    }
    if live.stale {
        return "stale";
    }
    match live.position.as_ref().and_then(|p| p.duty.as_deref()) {
        Some("busy") => "busy",
        Some("off") => "off_duty",
        _ => "available",
    }
}

fn view(device: Device, live: Option<LivePosition>) -> DeviceView {
    let state = state_of(&device, live.as_ref());
    let position = live.as_ref().and_then(|l| l.position.as_ref()).map(
        |p| json!({"ts": p.ts, "lat": p.lat, "lon": p.lon, "acc": p.acc, "spd": p.spd, "hdg": p.hdg, "bat": p.bat}),
    );
    DeviceView {
        id: device.id,
        name: device.name,
        staff: device.staff_id,
        state,
        online: live.as_ref().is_some_and(|l| l.online),
        duty: live.as_ref().and_then(|l| l.position.as_ref()).and_then(|p| p.duty.clone()),
        position,
        last_seen: live.and_then(|l| l.last_seen),
    }
}

/// `?limit=&after=` for devices: ordered by id, up to 5000 a page (the live map pages through all).
#[derive(Debug, Deserialize)]
struct DevicePage {
    limit: Option<i64>,
    after: Option<String>,
}

async fn list(
    caller: Caller,
    State(s): State<AppState>,
    Query(page): Query<DevicePage>,
) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, true)?;
    let limit = page.limit.unwrap_or(500);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be within 1..=5000, got {limit}")));
    }
    let rows = s.store.devices_with_live(page.after.as_deref().unwrap_or(""), limit).await?;
    let next = if rows.len() as i64 == limit { rows.last().map(|(d, _)| d.id.clone()) } else { None };
    let items: Vec<DeviceView> = rows.into_iter().map(|(d, l)| view(d, l)).collect();
    Ok(Json(json!({ "items": items, "next": next })))
}

/// `?from=&to=` in Unix epoch ms; defaults to the last 24 hours.
#[derive(Debug, Deserialize)]
struct TrackQuery {
    from: Option<i64>,
    to: Option<i64>,
}

/// Most points in one track answer.
const TRACK_LIMIT: i64 = 20_000;

async fn track(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<TrackQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(READERS, true)?;
    let to = q.to.unwrap_or_else(now_ms);
    let from = q.from.unwrap_or(to - 86_400_000);
    if from > to {
        return Err(ApiError::invalid("from", format!("must not be after to ({from} > {to})")));
    }
    if s.store.device(&id).await?.is_none() {
        return Err(ApiError::not_found("device", &id));
    }
    let points = s.store.track(&id, from, to, TRACK_LIMIT).await?;
    let coordinates: Vec<[f64; 2]> = points.iter().map(|p| [p.lon, p.lat]).collect();
    let times: Vec<i64> = points.iter().map(|p| p.ts).collect();
    let geojson = json!({
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": coordinates},
        "properties": {"device": id, "from": from, "to": to, "points": points.len(), "times": times,
                       "truncated": points.len() as i64 == TRACK_LIMIT},
    });
    Ok(([(header::CONTENT_TYPE, "application/geo+json")], Json(geojson)))
}
