//! The event outbox (DESIGN §3): events are rows first, MQTT messages second.
//!
//! A repository that changes something integrations care about appends the event with
//! [`Store::append_event_in`] inside its own transaction, so the change and its event commit
//! together. The outbox relay (in `broker::client`) publishes unpublished rows on
//! `jd/v1/events/{kind}` at QoS 1 and marks them only after the broker's PUBACK, so delivery is
//! at least once; the `id` lets consumers de-duplicate. The web view's Server-Sent Events read
//! the same rows by `seq`, which is what `Last-Event-ID` resumes from.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::{Store, StoreError, now_ms};

/// An event to record; the store assigns `seq`, `id` and `ts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Topic kind: `device`, `position`, `report`, `assignment`, `evidence`, `lookup`, `case`,
    /// `alarm` or `index` (`jd/v1/events/{kind}`).
    pub kind: String,
    /// What happened, e.g. `device.online`, `report.created`.
    pub r#type: String,
    /// The details.
    pub data: Value,
}

/// An event as stored (and as published: see [`StoredEvent::payload`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Position in the outbox, strictly increasing.
    pub seq: i64,
    /// Unique id (ULID) for de-duplication by consumers.
    pub id: String,
    /// Topic kind.
    pub kind: String,
    /// What happened.
    pub r#type: String,
    /// When it was recorded, Unix epoch milliseconds.
    pub ts: i64,
    /// The details.
    pub data: Value,
}

impl StoredEvent {
    /// The MQTT topic it is published on.
    pub fn topic(&self) -> String {
        format!("jd/v1/events/{}", self.kind)
    }

    /// The wire payload `{type,id,ts,data}` (DESIGN §3).
    pub fn payload(&self) -> Vec<u8> {
        serde_json::json!({"type": self.r#type, "id": self.id, "ts": self.ts, "data": self.data})
            .to_string()
            .into_bytes()
    }

    fn from_row(row: &AnyRow) -> Result<StoredEvent, StoreError> {
        let data: String = row.try_get("data")?;
        Ok(StoredEvent {
            seq: row.try_get("seq")?,
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            r#type: row.try_get("type")?,
            ts: row.try_get("ts")?,
            data: serde_json::from_str(&data)
                .map_err(|e| StoreError::Corrupt { what: "event data", reason: e.to_string() })?,
        })
    }
}

const EVENT_COLUMNS: &str = "seq, id, kind, type, ts, data";

impl Store {
    /// Records an event on its own (when there is no other change to commit with it).
    pub async fn append_event(&self, event: NewEvent) -> Result<StoredEvent, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Store::append_event_in(&mut conn, event).await
    }

    /// Records an event inside the caller's transaction, so it commits with the change.
    pub async fn append_event_in(conn: &mut AnyConnection, event: NewEvent) -> Result<StoredEvent, StoreError> {
        if event.kind.is_empty() || event.kind.contains(['/', '+', '#']) {
            return Err(StoreError::InvalidInput {
                field: "kind",
                reason: format!("not a topic level: {:?}", event.kind),
            });
        }
        let id = crate::new_id();
        let ts = now_ms();
        let row =
            sqlx::query("INSERT INTO events (id, kind, type, ts, data) VALUES ($1, $2, $3, $4, $5) RETURNING seq")
                .bind(&id)
                .bind(&event.kind)
                .bind(&event.r#type)
                .bind(ts)
                .bind(event.data.to_string())
                .fetch_one(&mut *conn)
                .await?;
        Ok(StoredEvent { seq: row.try_get("seq")?, id, kind: event.kind, r#type: event.r#type, ts, data: event.data })
    }

    /// The oldest events not yet published, at most `limit`.
    pub async fn unpublished_events(&self, limit: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE published_at IS NULL ORDER BY seq LIMIT $1"
        ))
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(StoredEvent::from_row).collect()
    }

    /// Marks events as delivered to the broker.
    pub async fn mark_events_published(&self, seqs: &[i64]) -> Result<(), StoreError> {
        self.mark_published("events", seqs).await
    }

    /// Sets `published_at` of the rows `seqs` of an outbox table (`events`, `phone_messages`)
    /// in one transaction: the one marker of both outboxes.
    pub(crate) async fn mark_published(&self, table: &'static str, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let sql = format!("UPDATE {table} SET published_at = $1 WHERE seq = $2");
        let mut tx = self.pool.begin().await?;
        for seq in seqs {
            sqlx::query(&sql).bind(now).bind(*seq).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Events with `seq > after_seq`, oldest first, at most `limit` (for SSE resume).
    pub async fn events_after(&self, after_seq: i64, limit: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"))
            .bind(after_seq)
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(StoredEvent::from_row).collect()
    }

    /// The newest event's `seq` (0 when there is none).
    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM events").fetch_one(&self.pool).await?;
        Ok(row.try_get("seq")?)
    }
}
