//! The synthetic county the simulated phones move in: Linqu (临朐), Weifang, around 36.5°N
//! 118.5°E. Inspectors are based at township seats and move along plausible paths: walking
//! around the seat, or driving to another place in the county, with pauses where they stop.

use rand::Rng;
use rand::rngs::StdRng;

/// A township seat: name and WGS-84 position.
#[derive(Debug, Clone, Copy)]
pub struct Township {
    /// Chinese name, e.g. `冶源镇`.
    pub name: &'static str,
    /// Latitude of the seat.
    pub lat: f64,
    /// Longitude of the seat.
    pub lon: f64,
}

/// Township seats of the model county (positions approximate).
pub const TOWNSHIPS: &[Township] = &[
    Township { name: "城关街道", lat: 36.5155, lon: 118.5421 },
    Township { name: "东城街道", lat: 36.5203, lon: 118.5780 },
    Township { name: "冶源镇", lat: 36.4402, lon: 118.5262 },
    Township { name: "寺头镇", lat: 36.3921, lon: 118.3980 },
    Township { name: "九山镇", lat: 36.2760, lon: 118.4410 },
    Township { name: "五井镇", lat: 36.5790, lon: 118.3920 },
    Township { name: "柳山镇", lat: 36.6150, lon: 118.6190 },
    Township { name: "辛寨镇", lat: 36.6080, lon: 118.5060 },
    Township { name: "营子镇", lat: 36.5650, lon: 118.6720 },
    Township { name: "龙岗镇", lat: 36.4560, lon: 118.6520 },
    Township { name: "上林镇", lat: 36.3760, lon: 118.6140 },
    Township { name: "蒋峪镇", lat: 36.3330, lon: 118.5230 },
];

/// Metres per degree of latitude (and of longitude at the equator).
const M_PER_DEG: f64 = 111_320.0;
/// Walking speeds, m/s.
const WALK: (f64, f64) = (1.0, 1.6);
/// Driving speeds on county roads, m/s.
const DRIVE: (f64, f64) = (8.0, 16.0);
/// Beyond this distance an inspector drives rather than walks, metres.
const DRIVE_BEYOND_M: f64 = 1_200.0;

/// Distance in metres between two nearby points (equirectangular; exact enough within a county).
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (dx, dy) = offset_m(lat1, lon1, lat2, lon2);
    dx.hypot(dy)
}

/// East and north offsets in metres from the first point to the second.
fn offset_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> (f64, f64) {
    let dx = (lon2 - lon1) * M_PER_DEG * ((lat1 + lat2) / 2.0).to_radians().cos();
    let dy = (lat2 - lat1) * M_PER_DEG;
    (dx, dy)
}

/// A random point within `radius_m` of a township seat.
pub fn near(rng: &mut StdRng, town: &Township, radius_m: f64) -> (f64, f64) {
    let r = radius_m * rng.random::<f64>().sqrt();
    let a = rng.random::<f64>() * std::f64::consts::TAU;
    let (dx, dy) = (r * a.cos(), r * a.sin());
    (town.lat + dy / M_PER_DEG, town.lon + dx / (M_PER_DEG * town.lat.to_radians().cos()))
}

/// One inspector's movement: towards a target at walking or driving speed, then a pause.
#[derive(Debug, Clone)]
pub struct Walker {
    /// Current latitude.
    pub lat: f64,
    /// Current longitude.
    pub lon: f64,
    /// Index of the home township in [`TOWNSHIPS`].
    pub home: usize,
    /// Current ground speed, m/s (0 while paused).
    pub speed: f64,
    /// Current heading, degrees clockwise from north.
    pub heading: f64,
    target: (f64, f64),
    cruise: f64,
    /// Simulated seconds left to pause at the current place.
    pause_s: f64,
}

impl Walker {
    /// Starts somewhere around the home township, paused for a while.
    pub fn new(rng: &mut StdRng, home: usize) -> Walker {
        let (lat, lon) = near(rng, &TOWNSHIPS[home], 2_500.0);
        let mut w = Walker { lat, lon, home, speed: 0.0, heading: 0.0, target: (lat, lon), cruise: 0.0, pause_s: 0.0 };
        w.pause_s = rng.random_range(0.0..120.0);
        w
    }

