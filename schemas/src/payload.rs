//! Payload types of the v1 contract, one per topic (DESIGN §3).
//!
//! Upstream types (phone → platform) are produced only by the checked `parse_*` functions in
//! [`crate::parse`]; downstream types (platform → phone or integration) are built by the roles and
//! serialised with `serde_json`. Every type derives `JsonSchema`, and the `#[schemars]` bounds
//! state the same limits the Rust validation checks, so the published schemas do not drift.
//! Times are Unix epoch milliseconds; unknown JSON fields are ignored for forward compatibility.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Earliest accepted timestamp: 2000-01-01T00:00:00Z in epoch milliseconds.
pub const TS_MIN: i64 = 946_684_800_000;
/// Latest accepted timestamp: 2100-01-01T00:00:00Z in epoch milliseconds.
pub const TS_MAX: i64 = 4_102_444_800_000;
/// Most heartbeats accepted in one backlog message.
pub const MAX_BACKLOG: usize = 1000;
/// Largest heartbeat `seq`: 2^53 − 1, the largest integer every JSON parser keeps exactly.
pub const MAX_SEQ: u64 = (1 << 53) - 1;
/// Most `[from, to]` ranges in one `inbox/ack`; more are sent as several acks.
pub const MAX_ACK_RANGES: usize = 1000;
/// Largest evidence chunk, in bytes (256 KiB).
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// Longest report text, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;
/// Longest `kind`, `source`, `corr` or `plate`-like short label, in characters.
pub const MAX_LABEL_CHARS: usize = 64;
/// Longest lookup query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;
/// Longest licence plate, in characters.
pub const MAX_PLATE_CHARS: usize = 32;
/// Longest MIME type, in characters.
pub const MAX_MIME_CHARS: usize = 127;
/// The only media types evidence may have (photos, video and sound a phone records). Anything
/// else (HTML, SVG, PDF, `application/*`) could run script or be mistaken for a document when a
/// desk user opens it, so it is refused at upload naming `meta.mime`.
pub const EVIDENCE_MIME_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/heic",
    "image/heif",
    "image/gif",
    "video/mp4",
    "video/quicktime",
    "video/3gpp",
    "video/webm",
    "audio/mp4",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/webm",
    "audio/amr",
    "audio/3gpp",
    "audio/wav",
];
/// Regular expression (JSON Schema `pattern`) for ids; same rule as [`crate::topic::valid_id`].
pub const ID_PATTERN: &str = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$";
/// Regular expression for a SHA-256 digest: 64 lowercase hex characters.
pub const SHA256_PATTERN: &str = r"^[0-9a-f]{64}$";
/// Regular expression for a MIME type without parameters, e.g. `image/jpeg`.
pub const MIME_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$";

/// Whether the inspector is on duty, as set in the phone app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Duty {
    /// On duty and available for assignments.
    On,
    /// Off duty; positions are still recorded.
    Off,
    /// On duty but busy with an assignment.
    Busy,
}

impl Duty {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Duty::On => "on",
            Duty::Off => "off",
            Duty::Busy => "busy",
        }
    }
}

/// One position fix from a phone (`jd/v1/dev/{dev}/hb`); a backlog is an array of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {
    /// The phone's number for this point: per device, strictly increasing, kept across app
    /// restarts. With it, ingest confirms exactly the stored points (`hb_seq` in `inbox/ack`);
    /// without it, with the `hb_upto` watermark. In one message, every point has it or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_SEQ))]
    pub seq: Option<u64>,
    /// Time of the fix, Unix epoch milliseconds.
    #[schemars(range(min = TS_MIN, max = TS_MAX))]
    pub ts: i64,
    /// Latitude, WGS-84 degrees.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    /// Longitude, WGS-84 degrees.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lon: f64,
    /// Horizontal accuracy radius, metres.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100_000.0))]
    pub acc: Option<f64>,
    /// Ground speed, m/s (not km/h).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub spd: Option<f64>,
    /// Heading, degrees clockwise from true north.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 360.0))]
    pub hdg: Option<f64>,
    /// Altitude above the WGS-84 ellipsoid, metres.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1000.0, max = 10_000.0))]
    pub alt: Option<f64>,
    /// Battery level, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub bat: Option<f64>,
    /// Duty state at the time of the fix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duty: Option<Duty>,
}

