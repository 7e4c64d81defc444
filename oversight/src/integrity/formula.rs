//! The index formula as data (`oversight/index.toml`, embedded; `{data_dir}/index.toml`
//! overrides it) and the arithmetic: a unit's inputs become terms (value, points deducted), a
//! score, a colour and the sentence that explains it. Pure functions, so a fixed set of inputs
//! always gives the same score whatever the database.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use jiandu_store::Colour;

use crate::OversightError;
use crate::cases::{Day, Stage};

/// The default formula shipped with jiandu.
pub const DEFAULT_FORMULA: &str = include_str!("../../index.toml");

/// SHA-256 of earlier shipped default formulas. A database whose formula in force is one of
/// them (never edited by the office) gets the current [`DEFAULT_FORMULA`] stored as a new
/// version, so a shipped fix reaches it while every stored row keeps the version it came from.
pub const SUPERSEDED_DEFAULTS: [&str; 1] = [
    // issue 11: imported indicators without a value counted as 0 (the worst value).
    "2d3e04abdc990f02057d5e703921c18755f6c2ea303e915970ae75a9e68d5e91",
];

/// Whether `text` is an earlier shipped default formula (see [`SUPERSEDED_DEFAULTS`]).
pub fn is_superseded_default(text: &str) -> bool {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    SUPERSEDED_DEFAULTS.contains(&sha.as_str())
}

/// The platform sources an indicator may read; anything else must be `import`.
pub const PLATFORM_SOURCES: [&str; 5] = ["reports", "cases", "disciplined", "overdue_alarms", "negative_records"];

/// How long a period is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodKind {
    /// `2026-11`.
    Month,
    /// `2026-Q4`.
    Quarter,
    /// `2026`.
    Year,
}

/// How an indicator's raw input becomes the value its weight applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// The raw count.
    Count,
    /// Raw per 100 people of the unit.
    #[serde(rename = "per_100")]
    Per100,
    /// How far below `target` the raw value is, in percent of the target.
    ShortfallPct,
}

/// What an imported indicator with no value for a unit and period counts as.
///
/// Formula versions stored before this key existed read as [`MissingData::Worst`], so a stored
/// version keeps computing what it computed; the shipped formula says `no_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingData {
    /// No value deducts nothing; the explanation names the inputs that had no data.
    NoData,
    /// No value counts as 0 (a `shortfall_pct` indicator then deducts its whole cap).
    #[default]
    Worst,
}

/// One indicator of the formula.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndicatorRule {
    /// Key (also the key of imported values).
    pub key: String,
    /// Words used in the explanation.
    pub name: String,
    /// A platform source or `import`.
    pub source: String,
    /// How the value is measured.
    pub measure: Measure,
    /// Points deducted per unit of value.
    pub weight: f64,
    /// Most points this indicator deducts.
    pub cap: f64,
    /// The target (for `shortfall_pct`).
    #[serde(default)]
    pub target: Option<f64>,
}

/// Lowest score of each colour; below `orange` is red.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Green from here.
    pub green: f64,
    /// Blue from here.
    pub blue: f64,
    /// Yellow from here.
    pub yellow: f64,
    /// Orange from here.
    pub orange: f64,
}

/// The rectification task a red unit gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rectification {
    /// User responsible for following it up (the case's handler).
    pub handler: String,
    /// The one stage of the rectification case.
    pub stage: Stage,
}

/// A whole formula.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Formula {
    /// Period length.
    pub period: PeriodKind,
    /// Size of a unit with no registry people.
    pub default_unit_size: u32,
    /// The stage a case enters once its disciplinary decision is made.
    pub decided_stage: String,
    /// What an imported indicator without a value counts as (absent: `worst`, as formula
    /// versions stored before the key existed computed).
    #[serde(default)]
    pub missing_import: MissingData,
    /// Colour thresholds.
    pub colours: Thresholds,
    /// The indicators.
    pub indicator: Vec<IndicatorRule>,
    /// The rectification task.
    pub rectification: Rectification,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> OversightError {
    OversightError::Invalid { field: field.into(), reason: reason.into() }
}

