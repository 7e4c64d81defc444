//! `/api/v1/evidence` and `/api/v1/ledger/key`: stored evidence for the office, with its receipt
//! and chain of custody, and the public key that receipts are checked against.
//!
//! Nothing here changes or deletes evidence (there is no such API). Every view of an item's
//! record and every download of its content is appended to the ledger first, with who asked and
//! which bytes were sent, so the custody log shown by `GET /api/v1/evidence/{id}` is complete.
//! Content is streamed from the object store with HTTP Range support, so a browser can seek in a
//! video without fetching all of it.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jiandu_schemas::payload::EVIDENCE_MIME_TYPES;
use jiandu_store::{Access, Evidence, Role};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Caller, Page};
use crate::AppState;

/// Roles that may see evidence.
const READERS: &[Role] = &[Role::Dispatcher, Role::Leader, Role::Admin, Role::Auditor];

/// The evidence routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/evidence", get(list))
        .route("/evidence/{id}", get(detail))
        .route("/evidence/{id}/content", get(content))
        .route("/ledger/key", get(platform_key))
}

/// `?report=&device=&limit=&after=` of the list (not a flattened [`Page`]: a flattened
/// struct sees query values only as strings, so `limit=1` would not parse).
#[derive(Debug, Deserialize)]
struct ListQuery {
    report: Option<String>,
    device: Option<String>,
    limit: Option<i64>,
    after: Option<String>,
}

fn view(e: &Evidence) -> Value {
    json!({
        "id": e.evid, "device": e.device, "sha256": e.sha256, "size": e.size, "mime": e.mime,
        "captured_at": e.captured_at, "lat": e.lat, "lon": e.lon, "report_id": e.report_id,
        "received_at": e.received_at, "ledger_seq": e.ledger_seq, "key_id": e.key_id,
    })
}

/// `GET /api/v1/evidence`: stored items, newest first, optionally of one report or device.
async fn list(caller: Caller, State(s): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, false)?;
    let report = q.report.as_deref().filter(|v| !v.is_empty());
    let device = q.device.as_deref().filter(|v| !v.is_empty());
    let limit = Page { limit: q.limit, after: None }.limit();
    let items = s.store.evidence_list(report, device, q.after.as_deref(), limit).await?;
    let next = (items.len() as i64 == limit).then(|| items.last().map(|e| e.evid.clone())).flatten();
    Ok(Json(json!({"items": items.iter().map(view).collect::<Vec<_>>(), "next": next})))
}

/// `GET /api/v1/evidence/{id}`: the record, its signed receipt and its custody log (this view
/// included: it is recorded before the log is read).
async fn detail(caller: Caller, State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require(READERS, false)?;
    let e = s.store.evidence_get(&id).await?;
    s.store.evidence_access(&id, caller.name(), Access::Viewed, json!({})).await?;
    let custody = s.store.evidence_custody(&id).await?;
    let custody: Vec<Value> = custody
        .iter()
        .map(|c| json!({"seq": c.seq, "ts": c.ts, "kind": c.kind, "actor": c.actor, "detail": c.body, "hash": c.hash}))
        .collect();
    Ok(Json(json!({"evidence": view(&e), "receipt": e.receipt(), "custody": custody})))
}

/// A single byte range asked for with `Range: bytes=…`, resolved against the size.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    /// No usable Range header: the whole content.
    All,
    /// Bytes `start..end` (end exclusive).
    Part(u64, u64),
    /// A range that lies outside the content (416).
    Unsatisfiable,
}

