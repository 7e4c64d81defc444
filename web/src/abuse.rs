//! Abuse limits of the public tip endpoints (issue 19), without outside services.
//!
//! Everything is kept in the web role's memory, keyed by the client address the server sees (an
//! IPv6 address by its /64, which one subscriber usually holds): these counters are the only
//! place a public submitter's address is kept, and they forget it when its window passes.
//! - Per address: at most [`TipLimits::per_address`] submissions (attempts, refused ones too)
//!   per [`TipLimits::window`]; beyond, 429 with `Retry-After` until the oldest leaves the
//!   window. The default (10 in 10 minutes) lets a family behind one address send a few tips and
//!   stops a script long before its hundredth.
//! - Everyone together: at most [`TipLimits::global_per_minute`] submissions a minute.
//! - A proof of work when the rate is high: from the [`TipLimits::challenge_after`]-th attempt of
//!   an address within the window, or when everyone together sends more than half the global
//!   limit, a submission must carry `X-Tip-Proof: {challenge}:{nonce}` where the SHA-256 of
//!   `{challenge}:{nonce}` starts with [`TipLimits::difficulty`] zero bits. The challenge is
//!   signed by this process (HMAC-SHA256 with a key made at start), expires after five minutes
//!   and is taken once. The page solves it in JS (about 2^15 hashes); a script pays per tip.
//! - Failed follow-ups (unknown code or wrong secret) per address: [`TipLimits::lookups_failed`]
//!   per window, then 429, so codes cannot be walked.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// How long a challenge may be used after it was issued.
const CHALLENGE_TTL: Duration = Duration::from_secs(300);
/// Most addresses tracked at once; beyond, the stalest are forgotten first.
const MAX_ADDRESSES: usize = 100_000;

/// The limits (`[public]` in the config file).
#[derive(Debug, Clone)]
pub struct TipLimits {
    /// Submissions per address per window.
    pub per_address: usize,
    /// The sliding window of the per-address counters.
    pub window: Duration,
    /// Submissions a minute from everyone together.
    pub global_per_minute: usize,
    /// From this attempt of an address within the window on, a proof of work is required.
    pub challenge_after: usize,
    /// Leading zero bits the proof's SHA-256 must have.
    pub difficulty: u32,
    /// Failed follow-ups (unknown code or wrong secret) per address per window.
    pub lookups_failed: usize,
}

impl Default for TipLimits {
    fn default() -> TipLimits {
        TipLimits {
            per_address: 10,
            window: Duration::from_secs(600),
            global_per_minute: 120,
            challenge_after: 4,
            difficulty: 15,
            lookups_failed: 10,
        }
    }
}

/// What the limiter says about a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Pass,
    /// Too many: refuse with 429 and `Retry-After` of this many seconds.
    Wait(u64),
    /// Needs a proof of work first: this challenge (and the difficulty) go to the client.
    Challenge(String),
}

/// The public endpoints' counters and the challenge key.
pub struct TipLimiter {
    limits: TipLimits,
    key: [u8; 32],
    state: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    submissions: HashMap<IpAddr, VecDeque<Instant>>,
    failed_lookups: HashMap<IpAddr, VecDeque<Instant>>,
    everyone: VecDeque<Instant>,
    used_proofs: HashMap<String, Instant>,
}

impl Default for TipLimiter {
    fn default() -> TipLimiter {
        TipLimiter::new(TipLimits::default())
    }
}

/// The key the counters use for an address: IPv4 as is, IPv6 by its /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Drops instants older than `window` from the front.
fn expire(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
        q.pop_front();
    }
}

/// Seconds until the oldest instant leaves the window (at least 1).
fn retry_after(q: &VecDeque<Instant>, now: Instant, window: Duration) -> u64 {
    let oldest = q.front().copied().unwrap_or(now);
    window.saturating_sub(now.duration_since(oldest)).as_secs().max(1)
}

/// Keeps a per-address map bounded: forgets empty entries, then the stalest.
fn prune(map: &mut HashMap<IpAddr, VecDeque<Instant>>, now: Instant, window: Duration) {
    if map.len() < MAX_ADDRESSES {
        return;
    }
    map.retain(|_, q| {
        expire(q, now, window);
        !q.is_empty()
    });
    while map.len() >= MAX_ADDRESSES {
        let Some(stalest) = map.iter().min_by_key(|(_, q)| q.back().copied()).map(|(k, _)| *k) else { break };
        map.remove(&stalest);
    }
}

