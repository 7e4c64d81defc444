//! Live sessions per account: how many one account may hold, and how to end them all when the
//! account is revoked.
//!
//! Every authenticated connection registers here before it is linked into the router and
//! unregisters when it ends (the [`Registration`] guard). An account is capped by the number of
//! distinct client ids it holds live: a phone reconnecting with its own client id (the router
//! will take the old session over) is always let in, so a phone whose old TCP connection died
//! silently on 4G never locks itself out; a stolen token used from many places at once is
//! refused. The revocation watcher ([`crate::start`]) calls [`Sessions::end`] for every account
//! the store reports revoked, which cancels each session's token; the session then sends
//! DISCONNECT (0x98, administrative action, on MQTT 5) and closes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Which account a session belongs to: device ids and account names are separate namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum AccountKey {
    /// A work phone, by device id.
    Device(String),
    /// An integration or service account, by name.
    Account(String),
}

struct Live {
    id: u64,
    client_id: String,
    end: CancellationToken,
}

/// The live sessions of every account.
#[derive(Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<AccountKey, Vec<Live>>>,
    next_id: AtomicU64,
}

/// A session's place in [`Sessions`]; dropping it unregisters the session.
pub(crate) struct Registration {
    sessions: Arc<Sessions>,
    key: AccountKey,
    id: u64,
    /// Cancelled when the account is revoked.
    pub ended: CancellationToken,
}

impl Sessions {
    /// Registers a session of `key` with `client_id`; `None` when the account already holds
    /// `cap` other client ids.
    pub fn register(self: &Arc<Self>, key: AccountKey, client_id: &str, cap: Option<usize>) -> Option<Registration> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let sessions = live.entry(key.clone()).or_default();
        if let Some(cap) = cap
            && !sessions.iter().any(|s| s.client_id == client_id)
        {
            let mut ids: Vec<&str> = sessions.iter().map(|s| s.client_id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() >= cap {
                return None;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ended = CancellationToken::new();
        sessions.push(Live { id, client_id: client_id.to_owned(), end: ended.clone() });
        Some(Registration { sessions: self.clone(), key, id, ended })
    }

    /// Ends every live session of `key`; returns how many there were.
    pub fn end(&self, key: &AccountKey) -> usize {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sessions) = live.get(key) else { return 0 };
        for s in sessions {
            s.end.cancel();
        }
        sessions.len()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.sessions.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sessions) = live.get_mut(&self.key) {
            sessions.retain(|s| s.id != self.id);
            if sessions.is_empty() {
                live.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_counts_distinct_client_ids_and_frees_on_drop() {
        let s = Arc::new(Sessions::default());
        let key = AccountKey::Device("d1".into());
        let a = s.register(key.clone(), "d1", Some(2)).unwrap();
        let a_again = s.register(key.clone(), "d1", Some(2)).expect("a reconnect with the same client id");
        let b = s.register(key.clone(), "d1-tool", Some(2)).unwrap();
        assert!(s.register(key.clone(), "d1-third", Some(2)).is_none(), "third client id over the cap");
        assert!(s.register(AccountKey::Account("d1".into()), "d1-third", Some(2)).is_some(), "other namespace");
        drop(b);
        let c = s.register(key.clone(), "d1-third", Some(2)).expect("room again after one ended");
        assert_eq!(s.end(&key), 3);
        assert!(a.ended.is_cancelled() && a_again.ended.is_cancelled() && c.ended.is_cancelled());
        drop((a, a_again, c));
        assert_eq!(s.end(&key), 0);
        assert!(s.live.lock().unwrap().is_empty());
    }
}