/// Parses one `bytes=a-b`, `bytes=a-` or `bytes=-n` range; several ranges, other units or
/// nonsense are answered with the whole content, as RFC 9110 allows.
fn wanted(headers: &HeaderMap, size: u64) -> Wanted {
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Wanted::All };
    let Some(spec) = spec.trim().strip_prefix("bytes=") else { return Wanted::All };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((a, b)) = spec.split_once('-') else { return Wanted::All };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match parse(b) {
            Some(0) => Wanted::Unsatisfiable,
            Some(n) if size > 0 => Wanted::Part(size.saturating_sub(n), size),
            Some(_) => Wanted::Unsatisfiable,
            None => Wanted::All,
        },
        (false, true) => match parse(a) {
            Some(start) if start < size => Wanted::Part(start, size),
            Some(_) => Wanted::Unsatisfiable,
            None => Wanted::All,
        },
        (false, false) => match (parse(a), parse(b)) {
            (Some(start), Some(last)) if start <= last && start < size => Wanted::Part(start, last.min(size - 1) + 1),
            (Some(start), Some(last)) if start <= last => Wanted::Unsatisfiable,
            _ => Wanted::All,
        },
        (true, true) => Wanted::All,
    }
}

/// The policy of evidence content: a sandbox (no script, no same-origin access) that loads nothing.
const CONTENT_CSP: &str = "sandbox; default-src 'none'; img-src 'self'; media-src 'self'; frame-ancestors 'none'";

/// `GET /api/v1/evidence/{id}/content`: the bytes, with Range support and the stored
/// Content-Type (allow-listed media inline, anything else as an `attachment` of
/// `application/octet-stream`), `nosniff` and `Content-Security-Policy: sandbox`; the download (and its range) is recorded in the ledger before any byte is sent.
async fn content(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(READERS, false)?;
    let e = s.store.evidence_get(&id).await?;
    let size = e.size.max(0) as u64;
    let (start, end, partial) = match wanted(&headers, size) {
        Wanted::All => (0, size, false),
        Wanted::Part(a, b) => (a, b, true),
        Wanted::Unsatisfiable => {
            let mut resp = ApiError {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                code: "range_not_satisfiable",
                message: format!(
                    "the content is {size} bytes; ask for a range within bytes 0-{}",
                    size.saturating_sub(1)
                ),
                field: Some("Range".into()),
            }
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let blobs = s.store.blobs()?;
    let stream = blobs.read_range(&e.sha256, start..end).await?;
    let detail = if partial {
        json!({"range": format!("bytes={start}-{}", end.saturating_sub(1)), "bytes": end - start})
    } else {
        json!({"bytes": size})
    };
    s.store.evidence_access(&id, caller.name(), Access::Downloaded, detail).await?;

    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = if partial { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let h = resp.headers_mut();
    // Only allow-listed media is shown in the browser, with its own type; anything else (stored
    // before the allow-list, or put there by hand) is a download of opaque bytes. The sandbox
    // policy keeps even a mislabelled file from running script with the viewer's session.
    let media = EVIDENCE_MIME_TYPES.contains(&e.mime.as_str());
    let (mime, disposition) =
        if media { (e.mime.as_str(), "inline") } else { ("application/octet-stream", "attachment") };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{disposition}; filename=\"{}\"", e.evid)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", e.sha256)) {
        h.insert(header::ETAG, etag);
    }
    if partial && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// `GET /api/v1/ledger/key`: the platform's current public key (any logged-in caller), to
/// check receipts offline with `jiandu receipt verify --public-key`.
async fn platform_key(_caller: Caller, State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    match s.store.platform_key(None).await? {
        Some(k) => Ok(Json(serde_json::to_value(k).map_err(ApiError::internal)?)),
        None => Err(ApiError::not_found("platform key", "current")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Wanted {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        wanted(&h, size)
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(wanted(&HeaderMap::new(), 10), Wanted::All);
        assert_eq!(range("bytes=0-3", 10), Wanted::Part(0, 4));
        assert_eq!(range("bytes=4-", 10), Wanted::Part(4, 10));
        assert_eq!(range("bytes=-3", 10), Wanted::Part(7, 10));
        assert_eq!(range("bytes=-30", 10), Wanted::Part(0, 10));
        assert_eq!(range("bytes=8-100", 10), Wanted::Part(8, 10));
        assert_eq!(range("bytes=10-", 10), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=10-12", 10), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=-0", 10), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=5-2", 10), Wanted::All);
        assert_eq!(range("bytes=0-1,4-5", 10), Wanted::All);
        assert_eq!(range("items=0-1", 10), Wanted::All);
        assert_eq!(range("bytes=x-1", 10), Wanted::All);
    }
}
