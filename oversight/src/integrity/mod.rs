//! The integrity index per township and department (issue 11): five colours (green, blue,
//! yellow, orange, red), warnings and alarms, rectification tasks, circulation notices and the
//! yearly assessment.
//!
//! How it fits: the formula is data ([`formula`], `oversight/index.toml`), stored in the
//! database as immutable versions so every process computes alike and every stored index names
//! the version it came from. [`compute`] gathers one period's inputs — the platform's own records
//! (reports and tips, cases, decisions, overdue alarms, negative records, read through `store`),
//! imported indicators ([`import_indicators`]) and unit sizes from the registries — applies the
//! formula and hands the rows to `store`, which records them with their warnings (yellow,
//! orange), alarms (red) and events in one transaction, each crossing once per unit and period.
//! A red unit's rectification task is a case of the formula's one-stage rectification template,
//! opened through the case [`Workflow`](crate::cases::Workflow), so it runs on the case
//! scheduler's reminders, overdue alarm and negative records. The oversight role recomputes the
//! current period on a schedule ([`run`]); `jiandu index compute` and `POST /api/v1/index/compute`
//! do it on demand. [`assessment`] renders the yearly export.

pub mod assessment;
pub mod formula;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use jiandu_store::{
    AlertLevel, CaseOrigin, Colour, FormulaVersion, IndexRun, IndexUnit, NewAlert, NewIndexRow, NewIndexRun,
    NewIndicator, Role, Store, now_ms,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use formula::{
    DEFAULT_FORMULA, Formula, Measure, MissingData, Period, PeriodKind, Scored, Term, UnitInputs, score,
};

use crate::cases::{OpenCase, Workflow};
use crate::{OversightError, RowError};

/// Settings of the index scheduler (`[index]` in `jiandu.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexConfig {
    /// How often the current period is recomputed (stored only when something changed).
    pub interval: Duration,
    /// A formula file to store as the version in force at start (default
    /// `{data_dir}/index.toml` when it exists; none: the version in force stays).
    pub formula_file: Option<PathBuf>,
    /// Shifts the scheduler's clock (ms), for drills and tests.
    pub clock_offset_ms: i64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig { interval: Duration::from_secs(3600), formula_file: None, clock_offset_ms: 0 }
    }
}

/// Stores `text` as the formula in force after checking it, unless it already is; returns the
/// version in force and whether it is new.
pub async fn load_formula(store: &Store, text: &str, actor: &str) -> Result<(FormulaVersion, bool), OversightError> {
    Formula::parse(text)?;
    let (v, new) = store.integrity_formula_load(text, actor).await?;
    if new {
        info!(version = v.version, "integrity formula version stored");
    }
    Ok((v, new))
}

/// The stored formula version in force, unless it is a superseded shipped default (then `None`:
/// the embedded [`DEFAULT_FORMULA`] takes over and is stored as a new version when used).
async fn stored_formula(store: &Store) -> Result<Option<FormulaVersion>, OversightError> {
    let current = store.integrity_formula_current().await?;
    Ok(current.filter(|v| !formula::SUPERSEDED_DEFAULTS.contains(&v.sha256.as_str())))
}

/// The formula in force and its version (the embedded one is stored first if none is).
pub async fn formula_in_force(store: &Store) -> Result<(i64, Formula), OversightError> {
    let v = match stored_formula(store).await? {
        Some(v) => v,
        None => load_formula(store, DEFAULT_FORMULA, "jiandu").await?.0,
    };
    Ok((v.version, Formula::parse(&v.source)?))
}

/// The township prefix of a township government's name (`城关镇人民政府` → `城关镇`).
fn township_prefix(name: &str) -> Option<&str> {
    let base = name.strip_suffix("人民政府").or_else(|| name.strip_suffix("办事处"))?;
    let end = base.rfind(['镇', '乡', '道'])? + '镇'.len_utf8();
    (end == base.len()).then_some(base)
}

/// Whether a registry person's unit (as written) belongs to a department.
fn belongs(unit: &str, dept: &IndexUnit) -> bool {
    unit == dept.code || unit == dept.name || township_prefix(&dept.name).is_some_and(|p| unit.starts_with(p))
}

/// The inputs of `code`, added (named by its code) when the registry does not know the unit.
fn ensure<'a>(units: &'a mut BTreeMap<String, UnitInputs>, code: &str) -> &'a mut UnitInputs {
    units.entry(code.to_owned()).or_insert_with(|| UnitInputs {
        unit: code.to_owned(),
        name: code.to_owned(),
        ..Default::default()
    })
}

