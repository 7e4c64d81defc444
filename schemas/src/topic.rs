//! MQTT topic names and filters of the v1 contract.
//!
//! Phones publish under `jd/v1/dev/{dev}/…` and receive on `jd/v1/dev/{dev}/inbox/{kind}`;
//! integrations publish tips on `jd/v1/reports` and follow `jd/v1/events/{kind}`. The roles
//! (ingest, dispatch, oversight) consume device traffic through the `$share/…` filters below so
//! several instances can split the load. The broker's ACL uses [`Topic::parse`],
//! [`filter_matches`] and [`filter_within`] to decide what an account may publish and subscribe.

use std::fmt;
use std::str::FromStr;

use crate::SchemaError;

// Every shared filter has a group of its own: rumqttd 0.20 keys shared-subscription state (the
// read cursor and the round-robin turn) by group name alone, so two filters in one group would
// share a cursor and lose messages, and two roles in one group would take turns at each other's.
/// Shared subscription through which ingest receives heartbeats.
pub const SHARED_HEARTBEATS: &str = "$share/ingest-hb/jd/v1/dev/+/hb";
/// Shared subscription through which ingest receives OwnTracks locations.
pub const SHARED_OWNTRACKS: &str = "$share/ingest-owntracks/owntracks/+/+";
/// Shared subscription through which ingest receives presence (online/offline, LWT).
pub const SHARED_PRESENCE: &str = "$share/ingest-presence/jd/v1/dev/+/presence";
/// Shared subscription through which ingest receives evidence metadata and chunks.
pub const SHARED_EVIDENCE: &str = "$share/ingest-evidence/jd/v1/dev/+/ev/#";
/// Shared subscription through which dispatch receives on-site reports from phones.
pub const SHARED_REPORTS: &str = "$share/dispatch-report/jd/v1/dev/+/report";
/// Shared subscription through which dispatch receives tips from integrations.
pub const SHARED_INTEGRATION_REPORTS: &str = "$share/dispatch-tip/jd/v1/reports";
/// Shared subscription through which dispatch receives assignment status updates.
pub const SHARED_ASSIGNMENT_STATUS: &str = "$share/dispatch-asg/jd/v1/dev/+/asg/+";
/// Shared subscription through which dispatch keeps its live index of positions and duty.
pub const SHARED_DISPATCH_HEARTBEATS: &str = "$share/dispatch-hb/jd/v1/dev/+/hb";
/// Shared subscription through which dispatch learns who comes online or goes offline.
pub const SHARED_DISPATCH_PRESENCE: &str = "$share/dispatch-presence/jd/v1/dev/+/presence";
/// Shared subscription through which oversight receives registry lookups.
pub const SHARED_LOOKUPS: &str = "$share/oversight-lookup/jd/v1/dev/+/lookup";
/// Filter matching every outgoing integration event.
pub const EVENTS_ALL: &str = "jd/v1/events/#";

/// Longest id accepted in a topic segment.
pub const MAX_ID_LEN: usize = 64;

/// True when `s` can be used as an id inside a topic (device, evidence, assignment, report ids):
/// 1..=64 characters of `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The kinds of message a platform sends down to a phone's inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InboxKind {
    /// Confirms heartbeats, reports and assignment statuses were committed.
    Ack,
    /// Offers an assignment to the inspector.
    Assignment,
    /// Receipt for an evidence upload (stored, partial or rejected).
    Receipt,
    /// Reply to a registry lookup.
    Lookup,
    /// A rejected upstream message, naming the field that failed.
    Error,
    /// Free-text notice from the office.
    Notice,
}

impl InboxKind {
    /// Every inbox kind, in contract order.
    pub const ALL: [InboxKind; 6] = [
        InboxKind::Ack,
        InboxKind::Assignment,
        InboxKind::Receipt,
        InboxKind::Lookup,
        InboxKind::Error,
        InboxKind::Notice,
    ];

