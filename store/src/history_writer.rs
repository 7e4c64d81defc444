//! The SQLite connection heartbeat batches are written on.
//!
//! A batch of 16,000 points is 16,000 executions of one prepared statement in one transaction.
//! Through the pool's driver each execution is a round trip to its worker thread, and binding a
//! batch as one JSON parameter makes SQLite parse every point's JSON ten times (measured: 109k
//! rows/s through `json_each` against 346k with a prepared statement per point, same machine and
//! table). So heartbeats get a connection of their own, opened on first use on the same file,
//! driven on a blocking thread; the pool's connections and this one share the file's locks and
//! WAL like any two connections.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, ToSql, TransactionBehavior};

use crate::StoreError;
use crate::positions::{PositionRow, history_insert_sql, live_upsert_sql, newest_per_device};

/// Writes heartbeat batches to one SQLite file; shared by every clone of a store.
#[derive(Debug)]
pub(crate) struct HistoryWriter {
    /// The database file; `None` for an in-memory database, which no second connection can see.
    path: Option<PathBuf>,
    conn: Mutex<Option<Connection>>,
}

/// The row both statements take, bound by [`point_params`].
const POINT_VALUES: &str = "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

impl HistoryWriter {
    /// A writer for the file at `path` (nothing is opened until the first batch).
    pub(crate) fn new(path: Option<PathBuf>) -> HistoryWriter {
        HistoryWriter { path, conn: Mutex::new(None) }
    }

    /// Closes the connection; the next batch opens it again.
    pub(crate) fn close(&self) {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    /// Stores `rows` in one transaction (see [`crate::Store::store_heartbeats`]); blocks.
    pub(crate) fn store(&self, rows: &[PositionRow], received_at: i64) -> Result<u64, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = match &mut *guard {
            Some(conn) => conn,
            slot => slot.insert(self.open()?),
        };
        // Take the write lock at BEGIN, so waiting for it is what busy_timeout governs.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserted = 0;
        {
            let mut history = tx.prepare_cached(&history_insert_sql(POINT_VALUES))?;
            // In key order, so consecutive inserts land on the same page.
            let mut ordered: Vec<&PositionRow> = rows.iter().collect();
            ordered.sort_unstable_by(|a, b| (a.ts, &a.device_id).cmp(&(b.ts, &b.device_id)));
            for r in ordered {
                inserted += history.execute(&point_params(r, &received_at)[..])? as u64;
            }
            let mut live = tx.prepare_cached(&live_upsert_sql(POINT_VALUES))?;
            for r in newest_per_device(rows) {
                live.execute(&point_params(r, &received_at)[..])?;
            }
        }
        tx.commit()?;
        Ok(inserted)
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let Some(path) = &self.path else {
            return Err(StoreError::InvalidInput {
                field: "database",
                reason: "an in-memory SQLite database cannot take heartbeats; use a file".into(),
            });
        };
        let conn = Connection::open(path)?;
        // The pool's settings (a batch waits up to 5 s for the write lock, then fails and ingest
        // retries it), with a larger page cache: a batch's pages stay in memory until the
        // commit writes them once.
        conn.execute_batch(crate::SQLITE_PRAGMAS)?;
        conn.execute_batch("PRAGMA cache_size = -65536;")?;
        Ok(conn)
    }
}

/// The eleven parameters of both statements: the point's ten columns, then `received_at`.
fn point_params<'a>(r: &'a PositionRow, received_at: &'a i64) -> [&'a dyn ToSql; 11] {
    [&r.device_id, &r.ts, &r.lat, &r.lon, &r.acc, &r.spd, &r.hdg, &r.alt, &r.bat, &r.duty, received_at]
}
