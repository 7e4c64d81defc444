//! The phone outbox (DESIGN §3): what a phone must not miss is a row first, an MQTT message
//! second.
//!
//! A repository whose change a phone has to hear about (an offer, a withdrawal, an expiry)
//! appends the message with [`Store::append_phone_message_in`] inside its own transaction, so the
//! change and the message commit together; a process that dies right after the commit, or a
//! broker that is away, delays the message but never loses it. The outbox relay (in
//! `broker::client`, the same loop that relays events) publishes unpublished rows on
//! `jd/v1/dev/{device}/inbox/{kind}` at QoS 1 in `seq` order and marks them after the broker's
//! PUBACK; published rows are pruned after [`PHONE_MESSAGE_RETENTION_MS`]. These rows never
//! appear in the event stream (`jd/v1/events/*`, Server-Sent Events): they are a phone's mail,
//! not something integrations watch.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::{Store, StoreError, now_ms};

/// Largest body a phone message may carry (an offer with a long report text is a few KiB).
pub const MAX_PHONE_MESSAGE_BYTES: usize = 64 * 1024;
/// How long a published phone message is kept (for looking into a complaint) before pruning.
pub const PHONE_MESSAGE_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// A message for one phone's inbox, to be recorded with the change it announces.
#[derive(Debug, Clone, PartialEq)]
pub struct PhoneMessage {
    /// The device whose inbox receives it.
    pub device: String,
    /// The inbox kind (`assignment`, `notice`, …): the last topic level.
    pub kind: String,
    /// The JSON body, as published.
    pub body: String,
}

impl PhoneMessage {
    /// Encodes `body` for `device`'s inbox of `kind`; refused when a name is not a single topic
    /// level or the body is over [`MAX_PHONE_MESSAGE_BYTES`].
    pub fn new(device: &str, kind: &str, body: &impl Serialize) -> Result<PhoneMessage, StoreError> {
        for (field, value) in [("device", device), ("kind", kind)] {
            if value.is_empty() || value.len() > 128 || value.contains(['/', '+', '#', '\0']) {
                return Err(StoreError::InvalidInput { field, reason: format!("not a topic level: {value:?}") });
            }
        }
        let body = serde_json::to_string(body)
            .map_err(|e| StoreError::InvalidInput { field: "body", reason: e.to_string() })?;
        if body.len() > MAX_PHONE_MESSAGE_BYTES {
            return Err(StoreError::InvalidInput {
                field: "body",
                reason: format!("{} bytes is over the {MAX_PHONE_MESSAGE_BYTES}-byte limit", body.len()),
            });
        }
        Ok(PhoneMessage { device: device.to_owned(), kind: kind.to_owned(), body })
    }
}

/// A phone message as stored in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxPhoneMessage {
    /// Position in the outbox, strictly increasing (the order a device receives them in).
    pub seq: i64,
    /// The device whose inbox receives it.
    pub device: String,
    /// The inbox kind.
    pub kind: String,
    /// The JSON body.
    pub body: String,
    /// When it was recorded, Unix epoch milliseconds.
    pub created_at: i64,
}

impl OutboxPhoneMessage {
    /// The MQTT topic it is published on.
    pub fn topic(&self) -> String {
        format!("jd/v1/dev/{}/inbox/{}", self.device, self.kind)
    }

    fn from_row(row: &AnyRow) -> Result<OutboxPhoneMessage, StoreError> {
        Ok(OutboxPhoneMessage {
            seq: row.try_get("seq")?,
            device: row.try_get("device")?,
            kind: row.try_get("kind")?,
            body: row.try_get("body")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// How long a relay holds the phone messages it claimed before another relay may send them.
pub const PHONE_CLAIM_MS: i64 = 5_000;

impl Store {
    /// Records a phone message inside the caller's transaction, so it commits with the change it
    /// announces. Call [`Store::wake_outbox`] after the commit so the relay sends it at once.
    pub async fn append_phone_message_in(conn: &mut AnyConnection, m: &PhoneMessage) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO phone_messages (device, kind, body, created_at) VALUES ($1, $2, $3, $4) RETURNING seq",
        )
        .bind(&m.device)
        .bind(&m.kind)
        .bind(&m.body)
        .bind(now_ms())
        .fetch_one(&mut *conn)
        .await?;
        Ok(row.try_get("seq")?)
    }

    /// Records a phone message on its own (when there is no other change to commit with it).
    pub async fn append_phone_message(&self, m: &PhoneMessage) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let seq = Store::append_phone_message_in(&mut conn, m).await?;
        self.wake_outbox();
        Ok(seq)
    }

    /// The oldest phone messages not yet published, at most `limit`, in `seq` order, claimed or
    /// not (for inspection; the relay uses [`Store::claim_phone_messages`]).
    pub async fn unpublished_phone_messages(&self, limit: i64) -> Result<Vec<OutboxPhoneMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, device, kind, body, created_at FROM phone_messages WHERE published_at IS NULL \
             ORDER BY seq LIMIT $1",
        )
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(OutboxPhoneMessage::from_row).collect()
    }

    /// Claims the oldest phone messages not yet published and not claimed by another relay, at
    /// most `limit`, in `seq` order: this relay should publish them within [`PHONE_CLAIM_MS`],
    /// after which another may take them over (at least once, rarely twice).
    pub async fn claim_phone_messages(&self, limit: i64) -> Result<Vec<OutboxPhoneMessage>, StoreError> {
        // Claimed for PHONE_CLAIM_MS, so the relays of other processes sharing this database
        // skip them; the outer conditions are re-checked by PostgreSQL on a row another relay
        // claimed meanwhile (SQLite runs one writer at a time).
        let now = now_ms();
        let rows = sqlx::query(
            "UPDATE phone_messages SET claimed_until = $1 WHERE seq IN (SELECT seq FROM phone_messages \
             WHERE published_at IS NULL AND (claimed_until IS NULL OR claimed_until < $2) ORDER BY seq LIMIT $3) \
             AND published_at IS NULL AND (claimed_until IS NULL OR claimed_until < $2) \
             RETURNING seq, device, kind, body, created_at",
        )
        .bind(now + PHONE_CLAIM_MS)
        .bind(now)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows.iter().map(OutboxPhoneMessage::from_row).collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|m| m.seq);
        Ok(out)
    }

    /// Marks phone messages as delivered to the broker.
    pub async fn mark_phone_messages_published(&self, seqs: &[i64]) -> Result<(), StoreError> {
        self.mark_published("phone_messages", seqs).await
    }

    /// Deletes phone messages published before `before` (epoch ms); returns how many. Unpublished
    /// rows are never pruned.
    pub async fn prune_phone_messages(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM phone_messages WHERE published_at IS NOT NULL AND published_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Signalled after a commit that appended to an outbox, so the relay in this process sends
    /// it now instead of at its next poll (the permit is kept if the relay is busy).
    pub fn outbox_written(&self) -> &tokio::sync::Notify {
        &self.outbox
    }

    /// Wakes this process's outbox relay (after committing an outbox row).
    pub fn wake_outbox(&self) {
        self.outbox.notify_one();
    }
}
