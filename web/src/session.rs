//! Browser sessions of the web view: login with a user's name and password, an opaque session
//! cookie (`HttpOnly`, `SameSite=Strict`), a per-session CSRF token that every state-changing
//! request must echo in the `X-CSRF-Token` header. Failed logins are counted by
//! [`crate::lockout`].
//!
//! Sessions live in the web role's memory: a restart logs everyone out, which a 24-hour desk
//! notices as one extra login, and which keeps stolen cookies from outliving the process. The
//! CSRF token is a synchronizer token (kept server-side with the session), so a cross-site form
//! or `fetch` cannot forge it even if it could make the browser send the cookie.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiandu_store::User;
use rand::RngCore;

/// Name of the session cookie.
pub const COOKIE: &str = "jd_session";
/// Header carrying the CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends this long after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who logged in.
    pub user: User,
    /// The token the browser must send in `X-CSRF-Token`.
    pub csrf: String,
    expires: Instant,
}

/// The live sessions.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes as lowercase hex.
fn token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    /// Starts a session for `user`; returns the cookie value and the session.
    pub fn create(&self, user: User) -> (String, Session) {
        let id = token();
        let session = Session { user, csrf: token(), expires: Instant::now() + SESSION_TTL };
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.len() > 10_000 {
            let now = Instant::now();
            live.retain(|_, s| s.expires > now);
        }
        live.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The session behind a cookie value, if it exists and has not expired.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                live.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends every session of a user (disabled).
    pub fn end_user(&self, user_id: &str) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, s| s.user.id != user_id);
    }

    /// Ends a session (logout).
    pub fn remove(&self, id: &str) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|c| c.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// Compares two strings in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: "u1".into(),
            name: "desk".into(),
            role: jiandu_store::Role::Dispatcher,
            created_at: 0,
            disabled_at: None,
        }
    }

    #[test]
    fn sessions_are_found_by_cookie_and_end_at_logout() {
        let s = Sessions::default();
        let (id, session) = s.create(user());
        assert_eq!(id.len(), 64);
        assert_eq!(s.get(&id).unwrap().csrf, session.csrf);
        assert!(s.get("nope").is_none());
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn cookies_and_tokens_parse() {
        assert_eq!(cookie("a=1; jd_session=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie("a=1", COOKIE), None);
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
    }
}
