//! The only room in jiandu that speaks SQL.
//!
//! `jiandu-store` owns the database: the connection pool (SQLite by default, PostgreSQL when a
//! deployment outgrows one machine), the migrations for both, and the repositories every other
//! role goes through — devices, operator users, MQTT accounts and the evidence ledger. Other
//! crates never write SQL; they call methods on [`Store`].
//!
//! One [`Store`] runs the same queries on both databases through [`sqlx::AnyPool`], so the
//! queries use only what both understand: `$1, $2…` placeholders and the types `i64`, `f64`,
//! `String`, `bool` and `Vec<u8>`. Times are Unix epoch milliseconds (`i64`, see [`now_ms`]).
//! Secrets (device tokens, account tokens, passwords) are stored only as hashes and handed out
//! once, wrapped in [`Secret`].

/// A closed set of states stored as lowercase words: the enum with its serde spelling, `ALL`,
/// `as_str` (the stored and JSON spelling) and `parse` (`None` for anything else). One
/// definition, so the database, JSON and the code cannot disagree on a spelling.
macro_rules! stored_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stored and JSON spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Parses the stored spelling; `None` for anything else.
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Reads the stored spelling of a column, naming the column when it is unknown.
            #[allow(dead_code)]
            pub(crate) fn from_column(row: &sqlx::any::AnyRow, col: &str) -> Result<$name, crate::StoreError> {
                use sqlx::Row;
                let text: String = row.try_get(col)?;
                $name::parse(&text).ok_or_else(|| crate::StoreError::Corrupt {
                    what: stringify!($name),
                    reason: format!("unknown {col} {text:?}"),
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

mod accounts;
mod blobs;
mod cases;
mod checkpoint;
mod devices;
mod dispatch;
mod error;
mod events;
mod evidence;
mod history_writer;
mod integrity;
mod ledger;
mod phones;
mod positions;
mod registry;
mod secret;
mod tips;
mod users;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Connection, Executor};
use tracing::{debug, info};

pub use accounts::{Account, AccountKind, MqttLogin, Principal, REVOCATION_LOOKBACK_MS, Revoked, RevokedDevices};
pub use blobs::{Blobs, Committed, S3Settings, blob_key};
pub use cases::{
    Approval, Case, CaseApproval, CaseCount, CaseLogEntry, CaseOrigin, CaseStatus, CaseTimer, FiredTimer,
    NegativeRecord, NewCase, NewCaseTimer, NewNegativeRecord, StageStart, TimerEffects, TimerKind, TimerState,
};
pub use checkpoint::{CHECKPOINT_TYPE, Checkpoint};
pub use devices::Device;
pub use dispatch::{
    Assignment, AssignmentState, DispatchLock, Escalation, NewOffer, NewReport, ReportSource, ReportStatus,
    StoredReport, TimelineEntry, Transition,
};
pub use error::StoreError;
pub use events::{NewEvent, StoredEvent};
pub use evidence::{
    Access, Evidence, OpenUpload, PlatformKey, PublicKeyInfo, ReceiptFields, UploadSpec, UploadState, public_key_id,
    verify_receipt,
};
pub use integrity::{
    AlertLevel, Colour, FormulaVersion, IndexAlert, IndexRow, IndexRun, IndexUnit, Indicator, NewAlert, NewIndexRow,
    NewIndexRun, NewIndicator, NewNotice, Notice, UnitRecord,
};
pub use ledger::{GENESIS_HASH, LedgerBreak, LedgerEntry, NewLedgerEntry, canonical_json};
pub use phones::{
    MAX_PHONE_MESSAGE_BYTES, OutboxPhoneMessage, PHONE_CLAIM_MS, PHONE_MESSAGE_RETENTION_MS, PhoneMessage,
};
pub use positions::{LivePosition, PositionRow, PresenceChange};
pub use registry::{
    Department, IdNumber, ImportPlan, ImportVersion, LookupAudit, LookupBatch, NewLookupAudit, Person, RegistryName,
    RegistryRecord, RegistrySnapshot, Vehicle, Versioned, lookup_rows_sha256,
};
pub use secret::{CredentialKey, Secret, hash_token};
pub use tips::{
    Feedback, MAX_FEEDBACK_PER_REPORT, NewPublicTip, PublicReport, PublicTipRecord, PublicTipStatus, PublicTipStored,
};
pub use users::{Role, User};

/// Migrations for SQLite, embedded in the binary.
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations for PostgreSQL, embedded in the binary; semantically identical to the SQLite set.
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Per-connection settings for SQLite: concurrent readers with one writer (WAL), durable enough
/// at commit for a WAL database, waiting up to 5 s for the write lock instead of failing, and
/// enforced foreign keys. A page cache of 32 MiB (the default is 2 MiB) and pages read through a
/// memory map instead of a `pread` each (growing only with what a connection touches).
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; \
     PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = NORMAL; \
     PRAGMA cache_size = -32768; \
     PRAGMA mmap_size = 268435456; \
     PRAGMA foreign_keys = ON;";

/// Which database a [`Store`] talks to, decided by the URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// A SQLite file (`sqlite://path` or `sqlite:path`); the default single-machine set-up.
    Sqlite,
    /// A PostgreSQL server (`postgres://…` or `postgresql://…`).
    Postgres,
}

impl Backend {
    /// Decides the backend from a database URL, or refuses a scheme we do not support.
    pub fn from_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            let scheme = url.split(':').next().unwrap_or_default();
            Err(StoreError::UnsupportedUrl { scheme: scheme.to_owned() })
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// The handle every role uses to reach the database; cheap to clone (it shares one pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    blobs: Option<Blobs>,
    credentials: Option<CredentialKey>,
    /// Wakes the outbox relay of this process after a commit (see [`Store::outbox_written`]).
    outbox: std::sync::Arc<tokio::sync::Notify>,
    /// SQLite only: the connection heartbeat batches are written on.
    history_writer: Option<std::sync::Arc<history_writer::HistoryWriter>>,
}

impl Store {
    /// Opens the database at `url` (creating a missing SQLite file) and brings its schema up to
    /// date by running the embedded migrations for its backend.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let (url, history_writer) = match backend {
            Backend::Sqlite => {
                let (url, path) = prepare_sqlite_url(url)?;
                (url, Some(std::sync::Arc::new(history_writer::HistoryWriter::new(path))))
            }
            Backend::Postgres => (url.to_owned(), None),
        };

        let mut options = AnyPoolOptions::new().max_connections(10);
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(sqlx::raw_sql(SQLITE_PRAGMAS)).await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&url).await.map_err(|source| StoreError::Connect { backend, source })?;

        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        // On a connection of their own, closed afterwards: a migration that edits the schema text
        // (0012 on SQLite) leaves the parsed schema of the connection that ran it stale.
        let mut conn = pool.acquire().await?.detach();
        migrator.run(&mut conn).await?;
        conn.close().await?;
        info!(%backend, migrations = migrator.iter().count(), "database ready");
        Ok(Store { pool, backend, blobs: None, credentials: None, outbox: Default::default(), history_writer })
    }

    /// The same store deriving new device and account tokens from `key` (see
    /// [`CredentialKey`]), so an external broker can be given them.
    pub fn with_credential_key(mut self, key: CredentialKey) -> Store {
        self.credentials = Some(key);
        self
    }

    /// The key tokens are derived from, when one is attached.
    pub fn credential_key(&self) -> Option<&CredentialKey> {
        self.credentials.as_ref()
    }

    /// A new token for a device (`kind` "device") or account ("account") called `name`:
    /// derived from the credential key when one is attached, else random.
    pub(crate) fn token_for(&self, kind: &str, name: &str) -> Secret {
        match &self.credentials {
            Some(key) => key.token_for(kind, name),
            None => secret::new_token(),
        }
    }

    /// The same store with the evidence object store attached (see [`Store::blobs`]).
    pub fn with_blobs(mut self, blobs: Blobs) -> Store {
        self.blobs = Some(blobs);
        self
    }

    /// The evidence object store, when one is attached (`serve` and the CLI attach the configured
    /// `--object-store`).
    pub fn blobs(&self) -> Result<&Blobs, StoreError> {
        self.blobs.as_ref().ok_or_else(|| StoreError::Blob {
            key: "evidence".into(),
            reason: "no object store attached to this store".into(),
        })
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The shared connection pool, for repository modules of this crate and for tests.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Checks that the database answers (for health checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection and waits for them to finish; clones of the store stop working.
    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(writer) = self.history_writer.clone() {
            // It may be finishing a batch: wait for it off the async threads.
            tokio::task::spawn_blocking(move || writer.close()).await.ok();
        }
        debug!(backend = %self.backend, "database closed");
    }
}

