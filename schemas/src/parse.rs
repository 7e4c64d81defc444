//! Raw bytes in, typed and checked values out ("parse, don't validate").
//!
//! Each `parse_*` function deserialises one upstream payload with `serde_path_to_error`, so a
//! type error names its path (`hb[2].ts`), then checks ranges and units that serde cannot
//! (latitude bounds, milliseconds not seconds, m/s not km/h, ids usable in topics). On failure
//! the [`PayloadError`] names the field starting at the payload's root name (`hb`, `report`,
//! `asg`, `lookup`, `meta`, `presence`, `owntracks`), ready to be sent back on `inbox/error`.

use std::fmt::Write as _;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use serde_path_to_error::Segment;

use crate::PayloadError;
use crate::payload::{
    AssignmentStatus, EVIDENCE_MIME_TYPES, EvidenceMeta, Heartbeat, IntegrationReport, LookupRequest, MAX_BACKLOG,
    MAX_CHUNK_BYTES, MAX_LABEL_CHARS, MAX_MIME_CHARS, MAX_PLATE_CHARS, MAX_QUERY_CHARS, MAX_SEQ, MAX_TEXT_CHARS,
    OwnTracksLocation, Presence, Report, TS_MAX, TS_MIN,
};
use crate::topic::{MAX_ID_LEN, valid_id};

/// Parses `jd/v1/dev/{dev}/hb`: one heartbeat object or an array of 1..=[`MAX_BACKLOG`], kept
/// in the order sent. Fields are named `hb.lat` for an object and `hb[3].lat` in an array.
pub fn parse_heartbeats(bytes: &[u8]) -> Result<Vec<Heartbeat>, PayloadError> {
    let is_array = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if !is_array {
        let hb: Heartbeat = from_json("hb", bytes)?;
        check_heartbeat("hb", &hb)?;
        return Ok(vec![hb]);
    }
    let hbs: Vec<Heartbeat> = from_json("hb", bytes)?;
    if hbs.is_empty() {
        return Err(PayloadError::new("hb", "empty array; send one heartbeat object or an array of 1..=1000"));
    }
    if hbs.len() > MAX_BACKLOG {
        return Err(PayloadError::new(
            "hb",
            format!("{} heartbeats in one message; at most {MAX_BACKLOG}, split the backlog", hbs.len()),
        ));
    }
    for (i, hb) in hbs.iter().enumerate() {
        check_heartbeat(&format!("hb[{i}]"), hb)?;
    }
    let with_seq = hbs[0].seq.is_some();
    if let Some(i) = hbs.iter().position(|h| h.seq.is_some() != with_seq) {
        let (field, state) = if with_seq { ("missing", "hb[0] has") } else { ("present", "hb[0] has none") };
        return Err(PayloadError::new(
            format!("hb[{i}].seq"),
            format!("{field}, but {state}; in one message every heartbeat carries seq or none does"),
        ));
    }
    Ok(hbs)
}

/// Parses `jd/v1/dev/{dev}/presence` (root `presence`).
pub fn parse_presence(bytes: &[u8]) -> Result<Presence, PayloadError> {
    let p: Presence = from_json("presence", bytes)?;
    epoch_ms("presence", "ts", p.ts)?;
    Ok(p)
}

/// Parses `jd/v1/dev/{dev}/report` (root `report`).
pub fn parse_report(bytes: &[u8]) -> Result<Report, PayloadError> {
    let r: Report = from_json("report", bytes)?;
    let p = "report";
    id(p, "id", &r.id)?;
    label(p, "kind", &r.kind, MAX_LABEL_CHARS)?;
    text(p, "text", &r.text, MAX_TEXT_CHARS)?;
    lat(p, "lat", r.lat)?;
    lon(p, "lon", r.lon)?;
    epoch_ms(p, "ts", r.ts)?;
    if let Some(plate) = &r.plate {
        label(p, "plate", plate, MAX_PLATE_CHARS)?;
    }
    Ok(r)
}

/// Parses `jd/v1/reports`, a tip from another system (root `report`).
pub fn parse_integration_report(bytes: &[u8]) -> Result<IntegrationReport, PayloadError> {
    let r: IntegrationReport = from_json("report", bytes)?;
    let p = "report";
    id(p, "id", &r.id)?;
    label(p, "kind", &r.kind, MAX_LABEL_CHARS)?;
    text(p, "text", &r.text, MAX_TEXT_CHARS)?;
    lat(p, "lat", r.lat)?;
    lon(p, "lon", r.lon)?;
    epoch_ms(p, "ts", r.ts)?;
    label(p, "source", &r.source, MAX_LABEL_CHARS)?;
    Ok(r)
}

