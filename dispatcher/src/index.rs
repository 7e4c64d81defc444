//! The live spatial index of inspectors: who is where, and who can take an assignment now.
//!
//! Dispatch must answer "who is the nearest available inspector to this point?" in microseconds
//! while heartbeats keep moving everyone, so the answer never waits on the database. Each device
//! with a known position that is online, on duty and not busy is one point of an R*-tree
//! (`rstar`). Points are stored as unit vectors on the sphere (x, y, z): the straight-line
//! (chord) distance between two unit vectors grows strictly with the great-circle distance, so
//! the tree's nearest-neighbour iteration visits devices in exact great-circle order, without
//! the distortions of treating degrees as a flat plane (a degree of longitude is 111 km at the
//! equator, 89 km here). The first candidate that passes the remaining checks (fresh position,
//! not tried before for this report) is the answer; its distance in metres is then computed with
//! the haversine formula.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jiandu_schemas::Duty;
use rstar::{AABB, PointDistance, RTree, RTreeObject};

/// Mean Earth radius (IUGG), metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres between two WGS-84 points (haversine on the mean sphere;
/// within 0.5 % of the ellipsoidal distance, plenty to rank inspectors).
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// The unit vector of a latitude/longitude, the tree's coordinate space.
fn unit_vector(lat: f64, lon: f64) -> [f64; 3] {
    let (p, l) = (lat.to_radians(), lon.to_radians());
    [p.cos() * l.cos(), p.cos() * l.sin(), p.sin()]
}

/// One available device in the tree.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    xyz: [f64; 3],
    device: Arc<str>,
}

impl RTreeObject for Point {
    type Envelope = AABB<[f64; 3]>;

    fn envelope(&self) -> Self::Envelope {
        AABB::from_point(self.xyz)
    }
}

impl PointDistance for Point {
    fn distance_2(&self, p: &[f64; 3]) -> f64 {
        let d = [self.xyz[0] - p[0], self.xyz[1] - p[1], self.xyz[2] - p[2]];
        d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    }
}

/// What the index knows about one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    /// Latitude of the newest fix.
    pub lat: f64,
    /// Longitude of the newest fix.
    pub lon: f64,
    /// Time of the newest fix (Unix ms); older than the freshness window means stale.
    pub ts: i64,
    /// Connected, per presence (a heartbeat also proves it).
    pub online: bool,
    /// Duty as last sent; unknown counts as on duty.
    pub duty: Option<Duty>,
    /// Holds an open assignment (offered, accepted or arrived).
    pub busy: bool,
    /// When `busy` last changed (Unix ms), so late events cannot undo a newer change.
    pub busy_since: i64,
    /// Whether the device is in the tree right now.
    in_tree: bool,
}

impl DeviceState {
    /// Online, on duty (or duty unknown) and not busy; freshness is checked at query time.
    pub fn available(&self) -> bool {
        self.online && !matches!(self.duty, Some(Duty::Off | Duty::Busy)) && !self.busy
    }
}

/// A candidate for an assignment.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Device id.
    pub device: Arc<str>,
    /// Great-circle distance to the report, metres.
    pub distance_m: f64,
}

/// The live index: every device's state, and an R*-tree of the available ones.
#[derive(Debug, Default)]
pub struct SpatialIndex {
    tree: RTree<Point>,
    devices: HashMap<Arc<str>, DeviceState>,
}

impl SpatialIndex {
    /// An empty index.
    pub fn new() -> SpatialIndex {
        SpatialIndex::default()
    }

    /// Builds the index in one go (bulk loading is much faster than inserting one by one).
    pub fn bulk(devices: impl IntoIterator<Item = (String, DeviceState)>) -> SpatialIndex {
        let mut map = HashMap::new();
        let mut points = Vec::new();
        for (id, mut state) in devices {
            let id: Arc<str> = id.into();
            state.in_tree = state.available();
            if state.in_tree {
                points.push(Point { xyz: unit_vector(state.lat, state.lon), device: id.clone() });
            }
            map.insert(id, state);
        }
        SpatialIndex { tree: RTree::bulk_load(points), devices: map }
    }

    /// A device state with a position, for [`SpatialIndex::bulk`].
    pub fn state(lat: f64, lon: f64, ts: i64, online: bool, duty: Option<Duty>, busy: bool) -> DeviceState {
        DeviceState { lat, lon, ts, online, duty, busy, busy_since: 0, in_tree: false }
    }

    /// Devices known (with a position).
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// True when no device is known.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Devices currently available (in the tree), fresh or not.
    pub fn available_len(&self) -> usize {
        self.tree.size()
    }