/// Gathers every unit's inputs for a period.
pub async fn gather(
    store: &Store,
    formula: &Formula,
    period: &Period,
    now: i64,
) -> Result<Vec<UnitInputs>, OversightError> {
    let at = (period.end - 1).min(now);
    let mut units: BTreeMap<String, UnitInputs> = BTreeMap::new();
    let depts = store.integrity_units(at).await?;
    let people = store.integrity_people_per_unit(at).await?;
    for d in &depts {
        let n = people.iter().filter(|(u, _)| belongs(u, d)).map(|(_, n)| n).sum();
        units.insert(
            d.code.clone(),
            UnitInputs { unit: d.code.clone(), name: d.name.clone(), people: n, ..Default::default() },
        );
    }
    let mut reports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in store.integrity_platform_records(period.start, period.end, &formula.decided_stage).await? {
        if r.source == "reports" {
            reports.entry(r.unit).or_default().insert(r.id);
            continue;
        }
        let u = ensure(&mut units, &r.unit);
        *u.raw.entry(r.source.clone()).or_insert(0.0) += r.count as f64;
        u.records.entry(r.source).or_default().push(r.id);
    }
    // A tip whose text names a unit (its full name, at least three characters) counts for it.
    let received = store.integrity_reports_received(period.start, period.end).await?;
    for d in depts.iter().filter(|d| d.name.chars().count() >= 3) {
        for (id, text) in &received {
            if text.contains(&d.name) {
                reports.entry(d.code.clone()).or_default().insert(id.clone());
            }
        }
    }
    for (code, ids) in reports {
        let u = ensure(&mut units, &code);
        u.raw.insert("reports".into(), ids.len() as f64);
        u.records.insert("reports".into(), ids.into_iter().collect());
    }
    let keys = formula.import_keys();
    for i in store.integrity_indicators(&period.label).await? {
        if !keys.contains(&i.key.as_str()) {
            continue;
        }
        let u = ensure(&mut units, &i.unit);
        u.raw.insert(i.key.clone(), i.value);
        u.records.entry("indicators".into()).or_default().push(i.id.to_string());
    }
    Ok(units.into_values().collect())
}

/// The alert a colour raises: yellow and orange warn the unit head (not again once the unit was
/// alarmed this period), red alarms the leaders; green and blue raise nothing. Each level is
/// raised at most once per unit and period.
pub fn alert_for(colour: Colour, unit: &str, leaders: &[String]) -> Option<NewAlert> {
    match colour {
        Colour::Yellow | Colour::Orange => Some(NewAlert {
            level: AlertLevel::Warning,
            to: Some(json!({"unit": unit, "role": "unit_head"})),
            escalated_to: None,
            unless: vec![AlertLevel::Alarm],
        }),
        Colour::Red => {
            Some(NewAlert { level: AlertLevel::Alarm, to: None, escalated_to: Some(leaders.to_vec()), unless: vec![] })
        }
        Colour::Green | Colour::Blue => None,
    }
}

/// Computes and stores every unit's index for `period` (default: the current one) under the
/// formula in force. With `only_if_changed` (the scheduler) nothing is stored when every unit's
/// result equals its latest row. Red units get their rectification cases afterwards.
pub async fn compute(
    store: &Store,
    period: Option<&str>,
    actor: &str,
    now: i64,
    only_if_changed: bool,
) -> Result<Option<IndexRun>, OversightError> {
    // The embedded formula is stored as a version only when a run is recorded with it, so an
    // idle platform's ledger stays untouched.
    let current = stored_formula(store).await?;
    let formula = Formula::parse(current.as_ref().map_or(DEFAULT_FORMULA, |v| v.source.as_str()))?;
    let period = match period {
        Some(p) => Period::parse(p)?,
        None => Period::containing(formula.period, now),
    };
    let inputs = gather(store, &formula, &period, now).await?;
    let leaders = crate::cases::active_leaders(store).await?;
    let rows: Vec<NewIndexRow> = inputs
        .iter()
        .map(|u| {
            let s = score(&formula, u);
            NewIndexRow {
                unit: u.unit.clone(),
                unit_name: u.name.clone(),
                size: s.size,
                size_source: s.size_source.into(),
                score: s.score,
                colour: s.colour,
                inputs: formula::inputs_json(u, &s),
                explanation: s.explanation,
                alert: alert_for(s.colour, &u.unit, &leaders),
            }
        })
        .collect();
    if only_if_changed {
        let latest = store.integrity_period(&period.label).await?;
        let same = latest.len() == rows.len()
            && rows.iter().all(|r| {
                latest.iter().any(|l| {
                    Some(l.formula_version) == current.as_ref().map(|v| v.version)
                        && l.unit == r.unit
                        && l.score == r.score
                        && l.colour == r.colour
                        && l.inputs == r.inputs
                })
            });
        if same {
            open_rectifications(store, now).await?;
            return Ok(None);
        }
    }
    let version = match current {
        Some(v) => v.version,
        None => load_formula(store, DEFAULT_FORMULA, "jiandu").await?.0.version,
    };
    let run = store
        .integrity_record_run(NewIndexRun {
            period: period.label.clone(),
            formula_version: version,
            actor: actor.to_owned(),
            rows,
        })
        .await?;
    open_rectifications(store, now).await?;
    Ok(Some(run))
}