impl Formula {
    /// Parses and checks a formula: unique keys, known sources, finite non-negative weights and
    /// caps, a positive target where one is needed, thresholds in descending order.
    pub fn parse(text: &str) -> Result<Formula, OversightError> {
        let f: Formula = toml::from_str(text).map_err(|e| invalid("formula", e.message().to_owned()))?;
        if f.default_unit_size == 0 {
            return Err(invalid("default_unit_size", "must be at least 1"));
        }
        if f.indicator.is_empty() {
            return Err(invalid("indicator", "a formula needs at least one indicator"));
        }
        for (i, r) in f.indicator.iter().enumerate() {
            let at = |k: &str| format!("indicator[{i}].{k}");
            if r.key.trim().is_empty() || f.indicator[..i].iter().any(|o| o.key == r.key) {
                return Err(invalid(at("key"), format!("must be non-empty and unique, got {:?}", r.key)));
            }
            if r.source != "import" && !PLATFORM_SOURCES.contains(&r.source.as_str()) {
                return Err(invalid(
                    at("source"),
                    format!("must be import or one of {}, got {:?}", PLATFORM_SOURCES.join(", "), r.source),
                ));
            }
            if !(r.weight.is_finite() && r.weight >= 0.0) {
                return Err(invalid(at("weight"), format!("must be a number >= 0, got {}", r.weight)));
            }
            if !(r.cap.is_finite() && r.cap >= 0.0) {
                return Err(invalid(at("cap"), format!("must be a number >= 0, got {}", r.cap)));
            }
            if r.measure == Measure::ShortfallPct && !r.target.is_some_and(|t| t.is_finite() && t > 0.0) {
                return Err(invalid(at("target"), "shortfall_pct needs a target > 0"));
            }
        }
        let c = &f.colours;
        if !(c.green > c.blue && c.blue > c.yellow && c.yellow > c.orange && c.orange > 0.0 && c.green <= 100.0) {
            return Err(invalid(
                "colours",
                format!(
                    "must satisfy 100 >= green > blue > yellow > orange > 0, got {}/{}/{}/{}",
                    c.green, c.blue, c.yellow, c.orange
                ),
            ));
        }
        if f.rectification.handler.trim().is_empty() {
            return Err(invalid("rectification.handler", "must name the user who follows rectification up"));
        }
        if f.rectification.stage.limit_days == 0 {
            return Err(invalid("rectification.stage.limit_days", "must be at least 1"));
        }
        Ok(f)
    }

    /// The colour of a score.
    pub fn colour(&self, score: f64) -> Colour {
        let c = &self.colours;
        if score >= c.green {
            Colour::Green
        } else if score >= c.blue {
            Colour::Blue
        } else if score >= c.yellow {
            Colour::Yellow
        } else if score >= c.orange {
            Colour::Orange
        } else {
            Colour::Red
        }
    }

    /// The keys that may be imported.
    pub fn import_keys(&self) -> Vec<&str> {
        self.indicator.iter().filter(|r| r.source == "import").map(|r| r.key.as_str()).collect()
    }
}

/// A period: its label and its span in UTC+8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// `2026-Q4`, `2026-11` or `2026`.
    pub label: String,
    /// First millisecond.
    pub start: i64,
    /// First millisecond after it.
    pub end: i64,
}

impl Period {
    fn make(label: String, y: i64, m0: u32, months: u32) -> Period {
        let (ey, em) = if m0 + months > 12 { (y + 1, m0 + months - 12) } else { (y, m0 + months) };
        Period { label, start: Day::from_ymd(y, m0, 1).start_ms(), end: Day::from_ymd(ey, em, 1).start_ms() }
    }

    /// Parses `2026-Q4`, `2026-11` or `2026`.
    pub fn parse(s: &str) -> Result<Period, OversightError> {
        let bad = || invalid("period", format!("must look like 2026-Q4, 2026-11 or 2026, got {s:?}"));
        let s = s.trim();
        let (year, rest) = match s.split_once('-') {
            Some((y, r)) => (y, Some(r)),
            None => (s, None),
        };
        if year.len() != 4 {
            return Err(bad());
        }
        let y: i64 = year.parse().map_err(|_| bad())?;
        if !(2000..=2200).contains(&y) {
            return Err(bad());
        }
        match rest {
            None => Ok(Period::make(format!("{y}"), y, 1, 12)),
            Some(q) if q.starts_with(['Q', 'q']) => {
                let n: u32 = q[1..].parse().map_err(|_| bad())?;
                if !(1..=4).contains(&n) {
                    return Err(bad());
                }
                Ok(Period::make(format!("{y}-Q{n}"), y, 3 * n - 2, 3))
            }
            Some(m) => {
                let n: u32 = m.parse().map_err(|_| bad())?;
                if !(1..=12).contains(&n) || m.len() != 2 {
                    return Err(bad());
                }
                Ok(Period::make(format!("{y}-{n:02}"), y, n, 1))
            }
        }
    }

