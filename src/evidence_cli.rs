//! `jiandu receipt verify`, `jiandu ledger checkpoint` and `jiandu verify`: proving, offline and
//! after the fact, that evidence and the ledger are what the platform recorded. A receipt is
//! checked against the platform's public key alone; `verify` re-walks the ledger's hash chain,
//! checks every evidence record against its ledger entry and receipt signature and every
//! `evidence.stored` entry against its record, re-hashes the look-up audit batches, checks that
//! the ledger still extends any signed checkpoints given (`--checkpoint`), and with `--deep`
//! re-hashes every blob. Signatures are checked against keys given with `--public-key` (kept
//! outside the database), or, with a warning, against the keys the database itself holds.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use jiandu_store::{Blobs, Checkpoint, PlatformKey, ReceiptFields, Store, blob_key, public_key_id, verify_receipt};
use serde_json::{Value, json};

use crate::accounts::open_store;
use crate::config::Config;

/// Creates the platform signing key in the data dir (mode 0600) unless it exists, and registers
/// its public half in the database; called by `jiandu init`.
pub async fn init_platform_key(config: &Config, store: &Store) -> Result<()> {
    let path = config.platform_key_path();
    let (key, created) = PlatformKey::load_or_create(&path)
        .with_context(|| format!("creating the platform signing key {}", path.display()))?;
    store.platform_key_register(&key).await?;
    if created {
        eprintln!("created the platform signing key {} (key id {}); back it up", path.display(), key.key_id());
    }
    if config.object_store.starts_with("s3://") {
        eprintln!(
            "note: evidence goes to {}; give the bucket S3 Object Lock with a default COMPLIANCE retention, \
             so not even its administrator can delete evidence (jiandu cannot set it per object)",
            config.object_store
        );
    }
    Ok(())
}

/// The public key to check receipts against: `--public-key` as hex, a file holding the hex or
/// the JSON of `GET /api/v1/ledger/key`, or else the newest key in the configured database.
async fn public_key(config: &Config, given: Option<&str>, key_id: Option<&str>) -> Result<String> {
    if let Some(given) = given {
        let text = if Path::new(given).is_file() {
            std::fs::read_to_string(given).with_context(|| format!("reading {given}"))?
        } else {
            given.to_owned()
        };
        let text = text.trim();
        if let Ok(v) = serde_json::from_str::<Value>(text)
            && let Some(k) = v["public_key"].as_str()
        {
            return Ok(k.to_owned());
        }
        return Ok(text.to_owned());
    }
    let store = open_store(config).await?;
    let found = store.platform_key(key_id).await?;
    store.close().await;
    match found {
        Some(k) => Ok(k.public_key),
        None => {
            bail!("no platform key in the database; pass --public-key (hex, or the JSON of GET /api/v1/ledger/key)")
        }
    }
}