/// Adds `mode=rwc` (create the file if missing) unless the URL chose a mode, and creates the
/// file's parent directory; returns the URL and the file's path (`None` in memory).
fn prepare_sqlite_url(url: &str) -> Result<(String, Option<std::path::PathBuf>), StoreError> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let in_memory = path.is_empty() || path == ":memory:";
    if !in_memory
        && let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|source| StoreError::CreateDir { path: parent.to_path_buf(), source })?;
    }
    let chose_mode = query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("mode=")));
    let url = match (query, chose_mode) {
        (_, true) => format!("sqlite://{rest}"),
        (None, false) => format!("sqlite://{path}?mode=rwc"),
        (Some(q), false) => format!("sqlite://{path}?{q}&mode=rwc"),
    };
    Ok((url, (!in_memory).then(|| std::path::PathBuf::from(path))))
}

/// Takes the row lock of `table`'s row `id` (on SQLite, the database write lock) by touching
/// its `updated_at`, so read-decide-write sequences on one case or report run one at a time
/// across tasks and processes; `NotFound` names `what` when there is no such row.
pub(crate) async fn lock_row(
    conn: &mut sqlx::AnyConnection,
    table: &'static str,
    what: &'static str,
    id: &str,
    now: i64,
) -> Result<(), StoreError> {
    let touched = sqlx::query(&format!("UPDATE {table} SET updated_at = $1 WHERE id = $2"))
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if touched == 0 {
        return Err(StoreError::NotFound { what, id: id.to_owned() });
    }
    Ok(())
}