    /// The topic segment for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            InboxKind::Ack => "ack",
            InboxKind::Assignment => "assignment",
            InboxKind::Receipt => "receipt",
            InboxKind::Lookup => "lookup",
            InboxKind::Error => "error",
            InboxKind::Notice => "notice",
        }
    }
}

impl fmt::Display for InboxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InboxKind {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| SchemaError::UnknownKind {
            what: "inbox",
            got: s.to_owned(),
            expected: "ack, assignment, receipt, lookup, error, notice",
        })
    }
}

/// The kinds of integration event published on `jd/v1/events/{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A device came online, went offline or changed duty.
    Device,
    /// A sampled position.
    Position,
    /// A report or tip was received.
    Report,
    /// An assignment was offered, accepted, declined, reached or completed.
    Assignment,
    /// Evidence was stored in the ledger.
    Evidence,
    /// A registry lookup was answered.
    Lookup,
    /// A case changed.
    Case,
    /// An alarm was raised.
    Alarm,
    /// The ledger index advanced.
    Index,
}

impl EventKind {
    /// Every event kind, in contract order.
    pub const ALL: [EventKind; 9] = [
        EventKind::Device,
        EventKind::Position,
        EventKind::Report,
        EventKind::Assignment,
        EventKind::Evidence,
        EventKind::Lookup,
        EventKind::Case,
        EventKind::Alarm,
        EventKind::Index,
    ];

    /// The topic segment for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Device => "device",
            EventKind::Position => "position",
            EventKind::Report => "report",
            EventKind::Assignment => "assignment",
            EventKind::Evidence => "evidence",
            EventKind::Lookup => "lookup",
            EventKind::Case => "case",
            EventKind::Alarm => "alarm",
            EventKind::Index => "index",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| SchemaError::UnknownKind {
            what: "event",
            got: s.to_owned(),
            expected: "device, position, report, assignment, evidence, lookup, case, alarm, index",
        })
    }
}

/// A concrete v1 topic, parsed; `Display` gives back the exact topic string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `jd/v1/dev/{device}/hb`: one heartbeat or an offline backlog.
    Heartbeat {
        /// Device id.
        device: String,
    },
    /// `jd/v1/dev/{device}/presence`: retained online flag, also the LWT.
    Presence {
        /// Device id.
        device: String,
    },
    /// `jd/v1/dev/{device}/report`: an on-site report.
    Report {
        /// Device id.
        device: String,
    },
    /// `jd/v1/dev/{device}/asg/{assignment}`: status of an assignment.
    AssignmentStatus {
        /// Device id.
        device: String,
        /// Assignment id.
        assignment: String,
    },
    /// `jd/v1/dev/{device}/lookup`: a registry lookup request.
    Lookup {
        /// Device id.
        device: String,
    },
    /// `jd/v1/dev/{device}/ev/{evid}/meta`: evidence metadata, opens or resumes an upload.
    EvidenceMeta {
        /// Device id.
        device: String,
        /// Client-generated evidence id.
        evid: String,
    },
    /// `jd/v1/dev/{device}/ev/{evid}/c/{n}`: raw bytes of chunk `n` (0-based).
    EvidenceChunk {
        /// Device id.
        device: String,
        /// Client-generated evidence id.
        evid: String,
        /// Chunk index, 0-based.
        n: u32,
    },
    /// `jd/v1/dev/{device}/inbox/{kind}`: messages down to the phone.
    Inbox {
        /// Device id.
        device: String,
        /// Which inbox.
        kind: InboxKind,
    },
    /// `owntracks/{user}/{device}`: an OwnTracks client's publish topic.
    OwnTracks {
        /// OwnTracks user; OwnTracks puts the MQTT username (= jiandu device id) here.
        user: String,
        /// OwnTracks device name, chosen in the app.
        device: String,
    },
    /// `jd/v1/reports`: a tip from another system.
    IntegrationReport,
    /// `jd/v1/events/{kind}`: outgoing integration events.
    Event {
        /// Which event stream.
        kind: EventKind,
    },
    /// `jd/v1/platform/key`: the platform's public signing key (retained).
    PlatformKey,
    /// `jd/v1/platform/checkpoint`: the newest signed checkpoint of the ledger head (retained),
    /// for integrations to keep outside the platform's database.
    PlatformCheckpoint,
}

