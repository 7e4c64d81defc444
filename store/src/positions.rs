//! Positions: `device_position` (the live picture, one row per device) and `position_history`
//! (every point once). Written in batches by ingest, read by the dispatcher on start and by the
//! web view.
//!
//! A batch is one transaction: an insert into history (`ON CONFLICT DO NOTHING`, so a point
//! re-sent after a lost ack is stored once) and an upsert of each device's newest point whose
//! position columns change only when the new point is newer than the stored one. The history is
//! keyed in time order, `(ts, device_id)`, so a batch from thousands of phones writes the few
//! pages at the table's end. On SQLite a batch is prepared statements on a connection of its
//! own (see `history_writer`); on PostgreSQL two statements whatever the batch size, each column
//! bound as one array.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::events::NewEvent;
use crate::{Store, StoreError};

/// One stored point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionRow {
    /// Device id.
    pub device_id: String,
    /// Fix time, Unix epoch ms.
    pub ts: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Accuracy, metres.
    pub acc: Option<f64>,
    /// Speed, m/s.
    pub spd: Option<f64>,
    /// Heading, degrees.
    pub hdg: Option<f64>,
    /// Altitude, metres.
    pub alt: Option<f64>,
    /// Battery, percent.
    pub bat: Option<f64>,
    /// `on`, `off` or `busy`.
    pub duty: Option<String>,
}

/// The live state of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LivePosition {
    /// Device id.
    pub device_id: String,
    /// Newest point, if any heartbeat was stored.
    pub position: Option<PositionRow>,
    /// When any heartbeat last arrived (Unix ms).
    pub last_seen: Option<i64>,
    /// Presence from the `presence` topic / last will.
    pub online: bool,
    /// When presence last changed (Unix ms).
    pub presence_ts: Option<i64>,
    /// Online but silent for longer than the configured time.
    pub stale: bool,
}

/// A presence change that was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// Device id.
    pub device_id: String,
    /// New state.
    pub online: bool,
}

const HISTORY_COLUMNS: &str = "device_id, ts, lat, lon, acc, spd, hdg, alt, bat, duty";

/// The newest point of each device in `rows`, ordered by device id: one fixed order, so two
/// writers lock the live rows in the same order.
pub(crate) fn newest_per_device(rows: &[PositionRow]) -> Vec<&PositionRow> {
    let mut newest: std::collections::HashMap<&str, &PositionRow> = std::collections::HashMap::new();
    for r in rows {
        newest
            .entry(&r.device_id)
            .and_modify(|e| {
                if r.ts > e.ts {
                    *e = r
                }
            })
            .or_insert(r);
    }
    let mut newest: Vec<&PositionRow> = newest.into_values().collect();
    newest.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    newest
}

/// The insert into history from `source` (rows of the ten point columns and `received_at`); a
/// point stored already is skipped.
pub(crate) fn history_insert_sql(source: &str) -> String {
    format!(
        "INSERT INTO position_history ({HISTORY_COLUMNS}, received_at) {source} ON CONFLICT (ts, device_id) DO NOTHING"
    )
}

/// The upsert of live positions from `source` (rows of the ten point columns and `last_seen`):
/// `last_seen` always moves, the point only when it is newer than the stored one.
pub(crate) fn live_upsert_sql(source: &str) -> String {
    let newer = "(device_position.ts IS NULL OR excluded.ts > device_position.ts)";
    let mut set = vec!["last_seen = excluded.last_seen".to_owned(), "stale = 0".to_owned()];
    for c in ["ts", "lat", "lon", "acc", "spd", "hdg", "alt", "bat", "duty"] {
        set.push(format!("{c} = CASE WHEN {newer} THEN excluded.{c} ELSE device_position.{c} END"));
    }
    format!(
        "INSERT INTO device_position ({HISTORY_COLUMNS}, last_seen) {source} ON CONFLICT (device_id) DO UPDATE SET {}",
        set.join(", ")
    )
}

/// A batch as PostgreSQL array literals, one per point column (`{"d1","d2"}`, `{1,2}`,
/// `{5.0,NULL}`): ten parameters whatever the batch size, unnested side by side. Text in
/// quotes with `\` and `"` escaped; numbers in Rust's shortest round-trip form.
struct PgColumns {
    columns: [String; 10],
}