/// Binds an optional `f64` so that a NULL reaches PostgreSQL as `float8`. sqlx 0.8.6's Any
/// driver swaps its `Real` and `Double` null kinds on the way to PostgreSQL (sqlx-postgres
/// `any.rs`): a `None::<f64>` is sent as a `float4` NULL, the statement is cached on that
/// connection with a `float4` parameter, and the next non-NULL `f64` in it fails with
/// "incorrect binary data format in bind parameter". `None::<f32>` takes the swapped path to
/// `float8`; SQLite binds either as NULL.
pub(crate) trait BindOptF64 {
    /// `bind(value)`, with the NULL typed as above.
    fn bind_opt_f64(self, value: Option<f64>) -> Self;
}

impl<'q> BindOptF64 for sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    fn bind_opt_f64(self, value: Option<f64>) -> Self {
        match value {
            Some(v) => self.bind(v),
            None => self.bind(None::<f32>),
        }
    }
}

/// A fresh ULID: the id of every row the platform creates (reports from the web, assignments,
/// cases, events, index runs), sortable by creation time.
pub fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

/// The current time as Unix epoch milliseconds, the unit of every time column.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_follows_the_scheme() {
        assert_eq!(Backend::from_url("sqlite://a.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::from_url("sqlite:a.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::from_url("postgres://u@h/db").unwrap(), Backend::Postgres);
        assert_eq!(Backend::from_url("postgresql://u@h/db").unwrap(), Backend::Postgres);
        let err = Backend::from_url("mysql://root:secret@h/db").unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedUrl { ref scheme } if scheme == "mysql"));
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn sqlite_urls_create_the_file_unless_a_mode_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/j.db");
        let url = format!("sqlite://{}", file.display());
        assert_eq!(prepare_sqlite_url(&url).unwrap().0, format!("{url}?mode=rwc"));
        assert!(file.parent().unwrap().is_dir());
        let plain = format!("sqlite:{}", file.display());
        assert_eq!(prepare_sqlite_url(&plain).unwrap().0, format!("{url}?mode=rwc"));
        assert_eq!(
            prepare_sqlite_url(&format!("{url}?cache=shared")).unwrap().0,
            format!("{url}?cache=shared&mode=rwc")
        );
        assert_eq!(prepare_sqlite_url(&format!("{url}?mode=ro")).unwrap().0, format!("{url}?mode=ro"));
    }

    /// Migration 0012 widens the CHECK of `reports.source` on SQLite by editing the schema text:
    /// on a database that already holds reports and assignments (foreign keys on) it must keep
    /// every row and reference, pass SQLite's own checks, and take `public` at once, on new
    /// connections and on pooled ones opened before it ran.
    #[tokio::test]
    async fn sqlite_migration_0012_keeps_existing_reports_and_takes_public_ones() {
        let dir = tempfile::tempdir().unwrap();
        let url = prepare_sqlite_url(&format!("sqlite://{}", dir.path().join("j.db").display())).unwrap().0;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(3)
            .after_connect(|conn, _| {
                Box::pin(async move { conn.execute(sqlx::raw_sql(SQLITE_PRAGMAS)).await.map(|_| ()) })
            })
            .connect(&url)
            .await
            .unwrap();
        let before = sqlx::migrate::Migrator {
            migrations: SQLITE_MIGRATIONS.iter().filter(|m| m.version < 12).cloned().collect::<Vec<_>>().into(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        before.run(&pool).await.unwrap();
        let report = "INSERT INTO reports (id, source, origin, kind, text, lat, lon, ts, plate, needs, status, \
                      created_at, updated_at) VALUES ($1, $2, 'o', 'k', 't', 36.5, 118.5, 1, NULL, 1, 'new', 1, 1)";
        sqlx::query(report).bind("r1").bind("device").execute(&pool).await.unwrap();
        sqlx::query(
            "INSERT INTO assignments (id, report_id, device_id, status, distance_m, offered_at, respond_by, \
             updated_at, actor) VALUES ('a1', 'r1', 'd1', 'accepted', 10.0, 1, 2, 1, 'x')",
        )
        .execute(&pool)
        .await
        .unwrap();
        assert!(sqlx::query(report).bind("r0").bind("public").execute(&pool).await.is_err(), "refused before 0012");
        // A connection opened before the migration stays in the pool.
        let held = pool.acquire().await.unwrap();
        drop(held);

        let mut conn = pool.acquire().await.unwrap().detach();
        SQLITE_MIGRATIONS.run(&mut conn).await.unwrap();
        conn.close().await.unwrap();

        for id in ["r2", "r3", "r4"] {
            sqlx::query(report).bind(id).bind("public").execute(&pool).await.unwrap();
        }
        assert!(sqlx::query(report).bind("r5").bind("martian").execute(&pool).await.is_err(), "still a CHECK");
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reports").fetch_one(&pool).await.unwrap();
        assert_eq!(n, 4);
        let orphans = sqlx::query("PRAGMA foreign_key_check").fetch_all(&pool).await.unwrap();
        assert!(orphans.is_empty(), "foreign keys intact");
        let ok: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&pool).await.unwrap();
        assert_eq!(ok, "ok");
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("j.db").display())).await.unwrap();
        assert_eq!(store.report("r1").await.unwrap().source, ReportSource::Device);
        assert_eq!(store.report("r2").await.unwrap().source, ReportSource::Public);
    }

    /// Migration 0017 re-keys the history in time order on SQLite: every stored point stays,
    /// tracks read the same, and a point stored before it is still refused as a duplicate by the
    /// heartbeat writer after it.
    #[tokio::test]
    async fn sqlite_migration_0017_keeps_the_history_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = prepare_sqlite_url(&format!("sqlite://{}", dir.path().join("j.db").display())).unwrap().0;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
        let before = sqlx::migrate::Migrator {
            migrations: SQLITE_MIGRATIONS.iter().filter(|m| m.version < 17).cloned().collect::<Vec<_>>().into(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        before.run(&pool).await.unwrap();
        for (dev, ts) in [("b", 3), ("a", 2), ("b", 1), ("a", 4)] {
            sqlx::query(
                "INSERT INTO position_history (device_id, ts, lat, lon, acc, duty, received_at) \
                 VALUES ($1, $2, 36.5, 118.5, 5.0, 'on', 10)",
            )
            .bind(dev)
            .bind(ts)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        let store = Store::connect(&format!("sqlite://{}", dir.path().join("j.db").display())).await.unwrap();
        assert_eq!(store.history_count(None).await.unwrap(), 4);
        let ts = |rows: Vec<PositionRow>| rows.into_iter().map(|r| r.ts).collect::<Vec<_>>();
        assert_eq!(ts(store.track("a", 0, 10, 10).await.unwrap()), vec![2, 4]);
        assert_eq!(ts(store.track("b", 0, 10, 10).await.unwrap()), vec![1, 3]);
        let again = PositionRow {
            device_id: "a".into(),
            ts: 2,
            lat: 1.0,
            lon: 1.0,
            acc: None,
            spd: None,
            hdg: None,
            alt: None,
            bat: None,
            duty: None,
        };
        let new = PositionRow { ts: 5, ..again.clone() };
        assert_eq!(store.store_heartbeats(&[again, new], 20).await.unwrap(), 1, "the stored point is kept once");
        assert_eq!(store.history_count(Some("a")).await.unwrap(), 3);
        let key: Vec<String> = sqlx::query_scalar(
            "SELECT ii.name FROM pragma_index_list('position_history') il, pragma_index_info(il.name) ii \
                 WHERE il.origin = 'pk' ORDER BY ii.seqno",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert_eq!(key, vec!["ts", "device_id"]);
        store.close().await;
    }

    /// Migration 0016 drops the NOT NULL of `reports.lat`/`lon` on SQLite by editing the schema
    /// text: rows and references stay, SQLite's checks pass, a report without a point is taken
    /// at once (on pooled connections opened before it ran too), and the other constraints hold.
    #[tokio::test]
    async fn sqlite_migration_0016_lets_a_report_go_without_a_point() {
        let dir = tempfile::tempdir().unwrap();
        let url = prepare_sqlite_url(&format!("sqlite://{}", dir.path().join("j.db").display())).unwrap().0;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(3)
            .after_connect(|conn, _| {
                Box::pin(async move { conn.execute(sqlx::raw_sql(SQLITE_PRAGMAS)).await.map(|_| ()) })
            })
            .connect(&url)
            .await
            .unwrap();
        let before = sqlx::migrate::Migrator {
            migrations: SQLITE_MIGRATIONS.iter().filter(|m| m.version < 16).cloned().collect::<Vec<_>>().into(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        before.run(&pool).await.unwrap();
        let report = "INSERT INTO reports (id, source, origin, kind, text, lat, lon, ts, plate, needs, status, \
                      created_at, updated_at) VALUES ($1, 'public', 'o', 'k', 't', $2, $3, 1, NULL, 1, 'new', 1, 1)";
        let placed = |id: &'static str| sqlx::query(report).bind(id).bind(Some(36.5)).bind(Some(118.5));
        let unplaced = |id: &'static str| sqlx::query(report).bind(id).bind(None::<f64>).bind(None::<f64>);
        placed("r1").execute(&pool).await.unwrap();
        sqlx::query(
            "INSERT INTO assignments (id, report_id, device_id, status, distance_m, offered_at, respond_by, \
             updated_at, actor) VALUES ('a1', 'r1', 'd1', 'accepted', 10.0, 1, 2, 1, 'x')",
        )
        .execute(&pool)
        .await
        .unwrap();
        assert!(unplaced("r0").execute(&pool).await.is_err(), "refused before 0016");
        drop(pool.acquire().await.unwrap()); // a connection opened before the migration stays pooled

        let mut conn = pool.acquire().await.unwrap().detach();
        SQLITE_MIGRATIONS.run(&mut conn).await.unwrap();
        conn.close().await.unwrap();

        for id in ["r2", "r3", "r4"] {
            unplaced(id).execute(&pool).await.unwrap();
        }
        let bad = "INSERT INTO reports (id, source, origin, kind, text, lat, lon, ts, needs, status, created_at, \
                   updated_at) VALUES ('r5', 'public', 'o', 'k', NULL, 1, 1, 1, 1, 'new', 1, 1)";
        assert!(sqlx::query(bad).execute(&pool).await.is_err(), "text is still NOT NULL");
        let orphans = sqlx::query("PRAGMA foreign_key_check").fetch_all(&pool).await.unwrap();
        assert!(orphans.is_empty(), "foreign keys intact");
        let ok: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&pool).await.unwrap();
        assert_eq!(ok, "ok");
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("j.db").display())).await.unwrap();
        assert_eq!(store.report("r1").await.unwrap().point(), Some((36.5, 118.5)));
        assert_eq!(store.report("r2").await.unwrap().point(), None);
    }

    #[test]
    fn now_is_in_milliseconds() {
        let now = now_ms();
        assert!(now > 1_700_000_000_000 && now < 10_000_000_000_000);
    }
}
