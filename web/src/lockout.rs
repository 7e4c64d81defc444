//! Failed-login counting for every way a person or program proves who it is over HTTP: the
//! view's login form, HTTP Basic and integration Bearer tokens (issue 15).
//!
//! Three counters, so that guessing is slow but a stranger cannot keep a leader out:
//! * per **(name, client address)**: [`PAIR_LIMIT`] failures within [`WINDOW`] lock that name
//!   *from that address* until the window ends. Only the guesser is locked.
//! * per **client address**, whatever the name: [`ADDRESS_LIMIT`] failures lock the address, so
//!   trying many names (or Bearer tokens, which have no name) from one place does not help.
//! * per **name**, from every address together: after [`NAME_FREE`] failures each further
//!   attempt must wait an exponentially growing delay (1 s, 2 s, 4 s … at most [`NAME_MAX_DELAY`])
//!   after the last failure. Addresses from which the name logged in successfully before are
//!   exempt, so the real user at their own desk still gets in while a botnet slows itself down.
//!
//! Refused attempts are not checked and do not count, so a lock never grows while it holds.
//! Counters live in memory with bounded size (a restart forgets them, like sessions).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per (name, address) within [`WINDOW`].
pub const PAIR_LIMIT: u32 = 5;
/// Failures allowed per address (any name, Basic, Bearer or form) within [`WINDOW`].
pub const ADDRESS_LIMIT: u32 = 10;
/// Failures of one name from all addresses before the global back-off starts.
pub const NAME_FREE: u32 = 10;
/// The longest global back-off of one name.
pub const NAME_MAX_DELAY: Duration = Duration::from_secs(900);
/// The window over which failures are counted.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Most counters kept before expired ones are dropped (and then the oldest).
const MAX_ENTRIES: usize = 100_000;
/// Addresses remembered per name as known good.
const MAX_KNOWN_PER_NAME: usize = 16;

/// A failure count and when its window started (and the last failure, for the back-off).
#[derive(Debug, Clone, Copy)]
struct Count {
    n: u32,
    since: Instant,
    last: Instant,
}

#[derive(Default)]
struct Counters {
    pairs: HashMap<(String, IpAddr), Count>,
    addresses: HashMap<IpAddr, Count>,
    names: HashMap<String, Count>,
    known: HashMap<String, Vec<IpAddr>>,
}

/// The failed-login counters of the web role, shared by the login form, Basic and Bearer.
#[derive(Default)]
pub struct Lockout {
    counters: Mutex<Counters>,
}

fn live(c: &Count, now: Instant) -> bool {
    now.duration_since(c.since) < WINDOW
}

fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Count>, key: K, now: Instant) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, c| live(c, now));
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
    }
    let c = map.entry(key).or_insert(Count { n: 0, since: now, last: now });
    if !live(c, now) {
        *c = Count { n: 0, since: now, last: now };
    }
    c.n += 1;
    c.last = now;
}

/// Seconds left of a window lock, at least 1.
fn window_left(c: &Count, now: Instant) -> u64 {
    WINDOW.saturating_sub(now.duration_since(c.since)).as_secs().max(1)
}

/// The global back-off of a name after `n` failures.
fn name_delay(n: u32) -> Duration {
    if n < NAME_FREE {
        return Duration::ZERO;
    }
    let exp = (n - NAME_FREE).min(20);
    Duration::from_secs(1u64 << exp).min(NAME_MAX_DELAY)
}

impl Lockout {
    /// Seconds until `name` may be tried again from `ip`, if any counter refuses it now. `name`
    /// is `None` for a Bearer token (only the address counts).
    pub fn retry_after(&self, name: Option<&str>, ip: Option<IpAddr>) -> Option<u64> {
        let now = Instant::now();
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait: Option<u64> = None;
        let mut worse = |s: u64| wait = Some(wait.map_or(s, |w| w.max(s)));
        if let Some(ip) = ip {
            if let Some(a) = c.addresses.get(&ip).filter(|a| live(a, now) && a.n >= ADDRESS_LIMIT) {
                worse(window_left(a, now));
            }
            if let Some(name) = name
                && let Some(p) = c.pairs.get(&(name.to_owned(), ip)).filter(|p| live(p, now) && p.n >= PAIR_LIMIT)
            {
                worse(window_left(p, now));
            }
        }
        if let Some(name) = name
            && let Some(g) = c.names.get(name).filter(|g| live(g, now) || now.duration_since(g.last) < NAME_MAX_DELAY)
        {
            let known = ip.is_some_and(|ip| c.known.get(name).is_some_and(|k| k.contains(&ip)));
            let delay = name_delay(g.n);
            let since_last = now.duration_since(g.last);
            if !known && since_last < delay {
                worse((delay - since_last).as_secs().max(1));
            }
        }
        wait
    }

