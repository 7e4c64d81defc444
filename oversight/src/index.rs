//! The in-memory look-up index and the one matching rule both look-up paths share.
//!
//! Phones need an answer in a few milliseconds at tens of thousands of look-ups a second, so
//! the look-up role answers from a [`RegistryIndex`] built from the current registry rows and
//! rebuilt when a new import version lands. REST look-ups, which may ask about a past moment
//! (`at=`), fetch just the rows that could match from the database ([`lookup_at`]) and run the
//! very same [`RegistryIndex::lookup`] over them, so both paths answer alike.

use std::collections::HashMap;

use jiandu_schemas::LookupKind;
use jiandu_store::{Department, Person, RegistrySnapshot, Store, Vehicle, Versioned};
use serde_json::{Value, json};

use crate::{OversightError, plate};

/// Most candidates returned with a miss.
pub const MAX_CANDIDATES: usize = 10;

/// A record that answered a look-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hit {
    /// A vehicle.
    Vehicle(Versioned<Vehicle>),
    /// A member or staff member.
    Person(Versioned<Person>),
    /// A department.
    Department(Versioned<Department>),
}

impl Hit {
    /// The record's key, for the audit (`鲁G12345`, `members/M0000001`, `D01`).
    pub fn key(&self) -> String {
        match self {
            Hit::Vehicle(v) => v.record.plate.clone(),
            Hit::Person(p) => format!("{}/{}", p.registry, p.record.code),
            Hit::Department(d) => d.record.code.clone(),
        }
    }

    /// What a phone may see: only what the job on site needs, never identity numbers.
    pub fn phone_view(&self) -> Value {
        match self {
            Hit::Vehicle(v) => {
                let r = &v.record;
                json!({
                    "kind": "vehicle", "plate": r.plate, "unit": r.unit, "vehicle_type": r.vehicle_type,
                    "use_category": r.use_category, "status": r.status, "allowed_use": r.allowed,
                })
            }
            Hit::Person(p) => {
                let r = &p.record;
                json!({"kind": "person", "name": r.name, "unit": r.unit, "post": r.post, "party_member": r.party_member})
            }
            Hit::Department(d) => {
                let r = &d.record;
                json!({
                    "kind": "department", "code": r.code, "name": r.name, "powers": r.powers,
                    "responsibilities": r.responsibilities,
                })
            }
        }
    }

    /// What office staff see on the web: the whole record with the identity number masked
    /// (or revealed, on the admin path), and its validity period.
    pub fn office_view(&self, reveal_id: bool) -> Value {
        let (mut v, registry, from, to, version) = match self {
            Hit::Vehicle(x) => (json!(x.record), x.registry, x.valid_from, x.valid_to, x.version_from),
            Hit::Person(x) => {
                let mut v = json!(x.record);
                if reveal_id {
                    v["id_number"] = json!(x.record.id_number.reveal());
                }
                (v, x.registry, x.valid_from, x.valid_to, x.version_from)
            }
            Hit::Department(x) => (json!(x.record), x.registry, x.valid_from, x.valid_to, x.version_from),
        };
        v["registry"] = json!(registry);
        v["valid_from"] = json!(from);
        v["valid_to"] = json!(to);
        v["version"] = json!(version);
        v
    }
}

/// The answer to one look-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The single matching record.
    pub found: Option<Hit>,
    /// Near matches when there was no single match (nearest first, at most [`MAX_CANDIDATES`]).
    pub candidates: Vec<Hit>,
}

impl Answer {
    /// `found`, `candidates` or `not_found`, as recorded in the audit.
    pub fn outcome(&self) -> &'static str {
        match (&self.found, self.candidates.is_empty()) {
            (Some(_), _) => "found",
            (None, false) => "candidates",
            (None, true) => "not_found",
        }
    }
}

/// Current registry records, indexed for look-ups by plate, name, code and department name.
#[derive(Debug, Default)]
pub struct RegistryIndex {
    version: i64,
    vehicles: HashMap<String, Versioned<Vehicle>>,
    persons: Vec<Versioned<Person>>,
    persons_by_key: HashMap<String, Vec<usize>>,
    departments: Vec<Versioned<Department>>,
}

impl RegistryIndex {
    /// Indexes a snapshot of the registries.
    pub fn new(snapshot: RegistrySnapshot) -> RegistryIndex {
        let mut index = RegistryIndex::from_rows(snapshot.vehicles, snapshot.persons, snapshot.departments);
        index.version = snapshot.version;
        index
    }

    fn from_rows(
        vehicles: Vec<Versioned<Vehicle>>,
        persons: Vec<Versioned<Person>>,
        mut departments: Vec<Versioned<Department>>,
    ) -> RegistryIndex {
        let mut persons_by_key: HashMap<String, Vec<usize>> = HashMap::with_capacity(persons.len() * 2);
        let mut persons = persons;
        persons.sort_by(|a, b| (a.registry.as_str(), &a.record.code).cmp(&(b.registry.as_str(), &b.record.code)));
        for (i, p) in persons.iter().enumerate() {
            persons_by_key.entry(p.record.name.clone()).or_default().push(i);
            if p.record.code != p.record.name {
                persons_by_key.entry(p.record.code.clone()).or_default().push(i);
            }
        }
        departments.sort_by(|a, b| a.record.code.cmp(&b.record.code));
        RegistryIndex {
            version: 0,
            vehicles: vehicles.into_iter().map(|v| (v.record.plate.clone(), v)).collect(),
            persons,
            persons_by_key,
            departments,
        }
    }

