//! The evidence ledger: an append-only hash chain of everything that must stay provable later
//! (evidence stored, assignment changed, registry changed, look-up made, case stage changed).
//!
//! Each entry's `hash` covers its content and the previous entry's hash, so altering, removing
//! or reordering any entry breaks every check from that point; `jiandu verify` re-walks the chain
//! with [`Store::ledger_verify`]. The single row of `ledger_head` holds the last `seq` and `hash`;
//! appending first bumps that row, which serialises writers across threads and processes on both
//! databases (SQLite takes its write lock, PostgreSQL a row lock).
//!
//! # Hash recipe (for verifiers written in other languages)
//!
//! ```text
//! hash(entry) = lowercase_hex(SHA-256(prev_hash ‖ canonical_json(entry)))
//! ```
//!
//! * `prev_hash` is the previous entry's `hash` as its 64 lowercase hex ASCII characters; for
//!   `seq = 1` it is 64 `0` characters. Entries are numbered 1, 2, 3… without gaps.
//! * `entry` is the JSON object `{"actor","body","kind","seq","subject","ts"}` with `seq` and `ts`
//!   (Unix epoch milliseconds) as integers, `actor`, `kind` and `subject` as strings, `body` as
//!   the stored JSON value (the `body` column holds it already in canonical form).
//! * `canonical_json` (see [`canonical_json`]) writes UTF-8 with no whitespace; object keys are
//!   sorted by their UTF-8 bytes (= Unicode code point order), at every depth; strings escape
//!   `"` and `\` with a backslash, U+0008/0C/0A/0D/09 as `\b \f \n \r \t`, other characters
//!   below U+0020 as `\u00xx` (lowercase hex), and leave everything else (including `/` and
//!   non-ASCII) literal; integers are plain decimal. Floats are written in shortest round-trip
//!   form (Rust's `ryu`), which other languages may print differently, so bodies should carry
//!   integers and strings only.
//!
//! In Python, for bodies without floats, this is
//! `json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tracing::{debug, info, warn};

use crate::{Store, StoreError, now_ms};

/// The `prev_hash` of the first entry: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Entries read per query while verifying.
const VERIFY_PAGE: i64 = 1000;

/// What to record; the store assigns `seq`, `ts` and the hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewLedgerEntry {
    /// What happened, e.g. `evidence.stored`, `assignment.changed`.
    pub kind: String,
    /// Who did it: a device id, user name or service account.
    pub actor: String,
    /// What it happened to: an evidence id, assignment id, registry name…
    pub subject: String,
    /// The details; integers and strings only (see the module's hash recipe).
    pub body: Value,
}

/// One link of the chain as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the chain, from 1 without gaps.
    pub seq: i64,
    /// When it was appended (Unix ms).
    pub ts: i64,
    /// What happened.
    pub kind: String,
    /// Who did it.
    pub actor: String,
    /// What it happened to.
    pub subject: String,
    /// The details.
    pub body: Value,
    /// The previous entry's hash (64 zeros for the first).
    pub prev_hash: String,
    /// This entry's hash, per the module's recipe.
    pub hash: String,
}

/// A place where the chain does not hold, found by [`Store::ledger_verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerBreak {
    /// The entry at fault (for a gap, the first missing one).
    pub seq: i64,
    /// What is wrong there, in words.
    pub reason: String,
}

/// Writes `value` as canonical JSON: no whitespace, object keys sorted by UTF-8 bytes at every
/// depth, serde_json's string escaping. Independent of serde_json's `preserve_order` feature.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The hash of an entry with the given content, per the module's recipe.
fn entry_hash(prev_hash: &str, seq: i64, ts: i64, kind: &str, actor: &str, subject: &str, body: &Value) -> String {
    let entry = serde_json::json!({
        "seq": seq,
        "ts": ts,
        "kind": kind,
        "actor": actor,
        "subject": subject,
        "body": body,
    });
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical_json(&entry).as_bytes());
    hex::encode(hasher.finalize())
}

/// A ledger row with its body still as stored text, so verification can report a body that no
/// longer parses instead of failing.
struct StoredEntry {
    seq: i64,
    ts: i64,
    kind: String,
    actor: String,
    subject: String,
    body: String,
    prev_hash: String,
    hash: String,
}

const LEDGER_COLUMNS: &str = "seq, ts, kind, actor, subject, body, prev_hash, hash";

