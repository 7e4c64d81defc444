//! Evidence records, uploads in progress, signed receipts and the chain of custody.
//!
//! Ingest assembles a phone's chunked upload on disk (the staging state lives here, in
//! `evidence_uploads` and `evidence_chunks`, so an upload survives a crash of the platform) and,
//! once the bytes are verified and committed to [`Blobs`](crate::Blobs), calls
//! [`Store::evidence_record`]: one transaction appends the `evidence.stored` ledger entry, the
//! evidence row with its signed receipt, the `jd/v1/events/evidence` event, and drops the upload.
//! Every later view or download is appended to the ledger too ([`Store::evidence_access`]);
//! the chain of custody of an item is its ledger entries ([`Store::evidence_custody`]).
//!
//! # Receipt signature (for verifiers written in other languages)
//!
//! A `stored` receipt's `sig` is the lowercase hex of the Ed25519 signature (RFC 8032, 64 bytes)
//! by the platform key over the bytes of
//! `canonical_json({"evid","ledger_hash","ledger_seq","received_at","sha256","size"})`
//! (see [`canonical_json`]: sorted keys, no whitespace, integers in decimal), e.g.
//! `{"evid":"e1","ledger_hash":"…","ledger_seq":7,"received_at":1700000000000,"sha256":"…","size":3}`.
//! The public key is the 32-byte Ed25519 key in lowercase hex; its `key_id` is the first 16 hex
//! characters of the SHA-256 of those 32 bytes.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use tracing::{debug, info};

use crate::BindOptF64;
use crate::{LedgerEntry, NewEvent, NewLedgerEntry, Store, StoreError, canonical_json, now_ms};

/// The `meta` of an upload as the store keeps it (checked by `schemas` before it gets here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadSpec {
    /// SHA-256 the phone announced, lowercase hex.
    pub sha256: String,
    /// Size the phone announced, bytes.
    pub size: i64,
    /// MIME type.
    pub mime: String,
    /// Capture time (Unix ms).
    pub captured_at: i64,
    /// Capture latitude, WGS-84.
    pub lat: Option<f64>,
    /// Capture longitude, WGS-84.
    pub lon: Option<f64>,
    /// Report it belongs to.
    pub report_id: Option<String>,
    /// Size of every chunk but the last.
    pub chunk_size: i64,
    /// Number of chunks.
    pub chunks: i64,
}

/// An upload being assembled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenUpload {
    /// Client-generated evidence id.
    pub evid: String,
    /// Uploading device.
    pub device: String,
    /// What the phone announced.
    pub spec: UploadSpec,
    /// Path of the staging file on the ingest machine.
    pub staging: String,
    /// When `meta` first arrived (Unix ms).
    pub opened_at: i64,
    /// When a chunk or `meta` last arrived (Unix ms).
    pub touched_at: i64,
}

/// Where an evidence id stands.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadState {
    /// Never seen (or discarded).
    Unknown,
    /// Being uploaded; `received` lists the chunk indices staged so far, ascending.
    Open {
        /// The upload.
        upload: OpenUpload,
        /// Chunk indices durably staged.
        received: Vec<i64>,
    },
    /// Stored for good.
    Stored(Evidence),
}

/// A stored item of evidence, with its receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Client-generated evidence id.
    pub evid: String,
    /// Device that uploaded it.
    pub device: String,
    /// SHA-256 of the bytes, lowercase hex (also its blob key).
    pub sha256: String,
    /// Size, bytes.
    pub size: i64,
    /// MIME type.
    pub mime: String,
    /// Capture time (Unix ms).
    pub captured_at: i64,
    /// Capture latitude.
    pub lat: Option<f64>,
    /// Capture longitude.
    pub lon: Option<f64>,
    /// Report it belongs to.
    pub report_id: Option<String>,
    /// When the platform stored it (Unix ms; the ledger entry's `ts`).
    pub received_at: i64,
    /// Its `evidence.stored` ledger entry.
    pub ledger_seq: i64,
    /// That entry's hash.
    pub ledger_hash: String,
    /// Which platform key signed the receipt.
    pub key_id: String,
    /// Ed25519 signature over [`ReceiptFields::signed_message`], hex.
    pub sig: String,
}