impl PgColumns {
    fn of<'a>(rows: impl ExactSizeIterator<Item = &'a PositionRow>) -> PgColumns {
        let n = rows.len();
        let mut columns: [String; 10] = std::array::from_fn(|_| String::with_capacity(n * 12 + 2));
        for c in &mut columns {
            c.push('{');
        }
        for r in rows {
            let [dev, ts, lat, lon, acc, spd, hdg, alt, bat, duty] = &mut columns;
            push_text(dev, Some(&r.device_id));
            push_num(ts, Some(r.ts));
            push_num(lat, Some(r.lat));
            push_num(lon, Some(r.lon));
            push_num(acc, r.acc);
            push_num(spd, r.spd);
            push_num(hdg, r.hdg);
            push_num(alt, r.alt);
            push_num(bat, r.bat);
            push_text(duty, r.duty.as_deref());
        }
        for c in &mut columns {
            if c.ends_with(',') {
                c.pop();
            }
            c.push('}');
        }
        PgColumns { columns }
    }

    /// The ten columns unnested, then `$11` as the eleventh.
    const SELECT: &'static str = "SELECT d, t, la, lo, ac, sp, hd, al, ba, du, $11::bigint FROM unnest($1::text[], \
         $2::bigint[], $3::float8[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], $8::float8[], \
         $9::float8[], $10::text[]) AS u(d, t, la, lo, ac, sp, hd, al, ba, du)";

    fn bind<'q>(
        self,
        mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        received_at: i64,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        for c in self.columns {
            query = query.bind(c);
        }
        query.bind(received_at)
    }
}

fn push_text(out: &mut String, value: Option<&str>) {
    match value {
        None => out.push_str("NULL"),
        Some(v) => {
            out.push('"');
            for ch in v.chars() {
                if ch == '"' || ch == '\\' {
                    out.push('\\');
                }
                out.push(ch);
            }
            out.push('"');
        }
    }
    out.push(',');
}

fn push_num<T: std::fmt::Display>(out: &mut String, value: Option<T>) {
    use std::fmt::Write;
    match value {
        None => out.push_str("NULL"),
        Some(v) => {
            let _ = write!(out, "{v}");
        }
    }
    out.push(',');
}

fn position_from_row(row: &AnyRow) -> Result<PositionRow, StoreError> {
    Ok(PositionRow {
        device_id: row.try_get("device_id")?,
        ts: row.try_get("ts")?,
        lat: row.try_get("lat")?,
        lon: row.try_get("lon")?,
        acc: row.try_get("acc")?,
        spd: row.try_get("spd")?,
        hdg: row.try_get("hdg")?,
        alt: row.try_get("alt")?,
        bat: row.try_get("bat")?,
        duty: row.try_get("duty")?,
    })
}

fn live_from_row(row: &AnyRow) -> Result<LivePosition, StoreError> {
    let ts: Option<i64> = row.try_get("ts")?;
    let position = match ts {
        Some(_) => Some(position_from_row(row)?),
        None => None,
    };
    Ok(LivePosition {
        device_id: row.try_get("device_id")?,
        position,
        last_seen: row.try_get("last_seen")?,
        online: row.try_get::<i64, _>("online")? != 0,
        presence_ts: row.try_get("presence_ts")?,
        stale: row.try_get::<i64, _>("stale")? != 0,
    })
}

