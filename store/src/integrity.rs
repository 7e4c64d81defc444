//! The integrity index (issue 11): the rows behind `oversight::integrity`.
//!
//! `oversight` owns the formula (weights, thresholds, periods) and does the arithmetic; this
//! module keeps what the arithmetic needs and what it produced. Formula versions are immutable
//! rows (a changed formula is a new version; the newest is in force). Indicators the platform
//! cannot see (education, organisation checks) are imported rows. The platform's own inputs are
//! read here from reports, cases, overdue alarms and negative records, each with its record id,
//! so a colour can be explained down to the records. A computation run stores one row per unit
//! and period (history is kept), and in the same transaction its warnings and alarms: at most
//! one of each per unit and period (a unique key is the guard), each with its outbox events and
//! ledger entry, so a crossing into yellow or red notifies exactly once.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use tracing::info;

use crate::{NewEvent, NewLedgerEntry, Store, StoreError, canonical_json, now_ms};

/// One stored formula version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormulaVersion {
    /// Version number (increasing).
    pub version: i64,
    /// The TOML text.
    pub source: String,
    /// SHA-256 of the text, hex.
    pub sha256: String,
    /// When it was stored.
    pub loaded_at: i64,
    /// Who stored it.
    pub loaded_by: String,
}

/// An imported indicator value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewIndicator {
    /// Unit (department code).
    pub unit: String,
    /// Period label, e.g. `2026-Q4`.
    pub period: String,
    /// Indicator key, e.g. `education_sessions`.
    pub key: String,
    /// The value.
    pub value: f64,
}

/// An indicator value as stored (the newest per unit, period and key counts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Indicator {
    /// Row id.
    pub id: i64,
    /// Unit (department code).
    pub unit: String,
    /// Period label.
    pub period: String,
    /// Indicator key.
    pub key: String,
    /// The value.
    pub value: f64,
    /// Where it came from (file name or `api`).
    pub source: String,
    /// Who entered it.
    pub actor: String,
    /// When.
    pub ts: i64,
}

/// One platform record that counts toward a unit's index: a report, case, disciplinary decision,
/// overdue alarm or negative record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// Unit (department code) it counts for.
    pub unit: String,
    /// `reports`, `cases`, `disciplined`, `overdue_alarms` or `negative_records`.
    pub source: String,
    /// The record's id (report id, case id, case log seq, negative record id).
    pub id: String,
    /// How much it counts (a decision counts its parties, at least 1).
    pub count: i64,
    /// When it happened.
    pub ts: i64,
}

/// A department as the index sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexUnit {
    /// Department code.
    pub code: String,
    /// Department name.
    pub name: String,
}

stored_enum! {
    /// How serious an index alert is.
    pub enum AlertLevel {
        /// Yellow or orange: the unit head is warned.
        Warning => "warning",
        /// Red: the leaders are alarmed and a rectification task follows.
        Alarm => "alarm",
    }
}

stored_enum! {
    /// The five colours of the integrity index (五色), best first.
    pub enum Colour {
        /// Clean.
        Green => "green",
        /// Minor deductions.
        Blue => "blue",
        /// Watch: the unit head is warned.
        Yellow => "yellow",
        /// Serious: the unit head is warned.
        Orange => "orange",
        /// Alarm: the leaders are told and a rectification case is opened.
        Red => "red",
    }
}

impl Colour {
    /// How many of each colour, as the JSON object `{"green": 3, "red": 1, …}` (colours that do
    /// not occur are left out) carried by `index.computed` and `GET /api/v1/index`.
    pub fn counts(colours: impl IntoIterator<Item = Colour>) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        for c in colours {
            let n = out.get(c.as_str()).and_then(Value::as_i64).unwrap_or(0);
            out.insert(c.as_str().to_owned(), Value::from(n + 1));
        }
        out
    }
}

/// An alert to raise with a computed row, decided by `oversight` (which colour alerts, whom it
/// reaches, what it is suppressed by); the store records it at most once per unit, period and
/// level (a unique key is the guard). A warning is announced on `jd/v1/events/index`, an alarm on
/// `jd/v1/events/alarm` and `…/index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAlert {
    /// The level.
    pub level: AlertLevel,
    /// Who is told, carried by the event as `to` (e.g. `{"unit":…,"role":"unit_head"}`).
    pub to: Option<Value>,
    /// Who it is escalated to, carried by the event as `escalated_to`.
    pub escalated_to: Option<Vec<String>>,
    /// Not raised when the unit already has an alert of one of these levels in the period.
    pub unless: Vec<AlertLevel>,
}