impl Evidence {
    /// The signed fields of its receipt.
    pub fn receipt_fields(&self) -> ReceiptFields {
        ReceiptFields {
            evid: self.evid.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            ledger_seq: self.ledger_seq,
            ledger_hash: self.ledger_hash.clone(),
            received_at: self.received_at,
        }
    }

    /// The `stored` receipt as sent to the phone (DESIGN §3).
    pub fn receipt(&self) -> Value {
        json!({
            "status": "stored", "evid": self.evid, "sha256": self.sha256, "size": self.size,
            "ledger_seq": self.ledger_seq, "ledger_hash": self.ledger_hash,
            "received_at": self.received_at, "sig": self.sig,
        })
    }

    fn from_row(row: &AnyRow) -> Result<Evidence, StoreError> {
        Ok(Evidence {
            evid: row.try_get("evid")?,
            device: row.try_get("device")?,
            sha256: row.try_get("sha256")?,
            size: row.try_get("size")?,
            mime: row.try_get("mime")?,
            captured_at: row.try_get("captured_at")?,
            lat: row.try_get("lat")?,
            lon: row.try_get("lon")?,
            report_id: row.try_get("report_id")?,
            received_at: row.try_get("received_at")?,
            ledger_seq: row.try_get("ledger_seq")?,
            ledger_hash: row.try_get("ledger_hash")?,
            key_id: row.try_get("key_id")?,
            sig: row.try_get("sig")?,
        })
    }
}

/// The fields a receipt signature covers (module docs give the exact byte form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptFields {
    /// Evidence id.
    pub evid: String,
    /// SHA-256 of the bytes.
    pub sha256: String,
    /// Size, bytes.
    pub size: i64,
    /// Ledger entry number.
    pub ledger_seq: i64,
    /// Ledger entry hash.
    pub ledger_hash: String,
    /// When stored (Unix ms).
    pub received_at: i64,
}

impl ReceiptFields {
    /// The exact bytes that are signed.
    pub fn signed_message(&self) -> Vec<u8> {
        canonical_json(&json!({
            "evid": self.evid, "sha256": self.sha256, "size": self.size,
            "ledger_seq": self.ledger_seq, "ledger_hash": self.ledger_hash, "received_at": self.received_at,
        }))
        .into_bytes()
    }
}

/// The platform's Ed25519 signing key; the private half never leaves the data dir.
#[derive(Clone)]
pub struct PlatformKey {
    signing: SigningKey,
}

impl std::fmt::Debug for PlatformKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformKey").field("key_id", &self.key_id()).finish()
    }
}

/// The public half of a platform key, as published on `jd/v1/platform/key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyInfo {
    /// Always `Ed25519`.
    pub alg: String,
    /// First 16 hex characters of the SHA-256 of the key bytes.
    pub key_id: String,
    /// The 32-byte public key, lowercase hex.
    pub public_key: String,
    /// When it was first registered (Unix ms).
    pub created_at: i64,
}

/// `key_id` of a public key given in hex.
fn key_id_of(public: &[u8]) -> String {
    hex::encode(Sha256::digest(public))[..16].to_owned()
}

impl PlatformKey {
    /// Creates a key file (mode 0600, 64 hex characters of the secret seed) unless one exists;
    /// returns the key and whether it was created now.
    pub fn load_or_create(path: &Path) -> Result<(PlatformKey, bool), StoreError> {
        if path.exists() {
            return Ok((PlatformKey::load(path)?, false));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|source| StoreError::CreateDir { path: parent.to_path_buf(), source })?;
        }
        let seed: [u8; 32] = rand::rng().random();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let io = |source| StoreError::Io { path: path.to_path_buf(), source };
        let mut file = options.open(path).map_err(io)?;
        file.write_all(format!("{}\n", hex::encode(seed)).as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        let key = PlatformKey { signing: SigningKey::from_bytes(&seed) };
        info!(key_id = %key.key_id(), path = %path.display(), "platform signing key created");
        Ok((key, true))
    }