/// `jiandu receipt verify FILE`: checks a `stored` receipt's signature; prints one JSON line.
pub async fn receipt_verify(config: &Config, file: &Path, key: Option<&str>) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    if v["status"] != "stored" {
        bail!("{}: not a stored receipt (status {})", file.display(), v["status"]);
    }
    let text_field = |name: &str| -> Result<String> {
        v[name].as_str().map(str::to_owned).with_context(|| format!("receipt.{name}: missing or not a string"))
    };
    let int_field = |name: &str| -> Result<i64> {
        v[name].as_i64().with_context(|| format!("receipt.{name}: missing or not an integer"))
    };
    let fields = ReceiptFields {
        evid: text_field("evid")?,
        sha256: text_field("sha256")?,
        size: int_field("size")?,
        ledger_seq: int_field("ledger_seq")?,
        ledger_hash: text_field("ledger_hash")?,
        received_at: int_field("received_at")?,
    };
    let public = public_key(config, key, None).await?;
    if let Err(why) = verify_receipt(&public, &fields, &text_field("sig")?) {
        bail!("receipt {} for evidence {} is NOT valid: {why}", file.display(), fields.evid);
    }
    println!(
        "{}",
        json!({"valid": true, "evid": fields.evid, "sha256": fields.sha256, "ledger_seq": fields.ledger_seq})
    );
    eprintln!("receipt for evidence {} is valid: signed by the platform key", fields.evid);
    Ok(())
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// `jiandu ledger checkpoint [--out FILE]`: signs the ledger head with the platform key (from
/// the data dir) and prints it (or writes it to FILE) for keeping outside the platform.
pub async fn ledger_checkpoint(config: &Config, out: Option<&Path>) -> Result<()> {
    let path = config.platform_key_path();
    let key = PlatformKey::load(&path).with_context(|| format!("reading the platform key {}", path.display()))?;
    let store = open_store(config).await?;
    let cp = store.ledger_checkpoint(&key).await?;
    store.close().await;
    let text = serde_json::to_string(&cp)?;
    if let Some(out) = out {
        std::fs::write(out, format!("{text}\n")).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("checkpoint of ledger entry {} written to {}; keep it away from the server", cp.seq, out.display());
    }
    println!("{text}");
    Ok(())
}

/// The keys signatures are checked against, by key id: the `--public-key` values, or (with a
/// warning: whoever can alter the database can replace them) every key the database holds.
async fn trusted_keys(config: &Config, store: &Store, given: &[String]) -> Result<BTreeMap<String, String>> {
    let mut keys = BTreeMap::new();
    if given.is_empty() {
        eprintln!(
            "warning: trusting the platform key(s) stored in the database, which whoever can alter the database \
             can replace; pass --public-key FILE with the key kept elsewhere (GET /api/v1/ledger/key)"
        );
        for k in store.platform_keys().await? {
            keys.insert(k.key_id, k.public_key);
        }
        return Ok(keys);
    }
    for g in given {
        let hex = public_key(config, Some(g), None).await?;
        let id = public_key_id(&hex).map_err(|why| anyhow::anyhow!("--public-key {g}: {why}"))?;
        keys.insert(id, hex);
    }
    Ok(keys)
}