/// A computed index of one unit, to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewIndexRow {
    /// Unit (department code).
    pub unit: String,
    /// Unit name.
    pub unit_name: String,
    /// People the index was normalised by.
    pub size: i64,
    /// `registry` or `default` (no registry people: the formula's default size).
    pub size_source: String,
    /// Score, 0..=100.
    pub score: f64,
    /// One of the five colours.
    pub colour: Colour,
    /// Every input, term and record behind the score.
    pub inputs: Value,
    /// The sentence explaining the colour.
    pub explanation: String,
    /// The alert this row raises, if any.
    pub alert: Option<NewAlert>,
}

/// A computation run: every unit of one period under one formula version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewIndexRun {
    /// Period label.
    pub period: String,
    /// Formula version used.
    pub formula_version: i64,
    /// Who asked (user name or `scheduler`).
    pub actor: String,
    /// The rows.
    pub rows: Vec<NewIndexRow>,
}

/// A stored index row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexRow {
    /// Row id.
    pub id: i64,
    /// The run it belongs to.
    pub run_id: String,
    /// Unit (department code).
    pub unit: String,
    /// Unit name.
    pub unit_name: String,
    /// Period label.
    pub period: String,
    /// Formula version it was computed with.
    pub formula_version: i64,
    /// People it was normalised by.
    pub size: i64,
    /// `registry` or `default`.
    pub size_source: String,
    /// Score.
    pub score: f64,
    /// Colour.
    pub colour: Colour,
    /// Inputs, terms and records.
    pub inputs: Value,
    /// Explanation.
    pub explanation: String,
    /// When computed.
    pub computed_at: i64,
}

/// A warning (yellow, orange) or alarm (red) of a unit for a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexAlert {
    /// Id.
    pub id: i64,
    /// Unit.
    pub unit: String,
    /// Period label.
    pub period: String,
    /// Warning or alarm.
    pub level: AlertLevel,
    /// The index row that raised it.
    pub index_id: i64,
    /// The rectification case (alarms), once opened.
    pub case_id: Option<String>,
    /// When.
    pub ts: i64,
}

/// What a run stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexRun {
    /// Run id (ULID).
    pub run_id: String,
    /// The rows, in the order given.
    pub rows: Vec<IndexRow>,
    /// Alerts this run raised (none for a colour already notified this period).
    pub alerts: Vec<IndexAlert>,
    /// The run's ledger entry.
    pub ledger_seq: i64,
}

/// A circulation notice (通报) to issue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewNotice {
    /// Period it is about.
    pub period: String,
    /// Units named.
    pub units: Vec<String>,
    /// Title.
    pub title: String,
    /// Text.
    pub body: String,
    /// Who issues it.
    pub issued_by: String,
}

/// A circulation notice as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// Id.
    pub id: i64,
    /// Period.
    pub period: String,
    /// Units named.
    pub units: Vec<String>,
    /// Title.
    pub title: String,
    /// Text.
    pub body: String,
    /// Who issued it.
    pub issued_by: String,
    /// When.
    pub issued_at: i64,
    /// Its ledger entry.
    pub ledger_seq: i64,
}

const ROW_COLUMNS: &str = "id, run_id, unit, unit_name, period, formula_version, size, size_source, score, colour, \
     inputs, explanation, computed_at";
const ALERT_COLUMNS: &str = "id, unit, period, level, index_id, case_id, ts";

fn formula_from_row(r: &AnyRow) -> Result<FormulaVersion, StoreError> {
    Ok(FormulaVersion {
        version: r.try_get("version")?,
        source: r.try_get("source")?,
        sha256: r.try_get("sha256")?,
        loaded_at: r.try_get("loaded_at")?,
        loaded_by: r.try_get("loaded_by")?,
    })
}