    /// The period of `kind` that contains `ms`.
    pub fn containing(kind: PeriodKind, ms: i64) -> Period {
        let (y, m, _) = Day::of_ms(ms).ymd();
        match kind {
            PeriodKind::Year => Period::make(format!("{y}"), y, 1, 12),
            PeriodKind::Quarter => {
                let q = (m - 1) / 3 + 1;
                Period::make(format!("{y}-Q{q}"), y, 3 * q - 2, 3)
            }
            PeriodKind::Month => Period::make(format!("{y}-{m:02}"), y, m, 1),
        }
    }

    /// The periods of `kind` in a year, in order.
    pub fn of_year(kind: PeriodKind, year: i64) -> Vec<Period> {
        match kind {
            PeriodKind::Year => vec![Period::make(format!("{year}"), year, 1, 12)],
            PeriodKind::Quarter => (1..=4).map(|q| Period::make(format!("{year}-Q{q}"), year, 3 * q - 2, 3)).collect(),
            PeriodKind::Month => (1..=12).map(|m| Period::make(format!("{year}-{m:02}"), year, m, 1)).collect(),
        }
    }
}

/// Everything known about one unit for one period, before the formula is applied.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UnitInputs {
    /// Department code.
    pub unit: String,
    /// Name.
    pub name: String,
    /// Active registry people (0 = none found).
    pub people: i64,
    /// Raw values per source (platform) or key (import).
    pub raw: BTreeMap<String, f64>,
    /// The record ids behind each platform source.
    pub records: BTreeMap<String, Vec<String>>,
}

/// One indicator's contribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Term {
    /// Indicator key.
    pub key: String,
    /// The raw input.
    pub raw: f64,
    /// The measured value (rounded to 0.01).
    pub value: f64,
    /// Points deducted (rounded to 0.01).
    pub points: f64,
    /// The phrase used in the explanation.
    pub phrase: String,
    /// The input had no data (an imported indicator never imported for this unit and period):
    /// it deducts nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_data: bool,
}

/// A unit's computed index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Size used.
    pub size: i64,
    /// `registry` or `default`.
    pub size_source: &'static str,
    /// Score, 0..=100, rounded to 0.01.
    pub score: f64,
    /// Colour.
    pub colour: Colour,
    /// Terms in formula order.
    pub terms: Vec<Term>,
    /// Why the colour.
    pub explanation: String,
}

