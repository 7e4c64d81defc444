//! `jiandu calendar …` and `jiandu case …`: the operator's side of the case workflow (issue 10).
//!
//! The working-day calendar is data: `calendar load FILE` checks a year's file (holidays and
//! worked weekend days from the State Council notice) and stores it in the database, where every
//! role reads it; `calendar show` prints the years in force. `case list` prints cases as JSON
//! lines for scripts.

use std::path::Path;

use anyhow::{Context, Result};
use jiandu_oversight::cases::{self, WorkCalendar};
use jiandu_store::Store;

use crate::config::Config;

async fn open(config: &Config) -> Result<Store> {
    crate::accounts::open_store(config).await
}

/// `jiandu calendar load FILE`: checks the file and makes it the calendar in force for its year.
pub async fn calendar_load(config: &Config, file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let store = open(config).await?;
    let loaded = cases::load_calendar(&store, &text, "operator").await;
    store.close().await;
    let year = loaded.with_context(|| format!("{}", file.display()))?;
    println!(
        "{}",
        serde_json::json!({
            "year": year.year, "provisional": year.provisional, "holidays": year.holidays.len(),
            "workdays": year.workdays.len(), "source": year.source,
        })
    );
    Ok(())
}

/// `jiandu calendar show`: the years in force (embedded, overridden by loaded ones).
pub async fn calendar_show(config: &Config) -> Result<()> {
    let store = open(config).await?;
    let wf = cases::Workflow::load(&store).await;
    store.close().await;
    let calendar: WorkCalendar = wf?.calendar;
    for y in calendar.years() {
        let days = |set: &std::collections::BTreeSet<cases::Day>| set.iter().map(|d| d.to_string()).collect::<Vec<_>>();
        println!(
            "{}",
            serde_json::json!({
                "year": y.year, "provisional": y.provisional, "source": y.source,
                "holidays": days(&y.holidays), "workdays": days(&y.workdays),
            })
        );
    }
    Ok(())
}

/// `jiandu case list`: cases as JSON lines, newest first.
pub async fn case_list(config: &Config, unit: Option<&str>, overdue: bool, limit: i64) -> Result<()> {
    let store = open(config).await?;
    let rows = store.cases(unit, overdue, limit, None).await;
    store.close().await;
    for c in rows? {
        println!(
            "{}",
            serde_json::json!({
                "id": c.id, "title": c.title, "unit": c.unit, "handler": c.handler, "stage": c.stage,
                "status": c.status, "deadline_at": c.deadline_at, "overdue_at": c.overdue_at,
            })
        );
    }
    Ok(())
}
