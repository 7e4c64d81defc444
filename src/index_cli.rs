//! `jiandu index …`: the operator's side of the integrity index (issue 11).
//!
//! `index compute [--period 2026-Q4]` recomputes a period now (the oversight role also does it on
//! a schedule) and prints one JSON line per unit; `index import-indicators FILE.csv` stores the
//! indicators the platform cannot see (education sessions and attendance, organisation checks);
//! `index formula load FILE` stores a new formula version; `index assessment --year Y` prints the
//! yearly assessment CSV.

use std::path::Path;

use anyhow::{Context, Result};
use jiandu_oversight::integrity::{self, assessment};
use jiandu_store::{Store, now_ms};

use crate::config::Config;

async fn open(config: &Config) -> Result<Store> {
    crate::accounts::open_store(config).await
}

/// `jiandu index compute [--period P]`: one JSON line per unit, then the run's summary.
pub async fn compute(config: &Config, period: Option<&str>) -> Result<()> {
    let store = open(config).await?;
    let run = integrity::compute(&store, period, "operator", now_ms(), false).await;
    store.close().await;
    let run = run.context("computing the integrity index")?.context("the computation stored nothing")?;
    for r in &run.rows {
        println!(
            "{}",
            serde_json::json!({
                "unit": r.unit, "unit_name": r.unit_name, "period": r.period, "score": r.score, "colour": r.colour,
                "formula_version": r.formula_version, "explanation": r.explanation,
            })
        );
    }
    println!(
        "{}",
        serde_json::json!({"run_id": run.run_id, "units": run.rows.len(), "alerts": run.alerts.len(),
                           "ledger_seq": run.ledger_seq})
    );
    Ok(())
}

/// `jiandu index import-indicators FILE.csv`: checks every row, then stores them all or none.
pub async fn import_indicators(config: &Config, file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let rows = integrity::parse_indicators_csv(&text).with_context(|| format!("{}", file.display()))?;
    let store = open(config).await?;
    let source = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "csv".into());
    let stored = integrity::import_indicators(&store, rows, &source, "operator").await;
    store.close().await;
    let n = stored.with_context(|| format!("{}", file.display()))?;
    println!("{}", serde_json::json!({"stored": n, "source": source}));
    Ok(())
}

/// `jiandu index formula load FILE`: stores the file as the formula in force (a new version
/// unless it is the version in force already).
pub async fn formula_load(config: &Config, file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let store = open(config).await?;
    let loaded = integrity::load_formula(&store, &text, "operator").await;
    store.close().await;
    let (v, new) = loaded.with_context(|| format!("{}", file.display()))?;
    println!("{}", serde_json::json!({"version": v.version, "new": new, "sha256": v.sha256}));
    Ok(())
}

/// `jiandu index assessment [--year Y]`: the yearly assessment as CSV on stdout.
pub async fn assessment(config: &Config, year: Option<i64>) -> Result<()> {
    let store = open(config).await?;
    let year = year.unwrap_or_else(|| jiandu_oversight::cases::Day::of_ms(now_ms()).ymd().0);
    let a = assessment::assessment(&store, year).await;
    store.close().await;
    print!("{}", assessment::to_csv(&a.context("building the assessment")?));
    Ok(())
}