    /// What the index knows about a device.
    pub fn get(&self, device: &str) -> Option<&DeviceState> {
        self.devices.get(device)
    }

    /// A new fix from a heartbeat: moves the device if the fix is newer than the one known, and
    /// marks it online (it is talking to us). `duty`, when given, replaces the known duty.
    pub fn update_position(&mut self, device: &str, lat: f64, lon: f64, ts: i64, duty: Option<Duty>) {
        let (id, mut state) = self.take(device);
        let mut state = match state.take() {
            Some(mut s) => {
                if ts >= s.ts {
                    s.lat = lat;
                    s.lon = lon;
                    s.ts = ts;
                    if duty.is_some() {
                        s.duty = duty;
                    }
                }
                s.online = true;
                s
            }
            None => SpatialIndex::state(lat, lon, ts, true, duty, false),
        };
        self.put(id, &mut state);
    }

    /// Presence changed (connected or gone).
    pub fn set_online(&mut self, device: &str, online: bool) {
        self.modify(device, |s| s.online = online);
    }

    /// The device took or left an open assignment at `at` (Unix ms); ignored when an equal or
    /// newer change is known already.
    pub fn set_busy(&mut self, device: &str, busy: bool, at: i64) {
        self.modify(device, |s| {
            if at >= s.busy_since {
                s.busy = busy;
                s.busy_since = at;
            }
        });
    }

