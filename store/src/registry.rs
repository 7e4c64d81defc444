//! The four registries an inspector checks on site (party members, public-institution staff,
//! official vehicles, departments with their power and responsibility lists) and the audit of
//! every look-up made in them.
//!
//! Registries change only by import (`jiandu import`), and every import is a new version
//! ([`Store::registry_apply`]): rows that changed or disappeared are closed (`valid_to`,
//! `version_to`) and new rows are inserted, in one transaction that also appends a
//! `registry.imported` entry to the ledger. Nothing is deleted, so any past day can be asked
//! about (`valid_from <= t < valid_to`). Diffing a file against the current rows is the
//! caller's job (`oversight`); this module only stores the plan, refusing it when another import
//! of the same registry landed after the diff was made.
//!
//! Identity numbers are stored in full but wrapped in [`IdNumber`], whose `Debug` and
//! `Serialize` show only the masked form; the full number needs an explicit
//! [`IdNumber::reveal`].
//!
//! Look-ups are answered from memory and audited in batches ([`Store::record_lookups`]): one
//! transaction inserts the rows and appends one `lookup.batch` ledger entry whose body commits
//! to them by hash (see [`lookup_rows_sha256`] and DESIGN §4).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};
use tracing::info;

use crate::{NewEvent, NewLedgerEntry, Store, StoreError, canonical_json, now_ms};

/// Rows per multi-row INSERT (well below both databases' bind-parameter limits).
const INSERT_CHUNK: usize = 200;
/// Keys per `IN (…)` list when closing rows.
const KEY_CHUNK: usize = 500;

/// Which registry a row or an import belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryName {
    /// Party members (about 50,700 in the seed county).
    Members,
    /// Public-institution staff (about 5,800).
    Staff,
    /// Official vehicles (about 950).
    Vehicles,
    /// Departments with their power and responsibility lists (61).
    Departments,
}

impl RegistryName {
    /// Every registry, in import order.
    pub const ALL: [RegistryName; 4] =
        [RegistryName::Members, RegistryName::Staff, RegistryName::Vehicles, RegistryName::Departments];

    /// The name used on the command line and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryName::Members => "members",
            RegistryName::Staff => "staff",
            RegistryName::Vehicles => "vehicles",
            RegistryName::Departments => "departments",
        }
    }

    fn table(self) -> &'static str {
        match self {
            RegistryName::Members | RegistryName::Staff => "registry_persons",
            RegistryName::Vehicles => "registry_vehicles",
            RegistryName::Departments => "registry_departments",
        }
    }

    fn key_column(self) -> &'static str {
        match self {
            RegistryName::Vehicles => "plate",
            _ => "code",
        }
    }

    fn is_persons(self) -> bool {
        matches!(self, RegistryName::Members | RegistryName::Staff)
    }
}

impl fmt::Display for RegistryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RegistryName {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RegistryName::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| StoreError::InvalidInput {
            field: "registry",
            reason: format!("unknown registry {s:?}; expected members, staff, vehicles or departments"),
        })
    }
}

/// A citizen identity number: stored in full, shown masked everywhere except an admin path.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdNumber(String);

impl IdNumber {
    /// Wraps a number (already checked by the importer).
    pub fn new(number: impl Into<String>) -> IdNumber {
        IdNumber(number.into())
    }

    /// The masked form, e.g. `370702********123X`: the region and the last four stay visible.
    pub fn masked(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        let n = chars.len();
        let tail = 4.min(n / 2);
        let head = n.saturating_sub(8).min(6);
        chars.iter().enumerate().map(|(i, c)| if i < head || i >= n - tail { *c } else { '*' }).collect()
    }

    /// The full number; only for the admin path and for storage.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdNumber({})", self.masked())
    }
}