fn index_from_row(r: &AnyRow) -> Result<IndexRow, StoreError> {
    let inputs: String = r.try_get("inputs")?;
    Ok(IndexRow {
        id: r.try_get("id")?,
        run_id: r.try_get("run_id")?,
        unit: r.try_get("unit")?,
        unit_name: r.try_get("unit_name")?,
        period: r.try_get("period")?,
        formula_version: r.try_get("formula_version")?,
        size: r.try_get("size")?,
        size_source: r.try_get("size_source")?,
        score: r.try_get("score")?,
        colour: Colour::from_column(r, "colour")?,
        inputs: serde_json::from_str(&inputs)
            .map_err(|e| StoreError::Corrupt { what: "index inputs", reason: e.to_string() })?,
        explanation: r.try_get("explanation")?,
        computed_at: r.try_get("computed_at")?,
    })
}

fn alert_from_row(r: &AnyRow) -> Result<IndexAlert, StoreError> {
    let level: String = r.try_get("level")?;
    Ok(IndexAlert {
        id: r.try_get("id")?,
        unit: r.try_get("unit")?,
        period: r.try_get("period")?,
        level: AlertLevel::parse(&level).ok_or(StoreError::Corrupt { what: "alert level", reason: level })?,
        index_id: r.try_get("index_id")?,
        case_id: r.try_get("case_id")?,
        ts: r.try_get("ts")?,
    })
}

fn notice_from_row(r: &AnyRow) -> Result<Notice, StoreError> {
    let units: String = r.try_get("units")?;
    Ok(Notice {
        id: r.try_get("id")?,
        period: r.try_get("period")?,
        units: serde_json::from_str(&units)
            .map_err(|e| StoreError::Corrupt { what: "notice units", reason: e.to_string() })?,
        title: r.try_get("title")?,
        body: r.try_get("body")?,
        issued_by: r.try_get("issued_by")?,
        issued_at: r.try_get("issued_at")?,
        ledger_seq: r.try_get("ledger_seq")?,
    })
}

/// The public part of an index row carried by its events.
fn row_summary(r: &IndexRow) -> Value {
    json!({
        "index_id": r.id, "unit": r.unit, "unit_name": r.unit_name, "period": r.period, "score": r.score,
        "colour": r.colour, "formula_version": r.formula_version, "explanation": r.explanation,
    })
}