    /// Re-reads who is busy from the database's answer `busy` (taken at `at`): devices whose
    /// flag was last changed before `at` take the database's word.
    pub fn resync_busy(&mut self, busy: &HashSet<String>, at: i64) {
        let wrong: Vec<Arc<str>> = self
            .devices
            .iter()
            .filter(|(id, s)| s.busy_since < at && s.busy != busy.contains(&***id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in wrong {
            let is_busy = busy.contains(&*id);
            self.set_busy(&id, is_busy, at);
        }
    }

    /// The nearest device that is available, whose fix is at or after `fresh_since`, that is
    /// not in `exclude`, and that lies within `radius_m` of the point.
    pub fn nearest(
        &self,
        lat: f64,
        lon: f64,
        fresh_since: i64,
        radius_m: f64,
        exclude: &HashSet<String>,
    ) -> Option<Candidate> {
        let q = unit_vector(lat, lon);
        for p in self.tree.nearest_neighbor_iter(&q) {
            let Some(state) = self.devices.get(&p.device) else { continue };
            let distance_m = haversine_m(lat, lon, state.lat, state.lon);
            if distance_m > radius_m {
                return None;
            }
            if state.ts < fresh_since || exclude.contains(&*p.device) {
                continue;
            }
            return Some(Candidate { device: p.device.clone(), distance_m });
        }
        None
    }

    /// The same answer as [`SpatialIndex::nearest`] by looking at every device: the reference
    /// the benchmark compares the tree with, and a check in tests.
    pub fn nearest_by_scan(
        &self,
        lat: f64,
        lon: f64,
        fresh_since: i64,
        radius_m: f64,
        exclude: &HashSet<String>,
    ) -> Option<Candidate> {
        let mut best: Option<(f64, &Arc<str>)> = None;
        for (id, s) in &self.devices {
            if !s.available() || s.ts < fresh_since || exclude.contains(&**id) {
                continue;
            }
            let d = haversine_m(lat, lon, s.lat, s.lon);
            if d <= radius_m && best.is_none_or(|(b, _)| d < b) {
                best = Some((d, id));
            }
        }
        best.map(|(distance_m, id)| Candidate { device: id.clone(), distance_m })
    }

    /// Removes the points of devices whose fix is older than `fresh_since` from the tree (they
    /// come back with their next heartbeat); keeps nearest-neighbour walks short. Returns how
    /// many were dropped.
    pub fn drop_stale(&mut self, fresh_since: i64) -> usize {
        let stale: Vec<Arc<str>> =
            self.devices.iter().filter(|(_, s)| s.in_tree && s.ts < fresh_since).map(|(id, _)| id.clone()).collect();
        for id in &stale {
            if let Some(s) = self.devices.get_mut(id) {
                s.in_tree = false;
                self.tree.remove(&Point { xyz: unit_vector(s.lat, s.lon), device: id.clone() });
            }
        }
        stale.len()
    }

    /// Applies `f` to a known device and keeps the tree in step.
    fn modify(&mut self, device: &str, f: impl FnOnce(&mut DeviceState)) {
        let (id, state) = self.take(device);
        if let Some(mut s) = state {
            f(&mut s);
            self.put(id, &mut s);
        }
    }

    /// Takes a device's state out (removing its point from the tree).
    fn take(&mut self, device: &str) -> (Arc<str>, Option<DeviceState>) {
        match self.devices.remove_entry(device) {
            Some((id, s)) => {
                if s.in_tree {
                    self.tree.remove(&Point { xyz: unit_vector(s.lat, s.lon), device: id.clone() });
                }
                (id, Some(s))
            }
            None => (Arc::from(device), None),
        }
    }

    /// Puts a device's state back (inserting its point when available).
    fn put(&mut self, id: Arc<str>, state: &mut DeviceState) {
        state.in_tree = state.available();
        if state.in_tree {
            self.tree.insert(Point { xyz: unit_vector(state.lat, state.lon), device: id.clone() });
        }
        self.devices.insert(id, state.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000_000;

    #[test]
    fn haversine_matches_known_distances() {
        // One degree of latitude is about 111.2 km on the mean sphere.
        let d = haversine_m(36.0, 118.0, 37.0, 118.0);
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
        // Beijing Tiananmen to Shanghai People's Square: about 1,067 km.
        let d = haversine_m(39.9087, 116.3975, 31.2304, 121.4737);
        assert!((d - 1_067_000.0).abs() < 5_000.0, "{d}");
        assert_eq!(haversine_m(36.5, 118.5, 36.5, 118.5), 0.0);
    }

    #[test]
    fn nearest_skips_unavailable_stale_and_excluded_devices() {
        let mut idx = SpatialIndex::new();
        // Due north of the report at 100 m steps (about 0.0009 degrees each).
        for (i, dev) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            idx.update_position(dev, 36.5 + 0.0009 * (i + 1) as f64, 118.5, NOW, Some(Duty::On));
        }
        idx.set_busy("a", true, NOW);
        idx.update_position("b", 36.5 + 0.0009 * 2.0, 118.5, NOW + 1, Some(Duty::Off));
        idx.set_online("c", false);
        idx.update_position("d", 36.5 + 0.0009 * 4.0, 118.5, NOW - 600_000, None); // older fix: ignored
        let none = HashSet::new();
        let c = idx.nearest(36.5, 118.5, NOW - 300_000, 50_000.0, &none).unwrap();
        assert_eq!(&*c.device, "d");
        assert!((c.distance_m - 400.3).abs() < 1.0, "{}", c.distance_m);
        let tried: HashSet<String> = ["d".to_owned()].into();
        assert_eq!(&*idx.nearest(36.5, 118.5, NOW - 300_000, 50_000.0, &tried).unwrap().device, "e");
        // e's fix is stale against a later clock; f too: nobody fresh.
        idx.update_position("f", 36.5 + 0.0009 * 6.0, 118.5, NOW + 10, None);
        assert_eq!(&*idx.nearest(36.5, 118.5, NOW + 5, 50_000.0, &tried).unwrap().device, "f");
        // Radius: f is about 600 m away.
        assert!(idx.nearest(36.5, 118.5, NOW + 5, 500.0, &tried).is_none());
        // Back on duty and free again.
        idx.set_busy("a", false, NOW + 1);
        assert_eq!(&*idx.nearest(36.5, 118.5, NOW - 300_000, 50_000.0, &none).unwrap().device, "a");
        // A late event older than the last change does not undo it.
        idx.set_busy("a", true, NOW);
        assert_eq!(&*idx.nearest(36.5, 118.5, NOW - 300_000, 50_000.0, &none).unwrap().device, "a");
    }

    #[test]
    fn tree_and_scan_agree_across_the_antimeridian_and_poles() {
        let mut idx = SpatialIndex::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for i in 0..2000 {
            idx.update_position(&format!("d{i}"), rnd() * 180.0 - 90.0, rnd() * 360.0 - 180.0, NOW, Some(Duty::On));
        }
        let none = HashSet::new();
        for (lat, lon) in [(0.0, 179.99), (0.0, -179.99), (89.9, 0.0), (-89.9, 45.0), (36.5, 118.5)] {
            let a = idx.nearest(lat, lon, 0, f64::INFINITY, &none).unwrap();
            let b = idx.nearest_by_scan(lat, lon, 0, f64::INFINITY, &none).unwrap();
            assert_eq!(a.device, b.device, "at {lat},{lon}");
            assert!((a.distance_m - b.distance_m).abs() < 1e-6);
        }
        assert_eq!(idx.drop_stale(NOW + 1), 2000);
        assert_eq!(idx.available_len(), 0);
        assert_eq!(idx.len(), 2000);
    }
}