const DEV_PREFIX: &str = "jd/v1/dev/";

impl Topic {
    /// Parses a concrete topic name (no wildcards), checking every id segment with [`valid_id`].
    pub fn parse(topic: &str) -> Result<Topic, SchemaError> {
        let fail = |reason: String| SchemaError::Topic { topic: topic.to_owned(), reason };
        let id = |what: &str, s: &str| -> Result<String, SchemaError> {
            if valid_id(s) {
                Ok(s.to_owned())
            } else {
                Err(fail(format!(
                    "{what} {s:?} is not a valid id (1..=64 of A-Z a-z 0-9 _ . -, not starting with '.')"
                )))
            }
        };
        let parts: Vec<&str> = topic.split('/').collect();
        match parts.as_slice() {
            ["owntracks", user, device] => {
                Ok(Topic::OwnTracks { user: id("owntracks user", user)?, device: id("owntracks device", device)? })
            }
            ["jd", "v1", "reports"] => Ok(Topic::IntegrationReport),
            ["jd", "v1", "platform", "key"] => Ok(Topic::PlatformKey),
            ["jd", "v1", "platform", "checkpoint"] => Ok(Topic::PlatformCheckpoint),
            ["jd", "v1", "events", kind] => {
                Ok(Topic::Event { kind: kind.parse().map_err(|e: SchemaError| fail(e.to_string()))? })
            }
            ["jd", "v1", "dev", dev, rest @ ..] => {
                let device = id("device id", dev)?;
                match rest {
                    ["hb"] => Ok(Topic::Heartbeat { device }),
                    ["presence"] => Ok(Topic::Presence { device }),
                    ["report"] => Ok(Topic::Report { device }),
                    ["lookup"] => Ok(Topic::Lookup { device }),
                    ["asg", asg] => Ok(Topic::AssignmentStatus { device, assignment: id("assignment id", asg)? }),
                    ["ev", evid, "meta"] => Ok(Topic::EvidenceMeta { device, evid: id("evidence id", evid)? }),
                    ["ev", evid, "c", n] => {
                        let evid = id("evidence id", evid)?;
                        let canonical = !n.is_empty()
                            && n.bytes().all(|b| b.is_ascii_digit())
                            && (n.len() == 1 || !n.starts_with('0'));
                        let n = n.parse::<u32>().ok().filter(|_| canonical).ok_or_else(|| {
                            fail(format!("chunk index {n:?} is not a decimal u32 without leading zeros"))
                        })?;
                        Ok(Topic::EvidenceChunk { device, evid, n })
                    }
                    ["inbox", kind] => {
                        Ok(Topic::Inbox { device, kind: kind.parse().map_err(|e: SchemaError| fail(e.to_string()))? })
                    }
                    _ => Err(fail(format!(
                        "unknown device topic {:?} under {DEV_PREFIX}{device}/ (expected hb, presence, report, lookup, asg/{{id}}, ev/{{evid}}/meta, ev/{{evid}}/c/{{n}} or inbox/{{kind}})",
                        rest.join("/")
                    ))),
                }
            }
            ["jd", "v1", ..] => Err(fail(
                "unknown jd/v1 topic (expected jd/v1/dev/…, jd/v1/reports, jd/v1/events/{kind} or jd/v1/platform/{key,checkpoint})"
                    .to_owned(),
            )),
            _ => Err(fail("not a jiandu topic (expected jd/v1/… or owntracks/{user}/{device})".to_owned())),
        }
    }

