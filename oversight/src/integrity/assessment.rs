//! The yearly assessment: every unit with its colour and score in each period of the year (the
//! latest computation of each period), the year's average and worst colour, and the warnings,
//! alarms and rectification cases it had. Rendered as CSV for the assessment spreadsheet and as
//! a self-contained printable HTML page (print to PDF from the browser).

use std::collections::BTreeMap;

use jiandu_store::{IndexRow, Store};
use serde::Serialize;

use jiandu_store::Colour;

use super::formula::{Period, num};
use super::formula_in_force;
use crate::OversightError;

/// One period's result of a unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// Score.
    pub score: f64,
    /// Colour.
    pub colour: Colour,
    /// Formula version it was computed with.
    pub formula_version: i64,
}

/// One unit's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssessedUnit {
    /// Department code.
    pub unit: String,
    /// Name.
    pub name: String,
    /// One cell per period of the year (`None`: not computed).
    pub cells: Vec<Option<Cell>>,
    /// Average score over the computed periods.
    pub average: Option<f64>,
    /// Worst colour of the year.
    pub worst: Option<Colour>,
    /// Warnings raised in the year.
    pub warnings: i64,
    /// Alarms raised in the year.
    pub alarms: i64,
    /// Rectification cases opened.
    pub rectification_cases: Vec<String>,
}

/// The whole year.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    /// Year.
    pub year: i64,
    /// Period labels, in order.
    pub periods: Vec<String>,
    /// Every unit, by code.
    pub units: Vec<AssessedUnit>,
}

/// Builds the assessment of `year` from the stored index (periods of the formula in force).
pub async fn assessment(store: &Store, year: i64) -> Result<Assessment, OversightError> {
    if !(2000..=2200).contains(&year) {
        return Err(OversightError::Invalid {
            field: "year".into(),
            reason: format!("must be 2000..=2200, got {year}"),
        });
    }
    let (_, formula) = formula_in_force(store).await?;
    let periods = Period::of_year(formula.period, year);
    let mut units: BTreeMap<String, AssessedUnit> = BTreeMap::new();
    let blank = |code: &str, name: &str| AssessedUnit {
        unit: code.to_owned(),
        name: name.to_owned(),
        cells: vec![None; periods.len()],
        average: None,
        worst: None,
        warnings: 0,
        alarms: 0,
        rectification_cases: vec![],
    };
    let year_end = periods.last().map(|p| p.end - 1).unwrap_or(0).min(jiandu_store::now_ms());
    for d in store.integrity_units(year_end).await? {
        units.insert(d.code.clone(), blank(&d.code, &d.name));
    }
    for (i, p) in periods.iter().enumerate() {
        let rows: Vec<IndexRow> = store.integrity_period(&p.label).await?;
        for r in rows {
            let u = units.entry(r.unit.clone()).or_insert_with(|| blank(&r.unit, &r.unit_name));
            u.cells[i] = Some(Cell { score: r.score, colour: r.colour, formula_version: r.formula_version });
        }
    }
    let labels: Vec<String> = periods.iter().map(|p| p.label.clone()).collect();
    for a in store.integrity_alerts(None, None).await? {
        if !labels.contains(&a.period) {
            continue;
        }
        let Some(u) = units.get_mut(&a.unit) else { continue };
        if a.level == jiandu_store::AlertLevel::Alarm {
            u.alarms += 1;
            u.rectification_cases.extend(a.case_id);
        } else {
            u.warnings += 1;
        }
    }
    for u in units.values_mut() {
        let done: Vec<&Cell> = u.cells.iter().flatten().collect();
        if !done.is_empty() {
            u.average = Some(super::formula::round2(done.iter().map(|c| c.score).sum::<f64>() / done.len() as f64));
            u.worst =
                done.iter().map(|c| c.colour).max_by_key(|c| Colour::ALL.iter().position(|k| k == c).unwrap_or(0));
        }
    }
    Ok(Assessment { year, periods: labels, units: units.into_values().collect() })
}

/// The assessment as CSV: one row per unit.
pub fn to_csv(a: &Assessment) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["unit".to_owned(), "unit_name".to_owned()];
    for p in &a.periods {
        header.push(format!("{p} colour"));
        header.push(format!("{p} score"));
    }
    header.extend(["average_score", "worst_colour", "warnings", "alarms", "rectification_cases"].map(String::from));
    // Writing to a Vec cannot fail; a failure would only drop the line.
    w.write_record(&header).ok();
    for u in &a.units {
        let mut rec = vec![u.unit.clone(), u.name.clone()];
        for c in &u.cells {
            match c {
                Some(c) => rec.extend([c.colour.to_string(), num(c.score)]),
                None => rec.extend([String::new(), String::new()]),
            }
        }
        rec.push(u.average.map(num).unwrap_or_default());
        rec.push(u.worst.map(|c| c.to_string()).unwrap_or_default());
        rec.push(u.warnings.to_string());
        rec.push(u.alarms.to_string());
        rec.push(u.rectification_cases.join(" "));
        w.write_record(&rec).ok();
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The assessment as a printable HTML page (no scripts, no external resources).
pub fn to_html(a: &Assessment) -> String {
    let mut h = String::new();
    h.push_str(&format!(
        "<!doctype html><html lang=\"zh\"><head><meta charset=\"utf-8\"><title>{y} 廉洁指数年度考核 integrity \
         assessment</title><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #999;padding:4px 8px;text-align:center}}.green{{background:#8fd18f}}\
         .blue{{background:#8fb8e8}}.yellow{{background:#f3e37c}}.orange{{background:#f3b46b}}\
         .red{{background:#e87c7c}}@media print{{body{{margin:0}}}}</style></head><body>\
         <h1>{y} 年度廉洁指数考核 Integrity index assessment {y}</h1><table><thead><tr><th>单位 unit</th>\
         <th>名称 name</th>",
        y = a.year
    ));
    for p in &a.periods {
        h.push_str(&format!("<th>{}</th>", esc(p)));
    }
    h.push_str(
        "<th>平均 average</th><th>最差 worst</th><th>预警 warnings</th><th>告警 alarms</th></tr></thead><tbody>",
    );
    for u in &a.units {
        h.push_str(&format!("<tr><td>{}</td><td>{}</td>", esc(&u.unit), esc(&u.name)));
        for c in &u.cells {
            match c {
                Some(c) => h.push_str(&format!("<td class=\"{}\">{} {}</td>", c.colour, c.colour, num(c.score))),
                None => h.push_str("<td>—</td>"),
            }
        }
        let worst = u.worst.map(|c| c.as_str()).unwrap_or_default();
        h.push_str(&format!(
            "<td>{}</td><td class=\"{w}\">{w}</td><td>{}</td><td>{}</td></tr>",
            u.average.map(num).unwrap_or_else(|| "—".into()),
            u.warnings,
            u.alarms,
            w = worst
        ));
    }
    h.push_str("</tbody></table></body></html>\n");
    h
}
