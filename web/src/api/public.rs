//! `/api/v1/public/tips`: the one way in for citizens, without an account (issue 19).
//!
//! `POST /public/tips` takes a tip as JSON or as a multipart form (its text fields plus up to
//! [`MAX_PHOTOS`] `photo` parts) and answers `{code, secret, status}` once; the tip becomes a
//! report of source `public` that the dispatcher offers like any other (or, when it names its
//! place only in words, that the desk places first), and its photos become evidence with their
//! ledger entries and signed receipts like a phone's upload, after their metadata (EXIF GPS,
//! camera serial, owner) is removed: the hash and receipt cover the bytes kept.
//! `GET /public/tips/{code}` with `X-Tip-Secret` tells the reporter where the tip stands and
//! what the office answered, nothing internal. [`crate::abuse`] limits both.
//!
//! Nothing here logs the submitter's address or contact: the address lives only in the
//! limiter's counters, the contact only in `public_tips` (read by leaders and admins, audited).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiandu_schemas::{PublicTip, STRIPPABLE_PHOTO_TYPES, parse_public_tip, strip_metadata};
use jiandu_store::{NewPublicTip, OpenUpload, ReportStatus, StoreError, UploadSpec, blob_key, new_id, now_ms};
use rand::Rng;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tracing::{error, info};

use super::ApiError;
use crate::AppState;
use crate::abuse::Verdict;

/// Most photos one tip may carry.
pub const MAX_PHOTOS: usize = 3;
/// Largest photo, in bytes (a phone camera's JPEG).
pub const MAX_PHOTO_BYTES: usize = 8 * 1024 * 1024;
/// Largest JSON body or total of a form's text fields, in bytes.
pub const MAX_FIELDS_BYTES: usize = 32 * 1024;
/// Largest request body: the photos, the fields and the form's framing.
pub const MAX_BODY_BYTES: usize = MAX_PHOTOS * MAX_PHOTO_BYTES + MAX_FIELDS_BYTES + 64 * 1024;
/// Submissions with the same text and place within this many minutes become one report.
pub const FOLD_WINDOW_MS: i64 = 30 * 60 * 1000;
/// The request header carrying a tip's secret (never the URL: URLs end up in logs and history).
pub const SECRET_HEADER: &str = "x-tip-secret";
/// The request header carrying a proof of work (`{challenge}:{nonce}`).
pub const PROOF_HEADER: &str = "x-tip-proof";
/// The response header carrying a challenge to solve.
pub const CHALLENGE_HEADER: &str = "x-tip-challenge";

/// Crockford's base 32: no I, L, O or U to misread when a citizen types a code off paper.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters of a code after its `T` (50 random bits: codes are not guessable one by one,
/// and failed follow-ups are limited per address).
const CODE_CHARS: usize = 10;
/// Characters of a secret (100 random bits), shown in groups of five.
const SECRET_CHARS: usize = 20;

/// The public routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/public/tips", post(submit).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)))
        .route("/public/tips/challenge", get(challenge))
        .route("/public/tips/{code}", get(status))
}

fn random_chars(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n).map(|_| ALPHABET[rng.random_range(0..32)] as char).collect()
}

/// Upper-cases and drops separators, reading the letters people confuse with digits as digits.
fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect()
}

/// SHA-256 of the normalised secret, lowercase hex (what `public_tips` keeps).
fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(normalise(secret).as_bytes()))
}

/// Equal without an early exit, so the time taken does not tell how much of a secret matched.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whitespace and case evened out, for comparing what two citizens typed.
fn evened(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// The fold key: the text evened out, and the place: the point to about 100 m, or for a tip
/// without one the place in words evened out.
fn fold_key(t: &PublicTip) -> String {
    let place = match (t.point, &t.place) {
        (Some((lat, lon)), _) => format!("{lat:.3}|{lon:.3}"),
        (None, place) => format!("place|{}", evened(place.as_deref().unwrap_or_default())),
    };
    hex::encode(Sha256::digest(format!("{}|{place}", evened(&t.text)).as_bytes()))
}

/// The submitter's address for the limiter: the peer, or through `[web] trusted_proxies` the
/// client they forwarded for (the same rule as login counting).
fn client_ip(s: &AppState, req: &Request) -> Option<IpAddr> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())?;
    Some(crate::client_ip(&s.ui.trusted_proxies, req.headers(), peer))
}