    /// The device a topic belongs to: the `{dev}` segment, or for OwnTracks the `{user}`
    /// segment (OwnTracks publishes under the MQTT username, which is the jiandu device id).
    pub fn device(&self) -> Option<&str> {
        match self {
            Topic::Heartbeat { device }
            | Topic::Presence { device }
            | Topic::Report { device }
            | Topic::AssignmentStatus { device, .. }
            | Topic::Lookup { device }
            | Topic::EvidenceMeta { device, .. }
            | Topic::EvidenceChunk { device, .. }
            | Topic::Inbox { device, .. } => Some(device),
            Topic::OwnTracks { user, .. } => Some(user),
            Topic::IntegrationReport | Topic::Event { .. } | Topic::PlatformKey | Topic::PlatformCheckpoint => None,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Heartbeat { device } => write!(f, "{DEV_PREFIX}{device}/hb"),
            Topic::Presence { device } => write!(f, "{DEV_PREFIX}{device}/presence"),
            Topic::Report { device } => write!(f, "{DEV_PREFIX}{device}/report"),
            Topic::AssignmentStatus { device, assignment } => {
                write!(f, "{DEV_PREFIX}{device}/asg/{assignment}")
            }
            Topic::Lookup { device } => write!(f, "{DEV_PREFIX}{device}/lookup"),
            Topic::EvidenceMeta { device, evid } => write!(f, "{DEV_PREFIX}{device}/ev/{evid}/meta"),
            Topic::EvidenceChunk { device, evid, n } => {
                write!(f, "{DEV_PREFIX}{device}/ev/{evid}/c/{n}")
            }
            Topic::Inbox { device, kind } => write!(f, "{DEV_PREFIX}{device}/inbox/{kind}"),
            Topic::OwnTracks { user, device } => write!(f, "owntracks/{user}/{device}"),
            Topic::IntegrationReport => f.write_str("jd/v1/reports"),
            Topic::Event { kind } => write!(f, "jd/v1/events/{kind}"),
            Topic::PlatformKey => f.write_str("jd/v1/platform/key"),
            Topic::PlatformCheckpoint => f.write_str("jd/v1/platform/checkpoint"),
        }
    }
}

/// `jd/v1/dev/{dev}/`: everything a device may publish starts with this (except `inbox/`).
pub fn device_prefix(dev: &str) -> String {
    format!("{DEV_PREFIX}{dev}/")
}

/// `jd/v1/dev/{dev}/inbox/{kind}`: where the platform publishes to a phone.
pub fn inbox(dev: &str, kind: InboxKind) -> String {
    format!("{DEV_PREFIX}{dev}/inbox/{kind}")
}

/// `jd/v1/dev/{dev}/inbox/#`: the one filter a phone subscribes to.
pub fn inbox_filter(dev: &str) -> String {
    format!("{DEV_PREFIX}{dev}/inbox/#")
}

/// `jd/v1/events/{kind}`: where integration events of one kind are published.
pub fn event(kind: EventKind) -> String {
    format!("jd/v1/events/{kind}")
}

/// Prefixes of the platform's own shared-subscription groups (`ingest-hb`, `dispatch-report`,
/// `oversight-lookup`, …): only service accounts may join them, or a stranger in the group would
/// take its turn at the platform's messages and stall them for everyone.
pub const PLATFORM_SHARE_GROUP_PREFIXES: [&str; 3] = ["ingest", "dispatch", "oversight"];

/// True when `group` is, or could become, one of the platform's shared-subscription groups.
pub fn is_platform_share_group(group: &str) -> bool {
    PLATFORM_SHARE_GROUP_PREFIXES
        .iter()
        .any(|p| group.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('-')))
}

/// The group of a `$share/{group}/{filter}` subscription; `None` for a plain filter. A `$share`
/// filter without a group or without a filter yields `Some("")`, which no account may use.
pub fn share_group(filter: &str) -> Option<&str> {
    let rest = filter.strip_prefix("$share/").or_else(|| (filter == "$share").then_some(""))?;
    Some(match rest.split_once('/') {
        Some((group, f)) if !f.is_empty() => group,
        _ => "",
    })
}

/// Removes a leading `$share/{group}/` from a subscription filter, if present.
fn strip_share(filter: &str) -> &str {
    filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')).map_or(filter, |(_group, f)| f)
}

