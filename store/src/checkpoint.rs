//! Ledger anchoring (issue 15): signed checkpoints of the ledger head, and the checks that need
//! more than the chain itself.
//!
//! The hash chain proves that entries were not altered *relative to each other*, but someone
//! with write access to the database can cut off the newest entries or recompute every hash
//! after a rewrite, and the chain holds again. A [`Checkpoint`] (the head's `seq` and `hash` at a
//! time, signed with the platform's Ed25519 key) kept *outside* the database by integrations
//! (retained on `jd/v1/platform/checkpoint`) or an operator (`jiandu ledger checkpoint --out`)
//! pins the chain: later, the ledger must still hold an entry at `seq` with exactly that hash,
//! and every later entry must chain from it ([`Store::checkpoint_check`] with the chain walk).
//!
//! Signed message (for verifiers in other languages): the canonical JSON (see `ledger`) of
//! `{"hash","key_id","seq","ts","type":"jiandu.ledger.checkpoint"}`, signed as is (Ed25519).

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;

use crate::evidence::entry_from_row;
use crate::ledger::canonical_json;
use crate::{PlatformKey, Store, StoreError, now_ms};

/// What a checkpoint's `type` field says, so its signature can never pass for a receipt's.
pub const CHECKPOINT_TYPE: &str = "jiandu.ledger.checkpoint";

/// A signed statement "the ledger's head was entry `seq` with `hash` at `ts`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Always [`CHECKPOINT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The head's sequence number (0 for an empty ledger).
    pub seq: i64,
    /// The head's hash (64 zeros for an empty ledger).
    pub hash: String,
    /// When it was signed (Unix ms).
    pub ts: i64,
    /// Which platform key signed it.
    pub key_id: String,
    /// Ed25519 signature of the signed message, lowercase hex.
    pub sig: String,
}

impl Checkpoint {
    /// The exact bytes that are signed.
    pub fn signed_message(&self) -> Vec<u8> {
        canonical_json(&json!({
            "type": self.kind, "seq": self.seq, "hash": self.hash, "ts": self.ts, "key_id": self.key_id,
        }))
        .into_bytes()
    }

    /// Checks the signature against a public key in hex; `Err` says why not.
    pub fn verify(&self, public_hex: &str) -> Result<(), String> {
        if self.kind != CHECKPOINT_TYPE {
            return Err(format!("type: must be {CHECKPOINT_TYPE:?}, got {:?}", self.kind));
        }
        let public: [u8; 32] = hex::decode(public_hex.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("public key: must be 64 hex characters (32 bytes)")?;
        let key = VerifyingKey::from_bytes(&public).map_err(|_| "public key: not a valid Ed25519 point")?;
        let sig: [u8; 64] = hex::decode(self.sig.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("sig: must be 128 hex characters")?;
        key.verify(&self.signed_message(), &Signature::from_bytes(&sig)).map_err(|_| {
            "sig: does not match this checkpoint under this key (altered, or signed by another key)".into()
        })
    }

    /// Parses a checkpoint from JSON text (a file or the retained message).
    pub fn from_json(text: &str) -> Result<Checkpoint, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::InvalidInput {
            field: "checkpoint",
            reason: format!("not a ledger checkpoint: {e}"),
        })
    }
}

impl PlatformKey {
    /// Signs the ledger head `(seq, hash)` as of now.
    pub fn sign_checkpoint(&self, seq: i64, hash: &str) -> Checkpoint {
        let mut cp = Checkpoint {
            kind: CHECKPOINT_TYPE.to_owned(),
            seq,
            hash: hash.to_owned(),
            ts: now_ms(),
            key_id: self.key_id(),
            sig: String::new(),
        };
        cp.sig = self.sign_bytes(&cp.signed_message());
        cp
    }
}

/// Entries read per query while checking the evidence entries.
const PAGE: i64 = 1000;

impl Store {
    /// A checkpoint of the current ledger head, signed with `key`.
    pub async fn ledger_checkpoint(&self, key: &PlatformKey) -> Result<Checkpoint, StoreError> {
        let (seq, hash) = self.ledger_head().await?;
        Ok(key.sign_checkpoint(seq, &hash))
    }