/// Online flag (`jd/v1/dev/{dev}/presence`), retained; the offline form is the phone's LWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Presence {
    /// True when the phone connected, false in the LWT or on a clean disconnect.
    pub online: bool,
    /// When the state changed, Unix epoch milliseconds.
    #[schemars(range(min = TS_MIN, max = TS_MAX))]
    pub ts: i64,
}

/// An on-site report or tip relayed by an inspector (`jd/v1/dev/{dev}/report`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Report {
    /// Client-generated report id; the platform de-duplicates re-sends by it.
    #[schemars(pattern(ID_PATTERN))]
    pub id: String,
    /// Report category, e.g. `banquet`, `official-car`, `gift`.
    #[schemars(length(min = 1, max = MAX_LABEL_CHARS))]
    pub kind: String,
    /// Free text written by the inspector.
    #[schemars(length(max = MAX_TEXT_CHARS))]
    pub text: String,
    /// Latitude of the reported place, WGS-84 degrees.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    /// Longitude of the reported place, WGS-84 degrees.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lon: f64,
    /// When the report was made, Unix epoch milliseconds.
    #[schemars(range(min = TS_MIN, max = TS_MAX))]
    pub ts: i64,
    /// Licence plate involved, if any (e.g. `鲁G·12345`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_PLATE_CHARS))]
    pub plate: Option<String>,
}

/// A tip from another system (`jd/v1/reports`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IntegrationReport {
    /// Id assigned by the source system; de-duplicated per source.
    #[schemars(pattern(ID_PATTERN))]
    pub id: String,
    /// Report category.
    #[schemars(length(min = 1, max = MAX_LABEL_CHARS))]
    pub kind: String,
    /// Free text of the tip.
    #[schemars(length(max = MAX_TEXT_CHARS))]
    pub text: String,
    /// Latitude, WGS-84 degrees.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    /// Longitude, WGS-84 degrees.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lon: f64,
    /// When the tip was received by the source, Unix epoch milliseconds.
    #[schemars(range(min = TS_MIN, max = TS_MAX))]
    pub ts: i64,
    /// Name of the sending system, e.g. `12345-hotline`.
    #[schemars(length(min = 1, max = MAX_LABEL_CHARS))]
    pub source: String,
}

impl From<IntegrationReport> for Report {
    /// Turns a tip into the report shape offered to inspectors (the source is dropped).
    fn from(r: IntegrationReport) -> Self {
        Report { id: r.id, kind: r.kind, text: r.text, lat: r.lat, lon: r.lon, ts: r.ts, plate: None }
    }
}

/// What an inspector did with an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AsgStatus {
    /// The inspector takes it.
    Accepted,
    /// The inspector refuses it; dispatch offers it to someone else.
    Declined,
    /// The inspector is at the place.
    Arrived,
    /// The inspector finished.
    Completed,
}

impl AsgStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AsgStatus::Accepted => "accepted",
            AsgStatus::Declined => "declined",
            AsgStatus::Arrived => "arrived",
            AsgStatus::Completed => "completed",
        }
    }
}

/// Status update for an assignment (`jd/v1/dev/{dev}/asg/{assignment}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AssignmentStatus {
    /// The new status.
    pub status: AsgStatus,
    /// When it changed, Unix epoch milliseconds.
    #[schemars(range(min = TS_MIN, max = TS_MAX))]
    pub ts: i64,
    /// Optional note, e.g. why it was declined.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_TEXT_CHARS))]
    pub note: Option<String>,
}

/// Which registry a lookup searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LookupKind {
    /// Official vehicles, by plate.
    Vehicle,
    /// Officials, by name or id.
    Person,
    /// Departments, by name.
    Department,
}

impl LookupKind {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LookupKind::Vehicle => "vehicle",
            LookupKind::Person => "person",
            LookupKind::Department => "department",
        }
    }
}

