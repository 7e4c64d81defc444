//! Who may publish and subscribe where, and how much (DESIGN §3, ACL).
//!
//! A device publishes only the contract's topics under its own `jd/v1/dev/{id}/` (never into
//! `inbox/`) and its OwnTracks topic, retains only `presence`, and each topic has a payload
//! size the contract implies; it subscribes only to its own `inbox/#` and the platform key, and
//! never through a `$share` group. An integration account gets exactly the filters it was
//! created with, can never publish as a device, and may share subscriptions only in groups named
//! after itself (`{name}` or `{name}-…`). The platform's own groups (`ingest-…`, `dispatch-…`,
//! `oversight-…`) and everything else belong to internal service accounts.

use jiandu_schemas::payload::MAX_CHUNK_BYTES;
use jiandu_schemas::topic::{Topic, filter_matches, filter_within, is_platform_share_group, share_group};
use jiandu_store::Principal;

/// The platform's public key topic, readable by everyone who is logged in.
pub const PLATFORM_KEY: &str = "jd/v1/platform/key";

/// Largest evidence chunk payload: the contract's 256 KiB plus slack, so a chunk slightly too
/// long still reaches ingest and gets its precise `rejected` receipt (`chunk[n]: is … bytes`).
pub const MAX_CHUNK_PAYLOAD_BYTES: usize = MAX_CHUNK_BYTES + 4 * 1024;
/// Largest heartbeat payload: a backlog of 1000 points at ~260 bytes each.
pub const MAX_HEARTBEAT_BYTES: usize = 256 * 1024;
/// Largest report or assignment-status payload (4000 characters of text, JSON-escaped).
pub const MAX_TEXT_MESSAGE_BYTES: usize = 32 * 1024;
/// Largest OwnTracks location payload.
pub const MAX_OWNTRACKS_BYTES: usize = 16 * 1024;
/// Largest presence, look-up or evidence `meta` payload.
pub const MAX_SMALL_MESSAGE_BYTES: usize = 4 * 1024;

/// Why a PUBLISH (or last will) was refused; the text goes to a device's `inbox/error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Outside the account's topics (another device's, an inbox, the platform's).
    NotAuthorised,
    /// Under the device's own prefix but not a topic of the wire contract.
    NotInContract,
    /// Retained, but only `presence` may be retained.
    RetainNotAllowed,
    /// Larger than the contract allows for this topic.
    TooLarge {
        /// Payload bytes received.
        size: usize,
        /// Limit for this topic.
        limit: usize,
    },
}

impl Denied {
    /// The explanation sent to the device.
    pub fn explain(&self) -> String {
        match self {
            Denied::NotAuthorised => "not authorised: a device publishes only under its own jd/v1/dev/{id}/ (never inbox/) or owntracks/{id}/{device}".into(),
            Denied::NotInContract => "not authorised: not a topic of the wire contract (hb, presence, report, lookup, asg/{id}, ev/{evid}/meta, ev/{evid}/c/{n})".into(),
            Denied::RetainNotAllowed => "not authorised: only presence may be retained".into(),
            Denied::TooLarge { size, limit } => format!("payload of {size} bytes is larger than the {limit} bytes allowed on this topic"),
        }
    }
}

/// The account name a principal logs in under (device id, integration or service name).
pub fn principal_name(p: &Principal) -> &str {
    match p {
        Principal::Device { id } => id,
        Principal::Integration { name, .. } | Principal::Service { name } => name,
    }
}

/// Whether an account may connect under `client_id`: its own name, or `{name}-{suffix}` (a
/// second tool on the same account, or several processes of one role); never another account's
/// name. The embedded front and the external brokers' hooks ask the same question.
pub fn client_id_fits(name: &str, client_id: &str) -> bool {
    client_id == name || client_id.strip_prefix(name).is_some_and(|r| r.len() > 1 && r.starts_with('-'))
}

