//! `jiandu import`, `jiandu registry` and `jiandu lookup`: the operator's side of the
//! registries. Imports go through `oversight::import_csv` (checked, diffed, versioned, on the
//! ledger); this file only reads files, draws the progress bar and prints results.

use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use jiandu_oversight::generate::{Scale, generate};
use jiandu_oversight::{Encoding, ImportOptions, import_csv};
use jiandu_store::RegistryName;
use serde_json::json;

use crate::accounts::open_store;
use crate::config::Config;

/// Keys listed per category in a dry run's diff (the counts are always complete).
const DIFF_SHOWN: usize = 20;

/// Imports one registry file; prints the diff (dry run) or the new version as one JSON line.
pub async fn import(
    config: &Config,
    registry: RegistryName,
    file: &Path,
    dry_run: bool,
    encoding: Encoding,
) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let store = open_store(config).await?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} rows ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("checking {registry}"));
    let options = ImportOptions {
        encoding,
        dry_run,
        actor: format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "operator".into())),
        source: file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    let progress_bar = bar.clone();
    let mut progress = move |done: u64, total: u64| {
        progress_bar.set_length(total);
        progress_bar.set_position(done);
        if done == total {
            progress_bar.set_message(if dry_run { "diffing".to_owned() } else { "writing".to_owned() });
        }
    };
    let outcome = import_csv(&store, registry, &bytes, &options, &mut progress).await;
    bar.finish_and_clear();
    store.close().await;
    let outcome = outcome?;
    let d = &outcome.diff;
    if dry_run {
        for (what, keys) in [("added", &d.added), ("changed", &d.changed), ("retired", &d.retired)] {
            for k in keys.iter().take(DIFF_SHOWN) {
                eprintln!("{what:>8}  {k}");
            }
            if keys.len() > DIFF_SHOWN {
                eprintln!("{what:>8}  … {} more", keys.len() - DIFF_SHOWN);
            }
        }
    }
    eprintln!(
        "{registry}: {} records ({}), {} added, {} changed, {} retired, {} unchanged{}",
        outcome.records,
        outcome.encoding,
        d.added.len(),
        d.changed.len(),
        d.retired.len(),
        d.unchanged,
        match (&outcome.version, dry_run) {
            (_, true) => " (dry run: nothing written)".to_owned(),
            (Some(v), false) => format!("; version {} on ledger entry {}", v.version, v.ledger_seq),
            (None, false) => " (identical to the current version: nothing written)".to_owned(),
        }
    );
    let mut out = json!({
        "registry": registry, "records": outcome.records, "encoding": outcome.encoding, "dry_run": dry_run,
        "added": d.added.len(), "changed": d.changed.len(), "retired": d.retired.len(), "unchanged": d.unchanged,
        "version": outcome.version.as_ref().map(|v| v.version),
        "ledger_seq": outcome.version.as_ref().map(|v| v.ledger_seq),
    });
    if dry_run {
        out["diff"] = json!({"added": d.added, "changed": d.changed, "retired": d.retired});
    }
    println!("{out}");
    Ok(())
}

/// Writes the four synthetic registry files (seed-county scale) into `dir`.
pub fn generate_files(dir: &Path, seed: u64) -> Result<()> {
    let files =
        generate(dir, seed, Scale::COUNTY).with_context(|| format!("generating registries in {}", dir.display()))?;
    eprintln!(
        "wrote {} members, {} staff, {} vehicles, {} departments to {}",
        Scale::COUNTY.members,
        Scale::COUNTY.staff,
        Scale::COUNTY.vehicles,
        Scale::COUNTY.departments,
        dir.display()
    );
    println!("{}", serde_json::to_string(&files)?);
    Ok(())
}

/// Prints audited look-ups as JSON lines, newest first (for auditors).
pub async fn audit(config: &Config, limit: i64, before: Option<i64>, device: Option<&str>) -> Result<()> {
    let store = open_store(config).await?;
    let rows = store.lookup_audits(limit, before, device).await;
    store.close().await;
    for row in rows? {
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}