    /// Counts a failed attempt for `name` (if any) from `ip` (if known).
    pub fn failed(&self, name: Option<&str>, ip: Option<IpAddr>) {
        let now = Instant::now();
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = ip {
            bump(&mut c.addresses, ip, now);
            if let Some(name) = name {
                bump(&mut c.pairs, (name.to_owned(), ip), now);
            }
        }
        if let Some(name) = name {
            // The name's count lives as long as its back-off, not just the window.
            let stale =
                c.names.get(name).is_some_and(|g| !live(g, now) && now.duration_since(g.last) >= name_delay(g.n));
            if stale {
                c.names.remove(name);
            }
            let g = c.names.entry(name.to_owned()).or_insert(Count { n: 0, since: now, last: now });
            g.n = g.n.saturating_add(1);
            g.last = now;
            if c.names.len() > MAX_ENTRIES {
                c.names.retain(|_, g| live(g, now) || now.duration_since(g.last) < name_delay(g.n));
            }
        }
    }

    /// Clears the (name, address) counter after a success and remembers the address as one the
    /// name logs in from.
    pub fn succeeded(&self, name: &str, ip: Option<IpAddr>) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ip) = ip else { return };
        c.pairs.remove(&(name.to_owned(), ip));
        if c.known.len() >= MAX_ENTRIES && !c.known.contains_key(name) {
            c.known.clear();
        }
        let known = c.known.entry(name.to_owned()).or_default();
        if !known.contains(&ip) {
            if known.len() >= MAX_KNOWN_PER_NAME {
                known.remove(0);
            }
            known.push(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Option<IpAddr> {
        Some([10, 0, 0, n].into())
    }

    #[test]
    fn a_name_locks_only_from_the_guessing_address() {
        let l = Lockout::default();
        for _ in 0..PAIR_LIMIT - 1 {
            l.failed(Some("leader"), ip(1));
        }
        assert_eq!(l.retry_after(Some("leader"), ip(1)), None);
        l.failed(Some("leader"), ip(1));
        assert!(l.retry_after(Some("leader"), ip(1)).unwrap() > 290);
        assert_eq!(l.retry_after(Some("leader"), ip(2)), None, "the real user elsewhere is not locked");
        assert_eq!(l.retry_after(Some("desk"), ip(1)), None, "the address is not locked yet");
    }

    #[test]
    fn an_address_locks_after_many_names_or_tokens() {
        let l = Lockout::default();
        for i in 0..ADDRESS_LIMIT {
            l.failed(if i % 2 == 0 { None } else { Some("x") }, ip(3));
        }
        assert!(l.retry_after(None, ip(3)).is_some());
        assert!(l.retry_after(Some("anyone"), ip(3)).is_some());
        assert_eq!(l.retry_after(None, ip(4)), None);
    }

    #[test]
    fn the_global_back_off_grows_and_spares_known_addresses() {
        let l = Lockout::default();
        l.succeeded("leader", ip(9));
        for i in 0..NAME_FREE {
            l.failed(Some("leader"), ip(10 + (i as u8 % 5)));
        }
        assert!(l.retry_after(Some("leader"), ip(50)).is_some(), "a new address waits");
        assert_eq!(l.retry_after(Some("leader"), ip(9)), None, "the user's own address does not");
        assert_eq!(name_delay(NAME_FREE), Duration::from_secs(1));
        assert_eq!(name_delay(NAME_FREE + 3), Duration::from_secs(8));
        assert_eq!(name_delay(u32::MAX), NAME_MAX_DELAY);
    }
}