impl Serialize for IdNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// A party member or a public-institution staff member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Person {
    /// The registry's own number for the person (the import key).
    pub code: String,
    /// Full name.
    pub name: String,
    /// Citizen identity number (serialises masked).
    pub id_number: IdNumber,
    /// Work unit.
    pub unit: String,
    /// Post (职务).
    pub post: String,
    /// Rank (职级).
    pub rank: String,
    /// Whether the person is a party member.
    pub party_member: bool,
    /// `active`, `retired`, `transferred` or `deceased`.
    pub status: String,
}

/// An official vehicle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vehicle {
    /// Normalised plate, e.g. `鲁G12345` (the import key).
    pub plate: String,
    /// The unit it belongs to.
    pub unit: String,
    /// Vehicle type, e.g. 轿车.
    pub vehicle_type: String,
    /// `general`, `law_enforcement`, `special`, `emergency` or `confidential`.
    pub use_category: String,
    /// Registered driver.
    pub driver: String,
    /// `in_service`, `sealed`, `repair` or `disposed`.
    pub status: String,
    /// Whether the vehicle may be on the road in service at all.
    pub allowed: bool,
}

/// A department and what it may and must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Department {
    /// Department code (the import key).
    pub code: String,
    /// Full name.
    pub name: String,
    /// Power list items (权力清单).
    pub powers: Vec<String>,
    /// Responsibility list items (责任清单).
    pub responsibilities: Vec<String>,
}

/// One record of any registry, as produced by an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RegistryRecord {
    /// A member or staff record.
    Person(Person),
    /// A vehicle record.
    Vehicle(Vehicle),
    /// A department record.
    Department(Department),
}

impl RegistryRecord {
    /// The key identifying the record across versions (code or normalised plate).
    pub fn key(&self) -> &str {
        match self {
            RegistryRecord::Person(p) => &p.code,
            RegistryRecord::Vehicle(v) => &v.plate,
            RegistryRecord::Department(d) => &d.code,
        }
    }

    /// SHA-256 of the record's canonical content (identity number included), used to tell a
    /// changed record from an unchanged one.
    pub fn content_hash(&self) -> String {
        let v = match self {
            RegistryRecord::Person(p) => json!({
                "code": p.code, "name": p.name, "id_number": p.id_number.reveal(), "unit": p.unit,
                "post": p.post, "rank": p.rank, "party_member": p.party_member, "status": p.status,
            }),
            RegistryRecord::Vehicle(v) => json!({
                "plate": v.plate, "unit": v.unit, "vehicle_type": v.vehicle_type, "use_category": v.use_category,
                "driver": v.driver, "status": v.status, "allowed": v.allowed,
            }),
            RegistryRecord::Department(d) => json!({
                "code": d.code, "name": d.name, "powers": d.powers, "responsibilities": d.responsibilities,
            }),
        };
        hex::encode(Sha256::digest(canonical_json(&v).as_bytes()))
    }
}

/// A record as it was valid over a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Versioned<T> {
    /// Which registry it came from.
    pub registry: RegistryName,
    /// The record.
    pub record: T,
    /// Valid from (Unix ms, inclusive).
    pub valid_from: i64,
    /// Valid until (Unix ms, exclusive); `None` while current.
    pub valid_to: Option<i64>,
    /// The import version that introduced it.
    pub version_from: i64,
    /// The import version that changed or retired it.
    pub version_to: Option<i64>,
}

/// What an import will change; built by diffing a file against [`Store::registry_current`].
#[derive(Debug, Clone)]
pub struct ImportPlan {
    /// Target registry.
    pub registry: RegistryName,
    /// The registry's version the diff was made against (0 for none).
    pub base_version: i64,
    /// Who imports (operator).
    pub actor: String,
    /// File name, for the record.
    pub source: String,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
    /// Records in the file.
    pub records: i64,
    /// New keys.
    pub added: Vec<RegistryRecord>,
    /// Keys whose content changed.
    pub changed: Vec<RegistryRecord>,
    /// Keys no longer in the file.
    pub retired: Vec<String>,
}