/// A registry lookup from a phone (`jd/v1/dev/{dev}/lookup`); answered on `inbox/lookup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LookupRequest {
    /// Correlation id chosen by the phone, echoed in the reply.
    #[schemars(length(min = 1, max = MAX_LABEL_CHARS))]
    pub corr: String,
    /// Which registry to search.
    pub kind: LookupKind,
    /// The query text (plate, name…).
    #[schemars(length(min = 1, max = MAX_QUERY_CHARS))]
    pub q: String,
    /// Where the inspector is, WGS-84 latitude (recorded in the look-up audit); with `lon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: Option<f64>,
    /// Where the inspector is, WGS-84 longitude; with `lat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lon: Option<f64>,
}

/// Evidence metadata (`jd/v1/dev/{dev}/ev/{evid}/meta`): opens or resumes a chunked upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EvidenceMeta {
    /// SHA-256 of the whole file, 64 lowercase hex characters.
    #[schemars(pattern(SHA256_PATTERN))]
    pub sha256: String,
    /// Size of the whole file, bytes.
    #[schemars(range(min = 1))]
    pub size: u64,
    /// MIME type, one of the evidence allow-list (photo, video, sound), e.g. `image/jpeg`.
    #[schemars(length(max = MAX_MIME_CHARS), pattern(MIME_PATTERN), extend("enum" = EVIDENCE_MIME_TYPES))]
    pub mime: String,
    /// When the photo, audio or video was captured, Unix epoch milliseconds.
    #[schemars(range(min = TS_MIN, max = TS_MAX))]
    pub captured_at: i64,
    /// Latitude of capture, WGS-84 degrees (given together with `lon`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: Option<f64>,
    /// Longitude of capture, WGS-84 degrees (given together with `lat`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lon: Option<f64>,
    /// The report this evidence belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(ID_PATTERN))]
    pub report_id: Option<String>,
    /// Size of every chunk but the last, bytes.
    #[schemars(range(min = 1, max = MAX_CHUNK_BYTES))]
    pub chunk_size: u32,
    /// Number of chunks; must equal `ceil(size / chunk_size)`.
    #[schemars(range(min = 1))]
    pub chunks: u32,
}

impl EvidenceMeta {
    /// Expected length of chunk `n`, or `None` when `n` is out of range.
    pub fn chunk_len(&self, n: u32) -> Option<u64> {
        if n >= self.chunks || self.chunk_size == 0 {
            return None;
        }
        let start = u64::from(n) * u64::from(self.chunk_size);
        Some(self.size.saturating_sub(start).min(u64::from(self.chunk_size)))
    }
}

/// Confirmation on `inbox/ack` that upstream messages were committed; the phone may drop them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Ack {
    /// Every heartbeat without `seq` with `ts` at or below this is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hb_upto: Option<i64>,
    /// Exactly these heartbeat `seq`s are stored: ascending, disjoint `[from, to]` ranges
    /// (inclusive); the phone deletes those points and nothing else.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_ACK_RANGES))]
    pub hb_seq: Option<Vec<[u64; 2]>>,
    /// This report id is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// This assignment's status update is stored (with `status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asg: Option<String>,
    /// The assignment status that was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<AsgStatus>,
}

/// An assignment offered to an inspector on `inbox/assignment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AssignmentOffer {
    /// Assignment id; the phone answers on `asg/{assignment_id}`.
    #[schemars(pattern(ID_PATTERN))]
    pub assignment_id: String,
    /// The report to attend.
    pub report: Report,
    /// Distance from the inspector's last position to the report, metres.
    #[schemars(range(min = 0.0))]
    pub distance_m: f64,
    /// Answer before this time (Unix epoch milliseconds) or the offer moves on.
    #[schemars(range(min = TS_MIN, max = TS_MAX))]
    pub respond_by: i64,
}