/// Parses `jd/v1/dev/{dev}/asg/{assignment}` (root `asg`).
pub fn parse_assignment_status(bytes: &[u8]) -> Result<AssignmentStatus, PayloadError> {
    let a: AssignmentStatus = from_json("asg", bytes)?;
    epoch_ms("asg", "ts", a.ts)?;
    if let Some(note) = &a.note {
        text("asg", "note", note, MAX_TEXT_CHARS)?;
    }
    Ok(a)
}

/// Parses `jd/v1/dev/{dev}/lookup` (root `lookup`).
pub fn parse_lookup(bytes: &[u8]) -> Result<LookupRequest, PayloadError> {
    let l: LookupRequest = from_json("lookup", bytes)?;
    let n = l.corr.chars().count();
    if n == 0 || n > MAX_ID_LEN || l.corr.chars().any(char::is_control) {
        return Err(err(
            "lookup",
            "corr",
            format!("must be 1..={MAX_ID_LEN} printable characters, got {}", shown(&l.corr)),
        ));
    }
    label("lookup", "q", &l.q, MAX_QUERY_CHARS)?;
    match (l.lat, l.lon) {
        (Some(la), Some(lo)) => {
            lat("lookup", "lat", la)?;
            lon("lookup", "lon", lo)?;
        }
        (Some(_), None) => return Err(err("lookup", "lon", "missing (lat and lon go together)")),
        (None, Some(_)) => return Err(err("lookup", "lat", "missing (lat and lon go together)")),
        (None, None) => {}
    }
    Ok(l)
}

/// Parses `jd/v1/dev/{dev}/ev/{evid}/meta` (root `meta`); callers apply their own size limit.
pub fn parse_evidence_meta(bytes: &[u8]) -> Result<EvidenceMeta, PayloadError> {
    let mut m: EvidenceMeta = from_json("meta", bytes)?;
    let p = "meta";
    if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(err(
            p,
            "sha256",
            format!("must be 64 lowercase hex characters (SHA-256), got {}", shown(&m.sha256)),
        ));
    }
    if m.size == 0 {
        return Err(err(p, "size", "must be at least 1 byte, got 0"));
    }
    if m.mime.chars().count() > MAX_MIME_CHARS || !valid_mime(&m.mime) {
        return Err(err(p, "mime", format!("must look like type/subtype (e.g. image/jpeg), got {}", shown(&m.mime))));
    }
    m.mime.make_ascii_lowercase();
    if !EVIDENCE_MIME_TYPES.contains(&m.mime.as_str()) {
        return Err(err(
            p,
            "mime",
            format!(
                "{} is not accepted as evidence; send a photo, video or sound recording, one of: {}",
                shown(&m.mime),
                EVIDENCE_MIME_TYPES.join(", ")
            ),
        ));
    }
    epoch_ms(p, "captured_at", m.captured_at)?;
    match (m.lat, m.lon) {
        (Some(la), Some(lo)) => {
            lat(p, "lat", la)?;
            lon(p, "lon", lo)?;
        }
        (Some(_), None) => return Err(err(p, "lon", "missing (lat and lon go together)")),
        (None, Some(_)) => return Err(err(p, "lat", "missing (lat and lon go together)")),
        (None, None) => {}
    }
    if let Some(r) = &m.report_id {
        id(p, "report_id", r)?;
    }
    if m.chunk_size == 0 || m.chunk_size as usize > MAX_CHUNK_BYTES {
        return Err(err(
            p,
            "chunk_size",
            format!("must be within 1..={MAX_CHUNK_BYTES} bytes (256 KiB), got {}", m.chunk_size),
        ));
    }
    let expected = m.size.div_ceil(u64::from(m.chunk_size));
    if u64::from(m.chunks) != expected {
        return Err(err(
            p,
            "chunks",
            format!(
                "must be ceil(size / chunk_size) = ceil({} / {}) = {expected}, got {}",
                m.size, m.chunk_size, m.chunks
            ),
        ));
    }
    Ok(m)
}

/// Checks that chunk `n` of an upload has the length `meta` promises: `n < chunks`, every chunk
/// but the last is exactly `chunk_size`, the last is the remainder.
pub fn check_chunk(meta: &EvidenceMeta, n: u32, len: usize) -> Result<(), PayloadError> {
    let field = || format!("chunk[{n}]");
    let Some(expected) = meta.chunk_len(n) else {
        let range = match meta.chunks {
            0 => "none".to_owned(),
            c => format!("0..={}", c - 1),
        };
        return Err(PayloadError::new(
            field(),
            format!("index out of range; meta declares {} chunks ({range})", meta.chunks),
        ));
    };
    if len as u64 != expected {
        return Err(PayloadError::new(
            field(),
            format!(
                "is {len} bytes, expected {expected} (size {}, chunk_size {}, {} chunks)",
                meta.size, meta.chunk_size, meta.chunks
            ),
        ));
    }
    Ok(())
}