fn unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl TipLimiter {
    /// A limiter with these limits and a fresh challenge key.
    pub fn new(limits: TipLimits) -> TipLimiter {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        TipLimiter { limits, key, state: Mutex::default() }
    }

    /// The limits in force.
    pub fn limits(&self) -> &TipLimits {
        &self.limits
    }

    /// Counts a submission attempt from `ip` and says whether it may go on; `proof` is the
    /// `X-Tip-Proof` header, checked (and used up) only when a challenge is due.
    pub fn submission(&self, ip: Option<IpAddr>, proof: Option<&str>) -> Verdict {
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let mut c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        expire(&mut c.everyone, now, minute);
        if c.everyone.len() >= self.limits.global_per_minute {
            return Verdict::Wait(retry_after(&c.everyone, now, minute));
        }
        let busy = c.everyone.len() * 2 >= self.limits.global_per_minute;
        let window = self.limits.window;
        prune(&mut c.submissions, now, window);
        let mine = ip.map(bucket).map(|ip| c.submissions.entry(ip).or_default());
        let earlier = match mine {
            Some(q) => {
                expire(q, now, window);
                if q.len() >= self.limits.per_address {
                    return Verdict::Wait(retry_after(q, now, window));
                }
                q.push_back(now);
                q.len() - 1
            }
            None => 0,
        };
        c.everyone.push_back(now);
        let due = busy || earlier + 1 >= self.limits.challenge_after;
        if !due {
            return Verdict::Pass;
        }
        c.used_proofs.retain(|_, t| now.duration_since(*t) < CHALLENGE_TTL);
        match proof.and_then(|p| self.check_proof(p)) {
            Some(challenge) if !c.used_proofs.contains_key(&challenge) => {
                c.used_proofs.insert(challenge, now);
                Verdict::Pass
            }
            _ => Verdict::Challenge(self.challenge()),
        }
    }

    /// Whether `ip` may try a follow-up now (`Some(seconds)` to wait otherwise).
    pub fn lookup_allowed(&self, ip: Option<IpAddr>) -> Option<u64> {
        let ip = bucket(ip?);
        let now = Instant::now();
        let mut c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let q = c.failed_lookups.get_mut(&ip)?;
        expire(q, now, self.limits.window);
        (q.len() >= self.limits.lookups_failed).then(|| retry_after(q, now, self.limits.window))
    }

    /// Counts a failed follow-up (unknown code or wrong secret) from `ip`.
    pub fn lookup_failed(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip.map(bucket) else { return };
        let now = Instant::now();
        let mut c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut c.failed_lookups, now, self.limits.window);
        c.failed_lookups.entry(ip).or_default().push_back(now);
    }

    /// A fresh challenge: `{expires}.{difficulty}.{random}.{hmac}` (hex), valid five minutes.
    pub fn challenge(&self) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let body = format!("{}.{}.{}", unix_s() + CHALLENGE_TTL.as_secs(), self.limits.difficulty, hex::encode(nonce));
        format!("{body}.{}", self.sign(&body))
    }

    fn sign(&self, body: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(body.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The challenge of a valid proof `{challenge}:{nonce}` (signed by us, not expired, enough
    /// zero bits), or `None`.
    fn check_proof(&self, proof: &str) -> Option<String> {
        if proof.len() > 300 {
            return None;
        }
        let (challenge, nonce) = proof.rsplit_once(':')?;
        if nonce.is_empty() || nonce.len() > 40 {
            return None;
        }
        let (body, sig) = challenge.rsplit_once('.')?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).ok()?;
        mac.update(body.as_bytes());
        mac.verify_slice(&hex::decode(sig).ok()?).ok()?;
        let mut parts = body.split('.');
        let expires: u64 = parts.next()?.parse().ok()?;
        let difficulty: u32 = parts.next()?.parse().ok()?;
        if expires < unix_s() || difficulty < self.limits.difficulty {
            return None;
        }
        (leading_zero_bits(&Sha256::digest(proof.as_bytes())) >= difficulty).then(|| challenge.to_owned())
    }
}

/// Leading zero bits of a hash.
pub fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut n = 0;
    for b in hash {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// Solves a challenge: the first nonce (decimal) whose proof has enough zero bits. For API
/// clients written in Rust and for tests; the page does the same in JS.
pub fn solve(challenge: &str, difficulty: u32) -> String {
    (0u64..)
        .map(|n| n.to_string())
        .find(|n| leading_zero_bits(&Sha256::digest(format!("{challenge}:{n}").as_bytes())) >= difficulty)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> Option<IpAddr> {
        Some("192.0.2.7".parse().unwrap())
    }

    #[test]
    fn a_script_is_stopped_and_must_work_before_that() {
        let l = TipLimiter::new(TipLimits { difficulty: 8, ..TipLimits::default() });
        for _ in 0..3 {
            assert_eq!(l.submission(ip(), None), Verdict::Pass);
        }
        let Verdict::Challenge(c) = l.submission(ip(), None) else { panic!("fourth needs a proof") };
        let proof = format!("{c}:{}", solve(&c, 8));
        assert_eq!(l.submission(ip(), Some(&proof)), Verdict::Pass);
        assert!(matches!(l.submission(ip(), Some(&proof)), Verdict::Challenge(_)), "a proof is taken once");
        for _ in 0..4 {
            l.submission(ip(), None);
        }
        assert!(matches!(l.submission(ip(), None), Verdict::Wait(s) if s > 0 && s <= 600));
        // Another address is not affected.
        assert_eq!(l.submission(Some("192.0.2.8".parse().unwrap()), None), Verdict::Pass);
    }

    #[test]
    fn forged_or_weak_proofs_are_refused() {
        let l = TipLimiter::new(TipLimits { difficulty: 8, ..TipLimits::default() });
        let c = l.challenge();
        assert!(l.check_proof(&format!("{c}:{}", solve(&c, 8))).is_some());
        let forged = c.replace(".8.", ".0.");
        assert!(l.check_proof(&format!("{forged}:1")).is_none());
        let other = TipLimiter::new(TipLimits { difficulty: 8, ..TipLimits::default() }).challenge();
        assert!(l.check_proof(&format!("{other}:{}", solve(&other, 8))).is_none(), "another key");
    }

    #[test]
    fn ipv6_counts_by_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
    }
}