/// `jiandu verify [--deep] [--checkpoint FILE…] [--public-key FILE…]`: prints each problem on
/// stderr, a JSON summary on stdout, and fails when anything is broken.
pub async fn verify(
    config: &Config,
    deep: bool,
    checkpoints: &[std::path::PathBuf],
    given_keys: &[String],
) -> Result<()> {
    let store = open_store(config).await?;
    let blobs = Blobs::open(&config.object_store, &config.s3_settings())
        .with_context(|| format!("opening the evidence store {}", config.object_store))?;
    let mut problems: Vec<String> = Vec::new();
    let trusted = trusted_keys(config, &store, given_keys).await?;

    let (head, _) = store.ledger_head().await?;
    let pb = bar(head.max(0) as u64, "ledger   {bar:40} {pos}/{len} entries");
    let breaks = store.ledger_verify(|done, _| pb.set_position(done.max(0) as u64)).await?;
    pb.finish();
    for b in &breaks {
        problems.push(format!("ledger entry {}: {}", b.seq, b.reason));
    }

    // Checkpoints kept outside the database pin the chain against truncation and rewrites.
    for file in checkpoints {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let cp = Checkpoint::from_json(text.trim()).with_context(|| format!("{}", file.display()))?;
        let who = format!("checkpoint {} (entry {})", file.display(), cp.seq);
        match trusted.get(&cp.key_id) {
            None => problems.push(format!("{who}: signed by key {}, which is not trusted", cp.key_id)),
            Some(public) => match cp.verify(public) {
                Err(why) => problems.push(format!("{who}: {why}")),
                Ok(()) => {
                    for fault in store.checkpoint_check(&cp).await? {
                        problems.push(format!("{who}: {fault}"));
                    }
                }
            },
        }
    }

    // Every evidence.stored entry has its record; every look-up batch still hashes the same.
    for fault in store.evidence_entries_check().await? {
        problems.push(fault);
    }
    let audits = store.lookup_audit_count().await?;
    for fault in store.lookup_batches_check().await? {
        problems.push(fault);
    }

    // Every record against its ledger entry and signature; blobs grouped by content.
    let total = store.evidence_count().await?;
    let pb = bar(total.max(0) as u64, "evidence {bar:40} {pos}/{len} records");
    let mut blobs_to_hash: BTreeMap<String, (i64, Vec<String>)> = BTreeMap::new();
    let mut after = String::new();
    loop {
        let page = store.evidence_page(&after, 500).await?;
        let Some(last) = page.last() else { break };
        after = last.evid.clone();
        for e in &page {
            for fault in store.evidence_check(e).await? {
                problems.push(format!("evidence {}: {fault}", e.evid));
            }
            match trusted.get(&e.key_id) {
                Some(public) => {
                    if let Err(why) = verify_receipt(public, &e.receipt_fields(), &e.sig) {
                        problems.push(format!("evidence {}: receipt {why}", e.evid));
                    }
                }
                None => problems.push(format!("evidence {}: signed by key {}, which is not trusted", e.evid, e.key_id)),
            }
            blobs_to_hash.entry(e.sha256.clone()).or_insert((e.size, Vec::new())).1.push(e.evid.clone());
        }
        pb.inc(page.len() as u64);
    }
    pb.finish();

    let mut bytes_checked = 0u64;
    for (sha, (size, evids)) in &blobs_to_hash {
        let who = format!("blob {} (evidence {})", blob_key(sha), evids.join(", "));
        if !deep {
            match blobs.size(sha).await {
                Ok(n) if n as i64 == *size => {}
                Ok(n) => problems.push(format!("{who}: is {n} bytes, recorded {size}")),
                Err(e) => problems.push(format!("{who}: {e}")),
            }
        }
    }
    if deep {
        let all: u64 = blobs_to_hash.values().map(|(s, _)| s.max(&0).unsigned_abs()).sum();
        let pb = bar(all, "blobs    {bar:40} {bytes}/{total_bytes} {bytes_per_sec}");
        for (sha, (size, evids)) in &blobs_to_hash {
            let who = format!("blob {} (evidence {})", blob_key(sha), evids.join(", "));
            let seen = Arc::new(AtomicU64::new(0));
            let (counter, pb2) = (seen.clone(), pb.clone());
            let progress = move |n: u64| {
                counter.fetch_add(n, Ordering::Relaxed);
                pb2.inc(n);
            };
            match blobs.rehash(sha, progress).await {
                Ok((actual, n)) if actual == *sha && n as i64 == *size => {}
                Ok((actual, n)) => problems
                    .push(format!("{who}: content hashes to {actual} ({n} bytes); recorded {sha} ({size} bytes)")),
                Err(e) => problems.push(format!("{who}: {e}")),
            }
            bytes_checked += seen.load(Ordering::Relaxed);
        }
        pb.finish();
    }
    store.close().await;

    for p in &problems {
        eprintln!("BROKEN {p}");
    }
    println!(
        "{}",
        json!({
            "ok": problems.is_empty(), "ledger_entries": head, "evidence": total, "lookup_audits": audits,
            "checkpoints": checkpoints.len(), "keys_from_database": given_keys.is_empty(),
            "blobs": blobs_to_hash.len(), "deep": deep, "bytes_hashed": bytes_checked, "problems": problems,
        })
    );
    if !problems.is_empty() {
        bail!("verification failed: {} problem(s), listed above", problems.len());
    }
    eprintln!(
        "verified: {head} ledger entries, {total} evidence records, {audits} look-up audits, {} checkpoints, {} blobs{}",
        checkpoints.len(),
        blobs_to_hash.len(),
        if deep { " re-hashed" } else { " present" }
    );
    Ok(())
}