/// 429 with `Retry-After` for the public endpoints.
fn too_many(wait: u64) -> Response {
    let mut resp = ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "rate_limited",
        message: format!("too many tips or follow-ups from here; try again in {wait} s"),
        field: None,
    }
    .into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
    resp
}

/// 428 with a challenge to solve (body and `X-Tip-Challenge`).
fn challenge_required(challenge: String, difficulty: u32) -> Response {
    let body = json!({
        "error": {"code": "challenge", "field": "X-Tip-Proof",
            "message": format!("many tips from here: solve the challenge, then send the tip again with \
                X-Tip-Proof: {{challenge}}:{{nonce}}, where SHA-256 of that text starts with {difficulty} zero bits")},
        "challenge": {"token": challenge, "difficulty": difficulty},
    });
    let mut resp = (StatusCode::PRECONDITION_REQUIRED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(CHALLENGE_HEADER, v);
    }
    resp
}

/// `GET /api/v1/public/tips/challenge`: a fresh challenge, for clients that solve it up front.
async fn challenge(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"token": s.tips.challenge(), "difficulty": s.tips.limits().difficulty}))
}

/// A photo as received, checked, its metadata removed.
struct Photo {
    mime: String,
    bytes: axum::body::Bytes,
    /// What [`strip_metadata`] removed (`exif`, `xmp`…).
    removed: Vec<&'static str>,
}

/// The magic numbers of the photo types we take: the declared type must match the bytes, so a
/// page or a script never passes as a photo.
fn sniffed_matches(mime: &str, b: &[u8]) -> bool {
    match mime {
        "image/jpeg" => b.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/png" => b.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/gif" => b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a"),
        "image/webp" => b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP",
        "image/heic" | "image/heif" => b.len() >= 12 && &b[4..8] == b"ftyp",
        _ => false,
    }
}

/// Reads a multipart form: text fields into a JSON object (`lat`, `lon` as numbers,
/// `anonymous` as a boolean), `photo` parts checked and kept.
async fn read_form(mut form: Multipart) -> Result<(Value, Vec<Photo>), ApiError> {
    let mut fields = Map::new();
    let mut photos = Vec::new();
    let mut text_bytes = 0usize;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(form_error(e)),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "photo" || name == "photos" {
            let i = photos.len();
            let at = format!("photos[{i}]");
            if i >= MAX_PHOTOS {
                return Err(ApiError::invalid("photos", format!("at most {MAX_PHOTOS} photos")));
            }
            let mime = field.content_type().unwrap_or_default().to_ascii_lowercase();
            // The evidence allow-list's image types whose metadata we can remove.
            if !STRIPPABLE_PHOTO_TYPES.contains(&mime.as_str()) {
                return Err(ApiError::invalid(
                    at,
                    format!("{mime:?} is not accepted as a photo; one of {}", STRIPPABLE_PHOTO_TYPES.join(", ")),
                ));
            }
            let mut field = field;
            let mut bytes = Vec::new();
            loop {
                match field.chunk().await {
                    Ok(Some(c)) => {
                        if bytes.len() + c.len() > MAX_PHOTO_BYTES {
                            return Err(ApiError::invalid(at, format!("larger than {MAX_PHOTO_BYTES} bytes")));
                        }
                        bytes.extend_from_slice(&c);
                    }
                    Ok(None) => break,
                    Err(e) => return Err(form_error(e)),
                }
            }
            if bytes.is_empty() {
                return Err(ApiError::invalid(at, "empty"));
            }
            if !sniffed_matches(&mime, &bytes) {
                return Err(ApiError::invalid(at, format!("the content is not {mime}")));
            }
            // Before anything hashes or keeps the bytes: where the citizen stood, the camera's
            // serial and the owner's name must not reach the office (DESIGN §4).
            let clean = strip_metadata(&mime, &bytes).map_err(|e| ApiError::invalid(at, e.message))?;
            photos.push(Photo { mime, bytes: clean.bytes.into(), removed: clean.removed });
            continue;
        }
        if !matches!(name.as_str(), "kind" | "text" | "lat" | "lon" | "place" | "plate" | "contact" | "anonymous") {
            return Err(ApiError::invalid(clip(&name), "unknown field"));
        }
        let value = field.text().await.map_err(form_error)?;
        text_bytes += value.len();
        if text_bytes > MAX_FIELDS_BYTES {
            return Err(ApiError::invalid(name, format!("the form's text fields exceed {MAX_FIELDS_BYTES} bytes")));
        }
        let v = match name.as_str() {
            "lat" | "lon" if value.trim().is_empty() => continue,
            "lat" | "lon" => match value.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => json!(n),
                _ => {
                    return Err(ApiError::invalid(
                        name,
                        format!("must be a number of degrees, got {:?}", clip(&value)),
                    ));
                }
            },
            "anonymous" => json!(matches!(value.trim(), "1" | "true" | "on" | "yes")),
            _ => json!(value),
        };
        fields.insert(name, v);
    }
    Ok((Value::Object(fields), photos))
}