/// Opens the rectification case of every alarm that has none yet (each once: the case's origin
/// id names the alarm, so an interrupted attempt finds its case again). Returns (alert, case).
pub async fn open_rectifications(store: &Store, now: i64) -> Result<Vec<(i64, String)>, OversightError> {
    let pending = store.integrity_alarms_without_case().await?;
    if pending.is_empty() {
        return Ok(vec![]);
    }
    let (_, formula) = formula_in_force(store).await?;
    let mut workflow = Workflow::load(store).await?;
    workflow.stages = vec![formula.rectification.stage.clone()];
    let mut opened = Vec::new();
    for alert in pending {
        let origin = format!("index-alarm:{}", alert.id);
        let case_id = match store.integrity_case_by_origin(&origin).await? {
            Some(id) => id,
            None => {
                let open = OpenCase {
                    title: format!("整改 rectification: {} red in {}", alert.unit, alert.period),
                    origin: CaseOrigin::Manual,
                    origin_id: Some(origin),
                    parties: vec![],
                    evidence: vec![],
                    handler: formula.rectification.handler.clone(),
                    unit: alert.unit.clone(),
                    unit_head: None,
                };
                workflow.open(store, open, "jiandu", Role::Admin, now).await?.id
            }
        };
        store.integrity_alert_set_case(alert.id, &case_id).await?;
        info!(unit = %alert.unit, period = %alert.period, case = %case_id, "rectification case opened");
        opened.push((alert.id, case_id));
    }
    Ok(opened)
}

/// Checks indicator values against the formula in force (known import keys, a valid period,
/// a unit, a finite value >= 0; percentages at most 100 where the target is a percentage) and
/// stores them with one ledger entry.
pub async fn import_indicators(
    store: &Store,
    rows: Vec<NewIndicator>,
    source: &str,
    actor: &str,
) -> Result<usize, OversightError> {
    let (_, formula) = formula_in_force(store).await?;
    let keys = formula.import_keys();
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(rows.len());
    for (i, mut r) in rows.into_iter().enumerate() {
        let row = i + 2;
        let mut err = |column: &str, message: String| errors.push(RowError { row, column: column.into(), message });
        if r.unit.trim().is_empty() {
            err("unit", "empty; name the unit's department code".into());
        }
        match Period::parse(&r.period) {
            Ok(p) => r.period = p.label,
            Err(e) => err("period", e.to_string().trim_start_matches("period: ").to_owned()),
        }
        if !keys.contains(&r.key.as_str()) {
            err("indicator", format!("unknown {:?}; the formula imports {}", r.key, keys.join(", ")));
        }
        if !(r.value.is_finite() && r.value >= 0.0) {
            err("value", format!("must be a number >= 0, got {}", r.value));
        }
        r.unit = r.unit.trim().to_owned();
        out.push(r);
    }
    if !errors.is_empty() {
        return Err(OversightError::Rows { total: errors.len(), errors });
    }
    Ok(store.integrity_indicators_add(&out, source, actor).await?)
}

/// Parses an indicator CSV (`unit,period,indicator,value`; Chinese headers 单位代码, 期间, 指标,
/// 数值 also accepted). Every problem names its row and column.
pub fn parse_indicators_csv(text: &str) -> Result<Vec<NewIndicator>, OversightError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let header = reader
        .headers()
        .map_err(|e| OversightError::Invalid { field: "header".into(), reason: e.to_string() })?
        .clone();
    let names: [(&str, &[&str]); 4] = [
        ("unit", &["unit", "单位代码", "单位", "部门代码"]),
        ("period", &["period", "期间", "周期"]),
        ("indicator", &["indicator", "key", "指标"]),
        ("value", &["value", "数值", "值"]),
    ];
    let mut cols = [0usize; 4];
    for (i, (name, aliases)) in names.iter().enumerate() {
        cols[i] = header.iter().position(|h| aliases.contains(&h.to_lowercase().as_str())).ok_or_else(|| {
            OversightError::Invalid {
                field: "header".into(),
                reason: format!("no {name} column (accepted: {})", aliases.join(", ")),
            }
        })?;
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let row = i + 2;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                errors.push(RowError { row, column: String::new(), message: e.to_string() });
                continue;
            }
        };
        let get = |c: usize| rec.get(cols[c]).unwrap_or("").to_owned();
        let value = match get(3).parse::<f64>() {
            Ok(v) => v,
            Err(_) => {
                errors.push(RowError {
                    row,
                    column: header.get(cols[3]).unwrap_or("value").into(),
                    message: format!("not a number: {:?}", get(3)),
                });
                continue;
            }
        };
        out.push(NewIndicator { unit: get(0), period: get(1), key: get(2), value });
    }
    if !errors.is_empty() {
        return Err(OversightError::Rows { total: errors.len(), errors });
    }
    if out.is_empty() {
        return Err(OversightError::Invalid { field: "rows".into(), reason: "the file has no data rows".into() });
    }
    Ok(out)
}