    /// Sends the walker to a given place (an assignment), by car if it is far.
    pub fn go_to(&mut self, rng: &mut StdRng, lat: f64, lon: f64) {
        self.target = (lat, lon);
        self.pause_s = 0.0;
        let far = distance_m(self.lat, self.lon, lat, lon) > DRIVE_BEYOND_M;
        self.cruise = if far { rng.random_range(DRIVE.0..DRIVE.1) } else { rng.random_range(WALK.0..WALK.1) };
    }

    /// Stays where it is for `seconds` of simulated time (e.g. on site).
    pub fn hold(&mut self, seconds: f64) {
        self.target = (self.lat, self.lon);
        self.pause_s = seconds;
        self.speed = 0.0;
    }

    /// Metres to the current target.
    pub fn remaining_m(&self) -> f64 {
        distance_m(self.lat, self.lon, self.target.0, self.target.1)
    }

    /// Advances `dt` simulated seconds; `free` lets it choose its own next place when idle.
    pub fn step(&mut self, rng: &mut StdRng, dt: f64, free: bool) {
        if self.pause_s > 0.0 {
            self.pause_s -= dt;
            self.speed = 0.0;
            return;
        }
        let left = self.remaining_m();
        if left < 1.0 {
            self.speed = 0.0;
            if free {
                self.wander(rng);
            }
            return;
        }
        let (dx, dy) = offset_m(self.lat, self.lon, self.target.0, self.target.1);
        let step = (self.cruise * dt).min(left);
        let (ex, ey) = (dx / left * step, dy / left * step);
        self.lat += ey / M_PER_DEG;
        self.lon += ex / (M_PER_DEG * self.lat.to_radians().cos());
        self.speed = if dt > 0.0 { step / dt } else { 0.0 };
        self.heading = dx.atan2(dy).to_degrees().rem_euclid(360.0);
        if step >= left {
            (self.lat, self.lon) = self.target;
            if free {
                // Arrived somewhere of its own choosing: stay a while.
                self.pause_s = rng.random_range(30.0..600.0);
            }
        }
    }

    /// Picks the next place: mostly a walk around the home seat, sometimes a drive elsewhere.
    fn wander(&mut self, rng: &mut StdRng) {
        let (lat, lon) = if rng.random_bool(0.15) {
            let town = &TOWNSHIPS[rng.random_range(0..TOWNSHIPS.len())];
            near(rng, town, 2_000.0)
        } else {
            near(rng, &TOWNSHIPS[self.home], 1_500.0)
        };
        self.go_to(rng, lat, lon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn walkers_reach_their_targets_at_plausible_speeds() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut w = Walker::new(&mut rng, 0);
        let town = &TOWNSHIPS[2];
        w.go_to(&mut rng, town.lat, town.lon);
        let start = w.remaining_m();
        assert!(start > 5_000.0, "冶源镇 is about 9 km from 城关街道, got {start}");
        let mut seconds = 0.0;
        while w.remaining_m() > 0.5 {
            w.step(&mut rng, 1.0, false);
            assert!(w.speed <= DRIVE.1 + 1e-9, "never faster than a car on county roads");
            seconds += 1.0;
            assert!(seconds < 3_600.0, "should arrive within the hour");
        }
        assert!(seconds >= start / DRIVE.1 - 1.0, "no teleporting: {seconds} s for {start} m");
        assert!((w.lat - town.lat).abs() < 1e-9 && (w.lon - town.lon).abs() < 1e-9);
    }

    #[test]
    fn idle_walkers_stay_in_the_county() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut w = Walker::new(&mut rng, 4);
        for _ in 0..20_000 {
            w.step(&mut rng, 5.0, true);
            assert!((36.1..36.8).contains(&w.lat) && (118.2..118.9).contains(&w.lon), "{} {}", w.lat, w.lon);
        }
    }
}