/// Parses an OwnTracks message (root `owntracks`): `Ok(Some)` for a checked `_type:"location"`
/// converted to a heartbeat, `Ok(None)` for other types (`transition`, `waypoint`, `lwt`, …).
pub fn parse_owntracks(bytes: &[u8]) -> Result<Option<Heartbeat>, PayloadError> {
    /// Just enough of an OwnTracks message to tell its type.
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "_type")]
        kind: Option<String>,
    }
    let p = "owntracks";
    let probe: Probe = from_json(p, bytes)?;
    match probe.kind.as_deref() {
        None => return Err(err(p, "_type", "missing")),
        Some("location") => {}
        Some(_) => return Ok(None),
    }
    let loc: OwnTracksLocation = from_json(p, bytes)?;
    lat(p, "lat", loc.lat)?;
    lon(p, "lon", loc.lon)?;
    let (min_s, max_s) = (TS_MIN / 1000, TS_MAX / 1000);
    if !(min_s..=max_s).contains(&loc.tst) {
        let msg = if (TS_MIN..=TS_MAX).contains(&loc.tst) {
            format!("looks like milliseconds; tst is Unix epoch seconds, got {}", loc.tst)
        } else {
            format!("must be Unix epoch seconds between 2000-01-01 and 2100-01-01 ({min_s}..={max_s}), got {}", loc.tst)
        };
        return Err(err(p, "tst", msg));
    }
    opt_range(p, "acc", loc.acc, 0.0, 100_000.0, " m")?;
    if let Some(v) = loc.vel {
        // OwnTracks sends -1 for unknown; only the upper bound and finiteness matter.
        range(p, "vel", v, f64::NEG_INFINITY, 360.0, " km/h")?;
    }
    if let Some(c) = loc.cog {
        range(p, "cog", c, f64::NEG_INFINITY, 360.0, " degrees")?;
    }
    opt_range(p, "alt", loc.alt, -1000.0, 10_000.0, " m")?;
    opt_range(p, "batt", loc.batt, 0.0, 100.0, " percent")?;
    Ok(Some(loc.to_heartbeat()))
}

/// Range and unit checks of one heartbeat whose fields are named under `prefix`.
fn check_heartbeat(prefix: &str, hb: &Heartbeat) -> Result<(), PayloadError> {
    if let Some(seq) = hb.seq
        && !(1..=MAX_SEQ).contains(&seq)
    {
        return Err(PayloadError::new(format!("{prefix}.seq"), format!("must be within 1..={MAX_SEQ}, got {seq}")));
    }
    epoch_ms(prefix, "ts", hb.ts)?;
    lat(prefix, "lat", hb.lat)?;
    lon(prefix, "lon", hb.lon)?;
    opt_range(prefix, "acc", hb.acc, 0.0, 100_000.0, " m")?;
    if let Some(spd) = hb.spd {
        range(prefix, "spd", spd, 0.0, 100.0, " m/s").map_err(|mut e| {
            if spd > 100.0 {
                e.message.push_str(" (km/h? the wire unit is m/s)");
            }
            e
        })?;
    }
    opt_range(prefix, "hdg", hb.hdg, 0.0, 360.0, " degrees")?;
    opt_range(prefix, "alt", hb.alt, -1000.0, 10_000.0, " m")?;
    opt_range(prefix, "bat", hb.bat, 0.0, 100.0, " percent")?;
    Ok(())
}

/// Deserialises `bytes` as `T`, turning serde errors into a [`PayloadError`] under `root`.
fn from_json<T: DeserializeOwned>(root: &str, bytes: &[u8]) -> Result<T, PayloadError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = field_path(root, e.path());
        json_error(root, field, e.into_inner())
    })?;
    de.end().map_err(|e| json_error(root, root.to_owned(), e))?;
    Ok(value)
}

/// Longest serde message passed on (serde quotes offending strings and unknown keys whole).
const MAX_MESSAGE_CHARS: usize = 400;
/// Longest field path passed on (map keys in it come from the sender).
const MAX_FIELD_CHARS: usize = 200;

/// `s` cut to `max` characters, marked with `…` when cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