/// What a client asks to do with a topic, as an external broker's authorisation hook reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH to a topic (the payload size is not known to the hook), retained or not.
    Publish {
        /// The message is retained.
        retain: bool,
    },
    /// SUBSCRIBE to a filter (possibly `$share/{group}/…`).
    Subscribe,
}

/// Topic permissions of one authenticated connection.
#[derive(Debug, Clone)]
pub enum Acl {
    /// A work phone.
    Device {
        /// The device id.
        id: String,
        /// `jd/v1/dev/{id}/inbox/#`
        inbox_filter: String,
    },
    /// Another system, limited to the filters it was created with.
    Integration {
        /// Account name; its share groups must carry it.
        name: String,
        /// Filters it may subscribe within.
        subscribe: Vec<String>,
        /// Filters its publications must match.
        publish: Vec<String>,
    },
    /// One of the platform's own roles.
    Service,
}

impl Acl {
    /// The ACL for an authenticated principal.
    pub fn for_principal(p: &Principal) -> Acl {
        match p {
            Principal::Device { id } => Acl::Device { id: id.clone(), inbox_filter: format!("jd/v1/dev/{id}/inbox/#") },
            Principal::Integration { name, subscribe, publish } => {
                Acl::Integration { name: name.clone(), subscribe: subscribe.clone(), publish: publish.clone() }
            }
            Principal::Service { .. } => Acl::Service,
        }
    }

    /// Whether a PUBLISH (or a last will) to `topic` is allowed, ignoring size and retain.
    pub fn may_publish(&self, topic: &str) -> bool {
        match self.check_publish(topic, 0, false) {
            Ok(()) => true,
            Err(Denied::NotAuthorised | Denied::NotInContract) => false,
            Err(Denied::RetainNotAllowed | Denied::TooLarge { .. }) => true,
        }
    }