/// A field name or value cut short for an error message.
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

fn form_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message: format!("the request is larger than {MAX_BODY_BYTES} bytes"),
            field: Some("body".into()),
        };
    }
    ApiError::invalid("body", format!("not a readable multipart form: {}", clip(&e.body_text())))
}

/// `POST /api/v1/public/tips`: JSON `{kind,text,lat?,lon?,place?,plate?,contact?,anonymous?}`
/// (a point, or the place in words, or both) or a multipart form of the same fields plus
/// `photo` parts. 201 `{code,secret,status,photos}`.
async fn submit(State(s): State<AppState>, req: Request) -> Response {
    let resp = match submit_inner(&s, req).await {
        Ok(r) | Err(r) => r,
    };
    let result = match resp.status() {
        StatusCode::CREATED => "stored",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::PRECONDITION_REQUIRED => "challenged",
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::PAYLOAD_TOO_LARGE => "invalid",
        _ => "failed",
    };
    metrics::counter!("jiandu_public_tips_total", "result" => result).increment(1);
    resp
}

async fn submit_inner(s: &AppState, req: Request) -> Result<Response, Response> {
    let ip = client_ip(s, &req);
    let proof = req.headers().get(PROOF_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match s.tips.submission(ip, proof.as_deref()) {
        Verdict::Pass => {}
        Verdict::Wait(wait) => return Err(too_many(wait)),
        Verdict::Challenge(c) => return Err(challenge_required(c, s.tips.limits().difficulty)),
    }
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let (value, photos) = if content_type.starts_with("multipart/form-data") {
        let form = Multipart::from_request(req, s).await.map_err(|e| {
            ApiError::invalid("body", format!("not a multipart form: {}", clip(&e.body_text()))).into_response()
        })?;
        read_form(form).await.map_err(IntoResponse::into_response)?
    } else if content_type.starts_with("application/json") {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_FIELDS_BYTES).await.map_err(|_| {
            ApiError::invalid("body", format!("a JSON tip is at most {MAX_FIELDS_BYTES} bytes; send photos as a form"))
                .into_response()
        })?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid("body", format!("invalid JSON: {e}")).into_response())?;
        (v, Vec::new())
    } else {
        return Err(ApiError::invalid("Content-Type", "send application/json, or multipart/form-data with photos")
            .into_response());
    };
    let tip = parse_public_tip(value).map_err(|e| ApiError::from(e).into_response())?;
    if !photos.is_empty() && s.ui.platform_key.is_none() {
        return Err(ApiError::invalid("photos", "this server takes no photos (no platform key)").into_response());
    }
    // Blobs first: content-addressed and write-once, so storing one twice is harmless, and the
    // tip is stored only once its photos are safe.
    for (i, p) in photos.iter().enumerate() {
        let sha = hex::encode(Sha256::digest(&p.bytes));
        let blobs = s.store.blobs().map_err(|e| ApiError::from(e).into_response())?;
        match blobs.put_new(&blob_key(&sha), p.bytes.clone()).await {
            Ok(()) | Err(StoreError::BlobExists { .. }) => {}
            Err(e) => {
                error!(photo = i, error = %e, "storing a public tip's photo failed");
                return Err(ApiError::internal("storing a photo failed").into_response());
            }
        }
    }
    let code = format!("T{}", random_chars(CODE_CHARS));
    let secret_raw = random_chars(SECRET_CHARS);
    let secret = secret_raw
        .as_bytes()
        .chunks(5)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("-");
    let stored = s
        .store
        .public_tip_submit(NewPublicTip {
            code: code.clone(),
            secret_sha256: secret_hash(&secret),
            kind: tip.kind.clone(),
            text: tip.text.clone(),
            lat: tip.point.map(|p| p.0),
            lon: tip.point.map(|p| p.1),
            place: tip.place.clone(),
            plate: tip.plate.clone(),
            contact: tip.contact.clone(),
            anonymous: tip.anonymous,
            photos: photos.len() as i64,
            fold_key: fold_key(&tip),
            fold_window_ms: FOLD_WINDOW_MS,
        })
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    let mut evidence = Vec::new();
    if let Some(key) = &s.ui.platform_key {
        for p in &photos {
            let sha = hex::encode(Sha256::digest(&p.bytes));
            let now = now_ms();
            let size = p.bytes.len() as i64;
            let upload = OpenUpload {
                evid: new_id(),
                device: "public".into(),
                spec: UploadSpec {
                    sha256: sha,
                    size,
                    mime: p.mime.clone(),
                    captured_at: now,
                    lat: tip.point.map(|p| p.0),
                    lon: tip.point.map(|p| p.1),
                    report_id: Some(stored.report_id.clone()),
                    chunk_size: size,
                    chunks: 1,
                },
                staging: String::new(),
                opened_at: now,
                touched_at: now,
            };
            let mut note = Map::new();
            note.insert("metadata_removed".into(), json!(true));
            note.insert("removed".into(), json!(p.removed));
            match s.store.evidence_record_noted(&upload, key, note).await {
                Ok(e) => evidence.push(e.evid),
                Err(e) => error!(report = %stored.report_id, error = %e, "recording a public tip's photo failed"),
            }
        }
    }
    info!(report = %stored.report_id, code = %stored.code, photos = evidence.len(), folded = stored.folded, "public tip received");
    let body = json!({
        "code": stored.code,
        "secret": secret,
        "status": "received",
        "photos": evidence.len(),
        "follow_up": "/tip#/follow",
    });
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Where a tip stands, in the reporter's three words.
fn public_status(s: ReportStatus) -> &'static str {
    match s {
        ReportStatus::New => "received",
        ReportStatus::Dispatching | ReportStatus::Assigned | ReportStatus::Unassigned => "being_handled",
        ReportStatus::Completed | ReportStatus::Cancelled => "closed",
    }
}