/// Outcome of an evidence upload on `inbox/receipt`, tagged by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Receipt {
    /// The file is complete, verified and entered in the ledger.
    Stored {
        /// Evidence id.
        evid: String,
        /// SHA-256 of the stored file, lowercase hex.
        #[schemars(pattern(SHA256_PATTERN))]
        sha256: String,
        /// Size of the stored file, bytes.
        size: u64,
        /// Sequence number of the ledger entry.
        ledger_seq: u64,
        /// Hash of the ledger entry (chained to the previous one), lowercase hex.
        ledger_hash: String,
        /// When the platform completed the upload, Unix epoch milliseconds.
        received_at: i64,
        /// Ed25519 signature by the platform key (`jd/v1/platform/key`) over the fields above.
        sig: String,
    },
    /// The upload is incomplete; the phone should send these chunks.
    Partial {
        /// Evidence id.
        evid: String,
        /// Indices of the chunks still missing, ascending.
        missing: Vec<u32>,
    },
    /// The upload was refused; `error` names the field or check that failed.
    Rejected {
        /// Evidence id.
        evid: String,
        /// Why, e.g. `meta.sha256: must be 64 lowercase hex characters`.
        error: String,
    },
}

impl Receipt {
    /// The evidence id this receipt is about.
    pub fn evid(&self) -> &str {
        match self {
            Receipt::Stored { evid, .. } | Receipt::Partial { evid, .. } | Receipt::Rejected { evid, .. } => evid,
        }
    }
}

/// Answer to a [`LookupRequest`] on `inbox/lookup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LookupReply {
    /// The request's correlation id.
    pub corr: String,
    /// True when exactly one record matched (`result`).
    pub found: bool,
    /// The matching record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Near matches when there was no single hit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<serde_json::Value>>,
    /// Why the look-up was not answered (e.g. the device is over its rate limit); `found` is
    /// false then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A rejected upstream message, sent on `inbox/error` so the phone can fix and re-send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorNotice {
    /// The topic the rejected message was published on.
    pub topic: String,
    /// What was wrong, as `field: message` (see [`crate::PayloadError`]).
    pub error: String,
}

/// A free-text notice from the office, on `inbox/notice`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Notice {
    /// When it was sent, Unix epoch milliseconds.
    #[schemars(range(min = TS_MIN, max = TS_MAX))]
    pub ts: i64,
    /// The notice.
    #[schemars(length(max = MAX_TEXT_CHARS))]
    pub text: String,
}

/// An integration event on `jd/v1/events/{kind}`; ids let consumers de-duplicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Event type, e.g. `report.received`.
    pub r#type: String,
    /// Unique event id (the outbox id).
    pub id: String,
    /// When the event happened, Unix epoch milliseconds.
    #[schemars(range(min = TS_MIN, max = TS_MAX))]
    pub ts: i64,
    /// Event-specific body.
    pub data: serde_json::Value,
}

/// An OwnTracks location message (`owntracks/{user}/{device}`, `_type:"location"`).
///
/// OwnTracks uses its own units: `tst` in seconds and `vel` in km/h; [`Self::to_heartbeat`]
/// converts to the jiandu units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OwnTracksLocation {
    /// Message type; always `location` here.
    #[serde(rename = "_type")]
    #[schemars(extend("const" = "location"))]
    pub kind: String,
    /// Latitude, WGS-84 degrees.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    /// Longitude, WGS-84 degrees.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lon: f64,
    /// Time of the fix, Unix epoch **seconds**.
    #[schemars(range(min = TS_MIN / 1000, max = TS_MAX / 1000))]
    pub tst: i64,
    /// Accuracy, metres.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100_000.0))]
    pub acc: Option<f64>,
    /// Velocity, **km/h** (negative means unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 360.0))]
    pub vel: Option<f64>,
    /// Course over ground, degrees (negative means unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 360.0))]
    pub cog: Option<f64>,
    /// Altitude, metres.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1000.0, max = 10_000.0))]
    pub alt: Option<f64>,
    /// Battery level, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub batt: Option<f64>,
}

impl OwnTracksLocation {
    /// Converts to a jiandu heartbeat: seconds → milliseconds, km/h → m/s; unknown (negative)
    /// velocity or course become absent.
    pub fn to_heartbeat(&self) -> Heartbeat {
        Heartbeat {
            seq: None,
            ts: self.tst.saturating_mul(1000),
            lat: self.lat,
            lon: self.lon,
            acc: self.acc,
            spd: self.vel.filter(|v| *v >= 0.0).map(|v| v / 3.6),
            hdg: self.cog.filter(|c| *c >= 0.0),
            alt: self.alt,
            bat: self.batt,
            duty: None,
        }
    }
}