    /// Checks a PUBLISH (or a last will) of `size` payload bytes to `topic`, retained or not.
    pub fn check_publish(&self, topic: &str, size: usize, retain: bool) -> Result<(), Denied> {
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Err(Denied::NotAuthorised);
        }
        match self {
            Acl::Service => Ok(()),
            Acl::Device { id, .. } => {
                let in_own_space = topic
                    .strip_prefix("jd/v1/dev/")
                    .or_else(|| topic.strip_prefix("owntracks/"))
                    .and_then(|rest| rest.split_once('/'))
                    .is_some_and(|(owner, _)| owner == id);
                if !in_own_space {
                    return Err(Denied::NotAuthorised);
                }
                let parsed = Topic::parse(topic).map_err(|_| Denied::NotInContract)?;
                if parsed.device() != Some(id.as_str()) {
                    return Err(Denied::NotAuthorised);
                }
                let limit = match parsed {
                    Topic::Inbox { .. } => return Err(Denied::NotAuthorised),
                    Topic::Heartbeat { .. } => MAX_HEARTBEAT_BYTES,
                    Topic::EvidenceChunk { .. } => MAX_CHUNK_PAYLOAD_BYTES,
                    Topic::Report { .. } | Topic::AssignmentStatus { .. } => MAX_TEXT_MESSAGE_BYTES,
                    Topic::OwnTracks { .. } => MAX_OWNTRACKS_BYTES,
                    Topic::Presence { .. } | Topic::Lookup { .. } | Topic::EvidenceMeta { .. } => {
                        MAX_SMALL_MESSAGE_BYTES
                    }
                    Topic::IntegrationReport | Topic::Event { .. } | Topic::PlatformKey | Topic::PlatformCheckpoint => {
                        return Err(Denied::NotAuthorised);
                    }
                };
                if retain && !matches!(parsed, Topic::Presence { .. }) {
                    return Err(Denied::RetainNotAllowed);
                }
                if size > limit {
                    return Err(Denied::TooLarge { size, limit });
                }
                Ok(())
            }
            Acl::Integration { publish, .. } => {
                let allowed = !topic.starts_with("jd/v1/dev/")
                    && !topic.starts_with("owntracks/")
                    && !topic.starts_with('$')
                    && publish.iter().any(|f| filter_matches(f, topic));
                if allowed { Ok(()) } else { Err(Denied::NotAuthorised) }
            }
        }
    }

    /// The decision for an external broker's hook: the same rules as the embedded front, except
    /// the payload size, which a hook is not told (the external broker's own limit applies).
    pub fn allows(&self, action: Action, topic: &str) -> bool {
        match action {
            Action::Publish { retain } => self.check_publish(topic, 0, retain).is_ok(),
            Action::Subscribe => self.may_subscribe(topic),
        }
    }

    /// Whether a SUBSCRIBE to `filter` is allowed.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        if filter.is_empty() {
            return false;
        }
        match self {
            Acl::Service => true,
            Acl::Device { inbox_filter, .. } => {
                share_group(filter).is_none()
                    && (filter_within(filter, inbox_filter) || filter_within(filter, PLATFORM_KEY))
            }
            Acl::Integration { name, subscribe, .. } => {
                if let Some(group) = share_group(filter) {
                    let own = group == name
                        || group.strip_prefix(name.as_str()).is_some_and(|r| r.len() > 1 && r.starts_with('-'));
                    if !own || is_platform_share_group(group) {
                        return false;
                    }
                }
                subscribe.iter().any(|allowed| filter_within(filter, allowed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> Acl {
        Acl::for_principal(&Principal::Device { id: id.into() })
    }

    #[test]
    fn device_publishes_only_in_its_own_subtree() {
        let a = device("da");
        assert!(a.may_publish("jd/v1/dev/da/hb"));
        assert!(a.may_publish("jd/v1/dev/da/ev/01J/c/3"));
        assert!(a.may_publish("owntracks/da/phone"));
        assert!(!a.may_publish("owntracks/da/phone/extra"));
        assert!(!a.may_publish("owntracks/db/phone"));
        assert!(!a.may_publish("jd/v1/dev/db/hb"));
        assert!(!a.may_publish("jd/v1/dev/da/inbox/ack"));
        assert!(!a.may_publish("jd/v1/dev/da/"));
        assert!(!a.may_publish("jd/v1/dev/dab/hb"));
        assert!(!a.may_publish("jd/v1/events/report"));
        assert!(!a.may_publish("jd/v1/reports"));
        assert!(!a.may_publish("jd/v1/dev/da/+"));
    }

    #[test]
    fn device_subscribes_only_to_its_inbox() {
        let a = device("da");
        assert!(a.may_subscribe("jd/v1/dev/da/inbox/#"));
        assert!(a.may_subscribe("jd/v1/dev/da/inbox/assignment"));
        assert!(a.may_subscribe("jd/v1/platform/key"));
        assert!(!a.may_subscribe("#"));
        assert!(!a.may_subscribe("jd/v1/dev/+/inbox/#"));
        assert!(!a.may_subscribe("jd/v1/dev/db/inbox/#"));
        assert!(!a.may_subscribe("jd/v1/dev/da/#"));
        assert!(!a.may_subscribe("$share/g/jd/v1/dev/db/inbox/#"));
        assert!(!a.may_subscribe("$share/ingest-hb/jd/v1/dev/da/inbox/#"), "devices never share");
        assert!(!a.may_subscribe("$share/da/jd/v1/dev/da/inbox/#"));
    }

    #[test]
    fn device_publishes_only_contract_topics_retains_only_presence() {
        let a = device("da");
        assert_eq!(a.check_publish("jd/v1/dev/da/hb", 100, false), Ok(()));
        assert_eq!(a.check_publish("jd/v1/dev/da/presence", 30, true), Ok(()));
        assert_eq!(a.check_publish("jd/v1/dev/da/asg/a1", 30, false), Ok(()));
        assert_eq!(a.check_publish("jd/v1/dev/da/ev/e1/meta", 300, false), Ok(()));
        assert_eq!(a.check_publish("jd/v1/dev/da/ev/e1/c/0", MAX_CHUNK_BYTES + 1, false), Ok(()));
        assert_eq!(a.check_publish("jd/v1/dev/da/junk", 3, false), Err(Denied::NotInContract));
        assert_eq!(a.check_publish("jd/v1/dev/da/hb/x", 3, false), Err(Denied::NotInContract));
        assert_eq!(a.check_publish("jd/v1/dev/da/hb", 3, true), Err(Denied::RetainNotAllowed));
        assert_eq!(a.check_publish("jd/v1/dev/da/report", 3, true), Err(Denied::RetainNotAllowed));
        assert_eq!(
            a.check_publish("jd/v1/dev/da/ev/e1/c/0", MAX_CHUNK_PAYLOAD_BYTES + 1, false),
            Err(Denied::TooLarge { size: MAX_CHUNK_PAYLOAD_BYTES + 1, limit: MAX_CHUNK_PAYLOAD_BYTES })
        );
        assert!(matches!(a.check_publish("jd/v1/dev/da/presence", 5000, true), Err(Denied::TooLarge { .. })));
        assert!(matches!(
            a.check_publish("jd/v1/dev/da/hb", MAX_HEARTBEAT_BYTES + 1, false),
            Err(Denied::TooLarge { .. })
        ));
        assert_eq!(a.check_publish("jd/v1/dev/db/hb", 3, false), Err(Denied::NotAuthorised));
        assert_eq!(a.check_publish("jd/v1/dev/da/inbox/ack", 3, false), Err(Denied::NotAuthorised));
        assert_eq!(a.check_publish("owntracks/da/phone", 300, false), Ok(()));
        assert_eq!(a.check_publish("owntracks/da/phone", 300, true), Err(Denied::RetainNotAllowed));
    }

    #[test]
    fn integration_shares_only_in_its_own_groups() {
        let a = Acl::for_principal(&Principal::Integration {
            name: "city".into(),
            subscribe: vec!["jd/v1/events/#".into(), "jd/v1/reports".into()],
            publish: vec![],
        });
        assert!(a.may_subscribe("$share/city/jd/v1/events/#"));
        assert!(a.may_subscribe("$share/city-workers/jd/v1/events/report"));
        assert!(!a.may_subscribe("$share/dispatch-tip/jd/v1/reports"));
        assert!(!a.may_subscribe("$share/other/jd/v1/events/#"));
        assert!(!a.may_subscribe("$share/cityx/jd/v1/events/#"));
        assert!(!a.may_subscribe("$share/city/"));
        let named_like_a_role = Acl::for_principal(&Principal::Integration {
            name: "ingest".into(),
            subscribe: vec!["#".into()],
            publish: vec![],
        });
        assert!(!named_like_a_role.may_subscribe("$share/ingest-hb/jd/v1/dev/+/hb"));
        assert!(Acl::Service.may_subscribe("$share/ingest-hb/jd/v1/dev/+/hb"));
    }

    #[test]
    fn integration_is_held_to_its_filters() {
        let a = Acl::for_principal(&Principal::Integration {
            name: "city-hotline".into(),
            subscribe: vec!["jd/v1/events/#".into()],
            publish: vec!["jd/v1/reports".into()],
        });
        assert!(a.may_subscribe("jd/v1/events/report"));
        assert!(a.may_subscribe("jd/v1/events/#"));
        assert!(!a.may_subscribe("#"));
        assert!(!a.may_subscribe("jd/v1/dev/+/hb"));
        assert!(a.may_publish("jd/v1/reports"));
        assert!(!a.may_publish("jd/v1/dev/da/report"));
        assert!(!a.may_publish("jd/v1/events/report"));

        let wide = Acl::for_principal(&Principal::Integration {
            name: "wide".into(),
            subscribe: vec![],
            publish: vec!["#".into()],
        });
        assert!(!wide.may_publish("jd/v1/dev/da/hb"), "integrations never publish as a device");
        assert!(!wide.may_publish("owntracks/da/x"));
    }
}