/// One landed import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportVersion {
    /// Version number (increasing over all registries).
    pub version: i64,
    /// Registry imported.
    pub registry: RegistryName,
    /// When (Unix ms); the new rows are valid from here.
    pub imported_at: i64,
    /// Who imported.
    pub actor: String,
    /// File name.
    pub source: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Records in the file.
    pub records: i64,
    /// Added records.
    pub added: i64,
    /// Changed records.
    pub changed: i64,
    /// Retired records.
    pub retired: i64,
    /// The ledger entry recording it.
    pub ledger_seq: i64,
}

/// Every current row, for building the in-memory look-up index.
#[derive(Debug, Clone, Default)]
pub struct RegistrySnapshot {
    /// The newest import version included (0 when nothing was imported).
    pub version: i64,
    /// Members and staff.
    pub persons: Vec<Versioned<Person>>,
    /// Vehicles.
    pub vehicles: Vec<Versioned<Vehicle>>,
    /// Departments.
    pub departments: Vec<Versioned<Department>>,
}

/// A look-up to audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewLookupAudit {
    /// When it was answered (Unix ms).
    pub ts: i64,
    /// `mqtt` (a phone) or `rest` (web or integration).
    pub channel: String,
    /// Who asked: the inspector's staff id (or the device id), the user or the integration.
    pub actor: String,
    /// The phone, for MQTT look-ups.
    pub device: Option<String>,
    /// Where, latitude in micro-degrees, when the phone said.
    pub lat_e6: Option<i64>,
    /// Where, longitude in micro-degrees.
    pub lon_e6: Option<i64>,
    /// `vehicle`, `person` or `department`.
    pub kind: String,
    /// The query as sent.
    pub q: String,
    /// Point in time asked about (REST `at=`), if not "now".
    pub at: Option<i64>,
    /// `found`, `candidates`, `not_found` or `rate_limited`.
    pub outcome: String,
    /// Key of the record returned, when found.
    pub result: Option<String>,
    /// Number of candidates returned.
    pub candidates: i64,
}

/// An audited look-up as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LookupAudit {
    /// Audit id, from 1 without gaps.
    pub id: i64,
    /// The ledger entry of the batch that holds it.
    pub ledger_seq: i64,
    /// The look-up.
    #[serde(flatten)]
    pub lookup: NewLookupAudit,
}

/// A batch of audit rows committed to the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LookupBatch {
    /// First audit id of the batch.
    pub first_id: i64,
    /// Last audit id of the batch.
    pub last_id: i64,
    /// Rows in the batch.
    pub count: i64,
    /// The `lookup.batch` ledger entry.
    pub ledger_seq: i64,
    /// [`lookup_rows_sha256`] of the rows.
    pub sha256: String,
}

