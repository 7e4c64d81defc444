//! Session lifetimes as MQTT 5.0 defines them, over rumqttd's single `clean` flag.
//!
//! rumqttd's router has one flag per connection: a clean connection drops any saved state when
//! it connects and saves nothing when it ends; a non-clean one resumes saved state and saves its
//! own (subscriptions and read cursors, so messages published meanwhile are delivered on return)
//! forever. MQTT 5 splits this into Clean Start (discard at connect) and Session Expiry Interval
//! (how long to keep after the connection), and delays the will by the Will Delay Interval. The
//! front keeps, per client id, a [`SavedSessions`] entry: connections to the router are non-clean
//! whenever the session must outlive the connection, and the front ends a router session itself
//! (connect a clean link with the same client id, then DISCONNECT it) when Clean Start asks for
//! it or the expiry passes. The entry also keeps what the router cannot: the client's
//! subscription options (see `delivery`) and a will waiting for its delay. A generation number
//! per client id makes a late timer or a replaced connection harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, Publish, PublishProperties};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::delivery::Subscriptions;
use crate::front::LinkFactory;

/// A will waiting for its delay (already stamped, ready for the router).
pub(crate) type PendingWill = (Publish, Option<PublishProperties>);

/// Per-client-id session state the router does not keep.
pub(crate) struct SavedSessions {
    links: LinkFactory,
    entries: Mutex<HashMap<String, Entry>>,
    generations: AtomicU64,
}

struct Entry {
    generation: u64,
    /// A non-clean router link was used: the router may hold a saved session.
    router_saved: bool,
    /// The subscriptions of a session kept after its connection ended.
    saved: Option<Subscriptions>,
    will: Option<PendingWill>,
}

/// What a new connection starts from.
pub(crate) struct Begun {
    /// Identifies this connection's claim on the client id.
    pub generation: u64,
    /// The `clean` flag for the router link.
    pub router_clean: bool,
    /// Subscriptions of the resumed session (if the router says it is present).
    pub restored: Option<Subscriptions>,
}

/// How a connection's session ends.
pub(crate) struct Ending {
    /// Seconds to keep the session; `None` keeps it until a clean connection (MQTT 3.1.1).
    pub expiry: Option<u32>,
    /// The client's subscriptions, to restore on return.
    pub subscriptions: Subscriptions,
    /// A will to publish after this many seconds unless the client returns first.
    pub delayed_will: Option<(PendingWill, u32)>,
}

impl SavedSessions {
    /// Session bookkeeping over the router reached through `links`.
    pub fn new(links: LinkFactory) -> Arc<SavedSessions> {
        Arc::new(SavedSessions { links, entries: Mutex::new(HashMap::new()), generations: AtomicU64::new(1) })
    }

    /// Claims `client_id` for a new connection. `keep` says whether the session must outlive
    /// the connection (MQTT 5: Session Expiry Interval above 0; 3.1.1: clean session 0).
    pub async fn begin(&self, client_id: &str, clean_start: bool, keep: bool) -> Begun {
        let mut entries = self.entries.lock().await;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let old = entries.remove(client_id);
        let mut restored = None;
        if let Some(mut old) = old {
            if clean_start {
                // The old session ends now: its delayed will is due, its router state goes.
                if let Some(will) = old.will.take() {
                    self.publish_will(client_id, will).await;
                }
                if old.router_saved && keep {
                    self.end_router_session(client_id).await;
                }
            } else {
                // The client is back in time: its delayed will is not sent (MQTT 5 §3.1.3.2.2).
                restored = old.saved.take();
            }
        }
        // A clean link drops any saved router state by itself; one that must be kept is not clean.
        let router_clean = !keep && clean_start;
        entries
            .insert(client_id.to_owned(), Entry { generation, router_saved: !router_clean, saved: None, will: None });
        Begun { generation, router_clean, restored }
    }

    /// Records the end of the connection `generation` of `client_id`: forgets, keeps with an
    /// expiry, or ends the router session now.
    pub async fn end(self: &Arc<Self>, client_id: &str, generation: u64, ending: Ending) {
        let mut entries = self.entries.lock().await;
        let Some(entry) = entries.get_mut(client_id) else { return };
        if entry.generation != generation {
            return; // A newer connection has the client id.
        }
        if !entry.router_saved {
            entries.remove(client_id);
            return;
        }
        if ending.expiry == Some(0) {
            entries.remove(client_id);
            self.end_router_session(client_id).await;
            return;
        }
        entry.saved = Some(ending.subscriptions);
        if let Some((will, delay)) = ending.delayed_will {
            entry.will = Some(will);
            let delay = ending.expiry.map_or(delay, |e| e.min(delay));
            let me = self.clone();
            let id = client_id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                me.will_due(&id, generation).await;
            });
        }
        if let Some(expiry) = ending.expiry {
            let me = self.clone();
            let id = client_id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
                me.expired(&id, generation).await;
            });
        }
    }

    async fn will_due(&self, client_id: &str, generation: u64) {
        let mut entries = self.entries.lock().await;
        let Some(entry) = entries.get_mut(client_id).filter(|e| e.generation == generation) else { return };
        if let Some(will) = entry.will.take() {
            self.publish_will(client_id, will).await;
        }
    }

    async fn expired(&self, client_id: &str, generation: u64) {
        let mut entries = self.entries.lock().await;
        if entries.get(client_id).is_none_or(|e| e.generation != generation) {
            return;
        }
        if let Some(mut entry) = entries.remove(client_id)
            && let Some(will) = entry.will.take()
        {
            self.publish_will(client_id, will).await;
        }
        debug!(client = %client_id, "session expired");
        self.end_router_session(client_id).await;
    }

    /// Publishes a will through a short-lived link of its own (its connection is gone).
    async fn publish_will(&self, client_id: &str, (publish, props): PendingWill) {
        let links = self.links.clone();
        // The router refuses `+$#/` in client ids; U+0000 keeps it apart from every real one.
        let id = format!("\u{0}will-{client_id}");
        let linked = tokio::task::spawn_blocking(move || links(&id, true, 0)).await;
        match linked {
            Ok(Ok((mut tx, _rx, _ack))) => {
                tx.send(Packet::Publish(publish, props)).await.ok();
                let bye = Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection };
                tx.send(Packet::Disconnect(bye, None)).await.ok();
                debug!(client = %client_id, "delayed last will published");
            }
            Ok(Err(e)) => warn!(error = %e, "router refused the will link"),
            Err(e) => warn!(error = %e, "will link task failed"),
        }
    }

    /// Drops the router's saved session of `client_id`: a clean link takes it over and leaves.
    async fn end_router_session(&self, client_id: &str) {
        let links = self.links.clone();
        let id = client_id.to_owned();
        match tokio::task::spawn_blocking(move || links(&id, true, 0)).await {
            Ok(Ok((mut tx, _rx, _ack))) => {
                let bye = Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection };
                tx.send(Packet::Disconnect(bye, None)).await.ok();
            }
            Ok(Err(e)) => warn!(error = %e, "router refused the link ending a session"),
            Err(e) => warn!(error = %e, "session end task failed"),
        }
    }
}