impl StoredEntry {
    fn from_row(row: &AnyRow) -> Result<StoredEntry, sqlx::Error> {
        Ok(StoredEntry {
            seq: row.try_get("seq")?,
            ts: row.try_get("ts")?,
            kind: row.try_get("kind")?,
            actor: row.try_get("actor")?,
            subject: row.try_get("subject")?,
            body: row.try_get("body")?,
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
        })
    }

    fn into_entry(self) -> Result<LedgerEntry, StoreError> {
        let body = serde_json::from_str(&self.body)
            .map_err(|e| StoreError::Corrupt { what: "ledger body", reason: format!("entry {}: {e}", self.seq) })?;
        Ok(LedgerEntry {
            seq: self.seq,
            ts: self.ts,
            kind: self.kind,
            actor: self.actor,
            subject: self.subject,
            body,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }

    /// What is wrong with this entry on its own (its content against its hash), if anything.
    fn content_fault(&self) -> Option<String> {
        let body: Value = match serde_json::from_str(&self.body) {
            Ok(body) => body,
            Err(e) => return Some(format!("body is not valid JSON: {e}")),
        };
        let hash = entry_hash(&self.prev_hash, self.seq, self.ts, &self.kind, &self.actor, &self.subject, &body);
        (hash != self.hash).then(|| "content does not match its hash (entry altered)".to_owned())
    }
}

impl Store {
    /// Appends an entry to the chain and returns it with its `seq` and hash. Safe to call from
    /// many tasks and processes at once: the chain stays gap-free and linear.
    pub async fn ledger_append(&self, entry: NewLedgerEntry) -> Result<LedgerEntry, StoreError> {
        let mut tx = self.pool.begin().await?;
        let appended = Store::ledger_append_in(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(appended)
    }

    /// Appends an entry inside the caller's transaction, so it commits (or rolls back) together
    /// with the change it records. The chain stays locked until that transaction ends.
    pub async fn ledger_append_in(conn: &mut AnyConnection, entry: NewLedgerEntry) -> Result<LedgerEntry, StoreError> {
        if entry.kind.trim().is_empty() {
            return Err(StoreError::InvalidInput { field: "kind", reason: "must not be empty".into() });
        }
        let body_text = canonical_json(&entry.body);
        // The first statement writes, so it takes SQLite's write lock (or PostgreSQL's row lock)
        // at once; every other appender waits here until we commit.
        let head = sqlx::query("UPDATE ledger_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
            .fetch_one(&mut *conn)
            .await?;
        let seq: i64 = head.try_get("seq")?;
        let prev_hash: String = head.try_get("hash")?;
        let ts = now_ms();
        let hash = entry_hash(&prev_hash, seq, ts, &entry.kind, &entry.actor, &entry.subject, &entry.body);
        sqlx::query(&format!("INSERT INTO ledger ({LEDGER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
            .bind(seq)
            .bind(ts)
            .bind(&entry.kind)
            .bind(&entry.actor)
            .bind(&entry.subject)
            .bind(&body_text)
            .bind(&prev_hash)
            .bind(&hash)
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE ledger_head SET hash = $1 WHERE id = 1").bind(&hash).execute(&mut *conn).await?;
        debug!(seq, kind = %entry.kind, subject = %entry.subject, "ledger entry appended");
        Ok(LedgerEntry {
            seq,
            ts,
            kind: entry.kind,
            actor: entry.actor,
            subject: entry.subject,
            body: entry.body,
            prev_hash,
            hash,
        })
    }

    /// Up to `limit` entries with `seq > after_seq`, in ascending order.
    pub async fn ledger_entries(&self, after_seq: i64, limit: i64) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {LEDGER_COLUMNS} FROM ledger WHERE seq > $1 ORDER BY seq LIMIT $2"))
            .bind(after_seq)
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| StoredEntry::from_row(row)?.into_entry()).collect()
    }

    /// The last `seq` and `hash` of the chain (0 and 64 zeros when empty).
    pub async fn ledger_head(&self) -> Result<(i64, String), StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM ledger_head WHERE id = 1").fetch_one(&self.pool).await?;
        Ok((row.try_get("seq")?, row.try_get("hash")?))
    }

    /// Re-walks the whole chain page by page, recomputing every hash; returns each broken entry
    /// with the reason (empty when the chain holds). `progress(done_seq, total)` is called after
    /// each page. Entries appended after the walk started are left for the next run.
    pub async fn ledger_verify(&self, mut progress: impl FnMut(i64, i64)) -> Result<Vec<LedgerBreak>, StoreError> {
        let (head_seq, head_hash) = self.ledger_head().await?;
        let mut breaks = Vec::new();
        let mut expected_seq = 1;
        let mut expected_prev = GENESIS_HASH.to_owned();
        let mut last_seq = 0;
        loop {
            let rows = sqlx::query(&format!(
                "SELECT {LEDGER_COLUMNS} FROM ledger \
                 WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"
            ))
            .bind(last_seq)
            .bind(head_seq)
            .bind(VERIFY_PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let entry = StoredEntry::from_row(row)?;
                let mut faults = Vec::new();
                if entry.seq != expected_seq {
                    breaks.push(LedgerBreak {
                        seq: expected_seq,
                        reason: format!("entries {expected_seq}..={} are missing", entry.seq - 1),
                    });
                } else if entry.prev_hash != expected_prev {
                    faults.push(format!("prev_hash does not match the hash of entry {}", entry.seq - 1));
                }
                faults.extend(entry.content_fault());
                if !faults.is_empty() {
                    breaks.push(LedgerBreak { seq: entry.seq, reason: faults.join("; ") });
                }
                expected_seq = entry.seq + 1;
                expected_prev = entry.hash;
                last_seq = entry.seq;
            }
            progress(last_seq, head_seq);
        }
        if last_seq != head_seq {
            breaks.push(LedgerBreak {
                seq: last_seq + 1,
                reason: format!(
                    "ledger_head is at entry {head_seq} but entries {}..={head_seq} are missing",
                    last_seq + 1
                ),
            });
        } else if expected_prev != head_hash {
            breaks.push(LedgerBreak {
                seq: head_seq,
                reason: "ledger_head hash does not match the last entry".to_owned(),
            });
        }
        if breaks.is_empty() {
            info!(entries = head_seq, "ledger verified");
        } else {
            warn!(entries = head_seq, breaks = breaks.len(), "ledger chain is broken");
        }
        progress(last_seq, head_seq);
        Ok(breaks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth_without_whitespace() {
        let v = json!({"b": 1, "a": {"z": [3, {"y": null, "x": true}], "é": "x/\"\n\u{1}"}, "A": -2});
        assert_eq!(canonical_json(&v), r#"{"A":-2,"a":{"z":[3,{"x":true,"y":null}],"é":"x/\"\n\u0001"},"b":1}"#);
    }

    /// Expected values computed with the Python one-liner from the module docs.
    #[test]
    fn python_json_dumps_recomputes_the_hash() {
        let body = json!({
            "size": 3, "sha256": "ab", "note": "现场 \"quoted\"\n\u{1}/\u{7f}",
            "nested": {"b": [1, {"z": null, "a": true}], "a": -5},
        });
        let entry = json!({"seq": 1, "ts": 1_700_000_000_000i64, "kind": "evidence.stored",
            "actor": "d1", "subject": "e1", "body": body});
        assert_eq!(
            canonical_json(&entry),
            "{\"actor\":\"d1\",\"body\":{\"nested\":{\"a\":-5,\"b\":[1,{\"a\":true,\"z\":null}]},\
             \"note\":\"现场 \\\"quoted\\\"\\n\\u0001/\u{7f}\",\"sha256\":\"ab\",\"size\":3},\
             \"kind\":\"evidence.stored\",\"seq\":1,\"subject\":\"e1\",\"ts\":1700000000000}"
        );
        assert_eq!(
            entry_hash(GENESIS_HASH, 1, 1_700_000_000_000, "evidence.stored", "d1", "e1", &body),
            "382a65096ec03cad2d99811c35a5df96700b57efd51264d66b999918db8061c2"
        );
    }

    #[test]
    fn entry_hash_follows_the_documented_recipe() {
        let body = json!({"sha256": "ab", "size": 3});
        let text = format!(
            "{GENESIS_HASH}{}",
            r#"{"actor":"d1","body":{"sha256":"ab","size":3},"kind":"evidence.stored","seq":1,"subject":"e1","ts":1700000000000}"#
        );
        let expected = hex::encode(Sha256::digest(text.as_bytes()));
        assert_eq!(entry_hash(GENESIS_HASH, 1, 1_700_000_000_000, "evidence.stored", "d1", "e1", &body), expected);
    }
}