    /// What is wrong with the ledger against an (already signature-checked) checkpoint: the
    /// entry at its `seq` must still exist with its `hash`, and the head must not be behind it.
    /// Together with an unbroken chain walk this proves the ledger extends the checkpoint.
    pub async fn checkpoint_check(&self, cp: &Checkpoint) -> Result<Vec<String>, StoreError> {
        let mut faults = Vec::new();
        let (head, _) = self.ledger_head().await?;
        if head < cp.seq {
            faults.push(format!(
                "the ledger ends at entry {head} but checkpoint of {} was at entry {} (entries cut off)",
                cp.ts, cp.seq
            ));
        }
        if cp.seq == 0 {
            return Ok(faults);
        }
        let row = sqlx::query("SELECT seq, ts, kind, actor, subject, body, prev_hash, hash FROM ledger WHERE seq = $1")
            .bind(cp.seq)
            .fetch_optional(&self.pool)
            .await?;
        match row.as_ref().map(entry_from_row).transpose() {
            Ok(None) => faults.push(format!("ledger entry {} of the checkpoint is missing", cp.seq)),
            Ok(Some(e)) if e.hash != cp.hash => faults.push(format!(
                "ledger entry {} has hash {}, the checkpoint says {} (the chain was rewritten)",
                cp.seq, e.hash, cp.hash
            )),
            Ok(Some(_)) => {}
            Err(_) => faults.push(format!("ledger entry {} of the checkpoint is unreadable", cp.seq)),
        }
        Ok(faults)
    }

    /// Every `evidence.stored` ledger entry must have its evidence record (a deleted record is
    /// noticed); returns one fault per entry whose record is gone or points elsewhere.
    pub async fn evidence_entries_check(&self) -> Result<Vec<String>, StoreError> {
        let mut faults = Vec::new();
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(
                "SELECT l.seq AS seq, l.subject AS subject, e.ledger_seq AS record_seq FROM ledger l \
                 LEFT JOIN evidence e ON e.evid = l.subject \
                 WHERE l.kind = 'evidence.stored' AND l.seq > $1 ORDER BY l.seq LIMIT $2",
            )
            .bind(after)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("seq")?;
            for row in &rows {
                let seq: i64 = row.try_get("seq")?;
                let evid: String = row.try_get("subject")?;
                match row.try_get::<Option<i64>, _>("record_seq")? {
                    None => faults.push(format!("ledger entry {seq} stored evidence {evid}, whose record is gone")),
                    Some(s) if s != seq => faults
                        .push(format!("ledger entry {seq} stored evidence {evid}, whose record points at entry {s}")),
                    Some(_) => {}
                }
            }
        }
        Ok(faults)
    }

    /// Re-hashes every look-up audit batch against its `lookup.batch` ledger entry (an altered,
    /// deleted or inserted audit row is noticed); returns one fault per batch that differs.
    pub async fn lookup_batches_check(&self) -> Result<Vec<String>, StoreError> {
        let mut faults = Vec::new();
        let mut after = 0i64;
        let mut committed = 0i64;
        loop {
            let rows = sqlx::query(
                "SELECT seq, ts, kind, actor, subject, body, prev_hash, hash FROM ledger \
                 WHERE kind = 'lookup.batch' AND seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("seq")?;
            for row in &rows {
                let Ok(entry) = entry_from_row(row) else { continue };
                let int = |k: &str| entry.body.get(k).and_then(Value::as_i64);
                let (Some(first), Some(last), Some(count)) = (int("first_id"), int("last_id"), int("count")) else {
                    faults
                        .push(format!("ledger entry {}: lookup.batch without first_id, last_id and count", entry.seq));
                    continue;
                };
                committed += count;
                let audits = self.lookup_audit_range(first, last).await?;
                let sha = crate::lookup_rows_sha256(audits.iter().map(|a| (a.id, &a.lookup)));
                let want = entry.body.get("sha256").and_then(Value::as_str).unwrap_or_default();
                if audits.len() as i64 != count {
                    faults.push(format!(
                        "look-up audit rows {first}..={last}: {} rows, ledger entry {} committed {count}",
                        audits.len(),
                        entry.seq
                    ));
                } else if sha != want {
                    faults.push(format!(
                        "look-up audit rows {first}..={last}: hash to {sha}, ledger entry {} committed {want} (a row was altered)",
                        entry.seq
                    ));
                }
            }
        }
        let stored = self.lookup_audit_count().await?;
        if stored != committed {
            faults.push(format!("{stored} look-up audit rows stored, {committed} committed by ledger entries"));
        }
        Ok(faults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_verify_and_tampering_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = PlatformKey::load_or_create(&dir.path().join("k")).unwrap();
        let cp = key.sign_checkpoint(42, &"ab".repeat(32));
        cp.verify(&key.public_hex()).unwrap();
        let back = Checkpoint::from_json(&serde_json::to_string(&cp).unwrap()).unwrap();
        assert_eq!(back, cp);
        let mut moved = cp.clone();
        moved.seq = 41;
        assert!(moved.verify(&key.public_hex()).unwrap_err().starts_with("sig"));
        let (other, _) = PlatformKey::load_or_create(&dir.path().join("o")).unwrap();
        assert!(cp.verify(&other.public_hex()).is_err());
        let m = String::from_utf8(cp.signed_message()).unwrap();
        assert!(m.starts_with(r#"{"hash":""#) && m.ends_with(r#""type":"jiandu.ledger.checkpoint"}"#), "{m}");
    }
}