    /// Reads a key file written by [`PlatformKey::load_or_create`].
    pub fn load(path: &Path) -> Result<PlatformKey, StoreError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
        let bad = |reason: &str| StoreError::Corrupt {
            what: "platform key file",
            reason: format!("{}: {reason}", path.display()),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| bad("not hex"))?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| bad("not 32 bytes"))?;
        Ok(PlatformKey { signing: SigningKey::from_bytes(&seed) })
    }

    /// The public key, lowercase hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// Short id of the key (see module docs).
    pub fn key_id(&self) -> String {
        key_id_of(self.signing.verifying_key().as_bytes())
    }

    /// Signs a receipt; returns the signature in lowercase hex.
    pub fn sign(&self, fields: &ReceiptFields) -> String {
        self.sign_bytes(&fields.signed_message())
    }

    /// Signs a message; returns the signature in lowercase hex.
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> String {
        hex::encode(self.signing.sign(message).to_bytes())
    }
}

/// The `key_id` of a public key given in hex, or why it is not one.
pub fn public_key_id(public_hex: &str) -> Result<String, String> {
    let public: [u8; 32] = hex::decode(public_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("public key: must be 64 hex characters (32 bytes)")?;
    VerifyingKey::from_bytes(&public).map_err(|_| "public key: not a valid Ed25519 point")?;
    Ok(key_id_of(&public))
}

/// Checks a receipt signature offline against a public key given in hex; `Err` says why not.
pub fn verify_receipt(public_hex: &str, fields: &ReceiptFields, sig_hex: &str) -> Result<(), String> {
    let public: [u8; 32] = hex::decode(public_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("public key: must be 64 hex characters (32 bytes)")?;
    let key = VerifyingKey::from_bytes(&public).map_err(|_| "public key: not a valid Ed25519 point")?;
    let sig: [u8; 64] =
        hex::decode(sig_hex.trim()).ok().and_then(|b| b.try_into().ok()).ok_or("sig: must be 128 hex characters")?;
    key.verify(&fields.signed_message(), &Signature::from_bytes(&sig)).map_err(|_| {
        "sig: does not match these fields under this key (receipt altered or signed by another key)".into()
    })
}

const UPLOAD_COLUMNS: &str = "evid, device, sha256, size, mime, captured_at, lat, lon, report_id, chunk_size, chunks, \
                              staging, opened_at, touched_at";
const EVIDENCE_COLUMNS: &str = "evid, device, sha256, size, mime, captured_at, lat, lon, report_id, received_at, \
                                ledger_seq, ledger_hash, key_id, sig";

fn upload_from_row(row: &AnyRow) -> Result<OpenUpload, StoreError> {
    Ok(OpenUpload {
        evid: row.try_get("evid")?,
        device: row.try_get("device")?,
        spec: UploadSpec {
            sha256: row.try_get("sha256")?,
            size: row.try_get("size")?,
            mime: row.try_get("mime")?,
            captured_at: row.try_get("captured_at")?,
            lat: row.try_get("lat")?,
            lon: row.try_get("lon")?,
            report_id: row.try_get("report_id")?,
            chunk_size: row.try_get("chunk_size")?,
            chunks: row.try_get("chunks")?,
        },
        staging: row.try_get("staging")?,
        opened_at: row.try_get("opened_at")?,
        touched_at: row.try_get("touched_at")?,
    })
}

pub(crate) fn entry_from_row(row: &AnyRow) -> Result<LedgerEntry, StoreError> {
    let body: String = row.try_get("body")?;
    Ok(LedgerEntry {
        seq: row.try_get("seq")?,
        ts: row.try_get("ts")?,
        kind: row.try_get("kind")?,
        actor: row.try_get("actor")?,
        subject: row.try_get("subject")?,
        body: serde_json::from_str(&body)
            .map_err(|e| StoreError::Corrupt { what: "ledger body", reason: e.to_string() })?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// What a view or download of evidence is recorded as in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Metadata, receipt and custody log were shown.
    Viewed,
    /// (Part of) the content was sent.
    Downloaded,
}

impl Access {
    fn kind(self) -> &'static str {
        match self {
            Access::Viewed => "evidence.viewed",
            Access::Downloaded => "evidence.downloaded",
        }
    }
}

impl Store {
    /// Where `evid` stands: unknown, open (with the chunks received) or stored.
    pub async fn evidence_upload_state(&self, evid: &str) -> Result<UploadState, StoreError> {
        if let Some(e) = self.evidence_find(evid).await? {
            return Ok(UploadState::Stored(e));
        }
        let row = sqlx::query(&format!("SELECT {UPLOAD_COLUMNS} FROM evidence_uploads WHERE evid = $1"))
            .bind(evid)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(UploadState::Unknown) };
        let upload = upload_from_row(&row)?;
        let received = sqlx::query("SELECT n FROM evidence_chunks WHERE evid = $1 ORDER BY n")
            .bind(evid)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>("n"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(UploadState::Open { upload, received })
    }

    /// Opens an upload. Fails with [`StoreError::Conflict`] when the id is taken.
    pub async fn evidence_upload_open(
        &self,
        evid: &str,
        device: &str,
        spec: &UploadSpec,
        staging: &str,
    ) -> Result<OpenUpload, StoreError> {
        let now = now_ms();
        let taken =
            sqlx::query("SELECT evid FROM evidence WHERE evid = $1").bind(evid).fetch_optional(&self.pool).await?;
        if taken.is_some() {
            return Err(StoreError::Conflict { reason: format!("evidence id {evid} is taken") });
        }
        sqlx::query(&format!(
            "INSERT INTO evidence_uploads ({UPLOAD_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(evid)
        .bind(device)
        .bind(&spec.sha256)
        .bind(spec.size)
        .bind(&spec.mime)
        .bind(spec.captured_at)
        .bind_opt_f64(spec.lat)
        .bind_opt_f64(spec.lon)
        .bind(spec.report_id.clone())
        .bind(spec.chunk_size)
        .bind(spec.chunks)
        .bind(staging)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict { reason: format!("evidence id {evid} is taken") }
            }
            _ => StoreError::Database(e),
        })?;
        debug!(evid, device, size = spec.size, chunks = spec.chunks, "upload opened");
        Ok(OpenUpload {
            evid: evid.to_owned(),
            device: device.to_owned(),
            spec: spec.clone(),
            staging: staging.to_owned(),
            opened_at: now,
            touched_at: now,
        })
    }

    /// Records chunks as durably staged (call after their bytes are written and synced), in one
    /// transaction; chunks recorded before are ignored, so duplicates are harmless.
    pub async fn evidence_chunks_staged(&self, chunks: &[(String, i64)]) -> Result<(), StoreError> {
        self.insert_chunks(chunks.iter().map(|(evid, n)| (evid.as_str(), *n, None))).await
    }

    /// Stores chunks with their bytes for shared staging (`[evidence] staging = "database"`), in
    /// one transaction, so any ingest process can assemble the upload. Chunks recorded before,
    /// and chunks of an upload no longer open (stored or discarded meanwhile), are ignored.
    pub async fn evidence_chunks_put(&self, chunks: &[(String, i64, &[u8])]) -> Result<(), StoreError> {
        self.insert_chunks(chunks.iter().map(|(evid, n, bytes)| (evid.as_str(), *n, Some(*bytes)))).await
    }

    /// The one chunk writer of both staging modes: each chunk (with its bytes for shared
    /// staging, only for an upload still open) and each upload's `touched_at`, once per run of
    /// chunks of the same upload, in one transaction.
    async fn insert_chunks<'a>(
        &self,
        chunks: impl ExactSizeIterator<Item = (&'a str, i64, Option<&'a [u8]>)>,
    ) -> Result<(), StoreError> {
        if chunks.len() == 0 {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut last: Option<&str> = None;
        for (evid, n, bytes) in chunks {
            let insert = match bytes {
                None => sqlx::query(
                    "INSERT INTO evidence_chunks (evid, n) VALUES ($1, $2) ON CONFLICT (evid, n) DO NOTHING",
                )
                .bind(evid)
                .bind(n),
                Some(bytes) => sqlx::query(
                    "INSERT INTO evidence_chunks (evid, n, bytes) SELECT $1, $2, $3 \
                     WHERE EXISTS (SELECT 1 FROM evidence_uploads WHERE evid = $1) ON CONFLICT (evid, n) DO NOTHING",
                )
                .bind(evid)
                .bind(n)
                .bind(bytes),
            };
            insert.execute(&mut *tx).await?;
            if last != Some(evid) {
                sqlx::query("UPDATE evidence_uploads SET touched_at = $1 WHERE evid = $2")
                    .bind(now)
                    .bind(evid)
                    .execute(&mut *tx)
                    .await?;
                last = Some(evid);
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The bytes of chunks `from..` of `evid` staged in the database, in index order, at most
    /// `limit` (for assembling an upload page by page without holding it in memory).
    pub async fn evidence_chunk_bytes(
        &self,
        evid: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT n, bytes FROM evidence_chunks WHERE evid = $1 AND n >= $2 AND bytes IS NOT NULL ORDER BY n LIMIT $3",
        )
        .bind(evid)
        .bind(from)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get::<i64, _>("n")?, r.try_get::<Vec<u8>, _>("bytes")?))).collect()
    }

    /// What the open uploads hold, across every ingest process: (uploads of `device`, bytes
    /// they announce, bytes all open uploads announce), for the limits of shared staging.
    pub async fn evidence_open_totals(&self, device: &str) -> Result<(i64, i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN device = $1 THEN 1 ELSE 0 END), 0) AS BIGINT) AS mine, \
             CAST(COALESCE(SUM(CASE WHEN device = $1 THEN size ELSE 0 END), 0) AS BIGINT) AS mine_bytes, \
             CAST(COALESCE(SUM(size), 0) AS BIGINT) AS all_bytes FROM evidence_uploads",
        )
        .bind(device)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get::<i64, _>("mine")?, row.try_get::<i64, _>("mine_bytes")?, row.try_get::<i64, _>("all_bytes")?))
    }

    /// Forgets an open upload and its staged chunks (its staging file is the caller's to remove).
    pub async fn evidence_upload_discard(&self, evid: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM evidence_chunks WHERE evid = $1").bind(evid).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM evidence_uploads WHERE evid = $1").bind(evid).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every open upload, oldest first (for limits, expiry and cleaning the staging dir).
    pub async fn evidence_uploads(&self) -> Result<Vec<OpenUpload>, StoreError> {
        sqlx::query(&format!("SELECT {UPLOAD_COLUMNS} FROM evidence_uploads ORDER BY opened_at, evid"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(upload_from_row)
            .collect()
    }

    /// Records a verified upload whose bytes are in the object store: appends the
    /// `evidence.stored` ledger entry, stores the evidence row with its receipt signed by `key`,
    /// queues the `evidence.stored` event and drops the upload, all in one transaction. Calling
    /// it again for a stored id returns the stored record unchanged.
    pub async fn evidence_record(&self, upload: &OpenUpload, key: &PlatformKey) -> Result<Evidence, StoreError> {
        self.evidence_record_noted(upload, key, serde_json::Map::new()).await
    }

    /// [`Store::evidence_record`] with `note` added to the `evidence.stored` ledger entry's body:
    /// a public tip's photo records there that its metadata was removed before it was hashed
    /// (`{"metadata_removed": true, "removed": [...]}`), so the custody log says the stored bytes
    /// are not the bytes the citizen's camera wrote. The note cannot override the entry's own
    /// fields.
    pub async fn evidence_record_noted(
        &self,
        upload: &OpenUpload,
        key: &PlatformKey,
        note: serde_json::Map<String, Value>,
    ) -> Result<Evidence, StoreError> {
        if let Some(e) = self.evidence_find(&upload.evid).await? {
            return Ok(e);
        }
        match self.evidence_record_once(upload, key, note).await {
            Ok(e) => Ok(e),
            // Two ingest processes raced to record it: the evidence row's key decided; the loser
            // returns the winner's record (and re-sends its receipt).
            Err(err) => match self.evidence_find(&upload.evid).await? {
                Some(e) => Ok(e),
                None => Err(err),
            },
        }
    }

    async fn evidence_record_once(
        &self,
        upload: &OpenUpload,
        key: &PlatformKey,
        note: serde_json::Map<String, Value>,
    ) -> Result<Evidence, StoreError> {
        let spec = &upload.spec;
        let mut body = Value::Object(note);
        for (k, v) in [
            ("sha256", json!(spec.sha256)),
            ("size", json!(spec.size)),
            ("mime", json!(spec.mime)),
            ("captured_at", json!(spec.captured_at)),
            ("key_id", json!(key.key_id())),
        ] {
            body[k] = v;
        }
        if let Some(r) = &spec.report_id {
            body["report_id"] = json!(r);
        }
        let mut tx = self.pool.begin().await?;
        let entry = Store::ledger_append_in(
            &mut tx,
            NewLedgerEntry {
                kind: "evidence.stored".into(),
                actor: upload.device.clone(),
                subject: upload.evid.clone(),
                body,
            },
        )
        .await?;
        let mut evidence = Evidence {
            evid: upload.evid.clone(),
            device: upload.device.clone(),
            sha256: spec.sha256.clone(),
            size: spec.size,
            mime: spec.mime.clone(),
            captured_at: spec.captured_at,
            lat: spec.lat,
            lon: spec.lon,
            report_id: spec.report_id.clone(),
            received_at: entry.ts,
            ledger_seq: entry.seq,
            ledger_hash: entry.hash.clone(),
            key_id: key.key_id(),
            sig: String::new(),
        };
        evidence.sig = key.sign(&evidence.receipt_fields());
        sqlx::query(&format!(
            "INSERT INTO evidence ({EVIDENCE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&evidence.evid)
        .bind(&evidence.device)
        .bind(&evidence.sha256)
        .bind(evidence.size)
        .bind(&evidence.mime)
        .bind(evidence.captured_at)
        .bind_opt_f64(evidence.lat)
        .bind_opt_f64(evidence.lon)
        .bind(evidence.report_id.clone())
        .bind(evidence.received_at)
        .bind(evidence.ledger_seq)
        .bind(&evidence.ledger_hash)
        .bind(&evidence.key_id)
        .bind(&evidence.sig)
        .execute(&mut *tx)
        .await?;
        Store::append_event_in(
            &mut tx,
            NewEvent {
                kind: "evidence".into(),
                r#type: "evidence.stored".into(),
                data: json!({
                    "evid": evidence.evid, "device": evidence.device, "sha256": evidence.sha256,
                    "size": evidence.size, "mime": evidence.mime, "report_id": evidence.report_id,
                    "ledger_seq": evidence.ledger_seq, "received_at": evidence.received_at,
                }),
            },
        )
        .await?;
        sqlx::query("DELETE FROM evidence_chunks WHERE evid = $1").bind(&evidence.evid).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM evidence_uploads WHERE evid = $1").bind(&evidence.evid).execute(&mut *tx).await?;
        tx.commit().await?;
        info!(evid = %evidence.evid, device = %evidence.device, size = evidence.size, ledger_seq = evidence.ledger_seq, "evidence stored");
        Ok(evidence)
    }

    /// The stored item `evid`, if any.
    pub async fn evidence_find(&self, evid: &str) -> Result<Option<Evidence>, StoreError> {
        sqlx::query(&format!("SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE evid = $1"))
            .bind(evid)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(Evidence::from_row)
            .transpose()
    }

    /// The stored item `evid`, or [`StoreError::NotFound`].
    pub async fn evidence_get(&self, evid: &str) -> Result<Evidence, StoreError> {
        self.evidence_find(evid).await?.ok_or_else(|| StoreError::NotFound { what: "evidence", id: evid.to_owned() })
    }

    /// Stored items, newest first, optionally of one report and/or device; `after` is the last
    /// `evid` of the previous page.
    pub async fn evidence_list(
        &self,
        report: Option<&str>,
        device: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Evidence>, StoreError> {
        let cursor = match after {
            Some(a) => Some(self.evidence_get(a).await.map_err(|_| StoreError::InvalidInput {
                field: "after",
                reason: format!("no evidence '{a}' to continue after"),
            })?),
            None => None,
        };
        let rows = sqlx::query(&format!(
            "SELECT {EVIDENCE_COLUMNS} FROM evidence \
             WHERE ($1 = '' OR report_id = $1) AND ($2 = '' OR device = $2) \
               AND ($3 = 0 OR received_at < $4 OR (received_at = $4 AND evid < $5)) \
             ORDER BY received_at DESC, evid DESC LIMIT $6"
        ))
        .bind(report.unwrap_or(""))
        .bind(device.unwrap_or(""))
        .bind(i64::from(cursor.is_some()))
        .bind(cursor.as_ref().map_or(0, |c| c.received_at))
        .bind(cursor.as_ref().map_or(String::new(), |c| c.evid.clone()))
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Evidence::from_row).collect()
    }

    /// Stored items with `evid > after`, in `evid` order (for walking them all, e.g. verify).
    pub async fn evidence_page(&self, after: &str, limit: i64) -> Result<Vec<Evidence>, StoreError> {
        sqlx::query(&format!("SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE evid > $1 ORDER BY evid LIMIT $2"))
            .bind(after)
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Evidence::from_row)
            .collect()
    }

    /// Bytes of evidence `device` had stored at or after `since_ms` (for its daily quota).
    pub async fn evidence_bytes_since(&self, device: &str, since_ms: i64) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS n FROM evidence WHERE device = $1 AND received_at >= $2",
        )
        .bind(device)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Number of stored items.
    pub async fn evidence_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM evidence").fetch_one(&self.pool).await?.try_get("n")?)
    }

    /// The chain of custody of `evid`: every `evidence.*` ledger entry about it, oldest first.
    pub async fn evidence_custody(&self, evid: &str) -> Result<Vec<LedgerEntry>, StoreError> {
        sqlx::query(
            "SELECT seq, ts, kind, actor, subject, body, prev_hash, hash FROM ledger \
             WHERE subject = $1 AND kind LIKE 'evidence.%' ORDER BY seq",
        )
        .bind(evid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(entry_from_row)
        .collect()
    }

    /// Appends a view or download of `evid` by `actor` to the ledger; `detail` holds strings and
    /// integers only (e.g. the byte range sent).
    pub async fn evidence_access(
        &self,
        evid: &str,
        actor: &str,
        access: Access,
        detail: Value,
    ) -> Result<LedgerEntry, StoreError> {
        self.ledger_append(NewLedgerEntry {
            kind: access.kind().into(),
            actor: actor.to_owned(),
            subject: evid.to_owned(),
            body: detail,
        })
        .await
    }

    /// What is wrong with a stored record against its own ledger entry (empty when it agrees):
    /// the entry must exist with the recorded hash and name the same bytes.
    pub async fn evidence_check(&self, e: &Evidence) -> Result<Vec<String>, StoreError> {
        let row = sqlx::query("SELECT seq, ts, kind, actor, subject, body, prev_hash, hash FROM ledger WHERE seq = $1")
            .bind(e.ledger_seq)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(vec![format!("its ledger entry {} is missing", e.ledger_seq)]);
        };
        let entry = match entry_from_row(&row) {
            Ok(entry) => entry,
            Err(_) => return Ok(vec![format!("its ledger entry {} is unreadable", e.ledger_seq)]),
        };
        let mut faults = Vec::new();
        if entry.hash != e.ledger_hash {
            faults.push(format!(
                "ledger entry {} has hash {}, the receipt says {}",
                entry.seq, entry.hash, e.ledger_hash
            ));
        }
        if entry.kind != "evidence.stored" || entry.subject != e.evid {
            faults.push(format!("ledger entry {} is not the evidence.stored entry of {}", entry.seq, e.evid));
        }
        if entry.body.get("sha256").and_then(Value::as_str) != Some(e.sha256.as_str()) {
            faults.push(format!("sha256 differs from ledger entry {}", entry.seq));
        }
        if entry.body.get("size").and_then(Value::as_i64) != Some(e.size) {
            faults.push(format!("size differs from ledger entry {}", entry.seq));
        }
        if entry.ts != e.received_at {
            faults.push(format!("received_at differs from ledger entry {}", entry.seq));
        }
        Ok(faults)
    }

    /// Registers the public half of the platform key (idempotent), so web and verifiers can
    /// find it without the private key file.
    pub async fn platform_key_register(&self, key: &PlatformKey) -> Result<PublicKeyInfo, StoreError> {
        sqlx::query(
            "INSERT INTO platform_keys (key_id, public_key, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key.key_id())
        .bind(key.public_hex())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.platform_key(Some(&key.key_id()))
            .await?
            .ok_or_else(|| StoreError::NotFound { what: "platform key", id: key.key_id() })
    }

    /// Every registered platform key, oldest first.
    pub async fn platform_keys(&self) -> Result<Vec<PublicKeyInfo>, StoreError> {
        let rows = sqlx::query("SELECT key_id, public_key, created_at FROM platform_keys ORDER BY created_at, key_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PublicKeyInfo {
                    alg: "Ed25519".into(),
                    key_id: r.try_get("key_id")?,
                    public_key: r.try_get("public_key")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// The platform key with this id, or the newest one when `key_id` is `None`.
    pub async fn platform_key(&self, key_id: Option<&str>) -> Result<Option<PublicKeyInfo>, StoreError> {
        let row = sqlx::query(
            "SELECT key_id, public_key, created_at FROM platform_keys \
             WHERE ($1 = '' OR key_id = $1) ORDER BY created_at DESC, key_id LIMIT 1",
        )
        .bind(key_id.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(PublicKeyInfo {
                alg: "Ed25519".into(),
                key_id: r.try_get("key_id")?,
                public_key: r.try_get("public_key")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> ReceiptFields {
        ReceiptFields {
            evid: "e1".into(),
            sha256: "ab".repeat(32),
            size: 3,
            ledger_seq: 7,
            ledger_hash: "cd".repeat(32),
            received_at: 1_700_000_000_000,
        }
    }

    #[test]
    fn the_signed_message_is_the_documented_canonical_form() {
        let m = String::from_utf8(fields().signed_message()).unwrap();
        assert_eq!(
            m,
            format!(
                r#"{{"evid":"e1","ledger_hash":"{}","ledger_seq":7,"received_at":1700000000000,"sha256":"{}","size":3}}"#,
                "cd".repeat(32),
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn receipts_verify_and_tampering_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("platform.key");
        let (key, created) = PlatformKey::load_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let (again, created) = PlatformKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.public_hex(), key.public_hex());
        assert_eq!(key.key_id().len(), 16);
        let sig = key.sign(&fields());
        assert_eq!(sig.len(), 128);
        verify_receipt(&key.public_hex(), &fields(), &sig).unwrap();
        let mut altered = fields();
        altered.size = 4;
        assert!(verify_receipt(&key.public_hex(), &altered, &sig).unwrap_err().contains("does not match"));
        let (other, _) = PlatformKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(verify_receipt(&other.public_hex(), &fields(), &sig).is_err());
        assert!(verify_receipt("zz", &fields(), &sig).unwrap_err().starts_with("public key"));
    }
}
