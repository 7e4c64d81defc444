//! Who may publish and subscribe where (DESIGN §3, ACL).
//!
//! A device publishes only under its own `jd/v1/dev/{id}/` subtree (never into `inbox/`) or its
//! OwnTracks topic, and subscribes only to its own `inbox/#` and the platform key. An integration
//! account gets exactly the filters it was created with, and can never publish as a device.
//! Internal service accounts (the platform's own roles) may do anything.

use jiandu_schemas::topic::{filter_matches, filter_within};
use jiandu_store::Principal;

/// The platform's public key topic, readable by everyone who is logged in.
const PLATFORM_KEY: &str = "jd/v1/platform/key";

/// Topic permissions of one authenticated connection.
#[derive(Debug, Clone)]
pub enum Acl {
    /// A work phone.
    Device {
        /// `jd/v1/dev/{id}/`
        prefix: String,
        /// `jd/v1/dev/{id}/inbox/`
        inbox: String,
        /// `jd/v1/dev/{id}/inbox/#`
        inbox_filter: String,
        /// `owntracks/{id}/`
        owntracks: String,
    },
    /// Another system, limited to the filters it was created with.
    Integration {
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
            Principal::Device { id } => Acl::Device {
                prefix: format!("jd/v1/dev/{id}/"),
                inbox: format!("jd/v1/dev/{id}/inbox/"),
                inbox_filter: format!("jd/v1/dev/{id}/inbox/#"),
                owntracks: format!("owntracks/{id}/"),
            },
            Principal::Integration { subscribe, publish, .. } => {
                Acl::Integration { subscribe: subscribe.clone(), publish: publish.clone() }
            }
            Principal::Service { .. } => Acl::Service,
        }
    }

    /// Whether a PUBLISH (or a last will) to `topic` is allowed.
    pub fn may_publish(&self, topic: &str) -> bool {
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return false;
        }
        match self {
            Acl::Service => true,
            Acl::Device { prefix, inbox, owntracks, .. } => {
                if let Some(rest) = topic.strip_prefix(owntracks.as_str()) {
                    return !rest.is_empty() && !rest.contains('/');
                }
                topic.len() > prefix.len() && topic.starts_with(prefix.as_str()) && !topic.starts_with(inbox.as_str())
            }
            Acl::Integration { publish, .. } => {
                !topic.starts_with("jd/v1/dev/")
                    && !topic.starts_with("owntracks/")
                    && !topic.starts_with('$')
                    && publish.iter().any(|f| filter_matches(f, topic))
            }
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
                filter_within(filter, inbox_filter) || filter_within(filter, PLATFORM_KEY)
            }
            Acl::Integration { subscribe, .. } => subscribe.iter().any(|allowed| filter_within(filter, allowed)),
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