    /// Loads every current record from the database.
    pub async fn load(store: &Store) -> Result<RegistryIndex, OversightError> {
        Ok(RegistryIndex::new(store.registry_snapshot().await?))
    }

    /// The import version this index reflects.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Record counts: (persons, vehicles, departments).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.persons.len(), self.vehicles.len(), self.departments.len())
    }

    /// Answers a look-up. Vehicles: the normalised plate, else plates it may have been misread
    /// from. Persons: name or registry code; several people of one name come back as
    /// candidates. Departments: code or name, else every department whose name contains `q`
    /// (found when exactly one does).
    pub fn lookup(&self, kind: LookupKind, q: &str) -> Answer {
        let q = q.trim();
        match kind {
            LookupKind::Vehicle => {
                let Ok(plate) = plate::normalise(q) else {
                    return Answer::default();
                };
                if let Some(v) = self.vehicles.get(&plate) {
                    return Answer { found: Some(Hit::Vehicle(v.clone())), candidates: Vec::new() };
                }
                let candidates = plate::candidate_plates(&plate)
                    .iter()
                    .filter_map(|p| self.vehicles.get(p))
                    .take(MAX_CANDIDATES)
                    .map(|v| Hit::Vehicle(v.clone()))
                    .collect();
                Answer { found: None, candidates }
            }
            LookupKind::Person => {
                let hits: Vec<Hit> = self
                    .persons_by_key
                    .get(q)
                    .map(|ix| ix.iter().take(MAX_CANDIDATES).map(|i| Hit::Person(self.persons[*i].clone())).collect())
                    .unwrap_or_default();
                single_or_candidates(hits)
            }
            LookupKind::Department => {
                if let Some(d) = self.departments.iter().find(|d| d.record.code == q || d.record.name == q) {
                    return Answer { found: Some(Hit::Department(d.clone())), candidates: Vec::new() };
                }
                if q.is_empty() {
                    return Answer::default();
                }
                let hits = self
                    .departments
                    .iter()
                    .filter(|d| d.record.name.contains(q))
                    .take(MAX_CANDIDATES)
                    .map(|d| Hit::Department(d.clone()))
                    .collect();
                single_or_candidates(hits)
            }
        }
    }
}

fn single_or_candidates(mut hits: Vec<Hit>) -> Answer {
    if hits.len() == 1 {
        Answer { found: hits.pop(), candidates: Vec::new() }
    } else {
        Answer { found: None, candidates: hits }
    }
}

/// Reads the "as of" time of a look-up: Unix milliseconds, or a date `YYYY-MM-DD` meaning the
/// registries as they stood at the end of that day in China Standard Time (UTC+8). A date that
/// does not exist (`2026-02-31`) or lies outside 1970..=2100 is refused with a field error on
/// `at`, using the same calendar arithmetic as case deadlines.
pub fn parse_as_of(text: &str) -> Result<i64, OversightError> {
    let bad = || OversightError::Invalid {
        field: "at".into(),
        reason: format!("{text:?} is neither epoch milliseconds nor a date YYYY-MM-DD that exists"),
    };
    if let Ok(ms) = text.parse::<i64>() {
        return if ms >= 0 { Ok(ms) } else { Err(bad()) };
    }
    let day = crate::cases::Day::parse(text).ok_or_else(bad)?;
    if !(1970..=2100).contains(&day.ymd().0) {
        return Err(bad());
    }
    Ok(day.end_ms())
}

/// Answers a look-up as the registries stood at time `at` (Unix ms), from the database: the
/// rows that could match are fetched and matched by [`RegistryIndex::lookup`].
pub async fn lookup_at(store: &Store, kind: LookupKind, q: &str, at: i64) -> Result<Answer, OversightError> {
    let q = q.trim();
    let index = match kind {
        LookupKind::Vehicle => {
            let Ok(plate) = plate::normalise(q) else {
                return Ok(Answer::default());
            };
            let mut plates = vec![plate.clone()];
            plates.extend(plate::candidate_plates(&plate));
            RegistryIndex::from_rows(store.vehicles_at(&plates, at).await?, Vec::new(), Vec::new())
        }
        LookupKind::Person => {
            RegistryIndex::from_rows(Vec::new(), store.persons_at(q, at, MAX_CANDIDATES as i64).await?, Vec::new())
        }
        LookupKind::Department => RegistryIndex::from_rows(Vec::new(), Vec::new(), store.departments_at(at).await?),
    };
    Ok(index.lookup(kind, q))
}

#[cfg(test)]
mod as_of_tests {
    use super::parse_as_of;
    use crate::OversightError;

    #[test]
    fn as_of_is_milliseconds_or_the_end_of_a_real_china_day() {
        assert_eq!(parse_as_of("1714694400000").unwrap(), 1_714_694_400_000);
        // 2024-05-03 ends at 2024-05-03T16:00:00Z (midnight in Beijing).
        assert_eq!(parse_as_of("2024-05-03").unwrap(), 1_714_752_000_000 - 1);
        assert_eq!(parse_as_of("1970-01-01").unwrap(), 86_400_000 - 8 * 3_600_000 - 1);
        assert_eq!(parse_as_of("2024-02-29").unwrap(), parse_as_of("2024-03-01").unwrap() - 86_400_000);
        // Days that do not exist are refused, not rolled over into the next month.
        for bad in ["2026-02-31", "2026-02-29", "2026-04-31", "2024-13-01", "2024-00-10", "3 May", "-5", "1969-12-31"] {
            let e = parse_as_of(bad).unwrap_err();
            assert!(matches!(e, OversightError::Invalid { ref field, .. } if field == "at"), "{bad}: {e}");
        }
    }
}