/// The hash a `lookup.batch` ledger entry commits to: lowercase hex SHA-256 of the rows in id
/// order, each written as canonical JSON (see `ledger`) of
/// `{actor,at,candidates,channel,device,id,kind,lat_e6,lon_e6,outcome,q,result,ts}` (absent
/// values as `null`) and followed by one `\n`.
pub fn lookup_rows_sha256<'a>(rows: impl IntoIterator<Item = (i64, &'a NewLookupAudit)>) -> String {
    let mut hasher = Sha256::new();
    for (id, r) in rows {
        let v = json!({
            "id": id, "ts": r.ts, "channel": r.channel, "actor": r.actor, "device": r.device,
            "lat_e6": r.lat_e6, "lon_e6": r.lon_e6, "kind": r.kind, "q": r.q, "at": r.at,
            "outcome": r.outcome, "result": r.result, "candidates": r.candidates,
        });
        hasher.update(canonical_json(&v).as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

const PERSON_COLUMNS: &str = "registry, code, name, id_number, unit, post, rank, party_member, status, \
     content_hash, valid_from, valid_to, version_from, version_to";
const VEHICLE_COLUMNS: &str = "plate, unit, vehicle_type, use_category, driver, status, allowed, \
     content_hash, valid_from, valid_to, version_from, version_to";
const DEPARTMENT_COLUMNS: &str =
    "code, name, powers, responsibilities, content_hash, valid_from, valid_to, version_from, version_to";
const IMPORT_COLUMNS: &str =
    "version, registry, imported_at, actor, source, sha256, records, added, changed, retired, ledger_seq";
const AUDIT_COLUMNS: &str =
    "id, ts, channel, actor, device, lat_e6, lon_e6, kind, q, at, outcome, result, candidates, ledger_seq";
/// Rows valid at `$1`.
const VALID_AT: &str = "valid_from <= $1 AND (valid_to IS NULL OR valid_to > $1)";

fn versioned<T>(row: &AnyRow, registry: RegistryName, record: T) -> Result<Versioned<T>, sqlx::Error> {
    Ok(Versioned {
        registry,
        record,
        valid_from: row.try_get("valid_from")?,
        valid_to: row.try_get("valid_to")?,
        version_from: row.try_get("version_from")?,
        version_to: row.try_get("version_to")?,
    })
}

fn person_from_row(row: &AnyRow) -> Result<Versioned<Person>, StoreError> {
    let registry: String = row.try_get("registry")?;
    let registry = registry.parse()?;
    let person = Person {
        code: row.try_get("code")?,
        name: row.try_get("name")?,
        id_number: IdNumber(row.try_get("id_number")?),
        unit: row.try_get("unit")?,
        post: row.try_get("post")?,
        rank: row.try_get("rank")?,
        party_member: row.try_get::<i64, _>("party_member")? != 0,
        status: row.try_get("status")?,
    };
    Ok(versioned(row, registry, person)?)
}

fn vehicle_from_row(row: &AnyRow) -> Result<Versioned<Vehicle>, StoreError> {
    let vehicle = Vehicle {
        plate: row.try_get("plate")?,
        unit: row.try_get("unit")?,
        vehicle_type: row.try_get("vehicle_type")?,
        use_category: row.try_get("use_category")?,
        driver: row.try_get("driver")?,
        status: row.try_get("status")?,
        allowed: row.try_get::<i64, _>("allowed")? != 0,
    };
    Ok(versioned(row, RegistryName::Vehicles, vehicle)?)
}

fn string_list(text: &str, what: &'static str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { what, reason: e.to_string() })
}

fn department_from_row(row: &AnyRow) -> Result<Versioned<Department>, StoreError> {
    let powers: String = row.try_get("powers")?;
    let responsibilities: String = row.try_get("responsibilities")?;
    let department = Department {
        code: row.try_get("code")?,
        name: row.try_get("name")?,
        powers: string_list(&powers, "department powers")?,
        responsibilities: string_list(&responsibilities, "department responsibilities")?,
    };
    Ok(versioned(row, RegistryName::Departments, department)?)
}

fn import_from_row(row: &AnyRow) -> Result<ImportVersion, StoreError> {
    let registry: String = row.try_get("registry")?;
    Ok(ImportVersion {
        version: row.try_get("version")?,
        registry: registry.parse()?,
        imported_at: row.try_get("imported_at")?,
        actor: row.try_get("actor")?,
        source: row.try_get("source")?,
        sha256: row.try_get("sha256")?,
        records: row.try_get("records")?,
        added: row.try_get("added")?,
        changed: row.try_get("changed")?,
        retired: row.try_get("retired")?,
        ledger_seq: row.try_get("ledger_seq")?,
    })
}

fn audit_from_row(row: &AnyRow) -> Result<LookupAudit, sqlx::Error> {
    Ok(LookupAudit {
        id: row.try_get("id")?,
        ledger_seq: row.try_get("ledger_seq")?,
        lookup: NewLookupAudit {
            ts: row.try_get("ts")?,
            channel: row.try_get("channel")?,
            actor: row.try_get("actor")?,
            device: row.try_get("device")?,
            lat_e6: row.try_get("lat_e6")?,
            lon_e6: row.try_get("lon_e6")?,
            kind: row.try_get("kind")?,
            q: row.try_get("q")?,
            at: row.try_get("at")?,
            outcome: row.try_get("outcome")?,
            result: row.try_get("result")?,
            candidates: row.try_get("candidates")?,
        },
    })
}

/// `($1, …, $k), ($k+1, …)` for `rows` rows of `cols` values.
fn placeholders(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", (1..=cols).map(|c| format!("${}", r * cols + c)).collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds one record's columns (in the table's insert order, validity included).
fn bind_record<'q>(
    q: Query<'q, Any, AnyArguments<'q>>,
    registry: RegistryName,
    rec: &'q RegistryRecord,
    version: i64,
    now: i64,
) -> Query<'q, Any, AnyArguments<'q>> {
    let hash = rec.content_hash();
    let q = match rec {
        RegistryRecord::Person(p) => q
            .bind(registry.as_str())
            .bind(p.code.as_str())
            .bind(p.name.as_str())
            .bind(p.id_number.reveal())
            .bind(p.unit.as_str())
            .bind(p.post.as_str())
            .bind(p.rank.as_str())
            .bind(i64::from(p.party_member))
            .bind(p.status.as_str()),
        RegistryRecord::Vehicle(v) => q
            .bind(v.plate.as_str())
            .bind(v.unit.as_str())
            .bind(v.vehicle_type.as_str())
            .bind(v.use_category.as_str())
            .bind(v.driver.as_str())
            .bind(v.status.as_str())
            .bind(i64::from(v.allowed)),
        RegistryRecord::Department(d) => q
            .bind(d.code.as_str())
            .bind(d.name.as_str())
            .bind(serde_json::to_string(&d.powers).unwrap_or_else(|_| "[]".into()))
            .bind(serde_json::to_string(&d.responsibilities).unwrap_or_else(|_| "[]".into())),
    };
    q.bind(hash).bind(now).bind(version)
}

/// Inserted columns per registry (the versioning columns `valid_to`/`version_to` start NULL).
fn insert_columns(registry: RegistryName) -> &'static str {
    match registry {
        RegistryName::Members | RegistryName::Staff => {
            "registry, code, name, id_number, unit, post, rank, party_member, status, content_hash, valid_from, version_from"
        }
        RegistryName::Vehicles => {
            "plate, unit, vehicle_type, use_category, driver, status, allowed, content_hash, valid_from, version_from"
        }
        RegistryName::Departments => "code, name, powers, responsibilities, content_hash, valid_from, version_from",
    }
}

fn check_record_kind(registry: RegistryName, rec: &RegistryRecord) -> Result<(), StoreError> {
    let ok = match rec {
        RegistryRecord::Person(_) => registry.is_persons(),
        RegistryRecord::Vehicle(_) => registry == RegistryName::Vehicles,
        RegistryRecord::Department(_) => registry == RegistryName::Departments,
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidInput {
            field: "records",
            reason: format!("record {:?} does not belong to the {registry} registry", rec.key()),
        })
    }
}

impl Store {
    /// The newest import version of any registry (0 when nothing was imported); the look-up
    /// index reloads when this moves.
    pub async fn registry_version(&self) -> Result<i64, StoreError> {
        let row =
            sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM registry_imports").fetch_one(&self.pool).await?;
        Ok(row.try_get("v")?)
    }

    /// The registry's current version and the content hash of each current record by key,
    /// for diffing an import file.
    pub async fn registry_current(&self, registry: RegistryName) -> Result<(i64, HashMap<String, String>), StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM registry_imports WHERE registry = $1")
            .bind(registry.as_str())
            .fetch_one(&self.pool)
            .await?;
        let version: i64 = row.try_get("v")?;
        let key = registry.key_column();
        let rows = if registry.is_persons() {
            sqlx::query(&format!(
                "SELECT {key} AS k, content_hash FROM registry_persons WHERE registry = $1 AND valid_to IS NULL"
            ))
            .bind(registry.as_str())
            .fetch_all(&self.pool)
            .await?
        } else {
            sqlx::query(&format!("SELECT {key} AS k, content_hash FROM {} WHERE valid_to IS NULL", registry.table()))
                .fetch_all(&self.pool)
                .await?
        };
        let mut map = HashMap::with_capacity(rows.len());
        for row in &rows {
            map.insert(row.try_get("k")?, row.try_get("content_hash")?);
        }
        Ok((version, map))
    }

    /// Lands an import as a new version in one transaction: closes changed and retired rows,
    /// inserts added and changed ones, appends `registry.imported` to the ledger. Refused when
    /// another import of the registry landed after `plan.base_version`.
    pub async fn registry_apply(&self, plan: &ImportPlan) -> Result<ImportVersion, StoreError> {
        let registry = plan.registry;
        for rec in plan.added.iter().chain(&plan.changed) {
            check_record_kind(registry, rec)?;
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // Write first, so SQLite takes its write lock now rather than failing to upgrade later.
        let row = sqlx::query(
            "INSERT INTO registry_imports \
             (registry, imported_at, actor, source, sha256, records, added, changed, retired, ledger_seq) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0) RETURNING version",
        )
        .bind(registry.as_str())
        .bind(now)
        .bind(&plan.actor)
        .bind(&plan.source)
        .bind(&plan.sha256)
        .bind(plan.records)
        .bind(plan.added.len() as i64)
        .bind(plan.changed.len() as i64)
        .bind(plan.retired.len() as i64)
        .fetch_one(&mut *tx)
        .await?;
        let version: i64 = row.try_get("version")?;
        let prev = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) AS v FROM registry_imports WHERE registry = $1 AND version < $2",
        )
        .bind(registry.as_str())
        .bind(version)
        .fetch_one(&mut *tx)
        .await?;
        let prev: i64 = prev.try_get("v")?;
        if prev != plan.base_version {
            return Err(StoreError::InvalidInput {
                field: "registry",
                reason: format!(
                    "another {registry} import (version {prev}) landed after this diff was made against version {}; \
                     run the import again",
                    plan.base_version
                ),
            });
        }

        let closing: Vec<&str> =
            plan.changed.iter().map(RegistryRecord::key).chain(plan.retired.iter().map(String::as_str)).collect();
        for keys in closing.chunks(KEY_CHUNK) {
            let first = if registry.is_persons() { 4 } else { 3 };
            let list = (0..keys.len()).map(|i| format!("${}", i + first)).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "UPDATE {table} SET valid_to = $1, version_to = $2 \
                 WHERE valid_to IS NULL AND {reg} {key} IN ({list})",
                table = registry.table(),
                reg = if registry.is_persons() { "registry = $3 AND" } else { "" },
                key = registry.key_column(),
            );
            let mut q = sqlx::query(&sql).bind(now).bind(version);
            if registry.is_persons() {
                q = q.bind(registry.as_str());
            }
            for k in keys {
                q = q.bind(*k);
            }
            q.execute(&mut *tx).await?;
        }

        let columns = insert_columns(registry);
        let ncols = columns.split(',').count();
        let inserting: Vec<&RegistryRecord> = plan.added.iter().chain(&plan.changed).collect();
        for chunk in inserting.chunks(INSERT_CHUNK) {
            let sql =
                format!("INSERT INTO {} ({columns}) VALUES {}", registry.table(), placeholders(chunk.len(), ncols));
            let mut q = sqlx::query(&sql);
            for rec in chunk {
                q = bind_record(q, registry, rec, version, now);
            }
            q.execute(&mut *tx).await?;
        }

        let entry = Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "registry.imported".into(),
                actor: plan.actor.clone(),
                subject: registry.as_str().into(),
                body: json!({
                    "registry": registry.as_str(), "version": version, "records": plan.records,
                    "added": plan.added.len(), "changed": plan.changed.len(), "retired": plan.retired.len(),
                    "sha256": plan.sha256, "source": plan.source,
                }),
            },
        )
        .await?;
        sqlx::query("UPDATE registry_imports SET ledger_seq = $1 WHERE version = $2")
            .bind(entry.seq)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        info!(
            registry = %registry, version, added = plan.added.len(), changed = plan.changed.len(),
            retired = plan.retired.len(), ledger_seq = entry.seq, "registry import landed"
        );
        Ok(ImportVersion {
            version,
            registry,
            imported_at: now,
            actor: plan.actor.clone(),
            source: plan.source.clone(),
            sha256: plan.sha256.clone(),
            records: plan.records,
            added: plan.added.len() as i64,
            changed: plan.changed.len() as i64,
            retired: plan.retired.len() as i64,
            ledger_seq: entry.seq,
        })
    }

    /// Imports, newest first, at most `limit`.
    pub async fn registry_imports(&self, limit: i64) -> Result<Vec<ImportVersion>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {IMPORT_COLUMNS} FROM registry_imports ORDER BY version DESC LIMIT $1"))
                .bind(limit.max(0))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(import_from_row).collect()
    }

    /// Every record valid now, for the in-memory look-up index.
    pub async fn registry_snapshot(&self) -> Result<RegistrySnapshot, StoreError> {
        let version = self.registry_version().await?;
        let persons = sqlx::query(&format!("SELECT {PERSON_COLUMNS} FROM registry_persons WHERE valid_to IS NULL"))
            .fetch_all(&self.pool)
            .await?;
        let vehicles = sqlx::query(&format!("SELECT {VEHICLE_COLUMNS} FROM registry_vehicles WHERE valid_to IS NULL"))
            .fetch_all(&self.pool)
            .await?;
        let departments =
            sqlx::query(&format!("SELECT {DEPARTMENT_COLUMNS} FROM registry_departments WHERE valid_to IS NULL"))
                .fetch_all(&self.pool)
                .await?;
        Ok(RegistrySnapshot {
            version,
            persons: persons.iter().map(person_from_row).collect::<Result<_, _>>()?,
            vehicles: vehicles.iter().map(vehicle_from_row).collect::<Result<_, _>>()?,
            departments: departments.iter().map(department_from_row).collect::<Result<_, _>>()?,
        })
    }

    /// Vehicles with any of the normalised `plates`, as registered at time `at`.
    pub async fn vehicles_at(&self, plates: &[String], at: i64) -> Result<Vec<Versioned<Vehicle>>, StoreError> {
        let mut out = Vec::new();
        for chunk in plates.chunks(KEY_CHUNK) {
            let list = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ");
            let sql = format!("SELECT {VEHICLE_COLUMNS} FROM registry_vehicles WHERE {VALID_AT} AND plate IN ({list})");
            let mut q = sqlx::query(&sql).bind(at);
            for p in chunk {
                q = q.bind(p.as_str());
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push(vehicle_from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Persons (members and staff) named `q` or with code `q`, as registered at time `at`.
    pub async fn persons_at(&self, q: &str, at: i64, limit: i64) -> Result<Vec<Versioned<Person>>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {PERSON_COLUMNS} FROM registry_persons WHERE {VALID_AT} AND (name = $2 OR code = $2) \
             ORDER BY registry, code LIMIT $3"
        ))
        .bind(at)
        .bind(q)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(person_from_row).collect()
    }

    /// Every department as registered at time `at`.
    pub async fn departments_at(&self, at: i64) -> Result<Vec<Versioned<Department>>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPARTMENT_COLUMNS} FROM registry_departments WHERE {VALID_AT} ORDER BY code"
        ))
        .bind(at)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(department_from_row).collect()
    }

    /// Every version of a vehicle's record, oldest first.
    pub async fn vehicle_history(&self, plate: &str) -> Result<Vec<Versioned<Vehicle>>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {VEHICLE_COLUMNS} FROM registry_vehicles WHERE plate = $1 ORDER BY valid_from, row_id"
        ))
        .bind(plate)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(vehicle_from_row).collect()
    }

    /// Audits a batch of look-ups in one transaction: the rows get consecutive ids, one
    /// `lookup.batch` ledger entry commits to them by hash, and one `lookup.audited` event
    /// announces the batch. An empty batch is refused.
    pub async fn record_lookups(&self, actor: &str, rows: &[NewLookupAudit]) -> Result<LookupBatch, StoreError> {
        if rows.is_empty() {
            return Err(StoreError::InvalidInput { field: "rows", reason: "empty batch".into() });
        }
        let n = rows.len() as i64;
        let mut tx = self.pool.begin().await?;
        let head = sqlx::query("UPDATE lookup_audit_head SET last_id = last_id + $1 WHERE id = 1 RETURNING last_id")
            .bind(n)
            .fetch_one(&mut *tx)
            .await?;
        let last_id: i64 = head.try_get("last_id")?;
        let first_id = last_id - n + 1;
        let sha256 = lookup_rows_sha256(rows.iter().enumerate().map(|(i, r)| (first_id + i as i64, r)));
        let entry = Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "lookup.batch".into(),
                actor: actor.to_owned(),
                subject: "lookup_audit".into(),
                body: json!({"count": n, "first_id": first_id, "last_id": last_id, "sha256": sha256}),
            },
        )
        .await?;
        const COLS: usize = 14;
        for (c, chunk) in rows.chunks(INSERT_CHUNK).enumerate() {
            let sql = format!("INSERT INTO lookup_audit ({AUDIT_COLUMNS}) VALUES {}", placeholders(chunk.len(), COLS));
            let mut q = sqlx::query(&sql);
            for (i, r) in chunk.iter().enumerate() {
                let id = first_id + (c * INSERT_CHUNK + i) as i64;
                q = q
                    .bind(id)
                    .bind(r.ts)
                    .bind(r.channel.as_str())
                    .bind(r.actor.as_str())
                    .bind(r.device.as_deref())
                    .bind(r.lat_e6)
                    .bind(r.lon_e6)
                    .bind(r.kind.as_str())
                    .bind(r.q.as_str())
                    .bind(r.at)
                    .bind(r.outcome.as_str())
                    .bind(r.result.as_deref())
                    .bind(r.candidates)
                    .bind(entry.seq);
            }
            q.execute(&mut *tx).await?;
        }
        Store::append_event_in(
            &mut tx,
            NewEvent {
                kind: "lookup".into(),
                r#type: "lookup.audited".into(),
                data: json!({"count": n, "first_id": first_id, "last_id": last_id, "ledger_seq": entry.seq}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(LookupBatch { first_id, last_id, count: n, ledger_seq: entry.seq, sha256 })
    }

    /// Audited look-ups, newest first: at most `limit` with `id < before` (all when `None`),
    /// optionally only those of one device.
    pub async fn lookup_audits(
        &self,
        limit: i64,
        before: Option<i64>,
        device: Option<&str>,
    ) -> Result<Vec<LookupAudit>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM lookup_audit WHERE id < $1 AND ($2 = '' OR device = $2) \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(before.unwrap_or(i64::MAX))
        .bind(device.unwrap_or(""))
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(audit_from_row).collect::<Result<_, _>>()?)
    }

    /// Audit rows `first..=last` in id order, to re-check a batch's hash against its ledger entry.
    pub async fn lookup_audit_range(&self, first: i64, last: i64) -> Result<Vec<LookupAudit>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {AUDIT_COLUMNS} FROM lookup_audit WHERE id >= $1 AND id <= $2 ORDER BY id"))
                .bind(first)
                .bind(last)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(audit_from_row).collect::<Result<_, _>>()?)
    }

    /// Number of audited look-ups.
    pub async fn lookup_audit_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM lookup_audit").fetch_one(&self.pool).await?;
        Ok(row.try_get("n")?)
    }
}