impl Store {
    /// Stores a batch of points in one transaction; returns how many were new to the history.
    /// Points already stored (same device and `ts`) are skipped; each device's live position
    /// moves to its newest point unless the stored one is newer.
    pub async fn store_heartbeats(&self, rows: &[PositionRow], received_at: i64) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        if let Some(writer) = &self.history_writer {
            let writer = writer.clone();
            let rows = rows.to_vec();
            return match tokio::task::spawn_blocking(move || writer.store(&rows, received_at)).await {
                Ok(result) => result,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
        }
        let mut tx = self.pool.begin().await?;
        let sql = history_insert_sql(PgColumns::SELECT);
        let inserted =
            PgColumns::of(rows.iter()).bind(sqlx::query(&sql), received_at).execute(&mut *tx).await?.rows_affected();
        let newest = newest_per_device(rows);
        let sql = live_upsert_sql(PgColumns::SELECT);
        PgColumns::of(newest.into_iter()).bind(sqlx::query(&sql), received_at).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// Records a presence message received at `at`; returns the change if the state flipped
    /// (and appends a `device.online` / `device.offline` event in the same transaction).
    pub async fn set_presence(
        &self,
        device_id: &str,
        online: bool,
        at: i64,
    ) -> Result<Option<PresenceChange>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Write first: on SQLite a transaction that reads before its first write cannot take the
        // write lock if another writer committed in between (SQLITE_BUSY_SNAPSHOT), and waiting
        // does not help; writing first makes it wait for the lock instead.
        let created =
            sqlx::query("INSERT INTO device_position (device_id) VALUES ($1) ON CONFLICT (device_id) DO NOTHING")
                .bind(device_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        let before: i64 = sqlx::query("SELECT online FROM device_position WHERE device_id = $1")
            .bind(device_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("online")?;
        sqlx::query(
            "INSERT INTO device_position (device_id, online, presence_ts) VALUES ($1, $2, $3) \
             ON CONFLICT (device_id) DO UPDATE SET online = excluded.online, presence_ts = excluded.presence_ts, \
             stale = CASE WHEN excluded.online = 1 THEN device_position.stale ELSE 0 END \
             WHERE device_position.presence_ts IS NULL OR excluded.presence_ts >= device_position.presence_ts",
        )
        .bind(device_id)
        .bind(i64::from(online))
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let changed = created || (before != 0) != online;
        if changed {
            Store::append_event_in(
                &mut tx,
                NewEvent {
                    kind: "device".into(),
                    r#type: if online { "device.online" } else { "device.offline" }.into(),
                    data: serde_json::json!({"device": device_id, "online": online, "ts": at}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(changed.then(|| PresenceChange { device_id: device_id.to_owned(), online }))
    }

    /// Marks online devices silent since before `silent_since` as stale (once each, with a
    /// `device.stale` event); returns their ids.
    pub async fn mark_stale(&self, silent_since: i64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One write statement (see `set_presence` on why writes come first).
        let rows = sqlx::query(
            "UPDATE device_position SET stale = 1 WHERE online = 1 AND stale = 0 \
             AND COALESCE(last_seen, presence_ts, 0) < $1 RETURNING device_id",
        )
        .bind(silent_since)
        .fetch_all(&mut *tx)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("device_id")?;
            Store::append_event_in(
                &mut tx,
                NewEvent {
                    kind: "device".into(),
                    r#type: "device.stale".into(),
                    data: serde_json::json!({"device": id, "silent_since": silent_since}),
                },
            )
            .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// The live state of every device that ever reported.
    pub async fn live_positions(&self) -> Result<Vec<LivePosition>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {HISTORY_COLUMNS}, last_seen, online, presence_ts, stale FROM device_position ORDER BY device_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(live_from_row).collect()
    }

    /// The live state of one device.
    pub async fn live_position(&self, device_id: &str) -> Result<Option<LivePosition>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {HISTORY_COLUMNS}, last_seen, online, presence_ts, stale FROM device_position WHERE device_id = $1"
        ))
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(live_from_row).transpose()
    }

    /// A device's points with `from <= ts <= to`, oldest first, at most `limit`.
    pub async fn track(&self, device_id: &str, from: i64, to: i64, limit: i64) -> Result<Vec<PositionRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {HISTORY_COLUMNS} FROM position_history WHERE device_id = $1 AND ts >= $2 AND ts <= $3 \
             ORDER BY ts LIMIT $4"
        ))
        .bind(device_id)
        .bind(from)
        .bind(to)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(position_from_row).collect()
    }

    /// Number of stored points (all devices, or one).
    pub async fn history_count(&self, device_id: Option<&str>) -> Result<i64, StoreError> {
        let row = match device_id {
            Some(d) => {
                sqlx::query("SELECT COUNT(*) AS n FROM position_history WHERE device_id = $1")
                    .bind(d)
                    .fetch_one(&self.pool)
                    .await?
            }
            None => sqlx::query("SELECT COUNT(*) AS n FROM position_history").fetch_one(&self.pool).await?,
        };
        Ok(row.try_get("n")?)
    }

    /// Deletes up to `limit` of the oldest points older than `before`; returns how many went.
    /// Call it until it returns less than `limit`: each call is one short transaction at the
    /// table's old end, so ingest at the other end is never held up for long.
    pub async fn prune_history(&self, before: i64, limit: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM position_history WHERE (ts, device_id) IN \
             (SELECT ts, device_id FROM position_history WHERE ts < $1 ORDER BY ts LIMIT $2)",
        )
        .bind(before)
        .bind(limit.max(1))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Registered devices with their live state, ordered by id, `limit` after the id `after`.
    pub async fn devices_with_live(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(crate::Device, Option<LivePosition>)>, StoreError> {
        let device_cols: String =
            crate::devices::DEVICE_COLUMNS.split(", ").map(|c| format!("d.{c}")).collect::<Vec<_>>().join(", ");
        let rows = sqlx::query(&format!(
            "SELECT {device_cols}, p.device_id, p.ts, p.lat, p.lon, p.acc, p.spd, p.hdg, p.alt, p.bat, p.duty, \
             p.last_seen, COALESCE(p.online, 0) AS online, p.presence_ts, COALESCE(p.stale, 0) AS stale \
             FROM devices d LEFT JOIN device_position p ON p.device_id = d.id \
             WHERE d.id > $1 ORDER BY d.id LIMIT $2"
        ))
        .bind(after)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let device = crate::devices::device_from_row(row)?;
                let live_id: Option<String> = row.try_get("device_id")?;
                let live = match live_id {
                    Some(_) => Some(live_from_row(row)?),
                    None => None,
                };
                Ok((device, live))
            })
            .collect()
    }

    /// Ids of all registered devices that are not revoked (ingest's cache of who may report).
    pub async fn active_device_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM devices WHERE revoked_at IS NULL").fetch_all(&self.pool).await?;
        rows.iter().map(|r| r.try_get("id").map_err(StoreError::from)).collect()
    }
}