/// Rounds to 0.01 (so stored scores compare exactly on every database).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `7`, `6.67`, `0.5`: a number without trailing zeros.
pub fn num(x: f64) -> String {
    let s = format!("{:.2}", round2(x));
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Applies the formula to one unit's inputs.
pub fn score(f: &Formula, u: &UnitInputs) -> Scored {
    let (size, size_source) =
        if u.people > 0 { (u.people, "registry") } else { (f.default_unit_size as i64, "default") };
    let mut terms = Vec::with_capacity(f.indicator.len());
    for r in &f.indicator {
        let source = if r.source == "import" { &r.key } else { &r.source };
        let given = u.raw.get(source).copied();
        if given.is_none() && r.source == "import" && f.missing_import == MissingData::NoData {
            let phrase = format!("{}: no data", r.name);
            terms.push(Term { key: r.key.clone(), raw: 0.0, value: 0.0, points: 0.0, phrase, no_data: true });
            continue;
        }
        let raw = given.unwrap_or(0.0);
        let (value, phrase) = match r.measure {
            Measure::Count => (raw, format!("{} {}", num(raw), r.name)),
            Measure::Per100 => {
                let v = raw * 100.0 / size as f64;
                (v, format!("{} {}", num(v), r.name))
            }
            Measure::ShortfallPct => {
                let t = r.target.unwrap_or(1.0);
                let v = ((t - raw) / t * 100.0).max(0.0);
                (v, format!("{} {} % below target ({} of {})", r.name, num(v), num(raw), num(t)))
            }
        };
        let points = round2((r.weight * value).min(r.cap));
        terms.push(Term { key: r.key.clone(), raw, value: round2(value), points, phrase, no_data: false });
    }
    let deducted: f64 = terms.iter().map(|t| t.points).sum();
    let score = round2((100.0 - deducted).clamp(0.0, 100.0));
    let colour = f.colour(score);
    let mut drivers: Vec<&Term> = terms.iter().filter(|t| t.points > 0.0).collect();
    drivers.sort_by(|a, b| b.points.total_cmp(&a.points));
    let mut explanation = if drivers.is_empty() {
        format!("{colour} ({}): nothing deducted", num(score))
    } else {
        let parts: Vec<String> = drivers.iter().map(|t| format!("{} (-{})", t.phrase, num(t.points))).collect();
        format!("{colour} ({}) because: {}", num(score), parts.join(", "))
    };
    let missing: Vec<&str> =
        f.indicator.iter().zip(&terms).filter(|(_, t)| t.no_data).map(|(r, _)| r.name.as_str()).collect();
    if !missing.is_empty() {
        explanation.push_str(&format!("; no data (nothing deducted) for: {}", missing.join(", ")));
    }
    if size_source == "default" {
        explanation.push_str(&format!(
            "; size {size} is the configured default: no registry people are recorded for this unit"
        ));
    }
    Scored { size, size_source, score, colour, terms, explanation }
}

/// The stored `inputs` of a row: people, raw inputs, terms and record ids.
pub fn inputs_json(u: &UnitInputs, s: &Scored) -> Value {
    json!({"people": u.people, "size": s.size, "size_source": s.size_source, "raw": u.raw, "terms": s.terms,
           "records": u.records})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(people: i64, raw: &[(&str, f64)]) -> UnitInputs {
        UnitInputs {
            unit: "D001".into(),
            name: "县财政局".into(),
            people,
            raw: raw.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            records: BTreeMap::new(),
        }
    }

    fn full() -> Vec<(&'static str, f64)> {
        vec![("education_sessions", 3.0), ("education_attendance", 95.0), ("org_building", 100.0)]
    }

    #[test]
    fn the_default_formula_scores_fixed_inputs_exactly() {
        let f = Formula::parse(DEFAULT_FORMULA).unwrap();
        assert_eq!(f.period, PeriodKind::Quarter);
        // Nothing against the unit and every target met: 100, green.
        let s = score(&f, &unit(200, &full()));
        assert_eq!((s.score, s.colour), (100.0, Colour::Green));
        assert_eq!(s.explanation, "green (100): nothing deducted");

        // 14 reports for 200 people = 7 per 100 (-14), 2 disciplined (-10), education sessions
        // 40 % below target: (3 - 1.8) / 3 (-8); 100 - 32 = 68: orange.
        let mut raw = full();
        raw.extend([("reports", 14.0), ("disciplined", 2.0)]);
        raw[0].1 = 1.8;
        let s = score(&f, &unit(200, &raw));
        assert_eq!((s.score, s.colour), (68.0, Colour::Orange));
        assert_eq!(
            s.explanation,
            "orange (68) because: 7 reports and tips per 100 staff (-14), 2 disciplined members (-10), \
             integrity education sessions 40 % below target (1.8 of 3) (-8)"
        );

        // A unit with no registry people counts as 100: 3 reports = 3 per 100 (-6); nothing
        // imported: education sessions, attendance and organisation checks have no data and
        // deduct nothing (they are not read as 0, the worst value), and the explanation says so.
        let s = score(&f, &unit(0, &[("reports", 3.0)]));
        assert_eq!((s.size, s.size_source, s.score, s.colour), (100, "default", 94.0, Colour::Green));
        assert_eq!(
            s.explanation,
            "green (94) because: 3 reports and tips per 100 staff (-6); no data (nothing deducted) for: integrity \
             education sessions, education attendance, organisation-building check score; size 100 is the \
             configured default: no registry people are recorded for this unit"
        );
        let no_data: Vec<&str> = s.terms.iter().filter(|t| t.no_data).map(|t| t.key.as_str()).collect();
        assert_eq!(no_data, ["education_sessions", "education_attendance", "org_building"]);
        assert!(s.terms.iter().filter(|t| t.no_data).all(|t| t.points == 0.0));
        // One imported value of three: only the other two have no data.
        let s = score(&f, &unit(100, &[("org_building", 90.0)]));
        assert_eq!((s.score, s.colour), (98.0, Colour::Green));
        assert!(
            s.explanation.ends_with("for: integrity education sessions, education attendance"),
            "{}",
            s.explanation
        );
        // A value of 0 that was imported is data, not "no data": it deducts the whole cap.
        let s =
            score(&f, &unit(100, &[("education_sessions", 0.0), ("education_attendance", 0.0), ("org_building", 0.0)]));
        assert_eq!((s.score, s.colour), (60.0, Colour::Orange));
        assert!(!s.explanation.contains("no data"), "{}", s.explanation);

        // Caps hold: 50 disciplined members deduct at most 30.
        let mut raw = full();
        raw.push(("disciplined", 50.0));
        let s = score(&f, &unit(10, &raw));
        assert_eq!((s.score, s.colour), (70.0, Colour::Yellow));
    }

    #[test]
    fn a_formula_without_missing_import_keeps_reading_missing_as_worst() {
        // Versions stored before `missing_import` existed compute what they computed.
        let old = DEFAULT_FORMULA.replacen("\nmissing_import = \"no_data\"", "\n", 1);
        let f = Formula::parse(&old).unwrap();
        assert_eq!(f.missing_import, MissingData::Worst);
        let s = score(&f, &unit(0, &[("reports", 3.0)]));
        assert_eq!((s.score, s.colour), (54.0, Colour::Red));
        assert!(s.terms.iter().all(|t| !t.no_data));
        assert!(!s.explanation.contains("no data"), "{}", s.explanation);
        // The shipped default before the key existed is superseded (the oversight role stores the
        // current one as a new version instead of computing with it).
        let f = Formula::parse(DEFAULT_FORMULA).unwrap();
        assert_eq!(f.missing_import, MissingData::NoData);
        assert!(!is_superseded_default(DEFAULT_FORMULA));
        let bad = DEFAULT_FORMULA.replacen("\nmissing_import = \"no_data\"", "\nmissing_import = \"zero\"", 1);
        let e = Formula::parse(&bad).unwrap_err();
        assert!(matches!(e, OversightError::Invalid { ref field, .. } if field == "formula"), "{e}");
    }

    #[test]
    fn periods_follow_the_calendar_in_utc8() {
        let q = Period::parse("2026-q4").unwrap();
        assert_eq!(q.label, "2026-Q4");
        assert_eq!(q.start, Day::from_ymd(2026, 10, 1).start_ms());
        assert_eq!(q.end, Day::from_ymd(2027, 1, 1).start_ms());
        assert_eq!(Period::parse("2026-02").unwrap().end, Day::from_ymd(2026, 3, 1).start_ms());
        assert_eq!(Period::parse("2026").unwrap().end, Day::from_ymd(2027, 1, 1).start_ms());
        assert_eq!(Period::containing(PeriodKind::Quarter, q.start).label, "2026-Q4");
        assert_eq!(Period::containing(PeriodKind::Quarter, q.start - 1).label, "2026-Q3");
        assert_eq!(Period::of_year(PeriodKind::Quarter, 2026).len(), 4);
        for bad in ["2026-Q5", "26-Q1", "2026-13", "2026-1", "x"] {
            let e = Period::parse(bad).unwrap_err();
            assert!(matches!(e, OversightError::Invalid { ref field, .. } if field == "period"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_bad_formula_names_the_field() {
        let bad = DEFAULT_FORMULA.replacen("weight = 2.0", "weight = -1.0", 1);
        let e = Formula::parse(&bad).unwrap_err();
        assert!(matches!(e, OversightError::Invalid { ref field, .. } if field == "indicator[0].weight"), "{e}");
        let bad = DEFAULT_FORMULA.replacen("yellow = 70.0", "yellow = 85.0", 1);
        let e = Formula::parse(&bad).unwrap_err();
        assert!(matches!(e, OversightError::Invalid { ref field, .. } if field == "colours"), "{e}");
        let bad = DEFAULT_FORMULA.replacen("source = \"reports\"", "source = \"rumours\"", 1);
        let e = Formula::parse(&bad).unwrap_err();
        assert!(matches!(e, OversightError::Invalid { ref field, .. } if field == "indicator[0].source"), "{e}");
    }
}