/// Classifies a serde_json error: syntax errors belong to the root, data errors to `field`.
/// Both are cut to a bounded length: the error goes back to the sender on `inbox/error`.
fn json_error(root: &str, field: String, e: serde_json::Error) -> PayloadError {
    let field = clip(&field, MAX_FIELD_CHARS);
    let full = e.to_string();
    let bare = full.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())).unwrap_or(&full);
    let bare = &clip(bare, MAX_MESSAGE_CHARS);
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            PayloadError::new(root, format!("invalid JSON at line {} column {}: {bare}", e.line(), e.column()))
        }
        Category::Data => {
            let missing = bare.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`'));
            match missing {
                Some(name) => PayloadError::new(format!("{field}.{name}"), "missing"),
                None => PayloadError::new(field, bare),
            }
        }
    }
}

/// Renders a serde path as `root[3].lat`.
fn field_path(root: &str, path: &serde_path_to_error::Path) -> String {
    let mut s = root.to_owned();
    for seg in path.iter() {
        let _ = match seg {
            Segment::Seq { index } => write!(s, "[{index}]"),
            Segment::Map { key } => write!(s, ".{key}"),
            Segment::Enum { variant } => write!(s, ".{variant}"),
            Segment::Unknown => Ok(()),
        };
    }
    s
}

/// An error at `prefix.name`.
fn err(prefix: &str, name: &str, message: impl Into<String>) -> PayloadError {
    PayloadError::new(format!("{prefix}.{name}"), message)
}

/// A string for an error message: quoted, and cut short if long.
fn shown(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}…")
    }
}

/// `v` must be finite and within `min..=max`; `unit` is appended to the bounds in the message.
fn range(prefix: &str, name: &str, v: f64, min: f64, max: f64, unit: &str) -> Result<(), PayloadError> {
    if !v.is_finite() {
        return Err(err(prefix, name, format!("must be a finite number, got {v}")));
    }
    if v < min || v > max {
        let bounds = if min == f64::NEG_INFINITY {
            format!("at most {max}{unit}")
        } else {
            format!("within {min}..={max}{unit}")
        };
        return Err(err(prefix, name, format!("must be {bounds}, got {v}")));
    }
    Ok(())
}

/// [`range`] for an optional field.
fn opt_range(prefix: &str, name: &str, v: Option<f64>, min: f64, max: f64, unit: &str) -> Result<(), PayloadError> {
    v.map_or(Ok(()), |v| range(prefix, name, v, min, max, unit))
}

/// Latitude in WGS-84 degrees.
fn lat(prefix: &str, name: &str, v: f64) -> Result<(), PayloadError> {
    range(prefix, name, v, -90.0, 90.0, "")
}

/// Longitude in WGS-84 degrees.
fn lon(prefix: &str, name: &str, v: f64) -> Result<(), PayloadError> {
    range(prefix, name, v, -180.0, 180.0, "")
}

/// Unix epoch milliseconds in 2000..2100, with a hint when the value looks like seconds.
fn epoch_ms(prefix: &str, name: &str, v: i64) -> Result<(), PayloadError> {
    if (TS_MIN..=TS_MAX).contains(&v) {
        return Ok(());
    }
    let msg = if (940_000_000..=4_200_000_000).contains(&v) {
        format!("looks like seconds; {name} is Unix epoch milliseconds, got {v}")
    } else {
        format!("must be Unix epoch milliseconds between 2000-01-01 and 2100-01-01 ({TS_MIN}..={TS_MAX}), got {v}")
    };
    Err(err(prefix, name, msg))
}

/// An id that can appear in a topic ([`valid_id`]).
fn id(prefix: &str, name: &str, s: &str) -> Result<(), PayloadError> {
    if valid_id(s) {
        return Ok(());
    }
    Err(err(
        prefix,
        name,
        format!("must be 1..={MAX_ID_LEN} characters of A-Z a-z 0-9 _ . - not starting with '.', got {}", shown(s)),
    ))
}

/// A short non-blank label of at most `max` characters.
fn label(prefix: &str, name: &str, s: &str, max: usize) -> Result<(), PayloadError> {
    if s.trim().is_empty() {
        return Err(err(prefix, name, "must not be empty"));
    }
    text(prefix, name, s, max)
}

/// Free text of at most `max` characters (may be empty).
fn text(prefix: &str, name: &str, s: &str, max: usize) -> Result<(), PayloadError> {
    let n = s.chars().count();
    if n > max {
        return Err(err(prefix, name, format!("must be at most {max} characters, got {n}")));
    }
    Ok(())
}

/// `type/subtype` made of RFC 6838 token characters, no parameters.
fn valid_mime(s: &str) -> bool {
    let token = |t: &str| {
        t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && t.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'!' | b'#' | b'$' | b'&' | b'^' | b'_' | b'.' | b'+' | b'-')
            })
    };
    s.split_once('/').is_some_and(|(t, sub)| token(t) && token(sub))
}