/// True when `filter` is a well-formed MQTT filter: `#` only as a whole last level, `+` only as
/// a whole level, not empty.
fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i + 1 == levels.len(),
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// MQTT topic matching: does subscription `filter` (`+`, `#`, optional `$share/{group}/`)
/// match concrete `topic`? Topics starting with `$` are not matched by a leading wildcard.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let filter = strip_share(filter);
    if !valid_filter(filter) || topic.is_empty() || topic.contains(['+', '#']) {
        return false;
    }
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when every topic `filter` can match is also matched by `allowed`; used by the broker to
/// check a SUBSCRIBE filter (a leading `$share/{group}/` is ignored) against an account's grant.
pub fn filter_within(filter: &str, allowed: &str) -> bool {
    let filter = strip_share(filter);
    if !valid_filter(filter) || !valid_filter(allowed) {
        return false;
    }
    // `$…` topics are only reachable through a literal first level; a leading wildcard in
    // `allowed` does not grant them.
    if filter.starts_with('$') && allowed.starts_with(['+', '#']) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let a: Vec<&str> = allowed.split('/').collect();
    let mut i = 0;
    loop {
        match (f.get(i).copied(), a.get(i).copied()) {
            // `a/#` covers `a` itself and everything below it.
            (_, Some("#")) => return true,
            (None, None) => return true,
            (Some("#"), _) => return false,
            (Some("+"), Some("+")) => {}
            (Some("+"), _) => return false,
            (Some(_), Some("+")) => {}
            (Some(fl), Some(al)) if fl == al => {}
            _ => return false,
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        for ok in ["a", "dev-01", "01J9ZK3Q7B8M2N4P5R6S7T8V9W", "a.b_c-d", &"x".repeat(64)] {
            assert!(valid_id(ok), "{ok:?} should be valid");
        }
        for bad in ["", ".hidden", "a/b", "a+b", "a#", "$SYS", "a b", "鲁G", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn kinds_round_trip() {
        for k in InboxKind::ALL {
            assert_eq!(k.as_str().parse::<InboxKind>().unwrap(), k);
        }
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>().unwrap(), k);
        }
        let err = "acks".parse::<InboxKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown inbox kind \"acks\"; expected one of ack, assignment, receipt, lookup, error, notice"
        );
        assert!("Device".parse::<EventKind>().is_err());
    }

    fn all_topics() -> Vec<(Topic, &'static str)> {
        let d = || "dev-7".to_owned();
        vec![
            (Topic::Heartbeat { device: d() }, "jd/v1/dev/dev-7/hb"),
            (Topic::Presence { device: d() }, "jd/v1/dev/dev-7/presence"),
            (Topic::Report { device: d() }, "jd/v1/dev/dev-7/report"),
            (Topic::AssignmentStatus { device: d(), assignment: "asg_42".into() }, "jd/v1/dev/dev-7/asg/asg_42"),
            (Topic::Lookup { device: d() }, "jd/v1/dev/dev-7/lookup"),
            (
                Topic::EvidenceMeta { device: d(), evid: "01J9ZK3Q7B8M2N4P5R6S7T8V9W".into() },
                "jd/v1/dev/dev-7/ev/01J9ZK3Q7B8M2N4P5R6S7T8V9W/meta",
            ),
            (Topic::EvidenceChunk { device: d(), evid: "e1".into(), n: 0 }, "jd/v1/dev/dev-7/ev/e1/c/0"),
            (
                Topic::EvidenceChunk { device: d(), evid: "e1".into(), n: 4_294_967_295 },
                "jd/v1/dev/dev-7/ev/e1/c/4294967295",
            ),
            (Topic::Inbox { device: d(), kind: InboxKind::Receipt }, "jd/v1/dev/dev-7/inbox/receipt"),
            (Topic::OwnTracks { user: "dev-7".into(), device: "phone".into() }, "owntracks/dev-7/phone"),
            (Topic::IntegrationReport, "jd/v1/reports"),
            (Topic::Event { kind: EventKind::Alarm }, "jd/v1/events/alarm"),
            (Topic::PlatformKey, "jd/v1/platform/key"),
            (Topic::PlatformCheckpoint, "jd/v1/platform/checkpoint"),
        ]
    }

    #[test]
    fn topics_round_trip() {
        for (topic, s) in all_topics() {
            assert_eq!(topic.to_string(), s);
            assert_eq!(Topic::parse(s).unwrap(), topic, "{s}");
        }
        for k in InboxKind::ALL {
            let t = Topic::Inbox { device: "d".into(), kind: k };
            assert_eq!(Topic::parse(&t.to_string()).unwrap(), t);
            assert_eq!(t.to_string(), inbox("d", k));
        }
        for k in EventKind::ALL {
            let t = Topic::Event { kind: k };
            assert_eq!(Topic::parse(&t.to_string()).unwrap(), t);
            assert_eq!(t.to_string(), event(k));
        }
    }

    #[test]
    fn topic_device() {
        let dev = |s: &str| Topic::parse(s).unwrap().device().map(str::to_owned);
        assert_eq!(dev("jd/v1/dev/d1/ev/e/c/3").as_deref(), Some("d1"));
        assert_eq!(dev("jd/v1/dev/d1/inbox/ack").as_deref(), Some("d1"));
        assert_eq!(dev("owntracks/d1/iphone").as_deref(), Some("d1"));
        assert_eq!(dev("jd/v1/reports"), None);
        assert_eq!(dev("jd/v1/events/case"), None);
        assert_eq!(dev("jd/v1/platform/key"), None);
    }

    #[test]
    fn topic_errors_say_what_is_wrong() {
        let reason = |s: &str| match Topic::parse(s).unwrap_err() {
            SchemaError::Topic { topic, reason } => {
                assert_eq!(topic, s);
                reason
            }
            other => panic!("unexpected {other:?}"),
        };
        assert!(reason("jd/v1/dev/a+b/hb").contains("device id \"a+b\" is not a valid id"));
        assert!(reason("jd/v1/dev/+/hb").contains("device id \"+\""));
        assert!(reason("jd/v1/dev//hb").contains("device id \"\""));
        assert!(reason("jd/v1/dev/d/asg/.x").contains("assignment id \".x\""));
        assert!(reason("jd/v1/dev/d/ev/e#/meta").contains("evidence id \"e#\""));
        assert!(reason("jd/v1/dev/d/ev/e/c/x").contains("chunk index \"x\""));
        assert!(reason("jd/v1/dev/d/ev/e/c/01").contains("chunk index \"01\""));
        assert!(reason("jd/v1/dev/d/ev/e/c/-1").contains("chunk index"));
        assert!(reason("jd/v1/dev/d/ev/e/c/4294967296").contains("chunk index"));
        assert!(reason("jd/v1/dev/d/inbox/acks").contains("unknown inbox kind \"acks\""));
        assert!(reason("jd/v1/events/foo").contains("unknown event kind \"foo\""));
        assert!(reason("jd/v1/dev/d/hb/extra").contains("unknown device topic \"hb/extra\""));
        assert!(reason("jd/v1/dev/d").contains("unknown device topic \"\""));
        assert!(reason("jd/v1/dev/d/").contains("unknown device topic \"\""));
        assert!(reason("jd/v1/nope").contains("unknown jd/v1 topic"));
        assert!(reason("jd/v2/dev/d/hb").contains("not a jiandu topic"));
        assert!(reason("").contains("not a jiandu topic"));
        assert!(reason("owntracks/u").contains("not a jiandu topic"));
        assert!(reason("owntracks/u/d/event").contains("not a jiandu topic"));
        assert!(reason("owntracks/u/a/b").contains("not a jiandu topic"));
        let e = Topic::parse("jd/v1/dev/a b/hb").unwrap_err();
        assert!(e.to_string().starts_with("topic \"jd/v1/dev/a b/hb\": device id"));
    }

    #[test]
    fn builders() {
        assert_eq!(device_prefix("d9"), "jd/v1/dev/d9/");
        assert_eq!(inbox("d9", InboxKind::Ack), "jd/v1/dev/d9/inbox/ack");
        assert_eq!(inbox_filter("d9"), "jd/v1/dev/d9/inbox/#");
        assert_eq!(event(EventKind::Index), "jd/v1/events/index");
        assert!(filter_matches(&inbox_filter("d9"), &inbox("d9", InboxKind::Notice)));
        assert!(!filter_matches(&inbox_filter("d9"), &inbox("d10", InboxKind::Notice)));
    }

    #[test]
    fn platform_share_groups_are_recognised() {
        for f in [
            SHARED_HEARTBEATS,
            SHARED_OWNTRACKS,
            SHARED_PRESENCE,
            SHARED_EVIDENCE,
            SHARED_REPORTS,
            SHARED_INTEGRATION_REPORTS,
            SHARED_ASSIGNMENT_STATUS,
            SHARED_DISPATCH_HEARTBEATS,
            SHARED_DISPATCH_PRESENCE,
            SHARED_LOOKUPS,
        ] {
            let group = share_group(f).unwrap();
            assert!(is_platform_share_group(group), "{f}");
        }
        assert_eq!(share_group("jd/v1/events/#"), None);
        assert_eq!(share_group("$share/g"), Some(""));
        assert_eq!(share_group("$share/g/"), Some(""));
        assert_eq!(share_group("$share"), Some(""));
        assert_eq!(share_group("$share/city-x/jd/v1/events/#"), Some("city-x"));
        assert!(!is_platform_share_group("ingestor"));
        assert!(is_platform_share_group("ingest"));
    }

    #[test]
    fn shared_filters_match_their_topics() {
        let cases = [
            (SHARED_HEARTBEATS, "jd/v1/dev/d/hb", "jd/v1/dev/d/presence"),
            (SHARED_OWNTRACKS, "owntracks/u/d", "owntracks/u/d/event"),
            (SHARED_PRESENCE, "jd/v1/dev/d/presence", "jd/v1/dev/d/hb"),
            (SHARED_EVIDENCE, "jd/v1/dev/d/ev/e/c/12", "jd/v1/dev/d/report"),
            (SHARED_REPORTS, "jd/v1/dev/d/report", "jd/v1/reports"),
            (SHARED_INTEGRATION_REPORTS, "jd/v1/reports", "jd/v1/dev/d/report"),
            (SHARED_ASSIGNMENT_STATUS, "jd/v1/dev/d/asg/a1", "jd/v1/dev/d/asg"),
            (SHARED_LOOKUPS, "jd/v1/dev/d/lookup", "jd/v1/dev/d/inbox/lookup"),
            (EVENTS_ALL, "jd/v1/events/report", "jd/v1/reports"),
        ];
        for (filter, yes, no) in cases {
            assert!(filter_matches(filter, yes), "{filter} should match {yes}");
            assert!(!filter_matches(filter, no), "{filter} should not match {no}");
            // Every matched topic parses as a v1 topic.
            Topic::parse(yes).unwrap();
        }
        assert!(filter_matches(SHARED_EVIDENCE, "jd/v1/dev/d/ev/e/meta"));
    }

    #[test]
    fn filter_matching() {
        let yes = [
            ("a/b/c", "a/b/c"),
            ("a/+/c", "a/b/c"),
            ("a/+/c", "a//c"),
            ("+/+/+", "a/b/c"),
            ("a/#", "a"),
            ("a/#", "a/b"),
            ("a/#", "a/b/c/d"),
            ("#", "a/b"),
            ("#", "/"),
            ("a/b/", "a/b/"),
            ("+/b", "/b"),
            ("$SYS/#", "$SYS/broker/uptime"),
            ("$SYS/+/uptime", "$SYS/broker/uptime"),
            ("$share/g/a/+", "a/b"),
        ];
        for (f, t) in yes {
            assert!(filter_matches(f, t), "{f} should match {t}");
        }
        let no = [
            ("a/b/c", "a/b"),
            ("a/b", "a/b/c"),
            ("a/+", "a"),
            ("a/+", "a/b/c"),
            ("+/+", "a"),
            ("a/#", "b/a"),
            ("a/b", "A/b"),
            ("#", "$SYS/broker"),
            ("+/broker", "$SYS/broker"),
            ("a/#/b", "a/x/b"),
            ("a/b#", "a/b#"),
            ("a+/b", "a+/b"),
            ("", ""),
            ("", "a"),
            ("a", ""),
            ("a/+", "a/+"),
            ("a/#", "a/#"),
        ];
        for (f, t) in no {
            assert!(!filter_matches(f, t), "{f} should not match {t}");
        }
    }

    #[test]
    fn filter_containment() {
        let yes = [
            ("jd/v1/events/report", "jd/v1/events/#"),
            ("jd/v1/events/+", "jd/v1/events/#"),
            ("jd/v1/events/#", "jd/v1/events/#"),
            ("jd/v1/events", "jd/v1/events/#"),
            ("jd/v1/events/report", "jd/v1/events/+"),
            ("jd/v1/events/+", "jd/v1/events/+"),
            ("jd/v1/dev/d/inbox/#", "jd/v1/dev/d/inbox/#"),
            ("jd/v1/dev/d/inbox/ack", "jd/v1/dev/d/inbox/#"),
            ("jd/v1/dev/+/hb", "jd/v1/dev/+/hb"),
            ("jd/v1/dev/d/hb", "+/+/+/+/+"),
            ("a/+/c/#", "a/#"),
            ("a/b", "#"),
            ("#", "#"),
            ("$share/g1/jd/v1/events/#", "jd/v1/events/#"),
            ("$share/g1/jd/v1/events/alarm", "jd/v1/events/+"),
            ("$SYS/x", "$SYS/#"),
        ];
        for (f, a) in yes {
            assert!(filter_within(f, a), "{f} should be within {a}");
        }
        let no = [
            ("#", "jd/v1/events/#"),
            ("jd/v1/+/x", "jd/v1/events/+"),
            ("jd/v1/#", "jd/v1/events/#"),
            ("jd/v1/events/#", "jd/v1/events/+"),
            ("jd/v1/events", "jd/v1/events/+"),
            ("jd/v1/events/a/b", "jd/v1/events/+"),
            ("jd/v1/events/+", "jd/v1/events/report"),
            ("jd/v1/dev/+/inbox/#", "jd/v1/dev/d/inbox/#"),
            ("jd/v1/dev/e/inbox/#", "jd/v1/dev/d/inbox/#"),
            ("jd/v1/dev/d/inbox", "jd/v1/dev/d/inbox/ack"),
            ("jd/v1/dev/d/inbox/ack/x", "jd/v1/dev/d/inbox/ack"),
            ("a/b#", "#"),
            ("a/#/b", "#"),
            ("", "#"),
            ("a", ""),
            ("$SYS/x", "#"),
            ("$SYS/x", "+/x"),
            ("$share/g1/#", "jd/v1/events/#"),
            ("$share/g1", "#"),
        ];
        for (f, a) in no {
            assert!(!filter_within(f, a), "{f} should not be within {a}");
        }
    }

    #[test]
    fn containment_agrees_with_matching() {
        // Whenever filter_within says yes, every sample topic matched by the filter must be
        // matched by the allowed filter too.
        let filters = ["#", "+", "a", "a/#", "a/+", "a/b", "a/+/c", "+/b", "a/b/#", "+/+", "a/+/#", "$SYS/#"];
        let topics = ["a", "b", "a/b", "a/c", "b/b", "a/b/c", "a/x/c", "a/b/c/d", "/b", "a/", "$SYS/x"];
        for f in filters {
            for a in filters {
                let within = filter_within(f, a);
                let implied = topics.iter().all(|t| !filter_matches(f, t) || filter_matches(a, t));
                if within {
                    assert!(implied, "{f} within {a} but a sample topic disagrees");
                }
            }
        }
    }
}