/// The index scheduler (part of the oversight role): stores `formula_file`, when one is
/// configured, as the version in force if it differs from it (without one, the version in force
/// stays, e.g. one loaded with `jiandu index formula load`; the embedded formula is used until
/// then), then recomputes the current period every
/// `interval` until `shutdown`, storing rows only when something changed.
pub async fn run(store: Store, config: IndexConfig, shutdown: CancellationToken) -> Result<(), OversightError> {
    if let Some(path) = &config.formula_file {
        let text = std::fs::read_to_string(path).map_err(|source| OversightError::Io { path: path.clone(), source })?;
        load_formula(&store, &text, "jiandu").await?;
    }
    info!(interval_s = config.interval.as_secs(), "integrity index scheduler started");
    loop {
        let now = now_ms() + config.clock_offset_ms;
        match compute(&store, None, "scheduler", now, true).await {
            Ok(Some(run)) => info!(period = %run.rows.first().map(|r| r.period.as_str()).unwrap_or(""),
                                   units = run.rows.len(), alerts = run.alerts.len(), "integrity index recomputed"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "integrity index could not be computed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_decide_the_alert_and_who_hears_of_it() {
        let leaders = vec!["lead1".to_owned()];
        assert_eq!(alert_for(Colour::Green, "D001", &leaders), None);
        assert_eq!(alert_for(Colour::Blue, "D001", &leaders), None);
        for colour in [Colour::Yellow, Colour::Orange] {
            let w = alert_for(colour, "D001", &leaders).unwrap();
            assert_eq!(w.level, AlertLevel::Warning);
            assert_eq!(w.to, Some(json!({"unit": "D001", "role": "unit_head"})));
            assert_eq!(w.escalated_to, None);
            assert_eq!(w.unless, [AlertLevel::Alarm], "no warning after an alarm in the same period");
        }
        let a = alert_for(Colour::Red, "D003", &leaders).unwrap();
        assert_eq!(a.level, AlertLevel::Alarm);
        assert_eq!(a.escalated_to, Some(leaders.clone()));
        assert!(a.unless.is_empty(), "a warned unit turning red still gets its alarm");
    }

    #[test]
    fn people_belong_to_their_department_or_township() {
        let town = IndexUnit { code: "D040".into(), name: "城关镇人民政府".into() };
        let dept = IndexUnit { code: "D016".into(), name: "县财政局".into() };
        assert_eq!(township_prefix("城关镇人民政府"), Some("城关镇"));
        assert_eq!(township_prefix("县人民政府办公室"), None);
        assert!(belongs("城关镇东村党支部", &town));
        assert!(belongs("D040", &town));
        assert!(!belongs("东城镇东村党支部", &town));
        assert!(belongs("县财政局", &dept));
        assert!(!belongs("县财政局机关党支部", &dept));
    }

    #[test]
    fn an_indicator_csv_names_the_bad_cell() {
        let ok = parse_indicators_csv("单位代码,期间,指标,数值\nD001,2026-Q4,education_sessions,2\n").unwrap();
        assert_eq!(
            ok,
            [NewIndicator {
                unit: "D001".into(),
                period: "2026-Q4".into(),
                key: "education_sessions".into(),
                value: 2.0
            }]
        );
        let e = parse_indicators_csv("unit,period,indicator,value\nD001,2026-Q4,education_sessions,two\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "1 problem(s) in the file, nothing imported:\n  row 2, column value: not a number: \"two\"\n"
        );
        let e = parse_indicators_csv("unit,period,value\n").unwrap_err();
        assert!(matches!(e, OversightError::Invalid { ref field, .. } if field == "header"), "{e}");
    }
}
