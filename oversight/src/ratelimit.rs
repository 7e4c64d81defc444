//! Per-device rate limit for look-ups: a token bucket per phone, so a burst on site is fine
//! but a phone (or a script with its credentials) cannot sweep the registries.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Token buckets by device id.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    buckets: HashMap<String, (f64, Instant)>,
}

impl RateLimit {
    /// `per_minute` sustained look-ups with bursts of `burst`; `per_minute == 0` means no limit.
    pub fn new(per_minute: u32, burst: u32) -> RateLimit {
        RateLimit { per_second: f64::from(per_minute) / 60.0, burst: f64::from(burst.max(1)), buckets: HashMap::new() }
    }

    /// Takes a token for `device`, or says how long until the next one.
    pub fn check(&mut self, device: &str, now: Instant) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        if self.buckets.len() > 100_000 {
            let full = self.burst / self.per_second;
            self.buckets.retain(|_, (_, t)| now.duration_since(*t).as_secs_f64() < full);
        }
        let (tokens, last) = self.buckets.entry(device.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills() {
        let mut rl = RateLimit::new(60, 3);
        let t = Instant::now();
        for _ in 0..3 {
            rl.check("d1", t).unwrap();
        }
        let wait = rl.check("d1", t).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        rl.check("d2", t).unwrap();
        rl.check("d1", t + Duration::from_secs(1)).unwrap();
        assert!(rl.check("d1", t + Duration::from_secs(1)).is_err());
        let mut free = RateLimit::new(0, 1);
        for _ in 0..1000 {
            free.check("d1", t).unwrap();
        }
    }
}
