//! Browser sessions of the web view: login with a user's name and password, an opaque session
//! cookie (`HttpOnly`, `SameSite=Strict`), a per-session CSRF token that every state-changing
//! request must echo in the `X-CSRF-Token` header, and a limit on failed logins per name and per
//! client address.
//!
//! Sessions live in the web role's memory: a restart logs everyone out, which a 24-hour desk
//! notices as one extra login, and which keeps stolen cookies from outliving the process. The
//! CSRF token is a synchronizer token (kept server-side with the session), so a cross-site form
//! or `fetch` cannot forge it even if it could make the browser send the cookie.

use std::collections::HashMap;
use std::net::IpAddr;
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
/// Failed logins allowed per name, and per client address, within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 5;
/// The window over which failed logins are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who logged in.
    pub user: User,
    /// The token the browser must send in `X-CSRF-Token`.
    pub csrf: String,
    expires: Instant,
}

/// The live sessions and the failed-login counters.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
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

    /// Ends a session (logout).
    pub fn remove(&self, id: &str) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Seconds until another login may be tried for `name` from `ip`, if either is locked out.
    pub fn locked_for(&self, name: &str, ip: Option<IpAddr>) -> Option<u64> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        keys(name, ip)
            .iter()
            .filter_map(|k| failures.get(k))
            .filter(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW)
            .map(|(_, since)| (FAILURE_WINDOW - since.elapsed()).as_secs().max(1))
            .max()
    }

    /// Counts a failed login against the name and the address.
    pub fn failed(&self, name: &str, ip: Option<IpAddr>) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() > 100_000 {
            failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        for k in keys(name, ip) {
            let e = failures.entry(k).or_insert((0, Instant::now()));
            if e.1.elapsed() >= FAILURE_WINDOW {
                *e = (0, Instant::now());
            }
            e.0 += 1;
        }
    }

    /// Clears the name's counter after a successful login.
    pub fn succeeded(&self, name: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&format!("name:{name}"));
    }
}

fn keys(name: &str, ip: Option<IpAddr>) -> Vec<String> {
    let mut k = vec![format!("name:{name}")];
    if let Some(ip) = ip {
        k.push(format!("ip:{ip}"));
    }
    k
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
    fn five_failures_lock_the_name_and_the_address() {
        let s = Sessions::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..MAX_FAILURES - 1 {
            s.failed("desk", Some(ip));
        }
        assert_eq!(s.locked_for("desk", Some(ip)), None);
        s.failed("desk", Some(ip));
        assert!(s.locked_for("desk", None).unwrap() > 290);
        assert!(s.locked_for("other", Some(ip)).is_some(), "the address is locked too");
        assert_eq!(s.locked_for("other", Some([10, 0, 0, 2].into())), None);
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