impl Store {
    /// Stores `source` as the formula in force unless it already is (same text as the newest
    /// version); returns the version in force and whether it is new. Versions are never changed.
    pub async fn integrity_formula_load(
        &self,
        source: &str,
        actor: &str,
    ) -> Result<(FormulaVersion, bool), StoreError> {
        let sha = hex::encode(Sha256::digest(source.as_bytes()));
        let mut tx = self.pool.begin().await?;
        // Serialise loaders on the ledger head first (a write takes SQLite's write lock and
        // PostgreSQL's row lock), so two processes starting at once store one version, not two.
        sqlx::query("UPDATE ledger_head SET seq = seq WHERE id = 1").execute(&mut *tx).await?;
        let current = sqlx::query(
            "SELECT version, source, sha256, loaded_at, loaded_by FROM integrity_formulas ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| formula_from_row(&r))
        .transpose()?;
        if let Some(f) = current.filter(|f| f.sha256 == sha) {
            return Ok((f, false));
        }
        let now = now_ms();
        let entry = Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "index.formula".into(),
                actor: actor.into(),
                subject: "integrity formula".into(),
                body: json!({"sha256": sha}),
            },
        )
        .await?;
        let row = sqlx::query(
            "INSERT INTO integrity_formulas (source, sha256, loaded_at, loaded_by) VALUES ($1, $2, $3, $4) \
             RETURNING version",
        )
        .bind(source)
        .bind(&sha)
        .bind(now)
        .bind(actor)
        .fetch_one(&mut *tx)
        .await?;
        let version: i64 = row.try_get("version")?;
        tx.commit().await?;
        info!(version, ledger_seq = entry.seq, "integrity formula stored");
        let f =
            FormulaVersion { version, source: source.to_owned(), sha256: sha, loaded_at: now, loaded_by: actor.into() };
        Ok((f, true))
    }

    /// The formula version in force (the newest), if any was stored.
    pub async fn integrity_formula_current(&self) -> Result<Option<FormulaVersion>, StoreError> {
        let row = sqlx::query(
            "SELECT version, source, sha256, loaded_at, loaded_by FROM integrity_formulas ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| formula_from_row(&r)).transpose()
    }

    /// One formula version.
    pub async fn integrity_formula(&self, version: i64) -> Result<FormulaVersion, StoreError> {
        let row = sqlx::query(
            "SELECT version, source, sha256, loaded_at, loaded_by FROM integrity_formulas WHERE version = $1",
        )
        .bind(version)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound { what: "formula version", id: version.to_string() })?;
        formula_from_row(&row)
    }

    /// Every formula version, oldest first.
    pub async fn integrity_formulas(&self) -> Result<Vec<FormulaVersion>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, source, sha256, loaded_at, loaded_by FROM integrity_formulas ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(formula_from_row).collect()
    }

    /// Adds indicator values (checked by `oversight`) in one transaction with one
    /// `index.indicators` ledger entry; returns how many were stored.
    pub async fn integrity_indicators_add(
        &self,
        rows: &[NewIndicator],
        source: &str,
        actor: &str,
    ) -> Result<usize, StoreError> {
        if rows.is_empty() {
            return Err(StoreError::InvalidInput { field: "indicators", reason: "nothing to import".into() });
        }
        let now = now_ms();
        let mut hasher = Sha256::new();
        let mut tx = self.pool.begin().await?;
        for r in rows {
            if !r.value.is_finite() {
                return Err(StoreError::InvalidInput { field: "value", reason: format!("not a number: {}", r.value) });
            }
            hasher.update(
                canonical_json(
                    &json!({"unit": r.unit, "period": r.period, "key": r.key, "value": r.value.to_string()}),
                )
                .as_bytes(),
            );
            sqlx::query(
                "INSERT INTO integrity_indicators (unit, period, key, value, source, actor, ts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&r.unit)
            .bind(&r.period)
            .bind(&r.key)
            .bind(r.value)
            .bind(source)
            .bind(actor)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "index.indicators".into(),
                actor: actor.into(),
                subject: source.into(),
                body: json!({"rows": rows.len() as i64, "sha256": hex::encode(hasher.finalize())}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(rows.len())
    }

    /// The indicator values in force for a period: the newest per unit and key.
    pub async fn integrity_indicators(&self, period: &str) -> Result<Vec<Indicator>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, unit, period, key, value, source, actor, ts FROM integrity_indicators i WHERE period = $1 \
             AND id = (SELECT MAX(id) FROM integrity_indicators j WHERE j.period = i.period AND j.unit = i.unit \
             AND j.key = i.key) ORDER BY unit, key",
        )
        .bind(period)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Indicator {
                    id: r.try_get("id")?,
                    unit: r.try_get("unit")?,
                    period: r.try_get("period")?,
                    key: r.try_get("key")?,
                    value: r.try_get("value")?,
                    source: r.try_get("source")?,
                    actor: r.try_get("actor")?,
                    ts: r.try_get("ts")?,
                })
            })
            .collect()
    }

    /// The departments of the registry at `at` (code and name), by code.
    pub async fn integrity_units(&self, at: i64) -> Result<Vec<IndexUnit>, StoreError> {
        let rows = sqlx::query(
            "SELECT code, name FROM registry_departments WHERE valid_from <= $1 AND (valid_to IS NULL OR valid_to > $1) \
             ORDER BY code",
        )
        .bind(at)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(IndexUnit { code: r.try_get("code")?, name: r.try_get("name")? })).collect()
    }

    /// Active people (members and staff) at `at` per unit as written in the registry (a name or
    /// a code), for normalising the index by unit size.
    pub async fn integrity_people_per_unit(&self, at: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT unit, COUNT(*) AS n FROM registry_persons WHERE status = 'active' AND valid_from <= $1 \
             AND (valid_to IS NULL OR valid_to > $1) GROUP BY unit ORDER BY unit",
        )
        .bind(at)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("unit")?, r.try_get("n")?))).collect()
    }

    /// The platform's own records in `[start, end)` that count toward units: reports a case was
    /// opened from (for the case's unit), cases opened, decisions (cases entering
    /// `decided_stage`, counting their parties), overdue alarms and negative records of units.
    pub async fn integrity_platform_records(
        &self,
        start: i64,
        end: i64,
        decided_stage: &str,
    ) -> Result<Vec<UnitRecord>, StoreError> {
        let mut out = Vec::new();
        let queries: [(&str, String); 5] = [
            (
                "reports",
                "SELECT c.unit AS unit, r.id AS id, 1 AS n, r.created_at AS ts FROM reports r \
                 JOIN cases c ON c.origin_kind = 'report' AND c.origin_id = r.id \
                 WHERE r.created_at >= $1 AND r.created_at < $2 ORDER BY r.created_at, r.id"
                    .into(),
            ),
            (
                "cases",
                "SELECT unit, id, 1 AS n, created_at AS ts FROM cases WHERE created_at >= $1 AND created_at < $2 \
                 ORDER BY created_at, id"
                    .into(),
            ),
            (
                "disciplined",
                "SELECT c.unit AS unit, c.id AS id, c.parties AS parties, l.ts AS ts FROM case_log l \
                 JOIN cases c ON c.id = l.case_id WHERE l.kind = 'advanced' AND l.stage = $3 \
                 AND l.ts >= $1 AND l.ts < $2 ORDER BY l.ts, l.seq"
                    .into(),
            ),
            (
                "overdue_alarms",
                "SELECT c.unit AS unit, c.id AS id, 1 AS n, l.ts AS ts FROM case_log l JOIN cases c ON c.id = l.case_id \
                 WHERE l.kind = 'overdue' AND l.ts >= $1 AND l.ts < $2 ORDER BY l.ts, l.seq"
                    .into(),
            ),
            (
                "negative_records",
                "SELECT subject AS unit, CAST(id AS TEXT) AS id, 1 AS n, ts FROM negative_records \
                 WHERE subject_kind = 'unit' AND ts >= $1 AND ts < $2 ORDER BY ts, id"
                    .into(),
            ),
        ];
        for (source, sql) in queries {
            let mut q = sqlx::query(&sql).bind(start).bind(end);
            if source == "disciplined" {
                q = q.bind(decided_stage);
            }
            let rows = q.fetch_all(&self.pool).await?;
            for r in &rows {
                let count = if source == "disciplined" {
                    let parties: String = r.try_get("parties")?;
                    let n = serde_json::from_str::<Vec<Value>>(&parties).map(|p| p.len() as i64).unwrap_or(0);
                    n.max(1)
                } else {
                    r.try_get("n")?
                };
                out.push(UnitRecord {
                    unit: r.try_get("unit")?,
                    source: source.to_owned(),
                    id: r.try_get("id")?,
                    count,
                    ts: r.try_get("ts")?,
                });
            }
        }
        Ok(out)
    }

    /// Reports received in `[start, end)`: (id, text), for attributing tips that name a unit.
    pub async fn integrity_reports_received(&self, start: i64, end: i64) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, text FROM reports WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at, id",
        )
        .bind(start)
        .bind(end)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("text")?))).collect()
    }

    /// Stores a computation run: its rows, then each row's alert as `oversight` decided it
    /// (`index.warning` on `jd/v1/events/index`, `index.alarm` on `jd/v1/events/alarm` and
    /// `…/index`, each with its ledger entry; skipped when the unit and period already have it or
    /// one of the levels it is suppressed by), an `index.computed` event and one ledger entry for
    /// the run, all in one transaction.
    pub async fn integrity_record_run(&self, run: NewIndexRun) -> Result<IndexRun, StoreError> {
        for r in &run.rows {
            if !r.score.is_finite() {
                return Err(StoreError::InvalidInput { field: "score", reason: format!("not a number: {}", r.score) });
            }
        }
        let run_id = crate::new_id();
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut hasher = Sha256::new();
        let mut rows = Vec::with_capacity(run.rows.len());
        for r in &run.rows {
            let inserted = sqlx::query(
                "INSERT INTO integrity_index (run_id, unit, unit_name, period, formula_version, size, size_source, \
                 score, colour, inputs, explanation, computed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                 $11, $12) RETURNING id",
            )
            .bind(&run_id)
            .bind(&r.unit)
            .bind(&r.unit_name)
            .bind(&run.period)
            .bind(run.formula_version)
            .bind(r.size)
            .bind(&r.size_source)
            .bind(r.score)
            .bind(r.colour.as_str())
            .bind(r.inputs.to_string())
            .bind(&r.explanation)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let row = IndexRow {
                id: inserted.try_get("id")?,
                run_id: run_id.clone(),
                unit: r.unit.clone(),
                unit_name: r.unit_name.clone(),
                period: run.period.clone(),
                formula_version: run.formula_version,
                size: r.size,
                size_source: r.size_source.clone(),
                score: r.score,
                colour: r.colour,
                inputs: r.inputs.clone(),
                explanation: r.explanation.clone(),
                computed_at: now,
            };
            hasher.update(
                canonical_json(&json!({"unit": row.unit, "score": row.score.to_string(), "colour": row.colour}))
                    .as_bytes(),
            );
            rows.push(row);
        }
        let mut alerts = Vec::new();
        for (row, new) in rows.iter().zip(&run.rows) {
            let Some(decided) = &new.alert else { continue };
            let level = decided.level.as_str();
            let mut suppressed = false;
            for other in &decided.unless {
                let found = sqlx::query(
                    "SELECT COUNT(*) AS n FROM integrity_alerts WHERE unit = $1 AND period = $2 AND level = $3",
                )
                .bind(&row.unit)
                .bind(&row.period)
                .bind(other.as_str())
                .fetch_one(&mut *tx)
                .await?;
                suppressed |= found.try_get::<i64, _>("n")? > 0;
            }
            if suppressed {
                continue;
            }
            let inserted = sqlx::query(&format!(
                "INSERT INTO integrity_alerts (unit, period, level, index_id, case_id, ts) \
                 VALUES ($1, $2, $3, $4, NULL, $5) ON CONFLICT (unit, period, level) DO NOTHING RETURNING {ALERT_COLUMNS}"
            ))
            .bind(&row.unit)
            .bind(&row.period)
            .bind(level)
            .bind(row.id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(inserted) = inserted else { continue };
            let alert = alert_from_row(&inserted)?;
            let mut data = json!({"index": row_summary(row), "alert_id": alert.id});
            if let Some(to) = &decided.to {
                data["to"] = to.clone();
            }
            if let Some(leaders) = &decided.escalated_to {
                data["escalated_to"] = json!(leaders);
            }
            let kinds: &[&str] = match decided.level {
                AlertLevel::Warning => &["index"],
                AlertLevel::Alarm => &["alarm", "index"],
            };
            for kind in kinds {
                Store::append_event_in(
                    &mut tx,
                    NewEvent { kind: (*kind).into(), r#type: format!("index.{level}"), data: data.clone() },
                )
                .await?;
            }
            Store::ledger_append_in(
                &mut tx,
                NewLedgerEntry {
                    kind: format!("index.{level}"),
                    actor: run.actor.clone(),
                    subject: row.unit.clone(),
                    body: json!({"period": row.period, "colour": row.colour, "score": row.score.to_string(),
                                 "index_id": row.id, "alert_id": alert.id}),
                },
            )
            .await?;
            alerts.push(alert);
        }
        Store::append_event_in(
            &mut tx,
            NewEvent {
                kind: "index".into(),
                r#type: "index.computed".into(),
                data: json!({"run_id": run_id, "period": run.period, "formula_version": run.formula_version,
                             "units": rows.len(), "colours": Colour::counts(rows.iter().map(|r| r.colour))}),
            },
        )
        .await?;
        let entry = Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "index.computed".into(),
                actor: run.actor.clone(),
                subject: run.period.clone(),
                body: json!({"run_id": run_id, "formula_version": run.formula_version, "units": rows.len() as i64,
                             "sha256": hex::encode(hasher.finalize())}),
            },
        )
        .await?;
        tx.commit().await?;
        info!(period = %run.period, version = run.formula_version, units = rows.len(), alerts = alerts.len(),
              "integrity index computed");
        Ok(IndexRun { run_id, rows, alerts, ledger_seq: entry.seq })
    }

    /// The latest computed row of every unit for a period, by unit.
    pub async fn integrity_period(&self, period: &str) -> Result<Vec<IndexRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ROW_COLUMNS} FROM integrity_index i WHERE period = $1 AND id = (SELECT MAX(id) \
             FROM integrity_index j WHERE j.period = i.period AND j.unit = i.unit) ORDER BY unit"
        ))
        .bind(period)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(index_from_row).collect()
    }

    /// Every computed row of a unit (all periods, all recomputations), newest first.
    pub async fn integrity_history(&self, unit: &str, limit: i64) -> Result<Vec<IndexRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ROW_COLUMNS} FROM integrity_index WHERE unit = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(unit)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(index_from_row).collect()
    }

    /// The most recent period label that has computed rows, if any.
    pub async fn integrity_latest_period(&self) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT period FROM integrity_index ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("period")).transpose()?)
    }

    /// Alerts, oldest first, optionally of one unit and/or one period.
    pub async fn integrity_alerts(
        &self,
        unit: Option<&str>,
        period: Option<&str>,
    ) -> Result<Vec<IndexAlert>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM integrity_alerts WHERE ($1 = '' OR unit = $1) AND ($2 = '' OR period = $2) \
             ORDER BY id"
        ))
        .bind(unit.unwrap_or(""))
        .bind(period.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alert_from_row).collect()
    }

    /// Alarms whose rectification case is not recorded yet (just raised, or interrupted).
    pub async fn integrity_alarms_without_case(&self) -> Result<Vec<IndexAlert>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM integrity_alerts WHERE level = 'alarm' AND case_id IS NULL ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alert_from_row).collect()
    }

    /// The case opened with origin id `origin_id` by hand or by the platform, if any (how a
    /// rectification case is found again after an interruption).
    pub async fn integrity_case_by_origin(&self, origin_id: &str) -> Result<Option<String>, StoreError> {
        let row =
            sqlx::query("SELECT id FROM cases WHERE origin_kind = 'manual' AND origin_id = $1 ORDER BY id LIMIT 1")
                .bind(origin_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    /// Records the rectification case of an alarm (once: a recorded case is never replaced).
    pub async fn integrity_alert_set_case(&self, alert_id: i64, case_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE integrity_alerts SET case_id = $1 WHERE id = $2 AND case_id IS NULL")
            .bind(case_id)
            .bind(alert_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Issues a circulation notice (通报): stored with an `index.notice` event and ledger entry.
    pub async fn integrity_notice_issue(&self, n: NewNotice) -> Result<Notice, StoreError> {
        if n.title.trim().is_empty() {
            return Err(StoreError::InvalidInput { field: "title", reason: "must not be empty".into() });
        }
        if n.body.trim().is_empty() {
            return Err(StoreError::InvalidInput { field: "body", reason: "must not be empty".into() });
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let entry = Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "index.notice".into(),
                actor: n.issued_by.clone(),
                subject: n.period.clone(),
                body: json!({"title": n.title, "units": n.units.join(","),
                             "sha256": hex::encode(Sha256::digest(n.body.as_bytes()))}),
            },
        )
        .await?;
        let row = sqlx::query(
            "INSERT INTO integrity_notices (period, units, title, body, issued_by, issued_at, ledger_seq) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(&n.period)
        .bind(json!(n.units).to_string())
        .bind(&n.title)
        .bind(&n.body)
        .bind(&n.issued_by)
        .bind(now)
        .bind(entry.seq)
        .fetch_one(&mut *tx)
        .await?;
        let notice = Notice {
            id: row.try_get("id")?,
            period: n.period,
            units: n.units,
            title: n.title,
            body: n.body,
            issued_by: n.issued_by,
            issued_at: now,
            ledger_seq: entry.seq,
        };
        Store::append_event_in(
            &mut tx,
            NewEvent {
                kind: "index".into(),
                r#type: "index.notice".into(),
                data: json!({"id": notice.id, "period": notice.period, "units": notice.units, "title": notice.title,
                             "issued_by": notice.issued_by, "ledger_seq": notice.ledger_seq}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(notice)
    }

    /// Circulation notices, newest first, optionally of one period.
    pub async fn integrity_notices(&self, period: Option<&str>) -> Result<Vec<Notice>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, period, units, title, body, issued_by, issued_at, ledger_seq FROM integrity_notices \
             WHERE ($1 = '' OR period = $1) ORDER BY id DESC",
        )
        .bind(period.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(notice_from_row).collect()
    }
}