/// `GET /api/v1/public/tips/{code}` with `X-Tip-Secret`: `{code,status,submitted_at,feedback}`.
/// An unknown code and a wrong secret get the same 404, and count against the address.
async fn status(State(s): State<AppState>, Path(code): Path<String>, req: Request) -> Response {
    let ip = client_ip(&s, &req);
    match lookup(&s, ip, &code, req.headers()).await {
        Ok(r) | Err(r) => r,
    }
}

async fn lookup(s: &AppState, ip: Option<IpAddr>, code: &str, headers: &HeaderMap) -> Result<Response, Response> {
    if let Some(wait) = s.tips.lookup_allowed(ip) {
        return Err(too_many(wait));
    }
    let Some(secret) = headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok()).filter(|v| !v.trim().is_empty()) else {
        return Err(ApiError::invalid("X-Tip-Secret", "send the tip's secret in this header").into_response());
    };
    let code = normalise(code);
    let found = if code.len() <= 2 * CODE_CHARS && secret.len() <= 4 * SECRET_CHARS {
        s.store.public_tip_status(&code).await.map_err(|e| ApiError::from(e).into_response())?
    } else {
        None
    };
    let given = secret_hash(secret);
    // An unknown code is compared against a hash nobody holds, so both answers take as long.
    let expected = found.as_ref().map(|f| f.secret_sha256.clone()).unwrap_or_else(|| "0".repeat(64));
    let Some(found) = found.filter(|_| same(&given, &expected)) else {
        s.tips.lookup_failed(ip);
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: "no tip with this code and secret".into(),
            field: None,
        }
        .into_response());
    };
    let feedback: Vec<Value> = found.feedback.iter().map(|f| json!({"text": f.text, "ts": f.ts})).collect();
    let body = json!({
        "code": code,
        "status": public_status(found.status),
        "submitted_at": found.created_at,
        "feedback": feedback,
    });
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_read_alike_when_typed_loosely() {
        assert_eq!(secret_hash("abcde-f0i1l-2345"), secret_hash("ABCDE F011 12345"));
        assert!(same(&secret_hash("x"), &secret_hash("X")));
        assert!(!same(&secret_hash("x"), &secret_hash("y")));
    }

    #[test]
    fn photos_must_be_what_they_say() {
        assert!(sniffed_matches("image/jpeg", &[0xFF, 0xD8, 0xFF, 0xE0]));
        assert!(!sniffed_matches("image/jpeg", b"<html><script>"));
        assert!(!sniffed_matches("image/svg+xml", b"<svg"));
    }
}
